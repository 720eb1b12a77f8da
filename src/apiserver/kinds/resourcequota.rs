//! `ResourceQuota` (v1, namespaced, short name `quota`): per-namespace caps on resources
//! and object counts. Served and validated as kube-apiserver does (every hard limit a
//! non-negative quantity, scopes from the known set); printed as kubectl prints it.
//! Limits: no quota controller fills `status.used` and no admission step enforces the
//! caps yet.

use k8s_openapi::api::core::v1::ResourceQuota;
use serde_json::{json, Value};

use super::limitrange::amount;
use super::{age, s, schema_of, Col, Strategy};

pub static STRATEGY: Strategy = Strategy {
    schema: schema_of::<ResourceQuota>,
    table: Some(table),
    defaults: None,
    validate: Some(validate),
};

const SCOPES: &[&str] = &[
    "Terminating",
    "NotTerminating",
    "BestEffort",
    "NotBestEffort",
    "PriorityClass",
    "CrossNamespacePodAffinity",
];

/// NAME, AGE, REQUEST, LIMIT: `used/hard` pairs, limits apart (kubectl's columns).
fn table(o: &Value) -> (Vec<Col>, Vec<Value>) {
    let hard = o
        .pointer("/status/hard")
        .or_else(|| o.pointer("/spec/hard"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let used = o.pointer("/status/used").cloned().unwrap_or_default();
    let (mut request, mut limit) = (Vec::new(), Vec::new());
    let mut keys: Vec<&String> = hard.keys().collect();
    keys.sort();
    for k in keys {
        let pair = format!(
            "{k}: {}/{}",
            used[k.as_str()].as_str().unwrap_or("0"),
            hard[k.as_str()].as_str().unwrap_or_default()
        );
        if k.starts_with("limits.") {
            limit.push(pair);
        } else {
            request.push(pair);
        }
    }
    (
        vec![
            ("Name", "string", 0),
            ("Age", "string", 0),
            ("Request", "string", 0),
            ("Limit", "string", 0),
        ],
        vec![
            json!(s(o, "/metadata/name")),
            json!(age(o)),
            json!(request.join(", ")),
            json!(limit.join(", ")),
        ],
    )
}

fn validate(new: &Value, _old: Option<&Value>) -> Result<(), String> {
    if let Some(hard) = new.pointer("/spec/hard").and_then(Value::as_object) {
        for (r, q) in hard {
            if !super::is_qualified_name(r) {
                return Err(format!(
                    "spec.hard[{r}]: Invalid value: {}: must be a standard resource type or fully qualified",
                    json!(r)
                ));
            }
            match amount(r, q) {
                Some(v) if v >= 0 => {}
                Some(_) => {
                    return Err(format!(
                        "spec.hard[{r}]: Invalid value: {q}: must be greater than or equal to 0"
                    ))
                }
                None => {
                    return Err(format!(
                        "spec.hard[{r}]: Invalid value: {q}: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
                    ))
                }
            }
        }
    }
    for (i, scope) in new
        .pointer("/spec/scopes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if !scope.as_str().is_some_and(|sc| SCOPES.contains(&sc)) {
            return Err(format!(
                "spec.scopes[{i}]: Unsupported value: {scope}: supported values: {}",
                SCOPES
                    .iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q"}, "spec": spec})
    }

    #[test]
    fn requests_and_limits_print_apart_as_used_over_hard() {
        let o = quota(json!({"hard": {"requests.cpu": "1", "limits.memory": "2Gi", "pods": "10"}}));
        assert_eq!(validate(&o, None), Ok(()));
        let (_, cells) = table(&o);
        assert_eq!(cells[2], "pods: 0/10, requests.cpu: 0/1");
        assert_eq!(cells[3], "limits.memory: 0/2Gi");
    }

    #[test]
    fn negative_or_malformed_limits_and_unknown_scopes_are_refused() {
        for (spec, want) in [
            (
                json!({"hard": {"pods": "-1"}}),
                "spec.hard[pods]: Invalid value: \"-1\": must be greater than or equal to 0",
            ),
            (
                json!({"hard": {"cpu": "x"}}),
                "spec.hard[cpu]: Invalid value: \"x\"",
            ),
            (
                json!({"scopes": ["Sometimes"]}),
                "spec.scopes[0]: Unsupported value: \"Sometimes\"",
            ),
        ] {
            let err = validate(&quota(spec.clone()), None).expect_err(&spec.to_string());
            assert!(err.contains(want), "{spec}: {err}");
        }
    }
}
