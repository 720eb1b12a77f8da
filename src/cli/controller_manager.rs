//! `kimg controller-manager`: runs the controllers against an apiserver (kubeconfig), under
//! leader election unless `--leader-elect=false`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::scheduler::{shutdown, LeaseArgs};
use crate::controllers::Options;

/// Controller timers and settings shared by `kimg controller-manager` and `kimg up`.
#[derive(Debug, Clone, Args)]
pub struct ControllerArgs {
    /// Pod network to carve a /24 per node from (NodeIPAM); none: no allocation.
    #[arg(long)]
    pub cluster_cidr: Option<ipnet::Ipv4Net>,
    /// A node silent for this long becomes Unknown, tainted unreachable, and its pods evicted.
    #[arg(long, default_value = "40s", value_parser = humantime::parse_duration)]
    pub node_monitor_grace_period: Duration,
    /// How often node health is checked.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub node_monitor_period: Duration,
    /// Cluster CA certificate that signs approved client CSRs (with the key file).
    #[arg(long, requires = "cluster_signing_key_file")]
    pub cluster_signing_cert_file: Option<PathBuf>,
    /// Cluster CA key.
    #[arg(long, requires = "cluster_signing_cert_file")]
    pub cluster_signing_key_file: Option<PathBuf>,
    /// CA certificate published to every namespace as the ConfigMap `kube-root-ca.crt`
    /// (what pods' service-account volumes carry as `ca.crt`); default: the signing cert.
    #[arg(long)]
    pub root_ca_file: Option<PathBuf>,
}

impl ControllerArgs {
    pub fn options(&self) -> Options {
        Options {
            cluster_cidr: self.cluster_cidr,
            node_monitor_grace_period: self.node_monitor_grace_period,
            node_monitor_period: self.node_monitor_period,
            signing: self
                .cluster_signing_cert_file
                .clone()
                .zip(self.cluster_signing_key_file.clone())
                .map(|(cert, key)| crate::controllers::csr::SigningFiles { cert, key }),
            root_ca: self.root_ca_file.clone(),
        }
    }
}

/// `kimg controller-manager` arguments.
#[derive(Debug, Args)]
pub struct ControllerManagerArgs {
    /// Kubeconfig with the controller-manager's credentials.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    #[command(flatten)]
    pub controllers: ControllerArgs,
    #[command(flatten)]
    pub lease: LeaseArgs,
}

/// Runs `kimg controller-manager` on a new runtime.
pub fn run(args: ControllerManagerArgs) -> anyhow::Result<()> {
    let rt = super::runtime(None)?;
    rt.block_on(async move {
        let client = crate::client::client_from_kubeconfig(&args.kubeconfig).await?;
        let opts = args.controllers.options();
        if args.lease.leader_elect {
            let lease = args.lease.config("kube-controller-manager");
            crate::controllers::run_with_election(client, opts, lease, shutdown()).await;
            return Ok(());
        }
        tokio::select! {
            () = crate::controllers::run(client, opts) => Ok(()),
            _ = shutdown() => Ok(()),
        }
    })
}
