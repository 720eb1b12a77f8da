//! NodeIPAM: gives every node a `/24` pod CIDR (`spec.podCIDR`, `spec.podCIDRs`) from the
//! cluster's pod network.
//!
//! How: the /24s held by nodes in the cache, plus those this process handed out (the cache
//! may lag), are taken; a node without one gets the lowest free /24. Limits: the mask is fixed at /24; IPv4 only; two controller-managers
//! never allocate at once (leader election), but a stale cache right after a failover
//! could hand out a /24 twice until the next reconcile — the apiserver rejects a change of
//! an already set podCIDR, so the loser keeps its first one.

use std::collections::HashSet;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::runtime::{get, Requeue};
use super::{Controller, Ctx, ReconcileError};

/// The controller-manager's row: what wakes it — a node.
pub const CONTROLLER: Controller = Controller {
    name: "node",
    triggers: |t, q| {
        t.own::<Node>(q);
    },
    synced: Ctx::synced,
    reconcile: |ctx, _, key| Box::pin(async move { reconcile(&ctx, &key).await }),
};

/// The lowest /24 of `cluster` not in `taken`.
pub fn next_free(cluster: Ipv4Net, taken: &HashSet<Ipv4Net>) -> Option<Ipv4Net> {
    let prefix = cluster.prefix_len().max(24);
    cluster
        .subnets(24.max(prefix))
        .ok()?
        .find(|n| !taken.contains(n))
}

/// Allocates a pod CIDR to one node (`name`) if it has none.
#[tracing::instrument(skip(ctx))]
pub async fn reconcile(ctx: &Ctx, key: &str) -> Result<Requeue, ReconcileError> {
    let Some(cluster) = ctx.opts.cluster_cidr else {
        return Ok(None);
    };
    let Some(node) = get(&ctx.nodes, key) else {
        return Ok(None);
    };
    if node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_ref())
        .is_some()
    {
        return Ok(None);
    }
    let free = {
        let mut mine = ctx
            .allocated_cidrs
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut taken: HashSet<Ipv4Net> = ctx
            .nodes
            .state()
            .iter()
            .filter_map(|n| n.spec.as_ref()?.pod_cidr.as_ref()?.parse().ok())
            .collect();
        taken.extend(mine.iter().copied());
        let free = next_free(cluster, &taken);
        if let Some(c) = free {
            mine.insert(c);
        }
        free
    };
    let Some(cidr) = free else {
        tracing::warn!(node = key, %cluster, "no free pod CIDR left");
        return Ok(None);
    };
    let api: Api<Node> = Api::all(ctx.client.clone());
    let patch = json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
    api.patch(key, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| ReconcileError::Update {
            kind: "Node",
            key: key.into(),
            source,
        })?;
    tracing::info!(node = key, %cidr, "allocated pod CIDR");
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_free_slash_24_is_allocated() {
        let cluster: Ipv4Net = "10.244.0.0/16".parse().expect("cidr");
        let mut taken = HashSet::new();
        assert_eq!(next_free(cluster, &taken), "10.244.0.0/24".parse().ok());
        taken.insert("10.244.0.0/24".parse().expect("cidr"));
        assert_eq!(next_free(cluster, &taken), "10.244.1.0/24".parse().ok());
        let tiny: Ipv4Net = "10.0.0.0/24".parse().expect("cidr");
        taken.insert(tiny);
        assert_eq!(next_free(tiny, &taken), None);
    }
}
