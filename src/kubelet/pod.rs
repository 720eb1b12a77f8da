//! One pod's worker: walks the [`PodState`] machine over a [`Runtime`].
//!
//! `ContainerCreating` (sandbox, `/etc` files, volumes) → init containers one by one,
//! each to exit 0 (`Initializing`) → main containers, each under its own supervisor task
//! that starts it, runs its probes, waits for the exit, and restarts it per the restart
//! policy after a CrashLoopBackOff delay → `Succeeded`/`Failed` once nothing restarts.
//! Deletion flips a stop flag that supervisors and back-off sleeps watch; the
//! [`super::Kubelet`] then signals the tasks and cleans up. The record behind a mutex is
//! what status reports read; it is only locked for short, non-async sections.
//!
//! Adoption: the worker keeps a [`Checkpoint`] in the pod directory (pod IP, start time,
//! whether init finished, each main container's restart count and start time). A worker
//! started for a pod whose directory exists (the kubelet restarted) reads it: when init had
//! finished and the pod's namespaces are still pinned, it takes the running containers
//! over as they are (same processes, same restart counts, emptyDir data and logs kept) and
//! only follows them; a container that exited meanwhile is handled as any exit (restart
//! policy). Anything less (no checkpoint, init unfinished, a reboot) and the leftovers are
//! removed and the pod starts afresh.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::containerd::{Exit, ImageInfo, TaskState};
use super::error::KubeletError;
use super::probe::{self, Timing};
use super::runtime::{self, Runtime, Sandbox};
use super::spec::{self, Downward, ResolvedData, SpecInput};
use super::state::{
    should_restart, should_retry_init, Backoff, ContainerState, PodState, RestartPolicy,
};
use super::volumes;

/// What the status report needs to know about one container.
#[derive(Clone, Debug)]
pub struct ContainerRecord {
    pub name: String,
    pub id: String,
    pub image: String,
    pub state: ContainerState,
    pub last_state: Option<ContainerState>,
    pub restart_count: u32,
    pub ready: bool,
    pub started: bool,
    /// Resolved env and user, reused for exec.
    pub env: Vec<String>,
    pub user: (i64, i64),
    /// Every back-off delay this container waited, in order.
    pub backoffs: Vec<Duration>,
}

/// The pod as the node sees it.
#[derive(Clone, Debug)]
pub struct PodRecord {
    pub state: PodState,
    pub pod_ip: Option<String>,
    pub start_time: i64,
    pub init: Vec<ContainerRecord>,
    pub containers: Vec<ContainerRecord>,
    pub sandbox: Option<Sandbox>,
    pub init_done: bool,
}

impl PodRecord {
    pub fn all(&self) -> impl Iterator<Item = &ContainerRecord> {
        self.init.iter().chain(self.containers.iter())
    }
}

/// What a restarted kubelet needs to adopt a pod: `<pod dir>/checkpoint.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub ip: String,
    pub start_time: i64,
    pub init_done: bool,
    /// Main containers by name.
    pub containers: BTreeMap<String, ContainerCheckpoint>,
}

/// One main container in a [`Checkpoint`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerCheckpoint {
    pub restart_count: u32,
    /// When its current task started (unix seconds), if it runs.
    pub started_at: Option<i64>,
}

/// The checkpoint's file name in the pod directory.
pub const CHECKPOINT: &str = "checkpoint.json";

/// Where a main container takes up after adoption.
enum Resume {
    /// Its task runs: follow it.
    Running { started_at: i64 },
    /// Its task exited while nobody watched.
    Exited { started_at: i64, exit: Exit },
}

/// Settings the worker needs from the kubelet.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub node_name: String,
    pub host_ip: String,
    pub resolv_conf: String,
    pub cgroup_parent: String,
    pub backoff: Backoff,
}

pub(crate) struct Worker {
    pub rt: Arc<dyn Runtime>,
    pub cfg: WorkerConfig,
    pub pod: Pod,
    pub data: ResolvedData,
    pub uid: String,
    pub pod_dir: PathBuf,
    pub log_dir: PathBuf,
    pub record: Arc<Mutex<PodRecord>>,
    pub stop: watch::Receiver<bool>,
    /// Told of every state change, so the status reaches the API at once.
    pub changed: Arc<tokio::sync::Notify>,
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Container id in containerd: `<pod-uid>-<container-name>`.
pub fn container_id(uid: &str, name: &str) -> String {
    format!("{uid}-{name}")
}

fn record_for(uid: &str, c: &Container) -> ContainerRecord {
    ContainerRecord {
        name: c.name.clone(),
        id: container_id(uid, &c.name),
        image: c.image.clone().unwrap_or_default(),
        state: ContainerState::waiting("ContainerCreating"),
        last_state: None,
        restart_count: 0,
        ready: false,
        started: false,
        env: Vec::new(),
        user: (0, 0),
        backoffs: Vec::new(),
    }
}

/// A fresh record for `pod` in state `Pending`.
pub fn new_record(pod: &Pod, uid: &str) -> PodRecord {
    let spec = pod.spec.as_ref();
    PodRecord {
        state: PodState::Pending,
        pod_ip: None,
        start_time: now(),
        init: spec
            .and_then(|s| s.init_containers.as_ref())
            .into_iter()
            .flatten()
            .map(|c| record_for(uid, c))
            .collect(),
        containers: spec
            .into_iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| record_for(uid, c))
            .collect(),
        sandbox: None,
        init_done: false,
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Init(usize),
    Main(usize),
}

impl Worker {
    fn set_state(&self, s: PodState) {
        if let Ok(mut r) = self.record.lock() {
            if r.state != PodState::Terminating || s.is_final() {
                r.state = s;
            }
        }
        self.changed.notify_one();
    }

    /// A main container started: a pod still creating its containers is now Running.
    fn started_main(&self) {
        if let Ok(mut r) = self.record.lock() {
            if r.state == PodState::ContainerCreating {
                r.state = PodState::Running;
            }
        }
        self.changed.notify_one();
    }

    fn with_container<T>(
        &self,
        kind: Kind,
        f: impl FnOnce(&mut ContainerRecord) -> T,
    ) -> Option<T> {
        let out = {
            let mut r = self.record.lock().ok()?;
            let c = match kind {
                Kind::Init(i) => r.init.get_mut(i)?,
                Kind::Main(i) => r.containers.get_mut(i)?,
            };
            f(c)
        };
        self.changed.notify_one();
        Some(out)
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    fn policy(&self) -> RestartPolicy {
        RestartPolicy::parse(
            self.pod
                .spec
                .as_ref()
                .and_then(|s| s.restart_policy.as_deref()),
        )
    }

    fn hostname(&self) -> String {
        self.pod
            .metadata
            .name
            .clone()
            .unwrap_or_else(|| self.uid.clone())
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// Sleeps `d` unless the pod is being deleted; returns false when it is.
    async fn sleep_unless_stopped(&self, d: Duration) -> bool {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => !self.stopping(),
            _ = stop.wait_for(|s| *s) => false,
        }
    }

    /// Runs the pod to its end (or until deletion).
    pub async fn run(self: Arc<Self>) {
        self.set_state(PodState::ContainerCreating);
        let adopted = self.adopt().await;
        let spec = self.pod.spec.clone().unwrap_or_default();
        if adopted.is_none() {
            if let Err(e) = self.setup().await {
                tracing::warn!(pod = %self.uid, error = %e, "pod setup failed");
                self.set_state(PodState::Failed {
                    reason: "CreatePodSandboxError".into(),
                    message: e.to_string(),
                });
                return;
            }
            for (i, c) in spec.init_containers.iter().flatten().enumerate() {
                self.set_state(PodState::Initializing { index: i });
                match self.run_init(i, c).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => return self.fail_container(Kind::Init(i), "CreateContainerError", e),
                }
            }
            if let Ok(mut r) = self.record.lock() {
                r.init_done = true;
            }
            self.save_checkpoint();
        }
        if self.stopping() {
            return;
        }
        // Phase Running once a main container has started (see `attempt`), not while its
        // image, volumes and rootfs are still being prepared.
        self.set_state(PodState::ContainerCreating);
        let mut set = tokio::task::JoinSet::new();
        for (i, c) in spec.containers.iter().enumerate() {
            let me = self.clone();
            let c = c.clone();
            let adopted = adopted
                .as_ref()
                .map(|cp| cp.containers.get(&c.name).cloned().unwrap_or_default());
            set.spawn(async move { me.supervise(i, &c, adopted).await });
        }
        let mut all_zero = true;
        while let Some(done) = set.join_next().await {
            match done {
                Ok(Some(code)) => all_zero &= code == 0,
                _ => all_zero = false,
            }
        }
        if self.stopping() {
            return;
        }
        self.set_state(if all_zero {
            PodState::Succeeded
        } else {
            PodState::Failed {
                reason: "Error".into(),
                message: "a container failed and the restart policy does not restart it".into(),
            }
        });
    }

    fn fail_container(&self, kind: Kind, reason: &str, e: KubeletError) {
        tracing::warn!(pod = %self.uid, error = %e, "container could not be created");
        self.with_container(kind, |c| {
            c.state = ContainerState::Waiting {
                reason: reason.into(),
                message: e.to_string(),
            }
        });
        self.set_state(PodState::Failed {
            reason: reason.into(),
            message: e.to_string(),
        });
    }

    async fn setup(&self) -> Result<(), KubeletError> {
        std::fs::create_dir_all(&self.pod_dir).map_err(KubeletError::io(&self.pod_dir))?;
        std::fs::create_dir_all(&self.log_dir).map_err(KubeletError::io(&self.log_dir))?;
        let sandbox = self
            .rt
            .create_sandbox(&self.uid, &self.hostname(), &self.pod_dir)
            .await?;
        let ip = sandbox.ip.clone();
        if let Ok(mut r) = self.record.lock() {
            r.sandbox = Some(sandbox);
            r.pod_ip = Some(ip.clone());
        }
        volumes::write_etc(&self.pod_dir, &self.hostname(), &ip, &self.cfg.resolv_conf)?;
        self.save_checkpoint();
        Ok(())
    }

    /// Writes the [`Checkpoint`] (replaced whole; not fsynced: after a power loss the
    /// namespaces are gone and nothing is adopted anyway).
    fn save_checkpoint(&self) {
        let Some(cp) = self.record.lock().ok().map(|r| Checkpoint {
            ip: r.pod_ip.clone().unwrap_or_default(),
            start_time: r.start_time,
            init_done: r.init_done,
            containers: r
                .containers
                .iter()
                .map(|c| {
                    let started_at = match c.state {
                        ContainerState::Running { started_at } => Some(started_at),
                        _ => None,
                    };
                    let k = ContainerCheckpoint {
                        restart_count: c.restart_count,
                        started_at,
                    };
                    (c.name.clone(), k)
                })
                .collect(),
        }) else {
            return;
        };
        let path = self.pod_dir.join(CHECKPOINT);
        let written = serde_json::to_vec(&cp)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::files::replace(&path, &bytes, 0o600));
        if let Err(e) = written {
            tracing::warn!(pod = %self.uid, error = %e, "cannot write the pod checkpoint");
        }
    }

    /// Takes over what an earlier kubelet left of this pod (see the module doc). `None`:
    /// start afresh; the leftovers, if any, are gone.
    async fn adopt(&self) -> Option<Checkpoint> {
        if !self.pod_dir.exists() {
            return None;
        }
        let cp: Option<Checkpoint> = std::fs::read(self.pod_dir.join(CHECKPOINT))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let ip = cp.as_ref().map(|c| c.ip.clone()).unwrap_or_default();
        let sandbox = self.rt.existing_sandbox(&self.uid, &self.pod_dir, &ip);
        match (cp, sandbox) {
            (Some(cp), Some(sandbox)) if cp.init_done && !cp.ip.is_empty() => {
                if let Ok(mut r) = self.record.lock() {
                    r.sandbox = Some(sandbox);
                    r.pod_ip = Some(cp.ip.clone());
                    r.start_time = cp.start_time;
                    r.init_done = true;
                    for c in r.init.iter_mut() {
                        c.state = ContainerState::exited(0, cp.start_time, cp.start_time);
                    }
                    for c in r.containers.iter_mut() {
                        if let Some(k) = cp.containers.get(&c.name) {
                            c.restart_count = k.restart_count;
                        }
                    }
                }
                tracing::info!(pod = %self.uid, "adopting the pod's containers from an earlier run");
                Some(cp)
            }
            (_, sandbox) => {
                tracing::info!(pod = %self.uid, "removing what an earlier run left of the pod");
                let ids: Vec<String> = self
                    .record
                    .lock()
                    .map(|r| r.all().map(|c| c.id.clone()).collect())
                    .unwrap_or_default();
                for id in ids {
                    let _ = runtime::force_remove(self.rt.as_ref(), &id).await;
                }
                if let Some(sb) = sandbox {
                    let _ = self.rt.remove_sandbox(&self.uid, &sb).await;
                }
                volumes::release(&self.pod_dir);
                let _ = std::fs::remove_dir_all(&self.pod_dir);
                None
            }
        }
    }

    /// The container's image; a failed pull is retried with back-off (the container waits
    /// with `ErrImagePull`, then `ImagePullBackOff`) until it succeeds or the pod stops.
    async fn image(&self, kind: Kind, name: &str) -> Result<ImageInfo, KubeletError> {
        let mut tries = 0;
        loop {
            match self.rt.image(name).await {
                Err(e @ KubeletError::Pull { .. }) => {
                    tries += 1;
                    let delay = self.cfg.backoff.delay(tries);
                    tracing::warn!(pod = %self.uid, image = %name, error = %e, retry_in_s = delay.as_secs(), "pull failed");
                    self.with_container(kind, |r| {
                        r.state = ContainerState::Waiting {
                            reason: if tries == 1 {
                                "ErrImagePull"
                            } else {
                                "ImagePullBackOff"
                            }
                            .into(),
                            message: e.to_string(),
                        }
                    });
                    if !self.sleep_unless_stopped(delay).await {
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
    }

    /// Creates the container in the runtime (once per pod lifetime).
    async fn create(&self, kind: Kind, c: &Container) -> Result<String, KubeletError> {
        let (id, image, spec) = self.prepare(kind, c).await?;
        self.rt.create_container(&id, &image, &spec).await?;
        Ok(id)
    }

    /// The container's image, volumes, environment and runtime spec (recorded for exec).
    async fn prepare(
        &self,
        kind: Kind,
        c: &Container,
    ) -> Result<(String, ImageInfo, serde_json::Value), KubeletError> {
        let id = container_id(&self.uid, &c.name);
        let image_name = c.image.clone().ok_or_else(|| {
            KubeletError::InvalidSpec(format!("container {} has no image", c.name))
        })?;
        let image = self.image(kind, &image_name).await?;
        let ip = self
            .record
            .lock()
            .ok()
            .and_then(|r| r.pod_ip.clone())
            .unwrap_or_default();
        let sandbox = self
            .record
            .lock()
            .ok()
            .and_then(|r| r.sandbox.clone())
            .ok_or_else(|| KubeletError::InvalidSpec("no sandbox".into()))?;
        let meta = &self.pod.metadata;
        let downward = Downward {
            pod_name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            uid: self.uid.clone(),
            node_name: self.cfg.node_name.clone(),
            pod_ip: ip,
            host_ip: self.cfg.host_ip.clone(),
            service_account: self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
        };
        let env = spec::resolve_env(c, &image, &self.data, &downward)?;
        let vols = volumes::prepare(&self.pod, &self.pod_dir, &self.data)?;
        let mounts = volumes::mounts_for(c, &self.pod, &self.pod_dir, &vols)?;
        let user = spec::user_of(&self.pod, c, &image);
        let spec = spec::runtime_spec(&SpecInput {
            pod: &self.pod,
            container: c,
            image: &image,
            env: env.clone(),
            mounts,
            namespaces: &sandbox.namespaces,
            cgroups_path: format!("{}/pod{}/{}", self.cfg.cgroup_parent, self.uid, c.name),
        })?;
        self.with_container(kind, |r| {
            r.env = env;
            r.user = user;
        });
        Ok((id, image, spec))
    }

    /// Starts one attempt and returns its exit code (or None when it never started).
    async fn attempt(&self, kind: Kind, c: &Container, id: &str) -> Result<i32, KubeletError> {
        self.rt.start(id, &self.log_path(&c.name)).await?;
        self.follow(kind, c, id, now()).await
    }

    /// Follows a running task (started at `started_at`) to its exit: probes, then the
    /// exit recorded and the task deleted. Returns the exit code.
    async fn follow(
        &self,
        kind: Kind,
        c: &Container,
        id: &str,
        started_at: i64,
    ) -> Result<i32, KubeletError> {
        if matches!(kind, Kind::Main(_)) {
            self.started_main();
        }
        self.with_container(kind, |r| {
            r.state = ContainerState::Running { started_at };
            r.ready = c.readiness_probe.is_none() && c.startup_probe.is_none();
            r.started = c.startup_probe.is_none();
        });
        if matches!(kind, Kind::Main(_)) {
            self.save_checkpoint();
        }
        if self.stopping() {
            let _ = self.rt.kill(id, 9).await;
        }
        let probes = match kind {
            Kind::Main(i)
                if c.liveness_probe.is_some()
                    || c.readiness_probe.is_some()
                    || c.startup_probe.is_some() =>
            {
                Some(tokio::spawn(probe_loop(
                    self.rt.clone(),
                    self.record.clone(),
                    i,
                    c.clone(),
                    id.to_string(),
                )))
            }
            _ => None,
        };
        let exit = self.rt.wait(id).await;
        if let Some(p) = probes {
            p.abort();
        }
        let exit = exit?;
        let code = exit.code as i32;
        let finished = if exit.at > 0 { exit.at } else { now() };
        self.with_container(kind, |r| {
            r.state = ContainerState::exited(code, started_at, finished);
            r.ready = false;
        });
        self.rt.delete_task(id).await?;
        Ok(code)
    }

    /// Runs init container `i` until it exits 0; false when the pod failed or stops.
    async fn run_init(&self, i: usize, c: &Container) -> Result<bool, KubeletError> {
        let id = self.create(Kind::Init(i), c).await?;
        let mut streak = 0;
        loop {
            let code = self.attempt(Kind::Init(i), c, &id).await?;
            if code == 0 {
                return Ok(true);
            }
            if self.stopping() {
                return Ok(false);
            }
            if !should_retry_init(self.policy(), code) {
                self.set_state(PodState::Failed {
                    reason: "Init:Error".into(),
                    message: format!("init container {} exited with {code}", c.name),
                });
                return Ok(false);
            }
            streak += 1;
            if !self.back_off(Kind::Init(i), c, streak).await {
                return Ok(false);
            }
        }
    }

    /// Waits out the back-off for restart `streak`; false when the pod stops meanwhile.
    async fn back_off(&self, kind: Kind, c: &Container, streak: u32) -> bool {
        let delay = self.cfg.backoff.delay(streak);
        self.with_container(kind, |r| {
            r.last_state = Some(r.state.clone());
            r.state = ContainerState::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: format!(
                    "back-off {}s restarting failed container={}",
                    delay.as_secs(),
                    c.name
                ),
            };
            r.backoffs.push(delay);
        });
        if matches!(kind, Kind::Main(_)) {
            self.set_state(PodState::CrashLoopBackOff {
                container: c.name.clone(),
                delay,
            });
        }
        let go_on = self.sleep_unless_stopped(delay).await;
        if go_on {
            self.with_container(kind, |r| r.restart_count += 1);
            if matches!(kind, Kind::Main(_)) {
                self.set_state(PodState::Running);
            }
        }
        go_on
    }

    /// Keeps main container `i` running per the restart policy; returns its last exit code.
    /// `adopted`: the container is an earlier run's (see [`Worker::adopt`]).
    async fn supervise(
        &self,
        i: usize,
        c: &Container,
        adopted: Option<ContainerCheckpoint>,
    ) -> Option<i32> {
        let made = match adopted {
            Some(k) => self.take_over(Kind::Main(i), c, &k).await,
            None => self.create(Kind::Main(i), c).await.map(|id| (id, None)),
        };
        let (id, mut resume) = match made {
            Ok(made) => made,
            Err(e) => {
                self.fail_container(Kind::Main(i), "CreateContainerError", e);
                return None;
            }
        };
        let mut streak = 0u32;
        loop {
            let began = Instant::now();
            let attempt = match resume.take() {
                Some(Resume::Running { started_at }) => {
                    self.follow(Kind::Main(i), c, &id, started_at).await
                }
                Some(Resume::Exited { started_at, exit }) => {
                    let finished = if exit.at > 0 { exit.at } else { now() };
                    let code = exit.code as i32;
                    self.with_container(Kind::Main(i), |r| {
                        r.state = ContainerState::exited(code, started_at, finished);
                        r.ready = false;
                    });
                    self.rt.delete_task(&id).await.map(|()| code)
                }
                None => self.attempt(Kind::Main(i), c, &id).await,
            };
            let code = match attempt {
                Ok(code) => code,
                Err(e) => {
                    tracing::warn!(pod = %self.uid, container = %c.name, error = %e, "start failed");
                    self.with_container(Kind::Main(i), |r| {
                        r.state = ContainerState::Waiting {
                            reason: "RunContainerError".into(),
                            message: e.to_string(),
                        }
                    });
                    -1
                }
            };
            if self.stopping() || !should_restart(self.policy(), code) {
                return Some(code);
            }
            if began.elapsed() >= self.cfg.backoff.reset_after {
                streak = 0;
            }
            streak += 1;
            if !self.back_off(Kind::Main(i), c, streak).await {
                return Some(code);
            }
        }
    }
}

impl Worker {
    /// An adopted main container: its spec prepared again (exec needs its environment),
    /// and where it stands. A container without a task is created afresh.
    async fn take_over(
        &self,
        kind: Kind,
        c: &Container,
        k: &ContainerCheckpoint,
    ) -> Result<(String, Option<Resume>), KubeletError> {
        let (id, image, spec) = self.prepare(kind, c).await?;
        let started_at = k.started_at.unwrap_or_else(now);
        match self.rt.task_state(&id).await? {
            TaskState::Running => Ok((id, Some(Resume::Running { started_at }))),
            TaskState::Exited(exit) => Ok((id, Some(Resume::Exited { started_at, exit }))),
            TaskState::Missing => {
                self.rt.remove_container(&id).await?;
                self.rt.create_container(&id, &image, &spec).await?;
                Ok((id, None))
            }
        }
    }
}

fn probe_process(
    record: &Arc<Mutex<PodRecord>>,
    i: usize,
) -> impl Fn(Vec<String>) -> serde_json::Value {
    let (env, user) = record
        .lock()
        .ok()
        .and_then(|r| r.containers.get(i).map(|c| (c.env.clone(), c.user)))
        .unwrap_or_default();
    move |args| spec::process(&args, &env, "/", user.0, user.1)
}

/// Runs `probe` every period until it reaches a verdict `wanted` (success or failure
/// threshold). Returns true on success threshold, false on failure threshold.
// The probe's context is eight separate borrows; a struct for one private call buys nothing.
#[allow(clippy::too_many_arguments)]
async fn probe_until(
    rt: &Arc<dyn Runtime>,
    record: &Arc<Mutex<PodRecord>>,
    i: usize,
    c: &Container,
    id: &str,
    probe: &Probe,
    mut on_result: impl FnMut(bool),
    stop_on_success: bool,
) -> bool {
    let t = Timing::of(probe);
    tokio::time::sleep(t.initial_delay).await;
    let (mut ok_run, mut bad_run) = (0u32, 0u32);
    let process = probe_process(record, i);
    loop {
        let ip = record
            .lock()
            .ok()
            .and_then(|r| r.pod_ip.clone())
            .unwrap_or_default();
        let ok = probe::check(rt, probe, c, id, &ip, &process).await;
        if ok {
            ok_run += 1;
            bad_run = 0;
        } else {
            bad_run += 1;
            ok_run = 0;
        }
        if ok_run >= t.success_threshold {
            on_result(true);
            if stop_on_success {
                return true;
            }
        }
        if bad_run >= t.failure_threshold {
            on_result(false);
            return false;
        }
        tokio::time::sleep(t.period).await;
    }
}

/// Startup, then liveness and readiness probes of main container `i` for one attempt.
async fn probe_loop(
    rt: Arc<dyn Runtime>,
    record: Arc<Mutex<PodRecord>>,
    i: usize,
    c: Container,
    id: String,
) {
    let set = |f: &dyn Fn(&mut ContainerRecord)| {
        if let Ok(mut r) = record.lock() {
            if let Some(cr) = r.containers.get_mut(i) {
                f(cr);
            }
        }
    };
    if let Some(sp) = &c.startup_probe {
        if !probe_until(&rt, &record, i, &c, &id, sp, |_| {}, true).await {
            tracing::info!(container = %id, "startup probe failed; killing the container");
            let _ = rt.kill(&id, 9).await;
            return;
        }
        set(&|r| {
            r.started = true;
            if c.readiness_probe.is_none() {
                r.ready = true;
            }
        });
    }
    let liveness = async {
        if let Some(lp) = &c.liveness_probe {
            // Liveness never stops on success; it returns only on failure.
            probe_until(&rt, &record, i, &c, &id, lp, |_| {}, false).await;
            tracing::info!(container = %id, "liveness probe failed; killing the container");
            let _ = rt.kill(&id, 9).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let readiness = async {
        if let Some(rp) = &c.readiness_probe {
            let rec = record.clone();
            // Readiness flips with each verdict and keeps probing.
            loop {
                let passed = probe_until(
                    &rt,
                    &record,
                    i,
                    &c,
                    &id,
                    rp,
                    |ok| {
                        if let Ok(mut r) = rec.lock() {
                            if let Some(cr) = r.containers.get_mut(i) {
                                cr.ready = ok;
                            }
                        }
                    },
                    false,
                )
                .await;
                let _ = passed;
            }
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = liveness => {},
        _ = readiness => {},
    }
}

/// Restart counts by container name (for tests and metrics).
pub fn restart_counts(r: &PodRecord) -> BTreeMap<String, u32> {
    r.containers
        .iter()
        .map(|c| (c.name.clone(), c.restart_count))
        .collect()
}
