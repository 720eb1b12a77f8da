//! The DaemonSet controller: one pod on every eligible node.
//!
//! How: a node is eligible when the pod template's nodeSelector and required node affinity
//! accept it and its NoSchedule/NoExecute taints are tolerated (the tolerations Kubernetes
//! adds to daemon pods — not-ready, unreachable, unschedulable … — are added here too).
//! Missing pods are created with a required node affinity on `metadata.name`, so the
//! scheduler places them; pods on nodes that stopped being eligible are deleted. Any node
//! change requeues every DaemonSet (key [`ALL`]).
//!
//! Limits: template updates do not replace existing pods (no RollingUpdate of daemon pods),
//! no ControllerRevisions.

use std::collections::HashSet;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    Taint, Toleration,
};
use serde_json::json;

use super::pods::{self, is_active, is_ready};
use super::runtime::{get, key_of, Queue, Requeue};
use super::status;
use super::{Controller, Ctx, ReconcileError};
use crate::scheduler::plugins::tolerated;

/// The controller-manager's row: what wakes it — a DaemonSet, a pod it controls, or any node (every DaemonSet is checked again).
pub const CONTROLLER: Controller = Controller {
    name: "daemonset",
    triggers: |t, q| {
        t.own::<DaemonSet>(q);
        t.owner::<Pod>("DaemonSet", q);
        let q = q.clone();
        t.on::<Node>(move |_, _| q.add(ALL));
    },
    synced: Ctx::synced,
    reconcile: |ctx, queue, key| Box::pin(async move { reconcile(&ctx, &queue, &key).await }),
};

/// Queue key meaning "every DaemonSet".
pub const ALL: &str = "*";

fn daemon_tolerations() -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

/// Whether a daemon pod with `tols` and the template's node constraints may run on `node`.
fn eligible(ds: &DaemonSet, tols: &[Toleration], node: &k8s_openapi::api::core::v1::Node) -> bool {
    let taints: &[Taint] = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    if taints
        .iter()
        .any(|t| (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerated(tols, t))
    {
        return false;
    }
    let template = ds.spec.template.spec.clone().unwrap_or_default();
    let probe = k8s_openapi::api::core::v1::Pod {
        spec: Some(template),
        ..Default::default()
    };
    let mut cache = crate::scheduler::cache::Cache::default();
    cache.upsert_node(node);
    // A Node without pod capacity (a master running no kubelet) runs no daemons either.
    cache
        .node(node.metadata.name.as_deref().unwrap_or_default())
        .is_some_and(|n| {
            n.max_pods > 0 && crate::scheduler::plugins::node_affinity_matches(&probe, n)
        })
}

/// Reconciles one DaemonSet (`namespace/name`) or all of them ([`ALL`]).
#[tracing::instrument(skip(ctx, queue))]
pub async fn reconcile(ctx: &Ctx, queue: &Queue, key: &str) -> Result<Requeue, ReconcileError> {
    if key == ALL {
        for ds in ctx.daemonsets.state() {
            queue.add(&key_of(ds.as_ref()));
        }
        return Ok(None);
    }
    let Some(ds) = get(&ctx.daemonsets, key) else {
        return Ok(None);
    };
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let ns = ds
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let spec = &ds.spec;
    let mut tols = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    tols.extend(daemon_tolerations());
    let owned: Vec<_> = pods::owned_by(ctx, &ns, &uid)
        .into_iter()
        .filter(|p| is_active(p))
        .collect();
    let target = |p: &k8s_openapi::api::core::v1::Pod| -> Option<String> {
        if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
            return Some(n);
        }
        let aff = p.spec.as_ref()?.affinity.as_ref()?.node_affinity.as_ref()?;
        let terms = &aff
            .required_during_scheduling_ignored_during_execution
            .as_ref()?
            .node_selector_terms;
        terms
            .first()?
            .match_fields
            .as_ref()?
            .first()?
            .values
            .as_ref()?
            .first()
            .cloned()
    };
    let nodes = ctx.nodes.state();
    let wanted: HashSet<String> = nodes
        .iter()
        .filter(|n| eligible(&ds, &tols, n))
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    let covered: HashSet<String> = owned.iter().filter_map(|p| target(p)).collect();
    let (adds, _) = ctx.expectations.observe(
        key,
        &HashSet::new(),
        &owned
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect(),
    );
    let pending_nodes: HashSet<String> = adds
        .iter()
        .filter_map(|a| a.split_once('@').map(|x| x.1.to_string()))
        .collect();
    let mut created = Vec::new();
    for node in wanted
        .iter()
        .filter(|n| !covered.contains(*n) && !pending_nodes.contains(*n))
    {
        let mut template = spec.template.clone();
        let ps = template.spec.get_or_insert_with(Default::default);
        ps.tolerations = Some(tols.clone());
        ps.affinity
            .get_or_insert_with(Affinity::default)
            .node_affinity = Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".into(),
                        operator: "In".into(),
                        values: Some(vec![node.clone()]),
                    }]),
                    match_expressions: None,
                }],
            }),
            preferred_during_scheduling_ignored_during_execution: None,
        });
        let prefix = format!("{}-", ds.metadata.name.as_deref().unwrap_or("ds"));
        let pod = pods::from_template(&template, &ns, &prefix, pods::controller_ref(ds.as_ref()));
        let name = pods::create(ctx, &pod, key).await?;
        created.push(format!("{name}@{node}"));
    }
    // The expectation names carry the node so that a pending creation covers it; the
    // pod name before '@' is what the cache will show.
    ctx.expectations.expect(key, &created, &[]);
    for p in &owned {
        if let Some(n) = target(p) {
            if !wanted.contains(&n) {
                let name = p.metadata.name.as_deref().unwrap_or_default();
                pods::delete(ctx, &ns, name).await?;
            }
        }
    }
    let on_wanted: Vec<_> = owned
        .iter()
        .filter(|p| target(p).is_some_and(|n| wanted.contains(&n)))
        .collect();
    let scheduled = on_wanted
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
        .count() as i32;
    let ready = on_wanted.iter().filter(|p| is_ready(p)).count() as i32;
    let status = json!({
        "desiredNumberScheduled": wanted.len() as i32,
        "currentNumberScheduled": scheduled,
        "updatedNumberScheduled": scheduled,
        "numberMisscheduled": (owned.len() - on_wanted.len()) as i32,
        "numberReady": ready,
        "numberAvailable": ready,
        "numberUnavailable": (wanted.len() as i32 - ready).max(0),
        "observedGeneration": ds.metadata.generation.unwrap_or(0),
    });
    status::patch_status_if_changed(&ctx.client, ds.as_ref(), ds.status.as_ref(), status).await?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_plane_taint_keeps_daemon_pods_away_unless_tolerated() {
        let ds: DaemonSet = serde_json::from_value(json!({"metadata": {"name": "d"},
            "spec": {"selector": {}, "template": {"spec": {"containers": []}}}}))
        .expect("ds");
        let master: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
            "metadata": {"name": "m"},
            "spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}})).expect("node");
        let worker: k8s_openapi::api::core::v1::Node =
            serde_json::from_value(json!({"metadata": {"name": "w"}})).expect("node");
        let tols = daemon_tolerations();
        assert!(!eligible(&ds, &tols, &master));
        assert!(eligible(&ds, &tols, &worker));
        let mut all = tols.clone();
        all.push(Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        });
        assert!(eligible(&ds, &all, &master));
    }
}
