//! The command-line surface of `kimg` (clap derive). `main.rs` parses, then calls [`run`].
//! One file per command group; each turns arguments into calls on the library modules.

mod apiserver;
mod build;
mod cluster;
mod controller_manager;
mod etcd;
mod kubelet;
mod lab;
mod oci;
mod proxy;
mod scheduler;
mod sim;
mod token;
mod up;
mod vip;

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

/// kimg: bake bootable, immutable Kubernetes machine images (etcd, master, worker) that
/// assemble themselves into an HA cluster when powered on.
///
/// Typical flow: `kimg cluster new prod --vip … --etcd … --masters … --workers …`, then
/// `kimg build --profile etcd|master|worker --cluster prod`, flash or PXE-boot the images,
/// and `kimg kubeconfig prod -o admin.conf` to drive the cluster with kubectl.
#[derive(Debug, Parser)]
#[command(name = "kimg", version, about, long_about)]
pub struct Cli {
    /// Log as JSON lines instead of human-readable text (level via KIMG_LOG, e.g. debug).
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create and inspect cluster definitions: cluster.toml, PKI, CA pin.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Bake a bootable image for a profile (etcd, master, worker, stacked, all-in-one).
    Build(build::BuildArgs),
    /// List or read the files inside an initrd.img or disk.raw, without root.
    Inspect(build::InspectArgs),
    /// Manage bootstrap tokens that let workers join (kubeadm semantics).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Write an admin kubeconfig (O=system:masters) for a cluster, pointing at its VIP.
    Kubeconfig {
        /// Cluster directory (made by `kimg cluster new`).
        dir: PathBuf,
        /// API server URL; defaults to https://<api-vip>:<api-port>.
        #[arg(long)]
        server: Option<String>,
        /// Write to FILE (mode 0600) instead of standard output.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Build OCI image archives from Debian packages (air-gapped workloads).
    #[command(subcommand)]
    Oci(oci::OciCommand),
    /// Run as PID 1 of a kimg image: bring the machine up and supervise its role's services.
    #[command(hide = true)]
    Init,
    /// Run the control plane of a cluster directory here (development, tests): writes
    /// DIR/admin.conf for the listen address, prints its path, runs until SIGINT/SIGTERM.
    Up {
        /// Cluster directory (made by `kimg cluster new`).
        dir: PathBuf,
        /// Address to serve HTTPS on.
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: std::net::SocketAddr,
        /// `memory`, or `etcd=URL[,URL…]` (https URLs use the cluster's etcd client cert).
        #[arg(long, default_value = "memory")]
        store: String,
        /// Do not run the scheduler in-process (run `kimg scheduler` separately).
        #[arg(long)]
        no_scheduler: bool,
        /// Do not run the controller-manager in-process.
        #[arg(long)]
        no_controller_manager: bool,
        #[command(flatten)]
        controllers: controller_manager::ControllerArgs,
        #[command(flatten)]
        lease: scheduler::LeaseArgs,
        #[command(flatten)]
        serving: up::ServingArgs,
    },
    /// Serve the Kubernetes API of a master machine from its image config (/etc/kimg)
    /// over the cluster's etcd (kube-apiserver).
    Apiserver(apiserver::ApiserverArgs),
    /// Place pending pods on nodes (kube-scheduler), with leader election.
    Scheduler(scheduler::SchedulerArgs),
    /// Run the workload, node and cleanup controllers (kube-controller-manager), with leader
    /// election.
    ControllerManager(controller_manager::ControllerManagerArgs),
    /// Run this etcd machine's member (init starts it): with no data of its own, rejoin as
    /// a new member (remove + add) if the cluster knows it, else bootstrap; then exec etcd.
    Etcd(etcd::EtcdArgs),
    /// Hold the API virtual IP on this master while its apiserver is healthy and it wins
    /// the Lease kube-system/kimg-vip (gratuitous ARP; fenced so there is never a second
    /// holder).
    Vip(vip::VipArgs),
    /// Program this node's nftables for Services (ClusterIP, NodePort) and serve cluster
    /// DNS (kube-proxy + CoreDNS).
    Proxy(proxy::ProxyArgs),
    /// Run this machine as a node: join with a bootstrap token, register the Node, run
    /// its pods on containerd and serve logs/exec on :10250.
    Kubelet(kubelet::KubeletArgs),
    /// A whole cluster under QEMU on this host in one command: `kimg lab up --topology
    /// seeds`, then kubectl through the VIP; status, logs, stop/start a machine, down.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Simulated resources for tests and benchmarks.
    #[command(subcommand)]
    Sim(sim::SimCommand),
    /// Print a shell completion script: `source <(kimg completion bash)`.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// Starts `tracing` for the process: human-readable on stderr, or JSON with `--log-json`.
pub fn init_tracing(cli: &Cli) {
    // `kimg lab up` asks the API through the VIP while the machines boot: the client's
    // connection errors then are expected, and its progress lines say what matters.
    let default = match cli.command {
        Command::Lab(_) => "info,kube_client=off",
        _ => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KIMG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Cluster(cmd) => cluster::run(cmd),
        Command::Token(cmd) => token::run(cmd),
        Command::Build(args) => build::run(args),
        Command::Inspect(args) => build::inspect(args),
        Command::Kubeconfig {
            dir,
            server,
            output,
        } => cluster::kubeconfig(&dir, server, output),
        Command::Oci(cmd) => oci::run(cmd),
        Command::Init => crate::node::run_init(),
        Command::Up {
            dir,
            listen,
            store,
            no_scheduler,
            no_controller_manager,
            controllers,
            lease,
            serving,
        } => up::run(
            &dir,
            listen,
            &store,
            &serving,
            up::Components {
                scheduler: !no_scheduler,
                controller_manager: !no_controller_manager,
                controllers,
                lease,
            },
        ),
        Command::Apiserver(args) => apiserver::run(args),
        Command::Scheduler(args) => scheduler::run(args),
        Command::ControllerManager(args) => controller_manager::run(args),
        Command::Kubelet(args) => kubelet::run(args),
        Command::Lab(cmd) => lab::run(cmd),
        Command::Sim(cmd) => sim::run(cmd),
        Command::Proxy(args) => proxy::run(args),
        Command::Vip(args) => vip::run(args),
        Command::Etcd(args) => etcd::run(args),
        Command::Completion { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "kimg", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// The tokio runtime a long-running command runs on (`workers`: its worker threads; the
/// default is one per core).
fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        b.worker_threads(n);
    }
    b.enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A runtime on the calling thread, for commands that make a few requests and exit.
fn runtime_on_this_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
