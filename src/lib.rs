//! kimg: bakes bootable, immutable Kubernetes machine images (etcd, master, worker) and
//! carries the Rust control plane and node agents that run inside them.
//!
//! Layout (one folder per component, see `docs/ARCHITECTURE.md` §1):
//! - [`cluster`]: `cluster.toml` and `profiles/*.toml` — schema, validation, node identity.
//! - [`pki`]: CA and leaf certificates, bootstrap tokens, the CA pin hash, kubeconfigs.
//! - [`build`]: Debian package source, rootfs assembly, initramfs, disks, PXE bundle.
//! - [`node`]: `kimg init` (PID 1), the supervisor, network bring-up.
//! - [`oci`]: OCI image archives built from Debian packages, and read back for import.
//! - [`kubelet`]: pods on containerd: images, CNI sandbox, OCI spec, lifecycle, probes, status.
//! - [`proxy`]: `kimg proxy` — Services in nftables, cluster DNS, the VXLAN pod overlay.
//! - [`store`]: the storage trait with its etcd and memory backends.
//! - [`https`]: the one bounded TLS accept loop the apiserver and the kubelet serve on.
//! - [`apiserver`]: the Kubernetes REST API over the store.
//! - [`scheduler`]: `kimg scheduler` — places pods on nodes.
//! - [`controllers`]: `kimg controller-manager` — workload, node and cleanup controllers.
//! - [`sim`]: `kimg sim nodes` — a simulated node fleet.
//! - [`lab`]: `kimg lab` and the QEMU scenario runner's machines — QEMU on a private network.
//! - [`client`]: what every API client shares: kube client, labels, the Lease elector, backoff.
//! - [`files`]: atomic file replacement and log backup shifting.
//! - [`cli`]: the command-line surface; `main.rs` only calls into it.

/// The Kubernetes minor version kimg speaks (1.37): the `k8s-openapi` feature it is built
/// with, what `/version` and the nodes' `kubeletVersion` report. kubectl 1.30 through 1.37
/// are tested against it (`tests/kubectl_versions.rs`).
pub const KUBE_MINOR: u32 = 37;

pub mod apiserver;
pub mod build;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod controllers;
pub mod files;
pub mod https;
pub mod kubelet;
pub mod lab;
pub mod node;
pub mod oci;
pub mod pki;
pub mod proxy;
pub mod scheduler;
pub mod sim;
pub mod store;
