//! `kimg build`: Debian package source, rootfs assembly, initramfs, disks and the PXE bundle.

pub mod debian;
pub mod tree;
