//! The VIP election as a pure state machine over a Lease as read, and the fencing rule.
//!
//! All times are this process's monotonic clock; nothing compares two machines' clocks.
//! See the module docs of [`super`] for why the rule below never yields two holders.

use std::time::{Duration, Instant};

/// Lease timing: the `[vip]` table of `cluster.toml` (defaults 2s / 1500ms / 250ms).
/// Failover after a crash takes about `lease_duration + retry_period`.
pub use crate::cluster::VipTiming as Timing;

impl Timing {
    /// Checks that the fencing margin exists: `retry_period < renew_deadline < lease_duration`
    /// (for timings given on the `kimg vip` command line; `cluster.toml` is checked on load).
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
