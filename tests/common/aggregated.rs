//! A small aggregated API server for tests: the group `wardle.example.io/v1alpha1` with
//! one namespaced resource, `flunders`, served over HTTPS on loopback.
//!
//! Like a real aggregated server it authenticates the apiserver by the front-proxy
//! client certificate: the TLS handshake requires a certificate signed by the
//! request-header CA it was given (read from the `extension-apiserver-authentication`
//! ConfigMap), whose common name must be an allowed name; only then does it believe the
//! `X-Remote-User` / `X-Remote-Group` headers. Its serving certificate is for
//! `wardle.default.svc` (a Service `wardle` in `default`).
//!
//! - `GET /apis/wardle.example.io/v1alpha1`: the `APIResourceList`;
//! - `GET …/namespaces/<ns>/flunders`: a list with one Flunder, `echo`, whose `spec`
//!   holds the identity the request carried;
//! - `GET …/namespaces/<ns>/flunders/<name>`: one such Flunder;
//! - `GET …/namespaces/<ns>/flunders?watch=true`: an `ADDED` event, then the stream
//!   stays open;
//! - anything else: 404.
//!
//! Every request is recorded (path, user, groups, whether it carried `Authorization`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};

pub const GROUP: &str = "wardle.example.io";
pub const VERSION: &str = "v1alpha1";

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub user: String,
    pub groups: Vec<String>,
    pub authorization: bool,
    /// The front proxy's certificate common name.
    pub client: String,
}

pub struct Aggregated {
    pub addr: SocketAddr,
    /// The serving certificate, base64 of its PEM (the `APIService`'s `caBundle`).
    pub ca_bundle: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn flunder(ns: &str, name: &str, seen: &Seen) -> Value {
    json!({"apiVersion": format!("{GROUP}/{VERSION}"), "kind": "Flunder",
           "metadata": {"name": name, "namespace": ns, "creationTimestamp": "2026-01-01T00:00:00Z"},
           "spec": {"user": seen.user, "groups": seen.groups}})
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn answer(code: u16, v: &Value) -> hyper::Response<Body> {
    hyper::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(v.to_string()))
                .map_err(|n| match n {})
                .boxed(),
        )
        .expect("response")
}

fn route(path: &str, query: &str, seen: &Seen) -> hyper::Response<Body> {
    let base = format!("/apis/{GROUP}/{VERSION}");
    let rest: Vec<&str> = path
        .strip_prefix(&base)
        .map(|r| r.split('/').filter(|s| !s.is_empty()).collect())
        .unwrap_or_else(|| vec!["-"]);
    match rest.as_slice() {
        [] => answer(
            200,
            &json!({"kind": "APIResourceList", "apiVersion": "v1",
                    "groupVersion": format!("{GROUP}/{VERSION}"),
                    "resources": [{"name": "flunders", "singularName": "flunder", "namespaced": true,
                                   "kind": "Flunder", "verbs": ["get", "list", "watch"],
                                   "shortNames": ["fl"]}]}),
        ),
        ["namespaces", ns, "flunders"] if query.contains("watch=true") => {
            let event = json!({"type": "ADDED", "object": flunder(ns, "echo", seen)});
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from(format!("{event}\n")))))
                    .await;
                // Held open until the client goes away.
                tx.closed().await;
            });
            let stream =
                futures::stream::unfold(
                    rx,
                    |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
                );
            hyper::Response::builder()
                .header("content-type", "application/json")
                .body(StreamBody::new(stream).boxed())
                .expect("response")
        }
        ["namespaces", ns, "flunders"] => answer(
            200,
            &json!({"apiVersion": format!("{GROUP}/{VERSION}"), "kind": "FlunderList",
                    "metadata": {"resourceVersion": "1"}, "items": [flunder(ns, "echo", seen)]}),
        ),
        ["namespaces", ns, "flunders", name] => answer(200, &flunder(ns, name, seen)),
        _ => answer(
            404,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "NotFound", "code": 404, "message": "not found"}),
        ),
    }
}

impl Aggregated {
    /// Serves on a free loopback port, trusting front-proxy certificates signed by
    /// `requestheader_ca` (PEM) whose common name is in `allowed_names`.
    pub fn start(requestheader_ca: &str, allowed_names: Vec<String>) -> Aggregated {
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(vec!["wardle.default.svc".to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        let ca_bundle = base64::engine::general_purpose::STANDARD.encode(cert.pem());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(requestheader_ca.as_bytes()) {
            roots.add(c.expect("request-header CA")).expect("root");
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .expect("verifier");
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("tls");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Default::default();
        let log = seen.clone();
        let allowed = Arc::new(allowed_names);
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    let (tcp, _) = tokio::select! {
                        c = listener.accept() => match c { Ok(c) => c, Err(_) => continue },
                        _ = &mut stopped => return,
                    };
                    let (acceptor, log, allowed) = (acceptor.clone(), log.clone(), allowed.clone());
                    conns.spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let client = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| {
                                let (_, x) = x509_parser::parse_x509_certificate(c).ok()?;
                                let cn = x.subject().iter_common_name().next()?.as_str().ok()?;
                                Some(cn.to_string())
                            })
                            .unwrap_or_default();
                        let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let header = |n: &str| {
                                req.headers()
                                    .get_all(n)
                                    .iter()
                                    .filter_map(|v| v.to_str().ok().map(str::to_string))
                                    .collect::<Vec<_>>()
                            };
                            let trusted = allowed.contains(&client);
                            let s = Seen {
                                path: req.uri().path().to_string(),
                                user: if trusted { header("x-remote-user").join(",") } else { String::new() },
                                groups: if trusted { header("x-remote-group") } else { Vec::new() },
                                authorization: req.headers().contains_key("authorization"),
                                client: client.clone(),
                            };
                            log.lock().expect("seen").push(s.clone());
                            let query = req.uri().query().unwrap_or_default().to_string();
                            let resp = if trusted {
                                route(&s.path, &query, &s)
                            } else {
                                answer(401, &json!({"kind": "Status", "code": 401, "reason": "Unauthorized"}))
                            };
                            async move { Ok::<_, std::convert::Infallible>(resp) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
        });
        Aggregated {
            addr,
            ca_bundle,
            seen,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// What the server has seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    /// Stops serving: later connections are refused (open streams are cut).
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Aggregated {
    fn drop(&mut self) {
        self.stop();
    }
}
