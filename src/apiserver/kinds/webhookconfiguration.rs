//! `MutatingWebhookConfiguration` and `ValidatingWebhookConfiguration`
//! (admissionregistration.k8s.io/v1, cluster-scoped): which admission webhooks the
//! apiserver calls, for which requests, and how ([`crate::apiserver`]'s `webhook` module
//! calls them). The two kinds share their checks and defaults, as in kube-apiserver:
//!
//! - every webhook has a unique name of at least three DNS segments, `sideEffects` `None`
//!   or `NoneOnDryRun`, `admissionReviewVersions` including `v1`, and exactly one of
//!   `clientConfig.url` (https, no user info or fragment) or `clientConfig.service`;
//! - rules name operations (`CREATE`, `UPDATE`, `DELETE`, `CONNECT`, `*`), resources and a
//!   scope; `timeoutSeconds` is 1–30;
//! - defaults: `failurePolicy: Fail`, `matchPolicy: Equivalent`, `timeoutSeconds: 10`,
//!   empty namespace and object selectors, `service.port: 443`, rule `scope: "*"`, and
//!   for mutating webhooks `reinvocationPolicy: Never`.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use serde_json::{json, Value};

use super::{age, one_of, s, schema_of, set_default, Col, Strategy};

pub static MUTATING: Strategy = Strategy {
    schema: schema_of::<MutatingWebhookConfiguration>,
    table: Some(table),
    defaults: Some(defaults_mutating),
    validate: Some(validate),
};

pub static VALIDATING: Strategy = Strategy {
    schema: schema_of::<ValidatingWebhookConfiguration>,
    table: Some(table),
    defaults: Some(defaults_validating),
    validate: Some(validate),
};

/// NAME, WEBHOOKS, AGE (kubectl's columns).
fn table(o: &Value) -> (Vec<Col>, Vec<Value>) {
    (
        vec![
            ("Name", "string", 0),
            ("Webhooks", "integer", 0),
            ("Age", "string", 0),
        ],
        vec![
            json!(s(o, "/metadata/name")),
            json!(super::len(o, "/webhooks")),
            json!(age(o)),
        ],
    )
}

fn defaults(o: &mut Value, mutating: bool) {
    let Some(hooks) = o.get_mut("webhooks").and_then(Value::as_array_mut) else {
        return;
    };
    for h in hooks {
        set_default(h, &["failurePolicy"], json!("Fail"));
        set_default(h, &["matchPolicy"], json!("Equivalent"));
        set_default(h, &["timeoutSeconds"], json!(10));
        set_default(h, &["namespaceSelector"], json!({}));
        set_default(h, &["objectSelector"], json!({}));
        if mutating {
            set_default(h, &["reinvocationPolicy"], json!("Never"));
        }
        if h.pointer("/clientConfig/service")
            .is_some_and(Value::is_object)
        {
            set_default(h, &["clientConfig", "service", "port"], json!(443));
        }
        for r in h
            .get_mut("rules")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            set_default(r, &["scope"], json!("*"));
        }
    }
}

fn defaults_mutating(o: &mut Value) {
    defaults(o, true);
}

fn defaults_validating(o: &mut Value) {
    defaults(o, false);
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn validate(new: &Value, _old: Option<&Value>) -> Result<(), String> {
    let hooks = new["webhooks"].as_array().cloned().unwrap_or_default();
    let mut names: Vec<&str> = Vec::new();
    for (i, h) in hooks.iter().enumerate() {
        let at = format!("webhooks[{i}]");
        let name = h["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            return Err(format!("{at}.name: Required value"));
        }
        if name.split('.').count() < 3 || !name.split('.').all(crate::cluster::is_dns_label) {
            return Err(format!(
                "{at}.name: Invalid value: \"{name}\": should be a domain with at least three segments separated by dots"
            ));
        }
        if names.contains(&name) {
            return Err(format!("{at}.name: Duplicate value: \"{name}\""));
        }
        names.push(name);
        let versions = strings(&h["admissionReviewVersions"]);
        if !versions.contains(&"v1") && !versions.contains(&"v1beta1") {
            return Err(format!(
                "{at}.admissionReviewVersions: Required value: must specify one of v1, v1beta1"
            ));
        }
        match h["sideEffects"].as_str() {
            Some("None" | "NoneOnDryRun") => {}
            None => {
                return Err(format!(
                    "{at}.sideEffects: Required value: must specify one of None, NoneOnDryRun"
                ))
            }
            Some(x) => {
                return Err(format!(
                    "{at}.sideEffects: Unsupported value: \"{x}\": supported values: \"None\", \"NoneOnDryRun\""
                ))
            }
        }
        one_of(
            h,
            "/failurePolicy",
            &format!("{at}.failurePolicy"),
            &["Fail", "Ignore"],
        )?;
        one_of(
            h,
            "/matchPolicy",
            &format!("{at}.matchPolicy"),
            &["Equivalent", "Exact"],
        )?;
        one_of(
            h,
            "/reinvocationPolicy",
            &format!("{at}.reinvocationPolicy"),
            &["Never", "IfNeeded"],
        )?;
        if let Some(t) = h.get("timeoutSeconds").filter(|t| !t.is_null()) {
            if !t.as_i64().is_some_and(|t| (1..=30).contains(&t)) {
                return Err(format!(
                    "{at}.timeoutSeconds: Invalid value: {t}: the timeout value must be between 1 and 30 seconds"
                ));
            }
        }
        client_config(&h["clientConfig"], &format!("{at}.clientConfig"))?;
        for (j, r) in h["rules"].as_array().into_iter().flatten().enumerate() {
            let rat = format!("{at}.rules[{j}]");
            for op in strings(&r["operations"]) {
                if !["CREATE", "UPDATE", "DELETE", "CONNECT", "*"].contains(&op) {
                    return Err(format!("{rat}.operations: Unsupported value: \"{op}\": supported values: \"*\", \"CONNECT\", \"CREATE\", \"DELETE\", \"UPDATE\""));
                }
            }
            if strings(&r["resources"]).is_empty() {
                return Err(format!("{rat}.resources: Required value"));
            }
            one_of(
                r,
                "/scope",
                &format!("{rat}.scope"),
                &["Cluster", "Namespaced", "*"],
            )?;
        }
    }
    Ok(())
}

fn client_config(c: &Value, at: &str) -> Result<(), String> {
    let url = c.get("url").and_then(Value::as_str);
    let service = c.get("service").filter(|s| s.is_object());
    match (url, service) {
        (Some(_), Some(_)) | (None, None) => Err(format!(
            "{at}: Required value: exactly one of url or service is required"
        )),
        (Some(u), None) => {
            let parsed: hyper::Uri = u
                .parse()
                .map_err(|e| format!("{at}.url: Invalid value: \"{u}\": {e}"))?;
            if parsed.scheme_str() != Some("https") {
                return Err(format!(
                    "{at}.url: Unsupported value: \"{}\": supported values: \"https\"",
                    parsed.scheme_str().unwrap_or_default()
                ));
            }
            if parsed.host().is_none_or(str::is_empty) {
                return Err(format!(
                    "{at}.url: Invalid value: \"{u}\": host must be specified"
                ));
            }
            if u.contains('#') || parsed.authority().is_some_and(|a| a.as_str().contains('@')) {
                return Err(format!(
                    "{at}.url: Invalid value: \"{u}\": fragments and user info are not permitted"
                ));
            }
            Ok(())
        }
        (None, Some(s)) => {
            for f in ["name", "namespace"] {
                if s[f].as_str().is_none_or(str::is_empty) {
                    return Err(format!("{at}.service.{f}: Required value"));
                }
            }
            if let Some(p) = s.get("port").filter(|p| !p.is_null()) {
                if !p.as_i64().is_some_and(|p| (1..=65535).contains(&p)) {
                    return Err(format!(
                        "{at}.service.port: Invalid value: {p}: port is not valid: must be between 1 and 65535, inclusive"
                    ));
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Value {
        json!({"webhooks": [{
            "name": "label.kimg.example.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "clientConfig": {"service": {"name": "hook", "namespace": "system"}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["configmaps"]}],
        }]})
    }

    #[test]
    fn defaults_fill_in_what_kube_apiserver_fills_in() {
        let mut c = config();
        defaults_mutating(&mut c);
        let h = &c["webhooks"][0];
        assert_eq!(h["failurePolicy"], "Fail");
        assert_eq!(h["matchPolicy"], "Equivalent");
        assert_eq!(h["timeoutSeconds"], 10);
        assert_eq!(h["reinvocationPolicy"], "Never");
        assert_eq!(h["clientConfig"]["service"]["port"], 443);
        assert_eq!(h["rules"][0]["scope"], "*");
        assert!(validate(&c, None).is_ok());
    }

    #[test]
    fn bad_webhooks_are_refused_with_the_field() {
        let cases: [(&str, Value, &str); 6] = [
            (
                "name",
                json!("short.name"),
                "webhooks[0].name: Invalid value",
            ),
            (
                "sideEffects",
                json!("Some"),
                "webhooks[0].sideEffects: Unsupported value",
            ),
            (
                "admissionReviewVersions",
                json!(["v2"]),
                "admissionReviewVersions: Required value",
            ),
            (
                "timeoutSeconds",
                json!(31),
                "timeoutSeconds: Invalid value: 31",
            ),
            (
                "clientConfig",
                json!({"url": "http://x.example/"}),
                "clientConfig.url: Unsupported value: \"http\"",
            ),
            ("clientConfig", json!({}), "exactly one of url or service"),
        ];
        for (ptr, value, want) in cases {
            let mut c = config();
            c["webhooks"][0][ptr] = value;
            let e = validate(&c, None).unwrap_err();
            assert!(e.contains(want), "{e} should contain {want}");
        }
    }
}
