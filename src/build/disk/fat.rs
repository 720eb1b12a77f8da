//! The EFI System Partition: a FAT filesystem formatted and filled in memory with `fatfs`.
//!
//! Deterministic: the volume id comes from the caller (derived from the image seed), every
//! timestamp from one fixed epoch through a [`fatfs::TimeProvider`], and entries are
//! created in the [`Tree`]'s sorted order. FAT32 from 64 MiB up (what the UEFI
//! specification asks of a system partition), FAT16 below. Limits: FAT stores no modes,
//! owners or symlinks — a symlink in the tree is an error; read-back reports 0755 for
//! directories and 0644 for files. Names are stored as long file names, case preserved.

use std::collections::HashMap;
use std::io::{Cursor, Read, Write};
use std::sync::{Mutex, OnceLock};

use fatfs::{
    Date, DateTime, FatType, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider,
};
use thiserror::Error;

use crate::build::tree::{Entry, Tree};

#[derive(Debug, Error)]
pub enum FatError {
    #[error("formatting the FAT volume failed")]
    FormatFailed(#[source] std::io::Error),
    #[error("opening the FAT volume failed")]
    OpenFailed(#[source] std::io::Error),
    #[error("writing {path} into the FAT volume failed")]
    WriteFailed {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path} from the FAT volume failed")]
    ReadFailed {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("FAT cannot hold the symlink {path}")]
    SymlinkUnsupported { path: String },
}

/// A fixed clock for fatfs: always returns the same moment.
#[derive(Debug)]
struct FixedClock(DateTime);

impl TimeProvider for FixedClock {
    fn get_current_date(&self) -> Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> DateTime {
        self.0
    }
}

/// fatfs wants a `&'static` clock; keep one per distinct epoch (a handful per process).
fn clock_for(epoch: u64) -> &'static FixedClock {
    static CLOCKS: OnceLock<Mutex<HashMap<u64, &'static FixedClock>>> = OnceLock::new();
    let mut map = CLOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    map.entry(epoch)
        .or_insert_with(|| Box::leak(Box::new(FixedClock(dos_time(epoch)))))
}

/// Converts Unix seconds (UTC) to a DOS date-time, clamped to FAT's 1980–2107 range.
fn dos_time(epoch: u64) -> DateTime {
    const MIN: u64 = 315_532_800; // 1980-01-01
    const MAX: u64 = 4_354_819_199; // 2107-12-31 23:59:59
    let secs = epoch.clamp(MIN, MAX);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    DateTime {
        date: Date {
            year: year as u16,
            month: month as u16,
            day: day as u16,
        },
        time: Time {
            hour: (rem / 3600) as u16,
            min: (rem / 60 % 60) as u16,
            sec: (rem % 60) as u16,
            millis: 0,
        },
    }
}

/// Formats a FAT volume of `size` bytes labelled `label` and copies `tree` into it.
pub fn build(
    tree: &Tree,
    size: u64,
    label: &str,
    volume_id: u32,
    epoch: u64,
) -> Result<Vec<u8>, FatError> {
    let mut label_bytes = [b' '; 11];
    for (dst, src) in label_bytes.iter_mut().zip(label.bytes()) {
        *dst = src.to_ascii_uppercase();
    }
    let fat_type = if size >= 64 << 20 {
        FatType::Fat32
    } else {
        FatType::Fat16
    };
    let mut image = Cursor::new(vec![0u8; size as usize]);
    fatfs::format_volume(
        &mut image,
        FormatVolumeOptions::new()
            .fat_type(fat_type)
            .volume_id(volume_id)
            .volume_label(label_bytes),
    )
    .map_err(FatError::FormatFailed)?;
    // Directories first, then repair their dot entries, then the files (see below).
    with_fs(&mut image, epoch, |root| fill(root, tree, true))?;
    let mut image = image.into_inner();
    drop_dot_entry_lfns(&mut image);
    let mut image = Cursor::new(image);
    with_fs(&mut image, epoch, |root| fill(root, tree, false))?;
    Ok(image.into_inner())
}

fn with_fs(
    image: &mut Cursor<Vec<u8>>,
    epoch: u64,
    work: impl FnOnce(&fatfs::Dir<'_, &mut Cursor<Vec<u8>>>) -> Result<(), FatError>,
) -> Result<(), FatError> {
    image.set_position(0);
    let options = FsOptions::new()
        .update_accessed_date(false)
        .time_provider(clock_for(epoch));
    let fs = FileSystem::new(image, options).map_err(FatError::OpenFailed)?;
    work(&fs.root_dir())?;
    fs.unmount().map_err(FatError::OpenFailed)
}

/// fatfs 0.3 writes a long-name entry before each `.` and `..` entry of a new directory,
/// which pushes them out of slots 0 and 1 where the FAT specification (and `fsck.fat`)
/// expect them. Run while the volume holds only directories (no file data that could
/// look alike), this moves `.`/`..` to slots 0/1 and marks the two slots after them
/// deleted (fatfs may reuse them for the files that follow).
fn drop_dot_entry_lfns(image: &mut [u8]) {
    const E: usize = 32;
    let is_lfn_of = |e: &[u8], name: &[u8]| {
        e[0] == 0x41
            && e[11] == 0x0f
            && e[1..3] == [b'.', 0]
            && e[3..5] == if name.len() == 2 { [b'.', 0] } else { [0, 0] }
    };
    let is_sfn = |e: &[u8], name: &[u8; 11]| &e[..11] == name && e[11] & 0x10 != 0;
    // FAT32 (16-bit sectors-per-FAT is 0) keeps its root directory in a cluster.
    let root_cluster = (image[22..24] == [0, 0])
        .then(|| u32::from_le_bytes([image[44], image[45], image[46], image[47]]));
    let mut at = 0;
    while at + 4 * E <= image.len() {
        let block = &image[at..at + 4 * E];
        if is_lfn_of(&block[..E], b".")
            && is_sfn(&block[E..2 * E], b".          ")
            && is_lfn_of(&block[2 * E..3 * E], b"..")
            && is_sfn(&block[3 * E..4 * E], b"..         ")
        {
            let dot: Vec<u8> = block[E..2 * E].to_vec();
            let mut dotdot: Vec<u8> = block[3 * E..4 * E].to_vec();
            let parent = u32::from(u16::from_le_bytes([dotdot[20], dotdot[21]])) << 16
                | u32::from(u16::from_le_bytes([dotdot[26], dotdot[27]]));
            if root_cluster == Some(parent) {
                // `..` of a top-level directory points at cluster 0, even on FAT32.
                dotdot[20..22].fill(0);
                dotdot[26..28].fill(0);
            }
            image[at..at + E].copy_from_slice(&dot);
            image[at + E..at + 2 * E].copy_from_slice(&dotdot);
            image[at + 2 * E] = 0xe5; // deleted: later entries stay reachable
            image[at + 3 * E] = 0xe5;
        }
        at += 512;
    }
}

fn fill<T: fatfs::ReadWriteSeek>(
    root: &fatfs::Dir<'_, T>,
    tree: &Tree,
    dirs: bool,
) -> Result<(), FatError> {
    for (path, entry) in tree.iter() {
        if matches!(entry, Entry::Dir { .. }) != dirs {
            continue;
        }
        let failed = |source| FatError::WriteFailed {
            path: path.to_string(),
            source,
        };
        match entry {
            Entry::Dir { .. } => {
                root.create_dir(path).map_err(failed)?;
            }
            Entry::File { data, .. } => {
                let mut file = root.create_file(path).map_err(failed)?;
                file.truncate().map_err(failed)?;
                file.write_all(data).map_err(failed)?;
                file.flush().map_err(failed)?;
            }
            Entry::Symlink { .. } => {
                return Err(FatError::SymlinkUnsupported {
                    path: path.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// Reads a whole FAT volume back into a [`Tree`] (dirs 0755, files 0644).
pub fn read_tree(volume: Vec<u8>) -> Result<Tree, FatError> {
    let fs = FileSystem::new(
        Cursor::new(volume),
        FsOptions::new().update_accessed_date(false),
    )
    .map_err(FatError::OpenFailed)?;
    let mut tree = Tree::new();
    let mut pending = vec![(String::new(), fs.root_dir())];
    while let Some((prefix, dir)) = pending.pop() {
        for entry in dir.iter() {
            let entry = entry.map_err(|source| FatError::ReadFailed {
                path: prefix.clone(),
                source,
            })?;
            let name = entry.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if entry.is_dir() {
                tree.insert_dir(&path, 0o755);
                pending.push((path, entry.to_dir()));
            } else {
                let mut data = Vec::new();
                entry
                    .to_file()
                    .read_to_end(&mut data)
                    .map_err(|source| FatError::ReadFailed {
                        path: path.clone(),
                        source,
                    })?;
                tree.insert_file(&path, 0o644, data);
            }
        }
    }
    Ok(tree)
}

/// The volume label stored in the boot sector, trimmed.
pub fn volume_label(volume: Vec<u8>) -> Result<String, FatError> {
    let fs =
        FileSystem::new(Cursor::new(volume), FsOptions::new()).map_err(FatError::OpenFailed)?;
    Ok(fs.volume_label().trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Tree {
        let mut t = Tree::new();
        t.insert_file("EFI/BOOT/BOOTX64.EFI", 0o644, vec![0x4d, 0x5a, 1, 2, 3]);
        t.insert_file("loader/entries/kimg.conf", 0o644, b"title kimg\n".to_vec());
        t.insert_file("vmlinuz", 0o644, vec![7u8; 300_000]);
        t
    }

    #[test]
    fn dos_time_converts_known_dates() {
        let t = dos_time(1_700_000_000); // 2023-11-14 22:13:20 UTC
        assert_eq!((t.date.year, t.date.month, t.date.day), (2023, 11, 14));
        assert_eq!((t.time.hour, t.time.min, t.time.sec), (22, 13, 20));
        let t = dos_time(0);
        assert_eq!((t.date.year, t.date.month, t.date.day), (1980, 1, 1));
    }

    #[test]
    fn a_volume_round_trips_and_is_byte_identical() {
        let a = build(&sample(), 32 << 20, "esp", 0x1234_5678, 1_700_000_000).unwrap();
        let b = build(&sample(), 32 << 20, "esp", 0x1234_5678, 1_700_000_000).unwrap();
        assert!(a == b, "two builds differ");
        assert_eq!(volume_label(a.clone()).unwrap(), "ESP");
        assert_eq!(read_tree(a).unwrap(), sample());
    }

    #[test]
    fn large_volumes_are_fat32_and_small_ones_fat16() {
        let big = build(&sample(), 64 << 20, "ESP", 1, 0).unwrap();
        let small = build(&sample(), 16 << 20, "ESP", 1, 0).unwrap();
        let kind = |v: Vec<u8>| {
            FileSystem::new(Cursor::new(v), FsOptions::new())
                .unwrap()
                .fat_type()
        };
        assert_eq!(kind(big), FatType::Fat32);
        assert_eq!(kind(small), FatType::Fat16);
    }

    #[test]
    fn fsck_fat_finds_no_errors_in_fat16_and_fat32_volumes() {
        // External binary: fsck.fat from dosfstools.
        let dir = tempfile::tempdir().unwrap();
        let mut tree = sample();
        tree.insert_file("a/b/c/deep.txt", 0o644, b"deep".to_vec());
        for (n, file) in (0..40).map(|n| (n, format!("loader/entries/many-{n}.conf"))) {
            tree.insert_file(&file, 0o644, vec![n as u8; n * 100]);
        }
        for size in [16u64 << 20, 64 << 20] {
            let path = dir.path().join("esp.img");
            let volume = build(&tree, size, "ESP", 7, 1_700_000_000).unwrap();
            assert_eq!(read_tree(volume.clone()).unwrap(), tree);
            std::fs::write(&path, volume).unwrap();
            let out = std::process::Command::new("fsck.fat")
                .args(["-n", "-v"])
                .arg(&path)
                .output()
                .expect("fsck.fat binary");
            assert!(
                out.status.success(),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn a_symlink_cannot_go_onto_fat() {
        let mut t = sample();
        t.insert_symlink("loader/link", "x");
        let err = build(&t, 32 << 20, "ESP", 1, 0).unwrap_err();
        assert!(matches!(err, FatError::SymlinkUnsupported { ref path } if path == "loader/link"));
    }
}
