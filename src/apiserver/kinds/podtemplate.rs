//! `PodTemplate` (v1, namespaced): a stored pod template that controllers of other
//! projects reference. Served as kube-apiserver serves it: a template with at least one
//! container, each named and with an image.

use k8s_openapi::api::core::v1::PodTemplate;
use serde_json::{json, Value};

use super::{map_text, or_none, s, schema_of, Col, Strategy};

pub static STRATEGY: Strategy = Strategy {
    schema: schema_of::<PodTemplate>,
    table: Some(table),
    defaults: None,
    validate: Some(validate),
};

fn containers(o: &Value) -> Vec<Value> {
    o.pointer("/template/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// TEMPLATE, CONTAINER(S), IMAGE(S), POD LABELS (kubectl's columns).
fn table(o: &Value) -> (Vec<Col>, Vec<Value>) {
    let cs = containers(o);
    let names: Vec<&str> = cs.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = cs.iter().map(|c| s(c, "/image")).collect();
    (
        vec![
            ("Template", "string", 0),
            ("Containers", "string", 0),
            ("Images", "string", 0),
            ("Pod Labels", "string", 0),
        ],
        vec![
            json!(s(o, "/metadata/name")),
            json!(names.join(",")),
            json!(images.join(",")),
            or_none(map_text(o, "/template/metadata/labels")),
        ],
    )
}

fn validate(new: &Value, _old: Option<&Value>) -> Result<(), String> {
    let cs = containers(new);
    if cs.is_empty() {
        return Err("template.spec.containers: Required value".into());
    }
    for (i, c) in cs.iter().enumerate() {
        if s(c, "/name").is_empty() {
            return Err(format!(
                "template.spec.containers[{i}].name: Required value"
            ));
        }
        if s(c, "/image").is_empty() {
            return Err(format!(
                "template.spec.containers[{i}].image: Required value"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_needs_named_containers_with_images() {
        let ok = json!({"metadata": {"name": "t"}, "template": {"metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "c", "image": "nginx"}]}}});
        assert_eq!(validate(&ok, None), Ok(()));
        assert_eq!(table(&ok).1[3], "app=web");
        let err =
            validate(&json!({"template": {"spec": {"containers": []}}}), None).expect_err("empty");
        assert!(
            err.contains("template.spec.containers: Required value"),
            "{err}"
        );
        let err = validate(
            &json!({"template": {"spec": {"containers": [{"name": "c"}]}}}),
            None,
        )
        .expect_err("image");
        assert!(err.contains("containers[0].image: Required value"), "{err}");
    }
}
