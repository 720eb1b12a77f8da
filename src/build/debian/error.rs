//! The one error type of the Debian package source, with a variant per failing step.
//!
//! Messages are lowercase and say what to do where there is something to do (check the
//! network, set `--mirror`/`KIMG_MIRROR`, free disk space). A cause lives either in
//! `#[source]` or in the message, never both.

use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong while reading apt config, fetching and verifying indexes,
/// resolving packages, handling the lock file and downloading `.deb`s.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read apt sources {path}")]
    ReadAptSources {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "no debian bookworm source (main component) is configured under {apt_root}/etc/apt; \
         add one to the apt sources or set --mirror / KIMG_MIRROR"
    )]
    NoDebianSource { apt_root: PathBuf },
    #[error(
        "the apt source for {suite} uses signed-by {value:?}; only keyring file paths are supported"
    )]
    UnsupportedSignedBy { suite: String, value: String },
    #[error(
        "cannot fetch {url} ({reason}) and the cache {cache_dir} has no copy; \
         check the network or set --mirror / KIMG_MIRROR to a reachable debian mirror"
    )]
    MirrorUnreachable {
        url: String,
        reason: String,
        cache_dir: PathBuf,
    },
    #[error("offline: {what} is not in the cache {cache_dir}; run once with network access")]
    NotInCache { what: String, cache_dir: PathBuf },
    #[error("cannot run gpgv to check signatures (install the gpgv package)")]
    RunGpgv(#[source] io::Error),
    #[error("signature check of {what} against {keyrings} failed; gpgv said:\n{status}")]
    VerifySignature {
        what: String,
        keyrings: String,
        status: String,
    },
    #[error("release file of {suite} expired at {valid_until} (Valid-Until is in the past)")]
    ReleaseExpired { suite: String, valid_until: String },
    #[error("release file of {suite} is malformed: {reason}")]
    ParseRelease { suite: String, reason: String },
    #[error("release file of {suite} lists no {path}(.xz|.gz)")]
    IndexNotListed { suite: String, path: String },
    #[error(
        "hash mismatch for {what}: expected sha256 {expected_sha256} ({expected_size} bytes), \
         got {actual_sha256} ({actual_size} bytes); the bad copy was deleted"
    )]
    HashMismatch {
        what: String,
        expected_sha256: String,
        expected_size: u64,
        actual_sha256: String,
        actual_size: u64,
    },
    #[error("cannot decompress {path}")]
    Decompress {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "package {name:?} is not in the configured debian indexes{}",
        did_you_mean(suggestions)
    )]
    PackageNotFound {
        name: String,
        suggestions: Vec<String>,
    },
    #[error("package {name} is locked to suite {suite}, which no apt source or --mirror provides")]
    UnknownSuite { name: String, suite: String },
    #[error("disk full while writing to the cache {dir}; free space or point the cache elsewhere")]
    DiskFull { dir: PathBuf },
    #[error("cannot write cache file {path}")]
    CacheIo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read lock file {path}")]
    ReadLock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("lock file {path} is malformed")]
    ParseLock {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("cannot write lock file {path}")]
    WriteLock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("lock file {path} has an invalid entry: {reason}")]
    InvalidLock { path: PathBuf, reason: String },
}

fn did_you_mean(suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", suggestions.join(", "))
    }
}

/// Maps an I/O error while writing into the cache: ENOSPC becomes [`SourceError::DiskFull`]
/// naming the cache dir, anything else [`SourceError::CacheIo`] naming the file.
pub(crate) fn cache_write_error(path: &Path, cache_dir: &Path, err: io::Error) -> SourceError {
    if err.kind() == io::ErrorKind::StorageFull {
        SourceError::DiskFull {
            dir: cache_dir.to_path_buf(),
        }
    } else {
        SourceError::CacheIo {
            path: path.to_path_buf(),
            source: err,
        }
    }
}
