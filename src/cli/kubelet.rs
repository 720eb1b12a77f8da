//! `kimg kubelet`: the node agent (see [`crate::kubelet::agent`]) from command-line flags.
//!
//! Credentials come from `--server`/`--ca-file`/`--token`, or from a bootstrap kubeconfig
//! (`--bootstrap-kubeconfig`, the kubeadm format: cluster `server` and
//! `certificate-authority-data` or `certificate-authority`, user `token`); flags win over
//! the file. The token is only needed until the node has a certificate in `--state-dir`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use clap::Args;

use super::scheduler::shutdown;
use crate::kubelet::agent::AgentConfig;
use crate::kubelet::join::JoinConfig;
use crate::sim::parse_taint;

/// `kimg kubelet` arguments.
#[derive(Debug, Args)]
pub struct KubeletArgs {
    /// Apiserver URL, e.g. https://10.0.0.1:6443 (else from --bootstrap-kubeconfig).
    #[arg(long)]
    pub server: Option<String>,
    /// Cluster CA certificate (PEM) that signed the apiserver's serving certificate and
    /// that verifies callers of the kubelet API (else from --bootstrap-kubeconfig).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Bootstrap token <id>.<secret> used to request the node's client certificate when
    /// --state-dir holds no usable one (else from --bootstrap-kubeconfig).
    #[arg(long, env = "KIMG_BOOTSTRAP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Kubeconfig with the server, CA and bootstrap token (kubeadm's bootstrap-kubelet.conf).
    #[arg(long)]
    pub bootstrap_kubeconfig: Option<PathBuf>,
    /// Directory for the node's certificate (kubelet-client.crt/.key), pod state, netns
    /// pins and IPAM leases.
    #[arg(long, default_value = "/var/lib/kimg/kubelet")]
    pub state_dir: PathBuf,
    /// Node name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The node's InternalIP: registered on the Node, where the kubelet API listens, and
    /// the pods' hostIP.
    #[arg(long)]
    pub node_ip: String,
    /// containerd's gRPC socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub containerd_socket: PathBuf,
    /// Keep runc state under this directory instead of containerd's default (for a
    /// containerd whose state dir is not /run/containerd).
    #[arg(long)]
    pub runc_root: Option<PathBuf>,
    /// Extra node labels, comma-separated key=value pairs (e.g.
    /// node-role.kubernetes.io/control-plane=).
    #[arg(long, value_delimiter = ',')]
    pub node_labels: Vec<String>,
    /// Taints the node registers with, comma-separated key[=value]:Effect (e.g.
    /// node-role.kubernetes.io/control-plane:NoSchedule).
    #[arg(long, value_delimiter = ',')]
    pub register_with_taints: Vec<String>,
    /// Port of the kubelet API (logs, exec) on --node-ip.
    #[arg(long, default_value_t = 10250)]
    pub listen_port: u16,
    /// Directory of OCI image archives (*.tar, e.g. from `kimg oci build`) imported into
    /// containerd at start: images for air-gapped nodes.
    #[arg(long)]
    pub oci_archive_dir: Option<PathBuf>,
    /// Registry (HOST:PORT) to pull from over plain HTTP instead of HTTPS, like a private
    /// registry on the LAN (repeatable, or comma-separated). Loopback always is.
    #[arg(long, value_delimiter = ',')]
    pub insecure_registry: Vec<String>,
    /// Never pull: run only images that are present (imported archives).
    #[arg(long)]
    pub no_pull: bool,
    /// Cluster DNS server for pods with dnsPolicy ClusterFirst (their resolv.conf gets it
    /// and the cluster search domains); default: the node's own resolv.conf.
    #[arg(long)]
    pub cluster_dns: Option<std::net::Ipv4Addr>,
    /// The cluster DNS domain (search domains of pods' resolv.conf).
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Directory of the CNI plugin binaries.
    #[arg(long, default_value = "/usr/lib/cni")]
    pub cni_bin_dir: PathBuf,
    /// Name of the pods' Linux bridge (at most 15 bytes).
    #[arg(long, default_value = "kimg0")]
    pub bridge: String,
    /// cgroup parent of every pod.
    #[arg(long, default_value = "/kimg")]
    pub cgroup_parent: String,
}

/// (server, CA PEM, token) from a bootstrap kubeconfig.
fn from_bootstrap_kubeconfig(
    path: &Path,
) -> anyhow::Result<(Option<String>, Option<String>, Option<String>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value = serde_yaml::from_str(&text)
        .with_context(|| format!("{} is not a kubeconfig", path.display()))?;
    let cluster = &v["clusters"][0]["cluster"];
    let server = cluster["server"].as_str().map(String::from);
    let ca = match (
        cluster["certificate-authority-data"].as_str(),
        cluster["certificate-authority"].as_str(),
    ) {
        (Some(b64), _) => Some(
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .context("certificate-authority-data is not base64")?,
            )
            .context("certificate-authority-data is not PEM")?,
        ),
        (None, Some(file)) => Some(
            std::fs::read_to_string(file).with_context(|| format!("cannot read CA file {file}"))?,
        ),
        _ => None,
    };
    let token = v["users"][0]["user"]["token"].as_str().map(String::from);
    Ok((server, ca, token))
}

/// Runs `kimg kubelet` until interrupted.
pub fn run(a: KubeletArgs) -> anyhow::Result<()> {
    let (mut server, mut ca_pem, mut token) = match &a.bootstrap_kubeconfig {
        Some(p) => from_bootstrap_kubeconfig(p)?,
        None => (None, None, None),
    };
    if let Some(s) = a.server {
        server = Some(s);
    }
    if let Some(f) = &a.ca_file {
        ca_pem = Some(
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?,
        );
    }
    if let Some(t) = a.token {
        token = Some(t);
    }
    let server = server.context("--server (or --bootstrap-kubeconfig) is required")?;
    let ca_pem = ca_pem.context("--ca-file (or --bootstrap-kubeconfig) is required")?;
    let node_name = match a.node_name {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .context("cannot read the host name")?
            .to_string_lossy()
            .to_lowercase(),
    };
    let labels = a
        .node_labels
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--node-labels entries must be key=value, not {l:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let taints = a
        .register_with_taints
        .iter()
        .filter(|t| !t.is_empty())
        .map(|t| {
            parse_taint(t).with_context(|| {
                format!("--register-with-taints entries must be key[=value]:Effect, not {t:?}")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cfg = AgentConfig {
        join: JoinConfig {
            server,
            ca_pem,
            token,
            state_dir: a.state_dir,
            node_name,
            wait: Duration::from_secs(300),
        },
        node_ip: a.node_ip,
        labels,
        taints,
        containerd_socket: a.containerd_socket,
        runc_root: a.runc_root,
        listen_port: a.listen_port,
        oci_archive_dir: a.oci_archive_dir,
        pull: !a.no_pull,
        insecure_registries: a.insecure_registry,
        cluster_dns: a
            .cluster_dns
            .map(|ip| (ip.to_string(), a.cluster_domain.clone())),
        cni_bin_dir: a.cni_bin_dir,
        bridge: a.bridge,
        cgroup_parent: a.cgroup_parent,
    };
    let rt = super::runtime(None)?;
    rt.block_on(async move {
        tokio::select! {
            r = crate::kubelet::agent::run(cfg) => r.context("the kubelet stopped"),
            _ = shutdown() => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_kubeconfigs_give_server_ca_and_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let b64 = base64::engine::general_purpose::STANDARD.encode(ca);
        let p = dir.path().join("bootstrap.conf");
        std::fs::write(
            &p,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: k\n  cluster:\n    server: https://10.0.0.1:6443\n    \
                 certificate-authority-data: {b64}\nusers:\n- name: b\n  user:\n    token: abcdef.0123456789abcdef\n"
            ),
        )
        .expect("write");
        let (server, got_ca, token) = from_bootstrap_kubeconfig(&p).expect("parse");
        assert_eq!(server.as_deref(), Some("https://10.0.0.1:6443"));
        assert_eq!(got_ca.as_deref(), Some(ca));
        assert_eq!(token.as_deref(), Some("abcdef.0123456789abcdef"));
        assert!(from_bootstrap_kubeconfig(&dir.path().join("missing")).is_err());
    }
}
