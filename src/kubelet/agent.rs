//! `kimg kubelet` as a whole: join, register, wait for a pod CIDR, run pods, serve :10250.
//!
//! How: [`run`] gets the node's client certificate ([`super::join`]), imports every OCI
//! archive (`*.tar`) of the image directory into containerd (air-gapped images), registers
//! the Node ([`super::node`]), then keeps three timers: the Lease every 10 s, the node
//! conditions every 30 s, and a certificate rotation check every minute. It waits until
//! NodeIPAM has set `spec.podCIDR`, builds the CNI bridge network on it, and runs the pod
//! sync loop ([`super::sync`]) and the kubelet API ([`super::server`]). Before that it
//! asks the API which pods still run here and removes what a previous run left of every
//! other pod (containers, network namespaces, pod directories, logs); the pods that still
//! run are adopted by their workers as the sync loop hands them over (see `pod.rs`), so a
//! kubelet restart (a crash, an upgrade) leaves running containers running.
//!
//! Limits: the pod CIDR is read once (a node whose CIDR changes needs a restart); if the
//! API cannot list this node's pods at start (5 tries), nothing is kept and the pods start
//! afresh; containerd's `k8s.io` namespace is taken to belong to the kubelet alone.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::api::{Api, ListParams};

use super::cni::CniNetwork;
use super::join::{self, ClientCell, JoinConfig};
use super::node::{self, NodeInfo};
use super::sync::PodSync;
use super::{server, Containerd, ContainerdRuntime, Kubelet, KubeletConfig, KubeletError};

/// Everything `kimg kubelet` needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub join: JoinConfig,
    pub node_ip: String,
    pub labels: Vec<(String, String)>,
    pub taints: Vec<Taint>,
    pub containerd_socket: PathBuf,
    /// Keep runc state here instead of containerd's default (tests).
    pub runc_root: Option<PathBuf>,
    pub listen_port: u16,
    pub oci_archive_dir: Option<PathBuf>,
    /// Pull images that are not present from their registries.
    pub pull: bool,
    /// Registries (`host:port`) spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    pub cni_bin_dir: PathBuf,
    pub bridge: String,
    pub cgroup_parent: String,
    /// Cluster DNS for pods with `dnsPolicy: ClusterFirst`: (server IP, cluster domain).
    pub cluster_dns: Option<(String, String)>,
}

/// Why the kubelet stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot join the cluster")]
    Join(#[from] join::JoinError),
    #[error("cannot reach containerd")]
    Containerd(#[source] KubeletError),
    #[error("cannot import image archive {path}")]
    Import {
        path: PathBuf,
        #[source]
        source: KubeletError,
    },
    #[error("cannot read image directory {path}")]
    ReadImages {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot register node {node}")]
    Register {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("node {node} has an invalid podCIDR {cidr}")]
    PodCidr { node: String, cidr: String },
    #[error("cannot serve the kubelet API")]
    Serve(#[from] server::ServeError),
}

async fn import_archives(client: &Containerd, dir: &std::path::Path) -> Result<usize, AgentError> {
    let err = |source| AgentError::ReadImages {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        // An image without baked archives: nothing to import.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        r => r.map_err(err)?,
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    paths.sort();
    for p in &paths {
        let bytes = std::fs::read(p).map_err(err)?;
        let info = client
            .import(&bytes, None)
            .await
            .map_err(|source| AgentError::Import {
                path: p.clone(),
                source,
            })?;
        tracing::info!(image = %info.name, archive = %p.display(), "imported image");
    }
    Ok(paths.len())
}

/// Removes what a previous run of the kubelet left, except what belongs to the pods in
/// `keep` (bound here and running: the sync loop adopts them, see `pod.rs`): their
/// containers (ids start with the pod uid) and tasks in containerd's `k8s.io` namespace
/// (the kubelet owns it), network namespaces (CNI DEL first, which frees their IPAM
/// leases), pod directories, logs and cgroups. With nothing to keep, the IPAM leases go
/// too — what a node reboot amounts to.
pub(super) async fn clear_previous_run(
    rt: &ContainerdRuntime,
    root: &std::path::Path,
    cgroup_parent: &str,
    keep: &HashSet<String>,
) {
    let kept = |name: &str| keep.iter().any(|uid| name.starts_with(uid.as_str()));
    for id in rt.client.container_ids().await.unwrap_or_default() {
        if kept(&id) {
            continue;
        }
        match super::runtime::force_remove(rt, &id).await {
            Ok(()) => tracing::info!(container = %id, "removed a container of a previous run"),
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "cannot remove a container of a previous run")
            }
        }
    }
    let uids: Vec<String> = std::fs::read_dir(&rt.netns_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|uid| !keep.contains(uid))
        .collect();
    for uid in &uids {
        let pod_dir = root.join("pods").join(uid);
        let ns = super::netns::PodNamespaces::new(&rt.netns_dir, &pod_dir, uid);
        let _ = rt.cni.del(uid, &ns.net).await;
        if let Err(e) = super::netns::remove(&ns) {
            tracing::warn!(pod = %uid, error = %e, "cannot remove a network namespace of a previous run");
        }
        super::remove_pod_cgroups(cgroup_parent, uid);
    }
    for dir in [root.join("pods"), root.join("logs")] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if keep.contains(e.file_name().to_string_lossy().as_ref()) {
                continue;
            }
            super::volumes::release(&e.path());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    if keep.is_empty() {
        let _ = std::fs::remove_dir_all(&rt.cni.ipam_dir);
    }
}

/// The uids of the pods bound to `node` that still run (not deleted, not finished): what a
/// restarted kubelet adopts. Empty when the API cannot say (after a few tries).
async fn pods_to_keep(cell: &ClientCell, node: &str) -> HashSet<String> {
    let params = ListParams::default().fields(&format!("spec.nodeName={node}"));
    for attempt in 1..=5 {
        let api: Api<Pod> = Api::all(cell.get());
        match api.list(&params).await {
            Ok(list) => {
                return list
                    .items
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .filter(|p| {
                        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                        !matches!(phase, Some("Succeeded" | "Failed"))
                    })
                    .filter_map(|p| p.metadata.uid)
                    .collect()
            }
            Err(e) => {
                tracing::warn!(attempt, error = %e, "cannot list this node's pods; adoption needs them");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    HashSet::new()
}

/// Whether `/` is the kernel's initramfs (`rootfs`), going by a mountinfo text: there
/// `pivot_root(2)` fails with EINVAL, so runc must not use it.
fn root_is_initramfs(mountinfo: &str) -> bool {
    mountinfo.lines().any(|l| {
        let (left, right) = l.split_once(" - ").unwrap_or((l, ""));
        left.split_whitespace().nth(4) == Some("/")
            && right.split_whitespace().next() == Some("rootfs")
    })
}

/// Polls the Node until NodeIPAM has given it a pod CIDR.
async fn wait_for_pod_cidr(cell: &ClientCell, name: &str) -> Result<ipnet::Ipv4Net, AgentError> {
    let mut logged = false;
    loop {
        let api: Api<Node> = Api::all(cell.get());
        if let Ok(n) = api.get(name).await {
            if let Some(cidr) = n.spec.and_then(|s| s.pod_cidr) {
                return cidr.parse().map_err(|_| AgentError::PodCidr {
                    node: name.into(),
                    cidr,
                });
            }
        }
        if !logged {
            tracing::info!(node = name, "waiting for a podCIDR from NodeIPAM");
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs the node agent until the process stops.
pub async fn run(cfg: AgentConfig) -> Result<(), AgentError> {
    let name = cfg.join.node_name.clone();
    let (creds, requested) = join::ensure_credentials(&cfg.join).await?;
    tracing::info!(node = %name, requested_certificate = requested, not_after = %creds.not_after, "joined");
    let cell =
        ClientCell::new(join::client_for_cert(&cfg.join.server, &cfg.join.ca_pem, &creds).await?);
    join::write_kubeconfig(&cfg.join, &creds)?;

    let mut containerd = Containerd::connect(&cfg.containerd_socket, "k8s.io")
        .await
        .map_err(AgentError::Containerd)?;
    if let Some(root) = &cfg.runc_root {
        containerd = containerd.with_runc_root(root);
    }
    if root_is_initramfs(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default()) {
        tracing::info!("the root filesystem is the initramfs: containers start without pivot_root");
        containerd = containerd.with_no_pivot_root();
    }
    if let Some(dir) = &cfg.oci_archive_dir {
        import_archives(&containerd, dir).await?;
    }

    let (cpu, memory) = node::host_capacity();
    let info = NodeInfo {
        name: name.clone(),
        internal_ip: cfg.node_ip.clone(),
        labels: cfg.labels.clone(),
        taints: cfg.taints.clone(),
        cpu,
        memory,
        pods: 110,
        kubelet_version: format!(
            "v1.{}.0-kimg-{}",
            crate::KUBE_MINOR,
            env!("CARGO_PKG_VERSION")
        ),
        runtime_version: "containerd://1.6".into(),
        kubelet_port: cfg.listen_port,
    };
    node::register(&cell.get(), &node::node_object(&info))
        .await
        .map_err(|source| AgentError::Register {
            node: name.clone(),
            source,
        })?;
    spawn_heartbeats(cell.clone(), cfg.join.clone(), creds);

    let pod_cidr = wait_for_pod_cidr(&cell, &name).await?;
    tracing::info!(node = %name, %pod_cidr, "pod network");
    let state = &cfg.join.state_dir;
    let cni = CniNetwork {
        bin_dir: cfg.cni_bin_dir.clone(),
        bridge: cfg.bridge.clone(),
        pod_cidr,
        ipam_dir: state.join("ipam"),
    };
    let root = state.join("pods-root");
    let mut rt = ContainerdRuntime::new(containerd, cni, state.join("netns"), state.join("exec"));
    let keep = pods_to_keep(&cell, &name).await;
    if !keep.is_empty() {
        tracing::info!(
            pods = keep.len(),
            "keeping the running pods of a previous run for adoption"
        );
    }
    clear_previous_run(&rt, &root, &cfg.cgroup_parent, &keep).await;
    if cfg.pull {
        rt = rt.with_puller(crate::oci::registry::Puller::new(
            cfg.insecure_registries.clone(),
        ));
    }
    let mut kcfg = KubeletConfig::new(root, &name, &cfg.node_ip);
    kcfg.cgroup_parent = cfg.cgroup_parent.clone();
    kcfg.cluster_dns = cfg.cluster_dns.clone();
    tokio::spawn(super::logs::rotate_forever(kcfg.root_dir.join("logs")));
    let kubelet = Arc::new(Kubelet::new(Arc::new(rt), kcfg));
    let sync = PodSync::new(kubelet, cell.clone(), &name);

    let serving = server::ServingCert::self_signed(&name, &cfg.node_ip)?;
    let tls = server::tls_config(&cfg.join.ca_pem, serving.clone())?;
    spawn_serving_certificate(cell.clone(), cfg.join.clone(), cfg.node_ip.clone(), serving);
    let addr = std::net::SocketAddr::new(
        cfg.node_ip
            .parse()
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
        cfg.listen_port,
    );
    let listener = server::bind(addr).await?;
    tracing::info!(%addr, "kubelet API listening");
    tokio::spawn(server::serve(listener, tls, sync.clone()));
    sync.run().await;
    Ok(())
}

/// Gets the serving certificate signed (a `kubelet-serving` CSR) and keeps it renewed,
/// swapping it into the running kubelet API.
fn spawn_serving_certificate(
    cell: ClientCell,
    join_cfg: JoinConfig,
    ip: String,
    serving: Arc<server::ServingCert>,
) {
    tokio::spawn(async move {
        let mut current = String::new();
        loop {
            let pause = match join::ensure_serving(&join_cfg, &cell.get(), &ip).await {
                Ok(c) => {
                    if c.cert_pem != current {
                        match serving.replace(&c.cert_pem, &c.key_pem) {
                            Ok(()) => {
                                tracing::info!(not_after = %c.not_after, "serving certificate signed by the cluster CA");
                                current = c.cert_pem;
                            }
                            Err(e) => tracing::warn!(error = %e, "unusable serving certificate"),
                        }
                    }
                    Duration::from_secs(60)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no signed serving certificate yet; the apiserver cannot reach logs or exec here");
                    Duration::from_secs(5)
                }
            };
            tokio::time::sleep(pause).await;
        }
    });
}

fn spawn_heartbeats(cell: ClientCell, join_cfg: JoinConfig, creds: join::Credentials) {
    let name = join_cfg.node_name.clone();
    let c = cell.clone();
    let n = name.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            if let Err(e) = node::renew_lease(&c.get(), &n).await {
                tracing::warn!(node = %n, error = %e, "cannot renew the node lease");
            }
        }
    });
    let c = cell.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tick.tick().await;
            if let Err(e) = node::report_conditions(&c.get(), &name).await {
                tracing::warn!(node = %name, error = %e, "cannot report node status");
            }
        }
    });
    tokio::spawn(async move {
        let mut creds = creds;
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            match join::rotate_if_due(&join_cfg, creds.clone(), &cell).await {
                Ok(c) => {
                    if c.cert_pem != creds.cert_pem {
                        if let Err(e) = join::write_kubeconfig(&join_cfg, &c) {
                            tracing::warn!(error = %e, "cannot write kubelet.conf");
                        }
                    }
                    creds = c;
                }
                Err(e) => tracing::warn!(error = %e, "certificate rotation failed; retrying"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_initramfs_root_is_told_from_a_disk_root_by_mountinfo() {
        let initramfs =
            "1 1 0:2 / / rw - rootfs rootfs rw,size=1000k\n22 1 0:21 / /proc rw - proc proc rw\n";
        let disk = "29 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw\n22 29 0:21 / /proc rw - proc proc rw\n";
        assert!(root_is_initramfs(initramfs));
        assert!(!root_is_initramfs(disk));
    }
}
