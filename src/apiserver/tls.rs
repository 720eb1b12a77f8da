//! TLS serving and x509 client authentication.
//!
//! The server presents the cluster's `apiserver.crt` and asks every client for a
//! certificate, verified against the cluster CA (`ca.crt`). A verified certificate
//! authenticates its Common Name as the user and its Organizations as groups, as in
//! Kubernetes. Clients without a certificate still complete the handshake (so they get a
//! 401 `Status`, not a TLS alert). ALPN offers `h2` and `http/1.1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

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

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    /// Members of `system:masters` may do everything (phase 1 has no RBAC).
    pub fn is_master(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }
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

/// The user a verified client certificate names: CN → user, O → groups.
pub fn user_from_cert(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_string();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    groups.push("system:authenticated".into());
    Some(User { name, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_name_is_the_user_and_organizations_are_groups() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kubernetes-admin");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:masters");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let user = user_from_cert(cert.der()).expect("user");
        assert_eq!(user.name, "kubernetes-admin");
        assert!(user.is_master());
        assert!(user.groups.contains(&"system:authenticated".to_string()));
        assert_eq!(user_from_cert(b"garbage"), None);
    }
}
