//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and a strategic merge
//! patch subset.
//!
//! Strategic merge, as far as phase 1 goes: maps merge recursively and `null` deletes a key
//! (like merge patch); lists of objects that Kubernetes merges by key are merged by that key
//! and decided by the field name ([`merge_key`]): `containers`, `initContainers`,
//! `ephemeralContainers`, `env`, `volumes`, `imagePullSecrets` by `name`; container `ports`
//! by `containerPort` and Service `ports` by `port`; `volumeMounts` by `mountPath`;
//! `conditions` by `type`; `ownerReferences` by `uid`; `hostAliases` by `ip`. The
//! primitive list `finalizers` is merged as a set. Directives understood: `$patch: delete`
//! (list item), `$patch: replace` (map or list item), `$deleteFromPrimitiveList/<f>`;
//! `$setElementOrder/<f>` and `$retainKeys` are accepted and dropped. Every other list is
//! replaced. Limits: merge keys are chosen by field name, not by the OpenAPI schema of the
//! kind, so a custom list field named `containers` would be merged too.

use serde_json::{Map, Value};

use super::error::ApiError;

/// The patch formats PATCH accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchKind {
    /// The patch kind for a `Content-Type`, if it names one.
    pub fn from_content_type(ct: &str) -> Option<PatchKind> {
        let ct = ct.split(';').next().unwrap_or_default().trim();
        match ct {
            "application/json-patch+json" => Some(PatchKind::Json),
            "application/merge-patch+json" => Some(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Some(PatchKind::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                Some(PatchKind::Apply)
            }
            _ => None,
        }
    }
}

/// How much a JSON patch's `copy` operations may add to an object in all: what one request
/// body may carry. Without a bound, 40 `copy` ops that each copy the whole object double it
/// 40 times (2^40 times its size) and take the server's memory.
const MAX_COPIED: usize = super::object::MAX_BODY;

/// The JSON size of `v`, counted only up to `budget` (returns more than `budget` once it
/// is over, without looking further).
fn json_size(v: &Value, budget: usize) -> usize {
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 8,
        Value::String(s) => s.len() + 2,
        Value::Array(items) => {
            let mut n = 2;
            for i in items {
                n += json_size(i, budget.saturating_sub(n)) + 1;
                if n > budget {
                    break;
                }
            }
            n
        }
        Value::Object(map) => {
            let mut n = 2;
            for (k, i) in map {
                n += k.len() + 4 + json_size(i, budget.saturating_sub(n));
                if n > budget {
                    break;
                }
            }
            n
        }
    }
}

/// RFC 6902, all or nothing, with the `copy` growth bounded by [`MAX_COPIED`].
fn apply_json_patch(doc: &mut Value, ops: &[json_patch::PatchOperation]) -> Result<(), ApiError> {
    let original = doc.clone();
    let mut copied = 0usize;
    for op in ops {
        if let json_patch::PatchOperation::Copy(c) = op {
            if let Some(from) = doc.pointer(c.from.as_str()) {
                copied += json_size(from, MAX_COPIED - copied.min(MAX_COPIED));
            }
            if copied > MAX_COPIED {
                *doc = original;
                return Err(ApiError::BadPatch {
                    reason: format!(
                        "the JSON patch's copy operations would add more than {MAX_COPIED} bytes to the object"
                    ),
                });
            }
        }
        if let Err(e) = json_patch::patch(doc, std::slice::from_ref(op)) {
            *doc = original;
            return Err(ApiError::BadPatch {
                reason: format!("the JSON patch could not be applied: {e}"),
            });
        }
    }
    Ok(())
}

/// Applies `patch` (already decoded) to `doc` in place.
pub fn apply(kind: PatchKind, doc: &mut Value, patch: &Value) -> Result<(), ApiError> {
    match kind {
        PatchKind::Json => {
            let ops: json_patch::Patch =
                serde_json::from_value(patch.clone()).map_err(|e| ApiError::DecodeBody {
                    reason: format!("invalid JSON patch: {e}"),
                })?;
            apply_json_patch(doc, &ops.0)
        }
        PatchKind::Merge => {
            if !patch.is_object() {
                return Err(ApiError::DecodeBody {
                    reason: "a merge patch must be a JSON object".into(),
                });
            }
            json_patch::merge(doc, patch);
            Ok(())
        }
        PatchKind::Strategic | PatchKind::Apply => {
            let Value::Object(p) = patch else {
                return Err(ApiError::DecodeBody {
                    reason: "a strategic merge patch must be a JSON object".into(),
                });
            };
            strategic_map(doc, p);
            Ok(())
        }
    }
}

/// The key by which Kubernetes merges items of the list field `field`.
fn merge_key(field: &str, sample: &Value) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "webhooks" => Some("name"),
        "ports" if sample.get("containerPort").is_some() => Some("containerPort"),
        "ports" => Some("port"),
        "volumeMounts" | "volumeDevices" => Some("mountPath"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "hostAliases" => Some("ip"),
        "topologySpreadConstraints" => Some("topologyKey"),
        _ => None,
    }
}

fn strategic_map(doc: &mut Value, patch: &Map<String, Value>) {
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replaced = patch.clone();
        replaced.remove("$patch");
        *doc = Value::Object(replaced);
        return;
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let Value::Object(target) = doc else { return };
    for (k, v) in patch {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Some(del)) = (target.get_mut(field), v.as_array()) {
                items.retain(|x| !del.contains(x));
            }
            continue;
        }
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(sub) => {
                let slot = target.entry(k.clone()).or_insert(Value::Null);
                strategic_map(slot, sub);
            }
            Value::Array(items) => {
                let slot = target.entry(k.clone()).or_insert(Value::Array(Vec::new()));
                strategic_list(k, slot, items);
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
}

fn strategic_list(field: &str, slot: &mut Value, items: &[Value]) {
    if field == "finalizers" {
        let mut merged = slot.as_array().cloned().unwrap_or_default();
        for i in items {
            if !merged.contains(i) {
                merged.push(i.clone());
            }
        }
        *slot = Value::Array(merged);
        return;
    }
    let key = items
        .first()
        .filter(|i| i.is_object())
        .and_then(|i| merge_key(field, i));
    let (Some(key), Value::Array(current)) = (key, &mut *slot) else {
        *slot = Value::Array(items.iter().map(strip_directives).collect());
        return;
    };
    for item in items {
        let id = item.get(key);
        let pos = current
            .iter()
            .position(|c| c.get(key) == id && id.is_some());
        let directive = item.get("$patch").and_then(Value::as_str);
        match (pos, directive) {
            (Some(p), Some("delete")) => {
                current.remove(p);
            }
            (None, Some("delete")) => {}
            (Some(p), Some("replace")) => current[p] = strip_directives(item),
            (Some(p), _) => {
                if let Value::Object(m) = item {
                    strategic_map(&mut current[p], m);
                }
            }
            (None, _) => current.push(strip_directives(item)),
        }
    }
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_operations_that_double_the_object_are_refused_and_nothing_is_changed() {
        let mut doc = serde_json::json!({"data": {"a": "x".repeat(1000)}, "spec": {}});
        let before = doc.clone();
        // Each op copies the whole data map into itself: 2^40 times the object if allowed.
        let ops: Vec<Value> = (0..40)
            .map(|i| serde_json::json!({"op": "copy", "from": "/data", "path": format!("/data/c{i}")}))
            .collect();
        let err = apply(PatchKind::Json, &mut doc, &Value::Array(ops)).unwrap_err();
        assert!(matches!(err, ApiError::BadPatch { .. }), "{err:?}");
        assert_eq!(doc, before, "a refused patch changes nothing");
        // Small copies, and a failing op after good ones, behave as RFC 6902 says.
        let ok = serde_json::json!([{"op": "copy", "from": "/data/a", "path": "/spec/a"}]);
        apply(PatchKind::Json, &mut doc, &ok).unwrap();
        assert_eq!(doc["spec"]["a"], doc["data"]["a"]);
        let before = doc.clone();
        let bad = serde_json::json!([
            {"op": "add", "path": "/spec/b", "value": 1},
            {"op": "remove", "path": "/nope"}
        ]);
        assert!(apply(PatchKind::Json, &mut doc, &bad).is_err());
        assert_eq!(doc, before, "all or nothing");
    }
    use serde_json::json;

    fn deployment() -> Value {
        json!({"metadata": {"name": "web", "labels": {"app": "web", "old": "x"}},
               "spec": {"replicas": 1, "template": {"spec": {"containers": [
                   {"name": "nginx", "image": "nginx:1", "ports": [{"containerPort": 80}],
                    "env": [{"name": "A", "value": "1"}]},
                   {"name": "sidecar", "image": "busybox"}]}}}})
    }

    #[test]
    fn merge_patch_sets_and_deletes_keys_and_replaces_lists() {
        let mut d = deployment();
        apply(
            PatchKind::Merge,
            &mut d,
            &json!({"metadata": {"labels": {"old": null, "new": "y"}}, "spec": {"replicas": 3}}),
        )
        .expect("patch");
        assert_eq!(d["metadata"]["labels"], json!({"app": "web", "new": "y"}));
        assert_eq!(d["spec"]["replicas"], 3);
    }

    #[test]
    fn json_patch_applies_operations_and_reports_failed_tests() {
        let mut d = deployment();
        apply(
            PatchKind::Json,
            &mut d,
            &json!([{"op": "replace", "path": "/spec/replicas", "value": 4},
                    {"op": "add", "path": "/metadata/labels/z", "value": "1"}]),
        )
        .expect("patch");
        assert_eq!(d["spec"]["replicas"], 4);
        assert_eq!(d["metadata"]["labels"]["z"], "1");
        let failed = apply(
            PatchKind::Json,
            &mut d,
            &json!([{"op": "test", "path": "/spec/replicas", "value": 9}]),
        );
        assert!(matches!(failed, Err(ApiError::BadPatch { .. })));
        assert!(matches!(
            apply(PatchKind::Json, &mut d, &json!({"op": "nope"})),
            Err(ApiError::DecodeBody { .. })
        ));
    }

    #[test]
    fn strategic_merge_merges_containers_by_name_and_keeps_the_others() {
        let mut d = deployment();
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "nginx"}, {"name": "sidecar"}],
            "containers": [{"name": "nginx", "image": "nginx:2",
                            "env": [{"name": "B", "value": "2"}]}]}}}});
        apply(PatchKind::Strategic, &mut d, &patch).expect("patch");
        let cs = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs.as_array().map(Vec::len), Some(2));
        assert_eq!(cs[0]["image"], "nginx:2");
        assert_eq!(cs[0]["ports"][0]["containerPort"], 80);
        assert_eq!(
            cs[0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
        );
        assert_eq!(cs[1]["name"], "sidecar");
        assert!(d["spec"]["template"]["spec"]
            .get("$setElementOrder/containers")
            .is_none());
    }

    #[test]
    fn strategic_merge_understands_delete_directives() {
        let mut d = deployment();
        let patch = json!({"metadata": {"finalizers": ["a"]},
            "spec": {"template": {"spec": {"containers": [
                {"name": "sidecar", "$patch": "delete"}]}}}});
        apply(PatchKind::Strategic, &mut d, &patch).expect("patch");
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
        apply(
            PatchKind::Strategic,
            &mut d,
            &json!({"metadata": {"finalizers": ["b"], "$deleteFromPrimitiveList/finalizers": ["a"]}}),
        )
        .expect("patch");
        assert_eq!(d["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn service_ports_merge_by_port_and_other_lists_are_replaced() {
        let mut svc = json!({"spec": {"ports": [{"port": 80, "nodePort": 30080}],
                                       "externalIPs": ["1.1.1.1"]}});
        apply(
            PatchKind::Strategic,
            &mut svc,
            &json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443}],
                             "externalIPs": ["2.2.2.2"]}}),
        )
        .expect("patch");
        assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30080);
        assert_eq!(svc["spec"]["ports"][0]["name"], "http");
        assert_eq!(svc["spec"]["ports"][1]["port"], 443);
        assert_eq!(svc["spec"]["externalIPs"], json!(["2.2.2.2"]));
    }

    #[test]
    fn content_types_choose_the_patch_kind() {
        assert_eq!(
            PatchKind::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchKind::Merge)
        );
        assert_eq!(PatchKind::from_content_type("application/json"), None);
    }
}
