//! Validation: a [`ClusterFile`] (strings as written) becomes a [`Cluster`] (typed), or a
//! list of [`FieldError`]s that each name the key and, for a loaded file, its line.
//!
//! Checks: IPv4 syntax of every address and CIDR (host bits must be zero), pairwise overlap
//! of the pod, service and node networks, the VIP inside the node subnet and distinct from
//! every node IP and the gateway, unique node names, IPs and MACs, known roles, at least one
//! etcd and one master node, DNS-label names. An even etcd member count is a warning, not an
//! error: it works, but tolerates no more failures than one member fewer.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use toml_edit::{ImDocument, Item, Table, Value};

use super::config::{line_of_offset, Cluster, ClusterFile, Mac, Network, Node, Role, VipTiming};
use super::error::{ClusterError, FieldError};

struct Checker<'a> {
    source: Option<(&'a Path, ImDocument<&'a str>, &'a str)>,
    errors: Vec<FieldError>,
}

impl<'a> Checker<'a> {
    fn fail(&mut self, field: &str, message: impl Into<String>) {
        let (file, line) = match &self.source {
            Some((path, doc, text)) => (
                Some(path.to_path_buf()),
                locate(doc.as_table(), field).map(|off| line_of_offset(text, off)),
            ),
            None => (None, None),
        };
        self.errors.push(FieldError {
            file,
            line,
            field: field.to_string(),
            message: message.into(),
        });
    }

    fn location(&self, field: &str) -> String {
        match &self.source {
            Some((path, doc, text)) => match locate(doc.as_table(), field) {
                Some(off) => format!("{}:{}: ", path.display(), line_of_offset(text, off)),
                None => format!("{}: ", path.display()),
            },
            None => String::new(),
        }
    }

    fn ip(&mut self, field: &str, value: &str) -> Option<Ipv4Addr> {
        match value.parse::<Ipv4Addr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.fail(field, format!("{value:?} is not an IPv4 address"));
                None
            }
        }
    }

    fn cidr(&mut self, field: &str, value: &str) -> Option<Ipv4Net> {
        match value.parse::<Ipv4Net>() {
            Ok(net) if net.network() != net.addr() => {
                self.fail(
                    field,
                    format!("{value:?} has host bits set; did you mean {}?", net.trunc()),
                );
                None
            }
            Ok(net) => Some(net),
            Err(_) => {
                self.fail(
                    field,
                    format!("{value:?} is not an IPv4 CIDR such as 10.244.0.0/16"),
                );
                None
            }
        }
    }
}

// Loading lives beside validation so that the types (`config.rs`) import nothing of it.
impl Cluster {
    /// Loads and validates `DIR/cluster.toml`.
    pub fn load(dir: &Path) -> Result<Cluster, ClusterError> {
        let path = dir.join(super::config::CLUSTER_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ClusterError::Missing {
                    dir: dir.to_path_buf(),
                })
            }
            Err(source) => return Err(ClusterError::Read { path, source }),
        };
        let file = super::config::parse(&text, &path)?;
        validate(file, dir, Some((&path, &text)))
    }
}

/// The 1-based line of a dotted key path in a TOML text, if the key is present.
pub fn line_of_key(text: &str, field: &str) -> Option<usize> {
    let doc = ImDocument::parse(text).ok()?;
    locate(doc.as_table(), field).map(|off| line_of_offset(text, off))
}

/// Finds the byte offset of a dotted key path (`node[2].ip`, `network.dns[1]`) in a document.
fn locate(root: &Table, field: &str) -> Option<usize> {
    let mut table = root;
    let mut offset = None;
    let segments: Vec<&str> = field.split('.').collect();
    for (i, seg) in segments.iter().enumerate() {
        let (key, index) = match seg.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (*seg, None),
        };
        let (k, item) = table.get_key_value(key)?;
        offset = k.span().map(|s| s.start).or(offset);
        let last = i + 1 == segments.len();
        match (item, index) {
            (Item::Table(t), None) => {
                offset = t.span().map(|s| s.start).or(offset);
                table = t;
            }
            (Item::ArrayOfTables(a), Some(ix)) => {
                let t = a.get(ix)?;
                offset = t.span().map(|s| s.start).or(offset);
                table = t;
            }
            (Item::Value(Value::Array(arr)), Some(ix)) => {
                return arr
                    .get(ix)
                    .and_then(|v| v.span())
                    .map(|s| s.start)
                    .or(offset);
            }
            (Item::Value(v), _) => return v.span().map(|s| s.start).or(offset),
            _ if last => return offset,
            _ => return offset,
        }
    }
    offset
}

/// A DNS label (RFC 1123): node names, cluster names.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Validates a parsed file. `source` (path and text) adds `file:line` to every error.
pub fn validate(
    file: ClusterFile,
    dir: &Path,
    source: Option<(&Path, &str)>,
) -> Result<Cluster, ClusterError> {
    let mut c = Checker {
        source: source.and_then(|(p, t)| ImDocument::parse(t).ok().map(|d| (p, d, t))),
        errors: Vec::new(),
    };
    c.names_and_ports(&file);
    let net = c.networks(&file);
    let nodes = c.node_table(&file, &net);
    let warnings = c.role_counts(&nodes);
    let vip_timing = c.vip_timing(&file);
    c.insecure_registries(&file);

    if !c.errors.is_empty() {
        return Err(ClusterError::Invalid(c.errors));
    }
    let (Some(api_vip), Some(pod_cidr), Some(service_cidr), Some(prefix)) =
        (net.vip, net.pod, net.svc, net.prefix)
    else {
        unreachable!("every missing value recorded an error");
    };
    Ok(Cluster {
        dir: dir.to_path_buf(),
        name: file.name.clone(),
        api_vip,
        api_port: file.api_port,
        pod_cidr,
        service_cidr,
        dns_domain: file.dns_domain.clone(),
        anonymous_workers: file.anonymous_workers,
        insecure_registries: file.insecure_registries.clone(),
        network: Network {
            prefix,
            gateway: net.gateway,
            dns: net.dns,
            ntp: file.network.ntp.clone(),
        },
        vip_timing,
        nodes,
        warnings,
        file,
    })
}

/// The addresses and networks of `cluster.toml`, each `None` where it did not parse (an
/// error is then recorded).
struct Networks {
    vip: Option<Ipv4Addr>,
    pod: Option<Ipv4Net>,
    svc: Option<Ipv4Net>,
    prefix: Option<Ipv4Net>,
    gateway: Option<Ipv4Addr>,
    dns: Vec<Ipv4Addr>,
}

// The stages of `validate`, in order; each records what it finds wrong and goes on.
impl Checker<'_> {
    /// The cluster's name, DNS domain and API port.
    fn names_and_ports(&mut self, file: &ClusterFile) {
        if !is_dns_label(&file.name) {
            self.fail(
                "name",
                format!(
                    "{:?} must be a DNS label: lower-case letters, digits and '-', at most 63",
                    file.name
                ),
            );
        }
        if !is_dns_subdomain(&file.dns_domain) {
            self.fail(
                "dns-domain",
                format!("{:?} is not a valid DNS domain", file.dns_domain),
            );
        }
        if file.api_port == 0 {
            self.fail("api-port", "must be between 1 and 65535");
        }
    }

    /// The VIP, the pod, service and node networks (no overlaps), the gateway and DNS.
    fn networks(&mut self, file: &ClusterFile) -> Networks {
        let vip = self.ip("api-vip", &file.api_vip);
        let pod = self.cidr("pod-cidr", &file.pod_cidr);
        let svc = self.cidr("service-cidr", &file.service_cidr);
        let prefix = self.cidr("network.prefix", &file.network.prefix);
        if let Some(pod) = pod {
            if pod.prefix_len() > 24 {
                self.fail(
                    "pod-cidr",
                    format!(
                        "{pod} is too small: each node takes a /24, so use /24 or larger (e.g. /16)"
                    ),
                );
            }
        }
        if let Some(svc) = svc {
            if svc.prefix_len() < 12 || svc.prefix_len() > 28 {
                self.fail("service-cidr", format!("{svc} must be between /12 and /28"));
            }
        }
        let nets = [
            ("pod-cidr", pod),
            ("service-cidr", svc),
            ("network.prefix", prefix),
        ];
        for i in 0..nets.len() {
            for j in (i + 1)..nets.len() {
                if let ((a_name, Some(a)), (b_name, Some(b))) = (nets[i], nets[j]) {
                    if a.contains(&b.network()) || b.contains(&a.network()) {
                        self.fail(b_name, format!("{b} overlaps {a_name} {a}"));
                    }
                }
            }
        }
        let gateway = match &file.network.gateway {
            Some(g) => self.ip("network.gateway", g),
            None => None,
        };
        if let (Some(g), Some(p)) = (gateway, prefix) {
            if !p.contains(&g) {
                self.fail(
                    "network.gateway",
                    format!("{g} is outside the node network {p}"),
                );
            }
        }
        let mut dns = Vec::new();
        for (i, d) in file.network.dns.iter().enumerate() {
            if let Some(ip) = self.ip(&format!("network.dns[{i}]"), d) {
                dns.push(ip);
            }
        }
        if let (Some(v), Some(p)) = (vip, prefix) {
            if !p.contains(&v) {
                self.fail(
                    "api-vip",
                    format!(
                        "{v} is outside the node network {p}; the VIP must live on the masters' subnet"
                    ),
                );
            } else if v == p.network() || v == p.broadcast() {
                self.fail(
                    "api-vip",
                    format!("{v} is the network or broadcast address of {p}"),
                );
            }
            if Some(v) == gateway {
                self.fail("api-vip", format!("{v} is the gateway's address"));
            }
        }
        Networks {
            vip,
            pod,
            svc,
            prefix,
            gateway,
            dns,
        }
    }

    /// The node table: unique names, addresses and MACs on the node network, known roles.
    fn node_table(&mut self, file: &ClusterFile, net: &Networks) -> Vec<Node> {
        let (vip, prefix, gateway) = (net.vip, net.prefix, net.gateway);
        let mut nodes = Vec::new();
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut ips: HashMap<Ipv4Addr, usize> = HashMap::new();
        let mut macs: HashMap<Mac, usize> = HashMap::new();
        for (i, n) in file.nodes.iter().enumerate() {
            let at = |k: &str| format!("node[{i}].{k}");
            if !is_dns_label(&n.name) {
                self.fail(
                    &at("name"),
                    format!(
                        "{:?} must be a DNS label: lower-case letters, digits and '-'",
                        n.name
                    ),
                );
            } else if let Some(first) = names.insert(&n.name, i) {
                self.fail(
                    &at("name"),
                    format!("duplicate node name {:?} (also node[{first}])", n.name),
                );
            }
            let mut roles = Vec::new();
            if n.roles.is_empty() {
                self.fail(
                    &at("roles"),
                    "a node needs at least one role: etcd, master or worker",
                );
            }
            for r in &n.roles {
                match Role::parse(r) {
                    Some(role) if roles.contains(&role) => {
                        self.fail(&at("roles"), format!("role {r:?} listed twice"))
                    }
                    Some(role) => roles.push(role),
                    None => self.fail(
                        &at("roles"),
                        format!("unknown role {r:?}; expected etcd, master or worker"),
                    ),
                }
            }
            roles.sort();
            let ip = self.ip(&at("ip"), &n.ip);
            if let Some(ip) = ip {
                if let Some(p) = prefix {
                    if !p.contains(&ip) {
                        self.fail(&at("ip"), format!("{ip} is outside the node network {p}"));
                    }
                }
                if Some(ip) == vip {
                    self.fail(
                        "api-vip",
                        format!(
                            "{ip} is also the address of node {:?}; the VIP must be a free address",
                            n.name
                        ),
                    );
                }
                if Some(ip) == gateway {
                    self.fail(&at("ip"), format!("{ip} is the gateway's address"));
                }
                if let Some(first) = ips.insert(ip, i) {
                    self.fail(
                        &at("ip"),
                        format!("duplicate address {ip} (also node[{first}])"),
                    );
                }
            }
            let mac = match &n.mac {
                Some(m) => match Mac::parse(m) {
                    Some(mac) => {
                        if let Some(first) = macs.insert(mac, i) {
                            self.fail(
                                &at("mac"),
                                format!("duplicate MAC {mac} (also node[{first}])"),
                            );
                        }
                        Some(mac)
                    }
                    None => {
                        self.fail(
                            &at("mac"),
                            format!("{m:?} is not a MAC address such as 52:54:00:12:34:56"),
                        );
                        None
                    }
                },
                None => None,
            };
            if let Some(ip) = ip {
                nodes.push(Node {
                    name: n.name.clone(),
                    roles,
                    ip,
                    mac,
                });
            }
        }
        nodes
    }

    /// At least one etcd member and one master; a warning for an even etcd count.
    fn role_counts(&mut self, nodes: &[Node]) -> Vec<String> {
        let mut warnings = Vec::new();
        let count = |role| nodes.iter().filter(|n: &&Node| n.has(role)).count();
        if self.errors.is_empty() {
            if count(Role::Etcd) == 0 {
                self.fail(
                    "node",
                    "no node has the etcd role; the cluster needs 1, 3 or 5 etcd members",
                );
            }
            if count(Role::Master) == 0 {
                self.fail(
                    "node",
                    "no node has the master role; the cluster needs at least one master",
                );
            }
        }
        let etcd = count(Role::Etcd);
        if etcd > 0 && etcd % 2 == 0 {
            warnings.push(format!(
                "{}node: {etcd} etcd members tolerate no more failures than {} do; use an odd count (1, 3 or 5)",
                self.location("node"),
                etcd - 1
            ));
        }
        warnings
    }

    /// `[vip]` timings: lease > renew deadline > retry period.
    fn vip_timing(&mut self, file: &ClusterFile) -> VipTiming {
        let mut vip_timing = VipTiming::default();
        if let Some(v) = &file.vip {
            let mut dur = |field: &str, value: &str| match humantime::parse_duration(value) {
                Ok(d) if !d.is_zero() => Some(d),
                _ => {
                    self.fail(
                        field,
                        format!("{value:?} is not a duration such as \"2s\" or \"250ms\""),
                    );
                    None
                }
            };
            let lease = dur("vip.lease-duration", &v.lease_duration);
            let renew = dur("vip.renew-deadline", &v.renew_deadline);
            let retry = dur("vip.retry-period", &v.retry_period);
            if let (Some(lease), Some(renew), Some(retry)) = (lease, renew, retry) {
                if renew >= lease {
                    self.fail(
                        "vip.renew-deadline",
                        "must be shorter than lease-duration: the holder must drop the VIP before another master may take it",
                    );
                } else if retry >= renew {
                    self.fail("vip.retry-period", "must be shorter than renew-deadline");
                }
                vip_timing = VipTiming {
                    lease_duration: lease,
                    renew_deadline: renew,
                    retry_period: retry,
                };
            }
        }
        vip_timing
    }

    /// `insecure-registries`: `host:port` each.
    fn insecure_registries(&mut self, file: &ClusterFile) {
        for r in &file.insecure_registries {
            let (host, port) = r.rsplit_once(':').unwrap_or((r, "1"));
            let host_ok = !host.is_empty()
                && host
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '.' || ch == '-');
            if !host_ok || port.parse::<u16>().map_or(true, |p| p == 0) {
                self.fail(
                    "insecure-registries",
                    format!("{r:?} is not a registry address such as \"192.168.1.100:5000\""),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::parse;
    use super::*;

    const BASE: &str = r#"name = "prod"
api-vip = "192.168.202.160"
api-port = 6443
pod-cidr = "10.244.0.0/16"
service-cidr = "10.96.0.0/12"
dns-domain = "cluster.local"

[network]
prefix = "192.168.202.0/24"
gateway = "192.168.202.1"
dns = ["192.168.202.1"]

[[node]]
name = "etcd-1"
roles = ["etcd"]
ip = "192.168.202.161"
mac = "52:54:00:00:00:01"

[[node]]
name = "master-1"
roles = ["master"]
ip = "192.168.202.157"
mac = "52:54:00:00:00:02"

[[node]]
name = "worker-1"
roles = ["worker"]
ip = "192.168.202.165"
"#;

    fn load(text: &str) -> Result<Cluster, ClusterError> {
        let path = Path::new("/x/cluster.toml");
        validate(parse(text, path)?, Path::new("/x"), Some((path, text)))
    }

    /// Loads `BASE` with `from` replaced by `to` and returns the one error's text.
    fn error_after(from: &str, to: &str) -> String {
        assert!(BASE.contains(from), "fixture lacks {from:?}");
        let text = BASE.replacen(from, to, 1);
        match load(&text) {
            Ok(_) => panic!("expected an error after replacing {from:?} with {to:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_reference_cluster_is_valid() {
        let c = load(BASE).unwrap();
        assert_eq!(c.nodes.len(), 3);
        assert!(c.warnings.is_empty());
        assert_eq!(c.kubernetes_service_ip(), Ipv4Addr::new(10, 96, 0, 1));
    }

    #[test]
    fn insecure_registries_are_host_port_and_a_bad_one_names_its_line() {
        let ok = BASE.replace(
            "dns-domain = \"cluster.local\"",
            "dns-domain = \"cluster.local\"\ninsecure-registries = [\"192.168.1.100:5000\", \"registry.lan\"]",
        );
        let c = load(&ok).unwrap();
        assert_eq!(
            c.insecure_registries,
            ["192.168.1.100:5000", "registry.lan"]
        );
        let e = error_after(
            "dns-domain = \"cluster.local\"",
            "dns-domain = \"cluster.local\"\ninsecure-registries = [\"http://192.168.1.100:5000\"]",
        );
        assert!(
            e.contains("cluster.toml:7: insecure-registries: \"http://192.168.1.100:5000\" is not a registry address"),
            "{e}"
        );
    }

    #[test]
    fn overlapping_pod_and_service_networks_name_the_service_cidr() {
        let e = error_after("10.96.0.0/12", "10.244.0.0/20");
        assert!(
            e.contains("cluster.toml:5: service-cidr: 10.244.0.0/20 overlaps pod-cidr"),
            "{e}"
        );
    }

    #[test]
    fn a_pod_network_overlapping_the_node_network_names_the_prefix() {
        let e = error_after("10.244.0.0/16", "192.168.0.0/16");
        assert!(
            e.contains("cluster.toml:9: network.prefix: 192.168.202.0/24 overlaps pod-cidr"),
            "{e}"
        );
    }

    #[test]
    fn a_vip_equal_to_a_node_ip_names_api_vip() {
        let e = error_after(
            "api-vip = \"192.168.202.160\"",
            "api-vip = \"192.168.202.157\"",
        );
        assert!(
            e.contains(
                "cluster.toml:2: api-vip: 192.168.202.157 is also the address of node \"master-1\""
            ),
            "{e}"
        );
    }

    #[test]
    fn a_vip_outside_the_node_subnet_names_api_vip() {
        let e = error_after(
            "api-vip = \"192.168.202.160\"",
            "api-vip = \"192.168.9.160\"",
        );
        assert!(
            e.contains("cluster.toml:2: api-vip: 192.168.9.160 is outside the node network"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_node_names_name_the_second_node() {
        let e = error_after("name = \"worker-1\"", "name = \"etcd-1\"");
        assert!(
            e.contains(
                "cluster.toml:26: node[2].name: duplicate node name \"etcd-1\" (also node[0])"
            ),
            "{e}"
        );
    }

    #[test]
    fn duplicate_node_ips_name_the_second_node() {
        let e = error_after("ip = \"192.168.202.165\"", "ip = \"192.168.202.161\"");
        assert!(
            e.contains(
                "cluster.toml:28: node[2].ip: duplicate address 192.168.202.161 (also node[0])"
            ),
            "{e}"
        );
    }

    #[test]
    fn duplicate_macs_name_the_second_node() {
        let e = error_after("52:54:00:00:00:02", "52:54:00:00:00:01");
        assert!(
            e.contains(
                "cluster.toml:23: node[1].mac: duplicate MAC 52:54:00:00:00:01 (also node[0])"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_malformed_ip_names_its_key_and_line() {
        let e = error_after("ip = \"192.168.202.161\"", "ip = \"192.168.202.300\"");
        assert!(
            e.contains("cluster.toml:16: node[0].ip: \"192.168.202.300\" is not an IPv4 address"),
            "{e}"
        );
    }

    #[test]
    fn a_malformed_cidr_names_its_key_and_line() {
        let e = error_after("10.244.0.0/16", "10.244.0.0/33");
        assert!(
            e.contains("cluster.toml:4: pod-cidr: \"10.244.0.0/33\" is not an IPv4 CIDR"),
            "{e}"
        );
        let e = error_after("10.244.0.0/16", "10.244.1.0/16");
        assert!(
            e.contains(
                "pod-cidr: \"10.244.1.0/16\" has host bits set; did you mean 10.244.0.0/16?"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_malformed_mac_names_its_key() {
        let e = error_after("52:54:00:00:00:02", "52:54:00:00:02");
        assert!(
            e.contains("node[1].mac: \"52:54:00:00:02\" is not a MAC address"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_role_names_its_key() {
        let e = error_after("roles = [\"worker\"]", "roles = [\"wrker\"]");
        assert!(
            e.contains("cluster.toml:27: node[2].roles: unknown role \"wrker\""),
            "{e}"
        );
    }

    #[test]
    fn an_even_etcd_member_count_is_a_warning_not_an_error() {
        let text = BASE.replacen("roles = [\"master\"]", "roles = [\"etcd\", \"master\"]", 1);
        let c = load(&text).unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert!(
            c.warnings[0].contains("2 etcd members tolerate no more failures than 1"),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn a_cluster_without_a_master_is_refused() {
        let e = error_after("roles = [\"master\"]", "roles = [\"worker\"]");
        assert!(e.contains("node: no node has the master role"), "{e}");
    }

    #[test]
    fn several_problems_are_reported_together() {
        let text = BASE
            .replacen("10.244.0.0/16", "bad", 1)
            .replacen("192.168.202.165", "nope", 1);
        let e = load(&text).unwrap_err();
        assert_eq!(e.field_errors().len(), 2, "{e}");
    }

    #[test]
    fn load_then_save_round_trips_byte_identically() {
        let c = load(BASE).unwrap();
        let saved = c.to_toml();
        let again = load(&saved).unwrap();
        assert_eq!(again.to_toml(), saved);
        assert_eq!(again.nodes, c.nodes);
    }
}
