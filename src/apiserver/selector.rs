//! Label and field selectors (`?labelSelector=…&fieldSelector=…`).
//!
//! Label selectors: comma-separated requirements `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
//! `k notin (a,b)`, `k` (exists) and `!k` (does not exist); all must hold. Field selectors:
//! `path=v`, `path==v`, `path!=v` over a fixed set of dotted paths ([`FIELDS`]); a missing
//! field compares as the empty string, like Kubernetes. Limits: no set-based field
//! selectors; values are not validated against label value syntax.

use serde_json::Value;

/// Field paths a field selector may name.
pub const FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "status.phase",
    "status.podIP",
    "type",
    "reason",
    "involvedObject.kind",
    "involvedObject.name",
    "involvedObject.namespace",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.fieldPath",
    "involvedObject.resourceVersion",
    "source",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A parsed label or field selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    reqs: Vec<Requirement>,
    fields: bool,
}

/// Splits at commas outside parentheses.
fn split_top(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("unmatched ')' in selector {s:?}"));
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unclosed '(' in selector {s:?}"));
    }
    out.push(&s[start..]);
    Ok(out)
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
}

fn parse_set(rest: &str, whole: &str) -> Result<Vec<String>, String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised set in {whole:?}"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

/// The longest selector accepted, in bytes: each requirement is checked against every
/// object of a list, so the selector's size bounds a list's cost (kube-apiserver bounds it
/// only through the URL's length).
pub const MAX_SELECTOR: usize = 8 * 1024;

fn check_length(s: &str) -> Result<(), String> {
    if s.len() > MAX_SELECTOR {
        return Err(format!(
            "the selector is too long: {} bytes, the limit is {MAX_SELECTOR}",
            s.len()
        ));
    }
    Ok(())
}

impl Selector {
    /// Parses a label selector.
    pub fn labels(s: &str) -> Result<Selector, String> {
        check_length(s)?;
        let mut reqs = Vec::new();
        for part in split_top(s)? {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let req = if let Some(k) = part.strip_prefix('!') {
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::NotExists,
                }
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::NotEq(v.trim().to_string()),
                }
            } else if let Some((k, v)) = part.split_once('=') {
                let v = v.strip_prefix('=').unwrap_or(v);
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::Eq(v.trim().to_string()),
                }
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::NotIn(parse_set(rest, part)?),
                }
            } else if let Some((k, rest)) = part.split_once(" in ") {
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::In(parse_set(rest, part)?),
                }
            } else {
                Requirement {
                    key: part.to_string(),
                    op: Op::Exists,
                }
            };
            if !valid_key(&req.key) {
                return Err(format!("invalid label key {:?} in selector {s:?}", req.key));
            }
            reqs.push(req);
        }
        Ok(Selector {
            reqs,
            fields: false,
        })
    }

    /// Parses a field selector (only `=`, `==` and `!=` over [`FIELDS`]).
    pub fn fields(s: &str) -> Result<Selector, String> {
        check_length(s)?;
        let mut reqs = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (key, op) = if let Some((k, v)) = part.split_once("!=") {
                (k, Op::NotEq(v.to_string()))
            } else if let Some((k, v)) = part.split_once('=') {
                (k, Op::Eq(v.strip_prefix('=').unwrap_or(v).to_string()))
            } else {
                return Err(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                ));
            };
            let key = key.trim();
            if !FIELDS.contains(&key) {
                return Err(format!("field label not supported: {key}"));
            }
            reqs.push(Requirement {
                key: key.to_string(),
                op,
            });
        }
        Ok(Selector { reqs, fields: true })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// The value a `metadata.name=X` requirement pins, if any.
    pub fn pinned_name(&self) -> Option<&str> {
        self.reqs.iter().find_map(|r| match (&r.key[..], &r.op) {
            ("metadata.name", Op::Eq(v)) => Some(v.as_str()),
            _ => None,
        })
    }

    /// Whether `obj` satisfies every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|r| {
            let value: Option<String> = if self.fields {
                let mut cur = obj;
                let mut found = true;
                for seg in r.key.split('.') {
                    match cur.get(seg) {
                        Some(v) => cur = v,
                        None => {
                            found = false;
                            break;
                        }
                    }
                }
                Some(match (found, cur) {
                    (false, _) => String::new(),
                    (true, Value::String(s)) => s.clone(),
                    (true, Value::Object(m)) => m
                        .get("component")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    (true, other) => other.to_string(),
                })
            } else {
                obj.pointer("/metadata/labels")
                    .and_then(|l| l.get(&r.key))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            match &r.op {
                Op::Eq(v) => value.as_deref() == Some(v.as_str()),
                Op::NotEq(v) => value.as_deref() != Some(v.as_str()),
                Op::In(set) => value.is_some_and(|x| set.contains(&x)),
                Op::NotIn(set) => !value.is_some_and(|x| set.contains(&x)),
                Op::Exists => value.is_some(),
                Op::NotExists => value.is_none(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "default", "labels": labels},
               "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})
    }

    #[test]
    fn equality_and_inequality_label_requirements_all_must_hold() {
        let s = Selector::labels("app=web,tier!=db").expect("parse");
        assert!(s.matches(&pod(json!({"app": "web", "tier": "fe"}))));
        assert!(s.matches(&pod(json!({"app": "web"}))));
        assert!(!s.matches(&pod(json!({"app": "web", "tier": "db"}))));
        assert!(!s.matches(&pod(json!({"app": "api"}))));
        assert!(Selector::labels("app==web")
            .expect("parse")
            .matches(&pod(json!({"app": "web"}))));
    }

    #[test]
    fn set_based_and_existence_requirements_work() {
        let s =
            Selector::labels("env in (prod, staging),tier notin (db),app,!legacy").expect("parse");
        assert!(s.matches(&pod(json!({"env": "prod", "app": "x"}))));
        assert!(!s.matches(&pod(json!({"env": "dev", "app": "x"}))));
        assert!(!s.matches(&pod(json!({"env": "prod", "app": "x", "tier": "db"}))));
        assert!(!s.matches(&pod(json!({"env": "prod"}))));
        assert!(!s.matches(&pod(json!({"env": "prod", "app": "x", "legacy": "1"}))));
    }

    #[test]
    fn malformed_label_selectors_are_rejected() {
        assert!(Selector::labels("env in (a,b").is_err());
        assert!(Selector::labels("a b c").is_err());
        assert!(Selector::labels("env in a").is_err());
    }

    #[test]
    fn field_selectors_read_dotted_paths_and_reject_unknown_fields() {
        let s = Selector::fields("metadata.name=p,spec.nodeName=n1,status.phase!=Failed")
            .expect("parse");
        assert!(s.matches(&pod(json!({}))));
        assert_eq!(s.pinned_name(), Some("p"));
        let other = Selector::fields("spec.nodeName=n2").expect("parse");
        assert!(!other.matches(&pod(json!({}))));
        assert!(Selector::fields("spec.bogus=1").is_err());
        assert!(Selector::fields("spec.nodeName").is_err());
        let unscheduled = Selector::fields("spec.nodeName=").expect("parse");
        assert!(unscheduled.matches(&json!({"metadata": {"name": "q"}, "spec": {}})));
    }

    #[test]
    fn the_empty_selector_matches_everything() {
        assert!(Selector::labels("")
            .expect("parse")
            .matches(&pod(json!(null))));
    }
}
