//! TLS serving and x509 client authentication.
//!
//! The server presents the cluster's `apiserver.crt` and asks every client for a
//! certificate, verified against the cluster CA (`ca.crt`). A verified certificate
//! authenticates its Common Name as the user and its Organizations as groups, as in
//! Kubernetes ([`crate::https::user_from_cert`]). Clients without a certificate still complete the handshake (so they get a
//! 401 `Status`, not a TLS alert). ALPN offers `h2` and `http/1.1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

pub use crate::https::{user_from_cert, User};

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read PEM file {path}: {reason}")]
    ReadPem { path: PathBuf, reason: String },
    #[error("the cluster CA certificate is unusable as a client trust root")]
    TrustRoot(#[source] rustls::Error),
    #[error("cannot build the client certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("the serving certificate and key are unusable")]
    ServingCert(#[source] rustls::Error),
    #[error("the apiserver-kubelet-client certificate and key are unusable")]
    ClientCert(#[source] rustls::Error),
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::ReadPem {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(certs)
}

/// The rustls server configuration from a cluster's `secrets/pki` directory.
pub fn server_config(pki_dir: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in certs(&pki_dir.join("ca.crt"))? {
        roots.add(c).map_err(TlsError::TrustRoot)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(TlsError::Verifier)?;
    let key_path = pki_dir.join("apiserver.key");
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| TlsError::ReadPem {
        path: key_path,
        reason: e.to_string(),
    })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::ServingCert)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&pki_dir.join("apiserver.crt"))?, key)
        .map_err(TlsError::ServingCert)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
