//! Pod networking through the CNI plugins of Debian's `containernetworking-plugins`.
//!
//! The kubelet runs `bridge` (with `host-local` IPAM on the node's pod CIDR, the bridge as
//! the pods' gateway) for `eth0` and `loopback` for `lo`, CNI spec 1.0: the plugin binary
//! gets `CNI_COMMAND` (ADD/DEL), `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_PATH`
//! in its environment and the network config on stdin, and answers a JSON result whose
//! first IP is the pod IP. No masquerading is configured here (outbound NAT belongs to
//! the node's network setup). Limits: IPv4 only; no portmap chaining yet.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::error::KubeletError;

/// The node's pod network.
#[derive(Clone, Debug)]
pub struct CniNetwork {
    /// Directory of the plugin binaries (`/usr/lib/cni` on Debian).
    pub bin_dir: PathBuf,
    /// Linux bridge name (≤ 15 bytes).
    pub bridge: String,
    /// The node's pod CIDR, e.g. `10.244.1.0/24`.
    pub pod_cidr: ipnet::Ipv4Net,
    /// Where host-local keeps its leases.
    pub ipam_dir: PathBuf,
}

impl CniNetwork {
    fn bridge_config(&self) -> serde_json::Value {
        json!({
            "cniVersion": "1.0.0",
            "name": format!("kimg-{}", self.bridge),
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": self.pod_cidr.to_string() }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": self.ipam_dir,
            },
        })
    }

    fn loopback_config() -> serde_json::Value {
        json!({ "cniVersion": "1.0.0", "name": "kimg-lo", "type": "loopback" })
    }

    async fn invoke(
        &self,
        plugin: &str,
        command: &'static str,
        id: &str,
        netns: &Path,
        ifname: &str,
        config: &serde_json::Value,
    ) -> Result<serde_json::Value, KubeletError> {
        let fail = |message: String| KubeletError::Cni {
            plugin: plugin.into(),
            command,
            message,
        };
        let mut child = tokio::process::Command::new(self.bin_dir.join(plugin))
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", &self.bin_dir)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot run it: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            let bytes = serde_json::to_vec(config).unwrap_or_default();
            stdin
                .write_all(&bytes)
                .await
                .map_err(|e| fail(format!("cannot write its config: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            let msg = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["msg"].as_str().map(String::from))
                .unwrap_or_else(|| format!("{text} {}", String::from_utf8_lossy(&out.stderr)));
            return Err(fail(msg.trim().to_string()));
        }
        if out.stdout.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&out.stdout).map_err(|e| fail(format!("bad result: {e}")))
    }

    /// Attaches the pod's netns: `lo` up, `eth0` on the bridge. Returns the pod IP.
    pub async fn add(&self, id: &str, netns: &Path) -> Result<Ipv4Addr, KubeletError> {
        self.invoke("loopback", "ADD", id, netns, "lo", &Self::loopback_config())
            .await?;
        let result = self
            .invoke("bridge", "ADD", id, netns, "eth0", &self.bridge_config())
            .await?;
        result["ips"]
            .as_array()
            .and_then(|ips| ips.iter().find_map(|ip| ip["address"].as_str()))
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| KubeletError::Cni {
                plugin: "bridge".into(),
                command: "ADD",
                message: format!("no IPv4 address in the result {result}"),
            })
    }

    /// Detaches the pod and releases its address. Safe to repeat.
    pub async fn del(&self, id: &str, netns: &Path) -> Result<(), KubeletError> {
        self.invoke("bridge", "DEL", id, netns, "eth0", &self.bridge_config())
            .await?;
        self.invoke("loopback", "DEL", id, netns, "lo", &Self::loopback_config())
            .await?;
        Ok(())
    }
}
