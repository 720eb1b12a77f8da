//! End-to-end tests of the package source: a tiny HTTP mirror on 127.0.0.1 (signed with a
//! throwaway gpg key) for hash mismatches, eviction, offline rebuilds and tampering, plus
//! tests named `*_against_the_host_mirror` that use the host's real apt configuration.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::*;

/// A bounded HTTP/1.1 file server on 127.0.0.1: serves `files` by path for at most 60 s or
/// 200 connections, and counts requests.
struct TestMirror {
    url: String,
    requests: Arc<AtomicUsize>,
}

impl TestMirror {
    fn start(files: HashMap<String, Vec<u8>>) -> TestMirror {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut served = 0;
            while Instant::now() < deadline && served < 200 {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                served += 1;
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let head = String::from_utf8_lossy(&head);
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let reply = match files.get(&path) {
                    Some(body) => {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(body);
                        r
                    }
                    None => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = conn.write_all(&reply);
            }
        });
        TestMirror { url, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn options(apt_root: &Path, cache: &Path, mirror: &str) -> SourceOptions {
    SourceOptions {
        apt_root: apt_root.to_path_buf(),
        mirror_override: Some(mirror.to_string()),
        security_mirror_override: None,
        cache_dir: cache.to_path_buf(),
        arch: "amd64".into(),
        quiet: true,
        offline: false,
        check_valid_until: true,
    }
}

fn locked(name: &str, filename: &str, data: &[u8]) -> LockedPackage {
    LockedPackage {
        name: name.into(),
        version: "1.0-1".into(),
        architecture: "amd64".into(),
        suite: "bookworm".into(),
        filename: filename.into(),
        size: data.len() as u64,
        sha256: sha(data),
        required_by: vec![name.into()],
    }
}

/// The port-9 "discard" address nothing listens on: any network use fails fast.
const UNROUTABLE: &str = "http://127.0.0.1:9/debian";

#[test]
fn a_wrong_file_from_the_mirror_is_refused_and_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pkg = locked(
        "runc",
        "pool/main/r/runc/runc_1.0-1_amd64.deb",
        b"the real runc",
    );
    let evil = b"a trojan runc!".to_vec();
    let mirror = TestMirror::start(HashMap::from([(
        "/debian/pool/main/r/runc/runc_1.0-1_amd64.deb".to_string(),
        evil.clone(),
    )]));
    let opts = options(
        dir.path(),
        &dir.path().join("cache"),
        &format!("{}/debian", mirror.url),
    );
    let err = fetch_package(&opts, &pkg).unwrap_err();
    match &err {
        SourceError::HashMismatch {
            what,
            expected_sha256,
            actual_sha256,
            ..
        } => {
            assert_eq!(what, "runc");
            assert_eq!(expected_sha256, &pkg.sha256);
            assert_eq!(actual_sha256, &sha(&evil));
        }
        other => panic!("unexpected error: {other}"),
    }
    let left: Vec<_> = std::fs::read_dir(dir.path().join("cache/debs"))
        .expect("debs dir")
        .collect();
    assert!(
        left.is_empty(),
        "bad download must not stay in the cache: {left:?}"
    );
}

#[test]
fn a_corrupt_cached_deb_is_evicted_and_fetched_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = b"good bytes of a deb".to_vec();
    let pkg = locked("runc", "pool/main/r/runc/runc.deb", &good);
    let cached = dir
        .path()
        .join("cache/debs")
        .join(format!("{}.deb", pkg.sha256));
    std::fs::create_dir_all(cached.parent().expect("parent")).expect("mkdir");
    std::fs::write(&cached, b"bit-rotted bytes of a deb").expect("write");
    let mirror = TestMirror::start(HashMap::from([(
        "/debian/pool/main/r/runc/runc.deb".to_string(),
        good.clone(),
    )]));
    let opts = options(
        dir.path(),
        &dir.path().join("cache"),
        &format!("{}/debian", mirror.url),
    );
    let path = fetch_package(&opts, &pkg).expect("fetch");
    assert_eq!(path, cached);
    assert_eq!(std::fs::read(&path).expect("read"), good);
    assert_eq!(mirror.requests(), 1);
}

#[test]
fn a_cached_deb_is_served_without_any_network_and_a_miss_says_the_cache_is_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = b"cached deb".to_vec();
    let pkg = locked("runc", "pool/main/r/runc/runc.deb", &data);
    let cache = dir.path().join("cache");
    let cached = cache.join("debs").join(format!("{}.deb", pkg.sha256));
    std::fs::create_dir_all(cached.parent().expect("parent")).expect("mkdir");
    std::fs::write(&cached, &data).expect("write");
    let opts = options(dir.path(), &cache, UNROUTABLE);
    assert_eq!(fetch_package(&opts, &pkg).expect("cache hit"), cached);

    let other = locked(
        "busybox-static",
        "pool/main/b/busybox/busybox-static.deb",
        b"x",
    );
    let err = fetch_package(&opts, &other).unwrap_err();
    assert!(
        matches!(err, SourceError::MirrorUnreachable { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("http://127.0.0.1:9/debian/pool/main/b/busybox/busybox-static.deb"),
        "{msg}"
    );
    assert!(
        msg.contains("has no copy") && msg.contains("KIMG_MIRROR"),
        "{msg}"
    );

    let offline = SourceOptions {
        offline: true,
        ..opts
    };
    assert!(matches!(
        fetch_package(&offline, &other),
        Err(SourceError::NotInCache { .. })
    ));
}

#[test]
fn a_full_disk_is_reported_naming_the_cache_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = vec![7u8; 64 << 10];
    let pkg = locked("runc", "pool/main/r/runc/runc.deb", &data);
    let mirror = TestMirror::start(HashMap::from([(
        "/debian/pool/main/r/runc/runc.deb".to_string(),
        data,
    )]));
    let cache = dir.path().join("cache");
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs).expect("mkdir");
    // The partial download lands on /dev/full, whose writes fail with ENOSPC.
    let part = debs.join(format!("{}.deb.{}.part", pkg.sha256, std::process::id()));
    std::os::unix::fs::symlink("/dev/full", &part).expect("symlink");
    let opts = options(dir.path(), &cache, &format!("{}/debian", mirror.url));
    let err = fetch_package(&opts, &pkg).unwrap_err();
    match &err {
        SourceError::DiskFull { dir } => assert_eq!(dir, &cache),
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains(&cache.display().to_string()));
    assert!(
        std::fs::symlink_metadata(&part).is_err(),
        "partial file removed"
    );
}

/// A throwaway gpg home with one signing key; the agent it starts is stopped on drop.
struct TestKey {
    home: tempfile::TempDir,
}

impl TestKey {
    fn generate() -> TestKey {
        let home = tempfile::tempdir().expect("tempdir");
        let out = Command::new("gpg")
            .arg("--homedir")
            .arg(home.path())
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
            .args([
                "--quick-gen-key",
                "kimg test <test@kimg.invalid>",
                "ed25519",
                "sign",
                "never",
            ])
            .output()
            .expect("run gpg (install the gpg package)");
        assert!(
            out.status.success(),
            "gpg key generation: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TestKey { home }
    }

    fn export_to(&self, path: &Path) {
        let out = Command::new("gpg")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--batch", "--export"])
            .output()
            .expect("gpg export");
        assert!(out.status.success() && !out.stdout.is_empty());
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, out.stdout).expect("write keyring");
    }

    fn clearsign(&self, text: &str) -> Vec<u8> {
        let input = self.home.path().join("Release");
        std::fs::write(&input, text).expect("write");
        let out = Command::new("gpg")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
            .args(["--clearsign", "--output", "-"])
            .arg(&input)
            .output()
            .expect("gpg clearsign");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

impl Drop for TestKey {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

/// An apt config naming only `bookworm` (the test mirror overrides its URI).
fn apt_config_with_bookworm_only(root: &Path) {
    let list = root.join("etc/apt/sources.list");
    std::fs::create_dir_all(list.parent().expect("parent")).expect("mkdir");
    std::fs::write(list, "deb http://unused.invalid/debian bookworm main\n").expect("write");
}

fn deb_stanza(name: &str, depends: &str, data: &[u8]) -> String {
    format!(
        "Package: {name}\nVersion: 1.0-1\nArchitecture: amd64\n{depends}\
         Filename: pool/main/{name}_1.0-1_amd64.deb\nSize: {}\nSHA256: {}\n\n",
        data.len(),
        sha(data)
    )
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut enc = xz2::write::XzEncoder::new(Vec::new(), 6);
    enc.write_all(data).expect("xz");
    enc.finish().expect("xz")
}

/// Builds a signed one-suite mirror: runc → libc6, libseccomp2; adduser (not a lib).
fn signed_mirror(key: &TestKey) -> (HashMap<String, Vec<u8>>, Vec<u8>) {
    let debs: [(&str, &str, &[u8]); 4] = [
        (
            "runc",
            "Depends: libc6 (>= 2.34), libseccomp2, adduser\n",
            b"runc deb",
        ),
        ("libc6", "", b"libc6 deb"),
        ("libseccomp2", "Depends: libc6\n", b"libseccomp2 deb"),
        ("adduser", "", b"adduser deb"),
    ];
    let packages: String = debs.iter().map(|(n, d, b)| deb_stanza(n, d, b)).collect();
    let packages_xz = xz(packages.as_bytes());
    let release = format!(
        "Origin: Debian\nSuite: oldstable\nCodename: bookworm\nValid-Until: Sat, 01 Jan 2050 00:00:00 UTC\n\
         SHA256:\n {} {} main/binary-amd64/Packages.xz\n",
        sha(&packages_xz),
        packages_xz.len()
    );
    let inrelease = key.clearsign(&release);
    let mut files = HashMap::from([
        (
            "/debian/dists/bookworm/InRelease".to_string(),
            inrelease.clone(),
        ),
        (
            "/debian/dists/bookworm/main/binary-amd64/Packages.xz".to_string(),
            packages_xz,
        ),
    ]);
    for (n, _, b) in debs {
        files.insert(format!("/debian/pool/main/{n}_1.0-1_amd64.deb"), b.to_vec());
    }
    (files, inrelease)
}

#[test]
fn a_local_signed_mirror_is_locked_downloaded_and_rebuilt_offline_with_gpg() {
    let key = TestKey::generate();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    key.export_to(&root.join("usr/share/keyrings/debian-archive-keyring.gpg"));
    apt_config_with_bookworm_only(&root);
    let (files, _) = signed_mirror(&key);
    let mirror = TestMirror::start(files);
    let cache = dir.path().join("cache");
    let lock_path = dir.path().join("images/bookworm.lock");
    let opts = options(&root, &cache, &format!("{}/debian", mirror.url));

    let lock = ensure_locked(&opts, &lock_path, &["runc".into()], false).expect("lock");
    let names: Vec<_> = lock.packages.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["libc6", "libseccomp2", "runc"]);
    assert_eq!(lock.requested, ["runc"]);
    let text = std::fs::read_to_string(&lock_path).expect("lock written");
    assert!(!text.contains("127.0.0.1"), "no mirror in the lock");
    for p in &lock.packages {
        let path = fetch_package(&opts, p).expect("download");
        assert_eq!(
            crate::build::debian::fetch::hash_file(&path)
                .expect("hash")
                .1,
            p.sha256
        );
    }
    let online_requests = mirror.requests();

    // Offline, with the mirror pointed at nothing: the lock and cache suffice, and a full
    // re-resolution works from the cached, re-verified indexes.
    let offline = SourceOptions {
        offline: true,
        ..options(&root, &cache, UNROUTABLE)
    };
    let again = ensure_locked(&offline, &lock_path, &["runc".into()], false).expect("lock reuse");
    assert_eq!(again, lock);
    let re =
        ensure_locked(&offline, &lock_path, &["runc".into()], true).expect("offline re-resolve");
    assert_eq!(re, lock);
    for p in &lock.packages {
        fetch_package(&offline, p).expect("cache hit");
    }
    // Online but unreachable: the cached InRelease is used after re-verification.
    let unreachable = options(&root, &cache, UNROUTABLE);
    ensure_locked(&unreachable, &lock_path, &["runc".into()], true).expect("cache fallback");
    assert_eq!(
        mirror.requests(),
        online_requests,
        "no request reached the mirror"
    );

    // A name missing from the lock needs the index, and an unknown one is reported.
    let err = ensure_locked(&offline, &lock_path, &["rnuc".into()], false).unwrap_err();
    assert!(err.to_string().contains("did you mean runc"), "{err}");
}

#[test]
fn a_tampered_inrelease_or_a_foreign_key_is_refused_with_gpg() {
    let key = TestKey::generate();
    let other = TestKey::generate();
    let dir = tempfile::tempdir().expect("tempdir");
    let keyring = dir.path().join("k.gpg");
    key.export_to(&keyring);
    let (_, inrelease) = signed_mirror(&key);
    let text = release::verify_clearsigned(&inrelease, std::slice::from_ref(&keyring), "t")
        .expect("valid");
    assert!(text.contains("Codename: bookworm"));

    let tampered = String::from_utf8(inrelease.clone())
        .expect("utf8")
        .replace("Codename: bookworm", "Codename: bookwurm");
    let err = release::verify_clearsigned(tampered.as_bytes(), std::slice::from_ref(&keyring), "t")
        .unwrap_err();
    match &err {
        SourceError::VerifySignature { status, .. } => {
            assert!(status.contains("BADSIG"), "{status}")
        }
        e => panic!("unexpected {e}"),
    }

    let foreign = dir.path().join("other.gpg");
    other.export_to(&foreign);
    let err = release::verify_clearsigned(&inrelease, &[foreign], "t").unwrap_err();
    assert!(matches!(err, SourceError::VerifySignature { .. }), "{err}");

    // Served through the mirror, the tampered file fails the whole lock step.
    let root = dir.path().join("root");
    key.export_to(&root.join("usr/share/keyrings/debian-archive-keyring.gpg"));
    apt_config_with_bookworm_only(&root);
    let (mut files, _) = signed_mirror(&key);
    files.insert(
        "/debian/dists/bookworm/InRelease".into(),
        tampered.into_bytes(),
    );
    let mirror = TestMirror::start(files);
    let opts = options(
        &root,
        &dir.path().join("cache"),
        &format!("{}/debian", mirror.url),
    );
    let err =
        ensure_locked(&opts, &dir.path().join("l.lock"), &["runc".into()], false).unwrap_err();
    assert!(matches!(err, SourceError::VerifySignature { .. }), "{err}");
    assert!(!dir.path().join("cache/indexes/InRelease-bookworm").exists());
}

#[test]
fn a_packages_index_not_matching_the_signed_release_is_refused_with_gpg() {
    let key = TestKey::generate();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    key.export_to(&root.join("usr/share/keyrings/debian-archive-keyring.gpg"));
    apt_config_with_bookworm_only(&root);
    let (mut files, _) = signed_mirror(&key);
    files.insert(
        "/debian/dists/bookworm/main/binary-amd64/Packages.xz".into(),
        xz(deb_stanza("runc", "", b"evil").as_bytes()),
    );
    let mirror = TestMirror::start(files);
    let opts = options(
        &root,
        &dir.path().join("cache"),
        &format!("{}/debian", mirror.url),
    );
    let err =
        ensure_locked(&opts, &dir.path().join("l.lock"), &["runc".into()], false).unwrap_err();
    match &err {
        SourceError::HashMismatch { what, .. } => {
            assert_eq!(what, "bookworm/main/binary-amd64/Packages.xz")
        }
        e => panic!("unexpected {e}"),
    }
}

fn host_options(cache: PathBuf) -> SourceOptions {
    SourceOptions {
        quiet: true,
        ..SourceOptions::for_host(cache)
    }
}

#[test]
fn indexes_resolve_and_runc_downloads_against_the_host_mirror() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = host_options(dir.path().join("cache"));
    let lock_path = dir.path().join("bookworm.lock");
    let wanted: Vec<String> = ["etcd-server", "runc", "linux-image-cloud-amd64"]
        .iter()
        .map(|s| s.to_string())
        .collect();

    let cold = Instant::now();
    let lock = ensure_locked(&opts, &lock_path, &wanted, false).expect("cold resolve");
    let cold = cold.elapsed();
    let names: Vec<&str> = lock.packages.iter().map(|p| p.name.as_str()).collect();
    for n in [
        "etcd-server",
        "runc",
        "libc6",
        "libseccomp2",
        "linux-image-cloud-amd64",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    let kernel = lock
        .packages
        .iter()
        .find(|p| p.name.starts_with("linux-image-6.") && p.name.ends_with("-cloud-amd64"))
        .expect("real kernel package");
    assert!(kernel
        .required_by
        .contains(&"linux-image-cloud-amd64".to_string()));
    assert!(names.len() < 40, "closure too large: {names:?}");

    let warm = Instant::now();
    let relock = ensure_locked(&opts, &lock_path, &wanted, true).expect("warm resolve");
    let warm = warm.elapsed();
    assert_eq!(relock.packages, lock.packages);

    let runc = lock
        .packages
        .iter()
        .find(|p| p.name == "runc")
        .expect("runc");
    let dl = Instant::now();
    let path = fetch_package(&opts, runc).expect("download runc");
    let dl = dl.elapsed();
    assert_eq!(std::fs::metadata(&path).expect("deb").len(), runc.size);

    let offline = SourceOptions {
        offline: true,
        mirror_override: Some(UNROUTABLE.into()),
        security_mirror_override: Some(UNROUTABLE.into()),
        ..opts.clone()
    };
    let off = Instant::now();
    let re = ensure_locked(&offline, &lock_path, &wanted, true).expect("offline re-resolve");
    let off = off.elapsed();
    assert_eq!(re.packages, lock.packages);
    assert_eq!(fetch_package(&offline, runc).expect("cache hit"), path);

    let index_bytes: u64 = std::fs::read_dir(dir.path().join("cache/indexes"))
        .expect("indexes")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    // The whole package set of the images stays a small closure.
    let all: Vec<String> = [
        "etcd-server",
        "containerd",
        "runc",
        "linux-image-cloud-amd64",
        "busybox-static",
        "nftables",
        "containernetworking-plugins",
        "systemd-boot-efi",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let full = ensure_locked(&offline, &lock_path, &all, false).expect("full set from cache");
    let full_names: Vec<&str> = full.packages.iter().map(|p| p.name.as_str()).collect();
    assert!(full_names.contains(&"libnftables1"), "{full_names:?}");
    assert!(full_names.len() < 60, "closure too large: {full_names:?}");
    assert!(
        !full_names
            .iter()
            .any(|n| n.starts_with("systemd") && *n != "systemd-boot-efi"),
        "{full_names:?}"
    );
    eprintln!(
        "host mirror full set: {} packages: {}",
        full_names.len(),
        full_names.join(" ")
    );
    eprintln!(
        "host mirror figures: cold fetch+verify+resolve {cold:?}, warm {warm:?}, offline {off:?}, \
         runc download {dl:?} ({} bytes), index cache {index_bytes} bytes, {} locked packages",
        runc.size,
        lock.packages.len()
    );
}

#[test]
fn a_tampered_host_inrelease_fails_gpgv_against_the_host_mirror() {
    let opts = host_options(PathBuf::from("/nonexistent"));
    let sources = opts.suite_sources().expect("host apt sources");
    let main = sources
        .iter()
        .find(|s| s.suite == "bookworm")
        .expect("bookworm configured");
    let url = format!("{}/dists/bookworm/InRelease", main.uri);
    let bytes = fetch::get_small(&fetch::agent(), &url).expect("fetch InRelease");
    let text = release::verify_clearsigned(&bytes, &main.keyrings, &url).expect("verifies");
    assert!(text.contains("Codename: bookworm"));
    let tampered = String::from_utf8(bytes).expect("utf8").replacen(
        "Codename: bookworm",
        "Codename: bookwurm",
        1,
    );
    let err = release::verify_clearsigned(tampered.as_bytes(), &main.keyrings, &url).unwrap_err();
    assert!(err.to_string().contains("BADSIG"), "{err}");
}
