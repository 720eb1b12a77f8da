//! The garbage collector: deletes objects whose owners are gone, and carries out
//! foreground and orphan deletion of owners.
//!
//! How: dependents (Pods, ReplicaSets, Jobs) are queued as `dep/<Kind>/<key>` whenever they
//! change or one of their owners is deleted. A dependent whose every owner is missing —
//! missing from the cache *and* confirmed by a live GET, or present with another uid — is
//! deleted in the background; owners that are gone are dropped from a dependent that still
//! has others. Owners being deleted with the `foregroundDeletion` finalizer are queued as
//! `own/<Kind>/<key>`: their dependents are deleted, and the finalizer is removed once none
//! is left; with the `orphan` finalizer the owner references are removed from the
//! dependents first.
//!
//! Limits: only the kinds the controller-manager caches are tracked as owners (Deployment,
//! ReplicaSet, DaemonSet, Job, CronJob) and dependents (Pod, ReplicaSet, Job); other kinds
//! (for example EndpointSlices of Services) are left alone.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PropagationPolicy};
use kube::Resource;
use serde_json::json;

use super::runtime::{get, key_of, Queue, Requeue, Triggers};
use super::{Controller, Ctx, ReconcileError};

/// The controller-manager's row: what wakes it — a dependent with owner references (is its owner still there?) and an owner deleted or being deleted with finalizers.
pub const CONTROLLER: Controller = Controller {
    name: "garbage-collector",
    triggers: |t, q| {
        dependents::<Pod>(t, q);
        dependents::<ReplicaSet>(t, q);
        dependents::<Job>(t, q);
        owners::<ReplicaSet>(t, q);
        owners::<Deployment>(t, q);
        owners::<DaemonSet>(t, q);
        owners::<Job>(t, q);
        owners::<CronJob>(t, q);
    },
    synced: Ctx::synced,
    reconcile: |ctx, queue, key| Box::pin(async move { reconcile(&ctx, &queue, &key).await }),
};

/// A `K` with owner references queues itself as a dependent (is its owner still there?).
fn dependents<K: Resource<DynamicType = ()> + 'static>(t: &mut Triggers, q: &Queue) {
    let q = q.clone();
    t.on::<K>(move |o, _| {
        if o.meta().owner_references.is_some() {
            q.add(&dependent_key(&K::kind(&()), &key_of(o)));
        }
    });
}

/// A `K` deleted, or being deleted with finalizers, queues its dependents ([`owner_changed`]).
fn owners<K: Resource<DynamicType = ()> + 'static>(t: &mut Triggers, q: &Queue) {
    let q = q.clone();
    t.on::<K>(move |o, deleted| owner_changed(&q, &K::kind(&()), o.meta(), deleted));
}

/// Queue key of a dependent.
pub fn dependent_key(kind: &str, key: &str) -> String {
    format!("dep/{kind}/{key}")
}

/// An owner changed: when deleted, requeue its dependents (found by the reconcile); when
/// being deleted with a finalizer, queue the owner itself.
pub fn owner_changed(q: &Queue, kind: &str, meta: &ObjectMeta, deleted: bool) {
    let key = match &meta.namespace {
        Some(ns) => format!("{ns}/{}", meta.name.as_deref().unwrap_or_default()),
        None => meta.name.clone().unwrap_or_default(),
    };
    if deleted {
        q.add(&format!(
            "gone/{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.uid.as_deref().unwrap_or_default()
        ));
    } else if meta.deletion_timestamp.is_some()
        && meta.finalizers.as_ref().is_some_and(|f| !f.is_empty())
    {
        q.add(&format!("own/{kind}/{key}"));
    }
}

/// Whether the owner named by `r` (in `ns`) exists with the same uid, from the cache.
fn owner_cached(ctx: &Ctx, ns: &str, r: &OwnerReference) -> Option<bool> {
    let key = format!("{ns}/{}", r.name);
    let uid = |m: &ObjectMeta| m.uid.as_deref() == Some(r.uid.as_str());
    Some(match r.kind.as_str() {
        "Deployment" => get(&ctx.deployments, &key).is_some_and(|o| uid(o.meta())),
        "ReplicaSet" => get(&ctx.replicasets, &key).is_some_and(|o| uid(o.meta())),
        "DaemonSet" => get(&ctx.daemonsets, &key).is_some_and(|o| uid(o.meta())),
        "Job" => get(&ctx.jobs, &key).is_some_and(|o| uid(o.meta())),
        "CronJob" => get(&ctx.cronjobs, &key).is_some_and(|o| uid(o.meta())),
        _ => return None,
    })
}

async fn owner_live(ctx: &Ctx, ns: &str, r: &OwnerReference) -> Result<bool, ReconcileError> {
    async fn fetch<K>(ctx: &Ctx, ns: &str, r: &OwnerReference) -> Result<bool, ReconcileError>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
        api.get_opt(&r.name)
            .await
            .map(|o| o.is_some_and(|o| o.meta().uid.as_deref() == Some(r.uid.as_str())))
            .map_err(|source| ReconcileError::Read {
                kind: "owner",
                key: format!("{ns}/{}", r.name),
                source,
            })
    }
    match r.kind.as_str() {
        "Deployment" => fetch::<Deployment>(ctx, ns, r).await,
        "ReplicaSet" => fetch::<ReplicaSet>(ctx, ns, r).await,
        "DaemonSet" => fetch::<DaemonSet>(ctx, ns, r).await,
        "Job" => fetch::<Job>(ctx, ns, r).await,
        "CronJob" => fetch::<CronJob>(ctx, ns, r).await,
        _ => Ok(true),
    }
}

/// All cached dependents with an owner reference to `uid` in `ns`: (kind, key, refs).
fn dependents_of(
    ctx: &Ctx,
    ns: &str,
    uid: &str,
) -> Vec<(&'static str, String, Vec<OwnerReference>)> {
    fn scan<K: Resource>(
        out: &mut Vec<(&'static str, String, Vec<OwnerReference>)>,
        kind: &'static str,
        items: Vec<Arc<K>>,
        ns: &str,
        uid: &str,
    ) {
        for o in items {
            let m = o.meta();
            if m.namespace.as_deref() != Some(ns) {
                continue;
            }
            if let Some(refs) = &m.owner_references {
                if refs.iter().any(|r| r.uid == uid) {
                    out.push((kind, key_of(o.as_ref()), refs.clone()));
                }
            }
        }
    }
    let mut out = Vec::new();
    scan(&mut out, "Pod", ctx.pods.state(), ns, uid);
    scan(&mut out, "ReplicaSet", ctx.replicasets.state(), ns, uid);
    scan(&mut out, "Job", ctx.jobs.state(), ns, uid);
    out
}

async fn delete_dependent(
    ctx: &Ctx,
    kind: &str,
    key: &str,
    policy: PropagationPolicy,
) -> Result<(), ReconcileError> {
    let Some((ns, name)) = key.split_once('/') else {
        return Ok(());
    };
    let dp = DeleteParams {
        propagation_policy: Some(policy),
        ..Default::default()
    };
    let c = ctx.client.clone();
    let res = match kind {
        "Pod" => Api::<Pod>::namespaced(c, ns)
            .delete(name, &dp)
            .await
            .map(|_| ()),
        "ReplicaSet" => Api::<ReplicaSet>::namespaced(c, ns)
            .delete(name, &dp)
            .await
            .map(|_| ()),
        "Job" => Api::<Job>::namespaced(c, ns)
            .delete(name, &dp)
            .await
            .map(|_| ()),
        _ => Ok(()),
    };
    match res {
        Ok(()) => {
            tracing::info!(kind, key, "garbage-collected");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(ReconcileError::Delete {
            kind: "dependent",
            key: key.into(),
            source,
        }),
    }
}

async fn patch_refs(
    ctx: &Ctx,
    kind: &str,
    key: &str,
    refs: Vec<OwnerReference>,
) -> Result<(), ReconcileError> {
    let Some((ns, name)) = key.split_once('/') else {
        return Ok(());
    };
    let patch = json!({"metadata": {"ownerReferences": refs}});
    let (pp, c) = (PatchParams::default(), ctx.client.clone());
    let res = match kind {
        "Pod" => Api::<Pod>::namespaced(c, ns)
            .patch(name, &pp, &Patch::Merge(&patch))
            .await
            .map(|_| ()),
        "ReplicaSet" => Api::<ReplicaSet>::namespaced(c, ns)
            .patch(name, &pp, &Patch::Merge(&patch))
            .await
            .map(|_| ()),
        "Job" => Api::<Job>::namespaced(c, ns)
            .patch(name, &pp, &Patch::Merge(&patch))
            .await
            .map(|_| ()),
        _ => Ok(()),
    };
    match res {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(ReconcileError::Update {
            kind: "dependent",
            key: key.into(),
            source,
        }),
    }
}

fn dependent_refs(ctx: &Ctx, kind: &str, key: &str) -> Option<Vec<OwnerReference>> {
    match kind {
        "Pod" => get(&ctx.pods, key)?.metadata.owner_references.clone(),
        "ReplicaSet" => get(&ctx.replicasets, key)?
            .metadata
            .owner_references
            .clone(),
        "Job" => get(&ctx.jobs, key)?.metadata.owner_references.clone(),
        _ => None,
    }
}

/// Reconciles one queue key (`dep/…`, `gone/<ns>/<uid>` or `own/…`).
#[tracing::instrument(skip(ctx, queue))]
pub async fn reconcile(ctx: &Ctx, queue: &Queue, key: &str) -> Result<Requeue, ReconcileError> {
    let mut parts = key.splitn(3, '/');
    let (Some(what), Some(a), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return Ok(None);
    };
    match what {
        "gone" => {
            for (kind, k, _) in dependents_of(ctx, a, rest) {
                queue.add(&dependent_key(kind, &k));
            }
            Ok(None)
        }
        "dep" => {
            let (kind, dkey) = (a, rest);
            let Some(refs) = dependent_refs(ctx, kind, dkey) else {
                return Ok(None);
            };
            let ns = dkey.split_once('/').map_or("default", |x| x.0);
            let mut alive = Vec::new();
            let mut dead = 0;
            for r in &refs {
                match owner_cached(ctx, ns, r) {
                    Some(true) | None => alive.push(r.clone()),
                    Some(false) => {
                        if owner_live(ctx, ns, r).await? {
                            alive.push(r.clone());
                        } else {
                            dead += 1;
                        }
                    }
                }
            }
            if dead == 0 {
                return Ok(None);
            }
            if alive.is_empty() {
                delete_dependent(ctx, kind, dkey, PropagationPolicy::Background).await?;
            } else {
                patch_refs(ctx, kind, dkey, alive).await?;
            }
            Ok(None)
        }
        "own" => {
            let (kind, okey) = (a, rest);
            let meta = match kind {
                "Deployment" => get(&ctx.deployments, okey).map(|o| o.metadata.clone()),
                "ReplicaSet" => get(&ctx.replicasets, okey).map(|o| o.metadata.clone()),
                "DaemonSet" => get(&ctx.daemonsets, okey).map(|o| o.metadata.clone()),
                "Job" => get(&ctx.jobs, okey).map(|o| o.metadata.clone()),
                "CronJob" => get(&ctx.cronjobs, okey).map(|o| o.metadata.clone()),
                _ => None,
            };
            let Some(meta) = meta else { return Ok(None) };
            let finalizers = meta.finalizers.clone().unwrap_or_default();
            let ns = meta.namespace.clone().unwrap_or_default();
            let uid = meta.uid.clone().unwrap_or_default();
            let deps = dependents_of(ctx, &ns, &uid);
            let finalizer = if finalizers.iter().any(|f| f == "orphan") {
                for (dkind, dkey, refs) in &deps {
                    let rest: Vec<_> = refs.iter().filter(|r| r.uid != uid).cloned().collect();
                    patch_refs(ctx, dkind, dkey, rest).await?;
                }
                "orphan"
            } else if finalizers.iter().any(|f| f == "foregroundDeletion") {
                if !deps.is_empty() {
                    for (dkind, dkey, _) in &deps {
                        delete_dependent(ctx, dkind, dkey, PropagationPolicy::Foreground).await?;
                    }
                    // Look again once the dependents are gone.
                    return Ok(Some(std::time::Duration::from_secs(1)));
                }
                "foregroundDeletion"
            } else {
                return Ok(None);
            };
            let rest: Vec<&String> = finalizers.iter().filter(|f| *f != finalizer).collect();
            let patch = json!({"metadata": {"finalizers": rest}});
            let Some((ns, name)) = okey.split_once('/') else {
                return Ok(None);
            };
            let (pp, c) = (PatchParams::default(), ctx.client.clone());
            let res = match kind {
                "Deployment" => Api::<Deployment>::namespaced(c, ns)
                    .patch(name, &pp, &Patch::Merge(&patch))
                    .await
                    .map(|_| ()),
                "ReplicaSet" => Api::<ReplicaSet>::namespaced(c, ns)
                    .patch(name, &pp, &Patch::Merge(&patch))
                    .await
                    .map(|_| ()),
                "DaemonSet" => Api::<DaemonSet>::namespaced(c, ns)
                    .patch(name, &pp, &Patch::Merge(&patch))
                    .await
                    .map(|_| ()),
                "Job" => Api::<Job>::namespaced(c, ns)
                    .patch(name, &pp, &Patch::Merge(&patch))
                    .await
                    .map(|_| ()),
                "CronJob" => Api::<CronJob>::namespaced(c, ns)
                    .patch(name, &pp, &Patch::Merge(&patch))
                    .await
                    .map(|_| ()),
                _ => Ok(()),
            };
            match res {
                Ok(()) => Ok(None),
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
                Err(source) => Err(ReconcileError::Update {
                    kind: "owner",
                    key: okey.into(),
                    source,
                }),
            }
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleted_owners_and_finalizing_owners_get_distinct_keys() {
        let (q, mut rx) = super::super::runtime::queue();
        let meta = ObjectMeta {
            name: Some("web".into()),
            namespace: Some("default".into()),
            uid: Some("u1".into()),
            ..Default::default()
        };
        owner_changed(&q, "Deployment", &meta, true);
        let mut finalizing = meta.clone();
        finalizing.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        ));
        finalizing.finalizers = Some(vec!["foregroundDeletion".into()]);
        owner_changed(&q, "Deployment", &finalizing, false);
        owner_changed(&q, "Deployment", &meta, false);
        let got = futures::executor::block_on(async { vec![rx.next().await, rx.next().await] });
        assert_eq!(
            got,
            [
                Some("gone/default/u1".to_string()),
                Some("own/Deployment/default/web".to_string())
            ]
        );
        assert!(rx.try_next().is_none());
    }
}
