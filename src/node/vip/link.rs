//! The VIP on the wire: the address on an interface and gratuitous ARP.

use std::io;
use std::net::Ipv4Addr;

use crate::node::netlink;

/// An Ethernet interface the VIP lives on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
}

impl Link {
    /// The interface called `name`.
    pub fn named(name: &str) -> io::Result<Link> {
        let index = netlink::ifindex(name)?;
        let text = std::fs::read_to_string(format!("/sys/class/net/{name}/address"))?;
        let mac = parse_mac(text.trim()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{name} has no Ethernet address ({})", text.trim()),
            )
        })?;
        Ok(Link {
            name: name.into(),
            index,
            mac,
        })
    }

    /// The interface that carries the IPv4 address `ip`.
    pub fn with_address(ip: Ipv4Addr) -> io::Result<Link> {
        let name = interfaces()?
            .into_iter()
            .find(|(_, a)| *a == ip)
            .map(|(n, _)| n)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no interface carries {ip}"),
                )
            })?;
        Link::named(&name)
    }

    /// Adds `vip/32`, or refreshes it, with a kernel lifetime: the kernel removes it by
    /// itself `lifetime_secs` (rounded up to its next check) after the last call.
    pub fn hold(&self, vip: Ipv4Addr, lifetime_secs: u32) -> io::Result<()> {
        netlink::request(&netlink::add_address_with_lifetime_message(
            self.index,
            vip,
            32,
            lifetime_secs,
            1,
        ))
    }

    /// Removes `vip/32`; an address that is not there counts as removed.
    pub fn release(&self, vip: Ipv4Addr) -> io::Result<()> {
        match netlink::request(&netlink::delete_address_message(self.index, vip, 32, 1)) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
            other => other,
        }
    }

    /// Whether `vip` is currently an address of this interface.
    pub fn has(&self, vip: Ipv4Addr) -> io::Result<bool> {
        Ok(interfaces()?
            .iter()
            .any(|(n, a)| *n == self.name && *a == vip))
    }

    /// Broadcasts gratuitous ARP for `vip` from this interface: an announcement (request
    /// with sender = target = vip) and an unsolicited reply, so that neighbours' caches
    /// point at us whichever form they honour.
    pub fn announce(&self, vip: Ipv4Addr) -> io::Result<()> {
        let proto = (libc::ETH_P_ARP as u16).to_be();
        // SAFETY: plain socket(2) call; the fd is owned below and closed on drop.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
        let _owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_protocol = proto;
        sa.sll_ifindex = self.index as i32;
        sa.sll_halen = 6;
        sa.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        for op in [ArpOp::Request, ArpOp::Reply] {
            let frame = gratuitous_arp(self.mac, vip, op);
            // SAFETY: frame and sa outlive the call; the lengths match the buffers.
            let sent = unsafe {
                libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&sa as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if sent < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// The two forms of gratuitous ARP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOp {
    Request,
    Reply,
}

/// A broadcast Ethernet frame carrying gratuitous ARP for `ip` at `mac` (RFC 5227 §3
/// announcement for `Request`, target hardware address zero; `Reply` names broadcast).
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr, op: ArpOp) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    let (code, target_mac) = match op {
        ArpOp::Request => (1u16, [0u8; 6]),
        ArpOp::Reply => (2u16, [0xff; 6]),
    };
    f[20..22].copy_from_slice(&code.to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    f[32..38].copy_from_slice(&target_mac);
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// `52:54:00:aa:bb:cc` as bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Every (interface, IPv4 address) pair of this machine.
fn interfaces() -> io::Result<Vec<(String, Ipv4Addr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr of the family it names.
            let family = unsafe { (*ifa.ifa_addr).sa_family };
            if i32::from(family) == libc::AF_INET {
                // SAFETY: an AF_INET sockaddr is a sockaddr_in; ifa_name is a C string.
                let (sin, name) = unsafe {
                    (
                        &*(ifa.ifa_addr as *const libc::sockaddr_in),
                        std::ffi::CStr::from_ptr(ifa.ifa_name),
                    )
                };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                out.push((name.to_string_lossy().into_owned(), ip));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gratuitous_announcement_names_the_vip_as_sender_and_target() {
        let mac = [0x52, 0x54, 0, 0x77, 3, 0x31];
        let f = gratuitous_arp(mac, Ipv4Addr::new(10, 77, 0, 100), ArpOp::Request);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &[10, 77, 0, 100]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[10, 77, 0, 100]);
        let r = gratuitous_arp(mac, Ipv4Addr::new(10, 77, 0, 100), ArpOp::Reply);
        assert_eq!(&r[20..22], &[0, 2]);
        assert_eq!(&r[32..38], &[0xff; 6]);
    }

    #[test]
    fn macs_parse_only_with_six_hex_octets() {
        assert_eq!(
            parse_mac("52:54:00:aa:bb:0c"),
            Some([0x52, 0x54, 0, 0xaa, 0xbb, 0x0c])
        );
        assert_eq!(parse_mac("52:54:00:aa:bb"), None);
        assert_eq!(parse_mac("52:54:00:aa:bb:cc:dd"), None);
        assert_eq!(parse_mac("zz:54:00:aa:bb:cc"), None);
    }

    #[test]
    fn loopback_is_found_by_its_address() {
        let lo = Link::with_address(Ipv4Addr::LOCALHOST).unwrap();
        assert_eq!(lo.name, "lo");
        assert!(lo.has(Ipv4Addr::LOCALHOST).unwrap());
    }
}
