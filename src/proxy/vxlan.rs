//! The cross-node pod overlay: a flannel-style VXLAN device programmed from Node objects.
//!
//! What: every node owns a `spec.podCIDR` (say 10.244.2.0/24) and a VTEP: the vxlan
//! device `kimg.1` (VNI 1, UDP 8472, local = the node's InternalIP), whose MAC the node
//! publishes in the annotation `kimg.io/vtep-mac` and whose address is the `.0` of its
//! podCIDR (as a /32). To reach the pods of every *other* node, this node needs:
//! - a route `<podCIDR> via <remote .0> dev kimg.1 onlink`,
//! - a permanent neighbour entry `<remote .0> lladdr <remote VTEP MAC>`,
//! - a forwarding-database entry `<remote VTEP MAC> dst <remote InternalIP>`,
//!
//! so a packet for 10.244.2.9 is routed to the device, gets the remote VTEP MAC from the
//! neighbour table, and is encapsulated in UDP to the node IP the FDB names. No learning
//! and no multicast: everything is static, derived from the API.
//!
//! How: [`desired_state`] computes an [`OverlayState`] from Node objects; [`diff`] turns
//! current vs desired into ordered [`Change`]s; a [`Netlink`] applies them.
//! [`RecordingNetlink`] keeps the state in memory for tests; [`IpRoute2`] programs the
//! kernel through the `ip` and `bridge` commands (iproute2), optionally inside a netns.
//!
//! Limits: IPv4 only; one VNI; the device MTU is left to the caller (50 bytes below
//! the uplink's is right for VXLAN over IPv4); nodes with a missing or malformed
//! podCIDR, InternalIP or VTEP MAC are skipped and reported, not fatal (except the
//! local node). `IpRoute2` reads state by parsing `ip -j` JSON output.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::process::Command;
use std::str::FromStr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;

/// The annotation holding a node's VTEP MAC address.
pub const VTEP_MAC_ANNOTATION: &str = "kimg.io/vtep-mac";
/// The overlay device name.
pub const DEVICE: &str = "kimg.1";
/// The VXLAN network identifier.
pub const VNI: u32 = 1;
/// The VXLAN UDP port (flannel's, the Linux default before IANA's 4789).
pub const PORT: u16 = 8472;

/// Why a Node or the kernel state could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VxlanError {
    #[error("node has no name")]
    NodeNameMissing,
    #[error("node {0} has no spec.podCIDR")]
    PodCidrMissing(String),
    #[error("node {node} has an invalid podCIDR {value:?}")]
    PodCidrInvalid { node: String, value: String },
    #[error("node {0} has no IPv4 InternalIP address")]
    InternalIpMissing(String),
    #[error("node {node} has no valid {VTEP_MAC_ANNOTATION} annotation ({value:?})")]
    VtepMacInvalid { node: String, value: Option<String> },
    #[error("local node {0} is not among the nodes")]
    LocalNodeMissing(String),
    #[error("running {command} failed: {message}")]
    CommandFailed { command: String, message: String },
    #[error("reading the overlay state from {command} failed: {message}")]
    StateUnreadable { command: String, message: String },
}

/// A 48-bit Ethernet address, written `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or(())?;
            if part.len() != 2 {
                return Err(());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| ())?;
        }
        if parts.next().is_some() {
            return Err(());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// What the overlay needs to know about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayNode {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub vtep_mac: MacAddr,
}

impl OverlayNode {
    /// The node's VTEP address: the network address (`.0`) of its podCIDR.
    pub fn vtep_ip(&self) -> Ipv4Addr {
        self.pod_cidr.network()
    }
}

/// Reads the overlay facts from a Node object.
pub fn overlay_node(node: &Node) -> Result<OverlayNode, VxlanError> {
    let name = node
        .metadata
        .name
        .clone()
        .ok_or(VxlanError::NodeNameMissing)?;
    let cidr = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.clone())
        .ok_or_else(|| VxlanError::PodCidrMissing(name.clone()))?;
    let pod_cidr = cidr
        .parse::<Ipv4Net>()
        .map_err(|_| VxlanError::PodCidrInvalid {
            node: name.clone(),
            value: cidr.clone(),
        })?
        .trunc();
    let ip = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse::<Ipv4Addr>().ok())
        .ok_or_else(|| VxlanError::InternalIpMissing(name.clone()))?;
    let annotation = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(VTEP_MAC_ANNOTATION))
        .cloned();
    let vtep_mac = annotation
        .as_deref()
        .and_then(|v| v.parse::<MacAddr>().ok())
        .ok_or_else(|| VxlanError::VtepMacInvalid {
            node: name.clone(),
            value: annotation.clone(),
        })?;
    Ok(OverlayNode {
        name,
        ip,
        pod_cidr,
        vtep_mac,
    })
}

/// The local vxlan device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct VxlanDevice {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    /// The underlay source address (the node's InternalIP).
    pub local: Ipv4Addr,
    pub mac: MacAddr,
    /// The `.0` of the local podCIDR, as a /32.
    pub address: Ipv4Addr,
}

/// `<dst> via <via> dev kimg.1 onlink`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub dst: Ipv4Net,
    pub via: Ipv4Addr,
}

/// A permanent ARP entry on the device: remote VTEP IP → remote VTEP MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
}

/// A forwarding-database entry: remote VTEP MAC → remote node IP (the UDP destination).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FdbEntry {
    pub mac: MacAddr,
    pub dst: Ipv4Addr,
}

/// The overlay as programmed (or to be programmed) on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayState {
    pub device: Option<VxlanDevice>,
    pub routes: BTreeSet<Route>,
    pub neighbours: BTreeSet<Neighbour>,
    pub fdb: BTreeSet<FdbEntry>,
}

/// One step that moves the kernel towards the desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    CreateDevice(VxlanDevice),
    DeleteDevice(String),
    AddFdb(FdbEntry),
    DelFdb(FdbEntry),
    AddNeighbour(Neighbour),
    DelNeighbour(Neighbour),
    AddRoute(Route),
    DelRoute(Route),
}

/// The desired state of node `local`, plus the remote nodes skipped and why.
pub fn desired_state(
    local: &str,
    nodes: &[Node],
) -> Result<(OverlayState, Vec<VxlanError>), VxlanError> {
    let mut skipped = Vec::new();
    let mut overlay = Vec::new();
    let mut me = None;
    for node in nodes {
        let is_local = node.metadata.name.as_deref() == Some(local);
        match overlay_node(node) {
            Ok(n) if is_local => me = Some(n),
            Ok(n) => overlay.push(n),
            Err(e) if is_local => return Err(e),
            Err(e) => skipped.push(e),
        }
    }
    let me = me.ok_or_else(|| VxlanError::LocalNodeMissing(local.to_string()))?;
    let mut state = OverlayState {
        device: Some(VxlanDevice {
            name: DEVICE.to_string(),
            vni: VNI,
            port: PORT,
            local: me.ip,
            mac: me.vtep_mac,
            address: me.vtep_ip(),
        }),
        ..OverlayState::default()
    };
    for remote in &overlay {
        // Two nodes claiming the same podCIDR would fight over one route; skip the
        // later one (nodes arrive sorted by the caller's list, e.g. by name).
        if remote.pod_cidr == me.pod_cidr || state.routes.iter().any(|r| r.dst == remote.pod_cidr) {
            skipped.push(VxlanError::PodCidrInvalid {
                node: remote.name.clone(),
                value: format!("{} (already taken)", remote.pod_cidr),
            });
            continue;
        }
        state.routes.insert(Route {
            dst: remote.pod_cidr,
            via: remote.vtep_ip(),
        });
        state.neighbours.insert(Neighbour {
            ip: remote.vtep_ip(),
            mac: remote.vtep_mac,
        });
        state.fdb.insert(FdbEntry {
            mac: remote.vtep_mac,
            dst: remote.ip,
        });
    }
    Ok((state, skipped))
}

/// The ordered changes that turn `current` into `desired`: removals first (routes,
/// neighbours, FDB), then additions in the reverse order, so no route ever points at a
/// VTEP whose neighbour or FDB entry is missing. A device whose settings differ is
/// recreated, which also drops its entries, so they are all added again.
pub fn diff(current: &OverlayState, desired: &OverlayState) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut base = current.clone();
    if current.device != desired.device {
        if let Some(old) = &current.device {
            changes.push(Change::DeleteDevice(old.name.clone()));
        }
        if let Some(new) = &desired.device {
            changes.push(Change::CreateDevice(new.clone()));
        }
        base = OverlayState::default();
    }
    if desired.device.is_none() {
        return changes;
    }
    changes.extend(
        base.routes
            .difference(&desired.routes)
            .map(|r| Change::DelRoute(*r)),
    );
    changes.extend(
        base.neighbours
            .difference(&desired.neighbours)
            .map(|n| Change::DelNeighbour(*n)),
    );
    changes.extend(
        base.fdb
            .difference(&desired.fdb)
            .map(|f| Change::DelFdb(*f)),
    );
    changes.extend(
        desired
            .fdb
            .difference(&base.fdb)
            .map(|f| Change::AddFdb(*f)),
    );
    changes.extend(
        desired
            .neighbours
            .difference(&base.neighbours)
            .map(|n| Change::AddNeighbour(*n)),
    );
    changes.extend(
        desired
            .routes
            .difference(&base.routes)
            .map(|r| Change::AddRoute(*r)),
    );
    changes
}

/// The seam to the kernel's link, route, neighbour and FDB tables.
pub trait Netlink {
    /// The overlay as the kernel has it now (device `kimg.1` and its entries).
    fn read_state(&mut self) -> Result<OverlayState, VxlanError>;
    /// Carries out one change.
    fn apply(&mut self, change: &Change) -> Result<(), VxlanError>;
}

/// Reads the current state, applies the diff to `desired`, returns what was done.
pub fn sync(netlink: &mut dyn Netlink, desired: &OverlayState) -> Result<Vec<Change>, VxlanError> {
    let current = netlink.read_state()?;
    let changes = diff(&current, desired);
    for change in &changes {
        netlink.apply(change)?;
    }
    Ok(changes)
}

/// An in-memory kernel: applies changes to a state and records them.
#[derive(Debug, Clone, Default)]
pub struct RecordingNetlink {
    pub state: OverlayState,
    pub applied: Vec<Change>,
}

impl Netlink for RecordingNetlink {
    fn read_state(&mut self) -> Result<OverlayState, VxlanError> {
        Ok(self.state.clone())
    }

    fn apply(&mut self, change: &Change) -> Result<(), VxlanError> {
        let s = &mut self.state;
        match change {
            Change::CreateDevice(d) => s.device = Some(d.clone()),
            Change::DeleteDevice(_) => *s = OverlayState::default(),
            Change::AddFdb(f) => {
                s.fdb.insert(*f);
            }
            Change::DelFdb(f) => {
                s.fdb.remove(f);
            }
            Change::AddNeighbour(n) => {
                s.neighbours.insert(*n);
            }
            Change::DelNeighbour(n) => {
                s.neighbours.remove(n);
            }
            Change::AddRoute(r) => {
                s.routes.insert(*r);
            }
            Change::DelRoute(r) => {
                s.routes.remove(r);
            }
        }
        self.applied.push(change.clone());
        Ok(())
    }
}

#[path = "vxlan_iproute2.rs"]
mod iproute2;
pub use iproute2::IpRoute2;

fn run(argv: Vec<String>, netns: Option<&str>) -> Result<String, VxlanError> {
    let mut full: Vec<String> = Vec::new();
    if let Some(ns) = netns {
        full.extend(["ip", "netns", "exec", ns].map(String::from));
    }
    full.extend(argv);
    let rendered = full.join(" ");
    let (program, args) = full
        .split_first()
        .ok_or_else(|| VxlanError::CommandFailed {
            command: rendered.clone(),
            message: "empty command".into(),
        })?;
    let output =
        Command::new(program)
            .args(args)
            .output()
            .map_err(|e| VxlanError::CommandFailed {
                command: rendered.clone(),
                message: e.to_string(),
            })?;
    if !output.status.success() {
        return Err(VxlanError::CommandFailed {
            command: rendered,
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
#[path = "vxlan_tests.rs"]
mod tests;
