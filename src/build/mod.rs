//! `kimg build`: Debian package source, rootfs assembly, initramfs, disks and the PXE bundle.
//!
//! [`image::build`] is the pipeline; the other modules are its parts: [`debian`] (signed
//! package indexes, lock, cache), [`deb`] (extraction), [`elf`] (library closure), [`kmod`]
//! (module subset + `modules.dep`), [`role`] (what each role carries), [`cpio`], [`disk`]
//! (GPT/FAT/ext4/qcow2) and [`inspect`] (reading images back without root).

pub mod cache;
pub mod cpio;
pub mod deb;
pub mod debian;
pub mod disk;
pub mod elf;
pub mod image;
pub mod inspect;
pub mod kmod;
pub mod progress;
pub mod role;
pub mod tree;

use std::path::{Path, PathBuf};

pub use image::{build, BuildOptions, Manifest, DEFAULT_EPOCH};

/// Why a build failed. Each variant names the step.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error(transparent)]
    Source(#[from] debian::SourceError),
    #[error("cannot unpack {package}")]
    Deb {
        package: String,
        #[source]
        source: deb::DebError,
    },
    #[error("bad file filter for {package}: {reason}")]
    Filter { package: String, reason: String },
    #[error("shared-library closure failed")]
    Elf(#[from] elf::ElfError),
    #[error("kernel module selection failed")]
    Kmod(#[from] kmod::KmodError),
    #[error("writing initrd.img failed")]
    Cpio(#[from] cpio::CpioError),
    #[error("writing disk.raw failed")]
    Disk(#[from] disk::DiskError),
    #[error("writing disk.qcow2 failed")]
    Qcow2(#[from] disk::qcow2::Qcow2Error),
    #[error("{package} is not in the lock file; run with --update-lock")]
    NotLocked { package: String },
    #[error("{path} is dynamically linked, but /init must be static; build kimg with the repository's .cargo/config.toml (cargo build --release)")]
    NotStatic { path: PathBuf },
    #[error("cannot read the OCI image archive {path} (make one with `kimg oci build`)")]
    OciArchive {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the cluster secret {path} (run `kimg cluster certs <dir> --issue`)")]
    Secret {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no valid bootstrap token in {dir} for the worker image; create one with `kimg token create {dir} --ttl 0`")]
    NoToken { dir: PathBuf },
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error("no cache directory: set XDG_CACHE_HOME or HOME, or pass --cache-dir")]
    NoCacheDir,
    #[error("the disk is full while writing {path}; free some space or choose another --out")]
    DiskFull { path: PathBuf },
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl BuildError {
    /// An I/O error on `path`, with ENOSPC reported as [`BuildError::DiskFull`].
    pub fn from_io(path: &Path, source: std::io::Error) -> BuildError {
        if source.raw_os_error() == Some(28) {
            BuildError::DiskFull {
                path: path.to_path_buf(),
            }
        } else {
            BuildError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}
