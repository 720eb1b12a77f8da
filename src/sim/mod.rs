//! `kimg sim nodes`: a simulated node fleet in the spirit of kwok, for tests, benchmarks
//! and trying schedulers without machines.
//!
//! What it does: registers `count` Nodes named `<prefix><i>` with capacity, allocatable,
//! labels (`kubernetes.io/hostname`, `kubernetes.io/os`, `kubernetes.io/arch`,
//! `kimg.dev/sim`), optional taints and a Ready condition; renews one Lease per node in
//! `kube-node-lease` every `heartbeat`; marks pods bound to its nodes Running and Ready with
//! a pod IP from the node's `podCIDR` (or `10.250.<node>.<n>` when NodeIPAM gave none);
//! lets pods with `restartPolicy` Never/OnFailure finish after `job_duration` (Succeeded, or
//! Failed when annotated `sim.kimg.dev/outcome: Failed`); and completes graceful deletions.
//!
//! Stopping a node (so node lifecycle can be tested): with `pause_dir` set, a node whose
//! name exists as a file in that directory stops heartbeating, stops reporting and stops
//! handling its pods — it looks dead; removing the file revives it (it reports Ready again
//! and finishes the deletions of its pods that happened meanwhile).
//!
//! Limits: no containers, probes or logs; pod IPs are not routable; one process handles
//! all of its nodes.

pub mod webhook;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::Client;
use serde_json::json;

use crate::client::watch;
use crate::kubelet::node;

/// Fleet settings.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub count: usize,
    pub prefix: String,
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    pub labels: Vec<(String, String)>,
    pub taints: Vec<Taint>,
    pub heartbeat: Duration,
    pub job_duration: Duration,
    pub pause_dir: Option<PathBuf>,
    /// Parallel API requests.
    pub parallel: usize,
}

impl Default for SimOptions {
    fn default() -> SimOptions {
        SimOptions {
            count: 3,
            prefix: "sim-".into(),
            cpu: "4".into(),
            memory: "8Gi".into(),
            pods: 110,
            labels: Vec::new(),
            taints: Vec::new(),
            heartbeat: Duration::from_secs(10),
            job_duration: Duration::from_secs(1),
            pause_dir: None,
            parallel: 32,
        }
    }
}

/// Why the fleet stopped.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot register node {node}")]
    Register {
        node: String,
        #[source]
        source: kube::Error,
    },
}

/// Parses `key[=value]:Effect` (the `kubectl taint` syntax).
pub fn parse_taint(s: &str) -> Option<Taint> {
    let (kv, effect) = s.rsplit_once(':')?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return None;
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (kv, None),
    };
    (!key.is_empty()).then(|| Taint {
        key: key.into(),
        value,
        effect: effect.into(),
        time_added: None,
    })
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn node_object(opts: &SimOptions, i: usize) -> Node {
    let name = format!("{}{i}", opts.prefix);
    let mut labels = vec![("kimg.dev/sim".to_string(), "true".to_string())];
    labels.extend(opts.labels.iter().cloned());
    node::node_object(&node::NodeInfo {
        internal_ip: format!("10.200.{}.{}", i / 250, i % 250 + 1),
        name,
        labels,
        taints: opts.taints.clone(),
        cpu: opts.cpu.clone(),
        memory: opts.memory.clone(),
        pods: opts.pods,
        kubelet_version: format!("v1.{}.0-kimg-sim", crate::KUBE_MINOR),
        runtime_version: "sim://0".into(),
        kubelet_port: 10250,
    })
}

struct Fleet {
    client: Client,
    opts: SimOptions,
    names: HashSet<String>,
    paused: Mutex<HashSet<String>>,
    /// node → (pod CIDR base, next host number).
    ips: Mutex<HashMap<String, (Option<ipnet::Ipv4Net>, u32)>>,
    /// Pod uids already reported Running or finishing.
    handled: Mutex<HashSet<String>>,
    limit: tokio::sync::Semaphore,
}

impl Fleet {
    fn is_paused(&self, node: &str) -> bool {
        self.paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(node)
    }

    fn pod_ip(&self, node: &str) -> String {
        let mut ips = self.ips.lock().unwrap_or_else(|e| e.into_inner());
        let idx: u32 = node
            .trim_start_matches(&self.opts.prefix)
            .parse()
            .unwrap_or(0);
        let e = ips.entry(node.into()).or_insert((None, 1));
        e.1 += 1;
        let n = e.1;
        match e.0 {
            Some(net) => {
                let base = u32::from(net.network());
                std::net::Ipv4Addr::from(base + (n % 254).max(1)).to_string()
            }
            None => format!("10.250.{}.{}", idx % 256, n % 254 + 1),
        }
    }

    async fn register(&self, i: usize) -> Result<(), SimError> {
        let node = node_object(&self.opts, i);
        let name = node.metadata.name.clone().unwrap_or_default();
        node::register(&self.client, &node)
            .await
            .map_err(|source| SimError::Register {
                node: name.clone(),
                source,
            })?;
        self.heartbeat(&name).await;
        Ok(())
    }

    async fn heartbeat(&self, name: &str) {
        if let Err(e) = node::renew_lease(&self.client, name).await {
            tracing::debug!(node = name, error = %e, "heartbeat failed");
        }
    }

    async fn report_ready(&self, name: &str) {
        if let Err(e) = node::report_conditions(&self.client, name).await {
            tracing::debug!(node = name, error = %e, "cannot report Ready");
        }
    }

    async fn pod_changed(self: &Arc<Self>, pod: Pod) {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            return;
        };
        if !self.names.contains(&node) || self.is_paused(&node) {
            return;
        }
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        if pod.metadata.deletion_timestamp.is_some() {
            let _permit = self.limit.acquire().await;
            let _ = api
                .delete(
                    &name,
                    &DeleteParams {
                        grace_period_seconds: Some(0),
                        ..Default::default()
                    },
                )
                .await;
            return;
        }
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            return;
        }
        if !self
            .handled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid)
        {
            return;
        }
        let t = now();
        let containers: Vec<_> = pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default();
        let statuses = move |ready: bool, state: serde_json::Value| -> Vec<serde_json::Value> {
            containers
                .iter()
                .map(|c| {
                    json!({"name": c.name, "image": c.image.clone().unwrap_or_default(),
                "imageID": "", "ready": ready, "started": ready, "restartCount": 0, "state": state})
                })
                .collect()
        };
        let t_cond = t.clone();
        let cond = move |ty: &str, st: &str| json!({"type": ty, "status": st, "lastTransitionTime": t_cond, "lastProbeTime": null});
        let ip = self.pod_ip(&node);
        let idx: usize = node
            .trim_start_matches(&self.opts.prefix)
            .parse()
            .unwrap_or(0);
        let host_ip = format!("10.200.{}.{}", idx / 250, idx % 250 + 1);
        let running = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": host_ip,
            "startTime": t, "conditions": [cond("PodScheduled", "True"), cond("Initialized", "True"),
                cond("ContainersReady", "True"), cond("Ready", "True")],
            "containerStatuses": statuses(true, json!({"running": {"startedAt": t}}))}});
        {
            let _permit = self.limit.acquire().await;
            if let Err(e) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&running))
                .await
            {
                tracing::debug!(pod = %name, error = %e, "cannot report Running");
                return;
            }
        }
        let restart = pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        if restart == "Always" {
            return;
        }
        let fail = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("sim.kimg.dev/outcome"))
            .is_some_and(|o| o == "Failed");
        let fleet = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(fleet.opts.job_duration).await;
            if fleet.is_paused(&node) {
                return;
            }
            let (phase, code, reason) = if fail {
                ("Failed", 1, "Error")
            } else {
                ("Succeeded", 0, "Completed")
            };
            let t = now();
            let done = json!({"status": {"phase": phase,
                "conditions": [cond("PodScheduled", "True"), cond("Initialized", "True"),
                    cond("ContainersReady", "False"), cond("Ready", "False")],
                "containerStatuses": statuses(false, json!({"terminated": {"exitCode": code, "reason": reason,
                    "startedAt": t, "finishedAt": t}}))}});
            let _permit = fleet.limit.acquire().await;
            let _ = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&done))
                .await;
        });
    }
}

/// Registers the fleet and runs it until the process stops.
pub async fn run(client: Client, opts: SimOptions) -> Result<(), SimError> {
    let names: HashSet<String> = (0..opts.count)
        .map(|i| format!("{}{i}", opts.prefix))
        .collect();
    let fleet = Arc::new(Fleet {
        client: client.clone(),
        names,
        paused: Default::default(),
        ips: Default::default(),
        handled: Default::default(),
        limit: tokio::sync::Semaphore::new(opts.parallel.max(1)),
        opts: opts.clone(),
    });
    let results: Vec<Result<(), SimError>> = futures::stream::iter(0..opts.count)
        .map(|i| {
            let f = fleet.clone();
            async move { f.register(i).await }
        })
        .buffer_unordered(opts.parallel.max(1))
        .collect()
        .await;
    for r in results {
        r?;
    }
    tracing::info!(count = opts.count, prefix = %opts.prefix, "simulated nodes registered");
    // Heartbeats.
    let f = fleet.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(f.opts.heartbeat);
        loop {
            tick.tick().await;
            let now_paused: HashSet<String> = match &f.opts.pause_dir {
                Some(dir) => f
                    .names
                    .iter()
                    .filter(|n| dir.join(n).exists())
                    .cloned()
                    .collect(),
                None => HashSet::new(),
            };
            let revived: Vec<String> = {
                let mut p = f.paused.lock().unwrap_or_else(|e| e.into_inner());
                let revived = p.difference(&now_paused).cloned().collect();
                for n in now_paused.difference(&p) {
                    tracing::info!(node = %n, "stopped heartbeating (pause file)");
                }
                *p = now_paused;
                revived
            };
            for n in &revived {
                f.report_ready(n).await;
                // Catch up on what happened to its pods while it was silent.
                let pods: Api<Pod> = Api::all(f.client.clone());
                let lp = kube::api::ListParams::default().fields(&format!("spec.nodeName={n}"));
                if let Ok(list) = pods.list(&lp).await {
                    for p in list.items {
                        let f = f.clone();
                        tokio::spawn(async move { f.pod_changed(p).await });
                    }
                }
            }
            let live: Vec<String> = f
                .names
                .iter()
                .filter(|n| !f.is_paused(n))
                .cloned()
                .collect();
            futures::stream::iter(live)
                .for_each_concurrent(f.opts.parallel.max(1), |n| {
                    let f = f.clone();
                    async move { f.heartbeat(&n).await }
                })
                .await;
        }
    });
    // Nodes: learn pod CIDRs; report Ready again when marked otherwise while alive.
    let f = fleet.clone();
    let nodes: Api<Node> = Api::all(client.clone());
    tokio::spawn(async move {
        let mut s = watch::events(
            nodes,
            watcher::Config::default().labels("kimg.dev/sim=true"),
        );
        while let Some(ev) = s.next().await {
            let (watcher::Event::Apply(n) | watcher::Event::InitApply(n)) = ev else {
                continue;
            };
            let name = n.metadata.name.clone().unwrap_or_default();
            if !f.names.contains(&name) {
                continue;
            }
            if let Some(cidr) = n
                .spec
                .as_ref()
                .and_then(|s| s.pod_cidr.as_ref())
                .and_then(|c| c.parse().ok())
            {
                f.ips
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(name.clone())
                    .or_insert((None, 1))
                    .0 = Some(cidr);
            }
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .map(|c| c.status.clone());
            if ready.as_deref() != Some("True") && !f.is_paused(&name) {
                f.heartbeat(&name).await;
                f.report_ready(&name).await;
            }
        }
    });
    // Pods.
    let pods: Api<Pod> = Api::all(client);
    let mut s = watch::events(pods, watcher::Config::default());
    while let Some(ev) = s.next().await {
        if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = ev {
            let f = fleet.clone();
            tokio::spawn(async move { f.pod_changed(p).await });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_parse_in_kubectl_syntax() {
        let t = parse_taint("dedicated=gpu:NoSchedule").expect("taint");
        assert_eq!(
            (t.key.as_str(), t.value.as_deref(), t.effect.as_str()),
            ("dedicated", Some("gpu"), "NoSchedule")
        );
        let t = parse_taint("node-role.kubernetes.io/control-plane:NoSchedule").expect("taint");
        assert_eq!(t.value, None);
        assert!(parse_taint("x:Sometimes").is_none());
        assert!(parse_taint("novalue").is_none());
    }

    #[test]
    fn nodes_carry_hostname_labels_and_capacity() {
        let n = node_object(&SimOptions::default(), 7);
        assert_eq!(n.metadata.name.as_deref(), Some("sim-7"));
        assert_eq!(
            n.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/hostname"))
                .map(String::as_str),
            Some("sim-7")
        );
        let alloc = n.status.and_then(|s| s.allocatable).expect("allocatable");
        assert_eq!(alloc.get("pods").map(|q| q.0.as_str()), Some("110"));
    }
}
