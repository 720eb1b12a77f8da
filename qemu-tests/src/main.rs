//! `qemu-run SCENARIO [--keep] [--timeout-scale F]`: run one QEMU cluster scenario.
//!
//! SCENARIO is a name under `qemu-tests/scenarios/` or a path to a `.toml` file. Exit codes:
//! 0 every step held, 1 a step failed, 2 the scenario or the setup was broken, 130 interrupted.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use kimg_qemu_tests::{process, runner, scenario};

#[derive(Debug, Parser)]
#[command(version, about = "Run a kimg QEMU cluster scenario")]
struct Cli {
    /// Scenario name (qemu-tests/scenarios/NAME.toml) or path to a .toml file.
    scenario: String,
    /// Keep the scratch directory (console logs, disks, task output).
    #[arg(long)]
    keep: bool,
    /// Multiply every timeout by this factor (slow CI machines).
    #[arg(long, default_value_t = 1.0)]
    timeout_scale: f64,
    /// Repository root; defaults to the one this binary was built from.
    #[arg(long)]
    repo: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(if process::interrupted() { 130 } else { 2 })
        }
    }
}

fn run(cli: Cli) -> Result<bool> {
    if !(cli.timeout_scale.is_finite() && cli.timeout_scale > 0.0) {
        bail!("--timeout-scale must be a positive number");
    }
    process::install_interrupt_handler().context("cannot install the signal handler")?;
    let repo = match cli.repo {
        Some(repo) => repo,
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(PathBuf::from)
            .context("the crate has no parent directory")?,
    };
    let path = if cli.scenario.ends_with(".toml") {
        PathBuf::from(&cli.scenario)
    } else {
        repo.join("qemu-tests/scenarios")
            .join(format!("{}.toml", cli.scenario))
    };
    let scenario = scenario::load(&path)?;
    if !scenario.description.is_empty() {
        println!("{}: {}", path.display(), scenario.description);
    }
    let opts = runner::Options {
        keep: cli.keep,
        timeout_scale: cli.timeout_scale,
        repo,
        scenario_path: path,
    };
    let report = runner::run(&scenario, &opts)?;
    let passed = runner::print_report(&report);
    if cli.keep {
        println!("kept scratch directory {}", report.work.display());
    }
    if process::interrupted() {
        bail!("interrupted");
    }
    Ok(passed)
}
