//! A pod's life on the node as enums, plus the restart rules.
//!
//! [`PodState`] is the pod-level state machine the worker walks through:
//! `Pending → ContainerCreating → Initializing(i) → Running ⇄ CrashLoopBackOff →
//! Succeeded | Failed`, with `Terminating` on deletion. Each state reports the
//! Kubernetes phase and a reason. [`ContainerState`] mirrors a container's
//! waiting/running/terminated state. [`should_restart`] applies the restart policy and
//! [`Backoff`] the CrashLoopBackOff delays (10 s doubling to 5 min by default).

use std::time::Duration;

/// Where a pod is in its life on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodState {
    /// Accepted, nothing created yet.
    Pending,
    /// Sandbox, volumes and containers are being set up.
    ContainerCreating,
    /// Init container `index` is running (or backing off).
    Initializing { index: usize },
    /// The main containers have been started.
    Running,
    /// A container exited and waits out its back-off before the next restart.
    CrashLoopBackOff { container: String, delay: Duration },
    /// Every container exited 0 and none will restart.
    Succeeded,
    /// The pod cannot run or its containers failed for good.
    Failed { reason: String, message: String },
    /// Being deleted.
    Terminating,
}

impl PodState {
    /// The Kubernetes `status.phase`.
    pub fn phase(&self) -> &'static str {
        match self {
            PodState::Pending | PodState::ContainerCreating | PodState::Initializing { .. } => {
                "Pending"
            }
            PodState::Running | PodState::CrashLoopBackOff { .. } | PodState::Terminating => {
                "Running"
            }
            PodState::Succeeded => "Succeeded",
            PodState::Failed { .. } => "Failed",
        }
    }

    /// A short CamelCase reason, as `kubectl get pods` shows in STATUS.
    pub fn reason(&self) -> String {
        match self {
            PodState::Pending => "Pending".into(),
            PodState::ContainerCreating => "ContainerCreating".into(),
            PodState::Initializing { index } => format!("Init:{index}"),
            PodState::Running => "Running".into(),
            PodState::CrashLoopBackOff { .. } => "CrashLoopBackOff".into(),
            PodState::Succeeded => "Completed".into(),
            PodState::Failed { reason, .. } => reason.clone(),
            PodState::Terminating => "Terminating".into(),
        }
    }

    /// True once the pod will never run anything again.
    pub fn is_final(&self) -> bool {
        matches!(self, PodState::Succeeded | PodState::Failed { .. })
    }
}

/// One container's state (Kubernetes `ContainerState`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerState {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started_at: i64,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        started_at: i64,
        finished_at: i64,
    },
}

impl ContainerState {
    pub fn waiting(reason: &str) -> ContainerState {
        ContainerState::Waiting {
            reason: reason.into(),
            message: String::new(),
        }
    }

    /// The terminated state for an exit code: reason `Completed` or `Error`.
    pub fn exited(exit_code: i32, started_at: i64, finished_at: i64) -> ContainerState {
        ContainerState::Terminated {
            exit_code,
            reason: if exit_code == 0 { "Completed" } else { "Error" }.into(),
            started_at,
            finished_at,
        }
    }
}

/// `spec.restartPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn parse(s: Option<&str>) -> RestartPolicy {
        match s {
            Some("OnFailure") => RestartPolicy::OnFailure,
            Some("Never") => RestartPolicy::Never,
            _ => RestartPolicy::Always,
        }
    }
}

/// Whether a main container that exited with `exit_code` starts again.
pub fn should_restart(policy: RestartPolicy, exit_code: i32) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => exit_code != 0,
        RestartPolicy::Never => false,
    }
}

/// Whether a failed init container is retried (init containers never restart after 0).
pub fn should_retry_init(policy: RestartPolicy, exit_code: i32) -> bool {
    exit_code != 0 && policy != RestartPolicy::Never
}

/// CrashLoopBackOff delays: `initial · 2^(n-1)` before the n-th restart, capped at `max`
/// (10 s doubling to 5 min by default).
pub use crate::client::Backoff;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policy_decides_by_exit_code() {
        assert!(should_restart(RestartPolicy::Always, 0));
        assert!(!should_restart(RestartPolicy::OnFailure, 0));
        assert!(should_restart(RestartPolicy::OnFailure, 1));
        assert!(!should_restart(RestartPolicy::Never, 1));
        assert!(!should_retry_init(RestartPolicy::Always, 0));
        assert!(should_retry_init(RestartPolicy::OnFailure, 2));
        assert!(!should_retry_init(RestartPolicy::Never, 2));
        assert_eq!(RestartPolicy::parse(None), RestartPolicy::Always);
    }

    #[test]
    fn states_report_kubernetes_phases_and_reasons() {
        assert_eq!(PodState::ContainerCreating.phase(), "Pending");
        assert_eq!(PodState::Initializing { index: 1 }.reason(), "Init:1");
        let crash = PodState::CrashLoopBackOff {
            container: "c".into(),
            delay: Duration::from_secs(10),
        };
        assert_eq!(
            (crash.phase(), crash.reason().as_str()),
            ("Running", "CrashLoopBackOff")
        );
        assert_eq!(PodState::Succeeded.reason(), "Completed");
        assert!(PodState::Failed {
            reason: "Error".into(),
            message: String::new()
        }
        .is_final());
    }
}
