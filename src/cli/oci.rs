//! `kimg oci …`: OCI image archives for air-gapped clusters.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use crate::oci;

#[derive(Debug, Subcommand)]
pub enum OciCommand {
    /// Build an OCI image archive from Debian packages (e.g. busybox-static).
    ///
    /// Example: `kimg oci build --package busybox-static --entrypoint /bin/busybox --cmd sh
    /// -o busybox.tar`, then `ctr -n k8s.io images import busybox.tar`.
    Build {
        /// Debian package to put into the image (repeat for more).
        #[arg(long = "package", required = true)]
        packages: Vec<String>,
        /// Image name with tag.
        #[arg(long, default_value = "kimg.local/busybox:latest")]
        name: String,
        /// Entrypoint (repeat for more words).
        #[arg(long, allow_hyphen_values = true)]
        entrypoint: Vec<String>,
        /// Default arguments (repeat for more words).
        #[arg(long, allow_hyphen_values = true)]
        cmd: Vec<String>,
        /// Environment entry KEY=value (repeat).
        #[arg(
            long,
            default_value = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        )]
        env: Vec<String>,
        /// Working directory.
        #[arg(long, default_value = "/")]
        workdir: String,
        /// Output archive.
        #[arg(short, long)]
        output: PathBuf,
        /// Lock file pinning the packages (created or extended as needed).
        #[arg(long, default_value = "images/oci.lock")]
        lock: PathBuf,
        /// Debian mirror URI instead of the one in the host's apt configuration.
        #[arg(long, env = "KIMG_MIRROR")]
        mirror: Option<String>,
        /// Use only the local cache.
        #[arg(long)]
        offline: bool,
        /// Cache directory (default: $XDG_CACHE_HOME/kimg).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Fixed timestamp of every file (default: SOURCE_DATE_EPOCH or kimg's epoch).
        #[arg(long, env = "SOURCE_DATE_EPOCH")]
        epoch: Option<u64>,
    },
}

pub fn run(cmd: OciCommand) -> anyhow::Result<()> {
    match cmd {
        OciCommand::Build {
            packages,
            name,
            entrypoint,
            cmd,
            env,
            workdir,
            output,
            lock,
            mirror,
            offline,
            cache_dir,
            epoch,
        } => {
            let cache_dir = match cache_dir {
                Some(c) => c,
                None => crate::build::debian::default_cache_dir().context(
                    "no cache directory: set XDG_CACHE_HOME or HOME, or pass --cache-dir",
                )?,
            };
            if let Some(parent) = lock.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            let opts = oci::BuildOptions {
                packages,
                image: oci::ImageConfig {
                    name,
                    entrypoint,
                    cmd,
                    env,
                    working_dir: workdir,
                    epoch: epoch.unwrap_or(crate::build::DEFAULT_EPOCH),
                },
                lock_path: lock,
                cache_dir,
                mirror,
                offline,
                quiet: false,
            };
            let image = oci::build(&opts).context("building the OCI image failed")?;
            std::fs::write(&output, &image.archive)
                .with_context(|| format!("cannot write {}", output.display()))?;
            println!(
                "{}: {} ({} bytes, layer {} bytes, manifest {})",
                output.display(),
                opts.image.name,
                image.archive.len(),
                image.layer_size,
                image.manifest_digest
            );
            Ok(())
        }
    }
}
