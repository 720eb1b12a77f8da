//! `kimg vip`: the API virtual IP, held by exactly one master whose apiserver is healthy
//! (docs/ARCHITECTURE.md §6).
//!
//! How: every master runs `kimg vip` next to its apiserver. Each one talks only to the
//! apiserver on its own machine (`/run/kimg/admin.conf`, 127.0.0.1:6443) and competes
//! for the Lease `kube-system/kimg-vip`, whose writes go through that apiserver to etcd
//! with optimistic concurrency. Every `retry_period` (250 ms) a candidate checks its local
//! `/readyz`, reads the Lease and — per [`Elector`] (`client::lease`) — creates it, renews it (the
//! holder), claims it when released, or takes it over once it has seen the *same*
//! `resourceVersion` for `lease_duration` (2 s). The winner adds the VIP as a /32 to the
//! interface carrying its node address and broadcasts gratuitous ARP (an announcement and
//! an unsolicited reply) so neighbours' caches move to its MAC at once. A holder whose
//! apiserver turns unhealthy, and every holder on SIGTERM, first removes the address and
//! only then releases the Lease (empty holder), so a successor claims it within one retry
//! period without waiting for expiry.
//!
//! Fencing (why two holders never exist): let `s` be the moment the holder *started* its
//! last successful renewal. That write is stored no earlier than `s`, so any candidate
//! that reads it does so at some `o ≥ s` on its own clock, and may take over no earlier
//! than `o + lease_duration ≥ s + lease_duration`. The holder drops the address at
//! `s + renew_deadline` (1.5 s) at the latest — the loop never waits past that deadline,
//! and every request is cut off by it — so it is gone at least `lease_duration −
//! renew_deadline` (0.5 s) before any takeover write can even be sent. Only elapsed times
//! on each machine's monotonic clock are compared, never two clocks; the margin absorbs
//! clock-rate differences and scheduling delay of the holder's timer. A takeover write
//! carries the version it saw, so if the holder renewed meanwhile it fails with a
//! conflict. A holder cut off from the network (the partition case) cannot renew — its
//! apiserver cannot reach an etcd quorum — and so drops the VIP by its deadline, before the
//! others may take it. On start `kimg vip` removes a VIP left on its interface by an
//! earlier run (a crashed process is restarted by the supervisor within seconds).
//!
//! Failover after a holder crash takes about `lease_duration + retry_period` plus the
//! takeover write: ~2.3 s with the defaults.
//!
//! Limits: the fence is the holder process's own timer. A holder *process* that is frozen
//! (not crashed, not its machine) is fenced by its kernel instead: the /32 carries a
//! lifetime of the renew deadline in whole seconds (`valid_lft`, refreshed by every
//! renewal), which the kernel enforces up to about a second late — so for a frozen holder
//! the address may overlap a takeover by that much, and no longer. IPv4 only.

pub mod link;

use std::net::Ipv4Addr;
use std::time::Instant;

use kube::Client;

use crate::client::lease::{Candidate, Round};
pub use crate::client::lease::{Elector, LeaseView, Step, Timing};
pub use link::Link;

/// The Lease the masters compete for.
pub const LEASE_NAME: &str = "kimg-vip";
/// Its namespace.
pub const LEASE_NAMESPACE: &str = "kube-system";

/// What `kimg vip` needs.
#[derive(Debug, Clone)]
pub struct Options {
    pub vip: Ipv4Addr,
    pub link: Link,
    /// The holder name in the Lease (the node name).
    pub identity: String,
    pub timing: Timing,
}

async fn ready(client: &Client) -> Result<(), String> {
    let req = hyper::Request::get("/readyz")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    client
        .request_text(req)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Holds the VIP on `opts.link` whenever this machine wins the election, until `stop`
/// resolves; then drops it and releases the Lease.
pub async fn run(client: Client, opts: Options, stop: impl std::future::Future<Output = ()>) {
    let Options {
        vip,
        link,
        identity,
        timing,
    } = opts;
    let mut c = Candidate::new(&client, LEASE_NAMESPACE, LEASE_NAME, &identity, timing);
    // The address's kernel lifetime: the renew deadline, in the whole seconds the kernel
    // counts (a backstop for a holder process that is frozen; the fence is the timer).
    let lifetime = timing.renew_deadline.as_secs_f64().ceil().max(1.0) as u32;
    let mut holding = false;
    // Steps down (if holding) and removes the address: the one way the VIP is dropped.
    let drop_vip = |why: &str, holding: &mut bool, c: &mut Candidate| {
        c.step_down();
        if let Err(err) = link.release(vip) {
            tracing::error!(%vip, error = %err, "cannot remove the VIP");
        }
        if std::mem::take(holding) {
            tracing::info!(%vip, iface = %link.name, reason = why, "released the VIP");
            println!("kimg: vip-released vip={vip} node={identity} reason={why}");
        }
    };
    // A VIP left behind by an earlier run of this process is not ours until we win.
    drop_vip("start", &mut holding, &mut c);
    tokio::pin!(stop);
    loop {
        let begun = Instant::now();
        // A holder's round may never run past its drop deadline.
        let budget = match c.elector().drop_deadline() {
            Some(d) if holding => d.saturating_duration_since(begun),
            _ => timing.renew_deadline,
        };
        let outcome = tokio::select! {
            r = tokio::time::timeout(budget, c.round(ready(&client))) => {
                r.unwrap_or_else(|_| Round::Failed("timed out".into()))
            }
            () = &mut stop => break,
        };
        match outcome {
            // A renewal refreshes the address's kernel lifetime.
            Round::Won if holding => {
                if let Err(err) = link.hold(vip, lifetime) {
                    tracing::warn!(%vip, error = %err, "cannot refresh the VIP's lifetime");
                }
            }
            Round::Won => {
                match link.hold(vip, lifetime) {
                    Ok(()) => holding = true,
                    Err(err) => tracing::error!(%vip, error = %err, "cannot add the VIP"),
                }
                if holding {
                    if let Err(err) = link.announce(vip) {
                        tracing::warn!(%vip, error = %err, "gratuitous ARP failed");
                    }
                    tracing::info!(%vip, iface = %link.name, "holding the VIP");
                    println!("kimg: vip-acquired vip={vip} node={identity}");
                }
            }
            Round::Lost if holding => drop_vip("lost", &mut holding, &mut c),
            Round::Lost => {}
            Round::Unhealthy(why) => {
                c.forget();
                if holding {
                    tracing::warn!(error = %why, "the local apiserver is not ready");
                    drop_vip("unhealthy", &mut holding, &mut c);
                    c.release(timing.retry_period).await;
                }
            }
            Round::Failed(why) if holding => tracing::warn!(error = %why, "renewal failed"),
            Round::Failed(why) => tracing::debug!(error = %why, "round failed"),
        }
        if holding && !c.elector().may_hold(Instant::now()) {
            drop_vip("renew-deadline", &mut holding, &mut c);
        }
        let mut wake = begun + timing.retry_period;
        if let (true, Some(d)) = (holding, c.elector().drop_deadline()) {
            wake = wake.min(d);
        }
        tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => {}
            () = &mut stop => break,
        }
        if holding && !c.elector().may_hold(Instant::now()) {
            drop_vip("renew-deadline", &mut holding, &mut c);
        }
    }
    let was = holding;
    drop_vip("shutdown", &mut holding, &mut c);
    if was {
        c.release(timing.renew_deadline).await;
    }
}
