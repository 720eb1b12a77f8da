//! The files the kubelet prepares on the host for a pod: volumes and `/etc` files.
//!
//! Layout under the pod directory (`<root>/pods/<uid>/`): `volumes/<name>/` for emptyDir,
//! configMap and secret volumes (keys as files, `items` remapping and `defaultMode`
//! honoured, secrets 0644 by default like the real kubelet), and `etc-hosts`,
//! `resolv.conf`, `hostname`. hostPath volumes point at the host path itself
//! (created for `DirectoryOrCreate`). [`mounts_for`] maps a container's `volumeMounts`
//! onto these as bind mounts. `downwardAPI` volumes and `projected` volumes (configMap,
//! secret, downwardAPI and serviceAccountToken sources — the `kube-api-access-…` volume of
//! every pod) are directories of files as well; tokens come from [`ResolvedData::tokens`]
//! and are replaced in place (write, then rename) by [`write_token`] when refreshed.
//! Secret and projected volumes (which carry Secrets and tokens) live on a tmpfs of their
//! own, as with the real kubelet, so their contents never reach the node's disk; a kubelet
//! without the right to mount (a test run as an ordinary user) writes them to disk and says
//! so. [`release`] unmounts them before the pod directory is removed.
//! Limits: no subPath, no tmpfs-backed emptyDir, no `resourceFieldRef` items.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeFile, KeyToPath, Pod};

use super::error::KubeletError;
use super::spec::{token_key, BindMount, ResolvedData};

/// The value of a downward-API file (`fieldRef.fieldPath`), from the pod's metadata.
fn downward_value(pod: &Pod, field: &str) -> Option<String> {
    let meta = &pod.metadata;
    let pairs = |m: &Option<BTreeMap<String, String>>| {
        m.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}\n"))
            .collect::<String>()
    };
    let spec = pod.spec.as_ref();
    Some(match field {
        "metadata.name" => meta.name.clone()?,
        "metadata.namespace" => meta.namespace.clone().unwrap_or_else(|| "default".into()),
        "metadata.uid" => meta.uid.clone()?,
        "metadata.labels" => pairs(&meta.labels),
        "metadata.annotations" => pairs(&meta.annotations),
        "spec.nodeName" => spec?.node_name.clone()?,
        "spec.serviceAccountName" => spec?.service_account_name.clone()?,
        _ => return None,
    })
}

fn downward_keys(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: i32,
    files: &mut Vec<(String, Vec<u8>, i32)>,
) -> Result<(), KubeletError> {
    for it in items {
        let field = it.field_ref.as_ref().map(|f| f.field_path.as_str());
        let value = field.and_then(|f| downward_value(pod, f)).ok_or_else(|| {
            KubeletError::InvalidSpec(format!(
                "downward API file {} asks for {}, which this kubelet does not provide",
                it.path,
                field.unwrap_or("a resource field")
            ))
        })?;
        files.push((
            it.path.clone(),
            value.into_bytes(),
            it.mode.unwrap_or(default_mode),
        ));
    }
    Ok(())
}

/// Picks `items` (or every key) of `data` as files.
fn select(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: i32,
    files: &mut Vec<(String, Vec<u8>, i32)>,
) {
    match items {
        Some(items) => {
            for it in items {
                if let Some(v) = data.get(&it.key) {
                    files.push((it.path.clone(), v.clone(), it.mode.unwrap_or(default_mode)));
                }
            }
        }
        None => files.extend(
            data.iter()
                .map(|(k, v)| (k.clone(), v.clone(), default_mode)),
        ),
    }
}

/// Writes `(relative path, content, mode)` files under `dir`, each through a temporary
/// file and a rename, so a reader in a container never sees half a file.
fn write_files(dir: &Path, files: Vec<(String, Vec<u8>, i32)>) -> Result<(), KubeletError> {
    std::fs::create_dir_all(dir).map_err(KubeletError::io(dir))?;
    for (rel, content, mode) in files {
        if rel.split('/').any(|s| s == "..") || rel.starts_with('/') {
            return Err(KubeletError::InvalidSpec(format!(
                "volume item path {rel} escapes the volume"
            )));
        }
        let path = dir.join(&rel);
        let parent = path.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent).map_err(KubeletError::io(parent))?;
        crate::files::replace(&path, &content, mode as u32 & 0o777)
            .map_err(KubeletError::io(&path))?;
    }
    Ok(())
}

/// Replaces the token file `path` of projected volume `volume` in the pod directory.
pub fn write_token(
    pod_dir: &Path,
    volume: &str,
    path: &str,
    token: &str,
    mode: i32,
) -> Result<(), KubeletError> {
    let dir = pod_dir.join("volumes").join(volume);
    write_files(
        &dir,
        vec![(path.to_string(), token.as_bytes().to_vec(), mode)],
    )
}

fn write_keys(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: i32,
) -> Result<(), KubeletError> {
    let mut files = Vec::new();
    select(data, items, default_mode, &mut files);
    write_files(dir, files)
}

/// The most a secret-bearing volume's tmpfs holds (a Secret is at most 1 MiB; a projected
/// volume combines a few).
const MEMORY_VOLUME_SIZE: &str = "size=32m";

/// Mounts a tmpfs on `dir` (created if missing) unless one is there already.
fn memory_backed(dir: &Path) -> Result<(), KubeletError> {
    use nix::mount::{mount, MsFlags};
    std::fs::create_dir_all(dir).map_err(KubeletError::io(dir))?;
    if is_mount_point(dir) {
        return Ok(());
    }
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let options = format!("mode=0755,{MEMORY_VOLUME_SIZE}");
    match mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        flags,
        Some(options.as_str()),
    ) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            tracing::warn!(dir = %dir.display(), "cannot mount a tmpfs (not root): secret files go to disk");
            Ok(())
        }
        Err(e) => Err(KubeletError::Io {
            path: dir.to_owned(),
            source: e.into(),
        }),
    }
}

/// Whether `dir` is the root of a mount (its device differs from its parent's).
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(me), Some(Ok(parent))) = (std::fs::metadata(dir), dir.parent().map(std::fs::metadata))
    else {
        return false;
    };
    me.dev() != parent.dev()
}

/// Unmounts the pod's memory-backed volumes, so the pod directory can be removed.
pub fn release(pod_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(pod_dir.join("volumes")) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if is_mount_point(&path) {
            if let Err(err) = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(dir = %path.display(), error = %err, "cannot unmount a pod volume");
            }
        }
    }
}

/// Creates every volume of the pod; returns the host path of each by volume name.
pub fn prepare(
    pod: &Pod,
    pod_dir: &Path,
    data: &ResolvedData,
) -> Result<BTreeMap<String, PathBuf>, KubeletError> {
    let mut out = BTreeMap::new();
    let vols = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    for v in vols.into_iter().flatten() {
        // The apiserver refuses such names; a pod stored before it did must not reach
        // outside its directory (`/etc` joined to a path is `/etc`).
        if !crate::cluster::is_dns_label(&v.name) {
            return Err(KubeletError::InvalidSpec(format!(
                "volume name {:?} is not an RFC 1123 label",
                v.name
            )));
        }
        let dir = pod_dir.join("volumes").join(&v.name);
        if v.empty_dir.is_some() {
            std::fs::create_dir_all(&dir).map_err(KubeletError::io(&dir))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                .map_err(KubeletError::io(&dir))?;
        } else if let Some(cm) = &v.config_map {
            let src = match data.config_map_bytes(&cm.name) {
                Some(m) => m,
                None if cm.optional == Some(true) => BTreeMap::new(),
                None => {
                    return Err(KubeletError::InvalidSpec(format!(
                        "configmap {} is not available",
                        cm.name
                    )))
                }
            };
            write_keys(
                &dir,
                &src,
                cm.items.as_ref(),
                cm.default_mode.unwrap_or(0o644),
            )?;
        } else if let Some(s) = &v.secret {
            memory_backed(&dir)?;
            let name = s.secret_name.clone().unwrap_or_default();
            let src = match data.secrets.get(&name) {
                Some(m) => m.clone(),
                None if s.optional == Some(true) => BTreeMap::new(),
                None => {
                    return Err(KubeletError::InvalidSpec(format!(
                        "secret {name} is not available"
                    )))
                }
            };
            write_keys(
                &dir,
                &src,
                s.items.as_ref(),
                s.default_mode.unwrap_or(0o644),
            )?;
        } else if let Some(d) = &v.downward_api {
            let mut files = Vec::new();
            let mode = d.default_mode.unwrap_or(0o644);
            downward_keys(
                pod,
                d.items.as_deref().unwrap_or_default(),
                mode,
                &mut files,
            )?;
            write_files(&dir, files)?;
        } else if let Some(p) = &v.projected {
            memory_backed(&dir)?;
            write_files(&dir, projected_files(pod, &v.name, p, data)?)?;
        } else if let Some(h) = &v.host_path {
            let path = PathBuf::from(&h.path);
            if h.type_.as_deref() == Some("DirectoryOrCreate") {
                std::fs::create_dir_all(&path).map_err(KubeletError::io(&path))?;
            }
            out.insert(v.name.clone(), path);
            continue;
        } else {
            return Err(KubeletError::InvalidSpec(format!(
                "volume {} has a type this kubelet does not support",
                v.name
            )));
        }
        out.insert(v.name.clone(), dir);
    }
    Ok(out)
}

/// The files of a projected volume, source by source.
fn projected_files(
    pod: &Pod,
    volume: &str,
    p: &k8s_openapi::api::core::v1::ProjectedVolumeSource,
    data: &ResolvedData,
) -> Result<Vec<(String, Vec<u8>, i32)>, KubeletError> {
    let mode = p.default_mode.unwrap_or(0o644);
    let mut files = Vec::new();
    let missing = |what: String| KubeletError::InvalidSpec(format!("{what} is not available"));
    for src in p.sources.iter().flatten() {
        if let Some(cm) = &src.config_map {
            match data.config_map_bytes(&cm.name) {
                Some(m) => select(&m, cm.items.as_ref(), mode, &mut files),
                None if cm.optional == Some(true) => {}
                None => return Err(missing(format!("configmap {}", cm.name))),
            }
        }
        if let Some(s) = &src.secret {
            match data.secrets.get(&s.name) {
                Some(m) => select(m, s.items.as_ref(), mode, &mut files),
                None if s.optional == Some(true) => {}
                None => return Err(missing(format!("secret {}", s.name))),
            }
        }
        if let Some(d) = &src.downward_api {
            downward_keys(
                pod,
                d.items.as_deref().unwrap_or_default(),
                mode,
                &mut files,
            )?;
        }
        if let Some(t) = &src.service_account_token {
            let key = token_key(volume, &t.path);
            let token = data
                .tokens
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .cloned()
                .ok_or_else(|| missing(format!("the service-account token of volume {volume}")))?;
            files.push((t.path.clone(), token.into_bytes(), mode));
        }
    }
    Ok(files)
}

/// Writes `etc-hosts`, `resolv.conf` and `hostname` for the pod.
pub fn write_etc(
    pod_dir: &Path,
    hostname: &str,
    pod_ip: &str,
    resolv_conf: &str,
) -> Result<(), KubeletError> {
    std::fs::create_dir_all(pod_dir).map_err(KubeletError::io(pod_dir))?;
    let files = [
        (
            "etc-hosts",
            format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{pod_ip}\t{hostname}\n"),
        ),
        ("resolv.conf", resolv_conf.to_string()),
        ("hostname", format!("{hostname}\n")),
    ];
    for (name, content) in files {
        let p = pod_dir.join(name);
        std::fs::write(&p, content).map_err(KubeletError::io(&p))?;
    }
    Ok(())
}

/// The bind mounts of one container: the `/etc` files, then its `volumeMounts`.
pub fn mounts_for(
    c: &Container,
    pod: &Pod,
    pod_dir: &Path,
    volumes: &BTreeMap<String, PathBuf>,
) -> Result<Vec<BindMount>, KubeletError> {
    let mut out: Vec<BindMount> = [
        ("etc-hosts", "/etc/hosts"),
        ("resolv.conf", "/etc/resolv.conf"),
        ("hostname", "/etc/hostname"),
    ]
    .iter()
    .map(|(src, dst)| BindMount {
        source: pod_dir.join(src).display().to_string(),
        destination: dst.to_string(),
        read_only: false,
    })
    .collect();
    let by_name: BTreeMap<&str, _> = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .map(|v| (v.name.as_str(), v))
        .collect();
    for m in c.volume_mounts.iter().flatten() {
        let source = volumes.get(&m.name).ok_or_else(|| {
            KubeletError::InvalidSpec(format!(
                "container {} mounts unknown volume {}",
                c.name, m.name
            ))
        })?;
        let forced_ro = by_name
            .get(m.name.as_str())
            .map(|v| {
                v.config_map.is_some()
                    || v.secret.is_some()
                    || v.projected.is_some()
                    || v.downward_api.is_some()
            })
            .unwrap_or(false);
        out.push(BindMount {
            source: source.display().to_string(),
            destination: m.mount_path.clone(),
            read_only: forced_ro || m.read_only == Some(true),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapVolumeSource, EmptyDirVolumeSource, PodSpec, SecretVolumeSource, Volume,
        VolumeMount,
    };

    #[test]
    fn configmap_secret_and_emptydir_volumes_become_directories_and_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let pod = Pod {
            spec: Some(PodSpec {
                volumes: Some(vec![
                    Volume {
                        name: "cfg".into(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: "app".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    Volume {
                        name: "sec".into(),
                        secret: Some(SecretVolumeSource {
                            secret_name: Some("db".into()),
                            items: Some(vec![KeyToPath {
                                key: "pw".into(),
                                path: "sub/password".into(),
                                mode: Some(0o400),
                                ..Default::default()
                            }]),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    Volume {
                        name: "scratch".into(),
                        empty_dir: Some(EmptyDirVolumeSource::default()),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut data = ResolvedData::default();
        data.config_maps.insert(
            "app".into(),
            BTreeMap::from([("greeting".into(), "hello".into())]),
        );
        data.secrets.insert(
            "db".into(),
            BTreeMap::from([("pw".into(), b"s3cret".to_vec())]),
        );
        let vols = prepare(&pod, dir.path(), &data).unwrap();
        assert_eq!(
            std::fs::read_to_string(vols["cfg"].join("greeting")).unwrap(),
            "hello"
        );
        let pw = vols["sec"].join("sub/password");
        assert_eq!(std::fs::read(&pw).unwrap(), b"s3cret");
        assert_eq!(
            std::fs::metadata(&pw).unwrap().permissions().mode() & 0o777,
            0o400
        );
        assert!(vols["scratch"].is_dir());
        let c = Container {
            name: "c".into(),
            volume_mounts: Some(vec![
                VolumeMount {
                    name: "cfg".into(),
                    mount_path: "/etc/app".into(),
                    ..Default::default()
                },
                VolumeMount {
                    name: "scratch".into(),
                    mount_path: "/scratch".into(),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let m = mounts_for(&c, &pod, dir.path(), &vols).unwrap();
        assert_eq!(m.len(), 5);
        assert!(m[3].read_only && m[3].destination == "/etc/app");
        assert!(!m[4].read_only);
        data.secrets.clear();
        assert!(prepare(&pod, dir.path(), &data).is_err());
    }

    #[test]
    fn projected_volumes_combine_token_configmap_and_downward_files() {
        use k8s_openapi::api::core::v1::{
            ConfigMapProjection, DownwardAPIProjection, ObjectFieldSelector, ProjectedVolumeSource,
            ServiceAccountTokenProjection, VolumeProjection,
        };
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        let dir = tempfile::tempdir().unwrap();
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                volumes: Some(vec![Volume {
                    name: "kube-api-access-x".into(),
                    projected: Some(ProjectedVolumeSource {
                        default_mode: Some(0o644),
                        default_user: None,
                        sources: Some(vec![
                            VolumeProjection {
                                service_account_token: Some(ServiceAccountTokenProjection {
                                    path: "token".into(),
                                    expiration_seconds: Some(3607),
                                    audience: None,
                                    user: None,
                                }),
                                ..Default::default()
                            },
                            VolumeProjection {
                                config_map: Some(ConfigMapProjection {
                                    name: "kube-root-ca.crt".into(),
                                    items: Some(vec![KeyToPath {
                                        key: "ca.crt".into(),
                                        path: "ca.crt".into(),
                                        mode: None,
                                        ..Default::default()
                                    }]),
                                    optional: None,
                                }),
                                ..Default::default()
                            },
                            VolumeProjection {
                                downward_api: Some(DownwardAPIProjection {
                                    items: Some(vec![
                                        DownwardAPIVolumeFile {
                                            path: "namespace".into(),
                                            field_ref: Some(ObjectFieldSelector {
                                                field_path: "metadata.namespace".into(),
                                                api_version: None,
                                            }),
                                            ..Default::default()
                                        },
                                        DownwardAPIVolumeFile {
                                            path: "labels".into(),
                                            field_ref: Some(ObjectFieldSelector {
                                                field_path: "metadata.labels".into(),
                                                api_version: None,
                                            }),
                                            ..Default::default()
                                        },
                                    ]),
                                }),
                                ..Default::default()
                            },
                        ]),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let data = ResolvedData::default();
        data.tokens
            .lock()
            .unwrap()
            .insert(token_key("kube-api-access-x", "token"), "eyJ.first".into());
        // Without the CA ConfigMap the volume cannot be made.
        assert!(prepare(&pod, dir.path(), &data).is_err());
        let mut data = data;
        data.config_maps.insert(
            "kube-root-ca.crt".into(),
            BTreeMap::from([("ca.crt".into(), "-----BEGIN CERTIFICATE-----".into())]),
        );
        let vols = prepare(&pod, dir.path(), &data).unwrap();
        let v = &vols["kube-api-access-x"];
        let read = |f: &str| std::fs::read_to_string(v.join(f)).unwrap();
        assert_eq!(read("token"), "eyJ.first");
        assert_eq!(read("ca.crt"), "-----BEGIN CERTIFICATE-----");
        assert_eq!(read("namespace"), "shop");
        assert_eq!(read("labels"), "app=\"web\"\n");
        // A renewal replaces the file in place.
        write_token(
            dir.path(),
            "kube-api-access-x",
            "token",
            "eyJ.second",
            0o644,
        )
        .unwrap();
        assert_eq!(read("token"), "eyJ.second");
        let c = Container {
            name: "c".into(),
            volume_mounts: Some(vec![VolumeMount {
                name: "kube-api-access-x".into(),
                mount_path: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let m = mounts_for(&c, &pod, dir.path(), &vols).unwrap();
        assert!(m.last().unwrap().read_only);
    }
}
