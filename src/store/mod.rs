//! The storage layer under the apiserver: a key-value store with etcd v3 semantics.
//!
//! What: the [`Store`] trait over string keys such as `/registry/pods/default/nginx` and
//! opaque byte values, with two backends that behave the same way:
//! - [`EtcdStore`]: the production engine, a real etcd v3 cluster over gRPC (plain or mutual
//!   TLS), optimistic concurrency through transactions that compare `mod_revision`.
//! - [`MemoryStore`]: in-process MVCC for unit tests and the `all-in-one` dev profile.
//!
//! How (the semantics both backends share, which are etcd's):
//! - One revision counter for the whole store. Every successful write (create, update,
//!   delete) bumps it by one and stamps the key with it (`mod_revision`); a key's
//!   `create_revision` is the revision that created it. The apiserver exposes the revision as
//!   `resourceVersion`.
//! - History is kept until [`Store::compact`]. Reads ([`Store::list`]) may name an older
//!   revision and see a consistent snapshot at it; naming a compacted one gives
//!   [`StoreError::Compacted`] (the apiserver maps it to 410 Gone).
//! - [`Store::watch`] from revision `R` replays every change with a revision greater than `R`
//!   under the prefix, in revision order and with the previous value, then follows live
//!   changes. Errors after the start (a compacted `R`, a canceled watch) arrive as the
//!   stream's last item.
//!
//! Limits: no leases, so no TTLs (Kubernetes Events expire through etcd leases; not done
//! yet). No value size limit in the memory backend (etcd rejects requests over 1.5 MiB by
//! default; that surfaces as [`StoreError::Rejected`]). [`LocalEtcd`] starts a single-member
//! etcd on loopback for tests, benchmarks and development. [`EncryptedStore`] wraps either
//! backend and encrypts the values under chosen prefixes (Secrets) at rest.
//! [`prepare_empty_member`] is the one membership change kimg makes: an etcd member that
//! comes back without data rejoins as a new member (remove + add).

mod encrypt;
mod etcd;
mod local_etcd;
mod membership;
mod memory;

#[cfg(test)]
mod conformance;

use std::path::PathBuf;
use std::pin::Pin;

use futures::Stream;

pub use encrypt::{EncryptedStore, EncryptionKeys};
pub use etcd::{EtcdConfig, EtcdStore, EtcdTls};
pub use local_etcd::{LocalEtcd, LocalEtcdError};
pub use membership::{prepare_empty_member, EmptyMemberStart};
pub use memory::MemoryStore;

/// A key with its value and the revisions that created and last modified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created the key; 0 in a delete event's `kv`.
    pub create_revision: i64,
    /// Revision of the last write to the key (of the delete itself in a delete event).
    pub mod_revision: i64,
}

/// How to read a range of keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Return at most this many items; `None` returns all.
    pub limit: Option<usize>,
    /// Start strictly after this key (the apiserver's `continue` token decodes to it).
    pub start_after: Option<String>,
    /// Read the snapshot at this revision instead of the newest one.
    pub revision: Option<i64>,
}

/// One page of a range read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListResult {
    /// Sorted by key.
    pub items: Vec<KeyValue>,
    /// The revision the snapshot was read at; pass it back with `start_after` for the next page.
    pub revision: i64,
    /// Whether keys beyond this page exist.
    pub more: bool,
    /// How many keys in the range came after this page.
    pub remaining: i64,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEventKind {
    Put,
    Delete,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: WatchEventKind,
    /// The new state; for a delete: the key, an empty value, `create_revision` 0 and
    /// `mod_revision` set to the delete's revision (as etcd reports it).
    pub kv: KeyValue,
    /// The state before the change; `None` for a create (or if it was compacted away).
    pub prev_kv: Option<KeyValue>,
}

/// The stream a watch yields; it ends after an `Err`.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {key} not found")]
    NotFound { key: String },
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    #[error("key {key} was modified: expected revision {expected}, current revision {current}")]
    Conflict {
        key: String,
        expected: i64,
        current: i64,
    },
    /// `compacted_revision` is known for the memory store and for etcd watches; etcd does not
    /// report it for reads.
    #[error("revision {requested} has been compacted")]
    Compacted {
        requested: i64,
        compacted_revision: Option<i64>,
    },
    #[error("revision {requested} is newer than the store's current revision")]
    FutureRevision { requested: i64 },
    #[error("the watch was canceled by the store: {reason}")]
    WatchCanceled { reason: String },
    #[error("etcd is unavailable")]
    Unavailable(#[source] etcd_client::Error),
    #[error("etcd rejected the request")]
    Rejected(#[source] etcd_client::Error),
    /// etcd's backend quota is full (the NOSPACE alarm): only reads, deletes and
    /// maintenance are accepted until space is freed and the alarm disarmed.
    #[error("etcd's database space is exceeded")]
    NoSpace(#[source] etcd_client::Error),
    #[error("cannot connect to etcd")]
    Connect(#[source] etcd_client::Error),
    #[error("cannot read the etcd tls file {path}")]
    ReadTlsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd sent a malformed response: {reason}")]
    MalformedResponse { reason: &'static str },
    /// A value under an encrypted prefix could not be encrypted or decrypted.
    #[error("cannot decrypt or encrypt {key}: {reason}")]
    Crypt { key: String, reason: String },
}

/// A key-value store with etcd v3 semantics; see the module docs for the contract.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// The newest value of `key`, if it exists.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// The keys starting with `prefix`, sorted, at one revision.
    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListResult, StoreError>;

    /// Writes a new key; fails with `AlreadyExists` if it exists. Returns the write's revision.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64, StoreError>;

    /// Replaces the value of `key` if its `mod_revision` is `expected_mod_revision`
    /// (`Conflict` otherwise, `NotFound` if it does not exist). Returns the write's revision.
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: i64,
    ) -> Result<i64, StoreError>;

    /// Deletes `key`, if given only when its `mod_revision` matches. Returns the delete's
    /// revision and the deleted key-value.
    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<i64>,
    ) -> Result<(i64, KeyValue), StoreError>;

    /// Changes under `prefix` with revisions after `from_revision` (0: from now on).
    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream, StoreError>;

    /// The revision of the newest write.
    async fn current_revision(&self) -> Result<i64, StoreError>;

    /// Forgets history before `revision`; reads and watches before it fail with `Compacted`.
    async fn compact(&self, revision: i64) -> Result<(), StoreError>;

    /// Gives the space compaction freed back to the file system, one member at a time
    /// (etcd's defragmentation; it blocks that member meanwhile). With `only_fragmented`,
    /// only members whose file is at least half free. Nothing to do for the memory store.
    async fn defragment(&self, only_fragmented: bool) -> Result<(), StoreError> {
        let _ = only_fragmented;
        Ok(())
    }

    /// Clears a raised "database space exceeded" alarm on every member; true if one was.
    /// Compact and defragment first, or it is raised again at the next write.
    async fn disarm_nospace(&self) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// The largest backend size of any member, in bytes, when the store has one.
    async fn db_size(&self) -> Result<Option<i64>, StoreError> {
        Ok(None)
    }
}
