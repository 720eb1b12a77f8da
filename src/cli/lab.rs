//! `kimg lab …`: a whole cluster under QEMU on this host, in one command.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::lab::{self, Topology};

#[derive(Debug, Args)]
pub struct LabDir {
    /// The lab's directory: its cluster definition, images, disks, console logs and
    /// admin.conf all live here.
    #[arg(long, default_value = "lab", global = true)]
    dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Define a cluster (or use --cluster), build its images (cached), boot every machine
    /// under QEMU on a private network, and return when every machine is ready and every
    /// Node is Ready. Needs root (network namespace, taps, a host interface to the VIP).
    ///
    /// Example: `sudo kimg lab up --topology seeds --workers 2`, then
    /// `kubectl --kubeconfig lab/admin.conf get nodes`.
    Up {
        /// single: one machine with every role; stacked: 3 etcd+control-plane machines;
        /// seeds: 3 etcd + 3 control-plane machines (the seeds' layout). All behind the
        /// VIP 10.77.0.100, plus --workers workers.
        #[arg(long, value_enum, default_value = "single", conflicts_with = "cluster")]
        topology: Topology,
        /// Workers besides the control plane (default: 0 for single, 1 for stacked, 2 for
        /// seeds; at most 50).
        #[arg(long, conflicts_with = "cluster")]
        workers: Option<u32>,
        /// Boot this cluster definition instead (every node needs a MAC: NAME=IP@MAC).
        #[arg(long, value_name = "DIR")]
        cluster: Option<PathBuf>,
        /// Also give the workers this OCI image archive (repeatable; busybox is always there).
        #[arg(long = "oci-archive", value_name = "FILE")]
        oci_archives: Vec<PathBuf>,
        /// Give up (and take the lab down) if not ready within this many seconds.
        #[arg(long, default_value_t = 1200, value_name = "SECONDS")]
        timeout: u64,
        #[command(flatten)]
        dir: LabDir,
    },
    /// One row per machine: name, state (booting, identified, up, stopped), address, roles.
    Status {
        #[command(flatten)]
        dir: LabDir,
    },
    /// Print a machine's serial console (every boot); -f follows it.
    Logs {
        node: String,
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        dir: LabDir,
    },
    /// Cut a machine's power (SIGKILL to its QEMU): try a failover by hand.
    Stop {
        node: String,
        #[command(flatten)]
        dir: LabDir,
    },
    /// Power a stopped machine on again, with its disk as it was.
    Start {
        node: String,
        #[command(flatten)]
        dir: LabDir,
    },
    /// Power every machine off and remove the lab's network and disks (the cluster
    /// definition, images and console logs stay, so the next `up` starts faster).
    Down {
        #[command(flatten)]
        dir: LabDir,
    },
}

pub fn run(cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Up {
            topology,
            workers,
            cluster,
            oci_archives,
            timeout,
            dir,
        } => lab::up(&lab::UpOptions {
            dir: dir.dir,
            topology,
            workers,
            cluster,
            oci_archives,
            timeout: Duration::from_secs(timeout),
        }),
        LabCommand::Status { dir } => lab::status(&dir.dir),
        LabCommand::Logs { node, follow, dir } => lab::logs(&dir.dir, &node, follow),
        LabCommand::Stop { node, dir } => lab::stop(&dir.dir, &node),
        LabCommand::Start { node, dir } => lab::start(&dir.dir, &node),
        LabCommand::Down { dir } => lab::down(&dir.dir),
    }
}
