//! The seam between `kimg init` and the machine: every side effect init has goes through
//! [`System`].
//!
//! [`Host`](super::host::Host) is the real implementation (syscalls, netlink, processes);
//! [`Recording`](super::recording::Recording) records each call as a [`Call`] and serves
//! files, exits, health and shutdown requests from a script, so the whole boot sequence and
//! the supervisor run in unit tests without root. Both are injected through
//! [`Init::new`](super::init::Init::new); nothing is switched on `cfg!(test)`.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;

/// One filesystem to mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountSpec {
    pub source: String,
    pub target: PathBuf,
    pub fstype: String,
    /// Comma-separated data options passed to the filesystem, e.g. `mode=0755`.
    pub options: String,
    /// `MS_NOSUID | MS_NODEV | MS_NOEXEC` as appropriate for pseudo filesystems.
    pub hardened: bool,
}

/// A service the supervisor runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Attach the console to stdin/stdout/stderr (debug shell) instead of line-prefixed logs.
    pub console: bool,
}

/// Where images carry kimg (a link to `/init`); role services run it under this name.
pub const KIMG_BIN: &str = "/usr/bin/kimg";

impl ServiceSpec {
    /// A role service running `argv` with the image's PATH and `KIMG_LOG=info`, its output
    /// line-prefixed on the console.
    pub fn new(name: &str, argv: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            env: vec![
                ("PATH".into(), "/usr/bin:/bin:/usr/sbin:/sbin".into()),
                ("KIMG_LOG".into(), "info".into()),
            ],
            console: false,
        }
    }
}

/// How a child process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "{c}"),
            ExitStatus::Signal(s) => write!(f, "signal-{s}"),
        }
    }
}

/// Signals init sends to services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
}

/// What to do with the machine at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    PowerOff,
    Reboot,
}

/// Why init is shutting down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownReason {
    /// SIGINT: the kernel's ctrl-alt-del (after `reboot(CAD_OFF)`) → reboot.
    CtrlAltDel,
    /// SIGPWR (UPS daemons, container managers) → power off.
    PowerFail,
    /// SIGTERM sent to PID 1 → power off.
    Terminate,
    /// KEY_POWER from an input device (ACPI power button) → power off.
    PowerButton,
}

impl ShutdownReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownReason::CtrlAltDel => "ctrl-alt-del",
            ShutdownReason::PowerFail => "sigpwr",
            ShutdownReason::Terminate => "sigterm",
            ShutdownReason::PowerButton => "power-button",
        }
    }

    pub fn action(self) -> PowerAction {
        match self {
            ShutdownReason::CtrlAltDel => PowerAction::Reboot,
            _ => PowerAction::PowerOff,
        }
    }
}

/// An HTTPS health probe with a client certificate (etcd's `/health`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthProbe {
    pub url: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Every side effect of `kimg init`. Methods take `&self`: the real machine is global state.
pub trait System {
    /// Writes one line to the console (no trailing newline in `line`).
    fn console(&self, line: &str);
    fn mkdir_all(&self, path: &Path) -> io::Result<()>;
    fn mount(&self, spec: &MountSpec) -> io::Result<()>;
    fn umount(&self, target: &Path) -> io::Result<()>;
    /// After `/dev` exists: make sure fds 0-2 point at `/dev/console`.
    fn attach_console(&self);
    fn read_file(&self, path: &Path) -> io::Result<String>;
    fn write_file(&self, path: &Path, contents: &str) -> io::Result<()>;
    /// Entry names of a directory, sorted.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    fn exists(&self, path: &Path) -> bool;
    /// Creates a block device node.
    fn mknod_block(&self, path: &Path, major: u32, minor: u32) -> io::Result<()>;
    /// Loads a kernel module file (`.ko` or `.ko.xz`).
    fn load_module(&self, path: &Path) -> io::Result<()>;
    fn set_hostname(&self, name: &str) -> io::Result<()>;
    /// Writes `/proc/sys/<key with dots as slashes>`.
    fn write_sysctl(&self, key: &str, value: &str) -> io::Result<()>;
    fn link_up(&self, iface: &str) -> io::Result<()>;
    fn add_address(&self, iface: &str, addr: Ipv4Net) -> io::Result<()>;
    fn add_default_route(&self, gateway: Ipv4Addr) -> io::Result<()>;
    /// Sends one DHCP client message from port 68 of `iface` to port 67 of `to`
    /// (`255.255.255.255` before the interface has an address).
    fn dhcp_send(&self, iface: &str, to: Ipv4Addr, message: &[u8]) -> io::Result<()>;
    /// The next datagram that reached port 68 of `iface`, waiting at most `wait` (not at
    /// all for zero); `None` when nothing came.
    fn dhcp_recv(&self, iface: &str, wait: Duration) -> io::Result<Option<Vec<u8>>>;
    /// Starts a service, returning its PID.
    fn spawn(&self, spec: &ServiceSpec) -> io::Result<u32>;
    fn signal(&self, pid: u32, signal: Signal) -> io::Result<()>;
    /// Reaps one exited child (any child: PID 1 inherits orphans), without blocking.
    fn reap(&self) -> Option<(u32, ExitStatus)>;
    /// A pending shutdown request (signal or power button), consumed by the call.
    fn shutdown_requested(&self) -> Option<ShutdownReason>;
    fn probe_health(&self, probe: &HealthProbe) -> Result<(), String>;
    /// Time since an arbitrary fixed point (monotonic).
    fn now(&self) -> Duration;
    fn sleep(&self, d: Duration);
    fn sync(&self);
    /// Powers off or reboots. Returns only when the machine could not do it (or in tests).
    fn power(&self, action: PowerAction) -> io::Result<()>;
}
