//! `APIService` (apiregistration.k8s.io/v1, cluster-scoped): registers an API server of
//! its own for one group/version, which the apiserver then proxies to
//! ([`crate::apiserver::aggregator`]). Served and validated as kube-aggregator does: the
//! name is `<version>.<group>`, priorities are bounded, a `caBundle` or
//! `insecureSkipTLSVerify` needs a service, and the service port defaults to 443. The
//! `Available` condition in `status` is kept by the aggregator's availability check.

use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use serde_json::{json, Value};

use super::{age, n, s, schema_of, set_default, Col, Strategy};

pub static STRATEGY: Strategy = Strategy {
    schema: schema_of::<APIService>,
    table: Some(table),
    defaults: Some(defaults),
    validate: Some(validate),
};

/// NAME, SERVICE, AVAILABLE, AGE (kubectl's columns).
fn table(o: &Value) -> (Vec<Col>, Vec<Value>) {
    let service = match o.pointer("/spec/service").filter(|v| v.is_object()) {
        Some(svc) => format!("{}/{}", s(svc, "/namespace"), s(svc, "/name")),
        None => "Local".into(),
    };
    let available = o
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Available"))
        .map(|c| match (s(c, "/status"), s(c, "/reason")) {
            ("True", _) => "True".to_string(),
            (status, "") => status.to_string(),
            (status, reason) => format!("{status} ({reason})"),
        })
        .unwrap_or_else(|| "Unknown".into());
    (
        vec![
            ("Name", "string", 0),
            ("Service", "string", 0),
            ("Available", "string", 0),
            ("Age", "string", 0),
        ],
        vec![
            json!(s(o, "/metadata/name")),
            json!(service),
            json!(available),
            json!(age(o)),
        ],
    )
}

/// `spec.service.port` defaults to 443.
fn defaults(o: &mut Value) {
    if o.pointer("/spec/service").is_some_and(Value::is_object) {
        set_default(o, &["spec", "service", "port"], json!(443));
    }
}

fn validate(new: &Value, _old: Option<&Value>) -> Result<(), String> {
    let name = s(new, "/metadata/name");
    let group = s(new, "/spec/group");
    let version = s(new, "/spec/version");
    if version.is_empty() {
        return Err("spec.version: Required value".into());
    }
    if !crate::cluster::is_dns_label(version) || version.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!(
            "spec.version: Invalid value: {}: a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
            json!(version)
        ));
    }
    if group.is_empty() && version != "v1" {
        return Err("spec.group: Required value: only v1 may have an empty group".into());
    }
    let subdomain = group.len() <= 253 && group.split('.').all(crate::cluster::is_dns_label);
    if !group.is_empty() && !subdomain {
        return Err(format!(
            "spec.group: Invalid value: {}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            json!(group)
        ));
    }
    let want = format!("{version}.{group}");
    if name != want {
        return Err(format!(
            "metadata.name: Invalid value: {}: must be `spec.version+\".\"+spec.group`: {}",
            json!(name),
            json!(want)
        ));
    }
    let group_priority = n(new, "/spec/groupPriorityMinimum");
    if !(1..=20000).contains(&group_priority) {
        return Err(format!(
            "spec.groupPriorityMinimum: Invalid value: {group_priority}: must be positive and less than 20000"
        ));
    }
    let version_priority = n(new, "/spec/versionPriority");
    if !(1..=1000).contains(&version_priority) {
        return Err(format!(
            "spec.versionPriority: Invalid value: {version_priority}: must be positive and less than 1000"
        ));
    }
    let ca = s(new, "/spec/caBundle");
    let skip = new
        .pointer("/spec/insecureSkipTLSVerify")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    match new.pointer("/spec/service").filter(|v| v.is_object()) {
        None if !ca.is_empty() => {
            return Err(
                "spec.caBundle: Invalid value: \"(bytes)\": may not be set if service is nil"
                    .into(),
            )
        }
        None if skip => {
            return Err(
                "spec.insecureSkipTLSVerify: Invalid value: true: may not be set if service is nil"
                    .into(),
            )
        }
        None => {}
        Some(svc) => {
            for (field, ptr) in [("namespace", "/namespace"), ("name", "/name")] {
                let v = s(svc, ptr);
                if v.is_empty() {
                    return Err(format!("spec.service.{field}: Required value"));
                }
                if !crate::cluster::is_dns_label(v) {
                    return Err(format!(
                        "spec.service.{field}: Invalid value: {}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
                        json!(v)
                    ));
                }
            }
            let port = n(svc, "/port");
            if !(1..=65535).contains(&port) {
                return Err(format!(
                    "spec.service.port: Invalid value: {port}: must be between 1 and 65535, inclusive"
                ));
            }
            if skip && !ca.is_empty() {
                return Err(
                    "spec.insecureSkipTLSVerify: Invalid value: true: may not be true if caBundle is present"
                        .into(),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(name: &str, spec: Value) -> Value {
        json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
               "metadata": {"name": name}, "spec": spec})
    }

    fn metrics() -> Value {
        api(
            "v1beta1.metrics.k8s.io",
            json!({"group": "metrics.k8s.io", "version": "v1beta1",
                   "groupPriorityMinimum": 100, "versionPriority": 100,
                   "insecureSkipTLSVerify": true,
                   "service": {"name": "metrics-server", "namespace": "kube-system"}}),
        )
    }

    #[test]
    fn metrics_server_s_registration_is_accepted_with_its_port_defaulted() {
        let mut o = metrics();
        defaults(&mut o);
        assert_eq!(o["spec"]["service"]["port"], 443);
        assert_eq!(validate(&o, None), Ok(()));
        let (cols, cells) = table(&o);
        assert_eq!(cols.len(), cells.len());
        assert_eq!(cells[1], "kube-system/metrics-server");
        assert_eq!(cells[2], "Unknown");
        o["status"] = json!({"conditions": [{"type": "Available", "status": "False",
                              "reason": "FailedDiscoveryCheck"}]});
        assert_eq!(table(&o).1[2], "False (FailedDiscoveryCheck)");
        let local = api(
            "v1.apps",
            json!({"group": "apps", "version": "v1", "groupPriorityMinimum": 17800,
                   "versionPriority": 15}),
        );
        assert_eq!(validate(&local, None), Ok(()));
        assert_eq!(table(&local).1[1], "Local");
    }

    #[test]
    fn each_refusal_names_the_field() {
        let with = |f: &dyn Fn(&mut Value)| {
            let mut o = metrics();
            defaults(&mut o);
            f(&mut o);
            o
        };
        let cases: Vec<(Value, &str)> = vec![
            (
                with(&|o| o["metadata"]["name"] = json!("metrics")),
                "metadata.name: Invalid value: \"metrics\": must be",
            ),
            (
                with(&|o| o["spec"]["version"] = json!("")),
                "spec.version: Required value",
            ),
            (
                with(&|o| o["spec"]["version"] = json!("1beta")),
                "spec.version: Invalid value",
            ),
            (
                with(&|o| o["spec"]["group"] = json!("Metrics_K8s")),
                "spec.group: Invalid value",
            ),
            (
                with(&|o| o["spec"]["groupPriorityMinimum"] = json!(0)),
                "spec.groupPriorityMinimum: Invalid value: 0",
            ),
            (
                with(&|o| o["spec"]["versionPriority"] = json!(1001)),
                "spec.versionPriority: Invalid value: 1001",
            ),
            (
                with(&|o| o["spec"]["service"]["name"] = json!("")),
                "spec.service.name: Required value",
            ),
            (
                with(&|o| o["spec"]["service"]["port"] = json!(70000)),
                "spec.service.port: Invalid value: 70000",
            ),
            (
                with(&|o| o["spec"]["caBundle"] = json!("Zm9v")),
                "may not be true if caBundle is present",
            ),
            (
                with(&|o| {
                    o["spec"].as_object_mut().expect("spec").remove("service");
                }),
                "spec.insecureSkipTLSVerify: Invalid value: true: may not be set if service is nil",
            ),
        ];
        for (o, want) in cases {
            let err = validate(&o, None).expect_err(want);
            assert!(err.contains(want), "{want}: {err}");
        }
    }
}
