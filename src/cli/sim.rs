//! `kimg sim nodes`: a simulated node fleet (see [`crate::sim`]) against an apiserver;
//! `kimg sim webhook`: an admission webhook server (see [`crate::sim::webhook`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::scheduler::shutdown;
use crate::sim::{parse_taint, SimOptions};

/// `kimg sim …` subcommands.
#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Register N simulated nodes that heartbeat and run bound pods (kwok-style). A node
    /// whose name exists as a file in --pause-dir stops heartbeating (and goes NotReady).
    Nodes(SimNodesArgs),
    /// Serve a small admission webhook over HTTPS: `/mutate` adds the label
    /// `webhook.example.io/mutated=true`, `/validate` refuses names starting with
    /// `forbidden-` (and misbehaving paths for tests: /slow, /wrong-uid, /huge, /garbage,
    /// /bad-patch). Runs as well on a workstation as in a pod (the binary is static).
    Webhook(SimWebhookArgs),
}

/// `kimg sim webhook` arguments.
#[derive(Debug, Args)]
pub struct SimWebhookArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: std::net::SocketAddr,
    /// Serving certificate (PEM, chain first), e.g. `tls.crt` of a `kubernetes.io/tls` Secret.
    #[arg(long)]
    pub cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long)]
    pub key: PathBuf,
}

/// `kimg sim nodes` arguments.
#[derive(Debug, Args)]
pub struct SimNodesArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub count: usize,
    /// Kubeconfig to register with (admin or a node-registering identity).
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Node names are <prefix><index>.
    #[arg(long, default_value = "sim-")]
    pub prefix: String,
    /// CPU capacity per node.
    #[arg(long, default_value = "4")]
    pub cpu: String,
    /// Memory capacity per node.
    #[arg(long, default_value = "8Gi")]
    pub memory: String,
    /// Pod capacity per node.
    #[arg(long, default_value_t = 110)]
    pub pods: u32,
    /// Extra node label key=value (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Node taint key[=value]:Effect (repeatable).
    #[arg(long = "taint", value_name = "TAINT")]
    pub taints: Vec<String>,
    /// Lease renewal interval.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    /// How long pods with restartPolicy Never/OnFailure run before they succeed.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub job_duration: Duration,
    /// Directory watched for pause files named after nodes.
    #[arg(long)]
    pub pause_dir: Option<PathBuf>,
}

/// Runs a `kimg sim` command.
pub fn run(cmd: SimCommand) -> anyhow::Result<()> {
    let a = match cmd {
        SimCommand::Nodes(a) => a,
        SimCommand::Webhook(w) => return webhook(w),
    };
    let kubeconfig = a.kubeconfig.clone();
    let labels = a
        .labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--label must be KEY=VALUE, not {l:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let taints = a
        .taints
        .iter()
        .map(|t| {
            parse_taint(t).with_context(|| format!("--taint must be key[=value]:Effect, not {t:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let opts = SimOptions {
        count: a.count,
        prefix: a.prefix,
        cpu: a.cpu,
        memory: a.memory,
        pods: a.pods,
        labels,
        taints,
        heartbeat: a.heartbeat,
        job_duration: a.job_duration,
        pause_dir: a.pause_dir,
        ..SimOptions::default()
    };
    let rt = super::runtime(None)?;
    rt.block_on(async move {
        let client = crate::client::client_from_kubeconfig(&kubeconfig).await?;
        tokio::select! {
            r = crate::sim::run(client, opts) => r.context("the simulated fleet stopped"),
            _ = shutdown() => Ok(()),
        }
    })
}

/// Runs `kimg sim webhook` until SIGINT or SIGTERM.
fn webhook(a: SimWebhookArgs) -> anyhow::Result<()> {
    let read =
        |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let tls = crate::sim::webhook::tls_from_pem(&read(&a.cert)?, &read(&a.key)?)
        .with_context(|| format!("{} and {}", a.cert.display(), a.key.display()))?;
    let rt = super::runtime(None)?;
    rt.block_on(async move {
        let listener = crate::https::bind(a.listen)
            .with_context(|| format!("cannot listen on {}", a.listen))?;
        println!("webhook listening on {}", listener.local_addr()?);
        crate::sim::webhook::serve(
            listener,
            tls,
            async {
                shutdown().await;
            },
            None,
        )
        .await;
        Ok(())
    })
}
