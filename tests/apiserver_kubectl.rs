//! `kimg up` driven by the real `kubectl` (the one on PATH: the host's, else 1.37 from
//! `scripts/setup-host`; every supported minor runs in `kubectl_versions.rs`) and `curl`: the
//! session a user runs against a cluster, once on the memory store and once on a real etcd
//! (the Debian `etcd` binary on loopback). Needs the `kubectl`, `curl` and `etcd-server`
//! packages.

#[macro_use]
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{free_port, kimg_ok};
use serde_json::Value;

up_handle!(
    /// A running `kimg up` on a free loopback port.
    Up
);

impl Up {
    fn start(store: &str) -> Up {
        let (tmp, dir) = common::new_cluster();
        Up::start_in(tmp, dir, store)
    }

    /// `kimg up` for the cluster `dir` (already made) over `store`.
    fn start_in(tmp: tempfile::TempDir, dir: PathBuf, store: &str) -> Up {
        let up = common::Up::start(tmp, dir, &["--store", store]);
        assert_eq!(up.kubeconfig, up.dir.join("admin.conf"));
        Up(up)
    }

    fn kubectl_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("run kubectl")
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_env(args, &[])
    }

    fn ok(&self, args: &[&str]) -> String {
        common::checked_ok(args, self.kubectl(args))
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(!out.status.success(), "kubectl {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn pki(&self, name: &str) -> String {
        self.dir
            .join("secrets/pki")
            .join(name)
            .display()
            .to_string()
    }

    /// `curl` with the cluster CA, optionally the admin certificate; returns (code, body).
    fn curl(&self, with_cert: bool, args: &[&str], path: &str) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--cacert",
            &self.pki("ca.crt"),
        ]);
        if with_cert {
            cmd.args([
                "--cert",
                &self.pki("admin.crt"),
                "--key",
                &self.pki("admin.key"),
            ]);
        }
        let out = cmd
            .args(args)
            .arg(format!("{}{path}", self.url))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').expect("status line");
        (code.trim().parse().expect("http code"), body.to_string())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write manifest");
    p.display().to_string()
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.25
        ports:
        - containerPort: 80
";

const PDB: &str = "apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: web
  namespace: demo
spec:
  minAvailable: 50%
  selector:
    matchLabels: {app: web}
";

fn kubectl_session(up: &Up) {
    let ns = up.ok(&["get", "ns"]);
    assert!(ns.starts_with("NAME"), "{ns}");
    for want in [
        "default",
        "kube-system",
        "kube-public",
        "kube-node-lease",
        "Active",
    ] {
        assert!(ns.contains(want), "{want} in {ns}");
    }
    // `kubectl get cs` (the seeds' first check): computed, read-only, deprecated.
    let cs = common::wait_for(20, "every component Healthy", || {
        let out = up.kubectl(&["get", "cs"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (text.matches("Healthy").count() == 3 && !text.contains("Unhealthy"))
            .then(|| (text, String::from_utf8_lossy(&out.stderr).into_owned()))
    });
    for want in ["scheduler", "controller-manager", "etcd-0", "MESSAGE"] {
        assert!(cs.0.contains(want), "{want} in {}", cs.0);
    }
    assert!(cs.1.contains("ComponentStatus is deprecated"), "{}", cs.1);
    let one = up.ok(&["get", "componentstatus", "scheduler", "-o", "json"]);
    assert!(one.contains("\"type\": \"Healthy\""), "{one}");
    assert!(up
        .fails(&["delete", "cs", "scheduler"])
        .contains("MethodNotAllowed"));
    assert!(up.ok(&["get", "svc", "kubernetes"]).contains("10.96.0.1"));
    assert!(up
        .ok(&["create", "namespace", "demo"])
        .contains("namespace/demo created"));

    // ConfigMaps and the output formats.
    up.ok(&[
        "-n",
        "demo",
        "create",
        "configmap",
        "cfg",
        "--from-literal=foo=bar",
        "--from-literal=x=y",
    ]);
    assert!(up
        .ok(&["-n", "demo", "get", "cm", "cfg", "-o", "yaml"])
        .contains("foo: bar"));
    let json: Value =
        serde_json::from_str(&up.ok(&["-n", "demo", "get", "cm", "cfg", "-o", "json"]))
            .expect("json");
    assert_eq!(json["data"]["x"], "y");
    assert!(json["metadata"]["uid"]
        .as_str()
        .is_some_and(|u| u.len() == 36));
    let wide = up.ok(&["-n", "demo", "get", "cm", "-o", "wide"]);
    assert!(
        wide.contains("DATA")
            && wide
                .lines()
                .any(|l| l.starts_with("cfg") && l.contains(" 2 ")),
        "{wide}"
    );
    let missing = up.fails(&["-n", "nope", "create", "configmap", "c"]);
    assert!(
        missing.contains("namespaces \"nope\" not found"),
        "{missing}"
    );

    // apply twice, then a change.
    let manifest = write(&up.dir, "web.yaml", DEPLOYMENT);
    assert!(up
        .ok(&["apply", "-f", &manifest])
        .contains("deployment.apps/web created"));
    assert!(up
        .ok(&["apply", "-f", &manifest])
        .contains("deployment.apps/web unchanged"));
    let changed = write(
        &up.dir,
        "web2.yaml",
        &DEPLOYMENT.replace("nginx:1.25", "nginx:1.26"),
    );
    assert!(up
        .ok(&["apply", "-f", &changed])
        .contains("deployment.apps/web configured"));
    let image = up.ok(&[
        "-n",
        "demo",
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image} {.metadata.generation}",
    ]);
    assert_eq!(image, "nginx:1.26 2");

    up.ok(&["-n", "demo", "label", "deployment", "web", "tier=frontend"]);
    assert!(up
        .ok(&["-n", "demo", "get", "deploy", "-l", "tier in (frontend)"])
        .contains("web"));
    let none = up.kubectl(&["-n", "demo", "get", "deploy", "-l", "tier!=frontend"]);
    assert!(String::from_utf8_lossy(&none.stderr).contains("No resources found"));
    up.ok(&["-n", "demo", "annotate", "deployment", "web", "note=hello"]);
    assert!(up
        .ok(&["-n", "demo", "scale", "deployment", "web", "--replicas=5"])
        .contains("scaled"));
    assert_eq!(
        up.ok(&[
            "-n",
            "demo",
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.replicas} {.metadata.labels.tier} {.metadata.annotations.note}"
        ]),
        "5 frontend hello"
    );
    up.ok(&[
        "-n",
        "demo",
        "patch",
        "deployment",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"paused":true}}"#,
    ]);
    up.ok(&[
        "-n",
        "demo",
        "patch",
        "deployment",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":3}]"#,
    ]);
    up.ok(&[
        "-n",
        "demo",
        "patch",
        "deployment",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1.27"}]}}}}"#,
    ]);
    assert_eq!(
        up.ok(&["-n", "demo", "get", "deploy", "web", "-o", "jsonpath={.spec.paused} {.spec.replicas} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].containerPort}"]),
        "true 3 nginx:1.27 80"
    );
    let table = up.ok(&["-n", "demo", "get", "deploy"]);
    assert!(
        table.contains("READY") && table.contains("UP-TO-DATE") && table.contains("0/3"),
        "{table}"
    );
    assert!(up
        .ok(&["-n", "demo", "describe", "deployment", "web"])
        .contains("nginx:1.27"));

    // edit through an editor that is a sed command.
    let edit = up.kubectl_env(
        &["-n", "demo", "edit", "cm", "cfg"],
        &[("KUBE_EDITOR", "sed -i s/foo/baz/")],
    );
    assert!(
        edit.status.success(),
        "{}",
        String::from_utf8_lossy(&edit.stderr)
    );
    assert_eq!(
        up.ok(&[
            "-n",
            "demo",
            "get",
            "cm",
            "cfg",
            "-o",
            "jsonpath={.data.baz}"
        ]),
        "bar"
    );

    // get -w sees a change made after it started.
    let mut watch = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&up.kubeconfig)
        .args(["-n", "demo", "get", "cm", "-w"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("kubectl get -w");
    let stdout = watch.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("watch header");
    assert!(first.starts_with("NAME"), "{first}");
    up.ok(&[
        "-n",
        "demo",
        "create",
        "configmap",
        "watched",
        "--from-literal=a=b",
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with("watched") => {
                seen = true;
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(seen, "kubectl get -w saw the new configmap");

    // Services: ClusterIP and NodePort allocation.
    up.ok(&[
        "-n",
        "demo",
        "create",
        "service",
        "nodeport",
        "web",
        "--tcp=80:80",
        "--node-port=30080",
    ]);
    let svc = up.ok(&["-n", "demo", "get", "svc", "web"]);
    assert!(
        svc.contains("80:30080/TCP") && svc.contains("10.96.0.2"),
        "{svc}"
    );
    let clash = up.fails(&[
        "-n",
        "demo",
        "create",
        "service",
        "nodeport",
        "web2",
        "--tcp=81:81",
        "--node-port=30080",
    ]);
    assert!(clash.contains("already allocated"), "{clash}");
    let range = up.fails(&[
        "-n",
        "demo",
        "create",
        "service",
        "nodeport",
        "web3",
        "--tcp=81:81",
        "--node-port=8080",
    ]);
    assert!(range.contains("30000-32767"), "{range}");

    // 409 on a stale resourceVersion.
    let cm: Value =
        serde_json::from_str(&up.ok(&["-n", "demo", "get", "cm", "watched", "-o", "json"]))
            .expect("json");
    up.ok(&["-n", "demo", "label", "cm", "watched", "bump=1"]);
    let (code, body) = up.curl(
        true,
        &[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/json",
            "-d",
            &cm.to_string(),
        ],
        "/api/v1/namespaces/demo/configmaps/watched",
    );
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("\"reason\":\"Conflict\""), "{body}");

    // Authentication and bad input.
    let (code, body) = up.curl(false, &[], "/api/v1/namespaces");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("\"kind\":\"Status\""), "{body}");
    assert_eq!(up.curl(false, &[], "/healthz"), (200, "ok".to_string()));
    // The scheduler's certificate gets what RBAC's system:kube-scheduler role grants.
    let scheduler = [
        "--cert",
        &up.pki("scheduler.crt"),
        "--key",
        &up.pki("scheduler.key"),
    ];
    let (code, body) = up.curl(false, &scheduler, "/api/v1/namespaces/demo/pods");
    assert_eq!(code, 200, "{body}");
    let (code, body) = up.curl(false, &scheduler, "/api/v1/namespaces/demo/secrets");
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("system:kube-scheduler")
            && body.contains(r#"cannot list resource \"secrets\""#)
            && body.contains(r#""reason":"Forbidden""#),
        "{body}"
    );
    let post = |body: &str| {
        up.curl(
            true,
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
            ],
            "/api/v1/namespaces/demo/configmaps",
        )
    };
    assert_eq!(post("{not json").0, 400);
    assert_eq!(
        post(r#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"s"}}"#).0,
        400
    );
    assert_eq!(post(r#"{"metadata":{"name":"Bad_Name"}}"#).0, 422);
    let big = format!(
        r#"{{"metadata":{{"name":"big"}},"data":{{"a":"{}"}}}}"#,
        "x".repeat(3 * 1024 * 1024 + 10)
    );
    let big_file = write(&up.dir, "big.json", &big);
    let (code, _) = up.curl(
        true,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("@{big_file}"),
        ],
        "/api/v1/namespaces/demo/configmaps",
    );
    assert_eq!(code, 413);

    assert_eq!(up.ok(&["auth", "can-i", "create", "pods"]).trim(), "yes");
    up.ok(&[
        "-n",
        "demo",
        "create",
        "secret",
        "generic",
        "pw",
        "--from-literal=p=hunter2",
    ]);
    assert_eq!(
        up.ok(&[
            "-n",
            "demo",
            "get",
            "secret",
            "pw",
            "-o",
            "jsonpath={.data.p}"
        ]),
        "aHVudGVyMg=="
    );
    up.ok(&["-n", "demo", "create", "serviceaccount", "bot"]);
    up.ok(&[
        "-n",
        "demo",
        "create",
        "service",
        "clusterip",
        "headless",
        "--clusterip=None",
    ]);
    assert!(up
        .ok(&["-n", "demo", "get", "svc", "headless"])
        .contains("None"));
    assert!(up
        .ok(&["apply", "--server-side", "-f", &changed])
        .contains("serverside-applied"));
    // The `kubectl create <kind>` / `run` generators send protobuf bodies.
    up.ok(&[
        "-n",
        "demo",
        "run",
        "bb",
        "--image=busybox",
        "--",
        "sleep",
        "3600",
    ]);
    assert_eq!(
        up.ok(&[
            "-n",
            "demo",
            "get",
            "pod",
            "bb",
            "-o",
            "jsonpath={.spec.containers[0].args} {.status.phase}"
        ]),
        r#"["sleep","3600"] Pending"#
    );
    assert!(up.ok(&["-n", "demo", "get", "pods"]).contains("0/1"));
    up.ok(&[
        "-n",
        "demo",
        "create",
        "deployment",
        "api",
        "--image=nginx",
        "--replicas=2",
        "--port=8080",
    ]);
    assert_eq!(
        up.ok(&[
            "-n",
            "demo",
            "get",
            "deploy",
            "api",
            "-o",
            "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].ports[0].containerPort}"
        ]),
        "2 8080"
    );
    up.ok(&[
        "-n",
        "demo",
        "create",
        "job",
        "once",
        "--image=busybox",
        "--",
        "echo",
        "hi",
    ]);
    up.ok(&[
        "-n",
        "demo",
        "create",
        "cronjob",
        "tick",
        "--image=busybox",
        "--schedule=*/5 * * * *",
        "--",
        "date",
    ]);
    assert!(up
        .ok(&["-n", "demo", "get", "cronjobs"])
        .contains("*/5 * * * *"));
    up.ok(&[
        "create",
        "serviceaccount",
        "admin-user",
        "-n",
        "kube-system",
    ]);
    up.ok(&[
        "create",
        "clusterrolebinding",
        "admin-user",
        "--clusterrole=cluster-admin",
        "--serviceaccount=kube-system:admin-user",
    ]);
    assert_eq!(
        up.ok(&[
            "get",
            "clusterrolebinding",
            "admin-user",
            "-o",
            "jsonpath={.roleRef.name} {.subjects[0].namespace}"
        ]),
        "cluster-admin kube-system"
    );
    let resources = up.ok(&["api-resources"]);
    for want in [
        "deployments",
        "apps/v1",
        "configmaps",
        "cm",
        "leases",
        "certificatesigningrequests",
        "clusterrolebindings",
        "poddisruptionbudgets",
        "pdb",
        "policy/v1",
    ] {
        assert!(resources.contains(want), "{want} in {resources}");
    }
    // A kind served from its own file (PodDisruptionBudget): apply, columns, validation.
    let pdb = write(&up.dir, "pdb.yaml", PDB);
    assert!(up
        .ok(&["apply", "-f", &pdb])
        .contains("poddisruptionbudget.policy/web created"));
    let listed = up.ok(&["-n", "demo", "get", "pdb"]);
    assert!(
        listed.contains("MIN AVAILABLE")
            && listed.contains("MAX UNAVAILABLE")
            && listed
                .lines()
                .any(|l| l.starts_with("web") && l.contains("50%") && l.contains("N/A")),
        "{listed}"
    );
    let both = write(
        &up.dir,
        "pdb-both.yaml",
        &PDB.replace("minAvailable: 50%", "minAvailable: 1\n  maxUnavailable: 1"),
    );
    let refused = up.fails(&["apply", "-f", &both]);
    assert!(
        refused.contains("is invalid")
            && refused.contains("minAvailable and maxUnavailable cannot be both set"),
        "{refused}"
    );
    let pct = write(&up.dir, "pdb-pct.yaml", &PDB.replace("50%", "150%"));
    assert!(up
        .fails(&["apply", "-f", &pct])
        .contains("spec.minAvailable: Invalid value: \"150%\": must not be greater than 100%"));
    assert!(up
        .ok(&["explain", "pdb.spec.minAvailable"])
        .contains("minAvailable"));
    assert!(up
        .ok(&["-n", "demo", "delete", "cm", "cfg"])
        .contains("configmap \"cfg\" deleted"));
    assert!(up
        .fails(&["-n", "demo", "get", "cm", "cfg"])
        .contains("NotFound"));
    assert!(up.ok(&["delete", "namespace", "demo"]).contains("deleted"));
    assert!(up.ok(&["get", "deploy", "-A"]).is_empty());
    for ns in ["default", "kube-system", "kube-public"] {
        let err = up.fails(&["delete", "namespace", ns]);
        assert!(err.contains("this namespace may not be deleted"), "{err}");
    }
    assert!(up
        .ok(&["get", "namespace", "kube-system"])
        .contains("Active"));
}

/// What add-on manifests create besides workloads (ingress-nginx's class, a default
/// local-path StorageClass, a CSI driver, a RuntimeClass, a PriorityClass, network
/// policies, the seeds' CPU autoscaler), in one file as their READMEs apply them.
const ADDON_KINDS: &str = "apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: nginx
spec:
  controller: k8s.io/ingress-nginx
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local-path
  annotations:
    storageclass.kubernetes.io/is-default-class: \"true\"
provisioner: rancher.io/local-path
volumeBindingMode: WaitForFirstConsumer
---
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata:
  name: nfs.csi.k8s.io
spec:
  attachRequired: false
  volumeLifecycleModes: [Persistent]
---
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: gvisor
handler: runsc
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata:
  name: batch-low
value: -10
preemptionPolicy: Never
description: batch jobs that yield
---
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db-from-web
  namespace: shop
spec:
  podSelector:
    matchLabels: {app: db}
  ingress:
  - from:
    - podSelector:
        matchLabels: {app: web}
    ports:
    - port: 5432
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: php-apache
  namespace: shop
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: php-apache
  minReplicas: 1
  maxReplicas: 10
  metrics:
  - type: Resource
    resource:
      name: cpu
      target:
        type: Utilization
        averageUtilization: 50
";

#[test]
fn add_on_kinds_apply_print_explain_and_refuse_like_kube_apiserver() {
    let up = Up::start("memory");
    let file = write(&up.dir, "addons.yaml", ADDON_KINDS);
    let applied = up.ok(&["apply", "-f", &file]);
    for want in [
        "ingressclass.networking.k8s.io/nginx created",
        "storageclass.storage.k8s.io/local-path created",
        "csidriver.storage.k8s.io/nfs.csi.k8s.io created",
        "runtimeclass.node.k8s.io/gvisor created",
        "priorityclass.scheduling.k8s.io/batch-low created",
        "networkpolicy.networking.k8s.io/db-from-web created",
        "horizontalpodautoscaler.autoscaling/php-apache created",
    ] {
        assert!(applied.contains(want), "{want} in {applied}");
    }
    let resources = up.ok(&["api-resources"]);
    for want in [
        "ingressclasses",
        "netpol",
        "hpa",
        "autoscaling/v2",
        "pc",
        "sc",
        "csidrivers",
        "runtimeclasses",
    ] {
        assert!(resources.contains(want), "{want} in {resources}");
    }
    // Namespace policy kinds: a quota (printed used/hard), a LimitRange whose container
    // defaults and bounds apply to new pods, and a PodTemplate.
    let policy = write(
        &up.dir,
        "policy.yaml",
        "apiVersion: v1
kind: ResourceQuota
metadata: {name: team, namespace: default}
spec:
  hard: {pods: \"10\", requests.cpu: \"4\", limits.memory: 8Gi}
---
apiVersion: v1
kind: LimitRange
metadata: {name: defaults, namespace: default}
spec:
  limits:
  - type: Container
    default: {cpu: 500m, memory: 256Mi}
    max: {cpu: \"1\"}
    min: {memory: 64Mi}
---
apiVersion: v1
kind: PodTemplate
metadata: {name: web, namespace: default}
template:
  metadata: {labels: {app: web}}
  spec:
    containers: [{name: web, image: nginx}]
",
    );
    up.ok(&["apply", "-f", &policy]);
    let quota = up.ok(&["get", "quota", "team"]);
    assert!(quota.contains("pods: 0/10, requests.cpu: 0/4"), "{quota}");
    assert!(quota.contains("limits.memory: 0/8Gi"), "{quota}");
    let limits = up.ok(&["get", "limits", "defaults", "-o", "json"]);
    assert!(limits.contains("\"defaultRequest\""), "defaulted: {limits}");
    assert!(up.ok(&["get", "podtemplates"]).contains("app=web"));
    up.ok(&["run", "bare", "--image=nginx", "--restart=Never"]);
    let pod = up.ok(&[
        "get",
        "pod",
        "bare",
        "-o",
        "jsonpath={.spec.containers[0].resources}",
    ]);
    assert!(
        pod.contains("\"cpu\":\"500m\"") && pod.contains("\"memory\":\"256Mi\""),
        "{pod}"
    );
    let err = up.fails(&["run", "greedy", "--image=nginx", "--restart=Never", "--overrides",
        r#"{"spec":{"containers":[{"name":"greedy","image":"nginx","resources":{"limits":{"cpu":"2"}}}]}}"#]);
    assert!(
        err.contains("maximum cpu usage per Container is 1, but limit is 2"),
        "{err}"
    );
    let bad = write(&up.dir, "bad-lr.yaml", "apiVersion: v1\nkind: LimitRange\nmetadata: {name: bad}\nspec:\n  limits: [{type: Container, min: {cpu: \"2\"}, max: {cpu: \"1\"}}]\n");
    assert!(up
        .fails(&["apply", "-f", &bad])
        .contains("min value 2 is greater than max value 1"));
    // kubectl's columns, with the defaults kube-apiserver fills in.
    let sc = up.ok(&["get", "sc"]);
    assert!(
        sc.contains("RECLAIMPOLICY") && sc.contains("VOLUMEBINDINGMODE"),
        "{sc}"
    );
    assert!(
        sc.lines().any(|l| l.starts_with("local-path (default)")
            && l.contains("rancher.io/local-path")
            && l.contains("Delete")
            && l.contains("WaitForFirstConsumer")),
        "{sc}"
    );
    let ic = up.ok(&["get", "ingressclass"]);
    assert!(
        ic.lines().any(|l| l.starts_with("nginx")
            && l.contains("k8s.io/ingress-nginx")
            && l.contains("<none>")),
        "{ic}"
    );
    let pc = up.ok(&["get", "pc"]);
    assert!(pc.contains("PREEMPTIONPOLICY"), "{pc}");
    assert!(
        pc.lines()
            .any(|l| l.starts_with("batch-low") && l.contains("-10") && l.contains("Never")),
        "{pc}"
    );
    let csi = up.ok(&["get", "csidriver"]);
    assert!(
        csi.lines().any(|l| l.starts_with("nfs.csi.k8s.io")
            && l.contains("false")
            && l.contains("Persistent")),
        "{csi}"
    );
    assert!(up.ok(&["get", "runtimeclass"]).contains("runsc"));
    let netpol = up.ok(&["-n", "shop", "get", "netpol"]);
    assert!(
        netpol
            .lines()
            .any(|l| l.starts_with("db-from-web") && l.contains("app=db")),
        "{netpol}"
    );
    let np = up.ok(&[
        "-n",
        "shop",
        "get",
        "netpol",
        "db-from-web",
        "-o",
        "jsonpath={.spec.policyTypes} {.spec.ingress[0].ports[0].protocol}",
    ]);
    assert_eq!(np, "[\"Ingress\"] TCP");
    let hpa = up.ok(&["-n", "shop", "get", "hpa"]);
    assert!(
        hpa.contains("REFERENCE") && hpa.contains("TARGETS"),
        "{hpa}"
    );
    assert!(
        hpa.lines().any(|l| l.starts_with("php-apache")
            && l.contains("Deployment/php-apache")
            && l.contains("cpu: <unknown>/50%")),
        "{hpa}"
    );
    assert!(up
        .ok(&["-n", "shop", "get", "all"])
        .contains("horizontalpodautoscaler.autoscaling/php-apache"));
    assert!(up
        .ok(&["explain", "hpa.spec.maxReplicas"])
        .contains("maxReplicas"));
    assert!(up
        .ok(&["explain", "storageclass.volumeBindingMode"])
        .contains("volumeBindingMode"));

    // kube-apiserver's refusals, with the field and the reason.
    let changed = write(
        &up.dir,
        "sc2.yaml",
        &ADDON_KINDS.replace("rancher.io/local-path", "example.com/other"),
    );
    let refused = up.fails(&["apply", "-f", &changed]);
    assert!(
        refused.contains("provisioner: Forbidden: updates to provisioner are forbidden."),
        "{refused}"
    );
    let bad_hpa = write(
        &up.dir,
        "hpa.yaml",
        &ADDON_KINDS.replace("minReplicas: 1", "minReplicas: 20"),
    );
    let refused = up.fails(&["apply", "-f", &bad_hpa]);
    assert!(
        refused.contains(
            "spec.maxReplicas: Invalid value: 10: must be greater than or equal to `minReplicas`"
        ),
        "{refused}"
    );
    let system = write(&up.dir, "pc.yaml", "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata:\n  name: system-mine\nvalue: 5\n");
    let reserved = up.fails(&["apply", "-f", &system]);
    assert!(
        reserved.contains("reserved for system use only"),
        "{reserved}"
    );
    let cidr = up.fails(&[
        "-n",
        "shop",
        "patch",
        "netpol",
        "db-from-web",
        "--type=merge",
        "-p",
        r#"{"spec":{"egress":[{"to":[{"ipBlock":{"cidr":"10.0.0.0/33"}}]}]}}"#,
    ]);
    assert!(
        cidr.contains("spec.egress[0].to[0].ipBlock.cidr: Invalid value: \"10.0.0.0/33\""),
        "{cidr}"
    );
    // Pods get their class's priority (and the system classes exist); an unknown class
    // is refused.
    assert!(
        pc.contains("system-cluster-critical") && pc.contains("2000000000"),
        "{pc}"
    );
    let pod = |name: &str, class: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n  priorityClassName: {class}\n  containers:\n  - name: c\n    image: busybox\n"
        )
    };
    for (name, class, want) in [
        ("low", "batch-low", "-10 Never"),
        (
            "critical",
            "system-cluster-critical",
            "2000000000 PreemptLowerPriority",
        ),
    ] {
        let f = write(&up.dir, &format!("{name}.yaml"), &pod(name, class));
        up.ok(&["apply", "-f", &f]);
        let got = up.ok(&[
            "-n",
            "shop",
            "get",
            "pod",
            name,
            "-o",
            "jsonpath={.spec.priority} {.spec.preemptionPolicy}",
        ]);
        assert_eq!(got, want);
    }
    let f = write(&up.dir, "nope.yaml", &pod("nope", "no-such-class"));
    let refused = up.fails(&["apply", "-f", &f]);
    assert!(
        refused.contains("no PriorityClass with name no-such-class was found"),
        "{refused}"
    );
    // The namespace's own deletion may take its objects first.
    let deleted = up.ok(&["delete", "-f", &file, "--ignore-not-found"]);
    assert!(
        deleted.contains("storageclass.storage.k8s.io \"local-path\" deleted"),
        "{deleted}"
    );
    assert!(up
        .ok(&["get", "sc,pc,ingressclass"])
        .lines()
        .all(|l| !l.contains("local-path") && !l.contains("batch-low") && !l.contains("nginx")));
}

#[test]
fn kubectl_drives_kimg_up_on_the_memory_store() {
    let mut up = Up::start("memory");
    kubectl_session(&up);
    // SIGTERM stops the server cleanly.
    let pid = up.child.id().to_string();
    common::tool_ok("kill", &["-TERM", &pid]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = up.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "kimg up did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

/// Debian's etcd serving mutual TLS on loopback with the cluster's own etcd certificates
/// (the member `node-1` of the default cluster), killed on drop.
struct ClusterEtcd(Child);

impl Drop for ClusterEtcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl ClusterEtcd {
    fn start(dir: &std::path::Path, data: &std::path::Path) -> (ClusterEtcd, String) {
        let pki = dir.join("secrets/pki/etcd");
        let p = |rel: &str| pki.join(rel).to_str().expect("utf-8").to_string();
        let client = format!("https://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let child = Command::new("etcd")
            .args([
                "--name=node-1",
                &format!("--data-dir={}", data.display()),
                &format!("--listen-client-urls={client}"),
                &format!("--advertise-client-urls={client}"),
                &format!("--listen-peer-urls={peer}"),
                &format!("--initial-advertise-peer-urls={peer}"),
                &format!("--initial-cluster=node-1={peer}"),
                &format!("--cert-file={}", p("node-1/server.crt")),
                &format!("--key-file={}", p("node-1/server.key")),
                &format!("--trusted-ca-file={}", p("ca.crt")),
                "--client-cert-auth=true",
                "--log-level=error",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (etcd-server package)");
        // Ready once it accepts TLS connections.
        let addr = client.trim_start_matches("https://").to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "etcd did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(100));
        }
        (ClusterEtcd(child), client)
    }
}

#[test]
fn kubectl_drives_kimg_up_on_etcd_over_mutual_tls_with_a_kimg_kubeconfig() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("dev");
    let dir_s = dir.to_str().expect("utf-8").to_string();
    kimg_ok(tmp.path(), &["cluster", "new", &dir_s]);
    let (etcd, url) = ClusterEtcd::start(&dir, &tmp.path().join("etcd-data"));
    let data_dir = tmp.path().join("etcd-data");
    let mut up = Up::start_in(tmp, dir, &format!("etcd={url}"));
    // The kubeconfig a user gets from `kimg kubeconfig`, not the one `kimg up` wrote.
    let kc = up.dir.join("user.conf");
    kimg_ok(
        &up.dir,
        &[
            "kubeconfig",
            &dir_s,
            "--server",
            &up.url,
            "-o",
            kc.to_str().expect("utf-8"),
        ],
    );
    up.kubeconfig = kc;
    kubectl_session(&up);
    // The objects really are in that etcd: its data directory holds a member.
    assert!(data_dir.join("member").is_dir());
    drop(up);
    drop(etcd);
}
