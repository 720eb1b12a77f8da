//! `kimg oci build`: the files of Debian packages → one OCI image archive.
//!
//! Packages are locked, fetched and verified like `kimg build` does ([`crate::build::debian`]),
//! extracted whole with the `.deb` reader through the shared extraction cache, and merged
//! into one tree in lock order. The tree gets the small base every container expects
//! (`etc/passwd`, `etc/group`, `tmp` 1777, empty mount points), and, when the image carries
//! `busybox-static`, one symlink per applet in `bin/`. Documentation and man pages are
//! dropped. Limits: no maintainer scripts run, so packages that need `postinst` work are
//! not suitable.

use std::path::PathBuf;

use super::layout::{write_archive, ImageConfig, WrittenImage};
use super::OciError;
use crate::build::deb::{Deb, Filter};
use crate::build::debian::{self, SourceOptions};
use crate::build::tree::Tree;
use crate::build::{cache, BuildError};

/// Applets linked to `/bin/busybox` when the image carries `busybox-static`.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "ash", "awk", "basename", "cat", "chmod", "cp", "cut", "date", "df", "dirname", "du", "echo",
    "env", "false", "find", "grep", "head", "hostname", "httpd", "id", "ifconfig", "ip", "kill",
    "ln", "ls", "mkdir", "mount", "mv", "nc", "netstat", "nslookup", "ping", "ps", "pwd",
    "readlink", "rm", "sed", "seq", "sh", "sleep", "sort", "stat", "tail", "tee", "test",
    "timeout", "touch", "tr", "true", "uname", "uptime", "vi", "wc", "wget", "whoami", "xargs",
    "yes",
];

/// Everything `kimg oci build` takes.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub packages: Vec<String>,
    pub image: ImageConfig,
    pub lock_path: PathBuf,
    pub cache_dir: PathBuf,
    pub mirror: Option<String>,
    pub offline: bool,
    pub quiet: bool,
}

/// Adds `bin/<applet> -> busybox` for every applet the tree does not already have.
pub fn add_busybox_links(tree: &mut Tree) {
    for applet in BUSYBOX_APPLETS {
        let path = format!("bin/{applet}");
        if !tree.contains(&path) {
            tree.insert_symlink(&path, "busybox");
        }
    }
}

/// Adds the files and mount points a container root expects.
pub fn add_base(tree: &mut Tree) {
    for dir in ["proc", "sys", "dev", "etc", "root", "var", "run"] {
        tree.insert_dir(dir, 0o755);
    }
    tree.insert_dir("tmp", 0o1777);
    if !tree.contains("etc/passwd") {
        tree.insert_file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
                .to_vec(),
        );
    }
    if !tree.contains("etc/group") {
        tree.insert_file(
            "etc/group",
            0o644,
            b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
        );
    }
}

const DROP: &[&str] = &["usr/share/doc/", "usr/share/man/", "usr/share/lintian/"];

/// Resolves, fetches and extracts the packages, then writes the archive (in memory).
pub fn build(opts: &BuildOptions) -> Result<WrittenImage, OciError> {
    let mut source = SourceOptions::for_host(opts.cache_dir.clone());
    source.mirror_override = opts.mirror.clone();
    source.offline = opts.offline;
    source.quiet = opts.quiet;
    let lock = debian::ensure_locked(&source, &opts.lock_path, &opts.packages, false)?;
    let mut tree = Tree::new();
    for pkg in lock.packages_for(&opts.packages) {
        let patterns: &[&str] = &["**"];
        let cache_file = cache::key_path(&source.cache_dir, &pkg.sha256, patterns);
        let part = match cache::load(&cache_file) {
            Some(t) => t,
            None => {
                let path = debian::fetch_package(&source, pkg)?;
                let deb = Deb::open(&path).map_err(|source| BuildError::Deb {
                    package: pkg.name.clone(),
                    source,
                })?;
                let mut t = Tree::new();
                deb.extract(&Filter::all(), &mut t)
                    .map_err(|source| BuildError::Deb {
                        package: pkg.name.clone(),
                        source,
                    })?;
                cache::store(&cache_file, &t);
                t
            }
        };
        tree.merge(&part);
    }
    let dropped: Vec<String> = tree
        .iter()
        .filter(|(p, _)| {
            DROP.iter()
                .any(|d| p.starts_with(d) || *p == d.trim_end_matches('/'))
        })
        .map(|(p, _)| p.to_string())
        .collect();
    for p in dropped {
        tree.remove(&p);
    }
    if opts.packages.iter().any(|p| p == "busybox-static") {
        add_busybox_links(&mut tree);
    }
    add_base(&mut tree);
    write_archive(&tree, &opts.image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_links_point_at_busybox_and_keep_real_files() {
        let mut t = Tree::new();
        t.insert_file("bin/busybox", 0o755, b"ELF".to_vec());
        t.insert_file("bin/sh", 0o755, b"real".to_vec());
        add_busybox_links(&mut t);
        assert!(matches!(
            t.get("bin/httpd"),
            Some(crate::build::tree::Entry::Symlink { target }) if target == "busybox"
        ));
        assert!(matches!(
            t.get("bin/sh"),
            Some(crate::build::tree::Entry::File { .. })
        ));
        for applet in ["wget", "nc", "nslookup", "sleep", "cat", "echo", "ls"] {
            assert!(t.contains(&format!("bin/{applet}")), "{applet}");
        }
    }

    #[test]
    fn busybox_static_becomes_an_image_against_the_host_mirror() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = debian::default_cache_dir().unwrap();
        let mut image = ImageConfig {
            name: "kimg.local/busybox:latest".into(),
            entrypoint: vec!["/bin/busybox".into()],
            cmd: vec!["sh".into()],
            env: vec!["PATH=/bin:/usr/bin".into()],
            working_dir: "/".into(),
            epoch: 1_700_000_000,
        };
        let opts = BuildOptions {
            packages: vec!["busybox-static".into()],
            image: image.clone(),
            lock_path: dir.path().join("oci.lock"),
            cache_dir,
            mirror: None,
            offline: false,
            quiet: true,
        };
        let a = build(&opts).unwrap();
        let b = build(&opts).unwrap();
        assert_eq!(a.archive, b.archive, "rebuild is byte-identical");
        let parsed = crate::oci::read_archive(&a.archive).unwrap();
        let gz = &parsed.blobs[&parsed.layers[0].digest];
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(gz.as_slice()));
        let paths: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert!(paths.contains(&"bin/busybox".to_string()));
        assert!(paths.contains(&"bin/httpd".to_string()));
        assert!(!paths.iter().any(|p| p.starts_with("usr/share/doc/")));
        image.cmd = vec!["httpd".into()];
        assert_ne!(
            build(&BuildOptions { image, ..opts })
                .unwrap()
                .config_digest,
            a.config_digest
        );
    }
}
