//! In-process MVCC store with etcd's revision, compaction and watch semantics.
//!
//! How: one mutex guards the whole state: the global revision, the compacted revision, every
//! key's list of versions (a deleted key gets a tombstone version) and an event log holding
//! one entry per revision (each write touches one key). Reads at revision `R` take each key's
//! newest version at or below `R`. A watch is a cursor into the event log: it wakes on a
//! `tokio::sync::watch` channel carrying the newest revision, reads the next batch of events
//! from the log and yields them. Like etcd's unsynced watchers, a slow watcher never loses
//! events; it only fails with `Compacted` if compaction overtakes it.
//!
//! Limits: everything lives in memory until [`Store::compact`]; no value size limit.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    KeyValue, ListOptions, ListResult, Store, StoreError, WatchEvent, WatchEventKind, WatchStream,
};

/// Most events a watch takes from the log per lock.
const WATCH_BATCH: usize = 512;

/// An in-memory [`Store`]; clones share the same data.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Carries the newest revision to sleeping watches.
    newest: tokio::sync::watch::Sender<i64>,
}

struct Version {
    mod_revision: i64,
    create_revision: i64,
    /// `None` marks a delete.
    value: Option<Arc<[u8]>>,
}

struct State {
    revision: i64,
    compacted: i64,
    keys: BTreeMap<String, Vec<Version>>,
    /// The key written at each revision from `log_start` on.
    log: VecDeque<String>,
    log_start: i64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store at revision 1, like a fresh etcd.
    pub fn new() -> Self {
        let state = State {
            revision: 1,
            compacted: 0,
            keys: BTreeMap::new(),
            log: VecDeque::new(),
            log_start: 2,
        };
        let (newest, _) = tokio::sync::watch::channel(1);
        MemoryStore {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                newest,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    /// Appends a version of `key` at the next revision and wakes the watches.
    fn write(&self, state: &mut State, key: &str, create_revision: i64, value: Option<Vec<u8>>) {
        state.revision += 1;
        let version = Version {
            mod_revision: state.revision,
            create_revision,
            value: value.map(Arc::from),
        };
        state.keys.entry(key.to_owned()).or_default().push(version);
        state.log.push_back(key.to_owned());
        self.shared.newest.send_replace(state.revision);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-written in a way later
        // readers would misread (each write is one push), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Version {
    fn to_kv(&self, key: &str) -> Option<KeyValue> {
        self.value.as_ref().map(|value| KeyValue {
            key: key.to_owned(),
            value: value.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
        })
    }
}

impl State {
    /// The newest version of `key` at or below `revision`.
    fn version_at(versions: &[Version], revision: i64) -> Option<&Version> {
        let after = versions.partition_point(|v| v.mod_revision <= revision);
        after.checked_sub(1).map(|i| &versions[i])
    }

    fn live(&self, key: &str) -> Option<KeyValue> {
        let versions = self.keys.get(key)?;
        versions.last()?.to_kv(key)
    }

    fn check_read_revision(&self, revision: i64) -> Result<(), StoreError> {
        if revision > self.revision {
            return Err(StoreError::FutureRevision {
                requested: revision,
            });
        }
        if revision < self.compacted {
            return Err(StoreError::Compacted {
                requested: revision,
                compacted_revision: Some(self.compacted),
            });
        }
        Ok(())
    }

    /// The event written at `revision`, if it touched a key under `prefix`.
    fn event_at(&self, revision: i64, prefix: &str) -> Option<WatchEvent> {
        let index = usize::try_from(revision - self.log_start).ok()?;
        let key = self.log.get(index)?;
        if !key.starts_with(prefix) {
            return None;
        }
        let versions = self.keys.get(key)?;
        let at = versions.iter().position(|v| v.mod_revision == revision)?;
        let version = &versions[at];
        let prev_kv = at
            .checked_sub(1)
            .and_then(|i| versions[i].to_kv(key.as_str()));
        let (kind, kv) = match version.to_kv(key) {
            Some(kv) => (WatchEventKind::Put, kv),
            None => (
                WatchEventKind::Delete,
                KeyValue {
                    key: key.clone(),
                    value: Vec::new(),
                    create_revision: 0,
                    mod_revision: revision,
                },
            ),
        };
        Some(WatchEvent { kind, kv, prev_kv })
    }

    /// Drops history before `revision`, keeping what reads at `revision` or later need.
    fn compact(&mut self, revision: i64) {
        self.keys.retain(|_, versions| {
            let keep_from = versions.partition_point(|v| v.mod_revision <= revision);
            // Keep the newest version at or below `revision` unless it is a tombstone older
            // than `revision` (a tombstone at `revision` itself still serves its event).
            let newest_old = keep_from.checked_sub(1);
            let first_kept = match newest_old {
                Some(i) if versions[i].value.is_some() || versions[i].mod_revision == revision => i,
                _ => keep_from,
            };
            versions.drain(..first_kept);
            !versions.is_empty()
        });
        while self.log_start < revision && !self.log.is_empty() {
            self.log.pop_front();
            self.log_start += 1;
        }
        self.compacted = revision;
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.lock().live(key))
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListResult, StoreError> {
        let state = self.lock();
        let revision = match options.revision {
            Some(r) if r > 0 => {
                state.check_read_revision(r)?;
                r
            }
            _ => state.revision,
        };
        let start = match &options.start_after {
            Some(after) if after.as_str() >= prefix => Bound::Excluded(after.clone()),
            _ => Bound::Included(prefix.to_owned()),
        };
        let limit = options.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut remaining = 0i64;
        let range = state.keys.range::<String, _>((start, Bound::Unbounded));
        for (key, versions) in range.take_while(|(key, _)| key.starts_with(prefix)) {
            let Some(kv) = State::version_at(versions, revision).and_then(|v| v.to_kv(key)) else {
                continue;
            };
            if items.len() < limit {
                items.push(kv);
            } else {
                remaining += 1;
            }
        }
        Ok(ListResult {
            items,
            revision,
            more: remaining > 0,
            remaining,
        })
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64, StoreError> {
        let mut state = self.lock();
        if state.live(key).is_some() {
            return Err(StoreError::AlreadyExists {
                key: key.to_owned(),
            });
        }
        let revision = state.revision + 1;
        self.write(&mut state, key, revision, Some(value));
        Ok(revision)
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: i64,
    ) -> Result<i64, StoreError> {
        let mut state = self.lock();
        let current = state.live(key).ok_or_else(|| StoreError::NotFound {
            key: key.to_owned(),
        })?;
        if current.mod_revision != expected_mod_revision {
            return Err(StoreError::Conflict {
                key: key.to_owned(),
                expected: expected_mod_revision,
                current: current.mod_revision,
            });
        }
        self.write(&mut state, key, current.create_revision, Some(value));
        Ok(state.revision)
    }

    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<i64>,
    ) -> Result<(i64, KeyValue), StoreError> {
        let mut state = self.lock();
        let current = state.live(key).ok_or_else(|| StoreError::NotFound {
            key: key.to_owned(),
        })?;
        if let Some(expected) = expected_mod_revision {
            if current.mod_revision != expected {
                return Err(StoreError::Conflict {
                    key: key.to_owned(),
                    expected,
                    current: current.mod_revision,
                });
            }
        }
        self.write(&mut state, key, 0, None);
        Ok((state.revision, current))
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream, StoreError> {
        let next = if from_revision > 0 {
            from_revision + 1
        } else {
            self.lock().revision + 1
        };
        let cursor = Cursor {
            shared: self.shared.clone(),
            newest: self.shared.newest.subscribe(),
            prefix: prefix.to_owned(),
            next,
            pending: VecDeque::new(),
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(cursor, Cursor::step)))
    }

    async fn current_revision(&self) -> Result<i64, StoreError> {
        Ok(self.lock().revision)
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        let mut state = self.lock();
        if revision > state.revision {
            return Err(StoreError::FutureRevision {
                requested: revision,
            });
        }
        if revision <= state.compacted {
            return Err(StoreError::Compacted {
                requested: revision,
                compacted_revision: Some(state.compacted),
            });
        }
        state.compact(revision);
        Ok(())
    }
}

/// A watch's position in the event log.
struct Cursor {
    shared: Arc<Shared>,
    newest: tokio::sync::watch::Receiver<i64>,
    prefix: String,
    /// The next revision to look at.
    next: i64,
    pending: VecDeque<WatchEvent>,
    done: bool,
}

impl Cursor {
    async fn step(mut self) -> Option<(Result<WatchEvent, StoreError>, Self)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.done {
                return None;
            }
            // Mark the newest revision as seen before reading the log, so a write that lands
            // after the read wakes `changed()` below.
            self.newest.borrow_and_update();
            if let Err(error) = self.read_batch() {
                self.done = true;
                return Some((Err(error), self));
            }
            if self.pending.is_empty() && self.newest.changed().await.is_err() {
                return None;
            }
        }
    }
}

impl Cursor {
    /// Moves the next batch of matching events from the log into `pending`.
    fn read_batch(&mut self) -> Result<(), StoreError> {
        let state = self.shared.lock();
        if self.next < state.compacted {
            return Err(StoreError::Compacted {
                requested: self.next - 1,
                compacted_revision: Some(state.compacted),
            });
        }
        let end = state.revision.min(self.next + WATCH_BATCH as i64 - 1);
        while self.next <= end {
            if let Some(event) = state.event_at(self.next, &self.prefix) {
                self.pending.push_back(event);
            }
            self.next += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn memory_store_passes_the_conformance_suite() {
        let store = MemoryStore::new();
        crate::store::conformance::run_all(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn creates_racing_on_threads_give_one_winner_and_distinct_revisions() {
        let store = MemoryStore::new();
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let same = store.create("/k/same", vec![i]).await;
                    let own = store.create(&format!("/k/own/{i}"), vec![i]).await;
                    (same.is_ok(), own.expect("own key"))
                })
            })
            .collect();
        let mut winners = 0;
        let mut revisions = Vec::new();
        for task in tasks {
            let (won, revision) = task.await.expect("task");
            winners += usize::from(won);
            revisions.push(revision);
        }
        assert_eq!(winners, 1);
        revisions.sort();
        revisions.dedup();
        assert_eq!(revisions.len(), 32);
        assert_eq!(store.current_revision().await.expect("revision"), 1 + 33);
    }

    #[tokio::test]
    async fn a_slow_watcher_receives_every_event_written_while_it_was_not_reading() {
        let store = MemoryStore::new();
        let mut watch = store.watch("/registry/", 0).await.expect("watch");
        for i in 0..3000 {
            store
                .create(&format!("/registry/configmaps/ns/{i:05}"), vec![1])
                .await
                .expect("create");
        }
        for i in 0..3000 {
            let event = watch.next().await.expect("event").expect("ok");
            assert_eq!(event.kv.key, format!("/registry/configmaps/ns/{i:05}"));
            assert_eq!(event.kv.mod_revision, i + 2);
        }
    }

    #[tokio::test]
    async fn compaction_keeps_the_newest_version_of_each_key_and_drops_deleted_keys() {
        let store = MemoryStore::new();
        let a1 = store
            .create("/k/a", b"a1".to_vec())
            .await
            .expect("create a");
        let a2 = store.update("/k/a", b"a2".to_vec(), a1).await.expect("a2");
        let b = store.create("/k/b", b"b".to_vec()).await.expect("create b");
        let (deleted, _) = store.delete("/k/b", Some(b)).await.expect("delete b");
        store.compact(deleted).await.expect("compact");
        {
            let state = store.lock();
            let a = state.keys.get("/k/a").expect("a kept");
            assert_eq!(a.len(), 1);
            assert_eq!(a[0].mod_revision, a2);
            // The tombstone at the compaction revision still serves the delete event.
            assert_eq!(state.keys.get("/k/b").map(Vec::len), Some(1));
        }
        let later = store.create("/k/c", b"c".to_vec()).await.expect("create c");
        store.compact(later).await.expect("compact again");
        assert!(!store.lock().keys.contains_key("/k/b"));
    }
}
