//! RBAC authorization: Role, ClusterRole, RoleBinding and ClusterRoleBinding, evaluated
//! the way Kubernetes' RBAC authorizer does.
//!
//! What: a request is described by [`Attributes`] (verb, API group, resource, subresource,
//! namespace, name — or a non-resource path). It is allowed when some ClusterRoleBinding,
//! or some RoleBinding in the request's namespace, names the user (by `User`, `Group` or
//! `ServiceAccount` subject) and refers to a role with a rule that covers the request.
//! `system:masters` is allowed everything without a lookup. How: bindings and roles are
//! read from the watch cache as it stands (no etcd round trip per request; changes arrive
//! within the watch latency, as with kube-apiserver's informers); rules match with
//! `*` wildcards, `resource/subresource` and `*/subresource` forms, `resourceNames` (never
//! for create or collection verbs), and non-resource URLs with a trailing `*` prefix
//! match. Escalation is prevented on writes of roles and bindings ([`uncovered`], used by
//! [`super::admission`]): one may only grant what one holds, unless RBAC gives one the
//! `escalate` (roles) or `bind` (bindings) verb. Limits: ClusterRole `aggregationRule` is
//! not evaluated (the default `admin`, `edit` and `view` carry their rules directly, see
//! [`super::rbac_defaults`]).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};

pub use super::attributes::Attributes;
use super::error::ApiError;
use super::object::from_kv;
use super::tls::User;
use super::State;

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Whether one policy rule covers the request.
pub fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let verbs = strs(&rule["verbs"]);
    if !verbs.iter().any(|v| *v == "*" || *v == a.verb) {
        return false;
    }
    if let Some(path) = &a.path {
        return strs(&rule["nonResourceURLs"]).iter().any(|u| {
            *u == "*"
                || *u == path
                || u.strip_suffix('*')
                    .is_some_and(|prefix| path.starts_with(prefix))
        });
    }
    let groups = strs(&rule["apiGroups"]);
    if !groups.iter().any(|g| *g == "*" || *g == a.group) {
        return false;
    }
    let wanted = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let resource_ok = strs(&rule["resources"]).iter().any(|r| {
        *r == "*"
            || *r == wanted
            || (!a.subresource.is_empty()
                && r.strip_prefix("*/").is_some_and(|s| s == a.subresource))
    });
    if !resource_ok {
        return false;
    }
    let names = strs(&rule["resourceNames"]);
    names.is_empty() || (!a.name.is_empty() && names.contains(&a.name.as_str()))
}

/// Whether a binding's subject names the user. `default_ns` is a RoleBinding's namespace.
fn subject_matches(s: &Value, user: &User, default_ns: &str) -> bool {
    let name = s["name"].as_str().unwrap_or_default();
    match s["kind"].as_str() {
        Some("User") => user.name == name,
        Some("Group") => user.groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            let ns = s["namespace"]
                .as_str()
                .filter(|n| !n.is_empty())
                .unwrap_or(default_ns);
            user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

async fn rules_of(st: &State, role_ref: &Value, ns: &str) -> Result<Vec<Value>, ApiError> {
    let name = role_ref["name"].as_str().unwrap_or_default();
    let key = match role_ref["kind"].as_str() {
        Some("ClusterRole") => format!("/registry/clusterroles/{name}"),
        Some("Role") if !ns.is_empty() => format!("/registry/roles/{ns}/{name}"),
        _ => return Ok(Vec::new()),
    };
    Ok(match st.get_cached(&key).await? {
        Some(kv) => from_kv(&kv)?["rules"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
        None => Vec::new(),
    })
}

/// The resources RBAC decisions are derived from.
const RBAC_RESOURCES: [&str; 4] = [
    "roles",
    "rolebindings",
    "clusterroles",
    "clusterrolebindings",
];

/// Memoized [`bound_rules`] answers, by binding prefix and user, each with the revision of
/// the last RBAC change it saw: reused until a Role, ClusterRole or binding changes in the
/// watch cache. Cleared when it holds [`MEMO_LIMIT`] answers.
#[derive(Default)]
pub struct RulesMemo(std::sync::Mutex<MemoMap>);

const MEMO_LIMIT: usize = 10_000;

type MemoMap = HashMap<(String, String, Vec<String>), (i64, Arc<Vec<Value>>)>;

impl RulesMemo {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoMap> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The rules of every binding under `prefix` that names `user`, from the memo when no
/// RBAC object changed since it was computed.
async fn bound_rules(st: &State, prefix: &str, user: &User) -> Result<Arc<Vec<Value>>, ApiError> {
    let Some(cache) = &st.cache else {
        return Ok(Arc::new(compute_bound_rules(st, prefix, user).await?));
    };
    let key = (prefix.to_string(), user.name.clone(), user.groups.clone());
    let at = cache.changed_at(&RBAC_RESOURCES);
    if let Some((rev, rules)) = st.rules_memo.lock().get(&key) {
        if *rev == at {
            return Ok(rules.clone());
        }
    }
    let rules = Arc::new(compute_bound_rules(st, prefix, user).await?);
    let mut m = st.rules_memo.lock();
    if m.len() >= MEMO_LIMIT {
        m.clear();
    }
    m.insert(key, (at, rules.clone()));
    Ok(rules)
}

async fn compute_bound_rules(
    st: &State,
    prefix: &str,
    user: &User,
) -> Result<Vec<Value>, ApiError> {
    let page = st.list(prefix, Default::default(), true).await?;
    let mut rules = Vec::new();
    for kv in &page.items {
        let b = from_kv(kv)?;
        let ns = b
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if b["subjects"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| subject_matches(s, user, &ns)))
        {
            rules.extend(rules_of(st, &b["roleRef"], &ns).await?);
        }
    }
    Ok(rules)
}

async fn bindings_allow(
    st: &State,
    prefix: &str,
    user: &User,
    a: &Attributes,
) -> Result<bool, ApiError> {
    Ok(bound_rules(st, prefix, user)
        .await?
        .iter()
        .any(|r| rule_allows(r, a)))
}

/// Whether the authorizer chain allows `user` to do `a`: `system:masters` may do
/// everything; a node is first judged by the Node authorizer ([`super::node_authz`]); RBAC
/// decides the rest.
pub async fn allowed(st: &State, user: &User, a: &Attributes) -> Result<bool, ApiError> {
    if user.is_master() {
        return Ok(true);
    }
    if let Some(node) = super::node_authz::node_name(user) {
        match super::node_authz::decide(st, node, a).await? {
            super::node_authz::Decision::Allow => return Ok(true),
            super::node_authz::Decision::Deny => return Ok(false),
            super::node_authz::Decision::NoOpinion => {}
        }
    }
    if bindings_allow(st, "/registry/clusterrolebindings/", user, a).await? {
        return Ok(true);
    }
    if a.path.is_none() && !a.namespace.is_empty() {
        let prefix = format!("/registry/rolebindings/{}/", a.namespace);
        return bindings_allow(st, &prefix, user, a).await;
    }
    Ok(false)
}

/// Every rule `user` holds where `namespace` is concerned: its ClusterRoleBindings' and, for
/// a namespace, that namespace's RoleBindings'. `system:masters` holds everything.
pub async fn user_rules(st: &State, user: &User, namespace: &str) -> Result<Vec<Value>, ApiError> {
    if user.is_master() {
        return Ok(vec![
            json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}),
            json!({"verbs": ["*"], "nonResourceURLs": ["*"]}),
        ]);
    }
    let mut prefixes = vec!["/registry/clusterrolebindings/".to_string()];
    if !namespace.is_empty() {
        prefixes.push(format!("/registry/rolebindings/{namespace}/"));
    }
    let mut rules = Vec::new();
    for prefix in prefixes {
        rules.extend(bound_rules(st, &prefix, user).await?.iter().cloned());
    }
    Ok(rules)
}

/// The rules of the role a binding's `roleRef` names (none when it does not exist).
pub async fn role_rules(
    st: &State,
    role_ref: &Value,
    namespace: &str,
) -> Result<Vec<Value>, ApiError> {
    rules_of(st, role_ref, namespace).await
}

/// The parts of `rule` that no rule of `owner` covers, each as `{verb group resource name}`
/// or `{verb url}`; empty when `owner` holds all of it. Wildcards are literal on the
/// granted side (asking to grant `*` needs `*`), as in kube-apiserver's escalation check.
pub fn uncovered(owner: &[Value], rule: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let one = |v: &str| vec![v.to_string()];
    let list = |v: &Value| -> Vec<String> { strs(v).into_iter().map(str::to_string).collect() };
    let verbs = list(&rule["verbs"]);
    for url in list(&rule["nonResourceURLs"]) {
        for verb in &verbs {
            let held = owner.iter().any(|o| {
                strs(&o["verbs"]).iter().any(|v| *v == "*" || v == verb)
                    && strs(&o["nonResourceURLs"]).iter().any(|u| {
                        *u == "*"
                            || *u == url
                            || u.strip_suffix('*').is_some_and(|p| url.starts_with(p))
                    })
            });
            if !held {
                out.push(format!("{{verb={verb} url={url}}}"));
            }
        }
    }
    let resources = list(&rule["resources"]);
    if resources.is_empty() {
        return out;
    }
    let mut names = list(&rule["resourceNames"]);
    if names.is_empty() {
        names = one("");
    }
    for verb in &verbs {
        for group in list(&rule["apiGroups"]) {
            for resource in &resources {
                for name in &names {
                    let held = owner.iter().any(|o| {
                        let on = strs(&o["resourceNames"]);
                        strs(&o["verbs"]).iter().any(|v| *v == "*" || v == verb)
                            && strs(&o["apiGroups"])
                                .iter()
                                .any(|g| *g == "*" || *g == group)
                            && strs(&o["resources"]).iter().any(|r| {
                                *r == "*"
                                    || r == resource
                                    || r.strip_prefix("*/").is_some_and(|sub| {
                                        resource.split_once('/').is_some_and(|(_, s)| s == sub)
                                    })
                            })
                            && (on.is_empty() || (!name.is_empty() && on.contains(&name.as_str())))
                    });
                    if !held {
                        let named = if name.is_empty() {
                            String::new()
                        } else {
                            format!(" name={name}")
                        };
                        out.push(format!(
                            "{{verb={verb} group={group:?} resource={resource}{named}}}"
                        ));
                    }
                }
            }
        }
    }
    out
}

/// The 403 for a refused resource request, worded like Kubernetes'.
pub fn forbidden(user: &User, a: &Attributes) -> ApiError {
    if let Some(path) = &a.path {
        return ApiError::ForbiddenPath {
            user: user.name.clone(),
            verb: a.verb.clone(),
            path: path.clone(),
        };
    }
    let resource = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let what = if a.name.is_empty() {
        resource.clone()
    } else {
        format!("{resource} \"{}\"", a.name)
    };
    let scope = if a.namespace.is_empty() {
        " at the cluster scope".to_string()
    } else {
        format!(" in the namespace \"{}\"", a.namespace)
    };
    ApiError::Forbidden {
        message: format!(
            "{what} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\"{scope}",
            user.name, a.verb, a.group
        ),
        group: a.group.clone(),
        resource,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, Store};
    use serde_json::json;
    use std::sync::Arc;

    fn attrs(verb: &str, group: &str, resource: &str, sub: &str, ns: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            ..Default::default()
        }
    }

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn rules_match_verbs_groups_subresources_names_and_paths() {
        let rule = json!({"verbs": ["get", "list"], "apiGroups": [""],
                          "resources": ["pods", "pods/status"]});
        assert!(rule_allows(&rule, &attrs("get", "", "pods", "", "a")));
        assert!(rule_allows(&rule, &attrs("get", "", "pods", "status", "a")));
        assert!(!rule_allows(&rule, &attrs("get", "", "pods", "log", "a")));
        assert!(!rule_allows(&rule, &attrs("delete", "", "pods", "", "a")));
        assert!(!rule_allows(&rule, &attrs("get", "apps", "pods", "", "a")));
        let star_sub = json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*/scale"]});
        assert!(rule_allows(
            &star_sub,
            &attrs("update", "apps", "deployments", "scale", "a")
        ));
        let named = json!({"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"],
                           "resourceNames": ["x"]});
        let mut a = attrs("get", "", "configmaps", "", "a");
        assert!(!rule_allows(&named, &a), "no name in the request");
        a.name = "x".into();
        assert!(rule_allows(&named, &a));
        let urls = json!({"verbs": ["get"], "nonResourceURLs": ["/apis/*", "/version"]});
        let path = |p: &str| Attributes {
            verb: "get".into(),
            path: Some(p.into()),
            ..Default::default()
        };
        assert!(rule_allows(&urls, &path("/apis/apps/v1")));
        assert!(rule_allows(&urls, &path("/version")));
        assert!(!rule_allows(&urls, &path("/metrics")));
    }

    #[test]
    fn granting_needs_every_part_held_and_wildcards_only_by_wildcards() {
        let admin = vec![
            json!({"verbs": ["get", "list", "create"], "apiGroups": ["", "apps"],
                   "resources": ["pods", "deployments", "*/scale"]}),
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"],
                   "resourceNames": ["mine"]}),
            json!({"verbs": ["get"], "nonResourceURLs": ["/apis/*"]}),
        ];
        let fits =
            json!({"verbs": ["get", "list"], "apiGroups": ["apps"], "resources": ["deployments"]});
        assert!(uncovered(&admin, &fits).is_empty());
        let sub =
            json!({"verbs": ["create"], "apiGroups": ["apps"], "resources": ["deployments/scale"]});
        assert!(uncovered(&admin, &sub).is_empty());
        let star = json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]});
        assert_eq!(
            uncovered(&admin, &star),
            ["{verb=* group=\"*\" resource=*}"]
        );
        let more = json!({"verbs": ["get", "delete"], "apiGroups": [""], "resources": ["pods"]});
        assert_eq!(
            uncovered(&admin, &more),
            ["{verb=delete group=\"\" resource=pods}"]
        );
        let named = json!({"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"],
                           "resourceNames": ["mine"]});
        assert!(uncovered(&admin, &named).is_empty());
        let all_secrets = json!({"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"]});
        assert_eq!(uncovered(&admin, &all_secrets).len(), 1);
        let urls = json!({"verbs": ["get"], "nonResourceURLs": ["/apis/apps", "/metrics"]});
        assert_eq!(uncovered(&admin, &urls), ["{verb=get url=/metrics}"]);
    }

    #[tokio::test]
    async fn bindings_grant_rules_to_users_groups_and_service_accounts_in_their_scope() {
        let store = Arc::new(MemoryStore::new());
        let st = State::for_tests(store.clone());
        let put = |k: &str, v: Value| {
            let store = store.clone();
            let k = k.to_string();
            async move {
                store
                    .create(&k, serde_json::to_vec(&v).expect("json"))
                    .await
                    .expect("create")
            }
        };
        put(
            "/registry/clusterroles/reader",
            json!({"rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]}),
        )
        .await;
        put(
            "/registry/roles/team/cm-writer",
            json!({"rules": [{"verbs": ["create"], "apiGroups": [""], "resources": ["configmaps"]}]}),
        )
        .await;
        put(
            "/registry/clusterrolebindings/readers",
            json!({"subjects": [{"kind": "Group", "name": "auditors"}],
                   "roleRef": {"kind": "ClusterRole", "name": "reader"}}),
        )
        .await;
        put(
            "/registry/rolebindings/team/bot",
            json!({"metadata": {"namespace": "team"},
                   "subjects": [{"kind": "ServiceAccount", "name": "bot"}],
                   "roleRef": {"kind": "Role", "name": "cm-writer"}}),
        )
        .await;
        let auditor = user("alice", &["auditors"]);
        assert!(allowed(&st, &auditor, &attrs("list", "", "pods", "", ""))
            .await
            .expect("rbac"));
        assert!(
            !allowed(&st, &auditor, &attrs("delete", "", "pods", "", "x"))
                .await
                .expect("rbac")
        );
        let bot = user(
            "system:serviceaccount:team:bot",
            &["system:serviceaccounts"],
        );
        assert!(
            allowed(&st, &bot, &attrs("create", "", "configmaps", "", "team"))
                .await
                .expect("rbac")
        );
        assert!(
            !allowed(&st, &bot, &attrs("create", "", "configmaps", "", "other"))
                .await
                .expect("rbac"),
            "a RoleBinding only grants in its namespace"
        );
        assert!(allowed(
            &st,
            &user("root", &["system:masters"]),
            &attrs("delete", "", "nodes", "", "")
        )
        .await
        .expect("rbac"));
    }
}
