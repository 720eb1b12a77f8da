//! Objects every cluster has, created idempotently when the apiserver starts: the
//! namespaces `default`, `kube-system`, `kube-public` and `kube-node-lease`, and the
//! `kubernetes` Service in `default` on the first address of the service CIDR. Several
//! masters may race to create them; `AlreadyExists` counts as success.
//! Also the PriorityClasses `system-node-critical` and `system-cluster-critical`, the
//! default RBAC ClusterRoles and ClusterRoleBindings ([`super::rbac_defaults`])
//! and the `bootstrap-token-<id>` Secrets of the cluster's tokens — each once per cluster
//! ([`BAKED_TOKENS`] remembers it), so a token revoked by deleting its Secret stays
//! revoked when masters restart from their immutable images. Limits: an existing
//! object is never updated (a changed default role is not reconciled); no `kubernetes`
//! Endpoints.

use serde_json::{json, Value};

use super::error::ApiError;
use super::object::{new_uid, now, to_bytes};
use super::resources::by_plural;
use super::{defaults, State};
use crate::store::StoreError;

/// The namespaces a cluster starts with.
pub const NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

async fn ensure(
    st: &State,
    plural: &str,
    namespace: Option<&str>,
    mut obj: Value,
) -> Result<(), ApiError> {
    let res = by_plural(plural).ok_or(ApiError::RouteNotFound)?;
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let key = res.key(namespace, &name);
    if st.store.get(&key).await?.is_some() {
        return Ok(());
    }
    obj["metadata"]["uid"] = json!(new_uid());
    obj["metadata"]["creationTimestamp"] = json!(now());
    defaults::on_create(st, res, &mut obj).await?;
    match st.store.create(&key, to_bytes(&obj)).await {
        Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates whatever of the bootstrap objects is missing.
pub async fn run(st: &State) -> Result<(), ApiError> {
    for ns in NAMESPACES {
        ensure(
            st,
            "namespaces",
            None,
            json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": ns}}),
        )
        .await?;
    }
    let first = st
        .service_cidr
        .hosts()
        .next()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let svc = json!({
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": first,
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]},
    });
    ensure(st, "services", Some("default"), svc).await?;
    for (name, value, description) in super::kinds::priorityclass::SYSTEM_CLASSES {
        let class = json!({
            "kind": "PriorityClass", "apiVersion": "scheduling.k8s.io/v1",
            "metadata": {"name": name}, "value": value, "description": description,
        });
        ensure(st, "priorityclasses", None, class).await?;
    }
    for role in super::rbac_defaults::cluster_roles() {
        ensure(st, "clusterroles", None, role).await?;
    }
    for binding in super::rbac_defaults::cluster_role_bindings() {
        ensure(st, "clusterrolebindings", None, binding).await?;
    }
    for (namespace, role) in super::rbac_defaults::roles() {
        ensure(st, "roles", Some(namespace), role).await?;
    }
    for t in &st.tokens {
        // A token baked into the image is installed once per cluster: once its Secret has
        // been deleted (revoked), a restarting master must not bring it back.
        let marker = format!("{BAKED_TOKENS}{}", t.id);
        if st.store.get(&marker).await?.is_some() {
            continue;
        }
        ensure(
            st,
            "secrets",
            Some("kube-system"),
            super::authn::token_secret(t),
        )
        .await?;
        match st.store.create(&marker, b"installed".to_vec()).await {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Where the apiserver records which baked bootstrap tokens it installed (by id).
pub const BAKED_TOKENS: &str = "/registry/kimg/baked-tokens/";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, Store};
    use std::sync::Arc;

    #[tokio::test]
    async fn a_deleted_baked_token_stays_deleted_across_restarts() {
        let store = Arc::new(MemoryStore::new());
        let mut st = State::for_tests(store.clone());
        st.tokens = vec![crate::pki::token::Token {
            id: "abcdef".into(),
            secret: "0123456789abcdef".into(),
            description: String::new(),
            expires: None,
            usages: vec!["authentication".into(), "signing".into()],
            groups: vec!["system:bootstrappers:kubeadm:default-node-token".into()],
        }];
        run(&st).await.expect("first start");
        let key = "/registry/secrets/kube-system/bootstrap-token-abcdef";
        let kv = store
            .get(key)
            .await
            .expect("get")
            .expect("the token's Secret");
        store
            .delete(key, Some(kv.mod_revision))
            .await
            .expect("revoke");
        run(&st).await.expect("restart");
        assert!(
            store.get(key).await.expect("get").is_none(),
            "revoked token came back"
        );
    }

    #[tokio::test]
    async fn bootstrap_is_idempotent_and_gives_kubernetes_the_first_service_ip() {
        let store = Arc::new(MemoryStore::new());
        let st = State::for_tests(store.clone());
        run(&st).await.expect("first run");
        let rev = store.current_revision().await.expect("rev");
        run(&st).await.expect("second run");
        assert_eq!(
            store.current_revision().await.expect("rev"),
            rev,
            "nothing rewritten"
        );
        let kv = store
            .get("/registry/services/default/kubernetes")
            .await
            .expect("get")
            .expect("svc");
        let svc: Value = serde_json::from_slice(&kv.value).expect("json");
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.1");
        assert!(store
            .get("/registry/namespaces/kube-node-lease")
            .await
            .expect("get")
            .is_some());
    }
}
