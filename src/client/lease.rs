//! Leader election through a `coordination.k8s.io/v1` Lease: the one elector kimg has.
//! `kimg vip` holds the API address with it; the scheduler and the controller-manager
//! decide who works with it.
//!
//! [`Elector`] is the election as a pure state machine over the Lease as read. All times
//! are this process's monotonic clock; nothing compares two machines' clocks. A candidate
//! takes a Lease held by someone else only after it has seen the *same* `resourceVersion`
//! for the lease duration. A holder may act only until `renew_deadline` after the start of
//! its last successful write. With `renew_deadline < lease_duration`, the holder stops
//! before anyone may take over (the full argument is in `node/vip/mod.rs`). [`Candidate`]
//! runs rounds against the apiserver (read, decide, create or write with the version
//! read; a holder renews over its own last write without reading). [`lead`] runs a
//! component's work while it holds the Lease, and releases the Lease (empty holder) when
//! the work ends or it is told to stop, so a successor takes over within one retry period
//! instead of a lease duration.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;

/// Lease timing. The default is `kimg vip`'s (the `[vip]` table of `cluster.toml`:
/// 2 s / 1500 ms / 250 ms); [`Timing::KUBE`] is kube-scheduler's and
/// kube-controller-manager's (15 s / 10 s / 2 s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            lease_duration: Duration::from_secs(2),
            renew_deadline: Duration::from_millis(1500),
            retry_period: Duration::from_millis(250),
        }
    }
}

impl Timing {
    /// Kubernetes' defaults for its components' Leases.
    pub const KUBE: Timing = Timing {
        lease_duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_secs(2),
    };

    /// Checks that the fencing margin exists: `retry_period < renew_deadline < lease_duration`
    /// (for timings given on a command line; `cluster.toml` is checked on load).
    pub fn validate(&self) -> Result<(), String> {
        if self.renew_deadline >= self.lease_duration {
            return Err(format!(
                "--renew-deadline ({:?}) must be shorter than --lease-duration ({:?}): the holder must drop the VIP before anyone may take it",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.retry_period >= self.renew_deadline {
            return Err(format!(
                "--retry-period ({:?}) must be shorter than --renew-deadline ({:?})",
                self.retry_period, self.renew_deadline
            ));
        }
        Ok(())
    }
}

/// The parts of the Lease the election reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    /// Changes with every write, renewals included.
    pub resource_version: String,
    /// Empty when released.
    pub holder: String,
    /// The holder's `leaseDurationSeconds`.
    pub duration: Duration,
}

/// What to do after a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// No Lease yet: create it naming us.
    Create,
    /// Write our name over the version read (a renewal, a takeover or a claim of a
    /// released Lease); a concurrent write makes it fail with a conflict.
    Write,
    /// Someone else holds a Lease that may still be live.
    Wait,
}

/// One candidate's view of the election.
#[derive(Debug)]
pub struct Elector {
    me: String,
    timing: Timing,
    /// The version last read and when it was first read (when the read returned).
    seen: Option<(String, Instant)>,
    /// Start of the last write naming us that succeeded.
    renewed_at: Option<Instant>,
}

impl Elector {
    pub fn new(me: &str, timing: Timing) -> Elector {
        Elector {
            me: me.into(),
            timing,
            seen: None,
            renewed_at: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.me
    }

    /// Decides from a read that returned at `now`.
    pub fn decide(&mut self, lease: Option<&LeaseView>, now: Instant) -> Step {
        let Some(lease) = lease else {
            self.seen = None;
            return Step::Create;
        };
        if lease.holder == self.me || lease.holder.is_empty() {
            return Step::Write;
        }
        // Someone else is named: if we thought we held it, we do not any more.
        self.renewed_at = None;
        match &self.seen {
            Some((rv, first)) if *rv == lease.resource_version => {
                let wait = lease.duration.max(self.timing.lease_duration);
                if now.duration_since(*first) >= wait {
                    Step::Write
                } else {
                    Step::Wait
                }
            }
            _ => {
                self.seen = Some((lease.resource_version.clone(), now));
                Step::Wait
            }
        }
    }

    /// A write naming us, started at `started`, succeeded.
    pub fn won(&mut self, started: Instant) {
        self.renewed_at = Some(started);
        self.seen = None;
    }

    /// We gave the Lease up (released or fenced).
    pub fn stepped_down(&mut self) {
        self.renewed_at = None;
    }

    /// When a holder must have dropped the VIP, if it holds the Lease.
    pub fn drop_deadline(&self) -> Option<Instant> {
        self.renewed_at.map(|t| t + self.timing.renew_deadline)
    }

    /// Whether we may hold the VIP at `now`.
    pub fn may_hold(&self, now: Instant) -> bool {
        self.drop_deadline().is_some_and(|d| now < d)
    }
}

/// The election's view of a Lease object.
pub fn view(lease: &Lease) -> LeaseView {
    let spec = lease.spec.clone().unwrap_or_default();
    LeaseView {
        resource_version: lease.metadata.resource_version.clone().unwrap_or_default(),
        holder: spec.holder_identity.unwrap_or_default(),
        duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64),
    }
}

/// Writes our name, duration and renew time into `spec` (and, on a takeover, the acquire
/// time and one more transition), as Kubernetes' electors do, so `kubectl get lease` reads.
fn stamp(spec: &mut LeaseSpec, me: &str, timing: &Timing, takeover: bool) {
    let now = MicroTime(jiff::Timestamp::now());
    if takeover {
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.holder_identity = Some(me.into());
    spec.lease_duration_seconds = Some(timing.lease_duration.as_secs_f64().ceil().max(1.0) as i32);
    spec.renew_time = Some(now);
}

/// The outcome of one [`Candidate::round`].
#[derive(Debug)]
pub enum Round {
    /// A write naming us succeeded.
    Won,
    /// Someone else holds it (or won the race).
    Lost,
    /// The health check that goes with every round failed.
    Unhealthy(String),
    /// A request failed.
    Failed(String),
}

/// One candidate for one Lease: the [`Elector`] and the requests that feed it.
pub struct Candidate {
    api: Api<Lease>,
    name: String,
    namespace: String,
    timing: Timing,
    elector: Elector,
    /// What our last successful write returned; a holder renews over it without a read.
    last: Option<Lease>,
}

impl Candidate {
    pub fn new(
        client: &Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: Timing,
    ) -> Candidate {
        Candidate {
            api: Api::namespaced(client.clone(), namespace),
            name: name.into(),
            namespace: namespace.into(),
            timing,
            elector: Elector::new(identity, timing),
            last: None,
        }
    }

    pub fn elector(&self) -> &Elector {
        &self.elector
    }

    /// We stop acting as the holder (a lost round, a failed health check): the next round
    /// reads the Lease again.
    pub fn step_down(&mut self) {
        self.last = None;
        self.elector.stepped_down();
    }

    /// Forgets the last write, so the next round reads the Lease.
    pub fn forget(&mut self) {
        self.last = None;
    }

    /// One round: a holder renews over its last write, with `health` alongside (a loaded
    /// machine's round trip is the budget, so nothing runs in series); anyone else checks
    /// `health`, reads the Lease and writes as the elector decides.
    pub async fn round<H>(&mut self, health: H) -> Round
    where
        H: Future<Output = Result<(), String>>,
    {
        if let Some(lease) = self.last.take() {
            return self.renew(lease, health).await;
        }
        if let Err(why) = health.await {
            return Round::Unhealthy(why);
        }
        let started = Instant::now();
        let current = match self.api.get_opt(&self.name).await {
            Ok(l) => l,
            Err(err) => return Round::Failed(format!("read the lease: {err}")),
        };
        let me = self.elector.identity().to_string();
        let step = self
            .elector
            .decide(current.as_ref().map(view).as_ref(), Instant::now());
        let written = match (step, current) {
            (Step::Wait, _) => return Round::Lost,
            (Step::Create, _) => {
                let mut spec = LeaseSpec::default();
                stamp(&mut spec, &me, &self.timing, true);
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (Step::Write, Some(mut lease)) => {
                let mut spec = lease.spec.take().unwrap_or_default();
                let takeover = spec.holder_identity.as_deref() != Some(me.as_str());
                stamp(&mut spec, &me, &self.timing, takeover);
                lease.spec = Some(spec);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
            (Step::Write, None) => return Round::Failed("the lease vanished".into()),
        };
        match written {
            Ok(l) => {
                self.last = Some(l);
                self.elector.won(started);
                Round::Won
            }
            Err(kube::Error::Api(r)) if r.code == 409 => Round::Lost,
            Err(err) => Round::Failed(format!("write the lease: {err}")),
        }
    }

    async fn renew<H>(&mut self, mut lease: Lease, health: H) -> Round
    where
        H: Future<Output = Result<(), String>>,
    {
        let started = Instant::now();
        let mut spec = lease.spec.take().unwrap_or_default();
        stamp(&mut spec, self.elector.identity(), &self.timing, false);
        lease.spec = Some(spec);
        let pp = PostParams::default();
        let (health, written) = tokio::join!(health, self.api.replace(&self.name, &pp, &lease));
        if let Err(why) = health {
            return Round::Unhealthy(why);
        }
        match written {
            Ok(l) => {
                self.last = Some(l);
                self.elector.won(started);
                Round::Won
            }
            // Someone else wrote it: read it again next round.
            Err(kube::Error::Api(r)) if r.code == 409 => Round::Failed("renewal conflict".into()),
            Err(err) => {
                self.last = Some(lease);
                Round::Failed(format!("renew the lease: {err}"))
            }
        }
    }

    /// Gives the Lease up if it still names us (best effort, bounded by `within`).
    pub async fn release(&mut self, within: Duration) {
        self.step_down();
        let me = self.elector.identity().to_string();
        let attempt = async {
            let mut lease = self.api.get_opt(&self.name).await.ok()??;
            let spec = lease.spec.as_mut()?;
            if spec.holder_identity.as_deref() != Some(me.as_str()) {
                return None;
            }
            spec.holder_identity = Some(String::new());
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
                .ok()
        };
        if tokio::time::timeout(within, attempt)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            tracing::info!(lease = %self.name, "released the lease");
        }
    }
}

/// A component's Lease: where it is, who we are, its timing.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease (`kube-system`).
    pub namespace: String,
    /// Lease name (`kube-scheduler`, `kube-controller-manager`).
    pub name: String,
    /// This candidate's identity: `<host>_<pid>_<random>`.
    pub identity: String,
    pub timing: Timing,
}

impl LeaseConfig {
    /// Kubernetes' defaults for a Lease in `kube-system`, identity
    /// `<hostname>_<pid>_<random>`.
    pub fn new(name: &str) -> LeaseConfig {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "kimg".into());
        LeaseConfig {
            namespace: "kube-system".into(),
            name: name.into(),
            identity: format!(
                "{host}_{}_{:04x}",
                std::process::id(),
                rand::random::<u16>()
            ),
            timing: Timing::KUBE,
        }
    }
}

/// Why leading stopped.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lost the lease {0}: not renewed within the renew deadline")]
    LostLease(String),
}

async fn healthy() -> Result<(), String> {
    Ok(())
}

/// Campaigns for the Lease, then runs `work` while renewing it. Returns `Ok(Some(out))`
/// when `work` ends and `Ok(None)` when `stop` completes first (the Lease is released in
/// both cases), or [`LeaderError::LostLease`] (after dropping `work`) when the holder
/// could not renew within the renew deadline or saw someone else named.
pub async fn lead<F: Future, S: Future<Output = ()>>(
    client: &Client,
    cfg: &LeaseConfig,
    work: F,
    mut stop: Pin<&mut S>,
) -> Result<Option<F::Output>, LeaderError> {
    let t = cfg.timing;
    let mut c = Candidate::new(client, &cfg.namespace, &cfg.name, &cfg.identity, t);
    let campaign = async {
        loop {
            let begun = Instant::now();
            match tokio::time::timeout(t.renew_deadline, c.round(healthy())).await {
                Ok(Round::Won) => return,
                Ok(Round::Failed(why)) => {
                    tracing::warn!(lease = %cfg.name, error = %why, "cannot acquire the lease")
                }
                Ok(_) => {}
                Err(_) => tracing::warn!(lease = %cfg.name, "a round timed out"),
            }
            tokio::time::sleep_until((begun + t.retry_period).into()).await;
        }
    };
    tokio::select! {
        () = campaign => {}
        () = stop.as_mut() => return Ok(None),
    }
    tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became leader");
    let outcome = {
        let renew = async {
            loop {
                let wake = (Instant::now() + t.retry_period)
                    .min(c.elector().drop_deadline().unwrap_or_else(Instant::now));
                tokio::time::sleep_until(wake.into()).await;
                let budget = c
                    .elector()
                    .drop_deadline()
                    .map(|d| d.saturating_duration_since(Instant::now()))
                    .unwrap_or_default();
                match tokio::time::timeout(budget, c.round(healthy())).await {
                    Ok(Round::Won) => {}
                    Ok(Round::Lost) => {
                        tracing::warn!(lease = %cfg.name, "another candidate holds the lease");
                        return;
                    }
                    Ok(Round::Failed(why) | Round::Unhealthy(why)) => {
                        tracing::warn!(lease = %cfg.name, error = %why, "renewal failed")
                    }
                    Err(_) => tracing::warn!(lease = %cfg.name, "renewal timed out"),
                }
                if !c.elector().may_hold(Instant::now()) {
                    return;
                }
            }
        };
        tokio::select! {
            out = work => Some(Some(out)),
            () = stop.as_mut() => Some(None),
            () = renew => None,
        }
    };
    match outcome {
        Some(out) => {
            c.release(t.retry_period).await;
            Ok(out)
        }
        None => {
            c.step_down();
            Err(LeaderError::LostLease(cfg.name.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(rv: &str, holder: &str) -> LeaseView {
        LeaseView {
            resource_version: rv.into(),
            holder: holder.into(),
            duration: Duration::from_secs(2),
        }
    }

    #[allow(non_snake_case)]
    fn MS(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn no_lease_means_create_and_a_released_or_own_lease_means_write() {
        let mut e = Elector::new("a", Timing::default());
        let t = Instant::now();
        assert_eq!(e.decide(None, t), Step::Create);
        assert_eq!(e.decide(Some(&lease("1", "")), t), Step::Write);
        assert_eq!(e.decide(Some(&lease("2", "a")), t), Step::Write);
    }

    #[test]
    fn a_lease_of_someone_else_is_taken_only_after_it_stayed_unchanged_for_the_lease_duration() {
        let mut e = Elector::new("b", Timing::default());
        let t = Instant::now();
        assert_eq!(e.decide(Some(&lease("7", "a")), t), Step::Wait);
        assert_eq!(e.decide(Some(&lease("7", "a")), t + MS(1999)), Step::Wait);
        assert_eq!(e.decide(Some(&lease("7", "a")), t + MS(2000)), Step::Write);
    }

    #[test]
    fn every_renewal_restarts_the_candidates_wait() {
        let mut e = Elector::new("b", Timing::default());
        let t = Instant::now();
        assert_eq!(e.decide(Some(&lease("7", "a")), t), Step::Wait);
        assert_eq!(e.decide(Some(&lease("8", "a")), t + MS(1900)), Step::Wait);
        assert_eq!(e.decide(Some(&lease("8", "a")), t + MS(3000)), Step::Wait);
        assert_eq!(e.decide(Some(&lease("8", "a")), t + MS(3900)), Step::Write);
    }

    #[test]
    fn a_longer_duration_in_the_lease_is_honoured() {
        let mut e = Elector::new("b", Timing::default());
        let t = Instant::now();
        let mut l = lease("7", "a");
        l.duration = Duration::from_secs(5);
        assert_eq!(e.decide(Some(&l), t), Step::Wait);
        assert_eq!(e.decide(Some(&l), t + MS(4000)), Step::Wait);
        assert_eq!(e.decide(Some(&l), t + MS(5000)), Step::Write);
    }

    #[test]
    fn the_holder_may_hold_only_until_the_renew_deadline_after_its_last_successful_renewal() {
        let mut e = Elector::new("a", Timing::default());
        let t = Instant::now();
        assert!(!e.may_hold(t));
        e.won(t);
        assert!(e.may_hold(t + MS(1499)));
        assert!(!e.may_hold(t + MS(1500)));
        e.won(t + MS(1000));
        assert!(e.may_hold(t + MS(2400)));
        e.stepped_down();
        assert!(!e.may_hold(t + MS(1001)));
    }

    #[test]
    fn seeing_someone_else_named_ends_our_holding() {
        let mut e = Elector::new("a", Timing::default());
        let t = Instant::now();
        e.won(t);
        assert_eq!(e.decide(Some(&lease("9", "b")), t + MS(10)), Step::Wait);
        assert!(!e.may_hold(t + MS(20)));
    }

    /// The fencing property over a range of schedules: the holder's last moment with the
    /// VIP always comes before the first moment a candidate may write, however the reads
    /// and writes interleave, as long as the holder's renewals stop at some point.
    #[test]
    fn a_holder_always_drops_before_a_candidate_may_take_over() {
        let timing = Timing::default();
        for read_lag in [0u64, 1, 50, 249, 250, 700] {
            for write_lag in [0u64, 10, 300, 1400] {
                let t0 = Instant::now();
                let mut holder = Elector::new("a", timing);
                let mut cand = Elector::new("b", timing);
                // The holder's last renewal starts at t0 and is stored at t0 + write_lag.
                holder.won(t0);
                let written = t0 + MS(write_lag);
                let last = lease("42", "a");
                // The candidate reads it some time after it was stored, then every 250 ms.
                let mut now = written + MS(read_lag);
                let take_at = loop {
                    if cand.decide(Some(&last), now) == Step::Write {
                        break now;
                    }
                    now += timing.retry_period;
                };
                let drop_at = holder.drop_deadline().unwrap();
                assert!(
                    drop_at < take_at,
                    "read_lag {read_lag} write_lag {write_lag}"
                );
                assert!(
                    take_at.duration_since(drop_at)
                        >= timing.lease_duration - timing.renew_deadline
                );
            }
        }
    }

    #[test]
    fn timings_without_a_fencing_margin_are_refused() {
        let bad = Timing {
            lease_duration: Duration::from_secs(2),
            renew_deadline: Duration::from_secs(2),
            retry_period: MS(250),
        };
        assert!(bad.validate().unwrap_err().contains("--renew-deadline"));
        assert!(Timing::default().validate().is_ok());
    }
}
