//! Which certificates and keys a cluster has, and where they live under `secrets/pki/`.
//!
//! Names follow kubeadm so operators recognise them:
//!
//! | file (under `secrets/pki/`) | signed by | subject | use |
//! |---|---|---|---|
//! | `ca.crt/.key` | self | `CN=kubernetes` | cluster CA; signs kubelet CSRs |
//! | `etcd/ca.crt/.key` | self | `CN=etcd-ca` | etcd CA |
//! | `sa.key/.pub` | — | — | service-account token signing key |
//! | `apiserver` | cluster CA | `CN=kube-apiserver` | serving; SANs: VIP, master IPs, `kubernetes…svc.<domain>`, first service IP, localhost |
//! | `apiserver-kubelet-client` | cluster CA | `CN=kube-apiserver-kubelet-client, O=system:masters` | apiserver → kubelet (logs, exec) |
//! | `apiserver-etcd-client` | etcd CA | `CN=kube-apiserver-etcd-client` | apiserver → etcd |
//! | `etcd/healthcheck-client` | etcd CA | `CN=kube-etcd-healthcheck-client` | probes, `etcdctl` |
//! | `etcd/<member>/server`, `etcd/<member>/peer` | etcd CA | `CN=<member>` | etcd serving and peering; SANs: member name and IP, localhost |
//! | `admin` | cluster CA | `CN=kubernetes-admin, O=system:masters` | the operator's kubeconfig |
//! | `scheduler` | cluster CA | `CN=system:kube-scheduler` | scheduler client |
//! | `controller-manager` | cluster CA | `CN=system:kube-controller-manager` | controller-manager client |
//! | `front-proxy-ca.crt/.key` | self | `CN=front-proxy-ca` | request-header CA: aggregated API servers trust the identity headers of clients it signed |
//! | `front-proxy-client` | front-proxy CA | `CN=front-proxy-client` | apiserver → aggregated API servers (the `APIService` proxy) |

use std::net::{IpAddr, Ipv4Addr};

use crate::cluster::{Cluster, Role};

use super::issue::{San, Usage};

/// The signer of a leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signer {
    ClusterCa,
    EtcdCa,
    FrontProxyCa,
}

impl Signer {
    /// Base path of the CA's files, relative to `secrets/pki/`.
    pub fn base(self) -> &'static str {
        match self {
            Signer::ClusterCa => "ca",
            Signer::EtcdCa => "etcd/ca",
            Signer::FrontProxyCa => "front-proxy-ca",
        }
    }

    /// The CA's common name.
    pub fn common_name(self) -> &'static str {
        match self {
            Signer::ClusterCa => "kubernetes",
            Signer::EtcdCa => "etcd-ca",
            Signer::FrontProxyCa => "front-proxy-ca",
        }
    }

    /// Every signer, in creation order.
    pub const ALL: [Signer; 3] = [Signer::ClusterCa, Signer::EtcdCa, Signer::FrontProxyCa];
}

/// One leaf certificate the cluster needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafSpec {
    /// Base path relative to `secrets/pki/`, without `.crt` / `.key`.
    pub base: String,
    pub signer: Signer,
    pub cn: String,
    pub orgs: Vec<&'static str>,
    pub sans: Vec<San>,
    pub usage: Usage,
}

fn leaf(base: &str, signer: Signer, cn: &str, orgs: &[&'static str], usage: Usage) -> LeafSpec {
    LeafSpec {
        base: base.to_string(),
        signer,
        cn: cn.to_string(),
        orgs: orgs.to_vec(),
        sans: Vec::new(),
        usage,
    }
}

fn dns(s: impl Into<String>) -> San {
    San::Dns(s.into())
}

fn ip(a: Ipv4Addr) -> San {
    San::Ip(IpAddr::V4(a))
}

/// SANs of the apiserver serving certificate.
pub fn apiserver_sans(c: &Cluster) -> Vec<San> {
    let mut sans = vec![
        dns("kubernetes"),
        dns("kubernetes.default"),
        dns("kubernetes.default.svc"),
        dns(format!("kubernetes.default.svc.{}", c.dns_domain)),
        dns("localhost"),
    ];
    for m in c.nodes_with(Role::Master) {
        sans.push(dns(m.name.clone()));
    }
    sans.push(ip(c.api_vip));
    sans.push(ip(c.kubernetes_service_ip()));
    sans.push(ip(Ipv4Addr::LOCALHOST));
    for m in c.nodes_with(Role::Master) {
        sans.push(ip(m.ip));
    }
    sans
}

/// Every leaf certificate of the cluster, in a stable order.
pub fn leaves(c: &Cluster) -> Vec<LeafSpec> {
    use Signer::*;
    let mut out = Vec::new();
    let mut api = leaf("apiserver", ClusterCa, "kube-apiserver", &[], Usage::Server);
    api.sans = apiserver_sans(c);
    out.push(api);
    out.push(leaf(
        "apiserver-kubelet-client",
        ClusterCa,
        "kube-apiserver-kubelet-client",
        &["system:masters"],
        Usage::Client,
    ));
    out.push(leaf(
        "apiserver-etcd-client",
        EtcdCa,
        "kube-apiserver-etcd-client",
        &[],
        Usage::Client,
    ));
    out.push(leaf(
        "etcd/healthcheck-client",
        EtcdCa,
        "kube-etcd-healthcheck-client",
        &[],
        Usage::Client,
    ));
    for m in c.nodes_with(Role::Etcd) {
        for kind in ["server", "peer"] {
            let mut spec = leaf(
                &format!("etcd/{}/{kind}", m.name),
                EtcdCa,
                &m.name,
                &[],
                Usage::ServerAndClient,
            );
            spec.sans = vec![
                dns(m.name.clone()),
                dns("localhost"),
                ip(m.ip),
                ip(Ipv4Addr::LOCALHOST),
            ];
            out.push(spec);
        }
    }
    out.push(leaf(
        "admin",
        ClusterCa,
        "kubernetes-admin",
        &["system:masters"],
        Usage::Client,
    ));
    out.push(leaf(
        "front-proxy-client",
        FrontProxyCa,
        "front-proxy-client",
        &[],
        Usage::Client,
    ));
    out.push(leaf(
        "scheduler",
        ClusterCa,
        "system:kube-scheduler",
        &[],
        Usage::Client,
    ));
    out.push(leaf(
        "controller-manager",
        ClusterCa,
        "system:kube-controller-manager",
        &[],
        Usage::Client,
    ));
    out
}
