//! A containerd of one's own: for tests and trials that must not touch the host's.
//!
//! What: [`PrivateContainerd::start`] runs Debian's `/usr/bin/containerd` with root, state,
//! gRPC and ttrpc sockets all under one directory (the CRI plugin disabled) and waits for
//! its socket. Pods started through it should keep runc's state in
//! [`PrivateContainerd::runc_root`] (see [`super::Containerd::with_runc_root`]).
//! [`PrivateContainerd::stop`] (also run on drop) force-deletes every runc container under
//! that root, kills the shims whose command line names this socket, stops containerd
//! (SIGTERM, then SIGKILL after 5 s) and lazily unmounts whatever is still mounted under
//! the directory.
//!
//! Limits: needs root and the `containerd` and `runc` packages; bridges, cgroups and other
//! host state the pods created are the caller's to remove.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A running private containerd.
pub struct PrivateContainerd {
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateContainerd {
    /// Starts containerd under `dir` and waits (up to 20 s) for its socket.
    pub fn start(dir: &Path) -> std::io::Result<PrivateContainerd> {
        std::fs::create_dir_all(dir)?;
        let sock = dir.join("c.sock");
        let config = format!(
            "version = 2\nroot = {root:?}\nstate = {state:?}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = {sock:?}\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n[debug]\n  address = \"\"\n",
            root = dir.join("root").display().to_string(),
            state = dir.join("state").display().to_string(),
            sock = sock.display().to_string(),
        );
        std::fs::write(dir.join("containerd.toml"), config)?;
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        let child = Command::new("/usr/bin/containerd")
            .arg("--config")
            .arg(dir.join("containerd.toml"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let me = PrivateContainerd {
            dir: dir.to_path_buf(),
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            if Instant::now() > deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("containerd did not come up: {}", me.log()),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(me)
    }

    /// The gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("c.sock")
    }

    /// Where runc should keep container state for this containerd.
    pub fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Removes every container, stops the shims and containerd, unmounts leftovers.
    /// Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let runc_root = self.runc_root();
        for e in std::fs::read_dir(&runc_root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["delete", "--force"])
                .arg(e.file_name())
                .status();
        }
        let sock = format!("-address\0{}", self.socket().display());
        for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&sock) {
                // SAFETY: kill(2) on a shim whose command line names our own socket.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        // SAFETY: plain kill(2) on the PID of the containerd we started.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        let prefix = self.dir.display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        self.stop();
    }
}
