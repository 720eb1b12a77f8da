//! The seam between pod logic and the machine: the [`Runtime`] trait, and its real
//! implementation [`ContainerdRuntime`] over containerd, CNI and pinned namespaces.
//!
//! The pod worker only talks to a `dyn Runtime`, so the state machine is unit-tested with
//! a scripted fake (see `pod_tests.rs`) and runs for real against containerd + runc.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::cni::CniNetwork;
use super::containerd::{Containerd, ExecPaths, Exit, ImageInfo, TaskState};
use super::error::KubeletError;
use super::netns::{self, PodNamespaces};
use crate::oci::registry::{Puller, Reference};

/// A pod's sandbox: its pinned namespaces and its IP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    pub namespaces: PodNamespaces,
    pub ip: String,
}

/// Output of a command run inside a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Which output stream a chunk of exec output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecStream {
    Stdout,
    Stderr,
}

/// The streams of an interactive exec: stdin chunks in (closed sender = EOF), output
/// chunks out as they are written.
pub struct ExecIo {
    pub stdin: Option<tokio::sync::mpsc::Receiver<bytes::Bytes>>,
    pub output: tokio::sync::mpsc::Sender<(ExecStream, bytes::Bytes)>,
    /// Run the process on a terminal (`kubectl exec -t`): one output stream (stdout),
    /// sized by what `resize` sends as (columns, rows).
    pub tty: bool,
    pub resize: Option<tokio::sync::mpsc::Receiver<(u16, u16)>>,
}

/// Everything the pod worker does to the machine.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Creates the pod's namespaces and network; `pod_dir` is the pod's state directory.
    async fn create_sandbox(
        &self,
        uid: &str,
        hostname: &str,
        pod_dir: &Path,
    ) -> Result<Sandbox, KubeletError>;
    /// Tears the network down and unpins the namespaces. Safe to repeat.
    async fn remove_sandbox(&self, uid: &str, sandbox: &Sandbox) -> Result<(), KubeletError>;
    /// The image's config, by name.
    async fn image(&self, name: &str) -> Result<ImageInfo, KubeletError>;
    /// Creates a container (record + writable snapshot) from a runtime spec.
    async fn create_container(
        &self,
        id: &str,
        image: &ImageInfo,
        spec: &Value,
    ) -> Result<(), KubeletError>;
    /// Starts a fresh task of the container; its output is appended to `log`.
    async fn start(&self, id: &str, log: &Path) -> Result<(), KubeletError>;
    /// Waits for the running task to exit.
    async fn wait(&self, id: &str) -> Result<Exit, KubeletError>;
    /// Signals the task's processes.
    async fn kill(&self, id: &str, signal: u32) -> Result<(), KubeletError>;
    /// Deletes an exited task (needed before the next start). Safe to repeat.
    async fn delete_task(&self, id: &str) -> Result<(), KubeletError>;
    /// Deletes the container and its snapshot. Safe to repeat.
    async fn remove_container(&self, id: &str) -> Result<(), KubeletError>;
    /// What the container's task is doing (adoption after a kubelet restart).
    async fn task_state(&self, id: &str) -> Result<TaskState, KubeletError>;
    /// The sandbox an earlier run made for pod `uid` with address `ip`, if its namespaces
    /// are still pinned (they are not after a reboot).
    fn existing_sandbox(&self, uid: &str, pod_dir: &Path, ip: &str) -> Option<Sandbox>;
    /// Runs an OCI `Process` in the running container.
    async fn exec(
        &self,
        id: &str,
        process: &Value,
        timeout: Duration,
    ) -> Result<ExecOutput, KubeletError>;
    /// Runs an OCI `Process` with streamed stdin/stdout/stderr; returns the exit code.
    /// The default runs [`Runtime::exec`] and sends its output at the end (no stdin).
    async fn exec_streaming(
        &self,
        id: &str,
        process: &Value,
        io: ExecIo,
        timeout: Duration,
    ) -> Result<u32, KubeletError> {
        let out = self.exec(id, process, timeout).await?;
        for (s, data) in [
            (ExecStream::Stdout, out.stdout),
            (ExecStream::Stderr, out.stderr),
        ] {
            if !data.is_empty() {
                let _ = io.output.send((s, data.into())).await;
            }
        }
        Ok(out.exit_code)
    }
}

/// Kills a container's processes and removes it, waiting (up to 5 s) for the task to stop
/// first: for leftovers of an earlier run.
pub async fn force_remove(rt: &dyn Runtime, id: &str) -> Result<(), KubeletError> {
    let _ = rt.kill(id, 9).await;
    let mut last = Ok(());
    for _ in 0..50 {
        last = rt.remove_container(id).await;
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

/// The real runtime: containerd for containers, CNI for the network.
pub struct ContainerdRuntime {
    pub client: Containerd,
    pub cni: CniNetwork,
    /// Where netns files are pinned (`/run/netns`).
    pub netns_dir: PathBuf,
    /// Scratch space for exec output files.
    pub exec_dir: PathBuf,
    exec_seq: AtomicU64,
    /// Pulls images not present locally; none: only imported archives run.
    puller: Option<Arc<Puller>>,
    /// One pull at a time, so pods created together fetch a shared image once.
    pull_lock: tokio::sync::Mutex<()>,
}

impl ContainerdRuntime {
    pub fn new(client: Containerd, cni: CniNetwork, netns_dir: PathBuf, exec_dir: PathBuf) -> Self {
        ContainerdRuntime {
            client,
            cni,
            netns_dir,
            exec_dir,
            exec_seq: AtomicU64::new(0),
            puller: None,
            pull_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Pulls images missing locally from their registries with `puller`.
    pub fn with_puller(mut self, puller: Puller) -> Self {
        self.puller = Some(Arc::new(puller));
        self
    }

    /// The image as stored under `name` or under its normalized name.
    async fn local_image(
        &self,
        name: &str,
        normalized: Option<&str>,
    ) -> Result<ImageInfo, KubeletError> {
        match self.client.image(name).await {
            Err(KubeletError::ImageNotFound(_)) if normalized.is_some_and(|n| n != name) => {
                self.client.image(normalized.unwrap_or(name)).await
            }
            other => other,
        }
    }
}

#[async_trait]
impl Runtime for ContainerdRuntime {
    async fn create_sandbox(
        &self,
        uid: &str,
        hostname: &str,
        pod_dir: &Path,
    ) -> Result<Sandbox, KubeletError> {
        let ns = PodNamespaces::new(&self.netns_dir, pod_dir, uid);
        let (ns2, host) = (ns.clone(), hostname.to_string());
        tokio::task::spawn_blocking(move || netns::create(&ns2, &host))
            .await
            .map_err(|e| KubeletError::NetnsCreate {
                path: ns.net.clone(),
                source: std::io::Error::other(e.to_string()),
            })??;
        match self.cni.add(uid, &ns.net).await {
            Ok(ip) => Ok(Sandbox {
                namespaces: ns,
                ip: ip.to_string(),
            }),
            Err(e) => {
                let _ = self.cni.del(uid, &ns.net).await;
                let _ = netns::remove(&ns);
                Err(e)
            }
        }
    }

    async fn remove_sandbox(&self, uid: &str, sandbox: &Sandbox) -> Result<(), KubeletError> {
        if sandbox.namespaces.net.exists() {
            self.cni.del(uid, &sandbox.namespaces.net).await?;
        }
        netns::remove(&sandbox.namespaces)
    }

    async fn image(&self, name: &str) -> Result<ImageInfo, KubeletError> {
        let normalized = Reference::parse(name).ok().map(|r| r.name());
        let found = self.local_image(name, normalized.as_deref()).await;
        let (Err(KubeletError::ImageNotFound(_)), Some(puller)) = (&found, &self.puller) else {
            return found;
        };
        let _one = self.pull_lock.lock().await;
        // Another pod may have pulled it while this one waited.
        if let Ok(image) = self.local_image(name, normalized.as_deref()).await {
            return Ok(image);
        }
        let started = std::time::Instant::now();
        let (puller, image) = (puller.clone(), name.to_string());
        let pulled =
            tokio::task::spawn_blocking(move || puller.pull(&image).map_err(|e| e.to_string()))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r)
                .map_err(|reason| KubeletError::Pull {
                    image: name.into(),
                    reason,
                })?;
        let info = self
            .client
            .import_image(&pulled, normalized.as_deref())
            .await?;
        tracing::info!(image = %name, stored_as = %info.name, ms = started.elapsed().as_millis() as u64, "pulled");
        Ok(info)
    }

    async fn create_container(
        &self,
        id: &str,
        image: &ImageInfo,
        spec: &Value,
    ) -> Result<(), KubeletError> {
        let labels = [("io.kimg.kubelet".to_string(), "true".to_string())].into();
        self.client
            .create_container(
                id,
                image,
                serde_json::to_vec(spec).unwrap_or_default(),
                labels,
            )
            .await
    }

    async fn start(&self, id: &str, log: &Path) -> Result<(), KubeletError> {
        self.client.delete_task(id).await?;
        match self.client.start_task(id, log).await {
            // A quick restart can race the shim's cleanup of the previous task; retry once.
            Err(KubeletError::Containerd { status, .. })
                if status.message().contains("already exists") =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.client.delete_task(id).await?;
                self.client.start_task(id, log).await.map(|_| ())
            }
            other => other.map(|_| ()),
        }
    }

    async fn wait(&self, id: &str) -> Result<Exit, KubeletError> {
        self.client.wait(id, "").await
    }

    async fn kill(&self, id: &str, signal: u32) -> Result<(), KubeletError> {
        // SIGTERM goes to the init process only (as CRI runtimes do); SIGKILL to every process.
        match self.client.kill(id, signal, signal == 9).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    async fn delete_task(&self, id: &str) -> Result<(), KubeletError> {
        self.client.delete_task(id).await
    }

    async fn remove_container(&self, id: &str) -> Result<(), KubeletError> {
        self.client.delete_task(id).await?;
        self.client.delete_container(id).await
    }

    async fn task_state(&self, id: &str) -> Result<TaskState, KubeletError> {
        self.client.task_state(id).await
    }

    fn existing_sandbox(&self, uid: &str, pod_dir: &Path, ip: &str) -> Option<Sandbox> {
        let namespaces = PodNamespaces::new(&self.netns_dir, pod_dir, uid);
        netns::pinned(&namespaces).then(|| Sandbox {
            namespaces,
            ip: ip.to_string(),
        })
    }

    async fn exec(
        &self,
        id: &str,
        process: &Value,
        timeout: Duration,
    ) -> Result<ExecOutput, KubeletError> {
        let n = self.exec_seq.fetch_add(1, Ordering::Relaxed);
        let exec_id = format!("exec-{}-{n}", std::process::id());
        std::fs::create_dir_all(&self.exec_dir).map_err(KubeletError::io(&self.exec_dir))?;
        // containerd 1.6 merges both streams into one file for `file://` URIs, so exec uses
        // FIFOs (plain paths), which keep stdout and stderr apart.
        let out = self.exec_dir.join(format!("{exec_id}.out"));
        let err = self.exec_dir.join(format!("{exec_id}.err"));
        for p in [&out, &err] {
            nix::unistd::mkfifo(p.as_path(), nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| KubeletError::Io {
                    path: p.clone(),
                    source: std::io::Error::from_raw_os_error(e as i32),
                })?;
        }
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        let out_reader = tokio::spawn(collect_fifo(out.clone(), done_rx.clone()));
        let err_reader = tokio::spawn(collect_fifo(err.clone(), done_rx));
        let code = self
            .client
            .exec(
                id,
                &exec_id,
                serde_json::to_vec(process).unwrap_or_default(),
                ExecPaths {
                    stdin: None,
                    out: &out,
                    err: Some(&err),
                    terminal: false,
                },
                timeout,
            )
            .await;
        let _ = done_tx.send(true);
        let stdout = out_reader.await.unwrap_or_default();
        let stderr = err_reader.await.unwrap_or_default();
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_file(&err);
        Ok(ExecOutput {
            exit_code: code?,
            stdout,
            stderr,
        })
    }

    async fn exec_streaming(
        &self,
        id: &str,
        process: &Value,
        io: ExecIo,
        timeout: Duration,
    ) -> Result<u32, KubeletError> {
        let n = self.exec_seq.fetch_add(1, Ordering::Relaxed);
        let exec_id = format!("exec-{}-{n}", std::process::id());
        std::fs::create_dir_all(&self.exec_dir).map_err(KubeletError::io(&self.exec_dir))?;
        let path = |suffix: &str| self.exec_dir.join(format!("{exec_id}.{suffix}"));
        let (out, err, input) = (path("out"), path("err"), path("in"));
        let mut fifos = vec![out.clone()];
        if !io.tty {
            fifos.push(err.clone());
        }
        if io.stdin.is_some() {
            fifos.push(input.clone());
        }
        for p in &fifos {
            nix::unistd::mkfifo(p.as_path(), nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| KubeletError::Io {
                    path: p.clone(),
                    source: std::io::Error::from_raw_os_error(e as i32),
                })?;
        }
        // Held open read-write so the shim's open does not block. The shim keeps the FIFO
        // open too, so after the last chunk the process gets its EOF through CloseIO.
        let feeder = match io.stdin {
            Some(mut rx) => {
                let mut tx = tokio::net::unix::pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(&input)
                    .map_err(KubeletError::io(&input))?;
                let (client, id, exec_id) = (self.client.clone(), id.to_string(), exec_id.clone());
                Some(tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    while let Some(chunk) = rx.recv().await {
                        if tx.write_all(&chunk).await.is_err() {
                            break;
                        }
                    }
                    // CloseIO drops what the shim has not copied yet: wait until the FIFO
                    // is drained (and a moment for the copy) before closing.
                    for _ in 0..500 {
                        if unread_bytes(&tx) == 0 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    drop(tx);
                    // The process may not exist yet when stdin ends at once: retry a while.
                    for _ in 0..50 {
                        if client.close_stdin(&id, &exec_id).await.is_ok() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }))
            }
            None => None,
        };
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        let out_task = tokio::spawn(stream_fifo(
            out.clone(),
            done_rx.clone(),
            io.output.clone(),
            ExecStream::Stdout,
        ));
        let err_task = (!io.tty).then(|| {
            tokio::spawn(stream_fifo(
                err.clone(),
                done_rx,
                io.output,
                ExecStream::Stderr,
            ))
        });
        // The client sends the terminal's size as soon as it connects: the process starts
        // with it (OCI `consoleSize`), or a command that asks at once would see 0×0.
        let mut resize = io.resize;
        let first_size = match (&mut resize, io.tty) {
            (Some(rx), true) => tokio::time::timeout(Duration::from_secs(1), rx.recv())
                .await
                .ok()
                .flatten(),
            _ => None,
        };
        // Later sizes as they come; each retried briefly, in case the process is not
        // started yet.
        let resizer = resize.map(|mut rx| {
            let (client, id, exec_id) = (self.client.clone(), id.to_string(), exec_id.clone());
            tokio::spawn(async move {
                while let Some((w, h)) = rx.recv().await {
                    for _ in 0..50 {
                        if client.resize_pty(&id, &exec_id, w, h).await.is_ok() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            })
        });
        let mut process = process.clone();
        if io.tty {
            process["terminal"] = serde_json::json!(true);
            if let Some((w, h)) = first_size {
                process["consoleSize"] = serde_json::json!({"width": w, "height": h});
            }
            if let Some(env) = process["env"].as_array_mut() {
                if !env
                    .iter()
                    .any(|e| e.as_str().is_some_and(|e| e.starts_with("TERM=")))
                {
                    env.push(serde_json::json!("TERM=xterm"));
                }
            }
        }
        let code = self
            .client
            .exec(
                id,
                &exec_id,
                serde_json::to_vec(&process).unwrap_or_default(),
                ExecPaths {
                    stdin: feeder.as_ref().map(|_| input.as_path()),
                    out: &out,
                    err: (!io.tty).then_some(err.as_path()),
                    terminal: io.tty,
                },
                timeout,
            )
            .await;
        if let Some(r) = resizer {
            r.abort();
        }
        let _ = done_tx.send(true);
        let _ = out_task.await;
        if let Some(t) = err_task {
            let _ = t.await;
        }
        if let Some(f) = feeder {
            f.abort();
        }
        for p in &fifos {
            let _ = std::fs::remove_file(p);
        }
        code
    }
}

/// Bytes written to the FIFO and not read yet (FIONREAD); 0 when unknown.
fn unread_bytes(fifo: &impl std::os::fd::AsRawFd) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD on an open pipe descriptor writes one c_int to `n`.
    let rc = unsafe { libc::ioctl(fifo.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc == 0 {
        n
    } else {
        0
    }
}

/// Forwards what is written to a FIFO to `tx` until `done`, then what is left.
async fn stream_fifo(
    path: PathBuf,
    mut done: tokio::sync::watch::Receiver<bool>,
    tx: tokio::sync::mpsc::Sender<(ExecStream, bytes::Bytes)>,
    which: ExecStream,
) {
    let Ok(rx) = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
    else {
        return;
    };
    let mut chunk = [0u8; 8192];
    loop {
        // Only a bool leaves the select: the watch guard must not live across an await.
        let finished = tokio::select! {
            ready = rx.readable() => {
                if ready.is_err() {
                    return;
                }
                false
            }
            _ = done.wait_for(|d| *d) => true,
        };
        loop {
            match rx.try_read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => {
                    let data = bytes::Bytes::copy_from_slice(&chunk[..n]);
                    let _ = tx.send((which, data)).await;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return,
            }
            if !finished {
                break;
            }
        }
        if finished {
            return;
        }
    }
}

/// Reads a FIFO until `done`, then drains what is left. Opened read-write so it neither
/// blocks waiting for the writer nor sees EOF before the shim has connected.
async fn collect_fifo(path: PathBuf, mut done: tokio::sync::watch::Receiver<bool>) -> Vec<u8> {
    let rx = match tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
    {
        Ok(rx) => rx,
        Err(_) => return Vec::new(),
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        tokio::select! {
            ready = rx.readable() => {
                if ready.is_err() {
                    break;
                }
                match rx.try_read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
            _ = done.wait_for(|d| *d) => {
                while let Ok(n) = rx.try_read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                break;
            }
        }
    }
    buf
}
