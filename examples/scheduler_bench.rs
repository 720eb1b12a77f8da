//! Scheduler throughput on 5,000 simulated nodes × 10,000 pods, and the memory of the
//! scheduler and controller-manager at that size.
//!
//! What: two measurements.
//! 1. *Algorithm*: the scheduler core ([`kimg::scheduler::core::Core`]) in this process,
//!    fed 5,000 nodes and 10,000 pending pods (100m / 128Mi, one ReplicaSet), timed over
//!    `schedule_one` for every pod — filters, scoring and the assume step, no I/O.
//! 2. *End to end*: `kimg up --no-scheduler --no-controller-manager` (memory store),
//!    `kimg sim nodes --count 5000`, 10,000 pods created pending through the API, then
//!    `kimg scheduler` and `kimg controller-manager` started as separate processes; the time
//!    from the scheduler's start until every pod is bound, and each process's VmRSS.
//!
//! Run: `cargo build && cargo run --example scheduler_bench` (uses `target/<profile>/kimg`
//! next to this example, or `$KIMG_BIN`). Set `BENCH_NODES` / `BENCH_PODS` to shrink it.
//! Everything listens on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kimg::scheduler::core::Core;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn node(i: usize) -> Node {
    serde_json::from_value(json!({"metadata": {"name": format!("sim-{i}"),
        "labels": {"kubernetes.io/hostname": format!("sim-{i}")}},
        "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True"}]}}))
    .expect("node")
}

fn pod(i: usize) -> Pod {
    serde_json::from_value(
        json!({"metadata": {"name": format!("bench-{i}"), "namespace": "default",
            "labels": {"app": "bench"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "bench",
                                 "uid": "bench-uid", "controller": true}]},
        "spec": {"containers": [{"name": "c", "image": "pause",
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}}),
    )
    .expect("pod")
}

fn algorithm(nodes: usize, pods: usize) -> f64 {
    let mut core = Core::default();
    for i in 0..nodes {
        core.cache.upsert_node(&node(i));
    }
    let pods: Vec<Pod> = (0..pods).map(pod).collect();
    let start = Instant::now();
    let mut placed = 0;
    for p in &pods {
        if core.schedule_one(p).is_ok() {
            placed += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!("algorithm_nodes={nodes} algorithm_pods={} algorithm_placed={placed} algorithm_seconds={secs:.3} algorithm_pods_per_second={:.0}",
        pods.len(), pods.len() as f64 / secs);
    pods.len() as f64 / secs
}

fn kimg_bin() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("KIMG_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("kimg"))
        .context("no target dir")?;
    if !bin.exists() {
        bail!(
            "{} is missing: run `cargo build` first or set KIMG_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU seconds a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (num(11) + num(12)) / 100.0
}

struct Kill(Vec<Child>);
impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn end_to_end(nodes: usize, pods: usize) -> anyhow::Result<()> {
    let bin = kimg_bin()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("bench");
    let st = Command::new(&bin)
        .args(["cluster", "new"])
        .arg(&dir)
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("kimg cluster new failed");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut procs = Kill(Vec::new());
    let mut up = Command::new(&bin)
        .args([
            "up",
            dir.to_str().context("utf-8")?,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--no-scheduler",
            "--no-controller-manager",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let out = up.stdout.take().context("stdout")?;
    let up_pid = up.id();
    procs.0.push(up);
    let kubeconfig = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line)?;
        PathBuf::from(line.trim())
    };
    let client = kimg::client::client_from_kubeconfig(&kubeconfig).await?;
    let kc = kubeconfig.to_str().context("utf-8")?.to_string();
    let t = Instant::now();
    let sim = Command::new(&bin)
        .args([
            "sim",
            "nodes",
            "--count",
            &nodes.to_string(),
            "--kubeconfig",
            &kc,
            "--heartbeat",
            "30s",
        ])
        .stderr(Stdio::null())
        .spawn()?;
    let sim_pid = sim.id();
    procs.0.push(sim);
    let node_api: Api<Node> = Api::all(client.clone());
    loop {
        let n = node_api.list(&ListParams::default()).await?.items.len();
        if n >= nodes {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "e2e_nodes_registered={nodes} e2e_register_seconds={:.1}",
        t.elapsed().as_secs_f64()
    );
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let t = Instant::now();
    futures::stream::iter(0..pods)
        .for_each_concurrent(32, |i| {
            let api = pod_api.clone();
            async move {
                let mut p = pod(i);
                p.metadata.owner_references = None;
                let _ = api.create(&PostParams::default(), &p).await;
            }
        })
        .await;
    println!(
        "e2e_pods_created={pods} e2e_create_seconds={:.1}",
        t.elapsed().as_secs_f64()
    );
    let cpu0 = [cpu_seconds(up_pid), cpu_seconds(sim_pid)];
    let start = Instant::now();
    let sched = Command::new(&bin)
        .args(["scheduler", "--kubeconfig", &kc, "--leader-elect=false"])
        .stderr(Stdio::null())
        .spawn()?;
    let sched_pid = sched.id();
    procs.0.push(sched);
    let cm = Command::new(&bin)
        .args([
            "controller-manager",
            "--kubeconfig",
            &kc,
            "--leader-elect=false",
        ])
        .stderr(Stdio::null())
        .spawn()?;
    let cm_pid = cm.id();
    procs.0.push(cm);
    let mut peak_sched = 0;
    let mut peak_cm = 0;
    loop {
        let unbound = pod_api
            .list(&ListParams::default().fields("spec.nodeName="))
            .await?
            .items
            .len();
        peak_sched = peak_sched.max(rss_kib(sched_pid));
        peak_cm = peak_cm.max(rss_kib(cm_pid));
        if unbound == 0 {
            break;
        }
        if start.elapsed() > Duration::from_secs(900) {
            bail!("{unbound} pods still unbound after 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("cpu_seconds_during_scheduling apiserver={:.1} sim={:.1} scheduler={:.1} controller_manager={:.1}",
        cpu_seconds(up_pid) - cpu0[0], cpu_seconds(sim_pid) - cpu0[1], cpu_seconds(sched_pid), cpu_seconds(cm_pid));
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!("e2e_schedule_seconds={secs:.1} e2e_pods_per_second={:.0} (includes scheduler start-up and its initial list)", pods as f64 / secs);
    println!("scheduler_rss_kib={} scheduler_peak_rss_kib={peak_sched} controller_manager_rss_kib={} controller_manager_peak_rss_kib={peak_cm}",
        rss_kib(sched_pid), rss_kib(cm_pid));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let nodes = env_usize("BENCH_NODES", 5000);
    let pods = env_usize("BENCH_PODS", 10000);
    let pps = algorithm(nodes, pods);
    println!(
        "algorithm_goal_1000_pods_per_second={}",
        if pps >= 1000.0 { "met" } else { "missed" }
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(end_to_end(nodes, pods))
}
