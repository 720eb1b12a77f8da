//! Authentication and RBAC of `kimg up`, judged by the real `kubectl` (the one on PATH)
//! and `curl`:
//! bootstrap tokens from `tokens.toml` (valid, expired), no credentials, service-account
//! tokens from `kubectl create token`, RBAC limits, `kubectl auth can-i` (also `--as`),
//! the dashboard admin-user manifest, and the subresources the node side uses (binding,
//! graceful deletion), `kubectl explain` and strict field validation. Needs the `kubectl`
//! and `curl` packages.

#[macro_use]
mod common;

use std::process::{Command, Output};

use common::kimg_ok;

const TOKEN: &str = "abcdef.0123456789abcdef";
const EXPIRED: &str = "zzzzzz.0123456789abcdef";

up_handle!(Up);

impl Up {
    fn start() -> Up {
        Self::start_with(&[])
    }

    /// `kimg up` with extra flags.
    fn start_with(extra: &[&str]) -> Up {
        let (tmp, dir) = common::new_cluster();
        std::fs::write(
            dir.join("secrets/tokens.toml"),
            r#"[[token]]
id = "abcdef"
secret = "0123456789abcdef"
usages = ["authentication", "signing"]
groups = ["system:bootstrappers:kubeadm:default-node-token"]

[[token]]
id = "zzzzzz"
secret = "0123456789abcdef"
expires = "2020-01-01T00:00:00Z"
usages = ["authentication", "signing"]
groups = ["system:bootstrappers:kubeadm:default-node-token"]
"#,
        )
        .expect("write tokens");
        Up(common::Up::start(tmp, dir, extra))
    }

    fn ca(&self) -> String {
        self.dir.join("secrets/pki/ca.crt").display().to_string()
    }

    /// kubectl as the admin (`token: None`) or with a bearer token and no certificate.
    fn kubectl(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = Command::new("kubectl");
        match token {
            None => {
                cmd.arg("--kubeconfig").arg(&self.kubeconfig);
            }
            Some(t) => {
                let empty = self.tmp.path().join("empty.conf");
                std::fs::write(&empty, "apiVersion: v1\nkind: Config\n").expect("write");
                cmd.arg("--kubeconfig")
                    .arg(empty)
                    .args(["--server", &self.url, "--certificate-authority"])
                    .arg(self.ca())
                    .args(["--token", t]);
            }
        }
        cmd.args(args).output().expect("run kubectl")
    }

    fn ok(&self, token: Option<&str>, args: &[&str]) -> String {
        common::checked_ok(args, self.kubectl(token, args))
    }

    fn fails(&self, token: Option<&str>, args: &[&str]) -> String {
        let out = self.kubectl(token, args);
        assert!(!out.status.success(), "kubectl {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `can-i` prints yes/no and exits non-zero for no.
    fn can_i(&self, token: Option<&str>, args: &[&str]) -> String {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        let out = self.kubectl(token, &all);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `curl` with the cluster CA and extra arguments; returns (code, body).
    fn curl(&self, args: &[&str], path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                "--cacert",
                &self.ca(),
            ])
            .args(args)
            .arg(format!("{}{path}", self.url))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').expect("status line");
        (code.trim().parse().expect("http code"), body.to_string())
    }

    /// kubectl with a client certificate for `system:node:<node>` (what a kubelet holds),
    /// signed by the cluster CA.
    fn as_node(&self, node: &str, args: &[&str]) -> Output {
        let pki = self.dir.join("secrets/pki");
        let read = |f: &str| std::fs::read_to_string(pki.join(f)).expect("read CA");
        let ca =
            kimg::pki::issue::Authority::from_pem(&read("ca.crt"), &read("ca.key")).expect("CA");
        let (cert, key) = kimg::pki::issue::new_leaf(
            &ca,
            &format!("system:node:{node}"),
            &["system:nodes"],
            &[],
            kimg::pki::issue::Usage::Client,
        )
        .expect("node cert");
        let (crt, k) = (
            self.tmp.path().join(format!("{node}.crt")),
            self.tmp.path().join(format!("{node}.key")),
        );
        std::fs::write(&crt, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        let empty = self.tmp.path().join("empty.conf");
        std::fs::write(&empty, "apiVersion: v1\nkind: Config\n").expect("write");
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(empty)
            .args(["--server", &self.url, "--certificate-authority"])
            .arg(self.ca())
            .arg("--client-certificate")
            .arg(crt)
            .arg("--client-key")
            .arg(k)
            .args(args)
            .output()
            .expect("run kubectl")
    }

    fn apply(&self, token: Option<&str>, name: &str, yaml: &str) -> String {
        let p = self.tmp.path().join(name);
        std::fs::write(&p, yaml).expect("write manifest");
        self.ok(token, &["apply", "-f", p.to_str().expect("utf-8")])
    }
}

const CSR: &str = "apiVersion: certificates.k8s.io/v1
kind: CertificateSigningRequest
metadata:
  name: node-csr-test
spec:
  request: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURSBSRVFVRVNULS0tLS0KLS0tLS1FTkQgQ0VSVElGSUNBVEUgUkVRVUVTVC0tLS0tCg==
  signerName: kubernetes.io/kube-apiserver-client-kubelet
  usages: [digital signature, client auth]
";

const ADMIN_USER: &str = "apiVersion: v1
kind: ServiceAccount
metadata:
  name: admin-user
  namespace: kubernetes-dashboard
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: admin-user
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: cluster-admin
subjects:
- kind: ServiceAccount
  name: admin-user
  namespace: kubernetes-dashboard
";

#[test]
fn tokens_service_accounts_and_rbac_are_enforced_by_kimg_up_for_kubectl() {
    let up = Up::start();

    // No credentials, a bad token and an expired bootstrap token: 401 Status.
    for args in [
        vec![],
        vec!["-H", "Authorization: Bearer abcdef.0123456789abcdee"],
        vec!["-H", "Authorization: Bearer zzzzzz.0123456789abcdef"],
        vec!["-H", "Authorization: Bearer not-a-jwt"],
    ] {
        let (code, body) = up.curl(&args, "/api/v1/namespaces");
        assert_eq!(code, 401, "{args:?}: {body}");
        assert!(body.contains(r#""kind":"Status""#), "{body}");
    }
    let expired = up.fails(Some(EXPIRED), &["get", "csr"]);
    assert!(expired.contains("must be logged in"), "{expired}");

    // The bootstrap token may create and read CSRs, nothing else.
    up.apply(Some(TOKEN), "csr.yaml", CSR);
    assert!(up
        .ok(Some(TOKEN), &["get", "csr"])
        .contains("node-csr-test"));
    let denied = up.fails(Some(TOKEN), &["-n", "kube-system", "get", "secrets"]);
    assert!(
        denied.contains("Forbidden")
            && denied.contains("system:bootstrap:abcdef")
            && denied.contains("cannot list resource \"secrets\""),
        "{denied}"
    );
    assert_eq!(up.can_i(Some(TOKEN), &["create", "csr"]), "yes");
    assert_eq!(up.can_i(Some(TOKEN), &["list", "secrets", "-A"]), "no");
    assert_eq!(up.can_i(Some(TOKEN), &["delete", "csr"]), "no");
    let whoami = |as_: &[&str], what: &[&str]| {
        let mut args: Vec<&str> = what.to_vec();
        args.extend_from_slice(as_);
        up.can_i(None, &args)
    };
    let bootstrapper = [
        "--as",
        "system:bootstrap:abcdef",
        "--as-group",
        "system:bootstrappers",
    ];
    assert_eq!(whoami(&bootstrapper, &["create", "csr"]), "yes");
    assert_eq!(whoami(&bootstrapper, &["get", "nodes"]), "no");
    assert_eq!(
        up.can_i(None, &["delete", "nodes"]),
        "yes",
        "the admin is a master"
    );

    // The dashboard admin-user manifest applies and its token is cluster-admin.
    up.ok(None, &["create", "namespace", "kubernetes-dashboard"]);
    up.apply(None, "admin-user.yaml", ADMIN_USER);
    let admin_token = up.ok(
        None,
        &[
            "-n",
            "kubernetes-dashboard",
            "create",
            "token",
            "admin-user",
        ],
    );
    let admin_token = admin_token.trim();
    assert_eq!(admin_token.split('.').count(), 3, "a JWT: {admin_token}");
    assert!(up
        .ok(Some(admin_token), &["-n", "kube-system", "get", "secrets"])
        .contains("bootstrap-token-abcdef"));

    // A service account bound to `view` in one namespace reads there and nowhere else.
    up.ok(None, &["create", "serviceaccount", "reader"]);
    up.ok(
        None,
        &[
            "create",
            "rolebinding",
            "reader-view",
            "--clusterrole=view",
            "--serviceaccount=default:reader",
        ],
    );
    let reader = up.ok(None, &["create", "token", "reader"]);
    let reader = reader.trim();
    up.ok(Some(reader), &["get", "pods"]);
    up.ok(None, &["create", "configmap", "cfg", "--from-literal=a=b"]);
    assert!(up.ok(Some(reader), &["get", "cm"]).contains("cfg"));
    assert!(up
        .fails(Some(reader), &["-n", "kube-system", "get", "pods"])
        .contains("Forbidden"));
    let denied = up.fails(
        Some(reader),
        &["create", "configmap", "x", "--from-literal=a=b"],
    );
    assert!(denied.contains("forbidden"), "{denied}");
    assert_eq!(up.can_i(Some(reader), &["list", "pods"]), "yes");
    assert_eq!(up.can_i(Some(reader), &["delete", "pods"]), "no");
    assert_eq!(
        whoami(
            &["--as", "system:serviceaccount:default:reader"],
            &["get", "secrets"]
        ),
        "no"
    );
    // Deleting the service account revokes its tokens.
    up.ok(None, &["delete", "serviceaccount", "reader"]);
    let revoked = up.fails(Some(reader), &["get", "pods"]);
    assert!(revoked.contains("must be logged in"), "{revoked}");
}

#[test]
fn the_scheduler_binds_pods_once_and_bound_pods_are_deleted_gracefully() {
    let up = Up::start();
    up.ok(None, &["run", "p", "--image=busybox", "--", "sleep", "60"]);
    let scheduler = [
        "--cert",
        &up.dir
            .join("secrets/pki/scheduler.crt")
            .display()
            .to_string(),
        "--key",
        &up.dir
            .join("secrets/pki/scheduler.key")
            .display()
            .to_string(),
    ]
    .map(|s| s.to_string());
    let scheduler: Vec<&str> = scheduler.iter().map(String::as_str).collect();
    let bind = |node: &str| {
        let body = format!(
            r#"{{"apiVersion":"v1","kind":"Binding","metadata":{{"name":"p"}},"target":{{"kind":"Node","name":"{node}"}}}}"#
        );
        let mut args = scheduler.clone();
        args.extend([
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
        ]);
        up.curl(&args, "/api/v1/namespaces/default/pods/p/binding")
    };
    let (code, body) = bind("n1");
    assert_eq!(code, 201, "{body}");
    let (code, body) = bind("n2");
    assert_eq!(code, 409, "{body}");
    assert_eq!(
        up.ok(
            None,
            &["get", "pod", "p", "-o", "jsonpath={.spec.nodeName}"]
        ),
        "n1"
    );
    // A bound pod is only marked; the kubelet's grace-0 delete removes it.
    up.ok(None, &["delete", "pod", "p", "--wait=false"]);
    assert_eq!(
        up.ok(
            None,
            &[
                "get",
                "pod",
                "p",
                "-o",
                "jsonpath={.metadata.deletionGracePeriodSeconds}"
            ]
        ),
        "30"
    );
    up.ok(None, &["delete", "pod", "p", "--grace-period=0", "--force"]);
    assert!(up.fails(None, &["get", "pod", "p"]).contains("NotFound"));
}

#[test]
fn kubectl_explains_pod_spec_and_strict_validation_refuses_unknown_fields() {
    let up = Up::start();
    let explained = up.ok(None, &["explain", "pod.spec"]);
    assert!(
        explained.contains("KIND:")
            && explained.contains("Pod")
            && explained.contains("containers"),
        "{explained}"
    );
    let field = up.ok(None, &["explain", "deployment.spec.replicas"]);
    assert!(field.contains("integer"), "{field}");
    let typo = "apiVersion: v1
kind: ConfigMap
metadata:
  name: typo
data: {a: b}
dta: {c: d}
";
    let p = up.tmp.path().join("typo.yaml");
    std::fs::write(&p, typo).expect("write");
    let err = up.fails(None, &["apply", "-f", p.to_str().expect("utf-8")]);
    assert!(
        err.contains("unknown field") && err.contains("dta"),
        "{err}"
    );
    up.ok(
        None,
        &[
            "apply",
            "--validate=false",
            "-f",
            p.to_str().expect("utf-8"),
        ],
    );
}

const PYTHON_CLIENT: &str = r#"
import sys, threading
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py", labels={"from": "python"}),
                          data={"a": "1"})
created = v1.create_namespaced_config_map("default", body)
got = v1.read_namespaced_config_map("py", "default")
assert got.data == {"a": "1"}, got.data
listed = v1.list_namespaced_config_map("default", label_selector="from=python")
assert [c.metadata.name for c in listed.items] == ["py"]

seen = []
def follow():
    w = watch.Watch()
    for ev in w.stream(v1.list_namespaced_config_map, "default", label_selector="from=python",
                       resource_version=listed.metadata.resource_version, timeout_seconds=10):
        seen.append((ev["type"], ev["object"].data))
        if ev["type"] == "DELETED":
            w.stop()
t = threading.Thread(target=follow)
t.start()

got.data = {"a": "2"}
updated = v1.replace_namespaced_config_map("py", "default", got)
stale = got
stale.metadata.resource_version = created.metadata.resource_version
stale.data = {"a": "3"}
try:
    v1.replace_namespaced_config_map("py", "default", stale)
    sys.exit("a stale update must conflict")
except ApiException as e:
    assert e.status == 409, e.status
v1.patch_namespaced_config_map("py", "default", {"data": {"b": "x"}})
v1.delete_namespaced_config_map("py", "default")
t.join(20)
kinds = [k for k, _ in seen]
assert kinds == ["MODIFIED", "MODIFIED", "DELETED"], seen
print("python client ok")
"#;

#[test]
fn the_python_kubernetes_client_does_crud_watch_and_conflicts_with_a_venv_from_pypi() {
    let up = Up::start();
    let venv = up.tmp.path().join("venv");
    common::tool_ok("python3", &["-m", "venv", venv.to_str().expect("utf-8")]);
    let pip = venv.join("bin/pip");
    let out = Command::new(&pip)
        .args(["install", "-q", "kubernetes"])
        .output()
        .expect("run pip");
    assert!(
        out.status.success(),
        "pip install kubernetes (PyPI): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = up.tmp.path().join("client.py");
    std::fs::write(&script, PYTHON_CLIENT).expect("write script");
    let out = Command::new(venv.join("bin/python"))
        .arg(&script)
        .arg(&up.kubeconfig)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("python client ok"));
}

const NODE_WORLD: &str = "apiVersion: v1
kind: Node
metadata:
  name: w0
---
apiVersion: v1
kind: Node
metadata:
  name: w1
---
apiVersion: v1
kind: Secret
metadata:
  name: db
  namespace: kube-system
stringData:
  password: hunter2
---
apiVersion: v1
kind: Secret
metadata:
  name: app-secret
  namespace: default
stringData:
  key: value
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: app
  namespace: default
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: other
  namespace: default
---
apiVersion: v1
kind: Pod
metadata:
  name: p0
  namespace: default
spec:
  nodeName: w0
  serviceAccountName: app
  containers:
  - name: c
    image: busybox
    command: [sleep, 1d]
    volumeMounts: [{name: s, mountPath: /s}]
  volumes:
  - name: s
    secret: {secretName: app-secret}
";

const EVERYTHING_ROLE: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: everything
  namespace: team
rules:
- apiGroups: ['*']
  resources: ['*']
  verbs: ['*']
";

const VIP_LEASE: &str = "apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: kimg-vip
  namespace: kube-system
spec:
  holderIdentity: w0
";

/// Issue 13: a kubelet's identity reaches only what its pods use, and a namespace admin
/// cannot grant more than it holds.
#[test]
fn nodes_and_namespace_admins_cannot_take_over_the_cluster() {
    let up = Up::start();
    up.apply(None, "world.yaml", NODE_WORLD);

    // The node w0 reads the Secret its pod mounts, and nothing else.
    let node = |args: &[&str]| up.as_node("w0", args);
    let ok = |out: Output, what: &str| {
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let refused = |out: Output, what: &str| {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success() && err.to_lowercase().contains("forbidden"),
            "{what} must be refused: {err}"
        );
    };
    ok(
        node(&["get", "secret", "app-secret", "-n", "default"]),
        "its pod's Secret",
    );
    refused(
        node(&["get", "secret", "db", "-n", "kube-system"]),
        "an unrelated Secret",
    );
    refused(node(&["get", "secrets", "-A"]), "listing Secrets");
    ok(
        node(&["label", "node", "w0", "disk=ssd"]),
        "labelling itself",
    );
    refused(
        node(&["label", "node", "w1", "disk=ssd"]),
        "labelling another Node",
    );
    ok(
        node(&["create", "token", "app", "-n", "default"]),
        "a token for its pod's account",
    );
    refused(
        node(&["create", "token", "other", "-n", "default"]),
        "a token for a foreign service account",
    );
    refused(
        node(&["create", "token", "default", "-n", "kube-system"]),
        "a token for kube-system/default",
    );
    let lease = up.tmp.path().join("vip.yaml");
    std::fs::write(&lease, VIP_LEASE).expect("write");
    refused(
        node(&["apply", "-f", lease.to_str().expect("utf-8")]),
        "writing the VIP Lease",
    );
    refused(
        node(&["delete", "node", "w1", "--wait=false"]),
        "deleting another Node",
    );

    // A service account that is admin of its namespace cannot bind cluster-admin.
    up.ok(None, &["create", "namespace", "team"]);
    up.ok(None, &["create", "serviceaccount", "boss", "-n", "team"]);
    up.ok(
        None,
        &[
            "create",
            "rolebinding",
            "boss-admin",
            "--clusterrole=admin",
            "--serviceaccount=team:boss",
            "-n",
            "team",
        ],
    );
    let boss = up.ok(None, &["create", "token", "boss", "-n", "team"]);
    let boss = Some(boss.trim());
    let err = up.fails(
        boss,
        &[
            "create",
            "rolebinding",
            "grab",
            "--clusterrole=cluster-admin",
            "--serviceaccount=team:boss",
            "-n",
            "team",
        ],
    );
    assert!(
        err.contains("attempting to grant RBAC permissions not currently held"),
        "{err}"
    );
    let err = up.fails(
        boss,
        &[
            "create",
            "role",
            "everything",
            "--verb=*",
            "--resource=*",
            "-n",
            "team",
        ],
    );
    assert!(err.contains("not currently held"), "{err}");
    let role = up.tmp.path().join("everything.yaml");
    std::fs::write(&role, EVERYTHING_ROLE).expect("write");
    let err = up.fails(boss, &["apply", "-f", role.to_str().expect("utf-8")]);
    assert!(err.contains("not currently held"), "{err}");
    assert!(up
        .fails(
            boss,
            &[
                "create",
                "clusterrolebinding",
                "grab",
                "--clusterrole=cluster-admin",
                "--serviceaccount=team:boss"
            ]
        )
        .to_lowercase()
        .contains("forbidden"));
    // What it holds, it may grant.
    up.ok(
        boss,
        &[
            "create",
            "role",
            "cm-reader",
            "--verb=get",
            "--resource=configmaps",
            "-n",
            "team",
        ],
    );
    up.ok(
        boss,
        &[
            "create",
            "rolebinding",
            "readers",
            "--role=cm-reader",
            "--serviceaccount=team:boss",
            "-n",
            "team",
        ],
    );
    assert_eq!(
        up.can_i(boss, &["create", "clusterrolebindings"]),
        "no",
        "nothing it did widened its rights"
    );

    // `kimg token delete --kubeconfig` revokes a bootstrap token in the running cluster.
    up.ok(Some(TOKEN), &["get", "csr"]);
    let out = kimg_ok(
        up.tmp.path(),
        &[
            "token",
            "delete",
            up.dir.to_str().expect("utf-8"),
            "abcdef",
            "--kubeconfig",
            up.kubeconfig.to_str().expect("utf-8"),
        ],
    );
    assert!(out.contains("the cluster refuses the token"), "{out}");
    let err = up.fails(Some(TOKEN), &["get", "csr"]);
    assert!(err.contains("must be logged in"), "{err}");
}

/// Pod Security with the real kubectl: `baseline` by default (a privileged pod or a
/// hostPath volume is refused with kube-apiserver's message, admins included), the
/// namespace label raises or lowers the level, `kube-system` is privileged, unknown levels
/// are refused.
#[test]
fn pod_security_enforces_baseline_by_default_and_the_namespace_label_decides() {
    let up = Up::start();
    let privileged = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"root"},
        "spec":{"containers":[{"name":"c","image":"busybox","securityContext":{"privileged":true}}],
        "volumes":[{"name":"host","hostPath":{"path":"/"}}]}}"#;
    let apply = |ns: &str, body: &str| {
        let file = up.tmp.path().join(format!("pod-{ns}.json"));
        std::fs::write(&file, body).expect("write pod");
        let file = file.display().to_string();
        up.kubectl(None, &["-n", ns, "create", "-f", &file])
    };
    let out = apply("default", privileged);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "a privileged pod was admitted");
    assert!(
        err.contains(r#"pods "root" is forbidden: violates PodSecurity "baseline:latest""#)
            && err.contains(
                r#"privileged (container "c" must not set securityContext.privileged=true)"#
            )
            && err.contains(r#"hostPath volumes (volume "host")"#),
        "{err}"
    );
    // A plain pod is fine at baseline; kube-system runs privileged agents.
    up.ok(
        None,
        &["run", "plain", "--image=busybox", "--", "sleep", "60"],
    );
    assert!(apply("kube-system", privileged).status.success());

    up.ok(None, &["create", "namespace", "agents"]);
    up.ok(
        None,
        &[
            "label",
            "namespace",
            "agents",
            "pod-security.kubernetes.io/enforce=privileged",
        ],
    );
    assert!(apply("agents", privileged).status.success());

    up.ok(None, &["create", "namespace", "tight"]);
    up.ok(
        None,
        &[
            "label",
            "namespace",
            "tight",
            "pod-security.kubernetes.io/enforce=restricted",
        ],
    );
    let err = up.fails(None, &["-n", "tight", "run", "plain", "--image=busybox"]);
    assert!(
        err.contains(r#"violates PodSecurity "restricted:latest""#)
            && err.contains("allowPrivilegeEscalation != false"),
        "{err}"
    );
    let err = up.fails(
        None,
        &[
            "label",
            "namespace",
            "tight",
            "--overwrite",
            "pod-security.kubernetes.io/enforce=strict",
        ],
    );
    assert!(err.contains(r#"The Namespace "tight" is invalid"#), "{err}");

    // Warnings: a workload whose pods would be refused, and a pod below the warn level.
    let deploy = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"rooted"},
        "spec":{"selector":{"matchLabels":{"app":"r"}},"template":{"metadata":{"labels":{"app":"r"}},
        "spec":{"containers":[{"name":"c","image":"busybox","securityContext":{"privileged":true}}]}}}}"#;
    let out = apply("default", deploy);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "the Deployment itself is admitted: {err}"
    );
    assert!(
        err.contains(r#"Warning: would violate PodSecurity "baseline:latest": privileged"#),
        "{err}"
    );
    up.ok(None, &["create", "namespace", "watched"]);
    up.ok(
        None,
        &[
            "label",
            "namespace",
            "watched",
            "pod-security.kubernetes.io/warn=restricted",
        ],
    );
    let out = up.kubectl(None, &["-n", "watched", "run", "plain", "--image=busybox"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(r#"Warning: would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false"#),
        "{err}"
    );
    let level = up.ok(
        None,
        &[
            "get",
            "namespace",
            "tight",
            "-o",
            r"jsonpath={.metadata.labels.pod-security\.kubernetes\.io/enforce}",
        ],
    );
    assert_eq!(level, "restricted");
}

/// The audit log with the default policy, judged from what the real kubectl does: JSON
/// lines in kube-apiserver's format; a Secret's create is recorded without its contents,
/// a pod's create with its body, a forbidden request with its 403; Lease churn and probes
/// are not recorded; the file is private.
#[test]
fn the_audit_log_records_who_did_what_without_secret_contents() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = tmp.path().join("audit/audit.log");
    let up = Up::start_with(&["--audit-log-path", log.to_str().expect("utf-8")]);
    up.ok(
        None,
        &[
            "create",
            "secret",
            "generic",
            "db",
            "--from-literal=pw=open-sesame-42",
        ],
    );
    up.ok(
        None,
        &["run", "web", "--image=busybox", "--labels=audited=yes"],
    );
    up.ok(None, &["create", "serviceaccount", "nobody"]);
    let token = up.ok(None, &["create", "token", "nobody"]);
    up.fails(Some(token.trim()), &["get", "secrets"]);
    let _ = up.kubectl(None, &["get", "--raw", "/readyz"]);

    let mut events = Vec::new();
    for _ in 0..50 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        events = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
            .collect();
        if events.iter().any(|e| e["responseStatus"]["code"] == 403) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let find = |verb: &str, resource: &str| {
        events
            .iter()
            .find(|e| e["verb"] == verb && e["objectRef"]["resource"] == resource)
            .unwrap_or_else(|| panic!("no {verb} {resource} event in {events:#?}"))
    };
    let secret = find("create", "secrets");
    assert_eq!(secret["level"], "Metadata");
    assert_eq!(secret["user"]["username"], "kubernetes-admin");
    assert_eq!(secret["objectRef"]["namespace"], "default");
    assert_eq!(secret["responseStatus"]["code"], 201);
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        !text.contains("open-sesame-42"),
        "a secret's value reached the audit log"
    );
    let b64 = "b3Blbi1zZXNhbWUtNDI="; // base64 of the value
    assert!(
        !text.contains(b64),
        "a secret's value reached the audit log"
    );
    let pod = find("create", "pods");
    assert_eq!(pod["level"], "Request");
    assert_eq!(pod["requestObject"]["metadata"]["labels"]["audited"], "yes");
    let denied = find("list", "secrets");
    assert_eq!(denied["responseStatus"]["code"], 403);
    assert_eq!(
        denied["user"]["username"],
        "system:serviceaccount:default:nobody"
    );
    assert!(
        !events.iter().any(|e| e["objectRef"]["resource"] == "leases"
            || e["requestURI"]
                .as_str()
                .is_some_and(|u| u.starts_with("/readyz"))),
        "noise was recorded"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&log).expect("log").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn the_review_apis_answer_who_is_who_and_who_may_do_what() {
    let up = Up::start();
    // `kubectl auth whoami` (SelfSubjectReview) for the admin and a service account.
    let me: serde_json::Value =
        serde_json::from_str(&up.ok(None, &["auth", "whoami", "-o", "json"])).expect("json");
    assert_eq!(me["status"]["userInfo"]["username"], "kubernetes-admin");
    up.ok(
        None,
        &["create", "serviceaccount", "robot", "-n", "default"],
    );
    let token = up.ok(None, &["create", "token", "robot", "-n", "default"]);
    let token = token.trim();
    let me: serde_json::Value =
        serde_json::from_str(&up.ok(Some(token), &["auth", "whoami", "-o", "json"])).expect("json");
    assert_eq!(
        me["status"]["userInfo"]["username"],
        "system:serviceaccount:default:robot"
    );

    // `kubectl auth can-i --list` (SelfSubjectRulesReview): the robot holds only what
    // system:basic-user and discovery grant.
    let list = up.ok(Some(token), &["auth", "can-i", "--list", "-n", "default"]);
    assert!(
        list.contains("selfsubjectaccessreviews.authorization.k8s.io"),
        "{list}"
    );
    assert!(!list.contains("pods "), "{list}");

    // TokenReview: a valid token names its owner; a forged one is refused; only those
    // with `create tokenreviews` may ask.
    let review = |tok: &str| {
        format!(
            "apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec: {{token: {tok:?}}}\n"
        )
    };
    let file = up.tmp.path().join("review.yaml");
    std::fs::write(&file, review(token)).expect("write");
    let path = file.to_str().expect("utf-8");
    let answer: serde_json::Value =
        serde_json::from_str(&up.ok(None, &["create", "-f", path, "-o", "json"])).expect("json");
    assert_eq!(answer["status"]["authenticated"], true, "{answer}");
    assert_eq!(
        answer["status"]["user"]["username"],
        "system:serviceaccount:default:robot"
    );
    std::fs::write(&file, review(&format!("{token}x"))).expect("write");
    let answer: serde_json::Value =
        serde_json::from_str(&up.ok(None, &["create", "-f", path, "-o", "json"])).expect("json");
    assert_ne!(answer["status"]["authenticated"], true, "{answer}");
    assert!(answer["status"]["error"]
        .as_str()
        .is_some_and(|e| e.contains("invalid")));
    let err = up.fails(Some(token), &["create", "-f", path]);
    assert!(
        err.contains("cannot create resource \"tokenreviews\""),
        "{err}"
    );

    // SubjectAccessReview and LocalSubjectAccessReview about someone else, as an
    // aggregated server with system:auth-delegator asks them.
    let sar = |kind: &str, ns: &str| {
        format!(
            "apiVersion: authorization.k8s.io/v1\nkind: {kind}\nmetadata: {{namespace: {ns}}}\nspec:\n  user: system:serviceaccount:default:robot\n  groups: [system:serviceaccounts]\n  resourceAttributes: {{verb: list, resource: pods, namespace: default}}\n"
        )
    };
    let ask = |kind: &str, ns: &str| -> serde_json::Value {
        std::fs::write(&file, sar(kind, ns)).expect("write");
        serde_json::from_str(&up.ok(None, &["create", "-f", path, "-o", "json"])).expect("json")
    };
    assert_eq!(
        ask("SubjectAccessReview", "default")["status"]["allowed"],
        false
    );
    up.ok(
        None,
        &[
            "create",
            "rolebinding",
            "robot-view",
            "-n",
            "default",
            "--clusterrole=view",
            "--serviceaccount=default:robot",
        ],
    );
    let allowed = common::wait_for(10, "the binding to count", || {
        let a = ask("SubjectAccessReview", "default");
        (a["status"]["allowed"] == true).then_some(a)
    });
    assert_eq!(allowed["status"]["reason"], "allowed by RBAC");
    assert_eq!(
        ask("LocalSubjectAccessReview", "default")["status"]["allowed"],
        true
    );
    std::fs::write(&file, sar("LocalSubjectAccessReview", "kube-system")).expect("write");
    let err = up.fails(None, &["create", "-f", path]);
    assert!(err.contains("must match metadata.namespace"), "{err}");

    // Discovery lists them as create-only kinds.
    let resources = up.ok(
        None,
        &[
            "api-resources",
            "--api-group=authentication.k8s.io",
            "-o",
            "wide",
        ],
    );
    let row = resources
        .lines()
        .find(|l| l.starts_with("tokenreviews "))
        .unwrap_or_else(|| panic!("no tokenreviews: {resources}"));
    assert!(row.contains(" create"), "{row}");
    assert!(!row.contains("list"), "{row}");
}
