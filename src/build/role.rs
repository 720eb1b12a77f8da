//! What each role's image carries: which files of which Debian packages, which kernel
//! modules, which of the cluster's secrets (docs/ARCHITECTURE.md §3).
//!
//! Packages are taken file by file through [`Part`] filters; shared libraries come only
//! through the ELF `DT_NEEDED` closure of the binaries taken, resolved within the library
//! packages of the lock.

use crate::cluster::{Cluster, Profile, Role};

/// Files taken from one package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub package: &'static str,
    /// Glob patterns (see [`super::deb::Filter`]).
    pub patterns: &'static [&'static str],
    /// Which of the taken files are executables whose libraries must be resolved.
    pub binaries: &'static [&'static str],
}

/// Where the ESP's boot loader comes from.
pub const SYSTEMD_BOOT: Part = Part {
    package: "systemd-boot-efi",
    patterns: &["usr/lib/systemd/boot/efi/systemd-bootx64.efi"],
    binaries: &[],
};

/// Patterns for the kernel package: the image and every module (selected later).
pub const KERNEL_PATTERNS: &[&str] = &[
    "boot/vmlinuz-*",
    "lib/modules/*/kernel/**",
    "lib/modules/*/modules.builtin*",
];

/// Patterns for library packages: candidates for the `DT_NEEDED` closure.
pub const LIBRARY_PATTERNS: &[&str] = &[
    "lib/x86_64-linux-gnu/*.so*",
    "usr/lib/x86_64-linux-gnu/*.so*",
    "lib64/*",
];

const ETCD: Part = Part {
    package: "etcd-server",
    patterns: &["usr/bin/etcd"],
    binaries: &["usr/bin/etcd"],
};
const CONTAINERD: Part = Part {
    package: "containerd",
    patterns: &["usr/bin/containerd", "usr/bin/containerd-shim-runc-v2"],
    binaries: &["usr/bin/containerd", "usr/bin/containerd-shim-runc-v2"],
};
const RUNC: Part = Part {
    package: "runc",
    patterns: &["usr/sbin/runc"],
    binaries: &["usr/sbin/runc"],
};
const CNI: Part = Part {
    package: "containernetworking-plugins",
    patterns: &[
        "usr/lib/cni/bridge",
        "usr/lib/cni/host-local",
        "usr/lib/cni/loopback",
        "usr/lib/cni/portmap",
    ],
    binaries: &[
        "usr/lib/cni/bridge",
        "usr/lib/cni/host-local",
        "usr/lib/cni/loopback",
        "usr/lib/cni/portmap",
    ],
};
const NFT: Part = Part {
    package: "nftables",
    patterns: &["usr/sbin/nft"],
    binaries: &["usr/sbin/nft"],
};
/// `ip` and `bridge`: the VXLAN overlay of `kimg proxy` is programmed through them.
const IPROUTE2: Part = Part {
    package: "iproute2",
    patterns: &["bin/ip", "sbin/bridge"],
    binaries: &["bin/ip", "sbin/bridge"],
};
const BUSYBOX: Part = Part {
    package: "busybox-static",
    patterns: &["bin/busybox"],
    binaries: &["bin/busybox"],
};

/// The package parts a profile's rootfs takes (kernel and libraries aside).
pub fn parts(profile: &Profile) -> Vec<Part> {
    let mut parts = Vec::new();
    if profile.has(Role::Etcd) {
        parts.push(ETCD);
    }
    if profile.has(Role::Worker) {
        parts.extend([CONTAINERD, RUNC, CNI]);
    }
    // Workers and masters both run the Service proxy and the pod overlay.
    if profile.has(Role::Worker) || profile.has(Role::Master) {
        parts.extend([NFT, IPROUTE2]);
    }
    if profile.debug_shell {
        parts.push(BUSYBOX);
    }
    parts
}

/// Every Debian package name a profile needs (what the lock must cover).
pub fn packages(profile: &Profile) -> Vec<String> {
    let mut names: Vec<String> = parts(profile)
        .iter()
        .map(|p| p.package.to_string())
        .collect();
    names.push(profile.kernel.package().to_string());
    if profile.outputs.disk {
        names.push(SYSTEMD_BOOT.package.to_string());
    }
    names.extend(profile.packages.iter().cloned());
    names.sort();
    names.dedup();
    names
}

/// Kernel modules the init loads, in addition to the profile's own list.
pub fn modules(profile: &Profile) -> Vec<String> {
    let mut m: Vec<&str> = vec!["virtio_pci", "virtio_net", "virtio_blk"];
    if profile.has(Role::Worker) {
        m.extend(["overlay", "bridge", "br_netfilter", "veth"]);
    }
    if profile.has(Role::Worker) || profile.has(Role::Master) {
        m.extend([
            "vxlan",
            "nf_conntrack",
            "nf_nat",
            "nf_tables",
            "nft_chain_nat",
            "nft_ct",
            "nft_nat",
            "nft_masq",
            // What the proxy's ruleset uses: fib (local NodePorts), numgen (load
            // balancing), reject (Services without endpoints).
            "nft_fib",
            "nft_fib_ipv4",
            "nft_numgen",
            "nft_reject",
            "nft_reject_ipv4",
            "nf_reject_ipv4",
        ]);
    }
    let mut out: Vec<String> = m.into_iter().map(String::from).collect();
    out.extend(profile.modules.iter().cloned());
    out.dedup();
    out
}

/// Files of `secrets/pki/` (relative paths) that an image of these roles may carry.
/// Workers get only the cluster CA certificate; their bootstrap token comes separately.
pub fn pki_files(cluster: &Cluster, profile: &Profile) -> Vec<String> {
    let mut files = Vec::new();
    let mut add = |f: String| {
        if !files.contains(&f) {
            files.push(f);
        }
    };
    if profile.has(Role::Etcd) {
        add("etcd/ca.crt".into());
        add("etcd/healthcheck-client.crt".into());
        add("etcd/healthcheck-client.key".into());
        for n in cluster.nodes_with(Role::Etcd) {
            for f in ["server.crt", "server.key", "peer.crt", "peer.key"] {
                add(format!("etcd/{}/{f}", n.name));
            }
        }
    }
    if profile.has(Role::Master) {
        for f in [
            "ca.crt",
            "ca.key",
            "sa.key",
            "sa.pub",
            "apiserver.crt",
            "apiserver.key",
            "apiserver-kubelet-client.crt",
            "apiserver-kubelet-client.key",
            "apiserver-etcd-client.crt",
            "apiserver-etcd-client.key",
            "scheduler.crt",
            "scheduler.key",
            "controller-manager.crt",
            "controller-manager.key",
            "admin.crt",
            "admin.key",
            "front-proxy-ca.crt",
            "front-proxy-client.crt",
            "front-proxy-client.key",
            "etcd/ca.crt",
            crate::pki::ENCRYPTION_KEY,
        ] {
            add(f.into());
        }
    }
    if profile.has(Role::Worker) {
        add("ca.crt".into());
    }
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{file_from_options, validate, NewOptions};

    fn seeds() -> Cluster {
        let opts = NewOptions {
            vip: Some("192.168.202.160".into()),
            masters: vec!["192.168.202.157".into()],
            etcd: vec![
                "192.168.202.161".into(),
                "192.168.202.162".into(),
                "192.168.202.163".into(),
            ],
            workers: vec!["192.168.202.165".into()],
            ..Default::default()
        };
        validate(
            file_from_options(&opts).unwrap(),
            std::path::Path::new("/c"),
            None,
        )
        .unwrap()
    }

    fn profile(name: &str) -> Profile {
        Profile::find(name, Some(std::path::Path::new("/nonexistent"))).unwrap()
    }

    #[test]
    fn a_worker_image_carries_no_key_at_all() {
        let files = pki_files(&seeds(), &profile("worker"));
        assert_eq!(files, ["ca.crt"]);
    }

    #[test]
    fn a_master_image_never_carries_the_etcd_ca_key() {
        let files = pki_files(&seeds(), &profile("master"));
        assert!(files.contains(&"ca.key".to_string()));
        assert!(!files.iter().any(|f| f == "etcd/ca.key"));
        assert!(!files.iter().any(|f| f.contains("/peer.")), "{files:?}");
    }

    #[test]
    fn an_etcd_image_carries_its_members_certs_but_no_cluster_ca_or_sa_key() {
        let files = pki_files(&seeds(), &profile("etcd"));
        assert!(files.contains(&"etcd/etcd-3/peer.key".to_string()));
        for forbidden in ["ca.key", "sa.key", "etcd/ca.key"] {
            assert!(
                !files.iter().any(|f| f == forbidden),
                "{forbidden} in {files:?}"
            );
        }
    }

    #[test]
    fn the_worker_takes_containerd_runc_cni_and_nft() {
        let names = packages(&profile("worker"));
        for p in [
            "containerd",
            "runc",
            "containernetworking-plugins",
            "nftables",
            "linux-image-cloud-amd64",
        ] {
            assert!(names.iter().any(|n| n == p), "{p} missing from {names:?}");
        }
        assert!(!names.iter().any(|n| n == "etcd-server"));
    }
}
