//! Deletion: DELETE of one object or of a collection, with `DeleteOptions`.
//!
//! What: the options come from the body (`DeleteOptions` JSON) and the query
//! (`gracePeriodSeconds`, `propagationPolicy`, `orphanDependents`; the query wins):
//! preconditions (`uid`, `resourceVersion`) give 409 when they do not hold; a
//! `Foreground` or `Orphan` propagation policy is stored as the `foregroundDeletion` or
//! `orphan` finalizer, as Kubernetes does, for the garbage collector to act on.
//!
//! How: an object with finalizers, or a pod bound to a node (`spec.nodeName`) that is not
//! terminal, is only marked: `metadata.deletionTimestamp` (now + grace) and
//! `deletionGracePeriodSeconds` (the request's grace, else the pod's
//! `terminationGracePeriodSeconds`, else 30). The kubelet finishes a graceful pod deletion
//! with a DELETE of grace 0; the update that removes the last finalizer of a marked object
//! with no grace pending deletes it ([`finished`]). Everything else is deleted at once with a
//! compare-and-swap on the revision read. Limits: deleting a namespace deletes its objects
//! directly (no namespace controller yet); no dry-run of collections beyond reading them.

use hyper::StatusCode;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::error::ApiError;
use super::http::{json_response, Req, Response, Target};
use super::list::{list_objects, ListQuery};
use super::object::{self, finalizers, meta_mut, meta_str, set_rv, to_bytes};
use super::storage::{conflict, name_of, read, store_err};
use super::{crd, State};
use crate::store::StoreError;

/// The default grace period of a pod without `terminationGracePeriodSeconds`.
pub const DEFAULT_POD_GRACE: i64 = 30;

/// What a DELETE asks for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeleteOptions {
    pub grace_period: Option<i64>,
    /// `Foreground`, `Background` or `Orphan`.
    pub propagation: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

fn bad(reason: String) -> ApiError {
    ApiError::BadQuery { reason }
}

impl DeleteOptions {
    /// Reads the options from the body (if it is a JSON object) and the query.
    pub fn from_req(req: &Req) -> Result<DeleteOptions, ApiError> {
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let mut o = DeleteOptions {
            grace_period: body["gracePeriodSeconds"].as_i64(),
            propagation: body["propagationPolicy"].as_str().map(str::to_string),
            uid: body
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(str::to_string),
            resource_version: body
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string),
        };
        if o.propagation.is_none() {
            o.propagation = match body["orphanDependents"].as_bool() {
                Some(true) => Some("Orphan".into()),
                Some(false) => Some("Background".into()),
                None => None,
            };
        }
        if let Some(g) = req.q("gracePeriodSeconds").filter(|g| !g.is_empty()) {
            o.grace_period = Some(
                g.parse()
                    .map_err(|_| bad(format!("invalid gracePeriodSeconds {g:?}")))?,
            );
        }
        if let Some(p) = req.q("propagationPolicy").filter(|p| !p.is_empty()) {
            o.propagation = Some(p.to_string());
        } else if let Some(orphan) = req.q("orphanDependents") {
            o.propagation = Some(
                if orphan == "true" {
                    "Orphan"
                } else {
                    "Background"
                }
                .into(),
            );
        }
        if let Some(p) = &o.propagation {
            if !matches!(p.as_str(), "Foreground" | "Background" | "Orphan") {
                return Err(bad(format!(
                    "propagationPolicy: Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
                )));
            }
        }
        o.grace_period = o.grace_period.map(|g| g.max(0));
        Ok(o)
    }

    /// The finalizer the propagation policy asks for.
    fn finalizer(&self) -> Option<&'static str> {
        match self.propagation.as_deref() {
            Some("Foreground") => Some("foregroundDeletion"),
            Some("Orphan") => Some("orphan"),
            _ => None,
        }
    }
}

/// The grace period a deletion of `obj` gets: 0 (at once) for everything but pods bound to
/// a node that have not finished.
pub fn grace_period(plural: &str, obj: &Value, o: &DeleteOptions) -> i64 {
    let bound = obj
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let terminal = matches!(
        obj.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    if plural != "pods" || !bound || terminal {
        return 0;
    }
    o.grace_period
        .or_else(|| {
            obj.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(DEFAULT_POD_GRACE)
        .max(0)
}

/// The object as a deletion leaves it, or `None` when it is to be removed from the store.
fn marked(old: &Value, grace: i64, o: &DeleteOptions) -> Option<Value> {
    let mut fins = finalizers(old);
    if let Some(f) = o.finalizer() {
        if !fins.iter().any(|x| x == f) {
            fins.push(f.to_string());
        }
        let other = if f == "orphan" {
            "foregroundDeletion"
        } else {
            "orphan"
        };
        fins.retain(|x| x != other);
    }
    let deleting = old.pointer("/metadata/deletionTimestamp").is_some();
    let pending = old
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if fins.is_empty() && grace == 0 {
        return None;
    }
    let mut new = old.clone();
    let shorter = !deleting || grace < pending;
    let meta = meta_mut(&mut new);
    if shorter {
        let at = OffsetDateTime::now_utc() + time::Duration::seconds(grace);
        meta.insert("deletionTimestamp".into(), json!(object::timestamp(at)));
        meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
    }
    if !fins.is_empty() || meta.contains_key("finalizers") {
        meta.insert("finalizers".into(), json!(fins));
    }
    Some(new)
}

/// Deletes every object under a storage prefix.
async fn delete_prefix(st: &State, prefix: &str) -> Result<(), ApiError> {
    let page = st.store.list(prefix, Default::default()).await?;
    for kv in page.items {
        match st.store.delete(&kv.key, None).await {
            Ok(_) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Deletes every object in a namespace, custom ones included (stands in for the
/// namespace controller).
async fn empty_namespace(st: &State, ns: &str) -> Result<(), ApiError> {
    let catalog = crd::catalog(st).await;
    let mut prefixes: Vec<String> = catalog
        .resources()
        .filter(|r| r.namespaced)
        .map(|r| r.prefix(Some(ns)))
        .collect();
    prefixes.dedup();
    for prefix in prefixes {
        delete_prefix(st, &prefix).await?;
    }
    Ok(())
}

/// Deletes the objects of a CustomResourceDefinition that is going away (stands in for
/// kube-apiserver's `customresourcecleanup` finalizer, without waiting for the objects'
/// own finalizers).
async fn empty_definition(st: &State, crd: &Value) -> Result<(), ApiError> {
    let group = crd
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let plural = crd
        .pointer("/spec/names/plural")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if group.is_empty() || plural.is_empty() {
        return Ok(());
    }
    delete_prefix(st, &format!("/registry/{group}/{plural}/")).await
}

/// The namespaces kube-apiserver's NamespaceLifecycle admission never lets go.
pub const IMMORTAL_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

/// Deletes one object, or marks it for deletion (finalizers, graceful pods). The
/// [`IMMORTAL_NAMESPACES`] are refused (403).
pub async fn delete_object(
    st: &State,
    t: &Target,
    o: &DeleteOptions,
    dry_run: bool,
) -> Result<Value, ApiError> {
    if t.res.plural == "namespaces" && IMMORTAL_NAMESPACES.contains(&name_of(t)) {
        return Err(ApiError::Forbidden {
            message: format!(
                "namespaces \"{}\" is forbidden: this namespace may not be deleted",
                name_of(t)
            ),
            group: String::new(),
            resource: "namespaces".into(),
        });
    }
    let key = t.res.key(t.namespace.as_deref(), name_of(t));
    for _ in 0..16 {
        let (old, rev) = read(st, t).await?;
        let uid_differs = o
            .uid
            .as_deref()
            .is_some_and(|u| meta_str(&old, "uid") != Some(u));
        let rv_differs = o
            .resource_version
            .as_deref()
            .is_some_and(|v| v != rev.to_string());
        if uid_differs || rv_differs {
            return Err(conflict(t.res, name_of(t)));
        }
        let grace = grace_period(t.res.plural, &old, o);
        let result = match marked(&old, grace, o) {
            Some(new) if dry_run => return Ok(new),
            None if dry_run => return Ok(old),
            Some(new) if new == old => return Ok(old),
            Some(mut new) => st.store.update(&key, to_bytes(&new), rev).await.map(|r| {
                set_rv(&mut new, r);
                new
            }),
            None => {
                if t.res.plural == "namespaces" {
                    empty_namespace(st, name_of(t)).await?;
                }
                if t.res.plural == "customresourcedefinitions" {
                    empty_definition(st, &old).await?;
                }
                st.store.delete(&key, Some(rev)).await.map(|(r, _)| {
                    let mut gone = old;
                    set_rv(&mut gone, r);
                    gone
                })
            }
        };
        match result {
            Err(StoreError::Conflict { .. }) => continue,
            other => return other.map_err(|e| store_err(t.res, name_of(t), e)),
        }
    }
    Err(conflict(t.res, name_of(t)))
}

/// DELETE of one object.
pub async fn delete(st: &State, t: &Target, req: &Req) -> Result<Response, ApiError> {
    if t.sub.is_some() {
        return Err(ApiError::MethodNotAllowed);
    }
    let o = DeleteOptions::from_req(req)?;
    let (old, _) = read(st, t).await?;
    super::policy::validate(st, t, req, "DELETE", None, Some(&old)).await?;
    super::webhook::validate_delete(st, t, req, &old).await?;
    let obj = delete_object(st, t, &o, req.q("dryRun").is_some()).await?;
    Ok(json_response(StatusCode::OK, &obj))
}

/// DELETE of a collection: every object the selectors match.
pub async fn delete_collection(st: &State, t: &Target, req: &Req) -> Result<Response, ApiError> {
    let q = ListQuery::from_req(req)?;
    let o = DeleteOptions::from_req(req)?;
    let page = list_objects(st, t.res, t.namespace.as_deref(), &q).await?;
    let mut deleted = Vec::new();
    for obj in page.items {
        let one = Target {
            res: t.res,
            namespace: meta_str(&obj, "namespace").map(str::to_string),
            name: meta_str(&obj, "name").map(str::to_string),
            sub: None,
            custom: t.custom.clone(),
        };
        super::policy::validate(st, &one, req, "DELETE", None, Some(&obj)).await?;
        super::webhook::validate_delete(st, &one, req, &obj).await?;
        match delete_object(st, &one, &o, req.q("dryRun").is_some()).await {
            Ok(o) => deleted.push(o),
            Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": format!("{}List", t.res.kind), "apiVersion": t.res.api_version(),
                "metadata": {}, "items": deleted}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::object::finished;
    use crate::apiserver::resources::by_plural;
    use crate::store::MemoryStore;
    use std::sync::Arc;

    fn pod_target(name: &str) -> Target {
        Target {
            res: by_plural("pods").expect("pods"),
            namespace: Some("default".into()),
            name: Some(name.into()),
            sub: None,
            custom: None,
        }
    }

    async fn put(st: &State, name: &str, obj: Value) {
        st.store
            .create(
                &format!("/registry/pods/default/{name}"),
                serde_json::to_vec(&obj).expect("json"),
            )
            .await
            .expect("create");
    }

    #[tokio::test]
    async fn a_bound_pod_is_marked_with_its_grace_period_and_a_zero_grace_delete_removes_it() {
        let st = State::for_tests(Arc::new(MemoryStore::new()));
        put(
            &st,
            "p",
            json!({"metadata": {"name": "p", "namespace": "default"},
                   "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 45}}),
        )
        .await;
        let marked = delete_object(&st, &pod_target("p"), &DeleteOptions::default(), false)
            .await
            .expect("delete");
        assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 45);
        assert!(marked["metadata"]["deletionTimestamp"].is_string());
        assert!(!finished(&marked), "grace pending");
        let again = delete_object(&st, &pod_target("p"), &DeleteOptions::default(), false)
            .await
            .expect("delete again");
        assert_eq!(again["metadata"]["deletionGracePeriodSeconds"], 45);
        let now = DeleteOptions {
            grace_period: Some(0),
            ..Default::default()
        };
        delete_object(&st, &pod_target("p"), &now, false)
            .await
            .expect("delete now");
        assert!(st
            .store
            .get("/registry/pods/default/p")
            .await
            .expect("get")
            .is_none());
    }

    #[tokio::test]
    async fn an_unbound_pod_goes_at_once_and_finalizers_keep_an_object() {
        let st = State::for_tests(Arc::new(MemoryStore::new()));
        put(
            &st,
            "a",
            json!({"metadata": {"name": "a", "namespace": "default"}, "spec": {}}),
        )
        .await;
        put(
            &st,
            "b",
            json!({"metadata": {"name": "b", "namespace": "default", "finalizers": ["x/y"]},
                   "spec": {}}),
        )
        .await;
        let o = DeleteOptions::default();
        delete_object(&st, &pod_target("a"), &o, false)
            .await
            .expect("a");
        assert!(st
            .store
            .get("/registry/pods/default/a")
            .await
            .expect("get")
            .is_none());
        let b = delete_object(&st, &pod_target("b"), &o, false)
            .await
            .expect("b");
        assert_eq!(b["metadata"]["deletionGracePeriodSeconds"], 0);
        assert!(!finished(&b));
        let mut emptied = b.clone();
        emptied["metadata"]["finalizers"] = json!([]);
        assert!(finished(&emptied));
    }

    #[tokio::test]
    async fn propagation_policies_become_finalizers_and_preconditions_are_checked() {
        let st = State::for_tests(Arc::new(MemoryStore::new()));
        put(
            &st,
            "a",
            json!({"metadata": {"name": "a", "namespace": "default", "uid": "u1"}}),
        )
        .await;
        let wrong_uid = DeleteOptions {
            uid: Some("u2".into()),
            ..Default::default()
        };
        assert!(matches!(
            delete_object(&st, &pod_target("a"), &wrong_uid, false).await,
            Err(ApiError::Conflict { .. })
        ));
        let fg = DeleteOptions {
            propagation: Some("Foreground".into()),
            ..Default::default()
        };
        let a = delete_object(&st, &pod_target("a"), &fg, false)
            .await
            .expect("delete");
        assert_eq!(a["metadata"]["finalizers"], json!(["foregroundDeletion"]));
    }

    #[test]
    fn options_come_from_the_body_and_the_query_wins() {
        let req = Req {
            method: hyper::Method::DELETE,
            query: [("gracePeriodSeconds".to_string(), "5".to_string())].into(),
            accept: String::new(),
            content_type: "application/json".into(),
            body: bytes::Bytes::from_static(
                br#"{"kind":"DeleteOptions","gracePeriodSeconds":60,"orphanDependents":true}"#,
            ),
            user: None,
            warnings: Default::default(),
        };
        let o = DeleteOptions::from_req(&req).expect("options");
        assert_eq!(o.grace_period, Some(5));
        assert_eq!(o.propagation.as_deref(), Some("Orphan"));
        let bad = Req {
            query: [("propagationPolicy".to_string(), "Sideways".to_string())].into(),
            ..req
        };
        assert!(DeleteOptions::from_req(&bad).is_err());
    }
}
