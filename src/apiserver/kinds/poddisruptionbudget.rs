//! `PodDisruptionBudget` (policy/v1): how many pods of a set may be down at once for
//! voluntary disruptions (`kubectl drain`, evictions). Served, listed and validated as
//! kube-apiserver does; the eviction subresource and the disruption controller that fills
//! `status.disruptionsAllowed` do not read it yet.

use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::{json, Value};

use super::{age, s, schema_of, Col, Strategy};

pub static STRATEGY: Strategy = Strategy {
    schema: schema_of::<PodDisruptionBudget>,
    table: Some(table),
    defaults: None,
    validate: Some(validate),
};

/// NAME, MIN AVAILABLE, MAX UNAVAILABLE, ALLOWED DISRUPTIONS, AGE (kubectl's columns).
fn table(o: &Value) -> (Vec<Col>, Vec<Value>) {
    let bound = |ptr: &str| match o.pointer(ptr) {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => "N/A".into(),
    };
    (
        vec![
            ("Name", "string", 0),
            ("Min Available", "string", 0),
            ("Max Unavailable", "string", 0),
            ("Allowed Disruptions", "integer", 0),
            ("Age", "string", 0),
        ],
        vec![
            json!(s(o, "/metadata/name")),
            json!(bound("/spec/minAvailable")),
            json!(bound("/spec/maxUnavailable")),
            json!(o
                .pointer("/status/disruptionsAllowed")
                .and_then(Value::as_i64)
                .unwrap_or(0)),
            json!(age(o)),
        ],
    )
}

/// kube-apiserver's checks: at most one of `minAvailable` and `maxUnavailable`, each a
/// non-negative integer or a percentage up to 100%, a well-formed selector, a known
/// unhealthy-pod eviction policy. The spec may change after creation.
fn validate(new: &Value, _old: Option<&Value>) -> Result<(), String> {
    let spec = new.get("spec").cloned().unwrap_or(json!({}));
    if spec.get("minAvailable").is_some_and(|v| !v.is_null())
        && spec.get("maxUnavailable").is_some_and(|v| !v.is_null())
    {
        return Err(
            "spec: Invalid value: minAvailable and maxUnavailable cannot be both set".into(),
        );
    }
    for field in ["minAvailable", "maxUnavailable"] {
        if let Some(v) = spec.get(field).filter(|v| !v.is_null()) {
            int_or_percent(v).map_err(|why| format!("spec.{field}: Invalid value: {v}: {why}"))?;
        }
    }
    if let Some(sel) = spec.get("selector").filter(|v| !v.is_null()) {
        selector(sel)?;
    }
    match spec.get("unhealthyPodEvictionPolicy") {
        None | Some(Value::Null) => {}
        Some(Value::String(p)) if p == "IfHealthyBudget" || p == "AlwaysAllow" => {}
        Some(p) => {
            return Err(format!(
                "spec.unhealthyPodEvictionPolicy: Unsupported value: {p}: supported values: \"AlwaysAllow\", \"IfHealthyBudget\""
            ))
        }
    }
    Ok(())
}

fn int_or_percent(v: &Value) -> Result<(), &'static str> {
    match v {
        Value::Number(n) => match n.as_i64() {
            Some(i) if (0..=i64::from(i32::MAX)).contains(&i) => Ok(()),
            Some(i) if i < 0 => Err("must be greater than or equal to 0"),
            _ => Err("must be an integer"),
        },
        Value::String(s) => {
            let digits = s.strip_suffix('%').filter(|d| {
                !d.is_empty() && d.len() <= 10 && d.bytes().all(|b| b.is_ascii_digit())
            });
            match digits.and_then(|d| d.parse::<u64>().ok()) {
                Some(p) if p <= 100 => Ok(()),
                Some(_) => Err("must not be greater than 100%"),
                None => Err("a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%')"),
            }
        }
        _ => Err("must be an integer or a percentage"),
    }
}

fn selector(sel: &Value) -> Result<(), String> {
    let Some(sel) = sel.as_object() else {
        return Err("spec.selector: Invalid value: must be a label selector object".into());
    };
    let exprs = sel.get("matchExpressions").and_then(Value::as_array);
    for (i, e) in exprs.into_iter().flatten().enumerate() {
        let at = format!("spec.selector.matchExpressions[{i}]");
        let values = e
            .get("values")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        match e.get("operator").and_then(Value::as_str) {
            Some("In" | "NotIn") if values == 0 => {
                return Err(format!(
                    "{at}.values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
                ))
            }
            Some("Exists" | "DoesNotExist") if values > 0 => {
                return Err(format!(
                    "{at}.values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
                ))
            }
            Some("In" | "NotIn" | "Exists" | "DoesNotExist") => {}
            other => {
                return Err(format!(
                    "{at}.operator: Invalid value: {}: not a valid selector operator",
                    json!(other)
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdb(spec: Value) -> Value {
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
               "metadata": {"name": "web"}, "spec": spec})
    }

    #[test]
    fn budgets_kube_apiserver_accepts_are_accepted() {
        for spec in [
            json!({"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}),
            json!({"maxUnavailable": "25%"}),
            json!({"minAvailable": "100%", "unhealthyPodEvictionPolicy": "AlwaysAllow"}),
            json!({"selector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}}),
        ] {
            assert_eq!(validate(&pdb(spec.clone()), None), Ok(()), "{spec}");
        }
    }

    #[test]
    fn each_refusal_names_the_field_and_why() {
        let cases = [
            (
                json!({"minAvailable": 1, "maxUnavailable": 1}),
                "cannot be both set",
            ),
            (
                json!({"minAvailable": -1}),
                "spec.minAvailable: Invalid value: -1: must be greater than or equal to 0",
            ),
            (
                json!({"maxUnavailable": "150%"}),
                "must not be greater than 100%",
            ),
            (json!({"maxUnavailable": "ten"}), "a valid percent string"),
            (
                json!({"maxUnavailable": "99999999999999999999%"}),
                "a valid percent string",
            ),
            (json!({"minAvailable": 1.5}), "must be an integer"),
            (
                json!({"unhealthyPodEvictionPolicy": "Never"}),
                "Unsupported value: \"Never\"",
            ),
            (
                json!({"selector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
                "values: Required value",
            ),
            (
                json!({"selector": {"matchExpressions": [{"key": "a", "operator": "Near", "values": ["b"]}]}}),
                "operator: Invalid value: \"Near\"",
            ),
            (json!({"selector": "app=web"}), "spec.selector"),
        ];
        for (spec, want) in cases {
            let err = validate(&pdb(spec.clone()), None).expect_err(&spec.to_string());
            assert!(err.contains(want), "{spec}: {err}");
        }
    }

    #[test]
    fn columns_show_the_bound_that_is_set_and_n_a_for_the_other() {
        let o = pdb(json!({"minAvailable": "50%"}));
        let (cols, cells) = table(&o);
        assert_eq!(cols.len(), cells.len());
        assert_eq!(cells[1], "50%");
        assert_eq!(cells[2], "N/A");
        assert_eq!(cells[3], 0);
    }
}
