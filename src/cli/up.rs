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
use crate::store::{
    EncryptedStore, EncryptionKeys, EtcdConfig, EtcdStore, EtcdTls, MemoryStore, Store,
};

/// What is encrypted at rest in etcd (kube-apiserver's usual EncryptionConfiguration).
const ENCRYPTED_PREFIXES: [&str; 1] = ["/registry/secrets/"];

/// Opens `memory` or `etcd=URL,…`; https URLs use `pki_dir`'s etcd client certificate. With
/// `pki_dir/encryption.key`, Secrets are encrypted at rest in etcd (the memory store keeps
/// nothing at rest).
pub(super) async fn open_store(spec: &str, pki_dir: &Path) -> anyhow::Result<Arc<dyn Store>> {
    if spec == "memory" {
        return Ok(Arc::new(MemoryStore::new()));
    }
    let Some(urls) = spec.strip_prefix("etcd=") else {
        bail!("--store must be `memory` or `etcd=URL[,URL…]`, not {spec:?}");
    };
    let endpoints: Vec<String> = urls.split(',').map(str::to_string).collect();
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
    let key_file = pki_dir.join(pki::ENCRYPTION_KEY);
    if !key_file.exists() {
        tracing::warn!(
            file = %key_file.display(),
            "no encryption key: Secrets are stored in etcd unencrypted \
             (`kimg cluster certs DIR --issue` creates one)"
        );
        return Ok(Arc::new(store));
    }
    let keys = EncryptionKeys::load(&key_file).map_err(anyhow::Error::msg)?;
    Ok(Arc::new(EncryptedStore::new(
        Arc::new(store),
        keys,
        &ENCRYPTED_PREFIXES,
    )))
}

/// The apiserver's request bounds (kube-apiserver's flags of the same names).
#[derive(Debug, Clone, clap::Args)]
pub struct ServingArgs {
    /// Read-only requests served at once before others get 429 (members of
    /// system:masters, watches and log/exec are not counted).
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_requests_inflight: u32,
    /// Mutating requests served at once before others get 429.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_mutating_requests_inflight: u32,
    /// How long a non-streaming request may take, body upload included (then 504), e.g.
    /// `60s`, `2m`.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// How often the store is compacted (one apiserver per interval keeps one interval of
    /// history); `0s` turns compaction off.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub etcd_compaction_interval: Duration,
    /// Write an audit log here (JSON lines, kube-apiserver's audit.k8s.io/v1 events); off
    /// when unset. Masters write /var/lib/kimg/audit/audit.log on their STATE disk.
    #[arg(long, value_name = "FILE")]
    pub audit_log_path: Option<std::path::PathBuf>,
    /// Which requests the audit log records and how much (kube-apiserver's audit Policy
    /// format: levels None, Metadata, Request); default: no probes, Leases or Events,
    /// metadata only for Secrets and ConfigMaps, request bodies for other writes.
    #[arg(long, value_name = "FILE", requires = "audit_log_path")]
    pub audit_policy_file: Option<std::path::PathBuf>,
    /// Rotate the audit log past this many MiB.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub audit_log_maxsize: u64,
    /// Rotated audit logs kept (audit.log.1 …).
    #[arg(long, default_value_t = 10)]
    pub audit_log_maxbackup: usize,
}

impl ServingArgs {
    /// The audit log these flags ask for, started; `None` when off.
    pub fn auditor(&self) -> anyhow::Result<Option<Arc<crate::apiserver::audit::Auditor>>> {
        use crate::apiserver::audit::{Auditor, LogFile, Policy, DEFAULT_POLICY};
        let Some(path) = &self.audit_log_path else {
            return Ok(None);
        };
        let policy = match &self.audit_policy_file {
            Some(f) => Policy::load(f).map_err(anyhow::Error::msg)?,
            None => Policy::parse(DEFAULT_POLICY).map_err(anyhow::Error::msg)?,
        };
        let file = LogFile {
            path: path.clone(),
            max_bytes: self.audit_log_maxsize.saturating_mul(1024 * 1024),
            backups: self.audit_log_maxbackup,
        };
        let a = Auditor::start(file, policy)
            .with_context(|| format!("cannot open the audit log {}", path.display()))?;
        Ok(Some(a))
    }

    /// The apiserver limits these flags set.
    pub fn limits(&self) -> crate::apiserver::Limits {
        crate::apiserver::Limits {
            max_requests_inflight: self.max_requests_inflight as usize,
            max_mutating_requests_inflight: self.max_mutating_requests_inflight as usize,
            request_timeout: self.request_timeout,
            ..Default::default()
        }
    }
}

/// Which components run in-process besides the apiserver, and their settings.
pub struct Components {
    pub scheduler: bool,
    pub controller_manager: bool,
    pub controllers: super::controller_manager::ControllerArgs,
    pub lease: super::scheduler::LeaseArgs,
}

impl Components {
    /// The apiserver alone.
    pub fn none() -> Components {
        use clap::Parser;
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            controllers: super::controller_manager::ControllerArgs,
            #[command(flatten)]
            lease: super::scheduler::LeaseArgs,
        }
        let d = Defaults::parse_from(["kimg"]);
        Components {
            scheduler: false,
            controller_manager: false,
            controllers: d.controllers,
            lease: d.lease,
        }
    }
}

/// A client for a component: its own certificate, or — while the apiserver forbids it
/// (no RBAC for the component yet) — the admin kubeconfig, with a warning.
async fn component_client(own: &Path, admin: &Path) -> anyhow::Result<kube::Client> {
    let client = crate::client::client_from_kubeconfig(own).await?;
    let probe: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    match probe.list(&kube::api::ListParams::default().limit(1)).await {
        Err(kube::Error::Api(e)) if e.code == 403 => {
            tracing::warn!(kubeconfig = %own.display(), "the apiserver forbids this component's identity; using the admin kubeconfig");
            crate::client::client_from_kubeconfig(admin).await
        }
        _ => Ok(client),
    }
}

/// Where a control plane finds its cluster, certificates and tokens, and where it writes
/// kubeconfigs: a cluster directory (`kimg up`) or an image's `/etc/kimg` (`kimg
/// apiserver` on a master).
pub(super) struct Layout {
    pub cluster: Cluster,
    pub pki_dir: std::path::PathBuf,
    pub tokens: Vec<pki::token::Token>,
    /// Where `admin.conf`, `scheduler.conf` and `controller-manager.conf` go.
    pub conf_dir: std::path::PathBuf,
}

impl Layout {
    /// The layout of a `kimg cluster new` directory.
    pub fn cluster_dir(dir: &Path) -> anyhow::Result<Layout> {
        Ok(Layout {
            cluster: Cluster::load(dir)?,
            pki_dir: pki::pki_dir(dir),
            tokens: pki::token::load(dir).context("cannot read the bootstrap tokens")?,
            conf_dir: dir.to_path_buf(),
        })
    }
}

/// Writes `conf_dir/<file>`: a kubeconfig for `server` with the client certificate
/// `<cert>`/`<key>` of the PKI.
fn write_conf(
    l: &Layout,
    server: &str,
    file: &str,
    user: &str,
    cert: &str,
    key: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let read = |name: &str| {
        let p = l.pki_dir.join(name);
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
    };
    let text = pki::kubeconfig::render(
        &l.cluster.name,
        server,
        &read("ca.crt")?,
        user,
        &read(cert)?,
        &read(key)?,
    );
    let path = l.conf_dir.join(file);
    let path = std::path::absolute(&path).unwrap_or(path);
    pki::write_atomic(&path, text.as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Writes the scheduler's and controller-manager's kubeconfigs into `conf_dir`.
pub(super) fn write_component_confs(l: &Layout, server: &str) -> anyhow::Result<()> {
    write_conf(
        l,
        server,
        "scheduler.conf",
        "system:kube-scheduler",
        "scheduler.crt",
        "scheduler.key",
    )?;
    write_conf(
        l,
        server,
        "controller-manager.conf",
        "system:kube-controller-manager",
        "controller-manager.crt",
        "controller-manager.key",
    )?;
    Ok(())
}

async fn start_components(
    l: &Layout,
    server: &str,
    admin: &Path,
    c: Components,
) -> anyhow::Result<()> {
    let cluster = &l.cluster;
    let pki_dir = &l.pki_dir;
    write_component_confs(l, server)?;
    if c.scheduler {
        let conf = l.conf_dir.join("scheduler.conf");
        let client = component_client(&conf, admin).await?;
        let lease = c.lease.config("kube-scheduler");
        tokio::spawn(async move {
            let opts = crate::scheduler::Options::default();
            if let Err(e) =
                crate::scheduler::run_with_election(client, opts, lease, std::future::pending())
                    .await
            {
                tracing::error!(error = %e, "the scheduler stopped");
            }
        });
    }
    if c.controller_manager {
        let conf = l.conf_dir.join("controller-manager.conf");
        let client = component_client(&conf, admin).await?;
        let lease = c.lease.config("kube-controller-manager");
        let mut opts = c.controllers.options();
        opts.cluster_cidr = opts.cluster_cidr.or(Some(cluster.pod_cidr));
        opts.signing = opts.signing.or(Some(crate::controllers::csr::SigningFiles {
            cert: pki_dir.join("ca.crt"),
            key: pki_dir.join("ca.key"),
        }));
        tokio::spawn(crate::controllers::run_with_election(
            client,
            opts,
            lease,
            std::future::pending(),
        ));
    }
    Ok(())
}

/// Serves the apiserver of `l` on `listen` over `store`, writes `conf_dir/admin.conf`
/// (and the components' kubeconfigs) for `server` (default: the listen address), prints
/// the admin kubeconfig's path, starts `components` in-process, and runs until SIGINT or
/// SIGTERM.
pub(super) async fn serve(
    l: Layout,
    listen: SocketAddr,
    server: Option<String>,
    store: &str,
    serving: &ServingArgs,
    components: Components,
) -> anyhow::Result<()> {
    let store = open_store(store, &l.pki_dir).await?;
    if !serving.etcd_compaction_interval.is_zero() {
        tokio::spawn(crate::apiserver::compactor::run(
            store.clone(),
            serving.etcd_compaction_interval,
        ));
    }
    let api =
        ApiServer::start_with_tokens(store, l.cluster.service_cidr, &l.pki_dir, l.tokens.clone())
            .await
            .context("cannot start the apiserver")?
            .with_limits(serving.limits());
    let api = match serving.auditor()? {
        Some(a) => api.with_audit(a),
        None => api,
    };
    let listener =
        crate::https::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let server = server.unwrap_or_else(|| format!("https://{addr}"));
    let path = write_conf(
        &l,
        &server,
        "admin.conf",
        "kubernetes-admin",
        "admin.crt",
        "admin.key",
    )?;
    tracing::info!(%addr, kubeconfig = %path.display(), "apiserver listening");
    let serving = tokio::spawn(api.serve(listener, shutdown_signal()?));
    start_components(&l, &server, &path, components).await?;
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
    serving: &ServingArgs,
    components: Components,
) -> anyhow::Result<()> {
    let rt = super::runtime(None)?;
    rt.block_on(async {
        let layout = Layout::cluster_dir(dir)?;
        serve(layout, listen, None, store, serving, components).await
    })
}
