//! The object layer below the verbs: reading one object with its revision, and turning
//! store outcomes into the API's errors (`NotFound`, `Conflict`, `AlreadyExists`,
//! `Invalid`) named after the resource. Every verb ([`super::rest`], [`super::delete`],
//! [`super::subresource`], [`super::kubelet_proxy`]) uses it; it uses none of them.

use serde_json::Value;

use super::error::ApiError;
use super::http::Target;
use super::object;
use super::resources::Resource;
use super::State;
use crate::store::StoreError;

pub fn name_of(t: &Target) -> &str {
    t.name.as_deref().unwrap_or_default()
}

pub fn not_found(res: &Resource, name: &str) -> ApiError {
    ApiError::NotFound {
        group: res.group.into(),
        resource: res.plural.into(),
        name: name.into(),
    }
}

pub fn conflict(res: &Resource, name: &str) -> ApiError {
    ApiError::Conflict {
        group: res.group.into(),
        resource: res.plural.into(),
        name: name.into(),
    }
}

pub fn store_err(res: &Resource, name: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound { .. } => not_found(res, name),
        StoreError::Conflict { .. } => conflict(res, name),
        StoreError::AlreadyExists { .. } => ApiError::AlreadyExists {
            group: res.group.into(),
            resource: res.plural.into(),
            name: name.into(),
        },
        other => other.into(),
    }
}

pub fn invalid(res: &Resource, name: &str, reason: String) -> ApiError {
    ApiError::Invalid {
        kind: res.kind.into(),
        name: name.into(),
        reason,
    }
}

/// Reads one object and its `mod_revision`.
pub async fn read(st: &State, t: &Target) -> Result<(Value, i64), ApiError> {
    let key = t.res.key(t.namespace.as_deref(), name_of(t));
    let kv = st
        .store
        .get(&key)
        .await?
        .ok_or_else(|| not_found(t.res, name_of(t)))?;
    let mut obj = object::from_kv(&kv)?;
    super::crd::present(t.res, &mut obj);
    Ok((obj, kv.mod_revision))
}
