//! DHCPv4 messages (RFC 2131) and their options (RFC 2132): the wire format of the client
//! that diskless PXE workers use to get an address. Pure encode and parse; the exchange
//! over a socket lives in [`dhcp_lease`](super::dhcp_lease), behind the `System` seam.
//!
//! A [`Message`] is the fixed BOOTP header (op, xid, flags, the four addresses, the client's
//! hardware address), the magic cookie and the options kimg uses: 53 message type, 1 subnet
//! mask, 3 router, 6 DNS servers, 51 lease time, 54 server identifier, 50 requested address,
//! 58/59 renewal (T1) and rebinding (T2) times, 55 parameter request list, 12 host name.
//! Other options are skipped when parsing. [`Lease`] is what an ACK grants, with RFC 2131's
//! default T1 = ½ and T2 = ⅞ of the lease when the server does not send them.
//!
//! Encoding pads to BOOTP's 300-byte minimum (some relays drop shorter messages).
//!
//! An ACK without a subnet mask is taken as a /24 (the common node network) rather than
//! guessing a classful mask.
//!
//! Limits: Ethernet only (htype 1); option overload (52, options inside `file`/`sname`) is
//! not followed; long options split over several instances (RFC 3396) are not joined.

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::cluster::Mac;

/// The UDP port servers listen on.
pub const SERVER_PORT: u16 = 67;
/// The UDP port clients listen on.
pub const CLIENT_PORT: u16 = 68;

const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const HEADER_LEN: usize = 236;
const MIN_LEN: usize = 300;
const HTYPE_ETHERNET: u8 = 1;
const FLAG_BROADCAST: u16 = 0x8000;

const OPT_PAD: u8 = 0;
const OPT_SUBNET_MASK: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_DNS: u8 = 6;
const OPT_HOSTNAME: u8 = 12;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_LEASE_TIME: u8 = 51;
const OPT_MESSAGE_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_PARAMETERS: u8 = 55;
const OPT_RENEWAL_TIME: u8 = 58;
const OPT_REBINDING_TIME: u8 = 59;
const OPT_END: u8 = 255;

/// What the client asks servers to include.
pub const REQUESTED_PARAMETERS: [u8; 7] = [
    OPT_SUBNET_MASK,
    OPT_ROUTER,
    OPT_DNS,
    OPT_LEASE_TIME,
    OPT_SERVER_ID,
    OPT_RENEWAL_TIME,
    OPT_REBINDING_TIME,
];

/// A lease time of all ones means "infinite" (RFC 2132 §9.2).
const INFINITE: u32 = u32::MAX;

/// BOOTP `op`: who sent the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Request = 1,
    Reply = 2,
}

/// Option 53.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl MessageType {
    fn from_u8(v: u8) -> Option<MessageType> {
        use MessageType::*;
        [Discover, Offer, Request, Decline, Ack, Nak, Release, Inform]
            .into_iter()
            .find(|t| *t as u8 == v)
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MessageType::Discover => "discover",
            MessageType::Offer => "offer",
            MessageType::Request => "request",
            MessageType::Decline => "decline",
            MessageType::Ack => "ack",
            MessageType::Nak => "nak",
            MessageType::Release => "release",
            MessageType::Inform => "inform",
        })
    }
}

/// One DHCP message, client's or server's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub op: Op,
    pub kind: MessageType,
    /// Transaction id: replies carry the client's.
    pub xid: u32,
    /// Seconds since the client began acquiring.
    pub secs: u16,
    /// Asks the server to broadcast its reply (the client cannot receive unicast yet).
    pub broadcast: bool,
    /// The client's current address (renewing), else unspecified.
    pub ciaddr: Ipv4Addr,
    /// The address offered or granted ("your address").
    pub yiaddr: Ipv4Addr,
    /// The next server (TFTP) address.
    pub siaddr: Ipv4Addr,
    pub chaddr: Mac,
    pub subnet_mask: Option<Ipv4Addr>,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// Option 51 in seconds; `u32::MAX` is infinite.
    pub lease_secs: Option<u32>,
    pub renewal_secs: Option<u32>,
    pub rebinding_secs: Option<u32>,
    pub server_id: Option<Ipv4Addr>,
    pub requested_ip: Option<Ipv4Addr>,
    pub parameters: Vec<u8>,
    pub hostname: Option<String>,
}

/// Why bytes are not a DHCP message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{0} bytes is shorter than a DHCP message")]
    TooShort(usize),
    #[error("op {0} is neither BOOTREQUEST nor BOOTREPLY")]
    UnknownOp(u8),
    #[error("hardware type {htype} length {hlen} is not Ethernet")]
    NotEthernet { htype: u8, hlen: u8 },
    #[error("no DHCP magic cookie (a plain BOOTP message)")]
    NoCookie,
    #[error("option {code} runs past the end of the message")]
    TruncatedOption { code: u8 },
    #[error("option {code} has length {len}, which its type does not allow")]
    BadOptionLength { code: u8, len: usize },
    #[error("no message type option (53)")]
    NoMessageType,
    #[error("message type {0} is unknown")]
    UnknownMessageType(u8),
}

impl Message {
    /// A client message with every optional part empty.
    fn client(kind: MessageType, xid: u32, mac: Mac) -> Message {
        Message {
            op: Op::Request,
            kind,
            xid,
            secs: 0,
            broadcast: false,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            chaddr: mac,
            subnet_mask: None,
            routers: Vec::new(),
            dns: Vec::new(),
            lease_secs: None,
            renewal_secs: None,
            rebinding_secs: None,
            server_id: None,
            requested_ip: None,
            parameters: REQUESTED_PARAMETERS.to_vec(),
            hostname: None,
        }
    }

    /// DHCPDISCOVER, broadcast flag set: an unconfigured client only hears broadcasts.
    pub fn discover(xid: u32, mac: Mac, secs: u16) -> Message {
        Message {
            broadcast: true,
            secs,
            ..Message::client(MessageType::Discover, xid, mac)
        }
    }

    /// DHCPREQUEST in the SELECTING state: accepts `offer`, naming its server.
    pub fn select(offer: &Message, secs: u16) -> Message {
        Message {
            broadcast: true,
            secs,
            requested_ip: Some(offer.yiaddr),
            server_id: offer.server_id,
            ..Message::client(MessageType::Request, offer.xid, offer.chaddr)
        }
    }

    /// DHCPREQUEST in the RENEWING or REBINDING state: `ciaddr` set, no server id, no
    /// requested address (RFC 2131 §4.3.2).
    pub fn renew(xid: u32, mac: Mac, addr: Ipv4Addr) -> Message {
        Message {
            ciaddr: addr,
            ..Message::client(MessageType::Request, xid, mac)
        }
    }

    /// The wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(MIN_LEN);
        b.extend_from_slice(&[self.op as u8, HTYPE_ETHERNET, 6, 0]);
        b.extend_from_slice(&self.xid.to_be_bytes());
        b.extend_from_slice(&self.secs.to_be_bytes());
        let flags = if self.broadcast { FLAG_BROADCAST } else { 0 };
        b.extend_from_slice(&flags.to_be_bytes());
        for a in [self.ciaddr, self.yiaddr, self.siaddr, Ipv4Addr::UNSPECIFIED] {
            b.extend_from_slice(&a.octets());
        }
        b.extend_from_slice(&self.chaddr.0);
        b.resize(HEADER_LEN, 0); // chaddr padding, sname, file
        b.extend_from_slice(&MAGIC_COOKIE);

        let mut opt = |code: u8, data: &[u8]| {
            // Every option kimg writes is far below 255 bytes; longer ones are cut rather
            // than encoded wrongly.
            let data = &data[..data.len().min(255)];
            b.push(code);
            b.push(data.len() as u8);
            b.extend_from_slice(data);
        };
        opt(OPT_MESSAGE_TYPE, &[self.kind as u8]);
        let addrs =
            |list: &[Ipv4Addr]| -> Vec<u8> { list.iter().flat_map(|a| a.octets()).collect() };
        if let Some(a) = self.requested_ip {
            opt(OPT_REQUESTED_IP, &a.octets());
        }
        if let Some(a) = self.server_id {
            opt(OPT_SERVER_ID, &a.octets());
        }
        if let Some(m) = self.subnet_mask {
            opt(OPT_SUBNET_MASK, &m.octets());
        }
        if !self.routers.is_empty() {
            opt(OPT_ROUTER, &addrs(&self.routers));
        }
        if !self.dns.is_empty() {
            opt(OPT_DNS, &addrs(&self.dns));
        }
        for (code, value) in [
            (OPT_LEASE_TIME, self.lease_secs),
            (OPT_RENEWAL_TIME, self.renewal_secs),
            (OPT_REBINDING_TIME, self.rebinding_secs),
        ] {
            if let Some(v) = value {
                opt(code, &v.to_be_bytes());
            }
        }
        if let Some(h) = &self.hostname {
            opt(OPT_HOSTNAME, h.as_bytes());
        }
        if !self.parameters.is_empty() {
            opt(OPT_PARAMETERS, &self.parameters);
        }
        b.push(OPT_END);
        if b.len() < MIN_LEN {
            b.resize(MIN_LEN, OPT_PAD);
        }
        b
    }

    /// Parses a message; unknown options are skipped.
    pub fn parse(bytes: &[u8]) -> Result<Message, ParseError> {
        if bytes.len() < HEADER_LEN + MAGIC_COOKIE.len() {
            return Err(ParseError::TooShort(bytes.len()));
        }
        let op = match bytes[0] {
            1 => Op::Request,
            2 => Op::Reply,
            other => return Err(ParseError::UnknownOp(other)),
        };
        if bytes[1] != HTYPE_ETHERNET || bytes[2] != 6 {
            return Err(ParseError::NotEthernet {
                htype: bytes[1],
                hlen: bytes[2],
            });
        }
        if bytes[HEADER_LEN..HEADER_LEN + 4] != MAGIC_COOKIE {
            return Err(ParseError::NoCookie);
        }
        let u32_at = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let addr_at = |at: usize| Ipv4Addr::from(u32_at(at));
        let mut chaddr = [0u8; 6];
        chaddr.copy_from_slice(&bytes[28..34]);
        let mut msg = Message {
            op,
            kind: MessageType::Discover, // replaced by option 53 below
            xid: u32_at(4),
            secs: u16::from_be_bytes([bytes[8], bytes[9]]),
            broadcast: u16::from_be_bytes([bytes[10], bytes[11]]) & FLAG_BROADCAST != 0,
            ciaddr: addr_at(12),
            yiaddr: addr_at(16),
            siaddr: addr_at(20),
            chaddr: Mac(chaddr),
            subnet_mask: None,
            routers: Vec::new(),
            dns: Vec::new(),
            lease_secs: None,
            renewal_secs: None,
            rebinding_secs: None,
            server_id: None,
            requested_ip: None,
            parameters: Vec::new(),
            hostname: None,
        };
        let mut kind = None;
        let mut at = HEADER_LEN + MAGIC_COOKIE.len();
        while at < bytes.len() {
            let code = bytes[at];
            if code == OPT_PAD {
                at += 1;
                continue;
            }
            if code == OPT_END {
                break;
            }
            let len = *bytes
                .get(at + 1)
                .ok_or(ParseError::TruncatedOption { code })? as usize;
            let data = bytes
                .get(at + 2..at + 2 + len)
                .ok_or(ParseError::TruncatedOption { code })?;
            at += 2 + len;
            let bad = || ParseError::BadOptionLength { code, len };
            let one_addr = || -> Result<Ipv4Addr, ParseError> {
                let o: [u8; 4] = data.try_into().map_err(|_| bad())?;
                Ok(Ipv4Addr::from(o))
            };
            let addr_list = || -> Result<Vec<Ipv4Addr>, ParseError> {
                if len == 0 || !len.is_multiple_of(4) {
                    return Err(bad());
                }
                Ok(data
                    .chunks_exact(4)
                    .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                    .collect())
            };
            let secs = || -> Result<u32, ParseError> {
                let o: [u8; 4] = data.try_into().map_err(|_| bad())?;
                Ok(u32::from_be_bytes(o))
            };
            match code {
                OPT_MESSAGE_TYPE => {
                    let [v] = data else { return Err(bad()) };
                    kind =
                        Some(MessageType::from_u8(*v).ok_or(ParseError::UnknownMessageType(*v))?);
                }
                OPT_SUBNET_MASK => msg.subnet_mask = Some(one_addr()?),
                OPT_ROUTER => msg.routers = addr_list()?,
                OPT_DNS => msg.dns = addr_list()?,
                OPT_LEASE_TIME => msg.lease_secs = Some(secs()?),
                OPT_RENEWAL_TIME => msg.renewal_secs = Some(secs()?),
                OPT_REBINDING_TIME => msg.rebinding_secs = Some(secs()?),
                OPT_SERVER_ID => msg.server_id = Some(one_addr()?),
                OPT_REQUESTED_IP => msg.requested_ip = Some(one_addr()?),
                OPT_PARAMETERS => msg.parameters = data.to_vec(),
                OPT_HOSTNAME => msg.hostname = Some(String::from_utf8_lossy(data).into_owned()),
                _ => {}
            }
        }
        msg.kind = kind.ok_or(ParseError::NoMessageType)?;
        Ok(msg)
    }

    /// Whether this is a server's reply to the client `mac`'s transaction `xid`.
    pub fn answers(&self, xid: u32, mac: Mac) -> bool {
        self.op == Op::Reply && self.xid == xid && self.chaddr == mac
    }
}

/// What a DHCPACK grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// The server identifier (option 54), where renewals go.
    pub server: Ipv4Addr,
    /// `None`: an infinite lease, never renewed.
    pub duration: Option<Duration>,
    /// T1: when to renew with the granting server.
    pub renew_after: Option<Duration>,
    /// T2: when to ask any server.
    pub rebind_after: Option<Duration>,
}

/// Why an ACK does not make a usable lease.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("the server granted no address")]
    NoAddress,
    #[error("subnet mask {0} is not a contiguous prefix")]
    BadMask(Ipv4Addr),
    #[error("the answer names no server (option 54)")]
    NoServer,
}

impl Lease {
    /// The lease of an ACK (a /24 when the ACK has no subnet mask).
    pub fn from_ack(ack: &Message) -> Result<Lease, LeaseError> {
        if ack.yiaddr.is_unspecified() {
            return Err(LeaseError::NoAddress);
        }
        let prefix_len = match ack.subnet_mask {
            Some(mask) => {
                let bits = u32::from(mask);
                if bits.leading_ones() + bits.trailing_zeros() != 32 {
                    return Err(LeaseError::BadMask(mask));
                }
                bits.leading_ones() as u8
            }
            None => 24,
        };
        let server = ack.server_id.ok_or(LeaseError::NoServer)?;
        let duration = match ack.lease_secs {
            None | Some(INFINITE) => None,
            Some(s) => Some(Duration::from_secs(s.into())),
        };
        let part = |explicit: Option<u32>, num: u32, den: u32| {
            duration.map(|d| match explicit {
                Some(s) if Duration::from_secs(s.into()) < d => Duration::from_secs(s.into()),
                _ => d * num / den,
            })
        };
        Ok(Lease {
            addr: ack.yiaddr,
            prefix_len,
            router: ack.routers.first().copied(),
            dns: ack.dns.clone(),
            server,
            duration,
            renew_after: part(ack.renewal_secs, 1, 2),
            rebind_after: part(ack.rebinding_secs, 7, 8),
        })
    }

    /// `addr/prefix_len`.
    pub fn net(&self) -> ipnet::Ipv4Net {
        ipnet::Ipv4Net::new(self.addr, self.prefix_len)
            .unwrap_or_else(|_| ipnet::Ipv4Net::from(self.addr))
    }

    /// The lease time for console events: seconds, or `infinite`.
    pub fn duration_text(&self) -> String {
        match self.duration {
            Some(d) => format!("{}s", d.as_secs()),
            None => "infinite".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Message::parse(&bytes);
        }

        #[test]
        fn any_message_round_trips(
            xid in any::<u32>(), secs in any::<u16>(), broadcast in any::<bool>(),
            mac in any::<[u8; 6]>(), yiaddr in any::<u32>(), lease in proptest::option::of(any::<u32>()),
            dns in proptest::collection::vec(any::<u32>(), 0..5), kind in 1u8..=8,
        ) {
            let m = Message {
                op: Op::Reply,
                kind: MessageType::from_u8(kind).unwrap(),
                xid, secs, broadcast,
                yiaddr: Ipv4Addr::from(yiaddr),
                dns: dns.into_iter().map(Ipv4Addr::from).collect(),
                lease_secs: lease,
                ..Message::client(MessageType::Ack, 0, Mac(mac))
            };
            prop_assert_eq!(Message::parse(&m.encode()).unwrap(), m);
        }
    }

    const MAC: Mac = Mac([0x52, 0x54, 0x00, 0x77, 0x00, 0x51]);

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn ack() -> Message {
        Message {
            op: Op::Reply,
            kind: MessageType::Ack,
            yiaddr: ip("10.77.0.150"),
            subnet_mask: Some(ip("255.255.255.0")),
            routers: vec![ip("10.77.0.1")],
            dns: vec![ip("10.77.0.1"), ip("10.77.0.2")],
            lease_secs: Some(3600),
            server_id: Some(ip("10.77.0.1")),
            parameters: Vec::new(),
            ..Message::client(MessageType::Ack, 0xdead_beef, MAC)
        }
    }

    #[test]
    fn a_discover_has_the_rfc_header_cookie_type_and_parameter_list() {
        let b = Message::discover(0x0102_0304, MAC, 3).encode();
        assert_eq!(b.len(), 300, "padded to the BOOTP minimum");
        assert_eq!(
            &b[0..4],
            &[1, 1, 6, 0],
            "BOOTREQUEST, Ethernet, hlen 6, hops 0"
        );
        assert_eq!(&b[4..8], &[1, 2, 3, 4], "xid in network order");
        assert_eq!(&b[8..10], &[0, 3], "secs");
        assert_eq!(&b[10..12], &[0x80, 0], "broadcast flag");
        assert_eq!(&b[12..28], &[0; 16], "no addresses yet");
        assert_eq!(&b[28..34], &MAC.0);
        assert_eq!(
            &b[34..236],
            &[0; 202][..],
            "chaddr padding, sname and file are zero"
        );
        assert_eq!(&b[236..240], &MAGIC_COOKIE);
        assert_eq!(
            &b[240..243],
            &[53, 1, 1],
            "the first option is the message type"
        );
        assert_eq!(&b[243..245], &[55, 7]);
        assert_eq!(&b[245..252], &REQUESTED_PARAMETERS);
        assert_eq!(b[252], 255);
    }

    #[test]
    fn a_selecting_request_names_the_offered_address_and_its_server() {
        let offer = Message {
            kind: MessageType::Offer,
            ..ack()
        };
        let req = Message::select(&offer, 1);
        let back = Message::parse(&req.encode()).unwrap();
        assert_eq!(back.kind, MessageType::Request);
        assert_eq!(back.op, Op::Request);
        assert_eq!(back.xid, 0xdead_beef);
        assert_eq!(back.requested_ip, Some(ip("10.77.0.150")));
        assert_eq!(back.server_id, Some(ip("10.77.0.1")));
        assert!(back.ciaddr.is_unspecified());
        assert!(back.broadcast);
    }

    #[test]
    fn a_renewing_request_carries_ciaddr_and_neither_server_nor_requested_address() {
        let back = Message::parse(&Message::renew(7, MAC, ip("10.77.0.150")).encode()).unwrap();
        assert_eq!(back.ciaddr, ip("10.77.0.150"));
        assert_eq!((back.server_id, back.requested_ip), (None, None));
        assert!(!back.broadcast, "a bound client hears unicast");
    }

    #[test]
    fn every_option_survives_an_encode_parse_round_trip() {
        let m = Message {
            renewal_secs: Some(100),
            rebinding_secs: Some(200),
            hostname: Some("worker-525400770051".into()),
            siaddr: ip("10.77.0.1"),
            secs: 9,
            broadcast: true,
            ..ack()
        };
        assert_eq!(Message::parse(&m.encode()).unwrap(), m);
    }

    #[test]
    fn pads_and_unknown_options_are_skipped_and_end_stops_the_walk() {
        let mut b = ack().encode();
        let opts = HEADER_LEN + 4;
        // pad, an unknown option 43 (vendor specific), then the original options
        let mut extra = vec![0, 0, 43, 3, 1, 2, 3];
        extra.extend_from_slice(&b[opts..]);
        b.truncate(opts);
        b.extend_from_slice(&extra);
        // garbage after END is ignored
        b.extend_from_slice(&[53, 99]);
        let m = Message::parse(&b).unwrap();
        assert_eq!(m.kind, MessageType::Ack);
        assert_eq!(m.dns, vec![ip("10.77.0.1"), ip("10.77.0.2")]);
    }

    #[test]
    fn malformed_messages_are_refused_with_the_reason() {
        assert_eq!(Message::parse(&[2; 100]), Err(ParseError::TooShort(100)));
        let good = ack().encode();
        let mut b = good.clone();
        b[0] = 3;
        assert_eq!(Message::parse(&b), Err(ParseError::UnknownOp(3)));
        let mut b = good.clone();
        b[236] = 0;
        assert_eq!(Message::parse(&b), Err(ParseError::NoCookie));
        let mut b = good.clone();
        b.truncate(240);
        b.extend_from_slice(&[6, 8, 10, 77]);
        assert_eq!(
            Message::parse(&b),
            Err(ParseError::TruncatedOption { code: 6 })
        );
        let mut b = good.clone();
        b.truncate(240);
        b.extend_from_slice(&[53, 1, 5, 1, 3, 10, 0, 0, 255]);
        assert_eq!(
            Message::parse(&b),
            Err(ParseError::BadOptionLength { code: 1, len: 3 })
        );
        let mut b = good;
        b.truncate(240);
        b.extend_from_slice(&[1, 4, 255, 255, 255, 0, 255]);
        assert_eq!(Message::parse(&b), Err(ParseError::NoMessageType));
    }

    #[test]
    fn a_reply_answers_only_its_own_transaction_and_hardware_address() {
        let a = ack();
        assert!(a.answers(0xdead_beef, MAC));
        assert!(!a.answers(1, MAC));
        assert!(!a.answers(0xdead_beef, Mac([0x52, 0x54, 0, 0, 0, 1])));
        let own = Message::discover(0xdead_beef, MAC, 0);
        assert!(
            !own.answers(0xdead_beef, MAC),
            "our own broadcast is not a reply"
        );
    }

    #[test]
    fn a_lease_takes_mask_router_dns_and_derives_t1_and_t2() {
        let l = Lease::from_ack(&ack()).unwrap();
        assert_eq!(l.net().to_string(), "10.77.0.150/24");
        assert_eq!(l.router, Some(ip("10.77.0.1")));
        assert_eq!(l.server, ip("10.77.0.1"));
        assert_eq!(l.duration, Some(Duration::from_secs(3600)));
        assert_eq!(l.renew_after, Some(Duration::from_secs(1800)));
        assert_eq!(l.rebind_after, Some(Duration::from_secs(3150)));
        let explicit = Lease::from_ack(&Message {
            renewal_secs: Some(600),
            rebinding_secs: Some(9999),
            ..ack()
        })
        .unwrap();
        assert_eq!(explicit.renew_after, Some(Duration::from_secs(600)));
        assert_eq!(
            explicit.rebind_after,
            Some(Duration::from_secs(3150)),
            "a T2 beyond the lease falls back to 7/8"
        );
    }

    #[test]
    fn an_infinite_lease_is_never_renewed() {
        let l = Lease::from_ack(&Message {
            lease_secs: Some(u32::MAX),
            ..ack()
        })
        .unwrap();
        assert_eq!(
            (l.duration, l.renew_after, l.rebind_after),
            (None, None, None)
        );
        assert_eq!(l.duration_text(), "infinite");
    }

    #[test]
    fn unusable_acks_are_refused() {
        let no_addr = Message {
            yiaddr: Ipv4Addr::UNSPECIFIED,
            ..ack()
        };
        assert_eq!(Lease::from_ack(&no_addr), Err(LeaseError::NoAddress));
        let holes = Message {
            subnet_mask: Some(ip("255.0.255.0")),
            ..ack()
        };
        assert_eq!(
            Lease::from_ack(&holes),
            Err(LeaseError::BadMask(ip("255.0.255.0")))
        );
        let anonymous = Message {
            server_id: None,
            ..ack()
        };
        assert_eq!(Lease::from_ack(&anonymous), Err(LeaseError::NoServer));
    }
}
