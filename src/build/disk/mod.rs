//! `disk.raw` and `disk.qcow2`: a GPT disk with an EFI System Partition and a `STATE`
//! ext4 partition, written without root, loop devices or mounts.
//!
//! Layout (512-byte sectors, 1 MiB aligned): protective MBR + primary GPT in the first MiB,
//! partition 1 `ESP` (FAT, type C12A7328-…), partition 2 `STATE` (ext4, type 0FC63DAF-…),
//! then one MiB that ends with the backup GPT. Every GUID, the FAT volume id, the ext4 UUID
//! and hash seed derive from [`DiskSpec::seed`]; every timestamp is [`DiskSpec::epoch`];
//! so one spec always gives the same bytes. The output file is sparse: only non-zero 4 KiB
//! blocks are written. [`systemd_boot_esp`] lays out an ESP that boots through systemd-boot
//! and a Boot Loader Specification Type #1 entry.
//!
//! Limits: the ESP is built in memory (its full size); the ext4 writer needs e2fsprogs'
//! `mke2fs` and `debugfs` on the PATH.

pub mod ext4;
pub mod fat;
pub mod gpt;
pub mod qcow2;

#[cfg(test)]
mod boot_tests;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::build::tree::Tree;
use gpt::{GptPartition, Guid, SECTOR};

pub use qcow2::{write_qcow2, Qcow2Error};

/// Partition alignment and the size of the head and tail areas: 1 MiB.
const ALIGN_SECTORS: u64 = (1 << 20) / SECTOR;
const MIB: u64 = 1 << 20;
/// GPT partition name and FAT label of partition 1.
pub const ESP_NAME: &str = "ESP";
/// GPT partition name and ext4 label of partition 2.
pub const STATE_NAME: &str = "STATE";

/// Everything that determines a `disk.raw`.
#[derive(Clone, Debug)]
pub struct DiskSpec {
    /// Contents of the EFI System Partition (see [`systemd_boot_esp`]).
    pub esp: Tree,
    /// Contents of the `STATE` partition.
    pub state: Tree,
    /// ESP size; 64 MiB and up gives FAT32.
    pub esp_size_mib: u64,
    pub state_size_mib: u64,
    /// Seed of every GUID/UUID on the disk, e.g. the image name.
    pub seed: String,
    /// Unix time stamped on every file and filesystem.
    pub epoch: u64,
}

/// Where the partitions ended up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskLayout {
    pub disk_guid: Guid,
    pub esp: GptPartition,
    pub state: GptPartition,
    pub total_bytes: u64,
}

#[derive(Debug, Error)]
pub enum DiskError {
    #[error("partition sizes must be at least {min} MiB (esp {esp} MiB, state {state} MiB)")]
    SizeTooSmall { min: u64, esp: u64, state: u64 },
    #[error("building the EFI system partition failed")]
    EspFailed(#[from] fat::FatError),
    #[error("building the STATE partition failed")]
    StateFailed(#[from] ext4::Ext4Error),
    #[error("writing the partition table failed")]
    GptFailed(#[from] gpt::GptError),
    #[error("writing {path} failed")]
    WriteFailed {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Computes the partition layout for `spec` without writing anything.
pub fn layout(spec: &DiskSpec) -> Result<DiskLayout, DiskError> {
    const MIN_MIB: u64 = 8;
    if spec.esp_size_mib < MIN_MIB || spec.state_size_mib < MIN_MIB {
        return Err(DiskError::SizeTooSmall {
            min: MIN_MIB,
            esp: spec.esp_size_mib,
            state: spec.state_size_mib,
        });
    }
    let esp_first = ALIGN_SECTORS;
    let esp_last = esp_first + spec.esp_size_mib * MIB / SECTOR - 1;
    let state_first = esp_last + 1;
    let state_last = state_first + spec.state_size_mib * MIB / SECTOR - 1;
    let total_sectors = state_last + 1 + ALIGN_SECTORS;
    Ok(DiskLayout {
        disk_guid: Guid::derive(&spec.seed, "disk"),
        esp: GptPartition {
            type_guid: gpt::ESP_TYPE,
            guid: Guid::derive(&spec.seed, "esp"),
            name: ESP_NAME.into(),
            first_lba: esp_first,
            last_lba: esp_last,
        },
        state: GptPartition {
            type_guid: gpt::LINUX_FS_TYPE,
            guid: Guid::derive(&spec.seed, "state"),
            name: STATE_NAME.into(),
            first_lba: state_first,
            last_lba: state_last,
        },
        total_bytes: total_sectors * SECTOR,
    })
}

/// Writes `disk.raw` for `spec` to `out` (replacing it). Scratch files live next to `out`
/// and are removed afterwards.
pub fn write_disk(spec: &DiskSpec, out: &Path) -> Result<DiskLayout, DiskError> {
    let layout = layout(spec)?;
    let write_failed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DiskError::WriteFailed { path, source }
    };

    let volume_id = {
        let g = Guid::derive(&spec.seed, "esp-volume-id").0;
        u32::from_le_bytes([g[0], g[1], g[2], g[3]])
    };
    let esp = fat::build(
        &spec.esp,
        layout.esp.size(),
        ESP_NAME,
        volume_id,
        spec.epoch,
    )?;

    let state_img = sibling(out, "state.ext4.tmp");
    let ext4_spec = ext4::Ext4Spec {
        tree: &spec.state,
        size: layout.state.size(),
        label: STATE_NAME,
        uuid: Guid::derive(&spec.seed, "state-fs")
            .to_string()
            .to_lowercase(),
        hash_seed: Guid::derive(&spec.seed, "state-hash")
            .to_string()
            .to_lowercase(),
        epoch: spec.epoch,
    };
    let built = ext4::build(&ext4_spec, &state_img, &sibling(out, "state.staging.tmp"));
    let result = built.map_err(DiskError::from).and_then(|()| {
        let _ = fs::remove_file(out);
        let mut disk = fs::File::create(out).map_err(write_failed(out))?;
        disk.set_len(layout.total_bytes)
            .map_err(write_failed(out))?;
        write_sparse(&disk, layout.esp.offset(), &esp).map_err(write_failed(out))?;
        copy_sparse(&state_img, &disk, layout.state.offset()).map_err(write_failed(out))?;
        gpt::write(
            &mut disk,
            layout.total_bytes / SECTOR,
            layout.disk_guid,
            &[layout.esp.clone(), layout.state.clone()],
        )?;
        disk.flush().map_err(write_failed(out))
    });
    let _ = fs::remove_file(&state_img);
    result.map(|()| layout)
}

fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    out.with_file_name(name)
}

const BLOCK: usize = 4096;

/// Writes the non-zero 4 KiB blocks of `data` at `offset` (the file is already zeroed).
fn write_sparse(file: &fs::File, offset: u64, data: &[u8]) -> std::io::Result<()> {
    for (i, block) in data.chunks(BLOCK).enumerate() {
        if !is_zero(block) {
            file.write_all_at(block, offset + (i * BLOCK) as u64)?;
        }
    }
    Ok(())
}

/// Whether `data` is all zeros (slice comparison: a `memcmp`, fast even in debug builds).
pub(crate) fn is_zero(data: &[u8]) -> bool {
    static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
    data.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

fn copy_sparse(src: &Path, dst: &fs::File, offset: u64) -> std::io::Result<()> {
    let mut input = fs::File::open(src)?;
    input.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = input.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(());
        }
        write_sparse(dst, offset + pos, &buf[..filled])?;
        pos += filled as u64;
    }
}

/// An ESP that boots through systemd-boot: `EFI/BOOT/BOOTX64.EFI` (the removable-media
/// path firmware tries without any NVRAM entry), `loader/loader.conf` with `timeout 0`,
/// and one Type #1 entry `loader/entries/kimg.conf` for `/vmlinuz` + `/initrd.img`.
pub fn systemd_boot_esp(
    bootx64_efi: Vec<u8>,
    vmlinuz: Vec<u8>,
    initrd: Vec<u8>,
    cmdline: &str,
    title: &str,
) -> Tree {
    let mut t = Tree::new();
    t.insert_file("EFI/BOOT/BOOTX64.EFI", 0o644, bootx64_efi);
    t.insert_file(
        "loader/loader.conf",
        0o644,
        b"default kimg.conf\ntimeout 0\neditor no\n".to_vec(),
    );
    let entry = format!(
        "title {title}\nlinux /vmlinuz\ninitrd /initrd.img\noptions {}\n",
        cmdline.trim()
    );
    t.insert_file("loader/entries/kimg.conf", 0o644, entry.into_bytes());
    t.insert_file("vmlinuz", 0o644, vmlinuz);
    t.insert_file("initrd.img", 0o644, initrd);
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tree::Entry;

    pub(crate) fn spec() -> DiskSpec {
        let esp = systemd_boot_esp(
            vec![0x4d, 0x5a, 0x90],
            vec![1u8; 70_000],
            vec![2u8; 50_000],
            "console=ttyS0 kimg.node=n1",
            "kimg test",
        );
        let mut state = Tree::new();
        state.insert_file("kimg/cluster.toml", 0o600, b"name = \"lab\"\n".to_vec());
        state.insert_dir("var/lib/etcd", 0o700);
        DiskSpec {
            esp,
            state,
            esp_size_mib: 64,
            state_size_mib: 32,
            seed: "lab-master".into(),
            epoch: 1_700_000_000,
        }
    }

    #[test]
    fn the_boot_entry_follows_the_boot_loader_spec() {
        let esp = spec().esp;
        let Some(Entry::File { data, .. }) = esp.get("loader/entries/kimg.conf") else {
            panic!("no entry")
        };
        let text = String::from_utf8_lossy(data);
        assert!(text.contains("linux /vmlinuz\n") && text.contains("initrd /initrd.img\n"));
        assert!(text.contains("options console=ttyS0 kimg.node=n1\n"));
        let Some(Entry::File { data, .. }) = esp.get("loader/loader.conf") else {
            panic!("no loader.conf")
        };
        assert!(String::from_utf8_lossy(data).contains("timeout 0"));
    }

    #[test]
    fn two_disks_from_one_spec_are_byte_identical_with_e2fsprogs() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.raw"), dir.path().join("b.raw"));
        let la = write_disk(&spec(), &a).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let lb = write_disk(&spec(), &b).unwrap();
        assert_eq!(la, lb);
        assert!(
            fs::read(&a).unwrap() == fs::read(&b).unwrap(),
            "disks differ"
        );
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "scratch files left: {left:?}");
    }

    #[test]
    fn sfdisk_sees_both_partitions_with_their_names_and_types() {
        // External binary: util-linux sfdisk.
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let layout = write_disk(&spec(), &raw).unwrap();
        assert_eq!(fs::metadata(&raw).unwrap().len(), (64 + 32 + 2) << 20);
        let out = std::process::Command::new("sfdisk")
            .arg("--json")
            .arg(&raw)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let parts = json["partitiontable"]["partitions"].as_array().unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!(parts[0]["name"], "ESP");
        assert_eq!(parts[0]["start"], 2048);
        assert_eq!(parts[1]["type"], "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
        assert_eq!(parts[1]["name"], "STATE");
        assert_eq!(parts[1]["uuid"], layout.state.guid.to_string());
    }

    #[test]
    fn the_partitions_hold_the_trees_that_went_in_with_e2fsprogs() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let layout = write_disk(&spec(), &raw).unwrap();
        let file = fs::File::open(&raw).unwrap();
        let mut esp = vec![0u8; layout.esp.size() as usize];
        file.read_exact_at(&mut esp, layout.esp.offset()).unwrap();
        assert_eq!(fat::volume_label(esp.clone()).unwrap(), "ESP");
        assert_eq!(fat::read_tree(esp).unwrap(), spec().esp);
        let state = ext4::open(file, layout.state.offset()).unwrap();
        assert_eq!(state.label().to_str().unwrap(), "STATE");
        let mut tree = ext4::read_tree(&state).unwrap();
        tree.remove("lost+found");
        assert_eq!(tree, spec().state);
    }

    #[test]
    fn tiny_partitions_are_refused() {
        let mut s = spec();
        s.esp_size_mib = 1;
        assert!(matches!(layout(&s), Err(DiskError::SizeTooSmall { .. })));
    }
}
