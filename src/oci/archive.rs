//! Reads an OCI image-layout tarball into memory: the named manifest, its config and
//! layers, with every blob checked against its digest.
//!
//! Follows one level of nested index (as `docker save`/`buildx` OCI exports have) and
//! takes the first `linux/amd64` (or platform-less) manifest. [`from_blobs`] is the same
//! resolution over blobs fetched from a registry ([`super::registry`]). Limits: the whole archive is
//! held in memory, fine for the small air-gapped workload images kimg bakes.

use std::collections::BTreeMap;
use std::io::Read;

use serde_json::Value;

use super::{
    digest_of, OciError, ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, MEDIA_DOCKER_LIST,
    MEDIA_INDEX,
};

/// One layer of the image: compressed blob descriptor and uncompressed diff id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub diff_id: String,
}

/// A parsed archive.
#[derive(Clone, Debug)]
pub struct OciArchive {
    /// `io.containerd.image.name`, else the ref name annotation, if any.
    pub name: Option<String>,
    pub manifest_media_type: String,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layers: Vec<Layer>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    /// Every blob by digest (`sha256:…`).
    pub blobs: BTreeMap<String, Vec<u8>>,
}

fn parse(what: &str, data: &[u8]) -> Result<Value, OciError> {
    serde_json::from_slice(data).map_err(|source| OciError::BadJson {
        what: what.to_string(),
        source,
    })
}

/// The strings of a JSON array (other entries skipped; not an array: none).
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a media type is an image index (OCI) or manifest list (Docker).
pub fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_INDEX || media_type == MEDIA_DOCKER_LIST
}

/// The `linux/amd64` (or platform-less) manifest descriptor of an index.
pub fn pick_manifest(index: &Value) -> Option<Value> {
    index["manifests"]
        .as_array()?
        .iter()
        .find(|d| platform_ok(d))
        .cloned()
}

fn platform_ok(desc: &Value) -> bool {
    match desc.get("platform") {
        None => true,
        Some(p) => p["os"] == "linux" && p["architecture"] == "amd64",
    }
}

/// Parses an archive held in memory.
pub fn read_archive(bytes: &[u8]) -> Result<OciArchive, OciError> {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut ar = tar::Archive::new(bytes);
    for entry in ar.entries().map_err(OciError::ReadArchive)? {
        let mut entry = entry.map_err(OciError::ReadArchive)?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = crate::build::tree::normalize(
            &entry
                .path()
                .map_err(OciError::ReadArchive)?
                .to_string_lossy(),
        );
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(OciError::ReadArchive)?;
        files.insert(path, data);
    }
    let mut blobs = BTreeMap::new();
    for (path, data) in &files {
        if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            let digest = format!("sha256:{hex}");
            if digest_of(data) != digest {
                return Err(OciError::DigestMismatch { digest });
            }
            blobs.insert(digest, data.clone());
        }
    }
    let index = parse(
        "index.json",
        files
            .get("index.json")
            .ok_or_else(|| OciError::Missing("index.json".into()))?,
    )?;
    let desc =
        pick_manifest(&index).ok_or_else(|| OciError::Missing("manifest in index.json".into()))?;
    let annotations = desc["annotations"].clone();
    let name = annotations[ANNOTATION_CONTAINERD_NAME]
        .as_str()
        .or_else(|| annotations[ANNOTATION_REF_NAME].as_str())
        .map(String::from);
    from_blobs(name, &desc, blobs)
}

/// The image a descriptor (manifest, or an index of manifests) names, from blobs already
/// checked against their digests: the manifest, its config and layers must all be there.
pub fn from_blobs(
    name: Option<String>,
    desc: &Value,
    blobs: BTreeMap<String, Vec<u8>>,
) -> Result<OciArchive, OciError> {
    let blob = |digest: &str| {
        blobs
            .get(digest)
            .ok_or_else(|| OciError::Missing(format!("blob {digest}")))
    };
    let mut desc = desc.clone();
    if is_index(desc["mediaType"].as_str().unwrap_or_default()) {
        let digest = desc["digest"].as_str().unwrap_or_default().to_string();
        let nested = parse("nested index", blob(&digest)?)?;
        desc = pick_manifest(&nested)
            .ok_or_else(|| OciError::Missing("linux/amd64 manifest in the index".into()))?;
    }
    let manifest_digest = desc["digest"]
        .as_str()
        .ok_or_else(|| OciError::Missing("manifest digest".into()))?
        .to_string();
    let manifest_media_type = desc["mediaType"]
        .as_str()
        .unwrap_or(super::MEDIA_MANIFEST)
        .to_string();
    let manifest = parse("manifest", blob(&manifest_digest)?)?;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .ok_or_else(|| OciError::Missing("config descriptor".into()))?
        .to_string();
    let config = parse("image config", blob(&config_digest)?)?;
    let diff_ids = strings(&config["rootfs"]["diff_ids"]);
    let mut layers = Vec::new();
    for (i, l) in manifest["layers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let media_type = l["mediaType"].as_str().unwrap_or_default().to_string();
        if !media_type.contains("tar") {
            return Err(OciError::UnsupportedMediaType(media_type));
        }
        let digest = l["digest"].as_str().unwrap_or_default().to_string();
        blob(&digest)?;
        layers.push(Layer {
            media_type,
            size: l["size"].as_u64().unwrap_or_default(),
            diff_id: diff_ids
                .get(i)
                .cloned()
                .ok_or_else(|| OciError::Missing(format!("diff id of layer {i}")))?,
            digest,
        });
    }
    let c = &config["config"];
    Ok(OciArchive {
        name,
        manifest_media_type,
        manifest_digest,
        config_digest,
        layers,
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        env: strings(&c["Env"]),
        working_dir: c["WorkingDir"].as_str().unwrap_or_default().to_string(),
        user: c["User"].as_str().unwrap_or_default().to_string(),
        blobs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tampered_blob_is_refused() {
        let mut t = crate::build::tree::Tree::new();
        t.insert_file("a", 0o644, b"x".to_vec());
        let cfg = crate::oci::ImageConfig {
            name: "kimg.local/a:latest".into(),
            entrypoint: vec![],
            cmd: vec!["/a".into()],
            env: vec![],
            working_dir: "/".into(),
            epoch: 0,
        };
        let w = crate::oci::write_archive(&t, &cfg).unwrap();
        let mut bytes = w.archive.clone();
        // Flip one byte inside the oci-layout-free blob region: find the config JSON.
        let pos = bytes.windows(8).position(|w| w == b"\"layers\"").unwrap();
        bytes[pos + 1] = b'L';
        assert!(matches!(
            read_archive(&bytes),
            Err(OciError::DigestMismatch { .. })
        ));
    }
}
