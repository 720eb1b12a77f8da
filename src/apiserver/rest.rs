//! The verbs on objects: get, create, update (PUT), patch, delete and deletecollection,
//! plus the `status` and `scale` subresources.
//!
//! How: every write reads the current object, computes the new one, and writes it with the
//! store's compare-and-swap on `mod_revision`. An update that names a `resourceVersion`
//! fails with 409 Conflict when it is stale; patches and updates without one retry on a
//! concurrent write. Rules kept on every update: `uid`, `creationTimestamp`, `name`,
//! `namespace` and deletion fields are the server's; `generation` grows when `.spec`
//! changes; on kinds with a `status` subresource the main endpoint leaves `.status` alone and
//! the `status` endpoint changes only `.status`; an unchanged object is not rewritten.
//! The update that empties the finalizers of an object marked for deletion (with no grace
//! period pending) deletes it; deletion itself is in [`super::delete`].

use hyper::StatusCode;
use serde_json::{json, Value};

use super::error::ApiError;
use super::http::{full_response, json_response, Req, Response, Target};
use super::kinds::map_text;
use super::list::{list_objects, visit_objects, ListQuery};
use super::object::{
    self, check_kind, decode, decode_object, meta_mut, meta_str, now, rv_of, set_rv, to_bytes,
    to_stored,
};
use super::patch::{self, PatchKind};
use super::resources;
use super::storage::{conflict, invalid, name_of, not_found, read, store_err};
use super::{admission, crd, defaults, policy, table, webhook, State};

/// Where a scalable object keeps its replicas: `.spec.replicas` and `.status.replicas`
/// for the built-in kinds, the CRD's paths for custom ones.
fn replica_paths(custom: Option<&crd::Version>) -> (String, String) {
    match custom.and_then(|c| c.scale.as_ref()) {
        Some(p) => (
            crd::pointer(&p.spec_replicas),
            crd::pointer(&p.status_replicas),
        ),
        None => ("/spec/replicas".into(), "/status/replicas".into()),
    }
}

/// Sets the desired replicas of a scalable object.
fn set_replicas(obj: &mut Value, custom: Option<&crd::Version>, replicas: Value) {
    let (spec, _) = replica_paths(custom);
    let parts: Vec<&str> = spec.trim_start_matches('/').split('/').collect();
    let mut at = obj;
    for p in &parts[..parts.len() - 1] {
        if !at[*p].is_object() {
            at[*p] = json!({});
        }
        at = &mut at[*p];
    }
    at[parts[parts.len() - 1]] = replicas;
}

/// The `autoscaling/v1` Scale view of a scalable object.
pub(super) fn scale_of(obj: &Value, custom: Option<&crd::Version>) -> Value {
    let (spec_path, status_path) = replica_paths(custom);
    let custom_selector = custom
        .and_then(|c| c.scale.as_ref())
        .and_then(|s| s.label_selector.as_deref())
        .map(|p| {
            obj.pointer(&crd::pointer(p))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        });
    // A ReplicationController's selector is a plain map; the others' is a LabelSelector.
    let labels = custom_selector.unwrap_or_else(|| match obj["kind"].as_str() {
        Some("ReplicationController") => map_text(obj, "/spec/selector"),
        _ => map_text(obj, "/spec/selector/matchLabels"),
    });
    let meta = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj.pointer(&spec_path).cloned().unwrap_or(json!(1))},
        "status": {
            "replicas": obj.pointer(&status_path).cloned().unwrap_or(json!(0)),
            "selector": labels,
        },
    })
}

fn respond(t: &Target, req: &Req, code: StatusCode, mut obj: Value) -> Response {
    if t.sub.as_deref() == Some("scale") {
        return json_response(code, &scale_of(&obj, t.custom.as_deref()));
    }
    crd::present(t.res, &mut obj);
    if req.wants_table() {
        let rv = meta_str(&obj, "resourceVersion")
            .unwrap_or_default()
            .to_string();
        return json_response(code, &table::table(t, &[obj], req, &rv, None));
    }
    json_response(code, &obj)
}

/// GET of one object (or its subresource).
pub async fn get(st: &State, t: &Target, req: &Req) -> Result<Response, ApiError> {
    let (obj, _) = read(st, t).await?;
    Ok(respond(t, req, StatusCode::OK, obj))
}

/// LIST of a collection. The JSON form is written item by item as the objects are read.
pub async fn list(st: &State, t: &Target, req: &Req) -> Result<Response, ApiError> {
    let q = ListQuery::from_req(req)?;
    if req.wants_table() {
        let page = list_objects(st, t.res, t.namespace.as_deref(), &q).await?;
        return Ok(json_response(
            StatusCode::OK,
            &table::table(
                t,
                &page.items,
                req,
                &page.revision.to_string(),
                page.continue_token.as_deref(),
            ),
        ));
    }
    let mut items: Vec<u8> = Vec::new();
    let page = visit_objects(st, t.res, t.namespace.as_deref(), &q, |obj| {
        if !items.is_empty() {
            items.push(b',');
        }
        // Serializing a `Value` into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut items, &obj);
    })
    .await?;
    let mut metadata = json!({"resourceVersion": page.revision.to_string()});
    if let Some(c) = &page.continue_token {
        metadata["continue"] = json!(c);
        metadata["remainingItemCount"] = json!(page.remaining);
    }
    let head = json!({
        "kind": format!("{}List", t.res.kind),
        "apiVersion": t.res.api_version(),
        "metadata": metadata,
    })
    .to_string();
    // `{"kind":…,"metadata":{…}` + `,"items":[…]}`: the head is a JSON object whose closing
    // brace is replaced by the items member.
    let mut body = Vec::with_capacity(head.len() + items.len() + 12);
    body.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    body.extend_from_slice(b",\"items\":[");
    body.extend_from_slice(&items);
    body.extend_from_slice(b"]}");
    Ok(full_response(StatusCode::OK, "application/json", body))
}

async fn ensure_namespace(st: &State, ns: &str) -> Result<(), ApiError> {
    let ns_res = resources::by_plural("namespaces").ok_or(ApiError::RouteNotFound)?;
    let key = ns_res.key(None, ns);
    // Namespaces are few and long-lived: the cache answers nearly every check without a
    // store round trip; a miss (perhaps just created) is confirmed by the store.
    if st.cache.as_ref().is_some_and(|c| c.contains(&key)) {
        return Ok(());
    }
    match st.store.get(&key).await? {
        Some(_) => Ok(()),
        None => Err(not_found(ns_res, ns)),
    }
}

/// Checks the body's namespace against the path's and sets it (or removes it).
fn place(t: &Target, obj: &mut Value) -> Result<(), ApiError> {
    let meta = meta_mut(obj);
    if !t.res.namespaced {
        meta.remove("namespace");
        return Ok(());
    }
    let path_ns = t.namespace.clone().ok_or(ApiError::MethodNotAllowed)?;
    match meta.get("namespace").and_then(Value::as_str) {
        Some(ns) if !ns.is_empty() && ns != path_ns => Err(ApiError::DecodeBody {
            reason: "the namespace of the provided object does not match the namespace sent on the request".into(),
        }),
        _ => {
            meta.insert("namespace".into(), json!(path_ns));
            Ok(())
        }
    }
}

/// Stamps a new object with its name, uid, timestamps and generation; runs defaulting;
/// stores it. Shared by POST and server-side apply of a missing object.
async fn create_object(
    st: &State,
    t: &Target,
    req: &Req,
    mut obj: Value,
) -> Result<Value, ApiError> {
    place(t, &mut obj)?;
    let res = t.res;
    let meta = meta_mut(&mut obj);
    let name = match (
        meta.get("name").and_then(Value::as_str),
        meta.get("generateName").and_then(Value::as_str),
    ) {
        (Some(n), _) if !n.is_empty() => n.to_string(),
        (_, Some(g)) if !g.is_empty() => object::generate_name(g),
        _ => {
            return Err(invalid(
                res,
                "",
                "metadata.name: Required value: name or generateName is required".into(),
            ))
        }
    };
    if let Some(path_name) = &t.name {
        if *path_name != name {
            return Err(ApiError::DecodeBody {
                reason: format!("the name of the object ({name}) does not match the name on the URL ({path_name})"),
            });
        }
    }
    resources::validate_name(res.names, &name).map_err(|r| invalid(res, &name, r))?;
    meta.insert("name".into(), json!(name));
    meta.insert("uid".into(), json!(object::new_uid()));
    meta.insert("creationTimestamp".into(), json!(now()));
    for server_owned in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        meta.remove(server_owned);
    }
    if obj.get("spec").is_some() || res.custom {
        meta_mut(&mut obj).insert("generation".into(), json!(1));
    } else {
        meta_mut(&mut obj).remove("generation");
    }
    if let Some(ns) = &t.namespace {
        if res.namespaced {
            ensure_namespace(st, ns).await?;
        }
    }
    defaults::on_create(st, res, &mut obj).await?;
    webhook::mutate(st, t, req, "CREATE", &mut obj, None).await?;
    admit_custom(t, req, &mut obj, None)?;
    if res.kind == "CertificateSigningRequest" {
        stamp_requester(&mut obj, req);
    }
    admission::admit(st, req, t, None, &obj).await?;
    policy::validate(st, t, req, "CREATE", Some(&obj), None).await?;
    webhook::validate(st, t, req, "CREATE", &obj, None).await?;
    if req.q("dryRun").is_some() {
        return Ok(obj);
    }
    let key = res.key(t.namespace.as_deref(), &name);
    let bytes = to_stored(&obj)?;
    let rev = st
        .store
        .create(&key, bytes)
        .await
        .map_err(|e| store_err(res, &name, e))?;
    set_rv(&mut obj, rev);
    Ok(obj)
}

/// Defaults, prunes and validates a custom object against its version's schema.
fn admit_custom(
    t: &Target,
    req: &Req,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let Some(v) = &t.custom else {
        return Ok(());
    };
    // Only what the request sent can be unknown: the main endpoint keeps the stored
    // status and the status endpoint keeps the stored rest.
    let mode = if t.sub.is_some() {
        Some("Ignore")
    } else {
        req.q("fieldValidation")
    };
    crd::admit(v, obj, old, mode, &mut |w| req.warn(w))
}

/// A CSR records who asked for it: the server overwrites `spec.username` and
/// `spec.groups` with the authenticated requester (approvers and signers trust them).
fn stamp_requester(obj: &mut Value, req: &Req) {
    let Some(user) = &req.user else { return };
    if !obj["spec"].is_object() {
        obj["spec"] = json!({});
    }
    let mut groups = user.groups.clone();
    if !groups.iter().any(|g| g == "system:authenticated") {
        groups.push("system:authenticated".into());
    }
    obj["spec"]["username"] = json!(user.name);
    obj["spec"]["groups"] = json!(groups);
    if let Some(spec) = obj["spec"].as_object_mut() {
        spec.remove("uid");
        spec.remove("extra");
    }
}

/// With `fieldValidation=Strict`, refuses fields the kind's schema does not define.
fn strict(t: &Target, req: &Req, obj: &Value) -> Result<(), ApiError> {
    if req.q("fieldValidation") != Some("Strict") {
        return Ok(());
    }
    let unknown = super::schemas::unknown_fields(t.res.group, t.res.version, t.res.kind, obj);
    if unknown.is_empty() {
        return Ok(());
    }
    let fields: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    Err(ApiError::DecodeBody {
        reason: format!("strict decoding error: {}", fields.join(", ")),
    })
}

/// POST to a collection.
pub async fn create(st: &State, t: &Target, req: &Req) -> Result<Response, ApiError> {
    let obj = decode_object(&req.body, &req.content_type, t.res)?;
    strict(t, req, &obj)?;
    let obj = create_object(st, t, req, obj).await?;
    Ok(respond(t, req, StatusCode::CREATED, obj))
}

/// The object an update really writes, given the stored one and the requested one.
fn merge_update(t: &Target, old: &Value, mut new: Value) -> Value {
    if t.sub.as_deref() == Some("approval") {
        let mut out = old.clone();
        if !out["status"].is_object() {
            out["status"] = json!({});
        }
        out["status"]["conditions"] = new
            .pointer("/status/conditions")
            .cloned()
            .unwrap_or(json!([]));
        return out;
    }
    if t.sub.as_deref() == Some("status") {
        let mut out = old.clone();
        match new.get("status") {
            Some(s) => out["status"] = s.clone(),
            None => {
                if let Some(m) = out.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        return out;
    }
    let old_meta = old.get("metadata").cloned().unwrap_or_default();
    let meta = meta_mut(&mut new);
    for kept in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "name",
        "namespace",
        "generation",
    ] {
        match old_meta.get(kept) {
            Some(v) => meta.insert(kept.into(), v.clone()),
            None => meta.remove(kept),
        };
    }
    if t.res.status {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    if let Some(g) = old_meta.get("generation").and_then(Value::as_i64) {
        // Custom objects count every change outside metadata (and outside status when it
        // has its own endpoint), as kube-apiserver does.
        let changed = if t.res.custom {
            let strip = |o: &Value| {
                let mut o = o.clone();
                if let Some(m) = o.as_object_mut() {
                    m.remove("metadata");
                    m.remove("apiVersion");
                    if t.res.status {
                        m.remove("status");
                    }
                }
                o
            };
            strip(old) != strip(&new)
        } else {
            old.get("spec") != new.get("spec")
        };
        let bumped = if changed { g + 1 } else { g };
        meta_mut(&mut new).insert("generation".into(), json!(bumped));
    }
    new
}

/// Writes `new` over `old` (read at `expected`), applying the update rules.
async fn commit(
    st: &State,
    t: &Target,
    req: &Req,
    old: Value,
    new: Value,
    expected: i64,
) -> Result<Value, ApiError> {
    let res = t.res;
    let name = name_of(t).to_string();
    let mut new = merge_update(t, &old, new);
    defaults::on_update(st, res, &old, &mut new).await?;
    webhook::mutate(st, t, req, "UPDATE", &mut new, Some(&old)).await?;
    admit_custom(t, req, &mut new, Some(&old))?;
    admission::admit(st, req, t, Some(&old), &new).await?;
    if to_bytes(&new) != to_bytes(&old) {
        policy::validate(st, t, req, "UPDATE", Some(&new), Some(&old)).await?;
        webhook::validate(st, t, req, "UPDATE", &new, Some(&old)).await?;
    }
    let key = res.key(t.namespace.as_deref(), &name);
    if to_bytes(&new) == to_bytes(&old) && rv_of(&old)? == Some(expected) {
        return Ok(old);
    }
    if req.q("dryRun").is_some() {
        return Ok(new);
    }
    if object::finished(&new) {
        let (rev, _) = st
            .store
            .delete(&key, Some(expected))
            .await
            .map_err(|e| store_err(res, &name, e))?;
        set_rv(&mut new, rev);
        return Ok(new);
    }
    let bytes = to_stored(&new)?;
    let rev = st
        .store
        .update(&key, bytes, expected)
        .await
        .map_err(|e| store_err(res, &name, e))?;
    set_rv(&mut new, rev);
    Ok(new)
}

/// Checks that the body names the object of the URL.
fn same_name(t: &Target, obj: &mut Value) -> Result<(), ApiError> {
    let path_name = name_of(t).to_string();
    let meta = meta_mut(obj);
    match meta.get("name").and_then(Value::as_str) {
        Some(n) if n != path_name => Err(ApiError::DecodeBody {
            reason: format!(
                "the name of the object ({n}) does not match the name on the URL ({path_name})"
            ),
        }),
        _ => {
            meta.insert("name".into(), json!(path_name));
            Ok(())
        }
    }
}

/// PUT of an object, its status or its scale.
pub async fn update(st: &State, t: &Target, req: &Req) -> Result<Response, ApiError> {
    let (old, old_rev) = read(st, t).await?;
    let (new, wanted) = if t.sub.as_deref() == Some("scale") {
        let scale = decode(&req.body, &req.content_type)?;
        let replicas = scale.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
        let mut new = old.clone();
        set_replicas(&mut new, t.custom.as_deref(), replicas);
        (new, rv_of(&scale)?)
    } else {
        let mut new = decode_object(&req.body, &req.content_type, t.res)?;
        if t.sub.is_none() {
            strict(t, req, &new)?;
        }
        same_name(t, &mut new)?;
        place(t, &mut new)?;
        let wanted = rv_of(&new)?;
        (new, wanted)
    };
    let obj = commit(st, t, req, old, new, wanted.unwrap_or(old_rev)).await?;
    Ok(respond(t, req, StatusCode::OK, obj))
}

/// PATCH of an object, its status or its scale; server-side apply creates missing objects.
pub async fn patch(st: &State, t: &Target, req: &Req) -> Result<Response, ApiError> {
    let kind = PatchKind::from_content_type(&req.content_type).ok_or(
        ApiError::UnsupportedMediaType {
            accepted: "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml",
        },
    )?;
    let body_type = if kind == PatchKind::Apply {
        "yaml"
    } else {
        "json"
    };
    let p = decode(&req.body, body_type)?;
    for _ in 0..16 {
        let (old, old_rev) = match read(st, t).await {
            Ok(x) => x,
            Err(ApiError::NotFound { .. }) if kind == PatchKind::Apply && t.sub.is_none() => {
                let mut obj = p.clone();
                check_kind(&mut obj, t.res)?;
                let obj = create_object(st, t, req, obj).await?;
                return Ok(respond(t, req, StatusCode::CREATED, obj));
            }
            Err(e) => return Err(e),
        };
        let mut new = if t.sub.as_deref() == Some("scale") {
            let mut scale = scale_of(&old, t.custom.as_deref());
            patch::apply(kind, &mut scale, &p)?;
            let mut new = old.clone();
            let replicas = scale.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
            set_replicas(&mut new, t.custom.as_deref(), replicas);
            new
        } else {
            let mut new = old.clone();
            patch::apply(kind, &mut new, &p)?;
            new
        };
        check_kind(&mut new, t.res)?;
        same_name(t, &mut new)?;
        let precondition = rv_of(&new)?;
        if precondition.is_some_and(|rv| rv != old_rev) {
            return Err(conflict(t.res, name_of(t)));
        }
        match commit(st, t, req, old, new, old_rev).await {
            Err(ApiError::Conflict { .. }) => continue,
            Ok(obj) => return Ok(respond(t, req, StatusCode::OK, obj)),
            Err(e) => return Err(e),
        }
    }
    Err(conflict(t.res, name_of(t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(plural: &str, sub: Option<&str>) -> Target {
        Target {
            res: resources::by_plural(plural).expect("resource"),
            namespace: Some("default".into()),
            name: Some("d".into()),
            sub: sub.map(str::to_string),
            custom: None,
        }
    }

    #[test]
    fn updates_keep_server_fields_and_bump_generation_only_on_spec_changes() {
        let old = json!({"metadata": {"name": "d", "uid": "u1", "generation": 2,
                                      "creationTimestamp": "t"},
                         "spec": {"replicas": 1}, "status": {"replicas": 1}});
        let t = target("deployments", None);
        let same_spec = json!({"metadata": {"name": "d", "uid": "forged", "labels": {"a": "b"}},
                               "spec": {"replicas": 1}, "status": {"replicas": 9}});
        let out = merge_update(&t, &old, same_spec);
        assert_eq!(out["metadata"]["uid"], "u1");
        assert_eq!(out["metadata"]["generation"], 2);
        assert_eq!(out["metadata"]["labels"]["a"], "b");
        assert_eq!(
            out["status"]["replicas"], 1,
            "main endpoint leaves status alone"
        );
        let new_spec = json!({"metadata": {"name": "d"}, "spec": {"replicas": 3}});
        assert_eq!(
            merge_update(&t, &old, new_spec)["metadata"]["generation"],
            3
        );
    }

    #[test]
    fn the_status_endpoint_changes_only_status() {
        let old = json!({"metadata": {"name": "d"}, "spec": {"replicas": 1}});
        let t = target("deployments", Some("status"));
        let out = merge_update(
            &t,
            &old,
            json!({"spec": {"replicas": 5}, "status": {"readyReplicas": 1}}),
        );
        assert_eq!(out["spec"]["replicas"], 1);
        assert_eq!(out["status"]["readyReplicas"], 1);
    }

    #[test]
    fn the_scale_view_reads_replicas_and_the_selector() {
        let d = json!({"kind": "Deployment", "metadata": {"name": "d", "resourceVersion": "4"},
                       "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}},
                       "status": {"replicas": 1}});
        let s = scale_of(&d, None);
        assert_eq!(s["spec"]["replicas"], 2);
        assert_eq!(s["status"]["selector"], "app=web");
        assert_eq!(s["metadata"]["resourceVersion"], "4");
    }
}
