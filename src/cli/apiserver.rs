//! `kimg apiserver`: the apiserver of a master machine, configured from the image's
//! `/etc/kimg` (`cluster.toml`, `pki/`, `tokens.toml`) and storing in the cluster's etcd.
//!
//! It writes `admin.conf`, `scheduler.conf` and `controller-manager.conf` for
//! `https://127.0.0.1:<port>` into `--kubeconfig-dir`, so `kimg scheduler` and `kimg
//! controller-manager` on the same machine can start once it serves. Every master runs
//! one; the bootstrap objects (namespaces, RBAC defaults, `kubernetes` Service, token
//! Secrets) are created idempotently by whichever starts first.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::up::{serve, Components, Layout};
use crate::cluster::{Cluster, Role};

/// `kimg apiserver` arguments.
#[derive(Debug, Args)]
pub struct ApiserverArgs {
    /// Directory holding `cluster.toml`, `pki/` and `tokens.toml` (an image's config).
    #[arg(long, default_value = "/etc/kimg")]
    pub config_dir: PathBuf,
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "0.0.0.0:6443")]
    pub listen: SocketAddr,
    /// `memory`, or `etcd=URL[,URL…]`. Default: every etcd node of cluster.toml over TLS.
    #[arg(long)]
    pub store: Option<String>,
    /// Where the local components' kubeconfigs are written.
    #[arg(long, default_value = "/run/kimg")]
    pub kubeconfig_dir: PathBuf,
    #[command(flatten)]
    pub serving: super::up::ServingArgs,
}

/// The etcd endpoints of a cluster: `etcd=https://<ip>:2379,…`.
pub fn etcd_store_spec(cluster: &Cluster) -> String {
    let urls: Vec<String> = cluster
        .nodes_with(Role::Etcd)
        .map(|n| format!("https://{}:2379", n.ip))
        .collect();
    format!("etcd={}", urls.join(","))
}

/// Runs `kimg apiserver` until SIGINT or SIGTERM.
pub fn run(a: ApiserverArgs) -> anyhow::Result<()> {
    let cluster = Cluster::load(&a.config_dir)?;
    let tokens = crate::pki::token::load_file(&a.config_dir.join("tokens.toml"))
        .context("cannot read the bootstrap tokens")?;
    let store = a.store.unwrap_or_else(|| etcd_store_spec(&cluster));
    let layout = Layout {
        cluster,
        pki_dir: a.config_dir.join("pki"),
        tokens,
        conf_dir: a.kubeconfig_dir,
    };
    let server = format!("https://127.0.0.1:{}", a.listen.port());
    let rt = super::runtime(None)?;
    rt.block_on(serve(
        layout,
        a.listen,
        Some(server),
        &store,
        &a.serving,
        Components::none(),
    ))
}
