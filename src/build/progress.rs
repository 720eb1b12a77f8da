//! Progress for `kimg build`: one indicatif spinner per step, with the step's result and
//! duration when it ends; silent with `--quiet`.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// The build's step reporter.
pub struct Steps {
    quiet: bool,
}

/// A running step; finish it with [`Step::done`].
pub struct Step {
    bar: Option<ProgressBar>,
    name: String,
    started: Instant,
}

impl Steps {
    pub fn new(quiet: bool) -> Steps {
        Steps { quiet }
    }

    pub fn start(&self, name: &str) -> Step {
        let bar = (!self.quiet).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .expect("a valid template"),
            );
            bar.set_message(name.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Step {
            bar,
            name: name.to_string(),
            started: Instant::now(),
        }
    }

    /// A line that is not a step (warnings, the final summary).
    pub fn note(&self, line: &str) {
        if !self.quiet {
            eprintln!("{line}");
        }
    }
}

impl Step {
    pub fn done(self, result: &str) {
        let secs = self.started.elapsed().as_secs_f64();
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
            eprintln!("✓ {}: {result} [{secs:.1}s]", self.name);
        }
        tracing::debug!(step = %self.name, seconds = secs, "{result}");
    }
}
