//! The OpenAPI v3 documents kubectl needs: `/openapi/v3` (the index of group-versions) and
//! `/openapi/v3/api/v1`, `/openapi/v3/apis/<g>/<v>`.
//!
//! What kubectl reads from them: whether the PATCH operation of a kind (found by its
//! `x-kubernetes-group-version-kind` extension) accepts the `fieldValidation` query
//! parameter. When it does, kubectl leaves validation to the server and sends
//! `fieldValidation=Strict` instead of downloading schemas; without these documents
//! `kubectl apply` and `kubectl create -f` refuse to run. The component schemas come from
//! `k8s-openapi` ([`super::schemas`]), so `kubectl explain` works; `/openapi/v2` serves
//! the same schemas as Swagger `definitions`. Custom kinds ([`super::crd`]) add their
//! versions' `openAPIV3Schema`s (named like kube-apiserver names them, `com.example.v1.Widget`)
//! and change their group-version's hash when their CRD changes, so kubectl's cache of the
//! document is refreshed. Limits: every group-version document carries all built-in
//! schemas; no protobuf encoding of `/openapi/v2`.

use hyper::StatusCode;
use serde_json::{json, Map, Value};

use sha2::{Digest, Sha256};

use super::crd::{Catalog, Version};
use super::error::ApiError;
use super::http::{json_response, Response};

fn prefix(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The component name kube-apiserver gives a custom kind: the group reversed, the
/// version, the kind (`com.example.v1.Widget`).
fn custom_name(v: &Version) -> String {
    let mut parts: Vec<&str> = v.res.group.split('.').collect();
    parts.reverse();
    format!("{}.{}.{}", parts.join("."), v.res.version, v.res.kind)
}

/// A custom kind's component schema: its `openAPIV3Schema` with the standard
/// `apiVersion`, `kind` and `metadata` fields and its group-version-kind.
fn custom_schema(v: &Version) -> Value {
    let mut s = v.raw_schema.clone();
    if !s["properties"].is_object() {
        s["properties"] = json!({});
    }
    s["properties"]["apiVersion"] = json!({"type": "string",
        "description": "APIVersion defines the versioned schema of this representation of an object."});
    s["properties"]["kind"] = json!({"type": "string",
        "description": "Kind is a string value representing the REST resource this object represents."});
    s["properties"]["metadata"] = json!({"allOf": [
        {"$ref": format!("{}io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", super::schemas::REF_PREFIX)}
    ]});
    s["x-kubernetes-group-version-kind"] =
        json!([{"group": v.res.group, "version": v.res.version, "kind": v.res.kind}]);
    s
}

fn custom_in<'a>(
    catalog: &'a Catalog,
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'a std::sync::Arc<Version>> {
    catalog
        .custom()
        .iter()
        .filter(move |v| v.res.group == group && v.res.version == version)
}

/// The query parameters of every write operation (kubectl reads `fieldValidation` off
/// a kind's PATCH to learn that the server validates fields itself).
fn write_params() -> Value {
    json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
    ])
}

/// `/openapi/v3`: one entry per served group-version.
fn index(catalog: &Catalog) -> Value {
    let hash = env!("CARGO_PKG_VERSION").replace('.', "");
    let reviews = super::review::ALL.iter().map(|(_, _, g, _, _)| (*g, "v1"));
    let mut gvs = catalog.group_versions();
    for gv in reviews {
        if !gvs.contains(&gv) {
            gvs.push(gv);
        }
    }
    let paths: Map<String, Value> = gvs
        .into_iter()
        .map(|(g, v)| {
            let p = prefix(g, v);
            let mut h = Sha256::new();
            for c in custom_in(catalog, g, v) {
                h.update(c.raw_schema.to_string().as_bytes());
                h.update(format!("{:?}", c.res).as_bytes());
            }
            let custom = hex::encode(&h.finalize()[..6]);
            let url =
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=kimg{hash}{custom}")});
            (p, url)
        })
        .collect();
    json!({"paths": paths})
}

/// The document of one group-version: object paths with their GET/PUT/PATCH/DELETE.
fn group_version(catalog: &Catalog, group: &str, version: &str) -> Option<Value> {
    let mut paths = Map::new();
    for r in catalog
        .resources()
        .filter(|r| r.group == group && r.version == version)
    {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let params = write_params();
        let op = |action: &str| {
            json!({
                "operationId": format!("{action}{}", r.kind),
                "parameters": params,
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
            })
        };
        let base = format!("/{}", prefix(group, version));
        let object = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{base}/{}/{{name}}", r.plural)
        };
        paths.insert(
            object,
            json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}),
        );
        let collection = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{base}/{}", r.plural)
        };
        paths.insert(collection, json!({"get": op("list"), "post": op("post")}));
    }
    for (_, kind, g, plural, namespaced) in super::review::ALL {
        if g != group || version != "v1" {
            continue;
        }
        let base = format!("/{}", prefix(group, version));
        let path = if namespaced {
            format!("{base}/namespaces/{{namespace}}/{plural}")
        } else {
            format!("{base}/{plural}")
        };
        let params = write_params();
        let op = |action: &str| {
            json!({
                "operationId": format!("{action}{kind}"),
                "parameters": params,
                "responses": {"201": {"description": "Created"}},
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": {"group": g, "version": "v1", "kind": kind},
            })
        };
        // kube-apiserver has no PATCH for reviews; kubectl looks for the PATCH operation
        // of a kind to learn that the server validates fields itself, and otherwise
        // wants the protobuf OpenAPI v2 document, which kimg does not serve.
        let post = json!({"post": op("post"), "patch": op("patch")});
        paths.insert(path, post);
    }
    if paths.is_empty() {
        return None;
    }
    let mut schemas = super::schemas::definitions().clone();
    for c in custom_in(catalog, group, version) {
        schemas.insert(custom_name(c), custom_schema(c));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{}.0", crate::KUBE_MINOR)},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// `/openapi/v2`: the same schemas as Swagger 2.0 `definitions`.
fn swagger(catalog: &Catalog) -> Value {
    let mut schemas = super::schemas::definitions().clone();
    for c in catalog.custom() {
        schemas.insert(custom_name(c), custom_schema(c));
    }
    let text = serde_json::to_string(&schemas)
        .unwrap_or_default()
        .replace(super::schemas::REF_PREFIX, "#/definitions/");
    let definitions: Value = serde_json::from_str(&text).unwrap_or_default();
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{}.0", crate::KUBE_MINOR)},
        "paths": {},
        "definitions": definitions,
    })
}

/// Serves `/openapi/...` (v2 only as JSON: a client that accepts only protobuf gets 404).
pub fn serve(catalog: &Catalog, path: &str, accept: &str) -> Result<Response, ApiError> {
    let rest = path.trim_end_matches('/');
    if rest == "/openapi/v2" {
        if accept.contains("protobuf") && !accept.contains("json") {
            return Err(ApiError::RouteNotFound);
        }
        return Ok(json_response(StatusCode::OK, &swagger(catalog)));
    }
    let doc = match rest.strip_prefix("/openapi/v3") {
        Some("") => Some(index(catalog)),
        Some(gv) => {
            let segs: Vec<&str> = gv.trim_start_matches('/').split('/').collect();
            match segs.as_slice() {
                ["api", v] => group_version(catalog, "", v),
                ["apis", g, v] => group_version(catalog, g, v),
                _ => None,
            }
        }
        None => None,
    };
    doc.map(|d| json_response(StatusCode::OK, &d))
        .ok_or(ApiError::RouteNotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_patch_operation_accepting_field_validation() {
        let cat = Catalog::default();
        let doc = group_version(&cat, "apps", "v1").expect("apps/v1");
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(patch["parameters"]
            .as_array()
            .expect("params")
            .iter()
            .any(|p| p["name"] == "fieldValidation"));
        let core = group_version(&cat, "", "v1").expect("v1");
        assert!(core["paths"]["/api/v1/namespaces/{name}"]["patch"].is_object());
        assert!(index(&cat)["paths"]["apis/batch/v1"]["serverRelativeURL"]
            .as_str()
            .is_some_and(|u| u.starts_with("/openapi/v3/apis/batch/v1?hash=")));
        assert!(serve(&cat, "/openapi/v3/apis/nope/v1", "").is_err());
        assert!(core["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"].is_object());
        let v2 = swagger(&cat);
        let pod_spec_ref = &v2["definitions"]["io.k8s.api.core.v1.Pod"]["properties"]["spec"];
        assert!(pod_spec_ref
            .to_string()
            .contains("#/definitions/io.k8s.api.core.v1.PodSpec"));
    }
}
