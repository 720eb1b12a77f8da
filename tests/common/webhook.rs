//! A small admission webhook server for tests: HTTPS on loopback with a certificate of its
//! own, answering `AdmissionReview` v1.
//!
//! - `/mutate` allows and patches in the label `webhook.example.io/mutated: "true"`, with a
//!   warning;
//! - `/validate` refuses objects whose name starts with `forbidden-` (403, with a message),
//!   the old object's name for a DELETE;
//! - `/slow` answers after five seconds;
//! - hostile answers: `/wrong-uid` (another request's uid), `/huge` (4 MiB of JSON),
//!   `/garbage` (not JSON), `/bad-patch` (a patch that does not decode);
//! - every request's `userInfo.username` is recorded.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

pub struct Webhook {
    pub addr: SocketAddr,
    /// The server's certificate, base64 of its PEM (a `caBundle`).
    pub ca_bundle: String,
    pub users: Arc<Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn answer(path: &str, review: &Value) -> Value {
    let req = &review["request"];
    let uid = req["uid"].clone();
    // A DELETE carries the object in `oldObject` only.
    let name = req["object"]["metadata"]["name"]
        .as_str()
        .or(req["oldObject"]["metadata"]["name"].as_str())
        .unwrap_or_default();
    let response = match path {
        "/mutate" => {
            let has_labels = req["object"]["metadata"]["labels"].is_object();
            let ops = if has_labels {
                json!([{"op": "add", "path": "/metadata/labels/webhook.example.io~1mutated", "value": "true"}])
            } else {
                json!([{"op": "add", "path": "/metadata/labels", "value": {"webhook.example.io/mutated": "true"}}])
            };
            json!({"uid": uid, "allowed": true, "patchType": "JSONPatch",
                   "patch": base64::engine::general_purpose::STANDARD.encode(ops.to_string()),
                   "warnings": ["mutated by the test webhook"]})
        }
        "/wrong-uid" => json!({"uid": "someone-else", "allowed": true}),
        "/bad-patch" => {
            json!({"uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": "%%%"})
        }
        _ if name.starts_with("forbidden-") => json!({"uid": uid, "allowed": false,
            "status": {"code": 403, "message": "names starting with forbidden- are refused"}}),
        _ => json!({"uid": uid, "allowed": true}),
    };
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

impl Webhook {
    pub fn start() -> Webhook {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        let cert = params.self_signed(&key).expect("cert");
        let ca_bundle = base64::engine::general_purpose::STANDARD.encode(cert.pem());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("tls");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let users: Arc<Mutex<Vec<String>>> = Default::default();
        let seen = users.clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                loop {
                    let (tcp, _) = tokio::select! {
                        c = listener.accept() => match c { Ok(c) => c, Err(_) => continue },
                        _ = &mut stopped => return,
                    };
                    let acceptor = acceptor.clone();
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service =
                            service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                                let seen = seen.clone();
                                async move {
                                    let path = req.uri().path().to_string();
                                    let body = req
                                        .into_body()
                                        .collect()
                                        .await
                                        .map(|b| b.to_bytes())
                                        .unwrap_or_default();
                                    let review: Value =
                                        serde_json::from_slice(&body).unwrap_or_default();
                                    if let Some(u) =
                                        review["request"]["userInfo"]["username"].as_str()
                                    {
                                        seen.lock().expect("users").push(u.to_string());
                                    }
                                    if path == "/slow" {
                                        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                                    }
                                    let out = match path.as_str() {
                                        "/huge" => {
                                            format!("{{\"pad\":\"{}\"}}", "x".repeat(4 << 20))
                                        }
                                        "/garbage" => "<html>not json</html>".to_string(),
                                        _ => answer(&path, &review).to_string(),
                                    };
                                    Ok::<_, std::convert::Infallible>(
                                        hyper::Response::builder()
                                            .header("content-type", "application/json")
                                            .body(Full::new(Bytes::from(out)))
                                            .expect("response"),
                                    )
                                }
                            });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
        });
        Webhook {
            addr,
            ca_bundle,
            users,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `https://ADDR/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// Stops serving: later calls are refused connections.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop();
    }
}
