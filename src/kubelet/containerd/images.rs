//! Images: content blobs written under a lease, image records, unpacking layers into
//! snapshots (Prepare → diff Apply → Commit), and reading an image's config back.

use std::collections::HashMap;

use containerd_client::services::v1 as api;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::types::Descriptor;

use super::{chain_ids, Containerd, ImageInfo};
use crate::kubelet::error::KubeletError;
use crate::oci::{self, OciArchive};

impl Containerd {
    async fn write_blob(
        &self,
        digest: &str,
        data: &[u8],
        labels: HashMap<String, String>,
        lease: &str,
    ) -> Result<(), KubeletError> {
        let info = self
            .content()
            .info(self.req(
                api::InfoRequest {
                    digest: digest.into(),
                },
                Some(lease),
            ))
            .await;
        if info.is_ok() {
            if !labels.is_empty() {
                let fields = labels.keys().map(|k| format!("labels.{k}")).collect();
                self.content()
                    .update(self.req(
                        api::UpdateRequest {
                            info: Some(api::Info {
                                digest: digest.into(),
                                labels,
                                ..Default::default()
                            }),
                            update_mask: Some(prost_types::FieldMask { paths: fields }),
                        },
                        Some(lease),
                    ))
                    .await
                    .map_err(KubeletError::containerd("content update"))?;
            }
            return Ok(());
        }
        let total = data.len() as i64;
        let r#ref = format!("kimg-import-{digest}");
        let msgs = vec![
            api::WriteContentRequest {
                action: api::WriteAction::Write as i32,
                r#ref: r#ref.clone(),
                total,
                expected: digest.into(),
                offset: 0,
                data: data.to_vec(),
                labels: HashMap::new(),
            },
            api::WriteContentRequest {
                action: api::WriteAction::Commit as i32,
                r#ref,
                total,
                expected: digest.into(),
                offset: total,
                data: Vec::new(),
                labels,
            },
        ];
        let mut stream = self
            .content()
            .write(self.req(futures::stream::iter(msgs), Some(lease)))
            .await
            .map_err(KubeletError::containerd("content write"))?
            .into_inner();
        while stream
            .message()
            .await
            .map_err(KubeletError::containerd("content write"))?
            .is_some()
        {}
        Ok(())
    }

    async fn read_blob(&self, digest: &str) -> Result<Vec<u8>, KubeletError> {
        let mut stream = self
            .content()
            .read(self.req(
                api::ReadContentRequest {
                    digest: digest.into(),
                    offset: 0,
                    size: 0,
                },
                None,
            ))
            .await
            .map_err(KubeletError::containerd("content read"))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(KubeletError::containerd("content read"))?
        {
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }

    /// Imports an OCI archive: blobs, the image record, and its unpacked snapshots.
    /// Importing the same archive again is a cheap no-op apart from the blob checks.
    pub async fn import(
        &self,
        archive: &[u8],
        name: Option<&str>,
    ) -> Result<ImageInfo, KubeletError> {
        let parsed = oci::read_archive(archive)?;
        self.import_image(&parsed, name).await
    }

    /// Imports an image already parsed (an archive, or a registry pull): blobs, the image
    /// record, and its unpacked snapshots.
    pub async fn import_image(
        &self,
        parsed: &OciArchive,
        name: Option<&str>,
    ) -> Result<ImageInfo, KubeletError> {
        let name = name
            .map(String::from)
            .or_else(|| parsed.name.clone())
            .ok_or_else(|| KubeletError::BadImage {
                name: "<unnamed>".into(),
                what: "name (no io.containerd.image.name annotation; pass one)".into(),
            })?;
        let lease_id = format!("kimg-import-{}", std::process::id());
        let mut leases = api::leases_client::LeasesClient::new(self.channel.clone());
        leases
            .create(self.req(
                api::CreateRequest {
                    id: lease_id.clone(),
                    labels: HashMap::from([(
                        "containerd.io/gc.expire".to_string(),
                        "2100-01-01T00:00:00Z".to_string(),
                    )]),
                },
                None,
            ))
            .await
            .or_else(|s| {
                if s.code() == tonic::Code::AlreadyExists {
                    Ok(tonic::Response::new(api::CreateResponse::default()))
                } else {
                    Err(s)
                }
            })
            .map_err(KubeletError::containerd("lease create"))?;
        let result = self.import_leased(parsed, &name, &lease_id).await;
        let _ = leases
            .delete(self.req(
                api::DeleteRequest {
                    id: lease_id,
                    sync: false,
                },
                None,
            ))
            .await;
        result
    }

    async fn import_leased(
        &self,
        a: &OciArchive,
        name: &str,
        lease: &str,
    ) -> Result<ImageInfo, KubeletError> {
        let diff_ids: Vec<String> = a.layers.iter().map(|l| l.diff_id.clone()).collect();
        let chains = chain_ids(&diff_ids);
        let top = chains
            .last()
            .cloned()
            .ok_or_else(|| KubeletError::BadImage {
                name: name.into(),
                what: "layer list (empty)".into(),
            })?;
        for l in &a.layers {
            let labels =
                HashMap::from([("containerd.io/uncompressed".to_string(), l.diff_id.clone())]);
            self.write_blob(&l.digest, &a.blobs[&l.digest], labels, lease)
                .await?;
        }
        let config_labels = HashMap::from([(
            format!("containerd.io/gc.ref.snapshot.{}", self.snapshotter),
            top.clone(),
        )]);
        self.write_blob(
            &a.config_digest,
            &a.blobs[&a.config_digest],
            config_labels,
            lease,
        )
        .await?;
        let mut manifest_labels = HashMap::from([(
            "containerd.io/gc.ref.content.config".to_string(),
            a.config_digest.clone(),
        )]);
        for (i, l) in a.layers.iter().enumerate() {
            manifest_labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                l.digest.clone(),
            );
        }
        self.write_blob(
            &a.manifest_digest,
            &a.blobs[&a.manifest_digest],
            manifest_labels,
            lease,
        )
        .await?;
        self.unpack(a, &chains, lease).await?;
        let image = api::Image {
            name: name.into(),
            labels: HashMap::new(),
            target: Some(Descriptor {
                media_type: a.manifest_media_type.clone(),
                digest: a.manifest_digest.clone(),
                size: a.blobs[&a.manifest_digest].len() as i64,
                annotations: HashMap::new(),
            }),
            created_at: None,
            updated_at: None,
        };
        let mut images = api::images_client::ImagesClient::new(self.channel.clone());
        let created = images
            .create(self.req(
                api::CreateImageRequest {
                    image: Some(image.clone()),
                    source_date_epoch: None,
                },
                Some(lease),
            ))
            .await;
        match created {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                images
                    .update(self.req(
                        api::UpdateImageRequest {
                            image: Some(image),
                            update_mask: None,
                            source_date_epoch: None,
                        },
                        Some(lease),
                    ))
                    .await
                    .map_err(KubeletError::containerd("image update"))?;
            }
            Err(s) => return Err(KubeletError::containerd("image create")(s)),
        }
        Ok(ImageInfo {
            name: name.into(),
            chain_id: top,
            entrypoint: a.entrypoint.clone(),
            cmd: a.cmd.clone(),
            env: a.env.clone(),
            working_dir: a.working_dir.clone(),
            user: a.user.clone(),
        })
    }

    async fn unpack(
        &self,
        a: &OciArchive,
        chains: &[String],
        lease: &str,
    ) -> Result<(), KubeletError> {
        let mut parent = String::new();
        for (layer, chain) in a.layers.iter().zip(chains) {
            let exists = self
                .snapshots()
                .stat(self.req(
                    snap::StatSnapshotRequest {
                        snapshotter: self.snapshotter.clone(),
                        key: chain.clone(),
                    },
                    Some(lease),
                ))
                .await
                .is_ok();
            if !exists {
                let key = format!("kimg-extract-{}-{chain}", std::process::id());
                let mounts = self
                    .snapshots()
                    .prepare(self.req(
                        snap::PrepareSnapshotRequest {
                            snapshotter: self.snapshotter.clone(),
                            key: key.clone(),
                            parent: parent.clone(),
                            labels: HashMap::new(),
                        },
                        Some(lease),
                    ))
                    .await
                    .map_err(KubeletError::containerd("snapshot prepare"))?
                    .into_inner()
                    .mounts;
                api::diff_client::DiffClient::new(self.channel.clone())
                    .apply(self.req(
                        api::ApplyRequest {
                            diff: Some(Descriptor {
                                media_type: layer.media_type.clone(),
                                digest: layer.digest.clone(),
                                size: layer.size as i64,
                                annotations: HashMap::new(),
                            }),
                            mounts,
                            payloads: HashMap::new(),
                            sync_fs: false,
                        },
                        Some(lease),
                    ))
                    .await
                    .map_err(KubeletError::containerd("diff apply"))?;
                self.snapshots()
                    .commit(self.req(
                        snap::CommitSnapshotRequest {
                            snapshotter: self.snapshotter.clone(),
                            name: chain.clone(),
                            key,
                            labels: HashMap::new(),
                        },
                        Some(lease),
                    ))
                    .await
                    .map_err(KubeletError::containerd("snapshot commit"))?;
            }
            parent = chain.clone();
        }
        Ok(())
    }

    /// Looks an image up by name and reads its config.
    pub async fn image(&self, name: &str) -> Result<ImageInfo, KubeletError> {
        let got = api::images_client::ImagesClient::new(self.channel.clone())
            .get(self.req(api::GetImageRequest { name: name.into() }, None))
            .await;
        let image = match got {
            Ok(r) => r.into_inner().image,
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => return Err(KubeletError::containerd("image get")(s)),
        }
        .ok_or_else(|| KubeletError::ImageNotFound(name.into()))?;
        let target = image
            .target
            .ok_or_else(|| KubeletError::ImageNotFound(name.into()))?;
        let bad = |what: &str| KubeletError::BadImage {
            name: name.into(),
            what: what.into(),
        };
        let manifest: serde_json::Value =
            serde_json::from_slice(&self.read_blob(&target.digest).await?)
                .map_err(|_| bad("manifest"))?;
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .ok_or_else(|| bad("manifest"))?;
        let config: serde_json::Value =
            serde_json::from_slice(&self.read_blob(config_digest).await?)
                .map_err(|_| bad("config"))?;
        let strings = oci::archive::strings;
        let chain_id = chain_ids(&strings(&config["rootfs"]["diff_ids"]))
            .pop()
            .ok_or_else(|| bad("rootfs"))?;
        let c = &config["config"];
        Ok(ImageInfo {
            name: name.into(),
            chain_id,
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
            env: strings(&c["Env"]),
            working_dir: c["WorkingDir"].as_str().unwrap_or_default().into(),
            user: c["User"].as_str().unwrap_or_default().into(),
        })
    }
}
