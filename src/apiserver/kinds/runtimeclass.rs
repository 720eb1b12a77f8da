//! `RuntimeClass` (node.k8s.io/v1, cluster-scoped): a named container runtime
//! configuration (gVisor, Kata) that pods select with `runtimeClassName`. Served and
//! validated as kube-apiserver does: `handler` is a required DNS label, fixed once set.
//! Limits: the kubelet runs every pod with runc whatever class it names.

use k8s_openapi::api::node::v1::RuntimeClass;
use serde_json::{json, Value};

use super::{age, immutable, required, s, schema_of, Col, Strategy};

pub static STRATEGY: Strategy = Strategy {
    schema: schema_of::<RuntimeClass>,
    table: Some(table),
    defaults: None,
    validate: Some(validate),
};

/// NAME, HANDLER, AGE (kubectl's columns).
fn table(o: &Value) -> (Vec<Col>, Vec<Value>) {
    (
        vec![
            ("Name", "string", 0),
            ("Handler", "string", 0),
            ("Age", "string", 0),
        ],
        vec![
            json!(s(o, "/metadata/name")),
            json!(s(o, "/handler")),
            json!(age(o)),
        ],
    )
}

fn validate(new: &Value, old: Option<&Value>) -> Result<(), String> {
    let handler = required(new, "/handler", "handler")?;
    if !crate::cluster::is_dns_label(handler) {
        return Err(format!(
            "handler: Invalid value: {}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
            json!(handler)
        ));
    }
    immutable(new, old, "/handler", "handler")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(handler: Value) -> Value {
        json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
               "metadata": {"name": "gvisor"}, "handler": handler})
    }

    #[test]
    fn a_handler_is_a_fixed_dns_label() {
        assert_eq!(validate(&rc(json!("runsc")), None), Ok(()));
        assert_eq!(table(&rc(json!("runsc"))).1[1], "runsc");
        let err = validate(&rc(Value::Null), None).expect_err("required");
        assert!(err.contains("handler: Required value"), "{err}");
        let err = validate(&rc(json!("Run_SC")), None).expect_err("label");
        assert!(err.contains("handler: Invalid value: \"Run_SC\""), "{err}");
        let err = validate(&rc(json!("kata")), Some(&rc(json!("runsc")))).expect_err("fixed");
        assert!(err.contains("field is immutable"), "{err}");
    }
}
