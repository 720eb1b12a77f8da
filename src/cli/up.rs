//! `kimg up DIR`: runs the control plane of a cluster directory on this machine, for
//! development and tests. Phase 1 runs the apiserver only; the scheduler and controllers
//! join it later. The bootstrap tokens of `DIR/secrets/tokens.toml` become their
//! `bootstrap-token-<id>` Secrets, and the default RBAC roles are created.
//!
//! It serves on `--listen` (loopback by default) with the cluster's `apiserver` certificate,
//! stores objects in memory or in etcd (`--store etcd=URL,…`, plain HTTP or, for `https://`
//! URLs, the cluster's `apiserver-etcd-client` certificate), writes `DIR/admin.conf`
//! pointing at the listen address, prints its path and runs until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::signal::unix::{signal, SignalKind};

use crate::apiserver::ApiServer;
use crate::cluster::Cluster;
use crate::pki;
use crate::store::{EtcdConfig, EtcdStore, EtcdTls, MemoryStore, Store};

async fn open_store(spec: &str, cluster_dir: &Path) -> anyhow::Result<Arc<dyn Store>> {
    if spec == "memory" {
        return Ok(Arc::new(MemoryStore::new()));
    }
    let Some(urls) = spec.strip_prefix("etcd=") else {
        bail!("--store must be `memory` or `etcd=URL[,URL…]`, not {spec:?}");
    };
    let endpoints: Vec<String> = urls.split(',').map(str::to_string).collect();
    let pki_dir = pki::pki_dir(cluster_dir);
    let tls = endpoints
        .iter()
        .any(|u| u.starts_with("https://"))
        .then(|| EtcdTls {
            ca: pki_dir.join("etcd/ca.crt"),
            cert: pki_dir.join("apiserver-etcd-client.crt"),
            key: pki_dir.join("apiserver-etcd-client.key"),
        });
    let config = EtcdConfig {
        endpoints,
        tls,
        connect_timeout: Duration::from_secs(5),
    };
    let store = EtcdStore::connect(&config)
        .await
        .with_context(|| format!("cannot reach etcd at {urls}"))?;
    Ok(Arc::new(store))
}

async fn up(dir: &Path, listen: SocketAddr, store: &str) -> anyhow::Result<()> {
    let cluster = Cluster::load(dir)?;
    let store = open_store(store, dir).await?;
    let pki_dir = pki::pki_dir(dir);
    let tokens = pki::token::load(dir).context("cannot read the bootstrap tokens")?;
    let server = ApiServer::start_with_tokens(store, cluster.service_cidr, &pki_dir, tokens)
        .await
        .context("cannot start the apiserver")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let read = |name: &str| {
        let p = pki_dir.join(name);
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
    };
    let kubeconfig = pki::kubeconfig::render(
        &cluster.name,
        &format!("https://{addr}"),
        &read("ca.crt")?,
        "kubernetes-admin",
        &read("admin.crt")?,
        &read("admin.key")?,
    );
    let path = dir.join("admin.conf");
    let path = std::path::absolute(&path).unwrap_or(path);
    pki::write_atomic(&path, kubeconfig.as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(%addr, kubeconfig = %path.display(), "apiserver listening");
    println!("{}", path.display());
    let mut term = signal(SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    server.serve(listener, shutdown).await?;
    Ok(())
}

/// Runs `kimg up` on a new multi-threaded runtime.
pub fn run(dir: &Path, listen: SocketAddr, store: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(up(dir, listen, store))
}
