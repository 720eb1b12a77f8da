//! Kernel modules: the file formats init can load.
//!
//! The builder lists module files in load order in `image.toml` (dependencies first; Debian
//! ships no `modules.dep`, so the order is computed at build time). Files are plain ELF
//! `.ko` or xz-compressed `.ko.xz`; compressed ones are inflated in memory and handed to
//! `init_module(2)`, which works on every kernel (unlike `finit_module` with
//! `MODULE_INIT_COMPRESSED_FILE`, which needs 6.4+ and a kernel built for it).
//! zstd-compressed modules are refused with a clear error.

use std::io::{self, Read};

const ELF_MAGIC: &[u8] = b"\x7fELF";
const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";
const ZSTD_MAGIC: &[u8] = b"\x28\xb5\x2f\xfd";

/// The ELF image of a module file, decompressed if needed.
pub fn decode(bytes: Vec<u8>) -> io::Result<Vec<u8>> {
    if bytes.starts_with(ELF_MAGIC) {
        Ok(bytes)
    } else if bytes.starts_with(XZ_MAGIC) {
        let mut out = Vec::with_capacity(bytes.len() * 4);
        xz2::read::XzDecoder::new(&bytes[..]).read_to_end(&mut out)?;
        if !out.starts_with(ELF_MAGIC) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "xz content is not an ELF module",
            ));
        }
        Ok(out)
    } else if bytes.starts_with(ZSTD_MAGIC) {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "zstd-compressed modules are not supported; ship .ko or .ko.xz",
        ))
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a kernel module (neither ELF nor xz)",
        ))
    }
}

/// The module name as `lsmod` shows it, from its file path.
pub fn module_name(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn fake_module() -> Vec<u8> {
        let mut m = ELF_MAGIC.to_vec();
        m.extend_from_slice(&[2u8; 300]);
        m
    }

    #[test]
    fn plain_modules_pass_through_and_xz_modules_are_inflated() {
        assert_eq!(decode(fake_module()).unwrap(), fake_module());
        let mut enc = xz2::write::XzEncoder::new(Vec::new(), 6);
        enc.write_all(&fake_module()).unwrap();
        let xz = enc.finish().unwrap();
        assert!(xz.starts_with(XZ_MAGIC));
        assert_eq!(decode(xz).unwrap(), fake_module());
    }

    #[test]
    fn unknown_and_zstd_files_are_refused() {
        assert!(decode(b"hello".to_vec()).is_err());
        let err = decode(vec![0x28, 0xb5, 0x2f, 0xfd, 0]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
    }

    #[test]
    fn module_names_drop_directories_and_extensions() {
        assert_eq!(
            module_name("kernel/drivers/net/virtio_net.ko.xz"),
            "virtio_net"
        );
        assert_eq!(module_name("failover.ko"), "failover");
    }
}
