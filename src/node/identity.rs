//! Who is this machine? The node-table lookup of docs/ARCHITECTURE.md §2.
//!
//! Precedence: the kernel command line (`kimg.node=NAME`), then a MAC address of one of the
//! machine's NICs that the node table lists, then an address the machine obtained (DHCP)
//! that the table lists. A name on the command line that the table does not know is an
//! error, not a reason to fall back: the operator said who the machine is, and guessing
//! another identity could make two machines claim one node. Several NICs matching different
//! nodes is an error too. The identified node must only need roles the image carries (an
//! etcd image cannot serve a master: it lacks the master's keys).
//!
//! Anonymous workers (PXE fleets): when nothing in the table matches but the machine got an
//! address by DHCP, the cluster admits anonymous workers (`anonymous-workers = true`) and
//! the image carries the worker role, the machine becomes a worker named after the MAC of
//! the NIC that got the address: `worker-` and the twelve lower-case hex digits of the MAC
//! without separators (`52:54:00:77:00:51` → `worker-525400770051`). The name is stable
//! across reboots and address changes, unique as MACs are, and a valid DNS label, so it is
//! also the Node name and the hostname.

use std::fmt;
use std::net::Ipv4Addr;

use crate::cluster::{Cluster, Mac, Node, Role};

/// A network interface seen in `/sys/class/net` (without `lo`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    pub mac: Option<Mac>,
}

/// How the identity was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Cmdline,
    Mac,
    Address,
    /// Not in the table: an anonymous worker named after its MAC.
    Anonymous,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Cmdline => "cmdline",
            Source::Mac => "mac",
            Source::Address => "address",
            Source::Anonymous => "anonymous",
        })
    }
}

/// The result of identification: the node and the NIC that should carry its address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub node: Node,
    pub source: Source,
    /// The interface to configure; `None` when the machine has no NIC at all.
    pub iface: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentifyError {
    #[error("kimg.node={name} is not in the node table")]
    UnknownNode { name: String },
    #[error(
        "no kimg.node= on the kernel command line, and no MAC or address matches the node table"
    )]
    NoMatch,
    #[error("NICs match several nodes: {}", .nodes.join(", "))]
    AmbiguousMac { nodes: Vec<String> },
    #[error("got {addr} by DHCP but cannot join as an anonymous worker: {why}")]
    NotAdmitted { addr: Ipv4Addr, why: &'static str },
    #[error("node {node} needs roles {needed} but this image only carries {carried}")]
    RoleMismatch {
        node: String,
        needed: String,
        carried: String,
    },
}

impl IdentifyError {
    /// The short token printed as `reason=` in `kimg: identify-failed`.
    pub fn reason(&self) -> &'static str {
        match self {
            IdentifyError::UnknownNode { .. } => "unknown-node",
            IdentifyError::NoMatch => "no-match",
            IdentifyError::AmbiguousMac { .. } => "ambiguous-mac",
            IdentifyError::RoleMismatch { .. } => "role-mismatch",
            IdentifyError::NotAdmitted { .. } => "not-admitted",
        }
    }
}

/// Roles joined by `+`, e.g. `etcd+master`.
pub fn join_roles(roles: &[Role]) -> String {
    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    names.join("+")
}

/// The node name of an anonymous worker whose NIC has `mac`: `worker-525400770051`.
pub fn anonymous_name(mac: Mac) -> String {
    let hex: String = mac.0.iter().map(|b| format!("{b:02x}")).collect();
    format!("worker-{hex}")
}

/// An address obtained by DHCP, and the NIC it was obtained on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Obtained<'a> {
    pub nic: &'a Nic,
    pub addr: Ipv4Addr,
}

/// Identifies the machine. `nics` excludes `lo`; `dhcp` is an address obtained by DHCP.
pub fn identify(
    cluster: &Cluster,
    image_roles: &[Role],
    cmdline_node: Option<&str>,
    nics: &[Nic],
    dhcp: Option<Obtained<'_>>,
) -> Result<Identity, IdentifyError> {
    let found = if let Some(name) = cmdline_node {
        let node = cluster
            .node(name)
            .ok_or_else(|| IdentifyError::UnknownNode {
                name: name.to_string(),
            })?;
        let by_mac = nics.iter().find(|n| n.mac.is_some() && n.mac == node.mac);
        let iface = by_mac.or_else(|| nics.first()).map(|n| n.name.clone());
        Identity {
            node: node.clone(),
            source: Source::Cmdline,
            iface,
        }
    } else {
        let mut matches: Vec<(&Node, &Nic)> = Vec::new();
        for nic in nics {
            if let Some(node) = cluster
                .nodes
                .iter()
                .find(|n| n.mac.is_some() && n.mac == nic.mac)
            {
                matches.push((node, nic));
            }
        }
        let mut names: Vec<String> = matches.iter().map(|(n, _)| n.name.clone()).collect();
        names.dedup();
        if names.len() > 1 {
            return Err(IdentifyError::AmbiguousMac { nodes: names });
        }
        if let Some((node, nic)) = matches.first() {
            Identity {
                node: (*node).clone(),
                source: Source::Mac,
                iface: Some(nic.name.clone()),
            }
        } else if let Some((node, got)) = dhcp.and_then(|got| {
            cluster
                .nodes
                .iter()
                .find(|n| n.ip == got.addr)
                .map(|n| (n, got))
        }) {
            Identity {
                node: node.clone(),
                source: Source::Address,
                iface: Some(got.nic.name.clone()),
            }
        } else if let Some(got) = dhcp {
            anonymous(cluster, image_roles, got)?
        } else {
            return Err(IdentifyError::NoMatch);
        }
    };
    if !found.node.roles.iter().all(|r| image_roles.contains(r)) {
        return Err(IdentifyError::RoleMismatch {
            node: found.node.name.clone(),
            needed: join_roles(&found.node.roles),
            carried: join_roles(image_roles),
        });
    }
    Ok(found)
}

/// An unlisted machine with a DHCP address, as an anonymous worker if the cluster and the
/// image allow it.
fn anonymous(
    cluster: &Cluster,
    image_roles: &[Role],
    got: Obtained<'_>,
) -> Result<Identity, IdentifyError> {
    let refuse = |why| IdentifyError::NotAdmitted {
        addr: got.addr,
        why,
    };
    if !cluster.anonymous_workers {
        return Err(refuse("the cluster has anonymous-workers = false"));
    }
    if !image_roles.contains(&Role::Worker) {
        return Err(refuse("this image has no worker role"));
    }
    let mac = got.nic.mac.ok_or_else(|| refuse("the NIC has no MAC"))?;
    let name = anonymous_name(mac);
    if cluster.node(&name).is_some() {
        return Err(refuse(
            "a listed node already has the name derived from the MAC",
        ));
    }
    Ok(Identity {
        node: Node {
            name,
            roles: vec![Role::Worker],
            ip: got.addr,
            mac: Some(mac),
        },
        source: Source::Anonymous,
        iface: Some(got.nic.name.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{file_from_options, NewOptions};

    fn cluster() -> Cluster {
        let opts = NewOptions {
            vip: Some("10.0.0.100".into()),
            etcd: vec![
                "etcd-1=10.0.0.11@52:54:00:00:00:11".into(),
                "etcd-2=10.0.0.12@52:54:00:00:00:12".into(),
                "etcd-3=10.0.0.13".into(),
            ],
            masters: vec!["master-1=10.0.0.21@52:54:00:00:00:21".into()],
            ..NewOptions::default()
        };
        let file = file_from_options(&opts).unwrap();
        crate::cluster::validate(file, std::path::Path::new("/c"), None).unwrap()
    }

    fn nic(name: &str, mac: &str) -> Nic {
        Nic {
            name: name.into(),
            mac: Mac::parse(mac),
        }
    }

    const ETCD: &[Role] = &[Role::Etcd];

    #[test]
    fn the_command_line_beats_a_mac_that_names_another_node() {
        let c = cluster();
        let nics = [nic("eth0", "52:54:00:00:00:11")];
        let id = identify(&c, ETCD, Some("etcd-3"), &nics, None).unwrap();
        assert_eq!(id.node.name, "etcd-3");
        assert_eq!(id.source, Source::Cmdline);
        assert_eq!(id.iface.as_deref(), Some("eth0"));
    }

    #[test]
    fn a_listed_mac_beats_a_listed_address() {
        let c = cluster();
        let nics = [
            nic("eth0", "52:54:00:99:99:99"),
            nic("eth1", "52:54:00:00:00:12"),
        ];
        let addr: Ipv4Addr = "10.0.0.11".parse().unwrap();
        let got = Obtained {
            nic: &nics[0],
            addr,
        };
        let id = identify(&c, ETCD, None, &nics, Some(got)).unwrap();
        assert_eq!(id.node.name, "etcd-2");
        assert_eq!(id.source, Source::Mac);
        assert_eq!(id.iface.as_deref(), Some("eth1"));
    }

    #[test]
    fn a_listed_address_identifies_when_nothing_else_does() {
        let c = cluster();
        let nics = [nic("eth0", "52:54:00:99:99:99")];
        let addr: Ipv4Addr = "10.0.0.13".parse().unwrap();
        let got = Obtained {
            nic: &nics[0],
            addr,
        };
        let id = identify(&c, ETCD, None, &nics, Some(got)).unwrap();
        assert_eq!(
            (id.node.name.as_str(), id.source),
            ("etcd-3", Source::Address)
        );
    }

    #[test]
    fn an_unknown_command_line_name_fails_instead_of_falling_back_to_the_mac() {
        let c = cluster();
        let nics = [nic("eth0", "52:54:00:00:00:11")];
        let err = identify(&c, ETCD, Some("etcd-9"), &nics, None).unwrap_err();
        assert_eq!(err.reason(), "unknown-node");
    }

    #[test]
    fn an_unlisted_machine_is_not_given_anyones_identity() {
        let c = cluster();
        let nics = [nic("eth0", "52:54:00:99:99:99")];
        let err = identify(&c, ETCD, None, &nics, None).unwrap_err();
        assert_eq!(err, IdentifyError::NoMatch);
    }

    #[test]
    fn nics_matching_two_nodes_are_ambiguous() {
        let c = cluster();
        let nics = [
            nic("eth0", "52:54:00:00:00:11"),
            nic("eth1", "52:54:00:00:00:12"),
        ];
        let err = identify(&c, ETCD, None, &nics, None).unwrap_err();
        assert_eq!(err.reason(), "ambiguous-mac");
    }

    #[test]
    fn a_node_whose_roles_the_image_lacks_is_refused() {
        let c = cluster();
        let nics = [nic("eth0", "52:54:00:00:00:21")];
        let err = identify(&c, ETCD, None, &nics, None).unwrap_err();
        assert_eq!(err.reason(), "role-mismatch");
        assert!(err.to_string().contains("master"), "{err}");
    }

    const WORKER: &[Role] = &[Role::Worker];

    #[test]
    fn an_unlisted_machine_with_a_dhcp_address_becomes_a_worker_named_after_its_mac() {
        let c = cluster();
        let nics = [nic("eth0", "52:54:00:77:00:51")];
        let got = Obtained {
            nic: &nics[0],
            addr: "10.0.0.150".parse().unwrap(),
        };
        let id = identify(&c, WORKER, None, &nics, Some(got)).unwrap();
        assert_eq!(id.source, Source::Anonymous);
        assert_eq!(id.iface.as_deref(), Some("eth0"));
        assert_eq!(id.node.name, "worker-525400770051");
        assert_eq!(id.node.roles, vec![Role::Worker]);
        assert_eq!(id.node.ip, got.addr);
        assert_eq!(id.node.mac, nics[0].mac);
    }

    #[test]
    fn anonymous_workers_need_the_cluster_to_admit_them_and_a_worker_image() {
        let mut c = cluster();
        let nics = [nic("eth0", "52:54:00:77:00:51")];
        let got = Obtained {
            nic: &nics[0],
            addr: "10.0.0.150".parse().unwrap(),
        };
        let err = identify(&c, ETCD, None, &nics, Some(got)).unwrap_err();
        assert_eq!(err.reason(), "not-admitted");
        assert!(err.to_string().contains("no worker role"), "{err}");
        c.anonymous_workers = false;
        let err = identify(&c, WORKER, None, &nics, Some(got)).unwrap_err();
        assert!(
            err.to_string().contains("anonymous-workers = false"),
            "{err}"
        );
    }

    #[test]
    fn a_derived_name_that_a_listed_node_holds_is_not_taken() {
        let mut c = cluster();
        let mut twin = c.nodes[0].clone();
        twin.name = "worker-525400770051".into();
        twin.ip = "10.0.0.99".parse().unwrap();
        twin.mac = None;
        c.nodes.push(twin);
        let nics = [nic("eth0", "52:54:00:77:00:51")];
        let got = Obtained {
            nic: &nics[0],
            addr: "10.0.0.150".parse().unwrap(),
        };
        let err = identify(&c, WORKER, None, &nics, Some(got)).unwrap_err();
        assert_eq!(err.reason(), "not-admitted");
    }

    #[test]
    fn derived_names_are_dns_labels() {
        let name = anonymous_name(Mac([0xAA, 0xbb, 0, 1, 0x2f, 0xff]));
        assert_eq!(name, "worker-aabb00012fff");
        assert!(name.len() <= 63);
        assert!(name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
    }
}
