//! Pod Security admission: the Pod Security Standards (`privileged`, `baseline`,
//! `restricted`) enforced per namespace, as kube-apiserver's built-in PodSecurity plugin.
//!
//! What: a namespace chooses its level with the label
//! `pod-security.kubernetes.io/enforce`; a pod created there (or updated with a changed
//! spec) that breaks a rule of that level is refused with 403 and kube-apiserver's message,
//! `pods "x" is forbidden: violates PodSecurity "baseline:latest": host namespaces
//! (hostNetwork=true), …`. Without the label a namespace is `baseline` (kube-apiserver's
//! default is `privileged`; kimg is stricter so that a workload cannot take its node by
//! default), except `kube-system`, which is `privileged` for the cluster's own agents.
//! Namespace labels with an unknown level are refused (422). The rules are the standard's
//! `latest` version (the `-version` labels are accepted and not consulted):
//! - baseline: no host namespaces, privileged containers, added capabilities beyond the
//!   default set, hostPath volumes, host ports, custom SELinux users/roles/types, non-default
//!   `/proc` mounts, `Unconfined` seccomp or AppArmor, unsafe sysctls, or Windows host
//!   processes;
//! - restricted: baseline, and only the volume types that carry no host state,
//!   `allowPrivilegeEscalation: false`, `runAsNonRoot: true`, no `runAsUser: 0`, a
//!   `RuntimeDefault` or `Localhost` seccomp profile, capabilities dropping `ALL` and adding
//!   at most `NET_BIND_SERVICE`.
//!
//! Warnings, as kube-apiserver gives them: a pod that breaks the `warn` label's level is
//! admitted with `Warning: would violate PodSecurity "restricted:latest": …` (kubectl prints
//! it), and a workload (Deployment, ReplicaSet, DaemonSet, StatefulSet, Job, CronJob,
//! ReplicationController) whose pod template breaks the enforced or the `warn` level is
//! admitted with that warning: its pods would be refused.
//!
//! Limits: the `audit` label is accepted but adds no audit annotations; there are no
//! exemptions (users, runtime classes).

use serde_json::Value;

/// The label that sets a namespace's enforced level.
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";
/// The label that sets the level whose violations are only warned about.
pub const WARN_LABEL: &str = "pod-security.kubernetes.io/warn";
const MODE_LABELS: [&str; 3] = [
    "pod-security.kubernetes.io/enforce",
    "pod-security.kubernetes.io/warn",
    "pod-security.kubernetes.io/audit",
];

/// A Pod Security Standards level, from least to most restrictive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// The level enforced in a namespace with these labels (see the module docs).
pub fn enforced_level(namespace: &str, labels: Option<&Value>) -> Level {
    let label = labels
        .and_then(|l| l.get(ENFORCE_LABEL))
        .and_then(Value::as_str);
    match label {
        // An invalid value cannot be stored (see `validate_namespace_labels`); if one is
        // there anyway, the strictest level applies, as in kube-apiserver.
        Some(v) => Level::parse(v).unwrap_or(Level::Restricted),
        None if namespace == "kube-system" => Level::Privileged,
        None => Level::Baseline,
    }
}

/// The enforced level and, when the namespace sets `pod-security.kubernetes.io/warn`, the
/// level whose violations are reported as warnings.
pub fn levels(namespace: &str, labels: Option<&Value>) -> (Level, Option<Level>) {
    let warn = labels
        .and_then(|l| l.get(WARN_LABEL))
        .and_then(Value::as_str)
        .map(|v| Level::parse(v).unwrap_or(Level::Restricted));
    (enforced_level(namespace, labels), warn)
}

/// Refuses namespace labels that name an unknown level: `<field>: <why>` for a 422.
pub fn validate_namespace_labels(labels: Option<&Value>) -> Result<(), String> {
    let Some(labels) = labels.and_then(Value::as_object) else {
        return Ok(());
    };
    for key in MODE_LABELS {
        if let Some(v) = labels.get(key) {
            let v = v.as_str().unwrap_or_default();
            if Level::parse(v).is_none() {
                return Err(format!(
                    "metadata.labels[{key}]: Invalid value: {v:?}: must be one of privileged, \
                     baseline, restricted"
                ));
            }
        }
    }
    Ok(())
}

/// The message of a refusal: `violates PodSecurity "baseline:latest": …`, or `None` when
/// the pod meets `level`.
pub fn violations(level: Level, pod: &Value) -> Option<String> {
    let mut found = Vec::new();
    if level >= Level::Baseline {
        baseline(pod, &mut found);
    }
    if level >= Level::Restricted {
        restricted(pod, &mut found);
    }
    if found.is_empty() {
        return None;
    }
    Some(format!(
        "violates PodSecurity \"{}:latest\": {}",
        level.name(),
        found.join(", ")
    ))
}

/// Every container of the pod with its name: init, regular and ephemeral.
fn containers(spec: &Value) -> impl Iterator<Item = (&str, &Value)> {
    ["initContainers", "containers", "ephemeralContainers"]
        .into_iter()
        .flat_map(move |list| spec[list].as_array().into_iter().flatten())
        .map(|c| (c["name"].as_str().unwrap_or_default(), c))
}

/// The names of the containers for which `bad` holds.
fn offenders(spec: &Value, bad: impl Fn(&Value) -> bool) -> Vec<&str> {
    containers(spec)
        .filter(|(_, c)| bad(c))
        .map(|(n, _)| n)
        .collect()
}

/// `container "a"` or `containers "a", "b"`.
fn named(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    let noun = if names.len() == 1 {
        "container"
    } else {
        "containers"
    };
    format!("{noun} {}", quoted.join(", "))
}

/// Capabilities the baseline level lets a container add (the container runtime's default
/// set).
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Sysctls that are namespaced and cannot affect other pods or the node.
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

const SELINUX_TYPES: &[&str] = &[
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

fn baseline(pod: &Value, found: &mut Vec<String>) {
    let spec = &pod["spec"];
    let psc = &spec["securityContext"];
    let is_true = |v: &Value| v.as_bool() == Some(true);

    if is_true(&psc["windowsOptions"]["hostProcess"])
        || containers(spec)
            .any(|(_, c)| is_true(&c["securityContext"]["windowsOptions"]["hostProcess"]))
    {
        found.push("hostProcess (pod or containers must not set securityContext.windowsOptions.hostProcess=true)".into());
    }
    let host: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .into_iter()
        .filter(|f| is_true(&spec[*f]))
        .map(|f| format!("{f}=true"))
        .collect();
    if !host.is_empty() {
        found.push(format!("host namespaces ({})", host.join(", ")));
    }
    let privileged: Vec<&str> = offenders(spec, |c| is_true(&c["securityContext"]["privileged"]));
    if !privileged.is_empty() {
        found.push(format!(
            "privileged ({} must not set securityContext.privileged=true)",
            named(&privileged)
        ));
    }
    let mut caps_who = Vec::new();
    let mut caps = Vec::new();
    for (n, c) in containers(spec) {
        let extra: Vec<&str> = c["securityContext"]["capabilities"]["add"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|cap| !BASELINE_CAPABILITIES.contains(cap))
            .collect();
        if !extra.is_empty() {
            caps_who.push(n);
            for cap in extra {
                if !caps.contains(&cap) {
                    caps.push(cap);
                }
            }
        }
    }
    if !caps_who.is_empty() {
        let quoted: Vec<String> = caps.iter().map(|c| format!("{c:?}")).collect();
        found.push(format!(
            "non-default capabilities ({} must not include {} in securityContext.capabilities.add)",
            named(&caps_who),
            quoted.join(", ")
        ));
    }
    let host_paths: Vec<String> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v.get("hostPath").is_some())
        .map(|v| format!("{:?}", v["name"].as_str().unwrap_or_default()))
        .collect();
    if !host_paths.is_empty() {
        let noun = if host_paths.len() == 1 {
            "volume"
        } else {
            "volumes"
        };
        found.push(format!(
            "hostPath volumes ({noun} {})",
            host_paths.join(", ")
        ));
    }
    let mut port_who = Vec::new();
    let mut ports = Vec::new();
    for (n, c) in containers(spec) {
        let hp: Vec<i64> = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["hostPort"].as_i64())
            .filter(|p| *p != 0)
            .collect();
        if !hp.is_empty() {
            port_who.push(n);
            ports.extend(hp);
        }
    }
    if !port_who.is_empty() {
        let ports: Vec<String> = ports.iter().map(i64::to_string).collect();
        found.push(format!(
            "hostPort ({} uses hostPort {})",
            named(&port_who),
            ports.join(", ")
        ));
    }
    let apparmor_bad = |p: &Value| {
        p["type"]
            .as_str()
            .is_some_and(|t| t != "RuntimeDefault" && t != "Localhost")
    };
    let annotation_bad = pod["metadata"]["annotations"]
        .as_object()
        .into_iter()
        .flatten()
        .any(|(k, v)| {
            k.starts_with("container.apparmor.security.beta.kubernetes.io/")
                && v.as_str()
                    .is_some_and(|v| v != "runtime/default" && !v.starts_with("localhost/"))
        });
    if annotation_bad
        || apparmor_bad(&psc["appArmorProfile"])
        || containers(spec).any(|(_, c)| apparmor_bad(&c["securityContext"]["appArmorProfile"]))
    {
        found.push("forbidden AppArmor profile (must be RuntimeDefault or Localhost)".into());
    }
    let selinux_bad = |o: &Value| {
        !SELINUX_TYPES.contains(&o["type"].as_str().unwrap_or_default())
            || o.get("user").is_some_and(|u| !u.is_null())
            || o.get("role").is_some_and(|r| !r.is_null())
    };
    if selinux_bad(&psc["seLinuxOptions"])
        || containers(spec).any(|(_, c)| selinux_bad(&c["securityContext"]["seLinuxOptions"]))
    {
        found.push(
            "seLinuxOptions (type must be a container type; user and role must not be set)".into(),
        );
    }
    let proc_mount: Vec<&str> = offenders(spec, |c| {
        c["securityContext"]["procMount"]
            .as_str()
            .is_some_and(|m| m != "Default")
    });
    if !proc_mount.is_empty() {
        found.push(format!(
            "procMount ({} must not set securityContext.procMount)",
            named(&proc_mount)
        ));
    }
    let unconfined = |sc: &Value| sc["seccompProfile"]["type"].as_str() == Some("Unconfined");
    let unconfined_ctrs: Vec<&str> = offenders(spec, |c| unconfined(&c["securityContext"]));
    if unconfined(psc) {
        found.push("seccompProfile (pod must not set securityContext.seccompProfile.type to \"Unconfined\")".into());
    }
    if !unconfined_ctrs.is_empty() {
        found.push(format!(
            "seccompProfile ({} must not set securityContext.seccompProfile.type to \"Unconfined\")",
            named(&unconfined_ctrs)
        ));
    }
    let sysctls: Vec<String> = psc["sysctls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .filter(|n| !SAFE_SYSCTLS.contains(n))
        .map(|n| format!("{n:?}"))
        .collect();
    if !sysctls.is_empty() {
        found.push(format!(
            "forbidden sysctls ({})",
            sysctls.join(", ").replace('"', "")
        ));
    }
}

/// Volume types the restricted level allows.
const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

fn restricted(pod: &Value, found: &mut Vec<String>) {
    let spec = &pod["spec"];
    let psc = &spec["securityContext"];

    let mut bad_volumes = Vec::new();
    let mut bad_types = Vec::new();
    for v in spec["volumes"].as_array().into_iter().flatten() {
        let Some(obj) = v.as_object() else { continue };
        // hostPath is already a baseline violation.
        if let Some(t) = obj
            .keys()
            .find(|k| *k != "name" && *k != "hostPath" && !RESTRICTED_VOLUMES.contains(&k.as_str()))
        {
            bad_volumes.push(format!("{:?}", v["name"].as_str().unwrap_or_default()));
            if !bad_types.contains(t) {
                bad_types.push(t.clone());
            }
        }
    }
    if !bad_volumes.is_empty() {
        let noun = if bad_volumes.len() == 1 {
            "volume"
        } else {
            "volumes"
        };
        let uses = if bad_volumes.len() == 1 {
            "uses"
        } else {
            "use"
        };
        found.push(format!(
            "restricted volume types ({noun} {} {uses} restricted volume type {})",
            bad_volumes.join(", "),
            bad_types
                .iter()
                .map(|t| format!("{t:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let escalation: Vec<&str> = offenders(spec, |c| {
        c["securityContext"]["allowPrivilegeEscalation"].as_bool() != Some(false)
    });
    if !escalation.is_empty() {
        found.push(format!(
            "allowPrivilegeEscalation != false ({} must set securityContext.allowPrivilegeEscalation=false)",
            named(&escalation)
        ));
    }
    let pod_non_root = psc["runAsNonRoot"].as_bool();
    let root_allowed: Vec<&str> = offenders(spec, |c| {
        match c["securityContext"]["runAsNonRoot"].as_bool() {
            Some(v) => !v,
            None => pod_non_root != Some(true),
        }
    });
    if pod_non_root == Some(false) {
        found.push(
            "runAsNonRoot != true (pod must not set securityContext.runAsNonRoot=false)".into(),
        );
    } else if !root_allowed.is_empty() {
        found.push(format!(
            "runAsNonRoot != true (pod or {} must set securityContext.runAsNonRoot=true)",
            named(&root_allowed)
        ));
    }
    let root_user: Vec<&str> = offenders(spec, |c| {
        c["securityContext"]["runAsUser"].as_i64() == Some(0)
    });
    if psc["runAsUser"].as_i64() == Some(0) {
        found.push("runAsUser=0 (pod must not set runAsUser=0)".into());
    }
    if !root_user.is_empty() {
        found.push(format!(
            "runAsUser=0 ({} must not set runAsUser=0)",
            named(&root_user)
        ));
    }
    let allowed_seccomp = |t: Option<&str>| matches!(t, Some("RuntimeDefault") | Some("Localhost"));
    let pod_seccomp = psc["seccompProfile"]["type"].as_str();
    let no_seccomp: Vec<&str> = offenders(spec, |c| {
        let own = c["securityContext"]["seccompProfile"]["type"].as_str();
        own.is_none() && !allowed_seccomp(pod_seccomp)
    });
    if !no_seccomp.is_empty() {
        found.push(format!(
            "seccompProfile (pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")",
            named(&no_seccomp)
        ));
    }
    let no_drop: Vec<&str> = offenders(spec, |c| {
        !c["securityContext"]["capabilities"]["drop"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d.as_str() == Some("ALL"))
    });
    if !no_drop.is_empty() {
        found.push(format!(
            "unrestricted capabilities ({} must set securityContext.capabilities.drop=[\"ALL\"])",
            named(&no_drop)
        ));
    }
    let adds: Vec<&str> = offenders(spec, |c| {
        c["securityContext"]["capabilities"]["add"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a.as_str() != Some("NET_BIND_SERVICE"))
    });
    if !adds.is_empty() {
        found.push(format!(
            "unrestricted capabilities ({} must not include capabilities other than NET_BIND_SERVICE in securityContext.capabilities.add)",
            named(&adds)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": spec})
    }

    fn plain() -> Value {
        pod(json!({"containers": [{"name": "c", "image": "busybox"}]}))
    }

    /// What the restricted level asks of a container.
    fn hardened() -> Value {
        pod(json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "busybox", "securityContext": {
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
            }}],
            "volumes": [{"name": "d", "emptyDir": {}}, {"name": "s", "secret": {"secretName": "x"}}]
        }))
    }

    #[test]
    fn namespaces_default_to_baseline_and_kube_system_to_privileged() {
        assert_eq!(enforced_level("default", None), Level::Baseline);
        assert_eq!(enforced_level("kube-system", None), Level::Privileged);
        let labels = json!({ENFORCE_LABEL: "restricted"});
        assert_eq!(
            enforced_level("kube-system", Some(&labels)),
            Level::Restricted
        );
        let labels = json!({ENFORCE_LABEL: "privileged"});
        assert_eq!(enforced_level("default", Some(&labels)), Level::Privileged);
        let labels = json!({ENFORCE_LABEL: "lenient"});
        assert_eq!(enforced_level("default", Some(&labels)), Level::Restricted);
    }

    #[test]
    fn unknown_levels_in_namespace_labels_are_refused() {
        let ok = json!({"pod-security.kubernetes.io/warn": "restricted", "team": "a"});
        assert!(validate_namespace_labels(Some(&ok)).is_ok());
        let bad = json!({"pod-security.kubernetes.io/audit": "strict"});
        let e = validate_namespace_labels(Some(&bad)).unwrap_err();
        assert!(
            e.contains("pod-security.kubernetes.io/audit") && e.contains("\"strict\""),
            "{e}"
        );
    }

    #[test]
    fn a_plain_pod_meets_baseline_but_not_restricted() {
        assert_eq!(violations(Level::Baseline, &plain()), None);
        assert_eq!(violations(Level::Privileged, &plain()), None);
        let v = violations(Level::Restricted, &plain()).expect("restricted refuses");
        assert!(
            v.starts_with("violates PodSecurity \"restricted:latest\": "),
            "{v}"
        );
        for rule in [
            "allowPrivilegeEscalation != false",
            "runAsNonRoot != true",
            "seccompProfile",
            "unrestricted capabilities",
        ] {
            assert!(v.contains(rule), "{rule} missing from {v}");
        }
        assert_eq!(violations(Level::Restricted, &hardened()), None);
    }

    #[test]
    fn each_baseline_rule_refuses_what_it_names() {
        let cases = [
            (
                json!({"hostNetwork": true, "hostPID": true, "containers": [{"name": "c"}]}),
                "host namespaces (hostNetwork=true, hostPID=true)",
            ),
            (
                json!({"containers": [{"name": "c", "securityContext": {"privileged": true}}]}),
                "privileged (container \"c\" must not set securityContext.privileged=true)",
            ),
            (
                json!({"containers": [{"name": "c", "securityContext": {"capabilities": {"add": ["SYS_ADMIN", "CHOWN"]}}}]}),
                "non-default capabilities (container \"c\" must not include \"SYS_ADMIN\"",
            ),
            (
                json!({"containers": [{"name": "c"}], "volumes": [{"name": "root", "hostPath": {"path": "/"}}]}),
                "hostPath volumes (volume \"root\")",
            ),
            (
                json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 80}]}]}),
                "hostPort (container \"c\" uses hostPort 80)",
            ),
            (
                json!({"containers": [{"name": "c", "securityContext": {"seccompProfile": {"type": "Unconfined"}}}]}),
                "seccompProfile (container \"c\" must not set",
            ),
            (
                json!({"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}, "containers": [{"name": "c"}]}),
                "forbidden sysctls (kernel.msgmax)",
            ),
            (
                json!({"containers": [{"name": "c", "securityContext": {"procMount": "Unmasked"}}]}),
                "procMount (container \"c\"",
            ),
            (
                json!({"securityContext": {"seLinuxOptions": {"user": "system_u"}}, "containers": [{"name": "c"}]}),
                "seLinuxOptions",
            ),
            (
                json!({"initContainers": [{"name": "i", "securityContext": {"windowsOptions": {"hostProcess": true}}}], "containers": [{"name": "c"}]}),
                "hostProcess",
            ),
        ];
        for (spec, expected) in cases {
            let v = violations(Level::Baseline, &pod(spec.clone()))
                .unwrap_or_else(|| panic!("baseline admitted {spec}"));
            assert!(v.contains(expected), "expected {expected:?} in {v}");
        }
        let safe = pod(
            json!({"securityContext": {"sysctls": [{"name": "net.ipv4.ip_local_port_range", "value": "1024 65535"}]},
            "containers": [{"name": "c", "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE", "CHOWN"]}}}]}),
        );
        assert_eq!(violations(Level::Baseline, &safe), None);
    }

    #[test]
    fn restricted_refuses_host_state_volumes_and_root() {
        let mut p = hardened();
        p["spec"]["volumes"] = json!([{"name": "n", "nfs": {"server": "s", "path": "/"}}]);
        p["spec"]["containers"][0]["securityContext"]["runAsUser"] = json!(0);
        let v = violations(Level::Restricted, &p).expect("refused");
        assert!(
            v.contains(
                "restricted volume types (volume \"n\" uses restricted volume type \"nfs\")"
            ),
            "{v}"
        );
        assert!(
            v.contains("runAsUser=0 (container \"c\" must not set runAsUser=0)"),
            "{v}"
        );
    }
}
