//! The `kimg` multi-call binary: parse the command line, run, report the error chain once.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    if kimg::node::is_pid1_init(&std::env::args().next().unwrap_or_default()) {
        kimg::node::run_init();
    }
    let cli = kimg::cli::Cli::parse();
    kimg::cli::init_tracing(&cli);
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
