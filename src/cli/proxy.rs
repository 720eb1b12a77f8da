//! `kimg proxy`: the node's Service data plane (see [`crate::proxy::controller`]).
//!
//! Programs the nftables table `ip kimg-proxy` for every Service (ClusterIP, NodePort;
//! headless Services get no rules) and, with `--dns-listen`, serves cluster DNS for
//! `<svc>.<ns>.svc.<domain>`, forwarding other names to `--upstream`. With `--node-name`
//! and `--node-ip` it also programs the VXLAN overlay to the pods of every other node.
//! With `--register-node` (masters, which run no kubelet) it registers that Node itself,
//! with no pod capacity and the control-plane taint, and keeps its Lease and Ready
//! condition: the overlay and NodeIPAM need a Node, and the apiserver on the master then
//! reaches Service and pod IPs (admission webhooks and aggregated servers run as pods).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::scheduler::shutdown;
use crate::proxy::controller::{self, ProxyOptions};
use crate::proxy::dns::{DnsConfig, DnsServer, ServiceDirectory};
use crate::proxy::rules::{NftCommand, RulesConfig, RulesSyncer};

/// `kimg proxy` arguments.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Kubeconfig to watch Services and EndpointSlices with.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// The cluster-wide pod CIDR: traffic to Services from outside it is masqueraded.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: ipnet::Ipv4Net,
    /// Serve cluster DNS (UDP and TCP) on this address; off when not given.
    #[arg(long, value_name = "ADDR:PORT")]
    pub dns_listen: Option<SocketAddr>,
    /// The cluster DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub dns_domain: String,
    /// Upstream resolver for every other name (repeatable, tried in order). Default: the
    /// nameservers of /etc/resolv.conf.
    #[arg(long = "upstream", value_name = "ADDR:PORT")]
    pub upstreams: Vec<SocketAddr>,
    /// Program the VXLAN pod overlay for this node (publishes its VTEP MAC on the Node).
    #[arg(long, requires = "node_ip")]
    pub node_name: Option<String>,
    /// This node's InternalIP (the VXLAN tunnel endpoint).
    #[arg(long, requires = "node_name")]
    pub node_ip: Option<std::net::Ipv4Addr>,
    /// Register --node-name as a Node that runs no pods (capacity `pods: 0`, label and
    /// NoSchedule taint `node-role.kubernetes.io/control-plane`) and keep it Ready: for
    /// machines without a kubelet that must still reach pods (masters).
    #[arg(long, requires = "node_name")]
    pub register_node: bool,
    /// Re-apply the ruleset at least this often.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub resync: std::time::Duration,
}

/// The nameservers of a resolv.conf text, on port 53 (loopback stub resolvers skipped
/// when `skip_loopback`, so DNS on a node never forwards to itself).
fn resolv_conf_upstreams(text: &str, skip_loopback: bool) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .filter(|ip| !(skip_loopback && ip.is_loopback()))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Runs `kimg proxy` until SIGINT or SIGTERM.
pub fn run(a: ProxyArgs) -> anyhow::Result<()> {
    let upstreams = if a.upstreams.is_empty() {
        resolv_conf_upstreams(
            &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            a.dns_listen.is_some_and(|l| l.ip().is_loopback()),
        )
    } else {
        a.upstreams
    };
    let rt = super::runtime(None)?;
    rt.block_on(async move {
        let client = crate::client::client_from_kubeconfig(&a.kubeconfig).await?;
        let directory = ServiceDirectory::default();
        let _dns = match a.dns_listen {
            Some(addr) => {
                let config = DnsConfig {
                    domain: a.dns_domain.trim_end_matches('.').to_string(),
                    upstreams,
                    upstream_timeout: std::time::Duration::from_secs(2),
                };
                let server = DnsServer::start(addr, config, directory.clone())
                    .await
                    .with_context(|| format!("cannot serve DNS on {addr}"))?;
                println!("dns {}", server.local_addr());
                Some(server)
            }
            None => None,
        };
        let rules = RulesSyncer::new(
            NftCommand::default(),
            RulesConfig {
                cluster_cidr: a.cluster_cidr,
            },
        );
        let opts = ProxyOptions {
            resync: a.resync,
            ..ProxyOptions::default()
        };
        if let (true, Some(name), Some(ip)) = (a.register_node, &a.node_name, a.node_ip) {
            tokio::spawn(register_node(client.clone(), name.clone(), ip));
        }
        let _overlay = match (a.node_name, a.node_ip) {
            (Some(name), Some(ip)) => {
                let netlink = crate::proxy::vxlan::IpRoute2 {
                    netns: None,
                    mtu: Some(1450),
                };
                Some(tokio::spawn(crate::proxy::overlay::run(
                    client.clone(),
                    name,
                    ip,
                    netlink,
                    a.resync,
                )))
            }
            _ => None,
        };
        tokio::select! {
            r = controller::run(client, rules, directory, opts) => {
                r.context("the proxy loop stopped")
            }
            _ = shutdown() => Ok(()),
        }
    })
}

/// The Node of a machine that runs no pods, as [`register_node`] registers it.
pub fn podless_node(name: &str, ip: std::net::Ipv4Addr) -> k8s_openapi::api::core::v1::Node {
    use crate::kubelet::node::{host_capacity, node_object, NodeInfo};
    let (cpu, memory) = host_capacity();
    let role = "node-role.kubernetes.io/control-plane";
    node_object(&NodeInfo {
        name: name.to_string(),
        internal_ip: ip.to_string(),
        labels: vec![(role.to_string(), String::new())],
        taints: vec![k8s_openapi::api::core::v1::Taint {
            key: role.to_string(),
            effect: "NoSchedule".to_string(),
            ..Default::default()
        }],
        cpu,
        memory,
        pods: 0,
        kubelet_version: format!(
            "v1.{}.0-kimg-{}",
            crate::KUBE_MINOR,
            env!("CARGO_PKG_VERSION")
        ),
        runtime_version: String::new(),
        kubelet_port: 0,
    })
}

/// Registers this machine's Node (retrying until the apiserver answers), then renews its
/// Lease every 10 s and its conditions every 30 s, as the kubelet does.
async fn register_node(client: kube::Client, name: String, ip: std::net::Ipv4Addr) {
    use crate::kubelet::node::{register, renew_lease, report_conditions};
    let node = podless_node(&name, ip);
    while let Err(e) = register(&client, &node).await {
        tracing::info!(node = %name, error = %e, "cannot register the node yet");
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    tracing::info!(node = %name, "registered (no pods)");
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    for round in 0u64.. {
        tick.tick().await;
        if let Err(e) = renew_lease(&client, &name).await {
            tracing::warn!(node = %name, error = %e, "cannot renew the node lease");
        }
        if round % 3 == 2 {
            if let Err(e) = report_conditions(&client, &name).await {
                tracing::warn!(node = %name, error = %e, "cannot report node status");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_come_from_resolv_conf_without_a_loopback_stub_when_asked() {
        let text = "# generated\nnameserver 127.0.0.53\nnameserver 192.0.2.1\nsearch x\n";
        assert_eq!(
            resolv_conf_upstreams(text, true),
            vec!["192.0.2.1:53".parse::<SocketAddr>().expect("addr")]
        );
        assert_eq!(resolv_conf_upstreams(text, false).len(), 2);
    }

    #[test]
    fn a_podless_node_takes_no_pods_and_says_it_is_a_control_plane() {
        let n = podless_node("master-1", "10.0.0.21".parse().expect("ip"));
        let status = n.status.expect("status");
        assert_eq!(status.capacity.expect("capacity")["pods"].0, "0");
        let spec = n.spec.expect("spec");
        let taints = spec.taints.expect("taints");
        assert_eq!(taints[0].key, "node-role.kubernetes.io/control-plane");
        assert_eq!(taints[0].effect, "NoSchedule");
        let labels = n.metadata.labels.expect("labels");
        assert!(labels.contains_key("node-role.kubernetes.io/control-plane"));
        assert_eq!(status.addresses.expect("addresses")[0].address, "10.0.0.21");
    }
}
