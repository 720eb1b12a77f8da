//! OCI image archives: build small images from Debian packages, and read archives back.
//!
//! [`layout`] writes an OCI image-layout tarball (`oci-layout`, `index.json`,
//! `blobs/sha256/…`) holding one gzip layer made from a [`Tree`], an image config with
//! Entrypoint/Cmd/Env, and a manifest. The index entry carries both
//! `org.opencontainers.image.ref.name` and `io.containerd.image.name`, so `ctr import` and
//! the kubelet's importer know the image by its full name (`kimg.local/busybox:latest`).
//! Output is deterministic: sorted entries, one fixed mtime, root ownership, gzip headers
//! without timestamps. [`packages`] fills the tree from Debian packages through the same
//! lock, cache and `.deb` extractor as `kimg build`. [`archive`] parses an archive into
//! its manifest, config and layers for the kubelet's importer.
//!
//! Limits: one layer per image, amd64/linux only, no multi-platform indexes on write.

pub mod archive;
pub mod layout;
pub mod packages;
pub mod registry;

use std::path::PathBuf;

pub use archive::{read_archive, OciArchive};
pub use layout::{write_archive, ImageConfig, WrittenImage};
pub use packages::{add_busybox_links, build, BuildOptions, BUSYBOX_APPLETS};

/// Media types used by the writer and accepted by the reader.
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker's manifest list (what most registries serve for multi-platform images).
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker's image manifest.
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Annotation containerd reads for the full image name on import.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Annotation of the OCI image-layout spec for the reference (tag).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Why building or reading an OCI archive failed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(transparent)]
    Build(#[from] crate::build::BuildError),
    #[error(transparent)]
    Source(#[from] crate::build::debian::SourceError),
    #[error("writing the layer tar failed")]
    WriteLayer(#[source] std::io::Error),
    #[error("reading the archive failed")]
    ReadArchive(#[source] std::io::Error),
    #[error("the archive has no {0}")]
    Missing(String),
    #[error("{what} in the archive is not valid JSON")]
    BadJson {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("blob {digest} does not match its digest")]
    DigestMismatch { digest: String },
    #[error("unsupported media type {0}")]
    UnsupportedMediaType(String),
    #[error("bad image name {0:?}: expected host/path:tag")]
    BadName(String),
    #[error("cannot write {path}")]
    WriteOutput {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `sha256:<hex>` of `data`.
pub fn digest_of(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}
