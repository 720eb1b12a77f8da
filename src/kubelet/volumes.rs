//! The files the kubelet prepares on the host for a pod: volumes and `/etc` files.
//!
//! Layout under the pod directory (`<root>/pods/<uid>/`): `volumes/<name>/` for emptyDir,
//! configMap and secret volumes (keys as files, `items` remapping and `defaultMode`
//! honoured, secrets 0644 by default like the real kubelet), and `etc-hosts`,
//! `resolv.conf`, `hostname`. hostPath volumes point at the host path itself
//! (created for `DirectoryOrCreate`). [`mounts_for`] maps a container's `volumeMounts`
//! onto these as bind mounts. Limits: no subPath, no tmpfs-backed emptyDir, no projected
//! volumes other than plain configMap/secret.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, KeyToPath, Pod};

use super::error::KubeletError;
use super::spec::{BindMount, ResolvedData};

fn write_keys(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: i32,
) -> Result<(), KubeletError> {
    std::fs::create_dir_all(dir).map_err(KubeletError::io(dir))?;
    let mut files: Vec<(String, &Vec<u8>, i32)> = Vec::new();
    match items {
        Some(items) => {
            for it in items {
                if let Some(v) = data.get(&it.key) {
                    files.push((it.path.clone(), v, it.mode.unwrap_or(default_mode)));
                }
            }
        }
        None => files.extend(data.iter().map(|(k, v)| (k.clone(), v, default_mode))),
    }
    for (rel, content, mode) in files {
        if rel.split('/').any(|s| s == "..") || rel.starts_with('/') {
            return Err(KubeletError::InvalidSpec(format!(
                "volume item path {rel} escapes the volume"
            )));
        }
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(KubeletError::io(parent))?;
        }
        std::fs::write(&path, content).map_err(KubeletError::io(&path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode as u32 & 0o777))
            .map_err(KubeletError::io(&path))?;
    }
    Ok(())
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
        let dir = pod_dir.join("volumes").join(&v.name);
        if v.empty_dir.is_some() {
            std::fs::create_dir_all(&dir).map_err(KubeletError::io(&dir))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                .map_err(KubeletError::io(&dir))?;
        } else if let Some(cm) = &v.config_map {
            let src = match data.config_maps.get(&cm.name) {
                Some(m) => m
                    .iter()
                    .map(|(k, s)| (k.clone(), s.as_bytes().to_vec()))
                    .collect(),
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
            .map(|v| v.config_map.is_some() || v.secret.is_some())
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
}
