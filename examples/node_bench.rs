//! A node as its users see it, measured: `kimg up` (memory store, with scheduler and
//! controllers), a private containerd, `kimg kubelet` joined with only a bootstrap token,
//! and `kimg proxy` on the kubelet's credentials — run inside the network namespace
//! `scripts/bench-node` creates. PODS busybox pods are created through the API at once;
//! a watch records when each one turns Running (create → Running: p50, p99, max), then the
//! RSS of the kubelet and proxy processes is read with those pods running. Prints
//! `BENCH key=value` lines. A warm-up pod runs first, so the image is already unpacked.
//!
//! `scripts/bench-node [PODS]` (default 30). Needs root, containerd, runc, the CNI plugins
//! and nft; `--archive` is a busybox OCI archive from `kimg oci build`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use serde_json::json;

use kimg::kubelet::private_containerd::PrivateContainerd;

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in self.0.iter_mut().rev() {
            // SAFETY: kill(2) on a child this benchmark spawned.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn flag(args: &[String], name: &str) -> Option<String> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).cloned()
}

fn run(kimg: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(kimg).args(args).output()?;
    if !out.status.success() {
        bail!(
            "kimg {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn bootstrap_token(dev: &Path) -> anyhow::Result<String> {
    let tokens = std::fs::read_to_string(dev.join("secrets/tokens.toml"))?;
    let field = |k: &str| {
        tokens.lines().find_map(|l| {
            l.strip_prefix(&format!("{k} = \""))?
                .strip_suffix('"')
                .map(str::to_string)
        })
    };
    Ok(format!(
        "{}.{}",
        field("id").context("token id")?,
        field("secret").context("token secret")?
    ))
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

async fn client(kubeconfig: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(kimg::client::client_from_config(config)?)
}

fn pod(name: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"bench": "node"}},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "main", "image": "kimg.local/busybox:latest",
            "command": ["/bin/sh", "-c", "exec sleep 3600"]}]}
    }))?)
}

async fn wait_until<F, Fut>(secs: u64, what: &str, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(anyhow!("timed out after {secs}s waiting for {what}"))
}

fn running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let kimg = PathBuf::from(flag(&args, "--kimg").context("--kimg PATH")?);
    let archive = PathBuf::from(flag(&args, "--archive").context("--archive PATH")?);
    let pods: usize = flag(&args, "--pods")
        .map(|p| p.parse())
        .transpose()?
        .unwrap_or(30);
    let tmp = tempfile::Builder::new().prefix("kbn").tempdir_in("/tmp")?;
    let t = tmp.path();
    let dev = t.join("dev");
    let dev_s = dev.display().to_string();
    run(&kimg, &["cluster", "new", &dev_s])?;
    let images = t.join("images");
    std::fs::create_dir_all(&images)?;
    std::fs::copy(&archive, images.join("busybox.tar"))?;
    let log = |name: &str| std::fs::File::create(t.join(format!("{name}.log")));

    let mut procs = Procs(Vec::new());
    let mut up = Command::new(&kimg)
        .args([
            "up",
            &dev_s,
            "--listen",
            "127.0.0.1:6443",
            "--store",
            "memory",
        ])
        .stdout(Stdio::piped())
        .stderr(log("up")?)
        .spawn()?;
    let stdout = up.stdout.take().context("stdout")?;
    procs.0.push(up);
    let admin = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    })
    .await??;
    let admin = PathBuf::from(admin.trim());
    let containerd = PrivateContainerd::start(&t.join("ctr")).context("containerd")?;
    let sock = t.join("ctr/c.sock");
    let cgroup = format!("/kimg-bench-node-{}", std::process::id());
    let kubelet_dir = t.join("kubelet");
    let kubelet = Command::new(&kimg)
        .arg("kubelet")
        .args(["--server", "https://127.0.0.1:6443", "--ca-file"])
        .arg(dev.join("secrets/pki/ca.crt"))
        .arg("--state-dir")
        .arg(&kubelet_dir)
        .args(["--node-name", "bench", "--node-ip", "127.0.0.1"])
        .arg("--containerd-socket")
        .arg(&sock)
        .arg("--runc-root")
        .arg(containerd.runc_root())
        .arg("--oci-archive-dir")
        .arg(&images)
        .args(["--bridge", "kbn0", "--cgroup-parent", &cgroup])
        .env("KIMG_BOOTSTRAP_TOKEN", bootstrap_token(&dev)?)
        .stdout(log("kubelet")?)
        .stderr(log("kubelet")?)
        .spawn()?;
    let kubelet_pid = kubelet.id();
    procs.0.push(kubelet);
    let node_conf = kubelet_dir.join("kubelet.conf");
    wait_until(60, "the kubelet's credentials", || {
        let exists = node_conf.exists();
        async move { exists }
    })
    .await?;
    let proxy = Command::new(&kimg)
        .arg("proxy")
        .arg("--kubeconfig")
        .arg(&node_conf)
        .stdout(log("proxy")?)
        .stderr(log("proxy")?)
        .spawn()?;
    let proxy_pid = proxy.id();
    procs.0.push(proxy);

    let c = client(&admin).await?;
    let nodes: Api<Node> = Api::all(c.clone());
    wait_until(120, "node bench Ready", || {
        let nodes = nodes.clone();
        async move {
            nodes
                .get_opt("bench")
                .await
                .ok()
                .flatten()
                .is_some_and(|n| {
                    n.status
                        .and_then(|s| s.conditions)
                        .into_iter()
                        .flatten()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
        }
    })
    .await?;
    let api: Api<Pod> = Api::default_namespaced(c.clone());
    // Warm-up: the image is imported and unpacked, the default ServiceAccount and the
    // kube-root-ca.crt ConfigMap exist.
    api.create(&PostParams::default(), &pod("warm")?).await?;
    wait_until(120, "the warm-up pod Running", || {
        let api = api.clone();
        async move { api.get("warm").await.is_ok_and(|p| running(&p)) }
    })
    .await?;
    api.delete("warm", &DeleteParams::default()).await?;
    let idle = (rss_kb(kubelet_pid), rss_kb(proxy_pid));

    let mut stream = api
        .watch(&WatchParams::default().labels("bench=node"), "0")
        .await?
        .boxed();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = tokio::spawn(async move {
        while let Ok(Some(ev)) = stream.try_next().await {
            if let WatchEvent::Added(p) | WatchEvent::Modified(p) = ev {
                if running(&p) {
                    let _ = tx.send((p.metadata.name.unwrap_or_default(), Instant::now()));
                }
            }
        }
    });
    let mut created = HashMap::new();
    let begun = Instant::now();
    for i in 0..pods {
        let name = format!("bench-{i:03}");
        created.insert(name.clone(), Instant::now());
        api.create(&PostParams::default(), &pod(&name)?).await?;
    }
    let mut seen: HashMap<String, Instant> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while seen.len() < pods {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((name, at))) => {
                seen.entry(name).or_insert(at);
            }
            _ => bail!("only {} of {pods} pods turned Running", seen.len()),
        }
    }
    let all = begun.elapsed();
    watcher.abort();
    let mut lat: Vec<Duration> = seen
        .iter()
        .filter_map(|(n, at)| Some(at.duration_since(*created.get(n)?)))
        .collect();
    lat.sort();
    let pct = |p: usize| lat[((lat.len() * p).div_ceil(100)).clamp(1, lat.len()) - 1];
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy = (rss_kb(kubelet_pid), rss_kb(proxy_pid));
    println!("BENCH pods={pods}");
    println!("BENCH create_to_running_p50_ms={}", pct(50).as_millis());
    println!("BENCH create_to_running_p99_ms={}", pct(99).as_millis());
    println!("BENCH create_to_running_max_ms={}", pct(100).as_millis());
    println!("BENCH all_running_ms={}", all.as_millis());
    println!("BENCH idle_rss_kubelet_mb={:.1}", idle.0 as f64 / 1024.0);
    println!("BENCH idle_rss_proxy_mb={:.1}", idle.1 as f64 / 1024.0);
    println!(
        "BENCH rss_with_{pods}_pods_kubelet_mb={:.1} proxy_mb={:.1} together_mb={:.1}",
        busy.0 as f64 / 1024.0,
        busy.1 as f64 / 1024.0,
        (busy.0 + busy.1) as f64 / 1024.0
    );

    // Clean up through the API, so the kubelet removes every container and netns.
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("bench=node"),
    )
    .await?;
    wait_until(120, "the pods gone", || {
        let api = api.clone();
        async move {
            api.list(&ListParams::default())
                .await
                .is_ok_and(|l| l.items.is_empty())
        }
    })
    .await?;
    drop(procs);
    drop(containerd);
    let _ = std::fs::remove_dir(format!("/sys/fs/cgroup{cgroup}"));
    Ok(())
}
