//! Validating admission policies: the `ValidatingAdmissionPolicy`s users write, in force
//! through their `ValidatingAdmissionPolicyBinding`s, run on every write they match, in
//! the apiserver itself (no webhook to call).
//!
//! What: for a create, update or delete, each binding whose policy matches the request
//! (the policy's `matchConstraints` and the binding's `matchResources`, matched as
//! webhooks are, [`super::matching`]) evaluates the policy once per parameter object
//! (`paramRef`: by name, or every object its selector picks; none without `paramKind`):
//! `variables` first (`variables.<name>`), then `matchConditions` (all true, or the policy
//! does not apply), then every validation. A failed validation under `Deny` fails the
//! request as kube-apiserver fails it — `ValidatingAdmissionPolicy 'p' with binding 'b'
//! denied request: <message, or failed expression: <expression>>`, 422 `Invalid` unless
//! the validation's `reason` says `Forbidden` (403), `Unauthorized` (401) or
//! `RequestEntityTooLarge` (413) — and under `Warn` becomes a warning the client prints.
//! An expression that fails to evaluate, a missing parameter object under
//! `parameterNotFoundAction: Deny` or a policy that cannot be configured fails the request
//! under `failurePolicy: Fail` and is skipped under `Ignore`.
//!
//! How: policies and bindings are compiled once per change ([`super::cache::Derived`]);
//! expressions are CEL, compiled and bounded by [`super::crd::cel`] (the cost budget
//! bounds evaluation, since the values they read are bounded by the request size).
//! Variables: `object`, `oldObject` (null where there is none), `request` (the
//! `AdmissionReview` request without the objects), `params`, `namespaceObject`,
//! `variables`.
//!
//! Limits: `Audit` records nothing (no audit annotations); `authorizer` is not available
//! to expressions; there is no type checking (`status.typeChecking` stays empty).

use std::sync::Arc;

use serde_json::Value;

use super::crd::cel;
use super::error::ApiError;
use super::http::{Req, Target};
use super::kinds::validatingadmissionpolicy::VARIABLES;
use super::matching::Matcher;
use super::object;
use super::selector::Selector;
use super::webhook;
use super::State;

const KINDS: [&str; 2] = [
    "validatingadmissionpolicies",
    "validatingadmissionpolicybindings",
];

type Compiled = Result<cel::Program, String>;

/// One validation of a policy.
struct Validation {
    source: String,
    program: Compiled,
    message: Option<String>,
    message_expression: Option<Compiled>,
    /// HTTP code of a refusal (422 unless `reason` says otherwise).
    code: u16,
}

/// Where a binding's parameter objects come from.
struct Params {
    /// `paramKind`: group, version, kind.
    kind: (String, String, String),
    name: Option<String>,
    namespace: Option<String>,
    selector: Option<Selector>,
    deny_missing: bool,
}

/// A policy as one binding puts it in force.
struct Bound {
    policy: String,
    binding: String,
    ignore_failure: bool,
    matcher: Matcher,
    narrowed: Option<Matcher>,
    variables: Vec<(String, Compiled)>,
    conditions: Vec<(String, Compiled)>,
    validations: Vec<Validation>,
    deny: bool,
    warn: bool,
    /// `Err`: the binding cannot be configured (why).
    params: Result<Option<Params>, String>,
}

/// Every binding in force, by binding name.
#[derive(Default)]
pub struct Policies(Vec<Bound>);

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Policies({})", self.0.len())
    }
}

/// The policies as of the last change to them or their bindings.
pub type Registry = super::cache::Derived<Policies>;

fn compile(src: &Value) -> Compiled {
    cel::compile_expression(src.as_str().unwrap_or_default(), VARIABLES)
}

fn named(list: &Value) -> Vec<(String, Compiled)> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_string(),
                compile(&c["expression"]),
            )
        })
        .collect()
}

fn bind(policy: &Value, binding: &Value) -> Bound {
    let spec = &policy["spec"];
    let actions: Vec<&str> = binding["spec"]["validationActions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let validations = spec["validations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| Validation {
            source: v["expression"]
                .as_str()
                .unwrap_or_default()
                .trim()
                .to_string(),
            program: compile(&v["expression"]),
            message: v["message"]
                .as_str()
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_string),
            message_expression: v.get("messageExpression").map(compile),
            code: match v["reason"].as_str() {
                Some("Forbidden") => 403,
                Some("Unauthorized") => 401,
                Some("RequestEntityTooLarge") => 413,
                _ => 422,
            },
        })
        .collect();
    let narrowing = &binding["spec"]["matchResources"];
    Bound {
        policy: object::meta_str(policy, "name")
            .unwrap_or_default()
            .to_string(),
        binding: object::meta_str(binding, "name")
            .unwrap_or_default()
            .to_string(),
        ignore_failure: spec["failurePolicy"] == "Ignore",
        matcher: Matcher::new(&spec["matchConstraints"]),
        narrowed: narrowing.is_object().then(|| Matcher::new(narrowing)),
        variables: named(&spec["variables"]),
        conditions: named(&spec["matchConditions"]),
        validations,
        deny: actions.contains(&"Deny"),
        warn: actions.contains(&"Warn"),
        params: params_of(&spec["paramKind"], &binding["spec"]["paramRef"]),
    }
}

/// Where a binding's parameters come from (`None` without `paramKind`), or why they
/// cannot be configured.
fn params_of(kind: &Value, r: &Value) -> Result<Option<Params>, String> {
    if kind.is_null() {
        return Ok(None);
    }
    if !r.is_object() {
        return Err("paramRef is required when paramKind is set".into());
    }
    let api_version = kind["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let selector = if r["selector"].is_object() {
        let text = super::kinds::selector_text(Some(&r["selector"]));
        Some(Selector::labels(&text).map_err(|e| format!("paramRef.selector: {e}"))?)
    } else {
        None
    };
    Ok(Some(Params {
        kind: (
            group.to_string(),
            version.to_string(),
            kind["kind"].as_str().unwrap_or_default().to_string(),
        ),
        name: r["name"].as_str().map(str::to_string),
        namespace: r["namespace"].as_str().map(str::to_string),
        selector,
        deny_missing: r["parameterNotFoundAction"] == "Deny",
    }))
}

async fn policies(st: &State) -> Result<Arc<Policies>, ApiError> {
    let at = st.cache.as_ref().map(|c| c.changed_at(&KINDS));
    if let Some(p) = at.and_then(|at| st.policies.fresh(at)) {
        return Ok(p);
    }
    let read = |kind: &'static str| async move {
        let page = st
            .list(&format!("/registry/{kind}/"), Default::default(), true)
            .await?;
        page.items
            .iter()
            .map(object::from_kv)
            .collect::<Result<Vec<Value>, ApiError>>()
    };
    let all_policies = read(KINDS[0]).await?;
    let bindings = read(KINDS[1]).await?;
    let mut bound = Vec::new();
    for b in &bindings {
        let name = b["spec"]["policyName"].as_str().unwrap_or_default();
        if let Some(p) = all_policies
            .iter()
            .find(|p| object::meta_str(p, "name") == Some(name))
        {
            bound.push(bind(p, b));
        }
    }
    let compiled = Arc::new(Policies(bound));
    if let Some(at) = at {
        st.policies.keep(at, compiled.clone());
    }
    Ok(compiled)
}

/// The parameter objects a binding evaluates its policy with (`[Null]` without
/// `paramKind`); `Err` when they cannot be read or, under `Deny`, none is found.
async fn param_objects(
    st: &State,
    t: &Target,
    params: &Option<Params>,
) -> Result<Vec<Value>, String> {
    let Some(p) = params else {
        return Ok(vec![Value::Null]);
    };
    let catalog = super::crd::catalog(st).await;
    let (group, version, kind) = &p.kind;
    let Some(res) = catalog
        .resources()
        .find(|r| r.group == group && r.version == version && r.kind == kind)
    else {
        return Err(format!(
            "failed to configure binding: paramKind {group}/{version}, Kind={kind} is not served"
        ));
    };
    let namespace = p
        .namespace
        .clone()
        .or_else(|| t.namespace.clone())
        .filter(|_| res.namespaced);
    let mut found = Vec::new();
    if let Some(name) = &p.name {
        let key = res.key(namespace.as_deref(), name);
        if let Some(kv) = st.get_cached(&key).await.map_err(|e| e.to_string())? {
            found.push(object::from_kv(&kv).map_err(|e| e.to_string())?);
        }
    } else if let Some(sel) = &p.selector {
        let key = res.key(namespace.as_deref(), "");
        let page = st
            .list(&key, Default::default(), true)
            .await
            .map_err(|e| e.to_string())?;
        for kv in &page.items {
            let o = object::from_kv(kv).map_err(|e| e.to_string())?;
            if sel.matches(&o) {
                found.push(o);
            }
        }
    }
    if found.is_empty() {
        if p.deny_missing {
            return Err(
                "failed to configure binding: no params found for policy binding with `Deny` parameterNotFoundAction"
                    .into(),
            );
        }
        return Ok(Vec::new());
    }
    Ok(found)
}

/// What one evaluation concluded.
enum Outcome {
    Pass,
    Refused { code: u16, message: String },
}

fn evaluate(program: &Compiled, vars: &[(&str, &cel::Cel)]) -> Result<cel::Cel, String> {
    match program {
        Ok(p) => cel::evaluate(p, vars),
        Err(e) => Err(e.clone()),
    }
}

/// Evaluates one binding's policy with one parameter object.
fn run(b: &Bound, base: &[(&str, cel::Cel)]) -> Result<Outcome, String> {
    let mut values: Vec<(String, cel::Cel)> = Vec::new();
    let with_variables = |values: &[(String, cel::Cel)]| {
        let map = values
            .iter()
            .map(|(k, v)| (cel::key(k), v.clone()))
            .collect();
        cel::map(map)
    };
    for (name, program) in &b.variables {
        let vars = with_variables(&values);
        let mut all: Vec<(&str, &cel::Cel)> = base.iter().map(|(k, v)| (*k, v)).collect();
        all.push(("variables", &vars));
        let v = evaluate(program, &all)
            .map_err(|e| format!("variable '{name}' resulted in error: {e}"))?;
        values.push((name.clone(), v));
    }
    let vars = with_variables(&values);
    let mut all: Vec<(&str, &cel::Cel)> = base.iter().map(|(k, v)| (*k, v)).collect();
    all.push(("variables", &vars));
    for (name, program) in &b.conditions {
        match evaluate(program, &all) {
            Ok(cel::Cel::Bool(true)) => {}
            Ok(cel::Cel::Bool(false)) => return Ok(Outcome::Pass),
            Ok(_) => {
                return Err(format!(
                    "matchCondition '{name}' did not evaluate to a bool"
                ))
            }
            Err(e) => return Err(format!("matchCondition '{name}' resulted in error: {e}")),
        }
    }
    for v in &b.validations {
        match evaluate(&v.program, &all) {
            Ok(cel::Cel::Bool(true)) => {}
            Ok(cel::Cel::Bool(false)) => {
                let from_expression =
                    v.message_expression
                        .as_ref()
                        .and_then(|m| match evaluate(m, &all) {
                            Ok(cel::Cel::String(s)) => {
                                let s = s.trim();
                                (!s.is_empty()
                                    && s.len() <= cel::MAX_MESSAGE_BYTES
                                    && !s.contains('\n'))
                                .then(|| s.to_string())
                            }
                            _ => None,
                        });
                let message = from_expression
                    .or_else(|| v.message.clone())
                    .unwrap_or_else(|| format!("failed expression: {}", v.source));
                return Ok(Outcome::Refused {
                    code: v.code,
                    message,
                });
            }
            Ok(_) => {
                return Err(format!(
                    "expression '{}' did not evaluate to a bool",
                    v.source
                ))
            }
            Err(e) => return Err(format!("expression '{}' resulted in error: {e}", v.source)),
        }
    }
    Ok(Outcome::Pass)
}

/// Runs the policies in force on a create or update of `obj` (`old` on updates), or on
/// the deletion of `old` (`obj` is `None`).
pub async fn validate(
    st: &State,
    t: &Target,
    req: &Req,
    operation: &str,
    obj: Option<&Value>,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if webhook::exempt(t) {
        return Ok(());
    }
    let all = policies(st).await?;
    if all.0.is_empty() {
        return Ok(());
    }
    let mut matching = Vec::new();
    for b in &all.0 {
        if !b.matcher.applies(st, t, operation, obj, old).await? {
            continue;
        }
        if let Some(n) = &b.narrowed {
            if !n.applies(st, t, operation, obj, old).await? {
                continue;
            }
        }
        matching.push(b);
    }
    if matching.is_empty() {
        return Ok(());
    }
    let mut request = webhook::review(t, req, operation, obj, old)["request"].take();
    if let Some(r) = request.as_object_mut() {
        r.remove("object");
        r.remove("oldObject");
    }
    let namespace_object = super::matching::namespace_object(st, t)
        .await?
        .unwrap_or(Value::Null);
    let as_cel = |v: Option<&Value>| v.map_or(cel::Cel::Null, |v| cel::to_cel(v, None, false));
    let base_values = [
        ("object", as_cel(obj)),
        ("oldObject", as_cel(old)),
        ("request", as_cel(Some(&request))),
        ("namespaceObject", as_cel(Some(&namespace_object))),
    ];
    let name = obj
        .or(old)
        .and_then(|o| object::meta_str(o, "name"))
        .unwrap_or_default()
        .to_string();
    for b in matching {
        let prefix = format!(
            "ValidatingAdmissionPolicy '{}' with binding '{}' denied request",
            b.policy, b.binding
        );
        let params = match &b.params {
            Ok(p) => param_objects(st, t, p).await,
            Err(e) => Err(format!("failed to configure binding: {e}")),
        };
        let params = match params {
            Ok(p) => p,
            Err(why) if b.ignore_failure => {
                tracing::warn!(policy = %b.policy, binding = %b.binding, %why, "policy skipped (failurePolicy Ignore)");
                continue;
            }
            Err(why) => return Err(refusal(t, &name, 422, format!("{prefix}: {why}"))),
        };
        for param in params {
            let mut vars: Vec<(&str, cel::Cel)> = base_values.to_vec();
            vars.push(("params", as_cel(Some(&param))));
            match run(b, &vars) {
                Ok(Outcome::Pass) => {}
                Ok(Outcome::Refused { code, message }) => {
                    if b.warn {
                        req.warn(format!(
                            "Validation failed for ValidatingAdmissionPolicy '{}' with binding '{}': {message}",
                            b.policy, b.binding
                        ));
                    }
                    if b.deny {
                        return Err(refusal(t, &name, code, format!("{prefix}: {message}")));
                    }
                }
                Err(why) if b.ignore_failure => {
                    tracing::warn!(policy = %b.policy, binding = %b.binding, %why, "policy skipped (failurePolicy Ignore)");
                }
                Err(why) => {
                    return Err(refusal(t, &name, 422, format!("{prefix}: {why}")));
                }
            }
        }
    }
    Ok(())
}

/// A refusal with kube-apiserver's status: `Invalid` with the message as its one cause,
/// or the validation's own code.
fn refusal(t: &Target, name: &str, code: u16, message: String) -> ApiError {
    if code == 422 {
        // kube-apiserver names the resource here, which kubectl prints as the kind:
        // `The deployments "web" is invalid: : ValidatingAdmissionPolicy ...`.
        return ApiError::Invalid {
            kind: t.res.plural.to_string(),
            name: name.to_string(),
            reason: message,
        };
    }
    ApiError::Denied { code, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bound(validations: Value, extra: Value) -> Bound {
        let mut spec = json!({"failurePolicy": "Fail", "matchConstraints": {"resourceRules": []},
                              "validations": validations});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        bind(
            &json!({"metadata": {"name": "p"}, "spec": spec}),
            &json!({"metadata": {"name": "b"}, "spec": {"policyName": "p", "validationActions": ["Deny"]}}),
        )
    }

    fn vars(obj: Value) -> Vec<(&'static str, cel::Cel)> {
        vec![
            ("object", cel::to_cel(&obj, None, false)),
            ("oldObject", cel::Cel::Null),
            (
                "request",
                cel::to_cel(
                    &json!({"operation": "CREATE", "userInfo": {"username": "alice"}}),
                    None,
                    false,
                ),
            ),
            ("namespaceObject", cel::Cel::Null),
            (
                "params",
                cel::to_cel(&json!({"data": {"max": "3"}}), None, false),
            ),
        ]
    }

    fn refused(o: Result<Outcome, String>) -> Option<(u16, String)> {
        match o.expect("evaluates") {
            Outcome::Pass => None,
            Outcome::Refused { code, message } => Some((code, message)),
        }
    }

    #[test]
    fn validations_variables_and_conditions_evaluate_as_in_kube_apiserver() {
        let b = bound(
            json!([{"expression": "object.spec.replicas <= variables.max"},
                   {"expression": "request.userInfo.username != 'mallory'", "reason": "Forbidden",
                    "messageExpression": "'user ' + request.userInfo.username + ' may not'"}]),
            json!({"variables": [{"name": "max", "expression": "int(params.data.max)"}],
                   "matchConditions": [{"name": "not-system", "expression": "!object.metadata.name.startsWith('system-')"}]}),
        );
        let ok = json!({"metadata": {"name": "web"}, "spec": {"replicas": 3}});
        assert_eq!(refused(run(&b, &vars(ok))), None);
        let many = json!({"metadata": {"name": "web"}, "spec": {"replicas": 4}});
        assert_eq!(
            refused(run(&b, &vars(many))),
            Some((
                422,
                "failed expression: object.spec.replicas <= variables.max".into()
            ))
        );
        let exempt = json!({"metadata": {"name": "system-x"}, "spec": {"replicas": 9}});
        assert_eq!(
            refused(run(&b, &vars(exempt))),
            None,
            "matchCondition false"
        );
        let mut v = vars(json!({"metadata": {"name": "web"}, "spec": {"replicas": 1}}));
        v[2].1 = cel::to_cel(&json!({"userInfo": {"username": "mallory"}}), None, false);
        assert_eq!(
            refused(run(&b, &v)),
            Some((403, "user mallory may not".into()))
        );
        let missing = json!({"metadata": {"name": "web"}, "spec": {}});
        let err = run(&b, &vars(missing)).err().expect("error");
        assert_eq!(
            err,
            "expression 'object.spec.replicas <= variables.max' resulted in error: no such key: replicas"
        );
    }
}
