//! `CSIDriver` (storage.k8s.io/v1, cluster-scoped): how the cluster talks to an installed
//! CSI volume driver (attach needed, pod info on mount, volume modes). CSI drivers'
//! manifests create one. Served, defaulted and validated as kube-apiserver does; whether
//! it needs attaching is fixed once created. Limits: the kubelet has no CSI client yet.

use k8s_openapi::api::storage::v1::CSIDriver;
use serde_json::{json, Value};

use super::{age, immutable, one_of, s, schema_of, set_default, Col, Strategy};

pub static STRATEGY: Strategy = Strategy {
    schema: schema_of::<CSIDriver>,
    table: Some(table),
    defaults: Some(defaults),
    validate: Some(validate),
};

/// NAME, ATTACHREQUIRED, PODINFOONMOUNT, STORAGECAPACITY, TOKENREQUESTS,
/// REQUIRESREPUBLISH, MODES, AGE (kubectl's columns).
fn table(o: &Value) -> (Vec<Col>, Vec<Value>) {
    let flag = |f: &str| o.pointer(&format!("/spec/{f}")).and_then(Value::as_bool);
    let tokens: Vec<&str> = o
        .pointer("/spec/tokenRequests")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|t| s(t, "/audience"))
        .collect();
    let modes: Vec<&str> = o
        .pointer("/spec/volumeLifecycleModes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    (
        vec![
            ("Name", "string", 0),
            ("AttachRequired", "boolean", 0),
            ("PodInfoOnMount", "boolean", 0),
            ("StorageCapacity", "boolean", 0),
            ("TokenRequests", "string", 0),
            ("RequiresRepublish", "boolean", 0),
            ("Modes", "string", 0),
            ("Age", "string", 0),
        ],
        vec![
            json!(s(o, "/metadata/name")),
            json!(flag("attachRequired").unwrap_or(true)),
            json!(flag("podInfoOnMount").unwrap_or(false)),
            json!(flag("storageCapacity").unwrap_or(false)),
            json!(if tokens.is_empty() {
                "<unset>".to_string()
            } else {
                tokens.join(",")
            }),
            json!(flag("requiresRepublish").unwrap_or(false)),
            json!(if modes.is_empty() {
                "<none>".to_string()
            } else {
                modes.join(",")
            }),
            json!(age(o)),
        ],
    )
}

fn defaults(o: &mut Value) {
    set_default(o, &["spec", "attachRequired"], json!(true));
    set_default(o, &["spec", "podInfoOnMount"], json!(false));
    set_default(o, &["spec", "storageCapacity"], json!(false));
    set_default(o, &["spec", "requiresRepublish"], json!(false));
    set_default(
        o,
        &["spec", "fsGroupPolicy"],
        json!("ReadWriteOnceWithFSType"),
    );
    set_default(o, &["spec", "volumeLifecycleModes"], json!(["Persistent"]));
}

fn validate(new: &Value, old: Option<&Value>) -> Result<(), String> {
    one_of(
        new,
        "/spec/fsGroupPolicy",
        "spec.fsGroupPolicy",
        &["File", "None", "ReadWriteOnceWithFSType"],
    )?;
    let modes = new.pointer("/spec/volumeLifecycleModes");
    for (i, _) in modes
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        one_of(
            new,
            &format!("/spec/volumeLifecycleModes/{i}"),
            &format!("spec.volumeLifecycleModes[{i}]"),
            &["Ephemeral", "Persistent"],
        )?;
    }
    for (i, t) in new
        .pointer("/spec/tokenRequests")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(secs) = t.get("expirationSeconds").and_then(Value::as_i64) {
            if secs < 600 {
                return Err(format!(
                    "spec.tokenRequests[{i}].expirationSeconds: Invalid value: {secs}: may not specify a duration less than 10 minutes"
                ));
            }
        }
    }
    immutable(new, old, "/spec/attachRequired", "spec.attachRequired")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn driver(spec: Value) -> Value {
        let mut o = json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
                           "metadata": {"name": "nfs.csi.k8s.io"}, "spec": spec});
        defaults(&mut o);
        o
    }

    #[test]
    fn the_nfs_driver_s_object_is_defaulted_and_printed() {
        let o = driver(
            json!({"attachRequired": false, "volumeLifecycleModes": ["Persistent", "Ephemeral"]}),
        );
        assert_eq!(validate(&o, None), Ok(()));
        assert_eq!(o["spec"]["fsGroupPolicy"], "ReadWriteOnceWithFSType");
        let (cols, cells) = table(&o);
        assert_eq!(cols.len(), cells.len());
        assert_eq!(cells[1], false);
        assert_eq!(cells[4], "<unset>");
        assert_eq!(cells[6], "Persistent,Ephemeral");
    }

    #[test]
    fn bad_values_are_refused_with_their_field() {
        let err = validate(&driver(json!({"fsGroupPolicy": "Any"})), None).expect_err("policy");
        assert!(
            err.contains("spec.fsGroupPolicy: Unsupported value"),
            "{err}"
        );
        let err = validate(&driver(json!({"volumeLifecycleModes": ["Forever"]})), None)
            .expect_err("mode");
        assert!(err.contains("spec.volumeLifecycleModes[0]"), "{err}");
        let err = validate(
            &driver(json!({"tokenRequests": [{"audience": "a", "expirationSeconds": 60}]})),
            None,
        )
        .expect_err("short token");
        assert!(err.contains("less than 10 minutes"), "{err}");
        let old = driver(json!({}));
        let err =
            validate(&driver(json!({"attachRequired": false})), Some(&old)).expect_err("immutable");
        assert!(err.contains("spec.attachRequired: Invalid value"), "{err}");
    }
}
