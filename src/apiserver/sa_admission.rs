//! The ServiceAccount admission step for new pods: the token volume every pod gets.
//!
//! What: unless the pod or its ServiceAccount sets `automountServiceAccountToken: false`,
//! or a container already mounts [`MOUNT_PATH`], a new pod gets the projected volume
//! `kube-api-access-<random>` that Kubernetes' admission plugin adds — a bound
//! service-account `token` (TokenRequest, [`TOKEN_SECONDS`]), `ca.crt` from the
//! namespace's `kube-root-ca.crt` ConfigMap, and `namespace` from the downward API — mounted
//! read-only at [`MOUNT_PATH`] in every container and init container. In-cluster clients
//! (client-go's `rest.InClusterConfig`, kube-rs' `Config::incluster`) read exactly these
//! three files. The kubelet writes them (`kubelet::volumes`).
//!
//! Limits: a ServiceAccount that does not exist yet is not an error here (the kubelet's
//! TokenRequest fails until it does); no `imagePullSecrets` merging.

use serde_json::{json, Value};

use super::error::ApiError;
use super::object::generate_name;
use super::resources::by_plural;
use super::State;

/// Where in-cluster clients look for the token, CA and namespace.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The ConfigMap the controller-manager publishes the cluster CA in, in every namespace.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// The token lifetime Kubernetes' admission asks for (an hour plus seven seconds, so
/// that a kubelet's refresh at 80 % is recognisable in audit logs).
pub const TOKEN_SECONDS: i64 = 3607;

/// Adds the token volume and mounts to a new pod (see the module docs).
pub(crate) async fn admit(st: &State, pod: &mut Value) -> Result<(), ApiError> {
    if pod.pointer("/spec/automountServiceAccountToken") == Some(&json!(false)) {
        return Ok(());
    }
    let containers = ["containers", "initContainers"];
    let mounted = containers.iter().any(|list| {
        pod["spec"][list].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["volumeMounts"].as_array().is_some_and(|ms| {
                    ms.iter()
                        .any(|m| m["mountPath"].as_str() == Some(MOUNT_PATH))
                })
            })
        })
    });
    if mounted {
        return Ok(());
    }
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let sa_name = pod
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    if pod.pointer("/spec/automountServiceAccountToken").is_none() {
        if let Some(res) = by_plural("serviceaccounts") {
            let stored = st.store.get(&res.key(Some(&ns), &sa_name)).await?;
            let sa: Option<Value> = stored.and_then(|kv| serde_json::from_slice(&kv.value).ok());
            if sa.is_some_and(|sa| sa["automountServiceAccountToken"] == json!(false)) {
                return Ok(());
            }
        }
    }
    let volume = generate_name("kube-api-access-");
    let spec = &mut pod["spec"];
    if !spec["volumes"].is_array() {
        spec["volumes"] = json!([]);
    }
    if let Some(vols) = spec["volumes"].as_array_mut() {
        vols.push(json!({
            "name": volume,
            "projected": {
                "defaultMode": 0o644,
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": TOKEN_SECONDS, "path": "token"}},
                    {"configMap": {"name": ROOT_CA_CONFIGMAP,
                                   "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace",
                        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                ],
            },
        }));
    }
    for list in containers {
        for c in spec[list].as_array_mut().into_iter().flatten() {
            if !c["volumeMounts"].is_array() {
                c["volumeMounts"] = json!([]);
            }
            if let Some(ms) = c["volumeMounts"].as_array_mut() {
                ms.push(json!({"name": volume, "readOnly": true, "mountPath": MOUNT_PATH}));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, Store};
    use std::sync::Arc;

    fn pod(extra: Value) -> Value {
        let mut p = json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"serviceAccountName": "default",
                     "containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "x",
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                     "initContainers": [{"name": "i", "image": "x"}]},
        });
        if let (Some(spec), Some(extra)) = (p["spec"].as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        p
    }

    #[tokio::test]
    async fn every_container_mounts_one_projected_token_volume() {
        let st = State::for_tests(Arc::new(MemoryStore::new()));
        let mut p = pod(json!({}));
        admit(&st, &mut p).await.expect("admit");
        let vols = p["spec"]["volumes"].as_array().expect("volumes");
        assert_eq!(vols.len(), 1);
        let name = vols[0]["name"].as_str().expect("name");
        assert!(
            name.starts_with("kube-api-access-") && name.len() == 21,
            "{name}"
        );
        let sources = vols[0]["projected"]["sources"].as_array().expect("sources");
        assert_eq!(sources[0]["serviceAccountToken"]["path"], "token");
        assert_eq!(sources[1]["configMap"]["name"], ROOT_CA_CONFIGMAP);
        assert_eq!(
            sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
            "metadata.namespace"
        );
        for (list, i) in [("containers", 0), ("containers", 1), ("initContainers", 0)] {
            let mounts = p["spec"][list][i]["volumeMounts"]
                .as_array()
                .expect("mounts");
            let m = mounts.last().expect("mount");
            assert_eq!(m["name"], name, "{list}[{i}]");
            assert_eq!(m["mountPath"], MOUNT_PATH);
            assert_eq!(m["readOnly"], true);
        }
        assert_eq!(
            p["spec"]["containers"][1]["volumeMounts"][0]["name"],
            "data"
        );
    }

    #[tokio::test]
    async fn opting_out_on_the_pod_or_the_account_or_mounting_it_yourself_adds_nothing() {
        let store = Arc::new(MemoryStore::new());
        store
            .create(
                "/registry/serviceaccounts/default/quiet",
                serde_json::to_vec(
                    &json!({"metadata": {"name": "quiet", "namespace": "default"},
                    "automountServiceAccountToken": false}),
                )
                .expect("json"),
            )
            .await
            .expect("create");
        let st = State::for_tests(store);
        let own_mount = json!({"containers": [{"name": "a", "image": "x",
            "volumeMounts": [{"name": "mine", "mountPath": MOUNT_PATH}]}]});
        for extra in [
            json!({"automountServiceAccountToken": false}),
            json!({"serviceAccountName": "quiet"}),
            own_mount,
        ] {
            let mut p = pod(extra.clone());
            admit(&st, &mut p).await.expect("admit");
            assert!(p["spec"]["volumes"].is_null(), "{extra}: {}", p["spec"]);
        }
        // The pod's own `true` wins over the account's `false`.
        let mut p =
            pod(json!({"serviceAccountName": "quiet", "automountServiceAccountToken": true}));
        admit(&st, &mut p).await.expect("admit");
        assert_eq!(p["spec"]["volumes"].as_array().map(Vec::len), Some(1));
    }
}
