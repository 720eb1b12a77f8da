//! The node runtime of `kimg kubelet`: pods on containerd, without the apiserver side.
//!
//! Give [`Kubelet::run_pod`] a `k8s_openapi` [`Pod`] and the ConfigMap/Secret data it
//! references ([`ResolvedData`]); the kubelet creates the sandbox (pinned net/ipc/uts
//! namespaces, CNI bridge + host-local on the node's pod CIDR), prepares volumes and
//! `/etc` files, generates each container's OCI runtime spec, and runs init containers,
//! then main containers with restart policy, CrashLoopBackOff, and exec/httpGet/tcpSocket
//! probes. [`Kubelet::status`] reports a Kubernetes `PodStatus`; [`Kubelet::exec`] runs a
//! command in a container; [`Kubelet::delete_pod`] stops it gracefully (SIGTERM, SIGKILL
//! after the grace period) and removes containers, tasks, snapshots, the netns and the
//! pod's directories. Images come from OCI archives imported with
//! [`Containerd::import`].
//!
//! Files: [`containerd`] (gRPC client, import), [`netns`], [`cni`], [`spec`] (OCI spec),
//! [`volumes`], [`state`] (the state enums, restart rules), [`pod`] (the worker),
//! [`probe`], [`status`], [`runtime`] (the side-effect seam).
//!
//! The node agent around it: [`join`] (TLS bootstrap, the CA-signed serving certificate,
//! certificate rotation), [`node`] (Node object, Lease, conditions), [`sync`] (the API's
//! pods ↔ this kubelet), [`server`] (the :10250 API: logs, exec), [`logs`] (log rotation)
//! and [`agent`] (all of it, for `kimg kubelet`);
//! [`private_containerd`] runs a containerd of one's own for tests.
//!
//! Images: archives imported at start (air-gapped), else pulled from their registry on
//! first use ([`crate::oci::registry`]; HTTPS, or plain HTTP for `--insecure-registry`
//! hosts and loopback), one pull at a time; a failed pull leaves the container waiting
//! (`ErrImagePull`, then `ImagePullBackOff`) and is retried with back-off. `imagePullPolicy`
//! is treated as `IfNotPresent` (an image present is never pulled again).
//!
//! Limits: no pull credentials (imagePullSecrets); logs are plain text files, rotated at
//! 10 MiB. A restarted kubelet adopts the running containers of the pods still bound to it
//! (`pod.rs`, adoption) and removes the rest of the previous run.

pub mod agent;
pub mod cni;
pub mod containerd;
mod error;
pub mod join;
mod logs;
pub mod netns;
pub mod node;
pub mod pod;
pub mod private_containerd;
pub mod probe;
pub mod runtime;
pub mod server;
pub mod spec;
pub mod state;
pub mod status;
pub mod sync;
pub mod volumes;

#[cfg(test)]
mod host_tests;
#[cfg(test)]
mod pod_tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use tokio::sync::watch;

pub use containerd::{Containerd, Exit, ImageInfo, TaskState};
pub use error::KubeletError;
pub use pod::PodRecord;
pub use runtime::{ContainerdRuntime, ExecIo, ExecOutput, ExecStream, Runtime, Sandbox};
pub use spec::ResolvedData;
pub use state::{Backoff, ContainerState, PodState, RestartPolicy};

/// Node-level settings.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    /// State root: `pods/<uid>/` (volumes, `/etc` files, ns pins) and `logs/<uid>/`.
    pub root_dir: PathBuf,
    pub node_name: String,
    pub host_ip: String,
    /// Contents of every pod's `/etc/resolv.conf`.
    pub resolv_conf: String,
    /// cgroup parent of every pod, e.g. `/kimg`.
    pub cgroup_parent: String,
    pub backoff: Backoff,
    /// Cluster DNS (server IP, domain): pods with `dnsPolicy: ClusterFirst` get a
    /// resolv.conf naming it with the cluster search domains instead of `resolv_conf`.
    pub cluster_dns: Option<(String, String)>,
}

impl KubeletConfig {
    /// Defaults under `root_dir`: the host's resolv.conf, cgroup parent `/kimg`,
    /// back-off 10 s doubling to 5 min.
    pub fn new(root_dir: PathBuf, node_name: &str, host_ip: &str) -> KubeletConfig {
        KubeletConfig {
            root_dir,
            node_name: node_name.into(),
            host_ip: host_ip.into(),
            resolv_conf: std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            cgroup_parent: "/kimg".into(),
            backoff: Backoff::default(),
            cluster_dns: None,
        }
    }
}

struct PodHandle {
    pod: Pod,
    record: Arc<Mutex<PodRecord>>,
    stop: watch::Sender<bool>,
    worker: tokio::task::JoinHandle<()>,
}

/// Runs pods on this node.
pub struct Kubelet {
    rt: Arc<dyn Runtime>,
    cfg: KubeletConfig,
    pods: Mutex<HashMap<String, PodHandle>>,
    /// Signalled whenever a pod's state or a container's changes.
    changed: Arc<tokio::sync::Notify>,
}

fn uid_of(pod: &Pod) -> Result<String, KubeletError> {
    let uid = pod
        .metadata
        .uid
        .clone()
        .or_else(|| pod.metadata.name.clone())
        .ok_or_else(|| KubeletError::InvalidSpec("pod has neither uid nor name".into()))?;
    if uid.is_empty() || uid.contains('/') || uid.starts_with('.') {
        return Err(KubeletError::InvalidSpec(format!("bad pod uid {uid:?}")));
    }
    Ok(uid)
}

/// Removes the pod's cgroup (`<parent>/pod<uid>`) in every mounted hierarchy: runc removes
/// each container's own cgroup, but not the pod level the kubelet named. Best effort.
pub fn remove_pod_cgroups(parent: &str, uid: &str) {
    let rel = format!("{}/pod{uid}", parent.trim_matches('/'));
    let root = std::path::Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(&rel)];
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        dirs.push(e.path().join(&rel));
    }
    for d in dirs {
        let _ = std::fs::remove_dir(d);
    }
}

impl Kubelet {
    pub fn new(rt: Arc<dyn Runtime>, cfg: KubeletConfig) -> Kubelet {
        Kubelet {
            rt,
            cfg,
            pods: Mutex::new(HashMap::new()),
            changed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Notified when some pod's state changes (a status writer waits on it).
    pub fn changes(&self) -> Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    /// The resolv.conf of `pod`: cluster DNS with the Kubernetes search path for
    /// `ClusterFirst` (the default) when a cluster DNS is set, else the node's.
    pub fn resolv_conf_for(&self, pod: &Pod) -> String {
        let policy = pod
            .spec
            .as_ref()
            .and_then(|s| s.dns_policy.as_deref())
            .unwrap_or("ClusterFirst");
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        match &self.cfg.cluster_dns {
            Some((server, domain)) if policy == "ClusterFirst" && !host_network => {
                let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
                format!(
                    "nameserver {server}\nsearch {ns}.svc.{domain} svc.{domain} {domain}\noptions ndots:5\n"
                )
            }
            _ => self.cfg.resolv_conf.clone(),
        }
    }

    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.cfg.root_dir.join("pods").join(uid)
    }

    /// Where container `name` of pod `uid` logs (stdout and stderr, appended).
    pub fn log_path(&self, uid: &str, name: &str) -> PathBuf {
        self.cfg
            .root_dir
            .join("logs")
            .join(uid)
            .join(format!("{name}.log"))
    }

    /// Starts running `pod` (keyed by its uid, else its name). Returns the key.
    /// Running a pod that is already known is a no-op.
    pub fn run_pod(&self, pod: Pod, data: ResolvedData) -> Result<String, KubeletError> {
        let uid = uid_of(&pod)?;
        let spec = pod
            .spec
            .as_ref()
            .ok_or_else(|| KubeletError::InvalidSpec("pod has no spec".into()))?;
        if spec.containers.is_empty() {
            return Err(KubeletError::InvalidSpec("pod has no containers".into()));
        }
        let mut pods = self
            .pods
            .lock()
            .map_err(|_| KubeletError::UnknownPod(uid.clone()))?;
        if pods.contains_key(&uid) {
            return Ok(uid);
        }
        let record = Arc::new(Mutex::new(pod::new_record(&pod, &uid)));
        let (stop_tx, stop_rx) = watch::channel(false);
        let worker = Arc::new(pod::Worker {
            rt: self.rt.clone(),
            cfg: pod::WorkerConfig {
                node_name: self.cfg.node_name.clone(),
                host_ip: self.cfg.host_ip.clone(),
                resolv_conf: self.resolv_conf_for(&pod),
                cgroup_parent: self.cfg.cgroup_parent.clone(),
                backoff: self.cfg.backoff,
            },
            pod: pod.clone(),
            data,
            uid: uid.clone(),
            pod_dir: self.pod_dir(&uid),
            log_dir: self.cfg.root_dir.join("logs").join(&uid),
            record: record.clone(),
            stop: stop_rx,
            changed: self.changed.clone(),
        });
        let handle = tokio::spawn(worker.run());
        pods.insert(
            uid.clone(),
            PodHandle {
                pod,
                record,
                stop: stop_tx,
                worker: handle,
            },
        );
        Ok(uid)
    }

    /// Forgets every pod without touching its containers: what the kubelet process dying
    /// does (tests of adoption).
    #[cfg(test)]
    pub(crate) fn abandon(&self) {
        if let Ok(mut pods) = self.pods.lock() {
            for (_, h) in pods.drain() {
                h.worker.abort();
            }
        }
    }

    /// A snapshot of the pod's record (state enum, per-container details).
    pub fn record(&self, uid: &str) -> Option<PodRecord> {
        let pods = self.pods.lock().ok()?;
        let r = pods.get(uid)?.record.lock().ok()?.clone();
        Some(r)
    }

    /// The pod's Kubernetes status.
    pub fn status(&self, uid: &str) -> Option<PodStatus> {
        self.record(uid)
            .map(|r| status::pod_status(&r, &self.cfg.host_ip))
    }

    /// Keys of every pod this kubelet runs.
    pub fn pods(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .pods
            .lock()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Runs `command` in the running container `container` of pod `uid`.
    pub async fn exec(
        &self,
        uid: &str,
        container: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, KubeletError> {
        let (id, process) = self.exec_process(uid, container, command)?;
        self.rt.exec(&id, &process, timeout).await
    }

    /// [`Kubelet::exec`] with streamed input and output; returns the exit code.
    pub async fn exec_stream(
        &self,
        uid: &str,
        container: &str,
        command: &[String],
        io: ExecIo,
        timeout: Duration,
    ) -> Result<u32, KubeletError> {
        let (id, process) = self.exec_process(uid, container, command)?;
        self.rt.exec_streaming(&id, &process, io, timeout).await
    }

    /// The container id and OCI process for running `command` in a running container.
    fn exec_process(
        &self,
        uid: &str,
        container: &str,
        command: &[String],
    ) -> Result<(String, serde_json::Value), KubeletError> {
        let r = self
            .record(uid)
            .ok_or_else(|| KubeletError::UnknownPod(uid.into()))?;
        let c = r
            .containers
            .iter()
            .find(|c| c.name == container && matches!(c.state, ContainerState::Running { .. }))
            .ok_or_else(|| KubeletError::NotRunning {
                pod: uid.into(),
                container: container.into(),
            })?;
        let process = spec::process(command, &c.env, "/", c.user.0, c.user.1);
        Ok((c.id.clone(), process))
    }

    /// Stops the pod (SIGTERM, SIGKILL after `grace` or the pod's
    /// `terminationGracePeriodSeconds`) and removes everything it had on the node.
    pub async fn delete_pod(&self, uid: &str, grace: Option<Duration>) -> Result<(), KubeletError> {
        let handle = self
            .pods
            .lock()
            .ok()
            .and_then(|mut p| p.remove(uid))
            .ok_or_else(|| KubeletError::UnknownPod(uid.into()))?;
        let grace = grace.unwrap_or_else(|| {
            let secs = handle
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30);
            Duration::from_secs(secs.max(0) as u64)
        });
        if let Ok(mut r) = handle.record.lock() {
            if !r.state.is_final() {
                r.state = PodState::Terminating;
            }
        }
        let _ = handle.stop.send(true);
        let ids: Vec<String> = handle
            .record
            .lock()
            .map(|r| r.all().map(|c| c.id.clone()).collect())
            .unwrap_or_default();
        for id in &ids {
            let _ = self.rt.kill(id, 15).await;
        }
        let mut worker = handle.worker;
        if tokio::time::timeout(grace, &mut worker).await.is_err() {
            for id in &ids {
                let _ = self.rt.kill(id, 9).await;
            }
            if tokio::time::timeout(Duration::from_secs(10), &mut worker)
                .await
                .is_err()
            {
                worker.abort();
            }
        }
        let mut first_err = None;
        for id in &ids {
            if let Err(e) = self.rt.remove_container(id).await {
                first_err.get_or_insert(e);
            }
        }
        let sandbox = handle.record.lock().ok().and_then(|r| r.sandbox.clone());
        if let Some(sb) = sandbox {
            if let Err(e) = self.rt.remove_sandbox(uid, &sb).await {
                first_err.get_or_insert(e);
            }
        }
        remove_pod_cgroups(&self.cfg.cgroup_parent, uid);
        volumes::release(&self.pod_dir(uid));
        for dir in [self.pod_dir(uid), self.cfg.root_dir.join("logs").join(uid)] {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_err.get_or_insert(KubeletError::Io {
                        path: dir,
                        source: e,
                    });
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
