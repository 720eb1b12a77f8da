//! What a lab is made of: the cluster a topology defines, and the machines a cluster
//! definition asks for.
//!
//! A topology is only a way to write `kimg cluster new` arguments; from then on a lab is
//! driven by its cluster definition alone, so `kimg lab up --cluster DIR` (a cluster the
//! user wrote) and `--topology seeds` take the same path. Every machine must have a MAC in
//! `cluster.toml`: that is how an image recognises which node it is when it boots from
//! its disk (see `node::identity`).

use std::net::Ipv4Addr;

use crate::cluster::{Cluster, Role};

/// The shapes `kimg lab up --topology` knows.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// One machine that is etcd, control plane and worker (`node-1`), plus `--workers`.
    Single,
    /// Three machines that are each an etcd member and a control plane (`cp-1..3`), behind
    /// the VIP, plus `--workers`.
    Stacked,
    /// The seeds' layout: 3 etcd members, 3 control-plane machines behind the VIP, and
    /// `--workers` workers.
    Seeds,
}

impl Topology {
    pub fn name(self) -> &'static str {
        match self {
            Topology::Single => "single",
            Topology::Stacked => "stacked",
            Topology::Seeds => "seeds",
        }
    }

    /// Workers when `--workers` is not given.
    pub fn default_workers(self) -> u32 {
        match self {
            Topology::Single => 0,
            Topology::Stacked => 1,
            Topology::Seeds => 2,
        }
    }
}

/// The most workers a generated topology has (addresses .41 to .90 of the lab network).
pub const MAX_WORKERS: u32 = 50;

/// The lab's network (a /24 no LAN of the host should use: if one does, `kimg lab up`
/// refuses, and `--cluster` takes a definition on another subnet).
pub const VIP: &str = "10.77.0.100";

/// The host's address on a generated topology's network (its gateway).
pub const HOST_CIDR: &str = "10.77.0.1/24";

/// Emulated machines answer slowly: the VIP's Lease is renewed through etcd, and under TCG
/// on two host cores one write can take over a second, so the default 2s/1500ms/250ms
/// would hand the VIP over now and then for no reason. Failover takes ~4.5 s.
pub const VIP_TIMING: &str = "4s,3s,500ms";

fn machine(name: &str, octet: u8) -> String {
    format!("{name}=10.77.0.{octet}@52:54:00:77:0a:{octet:02x}")
}

/// The `kimg cluster new DIR …` arguments (after DIR) for a topology.
pub fn cluster_new_args(topology: Topology, workers: u32) -> Vec<String> {
    let list = |items: Vec<String>| items.join(",");
    let workers: Vec<String> = (1..=workers.min(MAX_WORKERS))
        .map(|i| machine(&format!("worker-{i}"), 40 + i as u8))
        .collect();
    let mut args = vec![
        "--name".to_string(),
        "lab".into(),
        "--vip".into(),
        VIP.into(),
        "--vip-timing".into(),
        VIP_TIMING.into(),
    ];
    let mut push = |flag: &str, items: Vec<String>| {
        if !items.is_empty() {
            args.push(flag.into());
            args.push(list(items));
        }
    };
    match topology {
        Topology::Single => {
            // Listed as master and worker at one address: one machine with both roles
            // (masters without --etcd carry etcd themselves).
            let node = machine("node-1", 10);
            push("--masters", vec![node.clone()]);
            push("--workers", std::iter::once(node).chain(workers).collect());
        }
        Topology::Stacked => {
            push(
                "--masters",
                (1..=3)
                    .map(|i| machine(&format!("cp-{i}"), 10 + i))
                    .collect(),
            );
            push("--workers", workers);
        }
        Topology::Seeds => {
            push(
                "--masters",
                (1..=3)
                    .map(|i| machine(&format!("master-{i}"), 30 + i))
                    .collect(),
            );
            push(
                "--etcd",
                (1..=3)
                    .map(|i| machine(&format!("etcd-{i}"), 20 + i))
                    .collect(),
            );
            push("--workers", workers);
        }
    }
    args
}

/// One machine of a lab.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    pub name: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    /// The image profile it boots (`kimg build --profile`).
    pub profile: String,
    /// Its roles as `kimg init` prints them (`etcd+master`).
    pub roles: String,
    /// Whether it registers a Node (has the worker role), so `up` waits for Node Ready.
    pub node: bool,
    pub memory_mib: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("node {0} has no MAC in cluster.toml; a lab machine recognises itself by its MAC (list it as NAME=IP@MAC)")]
    NoMac(String),
    #[error("node {node} has roles {roles}, which no image profile carries")]
    NoProfile { node: String, roles: String },
    #[error("the cluster's subnet {0} has no free address left for the host")]
    NoHostAddress(String),
}

/// The image profile that carries exactly these roles.
pub fn profile_for(roles: &[Role]) -> Option<&'static str> {
    let has = |r| roles.contains(&r);
    Some(
        match (has(Role::Etcd), has(Role::Master), has(Role::Worker)) {
            (true, false, false) => "etcd",
            (false, true, false) => "master",
            (true, true, false) => "stacked",
            (false, false, true) => "worker",
            (true, true, true) => "all-in-one",
            _ => return None,
        },
    )
}

fn memory_for(profile: &str) -> u32 {
    match profile {
        "etcd" => 512,
        "all-in-one" => 1536,
        "stacked" => 1024,
        _ => 768,
    }
}

/// The machines a cluster definition asks for, in its node order.
pub fn machines(cluster: &Cluster) -> Result<Vec<Machine>, PlanError> {
    cluster
        .nodes
        .iter()
        .map(|n| {
            let roles = n
                .roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join("+");
            let mac = n.mac.ok_or_else(|| PlanError::NoMac(n.name.clone()))?;
            let profile = profile_for(&n.roles).ok_or_else(|| PlanError::NoProfile {
                node: n.name.clone(),
                roles: roles.clone(),
            })?;
            Ok(Machine {
                name: n.name.clone(),
                ip: n.ip,
                mac: mac.to_string(),
                profile: profile.to_owned(),
                roles,
                node: n.has(Role::Worker),
                memory_mib: memory_for(profile),
            })
        })
        .collect()
}

/// The host's address on the lab network, `a.b.c.d/len`: the cluster's gateway if it has
/// one, else the first address of the subnet that no machine and not the VIP uses.
pub fn host_cidr(cluster: &Cluster) -> Result<String, PlanError> {
    let prefix = cluster.network.prefix;
    let used = |ip: Ipv4Addr| ip == cluster.api_vip || cluster.nodes.iter().any(|n| n.ip == ip);
    let addr = match cluster.network.gateway {
        Some(g) if !used(g) => Some(g),
        _ => prefix.hosts().find(|ip| !used(*ip)),
    }
    .ok_or_else(|| PlanError::NoHostAddress(prefix.to_string()))?;
    Ok(format!("{addr}/{}", prefix.prefix_len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::NewOptions;

    fn cluster_of(topology: Topology, workers: u32) -> (tempfile::TempDir, Cluster) {
        let dir = tempfile::tempdir().unwrap();
        let args = cluster_new_args(topology, workers);
        let mut opts = NewOptions::default();
        let mut it = args.chunks(2);
        for pair in &mut it {
            let split = |v: &str| v.split(',').map(String::from).collect::<Vec<_>>();
            match pair[0].as_str() {
                "--name" => opts.name = Some(pair[1].clone()),
                "--vip" => opts.vip = Some(pair[1].clone()),
                "--vip-timing" => opts.vip_timing = Some(pair[1].clone()),
                "--masters" => opts.masters = split(&pair[1]),
                "--etcd" => opts.etcd = split(&pair[1]),
                "--workers" => opts.workers = split(&pair[1]),
                other => panic!("unexpected flag {other}"),
            }
        }
        let c = crate::pki::create_cluster(dir.path(), &opts, false).unwrap();
        (dir, c)
    }

    #[test]
    fn single_is_one_machine_with_every_role() {
        let (_d, c) = cluster_of(Topology::Single, 0);
        let m = machines(&c).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].name, "node-1");
        assert_eq!(m[0].profile, "all-in-one");
        assert_eq!(m[0].roles, "etcd+master+worker");
        assert_eq!(m[0].mac, "52:54:00:77:0a:0a");
        assert!(m[0].node);
        assert_eq!(host_cidr(&c).unwrap(), HOST_CIDR);
    }

    #[test]
    fn seeds_is_three_etcd_three_masters_and_the_workers() {
        let (_d, c) = cluster_of(Topology::Seeds, 2);
        let m = machines(&c).unwrap();
        let by_profile = |p: &str| m.iter().filter(|x| x.profile == p).count();
        assert_eq!(
            (
                by_profile("etcd"),
                by_profile("master"),
                by_profile("worker")
            ),
            (3, 3, 2)
        );
        assert_eq!(m.iter().filter(|x| x.node).count(), 2);
        assert!(m
            .iter()
            .any(|x| x.name == "worker-2" && x.ip.octets()[3] == 42));
        let (_d, c) = cluster_of(Topology::Stacked, 1);
        let m = machines(&c).unwrap();
        assert_eq!(m.iter().filter(|x| x.profile == "stacked").count(), 3);
    }

    #[test]
    fn a_machine_without_a_mac_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let c = crate::pki::create_cluster(dir.path(), &NewOptions::default(), false).unwrap();
        let err = machines(&c).unwrap_err().to_string();
        assert!(err.contains("node node-1 has no MAC"), "{err}");
    }
}
