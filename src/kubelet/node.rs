//! The Node object and its heartbeat, shared by `kimg kubelet` and `kimg sim nodes`.
//!
//! What: [`node_object`] builds a Node (labels `kubernetes.io/hostname`, `os`, `arch` plus
//! extra labels, taints, capacity = allocatable, InternalIP and Hostname addresses, node
//! info, Ready conditions); [`register`] creates it (an existing one is kept) and writes
//! its status through the `status` subresource; [`renew_lease`] renews (or creates) the
//! node's Lease in `kube-node-lease`; [`report_conditions`] rewrites the conditions with
//! fresh heartbeat times. [`host_capacity`] reads CPUs and memory from `/proc`.
//!
//! Limits: conditions are always healthy (no memory/disk/PID pressure detection); the
//! Lease is merge-patched without resourceVersion checks.

use std::collections::BTreeMap;

use chrono::Utc;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

/// What a Node is made of.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub internal_ip: String,
    /// Extra labels, on top of hostname/os/arch.
    pub labels: Vec<(String, String)>,
    pub taints: Vec<Taint>,
    /// Kubernetes quantities, e.g. `4` and `8Gi`.
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    pub kubelet_version: String,
    pub runtime_version: String,
    /// Port of the kubelet API (`status.daemonEndpoints`).
    pub kubelet_port: u16,
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The four node conditions, healthy and Ready, stamped now.
pub fn ready_conditions() -> serde_json::Value {
    let t = now();
    let c = |ty: &str, st: &str, reason: &str, msg: &str| {
        json!({"type": ty, "status": st, "reason": reason, "message": msg,
               "lastHeartbeatTime": t, "lastTransitionTime": t})
    };
    json!([
        c(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available"
        ),
        c(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure"
        ),
        c(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available"
        ),
        c(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status"
        ),
    ])
}

/// The Node object for `info`.
pub fn node_object(info: &NodeInfo) -> Node {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let mut labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", info.name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", arch),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    labels.extend(info.labels.iter().cloned());
    let res = json!({"cpu": info.cpu, "memory": info.memory, "pods": info.pods.to_string()});
    let v = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": info.name, "labels": labels},
        "spec": {"taints": info.taints},
        "status": {
            "capacity": res, "allocatable": res,
            "conditions": ready_conditions(),
            "addresses": [{"type": "InternalIP", "address": info.internal_ip},
                          {"type": "Hostname", "address": info.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": info.kubelet_port}},
            "nodeInfo": {"kubeletVersion": info.kubelet_version, "kubeProxyVersion": "", "operatingSystem": "linux",
                         "architecture": arch, "containerRuntimeVersion": info.runtime_version, "osImage": "kimg",
                         "kernelVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
        },
    });
    serde_json::from_value(v).unwrap_or_default()
}

/// Creates the Node (keeping one that exists) and writes its status.
pub async fn register(client: &Client, node: &Node) -> Result<(), kube::Error> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let api: Api<Node> = Api::all(client.clone());
    match api.create(&PostParams::default(), node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e),
    }
    // Status is a subresource: post it separately (idempotent).
    let status = json!({"status": serde_json::to_value(&node.status).unwrap_or_default()});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// Renews the node's Lease in `kube-node-lease`, creating it when missing.
pub async fn renew_lease(client: &Client, name: &str) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let t = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let patch = json!({"spec": {"renewTime": t}});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": t}});
            let lease: Lease = serde_json::from_value(lease).unwrap_or_default();
            api.create(&PostParams::default(), &lease).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Rewrites the node's conditions (healthy, Ready) with fresh heartbeat times.
pub async fn report_conditions(client: &Client, name: &str) -> Result<(), kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    let patch = json!({"status": {"conditions": ready_conditions()}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// CPUs (from the scheduler affinity) and memory (`MemTotal` of `/proc/meminfo`, as `Ki`).
pub fn host_capacity() -> (String, String) {
    let cpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    (cpu.to_string(), format!("{}Ki", mem_total_kib(&meminfo)))
}

fn mem_total_kib(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> NodeInfo {
        NodeInfo {
            name: "m1".into(),
            internal_ip: "10.0.0.5".into(),
            labels: vec![(
                "node-role.kubernetes.io/control-plane".into(),
                String::new(),
            )],
            taints: vec![Taint {
                key: "node-role.kubernetes.io/control-plane".into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            }],
            cpu: "2".into(),
            memory: "4000Ki".into(),
            pods: 110,
            kubelet_version: format!("v1.{}.0-kimg", crate::KUBE_MINOR),
            runtime_version: "containerd://1.6".into(),
            kubelet_port: 10250,
        }
    }

    #[test]
    fn nodes_carry_standard_and_extra_labels_taints_capacity_and_the_internal_ip() {
        let n = node_object(&info());
        let labels = n.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels["kubernetes.io/hostname"], "m1");
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert!(labels.contains_key("kubernetes.io/arch"));
        assert!(labels.contains_key("node-role.kubernetes.io/control-plane"));
        let spec = n.spec.clone().unwrap_or_default();
        assert_eq!(spec.taints.unwrap_or_default()[0].effect, "NoSchedule");
        let status = n.status.clone().unwrap_or_default();
        assert_eq!(status.capacity.clone().unwrap_or_default()["pods"].0, "110");
        assert_eq!(status.allocatable.unwrap_or_default()["memory"].0, "4000Ki");
        let addrs = status.addresses.unwrap_or_default();
        assert!(addrs
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == "10.0.0.5"));
        let conds = status.conditions.unwrap_or_default();
        assert!(conds
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"));
    }

    #[test]
    fn memory_is_read_from_meminfo_in_kibibytes() {
        assert_eq!(
            mem_total_kib("MemTotal:       16318480 kB\nMemFree: 1 kB\n"),
            16318480
        );
        assert_eq!(mem_total_kib("garbage"), 0);
    }
}
