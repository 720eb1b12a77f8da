//! Writing an object's status: the one way every controller does it.
//!
//! A controller computes the status it wants as JSON and calls [`patch_status_if_changed`]:
//! a merge patch of the `status` subresource, sent only when some field it names differs
//! from what the cached object holds. Unchanged objects cost no write, so a resync of a
//! thousand settled Deployments writes nothing, and no write means no watch event that
//! would wake the controller again.

use kube::api::{Patch, PatchParams};
use kube::{Client, Resource};
use serde_json::{json, Value};

use super::runtime::key_of;
use super::ReconcileError;

/// Merge-patches `status` into the status subresource of `obj`, unless every field
/// `status` names already has that value in `current` (the cached object's status,
/// [`unchanged`]). Returns whether it wrote.
pub async fn patch_status_if_changed<K, S>(
    client: &Client,
    obj: &K,
    current: Option<&S>,
    status: Value,
) -> Result<bool, ReconcileError>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    S: serde::Serialize,
{
    let cur = current
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null);
    if unchanged(&cur, &status) {
        return Ok(false);
    }
    patch_status(client, obj, status).await?;
    Ok(true)
}

/// Merge-patches `status` into the status subresource of `obj`, unconditionally.
pub async fn patch_status<K>(client: &Client, obj: &K, status: Value) -> Result<(), ReconcileError>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let meta = obj.meta();
    let name = meta.name.as_deref().unwrap_or_default();
    let path = K::url_path(&(), meta.namespace.as_deref());
    let patch = Patch::Merge(json!({ "status": status }));
    let req = kube::core::Request::new(path)
        .patch_subresource("status", name, &PatchParams::default(), &patch)
        .map_err(kube::Error::BuildRequest);
    let sent = match req {
        Ok(req) => client.request::<K>(req).await,
        Err(e) => Err(e),
    };
    sent.map(|_| ()).map_err(|source| ReconcileError::Status {
        kind: match K::kind(&()) {
            std::borrow::Cow::Borrowed(k) => k,
            std::borrow::Cow::Owned(_) => "object",
        },
        key: key_of(obj),
        source,
    })
}

/// Whether merging `patch` into `cur` would change nothing. Objects are compared field by
/// field (fields `patch` does not name are left alone by a merge patch); an absent field
/// equals a zero, `false`, empty string or empty list (Kubernetes omits those from a
/// status); everything else must be equal.
pub fn unchanged(cur: &Value, patch: &Value) -> bool {
    match patch {
        Value::Object(fields) => fields.iter().all(|(k, v)| {
            let c = cur.get(k).unwrap_or(&Value::Null);
            unchanged(c, v)
        }),
        _ if cur.is_null() => is_zero(patch),
        _ => cur == patch,
    }
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_zero),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_naming_only_current_values_changes_nothing() {
        let cur = json!({"replicas": 3, "readyReplicas": 3, "conditions": [{"type": "Available", "status": "True"}], "extra": 1});
        assert!(unchanged(&cur, &json!({"replicas": 3, "readyReplicas": 3})));
        assert!(unchanged(
            &cur,
            &json!({"conditions": [{"type": "Available", "status": "True"}]})
        ));
        assert!(!unchanged(&cur, &json!({"readyReplicas": 2})));
        assert!(!unchanged(
            &cur,
            &json!({"conditions": [{"type": "Available", "status": "False"}]})
        ));
    }

    #[test]
    fn absent_fields_equal_their_zero_value_only() {
        let cur = json!({"replicas": 1});
        assert!(unchanged(
            &cur,
            &json!({"availableReplicas": 0, "paused": false, "active": []})
        ));
        assert!(!unchanged(&cur, &json!({"availableReplicas": 1})));
        assert!(!unchanged(
            &Value::Null,
            &json!({"startTime": "2026-12-07T00:00:00Z"})
        ));
        assert!(unchanged(&Value::Null, &json!({"active": 0})));
    }

    #[test]
    fn nested_objects_are_compared_field_by_field() {
        let cur = json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}, "x": {"a": 1, "b": 2}});
        assert!(unchanged(&cur, &json!({"x": {"a": 1}})));
        assert!(!unchanged(&cur, &json!({"x": {"a": 2}})));
        assert!(!unchanged(&cur, &json!({"loadBalancer": {"ingress": []}})));
    }
}
