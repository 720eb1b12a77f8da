//! The watch cache: one store watch feeds an in-memory mirror of `/registry/` that serves
//! lists and every watcher (docs/ARCHITECTURE.md §7).
//!
//! What: [`WatchCache::list`] answers range reads from memory — `resourceVersion=0` at once
//! ("any"), an unset one after the cache has caught up with the store's current revision
//! (a consistent read, like Kubernetes' consistent reads from cache), an exact revision only
//! if it is the cache's own (else from the store). [`WatchCache::watch`] replays the
//! retained history after the requested revision and then follows live events; a revision
//! older than the history answers 410 Gone, as kube-apiserver's cache does.
//!
//! How: a feeder task follows a single store watch on the whole registry (so the cache's
//! revision is the store's, which is what makes consistent reads possible without progress
//! notifications). Each event updates the mirror, is appended to a bounded history
//! ([`HISTORY`] events) and is published on a `tokio::sync::broadcast` channel of
//! [`FANOUT`] slots. Publishing never waits: a watcher that falls more than [`FANOUT`]
//! events behind finds its receiver lagged and its stream ends with 410 (`Compacted`), so
//! one slow client can never hold back the others. If the store watch breaks (its etcd
//! member went away), the feeder watches again from the cache's revision and no client
//! notices; only a compacted start makes it re-list, and then every open watch ends with 410
//! (clients then re-list).
//! Limits: objects are kept as stored bytes (decoded again for each list and watcher);
//! reads stay consistent only if every store write is under `/registry/` (a read that
//! cannot catch up in [`CATCH_UP`] falls back to the store).

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{broadcast, watch};

use crate::store::{
    KeyValue, ListOptions, ListResult, Store, StoreError, WatchEvent, WatchEventKind, WatchStream,
};

/// Everything the cache mirrors.
pub const PREFIX: &str = "/registry/";
/// Events kept for watches that start from an older revision.
pub const HISTORY: usize = 10_000;
/// Events a watcher may fall behind before its watch ends with 410.
pub const FANOUT: usize = 4_096;
/// How long a consistent read waits for the cache before reading the store instead.
pub const CATCH_UP: Duration = Duration::from_secs(3);

#[derive(Clone)]
enum Note {
    Event(Arc<WatchEvent>),
    /// The cache was rebuilt at this revision; watches must start over.
    Reset,
}

struct Inner {
    objects: BTreeMap<String, Arc<KeyValue>>,
    history: VecDeque<Arc<WatchEvent>>,
    /// Every event after this revision is in `history`.
    floor: i64,
    revision: i64,
    /// The revision of the last change to each resource (`/registry/<resource>/…`).
    changed: std::collections::HashMap<String, i64>,
    /// The revision of the last re-list (every resource may have changed then).
    relisted: i64,
}

/// A value derived from some resources of the cache (the served custom kinds, the
/// admission webhooks), kept until one of those resources changes.
pub struct Derived<T>(std::sync::Mutex<Option<(i64, Arc<T>)>>);

impl<T> Default for Derived<T> {
    fn default() -> Self {
        Derived(std::sync::Mutex::new(None))
    }
}

impl<T> Derived<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(i64, Arc<T>)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value computed at revision `at`, if that is the one kept.
    pub fn fresh(&self, at: i64) -> Option<Arc<T>> {
        self.lock()
            .as_ref()
            .filter(|(rev, _)| *rev == at)
            .map(|(_, v)| v.clone())
    }

    /// The last value computed, whatever its revision.
    pub fn last(&self) -> Option<Arc<T>> {
        self.lock().as_ref().map(|(_, v)| v.clone())
    }

    /// Keeps `value`, computed at revision `at`.
    pub fn keep(&self, at: i64, value: Arc<T>) {
        *self.lock() = Some((at, value));
    }
}

/// The resource segment of a registry key (`pods` of `/registry/pods/ns/name`).
fn resource_of(key: &str) -> &str {
    let rest = key.strip_prefix(PREFIX).unwrap_or(key);
    rest.split('/').next().unwrap_or_default()
}

/// The shared cache; see the module docs.
pub struct WatchCache {
    store: Arc<dyn Store>,
    inner: Mutex<Inner>,
    notes: broadcast::Sender<Note>,
    revision: watch::Sender<i64>,
}

fn gone(requested: i64, floor: i64) -> StoreError {
    StoreError::Compacted {
        requested,
        compacted_revision: Some(floor),
    }
}

impl WatchCache {
    /// Lists the registry and starts the feeder task.
    pub async fn start(store: Arc<dyn Store>) -> Result<Arc<WatchCache>, StoreError> {
        let (notes, _) = broadcast::channel(FANOUT);
        let cache = Arc::new(WatchCache {
            store,
            inner: Mutex::new(Inner {
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                floor: 0,
                revision: 0,
                changed: Default::default(),
                relisted: 0,
            }),
            notes,
            revision: watch::channel(0).0,
        });
        cache.relist().await?;
        tokio::spawn(feed(Arc::downgrade(&cache)));
        Ok(cache)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the cache currently holds `key`. A miss may only mean the cache has not
    /// caught up yet; callers that need certainty then ask the store.
    pub fn contains(&self, key: &str) -> bool {
        self.lock().objects.contains_key(key)
    }

    /// The revision the cache reflects.
    pub fn revision(&self) -> i64 {
        self.lock().revision
    }

    /// The revision of the cache's last change to any of `resources` (such as
    /// `["roles", "rolebindings"]`): what was derived from them at that revision is still
    /// true.
    pub fn changed_at(&self, resources: &[&str]) -> i64 {
        let inner = self.lock();
        resources
            .iter()
            .filter_map(|r| inner.changed.get(*r).copied())
            .fold(inner.relisted, i64::max)
    }

    async fn relist(&self) -> Result<i64, StoreError> {
        let page = self.store.list(PREFIX, ListOptions::default()).await?;
        let mut inner = self.lock();
        inner.objects = page
            .items
            .into_iter()
            .map(|kv| (kv.key.clone(), Arc::new(kv)))
            .collect();
        inner.history.clear();
        inner.floor = page.revision;
        inner.revision = page.revision;
        inner.changed.clear();
        inner.relisted = page.revision;
        let _ = self.notes.send(Note::Reset);
        self.revision.send_replace(page.revision);
        Ok(page.revision)
    }

    fn apply(&self, ev: WatchEvent) {
        let ev = Arc::new(ev);
        let mut inner = self.lock();
        match ev.kind {
            WatchEventKind::Put => {
                inner
                    .objects
                    .insert(ev.kv.key.clone(), Arc::new(ev.kv.clone()));
            }
            WatchEventKind::Delete => {
                inner.objects.remove(&ev.kv.key);
            }
        }
        inner.revision = inner.revision.max(ev.kv.mod_revision);
        let resource = resource_of(&ev.kv.key);
        match inner.changed.get_mut(resource) {
            Some(r) => *r = ev.kv.mod_revision,
            None => {
                inner
                    .changed
                    .insert(resource.to_string(), ev.kv.mod_revision);
            }
        }
        inner.history.push_back(ev.clone());
        while inner.history.len() > HISTORY {
            if let Some(old) = inner.history.pop_front() {
                inner.floor = old.kv.mod_revision;
            }
        }
        let rev = inner.revision;
        let _ = self.notes.send(Note::Event(ev));
        drop(inner);
        self.revision.send_replace(rev);
    }

    /// Waits until the cache has seen `rev`; false after [`CATCH_UP`].
    async fn caught_up(&self, rev: i64) -> bool {
        let mut rx = self.revision.subscribe();
        tokio::time::timeout(CATCH_UP, rx.wait_for(|r| *r >= rev))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// A range read with the store's semantics; `any` serves whatever the cache holds.
    pub async fn list(
        &self,
        prefix: &str,
        options: ListOptions,
        any: bool,
    ) -> Result<ListResult, StoreError> {
        match options.revision {
            Some(r) if r != self.revision() => return self.store.list(prefix, options).await,
            Some(_) => {}
            None if any => {}
            None => {
                let current = self.store.current_revision().await?;
                if !self.caught_up(current).await {
                    return self.store.list(prefix, options).await;
                }
            }
        }
        match self.read(prefix, &options) {
            Some(page) => Ok(page),
            None => self.store.list(prefix, options).await,
        }
    }

    /// A range read from memory; `None` if the cache is not at the wanted revision.
    fn read(&self, prefix: &str, options: &ListOptions) -> Option<ListResult> {
        let inner = self.lock();
        if options.revision.is_some_and(|r| r != inner.revision) {
            return None;
        }
        let start = match &options.start_after {
            Some(k) => Bound::Excluded(k.clone()),
            None => Bound::Included(prefix.to_string()),
        };
        let mut range = inner
            .objects
            .range((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix));
        let limit = options.limit.unwrap_or(usize::MAX);
        let items: Vec<KeyValue> = range
            .by_ref()
            .take(limit)
            .map(|(_, kv)| (**kv).clone())
            .collect();
        let remaining = range.count() as i64;
        Some(ListResult {
            items,
            revision: inner.revision,
            more: remaining > 0,
            remaining,
        })
    }

    /// The changes under `prefix` after `from` (0: from now on).
    pub fn watch(&self, prefix: &str, from: i64) -> Result<WatchStream, StoreError> {
        let inner = self.lock();
        let from = if from == 0 { inner.revision } else { from };
        if from < inner.floor {
            return Err(gone(from, inner.floor));
        }
        let replay: Vec<Arc<WatchEvent>> = inner
            .history
            .iter()
            .filter(|e| e.kv.mod_revision > from && e.kv.key.starts_with(prefix))
            .cloned()
            .collect();
        let rx = self.notes.subscribe();
        drop(inner);
        let prefix = prefix.to_string();
        let live = futures::stream::unfold(Some(rx), move |rx| {
            let prefix = prefix.clone();
            async move {
                let mut rx = rx?;
                loop {
                    match rx.recv().await {
                        Ok(Note::Event(e)) => {
                            if e.kv.mod_revision > from && e.kv.key.starts_with(&prefix) {
                                return Some((Ok((*e).clone()), Some(rx)));
                            }
                        }
                        Ok(Note::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            return Some((Err(gone(from, from)), None));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        let replay = futures::stream::iter(replay.into_iter().map(|e| Ok((*e).clone())));
        Ok(Box::pin(replay.chain(live)))
    }
}

/// Follows the store watch for as long as the cache exists; re-lists after a failure.
async fn feed(cache: Weak<WatchCache>) {
    loop {
        let Some(c) = cache.upgrade() else { return };
        let from = c.revision();
        let stream = c.store.watch(PREFIX, from).await;
        drop(c);
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "watch cache: cannot watch the store");
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let (Some(c), StoreError::Compacted { .. }) = (cache.upgrade(), e) {
                    let _ = c.relist().await;
                }
                continue;
            }
        };
        while let Some(ev) = stream.next().await {
            let Some(c) = cache.upgrade() else { return };
            match ev {
                Ok(ev) => c.apply(ev),
                // Only a compacted start loses events: re-list. Otherwise (the store's
                // member went away, the stream broke) watch again from the cache's own
                // revision: nothing is missed and no client watch is disturbed.
                Err(e @ StoreError::Compacted { .. }) => {
                    tracing::warn!(error = %e, "watch cache: store watch ended; re-listing");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let _ = c.relist().await;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watch cache: store watch ended; watching again");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    async fn cache_with(n: usize) -> (Arc<MemoryStore>, Arc<WatchCache>) {
        let store = Arc::new(MemoryStore::new());
        for i in 0..n {
            store
                .create(
                    &format!("/registry/configmaps/default/c{i:03}"),
                    b"{}".to_vec(),
                )
                .await
                .expect("create");
        }
        let cache = WatchCache::start(store.clone()).await.expect("cache");
        (store, cache)
    }

    #[tokio::test]
    async fn changed_at_moves_only_when_one_of_the_named_resources_changes() {
        let (store, cache) = cache_with(2).await;
        let start = cache.changed_at(&["roles", "rolebindings"]);
        assert_eq!(start, cache.revision(), "a re-list counts as a change");
        store
            .create("/registry/configmaps/default/x", b"{}".to_vec())
            .await
            .expect("create");
        let rev = store
            .create("/registry/rolebindings/default/rb", b"{}".to_vec())
            .await
            .expect("create");
        let caught_up = || async {
            for _ in 0..100 {
                if cache.revision() >= rev {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the cache did not catch up");
        };
        caught_up().await;
        assert_eq!(cache.changed_at(&["roles", "rolebindings"]), rev);
        assert_eq!(cache.changed_at(&["roles"]), start);
        assert_eq!(
            cache.changed_at(&["configmaps"]),
            rev - 1,
            "the ConfigMap's own change"
        );
    }

    #[tokio::test]
    async fn lists_page_like_the_store_and_are_consistent_after_a_write() {
        let (store, cache) = cache_with(5).await;
        let page = cache
            .list(
                "/registry/configmaps/",
                ListOptions {
                    limit: Some(2),
                    ..Default::default()
                },
                false,
            )
            .await
            .expect("list");
        assert_eq!(page.items.len(), 2);
        assert!(page.more);
        assert_eq!(page.remaining, 3);
        store
            .create("/registry/configmaps/default/new", b"{}".to_vec())
            .await
            .expect("create");
        let all = cache
            .list("/registry/configmaps/", ListOptions::default(), false)
            .await
            .expect("list");
        assert_eq!(
            all.items.len(),
            6,
            "an unset resourceVersion sees the write"
        );
        assert_eq!(all.revision, store.current_revision().await.expect("rev"));
        let other = cache
            .list("/registry/pods/", ListOptions::default(), true)
            .await
            .expect("list");
        assert!(other.items.is_empty());
    }

    #[tokio::test]
    async fn watches_replay_history_and_too_old_revisions_are_gone() {
        let (store, cache) = cache_with(1).await;
        let start = cache.revision();
        let key = "/registry/configmaps/default/c000";
        let r1 = store
            .update(key, b"{\"a\":1}".to_vec(), start)
            .await
            .expect("update");
        store
            .update(key, b"{\"a\":2}".to_vec(), r1)
            .await
            .expect("update");
        assert!(cache.caught_up(r1 + 1).await);
        let mut w = cache.watch("/registry/configmaps/", r1).expect("watch");
        let ev = w.next().await.expect("event").expect("ok");
        assert_eq!(ev.kv.value, b"{\"a\":2}");
        assert!(matches!(
            cache.watch("/registry/configmaps/", start - 1),
            Err(StoreError::Compacted { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watcher_that_never_reads_does_not_hold_back_199_others() {
        let (store, cache) = cache_with(0).await;
        let stuck = cache.watch("/registry/configmaps/", 0).expect("watch");
        let mut watchers: Vec<_> = (0..199)
            .map(|_| cache.watch("/registry/configmaps/", 0).expect("watch"))
            .collect();
        let events = FANOUT + 100;
        let readers: Vec<_> = watchers
            .drain(..)
            .map(|mut w| {
                tokio::spawn(async move {
                    let mut n = 0;
                    while n < events {
                        match tokio::time::timeout(Duration::from_secs(20), w.next()).await {
                            Ok(Some(Ok(_))) => n += 1,
                            _ => break,
                        }
                    }
                    n
                })
            })
            .collect();
        for i in 0..events {
            store
                .create(
                    &format!("/registry/configmaps/default/c{i}"),
                    b"{}".to_vec(),
                )
                .await
                .expect("create");
            // A client writes at a finite pace; readers that keep up never lag.
            tokio::task::yield_now().await;
            if i % 256 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        for r in readers {
            assert_eq!(r.await.expect("reader"), events);
        }
        let mut stuck = stuck;
        let mut seen = 0;
        let end = loop {
            match stuck.next().await {
                Some(Ok(_)) => seen += 1,
                other => break other,
            }
        };
        assert!(seen < events, "the stuck watcher lost events");
        assert!(
            matches!(end, Some(Err(StoreError::Compacted { .. }))),
            "and its watch ends with 410"
        );
    }
}
