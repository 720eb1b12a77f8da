//! The OpenAPI v3 documents kubectl needs: `/openapi/v3` (the index of group-versions) and
//! `/openapi/v3/api/v1`, `/openapi/v3/apis/<g>/<v>`.
//!
//! What kubectl reads from them: whether the PATCH operation of a kind (found by its
//! `x-kubernetes-group-version-kind` extension) accepts the `fieldValidation` query
//! parameter. When it does, kubectl leaves validation to the server and sends
//! `fieldValidation=Strict` instead of downloading schemas; without these documents
//! `kubectl apply` and `kubectl create -f` refuse to run. The component schemas come from
//! `k8s-openapi` ([`super::schemas`]), so `kubectl explain` works; `/openapi/v2` serves
//! the same schemas as Swagger `definitions`. Limits: every group-version document carries
//! all schemas; no protobuf encoding of `/openapi/v2`.

use hyper::StatusCode;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::http::{json_response, Response};
use super::resources::{self, RESOURCES};

fn prefix(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: one entry per served group-version.
fn index() -> Value {
    let hash = env!("CARGO_PKG_VERSION").replace('.', "");
    let paths: Map<String, Value> = resources::group_versions()
        .into_iter()
        .map(|(g, v)| {
            let p = prefix(g, v);
            let url = json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=kimg{hash}")});
            (p, url)
        })
        .collect();
    json!({"paths": paths})
}

/// The document of one group-version: object paths with their GET/PUT/PATCH/DELETE.
fn group_version(group: &str, version: &str) -> Option<Value> {
    let mut paths = Map::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let params = json!([
            {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
        ]);
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
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{}.0", crate::KUBE_MINOR)},
        "paths": paths,
        "components": {"schemas": super::schemas::definitions()},
    }))
}

/// `/openapi/v2`: the same schemas as Swagger 2.0 `definitions`.
fn swagger() -> Value {
    let text = serde_json::to_string(super::schemas::definitions())
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
pub fn serve(path: &str, accept: &str) -> Result<Response, ApiError> {
    let rest = path.trim_end_matches('/');
    if rest == "/openapi/v2" {
        if accept.contains("protobuf") && !accept.contains("json") {
            return Err(ApiError::RouteNotFound);
        }
        return Ok(json_response(StatusCode::OK, &swagger()));
    }
    let doc = match rest.strip_prefix("/openapi/v3") {
        Some("") => Some(index()),
        Some(gv) => {
            let segs: Vec<&str> = gv.trim_start_matches('/').split('/').collect();
            match segs.as_slice() {
                ["api", v] => group_version("", v),
                ["apis", g, v] => group_version(g, v),
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
        let doc = group_version("apps", "v1").expect("apps/v1");
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
        let core = group_version("", "v1").expect("v1");
        assert!(core["paths"]["/api/v1/namespaces/{name}"]["patch"].is_object());
        assert!(index()["paths"]["apis/batch/v1"]["serverRelativeURL"]
            .as_str()
            .is_some_and(|u| u.starts_with("/openapi/v3/apis/batch/v1?hash=")));
        assert!(serve("/openapi/v3/apis/nope/v1", "").is_err());
        assert!(core["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"].is_object());
        let v2 = swagger();
        let pod_spec_ref = &v2["definitions"]["io.k8s.api.core.v1.Pod"]["properties"]["spec"];
        assert!(pod_spec_ref
            .to_string()
            .contains("#/definitions/io.k8s.api.core.v1.PodSpec"));
    }
}
