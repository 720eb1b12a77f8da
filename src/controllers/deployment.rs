//! The Deployment controller: one ReplicaSet per pod template, rolled out with
//! `RollingUpdate` (maxSurge / maxUnavailable) or `Recreate`, with revision history that
//! `kubectl rollout status|history|undo` and `kubectl scale` rely on.
//!
//! How: the template's hash (`pod-template-hash`, also the ReplicaSet's name suffix)
//! identifies the new ReplicaSet; `rollout undo` copies an old template back, whose hash
//! then matches the old ReplicaSet again, which becomes new with the next revision
//! (`deployment.kubernetes.io/revision`). Each reconcile takes one step: scale the new
//! ReplicaSet up within `replicas + maxSurge`, and old ones down while at least
//! `replicas − maxUnavailable` pods stay available. Availability is counted from the pod
//! cache and capped by each ReplicaSet's `spec.replicas`, so a scale-down the ReplicaSet
//! controller has not carried out yet is not counted as available.
//!
//! Limits: no proportional scaling of several old ReplicaSets during a rollout, no
//! `progressDeadlineSeconds` (Progressing never turns False), no pause.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::pods::{self, is_active, is_ready};
use super::runtime::{get, Requeue};
use super::status;
use super::{controller_of, Controller, Ctx, ReconcileError};

/// The controller-manager's row: what wakes it — a Deployment, or a ReplicaSet it controls.
pub const CONTROLLER: Controller = Controller {
    name: "deployment",
    triggers: |t, q| {
        t.own::<Deployment>(q);
        t.owner::<ReplicaSet>("Deployment", q);
    },
    synced: Ctx::synced,
    reconcile: |ctx, _, key| Box::pin(async move { reconcile(&ctx, &key).await }),
};

const REVISION: &str = "deployment.kubernetes.io/revision";
const HASH: &str = "pod-template-hash";

/// Drops nulls, empty objects and empty arrays, so that `resources: {}` written by one
/// client and left out by another hash alike.
fn prune(v: &mut serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => false,
        serde_json::Value::Object(m) => {
            m.retain(|_, x| prune(x));
            !m.is_empty()
        }
        serde_json::Value::Array(a) => {
            a.retain_mut(prune);
            !a.is_empty()
        }
        _ => true,
    }
}

/// JSON with sorted keys, whatever the map implementation.
fn canonical(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for k in keys {
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], out);
                out.push(',');
            }
            out.push('}');
        }
        serde_json::Value::Array(a) => {
            out.push('[');
            for x in a {
                canonical(x, out);
                out.push(',');
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The template hash: Kubernetes' safe alphabet over a SHA-256 of the template's canonical
/// JSON (without the hash label and empty fields).
pub fn template_hash(t: &PodTemplateSpec) -> String {
    let mut t = t.clone();
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove(HASH);
    }
    let mut v = serde_json::to_value(&t).unwrap_or_default();
    prune(&mut v);
    let mut text = String::new();
    canonical(&v, &mut text);
    let digest = Sha256::digest(text.as_bytes());
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    digest[..10]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// Resolves an int-or-percent against `total`, rounding up or down.
pub fn resolve(v: Option<&IntOrString>, total: i32, default: &str, round_up: bool) -> i32 {
    let v = v.cloned().unwrap_or(IntOrString::String(default.into()));
    match v {
        IntOrString::Int(i) => i.max(0),
        IntOrString::String(s) => {
            let pct: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
            let x = pct * f64::from(total) / 100.0;
            (if round_up { x.ceil() } else { x.floor() }) as i32
        }
    }
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(0)
}

/// Ready pods of `rs`, at most its `spec.replicas`.
fn available(ctx: &Ctx, rs: &ReplicaSet) -> i32 {
    let ns = rs.metadata.namespace.as_deref().unwrap_or("default");
    let uid = rs.metadata.uid.as_deref().unwrap_or_default();
    let ready = pods::owned_by(ctx, ns, uid)
        .iter()
        .filter(|p| is_active(p) && is_ready(p))
        .count() as i32;
    ready.min(spec_replicas(rs))
}

/// Active pods of `rs` (terminating ones excluded).
fn existing(ctx: &Ctx, rs: &ReplicaSet) -> i32 {
    let ns = rs.metadata.namespace.as_deref().unwrap_or("default");
    let uid = rs.metadata.uid.as_deref().unwrap_or_default();
    pods::owned_by(ctx, ns, uid)
        .iter()
        .filter(|p| is_active(p))
        .count() as i32
}

async fn scale(
    ctx: &Ctx,
    rs: &ReplicaSet,
    replicas: i32,
    extra: Option<(&str, String)>,
) -> Result<(), ReconcileError> {
    let ns = rs.metadata.namespace.as_deref().unwrap_or("default");
    let name = rs.metadata.name.as_deref().unwrap_or_default();
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), ns);
    let mut patch = json!({"spec": {"replicas": replicas}});
    if let Some((k, v)) = extra {
        patch["metadata"] = json!({"annotations": {k: v}});
    }
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
        .map_err(|source| ReconcileError::Update {
            kind: "ReplicaSet",
            key: format!("{ns}/{name}"),
            source,
        })
}

/// Reconciles one Deployment (`namespace/name`).
#[tracing::instrument(skip(ctx))]
pub async fn reconcile(ctx: &Ctx, key: &str) -> Result<Requeue, ReconcileError> {
    let Some(d) = get(&ctx.deployments, key) else {
        return Ok(None);
    };
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let ns = d
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let spec = &d.spec;
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let mut all: Vec<Arc<ReplicaSet>> = ctx
        .replicasets
        .state()
        .into_iter()
        .filter(|rs| {
            rs.metadata.namespace.as_deref() == Some(ns.as_str())
                && controller_of(rs.as_ref()).is_some_and(|(_, _, u)| u == uid)
        })
        .collect();
    all.sort_by_key(|rs| revision(rs));
    let hash = template_hash(&spec.template);
    let max_rev = all.iter().map(|rs| revision(rs)).max().unwrap_or(0);
    let new = all
        .iter()
        .find(|rs| rs.metadata.labels.as_ref().and_then(|l| l.get(HASH)) == Some(&hash))
        .cloned();
    let new = match new {
        Some(rs) => {
            if revision(&rs) < max_rev {
                // An old template came back (rollout undo): it becomes the newest revision.
                let rev = (max_rev + 1).to_string();
                scale(ctx, &rs, spec_replicas(&rs), Some((REVISION, rev.clone()))).await?;
                annotate_revision(ctx, &d, &rev).await?;
                return Ok(None);
            }
            rs
        }
        None => {
            let rev = (max_rev + 1).to_string();
            let created =
                create_new(ctx, &d, &hash, &rev, all.is_empty().then_some(replicas)).await?;
            annotate_revision(ctx, &d, &rev).await?;
            Arc::new(created)
        }
    };
    if d.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        != Some(&revision(&new).to_string())
    {
        annotate_revision(ctx, &d, &revision(&new).to_string()).await?;
    }
    let old: Vec<&Arc<ReplicaSet>> = all
        .iter()
        .filter(|rs| rs.metadata.uid != new.metadata.uid)
        .collect();
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let new_spec = spec_replicas(&new);
    let old_spec: i32 = old.iter().map(|rs| spec_replicas(rs)).sum();
    if recreate {
        if old_spec > 0 {
            for rs in old.iter().filter(|rs| spec_replicas(rs) > 0) {
                scale(ctx, rs, 0, None).await?;
            }
        } else if old.iter().all(|rs| existing(ctx, rs) == 0) && new_spec != replicas {
            scale(ctx, &new, replicas, None).await?;
        }
    } else if old_spec == 0 {
        if new_spec != replicas {
            scale(ctx, &new, replicas, None).await?;
        }
    } else {
        let ru = spec
            .strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref());
        let surge = resolve(ru.and_then(|r| r.max_surge.as_ref()), replicas, "25%", true);
        let mut unavailable = resolve(
            ru.and_then(|r| r.max_unavailable.as_ref()),
            replicas,
            "25%",
            false,
        );
        if surge == 0 && unavailable == 0 {
            unavailable = 1;
        }
        // Scale up the new ReplicaSet within the surge budget.
        let total = new_spec + old_spec;
        let room = replicas + surge - total;
        if room > 0 && new_spec < replicas {
            scale(ctx, &new, (new_spec + room).min(replicas), None).await?;
            return Ok(None);
        }
        // Scale old ReplicaSets down while enough pods stay available.
        let min_available = replicas - unavailable;
        let avail: i32 = all.iter().map(|rs| available(ctx, rs)).sum();
        let new_unavailable = (new_spec - available(ctx, &new)).max(0);
        let mut budget = avail - min_available - new_unavailable;
        // Old pods that are not available anyway may go without touching the budget.
        for rs in &old {
            let spec_n = spec_replicas(rs);
            if spec_n == 0 {
                continue;
            }
            let unhealthy = spec_n - available(ctx, rs);
            let down = (unhealthy.max(0) + budget.max(0)).min(spec_n);
            if down > 0 {
                budget -= (down - unhealthy.max(0)).max(0);
                scale(ctx, rs, spec_n - down, None).await?;
            }
        }
    }
    cleanup_history(ctx, &d, &old).await?;
    update_status(ctx, &d, &new, &all, replicas).await?;
    Ok(None)
}

async fn create_new(
    ctx: &Ctx,
    d: &Deployment,
    hash: &str,
    rev: &str,
    replicas: Option<i32>,
) -> Result<ReplicaSet, ReconcileError> {
    let ns = d.metadata.namespace.as_deref().unwrap_or("default");
    let name = d.metadata.name.as_deref().unwrap_or_default();
    let spec = &d.spec;
    let mut template = spec.template.clone();
    let tm = template.metadata.get_or_insert_with(Default::default);
    tm.labels
        .get_or_insert_with(Default::default)
        .insert(HASH.into(), hash.into());
    let mut selector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(Default::default)
        .insert(HASH.into(), hash.into());
    let mut annotations = d.metadata.annotations.clone().unwrap_or_default();
    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    annotations.insert(REVISION.into(), rev.into());
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{hash}")),
            namespace: Some(ns.into()),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            annotations: Some(annotations),
            owner_references: Some(vec![pods::controller_ref(d)]),
            ..Default::default()
        },
        spec: ReplicaSetSpec {
            replicas: Some(replicas.unwrap_or(0)),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        },
        status: None,
    };
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), ns);
    match api.create(&PostParams::default(), &rs).await {
        Ok(rs) => Ok(rs),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let rsname = rs.metadata.name.clone().unwrap_or_default();
            api.get(&rsname)
                .await
                .map_err(|source| ReconcileError::Read {
                    kind: "ReplicaSet",
                    key: format!("{ns}/{rsname}"),
                    source,
                })
        }
        Err(source) => Err(ReconcileError::Create {
            kind: "ReplicaSet",
            owner: format!("{ns}/{name}"),
            source,
        }),
    }
}

async fn annotate_revision(ctx: &Ctx, d: &Deployment, rev: &str) -> Result<(), ReconcileError> {
    let ns = d.metadata.namespace.as_deref().unwrap_or("default");
    let name = d.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
        .map_err(|source| ReconcileError::Update {
            kind: "Deployment",
            key: format!("{ns}/{name}"),
            source,
        })
}

async fn cleanup_history(
    ctx: &Ctx,
    d: &Deployment,
    old: &[&Arc<ReplicaSet>],
) -> Result<(), ReconcileError> {
    let limit = d.spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let idle: Vec<_> = old
        .iter()
        .filter(|rs| spec_replicas(rs) == 0 && rs.status.as_ref().is_none_or(|s| s.replicas == 0))
        .collect();
    if idle.len() <= limit {
        return Ok(());
    }
    for rs in &idle[..idle.len() - limit] {
        let ns = rs.metadata.namespace.as_deref().unwrap_or("default");
        let name = rs.metadata.name.as_deref().unwrap_or_default();
        let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), ns);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(ReconcileError::Delete {
                    kind: "ReplicaSet",
                    key: format!("{ns}/{name}"),
                    source,
                })
            }
        }
    }
    Ok(())
}

async fn update_status(
    ctx: &Ctx,
    d: &Deployment,
    new: &ReplicaSet,
    all: &[Arc<ReplicaSet>],
    replicas: i32,
) -> Result<(), ReconcileError> {
    let count = |f: &dyn Fn(&ReplicaSet) -> i32| all.iter().map(|rs| f(rs)).sum::<i32>();
    let total = count(&|rs| existing(ctx, rs));
    let ready: i32 = count(&|rs| {
        let ns = rs.metadata.namespace.as_deref().unwrap_or("default");
        let uid = rs.metadata.uid.as_deref().unwrap_or_default();
        pods::owned_by(ctx, ns, uid)
            .iter()
            .filter(|p| is_active(p) && is_ready(p))
            .count() as i32
    });
    let avail = count(&|rs| available(ctx, rs));
    let updated = existing(ctx, new);
    let spec = &d.spec;
    let ru = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let unavailable = resolve(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        replicas,
        "25%",
        false,
    );
    let is_available = avail >= replicas - unavailable;
    let complete = updated == replicas && total == replicas && avail == replicas;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let new_name = new.metadata.name.clone().unwrap_or_default();
    let (preason, pmsg) = if complete {
        (
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
        )
    } else {
        (
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{new_name}\" is progressing."),
        )
    };
    let old_conds = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let cond = |t: &str, status: bool, reason: &str, msg: &str| {
        let prev = old_conds.iter().find(|c| c.type_.as_deref() == Some(t));
        let st = if status { "True" } else { "False" };
        let same = prev.is_some_and(|c| {
            c.status.as_deref() == Some(st) && c.reason.as_deref() == Some(reason)
        });
        let transition = prev
            .filter(|c| c.status.as_deref() == Some(st))
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| format!("{:.0}", t.0))
            .unwrap_or_else(|| now.clone());
        let update = if same {
            prev.and_then(|c| c.last_update_time.as_ref())
                .map(|t| format!("{:.0}", t.0))
                .unwrap_or_else(|| now.clone())
        } else {
            now.clone()
        };
        json!({"type": t, "status": st, "reason": reason, "message": msg,
               "lastUpdateTime": update, "lastTransitionTime": transition})
    };
    let status = json!({
        "observedGeneration": d.metadata.generation.unwrap_or(0),
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": avail,
        "unavailableReplicas": (replicas - avail).max(0),
        "conditions": [
            cond("Available", is_available,
                 if is_available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                 if is_available { "Deployment has minimum availability." } else { "Deployment does not have minimum availability." }),
            cond("Progressing", true, preason, &pmsg),
        ],
    });
    status::patch_status_if_changed(&ctx.client, d, d.status.as_ref(), status)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_surge_up_and_unavailable_down() {
        let pct = IntOrString::String("25%".into());
        assert_eq!(resolve(Some(&pct), 3, "25%", true), 1);
        assert_eq!(resolve(Some(&pct), 3, "25%", false), 0);
        assert_eq!(resolve(Some(&IntOrString::Int(2)), 3, "25%", false), 2);
        assert_eq!(resolve(None, 10, "25%", true), 3);
    }

    #[test]
    fn the_template_hash_ignores_its_own_label() {
        let mut t: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}))
        .expect("template");
        let h = template_hash(&t);
        t.metadata
            .as_mut()
            .and_then(|m| m.labels.as_mut())
            .map(|l| l.insert(HASH.into(), h.clone()));
        assert_eq!(template_hash(&t), h);
        if let Some(s) = t.spec.as_mut() {
            s.containers[0].image = Some("nginx:2".into());
        }
        assert_ne!(template_hash(&t), h);
        let mut with_empty = t.clone();
        if let Some(s) = with_empty.spec.as_mut() {
            s.containers[0].resources = Some(Default::default());
        }
        assert_eq!(template_hash(&with_empty), template_hash(&t));
    }
}
