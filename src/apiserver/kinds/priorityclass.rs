//! `PriorityClass` (scheduling.k8s.io/v1, cluster-scoped): a name for a pod priority
//! value, which add-on manifests create for their pods. Served and validated as
//! kube-apiserver does: values above one billion and names starting with `system-` are
//! kept for the system's own classes, and value and preemption policy are fixed once
//! created. Pods get their class's value at admission (`super::super::priority`).
//! Limits: a second `globalDefault` class is not refused; the scheduler does not preempt.

use k8s_openapi::api::scheduling::v1::PriorityClass;
use serde_json::{json, Value};

use super::{age, immutable, one_of, s, schema_of, set_default, Col, Strategy};

pub static STRATEGY: Strategy = Strategy {
    schema: schema_of::<PriorityClass>,
    table: Some(table),
    defaults: Some(defaults),
    validate: Some(validate),
};

/// The highest value a user-defined class may have.
const HIGHEST_USER_DEFINABLE: i64 = 1_000_000_000;
/// The two classes every cluster has (created at bootstrap): name, value, description.
pub const SYSTEM_CLASSES: [(&str, i64, &str); 2] = [
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

/// NAME, VALUE, GLOBAL-DEFAULT, AGE, PREEMPTIONPOLICY (kubectl's columns).
fn table(o: &Value) -> (Vec<Col>, Vec<Value>) {
    (
        vec![
            ("Name", "string", 0),
            ("Value", "integer", 0),
            ("Global-Default", "boolean", 0),
            ("Age", "string", 0),
            ("PreemptionPolicy", "string", 0),
        ],
        vec![
            json!(s(o, "/metadata/name")),
            json!(o.get("value").and_then(Value::as_i64).unwrap_or(0)),
            json!(o
                .get("globalDefault")
                .and_then(Value::as_bool)
                .unwrap_or(false)),
            json!(age(o)),
            json!(s(o, "/preemptionPolicy")),
        ],
    )
}

fn defaults(o: &mut Value) {
    set_default(o, &["preemptionPolicy"], json!("PreemptLowerPriority"));
}

fn validate(new: &Value, old: Option<&Value>) -> Result<(), String> {
    let name = s(new, "/metadata/name");
    let value = match new.get("value") {
        Some(v) => v
            .as_i64()
            .filter(|v| i32::try_from(*v).is_ok())
            .ok_or_else(|| format!("value: Invalid value: {v}: must be a 32-bit integer"))?,
        None => return Err("value: Required value".into()),
    };
    if name.starts_with("system-") {
        if !SYSTEM_CLASSES
            .iter()
            .any(|(n, v, _)| *n == name && *v == value)
        {
            return Err(
                "metadata.name: Forbidden: priority class names with 'system-' prefix are reserved for system use only"
                    .into(),
            );
        }
    } else if value > HIGHEST_USER_DEFINABLE {
        return Err(format!(
            "value: Forbidden: maximum allowed value of a user defined priority is {HIGHEST_USER_DEFINABLE}"
        ));
    }
    one_of(
        new,
        "/preemptionPolicy",
        "preemptionPolicy",
        &["Never", "PreemptLowerPriority"],
    )?;
    if old.is_some_and(|o| o.get("value") != new.get("value")) {
        return Err("value: Forbidden: may not be changed in an update.".into());
    }
    immutable(new, old, "/preemptionPolicy", "preemptionPolicy")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pc(name: &str, body: Value) -> Value {
        let mut o = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                           "metadata": {"name": name}});
        for (k, v) in body.as_object().expect("object") {
            o[k] = v.clone();
        }
        defaults(&mut o);
        o
    }

    #[test]
    fn user_and_system_classes_kube_apiserver_accepts_are_accepted() {
        for o in [
            pc("high", json!({"value": 1000000, "description": "batch"})),
            pc("top", json!({"value": 1000000000, "globalDefault": true})),
            pc("low", json!({"value": -5, "preemptionPolicy": "Never"})),
            pc("system-cluster-critical", json!({"value": 2000000000})),
        ] {
            assert_eq!(validate(&o, None), Ok(()), "{o}");
        }
        let (cols, cells) = table(&pc("high", json!({"value": 1000000})));
        assert_eq!(cols.len(), cells.len());
        assert_eq!(cells[1], 1000000);
        assert_eq!(cells[2], false);
        assert_eq!(cells[4], "PreemptLowerPriority");
    }

    #[test]
    fn each_refusal_names_the_field() {
        let cases = [
            (pc("a", json!({})), "value: Required value"),
            (
                pc("a", json!({"value": "high"})),
                "must be a 32-bit integer",
            ),
            (
                pc("a", json!({"value": 3000000000_i64})),
                "must be a 32-bit integer",
            ),
            (
                pc("a", json!({"value": 1000000001})),
                "maximum allowed value of a user defined priority is 1000000000",
            ),
            (
                pc("system-mine", json!({"value": 10})),
                "metadata.name: Forbidden: priority class names with 'system-' prefix",
            ),
            (
                pc("a", json!({"value": 1, "preemptionPolicy": "Sometimes"})),
                "preemptionPolicy: Unsupported value: \"Sometimes\"",
            ),
        ];
        for (o, want) in cases {
            let err = validate(&o, None).expect_err(&o.to_string());
            assert!(err.contains(want), "{o}: {err}");
        }
    }

    #[test]
    fn value_and_preemption_policy_are_fixed_once_created() {
        let old = pc("a", json!({"value": 10}));
        let err = validate(&pc("a", json!({"value": 11})), Some(&old)).expect_err("value");
        assert!(
            err.contains("value: Forbidden: may not be changed"),
            "{err}"
        );
        let never = pc("a", json!({"value": 10, "preemptionPolicy": "Never"}));
        let err = validate(&never, Some(&old)).expect_err("policy");
        assert!(err.contains("preemptionPolicy: Invalid value"), "{err}");
        let described = pc("a", json!({"value": 10, "description": "new words"}));
        assert_eq!(validate(&described, Some(&old)), Ok(()));
    }
}
