//! Admission: the checks a write passes after it is decoded, merged and defaulted and
//! before it is stored — the one place for rules that need the object itself, not just
//! the request's attributes (those are the authorizers': [`super::rbac`],
//! [`super::node_authz`]).
//!
//! What:
//! - RBAC escalation prevention, as kube-apiserver: writing a Role or ClusterRole needs
//!   every one of its rules to be held by the writer (in the role's namespace, or
//!   cluster-wide), or the `escalate` verb on it; writing a RoleBinding or
//!   ClusterRoleBinding needs the referenced role's rules to be held (in the binding's
//!   namespace), or the `bind` verb on that role. Updates that leave the rules, the
//!   `roleRef` and the subjects as they were pass (finalizers, labels). Role rules are
//!   validated first, as kube-apiserver does (a resource rule without `apiGroups` is 422).
//! - NodeRestriction's body checks: a node creates only its own Node, its own Lease in
//!   `kube-node-lease`, and pods bound to itself.
//! - Pod volumes, in pods and in the pod templates of workloads: volume names are unique
//!   RFC 1123 labels (a volume named `/etc` would otherwise name a host path), every
//!   volume mount names a volume and has a `mountPath`, and `subPath` stays inside its
//!   volume (relative, no `..`). Refusals are 422 with the field path, as kube-apiserver's.
//!
//! - Pod Security ([`super::pod_security`]): pods meet their namespace's level, and
//!   namespace labels name known levels. This one applies to every user, `system:masters`
//!   included (as kube-apiserver's PodSecurity plugin without exemptions).
//!
//! `system:masters` passes everything else.

use serde_json::Value;

use super::error::ApiError;
use super::http::{Req, Target};
use super::node_authz::node_name;
use super::object::meta_str;
use super::pod_security;
use super::rbac::{self, Attributes};
use super::tls::User;
use super::State;

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// Admits the write of `new` (replacing `old` on updates) by `user` at `t`.
pub async fn admit(
    st: &State,
    req: &Req,
    t: &Target,
    old: Option<&Value>,
    new: &Value,
) -> Result<(), ApiError> {
    let user = req.user.as_ref();
    if let Some(validate) = t.res.strategy.and_then(|s| s.validate) {
        if t.sub.is_none() {
            validate(new, old).map_err(|reason| ApiError::Invalid {
                kind: t.res.kind.to_string(),
                name: meta_str(new, "name").unwrap_or_default().to_string(),
                reason,
            })?;
        }
    }
    if let Some(spec) = pod_spec_of(t.res.kind, new).filter(|_| t.sub.is_none()) {
        let name = meta_str(new, "name").unwrap_or_default();
        validate_volumes(spec.1, spec.0).map_err(|reason| ApiError::Invalid {
            kind: t.res.kind.to_string(),
            name: name.to_string(),
            reason,
        })?;
    }
    if t.sub.is_none() {
        pod_security(st, req, t, old, new).await?;
    }
    let Some(user) = user.filter(|u| !u.is_master()) else {
        return Ok(());
    };
    if let Some(node) = node_name(user) {
        node_restriction(user, node, t, old, new)?;
    }
    if t.res.group == RBAC_GROUP && t.sub.is_none() {
        no_escalation(st, user, t, old, new).await?;
    }
    Ok(())
}

/// Pods meet the level their namespace enforces; namespaces label known levels. Pods that
/// break the `warn` level, and workloads whose pod template breaks the enforced or the
/// `warn` level, are admitted with a warning (`would violate PodSecurity …`), as
/// kube-apiserver does.
async fn pod_security(
    st: &State,
    req: &Req,
    t: &Target,
    old: Option<&Value>,
    new: &Value,
) -> Result<(), ApiError> {
    let name = || meta_str(new, "name").unwrap_or_default().to_string();
    if (t.res.group, t.res.plural) == ("", "namespaces") {
        return pod_security::validate_namespace_labels(new.pointer("/metadata/labels")).map_err(
            |reason| ApiError::Invalid {
                kind: "Namespace".into(),
                name: name(),
                reason,
            },
        );
    }
    let Some((_, spec)) = pod_spec_of(t.res.kind, new) else {
        return Ok(());
    };
    let spec_of = |o: &Value| pod_spec_of(t.res.kind, o).map(|(_, s)| s.clone());
    if old.is_some_and(|o| spec_of(o).as_ref() == Some(spec)) {
        return Ok(()); // status, labels and finalizers change nothing checked
    }
    let ns = t.namespace.as_deref().unwrap_or_default();
    let labels = match st.get_cached(&format!("/registry/namespaces/{ns}")).await? {
        Some(kv) => serde_json::from_slice::<Value>(&kv.value)
            .ok()
            .and_then(|v| v.pointer("/metadata/labels").cloned()),
        None => None,
    };
    let (enforce, warn) = pod_security::levels(ns, labels.as_ref());
    if t.res.kind == "Pod" {
        if let Some(why) = pod_security::violations(enforce, new) {
            return Err(ApiError::Forbidden {
                message: format!("pods \"{}\" is forbidden: {why}", name()),
                group: String::new(),
                resource: "pods".into(),
            });
        }
        if let Some(why) = warn.and_then(|w| pod_security::violations(w, new)) {
            req.warn(would(&why));
        }
        return Ok(());
    }
    // A workload: judge its pod template as the pods it will create.
    let pod = serde_json::json!({
        "metadata": new.pointer(&pod_template_meta(t.res.kind)).cloned().unwrap_or_default(),
        "spec": spec,
    });
    let level = warn.map_or(enforce, |w| w.max(enforce));
    if let Some(why) = pod_security::violations(level, &pod) {
        req.warn(would(&why));
    }
    Ok(())
}

/// `violates PodSecurity …` as a warning: `would violate PodSecurity …`.
fn would(why: &str) -> String {
    format!("would violate {}", why.trim_start_matches("violates "))
}

/// Where a workload keeps its pod template's metadata.
fn pod_template_meta(kind: &str) -> String {
    match kind {
        "CronJob" => "/spec/jobTemplate/spec/template/metadata".into(),
        _ => "/spec/template/metadata".into(),
    }
}

/// The pod spec an object of `kind` carries, with its field path.
fn pod_spec_of<'a>(kind: &str, obj: &'a Value) -> Option<(&'static str, &'a Value)> {
    let (path, ptr) = match kind {
        "Pod" => ("spec", "/spec"),
        "Deployment"
        | "ReplicaSet"
        | "DaemonSet"
        | "StatefulSet"
        | "Job"
        | "ReplicationController" => ("spec.template.spec", "/spec/template/spec"),
        "CronJob" => (
            "spec.jobTemplate.spec.template.spec",
            "/spec/jobTemplate/spec/template/spec",
        ),
        _ => return None,
    };
    obj.pointer(ptr)
        .filter(|v| v.is_object())
        .map(|v| (path, v))
}

/// See the module docs; the error is `<field path>: <why>`.
pub fn validate_volumes(spec: &Value, at: &str) -> Result<(), String> {
    let mut names = Vec::new();
    for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let name = v["name"].as_str().unwrap_or_default();
        let field = format!("{at}.volumes[{i}].name");
        if name.is_empty() {
            return Err(format!("{field}: Required value"));
        }
        if !crate::cluster::is_dns_label(name) {
            return Err(format!(
                "{field}: Invalid value: {name:?}: a lowercase RFC 1123 label must consist of \
                 lower case alphanumeric characters or '-', and must start and end with an \
                 alphanumeric character"
            ));
        }
        if names.contains(&name) {
            return Err(format!("{field}: Duplicate value: {name:?}"));
        }
        names.push(name);
    }
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for (c, ctr) in spec[list].as_array().into_iter().flatten().enumerate() {
            for (m, mount) in ctr["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let field = format!("{at}.{list}[{c}].volumeMounts[{m}]");
                let name = mount["name"].as_str().unwrap_or_default();
                if !names.contains(&name) {
                    return Err(format!("{field}.name: Not found: {name:?}"));
                }
                if mount["mountPath"].as_str().unwrap_or_default().is_empty() {
                    return Err(format!("{field}.mountPath: Required value"));
                }
                let sub = mount["subPath"].as_str().unwrap_or_default();
                if sub.starts_with('/') || sub.split('/').any(|s| s == "..") {
                    return Err(format!(
                        "{field}.subPath: Invalid value: {sub:?}: must be a relative path \
                         without '..'"
                    ));
                }
            }
        }
    }
    Ok(())
}

fn forbidden(user: &User, t: &Target, new: &Value, why: String) -> ApiError {
    let name = meta_str(new, "name").unwrap_or_default();
    let resource = if t.res.group.is_empty() {
        t.res.plural.to_string()
    } else {
        format!("{}.{}", t.res.plural, t.res.group)
    };
    ApiError::Forbidden {
        message: format!(
            "{resource} \"{name}\" is forbidden: user \"{}\" {why}",
            user.name
        ),
        group: t.res.group.to_string(),
        resource: t.res.plural.to_string(),
    }
}

fn node_restriction(
    user: &User,
    node: &str,
    t: &Target,
    old: Option<&Value>,
    new: &Value,
) -> Result<(), ApiError> {
    if old.is_some() {
        return Ok(()); // updates are judged by name in the Node authorizer
    }
    let name = meta_str(new, "name").unwrap_or_default();
    let refuse = |what: &str| Err(forbidden(user, t, new, format!("(a node) may only {what}")));
    match (t.res.group, t.res.plural) {
        ("", "nodes") if name != node => refuse("create its own Node"),
        ("coordination.k8s.io", "leases") if name != node => {
            refuse("create its own Lease in kube-node-lease")
        }
        ("", "pods") if new.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node) => {
            refuse("create pods bound to itself")
        }
        _ => Ok(()),
    }
}

/// kube-apiserver's PolicyRule validation: verbs always; resource rules name API groups
/// and resources; only ClusterRoles may hold `nonResourceURLs`, and never mixed with
/// resources in one rule.
fn validate_rules(t: &Target, name: &str, role: &Value) -> Result<(), ApiError> {
    let rules = role["rules"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, r) in rules.iter().enumerate() {
        let has = |f: &str| r[f].as_array().is_some_and(|a| !a.is_empty());
        let why = if !has("verbs") {
            Some((
                "verbs",
                "Required value: verbs must contain at least one value",
            ))
        } else if has("nonResourceURLs") && t.res.plural == "roles" {
            Some((
                "nonResourceURLs",
                "Invalid value: namespaced rules cannot apply to non-resource URLs",
            ))
        } else if has("nonResourceURLs") && (has("resources") || has("apiGroups")) {
            Some((
                "nonResourceURLs",
                "Invalid value: rules cannot apply to both regular resources and non-resource URLs",
            ))
        } else if !has("nonResourceURLs") && !has("apiGroups") {
            Some((
                "apiGroups",
                "Required value: resource rules must supply at least one api group",
            ))
        } else if !has("nonResourceURLs") && !has("resources") {
            Some((
                "resources",
                "Required value: resource rules must supply at least one resource",
            ))
        } else {
            None
        };
        if let Some((field, why)) = why {
            return Err(ApiError::Invalid {
                kind: t.res.kind.to_string(),
                name: name.to_string(),
                reason: format!("rules[{i}].{field}: {why}"),
            });
        }
    }
    Ok(())
}

async fn no_escalation(
    st: &State,
    user: &User,
    t: &Target,
    old: Option<&Value>,
    new: &Value,
) -> Result<(), ApiError> {
    let ns = t.namespace.clone().unwrap_or_default();
    let name = meta_str(new, "name").unwrap_or_default().to_string();
    let may = |verb: &str, resource: &str, name: &str| Attributes {
        verb: verb.into(),
        group: RBAC_GROUP.into(),
        resource: resource.into(),
        namespace: ns.clone(),
        name: name.into(),
        ..Default::default()
    };
    let (granted, verb) = match t.res.plural {
        "roles" | "clusterroles" => {
            validate_rules(t, &name, new)?;
            if old.is_some_and(|o| o.get("rules") == new.get("rules")) {
                return Ok(());
            }
            if rbac::allowed(st, user, &may("escalate", t.res.plural, &name)).await? {
                return Ok(());
            }
            let rules = new["rules"].as_array().cloned().unwrap_or_default();
            (rules, "create or update")
        }
        "rolebindings" | "clusterrolebindings" => {
            if old.is_some_and(|o| {
                o.get("roleRef") == new.get("roleRef") && o.get("subjects") == new.get("subjects")
            }) {
                return Ok(());
            }
            let role_ref = &new["roleRef"];
            let role_resource = match role_ref["kind"].as_str() {
                Some("Role") => "roles",
                _ => "clusterroles",
            };
            let role_name = role_ref["name"].as_str().unwrap_or_default();
            if rbac::allowed(st, user, &may("bind", role_resource, role_name)).await? {
                return Ok(());
            }
            (rbac::role_rules(st, role_ref, &ns).await?, "bind")
        }
        _ => return Ok(()),
    };
    let held = rbac::user_rules(st, user, &ns).await?;
    let missing: Vec<String> = granted
        .iter()
        .flat_map(|r| rbac::uncovered(&held, r))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    const SHOWN: usize = 10;
    let mut list = missing
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    if missing.len() > SHOWN {
        list.push_str(&format!(" and {} more", missing.len() - SHOWN));
    }
    Err(forbidden(
        user,
        t,
        new,
        format!(
            "(groups={:?}) is attempting to grant RBAC permissions not currently held ({verb} \
             needs the `{}` verb otherwise): {list}",
            user.groups,
            if verb == "bind" { "bind" } else { "escalate" }
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::validate_volumes;
    use serde_json::json;

    #[test]
    fn volume_names_mounts_and_sub_paths_are_checked() {
        let ok = json!({"volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{"name": "c", "volumeMounts": [
                {"name": "data", "mountPath": "/d", "subPath": "a/b"}]}]});
        assert_eq!(validate_volumes(&ok, "spec"), Ok(()));
        let abs = json!({"volumes": [{"name": "/etc", "emptyDir": {}}]});
        let err = validate_volumes(&abs, "spec").unwrap_err();
        assert!(
            err.starts_with("spec.volumes[0].name: Invalid value: \"/etc\""),
            "{err}"
        );
        let dup = json!({"volumes": [{"name": "a"}, {"name": "a"}]});
        assert!(validate_volumes(&dup, "spec")
            .unwrap_err()
            .contains("Duplicate"));
        let missing = json!({"volumes": [], "containers": [{"volumeMounts": [
            {"name": "x", "mountPath": "/x"}]}]});
        assert_eq!(
            validate_volumes(&missing, "spec.template.spec").unwrap_err(),
            "spec.template.spec.containers[0].volumeMounts[0].name: Not found: \"x\""
        );
        let escape = json!({"volumes": [{"name": "a"}], "containers": [{"volumeMounts": [
            {"name": "a", "mountPath": "/x", "subPath": "../../etc"}]}]});
        assert!(validate_volumes(&escape, "spec")
            .unwrap_err()
            .contains("subPath"));
    }
}
