//! `kimg etcd`: this machine's etcd member, as init starts it on etcd machines.
//!
//! It decides how the member starts (`kimg::node::etcd::start_state`: with its data, as
//! part of a first boot, or, having lost its data, as a new member after removing its old
//! self), prints that decision, then replaces itself with etcd (exec), so init supervises
//! etcd itself. If the cluster cannot be changed (no quorum), it exits with the error and
//! init starts it again after a backoff.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use crate::cluster::{Cluster, Role};
use crate::node::etcd;

/// `kimg etcd` arguments.
#[derive(Debug, Args)]
pub struct EtcdArgs {
    /// This machine's name in the node table (an etcd node).
    #[arg(long)]
    pub node: String,
    /// Directory holding `cluster.toml` (an image's config).
    #[arg(long, default_value = "/etc/kimg")]
    pub config_dir: PathBuf,
    /// With no data of its own, how long to ask the other members whether the cluster
    /// exists before bootstrapping a new one.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub ask_for: Duration,
}

/// Decides how the member starts, then execs etcd (returns only on error).
pub fn run(a: EtcdArgs) -> anyhow::Result<()> {
    let cluster = Cluster::load(&a.config_dir)?;
    let Some(node) = cluster.node(&a.node) else {
        bail!("{}: no node named {:?}", a.config_dir.display(), a.node);
    };
    if !node.has(Role::Etcd) {
        bail!("node {} is not an etcd node", node.name);
    }
    let rt = super::runtime_on_this_thread()?;
    let (state, how) = rt
        .block_on(etcd::start_state(
            &cluster,
            node,
            Path::new(etcd::DATA_DIR),
            a.ask_for,
        ))
        .context("cannot prepare the etcd membership for this member")?;
    drop(rt);
    eprintln!("kimg etcd: {how}");
    let spec = etcd::service(&cluster, node, state);
    let err = Command::new(&spec.argv[0]).args(&spec.argv[1..]).exec();
    Err(err).with_context(|| format!("cannot run {}", spec.argv[0]))
}
