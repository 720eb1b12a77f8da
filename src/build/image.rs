//! The `kimg build` pipeline: profile + cluster + locked packages → `out/<profile>/`.
//!
//! Steps: resolve the lock (`images/bookworm.lock`) → fetch `.deb`s into the sha256 cache →
//! extract only the files each role needs (cached per package and filter) → ELF library
//! closure → kernel module subset with its `modules.dep` → rootfs (kimg as `/init`, config,
//! the role's secrets) → `initrd.img` (newc cpio, zstd) + `vmlinuz` + `cmdline` +
//! `boot.ipxe` → `disk.raw` (GPT: ESP with systemd-boot, ext4 `STATE`) → `disk.qcow2` →
//! `manifest.json`. No root, no loop devices, no mounts. Every timestamp is the fixed
//! epoch (`SOURCE_DATE_EPOCH`, default [`DEFAULT_EPOCH`]) and every order sorted, so the same
//! inputs give byte-identical outputs. Outputs are written to a temp dir beside the output
//! dir and renamed into place, so a failed build never leaves half an image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::deb::{Deb, Filter};
use super::debian::{self, LockedPackage, SourceOptions};
use super::progress::Steps;
use super::role;
use super::tree::{Entry, Tree};
use super::{cache, cpio, disk, elf, kmod, BuildError};
use crate::cluster::{Cluster, Profile, Role};
use crate::pki;

/// 2023-11-14T22:13:20Z: the fixed mtime of every file when `SOURCE_DATE_EPOCH` is unset.
pub const DEFAULT_EPOCH: u64 = 1_700_000_000;

/// Everything `kimg build` takes.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub profile: String,
    pub profiles_dir: Option<PathBuf>,
    /// The cluster directory; `None` means `./cluster`, created with defaults if missing.
    pub cluster_dir: Option<PathBuf>,
    /// Output directory; default `out/<profile>`.
    pub out_dir: Option<PathBuf>,
    pub lock_path: PathBuf,
    pub update_lock: bool,
    pub mirror: Option<String>,
    pub offline: bool,
    pub quiet: bool,
    pub cache_dir: Option<PathBuf>,
    pub epoch: u64,
    /// OCI image archives to bake in, besides the profile's `oci-images`.
    pub oci_archives: Vec<PathBuf>,
    /// Write the PXE bundle's `initrd.img` (and `boot.ipxe`) even for roles whose image
    /// carries the cluster's private keys (master, etcd): anyone who can reach a PXE server
    /// can download them.
    pub allow_secrets_in_pxe: bool,
}

/// One output file in `manifest.json`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct OutputRecord {
    pub sha256: String,
    pub size: u64,
}

/// One input package in `manifest.json`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct InputRecord {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

/// `manifest.json`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Manifest {
    pub profile: String,
    pub roles: Vec<String>,
    pub cluster: String,
    pub kernel_version: String,
    pub kimg_version: String,
    pub source_date_epoch: u64,
    pub outputs: BTreeMap<String, OutputRecord>,
    pub packages: Vec<InputRecord>,
    pub modules: Vec<String>,
    pub rootfs_files: usize,
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Loads the cluster: the given dir (must exist), or `./cluster` (created if missing).
fn load_cluster(dir: Option<&Path>, steps: &Steps) -> Result<Cluster, BuildError> {
    match dir {
        Some(d) => Ok(Cluster::load(d)?),
        None => {
            let d = Path::new("cluster");
            if !d.join(crate::cluster::CLUSTER_FILE).exists() {
                steps.note("no --cluster given and ./cluster is missing: creating the single-machine default there");
                crate::pki::create_cluster(d, &Default::default(), false)?;
            }
            Ok(Cluster::load(d)?)
        }
    }
}

/// Extracts `patterns` of one package, through the extraction cache.
fn extract(
    opts: &SourceOptions,
    pkg: &LockedPackage,
    patterns: &[&str],
) -> Result<Tree, BuildError> {
    let cache_file = cache::key_path(&opts.cache_dir, &pkg.sha256, patterns);
    if let Some(tree) = cache::load(&cache_file) {
        return Ok(tree);
    }
    let path = debian::fetch_package(opts, pkg)?;
    let deb = Deb::open(&path).map_err(|source| BuildError::Deb {
        package: pkg.name.clone(),
        source,
    })?;
    let filter = Filter::new(patterns).map_err(|e| BuildError::Filter {
        package: pkg.name.clone(),
        reason: e.to_string(),
    })?;
    let mut tree = Tree::new();
    deb.extract(&filter, &mut tree)
        .map_err(|source| BuildError::Deb {
            package: pkg.name.clone(),
            source,
        })?;
    cache::store(&cache_file, &tree);
    Ok(tree)
}

fn find<'a>(pkgs: &[&'a LockedPackage], name: &str) -> Result<&'a LockedPackage, BuildError> {
    pkgs.iter()
        .copied()
        .find(|p| p.name == name)
        .ok_or_else(|| BuildError::NotLocked {
            package: name.to_string(),
        })
}

fn file_data(tree: &Tree, path: &str) -> Option<Vec<u8>> {
    match tree.get(path) {
        Some(Entry::File { data, .. }) => Some(data.as_ref().clone()),
        _ => None,
    }
}

/// Where OCI image archives are baked (the kubelet imports every `*.tar` there).
const OCI_DIR: &str = "usr/share/kimg/oci";

/// The running kimg binary, which becomes the image's `/init`; it must be static.
fn own_binary() -> Result<Vec<u8>, BuildError> {
    let path = std::env::current_exe().map_err(|source| BuildError::Io {
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let data = std::fs::read(&path).map_err(|source| BuildError::Io {
        path: path.clone(),
        source,
    })?;
    match elf::inspect(&data) {
        Ok(info) if info.interpreter.is_none() && info.needed.is_empty() => Ok(data),
        _ => Err(BuildError::NotStatic { path }),
    }
}

/// Runs the whole build and returns the manifest it wrote.
pub fn build(opts: &BuildOptions) -> Result<Manifest, BuildError> {
    let started = Instant::now();
    let job = Job::prepare(opts)?;
    let lock = job.resolve_packages()?;
    let pkgs = lock.packages_for(&role::packages(&job.profile));
    let files = job.extract_files(&pkgs)?;
    let (rootfs, modules, vmlinuz) = job.add_libraries_and_modules(files)?;
    let (rootfs, config) = job.assemble_rootfs(rootfs, &modules)?;
    let image = Image {
        initrd: job.write_initrd(&rootfs)?,
        vmlinuz,
        config,
        pkgs,
        modules,
        rootfs_files: rootfs.len(),
    };
    let manifest = job.write_outputs(&image)?;
    job.steps.note(&format!(
        "built {} in {:.1}s → {}",
        job.profile.name,
        started.elapsed().as_secs_f64(),
        job.out_dir.display()
    ));
    Ok(manifest)
}

/// What every stage of a build reads: the options, the profile, the cluster, where the
/// packages come from, where the outputs go, and the progress display.
struct Job<'a> {
    opts: &'a BuildOptions,
    profile: Profile,
    cluster: Cluster,
    source: SourceOptions,
    out_dir: PathBuf,
    steps: Steps,
}

/// The files that stage 2 extracted: the role's own parts, every library package, the
/// kernel package.
struct Extracted<'p> {
    rootfs: Tree,
    binaries: Vec<&'static str>,
    libs: Tree,
    kernel: Tree,
    kernel_pkg: &'p LockedPackage,
}

/// What stage 5 writes out.
struct Image<'p> {
    initrd: Vec<u8>,
    vmlinuz: Vec<u8>,
    /// The first-boot configuration (`/etc/kimg` in the initrd, `STATE/kimg` on disk).
    config: Tree,
    pkgs: Vec<&'p LockedPackage>,
    modules: kmod::ModuleSet,
    rootfs_files: usize,
}

impl<'a> Job<'a> {
    /// Stage 0: the profile, the cluster and the package source.
    fn prepare(opts: &'a BuildOptions) -> Result<Job<'a>, BuildError> {
        let steps = Steps::new(opts.quiet);
        let mut profile = Profile::find(&opts.profile, opts.profiles_dir.as_deref())?;
        profile.oci_images.extend(opts.oci_archives.iter().cloned());
        let cluster = load_cluster(opts.cluster_dir.as_deref(), &steps)?;
        for w in &cluster.warnings {
            steps.note(&format!("warning: {w}"));
        }
        let out_dir = opts
            .out_dir
            .clone()
            .unwrap_or_else(|| Path::new("out").join(&profile.name));
        let cache_dir = match &opts.cache_dir {
            Some(c) => c.clone(),
            None => debian::default_cache_dir().ok_or(BuildError::NoCacheDir)?,
        };
        let mut source = SourceOptions::for_host(cache_dir);
        source.mirror_override = opts.mirror.clone();
        source.offline = opts.offline;
        source.quiet = opts.quiet;
        Ok(Job {
            opts,
            profile,
            cluster,
            source,
            out_dir,
            steps,
        })
    }

    /// Stage 1: the role's packages, pinned in the lock file.
    fn resolve_packages(&self) -> Result<debian::Lockfile, BuildError> {
        let step = self.steps.start("resolve packages");
        let wanted = role::packages(&self.profile);
        let lock = debian::ensure_locked(
            &self.source,
            &self.opts.lock_path,
            &wanted,
            self.opts.update_lock,
        )?;
        step.done(&format!(
            "{} packages pinned in {}",
            lock.packages_for(&wanted).len(),
            self.opts.lock_path.display()
        ));
        Ok(lock)
    }

    /// Stage 2: the files of each package.
    fn extract_files<'p>(&self, pkgs: &[&'p LockedPackage]) -> Result<Extracted<'p>, BuildError> {
        let step = self.steps.start("extract files");
        let mut rootfs = Tree::new();
        let mut binaries: Vec<&'static str> = Vec::new();
        for part in role::parts(&self.profile) {
            let pkg = find(pkgs, part.package)?;
            rootfs.merge(&extract(&self.source, pkg, part.patterns)?);
            binaries.extend(part.binaries);
        }
        let mut libs = Tree::new();
        for pkg in pkgs.iter().filter(|p| debian::resolve::is_library(&p.name)) {
            libs.merge(&extract(&self.source, pkg, role::LIBRARY_PATTERNS)?);
        }
        let kernel_pkg = pkgs
            .iter()
            .copied()
            .find(|p| p.name.starts_with("linux-image-") && p.name != self.profile.kernel.package())
            .ok_or_else(|| BuildError::NotLocked {
                package: format!("the kernel behind {}", self.profile.kernel.package()),
            })?;
        let kernel = extract(&self.source, kernel_pkg, role::KERNEL_PATTERNS)?;
        step.done(&format!(
            "{} files from {} packages",
            rootfs.len() + libs.len(),
            pkgs.len()
        ));
        Ok(Extracted {
            rootfs,
            binaries,
            libs,
            kernel,
            kernel_pkg,
        })
    }

    /// Stage 3: the shared libraries the binaries load, the kernel modules the role needs,
    /// and the kernel itself.
    fn add_libraries_and_modules(
        &self,
        x: Extracted<'_>,
    ) -> Result<(Tree, kmod::ModuleSet, Vec<u8>), BuildError> {
        let step = self.steps.start("resolve libraries and kernel modules");
        let Extracted {
            mut rootfs,
            binaries,
            libs,
            kernel,
            kernel_pkg,
        } = x;
        let mut candidates = libs;
        candidates.merge(&rootfs);
        for path in elf::library_closure(&binaries, &candidates)? {
            if !rootfs.contains(&path) {
                if let Some(entry) = candidates.get(&path) {
                    insert_entry(&mut rootfs, &path, entry.clone());
                }
            }
        }
        let wanted_modules = role::modules(&self.profile);
        let wanted_refs: Vec<&str> = wanted_modules.iter().map(String::as_str).collect();
        let modules = kmod::select_modules(&kernel, &wanted_refs)?;
        rootfs.merge(&modules.files);
        let vmlinuz = kernel
            .iter()
            .find_map(|(p, e)| match e {
                Entry::File { data, .. } if p.starts_with("boot/vmlinuz-") => {
                    Some(data.as_ref().clone())
                }
                _ => None,
            })
            .ok_or_else(|| BuildError::NotLocked {
                package: format!("{} (no boot/vmlinuz-*)", kernel_pkg.name),
            })?;
        step.done(&format!(
            "{} modules for kernel {}",
            modules.load_order.len(),
            modules.kernel_version
        ));
        Ok((rootfs, modules, vmlinuz))
    }

    /// Stage 4: kimg as `/init`, the directories, the debug shell, the OCI archives and
    /// the first-boot configuration.
    fn assemble_rootfs(
        &self,
        mut rootfs: Tree,
        modules: &kmod::ModuleSet,
    ) -> Result<(Tree, Tree), BuildError> {
        let profile = &self.profile;
        let step = self.steps.start("assemble rootfs");
        let kimg = own_binary()?;
        rootfs.insert_file("init", 0o755, kimg);
        rootfs.insert_symlink("usr/bin/kimg", "/init");
        for d in [
            "dev",
            "proc",
            "sys",
            "run",
            "var/lib/kimg",
            "var/log",
            "etc",
            "root",
        ] {
            rootfs.insert_dir(d, 0o755);
        }
        rootfs.insert_dir("tmp", 0o1777);
        if profile.debug_shell {
            for applet in [
                "sh", "ls", "cat", "ps", "ip", "ping", "mount", "dmesg", "vi", "wget",
            ] {
                // A real tool of the image (iproute2's `ip`) wins over the applet.
                if !rootfs.contains(&format!("bin/{applet}")) {
                    rootfs.insert_symlink(&format!("bin/{applet}"), "busybox");
                }
            }
        }
        if !profile.oci_images.is_empty() {
            rootfs.insert_dir(OCI_DIR, 0o755);
        }
        for archive in &profile.oci_images {
            let data = std::fs::read(archive).map_err(|source| BuildError::OciArchive {
                path: archive.clone(),
                source,
            })?;
            let name = archive
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image.tar".into());
            let name = if name.ends_with(".tar") {
                name
            } else {
                format!("{name}.tar")
            };
            rootfs.insert_file(&format!("{OCI_DIR}/{name}"), 0o644, data);
        }
        let config = config_tree(&self.cluster, profile, modules)?;
        rootfs.merge(&prefixed(&config, "etc/kimg"));
        step.done(&format!(
            "{} entries, {} MiB of files",
            rootfs.len(),
            rootfs.file_bytes() >> 20
        ));
        Ok((rootfs, config))
    }

    /// Stage 5a: the initrd (a zstd-compressed cpio of the rootfs).
    fn write_initrd(&self, rootfs: &Tree) -> Result<Vec<u8>, BuildError> {
        let step = self.steps.start("write initrd.img");
        let initrd = cpio::write_initrd(rootfs, self.opts.epoch, cpio::Codec::Zstd)?;
        step.done(&format!("{} MiB", initrd.len() >> 20));
        Ok(initrd)
    }

    /// Stage 5b: every output and the manifest into a staging directory beside the output
    /// directory, renamed over it at the end (a failed build leaves the old outputs).
    fn write_outputs(&self, image: &Image<'_>) -> Result<Manifest, BuildError> {
        let (opts, profile, out_dir) = (self.opts, &self.profile, &self.out_dir);
        let parent = out_dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|source| BuildError::from_io(parent, source))?;
        let staging = parent.join(format!(
            ".{}.build-{}",
            out_dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("out"),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)
            .map_err(|source| BuildError::from_io(&staging, source))?;
        // Master and etcd images carry the cluster's private keys: only the builder may read
        // them. A worker's outputs (CA certificate, bootstrap token) stay readable, as TFTP
        // and HTTP servers serve only world-readable files.
        set_mode(
            &staging,
            if pxe_carries_keys(profile) {
                0o700
            } else {
                0o755
            },
        )?;
        let result = self.write_files(&staging, image);
        let outputs = match result {
            Ok(o) => o,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        let manifest = Manifest {
            profile: profile.name.clone(),
            roles: profile.role_names(),
            cluster: self.cluster.name.clone(),
            kernel_version: image.modules.kernel_version.clone(),
            kimg_version: env!("CARGO_PKG_VERSION").to_string(),
            source_date_epoch: opts.epoch,
            outputs,
            packages: image
                .pkgs
                .iter()
                .map(|p| InputRecord {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    sha256: p.sha256.clone(),
                })
                .collect(),
            modules: image.modules.load_order.clone(),
            rootfs_files: image.rootfs_files,
        };
        let json =
            serde_json::to_string_pretty(&manifest).expect("the manifest always serialises") + "\n";
        let mpath = staging.join("manifest.json");
        std::fs::write(&mpath, json).map_err(|source| BuildError::from_io(&mpath, source))?;
        if out_dir.exists() {
            std::fs::remove_dir_all(out_dir)
                .map_err(|source| BuildError::from_io(out_dir, source))?;
        }
        std::fs::rename(&staging, out_dir)
            .map_err(|source| BuildError::from_io(out_dir, source))?;
        Ok(manifest)
    }

    /// Stage 5c: the kernel, initrd and iPXE script (PXE), the disk image and its qcow2
    /// copy, as the profile asks, into `dir`.
    fn write_files(
        &self,
        dir: &Path,
        image: &Image<'_>,
    ) -> Result<BTreeMap<String, OutputRecord>, BuildError> {
        let (opts, profile, cluster, steps, source) = (
            self.opts,
            &self.profile,
            &self.cluster,
            &self.steps,
            &self.source,
        );
        let (initrd, vmlinuz, config, pkgs) = (
            &image.initrd[..],
            &image.vmlinuz[..],
            &image.config,
            &image.pkgs[..],
        );
        let mut outputs = BTreeMap::new();
        let mut put = |name: &str, data: &[u8]| -> Result<(), BuildError> {
            let path = dir.join(name);
            std::fs::write(&path, data).map_err(|source| BuildError::from_io(&path, source))?;
            set_mode(&path, output_mode(profile, name))?;
            outputs.insert(
                name.to_string(),
                OutputRecord {
                    sha256: sha256_hex(data),
                    size: data.len() as u64,
                },
            );
            Ok(())
        };
        let cmdline = format!("{}\n", profile.cmdline.trim());
        let keys_in_pxe = pxe_carries_keys(profile) && !opts.allow_secrets_in_pxe;
        if profile.outputs.pxe && keys_in_pxe {
            // The kernel holds nothing secret (and QEMU's KVM probe boots it).
            put("vmlinuz", vmlinuz)?;
            steps.note(&format!(
                "no PXE bundle (initrd.img, boot.ipxe) for {}: its initrd carries the cluster's \
                 private keys, which anyone who reaches a PXE server can download; boot it from \
                 disk.raw, or pass --allow-secrets-in-pxe on a network you trust",
                profile.name
            ));
        } else if profile.outputs.pxe {
            put("vmlinuz", vmlinuz)?;
            put("initrd.img", initrd)?;
            put("cmdline", cmdline.as_bytes())?;
            let ipxe = format!(
                "#!ipxe\n# kimg {} image of cluster {}\nkernel vmlinuz initrd=initrd.img {}\ninitrd initrd.img\nboot\n",
                profile.name,
                cluster.name,
                profile.cmdline.trim()
            );
            put("boot.ipxe", ipxe.as_bytes())?;
        }
        if profile.outputs.disk {
            let step = steps.start("write disk.raw (GPT: ESP + STATE)");
            let efi_pkg = find(pkgs, role::SYSTEMD_BOOT.package)?;
            let efi_tree = extract(source, efi_pkg, role::SYSTEMD_BOOT.patterns)?;
            let efi = file_data(&efi_tree, role::SYSTEMD_BOOT.patterns[0]).ok_or_else(|| {
                BuildError::NotLocked {
                    package: "systemd-boot-efi (no systemd-bootx64.efi)".into(),
                }
            })?;
            let title = format!("kimg {} ({})", profile.name, cluster.name);
            // The disk's own boot entry says STATE is on this disk (see node::cmdline).
            let esp = disk::systemd_boot_esp(
                efi,
                vmlinuz.to_vec(),
                initrd.to_vec(),
                &format!("{} kimg.state=disk", profile.cmdline.trim()),
                &title,
            );
            let esp_mib = ((esp.file_bytes() * 11 / 10) >> 20) + 16;
            let spec = disk::DiskSpec {
                esp,
                state: prefixed(config, "kimg"),
                esp_size_mib: esp_mib.max(64),
                state_size_mib: profile.state_size_mib,
                seed: format!("{}/{}", cluster.name, profile.name),
                epoch: opts.epoch,
            };
            let raw = dir.join("disk.raw");
            disk::write_disk(&spec, &raw)?;
            set_mode(&raw, output_mode(profile, "disk.raw"))?;
            outputs.insert("disk.raw".into(), hash_file(&raw)?);
            step.done(&format!(
                "{} MiB",
                (spec.esp_size_mib + spec.state_size_mib)
            ));
            if profile.outputs.qcow2 {
                let step = steps.start("write disk.qcow2");
                let q = dir.join("disk.qcow2");
                disk::qcow2::write_qcow2(&raw, &q)?;
                set_mode(&q, output_mode(profile, "disk.qcow2"))?;
                let rec = hash_file(&q)?;
                step.done(&format!("{} MiB", rec.size >> 20));
                outputs.insert("disk.qcow2".into(), rec);
            }
        }
        Ok(outputs)
    }
}

/// Whether a role's initrd carries private keys of the cluster (masters: the CAs' and the
/// service-account key; etcd members: their serving and peer keys). A worker's carries
/// only the CA certificate and its bootstrap token, which PXE fleets are made for.
pub fn pxe_carries_keys(profile: &Profile) -> bool {
    profile.has(crate::cluster::Role::Master) || profile.has(crate::cluster::Role::Etcd)
}

/// The mode of an output file: 0600 for those holding a master's or etcd member's keys
/// (in a 0700 directory), 0644 for the rest.
pub fn output_mode(profile: &Profile, name: &str) -> u32 {
    match name {
        "initrd.img" | "disk.raw" | "disk.qcow2" if pxe_carries_keys(profile) => 0o600,
        _ => 0o644,
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), BuildError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|source| BuildError::from_io(path, source))
}

fn hash_file(path: &Path) -> Result<OutputRecord, BuildError> {
    let (size, sha256) =
        debian::hash_file(path).map_err(|source| BuildError::from_io(path, source))?;
    Ok(OutputRecord { sha256, size })
}

fn insert_entry(tree: &mut Tree, path: &str, entry: Entry) {
    match entry {
        Entry::File { mode, data } => tree.insert_file(path, mode, data),
        Entry::Dir { mode } => tree.insert_dir(path, mode),
        Entry::Symlink { target } => tree.insert_symlink(path, &target),
    }
}

/// `tree` with every path under `prefix`.
fn prefixed(tree: &Tree, prefix: &str) -> Tree {
    let mut out = Tree::new();
    out.insert_dir(prefix, 0o755);
    for (p, e) in tree.iter() {
        insert_entry(&mut out, &format!("{prefix}/{p}"), e.clone());
    }
    out
}

/// The first-boot config of an image: `cluster.toml`, `image.toml`, the role's PKI files,
/// (masters) `tokens.toml` and (workers) the bootstrap token. Paths are relative to `/etc/kimg`.
fn config_tree(
    cluster: &Cluster,
    profile: &Profile,
    modules: &kmod::ModuleSet,
) -> Result<Tree, BuildError> {
    let mut t = Tree::new();
    t.insert_file("cluster.toml", 0o644, cluster.to_toml().into_bytes());
    let module_dir = format!("lib/modules/{}/", modules.kernel_version);
    let image = crate::node::ImageConfig {
        profile: profile.name.clone(),
        roles: profile.role_names(),
        kernel_version: modules.kernel_version.clone(),
        modules: modules
            .load_order
            .iter()
            .filter_map(|m| modules.paths.get(m))
            .map(|p| p.strip_prefix(&module_dir).unwrap_or(p).to_string())
            .collect(),
        debug_shell: profile.debug_shell,
    };
    t.insert_file("image.toml", 0o644, image.render().into_bytes());
    let pki_dir = pki::pki_dir(&cluster.dir);
    for rel in role::pki_files(cluster, profile) {
        let path = pki_dir.join(&rel);
        let data = std::fs::read(&path).map_err(|source| BuildError::Secret {
            path: path.clone(),
            source,
        })?;
        let mode = if rel.ends_with(".key") { 0o600 } else { 0o644 };
        t.insert_file(&format!("pki/{rel}"), mode, data);
    }
    t.insert_dir("pki", 0o700);
    if profile.has(Role::Master) {
        // The first master creates the bootstrap-token Secrets from these (with expiry).
        let path = pki::token::tokens_path(&cluster.dir);
        let data = std::fs::read(&path).map_err(|source| BuildError::Secret {
            path: path.clone(),
            source,
        })?;
        t.insert_file("tokens.toml", 0o600, data);
    }
    if profile.has(Role::Worker) {
        let tokens = pki::token::load(&cluster.dir)?;
        let now = time::OffsetDateTime::now_utc();
        let token = pki::token::newest_valid(&tokens, now).ok_or_else(|| BuildError::NoToken {
            dir: cluster.dir.clone(),
        })?;
        t.insert_file("token", 0o600, format!("{}\n", token.value()).into_bytes());
    }
    Ok(t)
}
