//! `kimg lab`: the machines of one cluster under QEMU on this host, behind one directory.
//!
//! Everything of a lab lives under its directory (`--dir`, default `./lab`):
//!
//! | path | what |
//! |---|---|
//! | `cluster/` | the cluster definition (`kimg cluster new`), unless `--cluster` names one |
//! | `images/<profile>/`, `images/busybox.tar` | the images, rebuilt only when kimg, the cluster or an OCI archive changed |
//! | `machines/<node>.console.log` | each machine's serial console (kept after `down`) |
//! | `machines/<node>.disk.raw`, `.OVMF_VARS.fd`, `.pid` | its disk, UEFI variables and QEMU's PID (removed by `down`) |
//! | `admin.conf` | the kubeconfig, for the API VIP |
//! | `lab.json` | the running lab: network names, machines; present from `up` until `down` |
//!
//! The network is a namespace `kimg-lab-<h>` with a bridge, one tap per machine and a veth
//! pair whose host end `kl<h>` carries the host's address on the lab subnet (`<h>` is taken
//! from the directory's path, so `down` can find them even without `lab.json`). The host
//! thus reaches every machine and the VIP directly: `kubectl` needs no port forward. This
//! needs root (namespaces, taps, a host interface); `up` checks that first.
//!
//! QEMU runs detached (`-daemonize`), so the lab outlives `kimg lab up`; every command
//! after it finds the machines by their PID files and checks that the PID is still that
//! machine's QEMU before signalling it. `stop` is a power cut (SIGKILL), `start` powers the
//! machine on again with its disk.

use std::collections::HashMap;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use super::net::Netns;
use super::plan::{self, Machine, Topology};
use super::qemu::{self, AccelChoice, BootMode, VmConfig};
use super::{console, process};
use crate::build::debian::hash_file;
use crate::cluster::Cluster;

const STATE_FILE: &str = "lab.json";
const BUSYBOX: &str = "docker.io/library/busybox:latest";

/// What `kimg lab up` was asked for.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub dir: PathBuf,
    /// `None` with `cluster`: the machines come from that definition.
    pub topology: Topology,
    pub workers: Option<u32>,
    pub cluster: Option<PathBuf>,
    pub oci_archives: Vec<PathBuf>,
    /// How long to wait for every machine to be ready.
    pub timeout: Duration,
}

/// `lab.json`: what `up` made, for every later command.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct State {
    cluster: PathBuf,
    netns: String,
    uplink: String,
    host_cidr: String,
    accel: String,
    machines: Vec<Machine>,
}

/// The lab's directory, absolute (it names the network and is written into QEMU's command
/// line, which is how a PID is recognised as this lab's).
fn lab_dir(dir: &Path, create: bool) -> Result<PathBuf> {
    if create {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::canonicalize(dir).with_context(|| {
        format!(
            "no lab in {} (start one with `kimg lab up --dir {}`)",
            dir.display(),
            dir.display()
        )
    })
}

/// `(netns, uplink)` names for a lab directory.
fn network_names(dir: &Path) -> (String, String) {
    let h = Sha256::digest(dir.as_os_str().as_encoded_bytes());
    let h = hex::encode(&h[..4]);
    (format!("kimg-lab-{h}"), format!("kl{h}"))
}

fn machines_dir(dir: &Path) -> PathBuf {
    dir.join("machines")
}

fn pidfile(dir: &Path, name: &str) -> PathBuf {
    machines_dir(dir).join(format!("{name}.pid"))
}

fn console_log(dir: &Path, name: &str) -> PathBuf {
    machines_dir(dir).join(format!("{name}.console.log"))
}

fn read_state(dir: &Path) -> Result<Option<State>> {
    let path = dir.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{} is damaged; `kimg lab down` cleans up", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn need_state(dir: &Path) -> Result<State> {
    read_state(dir)?.ok_or_else(|| {
        anyhow!(
            "no lab is up in {} (start one with `kimg lab up --dir {}`)",
            dir.display(),
            dir.display()
        )
    })
}

/// The PID of this lab's QEMU for `name`, if it runs: the PID file names a process whose
/// command line is QEMU's with that very PID file.
fn running_pid(dir: &Path, name: &str) -> Option<i32> {
    let pidfile = pidfile(dir, name);
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let ours = args
        .first()
        .is_some_and(|a| a.ends_with(qemu::QEMU.as_bytes()))
        && args
            .windows(2)
            .any(|w| w[0] == b"-pidfile" && w[1] == pidfile.as_os_str().as_encoded_bytes());
    (ours && alive(pid)).then_some(pid)
}

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, r)| !r.starts_with('Z'))
    })
}

/// What `up` checks before making anything.
fn preflight() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "kimg lab needs root: it makes a network namespace, a bridge, taps and a host \
             interface for the lab network (run it with sudo)"
        );
    }
    let on_path = |prog: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
    };
    for (prog, pkg) in [(qemu::QEMU, "qemu-system-x86"), ("ip", "iproute2")] {
        if !on_path(prog) {
            bail!("{prog} is not installed (apt-get install {pkg}, or scripts/setup-host)");
        }
    }
    for file in [qemu::OVMF_CODE, qemu::OVMF_VARS] {
        if !Path::new(file).is_file() {
            bail!("{file} is missing: the lab boots its machines with UEFI (apt-get install ovmf)");
        }
    }
    Ok(())
}

/// Prints a progress line stamped with the time since `start`.
fn progress(start: Instant, who: &str, what: &str) {
    println!("[{:7.1}s] {who:<12} {what}", start.elapsed().as_secs_f64());
}

/// Runs the kimg binary itself (`cluster new`, `build`, …), output to `log`.
fn kimg(args: &[String], log: &Path, what: &str) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the kimg binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(args);
    let (code, output) = process::run_captured(cmd, log, Duration::from_secs(3600))
        .with_context(|| format!("{what} failed"))?;
    if code != Some(0) {
        bail!(
            "{what} failed ({}):\n{}",
            log.display(),
            console::last_lines(&output, 15)
        );
    }
    Ok(())
}

/// Feeds a file's sha256 (the build's own [`hash_file`]) into `hasher`.
fn file_digest(hasher: &mut Sha256, path: &Path) -> Result<()> {
    let (_, sha) = hash_file(path).with_context(|| format!("cannot read {}", path.display()))?;
    hasher.update(sha.as_bytes());
    Ok(())
}

/// Builds what the machines boot, skipping images whose inputs (the kimg binary, the
/// cluster definition and its secrets, the OCI archives) are unchanged since last time.
fn build_images(
    dir: &Path,
    cluster: &Path,
    machines: &[Machine],
    extra_archives: &[PathBuf],
    start: Instant,
) -> Result<()> {
    let images = dir.join("images");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let busybox = images.join("busybox.tar");
    if !busybox.is_file() {
        progress(
            start,
            "images",
            &format!("building {BUSYBOX} from busybox-static"),
        );
        kimg(
            &[
                "oci".into(),
                "build".into(),
                "--package".into(),
                "busybox-static".into(),
                "--name".into(),
                BUSYBOX.into(),
                "--entrypoint".into(),
                "/bin/busybox".into(),
                "--cmd".into(),
                "sh".into(),
                "--lock".into(),
                images.join("oci.lock").display().to_string(),
                "-o".into(),
                busybox.display().to_string(),
            ],
            &logs.join("oci-busybox.log"),
            "building the busybox image",
        )?;
    }
    let mut archives = vec![busybox];
    for a in extra_archives {
        archives.push(
            std::fs::canonicalize(a).with_context(|| format!("--oci-archive {}", a.display()))?,
        );
    }
    let mut base = Sha256::new();
    file_digest(&mut base, &std::env::current_exe()?)?;
    file_digest(&mut base, &cluster.join("cluster.toml"))?;
    let mut secrets: Vec<PathBuf> = std::fs::read_dir(cluster.join("secrets"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    secrets.sort();
    for p in secrets.iter().chain(&archives) {
        base.update(p.as_os_str().as_encoded_bytes());
        file_digest(&mut base, p)?;
    }
    let mut profiles: Vec<&str> = machines.iter().map(|m| m.profile.as_str()).collect();
    profiles.sort();
    profiles.dedup();
    for profile in profiles {
        let out = images.join(profile);
        let mut h = base.clone();
        h.update(profile.as_bytes());
        let key = hex::encode(h.finalize());
        let stamp = out.join(".lab-inputs");
        if std::fs::read_to_string(&stamp).ok().as_deref() == Some(key.as_str())
            && out.join("disk.raw").is_file()
        {
            progress(start, "images", &format!("{profile}: unchanged, cached"));
            continue;
        }
        let began = Instant::now();
        progress(start, "images", &format!("{profile}: building"));
        let mut args: Vec<String> = vec![
            "build".into(),
            "--quiet".into(),
            "--profile".into(),
            profile.into(),
            "--cluster".into(),
            cluster.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ];
        // Workers run the pods: they carry the images, so nothing is pulled.
        if machines.iter().any(|m| m.profile == profile && m.node) {
            for a in &archives {
                args.push("--oci-archive".into());
                args.push(a.display().to_string());
            }
        }
        kimg(
            &args,
            &logs.join(format!("build-{profile}.log")),
            &format!("building the {profile} image"),
        )?;
        std::fs::write(&stamp, &key)?;
        progress(
            start,
            "images",
            &format!("{profile}: built in {:.1}s", began.elapsed().as_secs_f64()),
        );
    }
    Ok(())
}

/// Refuses a lab subnet that the host already has an address in (another lab, or a LAN).
fn check_subnet_free(host_cidr: &str) -> Result<()> {
    let net: ipnet::Ipv4Net = host_cidr.parse().context("host address")?;
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .context("cannot run ip")?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut words = line.split_whitespace();
        let dev = words.nth(1).unwrap_or("?").to_owned();
        let Some(addr) = words.skip_while(|w| *w != "inet").nth(1) else {
            continue;
        };
        if let Ok(a) = addr.parse::<ipnet::Ipv4Net>() {
            if net.contains(&a.addr()) || a.contains(&net.addr()) {
                bail!(
                    "the lab subnet {} is already on the host's interface {dev} ({addr}): \
                     another lab (`kimg lab down --dir …` it) or a network of this host; \
                     give `--cluster` a definition on another subnet",
                    net.trunc()
                );
            }
        }
    }
    Ok(())
}

fn vm_config(dir: &Path, m: &Machine, tap: &str) -> VmConfig {
    VmConfig {
        name: m.name.clone(),
        mac: m.mac.clone(),
        memory: m.memory_mib,
        cpus: 1,
        boot: BootMode::Uefi,
        image: Some(dir.join("images").join(&m.profile)),
        kernel: None,
        initrd: None,
        cmdline: String::new(),
        disk_size: None,
        tap: tap.to_owned(),
    }
}

fn accel_of(state: &State) -> qemu::Accel {
    if state.accel == "kvm" {
        qemu::Accel::Kvm
    } else {
        qemu::Accel::Tcg
    }
}

/// Powers one machine on; remembers where its console output of this boot begins.
fn power_on(dir: &Path, state: &State, i: usize) -> Result<u32> {
    let m = &state.machines[i];
    let config = vm_config(dir, m, &format!("tap{i}"));
    let plan = qemu::prepare(&config, &machines_dir(dir))?;
    let console = console_log(dir, &m.name);
    let offset = std::fs::metadata(&console).map_or(0, |md| md.len());
    std::fs::write(
        machines_dir(dir).join(format!("{}.boot-offset", m.name)),
        offset.to_string(),
    )?;
    let args = qemu::command_line(&config, &plan, accel_of(state), &console);
    let pid = qemu::start_detached(
        &state.netns,
        &args,
        &machines_dir(dir).join(format!("{}.qemu.log", m.name)),
        &pidfile(dir, &m.name),
        &m.name,
    )?;
    Ok(pid)
}

/// The console text of a machine's current boot.
fn this_boot(dir: &Path, name: &str) -> String {
    let offset = std::fs::read_to_string(machines_dir(dir).join(format!("{name}.boot-offset")))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    String::from_utf8_lossy(&console::read_from(&console_log(dir, name), offset)).replace('\r', "")
}

/// The first console line of this boot that starts with `kimg: <word>`, without `kimg: `.
fn console_event(text: &str, word: &str) -> Option<String> {
    let prefix = format!("kimg: {word} ");
    text.lines().find_map(|l| {
        l.find(&prefix)
            .map(|at| l[at + "kimg: ".len()..].trim().to_owned())
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Booting,
    Identified,
    ServicesUp,
    Ready,
}

/// Whether the Node is Ready, asked through the API VIP with the lab's kubeconfig.
fn node_ready(rt: &tokio::runtime::Runtime, kubeconfig: &Path, name: &str) -> bool {
    rt.block_on(async {
        let fut = async {
            let client = crate::client::client_from_kubeconfig(kubeconfig).await?;
            let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
            anyhow::Ok(nodes.get(name).await?)
        };
        match tokio::time::timeout(Duration::from_secs(10), fut).await {
            Ok(Ok(node)) => node
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            _ => false,
        }
    })
}

/// `kimg lab up`.
pub fn up(opts: &UpOptions) -> Result<()> {
    let start = Instant::now();
    preflight()?;
    if let Some(w) = opts.workers {
        if w > plan::MAX_WORKERS {
            bail!("--workers {w}: at most {} workers", plan::MAX_WORKERS);
        }
    }
    // Everything that can refuse is checked before anything is made.
    let existed = opts.dir.exists();
    if existed && read_state(&lab_dir(&opts.dir, false)?)?.is_some() {
        let d = opts.dir.display();
        bail!("a lab is already up in {d} (`kimg lab status --dir {d}`; `kimg lab down --dir {d}` first)");
    }
    let given = match &opts.cluster {
        Some(c) => {
            let c = std::fs::canonicalize(c)
                .with_context(|| format!("--cluster {}: no such directory", c.display()))?;
            let cluster = Cluster::load(&c)?;
            plan::machines(&cluster)?;
            Some((c, plan::host_cidr(&cluster)?))
        }
        None => None,
    };
    let host_cidr = given
        .as_ref()
        .map_or(plan::HOST_CIDR, |(_, h)| h.as_str())
        .to_owned();
    check_subnet_free(&host_cidr)?;
    let dir = lab_dir(&opts.dir, true)?;
    let (netns_name, uplink) = network_names(&dir);
    if Netns::exists(&netns_name) {
        bail!(
            "the network {netns_name} of a lab in {d} is still there: run `kimg lab down --dir {d}`",
            d = dir.display()
        );
    }
    process::install_interrupt_handler().context("cannot install the signal handler")?;

    let cluster_dir = match given {
        Some((c, _)) => c,
        None => {
            let c = dir.join("cluster");
            let workers = opts.workers.unwrap_or(opts.topology.default_workers());
            let wanted = format!("{} {workers}\n", opts.topology.name());
            let recorded = dir.join("topology");
            if c.join("cluster.toml").is_file() {
                let had = std::fs::read_to_string(&recorded).unwrap_or_default();
                if had != wanted {
                    let mut words = had.split_whitespace();
                    bail!(
                        "{} holds a lab of topology {} with {} workers; use another --dir, \
                         or delete {} to define a new one",
                        dir.display(),
                        words.next().unwrap_or("?"),
                        words.next().unwrap_or("?"),
                        c.display()
                    );
                }
            } else {
                progress(
                    start,
                    "cluster",
                    &format!(
                        "defining a {} cluster with {workers} workers",
                        opts.topology.name()
                    ),
                );
                let mut args = vec![
                    "cluster".into(),
                    "new".into(),
                    c.display().to_string(),
                    "--force".into(),
                ];
                args.extend(plan::cluster_new_args(opts.topology, workers));
                let made = kimg(&args, &dir.join("cluster-new.log"), "defining the cluster");
                if let Err(err) = made {
                    if !existed {
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                    return Err(err);
                }
                std::fs::write(&recorded, &wanted)?;
            }
            c
        }
    };
    let cluster = Cluster::load(&cluster_dir)?;
    let machines = plan::machines(&cluster)?;
    std::fs::create_dir_all(machines_dir(&dir))?;
    build_images(&dir, &cluster_dir, &machines, &opts.oci_archives, start)?;
    if process::interrupted() {
        bail!("interrupted");
    }
    let probe_kernel = dir
        .join("images")
        .join(&machines[0].profile)
        .join("vmlinuz");
    let accel = qemu::choose_accel(AccelChoice::Auto, Some(&probe_kernel), &machines_dir(&dir))?;
    progress(start, "qemu", &format!("accelerator {}", accel.name()));
    kimg(
        &[
            "kubeconfig".into(),
            cluster_dir.display().to_string(),
            "-o".into(),
            dir.join("admin.conf").display().to_string(),
        ],
        &dir.join("logs/kubeconfig.log"),
        "writing admin.conf",
    )?;

    // From here on everything made is in lab.json, and any failure takes it all down.
    let netns = Netns::create(&netns_name)?;
    let state = State {
        cluster: cluster_dir.clone(),
        netns: netns_name.clone(),
        uplink: uplink.clone(),
        host_cidr: host_cidr.clone(),
        accel: accel.name().to_owned(),
        machines,
    };
    let write = serde_json::to_vec_pretty(&state)?;
    crate::pki::write_atomic(&dir.join(STATE_FILE), &write, 0o644)?;
    let netns_name = netns.persist();
    let result = boot_all(&dir, &state, start, opts.timeout);
    if let Err(err) = result {
        eprintln!(
            "kimg lab up failed; taking the lab down again (console logs stay in {})",
            machines_dir(&dir).display()
        );
        if let Err(e) = down(&dir) {
            eprintln!("warning: cleanup: {e:#}");
        }
        return Err(err);
    }
    println!(
        "lab up in {:.1}s: {} machines ({}), network {netns_name} via {uplink} {host_cidr}",
        start.elapsed().as_secs_f64(),
        state.machines.len(),
        accel.name()
    );
    let conf = dir.join("admin.conf");
    println!("kubeconfig: {}", conf.display());
    println!(
        "  kubectl --kubeconfig {} get nodes -o wide",
        conf.display()
    );
    Ok(())
}

fn boot_all(dir: &Path, state: &State, start: Instant, timeout: Duration) -> Result<()> {
    let ns = Netns::adopt(&state.netns);
    ns.add_bridge(None)?;
    for i in 0..state.machines.len() {
        ns.add_tap(&format!("tap{i}"))?;
    }
    ns.add_uplink(&state.uplink, &state.host_cidr)?;
    for (i, m) in state.machines.iter().enumerate() {
        let pid = power_on(dir, state, i)?;
        progress(
            start,
            &m.name,
            &format!(
                "booting ({}, {} MiB, qemu pid {pid})",
                m.profile, m.memory_mib
            ),
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let kubeconfig = dir.join("admin.conf");
    let mut phases: HashMap<String, Phase> = HashMap::new();
    let end = Instant::now() + timeout;
    let mut last_api_check = Instant::now() - Duration::from_secs(60);
    loop {
        if process::interrupted() {
            bail!("interrupted");
        }
        let mut all_ready = true;
        let check_api = last_api_check.elapsed() >= Duration::from_secs(2);
        for m in &state.machines {
            let phase = phases.entry(m.name.clone()).or_insert(Phase::Booting);
            if running_pid(dir, &m.name).is_none() {
                bail!(
                    "{} powered off while booting; its console ends with:\n{}",
                    m.name,
                    console::tail_lines(&console_log(dir, &m.name), 20)
                );
            }
            let text = this_boot(dir, &m.name);
            if *phase < Phase::Identified {
                if let Some(line) = console_event(&text, "booted") {
                    *phase = Phase::Identified;
                    progress(start, &m.name, &format!("identified: {line}"));
                }
            }
            if *phase == Phase::Identified {
                if let Some(line) = console_event(&text, "ready") {
                    *phase = Phase::ServicesUp;
                    progress(start, &m.name, &format!("services up: {line}"));
                }
            }
            if *phase == Phase::ServicesUp
                && (!m.node || (check_api && node_ready(&rt, &kubeconfig, &m.name)))
            {
                *phase = Phase::Ready;
                let what = if m.node {
                    "ready (Node Ready through the VIP)"
                } else {
                    "ready"
                };
                progress(start, &m.name, what);
            }
            all_ready &= *phase == Phase::Ready;
        }
        if check_api {
            last_api_check = Instant::now();
        }
        if all_ready {
            return Ok(());
        }
        if Instant::now() >= end {
            let late: Vec<String> = state
                .machines
                .iter()
                .filter(|m| phases.get(&m.name) != Some(&Phase::Ready))
                .map(|m| format!("{} ({:?})", m.name, phases[&m.name]))
                .collect();
            bail!(
                "not ready after {}s: {} (raise --timeout on a slow host; consoles in {})",
                timeout.as_secs(),
                late.join(", "),
                machines_dir(dir).display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn kill_and_wait(pid: i32) {
    // SAFETY: plain syscalls on a PID just checked to be this lab's QEMU.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if !alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `kimg lab down`: every machine off, the network gone, the machines' disks deleted.
/// Works from `lab.json`, and without it from the names the directory implies.
pub fn down(dir: &Path) -> Result<()> {
    let dir = lab_dir(dir, false)?;
    let state = read_state(&dir).ok().flatten();
    let (netns, uplink) = network_names(&dir);
    let mut names: Vec<String> = state
        .as_ref()
        .map(|s| s.machines.iter().map(|m| m.name.clone()).collect())
        .unwrap_or_default();
    // PID files of machines lab.json does not list (it was lost or damaged).
    for e in std::fs::read_dir(machines_dir(&dir))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Some(n) = e.file_name().to_string_lossy().strip_suffix(".pid") {
            if !names.iter().any(|x| x == n) {
                names.push(n.to_owned());
            }
        }
    }
    let mut stopped = 0;
    for name in &names {
        if let Some(pid) = running_pid(&dir, name) {
            kill_and_wait(pid);
            stopped += 1;
        }
    }
    // Deleting one end of the veth pair deletes both, at once; deleting the namespace
    // would too, but asynchronously, so the host end could still be seen a moment later.
    if Path::new("/sys/class/net").join(&uplink).exists() {
        super::net::ip(&["link", "delete", &uplink])?;
    }
    if Netns::exists(&netns) {
        Netns::remove(&netns)?;
    }
    for e in std::fs::read_dir(machines_dir(&dir))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if [
            ".disk.raw",
            ".OVMF_VARS.fd",
            ".pid",
            ".boot-offset",
            ".data.raw",
        ]
        .iter()
        .any(|s| name.ends_with(s))
        {
            std::fs::remove_file(e.path())?;
        }
    }
    let _ = std::fs::remove_file(dir.join(STATE_FILE));
    println!(
        "lab down: {stopped} machines powered off, network {netns} removed (images and consoles stay in {})",
        dir.display()
    );
    Ok(())
}

/// `kimg lab status`: a header, then a row per machine starting with its name.
pub fn status(dir: &Path) -> Result<()> {
    let dir = lab_dir(dir, false)?;
    let state = need_state(&dir)?;
    println!(
        "{:<12} {:<11} {:<15} {:<20} PROFILE",
        "NAME", "STATE", "ADDRESS", "ROLES"
    );
    for m in &state.machines {
        let st = if running_pid(&dir, &m.name).is_none() {
            "stopped"
        } else {
            let text = this_boot(&dir, &m.name);
            if console_event(&text, "ready").is_some() {
                "up"
            } else if console_event(&text, "booted").is_some() {
                "identified"
            } else {
                "booting"
            }
        };
        println!(
            "{:<12} {:<11} {:<15} {:<20} {}",
            m.name,
            st,
            m.ip.to_string(),
            m.roles,
            m.profile
        );
    }
    Ok(())
}

/// Machine names are node names (DNS labels); anything else is refused before it is
/// used in a path.
fn check_name(name: &str) -> Result<()> {
    let ok = crate::cluster::is_dns_label(name);
    if ok {
        Ok(())
    } else {
        bail!("{name:?} is not a machine name (a node name such as node-1; `kimg lab status` lists them)")
    }
}

fn machine_index(dir: &Path, state: &State, name: &str) -> Result<usize> {
    state
        .machines
        .iter()
        .position(|m| m.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = state.machines.iter().map(|m| m.name.as_str()).collect();
            anyhow!(
                "no machine {name:?} in the lab in {} (its machines: {})",
                dir.display(),
                names.join(", ")
            )
        })
}

/// `kimg lab stop NODE`: a power cut.
pub fn stop(dir: &Path, name: &str) -> Result<()> {
    check_name(name)?;
    let dir = lab_dir(dir, false)?;
    let state = need_state(&dir)?;
    machine_index(&dir, &state, name)?;
    let pid = running_pid(&dir, name).ok_or_else(|| anyhow!("{name} is already off"))?;
    kill_and_wait(pid);
    println!("{name}: powered off (qemu pid {pid}); `kimg lab start {name}` powers it on");
    Ok(())
}

/// `kimg lab start NODE`: power on again, with the disk as it was.
pub fn start(dir: &Path, name: &str) -> Result<()> {
    check_name(name)?;
    let dir = lab_dir(dir, false)?;
    let state = need_state(&dir)?;
    let i = machine_index(&dir, &state, name)?;
    if let Some(pid) = running_pid(&dir, name) {
        bail!("{name} is already running (qemu pid {pid})");
    }
    let pid = power_on(&dir, &state, i)?;
    println!("{name}: powered on (qemu pid {pid}); `kimg lab logs {name} -f` follows its console");
    Ok(())
}

/// `kimg lab logs NODE [-f]`: the serial console, all boots.
pub fn logs(dir: &Path, name: &str, follow: bool) -> Result<()> {
    check_name(name)?;
    let dir = lab_dir(dir, false)?;
    let path = console_log(&dir, name);
    // After `down` (or a failed `up`) the consoles stay: show them for a post-mortem.
    if !path.is_file() {
        let state = need_state(&dir)?;
        machine_index(&dir, &state, name)?;
    }
    let mut file =
        std::fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    if follow {
        process::install_interrupt_handler().context("cannot install the signal handler")?;
    }
    loop {
        let n = file.read(&mut buf)?;
        if n > 0 {
            out.write_all(&buf[..n])?;
            continue;
        }
        if !follow || process::interrupted() {
            return Ok(());
        }
        out.flush()?;
        std::thread::sleep(Duration::from_millis(200));
        // A console file is only ever appended to; reopen if it was replaced.
        let pos = file.stream_position()?;
        if std::fs::metadata(&path).map_or(0, |m| m.len()) < pos {
            file = std::fs::File::open(&path)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_names_fit_the_kernel_limits_and_differ_per_directory() {
        let (ns, up) = network_names(Path::new("/tmp/a"));
        let (ns2, up2) = network_names(Path::new("/tmp/b"));
        assert!(up.len() <= 15, "{up}");
        assert!(ns.starts_with("kimg-lab-") && up.starts_with("kl"));
        assert_ne!((ns, up), (ns2, up2));
    }

    #[test]
    fn console_events_are_read_from_kimg_lines() {
        let text = "junk\n[  1.0] kimg: booted role=worker node=w1 source=mac\nkimg: ready role=worker node=w1 services=kubelet\n";
        assert_eq!(
            console_event(text, "booted").as_deref(),
            Some("booted role=worker node=w1 source=mac")
        );
        assert!(console_event(text, "ready")
            .unwrap()
            .ends_with("services=kubelet"));
        assert_eq!(console_event("kimg: readyish", "ready"), None);
    }

    #[test]
    fn commands_on_a_directory_without_a_lab_say_how_to_start_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = status(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("no lab is up in") && err.contains("kimg lab up --dir"),
            "{err}"
        );
        let err = stop(dir.path(), "node-1").unwrap_err().to_string();
        assert!(err.contains("no lab is up"), "{err}");
    }

    #[test]
    fn names_that_are_not_node_names_never_reach_a_path() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../../etc/passwd", "", "Node", "a/b", &"x".repeat(64)] {
            let err = logs(dir.path(), bad, false).unwrap_err().to_string();
            assert!(err.contains("is not a machine name"), "{bad}: {err}");
            assert!(stop(dir.path(), bad).is_err());
            assert!(start(dir.path(), bad).is_err());
        }
    }

    #[test]
    fn a_damaged_state_file_is_an_error_that_names_the_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"{\"netns\": 12").unwrap();
        let err = format!("{:#}", status(dir.path()).unwrap_err());
        assert!(
            err.contains("damaged") && err.contains("kimg lab down"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_machine_is_named_with_the_machines_there_are() {
        let dir = tempfile::tempdir().unwrap();
        let state = State {
            cluster: dir.path().to_owned(),
            netns: "kimg-lab-x".into(),
            uplink: "klx".into(),
            host_cidr: "10.77.0.1/24".into(),
            accel: "tcg".into(),
            machines: vec![Machine {
                name: "node-1".into(),
                ip: "10.77.0.10".parse().unwrap(),
                mac: "52:54:00:77:0a:0a".into(),
                profile: "all-in-one".into(),
                roles: "etcd+master+worker".into(),
                node: true,
                memory_mib: 1536,
            }],
        };
        std::fs::write(
            dir.path().join(STATE_FILE),
            serde_json::to_vec(&state).unwrap(),
        )
        .unwrap();
        let err = stop(dir.path(), "node-9").unwrap_err().to_string();
        assert!(
            err.contains("no machine \"node-9\"") && err.contains("node-1"),
            "{err}"
        );
        // A PID file naming a process that is not this machine's QEMU is not trusted.
        std::fs::create_dir_all(machines_dir(dir.path())).unwrap();
        std::fs::write(
            pidfile(dir.path(), "node-1"),
            std::process::id().to_string(),
        )
        .unwrap();
        assert_eq!(running_pid(dir.path(), "node-1"), None);
        let err = stop(dir.path(), "node-1").unwrap_err().to_string();
        assert!(err.contains("already off"), "{err}");
    }
}
