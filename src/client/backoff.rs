//! Capped exponential backoff: the one kimg uses wherever something is retried after it
//! failed (the kubelet's CrashLoopBackOff, PID 1 restarting a service, a failed watch).

use std::time::Duration;

/// Delays that double from `initial` up to `max`; a run that lasted `reset_after` starts
/// the streak again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// A run at least this long resets the delay to `initial`.
    pub reset_after: Duration,
}

impl Default for Backoff {
    /// Kubernetes' CrashLoopBackOff: 10 s doubling to 5 min, reset after 10 min of running.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

impl Backoff {
    /// PID 1's service restarts: 1 s doubling to 30 s, reset after a minute of running.
    pub const SERVICE: Backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(30),
        reset_after: Duration::from_secs(60),
    };

    /// A watch whose request failed: 0.8 s doubling to 30 s, the streak forgotten after
    /// two minutes without an error (kube-rs' defaults for its watcher).
    pub const WATCH: Backoff = Backoff {
        initial: Duration::from_millis(800),
        max: Duration::from_secs(30),
        reset_after: Duration::from_secs(120),
    };

    /// The delay before retry number `n` (1-based) of a failure streak.
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay before the next start, given the previous delay and how long the run
    /// lasted.
    pub fn next(&self, previous: Option<Duration>, ran_for: Duration) -> Duration {
        match previous {
            Some(prev) if ran_for < self.reset_after => prev.saturating_mul(2).min(self.max),
            _ => self.initial,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_never_overflow() {
        let b = Backoff::default();
        let secs: Vec<u64> = (1..=7).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(secs, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.delay(u32::MAX), b.max);
    }

    #[test]
    fn a_long_run_resets_the_streak_and_a_short_one_doubles_it() {
        let b = Backoff::SERVICE;
        assert_eq!(b.next(None, Duration::ZERO), Duration::from_secs(1));
        let d = b.next(Some(Duration::from_secs(4)), Duration::from_secs(2));
        assert_eq!(d, Duration::from_secs(8));
        let capped = b.next(Some(Duration::from_secs(20)), Duration::ZERO);
        assert_eq!(capped, Duration::from_secs(30));
        let reset = b.next(Some(Duration::from_secs(20)), Duration::from_secs(60));
        assert_eq!(reset, Duration::from_secs(1));
    }
}
