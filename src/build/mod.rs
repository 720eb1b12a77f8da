//! `kimg build`: Debian package source, rootfs assembly, initramfs, disks and the PXE bundle.

pub mod deb;
pub mod debian;
pub mod elf;
pub mod kmod;
pub mod cpio;
pub mod disk;
pub mod inspect;
pub mod tree;
