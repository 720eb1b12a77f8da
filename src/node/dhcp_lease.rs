//! Getting and keeping a DHCP lease (RFC 2131 §4.4) over the [`System`] seam: the client
//! side of diskless PXE workers. The message format is [`dhcp`](super::dhcp).
//!
//! [`acquire`]: DISCOVER (broadcast flag set: an interface without an address only hears
//! broadcasts) → the first OFFER for our transaction and MAC → REQUEST naming that server →
//! ACK, or NAK and start over. Up to four rounds, waiting 2, 4, 8 and 8 s for each answer;
//! `secs` counts from the first DISCOVER. The caller (`kimg init`) retries the whole thing.
//! A shutdown request ends the wait within [`SHUTDOWN_CHECK`].
//!
//! [`Renewal`]: called on every supervisor tick once bound. At T1 it unicasts a REQUEST
//! (`ciaddr` set) to the granting server, at T2 it broadcasts it to any server; between
//! sends it waits half the time left to T2 (or to the end of the lease), at least 10 s
//! (RFC 2131 §4.4.5 says 60 s; short test leases would not see a retry). Answers are read
//! without blocking, so supervision never stalls on the network. Infinite leases are
//! never renewed.
//!
//! Limits: when the lease expires, or a server NAKs the renewal, or an ACK grants another
//! address, the machine says so on the console and keeps its address and keeps trying: a
//! node's address names it to the cluster (Node object, certificates, routes of the
//! overlay), so dropping it would only take the node off the network. Reboot such a
//! machine. No DHCPDECLINE after an ARP probe, no DHCPRELEASE at shutdown.

use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::cluster::Mac;

use super::dhcp::{Lease, LeaseError, Message, MessageType};
use super::events::Event;
use super::system::{ShutdownReason, System};

/// How long each round of [`acquire`] waits for an OFFER, then for the ACK.
pub const ROUND_WAITS: [Duration; 4] = [
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(8),
];

/// How often a wait for answers looks for a shutdown request: PID 1 must power off
/// promptly even while it asks for an address.
pub const SHUTDOWN_CHECK: Duration = Duration::from_millis(500);

/// Shortest pause between two renewal requests.
pub const MIN_RETRANSMIT: Duration = Duration::from_secs(10);

/// Why no lease was obtained.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error("cannot send on {iface}: {error}")]
    SendFailed { iface: String, error: io::Error },
    #[error("cannot receive on {iface}: {error}")]
    ReceiveFailed { iface: String, error: io::Error },
    #[error("no DHCP offer on {iface} after {rounds} discovers")]
    NoOffer { iface: String, rounds: usize },
    #[error("{server} offered {addr} but did not acknowledge it")]
    NoAck { addr: Ipv4Addr, server: Ipv4Addr },
    #[error("{server} refused {addr} (DHCPNAK)")]
    Refused { addr: Ipv4Addr, server: Ipv4Addr },
    #[error("the DHCPACK is unusable: {0}")]
    BadAck(LeaseError),
    #[error("shutdown requested")]
    Interrupted(ShutdownReason),
}

/// A transaction id: unpredictable enough between machines (MAC) and boots (clock).
fn xid(sys: &dyn System, mac: Mac) -> u32 {
    let m = mac.0;
    u32::from_be_bytes([m[2], m[3], m[4], m[5]]) ^ (sys.now().as_nanos() as u32)
}

fn send(sys: &dyn System, iface: &str, to: Ipv4Addr, msg: &Message) -> Result<(), AcquireError> {
    sys.dhcp_send(iface, to, &msg.encode())
        .map_err(|error| AcquireError::SendFailed {
            iface: iface.into(),
            error,
        })
}

/// Waits up to `wait` for a reply to (`xid`, `mac`) of one of `kinds`; other traffic
/// (other clients' answers, garbage) is skipped.
fn wait_for(
    sys: &dyn System,
    iface: &str,
    xid: u32,
    mac: Mac,
    wait: Duration,
    kinds: &[MessageType],
) -> Result<Option<Message>, AcquireError> {
    let deadline = sys.now() + wait;
    loop {
        let left = deadline.saturating_sub(sys.now());
        if left.is_zero() {
            return Ok(None);
        }
        if let Some(reason) = sys.shutdown_requested() {
            return Err(AcquireError::Interrupted(reason));
        }
        let bytes = sys
            .dhcp_recv(iface, left.min(SHUTDOWN_CHECK))
            .map_err(|error| AcquireError::ReceiveFailed {
                iface: iface.into(),
                error,
            })?;
        let Some(bytes) = bytes else {
            continue;
        };
        if let Ok(m) = Message::parse(&bytes) {
            if m.answers(xid, mac) && kinds.contains(&m.kind) {
                return Ok(Some(m));
            }
        }
    }
}

/// Obtains a lease on `iface` (whose hardware address is `mac`).
pub fn acquire(sys: &dyn System, iface: &str, mac: Mac) -> Result<Lease, AcquireError> {
    let start = sys.now();
    let xid = xid(sys, mac);
    let secs = |sys: &dyn System| sys.now().saturating_sub(start).as_secs().min(65535) as u16;
    let mut last = AcquireError::NoOffer {
        iface: iface.into(),
        rounds: ROUND_WAITS.len(),
    };
    for wait in ROUND_WAITS {
        send(
            sys,
            iface,
            Ipv4Addr::BROADCAST,
            &Message::discover(xid, mac, secs(sys)),
        )?;
        let Some(offer) = wait_for(sys, iface, xid, mac, wait, &[MessageType::Offer])? else {
            continue;
        };
        send(
            sys,
            iface,
            Ipv4Addr::BROADCAST,
            &Message::select(&offer, secs(sys)),
        )?;
        let server = offer.server_id.unwrap_or(offer.siaddr);
        let answer = wait_for(
            sys,
            iface,
            xid,
            mac,
            wait,
            &[MessageType::Ack, MessageType::Nak],
        )?;
        match answer {
            Some(ack) if ack.kind == MessageType::Ack => {
                return Lease::from_ack(&ack).map_err(AcquireError::BadAck)
            }
            Some(_) => {
                last = AcquireError::Refused {
                    addr: offer.yiaddr,
                    server,
                }
            }
            None => {
                last = AcquireError::NoAck {
                    addr: offer.yiaddr,
                    server,
                }
            }
        }
    }
    Err(last)
}

/// A bound lease being kept alive from the supervisor loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Renewal {
    pub iface: String,
    pub mac: Mac,
    pub lease: Lease,
    /// When the current lease was granted ([`System::now`]).
    pub bound_at: Duration,
    xid: u32,
    next_send: Option<Duration>,
    expiry_reported: bool,
}

impl Renewal {
    pub fn new(iface: &str, mac: Mac, lease: Lease, bound_at: Duration) -> Renewal {
        Renewal {
            iface: iface.into(),
            mac,
            lease,
            bound_at,
            xid: 0,
            next_send: None,
            expiry_reported: false,
        }
    }

    /// One step: reads answers without waiting, sends a renewal request when one is due.
    /// Returns the console event of anything worth saying.
    pub fn poll(&mut self, sys: &dyn System) -> Option<Event> {
        let (Some(t1), Some(t2), Some(end)) = (
            self.lease.renew_after,
            self.lease.rebind_after,
            self.lease.duration,
        ) else {
            return None; // infinite
        };
        let now = sys.now();
        let age = now.saturating_sub(self.bound_at);
        if age < t1 {
            return None;
        }
        if self.next_send.is_some() {
            while let Ok(Some(bytes)) = sys.dhcp_recv(&self.iface, Duration::ZERO) {
                let Ok(m) = Message::parse(&bytes) else {
                    continue;
                };
                if !m.answers(self.xid, self.mac) {
                    continue;
                }
                if let Some(event) = self.answered(&m, now) {
                    return Some(event);
                }
            }
        }
        if age >= end && !self.expiry_reported {
            self.expiry_reported = true;
            return Some(
                Event::new("dhcp-expired")
                    .field("iface", &self.iface)
                    .field("ip", self.lease.net())
                    .field("action", "keeping the address, still asking"),
            );
        }
        if self.next_send.is_some_and(|t| now < t) {
            return None;
        }
        if self.next_send.is_none() {
            // A new renewal cycle: a new transaction.
            self.xid = xid(sys, self.mac);
        }
        let rebinding = age >= t2;
        let to = if rebinding {
            Ipv4Addr::BROADCAST
        } else {
            self.lease.server
        };
        let until = if rebinding { end.max(age) } else { t2 };
        self.next_send = Some(now + ((until - age) / 2).max(MIN_RETRANSMIT));
        let msg = Message::renew(self.xid, self.mac, self.lease.addr);
        match sys.dhcp_send(&self.iface, to, &msg.encode()) {
            Ok(()) => None,
            Err(e) => Some(
                Event::new("dhcp-renew-failed")
                    .field("iface", &self.iface)
                    .field("error", e),
            ),
        }
    }

    fn answered(&mut self, m: &Message, now: Duration) -> Option<Event> {
        let event =
            |name, iface: &str, net| Event::new(name).field("iface", iface).field("ip", net);
        let was = self.lease.net();
        match m.kind {
            MessageType::Ack => match Lease::from_ack(m) {
                Ok(lease) if lease.addr == self.lease.addr => {
                    self.lease = lease;
                    self.bound_at = now;
                    self.next_send = None;
                    self.expiry_reported = false;
                    Some(
                        event("dhcp-renewed", &self.iface, self.lease.net())
                            .field("lease", self.lease.duration_text()),
                    )
                }
                Ok(other) => Some(
                    event("dhcp-renew-refused", &self.iface, was)
                        .field("reason", "address-changed")
                        .field("offered", other.net()),
                ),
                Err(e) => Some(
                    event("dhcp-renew-refused", &self.iface, was)
                        .field("reason", "bad-ack")
                        .field("error", e),
                ),
            },
            MessageType::Nak => Some(
                event("dhcp-renew-refused", &self.iface, was)
                    .field("reason", "nak")
                    .field("server", m.server_id.unwrap_or(m.siaddr)),
            ),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::recording::{Call, FakeDhcpServer, Recording};

    const MAC: Mac = Mac([0x52, 0x54, 0x00, 0x77, 0x00, 0x51]);

    fn server(lease_secs: u32) -> FakeDhcpServer {
        FakeDhcpServer {
            addr: "10.77.0.150/24".parse().unwrap(),
            server: "10.77.0.1".parse().unwrap(),
            router: None,
            dns: Vec::new(),
            lease_secs,
            from: Duration::ZERO,
            nak_renewals: false,
        }
    }

    fn sends(sys: &Recording) -> Vec<(MessageType, Ipv4Addr)> {
        sys.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::DhcpSend { kind, to, .. } => Some((kind, to)),
                _ => None,
            })
            .collect()
    }

    /// Polls every 200 ms (the supervisor's tick) until `until`, collecting events.
    fn run(r: &mut Renewal, sys: &Recording, until: Duration) -> Vec<String> {
        let mut events = Vec::new();
        while sys.now() < until {
            if let Some(e) = r.poll(sys) {
                events.push(e.to_string());
            }
            sys.sleep(Duration::from_millis(200));
        }
        events
    }

    #[test]
    fn acquiring_skips_garbage_and_other_transactions() {
        let sys = Recording::new().with_dhcp_server(server(600));
        sys.dhcp_deliver(vec![1, 2, 3]);
        let mut stranger = Message::discover(1, Mac([2; 6]), 0);
        stranger.op = super::super::dhcp::Op::Reply;
        stranger.kind = MessageType::Offer;
        sys.dhcp_deliver(stranger.encode());
        let lease = acquire(&sys, "eth0", MAC).unwrap();
        assert_eq!(lease.net().to_string(), "10.77.0.150/24");
        assert_eq!(lease.router, None, "no router option: none");
        assert_eq!(
            sends(&sys),
            [
                (MessageType::Discover, Ipv4Addr::BROADCAST),
                (MessageType::Request, Ipv4Addr::BROADCAST)
            ]
        );
    }

    #[test]
    fn without_a_server_acquiring_gives_up_after_four_rounds() {
        let sys = Recording::new();
        let err = acquire(&sys, "eth0", MAC).unwrap_err();
        assert!(
            matches!(err, AcquireError::NoOffer { rounds: 4, .. }),
            "{err}"
        );
        assert_eq!(
            sys.now(),
            Duration::from_secs(22),
            "2 + 4 + 8 + 8 s of waiting"
        );
    }

    #[test]
    fn a_shutdown_request_ends_the_wait_for_answers_promptly() {
        let sys = Recording::new();
        sys.shutdown_at(Duration::from_secs(3), ShutdownReason::PowerButton);
        let err = acquire(&sys, "eth0", MAC).unwrap_err();
        assert!(
            matches!(err, AcquireError::Interrupted(ShutdownReason::PowerButton)),
            "{err}"
        );
        assert!(sys.now() <= Duration::from_millis(3500), "{:?}", sys.now());
    }

    #[test]
    fn renewal_unicasts_at_t1_then_broadcasts_at_t2_and_reports_expiry_once() {
        // A server that stops answering after the first lease.
        let sys = Recording::new();
        let lease = Lease::from_ack(&Message {
            op: super::super::dhcp::Op::Reply,
            kind: MessageType::Ack,
            yiaddr: "10.77.0.150".parse().unwrap(),
            lease_secs: Some(100),
            server_id: Some("10.77.0.1".parse().unwrap()),
            ..Message::discover(0, MAC, 0)
        })
        .unwrap();
        let mut r = Renewal::new("eth0", MAC, lease, Duration::ZERO);
        let events = run(&mut r, &sys, Duration::from_secs(130));
        let sent: Vec<Ipv4Addr> = sends(&sys)
            .into_iter()
            .map(|(kind, to)| {
                assert_eq!(kind, MessageType::Request);
                to
            })
            .collect();
        let server: Ipv4Addr = "10.77.0.1".parse().unwrap();
        // T1 = 50 s: unicasts at 50, 68.8 (half the time to T2) and 78.8 s (the 10 s
        // floor); from T2 = 87.5 s broadcasts every 10 s: 88.8, 98.8, 108.8, 118.8, 128.8.
        let mut expected = vec![server; 3];
        expected.extend([Ipv4Addr::BROADCAST; 5]);
        assert_eq!(sent, expected);
        assert_eq!(
            events,
            ["kimg: dhcp-expired iface=eth0 ip=10.77.0.150/24 action=\"keeping the address, still asking\""]
        );
    }

    #[test]
    fn a_refused_renewal_is_reported_and_the_lease_kept() {
        let fake = FakeDhcpServer {
            nak_renewals: true,
            ..server(100)
        };
        let sys = Recording::new().with_dhcp_server(fake);
        let lease = acquire(&sys, "eth0", MAC).unwrap();
        let mut r = Renewal::new("eth0", MAC, lease.clone(), sys.now());
        let events = run(&mut r, &sys, Duration::from_secs(52));
        assert_eq!(
            events,
            ["kimg: dhcp-renew-refused iface=eth0 ip=10.77.0.150/24 reason=nak server=10.77.0.1"]
        );
        assert_eq!(r.lease, lease);
    }

    #[test]
    fn an_infinite_lease_sends_nothing() {
        let sys = Recording::new().with_dhcp_server(server(u32::MAX));
        let lease = acquire(&sys, "eth0", MAC).unwrap();
        let mut r = Renewal::new("eth0", MAC, lease, sys.now());
        assert!(run(&mut r, &sys, Duration::from_secs(3600)).is_empty());
        assert_eq!(
            sends(&sys).len(),
            2,
            "only the initial discover and request"
        );
    }
}
