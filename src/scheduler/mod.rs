//! `kimg scheduler`: places pending pods on nodes and binds them through `pods/binding`.
//!
//! How: two watches (all pods, all nodes) feed one task that owns the [`core::Core`]
//! (cache + queue). That task schedules queued pods between batches of watch events and
//! sends bindings concurrently (at most [`Options::parallel_binds`] in flight); a failed
//! binding releases its assumption and requeues the pod. A pod that fits nowhere gets
//! `PodScheduled=False` (reason `Unschedulable`) and a `FailedScheduling` Warning Event,
//! and is retried whenever nodes or pods change. Run under leader election by
//! [`run_with_election`].
//!
//! Limits: see [`plugins`] for the filters and scores and [`core`] for queueing (no
//! preemption, no priorities).

pub mod cache;
pub mod core;
pub mod plugins;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Event, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::Client;
use tokio::sync::{mpsc, Semaphore};

use crate::client::lease::{self, LeaderError, LeaseConfig};

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Pods naming another `schedulerName` are left alone.
    pub scheduler_name: String,
    /// Bindings in flight at once.
    pub parallel_binds: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            scheduler_name: "default-scheduler".into(),
            parallel_binds: 64,
        }
    }
}

/// Why the scheduler stopped.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("the pod or node watch ended")]
    WatchEnded,
    #[error(transparent)]
    Leadership(#[from] LeaderError),
}

enum Msg {
    Pod(Box<watcher::Event<Pod>>),
    Node(Box<watcher::Event<Node>>),
    Bound(Arc<Pod>, Result<(), kube::Error>),
    /// A pod whose binding failed, back after [`BIND_RETRY`].
    Retry(Arc<Pod>),
}

/// Pause before a pod whose binding failed is scheduled again.
const BIND_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

fn forward<K, F>(api: Api<K>, tx: mpsc::Sender<Msg>, wrap: F) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
    F: Fn(watcher::Event<K>) -> Msg + Send + 'static,
{
    tokio::spawn(async move {
        let cfg = watcher::Config::default().page_size(500);
        let mut stream = crate::client::watch::events(api, cfg);
        while let Some(ev) = stream.next().await {
            if tx.send(wrap(ev)).await.is_err() {
                return;
            }
        }
    })
}

/// Runs the scheduler with `client` until its watches end.
pub async fn run(client: Client, opts: Options) -> Result<(), SchedulerError> {
    let (tx, mut rx) = mpsc::channel::<Msg>(4096);
    let pods_api: Api<Pod> = Api::all(client.clone());
    let nodes_api: Api<Node> = Api::all(client.clone());
    let w1 = forward(pods_api, tx.clone(), |e| Msg::Pod(Box::new(e)));
    let w2 = forward(nodes_api, tx.clone(), |e| Msg::Node(Box::new(e)));
    let binds = Arc::new(Semaphore::new(opts.parallel_binds.max(1)));
    let mut core = core::Core::default();
    let mut node_relist: Option<std::collections::HashSet<String>> = None;
    let mut reported: std::collections::HashMap<Arc<str>, String> = Default::default();
    loop {
        // Wait for something when there is no work; otherwise drain what is there.
        let first = if core.has_queued() {
            rx.try_recv().ok()
        } else {
            match rx.recv().await {
                Some(m) => Some(m),
                None => break,
            }
        };
        let mut batch = first.into_iter().collect::<Vec<_>>();
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        for msg in batch {
            match msg {
                Msg::Pod(ev) => match *ev {
                    watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                        core.pod_seen(p, &opts.scheduler_name)
                    }
                    watcher::Event::Delete(p) => core.pod_gone(&p),
                    watcher::Event::Init | watcher::Event::InitDone => {}
                },
                Msg::Node(ev) => match *ev {
                    watcher::Event::Init => node_relist = Some(Default::default()),
                    watcher::Event::InitApply(n) | watcher::Event::Apply(n) => {
                        if let (Some(seen), Some(name)) = (&mut node_relist, &n.metadata.name) {
                            seen.insert(name.clone());
                        }
                        core.cache.upsert_node(&n);
                        core.cluster_changed();
                    }
                    watcher::Event::Delete(n) => {
                        core.cache
                            .remove_node(n.metadata.name.as_deref().unwrap_or_default());
                    }
                    watcher::Event::InitDone => {
                        if let Some(seen) = node_relist.take() {
                            let gone: Vec<String> = core
                                .cache
                                .node_names()
                                .filter(|n| !seen.contains(*n))
                                .map(str::to_string)
                                .collect();
                            for n in gone {
                                core.cache.remove_node(&n);
                            }
                        }
                    }
                },
                Msg::Bound(pod, res) => match res {
                    Ok(()) => core.binding_done(&pod),
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                        core.binding_done(&pod);
                        core.cache.forget(&pod_key(&pod));
                    }
                    Err(e) => {
                        tracing::warn!(pod = %pod_key(&pod), error = %e, "binding failed; retrying in 1 s");
                        // Free the assumed resources now; retry after a pause so that an
                        // unavailable store is not hammered.
                        core.cache.forget(&pod_key(&pod));
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(BIND_RETRY).await;
                            let _ = tx.send(Msg::Retry(pod)).await;
                        });
                    }
                },
                Msg::Retry(pod) => core.binding_failed(pod),
            }
        }
        // Schedule a bounded batch, then look at events again.
        for _ in 0..256 {
            let Some(pod) = core.pop() else { break };
            let key = pod_key(&pod);
            match core.schedule_one(&pod) {
                Ok(node) => {
                    reported.remove(key.as_str());
                    let permit = binds.clone().acquire_owned().await;
                    let (client, tx) = (client.clone(), tx.clone());
                    tokio::spawn(async move {
                        let res = bind(&client, &pod, &node).await;
                        drop(permit);
                        let _ = tx.send(Msg::Bound(pod, res)).await;
                    });
                }
                Err(core::Unschedulable(msg)) => {
                    let k: Arc<str> = key.clone().into();
                    if reported.get(&k) != Some(&msg) {
                        tracing::info!(pod = %key, reason = %msg, "unschedulable");
                        reported.insert(k, msg.clone());
                        let client = client.clone();
                        let opts = opts.clone();
                        tokio::spawn(async move {
                            if let Err(e) = report_unschedulable(&client, &pod, &msg, &opts).await {
                                tracing::warn!(error = %e, "cannot report an unschedulable pod");
                            }
                        });
                    }
                }
            }
        }
    }
    w1.abort();
    w2.abort();
    Err(SchedulerError::WatchEnded)
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

async fn bind(client: &Client, pod: &Pod, node: &str) -> Result<(), kube::Error> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.into()),
            ..Default::default()
        },
    };
    api.create_subresource::<_, serde_json::Value>(
        "binding",
        name,
        &PostParams::default(),
        &binding,
    )
    .await
    .map(|_| ())
}

async fn report_unschedulable(
    client: &Client,
    pod: &Pod,
    msg: &str,
    opts: &Options,
) -> Result<(), kube::Error> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let now = Time(jiff::Timestamp::now());
    let mut conditions: Vec<serde_json::Value> = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.type_ != "PodScheduled")
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect();
    conditions.push(serde_json::json!({
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": msg, "lastTransitionTime": now, "lastProbeTime": null,
    }));
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let patch = serde_json::json!({"status": {"phase": "Pending", "conditions": conditions}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{:x}", rand::random::<u64>())),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name.into()),
            namespace: Some(ns.into()),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        reason: Some("FailedScheduling".into()),
        message: Some(msg.into()),
        type_: Some("Warning".into()),
        count: Some(1),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        source: Some(k8s_openapi::api::core::v1::EventSource {
            component: Some(opts.scheduler_name.clone()),
            host: None,
        }),
        reporting_component: Some(opts.scheduler_name.clone()),
        ..Default::default()
    };
    events.create(&PostParams::default(), &event).await?;
    Ok(())
}

/// Runs the scheduler while holding the `kube-scheduler` Lease; campaigns again after
/// losing it. Returns when `stop` completes, after releasing the Lease.
pub async fn run_with_election(
    client: Client,
    opts: Options,
    lease: LeaseConfig,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), SchedulerError> {
    tokio::pin!(stop);
    loop {
        let work = run(client.clone(), opts.clone());
        match lease::lead(&client, &lease, work, stop.as_mut()).await {
            Ok(Some(res)) => return res,
            Ok(None) => return Ok(()),
            Err(e) => tracing::warn!(error = %e, "stopped scheduling"),
        }
    }
}
