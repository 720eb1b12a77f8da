//! API aggregation through real kubectl against `kimg up`, with a small aggregated API
//! server of our own on loopback (`tests/common/aggregated.rs`): it is registered by an
//! `APIService`, becomes `Available`, appears in discovery (`kubectl api-resources`,
//! `kubectl get flunders`), and sees each caller's identity in the front-proxy headers,
//! never the caller's credentials; RBAC is checked before anything is forwarded; a server
//! that goes away turns the `APIService` unavailable and requests into 503s.

#[macro_use]
mod common;
#[path = "common/aggregated.rs"]
mod aggregated;

use std::process::Output;
use std::sync::Arc;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

up_handle!(
    /// `kimg up` serving the API alone.
    Api
);

impl Api {
    fn start() -> Api {
        Api(common::Up::api_only())
    }

    /// The `Available` condition of an `APIService`: status and reason.
    fn available(&self, name: &str) -> (String, String) {
        let o = self.json(&["get", "apiservice", name, "-o", "json"]);
        let c = o["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Available"))
            .cloned()
            .unwrap_or_default();
        (
            c["status"].as_str().unwrap_or_default().to_string(),
            c["reason"].as_str().unwrap_or_default().to_string(),
        )
    }

    /// A raw GET with the admin certificate and extra header lines: status and body.
    fn raw_get(&self, path: &str, extra: &str) -> (u16, String) {
        let pki = self.dir.join("secrets/pki");
        let pem = |n: &str| std::fs::read(pki.join(n)).expect("pki file");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            use rustls_pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem("ca.crt")) {
                roots.add(c.expect("ca")).expect("root");
            }
            let chain = rustls_pki_types::CertificateDer::pem_slice_iter(&pem("admin.crt"))
                .collect::<Result<Vec<_>, _>>()
                .expect("admin.crt");
            let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&pem("admin.key"))
                .expect("admin.key");
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client auth");
            let tcp = tokio::net::TcpStream::connect(self.addr)
                .await
                .expect("connect");
            let mut s = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(
                    rustls_pki_types::ServerName::IpAddress(self.addr.ip().into()),
                    tcp,
                )
                .await
                .expect("tls");
            let head =
                format!("GET {path} HTTP/1.1\r\nHost: kimg\r\nConnection: close\r\n{extra}\r\n");
            s.write_all(head.as_bytes()).await.expect("write");
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            let text = String::from_utf8_lossy(&out).into_owned();
            let code = text
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let body = text
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default();
            (code, body)
        })
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const NAME: &str = "v1alpha1.wardle.example.io";
const FLUNDERS: &str = "/apis/wardle.example.io/v1alpha1/namespaces/default/flunders";

/// The Service (an `ExternalName` for loopback) and the `APIService` registering `server`.
fn registration(server: &aggregated::Aggregated) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: wardle, namespace: default}}
spec: {{type: ExternalName, externalName: 127.0.0.1}}
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {{name: {NAME}}}
spec:
  group: wardle.example.io
  version: v1alpha1
  groupPriorityMinimum: 1000
  versionPriority: 15
  caBundle: {}
  service: {{name: wardle, namespace: default, port: {}}}
",
        server.ca_bundle,
        server.addr.port()
    )
}

/// Starts the aggregated server with the request-header settings the apiserver publishes
/// in `kube-system/extension-apiserver-authentication`, as real aggregated servers do.
fn start_server(api: &Api) -> aggregated::Aggregated {
    let cm = api.json(&[
        "get",
        "configmap",
        "-n",
        "kube-system",
        "extension-apiserver-authentication",
        "-o",
        "json",
    ]);
    let data = &cm["data"];
    let names: Vec<String> = serde_json::from_str(
        data["requestheader-allowed-names"]
            .as_str()
            .expect("allowed names"),
    )
    .expect("a JSON list");
    assert_eq!(names, ["front-proxy-client"]);
    assert_eq!(
        data["requestheader-username-headers"],
        "[\"X-Remote-User\"]"
    );
    assert_eq!(data["requestheader-group-headers"], "[\"X-Remote-Group\"]");
    assert!(data["client-ca-file"]
        .as_str()
        .is_some_and(|c| c.contains("BEGIN CERTIFICATE")));
    aggregated::Aggregated::start(
        data["requestheader-client-ca-file"]
            .as_str()
            .expect("request-header CA"),
        names,
    )
}

#[test]
fn an_aggregated_server_is_served_through_the_apiserver_with_the_caller_s_identity() {
    let api = Api::start();
    let mut server = start_server(&api);
    api.apply(&registration(&server));
    common::wait_for(30, "the APIService to become Available", || {
        (api.available(NAME).0 == "True").then_some(())
    });
    assert_eq!(api.available(NAME).1, "Passed");
    let table = api.ok(&["get", "apiservice", NAME]);
    assert!(table.contains("default/wardle"), "{table}");
    assert!(table.contains("True"), "{table}");

    // Through the apiserver, as the admin: the server sees the admin's identity from the
    // front proxy, and no Authorization header.
    let list: Value = serde_json::from_str(&api.ok(&["get", "--raw", FLUNDERS])).expect("json");
    assert_eq!(list["kind"], "FlunderList");
    assert_eq!(list["items"][0]["spec"]["user"], "kubernetes-admin");
    let groups = list["items"][0]["spec"]["groups"].to_string();
    assert!(groups.contains("system:masters"), "{groups}");
    let last = server.seen().last().cloned().expect("a request");
    assert_eq!(last.client, "front-proxy-client");
    assert!(
        !last.authorization,
        "the caller's credentials were forwarded"
    );

    // Discovery: legacy and aggregated, so kubectl finds the resource by name.
    let apis: Value = serde_json::from_str(&api.ok(&["get", "--raw", "/apis"])).expect("json");
    assert!(
        apis["groups"]
            .as_array()
            .is_some_and(|gs| gs.iter().any(|g| g["name"] == "wardle.example.io")),
        "{apis}"
    );
    let group: Value =
        serde_json::from_str(&api.ok(&["get", "--raw", "/apis/wardle.example.io"])).expect("json");
    assert_eq!(group["preferredVersion"]["version"], "v1alpha1");
    let resources = api.ok(&["api-resources", "--api-group=wardle.example.io"]);
    assert!(resources.contains("flunders"), "{resources}");
    assert!(resources.contains("Flunder"), "{resources}");
    let got = api.ok(&["get", "flunders", "-n", "default"]);
    assert!(got.contains("echo"), "{got}");
    let one = api.json(&["get", "fl", "one", "-n", "default", "-o", "json"]);
    assert_eq!(one["metadata"]["name"], "one");

    // A watch streams through the proxy.
    let mut watch = std::process::Command::new("kubectl")
        .args([
            "--kubeconfig",
            api.kubeconfig.to_str().expect("utf-8"),
            "get",
            "--raw",
            &format!("{FLUNDERS}?watch=true"),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl watch");
    let mut first = String::new();
    {
        use std::io::BufRead;
        let out = watch.stdout.take().expect("stdout");
        std::io::BufReader::new(out)
            .read_line(&mut first)
            .expect("a watch event");
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(first.contains("\"ADDED\""), "{first}");

    // Identity headers a client sends itself are dropped, not believed.
    let (code, body) = api.raw_get(
        FLUNDERS,
        "X-Remote-User: mallory\r\nX-Remote-Group: system:masters\r\n",
    );
    assert_eq!(code, 200, "{body}");
    let last = server.seen().last().cloned().expect("a request");
    assert_eq!(last.user, "kubernetes-admin");
    assert_eq!(
        last.groups
            .iter()
            .filter(|g| *g == "system:masters")
            .count(),
        1
    );

    // RBAC is checked here before anything is forwarded.
    let before = server.seen().len();
    let out = api.run(&["get", "--raw", FLUNDERS, "--as=alice", "--as-group=devs"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("forbidden"), "{}", stderr(&out));
    assert_eq!(
        server.seen().len(),
        before,
        "a forbidden request reached the server"
    );
    api.ok(&[
        "create",
        "role",
        "flunder-reader",
        "-n",
        "default",
        "--verb=get,list",
        "--resource=flunders.wardle.example.io",
    ]);
    api.ok(&[
        "create",
        "rolebinding",
        "flunder-reader",
        "-n",
        "default",
        "--role=flunder-reader",
        "--group=devs",
    ]);
    let list: Value = serde_json::from_str(&common::wait_for(10, "the RoleBinding", || {
        let out = api.run(&["get", "--raw", FLUNDERS, "--as=alice", "--as-group=devs"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }))
    .expect("json");
    assert_eq!(list["items"][0]["spec"]["user"], "alice");
    let groups = list["items"][0]["spec"]["groups"].to_string();
    assert!(
        groups.contains("devs") && groups.contains("system:authenticated"),
        "{groups}"
    );
    assert!(!groups.contains("system:masters"), "{groups}");

    // The server goes away: the APIService turns unavailable and requests get 503.
    server.stop();
    common::wait_for(30, "the APIService to become unavailable", || {
        (api.available(NAME) == ("False".to_string(), "FailedDiscoveryCheck".to_string()))
            .then_some(())
    });
    let out = api.run(&["get", "--raw", FLUNDERS]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("ServiceUnavailable") || stderr(&out).contains("unable to handle"),
        "{}",
        stderr(&out)
    );

    // Unregistered, the group is gone.
    api.ok(&["delete", "apiservice", NAME]);
    let out = api.run(&["get", "--raw", "/apis/wardle.example.io/v1alpha1"]);
    assert!(stderr(&out).contains("NotFound"), "{}", stderr(&out));
}

#[test]
fn bad_registrations_are_refused_and_unreachable_servers_are_reported() {
    let api = Api::start();
    let bad = api.tmp.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata: {name: wardle}\nspec: {group: wardle.example.io, version: v1alpha1, groupPriorityMinimum: 1000, versionPriority: 15, insecureSkipTLSVerify: true, service: {name: wardle, namespace: default}}\n",
    )
    .expect("write");
    let out = api.run(&["apply", "-f", bad.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("metadata.name: Invalid value: \"wardle\""),
        "{}",
        stderr(&out)
    );

    // A registration whose Service does not exist.
    api.apply(
        "apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata: {name: v1beta1.metrics.k8s.io}\nspec: {group: metrics.k8s.io, version: v1beta1, groupPriorityMinimum: 100, versionPriority: 100, insecureSkipTLSVerify: true, service: {name: metrics-server, namespace: kube-system}}\n",
    );
    common::wait_for(30, "ServiceNotFound", || {
        (api.available("v1beta1.metrics.k8s.io").1 == "ServiceNotFound").then_some(())
    });
    let out = api.run(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes"]);
    assert!(
        stderr(&out).contains("ServiceUnavailable"),
        "{}",
        stderr(&out)
    );
    // kubectl still works for everything else, warning about the group it cannot list.
    let out = api.run(&["api-resources"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("configmaps"),
        "{}",
        stderr(&out)
    );

    // An APIService may not take over a group the apiserver serves itself.
    api.apply(
        "apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata: {name: v1.apps}\nspec: {group: apps, version: v1, groupPriorityMinimum: 100, versionPriority: 100, insecureSkipTLSVerify: true, service: {name: evil, namespace: default}}\n",
    );
    let out = api.ok(&["get", "deployments", "-A"]);
    assert!(!out.contains("ServiceUnavailable"), "{out}");
}
