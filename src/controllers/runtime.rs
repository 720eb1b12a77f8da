//! The controller machinery: watch → cache → queue → reconcile.
//!
//! How: [`informer`] follows a resource through the one watch loop
//! ([`crate::client::watch`]: re-list after `410 Gone`, backoff) into a reflector [`Store`]
//! — one writer, cheap cloneable readers, possibly stale — and calls a handler with every
//! object it applies or deletes. Handlers
//! map objects to keys on a [`Queue`], which holds each key at most once. [`work`] waits
//! until the caches have synced, then reconciles keys one at a time; a reconcile returns
//! when to look again, and errors are retried with a capped backoff.
//!
//! Limits: one worker per controller (keys are reconciled sequentially), no rate limiting
//! beyond the error backoff.

use std::any::{Any, TypeId};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::Resource;
use tokio::sync::mpsc;

/// A deduplicating work queue of object keys (`namespace/name` or `name`).
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::UnboundedSender<Arc<str>>,
    queued: Arc<Mutex<HashSet<Arc<str>>>>,
}

/// The receiving end of a [`Queue`], consumed by [`work`].
pub struct QueueRx(mpsc::UnboundedReceiver<Arc<str>>);

#[cfg(test)]
impl QueueRx {
    pub async fn next(&mut self) -> Option<String> {
        self.0.recv().await.map(|k| k.to_string())
    }

    pub fn try_next(&mut self) -> Option<String> {
        self.0.try_recv().ok().map(|k| k.to_string())
    }
}

/// A new queue.
pub fn queue() -> (Queue, QueueRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Queue {
            tx,
            queued: Default::default(),
        },
        QueueRx(rx),
    )
}

impl Queue {
    /// Queues `key` unless it is already waiting.
    pub fn add(&self, key: &str) {
        let mut q = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        if !q.contains(key) {
            let k: Arc<str> = key.into();
            q.insert(k.clone());
            let _ = self.tx.send(k);
        }
    }

    /// Queues `key` after `delay`.
    pub fn add_after(&self, key: &str, delay: Duration) {
        let q = self.clone();
        let key = key.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(&key);
        });
    }

    fn take(&self, key: &str) {
        self.queued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// `namespace/name` for namespaced objects, `name` otherwise.
pub fn key_of<K: Resource>(obj: &K) -> String {
    let m = obj.meta();
    match &m.namespace {
        Some(ns) => format!("{ns}/{}", m.name.as_deref().unwrap_or_default()),
        None => m.name.clone().unwrap_or_default(),
    }
}

/// Looks `key` up in a reflector store.
pub fn get<K>(store: &Store<K>, key: &str) -> Option<Arc<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let r = match key.split_once('/') {
        Some((ns, name)) => reflector::ObjectRef::new(name).within(ns),
        None => reflector::ObjectRef::new(key),
    };
    store.get(&r)
}

/// Starts a watch of `api` into a cache (the one watch loop, [`crate::client::watch`]);
/// `on_change` sees every applied object and, with `true`, every deleted one.
pub fn informer<K, F>(api: Api<K>, cfg: watcher::Config, on_change: F) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    F: Fn(&K, bool) + Send + 'static,
{
    crate::client::watch::cached(api, cfg, on_change).0
}

/// What a reconcile decided: look again after a while, or only on the next change.
pub type Requeue = Option<Duration>;

/// The controller owning `obj` (its `controller: true` owner reference): (kind, name, uid).
pub fn controller_of<K: Resource>(obj: &K) -> Option<(&str, &str, &str)> {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| (o.kind.as_str(), o.name.as_str(), o.uid.as_str()))
}

type Handler<K> = Box<dyn Fn(&K, bool) + Send + Sync>;

/// What wakes the controllers: for each watched kind, the handlers that map a changed
/// (or, with `true`, deleted) object to keys on a controller's queue. Each controller
/// registers its own ([`Controller::triggers`]); the controller-manager then starts one
/// informer per kind that calls them all ([`Triggers::informer`]).
#[derive(Default)]
pub struct Triggers {
    by_kind: HashMap<TypeId, (&'static str, Box<dyn Any + Send>)>,
}

impl Triggers {
    /// Calls `f` with every change of a `K`.
    pub fn on<K: 'static>(&mut self, f: impl Fn(&K, bool) + Send + Sync + 'static) {
        let (_, handlers) = self.by_kind.entry(TypeId::of::<K>()).or_insert_with(|| {
            (
                std::any::type_name::<K>(),
                Box::new(Vec::<Handler<K>>::new()),
            )
        });
        if let Some(v) = handlers.downcast_mut::<Vec<Handler<K>>>() {
            v.push(Box::new(f));
        }
    }

    /// A change of a `K` queues its own key.
    pub fn own<K: Resource + 'static>(&mut self, q: &Queue) {
        let q = q.clone();
        self.on::<K>(move |o, _| q.add(&key_of(o)));
    }

    /// A change of a `K` whose controller is a `kind` queues that controller's key.
    pub fn owner<K: Resource + 'static>(&mut self, kind: &'static str, q: &Queue) {
        let q = q.clone();
        self.on::<K>(move |o, _| {
            if let Some((k, name, _)) = controller_of(o) {
                if k == kind {
                    let ns = o.meta().namespace.as_deref().unwrap_or("default");
                    q.add(&format!("{ns}/{name}"));
                }
            }
        });
    }

    /// A change of a `K` queues its namespace.
    pub fn namespace<K: Resource + 'static>(&mut self, q: &Queue) {
        let q = q.clone();
        self.on::<K>(move |o, _| q.add(o.meta().namespace.as_deref().unwrap_or("default")));
    }

    /// Follows `api` into a cache whose every change goes to the handlers registered for
    /// `K` (none: a plain cache).
    pub fn informer<K>(&mut self, api: Api<K>) -> Store<K>
    where
        K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    {
        let handlers: Vec<Handler<K>> = self
            .by_kind
            .remove(&TypeId::of::<K>())
            .and_then(|(_, h)| h.downcast::<Vec<Handler<K>>>().ok())
            .map(|h| *h)
            .unwrap_or_default();
        informer(api, watcher::Config::default(), move |o: &K, deleted| {
            for h in &handlers {
                h(o, deleted)
            }
        })
    }

    /// Kinds that handlers were registered for but no informer was started for.
    pub fn unwatched(&self) -> Vec<&'static str> {
        self.by_kind.values().map(|(name, _)| *name).collect()
    }
}

/// A reconcile as a table entry: the shared caches, the controller's own queue, the key.
pub type ReconcileFn<C, E> = fn(Arc<C>, Queue, Arc<str>) -> BoxFuture<'static, Result<Requeue, E>>;

/// One controller, as a row of the controller-manager's table: its name, what wakes it,
/// and its reconcile.
pub struct Controller<C, E> {
    pub name: &'static str,
    /// Registers the handlers that put keys on this controller's queue.
    pub triggers: fn(&mut Triggers, &Queue),
    /// Completes once the caches this controller reads have their first list.
    pub synced: for<'a> fn(&'a C) -> BoxFuture<'a, ()>,
    pub reconcile: ReconcileFn<C, E>,
}

/// Reconciles keys from `rx` forever, after `ready` (the caches' sync) completes.
pub async fn work<F, Fut, E>(
    name: &'static str,
    queue: Queue,
    mut rx: QueueRx,
    ready: impl Future,
    reconcile: F,
) where
    F: Fn(Arc<str>) -> Fut,
    Fut: Future<Output = Result<Requeue, E>>,
    E: std::fmt::Display,
{
    ready.await;
    tracing::info!(controller = name, "caches synced; reconciling");
    let mut failures: std::collections::HashMap<Arc<str>, u32> = Default::default();
    while let Some(key) = rx.0.recv().await {
        queue.take(&key);
        match reconcile(key.clone()).await {
            Ok(requeue) => {
                failures.remove(&key);
                if let Some(d) = requeue {
                    queue.add_after(&key, d);
                }
            }
            Err(e) => {
                let n = failures.entry(key.clone()).or_insert(0);
                *n += 1;
                let delay = Duration::from_millis(200u64 << (*n).min(6));
                tracing::warn!(controller = name, key = %key, error = %e, "reconcile failed; retrying");
                queue.add_after(&key, delay);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_queued_twice_is_reconciled_once() {
        let (q, mut rx) = queue();
        q.add("default/a");
        q.add("default/a");
        q.add("default/b");
        assert_eq!(rx.0.recv().await.as_deref(), Some("default/a"));
        assert_eq!(rx.0.recv().await.as_deref(), Some("default/b"));
        assert!(rx.0.try_recv().is_err());
        q.take("default/a");
        q.add("default/a");
        assert_eq!(rx.0.recv().await.as_deref(), Some("default/a"));
    }
}
