//! The service model shared by the nftables generator and cluster DNS.
//!
//! What: turns the Kubernetes objects a proxy watches (`Service`, `EndpointSlice`, and the
//! legacy `Endpoints`) into a small, sorted, de-duplicated view: for each Service its
//! virtual IP (or none for headless Services), its ports, and for each port the ready
//! backends `(pod IP, target port)`.
//!
//! How: EndpointSlices belong to a Service through the `kubernetes.io/service-name` label
//! in the same namespace. A Service port is matched to a slice port by port *name* and
//! protocol, which is how named `targetPort`s get resolved: the EndpointSlice controller
//! has already written the numeric container port into the slice. Only ready endpoints
//! count (a missing `ready` condition means ready, as the API documents). When a Service
//! has no EndpointSlice at all, its `Endpoints` object (ready `addresses` only) is used.
//!
//! Limits: IPv4 only (IPv6 slices and addresses are skipped); `ExternalName` Services are
//! skipped; `publishNotReadyAddresses`, session affinity, topology hints and traffic
//! policies are not modelled.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Layer-4 protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses the Kubernetes spelling; a missing protocol means TCP.
    pub fn from_k8s(value: Option<&str>) -> Option<Protocol> {
        match value.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The lowercase name used by nftables and DNS SRV labels (`tcp`, `udp`, `sctp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One ready backend of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// One port of a Service with its ready backends (sorted, unique).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortView {
    /// The Service port's name; empty when the Service has a single unnamed port.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
    pub backends: Vec<Backend>,
}

/// A ready endpoint address of a Service, with its DNS hostname when one was set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReadyAddress {
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
}

/// A Service as the data plane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    pub namespace: String,
    pub name: String,
    /// The virtual IP; `None` for headless Services (`clusterIP: None`).
    pub cluster_ip: Option<Ipv4Addr>,
    /// Sorted by (protocol, port).
    pub ports: Vec<PortView>,
    /// Every ready endpoint address, whatever the port (sorted, unique by IP).
    pub ready: Vec<ReadyAddress>,
}

impl ServiceView {
    /// True for a Service with no virtual IP.
    pub fn is_headless(&self) -> bool {
        self.cluster_ip.is_none()
    }
}

/// Everything the proxy watches, as the apiserver returned it.
#[derive(Debug, Clone, Default)]
pub struct ClusterObjects {
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub endpoints: Vec<Endpoints>,
}

/// A ready endpoint's port as published by its slice or subset: (name, protocol) → number.
type PortTable = BTreeMap<(String, Protocol), u16>;

/// Ready addresses of one Service, each with the ports its slice or subset published.
type ReadySet = Vec<(ReadyAddress, PortTable)>;

/// Builds the sorted view of every Service that has a virtual IP or is headless.
/// Objects that cannot be understood (bad IPs, unknown protocols) are skipped.
pub fn resolve(objects: &ClusterObjects) -> Vec<ServiceView> {
    let mut by_service: BTreeMap<(String, String), ReadySet> = BTreeMap::new();
    let mut has_slice: BTreeSet<(String, String)> = BTreeSet::new();
    for slice in &objects.endpoint_slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        let namespace = slice.metadata.namespace.clone().unwrap_or_default();
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let key = (namespace, service.clone());
        has_slice.insert(key.clone());
        let ports: PortTable = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let protocol = Protocol::from_k8s(p.protocol.as_deref())?;
                let port = u16::try_from(p.port?).ok()?;
                Some(((p.name.clone().unwrap_or_default(), protocol), port))
            })
            .collect();
        let entry = by_service.entry(key).or_default();
        for endpoint in slice.endpoints.iter().flatten() {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse::<Ipv4Addr>() {
                    let hostname = endpoint.hostname.clone();
                    entry.push((ReadyAddress { ip, hostname }, ports.clone()));
                }
            }
        }
    }
    for endpoints in &objects.endpoints {
        let namespace = endpoints.metadata.namespace.clone().unwrap_or_default();
        let Some(name) = endpoints.metadata.name.clone() else {
            continue;
        };
        let key = (namespace, name);
        if has_slice.contains(&key) {
            continue;
        }
        let entry = by_service.entry(key).or_default();
        for subset in endpoints.subsets.iter().flatten() {
            let ports: PortTable = subset
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    let protocol = Protocol::from_k8s(p.protocol.as_deref())?;
                    let port = u16::try_from(p.port).ok()?;
                    Some(((p.name.clone().unwrap_or_default(), protocol), port))
                })
                .collect();
            for address in subset.addresses.iter().flatten() {
                if let Ok(ip) = address.ip.parse::<Ipv4Addr>() {
                    let hostname = address.hostname.clone();
                    entry.push((ReadyAddress { ip, hostname }, ports.clone()));
                }
            }
        }
    }

    let mut views = Vec::new();
    for service in &objects.services {
        let Some(view) = service_view(service, &by_service) else {
            continue;
        };
        views.push(view);
    }
    views.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    views.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
    views
}

fn service_view(
    service: &Service,
    ready_by_service: &BTreeMap<(String, String), ReadySet>,
) -> Option<ServiceView> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let namespace = service.metadata.namespace.clone().unwrap_or_default();
    let name = service.metadata.name.clone()?;
    let cluster_ip = match spec.cluster_ip.as_deref() {
        Some("None") => None,
        Some(ip) => Some(ip.parse::<Ipv4Addr>().ok()?),
        // Not allocated yet: nothing to program.
        None => return None,
    };
    let empty = Vec::new();
    let ready = ready_by_service
        .get(&(namespace.clone(), name.clone()))
        .unwrap_or(&empty);

    let mut ports = Vec::new();
    for p in spec.ports.iter().flatten() {
        let Some(protocol) = Protocol::from_k8s(p.protocol.as_deref()) else {
            continue;
        };
        let Ok(port) = u16::try_from(p.port) else {
            continue;
        };
        let port_name = p.name.clone().unwrap_or_default();
        let node_port = p.node_port.and_then(|n| u16::try_from(n).ok());
        let key = (port_name.clone(), protocol);
        let backends: BTreeSet<Backend> = ready
            .iter()
            .filter_map(|(address, table)| {
                table.get(&key).map(|&port| Backend {
                    ip: address.ip,
                    port,
                })
            })
            .collect();
        ports.push(PortView {
            name: port_name,
            protocol,
            port,
            node_port,
            backends: backends.into_iter().collect(),
        });
    }
    ports.sort_by_key(|p| (p.protocol, p.port));
    ports.dedup_by_key(|p| (p.protocol, p.port));

    let mut addresses: Vec<ReadyAddress> = ready.iter().map(|(a, _)| a.clone()).collect();
    addresses.sort();
    addresses.dedup_by_key(|a| a.ip);
    Some(ServiceView {
        namespace,
        name,
        cluster_ip,
        ports,
        ready: addresses,
    })
}

/// Builders for the Kubernetes objects the tests of this module and its siblings use.
#[cfg(test)]
pub(crate) mod fixtures {
    use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{
        Endpoint, EndpointConditions, EndpointPort, EndpointSlice,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    /// (name, protocol, port, targetPort, nodePort)
    pub type PortSpec<'a> = (&'a str, &'a str, i32, IntOrString, Option<i32>);

    pub fn service(ns: &str, name: &str, cluster_ip: &str, ports: &[PortSpec]) -> Service {
        let node_port = ports.iter().any(|p| p.4.is_some());
        Service {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(cluster_ip.into()),
                type_: Some(if node_port { "NodePort" } else { "ClusterIP" }.into()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, proto, port, target, np)| ServicePort {
                            name: (!n.is_empty()).then(|| n.to_string()),
                            protocol: Some(proto.to_string()),
                            port: *port,
                            target_port: Some(target.clone()),
                            node_port: *np,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A slice with endpoints `(ip, ready, hostname)` and ports `(name, protocol, number)`.
    pub fn slice(
        ns: &str,
        service: &str,
        suffix: &str,
        endpoints: &[(&str, Option<bool>, Option<&str>)],
        ports: &[(&str, &str, i32)],
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(format!("{service}-{suffix}")),
                labels: Some([(super::SERVICE_NAME_LABEL.to_string(), service.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(
                endpoints
                    .iter()
                    .map(|(ip, ready, hostname)| Endpoint {
                        addresses: vec![ip.to_string()],
                        conditions: Some(EndpointConditions {
                            ready: *ready,
                            ..Default::default()
                        }),
                        hostname: hostname.map(str::to_string),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, proto, port)| EndpointPort {
                        name: (!n.is_empty()).then(|| n.to_string()),
                        protocol: Some(proto.to_string()),
                        port: Some(*port),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{service, slice};
    use super::*;
    use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::{Int, String as Named};

    #[test]
    fn named_target_ports_resolve_through_the_slice_port_of_the_same_name() {
        let objects = ClusterObjects {
            services: vec![service(
                "default",
                "web",
                "10.96.0.20",
                &[
                    ("http", "TCP", 80, Named("web".into()), None),
                    ("metrics", "TCP", 9100, Int(9100), None),
                ],
            )],
            endpoint_slices: vec![slice(
                "default",
                "web",
                "a",
                &[("10.244.1.5", Some(true), None), ("10.244.2.7", None, None)],
                &[("http", "TCP", 8080), ("metrics", "TCP", 9100)],
            )],
            endpoints: vec![],
        };
        let views = resolve(&objects);
        assert_eq!(views.len(), 1);
        let http = &views[0].ports[0];
        assert_eq!((http.port, http.name.as_str()), (80, "http"));
        assert_eq!(
            http.backends,
            vec![
                Backend {
                    ip: "10.244.1.5".parse().unwrap(),
                    port: 8080
                },
                Backend {
                    ip: "10.244.2.7".parse().unwrap(),
                    port: 8080
                }
            ]
        );
        assert_eq!(views[0].ports[1].backends[0].port, 9100);
    }

    #[test]
    fn not_ready_endpoints_and_foreign_slices_are_left_out() {
        let objects = ClusterObjects {
            services: vec![service(
                "default",
                "web",
                "10.96.0.20",
                &[("", "TCP", 80, Int(8080), None)],
            )],
            endpoint_slices: vec![
                slice(
                    "default",
                    "web",
                    "a",
                    &[
                        ("10.244.1.5", Some(false), None),
                        ("10.244.1.6", Some(true), None),
                    ],
                    &[("", "TCP", 8080)],
                ),
                // Same service name in another namespace.
                slice(
                    "other",
                    "web",
                    "b",
                    &[("10.244.9.9", Some(true), None)],
                    &[("", "TCP", 8080)],
                ),
            ],
            endpoints: vec![],
        };
        let views = resolve(&objects);
        let ips: Vec<String> = views[0].ports[0]
            .backends
            .iter()
            .map(|b| b.ip.to_string())
            .collect();
        assert_eq!(ips, vec!["10.244.1.6"]);
    }

    #[test]
    fn headless_services_have_no_virtual_ip_and_external_names_are_skipped() {
        let mut external = service("default", "ext", "", &[]);
        if let Some(spec) = external.spec.as_mut() {
            spec.type_ = Some("ExternalName".into());
        }
        let objects = ClusterObjects {
            services: vec![
                service(
                    "default",
                    "db",
                    "None",
                    &[("pg", "TCP", 5432, Int(5432), None)],
                ),
                external,
            ],
            endpoint_slices: vec![slice(
                "default",
                "db",
                "a",
                &[
                    ("10.244.2.3", Some(true), Some("db-0")),
                    ("10.244.1.3", Some(true), None),
                ],
                &[("pg", "TCP", 5432)],
            )],
            endpoints: vec![],
        };
        let views = resolve(&objects);
        assert_eq!(views.len(), 1);
        assert!(views[0].is_headless());
        assert_eq!(views[0].ready[0].ip.to_string(), "10.244.1.3");
        assert_eq!(views[0].ready[1].hostname.as_deref(), Some("db-0"));
    }

    #[test]
    fn legacy_endpoints_are_used_only_when_no_slice_exists() {
        let endpoints = Endpoints {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some("api".into()),
                ..Default::default()
            },
            subsets: Some(vec![EndpointSubset {
                addresses: Some(vec![EndpointAddress {
                    ip: "10.244.3.4".into(),
                    ..Default::default()
                }]),
                not_ready_addresses: Some(vec![EndpointAddress {
                    ip: "10.244.3.5".into(),
                    ..Default::default()
                }]),
                ports: Some(vec![EndpointPort {
                    name: Some("https".into()),
                    port: 6443,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
            }]),
        };
        let objects = ClusterObjects {
            services: vec![service(
                "default",
                "api",
                "10.96.0.1",
                &[("https", "TCP", 443, Int(6443), None)],
            )],
            endpoint_slices: vec![],
            endpoints: vec![endpoints],
        };
        let views = resolve(&objects);
        assert_eq!(
            views[0].ports[0].backends,
            vec![Backend {
                ip: "10.244.3.4".parse().unwrap(),
                port: 6443
            }]
        );
    }
}
