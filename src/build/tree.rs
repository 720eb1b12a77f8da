//! An in-memory file tree: the rootfs (or partition contents) being assembled.
//!
//! Paths are relative, `/`-separated, without a leading slash (`usr/bin/etcd`). Entries are
//! kept sorted (a `BTreeMap`), so every writer that walks a [`Tree`] emits the same order
//! every time — the base of byte-identical images. Ownership is always root:root and
//! timestamps are not stored at all: writers stamp every entry with one fixed epoch.

use std::collections::BTreeMap;
use std::sync::Arc;

/// One entry of a [`Tree`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A regular file with its permission bits (e.g. `0o755`) and contents.
    File { mode: u32, data: Arc<Vec<u8>> },
    /// A directory with its permission bits.
    Dir { mode: u32 },
    /// A symbolic link and its target, exactly as it should be stored.
    Symlink { target: String },
}

/// A sorted set of files, directories and symlinks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
}

/// Normalises a path: strips leading `/` and `./`, collapses empty segments.
pub fn normalize(path: &str) -> String {
    path.split('/')
        .filter(|seg| !seg.is_empty() && *seg != ".")
        .collect::<Vec<_>>()
        .join("/")
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a file, creating missing parent directories with mode 0755.
    pub fn insert_file(&mut self, path: &str, mode: u32, data: impl Into<Arc<Vec<u8>>>) {
        let path = normalize(path);
        self.ensure_parents(&path);
        self.entries.insert(
            path,
            Entry::File {
                mode: mode & 0o7777,
                data: data.into(),
            },
        );
    }

    /// Adds a directory (and its parents). An existing directory keeps its entry.
    pub fn insert_dir(&mut self, path: &str, mode: u32) {
        let path = normalize(path);
        if path.is_empty() {
            return;
        }
        self.ensure_parents(&path);
        self.entries.insert(
            path,
            Entry::Dir {
                mode: mode & 0o7777,
            },
        );
    }

    /// Adds (or replaces) a symlink, creating missing parent directories.
    pub fn insert_symlink(&mut self, path: &str, target: &str) {
        let path = normalize(path);
        self.ensure_parents(&path);
        self.entries.insert(
            path,
            Entry::Symlink {
                target: target.to_string(),
            },
        );
    }

    fn ensure_parents(&mut self, path: &str) {
        let mut end = 0;
        while let Some(pos) = path[end..].find('/') {
            let parent = &path[..end + pos];
            self.entries
                .entry(parent.to_string())
                .or_insert(Entry::Dir { mode: 0o755 });
            end += pos + 1;
        }
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(&normalize(path))
    }

    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(&normalize(path))
    }

    pub fn remove(&mut self, path: &str) -> Option<Entry> {
        self.entries.remove(&normalize(path))
    }

    /// All entries in sorted path order (parents before children).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Copies every entry of `other` into `self`, `other` winning on conflicts.
    pub fn merge(&mut self, other: &Tree) {
        for (path, entry) in other.iter() {
            self.ensure_parents(path);
            self.entries.insert(path.to_string(), entry.clone());
        }
    }

    /// Total bytes of file contents.
    pub fn file_bytes(&self) -> u64 {
        self.entries
            .values()
            .map(|e| match e {
                Entry::File { data, .. } => data.len() as u64,
                _ => 0,
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserting_a_file_creates_its_parent_directories() {
        let mut t = Tree::new();
        t.insert_file("/usr/bin/etcd", 0o755, vec![1, 2, 3]);
        assert_eq!(t.get("usr"), Some(&Entry::Dir { mode: 0o755 }));
        assert_eq!(t.get("usr/bin"), Some(&Entry::Dir { mode: 0o755 }));
        assert!(matches!(
            t.get("usr/bin/etcd"),
            Some(Entry::File { mode: 0o755, .. })
        ));
    }

    #[test]
    fn iteration_is_sorted_with_parents_first() {
        let mut t = Tree::new();
        t.insert_file("b/z", 0o644, vec![]);
        t.insert_file("a", 0o644, vec![]);
        t.insert_symlink("b/a", "z");
        let paths: Vec<_> = t.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(paths, ["a", "b", "b/a", "b/z"]);
    }

    #[test]
    fn paths_are_normalised() {
        assert_eq!(normalize("/./etc//kimg/"), "etc/kimg");
    }
}
