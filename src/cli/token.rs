//! `kimg token create|list|delete`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use time::OffsetDateTime;

use crate::cluster::Cluster;
use crate::pki::{self, token};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a bootstrap token ([a-z0-9]{6}.[a-z0-9]{16}) and print it.
    Create {
        dir: PathBuf,
        /// Lifetime such as 24h, 30m or 7d; 0 never expires. Default: 24h (as kubeadm).
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// A note shown by `kimg token list`.
        #[arg(long, default_value = "")]
        description: String,
        /// Also print what a worker needs to join: API address, token and CA pin.
        #[arg(long)]
        print_join: bool,
    },
    /// List bootstrap tokens with TTL, expiry, usages and groups.
    List { dir: PathBuf },
    /// Delete (revoke) a token by its id or full value: from DIR/secrets/tokens.toml (so
    /// images built later lack it) and, with a kubeconfig, from the running cluster (its
    /// `kube-system/bootstrap-token-<id>` Secret), which refuses it from then on, also
    /// after masters restart from images that still carry it.
    Delete {
        dir: PathBuf,
        id: String,
        /// The running cluster's admin kubeconfig (e.g. from `kimg kubeconfig`).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
}

/// Deletes the token's Secret through the API (absent already counts as done).
fn revoke_in_cluster(kubeconfig: &std::path::Path, secret: &str) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, DeleteParams};
    let rt = super::runtime_on_this_thread()?;
    rt.block_on(async {
        let client = crate::client::client_from_kubeconfig(kubeconfig).await?;
        let api: Api<Secret> = Api::namespaced(client, "kube-system");
        match api.delete(secret, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(anyhow::Error::new(e).context(format!(
                "cannot delete kube-system/{secret} in the running cluster"
            ))),
        }
    })
}

/// Parses `24h`, `90m`, `7d`, `1h30m` or `0` (never).
pub fn parse_ttl(s: &str) -> anyhow::Result<Option<std::time::Duration>> {
    if s.trim() == "0" {
        return Ok(None);
    }
    let d = humantime::parse_duration(s).with_context(|| {
        format!("--ttl {s:?}: expected a duration such as 24h, 30m or 7d, or 0 for never")
    })?;
    Ok(Some(d))
}

pub fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            dir,
            ttl,
            description,
            print_join,
        } => {
            let c = Cluster::load(&dir)?;
            let ttl = parse_ttl(&ttl)?;
            let t = token::create(&dir, ttl, &description)?;
            println!("{}", t.value());
            if print_join {
                let hash = pki::ca_hash(&dir)?;
                println!("api-server: {}", c.api_url());
                println!("token: {}", t.value());
                println!("ca-cert-hash: {hash}");
                println!(
                    "kernel cmdline: kimg.join={}:{} kimg.token={} kimg.ca-hash={hash}",
                    c.api_vip,
                    c.api_port,
                    t.value()
                );
            }
            Ok(())
        }
        TokenCommand::List { dir } => {
            Cluster::load(&dir)?;
            let now = OffsetDateTime::now_utc();
            println!(
                "{:<24} {:<10} {:<22} {:<32} {:<30} EXTRA GROUPS",
                "TOKEN", "TTL", "EXPIRES", "USAGES", "DESCRIPTION"
            );
            for t in token::load(&dir)? {
                println!(
                    "{:<24} {:<10} {:<22} {:<32} {:<30} {}",
                    t.value(),
                    token::ttl_column(&t, now),
                    token::expires_column(&t),
                    t.usages.join(","),
                    if t.description.is_empty() {
                        "<none>"
                    } else {
                        &t.description
                    },
                    t.groups.join(",")
                );
            }
            Ok(())
        }
        TokenCommand::Delete {
            dir,
            id,
            kubeconfig,
        } => {
            Cluster::load(&dir)?;
            let t = token::delete(&dir, &id)?;
            println!("bootstrap token {:?} deleted from {}", t.id, dir.display());
            let secret = format!("bootstrap-token-{}", t.id);
            match kubeconfig {
                Some(k) => {
                    revoke_in_cluster(&k, &secret)?;
                    println!("secret kube-system/{secret} deleted: the cluster refuses the token");
                }
                None => println!(
                    "the running cluster accepts it until its Secret is deleted: pass \
                     --kubeconfig, or kubectl -n kube-system delete secret {secret}"
                ),
            }
            Ok(())
        }
    }
}
