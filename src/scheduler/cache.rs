//! The scheduler's view of the cluster: one [`NodeInfo`] per node with what its pods
//! request, kept up to date from the node and pod watches and from the scheduler's own
//! assumptions (a pod counts on its node from the moment its binding is sent).
//!
//! How: nodes live in a `Vec` (stable indexes for round-robin sampling) with a name → index
//! map; each bound pod is remembered as a [`PodInfo`] so updates and deletions release
//! exactly what was added. Limits: only cpu, memory and pod count are accounted (extended
//! resources are ignored); init containers count as max(init, sum of containers).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, Taint};

use crate::client::quantity::{millicores, units};

/// What a pod takes from its node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requests {
    pub cpu: i64,
    pub memory: i64,
}

/// A pod as the scheduler accounts it on a node.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub key: Arc<str>,
    pub namespace: Arc<str>,
    pub labels: Arc<BTreeMap<String, String>>,
    pub owner: Option<Arc<str>>,
    pub requests: Requests,
    /// (protocol, hostIP, hostPort) of every container port with a host port.
    pub host_ports: Vec<(String, String, i32)>,
}

impl PodInfo {
    pub fn from_pod(pod: &Pod) -> PodInfo {
        let meta = &pod.metadata;
        let ns = meta.namespace.as_deref().unwrap_or("default");
        let name = meta.name.as_deref().unwrap_or_default();
        PodInfo {
            key: format!("{ns}/{name}").into(),
            namespace: ns.into(),
            labels: Arc::new(meta.labels.clone().unwrap_or_default()),
            owner: meta
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| o.uid.as_str().into()),
            requests: pod_requests(pod),
            host_ports: host_ports(pod),
        }
    }
}

/// The pod's effective requests: sum over containers, at least each init container's.
pub fn pod_requests(pod: &Pod) -> Requests {
    let Some(spec) = &pod.spec else {
        return Requests::default();
    };
    let get = |c: &k8s_openapi::api::core::v1::Container, res: &str| -> i64 {
        let r = c.resources.as_ref();
        let q = r
            .and_then(|r| r.requests.as_ref())
            .and_then(|m| m.get(res))
            .or_else(|| r.and_then(|r| r.limits.as_ref()).and_then(|m| m.get(res)));
        match q {
            Some(q) if res == "cpu" => millicores(&q.0),
            Some(q) => units(&q.0),
            None => 0,
        }
    };
    let mut req = Requests::default();
    for c in &spec.containers {
        req.cpu += get(c, "cpu");
        req.memory += get(c, "memory");
    }
    for c in spec.init_containers.iter().flatten() {
        req.cpu = req.cpu.max(get(c, "cpu"));
        req.memory = req.memory.max(get(c, "memory"));
    }
    req
}

fn host_ports(pod: &Pod) -> Vec<(String, String, i32)> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let hp = p.host_port.filter(|hp| *hp > 0)?;
            Some((
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
                hp,
            ))
        })
        .collect()
}

/// One node with its capacity and the pods accounted on it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: Arc<str>,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub ready: bool,
    pub allocatable: Requests,
    pub max_pods: i64,
    pub requested: Requests,
    pub pods: Vec<PodInfo>,
}

impl NodeInfo {
    fn from_node(node: &Node) -> NodeInfo {
        let alloc = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
        let q = |k: &str| alloc.and_then(|a| a.get(k)).map(|q| q.0.as_str());
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        let spec = node.spec.clone().unwrap_or_default();
        NodeInfo {
            name: node.metadata.name.as_deref().unwrap_or_default().into(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: spec.taints.unwrap_or_default(),
            unschedulable: spec.unschedulable.unwrap_or(false),
            ready,
            allocatable: Requests {
                cpu: q("cpu").map(millicores).unwrap_or(0),
                memory: q("memory").map(units).unwrap_or(0),
            },
            max_pods: q("pods").map(units).unwrap_or(110),
            requested: Requests::default(),
            pods: Vec::new(),
        }
    }

    fn add(&mut self, pod: PodInfo) {
        self.requested.cpu += pod.requests.cpu;
        self.requested.memory += pod.requests.memory;
        self.pods.push(pod);
    }

    fn remove(&mut self, key: &str) {
        if let Some(i) = self.pods.iter().position(|p| &*p.key == key) {
            let p = self.pods.swap_remove(i);
            self.requested.cpu -= p.requests.cpu;
            self.requested.memory -= p.requests.memory;
        }
    }
}

/// All nodes, plus where each accounted pod sits.
#[derive(Debug, Default)]
pub struct Cache {
    pub nodes: Vec<NodeInfo>,
    index: HashMap<Arc<str>, usize>,
    /// pod key → node name, for pods accounted on a node.
    placed: HashMap<Arc<str>, Arc<str>>,
    /// Pods bound to nodes the cache does not know yet.
    orphans: HashMap<Arc<str>, (Arc<str>, PodInfo)>,
}

impl Cache {
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|i| &self.nodes[*i])
    }

    /// Adds or updates a node, keeping its accounted pods.
    pub fn upsert_node(&mut self, node: &Node) {
        let mut info = NodeInfo::from_node(node);
        match self.index.get(&info.name) {
            Some(&i) => {
                let old = &mut self.nodes[i];
                info.pods = std::mem::take(&mut old.pods);
                info.requested = old.requested.clone();
                *old = info;
            }
            None => {
                let name = info.name.clone();
                self.index.insert(name.clone(), self.nodes.len());
                self.nodes.push(info);
                let waiting: Vec<Arc<str>> = self
                    .orphans
                    .iter()
                    .filter(|(_, (n, _))| *n == name)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in waiting {
                    if let Some((n, p)) = self.orphans.remove(&k) {
                        self.place(&n, p);
                    }
                }
            }
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        let gone = self.nodes.swap_remove(i);
        if i < self.nodes.len() {
            let moved = self.nodes[i].name.clone();
            self.index.insert(moved, i);
        }
        for p in gone.pods {
            self.placed.remove(&p.key);
        }
    }

    pub fn node_names(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|n| &*n.name)
    }

    /// Accounts `pod` on `node` (idempotent per pod key).
    pub fn place(&mut self, node: &str, pod: PodInfo) {
        if self.placed.get(&pod.key).is_some_and(|n| &**n == node) {
            return;
        }
        self.forget(&pod.key);
        match self.index.get(node) {
            Some(&i) => {
                self.placed
                    .insert(pod.key.clone(), self.nodes[i].name.clone());
                self.nodes[i].add(pod);
            }
            None => {
                self.orphans.insert(pod.key.clone(), (node.into(), pod));
            }
        }
    }

    /// Releases whatever `key` held.
    pub fn forget(&mut self, key: &str) {
        self.orphans.remove(key);
        if let Some(node) = self.placed.remove(key) {
            if let Some(&i) = self.index.get(&node) {
                self.nodes[i].remove(key);
            }
        }
    }

    pub fn is_placed(&self, key: &str) -> bool {
        self.placed.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}))
        .expect("node")
    }

    fn pod(name: &str, cpu: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "x",
                "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}}}]}}))
        .expect("pod")
    }

    #[test]
    fn placing_and_forgetting_a_pod_restores_the_node() {
        let mut c = Cache::default();
        c.upsert_node(&node("n1"));
        c.place("n1", PodInfo::from_pod(&pod("a", "500m")));
        c.place("n1", PodInfo::from_pod(&pod("a", "500m")));
        let n = c.node("n1").expect("node");
        assert_eq!(
            n.requested,
            Requests {
                cpu: 500,
                memory: 1 << 30
            }
        );
        assert_eq!(n.allocatable.cpu, 4000);
        c.forget("default/a");
        assert_eq!(c.node("n1").expect("node").requested, Requests::default());
    }

    #[test]
    fn pods_bound_before_their_node_appears_are_counted_later() {
        let mut c = Cache::default();
        c.place("n2", PodInfo::from_pod(&pod("a", "1")));
        c.upsert_node(&node("n1"));
        c.upsert_node(&node("n2"));
        assert_eq!(c.node("n2").expect("node").requested.cpu, 1000);
        c.remove_node("n1");
        assert_eq!(c.node("n2").expect("node").pods.len(), 1);
    }
}
