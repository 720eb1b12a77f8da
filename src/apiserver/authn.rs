//! Authentication of a request: the x509 client certificate of its connection, else its
//! `Authorization: Bearer` token (a bootstrap token or a service-account JWT).
//!
//! What: a bootstrap token `<id>.<secret>` is checked against the Secret
//! `kube-system/bootstrap-token-<id>` (type `bootstrap.kubernetes.io/token`, matching
//! `token-secret`, `usage-bootstrap-authentication: "true"`, `expiration` in the future)
//! and authenticates `system:bootstrap:<id>` in `system:bootstrappers` plus the Secret's
//! `auth-extra-groups`. A JWT is verified with `sa.pub` ([`super::jwt`]); its service
//! account must still exist (with the same uid), and it authenticates
//! `system:serviceaccount:<ns>:<name>` in `system:serviceaccounts` and
//! `system:serviceaccounts:<ns>`. Every authenticated user is in `system:authenticated`.
//! A token that fails is a 401, never a fallback to anonymous. Limits: no token cache
//! (each bearer request reads one object from the store).

use base64::Engine;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::error::ApiError;
use super::jwt::unix_now;
use super::object::from_kv;
use super::tls::User;
use super::State;
use crate::pki::token::Token;

/// The Secret type of bootstrap tokens.
pub const BOOTSTRAP_TOKEN_TYPE: &str = "bootstrap.kubernetes.io/token";

/// The user of a request, from its certificate user and `Authorization` header.
pub async fn authenticate(
    st: &State,
    cert_user: Option<User>,
    authorization: Option<&str>,
) -> Result<Option<User>, ApiError> {
    if cert_user.is_some() {
        return Ok(cert_user);
    }
    let Some(header) = authorization else {
        return Ok(None);
    };
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or(ApiError::Unauthenticated)?;
    let user = match crate::pki::token::parse(token) {
        Ok((id, secret)) => bootstrap_user(st, &id, &secret).await?,
        Err(_) => service_account_user(st, token).await?,
    };
    user.map(Some).ok_or(ApiError::Unauthenticated)
}

fn data_field(secret: &Value, field: &str) -> Option<String> {
    let b64 = secret.pointer(&format!("/data/{field}"))?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(bytes).ok()
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The user a bootstrap-token Secret grants, if `secret` matches and it is valid `now`.
pub fn bootstrap_token_user(
    obj: &Value,
    id: &str,
    secret: &str,
    now: OffsetDateTime,
) -> Option<User> {
    if obj["type"] != BOOTSTRAP_TOKEN_TYPE || obj.pointer("/metadata/deletionTimestamp").is_some() {
        return None;
    }
    if data_field(obj, "token-id").is_some_and(|t| t != id) {
        return None;
    }
    if !same(&data_field(obj, "token-secret")?, secret) {
        return None;
    }
    if data_field(obj, "usage-bootstrap-authentication").as_deref() != Some("true") {
        return None;
    }
    if let Some(exp) = data_field(obj, "expiration") {
        let exp = OffsetDateTime::parse(&exp, &Rfc3339).ok()?;
        if now >= exp {
            return None;
        }
    }
    let mut groups = vec!["system:bootstrappers".to_string()];
    for g in data_field(obj, "auth-extra-groups")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
    {
        if g.starts_with("system:bootstrappers:") {
            groups.push(g.to_string());
        }
    }
    groups.push("system:authenticated".into());
    Some(User {
        name: format!("system:bootstrap:{id}"),
        groups,
    })
}

async fn bootstrap_user(st: &State, id: &str, secret: &str) -> Result<Option<User>, ApiError> {
    let key = format!("/registry/secrets/kube-system/bootstrap-token-{id}");
    let Some(kv) = st.get_cached(&key).await? else {
        return Ok(None);
    };
    let obj = from_kv(&kv)?;
    Ok(bootstrap_token_user(
        &obj,
        id,
        secret,
        OffsetDateTime::now_utc(),
    ))
}

async fn service_account_user(st: &State, token: &str) -> Result<Option<User>, ApiError> {
    let Some(keys) = &st.sa_keys else {
        return Ok(None);
    };
    let Ok(sa) = keys.verify(token, unix_now()) else {
        return Ok(None);
    };
    let key = format!("/registry/serviceaccounts/{}/{}", sa.namespace, sa.name);
    let Some(kv) = st.get_cached(&key).await? else {
        return Ok(None);
    };
    let obj = from_kv(&kv)?;
    if let Some(uid) = &sa.uid {
        if obj.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid.as_str()) {
            return Ok(None);
        }
    }
    Ok(Some(User {
        name: format!("system:serviceaccount:{}:{}", sa.namespace, sa.name),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{}", sa.namespace),
            "system:authenticated".into(),
        ],
    }))
}

/// The `bootstrap-token-<id>` Secret for a token of `tokens.toml`.
pub fn token_secret(t: &Token) -> Value {
    let mut data = serde_json::Map::new();
    let mut put = |k: &str, v: &str| {
        data.insert(
            k.into(),
            json!(base64::engine::general_purpose::STANDARD.encode(v)),
        );
    };
    put("token-id", &t.id);
    put("token-secret", &t.secret);
    if !t.description.is_empty() {
        put("description", &t.description);
    }
    if let Some(exp) = t.expires.and_then(|e| e.format(&Rfc3339).ok()) {
        put("expiration", &exp);
    }
    for u in &t.usages {
        put(&format!("usage-bootstrap-{u}"), "true");
    }
    if !t.groups.is_empty() {
        put("auth-extra-groups", &t.groups.join(","));
    }
    json!({
        "kind": "Secret", "apiVersion": "v1",
        "metadata": {"name": format!("bootstrap-token-{}", t.id), "namespace": "kube-system"},
        "type": BOOTSTRAP_TOKEN_TYPE,
        "data": data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expires: Option<OffsetDateTime>, usages: &[&str]) -> Token {
        Token {
            id: "abcdef".into(),
            secret: "0123456789abcdef".into(),
            description: String::new(),
            expires,
            usages: usages.iter().map(|s| s.to_string()).collect(),
            groups: vec![crate::pki::token::DEFAULT_GROUP.into()],
        }
    }

    #[test]
    fn a_valid_token_authenticates_the_bootstrap_user_with_its_extra_groups() {
        let now = OffsetDateTime::now_utc();
        let s = token_secret(&token(
            Some(now + time::Duration::hours(1)),
            &["authentication"],
        ));
        let u = bootstrap_token_user(&s, "abcdef", "0123456789abcdef", now).expect("user");
        assert_eq!(u.name, "system:bootstrap:abcdef");
        assert!(u.groups.contains(&"system:bootstrappers".into()));
        assert!(u.groups.contains(&crate::pki::token::DEFAULT_GROUP.into()));
        assert!(bootstrap_token_user(&s, "abcdef", "0123456789abcdee", now).is_none());
    }

    #[test]
    fn expired_tokens_and_tokens_without_the_authentication_usage_are_refused() {
        let now = OffsetDateTime::now_utc();
        let expired = token_secret(&token(
            Some(now - time::Duration::seconds(1)),
            &["authentication"],
        ));
        assert!(bootstrap_token_user(&expired, "abcdef", "0123456789abcdef", now).is_none());
        let signing_only = token_secret(&token(None, &["signing"]));
        assert!(bootstrap_token_user(&signing_only, "abcdef", "0123456789abcdef", now).is_none());
        let mut opaque = token_secret(&token(None, &["authentication"]));
        assert!(bootstrap_token_user(&opaque, "abcdef", "0123456789abcdef", now).is_some());
        opaque["type"] = json!("Opaque");
        assert!(bootstrap_token_user(&opaque, "abcdef", "0123456789abcdef", now).is_none());
    }
}
