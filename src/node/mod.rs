//! The machine side of kimg: `kimg init`, PID 1 of every image (docs/ARCHITECTURE.md §5, §6).
//!
//! - [`init`]: the boot sequence and the life of PID 1 over a [`System`].
//! - [`system`]: the side-effect seam; [`host`] is the real machine, [`recording`] the
//!   scripted test double.
//! - [`supervisor`]: services with capped exponential backoff, zombie reaping.
//! - [`identity`], [`cmdline`]: who this machine is; [`dhcp`], [`dhcp_lease`]: the DHCP
//!   client of diskless (PXE) machines; [`network`], [`netlink`], [`mounts`],
//!   [`modules`]: what it sets up; [`etcd`]: the etcd role's command line and health probe;
//!   [`master`]: the control-plane services of the master role; [`worker`]: containerd,
//!   kubelet and proxy of the worker role; [`vip`]: `kimg vip`, the API virtual IP.
//! - [`image_config`]: `/etc/kimg/image.toml`, written by the builder.
//! - [`events`]: the `kimg: <event> key=value` console lines the tests read.

pub mod cmdline;
pub mod dhcp;
pub mod dhcp_lease;
pub mod etcd;
pub mod events;
pub mod host;
pub mod identity;
pub mod image_config;
pub mod init;
pub mod master;
pub mod modules;
pub mod mounts;
pub mod netlink;
pub mod network;
pub mod recording;
pub mod supervisor;
pub mod system;
pub mod vip;
pub mod worker;

pub use image_config::{ImageConfig, IMAGE_CONFIG_PATH};
pub use init::{Booted, Init, InitError, Timings};
pub use system::System;

use events::Event;

/// Whether this process is the kernel's init: PID 1 started as `/init` (or `…/init`).
pub fn is_pid1_init(argv0: &str) -> bool {
    argv0.ends_with("init") && std::process::id() == 1
}

/// `kimg init`: runs as PID 1 and never returns. Panics are logged (`kimg: panic …`) and,
/// inside the supervisor loop, survived.
pub fn run_init() -> ! {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        println!(
            "{}",
            Event::new("panic")
                .field("message", message)
                .field("location", location)
        );
    }));
    // The services PID 1 starts (apiserver, etcd, kubelet) hold a socket per client and a
    // file per watch; the kernel's default of 1,024 is far too low for them. 2^20 is the
    // kernel's default ceiling (fs.nr_open).
    if let Err(e) = crate::https::set_fd_limit(1 << 20) {
        println!(
            "{}",
            Event::new("warning")
                .field("message", "cannot raise the open-file limit for services")
                .field("error", e.to_string())
        );
    }
    let mut init = Init::new(host::Host::new(), Timings::default());
    let action = init.run();
    // Only reached when reboot(2) failed: PID 1 must never exit (the kernel would panic).
    loop {
        init.system().console(
            &Event::new("halted")
                .field("action", format!("{action:?}"))
                .to_string(),
        );
        init.system().sleep(std::time::Duration::from_secs(3600));
    }
}
