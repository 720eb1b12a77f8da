//! Joining a cluster: TLS bootstrap of the kubelet's client certificate, and its rotation.
//!
//! What: the kubelet authenticates to the apiserver as `system:node:<name>` (group
//! `system:nodes`) with a certificate signed by the cluster CA. [`ensure_credentials`]
//! reuses `STATE/kubelet-client.{crt,key}` when they are valid (parse, not expired, issued
//! to this node, not yet due for rotation); otherwise it generates an ECDSA P-256 key
//! (rcgen), submits a `CertificateSigningRequest` (signer
//! `kubernetes.io/kube-apiserver-client-kubelet`, usages digital signature, key
//! encipherment, client auth) authenticated with the bootstrap token, waits for
//! `status.certificate` (the CSR controller auto-approves and signs it), and stores both
//! files atomically (key 0600).
//!
//! Rotation: [`rotation_due`] says whether a certificate has used up 70 % of its
//! lifetime; [`rotate_if_due`] then submits a new CSR authenticated with the current
//! certificate (the CSR controller approves a node renewing its own) and stores the
//! result. [`ClientCell`] holds the current API client so callers pick up the new
//! certificate on their next request.
//!
//! Limits: no jitter on the rotation point; a CSR that is denied is only reported (the
//! caller retries later); the bootstrap token is only needed when there is no usable
//! certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use time::OffsetDateTime;

/// The signer of kubelet client certificates.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

/// Fraction of a certificate's lifetime after which it is renewed.
const ROTATE_AT: f64 = 0.7;

/// Why joining or rotating failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("no usable client certificate in {0} and no bootstrap token to request one")]
    NoCredentials(PathBuf),
    #[error("cannot build an API client")]
    ClientConfig(#[source] kube::config::KubeconfigError),
    #[error("cannot build an API client")]
    Client(#[source] kube::Error),
    #[error("cannot generate the key or certificate request")]
    Generate(#[source] rcgen::Error),
    #[error("cannot submit the certificate signing request")]
    Submit(#[source] kube::Error),
    #[error("certificate signing request {name} was {reason}")]
    Refused { name: String, reason: String },
    #[error("certificate signing request {0} was not signed in time")]
    Timeout(String),
    #[error("the signed certificate is unusable: {0}")]
    BadCertificate(String),
    #[error("cannot store {path}")]
    Store {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where and how to join.
#[derive(Debug, Clone)]
pub struct JoinConfig {
    /// `https://host:port` of the apiserver.
    pub server: String,
    /// The cluster CA certificate (PEM).
    pub ca_pem: String,
    /// A bootstrap token `<id>.<secret>`, used only when there is no usable certificate.
    pub token: Option<String>,
    pub state_dir: PathBuf,
    pub node_name: String,
    /// How long to wait for the signed certificate.
    pub wait: Duration,
}

/// A client certificate with its key and validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// The certificate's Common Name.
    pub common_name: String,
}

impl Credentials {
    /// Parses a PEM certificate and key.
    pub fn parse(cert_pem: &str, key_pem: &str) -> Result<Credentials, JoinError> {
        let bad = |s: String| JoinError::BadCertificate(s);
        let der = crate::pki::inspect::pem_to_der(cert_pem).map_err(bad)?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| bad(e.to_string()))?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .unwrap_or_default()
            .to_string();
        rcgen::KeyPair::from_pem(key_pem).map_err(|e| bad(format!("key: {e}")))?;
        Ok(Credentials {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            common_name,
        })
    }
}

/// Whether a certificate valid from `not_before` to `not_after` should be renewed at `now`:
/// once 70 % of its lifetime has passed (or it is expired, or its validity is empty).
pub fn rotation_due(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> bool {
    let life = (not_after - not_before).as_seconds_f64();
    if life <= 0.0 {
        return true;
    }
    let used = (now - not_before).as_seconds_f64();
    used >= life * ROTATE_AT
}

/// The signer of the kubelet's serving certificate (its :10250 API).
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";

/// `STATE/kubelet-server.crt` and `.key`: the serving certificate the cluster CA signed.
pub fn serving_paths(state_dir: &Path) -> (PathBuf, PathBuf) {
    (
        state_dir.join("kubelet-server.crt"),
        state_dir.join("kubelet-server.key"),
    )
}

/// Whether a PEM certificate names `ip` among its IP subject alternative names.
pub fn names_ip(cert_pem: &str, ip: &str) -> bool {
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
        return false;
    };
    let octets = match ip {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    let Ok(der) = crate::pki::inspect::pem_to_der(cert_pem) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(|n| {
        matches!(n, x509_parser::extensions::GeneralName::IPAddress(b) if *b == octets.as_slice())
    })
}

/// The stored serving certificate when it parses, names this node and `ip`, and is not
/// due for rotation.
pub fn load_serving(
    state_dir: &Path,
    node: &str,
    ip: &str,
    now: OffsetDateTime,
) -> Option<Credentials> {
    let (crt, key) = serving_paths(state_dir);
    let c = Credentials::parse(
        &std::fs::read_to_string(crt).ok()?,
        &std::fs::read_to_string(key).ok()?,
    )
    .ok()?;
    let ok = c.common_name == format!("system:node:{node}")
        && names_ip(&c.cert_pem, ip)
        && now < c.not_after
        && !rotation_due(c.not_before, c.not_after, now);
    ok.then_some(c)
}

/// The serving certificate: the stored one when usable, else a fresh one requested
/// through `client` (the node's own identity) and stored.
pub async fn ensure_serving(
    cfg: &JoinConfig,
    client: &Client,
    ip: &str,
) -> Result<Credentials, JoinError> {
    if let Some(c) = load_serving(
        &cfg.state_dir,
        &cfg.node_name,
        ip,
        OffsetDateTime::now_utc(),
    ) {
        return Ok(c);
    }
    let (key, pem) = new_serving_request(&cfg.node_name, ip)?;
    let name = format!(
        "csr-serving-{}-{:08x}",
        cfg.node_name,
        rand::random::<u32>()
    );
    let usages = ["digital signature", "server auth"];
    let c = submit(
        client,
        &name,
        &pem,
        &key,
        KUBELET_SERVING_SIGNER,
        &usages,
        cfg.wait,
    )
    .await?;
    store_at(serving_paths(&cfg.state_dir), &c)?;
    Ok(c)
}

/// `STATE/kubelet-client.crt` and `.key`.
pub fn credential_paths(state_dir: &Path) -> (PathBuf, PathBuf) {
    (
        state_dir.join("kubelet-client.crt"),
        state_dir.join("kubelet-client.key"),
    )
}

/// The stored credentials when they exist, parse, name this node and are not due.
pub fn load_valid(state_dir: &Path, node: &str, now: OffsetDateTime) -> Option<Credentials> {
    let (crt, key) = credential_paths(state_dir);
    let c = Credentials::parse(
        &std::fs::read_to_string(crt).ok()?,
        &std::fs::read_to_string(key).ok()?,
    )
    .ok()?;
    let ok = c.common_name == format!("system:node:{node}")
        && now < c.not_after
        && !rotation_due(c.not_before, c.not_after, now);
    ok.then_some(c)
}

fn store(state_dir: &Path, c: &Credentials) -> Result<(), JoinError> {
    store_at(credential_paths(state_dir), c)
}

fn store_at((crt, key): (PathBuf, PathBuf), c: &Credentials) -> Result<(), JoinError> {
    // Key first: a crash in between leaves a new key with an old certificate, which
    // fails to parse as a pair and triggers a fresh request rather than a broken client.
    for (path, bytes, mode) in [(&key, &c.key_pem, 0o600), (&crt, &c.cert_pem, 0o644)] {
        crate::pki::write_atomic(path, bytes.as_bytes(), mode).map_err(|source| {
            JoinError::Store {
                path: path.clone(),
                source,
            }
        })?;
    }
    Ok(())
}

async fn client_from_yaml(yaml: &str) -> Result<Client, JoinError> {
    let kc = Kubeconfig::from_yaml(yaml).map_err(JoinError::ClientConfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(JoinError::ClientConfig)?;
    crate::client::client_from_config(cfg).map_err(JoinError::Client)
}

/// Writes `STATE/kubelet.conf`: a kubeconfig with the node's current certificate, for
/// the node's other agents (`kimg proxy`) and for operators on the machine.
pub fn write_kubeconfig(cfg: &JoinConfig, c: &Credentials) -> Result<PathBuf, JoinError> {
    let path = cfg.state_dir.join("kubelet.conf");
    let yaml = crate::pki::kubeconfig::render(
        "kimg",
        &cfg.server,
        &cfg.ca_pem,
        &format!("system:node:{}", cfg.node_name),
        &c.cert_pem,
        &c.key_pem,
    );
    crate::pki::write_atomic(&path, yaml.as_bytes(), 0o600).map_err(|source| JoinError::Store {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// An API client authenticated with a client certificate.
pub async fn client_for_cert(
    server: &str,
    ca_pem: &str,
    c: &Credentials,
) -> Result<Client, JoinError> {
    let yaml =
        crate::pki::kubeconfig::render("kimg", server, ca_pem, "kubelet", &c.cert_pem, &c.key_pem);
    client_from_yaml(&yaml).await
}

/// An API client authenticated with a bearer (bootstrap) token.
pub async fn client_for_token(
    server: &str,
    ca_pem: &str,
    token: &str,
) -> Result<Client, JoinError> {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kimg\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: bootstrap\n  user:\n    token: {token}\n\
         contexts:\n- name: bootstrap\n  context:\n    cluster: kimg\n    user: bootstrap\n\
         current-context: bootstrap\n"
    );
    client_from_yaml(&yaml).await
}

/// A key and PEM CSR for `system:node:<node>` in `system:nodes` with `sans`.
fn node_request(
    node: &str,
    sans: Vec<rcgen::SanType>,
) -> Result<(rcgen::KeyPair, String), JoinError> {
    let key = rcgen::KeyPair::generate().map_err(JoinError::Generate)?;
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(JoinError::Generate)?;
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params.subject_alt_names = sans;
    let csr = params
        .serialize_request(&key)
        .map_err(JoinError::Generate)?;
    let pem = csr.pem().map_err(JoinError::Generate)?;
    Ok((key, pem))
}

/// A key and PEM CSR for the node's client certificate.
fn new_request(node: &str) -> Result<(rcgen::KeyPair, String), JoinError> {
    node_request(node, Vec::new())
}

/// A key and PEM CSR for the serving certificate of `node` at `ip`: the same subject as
/// the client certificate, and the node's name and address as SANs.
fn new_serving_request(node: &str, ip: &str) -> Result<(rcgen::KeyPair, String), JoinError> {
    let bad = |e: String| JoinError::BadCertificate(e);
    let sans = vec![
        rcgen::SanType::DnsName(node.try_into().map_err(|e| bad(format!("{e}")))?),
        rcgen::SanType::IpAddress(ip.parse().map_err(|e| bad(format!("node IP {ip}: {e}")))?),
    ];
    node_request(node, sans)
}

/// Submits a client CSR for this node through `client` and waits for the signed
/// certificate.
#[tracing::instrument(skip(client), fields(node = %node))]
pub async fn request_certificate(
    client: &Client,
    node: &str,
    wait: Duration,
) -> Result<Credentials, JoinError> {
    let (key, pem) = new_request(node)?;
    let name = format!("node-csr-{node}-{:08x}", rand::random::<u32>());
    let usages = ["digital signature", "key encipherment", "client auth"];
    submit(
        client,
        &name,
        &pem,
        &key,
        KUBELET_CLIENT_SIGNER,
        &usages,
        wait,
    )
    .await
}

/// Creates CSR `name` and waits until it is signed (or refused, or `wait` passes).
async fn submit(
    client: &Client,
    name: &str,
    pem: &str,
    key: &rcgen::KeyPair,
    signer: &str,
    usages: &[&str],
    wait: Duration,
) -> Result<Credentials, JoinError> {
    let name = name.to_string();
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(pem.as_bytes().to_vec()),
            signer_name: signer.into(),
            usages: Some(usages.iter().map(|u| u.to_string()).collect()),
            ..Default::default()
        },
        status: None,
    };
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    api.create(&PostParams::default(), &csr)
        .await
        .map_err(JoinError::Submit)?;
    tracing::info!(csr = %name, "submitted certificate signing request");
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Ok(csr) = api.get(&name).await {
            let status = csr.status.unwrap_or_default();
            for c in status.conditions.unwrap_or_default() {
                if matches!(c.type_.as_str(), "Denied" | "Failed") && c.status == "True" {
                    return Err(JoinError::Refused {
                        name,
                        reason: format!(
                            "{}: {}",
                            c.type_.to_lowercase(),
                            c.message.unwrap_or_default()
                        ),
                    });
                }
            }
            if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
                let cert_pem = String::from_utf8(cert.0)
                    .map_err(|_| JoinError::BadCertificate("not utf-8 PEM".into()))?;
                return Credentials::parse(&cert_pem, &key.serialize_pem());
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(JoinError::Timeout(name));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The node's credentials: the stored ones when usable, else a fresh certificate
/// requested with the bootstrap token (or, when the stored one is merely due for
/// rotation, with the stored one). Returns them and whether a CSR was submitted.
pub async fn ensure_credentials(cfg: &JoinConfig) -> Result<(Credentials, bool), JoinError> {
    let now = OffsetDateTime::now_utc();
    if let Some(c) = load_valid(&cfg.state_dir, &cfg.node_name, now) {
        return Ok((c, false));
    }
    let (crt, key) = credential_paths(&cfg.state_dir);
    let stored = std::fs::read_to_string(&crt)
        .ok()
        .zip(std::fs::read_to_string(&key).ok())
        .and_then(|(c, k)| Credentials::parse(&c, &k).ok())
        .filter(|c| now < c.not_after && c.common_name == format!("system:node:{}", cfg.node_name));
    let client = match (stored, &cfg.token) {
        (Some(c), _) => client_for_cert(&cfg.server, &cfg.ca_pem, &c).await?,
        (None, Some(t)) => client_for_token(&cfg.server, &cfg.ca_pem, t).await?,
        (None, None) => return Err(JoinError::NoCredentials(cfg.state_dir.clone())),
    };
    let c = request_certificate(&client, &cfg.node_name, cfg.wait).await?;
    store(&cfg.state_dir, &c)?;
    Ok((c, true))
}

/// The current API client, swapped when the certificate is rotated. Long-lived users
/// (watches) compare [`ClientCell::generation`] to know when to reconnect.
#[derive(Clone)]
pub struct ClientCell(Arc<RwLock<(Client, u64)>>);

impl ClientCell {
    pub fn new(c: Client) -> ClientCell {
        ClientCell(Arc::new(RwLock::new((c, 0))))
    }

    /// The client to use for the next request.
    pub fn get(&self) -> Client {
        self.0.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    /// How many times the client was replaced.
    pub fn generation(&self) -> u64 {
        self.0.read().unwrap_or_else(|e| e.into_inner()).1
    }

    fn set(&self, c: Client) {
        let mut g = self.0.write().unwrap_or_else(|e| e.into_inner());
        g.1 += 1;
        g.0 = c;
    }
}

/// Renews `current` when [`rotation_due`], storing the new pair and swapping `cell`'s
/// client. Returns the credentials in use afterwards.
pub async fn rotate_if_due(
    cfg: &JoinConfig,
    current: Credentials,
    cell: &ClientCell,
) -> Result<Credentials, JoinError> {
    if !rotation_due(
        current.not_before,
        current.not_after,
        OffsetDateTime::now_utc(),
    ) {
        return Ok(current);
    }
    tracing::info!(not_after = %current.not_after, "rotating the kubelet client certificate");
    let fresh = request_certificate(&cell.get(), &cfg.node_name, cfg.wait).await?;
    store(&cfg.state_dir, &fresh)?;
    cell.set(client_for_cert(&cfg.server, &cfg.ca_pem, &fresh).await?);
    Ok(fresh)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn rotation_is_due_after_seventy_percent_of_the_lifetime() {
        let nb = datetime!(2026-01-01 00:00 UTC);
        let na = datetime!(2026-01-11 00:00 UTC); // ten days
        assert!(!rotation_due(nb, na, nb));
        assert!(!rotation_due(nb, na, datetime!(2026-01-07 23:59 UTC)));
        assert!(rotation_due(nb, na, datetime!(2026-01-08 00:00 UTC)));
        assert!(rotation_due(nb, na, datetime!(2026-02-01 00:00 UTC)));
        // An empty or inverted validity is always due.
        assert!(rotation_due(na, nb, nb));
        assert!(rotation_due(nb, nb, nb));
    }

    fn signed(node: &str, before: i64, after: i64) -> (String, String) {
        let ca = crate::pki::issue::new_ca("kubernetes").expect("ca");
        let (key, pem) = new_request(node).expect("csr");
        let mut req = rcgen::CertificateSigningRequestParams::from_pem(&pem).expect("parse csr");
        let now = OffsetDateTime::now_utc();
        req.params.not_before = now - time::Duration::days(before);
        req.params.not_after = now + time::Duration::days(after);
        let cert = req.signed_by(&ca.cert, &ca.key).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn stored_credentials_are_reused_only_when_valid_for_this_node_and_not_due() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = OffsetDateTime::now_utc();
        assert_eq!(load_valid(dir.path(), "w1", now), None);
        let (cert, key) = signed("w1", 1, 365);
        let c = Credentials::parse(&cert, &key).expect("parse");
        assert_eq!(c.common_name, "system:node:w1");
        store(dir.path(), &c).expect("store");
        let (_, key_path) = credential_paths(dir.path());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path)
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_valid(dir.path(), "w1", now), Some(c));
        assert_eq!(
            load_valid(dir.path(), "w2", now),
            None,
            "another node's cert"
        );
        // Nine days used of ten: due, so not reused.
        let (cert, key) = signed("w1", 9, 1);
        store(dir.path(), &Credentials::parse(&cert, &key).expect("parse")).expect("store");
        assert_eq!(load_valid(dir.path(), "w1", now), None);
    }

    #[test]
    fn certificate_requests_name_the_node_in_the_nodes_group() {
        let (_, pem) = new_request("worker-7").expect("csr");
        let params = rcgen::CertificateSigningRequestParams::from_pem(&pem).expect("parse");
        let dn = &params.params.distinguished_name;
        assert_eq!(
            dn.get(&rcgen::DnType::CommonName),
            Some(&rcgen::DnValue::Utf8String("system:node:worker-7".into()))
        );
        assert!(crate::controllers::csr::approvable(
            KUBELET_CLIENT_SIGNER,
            "system:bootstrap:abcdef",
            &["system:bootstrappers".into()],
            &[
                "digital signature".into(),
                "key encipherment".into(),
                "client auth".into()
            ],
            "system:node:worker-7",
            &["system:nodes".into()],
        ));
    }
}
