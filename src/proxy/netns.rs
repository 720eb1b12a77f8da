//! Named network namespaces, created with `ip netns add` and deleted on drop.
//!
//! What: a scratch namespace for the proxy's root-only tests and benchmarks, so nftables
//! rules and vxlan devices are programmed somewhere that cannot disturb the host.
//! How: shells out to iproute2 (`ip netns add/del/exec`); the name carries the process
//! id and a counter so concurrent tests never collide.
//! Limits: needs root (CAP_SYS_ADMIN) and the `ip` binary.

use std::io;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace that exists until this value is dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `kimg-<prefix>-<pid>-<n>`; the loopback device is brought up.
    pub fn create(prefix: &str) -> io::Result<Netns> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("kimg-{prefix}-{}-{n}", std::process::id());
        run_checked(Command::new("ip").args(["netns", "add", &name]))?;
        let netns = Netns { name };
        netns.exec_checked(&["ip", "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// The namespace's name as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program args…` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Moves the calling thread (and threads it spawns later) into the namespace, so
    /// sockets it opens live there. Use a dedicated thread: there is no way back.
    pub fn enter_this_thread(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(format!("/run/netns/{}", self.name))?;
        // SAFETY: setns only reads the fd, which `file` keeps open for the call; it
        // changes the network namespace of this thread alone.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Runs `argv` inside the namespace and fails when it exits non-zero.
    pub fn exec_checked(&self, argv: &[&str]) -> io::Result<Output> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        run_checked(self.command(program).args(args))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Best effort: a failure here leaves a namespace behind, which the next
        // `ip netns list` shows; there is nobody to report it to during drop.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs a command, turning a non-zero exit into an error carrying its stderr.
pub fn run_checked(command: &mut Command) -> io::Result<Output> {
    let output = command.output()?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(io::Error::other(format!(
            "{:?} exited with {}: {}",
            command,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_exists_while_held_and_is_gone_after_drop_needs_root() {
        let ns = Netns::create("nstest").expect("create netns");
        let name = ns.name().to_string();
        let list = run_checked(Command::new("ip").args(["netns", "list"])).expect("list");
        assert!(String::from_utf8_lossy(&list.stdout).contains(&name));
        drop(ns);
        let list = run_checked(Command::new("ip").args(["netns", "list"])).expect("list");
        assert!(!String::from_utf8_lossy(&list.stdout).contains(&name));
    }
}
