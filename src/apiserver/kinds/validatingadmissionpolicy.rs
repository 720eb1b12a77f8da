//! `ValidatingAdmissionPolicy` and `ValidatingAdmissionPolicyBinding`
//! (admissionregistration.k8s.io/v1, cluster-scoped): CEL checks that the apiserver runs on
//! the writes a policy matches, once a binding puts it in force ([`crate::apiserver`]'s
//! `policy` module runs them). Checked as kube-apiserver checks them:
//!
//! - a policy has `matchConstraints.resourceRules` and at least one validation (or audit
//!   annotation); every `expression` (validations, `matchConditions`, `variables`,
//!   `messageExpression`) compiles with the variables a policy sees (`object`,
//!   `oldObject`, `request`, `params`, `namespaceObject`, `variables`) within the cost
//!   budget; reasons are `Unauthorized`, `Forbidden`, `Invalid` or
//!   `RequestEntityTooLarge`; messages have no line breaks;
//! - a binding names its policy and at least one of the `Deny`, `Warn`, `Audit` actions,
//!   never `Deny` with `Warn`; a `paramRef` has a `name` or a `selector`, not both, and a
//!   `parameterNotFoundAction`;
//! - defaults: `failurePolicy: Fail`, `matchPolicy: Equivalent`, empty selectors, rule
//!   `scope: "*"`.

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use serde_json::{json, Value};

use super::{age, one_of, s, schema_of, set_default, Col, Strategy};
use crate::apiserver::crd::cel;

pub static POLICY: Strategy = Strategy {
    schema: schema_of::<ValidatingAdmissionPolicy>,
    table: Some(policy_table),
    defaults: Some(policy_defaults),
    validate: Some(validate_policy),
};

pub static BINDING: Strategy = Strategy {
    schema: schema_of::<ValidatingAdmissionPolicyBinding>,
    table: Some(binding_table),
    defaults: Some(binding_defaults),
    validate: Some(validate_binding),
};

/// The variables every policy expression may use.
pub const VARIABLES: &[&str] = &[
    "object",
    "oldObject",
    "request",
    "params",
    "namespaceObject",
    "variables",
];

/// NAME, VALIDATIONS, PARAMKIND, AGE (kube-apiserver's columns).
fn policy_table(o: &Value) -> (Vec<Col>, Vec<Value>) {
    let kind = &o["spec"]["paramKind"];
    let param = if kind.is_object() {
        format!(
            "{}/{}",
            kind["apiVersion"].as_str().unwrap_or_default(),
            kind["kind"].as_str().unwrap_or_default()
        )
    } else {
        "<unset>".into()
    };
    (
        vec![
            ("Name", "string", 0),
            ("Validations", "integer", 0),
            ("ParamKind", "string", 0),
            ("Age", "string", 0),
        ],
        vec![
            json!(s(o, "/metadata/name")),
            json!(super::len(o, "/spec/validations")),
            json!(param),
            json!(age(o)),
        ],
    )
}

/// NAME, POLICYNAME, PARAMREF, AGE.
fn binding_table(o: &Value) -> (Vec<Col>, Vec<Value>) {
    let r = &o["spec"]["paramRef"];
    let param = match (r["namespace"].as_str(), r["name"].as_str()) {
        _ if !r.is_object() => "<unset>".to_string(),
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        (None, Some(n)) => n.to_string(),
        _ => "*".to_string(),
    };
    (
        vec![
            ("Name", "string", 0),
            ("PolicyName", "string", 0),
            ("ParamRef", "string", 0),
            ("Age", "string", 0),
        ],
        vec![
            json!(s(o, "/metadata/name")),
            json!(s(o, "/spec/policyName")),
            json!(param),
            json!(age(o)),
        ],
    )
}

fn match_defaults(m: &mut Value) {
    set_default(m, &["matchPolicy"], json!("Equivalent"));
    set_default(m, &["namespaceSelector"], json!({}));
    set_default(m, &["objectSelector"], json!({}));
    for key in ["resourceRules", "excludeResourceRules"] {
        for r in m
            .get_mut(key)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            set_default(r, &["scope"], json!("*"));
        }
    }
}

fn policy_defaults(o: &mut Value) {
    if !o["spec"].is_object() {
        return;
    }
    set_default(o, &["spec", "failurePolicy"], json!("Fail"));
    if let Some(m) = o.pointer_mut("/spec/matchConstraints") {
        match_defaults(m);
    }
}

fn binding_defaults(o: &mut Value) {
    if let Some(m) = o.pointer_mut("/spec/matchResources") {
        match_defaults(m);
    }
}

/// A compile error of one expression, as `<path>: Invalid value: "<expr>": <why>`.
fn expression(v: &Value, at: &str) -> Result<(), String> {
    let text = v.as_str().unwrap_or_default();
    if text.trim().is_empty() {
        return Err(format!("{at}: Required value: expression is not specified"));
    }
    cel::compile_expression(text, VARIABLES)
        .map(|_| ())
        .map_err(|why| {
            if why.starts_with("Too long") {
                format!("{at}: {why}")
            } else {
                format!("{at}: Invalid value: {}: {why}", Value::String(text.into()))
            }
        })
}

fn no_line_breaks(v: &Value, at: &str) -> Result<(), String> {
    match v.as_str() {
        Some(m) if m.contains(['\n', '\r']) => Err(format!(
            "{at}: Invalid value: {v}: message must not contain line breaks"
        )),
        _ => Ok(()),
    }
}

fn named_expressions(list: &Value, at: &str, what: &str) -> Result<(), String> {
    let mut names: Vec<&str> = Vec::new();
    for (i, c) in list.as_array().into_iter().flatten().enumerate() {
        let here = format!("{at}[{i}]");
        let name = c["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            return Err(format!("{here}.name: Required value"));
        }
        let identifier = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if what == "variables" && !identifier {
            return Err(format!(
                "{here}.name: Invalid value: \"{name}\": name is not a valid CEL identifier"
            ));
        }
        if names.contains(&name) {
            return Err(format!("{here}.name: Duplicate value: \"{name}\""));
        }
        names.push(name);
        expression(&c["expression"], &format!("{here}.expression"))?;
    }
    Ok(())
}

fn validate_policy(new: &Value, _old: Option<&Value>) -> Result<(), String> {
    let spec = &new["spec"];
    one_of(
        new,
        "/spec/failurePolicy",
        "spec.failurePolicy",
        &["Fail", "Ignore"],
    )?;
    let m = &spec["matchConstraints"];
    if !m.is_object() {
        return Err("spec.matchConstraints: Required value".into());
    }
    if super::len(m, "/resourceRules") == 0 {
        return Err("spec.matchConstraints.resourceRules: Required value".into());
    }
    one_of(
        m,
        "/matchPolicy",
        "spec.matchConstraints.matchPolicy",
        &["Equivalent", "Exact"],
    )?;
    let validations = spec["validations"].as_array().cloned().unwrap_or_default();
    if validations.is_empty() && super::len(spec, "/auditAnnotations") == 0 {
        return Err(
            "spec.validations: Required value: validations or auditAnnotations must contain at least one item"
                .into(),
        );
    }
    if let Some(k) = spec.get("paramKind").filter(|k| !k.is_null()) {
        for f in ["apiVersion", "kind"] {
            if k[f].as_str().is_none_or(str::is_empty) {
                return Err(format!("spec.paramKind.{f}: Required value"));
            }
        }
    }
    named_expressions(
        &spec["matchConditions"],
        "spec.matchConditions",
        "matchConditions",
    )?;
    named_expressions(&spec["variables"], "spec.variables", "variables")?;
    for (i, v) in validations.iter().enumerate() {
        let at = format!("spec.validations[{i}]");
        expression(&v["expression"], &format!("{at}.expression"))?;
        no_line_breaks(&v["message"], &format!("{at}.message"))?;
        if let Some(m) = v["messageExpression"].as_str() {
            expression(&json!(m), &format!("{at}.messageExpression"))?;
        }
        one_of(
            v,
            "/reason",
            &format!("{at}.reason"),
            &[
                "Unauthorized",
                "Forbidden",
                "Invalid",
                "RequestEntityTooLarge",
            ],
        )?;
    }
    Ok(())
}

fn validate_binding(new: &Value, _old: Option<&Value>) -> Result<(), String> {
    let spec = &new["spec"];
    if spec["policyName"].as_str().is_none_or(str::is_empty) {
        return Err("spec.policyName: Required value".into());
    }
    let actions: Vec<&str> = spec["validationActions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if actions.is_empty() {
        return Err(
            "spec.validationActions: Required value: at least one validation action is required"
                .into(),
        );
    }
    for (i, a) in actions.iter().enumerate() {
        if !matches!(*a, "Deny" | "Warn" | "Audit") {
            return Err(format!(
                "spec.validationActions[{i}]: Unsupported value: \"{a}\": supported values: \"Audit\", \"Deny\", \"Warn\""
            ));
        }
        if actions[..i].contains(a) {
            return Err(format!(
                "spec.validationActions[{i}]: Duplicate value: \"{a}\""
            ));
        }
    }
    if actions.contains(&"Deny") && actions.contains(&"Warn") {
        return Err(format!(
            "spec.validationActions: Invalid value: {}: must not contain both Deny and Warn (repeating the same validation failure information in the API response and headers serves no purpose)",
            spec["validationActions"]
        ));
    }
    let r = &spec["paramRef"];
    if r.is_object() {
        let named = r["name"].as_str().is_some_and(|n| !n.is_empty());
        let selected = r["selector"].is_object();
        if named == selected {
            return Err(
                "spec.paramRef: Forbidden: exactly one of name or selector must be specified"
                    .into(),
            );
        }
        if r["parameterNotFoundAction"].is_null() {
            return Err("spec.paramRef.parameterNotFoundAction: Required value".into());
        }
        one_of(
            r,
            "/parameterNotFoundAction",
            "spec.paramRef.parameterNotFoundAction",
            &["Allow", "Deny"],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(validations: Value) -> Value {
        let mut p = json!({"metadata": {"name": "replicas.example.com"}, "spec": {
            "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]}]},
            "validations": validations}});
        policy_defaults(&mut p);
        p
    }

    #[test]
    fn policies_are_checked_and_defaulted_as_kube_apiserver_does() {
        let ok = policy(json!([{"expression": "object.spec.replicas <= 5"}]));
        assert_eq!(ok["spec"]["failurePolicy"], "Fail");
        assert_eq!(ok["spec"]["matchConstraints"]["matchPolicy"], "Equivalent");
        assert_eq!(
            ok["spec"]["matchConstraints"]["resourceRules"][0]["scope"],
            "*"
        );
        validate_policy(&ok, None).unwrap();
        let bad = policy(json!([{"expression": "object.spec.replicas <="}]));
        let e = validate_policy(&bad, None).unwrap_err();
        assert!(
            e.starts_with("spec.validations[0].expression: Invalid value: \"object.spec.replicas <=\": compilation failed: ERROR: <input>:1:"),
            "{e}"
        );
        let unknown = policy(json!([{"expression": "obj.spec.replicas < 5"}]));
        assert!(validate_policy(&unknown, None)
            .unwrap_err()
            .contains("undeclared reference to 'obj'"));
        let costly = policy(json!([{"expression":
            "object.spec.template.spec.containers.all(a, object.spec.template.spec.containers.all(b, a.name.contains(b.name)))"}]));
        assert!(validate_policy(&costly, None)
            .unwrap_err()
            .contains("estimated expression cost exceeds budget"));
        assert!(validate_policy(&policy(json!([])), None)
            .unwrap_err()
            .contains("validations or auditAnnotations must contain at least one item"));
        let reason = policy(json!([{"expression": "true", "reason": "Nope"}]));
        assert!(validate_policy(&reason, None)
            .unwrap_err()
            .contains("spec.validations[0].reason: Unsupported value: \"Nope\""));
    }

    #[test]
    fn bindings_name_a_policy_and_compatible_actions() {
        let b = |spec: Value| json!({"metadata": {"name": "b"}, "spec": spec});
        validate_binding(
            &b(json!({"policyName": "p", "validationActions": ["Deny"]})),
            None,
        )
        .unwrap();
        assert_eq!(
            validate_binding(&b(json!({"validationActions": ["Deny"]})), None).unwrap_err(),
            "spec.policyName: Required value"
        );
        assert!(validate_binding(
            &b(json!({"policyName": "p", "validationActions": ["Deny", "Warn"]})),
            None
        )
        .unwrap_err()
        .contains("must not contain both Deny and Warn"));
        assert!(validate_binding(
            &b(json!({"policyName": "p", "validationActions": ["Deny"],
                      "paramRef": {"name": "x", "selector": {}, "parameterNotFoundAction": "Deny"}})),
            None
        )
        .unwrap_err()
        .contains("exactly one of name or selector"));
    }
}
