//! `IngressClass` (networking.k8s.io/v1, cluster-scoped): which controller implements a
//! class of Ingresses, and its parameters. Ingress controllers (ingress-nginx, Traefik)
//! create theirs in their manifests and watch Ingresses of their class. Served and
//! validated as kube-apiserver does; no controller of kimg's own reads it yet.

use k8s_openapi::api::networking::v1::IngressClass;
use serde_json::{json, Value};

use super::{age, immutable, one_of, required, s, schema_of, Col, Strategy};

pub static STRATEGY: Strategy = Strategy {
    schema: schema_of::<IngressClass>,
    table: Some(table),
    defaults: None,
    validate: Some(validate),
};

/// NAME, CONTROLLER, PARAMETERS, AGE (kubectl's columns).
fn table(o: &Value) -> (Vec<Col>, Vec<Value>) {
    let params = match o.pointer("/spec/parameters") {
        Some(p) if p.is_object() => {
            let kind = s(p, "/kind");
            let name = s(p, "/name");
            match p.get("apiGroup").and_then(Value::as_str) {
                Some(g) if !g.is_empty() => format!("{g}/{kind}/{name}"),
                _ => format!("{kind}/{name}"),
            }
        }
        _ => "<none>".into(),
    };
    (
        vec![
            ("Name", "string", 0),
            ("Controller", "string", 0),
            ("Parameters", "string", 0),
            ("Age", "string", 0),
        ],
        vec![
            json!(s(o, "/metadata/name")),
            json!(s(o, "/spec/controller")),
            json!(params),
            json!(age(o)),
        ],
    )
}

/// `spec.controller` is required, a domain-prefixed path of at most 250 characters, and
/// fixed once set; `spec.parameters` names a kind and an object, with a namespace exactly
/// when its scope is `Namespace`.
fn validate(new: &Value, old: Option<&Value>) -> Result<(), String> {
    let controller = required(new, "/spec/controller", "spec.controller")?;
    if controller.len() > 250 {
        return Err(format!(
            "spec.controller: Too long: may not be more than 250 bytes (got {})",
            controller.len()
        ));
    }
    if !is_domain_prefixed_path(controller) {
        return Err(format!(
            "spec.controller: Invalid value: {}: must be a domain-prefixed path (such as \"acme.io/foo\")",
            json!(controller)
        ));
    }
    immutable(new, old, "/spec/controller", "spec.controller")?;
    let Some(p) = new.pointer("/spec/parameters").filter(|p| !p.is_null()) else {
        return Ok(());
    };
    required(p, "/kind", "spec.parameters.kind")?;
    required(p, "/name", "spec.parameters.name")?;
    one_of(
        p,
        "/scope",
        "spec.parameters.scope",
        &["Cluster", "Namespace"],
    )?;
    let scope = p.get("scope").and_then(Value::as_str).unwrap_or("Cluster");
    let namespace = p.get("namespace").and_then(Value::as_str);
    match (scope, namespace) {
        ("Namespace", None | Some("")) => Err(
            "spec.parameters.namespace: Required value: `parameters.scope` is set to 'Namespace'"
                .into(),
        ),
        ("Cluster", Some(ns)) if !ns.is_empty() => Err(
            "spec.parameters.namespace: Forbidden: `parameters.scope` is set to 'Cluster'".into(),
        ),
        _ => Ok(()),
    }
}

/// `host/path`: a DNS subdomain, a `/`, then a non-empty path of URL path characters.
fn is_domain_prefixed_path(s: &str) -> bool {
    let Some((host, path)) = s.split_once('/') else {
        return false;
    };
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(crate::cluster::is_dns_label)
        && !path.is_empty()
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-._~%!$&'()*+,;=:".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(spec: Value) -> Value {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
               "metadata": {"name": "nginx"}, "spec": spec})
    }

    #[test]
    fn ingress_nginx_s_class_is_accepted_and_printed() {
        let o = class(json!({"controller": "k8s.io/ingress-nginx"}));
        assert_eq!(validate(&o, None), Ok(()));
        let (cols, cells) = table(&o);
        assert_eq!(cols.len(), cells.len());
        assert_eq!(cells[1], "k8s.io/ingress-nginx");
        assert_eq!(cells[2], "<none>");
        let with_params = class(json!({"controller": "example.com/lb", "parameters":
            {"apiGroup": "k8s.example.com", "kind": "LbParams", "name": "external"}}));
        assert_eq!(validate(&with_params, None), Ok(()));
        assert_eq!(
            table(&with_params).1[2],
            "k8s.example.com/LbParams/external"
        );
    }

    #[test]
    fn each_refusal_names_the_field() {
        let cases = [
            (json!({}), "spec.controller: Required value"),
            (
                json!({"controller": "nginx"}),
                "must be a domain-prefixed path",
            ),
            (
                json!({"controller": "Bad_Host/x"}),
                "must be a domain-prefixed path",
            ),
            (
                json!({"controller": format!("a.io/{}", "x".repeat(250))}),
                "spec.controller: Too long",
            ),
            (
                json!({"controller": "a.io/x", "parameters": {"kind": "K"}}),
                "spec.parameters.name: Required value",
            ),
            (
                json!({"controller": "a.io/x", "parameters": {"kind": "K", "name": "n", "scope": "Namespace"}}),
                "spec.parameters.namespace: Required value",
            ),
            (
                json!({"controller": "a.io/x", "parameters": {"kind": "K", "name": "n", "namespace": "a"}}),
                "spec.parameters.namespace: Forbidden",
            ),
            (
                json!({"controller": "a.io/x", "parameters": {"kind": "K", "name": "n", "scope": "Galaxy"}}),
                "spec.parameters.scope: Unsupported value: \"Galaxy\"",
            ),
        ];
        for (spec, want) in cases {
            let err = validate(&class(spec.clone()), None).expect_err(&spec.to_string());
            assert!(err.contains(want), "{spec}: {err}");
        }
    }

    #[test]
    fn the_controller_cannot_change() {
        let old = class(json!({"controller": "k8s.io/ingress-nginx"}));
        let new = class(json!({"controller": "traefik.io/ingress-controller"}));
        let err = validate(&new, Some(&old)).expect_err("immutable");
        assert!(err.contains("spec.controller: Invalid value"), "{err}");
        assert!(err.contains("field is immutable"), "{err}");
        assert_eq!(validate(&old, Some(&old)), Ok(()));
    }
}
