//! The scheduling algorithm without I/O: a queue of pending pods over the [`Cache`], and
//! [`Core::schedule_one`] that filters a sample of nodes, scores the feasible ones and
//! assumes the winner (the pod counts on its node before the binding is confirmed).
//!
//! How: like kube-scheduler, large clusters are sampled — it stops after finding
//! `max(100, n × max(5, 50 − n/125) %)` feasible nodes, starting where the previous pod
//! stopped so all nodes get their turn. Pods that fit nowhere wait in an unschedulable set
//! until [`Core::cluster_changed`] moves them back. Limits: no preemption, no priority
//! order (first in, first out).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use super::cache::{Cache, PodInfo};
use super::plugins::{filter, pick, score, PodView, Raw, Reason};

/// Pending pods and the cluster view.
#[derive(Default)]
pub struct Core {
    pub cache: Cache,
    pending: HashMap<Arc<str>, Arc<Pod>>,
    active: VecDeque<Arc<str>>,
    queued: HashSet<Arc<str>>,
    unschedulable: HashSet<Arc<str>>,
    next_start: usize,
    raws: Vec<Raw>,
}

/// Why a pod could not be placed: kube-scheduler's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable(pub String);

fn key_of(pod: &Pod) -> Arc<str> {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
    .into()
}

/// Whether `pod` holds resources on a node (bound and not finished).
fn is_active_on_node(pod: &Pod) -> Option<&str> {
    let node = pod
        .spec
        .as_ref()?
        .node_name
        .as_deref()
        .filter(|n| !n.is_empty())?;
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    (!matches!(phase, Some("Succeeded" | "Failed"))).then_some(node)
}

impl Core {
    /// Number of feasible nodes to look for in a cluster of `n` nodes.
    pub fn feasible_to_find(n: usize) -> usize {
        if n < 100 {
            return n;
        }
        let pct = 50usize.saturating_sub(n / 125).max(5);
        (n * pct / 100).max(100)
    }

    /// Applies a pod from the watch: accounts bound pods, queues pending ones.
    pub fn pod_seen(&mut self, pod: Pod, scheduler_name: &str) {
        let key = key_of(&pod);
        if let Some(node) = is_active_on_node(&pod) {
            let node = node.to_string();
            self.drop_pending(&key);
            self.cache.place(&node, PodInfo::from_pod(&pod));
            return;
        }
        let bound = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty());
        if bound {
            // Finished: frees its node.
            self.drop_pending(&key);
            if self.cache.is_placed(&key) {
                self.cache.forget(&key);
                self.cluster_changed();
            }
            return;
        }
        let ours = pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref())
            .is_none_or(|n| n == scheduler_name);
        if !ours || pod.metadata.deletion_timestamp.is_some() || self.cache.is_placed(&key) {
            return;
        }
        self.pending.insert(key.clone(), Arc::new(pod));
        if !self.unschedulable.contains(&key) && self.queued.insert(key.clone()) {
            self.active.push_back(key);
        }
    }

    /// Applies a pod deletion from the watch.
    pub fn pod_gone(&mut self, pod: &Pod) {
        let key = key_of(pod);
        self.drop_pending(&key);
        if self.cache.is_placed(&key) {
            self.cache.forget(&key);
            self.cluster_changed();
        }
    }

    fn drop_pending(&mut self, key: &str) {
        self.pending.remove(key);
        self.unschedulable.remove(key);
        self.queued.remove(key);
    }

    /// Something changed that may let unschedulable pods fit: retry them all.
    pub fn cluster_changed(&mut self) {
        for key in self.unschedulable.drain() {
            if self.queued.insert(key.clone()) {
                self.active.push_back(key);
            }
        }
    }

    /// Pods waiting for a node, queued or parked as unschedulable.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Whether pods wait in the active queue (parked unschedulable ones do not count).
    pub fn has_queued(&self) -> bool {
        !self.active.is_empty()
    }

    /// The next pod to schedule, if any.
    pub fn pop(&mut self) -> Option<Arc<Pod>> {
        while let Some(key) = self.active.pop_front() {
            self.queued.remove(&key);
            if let Some(p) = self.pending.get(&key) {
                return Some(p.clone());
            }
        }
        None
    }

    /// A binding failed (say etcd was briefly unavailable): release the assumption and
    /// queue the pod again. [`schedule_one`](Self::schedule_one) took it out of `pending`,
    /// so it goes back in; a pod deleted meanwhile gets a 404 on the next bind.
    pub fn binding_failed(&mut self, pod: Arc<Pod>) {
        let key = key_of(&pod);
        self.cache.forget(&key);
        self.pending.insert(key.clone(), pod);
        self.unschedulable.remove(&key);
        if self.queued.insert(key.clone()) {
            self.active.push_back(key);
        }
    }

    /// A binding succeeded: the pod is no longer pending (the watch confirms later).
    pub fn binding_done(&mut self, pod: &Pod) {
        self.drop_pending(&key_of(pod));
    }

    /// Picks a node for `pod` and assumes it there, or explains why none fits (the pod is
    /// then parked until the cluster changes).
    pub fn schedule_one(&mut self, pod: &Pod) -> Result<Arc<str>, Unschedulable> {
        let n = self.cache.nodes.len();
        let view = PodView::new(pod, &self.cache);
        let want = Self::feasible_to_find(n);
        let mut reasons: [u32; 11] = [0; 11];
        self.raws.clear();
        let start = if n == 0 { 0 } else { self.next_start % n };
        let mut examined = 0;
        for step in 0..n {
            let i = (start + step) % n;
            examined += 1;
            let node = &self.cache.nodes[i];
            match filter(&view, node) {
                Some(r) => reasons[r as usize] += 1,
                None => {
                    self.raws.push(score(&view, node, i));
                    if self.raws.len() >= want {
                        break;
                    }
                }
            }
        }
        self.next_start = start + examined;
        let key = view.info.key.clone();
        match pick(&self.raws) {
            Some(i) => {
                let name = self.cache.nodes[i].name.clone();
                self.cache.place(&name, view.info);
                self.pending.remove(&key);
                Ok(name)
            }
            None => {
                self.unschedulable.insert(key);
                Err(Unschedulable(message(n, &reasons)))
            }
        }
    }
}

const ALL_REASONS: [Reason; 11] = [
    Reason::NodeName,
    Reason::Unschedulable,
    Reason::NotReady,
    Reason::Affinity,
    Reason::Taint,
    Reason::Ports,
    Reason::Cpu,
    Reason::Memory,
    Reason::Pods,
    Reason::PodAffinity,
    Reason::PodAntiAffinity,
];

/// "0/3 nodes are available: 1 node(s) had untolerated taint(s), 2 Insufficient cpu."
fn message(nodes: usize, counts: &[u32; 11]) -> String {
    let mut parts: Vec<String> = ALL_REASONS
        .iter()
        .filter(|r| counts[**r as usize] > 0)
        .map(|r| format!("{} {}", counts[*r as usize], r.text()))
        .collect();
    parts.sort();
    if parts.is_empty() {
        return format!("0/{nodes} nodes are available.");
    }
    format!("0/{nodes} nodes are available: {}.", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use serde_json::{json, Value};

    fn node(name: &str, extra: Value) -> Node {
        let mut n = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}});
        merge(&mut n, extra);
        serde_json::from_value(n).expect("node")
    }

    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn pod(name: &str, spec: Value) -> Pod {
        let mut p = json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "web"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                                     "uid": "u1", "controller": true}]},
            "spec": {"containers": [{"name": "c", "image": "x",
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}});
        merge(&mut p, json!({"spec": spec}));
        serde_json::from_value(p).expect("pod")
    }

    fn core(nodes: &[Node]) -> Core {
        let mut c = Core::default();
        for n in nodes {
            c.cache.upsert_node(n);
        }
        c
    }

    #[test]
    fn replicas_of_one_controller_spread_over_nodes() {
        let mut c = core(&[
            node("a", json!({})),
            node("b", json!({})),
            node("c", json!({})),
        ]);
        let mut placed: Vec<String> = (0..3)
            .map(|i| {
                c.schedule_one(&pod(&format!("p{i}"), json!({})))
                    .expect("fits")
                    .to_string()
            })
            .collect();
        placed.sort();
        assert_eq!(placed, ["a", "b", "c"]);
    }

    #[test]
    fn a_pod_too_big_for_every_node_reports_insufficient_cpu() {
        let mut c = core(&[node("a", json!({})), node("b", json!({}))]);
        let big = pod(
            "big",
            json!({"containers": [{"name": "c", "image": "x",
            "resources": {"requests": {"cpu": "64"}}}]}),
        );
        assert_eq!(
            c.schedule_one(&big),
            Err(Unschedulable(
                "0/2 nodes are available: 2 Insufficient cpu.".into()
            ))
        );
    }

    #[test]
    fn node_selector_taints_and_tolerations_decide_placement() {
        let tainted = node(
            "gpu",
            json!({"metadata": {"labels": {"disk": "ssd"}},
            "spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
        );
        let mut c = core(&[tainted, node("plain", json!({}))]);
        let wants_ssd = pod("s", json!({"nodeSelector": {"disk": "ssd"}}));
        assert_eq!(
            c.schedule_one(&wants_ssd),
            Err(Unschedulable(
                "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint(s).".into()
            ))
        );
        let tolerant = pod(
            "t",
            json!({"nodeSelector": {"disk": "ssd"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}),
        );
        assert_eq!(c.schedule_one(&tolerant).as_deref().ok(), Some("gpu"));
        let named = pod("n", json!({"nodeName": "plain"}));
        assert_eq!(c.schedule_one(&named).as_deref().ok(), Some("plain"));
    }

    #[test]
    fn not_ready_and_cordoned_nodes_are_skipped() {
        let mut c = core(&[
            node(
                "down",
                json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
            ),
            node("cordoned", json!({"spec": {"unschedulable": true}})),
            node("up", json!({})),
        ]);
        assert_eq!(
            c.schedule_one(&pod("p", json!({}))).as_deref().ok(),
            Some("up")
        );
    }

    #[test]
    fn anti_affinity_on_hostname_keeps_pods_apart_and_host_ports_clash() {
        let mut c = core(&[node("a", json!({})), node("b", json!({}))]);
        let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
        assert!(c.schedule_one(&pod("p1", anti.clone())).is_ok());
        assert!(c.schedule_one(&pod("p2", anti.clone())).is_ok());
        let err = c.schedule_one(&pod("p3", anti)).expect_err("no third node");
        assert!(
            err.0
                .contains("2 node(s) didn't match pod anti-affinity rules"),
            "{err:?}"
        );
        let mut c = core(&[node("a", json!({}))]);
        let port = json!({"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 80, "hostPort": 8080}]}]});
        assert!(c.schedule_one(&pod("h1", port.clone())).is_ok());
        let err = c.schedule_one(&pod("h2", port)).expect_err("port taken");
        assert!(err.0.contains("free ports"), "{err:?}");
    }

    #[test]
    fn unschedulable_pods_wait_until_the_cluster_changes() {
        let mut c = core(&[node("a", json!({}))]);
        let big = pod(
            "big",
            json!({"containers": [{"name": "c", "image": "x",
            "resources": {"requests": {"cpu": "6"}}}]}),
        );
        c.pod_seen(big.clone(), "default-scheduler");
        let p = c.pop().expect("queued");
        assert!(c.schedule_one(&p).is_err());
        c.pod_seen(big, "default-scheduler");
        assert!(c.pop().is_none(), "parked until something changes");
        c.cache.upsert_node(&node(
            "huge",
            json!({"status": {"allocatable": {"cpu": "8"}}}),
        ));
        c.cluster_changed();
        let p = c.pop().expect("retried");
        assert_eq!(c.schedule_one(&p).as_deref().ok(), Some("huge"));
    }

    #[test]
    fn a_pod_whose_binding_failed_is_scheduled_again_and_its_room_freed() {
        let mut c = core(&[node("a", json!({"status": {"allocatable": {"cpu": "1"}}}))]);
        let p1 = pod(
            "p1",
            json!({"containers": [{"name": "c", "image": "x",
            "resources": {"requests": {"cpu": "1"}}}]}),
        );
        c.pod_seen(p1, "default-scheduler");
        let p = c.pop().expect("queued");
        assert_eq!(c.schedule_one(&p).as_deref().ok(), Some("a"));
        assert!(c.pop().is_none(), "bound pods leave the queue");
        c.binding_failed(p);
        let p = c.pop().expect("queued again after a failed binding");
        assert_eq!(
            c.schedule_one(&p).as_deref().ok(),
            Some("a"),
            "the failed assumption no longer holds the node's CPU"
        );
    }

    #[test]
    fn sampling_looks_at_a_tenth_of_five_thousand_nodes() {
        assert_eq!(Core::feasible_to_find(50), 50);
        assert_eq!(Core::feasible_to_find(5000), 500);
        assert_eq!(Core::feasible_to_find(200), 100);
    }
}
