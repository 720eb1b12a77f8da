//! The audit log: one JSON line per request, in kube-apiserver's `audit.k8s.io/v1` Event
//! format, chosen by a policy in kube-apiserver's Policy format.
//!
//! What: [`Auditor::start`] opens the log (`--audit-log-path`; masters keep it on `STATE` at
//! [`MASTER_LOG`]) and reads the policy (`--audit-policy-file`, else [`DEFAULT_POLICY`]).
//! Each request that the policy gives a level other than `None` is written when its response
//! starts (stage `ResponseComplete`, or `ResponseStarted` for watches and streams): who
//! (user, groups, user agent), what (verb, URI, object reference), the response code, the
//! times, and at level `Request` the request's object (JSON bodies). Rules match as in
//! kube-apiserver: the first rule whose every given field matches (`users`, `userGroups`,
//! `verbs`, `namespaces`, `resources` with group, resources incl. `res/sub`, `*/sub`, `res/*`
//! and `resourceNames`, `nonResourceURLs` with a trailing `*`) decides; no rule: `None`.
//!
//! How: requests hand finished lines to a bounded channel and never wait on the disk; one
//! task appends them to the file (0600, directory 0700), flushing whenever the channel is
//! empty, and rotates it past `--audit-log-maxsize` MiB (`audit.log` → `audit.log.1` …,
//! keeping `--audit-log-maxbackup` old files). Lines that do not fit the channel are
//! dropped and counted in a warning, so a slow disk cannot stop the API.
//!
//! Limits: `RequestResponse` logs what `Request` logs (no response bodies); `omitStages` is
//! accepted and ignored (only the final stage is written); no webhook backend; protobuf
//! bodies are not decoded into `requestObject`; no `sourceIPs`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::http::Target;
use super::tls::User;

/// Where a master writes its audit log (on `STATE`, so it survives reboots).
pub const MASTER_LOG: &str = "/var/lib/kimg/audit/audit.log";

/// The policy used without `--audit-policy-file`: no health probes, Leases (renewed several
/// times a second), Events, or nodes' reads; only metadata for Secrets, ConfigMaps and
/// tokens (never their contents); request bodies for other writes; metadata for the rest.
pub const DEFAULT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
rules:
  - level: None
    nonResourceURLs: ["/healthz*", "/livez*", "/readyz*", "/version"]
  - level: None
    resources: [{group: coordination.k8s.io, resources: [leases]}, {group: "", resources: [events]}]
  - level: None
    userGroups: ["system:nodes"]
    verbs: [get, list, watch]
  - level: Metadata
    resources:
      - {group: "", resources: [secrets, configmaps, serviceaccounts/token]}
      - {group: authentication.k8s.io, resources: [tokenreviews]}
  - level: Request
    verbs: [create, update, patch, delete, deletecollection]
  - level: Metadata
"#;

/// How much is recorded about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum Level {
    None,
    Metadata,
    Request,
    RequestResponse,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::None => "None",
            Level::Metadata => "Metadata",
            Level::Request => "Request",
            Level::RequestResponse => "RequestResponse",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicyFile {
    api_version: String,
    kind: String,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    omit_stages: Vec<String>,
    #[serde(default)]
    omit_managed_fields: Option<bool>,
    #[serde(default)]
    rules: Vec<Rule>,
}

/// One policy rule; empty lists match everything.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Rule {
    level: Level,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    #[serde(default)]
    omit_stages: Vec<String>,
    #[serde(default)]
    omit_managed_fields: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GroupResources {
    #[serde(default)]
    group: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

/// A parsed audit policy.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
}

/// What the policy and the event need to know about a request; filled in as the request is
/// understood (an unauthenticated request has no user).
#[derive(Debug, Default, Clone)]
pub struct Note {
    pub user: Option<User>,
    pub verb: String,
    pub target: Option<Target>,
    pub user_agent: String,
    /// The request body, for level `Request` (JSON only).
    pub body: Option<bytes::Bytes>,
    /// Warnings the handlers left for the client.
    pub warnings: Vec<String>,
}

impl Policy {
    /// Parses a Policy document; errors carry serde's line and column.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let file: PolicyFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        if file.kind != "Policy" || !file.api_version.starts_with("audit.k8s.io/") {
            return Err(format!(
                "expected kind Policy of audit.k8s.io/v1, found kind {:?} of {:?}",
                file.kind, file.api_version
            ));
        }
        let _ = (file.metadata, file.omit_stages, file.omit_managed_fields);
        Ok(Policy { rules: file.rules })
    }

    /// Reads a policy file; errors name the file.
    pub fn load(path: &Path) -> Result<Policy, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Policy::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The level of a request: the first matching rule's, else `None`.
    pub fn level(&self, note: &Note, path: &str) -> Level {
        self.rules
            .iter()
            .find(|r| r.matches(note, path))
            .map(|r| r.level)
            .unwrap_or(Level::None)
    }
}

impl Rule {
    fn matches(&self, note: &Note, path: &str) -> bool {
        let _ = (&self.omit_stages, self.omit_managed_fields);
        let user = note.user.as_ref();
        if !self.users.is_empty() && !user.is_some_and(|u| self.users.contains(&u.name)) {
            return false;
        }
        if !self.user_groups.is_empty()
            && !user.is_some_and(|u| u.groups.iter().any(|g| self.user_groups.contains(g)))
        {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.contains(&note.verb) {
            return false;
        }
        match &note.target {
            Some(t) => {
                if !self.non_resource_urls.is_empty() {
                    return false;
                }
                let ns = t.namespace.as_deref().unwrap_or_default();
                if !self.namespaces.is_empty() && !self.namespaces.iter().any(|n| n == ns) {
                    return false;
                }
                self.resources.is_empty() || self.resources.iter().any(|g| g.matches(t))
            }
            None => {
                if !self.resources.is_empty() || !self.namespaces.is_empty() {
                    return false;
                }
                self.non_resource_urls.is_empty()
                    || self
                        .non_resource_urls
                        .iter()
                        .any(|u| match u.strip_suffix('*') {
                            Some(prefix) => path.starts_with(prefix),
                            None => path == u,
                        })
            }
        }
    }
}

impl GroupResources {
    fn matches(&self, t: &Target) -> bool {
        if self.group != t.res.group {
            return false;
        }
        let resource = t.res.plural;
        let sub = t.sub.as_deref();
        let named = |r: &String| match (r.split_once('/'), sub) {
            (None, None) => r == "*" || r == resource,
            (None, Some(_)) => false,
            (Some((res, s)), Some(sub)) => {
                (res == "*" || res == resource) && (s == "*" || s == sub)
            }
            (Some(_), None) => false,
        };
        if !self.resources.is_empty() && !self.resources.iter().any(named) {
            return false;
        }
        self.resource_names.is_empty()
            || t.name
                .as_deref()
                .is_some_and(|n| self.resource_names.iter().any(|r| r == n))
    }
}

/// Lines waiting for the writer; more are dropped (and counted).
const QUEUE: usize = 8192;

/// The audit log of one apiserver.
pub struct Auditor {
    policy: Policy,
    tx: mpsc::Sender<Vec<u8>>,
    dropped: AtomicU64,
}

/// Where and how the log is written.
#[derive(Debug, Clone)]
pub struct LogFile {
    pub path: PathBuf,
    /// Rotate past this many bytes.
    pub max_bytes: u64,
    /// Old files kept (`audit.log.1` … `.N`).
    pub backups: usize,
}

impl Auditor {
    /// Opens (creating) the log and starts its writer task.
    pub fn start(file: LogFile, policy: Policy) -> std::io::Result<Arc<Auditor>> {
        let out = open_log(&file.path)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_lines(file, out, rx));
        Ok(Arc::new(Auditor {
            policy,
            tx,
            dropped: AtomicU64::new(0),
        }))
    }

    /// Writes the event of a finished request (if the policy wants one).
    pub fn record(
        &self,
        note: &Note,
        method: &hyper::Method,
        uri: &hyper::Uri,
        code: u16,
        received: time::OffsetDateTime,
        streaming: bool,
    ) {
        let level = self.policy.level(note, uri.path());
        if level == Level::None {
            return;
        }
        let verb = if note.verb.is_empty() {
            method.as_str().to_ascii_lowercase()
        } else {
            note.verb.clone()
        };
        let mut event = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": level.name(),
            "auditID": super::object::new_uid(),
            "stage": if streaming { "ResponseStarted" } else { "ResponseComplete" },
            "requestURI": uri.to_string(),
            "verb": verb,
            "user": match &note.user {
                Some(u) => json!({"username": u.name, "groups": u.groups}),
                None => json!({"username": "system:anonymous"}),
            },
            "userAgent": note.user_agent,
            "responseStatus": {"metadata": {}, "code": code},
            "requestReceivedTimestamp": rfc3339_micros(received),
            "stageTimestamp": rfc3339_micros(time::OffsetDateTime::now_utc()),
        });
        if let Some(t) = &note.target {
            let mut r = json!({
                "resource": t.res.plural,
                "apiVersion": t.res.version,
            });
            if !t.res.group.is_empty() {
                r["apiGroup"] = json!(t.res.group);
            }
            for (k, v) in [
                ("namespace", &t.namespace),
                ("name", &t.name),
                ("subresource", &t.sub),
            ] {
                if let Some(v) = v {
                    r[k] = json!(v);
                }
            }
            event["objectRef"] = r;
        }
        if level >= Level::Request {
            if let Some(obj) = note
                .body
                .as_ref()
                .and_then(|b| serde_json::from_slice::<Value>(b).ok())
            {
                event["requestObject"] = obj;
            }
        }
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        if self.tx.try_send(line).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "audit log: the writer is behind; events dropped"
                );
            }
        }
    }
}

fn rfc3339_micros(t: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(f)
        .unwrap_or_default()
}

fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Shifts `audit.log.N-1` → `.N` … and `audit.log` → `.1`, dropping the oldest.
fn rotate(file: &LogFile) -> std::io::Result<()> {
    if file.backups == 0 {
        return std::fs::remove_file(&file.path);
    }
    crate::files::shift_backups(&file.path, file.backups);
    std::fs::rename(&file.path, crate::files::numbered(&file.path, 1))
}

async fn write_lines(file: LogFile, out: std::fs::File, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut size = out.metadata().map(|m| m.len()).unwrap_or(0);
    let mut out = std::io::BufWriter::new(out);
    while let Some(line) = rx.recv().await {
        let mut batch = vec![line];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
            if batch.len() >= 256 {
                break;
            }
        }
        // The file is written from a blocking section: disks can stall.
        let result = tokio::task::block_in_place(|| -> std::io::Result<()> {
            for line in &batch {
                if size > 0 && size + line.len() as u64 > file.max_bytes {
                    out.flush()?;
                    rotate(&file)?;
                    out = std::io::BufWriter::new(open_log(&file.path)?);
                    size = 0;
                }
                out.write_all(line)?;
                size += line.len() as u64;
            }
            out.flush()
        });
        if let Err(e) = result {
            tracing::warn!(path = %file.path.display(), error = %e, "audit log: cannot write");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources;

    fn target(plural: &str, ns: Option<&str>, name: Option<&str>, sub: Option<&str>) -> Target {
        let res = resources::by_plural(plural).expect("known resource");
        Target {
            res,
            namespace: ns.map(str::to_string),
            name: name.map(str::to_string),
            sub: sub.map(str::to_string),
            custom: None,
        }
    }

    fn note(user: &str, groups: &[&str], verb: &str, target: Option<Target>) -> Note {
        Note {
            user: Some(User {
                name: user.into(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
            }),
            verb: verb.into(),
            target,
            ..Default::default()
        }
    }

    #[test]
    fn the_default_policy_skips_noise_and_never_logs_secret_bodies() {
        let p = Policy::parse(DEFAULT_POLICY).expect("default policy parses");
        let admin = ["system:masters"];
        let lease = target("leases", Some("kube-system"), Some("kimg-vip"), None);
        assert_eq!(
            p.level(&note("m", &admin, "update", Some(lease)), ""),
            Level::None
        );
        assert_eq!(
            p.level(&note("m", &admin, "get", None), "/readyz"),
            Level::None
        );
        let secret = target("secrets", Some("default"), Some("db"), None);
        assert_eq!(
            p.level(&note("a", &admin, "create", Some(secret)), ""),
            Level::Metadata
        );
        let token = target("serviceaccounts", Some("default"), Some("d"), Some("token"));
        assert_eq!(
            p.level(&note("a", &admin, "create", Some(token)), ""),
            Level::Metadata
        );
        let pod = target("pods", Some("default"), None, None);
        assert_eq!(
            p.level(&note("a", &admin, "create", Some(pod.clone())), ""),
            Level::Request
        );
        assert_eq!(
            p.level(&note("a", &admin, "list", Some(pod.clone())), ""),
            Level::Metadata
        );
        assert_eq!(
            p.level(
                &note("system:node:w", &["system:nodes"], "watch", Some(pod)),
                ""
            ),
            Level::None
        );
    }

    #[test]
    fn rules_match_like_kube_apiserver() {
        let p = Policy::parse(
            r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: RequestResponse
    users: [alice]
    resources: [{group: apps, resources: ["deployments/*"]}]
  - level: Request
    namespaces: [prod]
    resources: [{group: "", resources: [configmaps], resourceNames: [settings]}]
  - level: Metadata
    nonResourceURLs: ["/apis*"]
"#,
        )
        .expect("parse");
        let scale = target("deployments", Some("a"), Some("d"), Some("scale"));
        assert_eq!(
            p.level(&note("alice", &[], "update", Some(scale.clone())), ""),
            Level::RequestResponse
        );
        assert_eq!(
            p.level(&note("bob", &[], "update", Some(scale)), ""),
            Level::None
        );
        let deploy = target("deployments", Some("a"), Some("d"), None);
        assert_eq!(
            p.level(&note("alice", &[], "update", Some(deploy)), ""),
            Level::None
        );
        let cm = |ns, name| target("configmaps", Some(ns), Some(name), None);
        assert_eq!(
            p.level(&note("bob", &[], "get", Some(cm("prod", "settings"))), ""),
            Level::Request
        );
        assert_eq!(
            p.level(&note("bob", &[], "get", Some(cm("dev", "settings"))), ""),
            Level::None
        );
        assert_eq!(
            p.level(&note("bob", &[], "get", Some(cm("prod", "other"))), ""),
            Level::None
        );
        assert_eq!(
            p.level(&note("bob", &[], "get", None), "/apis/apps/v1"),
            Level::Metadata
        );
        assert_eq!(p.level(&note("bob", &[], "get", None), "/api"), Level::None);
    }

    #[test]
    fn a_bad_policy_says_where() {
        let e =
            Policy::parse("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: Loud\n")
                .unwrap_err();
        assert!(e.contains("line 4") && e.contains("Loud"), "{e}");
        let e = Policy::parse(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: None\n    verb: [get]\n",
        )
        .unwrap_err();
        assert!(e.contains("unknown field `verb`"), "{e}");
        let e = Policy::parse("apiVersion: v1\nkind: ConfigMap\n").unwrap_err();
        assert!(e.contains("expected kind Policy"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_are_json_lines_and_the_file_rotates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit/audit.log");
        let file = LogFile {
            path: path.clone(),
            max_bytes: 4096,
            backups: 2,
        };
        let a =
            Auditor::start(file, Policy::parse(DEFAULT_POLICY).expect("policy")).expect("start");
        let mut n = note(
            "admin",
            &["system:masters"],
            "create",
            Some(target("pods", Some("default"), None, None)),
        );
        n.body = Some(bytes::Bytes::from_static(
            br#"{"kind":"Pod","metadata":{"name":"p"}}"#,
        ));
        let uri: hyper::Uri = "/api/v1/namespaces/default/pods".parse().expect("uri");
        for _ in 0..40 {
            a.record(
                &n,
                &hyper::Method::POST,
                &uri,
                201,
                time::OffsetDateTime::now_utc(),
                false,
            );
        }
        // The writer works through the 40 records on its own task and may be between
        // renaming the log and opening the next one: wait until the log and both backups
        // exist and no size changed over one pause.
        let sizes = || {
            ["audit.log", "audit.log.1", "audit.log.2"].map(|f| {
                std::fs::metadata(dir.path().join("audit").join(f))
                    .map(|m| m.len())
                    .ok()
            })
        };
        let mut last = None;
        for _ in 0..200 {
            let now = sizes();
            if now.iter().all(Option::is_some) && last == Some(now) {
                break;
            }
            last = Some(now);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(
            !dir.path().join("audit/audit.log.3").exists(),
            "only 2 backups kept"
        );
        let text = std::fs::read_to_string(dir.path().join("audit/audit.log.1")).expect("rotated");
        let first: Value =
            serde_json::from_str(text.lines().next().expect("a line")).expect("json");
        assert_eq!(first["level"], "Request");
        assert_eq!(first["verb"], "create");
        assert_eq!(first["objectRef"]["resource"], "pods");
        assert_eq!(first["objectRef"]["namespace"], "default");
        assert_eq!(first["requestObject"]["metadata"]["name"], "p");
        assert_eq!(first["responseStatus"]["code"], 201);
        assert_eq!(first["user"]["username"], "admin");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("log").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
