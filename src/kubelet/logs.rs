//! Container log rotation: a container's log never grows past [`MAX_LOG_BYTES`], and at
//! most [`MAX_LOG_FILES`] files of it are kept (the kubelet's `containerLogMaxSize` 10Mi
//! and `containerLogMaxFiles` 5).
//!
//! How: the containerd shim holds each log (`<root>/logs/<pod uid>/<container>.log`) open
//! for appending, so a rename would not redirect its writes. Every [`CHECK_EVERY`] a task
//! copies each oversized log to `<container>.log.1` (shifting older copies up to
//! `.log.4`, dropping the oldest) and then truncates the log in place; the shim's next
//! append lands at the start of the emptied file. `kubectl logs` reads the current file;
//! a follower notices the truncation and reads on from the start.
//!
//! Limits: what the container writes between the copy and the truncation (microseconds)
//! is lost, as with logrotate's `copytruncate`; `kubectl logs --previous` is not served.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The size at which a container's log is rotated.
pub const MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;
/// Files kept per container log, the current one included.
pub const MAX_LOG_FILES: usize = 5;
/// How often the logs are checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Rotates `path` if it is larger than `max_bytes`, keeping `files` files in all.
pub fn rotate_file(path: &Path, max_bytes: u64, files: usize) -> std::io::Result<bool> {
    let len = std::fs::metadata(path)?.len();
    if len <= max_bytes {
        return Ok(false);
    }
    let backups = files.saturating_sub(1);
    if backups > 0 {
        crate::files::shift_backups(path, backups);
        std::fs::copy(path, crate::files::numbered(path, 1))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)?;
    Ok(true)
}

/// Rotates every oversized `*.log` one level below `logs_root` (one directory per pod);
/// returns how many were rotated.
pub fn rotate_all(logs_root: &Path, max_bytes: u64, files: usize) -> usize {
    let mut rotated = 0;
    let Ok(pods) = std::fs::read_dir(logs_root) else {
        return 0;
    };
    for pod in pods.flatten() {
        let Ok(logs) = std::fs::read_dir(pod.path()) else {
            continue;
        };
        for log in logs.flatten() {
            let path = log.path();
            if path.extension().is_none_or(|e| e != "log") {
                continue;
            }
            match rotate_file(&path, max_bytes, files) {
                Ok(true) => rotated += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(log = %path.display(), error = %e, "cannot rotate a container log")
                }
            }
        }
    }
    rotated
}

/// Rotates the logs under `logs_root` every [`CHECK_EVERY`], forever.
pub async fn rotate_forever(logs_root: PathBuf) {
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let root = logs_root.clone();
        let _ =
            tokio::task::spawn_blocking(move || rotate_all(&root, MAX_LOG_BYTES, MAX_LOG_FILES))
                .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn an_appending_writer_keeps_writing_into_the_rotated_log_and_old_copies_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pod = dir.path().join("uid-1");
        std::fs::create_dir_all(&pod).expect("pod dir");
        let log = pod.join("main.log");
        // The shim's side: one file descriptor opened for appending, kept open.
        let mut shim = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open");
        for round in 0..6 {
            writeln!(shim, "round {round} {}", "x".repeat(40)).expect("write");
            assert_eq!(rotate_all(dir.path(), 32, 3), 1, "round {round}");
        }
        writeln!(shim, "after").expect("write");
        assert_eq!(std::fs::read_to_string(&log).expect("read"), "after\n");
        let newest = std::fs::read_to_string(crate::files::numbered(&log, 1)).expect("backup 1");
        assert!(newest.starts_with("round 5 "), "{newest}");
        let older = std::fs::read_to_string(crate::files::numbered(&log, 2)).expect("backup 2");
        assert!(older.starts_with("round 4 "), "{older}");
        assert!(!crate::files::numbered(&log, 3).exists(), "3 files in all");
        // Small logs and other files are left alone.
        std::fs::write(pod.join("notes.txt"), "x".repeat(100)).expect("write");
        assert_eq!(rotate_all(dir.path(), 32, 3), 0);
    }
}
