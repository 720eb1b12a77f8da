//! `kimg lab` end to end (needs root, QEMU and OVMF: scripts/setup-host installs them):
//! `kimg lab up --topology single` boots the one-machine cluster, kubectl on the host
//! reaches it through the VIP and runs a busybox pod with no registry, the bad inputs
//! are refused with one-line errors while it runs, and `kimg lab down` leaves no QEMU
//! process, network namespace, link or mount behind.

use std::path::Path;
use std::process::{Command, Output};

fn kimg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kimg"))
        .args(args)
        .output()
        .expect("run kimg")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn kubectl(conf: &Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(conf)
        .arg("--request-timeout=20s")
        .args(args)
        .output()
        .expect("run kubectl (scripts/setup-host puts one on PATH)")
}

/// Non-zombie processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let zombie = std::fs::read_to_string(e.path().join("stat"))
            .map(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
            .unwrap_or(true);
        if cmd.contains(needle) && !zombie {
            found.push(format!("{pid}: {cmd}"));
        }
    }
    found
}

fn links() -> String {
    let out = Command::new("ip").args(["-br", "link"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn lab_up_single_serves_kubectl_through_the_vip_and_down_leaves_nothing_needs_root_and_qemu() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let dir_s = dir.to_str().unwrap();
    let netns_before: Vec<_> = std::fs::read_dir("/run/netns")
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let labs = |names: Vec<std::ffi::OsString>| -> Vec<_> {
        names
            .into_iter()
            .filter(|n| n.to_string_lossy().starts_with("kimg-lab-"))
            .collect()
    };
    let netns_before = labs(netns_before);

    let up = kimg(&["lab", "up", "--topology", "single", "--dir", dir_s]);
    let up_text = text(&up);
    let tail =
        |name: &str| std::fs::read_to_string(dir.join("machines").join(name)).unwrap_or_default();
    assert!(
        up.status.success(),
        "lab up failed:\n{up_text}\n--- console:\n{}",
        tail("node-1.console.log")
    );
    // Progress per machine, and the kubectl line to use.
    for want in [
        "node-1       booting",
        "node-1       identified: booted role=etcd+master+worker node=node-1",
        "node-1       ready (Node Ready through the VIP)",
        "lab up in ",
    ] {
        assert!(up_text.contains(want), "{want:?} missing in:\n{up_text}");
    }
    let conf = dir.join("admin.conf");
    assert!(up_text.contains(&format!(
        "kubectl --kubeconfig {} get nodes",
        conf.display()
    )));
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("lab.json")).unwrap()).unwrap();
    let netns = state["netns"].as_str().unwrap().to_owned();
    let uplink = state["uplink"].as_str().unwrap().to_owned();
    assert!(Path::new("/run/netns").join(&netns).exists());

    // kubectl on the host, through the VIP.
    let server = text(&kubectl(
        &conf,
        &[
            "config",
            "view",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ],
    ));
    assert_eq!(server.trim(), "https://10.77.0.100:6443");
    let nodes = kubectl(&conf, &["get", "nodes", "--no-headers"]);
    let nodes_text = text(&nodes);
    assert!(nodes.status.success(), "{nodes_text}");
    assert!(
        nodes_text.starts_with("node-1 ") && nodes_text.contains(" Ready "),
        "{nodes_text}"
    );

    // `--image=busybox` is on the machine already: no registry is reachable from the lab.
    let run = kubectl(&conf, &["run", "t", "--image=busybox", "--", "sleep", "1d"]);
    assert!(run.status.success(), "{}", text(&run));
    let wait = kubectl(
        &conf,
        &["wait", "--for=condition=Ready", "pod/t", "--timeout=120s"],
    );
    assert!(wait.status.success(), "{}", text(&wait));
    let exec = kubectl(
        &conf,
        &["exec", "t", "--", "busybox", "echo", "hello-from-the-lab"],
    );
    assert_eq!(text(&exec).trim(), "hello-from-the-lab");

    // Status: a header, then one row per machine starting with its name.
    let status = text(&kimg(&["lab", "status", "--dir", dir_s]));
    let mut rows = status.lines();
    assert!(rows.next().unwrap().starts_with("NAME"), "{status}");
    let row = rows.next().unwrap_or_default();
    assert!(
        row.starts_with("node-1 ") && row.contains(" up ") && row.contains("10.77.0.10"),
        "{status}"
    );

    // Bad input while it runs: each a one-line error, nothing made.
    let again = kimg(&["lab", "up", "--dir", dir_s]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("a lab is already up in"),
        "{}",
        text(&again)
    );
    let other = tmp.path().join("other");
    let second = kimg(&["lab", "up", "--dir", other.to_str().unwrap()]);
    assert!(!second.status.success());
    assert!(
        text(&second).contains("lab subnet 10.77.0.0/24 is already on the host's interface"),
        "{}",
        text(&second)
    );
    assert!(!other.exists(), "a refused up made {}", other.display());
    let unknown = kimg(&["lab", "stop", "node-9", "--dir", dir_s]);
    assert!(!unknown.status.success());
    assert!(text(&unknown).contains("no machine \"node-9\"") && text(&unknown).contains("node-1"));
    let bogus = kimg(&["lab", "up", "--topology", "ring", "--dir", dir_s]);
    assert!(!bogus.status.success());
    assert!(text(&bogus).contains("possible values: single, stacked, seeds"));

    // A power cut and back.
    let stop = kimg(&["lab", "stop", "node-1", "--dir", dir_s]);
    assert!(stop.status.success(), "{}", text(&stop));
    assert!(processes_mentioning(dir_s).is_empty());
    assert!(text(&kimg(&["lab", "status", "--dir", dir_s])).contains("stopped"));
    let start = kimg(&["lab", "start", "node-1", "--dir", dir_s]);
    assert!(start.status.success(), "{}", text(&start));
    assert_eq!(processes_mentioning(dir_s).len(), 1);
    let logs = text(&kimg(&["lab", "logs", "node-1", "--dir", dir_s]));
    assert!(
        logs.matches("kimg: booted role=etcd+master+worker").count() >= 1,
        "{logs}"
    );

    // Down: nothing left behind.
    let down = kimg(&["lab", "down", "--dir", dir_s]);
    assert!(down.status.success(), "{}", text(&down));
    assert_eq!(processes_mentioning(dir_s), Vec::<String>::new());
    assert!(
        !Path::new("/run/netns").join(&netns).exists(),
        "netns {netns} left"
    );
    let links = links();
    assert!(!links.contains(&uplink), "link {uplink} left:\n{links}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(dir_s) && !mounts.contains(&netns),
        "{mounts}"
    );
    let netns_after: Vec<_> = std::fs::read_dir("/run/netns")
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert_eq!(netns_before, labs(netns_after));
    assert!(!dir.join("lab.json").exists());
    assert!(!dir.join("machines/node-1.disk.raw").exists());
    // Status after down says how to start a lab again.
    let after = text(&kimg(&["lab", "status", "--dir", dir_s]));
    assert!(after.contains("no lab is up"), "{after}");
}

/// Refusals come before anything is made: not root, no QEMU, too many workers.
#[test]
fn lab_up_refuses_without_root_or_qemu_and_makes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let dir_s = dir.to_str().unwrap();
    let kimg_bin = env!("CARGO_BIN_EXE_kimg");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let out = if root {
        // As an unprivileged user (util-linux's setpriv drops the IDs).
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", kimg_bin])
            .args(["lab", "up", "--dir", dir_s])
            .output()
            .expect("setpriv")
    } else {
        kimg(&["lab", "up", "--dir", dir_s])
    };
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(msg.contains("kimg lab needs root"), "{msg}");
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(!dir.exists());
    if !root {
        return;
    }
    let no_qemu = Command::new(kimg_bin)
        .args(["lab", "up", "--dir", dir_s])
        .env("PATH", tmp.path())
        .output()
        .unwrap();
    let msg = text(&no_qemu);
    assert!(!no_qemu.status.success());
    assert!(
        msg.contains("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86"),
        "{msg}"
    );
    let many = kimg(&["lab", "up", "--workers", "51", "--dir", dir_s]);
    assert!(
        text(&many).contains("--workers 51: at most 50 workers"),
        "{}",
        text(&many)
    );
    assert!(!dir.exists(), "a refused up made {}", dir.display());
}
