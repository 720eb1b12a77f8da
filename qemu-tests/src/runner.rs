//! Runs one scenario: build inputs, create the network, execute the steps in order, and tear
//! everything down again whatever happens.
//!
//! Ownership is the cleanup plan. [`Lab`] owns, in drop order, the background tasks, the
//! VMs, the network namespace and the scratch directory, so returning early, a panic, or a
//! Ctrl-C (every wait polls the interrupt flag and returns an error) all end in the same
//! teardown: task groups killed, QEMU processes SIGKILLed by their PIDs, netns deleted,
//! scratch removed unless `--keep`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::console::{last_lines, read_from, tail_lines, ConsoleClock};
use crate::netns::Netns;
use crate::process::{self, Group};
use crate::qemu::{self, Accel, VmConfig, VmProcess};
use crate::scenario::{AssertStep, RunStep, Scenario, Step, WaitConsole};
use crate::timeline::{self, Event};

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct Options {
    pub keep: bool,
    pub timeout_scale: f64,
    pub repo: PathBuf,
    pub scenario_path: PathBuf,
}

/// What a finished run reports.
#[derive(Debug)]
pub struct Report {
    pub events: Vec<Event>,
    /// The failing step (1-based index, line, text) and its error, if any.
    pub failure: Option<(usize, usize, String, String)>,
    pub work: PathBuf,
}

struct VmState {
    config: VmConfig,
    process: Option<VmProcess>,
    console: PathBuf,
    /// Byte offset in the console log where the next `wait-console` starts searching.
    cursor: u64,
}

/// Everything the run created; field order is drop order.
struct Lab {
    clock: ConsoleClock,
    tasks: HashMap<String, Group>,
    vms: Vec<VmState>,
    netns: Netns,
    accel: Accel,
    env: Vec<(String, String)>,
    captures: HashMap<String, String>,
    events: Vec<Event>,
    start: Instant,
    scale: f64,
    work: PathBuf,
    run_counter: usize,
}

/// Replaces the runner's placeholders; other braces are left alone.
pub fn expand(text: &str, vars: &[(&str, &str)]) -> String {
    vars.iter().fold(text.to_owned(), |acc, (key, value)| {
        acc.replace(&format!("{{{key}}}"), value)
    })
}

/// Runs a scenario end to end. Setup errors are `Err`; a failing step is in the report.
pub fn run(scenario: &Scenario, opts: &Options) -> Result<Report> {
    let tmp = tempfile::Builder::new()
        .prefix("kimg-qemu-")
        .tempdir()
        .context("cannot create the scratch directory")?;
    let work = tmp.path().to_owned();
    println!("scratch: {}", work.display());
    // Dropped last (after the Lab), so logs stay readable until the very end.
    let _scratch = if opts.keep {
        // The path stays; disarm the guard.
        let _ = tmp.keep();
        None
    } else {
        Some(tmp)
    };
    let netns_name = Netns::unique_name();
    let repo = opts.repo.display().to_string();
    let scenario_dir = opts
        .scenario_path
        .parent()
        .unwrap_or(Path::new("."))
        .display()
        .to_string();
    let work_s = work.display().to_string();
    let vars = [
        ("work", work_s.as_str()),
        ("repo", repo.as_str()),
        ("netns", netns_name.as_str()),
        ("scenario_dir", scenario_dir.as_str()),
    ];
    let mut env = vec![
        ("KIMG_WORK".to_owned(), work_s.clone()),
        ("KIMG_NETNS".to_owned(), netns_name.clone()),
        ("KIMG_REPO".to_owned(), repo.clone()),
    ];

    run_build(scenario, opts, &vars, &mut env)?;
    // Any kernel the scenario boots will do for the KVM probe.
    let probe_kernel = scenario.vm.iter().find_map(|v| {
        let v = v.get_ref();
        let image_kernel = v.image.as_ref().map(|i| format!("{i}/vmlinuz"));
        let k = PathBuf::from(expand(v.kernel.as_ref().or(image_kernel.as_ref())?, &vars));
        k.is_file().then_some(k)
    });
    let accel = qemu::choose_accel(scenario.qemu.accel, probe_kernel.as_deref(), &work)?;
    println!("accelerator: {}", accel.name());

    let netns = Netns::create(&netns_name)?;
    netns.add_bridge(Some(scenario.network.host.get_ref()))?;
    let mut vms = Vec::new();
    for (i, spec) in scenario.vm.iter().enumerate() {
        let spec = spec.get_ref();
        let tap = format!("tap{i}");
        netns.add_tap(&tap)?;
        let path = |p: &Option<String>| p.as_ref().map(|p| PathBuf::from(expand(p, &vars)));
        vms.push(VmState {
            config: VmConfig {
                name: spec.name.clone(),
                mac: spec.mac.to_ascii_lowercase(),
                memory: spec.memory,
                cpus: scenario.qemu.cpus,
                boot: spec.boot,
                image: path(&spec.image),
                kernel: path(&spec.kernel),
                initrd: path(&spec.initrd),
                cmdline: expand(&spec.cmdline, &vars),
                disk_size: spec.disk.map(|s| s.0),
                tap,
            },
            process: None,
            console: work.join(format!("{}.console.log", spec.name)),
            cursor: 0,
        });
    }
    println!(
        "network: netns {netns_name}, bridge {} {}",
        crate::netns::BRIDGE,
        scenario.network.host.get_ref()
    );

    let clock = ConsoleClock::start(vms.iter().map(|v: &VmState| v.console.clone()).collect());
    let mut lab = Lab {
        clock,
        tasks: HashMap::new(),
        vms,
        netns,
        accel,
        env,
        captures: HashMap::new(),
        events: Vec::new(),
        start: Instant::now(),
        scale: opts.timeout_scale,
        work: work.clone(),
        run_counter: 0,
    };
    let total = scenario.step.len();
    let mut failure = None;
    for (i, (step, line)) in scenario.step.iter().zip(&scenario.step_lines).enumerate() {
        let step = step.get_ref();
        let t = lab.start.elapsed().as_secs_f64();
        println!("[{t:7.1}s] step {}/{total} (line {line}): {step}", i + 1);
        let began = Instant::now();
        match lab.step(step, &vars) {
            Ok(note) => println!(
                "           ok ({:.1}s){note}",
                began.elapsed().as_secs_f64()
            ),
            Err(err) => {
                println!("           FAILED: {err:#}");
                failure = Some((i + 1, *line, step.to_string(), format!("{err:#}")));
                break;
            }
        }
    }
    if failure.is_some() {
        for vm in &lab.vms {
            println!(
                "\n--- last 30 console lines of {} ({}) ---",
                vm.config.name,
                vm.console.display()
            );
            println!("{}", tail_lines(&vm.console, 30));
        }
    }
    let mut events = std::mem::take(&mut lab.events);
    // Console events are dated by arrival, so step order is not always time order.
    events.sort_by_key(|e| e.at);
    Ok(Report {
        events,
        failure,
        work,
    })
}

fn run_build(
    scenario: &Scenario,
    opts: &Options,
    vars: &[(&str, &str)],
    env: &mut Vec<(String, String)>,
) -> Result<()> {
    let mut commands: Vec<(String, Command)> = Vec::new();
    if !scenario.build.kimg.is_empty() {
        let kimg = std::env::var_os("KIMG")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                opts.repo
                    .join("target/x86_64-unknown-linux-gnu/release/kimg")
            });
        if !kimg.is_file() {
            bail!(
                "kimg binary not found at {} (cargo build --release, or set KIMG)",
                kimg.display()
            );
        }
        env.push(("KIMG".into(), kimg.display().to_string()));
        for line in &scenario.build.kimg {
            let line = expand(line, vars);
            let args =
                shlex::split(&line).ok_or_else(|| anyhow!("build: cannot split `{line}`"))?;
            let mut cmd = Command::new(&kimg);
            cmd.args(args);
            commands.push((format!("kimg {line}"), cmd));
        }
    }
    for line in &scenario.build.commands {
        let line = expand(line, vars);
        let mut cmd = Command::new("bash");
        cmd.args(["-c", &line]);
        commands.push((line, cmd));
    }
    for (text, mut cmd) in commands {
        println!("build: {text}");
        cmd.current_dir(&opts.repo)
            .envs(env.iter().map(|(k, v)| (k, v)));
        let status = cmd
            .status()
            .with_context(|| format!("build: cannot run `{text}`"))?;
        if process::interrupted() {
            bail!("interrupted");
        }
        if !status.success() {
            bail!("build: `{text}` failed with {status}");
        }
    }
    Ok(())
}

impl Lab {
    fn vm_index(&self, name: &str) -> Result<usize> {
        if let Some(capture) = name.strip_prefix("capture:") {
            let text = self
                .captures
                .get(capture)
                .ok_or_else(|| anyhow!("no capture {capture:?} to name a vm"))?;
            let named = text.trim().to_string();
            return self.vm_index(&named);
        }
        self.vms
            .iter()
            .position(|v| v.config.name == name)
            .ok_or_else(|| anyhow!("unknown vm {name}"))
    }

    fn record(&mut self, label: impl Into<String>, vm: Option<usize>) {
        self.record_at(label, vm, Instant::now());
    }

    fn record_at(&mut self, label: impl Into<String>, vm: Option<usize>, now: Instant) {
        let (vm_name, since) = match vm.map(|i| &self.vms[i]) {
            Some(v) => (
                Some(v.config.name.clone()),
                v.process
                    .as_ref()
                    .map(|p| now.saturating_duration_since(p.powered_on)),
            ),
            None => (None, None),
        };
        self.events.push(Event {
            label: label.into(),
            vm: vm_name,
            at: now.saturating_duration_since(self.start),
            since_power_on: since,
        });
    }

    fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.scale)
    }

    fn step(&mut self, step: &Step, vars: &[(&str, &str)]) -> Result<String> {
        match step {
            Step::Start(vm) => {
                let i = self.vm_index(vm)?;
                if self.vms[i].process.is_some() {
                    bail!("vm {vm} is already running");
                }
                self.power_on(i)
            }
            Step::Kill(vm) => {
                let i = self.vm_index(vm)?;
                self.power_off(i)?;
                Ok(String::new())
            }
            Step::Restart(vm) => {
                let i = self.vm_index(vm)?;
                if self.vms[i].process.is_some() {
                    self.power_off(i)?;
                }
                self.power_on(i)
            }
            Step::LinkDown(vm) => {
                let i = self.vm_index(vm)?;
                self.netns.unplug(&self.vms[i].config.tap)?;
                self.record("link-down", Some(i));
                Ok(String::new())
            }
            Step::LinkUp(vm) => {
                let i = self.vm_index(vm)?;
                self.netns.plug(&self.vms[i].config.tap)?;
                self.record("link-up", Some(i));
                Ok(String::new())
            }
            Step::WaitConsole(w) => self.wait_console(w),
            Step::Run(r) => self.run_step(r, vars),
            Step::Spawn(s) => {
                let cmd = process::netns_bash(self.netns.name(), &expand(&s.cmd, vars), &self.env);
                let log = self.work.join(format!("{}.log", s.name));
                let group = Group::spawn(cmd, &log)?;
                self.tasks.insert(s.name.clone(), group);
                self.record(format!("task {} started", s.name), None);
                Ok(format!(", output in {}", log.display()))
            }
            Step::Stop(name) => {
                let mut group = self
                    .tasks
                    .remove(name)
                    .ok_or_else(|| anyhow!("task {name} is not running"))?;
                let status = group.terminate(Duration::from_secs(5));
                let text = std::fs::read(&group.output)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                self.captures.insert(name.clone(), text);
                self.record(format!("task {name} stopped"), None);
                Ok(match status {
                    Some(s) => format!(", task ended with {s}"),
                    None => ", task killed".into(),
                })
            }
            Step::Assert(a) => self.assert(a),
            Step::Sleep(d) => {
                process::pause(d.0)?;
                Ok(String::new())
            }
        }
    }

    fn power_on(&mut self, i: usize) -> Result<String> {
        let vm = &mut self.vms[i];
        let plan = qemu::prepare(&vm.config, &self.work)?;
        let args = qemu::command_line(&vm.config, &plan, self.accel, &vm.console);
        vm.cursor = std::fs::metadata(&vm.console).map_or(0, |m| m.len());
        let qemu_log = self.work.join(format!("{}.qemu.log", vm.config.name));
        let process = VmProcess::start(self.netns.name(), &args, &qemu_log, &vm.config.name)?;
        let pid = process.pid().unwrap_or_default();
        vm.process = Some(process);
        self.record("power-on", Some(i));
        Ok(format!(", qemu pid {pid}"))
    }

    fn power_off(&mut self, i: usize) -> Result<()> {
        let name = self.vms[i].config.name.clone();
        self.record("killed", Some(i));
        let process = self.vms[i]
            .process
            .take()
            .ok_or_else(|| anyhow!("vm {name} is not running"))?;
        process.kill();
        Ok(())
    }

    fn wait_console(&mut self, w: &WaitConsole) -> Result<String> {
        let i = self.vm_index(&w.vm)?;
        let timeout = self.scaled(w.timeout.0);
        let end = Instant::now() + timeout;
        loop {
            let vm = &self.vms[i];
            let running = vm
                .process
                .as_ref()
                .ok_or_else(|| anyhow!("vm {} is not running", w.vm))?;
            let bytes = read_from(&vm.console, vm.cursor);
            let text = String::from_utf8_lossy(&bytes);
            if let Some(m) = w.pattern.0.find(&text) {
                let consumed = text[..m.end()].len() as u64;
                let matched = m.as_str().trim().to_owned();
                // Lossy decoding may change lengths only around invalid bytes; never move back.
                self.vms[i].cursor += consumed.min(bytes.len() as u64);
                let seen = self
                    .clock
                    .arrival(&self.vms[i].console, self.vms[i].cursor)
                    .unwrap_or_else(Instant::now);
                let label = w
                    .event
                    .clone()
                    .unwrap_or_else(|| format!("console /{}/", w.pattern.0));
                self.record_at(label, Some(i), seen);
                return Ok(format!(", matched {matched:?}"));
            }
            if running.has_exited() {
                let log = self.work.join(format!("{}.qemu.log", w.vm));
                bail!("qemu of vm {} exited: {}", w.vm, tail_lines(&log, 5));
            }
            if Instant::now() >= end {
                bail!(
                    "no /{}/ on the console of {} within {:?}",
                    w.pattern.0,
                    w.vm,
                    timeout
                );
            }
            process::pause(Duration::from_millis(100))?;
        }
    }

    fn run_step(&mut self, r: &RunStep, vars: &[(&str, &str)]) -> Result<String> {
        let cmd = expand(&r.cmd, vars);
        // `<vm>.console.arrivals` beside each console log: when its bytes arrived, for
        // checks that date console lines (a missing file only leaves them undated).
        for vm in &self.vms {
            let _ = self
                .clock
                .write_arrivals(&vm.console, &vm.console.with_extension("arrivals"));
        }
        let per_try = self.scaled(r.timeout.0);
        let window = r.retry_until_success.map(|d| self.scaled(d.0));
        let began = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            self.run_counter += 1;
            let out = self.work.join(format!("run-{}.out", self.run_counter));
            let command = process::netns_bash(self.netns.name(), &cmd, &self.env);
            let (code, text) = process::run_captured(command, &out, per_try)?;
            if code == Some(r.expect_exit) {
                if r.show {
                    for line in text.lines() {
                        println!("           | {line}");
                    }
                }
                if let Some(name) = &r.capture_as {
                    self.captures.insert(name.clone(), text);
                }
                return Ok(if attempts > 1 {
                    format!(", after {attempts} attempts")
                } else {
                    String::new()
                });
            }
            let retry = window.is_some_and(|w| began.elapsed() + Duration::from_secs(1) < w);
            if !retry {
                let got = code.map_or_else(
                    || format!("no exit code (timeout {per_try:?} or signal)"),
                    |c| format!("exit {c}"),
                );
                bail!(
                    "expected exit {}, got {got} after {attempts} attempt(s); output:\n{}",
                    r.expect_exit,
                    last_lines(&text, 20)
                );
            }
            process::pause(Duration::from_secs(1))?;
        }
    }

    fn assert(&mut self, a: &AssertStep) -> Result<String> {
        let text = self
            .captures
            .get(&a.capture)
            .ok_or_else(|| anyhow!("no capture named {}", a.capture))?;
        check_assert(a, text)?;
        Ok(String::new())
    }
}

/// Applies an assert's tests to captured text.
pub fn check_assert(a: &AssertStep, text: &str) -> Result<()> {
    let show = || last_lines(text, 20);
    if let Some(want) = &a.contains {
        if !text.contains(want.as_str()) {
            bail!("capture {} lacks {want:?}:\n{}", a.capture, show());
        }
    }
    if let Some(bad) = &a.not_contains {
        if text.contains(bad.as_str()) {
            bail!("capture {} contains {bad:?}:\n{}", a.capture, show());
        }
    }
    if let Some(p) = &a.matches {
        if !p.0.is_match(text) {
            bail!(
                "capture {} does not match /{}/:\n{}",
                a.capture,
                p.0,
                show()
            );
        }
    }
    if let Some(p) = &a.not_matches {
        if p.0.is_match(text) {
            bail!("capture {} matches /{}/:\n{}", a.capture, p.0, show());
        }
    }
    Ok(())
}

/// Prints the timeline and the verdict; returns whether the run passed.
pub fn print_report(report: &Report) -> bool {
    println!("\ntimeline:\n{}", timeline::format_table(&report.events));
    match &report.failure {
        None => {
            println!("PASS");
            true
        }
        Some((index, line, step, err)) => {
            println!("FAIL at step {index} (line {line}): {step}\n{err}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Pattern;

    #[test]
    fn placeholders_are_replaced_and_bash_braces_survive() {
        let vars = [("work", "/tmp/w"), ("netns", "kimg-1-0")];
        assert_eq!(
            expand("ls {work}/x; echo ${i} {netns} {other}", &vars),
            "ls /tmp/w/x; echo ${i} kimg-1-0 {other}"
        );
    }

    #[test]
    fn asserts_check_every_given_test() {
        let a = AssertStep {
            capture: "c".into(),
            contains: Some("acked 10".into()),
            not_contains: Some("LOST".into()),
            matches: Some(Pattern(
                regex::RegexBuilder::new(r"^acked \d+$")
                    .multi_line(true)
                    .build()
                    .expect("re"),
            )),
            not_matches: None,
        };
        assert!(check_assert(&a, "x\nacked 10").is_ok());
        assert!(check_assert(&a, "acked 9").is_err());
        assert!(check_assert(&a, "acked 10 LOST").is_err());
    }

    #[test]
    fn a_failing_scenario_reports_its_step_and_leaves_no_netns_or_task_behind_needs_root() {
        let outside = tempfile::tempdir().expect("tempdir");
        let o = outside.path().display();
        let text = format!(
            r#"
[network]
host = "10.213.1.1/24"

[[step]]
spawn = {{ name = "sleeper", cmd = "echo $$ > {o}/pid; echo $KIMG_NETNS > {o}/ns; exec sleep 100" }}

[[step]]
run = {{ cmd = "test -s {o}/ns && ip link show br0", retry-until-success = "10s", capture-as = "links" }}

[[step]]
assert = {{ capture = "links", contains = "br0" }}

[[step]]
run = {{ cmd = "exit 7" }}

[[step]]
sleep = "1s"
"#
        );
        let scenario = crate::scenario::load_str(Path::new("t.toml"), &text).expect("scenario");
        let opts = Options {
            keep: false,
            timeout_scale: 1.0,
            repo: PathBuf::from("/"),
            scenario_path: PathBuf::from("/t.toml"),
        };
        let report = run(&scenario, &opts).expect("setup works (needs root and iproute2)");
        let (index, line, _, err) = report.failure.expect("step 4 fails");
        assert_eq!((index, line), (4, 14));
        assert!(err.contains("expected exit 0, got exit 7"), "{err}");
        assert!(!report.work.exists(), "scratch directory left behind");
        let ns = std::fs::read_to_string(outside.path().join("ns")).expect("ns name");
        assert!(!Netns::exists(ns.trim()), "netns {ns} left behind");
        let pid: i32 = std::fs::read_to_string(outside.path().join("pid"))
            .expect("pid")
            .trim()
            .parse()
            .expect("pid number");
        // SAFETY: signal 0 only checks whether the process exists.
        assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "task {pid} still running");
    }
}
