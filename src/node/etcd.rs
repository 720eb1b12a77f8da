//! The etcd role (docs/ARCHITECTURE.md §6): the `etcd` command line and its health probe.
//!
//! Init supervises `kimg etcd --node NAME` ([`supervised`]), which decides how the member
//! starts and then becomes etcd (exec). Static bootstrap: `--initial-cluster` lists every
//! etcd node of the table, the cluster name is the `--initial-cluster-token` (two clusters
//! on one LAN cannot merge by mistake). With `/var/lib/kimg/etcd/member/` present the member
//! starts as `existing`: it rejoins with its data (etcd then ignores the bootstrap flags and
//! uses the membership stored in its WAL). Without it, [`start_state`] asks the other
//! members: if nobody answers it is a first boot (`new`); if the cluster knows this member,
//! it rejoins as a new member (remove + add, see `store::prepare_empty_member`) rather than
//! vote with an empty log. The data dir is on `STATE`; init never starts etcd on a tmpfs
//! when the machine booted from its disk (it waits for `STATE`). Peers and clients use TLS with client
//! certificates from the etcd CA; clients may also connect on 127.0.0.1 (the health probe,
//! `etcdctl` on the machine). Timing is tuned for a LAN: 100 ms heartbeats and a 1 s
//! election timeout (etcd's defaults), so a dead leader is replaced in about a second.
//!
//! Limits: membership changes (adding a fourth member) are not automated. A machine booted
//! over the network keeps etcd's data on a tmpfs: every boot is a member that rejoins as a
//! new one (a full snapshot from the leader).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cluster::{Cluster, Node, Role};
use crate::store::{self, EmptyMemberStart, EtcdConfig, EtcdTls, StoreError};

use super::system::{HealthProbe, ServiceSpec, KIMG_BIN};

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

/// The service init supervises on an etcd machine: `kimg etcd --node NAME`.
pub fn supervised(node: &Node) -> ServiceSpec {
    ServiceSpec {
        name: "etcd".into(),
        argv: vec![
            KIMG_BIN.into(),
            "etcd".into(),
            "--node".into(),
            node.name.clone(),
        ],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        console: false,
    }
}

/// How to reach the other etcd members, with the healthcheck client certificate.
pub fn others_config(cluster: &Cluster, node: &Node) -> EtcdConfig {
    EtcdConfig {
        endpoints: cluster
            .nodes_with(Role::Etcd)
            .filter(|n| n.name != node.name)
            .map(|n| format!("https://{}:2379", n.ip))
            .collect(),
        tls: Some(EtcdTls {
            ca: pki("etcd/ca.crt").into(),
            cert: pki("etcd/healthcheck-client.crt").into(),
            key: pki("etcd/healthcheck-client.key").into(),
        }),
        connect_timeout: Duration::from_secs(2),
    }
}

/// How the member starts, and what was done to the membership for it (for the log).
pub async fn start_state(
    cluster: &Cluster,
    node: &Node,
    data_dir: &Path,
    ask_for: Duration,
) -> Result<(ClusterState, String), StoreError> {
    if data_dir.join("member").exists() {
        return Ok((ClusterState::Existing, "rejoining with its data".into()));
    }
    let others = others_config(cluster, node);
    if others.endpoints.is_empty() {
        return Ok((ClusterState::New, "single member without data: new".into()));
    }
    let peer_url = format!("https://{}:2380", node.ip);
    Ok(
        match store::prepare_empty_member(&others, &peer_url, ask_for).await? {
            EmptyMemberStart::Bootstrap => (
                ClusterState::New,
                format!("no data and no other member answered within {ask_for:?}: bootstrapping"),
            ),
            EmptyMemberStart::Join { removed, added } => {
                (ClusterState::Existing, join_note(removed, added))
            }
        },
    )
}

/// What a member without data did to the membership, for the log. An add whose answer
/// was lost (a slow cluster) is found on the next attempt as "added, not started": the
/// removal of the old member is still reported.
fn join_note(removed: Option<u64>, added: Option<u64>) -> String {
    match (removed, added) {
        (Some(old), Some(new)) => {
            format!("no data: removed its old member {old:x} and joined as new member {new:x}")
        }
        (Some(old), None) => format!(
            "no data: removed its old member {old:x} and joins as the member the cluster added"
        ),
        (None, Some(new)) => format!("no data: joined as new member {new:x}"),
        (None, None) => "no data: joining as the member the cluster added".into(),
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
    fn a_replaced_member_says_so_even_when_the_add_s_answer_was_lost() {
        // The scenarios wait for "removed its old member" on the console.
        for note in [
            join_note(Some(0xcd4f), Some(0x4308)),
            join_note(Some(0xcd4f), None),
        ] {
            assert!(
                note.starts_with("no data: removed its old member cd4f"),
                "{note}"
            );
        }
        assert_eq!(
            join_note(None, Some(0x4308)),
            "no data: joined as new member 4308"
        );
        assert!(join_note(None, None).contains("the member the cluster added"));
    }

    #[test]
    fn the_initial_cluster_lists_every_etcd_member_over_tls() {
        let c = three_members();
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

    fn three_members() -> Cluster {
        let opts = NewOptions {
            name: Some("prod".into()),
            vip: Some("10.0.0.100".into()),
            etcd: vec!["10.0.0.11".into(), "10.0.0.12".into(), "10.0.0.13".into()],
            masters: vec!["10.0.0.21".into()],
            ..NewOptions::default()
        };
        validate(file_from_options(&opts).unwrap(), "/c".as_ref(), None).unwrap()
    }

    #[test]
    fn init_supervises_kimg_etcd_and_it_asks_only_the_other_members() {
        let c = three_members();
        let node = c.node("etcd-2").unwrap();
        assert_eq!(
            supervised(node).argv,
            ["/usr/bin/kimg", "etcd", "--node", "etcd-2"]
        );
        let others = others_config(&c, node);
        assert_eq!(
            others.endpoints,
            ["https://10.0.0.11:2379", "https://10.0.0.13:2379"]
        );
        let tls = others.tls.unwrap();
        assert_eq!(
            tls.cert,
            PathBuf::from("/etc/kimg/pki/etcd/healthcheck-client.crt")
        );
    }

    #[tokio::test]
    async fn a_member_with_data_starts_as_existing_without_asking_anyone() {
        let c = three_members();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("member")).unwrap();
        let (state, how) = start_state(&c, c.node("etcd-1").unwrap(), dir.path(), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(state, ClusterState::Existing);
        assert!(how.contains("with its data"), "{how}");
    }
}
