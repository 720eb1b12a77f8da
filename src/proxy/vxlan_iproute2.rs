//! The real [`Netlink`]: programs the overlay through iproute2's `ip` and `bridge`.
//!
//! What: reads the device, routes, permanent neighbours and FDB entries of `kimg.1` from
//! `ip -j` / `bridge -j` JSON, and applies [`Change`]s with `ip link|addr|route|neigh`
//! and `bridge fdb`. With `netns` set every command runs under `ip netns exec`.
//!
//! Why commands rather than raw netlink sockets: iproute2 is in every image we build and
//! its JSON output is stable; raw vxlan/FDB netlink messages are a lot of code for a
//! table that changes once per node join.
//!
//! Limits: only the entries this module would create are read back (permanent
//! neighbours, FDB entries with a `dst`); the command output is parsed leniently and
//! entries that do not parse are ignored.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::Value;

use super::{
    run, Change, FdbEntry, MacAddr, Neighbour, Netlink, OverlayState, Route, VxlanDevice,
    VxlanError, DEVICE,
};

/// Programs the kernel with iproute2, optionally inside a named network namespace.
#[derive(Debug, Clone, Default)]
pub struct IpRoute2 {
    /// Run every command under `ip netns exec <netns>`.
    pub netns: Option<String>,
    /// MTU for a newly created device; `None` keeps the kernel's choice.
    pub mtu: Option<u32>,
}

impl IpRoute2 {
    fn run(&self, argv: &[&str]) -> Result<String, VxlanError> {
        run(
            argv.iter().map(|s| s.to_string()).collect(),
            self.netns.as_deref(),
        )
    }

    fn json(&self, argv: &[&str]) -> Result<Vec<Value>, VxlanError> {
        let text = self.run(argv)?;
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        serde_json::from_str::<Vec<Value>>(&text).map_err(|e| VxlanError::StateUnreadable {
            command: argv.join(" "),
            message: e.to_string(),
        })
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn has_flag(v: &Value, key: &str, flag: &str) -> bool {
    match v.get(key) {
        Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(flag)),
        Some(Value::String(s)) => s == flag,
        _ => false,
    }
}

impl Netlink for IpRoute2 {
    fn read_state(&mut self) -> Result<OverlayState, VxlanError> {
        let links = self.json(&["ip", "-d", "-j", "link", "show"])?;
        let Some(link) = links
            .iter()
            .find(|l| str_field(l, "ifname") == Some(DEVICE))
        else {
            return Ok(OverlayState::default());
        };
        let data = link.pointer("/linkinfo/info_data");
        let addrs = self.json(&["ip", "-j", "-4", "addr", "show", "dev", DEVICE])?;
        let address = addrs
            .iter()
            .flat_map(|a| {
                a.get("addr_info")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
            })
            .filter(|i| i.get("prefixlen").and_then(Value::as_u64) == Some(32))
            .find_map(|i| str_field(i, "local").and_then(|s| s.parse::<Ipv4Addr>().ok()));
        let device = (|| {
            Some(VxlanDevice {
                name: DEVICE.to_string(),
                vni: u32::try_from(data?.get("id")?.as_u64()?).ok()?,
                port: u16::try_from(data?.get("port")?.as_u64()?).ok()?,
                local: str_field(data?, "local")?.parse().ok()?,
                mac: str_field(link, "address")?.parse().ok()?,
                address: address?,
            })
        })();
        // A device we cannot fully read is reported without settings, so it is recreated.
        let device = device.or(Some(VxlanDevice {
            name: DEVICE.to_string(),
            vni: 0,
            port: 0,
            local: Ipv4Addr::UNSPECIFIED,
            mac: MacAddr([0; 6]),
            address: Ipv4Addr::UNSPECIFIED,
        }));

        let routes = self
            .json(&["ip", "-j", "-4", "route", "show", "dev", DEVICE])?
            .iter()
            .filter_map(|r| {
                Some(Route {
                    dst: str_field(r, "dst")?.parse::<Ipv4Net>().ok()?,
                    via: str_field(r, "gateway")?.parse().ok()?,
                })
            })
            .collect();
        let neighbours = self
            .json(&["ip", "-j", "-4", "neigh", "show", "dev", DEVICE])?
            .iter()
            .filter(|n| has_flag(n, "state", "PERMANENT"))
            .filter_map(|n| {
                Some(Neighbour {
                    ip: str_field(n, "dst")?.parse().ok()?,
                    mac: str_field(n, "lladdr")?.parse().ok()?,
                })
            })
            .collect();
        let fdb = self
            .json(&["bridge", "-j", "fdb", "show", "dev", DEVICE])?
            .iter()
            .filter_map(|f| {
                let mac: MacAddr = str_field(f, "mac")?.parse().ok()?;
                (mac != MacAddr([0; 6])).then_some(())?;
                Some(FdbEntry {
                    mac,
                    dst: str_field(f, "dst")?.parse().ok()?,
                })
            })
            .collect();
        Ok(OverlayState {
            device,
            routes,
            neighbours,
            fdb,
        })
    }

    fn apply(&mut self, change: &Change) -> Result<(), VxlanError> {
        match change {
            Change::CreateDevice(d) => {
                let (vni, port, local, mac) = (
                    d.vni.to_string(),
                    d.port.to_string(),
                    d.local.to_string(),
                    d.mac.to_string(),
                );
                self.run(&[
                    "ip",
                    "link",
                    "add",
                    &d.name,
                    "address",
                    &mac,
                    "type",
                    "vxlan",
                    "id",
                    &vni,
                    "local",
                    &local,
                    "dstport",
                    &port,
                    "nolearning",
                ])?;
                if let Some(mtu) = self.mtu {
                    self.run(&["ip", "link", "set", &d.name, "mtu", &mtu.to_string()])?;
                }
                let address = format!("{}/32", d.address);
                self.run(&["ip", "addr", "add", &address, "dev", &d.name])?;
                self.run(&["ip", "link", "set", &d.name, "up"])?;
            }
            Change::DeleteDevice(name) => {
                self.run(&["ip", "link", "del", name])?;
            }
            Change::AddFdb(f) => {
                let (mac, dst) = (f.mac.to_string(), f.dst.to_string());
                self.run(&[
                    "bridge",
                    "fdb",
                    "append",
                    &mac,
                    "dev",
                    DEVICE,
                    "dst",
                    &dst,
                    "self",
                    "permanent",
                ])?;
            }
            Change::DelFdb(f) => {
                let (mac, dst) = (f.mac.to_string(), f.dst.to_string());
                self.run(&[
                    "bridge", "fdb", "del", &mac, "dev", DEVICE, "dst", &dst, "self",
                ])?;
            }
            Change::AddNeighbour(n) => {
                let (ip, mac) = (n.ip.to_string(), n.mac.to_string());
                self.run(&[
                    "ip",
                    "neigh",
                    "replace",
                    &ip,
                    "lladdr",
                    &mac,
                    "dev",
                    DEVICE,
                    "nud",
                    "permanent",
                ])?;
            }
            Change::DelNeighbour(n) => {
                let ip = n.ip.to_string();
                self.run(&["ip", "neigh", "del", &ip, "dev", DEVICE])?;
            }
            Change::AddRoute(r) => {
                let (dst, via) = (r.dst.to_string(), r.via.to_string());
                self.run(&[
                    "ip", "route", "replace", &dst, "via", &via, "dev", DEVICE, "onlink",
                ])?;
            }
            Change::DelRoute(r) => {
                let (dst, via) = (r.dst.to_string(), r.via.to_string());
                self.run(&["ip", "route", "del", &dst, "via", &via, "dev", DEVICE])?;
            }
        }
        Ok(())
    }
}
