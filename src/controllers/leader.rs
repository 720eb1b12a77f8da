//! Leader election through a `coordination.k8s.io/v1` Lease, as kube-scheduler and
//! kube-controller-manager do it, so three masters can run the same component safely.
//!
//! How: every `retry_period` a candidate reads the Lease. It takes the Lease when there is
//! none or the holder's `renewTime + leaseDurationSeconds` has passed (an update carrying the
//! read `resourceVersion`, so two candidates cannot both win), and the holder renews it. A
//! holder that has not renewed for `renew_deadline` stops leading: [`lead`] drops the work
//! future and returns [`LeaderError::LostLease`]. Callers exit (as Kubernetes components do) or
//! campaign again.
//!
//! Limits: clocks are trusted like in Kubernetes (the expiry is judged on the candidate's
//! clock against the holder's `renewTime`); the Lease is not released on shutdown, so a
//! successor waits up to one lease duration.

use std::future::Future;
use std::time::{Duration, Instant};

use chrono::Utc;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;

/// Lease timing, with Kubernetes' defaults (15 s / 10 s / 2 s).
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease (`kube-system`).
    pub namespace: String,
    /// Lease name (`kube-scheduler`, `kube-controller-manager`).
    pub name: String,
    /// This candidate's identity: `<host>_<pid>_<random>`.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Defaults for a Lease in `kube-system`, identity `<hostname>_<pid>_<random>`.
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
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Why leading stopped.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lost the lease {0}: not renewed within the renew deadline")]
    LostLease(String),
}

/// What one look at the Lease decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Create the Lease (there is none).
    Create,
    /// Take over or renew: write our identity (transitions +1 on a takeover).
    Acquire { takeover: bool },
    /// Someone else holds a live Lease.
    Wait,
}

/// Decides what to do with the Lease as read (pure, for tests).
pub fn decide(lease: Option<&Lease>, me: &str, now: chrono::DateTime<Utc>) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder == me {
        return Decision::Acquire { takeover: false };
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let expired = match spec.renew_time.or(spec.acquire_time) {
        Some(MicroTime(t)) => t + chrono::Duration::seconds(duration) < now,
        None => true,
    };
    if holder.is_empty() || expired {
        Decision::Acquire { takeover: true }
    } else {
        Decision::Wait
    }
}

fn spec_for(cfg: &LeaseConfig, old: Option<&LeaseSpec>, takeover: bool) -> LeaseSpec {
    let now = MicroTime(Utc::now());
    let mut spec = old.cloned().unwrap_or_default();
    if takeover || old.is_none() {
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + i32::from(takeover));
    }
    spec.holder_identity = Some(cfg.identity.clone());
    spec.lease_duration_seconds = Some(cfg.lease_duration.as_secs().max(1) as i32);
    spec.renew_time = Some(now);
    spec
}

/// One attempt to acquire or renew; `Ok(true)` when we hold the Lease afterwards.
async fn try_acquire(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let current = api.get_opt(&cfg.name).await?;
    match decide(current.as_ref(), &cfg.identity, Utc::now()) {
        Decision::Wait => Ok(false),
        Decision::Create => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(spec_for(cfg, None, false)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Decision::Acquire { takeover } => {
            let mut lease = current.unwrap_or_default();
            lease.spec = Some(spec_for(cfg, lease.spec.as_ref(), takeover));
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Waits until this candidate holds the Lease.
pub async fn acquire(client: &Client, cfg: &LeaseConfig) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    loop {
        match try_acquire(&api, cfg).await {
            Ok(true) => {
                tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became leader");
                return;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(lease = %cfg.name, error = %e, "cannot read the lease"),
        }
        tokio::time::sleep(cfg.retry_period).await;
    }
}

/// Acquires the Lease, then runs `work` while renewing it. Returns when `work` ends, or
/// with [`LeaderError::LostLease`] (after dropping `work`) when renewals failed for longer
/// than the renew deadline.
pub async fn lead<F: Future>(
    client: &Client,
    cfg: &LeaseConfig,
    work: F,
) -> Result<F::Output, LeaderError> {
    acquire(client, cfg).await;
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let renew = async {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(cfg.retry_period).await;
            let attempt = tokio::time::timeout(cfg.renew_deadline, try_acquire(&api, cfg)).await;
            match attempt {
                Ok(Ok(true)) => last_ok = Instant::now(),
                Ok(Ok(false)) => {
                    tracing::warn!(lease = %cfg.name, "another candidate holds the lease");
                    return;
                }
                Ok(Err(e)) => tracing::warn!(lease = %cfg.name, error = %e, "renewal failed"),
                Err(_) => tracing::warn!(lease = %cfg.name, "renewal timed out"),
            }
            if last_ok.elapsed() >= cfg.renew_deadline {
                return;
            }
        }
    };
    tokio::select! {
        out = work => Ok(out),
        () = renew => Err(LeaderError::LostLease(cfg.name.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed_secs_ago: i64, duration: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(duration),
                renew_time: Some(MicroTime(
                    Utc::now() - chrono::Duration::seconds(renewed_secs_ago),
                )),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_missing_lease_is_created() {
        assert_eq!(decide(None, "a", Utc::now()), Decision::Create);
    }

    #[test]
    fn a_live_lease_of_someone_else_is_respected() {
        let l = lease("b", 3, 15);
        assert_eq!(decide(Some(&l), "a", Utc::now()), Decision::Wait);
    }

    #[test]
    fn an_expired_lease_is_taken_over() {
        let l = lease("b", 16, 15);
        assert_eq!(
            decide(Some(&l), "a", Utc::now()),
            Decision::Acquire { takeover: true }
        );
    }

    #[test]
    fn the_holder_renews_its_own_lease() {
        let l = lease("a", 1, 15);
        assert_eq!(
            decide(Some(&l), "a", Utc::now()),
            Decision::Acquire { takeover: false }
        );
    }

    #[test]
    fn a_takeover_counts_a_transition() {
        let cfg = LeaseConfig::new("x");
        let old = lease("b", 20, 15).spec;
        let spec = spec_for(&cfg, old.as_ref(), true);
        assert_eq!(spec.lease_transitions, Some(1));
        assert_eq!(spec.holder_identity.as_deref(), Some(cfg.identity.as_str()));
    }
}
