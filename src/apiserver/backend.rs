//! Dialing the servers the apiserver calls: kubelets (`pods/log`, `pods/exec`) and
//! admission webhooks ([`super::webhook`]).
//!
//! What: [`dial`] opens one TLS connection (HTTP/1.1) with a deadline; [`trusting`] makes
//! a client configuration that trusts only a given PEM bundle (a webhook's `caBundle`);
//! [`read_bounded`] reads a response body up to a limit. Bounds: every dial has a
//! deadline, every body read a size limit, so a slow or hostile backend costs the request
//! its deadline and no more memory than the limit.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls_pki_types::{pem::PemObject, CertificateDer, ServerName};

/// Opens an HTTP/1.1 connection over TLS to `addr`, verifying the server as `name`.
pub async fn dial<B>(
    addr: &str,
    name: &str,
    tls: Arc<rustls::ClientConfig>,
    deadline: Duration,
) -> Result<hyper::client::conn::http1::SendRequest<B>, String>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let work = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("dial tcp {addr}: {e}"))?;
        let server = ServerName::try_from(name.trim_matches(['[', ']']).to_string())
            .map_err(|e| format!("bad server name {name:?}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(server, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    };
    tokio::time::timeout(deadline, work)
        .await
        .map_err(|_| format!("dial {addr}: timed out after {}s", deadline.as_secs()))?
}

/// A client configuration trusting only the certificates of `ca_pem`.
pub fn trusting(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        let c = c.map_err(|e| format!("caBundle: {e}"))?;
        roots.add(c).map_err(|e| format!("caBundle: {e}"))?;
    }
    if roots.is_empty() {
        return Err("caBundle: no certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads a body of at most `limit` bytes.
pub async fn read_bounded(mut body: Incoming, limit: usize) -> Result<Bytes, String> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(format!("the response is larger than {limit} bytes"));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}
