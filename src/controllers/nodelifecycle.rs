//! Node lifecycle: Ready / NotReady / Unknown from heartbeats, NoExecute taints, and
//! eviction of pods that do not tolerate them.
//!
//! How: every `node_monitor_period` all nodes are checked. The last heartbeat is the newer
//! of the node's Lease `renewTime` (namespace `kube-node-lease`) and its Ready condition's
//! `lastHeartbeatTime`. Older than `node_monitor_grace_period`: the conditions become
//! `Unknown` ("Kubelet stopped posting node status.") and the node gets
//! `node.kubernetes.io/unreachable` (NoSchedule and NoExecute). A node reporting
//! Ready=False gets `node.kubernetes.io/not-ready` instead; a healthy node loses both. Pods
//! on a node with NoExecute taints are deleted when they do not tolerate a taint, or once
//! the taint is older than their `tolerationSeconds`.
//!
//! Limits: no zone-aware eviction rate limiting; a node never seen heartbeating counts from
//! when this controller first saw it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::runtime::get;
use super::status;
use super::{Ctx, ReconcileError};

const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// The node's health as judged here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ready,
    NotReady,
    Unknown,
}

/// Judges a node from its last heartbeat and reported Ready status.
pub fn judge(
    last: Option<Timestamp>,
    ready: Option<&str>,
    now: Timestamp,
    grace: SignedDuration,
) -> Health {
    match last {
        Some(t) if now.duration_since(t) <= grace => match ready {
            Some("True") => Health::Ready,
            Some("Unknown") => Health::Ready, // fresh heartbeat again: the node reports soon
            _ => Health::NotReady,
        },
        _ => Health::Unknown,
    }
}

/// The managed taints for a health (other taints are kept as they are).
fn wanted_taints(h: Health, existing: &[Taint], now: &Time) -> Vec<Taint> {
    let mut out: Vec<Taint> = existing
        .iter()
        .filter(|t| t.key != UNREACHABLE && t.key != NOT_READY)
        .cloned()
        .collect();
    let key = match h {
        Health::Ready => return out,
        Health::NotReady => NOT_READY,
        Health::Unknown => UNREACHABLE,
    };
    for effect in ["NoSchedule", "NoExecute"] {
        let kept = existing
            .iter()
            .find(|t| t.key == key && t.effect == effect)
            .cloned();
        out.push(kept.unwrap_or(Taint {
            key: key.into(),
            effect: effect.into(),
            value: None,
            time_added: Some(now.clone()),
        }));
    }
    out
}

/// When `pod` must leave a node with `taints` (None: it may stay).
pub fn eviction_time(pod: &Pod, taints: &[Taint]) -> Option<Timestamp> {
    let tols = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    let mut at: Option<Timestamp> = None;
    for t in taints.iter().filter(|t| t.effect == "NoExecute") {
        let added = t.time_added.as_ref().map_or_else(Timestamp::now, |x| x.0);
        let matching: Vec<_> = tols
            .iter()
            .filter(|tol| crate::scheduler::plugins::tolerates(tol, t))
            .collect();
        let when = if matching.is_empty() {
            Some(added)
        } else if matching.iter().any(|tol| tol.toleration_seconds.is_none()) {
            None
        } else {
            let secs = matching
                .iter()
                .filter_map(|tol| tol.toleration_seconds)
                .min()
                .unwrap_or(0);
            // A huge tolerationSeconds is "never": past the end of time.
            added
                .checked_add(SignedDuration::from_secs(secs.max(0)))
                .ok()
        };
        if let Some(w) = when {
            at = Some(at.map_or(w, |a| a.min(w)));
        }
    }
    at
}

/// When the node's kubelet last showed life: its Lease's `renewTime` or its Ready
/// condition's heartbeat, whichever is newer.
pub(super) fn last_heartbeat(ctx: &Ctx, node: &Node) -> Option<Timestamp> {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let lease = get(&ctx.leases, &format!("kube-node-lease/{name}")).and_then(|l| {
        l.spec
            .as_ref()
            .and_then(|s| s.renew_time.as_ref())
            .map(|t| t.0)
    });
    let cond = ready_condition(node)
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0);
    lease.max(cond)
}

fn ready_condition(node: &Node) -> Option<&k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

async fn check(
    ctx: &Ctx,
    node: &Node,
    first_seen: &mut HashMap<String, (Instant, Timestamp)>,
) -> Result<(), ReconcileError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let now = Timestamp::now();
    let grace = SignedDuration::try_from(ctx.opts.node_monitor_grace_period)
        .unwrap_or(SignedDuration::from_secs(40));
    let seen = first_seen
        .entry(name.clone())
        .or_insert((Instant::now(), now))
        .1;
    let last = last_heartbeat(ctx, node).or(Some(seen)).max(Some(seen));
    let ready = ready_condition(node).map(|c| c.status.as_str());
    let health = judge(last, ready, now, grace);
    let api: Api<Node> = Api::all(ctx.client.clone());
    if health == Health::Unknown && ready != Some("Unknown") {
        let conds: Vec<_> = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|mut c| {
                if c.type_ == "Ready" || c.type_.ends_with("Pressure") {
                    c.status = "Unknown".into();
                    c.reason = Some("NodeStatusUnknown".into());
                    c.message = Some("Kubelet stopped posting node status.".into());
                    c.last_transition_time = Some(Time(now));
                }
                c
            })
            .collect();
        status::patch_status(&ctx.client, node, json!({"conditions": conds})).await?;
        tracing::info!(node = %name, "node stopped heartbeating: Unknown");
    }
    let existing = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let want = wanted_taints(health, &existing, &Time(now));
    if want != existing {
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"taints": want}})),
        )
        .await
        .map_err(|source| ReconcileError::Update {
            kind: "Node",
            key: name.clone(),
            source,
        })?;
    }
    Ok(())
}

async fn evict(ctx: &Ctx) -> Result<(), ReconcileError> {
    let tainted: HashMap<String, Vec<Taint>> = ctx
        .nodes
        .state()
        .iter()
        .filter_map(|n| {
            let taints = n.spec.as_ref()?.taints.clone()?;
            taints
                .iter()
                .any(|t| t.effect == "NoExecute")
                .then(|| (n.metadata.name.clone().unwrap_or_default(), taints))
        })
        .collect();
    if tainted.is_empty() {
        return Ok(());
    }
    let now = Timestamp::now();
    for pod in ctx.pods.state() {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()) else {
            continue;
        };
        let Some(taints) = tainted.get(node) else {
            continue;
        };
        if !super::pods::is_active(&pod) {
            continue;
        }
        if eviction_time(&pod, taints).is_some_and(|t| t <= now) {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            tracing::info!(pod = %format!("{ns}/{name}"), node = %node, "evicting (NoExecute taint)");
            super::pods::delete(ctx, ns, name).await?;
        }
    }
    Ok(())
}

/// Checks all nodes every `node_monitor_period`, forever.
pub async fn run(ctx: Arc<Ctx>) {
    ctx.synced().await;
    let mut first_seen = HashMap::new();
    let mut tick = tokio::time::interval(ctx.opts.node_monitor_period);
    loop {
        tick.tick().await;
        for node in ctx.nodes.state() {
            if let Err(e) = check(&ctx, &node, &mut first_seen).await {
                tracing::warn!(error = %e, "node check failed");
            }
        }
        if let Err(e) = evict(&ctx).await {
            tracing::warn!(error = %e, "eviction failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_stale_heartbeat_makes_the_node_unknown_and_unreachable() {
        let now = Timestamp::now();
        let g = SignedDuration::from_secs(40);
        assert_eq!(
            judge(
                Some(now - SignedDuration::from_secs(5)),
                Some("True"),
                now,
                g
            ),
            Health::Ready
        );
        assert_eq!(
            judge(
                Some(now - SignedDuration::from_secs(5)),
                Some("False"),
                now,
                g
            ),
            Health::NotReady
        );
        assert_eq!(
            judge(
                Some(now - SignedDuration::from_secs(50)),
                Some("True"),
                now,
                g
            ),
            Health::Unknown
        );
        let taints = wanted_taints(Health::Unknown, &[], &Time(now));
        assert_eq!(taints.len(), 2);
        assert!(taints.iter().all(|t| t.key == UNREACHABLE));
        assert!(wanted_taints(Health::Ready, &taints, &Time(now)).is_empty());
    }

    #[test]
    fn pods_leave_at_once_or_after_their_toleration_seconds() {
        let added = Timestamp::now();
        let taints = vec![Taint {
            key: UNREACHABLE.into(),
            effect: "NoExecute".into(),
            value: None,
            time_added: Some(Time(added)),
        }];
        let pod = |tols: serde_json::Value| -> Pod {
            serde_json::from_value(
                json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": tols}}),
            )
            .expect("pod")
        };
        assert_eq!(eviction_time(&pod(json!([])), &taints), Some(added));
        let tol = json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]);
        assert_eq!(
            eviction_time(&pod(tol), &taints),
            Some(added + SignedDuration::from_secs(30))
        );
        let forever = json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}]);
        assert_eq!(eviction_time(&pod(forever), &taints), None);
        // A toleration past the end of time (the API accepts any int64) is "never", not
        // an overflow.
        let huge = json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute",
                           "tolerationSeconds": i64::MAX}]);
        assert_eq!(eviction_time(&pod(huge), &taints), None);
    }
}
