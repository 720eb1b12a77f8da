//! The one watch loop: every component that follows objects through the apiserver (the
//! controllers' caches, the scheduler, the kubelet, the proxy, the simulated fleet) gets
//! its events from here.
//!
//! How: kube-runtime's [`watcher`] is the state machine: it lists, then watches from the
//! list's `resourceVersion`, asks for bookmarks so a resumed watch starts close to now,
//! and lists again when the apiserver answers `410 Gone` (the revision was compacted). What
//! it leaves to its caller is what to do when a request fails: [`events`] waits
//! [`Backoff::WATCH`] before the next attempt — 0.8 s doubling to 30 s, the streak
//! forgotten once no error came for two minutes, each delay shortened by up to a quarter
//! at random so a fleet of kubelets that lost the same apiserver does not come back in
//! step. Failures are logged and never reach the caller: its stream only ends when the
//! process does.
//!
//! [`cached`] adds a reflector store (one writer, cheap cloneable readers, possibly stale)
//! and calls a handler with every object applied or deleted.

use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::Resource;

use super::Backoff;

/// The watch events of `api` filtered by `cfg`, forever: failures are retried after
/// [`Backoff::WATCH`] and never yielded.
pub fn events<K>(api: Api<K>, cfg: watcher::Config) -> BoxStream<'static, watcher::Event<K>>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&Default::default()).into_owned();
    let inner = watcher(api, cfg).boxed();
    futures::stream::unfold(
        (inner, Streak::new(Backoff::WATCH), kind),
        |(mut inner, mut streak, kind)| {
            async move {
                loop {
                    match inner.next().await? {
                        Ok(ev) => return Some((ev, (inner, streak, kind))),
                        Err(e) => {
                            let wait = jitter(streak.failed(Instant::now()));
                            tracing::warn!(%kind, error = %e, retry_in_ms = wait.as_millis() as u64, "watch failed");
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
            }
        },
    )
    .boxed()
}

/// Follows `api` into a cache; `on_change` sees every applied object and, with `true`,
/// every deleted one. The returned task runs until aborted.
pub fn cached<K, F>(
    api: Api<K>,
    cfg: watcher::Config,
    on_change: F,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    F: Fn(&K, bool) + Send + 'static,
{
    let (reader, mut writer) = reflector::store::<K>();
    let task = tokio::spawn(async move {
        let mut stream = events(api, cfg);
        while let Some(ev) = stream.next().await {
            writer.apply_watcher_event(&ev);
            match &ev {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => on_change(o, false),
                watcher::Event::Delete(o) => on_change(o, true),
                watcher::Event::Init | watcher::Event::InitDone => {}
            }
        }
    });
    (reader, task)
}

/// A run of consecutive failures: how long to wait before the next attempt.
#[derive(Debug)]
struct Streak {
    policy: Backoff,
    failures: u32,
    last: Option<Instant>,
}

impl Streak {
    fn new(policy: Backoff) -> Self {
        Streak {
            policy,
            failures: 0,
            last: None,
        }
    }

    /// Records a failure at `now`; the delay before the next attempt (before jitter).
    fn failed(&mut self, now: Instant) -> Duration {
        let quiet = match self.last {
            Some(t) => now.saturating_duration_since(t) >= self.policy.reset_after,
            None => true,
        };
        self.failures = if quiet {
            1
        } else {
            self.failures.saturating_add(1)
        };
        self.last = Some(now);
        self.policy.delay(self.failures)
    }
}

/// `d` shortened by up to a quarter, at random.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(1.0 - rand::random::<f64>() * 0.25)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_streak_doubles_and_is_forgotten_after_two_quiet_minutes() {
        let mut s = Streak::new(Backoff::WATCH);
        let t0 = Instant::now();
        let ms = |d: Duration| d.as_millis();
        assert_eq!(ms(s.failed(t0)), 800);
        assert_eq!(ms(s.failed(t0 + Duration::from_secs(1))), 1600);
        assert_eq!(ms(s.failed(t0 + Duration::from_secs(3))), 3200);
        let late = t0 + Duration::from_secs(3) + Backoff::WATCH.reset_after;
        assert_eq!(ms(s.failed(late)), 800);
        for i in 0..40 {
            s.failed(late + Duration::from_millis(i));
        }
        assert_eq!(s.failed(late + Duration::from_secs(1)), Backoff::WATCH.max);
    }

    #[test]
    fn jitter_only_shortens_and_by_at_most_a_quarter() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_secs(4));
            assert!(
                d <= Duration::from_secs(4) && d >= Duration::from_secs(3),
                "{d:?}"
            );
        }
    }

    /// An apiserver that fails every request: the watch must back off, not spin.
    #[tokio::test]
    async fn a_failing_apiserver_is_asked_again_only_after_a_growing_pause() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = requests.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    // One request per connection: count it, refuse it, close.
                    if conn.read(&mut buf).await.unwrap_or(0) > 0 {
                        seen.fetch_add(1, Ordering::SeqCst);
                        let _ = conn
                            .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                            .await;
                    }
                });
            }
        });
        let cfg = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let client = crate::client::client_from_config(cfg).unwrap();
        let api: Api<ConfigMap> = Api::namespaced(client, "default");
        let mut stream = events(api, watcher::Config::default());
        // Only the watcher's "a list begins" markers come through, never a failure.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while let Ok(ev) = tokio::time::timeout_at(deadline, stream.next()).await {
            assert!(matches!(ev, Some(watcher::Event::Init)), "yielded {ev:?}");
        }
        let n = requests.load(Ordering::SeqCst);
        // Attempts at 0, then after 0.8, 1.6 and 3.2 s less a quarter at most: at 0,
        // 0.6–0.8, 1.8–2.4 and 4.2–5.6 s. A fixed 1 s retry would ask 5 times, a loop
        // without a pause thousands.
        assert!((3..=4).contains(&n), "{n} requests in 5 s");
        server.abort();
    }
}
