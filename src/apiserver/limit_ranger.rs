//! The LimitRanger admission step for new pods, as kube-apiserver's plugin does it: the
//! `Container` items of the namespace's LimitRanges give every container (init
//! containers too) the default limits and requests it does not state, then bound it:
//! a request under `min`, a limit over `max`, or a limit/request ratio over
//! `maxLimitRequestRatio` refuses the pod (403, every violation listed).
//!
//! How: LimitRanges are read from the watch cache (no etcd round trip per pod). Limits:
//! `Pod` and `PersistentVolumeClaim` items are stored but not applied.

use serde_json::{json, Value};

use super::error::ApiError;
use super::kinds::limitrange::amount;
use super::State;
use crate::store::ListOptions;

/// At most this many LimitRanges of one namespace are applied.
const MAX_RANGES: usize = 100;

/// Applies the namespace's LimitRanges to a new pod.
pub async fn admit(st: &State, pod: &mut Value) -> Result<(), ApiError> {
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let options = ListOptions {
        limit: Some(MAX_RANGES),
        ..Default::default()
    };
    let page = st
        .list(&format!("/registry/limitranges/{ns}/"), options, true)
        .await?;
    let items: Vec<Value> = page
        .items
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
        .flat_map(|lr| {
            lr.pointer("/spec/limits")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .filter(|i| i["type"] == "Container")
        .collect();
    if items.is_empty() {
        return Ok(());
    }
    let mut violations = Vec::new();
    for list in ["initContainers", "containers"] {
        let Some(cs) = pod
            .pointer_mut(&format!("/spec/{list}"))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for c in cs.iter_mut() {
            for item in &items {
                apply_defaults(c, item);
            }
            for item in &items {
                check(c, item, &mut violations);
            }
        }
    }
    if violations.is_empty() {
        return Ok(());
    }
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    Err(ApiError::Forbidden {
        message: format!("pods \"{name}\" is forbidden: [{}]", violations.join(", ")),
        group: String::new(),
        resource: "pods".into(),
    })
}

/// Fills in the item's `default` limits and `defaultRequest` requests the container
/// lacks.
fn apply_defaults(c: &mut Value, item: &Value) {
    for (field, from) in [("limits", "default"), ("requests", "defaultRequest")] {
        let Some(defaults) = item.get(from).and_then(Value::as_object) else {
            continue;
        };
        if !c.get("resources").is_some_and(Value::is_object) {
            c["resources"] = json!({});
        }
        if !c["resources"].get(field).is_some_and(Value::is_object) {
            c["resources"][field] = json!({});
        }
        for (r, q) in defaults {
            if c["resources"][field].get(r).is_none() {
                c["resources"][field][r] = q.clone();
            }
        }
    }
}

/// Records how `c` breaks the item's bounds, worded as the plugin words it.
fn check(c: &Value, item: &Value, out: &mut Vec<String>) {
    let res = &c["resources"];
    let get = |field: &str, r: &str| res[field].get(r).and_then(|q| amount(r, q));
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let each = |f: &str| {
        item.get(f)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    for (r, min) in each("min") {
        match get("requests", &r) {
            None => out.push(format!(
                "minimum {r} usage per Container is {}.  No request is specified",
                text(&min)
            )),
            Some(v) if Some(v) < amount(&r, &min) => out.push(format!(
                "minimum {r} usage per Container is {}, but request is {}",
                text(&min),
                text(&res["requests"][&r])
            )),
            _ => {}
        }
    }
    for (r, max) in each("max") {
        match get("limits", &r) {
            None => out.push(format!(
                "maximum {r} usage per Container is {}.  No limit is specified",
                text(&max)
            )),
            Some(v) if Some(v) > amount(&r, &max) => out.push(format!(
                "maximum {r} usage per Container is {}, but limit is {}",
                text(&max),
                text(&res["limits"][&r])
            )),
            _ => {}
        }
    }
    for (r, ratio) in each("maxLimitRequestRatio") {
        let (Some(limit), Some(request)) = (get("limits", &r), get("requests", &r)) else {
            continue;
        };
        let Some(max) = ratio
            .as_str()
            .and_then(|q| crate::client::quantity::parse_scaled(q, 1000))
        else {
            continue;
        };
        if request > 0 && limit.saturating_mul(1000) / request > max {
            out.push(format!(
                "{r} max limit to request ratio per Container is {}, but provided ratio is {:.6}",
                text(&ratio),
                limit as f64 / request as f64
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_only_what_is_missing_and_bounds_are_checked_after() {
        let item = json!({"type": "Container", "default": {"cpu": "500m", "memory": "256Mi"},
                          "defaultRequest": {"cpu": "100m", "memory": "128Mi"},
                          "max": {"cpu": "1"}, "min": {"memory": "64Mi"}});
        let mut c = json!({"name": "a", "resources": {"limits": {"memory": "512Mi"}}});
        apply_defaults(&mut c, &item);
        assert_eq!(
            c["resources"]["limits"],
            json!({"cpu": "500m", "memory": "512Mi"})
        );
        assert_eq!(
            c["resources"]["requests"],
            json!({"cpu": "100m", "memory": "128Mi"})
        );
        let mut out = Vec::new();
        check(&c, &item, &mut out);
        assert!(out.is_empty(), "{out:?}");
        let big = json!({"resources": {"limits": {"cpu": "2"}, "requests": {"memory": "32Mi"}}});
        check(&big, &item, &mut out);
        assert_eq!(
            out,
            [
                "minimum memory usage per Container is 64Mi, but request is 32Mi",
                "maximum cpu usage per Container is 1, but limit is 2",
            ]
        );
    }
}
