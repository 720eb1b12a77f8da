//! Filesystems of the running machine: the pseudo filesystems every boot mounts, and the
//! `STATE` partition found by its GPT partition name.
//!
//! `STATE` is located by scanning `/sys/class/block/*/uevent` for `PARTNAME=STATE` (the
//! kernel exports GPT partition names there; no udev or blkid needed). The device node
//! comes from devtmpfs; if it is missing it is created from the uevent's MAJOR/MINOR.
//! A diskless (PXE) machine has no `STATE`: `/var/lib/kimg` is then a tmpfs and nothing
//! survives a reboot.

use std::path::{Path, PathBuf};

use super::system::MountSpec;

pub const STATE_DIR: &str = "/var/lib/kimg";
pub const STATE_PARTNAME: &str = "STATE";

fn pseudo(source: &str, target: &str, fstype: &str, options: &str) -> MountSpec {
    MountSpec {
        source: source.into(),
        target: target.into(),
        fstype: fstype.into(),
        options: options.into(),
        hardened: fstype != "devtmpfs" && target != "/run" && target != "/tmp",
    }
}

/// proc, sysfs, devtmpfs, /run, /tmp and cgroup2, in mount order.
pub fn base_mounts() -> Vec<MountSpec> {
    vec![
        pseudo("proc", "/proc", "proc", ""),
        pseudo("sysfs", "/sys", "sysfs", ""),
        pseudo("devtmpfs", "/dev", "devtmpfs", "mode=0755"),
        pseudo("tmpfs", "/run", "tmpfs", "mode=0755"),
        pseudo("tmpfs", "/tmp", "tmpfs", "mode=1777"),
        pseudo("cgroup2", "/sys/fs/cgroup", "cgroup2", ""),
    ]
}

/// A block device from its uevent file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockDevice {
    pub devname: String,
    pub major: u32,
    pub minor: u32,
    pub partname: Option<String>,
}

/// Parses `/sys/class/block/<dev>/uevent` (`KEY=value` lines).
pub fn parse_uevent(text: &str) -> Option<BlockDevice> {
    let mut devname = None;
    let mut major = None;
    let mut minor = None;
    let mut partname = None;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("DEVNAME", v)) => devname = Some(v.to_string()),
            Some(("MAJOR", v)) => major = v.parse().ok(),
            Some(("MINOR", v)) => minor = v.parse().ok(),
            Some(("PARTNAME", v)) => partname = Some(v.to_string()),
            _ => {}
        }
    }
    Some(BlockDevice {
        devname: devname?,
        major: major?,
        minor: minor?,
        partname,
    })
}

impl BlockDevice {
    pub fn dev_path(&self) -> PathBuf {
        Path::new("/dev").join(&self.devname)
    }
}

/// The ext4 mount of a `STATE` partition.
pub fn state_mount(dev: &BlockDevice) -> MountSpec {
    MountSpec {
        source: dev.dev_path().to_string_lossy().into_owned(),
        target: STATE_DIR.into(),
        fstype: "ext4".into(),
        options: String::new(),
        hardened: false,
    }
}

/// The tmpfs used when there is no `STATE` partition.
pub fn state_tmpfs() -> MountSpec {
    MountSpec {
        source: "tmpfs".into(),
        target: STATE_DIR.into(),
        fstype: "tmpfs".into(),
        options: "mode=0755".into(),
        hardened: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpt_partition_uevent_yields_its_name_and_device_numbers() {
        let dev = parse_uevent(
            "MAJOR=254\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\nPARTN=2\nPARTNAME=STATE\n",
        )
        .unwrap();
        assert_eq!(
            dev,
            BlockDevice {
                devname: "vda2".into(),
                major: 254,
                minor: 2,
                partname: Some("STATE".into())
            }
        );
        assert_eq!(dev.dev_path(), Path::new("/dev/vda2"));
    }

    #[test]
    fn a_uevent_without_device_numbers_is_not_a_device() {
        assert_eq!(parse_uevent("DEVNAME=vda\n"), None);
    }
}
