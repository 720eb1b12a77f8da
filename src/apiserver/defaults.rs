//! Per-kind defaulting on create and update (what Kubernetes' strategies and admission
//! plugins fill in), kept to the fields clients and our own controllers read.
//!
//! Namespace: `status.phase: Active`, `spec.finalizers: [kubernetes]`, the
//! `kubernetes.io/metadata.name` label. Pod: `status.phase: Pending`, restart/DNS policy,
//! scheduler name, service account, grace period, and the service-account token volume
//! ([`super::sa_admission`]). Deployment/ReplicaSet/StatefulSet/
//! ReplicationController: `spec.replicas: 1`; Deployment: strategy, revision history and
//! progress deadline. Secret: `type: Opaque`, `stringData` folded into `data`. Service: see
//! [`super::service`]. Kinds with a file under `kinds/` bring their own defaults (their
//! `Strategy`), applied first. Limits: no validation of required fields beyond names and
//! Services.

use base64::Engine;
use serde_json::{json, Value};

use super::error::ApiError;
use super::kinds::set_default as default;
use super::resources::Resource;
use super::{service, State};

fn fold_string_data(secret: &mut Value) {
    let Some(Value::Object(string_data)) =
        secret.as_object_mut().and_then(|m| m.remove("stringData"))
    else {
        return;
    };
    default(secret, &["data"], json!({}));
    for (k, v) in string_data {
        let text = v.as_str().unwrap_or_default();
        secret["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

/// Defaults a new object of `res` before it is stored.
pub async fn on_create(st: &State, res: &Resource, obj: &mut Value) -> Result<(), ApiError> {
    if let Some(defaults) = res.strategy.and_then(|s| s.defaults) {
        defaults(obj);
    }
    match res.kind {
        "Namespace" => {
            let name = obj.pointer("/metadata/name").cloned().unwrap_or_default();
            default(
                obj,
                &["metadata", "labels", "kubernetes.io/metadata.name"],
                name,
            );
            default(obj, &["spec", "finalizers"], json!(["kubernetes"]));
            obj["status"] = json!({"phase": "Active"});
        }
        "Pod" => {
            default(obj, &["spec", "restartPolicy"], json!("Always"));
            default(obj, &["spec", "dnsPolicy"], json!("ClusterFirst"));
            default(obj, &["spec", "schedulerName"], json!("default-scheduler"));
            default(obj, &["spec", "serviceAccountName"], json!("default"));
            default(obj, &["spec", "terminationGracePeriodSeconds"], json!(30));
            default(obj, &["status", "phase"], json!("Pending"));
            super::sa_admission::admit(st, obj).await?;
            super::priority::admit(st, obj).await?;
            super::limit_ranger::admit(st, obj).await?;
        }
        "Deployment" => {
            default(obj, &["spec", "replicas"], json!(1));
            default(obj, &["spec", "revisionHistoryLimit"], json!(10));
            default(obj, &["spec", "progressDeadlineSeconds"], json!(600));
            default(
                obj,
                &["spec", "strategy"],
                json!({"type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
            );
        }
        "ReplicaSet" | "StatefulSet" | "ReplicationController" => {
            default(obj, &["spec", "replicas"], json!(1));
        }
        "Secret" => {
            default(obj, &["type"], json!("Opaque"));
            fold_string_data(obj);
        }
        "Service" => service::allocate(st, obj, None).await?,
        _ => {}
    }
    Ok(())
}

/// Defaults an updated object of `res`, given the stored one.
pub async fn on_update(
    st: &State,
    res: &Resource,
    old: &Value,
    new: &mut Value,
) -> Result<(), ApiError> {
    if let Some(defaults) = res.strategy.and_then(|s| s.defaults) {
        defaults(new);
    }
    match res.kind {
        "Secret" => fold_string_data(new),
        "Service" => service::allocate(st, new, Some(old)).await?,
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::by_plural;
    use crate::store::MemoryStore;
    use std::sync::Arc;

    #[tokio::test]
    async fn secrets_fold_string_data_into_base64_data() {
        let st = State::for_tests(Arc::new(MemoryStore::new()));
        let mut s = json!({"metadata": {"name": "s"}, "stringData": {"password": "hunter2"}});
        on_create(&st, by_plural("secrets").expect("secrets"), &mut s)
            .await
            .expect("defaults");
        assert_eq!(s["data"]["password"], "aHVudGVyMg==");
        assert_eq!(s["type"], "Opaque");
        assert!(s.get("stringData").is_none());
    }

    #[tokio::test]
    async fn deployments_get_one_replica_but_keep_an_explicit_count() {
        let st = State::for_tests(Arc::new(MemoryStore::new()));
        let deploy = by_plural("deployments").expect("deployments");
        let mut d = json!({"metadata": {"name": "d"}, "spec": {}});
        on_create(&st, deploy, &mut d).await.expect("defaults");
        assert_eq!(d["spec"]["replicas"], 1);
        let mut d = json!({"metadata": {"name": "d"}, "spec": {"replicas": 0}});
        on_create(&st, deploy, &mut d).await.expect("defaults");
        assert_eq!(d["spec"]["replicas"], 0);
    }
}
