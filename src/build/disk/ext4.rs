//! The `STATE` partition: an ext4 filesystem made by e2fsprogs' `mke2fs -d` on a plain
//! file (no root, no loop device), and read back with the `ext4-view` crate.
//!
//! How it stays deterministic: the tree is staged into a scratch directory; `mke2fs` runs
//! with our own `mke2fs.conf` (host defaults cannot leak in), explicit block/inode sizes and
//! features, a fixed UUID and directory hash seed, `root_owner=0:0`, `nodiscard`, and
//! `E2FSPROGS_FAKE_TIME` pinning every superblock/group time. `mke2fs -d` copies the
//! staging files' owners and atime/ctime from the host (ctime cannot be set from user
//! space, and reading the staging tree moves atimes), so a `debugfs -w` script then sets
//! mode, uid/gid 0 and all four timestamps of every inode to the fixed epoch.
//! Limits: paths containing `"` or control characters are refused (debugfs quoting).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

use crate::build::tree::{Entry, Tree};

/// Features of the filesystem, spelled out so host `mke2fs.conf` defaults do not matter.
const FEATURES: &str =
    "has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize,sparse_super,filetype,resize_inode,dir_index,ext_attr";

/// Our own `mke2fs.conf`: the size classes mke2fs looks up are defined empty, so only
/// the command line decides the format (an empty section counts as undefined).
const MKE2FS_CONF: &str = "[defaults]\n\tblocksize = 4096\n\tinode_size = 256\n\tinode_ratio = 16384\n\n[fs_types]\n\text4 = {\n\t\tinode_size = 256\n\t}\n\tfloppy = {\n\t\tinode_ratio = 16384\n\t}\n\tsmall = {\n\t\tinode_ratio = 16384\n\t}\n\tdefault = {\n\t\tinode_ratio = 16384\n\t}\n\tbig = {\n\t\tinode_ratio = 16384\n\t}\n\thuge = {\n\t\tinode_ratio = 16384\n\t}\n";

#[derive(Debug, Error)]
pub enum Ext4Error {
    #[error("staging {path} for mke2fs failed")]
    StageFailed {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} could not be started (is e2fsprogs installed?)")]
    ToolMissing {
        tool: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed: {stderr}")]
    ToolFailed { tool: &'static str, stderr: String },
    #[error("path {path:?} cannot be written to ext4 by debugfs (quote or control character)")]
    UnsupportedName { path: String },
    #[error("reading the ext4 filesystem failed")]
    ReadFailed(#[source] ext4_view::Ext4Error),
    #[error("ext4 path {path} is not valid UTF-8")]
    NonUtf8Name { path: String },
}

/// What the ext4 filesystem should look like.
pub struct Ext4Spec<'a> {
    pub tree: &'a Tree,
    pub size: u64,
    pub label: &'a str,
    /// Filesystem UUID, textual form.
    pub uuid: String,
    /// Directory-index hash seed, textual UUID form.
    pub hash_seed: String,
    pub epoch: u64,
}

/// Writes the filesystem to `image` (created or truncated), using `scratch` (created,
/// then removed) for the staging tree and the tool configuration.
pub fn build(spec: &Ext4Spec, image: &Path, scratch: &Path) -> Result<(), Ext4Error> {
    let staged = stage(spec, image, scratch);
    let _ = fs::remove_dir_all(scratch);
    staged
}

fn stage(spec: &Ext4Spec, image: &Path, scratch: &Path) -> Result<(), Ext4Error> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Ext4Error::StageFailed { path, source }
    };
    let _ = fs::remove_dir_all(scratch);
    let root = scratch.join("root");
    fs::create_dir_all(&root).map_err(io(&root))?;
    let script = debugfs_script(spec.tree, spec.epoch)?;
    for (path, entry) in spec.tree.iter() {
        let target = root.join(path);
        match entry {
            Entry::Dir { .. } => fs::create_dir_all(&target).map_err(io(&target))?,
            Entry::File { data, .. } => fs::write(&target, data.as_slice()).map_err(io(&target))?,
            Entry::Symlink { target: to } => {
                std::os::unix::fs::symlink(to, &target).map_err(io(&target))?
            }
        }
    }
    let conf = scratch.join("mke2fs.conf");
    fs::write(&conf, MKE2FS_CONF).map_err(io(&conf))?;
    let script_path = scratch.join("fixup.debugfs");
    fs::write(&script_path, script).map_err(io(&script_path))?;
    let _ = fs::remove_file(image);
    let file = fs::File::create(image).map_err(io(image))?;
    file.set_len(spec.size).map_err(io(image))?;
    drop(file);

    let epoch = spec.epoch.to_string();
    let mut mke2fs = Command::new("mke2fs");
    mke2fs
        .env("MKE2FS_CONFIG", &conf)
        .env("E2FSPROGS_FAKE_TIME", &epoch)
        .env("SOURCE_DATE_EPOCH", &epoch)
        .args([
            "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-i", "16384",
        ])
        .args([
            "-m", "0", "-O", FEATURES, "-L", spec.label, "-U", &spec.uuid,
        ])
        .arg("-E")
        .arg(format!(
            "hash_seed={},root_owner=0:0,nodiscard,lazy_itable_init=0,lazy_journal_init=0",
            spec.hash_seed
        ))
        .arg("-d")
        .arg(&root)
        .arg(image);
    run("mke2fs", &mut mke2fs)?;

    let mut debugfs = Command::new("debugfs");
    debugfs
        .env("E2FSPROGS_FAKE_TIME", &epoch)
        .env("SOURCE_DATE_EPOCH", &epoch)
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(image);
    run("debugfs", &mut debugfs)
}

/// Runs a tool; debugfs reports script errors only on stderr, so any stderr line other
/// than its version banner counts as a failure.
fn run(tool: &'static str, cmd: &mut Command) -> Result<(), Ext4Error> {
    let out = cmd
        .output()
        .map_err(|source| Ext4Error::ToolMissing { tool, source })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs ") && !l.starts_with("mke2fs "))
        .collect();
    if !out.status.success() || !complaints.is_empty() {
        return Err(Ext4Error::ToolFailed {
            tool,
            stderr: stderr.trim().to_string(),
        });
    }
    Ok(())
}

/// Sets mode, owner and every timestamp of each inode mke2fs created.
fn debugfs_script(tree: &Tree, epoch: u64) -> Result<String, Ext4Error> {
    let mut s = String::new();
    let mut fix = |path: &str, mode: u32| {
        let _ = writeln!(s, "sif \"{path}\" mode 0{mode:o}");
        for field in ["uid", "gid"] {
            let _ = writeln!(s, "sif \"{path}\" {field} 0");
        }
        for field in ["atime", "mtime", "ctime", "crtime"] {
            let _ = writeln!(s, "sif \"{path}\" {field} @{epoch}");
        }
    };
    fix("/", 0o040755);
    fix("/lost+found", 0o040700);
    for (path, entry) in tree.iter() {
        if path.chars().any(|c| c == '"' || c.is_control()) {
            return Err(Ext4Error::UnsupportedName {
                path: path.to_string(),
            });
        }
        let mode = match entry {
            Entry::File { mode, .. } => 0o100000 | mode,
            Entry::Dir { mode } => 0o040000 | mode,
            Entry::Symlink { .. } => 0o120777,
        };
        fix(&format!("/{path}"), mode);
    }
    Ok(s)
}

/// Reads an ext4 filesystem stored at `offset` in `image`.
struct Slice {
    file: fs::File,
    offset: u64,
}

impl ext4_view::Ext4Read for Slice {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        use std::os::unix::fs::FileExt;
        self.file.read_exact_at(dst, self.offset + start_byte)?;
        Ok(())
    }
}

/// Opens the ext4 filesystem at byte `offset` of `file`.
pub fn open(file: fs::File, offset: u64) -> Result<ext4_view::Ext4, Ext4Error> {
    ext4_view::Ext4::load(Box::new(Slice { file, offset })).map_err(Ext4Error::ReadFailed)
}

/// Every path in the filesystem (relative, sorted by walk order) with its metadata,
/// including `lost+found`; reads no file contents.
pub fn walk(fs: &ext4_view::Ext4) -> Result<Vec<(String, ext4_view::Metadata)>, Ext4Error> {
    let mut found = Vec::new();
    let mut pending = vec![String::new()];
    while let Some(dir) = pending.pop() {
        let listing = fs
            .read_dir(format!("/{dir}").as_str())
            .map_err(Ext4Error::ReadFailed)?;
        for entry in listing {
            let entry = entry.map_err(Ext4Error::ReadFailed)?;
            let name = entry
                .file_name()
                .as_str()
                .map_err(|_| Ext4Error::NonUtf8Name {
                    path: format!("/{dir}/{}", entry.file_name().display()),
                })?
                .to_string();
            if name == "." || name == ".." {
                continue;
            }
            let path = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            let meta = entry.metadata().map_err(Ext4Error::ReadFailed)?;
            if meta.is_dir() {
                pending.push(path.clone());
            }
            found.push((path, meta));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// Reads a symlink's target.
pub fn read_link(fs: &ext4_view::Ext4, path: &str) -> Result<String, Ext4Error> {
    let abs = format!("/{}", path.trim_start_matches('/'));
    let target = fs.read_link(abs.as_str()).map_err(Ext4Error::ReadFailed)?;
    target
        .to_str()
        .map(str::to_string)
        .map_err(|_| Ext4Error::NonUtf8Name { path: abs })
}

/// Reads the whole filesystem into a [`Tree`] (including `lost+found`); devices, fifos and
/// sockets are skipped.
pub fn read_tree(fs: &ext4_view::Ext4) -> Result<Tree, Ext4Error> {
    let mut tree = Tree::new();
    for (path, meta) in walk(fs)? {
        let mode = u32::from(meta.mode());
        if meta.is_symlink() {
            tree.insert_symlink(&path, &read_link(fs, &path)?);
        } else if meta.is_dir() {
            tree.insert_dir(&path, mode);
        } else if meta.file_type().is_regular_file() {
            let data = fs
                .read(format!("/{path}").as_str())
                .map_err(Ext4Error::ReadFailed)?;
            tree.insert_file(&path, mode, data);
        }
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Tree {
        let mut t = Tree::new();
        t.insert_file("kimg/cluster.toml", 0o600, b"name = \"t\"\n".to_vec());
        t.insert_file("kimg/big", 0o644, vec![0xa5; 200_000]);
        t.insert_dir("var/lib/etcd", 0o700);
        t.insert_symlink("kimg/current", "cluster.toml");
        t.insert_file("with space/x", 0o755, b"#!/bin/sh\n".to_vec());
        t
    }

    fn spec(tree: &Tree) -> Ext4Spec<'_> {
        Ext4Spec {
            tree,
            size: 32 << 20,
            label: "STATE",
            uuid: "6e2f1a52-6b0c-4f1c-9d0a-0d1e2f3a4b5c".into(),
            hash_seed: "0b1c2d3e-4f50-4a6b-8c7d-8e9fa0b1c2d3".into(),
            epoch: 1_700_000_000,
        }
    }

    #[test]
    fn two_mke2fs_runs_give_identical_bytes_with_e2fsprogs() {
        let dir = tempfile::tempdir().unwrap();
        let tree = sample();
        let (a, b) = (dir.path().join("a.ext4"), dir.path().join("b.ext4"));
        build(&spec(&tree), &a, &dir.path().join("s1")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        build(&spec(&tree), &b, &dir.path().join("s2")).unwrap();
        assert!(
            fs::read(&a).unwrap() == fs::read(&b).unwrap(),
            "ext4 images differ"
        );
        assert!(!dir.path().join("s1").exists(), "scratch dir left behind");
    }

    #[test]
    fn the_filesystem_reads_back_with_owner_times_and_label_with_e2fsprogs() {
        let dir = tempfile::tempdir().unwrap();
        let tree = sample();
        let img = dir.path().join("a.ext4");
        build(&spec(&tree), &img, &dir.path().join("s")).unwrap();
        let fsck = Command::new("e2fsck")
            .args(["-f", "-n"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "{}",
            String::from_utf8_lossy(&fsck.stdout)
        );

        let fs = open(fs::File::open(&img).unwrap(), 0).unwrap();
        assert_eq!(fs.label().to_str().unwrap(), "STATE");
        assert_eq!(
            fs.uuid().to_string(),
            "6e2f1a52-6b0c-4f1c-9d0a-0d1e2f3a4b5c"
        );
        let mut back = read_tree(&fs).unwrap();
        assert_eq!(back.remove("lost+found"), Some(Entry::Dir { mode: 0o700 }));
        assert_eq!(back, tree);
        for path in ["/", "/kimg/big", "/var/lib/etcd", "/kimg/current"] {
            let m = fs.symlink_metadata(path).unwrap();
            assert_eq!((m.uid(), m.gid()), (0, 0), "{path}");
            assert_eq!(m.modified().seconds(), 1_700_000_000, "{path}");
            assert_eq!(m.accessed().seconds(), 1_700_000_000, "{path}");
        }
    }

    #[test]
    fn a_quote_in_a_path_is_refused() {
        let mut t = Tree::new();
        t.insert_file("a\"b", 0o644, vec![]);
        assert!(matches!(
            debugfs_script(&t, 0),
            Err(Ext4Error::UnsupportedName { .. })
        ));
    }
}
