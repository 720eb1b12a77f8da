//! Every kubectl minor kimg supports, 1.30 through 1.37 (`kimg::KUBE_MINOR`), runs the
//! same session against one `kimg up`: version, discovery, explain, create (protobuf
//! bodies), client- and server-side apply, get, scale, label, the three patch types,
//! describe, delete. Each minor uses a discovery cache of its own, so each does its own
//! discovery from cold. The binaries are the static kubectls that `scripts/setup-host`
//! unpacks into `~/.cache/kimg/tools/kubectl-1.NN`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const OLDEST: u32 = 30;

fn tools() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
    cache.join("kimg/tools")
}

/// One kubectl minor against the cluster.
struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache: PathBuf,
    minor: u32,
}

impl Kubectl {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .output()
            .expect("run kubectl")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl 1.{} {args:?} failed:\n{}{}",
            self.minor,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("kubectl json")
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write manifest");
    path.to_str().expect("utf-8").to_string()
}

/// The session one kubectl minor runs, in a namespace of its own.
fn session(k: &Kubectl, dir: &Path) {
    let minor = k.minor;
    let ns = format!("kubectl-1-{minor}");
    let version = k.json(&["version"]);
    assert_eq!(
        version["serverVersion"]["minor"],
        kimg::KUBE_MINOR.to_string(),
        "{version}"
    );
    assert_eq!(
        version["clientVersion"]["minor"],
        minor.to_string(),
        "{version}"
    );

    let resources = k.ok(&["api-resources"]);
    for want in [
        "deployments",
        "poddisruptionbudgets",
        "leases",
        "namespaces",
    ] {
        assert!(
            resources.contains(want),
            "1.{minor}: {want} missing:\n{resources}"
        );
    }
    let explain = k.ok(&["explain", "deployment.spec.replicas"]);
    assert!(explain.contains("replicas"), "1.{minor}:\n{explain}");

    k.ok(&["create", "namespace", &ns]);
    // `kubectl create deployment` sends a protobuf body.
    k.ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "--replicas=2",
        "-n",
        &ns,
    ]);
    let manifest = write(
        dir,
        &format!("app-{minor}.yaml"),
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: {ns}\n\
             data:\n  mode: fast\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  \
             namespace: {ns}\nspec:\n  selector:\n    app: web\n  ports:\n  - port: 80\n"
        ),
    );
    k.ok(&["apply", "-f", &manifest]);
    k.ok(&["apply", "-f", &manifest]); // unchanged the second time
    let cm = write(
        dir,
        &format!("cm-ssa-{minor}.yaml"),
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n  namespace: {ns}\n\
             data:\n  owner: kubectl\n"
        ),
    );
    k.ok(&["apply", "--server-side", "-f", &cm]);
    let ssa = k.json(&["get", "configmap", "ssa", "-n", &ns]);
    assert_eq!(ssa["data"]["owner"], "kubectl", "1.{minor}: {ssa}");

    let wide = k.ok(&["get", "deploy,svc,cm", "-n", &ns, "-o", "wide"]);
    for want in ["deployment.apps/web", "service/web", "configmap/settings"] {
        assert!(wide.contains(want), "1.{minor}: {want} missing:\n{wide}");
    }

    k.ok(&["scale", "deployment", "web", "--replicas=3", "-n", &ns]);
    k.ok(&["label", "deployment", "web", "tier=front", "-n", &ns]);
    // The three patch types: strategic merge (kubectl's default), merge, JSON.
    for (kind, patch) in [
        ("strategic", r#"{"spec":{"minReadySeconds":5}}"#),
        ("merge", r#"{"metadata":{"annotations":{"team":"a"}}}"#),
        (
            "json",
            r#"[{"op":"replace","path":"/spec/revisionHistoryLimit","value":4}]"#,
        ),
    ] {
        let type_flag = format!("--type={kind}");
        k.ok(&[
            "patch",
            "deployment",
            "web",
            "-n",
            &ns,
            &type_flag,
            "-p",
            patch,
        ]);
    }
    let d = k.json(&["get", "deployment", "web", "-n", &ns]);
    assert_eq!(d["spec"]["replicas"], 3, "1.{minor}: {d}");
    assert_eq!(d["spec"]["minReadySeconds"], 5, "1.{minor}: {d}");
    assert_eq!(d["spec"]["revisionHistoryLimit"], 4, "1.{minor}: {d}");
    assert_eq!(d["metadata"]["labels"]["tier"], "front", "1.{minor}: {d}");
    assert_eq!(d["metadata"]["annotations"]["team"], "a", "1.{minor}: {d}");

    let described = k.ok(&["describe", "deployment", "web", "-n", &ns]);
    assert!(described.contains("Replicas:"), "1.{minor}:\n{described}");

    k.ok(&["delete", "-f", &manifest]);
    k.ok(&["delete", "deployment", "web", "-n", &ns]);
    let gone = k.run(&["get", "service", "web", "-n", &ns]);
    assert!(
        !gone.status.success(),
        "1.{minor}: the Service outlived its delete"
    );
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("NotFound"),
        "1.{minor}: {}",
        String::from_utf8_lossy(&gone.stderr)
    );
}

#[test]
fn kubectl_1_30_through_the_served_minor_run_a_whole_session() {
    let (tmp, dir) = common::new_cluster();
    let up = common::Up::start(tmp, dir, &["--store", "memory", "--no-scheduler"]);
    for minor in OLDEST..=kimg::KUBE_MINOR {
        let bin = tools().join(format!("kubectl-1.{minor}"));
        assert!(
            bin.is_file(),
            "{} is missing: scripts/setup-host unpacks kubectl 1.{OLDEST} to 1.{}",
            bin.display(),
            kimg::KUBE_MINOR
        );
        let k = Kubectl {
            bin,
            kubeconfig: up.kubeconfig.clone(),
            cache: up.tmp.path().join(format!("cache-1.{minor}")),
            minor,
        };
        session(&k, up.tmp.path());
    }
}
