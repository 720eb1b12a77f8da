//! `kimg inspect IMAGE [PATH]`: list or read the files inside a built image, without root
//! or mounts.
//!
//! The image kind is detected from its first bytes: a GPT signature at LBA 1 means a disk
//! (`disk.raw`), a gzip/xz/zstd/cpio magic means an initramfs (`initrd.img`). Initramfs
//! paths are plain (`etc/kimg/ca.crt`); disk paths name the partition first, by its GPT
//! name in lower case: `esp:/loader/entries/kimg.conf`, `state:/kimg/cluster.toml`. FAT
//! is read with `fatfs` (the ESP is loaded into memory), ext4 with `ext4-view` straight
//! from the image file. Limits: qcow2 is not read (inspect the `disk.raw` next to it);
//! FAT reports fixed modes (dirs 0755, files 0644).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::cpio::{self, Codec, CpioError};
use super::disk::{ext4, fat, gpt};
use super::tree::{normalize, Entry, Tree};

/// What kind of entry a [`Listing`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// A device node, fifo or socket (ext4 only).
    Special,
}

/// One line of `kimg inspect IMAGE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    /// `etc/kimg/ca.crt` for an initramfs, `esp:/EFI/BOOT/BOOTX64.EFI` for a disk.
    pub path: String,
    pub kind: Kind,
    /// Permission bits.
    pub mode: u32,
    /// File size, or the target length of a symlink; 0 for directories.
    pub size: u64,
}

/// The detected image kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    Initrd(Codec),
    Disk,
}

#[derive(Debug, Error)]
pub enum InspectError {
    #[error("cannot read {path}")]
    OpenFailed {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is neither a GPT disk image nor an initramfs (gzip, xz, zstd or cpio)")]
    NotAnImage { path: PathBuf },
    #[error("reading the initramfs failed")]
    InitrdFailed(#[from] CpioError),
    #[error("reading the partition table failed")]
    PartitionTableFailed(#[from] gpt::GptError),
    #[error("reading the FAT partition failed")]
    FatFailed(#[from] fat::FatError),
    #[error("reading the ext4 partition failed")]
    Ext4Failed(#[from] ext4::Ext4Error),
    #[error("no such path in the image: {path}")]
    NoSuchPath { path: String },
    #[error("{path} is a directory, not a file")]
    IsADirectory { path: String },
    #[error("{path} is a symlink to {target}")]
    IsASymlink { path: String, target: String },
    #[error("{path} is not a regular file")]
    NotAFile { path: String },
    #[error("unknown partition {prefix:?} in {path}; this disk has: {known}")]
    UnknownPartition {
        prefix: String,
        path: String,
        known: String,
    },
    #[error("disk paths start with a partition, e.g. esp:/loader/loader.conf or state:/kimg/cluster.toml (got {path})")]
    MissingPartitionPrefix { path: String },
    #[error("partition {name} has an unsupported filesystem type {type_guid}")]
    UnsupportedPartition { name: String, type_guid: String },
}

fn open(image: &Path) -> Result<File, InspectError> {
    File::open(image).map_err(|source| InspectError::OpenFailed {
        path: image.to_path_buf(),
        source,
    })
}

/// Detects whether `image` is a disk or an initramfs.
pub fn detect(image: &Path) -> Result<ImageKind, InspectError> {
    let mut file = open(image)?;
    if gpt::has_signature(&mut file) {
        return Ok(ImageKind::Disk);
    }
    let mut head = [0u8; 8];
    let n = file
        .read_at(&mut head, 0)
        .map_err(|source| InspectError::OpenFailed {
            path: image.to_path_buf(),
            source,
        })?;
    cpio::detect_codec(&head[..n])
        .map(ImageKind::Initrd)
        .ok_or_else(|| InspectError::NotAnImage {
            path: image.to_path_buf(),
        })
}

/// Lists every entry of `image`, sorted by path (disk: ESP first, then STATE).
pub fn list(image: &Path) -> Result<Vec<Listing>, InspectError> {
    match detect(image)? {
        ImageKind::Initrd(_) => Ok(tree_listing("", &load_initrd(image)?)),
        ImageKind::Disk => {
            let mut file = open(image)?;
            let (_, parts) = gpt::read(&mut file)?;
            let mut out = Vec::new();
            for part in &parts {
                let prefix = format!("{}:/", part.name.to_lowercase());
                match open_partition(image, part)? {
                    Partition::Fat(tree) => out.extend(tree_listing(&prefix, &tree)),
                    Partition::Ext4(fs) => {
                        for (path, meta) in ext4::walk(&fs)? {
                            let kind = if meta.is_dir() {
                                Kind::Dir
                            } else if meta.is_symlink() {
                                Kind::Symlink
                            } else if meta.file_type().is_regular_file() {
                                Kind::File
                            } else {
                                Kind::Special
                            };
                            out.push(Listing {
                                path: format!("{prefix}{path}"),
                                kind,
                                mode: u32::from(meta.mode()),
                                size: if kind == Kind::Dir { 0 } else { meta.len() },
                            });
                        }
                    }
                }
            }
            Ok(out)
        }
    }
}

/// Returns the contents of one file of `image`.
pub fn read(image: &Path, path: &str) -> Result<Vec<u8>, InspectError> {
    match detect(image)? {
        ImageKind::Initrd(_) => file_in_tree(&load_initrd(image)?, path, path),
        ImageKind::Disk => {
            let (prefix, inner) = path
                .split_once(':')
                .ok_or_else(|| InspectError::MissingPartitionPrefix { path: path.into() })?;
            let mut file = open(image)?;
            let (_, parts) = gpt::read(&mut file)?;
            let part = parts
                .iter()
                .find(|p| p.name.eq_ignore_ascii_case(prefix))
                .ok_or_else(|| InspectError::UnknownPartition {
                    prefix: prefix.into(),
                    path: path.into(),
                    known: parts
                        .iter()
                        .map(|p| format!("{}:", p.name.to_lowercase()))
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            match open_partition(image, part)? {
                Partition::Fat(tree) => file_in_tree(&tree, inner, path),
                Partition::Ext4(fs) => {
                    let abs = format!("/{}", normalize(inner));
                    let meta = match fs.symlink_metadata(abs.as_str()) {
                        Ok(meta) => meta,
                        Err(ext4_view::Ext4Error::NotFound) => {
                            return Err(InspectError::NoSuchPath { path: path.into() })
                        }
                        Err(e) => return Err(ext4::Ext4Error::ReadFailed(e).into()),
                    };
                    if meta.is_dir() {
                        Err(InspectError::IsADirectory { path: path.into() })
                    } else if meta.is_symlink() {
                        Err(InspectError::IsASymlink {
                            path: path.into(),
                            target: ext4::read_link(&fs, &abs)?,
                        })
                    } else if !meta.file_type().is_regular_file() {
                        Err(InspectError::NotAFile { path: path.into() })
                    } else {
                        Ok(fs.read(abs.as_str()).map_err(ext4::Ext4Error::ReadFailed)?)
                    }
                }
            }
        }
    }
}

fn load_initrd(image: &Path) -> Result<Tree, InspectError> {
    let mut data = Vec::new();
    open(image)?
        .read_to_end(&mut data)
        .map_err(|source| InspectError::OpenFailed {
            path: image.to_path_buf(),
            source,
        })?;
    Ok(cpio::read_initrd(&data)?)
}

enum Partition {
    Fat(Tree),
    Ext4(ext4_view::Ext4),
}

fn open_partition(image: &Path, part: &gpt::GptPartition) -> Result<Partition, InspectError> {
    let file = open(image)?;
    let read_failed = |source| InspectError::OpenFailed {
        path: image.to_path_buf(),
        source,
    };
    if part.type_guid == gpt::ESP_TYPE {
        let mut volume = vec![0u8; part.size() as usize];
        file.read_exact_at(&mut volume, part.offset())
            .map_err(read_failed)?;
        Ok(Partition::Fat(fat::read_tree(volume)?))
    } else if part.type_guid == gpt::LINUX_FS_TYPE {
        Ok(Partition::Ext4(ext4::open(file, part.offset())?))
    } else {
        Err(InspectError::UnsupportedPartition {
            name: part.name.clone(),
            type_guid: part.type_guid.to_string(),
        })
    }
}

fn tree_listing(prefix: &str, tree: &Tree) -> Vec<Listing> {
    tree.iter()
        .map(|(path, entry)| {
            let (kind, mode, size) = match entry {
                Entry::File { mode, data } => (Kind::File, *mode, data.len() as u64),
                Entry::Dir { mode } => (Kind::Dir, *mode, 0),
                Entry::Symlink { target } => (Kind::Symlink, 0o777, target.len() as u64),
            };
            Listing {
                path: format!("{prefix}{path}"),
                kind,
                mode,
                size,
            }
        })
        .collect()
}

fn file_in_tree(tree: &Tree, inner: &str, shown: &str) -> Result<Vec<u8>, InspectError> {
    match tree.get(inner) {
        Some(Entry::File { data, .. }) => Ok(data.as_ref().clone()),
        Some(Entry::Dir { .. }) => Err(InspectError::IsADirectory { path: shown.into() }),
        Some(Entry::Symlink { target }) => Err(InspectError::IsASymlink {
            path: shown.into(),
            target: target.clone(),
        }),
        None => Err(InspectError::NoSuchPath { path: shown.into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::disk::{systemd_boot_esp, write_disk, DiskSpec};

    fn initrd(dir: &Path, codec: Codec) -> PathBuf {
        let mut t = Tree::new();
        t.insert_file("etc/kimg/ca.crt", 0o644, b"CA PEM".to_vec());
        t.insert_file("init", 0o755, b"#!/bin/sh\n".to_vec());
        t.insert_symlink("bin/sh", "busybox");
        let path = dir.join("initrd.img");
        std::fs::write(&path, cpio::write_initrd(&t, 0, codec).unwrap()).unwrap();
        path
    }

    fn disk(dir: &Path) -> PathBuf {
        let mut state = Tree::new();
        state.insert_file("kimg/cluster.toml", 0o600, b"name = \"lab\"\n".to_vec());
        state.insert_symlink("kimg/link", "cluster.toml");
        let spec = DiskSpec {
            esp: systemd_boot_esp(
                vec![1, 2, 3],
                vec![4; 10],
                vec![5; 20],
                "console=ttyS0",
                "t",
            ),
            state,
            esp_size_mib: 16,
            state_size_mib: 16,
            seed: "inspect".into(),
            epoch: 0,
        };
        let path = dir.join("disk.raw");
        write_disk(&spec, &path).unwrap();
        path
    }

    #[test]
    fn an_initrd_is_detected_listed_and_read_for_every_codec() {
        let dir = tempfile::tempdir().unwrap();
        for codec in [Codec::Zstd, Codec::Xz, Codec::Gzip, Codec::None] {
            let img = initrd(dir.path(), codec);
            assert_eq!(detect(&img).unwrap(), ImageKind::Initrd(codec));
            let listing = list(&img).unwrap();
            let ca = listing
                .iter()
                .find(|l| l.path == "etc/kimg/ca.crt")
                .unwrap();
            assert_eq!((ca.kind, ca.mode, ca.size), (Kind::File, 0o644, 6));
            assert_eq!(read(&img, "etc/kimg/ca.crt").unwrap(), b"CA PEM");
            assert_eq!(read(&img, "/etc/kimg/ca.crt").unwrap(), b"CA PEM");
        }
    }

    #[test]
    fn a_missing_initrd_path_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let img = initrd(dir.path(), Codec::Zstd);
        let err = read(&img, "etc/nope").unwrap_err();
        assert_eq!(err.to_string(), "no such path in the image: etc/nope");
        assert!(matches!(
            read(&img, "bin/sh"),
            Err(InspectError::IsASymlink { .. })
        ));
        assert!(matches!(
            read(&img, "etc"),
            Err(InspectError::IsADirectory { .. })
        ));
    }

    #[test]
    fn a_disk_lists_both_partitions_with_prefixes_with_e2fsprogs() {
        let dir = tempfile::tempdir().unwrap();
        let img = disk(dir.path());
        assert_eq!(detect(&img).unwrap(), ImageKind::Disk);
        let listing = list(&img).unwrap();
        let paths: Vec<&str> = listing.iter().map(|l| l.path.as_str()).collect();
        assert!(
            paths.contains(&"esp:/loader/entries/kimg.conf"),
            "{paths:?}"
        );
        assert!(paths.contains(&"esp:/EFI/BOOT/BOOTX64.EFI"), "{paths:?}");
        assert!(paths.contains(&"state:/lost+found"), "{paths:?}");
        let toml = listing
            .iter()
            .find(|l| l.path == "state:/kimg/cluster.toml")
            .unwrap();
        assert_eq!((toml.kind, toml.mode, toml.size), (Kind::File, 0o600, 13));
        let link = listing
            .iter()
            .find(|l| l.path == "state:/kimg/link")
            .unwrap();
        assert_eq!(link.kind, Kind::Symlink);
    }

    #[test]
    fn disk_files_are_read_from_either_partition_with_e2fsprogs() {
        let dir = tempfile::tempdir().unwrap();
        let img = disk(dir.path());
        let entry = read(&img, "esp:/loader/entries/kimg.conf").unwrap();
        assert!(String::from_utf8_lossy(&entry).contains("options console=ttyS0"));
        assert_eq!(
            read(&img, "state:/kimg/cluster.toml").unwrap(),
            b"name = \"lab\"\n"
        );
        assert_eq!(
            read(&img, "STATE:kimg/cluster.toml").unwrap(),
            b"name = \"lab\"\n"
        );
    }

    #[test]
    fn disk_path_errors_name_the_problem_with_e2fsprogs() {
        let dir = tempfile::tempdir().unwrap();
        let img = disk(dir.path());
        let err = read(&img, "boot:/x").unwrap_err();
        assert!(
            err.to_string().contains("unknown partition \"boot\""),
            "{err}"
        );
        assert!(err.to_string().contains("esp:, state:"), "{err}");
        let err = read(&img, "state:/kimg/missing.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no such path in the image: state:/kimg/missing.toml"
        );
        let err = read(&img, "esp:/nope").unwrap_err();
        assert_eq!(err.to_string(), "no such path in the image: esp:/nope");
        assert!(matches!(
            read(&img, "kimg/cluster.toml"),
            Err(InspectError::MissingPartitionPrefix { .. })
        ));
        assert!(matches!(
            read(&img, "state:/kimg"),
            Err(InspectError::IsADirectory { .. })
        ));
    }

    #[test]
    fn a_random_file_is_not_an_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        std::fs::write(&path, b"just some text, not an image").unwrap();
        let err = list(&path).unwrap_err();
        assert!(matches!(err, InspectError::NotAnImage { .. }), "{err}");
        let err = list(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(err, InspectError::OpenFailed { .. }), "{err}");
    }
}
