//! Hostile clients against one `kimg up` apiserver process (issue 13): one-request kills
//! (deeply nested protobuf, a YAML alias bomb, a self-doubling JSON patch, an oversized
//! body), 1,100 half-open and 1,100 idle TLS connections, a slowloris client, and a flood
//! past the in-flight limit. After each, the same process must still answer the real
//! `kubectl get ns`; at the end its peak RSS is printed and bounded. Needs `kubectl`.

#[macro_use]
mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

up_handle!(Up);

impl Up {
    /// `kimg up` with one mutating slot and a 5 s request deadline, so the limits show
    /// with a handful of requests.
    fn start() -> Up {
        let (tmp, dir) = common::new_cluster();
        Up(common::Up::start(
            tmp,
            dir,
            &[
                "--no-scheduler",
                "--no-controller-manager",
                "--max-mutating-requests-inflight",
                "1",
                "--request-timeout",
                "5s",
            ],
        ))
    }

    fn kubectl(&self, args: &[&str]) -> std::process::Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--request-timeout=20s")
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// `kubectl get ns` answers, and how long it took.
    fn get_ns(&self, after: &str) -> Duration {
        let t = Instant::now();
        let out = self.kubectl(&["get", "ns", "-o", "name"]);
        let took = t.elapsed();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("kube-system"),
            "kubectl get ns after {after}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!("after {after}: kubectl get ns took {} ms", took.as_millis());
        took
    }

    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the apiserver process is alive");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn tls(&self, cert: bool) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for c in
            CertificateDer::pem_file_iter(self.dir.join("secrets/pki").join("ca.crt")).expect("ca")
        {
            roots.add(c.expect("ca cert")).expect("root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let mut config = if cert {
            let chain =
                CertificateDer::pem_file_iter(self.dir.join("secrets/pki").join("admin.crt"))
                    .expect("admin.crt")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("admin cert");
            let key = PrivateKeyDer::from_pem_file(self.dir.join("secrets/pki").join("admin.key"))
                .expect("key");
            b.with_client_auth_cert(chain, key).expect("client auth")
        } else {
            b.with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsConnector::from(Arc::new(config))
    }
}

async fn connect(tls: &TlsConnector, addr: std::net::SocketAddr) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::IpAddress(addr.ip().into());
    tls.connect(name, tcp).await.expect("tls handshake")
}

/// One HTTP/1.1 request (`Connection: close`); the status code and the whole response.
async fn request(
    tls: &TlsConnector,
    addr: std::net::SocketAddr,
    head: &str,
    body: &[u8],
) -> (u16, String) {
    let mut s = connect(tls, addr).await;
    let msg = format!(
        "{head}\r\nHost: kimg\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(msg.as_bytes()).await.expect("write head");
    // A refused body may be answered before it is all sent.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

fn wrap(num: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(num << 3 | 2) as u8];
    let mut len = payload.len() as u64;
    loop {
        let b = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(payload);
    out
}

/// A SelfSubjectAccessReview whose body is 40,000 nested unknown messages.
fn nested_protobuf() -> Vec<u8> {
    let mut nested = Vec::new();
    for _ in 0..40_000 {
        nested = wrap(15, &nested);
    }
    let raw = [wrap(1, &wrap(1, b"r")), nested].concat();
    let type_meta = [
        wrap(1, b"authorization.k8s.io/v1"),
        wrap(2, b"SelfSubjectAccessReview"),
    ]
    .concat();
    [b"k8s\0".to_vec(), wrap(1, &type_meta), wrap(2, &raw)].concat()
}

/// Nine levels of ten aliases each: 10^9 scalars once expanded, 2.5 KB on the wire.
fn yaml_bomb() -> Vec<u8> {
    let mut y = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bomb\n");
    y.push_str("x0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for i in 1..9 {
        let p = i - 1;
        let refs = vec![format!("*a{p}"); 10].join(",");
        y.push_str(&format!("x{i}: &a{i} [{refs}]\n"));
    }
    y.into_bytes()
}

/// 40 copies of `/data` into itself: the object would double 40 times.
fn doubling_patch() -> Vec<u8> {
    let ops: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"op":"copy","from":"/data","path":"/data/k{i}"}}"#))
        .collect();
    format!("[{}]", ops.join(",")).into_bytes()
}

fn sa_token(up: &Up) -> String {
    let out = up.kubectl(&["create", "serviceaccount", "hostile"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = up.kubectl(&["create", "token", "hostile"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("token")
        .trim()
        .to_string()
}

#[test]
fn hostile_clients_do_not_take_the_apiserver_down() {
    kimg::https::raise_fd_limit().expect("raise the test's open-file limit");
    let mut up = Up::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let admin = up.tls(true);
    let anon = up.tls(false);
    let addr = up.addr;
    let token = sa_token(&up);
    let as_sa = |verb: &str, path: &str, ctype: &str| {
        format!("{verb} {path} HTTP/1.1\r\nAuthorization: Bearer {token}\r\nContent-Type: {ctype}")
    };
    up.get_ns("start");

    // A slowloris client: starts a request head and trickles it, a byte every 2 s.
    let slow_tls = anon.clone();
    let slow = rt.spawn(async move {
        let mut s = connect(&slow_tls, addr).await;
        let start = Instant::now();
        let _ = s.write_all(b"GET /api/v1/namespaces HTTP/1.1\r\n").await;
        let mut buf = [0u8; 1024];
        loop {
            if s.write_all(b"X").await.is_err() {
                return start.elapsed();
            }
            let _ = s.flush().await;
            match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
                // The 408 hyper sends when it gives up, then EOF.
                Ok(Ok(_)) => continue,
                Err(_) if start.elapsed() > Duration::from_secs(120) => return start.elapsed(),
                Err(_) => continue,
            }
        }
    });

    // One-request kills: each is refused with a 4xx and the process lives on.
    let (code, text) = rt.block_on(request(
        &anon,
        addr,
        &as_sa(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            "application/vnd.kubernetes.protobuf",
        ),
        &nested_protobuf(),
    ));
    assert!((400..500).contains(&code), "nested protobuf: {text}");
    assert!(up.alive(), "the apiserver died on a nested protobuf body");
    up.get_ns("40,000 nested protobuf fields");

    let (code, text) = rt.block_on(request(
        &admin,
        addr,
        "POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nContent-Type: application/yaml",
        &yaml_bomb(),
    ));
    assert!((400..500).contains(&code), "yaml alias bomb: {text}");
    assert!(up.alive(), "the apiserver died on a YAML alias bomb");
    up.get_ns("a YAML alias bomb");

    let out = up.kubectl(&[
        "create",
        "configmap",
        "grow",
        "--from-literal",
        &format!("a={}", "x".repeat(1024)),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, text) = rt.block_on(request(
        &admin,
        addr,
        "PATCH /api/v1/namespaces/default/configmaps/grow HTTP/1.1\r\nContent-Type: application/json-patch+json",
        &doubling_patch(),
    ));
    assert!((400..500).contains(&code), "doubling patch: {text}");
    assert!(up.alive(), "the apiserver died on a doubling JSON patch");
    up.get_ns("a self-doubling JSON patch");
    let out = up.kubectl(&["get", "configmap", "grow", "-o", "jsonpath={.data}"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("k0"),
        "a refused patch changed nothing"
    );

    let big = vec![b'x'; 4 * 1024 * 1024];
    let (code, text) = rt.block_on(request(
        &admin,
        addr,
        "POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nContent-Type: application/json",
        &big,
    ));
    assert_eq!(code, 413, "oversized body: {text}");
    up.get_ns("a 4 MiB body");

    // Bodies under the 3 MiB limit whose object etcd could not take (1.5 MiB per request).
    let cm = |name: &str, size: usize| {
        format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}},"data":{{"a":"{}"}}}}"#,
            "x".repeat(size)
        )
        .into_bytes()
    };
    let (code, text) = rt.block_on(request(
        &admin,
        addr,
        "POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nContent-Type: application/json",
        &cm("huge", 2 * 1024 * 1024),
    ));
    assert_eq!(code, 413, "a 2 MiB object: {text}");
    assert!(text.contains("too large to store"), "{text}");
    let (code, text) = rt.block_on(request(
        &admin,
        addr,
        "PATCH /api/v1/namespaces/default/configmaps/grow HTTP/1.1\r\nContent-Type: application/merge-patch+json",
        format!(r#"{{"data":{{"b":"{}"}}}}"#, "y".repeat(1600 * 1024)).as_bytes(),
    ));
    assert_eq!(
        code, 413,
        "a patch that grows the object past the limit: {text}"
    );
    let (code, _) = rt.block_on(request(
        &admin,
        addr,
        "POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nContent-Type: application/json",
        &cm("just-fits", 1024 * 1024),
    ));
    assert_eq!(code, 201, "a 1 MiB object is stored");

    // A selector is checked against every object of a list: its length is bounded.
    let long = format!("a in ({})", vec!["v"; 5000].join(","));
    let (code, text) = rt.block_on(request(
        &admin,
        addr,
        &format!(
            "GET /api/v1/pods?labelSelector={} HTTP/1.1",
            long.replace(' ', "%20")
        ),
        b"",
    ));
    assert_eq!(code, 400, "a 10 KB selector: {text}");
    assert!(text.contains("selector is too long"), "{text}");

    // 1,100 connections that never start TLS, 1,100 that finished it and say nothing.
    let held = rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..1100 {
            held.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.expect("connect");
                let mut b = [0u8; 16];
                let t = Instant::now();
                let _ = tokio::time::timeout(Duration::from_secs(90), s.read(&mut b)).await;
                t.elapsed()
            }));
        }
        let mut idle = Vec::new();
        for _ in 0..1100 {
            idle.push(connect(&anon, addr).await);
        }
        (held, idle)
    });
    let with_idle = up.get_ns("2,200 idle and half-open connections");
    println!("BENCH get_ns_with_2200_idle_ms={}", with_idle.as_millis());

    // The in-flight limit: one mutating slot, held by an upload that never finishes.
    let holder = {
        let anon = anon.clone();
        let head = as_sa(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
        );
        rt.spawn(async move {
            let mut s = connect(&anon, addr).await;
            let msg = format!("{head}\r\nHost: kimg\r\nContent-Length: 1000\r\n\r\n{{\"a");
            s.write_all(msg.as_bytes()).await.expect("write");
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let (code, text) = rt.block_on(request(
        &anon,
        addr,
        &as_sa(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
        ),
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"second"}}"#,
    ));
    assert_eq!(
        code, 429,
        "a second mutating request past the limit: {text}"
    );
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "429 says when to retry: {text}"
    );
    // system:masters is not counted.
    let out = up.kubectl(&["create", "configmap", "by-admin"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The held upload meets the request deadline.
    let held_text = rt.block_on(holder).expect("holder");
    assert!(
        held_text.starts_with("HTTP/1.1 504"),
        "an upload that never ends gets 504: {held_text}"
    );

    // Half-open connections are dropped after the handshake deadline, idle ones after the
    // header deadline, and the slowloris after the header deadline too.
    let (held, idle) = held;
    let dropped = rt.block_on(async {
        let mut n = 0;
        for h in held {
            if h.await.expect("join") < Duration::from_secs(90) {
                n += 1;
            }
        }
        n
    });
    assert_eq!(
        dropped, 1100,
        "every half-open connection is closed by the server"
    );
    let closed_idle = rt.block_on(async {
        let mut n = 0;
        for mut s in idle {
            let mut b = [0u8; 64];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_secs(60), s.read(&mut b)).await
            {
                n += 1;
            }
        }
        n
    });
    assert_eq!(
        closed_idle, 1100,
        "every idle connection is closed by the server"
    );
    let slow_for = rt.block_on(slow).expect("slow client");
    assert!(
        slow_for < Duration::from_secs(120),
        "the slowloris client was cut off (after {slow_for:?})"
    );
    println!("slowloris client cut off after {} s", slow_for.as_secs());

    up.get_ns("the end");
    assert!(up.alive());
    let peak = up.peak_rss_kib();
    println!("BENCH apiserver_peak_rss_mb={}", peak / 1024);
    assert!(
        peak < 1024 * 1024,
        "the apiserver's peak RSS stayed under 1 GiB: {peak} KiB"
    );
}
