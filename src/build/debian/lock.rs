//! The lock file (`images/bookworm.lock`): exactly which `.deb`s a build uses.
//!
//! TOML, written sorted and deterministic (same inputs, same bytes):
//!
//! ```toml
//! requested = ["etcd-server", "runc"]   # named packages the lock covers
//!
//! [[package]]
//! name = "runc"
//! version = "1.1.5+ds1-1+deb12u1"
//! architecture = "amd64"
//! suite = "bookworm"
//! filename = "pool/main/r/runc/runc_1.1.5+ds1-1+deb12u1_amd64.deb"
//! size = 2710024
//! sha256 = "…64 hex digits…"
//! required-by = ["containerd", "runc"]
//! ```
//!
//! `filename` is the pool path relative to the archive root: no mirror host is ever stored,
//! so a lock works with any mirror. `required-by` names the requested packages whose closure
//! holds the entry, so one lock can serve several profiles ([`Lockfile::packages_for`]).
//! Loading validates every entry (hex sha256, relative path without `..`).

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::SourceError;

/// One pinned `.deb`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub suite: String,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    #[serde(default)]
    pub required_by: Vec<String>,
}

/// The whole lock file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Lockfile {
    #[serde(default)]
    pub requested: Vec<String>,
    #[serde(default, rename = "package")]
    pub packages: Vec<LockedPackage>,
}

const HEADER: &str = "# Debian packages pinned for `kimg build`. Written by kimg; \
update with `kimg build --update-lock`.\n\n";

impl Lockfile {
    /// Reads and validates a lock file.
    pub fn load(path: &Path) -> Result<Lockfile, SourceError> {
        let text = fs::read_to_string(path).map_err(|source| SourceError::ReadLock {
            path: path.to_path_buf(),
            source,
        })?;
        let lock: Lockfile = toml::from_str(&text).map_err(|source| SourceError::ParseLock {
            path: path.to_path_buf(),
            source,
        })?;
        lock.validate(path)?;
        Ok(lock)
    }

    /// Like [`Lockfile::load`], but a missing file is an empty lock.
    pub fn load_or_empty(path: &Path) -> Result<Lockfile, SourceError> {
        if path.exists() {
            Lockfile::load(path)
        } else {
            Ok(Lockfile::default())
        }
    }

    /// Writes the lock sorted and deterministic, replacing the file atomically.
    pub fn save(&self, path: &Path) -> Result<(), SourceError> {
        let text = self.to_toml();
        let write_err = |source| SourceError::WriteLock {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(write_err)?;
        }
        crate::files::write_atomic(path, text.as_bytes(), 0o644).map_err(write_err)
    }

    /// The canonical text of this lock.
    pub fn to_toml(&self) -> String {
        let mut sorted = self.clone();
        sorted.normalize();
        // Plain structs of strings and integers always serialize.
        let body = toml::to_string(&sorted).unwrap_or_default();
        format!("{HEADER}{body}")
    }

    /// Requested names that the lock does not cover yet.
    pub fn missing(&self, wanted: &[String]) -> Vec<String> {
        let have: BTreeSet<&String> = self.requested.iter().collect();
        let mut out: Vec<String> = wanted
            .iter()
            .filter(|w| !have.contains(w))
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The entries needed by any of `wanted` (sorted by name).
    pub fn packages_for(&self, wanted: &[String]) -> Vec<&LockedPackage> {
        let mut out: Vec<&LockedPackage> = self
            .packages
            .iter()
            .filter(|p| p.required_by.iter().any(|r| wanted.contains(r)))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn normalize(&mut self) {
        self.requested.sort();
        self.requested.dedup();
        for p in &mut self.packages {
            p.required_by.sort();
            p.required_by.dedup();
        }
        self.packages
            .sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    }

    fn validate(&self, path: &Path) -> Result<(), SourceError> {
        for p in &self.packages {
            let bad = |reason: &str| SourceError::InvalidLock {
                path: path.to_path_buf(),
                reason: format!("package {:?}: {reason}", p.name),
            };
            if p.name.is_empty() || p.version.is_empty() || p.suite.is_empty() {
                return Err(bad("empty name, version or suite"));
            }
            if p.sha256.len() != 64
                || !p
                    .sha256
                    .bytes()
                    .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
            {
                return Err(bad("sha256 must be 64 lowercase hex digits"));
            }
            if p.filename.starts_with('/')
                || p.filename.contains("://")
                || p.filename.split('/').any(|s| s == ".." || s.is_empty())
            {
                return Err(bad("filename must be a relative pool path"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, required_by: &[&str]) -> LockedPackage {
        LockedPackage {
            name: name.into(),
            version: "1.0-1".into(),
            architecture: "amd64".into(),
            suite: "bookworm".into(),
            filename: format!("pool/main/x/{name}/{name}_1.0-1_amd64.deb"),
            size: 42,
            sha256: "ab".repeat(32),
            required_by: required_by.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_lock_round_trips_sorted_and_byte_identical() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("images/bookworm.lock");
        let lock = Lockfile {
            requested: vec!["runc".into(), "containerd".into(), "runc".into()],
            packages: vec![
                pkg("runc", &["runc", "containerd"]),
                pkg("libc6", &["runc"]),
            ],
        };
        lock.save(&path).expect("save");
        let first = fs::read_to_string(&path).expect("read");
        let loaded = Lockfile::load(&path).expect("load");
        assert_eq!(loaded.requested, ["containerd", "runc"]);
        assert_eq!(loaded.packages[0].name, "libc6");
        assert_eq!(loaded.packages[1].required_by, ["containerd", "runc"]);
        loaded.save(&path).expect("save again");
        assert_eq!(fs::read_to_string(&path).expect("read"), first);
        assert!(first.contains("[[package]]"));
        assert!(first.contains("required-by"));
        assert!(!first.contains("http"), "no mirror in the lock: {first}");
    }

    #[test]
    fn missing_and_packages_for_follow_requested_and_required_by() {
        let lock = Lockfile {
            requested: vec!["runc".into(), "nftables".into()],
            packages: vec![
                pkg("runc", &["runc"]),
                pkg("libc6", &["runc", "nftables"]),
                pkg("nftables", &["nftables"]),
            ],
        };
        assert_eq!(
            lock.missing(&["runc".into(), "etcd-server".into()]),
            ["etcd-server"]
        );
        let names: Vec<_> = lock
            .packages_for(&["runc".into()])
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, ["libc6", "runc"]);
    }

    #[test]
    fn a_lock_with_a_mirror_url_or_bad_hash_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.lock");
        let mut lock = Lockfile {
            requested: vec![],
            packages: vec![pkg("runc", &["runc"])],
        };
        lock.packages[0].filename = "http://m.invalid/debian/pool/x.deb".into();
        fs::write(&path, lock.to_toml()).expect("write");
        assert!(matches!(
            Lockfile::load(&path),
            Err(SourceError::InvalidLock { .. })
        ));
        lock.packages[0].filename = "pool/x.deb".into();
        lock.packages[0].sha256 = "XYZ".into();
        fs::write(&path, lock.to_toml()).expect("write");
        assert!(matches!(
            Lockfile::load(&path),
            Err(SourceError::InvalidLock { .. })
        ));
        fs::write(&path, "[[package]]\nname = 1\n").expect("write");
        assert!(matches!(
            Lockfile::load(&path),
            Err(SourceError::ParseLock { .. })
        ));
    }
}
