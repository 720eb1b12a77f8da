//! What every component that talks to the apiserver shares: the kube client built from a
//! kubeconfig, label matching, the one Lease elector, the one backoff and the one watch
//! loop.
//!
//! - [`client_from_kubeconfig`], [`client_from_config`] and [`READ_TIMEOUT`]: how kimg's
//!   components build their kube-rs client.
//! - [`labels`]: label- and node-selector matching (scheduler, controllers).
//! - [`quantity`]: resource quantities (`500m`, `128Mi`) as integers (scheduler, kubelet,
//!   the apiserver's validation).
//! - [`lease`]: leader election through a `coordination.k8s.io/v1` Lease, as a pure
//!   state machine over monotonic time plus the rounds that read and write the Lease. The
//!   VIP, the scheduler and the controller-manager all use it.
//! - [`backoff`]: capped exponential backoff (the kubelet's CrashLoopBackOff, PID 1's
//!   service restarts, failed watches).
//! - [`watch`]: the one watch loop (list, watch, bookmarks, re-list on 410, backoff), and
//!   a cache on top of it.
//!
//! This folder imports nothing else of kimg, so every component may depend on it.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

pub mod backoff;
pub mod labels;
pub mod lease;
pub mod quantity;
pub mod watch;

pub use backoff::Backoff;

/// How long a connection may stay silent before a client gives up on it. Watches carry a
/// bookmark every 10 s, so only a dead peer is that quiet — say an apiserver whose VIP
/// moved to another master after a crash: the client reconnects and the watch resumes.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Builds a client from a kubeconfig file (see [`client_from_config`]).
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<Client> {
    use anyhow::Context;
    let kc = Kubeconfig::read_from(path)
        .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("invalid kubeconfig")?;
    client_from_config(cfg).context("cannot build an API client")
}

/// Builds a client with kimg's settings: [`READ_TIMEOUT`], and no retries inside the
/// client. kube-rs (since 1.0) retries 429, 503 and 504 itself, up to 15 times with
/// delays growing towards minutes; kimg's callers already retry with the one [`Backoff`]
/// (the watch loop, the controllers' requeue, the elector's rounds), and a request that
/// sleeps inside the client would outlast the elector's renew deadline.
pub fn client_from_config(mut cfg: kube::Config) -> Result<Client, kube::Error> {
    cfg.read_timeout = Some(READ_TIMEOUT);
    cfg.default_retry = false;
    Client::try_from(cfg)
}
