//! The cluster's trust material: CAs and leaf certificates (rcgen), the service-account
//! key, bootstrap tokens, the CA pin hash and kubeconfigs.
//!
//! Everything lives under `<cluster>/secrets/`: `pki/` (see [`layout`] for every file, who
//! signs it and why) and `tokens.toml` (see [`token`]). Directories are mode 0700, private
//! keys and tokens 0600, certificates 0644. Files are written atomically (temp file, fsync,
//! rename), so a crash never leaves a half-written key, and existing keys are never
//! overwritten: [`ensure`] only issues what is missing.

pub mod inspect;
pub mod issue;
pub mod kubeconfig;
pub mod layout;
pub mod token;

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rcgen::KeyPair;
use sha2::{Digest, Sha256};

use crate::cluster::Cluster;
use issue::Authority;
use layout::{LeafSpec, Signer};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[source] rcgen::Error),
    #[error("{path} is not a valid PEM certificate: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    BadTokenFile { path: PathBuf, reason: String },
    #[error("{0}")]
    BadToken(String),
    #[error("no bootstrap token {id:?} in {path} (see `kimg token list`)")]
    NoSuchToken { id: String, path: PathBuf },
}

/// `<cluster>/secrets`.
pub fn secrets_dir(cluster_dir: &Path) -> PathBuf {
    cluster_dir.join("secrets")
}

/// `<cluster>/secrets/pki`.
pub fn pki_dir(cluster_dir: &Path) -> PathBuf {
    secrets_dir(cluster_dir).join("pki")
}

/// Writes a new cluster directory ([`crate::cluster::create`]) with its secrets: the CAs
/// and leaf certificates ([`ensure`]) and one never-expiring bootstrap token for images.
pub fn create_cluster(
    dir: &Path,
    opts: &crate::cluster::NewOptions,
    force: bool,
) -> Result<Cluster, crate::cluster::ClusterError> {
    crate::cluster::create(dir, opts, force, &|staged| {
        ensure(staged)?;
        token::create(&staged.dir, None, "baked into images by kimg build")?;
        Ok(())
    })
}

/// Writes `bytes` to `path` atomically with `mode` ([`crate::files::write_atomic`]),
/// creating missing parent directories with mode 0700 (they hold secrets).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)?;
    crate::files::write_atomic(path, bytes, mode)
}

fn read_string(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    write_atomic(path, bytes, mode).map_err(|source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads a CA (`<base>.crt`, `<base>.key`) from `pki_dir`.
pub fn load_authority(pki_dir: &Path, signer: Signer) -> Result<Authority, PkiError> {
    let base = pki_dir.join(signer.base());
    let cert = read_string(&base.with_extension("crt"))?;
    let key = read_string(&base.with_extension("key"))?;
    Authority::from_pem(&cert, &key)
}

fn write_pair(pki_dir: &Path, base: &str, cert_pem: &str, key_pem: &str) -> Result<(), PkiError> {
    // Key first: a crash between the two leaves a key without a cert, which `ensure`
    // detects (the cert is missing) and replaces, never a cert without its key.
    write(
        &pki_dir.join(format!("{base}.key")),
        key_pem.as_bytes(),
        0o600,
    )?;
    write(
        &pki_dir.join(format!("{base}.crt")),
        cert_pem.as_bytes(),
        0o644,
    )
}

/// The key file for Secrets at rest (`name:base64` lines; see
/// [`crate::store::EncryptionKeys`]), relative to `secrets/pki/`. Masters carry it.
pub const ENCRYPTION_KEY: &str = "encryption.key";

/// What [`ensure`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Issued {
    /// Base paths (relative to `secrets/pki/`) of everything newly created.
    pub created: Vec<String>,
}

/// Creates every CA, key and leaf of the cluster that does not exist yet. Existing files
/// are never touched.
pub fn ensure(cluster: &Cluster) -> Result<Issued, PkiError> {
    let dir = pki_dir(&cluster.dir);
    let mut issued = Issued::default();
    for signer in Signer::ALL {
        if !dir.join(format!("{}.crt", signer.base())).exists() {
            let ca = issue::new_ca(signer.common_name())?;
            write_pair(&dir, signer.base(), &ca.cert.pem(), &ca.key.serialize_pem())?;
            issued.created.push(signer.base().to_string());
        }
    }
    if !dir.join("sa.key").exists() {
        let key = KeyPair::generate().map_err(PkiError::Rcgen)?;
        write(&dir.join("sa.pub"), key.public_key_pem().as_bytes(), 0o644)?;
        write(&dir.join("sa.key"), key.serialize_pem().as_bytes(), 0o600)?;
        issued.created.push("sa".into());
    }
    if !dir.join(ENCRYPTION_KEY).exists() {
        let line =
            crate::store::EncryptionKeys::generate_line("key1").map_err(|e| PkiError::Write {
                path: dir.join(ENCRYPTION_KEY),
                source: std::io::Error::other(e),
            })?;
        write(&dir.join(ENCRYPTION_KEY), line.as_bytes(), 0o600)?;
        issued.created.push("encryption".into());
    }
    let authorities = Signer::ALL
        .iter()
        .map(|s| load_authority(&dir, *s).map(|a| (*s, a)))
        .collect::<Result<Vec<_>, _>>()?;
    for spec in layout::leaves(cluster) {
        if dir.join(format!("{}.crt", spec.base)).exists() {
            continue;
        }
        let ca = authorities
            .iter()
            .find(|(s, _)| *s == spec.signer)
            .map(|(_, a)| a)
            .expect("every signer is loaded");
        issue_leaf(&dir, &spec, ca)?;
        issued.created.push(spec.base.clone());
    }
    Ok(issued)
}

fn issue_leaf(dir: &Path, spec: &LeafSpec, ca: &Authority) -> Result<(), PkiError> {
    let (cert, key) = issue::new_leaf(ca, &spec.cn, &spec.orgs, &spec.sans, spec.usage)?;
    write_pair(dir, &spec.base, &cert.pem(), &key.serialize_pem())
}

/// `sha256:<hex>` of a certificate's SubjectPublicKeyInfo: kubeadm's CA pin, the same as
/// `openssl x509 -pubkey | openssl pkey -pubin -outform der | sha256sum`.
pub fn spki_sha256(cert_pem: &str) -> Result<String, String> {
    let der = inspect::pem_to_der(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
    Ok(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(cert.tbs_certificate.subject_pki.raw))
    ))
}

/// The cluster CA's pin hash.
pub fn ca_hash(cluster_dir: &Path) -> Result<String, PkiError> {
    let path = pki_dir(cluster_dir).join("ca.crt");
    let pem = read_string(&path)?;
    spki_sha256(&pem).map_err(|reason| PkiError::BadCertificate { path, reason })
}
