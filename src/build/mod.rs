//! `kimg build`: Debian package source, rootfs assembly, initramfs, disks and the PXE bundle.

pub mod cpio;
pub mod disk;
pub mod inspect;
pub mod tree;
