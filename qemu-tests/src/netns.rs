//! The run's private network: a uniquely named network namespace holding one bridge (with
//! the scenario's host-side address) and one tap per VM.
//!
//! Everything lives inside the namespace, so nothing the VMs or test commands do can listen
//! on or reach the host's interfaces. Deleting the namespace (on drop) removes the bridge and
//! the taps with it; QEMU processes must be gone first, or the kernel keeps the namespace
//! alive until they exit. Shells out to `ip` (iproute2) and needs root.

use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`ip {args}` failed: {stderr}")]
    IpFailed { args: String, stderr: String },
    #[error("cannot run `ip`")]
    IpMissing(#[source] std::io::Error),
}

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(NetnsError::IpMissing)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::IpFailed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// A network namespace this process created; deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

pub const BRIDGE: &str = "br0";

/// The bridge's own MAC (locally administered). Set explicitly, because a bridge without
/// one takes the lowest MAC among its ports and changes it whenever a port leaves: a
/// `link-down` of the VM whose tap had that MAC would then move the host's address to a
/// new MAC, and every other VM, still sending to the old one, would lose the host (and
/// the test with it) until its ARP entry expired.
pub const BRIDGE_MAC: &str = "02:6b:69:6d:67:01";

impl Netns {
    /// A name unique to this process and call: `kimg-<pid>-<n>`.
    pub fn unique_name() -> String {
        use std::sync::atomic::{AtomicU32, Ordering};
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        format!(
            "kimg-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        )
    }

    /// Creates the namespace with `lo` up. Fails if the name exists (it is never adopted).
    pub fn create(name: &str) -> Result<Netns, NetnsError> {
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_owned(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds the bridge with the host-side address (`a.b.c.d/prefix`).
    pub fn add_bridge(&self, host_cidr: &str) -> Result<(), NetnsError> {
        let n = self.name.as_str();
        ip(&[
            "-n", n, "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge",
        ])?;
        ip(&["-n", n, "addr", "add", host_cidr, "dev", BRIDGE])?;
        ip(&["-n", n, "link", "set", BRIDGE, "up"])
    }

    /// Adds a tap enslaved to the bridge, up.
    pub fn add_tap(&self, tap: &str) -> Result<(), NetnsError> {
        let n = self.name.as_str();
        ip(&["-n", n, "tuntap", "add", "dev", tap, "mode", "tap"])?;
        self.plug(tap)
    }

    /// Puts the tap back on the bridge, up.
    pub fn plug(&self, tap: &str) -> Result<(), NetnsError> {
        let n = self.name.as_str();
        ip(&["-n", n, "link", "set", tap, "master", BRIDGE])?;
        ip(&["-n", n, "link", "set", tap, "up"])
    }

    /// Takes the tap off the bridge and down: the VM's cable is pulled.
    pub fn unplug(&self, tap: &str) -> Result<(), NetnsError> {
        let n = self.name.as_str();
        ip(&["-n", n, "link", "set", tap, "nomaster"])?;
        ip(&["-n", n, "link", "set", tap, "down"])
    }

    /// Whether a namespace of this name exists.
    pub fn exists(name: &str) -> bool {
        std::path::Path::new("/run/netns").join(name).exists()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(err) = ip(&["netns", "delete", &self.name]) {
            eprintln!("warning: cleanup: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_within_one_process() {
        let a = Netns::unique_name();
        let b = Netns::unique_name();
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("kimg-{}-", std::process::id())));
    }

    #[test]
    fn the_guard_removes_the_netns_and_its_bridge_needs_root() {
        let name = Netns::unique_name();
        {
            let ns = Netns::create(&name).expect("create netns (needs root and iproute2)");
            ns.add_bridge("10.213.0.1/24").expect("bridge");
            ns.add_tap("tap0").expect("tap");
            ns.add_tap("tap1").expect("tap");
            let mac = |dev: &str| {
                let out = Command::new("ip")
                    .args(["-n", &name, "-br", "link", "show", dev])
                    .output()
                    .expect("ip link show");
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.split_whitespace()
                    .nth(2)
                    .unwrap_or_default()
                    .to_string()
            };
            // Whichever tap has the lower MAC, pulling either cable leaves the host's alone.
            for tap in ["tap0", "tap1"] {
                ns.unplug(tap).expect("unplug");
                assert_eq!(mac(BRIDGE), BRIDGE_MAC, "after unplugging {tap}");
                ns.plug(tap).expect("plug");
                assert_eq!(mac(BRIDGE), BRIDGE_MAC, "after plugging {tap} back");
            }
            assert!(Netns::exists(&name));
        }
        assert!(!Netns::exists(&name), "netns {name} left behind");
    }

    #[test]
    fn an_existing_name_is_not_adopted_needs_root() {
        let name = Netns::unique_name();
        let first = Netns::create(&name).expect("create netns (needs root)");
        assert!(Netns::create(&name).is_err());
        assert!(
            Netns::exists(&name),
            "failed second create must not delete the first"
        );
        drop(first);
        assert!(!Netns::exists(&name));
    }
}
