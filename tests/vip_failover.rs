//! `kimg vip` on a private L2 network: two "masters" (network namespaces on a bridge)
//! compete for the VIP through one apiserver. Shows: exactly one holder, gratuitous ARP
//! moves the neighbour's cache, a graceful stop hands over at once, a holder cut off from
//! the network drops the VIP before the other takes it (sampled: never two holders), and
//! failover after a crash, and the kernel removing a frozen holder's VIP. Prints the
//! handover, failover and expiry times. Needs root and `ip`.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, wait_for};
use kimg::proxy::netns::Netns;

const VIP: &str = "10.88.0.100";

struct Machine {
    name: &'static str,
    ns: Netns,
    /// The veth end on the hub's bridge: down = this machine is cut off.
    port: String,
    vip: Option<Child>,
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Some(mut c) = self.vip.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn ip(args: &[&str]) -> String {
    common::tool_ok("ip", args)
}

impl Machine {
    fn new(hub: &Netns, name: &'static str, addr: &str) -> Machine {
        let ns = Netns::create(&format!("vip{name}")).expect("netns (needs root)");
        let port = format!("v{name}{}", std::process::id() % 10_000);
        ip(&[
            "-n",
            hub.name(),
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ]);
        ip(&[
            "-n",
            hub.name(),
            "link",
            "set",
            &port,
            "master",
            "br0",
            "up",
        ]);
        ip(&["-n", ns.name(), "addr", "add", addr, "dev", "eth0"]);
        ip(&["-n", ns.name(), "link", "set", "eth0", "up"]);
        ip(&["-n", ns.name(), "link", "set", "lo", "up"]);
        Machine {
            name,
            ns,
            port,
            vip: None,
        }
    }

    fn start(&mut self, kubeconfig: &str, log: &std::path::Path) {
        let log = std::fs::File::create(log.join(format!("vip-{}.log", self.name))).expect("log");
        let child = self
            .ns
            .command(env!("CARGO_BIN_EXE_kimg"))
            .args(["vip", "--vip", VIP, "--interface", "eth0"])
            .args(["--kubeconfig", kubeconfig, "--identity", self.name])
            .env("KIMG_LOG", "debug")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn kimg vip");
        self.vip = Some(child);
    }

    fn signal(&mut self, sig: &str) {
        let child = self.vip.take().expect("running");
        let pid = child.id().to_string();
        common::tool_ok("kill", &[sig, &pid]);
        let mut child = child;
        let _ = child.wait();
    }

    /// Signals the running `kimg vip` and leaves it be (SIGSTOP, SIGCONT).
    fn send(&self, sig: &str) {
        let pid = self.vip.as_ref().expect("running").id().to_string();
        common::tool_ok("kill", &[sig, &pid]);
    }

    fn holds(&self) -> bool {
        holds_vip(self.ns.name())
    }

    fn mac(&self) -> String {
        let out = self
            .ns
            .exec_checked(&["cat", "/sys/class/net/eth0/address"])
            .expect("mac");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn cut(&self, hub: &Netns, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", hub.name(), "link", "set", &self.port, state]);
    }
}

/// Whether the machine in network namespace `ns` carries the VIP on its eth0.
fn holds_vip(ns: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", ns, "-4", "-o", "addr", "show", "dev", "eth0"])
        .output()
        .expect("ip addr");
    String::from_utf8_lossy(&out.stdout).contains(&format!("{VIP}/32"))
}

/// Answers from the VIP as the hub sees it: the MAC its neighbour table holds after a ping.
fn vip_mac_seen_by(hub: &Netns) -> Option<String> {
    let ping = hub
        .command("ping")
        .args(["-c", "1", "-W", "1", VIP])
        .stdout(Stdio::null())
        .status()
        .ok()?;
    if !ping.success() {
        return None;
    }
    let out = hub.exec_checked(&["ip", "neigh", "show", VIP]).ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .map(str::to_string)
}

fn holder<'a>(a: &'a Machine, b: &'a Machine) -> Option<(&'a Machine, &'a Machine)> {
    match (a.holds(), b.holds()) {
        (true, false) => Some((a, b)),
        (false, true) => Some((b, a)),
        (true, true) => panic!("both {} and {} hold the VIP", a.name, b.name),
        (false, false) => None,
    }
}

#[test]
fn one_master_holds_the_vip_hands_it_over_and_never_shares_it_needs_root() {
    let hub = Netns::create("viphub").expect("netns (needs root)");
    ip(&["-n", hub.name(), "link", "add", "br0", "type", "bridge"]);
    ip(&[
        "-n",
        hub.name(),
        "addr",
        "add",
        "10.88.0.1/24",
        "dev",
        "br0",
    ]);
    ip(&["-n", hub.name(), "link", "set", "br0", "up"]);
    ip(&["-n", hub.name(), "link", "set", "lo", "up"]);
    let mut a = Machine::new(&hub, "a", "10.88.0.11/24");
    let mut b = Machine::new(&hub, "b", "10.88.0.12/24");

    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("c");
    let dir_s = dir.to_str().expect("utf-8").to_string();
    common::kimg_ok(
        tmp.path(),
        &[
            "cluster",
            "new",
            &dir_s,
            "--vip",
            VIP,
            "--masters",
            "m=10.88.0.1",
        ],
    );
    let listen = format!("10.88.0.1:{}", free_port());
    let mut cmd = hub.command(env!("CARGO_BIN_EXE_kimg"));
    cmd.args(["up", &dir_s, "--listen", &listen])
        .args(["--no-scheduler", "--no-controller-manager"]);
    let (mut up, kubeconfig) = common::start_up(cmd);
    let kc = kubeconfig.to_str().expect("utf-8").to_string();

    a.start(&kc, tmp.path());
    b.start(&kc, tmp.path());
    let (h, _) = wait_for(30, "one holder of the VIP", || holder(&a, &b));
    let first = h.name;
    // Held for longer than the address lifetime: renewals keep refreshing it.
    std::thread::sleep(Duration::from_secs(5));
    let (h, _) = holder(&a, &b).expect("the holder keeps the VIP past the address lifetime");
    assert_eq!(h.name, first, "a healthy holder keeps the VIP");
    let first_mac = h.mac();
    let seen = wait_for(10, "the VIP answering", || vip_mac_seen_by(&hub));
    assert_eq!(seen, first_mac, "the neighbour reaches the holder");

    // A graceful stop drops the VIP and releases the Lease: the other takes over at once.
    let (holder_m, other_m) = if first == "a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let t = Instant::now();
    holder_m.signal("-TERM");
    assert!(!holder_m.holds(), "a stopped holder keeps no VIP");
    wait_for(10, "the other master to take over", || {
        other_m.holds().then_some(())
    });
    let handover = t.elapsed();
    let other_mac = other_m.mac();
    let seen = wait_for(10, "the VIP answering again", || {
        vip_mac_seen_by(&hub).filter(|m| *m == other_mac)
    });
    assert_eq!(
        seen, other_mac,
        "gratuitous ARP moved the neighbour's cache"
    );
    holder_m.start(&kc, tmp.path());

    // Partition: the holder is cut off. It must drop the VIP before the other takes it;
    // sample both every few milliseconds the whole time.
    let (cut_m, peer_m) = (other_m, holder_m);
    let both = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (ns1, ns2) = (cut_m.ns.name().to_string(), peer_m.ns.name().to_string());
        let (both, stop) = (both.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut samples = 0u32;
            while !stop.load(Ordering::SeqCst) {
                if holds_vip(&ns1) && holds_vip(&ns2) {
                    both.store(true, Ordering::SeqCst);
                }
                samples += 1;
            }
            samples
        })
    };
    let t = Instant::now();
    cut_m.cut(&hub, false);
    wait_for(20, "the cut-off holder to drop the VIP", || {
        (!cut_m.holds()).then_some(())
    });
    let dropped = t.elapsed();
    wait_for(20, "the peer to take the VIP", || {
        peer_m.holds().then_some(())
    });
    let taken = t.elapsed();
    stop.store(true, Ordering::SeqCst);
    let samples = sampler.join().expect("sampler");
    assert!(!both.load(Ordering::SeqCst), "two holders seen at once");
    assert!(
        dropped < taken,
        "dropped {dropped:?} before taken {taken:?}"
    );
    cut_m.cut(&hub, true);

    // Crash: the holder's process dies and its machine vanishes from the network.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !cut_m.holds(),
        "the returning machine does not grab the VIP"
    );
    let t = Instant::now();
    peer_m.signal("-KILL");
    peer_m.cut(&hub, false);
    let survivor_mac = cut_m.mac();
    wait_for(20, "failover after a crash", || {
        vip_mac_seen_by(&hub).filter(|m| *m == survivor_mac)
    });
    let failover = t.elapsed();

    // Frozen: the holder's process stops (SIGSTOP), so its own timer cannot fence it; the
    // address's kernel lifetime (the renew deadline, 2 s in whole seconds) removes it.
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    cut_m.send("-STOP");
    wait_for(10, "the frozen holder's VIP to expire", || {
        (!cut_m.holds()).then_some(())
    });
    let expired = t.elapsed();
    cut_m.send("-CONT");
    assert!(
        expired >= Duration::from_millis(1500),
        "gone after {expired:?}: before its lifetime, so not the kernel's doing"
    );

    println!(
        "vip: graceful handover {} ms; partition: holder dropped at {} ms, peer took over at {} ms ({samples} samples, never two holders); crash failover (VIP answering from the survivor) {} ms; a frozen holder's VIP expired after {} ms",
        handover.as_millis(),
        dropped.as_millis(),
        taken.as_millis(),
        failover.as_millis(),
        expired.as_millis()
    );
    let _ = up.kill();
    let _ = up.wait();
}
