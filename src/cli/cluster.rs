//! `kimg cluster …` and `kimg kubeconfig`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use time::OffsetDateTime;

use crate::cluster::{Cluster, NewOptions, Role};
use crate::pki;

// Parsed once per process; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Create DIR/cluster.toml and DIR/secrets/ (PKI + a never-expiring bootstrap token).
    ///
    /// With no node options: a single machine (node-1, 10.77.0.10, VIP 10.77.0.100) that
    /// is etcd, master and worker at once. Node lists take `[NAME=]IP[@MAC]` items, comma
    /// separated; an IP in both --etcd and --masters is one stacked machine; masters
    /// without --etcd carry etcd themselves. The seeds' topology:
    ///
    ///   kimg cluster new prod --vip 192.168.202.160
    ///     --masters 192.168.202.157,192.168.202.158,192.168.202.159
    ///     --etcd 192.168.202.161,192.168.202.162,192.168.202.163
    ///     --workers 192.168.202.165,192.168.202.166,192.168.202.167
    New {
        dir: PathBuf,
        /// Cluster name (a DNS label). Default: kimg.
        #[arg(long)]
        name: Option<String>,
        /// The API virtual IP: a free address on the masters' subnet.
        #[arg(long)]
        vip: Option<String>,
        /// etcd members: [NAME=]IP[@MAC],… (use 1, 3 or 5).
        #[arg(long, value_delimiter = ',')]
        etcd: Vec<String>,
        /// Control-plane machines: [NAME=]IP[@MAC],…
        #[arg(long, value_delimiter = ',')]
        masters: Vec<String>,
        /// Workers known in advance: [NAME=]IP[@MAC],… (DHCP workers may join unlisted).
        #[arg(long, value_delimiter = ',')]
        workers: Vec<String>,
        /// Pod network, one /24 per node. Default: 10.244.0.0/16.
        #[arg(long)]
        pod_cidr: Option<String>,
        /// ClusterIP range. Default: 10.96.0.0/12.
        #[arg(long)]
        service_cidr: Option<String>,
        /// Cluster DNS domain. Default: cluster.local.
        #[arg(long)]
        dns_domain: Option<String>,
        /// The machines' subnet. Default: the /24 around the VIP.
        #[arg(long)]
        network: Option<String>,
        /// Default gateway of the machines. Default: the subnet's first address, if free.
        #[arg(long)]
        gateway: Option<String>,
        /// Upstream DNS servers, comma separated. Default: the gateway.
        #[arg(long, value_delimiter = ',')]
        dns: Vec<String>,
        /// `kimg vip` timing LEASE,RENEW,RETRY (the `[vip]` table). Default: 2s,1500ms,250ms.
        /// Slow machines (QEMU without KVM) need longer ones; failover takes ~LEASE+RETRY.
        #[arg(long)]
        vip_timing: Option<String>,
        /// Replace an existing cluster; its old secrets/ is kept as secrets.replaced-<time>.
        #[arg(long)]
        force: bool,
    },
    /// Validate DIR/cluster.toml and print a summary (errors name file:line and key).
    Check { dir: PathBuf },
    /// List the cluster's certificates: subject, SANs, expiry.
    Certs {
        dir: PathBuf,
        /// Issue whatever is missing (e.g. after adding an etcd member). Never overwrites.
        #[arg(long)]
        issue: bool,
    },
    /// Print the CA pin, sha256:<hex of the CA's SubjectPublicKeyInfo>.
    CaHash { dir: PathBuf },
}

pub fn run(cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::New {
            dir,
            name,
            vip,
            etcd,
            masters,
            workers,
            pod_cidr,
            service_cidr,
            dns_domain,
            network,
            gateway,
            dns,
            vip_timing,
            force,
        } => {
            let opts = NewOptions {
                name,
                vip,
                etcd,
                masters,
                workers,
                pod_cidr,
                service_cidr,
                dns_domain,
                network,
                gateway,
                dns,
                vip_timing,
            };
            let c = crate::pki::create_cluster(&dir, &opts, force)?;
            for w in &c.warnings {
                eprintln!("warning: {w}");
            }
            print_summary(&c);
            println!(
                "\nwrote {} and {}",
                dir.join("cluster.toml").display(),
                dir.join("secrets").display()
            );
            println!(
                "next: kimg build --profile <etcd|master|worker> --cluster {}",
                dir.display()
            );
            Ok(())
        }
        ClusterCommand::Check { dir } => {
            let c = Cluster::load(&dir)?;
            for w in &c.warnings {
                eprintln!("warning: {w}");
            }
            print_summary(&c);
            Ok(())
        }
        ClusterCommand::Certs { dir, issue } => {
            let c = Cluster::load(&dir)?;
            if issue {
                let issued = pki::ensure(&c)?;
                for name in &issued.created {
                    println!("issued {name}");
                }
            }
            let now = OffsetDateTime::now_utc();
            let certs = pki::inspect::list(&pki::pki_dir(&dir))?;
            let mut out = std::io::stdout().lock();
            for cert in certs {
                let left = (cert.not_after - now).whole_days();
                let expiry = cert.not_after.date();
                let note = if left < 0 {
                    " EXPIRED".to_string()
                } else if left < 30 {
                    " (renew soon)".into()
                } else {
                    String::new()
                };
                writeln!(
                    out,
                    "{}{}",
                    cert.name,
                    if cert.is_ca { "  [CA]" } else { "" }
                )?;
                writeln!(out, "  subject: {}", cert.subject)?;
                writeln!(out, "  issuer:  {}", cert.issuer)?;
                if !cert.sans.is_empty() {
                    writeln!(out, "  SANs:    {}", cert.sans.join(", "))?;
                }
                writeln!(out, "  expires: {expiry} ({left}d){note}")?;
            }
            Ok(())
        }
        ClusterCommand::CaHash { dir } => {
            println!("{}", pki::ca_hash(&dir)?);
            Ok(())
        }
    }
}

fn print_summary(c: &Cluster) {
    println!(
        "cluster {}: API {} (VIP), pods {}, services {}, DNS {}",
        c.name,
        c.api_url(),
        c.pod_cidr,
        c.service_cidr,
        c.dns_domain
    );
    println!(
        "network {} gateway {}",
        c.network.prefix,
        c.network
            .gateway
            .map(|g| g.to_string())
            .unwrap_or_else(|| "none".into())
    );
    for n in &c.nodes {
        let roles: Vec<&str> = n.roles.iter().map(|r| r.as_str()).collect();
        let mac = n.mac.map(|m| format!(" {m}")).unwrap_or_default();
        println!(
            "  {:<12} {:<16} {}{mac}",
            n.name,
            n.ip.to_string(),
            roles.join("+")
        );
    }
    let count = |r| c.nodes_with(r).count();
    println!(
        "{} etcd, {} masters, {} workers",
        count(Role::Etcd),
        count(Role::Master),
        count(Role::Worker)
    );
}

/// `kimg kubeconfig DIR [--server URL] [-o FILE]`.
pub fn kubeconfig(
    dir: &Path,
    server: Option<String>,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    let c = Cluster::load(dir)?;
    let pki_dir = pki::pki_dir(dir);
    let read = |name: &str| {
        let p = pki_dir.join(name);
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
    };
    let text = pki::kubeconfig::render(
        &c.name,
        &server.unwrap_or_else(|| c.api_url()),
        &read("ca.crt")?,
        "kubernetes-admin",
        &read("admin.crt")?,
        &read("admin.key")?,
    );
    match output {
        Some(path) => {
            pki::write_atomic(&path, text.as_bytes(), 0o600)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "wrote {}; use: kubectl --kubeconfig {} get nodes",
                path.display(),
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}
