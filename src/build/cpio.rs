//! The initramfs: a `newc` cpio archive of a [`Tree`], compressed, and the way back.
//!
//! Writing walks the tree in its sorted order, numbers inodes 1, 2, 3 … in that order,
//! stamps every entry with one fixed `mtime` and root:root ownership, pads names and data
//! to 4 bytes and ends with `TRAILER!!!` — so the same tree always gives the same bytes.
//! Compression is single-threaded at a fixed level per [`Codec`]; all three codecs are
//! built into Debian's 6.1 kernels (`CONFIG_RD_ZSTD`, `CONFIG_RD_XZ`, `CONFIG_RD_GZIP`),
//! and xz uses the CRC32 check the kernel's decoder understands.
//!
//! Reading (for `kimg inspect` and tests) detects the codec by magic number, decompresses
//! and parses the archive back into a [`Tree`]. Limits: device nodes, fifos and sockets
//! are skipped (a [`Tree`] cannot hold them); hard links come back as separate files; only
//! the first archive of a concatenated initramfs is read.

use std::io::{Read, Write};

use thiserror::Error;

use super::tree::{normalize, Entry, Tree};

/// zstd level of [`Codec::Zstd`]: on 68 MB of binaries here (zstd CLI, one thread) level 9
/// took 2.3 s for 19.4 MB, level 19 took 93 s for 17.5 MB — 9 keeps builds quick.
pub const ZSTD_LEVEL: i32 = 9;
/// zstd level of [`Codec::ZstdBest`]: the strongest level without `--ultra` (8 MiB window,
/// which the kernel's decompressor handles — the boot test proves it).
pub const ZSTD_BEST_LEVEL: i32 = 19;
/// xz preset (`-9` would need a 64 MiB dictionary for no gain on an initramfs).
pub const XZ_PRESET: u32 = 6;
/// gzip level.
pub const GZIP_LEVEL: u32 = 9;

const NEWC_MAGIC: &[u8; 6] = b"070701";
const NEWC_CRC_MAGIC: &[u8; 6] = b"070702";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

/// How the cpio archive is compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Codec {
    /// Plain cpio.
    None,
    /// gzip, level [`GZIP_LEVEL`], mtime 0 in the header.
    Gzip,
    /// xz, preset [`XZ_PRESET`], CRC32 check.
    Xz,
    /// zstd, level [`ZSTD_LEVEL`], single-threaded — the default.
    #[default]
    Zstd,
    /// zstd, level [`ZSTD_BEST_LEVEL`], single-threaded: ~10% smaller, ~40× slower.
    ZstdBest,
}

#[derive(Debug, Error)]
pub enum CpioError {
    #[error("{codec:?} compression failed")]
    CompressFailed {
        codec: Codec,
        #[source]
        source: std::io::Error,
    },
    #[error("{codec:?} decompression failed")]
    DecompressFailed {
        codec: Codec,
        #[source]
        source: std::io::Error,
    },
    #[error("not a cpio archive (unknown magic {magic:02x?})")]
    UnknownFormat { magic: Vec<u8> },
    #[error("cpio archive is truncated at byte {offset}")]
    Truncated { offset: usize },
    #[error("cpio header at byte {offset} is malformed")]
    BadHeader { offset: usize },
    #[error("cpio archive has no TRAILER!!! entry")]
    MissingTrailer,
}

/// Serialises `tree` as an uncompressed newc archive with every mtime set to `epoch`.
pub fn write_newc(tree: &Tree, epoch: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(tree.file_bytes() as usize + tree.len() * 128 + 512);
    let mtime = epoch.min(u32::MAX as u64) as u32;
    // The root itself (an empty path) has no archive entry: the kernel's rootfs is it.
    let entries = tree.iter().filter(|(path, _)| !path.is_empty());
    for (ino, (path, entry)) in entries.enumerate() {
        let (mode, nlink, data): (u32, u32, &[u8]) = match entry {
            Entry::File { mode, data } => (S_IFREG | mode, 1, data.as_slice()),
            Entry::Dir { mode } => (S_IFDIR | mode, 2, &[]),
            Entry::Symlink { target } => (S_IFLNK | 0o777, 1, target.as_bytes()),
        };
        push_entry(&mut out, ino as u32 + 1, mode, nlink, mtime, path, data);
    }
    push_entry(&mut out, 0, 0, 1, 0, TRAILER, &[]);
    out
}

fn push_entry(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    name: &str,
    data: &[u8],
) {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        mtime,
        data.len() as u32,
        0, // devmajor
        0, // devminor
        0, // rdevmajor
        0, // rdevminor
        name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(NEWC_MAGIC);
    for field in fields {
        out.extend_from_slice(format!("{field:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Serialises and compresses `tree`: the bytes of an `initrd.img`.
pub fn write_initrd(tree: &Tree, epoch: u64, codec: Codec) -> Result<Vec<u8>, CpioError> {
    compress(&write_newc(tree, epoch), codec)
}

/// Compresses `data` with `codec`, deterministically.
pub fn compress(data: &[u8], codec: Codec) -> Result<Vec<u8>, CpioError> {
    let failed = |source| CpioError::CompressFailed { codec, source };
    match codec {
        Codec::None => Ok(data.to_vec()),
        Codec::Zstd => zstd::bulk::compress(data, ZSTD_LEVEL).map_err(failed),
        Codec::ZstdBest => zstd::bulk::compress(data, ZSTD_BEST_LEVEL).map_err(failed),
        Codec::Gzip => {
            let mut enc = flate2::GzBuilder::new()
                .mtime(0)
                .write(Vec::new(), flate2::Compression::new(GZIP_LEVEL));
            enc.write_all(data).map_err(failed)?;
            enc.finish().map_err(failed)
        }
        Codec::Xz => {
            let stream =
                xz2::stream::Stream::new_easy_encoder(XZ_PRESET, xz2::stream::Check::Crc32)
                    .map_err(|e| failed(e.into()))?;
            let mut enc = xz2::write::XzEncoder::new_stream(Vec::new(), stream);
            enc.write_all(data).map_err(failed)?;
            enc.finish().map_err(failed)
        }
    }
}

/// Detects the codec of `data` by its magic number (`Some(Codec::None)` for plain cpio,
/// `None` for anything else). zstd streams are reported as [`Codec::Zstd`] whatever
/// their level.
pub fn detect_codec(data: &[u8]) -> Option<Codec> {
    if data.starts_with(&[0x1f, 0x8b]) {
        Some(Codec::Gzip)
    } else if data.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Some(Codec::Xz)
    } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(Codec::Zstd)
    } else if data.starts_with(NEWC_MAGIC) || data.starts_with(NEWC_CRC_MAGIC) {
        Some(Codec::None)
    } else {
        None
    }
}

/// Whether `data` looks like an initramfs this module can read.
pub fn looks_like_initrd(data: &[u8]) -> bool {
    detect_codec(data).is_some()
}

/// Decompresses `data` (codec detected by magic) to a plain cpio archive.
pub fn decompress(data: &[u8]) -> Result<Vec<u8>, CpioError> {
    let codec = detect_codec(data).ok_or_else(|| CpioError::UnknownFormat {
        magic: data.iter().take(6).copied().collect(),
    })?;
    let failed = |source| CpioError::DecompressFailed { codec, source };
    let mut out = Vec::new();
    match codec {
        Codec::None => return Ok(data.to_vec()),
        Codec::Zstd | Codec::ZstdBest => {
            out = zstd::stream::decode_all(data).map_err(failed)?;
        }
        Codec::Gzip => {
            flate2::read::MultiGzDecoder::new(data)
                .read_to_end(&mut out)
                .map_err(failed)?;
        }
        Codec::Xz => {
            xz2::read::XzDecoder::new_multi_decoder(data)
                .read_to_end(&mut out)
                .map_err(failed)?;
        }
    }
    Ok(out)
}

/// Parses an uncompressed newc archive into a [`Tree`].
pub fn read_newc(data: &[u8]) -> Result<Tree, CpioError> {
    let mut tree = Tree::new();
    let mut off = 0;
    loop {
        let header = data
            .get(off..off + HEADER_LEN)
            .ok_or(CpioError::Truncated { offset: off })?;
        if &header[..6] != NEWC_MAGIC && &header[..6] != NEWC_CRC_MAGIC {
            return Err(CpioError::BadHeader { offset: off });
        }
        let field = |i: usize| -> Result<u32, CpioError> {
            let text = std::str::from_utf8(&header[6 + i * 8..6 + (i + 1) * 8])
                .map_err(|_| CpioError::BadHeader { offset: off })?;
            u32::from_str_radix(text, 16).map_err(|_| CpioError::BadHeader { offset: off })
        };
        let mode = field(1)?;
        let size = field(6)? as usize;
        let namesize = field(11)? as usize;
        let name_start = off + HEADER_LEN;
        let name_bytes = data
            .get(name_start..name_start + namesize)
            .ok_or(CpioError::Truncated { offset: name_start })?;
        let name = std::str::from_utf8(name_bytes.strip_suffix(&[0]).unwrap_or(name_bytes))
            .map_err(|_| CpioError::BadHeader { offset: off })?
            .to_string();
        let data_start = align4(name_start + namesize);
        let body = data
            .get(data_start..data_start + size)
            .ok_or(CpioError::Truncated { offset: data_start })?;
        off = align4(data_start + size);
        if name == TRAILER {
            return Ok(tree);
        }
        let path = normalize(&name);
        if path.is_empty() {
            continue; // the "." entry some tools emit
        }
        match mode & S_IFMT {
            S_IFREG => tree.insert_file(&path, mode & 0o7777, body.to_vec()),
            S_IFDIR => tree.insert_dir(&path, mode & 0o7777),
            S_IFLNK => tree.insert_symlink(&path, &String::from_utf8_lossy(body)),
            _ => {} // device nodes, fifos, sockets: a Tree cannot hold them
        }
        if off >= data.len() {
            return Err(CpioError::MissingTrailer);
        }
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Decompresses and parses an `initrd.img`.
pub fn read_initrd(data: &[u8]) -> Result<Tree, CpioError> {
    read_newc(&decompress(data)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Tree {
        let mut t = Tree::new();
        t.insert_file("init", 0o755, b"#!/bin/sh\necho hi\n".to_vec());
        t.insert_file(
            "etc/kimg/ca.crt",
            0o644,
            b"-----BEGIN CERTIFICATE-----\n".to_vec(),
        );
        t.insert_dir("proc", 0o555);
        t.insert_symlink("bin/sh", "busybox");
        t.insert_file("bin/busybox", 0o4755, vec![0u8; 5]);
        t.insert_file("empty", 0o600, Vec::new());
        t
    }

    #[test]
    fn every_codec_round_trips_the_tree() {
        for codec in [
            Codec::None,
            Codec::Gzip,
            Codec::Xz,
            Codec::Zstd,
            Codec::ZstdBest,
        ] {
            let bytes = write_initrd(&sample(), 1_700_000_000, codec).unwrap();
            let detected = if codec == Codec::ZstdBest {
                Codec::Zstd
            } else {
                codec
            };
            assert_eq!(detect_codec(&bytes), Some(detected));
            assert_eq!(read_initrd(&bytes).unwrap(), sample(), "{codec:?}");
        }
    }

    #[test]
    fn the_same_tree_gives_identical_bytes_for_every_codec() {
        for codec in [
            Codec::None,
            Codec::Gzip,
            Codec::Xz,
            Codec::Zstd,
            Codec::ZstdBest,
        ] {
            let a = write_initrd(&sample(), 42, codec).unwrap();
            let b = write_initrd(&sample().clone(), 42, codec).unwrap();
            assert_eq!(a, b, "{codec:?}");
        }
    }

    #[test]
    fn headers_carry_sequential_inodes_fixed_mtime_and_root_owner() {
        let raw = write_newc(&sample(), 0x1234_5678);
        let mut off = 0;
        let mut inos = Vec::new();
        loop {
            let h = &raw[off..off + HEADER_LEN];
            assert_eq!(&h[..6], NEWC_MAGIC);
            let f = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&h[6 + i * 8..14 + i * 8]).unwrap(), 16)
                    .unwrap()
            };
            let namesize = f(11) as usize;
            let name = std::str::from_utf8(&raw[off + HEADER_LEN..off + HEADER_LEN + namesize - 1])
                .unwrap()
                .to_string();
            assert_eq!((f(2), f(3)), (0, 0), "uid/gid of {name}");
            if name == TRAILER {
                assert_eq!(f(0), 0);
                break;
            }
            assert_eq!(f(5), 0x1234_5678, "mtime of {name}");
            inos.push(f(0));
            let data_start = align4(off + HEADER_LEN + namesize);
            assert_eq!(data_start % 4, 0);
            off = align4(data_start + f(6) as usize);
        }
        assert_eq!(inos, (1..=sample().len() as u32).collect::<Vec<_>>());
        assert_eq!(raw.len() % 4, 0);
    }

    #[test]
    fn the_host_cpio_tool_lists_what_we_wrote() {
        // Cross-checks the format against GNU cpio (external binary, present on Debian hosts).
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.cpio");
        std::fs::write(&archive, write_newc(&sample(), 0)).unwrap();
        let out = std::process::Command::new("cpio")
            .args(["-i", "-t", "-F"])
            .arg(&archive)
            .output()
            .expect("cpio binary");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        let expected: Vec<String> = sample().iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(listed, expected);
    }

    #[test]
    fn garbage_is_rejected_with_its_magic() {
        let err = read_initrd(b"hello world").unwrap_err();
        assert!(matches!(err, CpioError::UnknownFormat { .. }), "{err}");
    }

    #[test]
    fn a_truncated_archive_is_an_error_not_a_panic() {
        let raw = write_newc(&sample(), 0);
        for cut in [10, HEADER_LEN + 3, raw.len() / 2, raw.len() - 8] {
            assert!(read_newc(&raw[..cut]).is_err(), "cut at {cut}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn tree_strategy() -> impl Strategy<Value = Tree> {
            let name = "[a-z0-9_-][a-z0-9._-]{0,11}";
            let path = proptest::collection::vec(name, 1..4).prop_map(|segs| segs.join("/"));
            let entry = prop_oneof![
                (0u32..0o7777, proptest::collection::vec(any::<u8>(), 0..300))
                    .prop_map(|(mode, data)| (0u8, mode, data, String::new())),
                (0u32..0o7777).prop_map(|mode| (1u8, mode, Vec::new(), String::new())),
                "[a-z/.]{1,20}".prop_map(|target| (2u8, 0, Vec::new(), target)),
            ];
            proptest::collection::vec((path, entry), 0..12).prop_map(|items| {
                let mut t = Tree::new();
                for (path, (kind, mode, data, target)) in items {
                    // A later entry under an earlier file's path would need the file to
                    // become a directory; skip such clashes, they are not valid trees.
                    let clash = t.iter().any(|(p, e)| {
                        !matches!(e, Entry::Dir { .. }) && path.starts_with(&format!("{p}/"))
                    });
                    if clash || t.contains(&path) {
                        continue;
                    }
                    match kind {
                        0 => t.insert_file(&path, mode, data),
                        1 => t.insert_dir(&path, mode),
                        _ => t.insert_symlink(&path, &target),
                    }
                }
                t
            })
        }

        proptest! {
            #[test]
            fn any_tree_round_trips_through_newc(tree in tree_strategy(), epoch in 0u64..u32::MAX as u64) {
                prop_assert_eq!(read_newc(&write_newc(&tree, epoch)).unwrap(), tree);
            }

            #[test]
            fn arbitrary_bytes_never_panic_the_reader(data in proptest::collection::vec(any::<u8>(), 0..600)) {
                let _ = read_initrd(&data);
                let mut framed = NEWC_MAGIC.to_vec();
                framed.extend_from_slice(&data);
                let _ = read_newc(&framed);
            }
        }
    }
}
