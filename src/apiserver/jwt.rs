//! Service-account tokens: ES256 JSON Web Tokens signed with the cluster's `sa.key`.
//!
//! What: [`SaKeys::sign`] mints a token with the claims Kubernetes puts in bound tokens
//! (`iss`, `sub` = `system:serviceaccount:<ns>:<name>`, `aud`, `iat`, `nbf`, `exp`, `jti`,
//! and `kubernetes.io: {namespace, serviceaccount: {name, uid}}`); [`SaKeys::verify`]
//! checks the signature with `sa.pub`, the issuer, the audience and the time window, and
//! returns the claims. Legacy secret-based tokens (issuer `kubernetes/serviceaccount`,
//! `kubernetes.io/serviceaccount/*` claims) verify too.
//! How: `ring` ECDSA P-256 with fixed-size (r‖s) signatures, which is JWS's ES256 encoding;
//! the `kid` header is the base64url SHA-256 of the public key's DER, as kube-apiserver
//! computes it. A token whose signature was checked once is remembered by its SHA-256
//! (its time window is still checked on every use), so a client's requests after the
//! first cost no ECDSA verification. Limits: one signing key (no rotation list).

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The issuer and default audience of tokens this apiserver mints.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The issuer of legacy (Secret-based) service-account tokens.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

/// Why a key could not be loaded or a token not be verified.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("cannot read the service-account key {path}: {reason}")]
    ReadKey { path: String, reason: String },
    #[error("the token is not a JWT")]
    Malformed,
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token is not for this cluster ({0})")]
    Claims(&'static str),
    #[error("the token has expired")]
    Expired,
}

/// The service-account signing key pair (the private half only where tokens are minted).
pub struct SaKeys {
    signer: Option<EcdsaKeyPair>,
    public: Vec<u8>,
    kid: String,
    /// The claims of tokens whose signature was already checked, by the token's SHA-256:
    /// an ECDSA verification costs more than the rest of a small request. The time window
    /// is still checked on every use. Cleared when it holds [`VERIFIED_LIMIT`] tokens.
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], Value>>,
}

const VERIFIED_LIMIT: usize = 10_000;

/// Who a verified token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaClaims {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

fn read_err(path: &Path, reason: impl ToString) -> JwtError {
    JwtError::ReadKey {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Seconds since the epoch.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl SaKeys {
    /// Loads `sa.pub` and, if present, `sa.key` from a cluster's `secrets/pki`.
    pub fn load(pki_dir: &Path) -> Result<SaKeys, JwtError> {
        let pub_path = pki_dir.join("sa.pub");
        let spki = SubjectPublicKeyInfoDer::from_pem_file(&pub_path)
            .map_err(|e| read_err(&pub_path, e))?;
        let (_, info) = <x509_parser::x509::SubjectPublicKeyInfo as x509_parser::prelude::FromDer<_>>::from_der(&spki)
            .map_err(|e| read_err(&pub_path, e))?;
        let public = info.subject_public_key.data.to_vec();
        let key_path = pki_dir.join("sa.key");
        let signer = if key_path.exists() {
            let der =
                PrivatePkcs8KeyDer::from_pem_file(&key_path).map_err(|e| read_err(&key_path, e))?;
            let pair = EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                der.secret_pkcs8_der(),
                &SystemRandom::new(),
            )
            .map_err(|e| read_err(&key_path, e))?;
            if pair.public_key().as_ref() != public.as_slice() {
                return Err(read_err(&key_path, "sa.key does not match sa.pub"));
            }
            Some(pair)
        } else {
            None
        };
        Ok(SaKeys {
            signer,
            public,
            kid: B64.encode(Sha256::digest(spki.as_ref())),
            verified: Default::default(),
        })
    }

    /// Mints a token for a service account, valid for `ttl_seconds` from now.
    pub fn sign(
        &self,
        sa: &SaClaims,
        audiences: &[String],
        ttl_seconds: i64,
    ) -> Result<(String, i64), JwtError> {
        let signer = self.signer.as_ref().ok_or(JwtError::Signature)?;
        let now = unix_now();
        let exp = now + ttl_seconds;
        let aud: Vec<String> = if audiences.is_empty() {
            vec![ISSUER.to_string()]
        } else {
            audiences.to_vec()
        };
        let header = json!({"alg": "ES256", "kid": self.kid});
        let claims = json!({
            "aud": aud, "exp": exp, "iat": now, "nbf": now, "iss": ISSUER,
            "jti": super::object::new_uid(),
            "kubernetes.io": {"namespace": sa.namespace,
                              "serviceaccount": {"name": sa.name, "uid": sa.uid}},
            "sub": format!("system:serviceaccount:{}:{}", sa.namespace, sa.name),
        });
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = signer
            .sign(&SystemRandom::new(), input.as_bytes())
            .map_err(|_| JwtError::Signature)?;
        Ok((format!("{input}.{}", B64.encode(sig.as_ref())), exp))
    }

    /// Verifies a token and returns the service account it names.
    pub fn verify(&self, token: &str, now: i64) -> Result<SaClaims, JwtError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let verified = || self.verified.lock().unwrap_or_else(|e| e.into_inner());
        let known = verified().get(&digest).cloned();
        if let Some(claims) = known {
            return claims_of(&claims, now);
        }
        let claims = self.verify_signature(token)?;
        let sa = claims_of(&claims, now)?;
        let mut cache = verified();
        if cache.len() >= VERIFIED_LIMIT {
            cache.clear();
        }
        cache.insert(digest, claims);
        Ok(sa)
    }

    /// Checks the token's form and signature; returns its claims.
    fn verify_signature(&self, token: &str) -> Result<Value, JwtError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header: Value = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(JwtError::Malformed)?;
        if header["alg"] != "ES256" {
            return Err(JwtError::Claims("algorithm"));
        }
        let sig = B64.decode(s).map_err(|_| JwtError::Malformed)?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public)
            .verify(format!("{h}.{c}").as_bytes(), &sig)
            .map_err(|_| JwtError::Signature)?;
        B64.decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(JwtError::Malformed)
    }
}

fn claims_of(claims: &Value, now: i64) -> Result<SaClaims, JwtError> {
    let s = |p: &str| {
        claims
            .pointer(p)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    match claims["iss"].as_str() {
        Some(LEGACY_ISSUER) => {
            return Ok(SaClaims {
                namespace: s("/kubernetes.io~1serviceaccount~1namespace")
                    .ok_or(JwtError::Claims("namespace"))?,
                name: s("/kubernetes.io~1serviceaccount~1service-account.name")
                    .ok_or(JwtError::Claims("name"))?,
                uid: s("/kubernetes.io~1serviceaccount~1service-account.uid"),
            })
        }
        Some(ISSUER) => {}
        _ => return Err(JwtError::Claims("issuer")),
    }
    let aud_ok = match &claims["aud"] {
        Value::String(a) => a == ISSUER,
        Value::Array(list) => list.iter().any(|a| a == ISSUER),
        _ => false,
    };
    if !aud_ok {
        return Err(JwtError::Claims("audience"));
    }
    const SKEW: i64 = 60;
    let exp = claims["exp"].as_i64().ok_or(JwtError::Claims("expiry"))?;
    if now > exp + SKEW {
        return Err(JwtError::Expired);
    }
    if claims["nbf"].as_i64().is_some_and(|nbf| now + SKEW < nbf) {
        return Err(JwtError::Claims("not yet valid"));
    }
    let sa = SaClaims {
        namespace: s("/kubernetes.io/namespace").ok_or(JwtError::Claims("namespace"))?,
        name: s("/kubernetes.io/serviceaccount/name").ok_or(JwtError::Claims("name"))?,
        uid: s("/kubernetes.io/serviceaccount/uid"),
    };
    let sub = format!("system:serviceaccount:{}:{}", sa.namespace, sa.name);
    if claims["sub"].as_str() != Some(sub.as_str()) {
        return Err(JwtError::Claims("subject"));
    }
    Ok(sa)
}

#[cfg(test)]
pub(crate) fn test_keys(dir: &Path) -> SaKeys {
    let key = rcgen::KeyPair::generate().expect("key");
    std::fs::write(dir.join("sa.pub"), key.public_key_pem()).expect("write");
    std::fs::write(dir.join("sa.key"), key.serialize_pem()).expect("write");
    SaKeys::load(dir).expect("load")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa() -> SaClaims {
        SaClaims {
            namespace: "default".into(),
            name: "bot".into(),
            uid: Some("u1".into()),
        }
    }

    #[test]
    fn a_minted_token_verifies_and_names_its_service_account() {
        let dir = tempfile::tempdir().expect("dir");
        let keys = test_keys(dir.path());
        let (token, exp) = keys.sign(&sa(), &[], 3600).expect("sign");
        assert!(exp > unix_now());
        assert_eq!(keys.verify(&token, unix_now()).expect("verify"), sa());
        assert!(matches!(
            keys.verify(&token, exp + 3600),
            Err(JwtError::Expired)
        ));
    }

    #[test]
    fn tampered_or_foreign_tokens_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let keys = test_keys(dir.path());
        let (token, _) = keys.sign(&sa(), &[], 3600).expect("sign");
        // The good token's verified claims are remembered; a tampered one is not them.
        keys.verify(&token, unix_now())
            .expect("the untampered token verifies");
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let mut claims: Value =
            serde_json::from_slice(&B64.decode(&parts[1]).expect("b64")).expect("json");
        claims["sub"] = json!("system:serviceaccount:kube-system:admin");
        parts[1] = B64.encode(claims.to_string());
        assert!(matches!(
            keys.verify(&parts.join("."), unix_now()),
            Err(JwtError::Signature)
        ));
        let other_dir = tempfile::tempdir().expect("dir");
        let other = test_keys(other_dir.path());
        assert!(other.verify(&token, unix_now()).is_err());
        assert!(matches!(
            keys.verify("a.b", unix_now()),
            Err(JwtError::Malformed)
        ));
        let (wrong_aud, _) = keys
            .sign(&sa(), &["vault".to_string()], 3600)
            .expect("sign");
        assert!(matches!(
            keys.verify(&wrong_aud, unix_now()),
            Err(JwtError::Claims("audience"))
        ));
    }
}
