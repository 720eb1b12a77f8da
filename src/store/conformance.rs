//! The behaviour every [`Store`] backend must show, run against each of them by their tests.
//!
//! How: each check works under its own key prefix, so the checks share one store; the
//! compaction check runs last because compaction affects the whole store. Checks panic with a
//! message naming what differed.
//!
//! Limits: needs an empty or private store (it asserts on revisions it wrote).

use std::time::Duration;

use futures::StreamExt;

use super::{ListOptions, Store, StoreError, WatchEvent, WatchEventKind, WatchStream};

/// How long a watch may take to deliver an event that was already written.
const EVENT_WAIT: Duration = Duration::from_secs(10);

/// Runs every check in order.
pub(crate) async fn run_all(store: &dyn Store) {
    create_get_update_delete(store).await;
    list_pages_with_limit_and_continue_on_one_snapshot(store).await;
    list_reads_an_old_revision(store).await;
    watch_replays_later_events_in_order_with_prev_kv(store).await;
    watch_from_zero_sees_only_new_events(store).await;
    concurrent_creates_of_one_key_let_exactly_one_win(store).await;
    concurrent_updates_from_one_revision_let_exactly_one_win(store).await;
    compaction_makes_old_reads_and_watches_fail(store).await;
}

async fn next_event(watch: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(EVENT_WAIT, watch.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(error))) => panic!("watch failed: {error}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {EVENT_WAIT:?}"),
    }
}

async fn create_get_update_delete(store: &dyn Store) {
    let key = "/c/crud/default/a";
    let created = store.create(key, b"v1".to_vec()).await.expect("create");
    assert!(created > 1, "revision {created} after a write");
    let kv = store.get(key).await.expect("get").expect("key exists");
    assert_eq!(kv.value, b"v1");
    assert_eq!((kv.create_revision, kv.mod_revision), (created, created));

    let again = store.create(key, b"v1".to_vec()).await;
    assert!(
        matches!(again, Err(StoreError::AlreadyExists { .. })),
        "{again:?}"
    );

    let stale = store.update(key, b"v2".to_vec(), created - 1).await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { current, .. }) if current == created),
        "{stale:?}"
    );
    let updated = store
        .update(key, b"v2".to_vec(), created)
        .await
        .expect("update");
    assert!(updated > created);
    let kv = store.get(key).await.expect("get").expect("key exists");
    assert_eq!(kv.value, b"v2");
    assert_eq!((kv.create_revision, kv.mod_revision), (created, updated));

    let missing = store.update("/c/crud/default/none", b"x".to_vec(), 0).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound { .. })),
        "{missing:?}"
    );
    assert!(store
        .get("/c/crud/default/none")
        .await
        .expect("get")
        .is_none());

    let stale = store.delete(key, Some(created)).await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
    let (deleted, prev) = store.delete(key, Some(updated)).await.expect("delete");
    assert!(deleted > updated);
    assert_eq!(prev.value, b"v2");
    assert_eq!(prev.mod_revision, updated);
    assert!(store.get(key).await.expect("get").is_none());
    let gone = store.delete(key, None).await;
    assert!(matches!(gone, Err(StoreError::NotFound { .. })), "{gone:?}");

    // A deleted key can be created again, with a new create_revision.
    let recreated = store.create(key, b"v3".to_vec()).await.expect("recreate");
    let kv = store.get(key).await.expect("get").expect("key exists");
    assert_eq!(kv.create_revision, recreated);
    let (_, prev) = store.delete(key, None).await.expect("unconditional delete");
    assert_eq!(prev.value, b"v3");
    assert!(store.current_revision().await.expect("revision") > recreated);
}

async fn list_pages_with_limit_and_continue_on_one_snapshot(store: &dyn Store) {
    let prefix = "/c/list/";
    for name in ["e", "a", "c", "b", "d"] {
        store
            .create(&format!("{prefix}{name}"), name.as_bytes().to_vec())
            .await
            .expect("create");
    }
    // Neighbours outside the prefix must not show up.
    store
        .create("/c/list", b"x".to_vec())
        .await
        .expect("create");
    store
        .create("/c/list0", b"x".to_vec())
        .await
        .expect("create");

    let all = store
        .list(prefix, ListOptions::default())
        .await
        .expect("list");
    let keys: Vec<&str> = all.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "/c/list/a",
            "/c/list/b",
            "/c/list/c",
            "/c/list/d",
            "/c/list/e"
        ]
    );
    assert!(!all.more);
    assert_eq!(all.remaining, 0);

    let first = store
        .list(
            prefix,
            ListOptions {
                limit: Some(2),
                ..ListOptions::default()
            },
        )
        .await
        .expect("first page");
    assert_eq!(first.items.len(), 2);
    assert!(first.more);
    assert_eq!(first.remaining, 3);

    // Writes after the first page must not leak into later pages read at its revision.
    store
        .create(&format!("{prefix}bb"), b"late".to_vec())
        .await
        .expect("create");
    store
        .delete(&format!("{prefix}d"), None)
        .await
        .expect("delete");

    let mut keys: Vec<String> = first.items.iter().map(|kv| kv.key.clone()).collect();
    let mut page = first;
    while page.more {
        let last = page.items.last().expect("page not empty").key.clone();
        page = store
            .list(
                prefix,
                ListOptions {
                    limit: Some(2),
                    start_after: Some(last),
                    revision: Some(page.revision),
                },
            )
            .await
            .expect("next page");
        keys.extend(page.items.iter().map(|kv| kv.key.clone()));
    }
    assert_eq!(
        keys,
        [
            "/c/list/a",
            "/c/list/b",
            "/c/list/c",
            "/c/list/d",
            "/c/list/e"
        ]
    );
    let now = store
        .list(prefix, ListOptions::default())
        .await
        .expect("list");
    let keys: Vec<&str> = now.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "/c/list/a",
            "/c/list/b",
            "/c/list/bb",
            "/c/list/c",
            "/c/list/e"
        ]
    );
    assert!(now.revision > all.revision);
}

async fn list_reads_an_old_revision(store: &dyn Store) {
    let prefix = "/c/old/";
    let a1 = store.create("/c/old/a", b"a1".to_vec()).await.expect("a");
    let b1 = store.create("/c/old/b", b"b1".to_vec()).await.expect("b");
    store
        .update("/c/old/a", b"a2".to_vec(), a1)
        .await
        .expect("a2");
    store.delete("/c/old/b", Some(b1)).await.expect("delete b");
    store.create("/c/old/c", b"c1".to_vec()).await.expect("c");

    let at = |revision| ListOptions {
        revision: Some(revision),
        ..ListOptions::default()
    };
    let old = store.list(prefix, at(b1)).await.expect("list at b1");
    let seen: Vec<(&str, &[u8])> = old
        .items
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_slice()))
        .collect();
    assert_eq!(seen, [("/c/old/a", &b"a1"[..]), ("/c/old/b", &b"b1"[..])]);
    assert_eq!(old.revision, b1);
    assert_eq!(old.items[0].mod_revision, a1);

    let now = store
        .list(prefix, ListOptions::default())
        .await
        .expect("list");
    let seen: Vec<(&str, &[u8])> = now
        .items
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_slice()))
        .collect();
    assert_eq!(seen, [("/c/old/a", &b"a2"[..]), ("/c/old/c", &b"c1"[..])]);

    let future = store.current_revision().await.expect("revision") + 1000;
    let result = store.list(prefix, at(future)).await;
    assert!(
        matches!(result, Err(StoreError::FutureRevision { requested }) if requested == future),
        "{result:?}"
    );
}

async fn watch_replays_later_events_in_order_with_prev_kv(store: &dyn Store) {
    let prefix = "/c/watch/";
    let start = store.create("/c/watch/a", b"a1".to_vec()).await.expect("a");
    let a2 = store
        .update("/c/watch/a", b"a2".to_vec(), start)
        .await
        .expect("a2");
    store
        .create("/c/watchx", b"outside".to_vec())
        .await
        .expect("outside");
    let b = store.create("/c/watch/b", b"b1".to_vec()).await.expect("b");
    let (deleted, _) = store.delete("/c/watch/a", None).await.expect("delete a");

    let mut watch = store.watch(prefix, start).await.expect("watch");
    let event = next_event(&mut watch).await;
    assert_eq!(event.kind, WatchEventKind::Put);
    assert_eq!(
        (event.kv.key.as_str(), event.kv.value.as_slice()),
        ("/c/watch/a", &b"a2"[..])
    );
    assert_eq!(
        (event.kv.create_revision, event.kv.mod_revision),
        (start, a2)
    );
    let prev = event.prev_kv.expect("prev_kv of an update");
    assert_eq!(
        (prev.value.as_slice(), prev.mod_revision),
        (&b"a1"[..], start)
    );

    let event = next_event(&mut watch).await;
    assert_eq!(event.kind, WatchEventKind::Put);
    assert_eq!(
        (event.kv.key.as_str(), event.kv.mod_revision),
        ("/c/watch/b", b)
    );
    assert_eq!(event.prev_kv, None);

    let event = next_event(&mut watch).await;
    assert_eq!(event.kind, WatchEventKind::Delete);
    assert_eq!(event.kv.key, "/c/watch/a");
    assert_eq!(event.kv.mod_revision, deleted);
    assert!(event.kv.value.is_empty());
    let prev = event.prev_kv.expect("prev_kv of a delete");
    assert_eq!((prev.value.as_slice(), prev.mod_revision), (&b"a2"[..], a2));

    // The watch goes on with live events.
    let c = store.create("/c/watch/c", b"c1".to_vec()).await.expect("c");
    let event = next_event(&mut watch).await;
    assert_eq!(
        (event.kv.key.as_str(), event.kv.mod_revision),
        ("/c/watch/c", c)
    );
}

async fn watch_from_zero_sees_only_new_events(store: &dyn Store) {
    store
        .create("/c/now/old", b"old".to_vec())
        .await
        .expect("old");
    let mut watch = store.watch("/c/now/", 0).await.expect("watch");
    // etcd registers a watch asynchronously; a write right after `watch` returns may land
    // before it, so keep writing until an event arrives and check it is not the old one.
    let mut written = Vec::new();
    let event = loop {
        let key = format!("/c/now/new{}", written.len());
        written.push(store.create(&key, b"new".to_vec()).await.expect("new"));
        if let Ok(item) = tokio::time::timeout(Duration::from_millis(500), watch.next()).await {
            break item.expect("watch open").expect("event");
        }
        assert!(written.len() < 20, "no event for {} writes", written.len());
    };
    assert!(event.kv.key.starts_with("/c/now/new"), "{:?}", event.kv.key);
    assert!(written.contains(&event.kv.mod_revision));
}

async fn concurrent_creates_of_one_key_let_exactly_one_win(store: &dyn Store) {
    let attempts = (0..16u8).map(|i| store.create("/c/race/key", vec![i]));
    let results = futures::future::join_all(attempts).await;
    let winners = results.iter().filter(|r| r.is_ok()).count();
    let losers = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::AlreadyExists { .. })))
        .count();
    assert_eq!((winners, losers), (1, 15), "{results:?}");
    let kv = store
        .get("/c/race/key")
        .await
        .expect("get")
        .expect("exists");
    let winner = results.iter().position(|r| r.is_ok()).expect("a winner");
    assert_eq!(kv.value, vec![winner as u8]);
}

async fn concurrent_updates_from_one_revision_let_exactly_one_win(store: &dyn Store) {
    let base = store
        .create("/c/race/update", vec![])
        .await
        .expect("create");
    let attempts = (0..16u8).map(|i| store.update("/c/race/update", vec![i], base));
    let results = futures::future::join_all(attempts).await;
    let winners = results.iter().filter(|r| r.is_ok()).count();
    let conflicts = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::Conflict { .. })))
        .count();
    assert_eq!((winners, conflicts), (1, 15), "{results:?}");
}

async fn compaction_makes_old_reads_and_watches_fail(store: &dyn Store) {
    let prefix = "/c/compact/";
    let old = store
        .create("/c/compact/a", b"a1".to_vec())
        .await
        .expect("a");
    store
        .update("/c/compact/a", b"a2".to_vec(), old)
        .await
        .expect("a2");
    let b = store
        .create("/c/compact/b", b"b1".to_vec())
        .await
        .expect("b");
    store
        .delete("/c/compact/b", Some(b))
        .await
        .expect("delete b");
    let current = store.current_revision().await.expect("revision");
    store.compact(current).await.expect("compact");

    let old_read = ListOptions {
        revision: Some(old),
        ..ListOptions::default()
    };
    let result = store.list(prefix, old_read).await;
    assert!(
        matches!(result, Err(StoreError::Compacted { requested, .. }) if requested == old),
        "{result:?}"
    );

    let mut watch = store.watch(prefix, old).await.expect("watch");
    match tokio::time::timeout(EVENT_WAIT, watch.next()).await {
        Ok(Some(Err(StoreError::Compacted {
            compacted_revision, ..
        }))) => assert_eq!(compacted_revision, Some(current)),
        other => panic!("expected a compacted watch, got {other:?}"),
    }
    assert!(
        watch.next().await.is_none(),
        "the watch ends after its error"
    );

    // The newest data survives compaction, and reading at the compacted revision works.
    let kv = store.get("/c/compact/a").await.expect("get").expect("a");
    assert_eq!(kv.value, b"a2");
    let at_compaction = ListOptions {
        revision: Some(current),
        ..ListOptions::default()
    };
    let list = store.list(prefix, at_compaction).await.expect("list");
    assert_eq!(list.items.len(), 1);
    let again = store.compact(old).await;
    assert!(
        matches!(again, Err(StoreError::Compacted { .. })),
        "{again:?}"
    );

    // A watch from the compaction revision on still works.
    let mut watch = store.watch(prefix, current).await.expect("watch");
    let c = store
        .create("/c/compact/c", b"c".to_vec())
        .await
        .expect("c");
    let event = next_event(&mut watch).await;
    assert_eq!(
        (event.kv.key.as_str(), event.kv.mod_revision),
        ("/c/compact/c", c)
    );
}
