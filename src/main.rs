//! The `kimg` multi-call binary: parse the command line, run, report the error chain once.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    if kimg::node::is_pid1_init(&std::env::args().next().unwrap_or_default()) {
        kimg::node::run_init();
    }
    let cli = kimg::cli::Cli::parse();
    kimg::cli::init_tracing(&cli);
    // Servers hold a socket per client: take the hard limit, as Go programs do.
    if let Err(e) = kimg::https::raise_fd_limit() {
        tracing::warn!(error = %e, "cannot raise the open-file limit");
    }
    match kimg::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(1)
        }
    }
}
