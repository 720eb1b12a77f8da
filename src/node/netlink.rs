//! A minimal rtnetlink client: set a link up, add or delete an IPv4 address, add a default
//! route.
//!
//! Three request kinds with fixed layouts do not justify an async netlink stack, so the
//! messages are encoded here (`nlmsghdr` + `ifinfomsg` / `ifaddrmsg` / `rtmsg` + attributes,
//! native endian, 4-byte aligned) and sent on a blocking `NETLINK_ROUTE` socket; each
//! request asks for an ACK and the kernel's errno is returned as an `io::Error`. An address
//! or route that already exists counts as success, so bring-up can be retried.

use std::io;
use std::net::Ipv4Addr;

const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const IFF_UP: u32 = 0x1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_CACHEINFO: u16 = 6;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
const AF_INET: u8 = 2;

fn header(buf: &mut Vec<u8>, kind: u16, flags: u16, seq: u32) {
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in finish()
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
}

fn attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn finish(mut buf: Vec<u8>) -> Vec<u8> {
    let len = buf.len() as u32;
    buf[0..4].copy_from_slice(&len.to_ne_bytes());
    buf
}

/// RTM_NEWLINK setting IFF_UP on `index`.
pub fn link_up_message(index: u32, seq: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(32);
    header(&mut b, RTM_NEWLINK, 0, seq);
    b.extend_from_slice(&[0, 0]); // family, pad
    b.extend_from_slice(&0u16.to_ne_bytes()); // type
    b.extend_from_slice(&(index as i32).to_ne_bytes());
    b.extend_from_slice(&IFF_UP.to_ne_bytes()); // flags
    b.extend_from_slice(&IFF_UP.to_ne_bytes()); // change mask
    finish(b)
}

/// RTM_NEWADDR for `addr/prefix_len` on `index`.
pub fn add_address_message(index: u32, addr: Ipv4Addr, prefix_len: u8, seq: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(40);
    header(&mut b, RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, seq);
    b.extend_from_slice(&[AF_INET, prefix_len, 0, RT_SCOPE_UNIVERSE]);
    b.extend_from_slice(&index.to_ne_bytes());
    attr(&mut b, IFA_LOCAL, &addr.octets());
    attr(&mut b, IFA_ADDRESS, &addr.octets());
    finish(b)
}

/// RTM_NEWADDR for `addr/prefix_len` on `index` that the kernel itself removes after
/// `lifetime_secs` unless the same request refreshes it first (`valid_lft`/`preferred_lft`,
/// as `ip addr replace … valid_lft N preferred_lft N` sets them).
pub fn add_address_with_lifetime_message(
    index: u32,
    addr: Ipv4Addr,
    prefix_len: u8,
    lifetime_secs: u32,
    seq: u32,
) -> Vec<u8> {
    let mut b = add_address_message(index, addr, prefix_len, seq);
    // struct ifa_cacheinfo { ifa_prefered, ifa_valid, cstamp, tstamp }
    let mut info = Vec::with_capacity(16);
    info.extend_from_slice(&lifetime_secs.to_ne_bytes());
    info.extend_from_slice(&lifetime_secs.to_ne_bytes());
    info.extend_from_slice(&[0; 8]);
    attr(&mut b, IFA_CACHEINFO, &info);
    finish(b)
}

/// RTM_DELADDR for `addr/prefix_len` on `index`.
pub fn delete_address_message(index: u32, addr: Ipv4Addr, prefix_len: u8, seq: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(40);
    header(&mut b, RTM_DELADDR, 0, seq);
    b.extend_from_slice(&[AF_INET, prefix_len, 0, RT_SCOPE_UNIVERSE]);
    b.extend_from_slice(&index.to_ne_bytes());
    attr(&mut b, IFA_LOCAL, &addr.octets());
    attr(&mut b, IFA_ADDRESS, &addr.octets());
    finish(b)
}

/// RTM_NEWROUTE for `default via gateway` in the main table.
pub fn default_route_message(gateway: Ipv4Addr, seq: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(36);
    header(&mut b, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, seq);
    b.extend_from_slice(&[
        AF_INET,
        0, // dst_len: default route
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
    ]);
    b.extend_from_slice(&0u32.to_ne_bytes()); // flags
    attr(&mut b, RTA_GATEWAY, &gateway.octets());
    finish(b)
}

/// Reads the errno of an NLMSG_ERROR reply (0 = ACK). `None` for other messages.
pub fn parse_ack(reply: &[u8]) -> Option<i32> {
    if reply.len() < 20 {
        return None;
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    if kind != NLMSG_ERROR {
        return None;
    }
    Some(i32::from_ne_bytes([
        reply[16], reply[17], reply[18], reply[19],
    ]))
}

/// Sends one request on a fresh `NETLINK_ROUTE` socket and waits for its ACK.
pub fn request(message: &[u8]) -> io::Result<()> {
    // SAFETY: plain socket(2) call; the returned fd is owned below and closed on drop.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: message and sa outlive the call; lengths match the buffers.
    let sent = unsafe {
        libc::sendto(
            fd,
            message.as_ptr().cast(),
            message.len(),
            0,
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: buf is writable for its full length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        match parse_ack(&buf[..n as usize]) {
            Some(0) => break,
            Some(e) if -e == libc::EEXIST => break,
            Some(e) => return Err(io::Error::from_raw_os_error(-e)),
            None => continue,
        }
    }
    drop(owned);
    Ok(())
}

/// The index of a network interface.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL"))?;
    // SAFETY: c is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([b[at], b[at + 1]])
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    #[test]
    fn a_link_up_request_sets_and_masks_only_iff_up() {
        let m = link_up_message(3, 7);
        assert_eq!(m.len(), 32);
        assert_eq!(u32_at(&m, 0), 32);
        assert_eq!(u16_at(&m, 4), RTM_NEWLINK);
        assert_eq!(u16_at(&m, 6), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32_at(&m, 8), 7);
        assert_eq!(u32_at(&m, 20), 3);
        assert_eq!((u32_at(&m, 24), u32_at(&m, 28)), (IFF_UP, IFF_UP));
    }

    #[test]
    fn an_address_with_a_lifetime_carries_valid_and_preferred_lifetimes() {
        let m = add_address_with_lifetime_message(2, Ipv4Addr::new(10, 77, 0, 100), 32, 3, 1);
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(m.len(), 16 + 8 + 8 + 8 + 20);
        assert_eq!(
            u16_at(&m, 6),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
        );
        assert_eq!((u16_at(&m, 40), u16_at(&m, 42)), (20, IFA_CACHEINFO));
        assert_eq!((u32_at(&m, 44), u32_at(&m, 48)), (3, 3));
    }

    #[test]
    fn a_delete_request_names_the_address_and_its_prefix() {
        let m = delete_address_message(4, Ipv4Addr::new(10, 77, 0, 100), 32, 9);
        assert_eq!(u16_at(&m, 4), RTM_DELADDR);
        assert_eq!(u16_at(&m, 6), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(&m[16..20], &[AF_INET, 32, 0, 0]);
        assert_eq!(u32_at(&m, 20), 4);
        assert_eq!(&m[28..32], &[10, 77, 0, 100]);
    }

    #[test]
    fn an_address_request_carries_prefix_length_and_local_and_address_attributes() {
        let m = add_address_message(2, Ipv4Addr::new(10, 77, 0, 10), 24, 1);
        assert_eq!(m.len(), 16 + 8 + 8 + 8);
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(&m[16..20], &[AF_INET, 24, 0, 0]);
        assert_eq!(u32_at(&m, 20), 2);
        assert_eq!((u16_at(&m, 24), u16_at(&m, 26)), (8, IFA_LOCAL));
        assert_eq!(&m[28..32], &[10, 77, 0, 10]);
        assert_eq!((u16_at(&m, 32), u16_at(&m, 34)), (8, IFA_ADDRESS));
    }

    #[test]
    fn a_default_route_request_has_no_destination_and_a_gateway() {
        let m = default_route_message(Ipv4Addr::new(10, 77, 0, 1), 1);
        assert_eq!(m.len(), 16 + 12 + 8);
        assert_eq!(m[17], 0, "dst_len 0 means default");
        assert_eq!(m[20], RT_TABLE_MAIN);
        assert_eq!(u16_at(&m, 30), RTA_GATEWAY);
        assert_eq!(&m[32..36], &[10, 77, 0, 1]);
    }

    #[test]
    fn acks_and_errors_are_told_apart_from_other_messages() {
        let mut reply = vec![0u8; 36];
        reply[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        reply[16..20].copy_from_slice(&(-17i32).to_ne_bytes());
        assert_eq!(parse_ack(&reply), Some(-17));
        reply[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes());
        assert_eq!(parse_ack(&reply), None);
    }

    #[test]
    fn loopback_comes_up_through_netlink_as_root() {
        // Needs CAP_NET_ADMIN (we run tests as root); `lo` is up already, so this is a no-op
        // change that the kernel still ACKs.
        let index = ifindex("lo").unwrap();
        request(&link_up_message(index, 1)).unwrap();
    }
}
