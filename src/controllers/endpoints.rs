//! The Endpoints and EndpointSlice controller: for every Service with a selector, the IPs
//! of its pods, ready ones as addresses and the others as not-ready addresses.
//!
//! How: keyed by namespace — any pod or Service change in a namespace recomputes that
//! namespace's Services from the caches, and writes an `Endpoints` and one
//! `EndpointSlice` (`<service>-kimg`, label `kubernetes.io/service-name`) only when they
//! differ from what the API holds. Named target ports are resolved per pod.
//!
//! Limits: one slice per Service (no 100-endpoint split), IPv4 only, objects of deleted
//! Services are left to the garbage collector (they carry an owner reference on the slice;
//! the Endpoints object is deleted here).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{json, Value};

use super::pods::is_active;
use super::runtime::Requeue;
use super::{Controller, Ctx, ReconcileError};
use crate::client::labels::map_matches;

/// The controller-manager's row: what wakes it — any pod or Service of a namespace (keys are namespaces).
pub const CONTROLLER: Controller = Controller {
    name: "endpoints",
    triggers: |t, q| {
        t.namespace::<Pod>(q);
        t.namespace::<Service>(q);
    },
    synced: Ctx::synced,
    reconcile: |ctx, _, key| Box::pin(async move { reconcile(&ctx, &key).await }),
};

fn target_port(port: &k8s_openapi::api::core::v1::ServicePort, pod: &Pod) -> Option<i32> {
    match port.target_port.as_ref() {
        None => Some(port.port),
        Some(IntOrString::Int(i)) => Some(*i),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

/// The Endpoints `subsets` and EndpointSlice `endpoints`/`ports` of `svc` over `pods`.
pub fn compute(svc: &Service, pods: &[std::sync::Arc<Pod>]) -> (Value, Value, Value) {
    let spec = svc.spec.clone().unwrap_or_default();
    let selector = spec.selector.clone().unwrap_or_default();
    let ports = spec.ports.clone().unwrap_or_default();
    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    let mut slice_eps = Vec::new();
    let mut resolved: Vec<Value> = Vec::new();
    let mut members: Vec<&Pod> = pods
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| {
            is_active(p)
                && p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some()
                && map_matches(
                    &selector,
                    p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
                )
        })
        .collect();
    members.sort_by_key(|p| p.status.as_ref().and_then(|s| s.pod_ip.clone()));
    for p in &members {
        let ip = p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        let addr = json!({"ip": ip, "nodeName": p.spec.as_ref().and_then(|s| s.node_name.clone()),
            "targetRef": {"kind": "Pod", "name": p.metadata.name, "namespace": p.metadata.namespace, "uid": p.metadata.uid}});
        let is_ready = super::pods::is_ready(p);
        if is_ready {
            ready.push(addr);
        } else {
            not_ready.push(addr);
        }
        slice_eps.push(json!({"addresses": [ip], "conditions": {"ready": is_ready, "serving": is_ready, "terminating": false},
            "nodeName": p.spec.as_ref().and_then(|s| s.node_name.clone()),
            "targetRef": {"kind": "Pod", "name": p.metadata.name, "namespace": p.metadata.namespace, "uid": p.metadata.uid}}));
        if resolved.is_empty() {
            resolved = ports
                .iter()
                .filter_map(|sp| {
                    Some(json!({"name": sp.name.clone().unwrap_or_default(), "port": target_port(sp, p)?,
                        "protocol": sp.protocol.clone().unwrap_or_else(|| "TCP".into())}))
                })
                .collect();
        }
    }
    let subsets = if members.is_empty() {
        json!([])
    } else {
        let mut s = json!({"ports": resolved});
        if !ready.is_empty() {
            s["addresses"] = json!(ready);
        }
        if !not_ready.is_empty() {
            s["notReadyAddresses"] = json!(not_ready);
        }
        json!([s])
    };
    (subsets, json!(slice_eps), json!(resolved))
}

/// Reconciles the Services of one namespace.
#[tracing::instrument(skip(ctx))]
pub async fn reconcile(ctx: &Ctx, ns: &str) -> Result<Requeue, ReconcileError> {
    let pods: Vec<_> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
        .collect();
    let services: Vec<_> = ctx
        .services
        .state()
        .into_iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(ns))
        .collect();
    let ep_api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), ns);
    let slice_api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), ns);
    let err_read = |kind, key: &str| {
        let key = key.to_string();
        move |source| ReconcileError::Read { kind, key, source }
    };
    for svc in services {
        let name = svc.metadata.name.clone().unwrap_or_default();
        if svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .is_none()
        {
            continue;
        }
        let (subsets, eps, ports) = compute(&svc, &pods);
        let key = format!("{ns}/{name}");
        let want_ep = json!({"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": name, "namespace": ns, "labels": svc.metadata.labels}, "subsets": subsets});
        let cur = ep_api
            .get_opt(&name)
            .await
            .map_err(err_read("Endpoints", &key))?;
        match cur {
            None => {
                let e: Endpoints = serde_json::from_value(want_ep).unwrap_or_default();
                ep_api
                    .create(&PostParams::default(), &e)
                    .await
                    .map_err(|source| ReconcileError::Create {
                        kind: "Endpoints",
                        owner: key.clone(),
                        source,
                    })?;
            }
            Some(cur) => {
                let have = serde_json::to_value(&cur.subsets).unwrap_or_default();
                let want_subsets = if subsets.as_array().is_some_and(|a| a.is_empty()) {
                    Value::Null
                } else {
                    subsets.clone()
                };
                if have != want_subsets
                    && !(have.is_null() && subsets.as_array().is_some_and(|a| a.is_empty()))
                {
                    let mut e: Endpoints = serde_json::from_value(want_ep).unwrap_or_default();
                    e.metadata.resource_version = cur.metadata.resource_version.clone();
                    ep_api
                        .replace(&name, &PostParams::default(), &e)
                        .await
                        .map_err(|source| ReconcileError::Update {
                            kind: "Endpoints",
                            key: key.clone(),
                            source,
                        })?;
                }
            }
        }
        let slice_name = format!("{name}-kimg");
        let want_slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": slice_name, "namespace": ns,
                "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name, "uid": svc.metadata.uid, "controller": true, "blockOwnerDeletion": true}]},
            "addressType": "IPv4", "endpoints": eps, "ports": ports});
        let cur = slice_api
            .get_opt(&slice_name)
            .await
            .map_err(err_read("EndpointSlice", &key))?;
        let mut slice: EndpointSlice = match serde_json::from_value(want_slice) {
            Ok(s) => s,
            Err(_) => continue,
        };
        match cur {
            None => {
                slice_api
                    .create(&PostParams::default(), &slice)
                    .await
                    .map_err(|source| ReconcileError::Create {
                        kind: "EndpointSlice",
                        owner: key.clone(),
                        source,
                    })?;
            }
            Some(cur) => {
                if cur.endpoints != slice.endpoints || cur.ports != slice.ports {
                    slice.metadata.resource_version = cur.metadata.resource_version.clone();
                    slice_api
                        .replace(&slice_name, &PostParams::default(), &slice)
                        .await
                        .map_err(|source| ReconcileError::Update {
                            kind: "EndpointSlice",
                            key: key.clone(),
                            source,
                        })?;
                }
            }
        }
    }
    // Endpoints of Services that are gone.
    let live: std::collections::HashSet<String> = ctx
        .services
        .state()
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(ns))
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    let list = ep_api
        .list(&Default::default())
        .await
        .map_err(err_read("Endpoints", ns))?;
    for e in list.items {
        let n = e.metadata.name.clone().unwrap_or_default();
        if !live.contains(&n) {
            let _ = ep_api.delete(&n, &DeleteParams::default()).await;
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn ready_and_unready_pods_split_into_addresses() {
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}}))
        .expect("svc");
        let pod = |name: &str, ip: &str, ready: &str| -> Arc<Pod> {
            Arc::new(serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": ready}]}})).expect("pod"))
        };
        let other: Arc<Pod> = Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "x", "labels": {"app": "db"}},
            "status": {"podIP": "10.0.0.9"}}))
            .expect("pod"),
        );
        let (subsets, eps, ports) = compute(
            &svc,
            &[
                pod("a", "10.0.0.1", "True"),
                pod("b", "10.0.0.2", "False"),
                other,
            ],
        );
        assert_eq!(subsets[0]["addresses"][0]["ip"], "10.0.0.1");
        assert_eq!(subsets[0]["notReadyAddresses"][0]["ip"], "10.0.0.2");
        assert_eq!(ports[0]["port"], 8080);
        assert_eq!(eps.as_array().map(Vec::len), Some(2));
    }
}
