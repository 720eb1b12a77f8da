//! Boot tests: the images this module and `cpio` write really boot a Debian kernel.
//!
//! Needs a VM and host files: `qemu-system-x86_64` (TCG — KVM guests hang on these hosts),
//! OVMF (`ovmf`), systemd-boot (`systemd-boot-efi`), a static busybox (`busybox-static`)
//! and a kernel named by `KIMG_TEST_KERNEL` (Debian's 6.1 cloud kernel needs no modules
//! here: the initramfs is built in and the ESP is read by the firmware). The initramfs's
//! `/init` prints one console line and powers off; the tests wait for that line (120 s)
//! and print `kimg-figure:` lines with the power-on → line times.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{systemd_boot_esp, write_disk, write_qcow2, DiskSpec};
use crate::build::cpio::{write_initrd, Codec};
use crate::build::tree::Tree;

const BOOT_LINE: &str = "kimg: booted role=test node=test";
const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";
const BUSYBOX: &str = "/bin/busybox";
const EPOCH: u64 = 1_700_000_000;

fn kernel() -> Vec<u8> {
    let path = std::env::var_os("KIMG_TEST_KERNEL").unwrap_or_else(|| {
        panic!(
            "KIMG_TEST_KERNEL is not set: point it at a vmlinuz of Debian's \
             linux-image-*-cloud-amd64 (e.g. from `apt-get download` + `dpkg-deb -x`)"
        )
    });
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read KIMG_TEST_KERNEL {path:?}: {e}"))
}

fn host_file(path: &str, package: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{path} ({package}) is needed: {e}"))
}

/// A busybox initramfs whose /init prints [`BOOT_LINE`] and powers off. With `padding`,
/// it also carries `/padding` (1 MiB of noise, 6 MiB of zeros, the same noise again: the
/// repeat is only reachable with an 8 MiB zstd window) and prints the line only if the
/// file's SHA-256 matches — proof that the kernel unpacked the whole archive.
fn initramfs(padding: bool) -> Tree {
    let mut t = Tree::new();
    let mut check = String::new();
    if padding {
        let mut noise = vec![0u8; 1 << 20];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for b in noise.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let mut data = noise.clone();
        data.resize(7 << 20, 0);
        data.extend_from_slice(&noise);
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data));
        t.insert_file("padding", 0o644, data);
        check = format!(
            "/bin/busybox sha256sum /padding | /bin/busybox grep -q '^{digest} ' || \
             {{ /bin/busybox echo 'kimg: padding corrupt'; /bin/busybox poweroff -f; }}\n"
        );
    }
    t.insert_file("bin/busybox", 0o755, host_file(BUSYBOX, "busybox-static"));
    t.insert_symlink("bin/sh", "busybox");
    for dir in ["dev", "proc", "sys"] {
        t.insert_dir(dir, 0o755);
    }
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t devtmpfs devtmpfs /dev\n\
         exec >/dev/console 2>&1 </dev/console\n\
         {check}\
         /bin/busybox echo '{BOOT_LINE}'\n\
         /bin/busybox poweroff -f\n"
    );
    t.insert_file("init", 0o755, init.into_bytes());
    t
}

/// Starts QEMU (TCG) with `args`, waits for [`BOOT_LINE`] on the serial console, kills
/// QEMU by its PID and returns the time from spawn to the line.
fn boot(args: &[String], log: &Path) -> Duration {
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-machine", "q35", "-m", "512", "-accel", "tcg", "-smp", "1"])
        .args([
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 (qemu-system-x86) is needed");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line).into_owned();
            seen.push_str(&text);
            seen.push('\n');
            if text.contains(BOOT_LINE) {
                let _ = tx.send(start.elapsed());
            }
        }
        seen
    });
    let result = rx.recv_timeout(Duration::from_secs(120));
    let _ = child.kill();
    let _ = child.wait();
    let console = reader.join().unwrap_or_default();
    let _ = std::fs::write(log, &console);
    let tail: Vec<&str> = console.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    match result {
        Ok(elapsed) => elapsed,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!(
                "no {BOOT_LINE:?} within 120 s; console tail:\n{}",
                tail.join("\n")
            )
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
            "QEMU exited after {:?} without printing {BOOT_LINE:?}; console tail:\n{}",
            start.elapsed(),
            tail.join("\n")
        ),
    }
}

fn work_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

#[test]
fn a_large_window_zstd_initrd_boots_a_debian_kernel_directly_under_qemu_tcg() {
    let dir = work_dir();
    let kernel_path = dir.path().join("vmlinuz");
    std::fs::write(&kernel_path, kernel()).unwrap();
    let initrd_path = dir.path().join("initrd.img");
    let started = Instant::now();
    let initrd = write_initrd(&initramfs(true), EPOCH, Codec::ZstdBest).unwrap();
    eprintln!(
        "kimg-figure: initrd_write_ms={} initrd_bytes={}",
        started.elapsed().as_millis(),
        initrd.len()
    );
    std::fs::write(&initrd_path, initrd).unwrap();
    let args: Vec<String> = vec![
        "-kernel".into(),
        kernel_path.display().to_string(),
        "-initrd".into(),
        initrd_path.display().to_string(),
        "-append".into(),
        "console=ttyS0 panic=-1".into(),
    ];
    let took = boot(&args, &dir.path().join("console.log"));
    eprintln!(
        "kimg-figure: direct_kernel_boot_to_init_line_ms={}",
        took.as_millis()
    );
}

#[test]
fn the_uefi_disk_boots_through_ovmf_and_systemd_boot_under_qemu_tcg() {
    let dir = work_dir();
    let started = Instant::now();
    let initrd = write_initrd(&initramfs(false), EPOCH, Codec::Zstd).unwrap();
    let esp = systemd_boot_esp(
        host_file(SYSTEMD_BOOT, "systemd-boot-efi"),
        kernel(),
        initrd,
        "console=ttyS0 panic=-1",
        "kimg boot test",
    );
    let mut state = Tree::new();
    state.insert_file(
        "kimg/cluster.toml",
        0o600,
        b"name = \"boot-test\"\n".to_vec(),
    );
    let spec = DiskSpec {
        esp,
        state,
        esp_size_mib: 64,
        state_size_mib: 64,
        seed: "boot-test".into(),
        epoch: EPOCH,
    };
    let raw = dir.path().join("disk.raw");
    write_disk(&spec, &raw).unwrap();
    let raw_ms = started.elapsed().as_millis();
    let started = Instant::now();
    let qcow2 = dir.path().join("disk.qcow2");
    let stats = write_qcow2(&raw, &qcow2).unwrap();
    eprintln!(
        "kimg-figure: disk_raw_write_ms={raw_ms} qcow2_write_ms={} raw_bytes={} raw_allocated_bytes={} qcow2_bytes={}",
        started.elapsed().as_millis(),
        stats.virtual_size,
        allocated(&raw),
        stats.file_size
    );
    let compare = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .output()
        .expect("qemu-img (qemu-utils) is needed");
    assert!(
        compare.status.success(),
        "{}",
        String::from_utf8_lossy(&compare.stdout)
    );
    let check = Command::new("qemu-img")
        .arg("check")
        .arg(&qcow2)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    let vars = dir.path().join("OVMF_VARS.fd");
    std::fs::copy(OVMF_VARS, &vars).expect("OVMF_VARS.fd (ovmf) is needed");
    assert!(
        Path::new(OVMF_CODE).exists(),
        "{OVMF_CODE} (ovmf) is needed"
    );
    for (name, image, format) in [("raw", &raw, "raw"), ("qcow2", &qcow2, "qcow2")] {
        let args: Vec<String> = vec![
            "-drive".into(),
            format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"),
            "-drive".into(),
            format!("if=pflash,format=raw,file={}", vars.display()),
            "-drive".into(),
            format!("file={},format={format},if=virtio", image.display()),
        ];
        let took = boot(&args, &dir.path().join(format!("console-{name}.log")));
        eprintln!(
            "kimg-figure: uefi_{name}_boot_to_init_line_ms={}",
            took.as_millis()
        );
    }
}

fn allocated(path: &PathBuf) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}
