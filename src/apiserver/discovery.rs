//! Discovery and health: `/api`, `/apis`, `/apis/<g>`, `/api/v1`, `/apis/<g>/<v>`,
//! `/version`, `/healthz`, `/livez`, `/readyz`.
//!
//! Both discovery formats are served, built from the resource table: the legacy documents
//! (`APIVersions`, `APIGroupList`, `APIResourceList`), and aggregated discovery
//! (`apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`) when the `Accept` header asks for it,
//! as kubectl does first — one request then describes every resource. Limits:
//! `readyz` checks only that the store answers; protobuf responses are never offered.

use hyper::StatusCode;
use serde_json::{json, Value};

use super::crd::Catalog;
use super::error::ApiError;
use super::http::{full_response, json_response, Req, Response};
use super::resources::Resource;
use super::{aggregator, review, subresource, State};
use crate::KUBE_MINOR;

const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// `/healthz`, `/livez`, `/readyz` (the last also asks the store for its revision).
pub async fn health(state: &State, path: &str) -> Result<Response, ApiError> {
    if path.starts_with("/readyz") && !store_answers(state).await {
        return Ok(full_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            b"[-]etcd failed: the store does not answer\nreadyz check failed".to_vec(),
        ));
    }
    Ok(full_response(
        StatusCode::OK,
        "text/plain; charset=utf-8",
        b"ok".to_vec(),
    ))
}

/// How long one answer of the store serves `/readyz` probes.
const READY_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether the store answered a read within the last [`READY_FOR`]; one probe at a time
/// asks it again, so a flood of probes costs the store at most one read a second.
async fn store_answers(state: &State) -> bool {
    let mut last = state.ready.lock().await;
    if let Some((at, ok)) = *last {
        if at.elapsed() < READY_FOR {
            return ok;
        }
    }
    let ok = tokio::time::timeout(READY_FOR * 2, state.store.current_revision())
        .await
        .is_ok_and(|r| r.is_ok());
    *last = Some((std::time::Instant::now(), ok));
    ok
}

/// `/version`.
pub fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "major": "1",
            "minor": KUBE_MINOR.to_string(),
            "gitVersion": format!("v1.{KUBE_MINOR}.0-kimg.{}", env!("CARGO_PKG_VERSION")),
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "1970-01-01T00:00:00Z",
            "goVersion": "rust",
            "compiler": "rustc",
            "platform": "linux/amd64",
        }),
    )
}

fn wants_aggregated(req: &Req) -> bool {
    req.accept
        .split(',')
        .next()
        .is_some_and(|a| a.contains("as=APIGroupDiscoveryList") && a.contains("v=v2"))
}

fn scope(r: &Resource) -> &'static str {
    if r.namespaced {
        "Namespaced"
    } else {
        "Cluster"
    }
}

fn aggregated_version(catalog: &Catalog, group: &str, version: &str) -> Value {
    let resources: Vec<Value> = catalog
        .resources()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| {
            let subs: Vec<Value> = subresource::of(r)
                .into_iter()
                .map(|(name, kind, verbs)| {
                    json!({"subresource": name, "responseKind": kind, "verbs": verbs})
                })
                .collect();
            json!({
                "resource": r.plural,
                "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                "scope": scope(r),
                "singularResource": r.singular,
                "verbs": r.verbs,
                "shortNames": r.short_names,
                "categories": r.categories,
                "subresources": subs,
            })
        })
        .collect();
    json!({"version": version, "resources": resources, "freshness": "Current"})
}

fn aggregated(catalog: &Catalog, core: bool, remote: &[Value]) -> Response {
    let mut items: Vec<Value> = catalog
        .groups()
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(g, vs)| {
            let mut metadata = json!({"creationTimestamp": null});
            if !g.is_empty() {
                metadata["name"] = json!(g);
            }
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| aggregated_version(catalog, g, v))
                .collect();
            json!({"metadata": metadata, "versions": versions})
        })
        .collect();
    if !core {
        items.extend(review_groups().into_iter().map(|(g, resources)| {
            let resources: Vec<Value> = resources
                .iter()
                .map(|(kind, plural, namespaced)| {
                    json!({"resource": plural, "scope": if *namespaced { "Namespaced" } else { "Cluster" },
                           "responseKind": {"group": g, "version": "v1", "kind": kind},
                           "singularResource": plural.trim_end_matches('s').to_lowercase(),
                           "verbs": ["create"]})
                })
                .collect();
            json!({"metadata": {"name": g, "creationTimestamp": null},
                   "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}]})
        }));
    }
    items.extend_from_slice(remote);
    let body = json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    });
    full_response(
        StatusCode::OK,
        AGGREGATED,
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

/// `/api`.
pub fn api(catalog: &Catalog, req: &Req) -> Response {
    if wants_aggregated(req) {
        return aggregated(catalog, true, &[]);
    }
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
        }),
    )
}

/// A review kind in discovery: kind, plural, namespaced.
type ReviewKind = (&'static str, &'static str, bool);

/// The groups of the review kinds ([`review::ALL`], create-only, stored nowhere), each
/// with its kinds: kind, plural, namespaced.
fn review_groups() -> Vec<(&'static str, Vec<ReviewKind>)> {
    let mut out: Vec<(&str, Vec<_>)> = Vec::new();
    for (_, kind, group, plural, namespaced) in review::ALL {
        match out.iter_mut().find(|(g, _)| *g == group) {
            Some((_, kinds)) => kinds.push((kind, plural, namespaced)),
            None => out.push((group, vec![(kind, plural, namespaced)])),
        }
    }
    out
}

fn group_object(catalog: &Catalog, group: &str) -> Option<Value> {
    if let Some((g, _)) = review_groups().into_iter().find(|(g, _)| *g == group) {
        let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
        return Some(json!({"name": g, "versions": [gv], "preferredVersion": gv}));
    }
    let (g, vs) = catalog
        .groups()
        .into_iter()
        .find(|(g, _)| *g == group && !g.is_empty())?;
    let gvs: Vec<Value> = vs
        .iter()
        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    Some(json!({"name": g, "versions": gvs, "preferredVersion": gvs[0]}))
}

/// `/apis`, with the aggregated groups of `remote` after the served ones.
pub fn apis(catalog: &Catalog, req: &Req, remote: &aggregator::Listed) -> Response {
    if wants_aggregated(req) {
        return aggregated(catalog, false, &remote.discovery);
    }
    let mut groups: Vec<Value> = catalog
        .groups()
        .into_iter()
        .map(|(g, _)| g)
        .chain(review_groups().into_iter().map(|(g, _)| g))
        .filter_map(|g| group_object(catalog, g))
        .collect();
    groups.extend(remote.groups.iter().cloned());
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
    )
}

/// `/apis/<group>` (`remote`: the group's `APIGroup` when an `APIService` registers it).
pub fn group(catalog: &Catalog, group: &str, remote: Option<Value>) -> Result<Response, ApiError> {
    let mut g = group_object(catalog, group)
        .or(remote)
        .ok_or(ApiError::RouteNotFound)?;
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Ok(json_response(StatusCode::OK, &g))
}

/// `/api/v1` and `/apis/<group>/<version>`.
pub fn group_version(catalog: &Catalog, group: &str, version: &str) -> Result<Response, ApiError> {
    let mut list = Vec::new();
    for r in catalog
        .resources()
        .filter(|r| r.group == group && r.version == version)
    {
        list.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs,
            "shortNames": r.short_names,
            "categories": r.categories,
        }));
        for (sub, kind, verbs) in subresource::of(r) {
            let mut entry = json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": kind["kind"],
                "verbs": verbs,
            });
            if kind["group"] != r.group {
                entry["group"] = kind["group"].clone();
                entry["version"] = kind["version"].clone();
            }
            list.push(entry);
        }
    }
    if let Some((_, kinds)) = review_groups()
        .into_iter()
        .find(|(g, _)| *g == group && version == "v1")
    {
        for (kind, plural, namespaced) in kinds {
            list.push(
                json!({"name": plural, "singularName": plural.trim_end_matches('s').to_lowercase(),
                             "namespaced": namespaced, "kind": kind, "verbs": ["create"]}),
            );
        }
    }
    if list.is_empty() {
        return Err(ApiError::RouteNotFound);
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A memory store that counts how often its revision is asked.
    struct Counting(crate::store::MemoryStore, std::sync::atomic::AtomicUsize);

    #[async_trait::async_trait]
    impl crate::store::Store for Counting {
        async fn get(
            &self,
            k: &str,
        ) -> Result<Option<crate::store::KeyValue>, crate::store::StoreError> {
            self.0.get(k).await
        }
        async fn list(
            &self,
            p: &str,
            o: crate::store::ListOptions,
        ) -> Result<crate::store::ListResult, crate::store::StoreError> {
            self.0.list(p, o).await
        }
        async fn create(&self, k: &str, v: Vec<u8>) -> Result<i64, crate::store::StoreError> {
            self.0.create(k, v).await
        }
        async fn update(
            &self,
            k: &str,
            v: Vec<u8>,
            e: i64,
        ) -> Result<i64, crate::store::StoreError> {
            self.0.update(k, v, e).await
        }
        async fn delete(
            &self,
            k: &str,
            e: Option<i64>,
        ) -> Result<(i64, crate::store::KeyValue), crate::store::StoreError> {
            self.0.delete(k, e).await
        }
        async fn watch(
            &self,
            p: &str,
            r: i64,
        ) -> Result<crate::store::WatchStream, crate::store::StoreError> {
            self.0.watch(p, r).await
        }
        async fn current_revision(&self) -> Result<i64, crate::store::StoreError> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.0.current_revision().await
        }
        async fn compact(&self, r: i64) -> Result<(), crate::store::StoreError> {
            self.0.compact(r).await
        }
    }

    #[tokio::test]
    async fn a_flood_of_readyz_probes_reads_the_store_once_a_second() {
        let store = std::sync::Arc::new(Counting(Default::default(), Default::default()));
        let st = State::for_tests(store.clone());
        for _ in 0..200 {
            let r = health(&st, "/readyz").await.expect("readyz");
            assert_eq!(r.status(), StatusCode::OK);
        }
        assert_eq!(store.1.load(std::sync::atomic::Ordering::SeqCst), 1);
        let r = health(&st, "/livez").await.expect("livez");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            store.1.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "livez reads nothing"
        );
    }

    #[test]
    fn aggregated_discovery_lists_every_group_with_scale_subresources() {
        let cat = Catalog::default();
        let apps = aggregated_version(&cat, "apps", "v1");
        let resources = apps["resources"].as_array().expect("list");
        let deploy = resources
            .iter()
            .find(|r| r["resource"] == "deployments")
            .expect("deployments");
        assert_eq!(deploy["scope"], "Namespaced");
        assert_eq!(deploy["subresources"][1]["subresource"], "scale");
        assert_eq!(deploy["shortNames"][0], "deploy");
        let core = aggregated_version(&cat, "", "v1");
        assert!(core["resources"].as_array().is_some_and(|r| !r.is_empty()));
    }

    #[test]
    fn unknown_groups_are_not_found() {
        let cat = Catalog::default();
        assert!(group(&cat, "example.com", None).is_err());
        let remote = json!({"name": "example.com", "versions": [], "preferredVersion": {}});
        assert!(group(&cat, "example.com", Some(remote)).is_ok());
        assert!(group_version(&cat, "apps", "v2").is_err());
        assert!(group_version(&cat, "", "v1").is_ok());
    }
}
