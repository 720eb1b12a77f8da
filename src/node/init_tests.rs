//! Tests of the boot sequence against the recording [`System`].

use super::*;
use crate::cluster::{file_from_options, render, NewOptions};
use crate::node::dhcp::MessageType;
use crate::node::recording::{Call, FakeDhcpServer, Recording};
use crate::node::system::{ExitStatus, Signal};

fn cluster_toml() -> String {
    let opts = NewOptions {
        name: Some("prod".into()),
        vip: Some("10.0.0.100".into()),
        etcd: vec![
            "etcd-1=10.0.0.11@52:54:00:00:00:11".into(),
            "etcd-2=10.0.0.12@52:54:00:00:00:12".into(),
            "etcd-3=10.0.0.13@52:54:00:00:00:13".into(),
        ],
        masters: vec!["master-1=10.0.0.21@52:54:00:00:00:21".into()],
        ..NewOptions::default()
    };
    render(&file_from_options(&opts).unwrap())
}

const IMAGE: &str = r#"
profile = "etcd"
roles = ["etcd"]
kernel-version = "6.1.0-28-cloud-amd64"
modules = ["kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/net/virtio_net.ko.xz"]
"#;

fn machine(cmdline: &str, mac: &str) -> Recording {
    Recording::new()
        .with_file("/etc/kimg/image.toml", IMAGE)
        .with_file("/etc/kimg/cluster.toml", cluster_toml())
        .with_file("/proc/cmdline", cmdline)
        .with_file("/sys/class/net/lo/address", "00:00:00:00:00:00\n")
        .with_file("/sys/class/net/eth0/address", format!("{mac}\n"))
        .with_file("/sys/class/net/eth0/device/vendor", "0x1af4\n")
}

fn with_state_disk(r: Recording) -> Recording {
    r.with_file(
        "/sys/class/block/vda/uevent",
        "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n",
    )
    .with_file(
        "/sys/class/block/vda2/uevent",
        "MAJOR=254\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\nPARTNAME=STATE\n",
    )
}

fn timings() -> Timings {
    Timings::default()
}

fn mount(source: &str, target: &str, fstype: &str) -> Call {
    Call::Mount {
        source: source.into(),
        target: target.into(),
        fstype: fstype.into(),
    }
}

fn etcd_argv(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .find_map(|c| match c {
            Call::Spawn { name, argv, .. } if name == "etcd" => Some(argv.clone()),
            _ => None,
        })
        .expect("etcd was spawned")
}

#[test]
fn an_etcd_node_boots_through_the_exact_sequence_of_side_effects() {
    let sys = with_state_disk(machine(
        "console=ttyS0 kimg.node=etcd-2",
        "52:54:00:00:00:99",
    ));
    sys.healthy_from(Duration::from_secs(3));
    sys.shutdown_at(Duration::from_secs(10), ShutdownReason::PowerFail);
    let mut init = Init::new(sys, timings());
    let action = init.run();
    assert_eq!(action, PowerAction::PowerOff);

    let calls = init.system().calls();
    let net: Ipv4Net = "10.0.0.12/24".parse().unwrap();
    let mut expected = Vec::new();
    for (src, target, fs) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("tmpfs", "/run", "tmpfs"),
        ("tmpfs", "/tmp", "tmpfs"),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2"),
    ] {
        expected.push(Call::Mkdir(target.into()));
        expected.push(mount(src, target, fs));
        if fs == "devtmpfs" {
            expected.push(Call::AttachConsole);
        }
    }
    expected.extend([
        Call::LoadModule(
            "/lib/modules/6.1.0-28-cloud-amd64/kernel/drivers/virtio/virtio_ring.ko".into(),
        ),
        Call::LoadModule(
            "/lib/modules/6.1.0-28-cloud-amd64/kernel/drivers/net/virtio_net.ko.xz".into(),
        ),
        Call::LinkUp("lo".into()),
        Call::LinkUp("eth0".into()),
        Call::AddAddress("eth0".into(), net),
        Call::DefaultRoute("10.0.0.1".parse().unwrap()),
        Call::WriteFile("/etc/resolv.conf".into(), "nameserver 10.0.0.1\n".into()),
    ]);
    let prefix_len = expected.len();
    assert_eq!(&calls[..prefix_len], &expected[..]);

    let rest: Vec<&Call> = calls[prefix_len..]
        .iter()
        .filter(|c| !matches!(c, Call::WriteFile(..) | Call::Probe(_)))
        .collect();
    let argv = etcd_argv(&calls);
    assert_eq!(
        rest,
        vec![
            &Call::SetHostname("etcd-2".into()),
            &Call::Sysctl("net.ipv4.ip_forward".into(), "1".into()),
            &Call::Mkdir(STATE_DIR.into()),
            &Call::Mknod("/dev/vda2".into(), 254, 2),
            &mount("/dev/vda2", STATE_DIR, "ext4"),
            &Call::Mkdir("/var/log".into()),
            &Call::Spawn {
                name: "etcd".into(),
                argv: argv.clone(),
                pid: 100
            },
            &Call::Signal(100, Signal::Term),
            &Call::Sync,
            &Call::Umount(STATE_DIR.into()),
            &Call::Power(PowerAction::PowerOff),
        ]
    );
    assert_eq!(argv, ["/usr/bin/kimg", "etcd", "--node", "etcd-2"]);

    let lines = init.system().console_lines();
    let pos = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {lines:#?}"))
    };
    assert!(lines.contains(&"kimg: booted role=etcd node=etcd-2 source=cmdline".to_string()));
    assert!(lines.contains(&"kimg: network-up iface=eth0 addr=10.0.0.12/24".to_string()));
    assert!(lines.contains(&"kimg: state kind=ext4 device=/dev/vda2".to_string()));
    assert!(lines.contains(&"kimg: ready role=etcd node=etcd-2 services=etcd".to_string()));
    assert!(pos("kimg: modules loaded=2 failed=0") < pos("kimg: booted"));
    assert!(pos("kimg: booted") < pos("kimg: network-up"));
    assert!(pos("kimg: service-started name=etcd") < pos("kimg: ready"));
    assert!(pos("kimg: ready") < pos("kimg: shutdown reason=sigpwr action=poweroff"));
}

#[test]
fn ready_waits_for_the_etcd_health_endpoint() {
    let sys = machine("kimg.node=etcd-1", "52:54:00:00:00:11");
    sys.healthy_from(Duration::from_secs(4));
    sys.shutdown_at(Duration::from_secs(8), ShutdownReason::Terminate);
    let mut init = Init::new(sys, timings());
    init.run();
    let probes = init
        .system()
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::Probe(u) if u == "https://127.0.0.1:2379/health"))
        .count();
    // probed at about 0, 1, 2, 3 and 4 s, then never again once ready
    assert!((4..=6).contains(&probes), "{probes} probes");
}

#[test]
fn a_machine_booted_over_the_network_keeps_etcd_on_a_tmpfs() {
    let sys = machine("", "52:54:00:00:00:13");
    sys.shutdown_at(Duration::from_secs(1), ShutdownReason::CtrlAltDel);
    let mut init = Init::new(sys, timings());
    assert_eq!(init.run(), PowerAction::Reboot);
    let calls = init.system().calls();
    let argv = etcd_argv(&calls);
    assert_eq!(
        argv,
        ["/usr/bin/kimg", "etcd", "--node", "etcd-3"],
        "identified by MAC"
    );
    assert!(calls.contains(&mount("tmpfs", STATE_DIR, "tmpfs")));
    assert!(
        !calls.contains(&Call::Umount(STATE_DIR.into())),
        "tmpfs is not unmounted"
    );
    assert!(init
        .system()
        .console_lines()
        .contains(&"kimg: state kind=tmpfs".to_string()));
}

#[test]
fn a_state_partition_that_fails_to_mount_falls_back_to_tmpfs_without_a_disk_boot() {
    let sys =
        with_state_disk(machine("kimg.node=etcd-1", "52:54:00:00:00:11")).failing("/dev/vda2");
    sys.shutdown_at(Duration::from_secs(1), ShutdownReason::Terminate);
    let mut init = Init::new(sys, timings());
    init.run();
    let lines = init.system().console_lines();
    assert!(lines
        .iter()
        .any(|l| l.starts_with("kimg: state-mount-failed device=/dev/vda2")));
    assert!(lines.contains(&"kimg: state kind=tmpfs".to_string()));
}

/// Booted from its disk, an etcd machine whose STATE is missing waits for it (saying so),
/// never mounts a tmpfs for it, starts etcd only once the partition appears.
#[test]
fn an_etcd_machine_booted_from_disk_waits_for_its_state_and_never_runs_etcd_on_tmpfs() {
    let sys = machine("kimg.node=etcd-1 kimg.state=disk", "52:54:00:00:00:11").with_file_from(
        Duration::from_secs(75),
        "/sys/class/block/vda2/uevent",
        "MAJOR=254\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\nPARTNAME=STATE\n",
    );
    sys.shutdown_at(Duration::from_secs(90), ShutdownReason::Terminate);
    let mut init = Init::new(sys, timings());
    init.run();
    let calls = init.system().calls();
    assert!(!calls.contains(&mount("tmpfs", STATE_DIR, "tmpfs")));
    let lines = init.system().console_lines();
    let waits = lines
        .iter()
        .filter(|l| l.starts_with("kimg: state-wait role=etcd"))
        .count();
    assert_eq!(waits, 3, "at 0, 30 and 60 s: {lines:#?}");
    let mounted = calls
        .iter()
        .position(|c| *c == mount("/dev/vda2", STATE_DIR, "ext4"))
        .expect("STATE mounted once it appeared");
    let spawned = calls
        .iter()
        .position(|c| matches!(c, Call::Spawn { name, .. } if name == "etcd"))
        .expect("etcd started after STATE");
    assert!(mounted < spawned);
}

#[test]
fn an_etcd_machine_booted_from_disk_with_an_unreadable_state_waits_until_shutdown() {
    let sys = with_state_disk(machine(
        "kimg.node=etcd-1 kimg.state=disk",
        "52:54:00:00:00:11",
    ))
    .failing("/dev/vda2");
    sys.shutdown_at(Duration::from_secs(20), ShutdownReason::PowerFail);
    let mut init = Init::new(sys, timings());
    assert_eq!(init.run(), PowerAction::PowerOff);
    let calls = init.system().calls();
    assert!(!calls.contains(&mount("tmpfs", STATE_DIR, "tmpfs")));
    assert!(!calls.iter().any(|c| matches!(c, Call::Spawn { .. })));
    let lines = init.system().console_lines();
    assert!(lines.iter().any(|l| l.starts_with("kimg: state-wait")));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("kimg: state-mount-failed device=/dev/vda2")));
}

#[test]
fn an_unknown_name_is_retried_forever_and_never_guessed_from_the_mac() {
    let sys = machine("kimg.node=etcd-9 kimg.colour=red", "52:54:00:00:00:11");
    sys.shutdown_at(Duration::from_secs(12), ShutdownReason::PowerFail);
    let mut init = Init::new(sys, timings());
    init.run();
    let lines = init.system().console_lines();
    assert!(lines.contains(&"kimg: cmdline-ignored key=kimg.colour reason=unknown-key".to_string()));
    let failures: Vec<&String> = lines
        .iter()
        .filter(|l| {
            l.starts_with("kimg: identify-failed reason=unknown-node macs=52:54:00:00:00:11")
        })
        .collect();
    assert_eq!(failures.len(), 3, "attempts at 0, 5 and 10 s: {lines:#?}");
    assert!(!lines.iter().any(|l| l.starts_with("kimg: booted")));
    assert!(!init
        .system()
        .calls()
        .iter()
        .any(|c| matches!(c, Call::Spawn { .. } | Call::AddAddress(..))));
    assert_eq!(
        init.system().calls().last(),
        Some(&Call::Power(PowerAction::PowerOff))
    );
}

#[test]
fn an_unlisted_machine_without_a_dhcp_lease_says_so_and_retries() {
    let sys = machine("", "52:54:00:aa:bb:cc");
    sys.shutdown_at(Duration::from_secs(23), ShutdownReason::PowerFail);
    let mut init = Init::new(sys, timings());
    init.run();
    let lines = init.system().console_lines();
    assert!(
        lines.iter().any(|l| l.starts_with(
            "kimg: dhcp-failed iface=eth0 error=\"no DHCP offer on eth0 after 4 discovers\""
        )),
        "{lines:#?}"
    );
    assert!(lines.iter().any(|l| l.starts_with(
        "kimg: identify-failed reason=no-match macs=52:54:00:aa:bb:cc dhcp=no-lease"
    )));
    let discovers = init
        .system()
        .calls()
        .iter()
        .filter(|c| {
            matches!(c, Call::DhcpSend { kind: MessageType::Discover, to, .. } if to.is_broadcast())
        })
        .count();
    assert_eq!(discovers, 4, "four broadcast rounds before giving up");
}

#[test]
fn a_shutdown_while_asking_for_an_address_powers_off_at_once() {
    let sys = machine("", "52:54:00:aa:bb:cc");
    sys.shutdown_at(Duration::from_secs(1), ShutdownReason::PowerButton);
    let mut init = Init::new(sys, timings());
    assert_eq!(init.run(), PowerAction::PowerOff);
    assert!(init.system().now() < Duration::from_secs(2));
    let lines = init.system().console_lines();
    assert!(
        !lines.iter().any(|l| l.starts_with("kimg: identify-failed")),
        "{lines:#?}"
    );
    assert!(lines.contains(&"kimg: shutdown reason=power-button action=poweroff".to_string()));
}

const WORKER_IMAGE: &str = r#"
profile = "worker"
roles = ["worker"]
kernel-version = "6.1.0-28-cloud-amd64"
modules = []
"#;

fn dhcp_server(lease_secs: u32) -> FakeDhcpServer {
    FakeDhcpServer {
        addr: "10.0.0.150/24".parse().unwrap(),
        server: "10.0.0.1".parse().unwrap(),
        router: Some("10.0.0.254".parse().unwrap()),
        dns: vec!["10.0.0.53".parse().unwrap()],
        lease_secs,
        from: Duration::ZERO,
        nak_renewals: false,
    }
}

fn pxe_worker(server: FakeDhcpServer) -> Recording {
    machine("console=ttyS0", "52:54:00:77:00:51")
        .with_file("/etc/kimg/image.toml", WORKER_IMAGE)
        .with_file("/etc/kimg/token", "abcdef.0123456789abcdef\n")
        .with_dhcp_server(server)
}

fn dhcp_sends(calls: &[Call]) -> Vec<(MessageType, String, String)> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::DhcpSend {
                kind, to, ciaddr, ..
            } => Some((*kind, to.to_string(), ciaddr.to_string())),
            _ => None,
        })
        .collect()
}

#[test]
fn an_unlisted_pxe_worker_gets_its_address_by_dhcp_and_joins_under_its_mac_name() {
    let sys = pxe_worker(dhcp_server(3600));
    sys.shutdown_at(Duration::from_secs(2), ShutdownReason::PowerFail);
    let mut init = Init::new(sys, timings());
    init.run();
    let calls = init.system().calls();
    assert_eq!(
        dhcp_sends(&calls),
        vec![
            (
                MessageType::Discover,
                "255.255.255.255".into(),
                "0.0.0.0".into()
            ),
            (
                MessageType::Request,
                "255.255.255.255".into(),
                "0.0.0.0".into()
            ),
        ]
    );
    let net: Ipv4Net = "10.0.0.150/24".parse().unwrap();
    let at = |call: &Call| calls.iter().position(|c| c == call);
    let address = at(&Call::AddAddress("eth0".into(), net)).expect("the leased address is set");
    let route = at(&Call::DefaultRoute("10.0.0.254".parse().unwrap()))
        .expect("the lease's router, not the table's gateway");
    assert!(address < route);
    assert!(calls.contains(&Call::WriteFile(
        "/etc/resolv.conf".into(),
        "nameserver 10.0.0.53\n".into()
    )));
    assert!(calls.contains(&Call::SetHostname("worker-525400770051".into())));
    let kubelet = calls
        .iter()
        .find_map(|c| match c {
            Call::Spawn { name, argv, .. } if name == "kubelet" => Some(argv.join(" ")),
            _ => None,
        })
        .expect("the kubelet was started");
    assert!(
        kubelet.contains("--node-name worker-525400770051"),
        "{kubelet}"
    );
    assert!(kubelet.contains("--node-ip 10.0.0.150"), "{kubelet}");

    let lines = init.system().console_lines();
    let pos = |line: &str| {
        lines
            .iter()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("no {line:?} in {lines:#?}"))
    };
    let bound = pos("kimg: dhcp-bound iface=eth0 ip=10.0.0.150/24 server=10.0.0.1 lease=3600s name=worker-525400770051");
    let booted = pos("kimg: booted role=worker node=worker-525400770051 source=anonymous");
    let up = pos("kimg: network-up iface=eth0 addr=10.0.0.150/24");
    let ready =
        pos("kimg: ready role=worker node=worker-525400770051 services=containerd,kubelet,proxy");
    assert!(bound < booted && booted < up && up < ready);
}

#[test]
fn a_dhcp_server_that_answers_late_is_found_by_a_later_discover() {
    let server = FakeDhcpServer {
        from: Duration::from_secs(1),
        ..dhcp_server(u32::MAX)
    };
    let sys = pxe_worker(server);
    sys.shutdown_at(Duration::from_secs(10), ShutdownReason::PowerFail);
    let mut init = Init::new(sys, timings());
    init.run();
    let kinds: Vec<MessageType> = dhcp_sends(&init.system().calls())
        .into_iter()
        .map(|(k, ..)| k)
        .collect();
    assert_eq!(
        kinds,
        [MessageType::Discover, MessageType::Discover, MessageType::Request],
        "discovers at 0 s (unanswered) and 2 s, then the request; an infinite lease is never renewed"
    );
    assert!(init
        .system()
        .console_lines()
        .iter()
        .any(|l| l.contains("lease=infinite name=worker-525400770051")));
}

#[test]
fn the_supervisor_renews_the_lease_at_t1_with_the_granting_server() {
    let sys = pxe_worker(dhcp_server(60));
    sys.shutdown_at(Duration::from_secs(45), ShutdownReason::PowerFail);
    let mut init = Init::new(sys, timings());
    init.run();
    let sends = dhcp_sends(&init.system().calls());
    assert_eq!(
        sends[2..],
        [(MessageType::Request, "10.0.0.1".into(), "10.0.0.150".into())],
        "one unicast renewal from the bound address: {sends:?}"
    );
    let lines = init.system().console_lines();
    assert!(
        lines.contains(&"kimg: dhcp-renewed iface=eth0 ip=10.0.0.150/24 lease=60s".to_string()),
        "{lines:#?}"
    );
}

#[test]
fn an_unlisted_worker_is_refused_when_the_cluster_does_not_admit_anonymous_workers() {
    let closed = cluster_toml().replace("anonymous-workers = true", "anonymous-workers = false");
    assert!(closed.contains("anonymous-workers = false"), "{closed}");
    let sys = pxe_worker(dhcp_server(3600)).with_file("/etc/kimg/cluster.toml", closed);
    sys.shutdown_at(Duration::from_secs(1), ShutdownReason::PowerFail);
    let mut init = Init::new(sys, timings());
    init.run();
    let lines = init.system().console_lines();
    assert!(
        lines.iter().any(|l| l.starts_with(
            "kimg: identify-failed reason=not-admitted macs=52:54:00:77:00:51 dhcp=10.0.0.150/24"
        )),
        "{lines:#?}"
    );
    assert!(!init
        .system()
        .calls()
        .iter()
        .any(|c| matches!(c, Call::AddAddress(..) | Call::Spawn { .. })));
}

#[test]
fn a_dhcp_address_the_table_lists_identifies_that_node() {
    let server = FakeDhcpServer {
        addr: "10.0.0.13/24".parse().unwrap(),
        ..dhcp_server(3600)
    };
    let sys = machine("", "52:54:00:99:99:99").with_dhcp_server(server);
    sys.shutdown_at(Duration::from_secs(1), ShutdownReason::PowerFail);
    let mut init = Init::new(sys, timings());
    init.run();
    let lines = init.system().console_lines();
    assert!(
        lines.contains(&"kimg: booted role=etcd node=etcd-3 source=address".to_string()),
        "{lines:#?}"
    );
    assert_eq!(
        etcd_argv(&init.system().calls()),
        ["/usr/bin/kimg", "etcd", "--node", "etcd-3"]
    );
}

#[test]
fn a_failing_module_is_reported_and_the_boot_goes_on() {
    let sys = machine("kimg.node=etcd-1", "52:54:00:00:00:11")
        .failing("/lib/modules/6.1.0-28-cloud-amd64/kernel/drivers/virtio/virtio_ring.ko");
    sys.shutdown_at(Duration::from_secs(1), ShutdownReason::PowerFail);
    let mut init = Init::new(sys, timings());
    init.run();
    let lines = init.system().console_lines();
    assert!(lines
        .iter()
        .any(|l| l.starts_with("kimg: module-failed name=virtio_ring error=")));
    assert!(lines.contains(&"kimg: modules loaded=1 failed=1".to_string()));
    assert!(lines.contains(&"kimg: booted role=etcd node=etcd-1 source=cmdline".to_string()));
}

#[test]
fn a_master_runs_the_control_plane_and_is_ready_once_its_apiserver_is() {
    let image = IMAGE.replace("[\"etcd\"]", "[\"master\"]");
    let sys =
        machine("kimg.node=master-1", "52:54:00:00:00:21").with_file("/etc/kimg/image.toml", image);
    sys.healthy_from(Duration::from_secs(2));
    sys.shutdown_at(Duration::from_secs(4), ShutdownReason::PowerFail);
    let mut init = Init::new(sys, timings());
    init.run();
    let lines = init.system().console_lines();
    let ready =
        "kimg: ready role=master node=master-1 services=apiserver,scheduler,controller-manager,vip,proxy";
    assert!(lines.contains(&ready.to_string()), "{lines:#?}");
    let at = |needle: &str| lines.iter().position(|l| l.starts_with(needle));
    assert!(
        at("kimg: service-started name=apiserver").is_some_and(|i| Some(i) < at("kimg: ready")),
        "services start before ready: {lines:#?}"
    );
}

#[test]
fn the_supervisor_survives_a_panic_and_keeps_restarting_services() {
    let sys = machine("kimg.node=etcd-1", "52:54:00:00:00:11");
    sys.healthy_from(Duration::ZERO);
    sys.exit_at(Duration::from_secs(2), 100, ExitStatus::Code(2));
    sys.shutdown_at(Duration::from_secs(6), ShutdownReason::PowerFail);
    let mut init = Init::new(sys, timings());
    init.system().panic_on_next_reap();
    init.run();
    let lines = init.system().console_lines();
    assert!(lines.contains(&"kimg: panic-recovered in=supervisor".to_string()));
    assert!(lines.contains(&"kimg: service-exited name=etcd code=2 restart-in=1s".to_string()));
    assert!(
        lines.contains(&"kimg: service-started name=etcd pid=101".to_string()),
        "{lines:#?}"
    );
}

#[test]
fn a_broken_image_config_is_reported_and_pid_1_waits_for_power_off() {
    let sys = machine("", "52:54:00:00:00:11").with_file("/etc/kimg/image.toml", "colour = 1\n");
    sys.shutdown_at(Duration::from_secs(2), ShutdownReason::PowerFail);
    let mut init = Init::new(sys, timings());
    assert_eq!(init.run(), PowerAction::PowerOff);
    assert!(init
        .system()
        .console_lines()
        .iter()
        .any(|l| l.starts_with("kimg: boot-failed error=\"image.toml:1:")));
}
