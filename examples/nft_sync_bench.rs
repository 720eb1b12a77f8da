//! How long a full kube-proxy sync takes for 1,000 Services × 10 endpoints.
//!
//! What: builds 1,000 ClusterIP+NodePort Services, each with one EndpointSlice of 10
//! ready endpoints (k8s-openapi objects, as a watch would deliver them), then times
//! - resolving them into the service model ([`kimg::proxy::model::resolve`]),
//! - rendering the nftables ruleset ([`kimg::proxy::rules::render`]),
//! - applying it with `nft -f -` inside a fresh network namespace (first load, then a
//!   replace of the existing table with one endpoint changed), and `nft -c` check mode.
//!
//! Run: `cargo run --example nft_sync_bench` (as root, with `nft` and `ip` installed).
//! Prints `key=value` lines. Limits: the rules live only in the scratch namespace and no
//! packets are sent; the apply time includes spawning `ip netns exec nft`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kimg::proxy::model::{resolve, ClusterObjects, SERVICE_NAME_LABEL};
use kimg::proxy::netns::{run_checked, Netns};
use kimg::proxy::rules::{render, Nft, NftCommand, RulesConfig, TABLE};

const SERVICES: usize = 1000;
const ENDPOINTS: usize = 10;
const RENDER_ROUNDS: usize = 5;

fn objects(bump: usize) -> ClusterObjects {
    let mut objects = ClusterObjects::default();
    for i in 0..SERVICES {
        let name = format!("svc-{i:04}");
        objects.services.push(Service {
            metadata: ObjectMeta {
                namespace: Some("bench".into()),
                name: Some(name.clone()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("NodePort".into()),
                cluster_ip: Some(format!("10.96.{}.{}", i / 250, i % 250 + 1)),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    protocol: Some("TCP".into()),
                    target_port: Some(IntOrString::String("http".into())),
                    node_port: Some(30000 + i as i32),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        let endpoints = (0..ENDPOINTS)
            .map(|e| {
                let n = i * ENDPOINTS + e + bump;
                Endpoint {
                    addresses: vec![format!("10.244.{}.{}", n / 250, n % 250 + 1)],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            })
            .collect::<Vec<_>>();
        objects.endpoint_slices.push(EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some("bench".into()),
                name: Some(format!("{name}-abcde")),
                labels: Some(BTreeMap::from([(SERVICE_NAME_LABEL.into(), name)])),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(endpoints),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
        });
    }
    objects
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn main() -> anyhow::Result<()> {
    let config = RulesConfig {
        cluster_cidr: "10.244.0.0/16".parse()?,
    };
    let cluster = objects(0);

    let mut resolve_best = Duration::MAX;
    let mut render_best = Duration::MAX;
    let mut text = String::new();
    for _ in 0..RENDER_ROUNDS {
        let t = Instant::now();
        let services = resolve(&cluster);
        resolve_best = resolve_best.min(t.elapsed());
        let t = Instant::now();
        text = render(&services, &config);
        render_best = render_best.min(t.elapsed());
    }
    println!("services={SERVICES} endpoints_per_service={ENDPOINTS}");
    println!(
        "ruleset_bytes={} ruleset_lines={}",
        text.len(),
        text.lines().count()
    );
    println!("resolve_ms={} (best of {RENDER_ROUNDS})", ms(resolve_best));
    println!("render_ms={} (best of {RENDER_ROUNDS})", ms(render_best));

    let ns = Netns::create("nftbench").context("creating a netns (needs root and ip)")?;
    let mut check = NftCommand {
        netns: Some(ns.name().into()),
        check_only: true,
    };
    let t = Instant::now();
    check.apply(&text).context("nft -c")?;
    println!("nft_check_ms={}", ms(t.elapsed()));

    let mut nft = NftCommand {
        netns: Some(ns.name().into()),
        check_only: false,
    };
    let t = Instant::now();
    nft.apply(&text).context("first nft -f")?;
    println!("nft_apply_first_ms={}", ms(t.elapsed()));

    // One endpoint moved in every service: a full replace of a loaded table.
    let changed = render(&resolve(&objects(1)), &config);
    let t = Instant::now();
    nft.apply(&changed).context("replacing nft -f")?;
    println!("nft_apply_replace_ms={}", ms(t.elapsed()));

    let t = Instant::now();
    let listed = run_checked(ns.command("nft").args(["list", "table", "ip", TABLE]))?;
    println!("nft_list_ms={}", ms(t.elapsed()));
    let dnats = String::from_utf8_lossy(&listed.stdout)
        .matches("dnat to")
        .count();
    println!("dnat_rules_loaded={dnats}");
    anyhow::ensure!(
        dnats == SERVICES * ENDPOINTS,
        "expected {} dnat rules, found {dnats}",
        SERVICES * ENDPOINTS
    );
    Ok(())
}
