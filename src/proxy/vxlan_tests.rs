//! Tests of the overlay model, the diff, the recording seam, and (as root) the iproute2
//! implementation between two network namespaces joined by a veth pair.

use super::*;
use crate::proxy::netns::{run_checked, Netns};
use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use proptest::prelude::*;

fn node(name: &str, ip: &str, cidr: &str, mac: Option<&str>) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            annotations: mac.map(|m| [(VTEP_MAC_ANNOTATION.to_string(), m.to_string())].into()),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(cidr.into()),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.into(),
                },
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip.into(),
                },
            ]),
            ..Default::default()
        }),
    }
}

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

fn three_nodes() -> Vec<Node> {
    vec![
        node(
            "a",
            "192.168.77.1",
            "10.244.1.0/24",
            Some("0e:00:00:00:00:01"),
        ),
        node(
            "b",
            "192.168.77.2",
            "10.244.2.0/24",
            Some("0e:00:00:00:00:02"),
        ),
        node(
            "c",
            "192.168.77.3",
            "10.244.3.0/24",
            Some("0e:00:00:00:00:03"),
        ),
    ]
}

#[test]
fn a_node_without_a_vtep_mac_or_podcidr_is_refused_with_the_reason() {
    assert_eq!(
        overlay_node(&node("x", "192.168.77.9", "10.244.9.0/24", None)),
        Err(VxlanError::VtepMacInvalid {
            node: "x".into(),
            value: None
        })
    );
    assert!(matches!(
        overlay_node(&node(
            "x",
            "192.168.77.9",
            "10.244.9.0/24",
            Some("0e:00:00")
        )),
        Err(VxlanError::VtepMacInvalid { .. })
    ));
    assert!(matches!(
        overlay_node(&node(
            "x",
            "192.168.77.9",
            "nope",
            Some("0e:00:00:00:00:09")
        )),
        Err(VxlanError::PodCidrInvalid { .. })
    ));
    assert_eq!(
        overlay_node(&node(
            "x",
            "fd00::1",
            "10.244.9.0/24",
            Some("0e:00:00:00:00:09")
        )),
        Err(VxlanError::InternalIpMissing("x".into()))
    );
}

#[test]
fn the_desired_state_has_a_route_neighbour_and_fdb_entry_per_remote_node() {
    let mut nodes = three_nodes();
    nodes.push(node("broken", "192.168.77.4", "10.244.4.0/24", None));
    let (state, skipped) = desired_state("a", &nodes).unwrap();
    let device = state.device.clone().unwrap();
    assert_eq!(
        (device.name.as_str(), device.vni, device.port),
        ("kimg.1", 1, 8472)
    );
    assert_eq!(device.local, Ipv4Addr::new(192, 168, 77, 1));
    assert_eq!(device.address, Ipv4Addr::new(10, 244, 1, 0));
    assert_eq!(device.mac, mac("0e:00:00:00:00:01"));
    let routes: Vec<String> = state
        .routes
        .iter()
        .map(|r| format!("{} via {}", r.dst, r.via))
        .collect();
    assert_eq!(
        routes,
        vec![
            "10.244.2.0/24 via 10.244.2.0",
            "10.244.3.0/24 via 10.244.3.0"
        ]
    );
    assert!(state.neighbours.contains(&Neighbour {
        ip: Ipv4Addr::new(10, 244, 3, 0),
        mac: mac("0e:00:00:00:00:03")
    }));
    assert!(state.fdb.contains(&FdbEntry {
        mac: mac("0e:00:00:00:00:02"),
        dst: Ipv4Addr::new(192, 168, 77, 2)
    }));
    assert_eq!(skipped.len(), 1);
    assert!(matches!(skipped[0], VxlanError::VtepMacInvalid { .. }));
}

#[test]
fn the_local_node_must_be_present_and_valid() {
    assert_eq!(
        desired_state("z", &three_nodes()).unwrap_err(),
        VxlanError::LocalNodeMissing("z".into())
    );
    let nodes = vec![node("a", "192.168.77.1", "10.244.1.0/24", None)];
    assert!(matches!(
        desired_state("a", &nodes),
        Err(VxlanError::VtepMacInvalid { .. })
    ));
}

#[test]
fn a_second_node_claiming_a_taken_podcidr_is_skipped() {
    let mut nodes = three_nodes();
    nodes.push(node(
        "d",
        "192.168.77.4",
        "10.244.2.0/24",
        Some("0e:00:00:00:00:04"),
    ));
    let (state, skipped) = desired_state("a", &nodes).unwrap();
    assert_eq!(state.routes.len(), 2);
    assert!(!state.fdb.iter().any(|f| f.mac == mac("0e:00:00:00:00:04")));
    assert_eq!(skipped.len(), 1);
}

#[test]
fn from_nothing_the_device_comes_first_then_fdb_neighbours_and_routes() {
    let (desired, _) = desired_state("a", &three_nodes()).unwrap();
    let changes = diff(&OverlayState::default(), &desired);
    let kinds: Vec<&str> = changes
        .iter()
        .map(|c| match c {
            Change::CreateDevice(_) => "dev",
            Change::AddFdb(_) => "fdb",
            Change::AddNeighbour(_) => "neigh",
            Change::AddRoute(_) => "route",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        vec!["dev", "fdb", "fdb", "neigh", "neigh", "route", "route"]
    );
}

#[test]
fn a_removed_node_and_a_changed_mac_are_removed_before_anything_is_added() {
    let (current, _) = desired_state("a", &three_nodes()).unwrap();
    let nodes = vec![
        node(
            "a",
            "192.168.77.1",
            "10.244.1.0/24",
            Some("0e:00:00:00:00:01"),
        ),
        node(
            "b",
            "192.168.77.2",
            "10.244.2.0/24",
            Some("0e:00:00:00:00:22"),
        ),
    ];
    let (desired, _) = desired_state("a", &nodes).unwrap();
    let changes = diff(&current, &desired);
    let c_route = Route {
        dst: "10.244.3.0/24".parse().unwrap(),
        via: Ipv4Addr::new(10, 244, 3, 0),
    };
    assert_eq!(
        changes,
        vec![
            Change::DelRoute(c_route),
            Change::DelNeighbour(Neighbour {
                ip: Ipv4Addr::new(10, 244, 2, 0),
                mac: mac("0e:00:00:00:00:02")
            }),
            Change::DelNeighbour(Neighbour {
                ip: Ipv4Addr::new(10, 244, 3, 0),
                mac: mac("0e:00:00:00:00:03")
            }),
            Change::DelFdb(FdbEntry {
                mac: mac("0e:00:00:00:00:02"),
                dst: Ipv4Addr::new(192, 168, 77, 2)
            }),
            Change::DelFdb(FdbEntry {
                mac: mac("0e:00:00:00:00:03"),
                dst: Ipv4Addr::new(192, 168, 77, 3)
            }),
            Change::AddFdb(FdbEntry {
                mac: mac("0e:00:00:00:00:22"),
                dst: Ipv4Addr::new(192, 168, 77, 2)
            }),
            Change::AddNeighbour(Neighbour {
                ip: Ipv4Addr::new(10, 244, 2, 0),
                mac: mac("0e:00:00:00:00:22")
            }),
        ]
    );
}

#[test]
fn a_device_with_other_settings_is_recreated_and_refilled() {
    let mut recording = RecordingNetlink::default();
    let (desired, _) = desired_state("a", &three_nodes()).unwrap();
    sync(&mut recording, &desired).unwrap();
    let mut nodes = three_nodes();
    nodes[0] = node(
        "a",
        "192.168.77.11",
        "10.244.1.0/24",
        Some("0e:00:00:00:00:01"),
    );
    let (moved, _) = desired_state("a", &nodes).unwrap();
    let changes = sync(&mut recording, &moved).unwrap();
    assert_eq!(changes[0], Change::DeleteDevice("kimg.1".into()));
    assert!(
        matches!(&changes[1], Change::CreateDevice(d) if d.local == Ipv4Addr::new(192, 168, 77, 11))
    );
    assert_eq!(changes.len(), 2 + 6);
    assert_eq!(recording.state, moved);
}

#[test]
fn syncing_converges_and_a_second_sync_changes_nothing() {
    let mut recording = RecordingNetlink::default();
    let (desired, _) = desired_state("b", &three_nodes()).unwrap();
    let first = sync(&mut recording, &desired).unwrap();
    assert_eq!(first.len(), 7);
    assert_eq!(recording.state, desired);
    assert!(sync(&mut recording, &desired).unwrap().is_empty());
    assert_eq!(recording.applied.len(), 7);
}

proptest! {
    #[test]
    fn mac_addresses_round_trip_through_text(bytes in any::<[u8; 6]>()) {
        let mac = MacAddr(bytes);
        prop_assert_eq!(mac.to_string().parse::<MacAddr>(), Ok(mac));
    }

    #[test]
    fn the_diff_always_reaches_the_desired_state(
        before in proptest::collection::btree_set(1u8..20, 0..8),
        after in proptest::collection::btree_set(1u8..20, 0..8),
    ) {
        let nodes = |set: &std::collections::BTreeSet<u8>| -> Vec<Node> {
            let mut v = vec![node("n0", "192.168.77.100", "10.244.0.0/24", Some("0e:00:00:00:00:00"))];
            v.extend(set.iter().map(|i| node(
                &format!("n{i}"),
                &format!("192.168.77.{i}"),
                &format!("10.244.{i}.0/24"),
                Some(&format!("0e:00:00:00:00:{i:02x}")),
            )));
            v
        };
        let (start, _) = desired_state("n0", &nodes(&before)).unwrap();
        let (goal, _) = desired_state("n0", &nodes(&after)).unwrap();
        let mut recording = RecordingNetlink { state: start, applied: vec![] };
        sync(&mut recording, &goal).unwrap();
        prop_assert_eq!(recording.state, goal);
    }
}

/// Two namespaces ("nodes") joined by a veth pair 192.168.77.1 ↔ 192.168.77.2, each
/// with a "pod" address on its loopback inside its podCIDR.
struct TwoNodes {
    a: Netns,
    b: Netns,
}

fn two_nodes() -> TwoNodes {
    let a = Netns::create("vxa").expect("netns a");
    let b = Netns::create("vxb").expect("netns b");
    a.exec_checked(&[
        "ip",
        "link",
        "add",
        "uplink",
        "type",
        "veth",
        "peer",
        "name",
        "uplinkb",
        "netns",
        b.name(),
    ])
    .expect("veth");
    for (ns, dev, ip, pod) in [
        (&a, "uplink", "192.168.77.1/24", "10.244.1.10/32"),
        (&b, "uplinkb", "192.168.77.2/24", "10.244.2.10/32"),
    ] {
        ns.exec_checked(&["ip", "addr", "add", ip, "dev", dev])
            .unwrap();
        ns.exec_checked(&["ip", "link", "set", dev, "up"]).unwrap();
        ns.exec_checked(&["ip", "addr", "add", pod, "dev", "lo"])
            .unwrap();
    }
    TwoNodes { a, b }
}

fn ping(from: &Netns, src: &str, dst: &str) -> bool {
    from.command("ping")
        .args(["-c", "1", "-W", "2", "-I", src, dst])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn tx_packets(ns: &Netns) -> u64 {
    let out = run_checked(
        ns.command("ip")
            .args(["-j", "-s", "link", "show", "dev", DEVICE]),
    )
    .expect("link stats");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .expect("tx packets")
}

fn nodes_ab() -> Vec<Node> {
    vec![
        node(
            "a",
            "192.168.77.1",
            "10.244.1.0/24",
            Some("0e:00:00:00:00:01"),
        ),
        node(
            "b",
            "192.168.77.2",
            "10.244.2.0/24",
            Some("0e:00:00:00:00:02"),
        ),
    ]
}

#[test]
fn iproute2_reads_back_exactly_what_it_programmed_needs_root() {
    let pair = two_nodes();
    let mut kernel = IpRoute2 {
        netns: Some(pair.a.name().into()),
        mtu: Some(1450),
    };
    assert_eq!(kernel.read_state().unwrap(), OverlayState::default());
    let (desired, _) = desired_state("a", &three_nodes()).unwrap();
    assert_eq!(sync(&mut kernel, &desired).unwrap().len(), 7);
    assert_eq!(kernel.read_state().unwrap(), desired);
    assert!(sync(&mut kernel, &desired).unwrap().is_empty());
    // Node c leaves: only its entries go.
    let (smaller, _) = desired_state("a", &nodes_ab()).unwrap();
    assert_eq!(sync(&mut kernel, &smaller).unwrap().len(), 3);
    assert_eq!(kernel.read_state().unwrap(), smaller);
}

#[test]
fn a_ping_between_pod_addresses_of_two_netns_crosses_the_vxlan_needs_root() {
    let pair = two_nodes();
    // Without the overlay there is no route to the other pod network.
    assert!(!ping(&pair.a, "10.244.1.10", "10.244.2.10"));
    let mut kernels = [
        (
            IpRoute2 {
                netns: Some(pair.a.name().into()),
                mtu: Some(1450),
            },
            "a",
        ),
        (
            IpRoute2 {
                netns: Some(pair.b.name().into()),
                mtu: Some(1450),
            },
            "b",
        ),
    ];
    for (kernel, me) in &mut kernels {
        let (desired, skipped) = desired_state(me, &nodes_ab()).unwrap();
        assert!(skipped.is_empty());
        sync(kernel, &desired).unwrap();
    }
    let (tx_a, tx_b) = (tx_packets(&pair.a), tx_packets(&pair.b));
    assert!(
        ping(&pair.a, "10.244.1.10", "10.244.2.10"),
        "a → b over the overlay"
    );
    assert!(
        ping(&pair.b, "10.244.2.10", "10.244.1.10"),
        "b → a over the overlay"
    );
    assert!(tx_packets(&pair.a) > tx_a, "a sent through kimg.1");
    assert!(tx_packets(&pair.b) > tx_b, "b sent through kimg.1");

    // b disappears from a's view: the route goes and the ping fails again.
    let only_a = vec![nodes_ab().remove(0)];
    let (desired, _) = desired_state("a", &only_a).unwrap();
    sync(&mut kernels[0].0, &desired).unwrap();
    assert!(!ping(&pair.a, "10.244.1.10", "10.244.2.10"));
}
