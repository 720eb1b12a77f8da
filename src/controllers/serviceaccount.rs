//! The ServiceAccount controller and the root-CA publisher: every active namespace has a
//! `default` ServiceAccount and the ConfigMap `kube-root-ca.crt` holding the cluster CA
//! (`ca.crt`), which every pod's service-account volume carries
//! (`apiserver::sa_admission`).
//!
//! How: keyed by namespace (namespace and ServiceAccount changes queue it); creates the
//! account when the cache lacks it (409 counts as done), then reads the ConfigMap and
//! creates it, or rewrites it when its `ca.crt` differs. Limits: no token Secrets
//! (Kubernetes ≥ 1.24 issues bound tokens through TokenRequest instead); a deleted
//! `kube-root-ca.crt` comes back at the namespace's next reconcile, not at once (the
//! controller keeps no ConfigMap cache).

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};

use super::runtime::{get, Requeue};
use super::{Controller, Ctx, ReconcileError};

/// The controller-manager's row: what wakes it — a namespace, or a ServiceAccount in it (keys are namespaces).
pub const CONTROLLER: Controller = Controller {
    name: "namespace",
    triggers: |t, q| {
        t.own::<Namespace>(q);
        t.namespace::<ServiceAccount>(q);
    },
    synced: Ctx::synced,
    reconcile: |ctx, _, key| Box::pin(async move { reconcile(&ctx, &key).await }),
};

/// The ConfigMap with the cluster CA in every namespace.
pub const ROOT_CA_CONFIGMAP: &str = crate::apiserver::sa_admission::ROOT_CA_CONFIGMAP;

/// Ensures `default` and `kube-root-ca.crt` exist in namespace `ns`.
#[tracing::instrument(skip(ctx))]
pub async fn reconcile(ctx: &Ctx, ns: &str) -> Result<Requeue, ReconcileError> {
    let Some(namespace) = get(&ctx.namespaces, ns) else {
        return Ok(None);
    };
    if namespace.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    publish_root_ca(ctx, ns).await?;
    if get(&ctx.serviceaccounts, &format!("{ns}/default")).is_some() {
        return Ok(None);
    }
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("default".into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &sa).await {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        Err(source) => Err(ReconcileError::Create {
            kind: "ServiceAccount",
            owner: ns.into(),
            source,
        }),
    }
}

/// Creates or refreshes `kube-root-ca.crt` in `ns` (nothing when no CA is configured).
async fn publish_root_ca(ctx: &Ctx, ns: &str) -> Result<(), ReconcileError> {
    let path = ctx
        .opts
        .root_ca
        .clone()
        .or_else(|| ctx.opts.signing.as_ref().map(|s| s.cert.clone()));
    let Some(path) = path else { return Ok(()) };
    let pem = match std::fs::read_to_string(&path) {
        Ok(pem) => pem,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the root CA");
            return Ok(());
        }
    };
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let fail = |source| ReconcileError::Create {
        kind: "ConfigMap",
        owner: ns.into(),
        source,
    };
    let current = api.get_opt(ROOT_CA_CONFIGMAP).await.map_err(fail)?;
    let data = std::collections::BTreeMap::from([("ca.crt".to_string(), pem)]);
    let result = match current {
        Some(cm) if cm.data.as_ref() == Some(&data) => return Ok(()),
        Some(mut cm) => {
            cm.data = Some(data);
            api.replace(ROOT_CA_CONFIGMAP, &PostParams::default(), &cm)
                .await
        }
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(ROOT_CA_CONFIGMAP.into()),
                    namespace: Some(ns.into()),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            };
            api.create(&PostParams::default(), &cm).await
        }
    };
    match result {
        Ok(_) => Ok(()),
        // Someone else wrote it meanwhile: the next reconcile compares again.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(source) => Err(fail(source)),
    }
}
