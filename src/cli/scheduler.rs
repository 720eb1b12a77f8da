//! `kimg scheduler`: runs the scheduler against an apiserver (kubeconfig), under leader
//! election unless `--leader-elect=false`. Also defines the leader-election flags shared
//! with `kimg controller-manager`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::client::lease::LeaseConfig;
use crate::scheduler::Options;

/// Leader-election flags (Kubernetes' names and defaults).
#[derive(Debug, Clone, Args)]
pub struct LeaseArgs {
    /// Elect a leader through a Lease in kube-system before working.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// How long a Lease holds without renewal.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub leader_elect_lease_duration: Duration,
    /// A leader that could not renew for this long steps down.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub leader_elect_renew_deadline: Duration,
    /// Interval between attempts to acquire or renew.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub leader_elect_retry_period: Duration,
}

impl LeaseArgs {
    /// The Lease configuration for a component's Lease `name`.
    pub fn config(&self, name: &str) -> LeaseConfig {
        let mut c = LeaseConfig::new(name);
        c.timing.lease_duration = self.leader_elect_lease_duration;
        c.timing.renew_deadline = self.leader_elect_renew_deadline;
        c.timing.retry_period = self.leader_elect_retry_period;
        c
    }
}

/// `kimg scheduler` arguments.
#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// Kubeconfig with the scheduler's credentials.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Only pods naming this scheduler (or none) are placed.
    #[arg(long, default_value = "default-scheduler")]
    pub scheduler_name: String,
    #[command(flatten)]
    pub lease: LeaseArgs,
}

/// Runs `kimg scheduler` on a new runtime.
pub fn run(args: SchedulerArgs) -> anyhow::Result<()> {
    let rt = super::runtime(None)?;
    rt.block_on(async move {
        let client = crate::client::client_from_kubeconfig(&args.kubeconfig).await?;
        let opts = Options {
            scheduler_name: args.scheduler_name,
            ..Options::default()
        };
        if args.lease.leader_elect {
            let lease = args.lease.config("kube-scheduler");
            return crate::scheduler::run_with_election(client, opts, lease, shutdown())
                .await
                .context("the scheduler stopped");
        }
        tokio::select! {
            r = crate::scheduler::run(client, opts) => r.context("the scheduler stopped"),
            _ = shutdown() => Ok(()),
        }
    })
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
