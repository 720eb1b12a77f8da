//! The Job controller: runs pods until `completions` succeeded (or, without completions,
//! one succeeded and none is left running), at most `parallelism` at once, and gives up
//! after more than `backoffLimit` failed pods.
//!
//! How: pods are counted from the cache by controller reference, with the ReplicaSet
//! expectations guarding against double creation. A finished Job gets `Complete` (with
//! `SuccessCriteriaMet`) or `Failed` (`BackoffLimitExceeded`) and its running pods deleted.
//!
//! Limits: no indexed completion mode, no pod failure policy, no `activeDeadlineSeconds`,
//! no exponential delay between retries; pods are not finalizer-tracked, so a failed pod
//! deleted before it was counted is not counted.

use std::collections::HashSet;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::pods::{self, is_active, is_ready, phase};
use super::runtime::{get, Requeue};
use super::status;
use super::{Controller, Ctx, ReconcileError};

/// The controller-manager's row: what wakes it — a Job, or a pod it controls.
pub const CONTROLLER: Controller = Controller {
    name: "job",
    triggers: |t, q| {
        t.own::<Job>(q);
        t.owner::<Pod>("Job", q);
    },
    synced: Ctx::synced,
    reconcile: |ctx, _, key| Box::pin(async move { reconcile(&ctx, &key).await }),
};

/// What a Job should do next, from its counts (pure, for tests).
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Create(i32),
    Wait,
    Complete,
    Fail,
}

/// Decides the next step from spec and pod counts.
pub fn step(
    completions: Option<i32>,
    parallelism: i32,
    backoff_limit: i32,
    active: i32,
    succeeded: i32,
    failed: i32,
) -> Step {
    if failed > backoff_limit {
        return Step::Fail;
    }
    let done = match completions {
        Some(c) => succeeded >= c,
        None => succeeded > 0 && active == 0,
    };
    if done {
        return Step::Complete;
    }
    let want = match completions {
        Some(c) => parallelism.min(c - succeeded),
        None if succeeded > 0 => 0,
        None => parallelism,
    };
    if active < want {
        Step::Create(want - active)
    } else {
        Step::Wait
    }
}

fn finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

/// Reconciles one Job (`namespace/name`).
#[tracing::instrument(skip(ctx))]
pub async fn reconcile(ctx: &Ctx, key: &str) -> Result<Requeue, ReconcileError> {
    let Some(job) = get(&ctx.jobs, key) else {
        ctx.expectations.forget(key);
        return Ok(None);
    };
    if job.metadata.deletion_timestamp.is_some() || finished(&job) {
        return Ok(None);
    }
    let ns = job
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let spec = job.spec.clone().unwrap_or_default();
    let owned = pods::owned_by(ctx, &ns, &uid);
    let present: HashSet<String> = owned
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let (adds, _) = ctx.expectations.observe(key, &HashSet::new(), &present);
    let active: Vec<_> = owned.iter().filter(|p| is_active(p)).collect();
    let succeeded = owned.iter().filter(|p| phase(p) == "Succeeded").count() as i32;
    let failed = owned.iter().filter(|p| phase(p) == "Failed").count() as i32;
    let ready = active.iter().filter(|p| is_ready(p)).count() as i32;
    let n_active = active.len() as i32 + adds.len() as i32;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let start = job
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| format!("{:.0}", t.0))
        .unwrap_or_else(|| now.clone());
    let mut status = json!({
        "active": active.len() as i32, "succeeded": succeeded, "failed": failed,
        "ready": ready, "startTime": start,
    });
    let cond = |t: &str, reason: &str, msg: &str| {
        json!({"type": t, "status": "True", "reason": reason, "message": msg,
               "lastProbeTime": now, "lastTransitionTime": now})
    };
    match step(
        spec.completions,
        spec.parallelism.unwrap_or(1),
        spec.backoff_limit.unwrap_or(6),
        n_active,
        succeeded,
        failed,
    ) {
        Step::Create(n) => {
            let prefix = format!("{}-", job.metadata.name.as_deref().unwrap_or("job"));
            let mut template = spec.template.clone();
            let labels = template
                .metadata
                .get_or_insert_with(Default::default)
                .labels
                .get_or_insert_with(Default::default);
            labels.insert(
                "batch.kubernetes.io/job-name".into(),
                job.metadata.name.clone().unwrap_or_default(),
            );
            labels.insert("batch.kubernetes.io/controller-uid".into(), uid.clone());
            let mut created = Vec::new();
            for _ in 0..n {
                let pod = pods::from_template(
                    &template,
                    &ns,
                    &prefix,
                    pods::controller_ref(job.as_ref()),
                );
                created.push(pods::create(ctx, &pod, key).await?);
            }
            ctx.expectations.expect(key, &created, &[]);
            status["active"] = json!(active.len() as i32 + created.len() as i32);
        }
        Step::Wait => {}
        Step::Complete => {
            status["completionTime"] = json!(now);
            status["conditions"] = json!([
                cond(
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods"
                ),
                cond(
                    "Complete",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods"
                ),
            ]);
            for p in &active {
                pods::delete(ctx, &ns, p.metadata.name.as_deref().unwrap_or_default()).await?;
            }
            status["active"] = json!(0);
        }
        Step::Fail => {
            status["conditions"] = json!([
                cond(
                    "FailureTarget",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit"
                ),
                cond(
                    "Failed",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit"
                ),
            ]);
            for p in &active {
                pods::delete(ctx, &ns, p.metadata.name.as_deref().unwrap_or_default()).await?;
            }
            status["active"] = json!(0);
        }
    }
    status::patch_status_if_changed(&ctx.client, job.as_ref(), job.status.as_ref(), status).await?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallelism_caps_the_pods_created_at_once() {
        assert_eq!(step(Some(5), 2, 6, 0, 0, 0), Step::Create(2));
        assert_eq!(step(Some(5), 2, 6, 2, 0, 0), Step::Wait);
        assert_eq!(step(Some(5), 2, 6, 0, 4, 0), Step::Create(1));
    }

    #[test]
    fn completions_and_backoff_limit_end_the_job() {
        assert_eq!(step(Some(3), 1, 6, 0, 3, 0), Step::Complete);
        assert_eq!(step(None, 1, 6, 0, 1, 0), Step::Complete);
        assert_eq!(step(Some(3), 1, 2, 0, 0, 3), Step::Fail);
        assert_eq!(step(Some(3), 1, 2, 0, 0, 2), Step::Create(1));
    }
}
