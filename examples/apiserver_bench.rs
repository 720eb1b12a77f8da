//! Benchmarks of the apiserver over a local etcd (the Debian `etcd` binary), printing the
//! figures of issue 5: create/s of small ConfigMaps through the apiserver ÷ raw etcd
//! puts/s of the same bytes (same run, same concurrency), p50/p99 create latency, LIST
//! latency for 10,000 pods, 1,000 watchers during 1,000 updates (delivered %, p99 lag),
//! and the RSS of the apiserver process with 10,000 pods stored.
//!
//! The apiserver runs as its own process, `kimg up DIR --store etcd=URL --no-scheduler
//! --no-controller-manager` (the binary from `$KIMG`, else the release build next to this
//! example), so its RSS is its own.
//!
//! Run: `cargo build --release && cargo run --release --example apiserver_bench [-- --quick]`.

use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kimg::store::{EtcdStore, LocalEtcd, Store};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(creates)));
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..CONCURRENCY {
            let latencies = latencies.clone();
            s.spawn(move || {
                for i in (w..creates).step_by(CONCURRENCY) {
                    let one = Instant::now();
                    let mut req = agent
                        .post(&format!("{url}/api/v1/namespaces/default/configmaps"))
                        .set("Content-Type", "application/json");
                    if let Some(t) = token {
                        req = req.set("Authorization", &format!("Bearer {t}"));
                    }
                    req.send_string(&configmap(&format!("{prefix}-{i:05}"), i))
                        .expect("create");
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
