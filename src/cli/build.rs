//! `kimg build` and `kimg inspect`.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use crate::build::{self, inspect, BuildOptions};

/// Bake a bootable image for one profile into out/<profile>/: vmlinuz, initrd.img,
/// cmdline, boot.ipxe (PXE), disk.raw (UEFI: ESP + STATE), disk.qcow2, manifest.json.
///
/// Packages come from the Debian mirror in the host's apt configuration (or --mirror /
/// KIMG_MIRROR), verified against the archive keyring and pinned in images/bookworm.lock.
/// Downloads are cached by sha256 in ~/.cache/kimg, so rebuilds work offline. The same
/// inputs always give byte-identical outputs (timestamps: SOURCE_DATE_EPOCH).
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// etcd, master, worker, stacked (etcd + master), all-in-one, or a path to a profile
    /// .toml.
    #[arg(long, short)]
    profile: String,
    /// Cluster directory (from `kimg cluster new`). Default: ./cluster, created as a
    /// single-machine cluster if missing.
    #[arg(long, short)]
    cluster: Option<PathBuf>,
    /// Output directory. Default: out/<profile>.
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Where profiles are looked up before the built-in ones.
    #[arg(long, default_value = "profiles")]
    profiles_dir: PathBuf,
    /// The package lock file.
    #[arg(long, default_value = "images/bookworm.lock")]
    lock: PathBuf,
    /// Re-resolve every package against the current indexes and rewrite the lock.
    #[arg(long)]
    update_lock: bool,
    /// Debian mirror URL replacing the apt configuration's for bookworm(-updates).
    #[arg(long, env = "KIMG_MIRROR")]
    mirror: Option<String>,
    /// Never use the network: everything must be in the lock and the cache.
    #[arg(long)]
    offline: bool,
    /// Cache directory. Default: $XDG_CACHE_HOME/kimg or ~/.cache/kimg.
    #[arg(long, env = "KIMG_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// No progress output (for CI).
    #[arg(long, short)]
    quiet: bool,
    /// Bake this OCI image archive (from `kimg oci build`) into the image for the kubelet
    /// to import at start (repeatable; adds to the profile's `oci-images`).
    #[arg(long = "oci-archive", value_name = "FILE")]
    oci_archive: Vec<PathBuf>,
    /// Also write initrd.img and boot.ipxe for master and etcd profiles. Their initrd
    /// carries the cluster's private keys (CA, service-account and etcd keys), which anyone
    /// who can reach a PXE server can download; without this flag those roles boot from
    /// disk.raw / disk.qcow2 only.
    #[arg(long)]
    allow_secrets_in_pxe: bool,
    /// Timestamp of every file in the image.
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = build::DEFAULT_EPOCH)]
    source_date_epoch: u64,
}

pub fn run(args: BuildArgs) -> anyhow::Result<()> {
    let allow_secrets_in_pxe = args.allow_secrets_in_pxe;
    let opts = BuildOptions {
        profile: args.profile,
        profiles_dir: Some(args.profiles_dir),
        cluster_dir: args.cluster,
        out_dir: args.out,
        lock_path: args.lock,
        update_lock: args.update_lock,
        mirror: args.mirror,
        offline: args.offline,
        quiet: args.quiet,
        cache_dir: args.cache_dir,
        epoch: args.source_date_epoch,
        oci_archives: args.oci_archive,
        allow_secrets_in_pxe,
    };
    let manifest = build::build(&opts)?;
    if !opts.quiet {
        for (name, out) in &manifest.outputs {
            eprintln!(
                "  {name:<12} {:>6.1} MiB  sha256:{}",
                out.size as f64 / 1048576.0,
                &out.sha256[..16]
            );
        }
    }
    Ok(())
}

/// List the files in an image (initrd.img, or disk.raw's ESP and STATE), or print one.
/// Needs no root and mounts nothing.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// initrd.img or disk.raw.
    image: PathBuf,
    /// A file to print: `etc/kimg/cluster.toml` (initrd), `esp:/loader/entries/kimg.conf` or
    /// `state:/kimg/cluster.toml` (disk).
    path: Option<String>,
}

pub fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match args.path {
        Some(p) => out.write_all(&inspect::read(&args.image, &p)?)?,
        None => {
            for l in inspect::list(&args.image)? {
                writeln!(out, "{:>04o} {:>10} {}", l.mode, l.size, l.path)?;
            }
        }
    }
    Ok(())
}
