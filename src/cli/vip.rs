//! `kimg vip`: holds the API virtual IP on this master while it wins the Lease
//! `kube-system/kimg-vip` through its own apiserver (see `kimg::node::vip` for the
//! election and the fencing). `kimg init` runs it on every master.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::node::vip::{self, Link, Timing};

/// `kimg vip` arguments.
#[derive(Debug, Args)]
pub struct VipArgs {
    /// The virtual IP to hold (the cluster's `api-vip`).
    #[arg(long)]
    pub vip: Ipv4Addr,
    /// This machine's node address: the VIP goes on the interface that carries it.
    #[arg(long, conflicts_with = "interface")]
    pub node_ip: Option<Ipv4Addr>,
    /// The interface to hold the VIP on (instead of --node-ip).
    #[arg(long, required_unless_present = "node_ip")]
    pub interface: Option<String>,
    /// Kubeconfig for the apiserver on this machine (written by `kimg apiserver`); waited
    /// for if it does not exist yet.
    #[arg(long, default_value = "/run/kimg/admin.conf")]
    pub kubeconfig: PathBuf,
    /// The name written into the Lease. Default: the host name.
    #[arg(long)]
    pub identity: Option<String>,
    /// A candidate takes over a Lease it has seen unchanged for this long.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// The holder drops the VIP when it could not renew for this long (< lease duration).
    #[arg(long, default_value = "1500ms", value_parser = humantime::parse_duration)]
    pub renew_deadline: Duration,
    /// Interval between reads and renewals.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    pub retry_period: Duration,
}

async fn wait_for_file(path: &Path) {
    let mut told = false;
    while !path.exists() {
        if !told {
            tracing::info!(path = %path.display(), "waiting for the apiserver's kubeconfig");
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs `kimg vip` until SIGTERM or SIGINT, then drops the VIP and releases the Lease.
pub fn run(args: VipArgs) -> anyhow::Result<()> {
    let timing = Timing {
        lease_duration: args.lease_duration,
        renew_deadline: args.renew_deadline,
        retry_period: args.retry_period,
    };
    timing.validate().map_err(anyhow::Error::msg)?;
    let link = match (&args.interface, args.node_ip) {
        (Some(name), _) => Link::named(name).with_context(|| format!("--interface {name}"))?,
        (None, Some(ip)) => Link::with_address(ip).with_context(|| format!("--node-ip {ip}"))?,
        (None, None) => unreachable!("clap requires --interface or --node-ip"),
    };
    let identity = match args.identity {
        Some(i) => i,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .context("cannot read the host name; pass --identity")?,
    };
    let rt = super::runtime(Some(2))?;
    rt.block_on(async move {
        let kubeconfig = args.kubeconfig;
        tokio::select! {
            () = wait_for_file(&kubeconfig) => {}
            () = super::scheduler::shutdown() => return Ok(()),
        }
        let client = crate::client::client_from_kubeconfig(&kubeconfig).await?;
        let opts = vip::Options {
            vip: args.vip,
            link,
            identity,
            timing,
        };
        vip::run(client, opts, super::scheduler::shutdown()).await;
        Ok(())
    })
}
