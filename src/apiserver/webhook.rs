//! Admission webhooks: the `MutatingWebhookConfiguration`s and
//! `ValidatingWebhookConfiguration`s users register, called on every write they match.
//!
//! What: for a create or update, every matching mutating webhook is called in order
//! (configurations by name, then their webhooks in order) with an `AdmissionReview` v1 and
//! may answer a JSON patch, which is applied; webhooks with `reinvocationPolicy: IfNeeded`
//! are called once more when a later webhook changed the object. Then, after kimg's own
//! validation, every matching validating webhook is called concurrently; the first refusal
//! fails the request as kube-apiserver fails it (`admission webhook "x" denied the
//! request: why`, the webhook's code, at least 400). Matching follows kube-apiserver
//! ([`super::matching`]: rules, `matchPolicy`, namespace and object selectors). A webhook that cannot be
//! called (refused connection, timeout, bad TLS, malformed answer) fails the request with
//! 500 under `failurePolicy: Fail`, and is skipped (logged) under `Ignore`. Warnings in
//! answers reach the client. Requests on the webhook configurations themselves are never
//! sent to webhooks, so a broken webhook can always be removed.
//!
//! How: the compiled webhooks are kept until a configuration changes in the watch cache
//! ([`super::cache::Derived`]); a webhook is reached by `clientConfig.url` or by Service
//! (its cluster IP and port, verified as `<service>.<namespace>.svc`), over TLS trusting
//! its `caBundle` ([`super::backend`]); up to four open connections per webhook are kept
//! between calls, as kube-apiserver's HTTP client keeps them. Bounds: `timeoutSeconds` (1–30) bounds each call,
//! answers are read up to the apiserver's body limit and their patches are applied with
//! the patch budget.
//!
//! A DELETE (of one object, or of each object of a collection) is sent with the object in
//! `oldObject` to the webhooks whose rules name `DELETE`.
//!
//! Limits: CONNECT requests are not sent to webhooks yet; webhooks receive the
//! whole object for subresource writes (kube-apiserver sends e.g. a `Scale`); no
//! authentication to webhooks (kube-apiserver's admission kubeconfig).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::{json, Value};

use super::error::ApiError;
use super::http::{Req, Target};
use super::matching::Matcher;
use super::object::{self, MAX_BODY};
use super::patch::{self, PatchKind};
use super::State;

const KINDS: [&str; 2] = [
    "mutatingwebhookconfigurations",
    "validatingwebhookconfigurations",
];

/// Where a webhook is reached.
#[derive(Debug)]
enum Endpoint {
    Url {
        authority: String,
        host: String,
        path: String,
    },
    Service {
        namespace: String,
        name: String,
        port: i64,
        path: String,
    },
}

/// One compiled webhook.
#[derive(Debug)]
struct Hook {
    name: String,
    mutating: bool,
    matcher: Matcher,
    ignore_failure: bool,
    reinvoke: bool,
    timeout: Duration,
    endpoint: Endpoint,
    tls: Result<Arc<rustls::ClientConfig>, String>,
    /// Open connections between calls.
    idle: super::backend::Pool<Full<Bytes>>,
}

/// Every webhook, mutating ones first in calling order.
#[derive(Debug, Default)]
pub struct Hooks(Vec<Hook>);

/// The webhooks as of the last change to their configurations.
pub type Registry = super::cache::Derived<Hooks>;

fn compile(h: &Value, mutating: bool) -> Option<Hook> {
    let cc = &h["clientConfig"];
    let endpoint = if let Some(u) = cc["url"].as_str() {
        let uri: hyper::Uri = u.parse().ok()?;
        let host = uri.host()?.trim_matches(['[', ']']).to_string();
        let port = uri.port_u16().unwrap_or(443);
        Endpoint::Url {
            authority: if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            },
            host,
            path: uri.path_and_query().map_or("/".into(), |p| p.to_string()),
        }
    } else {
        let s = &cc["service"];
        Endpoint::Service {
            namespace: s["namespace"].as_str()?.to_string(),
            name: s["name"].as_str()?.to_string(),
            port: s["port"].as_i64().unwrap_or(443),
            path: s["path"].as_str().unwrap_or("/").to_string(),
        }
    };
    let tls = base64::engine::general_purpose::STANDARD
        .decode(cc["caBundle"].as_str().unwrap_or_default())
        .map_err(|e| format!("caBundle: {e}"))
        .and_then(|pem| super::backend::trusting(&pem));
    Some(Hook {
        name: h["name"].as_str()?.to_string(),
        mutating,
        matcher: Matcher::new(h),
        ignore_failure: h["failurePolicy"] == "Ignore",
        reinvoke: h["reinvocationPolicy"] == "IfNeeded",
        timeout: Duration::from_secs(h["timeoutSeconds"].as_u64().unwrap_or(10).clamp(1, 30)),
        endpoint,
        tls,
        idle: Default::default(),
    })
}

async fn hooks(st: &State) -> Result<Arc<Hooks>, ApiError> {
    let at = st.cache.as_ref().map(|c| c.changed_at(&KINDS));
    if let Some(h) = at.and_then(|at| st.hooks.fresh(at)) {
        return Ok(h);
    }
    let mut all = Vec::new();
    for (kind, mutating) in [(KINDS[0], true), (KINDS[1], false)] {
        let page = st
            .list(&format!("/registry/{kind}/"), Default::default(), true)
            .await?;
        for kv in &page.items {
            let config = object::from_kv(kv)?;
            for h in config["webhooks"].as_array().into_iter().flatten() {
                if let Some(hook) = compile(h, mutating) {
                    all.push(hook);
                }
            }
        }
    }
    let hooks = Arc::new(Hooks(all));
    if let Some(at) = at {
        st.hooks.keep(at, hooks.clone());
    }
    Ok(hooks)
}

/// The `AdmissionReview` request for one call.
pub(super) fn review(
    t: &Target,
    req: &Req,
    operation: &str,
    obj: Option<&Value>,
    old: Option<&Value>,
) -> Value {
    let user = req.user.as_ref();
    let options_kind = match operation {
        "CREATE" => "CreateOptions",
        "UPDATE" => "UpdateOptions",
        _ => "DeleteOptions",
    };
    let kind = json!({"group": t.res.group, "version": t.res.version, "kind": t.res.kind});
    let resource =
        json!({"group": t.res.group, "version": t.res.version, "resource": t.res.plural});
    let name = obj
        .or(old)
        .and_then(|o| object::meta_str(o, "name"))
        .unwrap_or_default();
    let mut request = json!({
        "uid": object::new_uid(),
        "kind": kind, "resource": resource,
        "requestKind": kind, "requestResource": resource,
        "name": name,
        "operation": operation,
        "userInfo": {
            "username": user.map(|u| u.name.as_str()).unwrap_or_default(),
            "groups": user.map(|u| u.groups.clone()).unwrap_or_default(),
        },
        "object": obj.cloned().unwrap_or(Value::Null),
        "oldObject": old.cloned().unwrap_or(Value::Null),
        "dryRun": req.q("dryRun").is_some(),
        "options": {"kind": options_kind, "apiVersion": "meta.k8s.io/v1"},
    });
    if let Some(sub) = &t.sub {
        request["subResource"] = json!(sub);
        request["requestSubResource"] = json!(sub);
    }
    if let Some(ns) = &t.namespace {
        request["namespace"] = json!(ns);
    }
    json!({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": request})
}

/// Calls one webhook; `Ok` holds its `response`.
async fn call(st: &State, h: &Hook, review: &Value) -> Result<Value, String> {
    let tls = h.tls.clone()?;
    let (addr, name, path, host_header) = match &h.endpoint {
        Endpoint::Url {
            authority,
            host,
            path,
        } => (
            authority.clone(),
            host.clone(),
            path.clone(),
            authority.clone(),
        ),
        Endpoint::Service {
            namespace,
            name,
            port,
            path,
        } => {
            let addr = super::backend::service_address(st, namespace, name, *port).await?;
            let host = format!("{name}.{namespace}.svc");
            (addr, host.clone(), path.clone(), format!("{host}:{port}"))
        }
    };
    let work = async {
        let body = Bytes::from(serde_json::to_vec(review).map_err(|e| e.to_string())?);
        let request = || {
            hyper::Request::post(&path)
                .header(hyper::header::HOST, &host_header)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header(hyper::header::ACCEPT, "application/json")
                .body(Full::new(body.clone()))
                .map_err(|e| e.to_string())
        };
        let (sender, resp) = h.idle.send(&addr, &name, tls, h.timeout, request).await?;
        let status = resp.status();
        let bytes = super::backend::read_bounded(resp.into_body(), MAX_BODY).await?;
        h.idle.keep(&addr, sender);
        if !status.is_success() {
            return Err(format!(
                "the server responded with status {}: {}",
                status.as_u16(),
                String::from_utf8_lossy(&bytes[..bytes.len().min(256)])
            ));
        }
        serde_json::from_slice::<Value>(&bytes).map_err(|e| format!("bad AdmissionReview: {e}"))
    };
    let answer = tokio::time::timeout(h.timeout, work)
        .await
        .map_err(|_| format!("context deadline exceeded after {}s", h.timeout.as_secs()))??;
    let response = answer
        .get("response")
        .filter(|r| r.is_object())
        .ok_or("the AdmissionReview has no response")?;
    if response["uid"] != review["request"]["uid"] {
        return Err(format!(
            "expected response.uid={}, got {}",
            review["request"]["uid"], response["uid"]
        ));
    }
    Ok(response.clone())
}

/// The error for a webhook that refused the request.
fn denied(h: &Hook, response: &Value) -> ApiError {
    let status = &response["status"];
    let why = status["message"]
        .as_str()
        .filter(|m| !m.is_empty())
        .or_else(|| status["reason"].as_str().filter(|r| !r.is_empty()));
    let message = match why {
        Some(w) => format!("admission webhook \"{}\" denied the request: {w}", h.name),
        None => format!(
            "admission webhook \"{}\" denied the request without explanation",
            h.name
        ),
    };
    let code = status["code"].as_u64().unwrap_or(0).clamp(400, 599) as u16;
    ApiError::Denied { code, message }
}

fn failed(h: &Hook, why: String) -> Result<(), ApiError> {
    if h.ignore_failure {
        tracing::warn!(webhook = %h.name, error = %why, "failed calling webhook, failing open");
        return Ok(());
    }
    Err(ApiError::WebhookFailed {
        message: format!(
            "failed calling webhook \"{}\": failed to call webhook: {why}",
            h.name
        ),
    })
}

fn warnings(req: &Req, response: &Value) {
    for w in response["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .take(32)
    {
        if let Some(w) = w.as_str() {
            req.warn(w.chars().take(512).collect());
        }
    }
}

/// Requests on admission configuration itself (webhooks, policies) are never admitted by
/// it, so a broken webhook or policy can always be removed.
pub(super) fn exempt(t: &Target) -> bool {
    t.res.group == "admissionregistration.k8s.io"
}

/// Runs the mutating webhooks that match a create or update of `obj` (`old` on updates).
pub async fn mutate(
    st: &State,
    t: &Target,
    req: &Req,
    operation: &str,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if exempt(t) {
        return Ok(());
    }
    let all = hooks(st).await?;
    let mutating: Vec<&Hook> = all.0.iter().filter(|h| h.mutating).collect();
    if mutating.is_empty() {
        return Ok(());
    }
    // (index, changed the object) of each call, in order.
    let mut calls: Vec<(usize, bool)> = Vec::new();
    for (i, h) in mutating.iter().enumerate() {
        let changed = call_mutating(st, h, t, req, operation, obj, old).await?;
        calls.push((i, changed));
    }
    let last_change = calls.iter().rposition(|(_, c)| *c);
    if let Some(last) = last_change {
        for (i, _) in calls[..last].iter().copied() {
            if mutating[i].reinvoke {
                call_mutating(st, mutating[i], t, req, operation, obj, old).await?;
            }
        }
    }
    Ok(())
}

async fn call_mutating(
    st: &State,
    h: &Hook,
    t: &Target,
    req: &Req,
    operation: &str,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<bool, ApiError> {
    if !h.matcher.applies(st, t, operation, Some(obj), old).await? {
        return Ok(false);
    }
    let r = review(t, req, operation, Some(obj), old);
    let response = match call(st, h, &r).await {
        Ok(resp) => resp,
        Err(why) => return failed(h, why).map(|_| false),
    };
    warnings(req, &response);
    if response["allowed"] != true {
        return Err(denied(h, &response));
    }
    let Some(p) = response["patch"].as_str() else {
        return Ok(false);
    };
    if response["patchType"] != "JSONPatch" {
        return failed(
            h,
            format!("unsupported patchType {}", response["patchType"]),
        )
        .map(|_| false);
    }
    let ops = base64::engine::general_purpose::STANDARD
        .decode(p)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|e| e.to_string()));
    let ops = match ops {
        Ok(o) => o,
        Err(why) => return failed(h, format!("bad patch: {why}")).map(|_| false),
    };
    let mut patched = obj.clone();
    if let Err(e) = patch::apply(PatchKind::Json, &mut patched, &ops) {
        return failed(h, format!("the patch does not apply: {e}")).map(|_| false);
    }
    let changed = patched != *obj;
    *obj = patched;
    Ok(changed)
}

/// Runs the validating webhooks that match a create or update, concurrently.
pub async fn validate(
    st: &State,
    t: &Target,
    req: &Req,
    operation: &str,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    check(st, t, req, operation, Some(obj), old, false).await
}

/// Runs the webhooks that match the deletion of `old`, mutating ones included (as
/// kube-apiserver admits a DELETE through both; there is no object to patch, so a
/// mutating webhook can only refuse), concurrently.
pub async fn validate_delete(
    st: &State,
    t: &Target,
    req: &Req,
    old: &Value,
) -> Result<(), ApiError> {
    check(st, t, req, "DELETE", None, Some(old), true).await
}

/// Calls the matching webhooks (validating ones; `mutating` ones too when asked) and
/// fails on the first refusal.
async fn check(
    st: &State,
    t: &Target,
    req: &Req,
    operation: &str,
    obj: Option<&Value>,
    old: Option<&Value>,
    mutating: bool,
) -> Result<(), ApiError> {
    if exempt(t) {
        return Ok(());
    }
    let all = hooks(st).await?;
    let mut matching = Vec::new();
    for h in all.0.iter().filter(|h| mutating || !h.mutating) {
        if h.matcher.applies(st, t, operation, obj, old).await? {
            matching.push(h);
        }
    }
    let calls = matching.iter().map(|h| async {
        let r = review(t, req, operation, obj, old);
        (*h, call(st, h, &r).await)
    });
    for (h, outcome) in futures::future::join_all(calls).await {
        match outcome {
            Ok(response) => {
                warnings(req, &response);
                if response["allowed"] != true {
                    return Err(denied(h, &response));
                }
            }
            Err(why) => failed(h, why)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn refusals_read_like_kube_apiserver_s() {
        let h = compile(
            &json!({"name": "deny.kimg.example.io", "clientConfig": {"url": "https://127.0.0.1:1/x"},
                    "rules": []}),
            false,
        )
        .expect("hook");
        let e = denied(
            &h,
            &json!({"allowed": false, "status": {"message": "no", "code": 403}}),
        );
        assert_eq!(
            e.to_string(),
            "admission webhook \"deny.kimg.example.io\" denied the request: no"
        );
        let bare = denied(&h, &json!({"allowed": false}));
        assert!(matches!(bare, ApiError::Denied { code: 400, .. }));
        assert!(bare.to_string().ends_with("without explanation"));
        assert!(h.tls.is_err(), "no caBundle, nothing trusted");
    }
}
