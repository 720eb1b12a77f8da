//! The boot sequence of `kimg init` (docs/ARCHITECTURE.md §5) and the life of PID 1 after it.
//!
//! [`Init::run`]: mount the pseudo filesystems, read `image.toml`, load modules, read the
//! cluster definition and the kernel command line, bring up `lo` and the NICs, identify the
//! node (retrying forever, never guessing), configure address, route, resolver, hostname,
//! `/etc/hosts` and sysctls, mount `STATE` (or a tmpfs; an etcd machine that booted from its
//! disk, `kimg.state=disk`, waits for `STATE` instead), start the role's services and
//! supervise them until a shutdown request, then stop them, sync, unmount `STATE` and power
//! off or reboot. Every step is a call on the injected [`System`], and every state change one
//! console [`Event`]. A panic inside a supervisor iteration is caught and the loop goes on.
//!
//! DHCP (PXE fleets): a machine that is neither named on the command line nor listed by MAC
//! asks for an address on each NIC in turn ([`dhcp_lease::acquire`]) and says
//! `kimg: dhcp-bound iface=… ip=… server=… lease=… name=…`. An address the node table lists
//! identifies that node; otherwise, if the cluster admits anonymous workers and the image
//! is a worker image, the machine joins as `worker-<mac hex>` (see [`identity`]). The
//! lease's mask, router and DNS servers are used instead of the table's network settings,
//! and the supervisor loop renews the lease at T1 ([`dhcp_lease::Renewal`]).
//!
//! Limits: a machine that gets no lease, or whose lease does not identify it, reports
//! `identify-failed reason=no-match|not-admitted … dhcp=no-lease|<address>` and keeps
//! retrying (each try waits up to 22 s per NIC for DHCP answers). A lost or expired lease
//! is reported, never dropped (see [`dhcp_lease`]).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;

use crate::cluster::{self, Cluster, ClusterError, Node, Role};

use super::cmdline;
use super::dhcp::Lease;
use super::dhcp_lease::{self, AcquireError, Renewal};
use super::etcd;
use super::events::Event;
use super::identity::{self, join_roles, Identity, Obtained, Source};
use super::image_config::{ImageConfig, ImageConfigError, IMAGE_CONFIG_PATH};
use super::master;
use super::mounts::{self, STATE_DIR, STATE_PARTNAME};
use super::network;
use super::supervisor::{Backoff, Supervisor};
use super::system::{HealthProbe, PowerAction, ServiceSpec, ShutdownReason, System};
use super::worker;

/// Where the builder puts the cluster definition inside the image.
pub const ETC_DIR: &str = "/etc/kimg";

/// Why the boot could not reach the supervisor.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot read {IMAGE_CONFIG_PATH}: {0}")]
    ImageConfigRead(std::io::Error),
    #[error(transparent)]
    ImageConfigInvalid(#[from] ImageConfigError),
    #[error("cannot read {ETC_DIR}/cluster.toml: {0}")]
    ClusterRead(std::io::Error),
    #[error("{ETC_DIR}/cluster.toml is invalid: {0}")]
    ClusterInvalid(#[from] ClusterError),
    #[error("shutdown requested during boot")]
    Interrupted(ShutdownReason),
}

/// A booted machine, ready to supervise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Booted {
    pub node: Node,
    pub services: Vec<ServiceSpec>,
    /// Must answer before the machine reports `ready`.
    pub health: Option<HealthProbe>,
    pub state_mounted: bool,
    /// The DHCP lease the address came from, kept alive by the supervisor loop.
    pub dhcp: Option<Renewal>,
}

/// How often a machine waiting for its `STATE` says so on the console.
pub const STATE_WAIT_NOTICE: Duration = Duration::from_secs(30);

/// Timings of PID 1.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    pub identify_retry: Duration,
    pub tick: Duration,
    pub health_every: Duration,
    pub stop_grace: Duration,
    pub backoff: Backoff,
}

impl Default for Timings {
    fn default() -> Timings {
        Timings {
            identify_retry: Duration::from_secs(5),
            tick: Duration::from_millis(200),
            health_every: Duration::from_secs(1),
            stop_grace: Duration::from_secs(10),
            backoff: Backoff::SERVICE,
        }
    }
}

/// PID 1 over a [`System`].
pub struct Init<S: System> {
    sys: S,
    timings: Timings,
}

impl<S: System> Init<S> {
    pub fn new(sys: S, timings: Timings) -> Init<S> {
        Init { sys, timings }
    }

    pub fn system(&self) -> &S {
        &self.sys
    }

    fn emit(&self, event: Event) {
        self.sys.console(&event.to_string());
    }

    /// The whole life of PID 1. Returns the power action taken (only returns at all when
    /// the power syscall failed, or in tests).
    pub fn run(&mut self) -> PowerAction {
        self.mount_base();
        match self.boot() {
            Ok(booted) => {
                let mut sup = Supervisor::new(booted.services.clone(), self.timings.backoff);
                let reason = self.supervise(&mut sup, &booted);
                self.shutdown(&mut sup, reason, booted.state_mounted)
            }
            Err(InitError::Interrupted(reason)) => {
                let mut sup = Supervisor::new(Vec::new(), self.timings.backoff);
                self.shutdown(&mut sup, reason, false)
            }
            Err(e) => {
                self.emit(Event::new("boot-failed").field("error", &e));
                let reason = loop {
                    if let Some(r) = self.sys.shutdown_requested() {
                        break r;
                    }
                    self.sys.sleep(self.timings.tick);
                };
                let mut sup = Supervisor::new(Vec::new(), self.timings.backoff);
                self.shutdown(&mut sup, reason, false)
            }
        }
    }

    /// proc, sys, dev, run, tmp, cgroup2; the console once /dev exists.
    pub fn mount_base(&self) {
        for m in mounts::base_mounts() {
            let _ = self.sys.mkdir_all(&m.target);
            if let Err(e) = self.sys.mount(&m) {
                self.emit(
                    Event::new("mount-failed")
                        .field("target", m.target.display())
                        .field("error", e),
                );
            }
            if m.fstype == "devtmpfs" {
                self.sys.attach_console();
            }
        }
    }

    fn load_modules(&self, image: &ImageConfig) {
        let base = Path::new("/lib/modules").join(&image.kernel_version);
        let mut failed = 0;
        for rel in &image.modules {
            if let Err(e) = self.sys.load_module(&base.join(rel)) {
                failed += 1;
                self.emit(
                    Event::new("module-failed")
                        .field("name", super::modules::module_name(rel))
                        .field("error", e),
                );
            }
        }
        self.emit(
            Event::new("modules")
                .field("loaded", image.modules.len() - failed)
                .field("failed", failed),
        );
    }

    fn load_cluster(&self) -> Result<Cluster, InitError> {
        let path = Path::new(ETC_DIR).join(cluster::CLUSTER_FILE);
        let text = self.sys.read_file(&path).map_err(InitError::ClusterRead)?;
        let file = cluster::parse(&text, &path)?;
        Ok(cluster::validate(
            file,
            Path::new(ETC_DIR),
            Some((&path, &text)),
        )?)
    }

    /// Everything from `image.toml` to the service list.
    pub fn boot(&mut self) -> Result<Booted, InitError> {
        let text = self
            .sys
            .read_file(Path::new(IMAGE_CONFIG_PATH))
            .map_err(InitError::ImageConfigRead)?;
        let image = ImageConfig::parse(&text)?;
        let image_roles = image.roles()?;
        self.load_modules(&image);
        let cluster = self.load_cluster()?;

        let cmd = cmdline::parse(
            &self
                .sys
                .read_file(Path::new("/proc/cmdline"))
                .unwrap_or_default(),
        );
        for ignored in &cmd.ignored {
            self.emit(
                Event::new("cmdline-ignored")
                    .field("key", &ignored.key)
                    .field("reason", ignored.reason),
            );
        }

        let (id, dhcp) = self.identify(&cluster, &image_roles, cmd.node.as_deref())?;
        let node = id.node.clone();
        self.emit(
            Event::new("booted")
                .field("role", join_roles(&node.roles))
                .field("node", &node.name)
                .field("source", &id.source),
        );
        self.configure_network(&cluster, &id, dhcp.as_ref().map(|r| &r.lease));
        // etcd on a tmpfs would come back empty after the next power loss: a machine that
        // booted from its disk waits for its STATE instead.
        let state_mounted = self.mount_state(cmd.state_on_disk && node.has(Role::Etcd))?;
        let _ = self.sys.mkdir_all(Path::new("/var/log"));

        let mut services = Vec::new();
        let mut health = None;
        if node.has(Role::Etcd) {
            services.push(etcd::supervised(&node));
            health = Some(etcd::health_probe());
        }
        if node.has(Role::Master) {
            let _ = self.sys.mkdir_all(Path::new(master::CONF_DIR));
            services.extend(master::services(&cluster, &node));
            // A stacked machine is ready once its apiserver is (which needs etcd quorum).
            health = Some(master::health_probe());
        }
        if node.has(Role::Worker) {
            match self.sys.read_file(Path::new(worker::TOKEN_FILE)) {
                Ok(token) => services.extend(worker::services(&cluster, &node, &token)),
                Err(e) => self.emit(
                    Event::new("worker-disabled")
                        .field("reason", "no bootstrap token")
                        .field("error", e),
                ),
            }
        }
        if image.debug_shell && self.sys.exists(Path::new("/bin/sh")) {
            services.push(ServiceSpec {
                name: "debug-shell".into(),
                argv: vec!["/bin/sh".into()],
                env: vec![("PATH".into(), "/usr/bin:/bin:/usr/sbin:/sbin".into())],
                console: true,
            });
        }
        Ok(Booted {
            node,
            services,
            health,
            state_mounted,
            dhcp,
        })
    }

    fn bring_links_up(&self) -> Vec<identity::Nic> {
        let nics = network::list_nics(&self.sys);
        for name in std::iter::once("lo").chain(nics.iter().map(|n| n.name.as_str())) {
            if let Err(e) = self.sys.link_up(name) {
                self.emit(
                    Event::new("link-failed")
                        .field("iface", name)
                        .field("error", e),
                );
            }
        }
        nics
    }

    /// Asks for a lease on each NIC with a MAC in turn; the first lease wins.
    fn dhcp(&self, nics: &[identity::Nic]) -> Result<Option<(usize, Lease)>, InitError> {
        for (i, nic) in nics.iter().enumerate() {
            let Some(mac) = nic.mac else { continue };
            match dhcp_lease::acquire(&self.sys, &nic.name, mac) {
                Ok(lease) => return Ok(Some((i, lease))),
                Err(AcquireError::Interrupted(r)) => return Err(InitError::Interrupted(r)),
                Err(e) => self.emit(
                    Event::new("dhcp-failed")
                        .field("iface", &nic.name)
                        .field("error", e),
                ),
            }
        }
        Ok(None)
    }

    fn identify(
        &self,
        cluster: &Cluster,
        image_roles: &[Role],
        cmdline_node: Option<&str>,
    ) -> Result<(Identity, Option<Renewal>), InitError> {
        loop {
            let nics = self.bring_links_up();
            let mut result = identity::identify(cluster, image_roles, cmdline_node, &nics, None);
            let mut lease = None;
            if result == Err(identity::IdentifyError::NoMatch) {
                lease = self.dhcp(&nics)?;
                if let Some((i, l)) = &lease {
                    let got = Obtained {
                        nic: &nics[*i],
                        addr: l.addr,
                    };
                    result = identity::identify(cluster, image_roles, None, &nics, Some(got));
                }
            }
            match result {
                Ok(id) => {
                    // The lease is the node's address whenever it identified the node.
                    let renewal = match (lease, &id.source) {
                        (Some((i, l)), Source::Address | Source::Anonymous) => nics[i]
                            .mac
                            .map(|mac| Renewal::new(&nics[i].name, mac, l, self.sys.now())),
                        _ => None,
                    };
                    if let Some(r) = &renewal {
                        self.emit(
                            Event::new("dhcp-bound")
                                .field("iface", &r.iface)
                                .field("ip", r.lease.net())
                                .field("server", r.lease.server)
                                .field("lease", r.lease.duration_text())
                                .field("name", &id.node.name),
                        );
                    }
                    return Ok((id, renewal));
                }
                Err(e) => {
                    let macs: Vec<String> = nics
                        .iter()
                        .map(|n| n.mac.map(|m| m.to_string()).unwrap_or_default())
                        .collect();
                    let mut ev = Event::new("identify-failed")
                        .field("reason", e.reason())
                        .field("macs", macs.join(","));
                    if cmdline_node.is_none() {
                        let dhcp = match &lease {
                            Some((_, l)) => l.net().to_string(),
                            None => "no-lease".into(),
                        };
                        ev = ev.field("dhcp", dhcp);
                    }
                    self.emit(ev.field("detail", &e));
                }
            }
            let until = self.sys.now() + self.timings.identify_retry;
            while self.sys.now() < until {
                if let Some(r) = self.sys.shutdown_requested() {
                    return Err(InitError::Interrupted(r));
                }
                self.sys.sleep(self.timings.tick);
            }
        }
    }

    /// Address, route, resolver, hostname, `/etc/hosts`, sysctls: from the node table, or
    /// from the DHCP `lease` where there is one.
    fn configure_network(&self, cluster: &Cluster, id: &Identity, lease: Option<&Lease>) {
        let node = &id.node;
        let prefix = cluster.network.prefix.prefix_len();
        if let Some(iface) = &id.iface {
            let addr = match lease {
                Some(l) => l.net(),
                None => Ipv4Net::new(node.ip, prefix).unwrap_or(cluster.network.prefix),
            };
            match self.sys.add_address(iface, addr) {
                Ok(()) => self.emit(
                    Event::new("network-up")
                        .field("iface", iface)
                        .field("addr", addr),
                ),
                Err(e) => self.emit(
                    Event::new("network-failed")
                        .field("iface", iface)
                        .field("error", e),
                ),
            }
            if let Some(gw) = lease.and_then(|l| l.router).or(cluster.network.gateway) {
                if let Err(e) = self.sys.add_default_route(gw) {
                    self.emit(
                        Event::new("route-failed")
                            .field("via", gw)
                            .field("error", e),
                    );
                }
            }
        } else {
            self.emit(Event::new("network-failed").field("error", "no network interface"));
        }
        let dns = match lease {
            Some(l) if !l.dns.is_empty() => &l.dns,
            _ => &cluster.network.dns,
        };
        let files = [
            ("/etc/resolv.conf", network::resolv_conf(dns)),
            ("/etc/hosts", network::hosts(cluster, node)),
            ("/etc/hostname", format!("{}\n", node.name)),
        ];
        for (path, text) in files {
            if let Err(e) = self.sys.write_file(Path::new(path), &text) {
                self.emit(
                    Event::new("write-failed")
                        .field("path", path)
                        .field("error", e),
                );
            }
        }
        if let Err(e) = self.sys.set_hostname(&node.name) {
            self.emit(Event::new("hostname-failed").field("error", e));
        }
        let mut sysctls = vec![("net.ipv4.ip_forward", "1")];
        if self.sys.exists(Path::new("/proc/sys/net/bridge")) {
            sysctls.push(("net.bridge.bridge-nf-call-iptables", "1"));
        }
        for (key, value) in sysctls {
            if let Err(e) = self.sys.write_sysctl(key, value) {
                self.emit(
                    Event::new("sysctl-failed")
                        .field("key", key)
                        .field("error", e),
                );
            }
        }
    }

    /// Mounts `STATE` (ext4) or a tmpfs at `/var/lib/kimg`. True when `STATE` was mounted.
    /// Mounts `STATE`, or a tmpfs in its place; with `required`, waits for `STATE` instead
    /// (saying so on the console every [`STATE_WAIT_NOTICE`]) until it mounts or a shutdown
    /// is requested. Returns whether `STATE` is mounted.
    fn mount_state(&self, required: bool) -> Result<bool, InitError> {
        let _ = self.sys.mkdir_all(Path::new(STATE_DIR));
        if !required {
            if !self.try_mount_state() {
                self.mount_state_tmpfs();
                return Ok(false);
            }
            return Ok(true);
        }
        let mut next_notice = self.sys.now();
        loop {
            if self.try_mount_state() {
                return Ok(true);
            }
            if self.sys.now() >= next_notice {
                self.emit(
                    Event::new("state-wait")
                        .field("role", "etcd")
                        .field(
                            "reason",
                            "booted from disk but its STATE partition is missing or unreadable",
                        )
                        .field(
                            "detail",
                            "etcd is not started on a tmpfs; attach the disk (or reflash it)",
                        ),
                );
                next_notice = self.sys.now() + STATE_WAIT_NOTICE;
            }
            let until = self.sys.now() + self.timings.identify_retry;
            while self.sys.now() < until {
                if let Some(r) = self.sys.shutdown_requested() {
                    return Err(InitError::Interrupted(r));
                }
                self.sys.sleep(self.timings.tick);
            }
        }
    }

    fn mount_state_tmpfs(&self) {
        if let Err(e) = self.sys.mount(&mounts::state_tmpfs()) {
            self.emit(
                Event::new("state-mount-failed")
                    .field("device", "tmpfs")
                    .field("error", e),
            );
        }
        self.emit(Event::new("state").field("kind", "tmpfs"));
    }

    /// Finds the `STATE` partition and mounts it.
    fn try_mount_state(&self) -> bool {
        let base = PathBuf::from("/sys/class/block");
        let found = self
            .sys
            .read_dir(&base)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|d| self.sys.read_file(&base.join(d).join("uevent")).ok())
            .filter_map(|t| mounts::parse_uevent(&t))
            .find(|d| d.partname.as_deref() == Some(STATE_PARTNAME));
        if let Some(dev) = found {
            let path = dev.dev_path();
            if !self.sys.exists(&path) {
                let _ = self.sys.mknod_block(&path, dev.major, dev.minor);
            }
            match self.sys.mount(&mounts::state_mount(&dev)) {
                Ok(()) => {
                    self.emit(
                        Event::new("state")
                            .field("kind", "ext4")
                            .field("device", path.display()),
                    );
                    return true;
                }
                Err(e) => self.emit(
                    Event::new("state-mount-failed")
                        .field("device", path.display())
                        .field("error", e),
                ),
            }
        }
        false
    }

    /// Runs the supervisor until a shutdown is requested.
    pub fn supervise(&mut self, sup: &mut Supervisor, booted: &Booted) -> ShutdownReason {
        let mut ready = false;
        let mut next_probe = Duration::ZERO;
        let names: Vec<String> = booted
            .services
            .iter()
            .filter(|s| !s.console)
            .map(|s| s.name.clone())
            .collect();
        let mut dhcp = booted.dhcp.clone();
        loop {
            if let Some(reason) = self.sys.shutdown_requested() {
                return reason;
            }
            let sys = &self.sys;
            let timings = self.timings;
            let step = catch_unwind(AssertUnwindSafe(|| {
                if let Some(event) = dhcp.as_mut().and_then(|r| r.poll(sys)) {
                    sys.console(&event.to_string());
                }
                sup.reap(sys);
                sup.start_due(sys);
                if !ready && sup.all_started() && sys.now() >= next_probe {
                    let healthy = match &booted.health {
                        None => true,
                        Some(probe) => sys.probe_health(probe).is_ok(),
                    };
                    next_probe = sys.now() + timings.health_every;
                    if healthy {
                        ready = true;
                        sys.console(
                            &Event::new("ready")
                                .field("role", join_roles(&booted.node.roles))
                                .field("node", &booted.node.name)
                                .field("services", names.join(","))
                                .to_string(),
                        );
                    }
                }
            }));
            if step.is_err() {
                self.emit(Event::new("panic-recovered").field("in", "supervisor"));
            }
            self.sys.sleep(self.timings.tick);
        }
    }

    /// Stops services, syncs, unmounts `STATE`, powers off or reboots.
    pub fn shutdown(
        &mut self,
        sup: &mut Supervisor,
        reason: ShutdownReason,
        state_mounted: bool,
    ) -> PowerAction {
        let action = reason.action();
        self.emit(
            Event::new("shutdown")
                .field("reason", reason.as_str())
                .field(
                    "action",
                    match action {
                        PowerAction::PowerOff => "poweroff",
                        PowerAction::Reboot => "reboot",
                    },
                ),
        );
        sup.stop_all(&self.sys, self.timings.stop_grace);
        self.sys.sync();
        if state_mounted {
            if let Err(e) = self.sys.umount(Path::new(STATE_DIR)) {
                self.emit(
                    Event::new("umount-failed")
                        .field("target", STATE_DIR)
                        .field("error", e),
                );
            }
        }
        if let Err(e) = self.sys.power(action) {
            self.emit(Event::new("power-failed").field("error", e));
        }
        action
    }
}

#[cfg(test)]
#[path = "init_tests.rs"]
mod tests;
