//! The ServiceAccount controller: every active namespace has a `default` ServiceAccount.
//!
//! How: keyed by namespace (namespace and ServiceAccount changes queue it); creates the
//! account when the cache lacks it (409 counts as done). Limits: no token Secrets (Kubernetes
//! ≥ 1.24 issues bound tokens through TokenRequest instead, which needs the apiserver's
//! service-account token signer).

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};

use super::runtime::{get, Requeue};
use super::{Ctx, ReconcileError};

/// Ensures `default` exists in namespace `ns`.
#[tracing::instrument(skip(ctx))]
pub async fn reconcile(ctx: &Ctx, ns: &str) -> Result<Requeue, ReconcileError> {
    let Some(namespace) = get(&ctx.namespaces, ns) else {
        return Ok(None);
    };
    if namespace.metadata.deletion_timestamp.is_some()
        || get(&ctx.serviceaccounts, &format!("{ns}/default")).is_some()
    {
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
