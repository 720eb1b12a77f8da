//! `kimg build` end to end (issue 3): real Debian packages from the host's mirror (cached),
//! real images, read back with `kimg inspect`, compared with `qemu-img`, and booted under
//! QEMU (direct kernel and UEFI through OVMF + systemd-boot).
//!
//! The first run downloads ~100 MB of packages into the kimg cache; later runs are offline.

mod common;
#[path = "common/qemu.rs"]
mod qemu;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use common::{kimg_in, kimg_ok};

const WORKER_MAC: &str = "52:54:00:00:00:11";
const MASTER_MAC: &str = "52:54:00:00:00:10";

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// A cluster whose machines are known by MAC, and a copy of the repository's lock file.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        kimg_ok(
            &root,
            &[
                "cluster",
                "new",
                "c",
                "--vip",
                "10.77.0.100",
                "--etcd",
                "10.77.0.12",
                "--masters",
                &format!("10.77.0.10@{MASTER_MAC}"),
                "--workers",
                &format!("10.77.0.11@{WORKER_MAC}"),
            ],
        );
        std::fs::create_dir_all(root.join("images")).unwrap();
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/images/bookworm.lock"),
            root.join("images/bookworm.lock"),
        )
        .expect("the repository has images/bookworm.lock");
        Fixture { _dir: dir, root }
    })
}

/// Builds `profile` into `<root>/<out>` (serialised: builds share the cache).
fn build(profile: &str, out: &str) -> PathBuf {
    build_with(profile, out, &[])
}

fn build_with(profile: &str, out: &str, extra: &[&str]) -> PathBuf {
    let f = fixture();
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut args = vec![
        "build",
        "--profile",
        profile,
        "--cluster",
        "c",
        "--out",
        out,
        "--quiet",
    ];
    args.extend_from_slice(extra);
    kimg_ok(&f.root, &args);
    f.root.join(out)
}

fn built(profile: &str) -> PathBuf {
    static DONE: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let out = format!("out/{profile}");
    let path = fixture().root.join(&out);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if !done.contains(&profile.to_string()) {
        // The tests read the initrd of every role.
        build_with(profile, &out, &["--allow-secrets-in-pxe"]);
        done.push(profile.to_string());
    }
    path
}

fn inspect_list(image: &Path) -> Vec<String> {
    let out = kimg_ok(Path::new("."), &["inspect", image.to_str().unwrap()]);
    out.lines()
        .map(|l| l.split_whitespace().last().unwrap_or_default().to_string())
        .collect()
}

fn sha256_of(path: &Path) -> String {
    common::tool_ok("sha256sum", &[path.to_str().unwrap()])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

const OUTPUTS: &[&str] = &[
    "vmlinuz",
    "initrd.img",
    "cmdline",
    "boot.ipxe",
    "disk.raw",
    "disk.qcow2",
    "manifest.json",
];

#[test]
fn two_worker_builds_at_different_times_are_byte_identical() {
    let a = build("worker", "repro-a");
    std::thread::sleep(Duration::from_millis(1500));
    let b = build("worker", "repro-b");
    for name in OUTPUTS {
        assert_eq!(
            sha256_of(&a.join(name)),
            sha256_of(&b.join(name)),
            "{name} differs between builds"
        );
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("manifest.json")).unwrap()).unwrap();
    for name in &OUTPUTS[..6] {
        assert_eq!(
            manifest["outputs"][name]["sha256"],
            sha256_of(&a.join(name)),
            "manifest hash of {name}"
        );
    }
    assert!(manifest["packages"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "containerd"));
}

#[test]
fn the_worker_image_carries_the_ca_cert_and_token_and_no_key() {
    let out = built("worker");
    for image in ["initrd.img", "disk.raw"] {
        let files = inspect_list(&out.join(image));
        let prefix = if image == "disk.raw" {
            "state:/kimg/"
        } else {
            "etc/kimg/"
        };
        assert!(
            files.contains(&format!("{prefix}pki/ca.crt")),
            "{image}: {files:?}"
        );
        assert!(files.contains(&format!("{prefix}token")), "{image}");
        let keys: Vec<_> = files
            .iter()
            .filter(|f| f.ends_with(".key") || f.contains("etcd/"))
            .collect();
        assert!(keys.is_empty(), "{image} carries keys: {keys:?}");
    }
    let token = kimg_ok(
        Path::new("."),
        &[
            "inspect",
            out.join("initrd.img").to_str().unwrap(),
            "etc/kimg/token",
        ],
    );
    let tokens = std::fs::read_to_string(fixture().root.join("c/secrets/tokens.toml")).unwrap();
    assert!(
        tokens.contains(&token.trim()[7..]),
        "the baked token is the cluster's"
    );
    let entry = kimg_ok(
        Path::new("."),
        &[
            "inspect",
            out.join("disk.raw").to_str().unwrap(),
            "esp:/loader/entries/kimg.conf",
        ],
    );
    assert!(
        entry.contains("kimg.state=disk"),
        "the disk's entry says STATE is on the disk: {entry}"
    );
    let pxe = std::fs::read_to_string(out.join("cmdline")).unwrap()
        + &std::fs::read_to_string(out.join("boot.ipxe")).unwrap();
    assert!(!pxe.contains("kimg.state"), "a PXE boot has no STATE disk");
    let files = inspect_list(&out.join("initrd.img"));
    for f in [
        "init",
        "usr/bin/containerd",
        "usr/bin/containerd-shim-runc-v2",
        "usr/sbin/runc",
        "usr/sbin/nft",
        "usr/lib/cni/bridge",
    ] {
        assert!(files.iter().any(|x| x == f), "worker lacks {f}");
    }
    assert!(
        files.iter().any(|f| f.ends_with("libseccomp.so.2")),
        "runc's DT_NEEDED library is taken"
    );
    assert!(
        !files.iter().any(|f| f == "usr/bin/etcd"),
        "a worker carries no etcd"
    );
}

#[test]
fn the_master_image_has_no_etcd_ca_key_and_the_etcd_image_no_cluster_ca_key() {
    let files = inspect_list(&built("master").join("initrd.img"));
    assert!(
        files.iter().any(|f| f == "etc/kimg/pki/ca.key"),
        "masters sign kubelet CSRs"
    );
    assert!(files.iter().any(|f| f == "etc/kimg/pki/etcd/ca.crt"));
    assert!(
        !files.iter().any(|f| f == "etc/kimg/pki/etcd/ca.key"),
        "{files:?}"
    );
    let files = inspect_list(&built("etcd").join("initrd.img"));
    assert!(files.iter().any(|f| f == "usr/bin/etcd"));
    for forbidden in [
        "etc/kimg/pki/ca.key",
        "etc/kimg/pki/sa.key",
        "etc/kimg/pki/etcd/ca.key",
    ] {
        assert!(
            !files.iter().any(|f| f == forbidden),
            "etcd image carries {forbidden}"
        );
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Issue 13: outputs holding keys are private, and a master gets no PXE bundle (whose
/// initrd anyone on the PXE network could download) unless asked for explicitly.
#[test]
fn build_outputs_keep_the_cluster_keys_private() {
    let out = build("master", "out/master-private");
    assert_eq!(mode(&out), 0o700, "the output directory");
    for f in ["disk.raw", "disk.qcow2"] {
        assert_eq!(mode(&out.join(f)), 0o600, "{f}");
    }
    for f in ["initrd.img", "boot.ipxe", "cmdline"] {
        assert!(
            !out.join(f).exists(),
            "{f} written without --allow-secrets-in-pxe"
        );
    }
    assert!(out.join("vmlinuz").exists(), "the kernel holds no secret");
    let flagged = built("master");
    assert_eq!(mode(&flagged), 0o700);
    assert_eq!(mode(&flagged.join("initrd.img")), 0o600);
    assert!(flagged.join("boot.ipxe").exists());
    // Workers are what PXE fleets boot: their bundle (no private key) is written by
    // default and world-readable, as TFTP servers serve only such files.
    let worker = built("worker");
    assert_eq!(mode(&worker.join("initrd.img")), 0o644);
    assert!(worker.join("boot.ipxe").exists());
}

#[test]
fn qemu_img_finds_the_qcow2_identical_to_the_raw_disk() {
    let out = built("worker");
    let res = common::tool_ok(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            out.join("disk.raw").to_str().unwrap(),
            out.join("disk.qcow2").to_str().unwrap(),
        ],
    );
    assert!(res.contains("Images are identical"), "{res}");
}

#[test]
fn the_initrd_boots_directly_and_prints_the_booted_line_under_qemu_tcg() {
    let out = built("worker");
    let work = tempfile::tempdir().unwrap();
    let cmdline = std::fs::read_to_string(out.join("cmdline")).unwrap();
    let mut vm = qemu::start(
        qemu::Boot::Direct {
            vmlinuz: &out.join("vmlinuz"),
            initrd: &out.join("initrd.img"),
            cmdline: cmdline.trim(),
        },
        WORKER_MAC,
        work.path(),
        "direct",
    );
    let t = vm.wait_for(
        "kimg: booted role=worker node=worker-1",
        Duration::from_secs(240),
    );
    eprintln!(
        "BENCH boot direct-kernel power-on→booted {:.1}s",
        t.as_secs_f64()
    );
}

#[test]
fn the_uefi_disk_boots_through_ovmf_and_prints_the_booted_line_under_qemu_tcg() {
    let out = built("master");
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("disk.raw");
    std::fs::copy(out.join("disk.raw"), &disk).unwrap();
    let mut vm = qemu::start(
        qemu::Boot::Uefi {
            disk: &disk,
            vars: &work.path().join("vars.fd"),
        },
        MASTER_MAC,
        work.path(),
        "uefi",
    );
    let t = vm.wait_for(
        "kimg: booted role=master node=master-1",
        Duration::from_secs(300),
    );
    eprintln!("BENCH boot uefi power-on→booted {:.1}s", t.as_secs_f64());
    let t = vm.wait_for("kimg: state kind=ext4", Duration::from_secs(60));
    eprintln!("BENCH boot uefi power-on→state {:.1}s", t.as_secs_f64());
}

#[test]
fn build_errors_name_what_is_wrong() {
    let f = fixture();
    let out = kimg_in(&f.root, &["build", "--profile", "wrker", "--cluster", "c"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown profile \"wrker\""),
        "{err}"
    );

    let out = kimg_in(
        &f.root,
        &["build", "--profile", "worker", "--cluster", "nope"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no cluster definition in nope"),
        "{err}"
    );

    std::fs::write(
        f.root.join("bad.toml"),
        "roles = [\"worker\"]\npackages = [\"kimg-no-such-package\"]\n",
    )
    .unwrap();
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let out = kimg_in(
        &f.root,
        &[
            "build",
            "--profile",
            "./bad.toml",
            "--cluster",
            "c",
            "--lock",
            "bad.lock",
            "--quiet",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("kimg-no-such-package"),
        "{err}"
    );

    let empty = tempfile::tempdir().unwrap();
    let out = kimg_in(
        &f.root,
        &[
            "build",
            "--profile",
            "etcd",
            "--cluster",
            "c",
            "--lock",
            "empty.lock",
            "--quiet",
            "--mirror",
            "http://127.0.0.1:9/debian",
            "--cache-dir",
            empty.path().to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("127.0.0.1:9")
            && err.to_lowercase().contains("cache"),
        "{err}"
    );
}
