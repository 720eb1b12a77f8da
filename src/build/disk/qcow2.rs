//! `disk.qcow2`: converts a raw disk image to qcow2 (version 3) for cloud upload.
//!
//! Layout, in 64 KiB clusters: header, refcount table, refcount blocks (16-bit counts),
//! L1 table, L2 tables, then the raw image's non-zero clusters in guest order. All-zero
//! clusters stay unallocated (they read as zeros), nothing is compressed, there is no
//! backing file and no snapshot. Every allocated cluster has refcount 1 and its L1/L2
//! entries carry the COPIED flag, which `qemu-img check` expects. The output depends only
//! on the raw bytes. Limits: no compression, no encryption, no extended L2 entries.

use std::fs;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// 16-bit refcounts.
const REFCOUNT_ORDER: u32 = 4;
const L2_ENTRIES: u64 = CLUSTER / 8;
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER / 2;
const COPIED: u64 = 1 << 63;
const HEADER_LEN: u32 = 104;

#[derive(Debug, Error)]
pub enum Qcow2Error {
    #[error("reading raw image {path} failed")]
    ReadFailed {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing qcow2 image {path} failed")]
    WriteFailed {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the conversion produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Qcow2Stats {
    pub virtual_size: u64,
    pub data_clusters: u64,
    pub file_size: u64,
}

/// Converts `raw` to a qcow2 image at `out` (replacing it).
pub fn write_qcow2(raw: &Path, out: &Path) -> Result<Qcow2Stats, Qcow2Error> {
    let read_failed = |source| Qcow2Error::ReadFailed {
        path: raw.to_path_buf(),
        source,
    };
    let write_failed = |source| Qcow2Error::WriteFailed {
        path: out.to_path_buf(),
        source,
    };
    let virtual_size = fs::metadata(raw).map_err(read_failed)?.len();
    let guest_clusters = virtual_size.div_ceil(CLUSTER);

    // Pass 1: which guest clusters hold data.
    let mut used = Vec::new();
    let mut input = fs::File::open(raw).map_err(read_failed)?;
    let mut buf = vec![0u8; CLUSTER as usize];
    for index in 0..guest_clusters {
        let n = read_cluster(&mut input, &mut buf).map_err(read_failed)?;
        if !super::is_zero(&buf[..n]) {
            used.push(index);
        }
    }

    // Metadata sizes; the refcount area must also count itself, so iterate to a fixpoint.
    let l1_entries = guest_clusters.div_ceil(L2_ENTRIES).max(1);
    let l1_clusters = (l1_entries * 8).div_ceil(CLUSTER);
    let mut l2_indices: Vec<u64> = used.iter().map(|c| c / L2_ENTRIES).collect();
    l2_indices.dedup();
    let l2_count = l2_indices.len() as u64;
    let fixed = 1 + l1_clusters + l2_count + used.len() as u64;
    let (mut rt_clusters, mut rb_count) = (1u64, 1u64);
    loop {
        let total = fixed + rt_clusters + rb_count;
        let rb = total.div_ceil(REFCOUNTS_PER_BLOCK);
        let rt = (rb * 8).div_ceil(CLUSTER);
        if (rb, rt) == (rb_count, rt_clusters) {
            break;
        }
        (rb_count, rt_clusters) = (rb, rt);
    }
    let rt_offset = CLUSTER;
    let rb_offset = rt_offset + rt_clusters * CLUSTER;
    let l1_offset = rb_offset + rb_count * CLUSTER;
    let l2_offset = l1_offset + l1_clusters * CLUSTER;
    let data_offset = l2_offset + l2_count * CLUSTER;
    let total_clusters = data_offset / CLUSTER + used.len() as u64;

    // Header.
    let mut header = vec![0u8; CLUSTER as usize];
    let mut put = |at: usize, bytes: &[u8]| header[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, b"QFI\xfb");
    put(4, &3u32.to_be_bytes());
    put(20, &CLUSTER_BITS.to_be_bytes());
    put(24, &virtual_size.to_be_bytes());
    put(36, &(l1_entries as u32).to_be_bytes());
    put(40, &l1_offset.to_be_bytes());
    put(48, &rt_offset.to_be_bytes());
    put(56, &(rt_clusters as u32).to_be_bytes());
    put(96, &REFCOUNT_ORDER.to_be_bytes());
    put(100, &HEADER_LEN.to_be_bytes());
    // Header extension area: just the end marker (type 0, length 0) at HEADER_LEN.

    let mut refcount_table = vec![0u8; (rt_clusters * CLUSTER) as usize];
    for i in 0..rb_count {
        let at = (i * 8) as usize;
        refcount_table[at..at + 8].copy_from_slice(&(rb_offset + i * CLUSTER).to_be_bytes());
    }
    let mut refcount_blocks = vec![0u8; (rb_count * CLUSTER) as usize];
    for c in 0..total_clusters {
        let at = (c * 2) as usize;
        refcount_blocks[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    let mut l1 = vec![0u8; (l1_clusters * CLUSTER) as usize];
    let mut l2 = vec![0u8; (l2_count * CLUSTER) as usize];
    for (slot, l1_index) in l2_indices.iter().enumerate() {
        let at = (*l1_index * 8) as usize;
        let table = l2_offset + slot as u64 * CLUSTER;
        l1[at..at + 8].copy_from_slice(&(table | COPIED).to_be_bytes());
    }
    for (n, guest) in used.iter().enumerate() {
        let slot = l2_indices.partition_point(|i| *i < guest / L2_ENTRIES) as u64;
        let at = (slot * CLUSTER + (guest % L2_ENTRIES) * 8) as usize;
        let host = data_offset + n as u64 * CLUSTER;
        l2[at..at + 8].copy_from_slice(&(host | COPIED).to_be_bytes());
    }

    // Pass 2: write metadata, then the data clusters in guest order.
    let _ = fs::remove_file(out);
    let mut output =
        BufWriter::with_capacity(1 << 20, fs::File::create(out).map_err(write_failed)?);
    for part in [&header, &refcount_table, &refcount_blocks, &l1, &l2] {
        output.write_all(part).map_err(write_failed)?;
    }
    let mut input = fs::File::open(raw).map_err(read_failed)?;
    let mut next = 0u64;
    for guest in &used {
        if *guest != next {
            std::io::Seek::seek(&mut input, std::io::SeekFrom::Start(guest * CLUSTER))
                .map_err(read_failed)?;
        }
        let n = read_cluster(&mut input, &mut buf).map_err(read_failed)?;
        buf[n..].fill(0); // a short last cluster is padded to a whole one
        output.write_all(&buf).map_err(write_failed)?;
        next = guest + 1;
    }
    let file = output
        .into_inner()
        .map_err(|e| write_failed(e.into_error()))?;
    file.sync_all().map_err(write_failed)?;
    Ok(Qcow2Stats {
        virtual_size,
        data_clusters: used.len() as u64,
        file_size: total_clusters * CLUSTER,
    })
}

/// Fills `buf` from `input`; returns how many bytes were read (short only at the end).
fn read_cluster(input: &mut fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = input.read(&mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::process::Command;

    fn qemu_img(args: &[&str]) -> (bool, String) {
        let out = Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img binary");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn raw_with_data(dir: &Path, size: u64, writes: &[(u64, &[u8])]) -> PathBuf {
        let path = dir.join("in.raw");
        let f = fs::File::create(&path).unwrap();
        f.set_len(size).unwrap();
        for (at, bytes) in writes {
            f.write_all_at(bytes, *at).unwrap();
        }
        path
    }

    #[test]
    fn qemu_img_checks_and_compares_a_converted_image_with_qemu_utils() {
        let dir = tempfile::tempdir().unwrap();
        // Data at the start, across an L2 boundary (512 MiB), and in the last partial cluster.
        let size = (600 << 20) + 4096 + 512;
        let raw = raw_with_data(
            dir.path(),
            size,
            &[
                (0, b"first"),
                ((512 << 20) - 3, b"straddle"),
                (size - 7, b"tail!!!"),
            ],
        );
        let out = dir.path().join("out.qcow2");
        let stats = write_qcow2(&raw, &out).unwrap();
        assert_eq!(stats.data_clusters, 4);
        assert_eq!(fs::metadata(&out).unwrap().len(), stats.file_size);
        let (ok, text) = qemu_img(&["check", out.to_str().unwrap()]);
        assert!(ok && text.contains("No errors were found"), "{text}");
        let (ok, text) = qemu_img(&[
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            raw.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        assert!(ok && text.contains("Images are identical"), "{text}");
        let (_, info) = qemu_img(&["info", "--output=json", out.to_str().unwrap()]);
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["virtual-size"], size);
        assert_eq!(info["cluster-size"], 65536);
        assert_eq!(info["format-specific"]["data"]["compat"], "1.1");
    }

    #[test]
    fn an_all_zero_disk_allocates_no_data_clusters_with_qemu_utils() {
        let dir = tempfile::tempdir().unwrap();
        let raw = raw_with_data(dir.path(), 8 << 20, &[]);
        let out = dir.path().join("z.qcow2");
        let stats = write_qcow2(&raw, &out).unwrap();
        assert_eq!(stats.data_clusters, 0);
        let (ok, text) = qemu_img(&["compare", raw.to_str().unwrap(), out.to_str().unwrap()]);
        assert!(ok, "{text}");
    }

    #[test]
    fn the_same_raw_converts_to_identical_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let raw = raw_with_data(dir.path(), 4 << 20, &[(70_000, b"x")]);
        let (a, b) = (dir.path().join("a.qcow2"), dir.path().join("b.qcow2"));
        write_qcow2(&raw, &a).unwrap();
        write_qcow2(&raw, &b).unwrap();
        assert!(fs::read(a).unwrap() == fs::read(b).unwrap());
    }
}
