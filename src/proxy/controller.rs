//! The `kimg proxy` control loop: watches Services and EndpointSlices through the
//! apiserver and keeps this node's nftables ruleset and cluster DNS in step with them.
//!
//! How: two kube-rs reflectors (Services, EndpointSlices) feed in-memory stores. Every
//! change wakes the loop, which waits [`ProxyOptions::debounce`] to batch a burst of
//! events, resolves the stores into [`ServiceView`]s ([`super::model::resolve`]), hands
//! them to the [`RulesSyncer`] (one atomic `nft -f` replace, skipped when the rendered
//! ruleset did not change) and to the DNS [`ServiceDirectory`]. A watch that breaks is
//! re-listed by the reflector with back-off, so an apiserver restart or a VIP move only
//! delays updates; the last good ruleset stays in place meanwhile. A resync every
//! [`ProxyOptions::resync`] re-applies the ruleset if someone flushed it.
//!
//! Limits: IPv4 only; legacy Endpoints objects are not watched (our controller-manager
//! writes EndpointSlices for every Service); the VXLAN overlay is programmed elsewhere.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::Notify;

use super::dns::ServiceDirectory;
use super::model::{resolve, ClusterObjects, ServiceView};
use super::rules::{Nft, RulesError, RulesSyncer};

/// Timing of the loop.
#[derive(Debug, Clone, Copy)]
pub struct ProxyOptions {
    /// How long to gather further events after the first before syncing.
    pub debounce: Duration,
    /// Re-apply the ruleset at least this often, even with no change.
    pub resync: Duration,
}

impl Default for ProxyOptions {
    fn default() -> ProxyOptions {
        ProxyOptions {
            debounce: Duration::from_millis(100),
            resync: Duration::from_secs(60),
        }
    }
}

/// What one sync did, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub services: usize,
    /// False when the ruleset was unchanged and not re-applied.
    pub applied: bool,
    pub took: Duration,
}

/// Resolves the current objects and pushes them to nftables and DNS.
pub fn sync_once<N: Nft>(
    objects: &ClusterObjects,
    rules: &mut RulesSyncer<N>,
    directory: &ServiceDirectory,
) -> Result<(Vec<ServiceView>, SyncReport), RulesError> {
    let started = Instant::now();
    let views = resolve(objects);
    let applied = rules.sync(&views)?;
    directory.replace(views.clone());
    let report = SyncReport {
        services: views.len(),
        applied,
        took: started.elapsed(),
    };
    Ok((views, report))
}

fn snapshot(services: &Store<Service>, slices: &Store<EndpointSlice>) -> ClusterObjects {
    ClusterObjects {
        services: services.state().iter().map(|s| (**s).clone()).collect(),
        endpoint_slices: slices.state().iter().map(|s| (**s).clone()).collect(),
        endpoints: Vec::new(),
    }
}

/// Follows one resource into a cache (the one watch loop, [`crate::client::watch`]),
/// waking `changed` on every event. Runs until the process ends.
pub(super) fn follow<K>(
    api: Api<K>,
    changed: Arc<Notify>,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    crate::client::watch::cached(api, watcher::Config::default(), move |_: &K, _| {
        changed.notify_one()
    })
}

/// Runs the loop until the future is dropped. The ruleset is applied once the first lists
/// of both resources have arrived (never from a half-empty view).
pub async fn run<N: Nft + Send>(
    client: Client,
    mut rules: RulesSyncer<N>,
    directory: ServiceDirectory,
    opts: ProxyOptions,
) -> Result<(), RulesError> {
    let changed = Arc::new(Notify::new());
    let (services, t1) = follow(Api::<Service>::all(client.clone()), changed.clone());
    let (slices, t2) = follow(Api::<EndpointSlice>::all(client), changed.clone());
    let _abort = AbortOnDrop(vec![t1, t2]);
    // Both initial lists first.
    while services.wait_until_ready().await.is_err() || slices.wait_until_ready().await.is_err() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut last_forced = Instant::now();
    loop {
        tokio::time::sleep(opts.debounce).await;
        let objects = snapshot(&services, &slices);
        if last_forced.elapsed() >= opts.resync {
            rules.forget();
            last_forced = Instant::now();
        }
        match sync_once(&objects, &mut rules, &directory) {
            Ok((_, report)) if report.applied => tracing::info!(
                services = report.services,
                took_ms = report.took.as_millis() as u64,
                "nftables ruleset replaced"
            ),
            Ok(_) => {}
            // Keep the last good ruleset; the next event or resync tries again.
            Err(e) => tracing::error!(error = %e, "cannot apply the service ruleset"),
        }
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(opts.resync) => {}
        }
    }
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::model::fixtures::{service, slice, PortSpec};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    /// Service port `http` → the pods' port named `web`; slices publish it under the
    /// Service port's name.
    fn web_port() -> PortSpec<'static> {
        ("http", "TCP", 80, IntOrString::String("web".into()), None)
    }
    use crate::proxy::rules::{RecordingNft, RulesConfig};

    fn config() -> RulesConfig {
        RulesConfig {
            cluster_cidr: "10.244.0.0/16".parse().expect("cidr"),
        }
    }

    #[test]
    fn a_sync_programs_rules_and_dns_and_an_unchanged_view_is_not_reapplied() {
        let mut rules = RulesSyncer::new(RecordingNft::default(), config());
        let directory = ServiceDirectory::default();
        let objects = ClusterObjects {
            services: vec![service("default", "web", "10.96.0.20", &[web_port()])],
            endpoint_slices: vec![slice(
                "default",
                "web",
                "a",
                &[("10.244.1.5", Some(true), None)],
                &[("http", "TCP", 8080)],
            )],
            endpoints: Vec::new(),
        };
        let (views, report) = sync_once(&objects, &mut rules, &directory).expect("sync");
        assert_eq!(report.services, 1);
        assert!(report.applied);
        assert_eq!(directory.snapshot().as_slice(), views.as_slice());
        let applied = rules.nft().applied.clone();
        assert_eq!(applied.len(), 1);
        assert!(applied[0].contains("10.244.1.5"), "{}", applied[0]);

        let (_, again) = sync_once(&objects, &mut rules, &directory).expect("sync");
        assert!(!again.applied);
        rules.forget();
        let (_, forced) = sync_once(&objects, &mut rules, &directory).expect("sync");
        assert!(forced.applied, "a forgotten ruleset is applied again");
    }

    #[test]
    fn an_endpoint_turning_unready_removes_it_from_the_ruleset() {
        let mut rules = RulesSyncer::new(RecordingNft::default(), config());
        let directory = ServiceDirectory::default();
        let mut objects = ClusterObjects {
            services: vec![service("default", "web", "10.96.0.20", &[web_port()])],
            endpoint_slices: vec![slice(
                "default",
                "web",
                "a",
                &[
                    ("10.244.1.5", Some(true), None),
                    ("10.244.2.7", Some(true), None),
                ],
                &[("http", "TCP", 8080)],
            )],
            endpoints: Vec::new(),
        };
        sync_once(&objects, &mut rules, &directory).expect("sync");
        objects.endpoint_slices = vec![slice(
            "default",
            "web",
            "a",
            &[
                ("10.244.1.5", Some(true), None),
                ("10.244.2.7", Some(false), None),
            ],
            &[("http", "TCP", 8080)],
        )];
        let (_, report) = sync_once(&objects, &mut rules, &directory).expect("sync");
        assert!(report.applied);
        let last = rules.nft().applied.last().cloned().unwrap_or_default();
        assert!(
            last.contains("10.244.1.5") && !last.contains("10.244.2.7"),
            "{last}"
        );
    }
}
