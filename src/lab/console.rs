//! Console logs: when each byte arrived, so timeline events are as exact when the runner
//! waits for VMs one after another as when it waits for just one.
//!
//! QEMU appends each VM's serial output to a file. A background thread polls the files every
//! 50 ms and notes `(length, instant)` whenever one grows; a `wait-console` match is then
//! dated by the first note that covers the match's last byte. Precision is the poll interval.
//! [`ConsoleClock::write_arrivals`] hands the notes to scripts as wall-clock milliseconds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type Notes = HashMap<PathBuf, Vec<(u64, Instant)>>;

/// Watches console files; stops its thread when dropped.
#[derive(Debug)]
pub struct ConsoleClock {
    notes: Arc<Mutex<Notes>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ConsoleClock {
    pub fn start(paths: Vec<PathBuf>) -> ConsoleClock {
        let notes: Arc<Mutex<Notes>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (notes, stop) = (notes.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let now = Instant::now();
                    for path in &paths {
                        let len = std::fs::metadata(path).map_or(0, |m| m.len());
                        let Ok(mut notes) = notes.lock() else { return };
                        let seen = notes.entry(path.clone()).or_default();
                        if seen.last().map_or(0, |&(l, _)| l) < len {
                            seen.push((len, now));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        ConsoleClock {
            notes,
            stop,
            thread: Some(thread),
        }
    }

    /// When the byte just before `end` was first seen, if the watcher has seen it yet.
    /// Writes the notes of `path` to `out`, one `LENGTH EPOCH_MS` line each: the file had
    /// grown to LENGTH bytes by that wall-clock time (what `checks/fault-timeline.sh`
    /// dates console lines by).
    pub fn write_arrivals(&self, path: &Path, out: &Path) -> std::io::Result<()> {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let wall_ms = wall
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let text: String = {
            let notes = self
                .notes
                .lock()
                .map_err(|_| std::io::Error::other("console notes poisoned"))?;
            notes
                .get(path)
                .into_iter()
                .flatten()
                .map(|&(len, at)| {
                    let ago = now.saturating_duration_since(at).as_millis();
                    format!("{len} {}\n", wall_ms.saturating_sub(ago))
                })
                .collect()
        };
        std::fs::write(out, text)
    }

    pub fn arrival(&self, path: &Path, end: u64) -> Option<Instant> {
        let notes = self.notes.lock().ok()?;
        notes
            .get(path)?
            .iter()
            .find(|&&(len, _)| len >= end)
            .map(|&(_, at)| at)
    }
}

impl Drop for ConsoleClock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The bytes of `path` from `offset` on (empty if unreadable).
pub fn read_from(path: &Path, offset: u64) -> Vec<u8> {
    std::fs::read(path)
        .map(|b| b.get(offset as usize..).unwrap_or_default().to_vec())
        .unwrap_or_default()
}

/// The last `n` lines of `text`.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last `n` lines of a log file, carriage returns removed.
pub fn tail_lines(path: &Path, n: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    last_lines(&String::from_utf8_lossy(&bytes).replace('\r', ""), n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn output_is_dated_when_it_arrived_not_when_it_was_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.console.log");
        let clock = ConsoleClock::start(vec![path.clone()]);
        let mut file = std::fs::File::create(&path).expect("create");
        file.write_all(b"boot\n").expect("write");
        std::thread::sleep(Duration::from_millis(300));
        let written = Instant::now();
        file.write_all(b"ready\n").expect("write");
        std::thread::sleep(Duration::from_millis(600));
        let first = clock.arrival(&path, 5).expect("first line seen");
        let second = clock.arrival(&path, 11).expect("second line seen");
        assert!(first < written);
        assert!(second >= written);
        assert!(
            second - written < Duration::from_millis(300),
            "dated by arrival, not now"
        );
        assert_eq!(clock.arrival(&path, 12), None);
    }

    #[test]
    fn arrivals_are_written_as_lengths_and_wall_clock_milliseconds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.console.log");
        let clock = ConsoleClock::start(vec![path.clone()]);
        let before = SystemTime::now().duration_since(UNIX_EPOCH).expect("epoch");
        std::fs::write(&path, b"boot\n").expect("write");
        std::thread::sleep(Duration::from_millis(300));
        let out = dir.path().join("a.console.arrivals");
        clock.write_arrivals(&path, &out).expect("write arrivals");
        let after = SystemTime::now().duration_since(UNIX_EPOCH).expect("epoch");
        let text = std::fs::read_to_string(&out).expect("read");
        let fields: Vec<u128> = text
            .split_whitespace()
            .map(|f| f.parse().expect("number"))
            .collect();
        assert_eq!(fields.len(), 2, "{text}");
        assert_eq!(fields[0], 5);
        // Dated when the watcher saw it (within its poll), not when the file was written out.
        assert!(fields[1] + 60 >= before.as_millis(), "{text}");
        assert!(fields[1] + 200 <= after.as_millis(), "{text}");
    }

    #[test]
    fn tails_keep_the_last_lines_without_carriage_returns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("log");
        std::fs::write(&p, "a\r\nb\r\nc\r\n").expect("write");
        assert_eq!(tail_lines(&p, 2), "b\nc");
        assert_eq!(tail_lines(&dir.path().join("none"), 2), "");
    }
}
