//! Helpers shared by the integration tests: run the real `kimg` binary.

#![allow(dead_code)] // each test crate uses a different subset

use std::path::Path;
use std::process::{Command, Output};

/// Runs `kimg ARGS` in `cwd`, returning its output.
pub fn kimg_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kimg"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run kimg")
}

/// Runs `kimg ARGS`, asserting success, and returns stdout.
pub fn kimg_ok(cwd: &Path, args: &[&str]) -> String {
    let out = kimg_in(cwd, args);
    assert!(
        out.status.success(),
        "kimg {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs a host tool, asserting success, and returns stdout.
pub fn tool_ok(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The seeds' reference topology: 3 masters + VIP + 3 etcd + 3 workers.
pub const SEEDS_TOPOLOGY: &[&str] = &[
    "--vip",
    "192.168.202.160",
    "--masters",
    "192.168.202.157,192.168.202.158,192.168.202.159",
    "--etcd",
    "192.168.202.161,192.168.202.162,192.168.202.163",
    "--workers",
    "192.168.202.165,192.168.202.166,192.168.202.167",
];
