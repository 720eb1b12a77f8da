//! The service supervisor of PID 1: start, reap, restart with capped exponential backoff.
//!
//! Each service is `Waiting { until }` or `Running { pid, since }`. A service that exits is
//! restarted after a delay that starts at 1 s and doubles up to 30 s; a run that lasted at
//! least 60 s counts as healthy and resets the delay. A failed `spawn` (missing binary)
//! counts as an immediate exit. [`Supervisor::reap`] reaps *every* exited child, because
//! PID 1 inherits all orphans; exits of PIDs that are not services are reported as
//! `orphan-reaped`. Time comes from [`System::now`], so tests drive it with a fake clock.

use std::time::Duration;

use super::events::Event;
use super::system::{ExitStatus, ServiceSpec, Signal, System};

/// Restart delays: [`Backoff::SERVICE`] (1 s doubling to 30 s, reset after 60 s).
pub use crate::client::Backoff;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Waiting { until: Duration },
    Running { pid: u32, since: Duration },
    Stopped,
}

#[derive(Debug)]
struct Service {
    spec: ServiceSpec,
    state: State,
    last_delay: Option<Duration>,
    starts: u32,
}

/// The supervised services of one machine.
#[derive(Debug)]
pub struct Supervisor {
    services: Vec<Service>,
    backoff: Backoff,
}

fn secs(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
}

impl Supervisor {
    pub fn new(specs: Vec<ServiceSpec>, backoff: Backoff) -> Supervisor {
        let services = specs
            .into_iter()
            .map(|spec| Service {
                spec,
                state: State::Waiting {
                    until: Duration::ZERO,
                },
                last_delay: None,
                starts: 0,
            })
            .collect();
        Supervisor { services, backoff }
    }

    /// Names of all services, in start order.
    pub fn names(&self) -> Vec<String> {
        self.services.iter().map(|s| s.spec.name.clone()).collect()
    }

    /// Whether every service has been started at least once.
    pub fn all_started(&self) -> bool {
        self.services.iter().all(|s| s.starts > 0)
    }

    /// The PID of a running service.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.services.iter().find_map(|s| match s.state {
            State::Running { pid, .. } if s.spec.name == name => Some(pid),
            _ => None,
        })
    }

    /// Starts every service whose wait is over.
    pub fn start_due(&mut self, sys: &dyn System) {
        let now = sys.now();
        for svc in &mut self.services {
            let State::Waiting { until } = svc.state else {
                continue;
            };
            if until > now {
                continue;
            }
            svc.starts += 1;
            match sys.spawn(&svc.spec) {
                Ok(pid) => {
                    svc.state = State::Running { pid, since: now };
                    sys.console(
                        &Event::new("service-started")
                            .field("name", &svc.spec.name)
                            .field("pid", pid)
                            .to_string(),
                    );
                }
                Err(e) => {
                    let delay = self.backoff.next(svc.last_delay, Duration::ZERO);
                    svc.last_delay = Some(delay);
                    svc.state = State::Waiting { until: now + delay };
                    sys.console(
                        &Event::new("service-failed")
                            .field("name", &svc.spec.name)
                            .field("error", e)
                            .field("restart-in", secs(delay))
                            .to_string(),
                    );
                }
            }
        }
    }

    /// Reaps every exited child; schedules restarts of services that exited.
    pub fn reap(&mut self, sys: &dyn System) {
        while let Some((pid, status)) = sys.reap() {
            self.on_exit(sys, pid, status);
        }
    }

    fn on_exit(&mut self, sys: &dyn System, pid: u32, status: ExitStatus) {
        let now = sys.now();
        let backoff = self.backoff;
        let Some(svc) = self
            .services
            .iter_mut()
            .find(|s| matches!(s.state, State::Running { pid: p, .. } if p == pid))
        else {
            sys.console(
                &Event::new("orphan-reaped")
                    .field("pid", pid)
                    .field("code", status)
                    .to_string(),
            );
            return;
        };
        let State::Running { since, .. } = svc.state else {
            return;
        };
        let delay = backoff.next(svc.last_delay, now.saturating_sub(since));
        svc.last_delay = Some(delay);
        svc.state = State::Waiting { until: now + delay };
        sys.console(
            &Event::new("service-exited")
                .field("name", &svc.spec.name)
                .field("code", status)
                .field("restart-in", secs(delay))
                .to_string(),
        );
    }

    /// The earliest pending restart, if any.
    pub fn next_start(&self) -> Option<Duration> {
        self.services
            .iter()
            .filter_map(|s| match s.state {
                State::Waiting { until } => Some(until),
                _ => None,
            })
            .min()
    }

    /// Stops all services: SIGTERM, up to `grace` for them to exit, then SIGKILL.
    /// Children are reaped throughout; nothing is restarted afterwards.
    pub fn stop_all(&mut self, sys: &dyn System, grace: Duration) {
        for svc in &mut self.services {
            match svc.state {
                State::Running { pid, .. } => {
                    let _ = sys.signal(pid, Signal::Term);
                }
                _ => svc.state = State::Stopped,
            }
        }
        let deadline = sys.now() + grace;
        let step = Duration::from_millis(100);
        loop {
            while let Some((pid, status)) = sys.reap() {
                if let Some(svc) = self
                    .services
                    .iter_mut()
                    .find(|s| matches!(s.state, State::Running { pid: p, .. } if p == pid))
                {
                    svc.state = State::Stopped;
                    sys.console(
                        &Event::new("service-stopped")
                            .field("name", &svc.spec.name)
                            .field("code", status)
                            .to_string(),
                    );
                }
            }
            let left: Vec<u32> = self
                .services
                .iter()
                .filter_map(|s| match s.state {
                    State::Running { pid, .. } => Some(pid),
                    _ => None,
                })
                .collect();
            if left.is_empty() {
                return;
            }
            if sys.now() >= deadline {
                for pid in left {
                    let _ = sys.signal(pid, Signal::Kill);
                }
                // Reap the killed ones; SIGKILL cannot be ignored.
                sys.sleep(step);
                while let Some((pid, _)) = sys.reap() {
                    for svc in &mut self.services {
                        if matches!(svc.state, State::Running { pid: p, .. } if p == pid) {
                            svc.state = State::Stopped;
                            sys.console(
                                &Event::new("service-killed")
                                    .field("name", &svc.spec.name)
                                    .to_string(),
                            );
                        }
                    }
                }
                return;
            }
            sys.sleep(step);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::recording::{Call, Recording};

    fn spec(name: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            argv: vec![format!("/usr/bin/{name}")],
            env: Vec::new(),
            console: false,
        }
    }

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn backoff_doubles_from_one_second_caps_at_thirty_and_resets_after_a_healthy_minute() {
        let b = Backoff::SERVICE;
        let mut delays = Vec::new();
        let mut prev = None;
        for _ in 0..7 {
            let d = b.next(prev, s(2));
            delays.push(d.as_secs());
            prev = Some(d);
        }
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.next(Some(s(30)), s(59)), s(30));
        assert_eq!(b.next(Some(s(30)), s(60)), s(1));
    }

    /// Runs the supervisor loop for `secs` seconds of fake time in 100 ms steps.
    fn run_for(sup: &mut Supervisor, sys: &Recording, secs: u64) {
        let end = sys.now() + s(secs);
        while sys.now() < end {
            sup.reap(sys);
            sup.start_due(sys);
            sys.sleep(Duration::from_millis(100));
        }
    }

    #[test]
    fn a_crashing_service_is_restarted_on_the_backoff_schedule() {
        let sys = Recording::new();
        let mut sup = Supervisor::new(vec![spec("etcd")], Backoff::SERVICE);
        // pid 100 starts at 0 s and crashes at 1 s; restart at 2 s as pid 101, crash at 3 s;
        // restart after 2 s at 5 s as pid 102.
        sys.exit_at(s(1), 100, ExitStatus::Code(1));
        sys.exit_at(s(3), 101, ExitStatus::Code(1));
        run_for(&mut sup, &sys, 6);
        let spawns: Vec<u32> = sys
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Spawn { pid, .. } => Some(pid),
                _ => None,
            })
            .collect();
        assert_eq!(spawns, vec![100, 101, 102]);
        let lines = sys.console_lines();
        assert_eq!(
            lines,
            vec![
                "kimg: service-started name=etcd pid=100",
                "kimg: service-exited name=etcd code=1 restart-in=1s",
                "kimg: service-started name=etcd pid=101",
                "kimg: service-exited name=etcd code=1 restart-in=2s",
                "kimg: service-started name=etcd pid=102",
            ]
        );
        assert_eq!(sup.pid("etcd"), Some(102));
    }

    #[test]
    fn orphans_are_reaped_and_reported_without_touching_services() {
        let sys = Recording::new();
        let mut sup = Supervisor::new(vec![spec("etcd")], Backoff::SERVICE);
        sup.start_due(&sys);
        sys.orphan(4242);
        sup.reap(&sys);
        assert_eq!(
            sys.console_lines().last().map(String::as_str),
            Some("kimg: orphan-reaped pid=4242 code=0")
        );
        assert_eq!(sup.pid("etcd"), Some(100));
        assert!(sys.reap().is_none(), "every exited child was reaped");
    }

    #[test]
    fn a_missing_binary_is_retried_with_backoff_instead_of_giving_up() {
        let sys = Recording::new().failing("/usr/bin/etcd");
        let mut sup = Supervisor::new(vec![spec("etcd")], Backoff::SERVICE);
        run_for(&mut sup, &sys, 4);
        let failed = sys
            .console_lines()
            .iter()
            .filter(|l| l.starts_with("kimg: service-failed name=etcd"))
            .count();
        // attempts at 0 s, 1 s and 3 s
        assert_eq!(failed, 3);
        assert!(sup.all_started());
    }

    #[test]
    fn stopping_sends_sigterm_then_sigkill_after_the_grace_period() {
        let sys = Recording::new();
        sys.ignore_sigterm();
        let mut sup = Supervisor::new(vec![spec("etcd")], Backoff::SERVICE);
        sup.start_due(&sys);
        let t0 = sys.now();
        sup.stop_all(&sys, s(5));
        let signals: Vec<Call> = sys
            .calls()
            .into_iter()
            .filter(|c| matches!(c, Call::Signal(..)))
            .collect();
        assert_eq!(
            signals,
            vec![
                Call::Signal(100, Signal::Term),
                Call::Signal(100, Signal::Kill)
            ]
        );
        assert!(sys.now() - t0 >= s(5));
        assert_eq!(sup.pid("etcd"), None);
    }

    #[test]
    fn stopping_returns_early_when_services_obey_sigterm() {
        let sys = Recording::new();
        let mut sup = Supervisor::new(vec![spec("etcd")], Backoff::SERVICE);
        sup.start_due(&sys);
        sup.stop_all(&sys, s(10));
        assert!(sys.now() < s(1));
        assert!(!sys.calls().contains(&Call::Signal(100, Signal::Kill)));
        assert!(sys
            .console_lines()
            .contains(&"kimg: service-stopped name=etcd code=signal-15".to_string()));
    }
}
