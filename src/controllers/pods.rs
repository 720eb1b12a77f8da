//! Pod helpers shared by the workload controllers: state predicates, pods owned by a
//! controller, and creating a pod from a template with a controller reference.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, PostParams};
use kube::Resource;

use super::{Ctx, ReconcileError};

/// Neither finished nor being deleted.
pub fn is_active(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    p.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// Its `Ready` condition is `True`.
pub fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// The pod's phase, `Pending` when unset.
pub fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Pods in `ns` whose controller reference has `uid`.
pub fn owned_by(ctx: &Ctx, ns: &str, uid: &str) -> Vec<Arc<Pod>> {
    ctx.pods
        .state()
        .into_iter()
        .filter(|p| {
            p.metadata.namespace.as_deref() == Some(ns)
                && super::controller_of(p.as_ref()).is_some_and(|(_, _, u)| u == uid)
        })
        .collect()
}

/// A controller reference to `owner`.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A pod from `template`, named `<prefix><random>` and controlled by `owner`.
pub fn from_template(
    template: &PodTemplateSpec,
    ns: &str,
    prefix: &str,
    owner: OwnerReference,
) -> Pod {
    let tm = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("{prefix}{}", random_suffix())),
            namespace: Some(ns.into()),
            labels: tm.labels,
            annotations: tm.annotations,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Five characters from Kubernetes' name-suffix alphabet.
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random::<usize>() % ALPHABET.len()] as char)
        .collect()
}

/// Creates `pod`; returns its name.
pub async fn create(ctx: &Ctx, pod: &Pod, owner: &str) -> Result<String, ReconcileError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    api.create(&PostParams::default(), pod)
        .await
        .map(|p| p.metadata.name.unwrap_or_default())
        .map_err(|source| ReconcileError::Create {
            kind: "Pod",
            owner: owner.into(),
            source,
        })
}

/// Deletes a pod; a pod that is already gone counts as deleted.
pub async fn delete(ctx: &Ctx, ns: &str, name: &str) -> Result<(), ReconcileError> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(ReconcileError::Delete {
            kind: "Pod",
            key: format!("{ns}/{name}"),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finished_and_terminating_pods_are_not_active() {
        let p = |v| -> Pod { serde_json::from_value(v).expect("pod") };
        assert!(is_active(&p(json!({"metadata": {"name": "a"}}))));
        assert!(!is_active(&p(
            json!({"metadata": {"name": "a"}, "status": {"phase": "Succeeded"}})
        )));
        assert!(!is_active(&p(
            json!({"metadata": {"name": "a", "deletionTimestamp": "2024-01-01T00:00:00Z"}})
        )));
        assert!(is_ready(&p(json!({"metadata": {"name": "a"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}))));
    }
}
