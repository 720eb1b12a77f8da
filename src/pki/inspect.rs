//! Reading certificates back: subjects, SANs and expiry, for `kimg cluster certs`.

use std::path::{Path, PathBuf};

use base64::Engine;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use super::PkiError;

/// What `kimg cluster certs` shows for one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Path relative to `secrets/pki/`, e.g. `etcd/etcd-1/peer.crt`.
    pub name: String,
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<String>,
    pub not_after: OffsetDateTime,
    pub is_ca: bool,
}

/// Decodes the first `CERTIFICATE` block of a PEM text.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, String> {
    let start = pem
        .find("-----BEGIN CERTIFICATE-----")
        .ok_or("no BEGIN CERTIFICATE line")?;
    let body = &pem[start + "-----BEGIN CERTIFICATE-----".len()..];
    let end = body
        .find("-----END CERTIFICATE-----")
        .ok_or("no END CERTIFICATE line")?;
    let b64: String = body[..end].chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("bad base64: {e}"))
}

/// Parses one PEM certificate.
pub fn cert_info(name: &str, pem: &str) -> Result<CertInfo, String> {
    let der = pem_to_der(pem)?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| e.to_string())?;
    let mut sans = Vec::new();
    let mut is_ca = false;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for n in &san.general_names {
                    match n {
                        GeneralName::DNSName(d) => sans.push(format!("DNS:{d}")),
                        GeneralName::IPAddress(b) if b.len() == 4 => sans.push(format!(
                            "IP:{}",
                            std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3])
                        )),
                        other => sans.push(format!("{other:?}")),
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) => is_ca = bc.ca,
            _ => {}
        }
    }
    Ok(CertInfo {
        name: name.to_string(),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sans,
        not_after: cert.validity().not_after.to_datetime(),
        is_ca,
    })
}

/// Every `*.crt` below `pki_dir`, sorted by path.
pub fn list(pki_dir: &Path) -> Result<Vec<CertInfo>, PkiError> {
    let mut files = Vec::new();
    collect(pki_dir, pki_dir, &mut files)?;
    files.sort();
    files
        .into_iter()
        .map(|(rel, path)| {
            let pem = std::fs::read_to_string(&path).map_err(|source| PkiError::Read {
                path: path.clone(),
                source,
            })?;
            cert_info(&rel, &pem).map_err(|reason| PkiError::BadCertificate { path, reason })
        })
        .collect()
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<(), PkiError> {
    let entries = std::fs::read_dir(dir).map_err(|source| PkiError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| PkiError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if path.is_dir() {
            collect(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "crt") {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            out.push((rel, path));
        }
    }
    Ok(())
}
