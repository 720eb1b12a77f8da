//! Booting images under QEMU (TCG) for tests: serial console to a file, wait for a line,
//! kill by PID on drop. Networking is QEMU user mode with `restrict=on`: the guest reaches
//! nothing outside the VM.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running VM; killed (by its PID) when dropped.
pub struct Vm {
    child: Child,
    pub console: PathBuf,
    pub started: Instant,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to boot.
pub enum Boot<'a> {
    /// `-kernel vmlinuz -initrd initrd.img -append cmdline`.
    Direct {
        vmlinuz: &'a Path,
        initrd: &'a Path,
        cmdline: &'a str,
    },
    /// OVMF firmware + a raw disk.
    Uefi { disk: &'a Path, vars: &'a Path },
}

pub fn start(boot: Boot, mac: &str, work: &Path, name: &str) -> Vm {
    let console = work.join(format!("{name}.console.log"));
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg",
        "-m",
        "1024",
        "-nographic",
        "-no-reboot",
        "-monitor",
        "none",
    ])
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .args(["-netdev", "user,id=n0,restrict=on"])
    .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac}")]);
    match boot {
        Boot::Direct {
            vmlinuz,
            initrd,
            cmdline,
        } => {
            cmd.arg("-kernel")
                .arg(vmlinuz)
                .arg("-initrd")
                .arg(initrd)
                .arg("-append")
                .arg(cmdline);
        }
        Boot::Uefi { disk, vars } => {
            std::fs::copy("/usr/share/OVMF/OVMF_VARS.fd", vars)
                .expect("copy OVMF_VARS.fd (apt: ovmf)");
            cmd.args(["-machine", "q35"])
                .arg("-drive")
                .arg("if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd")
                .arg("-drive")
                .arg(format!("if=pflash,format=raw,file={}", vars.display()))
                .arg("-drive")
                .arg(format!("file={},format=raw,if=virtio", disk.display()));
        }
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu-system-x86_64 (apt: qemu-system-x86)");
    Vm {
        child,
        console,
        started: Instant::now(),
    }
}

impl Vm {
    /// Waits until the console shows a line containing `needle`; returns the time since
    /// power-on. Panics with the console's tail on timeout or when QEMU exits.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Duration {
        loop {
            let text = std::fs::read_to_string(&self.console).unwrap_or_default();
            if text.contains(needle) {
                return self.started.elapsed();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!(
                    "qemu exited ({status}) before {needle:?}: {err}\n{}",
                    tail(&text)
                );
            }
            if self.started.elapsed() > timeout {
                panic!(
                    "no {needle:?} within {timeout:?}; console:\n{}",
                    tail(&text)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
