//! `kimg controller-manager`: the controllers that turn declared workloads into pods and
//! keep the cluster tidy, each in its own file, each watch → cache → queue → reconcile
//! ([`runtime`]).
//!
//! How: each controller's file declares a row of [`CONTROLLERS`]: its name, its triggers
//! (which changes of which kinds put which keys on its queue — a pod wakes its owning
//! ReplicaSet, its namespace's endpoints and the garbage collector), the caches it waits
//! for, and its reconcile. [`run`] collects the triggers, starts one informer per kind
//! that calls them, and runs every row. Each controller's `reconcile(ctx, key)` is idempotent and
//! reads the shared, possibly stale, caches in [`Ctx`]. [`run_with_election`] runs it all
//! under the `kube-controller-manager` Lease.
//!
//! Limits: see each controller's module doc.

pub mod cronjob;
pub mod csr;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod gc;
pub mod job;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod pods;
pub mod replicaset;
pub mod runtime;
pub mod serviceaccount;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ipnet::Ipv4Net;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use kube::api::Api;
use kube::runtime::reflector::Store;
use kube::Client;

use crate::client::lease::{self, LeaderError, LeaseConfig};
pub use runtime::controller_of;
use runtime::{queue, work, Triggers};

/// Controller-manager settings (timers shortened in tests).
#[derive(Debug, Clone)]
pub struct Options {
    /// Cluster pod network; each node gets a /24 from it (NodeIPAM).
    pub cluster_cidr: Option<Ipv4Net>,
    /// A node whose Lease was not renewed for this long becomes Unknown and tainted.
    pub node_monitor_grace_period: Duration,
    /// How often node health is checked.
    pub node_monitor_period: Duration,
    /// The cluster CA that signs approved client CSRs; none: CSRs are approved, not signed.
    pub signing: Option<csr::SigningFiles>,
    /// The CA certificate published as `kube-root-ca.crt` in every namespace; none: the
    /// signing certificate, if any.
    pub root_ca: Option<std::path::PathBuf>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            cluster_cidr: None,
            node_monitor_grace_period: Duration::from_secs(40),
            node_monitor_period: Duration::from_secs(5),
            signing: None,
            root_ca: None,
        }
    }
}

/// Why a reconcile failed (the step and object, the API error as source).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("cannot create a {kind} for {owner}")]
    Create {
        kind: &'static str,
        owner: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot update {kind} {key}")]
    Update {
        kind: &'static str,
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot update the status of {kind} {key}")]
    Status {
        kind: &'static str,
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot delete {kind} {key}")]
    Delete {
        kind: &'static str,
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot read {kind} {key}")]
    Read {
        kind: &'static str,
        key: String,
        #[source]
        source: kube::Error,
    },
}

/// What every reconcile shares: the client, the caches and the queues.
pub struct Ctx {
    pub client: Client,
    pub opts: Options,
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    pub leases: Store<Lease>,
    pub replicasets: Store<ReplicaSet>,
    pub deployments: Store<Deployment>,
    pub daemonsets: Store<DaemonSet>,
    pub jobs: Store<Job>,
    pub cronjobs: Store<CronJob>,
    pub services: Store<Service>,
    pub namespaces: Store<Namespace>,
    pub serviceaccounts: Store<ServiceAccount>,
    pub csrs: Store<CertificateSigningRequest>,
    pub expectations: replicaset::Expectations,
    /// Pod CIDRs handed out by this process (the node cache may not show them yet).
    pub allocated_cidrs: std::sync::Mutex<std::collections::HashSet<Ipv4Net>>,
}

impl Ctx {
    /// Waits until every cache but the CSRs' has its initial list.
    pub fn synced(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = futures::join!(
                self.pods.wait_until_ready(),
                self.nodes.wait_until_ready(),
                self.leases.wait_until_ready(),
                self.replicasets.wait_until_ready(),
                self.deployments.wait_until_ready(),
                self.daemonsets.wait_until_ready(),
                self.jobs.wait_until_ready(),
                self.cronjobs.wait_until_ready(),
                self.services.wait_until_ready(),
                self.namespaces.wait_until_ready(),
                self.serviceaccounts.wait_until_ready(),
            );
        })
    }
}

/// Every controller of the controller-manager, one row each (its file declares the row:
/// name, triggers, caches it waits for, reconcile). Node lifecycle is a periodic sweep
/// instead ([`nodelifecycle::run`]).
pub const CONTROLLERS: &[Controller] = &[
    replicaset::CONTROLLER,
    deployment::CONTROLLER,
    daemonset::CONTROLLER,
    job::CONTROLLER,
    cronjob::CONTROLLER,
    endpoints::CONTROLLER,
    gc::CONTROLLER,
    serviceaccount::CONTROLLER,
    nodeipam::CONTROLLER,
    csr::CONTROLLER,
];

/// A row of [`CONTROLLERS`].
pub type Controller = runtime::Controller<Ctx, ReconcileError>;

/// Starts the informers and all controllers; runs until the process stops.
pub async fn run(client: Client, opts: Options) {
    let mut triggers = Triggers::default();
    let mut queues = Vec::new();
    for c in CONTROLLERS {
        let (q, rx) = queue();
        (c.triggers)(&mut triggers, &q);
        queues.push((c, q, rx));
    }
    let ctx = Arc::new(caches(client, opts, &mut triggers));
    for kind in triggers.unwatched() {
        tracing::error!(%kind, "a controller is triggered by a kind that nothing watches");
    }
    let workers = queues.into_iter().map(|(c, q, rx)| {
        let ctx = ctx.clone();
        async move {
            let ready = (c.synced)(&ctx);
            work(c.name, q.clone(), rx, ready, |k| {
                (c.reconcile)(ctx.clone(), q.clone(), k)
            })
            .await
        }
    });
    futures::join!(
        futures::future::join_all(workers),
        nodelifecycle::run(ctx.clone())
    );
}

/// The shared caches, one informer per kind, each calling the triggers registered for it.
fn caches(client: Client, opts: Options, t: &mut Triggers) -> Ctx {
    Ctx {
        pods: t.informer(Api::all(client.clone())),
        nodes: t.informer(Api::all(client.clone())),
        leases: t.informer(Api::namespaced(client.clone(), "kube-node-lease")),
        replicasets: t.informer(Api::all(client.clone())),
        deployments: t.informer(Api::all(client.clone())),
        daemonsets: t.informer(Api::all(client.clone())),
        jobs: t.informer(Api::all(client.clone())),
        cronjobs: t.informer(Api::all(client.clone())),
        services: t.informer(Api::all(client.clone())),
        namespaces: t.informer(Api::all(client.clone())),
        serviceaccounts: t.informer(Api::all(client.clone())),
        csrs: t.informer(Api::all(client.clone())),
        client,
        opts,
        expectations: Default::default(),
        allocated_cidrs: Default::default(),
    }
}

/// Runs the controllers while holding the `kube-controller-manager` Lease; campaigns again
/// after losing it. Returns when `stop` completes, after releasing the Lease.
pub async fn run_with_election(
    client: Client,
    opts: Options,
    lease: LeaseConfig,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let work = run(client.clone(), opts.clone());
        match lease::lead(&client, &lease, work, stop.as_mut()).await {
            Ok(_) => return,
            Err(LeaderError::LostLease(l)) => tracing::warn!(lease = %l, "stopped controlling"),
        }
    }
}

#[cfg(test)]
mod table_tests {
    use super::*;

    #[tokio::test]
    async fn every_trigger_has_an_informer_and_every_controller_a_distinct_name() {
        let mut t = Triggers::default();
        let mut names = std::collections::HashSet::new();
        for c in CONTROLLERS {
            assert!(
                names.insert(c.name),
                "two controllers are called {}",
                c.name
            );
            let (q, _rx) = queue();
            (c.triggers)(&mut t, &q);
        }
        // Nothing listens there: the informers fail and retry in the background.
        let cfg = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let _ctx = caches(
            crate::client::client_from_config(cfg).unwrap(),
            Options::default(),
            &mut t,
        );
        assert_eq!(t.unwatched(), Vec::<&str>::new());
    }
}
