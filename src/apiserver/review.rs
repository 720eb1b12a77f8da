//! The review APIs: create-only kinds that ask the apiserver a question and carry the
//! answer back in `status`, nothing stored.
//!
//! - `authorization.k8s.io/v1`: `SelfSubjectAccessReview` (`kubectl auth can-i`),
//!   `SubjectAccessReview` (for any user: what aggregated API servers and webhooks with
//!   delegated authorization ask), `LocalSubjectAccessReview` (the same, in one
//!   namespace), `SelfSubjectRulesReview` (`kubectl auth can-i --list`);
//! - `authentication.k8s.io/v1`: `TokenReview` (is this bearer token valid, and whose is
//!   it), `SelfSubjectReview` (`kubectl auth whoami`).
//!
//! Each is authorized like any create (`create subjectaccessreviews` comes with
//! `system:auth-delegator`; the self reviews with `system:basic-user`), answers with the
//! same authenticator and RBAC evaluation as real requests, and returns 201 with the
//! object and its `status`.

use hyper::StatusCode;
use serde_json::{json, Value};

use super::attributes::Attributes;
use super::error::ApiError;
use super::http::{json_response, Req, Response};
use super::object::decode;
use super::tls::User;
use super::{authn, jwt, rbac, State};

/// One review kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Review {
    SelfSubjectAccess,
    SubjectAccess,
    LocalSubjectAccess,
    SelfSubjectRules,
    Token,
    SelfSubject,
}

/// Every review kind: the kind, its group (all are `v1`), plural, and whether it is
/// namespaced.
pub const ALL: [(Review, &str, &str, &str, bool); 6] = [
    (
        Review::SelfSubjectAccess,
        "SelfSubjectAccessReview",
        "authorization.k8s.io",
        "selfsubjectaccessreviews",
        false,
    ),
    (
        Review::SubjectAccess,
        "SubjectAccessReview",
        "authorization.k8s.io",
        "subjectaccessreviews",
        false,
    ),
    (
        Review::LocalSubjectAccess,
        "LocalSubjectAccessReview",
        "authorization.k8s.io",
        "localsubjectaccessreviews",
        true,
    ),
    (
        Review::SelfSubjectRules,
        "SelfSubjectRulesReview",
        "authorization.k8s.io",
        "selfsubjectrulesreviews",
        false,
    ),
    (
        Review::Token,
        "TokenReview",
        "authentication.k8s.io",
        "tokenreviews",
        false,
    ),
    (
        Review::SelfSubject,
        "SelfSubjectReview",
        "authentication.k8s.io",
        "selfsubjectreviews",
        false,
    ),
];

/// The review a `/apis/<group>/v1/…` path addresses, and its namespace.
pub fn find(group: &str, rest: &[&str]) -> Option<(Review, Option<String>)> {
    let (namespace, plural) = match rest {
        [plural] => (None, *plural),
        ["namespaces", ns, plural] => (Some(ns.to_string()), *plural),
        _ => return None,
    };
    ALL.iter()
        .find(|(_, _, g, p, namespaced)| {
            *g == group && *p == plural && *namespaced == namespace.is_some()
        })
        .map(|(r, ..)| (*r, namespace))
}

impl Review {
    fn row(self) -> &'static (Review, &'static str, &'static str, &'static str, bool) {
        ALL.iter()
            .find(|(r, ..)| *r == self)
            .expect("every review has a row")
    }

    /// What creating one asks RBAC for.
    pub fn attributes(self, namespace: Option<&str>) -> Attributes {
        let (_, _, group, plural, _) = self.row();
        Attributes {
            verb: "create".into(),
            group: group.to_string(),
            resource: plural.to_string(),
            namespace: namespace.unwrap_or_default().to_string(),
            ..Default::default()
        }
    }
}

fn invalid(kind: &str, reason: &str) -> ApiError {
    ApiError::Invalid {
        kind: kind.into(),
        name: String::new(),
        reason: reason.into(),
    }
}

fn text(v: &Value, f: &str) -> String {
    v[f].as_str().unwrap_or_default().to_string()
}

/// The attributes a (Self/Local)SubjectAccessReview's `spec` asks about.
fn asked(kind: &str, spec: &Value) -> Result<Attributes, ApiError> {
    let resource = spec.get("resourceAttributes").filter(|v| v.is_object());
    let non_resource = spec.get("nonResourceAttributes").filter(|v| v.is_object());
    match (resource, non_resource) {
        (Some(ra), None) => Ok(Attributes {
            verb: text(ra, "verb"),
            group: text(ra, "group"),
            resource: text(ra, "resource"),
            subresource: text(ra, "subresource"),
            namespace: text(ra, "namespace"),
            name: text(ra, "name"),
            path: None,
        }),
        (None, Some(nr)) => Ok(Attributes {
            verb: text(nr, "verb"),
            path: Some(text(nr, "path")),
            ..Default::default()
        }),
        (Some(_), Some(_)) => Err(invalid(
            kind,
            "spec.nonResourceAttributes: Invalid value: \"null\": cannot be specified in combination with resourceAttributes",
        )),
        (None, None) => Err(invalid(
            kind,
            "spec.resourceAttributes: Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
    }
}

/// `status` of an access review.
fn verdict(allowed: bool) -> Value {
    if allowed {
        json!({"allowed": true, "reason": "allowed by RBAC"})
    } else {
        json!({"allowed": false})
    }
}

/// The user a SubjectAccessReview asks about.
fn subject(kind: &str, spec: &Value) -> Result<User, ApiError> {
    let name = text(spec, "user");
    let groups: Vec<String> = spec["groups"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if name.is_empty() && groups.is_empty() {
        return Err(invalid(
            kind,
            "spec.user: Invalid value: \"\": at least one of user or group must be specified",
        ));
    }
    Ok(User { name, groups })
}

/// `TokenReview.status` for `token`.
async fn token_status(st: &State, token: &str, audiences: &[String]) -> Result<Value, ApiError> {
    let refused = |why: &str| json!({"user": {}, "error": why});
    if token.is_empty() {
        return Ok(refused("token is required"));
    }
    if !audiences.is_empty() && !audiences.iter().any(|a| a == jwt::ISSUER) {
        return Ok(refused(&format!(
            "[invalid bearer token, token audiences {:?} is invalid for the target audiences {audiences:?}]",
            [jwt::ISSUER]
        )));
    }
    let header = format!("Bearer {token}");
    match authn::authenticate(st, None, Some(&header)).await {
        Ok(Some(user)) => Ok(json!({
            "authenticated": true,
            "user": {"username": user.name, "groups": user.groups},
            "audiences": if audiences.is_empty() { vec![jwt::ISSUER.to_string()] } else { audiences.to_vec() },
        })),
        Ok(None) | Err(ApiError::Unauthenticated) => Ok(refused("[invalid bearer token]")),
        Err(e) => Err(e),
    }
}

/// `SelfSubjectRulesReview.status`: the caller's rules in `spec.namespace`.
async fn rules_status(st: &State, user: &User, namespace: &str) -> Result<Value, ApiError> {
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for r in rbac::user_rules(st, user, namespace).await? {
        if r.get("nonResourceURLs").is_some_and(|u| u.is_array()) {
            non_resource_rules
                .push(json!({"verbs": r["verbs"], "nonResourceURLs": r["nonResourceURLs"]}));
        }
        if r.get("resources").is_some_and(|u| u.is_array()) {
            let mut rule = json!({"verbs": r["verbs"], "apiGroups": r["apiGroups"],
                                  "resources": r["resources"]});
            if r["resourceNames"].is_array() {
                rule["resourceNames"] = r["resourceNames"].clone();
            }
            resource_rules.push(rule);
        }
    }
    Ok(
        json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules,
              "incomplete": false}),
    )
}

/// Answers one review request (already authorized to create it).
pub async fn serve(
    st: &State,
    review: Review,
    namespace: Option<&str>,
    req: &Req,
) -> Result<Response, ApiError> {
    let user = req.user.as_ref().ok_or(ApiError::Unauthenticated)?;
    let (_, kind, group, _, _) = review.row();
    let mut obj = if req.body.is_empty() {
        json!({})
    } else {
        decode(&req.body, &req.content_type)?
    };
    if !obj.is_object() {
        return Err(invalid(kind, "the body is not an object"));
    }
    if req.q("fieldValidation") == Some("Strict") {
        let unknown = super::schemas::unknown_fields(group, "v1", kind, &obj);
        if !unknown.is_empty() {
            let fields: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            return Err(ApiError::DecodeBody {
                reason: format!("strict decoding error: {}", fields.join(", ")),
            });
        }
    }
    let spec = obj["spec"].clone();
    let status = match review {
        Review::SelfSubjectAccess => verdict(rbac::allowed(st, user, &asked(kind, &spec)?).await?),
        Review::SubjectAccess => {
            let who = subject(kind, &spec)?;
            verdict(rbac::allowed(st, &who, &asked(kind, &spec)?).await?)
        }
        Review::LocalSubjectAccess => {
            let a = asked(kind, &spec)?;
            let ns = namespace.unwrap_or_default();
            if a.path.is_some() {
                return Err(invalid(
                    kind,
                    "spec.nonResourceAttributes: Invalid value: \"null\": disallowed on this kind of request",
                ));
            }
            if a.namespace != ns {
                return Err(invalid(
                    kind,
                    &format!(
                        "spec.resourceAttributes.namespace: Invalid value: {}: must match metadata.namespace",
                        json!(a.namespace)
                    ),
                ));
            }
            obj["metadata"]["namespace"] = json!(ns);
            let who = subject(kind, &spec)?;
            verdict(rbac::allowed(st, &who, &a).await?)
        }
        Review::SelfSubjectRules => {
            let ns = text(&spec, "namespace");
            rules_status(st, user, &ns).await?
        }
        Review::Token => {
            let audiences: Vec<String> = spec["audiences"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            token_status(st, spec["token"].as_str().unwrap_or_default(), &audiences).await?
        }
        Review::SelfSubject => {
            json!({"userInfo": {"username": user.name, "groups": user.groups}})
        }
    };
    obj["kind"] = json!(kind);
    obj["apiVersion"] = json!(format!("{group}/v1"));
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"]["creationTimestamp"] = Value::Null;
    obj["status"] = status;
    Ok(json_response(StatusCode::CREATED, &obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn review_paths_are_found_with_their_scope() {
        assert_eq!(
            find("authorization.k8s.io", &["subjectaccessreviews"]),
            Some((Review::SubjectAccess, None))
        );
        assert_eq!(
            find(
                "authorization.k8s.io",
                &["namespaces", "a", "localsubjectaccessreviews"]
            ),
            Some((Review::LocalSubjectAccess, Some("a".into())))
        );
        assert_eq!(
            find("authentication.k8s.io", &["tokenreviews"]),
            Some((Review::Token, None))
        );
        assert_eq!(
            find("authorization.k8s.io", &["localsubjectaccessreviews"]),
            None
        );
        assert_eq!(
            find("authentication.k8s.io", &["subjectaccessreviews"]),
            None
        );
        assert_eq!(
            find("authorization.k8s.io", &["subjectaccessreviews", "x"]),
            None
        );
        let a = Review::LocalSubjectAccess.attributes(Some("a"));
        assert_eq!(
            (
                a.verb.as_str(),
                a.group.as_str(),
                a.resource.as_str(),
                a.namespace.as_str()
            ),
            (
                "create",
                "authorization.k8s.io",
                "localsubjectaccessreviews",
                "a"
            )
        );
    }

    #[test]
    fn an_access_review_asks_exactly_one_question_about_someone() {
        let kind = "SubjectAccessReview";
        let both =
            json!({"resourceAttributes": {"verb": "get"}, "nonResourceAttributes": {"path": "/x"}});
        assert!(asked(kind, &both).is_err());
        assert!(asked(kind, &json!({})).is_err());
        let a = asked(
            kind,
            &json!({"nonResourceAttributes": {"path": "/metrics", "verb": "get"}}),
        )
        .expect("non-resource");
        assert_eq!(a.path.as_deref(), Some("/metrics"));
        assert!(subject(kind, &json!({})).is_err());
        let u = subject(kind, &json!({"user": "alice", "groups": ["devs"]})).expect("user");
        assert_eq!((u.name.as_str(), u.groups.len()), ("alice", 1));
    }
}
