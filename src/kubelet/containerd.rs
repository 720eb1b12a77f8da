//! A thin typed client over containerd's gRPC API (`containerd-client`), one namespace.
//!
//! Covers what the kubelet needs: importing an OCI archive (content Write under a lease,
//! images Create, unpack by snapshots Prepare → diff Apply → Commit), reading an image's
//! config back, containers, snapshots and tasks (create, start, wait, kill, delete, exec).
//! Garbage-collection labels tie manifest → config/layers and config → the top snapshot,
//! so containerd's GC keeps an imported image whole and removes nothing still in use.
//! Task stdio goes to `file://` URIs the runc v2 shim appends to (1.6 merges stdout and
//! stderr into that one file); exec output goes to FIFOs, which keep them apart. Limits: no registry pull
//! (air-gapped import only), overlayfs snapshotter by default.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use containerd_client::services::v1 as api;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::types::{Descriptor, Mount};
use prost_types::Any;
use tonic::transport::Channel;
use tonic::Request;

use super::error::KubeletError;
use crate::oci::{self, OciArchive};

const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const PROCESS_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// What the kubelet needs to know about an image to run it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    pub name: String,
    /// The top snapshot (chain id) containers are prepared from.
    pub chain_id: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

/// How a task or exec'd process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: u32,
    /// Unix seconds.
    pub at: i64,
}

/// What a container's task is doing (a restarted kubelet asks before adopting it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    Running,
    Exited(Exit),
    /// No task (never started, deleted, or containerd lost it in a reboot).
    Missing,
}

/// A connection to containerd scoped to one namespace and snapshotter.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
    snapshotter: String,
    runc_root: Option<String>,
    no_pivot_root: bool,
}

/// The FIFOs (or files) of an exec process.
#[derive(Clone, Copy, Debug)]
pub struct ExecPaths<'a> {
    pub stdin: Option<&'a Path>,
    pub out: &'a Path,
    /// None with a terminal (its one stream is `out`).
    pub err: Option<&'a Path>,
    pub terminal: bool,
}

/// Chain ids of a layer stack from its diff ids (image-spec `ChainID`).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => oci::digest_of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

impl Containerd {
    /// Connects to the unix socket at `path`.
    pub async fn connect(path: &Path, namespace: &str) -> Result<Containerd, KubeletError> {
        let channel =
            containerd_client::connect(path)
                .await
                .map_err(|source| KubeletError::Connect {
                    path: path.to_path_buf(),
                    source: Box::new(source),
                })?;
        Ok(Containerd {
            channel,
            namespace: namespace.to_string(),
            snapshotter: "overlayfs".into(),
            runc_root: None,
            no_pivot_root: false,
        })
    }

    /// Keeps runc's container state under `root` instead of `/run/containerd/runc`
    /// (isolates test instances of containerd from each other and from the node's).
    pub fn with_runc_root(mut self, root: &Path) -> Containerd {
        self.runc_root = Some(root.display().to_string());
        self
    }

    /// Containers start without `pivot_root(2)` (runc's `--no-pivot`): needed when the
    /// machine's root is the initramfs, where pivot_root is refused.
    pub fn with_no_pivot_root(mut self) -> Containerd {
        self.no_pivot_root = true;
        self
    }

    /// The runc shim's `Options` (containerd.runc.v1): `no_pivot_root` (field 1) and
    /// `root` (field 7) when set.
    fn task_options(&self) -> Option<Any> {
        if self.runc_root.is_none() && !self.no_pivot_root {
            return None;
        }
        let mut value = Vec::new();
        if self.no_pivot_root {
            value.extend_from_slice(&[1 << 3, 1]);
        }
        if let Some(root) = &self.runc_root {
            value.push((7 << 3) | 2);
            let mut len = root.len();
            while len >= 0x80 {
                value.push((len as u8 & 0x7f) | 0x80);
                len >>= 7;
            }
            value.push(len as u8);
            value.extend_from_slice(root.as_bytes());
        }
        Some(Any {
            type_url: "containerd.runc.v1.Options".into(),
            value,
        })
    }

    fn req<T>(&self, msg: T, lease: Option<&str>) -> Request<T> {
        let mut r = Request::new(msg);
        if let Ok(v) = self.namespace.parse() {
            r.metadata_mut().insert("containerd-namespace", v);
        }
        if let Some(Ok(v)) = lease.map(str::parse) {
            r.metadata_mut().insert("containerd-lease", v);
        }
        r
    }

    fn content(&self) -> api::content_client::ContentClient<Channel> {
        api::content_client::ContentClient::new(self.channel.clone())
    }
    fn snapshots(&self) -> snap::snapshots_client::SnapshotsClient<Channel> {
        snap::snapshots_client::SnapshotsClient::new(self.channel.clone())
    }
    fn tasks(&self) -> api::tasks_client::TasksClient<Channel> {
        api::tasks_client::TasksClient::new(self.channel.clone())
    }
    fn containers(&self) -> api::containers_client::ContainersClient<Channel> {
        api::containers_client::ContainersClient::new(self.channel.clone())
    }

    async fn write_blob(
        &self,
        digest: &str,
        data: &[u8],
        labels: HashMap<String, String>,
        lease: &str,
    ) -> Result<(), KubeletError> {
        let info = self
            .content()
            .info(self.req(
                api::InfoRequest {
                    digest: digest.into(),
                },
                Some(lease),
            ))
            .await;
        if info.is_ok() {
            if !labels.is_empty() {
                let fields = labels.keys().map(|k| format!("labels.{k}")).collect();
                self.content()
                    .update(self.req(
                        api::UpdateRequest {
                            info: Some(api::Info {
                                digest: digest.into(),
                                labels,
                                ..Default::default()
                            }),
                            update_mask: Some(prost_types::FieldMask { paths: fields }),
                        },
                        Some(lease),
                    ))
                    .await
                    .map_err(KubeletError::containerd("content update"))?;
            }
            return Ok(());
        }
        let total = data.len() as i64;
        let r#ref = format!("kimg-import-{digest}");
        let msgs = vec![
            api::WriteContentRequest {
                action: api::WriteAction::Write as i32,
                r#ref: r#ref.clone(),
                total,
                expected: digest.into(),
                offset: 0,
                data: data.to_vec(),
                labels: HashMap::new(),
            },
            api::WriteContentRequest {
                action: api::WriteAction::Commit as i32,
                r#ref,
                total,
                expected: digest.into(),
                offset: total,
                data: Vec::new(),
                labels,
            },
        ];
        let mut stream = self
            .content()
            .write(self.req(futures::stream::iter(msgs), Some(lease)))
            .await
            .map_err(KubeletError::containerd("content write"))?
            .into_inner();
        while stream
            .message()
            .await
            .map_err(KubeletError::containerd("content write"))?
            .is_some()
        {}
        Ok(())
    }

    async fn read_blob(&self, digest: &str) -> Result<Vec<u8>, KubeletError> {
        let mut stream = self
            .content()
            .read(self.req(
                api::ReadContentRequest {
                    digest: digest.into(),
                    offset: 0,
                    size: 0,
                },
                None,
            ))
            .await
            .map_err(KubeletError::containerd("content read"))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(KubeletError::containerd("content read"))?
        {
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }

    /// Imports an OCI archive: blobs, the image record, and its unpacked snapshots.
    /// Importing the same archive again is a cheap no-op apart from the blob checks.
    pub async fn import(
        &self,
        archive: &[u8],
        name: Option<&str>,
    ) -> Result<ImageInfo, KubeletError> {
        let parsed = oci::read_archive(archive)?;
        self.import_image(&parsed, name).await
    }

    /// Imports an image already parsed (an archive, or a registry pull): blobs, the image
    /// record, and its unpacked snapshots.
    pub async fn import_image(
        &self,
        parsed: &OciArchive,
        name: Option<&str>,
    ) -> Result<ImageInfo, KubeletError> {
        let name = name
            .map(String::from)
            .or_else(|| parsed.name.clone())
            .ok_or_else(|| KubeletError::BadImage {
                name: "<unnamed>".into(),
                what: "name (no io.containerd.image.name annotation; pass one)".into(),
            })?;
        let lease_id = format!("kimg-import-{}", std::process::id());
        let mut leases = api::leases_client::LeasesClient::new(self.channel.clone());
        leases
            .create(self.req(
                api::CreateRequest {
                    id: lease_id.clone(),
                    labels: HashMap::from([(
                        "containerd.io/gc.expire".to_string(),
                        "2100-01-01T00:00:00Z".to_string(),
                    )]),
                },
                None,
            ))
            .await
            .or_else(|s| {
                if s.code() == tonic::Code::AlreadyExists {
                    Ok(tonic::Response::new(api::CreateResponse::default()))
                } else {
                    Err(s)
                }
            })
            .map_err(KubeletError::containerd("lease create"))?;
        let result = self.import_leased(parsed, &name, &lease_id).await;
        let _ = leases
            .delete(self.req(
                api::DeleteRequest {
                    id: lease_id,
                    sync: false,
                },
                None,
            ))
            .await;
        result
    }

    async fn import_leased(
        &self,
        a: &OciArchive,
        name: &str,
        lease: &str,
    ) -> Result<ImageInfo, KubeletError> {
        let diff_ids: Vec<String> = a.layers.iter().map(|l| l.diff_id.clone()).collect();
        let chains = chain_ids(&diff_ids);
        let top = chains
            .last()
            .cloned()
            .ok_or_else(|| KubeletError::BadImage {
                name: name.into(),
                what: "layer list (empty)".into(),
            })?;
        for l in &a.layers {
            let labels =
                HashMap::from([("containerd.io/uncompressed".to_string(), l.diff_id.clone())]);
            self.write_blob(&l.digest, &a.blobs[&l.digest], labels, lease)
                .await?;
        }
        let config_labels = HashMap::from([(
            format!("containerd.io/gc.ref.snapshot.{}", self.snapshotter),
            top.clone(),
        )]);
        self.write_blob(
            &a.config_digest,
            &a.blobs[&a.config_digest],
            config_labels,
            lease,
        )
        .await?;
        let mut manifest_labels = HashMap::from([(
            "containerd.io/gc.ref.content.config".to_string(),
            a.config_digest.clone(),
        )]);
        for (i, l) in a.layers.iter().enumerate() {
            manifest_labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                l.digest.clone(),
            );
        }
        self.write_blob(
            &a.manifest_digest,
            &a.blobs[&a.manifest_digest],
            manifest_labels,
            lease,
        )
        .await?;
        self.unpack(a, &chains, lease).await?;
        let image = api::Image {
            name: name.into(),
            labels: HashMap::new(),
            target: Some(Descriptor {
                media_type: a.manifest_media_type.clone(),
                digest: a.manifest_digest.clone(),
                size: a.blobs[&a.manifest_digest].len() as i64,
                annotations: HashMap::new(),
            }),
            created_at: None,
            updated_at: None,
        };
        let mut images = api::images_client::ImagesClient::new(self.channel.clone());
        let created = images
            .create(self.req(
                api::CreateImageRequest {
                    image: Some(image.clone()),
                    source_date_epoch: None,
                },
                Some(lease),
            ))
            .await;
        match created {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                images
                    .update(self.req(
                        api::UpdateImageRequest {
                            image: Some(image),
                            update_mask: None,
                            source_date_epoch: None,
                        },
                        Some(lease),
                    ))
                    .await
                    .map_err(KubeletError::containerd("image update"))?;
            }
            Err(s) => return Err(KubeletError::containerd("image create")(s)),
        }
        Ok(ImageInfo {
            name: name.into(),
            chain_id: top,
            entrypoint: a.entrypoint.clone(),
            cmd: a.cmd.clone(),
            env: a.env.clone(),
            working_dir: a.working_dir.clone(),
            user: a.user.clone(),
        })
    }

    async fn unpack(
        &self,
        a: &OciArchive,
        chains: &[String],
        lease: &str,
    ) -> Result<(), KubeletError> {
        let mut parent = String::new();
        for (layer, chain) in a.layers.iter().zip(chains) {
            let exists = self
                .snapshots()
                .stat(self.req(
                    snap::StatSnapshotRequest {
                        snapshotter: self.snapshotter.clone(),
                        key: chain.clone(),
                    },
                    Some(lease),
                ))
                .await
                .is_ok();
            if !exists {
                let key = format!("kimg-extract-{}-{chain}", std::process::id());
                let mounts = self
                    .snapshots()
                    .prepare(self.req(
                        snap::PrepareSnapshotRequest {
                            snapshotter: self.snapshotter.clone(),
                            key: key.clone(),
                            parent: parent.clone(),
                            labels: HashMap::new(),
                        },
                        Some(lease),
                    ))
                    .await
                    .map_err(KubeletError::containerd("snapshot prepare"))?
                    .into_inner()
                    .mounts;
                api::diff_client::DiffClient::new(self.channel.clone())
                    .apply(self.req(
                        api::ApplyRequest {
                            diff: Some(Descriptor {
                                media_type: layer.media_type.clone(),
                                digest: layer.digest.clone(),
                                size: layer.size as i64,
                                annotations: HashMap::new(),
                            }),
                            mounts,
                            payloads: HashMap::new(),
                            sync_fs: false,
                        },
                        Some(lease),
                    ))
                    .await
                    .map_err(KubeletError::containerd("diff apply"))?;
                self.snapshots()
                    .commit(self.req(
                        snap::CommitSnapshotRequest {
                            snapshotter: self.snapshotter.clone(),
                            name: chain.clone(),
                            key,
                            labels: HashMap::new(),
                        },
                        Some(lease),
                    ))
                    .await
                    .map_err(KubeletError::containerd("snapshot commit"))?;
            }
            parent = chain.clone();
        }
        Ok(())
    }

    /// Looks an image up by name and reads its config.
    pub async fn image(&self, name: &str) -> Result<ImageInfo, KubeletError> {
        let got = api::images_client::ImagesClient::new(self.channel.clone())
            .get(self.req(api::GetImageRequest { name: name.into() }, None))
            .await;
        let image = match got {
            Ok(r) => r.into_inner().image,
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => return Err(KubeletError::containerd("image get")(s)),
        }
        .ok_or_else(|| KubeletError::ImageNotFound(name.into()))?;
        let target = image
            .target
            .ok_or_else(|| KubeletError::ImageNotFound(name.into()))?;
        let bad = |what: &str| KubeletError::BadImage {
            name: name.into(),
            what: what.into(),
        };
        let manifest: serde_json::Value =
            serde_json::from_slice(&self.read_blob(&target.digest).await?)
                .map_err(|_| bad("manifest"))?;
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .ok_or_else(|| bad("manifest"))?;
        let config: serde_json::Value =
            serde_json::from_slice(&self.read_blob(config_digest).await?)
                .map_err(|_| bad("config"))?;
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let chain_id = chain_ids(&strings(&config["rootfs"]["diff_ids"]))
            .pop()
            .ok_or_else(|| bad("rootfs"))?;
        let c = &config["config"];
        Ok(ImageInfo {
            name: name.into(),
            chain_id,
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
            env: strings(&c["Env"]),
            working_dir: c["WorkingDir"].as_str().unwrap_or_default().into(),
            user: c["User"].as_str().unwrap_or_default().into(),
        })
    }

    /// Creates the container record and its writable snapshot on top of the image.
    ///
    /// The record comes first: it names the snapshot, which makes the snapshot a root for
    /// containerd's garbage collector from the moment it exists. Prepared first, a fresh
    /// snapshot is unreferenced until the record is written, and a collection triggered by
    /// any deletion in between removes it ("snapshot … does not exist" at task start).
    pub async fn create_container(
        &self,
        id: &str,
        image: &ImageInfo,
        spec_json: Vec<u8>,
        labels: HashMap<String, String>,
    ) -> Result<(), KubeletError> {
        let container = api::Container {
            id: id.into(),
            labels,
            image: image.name.clone(),
            runtime: Some(api::container::Runtime {
                name: "io.containerd.runc.v2".into(),
                options: None,
            }),
            spec: Some(Any {
                type_url: SPEC_TYPE.into(),
                value: spec_json,
            }),
            snapshotter: self.snapshotter.clone(),
            snapshot_key: id.into(),
            created_at: None,
            updated_at: None,
            extensions: HashMap::new(),
            sandbox: String::new(),
        };
        self.containers()
            .create(self.req(
                api::CreateContainerRequest {
                    container: Some(container),
                },
                None,
            ))
            .await
            .map_err(KubeletError::containerd("container create"))?;
        let prepared = self
            .snapshots()
            .prepare(self.req(
                snap::PrepareSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: id.into(),
                    parent: image.chain_id.clone(),
                    labels: HashMap::new(),
                },
                None,
            ))
            .await;
        match prepared {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(s) => {
                // No half-made container: the record goes again.
                let _ = self.delete_container(id).await;
                Err(KubeletError::containerd("snapshot prepare")(s))
            }
        }
    }

    /// Creates and starts the container's task, its stdout and stderr appended to `log`.
    pub async fn start_task(&self, id: &str, log: &Path) -> Result<u32, KubeletError> {
        let mounts: Vec<Mount> = self
            .snapshots()
            .mounts(self.req(
                snap::MountsRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: id.into(),
                },
                None,
            ))
            .await
            .map_err(KubeletError::containerd("snapshot mounts"))?
            .into_inner()
            .mounts;
        // The log exists before the task does, so `kubectl logs -f` issued as soon as the
        // container counts as running never races the shim's own (asynchronous) open.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(KubeletError::io(log))?;
        let uri = format!("file://{}", log.display());
        self.tasks()
            .create(self.req(
                api::CreateTaskRequest {
                    container_id: id.into(),
                    rootfs: mounts,
                    stdin: String::new(),
                    stdout: uri.clone(),
                    stderr: uri,
                    terminal: false,
                    checkpoint: None,
                    options: self.task_options(),
                    runtime_path: String::new(),
                },
                None,
            ))
            .await
            .map_err(KubeletError::containerd("task create"))?;
        let started = self
            .tasks()
            .start(self.req(
                api::StartRequest {
                    container_id: id.into(),
                    exec_id: String::new(),
                },
                None,
            ))
            .await
            .map_err(KubeletError::containerd("task start"))?;
        Ok(started.into_inner().pid)
    }

    /// Waits for the task (or one exec'd process) to exit.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<Exit, KubeletError> {
        let r = self
            .tasks()
            .wait(self.req(
                api::WaitRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                },
                None,
            ))
            .await
            .map_err(KubeletError::containerd("task wait"))?
            .into_inner();
        Ok(Exit {
            code: r.exit_status,
            at: r.exited_at.map(|t| t.seconds).unwrap_or_default(),
        })
    }

    /// The task's state: running (created, paused), stopped with its exit, or no task.
    pub async fn task_state(&self, id: &str) -> Result<TaskState, KubeletError> {
        let got = self
            .tasks()
            .get(self.req(
                api::GetRequest {
                    container_id: id.into(),
                    exec_id: String::new(),
                },
                None,
            ))
            .await;
        let process = match got {
            Ok(r) => r.into_inner().process,
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => return Err(KubeletError::containerd("task get")(s)),
        };
        use containerd_client::types::v1::Status;
        Ok(match process.map(|p| (Status::try_from(p.status), p)) {
            Some((Ok(Status::Running | Status::Created | Status::Paused | Status::Pausing), _)) => {
                TaskState::Running
            }
            Some((Ok(Status::Stopped), p)) => TaskState::Exited(Exit {
                code: p.exit_status,
                at: p.exited_at.map(|t| t.seconds).unwrap_or_default(),
            }),
            _ => TaskState::Missing,
        })
    }

    /// Sends `signal` to the task's init process (and, with `all`, every process).
    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), KubeletError> {
        self.tasks()
            .kill(self.req(
                api::KillRequest {
                    container_id: id.into(),
                    exec_id: String::new(),
                    signal,
                    all,
                },
                None,
            ))
            .await
            .map_err(KubeletError::containerd("task kill"))?;
        Ok(())
    }

    /// Deletes the task; a missing task is not an error.
    pub async fn delete_task(&self, id: &str) -> Result<(), KubeletError> {
        match self
            .tasks()
            .delete(self.req(
                api::DeleteTaskRequest {
                    container_id: id.into(),
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(KubeletError::containerd("task delete")(s)),
        }
    }

    /// Deletes the container record and its snapshot; missing ones are not an error.
    pub async fn delete_container(&self, id: &str) -> Result<(), KubeletError> {
        match self
            .containers()
            .delete(self.req(api::DeleteContainerRequest { id: id.into() }, None))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(KubeletError::containerd("container delete")(s)),
        }
        match self
            .snapshots()
            .remove(self.req(
                snap::RemoveSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: id.into(),
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(KubeletError::containerd("snapshot remove")(s)),
        }
    }

    /// Runs `process_json` (an OCI `Process`) in the container, input from the `stdin`
    /// FIFO when given, output to `out`/`err`, and returns its exit code. Kills it after
    /// `timeout`.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: Vec<u8>,
        io: ExecPaths<'_>,
        timeout: Duration,
    ) -> Result<u32, KubeletError> {
        let ExecPaths {
            stdin,
            out,
            err,
            terminal,
        } = io;
        self.tasks()
            .exec(self.req(
                api::ExecProcessRequest {
                    container_id: id.into(),
                    stdin: stdin.map(|p| p.display().to_string()).unwrap_or_default(),
                    stdout: out.display().to_string(),
                    stderr: err.map(|p| p.display().to_string()).unwrap_or_default(),
                    terminal,
                    spec: Some(Any {
                        type_url: PROCESS_TYPE.into(),
                        value: process_json,
                    }),
                    exec_id: exec_id.into(),
                },
                None,
            ))
            .await
            .map_err(KubeletError::containerd("task exec"))?;
        let waiter = self.wait(id, exec_id);
        let start_req = self.req(
            api::StartRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
            },
            None,
        );
        let result = async {
            self.tasks()
                .start(start_req)
                .await
                .map_err(KubeletError::containerd("exec start"))?;
            match tokio::time::timeout(timeout, waiter).await {
                Ok(exit) => exit.map(|e| e.code),
                Err(_) => {
                    let _ = self
                        .tasks()
                        .kill(self.req(
                            api::KillRequest {
                                container_id: id.into(),
                                exec_id: exec_id.into(),
                                signal: 9,
                                all: false,
                            },
                            None,
                        ))
                        .await;
                    Err(KubeletError::ExecTimeout(timeout))
                }
            }
        }
        .await;
        let _ = self
            .tasks()
            .delete_process(self.req(
                api::DeleteProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                },
                None,
            ))
            .await;
        result
    }

    /// Sets the terminal size of exec process `exec_id` (columns, rows).
    pub async fn resize_pty(
        &self,
        id: &str,
        exec_id: &str,
        width: u16,
        height: u16,
    ) -> Result<(), KubeletError> {
        self.tasks()
            .resize_pty(self.req(
                api::ResizePtyRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    width: width.into(),
                    height: height.into(),
                },
                None,
            ))
            .await
            .map_err(KubeletError::containerd("resize pty"))?;
        Ok(())
    }

    /// Closes the stdin of exec process `exec_id` (the shim holds its FIFO open, so only
    /// this makes the process see EOF).
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), KubeletError> {
        self.tasks()
            .close_io(self.req(
                api::CloseIoRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    stdin: true,
                },
                None,
            ))
            .await
            .map_err(KubeletError::containerd("close io"))?;
        Ok(())
    }

    /// Ids of every container in the namespace (for leak checks and cleanup).
    pub async fn container_ids(&self) -> Result<Vec<String>, KubeletError> {
        Ok(self
            .containers()
            .list(self.req(api::ListContainersRequest { filters: vec![] }, None))
            .await
            .map_err(KubeletError::containerd("container list"))?
            .into_inner()
            .containers
            .into_iter()
            .map(|c| c.id)
            .collect())
    }

    /// Ids of every task in the namespace.
    pub async fn task_ids(&self) -> Result<Vec<String>, KubeletError> {
        Ok(self
            .tasks()
            .list(self.req(
                api::ListTasksRequest {
                    filter: String::new(),
                },
                None,
            ))
            .await
            .map_err(KubeletError::containerd("task list"))?
            .into_inner()
            .tasks
            .into_iter()
            .map(|t| t.id)
            .collect())
    }

    /// Keys of every snapshot in the namespace's snapshotter.
    pub async fn snapshot_keys(&self) -> Result<Vec<String>, KubeletError> {
        let mut stream = self
            .snapshots()
            .list(self.req(
                snap::ListSnapshotsRequest {
                    snapshotter: self.snapshotter.clone(),
                    filters: vec![],
                },
                None,
            ))
            .await
            .map_err(KubeletError::containerd("snapshot list"))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(m) = stream
            .message()
            .await
            .map_err(KubeletError::containerd("snapshot list"))?
        {
            out.extend(m.info.into_iter().map(|i| i.name));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_chain_id_is_the_diff_id_and_later_ones_hash_the_pair() {
        let d = vec!["sha256:aa".to_string(), "sha256:bb".to_string()];
        let c = chain_ids(&d);
        assert_eq!(c[0], "sha256:aa");
        assert_eq!(c[1], oci::digest_of(b"sha256:aa sha256:bb"));
    }
}
