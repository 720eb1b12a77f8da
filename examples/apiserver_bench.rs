//! Benchmarks of the apiserver over a local etcd (the Debian `etcd` binary), printing the
//! figures of issue 5: create/s of small ConfigMaps through the apiserver ÷ raw etcd
//! puts/s of the same bytes (same run, same concurrency), p50/p99 create latency, LIST
//! latency for 10,000 pods, 1,000 watchers during 1,000 updates (delivered %, p99 lag),
//! and the RSS of the apiserver process with 10,000 pods stored. Issue 15's figures too:
//! creates of a custom resource whose CRD schema is as large as kube-prometheus'
//! `Prometheus` (~10,000 schema nodes) against ConfigMaps of the same size, and the
//! latency one mutating plus one validating admission webhook add to a create (the test
//! webhook server of `tests/common/webhook.rs`, over TLS on loopback), and what a GET
//! through the aggregation layer costs next to a GET the apiserver answers itself (the
//! aggregated server of `tests/common/aggregated.rs`, registered by an `APIService`).
//!
//! The apiserver runs as its own process, `kimg up DIR --store etcd=URL --no-scheduler
//! --no-controller-manager` (the binary from `$KIMG`, else the release build next to this
//! example), so its RSS is its own.
//!
//! Run: `cargo build --release && cargo run --release --example apiserver_bench [-- --quick]`
//! (`--skip-extensions` leaves out the custom resource, webhook and aggregation sections).

use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kimg::store::{EtcdStore, LocalEtcd, Store};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[allow(dead_code)] // tests/aggregation.rs reads more of what it records
#[path = "../tests/common/aggregated.rs"]
mod aggregated;
#[path = "../tests/common/webhook.rs"]
mod webhook;

const CONCURRENCY: usize = 8;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

/// An HTTPS agent trusting the cluster CA, as the admin (client certificate) or, with
/// `admin` false, with no certificate (the caller sends a bearer token).
fn agent_as(pki: &std::path::Path, admin: bool) -> ureq::Agent {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.join("ca.crt")).expect("ca") {
        roots.add(c.expect("cert")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let tls = if admin {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(pki.join("admin.crt"))
                .expect("admin.crt")
                .map(|c| c.expect("cert"))
                .collect();
        let key = PrivateKeyDer::from_pem_file(pki.join("admin.key")).expect("admin.key");
        builder
            .with_client_auth_cert(certs, key)
            .expect("client cert")
    } else {
        builder.with_no_client_auth()
    };
    ureq::AgentBuilder::new()
        .tls_config(Arc::new(tls))
        .timeout(Duration::from_secs(120))
        .build()
}

fn agent(pki: &std::path::Path) -> ureq::Agent {
    agent_as(pki, true)
}

/// `creates` ConfigMaps named `<prefix>-N` through `agent` (with `token` as bearer when
/// given), `CONCURRENCY` at a time; returns creates/s and the latencies.
fn create_all(
    agent: &ureq::Agent,
    url: &str,
    token: Option<&str>,
    prefix: &str,
    creates: usize,
) -> (f64, Vec<Duration>) {
    post_all(
        agent,
        &format!("{url}/api/v1/namespaces/default/configmaps"),
        token,
        creates,
        |i| configmap(&format!("{prefix}-{i:05}"), i),
    )
}

/// `creates` POSTs of `body(N)` to `collection`, `CONCURRENCY` at a time; returns
/// creates/s and the latencies.
fn post_all(
    agent: &ureq::Agent,
    collection: &str,
    token: Option<&str>,
    creates: usize,
    body: impl Fn(usize) -> String + Sync,
) -> (f64, Vec<Duration>) {
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(creates)));
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..CONCURRENCY {
            let latencies = latencies.clone();
            let body = &body;
            s.spawn(move || {
                for i in (w..creates).step_by(CONCURRENCY) {
                    let one = Instant::now();
                    let mut req = agent
                        .post(collection)
                        .set("Content-Type", "application/json");
                    if let Some(t) = token {
                        req = req.set("Authorization", &format!("Bearer {t}"));
                    }
                    req.send_string(&body(i)).expect("create");
                    latencies.lock().expect("lock").push(one.elapsed());
                }
            });
        }
    });
    let rate = creates as f64 / t.elapsed().as_secs_f64();
    let lat = latencies.lock().expect("lock").clone();
    (rate, lat)
}

fn configmap(name: &str, i: usize) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}","namespace":"default"}},"data":{{"i":"{i}"}}}}"#
    )
}

/// A CRD whose schema has about as many nodes as kube-prometheus' `Prometheus` (~10,000):
/// 100 sections of 100 typed, bounded fields.
fn big_crd() -> serde_json::Value {
    let mut sections = serde_json::Map::new();
    for s in 0..100 {
        let mut fields = serde_json::Map::new();
        for f in 0..100 {
            let field = match f % 4 {
                0 => {
                    serde_json::json!({"type": "string", "maxLength": 253, "pattern": "^[a-z0-9-]*$"})
                }
                1 => serde_json::json!({"type": "integer", "minimum": 0, "maximum": 65535}),
                2 => {
                    serde_json::json!({"type": "string", "enum": ["Always", "Never", "IfNotPresent"]})
                }
                _ => serde_json::json!({"type": "boolean", "default": false}),
            };
            fields.insert(format!("field{f}"), field);
        }
        sections.insert(
            format!("section{s}"),
            serde_json::json!({"type": "object", "properties": fields}),
        );
    }
    serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "monitors.bench.example.io"},
        "spec": {"group": "bench.example.io", "scope": "Namespaced",
            "names": {"plural": "monitors", "kind": "Monitor"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": sections}}}}}]}
    })
}

/// A `Monitor` filling ten sections (about 2 KiB), and a ConfigMap of the same size.
fn monitor_and_configmap(i: usize) -> (String, String) {
    let mut spec = serde_json::Map::new();
    for s in 0..10 {
        let mut section = serde_json::Map::new();
        for f in 0..8 {
            let v = match f % 4 {
                0 => serde_json::json!(format!("value-{i}-{f}")),
                1 => serde_json::json!(i % 65535),
                2 => serde_json::json!("Always"),
                _ => serde_json::json!(true),
            };
            section.insert(format!("field{f}"), v);
        }
        spec.insert(format!("section{s}"), serde_json::Value::Object(section));
    }
    let name = format!("m-{i:05}");
    let monitor = serde_json::json!({"apiVersion": "bench.example.io/v1", "kind": "Monitor",
        "metadata": {"name": name, "namespace": "default"}, "spec": spec})
    .to_string();
    let spec_text = serde_json::Value::Object(spec).to_string();
    let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"}, "data": {"spec": spec_text}})
    .to_string();
    (monitor, cm)
}

/// Issue 15's figures: custom resources against same-size ConfigMaps, and webhook latency.
fn extensions(agent: &ureq::Agent, url: &str, creates: usize, pid: u32) {
    println!(
        "apiserver rss before the extension sections: {:.0} MB",
        rss_mb(pid)
    );
    let crd = big_crd().to_string();
    agent
        .post(&format!(
            "{url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        ))
        .set("Content-Type", "application/json")
        .send_string(&crd)
        .expect("crd");
    let monitors = format!("{url}/apis/bench.example.io/v1/namespaces/default/monitors");
    for _ in 0..100 {
        if agent.get(&monitors).call().is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (sample_cr, sample_cm) = monitor_and_configmap(0);
    let (cr_rate, mut cr_lat) = post_all(agent, &monitors, None, creates, |i| {
        monitor_and_configmap(i).0
    });
    let (cm_rate, mut cm_lat) = post_all(
        agent,
        &format!("{url}/api/v1/namespaces/default/configmaps"),
        None,
        creates,
        |i| monitor_and_configmap(i).1,
    );
    println!(
        "custom resources: {creates} creates, CRD schema {} KiB, objects {} B (ConfigMaps {} B)",
        crd.len() / 1024,
        sample_cr.len(),
        sample_cm.len()
    );
    println!(
        "  Monitor creates/s     {cr_rate:9.0}   p50 {:?}  p99 {:?}",
        pct(&mut cr_lat, 0.5),
        pct(&mut cr_lat, 0.99)
    );
    println!(
        "  ConfigMap creates/s   {cm_rate:9.0}   p50 {:?}  p99 {:?}",
        pct(&mut cm_lat, 0.5),
        pct(&mut cm_lat, 0.99)
    );
    println!(
        "BENCH cr_creates_per_s={cr_rate:.0} cm_same_size_creates_per_s={cm_rate:.0} cr_p99_ms={:.1} cm_p99_ms={:.1}",
        pct(&mut cr_lat, 0.99).as_secs_f64() * 1e3,
        pct(&mut cm_lat, 0.99).as_secs_f64() * 1e3
    );
    println!("  apiserver rss after them: {:.0} MB", rss_mb(pid));

    // One mutating and one validating webhook on ConfigMaps labelled `bench: hooked`.
    let hook = webhook::Webhook::start();
    let config = |kind: &str, path: &str| {
        serde_json::json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind,
            "metadata": {"name": format!("bench-{}", path.trim_start_matches('/'))},
            "webhooks": [{"name": format!("{}.bench.example.io", path.trim_start_matches('/')),
                "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "clientConfig": {"url": hook.url(path), "caBundle": hook.ca_bundle},
                "objectSelector": {"matchLabels": {"bench": "hooked"}},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                           "resources": ["configmaps"]}]}]})
        .to_string()
    };
    for (plural, kind, path) in [
        (
            "mutatingwebhookconfigurations",
            "MutatingWebhookConfiguration",
            "/mutate",
        ),
        (
            "validatingwebhookconfigurations",
            "ValidatingWebhookConfiguration",
            "/validate",
        ),
    ] {
        agent
            .post(&format!(
                "{url}/apis/admissionregistration.k8s.io/v1/{plural}"
            ))
            .set("Content-Type", "application/json")
            .send_string(&config(kind, path))
            .expect("webhook configuration");
    }
    std::thread::sleep(Duration::from_millis(300));
    let labelled = |prefix: &'static str, label: &'static str| {
        move |i: usize| {
            format!(
                r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{prefix}-{i:05}","labels":{{"bench":"{label}"}}}},"data":{{"i":"{i}"}}}}"#
            )
        }
    };
    let collection = format!("{url}/api/v1/namespaces/default/configmaps");
    let (plain_rate, mut plain) = post_all(
        agent,
        &collection,
        None,
        creates,
        labelled("plain", "plain"),
    );
    let (hooked_rate, mut hooked) = post_all(
        agent,
        &collection,
        None,
        creates,
        labelled("hooked", "hooked"),
    );
    let reviews = hook.users.lock().map(|u| u.len()).unwrap_or(0);
    println!(
        "admission webhooks: {creates} creates each, one mutating + one validating webhook ({reviews} reviews answered)"
    );
    println!(
        "  without   {plain_rate:7.0}/s  p50 {:?}  p99 {:?}",
        pct(&mut plain, 0.5),
        pct(&mut plain, 0.99)
    );
    println!(
        "  with      {hooked_rate:7.0}/s  p50 {:?}  p99 {:?}",
        pct(&mut hooked, 0.5),
        pct(&mut hooked, 0.99)
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "BENCH webhook_overhead_p50_ms={:.2} webhook_overhead_p99_ms={:.2}",
        ms(pct(&mut hooked, 0.5)) - ms(pct(&mut plain, 0.5)),
        ms(pct(&mut hooked, 0.99)) - ms(pct(&mut plain, 0.99))
    );
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Ends the `kimg up` this bench started (by its PID) when the bench ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `gets` GETs of `path(N)`, `CONCURRENCY` at a time; returns GETs/s and the latencies.
fn get_all(
    agent: &ureq::Agent,
    gets: usize,
    path: impl Fn(usize) -> String + Sync,
) -> (f64, Vec<Duration>) {
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(gets)));
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..CONCURRENCY {
            let latencies = latencies.clone();
            let path = &path;
            s.spawn(move || {
                for i in (w..gets).step_by(CONCURRENCY) {
                    let one = Instant::now();
                    agent.get(&path(i)).call().expect("get");
                    latencies.lock().expect("lock").push(one.elapsed());
                }
            });
        }
    });
    let rate = gets as f64 / t.elapsed().as_secs_f64();
    let lat = latencies.lock().expect("lock").clone();
    (rate, lat)
}

/// GETs through an `APIService` to the test aggregated server, against GETs of a
/// ConfigMap the apiserver serves itself.
fn aggregation(agent: &ureq::Agent, url: &str, gets: usize) {
    let cm: serde_json::Value = agent
        .get(&format!(
            "{url}/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication"
        ))
        .call()
        .expect("the published ConfigMap")
        .into_string()
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .expect("json");
    let ca = cm["data"]["requestheader-client-ca-file"]
        .as_str()
        .expect("request-header CA");
    let server = aggregated::Aggregated::start(ca, vec!["front-proxy-client".into()]);
    let post = |path: &str, body: serde_json::Value| {
        agent
            .post(&format!("{url}{path}"))
            .set("Content-Type", "application/json")
            .send_string(&body.to_string())
            .expect("create");
    };
    post(
        "/api/v1/namespaces/default/services",
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "wardle", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "127.0.0.1"}}),
    );
    post(
        "/apis/apiregistration.k8s.io/v1/apiservices",
        serde_json::json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": "v1alpha1.wardle.example.io"},
            "spec": {"group": "wardle.example.io", "version": "v1alpha1",
                     "groupPriorityMinimum": 1000, "versionPriority": 15,
                     "caBundle": server.ca_bundle,
                     "service": {"namespace": "default", "name": "wardle", "port": server.addr.port()}}}),
    );
    let base = format!("{url}/apis/wardle.example.io/v1alpha1/namespaces/default/flunders");
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent.get(&format!("{base}/probe")).call().is_err() {
        assert!(
            Instant::now() < deadline,
            "the APIService never became reachable"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    post(
        "/api/v1/namespaces/default/configmaps",
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "local-get"}, "data": {"k": "v"}}),
    );
    let (local_rate, mut local) = get_all(agent, gets, |_| {
        format!("{url}/api/v1/namespaces/default/configmaps/local-get")
    });
    let (agg_rate, mut agg) = get_all(agent, gets, |i| format!("{base}/f{i}"));
    let served = server.seen().len();
    println!("aggregation: {gets} GETs each, {CONCURRENCY} concurrent clients ({served} answered by the aggregated server)");
    println!(
        "  local GET        {local_rate:7.0}/s  p50 {:?}  p99 {:?}",
        pct(&mut local, 0.5),
        pct(&mut local, 0.99)
    );
    println!(
        "  aggregated GET   {agg_rate:7.0}/s  p50 {:?}  p99 {:?}",
        pct(&mut agg, 0.5),
        pct(&mut agg, 0.99)
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "BENCH aggregated_get_p50_ms={:.2} aggregated_get_p99_ms={:.2} local_get_p50_ms={:.2} local_get_p99_ms={:.2}",
        ms(pct(&mut agg, 0.5)),
        ms(pct(&mut agg, 0.99)),
        ms(pct(&mut local, 0.5)),
        ms(pct(&mut local, 0.99))
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (creates, pods, watchers, updates) = if quick {
        (500, 1_000, 100, 100)
    } else {
        (2_000, 10_000, 1_000, 1_000)
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("bench");
    kimg::pki::create_cluster(&dir, &kimg::cluster::NewOptions::default(), false).expect("cluster");
    let pki = kimg::pki::pki_dir(&dir);
    let etcd = rt
        .block_on(LocalEtcd::start())
        .expect("etcd (etcd-server package)");
    let store: Arc<dyn Store> = Arc::new(
        rt.block_on(EtcdStore::connect(&etcd.config()))
            .expect("connect"),
    );

    // Raw etcd puts of the same bytes, same concurrency.
    let body = configmap("cm-00000", 0).into_bytes();
    let t = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..CONCURRENCY {
            let store = store.clone();
            let body = body.clone();
            tasks.push(tokio::spawn(async move {
                for i in (w..creates).step_by(CONCURRENCY) {
                    store
                        .create(&format!("/raw/{i}"), body.clone())
                        .await
                        .expect("put");
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
    });
    let raw_rate = creates as f64 / t.elapsed().as_secs_f64();

    let kimg = std::env::var("KIMG")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            let exe = std::env::current_exe().expect("exe");
            exe.parent()
                .and_then(|p| p.parent())
                .expect("target dir")
                .join("kimg")
        });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut child = std::process::Command::new(&kimg)
        .arg("up")
        .arg(&dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--store",
            &format!("etcd={}", etcd.config().endpoints.join(",")),
        ])
        .args(["--no-scheduler", "--no-controller-manager"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (build it: cargo build --release)", kimg.display()));
    let pid = child.id();
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("kimg up prints the kubeconfig path when it serves");
    let url = format!("https://127.0.0.1:{port}");
    let _guard = KillOnDrop(child);
    let agent = agent(&pki);

    // Creates through the apiserver: as the admin (system:masters: no RBAC walk), then as a
    // service account bound to `edit` (its token checked and RBAC evaluated from the
    // caches on every request).
    let (api_rate, mut lat) = create_all(&agent, &url, None, "cm", creates);
    agent
        .post(&format!("{url}/api/v1/namespaces/default/serviceaccounts"))
        .set("Content-Type", "application/json")
        .send_string(r#"{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"bench"}}"#)
        .expect("service account");
    agent
        .post(&format!("{url}/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings"))
        .set("Content-Type", "application/json")
        .send_string(r#"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{"name":"bench"},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"edit"},"subjects":[{"kind":"ServiceAccount","name":"bench","namespace":"default"}]}"#)
        .expect("role binding");
    let token: serde_json::Value = agent
        .post(&format!(
            "{url}/api/v1/namespaces/default/serviceaccounts/bench/token"
        ))
        .set("Content-Type", "application/json")
        .send_string(r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{}}"#)
        .expect("token")
        .into_string()
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .expect("json");
    let token = token["status"]["token"]
        .as_str()
        .expect("a token")
        .to_string();
    // The binding reaches the watch cache a moment later.
    std::thread::sleep(Duration::from_millis(500));
    let (sa_rate, mut sa_lat) =
        create_all(&agent_as(&pki, false), &url, Some(&token), "sa", creates);
    println!("creates: {creates} ConfigMaps, {CONCURRENCY} concurrent clients");
    println!("  raw etcd puts/s       {raw_rate:9.0}");
    println!("  apiserver creates/s   {api_rate:9.0}   (admin certificate)");
    println!("  ratio                 {:9.2}", api_rate / raw_rate);
    println!(
        "  create latency        p50 {:?}  p99 {:?}",
        pct(&mut lat, 0.50),
        pct(&mut lat, 0.99)
    );
    println!("  apiserver creates/s   {sa_rate:9.0}   (service-account token, RBAC edit)");
    println!("  ratio                 {:9.2}", sa_rate / raw_rate);
    println!(
        "  create latency        p50 {:?}  p99 {:?}",
        pct(&mut sa_lat, 0.50),
        pct(&mut sa_lat, 0.99)
    );
    println!(
        "BENCH api_create_ratio={:.2} api_create_ratio_token_rbac={:.2} raw_puts_per_s={raw_rate:.0}",
        api_rate / raw_rate,
        sa_rate / raw_rate
    );

    if !std::env::args().any(|a| a == "--skip-extensions") {
        extensions(&agent, &url, creates, pid);
        aggregation(&agent, &url, creates);
        println!(
            "apiserver rss after the extension sections: {:.0} MB",
            rss_mb(pid)
        );
    }

    // 10,000 pods, written to the store directly, listed through the apiserver.
    rt.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..CONCURRENCY {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in (w..pods).step_by(CONCURRENCY) {
                    let pod = format!(
                        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"p{i}","namespace":"bench","uid":"u{i}","labels":{{"app":"bench"}}}},"spec":{{"nodeName":"n{}","containers":[{{"name":"c","image":"registry.example/app:1","resources":{{"requests":{{"cpu":"100m","memory":"64Mi"}}}}}}]}},"status":{{"phase":"Running","podIP":"10.244.{}.{}"}}}}"#,
                        i % 50,
                        i / 250,
                        i % 250
                    );
                    store
                        .create(&format!("/registry/pods/bench/p{i}"), pod.into_bytes())
                        .await
                        .expect("pod");
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
    });
    let mut lists = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let text = agent
            .get(&format!("{url}/api/v1/namespaces/bench/pods"))
            .call()
            .expect("list")
            .into_string()
            .expect("body");
        lists.push(t.elapsed());
        assert!(text.contains(&format!("\"p{}\"", pods - 1)));
    }
    println!("list: {pods} pods, median of 5  {:?}", pct(&mut lists, 0.5));
    println!(
        "apiserver rss with {pods} pods: {:.0} MB (kimg up process, after the lists)",
        rss_mb(pid)
    );

    // Watchers during updates.
    let rv: String = {
        let v: serde_json::Value = agent
            .get(&format!(
                "{url}/api/v1/namespaces/default/configmaps?limit=1"
            ))
            .call()
            .expect("get")
            .into_string()
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .expect("json");
        v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("0")
            .to_string()
    };
    let sent: Arc<Vec<Mutex<Option<Instant>>>> =
        Arc::new((0..updates).map(|_| Mutex::new(None)).collect());
    let received = Arc::new(AtomicUsize::new(0));
    let lags = Arc::new(Mutex::new(Vec::with_capacity(watchers * updates)));
    let ready = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|s| {
        for _ in 0..watchers {
            let (agent, url, rv) = (agent.clone(), url.clone(), rv.clone());
            let (sent, received, lags, ready) =
                (sent.clone(), received.clone(), lags.clone(), ready.clone());
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn_scoped(s, move || {
                    let resp = agent
                        .get(&format!(
                            "{url}/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}&fieldSelector=metadata.name%3Dcm-00000&timeoutSeconds=120"
                        ))
                        .call()
                        .expect("watch");
                    ready.fetch_add(1, Ordering::SeqCst);
                    let mut mine = Vec::new();
                    for line in BufReader::new(resp.into_reader()).lines() {
                        let Ok(line) = line else { break };
                        let Some(at) = line.find("\"i\":\"") else { continue };
                        let digits: String =
                            line[at + 5..].chars().take_while(char::is_ascii_digit).collect();
                        let Ok(i) = digits.parse::<usize>() else { continue };
                        if i == 0 || i > updates {
                            continue;
                        }
                        if let Some(t) = *sent[i - 1].lock().expect("lock") {
                            mine.push(t.elapsed());
                        }
                        received.fetch_add(1, Ordering::Relaxed);
                        if i == updates {
                            break;
                        }
                    }
                    lags.lock().expect("lock").extend(mine);
                })
                .expect("spawn watcher");
        }
        while ready.load(Ordering::SeqCst) < watchers {
            std::thread::sleep(Duration::from_millis(20));
        }
        for i in 1..=updates {
            *sent[i - 1].lock().expect("lock") = Some(Instant::now());
            agent
                .request(
                    "PATCH",
                    &format!("{url}/api/v1/namespaces/default/configmaps/cm-00000"),
                )
                .set("Content-Type", "application/merge-patch+json")
                .send_string(&format!(r#"{{"data":{{"i":"{i}"}}}}"#))
                .expect("update");
        }
    });
    let total = received.load(Ordering::Relaxed);
    let mut lags = lags.lock().expect("lock").clone();
    println!(
        "watch: {watchers} watchers, {updates} updates: delivered {:.2}%  p50 lag {:?}  p99 lag {:?}",
        100.0 * total as f64 / (watchers * updates) as f64,
        pct(&mut lags, 0.5),
        pct(&mut lags, 0.99)
    );
    drop(etcd);
}
