//! The command-line surface of `kimg` (clap derive). `main.rs` parses, then calls [`run`].

use clap::{Parser, Subcommand};

/// kimg: build bootable Kubernetes machine images that assemble themselves into a cluster.
#[derive(Debug, Parser)]
#[command(name = "kimg", version, about, long_about = None)]
pub struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the version.
    Version,
}

/// Starts `tracing` for the process: human-readable on stderr, or JSON with `--log-json`.
pub fn init_tracing(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KIMG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
        Command::Version => {
            println!("kimg {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}
