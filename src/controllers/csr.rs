//! The CSR approver and signer: auto-approves kubelet client CSRs from bootstrap tokens
//! (and nodes renewing their own), and signs approved client CSRs with the cluster CA.
//!
//! How: keyed by CSR name. Approval needs signer `kubernetes.io/kube-apiserver-client-kubelet`,
//! a subject `O=system:nodes, CN=system:node:<name>`, client-auth usages only, and a
//! requester in `system:bootstrappers` (first join) or the node itself (renewal); the
//! `Approved` condition is written through the `approval` subresource. Signing covers
//! approved CSRs for `kube-apiserver-client-kubelet` and `kube-apiserver-client`: the
//! request's public key and subject are kept, usages become digital signature + key
//! encipherment + client auth, validity `spec.expirationSeconds` (default one year), and the
//! PEM goes to `status.certificate`.
//!
//! Limits: no SubjectAccessReview (the group membership alone decides), no
//! `kubelet-serving` signer.

use std::path::PathBuf;

use base64::Engine;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, Patch, PatchParams};
use rcgen::{CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose};
use serde_json::json;

use super::runtime::{get, Requeue};
use super::{Ctx, ReconcileError};
use crate::pki::issue::Authority;

const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
const CLIENT: &str = "kubernetes.io/kube-apiserver-client";

/// Where the cluster CA lives (`ca.crt`, `ca.key`).
#[derive(Debug, Clone)]
pub struct SigningFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Subject (CN, O list) of a PEM CSR, or `None` when it does not parse.
fn subject(pem: &str) -> Option<(String, Vec<String>)> {
    let params = CertificateSigningRequestParams::from_pem(pem).ok()?;
    let dn = &params.params.distinguished_name;
    let text = |v: &rcgen::DnValue| match v {
        rcgen::DnValue::Utf8String(s) => s.clone(),
        rcgen::DnValue::PrintableString(s) => s.as_str().to_string(),
        other => format!("{other:?}"),
    };
    let cn = dn.get(&rcgen::DnType::CommonName).map(text)?;
    let orgs = dn
        .iter()
        .filter(|(t, _)| **t == rcgen::DnType::OrganizationName)
        .map(|(_, v)| text(v))
        .collect();
    Some((cn, orgs))
}

/// Whether a CSR qualifies for automatic approval (pure, for tests).
pub fn approvable(
    signer: &str,
    username: &str,
    groups: &[String],
    usages: &[String],
    cn: &str,
    orgs: &[String],
) -> bool {
    let usages_ok = usages.iter().all(|u| {
        matches!(
            u.as_str(),
            "digital signature" | "key encipherment" | "client auth"
        )
    }) && usages.iter().any(|u| u == "client auth");
    let subject_ok = cn.starts_with("system:node:") && orgs == ["system:nodes"];
    let requester_ok = groups.iter().any(|g| g == "system:bootstrappers") || username == cn;
    signer == KUBELET_CLIENT && usages_ok && subject_ok && requester_ok
}

fn decoded_request(csr: &CertificateSigningRequest) -> Option<String> {
    String::from_utf8(csr.spec.request.0.clone()).ok()
}

fn sign(files: &SigningFiles, pem: &str, expiration: Option<i32>) -> Option<String> {
    let ca = Authority::from_pem(
        &std::fs::read_to_string(&files.cert).ok()?,
        &std::fs::read_to_string(&files.key).ok()?,
    )
    .ok()?;
    let mut req = CertificateSigningRequestParams::from_pem(pem).ok()?;
    let now = time::OffsetDateTime::now_utc();
    let secs = i64::from(expiration.unwrap_or(365 * 24 * 3600).max(600));
    req.params.not_before = now - time::Duration::minutes(5);
    req.params.not_after = now + time::Duration::seconds(secs);
    req.params.is_ca = IsCa::ExplicitNoCa;
    req.params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    req.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    req.params.use_authority_key_identifier_extension = true;
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    req.params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let cert = req.signed_by(&ca.cert, &ca.key).ok()?;
    Some(cert.pem())
}

/// Approves and/or signs one CSR.
#[tracing::instrument(skip(ctx, csrs))]
pub async fn reconcile(
    ctx: &Ctx,
    csrs: &kube::runtime::reflector::Store<CertificateSigningRequest>,
    key: &str,
) -> Result<Requeue, ReconcileError> {
    let Some(csr) = get(csrs, key) else {
        return Ok(None);
    };
    let conds = csr
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let approved = conds
        .iter()
        .any(|c| c.type_ == "Approved" && c.status == "True");
    let denied = conds
        .iter()
        .any(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True");
    if denied || csr.status.as_ref().is_some_and(|s| s.certificate.is_some()) {
        return Ok(None);
    }
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    let spec = &csr.spec;
    let Some(pem) = decoded_request(&csr) else {
        return Ok(None);
    };
    if !approved {
        let Some((cn, orgs)) = subject(&pem) else {
            return Ok(None);
        };
        let groups = spec.groups.clone().unwrap_or_default();
        let usages = spec.usages.clone().unwrap_or_default();
        if approvable(
            &spec.signer_name,
            spec.username.as_deref().unwrap_or_default(),
            &groups,
            &usages,
            &cn,
            &orgs,
        ) {
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let mut all: Vec<_> = conds
                .iter()
                .filter_map(|c| serde_json::to_value(c).ok())
                .collect();
            all.push(
                json!({"type": "Approved", "status": "True", "reason": "AutoApproved",
                "message": "Auto approving kubelet client certificate after SubjectAccessReview.",
                "lastUpdateTime": now, "lastTransitionTime": now}),
            );
            api.patch_approval(
                key,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {"conditions": all}})),
            )
            .await
            .map_err(|source| ReconcileError::Status {
                kind: "CertificateSigningRequest",
                key: key.into(),
                source,
            })?;
            tracing::info!(csr = key, %cn, "approved");
        }
        return Ok(None);
    }
    if spec.signer_name != KUBELET_CLIENT && spec.signer_name != CLIENT {
        return Ok(None);
    }
    let Some(files) = &ctx.opts.signing else {
        return Ok(None);
    };
    let Some(cert) = sign(files, &pem, spec.expiration_seconds) else {
        tracing::warn!(csr = key, "cannot sign: bad request or CA files");
        return Ok(None);
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_bytes());
    api.patch_status(
        key,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"certificate": b64}})),
    )
    .await
    .map_err(|source| ReconcileError::Status {
        kind: "CertificateSigningRequest",
        key: key.into(),
        source,
    })?;
    tracing::info!(csr = key, "signed");
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn bootstrap_kubelet_client_csrs_are_approved_and_others_not() {
        let usages = s(&["digital signature", "key encipherment", "client auth"]);
        let nodes = s(&["system:nodes"]);
        let boot = s(&["system:bootstrappers", "system:authenticated"]);
        assert!(approvable(
            KUBELET_CLIENT,
            "system:bootstrap:abcdef",
            &boot,
            &usages,
            "system:node:w1",
            &nodes
        ));
        assert!(approvable(
            KUBELET_CLIENT,
            "system:node:w1",
            &s(&["system:nodes"]),
            &usages,
            "system:node:w1",
            &nodes
        ));
        assert!(!approvable(
            KUBELET_CLIENT,
            "mallory",
            &s(&["system:authenticated"]),
            &usages,
            "system:node:w1",
            &nodes
        ));
        assert!(!approvable(
            KUBELET_CLIENT,
            "system:bootstrap:abcdef",
            &boot,
            &s(&["server auth"]),
            "system:node:w1",
            &nodes
        ));
        assert!(!approvable(
            KUBELET_CLIENT,
            "system:bootstrap:abcdef",
            &boot,
            &usages,
            "admin",
            &s(&["system:masters"])
        ));
        assert!(!approvable(
            CLIENT,
            "system:bootstrap:abcdef",
            &boot,
            &usages,
            "system:node:w1",
            &nodes
        ));
    }

    #[test]
    fn a_signed_csr_chains_to_the_cluster_ca_with_its_subject() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = crate::pki::issue::new_ca("kubernetes").expect("ca");
        let files = SigningFiles {
            cert: dir.path().join("ca.crt"),
            key: dir.path().join("ca.key"),
        };
        std::fs::write(&files.cert, ca.cert.pem()).expect("write");
        std::fs::write(&files.key, ca.key.serialize_pem()).expect("write");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:nodes");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "system:node:w1");
        let csr = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        assert_eq!(
            subject(&csr),
            Some(("system:node:w1".into(), s(&["system:nodes"])))
        );
        let pem = sign(&files, &csr, None).expect("signed");
        let der = crate::pki::inspect::pem_to_der(&pem).expect("der");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        assert!(cert.subject().to_string().contains("system:node:w1"));
        let ca_der = crate::pki::inspect::pem_to_der(&ca.cert.pem()).expect("der");
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).expect("parse");
        assert!(cert.verify_signature(Some(ca_cert.public_key())).is_ok());
    }
}
