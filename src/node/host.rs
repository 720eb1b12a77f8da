//! The real machine behind [`System`]: syscalls through `libc`, rtnetlink, child processes.
//!
//! Signals: `Host::new` installs handlers for SIGINT (ctrl-alt-del, after
//! `reboot(RB_DISABLE_CAD)` tells the kernel to signal init instead of rebooting at once),
//! SIGPWR and SIGTERM; they only set an atomic that [`System::shutdown_requested`] reads.
//! The ACPI power button reaches us as `KEY_POWER` on an evdev device: the first call of
//! `shutdown_requested` (after `/dev` is mounted and modules are loaded) starts one reader
//! thread per `/dev/input/event*`. That needs the `evdev` module (and the ACPI `button`
//! driver) in the image; without them the power button does nothing and only signals work.
//!
//! DHCP: one UDP socket per interface on port 68, bound to the device (`SO_BINDTODEVICE`)
//! and allowed to broadcast; the client asks servers to broadcast their answers, so no raw
//! packet socket is needed before the interface has an address.
//!
//! Service output: each line of a service's stdout/stderr is copied to the console as
//! `[name] line` and appended to `/var/log/<name>.log` by two small threads per child.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use super::dhcp;
use super::modules;
use super::netlink;
use super::system::{
    ExitStatus, HealthProbe, MountSpec, PowerAction, ServiceSpec, ShutdownReason, Signal, System,
};

static SHUTDOWN: AtomicU8 = AtomicU8::new(0);
static BUTTON_WATCH: AtomicBool = AtomicBool::new(false);

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;

extern "C" fn on_signal(sig: libc::c_int) {
    let code = match sig {
        libc::SIGINT => 1,
        libc::SIGPWR => 2,
        libc::SIGTERM => 3,
        _ => return,
    };
    SHUTDOWN.store(code, Ordering::SeqCst);
}

fn cstr(p: impl AsRef<[u8]>) -> io::Result<CString> {
    CString::new(p.as_ref()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The real machine.
pub struct Host {
    start: Instant,
    /// One DHCP client socket per interface, opened on first use.
    dhcp_sockets: Mutex<BTreeMap<String, Arc<UdpSocket>>>,
}

impl Host {
    /// Installs the shutdown signal handlers and asks the kernel to deliver ctrl-alt-del
    /// as SIGINT.
    pub fn new() -> Host {
        for sig in [libc::SIGINT, libc::SIGPWR, libc::SIGTERM] {
            // SAFETY: sigaction is plain old data; the handler only stores to an atomic,
            // which is async-signal-safe.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
        // SAFETY: RB_DISABLE_CAD only changes how the kernel reacts to ctrl-alt-del.
        unsafe {
            libc::reboot(libc::RB_DISABLE_CAD);
        }
        Host {
            start: Instant::now(),
            dhcp_sockets: Mutex::new(BTreeMap::new()),
        }
    }

    fn dhcp_socket(&self, iface: &str) -> io::Result<Arc<UdpSocket>> {
        let mut sockets = self
            .dhcp_sockets
            .lock()
            .map_err(|_| io::Error::other("dhcp socket table poisoned"))?;
        if let Some(s) = sockets.get(iface) {
            return Ok(s.clone());
        }
        let socket = Arc::new(dhcp_client_socket(iface)?);
        sockets.insert(iface.to_string(), socket.clone());
        Ok(socket)
    }

    fn watch_power_button(&self) {
        if BUTTON_WATCH.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(entries) = std::fs::read_dir("/dev/input") else {
            return;
        };
        for entry in entries.flatten() {
            if !entry.file_name().as_bytes().starts_with(b"event") {
                continue;
            }
            let path = entry.path();
            std::thread::spawn(move || {
                let Ok(mut f) = std::fs::File::open(&path) else {
                    return;
                };
                // struct input_event on 64-bit: timeval (16), type u16, code u16, value i32.
                let mut ev = [0u8; 24];
                while f.read_exact(&mut ev).is_ok() {
                    let kind = u16::from_ne_bytes([ev[16], ev[17]]);
                    let code = u16::from_ne_bytes([ev[18], ev[19]]);
                    let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
                    if kind == EV_KEY && code == KEY_POWER && value == 1 {
                        SHUTDOWN.store(4, Ordering::SeqCst);
                    }
                }
            });
        }
    }
}

impl Default for Host {
    fn default() -> Host {
        Host::new()
    }
}

fn set_option(fd: libc::c_int, name: libc::c_int, value: &[u8]) -> io::Result<()> {
    // SAFETY: value points at value.len() readable bytes for the duration of the call.
    check(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    })
}

/// A UDP socket on port 68 of `iface` only (`SO_BINDTODEVICE`), allowed to broadcast: a
/// DHCP client needs no raw socket when it asks servers to broadcast their answers.
fn dhcp_client_socket(iface: &str) -> io::Result<UdpSocket> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket(2); the fd is owned right below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let one = 1i32.to_ne_bytes();
    set_option(owned.as_raw_fd(), libc::SO_REUSEADDR, &one)?;
    set_option(owned.as_raw_fd(), libc::SO_BROADCAST, &one)?;
    set_option(owned.as_raw_fd(), libc::SO_BINDTODEVICE, iface.as_bytes())?;
    // SAFETY: sockaddr_in is plain old data; all-zero is INADDR_ANY.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = dhcp::CLIENT_PORT.to_be();
    // SAFETY: sa is a valid sockaddr_in and its size is passed.
    check(unsafe {
        libc::bind(
            owned.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })?;
    Ok(UdpSocket::from(owned))
}

fn fd_open(fd: libc::c_int) -> bool {
    // SAFETY: F_GETFD on any integer is harmless; it fails with EBADF for closed fds.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

fn copy_lines(
    name: String,
    stream: impl Read + Send + 'static,
    log: Option<Arc<Mutex<std::fs::File>>>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\n', '\r']);
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "[{name}] {text}");
            drop(out);
            if let Some(log) = &log {
                if let Ok(mut f) = log.lock() {
                    let _ = writeln!(f, "{text}");
                }
            }
        }
    });
}

impl System for Host {
    fn console(&self, line: &str) {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn mount(&self, spec: &MountSpec) -> io::Result<()> {
        let source = cstr(&spec.source)?;
        let target = cstr(spec.target.as_os_str().as_bytes())?;
        let fstype = cstr(&spec.fstype)?;
        let data = cstr(&spec.options)?;
        let flags = if spec.hardened {
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC
        } else {
            0
        };
        // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
        let ret = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                flags,
                data.as_ptr().cast(),
            )
        };
        match check(ret) {
            // Already mounted (e.g. a kernel that auto-mounts devtmpfs) is what we wanted.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
            other => other,
        }
    }

    fn umount(&self, target: &Path) -> io::Result<()> {
        let target = cstr(target.as_os_str().as_bytes())?;
        // SAFETY: target is a valid NUL-terminated string.
        check(unsafe { libc::umount2(target.as_ptr(), 0) })
    }

    fn attach_console(&self) {
        if (0..3).all(fd_open) {
            return;
        }
        let Ok(path) = cstr("/dev/console") else {
            return;
        };
        // SAFETY: open/dup2/close on fds we own; path is NUL-terminated.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
            if fd < 0 {
                return;
            }
            for target in 0..3 {
                if !fd_open(target) || target == fd {
                    libc::dup2(fd, target);
                }
            }
            if fd > 2 {
                libc::close(fd);
            }
        }
    }

    fn read_file(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn write_file(&self, path: &Path, contents: &str) -> io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, contents)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn mknod_block(&self, path: &Path, major: u32, minor: u32) -> io::Result<()> {
        let p = cstr(path.as_os_str().as_bytes())?;
        let dev = libc::makedev(major, minor);
        // SAFETY: p is NUL-terminated; mknod does not retain it.
        check(unsafe { libc::mknod(p.as_ptr(), libc::S_IFBLK | 0o600, dev) })
    }

    fn load_module(&self, path: &Path) -> io::Result<()> {
        let image = modules::decode(std::fs::read(path)?)?;
        let params = cstr("")?;
        // SAFETY: image and params outlive the call; the kernel copies the module image.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_init_module,
                image.as_ptr(),
                image.len() as libc::c_ulong,
                params.as_ptr(),
            )
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EEXIST) {
                return Ok(()); // already loaded
            }
            return Err(err);
        }
        Ok(())
    }

    fn set_hostname(&self, name: &str) -> io::Result<()> {
        // SAFETY: the pointer and length describe `name`'s bytes.
        check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
    }

    fn write_sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(path, value)
    }

    fn link_up(&self, iface: &str) -> io::Result<()> {
        netlink::request(&netlink::link_up_message(netlink::ifindex(iface)?, 1))
    }

    fn add_address(&self, iface: &str, addr: Ipv4Net) -> io::Result<()> {
        let index = netlink::ifindex(iface)?;
        netlink::request(&netlink::add_address_message(
            index,
            addr.addr(),
            addr.prefix_len(),
            2,
        ))
    }

    fn add_default_route(&self, gateway: Ipv4Addr) -> io::Result<()> {
        netlink::request(&netlink::default_route_message(gateway, 3))
    }

    fn dhcp_send(&self, iface: &str, to: Ipv4Addr, message: &[u8]) -> io::Result<()> {
        self.dhcp_socket(iface)?
            .send_to(message, (to, dhcp::SERVER_PORT))
            .map(|_| ())
    }

    fn dhcp_recv(&self, iface: &str, wait: Duration) -> io::Result<Option<Vec<u8>>> {
        let socket = self.dhcp_socket(iface)?;
        if wait.is_zero() {
            socket.set_nonblocking(true)?;
        } else {
            socket.set_nonblocking(false)?;
            socket.set_read_timeout(Some(wait))?;
        }
        let mut buf = vec![0u8; 1500];
        match socket.recv(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                Ok(Some(buf))
            }
            // A signal ends the wait early too (SO_RCVTIMEO waits are never restarted).
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn spawn(&self, spec: &ServiceSpec) -> io::Result<u32> {
        let (program, args) = spec
            .argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty argv"))?;
        let mut cmd = Command::new(program);
        cmd.args(args).env_clear().envs(spec.env.iter().cloned());
        if spec.console {
            cmd.stdin(Stdio::inherit())
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit());
        } else {
            // Own process group: a ctrl-c on the console is for init, not the services.
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0);
        }
        let mut child = cmd.spawn()?;
        let pid = child.id();
        if !spec.console {
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(Path::new("/var/log").join(format!("{}.log", spec.name)))
                .ok()
                .map(|f| Arc::new(Mutex::new(f)));
            if let Some(out) = child.stdout.take() {
                copy_lines(spec.name.clone(), out, log.clone());
            }
            if let Some(err) = child.stderr.take() {
                copy_lines(spec.name.clone(), err, log);
            }
        }
        // The child is reaped by `reap` (waitpid(-1)); dropping the handle does not wait.
        drop(child);
        Ok(pid)
    }

    fn signal(&self, pid: u32, signal: Signal) -> io::Result<()> {
        let sig = match signal {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        };
        // SAFETY: kill(2) with a PID we started.
        check(unsafe { libc::kill(pid as libc::pid_t, sig) })
    }

    fn reap(&self) -> Option<(u32, ExitStatus)> {
        let mut status: libc::c_int = 0;
        // SAFETY: status is a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return None;
        }
        let exit = if libc::WIFEXITED(status) {
            ExitStatus::Code(libc::WEXITSTATUS(status))
        } else {
            ExitStatus::Signal(libc::WTERMSIG(status))
        };
        Some((pid as u32, exit))
    }

    fn shutdown_requested(&self) -> Option<ShutdownReason> {
        self.watch_power_button();
        match SHUTDOWN.swap(0, Ordering::SeqCst) {
            1 => Some(ShutdownReason::CtrlAltDel),
            2 => Some(ShutdownReason::PowerFail),
            3 => Some(ShutdownReason::Terminate),
            4 => Some(ShutdownReason::PowerButton),
            _ => None,
        }
    }

    fn probe_health(&self, probe: &HealthProbe) -> Result<(), String> {
        health_get(probe).map_err(|e| e.to_string())
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }

    fn sync(&self) {
        // SAFETY: sync(2) takes no arguments.
        unsafe { libc::sync() };
    }

    fn power(&self, action: PowerAction) -> io::Result<()> {
        let cmd = match action {
            PowerAction::PowerOff => libc::RB_POWER_OFF,
            PowerAction::Reboot => libc::RB_AUTOBOOT,
        };
        // SAFETY: reboot(2) with a valid command; on success it does not return.
        check(unsafe { libc::reboot(cmd) })
    }
}

#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("reading {0}: {1}")]
    Pem(String, rustls_pki_types::pem::Error),
    #[error("tls setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("request: {0}")]
    Request(Box<ureq::Error>),
    #[error("reading the answer: {0}")]
    Body(#[from] io::Error),
    #[error("unhealthy: {0}")]
    Unhealthy(String),
}

fn health_get(probe: &HealthProbe) -> Result<(), ProbeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let pem = |p: &Path, e| ProbeError::Pem(p.display().to_string(), e);
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&probe.ca).map_err(|e| pem(&probe.ca, e))? {
        roots.add(cert.map_err(|e| pem(&probe.ca, e))?)?;
    }
    let chain = CertificateDer::pem_file_iter(&probe.cert)
        .map_err(|e| pem(&probe.cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(&probe.cert, e))?;
    let key = PrivateKeyDer::from_pem_file(&probe.key).map_err(|e| pem(&probe.key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    let agent = ureq::AgentBuilder::new()
        .tls_config(Arc::new(config))
        .timeout(Duration::from_secs(2))
        .build();
    let body = agent
        .get(&probe.url)
        .call()
        .map_err(|e| ProbeError::Request(Box::new(e)))?
        .into_string()?;
    let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    // etcd's /health answers {"health":"true"}; the apiserver's /readyz answers `ok`.
    if compact.contains("\"health\":\"true\"") || compact == "ok" {
        Ok(())
    } else {
        Err(ProbeError::Unhealthy(compact))
    }
}
