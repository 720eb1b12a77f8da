//! `/etc/kimg/image.toml`: what the builder tells `kimg init` about the image it booted from.
//!
//! # Format
//!
//! ```toml
//! profile = "etcd"                 # the profile the image was built from
//! roles = ["etcd"]                 # roles this image can serve: "etcd", "master", "worker"
//! kernel-version = "6.1.0-28-cloud-amd64"
//! modules = [                      # relative to /lib/modules/<kernel-version>/, load order
//!   "kernel/drivers/virtio/virtio_ring.ko",
//!   "kernel/drivers/net/virtio_net.ko.xz",
//! ]
//! debug-shell = false              # start /bin/sh on the console (needs busybox in the image)
//! ```
//!
//! The builder writes it with [`ImageConfig::render`]; init reads it with
//! [`ImageConfig::parse`]. Keys are kebab-case and unknown keys are refused, so a builder and
//! an init of different versions fail loudly instead of silently dropping a setting.

use serde::{Deserialize, Serialize};

use crate::cluster::{line_of_offset, Role};

/// Where init looks for the file.
pub const IMAGE_CONFIG_PATH: &str = "/etc/kimg/image.toml";

/// The contents of `/etc/kimg/image.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ImageConfig {
    pub profile: String,
    pub roles: Vec<String>,
    pub kernel_version: String,
    /// Module files relative to `/lib/modules/<kernel-version>/`, already in load order.
    #[serde(default)]
    pub modules: Vec<String>,
    #[serde(default)]
    pub debug_shell: bool,
}

/// Why `image.toml` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageConfigError {
    #[error("image.toml:{line}: {message}")]
    Parse { line: usize, message: String },
    #[error("image.toml: unknown role {0:?} (expected etcd, master or worker)")]
    UnknownRole(String),
}

impl ImageConfig {
    /// Parses the text of `image.toml`.
    pub fn parse(text: &str) -> Result<ImageConfig, ImageConfigError> {
        toml::from_str(text).map_err(|e| ImageConfigError::Parse {
            line: e.span().map(|s| line_of_offset(text, s.start)).unwrap_or(1),
            message: e.message().to_string(),
        })
    }

    /// The canonical text the builder writes into the image.
    pub fn render(&self) -> String {
        // A struct of strings, string lists and a bool always serialises.
        let body = toml::to_string(self).unwrap_or_default();
        format!("# written by kimg build; read by kimg init (PID 1)\n{body}")
    }

    /// The roles as typed values, sorted and without duplicates.
    pub fn roles(&self) -> Result<Vec<Role>, ImageConfigError> {
        let mut out = Vec::new();
        for r in &self.roles {
            out.push(Role::parse(r).ok_or_else(|| ImageConfigError::UnknownRole(r.clone()))?);
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ImageConfig {
        ImageConfig {
            profile: "etcd".into(),
            roles: vec!["etcd".into()],
            kernel_version: "6.1.0-28-cloud-amd64".into(),
            modules: vec!["kernel/drivers/virtio/virtio_ring.ko".into()],
            debug_shell: true,
        }
    }

    #[test]
    fn rendered_config_parses_back_to_the_same_value() {
        let text = sample().render();
        assert!(
            text.contains("kernel-version = \"6.1.0-28-cloud-amd64\""),
            "{text}"
        );
        assert_eq!(ImageConfig::parse(&text).unwrap(), sample());
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let text = "profile = \"etcd\"\nroles = []\nkernel-version = \"x\"\ncolour = 1\n";
        let err = ImageConfig::parse(text).unwrap_err().to_string();
        assert!(err.starts_with("image.toml:4:"), "{err}");
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn roles_are_typed_sorted_and_unknown_roles_refused() {
        let mut c = sample();
        c.roles = vec!["worker".into(), "etcd".into(), "etcd".into()];
        assert_eq!(c.roles().unwrap(), vec![Role::Etcd, Role::Worker]);
        c.roles.push("db".into());
        assert!(c.roles().unwrap_err().to_string().contains("\"db\""));
    }
}
