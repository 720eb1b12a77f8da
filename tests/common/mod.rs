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

/// A free TCP port on 127.0.0.1 (bound once and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `secs` naming `what`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Spawns `cmd` (a `kimg up …` command line, perhaps wrapped) with stdout piped and
/// returns the process and the admin kubeconfig path it prints once it serves.
pub fn start_up(mut cmd: Command) -> (std::process::Child, std::path::PathBuf) {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn kimg up");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("kimg up prints the kubeconfig path");
    (child, std::path::PathBuf::from(line.trim()))
}

/// `kimg cluster new` in a fresh temporary directory: the directory (kept alive by the
/// returned guard) and the cluster `dev` in it, to edit before [`Up::start`].
pub fn new_cluster() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("dev");
    kimg_ok(
        tmp.path(),
        &["cluster", "new", dir.to_str().expect("utf-8")],
    );
    (tmp, dir)
}

/// A running `kimg up` on a free loopback port; killed, then its directory removed, on
/// drop.
pub struct Up {
    pub child: std::process::Child,
    pub tmp: tempfile::TempDir,
    /// The cluster directory.
    pub dir: std::path::PathBuf,
    /// Its admin kubeconfig.
    pub kubeconfig: std::path::PathBuf,
    pub addr: std::net::SocketAddr,
    /// `https://ADDR`.
    pub url: String,
}

impl Up {
    /// `kimg up DIR --listen ADDR ARGS…` for the cluster `dir` in `tmp`.
    pub fn start(tmp: tempfile::TempDir, dir: std::path::PathBuf, args: &[&str]) -> Up {
        let addr: std::net::SocketAddr =
            format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kimg"));
        cmd.args([
            "up",
            dir.to_str().expect("utf-8"),
            "--listen",
            &addr.to_string(),
        ])
        .args(args);
        let (child, kubeconfig) = start_up(cmd);
        Up {
            child,
            tmp,
            dir,
            kubeconfig,
            addr,
            url: format!("https://{addr}"),
        }
    }
}

impl Up {
    /// `kimg up` for a new cluster serving the API alone (no scheduler, no
    /// controller-manager).
    pub fn api_only() -> Up {
        let (tmp, dir) = new_cluster();
        Up::start(tmp, dir, &["--no-scheduler", "--no-controller-manager"])
    }

    /// `kubectl ARGS` with the admin kubeconfig.
    pub fn run(&self, args: &[&str]) -> Output {
        kubectl(&self.kubeconfig, args)
    }

    /// [`Up::run`], which must succeed: its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        kubectl_ok(&self.kubeconfig, args)
    }

    /// [`Up::ok`] with `-o json`-style output, parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        kubectl_json(&self.kubeconfig, args)
    }

    /// `kubectl apply -f` of `yaml` (written to a file in the test's directory), which
    /// must succeed.
    pub fn apply(&self, yaml: &str) -> String {
        let path = self.tmp.path().join("manifest.yaml");
        std::fs::write(&path, yaml).expect("write");
        self.ok(&["apply", "-f", path.to_str().expect("utf-8")])
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Declares a test's own handle on a running `kimg up`: a newtype over [`Up`] that derefs
/// to it, so each test adds its own helpers (needs `#[macro_use] mod common;`).
#[allow(unused_macros)] // each test crate uses a different subset
macro_rules! up_handle {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        struct $name(common::Up);

        impl std::ops::Deref for $name {
            type Target = common::Up;
            fn deref(&self) -> &common::Up {
                &self.0
            }
        }

        impl std::ops::DerefMut for $name {
            fn deref_mut(&mut self) -> &mut common::Up {
                &mut self.0
            }
        }
    };
}

/// A child process killed (and reaped) on drop.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kimg up DIR` on a free loopback port over the etcd at `endpoint`, API only (no
/// scheduler, no controller-manager), with `extra` arguments: the process and its
/// kubeconfig.
pub fn kimg_up_on_etcd(
    dir: &Path,
    endpoint: &str,
    extra: &[&str],
) -> (KillOnDrop, std::path::PathBuf) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kimg"));
    cmd.args([
        "up",
        dir.to_str().expect("utf-8"),
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--store",
        &format!("etcd={endpoint}"),
        "--no-scheduler",
        "--no-controller-manager",
    ])
    .args(extra);
    let (child, kubeconfig) = start_up(cmd);
    (KillOnDrop(child), kubeconfig)
}

/// Runs the real `kubectl` with `kubeconfig`.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl")
}

/// Runs `kubectl`, asserting success, and returns stdout.
pub fn kubectl_ok(kubeconfig: &Path, args: &[&str]) -> String {
    checked_ok(args, kubectl(kubeconfig, args))
}

/// Asserts that a `kubectl ARGS` run succeeded; returns its stdout.
pub fn checked_ok(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "kubectl {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `kubectl ARGS -o json`, asserting success, and parses the output.
pub fn kubectl_json(kubeconfig: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&kubectl_ok(kubeconfig, &a)).expect("kubectl json")
}
