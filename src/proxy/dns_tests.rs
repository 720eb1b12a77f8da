//! Tests of cluster DNS: the pure [`respond`] core, and the UDP/TCP server against a fake
//! upstream resolver that the test itself runs on 127.0.0.1.

use super::*;
use crate::proxy::model::fixtures::{service, slice};
use crate::proxy::model::{resolve, ClusterObjects};
use hickory_proto::op::{Edns, Query};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::{Int, String as Named};
use proptest::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

const DOMAIN: &str = "cluster.local";

fn services() -> Vec<ServiceView> {
    let headless: Vec<(String, Option<bool>, Option<&str>)> = (1..=100)
        .map(|i| {
            (
                format!("10.244.{}.{}", 5 + i / 200, i % 200 + 1),
                Some(true),
                None,
            )
        })
        .collect();
    let headless: Vec<(&str, Option<bool>, Option<&str>)> = headless
        .iter()
        .map(|(ip, r, h)| (ip.as_str(), *r, *h))
        .collect();
    resolve(&ClusterObjects {
        services: vec![
            service(
                "default",
                "web",
                "10.96.0.20",
                &[("http", "TCP", 80, Named("web".into()), None)],
            ),
            service(
                "default",
                "db",
                "None",
                &[("pg", "TCP", 5432, Int(5432), None)],
            ),
            service("default", "many", "None", &[("", "TCP", 80, Int(80), None)]),
        ],
        endpoint_slices: vec![
            slice(
                "default",
                "web",
                "a",
                &[("10.244.1.5", Some(true), None)],
                &[("http", "TCP", 8080)],
            ),
            slice(
                "default",
                "db",
                "a",
                &[
                    ("10.244.2.3", Some(true), Some("db-0")),
                    ("10.244.1.3", Some(true), None),
                    ("10.244.1.4", Some(false), None),
                ],
                &[("pg", "TCP", 5432)],
            ),
            slice("default", "many", "a", &headless, &[("", "TCP", 80)]),
        ],
        endpoints: vec![],
    })
}

fn query(name: &str, qtype: RecordType, id: u16) -> Vec<u8> {
    let mut message = Message::new();
    message
        .set_id(id)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    message.to_vec().unwrap()
}

fn answer(request: &[u8], udp: bool) -> Message {
    match respond(request, &services(), DOMAIN, udp) {
        Reply::Answer(bytes) => Message::from_vec(&bytes).unwrap(),
        other => panic!("expected an answer, got {other:?}"),
    }
}

fn a_ips(message: &Message) -> Vec<String> {
    message
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_cluster_ip_service_answers_its_virtual_ip() {
    let reply = answer(
        &query("web.default.svc.cluster.local.", RecordType::A, 7),
        true,
    );
    assert_eq!(reply.id(), 7);
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert!(reply.authoritative());
    assert_eq!(a_ips(&reply), vec!["10.96.0.20"]);
}

#[test]
fn names_are_matched_case_insensitively() {
    let reply = answer(
        &query("Web.DEFAULT.svc.Cluster.Local.", RecordType::A, 1),
        true,
    );
    assert_eq!(a_ips(&reply), vec!["10.96.0.20"]);
}

#[test]
fn a_headless_service_answers_its_ready_pod_ips() {
    let reply = answer(
        &query("db.default.svc.cluster.local.", RecordType::A, 1),
        true,
    );
    assert_eq!(a_ips(&reply), vec!["10.244.1.3", "10.244.2.3"]);
}

#[test]
fn srv_for_a_named_port_points_at_the_service_name() {
    let reply = answer(
        &query(
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
            1,
        ),
        true,
    );
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    let RData::SRV(srv) = reply.answers()[0].data() else {
        panic!("not srv: {reply:?}");
    };
    assert_eq!(srv.port(), 80);
    assert_eq!(srv.target().to_ascii(), "web.default.svc.cluster.local.");
    assert_eq!(reply.additionals().len(), 1);
}

#[test]
fn srv_for_a_headless_service_lists_each_endpoint_with_its_target_port() {
    let reply = answer(
        &query("_pg._tcp.db.default.svc.cluster.local.", RecordType::SRV, 1),
        true,
    );
    let targets: Vec<(String, u16)> = reply
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::SRV(s) => Some((s.target().to_ascii(), s.port())),
            _ => None,
        })
        .collect();
    assert_eq!(
        targets,
        vec![
            ("10-244-1-3.db.default.svc.cluster.local.".to_string(), 5432),
            ("db-0.db.default.svc.cluster.local.".to_string(), 5432),
        ]
    );
    // The hostnames resolve too.
    let reply = answer(
        &query("db-0.db.default.svc.cluster.local.", RecordType::A, 1),
        true,
    );
    assert_eq!(a_ips(&reply), vec!["10.244.2.3"]);
}

#[test]
fn unknown_names_in_the_cluster_domain_are_nxdomain() {
    for name in [
        "nope.default.svc.cluster.local.",
        "_nope._tcp.web.default.svc.cluster.local.",
        "_http._udp.web.default.svc.cluster.local.",
        "example.com.default.svc.cluster.local.",
        "10-244-1-4.db.default.svc.cluster.local.",
    ] {
        let reply = answer(&query(name, RecordType::A, 1), true);
        assert_eq!(reply.response_code(), ResponseCode::NXDomain, "{name}");
        assert!(reply.answers().is_empty());
    }
}

#[test]
fn an_existing_name_asked_for_another_type_is_an_empty_success() {
    let reply = answer(
        &query("web.default.svc.cluster.local.", RecordType::AAAA, 1),
        true,
    );
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert!(reply.answers().is_empty());
    let reply = answer(&query("default.svc.cluster.local.", RecordType::A, 1), true);
    assert_eq!(reply.response_code(), ResponseCode::NoError);
}

#[test]
fn names_outside_the_cluster_domain_are_forwarded() {
    for name in ["example.org.", "local.", "cluster.local.example.org."] {
        assert_eq!(
            respond(&query(name, RecordType::A, 1), &services(), DOMAIN, true),
            Reply::Forward,
            "{name}"
        );
    }
}

#[test]
fn an_answer_too_big_for_udp_is_truncated_and_complete_over_tcp() {
    let request = query("many.default.svc.cluster.local.", RecordType::A, 3);
    let udp = answer(&request, true);
    assert!(udp.truncated());
    assert!(udp.answers().is_empty());
    let tcp = answer(&request, false);
    assert!(!tcp.truncated());
    assert_eq!(tcp.answers().len(), 100);
    // A client announcing a large EDNS buffer gets everything over UDP.
    let mut message = Message::from_vec(&request).unwrap();
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    message.set_edns(edns);
    let big = answer(&message.to_vec().unwrap(), true);
    assert_eq!(big.answers().len(), 100);
}

#[test]
fn garbage_with_a_header_gets_formerr_and_shorter_garbage_is_dropped() {
    let mut bytes = vec![0xAB, 0xCD, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    bytes.extend_from_slice(&[0x3f, 0xff]);
    let reply = answer(&bytes, true);
    assert_eq!(reply.id(), 0xABCD);
    assert_eq!(reply.response_code(), ResponseCode::FormErr);
    assert_eq!(respond(&[1, 2, 3], &services(), DOMAIN, true), Reply::Drop);
}

proptest! {
    #[test]
    fn random_bytes_never_panic_the_responder(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = respond(&bytes, &services(), DOMAIN, true);
    }

    #[test]
    fn mutated_valid_queries_never_panic_the_responder(
        flips in proptest::collection::vec((0usize..64, any::<u8>()), 1..8)
    ) {
        let mut bytes = query("_pg._tcp.db.default.svc.cluster.local.", RecordType::SRV, 9);
        for (at, value) in flips {
            let i = at % bytes.len();
            bytes[i] = value;
        }
        let _ = respond(&bytes, &services(), DOMAIN, true);
    }
}

/// A fake upstream on 127.0.0.1 (UDP and TCP) answering every A query with 192.0.2.53.
struct FakeUpstream {
    addr: SocketAddr,
    seen: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn upstream_reply(request: &[u8]) -> Vec<u8> {
    let message = Message::from_vec(request).unwrap();
    let mut reply = Message::new();
    reply
        .set_id(message.id())
        .set_message_type(MessageType::Response)
        .set_recursion_available(true)
        .add_queries(message.queries().iter().cloned());
    let name = message.queries()[0].name().clone();
    reply.add_answer(a_record(name, Ipv4Addr::new(192, 0, 2, 53)));
    reply.to_vec().unwrap()
}

async fn fake_upstream() -> FakeUpstream {
    let (udp, tcp) = bind_pair("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = udp.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let seen_udp = seen.clone();
    let seen_tcp = seen.clone();
    let udp_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((len, peer)) = udp.recv_from(&mut buf).await {
            seen_udp.fetch_add(1, Ordering::SeqCst);
            let _ = udp.send_to(&upstream_reply(&buf[..len]), peer).await;
        }
    });
    let tcp_task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            seen_tcp.fetch_add(1, Ordering::SeqCst);
            if let Ok(request) = read_frame(&mut stream).await {
                let _ = write_frame(&mut stream, &upstream_reply(&request)).await;
            }
        }
    });
    FakeUpstream {
        addr,
        seen,
        tasks: vec![udp_task, tcp_task],
    }
}

fn config(upstreams: Vec<SocketAddr>) -> DnsConfig {
    DnsConfig {
        domain: DOMAIN.into(),
        upstreams,
        upstream_timeout: Duration::from_millis(300),
    }
}

async fn ask_udp(server: SocketAddr, request: &[u8]) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(request, server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .expect("dns reply within 5s")
        .unwrap();
    Message::from_vec(&buf[..len]).unwrap()
}

async fn ask_tcp(server: SocketAddr, request: &[u8]) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    write_frame(&mut stream, request).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut stream))
        .await
        .expect("dns reply within 5s")
        .unwrap();
    Message::from_vec(&reply).unwrap()
}

#[tokio::test]
async fn the_server_answers_cluster_names_and_forwards_the_rest_over_udp_and_tcp() {
    let upstream = fake_upstream().await;
    let directory = ServiceDirectory::default();
    directory.replace(services());
    let server = DnsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        config(vec![upstream.addr]),
        directory,
    )
    .await
    .unwrap();
    let addr = server.local_addr();

    let request = query("web.default.svc.cluster.local.", RecordType::A, 11);
    assert_eq!(a_ips(&ask_udp(addr, &request).await), vec!["10.96.0.20"]);
    assert_eq!(a_ips(&ask_tcp(addr, &request).await), vec!["10.96.0.20"]);
    assert_eq!(upstream.seen.load(Ordering::SeqCst), 0);

    let request = query("example.org.", RecordType::A, 12);
    let reply = ask_udp(addr, &request).await;
    assert_eq!((reply.id(), a_ips(&reply)), (12, vec!["192.0.2.53".into()]));
    let reply = ask_tcp(addr, &request).await;
    assert_eq!((reply.id(), a_ips(&reply)), (12, vec!["192.0.2.53".into()]));
    assert_eq!(upstream.seen.load(Ordering::SeqCst), 2);

    // Big headless answers: truncated over UDP, whole over TCP.
    let request = query("many.default.svc.cluster.local.", RecordType::A, 13);
    assert!(ask_udp(addr, &request).await.truncated());
    assert_eq!(ask_tcp(addr, &request).await.answers().len(), 100);
}

#[tokio::test]
async fn a_dead_first_upstream_falls_through_to_the_next_and_none_gives_servfail() {
    let upstream = fake_upstream().await;
    // A bound but silent socket: queries to it time out.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let server = DnsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        config(vec![silent_addr, upstream.addr]),
        ServiceDirectory::default(),
    )
    .await
    .unwrap();
    let reply = ask_udp(
        server.local_addr(),
        &query("example.org.", RecordType::A, 5),
    )
    .await;
    assert_eq!(a_ips(&reply), vec!["192.0.2.53"]);

    let lonely = DnsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        config(vec![silent_addr]),
        ServiceDirectory::default(),
    )
    .await
    .unwrap();
    let reply = ask_udp(
        lonely.local_addr(),
        &query("example.org.", RecordType::A, 6),
    )
    .await;
    assert_eq!(reply.response_code(), ResponseCode::ServFail);
    assert_eq!(reply.id(), 6);
}

#[tokio::test]
async fn a_replaced_directory_is_seen_by_the_running_server() {
    let directory = ServiceDirectory::default();
    let server = DnsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        config(vec![]),
        directory.clone(),
    )
    .await
    .unwrap();
    let request = query("web.default.svc.cluster.local.", RecordType::A, 2);
    let reply = ask_udp(server.local_addr(), &request).await;
    assert_eq!(reply.response_code(), ResponseCode::NXDomain);
    directory.replace(services());
    let reply = ask_udp(server.local_addr(), &request).await;
    assert_eq!(a_ips(&reply), vec!["10.96.0.20"]);
}

#[tokio::test]
async fn random_datagrams_and_broken_tcp_frames_do_not_stop_the_server() {
    let upstream = fake_upstream().await;
    let directory = ServiceDirectory::default();
    directory.replace(services());
    let server = DnsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        config(vec![upstream.addr]),
        directory,
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for round in 0..300usize {
        // xorshift: deterministic noise, lengths 0..700.
        let len = round * 7 % 700;
        let noise: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        socket.send_to(&noise, addr).await.unwrap();
    }
    // A TCP client that announces 500 bytes and hangs up after 3.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&[0x01, 0xF4, 1, 2, 3]).await.unwrap();
    drop(stream);

    let request = query("web.default.svc.cluster.local.", RecordType::A, 77);
    let reply = ask_udp(addr, &request).await;
    // Replies to the noise may still be in flight on other sockets; ours is ours.
    assert_eq!((reply.id(), a_ips(&reply)), (77, vec!["10.96.0.20".into()]));
    assert_eq!(a_ips(&ask_tcp(addr, &request).await), vec!["10.96.0.20"]);
}

#[test]
fn the_config_comes_from_cluster_toml_domain_and_node_resolvers() {
    let text = r#"name = "lab"
api-vip = "192.168.202.150"
api-port = 6443
pod-cidr = "10.244.0.0/16"
service-cidr = "10.96.0.0/12"
dns-domain = "corp.example"

[network]
prefix = "192.168.202.0/24"
gateway = "192.168.202.1"
dns = ["192.168.202.1", "192.168.202.2"]

[[node]]
name = "master-1"
roles = ["master", "etcd"]
ip = "192.168.202.157"
mac = "52:54:00:00:00:02"
"#;
    let path = std::path::Path::new("/x/cluster.toml");
    let file = crate::cluster::parse(text, path).expect("parse");
    let cluster = crate::cluster::validate(file, std::path::Path::new("/x"), Some((path, text)))
        .expect("valid cluster");
    let config = DnsConfig::from_cluster(&cluster);
    assert_eq!(config.domain, "corp.example");
    assert_eq!(
        config.upstreams,
        vec![
            "192.168.202.1:53".parse::<SocketAddr>().unwrap(),
            "192.168.202.2:53".parse().unwrap()
        ]
    );
    assert_eq!(
        crate::proxy::rules::RulesConfig::from_cluster(&cluster).cluster_cidr,
        "10.244.0.0/16".parse::<ipnet::Ipv4Net>().unwrap()
    );
}
