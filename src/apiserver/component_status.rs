//! `kubectl get componentstatuses`: the scheduler and the controller-manager are healthy
//! while their leader Lease in `kube-system` is renewed (kimg runs them elected, often on
//! another master than the one answering, so their Lease is the signal every master can
//! read, where kube-apiserver probes their local `/healthz`); `etcd-0` is healthy when the
//! store answers. Each read computes them afresh; nothing is stored.

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::error::ApiError;
use hyper::StatusCode;

use super::http::{json_response, Req, Response, Target};
use super::kinds::componentstatus::{object, DEPRECATED};
use super::object::from_kv;
use super::{table, State};

/// The components, named as kube-apiserver names them, with the Lease each holds.
const LEASED: [(&str, &str); 2] = [
    ("scheduler", "kube-scheduler"),
    ("controller-manager", "kube-controller-manager"),
];

/// Whether a Lease was renewed within twice its duration of `now`.
fn renewed(lease: &Value, now: OffsetDateTime) -> Result<(), String> {
    let spec = &lease["spec"];
    let holder = spec["holderIdentity"].as_str().unwrap_or_default();
    if holder.is_empty() {
        return Err("no leader holds the lease".into());
    }
    let duration = spec["leaseDurationSeconds"].as_i64().unwrap_or(15).max(1);
    let renew = spec["renewTime"]
        .as_str()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        .ok_or("the lease has no renew time")?;
    let age = (now - renew).whole_seconds();
    if age > 2 * duration {
        return Err(format!(
            "the leader {holder} last renewed its lease {age}s ago (lease duration {duration}s)"
        ));
    }
    Ok(())
}

async fn statuses(st: &State) -> Result<Vec<Value>, ApiError> {
    let now = OffsetDateTime::now_utc();
    let mut out = Vec::new();
    for (name, lease) in LEASED {
        let kv = st
            .get_cached(&format!("/registry/leases/kube-system/{lease}"))
            .await?;
        let verdict = match kv {
            Some(kv) => renewed(&from_kv(&kv)?, now),
            None => Err(format!("no {lease} lease: is it running?")),
        };
        out.push(match verdict {
            Ok(()) => object(name, true, "ok", ""),
            Err(e) => object(name, false, "", &e),
        });
    }
    out.push(match st.store.current_revision().await {
        Ok(_) => object("etcd-0", true, "{\"health\":\"true\",\"reason\":\"\"}", ""),
        Err(e) => object("etcd-0", false, "", &e.to_string()),
    });
    Ok(out)
}

/// `get` and `list` of `componentstatuses`.
pub async fn serve(st: &State, t: &Target, req: &Req) -> Result<Response, ApiError> {
    req.warn(DEPRECATED.into());
    let all = statuses(st).await?;
    if let Some(name) = &t.name {
        let one = all
            .into_iter()
            .find(|o| o["metadata"]["name"] == name.as_str())
            .ok_or_else(|| ApiError::NotFound {
                group: String::new(),
                resource: "componentstatuses".into(),
                name: name.clone(),
            })?;
        if req.wants_table() {
            return Ok(json_response(
                StatusCode::OK,
                &table::table(t, &[one], req, "", None),
            ));
        }
        return Ok(json_response(StatusCode::OK, &one));
    }
    if req.wants_table() {
        return Ok(json_response(
            StatusCode::OK,
            &table::table(t, &all, req, "", None),
        ));
    }
    let list = serde_json::json!({"kind": "ComponentStatusList", "apiVersion": "v1",
                                  "metadata": {}, "items": all});
    Ok(json_response(StatusCode::OK, &list))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_lease_is_healthy_while_renewed() {
        let now = OffsetDateTime::parse("2026-01-01T00:01:00Z", &Rfc3339).expect("time");
        let lease = |renew: &str| {
            json!({"spec": {"holderIdentity": "m1", "leaseDurationSeconds": 15,
                            "renewTime": renew}})
        };
        assert!(renewed(&lease("2026-01-01T00:00:50.123456Z"), now).is_ok());
        let err = renewed(&lease("2026-01-01T00:00:00Z"), now).expect_err("stale");
        assert!(err.contains("60s ago"), "{err}");
        assert!(renewed(&json!({"spec": {}}), now).is_err());
    }
}
