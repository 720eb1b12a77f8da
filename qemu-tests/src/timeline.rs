//! The run's timeline: what happened when, relative to the scenario start and to the
//! power-on of the VM it concerns, printed as a table at the end of a run.
//!
//! Events are recorded by the runner (power-on, kill, console matches, link changes, task
//! starts and stops). Times are kept as `Duration`s and printed in seconds with one decimal.

use std::fmt::Write as _;
use std::time::Duration;

/// One timeline row.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub label: String,
    pub vm: Option<String>,
    /// Since the scenario's first step.
    pub at: Duration,
    /// Since the VM's latest power-on, for events about a VM that is powered on.
    pub since_power_on: Option<Duration>,
}

/// Renders events as an aligned text table.
pub fn format_table(events: &[Event]) -> String {
    let rows: Vec<[String; 4]> = events
        .iter()
        .map(|e| {
            [
                e.label.clone(),
                e.vm.clone().unwrap_or_else(|| "-".into()),
                e.since_power_on
                    .map_or_else(|| "-".into(), |d| format!("{:.1}", d.as_secs_f64())),
                format!("{:.1}", e.at.as_secs_f64()),
            ]
        })
        .collect();
    let header = ["event", "vm", "s since power-on", "s since start"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 4]| {
        // Label and vm are left-aligned text; the two time columns are right-aligned numbers.
        let _ = writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:>w2$}  {:>w3$}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
    };
    line(header);
    for row in &rows {
        line([&row[0], &row[1], &row[2], &row[3]]);
    }
    out.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_columns_and_marks_missing_times() {
        let events = vec![
            Event {
                label: "power-on".into(),
                vm: Some("etcd-1".into()),
                at: Duration::from_millis(120),
                since_power_on: Some(Duration::ZERO),
            },
            Event {
                label: "ready".into(),
                vm: Some("etcd-1".into()),
                at: Duration::from_millis(4_370),
                since_power_on: Some(Duration::from_millis(4_240)),
            },
            Event {
                label: "task writer started".into(),
                vm: None,
                at: Duration::from_secs(12),
                since_power_on: None,
            },
        ];
        let expected = "\
event                vm      s since power-on  s since start
power-on             etcd-1               0.0            0.1
ready                etcd-1               4.2            4.4
task writer started  -                      -           12.0
";
        assert_eq!(format_table(&events), expected);
    }

    #[test]
    fn an_empty_timeline_is_just_the_header() {
        assert_eq!(
            format_table(&[]),
            "event  vm  s since power-on  s since start\n"
        );
    }
}
