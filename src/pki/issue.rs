//! Issuing certificates with rcgen: self-signed CAs and CA-signed leaves.
//!
//! Every key is ECDSA P-256 (fast to generate, accepted by Go, OpenSSL and rustls), written
//! as PKCS#8 PEM. Validity follows kubeadm: CAs for 10 years, leaves for 1 year, both
//! back-dated by 5 minutes to absorb clock skew between machines. A leaf's expiry is shown
//! by `kimg cluster certs`, and an expired or missing leaf is re-issued by
//! `kimg cluster certs --issue` from the CA that stays valid.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::PkiError;

/// CA certificate lifetime.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// Leaf certificate lifetime.
pub const LEAF_VALIDITY: Duration = Duration::days(365);
const BACKDATE: Duration = Duration::minutes(5);

/// What a leaf certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    /// etcd members use one certificate both to serve and to dial their peers.
    ServerAndClient,
}

/// A subject alternative name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum San {
    Dns(String),
    Ip(IpAddr),
}

/// A CA that can sign: its certificate (for issuer fields) and key.
pub struct Authority {
    pub cert: Certificate,
    pub key: KeyPair,
}

impl Authority {
    /// Rebuilds a signing authority from PEM files on disk.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Authority, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(PkiError::Rcgen)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem).map_err(PkiError::Rcgen)?;
        // Re-signing the parsed parameters yields an issuer with the same subject and key,
        // which is all a leaf's issuer name and authority key identifier depend on.
        let cert = params.self_signed(&key).map_err(PkiError::Rcgen)?;
        Ok(Authority { cert, key })
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // keep it positive in DER
    SerialNumber::from_slice(&bytes)
}

fn base_params(cn: &str, orgs: &[&str], validity: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    for o in orgs {
        dn.push(DnType::OrganizationName, *o);
    }
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    params.serial_number = Some(random_serial());
    params
}

/// Creates a self-signed CA (`CN=<cn>`), returning it with its key.
pub fn new_ca(cn: &str) -> Result<Authority, PkiError> {
    let key = KeyPair::generate().map_err(PkiError::Rcgen)?;
    let mut params = base_params(cn, &[], CA_VALIDITY);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    let cert = params.self_signed(&key).map_err(PkiError::Rcgen)?;
    Ok(Authority { cert, key })
}

/// Issues a leaf certificate and its fresh key, signed by `ca`.
pub fn new_leaf(
    ca: &Authority,
    cn: &str,
    orgs: &[&str],
    sans: &[San],
    usage: Usage,
) -> Result<(Certificate, KeyPair), PkiError> {
    let key = KeyPair::generate().map_err(PkiError::Rcgen)?;
    let mut params = base_params(cn, orgs, LEAF_VALIDITY);
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match usage {
        Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Usage::ServerAndClient => {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        }
    };
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s {
            San::Dns(d) => d
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(PkiError::Rcgen),
            San::Ip(ip) => Ok(SanType::IpAddress(*ip)),
        })
        .collect::<Result<_, _>>()?;
    let cert = params
        .signed_by(&key, &ca.cert, &ca.key)
        .map_err(PkiError::Rcgen)?;
    Ok((cert, key))
}
