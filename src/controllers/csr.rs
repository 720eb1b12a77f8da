//! The CSR approver and signer: auto-approves kubelet client CSRs from bootstrap tokens
//! (and nodes renewing their own) and kubelet serving CSRs from nodes, and signs approved
//! CSRs with the cluster CA.
//!
//! How: keyed by CSR name. Approval needs signer `kubernetes.io/kube-apiserver-client-kubelet`,
//! a subject `O=system:nodes, CN=system:node:<name>`, client-auth usages only, and a
//! requester in `system:bootstrappers` (first join) or the node itself (renewal); the
//! `Approved` condition is written through the `approval` subresource. Signing covers
//! approved CSRs for `kube-apiserver-client-kubelet` and `kube-apiserver-client`: the
//! request's public key and subject are kept, usages become digital signature + key
//! encipherment + client auth, validity `spec.expirationSeconds` clamped to 10 minutes ..
//! one year (kube-controller-manager's `--cluster-signing-duration`), and the PEM goes to
//! `status.certificate`.
//!
//! Refusals, written as a `Denied` or `Failed` condition so the requester learns why:
//! - a bootstrap token asking for the name of a Node whose kubelet is alive (its Lease or
//!   Ready heartbeat is within the node monitor grace period) is denied (`NodeNameInUse`):
//!   a token baked into an image must not let its holder become an existing node;
//! - a subject in `system:masters` is never signed (`SignerValidationFailure`), nor a
//!   `kube-apiserver-client-kubelet` request whose subject is not a node.
//!
//! Kubelet serving certificates (`kubernetes.io/kubelet-serving`) are approved only for
//! the node itself (never a bootstrap token), with server-auth usages, and SANs that are the
//! node's name or addresses as its Node object lists them (a request naming another
//! machine's address is denied, `ForeignSubjectAltNames`); they are signed with server-auth
//! usage and the requested SANs. Client certificates are signed without SANs.
//!
//! Limits: no SubjectAccessReview (the group membership alone decides).

use std::path::PathBuf;

use base64::Engine;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, Patch, PatchParams};
use rcgen::{CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose};
use serde_json::json;

use super::runtime::{get, Requeue};
use super::{Controller, Ctx, ReconcileError};
use crate::pki::issue::Authority;

/// The controller-manager's row: what wakes it — a CertificateSigningRequest; it waits only for its own cache, so an apiserver without the kind does not stall the other controllers.
pub const CONTROLLER: Controller = Controller {
    name: "csr",
    triggers: |t, q| {
        t.own::<CertificateSigningRequest>(q);
    },
    synced: |ctx| {
        Box::pin(async move {
            let _ = ctx.csrs.wait_until_ready().await;
        })
    },
    reconcile: |ctx, _, key| Box::pin(async move { reconcile(&ctx, &key).await }),
};

const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
const CLIENT: &str = "kubernetes.io/kube-apiserver-client";
const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";

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
    let usages_ok = |purpose: &str| {
        usages
            .iter()
            .all(|u| matches!(u.as_str(), "digital signature" | "key encipherment") || u == purpose)
            && usages.iter().any(|u| u == purpose)
    };
    let subject_ok = cn.starts_with("system:node:") && orgs == ["system:nodes"];
    match signer {
        KUBELET_CLIENT => {
            let requester_ok = groups.iter().any(|g| g == "system:bootstrappers") || username == cn;
            usages_ok("client auth") && subject_ok && requester_ok
        }
        // Only the node itself, never a bootstrap token; its SANs are checked against the
        // Node by `foreign_sans`.
        KUBELET_SERVING => usages_ok("server auth") && subject_ok && username == cn,
        _ => false,
    }
}

/// Why a `kubelet-serving` request names what is not its node's, if it does: every DNS
/// SAN must be the node's name or one of its addresses, every IP SAN one of its
/// addresses, and nothing else (no URIs, no e-mail).
pub fn foreign_sans(node: &str, sans: &[rcgen::SanType], addresses: &[String]) -> Option<String> {
    if sans.is_empty() {
        return Some("a serving certificate needs a DNS name or an IP address".into());
    }
    for san in sans {
        let ok = match san {
            rcgen::SanType::DnsName(d) => {
                let d = d.as_str();
                d == node || addresses.iter().any(|a| a == d)
            }
            rcgen::SanType::IpAddress(ip) => addresses.iter().any(|a| *a == ip.to_string()),
            _ => false,
        };
        if !ok {
            return Some(format!(
                "{san:?} is not an address of node {node} ({})",
                addresses.join(", ")
            ));
        }
    }
    None
}

fn decoded_request(csr: &CertificateSigningRequest) -> Option<String> {
    String::from_utf8(csr.spec.request.0.clone()).ok()
}

/// The longest and shortest certificate the signer issues.
const MAX_VALIDITY_SECS: i64 = 365 * 24 * 3600;
const MIN_VALIDITY_SECS: i64 = 600;

/// The validity the signer gives a request for `expiration` seconds.
fn validity_secs(expiration: Option<i32>) -> i64 {
    expiration
        .map(i64::from)
        .unwrap_or(MAX_VALIDITY_SECS)
        .clamp(MIN_VALIDITY_SECS, MAX_VALIDITY_SECS)
}

/// Why the signer will not sign a request for this subject, if it will not.
pub fn signer_refusal(signer: &str, cn: &str, orgs: &[String]) -> Option<String> {
    if orgs.iter().any(|o| o == "system:masters") {
        return Some("the signer does not issue certificates for system:masters".into());
    }
    if (signer == KUBELET_CLIENT || signer == KUBELET_SERVING)
        && !(cn.starts_with("system:node:") && orgs == ["system:nodes"])
    {
        return Some(format!(
            "{signer} signs only O=system:nodes, CN=system:node:<name>, not {cn:?} {orgs:?}"
        ));
    }
    None
}

fn sign(files: &SigningFiles, signer: &str, pem: &str, expiration: Option<i32>) -> Option<String> {
    let ca = Authority::from_pem(
        &std::fs::read_to_string(&files.cert).ok()?,
        &std::fs::read_to_string(&files.key).ok()?,
    )
    .ok()?;
    let mut req = CertificateSigningRequestParams::from_pem(pem).ok()?;
    let now = time::OffsetDateTime::now_utc();
    let secs = validity_secs(expiration);
    req.params.not_before = now - time::Duration::minutes(5);
    req.params.not_after = now + time::Duration::seconds(secs);
    req.params.is_ca = IsCa::ExplicitNoCa;
    req.params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    req.params.extended_key_usages = if signer == KUBELET_SERVING {
        vec![ExtendedKeyUsagePurpose::ServerAuth]
    } else {
        // Client certificates carry no SANs the requester chose.
        req.params.subject_alt_names.clear();
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    req.params.use_authority_key_identifier_extension = true;
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    req.params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let cert = req.signed_by(&ca.cert, &ca.key).ok()?;
    Some(cert.pem())
}

/// Approves and/or signs one CSR.
#[tracing::instrument(skip(ctx))]
pub async fn reconcile(ctx: &Ctx, key: &str) -> Result<Requeue, ReconcileError> {
    let Some(csr) = get(&ctx.csrs, key) else {
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
        let username = spec.username.as_deref().unwrap_or_default();
        if approvable(&spec.signer_name, username, &groups, &usages, &cn, &orgs) {
            let node = cn.trim_start_matches("system:node:");
            if let Some(age) = live_node(ctx, node).filter(|_| username != cn) {
                let message = format!(
                    "node {node} is alive (heartbeat {age} s ago): a bootstrap token cannot \
                     take over its name"
                );
                tracing::warn!(csr = key, %node, "denied: the node name is in use");
                let c = condition("Denied", "NodeNameInUse", &message);
                return add_condition(&api, "approval", key, &conds, c)
                    .await
                    .map(|()| None);
            }
            if spec.signer_name == KUBELET_SERVING {
                let Some(n) = get(&ctx.nodes, node) else {
                    // The kubelet registers its Node first; the cache may not have it yet.
                    return Ok(Some(std::time::Duration::from_secs(2)));
                };
                let addresses: Vec<String> = n
                    .status
                    .as_ref()
                    .and_then(|s| s.addresses.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| a.address)
                    .collect();
                let sans = CertificateSigningRequestParams::from_pem(&pem)
                    .map(|r| r.params.subject_alt_names)
                    .unwrap_or_default();
                if let Some(why) = foreign_sans(node, &sans, &addresses) {
                    tracing::warn!(csr = key, %node, %why, "denied: foreign serving names");
                    let c = condition("Denied", "ForeignSubjectAltNames", &why);
                    return add_condition(&api, "approval", key, &conds, c)
                        .await
                        .map(|()| None);
                }
            }
            let c = condition(
                "Approved",
                "AutoApproved",
                "Auto approving kubelet certificate after SubjectAccessReview.",
            );
            add_condition(&api, "approval", key, &conds, c).await?;
            tracing::info!(csr = key, %cn, "approved");
        }
        return Ok(None);
    }
    if ![KUBELET_CLIENT, CLIENT, KUBELET_SERVING].contains(&spec.signer_name.as_str()) {
        return Ok(None);
    }
    let Some(files) = &ctx.opts.signing else {
        return Ok(None);
    };
    if let Some(why) =
        subject(&pem).and_then(|(cn, orgs)| signer_refusal(&spec.signer_name, &cn, &orgs))
    {
        tracing::warn!(csr = key, %why, "not signed");
        let c = condition("Failed", "SignerValidationFailure", &why);
        return add_condition(&api, "status", key, &conds, c)
            .await
            .map(|()| None);
    }
    let Some(cert) = sign(files, &spec.signer_name, &pem, spec.expiration_seconds) else {
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

/// How long ago the Node `name`'s kubelet last showed life, when that is within the node
/// monitor grace period.
fn live_node(ctx: &Ctx, name: &str) -> Option<i64> {
    let node = get(&ctx.nodes, name)?;
    let last = super::nodelifecycle::last_heartbeat(ctx, &node)?;
    let age = jiff::Timestamp::now().duration_since(last).as_secs();
    let grace = ctx.opts.node_monitor_grace_period.as_secs() as i64;
    (age <= grace).then_some(age)
}

fn condition(type_: &str, reason: &str, message: &str) -> serde_json::Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    json!({"type": type_, "status": "True", "reason": reason, "message": message,
           "lastUpdateTime": now, "lastTransitionTime": now})
}

fn merged(
    conds: &[k8s_openapi::api::certificates::v1::CertificateSigningRequestCondition],
    c: serde_json::Value,
) -> serde_json::Value {
    let mut all: Vec<_> = conds
        .iter()
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect();
    all.push(c);
    json!({"status": {"conditions": all}})
}

fn status_err(key: &str, source: kube::Error) -> ReconcileError {
    ReconcileError::Status {
        kind: "CertificateSigningRequest",
        key: key.into(),
        source,
    }
}

/// Adds a condition through `subresource`: `approval` for `Approved`/`Denied`, `status`
/// (where signers write) for `Failed`.
async fn add_condition(
    api: &Api<CertificateSigningRequest>,
    subresource: &str,
    key: &str,
    conds: &[k8s_openapi::api::certificates::v1::CertificateSigningRequestCondition],
    c: serde_json::Value,
) -> Result<(), ReconcileError> {
    let patch = Patch::Merge(merged(conds, c));
    api.patch_subresource(subresource, key, &PatchParams::default(), &patch)
        .await
        .map(|_| ())
        .map_err(|e| status_err(key, e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn validity_is_clamped_to_ten_minutes_through_a_year() {
        assert_eq!(super::validity_secs(None), 365 * 24 * 3600);
        assert_eq!(super::validity_secs(Some(i32::MAX)), 365 * 24 * 3600);
        assert_eq!(super::validity_secs(Some(60)), 600);
        assert_eq!(super::validity_secs(Some(-5)), 600);
        assert_eq!(super::validity_secs(Some(3600)), 3600);
    }

    #[test]
    fn the_signer_refuses_masters_and_non_node_kubelet_subjects() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(super::signer_refusal(super::CLIENT, "eve", &s(&["system:masters"])).is_some());
        assert!(super::signer_refusal(
            super::KUBELET_CLIENT,
            "system:node:w1",
            &s(&["system:nodes", "system:masters"])
        )
        .is_some());
        assert!(
            super::signer_refusal(super::KUBELET_CLIENT, "eve", &s(&["system:nodes"])).is_some()
        );
        assert!(super::signer_refusal(
            super::KUBELET_CLIENT,
            "system:node:w1",
            &s(&["system:nodes"])
        )
        .is_none());
        assert!(super::signer_refusal(super::CLIENT, "alice", &s(&["dev"])).is_none());
    }

    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn serving_csrs_come_only_from_the_node_and_name_only_its_addresses() {
        let usages = s(&["digital signature", "server auth"]);
        let nodes = s(&["system:nodes"]);
        let cn = "system:node:w1";
        assert!(approvable(KUBELET_SERVING, cn, &nodes, &usages, cn, &nodes));
        let boot = s(&["system:bootstrappers"]);
        assert!(!approvable(
            KUBELET_SERVING,
            "system:bootstrap:abcdef",
            &boot,
            &usages,
            cn,
            &nodes
        ));
        assert!(!approvable(
            KUBELET_SERVING,
            "system:node:w2",
            &nodes,
            &usages,
            cn,
            &nodes
        ));
        let client = s(&["digital signature", "client auth"]);
        assert!(!approvable(
            KUBELET_SERVING,
            cn,
            &nodes,
            &client,
            cn,
            &nodes
        ));

        let addresses = s(&["10.0.0.5", "w1"]);
        let dns = |d: &str| rcgen::SanType::DnsName(d.try_into().expect("dns"));
        let ip = |a: &str| rcgen::SanType::IpAddress(a.parse().expect("ip"));
        assert_eq!(
            foreign_sans("w1", &[dns("w1"), ip("10.0.0.5")], &addresses),
            None
        );
        let e = foreign_sans("w1", &[dns("w1"), ip("10.0.0.6")], &addresses).expect("refused");
        assert!(
            e.contains("10.0.0.6") && e.contains("not an address of node w1"),
            "{e}"
        );
        assert!(foreign_sans("w1", &[dns("kubernetes.default")], &addresses).is_some());
        assert!(foreign_sans("w1", &[], &addresses).is_some());
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
        let pem = sign(&files, KUBELET_CLIENT, &csr, None).expect("signed");
        let der = crate::pki::inspect::pem_to_der(&pem).expect("der");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        assert!(cert.subject().to_string().contains("system:node:w1"));
        let ca_der = crate::pki::inspect::pem_to_der(&ca.cert.pem()).expect("der");
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).expect("parse");
        assert!(cert.verify_signature(Some(ca_cert.public_key())).is_ok());

        // A serving request keeps its SANs and gets server auth.
        params.subject_alt_names = vec![rcgen::SanType::IpAddress("10.0.0.5".parse().expect("ip"))];
        let csr = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let pem = sign(&files, KUBELET_SERVING, &csr, None).expect("signed");
        assert!(crate::kubelet::join::names_ip(&pem, "10.0.0.5"));
        let der = crate::pki::inspect::pem_to_der(&pem).expect("der");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let eku = cert.extended_key_usage().expect("eku").expect("present");
        assert!(eku.value.server_auth && !eku.value.client_auth);
        // A client request's SANs are dropped.
        let pem = sign(&files, KUBELET_CLIENT, &csr, None).expect("signed");
        assert!(!crate::kubelet::join::names_ip(&pem, "10.0.0.5"));
    }
}
