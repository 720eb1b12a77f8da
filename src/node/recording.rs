//! A scripted [`System`] that records every call as a [`Call`]: the test double of the real
//! machine. Files, directory listings, child exits, health answers and shutdown requests are
//! set up front; time is a fake clock that only [`System::sleep`] advances. Failing calls can
//! be scripted per path or interface, and one call kind can be made to panic once, to prove
//! that PID 1 survives panics. A [`FakeDhcpServer`] answers the client's DHCP messages
//! (decoded with the real parser) from a given time on; until then, and without one,
//! `dhcp_recv` lets its whole wait pass.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;

use super::dhcp::{Message, MessageType, Op};
use super::system::{
    ExitStatus, HealthProbe, MountSpec, PowerAction, ServiceSpec, ShutdownReason, Signal, System,
};

/// One recorded side effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Mkdir(PathBuf),
    Mount {
        source: String,
        target: PathBuf,
        fstype: String,
    },
    Umount(PathBuf),
    AttachConsole,
    WriteFile(PathBuf, String),
    Mknod(PathBuf, u32, u32),
    LoadModule(PathBuf),
    SetHostname(String),
    Sysctl(String, String),
    LinkUp(String),
    AddAddress(String, Ipv4Net),
    DefaultRoute(Ipv4Addr),
    /// A DHCP client message: its kind, where it went and its `ciaddr`.
    DhcpSend {
        iface: String,
        to: Ipv4Addr,
        kind: MessageType,
        ciaddr: Ipv4Addr,
    },
    Spawn {
        name: String,
        argv: Vec<String>,
        pid: u32,
    },
    Signal(u32, Signal),
    Probe(String),
    Sync,
    Power(PowerAction),
}

/// A DHCP server on the other end of every interface: offers and acknowledges `addr`.
#[derive(Clone, Debug)]
pub struct FakeDhcpServer {
    pub addr: Ipv4Net,
    pub server: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// Option 51; `u32::MAX` is infinite.
    pub lease_secs: u32,
    /// Answers nothing before this time.
    pub from: Duration,
    /// Answers renewals (requests with `ciaddr`) with a NAK.
    pub nak_renewals: bool,
}

impl FakeDhcpServer {
    fn answer(&self, req: &Message) -> Option<Message> {
        let kind = match req.kind {
            MessageType::Discover => MessageType::Offer,
            MessageType::Request if self.nak_renewals && !req.ciaddr.is_unspecified() => {
                MessageType::Nak
            }
            MessageType::Request => MessageType::Ack,
            _ => return None,
        };
        Some(Message {
            op: Op::Reply,
            kind,
            yiaddr: self.addr.addr(),
            subnet_mask: Some(self.addr.netmask()),
            routers: self.router.into_iter().collect(),
            dns: self.dns.clone(),
            lease_secs: Some(self.lease_secs),
            server_id: Some(self.server),
            parameters: Vec::new(),
            requested_ip: None,
            broadcast: req.broadcast,
            ciaddr: req.ciaddr,
            ..req.clone()
        })
    }
}

/// The scripted machine.
#[derive(Default)]
pub struct Recording {
    dhcp_server: RefCell<Option<FakeDhcpServer>>,
    dhcp_inbox: RefCell<VecDeque<Vec<u8>>>,
    calls: RefCell<Vec<Call>>,
    console: RefCell<Vec<String>>,
    files: RefCell<BTreeMap<PathBuf, String>>,
    /// (time, path, contents): files that appear once the clock reaches the time.
    later_files: RefCell<Vec<(Duration, PathBuf, String)>>,
    failing: RefCell<BTreeSet<String>>,
    clock: Cell<Duration>,
    next_pid: Cell<u32>,
    running: RefCell<BTreeSet<u32>>,
    /// (earliest time, pid, status): a child that exits once the clock reaches the time.
    exits: RefCell<Vec<(Duration, u32, ExitStatus)>>,
    /// Whether services exit on SIGTERM.
    term_obeyed: Cell<bool>,
    healthy_at: Cell<Option<Duration>>,
    shutdown_at: Cell<Option<(Duration, ShutdownReason)>>,
    panic_next_reap: Cell<bool>,
}

impl Recording {
    pub fn new() -> Recording {
        let r = Recording::default();
        r.next_pid.set(100);
        r.term_obeyed.set(true);
        r
    }

    /// Serves `contents` for `path`; also makes its parent directories list it.
    pub fn with_file(self, path: impl Into<PathBuf>, contents: impl Into<String>) -> Recording {
        self.files.borrow_mut().insert(path.into(), contents.into());
        self
    }

    /// Serves `contents` for `path` from time `at` on (a disk plugged in later).
    pub fn with_file_from(
        self,
        at: Duration,
        path: impl Into<PathBuf>,
        contents: impl Into<String>,
    ) -> Recording {
        self.later_files
            .borrow_mut()
            .push((at, path.into(), contents.into()));
        self
    }

    /// Makes calls on `what` (a path, an interface or a module path) fail with EIO.
    pub fn failing(self, what: impl Into<String>) -> Recording {
        self.failing.borrow_mut().insert(what.into());
        self
    }

    /// Puts a DHCP server on the wire.
    pub fn with_dhcp_server(self, server: FakeDhcpServer) -> Recording {
        *self.dhcp_server.borrow_mut() = Some(server);
        self
    }

    /// Queues a datagram for the next `dhcp_recv` (garbage, other clients' answers).
    pub fn dhcp_deliver(&self, bytes: Vec<u8>) {
        self.dhcp_inbox.borrow_mut().push_back(bytes);
    }

    /// `pid` exits with `status` once the clock reaches `at`.
    pub fn exit_at(&self, at: Duration, pid: u32, status: ExitStatus) {
        self.exits.borrow_mut().push((at, pid, status));
    }

    /// An orphan (not a service) that has exited and waits to be reaped.
    pub fn orphan(&self, pid: u32) {
        self.running.borrow_mut().insert(pid);
        self.exits
            .borrow_mut()
            .push((Duration::ZERO, pid, ExitStatus::Code(0)));
    }

    /// Services ignore SIGTERM (to exercise the SIGKILL path).
    pub fn ignore_sigterm(&self) {
        self.term_obeyed.set(false);
    }

    pub fn healthy_from(&self, at: Duration) {
        self.healthy_at.set(Some(at));
    }

    pub fn shutdown_at(&self, at: Duration, reason: ShutdownReason) {
        self.shutdown_at.set(Some((at, reason)));
    }

    /// The next `reap` panics (once).
    pub fn panic_on_next_reap(&self) {
        self.panic_next_reap.set(true);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    pub fn console_lines(&self) -> Vec<String> {
        self.console.borrow().clone()
    }

    fn record(&self, call: Call) {
        self.calls.borrow_mut().push(call);
    }

    fn check(&self, what: &str) -> io::Result<()> {
        if self.failing.borrow().contains(what) {
            Err(io::Error::other("scripted failure"))
        } else {
            Ok(())
        }
    }
}

fn not_found() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "no such file")
}

impl System for Recording {
    fn console(&self, line: &str) {
        self.console.borrow_mut().push(line.to_string());
    }
    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        self.record(Call::Mkdir(path.to_path_buf()));
        Ok(())
    }
    fn mount(&self, spec: &MountSpec) -> io::Result<()> {
        self.record(Call::Mount {
            source: spec.source.clone(),
            target: spec.target.clone(),
            fstype: spec.fstype.clone(),
        });
        self.check(&spec.source)
    }
    fn umount(&self, target: &Path) -> io::Result<()> {
        self.record(Call::Umount(target.to_path_buf()));
        Ok(())
    }
    fn attach_console(&self) {
        self.record(Call::AttachConsole);
    }
    fn read_file(&self, path: &Path) -> io::Result<String> {
        self.files.borrow().get(path).cloned().ok_or_else(not_found)
    }
    fn write_file(&self, path: &Path, contents: &str) -> io::Result<()> {
        self.record(Call::WriteFile(path.to_path_buf(), contents.to_string()));
        Ok(())
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let files = self.files.borrow();
        let mut names: Vec<String> = files
            .keys()
            .filter_map(|p| p.strip_prefix(path).ok())
            .filter_map(|rest| rest.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .collect();
        names.dedup();
        if names.is_empty() {
            return Err(not_found());
        }
        Ok(names)
    }
    fn exists(&self, path: &Path) -> bool {
        self.files.borrow().keys().any(|p| p.starts_with(path))
    }
    fn mknod_block(&self, path: &Path, major: u32, minor: u32) -> io::Result<()> {
        self.record(Call::Mknod(path.to_path_buf(), major, minor));
        Ok(())
    }
    fn load_module(&self, path: &Path) -> io::Result<()> {
        self.record(Call::LoadModule(path.to_path_buf()));
        self.check(&path.to_string_lossy())
    }
    fn set_hostname(&self, name: &str) -> io::Result<()> {
        self.record(Call::SetHostname(name.to_string()));
        Ok(())
    }
    fn write_sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        self.record(Call::Sysctl(key.to_string(), value.to_string()));
        self.check(key)
    }
    fn link_up(&self, iface: &str) -> io::Result<()> {
        self.record(Call::LinkUp(iface.to_string()));
        self.check(iface)
    }
    fn add_address(&self, iface: &str, addr: Ipv4Net) -> io::Result<()> {
        self.record(Call::AddAddress(iface.to_string(), addr));
        Ok(())
    }
    fn add_default_route(&self, gateway: Ipv4Addr) -> io::Result<()> {
        self.record(Call::DefaultRoute(gateway));
        Ok(())
    }
    fn dhcp_send(&self, iface: &str, to: Ipv4Addr, message: &[u8]) -> io::Result<()> {
        let req = Message::parse(message)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        self.record(Call::DhcpSend {
            iface: iface.to_string(),
            to,
            kind: req.kind,
            ciaddr: req.ciaddr,
        });
        self.check(iface)?;
        let server = self.dhcp_server.borrow();
        if let Some(server) = server.as_ref().filter(|s| s.from <= self.clock.get()) {
            if let Some(answer) = server.answer(&req) {
                self.dhcp_inbox.borrow_mut().push_back(answer.encode());
            }
        }
        Ok(())
    }
    fn dhcp_recv(&self, _iface: &str, wait: Duration) -> io::Result<Option<Vec<u8>>> {
        if let Some(bytes) = self.dhcp_inbox.borrow_mut().pop_front() {
            return Ok(Some(bytes));
        }
        self.clock.set(self.clock.get() + wait);
        Ok(None)
    }
    fn spawn(&self, spec: &ServiceSpec) -> io::Result<u32> {
        self.check(&spec.argv[0])?;
        let pid = self.next_pid.get();
        self.next_pid.set(pid + 1);
        self.running.borrow_mut().insert(pid);
        self.record(Call::Spawn {
            name: spec.name.clone(),
            argv: spec.argv.clone(),
            pid,
        });
        Ok(pid)
    }
    fn signal(&self, pid: u32, signal: Signal) -> io::Result<()> {
        self.record(Call::Signal(pid, signal));
        if signal == Signal::Kill || self.term_obeyed.get() {
            let code = if signal == Signal::Kill { 9 } else { 15 };
            self.exits
                .borrow_mut()
                .push((self.clock.get(), pid, ExitStatus::Signal(code)));
        }
        Ok(())
    }
    fn reap(&self) -> Option<(u32, ExitStatus)> {
        if self.panic_next_reap.replace(false) {
            panic!("scripted panic in reap");
        }
        let now = self.clock.get();
        let mut exits = self.exits.borrow_mut();
        let mut running = self.running.borrow_mut();
        let ix = exits
            .iter()
            .position(|(at, pid, _)| *at <= now && running.contains(pid))?;
        let (_, pid, status) = exits.remove(ix);
        running.remove(&pid);
        Some((pid, status))
    }
    fn shutdown_requested(&self) -> Option<ShutdownReason> {
        match self.shutdown_at.get() {
            Some((at, reason)) if at <= self.clock.get() => {
                self.shutdown_at.set(None);
                Some(reason)
            }
            _ => None,
        }
    }
    fn probe_health(&self, probe: &HealthProbe) -> Result<(), String> {
        self.record(Call::Probe(probe.url.clone()));
        match self.healthy_at.get() {
            Some(at) if at <= self.clock.get() => Ok(()),
            _ => Err("connection refused".into()),
        }
    }
    fn now(&self) -> Duration {
        self.clock.get()
    }
    fn sleep(&self, d: Duration) {
        let now = self.clock.get() + d;
        self.clock.set(now);
        self.later_files
            .borrow_mut()
            .retain(|(at, path, contents)| {
                let due = *at <= now;
                if due {
                    self.files
                        .borrow_mut()
                        .insert(path.clone(), contents.clone());
                }
                !due
            });
    }
    fn sync(&self) {
        self.record(Call::Sync);
    }
    fn power(&self, action: PowerAction) -> io::Result<()> {
        self.record(Call::Power(action));
        Ok(())
    }
}
