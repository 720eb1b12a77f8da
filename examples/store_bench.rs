//! Raw etcd put throughput vs `EtcdStore::create` throughput over the same local etcd.
//!
//! What: starts a throwaway etcd on loopback ([`kimg::store::LocalEtcd`], needs the
//! `etcd-server` package), warms it up, then alternates rounds of N writes of 1 KiB values
//! with 16 writers in flight: raw `Put`s through `etcd-client`, and `EtcdStore::create`
//! (a transaction comparing `create_revision`). Prints one `key=value` line per round and a
//! summary with the throughput ratio (ARCHITECTURE §10 wants the apiserver at ≥ 0.7 of raw
//! etcd; this is the store's share of that budget).
//!
//! Run: `cargo run --example store_bench` (add `--release` for figures without debug-build
//! client overhead). Limits: one member, on this machine's disk; writes are bounded (N per
//! round, 2 rounds each) and go only to 127.0.0.1.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use kimg::store::{EtcdStore, LocalEtcd, Store};

const N: usize = 2000;
const CONCURRENCY: usize = 16;
const VALUE_SIZE: usize = 1024;
const ROUNDS: usize = 2;

/// What one round measured.
struct Round {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs `op(i)` for i in 0..n with `CONCURRENCY` workers, timing each call.
async fn run_round<F, Fut>(n: usize, op: F) -> anyhow::Result<Round>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let op = op.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let t = Instant::now();
                op(i).await?;
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    for worker in workers {
        latencies.extend(worker.await.context("bench worker panicked")??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Ok(Round {
        per_second: n as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    })
}

fn print_round(name: &str, round: usize, r: &Round) {
    println!(
        "bench={name} round={round} n={N} concurrency={CONCURRENCY} value_bytes={VALUE_SIZE} \
         per_s={:.0} p50_ms={:.2} p99_ms={:.2}",
        r.per_second,
        r.p50.as_secs_f64() * 1e3,
        r.p99.as_secs_f64() * 1e3
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let etcd = LocalEtcd::start().await.context("starting a local etcd")?;
    let store = EtcdStore::connect(&etcd.config())
        .await
        .context("connecting to the local etcd")?;
    let value: Arc<Vec<u8>> = Arc::new((0..VALUE_SIZE).map(|i| (i % 251) as u8).collect());

    let raw = |prefix: String| {
        let kv = store.client().kv_client();
        let value = value.clone();
        move |i: usize| {
            let mut kv = kv.clone();
            let key = format!("{prefix}{i:06}");
            let value = value.to_vec();
            async move {
                kv.put(key, value, None).await?;
                Ok(())
            }
        }
    };
    let create = |prefix: String| {
        let store = store.clone();
        let value = value.clone();
        move |i: usize| {
            let store = store.clone();
            let key = format!("{prefix}{i:06}");
            let value = value.to_vec();
            async move {
                store.create(&key, value).await?;
                Ok(())
            }
        }
    };

    run_round(N / 4, raw("/bench/warmup/".into())).await?;
    let (mut raw_total, mut create_total) = (0.0, 0.0);
    for round in 0..ROUNDS {
        let r = run_round(N, raw(format!("/bench/raw{round}/"))).await?;
        print_round("etcd_raw_put", round, &r);
        raw_total += r.per_second;
        let c = run_round(N, create(format!("/registry/bench{round}/"))).await?;
        print_round("etcd_store_create", round, &c);
        create_total += c.per_second;
    }
    let (raw_mean, create_mean) = (raw_total / ROUNDS as f64, create_total / ROUNDS as f64);
    println!(
        "bench=summary raw_put_per_s={raw_mean:.0} store_create_per_s={create_mean:.0} \
         ratio={:.2} build={}",
        create_mean / raw_mean,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    drop(etcd);
    Ok(())
}
