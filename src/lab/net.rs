//! A private network for machines: a network namespace holding one bridge and one tap per
//! machine, and optionally an uplink to the host.
//!
//! The QEMU scenarios give the bridge itself the host-side address, so nothing the VMs or
//! test commands do can listen on or reach the host's interfaces. `kimg lab` instead adds an
//! uplink ([`Netns::add_uplink`]): a veth pair whose host end carries the host-side address,
//! so the host's own `kubectl` reaches the machines (and the API VIP) directly. Deleting the
//! namespace removes the bridge, the taps and the veth pair with it; QEMU processes must be
//! gone first, or the kernel keeps the namespace alive until they exit. A scenario's
//! namespace is deleted when its guard drops; a lab's outlives the command that made it
//! ([`Netns::persist`]) until `kimg lab down` ([`Netns::remove`]). Shells out to `ip`
//! (iproute2) and needs root.

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
    /// Left in place when dropped ([`Netns::persist`]).
    persist: bool,
}

pub const BRIDGE: &str = "br0";

/// The namespace's end of the uplink veth pair.
pub const UPLINK: &str = "uplink0";

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
            persist: false,
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds the bridge, with the host-side address (`a.b.c.d/prefix`) if given.
    pub fn add_bridge(&self, host_cidr: Option<&str>) -> Result<(), NetnsError> {
        let n = self.name.as_str();
        ip(&[
            "-n", n, "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge",
        ])?;
        if let Some(cidr) = host_cidr {
            ip(&["-n", n, "addr", "add", cidr, "dev", BRIDGE])?;
        }
        ip(&["-n", n, "link", "set", BRIDGE, "up"])
    }

    /// Connects the bridge to the host: a veth pair, `host_if` in the host's namespace
    /// with `host_cidr`, its peer a port of the bridge. The address is checked to be free
    /// on the host by the caller (two labs on one subnet would fight over it).
    pub fn add_uplink(&self, host_if: &str, host_cidr: &str) -> Result<(), NetnsError> {
        let n = self.name.as_str();
        ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", UPLINK, "netns", n,
        ])?;
        ip(&["-n", n, "link", "set", UPLINK, "master", BRIDGE])?;
        ip(&["-n", n, "link", "set", UPLINK, "up"])?;
        ip(&["addr", "add", host_cidr, "dev", host_if])?;
        ip(&["link", "set", host_if, "up"])
    }

    /// A guard for a namespace made earlier (by another process), which it never deletes.
    pub fn adopt(name: &str) -> Netns {
        Netns {
            name: name.to_owned(),
            persist: true,
        }
    }

    /// Keeps the namespace when this guard is dropped; [`Netns::remove`] deletes it later.
    pub fn persist(mut self) -> String {
        self.persist = true;
        self.name.clone()
    }

    /// Deletes a namespace by name (with its bridge, taps and uplink).
    pub fn remove(name: &str) -> Result<(), NetnsError> {
        ip(&["netns", "delete", name])
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
        if self.persist {
            return;
        }
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
            ns.add_bridge(Some("10.213.0.1/24")).expect("bridge");
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
    fn an_uplink_joins_the_host_to_the_bridge_and_goes_with_the_namespace_needs_root() {
        let name = Netns::unique_name();
        let host_if = format!("klt{}", std::process::id() % 100_000);
        let link_exists = || {
            std::path::Path::new("/sys/class/net")
                .join(&host_if)
                .exists()
        };
        {
            let ns = Netns::create(&name).expect("create netns (needs root)");
            ns.add_bridge(None).expect("bridge");
            ns.add_uplink(&host_if, "10.213.7.1/24").expect("uplink");
            assert!(link_exists());
            let out = Command::new("ip")
                .args(["-n", &name, "-br", "link", "show", "master", BRIDGE])
                .output()
                .expect("ip link show master");
            assert!(String::from_utf8_lossy(&out.stdout).contains(UPLINK));
            // A guard for a namespace made elsewhere never deletes it.
            drop(Netns::adopt(&name));
            assert!(Netns::exists(&name));
        }
        assert!(!Netns::exists(&name));
        // The kernel tears a namespace's devices down asynchronously (which is why
        // `kimg lab down` deletes the uplink itself first); it must go within moments.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while link_exists() && std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(
            !link_exists(),
            "the host end {host_if} outlived its namespace"
        );
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
