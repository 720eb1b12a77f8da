//! GUID Partition Table: writing a protective MBR plus primary and backup GPT, and reading
//! the partition entries back.
//!
//! Follows the UEFI specification's layout for 512-byte sectors: LBA 0 protective MBR,
//! LBA 1 primary header, LBAs 2–33 the 128-entry array, the backup array and header in the
//! last 33 sectors, both headers and arrays CRC32-protected. GUIDs are derived from a seed
//! string (SHA-256, then stamped as version-4/RFC 4122), so the same seed always gives the
//! same disk. Limits: 512-byte logical sectors only; at most 128 partitions.

use std::io::{Read, Seek, SeekFrom, Write};

use sha2::{Digest, Sha256};
use thiserror::Error;

/// Logical sector size this module reads and writes.
pub const SECTOR: u64 = 512;
const ENTRY_COUNT: u32 = 128;
const ENTRY_SIZE: u32 = 128;
const ENTRY_SECTORS: u64 = (ENTRY_COUNT * ENTRY_SIZE) as u64 / SECTOR;
const HEADER_SIZE: u32 = 92;
const SIGNATURE: &[u8; 8] = b"EFI PART";

/// A GUID in its textual byte order (`C12A7328-…` → `[0xC1, 0x2A, …]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

/// EFI System Partition type.
pub const ESP_TYPE: Guid = Guid([
    0xC1, 0x2A, 0x73, 0x28, 0xF8, 0x1F, 0x11, 0xD2, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B,
]);
/// Linux filesystem data type.
pub const LINUX_FS_TYPE: Guid = Guid([
    0x0F, 0xC6, 0x3D, 0xAF, 0x84, 0x83, 0x47, 0x72, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4,
]);

impl Guid {
    /// A stable version-4-shaped GUID from `seed` and a `purpose` (`"disk"`, `"part1"` …).
    pub fn derive(seed: &str, purpose: &str) -> Guid {
        let digest = Sha256::new()
            .chain_update(b"kimg-guid\0")
            .chain_update(seed.as_bytes())
            .chain_update([0])
            .chain_update(purpose.as_bytes())
            .finalize();
        let mut b = [0u8; 16];
        b.copy_from_slice(&digest[..16]);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Guid(b)
    }

    /// On-disk (mixed-endian) encoding: first three groups little-endian.
    pub fn to_disk(self) -> [u8; 16] {
        let g = self.0;
        let mut d = g;
        d[..4].copy_from_slice(&[g[3], g[2], g[1], g[0]]);
        d[4..6].copy_from_slice(&[g[5], g[4]]);
        d[6..8].copy_from_slice(&[g[7], g[6]]);
        d
    }

    pub fn from_disk(d: &[u8]) -> Guid {
        let mut g = [0u8; 16];
        g.copy_from_slice(&d[..16]);
        let mut t = g;
        t[..4].copy_from_slice(&[g[3], g[2], g[1], g[0]]);
        t[4..6].copy_from_slice(&[g[5], g[4]]);
        t[6..8].copy_from_slice(&[g[7], g[6]]);
        Guid(t)
    }
}

impl std::fmt::Display for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = hex::encode_upper(self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }
}

/// One partition of a GPT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GptPartition {
    pub type_guid: Guid,
    pub guid: Guid,
    pub name: String,
    /// First sector (inclusive).
    pub first_lba: u64,
    /// Last sector (inclusive).
    pub last_lba: u64,
}

impl GptPartition {
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }
    pub fn size(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }
}

#[derive(Debug, Error)]
pub enum GptError {
    #[error("writing the partition table failed")]
    WriteFailed(#[source] std::io::Error),
    #[error("reading the partition table failed")]
    ReadFailed(#[source] std::io::Error),
    #[error("no GPT signature at LBA 1")]
    NoSignature,
    #[error("GPT header checksum mismatch")]
    HeaderChecksum,
    #[error("GPT partition array checksum mismatch")]
    EntriesChecksum,
    #[error("GPT header is malformed")]
    BadHeader,
    #[error("partition {name:?} does not fit the disk's usable sectors")]
    PartitionOutOfRange { name: String },
}

/// First sector a partition may use (after the primary array).
pub fn first_usable_lba() -> u64 {
    2 + ENTRY_SECTORS
}

/// Last sector a partition may use on a disk of `total_sectors`.
pub fn last_usable_lba(total_sectors: u64) -> u64 {
    total_sectors - 2 - ENTRY_SECTORS
}

/// Writes protective MBR, primary and backup GPT for a disk of `total_sectors`.
pub fn write<W: Write + Seek>(
    disk: &mut W,
    total_sectors: u64,
    disk_guid: Guid,
    parts: &[GptPartition],
) -> Result<(), GptError> {
    for p in parts {
        if p.first_lba < first_usable_lba()
            || p.last_lba > last_usable_lba(total_sectors)
            || p.last_lba < p.first_lba
        {
            return Err(GptError::PartitionOutOfRange {
                name: p.name.clone(),
            });
        }
    }
    let mut entries = vec![0u8; (ENTRY_COUNT * ENTRY_SIZE) as usize];
    for (i, p) in parts.iter().enumerate() {
        let e = &mut entries[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&p.type_guid.to_disk());
        e[16..32].copy_from_slice(&p.guid.to_disk());
        e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        for (j, unit) in p.name.encode_utf16().take(36).enumerate() {
            e[56 + j * 2..58 + j * 2].copy_from_slice(&unit.to_le_bytes());
        }
    }
    let entries_crc = crc32fast::hash(&entries);
    let last = total_sectors - 1;
    let backup_entries_lba = last - ENTRY_SECTORS;
    let primary = header(1, last, 2, total_sectors, disk_guid, entries_crc);
    let backup = header(
        last,
        1,
        backup_entries_lba,
        total_sectors,
        disk_guid,
        entries_crc,
    );

    let put = |disk: &mut W, lba: u64, bytes: &[u8]| -> Result<(), GptError> {
        disk.seek(SeekFrom::Start(lba * SECTOR))
            .and_then(|_| disk.write_all(bytes))
            .map_err(GptError::WriteFailed)
    };
    put(disk, 0, &protective_mbr(total_sectors))?;
    put(disk, 1, &primary)?;
    put(disk, 2, &entries)?;
    put(disk, backup_entries_lba, &entries)?;
    put(disk, last, &backup)?;
    Ok(())
}

fn protective_mbr(total_sectors: u64) -> [u8; 512] {
    let mut mbr = [0u8; 512];
    let e = &mut mbr[446..462];
    e[0] = 0x00; // not bootable
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    e[4] = 0xEE;
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = (total_sectors - 1).min(u32::MAX as u64) as u32;
    e[12..16].copy_from_slice(&size.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    mbr
}

fn header(
    my_lba: u64,
    alternate_lba: u64,
    entries_lba: u64,
    total_sectors: u64,
    disk_guid: Guid,
    entries_crc: u32,
) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[0..8].copy_from_slice(SIGNATURE);
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
    h[24..32].copy_from_slice(&my_lba.to_le_bytes());
    h[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
    h[40..48].copy_from_slice(&first_usable_lba().to_le_bytes());
    h[48..56].copy_from_slice(&last_usable_lba(total_sectors).to_le_bytes());
    h[56..72].copy_from_slice(&disk_guid.to_disk());
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&ENTRY_COUNT.to_le_bytes());
    h[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32fast::hash(&h[..HEADER_SIZE as usize]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Whether the sector at LBA 1 carries the GPT signature.
pub fn has_signature<R: Read + Seek>(disk: &mut R) -> bool {
    let mut sig = [0u8; 8];
    disk.seek(SeekFrom::Start(SECTOR)).is_ok()
        && disk.read_exact(&mut sig).is_ok()
        && &sig == SIGNATURE
}

/// Reads the primary GPT (verifying both checksums) and returns the used partitions, in
/// table order, together with the disk GUID.
pub fn read<R: Read + Seek>(disk: &mut R) -> Result<(Guid, Vec<GptPartition>), GptError> {
    let mut h = [0u8; 512];
    disk.seek(SeekFrom::Start(SECTOR))
        .and_then(|_| disk.read_exact(&mut h))
        .map_err(GptError::ReadFailed)?;
    if &h[0..8] != SIGNATURE {
        return Err(GptError::NoSignature);
    }
    let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let header_size = u32_at(12) as usize;
    if !(HEADER_SIZE as usize..=512).contains(&header_size) {
        return Err(GptError::BadHeader);
    }
    let mut check = h;
    check[16..20].fill(0);
    if crc32fast::hash(&check[..header_size]) != u32_at(16) {
        return Err(GptError::HeaderChecksum);
    }
    let (count, size) = (u32_at(80) as usize, u32_at(84) as usize);
    if size < 128 || count == 0 || count * size > 1 << 20 {
        return Err(GptError::BadHeader);
    }
    let mut entries = vec![0u8; count * size];
    let entries_at = u64_at(72).checked_mul(SECTOR).ok_or(GptError::BadHeader)?;
    disk.seek(SeekFrom::Start(entries_at))
        .and_then(|_| disk.read_exact(&mut entries))
        .map_err(GptError::ReadFailed)?;
    if crc32fast::hash(&entries) != u32_at(88) {
        return Err(GptError::EntriesChecksum);
    }
    let parts = entries
        .chunks(size)
        .filter(|e| e[..16].iter().any(|b| *b != 0))
        .map(|e| {
            let lba = |o: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&e[o..o + 8]);
                u64::from_le_bytes(b)
            };
            let units: Vec<u16> = e[56..128]
                .chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|u| *u != 0)
                .collect();
            GptPartition {
                type_guid: Guid::from_disk(&e[0..16]),
                guid: Guid::from_disk(&e[16..32]),
                name: String::from_utf16_lossy(&units),
                first_lba: lba(32),
                last_lba: lba(40),
            }
        })
        .collect();
    Ok((Guid::from_disk(&h[56..72]), parts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn parts() -> Vec<GptPartition> {
        vec![
            GptPartition {
                type_guid: ESP_TYPE,
                guid: Guid::derive("t", "part1"),
                name: "ESP".into(),
                first_lba: 2048,
                last_lba: 4095,
            },
            GptPartition {
                type_guid: LINUX_FS_TYPE,
                guid: Guid::derive("t", "part2"),
                name: "STATE".into(),
                first_lba: 4096,
                last_lba: 6143,
            },
        ]
    }

    #[test]
    fn type_guids_print_in_their_textual_form() {
        assert_eq!(ESP_TYPE.to_string(), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!(
            LINUX_FS_TYPE.to_string(),
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
        );
        assert_eq!(Guid::from_disk(&ESP_TYPE.to_disk()), ESP_TYPE);
    }

    #[test]
    fn derived_guids_are_stable_per_seed_and_purpose() {
        assert_eq!(Guid::derive("a", "disk"), Guid::derive("a", "disk"));
        assert_ne!(Guid::derive("a", "disk"), Guid::derive("b", "disk"));
        assert_ne!(Guid::derive("a", "disk"), Guid::derive("a", "part1"));
        assert_eq!(Guid::derive("a", "disk").0[6] >> 4, 4);
    }

    #[test]
    fn a_written_table_reads_back_with_valid_checksums() {
        let total = 8192;
        let mut disk = Cursor::new(vec![0u8; (total * SECTOR) as usize]);
        write(&mut disk, total, Guid::derive("t", "disk"), &parts()).unwrap();
        let (guid, read_back) = read(&mut disk).unwrap();
        assert_eq!(guid, Guid::derive("t", "disk"));
        assert_eq!(read_back, parts());
        // backup header at the last sector carries the signature and points back to LBA 1
        let raw = disk.into_inner();
        let backup = &raw[((total - 1) * SECTOR) as usize..];
        assert_eq!(&backup[..8], SIGNATURE);
        assert_eq!(u64::from_le_bytes(backup[32..40].try_into().unwrap()), 1);
        assert_eq!(&raw[510..512], &[0x55, 0xAA]);
        assert_eq!(raw[446 + 4], 0xEE);
    }

    #[test]
    fn a_corrupted_entry_array_is_detected() {
        let total = 8192;
        let mut disk = Cursor::new(vec![0u8; (total * SECTOR) as usize]);
        write(&mut disk, total, Guid::derive("t", "disk"), &parts()).unwrap();
        disk.get_mut()[2 * SECTOR as usize + 40] ^= 1;
        assert!(matches!(read(&mut disk), Err(GptError::EntriesChecksum)));
    }

    #[test]
    fn a_partition_over_the_backup_table_is_refused() {
        let mut p = parts();
        p[1].last_lba = 8192 - 2;
        let mut disk = Cursor::new(vec![0u8; 8192 * SECTOR as usize]);
        let err = write(&mut disk, 8192, Guid::derive("t", "disk"), &p).unwrap_err();
        assert!(matches!(err, GptError::PartitionOutOfRange { .. }));
    }

    #[test]
    fn sfdisk_accepts_the_table() {
        // External binary (util-linux sfdisk) as an independent reader of our GPT.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.raw");
        let total = 8192;
        let mut f = std::fs::File::create(&path).unwrap();
        f.set_len(total * SECTOR).unwrap();
        write(&mut f, total, Guid::derive("t", "disk"), &parts()).unwrap();
        drop(f);
        let out = std::process::Command::new("sfdisk")
            .args(["--json"])
            .arg(&path)
            .output()
            .expect("sfdisk binary");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
            "{text}"
        );
        assert!(text.contains("\"name\": \"STATE\""), "{text}");
        assert!(
            text.contains(&Guid::derive("t", "disk").to_string()),
            "{text}"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_sectors_never_panic_the_reader(
            mut data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
            signed in proptest::prelude::any::<bool>(),
        ) {
            if signed && data.len() >= 600 {
                data[512..520].copy_from_slice(SIGNATURE);
            }
            let _ = read(&mut Cursor::new(data));
        }
    }
}
