//! The scheduler and controller-manager inside `kimg up`, with simulated nodes
//! (`kimg sim nodes`), driven by the real `kubectl` (the one on PATH): placement, scaling,
//! rollouts,
//! DaemonSets, Jobs, CronJobs, cascading deletion, node failure and leader election, on the
//! memory store and on a local etcd, and a bootstrap-token CSR checked with `openssl`.
//! Needs the `kubectl`, `etcd-server` and `openssl` packages.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{free_port, kimg_ok, wait_for};
use serde_json::Value;

/// `kimg up` plus the `kimg sim nodes` fleets and extra processes started for a test.
struct Env {
    up: Child,
    others: Vec<Child>,
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    kubeconfig: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        for c in self.others.iter_mut().chain(std::iter::once(&mut self.up)) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn kimg(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kimg"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn kimg")
}

impl Env {
    fn start(store: &str, extra: &[&str]) -> Env {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("dev");
        kimg_ok(
            tmp.path(),
            &["cluster", "new", dir.to_str().expect("utf-8")],
        );
        let listen = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            "up",
            dir.to_str().expect("utf-8"),
            "--listen",
            &listen,
            "--store",
            store,
        ];
        args.extend_from_slice(extra);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kimg"));
        cmd.args(&args);
        let (up, kubeconfig) = common::start_up(cmd);
        Env {
            up,
            others: Vec::new(),
            _tmp: tmp,
            dir,
            kubeconfig,
        }
    }

    fn pause_dir(&self) -> PathBuf {
        let p = self.dir.join("pause");
        std::fs::create_dir_all(&p).expect("pause dir");
        p
    }

    /// Starts a fleet of simulated nodes and waits until they are Ready.
    fn sim(&mut self, count: usize, prefix: &str, extra: &[&str]) {
        let n = count.to_string();
        let pause = self.pause_dir();
        let kc = self.kubeconfig.to_str().expect("utf-8").to_string();
        let mut args = vec![
            "sim",
            "nodes",
            "--count",
            &n,
            "--prefix",
            prefix,
            "--kubeconfig",
            &kc,
            "--pause-dir",
            pause.to_str().expect("utf-8"),
            "--heartbeat",
            "1s",
        ];
        args.extend_from_slice(extra);
        self.others.push(kimg(&args));
        wait_for(60, "simulated nodes to be Ready", || {
            let nodes = self.json(&["get", "nodes"]);
            let ready = nodes["items"]
                .as_array()?
                .iter()
                .filter(|n| {
                    n["metadata"]["name"]
                        .as_str()
                        .is_some_and(|s| s.starts_with(prefix))
                        && n["status"]["conditions"].as_array().is_some_and(|c| {
                            c.iter()
                                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                        })
                })
                .count();
            (ready == count).then_some(())
        });
    }

    fn kubectl(&self, args: &[&str]) -> std::process::Output {
        common::kubectl(&self.kubeconfig, args)
    }

    fn ok(&self, args: &[&str]) -> String {
        common::kubectl_ok(&self.kubeconfig, args)
    }

    fn json(&self, args: &[&str]) -> Value {
        common::kubectl_json(&self.kubeconfig, args)
    }

    fn apply(&self, yaml: &str) {
        let path = self.dir.join(format!("manifest-{}.yaml", rand_suffix()));
        std::fs::write(&path, yaml).expect("write manifest");
        self.ok(&["apply", "-f", path.to_str().expect("utf-8")]);
    }

    /// Pods matching `selector`: (name, node, phase, ready, image).
    fn pods(&self, selector: &str) -> Vec<(String, String, String, bool, String)> {
        let v = self.json(&["get", "pods", "-l", selector]);
        v["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|p| {
                let ready = p["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
                (
                    p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    p["spec"]["nodeName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    p["status"]["phase"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    ready && p["metadata"]["deletionTimestamp"].is_null(),
                    p["spec"]["containers"][0]["image"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
    }

    fn running(&self, selector: &str, n: usize) -> Vec<(String, String, String, bool, String)> {
        wait_for(90, &format!("{n} ready pods with {selector}"), || {
            let pods = self.pods(selector);
            (pods.len() == n && pods.iter().all(|p| p.2 == "Running" && p.3)).then_some(pods)
        })
    }
}

fn rand_suffix() -> u64 {
    use std::time::SystemTime;
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn deployments_and_placements(env: &mut Env) {
    env.sim(3, "node-", &[]);
    // Replicas spread over the nodes.
    env.ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1.0",
        "--replicas=3",
    ]);
    let pods = env.running("app=web", 3);
    let mut nodes: Vec<_> = pods.iter().map(|p| p.1.clone()).collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 3, "one replica per node: {pods:?}");
    // kubectl scale.
    env.ok(&["scale", "deployment/web", "--replicas=5"]);
    env.running("app=web", 5);
    // A rolling update never drops below replicas − maxUnavailable ready pods.
    env.ok(&["patch", "deployment/web", "-p",
        r#"{"spec":{"strategy":{"type":"RollingUpdate","rollingUpdate":{"maxUnavailable":1,"maxSurge":1}}}}"#]);
    env.ok(&["set", "image", "deployment/web", "nginx=nginx:2.0"]);
    let mut min_ready = usize::MAX;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pods = env.pods("app=web");
        min_ready = min_ready.min(pods.iter().filter(|p| p.3).count());
        if pods.len() == 5 && pods.iter().all(|p| p.3 && p.4 == "nginx:2.0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rollout did not finish: {pods:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        min_ready >= 4,
        "at most maxUnavailable=1 pod down during the rollout, saw {min_ready} ready"
    );
    let status = env.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    let history = env.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");
    env.ok(&["rollout", "undo", "deployment/web"]);
    wait_for(90, "undo to restore nginx:1.0", || {
        let pods = env.pods("app=web");
        (pods.len() == 5 && pods.iter().all(|p| p.3 && p.4 == "nginx:1.0")).then_some(())
    });
    // Placement: nodeName, nodeSelector, taints and tolerations.
    env.ok(&["label", "node", "node-1", "disk=ssd"]);
    env.ok(&["taint", "node", "node-2", "dedicated=gpu:NoSchedule"]);
    env.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: pinned, labels: {t: pinned}}
spec: {nodeName: node-0, containers: [{name: c, image: busybox}]}
---
apiVersion: v1
kind: Pod
metadata: {name: ssd, labels: {t: ssd}}
spec: {nodeSelector: {disk: ssd}, containers: [{name: c, image: busybox}]}
---
apiVersion: v1
kind: Pod
metadata: {name: gpu, labels: {t: gpu}}
spec:
  nodeSelector: {kubernetes.io/hostname: node-2}
  tolerations: [{key: dedicated, operator: Equal, value: gpu, effect: NoSchedule}]
  containers: [{name: c, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata: {name: untolerated, labels: {t: untolerated}}
spec:
  nodeSelector: {kubernetes.io/hostname: node-2}
  containers: [{name: c, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata: {name: huge, labels: {t: huge}}
spec: {containers: [{name: c, image: busybox, resources: {requests: {cpu: "64"}}}]}
"#,
    );
    for (sel, node) in [
        ("t=pinned", "node-0"),
        ("t=ssd", "node-1"),
        ("t=gpu", "node-2"),
    ] {
        let pods = env.running(sel, 1);
        assert_eq!(pods[0].1, node, "{sel}");
    }
    for (pod, reason) in [
        ("huge", "Insufficient cpu"),
        ("untolerated", "untolerated taint"),
    ] {
        let text = wait_for(60, "a FailedScheduling event", || {
            let d = env.ok(&["describe", "pod", pod]);
            (d.contains("FailedScheduling") && d.contains(reason)).then_some(d)
        });
        assert!(text.contains("Pending"), "{text}");
        assert!(text.contains("0/3 nodes are available"), "{text}");
        let p = env.json(&["get", "pod", pod]);
        assert_eq!(p["status"]["conditions"][0]["reason"], "Unschedulable");
    }
    // Deleting the Deployment removes its ReplicaSets and pods.
    env.ok(&["delete", "deployment", "web"]);
    wait_for(60, "ReplicaSets and pods of web to go", || {
        let rs = env.json(&["get", "rs"]);
        let pods = env.pods("app=web");
        (rs["items"].as_array().is_some_and(|a| a.is_empty()) && pods.is_empty()).then_some(())
    });
}

fn daemonsets_jobs_and_cronjobs(env: &mut Env) {
    env.sim(
        1,
        "master-",
        &[
            "--taint",
            "node-role.kubernetes.io/control-plane:NoSchedule",
            "--label",
            "node-role.kubernetes.io/control-plane=",
        ],
    );
    env.sim(2, "worker-", &[]);
    env.apply(
        r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {containers: [{name: c, image: agent:1}]}
"#,
    );
    let pods = env.running("app=agent", 2);
    assert!(
        pods.iter().all(|p| p.1.starts_with("worker-")),
        "the tainted master is skipped: {pods:?}"
    );
    env.sim(1, "late-", &[]);
    let pods = env.running("app=agent", 3);
    assert!(
        pods.iter().any(|p| p.1 == "late-0"),
        "a node added later gets its pod: {pods:?}"
    );
    // A Job completes.
    env.ok(&["create", "job", "once", "--image=busybox", "--", "true"]);
    env.ok(&[
        "wait",
        "--for=condition=complete",
        "job/once",
        "--timeout=60s",
    ]);
    let job = env.json(&["get", "job", "once"]);
    assert_eq!(job["status"]["succeeded"], 1);
    // A CronJob creates Jobs and keeps 3 (a seconds field is kimg's extension for tests).
    env.apply(
        r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "*/2 * * * * *"
  successfulJobsHistoryLimit: 3
  jobTemplate:
    spec:
      template:
        spec: {restartPolicy: Never, containers: [{name: c, image: busybox}]}
"#,
    );
    let mut seen = std::collections::HashSet::new();
    wait_for(90, "the CronJob to have run more than 3 Jobs", || {
        let jobs = env.json(&["get", "jobs"]);
        for j in jobs["items"].as_array()? {
            let name = j["metadata"]["name"].as_str()?.to_string();
            if name.starts_with("tick-") {
                seen.insert(name);
            }
        }
        (seen.len() >= 5).then_some(())
    });
    wait_for(30, "the history to be trimmed to 3 finished Jobs", || {
        let jobs = env.json(&["get", "jobs"]);
        let done = jobs["items"]
            .as_array()?
            .iter()
            .filter(|j| {
                j["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("tick-"))
                    && j["status"]["conditions"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["type"] == "Complete"))
            })
            .count();
        (done == 3).then_some(())
    });
}

#[test]
fn kubectl_workloads_on_simulated_nodes_with_kimg_up_on_the_memory_store() {
    let mut env = Env::start("memory", &[]);
    deployments_and_placements(&mut env);
    let mut env = Env::start("memory", &[]);
    daemonsets_jobs_and_cronjobs(&mut env);
}

#[test]
fn kubectl_workloads_on_simulated_nodes_with_kimg_up_on_a_local_etcd_binary() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let etcd = rt
        .block_on(kimg::store::LocalEtcd::start())
        .expect("start etcd (etcd-server package)");
    let url = format!("etcd={}", etcd.config().endpoints[0]);
    let mut env = Env::start(&url, &[]);
    deployments_and_placements(&mut env);
    drop(env);
    // A fresh etcd: the first cluster's nodes would otherwise still be registered.
    let etcd2 = rt
        .block_on(kimg::store::LocalEtcd::start())
        .expect("start etcd");
    let url2 = format!("etcd={}", etcd2.config().endpoints[0]);
    let mut env = Env::start(&url2, &[]);
    daemonsets_jobs_and_cronjobs(&mut env);
    drop(env);
    drop(etcd2);
    drop(etcd);
}

/// Node lifecycle timers shortened so a silent node is noticed in seconds.
const FAST_NODE_MONITOR: [&str; 4] = [
    "--node-monitor-grace-period",
    "4s",
    "--node-monitor-period",
    "1s",
];

#[test]
fn a_silent_node_goes_not_ready_and_its_pods_move_with_kimg_up_on_the_memory_store() {
    let mut env = Env::start("memory", &FAST_NODE_MONITOR);
    silent_node(&mut env);
}

#[test]
fn a_silent_node_goes_not_ready_and_its_pods_move_with_kimg_up_on_a_local_etcd_binary() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let etcd = rt
        .block_on(kimg::store::LocalEtcd::start())
        .expect("start etcd (etcd-server package)");
    let url = format!("etcd={}", etcd.config().endpoints[0]);
    let mut env = Env::start(&url, &FAST_NODE_MONITOR);
    silent_node(&mut env);
    drop(env);
}

fn silent_node(env: &mut Env) {
    env.sim(3, "n-", &[]);
    env.ok(&[
        "create",
        "deployment",
        "app",
        "--image=app:1",
        "--replicas=3",
    ]);
    let pods = env.running("app=app", 3);
    let victim = pods[0].1.clone();
    std::fs::write(env.pause_dir().join(&victim), b"").expect("pause file");
    wait_for(60, "the silent node to become NotReady", || {
        let out = env.ok(&["get", "node", &victim]);
        out.contains("NotReady").then_some(())
    });
    let node = env.json(&["get", "node", &victim]);
    let taints = node["spec"]["taints"].to_string();
    assert!(
        taints.contains("node.kubernetes.io/unreachable"),
        "{taints}"
    );
    let pods = wait_for(90, "pods to be recreated on the other nodes", || {
        let pods = env.pods("app=app");
        let live: Vec<_> = pods
            .into_iter()
            .filter(|p| p.3 && p.2 == "Running")
            .collect();
        (live.len() == 3 && live.iter().all(|p| p.1 != victim)).then_some(live)
    });
    assert!(pods.iter().all(|p| p.1 != victim));
}

fn lease_holder(env: &Env) -> Option<String> {
    let out = env.kubectl(&[
        "-n",
        "kube-system",
        "get",
        "lease",
        "kube-scheduler",
        "-o",
        "json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["spec"]["holderIdentity"].as_str().map(str::to_string)
}

/// The PID in a Lease holder's identity (`<host>_<pid>_<random>`) and the index of that
/// process among the test's own.
fn leader_process(env: &Env, holder: &str) -> (u32, usize) {
    let pid: u32 = holder
        .split('_')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("pid in identity");
    let idx = env
        .others
        .iter()
        .position(|c| c.id() == pid)
        .expect("the leader is one of ours");
    (pid, idx)
}

#[test]
fn killing_the_leading_scheduler_hands_leadership_over_within_one_lease() {
    let mut env = Env::start("memory", &["--no-scheduler"]);
    env.sim(1, "n-", &[]);
    let kc = env.kubeconfig.to_str().expect("utf-8").to_string();
    let flags = [
        "--leader-elect-lease-duration",
        "4s",
        "--leader-elect-renew-deadline",
        "3s",
        "--leader-elect-retry-period",
        "500ms",
    ];
    for _ in 0..2 {
        let mut args = vec!["scheduler", "--kubeconfig", kc.as_str()];
        args.extend_from_slice(&flags);
        env.others.push(kimg(&args));
    }
    let first = wait_for(30, "a scheduler to lead", || lease_holder(&env));
    // Identities are <host>_<pid>_<random>: kill the leading process.
    let (pid, idx) = leader_process(&env, &first);
    let _ = env.others[idx].kill();
    let killed = Instant::now();
    let _ = env.others[idx].wait();
    let next = wait_for(30, "another scheduler to take over", || {
        lease_holder(&env).filter(|h| *h != first)
    });
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(4) + Duration::from_millis(1500),
        "handover took {took:?} (lease 4 s)"
    );
    assert_ne!(next.split('_').nth(1), Some(pid.to_string().as_str()));
    // The new leader schedules.
    env.ok(&["run", "probe", "--image=busybox"]);
    let pods = env.running("run=probe", 1);
    assert_eq!(pods[0].1, "n-0");
}

/// A leader stopped with SIGTERM releases its Lease (empty holder), so the other candidate
/// takes over at its next try instead of after the 15 s lease duration.
#[test]
fn a_scheduler_stopped_with_sigterm_releases_its_lease_for_the_next_candidate() {
    let mut env = Env::start("memory", &["--no-scheduler"]);
    let kc = env.kubeconfig.to_str().expect("utf-8").to_string();
    for _ in 0..2 {
        env.others.push(kimg(&[
            "scheduler",
            "--kubeconfig",
            kc.as_str(),
            "--leader-elect-retry-period",
            "500ms",
        ]));
    }
    let first = wait_for(30, "a scheduler to lead", || lease_holder(&env));
    let (pid, idx) = leader_process(&env, &first);
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = env.others[idx].wait().expect("wait");
    assert!(exit.success(), "SIGTERM is a clean stop: {exit:?}");
    // Without the release this cannot happen before the 15 s lease duration has passed.
    let next = wait_for(10, "the other scheduler to take the released lease", || {
        lease_holder(&env).filter(|h| !h.is_empty() && *h != first)
    });
    assert_ne!(next.split('_').nth(1), Some(pid.to_string().as_str()));
}

#[test]
fn a_bootstrap_token_csr_is_approved_and_signed_by_the_cluster_ca_checked_with_openssl() {
    let env = Env::start("memory", &[]);
    let tokens = std::fs::read_to_string(env.dir.join("secrets/tokens.toml")).expect("tokens.toml");
    let field = |k: &str| {
        tokens.lines().find_map(|l| {
            l.strip_prefix(&format!("{k} = \""))?
                .strip_suffix('"')
                .map(str::to_string)
        })
    };
    let token = format!(
        "{}.{}",
        field("id").expect("token id"),
        field("secret").expect("token secret")
    );
    let (key, req) = (env.dir.join("w1.key"), env.dir.join("w1.csr"));
    let b64 = new_csr(&key, &req, "/O=system:nodes/CN=system:node:w1");
    let manifest = env.dir.join("csr.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\n\
        metadata: {{name: node-csr-w1}}\nspec:\n  request: {b64}\n  \
        signerName: kubernetes.io/kube-apiserver-client-kubelet\n  \
        usages: [digital signature, key encipherment, client auth]\n"
        ),
    )
    .expect("write");
    let kc: Value = {
        let text = std::fs::read_to_string(&env.kubeconfig).expect("kubeconfig");
        serde_yaml::from_str(&text).expect("yaml")
    };
    let server = kc["clusters"][0]["cluster"]["server"]
        .as_str()
        .expect("server")
        .to_string();
    let ca = env.dir.join("secrets/pki/ca.crt");
    let out = Command::new("kubectl")
        .args([
            "--kubeconfig",
            "/dev/null",
            "--server",
            &server,
            "--certificate-authority",
            ca.to_str().expect("utf-8"),
            "--token",
            &token,
            "create",
            "-f",
            manifest.to_str().expect("utf-8"),
        ])
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cert_b64 = wait_for(30, "the CSR to be approved and signed", || {
        let v = env.json(&["get", "csr", "node-csr-w1"]);
        let approved = v["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Approved");
        let cert = v["status"]["certificate"].as_str()?.to_string();
        approved.then_some(cert)
    });
    let pem = base64::engine::general_purpose::STANDARD
        .decode(cert_b64)
        .expect("base64");
    let crt = env.dir.join("w1.crt");
    std::fs::write(&crt, pem).expect("write cert");
    let verify = common::tool_ok(
        "openssl",
        &[
            "verify",
            "-CAfile",
            ca.to_str().expect("utf-8"),
            crt.to_str().expect("utf-8"),
        ],
    );
    assert!(verify.contains(": OK"), "{verify}");
    let text = common::tool_ok(
        "openssl",
        &[
            "x509",
            "-in",
            crt.to_str().expect("utf-8"),
            "-noout",
            "-subject",
            "-ext",
            "extendedKeyUsage",
        ],
    );
    assert!(
        text.contains("system:node:w1") && text.contains("TLS Web Client Authentication"),
        "{text}"
    );
    let csr = v_csr(&env, "node-csr-w1");
    assert_eq!(
        csr["spec"]["username"],
        "system:bootstrap:".to_string() + &field("id").unwrap()
    );
    assert!(csr["spec"]["groups"]
        .as_array()
        .is_some_and(|g| g.iter().any(|g| g == "system:bootstrappers")));

    // A user certificate the way the seeds make one: the admin submits a CSR for jane,
    // nothing approves it on its own, `kubectl certificate approve` does, the signer signs,
    // and the certificate authenticates jane (who may do nothing yet: 403, not 401).
    let (jkey, jreq) = (env.dir.join("jane.key"), env.dir.join("jane.csr"));
    let b64 = new_csr(&jkey, &jreq, "/O=dev/CN=jane");
    env.apply(&format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\n\
         metadata: {{name: jane}}\nspec:\n  request: {b64}\n  \
         signerName: kubernetes.io/kube-apiserver-client\n  usages: [client auth]\n"
    ));
    std::thread::sleep(Duration::from_secs(2));
    let pending = v_csr(&env, "jane");
    assert!(
        pending["status"]["conditions"]
            .as_array()
            .is_none_or(|c| c.is_empty()),
        "a user CSR must wait for a human: {pending}"
    );
    let shown = env.ok(&["get", "csr", "jane"]);
    assert!(shown.contains("Pending"), "{shown}");
    env.ok(&["certificate", "approve", "jane"]);
    let cert_b64 = wait_for(30, "jane's CSR to be signed", || {
        v_csr(&env, "jane")["status"]["certificate"]
            .as_str()
            .map(str::to_string)
    });
    let shown = env.ok(&["get", "csr", "jane"]);
    assert!(shown.contains("Approved,Issued"), "{shown}");
    let jcrt = env.dir.join("jane.crt");
    std::fs::write(
        &jcrt,
        base64::engine::general_purpose::STANDARD
            .decode(cert_b64)
            .expect("base64"),
    )
    .expect("write cert");
    let out = Command::new("kubectl")
        .args([
            "--kubeconfig",
            "/dev/null",
            "--server",
            &server,
            "--certificate-authority",
            ca.to_str().expect("utf-8"),
            "--client-certificate",
            jcrt.to_str().expect("utf-8"),
            "--client-key",
            jkey.to_str().expect("utf-8"),
            "get",
            "pods",
        ])
        .output()
        .expect("kubectl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("User \"jane\" cannot list resource \"pods\""),
        "{err}"
    );
}

/// An EC P-256 key at `key` and a CSR for `subject` at `req` (openssl); the CSR base64.
fn new_csr(key: &std::path::Path, req: &std::path::Path, subject: &str) -> String {
    common::tool_ok(
        "openssl",
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            key.to_str().expect("utf-8"),
            "-out",
            req.to_str().expect("utf-8"),
            "-subj",
            subject,
        ],
    );
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(req).expect("csr"))
}

fn v_csr(env: &Env, name: &str) -> Value {
    env.json(&["get", "csr", name])
}
