//! `meta.k8s.io/v1` Table responses, which `kubectl get` asks for
//! (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`).
//!
//! Columns follow what a real cluster prints for pods, namespaces, nodes, deployments,
//! replicasets, statefulsets, daemonsets, services, configmaps, secrets, jobs and
//! service accounts; priority-1 columns appear with `-o wide`. Every other kind gets
//! NAME and AGE. Each row carries the object as `PartialObjectMetadata` (the default,
//! `includeObject=Metadata`), the whole object (`Object`) or nothing (`None`).
//! Limits: no custom printer columns; ages are rendered by the server at request time.

use serde_json::{json, Value};

use super::crd;
use super::http::{Req, Target};
#[cfg(test)]
use super::kinds::human_duration;
use super::kinds::{age, len, map_text, n, or_none, s, Col};
use super::resources::Resource;

fn joined(obj: &Value, list: &str, field: &str) -> String {
    obj.pointer(list)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| c.get(field).and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn pod_status(p: &Value) -> String {
    if p.pointer("/metadata/deletionTimestamp").is_some() {
        return "Terminating".into();
    }
    let statuses = p
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array);
    for c in statuses.into_iter().flatten() {
        let reason = s(c, "/state/waiting/reason");
        if !reason.is_empty() {
            return reason.into();
        }
        let reason = s(c, "/state/terminated/reason");
        if !reason.is_empty() {
            return reason.into();
        }
    }
    let reason = s(p, "/status/reason");
    if !reason.is_empty() {
        return reason.into();
    }
    match s(p, "/status/phase") {
        "" => "Pending".into(),
        phase => phase.into(),
    }
}

fn service_ports(svc: &Value) -> String {
    let ports = svc.pointer("/spec/ports").and_then(Value::as_array);
    let parts: Vec<String> = ports
        .into_iter()
        .flatten()
        .map(|p| {
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) => format!("{}:{np}/{proto}", n(p, "/port")),
                None => format!("{}/{proto}", n(p, "/port")),
            }
        })
        .collect();
    parts.join(",")
}

fn node_status(node: &Value) -> String {
    let conds = node.pointer("/status/conditions").and_then(Value::as_array);
    let ready = conds
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .map(|c| c["status"] == "True");
    let mut out = match ready {
        Some(true) => "Ready".to_string(),
        Some(false) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if node.pointer("/spec/unschedulable") == Some(&json!(true)) {
        out.push_str(",SchedulingDisabled");
    }
    out
}

/// `Pending`, or the CSR's condition types joined, plus `Issued` once signed (as kubectl
/// shows them).
fn csr_condition(csr: &Value) -> String {
    let mut parts: Vec<String> = csr
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c["type"].as_str().map(str::to_string))
        .collect();
    if parts.is_empty() {
        parts.push("Pending".into());
    }
    if !s(csr, "/status/certificate").is_empty() {
        parts.push("Issued".into());
    }
    parts.join(",")
}

fn node_roles(node: &Value) -> String {
    let roles: Vec<&str> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
        .collect();
    roles.join(",")
}

fn node_address(node: &Value, kind: &str) -> String {
    node.pointer("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|a| a["type"] == kind)
        .and_then(|a| a["address"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// The columns of a kind and the cells of one object.
/// The columns of `res` and the cells of `o`: from the kind's file when it has one.
fn columns_and_cells(res: &Resource, o: &Value) -> (Vec<Col>, Vec<Value>) {
    match res.strategy.and_then(|s| s.table) {
        Some(table) => table(o),
        None => builtin_columns_and_cells(res.kind, o),
    }
}

fn builtin_columns_and_cells(kind: &str, o: &Value) -> (Vec<Col>, Vec<Value>) {
    let name = json!(s(o, "/metadata/name"));
    let pair = |a: &str, b: &str| json!(format!("{}/{}", n(o, a), n(o, b)));
    match kind {
        "Pod" => {
            let statuses = o
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array);
            let ready = statuses
                .into_iter()
                .flatten()
                .filter(|c| c["ready"] == true)
                .count();
            let restarts: i64 = statuses
                .into_iter()
                .flatten()
                .map(|c| n(c, "/restartCount"))
                .sum();
            (
                vec![
                    ("Name", "string", 0),
                    ("Ready", "string", 0),
                    ("Status", "string", 0),
                    ("Restarts", "string", 0),
                    ("Age", "string", 0),
                    ("IP", "string", 1),
                    ("Node", "string", 1),
                    ("Nominated Node", "string", 1),
                    ("Readiness Gates", "string", 1),
                ],
                vec![
                    name,
                    json!(format!("{ready}/{}", len(o, "/spec/containers"))),
                    json!(pod_status(o)),
                    json!(restarts.to_string()),
                    json!(age(o)),
                    or_none(s(o, "/status/podIP").into()),
                    or_none(s(o, "/spec/nodeName").into()),
                    or_none(s(o, "/status/nominatedNodeName").into()),
                    json!("<none>"),
                ],
            )
        }
        "Namespace" => (
            vec![
                ("Name", "string", 0),
                ("Status", "string", 0),
                ("Age", "string", 0),
            ],
            vec![
                name,
                json!(match s(o, "/status/phase") {
                    "" => "Active",
                    p => p,
                }),
                json!(age(o)),
            ],
        ),
        "Node" => (
            vec![
                ("Name", "string", 0),
                ("Status", "string", 0),
                ("Roles", "string", 0),
                ("Age", "string", 0),
                ("Version", "string", 0),
                ("Internal-IP", "string", 1),
                ("External-IP", "string", 1),
                ("OS-Image", "string", 1),
                ("Kernel-Version", "string", 1),
                ("Container-Runtime", "string", 1),
            ],
            vec![
                name,
                json!(node_status(o)),
                or_none(node_roles(o)),
                json!(age(o)),
                json!(s(o, "/status/nodeInfo/kubeletVersion")),
                or_none(node_address(o, "InternalIP")),
                or_none(node_address(o, "ExternalIP")),
                json!(s(o, "/status/nodeInfo/osImage")),
                json!(s(o, "/status/nodeInfo/kernelVersion")),
                json!(s(o, "/status/nodeInfo/containerRuntimeVersion")),
            ],
        ),
        "Deployment" => (
            vec![
                ("Name", "string", 0),
                ("Ready", "string", 0),
                ("Up-to-date", "integer", 0),
                ("Available", "integer", 0),
                ("Age", "string", 0),
                ("Containers", "string", 1),
                ("Images", "string", 1),
                ("Selector", "string", 1),
            ],
            vec![
                name,
                pair("/status/readyReplicas", "/spec/replicas"),
                json!(n(o, "/status/updatedReplicas")),
                json!(n(o, "/status/availableReplicas")),
                json!(age(o)),
                json!(joined(o, "/spec/template/spec/containers", "name")),
                json!(joined(o, "/spec/template/spec/containers", "image")),
                json!(map_text(o, "/spec/selector/matchLabels")),
            ],
        ),
        "ReplicaSet" => (
            vec![
                ("Name", "string", 0),
                ("Desired", "integer", 0),
                ("Current", "integer", 0),
                ("Ready", "integer", 0),
                ("Age", "string", 0),
                ("Containers", "string", 1),
                ("Images", "string", 1),
                ("Selector", "string", 1),
            ],
            vec![
                name,
                json!(n(o, "/spec/replicas")),
                json!(n(o, "/status/replicas")),
                json!(n(o, "/status/readyReplicas")),
                json!(age(o)),
                json!(joined(o, "/spec/template/spec/containers", "name")),
                json!(joined(o, "/spec/template/spec/containers", "image")),
                json!(map_text(o, "/spec/selector/matchLabels")),
            ],
        ),
        "StatefulSet" => (
            vec![
                ("Name", "string", 0),
                ("Ready", "string", 0),
                ("Age", "string", 0),
                ("Containers", "string", 1),
                ("Images", "string", 1),
            ],
            vec![
                name,
                pair("/status/readyReplicas", "/spec/replicas"),
                json!(age(o)),
                json!(joined(o, "/spec/template/spec/containers", "name")),
                json!(joined(o, "/spec/template/spec/containers", "image")),
            ],
        ),
        "DaemonSet" => (
            vec![
                ("Name", "string", 0),
                ("Desired", "integer", 0),
                ("Current", "integer", 0),
                ("Ready", "integer", 0),
                ("Up-to-date", "integer", 0),
                ("Available", "integer", 0),
                ("Node Selector", "string", 0),
                ("Age", "string", 0),
            ],
            vec![
                name,
                json!(n(o, "/status/desiredNumberScheduled")),
                json!(n(o, "/status/currentNumberScheduled")),
                json!(n(o, "/status/numberReady")),
                json!(n(o, "/status/updatedNumberScheduled")),
                json!(n(o, "/status/numberAvailable")),
                or_none(map_text(o, "/spec/template/spec/nodeSelector")),
                json!(age(o)),
            ],
        ),
        "Service" => {
            let external = joined(o, "/status/loadBalancer/ingress", "ip");
            let ext_ips = o
                .pointer("/spec/externalIPs")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let external = if external.is_empty() {
                ext_ips
            } else {
                external
            };
            (
                vec![
                    ("Name", "string", 0),
                    ("Type", "string", 0),
                    ("Cluster-IP", "string", 0),
                    ("External-IP", "string", 0),
                    ("Port(s)", "string", 0),
                    ("Age", "string", 0),
                    ("Selector", "string", 1),
                ],
                vec![
                    name,
                    json!(s(o, "/spec/type")),
                    json!(s(o, "/spec/clusterIP")),
                    or_none(external),
                    or_none(service_ports(o)),
                    json!(age(o)),
                    or_none(map_text(o, "/spec/selector")),
                ],
            )
        }
        "CertificateSigningRequest" => (
            vec![
                ("Name", "string", 0),
                ("Age", "string", 0),
                ("SignerName", "string", 0),
                ("Requestor", "string", 0),
                ("RequestedDuration", "string", 0),
                ("Condition", "string", 0),
            ],
            vec![
                name,
                json!(age(o)),
                json!(s(o, "/spec/signerName")),
                json!(s(o, "/spec/username")),
                or_none(match n(o, "/spec/expirationSeconds") {
                    0 => String::new(),
                    secs => format!("{}m", secs / 60),
                }),
                json!(csr_condition(o)),
            ],
        ),
        "Secret" => (
            vec![
                ("Name", "string", 0),
                ("Type", "string", 0),
                ("Data", "integer", 0),
                ("Age", "string", 0),
            ],
            vec![
                name,
                json!(s(o, "/type")),
                json!(len(o, "/data")),
                json!(age(o)),
            ],
        ),
        "ServiceAccount" => (
            vec![
                ("Name", "string", 0),
                ("Secrets", "integer", 0),
                ("Age", "string", 0),
            ],
            vec![name, json!(len(o, "/secrets")), json!(age(o))],
        ),
        "Job" => {
            let done = o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|c| {
                    (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True"
                })
                .and_then(|c| c["type"].as_str())
                .unwrap_or("Running");
            (
                vec![
                    ("Name", "string", 0),
                    ("Status", "string", 0),
                    ("Completions", "string", 0),
                    ("Age", "string", 0),
                ],
                vec![
                    name,
                    json!(done),
                    json!(format!(
                        "{}/{}",
                        n(o, "/status/succeeded"),
                        o.pointer("/spec/completions")
                            .and_then(Value::as_i64)
                            .unwrap_or(1)
                    )),
                    json!(age(o)),
                ],
            )
        }
        "CronJob" => (
            vec![
                ("Name", "string", 0),
                ("Schedule", "string", 0),
                ("Suspend", "boolean", 0),
                ("Active", "integer", 0),
                ("Age", "string", 0),
            ],
            vec![
                name,
                json!(s(o, "/spec/schedule")),
                json!(o
                    .pointer("/spec/suspend")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)),
                json!(len(o, "/status/active")),
                json!(age(o)),
            ],
        ),
        _ => (
            vec![("Name", "string", 0), ("Age", "string", 0)],
            vec![name, json!(age(o))],
        ),
    }
}

/// The Table for `objs` as the request asks (see [`table_with`]).
pub fn table(t: &Target, objs: &[Value], req: &Req, rv: &str, cont: Option<&str>) -> Value {
    table_with(
        t.res,
        t.custom.as_deref(),
        objs,
        req.q("includeObject"),
        &req.accept,
        rv,
        cont,
    )
}

/// The Table for `objs`; `include` is the `includeObject` parameter.
/// A custom kind's columns are its CRD's `additionalPrinterColumns` after NAME.
pub fn table_with(
    res: &Resource,
    custom: Option<&crd::Version>,
    objs: &[Value],
    include: Option<&str>,
    accept: &str,
    rv: &str,
    cont: Option<&str>,
) -> Value {
    let name_def = |name: &str, typ: &str, priority: u8| {
        let format = if name == "Name" { "name" } else { "" };
        json!({"name": name, "type": typ, "format": format, "description": "", "priority": priority})
    };
    let defs: Vec<Value> = match custom {
        Some(c) => std::iter::once(name_def("Name", "string", 0))
            .chain(c.columns.iter().map(crd::columns::Column::definition))
            .collect(),
        None => columns_and_cells(res, &json!({}))
            .0
            .iter()
            .map(|(name, typ, priority)| name_def(name, typ, *priority))
            .collect(),
    };
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let cells = match custom {
                Some(c) => std::iter::once(json!(s(o, "/metadata/name")))
                    .chain(c.columns.iter().map(|col| col.cell(o)))
                    .collect(),
                None => columns_and_cells(res, o).1,
            };
            let object = match include {
                Some("None") => Value::Null,
                Some("Object") => o.clone(),
                _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}),
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    let version = if accept
        .split(',')
        .next()
        .is_some_and(|a| a.contains("v=v1beta1"))
    {
        "v1beta1"
    } else {
        "v1"
    };
    let mut metadata = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        metadata["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": metadata,
        "columnDefinitions": defs,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::by_plural;

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(310), "5m10s");
        assert_eq!(human_duration(45 * 60), "45m");
        assert_eq!(human_duration(5 * 3600 + 60), "5h1m");
        assert_eq!(human_duration(20 * 3600), "20h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(200 * 86400), "200d");
    }

    #[test]
    fn pod_rows_count_ready_containers_and_restarts() {
        let pod = json!({"metadata": {"name": "web", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.244.0.5", "containerStatuses": [
                {"ready": true, "restartCount": 2}, {"ready": false, "restartCount": 1,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let t = table_with(
            by_plural("pods").expect("pods"),
            None,
            &[pod],
            None,
            "",
            "7",
            None,
        );
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "web");
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], "3");
        assert_eq!(cells[6], "n1");
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn service_rows_show_node_ports_and_configmaps_count_keys() {
        let svc = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.9",
            "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]}});
        let t = table_with(
            by_plural("services").expect("svc"),
            None,
            &[svc],
            Some("Object"),
            "",
            "1",
            None,
        );
        assert_eq!(t["rows"][0]["cells"][4], "80:30080/TCP");
        assert_eq!(t["rows"][0]["cells"][3], "<none>");
        assert_eq!(t["rows"][0]["object"]["kind"], Value::Null);
        let cm = json!({"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}});
        let t = table_with(
            by_plural("configmaps").expect("cm"),
            None,
            &[cm],
            None,
            "",
            "1",
            None,
        );
        assert_eq!(t["rows"][0]["cells"][1], 2);
    }
}
