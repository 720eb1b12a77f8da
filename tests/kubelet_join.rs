//! `kimg kubelet` end to end: `kimg cluster new` + `kimg up` (memory store), a containerd
//! of the test's own (temp dirs, its own socket and runc root), a busybox image from
//! `kimg oci build`, and a kubelet started with only the server, the CA and a bootstrap
//! token. Checked with the real `kubectl`: TLS bootstrap, node Ready, lease renewal, pods
//! Running with IPs, `logs` / `logs -f` / `exec` through the apiserver, deletion cleanup,
//! and a restart that reuses the stored certificate. Prints create→Running latency for
//! 10 pods and the kubelet's RSS. A second test renews a certificate past 70 % of its life
//! against the same `kimg up` (needs only `kubectl`).
//!
//! Needs root, the `containerd`, `runc`, `containernetworking-plugins`, `kubectl` packages,
//! and the host's Debian mirror (or a warm kimg cache) for `busybox-static`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{free_port, wait_for};
use kimg::kubelet::private_containerd::PrivateContainerd;
use serde_json::Value;

/// Everything the test started; stopped and cleaned on drop.
struct Env {
    tmp: tempfile::TempDir,
    up: Child,
    containerd: PrivateContainerd,
    kubelet: Option<Child>,
    kubeconfig: PathBuf,
    bridge: String,
    cgroup: String,
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(k) = &mut self.kubelet {
            let _ = k.kill();
            let _ = k.wait();
        }
        self.containerd.stop();
        let _ = self.up.kill();
        let _ = self.up.wait();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
        for e in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(e.path().join(self.cgroup.trim_start_matches('/')));
        }
        let _ = std::fs::remove_dir(
            Path::new("/sys/fs/cgroup").join(self.cgroup.trim_start_matches('/')),
        );
    }
}

impl Env {
    fn sock(&self) -> PathBuf {
        self.containerd.socket()
    }

    fn dir(&self) -> PathBuf {
        self.tmp.path().join("dev")
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

    fn ctr(&self, args: &[&str]) -> String {
        let sock = self.sock();
        common::tool_ok(
            "ctr",
            &[
                &["--address", sock.to_str().expect("utf-8"), "-n", "k8s.io"],
                args,
            ]
            .concat(),
        )
    }

    fn start_kubelet(&mut self, token: Option<&str>, port: u16) {
        let tmp = self.tmp.path();
        let server = {
            let kc: Value = serde_yaml::from_str(
                &std::fs::read_to_string(&self.kubeconfig).expect("kubeconfig"),
            )
            .expect("yaml");
            kc["clusters"][0]["cluster"]["server"]
                .as_str()
                .expect("server")
                .to_string()
        };
        let port = port.to_string();
        let mut args = vec![
            "kubelet".to_string(),
            "--server".into(),
            server,
            "--ca-file".into(),
            self.dir().join("secrets/pki/ca.crt").display().to_string(),
            "--state-dir".into(),
            tmp.join("kubelet").display().to_string(),
            "--node-name".into(),
            "kt-node".into(),
            "--node-ip".into(),
            "127.0.0.1".into(),
            "--containerd-socket".into(),
            self.sock().display().to_string(),
            "--runc-root".into(),
            self.containerd.runc_root().display().to_string(),
            "--listen-port".into(),
            port,
            "--oci-archive-dir".into(),
            tmp.join("images").display().to_string(),
            "--bridge".into(),
            self.bridge.clone(),
            "--cgroup-parent".into(),
            self.cgroup.clone(),
            "--node-labels".into(),
            "kimg.dev/test=kubelet,kimg.dev/role=".into(),
            "--register-with-taints".into(),
            "kimg.dev/test=soft:PreferNoSchedule".into(),
        ];
        if let Some(t) = token {
            args.push("--token".into());
            args.push(t.into());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(tmp.join("kubelet.log"))
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_kimg"))
            .args(&args)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn kimg kubelet");
        self.kubelet = Some(child);
    }

    fn kubelet_log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("kubelet.log")).unwrap_or_default()
    }

    fn stop_kubelet(&mut self, signal: &str) {
        if let Some(mut k) = self.kubelet.take() {
            let _ = Command::new("kill")
                .args([signal, &k.id().to_string()])
                .status();
            let _ = k.wait();
        }
    }

    fn csr_count(&self) -> usize {
        self.json(&["get", "csr"])["items"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0)
    }

    fn renew_time(&self) -> String {
        self.json(&["get", "lease", "-n", "kube-node-lease", "kt-node"])["spec"]["renewTime"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// `kimg cluster new TMP/dev` and `kimg up` on the memory store: (process, kubeconfig).
fn up(tmp: &Path) -> (Child, PathBuf) {
    let dir = tmp.join("dev");
    common::kimg_ok(tmp, &["cluster", "new", dir.to_str().expect("utf-8")]);
    let listen = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kimg"));
    cmd.args([
        "up",
        dir.to_str().expect("utf-8"),
        "--listen",
        &listen,
        "--store",
        "memory",
    ]);
    let (up, kubeconfig) = common::start_up(cmd);
    (up, kubeconfig)
}

fn start() -> Env {
    let tmp = tempfile::Builder::new()
        .prefix("kj")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let (up, kubeconfig) = up(tmp.path());
    // A containerd of our own.
    let containerd = PrivateContainerd::start(tmp.path()).expect("containerd is installed");
    let pid = std::process::id() % 100_000;
    let env = Env {
        up,
        containerd,
        kubelet: None,
        kubeconfig,
        bridge: format!("kj{pid}"),
        cgroup: format!("/kimg-kj-{pid}"),
        tmp,
    };
    wait_for(20, "containerd's socket", || {
        env.sock().exists().then_some(())
    });
    env
}

fn bootstrap_token(dir: &Path) -> String {
    let tokens = std::fs::read_to_string(dir.join("secrets/tokens.toml")).expect("tokens.toml");
    let field = |k: &str| {
        tokens.lines().find_map(|l| {
            l.strip_prefix(&format!("{k} = \""))?
                .strip_suffix('"')
                .map(str::to_string)
        })
    };
    format!(
        "{}.{}",
        field("id").expect("token id"),
        field("secret").expect("token secret")
    )
}

fn pod_yaml(name: &str, script: &str) -> String {
    pod_yaml_with(name, "kimg.local/busybox:latest", script)
}

fn pod_yaml_with(name: &str, image: &str, script: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: kj}}\nspec:\n  \
         terminationGracePeriodSeconds: 2\n  containers:\n  - name: main\n    image: {image}\n    \
         command: [\"/bin/sh\", \"-c\", {script:?}]\n"
    )
}

/// Debian's `docker-registry` (the distribution registry) on a loopback port.
struct Registry {
    child: Child,
    addr: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry(dir: &Path) -> Registry {
    std::fs::create_dir_all(dir).expect("registry dir");
    let addr = format!("127.0.0.1:{}", free_port());
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.join("data").display()
        ),
    )
    .expect("registry config");
    let log = std::fs::File::create(dir.join("registry.log")).expect("log");
    let child = Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("docker-registry (Debian package docker-registry)");
    let registry = Registry { child, addr };
    wait_for(20, "the registry", || {
        ureq::get(&format!("http://{}/v2/", registry.addr))
            .call()
            .ok()
    });
    registry
}

/// Pushes an OCI archive's config, layers and manifest to `repo:tag` (monolithic uploads).
fn push(addr: &str, repo: &str, tag: &str, archive: &Path) {
    let a = kimg::oci::archive::read_archive(&std::fs::read(archive).expect("archive"))
        .expect("parse archive");
    let mut digests = vec![a.config_digest.clone()];
    digests.extend(a.layers.iter().map(|l| l.digest.clone()));
    for d in digests {
        let started = ureq::post(&format!("http://{addr}/v2/{repo}/blobs/uploads/"))
            .call()
            .expect("start upload");
        let loc = started
            .header("Location")
            .expect("upload location")
            .to_string();
        let url = if loc.starts_with("http") {
            loc
        } else {
            format!("http://{addr}{loc}")
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        ureq::put(&format!("{url}{sep}digest={d}"))
            .set("Content-Type", "application/octet-stream")
            .send_bytes(&a.blobs[&d])
            .expect("upload blob");
    }
    ureq::put(&format!("http://{addr}/v2/{repo}/manifests/{tag}"))
        .set("Content-Type", &a.manifest_media_type)
        .send_bytes(&a.blobs[&a.manifest_digest])
        .expect("put manifest");
}

fn apply(env: &Env, name: &str, yaml: &str) {
    let p = env.tmp.path().join(format!("{name}.yaml"));
    std::fs::write(&p, yaml).expect("manifest");
    env.ok(&["apply", "-f", p.to_str().expect("utf-8")]);
}

fn running_ip(env: &Env, name: &str) -> Option<String> {
    let p = env.json(&["get", "pod", name]);
    (p["status"]["phase"] == "Running").then(|| p["status"]["podIP"].as_str().map(String::from))?
}

#[test]
fn kubelet_joins_runs_pods_serves_logs_and_exec_and_cleans_up_needs_root_and_containerd_and_the_host_mirror(
) {
    let mut env = start();
    let images = env.tmp.path().join("images");
    std::fs::create_dir_all(&images).expect("images dir");
    let archive = images.join("busybox.tar");
    let lock = env.tmp.path().join("oci.lock");
    common::kimg_ok(
        env.tmp.path(),
        &[
            "oci",
            "build",
            "--package",
            "busybox-static",
            "--entrypoint",
            "/bin/busybox",
            "--cmd",
            "sh",
            "--lock",
            lock.to_str().expect("utf-8"),
            "-o",
            archive.to_str().expect("utf-8"),
        ],
    );
    let token = bootstrap_token(&env.dir());
    let api_port = free_port();
    env.start_kubelet(Some(&token), api_port);

    // TLS bootstrap: one CSR, from the bootstrap token, approved; the node registers.
    let node = wait_for(90, "node kt-node to be Ready", || {
        let out = env.kubectl(&["get", "node", "kt-node", "-o", "json"]);
        let n: Value = serde_json::from_slice(&out.stdout).ok()?;
        let ready = n["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        (ready && n["spec"]["podCIDR"].is_string()).then_some(n)
    });
    assert_eq!(
        node["metadata"]["labels"]["kimg.dev/test"], "kubelet",
        "{node}"
    );
    assert_eq!(
        node["metadata"]["labels"]["kubernetes.io/hostname"],
        "kt-node"
    );
    assert_eq!(node["metadata"]["labels"]["kimg.dev/role"], "");
    assert_eq!(
        node["spec"]["taints"][0]["effect"], "PreferNoSchedule",
        "{node}"
    );
    assert_eq!(node["spec"]["taints"][0]["value"], "soft");
    assert_eq!(node["status"]["capacity"]["pods"], "110");
    assert!(node["status"]["addresses"]
        .to_string()
        .contains("127.0.0.1"));
    let csrs = env.json(&["get", "csr"]);
    let items = csrs["items"].as_array().expect("items");
    let client: Vec<&Value> = items
        .iter()
        .filter(|c| c["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet")
        .collect();
    assert_eq!(client.len(), 1, "{csrs}");
    assert!(client[0]["spec"]["username"]
        .as_str()
        .unwrap_or_default()
        .starts_with("system:bootstrap:"));
    // The serving certificate comes from the cluster CA, asked for by the node itself.
    let serving = wait_for(60, "a signed kubelet-serving certificate", || {
        let csrs = env.json(&["get", "csr"]);
        csrs["items"]
            .as_array()?
            .iter()
            .find(|c| {
                c["spec"]["signerName"] == "kubernetes.io/kubelet-serving"
                    && c["status"]["certificate"].is_string()
            })
            .cloned()
    });
    assert_eq!(
        serving["spec"]["username"], "system:node:kt-node",
        "{serving}"
    );
    let state = env.tmp.path().join("kubelet");
    assert!(state.join("kubelet-client.crt").exists());
    wait_for(30, "the serving certificate stored", || {
        state.join("kubelet-server.crt").exists().then_some(())
    });
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.join("kubelet-client.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The lease is renewed.
    let first = wait_for(30, "the node lease", || {
        Some(env.renew_time()).filter(|t| !t.is_empty())
    });
    wait_for(30, "the lease to be renewed", || {
        (env.renew_time() != first).then_some(())
    });

    // A pod runs, logs, follows, execs.
    apply(
        &env,
        "p1",
        &pod_yaml("p1", "echo hello; sleep 3; echo later; sleep 3600"),
    );
    let ip = wait_for(90, "p1 Running with an IP", || running_ip(&env, "p1"));
    assert!(ip.starts_with("10.244."), "pod IP {ip}");
    let mut follow = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .args(["logs", "-f", "p1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("kubectl logs -f");
    let out = wait_for(30, "kubectl logs to show hello", || {
        let o = env.kubectl(&["logs", "p1"]);
        String::from_utf8_lossy(&o.stdout)
            .contains("hello")
            .then_some(o)
    });
    assert!(out.status.success());
    let (tx, rx) = mpsc::channel();
    let stdout = follow.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.iter().any(|l: &String| l == "later") && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
            seen.push(l);
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(
        seen,
        ["hello", "later"],
        "kubectl logs -f streams the later line"
    );
    let exec = env.kubectl(&["exec", "p1", "--", "sh", "-c", "echo out; exit 3"]);
    assert_eq!(
        String::from_utf8_lossy(&exec.stdout).trim(),
        "out",
        "{}",
        String::from_utf8_lossy(&exec.stderr)
    );
    assert_eq!(
        exec.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&exec.stderr)
    );
    let exec = env.kubectl(&["exec", "p1", "--", "cat", "/etc/hostname"]);
    assert_eq!(String::from_utf8_lossy(&exec.stdout).trim(), "p1");
    assert!(exec.status.success());
    // Every pod carries its service account's credentials (the projected
    // kube-api-access volume): a token the apiserver accepts, the cluster CA, its namespace.
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    let cat = |file: &str| env.ok(&["exec", "p1", "--", "cat", &format!("{sa}/{file}")]);
    assert_eq!(cat("namespace").trim(), "default");
    let ca = std::fs::read_to_string(env.tmp.path().join("dev/secrets/pki/ca.crt")).expect("ca");
    assert_eq!(cat("ca.crt").trim(), ca.trim());
    let token = cat("token");
    let server = env.ok(&[
        "config",
        "view",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    let as_pod = |token: &str| {
        Command::new("kubectl")
            .args(["--kubeconfig", "/dev/null", "--server", server.trim()])
            .arg("--certificate-authority")
            .arg(env.tmp.path().join("dev/secrets/pki/ca.crt"))
            .args(["--token", token.trim(), "get", "secrets"])
            .output()
            .expect("kubectl")
    };
    let out = as_pod(&token);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("system:serviceaccount:default:default") && err.contains("forbidden"),
        "the pod's token is its service account's: {err}"
    );
    let forged = as_pod(&format!("{}x", token.trim()));
    assert!(
        String::from_utf8_lossy(&forged.stderr).contains("Unauthorized"),
        "{}",
        String::from_utf8_lossy(&forged.stderr)
    );
    // Output streams while the command runs, and stdin reaches it.
    let mut slow = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .args([
            "exec",
            "p1",
            "--",
            "sh",
            "-c",
            "echo first; sleep 4; echo second",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("kubectl exec");
    let started = Instant::now();
    let mut lines = BufReader::new(slow.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("first"));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the first line came only at the end"
    );
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("second"));
    assert!(slow.wait().expect("wait").success());
    // (`timeout`: a stdin that never reaches EOF must fail the test, not hang it.)
    let mut cat = Command::new("timeout")
        .args(["60", "kubectl", "--kubeconfig"])
        .arg(&env.kubeconfig)
        .args(["exec", "-i", "p1", "--", "sh", "-c", "tr a-z A-Z; exit 4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("kubectl exec -i");
    {
        use std::io::Write;
        let mut stdin = cat.stdin.take().expect("stdin");
        stdin.write_all(b"shout\n").expect("write stdin");
    }
    let out = cat.wait_with_output().expect("kubectl exec -i");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SHOUT\n");
    assert_eq!(out.status.code(), Some(4));
    // A terminal (`kubectl exec -it`; script(1) gives kubectl one of 33 rows × 101
    // columns): the command runs on a tty of that size, its output on one stream.
    let tty = Command::new("timeout")
        .args(["60", "script", "-qec"])
        .arg(format!(
            "stty rows 33 cols 101; kubectl --kubeconfig {} exec -it p1 -- sh -c 'tty; stty size; echo to-stderr >&2'",
            env.kubeconfig.display()
        ))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .output()
        .expect("script + kubectl exec -it");
    let text = String::from_utf8_lossy(&tty.stdout).replace('\r', "");
    assert!(text.contains("/dev/pts/"), "not a terminal: {text:?}");
    assert!(
        text.contains("33 101"),
        "terminal size not passed on: {text:?}"
    );
    assert!(text.contains("to-stderr"), "{text:?}");

    // RBAC guards the proxy: the default service account may not exec.
    let denied = env.kubectl(&[
        "--as",
        "system:serviceaccount:default:default",
        "exec",
        "p1",
        "--",
        "true",
    ]);
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("forbidden"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    // The kubelet API refuses a node's own certificate and callers without one.
    let url = format!("https://127.0.0.1:{api_port}/containerLogs/default/p1/main");
    let curl = |extra: &[&str]| {
        let out = Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(extra)
            .arg(&url)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (crt, key) = (
        state.join("kubelet-client.crt"),
        state.join("kubelet-client.key"),
    );
    let as_node = curl(&[
        "--cert",
        crt.to_str().expect("utf-8"),
        "--key",
        key.to_str().expect("utf-8"),
    ]);
    assert_eq!(as_node, "403");
    assert_ne!(curl(&[]), "200", "no client certificate, no logs");

    // An image that is only in a registry (plain HTTP on loopback): the kubelet pulls it.
    let registry = start_registry(&env.tmp.path().join("registry"));
    push(&registry.addr, "tools/busybox", "1.0", &archive);
    let pulled_image = format!("{}/tools/busybox:1.0", registry.addr);
    apply(
        &env,
        "pulled",
        &pod_yaml_with("pulled", &pulled_image, "echo pulled-ok; sleep 3600"),
    );
    wait_for(90, "the pod of a pulled image Running", || {
        running_ip(&env, "pulled")
    });
    wait_for(20, "its log", || {
        let out = env.kubectl(&["logs", "pulled"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("pulled-ok")
            .then_some(())
    });
    assert!(
        env.ctr(&["images", "ls", "-q"]).contains(&pulled_image),
        "stored under its name"
    );
    // An image no registry has: the container waits (ErrImagePull, then
    // ImagePullBackOff) and the pod stays Pending instead of failing.
    let nowhere = format!("127.0.0.1:{}/nothing/here:1", free_port());
    apply(&env, "nopull", &pod_yaml_with("nopull", &nowhere, "true"));
    let reason = wait_for(60, "the unpullable pod to report why it waits", || {
        let p = env.json(&["get", "pod", "nopull"]);
        let r = p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
            .as_str()
            .map(str::to_string)?;
        (r == "ErrImagePull" || r == "ImagePullBackOff").then_some((r, p))
    });
    assert_eq!(reason.1["status"]["phase"], "Pending", "{}", reason.1);
    env.ok(&[
        "delete",
        "pod",
        "pulled",
        "nopull",
        "--wait=true",
        "--timeout=60s",
    ]);
    drop(registry);

    // Ten pods: create → Running latency through the API, and the kubelet's memory.
    // Timed from a watch (each event stamped on arrival), not by polling.
    let mut watch = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .args([
            "get",
            "pods",
            "-l",
            "app=kj",
            "-w",
            "--no-headers",
            "-o",
            "custom-columns=N:.metadata.name,P:.status.phase",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("kubectl get -w");
    let (tx, rx) = mpsc::channel();
    let stdout = watch.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), line));
        }
    });
    // The watch lists p1 first: it is running once it has said so.
    wait_for(30, "the watch to start", || {
        rx.recv_timeout(Duration::from_millis(100)).ok()
    });
    let t0 = Instant::now();
    let yaml: String = (0..10)
        .map(|i| pod_yaml(&format!("bulk-{i}"), "sleep 3600") + "---\n")
        .collect();
    apply(&env, "bulk", &yaml);
    let mut latencies: Vec<Option<Duration>> = vec![None; 10];
    wait_for(120, "ten pods Running", || {
        while let Ok((at, line)) = rx.try_recv() {
            let mut f = line.split_whitespace();
            let (name, phase) = (f.next().unwrap_or_default(), f.next().unwrap_or_default());
            if let Some(i) = name
                .strip_prefix("bulk-")
                .and_then(|i| i.parse::<usize>().ok())
            {
                if phase == "Running" && latencies[i].is_none() {
                    latencies[i] = Some(at - t0);
                }
            }
        }
        latencies.iter().all(Option::is_some).then_some(())
    });
    let _ = watch.kill();
    let _ = watch.wait();
    let mut ms: Vec<u128> = latencies.iter().flatten().map(|d| d.as_millis()).collect();
    ms.sort();
    let rss = std::fs::read_to_string(format!(
        "/proc/{}/status",
        env.kubelet.as_ref().expect("kubelet").id()
    ))
    .unwrap_or_default()
    .lines()
    .find(|l| l.starts_with("VmRSS"))
    .unwrap_or_default()
    .to_string();
    eprintln!("FIGURES create->Running for 10 pods: p50 {} ms, p99 {} ms; kimg kubelet with 11 pods: {rss}", ms[4], ms[9]);

    // A pod that vanishes from the API at once (forced delete) is removed from the node.
    assert_eq!(env.ctr(&["containers", "ls", "-q"]).lines().count(), 11);
    env.ok(&["delete", "pod", "bulk-0", "--grace-period=0", "--force"]);
    wait_for(30, "bulk-0's container to be removed", || {
        (env.ctr(&["containers", "ls", "-q"]).lines().count() == 10).then_some(())
    });

    // Deletion completes and leaves nothing behind.
    env.ok(&[
        "delete",
        "pods",
        "-l",
        "app=kj",
        "--wait=true",
        "--timeout=90s",
    ]);
    let left = env.json(&["get", "pods"]);
    assert_eq!(left["items"].as_array().map(Vec::len), Some(0), "{left}");
    wait_for(30, "containerd to have no containers or tasks", || {
        let c = env.ctr(&["containers", "ls", "-q"]);
        let t = env.ctr(&["tasks", "ls", "-q"]);
        (c.trim().is_empty() && t.trim().is_empty()).then_some(())
    });
    let netns: Vec<_> = std::fs::read_dir(state.join("netns"))
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    assert!(netns.is_empty(), "netns pins left: {netns:?}");

    // A crash (SIGKILL) with a pod running, then a restart without the token: the stored
    // certificates are reused (no new CSR: one client, one serving), the previous run's
    // container is replaced and the pod runs again under the new process.
    apply(&env, "p2", &pod_yaml("p2", "echo again; sleep 3600"));
    wait_for(90, "p2 Running", || running_ip(&env, "p2"));
    assert_eq!(env.csr_count(), 2, "one client and one serving CSR");
    env.stop_kubelet("-KILL");
    let before = env.renew_time();
    env.start_kubelet(None, api_port);
    wait_for(40, "the restarted kubelet to renew the lease", || {
        (env.renew_time() != before).then_some(())
    });
    assert_eq!(env.csr_count(), 2, "no new CSR:\n{}", env.kubelet_log());
    wait_for(60, "exec into p2 through the restarted kubelet", || {
        env.kubectl(&["exec", "p2", "--", "true"])
            .status
            .success()
            .then_some(())
    });
    let containers = env.ctr(&["containers", "ls", "-q"]);
    assert_eq!(containers.lines().count(), 1, "{containers}");
    assert_eq!(env.ok(&["logs", "p2"]).trim(), "again");
    env.ok(&["delete", "pod", "p2", "--wait=true", "--timeout=60s"]);
    wait_for(30, "containerd to be empty again", || {
        env.ctr(&["containers", "ls", "-q"])
            .trim()
            .is_empty()
            .then_some(())
    });
    let netns: Vec<_> = std::fs::read_dir(state.join("netns"))
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    assert!(netns.is_empty(), "netns pins left: {netns:?}");
}

/// A certificate signed by the cluster CA for `system:node:<node>`, valid from `before` ago
/// to `after` from now: (cert PEM, key PEM).
fn node_cert(
    dir: &Path,
    node: &str,
    before: time::Duration,
    after: time::Duration,
) -> (String, String) {
    let pki = dir.join("secrets/pki");
    let ca = kimg::pki::issue::Authority::from_pem(
        &std::fs::read_to_string(pki.join("ca.crt")).expect("ca.crt"),
        &std::fs::read_to_string(pki.join("ca.key")).expect("ca.key"),
    )
    .expect("ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - before;
    params.not_after = now + after;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &ca.cert, &ca.key).expect("sign");
    (cert.pem(), key.serialize_pem())
}

/// Rotation against a real `kimg up` (no containerd needed): a stored certificate past 70 %
/// of its lifetime is renewed with a CSR authenticated by that certificate (no token), the
/// CSR controller approves the node renewing itself, and the new pair replaces the old.
#[test]
fn a_certificate_past_seventy_percent_of_its_life_is_renewed_with_itself() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut up_child, kubeconfig) = up(tmp.path());
    let dir = tmp.path().join("dev");
    let state = tmp.path().join("state");
    let (cert, key) = node_cert(
        &dir,
        "rot",
        time::Duration::days(9),
        time::Duration::days(1),
    );
    std::fs::create_dir_all(&state).expect("state");
    std::fs::write(state.join("kubelet-client.crt"), &cert).expect("crt");
    std::fs::write(state.join("kubelet-client.key"), &key).expect("key");
    let kc: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&kubeconfig).expect("kubeconfig"))
            .expect("yaml");
    let cfg = kimg::kubelet::join::JoinConfig {
        server: kc["clusters"][0]["cluster"]["server"]
            .as_str()
            .expect("server")
            .into(),
        ca_pem: std::fs::read_to_string(dir.join("secrets/pki/ca.crt")).expect("ca"),
        token: None,
        state_dir: state.clone(),
        node_name: "rot".into(),
        wait: Duration::from_secs(60),
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (fresh, requested) = rt
        .block_on(kimg::kubelet::join::ensure_credentials(&cfg))
        .expect("renewal");
    assert!(requested, "a due certificate is renewed");
    assert_ne!(fresh.cert_pem, cert);
    assert_eq!(fresh.common_name, "system:node:rot");
    assert!(!kimg::kubelet::join::rotation_due(
        fresh.not_before,
        fresh.not_after,
        time::OffsetDateTime::now_utc()
    ));
    assert_eq!(
        std::fs::read_to_string(state.join("kubelet-client.crt")).expect("crt"),
        fresh.cert_pem
    );
    let csrs: Value = serde_json::from_slice(
        &Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["get", "csr", "-o", "json"])
            .output()
            .expect("kubectl")
            .stdout,
    )
    .expect("json");
    let items = csrs["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{csrs}");
    assert_eq!(
        items[0]["spec"]["username"], "system:node:rot",
        "renewed by the node itself"
    );
    // The running-kubelet path: rotate_if_due swaps the shared client.
    let (old_cert, old_key) = node_cert(
        &dir,
        "rot",
        time::Duration::days(8),
        time::Duration::days(2),
    );
    let old = kimg::kubelet::join::Credentials::parse(&old_cert, &old_key).expect("parse");
    let cell = rt.block_on(async {
        let client = kimg::kubelet::join::client_for_cert(&cfg.server, &cfg.ca_pem, &old)
            .await
            .expect("client");
        kimg::kubelet::join::ClientCell::new(client)
    });
    let now_used = rt
        .block_on(kimg::kubelet::join::rotate_if_due(&cfg, old.clone(), &cell))
        .expect("rotate");
    assert_ne!(now_used, old);
    assert_eq!(cell.generation(), 1);
    let not_due = rt
        .block_on(kimg::kubelet::join::rotate_if_due(
            &cfg,
            now_used.clone(),
            &cell,
        ))
        .expect("no rotation");
    assert_eq!(not_due, now_used);
    assert_eq!(cell.generation(), 1, "a fresh certificate is kept");
    let _ = up_child.kill();
    let _ = up_child.wait();
}
