//! The worker role (docs/ARCHITECTURE.md §8): containerd, `kimg kubelet` and `kimg proxy` as
//! supervised services.
//!
//! How: containerd keeps its images and snapshots under `STATE` (`/var/lib/kimg/containerd`;
//! a tmpfs on diskless machines). The kubelet joins with the image's bootstrap token (given
//! in its environment, never on the command line) and CA, stores its credentials under
//! `/var/lib/kimg/kubelet` and writes `kubelet.conf` there, which the proxy then uses: the
//! proxy waits (exits and is restarted with back-off) until it exists. The proxy programs
//! Services, serves cluster DNS on port 53 of the node's address (pods use it as their
//! resolver) and programs the VXLAN overlay. OCI archives baked into the image
//! under [`OCI_DIR`] are imported at kubelet start (air-gapped clusters).
//!
//! Which apiserver: the VIP, except in a cluster with a single master, whose own address
//! is used (nothing else would hold the VIP there).
//!
//! A master that also runs a kubelet (all-in-one, or a profile with both roles) registers
//! with the `node-role.kubernetes.io/control-plane` label, and with its NoSchedule taint
//! when dedicated workers exist ([`taint_masters`]).

use std::net::Ipv4Addr;

use crate::cluster::{Cluster, Node, Role};

use super::system::{ServiceSpec, KIMG_BIN as KIMG};

/// The kubelet's state: client certificate, key and `kubelet.conf`.
pub const KUBELET_DIR: &str = "/var/lib/kimg/kubelet";
/// Where images carry OCI archives for the kubelet to import.
pub const OCI_DIR: &str = "/usr/share/kimg/oci";
/// Where the bootstrap token is baked.
pub const TOKEN_FILE: &str = "/etc/kimg/token";

/// The address workers reach the apiserver on.
pub fn api_address(cluster: &Cluster) -> Ipv4Addr {
    let masters: Vec<&Node> = cluster.nodes_with(Role::Master).collect();
    match masters.as_slice() {
        [only] => only.ip,
        _ => cluster.api_vip,
    }
}

/// The worker services of `node`; `token` is the bootstrap token baked into the image.
pub fn services(cluster: &Cluster, node: &Node, token: &str) -> Vec<ServiceSpec> {
    let server = format!("https://{}:{}", api_address(cluster), cluster.api_port);
    let ip = node.ip.to_string();
    let kubeconfig = format!("{KUBELET_DIR}/kubelet.conf");
    let pod_cidr = cluster.pod_cidr.to_string();
    // The node address, not 0.0.0.0: a UDP answer must come from the address the pod
    // asked, which a wildcard socket does not guarantee on a machine with a pod bridge.
    let dns_listen = format!("{ip}:53");
    let mut kubelet = ServiceSpec::new(
        "kubelet",
        &[
            KIMG,
            "kubelet",
            "--server",
            &server,
            "--ca-file",
            "/etc/kimg/pki/ca.crt",
            "--state-dir",
            KUBELET_DIR,
            "--node-name",
            &node.name,
            "--node-ip",
            &ip,
            "--cluster-dns",
            &ip,
            "--cluster-domain",
            &cluster.dns_domain,
            "--oci-archive-dir",
            OCI_DIR,
        ],
    );
    kubelet
        .env
        .push(("KIMG_BOOTSTRAP_TOKEN".into(), token.trim().to_string()));
    if !cluster.insecure_registries.is_empty() {
        kubelet.argv.extend([
            "--insecure-registry".into(),
            cluster.insecure_registries.join(","),
        ]);
    }
    if node.has(Role::Master) {
        kubelet
            .argv
            .extend(["--node-labels".into(), format!("{CONTROL_PLANE}=")]);
        if taint_masters(cluster) {
            kubelet.argv.extend([
                "--register-with-taints".into(),
                format!("{CONTROL_PLANE}=:NoSchedule"),
            ]);
        }
    }
    vec![
        ServiceSpec::new(
            "containerd",
            &[
                "/usr/bin/containerd",
                "--root",
                "/var/lib/kimg/containerd",
                "--state",
                "/run/containerd",
                "--address",
                "/run/containerd/containerd.sock",
            ],
        ),
        kubelet,
        ServiceSpec::new(
            "proxy",
            &[
                KIMG,
                "proxy",
                "--kubeconfig",
                &kubeconfig,
                "--cluster-cidr",
                &pod_cidr,
                "--dns-listen",
                &dns_listen,
                "--dns-domain",
                &cluster.dns_domain,
                "--node-name",
                &node.name,
                "--node-ip",
                &ip,
            ],
        ),
    ]
}

/// The label (and taint key) of control-plane nodes.
pub const CONTROL_PLANE: &str = "node-role.kubernetes.io/control-plane";

/// Masters that run a kubelet are tainted NoSchedule only when the cluster has machines
/// that are workers and not masters: otherwise (all-in-one, stacked masters doubling as
/// workers) the taint would leave no node for workloads.
pub fn taint_masters(cluster: &Cluster) -> bool {
    cluster
        .nodes_with(Role::Worker)
        .any(|n| !n.has(Role::Master))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{file_from_options, validate, NewOptions};

    fn cluster(masters: &[&str]) -> Cluster {
        let opts = NewOptions {
            vip: Some("10.0.0.100".into()),
            etcd: vec!["10.0.0.11".into()],
            masters: masters.iter().map(|m| m.to_string()).collect(),
            workers: vec!["10.0.0.31".into()],
            ..NewOptions::default()
        };
        validate(file_from_options(&opts).unwrap(), "/c".as_ref(), None).unwrap()
    }

    #[test]
    fn a_worker_runs_containerd_kubelet_and_proxy_with_the_token_only_in_the_environment() {
        let c = cluster(&["10.0.0.21"]);
        let node = c.nodes_with(Role::Worker).next().unwrap();
        let s = services(&c, node, "abcdef.0123456789abcdef\n");
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["containerd", "kubelet", "proxy"]);
        let kubelet = s[1].argv.join(" ");
        assert!(!kubelet.contains("0123456789abcdef"), "{kubelet}");
        assert!(s[1].env.contains(&(
            "KIMG_BOOTSTRAP_TOKEN".into(),
            "abcdef.0123456789abcdef".into()
        )));
        // One master: its own address, since nothing holds the VIP.
        assert!(
            kubelet.contains("--server https://10.0.0.21:6443"),
            "{kubelet}"
        );
        let proxy = s[2].argv.join(" ");
        assert!(proxy.contains(&format!("--kubeconfig {KUBELET_DIR}/kubelet.conf")));
        assert!(proxy.contains("--node-ip 10.0.0.31"), "{proxy}");
        assert!(proxy.contains("--dns-listen 10.0.0.31:53"), "{proxy}");
        assert!(!kubelet.contains("--insecure-registry"), "{kubelet}");
        let mut c = c.clone();
        c.insecure_registries = vec!["192.168.1.100:5000".into(), "reg.lan:80".into()];
        let s = services(&c, node, "abcdef.0123456789abcdef\n");
        let kubelet = s[1].argv.join(" ");
        assert!(
            kubelet.contains("--insecure-registry 192.168.1.100:5000,reg.lan:80"),
            "{kubelet}"
        );
    }

    #[test]
    fn a_master_running_a_kubelet_is_labelled_and_tainted_only_when_workers_exist() {
        let c = cluster(&["10.0.0.21"]);
        let mut master = c.nodes_with(Role::Master).next().unwrap().clone();
        master.roles.push(Role::Worker);
        let argv = services(&c, &master, "abcdef.0123456789abcdef")[1]
            .argv
            .join(" ");
        assert!(
            argv.contains("--node-labels node-role.kubernetes.io/control-plane="),
            "{argv}"
        );
        assert!(
            argv.contains(
                "--register-with-taints node-role.kubernetes.io/control-plane=:NoSchedule"
            ),
            "{argv}"
        );
        // All-in-one: the only node must stay schedulable.
        let solo = validate(
            file_from_options(&NewOptions::default()).unwrap(),
            "/c".as_ref(),
            None,
        )
        .unwrap();
        let node = solo.nodes.first().unwrap();
        let argv = services(&solo, node, "abcdef.0123456789abcdef")[1]
            .argv
            .join(" ");
        assert!(argv.contains("--node-labels"), "{argv}");
        assert!(!argv.contains("--register-with-taints"), "{argv}");
        // A plain worker carries neither.
        let w = c.nodes_with(Role::Worker).next().unwrap();
        assert!(!services(&c, w, "t")[1]
            .argv
            .join(" ")
            .contains("control-plane"));
    }

    #[test]
    fn with_several_masters_workers_use_the_vip() {
        let c = cluster(&["10.0.0.21", "10.0.0.22", "10.0.0.23"]);
        assert_eq!(api_address(&c), "10.0.0.100".parse::<Ipv4Addr>().unwrap());
    }
}
