//! `kimg proxy` end to end, inside a network namespace this test creates: `kimg up` and
//! `kimg proxy` run in it, real kubectl creates Services and EndpointSlices, and TCP
//! connections and DNS queries from inside the namespace show that the nftables rules and
//! the cluster DNS follow the API. Needs root, `nft`, `ip` and kubectl.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, wait_for};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use kimg::proxy::netns::Netns;

/// Children started by this test, ended by PID on drop.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SAFETY: kill(2) on the PID of a child this test spawned.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let _ = c.wait();
        }
    }
}

fn in_ns(ns: &Netns, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns.name(), program]);
    c
}

fn kubectl(ns: &Netns, kubeconfig: &str, args: &[&str]) -> String {
    let out = in_ns(ns, "kubectl")
        .args(["--kubeconfig", kubeconfig])
        .args(args)
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn apply(ns: &Netns, kubeconfig: &str, yaml: &str) {
    let mut child = in_ns(ns, "kubectl")
        .args(["--kubeconfig", kubeconfig, "apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl apply");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write yaml");
    let out = child.wait_with_output().expect("kubectl apply");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Answers every connection with `name`.
fn serve_name(addr: &str, name: &'static str) {
    let listener = TcpListener::bind(addr).expect("bind backend");
    std::thread::spawn(move || {
        for mut s in listener.incoming().map_while(Result::ok) {
            let _ = s.write_all(name.as_bytes());
        }
    });
}

fn fetch(addr: &str) -> std::io::Result<String> {
    let addr: SocketAddr = addr.parse().expect("addr");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The A records DNS at `server` gives for `name`.
fn resolve_a(server: SocketAddr, name: &str) -> Vec<String> {
    let mut msg = Message::new();
    msg.set_id(7).set_recursion_desired(true);
    msg.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    let sock = UdpSocket::bind("127.0.0.1:0").expect("udp");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    sock.send_to(&msg.to_vec().expect("encode"), server)
        .expect("send");
    let mut buf = [0u8; 4096];
    let Ok((n, _)) = sock.recv_from(&mut buf) else {
        return Vec::new();
    };
    let reply = Message::from_vec(&buf[..n]).expect("decode");
    let mut ips: Vec<String> = reply
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    ips.sort();
    ips
}

#[test]
fn services_and_dns_follow_the_api_inside_a_netns_needs_root_nft_and_kubectl() {
    let ns = Netns::create("proxye2e").expect("netns (needs root)");
    for argv in [
        ["ip", "addr", "add", "10.244.1.5/32", "dev", "lo"],
        ["ip", "addr", "add", "10.244.2.7/32", "dev", "lo"],
        // Somewhere for ClusterIP packets to be routed before DNAT rewrites them.
        ["ip", "route", "add", "10.96.0.0/12", "dev", "lo"],
    ] {
        ns.exec_checked(&argv).expect("netns setup");
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("c");
    let dir_s = dir.to_str().expect("utf-8").to_string();
    common::kimg_ok(tmp.path(), &["cluster", "new", &dir_s]);
    let listen = format!("127.0.0.1:{}", free_port());
    let mut children = Children(Vec::new());
    let mut cmd = in_ns(&ns, env!("CARGO_BIN_EXE_kimg"));
    cmd.args(["up", &dir_s, "--listen", &listen])
        .args(["--no-scheduler", "--no-controller-manager"]);
    let (up, kubeconfig) = common::start_up(cmd);
    children.0.push(up);
    let kc = kubeconfig.to_str().expect("utf-8").to_string();

    let dns_port = free_port();
    let dns: SocketAddr = format!("127.0.0.1:{dns_port}").parse().expect("addr");
    children.0.push(
        in_ns(&ns, env!("CARGO_BIN_EXE_kimg"))
            .args([
                "proxy",
                "--kubeconfig",
                &kc,
                "--cluster-cidr",
                "10.244.0.0/16",
            ])
            .args(["--dns-listen", &dns.to_string(), "--resync", "5s"])
            .args(["--upstream", "127.0.0.1:9"])
            .spawn()
            .expect("kimg proxy"),
    );

    apply(
        &ns,
        &kc,
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n\
         spec:\n  clusterIP: 10.96.0.50\n  ports: [{name: http, port: 80, targetPort: 8080}]\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata:\n  name: web-1\n  namespace: default\n  labels: {kubernetes.io/service-name: web}\n\
         addressType: IPv4\nports: [{name: http, port: 8080, protocol: TCP}]\nendpoints:\n\
         - addresses: [10.244.1.5]\n  conditions: {ready: true}\n\
         - addresses: [10.244.2.7]\n  conditions: {ready: true}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: default}\n\
         spec:\n  clusterIP: None\n  ports: [{name: pg, port: 5432}]\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata:\n  name: db-1\n  namespace: default\n  labels: {kubernetes.io/service-name: db}\n\
         addressType: IPv4\nports: [{name: pg, port: 5432, protocol: TCP}]\nendpoints:\n\
         - addresses: [10.244.2.7]\n  conditions: {ready: true}\n",
    );

    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                ns.enter_this_thread().expect("setns");
                serve_name("10.244.1.5:8080", "one");
                serve_name("10.244.2.7:8080", "two");

                // The ClusterIP load-balances over both ready endpoints.
                wait_for(30, "the ClusterIP to answer", || fetch("10.96.0.50:80").ok());
                let answers: Vec<String> = (0..30)
                    .map(|_| fetch("10.96.0.50:80").unwrap_or_else(|e| format!("error: {e}")))
                    .collect();
                let ones = answers.iter().filter(|a| *a == "one").count();
                let twos = answers.iter().filter(|a| *a == "two").count();
                assert_eq!(ones + twos, 30, "{answers:?}");
                assert!(ones > 0 && twos > 0, "both endpoints chosen: {answers:?}");

                // DNS: the ClusterIP for a normal Service, endpoint IPs for a headless one.
                assert_eq!(
                    resolve_a(dns, "web.default.svc.cluster.local."),
                    vec!["10.96.0.50"]
                );
                assert_eq!(
                    resolve_a(dns, "db.default.svc.cluster.local."),
                    vec!["10.244.2.7"]
                );
                assert!(resolve_a(dns, "nope.default.svc.cluster.local.").is_empty());

                // An endpoint turning unready leaves the rotation.
                kubectl(
                    &ns,
                    &kc,
                    &[
                        "patch", "endpointslice", "web-1", "--type=json", "-p",
                        r#"[{"op":"replace","path":"/endpoints/1/conditions/ready","value":false}]"#,
                    ],
                );
                wait_for(30, "the unready endpoint to leave", || {
                    let a: Vec<String> = (0..10)
                        .map(|_| fetch("10.96.0.50:80").unwrap_or_default())
                        .collect();
                    a.iter().all(|x| x == "one").then_some(())
                });

                // A new Service appears in rules and DNS without a restart.
                apply(
                    &ns,
                    &kc,
                    "apiVersion: v1\nkind: Service\nmetadata: {name: late, namespace: default}\n\
                     spec:\n  clusterIP: 10.96.0.60\n  ports: [{port: 81, targetPort: 8080}]\n\
                     ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                     metadata:\n  name: late-1\n  namespace: default\n  labels: {kubernetes.io/service-name: late}\n\
                     addressType: IPv4\nports: [{port: 8080, protocol: TCP}]\nendpoints:\n\
                     - addresses: [10.244.2.7]\n  conditions: {ready: true}\n",
                );
                assert_eq!(
                    wait_for(30, "the new Service to answer", || fetch("10.96.0.60:81").ok()),
                    "two"
                );
                wait_for(10, "the new Service in DNS", || {
                    (resolve_a(dns, "late.default.svc.cluster.local.") == vec!["10.96.0.60"])
                        .then_some(())
                });

                // Deleting the Service removes its rules: nothing answers on the ClusterIP.
                kubectl(&ns, &kc, &["delete", "service", "web"]);
                wait_for(30, "the deleted Service to stop answering", || {
                    fetch("10.96.0.50:80").is_err().then_some(())
                });
                wait_for(10, "the deleted Service to leave DNS", || {
                    resolve_a(dns, "web.default.svc.cluster.local.")
                        .is_empty()
                        .then_some(())
                });
            })
            .join()
            .expect("client thread in the netns")
    });

    // The table really is ours and was replaced as a whole.
    let table = ns
        .exec_checked(&["nft", "list", "table", "ip", "kimg-proxy"])
        .expect("nft list");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("10.96.0.60"), "{text}");
    assert!(!text.contains("10.96.0.50"), "{text}");
}
