//! QEMU for the runner: choosing the accelerator, building a VM's command line, and the
//! guard that owns a running VM.
//!
//! The accelerator probe boots one of the scenario's kernels under KVM for 5 s and looks
//! for its `Command line:` with a marker word on the serial console; if it does not appear
//! (on these machines KVM guests hang, see shared/FACTS.md) the run uses TCG.
//!
//! Every VM runs as `ip netns exec <ns> qemu-system-x86_64 …` (ip execs QEMU, so the PID we
//! hold is QEMU's) with `-nodefaults -display none -no-reboot`, its serial console appended to
//! `<work>/<vm>.console.log`, and one virtio NIC on the VM's tap inside the namespace.
//! PXE boots use SeaBIOS and QEMU's iPXE option ROM for virtio-net (package ipxe-qemu).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::lab::process::{Group, ProcessError};

pub const QEMU: &str = "qemu-system-x86_64";
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("vm {vm}: {} is missing", path.display())]
    BootFileMissing { vm: String, path: PathBuf },
    #[error("vm {vm}: cannot prepare {}", path.display())]
    PrepareDiskFailed {
        vm: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vm {vm}: cannot start qemu")]
    StartFailed {
        vm: String,
        #[source]
        source: ProcessError,
    },
    #[error("vm {vm}: qemu did not start: {detail} (its output is in {})", log.display())]
    DetachFailed {
        vm: String,
        log: PathBuf,
        detail: String,
    },
    #[error("accelerator probe failed")]
    ProbeFailed(#[source] std::io::Error),
}

/// How a machine boots: the image's kernel and initrd directly, its UEFI disk through
/// OVMF, or the network (iPXE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootMode {
    #[default]
    Kernel,
    Uefi,
    Pxe,
}

/// Which accelerator to ask for: `auto` probes KVM and falls back to TCG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccelChoice {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

const PROBE_MARKER: &str = "kimg-accel-probe";

/// Boots `kernel` (no initrd) with `accel` for up to `limit`; true if the kernel got as far
/// as printing its command line, which carries a marker word.
pub fn probe(accel: Accel, kernel: &Path, dir: &Path, limit: Duration) -> Result<bool, QemuError> {
    let log = dir.join(format!("probe-{}.log", accel.name()));
    let _ = std::fs::remove_file(&log);
    let mut cmd = Command::new(QEMU);
    cmd.args([
        "-accel",
        accel.name(),
        "-m",
        "128",
        "-nodefaults",
        "-display",
        "none",
    ])
    .args(["-no-reboot", "-serial"])
    .arg(format!("file:{}", log.display()))
    .arg("-kernel")
    .arg(kernel)
    .args(["-append", &format!("console=ttyS0 panic=-1 {PROBE_MARKER}")]);
    let mut group = Group::spawn(cmd, &dir.join("probe-qemu.log"))
        .map_err(|e| QemuError::ProbeFailed(std::io::Error::other(e)))?;
    let end = Instant::now() + limit;
    let seen = loop {
        let text = std::fs::read(&log).unwrap_or_default();
        if String::from_utf8_lossy(&text).contains(&format!(
            "Command line: console=ttyS0 panic=-1 {PROBE_MARKER}"
        )) {
            break true;
        }
        if Instant::now() >= end || group.has_exited() || crate::lab::process::interrupted() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    group.kill();
    Ok(seen)
}

/// Resolves the scenario's accelerator choice (`KIMG_QEMU_ACCEL=kvm|tcg` overrides it).
/// `auto` uses KVM only if `/dev/kvm` exists and a 5 s probe boot of `kernel` under KVM
/// prints its command line; without a kernel to probe with it picks TCG. (A boot-sector
/// probe is not enough: on these hosts KVM runs real-mode code, then hangs in the kernel.)
pub fn choose_accel(
    choice: AccelChoice,
    kernel: Option<&Path>,
    dir: &Path,
) -> Result<Accel, QemuError> {
    let choice = match std::env::var("KIMG_QEMU_ACCEL").as_deref() {
        Ok("kvm") => AccelChoice::Kvm,
        Ok("tcg") => AccelChoice::Tcg,
        _ => choice,
    };
    match (choice, kernel) {
        (AccelChoice::Kvm, _) => Ok(Accel::Kvm),
        (AccelChoice::Tcg, _) | (AccelChoice::Auto, None) => Ok(Accel::Tcg),
        (AccelChoice::Auto, _) if !Path::new("/dev/kvm").exists() => Ok(Accel::Tcg),
        (AccelChoice::Auto, Some(kernel)) => {
            Ok(if probe(Accel::Kvm, kernel, dir, Duration::from_secs(5))? {
                Accel::Kvm
            } else {
                Accel::Tcg
            })
        }
    }
}

/// Everything needed to power a VM on, with placeholders already expanded.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub name: String,
    pub mac: String,
    pub memory: u32,
    pub cpus: u32,
    pub boot: BootMode,
    pub image: Option<PathBuf>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub disk_size: Option<u64>,
    pub tap: String,
}

/// Files a VM boots from, checked to exist, and its per-run disks.
#[derive(Debug, Clone, PartialEq)]
pub struct BootPlan {
    pub kernel: Option<(PathBuf, Option<PathBuf>, String)>,
    pub uefi_vars: Option<PathBuf>,
    pub disks: Vec<PathBuf>,
}

fn need(vm: &str, path: PathBuf) -> Result<PathBuf, QemuError> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(QemuError::BootFileMissing {
            vm: vm.to_owned(),
            path,
        })
    }
}

fn with_console(base: &str, extra: &str) -> String {
    let mut words: Vec<&str> = base.split_whitespace().collect();
    if !words.iter().any(|w| w.starts_with("console=ttyS0")) {
        words.push("console=ttyS0");
    }
    words.extend(extra.split_whitespace());
    words.join(" ")
}

/// Checks boot files and creates per-run disks (once; they survive restarts).
pub fn prepare(vm: &VmConfig, work: &Path) -> Result<BootPlan, QemuError> {
    let prep_err = |path: &Path, source| QemuError::PrepareDiskFailed {
        vm: vm.name.clone(),
        path: path.to_owned(),
        source,
    };
    let mut plan = BootPlan {
        kernel: None,
        uefi_vars: None,
        disks: Vec::new(),
    };
    match (vm.boot, &vm.image) {
        (BootMode::Kernel, Some(image)) => {
            let cmdline = std::fs::read_to_string(need(&vm.name, image.join("cmdline"))?)
                .map_err(|e| prep_err(&image.join("cmdline"), e))?;
            plan.kernel = Some((
                need(&vm.name, image.join("vmlinuz"))?,
                Some(need(&vm.name, image.join("initrd.img"))?),
                with_console(cmdline.trim(), &vm.cmdline),
            ));
        }
        (BootMode::Kernel, None) => {
            let kernel = vm.kernel.clone().unwrap_or_default();
            let initrd = vm.initrd.clone().map(|i| need(&vm.name, i)).transpose()?;
            plan.kernel = Some((
                need(&vm.name, kernel)?,
                initrd,
                with_console("panic=-1", &vm.cmdline),
            ));
        }
        // SeaBIOS hands over to the NIC's iPXE ROM (bootindex=1); serving DHCP/TFTP is
        // the scenario's job, so there is nothing to prepare beyond the optional disk.
        (BootMode::Pxe, _) => {}
        (BootMode::Uefi, image) => {
            let vars = work.join(format!("{}.OVMF_VARS.fd", vm.name));
            if !vars.exists() {
                std::fs::copy(need(&vm.name, OVMF_VARS.into())?, &vars)
                    .map_err(|e| prep_err(&vars, e))?;
            }
            need(&vm.name, OVMF_CODE.into())?;
            plan.uefi_vars = Some(vars);
            if let Some(image) = image {
                let disk = work.join(format!("{}.disk.raw", vm.name));
                if !disk.exists() {
                    let src = need(&vm.name, image.join("disk.raw"))?;
                    let status = Command::new("cp")
                        .arg("--sparse=always")
                        .arg(&src)
                        .arg(&disk)
                        .status()
                        .map_err(|e| prep_err(&disk, e))?;
                    if !status.success() {
                        return Err(prep_err(&disk, std::io::Error::other("cp failed")));
                    }
                }
                plan.disks.push(disk);
            }
        }
    }
    if let Some(size) = vm.disk_size {
        let disk = work.join(format!("{}.data.raw", vm.name));
        if !disk.exists() {
            std::fs::File::create(&disk)
                .and_then(|f| f.set_len(size))
                .map_err(|e| prep_err(&disk, e))?;
        }
        plan.disks.push(disk);
    }
    Ok(plan)
}

/// The QEMU arguments (after `ip netns exec NS`) for a VM.
pub fn command_line(vm: &VmConfig, plan: &BootPlan, accel: Accel, console: &Path) -> Vec<String> {
    let mut args: Vec<String> = vec![QEMU.into(), "-name".into(), vm.name.clone()];
    let mut push = |items: &[&str]| args.extend(items.iter().map(|s| s.to_string()));
    push(&[
        "-accel",
        accel.name(),
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
    ]);
    push(&["-m", &vm.memory.to_string(), "-smp", &vm.cpus.to_string()]);
    push(&[
        "-chardev",
        &format!("file,id=con0,path={},append=on", console.display()),
    ]);
    push(&["-serial", "chardev:con0"]);
    push(&[
        "-netdev",
        &format!("tap,id=n0,ifname={},script=no,downscript=no", vm.tap),
    ]);
    let bootindex = if vm.boot == BootMode::Pxe {
        ",bootindex=1"
    } else {
        ""
    };
    push(&[
        "-device",
        &format!("virtio-net-pci,netdev=n0,mac={}{bootindex}", vm.mac),
    ]);
    if let Some((kernel, initrd, cmdline)) = &plan.kernel {
        push(&["-kernel", &kernel.display().to_string(), "-append", cmdline]);
        if let Some(initrd) = initrd {
            push(&["-initrd", &initrd.display().to_string()]);
        }
    }
    if let Some(vars) = &plan.uefi_vars {
        push(&[
            "-drive",
            &format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"),
        ]);
        push(&[
            "-drive",
            &format!("if=pflash,format=raw,file={}", vars.display()),
        ]);
    }
    for (i, disk) in plan.disks.iter().enumerate() {
        let bootindex = if i == 0 && vm.boot == BootMode::Uefi {
            ",bootindex=1"
        } else {
            ""
        };
        push(&[
            "-drive",
            &format!("file={},format=raw,if=none,id=d{i}", disk.display()),
        ]);
        push(&["-device", &format!("virtio-blk-pci,drive=d{i}{bootindex}")]);
    }
    args
}

/// A running VM; SIGKILLed and reaped when dropped.
#[derive(Debug)]
pub struct VmProcess {
    group: Group,
    pub powered_on: Instant,
}

impl VmProcess {
    pub fn start(
        netns: &str,
        args: &[String],
        qemu_log: &Path,
        vm: &str,
    ) -> Result<VmProcess, QemuError> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]).args(args);
        let group = Group::spawn(cmd, qemu_log).map_err(|source| QemuError::StartFailed {
            vm: vm.to_owned(),
            source,
        })?;
        Ok(VmProcess {
            group,
            powered_on: Instant::now(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.group.pid()
    }

    pub fn has_exited(&self) -> bool {
        self.group.has_exited()
    }

    /// Power loss: SIGKILL to QEMU.
    pub fn kill(mut self) {
        self.group.kill();
    }
}

/// Powers a VM on as a daemon that outlives this process (`kimg lab`): QEMU's own
/// `-daemonize`, so it returns once QEMU has opened its devices, and `-pidfile`. Returns
/// QEMU's PID. Output from before it detached is appended to `qemu_log`.
pub fn start_detached(
    netns: &str,
    args: &[String],
    qemu_log: &Path,
    pidfile: &Path,
    vm: &str,
) -> Result<u32, QemuError> {
    let failed = |detail: String| QemuError::DetachFailed {
        vm: vm.to_owned(),
        log: qemu_log.to_owned(),
        detail,
    };
    let _ = std::fs::remove_file(pidfile);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns])
        .args(args)
        .arg("-daemonize")
        .arg("-pidfile")
        .arg(pidfile);
    let (code, output) = super::process::run_captured(
        cmd,
        &qemu_log.with_extension("start.log"),
        Duration::from_secs(60),
    )
    .map_err(|e| failed(e.to_string()))?;
    if let Ok(mut log) = std::fs::File::options()
        .create(true)
        .append(true)
        .open(qemu_log)
    {
        use std::io::Write;
        let _ = log.write_all(output.as_bytes());
    }
    let _ = std::fs::remove_file(qemu_log.with_extension("start.log"));
    if code != Some(0) {
        let last = output.lines().last().unwrap_or("no output").to_owned();
        return Err(failed(format!("exit {code:?}: {last}")));
    }
    std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| failed(format!("no PID in {}", pidfile.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(boot: BootMode) -> VmConfig {
        VmConfig {
            name: "a".into(),
            mac: "52:54:00:00:00:01".into(),
            memory: 256,
            cpus: 1,
            boot,
            image: None,
            kernel: None,
            initrd: None,
            cmdline: "kimg.ip=10.0.0.2/24".into(),
            disk_size: None,
            tap: "tap0".into(),
        }
    }

    #[test]
    fn direct_kernel_boot_checks_files_and_adds_the_serial_console() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = vm(BootMode::Kernel);
        cfg.kernel = Some(dir.path().join("vmlinuz"));
        assert!(matches!(
            prepare(&cfg, dir.path()),
            Err(QemuError::BootFileMissing { .. })
        ));
        std::fs::write(dir.path().join("vmlinuz"), b"k").expect("write");
        cfg.disk_size = Some(1 << 20);
        let plan = prepare(&cfg, dir.path()).expect("plan");
        let (_, initrd, cmdline) = plan.kernel.clone().expect("kernel plan");
        assert_eq!(initrd, None);
        assert_eq!(cmdline, "panic=-1 console=ttyS0 kimg.ip=10.0.0.2/24");
        assert_eq!(plan.disks, vec![dir.path().join("a.data.raw")]);
        let args = command_line(&cfg, &plan, Accel::Tcg, Path::new("/w/a.console.log")).join(" ");
        assert!(args.contains("-accel tcg"), "{args}");
        assert!(
            args.contains("-netdev tap,id=n0,ifname=tap0,script=no,downscript=no"),
            "{args}"
        );
        assert!(
            args.contains("virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01 "),
            "{args}"
        );
        assert!(args.contains("path=/w/a.console.log,append=on"), "{args}");
        assert!(!args.contains("pflash"), "{args}");
    }

    #[test]
    fn an_image_with_uefi_boots_a_copy_of_its_disk_through_ovmf_needs_ovmf() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("out");
        std::fs::create_dir(&image).expect("mkdir");
        std::fs::write(image.join("disk.raw"), b"disk").expect("write");
        let mut cfg = vm(BootMode::Uefi);
        cfg.image = Some(image);
        let plan = prepare(&cfg, dir.path()).expect("plan (needs the ovmf package)");
        assert_eq!(std::fs::read(&plan.disks[0]).expect("copy"), b"disk");
        let args = command_line(&cfg, &plan, Accel::Tcg, Path::new("c")).join(" ");
        assert!(
            args.contains("readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd"),
            "{args}"
        );
        assert!(
            args.contains("virtio-blk-pci,drive=d0,bootindex=1"),
            "{args}"
        );
        assert!(!args.contains("-kernel"), "{args}");
    }

    /// The fixture kernel from qemu-tests/fixtures/busybox-initrd.sh's cache, if built.
    fn cached_fixture_kernel() -> Option<PathBuf> {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        let dir = cache.join("kimg/qemu-fixtures");
        std::fs::read_dir(&dir).ok()?.flatten().find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let kver = name.strip_prefix("linux-image-")?;
            let k = e.path().join(format!("root/boot/vmlinuz-{kver}"));
            k.is_file().then_some(k)
        })
    }

    #[test]
    fn the_probe_sees_a_kernel_boot_under_tcg_needs_qemu_and_the_host_mirror() {
        let kernel = cached_fixture_kernel().or_else(|| {
            let dir = tempfile::tempdir().ok()?.keep();
            let script = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/qemu-tests/fixtures/busybox-initrd.sh"
            );
            Command::new(script)
                .arg(&dir)
                .status()
                .ok()?
                .success()
                .then(|| dir.join("vmlinuz"))
        });
        let kernel = kernel.expect("fixture kernel (needs the Debian mirror once, then cached)");
        let dir = tempfile::tempdir().expect("tempdir");
        // TCG always boots; this proves the probe recognises a kernel that got going.
        let started = Instant::now();
        assert!(probe(Accel::Tcg, &kernel, dir.path(), Duration::from_secs(20)).expect("probe"));
        assert!(started.elapsed() < Duration::from_secs(20));
        // A file that is no kernel never prints the marker, and the probe gives up in time.
        let bogus = dir.path().join("bogus");
        std::fs::write(&bogus, [0u8; 4096]).expect("write");
        let started = Instant::now();
        assert!(!probe(Accel::Tcg, &bogus, dir.path(), Duration::from_secs(2)).expect("probe"));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
