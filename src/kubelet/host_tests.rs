//! Host-level tests: a real containerd (Debian's `/usr/bin/containerd`, runc v2 shim,
//! overlayfs) started per test in temp dirs, CNI plugins from `/usr/lib/cni`, a bridge
//! and a 10.250.x.0/24 subnet unique per test. Everything stays on this host.
//! Needs root, `containerd`, `runc`, `containernetworking-plugins` and `busybox-static`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction,
    HTTPGetAction, Pod, PodSpec, Probe, SecretKeySelector, SecretVolumeSource, TCPSocketAction,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::cni::CniNetwork;
use super::private_containerd::PrivateContainerd;
use super::*;

/// A containerd of our own (stopped on drop, with its containers), with its bridge and
/// cgroups removed.
struct Host {
    dir: tempfile::TempDir,
    containerd: PrivateContainerd,
    bridge: String,
    kubelet: Kubelet,
    client: Containerd,
    cni: CniNetwork,
}

impl Drop for Host {
    fn drop(&mut self) {
        // A failed test leaves containers running: stop them with containerd first.
        self.containerd.stop();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
        let parent = self.kubelet.cfg.cgroup_parent.trim_matches('/').to_string();
        for e in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            remove_cgroup_tree(&e.path().join(&parent));
        }
    }
}

/// Removes a cgroup directory tree (no processes left in it), children first.
fn remove_cgroup_tree(dir: &std::path::Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_cgroup_tree(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

async fn start_host(n: u8, backoff: Backoff) -> Host {
    let dir = tempfile::Builder::new()
        .prefix("kt")
        .tempdir_in("/tmp")
        .unwrap();
    let d = dir.path();
    let containerd = PrivateContainerd::start(d)
        .expect("containerd is installed (apt-get install containerd runc)");
    let sock = containerd.socket();
    let bridge = format!("kt{}x{n}", std::process::id() % 100_000);
    let mut client = None;
    for _ in 0..200 {
        if sock.exists() {
            if let Ok(c) = Containerd::connect(&sock, "k8s.io").await {
                let c = c.with_runc_root(&containerd.runc_root());
                if c.container_ids().await.is_ok() {
                    client = Some(c);
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client =
        client.unwrap_or_else(|| panic!("containerd did not come up: {}", containerd.log()));
    let cni = CniNetwork {
        bin_dir: PathBuf::from("/usr/lib/cni"),
        bridge: bridge.clone(),
        pod_cidr: format!("10.250.{n}.0/24").parse().unwrap(),
        ipam_dir: d.join("ipam"),
    };
    let rt = ContainerdRuntime::new(client.clone(), cni.clone(), d.join("netns"), d.join("exec"));
    let mut cfg = KubeletConfig::new(d.join("kubelet"), "node-1", "127.0.0.1");
    cfg.resolv_conf =
        "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local\n".into();
    cfg.cgroup_parent = format!("/kimg-test-{}-{n}", std::process::id());
    cfg.backoff = backoff;
    let host = Host {
        kubelet: Kubelet::new(Arc::new(rt), cfg),
        client,
        dir,
        containerd,
        bridge,
        cni,
    };
    host.import_busybox().await;
    host
}

const IMAGE: &str = "kimg.local/busybox:latest";

impl Host {
    /// Imports an image made from the host's busybox-static (the same Debian package
    /// `kimg oci build --package busybox-static` packs) through the OCI writer.
    async fn import_busybox(&self) {
        let mut tree = crate::build::tree::Tree::new();
        tree.insert_file(
            "bin/busybox",
            0o755,
            std::fs::read("/bin/busybox").expect("busybox-static is installed"),
        );
        crate::oci::add_busybox_links(&mut tree);
        crate::oci::packages::add_base(&mut tree);
        let image = crate::oci::write_archive(
            &tree,
            &crate::oci::ImageConfig {
                name: IMAGE.into(),
                entrypoint: vec!["/bin/busybox".into()],
                cmd: vec!["sh".into()],
                env: vec!["PATH=/bin".into()],
                working_dir: "/".into(),
                epoch: 1_700_000_000,
            },
        )
        .unwrap();
        let info = self.client.import(&image.archive, None).await.unwrap();
        assert_eq!(info.name, IMAGE);
        // A second import is a no-op that yields the same image.
        assert_eq!(
            self.client.import(&image.archive, None).await.unwrap(),
            info
        );
        assert_eq!(self.client.image(IMAGE).await.unwrap(), info);
    }

    async fn until(
        &self,
        uid: &str,
        what: &str,
        secs: u64,
        f: impl Fn(&PodRecord) -> bool,
    ) -> PodRecord {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let r = self.kubelet.record(uid);
            if let Some(r) = &r {
                if f(r) {
                    return r.clone();
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}: {r:#?}\ncontainerd log:\n{}",
                    std::fs::read_to_string(self.dir.path().join("containerd.log"))
                        .unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn netns_dir(&self) -> PathBuf {
        self.dir.path().join("netns")
    }

    fn runtime(&self) -> ContainerdRuntime {
        let d = self.dir.path();
        ContainerdRuntime::new(
            self.client.clone(),
            self.cni.clone(),
            d.join("netns"),
            d.join("exec"),
        )
    }

    /// The kubelet process dies (its pods are forgotten, their containers run on) and a
    /// new one starts: it clears what the API no longer runs here (`keep` is what it does),
    /// then takes the kept pods as the sync loop hands them over.
    async fn restart_kubelet(&mut self, keep: &[&str]) {
        self.kubelet.abandon();
        let cfg = self.kubelet.cfg.clone();
        let keep = keep.iter().map(|s| s.to_string()).collect();
        super::agent::clear_previous_run(&self.runtime(), &cfg.root_dir, &cfg.cgroup_parent, &keep)
            .await;
        self.kubelet = Kubelet::new(Arc::new(self.runtime()), cfg);
    }
}

fn sh(name: &str, script: &str) -> Container {
    Container {
        name: name.into(),
        image: Some(IMAGE.into()),
        command: Some(vec!["/bin/sh".into(), "-c".into(), script.into()]),
        ..Default::default()
    }
}

fn pod(uid: &str, policy: &str, containers: Vec<Container>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("pod-{uid}")),
            namespace: Some("default".into()),
            uid: Some(uid.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some(policy.into()),
            containers,
            termination_grace_period_seconds: Some(2),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn running(r: &PodRecord) -> bool {
    r.containers
        .iter()
        .all(|c| matches!(c.state, ContainerState::Running { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busybox_pod_echoes_hello_into_its_log_needs_root_and_containerd() {
    let h = start_host(11, Backoff::default()).await;
    let uid = h
        .kubelet
        .run_pod(
            pod(
                "hello-1",
                "Never",
                vec![sh("main", "echo hello; hostname; cat /etc/resolv.conf")],
            ),
            ResolvedData::default(),
        )
        .unwrap();
    let r = h.until(&uid, "Succeeded", 60, |r| r.state.is_final()).await;
    assert_eq!(r.state, PodState::Succeeded, "{r:#?}");
    let ip: std::net::Ipv4Addr = r.pod_ip.clone().unwrap().parse().unwrap();
    assert_eq!(ip.octets()[..3], [10, 250, 11]);
    let log = std::fs::read_to_string(h.kubelet.log_path(&uid, "main")).unwrap();
    assert!(log.starts_with("hello\npod-hello-1\n"), "{log:?}");
    assert!(log.contains("nameserver 10.96.0.10"), "{log:?}");
    let status = h.kubelet.status(&uid).unwrap();
    assert_eq!(status.phase.as_deref(), Some("Succeeded"));
    h.kubelet.delete_pod(&uid, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_liveness_probe_restarts_the_container_and_http_and_tcp_probes_reach_the_pod_needs_root_and_containerd(
) {
    let h = start_host(
        12,
        Backoff {
            initial: Duration::from_millis(100),
            ..Backoff::default()
        },
    )
    .await;
    let mut sick = sh("sick", "sleep 3600");
    sick.liveness_probe = Some(Probe {
        exec: Some(ExecAction {
            command: Some(vec!["test".into(), "-f".into(), "/tmp/healthy".into()]),
        }),
        period_seconds: Some(1),
        failure_threshold: Some(2),
        ..Default::default()
    });
    let mut web = sh(
        "web",
        "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www",
    );
    web.readiness_probe = Some(Probe {
        http_get: Some(HTTPGetAction {
            port: IntOrString::Int(8080),
            path: Some("/index.html".into()),
            ..Default::default()
        }),
        period_seconds: Some(1),
        ..Default::default()
    });
    web.liveness_probe = Some(Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(8080),
            host: None,
        }),
        period_seconds: Some(1),
        ..Default::default()
    });
    let uid = h
        .kubelet
        .run_pod(
            pod("live-1", "Always", vec![sick, web]),
            ResolvedData::default(),
        )
        .unwrap();
    let r = h
        .until(&uid, "a liveness restart", 60, |r| {
            r.containers[0].restart_count >= 1
        })
        .await;
    assert!(
        matches!(
            r.containers[0].last_state,
            Some(ContainerState::Terminated { exit_code: 137, .. })
        ),
        "{r:#?}"
    );
    let r = h
        .until(&uid, "web ready", 60, |r| r.containers[1].ready)
        .await;
    assert_eq!(
        r.containers[1].restart_count, 0,
        "tcp liveness keeps passing"
    );
    let cs = h.kubelet.status(&uid).unwrap().container_statuses.unwrap();
    assert!(cs[0].restart_count >= 1);
    h.kubelet
        .delete_pod(&uid, Some(Duration::from_secs(1)))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_container_reaches_crashloopbackoff_with_growing_backoff_needs_root_and_containerd(
) {
    let h = start_host(
        13,
        Backoff {
            initial: Duration::from_millis(300),
            max: Duration::from_secs(5),
            reset_after: Duration::from_secs(600),
        },
    )
    .await;
    let uid = h
        .kubelet
        .run_pod(
            pod("crash-1", "Always", vec![sh("main", "echo boom; exit 1")]),
            ResolvedData::default(),
        )
        .unwrap();
    let r = h
        .until(&uid, "CrashLoopBackOff", 60, |r| {
            matches!(r.state, PodState::CrashLoopBackOff { .. })
                && r.containers[0].backoffs.len() >= 3
        })
        .await;
    let b = &r.containers[0].backoffs;
    assert!(b.windows(2).all(|w| w[1] > w[0]), "{b:?}");
    // Read the status from the same snapshot the wait saw (the pod keeps restarting).
    let status = status::pod_status(&r, "127.0.0.1");
    let cs = &status.container_statuses.unwrap()[0];
    assert_eq!(
        cs.state
            .as_ref()
            .unwrap()
            .waiting
            .as_ref()
            .unwrap()
            .reason
            .as_deref(),
        Some("CrashLoopBackOff")
    );
    assert_eq!(
        cs.last_state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        1
    );
    assert!(cs.restart_count >= 2);
    let log = std::fs::read_to_string(h.kubelet.log_path(&uid, "main")).unwrap();
    assert!(log.matches("boom").count() >= 3, "{log}");
    h.kubelet
        .delete_pod(&uid, Some(Duration::from_secs(1)))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_env_and_exec_work_inside_the_container_needs_root_and_containerd() {
    let h = start_host(14, Backoff::default()).await;
    let mut main = sh("main", "sleep 3600");
    main.volume_mounts = Some(vec![
        VolumeMount {
            name: "cfg".into(),
            mount_path: "/etc/cfg".into(),
            ..Default::default()
        },
        VolumeMount {
            name: "sec".into(),
            mount_path: "/etc/sec".into(),
            ..Default::default()
        },
        VolumeMount {
            name: "scratch".into(),
            mount_path: "/scratch".into(),
            ..Default::default()
        },
    ]);
    main.env = Some(vec![EnvVar {
        name: "PASSWORD".into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: "db".into(),
                key: "pw".into(),
                optional: None,
            }),
            ..Default::default()
        }),
    }]);
    let mut init = sh("init", "echo from-init > /scratch/note");
    init.volume_mounts = Some(vec![VolumeMount {
        name: "scratch".into(),
        mount_path: "/scratch".into(),
        ..Default::default()
    }]);
    let mut p = pod("vol-1", "Always", vec![main]);
    let spec = p.spec.as_mut().unwrap();
    spec.init_containers = Some(vec![init]);
    spec.volumes = Some(vec![
        Volume {
            name: "cfg".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "app".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "sec".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some("db".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ]);
    let mut data = ResolvedData::default();
    data.config_maps.insert(
        "app".into(),
        [("greeting".to_string(), "hello".to_string())].into(),
    );
    data.secrets
        .insert("db".into(), [("pw".to_string(), b"s3cret".to_vec())].into());
    let uid = h.kubelet.run_pod(p, data).unwrap();
    h.until(&uid, "running", 60, running).await;
    let exec = |cmd: &str| {
        let cmd = vec!["/bin/sh".to_string(), "-c".to_string(), cmd.to_string()];
        let k = &h.kubelet;
        let uid = uid.clone();
        async move {
            k.exec(&uid, "main", &cmd, Duration::from_secs(10))
                .await
                .unwrap()
        }
    };
    let out = exec("cat /etc/cfg/greeting /etc/sec/pw /scratch/note; echo $PASSWORD").await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hellos3cretfrom-init\ns3cret\n"
    );
    assert_eq!(out.exit_code, 0);
    let out = exec("echo out; echo err >&2; exit 3").await;
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice(), out.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 3)
    );
    let out = exec("touch /etc/cfg/x 2>/dev/null && echo writable || echo read-only").await;
    assert_eq!(out.stdout, b"read-only\n");
    // The secret lives in memory, never on the node's disk; the ConfigMap does not need to.
    let out =
        exec("awk '$2 == \"/etc/sec\" || $2 == \"/etc/cfg\" { print $2, $3 }' /proc/mounts").await;
    let mounts = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(mounts.contains("/etc/sec tmpfs"), "{mounts}");
    assert!(!mounts.contains("/etc/cfg tmpfs"), "{mounts}");
    h.kubelet
        .delete_pod(&uid, Some(Duration::from_secs(1)))
        .await
        .unwrap();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(&uid),
        "the pod's tmpfs is unmounted: {mountinfo}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pod_leaves_no_container_task_snapshot_or_netns_behind_needs_root_and_containerd(
) {
    let h = start_host(15, Backoff::default()).await;
    let before = h.client.snapshot_keys().await.unwrap();
    // `trap` makes the shell exit on SIGTERM; the second container ignores it (PID 1).
    let uid = h
        .kubelet
        .run_pod(
            pod(
                "del-1",
                "Always",
                vec![
                    sh("polite", "trap 'exit 0' TERM; while true; do sleep 1; done"),
                    sh("stubborn", "exec sleep 3600"),
                ],
            ),
            ResolvedData::default(),
        )
        .unwrap();
    h.until(&uid, "running", 60, running).await;
    assert!(h.netns_dir().join(&uid).exists());
    assert_eq!(h.client.task_ids().await.unwrap().len(), 2);
    let started = Instant::now();
    h.kubelet
        .delete_pod(&uid, Some(Duration::from_secs(2)))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the stubborn container needed SIGKILL after the grace period"
    );
    assert!(h.client.container_ids().await.unwrap().is_empty());
    assert!(h.client.task_ids().await.unwrap().is_empty());
    assert_eq!(h.client.snapshot_keys().await.unwrap(), before);
    assert!(!h.netns_dir().join(&uid).exists());
    assert!(!h.dir.path().join("kubelet/pods").join(&uid).exists());
    assert!(!h.kubelet.log_path(&uid, "polite").exists());
    assert!(h.kubelet.status(&uid).is_none());
    let pod_cgroup = format!("{}/pod{uid}", h.kubelet.cfg.cgroup_parent.trim_matches('/'));
    for e in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        assert!(
            !e.path().join(&pod_cgroup).exists(),
            "{}",
            e.path().display()
        );
    }
}

/// A kubelet restart loses nothing: the kept pod's container goes on as the same process
/// (its emptyDir and log untouched, no restart counted, exec works with its environment);
/// a pod the API no longer runs here is removed with its network namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_kubelet_adopts_running_containers_and_clears_the_rest_needs_root_and_containerd(
) {
    let mut h = start_host(16, Backoff::default()).await;
    let mut main = sh(
        "main",
        "echo started >> /data/starts; echo started; exec sleep 3600",
    );
    main.env = Some(vec![EnvVar {
        name: "GREETING".into(),
        value: Some("hi".into()),
        value_from: None,
    }]);
    main.volume_mounts = Some(vec![VolumeMount {
        name: "data".into(),
        mount_path: "/data".into(),
        ..Default::default()
    }]);
    let mut kept = pod("keep-1", "Always", vec![main]);
    kept.spec.as_mut().unwrap().volumes = Some(vec![Volume {
        name: "data".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }]);
    let gone = pod("gone-1", "Always", vec![sh("main", "exec sleep 3600")]);
    for p in [kept.clone(), gone] {
        h.kubelet.run_pod(p, ResolvedData::default()).unwrap();
    }
    let before = h.until("keep-1", "keep-1 running", 60, running).await;
    h.until("gone-1", "gone-1 running", 60, running).await;

    h.restart_kubelet(&["keep-1"]).await;
    let ids = h.client.container_ids().await.unwrap();
    assert!(ids.iter().any(|i| i.starts_with("keep-1")), "{ids:?}");
    assert!(!ids.iter().any(|i| i.starts_with("gone-1")), "{ids:?}");
    assert!(h.netns_dir().join("keep-1").exists());
    assert!(!h.netns_dir().join("gone-1").exists());

    h.kubelet.run_pod(kept, ResolvedData::default()).unwrap();
    let after = h.until("keep-1", "keep-1 adopted", 60, running).await;
    assert_eq!(after.containers[0].restart_count, 0);
    assert_eq!(after.pod_ip, before.pod_ip);
    assert_eq!(
        after.containers[0].state, before.containers[0].state,
        "the same start time: the same task"
    );
    let out = h
        .kubelet
        .exec(
            "keep-1",
            "main",
            &[
                "/bin/sh".into(),
                "-c".into(),
                "cat /data/starts; echo $GREETING".into(),
            ],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "started\nhi\n");
    let log = std::fs::read_to_string(h.kubelet.log_path("keep-1", "main")).unwrap();
    assert_eq!(log, "started\n");
    h.kubelet.delete_pod("keep-1", None).await.unwrap();
}
