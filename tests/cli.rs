//! The `kimg` command line end to end: cluster creation, tokens, kubeconfig, completion.

mod common;

use common::{kimg_in, kimg_ok, tool_ok, SEEDS_TOPOLOGY};

fn token_re_ok(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 23
        && b[6] == b'.'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 6 || c.is_ascii_lowercase() || c.is_ascii_digit())
}

#[test]
fn cluster_new_with_no_options_makes_a_single_machine_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    kimg_ok(tmp.path(), &["cluster", "new", "c"]);
    let text = std::fs::read_to_string(tmp.path().join("c/cluster.toml")).unwrap();
    assert!(
        text.contains("roles = [\"etcd\", \"master\", \"worker\"]"),
        "{text}"
    );
    let check = kimg_ok(tmp.path(), &["cluster", "check", "c"]);
    assert!(check.contains("1 etcd, 1 masters, 1 workers"), "{check}");
}

#[test]
fn cluster_new_refuses_an_existing_cluster_and_force_keeps_the_old_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    kimg_ok(tmp.path(), &["cluster", "new", "c"]);
    let key = std::fs::read(tmp.path().join("c/secrets/pki/ca.key")).unwrap();
    let out = kimg_in(tmp.path(), &["cluster", "new", "c"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite its keys"));
    assert_eq!(
        std::fs::read(tmp.path().join("c/secrets/pki/ca.key")).unwrap(),
        key
    );

    kimg_ok(
        tmp.path(),
        &["cluster", "new", "c", "--force", "--name", "other"],
    );
    let backups: Vec<_> = std::fs::read_dir(tmp.path().join("c"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("secrets.replaced-"))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    let old = std::fs::read(tmp.path().join("c").join(&backups[0]).join("pki/ca.key")).unwrap();
    assert_eq!(old, key, "the replaced CA key is kept");
    assert_ne!(
        std::fs::read(tmp.path().join("c/secrets/pki/ca.key")).unwrap(),
        key
    );
}

#[test]
fn cluster_new_reports_a_bad_option_by_field_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = kimg_in(
        tmp.path(),
        &["cluster", "new", "c", "--pod-cidr", "10.96.0.0/16"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("service-cidr: 10.96.0.0/12 overlaps pod-cidr 10.96.0.0/16"),
        "{err}"
    );
    assert!(!tmp.path().join("c").exists());
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "no staging leftovers"
    );
}

#[test]
fn a_broken_cluster_toml_is_reported_with_file_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    kimg_ok(tmp.path(), &["cluster", "new", "c"]);
    let path = tmp.path().join("c/cluster.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("ip = \"10.77.0.10\"", "ip = \"10.77.0.999\"");
    std::fs::write(&path, text).unwrap();
    let out = kimg_in(tmp.path(), &["cluster", "check", "c"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("c/cluster.toml:21: node[0].ip: \"10.77.0.999\" is not an IPv4 address"),
        "{err}"
    );
}

#[test]
fn stacked_masters_carry_etcd_and_even_members_warn() {
    let tmp = tempfile::tempdir().unwrap();
    let out = kimg_in(
        tmp.path(),
        &[
            "cluster",
            "new",
            "s",
            "--vip",
            "10.1.0.100",
            "--masters",
            "10.1.0.11,10.1.0.12",
        ],
    );
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("2 etcd, 2 masters, 0 workers"), "{stdout}");
    assert!(
        stderr.contains("warning:") && stderr.contains("2 etcd members"),
        "{stderr}"
    );
}

#[test]
fn tokens_are_created_listed_expired_and_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    kimg_ok(tmp.path(), &["cluster", "new", "c"]);
    let baked = kimg_ok(tmp.path(), &["token", "list", "c"]);
    assert!(
        baked.contains("<forever>"),
        "cluster new makes a long-lived token: {baked}"
    );

    let t = kimg_ok(
        tmp.path(),
        &[
            "token",
            "create",
            "c",
            "--ttl",
            "2h",
            "--description",
            "lab",
        ],
    );
    let t = t.trim();
    assert!(token_re_ok(t), "{t}");
    let list = kimg_ok(tmp.path(), &["token", "list", "c"]);
    let line = list
        .lines()
        .find(|l| l.starts_with(t))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(line.contains(" 1h") || line.contains(" 2h"), "{line}");
    assert!(
        line.contains("lab") && line.contains("authentication,signing"),
        "{line}"
    );

    let short = kimg_ok(tmp.path(), &["token", "create", "c", "--ttl", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let list = kimg_ok(tmp.path(), &["token", "list", "c"]);
    let line = list.lines().find(|l| l.starts_with(short.trim())).unwrap();
    assert!(
        line.contains("<invalid>"),
        "an expired token shows as invalid: {line}"
    );

    let id = &t[..6];
    kimg_ok(tmp.path(), &["token", "delete", "c", id]);
    let list = kimg_ok(tmp.path(), &["token", "list", "c"]);
    assert!(!list.contains(t), "{list}");
    let out = kimg_in(tmp.path(), &["token", "delete", "c", id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("no bootstrap token \"{id}\"")));
}

#[test]
fn a_bad_ttl_is_explained() {
    let tmp = tempfile::tempdir().unwrap();
    kimg_ok(tmp.path(), &["cluster", "new", "c"]);
    let out = kimg_in(tmp.path(), &["token", "create", "c", "--ttl", "soon"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ttl \"soon\": expected a duration"));
}

#[test]
fn print_join_gives_the_vip_token_and_ca_pin() {
    let tmp = tempfile::tempdir().unwrap();
    let mut args = vec!["cluster", "new", "prod"];
    args.extend_from_slice(SEEDS_TOPOLOGY);
    kimg_ok(tmp.path(), &args);
    let out = kimg_ok(tmp.path(), &["token", "create", "prod", "--print-join"]);
    let hash = kimg_ok(tmp.path(), &["cluster", "ca-hash", "prod"]);
    let token = out.lines().next().unwrap();
    assert!(
        out.contains("api-server: https://192.168.202.160:6443"),
        "{out}"
    );
    assert!(out.contains(&format!("token: {token}")), "{out}");
    assert!(
        out.contains(&format!("ca-cert-hash: {}", hash.trim())),
        "{out}"
    );
}

#[test]
fn kubectl_accepts_the_admin_kubeconfig() {
    let tmp = tempfile::tempdir().unwrap();
    let mut args = vec!["cluster", "new", "prod"];
    args.extend_from_slice(SEEDS_TOPOLOGY);
    kimg_ok(tmp.path(), &args);
    kimg_ok(tmp.path(), &["kubeconfig", "prod", "-o", "admin.conf"]);
    let conf = tmp.path().join("admin.conf");
    let view = tool_ok(
        "kubectl",
        &[
            "--kubeconfig",
            conf.to_str().unwrap(),
            "config",
            "view",
            "--raw",
            "-o",
            "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&view).unwrap();
    assert_eq!(
        v["clusters"][0]["cluster"]["server"],
        "https://192.168.202.160:6443"
    );
    assert_eq!(v["current-context"], "kubernetes-admin@kimg");
    let cert = v["users"][0]["user"]["client-certificate-data"]
        .as_str()
        .unwrap();
    assert!(!cert.is_empty());
    // The embedded client cert is the admin identity.
    let pem = tool_ok(
        "sh",
        &[
            "-c",
            &format!("echo {cert} | base64 -d | openssl x509 -noout -subject"),
        ],
    );
    assert!(pem.contains("O = system:masters"), "{pem}");

    let custom = kimg_ok(
        tmp.path(),
        &["kubeconfig", "prod", "--server", "https://127.0.0.1:7443"],
    );
    assert!(custom.contains("server: https://127.0.0.1:7443"));
}

#[test]
fn completion_scripts_are_generated_for_each_shell() {
    let tmp = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = kimg_ok(tmp.path(), &["completion", shell]);
        assert!(
            out.contains("kimg") && out.contains("kubeconfig"),
            "{shell}"
        );
    }
    let bash = kimg_ok(tmp.path(), &["completion", "bash"]);
    let script = tmp.path().join("kimg.bash");
    std::fs::write(&script, bash).unwrap();
    tool_ok(
        "bash",
        &[
            "-c",
            &format!("source {} && complete -p kimg", script.display()),
        ],
    );
}
