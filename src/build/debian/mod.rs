//! The Debian package source of `kimg build`: which bookworm `.deb`s an image is made of,
//! pinned in a lock file, downloaded and verified into a hash-keyed cache.
//!
//! # Flow
//! 1. [`apt`]: the host's apt sources (or a `--mirror` / `KIMG_MIRROR` override) say where
//!    `bookworm`, `bookworm-updates` and `bookworm-security` come from and which keyring
//!    signs each.
//! 2. [`ensure_locked`]: if the lock file already covers every wanted package (and no update
//!    is asked for), it is used as is and nothing touches the network. Otherwise the indexes
//!    are loaded and the missing names resolved ([`resolve`]), merged into the lock (existing
//!    pins are kept) and the lock is saved.
//! 3. [`fetch_package`]: returns `<cache>/debs/<sha256>.deb`, downloading it if needed.
//!
//! # What is verified
//! - `InRelease` of each suite: `gpgv` (exit 0, at least one `VALIDSIG`, no `BADSIG`/
//!   `ERRSIG`/`EXPKEYSIG`/`REVKEYSIG`) against the suite's `Signed-By` keyring(s), default
//!   `/usr/share/keyrings/debian-archive-keyring.gpg`. Only gpgv's output — the signed bytes —
//!   is read afterwards. Its `Codename` must be the suite asked for; its `Valid-Until`, if
//!   present, must be in the future unless [`SourceOptions::check_valid_until`] is off (the
//!   default follows apt's `Acquire::Check-Valid-Until`). A cached `InRelease` is
//!   re-verified the same way on every use, offline too.
//! - `main/binary-<arch>/Packages.xz` (or `.gz`): exact size and sha256 from the signed
//!   Release, checked while downloading and again on every cache use.
//! - each `.deb`: exact size and sha256 from the verified Packages index, recorded in the
//!   lock; later builds check downloads and cached copies against the lock alone (the lock
//!   is trusted as committed code). Mismatching files are deleted, never used.
//!
//! Not verified: that the lock file itself is unmodified (review it like code), freshness
//! of a cached InRelease beyond Valid-Until, and `.deb` contents beyond their hash.
//!
//! # Cache layout (under the caller's cache dir, e.g. `~/.cache/kimg`)
//! `indexes/InRelease-<suite>`, `indexes/<sha256>` (compressed Packages), and
//! `debs/<sha256>.deb`. Nothing is evicted by age; delete the dir to reclaim space.

pub mod apt;
mod deb822;
mod error;
mod fetch;
mod index;
pub mod lock;
pub mod packages;
mod release;
pub mod resolve;
pub mod version;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use apt::MirrorOverride;
pub use error::SourceError;
/// Streaming `(size, sha256 hex)` of a file; also used for the build's outputs.
pub(crate) use fetch::hash_file;
pub use lock::{LockedPackage, Lockfile};

/// Where packages come from and how to treat the network.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    /// Root under which `etc/apt/…` and keyring paths are read (`/` on a host).
    pub apt_root: PathBuf,
    /// Replaces the URI of `bookworm` and `bookworm-updates` (flag `--mirror`, env `KIMG_MIRROR`).
    pub mirror_override: Option<String>,
    /// Replaces the URI of `bookworm-security`.
    pub security_mirror_override: Option<String>,
    /// Cache root (`$XDG_CACHE_HOME/kimg` or `~/.cache/kimg`).
    pub cache_dir: PathBuf,
    /// Debian architecture, e.g. `amd64`.
    pub arch: String,
    /// No progress bars.
    pub quiet: bool,
    /// Never touch the network; fail if something is not cached.
    pub offline: bool,
    /// Refuse Release files whose `Valid-Until` has passed.
    pub check_valid_until: bool,
}

impl SourceOptions {
    /// Options for this host: apt config under `/`, `amd64`, Valid-Until checking as apt
    /// is configured, progress bars on, online.
    pub fn for_host(cache_dir: PathBuf) -> SourceOptions {
        SourceOptions {
            apt_root: PathBuf::from("/"),
            mirror_override: None,
            security_mirror_override: None,
            cache_dir,
            arch: "amd64".into(),
            quiet: false,
            offline: false,
            check_valid_until: apt::apt_checks_valid_until(Path::new("/")),
        }
    }

    fn suite_sources(&self) -> Result<Vec<apt::SuiteSource>, SourceError> {
        apt::suite_sources(
            &self.apt_root,
            &self.arch,
            &MirrorOverride {
                main: self.mirror_override.clone(),
                security: self.security_mirror_override.clone(),
            },
        )
    }
}

/// `$XDG_CACHE_HOME/kimg`, else `$HOME/.cache/kimg`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let from = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    from("XDG_CACHE_HOME")
        .or_else(|| from("HOME").map(|h| h.join(".cache")))
        .map(|c| c.join("kimg"))
}

/// Makes sure the lock at `lock_path` covers `wanted` and returns it.
///
/// Without `update`, a lock covering every wanted name is returned untouched (no network).
/// Names it lacks are resolved against the indexes (network, or the cache when offline) and
/// merged in; `update` re-resolves everything the lock requested plus `wanted` from scratch.
/// The lock is saved whenever it changes. Use [`Lockfile::packages_for`] to get one
/// profile's packages.
pub fn ensure_locked(
    opts: &SourceOptions,
    lock_path: &Path,
    wanted: &[String],
    update: bool,
) -> Result<Lockfile, SourceError> {
    let old = Lockfile::load_or_empty(lock_path)?;
    let missing = old.missing(wanted);
    if !update && missing.is_empty() {
        return Ok(old);
    }
    let (mut lock, to_resolve) = if update {
        let mut all = old.requested.clone();
        all.extend(wanted.iter().cloned());
        all.sort();
        all.dedup();
        (Lockfile::default(), all)
    } else {
        tracing::warn!(
            packages = %missing.join(" "), lock = %lock_path.display(),
            "packages missing from the lock; resolving them against the package indexes"
        );
        (old, missing)
    };
    let index = index::load_index(opts, &opts.suite_sources()?)?;
    let resolved = resolve::resolve(&index, &to_resolve)?;
    let mut by_name: BTreeMap<String, LockedPackage> = lock
        .packages
        .drain(..)
        .map(|p| (p.name.clone(), p))
        .collect();
    for r in resolved {
        let entry = by_name
            .entry(r.package.name.clone())
            .or_insert_with(|| LockedPackage {
                name: r.package.name.clone(),
                version: r.package.version.clone(),
                architecture: r.package.architecture.clone(),
                suite: r.package.suite.clone(),
                filename: r.package.filename.clone(),
                size: r.package.size,
                sha256: r.package.sha256.clone(),
                required_by: Vec::new(),
            });
        entry.required_by.extend(r.required_by);
        entry.required_by.sort();
        entry.required_by.dedup();
    }
    lock.packages = by_name.into_values().collect();
    lock.requested.extend(to_resolve);
    lock.requested.sort();
    lock.requested.dedup();
    lock.save(lock_path)?;
    Ok(lock)
}

/// Returns the verified cached `.deb` of `pkg` (`<cache>/debs/<sha256>.deb`), downloading it
/// from the suite's mirror first if it is not cached (or its cached copy is corrupt).
/// A cache hit reads no apt config and touches no network.
pub fn fetch_package(opts: &SourceOptions, pkg: &LockedPackage) -> Result<PathBuf, SourceError> {
    let dest = opts
        .cache_dir
        .join("debs")
        .join(format!("{}.deb", pkg.sha256));
    let expected = fetch::Expected {
        what: &pkg.name,
        size: pkg.size,
        sha256: &pkg.sha256,
    };
    if fetch::cached_ok(&dest, &expected) {
        return Ok(dest);
    }
    if opts.offline {
        return Err(SourceError::NotInCache {
            what: format!("package {} {}", pkg.name, pkg.version),
            cache_dir: opts.cache_dir.clone(),
        });
    }
    let source = opts
        .suite_sources()?
        .into_iter()
        .find(|s| s.suite == pkg.suite)
        .ok_or_else(|| SourceError::UnknownSuite {
            name: pkg.name.clone(),
            suite: pkg.suite.clone(),
        })?;
    let url = format!("{}/{}", source.uri, pkg.filename);
    fetch::download_verified(
        &fetch::agent(),
        &url,
        &dest,
        &expected,
        &opts.cache_dir,
        opts.quiet,
    )?;
    Ok(dest)
}
