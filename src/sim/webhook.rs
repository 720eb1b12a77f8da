//! `kimg sim webhook`: a small admission webhook server for tests and for trying admission
//! out — the same server on a developer's loopback and as a pod in a cluster.
//!
//! What it answers (`AdmissionReview` v1, with the request's `uid`):
//! - `/mutate` allows and adds the label `webhook.example.io/mutated: "true"` with a JSON
//!   patch, and a warning;
//! - `/validate` (and any other path) refuses objects whose name starts with `forbidden-`
//!   (403, with a message; the old object's name for a DELETE) and allows the rest;
//! - misbehaviours, to see how the apiserver copes: `/slow` answers after five seconds,
//!   `/wrong-uid` answers for another request, `/huge` sends 4 MiB, `/garbage` is not
//!   JSON, `/bad-patch` sends a patch that does not decode.
//!
//! Every request's `userInfo.username` is passed to an optional recorder (tests check who
//! called). Bounds: connections, handshakes and request heads as every kimg server
//! ([`crate::https`]); a request body is read up to [`MAX_BODY`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{json, Value};

/// The largest `AdmissionReview` read (kube-apiserver's request body limit).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Who called: each request's `userInfo.username`.
pub type Recorder = Arc<dyn Fn(&str) + Send + Sync>;

/// The `AdmissionReview` answer for a request on `path`.
pub fn answer(path: &str, review: &Value) -> Value {
    let req = &review["request"];
    let uid = req["uid"].clone();
    // A DELETE carries the object in `oldObject` only.
    let name = req["object"]["metadata"]["name"]
        .as_str()
        .or(req["oldObject"]["metadata"]["name"].as_str())
        .unwrap_or_default();
    let response = match path {
        "/mutate" => {
            let ops = if req["object"]["metadata"]["labels"].is_object() {
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

async fn handle(
    req: hyper::Request<hyper::body::Incoming>,
    record: Option<Recorder>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let reply = |code: u16, body: String| {
        Ok(hyper::Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default())
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return reply(413, json!({"error": e.to_string()}).to_string()),
    };
    let Ok(review) = serde_json::from_slice::<Value>(&body) else {
        return reply(400, json!({"error": "not an AdmissionReview"}).to_string());
    };
    if let (Some(r), Some(u)) = (&record, review["request"]["userInfo"]["username"].as_str()) {
        r(u);
    }
    match path.as_str() {
        "/slow" => tokio::time::sleep(Duration::from_secs(5)).await,
        "/huge" => return reply(200, format!("{{\"pad\":\"{}\"}}", "x".repeat(4 << 20))),
        "/garbage" => return reply(200, "<html>not json</html>".into()),
        _ => {}
    }
    reply(200, answer(&path, &review).to_string())
}

/// Serves the webhook on `listener` with `tls` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()>,
    record: Option<Recorder>,
) {
    let handler = move |_user, req| handle(req, record.clone());
    crate::https::serve(listener, tls, Default::default(), shutdown, handler).await;
}

/// A TLS server configuration from PEM files (a certificate chain and its key).
pub fn tls_from_pem(cert: &[u8], key: &[u8]) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use anyhow::Context;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .context("reading the certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key).context("reading the key")?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("the certificate does not match the key")?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_carry_the_uid_and_refuse_forbidden_names() {
        let review =
            |name: &str| json!({"request": {"uid": "u1", "object": {"metadata": {"name": name}}}});
        let ok = answer("/validate", &review("web"));
        assert_eq!(ok["response"]["uid"], "u1");
        assert_eq!(ok["response"]["allowed"], true);
        let no = answer("/validate", &review("forbidden-x"));
        assert_eq!(no["response"]["allowed"], false);
        assert_eq!(no["response"]["status"]["code"], 403);
        let deleted =
            json!({"request": {"uid": "u2", "oldObject": {"metadata": {"name": "forbidden-y"}}}});
        assert_eq!(answer("/validate", &deleted)["response"]["allowed"], false);
        let m = answer("/mutate", &review("web"));
        let patch = base64::engine::general_purpose::STANDARD
            .decode(m["response"]["patch"].as_str().expect("patch"))
            .expect("base64");
        let ops: Value = serde_json::from_slice(&patch).expect("json");
        assert_eq!(ops[0]["path"], "/metadata/labels");
    }
}
