//! Machines on a private network under QEMU: `kimg lab` and the QEMU scenario runner.
//!
//! One implementation of "boot machines on a private network", used twice:
//! - `kimg lab up|down|status|logs|stop|start` ([`local`]) keeps a whole cluster running on
//!   this host behind one directory, reachable from the host's `kubectl` through the VIP;
//! - the scenario runner (`qemu-tests/`, crate `kimg-qemu-tests`) boots a scenario's
//!   machines, drives its steps and tears everything down at the end.
//!
//! Both take the network from [`net`] (a namespace with a bridge and one tap per machine),
//! the QEMU command line, accelerator choice and disks from [`qemu`], child processes from
//! [`process`] and console reading from [`console`]. What a lab boots comes from [`plan`]:
//! a topology is written as `kimg cluster new` arguments, and the machines are read back
//! from the cluster definition, so a user's own `--cluster` takes the same path.

pub mod console;
mod local;
pub mod net;
pub mod plan;
pub mod process;
pub mod qemu;

pub use local::{down, logs, start, status, stop, up, UpOptions};
pub use plan::Topology;
