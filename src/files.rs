//! Small file helpers every component shares: replacing a file atomically, and shifting
//! numbered backups when a log rotates.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes` (mode `mode`) so that a reader or a crash sees the old
/// file or the new one, never a part: a temp file beside it, fsync, rename, fsync of the
/// directory. The parent directory must exist.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_replacing(path, bytes, mode, true)
}

/// [`write_atomic`] without the fsyncs: readers never see a part, but a power loss may
/// lose the write. For state a reboot makes worthless anyway (tmpfs files, the kubelet's
/// pod checkpoints), written on hot paths.
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_replacing(path, bytes, mode, false)
}

fn write_replacing(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    // The mode given to open() is masked by the umask; the file gets exactly `mode`.
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    f.write_all(bytes)?;
    if durable {
        f.sync_all()?;
    }
    drop(f);
    fs::rename(&tmp, path)?;
    if durable {
        if let Ok(d) = fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// `path.N`: the N-th backup of a rotated log.
pub fn numbered(path: &Path, n: usize) -> PathBuf {
    PathBuf::from(format!("{}.{n}", path.display()))
}

/// Makes room for a new first backup of `path`, keeping `backups` of them: `.backups`
/// goes, `.n` becomes `.n+1`. The caller then moves or copies `path` to `.1`.
pub fn shift_backups(path: &Path, backups: usize) {
    // Missing backups (a young log) are fine.
    let _ = fs::remove_file(numbered(path, backups));
    for n in (1..backups).rev() {
        let _ = fs::rename(numbered(path, n), numbered(path, n + 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_atomic_write_replaces_the_file_with_exactly_the_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, "old").unwrap();
        write_atomic(&p, b"new", 0o640).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn shifting_keeps_the_newest_backups_and_drops_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        for n in 1..=3 {
            fs::write(numbered(&p, n), n.to_string()).unwrap();
        }
        shift_backups(&p, 3);
        assert!(!numbered(&p, 1).exists());
        assert_eq!(fs::read_to_string(numbered(&p, 2)).unwrap(), "1");
        assert_eq!(fs::read_to_string(numbered(&p, 3)).unwrap(), "2");
    }
}
