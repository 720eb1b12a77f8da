//! `pods/log` and `pods/exec`: the apiserver relays them to the kubelet of the pod's node.
//!
//! How: the caller is authorized first (RBAC `get pods/log`, `create pods/exec`, by the
//! router). The pod's `spec.nodeName` names the Node; its `InternalIP` address and
//! `status.daemonEndpoints.kubeletEndpoint.Port` (default 10250) are dialed over TLS with
//! the `apiserver-kubelet-client` certificate of the cluster PKI (HTTP/1.1, hyper's client
//! connection). Logs: `GET /containerLogs/<ns>/<pod>/<container>?<query>` and its body is
//! streamed back (so `follow=true` follows). Exec: kubectl (1.30+) first asks for a WebSocket
//! (`GET` with `Upgrade: websocket`, subprotocol `v5.channel.k8s.io`, then older ones) and
//! falls back to SPDY only when that upgrade fails; the WebSocket request is forwarded to
//! `/exec/<ns>/<pod>/<container>` with the client's key and subprotocols, the kubelet's
//! `101 Switching Protocols` is handed back, and the two upgraded connections are spliced.
//! The container defaults to the pod's first one.
//!
//! The kubelet's serving certificate must be signed by the cluster CA for the address
//! dialed (kube-apiserver's `--kubelet-certificate-authority`): kubelets get theirs through
//! a `kubelet-serving` CSR, and a machine that merely took over a node's address, or a
//! kubelet still waiting for its certificate, is refused (an error naming the TLS failure).
//!
//! Limits: SPDY, attach and port-forward are refused.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

use super::error::ApiError;
use super::http::{full_response, Response, Target};
use super::resources;
use super::storage::read;
use super::tls::TlsError;
use super::State;

/// The RBAC verb of a proxied pod subresource, or `None` when `t` is not one.
pub fn verb_of(t: &Target) -> Option<&'static str> {
    if !t.res.group.is_empty() || t.res.plural != "pods" || t.name.is_none() {
        return None;
    }
    match t.sub.as_deref() {
        Some("log") => Some("get"),
        Some("exec") => Some("create"),
        _ => None,
    }
}

/// The TLS client configuration with `apiserver-kubelet-client.{crt,key}` from `pki_dir`,
/// trusting kubelet serving certificates only when the cluster CA (`ca.crt`) signed them
/// for the address dialed.
pub fn client_config(pki_dir: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let read = |name: &str| {
        let path = pki_dir.join(name);
        std::fs::read(&path).map_err(|e| TlsError::ReadPem {
            path,
            reason: e.to_string(),
        })
    };
    let (cert_pem, key_pem) = (
        read("apiserver-kubelet-client.crt")?,
        read("apiserver-kubelet-client.key")?,
    );
    let bad = |reason: String| TlsError::ReadPem {
        path: pki_dir.join("apiserver-kubelet-client.crt"),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad(e.to_string()))?;
    let ca_pem = read("ca.crt")?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca_pem) {
        let c = c.map_err(|e| bad(format!("ca.crt: {e}")))?;
        roots.add(c).map_err(|e| bad(format!("ca.crt: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| bad(format!("ca.crt: {e}")))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::ClientCert)?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(certs, key)
        .map_err(TlsError::ClientCert)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn bad(reason: impl Into<String>) -> ApiError {
    ApiError::BadQuery {
        reason: reason.into(),
    }
}

/// The kubelet's address and the container of the pod `t` names.
async fn locate(
    state: &State,
    t: &Target,
    container: Option<&str>,
) -> Result<(String, String), ApiError> {
    let pod_target = Target {
        sub: None,
        custom: None,
        ..t.clone()
    };
    let (pod, _) = read(state, &pod_target).await?;
    let name = t.name.clone().unwrap_or_default();
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("pod {name} does not have a host assigned")))?;
    let containers: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    let container = match container {
        Some(c) if containers.contains(&c) => c.to_string(),
        Some(c) => return Err(bad(format!("container {c} is not valid for pod {name}"))),
        None => containers
            .first()
            .map(|c| c.to_string())
            .ok_or_else(|| bad(format!("pod {name} has no containers")))?,
    };
    let nodes = resources::find("", "v1", "nodes").ok_or(ApiError::RouteNotFound)?;
    let (node_obj, _) = read(
        state,
        &Target {
            res: nodes,
            namespace: None,
            name: Some(node.to_string()),
            sub: None,
            custom: None,
        },
    )
    .await?;
    let ip = node_obj
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
        .and_then(|a| a["address"].as_str())
        .ok_or_else(|| ApiError::KubeletProxy(format!("node {node} has no InternalIP address")))?;
    let port = node_obj
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .unwrap_or(10250);
    let addr = if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    Ok((addr, container))
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn dial(state: &State, addr: &str) -> Result<Sender, ApiError> {
    let fail = |e: String| ApiError::KubeletProxy(format!("dial {addr}: {e}"));
    let tls = state
        .kubelet_tls
        .clone()
        .ok_or_else(|| fail("no apiserver-kubelet-client certificate".into()))?;
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    super::backend::dial(addr, host, tls, Duration::from_secs(10))
        .await
        .map_err(fail)
}

/// The query string without `container` (it is part of the kubelet's path).
fn forwarded_query(q: Option<&str>) -> String {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("container="))
        .collect::<Vec<_>>()
        .join("&")
}

async fn kubelet_error(resp: hyper::Response<Incoming>) -> ApiError {
    let code = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    if code.is_client_error() {
        bad(text)
    } else {
        ApiError::KubeletProxy(format!("kubelet answered {code}: {text}"))
    }
}

/// Serves `pods/log` or `pods/exec` for an authorized caller.
pub async fn serve(
    state: &State,
    t: &Target,
    mut req: Request<Incoming>,
) -> Result<Response, ApiError> {
    let raw_query = req.uri().query().map(str::to_string);
    let container = super::http::parse_query(raw_query.as_deref()).remove("container");
    let (addr, container) = locate(state, t, container.as_deref()).await?;
    let ns = t.namespace.clone().unwrap_or_default();
    let pod = t.name.clone().unwrap_or_default();
    let query = forwarded_query(raw_query.as_deref());
    let is_exec = t.sub.as_deref() == Some("exec");
    let header = |n: &str| req.headers().get(n).cloned();
    let path = if is_exec { "exec" } else { "containerLogs" };
    let mut builder = Request::get(format!("/{path}/{ns}/{pod}/{container}?{query}"))
        .header("host", addr.as_str());
    if is_exec {
        let upgrade = header("upgrade").and_then(|v| v.to_str().ok().map(str::to_ascii_lowercase));
        if upgrade.as_deref() != Some("websocket") {
            return Err(bad(
                "Upgrade request required: exec is served over WebSocket (v5.channel.k8s.io)",
            ));
        }
        builder = builder
            .header("connection", "Upgrade")
            .header("upgrade", "websocket");
        for h in [
            "sec-websocket-key",
            "sec-websocket-version",
            "sec-websocket-protocol",
        ] {
            if let Some(v) = header(h) {
                builder = builder.header(h, v);
            }
        }
    }
    let kreq = builder
        .body(Empty::<Bytes>::new())
        .map_err(|e| ApiError::KubeletProxy(e.to_string()))?;
    let mut sender = dial(state, &addr).await?;
    let resp = sender
        .send_request(kreq)
        .await
        .map_err(|e| ApiError::KubeletProxy(format!("{addr}: {e}")))?;
    if !is_exec {
        if resp.status() != StatusCode::OK {
            return Err(kubelet_error(resp).await);
        }
        let body = resp.into_body().map_err(std::io::Error::other).boxed();
        let mut r = hyper::Response::new(body);
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        return Ok(r);
    }
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(kubelet_error(resp).await);
    }
    let mut out = full_response(StatusCode::SWITCHING_PROTOCOLS, "", Vec::new());
    out.headers_mut().remove(hyper::header::CONTENT_TYPE);
    for h in [
        "upgrade",
        "connection",
        "sec-websocket-accept",
        "sec-websocket-protocol",
    ] {
        if let Some(v) = resp.headers().get(h) {
            out.headers_mut().insert(h, v.clone());
        }
    }
    let client_side = hyper::upgrade::on(&mut req);
    let mut resp = resp;
    let kubelet_side = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let (Ok(c), Ok(k)) = tokio::join!(client_side, kubelet_side) else {
            return;
        };
        let (mut c, mut k) = (TokioIo::new(c), TokioIo::new(k));
        let _ = tokio::io::copy_bidirectional(&mut c, &mut k).await;
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_container_parameter_is_dropped_from_the_forwarded_query() {
        assert_eq!(
            forwarded_query(Some("command=sh&container=c&stdout=true")),
            "command=sh&stdout=true"
        );
        assert_eq!(forwarded_query(None), "");
    }

    #[test]
    fn log_is_a_get_and_exec_a_create_on_pods_only() {
        let t = |plural: &str, sub: Option<&str>| Target {
            res: resources::by_plural(plural).expect("resource"),
            namespace: Some("default".into()),
            name: Some("p".into()),
            sub: sub.map(String::from),
            custom: None,
        };
        assert_eq!(verb_of(&t("pods", Some("log"))), Some("get"));
        assert_eq!(verb_of(&t("pods", Some("exec"))), Some("create"));
        assert_eq!(verb_of(&t("pods", Some("status"))), None);
        assert_eq!(verb_of(&t("configmaps", None)), None);
    }

    /// A TLS server on loopback presenting `cert_pem`; whether the apiserver's kubelet
    /// client config completes a handshake with it.
    async fn handshake(client: Arc<rustls::ClientConfig>, cert_pem: &str, key_pem: &str) -> bool {
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certs");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        tokio::spawn(async move {
            if let Ok((tcp, _)) = listener.accept().await {
                let _ = acceptor.accept(tcp).await;
            }
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn only_a_kubelet_certificate_from_the_cluster_ca_for_the_dialed_address_is_trusted() {
        use crate::pki::issue::{new_ca, new_leaf, San, Usage};
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = new_ca("kubernetes").expect("ca");
        let (client_cert, client_key) = new_leaf(
            &ca,
            "kube-apiserver-kubelet-client",
            &["system:masters"],
            &[],
            Usage::Client,
        )
        .expect("client");
        std::fs::write(dir.path().join("ca.crt"), ca.cert.pem()).expect("write");
        std::fs::write(
            dir.path().join("apiserver-kubelet-client.crt"),
            client_cert.pem(),
        )
        .expect("write");
        std::fs::write(
            dir.path().join("apiserver-kubelet-client.key"),
            client_key.serialize_pem(),
        )
        .expect("write");
        let client = client_config(dir.path()).expect("client config");

        let loopback = San::Ip("127.0.0.1".parse().expect("ip"));
        let (good, good_key) = new_leaf(
            &ca,
            "system:node:w1",
            &["system:nodes"],
            std::slice::from_ref(&loopback),
            Usage::Server,
        )
        .expect("leaf");
        assert!(handshake(client.clone(), &good.pem(), &good_key.serialize_pem()).await);

        let other = San::Ip("10.9.9.9".parse().expect("ip"));
        let (wrong_ip, key) = new_leaf(
            &ca,
            "system:node:w2",
            &["system:nodes"],
            &[other],
            Usage::Server,
        )
        .expect("leaf");
        assert!(!handshake(client.clone(), &wrong_ip.pem(), &key.serialize_pem()).await);

        let stranger = new_ca("someone else").expect("ca");
        let (foreign, key) = new_leaf(
            &stranger,
            "system:node:w1",
            &["system:nodes"],
            &[loopback],
            Usage::Server,
        )
        .expect("leaf");
        assert!(!handshake(client.clone(), &foreign.pem(), &key.serialize_pem()).await);

        let key = rcgen::KeyPair::generate().expect("key");
        let selfsigned = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("self-signed");
        assert!(!handshake(client, &selfsigned.pem(), &key.serialize_pem()).await);
    }
}
