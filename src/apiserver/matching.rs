//! Which admission plugins a request reaches: the one matcher of admission webhooks
//! ([`super::webhook`]) and validating admission policies ([`super::policy`]), as
//! kube-apiserver matches them.
//!
//! A request matches when one of the rules covers it — operations, API groups, versions
//! (any version under `matchPolicy: Equivalent`), resources and subresources (`*`,
//! `*/*`, `pods/*`, `*/scale`), scope and, for policies, `resourceNames` — and no
//! `excludeResourceRules` does, and both selectors hold: `objectSelector` on the new or
//! old object's labels, `namespaceSelector` on the labels of the request's namespace (of
//! the object itself for a Namespace). An empty selector matches everything; one that
//! does not parse matches nothing.

use serde_json::{json, Value};

use super::error::ApiError;
use super::http::Target;
use super::kinds::selector_text;
use super::object;
use super::selector::Selector;
use super::State;

/// What requests one webhook or policy applies to.
#[derive(Debug, Default)]
pub struct Matcher {
    rules: Vec<Value>,
    exclude: Vec<Value>,
    exact: bool,
    namespace_selector: Option<Selector>,
    object_selector: Option<Selector>,
}

/// A label selector; `None` (everything) when empty.
fn selector(v: &Value) -> Option<Selector> {
    let text = selector_text(Some(v));
    if text.is_empty() || text == "<none>" {
        return None;
    }
    // A selector that does not parse matches nothing, as an invalid one would.
    Selector::labels(&text)
        .ok()
        .or_else(|| Selector::labels("kimg.io/invalid,!kimg.io/invalid").ok())
}

fn listed(rule: &Value, key: &str, value: &str) -> bool {
    rule[key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|v| v == "*" || v == value)
}

/// `resourceNames` of a policy's rule: empty names everything.
fn named(rule: &Value, name: &str) -> bool {
    match rule["resourceNames"].as_array() {
        Some(names) if !names.is_empty() => names.iter().any(|n| n == name),
        _ => true,
    }
}

/// Whether a rule covers `operation` on the target.
fn rule_matches(rule: &Value, t: &Target, operation: &str, exact: bool) -> bool {
    let resource = match &t.sub {
        Some(sub) => format!("{}/{sub}", t.res.plural),
        None => t.res.plural.to_string(),
    };
    let resources = rule["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str);
    let resource_ok = resources.into_iter().any(|r| {
        r == resource
            || (r == "*" && t.sub.is_none())
            || r == "*/*"
            || r.strip_suffix("/*")
                .is_some_and(|p| p == t.res.plural && t.sub.is_some())
            || r.strip_prefix("*/")
                .is_some_and(|s| t.sub.as_deref() == Some(s))
    });
    let scope_ok = match rule["scope"].as_str().unwrap_or("*") {
        "Cluster" => !t.res.namespaced,
        "Namespaced" => t.res.namespaced,
        _ => true,
    };
    listed(rule, "operations", operation)
        && listed(rule, "apiGroups", t.res.group)
        && (!exact || listed(rule, "apiVersions", t.res.version))
        && resource_ok
        && scope_ok
}

impl Matcher {
    /// Reads the matching fields of a webhook, or of a policy's `matchConstraints` (rules
    /// under `resourceRules`, with `excludeResourceRules`).
    pub fn new(v: &Value) -> Matcher {
        let list = |k: &str| v[k].as_array().cloned().unwrap_or_default();
        let mut rules = list("rules");
        rules.extend(list("resourceRules"));
        Matcher {
            rules,
            exclude: list("excludeResourceRules"),
            exact: v["matchPolicy"] == "Exact",
            namespace_selector: selector(&v["namespaceSelector"]),
            object_selector: selector(&v["objectSelector"]),
        }
    }

    /// Whether a request (`operation` on the target, with its new and old objects) is
    /// covered: a rule matches and no exclusion does, and both selectors hold.
    pub async fn applies(
        &self,
        st: &State,
        t: &Target,
        operation: &str,
        obj: Option<&Value>,
        old: Option<&Value>,
    ) -> Result<bool, ApiError> {
        let name = obj
            .or(old)
            .and_then(|o| object::meta_str(o, "name"))
            .unwrap_or_default();
        let covers = |r: &Value| rule_matches(r, t, operation, self.exact) && named(r, name);
        if !self.rules.iter().any(covers) || self.exclude.iter().any(covers) {
            return Ok(false);
        }
        self.selectors_hold(st, t, obj, old).await
    }

    async fn selectors_hold(
        &self,
        st: &State,
        t: &Target,
        obj: Option<&Value>,
        old: Option<&Value>,
    ) -> Result<bool, ApiError> {
        let h = self;
        if let Some(sel) = &h.object_selector {
            if !obj.into_iter().chain(old).any(|o| sel.matches(o)) {
                return Ok(false);
            }
        }
        if let Some(sel) = &h.namespace_selector {
            if t.res.plural == "namespaces" && t.res.group.is_empty() {
                return Ok(obj.or(old).is_some_and(|o| sel.matches(o)));
            }
            if t.res.namespaced && t.namespace.is_some() {
                let ns = namespace_object(st, t).await?.unwrap_or_else(|| json!({}));
                return Ok(sel.matches(&ns));
            }
        }
        Ok(true)
    }
}

/// The Namespace object of a namespaced request, if it exists.
pub async fn namespace_object(st: &State, t: &Target) -> Result<Option<Value>, ApiError> {
    let Some(ns) = t.namespace.as_deref().filter(|_| t.res.namespaced) else {
        return Ok(None);
    };
    match st.get_cached(&format!("/registry/namespaces/{ns}")).await? {
        Some(kv) => object::from_kv(&kv).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::by_plural;

    fn target(plural: &str, sub: Option<&str>) -> Target {
        Target {
            res: by_plural(plural).expect("resource"),
            namespace: Some("default".into()),
            name: None,
            sub: sub.map(str::to_string),
            custom: None,
        }
    }

    #[test]
    fn rules_match_as_kube_apiserver_matches_them() {
        let rule = json!({"operations": ["CREATE"], "apiGroups": ["apps"], "apiVersions": ["v1"],
                          "resources": ["deployments"], "scope": "*"});
        assert!(rule_matches(
            &rule,
            &target("deployments", None),
            "CREATE",
            true
        ));
        assert!(!rule_matches(
            &rule,
            &target("deployments", None),
            "UPDATE",
            true
        ));
        assert!(!rule_matches(
            &rule,
            &target("deployments", Some("scale")),
            "CREATE",
            true
        ));
        assert!(!rule_matches(&rule, &target("pods", None), "CREATE", true));
        let subs = json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"],
                          "resources": ["*/scale"], "scope": "Namespaced"});
        assert!(rule_matches(
            &subs,
            &target("deployments", Some("scale")),
            "UPDATE",
            true
        ));
        assert!(!rule_matches(
            &subs,
            &target("deployments", None),
            "UPDATE",
            true
        ));
        let cluster = json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"],
                             "resources": ["*"], "scope": "Cluster"});
        assert!(!rule_matches(
            &cluster,
            &target("pods", None),
            "CREATE",
            true
        ));
        assert!(rule_matches(
            &cluster,
            &target("nodes", None),
            "CREATE",
            true
        ));
        let other_version = json!({"operations": ["*"], "apiGroups": ["apps"],
                                   "apiVersions": ["v1beta1"], "resources": ["deployments"]});
        assert!(rule_matches(
            &other_version,
            &target("deployments", None),
            "CREATE",
            false
        ));
        assert!(!rule_matches(
            &other_version,
            &target("deployments", None),
            "CREATE",
            true
        ));
    }
}
