//! Child processes the runner owns: commands and background tasks inside the netns, and the
//! Ctrl-C / SIGTERM flag every wait loop polls.
//!
//! Each child is started as the leader of its own process group, so the runner can signal
//! everything a command started (and only that) with `killpg`, and a terminal Ctrl-C reaches
//! the runner, which then tears down in order. Exit is detected with `waitid(WNOWAIT)` so the
//! group id stays reserved until stragglers are killed and the leader is reaped.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the SIGINT/SIGTERM/SIGHUP handler that sets the interrupt flag.
pub fn install_interrupt_handler() -> Result<(), ctrlc::Error> {
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst))
}

/// Whether the user asked the run to stop.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("interrupted")]
    Interrupted,
    #[error("cannot start `{program}`")]
    SpawnFailed {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create output file {}", path.display())]
    OutputFileFailed {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Sleeps in small slices, returning early with an error when interrupted.
pub fn pause(duration: Duration) -> Result<(), ProcessError> {
    let end = Instant::now() + duration;
    loop {
        if interrupted() {
            return Err(ProcessError::Interrupted);
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// `ip netns exec NS bash -c CMD`, with the given environment.
pub fn netns_bash(netns: &str, cmd: &str, env: &[(String, String)]) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns, "bash", "-c", cmd]);
    command.envs(env.iter().map(|(k, v)| (k, v)));
    command
}

/// A child leading its own process group, killed with its group when dropped.
#[derive(Debug)]
pub struct Group {
    child: Option<Child>,
    pub output: PathBuf,
}

impl Group {
    /// Starts `command` in a new process group, stdout and stderr appended to `output`.
    pub fn spawn(mut command: Command, output: &Path) -> Result<Group, ProcessError> {
        let file = File::options()
            .create(true)
            .append(true)
            .open(output)
            .map_err(|source| ProcessError::OutputFileFailed {
                path: output.to_owned(),
                source,
            })?;
        let err_file = file
            .try_clone()
            .map_err(|source| ProcessError::OutputFileFailed {
                path: output.to_owned(),
                source,
            })?;
        command
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err_file)
            .process_group(0);
        let child = command
            .spawn()
            .map_err(|source| ProcessError::SpawnFailed {
                program: format!("{:?}", command.get_program()),
                source,
            })?;
        Ok(Group {
            child: Some(child),
            output: output.to_owned(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the leader has exited; does not reap it, so the group id stays ours.
    pub fn has_exited(&self) -> bool {
        let Some(child) = &self.child else {
            return true;
        };
        // SAFETY: waitid only writes into the zeroed siginfo we pass; the pid is our child.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let rc = libc::waitid(
                libc::P_PID,
                child.id(),
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            rc == 0 && info.si_pid() != 0
        }
    }

    /// Sends `signal` to the whole group while the leader is not yet reaped.
    pub fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: plain syscall; the group id is reserved because we have not reaped
                // its leader, so it cannot name anyone else's processes.
                unsafe {
                    libc::killpg(pgid, signal);
                }
            }
        }
    }

    /// Waits up to `timeout` for the leader to exit; on timeout (or interrupt) kills the group.
    /// Returns `None` if it had to be killed. Stragglers in the group are always killed.
    pub fn wait_for(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, ProcessError> {
        let end = Instant::now() + timeout;
        while !self.has_exited() {
            if interrupted() {
                self.kill();
                return Err(ProcessError::Interrupted);
            }
            if Instant::now() >= end {
                self.kill();
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.signal(libc::SIGKILL);
        Ok(self.child.take().and_then(|mut c| c.wait().ok()))
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; returns the exit status if it exited.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        let end = Instant::now() + grace;
        while !self.has_exited() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.signal(libc::SIGKILL);
        self.child.take().and_then(|mut c| c.wait().ok())
    }

    /// SIGKILL to the group, then reap the leader.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `command` to completion (or `timeout`), returning exit code (None on timeout or
/// signal) and its combined output.
pub fn run_captured(
    command: Command,
    output: &Path,
    timeout: Duration,
) -> Result<(Option<i32>, String), ProcessError> {
    let _ = std::fs::remove_file(output);
    let mut group = Group::spawn(command, output)?;
    let status = group.wait_for(timeout)?;
    let text = std::fs::read(output)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    Ok((status.and_then(|s| s.code()), text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_captured_command_reports_its_exit_code_and_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new("bash");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let (code, text) =
            run_captured(cmd, &dir.path().join("o"), Duration::from_secs(10)).expect("runs");
        assert_eq!(code, Some(3));
        assert!(text.contains("out") && text.contains("err"), "{text}");
    }

    #[test]
    fn a_command_over_its_timeout_is_killed_with_its_children() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("child-pid");
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(format!("sleep 30 & echo $! > {}; wait", marker.display()));
        let started = Instant::now();
        let (code, _) =
            run_captured(cmd, &dir.path().join("o"), Duration::from_millis(500)).expect("runs");
        assert_eq!(code, None);
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid: i32 = std::fs::read_to_string(&marker)
            .expect("marker")
            .trim()
            .parse()
            .expect("pid");
        // The grandchild `sleep` was in the group, so it must be gone (or a reaped zombie
        // of init, which kill(0) no longer sees after a moment).
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: signal 0 only checks for existence.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true);
        assert!(!alive || zombie, "sleep {pid} survived its group");
    }
}
