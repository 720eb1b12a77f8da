//! The PKI judged by OpenSSL: every leaf verifies against its CA, SANs and subjects are
//! right, key files are private, and `kimg cluster ca-hash` equals the seeds' recipe.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use common::{kimg_ok, tool_ok, SEEDS_TOPOLOGY};

fn seeds_cluster() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let mut args = vec!["cluster", "new", "prod"];
    args.extend_from_slice(SEEDS_TOPOLOGY);
    kimg_ok(tmp.path(), &args);
    tmp
}

fn text_of(cert: &std::path::Path) -> String {
    tool_ok(
        "openssl",
        &["x509", "-noout", "-text", "-in", cert.to_str().unwrap()],
    )
}

#[test]
fn every_leaf_verifies_against_its_ca_with_openssl() {
    let tmp = seeds_cluster();
    let pki = tmp.path().join("prod/secrets/pki");
    let mut checked = 0;
    for entry in walk(&pki) {
        let is_ca = entry
            .file_name()
            .is_some_and(|n| n == "ca.crt" || n == "front-proxy-ca.crt");
        if entry.extension().is_none_or(|e| e != "crt") || is_ca {
            continue;
        }
        let rel = entry
            .strip_prefix(&pki)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let ca = if rel.starts_with("etcd/") || rel == "apiserver-etcd-client.crt" {
            pki.join("etcd/ca.crt")
        } else if rel == "front-proxy-client.crt" {
            pki.join("front-proxy-ca.crt")
        } else {
            pki.join("ca.crt")
        };
        let out = tool_ok(
            "openssl",
            &[
                "verify",
                "-CAfile",
                ca.to_str().unwrap(),
                entry.to_str().unwrap(),
            ],
        );
        assert!(out.trim_end().ends_with(": OK"), "{rel}: {out}");
        checked += 1;
    }
    // apiserver, kubelet-client, etcd-client, healthcheck, 3×(server+peer), admin,
    // front-proxy-client, scheduler, cm
    assert_eq!(checked, 14);
}

#[test]
fn leaves_do_not_verify_against_the_other_ca() {
    let tmp = seeds_cluster();
    let pki = tmp.path().join("prod/secrets/pki");
    let out = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(pki.join("ca.crt"))
        .arg(pki.join("etcd/etcd-1/server.crt"))
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "an etcd cert must not chain to the cluster CA"
    );
}

#[test]
fn the_apiserver_cert_carries_the_vip_master_ips_and_service_names() {
    let tmp = seeds_cluster();
    let text = text_of(&tmp.path().join("prod/secrets/pki/apiserver.crt"));
    for san in [
        "DNS:kubernetes",
        "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc",
        "DNS:kubernetes.default.svc.cluster.local",
        "IP Address:192.168.202.160",
        "IP Address:192.168.202.157",
        "IP Address:192.168.202.158",
        "IP Address:192.168.202.159",
        "IP Address:10.96.0.1",
        "IP Address:127.0.0.1",
    ] {
        assert!(text.contains(san), "apiserver.crt lacks {san}:\n{text}");
    }
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    assert!(
        !text.contains("192.168.202.165"),
        "a worker IP must not be in the apiserver cert"
    );
}

#[test]
fn etcd_member_certs_name_their_member_and_serve_and_dial() {
    let tmp = seeds_cluster();
    let text = text_of(&tmp.path().join("prod/secrets/pki/etcd/etcd-2/peer.crt"));
    assert!(text.contains("Subject: CN = etcd-2"), "{text}");
    assert!(text.contains("IP Address:192.168.202.162"), "{text}");
    assert!(text.contains("DNS:etcd-2"), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
}

#[test]
fn client_certs_carry_the_kubernetes_identities() {
    let tmp = seeds_cluster();
    let pki = tmp.path().join("prod/secrets/pki");
    let subject = |f: &str| {
        tool_ok(
            "openssl",
            &[
                "x509",
                "-noout",
                "-subject",
                "-in",
                pki.join(f).to_str().unwrap(),
            ],
        )
    };
    assert!(subject("admin.crt").contains("O = system:masters, CN = kubernetes-admin"));
    assert!(subject("scheduler.crt").contains("CN = system:kube-scheduler"));
    assert!(subject("controller-manager.crt").contains("CN = system:kube-controller-manager"));
    let ca = text_of(&pki.join("ca.crt"));
    assert!(
        ca.contains("CA:TRUE") && ca.contains("Certificate Sign"),
        "{ca}"
    );
}

#[test]
fn private_keys_are_mode_0600_and_certs_0644() {
    let tmp = seeds_cluster();
    for entry in walk(&tmp.path().join("prod/secrets")) {
        let mode = std::fs::metadata(&entry).unwrap().permissions().mode() & 0o777;
        match entry.extension().and_then(|e| e.to_str()) {
            Some("key") => assert_eq!(mode, 0o600, "{}", entry.display()),
            Some("crt") | Some("pub") => assert_eq!(mode, 0o644, "{}", entry.display()),
            Some("toml") => assert_eq!(mode, 0o600, "{}", entry.display()),
            _ => {}
        }
    }
}

#[test]
fn ca_hash_equals_the_openssl_recipe() {
    let tmp = seeds_cluster();
    let ours = kimg_ok(tmp.path(), &["cluster", "ca-hash", "prod"]);
    let ca = tmp.path().join("prod/secrets/pki/ca.crt");
    let script = format!(
        "openssl x509 -pubkey -in {} | openssl pkey -pubin -outform der | sha256sum | cut -d' ' -f1",
        ca.display()
    );
    let theirs = tool_ok("sh", &["-c", &script]);
    assert_eq!(ours.trim(), format!("sha256:{}", theirs.trim()));
}

#[test]
fn certs_lists_every_certificate_with_subject_sans_and_expiry() {
    let tmp = seeds_cluster();
    let out = kimg_ok(tmp.path(), &["cluster", "certs", "prod"]);
    assert!(
        out.contains("apiserver.crt\n  subject: CN=kube-apiserver"),
        "{out}"
    );
    assert!(out.contains("IP:192.168.202.160"), "{out}");
    assert!(out.contains("etcd/etcd-3/server.crt"), "{out}");
    assert!(out.contains("ca.crt  [CA]"), "{out}");
    let expiries = out
        .lines()
        .filter(|l| l.trim_start().starts_with("expires:"))
        .count();
    assert_eq!(expiries, 17, "{out}");
    assert!(
        out.contains("front-proxy-client.crt\n  subject: CN=front-proxy-client\n  issuer:  CN=front-proxy-ca"),
        "{out}"
    );
}

#[test]
fn certs_issue_adds_a_new_member_without_touching_existing_keys() {
    let tmp = seeds_cluster();
    let dir = tmp.path().join("prod");
    let before = std::fs::read(dir.join("secrets/pki/ca.key")).unwrap();
    let toml = std::fs::read_to_string(dir.join("cluster.toml")).unwrap();
    let toml = toml.replace(
        "name = \"worker-3\"\nroles = [\"worker\"]",
        "name = \"etcd-4\"\nroles = [\"etcd\"]",
    );
    std::fs::write(dir.join("cluster.toml"), toml).unwrap();
    let out = kimg_ok(tmp.path(), &["cluster", "certs", "prod", "--issue"]);
    assert!(
        out.contains("issued etcd/etcd-4/server\nissued etcd/etcd-4/peer"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(dir.join("secrets/pki/ca.key")).unwrap(),
        before
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}
