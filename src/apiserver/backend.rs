//! Dialing the servers the apiserver calls: kubelets (`pods/log`, `pods/exec`), admission
//! webhooks ([`super::webhook`]) and aggregated API servers ([`super::aggregator`]).
//!
//! What: [`dial`] opens one TLS connection (HTTP/1.1) with a deadline; [`client_config`]
//! makes a client configuration that trusts only a given PEM bundle (a `caBundle`), or
//! nothing in particular (`insecureSkipTLSVerify`), and presents an [`Identity`] if given;
//! [`service_address`] finds where a Service reference is dialed; [`read_bounded`] reads a
//! response body up to a limit. Bounds: every dial has a
//! deadline, every body read a size limit, so a slow or hostile backend costs the request
//! its deadline and no more memory than the limit.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};

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

/// A client certificate and its key, presented to the servers dialed.
#[derive(Debug)]
pub struct Identity {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Reads `<base>.crt` and `<base>.key` (PEM).
    pub fn load(base: &std::path::Path) -> Result<Identity, String> {
        let (crt, key) = (base.with_extension("crt"), base.with_extension("key"));
        let certs = CertificateDer::pem_file_iter(&crt)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", crt.display()))?;
        let key =
            PrivateKeyDer::from_pem_file(&key).map_err(|e| format!("{}: {e}", key.display()))?;
        Ok(Identity { certs, key })
    }
}

/// Whom a client configuration trusts.
pub enum Trust<'a> {
    /// Only the certificates of a PEM bundle (a `caBundle`).
    Pem(&'a [u8]),
    /// Any certificate (`insecureSkipTLSVerify`); the handshake's signatures are still
    /// checked, so the peer holds the key of the certificate it shows.
    Anyone,
}

/// A client configuration trusting only the certificates of `ca_pem`.
pub fn trusting(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, String> {
    client_config(Trust::Pem(ca_pem), None)
}

/// A client configuration (HTTP/1.1) trusting `trust`, presenting `identity` if given.
pub fn client_config(
    trust: Trust<'_>,
    identity: Option<&Identity>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match trust {
        Trust::Pem(ca_pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca_pem) {
                let c = c.map_err(|e| format!("caBundle: {e}"))?;
                roots.add(c).map_err(|e| format!("caBundle: {e}"))?;
            }
            if roots.is_empty() {
                return Err("caBundle: no certificate".into());
            }
            builder.with_root_certificates(roots)
        }
        Trust::Anyone => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider))),
    };
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.certs.clone(), id.key.clone_key())
            .map_err(|e| format!("client certificate: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts any server certificate, checking only the handshake's signatures.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Where a Service reference (`namespace/name:port`) is dialed, as kube-apiserver resolves
/// it for webhooks and `APIService`s: an `ExternalName` Service at its external name, any
/// other at its cluster IP. The address is `host:port`.
pub async fn service_address(
    st: &super::State,
    namespace: &str,
    name: &str,
    port: i64,
) -> Result<String, String> {
    let svc = st
        .get_cached(&format!("/registry/services/{namespace}/{name}"))
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("service \"{namespace}/{name}\" not found"))?;
    let svc = super::object::from_kv(&svc).map_err(|e| e.to_string())?;
    let field = |p: &str| svc.pointer(p).and_then(serde_json::Value::as_str);
    if field("/spec/type") == Some("ExternalName") {
        let host = field("/spec/externalName")
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("service \"{namespace}/{name}\" has no external name"))?;
        return Ok(format!("{host}:{port}"));
    }
    let ip = field("/spec/clusterIP")
        .filter(|ip| !ip.is_empty() && *ip != "None")
        .ok_or_else(|| format!("service \"{namespace}/{name}\" has no cluster IP"))?;
    Ok(format!("{ip}:{port}"))
}

/// Open connections to one backend kept between calls, each with the address it was
/// dialed at: at most [`Pool::IDLE`], as kube-apiserver's HTTP clients keep them.
pub struct Pool<B>(std::sync::Mutex<Vec<(String, hyper::client::conn::http1::SendRequest<B>)>>);

impl<B> Default for Pool<B> {
    fn default() -> Self {
        Pool(Default::default())
    }
}

impl<B> std::fmt::Debug for Pool<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pool")
    }
}

impl<B> Pool<B> {
    /// Connections kept per backend.
    pub const IDLE: usize = 4;

    /// A kept connection to `addr` that is ready for a request, if one is left (busy or
    /// closed ones met on the way are dropped: a busy one closes once its answer ends).
    pub fn take(&self, addr: &str) -> Option<hyper::client::conn::http1::SendRequest<B>> {
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((a, s)) = idle.pop() {
            if a == addr && !s.is_closed() && s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    /// Sends `request()` on a kept connection to `addr`, else on one dialed afresh (TLS
    /// name `name`, within `deadline`). A kept connection the server closed meanwhile
    /// fails before anything is sent; the request is then dialed afresh, once. Returns the
    /// connection with the answer: [`Pool::keep`] it once the answer is read.
    pub async fn send(
        &self,
        addr: &str,
        name: &str,
        tls: Arc<rustls::ClientConfig>,
        deadline: Duration,
        request: impl Fn() -> Result<hyper::Request<B>, String>,
    ) -> Result<
        (
            hyper::client::conn::http1::SendRequest<B>,
            hyper::Response<Incoming>,
        ),
        String,
    >
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if let Some(mut s) = self.take(addr) {
            if let Ok(resp) = s.send_request(request()?).await {
                return Ok((s, resp));
            }
        }
        let mut s = dial::<B>(addr, name, tls, deadline).await?;
        let resp = s
            .send_request(request()?)
            .await
            .map_err(|e| e.to_string())?;
        Ok((s, resp))
    }

    /// Keeps a connection for a later call.
    pub fn keep(&self, addr: &str, s: hyper::client::conn::http1::SendRequest<B>) {
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < Self::IDLE && !s.is_closed() {
            idle.push((addr.to_string(), s));
        }
    }
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
