//! The overlay loop of `kimg proxy --node-name`: publishes this node's VTEP MAC and keeps
//! the VXLAN device, routes, neighbours and FDB in step with every Node's podCIDR
//! (the model is in [`super::vxlan`]).
//!
//! How: the VTEP MAC is derived from the node's InternalIP ([`vtep_mac_for`]: locally
//! administered `0a:58:` + the four address bytes, stable across reboots), written to the
//! Node's `kimg.io/vtep-mac` annotation with a merge patch, and then a Node reflector
//! drives [`super::vxlan::sync`] after every change (debounced) and at least every
//! `resync`. Until NodeIPAM has given this node a podCIDR the desired state cannot be
//! computed; the loop logs that and waits for the next Node event.
//!
//! Limits: IPv4; the uplink MTU is assumed to be 1500 (device MTU 1450).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::Notify;

use super::vxlan::{self, MacAddr, Netlink, VTEP_MAC_ANNOTATION};

/// The VTEP MAC of the node with InternalIP `ip`.
pub fn vtep_mac_for(ip: Ipv4Addr) -> MacAddr {
    let [a, b, c, d] = ip.octets();
    MacAddr([0x0a, 0x58, a, b, c, d])
}

/// One pass: the desired overlay for `node` from `nodes`, applied through `netlink`.
/// Returns the number of kernel changes made.
pub fn sync_once(
    netlink: &mut dyn Netlink,
    node: &str,
    nodes: &[Node],
) -> Result<usize, vxlan::VxlanError> {
    let (desired, skipped) = vxlan::desired_state(node, nodes)?;
    for s in skipped {
        tracing::debug!(reason = %s, "node left out of the overlay");
    }
    Ok(vxlan::sync(netlink, &desired)?.len())
}

/// Publishes this node's VTEP MAC, then programs the overlay until dropped.
pub async fn run(
    client: Client,
    node: String,
    node_ip: Ipv4Addr,
    mut netlink: impl Netlink + Send,
    resync: Duration,
) {
    let nodes: Api<Node> = Api::all(client);
    let mac = vtep_mac_for(node_ip).to_string();
    let patch = json!({"metadata": {"annotations": {VTEP_MAC_ANNOTATION: mac}}});
    loop {
        match nodes
            .patch(&node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => break,
            // The kubelet may not have registered the Node yet.
            Err(e) => tracing::info!(node = %node, error = %e, "cannot annotate the node yet"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let changed = Arc::new(Notify::new());
    let (store, follow) = super::controller::follow(nodes, changed.clone());
    let _ = store.wait_until_ready().await;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let snapshot: Vec<Node> = store.state().iter().map(|n| (**n).clone()).collect();
        match sync_once(&mut netlink, &node, &snapshot) {
            Ok(0) => {}
            Ok(n) => tracing::info!(changes = n, nodes = snapshot.len(), "overlay updated"),
            Err(e) => tracing::warn!(error = %e, "overlay not programmed yet"),
        }
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(resync) => {}
        }
        if follow.is_finished() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::vxlan::RecordingNetlink;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, ip: &str, cidr: Option<&str>) -> Node {
        let ipv4: Ipv4Addr = ip.parse().expect("ip");
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some(
                    [(
                        VTEP_MAC_ANNOTATION.to_string(),
                        vtep_mac_for(ipv4).to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(str::to_string),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip.into(),
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_vtep_mac_is_locally_administered_and_follows_the_node_ip() {
        let mac = vtep_mac_for("10.77.0.21".parse().expect("ip"));
        assert_eq!(mac.to_string(), "0a:58:0a:4d:00:15");
        assert_eq!(mac.0[0] & 0x02, 0x02, "locally administered");
        assert_eq!(mac.0[0] & 0x01, 0, "unicast");
    }

    #[test]
    fn a_pass_programs_one_route_per_remote_node_and_nothing_the_second_time() {
        let nodes = vec![
            node("w1", "10.77.0.21", Some("10.244.1.0/24")),
            node("w2", "10.77.0.22", Some("10.244.2.0/24")),
            // No podCIDR yet: left out until NodeIPAM gives it one.
            node("w3", "10.77.0.23", None),
        ];
        let mut nl = RecordingNetlink::default();
        let first = sync_once(&mut nl, "w1", &nodes).expect("sync");
        assert!(first >= 4, "device + route + neighbour + fdb, got {first}");
        assert_eq!(nl.state.routes.len(), 1);
        assert_eq!(sync_once(&mut nl, "w1", &nodes).expect("sync"), 0);
        // The local node without a podCIDR cannot be programmed yet.
        assert!(sync_once(&mut RecordingNetlink::default(), "w3", &nodes).is_err());
    }
}
