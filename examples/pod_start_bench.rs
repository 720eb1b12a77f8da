//! Pod startup latency on one node: 30 busybox pods, image already present,
//! `run_pod` → every container Running (polled every 5 ms), p50/p99, on a private
//! containerd started in a temp dir (needs root, containerd, runc, CNI plugins and
//! busybox-static). Prints one JSON line.
//!
//! `cargo run --example pod_start_bench [-- PODS]`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kimg::kubelet::cni::CniNetwork;
use kimg::kubelet::{
    ContainerState, Containerd, ContainerdRuntime, Kubelet, KubeletConfig, ResolvedData,
};

const IMAGE: &str = "kimg.local/busybox:latest";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pods: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::Builder::new()
        .prefix("kbench")
        .tempdir_in("/tmp")?;
    let d = dir.path();
    let sock = d.join("c.sock");
    std::fs::write(
        d.join("config.toml"),
        format!(
            "version = 2\nroot = {:?}\nstate = {:?}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = {:?}\n[ttrpc]\n  address = \"{}.ttrpc\"\n",
            d.join("root").display().to_string(),
            d.join("state").display().to_string(),
            sock.display().to_string(),
            sock.display()
        ),
    )?;
    let log = std::fs::File::create(d.join("containerd.log"))?;
    let mut daemon = std::process::Command::new("/usr/bin/containerd")
        .arg("--config")
        .arg(d.join("config.toml"))
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let result = run(pods, d, &sock).await;
    // SAFETY: kill(2) on the containerd this benchmark started.
    unsafe {
        libc::kill(daemon.id() as i32, libc::SIGTERM);
    }
    let _ = daemon.wait();
    let _ = std::process::Command::new("ip")
        .args(["link", "del", "kbench0"])
        .status();
    for e in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = std::fs::remove_dir(e.path().join("kimg-bench"));
    }
    result
}

async fn run(pods: usize, d: &std::path::Path, sock: &std::path::Path) -> anyhow::Result<()> {
    let mut client = None;
    for _ in 0..200 {
        if let Ok(c) = Containerd::connect(sock, "k8s.io").await {
            if c.container_ids().await.is_ok() {
                client = Some(c.with_runc_root(&d.join("runc")));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = client.ok_or_else(|| anyhow::anyhow!("containerd did not start"))?;
    let mut tree = kimg::build::tree::Tree::new();
    tree.insert_file("bin/busybox", 0o755, std::fs::read("/bin/busybox")?);
    kimg::oci::add_busybox_links(&mut tree);
    kimg::oci::packages::add_base(&mut tree);
    let image = kimg::oci::write_archive(
        &tree,
        &kimg::oci::ImageConfig {
            name: IMAGE.into(),
            entrypoint: vec!["/bin/busybox".into()],
            cmd: vec!["sh".into()],
            env: vec!["PATH=/bin".into()],
            working_dir: "/".into(),
            epoch: 1_700_000_000,
        },
    )?;
    client.import(&image.archive, None).await?;
    let cni = CniNetwork {
        bin_dir: PathBuf::from("/usr/lib/cni"),
        bridge: "kbench0".into(),
        pod_cidr: "10.250.200.0/24".parse()?,
        ipam_dir: d.join("ipam"),
    };
    let rt = ContainerdRuntime::new(client, cni, d.join("netns"), d.join("exec"));
    let mut cfg = KubeletConfig::new(d.join("kubelet"), "bench", "127.0.0.1");
    cfg.cgroup_parent = "/kimg-bench".into();
    let kubelet = Arc::new(Kubelet::new(Arc::new(rt), cfg));
    let begin = Instant::now();
    let mut waits = Vec::new();
    for i in 0..pods {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(format!("bench-{i}")),
                uid: Some(format!("bench-{i}")),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "main".into(),
                    image: Some(IMAGE.into()),
                    command: Some(vec!["/bin/sleep".into(), "3600".into()]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let k = kubelet.clone();
        waits.push(tokio::spawn(async move {
            let t = Instant::now();
            let uid = k
                .run_pod(pod, ResolvedData::default())
                .map_err(|e| e.to_string())?;
            loop {
                match k.record(&uid) {
                    Some(r)
                        if r.containers
                            .iter()
                            .all(|c| matches!(c.state, ContainerState::Running { .. })) =>
                    {
                        return Ok::<_, String>((uid, t.elapsed()))
                    }
                    Some(r) if r.state.is_final() => {
                        return Err(format!("{uid} ended: {:?}", r.state))
                    }
                    _ => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        }));
    }
    let mut lat = Vec::new();
    let mut uids = Vec::new();
    for w in waits {
        let (uid, d) = w.await?.map_err(|e| anyhow::anyhow!(e))?;
        lat.push(d);
        uids.push(uid);
    }
    let all = begin.elapsed();
    lat.sort();
    let pct =
        |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1].as_millis();
    let del = Instant::now();
    for uid in &uids {
        kubelet
            .delete_pod(uid, Some(Duration::from_secs(1)))
            .await?;
    }
    println!(
        "{{\"bench\":\"pod_start\",\"pods\":{pods},\"p50_ms\":{},\"p99_ms\":{},\"max_ms\":{},\"all_running_ms\":{},\"delete_all_ms\":{}}}",
        pct(0.50),
        pct(0.99),
        lat.last().map(|d| d.as_millis()).unwrap_or_default(),
        all.as_millis(),
        del.elapsed().as_millis()
    );
    Ok(())
}
