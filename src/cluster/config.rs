//! `cluster.toml`: the public, reviewable definition of one cluster.
//!
//! # Format
//!
//! ```toml
//! name = "prod"                      # DNS label; names the kubeconfig context
//! api-vip = "192.168.202.160"        # the API virtual IP, held by one healthy master
//! api-port = 6443
//! pod-cidr = "10.244.0.0/16"         # split into one /24 per node
//! service-cidr = "10.96.0.0/12"      # ClusterIPs; the first address is `kubernetes`
//! dns-domain = "cluster.local"
//! anonymous-workers = true           # admit DHCP workers not listed below (PXE fleets),
//!                                    # named worker-<MAC hex> (src/node/identity.rs)
//! insecure-registries = ["192.168.1.100:5000"]  # optional: registries kubelets pull from
//!                                    # over plain HTTP (others: HTTPS; loopback: HTTP)
//!
//! [network]                          # the machines' own network
//! prefix = "192.168.202.0/24"
//! gateway = "192.168.202.1"          # optional: no default route when absent
//! dns = ["192.168.202.1"]            # upstream resolvers for nodes and cluster DNS
//! ntp = []                           # optional NTP servers
//!
//! [vip]                              # optional: timing of `kimg vip` (these are the defaults)
//! lease-duration = "2s"              # a master takes over a Lease unchanged for this long
//! renew-deadline = "1500ms"          # the holder drops the VIP if it could not renew for this long
//! retry-period = "250ms"             # interval between reads and renewals
//!
//! [[node]]                           # one table per machine
//! name = "etcd-1"
//! roles = ["etcd"]                   # any of "etcd", "master", "worker"
//! ip = "192.168.202.161"
//! mac = "52:54:00:12:34:56"          # optional; lets a machine recognise itself by MAC
//! ```
//!
//! Keys are kebab-case and unknown keys are refused. Loading parses the text into
//! [`ClusterFile`] (strings as written), then [`validate`](super::validate) resolves it into a
//! [`Cluster`] with typed addresses; every error names the file, line and key. Saving writes
//! a canonical form, so load → save of a file that kimg wrote is byte-identical. IPv4 only.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::error::{ClusterError, FieldError};

/// The file name inside a cluster directory.
pub const CLUSTER_FILE: &str = "cluster.toml";

const HEADER: &str = "# kimg cluster definition. Public and reviewable: keys live in secrets/.\n\
# Reference: `kimg cluster --help` and the module docs of src/cluster/config.rs.\n\n";

/// `cluster.toml` as written: every value still a string, so that validation can name the
/// exact key and line of a bad one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClusterFile {
    pub name: String,
    pub api_vip: String,
    #[serde(default = "default_api_port")]
    pub api_port: u16,
    #[serde(default = "default_pod_cidr")]
    pub pod_cidr: String,
    #[serde(default = "default_service_cidr")]
    pub service_cidr: String,
    #[serde(default = "default_dns_domain")]
    pub dns_domain: String,
    #[serde(default = "default_true")]
    pub anonymous_workers: bool,
    /// Registries (`host:port`) the kubelets pull from over plain HTTP, like the seeds'
    /// private `192.168.1.100:5000`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub insecure_registries: Vec<String>,
    pub network: NetworkFile,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<VipFile>,
    #[serde(default, rename = "node")]
    pub nodes: Vec<NodeFile>,
}

/// The optional `[vip]` table: durations as written (`"2s"`, `"1500ms"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct VipFile {
    #[serde(default = "default_lease_duration")]
    pub lease_duration: String,
    #[serde(default = "default_renew_deadline")]
    pub renew_deadline: String,
    #[serde(default = "default_retry_period")]
    pub retry_period: String,
}

fn default_lease_duration() -> String {
    "2s".into()
}
fn default_renew_deadline() -> String {
    "1500ms".into()
}
fn default_retry_period() -> String {
    "250ms".into()
}

/// `kimg vip` timing (see `node::vip`): failover after a crash takes about
/// `lease_duration + retry_period`; `retry_period < renew_deadline < lease_duration`.
pub use crate::client::lease::Timing as VipTiming;

/// The `[network]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NetworkFile {
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default)]
    pub dns: Vec<String>,
    #[serde(default)]
    pub ntp: Vec<String>,
}

/// One `[[node]]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NodeFile {
    pub name: String,
    pub roles: Vec<String>,
    pub ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

pub fn default_api_port() -> u16 {
    6443
}
pub fn default_pod_cidr() -> String {
    "10.244.0.0/16".into()
}
pub fn default_service_cidr() -> String {
    "10.96.0.0/12".into()
}
pub fn default_dns_domain() -> String {
    "cluster.local".into()
}
fn default_true() -> bool {
    true
}

/// What a machine does. A node may have several (stacked master+etcd, all-in-one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Etcd,
    Master,
    Worker,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Etcd, Role::Master, Role::Worker];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Etcd => "etcd",
            Role::Master => "master",
            Role::Worker => "worker",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A MAC address, stored lower-case with colons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub fn parse(s: &str) -> Option<Mac> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return None;
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(parts) {
            if p.len() != 2 {
                return None;
            }
            *o = u8::from_str_radix(p, 16).ok()?;
        }
        Some(Mac(out))
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A validated machine of the node table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// Sorted, without duplicates, never empty.
    pub roles: Vec<Role>,
    pub ip: Ipv4Addr,
    pub mac: Option<Mac>,
}

impl Node {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// The validated node network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub prefix: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub ntp: Vec<String>,
}

/// A validated cluster definition: every address parsed, every cross-check passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// The directory holding `cluster.toml` and `secrets/`.
    pub dir: PathBuf,
    pub name: String,
    pub api_vip: Ipv4Addr,
    pub api_port: u16,
    pub pod_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    pub dns_domain: String,
    pub anonymous_workers: bool,
    /// Registries pulled from over plain HTTP (`host[:port]`).
    pub insecure_registries: Vec<String>,
    pub network: Network,
    pub vip_timing: VipTiming,
    pub nodes: Vec<Node>,
    /// Non-fatal findings (e.g. an even etcd member count), one sentence each.
    pub warnings: Vec<String>,
    /// The file exactly as loaded or created, for byte-identical saves.
    pub file: ClusterFile,
}

impl Cluster {
    /// The canonical text of `cluster.toml` for this cluster.
    pub fn to_toml(&self) -> String {
        render(&self.file)
    }

    /// Writes `DIR/cluster.toml` (atomically: temp file + rename).
    pub fn save(&self) -> Result<(), ClusterError> {
        let path = self.dir.join(CLUSTER_FILE);
        std::fs::create_dir_all(&self.dir)
            .and_then(|()| crate::files::write_atomic(&path, self.to_toml().as_bytes(), 0o644))
            .map_err(|source| ClusterError::Write { path, source })
    }

    pub fn nodes_with(&self, role: Role) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(move |n| n.has(role))
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// `https://<vip>:<port>`.
    pub fn api_url(&self) -> String {
        format!("https://{}:{}", self.api_vip, self.api_port)
    }

    /// The first usable service IP: the ClusterIP of the `kubernetes` Service.
    pub fn kubernetes_service_ip(&self) -> Ipv4Addr {
        let base = u32::from(self.service_cidr.network());
        Ipv4Addr::from(base + 1)
    }
}

/// Parses TOML text into a [`ClusterFile`], with `file:line` in every error.
pub fn parse(text: &str, path: &Path) -> Result<ClusterFile, ClusterError> {
    toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of_offset(text, s.start));
        ClusterError::Invalid(vec![FieldError {
            file: Some(path.to_path_buf()),
            line,
            field: String::new(),
            message: e.message().to_string(),
        }])
    })
}

/// Renders the canonical text of a [`ClusterFile`].
pub fn render(file: &ClusterFile) -> String {
    let body = toml::to_string(file).expect("a ClusterFile always serialises");
    format!("{HEADER}{body}")
}

/// 1-based line number of a byte offset.
pub fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_parse_with_colons_or_dashes_and_print_lowercase() {
        let m = Mac::parse("52-54-00-AB-cd-01").unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:01");
        assert!(Mac::parse("52:54:00:ab:cd").is_none());
        assert!(Mac::parse("52:54:00:ab:cd:zz").is_none());
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let text = "name = \"a\"\napi-vip = \"10.0.0.5\"\ncolour = \"red\"\n[network]\nprefix = \"10.0.0.0/24\"\n";
        let err = parse(text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("c.toml:3"), "{err}");
        assert!(err.contains("colour"), "{err}");
    }
}
