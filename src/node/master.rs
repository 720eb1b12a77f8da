//! The master role (docs/ARCHITECTURE.md §6): `kimg apiserver`, `kimg scheduler` and `kimg
//! controller-manager` as supervised services, and the apiserver's readiness probe.
//!
//! How: the apiserver reads the image's `/etc/kimg` (cluster, PKI, bootstrap tokens),
//! stores in every etcd member of the cluster over TLS, serves on :6443 and writes the
//! components' kubeconfigs (pointing at 127.0.0.1:6443) into [`CONF_DIR`]. The scheduler
//! and controller-manager start with it; until those files exist or the apiserver answers
//! they exit and the supervisor restarts them with back-off. Both run under Lease-based
//! leader election, so every master runs all three. The controller-manager signs kubelet
//! CSRs with the cluster CA of the image and hands out node pod CIDRs from `pod-cidr`.
//! `kimg vip` runs on every master too: it holds the cluster's `api-vip` on the interface
//! carrying the node address while this master's apiserver is healthy and it wins the
//! Lease (see [`super::vip`]); workers of a multi-master cluster reach the API through it.

use crate::cluster::{Cluster, Node};

use super::etcd::PKI_DIR as PKI;
use super::system::{HealthProbe, ServiceSpec, KIMG_BIN as KIMG};

/// Where the apiserver writes the local components' kubeconfigs.
pub const CONF_DIR: &str = "/run/kimg";
/// The apiserver's port.
pub const API_PORT: u16 = 6443;

/// The control-plane services of master `node`: apiserver, scheduler,
/// controller-manager, the VIP manager and, unless the machine is also a worker (whose
/// services include it), the Service proxy with the pod overlay: it registers the master
/// as a Node that runs no pods, so the apiserver reaches Service and pod IPs (admission
/// webhooks, aggregated API servers).
pub fn services(cluster: &Cluster, node: &Node) -> Vec<ServiceSpec> {
    let listen = format!("0.0.0.0:{API_PORT}");
    let scheduler_conf = format!("{CONF_DIR}/scheduler.conf");
    let cm_conf = format!("{CONF_DIR}/controller-manager.conf");
    let pod_cidr = cluster.pod_cidr.to_string();
    let mut out = vec![
        ServiceSpec::new(
            "apiserver",
            &[
                KIMG,
                "apiserver",
                "--config-dir",
                "/etc/kimg",
                "--listen",
                &listen,
                "--kubeconfig-dir",
                CONF_DIR,
                "--audit-log-path",
                crate::apiserver::audit::MASTER_LOG,
            ],
        ),
        ServiceSpec::new(
            "scheduler",
            &[KIMG, "scheduler", "--kubeconfig", &scheduler_conf],
        ),
        ServiceSpec::new(
            "controller-manager",
            &[
                KIMG,
                "controller-manager",
                "--kubeconfig",
                &cm_conf,
                "--cluster-cidr",
                &pod_cidr,
                "--cluster-signing-cert-file",
                &format!("{PKI}/ca.crt"),
                "--cluster-signing-key-file",
                &format!("{PKI}/ca.key"),
            ],
        ),
        ServiceSpec::new(
            "vip",
            &[
                KIMG,
                "vip",
                "--vip",
                &cluster.api_vip.to_string(),
                "--node-ip",
                &node.ip.to_string(),
                "--identity",
                &node.name,
                "--kubeconfig",
                &format!("{CONF_DIR}/admin.conf"),
                "--lease-duration",
                &humantime::format_duration(cluster.vip_timing.lease_duration).to_string(),
                "--renew-deadline",
                &humantime::format_duration(cluster.vip_timing.renew_deadline).to_string(),
                "--retry-period",
                &humantime::format_duration(cluster.vip_timing.retry_period).to_string(),
            ],
        ),
    ];
    if !node.has(crate::cluster::Role::Worker) {
        out.push(ServiceSpec::new(
            "proxy",
            &[
                KIMG,
                "proxy",
                "--kubeconfig",
                &format!("{CONF_DIR}/admin.conf"),
                "--cluster-cidr",
                &pod_cidr,
                "--node-name",
                &node.name,
                "--node-ip",
                &node.ip.to_string(),
                "--register-node",
            ],
        ));
    }
    out
}

/// GET https://127.0.0.1:6443/readyz as the admin.
pub fn health_probe() -> HealthProbe {
    HealthProbe {
        url: format!("https://127.0.0.1:{API_PORT}/readyz"),
        ca: format!("{PKI}/ca.crt").into(),
        cert: format!("{PKI}/admin.crt").into(),
        key: format!("{PKI}/admin.key").into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{file_from_options, validate, NewOptions};

    #[test]
    fn a_master_runs_apiserver_scheduler_and_controller_manager_from_the_image_config() {
        let opts = NewOptions {
            vip: Some("10.0.0.100".into()),
            etcd: vec!["10.0.0.11".into()],
            masters: vec!["10.0.0.21".into()],
            pod_cidr: Some("10.244.0.0/16".into()),
            ..NewOptions::default()
        };
        let c = validate(file_from_options(&opts).unwrap(), "/c".as_ref(), None).unwrap();
        let node = c.nodes_with(crate::cluster::Role::Master).next().unwrap();
        let s = services(&c, node);
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "apiserver",
                "scheduler",
                "controller-manager",
                "vip",
                "proxy"
            ]
        );
        let proxy = s[4].argv.join(" ");
        assert!(
            proxy.ends_with("--node-ip 10.0.0.21 --register-node"),
            "{proxy}"
        );
        let vip = s[3].argv.join(" ");
        assert!(
            vip.contains("vip --vip 10.0.0.100 --node-ip 10.0.0.21 --identity "),
            "{vip}"
        );
        assert!(
            vip.ends_with("--lease-duration 2s --renew-deadline 1s 500ms --retry-period 250ms"),
            "{vip}"
        );
        let cm = s[2].argv.join(" ");
        assert!(cm.contains("--cluster-cidr 10.244.0.0/16"), "{cm}");
        assert!(
            cm.contains("--cluster-signing-key-file /etc/kimg/pki/ca.key"),
            "{cm}"
        );
        assert!(s[1]
            .argv
            .join(" ")
            .ends_with("--kubeconfig /run/kimg/scheduler.conf"));
        // The kubeconfigs the components read are the ones the apiserver writes.
        assert!(s[0].argv.join(" ").contains("--kubeconfig-dir /run/kimg"));
        assert!(health_probe().url.ends_with(":6443/readyz"));
    }
}
