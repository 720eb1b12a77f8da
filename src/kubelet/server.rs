//! The kubelet API on :10250: container logs and exec, for the apiserver's proxy.
//!
//! What: HTTPS (HTTP/1.1) with a serving certificate signed by the cluster CA through a
//! `kubernetes.io/kubelet-serving` CSR (SANs: the node's name and IP), which the apiserver
//! verifies (kube-apiserver's `--kubelet-certificate-authority`). Until it is signed the
//! kubelet serves a self-signed stand-in, which the apiserver refuses; [`ServingCert`] swaps
//! certificates without a restart (rotation at 70 % of the lifetime). Callers
//! must present a client certificate signed by the cluster CA naming a member of
//! `system:masters` or the `kube-apiserver-kubelet-client` user.
//!
//! - `GET /containerLogs/<ns>/<pod>/<container>?follow=&tailLines=` answers the log file;
//!   with `follow=true` it keeps streaming what is appended until the pod is gone or the
//!   caller hangs up.
//! - `GET /exec/<ns>/<pod>/<container>?command=…&stdout=&stderr=` upgrades to a WebSocket
//!   with subprotocol `v5.channel.k8s.io` (or `v4.channel.k8s.io`); each binary message
//!   starts with its channel byte: 1 stdout, 2 stderr, 3 the final `metav1.Status` (exit
//!   codes as reason `NonZeroExitCode` with an `ExitCode` cause), then a WebSocket close
//!   with code 1000 (client-go reads that as the end of every stream; a close without a
//!   code is an error to it, and it ignores close signals from the server). Output
//!   is forwarded as the command writes it; with `stdin=true`, channel-0 messages feed the
//!   command's stdin and v5's close signal for channel 0 (255 0) is its EOF. With
//!   `tty=true` (`kubectl exec -it`) the command runs on a terminal (`TERM=xterm` unless
//!   its env sets one): its one output stream comes on channel 1, and channel-4 messages
//!   (`{"Width":…,"Height":…}`) resize the terminal.
//!
//! Limits: logs honour only `follow` and `tailLines` (`previous`, `sinceSeconds`,
//! `timestamps`, `limitBytes` are ignored); v4 clients cannot end stdin before the
//! command ends; no attach, port-forward, stats or metrics endpoints.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;

use super::sync::PodSync;
use super::{ExecIo, ExecStream};
use crate::https::User;

type Body = BoxBody<Bytes, std::io::Error>;
type Response = hyper::Response<Body>;

/// The WebSocket subprotocols of exec, preferred first.
pub const EXEC_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// Why the kubelet API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot make the serving certificate")]
    ServingCert(#[source] rcgen::Error),
    #[error("the serving certificate or key is unusable: {0}")]
    ServingPem(String),
    #[error("the cluster CA certificate is unusable: {0}")]
    ClientCa(String),
    #[error("cannot build the TLS configuration")]
    Tls(#[source] rustls::Error),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The serving certificate, replaceable while serving: a self-signed stand-in until the
/// cluster CA has signed one (through a `kubelet-serving` CSR), then that one, renewed
/// before it expires.
pub struct ServingCert(std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>);

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServingCert")
    }
}

impl ServingCert {
    /// A self-signed certificate for `node` at `ip` (the apiserver does not accept it; it
    /// serves until the signed one arrives).
    pub fn self_signed(node: &str, ip: &str) -> Result<Arc<ServingCert>, ServeError> {
        let key = rcgen::KeyPair::generate().map_err(ServeError::ServingCert)?;
        let mut params = rcgen::CertificateParams::new(vec![node.to_string(), ip.to_string()])
            .map_err(ServeError::ServingCert)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{node}@kubelet"));
        let cert = params.self_signed(&key).map_err(ServeError::ServingCert)?;
        let certified = certified_key(&cert.pem(), &key.serialize_pem())?;
        Ok(Arc::new(ServingCert(std::sync::RwLock::new(certified))))
    }

    /// Serves `cert_pem` (with `key_pem`) to every new connection from now on.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), ServeError> {
        let certified = certified_key(cert_pem, key_pem)?;
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = certified;
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for ServingCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

fn certified_key(
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::sign::CertifiedKey>, ServeError> {
    let bad = |e: String| ServeError::ServingPem(e);
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let key =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| bad(e.to_string()))?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(certs, key)))
}

/// The TLS configuration: `serving` as the certificate, and client certificates required,
/// verified against `ca_pem`.
pub fn tls_config(
    ca_pem: &str,
    serving: Arc<ServingCert>,
) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let c = c.map_err(|e| ServeError::ClientCa(e.to_string()))?;
        roots
            .add(c)
            .map_err(|e| ServeError::ClientCa(e.to_string()))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| ServeError::ClientCa(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ServeError::Tls)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Whether `user` may use the kubelet API.
pub fn allowed(user: &User) -> bool {
    user.is_master() || user.name == "kube-apiserver-kubelet-client"
}

fn full(code: StatusCode, text: impl Into<Bytes>) -> Response {
    let mut r = hyper::Response::new(Full::new(text.into()).map_err(|n| match n {}).boxed());
    *r.status_mut() = code;
    r
}

/// Percent-decodes a query component (`+` is a space).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every query parameter with all of its values, in order.
pub fn query(q: Option<&str>) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for pair in q.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        m.entry(decode(k)).or_default().push(decode(v));
    }
    m
}

fn flag(q: &HashMap<String, Vec<String>>, name: &str) -> bool {
    q.get(name)
        .and_then(|v| v.first())
        .is_some_and(|v| matches!(v.as_str(), "1" | "true"))
}

/// The last `n` lines of `text`.
fn tail(text: &[u8], n: usize) -> &[u8] {
    let mut count = 0;
    let end = if text.ends_with(b"\n") {
        text.len() - 1
    } else {
        text.len()
    };
    for i in (0..end).rev() {
        if text[i] == b'\n' {
            count += 1;
            if count == n {
                return &text[i + 1..];
            }
        }
    }
    if n == 0 {
        return &[];
    }
    text
}

async fn logs(
    sync: Arc<PodSync>,
    ns: &str,
    pod: &str,
    container: &str,
    q: &HashMap<String, Vec<String>>,
) -> Response {
    let Some(uid) = sync.lookup(ns, pod) else {
        return full(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} is not on this node"),
        );
    };
    let path = sync.kubelet().log_path(&uid, container);
    let Ok(mut file) = std::fs::File::open(&path) else {
        return full(
            StatusCode::NOT_FOUND,
            format!("container {container} has no log yet"),
        );
    };
    let mut text = Vec::new();
    if let Err(e) = file.read_to_end(&mut text) {
        return full(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    let offset = text.len() as u64;
    let first = match q
        .get("tailLines")
        .and_then(|v| v.first())
        .and_then(|v| v.parse().ok())
    {
        Some(n) => tail(&text, n).to_vec(),
        None => text,
    };
    if !flag(q, "follow") {
        return full(StatusCode::OK, first);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let (ns, pod) = (ns.to_string(), pod.to_string());
    tokio::spawn(async move {
        if tx.send(Bytes::from(first)).await.is_err() {
            return;
        }
        let mut offset = offset;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut buf = Vec::new();
            // A rotated log was truncated in place: read on from its start.
            if file.metadata().is_ok_and(|m| m.len() < offset) {
                offset = 0;
            }
            let read = file
                .seek(SeekFrom::Start(offset))
                .and_then(|_| file.read_to_end(&mut buf));
            if read.is_err() {
                return;
            }
            offset += buf.len() as u64;
            if !buf.is_empty() && tx.send(Bytes::from(buf)).await.is_err() {
                return;
            }
            if tx.is_closed() || sync.lookup(&ns, &pod).is_none() {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
    });
    let mut r = hyper::Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    r
}

/// The final status message of an exec: success, or the exit code / the failure.
pub fn exec_status(result: Result<u32, String>, command: &[String]) -> serde_json::Value {
    match result {
        Ok(0) => json!({"metadata": {}, "status": "Success"}),
        Ok(code) => json!({"metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}}),
        Err(message) => {
            json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError"})
        }
    }
}

/// A terminal size message (`{"Width":80,"Height":24}`), as (columns, rows).
fn terminal_size(json: &[u8]) -> Option<(u16, u16)> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    let dim = |k: &str| v[k].as_u64().and_then(|n| u16::try_from(n).ok());
    Some((dim("Width")?, dim("Height")?))
}

fn exec(
    sync: Arc<PodSync>,
    ns: &str,
    pod: &str,
    container: &str,
    q: &HashMap<String, Vec<String>>,
    mut req: Request<Incoming>,
) -> Response {
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let key = header("sec-websocket-key");
    let offered = header("sec-websocket-protocol");
    let Some(protocol) = EXEC_PROTOCOLS
        .iter()
        .find(|p| offered.split(',').any(|o| o.trim() == **p))
    else {
        return full(
            StatusCode::BAD_REQUEST,
            "exec needs a WebSocket with subprotocol v5.channel.k8s.io or v4.channel.k8s.io",
        );
    };
    if !header("upgrade").eq_ignore_ascii_case("websocket") || key.is_empty() {
        return full(StatusCode::BAD_REQUEST, "exec needs a WebSocket upgrade");
    }
    let Some(uid) = sync.lookup(ns, pod) else {
        return full(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} is not on this node"),
        );
    };
    let command = q.get("command").cloned().unwrap_or_default();
    if command.is_empty() {
        return full(StatusCode::BAD_REQUEST, "exec needs a command");
    }
    let (want_in, want_out, want_err) = (flag(q, "stdin"), flag(q, "stdout"), flag(q, "stderr"));
    let tty = flag(q, "tty");
    let container = container.to_string();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        let (mut sink, mut incoming) = ws.split();
        let (in_tx, in_rx) = match want_in {
            true => {
                let (t, r) = mpsc::channel::<Bytes>(16);
                (Some(t), Some(r))
            }
            false => (None, None),
        };
        let (resize_tx, resize_rx) = mpsc::channel::<(u16, u16)>(4);
        // Client messages: stdin chunks (channel 0), terminal sizes (channel 4, JSON
        // `{"Width":…,"Height":…}`) and, in v5, stdin's close signal (255 0).
        let reader = tokio::spawn(async move {
            let mut in_tx = in_tx;
            while let Some(Ok(msg)) = incoming.next().await {
                let Message::Binary(b) = msg else { continue };
                match (b.first(), b.get(1)) {
                    (Some(0), _) => {
                        if let Some(t) = &in_tx {
                            let _ = t.send(b.slice(1..)).await;
                        }
                    }
                    (Some(4), _) => {
                        if let Some((w, h)) = terminal_size(&b[1..]) {
                            let _ = resize_tx.try_send((w, h));
                        }
                    }
                    (Some(255), Some(0)) => in_tx = None,
                    _ => {}
                }
            }
        });
        let (out_tx, mut out_rx) = mpsc::channel::<(ExecStream, Bytes)>(64);
        let io = ExecIo {
            stdin: in_rx,
            output: out_tx,
            tty,
            resize: tty.then_some(resize_rx),
        };
        let kubelet = sync.kubelet().clone();
        let run = kubelet.exec_stream(
            &uid,
            &container,
            &command,
            io,
            Duration::from_secs(24 * 3600),
        );
        let forward = async {
            while let Some((stream, data)) = out_rx.recv().await {
                let (channel, wanted) = match stream {
                    ExecStream::Stdout => (1u8, want_out),
                    ExecStream::Stderr => (2u8, want_err),
                };
                if wanted {
                    let mut msg = Vec::with_capacity(data.len() + 1);
                    msg.push(channel);
                    msg.extend_from_slice(&data);
                    let _ = sink.send(Message::binary(msg)).await;
                }
            }
        };
        let (result, ()) = tokio::join!(run, forward);
        let status = exec_status(result.map_err(|e| e.to_string()), &command);
        let mut msg = vec![3u8];
        msg.extend_from_slice(&serde_json::to_vec(&status).unwrap_or_default());
        let _ = sink.send(Message::binary(msg)).await;
        let close = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = sink.send(Message::Close(Some(close))).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
    });
    let mut r = full(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    let h = r.headers_mut();
    h.insert(
        hyper::header::UPGRADE,
        HeaderValue::from_static("websocket"),
    );
    h.insert(
        hyper::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = HeaderValue::from_str(
        &tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
    ) {
        h.insert("sec-websocket-accept", v);
    }
    h.insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
    r
}

async fn handle(
    sync: Arc<PodSync>,
    user: Option<User>,
    req: Request<Incoming>,
) -> Result<Response, Infallible> {
    let Some(user) = user else {
        return Ok(full(
            StatusCode::UNAUTHORIZED,
            "a client certificate is required",
        ));
    };
    if !allowed(&user) {
        return Ok(full(
            StatusCode::FORBIDDEN,
            format!("user {} may not use the kubelet API", user.name),
        ));
    }
    let path = req.uri().path().to_string();
    let q = query(req.uri().query());
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    tracing::debug!(path = %path, user = %user.name, "kubelet api request");
    Ok(match segs.as_slice() {
        ["containerLogs", ns, pod, container] => logs(sync, ns, pod, container, &q).await,
        ["exec", ns, pod, container] => {
            let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
            exec(sync, &ns, &pod, &container, &q, req)
        }
        ["healthz"] => full(StatusCode::OK, "ok"),
        _ => full(StatusCode::NOT_FOUND, "not found"),
    })
}

/// Binds `addr`; the caller then runs [`serve`].
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    crate::https::bind(addr).map_err(|source| ServeError::Listen { addr, source })
}

/// Serves the kubelet API on `listener` forever, with the bounds of [`crate::https`].
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, sync: Arc<PodSync>) {
    let limits = crate::https::Limits {
        max_connections: 1024,
        ..Default::default()
    };
    let handler = move |user, req| handle(sync.clone(), user, req);
    crate::https::serve(listener, tls, limits, std::future::pending(), handler).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_query_parameters_keep_every_value_decoded() {
        let q = query(Some(
            "command=sh&command=-c&command=echo+out%3B+exit+3&stdout=true&x",
        ));
        assert_eq!(q["command"], ["sh", "-c", "echo out; exit 3"]);
        assert!(flag(&q, "stdout"));
        assert!(!flag(&q, "stderr"));
        assert_eq!(q["x"], [""]);
        assert_eq!(decode("bad%zz%4"), "bad%zz%4");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", 1), b"c");
        assert_eq!(tail(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail(b"a\nb\n", 0), b"");
    }

    #[test]
    fn exit_codes_are_reported_the_way_client_go_reads_them() {
        let cmd = vec!["sh".to_string()];
        assert_eq!(exec_status(Ok(0), &cmd)["status"], "Success");
        let s = exec_status(Ok(3), &cmd);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        assert_eq!(
            exec_status(Err("no such container".into()), &cmd)["status"],
            "Failure"
        );
    }

    #[test]
    fn only_masters_and_the_apiserver_may_call_the_kubelet() {
        let u = |name: &str, groups: &[&str]| User {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        assert!(allowed(&u("kube-apiserver-kubelet-client", &[])));
        assert!(allowed(&u("admin", &["system:masters"])));
        assert!(!allowed(&u("system:node:w1", &["system:nodes"])));
    }
}
