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
//!
//! Layout: this file holds the connection and the shared types; `images.rs` the content
//! store, image records and unpacking; `tasks.rs` containers, tasks and exec.

use std::path::Path;

use containerd_client::services::v1 as api;
use containerd_client::services::v1::snapshots as snap;
use prost_types::Any;
use tonic::transport::Channel;
use tonic::Request;

use super::error::KubeletError;
use crate::oci::{self};

mod images;
mod tasks;

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
