//! The Priority admission step for new pods, as kube-apiserver's `Priority` plugin does
//! it: `spec.priorityClassName` must name an existing PriorityClass, whose value (and
//! preemption policy) the pod gets in `spec.priority` (and `spec.preemptionPolicy`). A
//! pod without a class gets the global default class's value — the lowest, should
//! several claim it — else 0. A pod that states its own `spec.priority` must state the
//! class's value. The two system classes exist in every cluster ([`super::bootstrap`]).
//!
//! How: classes are read from the watch cache, as kube-apiserver's plugin reads them from
//! an informer: no etcd round trip per pod, at the price of the cache's milliseconds of
//! lag behind a class just created. Limits: the scheduler does not order or preempt by
//! priority yet.

use serde_json::{json, Value};

use super::error::ApiError;
use super::resources::by_plural;
use super::State;
use crate::store::ListOptions;

/// At most this many PriorityClasses are read to find the global default.
const MAX_CLASSES: usize = 10_000;

/// Fills in a new pod's priority from its class; refuses an unknown class.
pub async fn admit(st: &State, pod: &mut Value) -> Result<(), ApiError> {
    let res = by_plural("priorityclasses").ok_or(ApiError::RouteNotFound)?;
    let name = pod
        .pointer("/spec/priorityClassName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    let class = match &name {
        Some(n) => match st.get_cached(&res.key(None, n)).await? {
            Some(kv) => serde_json::from_slice::<Value>(&kv.value).ok(),
            None => {
                return Err(forbidden(
                    pod,
                    &format!("no PriorityClass with name {n} was found"),
                ))
            }
        },
        None => global_default(st, &res.prefix(None)).await?,
    };
    let value = class
        .as_ref()
        .and_then(|c| c.get("value"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if let Some(stated) = pod.pointer("/spec/priority").and_then(Value::as_i64) {
        if stated != value {
            return Err(forbidden(
                pod,
                &format!("the integer value of priority ({stated}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"),
            ));
        }
    }
    if !pod.get("spec").is_some_and(Value::is_object) {
        return Ok(());
    }
    pod["spec"]["priority"] = json!(value);
    if let Some(c) = &class {
        if let Some(policy) = c.get("preemptionPolicy").filter(|p| p.is_string()) {
            pod["spec"]["preemptionPolicy"] = policy.clone();
        }
        if name.is_none() {
            if let Some(n) = c.pointer("/metadata/name") {
                pod["spec"]["priorityClassName"] = n.clone();
            }
        }
    }
    Ok(())
}

/// `pods "NAME" is forbidden: WHY`, as the plugin words its refusals.
fn forbidden(pod: &Value, why: &str) -> ApiError {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    ApiError::Forbidden {
        message: format!("pods \"{name}\" is forbidden: {why}"),
        group: String::new(),
        resource: "pods".into(),
    }
}

/// The class marked `globalDefault` with the lowest value, if any.
async fn global_default(st: &State, prefix: &str) -> Result<Option<Value>, ApiError> {
    let options = ListOptions {
        limit: Some(MAX_CLASSES),
        ..Default::default()
    };
    let page = st.list(prefix, options, true).await?;
    Ok(page
        .items
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
        .filter(|c| c.get("globalDefault").and_then(Value::as_bool) == Some(true))
        .min_by_key(|c| c.get("value").and_then(Value::as_i64).unwrap_or(0)))
}
