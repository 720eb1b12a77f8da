//! The CronJob controller: creates a Job at each scheduled time, honouring
//! `concurrencyPolicy` and the successful/failed history limits.
//!
//! How: the standard five-field schedule (and `@hourly`-style macros) is translated for the
//! `cron` crate, which counts weekdays from 1 = Sunday and wants a seconds field; as an
//! extension (for tests), a six-field schedule is taken as seconds-first. Each reconcile
//! finds the most recent missed time after `lastScheduleTime` (or creation), creates the
//! Job `<name>-<minutes since epoch>` (seconds for six-field schedules), and requeues
//! itself at the next time. Finished Jobs beyond the history limits are deleted, oldest
//! first.
//!
//! Limits: `timeZone` is ignored (UTC); `startingDeadlineSeconds` only skips runs that are
//! too late, it does not count missed runs; `suspend` is honoured.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams, PropagationPolicy};
use serde_json::json;

use super::runtime::{get, Requeue};
use super::status;
use super::{controller_of, Controller, Ctx, ReconcileError};

/// The controller-manager's row: what wakes it — a CronJob, or a Job it controls.
pub const CONTROLLER: Controller = Controller {
    name: "cronjob",
    triggers: |t, q| {
        t.own::<CronJob>(q);
        t.owner::<Job>("CronJob", q);
    },
    synced: Ctx::synced,
    reconcile: |ctx, _, key| Box::pin(async move { reconcile(&ctx, &key).await }),
};

/// Why a schedule cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid cron schedule {0:?}")]
pub struct ScheduleError(String);

fn dow_field(f: &str) -> String {
    // Kubernetes: 0 or 7 = Sunday … 6 = Saturday; the cron crate: 1 = Sunday … 7 = Saturday.
    let mut out = String::new();
    let mut num = String::new();
    let flush = |num: &mut String, out: &mut String| {
        if !num.is_empty() {
            let n: u32 = num.parse().unwrap_or(0);
            out.push_str(&((n % 7) + 1).to_string());
            num.clear();
        }
    };
    let mut after_slash = false;
    for c in f.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        if after_slash {
            out.push_str(&num);
            num.clear();
        } else {
            flush(&mut num, &mut out);
        }
        after_slash = c == '/';
        out.push(c);
    }
    if after_slash {
        out.push_str(&num);
    } else {
        flush(&mut num, &mut out);
    }
    out
}

/// Parses a CronJob schedule; returns it and whether it has a seconds field.
pub fn parse_schedule(s: &str) -> Result<(cron::Schedule, bool), ScheduleError> {
    let s = s.trim();
    let expr = match s {
        "@yearly" | "@annually" => "0 0 0 1 1 *".to_string(),
        "@monthly" => "0 0 0 1 * *".to_string(),
        "@weekly" => "0 0 0 * * 1".to_string(),
        "@daily" | "@midnight" => "0 0 0 * * *".to_string(),
        "@hourly" => "0 0 * * * *".to_string(),
        _ => {
            let f: Vec<&str> = s.split_whitespace().collect();
            match f.len() {
                5 => format!("0 {} {} {} {} {}", f[0], f[1], f[2], f[3], dow_field(f[4])),
                6 => format!(
                    "{} {} {} {} {} {}",
                    f[0],
                    f[1],
                    f[2],
                    f[3],
                    f[4],
                    dow_field(f[5])
                ),
                _ => return Err(ScheduleError(s.into())),
            }
        }
    };
    let seconds = s.split_whitespace().count() == 6;
    cron::Schedule::from_str(&expr)
        .map(|sch| (sch, seconds))
        .map_err(|_| ScheduleError(s.into()))
}

/// The latest scheduled time in `(after, now]`, and the next one after `now`.
pub fn due(
    schedule: &cron::Schedule,
    after: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let mut last = None;
    for t in schedule.after(&after) {
        if t > now {
            return (last, Some(t));
        }
        last = Some(t);
    }
    (last, None)
}

fn job_finished(j: &Job) -> Option<bool> {
    let conds = j.status.as_ref()?.conditions.as_ref()?;
    conds
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_ == "Complete")
}

/// Reconciles one CronJob (`namespace/name`).
#[tracing::instrument(skip(ctx))]
pub async fn reconcile(ctx: &Ctx, key: &str) -> Result<Requeue, ReconcileError> {
    let Some(cj) = get(&ctx.cronjobs, key) else {
        return Ok(None);
    };
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let ns = cj
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = cj.metadata.name.clone().unwrap_or_default();
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let spec = &cj.spec;
    let mut jobs: Vec<_> = ctx
        .jobs
        .state()
        .into_iter()
        .filter(|j| {
            j.metadata.namespace.as_deref() == Some(ns.as_str())
                && controller_of(j.as_ref()).is_some_and(|(_, _, u)| u == uid)
        })
        .collect();
    jobs.sort_by_key(|j| j.metadata.creation_timestamp.clone().map(|t| t.0));
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let background = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    // History limits.
    for (want_ok, limit) in [
        (true, spec.successful_jobs_history_limit.unwrap_or(3)),
        (false, spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let done: Vec<_> = jobs
            .iter()
            .filter(|j| job_finished(j) == Some(want_ok))
            .collect();
        let extra = done.len().saturating_sub(limit.max(0) as usize);
        for j in &done[..extra] {
            let jn = j.metadata.name.as_deref().unwrap_or_default();
            match jobs_api.delete(jn, &background).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(source) => {
                    return Err(ReconcileError::Delete {
                        kind: "Job",
                        key: format!("{ns}/{jn}"),
                        source,
                    })
                }
            }
        }
    }
    let active: Vec<_> = jobs.iter().filter(|j| job_finished(j).is_none()).collect();
    let Ok((schedule, seconds)) = parse_schedule(&spec.schedule) else {
        tracing::warn!(cronjob = key, schedule = %spec.schedule, "invalid schedule");
        return Ok(None);
    };
    let now = Utc::now();
    let since = cj
        .status
        .as_ref()
        .and_then(|s| s.last_schedule_time.as_ref())
        .or(cj.metadata.creation_timestamp.as_ref())
        // The cron crate counts in chrono's time; Kubernetes times are whole seconds.
        .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0))
        .unwrap_or(now);
    let (last, next) = due(&schedule, since, now);
    let requeue = next.map(|n| (n - now).to_std().unwrap_or_default() + Duration::from_millis(100));
    let mut status = json!({
        "active": active.iter().map(|j| json!({"apiVersion": "batch/v1", "kind": "Job",
            "name": j.metadata.name, "namespace": ns, "uid": j.metadata.uid})).collect::<Vec<_>>(),
    });
    if let Some(ok) = jobs.iter().rev().find(|j| job_finished(j) == Some(true)) {
        if let Some(t) = ok.status.as_ref().and_then(|s| s.completion_time.as_ref()) {
            status["lastSuccessfulTime"] = json!(t);
        }
    }
    let mut created = false;
    if let (Some(t), false) = (last, spec.suspend.unwrap_or(false)) {
        let too_late = spec
            .starting_deadline_seconds
            .is_some_and(|d| (now - t).num_seconds() > d);
        let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
        let blocked = policy == "Forbid" && !active.is_empty();
        if !too_late && !blocked {
            if policy == "Replace" {
                for j in &active {
                    let jn = j.metadata.name.as_deref().unwrap_or_default();
                    let _ = jobs_api.delete(jn, &background).await;
                }
            }
            let stamp = if seconds {
                t.timestamp()
            } else {
                t.timestamp() / 60
            };
            let template = spec.job_template.clone();
            let tm = template.metadata.clone().unwrap_or_default();
            let mut annotations = tm.annotations.clone().unwrap_or_default();
            annotations.insert(
                "batch.kubernetes.io/cronjob-scheduled-timestamp".into(),
                t.to_rfc3339(),
            );
            let job = Job {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-{stamp}")),
                    namespace: Some(ns.clone()),
                    labels: tm.labels,
                    annotations: Some(annotations),
                    owner_references: Some(vec![super::pods::controller_ref(cj.as_ref())]),
                    ..Default::default()
                },
                spec: Some(template.spec.unwrap_or_else(JobSpec::default)),
                status: None,
            };
            match jobs_api.create(&PostParams::default(), &job).await {
                Ok(_) => created = true,
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(source) => {
                    return Err(ReconcileError::Create {
                        kind: "Job",
                        owner: key.into(),
                        source,
                    })
                }
            }
        }
        status["lastScheduleTime"] = json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }
    let cur_active = cj
        .status
        .as_ref()
        .and_then(|s| s.active.as_ref())
        .map_or(0, |a| a.len());
    if last.is_some() || created || cur_active != active.len() {
        status::patch_status(&ctx.client, cj.as_ref(), status).await?;
    }
    Ok(requeue)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn five_field_schedules_fire_on_the_minute_with_sunday_as_zero() {
        let (s, secs) = parse_schedule("30 2 * * 0").expect("schedule");
        assert!(!secs);
        let from = Utc
            .with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
            .single()
            .expect("time"); // a Monday
        let next = s.after(&from).next().expect("next");
        assert_eq!(
            next,
            Utc.with_ymd_and_hms(2024, 1, 7, 2, 30, 0)
                .single()
                .expect("time")
        );
        assert!(parse_schedule("*/5 * * * 1-5").is_ok());
        assert!(parse_schedule("not a schedule").is_err());
    }

    #[test]
    fn the_latest_missed_time_is_run_once() {
        let (s, _) = parse_schedule("*/1 * * * *").expect("schedule");
        let t0 = Utc
            .with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
            .single()
            .expect("time");
        let now = t0 + chrono::Duration::seconds(185);
        let (last, next) = due(&s, t0, now);
        assert_eq!(last, Some(t0 + chrono::Duration::minutes(3)));
        assert_eq!(next, Some(t0 + chrono::Duration::minutes(4)));
        let (last, _) = due(&s, t0 + chrono::Duration::minutes(3), now);
        assert_eq!(last, None);
    }

    #[test]
    fn weekday_steps_keep_their_step() {
        assert_eq!(dow_field("1-5"), "2-6");
        assert_eq!(dow_field("*/2"), "*/2");
        assert_eq!(dow_field("0,6"), "1,7");
    }
}
