//! Watch: `?watch=1` streams changes as chunked JSON lines `{"type":…,"object":…}`.
//!
//! How: without a `resourceVersion` (or with `0`) the watch first sends the current objects
//! as `ADDED`, then follows a store watch from the list's revision; with one, it replays
//! every change after it. Selectors are applied per event: an object that stops matching is
//! sent as `DELETED`, one that starts matching as `ADDED`. A revision that is too old
//! (compacted, or older than the watch cache's history) is answered, as kube-apiserver
//! does, with status 200 and a stream ending in an `ERROR` event holding a 410 `Status`,
//! which client-go and kube-rs answer with a re-list. `allowWatchBookmarks` adds a `BOOKMARK` every [`BOOKMARK_EVERY`]; with
//! `sendInitialEvents=true` the initial events end with a bookmark annotated
//! `k8s.io/initial-events-end`. Table output works as for lists (one row per event).
//! Events come from the shared watch cache ([`super::cache`]); a client that stops reading
//! holds at most [`BUFFER`] encoded events, then falls behind the cache and its watch ends
//! with 410 without slowing anyone else.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::http::{stream_response, Req, Response, Target};
use super::list::{list_objects, ListQuery};
use super::object::{self, parse_rv};
use super::{table, State};
use crate::store::{StoreError, WatchEventKind, WatchStream};

/// How often an idle watch with bookmarks enabled sends one.
pub const BOOKMARK_EVERY: Duration = Duration::from_secs(10);
/// Events buffered per watcher.
pub const BUFFER: usize = 256;
/// Longest watch when the client names no `timeoutSeconds`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

struct Encoder {
    table: bool,
    req_accept: String,
    include: Option<String>,
    res: &'static super::resources::Resource,
    custom: Option<std::sync::Arc<super::crd::Version>>,
}

impl Encoder {
    fn line(&self, kind: &str, mut obj: Value) -> Bytes {
        if kind != "ERROR" {
            super::crd::present(self.res, &mut obj);
        }
        let object = if self.table && kind != "ERROR" && kind != "BOOKMARK" {
            let rv = object::meta_str(&obj, "resourceVersion")
                .unwrap_or_default()
                .to_string();
            table::table_with(
                self.res,
                self.custom.as_deref(),
                &[obj],
                self.include.as_deref(),
                &self.req_accept,
                &rv,
                None,
            )
        } else {
            obj
        };
        let mut line =
            serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

fn bookmark(res: &super::resources::Resource, rev: i64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rev.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": meta})
}

/// Starts a watch on a collection.
pub async fn watch(st: &State, t: &Target, req: &Req) -> Result<Response, ApiError> {
    let q = ListQuery::from_req(req)?;
    let bookmarks = req.flag("allowWatchBookmarks");
    let timeout = req
        .q("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    let rv = req
        .q("resourceVersion")
        .filter(|s| !s.is_empty() && *s != "0");
    let send_initial = req.flag("sendInitialEvents") || rv.is_none();
    let enc = Encoder {
        table: req.wants_table(),
        req_accept: req.accept.clone(),
        include: req.q("includeObject").map(str::to_string),
        res: t.res,
        custom: t.custom.clone(),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(BUFFER);
    let (initial, from) = match (send_initial, rv) {
        (true, _) => {
            let page = list_objects(
                st,
                t.res,
                t.namespace.as_deref(),
                &ListQuery {
                    limit: None,
                    after: None,
                    ..q.clone()
                },
            )
            .await?;
            (page.items, page.revision)
        }
        (false, Some(rv)) => (Vec::new(), parse_rv(rv)?),
        (false, None) => (Vec::new(), 0),
    };
    // A revision that is too old is answered like kube-apiserver does: 200 and one ERROR
    // event carrying the 410, which clients (client-go, kube-rs) take as "re-list". An
    // HTTP 410 instead makes kube-rs retry the same revision forever.
    let mut stream: WatchStream = match st.watch(&t.res.prefix(t.namespace.as_deref()), from).await
    {
        Ok(s) => s,
        Err(e @ StoreError::Compacted { .. }) => Box::pin(futures::stream::iter([Err(e)])),
        Err(e) => return Err(e.into()),
    };
    let initial_end_bookmark = req.flag("sendInitialEvents") && bookmarks;
    tokio::spawn(async move {
        for obj in initial {
            if tx.send(enc.line("ADDED", obj)).await.is_err() {
                return;
            }
        }
        let mut last = from;
        if initial_end_bookmark
            && tx
                .send(enc.line("BOOKMARK", bookmark(enc.res, last, true)))
                .await
                .is_err()
        {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        tick.tick().await;
        loop {
            let event = tokio::select! {
                e = stream.next() => e,
                _ = tick.tick(), if bookmarks => {
                    if tx.send(enc.line("BOOKMARK", bookmark(enc.res, last, false))).await.is_err() {
                        return;
                    }
                    continue;
                }
                () = &mut deadline => return,
                () = tx.closed() => return,
            };
            let event = match event {
                None => return,
                Some(Err(e)) => {
                    let status = ApiError::from(e).status_object();
                    let _ = tx.send(enc.line("ERROR", status)).await;
                    return;
                }
                Some(Ok(ev)) => ev,
            };
            last = event.kv.mod_revision;
            let old = event
                .prev_kv
                .as_ref()
                .and_then(|kv| object::from_kv(kv).ok());
            let old_match = old.as_ref().is_some_and(|o| q.matches(o));
            let line = match event.kind {
                WatchEventKind::Delete => {
                    let Some(mut o) = old else { continue };
                    if !old_match {
                        continue;
                    }
                    object::set_rv(&mut o, event.kv.mod_revision);
                    enc.line("DELETED", o)
                }
                WatchEventKind::Put => {
                    let Ok(new) = object::from_kv(&event.kv) else {
                        continue;
                    };
                    match (old_match, q.matches(&new)) {
                        (false, true) => enc.line("ADDED", new),
                        (true, true) => enc.line("MODIFIED", new),
                        (true, false) => enc.line("DELETED", new),
                        (false, false) => continue,
                    }
                }
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    Ok(stream_response(rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::by_plural;
    use crate::store::{MemoryStore, Store};
    use http_body_util::BodyExt;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn req(query: &[(&str, &str)]) -> Req {
        Req {
            method: hyper::Method::GET,
            query: query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
            accept: "application/json".into(),
            content_type: String::new(),
            body: Bytes::new(),
            user: None,
            warnings: Default::default(),
        }
    }

    fn target() -> Target {
        Target {
            res: by_plural("configmaps").expect("cm"),
            namespace: Some("default".into()),
            name: None,
            sub: None,
            custom: None,
        }
    }

    fn cm(labels: Value) -> Vec<u8> {
        serde_json::to_vec(
            &json!({"metadata": {"name": "a", "namespace": "default", "labels": labels}}),
        )
        .expect("json")
    }

    /// Reads `n` watch events from a response body.
    async fn events(resp: Response, n: usize) -> Vec<Value> {
        let mut body = resp.into_body();
        let mut text = String::new();
        while text.lines().count() < n {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("event in time")
                .expect("stream open")
                .expect("frame");
            if let Ok(data) = frame.into_data() {
                text.push_str(&String::from_utf8_lossy(&data));
            }
        }
        text.lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }

    #[tokio::test]
    async fn a_watch_from_a_revision_turns_selector_changes_into_added_and_deleted() {
        let store = Arc::new(MemoryStore::new());
        let st = State::for_tests(store.clone());
        let key = "/registry/configmaps/default/a";
        let r1 = store
            .create(key, cm(json!({"app": "x"})))
            .await
            .expect("create");
        let resp = watch(
            &st,
            &target(),
            &req(&[
                ("watch", "1"),
                ("resourceVersion", &r1.to_string()),
                ("labelSelector", "app=web"),
            ]),
        )
        .await
        .expect("watch");
        let r2 = store
            .update(key, cm(json!({"app": "web"})), r1)
            .await
            .expect("update");
        let r3 = store
            .update(key, cm(json!({"app": "web", "v": "2"})), r2)
            .await
            .expect("update");
        store
            .update(key, cm(json!({"app": "db"})), r3)
            .await
            .expect("update");
        let evs = events(resp, 3).await;
        let kinds: Vec<&str> = evs.iter().filter_map(|e| e["type"].as_str()).collect();
        assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);
        assert_eq!(
            evs[1]["object"]["metadata"]["resourceVersion"],
            r3.to_string()
        );
    }

    #[tokio::test]
    async fn a_watch_from_a_compacted_revision_ends_with_a_410_error_event() {
        let store = Arc::new(MemoryStore::new());
        let st = State::for_tests(store.clone());
        let key = "/registry/configmaps/default/a";
        let r1 = store.create(key, cm(json!({}))).await.expect("create");
        let r2 = store
            .update(key, cm(json!({"v": "2"})), r1)
            .await
            .expect("update");
        store
            .update(key, cm(json!({"v": "3"})), r2)
            .await
            .expect("update");
        store.compact(r2 + 1).await.expect("compact");
        let resp = watch(
            &st,
            &target(),
            &req(&[("watch", "1"), ("resourceVersion", &r1.to_string())]),
        )
        .await
        .expect("a too old revision is not an HTTP error");
        assert_eq!(resp.status(), hyper::StatusCode::OK);
        let evs = events(resp, 1).await;
        assert_eq!(evs[0]["type"], "ERROR");
        assert_eq!(evs[0]["object"]["code"], 410);
        assert_eq!(evs[0]["object"]["reason"], "Expired");
    }

    #[tokio::test]
    async fn a_watch_without_a_revision_starts_with_the_current_objects() {
        let store = Arc::new(MemoryStore::new());
        let st = State::for_tests(store.clone());
        store
            .create("/registry/configmaps/default/a", cm(json!({})))
            .await
            .expect("create");
        store
            .create("/registry/configmaps/other/b", cm(json!({})))
            .await
            .expect("create");
        let resp = watch(&st, &target(), &req(&[("watch", "1")]))
            .await
            .expect("watch");
        store
            .delete("/registry/configmaps/default/a", None)
            .await
            .expect("delete");
        let evs = events(resp, 2).await;
        assert_eq!(evs[0]["type"], "ADDED");
        assert_eq!(evs[1]["type"], "DELETED");
        assert_eq!(evs[1]["object"]["metadata"]["name"], "a");
    }
}
