//! `kimg controller-manager`: the controllers that turn declared workloads into pods and
//! keep the cluster tidy, each in its own file, each watch → cache → queue → reconcile
//! ([`runtime`]).
//!
//! How: [`run`] starts one informer per kind (pods, nodes, leases, workloads, services,
//! namespaces); their handlers route every change to the queues of the controllers that
//! care (a pod to its owning ReplicaSet, DaemonSet or Job, to its namespace's endpoints and
//! to the garbage collector). Each controller's `reconcile(ctx, key)` is idempotent and
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

use ipnet::Ipv4Net;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use kube::api::Api;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, Resource};

use crate::client::lease::{self, LeaderError, LeaseConfig};
use runtime::{informer, key_of, queue, work, Queue};

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

/// The queues of all controllers.
#[derive(Clone)]
pub struct Queues {
    pub replicasets: Queue,
    pub deployments: Queue,
    pub daemonsets: Queue,
    pub jobs: Queue,
    pub cronjobs: Queue,
    /// Keyed by namespace: all services of a namespace are recomputed together.
    pub endpoints: Queue,
    pub gc: Queue,
    pub namespaces: Queue,
    pub nodes: Queue,
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
    pub queues: Queues,
    pub expectations: replicaset::Expectations,
    /// Pod CIDRs handed out by this process (the node cache may not show them yet).
    pub allocated_cidrs: std::sync::Mutex<std::collections::HashSet<Ipv4Net>>,
}

impl Ctx {
    /// Waits until every cache has its initial list.
    pub async fn synced(&self) {
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
    }
}

/// The controller owning `obj` (its `controller: true` owner reference): (kind, name, uid).
pub fn controller_of<K: Resource>(obj: &K) -> Option<(&str, &str, &str)> {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| (o.kind.as_str(), o.name.as_str(), o.uid.as_str()))
}

fn route_owner(q: &Queues, obj: &Pod) {
    if let Some((kind, name, _)) = controller_of(obj) {
        let ns = obj.metadata.namespace.as_deref().unwrap_or("default");
        let key = format!("{ns}/{name}");
        match kind {
            "ReplicaSet" => q.replicasets.add(&key),
            "DaemonSet" => q.daemonsets.add(&key),
            "Job" => q.jobs.add(&key),
            _ => {}
        }
    }
}

/// Starts the informers and all controllers; runs until the process stops.
pub async fn run(client: Client, opts: Options) {
    let (rs_q, rs_rx) = queue();
    let (dep_q, dep_rx) = queue();
    let (ds_q, ds_rx) = queue();
    let (job_q, job_rx) = queue();
    let (cj_q, cj_rx) = queue();
    let (ep_q, ep_rx) = queue();
    let (gc_q, gc_rx) = queue();
    let (ns_q, ns_rx) = queue();
    let (node_q, node_rx) = queue();
    let queues = Queues {
        replicasets: rs_q,
        deployments: dep_q,
        daemonsets: ds_q,
        jobs: job_q,
        cronjobs: cj_q,
        endpoints: ep_q,
        gc: gc_q,
        namespaces: ns_q,
        nodes: node_q,
    };
    let wc = watcher::Config::default;
    let q = queues.clone();
    let pods = informer(
        Api::<Pod>::all(client.clone()),
        wc(),
        move |p: &Pod, deleted| {
            route_owner(&q, p);
            q.endpoints
                .add(p.metadata.namespace.as_deref().unwrap_or("default"));
            if p.metadata.owner_references.is_some() {
                q.gc.add(&gc::dependent_key("Pod", &key_of(p)));
            }
            let _ = deleted;
        },
    );
    let q = queues.clone();
    let nodes = informer(
        Api::<Node>::all(client.clone()),
        wc(),
        move |n: &Node, _| {
            q.nodes.add(&key_of(n));
            q.daemonsets.add(daemonset::ALL);
        },
    );
    let leases = informer(
        Api::<Lease>::namespaced(client.clone(), "kube-node-lease"),
        wc(),
        |_: &Lease, _| {},
    );
    let q = queues.clone();
    let replicasets = informer(
        Api::<ReplicaSet>::all(client.clone()),
        wc(),
        move |rs: &ReplicaSet, deleted| {
            let key = key_of(rs);
            q.replicasets.add(&key);
            if let Some(("Deployment", name, _)) = controller_of(rs) {
                let ns = rs.metadata.namespace.as_deref().unwrap_or("default");
                q.deployments.add(&format!("{ns}/{name}"));
            }
            if rs.metadata.owner_references.is_some() {
                q.gc.add(&gc::dependent_key("ReplicaSet", &key));
            }
            gc::owner_changed(&q.gc, "ReplicaSet", rs.meta(), deleted);
        },
    );
    let q = queues.clone();
    let deployments = informer(
        Api::<Deployment>::all(client.clone()),
        wc(),
        move |d: &Deployment, deleted| {
            q.deployments.add(&key_of(d));
            gc::owner_changed(&q.gc, "Deployment", d.meta(), deleted);
        },
    );
    let q = queues.clone();
    let daemonsets = informer(
        Api::<DaemonSet>::all(client.clone()),
        wc(),
        move |d: &DaemonSet, deleted| {
            q.daemonsets.add(&key_of(d));
            gc::owner_changed(&q.gc, "DaemonSet", d.meta(), deleted);
        },
    );
    let q = queues.clone();
    let jobs = informer(
        Api::<Job>::all(client.clone()),
        wc(),
        move |j: &Job, deleted| {
            let key = key_of(j);
            q.jobs.add(&key);
            if let Some(("CronJob", name, _)) = controller_of(j) {
                let ns = j.metadata.namespace.as_deref().unwrap_or("default");
                q.cronjobs.add(&format!("{ns}/{name}"));
            }
            if j.metadata.owner_references.is_some() {
                q.gc.add(&gc::dependent_key("Job", &key));
            }
            gc::owner_changed(&q.gc, "Job", j.meta(), deleted);
        },
    );
    let q = queues.clone();
    let cronjobs = informer(
        Api::<CronJob>::all(client.clone()),
        wc(),
        move |c: &CronJob, deleted| {
            q.cronjobs.add(&key_of(c));
            gc::owner_changed(&q.gc, "CronJob", c.meta(), deleted);
        },
    );
    let q = queues.clone();
    let services = informer(
        Api::<Service>::all(client.clone()),
        wc(),
        move |s: &Service, _| {
            q.endpoints
                .add(s.metadata.namespace.as_deref().unwrap_or("default"));
        },
    );
    let q = queues.clone();
    let namespaces = informer(
        Api::<Namespace>::all(client.clone()),
        wc(),
        move |n: &Namespace, _| q.namespaces.add(&key_of(n)),
    );
    let q = queues.clone();
    let serviceaccounts = informer(
        Api::<ServiceAccount>::all(client.clone()),
        wc(),
        move |s: &ServiceAccount, _| {
            q.namespaces
                .add(s.metadata.namespace.as_deref().unwrap_or("default"))
        },
    );
    // CSRs have their own readiness: an apiserver without the kind must not stall the rest.
    let (csr_q, csr_rx) = queue();
    let q = csr_q.clone();
    let csrs = informer(
        Api::<k8s_openapi::api::certificates::v1::CertificateSigningRequest>::all(client.clone()),
        wc(),
        move |c: &k8s_openapi::api::certificates::v1::CertificateSigningRequest, _| {
            q.add(&key_of(c))
        },
    );
    let ctx = Arc::new(Ctx {
        client,
        opts,
        pods,
        nodes,
        leases,
        replicasets,
        deployments,
        daemonsets,
        jobs,
        cronjobs,
        services,
        namespaces,
        serviceaccounts,
        queues: queues.clone(),
        expectations: Default::default(),
        allocated_cidrs: Default::default(),
    });
    let c = &ctx;
    let q = &queues;
    futures::join!(
        work(
            "replicaset",
            q.replicasets.clone(),
            rs_rx,
            c.synced(),
            |k| {
                let c = c.clone();
                async move { replicaset::reconcile(&c, &k).await }
            }
        ),
        work(
            "deployment",
            q.deployments.clone(),
            dep_rx,
            c.synced(),
            |k| {
                let c = c.clone();
                async move { deployment::reconcile(&c, &k).await }
            }
        ),
        work("daemonset", q.daemonsets.clone(), ds_rx, c.synced(), |k| {
            let c = c.clone();
            async move { daemonset::reconcile(&c, &k).await }
        }),
        work("job", q.jobs.clone(), job_rx, c.synced(), |k| {
            let c = c.clone();
            async move { job::reconcile(&c, &k).await }
        }),
        work("cronjob", q.cronjobs.clone(), cj_rx, c.synced(), |k| {
            let c = c.clone();
            async move { cronjob::reconcile(&c, &k).await }
        }),
        work("endpoints", q.endpoints.clone(), ep_rx, c.synced(), |k| {
            let c = c.clone();
            async move { endpoints::reconcile(&c, &k).await }
        }),
        work("garbage-collector", q.gc.clone(), gc_rx, c.synced(), |k| {
            let c = c.clone();
            async move { gc::reconcile(&c, &k).await }
        }),
        work("namespace", q.namespaces.clone(), ns_rx, c.synced(), |k| {
            let c = c.clone();
            async move { serviceaccount::reconcile(&c, &k).await }
        }),
        work("node", q.nodes.clone(), node_rx, c.synced(), |k| {
            let c = c.clone();
            async move { nodeipam::reconcile(&c, &k).await }
        }),
        nodelifecycle::run(c.clone()),
        work("csr", csr_q.clone(), csr_rx, csrs.wait_until_ready(), |k| {
            let (c, csrs) = (c.clone(), csrs.clone());
            async move { csr::reconcile(&c, &csrs, &k).await }
        }),
    );
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
