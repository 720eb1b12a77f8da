//! etcd that lasts (issue 13): 200,000 Lease updates through `kimg up` on a real etcd
//! whose backend quota (32 MiB) is far smaller than the uncompacted history would be
//! (about 100 MB). With the apiserver's compactor on a short interval, no write fails
//! (no NOSPACE) and the database stays small; the figures are printed as BENCH lines.
//! Then the quota is exhausted on purpose with compaction off, and a compactor brings the
//! cluster back (compact, defragment, disarm). Needs the `etcd-server` package.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kimg::store::{EtcdStore, LocalEtcd, Store};
use kube::api::{Api, ObjectMeta, PostParams};

const WRITES: u64 = 200_000;
const WRITERS: u64 = 32;
const QUOTA: i64 = 32 * 1024 * 1024;

fn kimg_up(
    dir: &std::path::Path,
    etcd: &str,
    interval: &str,
) -> (common::KillOnDrop, std::path::PathBuf) {
    common::kimg_up_on_etcd(dir, etcd, &["--etcd-compaction-interval", interval])
}

/// `count` updates of one Lease by each of `WRITERS` writers; returns the writes done.
async fn churn(client: kube::Client, count: u64, failures: Arc<AtomicU64>) -> u64 {
    let api: Api<Lease> = Api::namespaced(client, "default");
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (api, done, failures) = (api.clone(), done.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let name = format!("churn-{w}");
            let mut lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(format!("writer-{w}")),
                    lease_duration_seconds: Some(15),
                    ..Default::default()
                }),
            };
            lease = api
                .create(&PostParams::default(), &lease)
                .await
                .expect("create lease");
            for i in 0..count / WRITERS {
                if let Some(spec) = lease.spec.as_mut() {
                    spec.lease_transitions = Some(i as i32);
                }
                match api.replace(&name, &PostParams::default(), &lease).await {
                    Ok(l) => {
                        lease = l;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if failures.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("write failed: {e}");
                        }
                        lease = api.get(&name).await.unwrap_or(lease);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    done.load(Ordering::Relaxed)
}

#[test]
fn compaction_keeps_etcd_small_and_writable_through_200k_lease_updates() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let quota = format!("--quota-backend-bytes={QUOTA}");
    let etcd = rt
        .block_on(LocalEtcd::start_with_args(&[&quota]))
        .expect("etcd");
    let url = etcd.config().endpoints[0].clone();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("c");
    common::kimg_ok(
        tmp.path(),
        &["cluster", "new", dir.to_str().expect("utf-8")],
    );
    let (up, kubeconfig) = kimg_up(&dir, &url, "2s");
    let store = rt
        .block_on(EtcdStore::connect(&etcd.config()))
        .expect("store");
    let client = rt
        .block_on(kimg::client::client_from_kubeconfig(&kubeconfig))
        .expect("client");

    let failures = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let writer = rt.spawn(churn(client, WRITES, failures.clone()));
    let mut peak = 0i64;
    while !writer.is_finished() {
        std::thread::sleep(Duration::from_secs(2));
        let size = rt.block_on(store.db_size()).expect("status").unwrap_or(0);
        peak = peak.max(size);
        assert!(
            start.elapsed() < Duration::from_secs(1200),
            "the churn ran for 20 minutes"
        );
    }
    let written = rt.block_on(writer).expect("writer");
    let secs = start.elapsed().as_secs_f64();
    let final_size = rt.block_on(store.db_size()).expect("status").unwrap_or(0);
    println!("BENCH lease_updates={written}");
    println!("BENCH lease_updates_per_s={:.0}", written as f64 / secs);
    println!("BENCH etcd_db_peak_mb={:.1}", peak as f64 / 1048576.0);
    println!(
        "BENCH etcd_db_final_mb={:.1}",
        final_size as f64 / 1048576.0
    );
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no write failed");
    assert_eq!(written, WRITES);
    assert!(
        peak < QUOTA / 2,
        "the database stayed under half the quota: peak {peak} bytes"
    );
    drop(up);

    // Compaction off: the quota fills and etcd raises NOSPACE.
    let (off, kubeconfig) = kimg_up(&dir, &url, "0s");
    let client = rt
        .block_on(kimg::client::client_from_kubeconfig(&kubeconfig))
        .expect("client");
    let api: Api<Lease> = Api::namespaced(client.clone(), "default");
    let big = "x".repeat(1024 * 1024);
    let mut i = 0;
    let nospace = loop {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(format!("fill-{i}")),
                annotations: Some([("fill".to_string(), big.clone())].into()),
                ..Default::default()
            },
            spec: None,
        };
        match rt.block_on(api.create(&PostParams::default(), &lease)) {
            Ok(_) => i += 1,
            Err(e) => break e.to_string(),
        }
        assert!(
            i < 200,
            "64 MiB written into a 32 MiB quota without an error"
        );
    };
    assert!(nospace.contains("space exceeded"), "{nospace}");
    drop(off);
    // Deletes are allowed under NOSPACE; the compactor then frees the space.
    let fills = rt
        .block_on(store.list("/registry/leases/default/fill-", Default::default()))
        .expect("list");
    for kv in fills.items {
        rt.block_on(store.delete(&kv.key, None)).expect("delete");
    }
    // Deleting is not enough: the alarm holds until someone disarms it.
    let probe = rt.block_on(store.create("/registry/probe", b"x".to_vec()));
    assert!(
        matches!(probe, Err(kimg::store::StoreError::NoSpace(_))),
        "the NOSPACE alarm is still raised: {probe:?}"
    );
    // An apiserver with its compactor on meets NOSPACE and recovers by itself.
    let (_back, kubeconfig) = kimg_up(&dir, &url, "2s");
    let client = rt
        .block_on(kimg::client::client_from_kubeconfig(&kubeconfig))
        .expect("client");
    let api: Api<Lease> = Api::namespaced(client, "default");
    let again = Lease {
        metadata: ObjectMeta {
            name: Some("after".into()),
            ..Default::default()
        },
        spec: None,
    };
    let t = Instant::now();
    loop {
        match rt.block_on(api.create(&PostParams::default(), &again)) {
            Ok(_) => break,
            Err(e) => assert!(
                t.elapsed() < Duration::from_secs(60),
                "writes still fail a minute after the space was freed: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("BENCH nospace_recovery_s={:.1}", t.elapsed().as_secs_f64());
    assert!(
        !rt.block_on(store.disarm_nospace()).expect("alarms"),
        "no NOSPACE alarm is left raised"
    );
}
