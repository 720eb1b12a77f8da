//! `StorageClass` (storage.k8s.io/v1, cluster-scoped, short name `sc`): a kind of
//! dynamically provisioned volume — which provisioner, its parameters, what happens to a
//! released volume and when binding happens. Served, defaulted (`reclaimPolicy: Delete`,
//! `volumeBindingMode: Immediate`) and validated as kube-apiserver does; provisioner,
//! parameters, reclaim policy and binding mode are fixed once created. The class marked
//! with `storageclass.kubernetes.io/is-default-class: "true"` shows as `(default)`.
//! Limits: nothing provisions volumes yet (issue 16 brings the binder and a provisioner).

use k8s_openapi::api::storage::v1::StorageClass;
use serde_json::{json, Value};

use super::{
    age, immutable, is_qualified_name, one_of, required, s, schema_of, set_default, Col, Strategy,
};

pub static STRATEGY: Strategy = Strategy {
    schema: schema_of::<StorageClass>,
    table: Some(table),
    defaults: Some(defaults),
    validate: Some(validate),
};

/// The annotation that makes a class the cluster's default.
pub const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";

/// NAME (with `(default)`), PROVISIONER, RECLAIMPOLICY, VOLUMEBINDINGMODE,
/// ALLOWVOLUMEEXPANSION, AGE (kubectl's columns).
fn table(o: &Value) -> (Vec<Col>, Vec<Value>) {
    let mut name = s(o, "/metadata/name").to_string();
    let annotations = o.pointer("/metadata/annotations");
    let is_default = annotations
        .and_then(|a| a.get(DEFAULT_CLASS))
        .or_else(|| {
            annotations.and_then(|a| a.get("storageclass.beta.kubernetes.io/is-default-class"))
        })
        .and_then(Value::as_str)
        == Some("true");
    if is_default {
        name.push_str(" (default)");
    }
    (
        vec![
            ("Name", "string", 0),
            ("Provisioner", "string", 0),
            ("ReclaimPolicy", "string", 0),
            ("VolumeBindingMode", "string", 0),
            ("AllowVolumeExpansion", "boolean", 0),
            ("Age", "string", 0),
        ],
        vec![
            json!(name),
            json!(s(o, "/provisioner")),
            json!(s(o, "/reclaimPolicy")),
            json!(s(o, "/volumeBindingMode")),
            json!(o
                .get("allowVolumeExpansion")
                .and_then(Value::as_bool)
                .unwrap_or(false)),
            json!(age(o)),
        ],
    )
}

fn defaults(o: &mut Value) {
    set_default(o, &["reclaimPolicy"], json!("Delete"));
    set_default(o, &["volumeBindingMode"], json!("Immediate"));
}

fn validate(new: &Value, old: Option<&Value>) -> Result<(), String> {
    let provisioner = required(new, "/provisioner", "provisioner")?;
    if !is_qualified_name(&provisioner.to_ascii_lowercase()) {
        return Err(format!(
            "provisioner: Invalid value: {}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            json!(provisioner)
        ));
    }
    one_of(
        new,
        "/reclaimPolicy",
        "reclaimPolicy",
        &["Delete", "Retain"],
    )?;
    one_of(
        new,
        "/volumeBindingMode",
        "volumeBindingMode",
        &["Immediate", "WaitForFirstConsumer"],
    )?;
    if let Some(p) = new.get("parameters").filter(|p| !p.is_null()) {
        let Some(p) = p.as_object() else {
            return Err("parameters: Invalid value: must be a map of strings".into());
        };
        if p.len() > 512 {
            return Err(format!(
                "parameters: Too many: {}: must have at most 512 items",
                p.len()
            ));
        }
        if let Some((k, _)) = p.iter().find(|(k, v)| k.is_empty() || !v.is_string()) {
            return Err(format!(
                "parameters[{k}]: Invalid value: must be a non-empty key with a string value"
            ));
        }
    }
    if let Some(old) = old {
        for field in ["parameters", "provisioner", "reclaimPolicy"] {
            if old.get(field) != new.get(field) {
                return Err(format!(
                    "{field}: Forbidden: updates to {field} are forbidden."
                ));
            }
        }
    }
    immutable(new, old, "/volumeBindingMode", "volumeBindingMode")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sc(body: Value) -> Value {
        let mut o = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                           "metadata": {"name": "fast"}});
        for (k, v) in body.as_object().expect("object") {
            o[k] = v.clone();
        }
        defaults(&mut o);
        o
    }

    #[test]
    fn a_class_is_defaulted_and_printed_as_kubectl_does() {
        let mut o = sc(json!({"provisioner": "nfs.csi.k8s.io",
                              "parameters": {"server": "nfs.local", "share": "/srv"}}));
        assert_eq!(validate(&o, None), Ok(()));
        assert_eq!(o["reclaimPolicy"], "Delete");
        assert_eq!(o["volumeBindingMode"], "Immediate");
        o["metadata"]["annotations"] = json!({DEFAULT_CLASS: "true"});
        let (cols, cells) = table(&o);
        assert_eq!(cols.len(), cells.len());
        assert_eq!(cells[0], "fast (default)");
        assert_eq!(cells[1], "nfs.csi.k8s.io");
        assert_eq!(cells[4], false);
    }

    #[test]
    fn each_refusal_names_the_field() {
        let cases = [
            (json!({}), "provisioner: Required value"),
            (
                json!({"provisioner": "no spaces/allowed here"}),
                "provisioner: Invalid value",
            ),
            (
                json!({"provisioner": "a.io/x", "reclaimPolicy": "Recycle"}),
                "reclaimPolicy: Unsupported value: \"Recycle\"",
            ),
            (
                json!({"provisioner": "a.io/x", "volumeBindingMode": "Later"}),
                "volumeBindingMode: Unsupported value",
            ),
            (
                json!({"provisioner": "a.io/x", "parameters": {"size": 5}}),
                "parameters[size]",
            ),
        ];
        for (body, want) in cases {
            let err = validate(&sc(body.clone()), None).expect_err(&body.to_string());
            assert!(err.contains(want), "{body}: {err}");
        }
    }

    #[test]
    fn provisioner_parameters_and_policies_are_fixed_once_created() {
        let old = sc(json!({"provisioner": "a.io/x", "parameters": {"k": "v"}}));
        let cases = [
            (
                json!({"provisioner": "b.io/y", "parameters": {"k": "v"}}),
                "updates to provisioner are forbidden",
            ),
            (
                json!({"provisioner": "a.io/x", "parameters": {"k": "w"}}),
                "updates to parameters are forbidden",
            ),
            (
                json!({"provisioner": "a.io/x", "parameters": {"k": "v"}, "reclaimPolicy": "Retain"}),
                "updates to reclaimPolicy are forbidden",
            ),
            (
                json!({"provisioner": "a.io/x", "parameters": {"k": "v"}, "volumeBindingMode": "WaitForFirstConsumer"}),
                "volumeBindingMode: Invalid value",
            ),
        ];
        for (body, want) in cases {
            let err = validate(&sc(body.clone()), Some(&old)).expect_err(&body.to_string());
            assert!(err.contains(want), "{body}: {err}");
        }
        let expandable = sc(json!({"provisioner": "a.io/x", "parameters": {"k": "v"},
                                   "allowVolumeExpansion": true}));
        assert_eq!(validate(&expandable, Some(&old)), Ok(()));
    }
}
