//! Files of the node's network identity: `/etc/resolv.conf`, `/etc/hosts`, and the NIC list
//! read from `/sys/class/net`. The addresses themselves are set through
//! [`System::add_address`](super::system::System::add_address) (netlink).

use std::net::Ipv4Addr;
use std::path::Path;

use crate::cluster::{Cluster, Mac, Node};

use super::identity::Nic;
use super::system::System;

/// `/etc/resolv.conf` naming `servers`: the node network's upstream servers, or those a
/// DHCP lease gave.
pub fn resolv_conf(servers: &[Ipv4Addr]) -> String {
    let mut out = String::new();
    for dns in servers {
        out.push_str(&format!("nameserver {dns}\n"));
    }
    out
}

/// `/etc/hosts`: localhost, then every node of the table (so members resolve each other
/// without DNS), this node first.
pub fn hosts(cluster: &Cluster, me: &Node) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost\n");
    out.push_str(&format!("{}\t{}\n", me.ip, me.name));
    for n in cluster.nodes.iter().filter(|n| n.name != me.name) {
        out.push_str(&format!("{}\t{}\n", n.ip, n.name));
    }
    out
}

/// Non-loopback NICs with their MACs from `/sys/class/net/<if>/address`, sorted by name.
/// Virtual devices without a `device` link (bonds, tunnels the kernel creates) are skipped.
pub fn list_nics(sys: &dyn System) -> Vec<Nic> {
    let base = Path::new("/sys/class/net");
    let names = sys.read_dir(base).unwrap_or_default();
    names
        .into_iter()
        .filter(|n| n != "lo" && sys.exists(&base.join(n).join("device")))
        .map(|name| {
            let mac = sys
                .read_file(&base.join(&name).join("address"))
                .ok()
                .and_then(|t| Mac::parse(t.trim()));
            Nic { name, mac }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{file_from_options, validate, NewOptions};

    #[test]
    fn hosts_lists_this_node_first_then_the_others() {
        let opts = NewOptions {
            vip: Some("10.0.0.100".into()),
            etcd: vec!["10.0.0.11".into(), "10.0.0.12".into()],
            masters: vec!["10.0.0.21".into()],
            ..NewOptions::default()
        };
        let c = validate(file_from_options(&opts).unwrap(), "/c".as_ref(), None).unwrap();
        let me = c.node("etcd-2").unwrap();
        let text = hosts(&c, me);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[2], "10.0.0.12\tetcd-2");
        assert!(lines.contains(&"10.0.0.11\tetcd-1"));
        assert!(lines.contains(&"10.0.0.21\tmaster-1"));
        assert_eq!(resolv_conf(&c.network.dns), "nameserver 10.0.0.1\n");
    }
}
