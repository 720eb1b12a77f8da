//! A cache of extracted file sets, so a warm build never decompresses a `.deb` again.
//!
//! Key: sha256 of (the `.deb`'s sha256, the filter patterns). Value: an uncompressed tar of
//! the extracted [`Tree`] at `<cache>/extract/<key>.tar`, written atomically. A cache file
//! that fails to parse is ignored and rewritten; the `.deb` stays the source of truth.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::tree::{Entry, Tree};

/// The cache file for one (package, filter) pair.
pub fn key_path(cache_dir: &Path, deb_sha256: &str, patterns: &[&str]) -> PathBuf {
    let mut h = Sha256::new();
    h.update(deb_sha256.as_bytes());
    for p in patterns {
        h.update([0]);
        h.update(p.as_bytes());
    }
    cache_dir
        .join("extract")
        .join(format!("{}.tar", hex::encode(h.finalize())))
}

/// Reads a cached tree, or `None` if absent or unreadable.
pub fn load(path: &Path) -> Option<Tree> {
    let file = std::fs::File::open(path).ok()?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut tree = Tree::new();
    for entry in archive.entries().ok()? {
        let mut entry = entry.ok()?;
        let path = entry.path().ok()?.to_string_lossy().into_owned();
        let mode = entry.header().mode().ok()?;
        match entry.header().entry_type() {
            tar::EntryType::Directory => tree.insert_dir(&path, mode),
            tar::EntryType::Symlink => {
                let target = entry.link_name().ok()??.to_string_lossy().into_owned();
                tree.insert_symlink(&path, &target);
            }
            tar::EntryType::Regular => {
                let mut data = Vec::with_capacity(entry.size() as usize);
                entry.read_to_end(&mut data).ok()?;
                tree.insert_file(&path, mode, data);
            }
            _ => return None,
        }
    }
    Some(tree)
}

/// Writes a tree to the cache (best effort: a failure only costs speed next time).
pub fn store(path: &Path, tree: &Tree) {
    let result = (|| -> std::io::Result<()> {
        let mut builder = tar::Builder::new(Vec::new());
        for (p, entry) in tree.iter() {
            let mut header = tar::Header::new_gnu();
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            match entry {
                Entry::Dir { mode } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(*mode);
                    header.set_size(0);
                    builder.append_data(&mut header, p, std::io::empty())?;
                }
                Entry::Symlink { target } => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    builder.append_link(&mut header, p, target)?;
                }
                Entry::File { mode, data } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    builder.append_data(&mut header, p, Arc::clone(data).as_slice())?;
                }
            }
        }
        let bytes = builder.into_inner()?;
        crate::pki::write_atomic(path, &bytes, 0o644)
    })();
    if let Err(e) = result {
        tracing::debug!(path = %path.display(), error = %e, "could not write the extraction cache");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_tree_loads_back_identically() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tree::new();
        t.insert_file("usr/bin/etcd", 0o755, vec![1, 2, 3]);
        t.insert_symlink(
            "lib64/ld-linux-x86-64.so.2",
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        );
        t.insert_dir("var/empty", 0o700);
        let path = key_path(dir.path(), "abc", &["usr/bin/*"]);
        store(&path, &t);
        assert_eq!(load(&path), Some(t));
    }

    #[test]
    fn keys_differ_by_filter() {
        let a = key_path(Path::new("/c"), "abc", &["a"]);
        let b = key_path(Path::new("/c"), "abc", &["b"]);
        assert_ne!(a, b);
    }
}
