//! The subresources that are verbs of their own: `pods/binding` (the scheduler's),
//! `pods/eviction`, and the verbs list each subresource offers in discovery.
//!
//! How: a `Binding` (`POST …/pods/<name>/binding`, `target.name` = the node) sets
//! `spec.nodeName`, adds the `PodScheduled=True` condition and merges the binding's
//! annotations, with a compare-and-swap retry; a pod that already has a node, or is being
//! deleted, answers 409. An `Eviction` deletes the pod with the eviction's `deleteOptions`
//! (graceful when bound, see [`super::delete`]). Both answer `201` with a success `Status`,
//! like Kubernetes. `…/serviceaccounts/<name>/token` mints a service-account JWT
//! ([`super::jwt`]). `…/certificatesigningrequests/<name>/approval` is an update of
//! `status.conditions` only ([`super::rest`]). Limits: evictions ignore
//! PodDisruptionBudgets (they are served and validated, not yet enforced here).

use hyper::StatusCode;
use serde_json::{json, Value};

use super::delete::{delete_object, DeleteOptions};
use super::error::ApiError;
use super::http::{json_response, Req, Response, Target};
use super::jwt::SaClaims;
use super::object::{decode, meta_mut, now, timestamp, to_stored};
use super::resources::Resource;
use super::storage::{conflict, name_of, read, store_err};
use super::State;
use crate::store::StoreError;

/// The subresources of `r` with the verbs each serves, in discovery order.
pub fn of(r: &Resource) -> Vec<(&'static str, Value, &'static [&'static str])> {
    const RW: &[&str] = &["get", "patch", "update"];
    let mut out = Vec::new();
    if r.status {
        out.push((
            "status",
            json!({"group": r.group, "version": r.version, "kind": r.kind}),
            RW,
        ));
    }
    if r.scale {
        out.push((
            "scale",
            json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}),
            RW,
        ));
    }
    match (r.group, r.plural) {
        ("", "pods") => {
            out.push((
                "binding",
                json!({"group": "", "version": "v1", "kind": "Binding"}),
                &["create"],
            ));
            out.push((
                "exec",
                json!({"group": "", "version": "v1", "kind": "PodExecOptions"}),
                &["create", "get"],
            ));
            out.push((
                "log",
                json!({"group": "", "version": "v1", "kind": "Pod"}),
                &["get"],
            ));
            out.push((
                "eviction",
                json!({"group": "policy", "version": "v1", "kind": "Eviction"}),
                &["create"],
            ));
        }
        ("", "serviceaccounts") => out.push((
            "token",
            json!({"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"}),
            &["create"],
        )),
        ("certificates.k8s.io", "certificatesigningrequests") => out.push((
            "approval",
            json!({"group": r.group, "version": r.version, "kind": r.kind}),
            RW,
        )),
        _ => {}
    }
    out
}

/// Whether `r` serves subresource `sub`.
pub fn exists(r: &Resource, sub: &str) -> bool {
    of(r).iter().any(|(name, _, _)| *name == sub)
}

/// Whether `sub` is created with POST (and is not a view of the object).
pub fn is_action(sub: &str) -> bool {
    matches!(sub, "binding" | "eviction" | "token")
}

fn success() -> Response {
    json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Success", "code": 201}),
    )
}

fn check_name(t: &Target, body: &Value) -> Result<(), ApiError> {
    match body.pointer("/metadata/name").and_then(Value::as_str) {
        Some(n) if !n.is_empty() && n != name_of(t) => Err(ApiError::DecodeBody {
            reason: format!(
                "the name of the object ({n}) does not match the name on the URL ({})",
                name_of(t)
            ),
        }),
        _ => Ok(()),
    }
}

/// Sets `PodScheduled=True` in a pod's status conditions.
fn scheduled(pod: &mut Value) {
    let cond = json!({"type": "PodScheduled", "status": "True",
                      "lastProbeTime": null, "lastTransitionTime": now()});
    if !pod["status"].is_object() {
        pod["status"] = json!({});
    }
    let conds = &mut pod["status"]["conditions"];
    match conds.as_array_mut() {
        Some(list) => {
            list.retain(|c| c["type"] != "PodScheduled");
            list.push(cond);
        }
        None => *conds = json!([cond]),
    }
}

/// `POST …/pods/<name>/binding`.
pub async fn bind(st: &State, t: &Target, req: &Req) -> Result<Response, ApiError> {
    let binding = decode(&req.body, &req.content_type)?;
    check_name(t, &binding)?;
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::Invalid {
            kind: "Binding".into(),
            name: name_of(t).into(),
            reason: "target.name: Required value".into(),
        })?
        .to_string();
    let key = t.res.key(t.namespace.as_deref(), name_of(t));
    for _ in 0..16 {
        let (mut pod, rev) = read(st, t).await?;
        if let Some(bound) = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            return Err(ApiError::AlreadyBound {
                name: name_of(t).into(),
                reason: format!("is already assigned to node \"{bound}\""),
            });
        }
        if pod.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::AlreadyBound {
                name: name_of(t).into(),
                reason: "is being deleted, cannot be assigned to a host".into(),
            });
        }
        if !pod["spec"].is_object() {
            pod["spec"] = json!({});
        }
        pod["spec"]["nodeName"] = json!(node);
        scheduled(&mut pod);
        if let Some(extra) = binding
            .pointer("/metadata/annotations")
            .and_then(Value::as_object)
        {
            let meta = meta_mut(&mut pod);
            if !meta.get("annotations").is_some_and(Value::is_object) {
                meta.insert("annotations".into(), json!({}));
            }
            if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
                a.extend(extra.clone());
            }
        }
        if req.q("dryRun").is_some() {
            return Ok(success());
        }
        match st.store.update(&key, to_stored(&pod)?, rev).await {
            Ok(_) => return Ok(success()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(store_err(t.res, name_of(t), e)),
        }
    }
    Err(conflict(t.res, name_of(t)))
}

/// `POST …/pods/<name>/eviction`.
pub async fn evict(st: &State, t: &Target, req: &Req) -> Result<Response, ApiError> {
    let eviction = decode(&req.body, &req.content_type)?;
    check_name(t, &eviction)?;
    let inner = eviction.get("deleteOptions").cloned().unwrap_or(json!({}));
    let opts_req = Req {
        method: req.method.clone(),
        query: Default::default(),
        accept: String::new(),
        content_type: "application/json".into(),
        body: serde_json::to_vec(&inner).unwrap_or_default().into(),
        user: None,
        warnings: Default::default(),
    };
    let o = DeleteOptions::from_req(&opts_req)?;
    let pod = Target {
        sub: None,
        custom: None,
        ..t.clone()
    };
    delete_object(st, &pod, &o, req.q("dryRun").is_some()).await?;
    Ok(success())
}

/// `POST …/serviceaccounts/<name>/token` (a `TokenRequest`, what `kubectl create token`
/// sends): a JWT for the service account, for `spec.expirationSeconds` (default one hour,
/// at least ten minutes).
pub async fn token(st: &State, t: &Target, req: &Req) -> Result<Response, ApiError> {
    let invalid = |reason: &str| ApiError::Invalid {
        kind: "TokenRequest".into(),
        name: name_of(t).into(),
        reason: reason.into(),
    };
    let keys = st
        .sa_keys
        .as_ref()
        .ok_or_else(|| invalid("the apiserver has no service-account signing key"))?;
    let mut tr = decode(&req.body, &req.content_type)?;
    let sa_target = Target {
        sub: None,
        custom: None,
        ..t.clone()
    };
    let (sa, _) = read(st, &sa_target).await?;
    let ttl = tr
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(3600);
    if ttl < 600 {
        return Err(invalid(
            "spec.expirationSeconds: Invalid value: may not specify a duration less than 10 minutes",
        ));
    }
    let audiences: Vec<String> = tr
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let claims = SaClaims {
        namespace: t.namespace.clone().unwrap_or_default(),
        name: name_of(t).into(),
        uid: sa
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
    };
    let (token, exp) = keys
        .sign(&claims, &audiences, ttl)
        .map_err(|e| invalid(&e.to_string()))?;
    let exp = time::OffsetDateTime::from_unix_timestamp(exp)
        .map(timestamp)
        .unwrap_or_default();
    tr["kind"] = json!("TokenRequest");
    tr["apiVersion"] = json!("authentication.k8s.io/v1");
    tr["metadata"] = json!({"name": name_of(t), "namespace": t.namespace,
                            "creationTimestamp": now()});
    tr["spec"]["expirationSeconds"] = json!(ttl);
    if audiences.is_empty() {
        tr["spec"]["audiences"] = json!([super::jwt::ISSUER]);
    }
    tr["status"] = json!({"token": token, "expirationTimestamp": exp});
    Ok(json_response(StatusCode::CREATED, &tr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::by_plural;
    use crate::store::MemoryStore;
    use std::sync::Arc;

    fn post(body: Value) -> Req {
        Req {
            method: hyper::Method::POST,
            query: Default::default(),
            accept: String::new(),
            content_type: "application/json".into(),
            body: serde_json::to_vec(&body).expect("json").into(),
            user: None,
            warnings: Default::default(),
        }
    }

    fn target(sub: &str) -> Target {
        Target {
            res: by_plural("pods").expect("pods"),
            namespace: Some("default".into()),
            name: Some("p".into()),
            sub: Some(sub.into()),
            custom: None,
        }
    }

    async fn stored(st: &State) -> Option<Value> {
        st.store
            .get("/registry/pods/default/p")
            .await
            .expect("get")
            .map(|kv| serde_json::from_slice(&kv.value).expect("json"))
    }

    #[tokio::test]
    async fn a_binding_sets_the_node_once_and_a_second_binding_conflicts() {
        let st = State::for_tests(Arc::new(MemoryStore::new()));
        st.store
            .create(
                "/registry/pods/default/p",
                serde_json::to_vec(&json!({"metadata": {"name": "p"}, "spec": {}})).expect("json"),
            )
            .await
            .expect("create");
        let b = json!({"kind": "Binding", "apiVersion": "v1", "metadata": {"name": "p"},
                       "target": {"kind": "Node", "name": "n1"}});
        let resp = bind(&st, &target("binding"), &post(b.clone()))
            .await
            .expect("bind");
        assert_eq!(resp.status(), StatusCode::CREATED);
        let pod = stored(&st).await.expect("pod");
        assert_eq!(pod["spec"]["nodeName"], "n1");
        assert_eq!(pod["status"]["conditions"][0]["type"], "PodScheduled");
        let again = bind(&st, &target("binding"), &post(b)).await;
        match again {
            Err(e) => assert_eq!(e.status_object()["code"], 409),
            Ok(_) => panic!("a second binding must conflict"),
        }
        let no_target = bind(&st, &target("binding"), &post(json!({"target": {}}))).await;
        assert!(matches!(no_target, Err(ApiError::Invalid { .. })));
    }

    #[tokio::test]
    async fn an_eviction_of_an_unbound_pod_deletes_it() {
        let st = State::for_tests(Arc::new(MemoryStore::new()));
        st.store
            .create(
                "/registry/pods/default/p",
                serde_json::to_vec(&json!({"metadata": {"name": "p"}})).expect("json"),
            )
            .await
            .expect("create");
        let resp = evict(
            &st,
            &target("eviction"),
            &post(json!({"kind": "Eviction", "metadata": {"name": "p"}})),
        )
        .await
        .expect("evict");
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert!(stored(&st).await.is_none());
    }
}
