//! The Node authorizer: what a kubelet's identity (`system:node:<name>` in `system:nodes`)
//! may touch, decided from the pods bound to that node — kube-apiserver's `Node`
//! authorization mode and the part of `NodeRestriction` that needs no request body.
//!
//! What: consulted before RBAC for node users. It answers [`Decision::Allow`],
//! [`Decision::Deny`] or [`Decision::NoOpinion`] (then RBAC decides):
//! - Secrets, ConfigMaps and PersistentVolumeClaims: `get` of one a pod bound to the node
//!   references (volumes, projected sources, `env`/`envFrom`, `imagePullSecrets`); a
//!   PersistentVolume bound to such a claim. Every other request on them is denied, so a
//!   node cannot list or watch them at all.
//! - `serviceaccounts/token`: only for the service account of a pod bound to the node.
//! - Nodes: a node writes (create, update, patch, delete, status) only its own Node.
//! - Pods: a node deletes, evicts and writes the status of only pods bound to it.
//! - Leases: a node writes only `kube-node-lease/<its name>` (so never the VIP's Lease).
//!
//! How: the pods are read from the watch cache (no etcd read per request), filtered by
//! `spec.nodeName`; a pod that is already deleted grants nothing. The body-dependent half
//! of NodeRestriction (a node creating a pod bound elsewhere) is in [`super::admission`].

use serde_json::Value;

use super::attributes::Attributes;
use super::error::ApiError;
use super::object::from_kv;
use super::tls::User;
use super::State;

/// The Node authorizer's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
    NoOpinion,
}

/// The node a user is, when it is a node: `system:node:<name>` in `system:nodes`.
pub fn node_name(user: &User) -> Option<&str> {
    let name = user.name.strip_prefix("system:node:")?;
    (!name.is_empty() && user.groups.iter().any(|g| g == "system:nodes")).then_some(name)
}

const WRITE: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];

/// Decides `a` for the node `node`; see the module docs.
pub async fn decide(st: &State, node: &str, a: &Attributes) -> Result<Decision, ApiError> {
    if a.path.is_some() {
        return Ok(Decision::NoOpinion);
    }
    let write = WRITE.contains(&a.verb.as_str());
    let own = a.name == node;
    Ok(
        match (
            a.group.as_str(),
            a.resource.as_str(),
            a.subresource.as_str(),
        ) {
            ("", "secrets" | "configmaps" | "persistentvolumeclaims", "") => {
                if a.verb != "get" || a.name.is_empty() {
                    Decision::Deny
                } else {
                    allow_if(references(st, node, &a.namespace, &a.resource, &a.name).await?)
                }
            }
            ("", "persistentvolumes", "") => {
                if a.verb != "get" || a.name.is_empty() {
                    Decision::Deny
                } else {
                    allow_if(uses_volume(st, node, &a.name).await?)
                }
            }
            ("", "serviceaccounts", "token") => {
                allow_if(a.verb == "create" && runs_as(st, node, &a.namespace, &a.name).await?)
            }
            ("", "nodes", _) if write => {
                // A create names the Node in its body: admission checks it.
                if own || (a.verb == "create" && a.name.is_empty()) {
                    Decision::NoOpinion
                } else {
                    Decision::Deny
                }
            }
            ("", "pods", "" | "status" | "eviction") if write && !a.name.is_empty() => {
                match pod_node(st, &a.namespace, &a.name).await? {
                    Some(n) if n == node => Decision::NoOpinion,
                    // A pod that does not exist: RBAC and the verb answer (404 or create).
                    None => Decision::NoOpinion,
                    Some(_) => Decision::Deny,
                }
            }
            ("", "pods", "") if a.verb == "deletecollection" => Decision::Deny,
            ("coordination.k8s.io", "leases", _) if write => {
                if a.namespace == "kube-node-lease" && (own || a.verb == "create") {
                    Decision::NoOpinion
                } else {
                    Decision::Deny
                }
            }
            _ => Decision::NoOpinion,
        },
    )
}

fn allow_if(b: bool) -> Decision {
    if b {
        Decision::Allow
    } else {
        Decision::Deny
    }
}

/// The live pods bound to `node` in `namespace` (every namespace when empty).
async fn pods_on(st: &State, node: &str, namespace: &str) -> Result<Vec<Value>, ApiError> {
    let prefix = if namespace.is_empty() {
        "/registry/pods/".to_string()
    } else {
        format!("/registry/pods/{namespace}/")
    };
    let page = st.list(&prefix, Default::default(), true).await?;
    let mut out = Vec::new();
    for kv in &page.items {
        let pod = from_kv(kv)?;
        if pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
            && pod.pointer("/metadata/deletionTimestamp").is_none()
        {
            out.push(pod);
        }
    }
    Ok(out)
}

/// The node a stored pod is bound to ("" when unbound), or `None` when there is no pod.
async fn pod_node(st: &State, namespace: &str, name: &str) -> Result<Option<String>, ApiError> {
    let key = format!("/registry/pods/{namespace}/{name}");
    let Some(kv) = st.get_cached(&key).await? else {
        return Ok(None);
    };
    let pod = from_kv(&kv)?;
    Ok(Some(
        pod.pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    ))
}

async fn references(
    st: &State,
    node: &str,
    namespace: &str,
    resource: &str,
    name: &str,
) -> Result<bool, ApiError> {
    let pods = pods_on(st, node, namespace).await?;
    Ok(pods
        .iter()
        .any(|p| referenced(p, resource).iter().any(|n| n == name)))
}

async fn runs_as(st: &State, node: &str, namespace: &str, sa: &str) -> Result<bool, ApiError> {
    let pods = pods_on(st, node, namespace).await?;
    Ok(pods.iter().any(|p| {
        p.pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .unwrap_or("default")
            == sa
    }))
}

async fn uses_volume(st: &State, node: &str, pv: &str) -> Result<bool, ApiError> {
    for pod in pods_on(st, node, "").await? {
        let ns = pod
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        for claim in referenced(&pod, "persistentvolumeclaims") {
            let key = format!("/registry/persistentvolumeclaims/{ns}/{claim}");
            if let Some(kv) = st.get_cached(&key).await? {
                if from_kv(&kv)?
                    .pointer("/spec/volumeName")
                    .and_then(Value::as_str)
                    == Some(pv)
                {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// The names of the `resource` objects (secrets, configmaps, persistentvolumeclaims) a
/// pod references.
pub fn referenced(pod: &Value, resource: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    fn push(out: &mut Vec<String>, v: Option<&Value>) {
        if let Some(n) = v.and_then(Value::as_str).filter(|n| !n.is_empty()) {
            out.push(n.to_string());
        }
    }
    let spec = &pod["spec"];
    let (volume_key, volume_name, env_key, from_key, projected_key) = match resource {
        "secrets" => (
            "secret",
            "secretName",
            "secretKeyRef",
            "secretRef",
            "secret",
        ),
        "configmaps" => (
            "configMap",
            "name",
            "configMapKeyRef",
            "configMapRef",
            "configMap",
        ),
        "persistentvolumeclaims" => ("persistentVolumeClaim", "claimName", "", "", ""),
        _ => return Vec::new(),
    };
    for v in spec["volumes"].as_array().into_iter().flatten() {
        push(&mut out, v[volume_key].get(volume_name));
        if resource == "persistentvolumeclaims" && v.get("ephemeral").is_some() {
            // A generic ephemeral volume's claim is named after the pod and the volume.
            if let (Some(p), Some(n)) = (
                pod.pointer("/metadata/name").and_then(Value::as_str),
                v["name"].as_str(),
            ) {
                out.push(format!("{p}-{n}"));
            }
        }
        if !projected_key.is_empty() {
            for s in v
                .pointer("/projected/sources")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                push(&mut out, s[projected_key].get("name"));
            }
        }
        if resource == "secrets" {
            // CSI and the remote file systems name their credentials Secret.
            for key in [
                "csi/nodePublishSecretRef",
                "cephfs/secretRef",
                "rbd/secretRef",
            ] {
                push(&mut out, v.pointer(&format!("/{key}/name")));
            }
        }
    }
    if !env_key.is_empty() {
        for list in ["containers", "initContainers", "ephemeralContainers"] {
            for c in spec[list].as_array().into_iter().flatten() {
                for e in c["env"].as_array().into_iter().flatten() {
                    push(&mut out, e.pointer(&format!("/valueFrom/{env_key}/name")));
                }
                for e in c["envFrom"].as_array().into_iter().flatten() {
                    push(&mut out, e[from_key].get("name"));
                }
            }
        }
    }
    if resource == "secrets" {
        for s in spec["imagePullSecrets"].as_array().into_iter().flatten() {
            push(&mut out, s.get("name"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, Store};
    use serde_json::json;
    use std::sync::Arc;

    fn attrs(
        verb: &str,
        group: &str,
        resource: &str,
        sub: &str,
        ns: &str,
        name: &str,
    ) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
            path: None,
        }
    }

    #[test]
    fn only_node_identities_are_nodes() {
        let u = |n: &str, g: &[&str]| User {
            name: n.into(),
            groups: g.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            node_name(&u("system:node:w0", &["system:nodes"])),
            Some("w0")
        );
        assert_eq!(node_name(&u("system:node:w0", &["system:masters"])), None);
        assert_eq!(node_name(&u("system:node:", &["system:nodes"])), None);
        assert_eq!(node_name(&u("alice", &["system:nodes"])), None);
    }

    #[test]
    fn every_way_a_pod_names_a_secret_or_configmap_is_found() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {
            "volumes": [
                {"name": "a", "secret": {"secretName": "vol-secret"}},
                {"name": "b", "configMap": {"name": "vol-cm"}},
                {"name": "c", "projected": {"sources": [
                    {"secret": {"name": "proj-secret"}}, {"configMap": {"name": "proj-cm"}}]}},
                {"name": "d", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "e", "ephemeral": {}},
            ],
            "containers": [{"name": "c", "env": [
                {"name": "X", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}},
                {"name": "Y", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "k"}}}],
                "envFrom": [{"secretRef": {"name": "from-secret"}}]}],
            "initContainers": [{"name": "i", "envFrom": [{"configMapRef": {"name": "init-cm"}}]}],
            "imagePullSecrets": [{"name": "pull"}],
        }});
        let mut s = referenced(&pod, "secrets");
        s.sort();
        assert_eq!(
            s,
            [
                "env-secret",
                "from-secret",
                "proj-secret",
                "pull",
                "vol-secret"
            ]
        );
        let mut c = referenced(&pod, "configmaps");
        c.sort();
        assert_eq!(c, ["env-cm", "init-cm", "proj-cm", "vol-cm"]);
        assert_eq!(referenced(&pod, "persistentvolumeclaims"), ["data", "p-e"]);
    }

    #[tokio::test]
    async fn a_node_reaches_only_what_its_own_pods_use() {
        let store = Arc::new(MemoryStore::new());
        let st = State::for_tests(store.clone());
        for (name, node) in [("mine", "w0"), ("theirs", "w1")] {
            let pod = json!({"metadata": {"name": name, "namespace": "app"}, "spec": {
                "nodeName": node, "serviceAccountName": format!("{name}-sa"),
                "volumes": [{"name": "v", "secret": {"secretName": format!("{name}-secret")}}]}});
            store
                .create(
                    &format!("/registry/pods/app/{name}"),
                    serde_json::to_vec(&pod).expect("json"),
                )
                .await
                .expect("create");
        }
        let d = |a: Attributes| {
            let st = &st;
            async move { decide(st, "w0", &a).await.expect("decide") }
        };
        use Decision::*;
        assert_eq!(
            d(attrs("get", "", "secrets", "", "app", "mine-secret")).await,
            Allow
        );
        assert_eq!(
            d(attrs("get", "", "secrets", "", "app", "theirs-secret")).await,
            Deny
        );
        assert_eq!(
            d(attrs(
                "get",
                "",
                "secrets",
                "",
                "kube-system",
                "mine-secret"
            ))
            .await,
            Deny
        );
        assert_eq!(d(attrs("list", "", "secrets", "", "app", "")).await, Deny);
        assert_eq!(
            d(attrs(
                "create",
                "",
                "serviceaccounts",
                "token",
                "app",
                "mine-sa"
            ))
            .await,
            Allow
        );
        assert_eq!(
            d(attrs(
                "create",
                "",
                "serviceaccounts",
                "token",
                "app",
                "theirs-sa"
            ))
            .await,
            Deny
        );
        assert_eq!(d(attrs("patch", "", "nodes", "", "", "w1")).await, Deny);
        assert_eq!(d(attrs("create", "", "nodes", "", "", "")).await, NoOpinion);
        assert_eq!(
            d(attrs("patch", "", "nodes", "status", "", "w0")).await,
            NoOpinion
        );
        assert_eq!(d(attrs("get", "", "nodes", "", "", "w1")).await, NoOpinion);
        assert_eq!(
            d(attrs("update", "", "pods", "status", "app", "mine")).await,
            NoOpinion
        );
        assert_eq!(
            d(attrs("update", "", "pods", "status", "app", "theirs")).await,
            Deny
        );
        assert_eq!(
            d(attrs("delete", "", "pods", "", "app", "theirs")).await,
            Deny
        );
        assert_eq!(
            d(attrs(
                "update",
                "coordination.k8s.io",
                "leases",
                "",
                "kube-system",
                "kimg-vip"
            ))
            .await,
            Deny
        );
        assert_eq!(
            d(attrs(
                "update",
                "coordination.k8s.io",
                "leases",
                "",
                "kube-node-lease",
                "w1"
            ))
            .await,
            Deny
        );
        assert_eq!(
            d(attrs(
                "update",
                "coordination.k8s.io",
                "leases",
                "",
                "kube-node-lease",
                "w0"
            ))
            .await,
            NoOpinion
        );
    }
}
