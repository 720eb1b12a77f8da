//! `ComponentStatus` (v1, cluster-scoped, deprecated since 1.19 but still what `kubectl
//! get cs` in the seeds asks): the health of the scheduler, the controller-manager and
//! etcd. Computed on every read, never stored ([`crate::apiserver`]'s
//! `component_status`); read-only, so the row serves `get` and `list` alone.

use k8s_openapi::api::core::v1::ComponentStatus;
use serde_json::{json, Value};

use super::{s, schema_of, Col, Strategy};

pub static STRATEGY: Strategy = Strategy {
    schema: schema_of::<ComponentStatus>,
    table: Some(table),
    defaults: None,
    validate: None,
};

/// The warning kube-apiserver sends with every read.
pub const DEPRECATED: &str = "v1 ComponentStatus is deprecated in v1.19+";

/// NAME, STATUS, MESSAGE, ERROR (kubectl's columns).
fn table(o: &Value) -> (Vec<Col>, Vec<Value>) {
    let healthy = o["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Healthy"))
        .cloned()
        .unwrap_or_default();
    let status = match s(&healthy, "/status") {
        "True" => "Healthy",
        "False" => "Unhealthy",
        _ => "Unknown",
    };
    (
        vec![
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Message", "string", 0),
            ("Error", "string", 0),
        ],
        vec![
            json!(s(o, "/metadata/name")),
            json!(status),
            json!(s(&healthy, "/message")),
            json!(s(&healthy, "/error")),
        ],
    )
}

/// One component's object.
pub fn object(name: &str, healthy: bool, message: &str, error: &str) -> Value {
    let mut cond = json!({"type": "Healthy", "status": if healthy { "True" } else { "False" },
                          "message": message});
    if !error.is_empty() {
        cond["error"] = json!(error);
    }
    json!({"kind": "ComponentStatus", "apiVersion": "v1",
           "metadata": {"name": name, "creationTimestamp": null}, "conditions": [cond]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_get_cs_columns() {
        let (cols, cells) = table(&object("scheduler", true, "ok", ""));
        assert_eq!(cols.len(), cells.len());
        assert_eq!(cells[1], "Healthy");
        assert_eq!(cells[2], "ok");
        let (_, cells) = table(&object("etcd-0", false, "", "no answer"));
        assert_eq!(cells[1], "Unhealthy");
        assert_eq!(cells[3], "no answer");
    }
}
