//! API aggregation (`apiregistration.k8s.io/v1` `APIService`): API servers of the users'
//! own (metrics-server, custom API servers) registered for a group/version and served
//! through the apiserver, as kube-apiserver's aggregation layer serves them.
//!
//! What: an `APIService` with a `spec.service` makes every request under
//! `/apis/<group>/<version>` go to that Service ([`proxy`]): authenticated and authorized
//! here first (RBAC on the group, resource and verb read off the path, as for any
//! resource), then forwarded over TLS with the `front-proxy-client` certificate and the
//! caller's identity in `X-Remote-User` / `X-Remote-Group` (the client's own credentials
//! and any identity headers it sent are dropped). The server is trusted through the
//! `APIService`'s `caBundle` for the name `<service>.<namespace>.svc`, or not checked with
//! `insecureSkipTLSVerify`. The `extension-apiserver-authentication` ConfigMap in
//! `kube-system` ([`publish_authentication`]) tells aggregated servers which CA signs the
//! front proxy's certificate and which headers carry the identity.
//!
//! Discovery: `/apis` lists the registered groups and versions; aggregated discovery
//! (`apidiscovery.k8s.io/v2`, what kubectl asks for first) lists their resources as the
//! availability check last read them ([`resources_of`]). An availability check
//! ([`run_availability`]) asks each server for `/apis/<group>/<version>` every
//! [`CHECK_EVERY`] and whenever an `APIService` changes, and keeps its `Available`
//! condition (`Passed`, `ServiceNotFound`, `FailedDiscoveryCheck`, …) in `status`.
//!
//! A group/version that the apiserver serves itself (built-in or a CRD) is never proxied,
//! whatever an `APIService` says: kube-apiserver's own registration controllers keep
//! those `Local`.
//!
//! Up to [`backend::Pool::IDLE`] connections per server are kept between requests.
//!
//! Limits: `Local` `APIService`s for the built-in groups are not listed; upgrade requests
//! (exec, port-forward of an aggregated API) are refused; OpenAPI documents of aggregated
//! servers are not merged into `/openapi/v2` and `/openapi/v3`; a Service is dialed at its
//! cluster IP (or external name), so the apiserver must reach Service addresses.

mod proxy;

pub use proxy::{attributes, proxy};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use super::backend::{self, Identity, Trust};
use super::error::ApiError;
use super::object;
use super::State;

/// Where `APIService` objects are stored.
const PREFIX: &str = "/registry/apiservices/";

/// How often each aggregated server is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// How long one availability check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest discovery document read from an aggregated server.
const MAX_DISCOVERY: usize = 1024 * 1024;

/// An `APIService`'s Service reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
    pub port: i64,
}

/// One registered group/version served elsewhere.
#[derive(Debug)]
pub struct Backend {
    /// The `APIService`'s name, `<version>.<group>`.
    pub name: String,
    pub group: String,
    pub version: String,
    pub group_priority: i64,
    pub version_priority: i64,
    pub service: ServiceRef,
    tls: Result<Arc<rustls::ClientConfig>, String>,
    /// Open connections between requests.
    idle: backend::Pool<http_body_util::Full<bytes::Bytes>>,
}

impl Backend {
    /// The name the server's certificate must carry.
    fn server_name(&self) -> String {
        format!("{}.{}.svc", self.service.name, self.service.namespace)
    }

    /// Where the Service is dialed (`host:port`).
    async fn address(&self, st: &State) -> Result<String, String> {
        let s = &self.service;
        backend::service_address(st, &s.namespace, &s.name, s.port).await
    }
}

/// Every `APIService` that names a Service.
#[derive(Debug, Default)]
pub struct Backends(Vec<Arc<Backend>>);

impl Backends {
    /// The server registered for `group`/`version`.
    pub fn get(&self, group: &str, version: &str) -> Option<Arc<Backend>> {
        self.0
            .iter()
            .find(|b| b.group == group && b.version == version)
            .cloned()
    }

    /// The registered groups, highest `groupPriorityMinimum` first, each with its versions
    /// in `versionPriority` order (the first is the preferred one).
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(i64, String, Vec<&Backend>)> = Vec::new();
        for b in &self.0 {
            match groups.iter_mut().find(|(_, g, _)| *g == b.group) {
                Some((p, _, vs)) => {
                    *p = (*p).max(b.group_priority);
                    vs.push(b);
                }
                None => groups.push((b.group_priority, b.group.clone(), vec![b])),
            }
        }
        groups.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        groups
            .into_iter()
            .map(|(_, g, mut vs)| {
                vs.sort_by(|a, b| {
                    b.version_priority.cmp(&a.version_priority).then(
                        super::crd::version_rank(&a.version)
                            .cmp(&super::crd::version_rank(&b.version)),
                    )
                });
                (g, vs.iter().map(|b| b.version.clone()).collect())
            })
            .collect()
    }
}

/// The aggregation layer's state in the apiserver.
#[derive(Default)]
pub struct Aggregator {
    /// The backends as of the last `APIService` change.
    backends: super::cache::Derived<Backends>,
    /// The `front-proxy-client` certificate, presented to every aggregated server.
    identity: Option<Identity>,
    /// The `APIResourceList` each available server answered (by `APIService` name).
    discovered: Mutex<HashMap<String, Value>>,
}

impl Aggregator {
    /// An aggregator presenting `identity` (the `front-proxy-client` certificate).
    pub fn new(identity: Option<Identity>) -> Aggregator {
        Aggregator {
            identity,
            ..Default::default()
        }
    }
}

/// A backend from one `APIService`; `None` for a local one.
fn compile(o: &Value, identity: Option<&Identity>) -> Option<Backend> {
    let spec = &o["spec"];
    let svc = spec.get("service").filter(|s| s.is_object())?;
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    let skip = spec["insecureSkipTLSVerify"].as_bool().unwrap_or(false);
    let tls = match spec["caBundle"].as_str().filter(|c| !c.is_empty()) {
        Some(ca) => base64::engine::general_purpose::STANDARD
            .decode(ca)
            .map_err(|e| format!("caBundle: {e}"))
            .and_then(|pem| backend::client_config(Trust::Pem(&pem), identity)),
        None if skip => backend::client_config(Trust::Anyone, identity),
        None => Err("no caBundle, and insecureSkipTLSVerify is not set".into()),
    };
    Some(Backend {
        name: text(&o["metadata"], "name"),
        group: text(spec, "group"),
        version: text(spec, "version"),
        group_priority: spec["groupPriorityMinimum"].as_i64().unwrap_or(0),
        version_priority: spec["versionPriority"].as_i64().unwrap_or(0),
        service: ServiceRef {
            namespace: text(svc, "namespace"),
            name: text(svc, "name"),
            port: svc["port"].as_i64().unwrap_or(443),
        },
        tls,
        idle: Default::default(),
    })
}

/// The registered backends, rebuilt when an `APIService` changed.
pub async fn backends(st: &State) -> Result<Arc<Backends>, ApiError> {
    let at = st.cache.as_ref().map(|c| c.changed_at(&["apiservices"]));
    if let Some(b) = at.and_then(|at| st.aggregator.backends.fresh(at)) {
        return Ok(b);
    }
    let page = st.list(PREFIX, Default::default(), true).await?;
    let mut all = Vec::new();
    for kv in &page.items {
        if let Some(b) = compile(&object::from_kv(kv)?, st.aggregator.identity.as_ref()) {
            all.push(Arc::new(b));
        }
    }
    let backends = Arc::new(Backends(all));
    if let Some(at) = at {
        st.aggregator.backends.keep(at, backends.clone());
    }
    Ok(backends)
}

/// The backend that serves `path` (`/apis/<group>/<version>[/…]`), unless the apiserver
/// serves that group/version itself.
pub async fn route(
    st: &State,
    catalog: &super::crd::Catalog,
    path: &str,
) -> Result<Option<Arc<Backend>>, ApiError> {
    let mut segs = path.trim_start_matches('/').split('/');
    let (Some("apis"), Some(group), Some(version)) = (segs.next(), segs.next(), segs.next()) else {
        return Ok(None);
    };
    // The registered backends (usually none) first: the catalog's group list is built
    // afresh on each call.
    let Some(b) = backends(st).await?.get(group, version) else {
        return Ok(None);
    };
    let local = catalog
        .groups()
        .iter()
        .any(|(g, vs)| *g == group && vs.contains(&version));
    Ok((!local).then_some(b))
}

/// What `backend`'s server last listed at `/apis/<group>/<version>` (its
/// `APIResourceList`), if it was available then.
pub fn resources_of(st: &State, backend: &Backend) -> Option<Value> {
    st.aggregator
        .discovered
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&backend.name)
        .cloned()
}

/// The `Available` condition of one check: status, reason, message.
type Verdict = (&'static str, &'static str, String);

/// Asks `b`'s server for its discovery document.
async fn check(st: &State, b: &Backend) -> (Verdict, Option<Value>) {
    let addr = match b.address(st).await {
        Ok(a) => a,
        Err(e) => return (("False", "ServiceNotFound", e), None),
    };
    let path = format!("/apis/{}/{}", b.group, b.version);
    let url = format!("https://{addr}{path}");
    let work = async {
        let tls = b.tls.clone()?;
        let mut s = backend::dial::<http_body_util::Empty<bytes::Bytes>>(
            &addr,
            &b.server_name(),
            tls,
            CHECK_TIMEOUT,
        )
        .await?;
        let req = hyper::Request::get(&path)
            .header(hyper::header::HOST, b.server_name())
            .header(hyper::header::ACCEPT, "application/json")
            .header("X-Remote-User", "system:kube-aggregator")
            .header("X-Remote-Group", "system:masters")
            .body(http_body_util::Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
        let code = resp.status();
        let body = backend::read_bounded(resp.into_body(), MAX_DISCOVERY).await?;
        if !code.is_success() {
            return Err(format!("bad status from {url}: {}", code.as_u16()));
        }
        serde_json::from_slice::<Value>(&body).map_err(|e| format!("{url}: {e}"))
    };
    match tokio::time::timeout(CHECK_TIMEOUT, work).await {
        Ok(Ok(list)) if list["resources"].is_array() => {
            (("True", "Passed", "all checks passed".into()), Some(list))
        }
        Ok(Ok(_)) => (
            (
                "False",
                "FailedDiscoveryCheck",
                format!("{url}: the answer is not an APIResourceList"),
            ),
            None,
        ),
        Ok(Err(e)) => (
            (
                "False",
                "FailedDiscoveryCheck",
                format!("failing or missing response from {url}: {e}"),
            ),
            None,
        ),
        Err(_) => (
            (
                "False",
                "FailedDiscoveryCheck",
                format!("failing or missing response from {url}: timed out"),
            ),
            None,
        ),
    }
}

/// Writes `verdict` into the `APIService`'s `Available` condition, if it changed.
async fn record(st: &State, name: &str, verdict: &Verdict) -> Result<(), ApiError> {
    let key = format!("{PREFIX}{name}");
    for _ in 0..3 {
        let Some(kv) = st.store.get(&key).await? else {
            return Ok(());
        };
        let mut o = object::from_kv(&kv)?;
        let conds = o
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let old = conds.iter().find(|c| c["type"] == "Available");
        if old.is_some_and(|c| {
            c["status"] == verdict.0 && c["reason"] == verdict.1 && c["message"] == verdict.2
        }) {
            return Ok(());
        }
        let since = match old {
            Some(c) if c["status"] == verdict.0 => c["lastTransitionTime"].clone(),
            _ => json!(object::now()),
        };
        let mut conds: Vec<Value> = conds
            .into_iter()
            .filter(|c| c["type"] != "Available")
            .collect();
        conds.push(
            json!({"type": "Available", "status": verdict.0, "reason": verdict.1,
                          "message": verdict.2, "lastTransitionTime": since}),
        );
        o["status"] = json!({"conditions": conds});
        match st
            .store
            .update(&key, object::to_bytes(&o), kv.mod_revision)
            .await
        {
            Err(crate::store::StoreError::Conflict { .. }) => continue,
            other => return other.map(|_| ()).map_err(ApiError::from),
        }
    }
    Ok(())
}

/// Checks every aggregated server now, then every [`CHECK_EVERY`] and whenever an
/// `APIService` changes, keeping `status` and the discovered resources current. Runs
/// until the apiserver stops.
pub async fn run_availability(st: Arc<State>) {
    let mut seen_at = -1;
    let mut last_check = tokio::time::Instant::now() - CHECK_EVERY;
    loop {
        let at = st
            .cache
            .as_ref()
            .map(|c| c.changed_at(&["apiservices"]))
            .unwrap_or(0);
        if at != seen_at || last_check.elapsed() >= CHECK_EVERY {
            seen_at = at;
            last_check = tokio::time::Instant::now();
            match backends(&st).await {
                Ok(all) => {
                    let mut found = HashMap::new();
                    for b in &all.0 {
                        let (verdict, list) = check(&st, b).await;
                        if let Some(list) = list {
                            found.insert(b.name.clone(), list);
                        }
                        if let Err(e) = record(&st, &b.name, &verdict).await {
                            tracing::warn!(apiservice = %b.name, error = %e, "cannot record availability");
                        }
                    }
                    *st.aggregator
                        .discovered
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = found;
                }
                Err(e) => tracing::warn!(error = %e, "cannot list APIServices"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The registered groups the apiserver does not serve itself, as discovery lists them.
#[derive(Debug, Default)]
pub struct Listed {
    /// `APIGroup` objects, for `/apis`.
    pub groups: Vec<Value>,
    /// `APIGroupDiscovery` items, for aggregated discovery: the versions whose server
    /// answered the last availability check, with the resources it listed.
    pub discovery: Vec<Value>,
}

/// What discovery shows of the aggregated groups.
pub async fn listed(st: &State, catalog: &super::crd::Catalog) -> Result<Listed, ApiError> {
    let local: Vec<&str> = catalog.groups().iter().map(|(g, _)| *g).collect();
    let all = backends(st).await?;
    let mut out = Listed::default();
    for (group, versions) in all.groups() {
        if local.contains(&group.as_str()) {
            continue;
        }
        let gvs: Vec<Value> = versions
            .iter()
            .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
            .collect();
        out.groups
            .push(json!({"name": group, "versions": gvs, "preferredVersion": gvs[0]}));
        let found: Vec<Value> = versions
            .iter()
            .filter_map(|v| {
                let b = all.get(&group, v)?;
                Some(discovery_version(&group, v, &resources_of(st, &b)?))
            })
            .collect();
        if !found.is_empty() {
            out.discovery.push(json!({
                "metadata": {"name": group, "creationTimestamp": null},
                "versions": found,
            }));
        }
    }
    Ok(out)
}

/// The `APIGroup` of an aggregated group (`/apis/<group>`).
pub async fn group(
    st: &State,
    catalog: &super::crd::Catalog,
    group: &str,
) -> Result<Option<Value>, ApiError> {
    Ok(listed(st, catalog)
        .await?
        .groups
        .into_iter()
        .find(|g| g["name"] == group))
}

/// One version of aggregated discovery from a server's `APIResourceList`: resources with
/// their subresources (`<resource>/<sub>` entries) folded in.
fn discovery_version(group: &str, version: &str, list: &Value) -> Value {
    let entries = list["resources"].as_array().cloned().unwrap_or_default();
    let kind_of = |e: &Value| {
        json!({"group": e.get("group").and_then(Value::as_str).unwrap_or(group),
               "version": e.get("version").and_then(Value::as_str).unwrap_or(version),
               "kind": e["kind"]})
    };
    let mut resources: Vec<Value> = entries
        .iter()
        .filter(|e| e["name"].as_str().is_some_and(|n| !n.contains('/')))
        .map(|e| {
            let scope = if e["namespaced"].as_bool().unwrap_or(false) {
                "Namespaced"
            } else {
                "Cluster"
            };
            json!({"resource": e["name"], "responseKind": kind_of(e), "scope": scope,
                   "singularResource": e["singularName"], "verbs": e["verbs"],
                   "shortNames": e["shortNames"], "categories": e["categories"],
                   "subresources": []})
        })
        .collect();
    for e in &entries {
        let Some((parent, sub)) = e["name"].as_str().and_then(|n| n.split_once('/')) else {
            continue;
        };
        if let Some(r) = resources.iter_mut().find(|r| r["resource"] == parent) {
            if let Some(subs) = r["subresources"].as_array_mut() {
                subs.push(json!({"subresource": sub, "responseKind": kind_of(e),
                                 "verbs": e["verbs"]}));
            }
        }
    }
    json!({"version": version, "resources": resources, "freshness": "Current"})
}

/// The headers aggregated servers read the caller's identity from.
pub const USER_HEADER: &str = "X-Remote-User";
pub const GROUP_HEADER: &str = "X-Remote-Group";
pub const EXTRA_PREFIX: &str = "X-Remote-Extra-";

/// The `front-proxy-client` certificate's common name, the one name aggregated servers
/// accept identity headers from.
pub const PROXY_CLIENT: &str = "front-proxy-client";

/// Creates or updates `kube-system/extension-apiserver-authentication`: the client CA
/// (`client-ca-file`) and the request-header settings (`requestheader-*`) aggregated
/// servers use to authenticate the apiserver's proxied requests.
pub async fn publish_authentication(
    st: &State,
    client_ca: &str,
    requestheader_ca: Option<&str>,
) -> Result<(), ApiError> {
    let mut data = json!({"client-ca-file": client_ca});
    if let Some(ca) = requestheader_ca {
        data["requestheader-client-ca-file"] = json!(ca);
        data["requestheader-allowed-names"] = json!(json!([PROXY_CLIENT]).to_string());
        data["requestheader-username-headers"] = json!(json!([USER_HEADER]).to_string());
        data["requestheader-group-headers"] = json!(json!([GROUP_HEADER]).to_string());
        data["requestheader-extra-headers-prefix"] = json!(json!([EXTRA_PREFIX]).to_string());
    }
    let key = "/registry/configmaps/kube-system/extension-apiserver-authentication";
    for _ in 0..3 {
        let result = match st.store.get(key).await? {
            Some(kv) => {
                let mut o = object::from_kv(&kv)?;
                if o["data"] == data {
                    return Ok(());
                }
                o["data"] = data.clone();
                st.store
                    .update(key, object::to_bytes(&o), kv.mod_revision)
                    .await
            }
            None => {
                let o = json!({
                    "kind": "ConfigMap", "apiVersion": "v1",
                    "metadata": {"name": "extension-apiserver-authentication",
                                 "namespace": "kube-system", "uid": object::new_uid(),
                                 "creationTimestamp": object::now()},
                    "data": data,
                });
                st.store.create(key, object::to_bytes(&o)).await
            }
        };
        match result {
            Err(
                crate::store::StoreError::Conflict { .. }
                | crate::store::StoreError::AlreadyExists { .. },
            ) => continue,
            other => return other.map(|_| ()).map_err(ApiError::from),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(name: &str, group: &str, version: &str, gp: i64, vp: i64) -> Value {
        json!({"metadata": {"name": name}, "spec": {"group": group, "version": version,
               "groupPriorityMinimum": gp, "versionPriority": vp, "insecureSkipTLSVerify": true,
               "service": {"namespace": "ns", "name": "svc", "port": 8443}}})
    }

    #[test]
    fn groups_are_ordered_by_priority_and_versions_by_version_priority() {
        let all: Vec<Arc<Backend>> = [
            api(
                "v1beta1.metrics.k8s.io",
                "metrics.k8s.io",
                "v1beta1",
                100,
                100,
            ),
            api(
                "v1alpha1.wardle.example.io",
                "wardle.example.io",
                "v1alpha1",
                1000,
                10,
            ),
            api(
                "v1beta1.wardle.example.io",
                "wardle.example.io",
                "v1beta1",
                900,
                20,
            ),
        ]
        .iter()
        .map(|o| Arc::new(compile(o, None).expect("remote")))
        .collect();
        let b = Backends(all);
        assert_eq!(
            b.groups(),
            vec![
                (
                    "wardle.example.io".to_string(),
                    vec!["v1beta1".to_string(), "v1alpha1".to_string()]
                ),
                ("metrics.k8s.io".to_string(), vec!["v1beta1".to_string()]),
            ]
        );
        let w = b.get("wardle.example.io", "v1alpha1").expect("found");
        assert_eq!(w.server_name(), "svc.ns.svc");
        assert_eq!(w.service.port, 8443);
        assert!(w.tls.is_ok());
        assert!(b.get("wardle.example.io", "v2").is_none());
    }

    #[test]
    fn a_resource_list_becomes_aggregated_discovery_with_subresources_folded_in() {
        let list = json!({"kind": "APIResourceList", "groupVersion": "metrics.k8s.io/v1beta1",
        "resources": [
            {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"]},
            {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": ["get", "list"]},
            {"name": "pods/status", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": ["get"]},
        ]});
        let v = discovery_version("metrics.k8s.io", "v1beta1", &list);
        assert_eq!(v["version"], "v1beta1");
        let rs = v["resources"].as_array().expect("resources");
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[0]["scope"], "Cluster");
        assert_eq!(rs[1]["responseKind"]["group"], "metrics.k8s.io");
        assert_eq!(rs[1]["responseKind"]["kind"], "PodMetrics");
        assert_eq!(rs[1]["subresources"][0]["subresource"], "status");
    }

    #[test]
    fn local_services_are_not_backends_and_a_bad_ca_bundle_is_kept_as_the_error() {
        let local = json!({"metadata": {"name": "v1.apps"},
                           "spec": {"group": "apps", "version": "v1"}});
        assert!(compile(&local, None).is_none());
        let mut bad = api("v1.x.io", "x.io", "v1", 1, 1);
        bad["spec"]["insecureSkipTLSVerify"] = json!(false);
        bad["spec"]["caBundle"] = json!("not base64!");
        let b = compile(&bad, None).expect("remote");
        assert!(b.tls.as_ref().expect_err("bad").contains("caBundle"));
        bad["spec"]["caBundle"] = json!(null);
        let b = compile(&bad, None).expect("remote");
        assert!(b.tls.as_ref().expect_err("none").contains("no caBundle"));
    }
}
