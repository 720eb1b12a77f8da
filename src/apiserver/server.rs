//! HTTPS serving, request routing and authorization.
//!
//! How: connections come from the shared accept loop ([`crate::https`]: connection cap,
//! handshake and header deadlines, HTTP/1.1 or HTTP/2 by ALPN); the client certificate
//! authenticates the connection ([`super::tls`]). Each request passes the in-flight limits
//! and the request deadline ([`Limits`]), is parsed into a [`Route`], authenticated
//! (certificate, else bearer token:
//! [`super::authn`]), optionally impersonated (`Impersonate-User`/`-Group`, which needs
//! the `impersonate` verb), authorized by RBAC ([`super::rbac`]) and dispatched to
//! discovery or to a verb on a resource. Anonymous clients may read only `/healthz`,
//! `/livez`, `/readyz` and `/version` and get 401 otherwise; refusals are 403 `Status`es.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Method;
use tokio::net::TcpListener;

use super::audit;
use super::error::ApiError;
use super::http::{parse_query, Req, Response, Target};
use super::tls::User;
use super::{
    aggregator, authn, component_status, crd, delete, discovery, kubelet_proxy, object, openapi,
    rbac, rest, review, subresource, watch, State,
};

/// What a path addresses.
#[derive(Debug)]
enum Route {
    Health,
    Version,
    Api,
    Apis,
    Group(String),
    GroupVersion(String, String),
    OpenApi,
    /// A review (`SubjectAccessReview`, `TokenReview`, …), in its namespace if any.
    Review(review::Review, Option<String>),
    Resource(Target),
}

fn resource_route(
    catalog: &crd::Catalog,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<Route, ApiError> {
    let seg = |i: usize| rest.get(i).map(|s| s.to_string());
    let ((res, custom), namespace, name, sub, len) = match rest {
        ["namespaces", ns, plural, ..]
            if catalog
                .find(group, version, plural)
                .is_some_and(|(r, _)| r.namespaced) =>
        {
            (
                catalog
                    .find(group, version, plural)
                    .ok_or(ApiError::RouteNotFound)?,
                Some(ns.to_string()),
                seg(3),
                seg(4),
                5,
            )
        }
        [plural, ..] => (
            catalog
                .find(group, version, plural)
                .ok_or(ApiError::RouteNotFound)?,
            None,
            seg(1),
            seg(2),
            3,
        ),
        [] => return Err(ApiError::RouteNotFound),
    };
    if rest.len() > len || name.as_deref() == Some("") {
        return Err(ApiError::RouteNotFound);
    }
    if sub.as_deref().is_some_and(|s| !subresource::exists(res, s)) {
        return Err(ApiError::RouteNotFound);
    }
    if res.namespaced && namespace.is_none() && name.is_some() {
        return Err(ApiError::RouteNotFound);
    }
    Ok(Route::Resource(Target {
        res,
        namespace,
        name,
        sub,
        custom,
    }))
}

fn route(catalog: &crd::Catalog, path: &str) -> Result<Route, ApiError> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match segs.as_slice() {
        ["healthz" | "livez" | "readyz", ..] => Ok(Route::Health),
        ["version"] => Ok(Route::Version),
        ["openapi", ..] => Ok(Route::OpenApi),
        ["api"] => Ok(Route::Api),
        ["api", "v1"] => Ok(Route::GroupVersion(String::new(), "v1".into())),
        ["api", "v1", rest @ ..] => resource_route(catalog, "", "v1", rest),
        ["apis"] => Ok(Route::Apis),
        ["apis", g] => Ok(Route::Group(g.to_string())),
        ["apis", g, "v1", rest @ ..] if review::find(g, rest).is_some() => review::find(g, rest)
            .map(|(r, ns)| Route::Review(r, ns))
            .ok_or(ApiError::RouteNotFound),
        ["apis", g, v] => Ok(Route::GroupVersion(g.to_string(), v.to_string())),
        ["apis", g, v, rest @ ..] => resource_route(catalog, g, v, rest),
        _ => Err(ApiError::RouteNotFound),
    }
}

/// The Kubernetes verb of a resource request.
fn verb(method: &Method, t: &Target, req: &Req) -> Result<&'static str, ApiError> {
    Ok(match (method, t.name.is_some()) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) if req.flag("watch") => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, false) => "create",
        (&Method::POST, true) if t.sub.as_deref().is_some_and(subresource::is_action) => "create",
        (&Method::PUT, true) => "update",
        (&Method::PATCH, true) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => return Err(ApiError::MethodNotAllowed),
    })
}

/// The RBAC attributes of a resource request.
fn attributes(t: &Target, verb: &str) -> rbac::Attributes {
    rbac::Attributes {
        verb: verb.to_string(),
        group: t.res.group.to_string(),
        resource: t.res.plural.to_string(),
        subresource: t.sub.clone().unwrap_or_default(),
        namespace: t.namespace.clone().unwrap_or_default(),
        name: t.name.clone().unwrap_or_default(),
        path: None,
    }
}

/// Allows the request or answers 401/403.
async fn authorize(
    state: &State,
    user: Option<&User>,
    a: &rbac::Attributes,
) -> Result<(), ApiError> {
    let user = user.ok_or(ApiError::Unauthenticated)?;
    if rbac::allowed(state, user, a).await? {
        Ok(())
    } else {
        Err(rbac::forbidden(user, a))
    }
}

/// Applies `Impersonate-User`/`Impersonate-Group` headers when the user may impersonate.
async fn impersonate(
    state: &State,
    user: User,
    headers: &hyper::HeaderMap,
) -> Result<User, ApiError> {
    let Some(name) = headers
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(user);
    };
    let check = |resource: &str, ns: &str, name: &str| rbac::Attributes {
        verb: "impersonate".into(),
        resource: resource.into(),
        namespace: ns.into(),
        name: name.into(),
        ..Default::default()
    };
    let mut wanted = match name
        .strip_prefix("system:serviceaccount:")
        .and_then(|s| s.split_once(':'))
    {
        Some((ns, sa)) => vec![check("serviceaccounts", ns, sa)],
        None => vec![check("users", "", name)],
    };
    let mut groups: Vec<String> = headers
        .get_all("impersonate-group")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    for g in &groups {
        wanted.push(check("groups", "", g));
    }
    for a in &wanted {
        authorize(state, Some(&user), a).await?;
    }
    if let Some((ns, _)) = name
        .strip_prefix("system:serviceaccount:")
        .and_then(|s| s.split_once(':'))
    {
        groups.push("system:serviceaccounts".into());
        groups.push(format!("system:serviceaccounts:{ns}"));
    }
    groups.push("system:authenticated".into());
    Ok(User {
        name: name.to_string(),
        groups,
    })
}

/// Reads a request body of at most [`object::MAX_BODY`] bytes. A bigger body is still read
/// (and dropped) up to [`DRAIN_LIMIT`], so the client is reading when the 413 arrives
/// instead of seeing its upload cut off.
async fn read_body(mut body: Incoming) -> Result<Bytes, ApiError> {
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::ReadBody(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= object::MAX_BODY {
                buf.extend_from_slice(&data);
            } else if seen > DRAIN_LIMIT {
                break;
            }
        }
    }
    if seen > object::MAX_BODY {
        return Err(ApiError::BodyTooLarge {
            limit: object::MAX_BODY,
        });
    }
    Ok(Bytes::from(buf))
}

/// Bodies announced or found bigger than this are refused without reading on.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

async fn dispatch(
    state: &State,
    gate: &Gate,
    user: Option<User>,
    req: hyper::Request<Incoming>,
    note: &mut audit::Note,
) -> Result<Response, ApiError> {
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let accept = header(hyper::header::ACCEPT);
    let content_type = header(CONTENT_TYPE);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query());
    let too_big = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n > DRAIN_LIMIT);
    let catalog = crd::catalog(state).await;
    let route = route(&catalog, &path);
    if let Ok(Route::Health | Route::Version) = route {
        return match route? {
            Route::Health => discovery::health(state, &path).await,
            _ => Ok(discovery::version()),
        };
    }
    let authorization = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let user = authn::authenticate(state, user, authorization)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    let user = impersonate(state, user, req.headers()).await?;
    note.user = Some(user.clone());
    let watch = method == Method::GET
        && matches!(query.get("watch").map(String::as_str), Some("1" | "true"));
    if let Some(b) = aggregator::route(state, &catalog, &path).await? {
        let a = aggregator::attributes(&method, &path, watch);
        note.verb = a.verb.clone();
        authorize(state, Some(&user), &a).await?;
        let _permit = if watch {
            None
        } else {
            gate.admit(&user, &method)?
        };
        if too_big {
            return Err(ApiError::BodyTooLarge {
                limit: object::MAX_BODY,
            });
        }
        let (head, body) = req.into_parts();
        let body = if matches!(method, Method::GET | Method::HEAD) {
            Bytes::new()
        } else {
            read_body(body).await?
        };
        return aggregator::proxy(state, &b, &user, head, body).await;
    }
    if let Ok(Route::Resource(t)) = &route {
        note.target = Some(t.clone());
        if let Some(v) = kubelet_proxy::verb_of(t) {
            note.verb = v.to_string();
            authorize(state, Some(&user), &attributes(t, v)).await?;
            return kubelet_proxy::serve(state, t, req).await;
        }
    }
    let _permit = if watch {
        None
    } else {
        gate.admit(&user, &method)?
    };
    let user = Some(user);
    if too_big {
        return Err(ApiError::BodyTooLarge {
            limit: object::MAX_BODY,
        });
    }
    let body = if matches!(method, Method::GET | Method::HEAD) {
        Bytes::new()
    } else {
        read_body(req.into_body()).await?
    };
    if gate.audit.is_some() && !body.is_empty() {
        note.body = Some(body.clone());
    }
    let r = Req {
        method,
        query,
        accept,
        content_type,
        body,
        user,
        warnings: Default::default(),
    };
    let route = route?;
    if !matches!(route, Route::Resource(_) | Route::Review(..)) {
        let a = rbac::Attributes {
            verb: "get".into(),
            path: Some(path.trim_end_matches('/').to_string()),
            ..Default::default()
        };
        authorize(state, r.user.as_ref(), &a).await?;
    }
    let result = match route {
        Route::Health | Route::Version => Err(ApiError::RouteNotFound),
        Route::Api => Ok(discovery::api(&catalog, &r)),
        Route::Apis => Ok(discovery::apis(
            &catalog,
            &r,
            &aggregator::listed(state, &catalog).await?,
        )),
        Route::Group(g) => {
            discovery::group(&catalog, &g, aggregator::group(state, &catalog, &g).await?)
        }
        Route::GroupVersion(g, v) => discovery::group_version(&catalog, &g, &v),
        Route::OpenApi => openapi::serve(&catalog, &path, &r.accept),
        Route::Review(kind, namespace) => {
            if r.method != Method::POST {
                return Err(ApiError::MethodNotAllowed);
            }
            note.verb = "create".into();
            let a = kind.attributes(namespace.as_deref());
            authorize(state, r.user.as_ref(), &a).await?;
            review::serve(state, kind, namespace.as_deref(), &r).await
        }
        Route::Resource(t) => {
            let verb = verb(&r.method, &t, &r)?;
            if !t.res.verbs.contains(&verb) {
                return Err(ApiError::MethodNotAllowed);
            }
            note.verb = verb.to_string();
            authorize(state, r.user.as_ref(), &attributes(&t, verb)).await?;
            if let Some(w) = t.custom.as_ref().and_then(|c| c.deprecated.clone()) {
                r.warn(w);
            }
            match verb {
                "get" | "list" if t.res.plural == "componentstatuses" => {
                    component_status::serve(state, &t, &r).await
                }
                "get" => rest::get(state, &t, &r).await,
                "list" => rest::list(state, &t, &r).await,
                "watch" => watch::watch(state, &t, &r).await,
                "create" => match t.sub.as_deref() {
                    Some("binding") => subresource::bind(state, &t, &r).await,
                    Some("eviction") => subresource::evict(state, &t, &r).await,
                    Some("token") => subresource::token(state, &t, &r).await,
                    _ => rest::create(state, &t, &r).await,
                },
                "update" => rest::update(state, &t, &r).await,
                "patch" => rest::patch(state, &t, &r).await,
                "delete" => delete::delete(state, &t, &r).await,
                _ => delete::delete_collection(state, &t, &r).await,
            }
        }
    };
    note.warnings = std::mem::take(&mut *r.warnings.lock().unwrap_or_else(|e| e.into_inner()));
    result
}

async fn handle(
    state: Arc<State>,
    gate: Arc<Gate>,
    user: Option<User>,
    req: hyper::Request<Incoming>,
) -> Result<Response, Infallible> {
    let start = Instant::now();
    let received = time::OffsetDateTime::now_utc();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let who = user.as_ref().map(|u| u.name.clone()).unwrap_or_default();
    let mut note = audit::Note::default();
    if gate.audit.is_some() {
        note.user_agent = req
            .headers()
            .get(hyper::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .chars()
            .take(256)
            .collect();
    }
    // Streaming responses (watch, log, exec) are returned as soon as they start, so the
    // deadline bounds only the work before the first byte.
    let work = dispatch(&state, &gate, user, req, &mut note);
    let resp = match tokio::time::timeout(gate.timeout, work).await {
        Ok(r) => r.unwrap_or_else(ApiError::into_response),
        Err(_) => ApiError::Timeout {
            secs: gate.timeout.as_secs(),
        }
        .into_response(),
    };
    let mut resp = resp;
    for w in &note.warnings {
        // RFC 7234 warn-text: a quoted string; control characters dropped.
        let text: String = w
            .chars()
            .filter(|c| !c.is_control())
            .collect::<String>()
            .replace('\\', "\\\\")
            .replace('"', "\\\"");
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{text}\"")) {
            resp.headers_mut().append(hyper::header::WARNING, v);
        }
    }
    let code = resp.status().as_u16();
    if let Some(a) = &gate.audit {
        let streaming = matches!(note.verb.as_str(), "watch")
            || note
                .target
                .as_ref()
                .is_some_and(|t| kubelet_proxy::verb_of(t).is_some());
        a.record(&note, &method, &uri, code, received, streaming);
    }
    tracing::debug!(
        %method, uri = %uri, user = %who, status = code,
        micros = start.elapsed().as_micros() as u64, "request"
    );
    Ok(resp)
}

/// Request-level bounds of the apiserver, named after kube-apiserver's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Read-only requests (`get`, `list`, discovery…) being served at once; more get 429.
    pub max_requests_inflight: usize,
    /// Mutating requests being served at once; more get 429.
    pub max_mutating_requests_inflight: usize,
    /// How long a non-streaming request may take (body upload included); then 504.
    pub request_timeout: std::time::Duration,
    /// Connection-level bounds.
    pub connections: crate::https::Limits,
}

impl Default for Limits {
    /// kube-apiserver's defaults: 400 read-only, 200 mutating, 60 s.
    fn default() -> Self {
        Limits {
            max_requests_inflight: 400,
            max_mutating_requests_inflight: 200,
            request_timeout: std::time::Duration::from_secs(60),
            connections: crate::https::Limits::default(),
        }
    }
}

/// The in-flight limits and deadline every request passes.
///
/// Watches and the kubelet relays (`log`, `exec`) are long-running and not counted, as in
/// kube-apiserver; members of `system:masters` are exempt, so the cluster admin and the
/// components that hold a masters certificate are never turned away.
struct Gate {
    read: Arc<tokio::sync::Semaphore>,
    mutating: Arc<tokio::sync::Semaphore>,
    timeout: std::time::Duration,
    /// Where finished requests are recorded, if anywhere.
    audit: Option<Arc<audit::Auditor>>,
}

impl Gate {
    fn new(l: &Limits, audit: Option<Arc<audit::Auditor>>) -> Gate {
        Gate {
            audit,
            read: Arc::new(tokio::sync::Semaphore::new(l.max_requests_inflight)),
            mutating: Arc::new(tokio::sync::Semaphore::new(
                l.max_mutating_requests_inflight,
            )),
            timeout: l.request_timeout,
        }
    }

    /// A permit for a counted request, held until it is answered; 429 when none is left.
    fn admit(
        &self,
        user: &User,
        method: &Method,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ApiError> {
        if user.is_master() {
            return Ok(None);
        }
        let pool = if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            &self.read
        } else {
            &self.mutating
        };
        pool.clone()
            .try_acquire_owned()
            .map(Some)
            .map_err(|_| ApiError::TooManyRequests)
    }
}

/// Accepts TLS connections on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<State>,
    limits: Limits,
    audit: Option<Arc<audit::Auditor>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let gate = Arc::new(Gate::new(&limits, audit));
    let handler = move |user, req| handle(state.clone(), gate.clone(), user, req);
    crate::https::serve(listener, tls, limits.connections, shutdown, handler).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &str) -> Target {
        match route(&crd::Catalog::default(), path) {
            Ok(Route::Resource(t)) => t,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn namespaced_object_paths_are_split_into_their_parts() {
        let t = target("/api/v1/namespaces/default/pods/web/status");
        assert_eq!(t.res.plural, "pods");
        assert_eq!(t.namespace.as_deref(), Some("default"));
        assert_eq!(t.name.as_deref(), Some("web"));
        assert_eq!(t.sub.as_deref(), Some("status"));
        let t = target("/apis/apps/v1/namespaces/a/deployments/d/scale");
        assert_eq!(t.sub.as_deref(), Some("scale"));
    }

    #[test]
    fn namespace_objects_and_their_status_are_not_mistaken_for_collections() {
        let t = target("/api/v1/namespaces/kube-system");
        assert_eq!(t.res.plural, "namespaces");
        assert_eq!(t.name.as_deref(), Some("kube-system"));
        let t = target("/api/v1/namespaces/x/status");
        assert_eq!(t.res.plural, "namespaces");
        assert_eq!(t.sub.as_deref(), Some("status"));
        let t = target("/api/v1/pods");
        assert_eq!(t.namespace, None);
        assert!(t.name.is_none());
    }

    #[test]
    fn unknown_paths_and_subresources_are_not_found() {
        for p in [
            "/api/v1/widgets",
            "/api/v1/namespaces/a/configmaps/b/scale",
            "/api/v1/pods/x",
            "/apis/apps/v1/namespaces/a/deployments/d/scale/extra",
            "/nope",
        ] {
            assert!(route(&crd::Catalog::default(), p).is_err(), "{p}");
        }
    }
}
