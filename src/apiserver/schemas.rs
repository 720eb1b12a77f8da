//! OpenAPI component schemas of the served kinds, generated from `k8s-openapi`'s types
//! (v1.37) through their `schemars` implementations.
//!
//! What: [`definitions`] is every schema the registry's kinds reach, named as Kubernetes
//! names them (`io.k8s.api.core.v1.PodSpec`), with `$ref`s into `#/components/schemas/`,
//! and the top-level kinds marked with `x-kubernetes-group-version-kind` — which is how
//! `kubectl explain` finds a kind's schema. [`unknown_fields`] walks an object against its
//! schema for `fieldValidation=Strict`. How: generated once, on first use. Limits: the
//! schemas are those of Kubernetes 1.37 whatever the request; `x-kubernetes-*` list and
//! patch metadata is not emitted (schemars does not carry it).

use std::sync::OnceLock;

use k8s_openapi::api::{
    apps, authentication, authorization, batch, certificates, coordination, core, discovery,
    networking, rbac,
};
use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

use super::resources::RESOURCES;

/// Where references point in OpenAPI v3 documents.
pub const REF_PREFIX: &str = "#/components/schemas/";

/// The schema name of each served kind: `(group, version, kind, schema name)`.
fn kinds(
    g: &mut schemars::SchemaGenerator,
) -> Vec<(&'static str, &'static str, &'static str, String)> {
    macro_rules! k {
        ($($group:literal $version:literal $kind:literal => $ty:ty),* $(,)?) => {
            vec![$({
                g.subschema_for::<$ty>();
                ($group, $version, $kind, <$ty as JsonSchema>::schema_name().into_owned())
            }),*]
        };
    }
    let mut kinds = k![
        "" "v1" "Namespace" => core::v1::Namespace,
        "" "v1" "Node" => core::v1::Node,
        "" "v1" "Pod" => core::v1::Pod,
        "" "v1" "Service" => core::v1::Service,
        "" "v1" "Endpoints" => core::v1::Endpoints,
        "" "v1" "Secret" => core::v1::Secret,
        "" "v1" "ServiceAccount" => core::v1::ServiceAccount,
        "" "v1" "Event" => core::v1::Event,
        "" "v1" "PersistentVolume" => core::v1::PersistentVolume,
        "" "v1" "PersistentVolumeClaim" => core::v1::PersistentVolumeClaim,
        "" "v1" "ReplicationController" => core::v1::ReplicationController,
        "apps" "v1" "Deployment" => apps::v1::Deployment,
        "apps" "v1" "ReplicaSet" => apps::v1::ReplicaSet,
        "apps" "v1" "StatefulSet" => apps::v1::StatefulSet,
        "apps" "v1" "DaemonSet" => apps::v1::DaemonSet,
        "apps" "v1" "ControllerRevision" => apps::v1::ControllerRevision,
        "batch" "v1" "Job" => batch::v1::Job,
        "batch" "v1" "CronJob" => batch::v1::CronJob,
        "coordination.k8s.io" "v1" "Lease" => coordination::v1::Lease,
        "discovery.k8s.io" "v1" "EndpointSlice" => discovery::v1::EndpointSlice,
        "networking.k8s.io" "v1" "Ingress" => networking::v1::Ingress,
        "rbac.authorization.k8s.io" "v1" "Role" => rbac::v1::Role,
        "rbac.authorization.k8s.io" "v1" "RoleBinding" => rbac::v1::RoleBinding,
        "rbac.authorization.k8s.io" "v1" "ClusterRole" => rbac::v1::ClusterRole,
        "rbac.authorization.k8s.io" "v1" "ClusterRoleBinding" => rbac::v1::ClusterRoleBinding,
        "certificates.k8s.io" "v1" "CertificateSigningRequest" => certificates::v1::CertificateSigningRequest,
        "authorization.k8s.io" "v1" "SelfSubjectAccessReview" => authorization::v1::SelfSubjectAccessReview,
        "authorization.k8s.io" "v1" "SubjectAccessReview" => authorization::v1::SubjectAccessReview,
        "authorization.k8s.io" "v1" "LocalSubjectAccessReview" => authorization::v1::LocalSubjectAccessReview,
        "authorization.k8s.io" "v1" "SelfSubjectRulesReview" => authorization::v1::SelfSubjectRulesReview,
        "authentication.k8s.io" "v1" "TokenReview" => authentication::v1::TokenReview,
        "authentication.k8s.io" "v1" "SelfSubjectReview" => authentication::v1::SelfSubjectReview,
    ];
    // Kinds with a file of their own name their schema there.
    for r in RESOURCES {
        if let Some(s) = r.strategy {
            kinds.push((r.group, r.version, r.kind, (s.schema)(g)));
        }
    }
    kinds
}

struct Schemas {
    definitions: Map<String, Value>,
    /// `(group, version, kind)` → schema name.
    by_kind: Vec<(&'static str, &'static str, &'static str, String)>,
}

fn build() -> Schemas {
    let mut g = SchemaSettings::openapi3().into_generator();
    let by_kind = kinds(&mut g);
    // `true`: apply the OpenAPI 3 transforms (`nullable`, no `const`, ...).
    let mut definitions: Map<String, Value> = g.take_definitions(true);
    for (group, version, kind, name) in &by_kind {
        if let Some(Value::Object(s)) = definitions.get_mut(name) {
            s.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": group, "version": version, "kind": kind}]),
            );
        }
    }
    Schemas {
        definitions,
        by_kind,
    }
}

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(build)
}

/// Every component schema, keyed by its Kubernetes name.
pub fn definitions() -> &'static Map<String, Value> {
    &schemas().definitions
}

/// The schema name of a kind.
pub fn name_of(group: &str, version: &str, kind: &str) -> Option<&'static str> {
    schemas()
        .by_kind
        .iter()
        .find(|(g, v, k, _)| *g == group && *v == version && *k == kind)
        .map(|(_, _, _, n)| n.as_str())
}

fn resolve<'a>(defs: &'a Map<String, Value>, mut s: &'a Value) -> &'a Value {
    for _ in 0..16 {
        let next = s["$ref"]
            .as_str()
            .or_else(|| s["allOf"][0]["$ref"].as_str())
            .and_then(|r| r.strip_prefix(REF_PREFIX))
            .and_then(|n| defs.get(n));
        match next {
            Some(n) => s = n,
            None => break,
        }
    }
    s
}

fn walk(defs: &Map<String, Value>, schema: &Value, v: &Value, path: &str, out: &mut Vec<String>) {
    let schema = resolve(defs, schema);
    match v {
        Value::Object(m) => {
            if let Some(props) = schema["properties"].as_object() {
                for (k, child) in m {
                    match props.get(k) {
                        Some(s) => walk(defs, s, child, &format!("{path}.{k}"), out),
                        None => out.push(format!("{path}.{k}")),
                    }
                }
            } else if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object())
            {
                for (k, child) in m {
                    walk(defs, extra, child, &format!("{path}.{k}"), out);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, child) in items.iter().enumerate() {
                    walk(defs, s, child, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// The fields of `obj` its kind's schema does not know (`.spec.foo` paths), for
/// `fieldValidation=Strict`; empty for kinds without a schema.
pub fn unknown_fields(group: &str, version: &str, kind: &str, obj: &Value) -> Vec<String> {
    let Some(name) = name_of(group, version, kind) else {
        return Vec::new();
    };
    let defs = definitions();
    let mut out = Vec::new();
    if let Some(root) = defs.get(name) {
        walk(defs, root, obj, "", &mut out);
    }
    out.into_iter()
        .map(|p| p.trim_start_matches('.').to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_spec_is_defined_and_pods_carry_their_group_version_kind() {
        let defs = definitions();
        let pod = &defs["io.k8s.api.core.v1.Pod"];
        assert_eq!(pod["x-kubernetes-group-version-kind"][0]["kind"], "Pod");
        let spec = &defs["io.k8s.api.core.v1.PodSpec"];
        assert!(spec["properties"]["containers"].is_object());
        assert!(spec["description"].as_str().is_some_and(|d| !d.is_empty()));
        assert_eq!(
            name_of("apps", "v1", "Deployment"),
            Some("io.k8s.api.apps.v1.Deployment")
        );
    }

    #[test]
    fn strict_validation_names_unknown_fields_at_any_depth() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": "p", "labels": {"any": "label"}},
                         "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolcy": "x"}],
                                  "bogus": 1}});
        let mut bad = unknown_fields("", "v1", "Pod", &pod);
        bad.sort();
        assert_eq!(bad, ["spec.bogus", "spec.containers[0].imagePullPolcy"]);
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                        "data": {"k": "v"}});
        assert!(unknown_fields("", "v1", "ConfigMap", &cm).is_empty());
    }
}
