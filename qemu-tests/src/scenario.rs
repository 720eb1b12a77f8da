//! Scenario files: the data a QEMU cluster test is made of, and the reference for their format.
//!
//! A scenario is one TOML file, `qemu-tests/scenarios/<name>.toml`. It is parsed with serde
//! (`deny_unknown_fields` everywhere) and then validated; every error names the file and the
//! line (`selftest.toml:12: unknown field ...`). Nothing is started until the whole file is valid.
//!
//! # Format
//!
//! ```toml
//! description = "two VMs ping each other"      # optional, printed at the start
//!
//! [network]
//! host = "10.77.0.1/24"     # address of the bridge inside the run's netns; gives the subnet
//!
//! [qemu]                    # optional
//! accel = "auto"            # auto (probe KVM, fall back to TCG) | kvm | tcg
//! cpus = 1                  # vCPUs per VM
//!
//! [build]                   # optional; runs on the host before any VM starts
//! kimg = ["cluster new {work}/cluster", "build --profile etcd --cluster {work}/cluster --out {work}/out/etcd"]
//! commands = ["qemu-tests/fixtures/busybox-initrd.sh {work}/fixture"]
//!
//! [[vm]]
//! name = "a"                          # [a-z0-9-], at most 20 characters
//! mac = "52:54:00:77:00:11"
//! memory = 256                        # MiB, default 512
//! image = "{work}/out/etcd"           # a kimg build output: vmlinuz, initrd.img, cmdline, disk.raw
//! boot = "kernel"                     # kernel | uefi | pxe (default kernel)
//! # kernel = "{work}/fixture/vmlinuz" # instead of `image`: direct kernel boot from files
//! # initrd = "{work}/fixture/initrd.img"
//! cmdline = "kimg.node=etcd-1"        # appended to the image's `cmdline` file
//! disk = "2G"                         # optional blank virtio disk that survives restarts
//!
//! [[step]]
//! start = "a"
//! ```
//!
//! `kimg` entries are argument strings for the kimg binary (`$KIMG`, else
//! `target/x86_64-unknown-linux-gnu/release/kimg` under the repo), split like a shell would; `commands` are `bash -c`
//! lines. Both run in the repo root, `kimg` entries first. The placeholders `{work}` (this
//! run's scratch directory), `{repo}`, `{netns}` and `{scenario_dir}` are replaced in build
//! entries, VM paths and cmdlines, and step commands; other braces (bash's `${x}`) are left
//! alone. Commands also see `KIMG_WORK`, `KIMG_NETNS`, `KIMG_REPO` in the environment.
//!
//! Boot sources: `boot = "kernel"` boots `vmlinuz` + `initrd.img` directly with the
//! image's `cmdline`; `boot = "uefi"` boots a per-run copy of `disk.raw` through OVMF;
//! `boot = "pxe"` boots the NIC's iPXE ROM, and the scenario must `spawn` the DHCP/TFTP
//! server inside the netns itself. `console=ttyS0` is added when the cmdline lacks it.
//!
//! # Steps
//!
//! Each `[[step]]` table holds exactly one key, the step kind. Durations are strings such
//! as `"500ms"`, `"30s"`, `"2m"` (or a number of seconds). Timeouts, but not `sleep`, are
//! multiplied by `--timeout-scale`.
//!
//! | step | meaning |
//! |---|---|
//! | `start = "vm"` | power the VM on |
//! | `kill = "vm"` | SIGKILL its QEMU process: power loss. Any step's vm may be `"capture:NAME"`: the VM named by that capture's text, e.g. the current etcd leader |
//! | `restart = "vm"` | kill if running, then power on again (disks are kept) |
//! | `link-down = "vm"` / `link-up = "vm"` | unplug / replug its tap from the bridge |
//! | `wait-console = { vm, pattern, timeout = "60s", event }` | wait for a regex (multi-line mode) in console output written since power-on or since the previous match; records a timeline event (named `event`, else the pattern) |
//! | `run = { cmd, expect-exit = 0, timeout = "60s", retry-until-success = "30s", capture-as, show = false }` | `bash -c cmd` inside the netns; with `retry-until-success` it is repeated (1 s apart) until its exit code equals `expect-exit` or the window closes; stdout+stderr are kept under `capture-as`, and printed with `show = true` |
//! | `spawn = { name, cmd }` | start a background `bash -c cmd` inside the netns, output to `<work>/<name>.log` |
//! | `stop = "name"` | SIGTERM the task's process group (SIGKILL after 5 s); its output becomes capture `name` |
//! | `assert = { capture, contains, not-contains, matches, not-matches }` | check a capture; at least one test |
//! | `sleep = "2s"` | wait |
//!
//! A `run` kills whatever its command left behind in its process group when it exits;
//! long-running things belong in `spawn`.
//!
//! # Example: acknowledged etcd writes survive a leader's power loss
//!
//! ```toml
//! [[step]]
//! spawn = { name = "writer", cmd = """
//!   i=0; while true; do i=$((i+1))
//!     etcdctl --endpoints=http://10.77.0.11:2379,http://10.77.0.12:2379 \
//!       --command-timeout=3s put k$i v$i >/dev/null 2>&1 && echo "acked $i"
//!   done""" }
//! [[step]]
//! kill = "etcd-1"
//! [[step]]
//! sleep = "10s"
//! [[step]]
//! stop = "writer"                    # its output (the acked keys) is now capture "writer"
//! [[step]]
//! run = { cmd = "qemu-tests/checks/etcd-acked.sh {work}/writer.log", capture-as = "check" }
//! [[step]]
//! assert = { capture = "check", contains = "lost 0" }
//! ```
//!
//! # Running
//!
//! `qemu-tests/run NAME [--keep] [--timeout-scale F]` (root). Each run gets a scratch
//! directory `/tmp/kimg-qemu-*` (console logs `<vm>.console.log`, QEMU stderr
//! `<vm>.qemu.log`, task logs, per-run disks), removed at the end unless `--keep`, and a
//! netns `kimg-<pid>-<n>`, always removed. The run prints each step, then a timeline, and on
//! failure the failing step and the last 30 console lines of every VM.
//!
//! # Limits
//!
//! IPv4 only; one NIC per VM; no placeholders for per-VM values (write addresses literally).

use std::collections::HashSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// Loading a scenario failed; every message names the file and (when known) the line.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {}", path.display())]
    ReadFailed {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    ParseFailed {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}:{line}: {message}", path.display())]
    ValidationFailed {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// A parsed and validated scenario.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub description: String,
    pub network: Network,
    #[serde(default)]
    pub qemu: QemuOptions,
    #[serde(default)]
    pub build: Build,
    #[serde(default)]
    pub vm: Vec<Spanned<VmSpec>>,
    #[serde(default)]
    pub step: Vec<Spanned<Step>>,
    /// 1-based line of each step, filled in by [`load_str`].
    #[serde(skip)]
    pub step_lines: Vec<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Network {
    /// `a.b.c.d/prefix` for the bridge inside the netns.
    pub host: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct QemuOptions {
    #[serde(default)]
    pub accel: AccelChoice,
    #[serde(default = "default_cpus")]
    pub cpus: u32,
}

impl Default for QemuOptions {
    fn default() -> Self {
        QemuOptions {
            accel: AccelChoice::Auto,
            cpus: default_cpus(),
        }
    }
}

fn default_cpus() -> u32 {
    1
}

pub use kimg::lab::qemu::AccelChoice;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Build {
    #[serde(default)]
    pub kimg: Vec<String>,
    #[serde(default)]
    pub commands: Vec<String>,
}

pub use kimg::lab::qemu::BootMode;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct VmSpec {
    pub name: String,
    pub mac: String,
    #[serde(default = "default_memory")]
    pub memory: u32,
    pub image: Option<String>,
    #[serde(default)]
    pub boot: BootMode,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    #[serde(default)]
    pub cmdline: String,
    pub disk: Option<Size>,
}

fn default_memory() -> u32 {
    512
}

/// One scenario step; see the module doc for the meaning of each.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Step {
    Start(String),
    Kill(String),
    Restart(String),
    LinkDown(String),
    LinkUp(String),
    WaitConsole(WaitConsole),
    Run(RunStep),
    Spawn(SpawnStep),
    Stop(String),
    Assert(AssertStep),
    Sleep(Dur),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct WaitConsole {
    pub vm: String,
    pub pattern: Pattern,
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    pub event: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RunStep {
    pub cmd: String,
    #[serde(default)]
    pub expect_exit: i32,
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    pub retry_until_success: Option<Dur>,
    pub capture_as: Option<String>,
    /// Print the command's output in the run log (figures a scenario measures).
    #[serde(default)]
    pub show: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SpawnStep {
    pub name: String,
    pub cmd: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AssertStep {
    pub capture: String,
    pub contains: Option<String>,
    pub not_contains: Option<String>,
    pub matches: Option<Pattern>,
    pub not_matches: Option<Pattern>,
}

fn default_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Start(vm) => write!(f, "start {vm}"),
            Step::Kill(vm) => write!(f, "kill {vm}"),
            Step::Restart(vm) => write!(f, "restart {vm}"),
            Step::LinkDown(vm) => write!(f, "link-down {vm}"),
            Step::LinkUp(vm) => write!(f, "link-up {vm}"),
            Step::WaitConsole(w) => write!(f, "wait-console {} /{}/", w.vm, w.pattern.0),
            Step::Run(r) => write!(f, "run `{}`", r.cmd),
            Step::Spawn(s) => write!(f, "spawn {} `{}`", s.name, s.cmd),
            Step::Stop(name) => write!(f, "stop {name}"),
            Step::Assert(a) => write!(f, "assert on {}", a.capture),
            Step::Sleep(d) => write!(f, "sleep {:?}", d.0),
        }
    }
}

/// A regular expression, compiled while parsing so a bad one is reported with its line.
#[derive(Debug, Clone)]
pub struct Pattern(pub Regex);

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        regex::RegexBuilder::new(&text)
            .multi_line(true)
            .build()
            .map(Pattern)
            .map_err(|err| de::Error::custom(format!("bad regex {text:?}: {err}")))
    }
}

/// A duration written as `"500ms"`, `"30s"`, `"2m"`, `"1h"` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurVisitor;
        impl Visitor<'_> for DurVisitor {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"500ms\" or \"2m\"")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Dur, E> {
                parse_duration(text).map(Dur).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Dur, E> {
                u64::try_from(secs)
                    .map(|s| Dur(Duration::from_secs(s)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_f64<E: de::Error>(self, secs: f64) -> Result<Dur, E> {
                Duration::try_from_secs_f64(secs)
                    .map(Dur)
                    .map_err(|_| E::custom("a duration must be finite and not negative"))
            }
        }
        deserializer.deserialize_any(DurVisitor)
    }
}

/// Parses `"500ms"`, `"30s"`, `"1.5m"`, `"1h"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => text.split_at(at),
        None => return Err(format!("duration {text:?} needs a unit (ms, s, m, h)")),
    };
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("duration {text:?} has unknown unit {unit:?}")),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("duration {text:?} is not a number with a unit"))?;
    Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("duration {text:?} must be finite and not negative"))
}

/// A size written as `"512M"`, `"2G"` or a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let (number, shift) = match text.strip_suffix(['K', 'M', 'G']) {
            Some(n) if text.ends_with('K') => (n, 10),
            Some(n) if text.ends_with('M') => (n, 20),
            Some(n) => (n, 30),
            None => (text.as_str(), 0),
        };
        number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1 << shift))
            .filter(|&n| n > 0)
            .map(Size)
            .ok_or_else(|| de::Error::custom(format!("bad size {text:?}, expected e.g. \"2G\"")))
    }
}

/// Reads and validates a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::ReadFailed {
        path: path.to_owned(),
        source,
    })?;
    load_str(path, &text)
}

/// Parses and validates scenario text; `path` is only used in messages.
pub fn load_str(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
    let mut scenario: Scenario =
        toml::from_str(text).map_err(|err| ScenarioError::ParseFailed {
            path: path.to_owned(),
            line: err.span().map_or(1, |span| line_of(text, span.start)),
            message: err.message().to_owned(),
        })?;
    scenario.step_lines = scenario
        .step
        .iter()
        .map(|s| line_of(text, s.span().start))
        .collect();
    validate(&scenario, text).map_err(|(line, message)| ScenarioError::ValidationFailed {
        path: path.to_owned(),
        line,
        message,
    })?;
    Ok(scenario)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

/// Parses `a.b.c.d/prefix`.
pub fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = text.split_once('/')?;
    let prefix: u8 = prefix.parse().ok()?;
    (prefix <= 32).then_some(())?;
    Some((addr.parse().ok()?, prefix))
}

fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
        // The low bit of the first octet marks multicast, which a NIC must not use.
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
}

fn validate(s: &Scenario, text: &str) -> Result<(), (usize, String)> {
    let host = &s.network.host;
    if parse_cidr(host.get_ref()).is_none() {
        let line = line_of(text, host.span().start);
        return Err((
            line,
            format!("network.host {:?} is not a.b.c.d/prefix", host.get_ref()),
        ));
    }
    let mut names = HashSet::new();
    let mut macs = HashSet::new();
    for vm in &s.vm {
        let line = line_of(text, vm.span().start);
        let v = vm.get_ref();
        let name_ok = !v.name.is_empty()
            && v.name.len() <= 20
            && v.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !name_ok {
            return Err((
                line,
                format!("vm name {:?} must be 1-20 of [a-z0-9-]", v.name),
            ));
        }
        if !names.insert(v.name.as_str()) {
            return Err((line, format!("vm {:?} is defined twice", v.name)));
        }
        if !valid_mac(&v.mac) || !macs.insert(v.mac.to_ascii_lowercase()) {
            return Err((
                line,
                format!("vm {:?}: mac {:?} is invalid or reused", v.name, v.mac),
            ));
        }
        match (&v.image, &v.kernel, v.boot) {
            (Some(_), None, _) if v.initrd.is_none() => {}
            (None, Some(_), BootMode::Kernel) => {}
            (None, None, BootMode::Pxe) if v.initrd.is_none() => {}
            _ => {
                return Err((
                    line,
                    format!(
                        "vm {:?}: give either `image` (with any boot) or `kernel`/`initrd` \
                         (boot = \"kernel\"), or neither with boot = \"pxe\"",
                        v.name
                    ),
                ))
            }
        }
        if v.boot != BootMode::Kernel && !v.cmdline.is_empty() {
            return Err((
                line,
                format!("vm {:?}: cmdline only applies to boot = \"kernel\"", v.name),
            ));
        }
    }
    let mut captures: HashSet<&str> = HashSet::new();
    let mut running: HashSet<&str> = HashSet::new();
    let mut spawned: HashSet<&str> = HashSet::new();
    for (step, &line) in s.step.iter().zip(&s.step_lines) {
        let vm_ref = match step.get_ref() {
            Step::Start(vm)
            | Step::Kill(vm)
            | Step::Restart(vm)
            | Step::LinkDown(vm)
            | Step::LinkUp(vm) => Some(vm),
            Step::WaitConsole(w) => Some(&w.vm),
            _ => None,
        };
        if let Some(vm) = vm_ref {
            if let Some(capture) = vm.strip_prefix("capture:") {
                if !captures.contains(capture) {
                    return Err((
                        line,
                        format!(
                            "vm {vm:?} names capture {capture:?}, which no earlier step records"
                        ),
                    ));
                }
            } else if !names.contains(vm.as_str()) {
                return Err((line, format!("step refers to unknown vm {vm:?}")));
            }
        }
        match step.get_ref() {
            Step::Run(r) => {
                if let Some(name) = &r.capture_as {
                    captures.insert(name);
                }
            }
            Step::Spawn(sp) => {
                // A name is used once per scenario so its log file and capture stay unique.
                let fresh = spawned.insert(&sp.name);
                running.insert(&sp.name);
                if !fresh {
                    return Err((line, format!("task {:?} is spawned twice", sp.name)));
                }
            }
            Step::Stop(name) => {
                if !running.remove(name.as_str()) {
                    return Err((line, format!("stop of task {name:?} that is not running")));
                }
                captures.insert(name);
            }
            Step::Assert(a) => {
                if !captures.contains(a.capture.as_str()) {
                    return Err((
                        line,
                        format!(
                            "assert on capture {:?} that no earlier run or stop makes",
                            a.capture
                        ),
                    ));
                }
                if a.contains.is_none()
                    && a.not_contains.is_none()
                    && a.matches.is_none()
                    && a.not_matches.is_none()
                {
                    return Err((
                        line,
                        "assert needs contains, not-contains, matches or not-matches".into(),
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
description = "demo"

[network]
host = "10.77.0.1/24"

[build]
commands = ["true"]

[[vm]]
name = "a"
mac = "52:54:00:00:00:01"
kernel = "{work}/vmlinuz"
initrd = "{work}/initrd.img"
disk = "1G"

[[vm]]
name = "b"
mac = "52:54:00:00:00:02"
image = "{work}/out"
boot = "uefi"

[[step]]
start = "a"

[[step]]
wait-console = { vm = "a", pattern = "^ready", timeout = "30s" }

[[step]]
run = { cmd = "ping -c1 10.77.0.11", retry-until-success = "1.5m", capture-as = "ping" }

[[step]]
assert = { capture = "ping", contains = "1 packets received" }

[[step]]
spawn = { name = "loop", cmd = "sleep 100" }

[[step]]
sleep = 2

[[step]]
stop = "loop"
"#;

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        load_str(Path::new("t.toml"), text)
    }

    #[test]
    fn a_complete_scenario_parses_with_step_lines_and_durations() {
        let s = parse(GOOD).expect("good scenario");
        assert_eq!(s.vm.len(), 2);
        assert_eq!(s.vm[0].get_ref().memory, 512);
        assert_eq!(s.vm[0].get_ref().disk, Some(Size(1 << 30)));
        assert_eq!(s.vm[1].get_ref().boot, BootMode::Uefi);
        assert_eq!(s.step.len(), 7);
        assert_eq!(s.step_lines[0], 23);
        match s.step[2].get_ref() {
            Step::Run(r) => {
                assert_eq!(r.retry_until_success, Some(Dur(Duration::from_secs(90))));
                assert_eq!(r.expect_exit, 0);
                assert_eq!(r.timeout, Dur(Duration::from_secs(60)));
            }
            other => panic!("step 3 parsed as {other:?}"),
        }
        match s.step[1].get_ref() {
            Step::WaitConsole(w) => assert!(w.pattern.0.is_match("boot\nready a")),
            other => panic!("step 2 parsed as {other:?}"),
        }
        assert!(matches!(s.step[5].get_ref(), Step::Sleep(Dur(d)) if d.as_secs() == 2));
    }

    #[test]
    fn an_unknown_key_is_reported_with_its_file_and_line() {
        let text = GOOD.replace("disk = \"1G\"", "disk = \"1G\"\nflavour = \"x\"");
        let err = parse(&text).expect_err("unknown key must fail").to_string();
        assert!(err.starts_with("t.toml:"), "{err}");
        assert!(err.contains("flavour"), "{err}");
        let line: usize = err
            .split(':')
            .nth(1)
            .and_then(|l| l.parse().ok())
            .expect(&err);
        assert!(
            (10..=16).contains(&line),
            "line {line} should point into the first [[vm]]: {err}"
        );
    }

    #[test]
    fn an_unknown_step_kind_is_rejected_with_its_line() {
        let text = GOOD.replace("sleep = 2", "nap = 2");
        let err = parse(&text).expect_err("unknown step").to_string();
        assert!(err.contains("nap"), "{err}");
        assert!(err.starts_with("t.toml:39:"), "{err}");
    }

    #[test]
    fn a_bad_regex_is_reported_on_its_line() {
        let text = GOOD.replace("\"^ready\"", "\"ready(\"");
        let err = parse(&text).expect_err("bad regex").to_string();
        assert!(err.starts_with("t.toml:27:"), "{err}");
        assert!(err.contains("bad regex"), "{err}");
    }

    #[test]
    fn a_step_naming_an_unknown_vm_is_rejected_on_its_line() {
        let text = GOOD.replace("start = \"a\"", "start = \"zz\"");
        let err = parse(&text).expect_err("unknown vm").to_string();
        assert_eq!(err, "t.toml:23: step refers to unknown vm \"zz\"");
    }

    #[test]
    fn an_assert_before_its_capture_exists_is_rejected() {
        let text = GOOD.replace("capture = \"ping\"", "capture = \"pong\"");
        let err = parse(&text).expect_err("unknown capture").to_string();
        assert!(err.starts_with("t.toml:32:"), "{err}");
    }

    #[test]
    fn kernel_and_image_together_are_rejected() {
        let text = GOOD.replace("boot = \"uefi\"", "boot = \"uefi\"\nkernel = \"/k\"");
        let err = parse(&text).expect_err("both sources").to_string();
        assert!(err.starts_with("t.toml:17:"), "{err}");
    }

    #[test]
    fn a_cmdline_on_a_uefi_vm_is_rejected() {
        let text = GOOD.replace("boot = \"uefi\"", "boot = \"uefi\"\ncmdline = \"x\"");
        let err = parse(&text).expect_err("cmdline with uefi").to_string();
        assert!(
            err.starts_with("t.toml:17:") && err.contains("cmdline"),
            "{err}"
        );
    }

    #[test]
    fn durations_need_a_known_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("3 days").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn cidrs_and_macs_are_checked() {
        assert_eq!(
            parse_cidr("10.77.0.1/24"),
            Some((Ipv4Addr::new(10, 77, 0, 1), 24))
        );
        assert_eq!(parse_cidr("10.77.0.1/33"), None);
        assert_eq!(parse_cidr("10.77.0.1"), None);
        assert!(valid_mac("52:54:00:aa:bb:cc"));
        assert!(!valid_mac("53:54:00:aa:bb:cc"));
        assert!(!valid_mac("52:54:00:aa:bb"));
    }
}
