//! Writes an OCI image-layout tarball from a [`Tree`] and an [`ImageConfig`].
//!
//! The layer is a ustar/GNU tar of the tree (parents before children, uid/gid 0, every
//! mtime = the epoch), gzip-compressed with a zero header mtime. The diff id is the sha256
//! of the uncompressed tar, the layer digest the sha256 of the gzip stream. The outer
//! archive holds `oci-layout`, `index.json` and `blobs/sha256/<hex>` in sorted order with
//! the same fixed metadata, so identical inputs give identical bytes.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::json;

use super::{
    digest_of, OciError, ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, MEDIA_CONFIG,
    MEDIA_LAYER_GZIP, MEDIA_MANIFEST,
};
use crate::build::tree::{Entry, Tree};

/// What the image runs and how it is named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageConfig {
    /// Full name with tag, e.g. `kimg.local/busybox:latest`.
    pub name: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    pub working_dir: String,
    /// Seconds since 1970 stamped on every file and on the config's `created`.
    pub epoch: u64,
}

/// The archive and the digests a caller may want to print or record.
#[derive(Clone, Debug)]
pub struct WrittenImage {
    pub archive: Vec<u8>,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digest: String,
    pub diff_id: String,
    pub layer_size: u64,
}

/// Splits `host/path:tag` into the name and its tag (`latest` when missing).
pub fn split_tag(name: &str) -> Result<(&str, &str), OciError> {
    let last = name.rsplit('/').next().unwrap_or(name);
    let (repo, tag) = match last.rfind(':') {
        Some(i) => {
            let cut = name.len() - last.len() + i;
            (&name[..cut], &name[cut + 1..])
        }
        None => (name, "latest"),
    };
    if repo.is_empty() || tag.is_empty() || name.contains(char::is_whitespace) {
        return Err(OciError::BadName(name.to_string()));
    }
    Ok((repo, tag))
}

/// The uncompressed layer tar of `tree`.
pub fn layer_tar(tree: &Tree, epoch: u64) -> Result<Vec<u8>, OciError> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, entry) in tree.iter() {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(epoch);
        h.set_uid(0);
        h.set_gid(0);
        match entry {
            Entry::Dir { mode } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, format!("{path}/"), std::io::empty())
            }
            Entry::File { mode, data } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, data.as_slice())
            }
            Entry::Symlink { target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target)
            }
        }
        .map_err(OciError::WriteLayer)?;
    }
    b.into_inner().map_err(OciError::WriteLayer)
}

fn gzip(data: &[u8]) -> Result<Vec<u8>, OciError> {
    // GzEncoder writes mtime 0 and no file name: the stream depends only on the data.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).map_err(OciError::WriteLayer)?;
    e.finish().map_err(OciError::WriteLayer)
}

fn rfc3339(epoch: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(epoch as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

fn to_json(value: &serde_json::Value) -> Vec<u8> {
    // serde_json keeps object keys sorted (no preserve_order feature): stable bytes.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Builds the whole archive in memory.
pub fn write_archive(tree: &Tree, cfg: &ImageConfig) -> Result<WrittenImage, OciError> {
    let (_, tag) = split_tag(&cfg.name)?;
    let tar = layer_tar(tree, cfg.epoch)?;
    let diff_id = digest_of(&tar);
    let layer = gzip(&tar)?;
    let layer_digest = digest_of(&layer);
    let created = rfc3339(cfg.epoch);
    let config = to_json(&json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": cfg.entrypoint,
            "Cmd": cfg.cmd,
            "Env": cfg.env,
            "WorkingDir": cfg.working_dir,
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created": created, "created_by": "kimg oci build" }],
    }));
    let config_digest = digest_of(&config);
    let manifest = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": { "mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": MEDIA_LAYER_GZIP, "digest": layer_digest, "size": layer.len() }],
    }));
    let manifest_digest = digest_of(&manifest);
    let index = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": super::MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": { "architecture": "amd64", "os": "linux" },
            "annotations": {
                ANNOTATION_CONTAINERD_NAME: cfg.name,
                ANNOTATION_REF_NAME: tag,
            },
        }],
    }));
    let mut files: BTreeMap<String, &[u8]> = BTreeMap::new();
    let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
    files.insert(format!("blobs/sha256/{}", hex(&config_digest)), &config);
    files.insert(format!("blobs/sha256/{}", hex(&layer_digest)), &layer);
    files.insert(format!("blobs/sha256/{}", hex(&manifest_digest)), &manifest);
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    files.insert("oci-layout".into(), layout);
    files.insert("index.json".into(), &index);

    let mut b = tar::Builder::new(Vec::new());
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_mtime(cfg.epoch);
        h.set_size(0);
        b.append_data(&mut h, dir, std::io::empty())
            .map_err(OciError::WriteLayer)?;
    }
    for (path, data) in &files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(cfg.epoch);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, *data)
            .map_err(OciError::WriteLayer)?;
    }
    let archive = b.into_inner().map_err(OciError::WriteLayer)?;
    Ok(WrittenImage {
        archive,
        manifest_digest,
        config_digest,
        layer_size: layer.len() as u64,
        layer_digest,
        diff_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Tree, ImageConfig) {
        let mut t = Tree::new();
        t.insert_file("bin/busybox", 0o755, b"ELF".to_vec());
        t.insert_symlink("bin/sh", "busybox");
        t.insert_dir("tmp", 0o1777);
        let cfg = ImageConfig {
            name: "kimg.local/busybox:latest".into(),
            entrypoint: vec!["/bin/busybox".into()],
            cmd: vec!["sh".into()],
            env: vec!["PATH=/bin".into()],
            working_dir: "/".into(),
            epoch: 1_700_000_000,
        };
        (t, cfg)
    }

    #[test]
    fn two_writes_of_the_same_tree_are_byte_identical() {
        let (t, cfg) = sample();
        let a = write_archive(&t, &cfg).unwrap();
        let b = write_archive(&t, &cfg).unwrap();
        assert_eq!(a.archive, b.archive);
        let mut other = cfg.clone();
        other.cmd = vec!["httpd".into()];
        assert_ne!(
            write_archive(&t, &other).unwrap().manifest_digest,
            a.manifest_digest
        );
    }

    #[test]
    fn the_archive_reads_back_with_name_config_and_layer() {
        let (t, cfg) = sample();
        let w = write_archive(&t, &cfg).unwrap();
        let a = super::super::read_archive(&w.archive).unwrap();
        assert_eq!(a.name.as_deref(), Some("kimg.local/busybox:latest"));
        assert_eq!(a.manifest_digest, w.manifest_digest);
        assert_eq!(a.entrypoint, vec!["/bin/busybox"]);
        assert_eq!(a.cmd, vec!["sh"]);
        assert_eq!(a.layers.len(), 1);
        assert_eq!(a.layers[0].diff_id, w.diff_id);
        // The layer unpacks to the tree's entries with fixed metadata.
        let gz = &a.blobs[&a.layers[0].digest];
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(gz.as_slice()));
        let names: Vec<(String, u64)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mtime().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("bin/".to_string(), 1_700_000_000),
                ("bin/busybox".to_string(), 1_700_000_000),
                ("bin/sh".to_string(), 1_700_000_000),
                ("tmp/".to_string(), 1_700_000_000)
            ]
        );
    }

    #[test]
    fn names_split_into_repository_and_tag() {
        assert_eq!(
            split_tag("kimg.local/busybox:1.0").unwrap(),
            ("kimg.local/busybox", "1.0")
        );
        assert_eq!(
            split_tag("localhost:5000/x").unwrap(),
            ("localhost:5000/x", "latest")
        );
        assert!(split_tag("kimg.local/busybox:").is_err());
    }
}
