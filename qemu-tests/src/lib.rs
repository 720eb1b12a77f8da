//! kimg-qemu-tests: boots kimg cluster scenarios in QEMU and checks what they claim.
//!
//! A scenario (`qemu-tests/scenarios/<name>.toml`, format in [`scenario`]) lists images to
//! build, VMs, and ordered steps. [`runner::run`] creates a private network namespace with a
//! bridge and one tap per VM, runs QEMU inside it, executes the steps, and tears everything
//! down on success, failure, panic or Ctrl-C. The test harness lives in its own crate so none
//! of it ends up in the kimg binary.

pub mod console;
pub mod netns;
pub mod process;
pub mod qemu;
pub mod runner;
pub mod scenario;
pub mod timeline;
