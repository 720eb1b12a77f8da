//! Secrets at rest (issue 13): `kimg up` on a real etcd with the cluster's
//! `encryption.key` stores a Secret as kube-apiserver's `aesgcm` ciphertext (read raw from
//! etcd here), while `kubectl` reads it back in the clear; ConfigMaps stay plain. Needs the
//! `etcd-server` package and `kubectl`.

mod common;

use std::process::Command;

use kimg::store::{EtcdStore, LocalEtcd, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_ciphertext_in_etcd_and_plain_through_kubectl() {
    let etcd = LocalEtcd::start().await.expect("etcd");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("c");
    common::kimg_ok(
        tmp.path(),
        &["cluster", "new", dir.to_str().expect("utf-8")],
    );
    let key_file = dir.join("secrets/pki/encryption.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file)
            .expect("key file")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the key file is private");

    let (_up, kubeconfig) =
        common::kimg_up_on_etcd(&dir, &etcd.config().endpoints[0].to_string(), &[]);
    let kubectl = |args: &[&str]| {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    kubectl(&[
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=password=hunter2-sesame",
    ]);
    kubectl(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=mode=open-sesame",
    ]);

    let raw = EtcdStore::connect(&etcd.config()).await.expect("connect");
    let secret = raw
        .get("/registry/secrets/default/db")
        .await
        .expect("read")
        .expect("the secret is in etcd");
    assert!(
        secret.value.starts_with(b"k8s:enc:aesgcm:v1:key1:"),
        "stored as: {}",
        String::from_utf8_lossy(&secret.value[..40.min(secret.value.len())])
    );
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "hunter2-sesame");
    for needle in ["hunter2-sesame".as_bytes(), b64.as_bytes(), b"password"] {
        assert!(
            !secret.value.windows(needle.len()).any(|w| w == needle),
            "plain text in etcd"
        );
    }
    let cm = raw
        .get("/registry/configmaps/default/settings")
        .await
        .expect("read")
        .expect("the configmap is in etcd");
    assert!(
        cm.value.windows(11).any(|w| w == b"open-sesame"),
        "ConfigMaps stay plain"
    );

    let got = kubectl(&["get", "secret", "db", "-o", "jsonpath={.data.password}"]);
    assert_eq!(got, b64, "kubectl reads the secret in the clear");
}
