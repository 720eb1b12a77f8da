//! Build profiles: `profiles/<name>.toml` says what one kind of machine image carries.
//!
//! # Format (the reference)
//!
//! ```toml
//! description = "Kubernetes worker"   # one line, shown by `kimg build --help`
//! roles = ["worker"]                  # any of "etcd", "master", "worker"
//! kernel = "cloud"                    # "cloud" (linux-image-cloud-amd64, VMs) or
//!                                     # "generic" (linux-image-amd64, bare metal)
//! packages = []                       # extra Debian packages to take files from
//! modules = []                        # extra kernel modules, beyond the roles' own
//! debug-shell = false                 # add busybox-static as /bin/sh for the console
//! oci-images = []                     # OCI image archives baked in (air-gapped clusters)
//! outputs = ["pxe", "disk", "qcow2"]  # pxe: vmlinuz+initrd.img+cmdline+boot.ipxe,
//!                                     # disk: UEFI disk.raw, qcow2: disk.qcow2 (needs disk)
//! cmdline = ["console=ttyS0"]         # kernel command line (the shipped profiles add
//!                                     # no_timer_check for overcommitted VM hosts and
//!                                     # panic=10 so a panicked appliance reboots)
//! state-size-mib = 1024               # size of the STATE partition in disk.raw
//! ```
//!
//! Only `roles` is required. Unknown keys, unknown roles, kernels and outputs are errors
//! naming the file, line and key. Profiles are looked up as a path (`./my.toml`), then
//! `<profiles-dir>/<name>.toml`, then the built-in copies of the repository's `profiles/`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::config::{line_of_offset, Role};
use super::error::{ClusterError, FieldError};
use super::validate::line_of_key;

/// The profiles shipped in the repository's `profiles/`, compiled in.
pub const BUILTIN: &[(&str, &str)] = &[
    ("all-in-one", include_str!("../../profiles/all-in-one.toml")),
    ("etcd", include_str!("../../profiles/etcd.toml")),
    ("master", include_str!("../../profiles/master.toml")),
    ("stacked", include_str!("../../profiles/stacked.toml")),
    ("worker", include_str!("../../profiles/worker.toml")),
];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct ProfileFile {
    #[serde(default)]
    description: String,
    roles: Vec<String>,
    #[serde(default = "default_kernel")]
    kernel: String,
    #[serde(default)]
    packages: Vec<String>,
    #[serde(default)]
    modules: Vec<String>,
    #[serde(default)]
    debug_shell: bool,
    #[serde(default)]
    oci_images: Vec<String>,
    #[serde(default = "default_outputs")]
    outputs: Vec<String>,
    #[serde(default = "default_cmdline")]
    cmdline: Vec<String>,
    #[serde(default = "default_state_size")]
    state_size_mib: u64,
}

fn default_kernel() -> String {
    "cloud".into()
}
fn default_outputs() -> Vec<String> {
    vec!["pxe".into(), "disk".into(), "qcow2".into()]
}
fn default_cmdline() -> Vec<String> {
    vec!["console=ttyS0".into()]
}
fn default_state_size() -> u64 {
    1024
}

/// Which kernel package an image boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// `linux-image-cloud-amd64`: virtio, small; for VMs and clouds.
    Cloud,
    /// `linux-image-amd64`: every driver; for bare metal.
    Generic,
}

impl Kernel {
    pub fn package(self) -> &'static str {
        match self {
            Kernel::Cloud => "linux-image-cloud-amd64",
            Kernel::Generic => "linux-image-amd64",
        }
    }
}

/// Which artefacts a build writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outputs {
    pub pxe: bool,
    pub disk: bool,
    pub qcow2: bool,
}

/// A validated profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    /// Where it came from: a file path, or `builtin:<name>`.
    pub source: String,
    pub description: String,
    pub roles: Vec<Role>,
    pub kernel: Kernel,
    pub packages: Vec<String>,
    pub modules: Vec<String>,
    pub debug_shell: bool,
    pub oci_images: Vec<PathBuf>,
    pub outputs: Outputs,
    pub cmdline: String,
    pub state_size_mib: u64,
}

impl Profile {
    /// The profile's roles as written in `cluster.toml` (`etcd`, `master`, `worker`).
    pub fn role_names(&self) -> Vec<String> {
        self.roles.iter().map(|r| r.as_str().to_string()).collect()
    }

    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Finds and loads a profile by name or path (see the module doc for the order).
    pub fn find(name: &str, profiles_dir: Option<&Path>) -> Result<Profile, ClusterError> {
        let as_path = Path::new(name);
        if name.ends_with(".toml") || name.contains('/') {
            return Self::load_file(as_path);
        }
        let dir = profiles_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("profiles"));
        let candidate = dir.join(format!("{name}.toml"));
        if candidate.is_file() {
            return Self::load_file(&candidate);
        }
        if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name) {
            return Self::parse(name, &format!("builtin:{name}"), text, None);
        }
        let mut known: Vec<String> = BUILTIN.iter().map(|(n, _)| n.to_string()).collect();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "toml") {
                    if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                        known.push(stem.to_string());
                    }
                }
            }
        }
        known.sort();
        known.dedup();
        Err(ClusterError::Invalid(vec![FieldError {
            file: None,
            line: None,
            field: "--profile".into(),
            message: format!(
                "unknown profile {name:?}; known profiles: {}",
                known.join(", ")
            ),
        }]))
    }

    /// Loads one profile file.
    pub fn load_file(path: &Path) -> Result<Profile, ClusterError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClusterError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("profile")
            .to_string();
        Self::parse(&name, &path.display().to_string(), &text, Some(path))
    }

    /// Parses and validates profile text.
    pub fn parse(
        name: &str,
        source: &str,
        text: &str,
        path: Option<&Path>,
    ) -> Result<Profile, ClusterError> {
        let file_name = PathBuf::from(
            path.map(|p| p.display().to_string())
                .unwrap_or_else(|| source.to_string()),
        );
        let raw: ProfileFile = toml::from_str(text).map_err(|e| {
            ClusterError::Invalid(vec![FieldError {
                file: Some(file_name.clone()),
                line: e.span().map(|s| line_of_offset(text, s.start)),
                field: String::new(),
                message: e.message().to_string(),
            }])
        })?;
        let mut errors = Vec::new();
        let mut fail = |field: &str, message: String| {
            errors.push(FieldError {
                file: Some(file_name.clone()),
                line: line_of_key(text, field),
                field: field.to_string(),
                message,
            })
        };
        let mut roles = Vec::new();
        for (i, r) in raw.roles.iter().enumerate() {
            match Role::parse(r) {
                Some(role) if !roles.contains(&role) => roles.push(role),
                Some(_) => fail(&format!("roles[{i}]"), format!("role {r:?} listed twice")),
                None => fail(
                    &format!("roles[{i}]"),
                    format!("unknown role {r:?}; expected etcd, master or worker"),
                ),
            }
        }
        roles.sort();
        if raw.roles.is_empty() {
            fail(
                "roles",
                "a profile needs at least one role: etcd, master or worker".into(),
            );
        }
        let kernel = match raw.kernel.as_str() {
            "cloud" => Kernel::Cloud,
            "generic" => Kernel::Generic,
            other => {
                fail(
                    "kernel",
                    format!("unknown kernel {other:?}; expected \"cloud\" or \"generic\""),
                );
                Kernel::Cloud
            }
        };
        let mut outputs = Outputs::default();
        for (i, o) in raw.outputs.iter().enumerate() {
            match o.as_str() {
                "pxe" => outputs.pxe = true,
                "disk" => outputs.disk = true,
                "qcow2" => outputs.qcow2 = true,
                other => fail(
                    &format!("outputs[{i}]"),
                    format!("unknown output {other:?}; expected pxe, disk or qcow2"),
                ),
            }
        }
        if outputs.qcow2 && !outputs.disk {
            fail(
                "outputs",
                "qcow2 is converted from the disk image: add \"disk\" too".into(),
            );
        }
        if raw.state_size_mib < 64 {
            fail(
                "state-size-mib",
                format!("{} MiB is too small; use at least 64", raw.state_size_mib),
            );
        }
        if !errors.is_empty() {
            return Err(ClusterError::Invalid(errors));
        }
        let base = path
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        Ok(Profile {
            name: name.to_string(),
            source: source.to_string(),
            description: raw.description,
            roles,
            kernel,
            packages: raw.packages,
            modules: raw.modules,
            debug_shell: raw.debug_shell,
            oci_images: raw.oci_images.iter().map(|p| base.join(p)).collect(),
            outputs,
            cmdline: raw.cmdline.join(" "),
            state_size_mib: raw.state_size_mib,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_profile_parses() {
        for (name, text) in BUILTIN {
            let p =
                Profile::parse(name, name, text, None).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!p.roles.is_empty());
        }
    }

    #[test]
    fn unknown_profile_keys_fail_with_file_and_line() {
        let text = "roles = [\"worker\"]\nkernal = \"cloud\"\n";
        let err = Profile::parse("w", "w.toml", text, Some(Path::new("profiles/w.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("profiles/w.toml:2:"), "{err}");
        assert!(err.contains("kernal"), "{err}");
    }

    #[test]
    fn an_unknown_role_names_its_key_and_line() {
        let text = "description = \"x\"\nroles = [\"worker\", \"gpu\"]\n";
        let err = Profile::parse("w", "w.toml", text, Some(Path::new("w.toml")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("w.toml:2: roles[1]: unknown role \"gpu\""),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_profile_name_lists_the_known_ones() {
        let err = Profile::find("mastr", Some(Path::new("/nonexistent")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown profile \"mastr\""), "{err}");
        assert!(err.contains("master"), "{err}");
    }
}
