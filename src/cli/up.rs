//! `kimg up DIR`: runs the control plane of a cluster directory on this machine, for
//! development and tests: the apiserver, and in-process the scheduler and the
//! controller-manager (each under leader election, with its own client certificate and a
//! kubeconfig written next to `admin.conf`: `scheduler.conf`, `controller-manager.conf`).
//! The bootstrap tokens of `DIR/secrets/tokens.toml` become their `bootstrap-token-<id>`
//! Secrets, and the default RBAC roles are created.
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

/// Which components run in-process besides the apiserver, and their settings.
pub struct Components {
    pub scheduler: bool,
    pub controller_manager: bool,
    pub controllers: super::controller_manager::ControllerArgs,
    pub lease: super::scheduler::LeaseArgs,
}

/// A client for a component: its own certificate, or — while the apiserver forbids it
/// (no RBAC for the component yet) — the admin kubeconfig, with a warning.
async fn component_client(own: &Path, admin: &Path) -> anyhow::Result<kube::Client> {
    let client = crate::controllers::client_from_kubeconfig(own).await?;
    let probe: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    match probe.list(&kube::api::ListParams::default().limit(1)).await {
        Err(kube::Error::Api(e)) if e.code == 403 => {
            tracing::warn!(kubeconfig = %own.display(), "the apiserver forbids this component's identity; using the admin kubeconfig");
            crate::controllers::client_from_kubeconfig(admin).await
        }
        _ => Ok(client),
    }
}

async fn start_components(
    cluster: &Cluster,
    dir: &Path,
    server: &str,
    admin: &Path,
    c: Components,
) -> anyhow::Result<()> {
    let pki_dir = pki::pki_dir(dir);
    let read = |name: &str| {
        let p = pki_dir.join(name);
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
    };
    let write_conf =
        |file: &str, user: &str, cert: &str, key: &str| -> anyhow::Result<std::path::PathBuf> {
            let text = pki::kubeconfig::render(
                &cluster.name,
                server,
                &read("ca.crt")?,
                user,
                &read(cert)?,
                &read(key)?,
            );
            let path = dir.join(file);
            pki::write_atomic(&path, text.as_bytes(), 0o600)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(path)
        };
    if c.scheduler {
        let conf = write_conf(
            "scheduler.conf",
            "system:kube-scheduler",
            "scheduler.crt",
            "scheduler.key",
        )?;
        let client = component_client(&conf, admin).await?;
        let lease = c.lease.config("kube-scheduler");
        tokio::spawn(async move {
            let opts = crate::scheduler::Options::default();
            if let Err(e) = crate::scheduler::run_with_election(client, opts, lease).await {
                tracing::error!(error = %e, "the scheduler stopped");
            }
        });
    }
    if c.controller_manager {
        let conf = write_conf(
            "controller-manager.conf",
            "system:kube-controller-manager",
            "controller-manager.crt",
            "controller-manager.key",
        )?;
        let client = component_client(&conf, admin).await?;
        let lease = c.lease.config("kube-controller-manager");
        let mut opts = c.controllers.options();
        opts.cluster_cidr = opts.cluster_cidr.or(Some(cluster.pod_cidr));
        opts.signing = opts.signing.or(Some(crate::controllers::csr::SigningFiles {
            cert: pki_dir.join("ca.crt"),
            key: pki_dir.join("ca.key"),
        }));
        tokio::spawn(crate::controllers::run_with_election(client, opts, lease));
    }
    Ok(())
}

async fn up(
    dir: &Path,
    listen: SocketAddr,
    store: &str,
    components: Components,
) -> anyhow::Result<()> {
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
    let serving = tokio::spawn(server.serve(listener, shutdown_signal()?));
    start_components(&cluster, dir, &format!("https://{addr}"), &path, components).await?;
    println!("{}", path.display());
    serving.await.context("the apiserver task failed")??;
    Ok(())
}

fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    Ok(shutdown)
}

/// Runs `kimg up` on a new multi-threaded runtime.
pub fn run(
    dir: &Path,
    listen: SocketAddr,
    store: &str,
    components: Components,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(up(dir, listen, store, components))
}
