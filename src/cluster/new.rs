//! `kimg cluster new`: a cluster definition from command-line options, plus its PKI and a
//! first bootstrap token, written atomically.
//!
//! With no node options the result is a working single machine: node `node-1` at
//! 10.77.0.10/24 carrying etcd, master and worker, VIP 10.77.0.100. That default is what
//! `kimg build` uses when no cluster is given.
//!
//! Node lists take `[NAME=]IP[@MAC]` items. An address listed under both `--etcd` and
//! `--masters` is one stacked machine. With masters but no `--etcd`, etcd is stacked on
//! the masters.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use super::config::{self, ClusterFile, NetworkFile, NodeFile, VipFile, CLUSTER_FILE};
use super::error::{ClusterError, FieldError};
use super::{validate, Cluster};

/// Options of `kimg cluster new`. `None` / empty means "use the default".
#[derive(Clone, Debug, Default)]
pub struct NewOptions {
    pub name: Option<String>,
    pub vip: Option<String>,
    pub etcd: Vec<String>,
    pub masters: Vec<String>,
    pub workers: Vec<String>,
    pub pod_cidr: Option<String>,
    pub service_cidr: Option<String>,
    pub dns_domain: Option<String>,
    pub network: Option<String>,
    pub gateway: Option<String>,
    pub dns: Vec<String>,
    /// `LEASE,RENEW,RETRY` for the `[vip]` table.
    pub vip_timing: Option<String>,
}

/// The single-machine default's addresses.
pub const DEFAULT_PREFIX: &str = "10.77.0.0/24";
pub const DEFAULT_NODE_IP: &str = "10.77.0.10";
pub const DEFAULT_VIP: &str = "10.77.0.100";

fn option_error(field: &str, message: String) -> ClusterError {
    ClusterError::Invalid(vec![FieldError {
        file: None,
        line: None,
        field: field.into(),
        message,
    }])
}

struct Item {
    name: Option<String>,
    ip: String,
    mac: Option<String>,
}

fn parse_item(s: &str) -> Item {
    let (name, rest) = match s.split_once('=') {
        Some((n, r)) => (Some(n.trim().to_string()), r),
        None => (None, s),
    };
    let (ip, mac) = match rest.split_once('@') {
        Some((i, m)) => (i.trim().to_string(), Some(m.trim().to_string())),
        None => (rest.trim().to_string(), None),
    };
    Item { name, ip, mac }
}

/// Builds the [`ClusterFile`] that the options describe (not yet validated).
pub fn file_from_options(opts: &NewOptions) -> Result<ClusterFile, ClusterError> {
    let any_nodes = !(opts.etcd.is_empty() && opts.masters.is_empty() && opts.workers.is_empty());
    let mut nodes: Vec<NodeFile> = Vec::new();
    if !any_nodes {
        nodes.push(NodeFile {
            name: "node-1".into(),
            roles: vec!["etcd".into(), "master".into(), "worker".into()],
            ip: DEFAULT_NODE_IP.into(),
            mac: None,
        });
    }
    let stacked = opts.etcd.is_empty() && !opts.masters.is_empty();
    let mut add = |list: &[String], role: &str, prefix: &str| {
        for (i, raw) in list.iter().enumerate() {
            let item = parse_item(raw);
            if let Some(existing) = nodes.iter_mut().find(|n| n.ip == item.ip) {
                existing.roles.push(role.into());
                if existing.mac.is_none() {
                    existing.mac = item.mac;
                }
                continue;
            }
            let mut roles = vec![role.to_string()];
            if stacked && role == "master" {
                roles.insert(0, "etcd".into());
            }
            nodes.push(NodeFile {
                name: item.name.unwrap_or_else(|| format!("{prefix}-{}", i + 1)),
                roles,
                ip: item.ip,
                mac: item.mac,
            });
        }
    };
    add(&opts.masters, "master", "master");
    add(&opts.etcd, "etcd", "etcd");
    add(&opts.workers, "worker", "worker");
    for n in &mut nodes {
        let order = |r: &String| ["etcd", "master", "worker"].iter().position(|x| x == r);
        n.roles.sort_by_key(order);
    }

    let vip = match (&opts.vip, any_nodes) {
        (Some(v), _) => v.clone(),
        (None, false) => DEFAULT_VIP.into(),
        (None, true) => return Err(option_error(
            "api-vip",
            "--vip is required when nodes are listed: pick a free address on the masters' subnet"
                .into(),
        )),
    };
    let prefix = match &opts.network {
        Some(p) => p.clone(),
        None if !any_nodes => DEFAULT_PREFIX.into(),
        None => {
            let addr: Ipv4Addr = vip
                .parse()
                .map_err(|_| option_error("api-vip", format!("{vip:?} is not an IPv4 address")))?;
            Ipv4Net::new(addr, 24)
                .map(|n| n.trunc().to_string())
                .unwrap_or_default()
        }
    };
    let gateway = match &opts.gateway {
        Some(g) => Some(g.clone()),
        None => prefix
            .parse::<Ipv4Net>()
            .ok()
            .and_then(|p| p.hosts().next())
            .map(|g| g.to_string())
            .filter(|g| *g != vip && nodes.iter().all(|n| n.ip != *g)),
    };
    let dns = if opts.dns.is_empty() {
        gateway.iter().cloned().collect()
    } else {
        opts.dns.clone()
    };
    Ok(ClusterFile {
        name: opts.name.clone().unwrap_or_else(|| "kimg".into()),
        api_vip: vip,
        api_port: config::default_api_port(),
        pod_cidr: opts
            .pod_cidr
            .clone()
            .unwrap_or_else(config::default_pod_cidr),
        service_cidr: opts
            .service_cidr
            .clone()
            .unwrap_or_else(config::default_service_cidr),
        dns_domain: opts
            .dns_domain
            .clone()
            .unwrap_or_else(config::default_dns_domain),
        anonymous_workers: true,
        insecure_registries: Vec::new(),
        network: NetworkFile {
            prefix,
            gateway,
            dns,
            ntp: Vec::new(),
        },
        vip: match &opts.vip_timing {
            None => None,
            Some(t) => match t.split(',').map(str::trim).collect::<Vec<_>>()[..] {
                [lease, renew, retry] => Some(VipFile {
                    lease_duration: lease.into(),
                    renew_deadline: renew.into(),
                    retry_period: retry.into(),
                }),
                _ => {
                    return Err(option_error(
                        "--vip-timing",
                        format!("{t:?} must be LEASE,RENEW,RETRY, e.g. 2s,1500ms,250ms"),
                    ))
                }
            },
        },
        nodes,
    })
}

/// What [`create`] calls to fill a staged cluster's `secrets/` (`crate::pki::create_cluster`
/// passes the CA, the leaf certificates and the image token; this folder does not know
/// how keys are made).
pub type MakeSecrets<'a> =
    &'a dyn Fn(&Cluster) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Writes a new cluster directory: `cluster.toml`, then `secrets/` by `secrets`.
/// Everything is produced in a sibling temp directory and renamed into place, so a crash
/// leaves either nothing or a whole cluster. With `force`, an existing directory's
/// `secrets/` is kept as `secrets.replaced-<unix>`.
pub fn create(
    dir: &Path,
    opts: &NewOptions,
    force: bool,
    secrets: MakeSecrets<'_>,
) -> Result<Cluster, ClusterError> {
    let file = file_from_options(opts)?;
    let exists = dir.join(CLUSTER_FILE).exists() || dir.join("secrets").exists();
    if exists && !force {
        return Err(ClusterError::Exists {
            dir: dir.to_path_buf(),
        });
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ClusterError::Write { path, source }
    };
    fs::create_dir_all(&parent).map_err(write_err(&parent))?;
    let base = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("cluster");
    let staging = parent.join(format!(".{base}.new-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).map_err(write_err(&staging))?;
    let result = (|| {
        let staged = validate::validate(file, &staging, None)?;
        staged.save()?;
        secrets(&staged).map_err(ClusterError::Secrets)?;
        Ok::<_, ClusterError>(staged)
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    if dir.exists() {
        if dir.join("secrets").exists() {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let backup = dir.join(format!("secrets.replaced-{stamp}"));
            fs::rename(dir.join("secrets"), &backup).map_err(write_err(&backup))?;
        }
        for name in [CLUSTER_FILE, "secrets"] {
            fs::rename(staging.join(name), dir.join(name)).map_err(write_err(&dir.join(name)))?;
        }
        let _ = fs::remove_dir_all(&staging);
    } else {
        fs::rename(&staging, dir).map_err(write_err(dir))?;
    }
    Cluster::load(dir)
}
