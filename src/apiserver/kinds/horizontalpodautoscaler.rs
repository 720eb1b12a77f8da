//! `HorizontalPodAutoscaler` (autoscaling/v2, short name `hpa`): scales a workload's
//! replicas between bounds to keep metrics at their targets. Served, defaulted
//! (`minReplicas: 1`, an 80 % CPU target when no metric is given) and validated as
//! kube-apiserver does: the target reference, the bounds, each metric's source and target.
//! Limits: stored only — no controller scales anything until resource metrics exist
//! (issue 17); `autoscaling/v1` is not served, so `kubectl autoscale` needs the v2 form
//! through `kubectl apply`.

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use serde_json::{json, Value};

use super::{age, one_of, required, s, schema_of, set_default, Col, Strategy};

pub static STRATEGY: Strategy = Strategy {
    schema: schema_of::<HorizontalPodAutoscaler>,
    table: Some(table),
    defaults: Some(defaults),
    validate: Some(validate),
};

const METRIC_TYPES: &[&str] = &[
    "ContainerResource",
    "External",
    "Object",
    "Pods",
    "Resource",
];

/// The field of a metric that holds its source, by the metric's `type`.
fn source_field(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Resource" => "resource",
        "ContainerResource" => "containerResource",
        "Pods" => "pods",
        "Object" => "object",
        "External" => "external",
        _ => return None,
    })
}

/// NAME, REFERENCE, TARGETS, MINPODS, MAXPODS, REPLICAS, AGE (kubectl's columns).
fn table(o: &Value) -> (Vec<Col>, Vec<Value>) {
    let reference = format!(
        "{}/{}",
        s(o, "/spec/scaleTargetRef/kind"),
        s(o, "/spec/scaleTargetRef/name")
    );
    (
        vec![
            ("Name", "string", 0),
            ("Reference", "string", 0),
            ("Targets", "string", 0),
            ("MinPods", "string", 0),
            ("MaxPods", "integer", 0),
            ("Replicas", "integer", 0),
            ("Age", "string", 0),
        ],
        vec![
            json!(s(o, "/metadata/name")),
            json!(reference),
            json!(targets(o)),
            json!(o
                .pointer("/spec/minReplicas")
                .and_then(Value::as_i64)
                .map_or("<unset>".to_string(), |n| n.to_string())),
            json!(o
                .pointer("/spec/maxReplicas")
                .and_then(Value::as_i64)
                .unwrap_or(0)),
            json!(o
                .pointer("/status/currentReplicas")
                .and_then(Value::as_i64)
                .unwrap_or(0)),
            json!(age(o)),
        ],
    )
}

/// `cpu: 40%/80%` per resource metric (`<unknown>` until one is measured), as kubectl
/// prints them; other metric sources by their target alone.
fn targets(o: &Value) -> String {
    let metrics = o.pointer("/spec/metrics").and_then(Value::as_array);
    let current = o
        .pointer("/status/currentMetrics")
        .and_then(Value::as_array);
    let mut out = Vec::new();
    for (i, m) in metrics.into_iter().flatten().enumerate() {
        let Some(source) = source_field(s(m, "/type")) else {
            continue;
        };
        let target = &m[source]["target"];
        let now = current
            .and_then(|c| c.get(i))
            .map(|c| &c[source]["current"]);
        let shown = |field: &str, pct: bool| {
            let v = |x: &Value| match &x[field] {
                Value::Null => None,
                Value::String(q) => Some(q.clone()),
                n => Some(format!("{n}{}", if pct { "%" } else { "" })),
            };
            format!(
                "{}/{}",
                now.and_then(v).unwrap_or_else(|| "<unknown>".into()),
                v(target).unwrap_or_default()
            )
        };
        let value = match s(target, "/type") {
            "Utilization" => shown("averageUtilization", true),
            "AverageValue" => shown("averageValue", false),
            _ => shown("value", false),
        };
        let name = s(&m[source], "/name");
        out.push(if name.is_empty() {
            value
        } else {
            format!("{name}: {value}")
        });
    }
    if out.is_empty() {
        "<none>".into()
    } else {
        out.join(", ")
    }
}

fn defaults(o: &mut Value) {
    set_default(o, &["spec", "minReplicas"], json!(1));
    if o.pointer("/spec/metrics").is_none_or(Value::is_null) {
        o["spec"]["metrics"] = json!([{"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": 80}}}]);
    }
}

fn validate(new: &Value, _old: Option<&Value>) -> Result<(), String> {
    required(new, "/spec/scaleTargetRef/kind", "spec.scaleTargetRef.kind")?;
    required(new, "/spec/scaleTargetRef/name", "spec.scaleTargetRef.name")?;
    let min = new.pointer("/spec/minReplicas").and_then(Value::as_i64);
    if let Some(m) = min.filter(|m| *m < 1) {
        return Err(format!(
            "spec.minReplicas: Invalid value: {m}: must be greater than or equal to 1"
        ));
    }
    let max = match new.pointer("/spec/maxReplicas") {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => return Err("spec.maxReplicas: Required value".into()),
    };
    if max < 1 {
        return Err(format!(
            "spec.maxReplicas: Invalid value: {max}: must be greater than 0"
        ));
    }
    if max < min.unwrap_or(1) {
        return Err(format!(
            "spec.maxReplicas: Invalid value: {max}: must be greater than or equal to `minReplicas`"
        ));
    }
    let metrics = new.pointer("/spec/metrics").and_then(Value::as_array);
    for (i, m) in metrics.into_iter().flatten().enumerate() {
        validate_metric(m, &format!("spec.metrics[{i}]"))?;
    }
    Ok(())
}

fn validate_metric(m: &Value, at: &str) -> Result<(), String> {
    let kind = required(m, "/type", &format!("{at}.type"))?;
    one_of(m, "/type", &format!("{at}.type"), METRIC_TYPES)?;
    // `one_of` above leaves only the known types.
    let source = source_field(kind).unwrap_or("external");
    let Some(src) = m.get(source).filter(|v| v.is_object()) else {
        return Err(format!(
            "{at}.{source}: Required value: must populate information for the given metric source"
        ));
    };
    let at = format!("{at}.{source}");
    match kind {
        "Resource" | "ContainerResource" => {
            required(src, "/name", &format!("{at}.name"))?;
            if kind == "ContainerResource" {
                required(src, "/container", &format!("{at}.container"))?;
            }
        }
        _ => {
            required(src, "/metric/name", &format!("{at}.metric.name"))?;
        }
    }
    let target = &src["target"];
    let t = required(target, "/type", &format!("{at}.target.type"))?;
    one_of(
        target,
        "/type",
        &format!("{at}.target.type"),
        &["AverageValue", "Utilization", "Value"],
    )?;
    let field = match t {
        "Utilization" => "averageUtilization",
        "AverageValue" => "averageValue",
        _ => "value",
    };
    match &target[field] {
        Value::Null => Err(format!(
            "{at}.target.{field}: Required value: must set either a target raw value or a target utilization"
        )),
        Value::Number(n) if n.as_i64().is_none_or(|v| v <= 0) => Err(format!(
            "{at}.target.{field}: Invalid value: {n}: must be greater than 0"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hpa(spec: Value) -> Value {
        let mut o = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                           "metadata": {"name": "web", "namespace": "shop"}, "spec": spec});
        defaults(&mut o);
        o
    }

    fn target() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"})
    }

    #[test]
    fn the_seeds_cpu_autoscaler_is_defaulted_and_printed() {
        let o = hpa(json!({"scaleTargetRef": target(), "maxReplicas": 10}));
        assert_eq!(validate(&o, None), Ok(()));
        assert_eq!(o["spec"]["minReplicas"], 1);
        let (cols, cells) = table(&o);
        assert_eq!(cols.len(), cells.len());
        assert_eq!(cells[1], "Deployment/web");
        assert_eq!(cells[2], "cpu: <unknown>/80%");
        assert_eq!(cells[3], "1");
        let mut measured = o.clone();
        measured["status"] = json!({"currentReplicas": 3, "currentMetrics": [{"type": "Resource",
            "resource": {"name": "cpu", "current": {"averageUtilization": 42}}}]});
        let cells = table(&measured).1;
        assert_eq!(cells[2], "cpu: 42%/80%");
        assert_eq!(cells[5], 3);
        let memory = hpa(
            json!({"scaleTargetRef": target(), "maxReplicas": 3, "metrics": [
            {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "500Mi"}}}]}),
        );
        assert_eq!(validate(&memory, None), Ok(()));
        assert_eq!(table(&memory).1[2], "memory: <unknown>/500Mi");
    }

    #[test]
    fn each_refusal_names_the_field() {
        let cases = [
            (json!({"maxReplicas": 3}), "spec.scaleTargetRef.kind: Required value"),
            (json!({"scaleTargetRef": target()}), "spec.maxReplicas: Required value"),
            (
                json!({"scaleTargetRef": target(), "minReplicas": 0, "maxReplicas": 3}),
                "spec.minReplicas: Invalid value: 0: must be greater than or equal to 1",
            ),
            (
                json!({"scaleTargetRef": target(), "minReplicas": 5, "maxReplicas": 3}),
                "spec.maxReplicas: Invalid value: 3: must be greater than or equal to `minReplicas`",
            ),
            (
                json!({"scaleTargetRef": target(), "maxReplicas": 3, "metrics": [{"type": "Magic"}]}),
                "spec.metrics[0].type: Unsupported value: \"Magic\"",
            ),
            (
                json!({"scaleTargetRef": target(), "maxReplicas": 3, "metrics": [{"type": "Resource"}]}),
                "spec.metrics[0].resource: Required value",
            ),
            (
                json!({"scaleTargetRef": target(), "maxReplicas": 3, "metrics": [{"type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 0}}}]}),
                "spec.metrics[0].resource.target.averageUtilization: Invalid value: 0",
            ),
            (
                json!({"scaleTargetRef": target(), "maxReplicas": 3, "metrics": [{"type": "Pods",
                    "pods": {"metric": {}, "target": {"type": "AverageValue", "averageValue": "1k"}}}]}),
                "spec.metrics[0].pods.metric.name: Required value",
            ),
        ];
        for (spec, want) in cases {
            let err = validate(&hpa(spec.clone()), None).expect_err(&spec.to_string());
            assert!(err.contains(want), "{spec}: {err}");
        }
    }
}
