//! The etcd role (ARCHITECTURE §6): the `etcd` command line and its health probe.
//!
//! Static bootstrap: `--initial-cluster` lists every etcd node of the table, the cluster
//! name is the `--initial-cluster-token` (two clusters on one LAN cannot merge by mistake).
//! `--initial-cluster-state` is `new` while `/var/lib/kimg/etcd/member/` does not exist and
//! `existing` once it does: a rebooted member rejoins with its data (etcd then ignores the
//! bootstrap flags and uses the membership stored in its WAL), and a member whose data was
//! kept never tries to bootstrap a second cluster. Peers and clients use TLS with client
//! certificates from the etcd CA; clients may also connect on 127.0.0.1 (the health probe,
//! `etcdctl` on the machine). Timing is tuned for a LAN: 100 ms heartbeats and a 1 s
//! election timeout (etcd's defaults), so a dead leader is replaced in about a second.
//!
//! Limits: membership changes (adding a fourth member) are not automated; the data dir must
//! be on `STATE` to survive reboots (on tmpfs every boot is a fresh member).

use std::path::PathBuf;

use crate::cluster::{Cluster, Node, Role};

use super::system::{HealthProbe, ServiceSpec};

pub const ETCD_BIN: &str = "/usr/bin/etcd";
pub const DATA_DIR: &str = "/var/lib/kimg/etcd";
pub const PKI_DIR: &str = "/etc/kimg/pki";
pub const HEARTBEAT_MS: u32 = 100;
pub const ELECTION_MS: u32 = 1000;

/// Whether etcd starts a new cluster or rejoins with the data it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

fn pki(rel: &str) -> String {
    format!("{PKI_DIR}/{rel}")
}

/// The etcd service for `node`.
pub fn service(cluster: &Cluster, node: &Node, state: ClusterState) -> ServiceSpec {
    let ip = node.ip;
    let name = &node.name;
    let initial: Vec<String> = cluster
        .nodes_with(Role::Etcd)
        .map(|n| format!("{}=https://{}:2380", n.name, n.ip))
        .collect();
    let state = match state {
        ClusterState::New => "new",
        ClusterState::Existing => "existing",
    };
    let pairs: Vec<(&str, String)> = vec![
        ("--name", name.clone()),
        ("--data-dir", DATA_DIR.into()),
        ("--listen-peer-urls", format!("https://{ip}:2380")),
        (
            "--initial-advertise-peer-urls",
            format!("https://{ip}:2380"),
        ),
        (
            "--listen-client-urls",
            format!("https://{ip}:2379,https://127.0.0.1:2379"),
        ),
        ("--advertise-client-urls", format!("https://{ip}:2379")),
        ("--initial-cluster", initial.join(",")),
        ("--initial-cluster-token", cluster.name.clone()),
        ("--initial-cluster-state", state.into()),
        ("--cert-file", pki(&format!("etcd/{name}/server.crt"))),
        ("--key-file", pki(&format!("etcd/{name}/server.key"))),
        ("--trusted-ca-file", pki("etcd/ca.crt")),
        ("--client-cert-auth", "true".into()),
        ("--peer-cert-file", pki(&format!("etcd/{name}/peer.crt"))),
        ("--peer-key-file", pki(&format!("etcd/{name}/peer.key"))),
        ("--peer-trusted-ca-file", pki("etcd/ca.crt")),
        ("--peer-client-cert-auth", "true".into()),
        ("--heartbeat-interval", HEARTBEAT_MS.to_string()),
        ("--election-timeout", ELECTION_MS.to_string()),
        ("--logger", "zap".into()),
        ("--log-outputs", "stderr".into()),
    ];
    let mut argv = vec![ETCD_BIN.to_string()];
    for (k, v) in pairs {
        argv.push(format!("{k}={v}"));
    }
    ServiceSpec {
        name: "etcd".into(),
        argv,
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        console: false,
    }
}

/// Where etcd keeps its member data; its presence means "rejoin".
pub fn member_dir() -> PathBuf {
    PathBuf::from(DATA_DIR).join("member")
}

/// GET https://127.0.0.1:2379/health with the healthcheck client certificate.
pub fn health_probe() -> HealthProbe {
    HealthProbe {
        url: "https://127.0.0.1:2379/health".into(),
        ca: pki("etcd/ca.crt").into(),
        cert: pki("etcd/healthcheck-client.crt").into(),
        key: pki("etcd/healthcheck-client.key").into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{file_from_options, validate, NewOptions};

    #[test]
    fn the_initial_cluster_lists_every_etcd_member_over_tls() {
        let opts = NewOptions {
            name: Some("prod".into()),
            vip: Some("10.0.0.100".into()),
            etcd: vec!["10.0.0.11".into(), "10.0.0.12".into(), "10.0.0.13".into()],
            masters: vec!["10.0.0.21".into()],
            ..NewOptions::default()
        };
        let c = validate(file_from_options(&opts).unwrap(), "/c".as_ref(), None).unwrap();
        let node = c.node("etcd-2").unwrap();
        let spec = service(&c, node, ClusterState::New);
        let argv = spec.argv.join(" ");
        assert!(argv.contains("--initial-cluster=etcd-1=https://10.0.0.11:2380,etcd-2=https://10.0.0.12:2380,etcd-3=https://10.0.0.13:2380 "), "{argv}");
        assert!(argv.contains("--listen-client-urls=https://10.0.0.12:2379,https://127.0.0.1:2379"));
        assert!(argv.contains("--initial-cluster-token=prod"));
        assert!(argv.contains("--cert-file=/etc/kimg/pki/etcd/etcd-2/server.crt"));
        assert!(argv.contains("--peer-client-cert-auth=true"));
        assert!(argv.contains("--initial-cluster-state=new"));
        let again = service(&c, node, ClusterState::Existing).argv.join(" ");
        assert!(again.contains("--initial-cluster-state=existing"));
    }
}
