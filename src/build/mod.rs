//! `kimg build`: Debian package source, rootfs assembly, initramfs, disks and the PXE bundle.

pub mod tree;
