//! kimg-qemu-tests: boots kimg cluster scenarios in QEMU and checks what they claim.
//!
//! A scenario (`qemu-tests/scenarios/<name>.toml`, format in [`scenario`]) lists images to
//! build, VMs, and ordered steps. [`runner::run`] creates a private network namespace with a
//! bridge and one tap per VM, runs QEMU inside it, executes the steps, and tears everything
//! down on success, failure, panic or Ctrl-C. Booting machines on a private network is
//! `kimg::lab` (shared with `kimg lab`); the scenario format, steps and checks live in this
//! crate so none of them end up in the kimg binary.

pub use kimg::lab::{console, net as netns, process, qemu};
pub mod runner;
pub mod scenario;
pub mod timeline;
