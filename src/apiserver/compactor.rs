//! Keeps etcd small for as long as the cluster runs: periodic compaction, defragmentation
//! when compaction has left most of a member's file free, and recovery from the NOSPACE
//! alarm.
//!
//! Why: every write leaves a revision behind (the VIP Lease alone is rewritten four times
//! a second). Without compaction etcd's backend quota fills in days, every write then fails
//! with "database space exceeded", and old versions of every Secret stay readable.
//!
//! How (kube-apiserver's scheme, so several masters need no extra election): every
//! interval each apiserver tries a compare-and-swap on one key, [`KEY`], conditioned on the
//! key's revision it saw last time. One master wins per interval; the winner compacts to
//! the revision it observed one interval earlier, so watchers always keep at least one
//! interval of history. A loser learns the key's new revision and tries again next time.
//! Every [`DEFRAG_EVERY`]th win the winner also asks the store to defragment (members whose
//! file is mostly free, one at a time). When a write fails with NOSPACE no swap can
//! succeed, so every apiserver compacts to the current revision, defragments and disarms
//! the alarm (all idempotent); writes then succeed again.

use std::sync::Arc;
use std::time::Duration;

use crate::store::{Store, StoreError};

/// The key whose revision elects the compacting apiserver of an interval.
pub const KEY: &str = "/registry/kimg/compact-revision";

/// Defragment after this many compactions won (hourly at the default 5 minutes).
pub const DEFRAG_EVERY: u32 = 12;

/// What one round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// This apiserver won the interval and compacted to this revision (0: nothing yet).
    Compacted(i64),
    /// Another apiserver won it.
    Lost,
}

/// The compactor's memory between rounds.
#[derive(Debug, Default)]
pub struct Compactor {
    /// [`KEY`]'s revision when last seen (0: absent).
    seen: i64,
    /// The store revision observed one round ago.
    last: i64,
    wins: u32,
}

impl Compactor {
    /// One interval's attempt; see the module docs.
    pub async fn round(&mut self, store: &dyn Store) -> Result<Round, StoreError> {
        let target = self.last;
        let value = target.to_string().into_bytes();
        let swapped = if self.seen == 0 {
            store.create(KEY, value).await
        } else {
            store.update(KEY, value, self.seen).await
        };
        match swapped {
            Ok(rev) => {
                self.seen = rev;
                self.last = rev;
                self.wins += 1;
                if target > 0 {
                    match store.compact(target).await {
                        Ok(()) | Err(StoreError::Compacted { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                if self.wins.is_multiple_of(DEFRAG_EVERY) {
                    store.defragment(true).await?;
                }
                Ok(Round::Compacted(target))
            }
            Err(StoreError::Conflict { current, .. }) => {
                self.seen = current;
                self.last = store.current_revision().await?;
                Ok(Round::Lost)
            }
            Err(StoreError::AlreadyExists { .. }) => {
                self.seen = store.get(KEY).await?.map_or(0, |kv| kv.mod_revision);
                self.last = store.current_revision().await?;
                Ok(Round::Lost)
            }
            Err(StoreError::NotFound { .. }) => {
                self.seen = 0;
                Ok(Round::Lost)
            }
            Err(e) => Err(e),
        }
    }
}

/// Frees space after a NOSPACE alarm: compacts everything but the newest revision,
/// defragments every member and disarms the alarm.
pub async fn recover_space(store: &dyn Store) -> Result<(), StoreError> {
    let rev = store.current_revision().await?;
    match store.compact(rev).await {
        Ok(()) | Err(StoreError::Compacted { .. }) => {}
        Err(e) => return Err(e),
    }
    store.defragment(false).await?;
    store.disarm_nospace().await?;
    Ok(())
}

/// Runs rounds every `interval` forever (spawn it); NOSPACE errors trigger
/// [`recover_space`].
pub async fn run(store: Arc<dyn Store>, interval: Duration) {
    let mut c = Compactor::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match c.round(&*store).await {
            Ok(Round::Compacted(rev)) if rev > 0 => {
                tracing::debug!(revision = rev, "compacted the store")
            }
            Ok(_) => {}
            Err(StoreError::NoSpace(_)) => {
                tracing::warn!("etcd is out of space: compacting, defragmenting, disarming");
                if let Err(e) = recover_space(&*store).await {
                    tracing::warn!(error = %e, "cannot recover etcd's space yet");
                }
            }
            Err(e) => tracing::warn!(error = %e, "compaction round failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn one_of_two_apiservers_compacts_each_interval_keeping_one_interval_of_history() {
        let store = MemoryStore::new();
        let (mut a, mut b) = (Compactor::default(), Compactor::default());
        // First interval: a creates the key; b learns of it.
        assert_eq!(a.round(&store).await.expect("a"), Round::Compacted(0));
        assert_eq!(b.round(&store).await.expect("b"), Round::Lost);
        let r1 = store
            .create("/registry/x", b"1".to_vec())
            .await
            .expect("put");
        for i in 0..5 {
            store
                .update("/registry/x", format!("{i}").into_bytes(), r1 + i)
                .await
                .expect("update");
        }
        // Second interval: b saw the newest key revision, so b wins; it compacts only to
        // what it observed one interval ago, keeping the writes since.
        let Round::Compacted(first) = b.round(&store).await.expect("b") else {
            panic!("b should win the second interval");
        };
        assert!(first > 0 && first < r1, "{first} < {r1}");
        assert_eq!(a.round(&store).await.expect("a"), Round::Lost);
        // Third interval: a wins and compacts to after the writes.
        let Round::Compacted(second) = a.round(&store).await.expect("a") else {
            panic!("a should win the third interval");
        };
        assert!(second >= r1 + 5, "{second}");
        let old = crate::store::ListOptions {
            revision: Some(r1),
            ..Default::default()
        };
        assert!(matches!(
            store.list("/registry/x", old).await,
            Err(StoreError::Compacted { .. })
        ));
        // The newest version stays readable.
        assert!(store.get("/registry/x").await.expect("get").is_some());
    }
}
