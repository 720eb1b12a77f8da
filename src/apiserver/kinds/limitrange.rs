//! `LimitRange` (v1, namespaced, short name `limits`): per-namespace defaults and bounds
//! for the resources of containers, pods and claims. Defaulted and validated as
//! kube-apiserver does; the LimitRanger admission step ([`crate::apiserver`]'s
//! `limit_ranger`) applies the `Container` items to new pods.

use k8s_openapi::api::core::v1::LimitRange;
use serde_json::{json, Map, Value};

use super::{s, schema_of, Col, Strategy};
use crate::client::quantity::parse_scaled;

pub static STRATEGY: Strategy = Strategy {
    schema: schema_of::<LimitRange>,
    table: Some(table),
    defaults: Some(defaults),
    validate: Some(validate),
};

/// NAME, CREATED AT (kubectl's columns).
fn table(o: &Value) -> (Vec<Col>, Vec<Value>) {
    (
        vec![("Name", "string", 0), ("Created At", "date", 0)],
        vec![
            json!(s(o, "/metadata/name")),
            json!(s(o, "/metadata/creationTimestamp")),
        ],
    )
}

/// A quantity comparable across suffixes: CPU in millicores, the rest in base units.
pub fn amount(resource: &str, q: &Value) -> Option<i64> {
    let scale = if resource == "cpu" { 1000 } else { 1 };
    parse_scaled(q.as_str()?, scale)
}

fn copy_missing(item: &mut Value, from: &str, to: &str) {
    let Some(src) = item.get(from).and_then(Value::as_object).cloned() else {
        return;
    };
    if !item.get(to).is_some_and(Value::is_object) {
        item[to] = json!({});
    }
    for (k, v) in src {
        if item[to].get(&k).is_none() {
            item[to][&k] = v;
        }
    }
    if item[to].as_object().is_some_and(Map::is_empty) {
        item.as_object_mut().map(|m| m.remove(to));
    }
}

/// For `Container` items: a missing default limit is the max, a missing default request
/// the default limit, else the min.
fn defaults(o: &mut Value) {
    let Some(items) = o.pointer_mut("/spec/limits").and_then(Value::as_array_mut) else {
        return;
    };
    for item in items.iter_mut().filter(|i| i["type"] == "Container") {
        copy_missing(item, "max", "default");
        copy_missing(item, "default", "defaultRequest");
        copy_missing(item, "min", "defaultRequest");
    }
}

fn validate(new: &Value, _old: Option<&Value>) -> Result<(), String> {
    let items = new
        .pointer("/spec/limits")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, item) in items.iter().enumerate() {
        let at = format!("spec.limits[{i}]");
        let kind = item["type"].as_str().unwrap_or_default();
        if kind.is_empty() {
            return Err(format!("{at}.type: Required value"));
        }
        if !["Pod", "Container", "PersistentVolumeClaim"].contains(&kind) {
            return Err(format!(
                "{at}.type: Unsupported value: {}: supported values: \"Container\", \"PersistentVolumeClaim\", \"Pod\"",
                json!(kind)
            ));
        }
        if kind == "Pod" {
            for f in ["default", "defaultRequest"] {
                if item
                    .get(f)
                    .and_then(Value::as_object)
                    .is_some_and(|m| !m.is_empty())
                {
                    return Err(format!(
                        "{at}.{f}: Forbidden: may not be specified when `type` is 'Pod'"
                    ));
                }
            }
        }
        let field = |f: &str| {
            item.get(f)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        };
        for f in [
            "min",
            "max",
            "default",
            "defaultRequest",
            "maxLimitRequestRatio",
        ] {
            for (r, q) in field(f) {
                match amount(&r, &q) {
                    Some(v) if v >= 0 => {}
                    Some(_) => {
                        return Err(format!(
                            "{at}.{f}[{r}]: Invalid value: {q}: must be greater than or equal to 0"
                        ))
                    }
                    None => {
                        return Err(format!(
                            "{at}.{f}[{r}]: Invalid value: {q}: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
                        ))
                    }
                }
            }
        }
        // (lower, upper, wording): lower may not exceed upper, resource by resource.
        let pairs = [
            ("min", "max", "min value", "max value"),
            (
                "defaultRequest",
                "default",
                "default request value",
                "default limit value",
            ),
            ("default", "max", "default value", "max value"),
            (
                "defaultRequest",
                "max",
                "default request value",
                "max value",
            ),
            (
                "min",
                "defaultRequest",
                "min value",
                "default request value",
            ),
        ];
        for (lo, hi, lo_name, hi_name) in pairs {
            let (low, high) = (field(lo), field(hi));
            for (r, lq) in &low {
                let Some(hq) = high.get(r) else { continue };
                if amount(r, lq) > amount(r, hq) {
                    return Err(format!(
                        "{at}.{lo}[{r}]: Invalid value: {lq}: {lo_name} {} is greater than {hi_name} {}",
                        lq.as_str().unwrap_or_default(),
                        hq.as_str().unwrap_or_default()
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lr(limits: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "lr"},
               "spec": {"limits": limits}})
    }

    #[test]
    fn container_items_default_their_limit_to_the_max_and_their_request_to_the_limit() {
        let mut o = lr(
            json!([{"type": "Container", "max": {"cpu": "2", "memory": "1Gi"},
                               "default": {"cpu": "500m"}, "min": {"memory": "64Mi"}}]),
        );
        defaults(&mut o);
        let item = &o["spec"]["limits"][0];
        assert_eq!(item["default"], json!({"cpu": "500m", "memory": "1Gi"}));
        assert_eq!(
            item["defaultRequest"],
            json!({"cpu": "500m", "memory": "1Gi"})
        );
        assert_eq!(validate(&o, None), Ok(()));
        let (cols, cells) = table(&o);
        assert_eq!(cols.len(), cells.len());
    }

    #[test]
    fn bounds_out_of_order_and_bad_quantities_are_refused() {
        let cases = [
            (json!([{"type": "Container", "min": {"cpu": "2"}, "max": {"cpu": "1"}}]),
             "spec.limits[0].min[cpu]: Invalid value: \"2\": min value 2 is greater than max value 1"),
            (json!([{"type": "Container", "default": {"memory": "2Gi"}, "max": {"memory": "1Gi"}}]),
             "default value 2Gi is greater than max value 1Gi"),
            (json!([{"type": "Container", "default": {"cpu": "lots"}}]),
             "spec.limits[0].default[cpu]: Invalid value: \"lots\""),
            (json!([{"type": "Pod", "default": {"cpu": "1"}}]),
             "spec.limits[0].default: Forbidden"),
            (json!([{"type": "Node"}]), "spec.limits[0].type: Unsupported value: \"Node\""),
            (json!([{"max": {"cpu": "1"}}]), "spec.limits[0].type: Required value"),
        ];
        for (limits, want) in cases {
            let err = validate(&lr(limits.clone()), None).expect_err(&limits.to_string());
            assert!(err.contains(want), "{limits}: {err}");
        }
    }
}
