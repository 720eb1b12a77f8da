//! The ReplicaSet controller: keeps `spec.replicas` active pods matching the template.
//!
//! How: pods are found in the pod cache by controller reference. Because the cache lags
//! behind our own writes, creations and deletions are remembered as *expectations*
//! ([`Expectations`]) until the cache shows them (or 30 s pass), so a quick second
//! reconcile neither doubles nor over-deletes. Surplus pods go in Kubernetes' order:
//! unscheduled before scheduled, pending before running, not ready before ready. Status
//! counts replicas, ready and available pods.
//!
//! Limits: orphaned pods matching the selector are not adopted; `minReadySeconds` is
//! ignored (ready means available).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::pods::{self, is_active, is_ready};
use super::runtime::{get, Requeue};
use super::status;
use super::{Controller, Ctx, ReconcileError};

/// The controller-manager's row: what wakes it — a ReplicaSet, or a pod it controls.
pub const CONTROLLER: Controller = Controller {
    name: "replicaset",
    triggers: |t, q| {
        t.own::<ReplicaSet>(q);
        t.owner::<Pod>("ReplicaSet", q);
    },
    synced: Ctx::synced,
    reconcile: |ctx, _, key| Box::pin(async move { reconcile(&ctx, &key).await }),
};

/// Pods created or deleted but not yet seen so in the cache, per owner key.
#[derive(Default)]
pub struct Expectations(Mutex<HashMap<String, Expected>>);

/// When the expectation was last raised, pod names to appear, pod names to go.
type Expected = (Instant, HashSet<String>, HashSet<String>);

impl Expectations {
    /// Prunes what the cache now shows; returns (pending adds, pending deletes).
    pub fn observe(
        &self,
        key: &str,
        active: &HashSet<String>,
        present: &HashSet<String>,
    ) -> (HashSet<String>, HashSet<String>) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some((at, adds, dels)) = m.get_mut(key) else {
            return Default::default();
        };
        if at.elapsed() > Duration::from_secs(30) {
            m.remove(key);
            return Default::default();
        }
        // DaemonSet expectations are `pod@node`; the cache knows the pod name.
        adds.retain(|n| !present.contains(n.split('@').next().unwrap_or(n)));
        dels.retain(|n| active.contains(n));
        (adds.clone(), dels.clone())
    }

    pub fn expect(&self, key: &str, adds: &[String], dels: &[String]) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let e = m
            .entry(key.into())
            .or_insert_with(|| (Instant::now(), HashSet::new(), HashSet::new()));
        e.0 = Instant::now();
        e.1.extend(adds.iter().cloned());
        e.2.extend(dels.iter().cloned());
    }

    pub fn forget(&self, key: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

/// Order in which surplus pods are deleted (smaller first).
fn deletion_rank(p: &k8s_openapi::api::core::v1::Pod) -> (u8, u8, u8) {
    let scheduled = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
    let running = pods::phase(p) == "Running";
    (
        u8::from(scheduled),
        u8::from(running),
        u8::from(is_ready(p)),
    )
}

/// Reconciles one ReplicaSet (`namespace/name`).
#[tracing::instrument(skip(ctx))]
pub async fn reconcile(ctx: &Ctx, key: &str) -> Result<Requeue, ReconcileError> {
    let Some(rs) = get(&ctx.replicasets, key) else {
        ctx.expectations.forget(key);
        return Ok(None);
    };
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let ns = rs
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let spec = &rs.spec;
    let owned = pods::owned_by(ctx, &ns, &uid);
    let name_of = |p: &k8s_openapi::api::core::v1::Pod| p.metadata.name.clone().unwrap_or_default();
    let present: HashSet<String> = owned.iter().map(|p| name_of(p)).collect();
    let active_names: HashSet<String> = owned
        .iter()
        .filter(|p| is_active(p))
        .map(|p| name_of(p))
        .collect();
    let (adds, dels) = ctx.expectations.observe(key, &active_names, &present);
    let mut active: Vec<_> = owned
        .iter()
        .filter(|p| is_active(p) && !dels.contains(&name_of(p)))
        .collect();
    let want = spec.replicas.unwrap_or(1).max(0) as usize;
    let have = active.len() + adds.len();
    if have < want {
        let template = spec.template.clone().unwrap_or_default();
        let prefix = format!("{}-", rs.metadata.name.as_deref().unwrap_or("rs"));
        let owner = pods::controller_ref(rs.as_ref());
        let mut created = Vec::new();
        for _ in 0..(want - have).min(500) {
            let pod = pods::from_template(&template, &ns, &prefix, owner.clone());
            match pods::create(ctx, &pod, key).await {
                Ok(name) => created.push(name),
                Err(e) => {
                    ctx.expectations.expect(key, &created, &[]);
                    return Err(e);
                }
            }
        }
        tracing::info!(replicaset = key, created = created.len(), "created pods");
        ctx.expectations.expect(key, &created, &[]);
    } else if active.len() > want && adds.is_empty() {
        active.sort_by_key(|p| deletion_rank(p));
        let surplus: Vec<String> = active[..active.len() - want]
            .iter()
            .map(|p| name_of(p))
            .collect();
        ctx.expectations.expect(key, &[], &surplus);
        for name in &surplus {
            pods::delete(ctx, &ns, name).await?;
        }
        tracing::info!(replicaset = key, deleted = surplus.len(), "deleted pods");
    }
    let live: Vec<_> = owned.iter().filter(|p| is_active(p)).collect();
    let ready = live.iter().filter(|p| is_ready(p)).count() as i32;
    let status = json!({
        "replicas": live.len() as i32,
        "fullyLabeledReplicas": live.len() as i32,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "observedGeneration": rs.metadata.generation.unwrap_or(0),
    });
    status::patch_status_if_changed(&ctx.client, rs.as_ref(), rs.status.as_ref(), status).await?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> HashSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn expectations_hold_until_the_cache_catches_up() {
        let e = Expectations::default();
        e.expect("ns/rs", &["a".into(), "b".into()], &["old".into()]);
        let (adds, dels) = e.observe("ns/rs", &set(&["old", "a"]), &set(&["old", "a"]));
        assert_eq!(adds, set(&["b"]));
        assert_eq!(dels, set(&["old"]));
        let (adds, dels) = e.observe("ns/rs", &set(&["a", "b"]), &set(&["a", "b"]));
        assert!(adds.is_empty() && dels.is_empty());
    }

    #[test]
    fn unscheduled_pods_are_deleted_before_running_ones() {
        let p = |v| -> k8s_openapi::api::core::v1::Pod { serde_json::from_value(v).expect("pod") };
        let pending = p(json!({"metadata": {"name": "a"}}));
        let running = p(
            json!({"metadata": {"name": "b"}, "spec": {"nodeName": "n", "containers": []},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}),
        );
        assert!(deletion_rank(&pending) < deletion_rank(&running));
    }
}
