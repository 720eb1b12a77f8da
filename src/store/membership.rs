//! etcd membership for a member that starts without data of its own.
//!
//! Why: a member whose data directory is empty (a new disk, a wiped `STATE`) must not
//! take its old place in the cluster. With an empty log it would vote for any candidate,
//! so two such votes could elect a leader that lacks acknowledged writes. etcd's own
//! remedy is to remove the member and add it again: the new member has a new ID, starts
//! as a follower, and receives a snapshot from the leader before it counts.
//!
//! How: [`prepare_empty_member`] asks the other members (their client URLs) for the member
//! list, retrying for a bounded time. Each attempt requires an elected leader.
//! - Nobody answers: this is a first boot (the others are bootstrapping as well, or will
//!   be). The caller bootstraps with `--initial-cluster-state=new`. If a reachable peer
//!   knows this member as started, etcd itself refuses to bootstrap ("member … has
//!   already been bootstrapped"), exits, and its supervisor asks again later.
//! - The list has this member (matched by peer URL) and it has started before (it has a
//!   name): it is removed and added again. The caller then starts with `existing`.
//! - The list has it, not started: it was added and never ran, or it is late to the
//!   first boot. It starts with `existing`, nothing changes.
//! - The list does not have it (a previous attempt removed it, then stopped): it is added.
//!
//! Limits: the member list is the answering member's view, not a linearizable read (etcd
//! 3.4 has none); it comes from a member with a leader.

use std::time::{Duration, Instant};

use etcd_client::Client;

use super::etcd::connect_options;
use super::{EtcdConfig, StoreError};

/// How a member without data starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EmptyMemberStart {
    /// No other member answered: bootstrap (`--initial-cluster-state=new`).
    Bootstrap,
    /// The cluster exists and has this member (again): `--initial-cluster-state=existing`.
    Join {
        /// The ID this member had before it was removed, if it was.
        removed: Option<u64>,
        /// The ID it was added with, if it was added now.
        added: Option<u64>,
    },
}

/// How long one question to one member may take.
const ATTEMPT: Duration = Duration::from_secs(2);
/// Once the cluster has answered, how long membership changes are retried (etcd refuses
/// them for a few seconds after a member was lost: its `--strict-reconfig-check`).
const CHANGE_FOR: Duration = Duration::from_secs(60);

/// Decides how a member with no data starts, changing the membership if it has to. `config`
/// reaches the other members; `peer_url` is this member's advertised peer URL. Gives up with
/// the last error when the cluster answered but refused the change for [`CHANGE_FOR`].
pub async fn prepare_empty_member(
    config: &EtcdConfig,
    peer_url: &str,
    ask_for: Duration,
) -> Result<EmptyMemberStart, StoreError> {
    let mut deadline = Instant::now() + ask_for;
    let mut answered = false;
    let mut removed = None;
    let options = connect_options(config)?.with_timeout(ATTEMPT);
    loop {
        for endpoint in &config.endpoints {
            let attempt = async {
                let mut client = Client::connect([endpoint], Some(options.clone())).await?;
                let list = client.member_list().await?;
                Ok::<_, etcd_client::Error>((client, list))
            };
            let Ok(Ok((mut client, list))) = tokio::time::timeout(ATTEMPT, attempt).await else {
                continue;
            };
            if !answered {
                answered = true;
                deadline = Instant::now() + CHANGE_FOR;
            }
            match change(&mut client, &list, peer_url, &mut removed).await {
                Ok(start) => return Ok(start),
                Err(e) if Instant::now() >= deadline => return Err(StoreError::Unavailable(e)),
                Err(e) => {
                    tracing::info!(%endpoint, error = %e, "etcd refused the membership change; retrying")
                }
            }
        }
        if !answered && Instant::now() >= deadline {
            return Ok(EmptyMemberStart::Bootstrap);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Removes and adds this member as the list requires; `removed` keeps the old ID across
/// attempts (a removal that succeeded before an add that failed).
async fn change(
    client: &mut Client,
    list: &etcd_client::MemberListResponse,
    peer_url: &str,
    removed: &mut Option<u64>,
) -> Result<EmptyMemberStart, etcd_client::Error> {
    let me = list
        .members()
        .iter()
        .find(|m| m.peer_urls().iter().any(|u| u == peer_url));
    match me {
        Some(m) if m.name().is_empty() => {
            return Ok(EmptyMemberStart::Join {
                removed: *removed,
                added: None,
            })
        }
        Some(m) => {
            client.member_remove(m.id()).await?;
            *removed = Some(m.id());
        }
        None => {}
    }
    let added = client.member_add([peer_url], None).await?;
    Ok(EmptyMemberStart::Join {
        removed: *removed,
        added: added.member().map(|m| m.id()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EtcdStore, ListOptions, LocalEtcd, Store};

    async fn write(store: &EtcdStore, from: usize, to: usize) {
        for i in from..to {
            let key = format!("/registry/configmaps/default/k{i}");
            store.create(&key, vec![b'x'; 64]).await.expect("write");
        }
    }

    async fn count(config: &EtcdConfig) -> usize {
        let store = EtcdStore::connect(config).await.expect("connect");
        let list = store
            .list("/registry/configmaps/", ListOptions::default())
            .await
            .expect("list");
        list.items.len()
    }

    /// A member that loses its data while the cluster takes writes comes back under a new
    /// ID and serves every acknowledged write, its own earlier ones included; asking again
    /// before it starts changes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_that_lost_its_data_rejoins_as_a_new_member_and_serves_every_write() {
        let mut members = LocalEtcd::start_cluster(3, &[]).await.expect("cluster");
        let store = EtcdStore::connect(&LocalEtcd::cluster_config(&members))
            .await
            .expect("connect");
        write(&store, 0, 100).await;

        members[2].kill();
        members[2].wipe_data().expect("wipe");
        write(&store, 100, 150).await;

        let others = LocalEtcd::cluster_config(&members[..2]);
        let peer_url = members[2].peer_url();
        let start = prepare_empty_member(&others, &peer_url, Duration::from_secs(10))
            .await
            .expect("prepare");
        let EmptyMemberStart::Join {
            removed: Some(old),
            added: Some(new),
        } = start
        else {
            panic!("expected remove + add, got {start:?}");
        };
        assert_ne!(old, new, "the member comes back under a new ID");
        let again = prepare_empty_member(&others, &peer_url, Duration::from_secs(10))
            .await
            .expect("prepare again");
        assert_eq!(
            again,
            EmptyMemberStart::Join {
                removed: None,
                added: None
            },
            "an added member that has not run yet is left alone"
        );

        members[2]
            .restart(&["--initial-cluster-state=existing"])
            .await
            .expect("the empty member starts as an existing one");
        write(&store, 150, 160).await;
        assert_eq!(count(&members[2].config()).await, 160);

        let mut client = Client::connect(
            [members[0].config().endpoints[0].clone()],
            Some(connect_options(&members[0].config()).unwrap()),
        )
        .await
        .unwrap();
        let list = client.member_list().await.unwrap();
        let ids: Vec<u64> = list.members().iter().map(|m| m.id()).collect();
        assert_eq!(list.members().len(), 3);
        assert!(ids.contains(&new) && !ids.contains(&old), "{ids:?}");
        assert!(
            list.members().iter().all(|m| !m.name().is_empty()),
            "every member has started"
        );
    }

    /// When no other member answers (a first boot), the member bootstraps, after asking
    /// for the bounded time only.
    #[tokio::test]
    async fn a_member_that_nobody_answers_bootstraps_after_the_bounded_wait() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = EtcdConfig {
            endpoints: vec![format!("http://127.0.0.1:{port}")],
            tls: None,
            connect_timeout: Duration::from_millis(500),
        };
        let began = Instant::now();
        let start = prepare_empty_member(&config, "http://127.0.0.1:1", Duration::from_secs(1))
            .await
            .expect("prepare");
        assert_eq!(start, EmptyMemberStart::Bootstrap);
        assert!(began.elapsed() < Duration::from_secs(10));
    }
}
