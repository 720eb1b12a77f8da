//! The OCI runtime spec (`config.json`) the kubelet hands containerd for each container.
//!
//! Built from the pod, the container, the image config and what the kubelet prepared:
//! - process args: Kubernetes `command`/`args` over the image's Entrypoint/Cmd (a
//!   `command` replaces both; `args` alone replace Cmd);
//! - env: image env, then the container's `envFrom` and `env` (later wins), with
//!   ConfigMap/Secret references and the downward-API basics already resolved;
//! - cwd (`workingDir`, else the image's, else `/`), uid/gid (`runAsUser`/`runAsGroup`,
//!   else a numeric image `User`, else root);
//! - mounts: proc, sysfs (ro), /dev tmpfs with pts/shm/mqueue, and the kubelet's bind
//!   mounts (`/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`, volumes);
//! - namespaces: a private pid and mount namespace per container; network, IPC and UTS
//!   joined by path so the containers of a pod share them;
//! - cgroup path and limits: cpu limit → CFS quota over a 100 ms period, cpu request →
//!   shares, memory limit → bytes.
//!
//! Limits: no seccomp/AppArmor profile, default Docker capability set.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};

use super::containerd::ImageInfo;
use super::error::KubeletError;
use super::netns::PodNamespaces;

/// A directory or file the kubelet bind-mounts into the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    pub source: String,
    pub destination: String,
    pub read_only: bool,
}

/// The capabilities container runtimes grant by default.
const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The argv of a container: Kubernetes command/args over the image's Entrypoint/Cmd.
pub fn process_args(c: &Container, image: &ImageInfo) -> Result<Vec<String>, KubeletError> {
    let command = c.command.clone().unwrap_or_default();
    let args = c.args.clone().unwrap_or_default();
    let argv = if !command.is_empty() {
        command.into_iter().chain(args).collect::<Vec<_>>()
    } else if !args.is_empty() {
        image.entrypoint.iter().cloned().chain(args).collect()
    } else {
        image
            .entrypoint
            .iter()
            .chain(image.cmd.iter())
            .cloned()
            .collect()
    };
    if argv.is_empty() {
        return Err(KubeletError::InvalidSpec(format!(
            "container {} has no command and its image {} no Entrypoint/Cmd",
            c.name, image.name
        )));
    }
    Ok(argv)
}

/// Values of the downward API that the kubelet knows.
#[derive(Clone, Debug, Default)]
pub struct Downward {
    pub pod_name: String,
    pub namespace: String,
    pub uid: String,
    pub node_name: String,
    pub pod_ip: String,
    pub host_ip: String,
    pub service_account: String,
}

impl Downward {
    fn field(&self, path: &str) -> Option<String> {
        Some(match path {
            "metadata.name" => self.pod_name.clone(),
            "metadata.namespace" => self.namespace.clone(),
            "metadata.uid" => self.uid.clone(),
            "spec.nodeName" => self.node_name.clone(),
            "spec.serviceAccountName" => self.service_account.clone(),
            "status.podIP" | "status.podIPs" => self.pod_ip.clone(),
            "status.hostIP" | "status.hostIPs" => self.host_ip.clone(),
            _ => return None,
        })
    }
}

/// ConfigMap and Secret contents and service-account tokens the caller resolved from the API.
#[derive(Clone, Debug, Default)]
pub struct ResolvedData {
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// Service-account tokens of projected volumes by [`token_key`]; shared with the
    /// refresher, so a container restarted late gets the current token, not the first.
    pub tokens: std::sync::Arc<std::sync::Mutex<BTreeMap<String, String>>>,
}

/// The key of a projected volume's token source in [`ResolvedData::tokens`].
pub fn token_key(volume: &str, path: &str) -> String {
    format!("{volume}/{path}")
}

impl ResolvedData {
    /// ConfigMap `name`'s data as file contents.
    pub fn config_map_bytes(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let m = self.config_maps.get(name)?;
        Some(
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
                .collect(),
        )
    }
    fn config_map(&self, name: &str, key: &str) -> Option<String> {
        self.config_maps.get(name)?.get(key).cloned()
    }
    fn secret(&self, name: &str, key: &str) -> Option<String> {
        self.secrets
            .get(name)?
            .get(key)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// The final `KEY=value` list: image env, then envFrom, then env (later entries win).
pub fn resolve_env(
    c: &Container,
    image: &ImageInfo,
    data: &ResolvedData,
    downward: &Downward,
) -> Result<Vec<String>, KubeletError> {
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    let mut set = |k: String, v: String| {
        if !values.contains_key(&k) {
            order.push(k.clone());
        }
        values.insert(k, v);
    };
    for kv in &image.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        set(k.into(), v.into());
    }
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match data.config_maps.get(&r.name) {
                Some(m) => m
                    .iter()
                    .for_each(|(k, v)| set(format!("{prefix}{k}"), v.clone())),
                None if r.optional == Some(true) => {}
                None => return Err(missing("configmap", &r.name, "")),
            }
        }
        if let Some(r) = &from.secret_ref {
            match data.secrets.get(&r.name) {
                Some(m) => m.iter().for_each(|(k, v)| {
                    set(
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                }),
                None if r.optional == Some(true) => {}
                None => return Err(missing("secret", &r.name, "")),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = match &e.value_from {
            None => e.value.clone().unwrap_or_default(),
            Some(src) => {
                if let Some(r) = &src.config_map_key_ref {
                    match data.config_map(&r.name, &r.key) {
                        Some(v) => v,
                        None if r.optional == Some(true) => continue,
                        None => return Err(missing("configmap", &r.name, &r.key)),
                    }
                } else if let Some(r) = &src.secret_key_ref {
                    match data.secret(&r.name, &r.key) {
                        Some(v) => v,
                        None if r.optional == Some(true) => continue,
                        None => return Err(missing("secret", &r.name, &r.key)),
                    }
                } else if let Some(f) = &src.field_ref {
                    downward.field(&f.field_path).ok_or_else(|| {
                        KubeletError::InvalidSpec(format!("unsupported fieldRef {}", f.field_path))
                    })?
                } else {
                    String::new()
                }
            }
        };
        set(e.name.clone(), value);
    }
    Ok(order
        .into_iter()
        .map(|k| format!("{k}={}", values[&k]))
        .collect())
}

fn missing(kind: &str, name: &str, key: &str) -> KubeletError {
    KubeletError::InvalidSpec(format!("{kind} {name} {key} is not available").replace("  ", " "))
}

fn resources(c: &Container) -> Value {
    let get = |which: Option<
        &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
               key: &str| {
        which
            .and_then(|m| m.get(key))
            .and_then(|q| crate::client::quantity::parse_scaled(&q.0, 1000))
            .map(i128::from)
    };
    let r = c.resources.as_ref();
    let limits = r.and_then(|r| r.limits.as_ref());
    let requests = r.and_then(|r| r.requests.as_ref());
    let mut cpu = serde_json::Map::new();
    if let Some(milli) = get(limits, "cpu") {
        cpu.insert("quota".into(), json!((milli * 100).max(1000) as i64));
        cpu.insert("period".into(), json!(100_000u64));
    }
    if let Some(milli) = get(requests, "cpu").or(get(limits, "cpu")) {
        cpu.insert(
            "shares".into(),
            json!(((milli * 1024) / 1000).max(2) as u64),
        );
    }
    let mut out = serde_json::Map::new();
    if !cpu.is_empty() {
        out.insert("cpu".into(), Value::Object(cpu));
    }
    if let Some(milli) = get(limits, "memory") {
        out.insert("memory".into(), json!({ "limit": (milli / 1000) as i64 }));
    }
    out.insert(
        "devices".into(),
        json!([{ "allow": false, "access": "rwm" }]),
    );
    Value::Object(out)
}

/// uid and gid: securityContext (container over pod), else a numeric image User, else 0.
pub fn user_of(pod: &Pod, c: &Container, image: &ImageInfo) -> (i64, i64) {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let csc = c.security_context.as_ref();
    let (img_uid, img_gid) = match image.user.split_once(':') {
        Some((u, g)) => (u.parse().ok(), g.parse().ok()),
        None => (image.user.parse().ok(), None),
    };
    let uid = csc
        .and_then(|s| s.run_as_user)
        .or(psc.and_then(|s| s.run_as_user))
        .or(img_uid)
        .unwrap_or(0);
    let gid = csc
        .and_then(|s| s.run_as_group)
        .or(psc.and_then(|s| s.run_as_group))
        .or(img_gid)
        .unwrap_or(0);
    (uid, gid)
}

/// An OCI `Process` object (used for the container and for exec).
pub fn process(args: &[String], env: &[String], cwd: &str, uid: i64, gid: i64) -> Value {
    json!({
        "terminal": false,
        "user": { "uid": uid, "gid": gid },
        "args": args,
        "env": env,
        "cwd": if cwd.is_empty() { "/" } else { cwd },
        "capabilities": { "bounding": CAPS, "effective": CAPS, "permitted": CAPS },
        "noNewPrivileges": false,
    })
}

/// Everything one container's spec is made from.
pub struct SpecInput<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub image: &'a ImageInfo,
    pub env: Vec<String>,
    pub mounts: Vec<BindMount>,
    pub namespaces: &'a PodNamespaces,
    pub cgroups_path: String,
}

/// The complete runtime spec.
pub fn runtime_spec(input: &SpecInput) -> Result<Value, KubeletError> {
    let c = input.container;
    let args = process_args(c, input.image)?;
    let cwd = c
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| input.image.working_dir.clone());
    let (uid, gid) = user_of(input.pod, c, input.image);
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    for m in &input.mounts {
        let mut options = vec!["rbind", "rprivate"];
        options.push(if m.read_only { "ro" } else { "rw" });
        mounts.push(json!({"destination": m.destination, "type": "bind", "source": m.source, "options": options}));
    }
    let ns = input.namespaces;
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": process(&args, &input.env, &cwd, uid, gid),
        "root": { "path": "rootfs", "readonly": false },
        "mounts": mounts,
        "linux": {
            "namespaces": [
                { "type": "pid" },
                { "type": "mount" },
                { "type": "network", "path": ns.net },
                { "type": "ipc", "path": ns.ipc },
                { "type": "uts", "path": ns.uts },
            ],
            "cgroupsPath": input.cgroups_path,
            "resources": resources(c),
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/sys/firmware"],
            "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq",
                "/proc/sys", "/proc/sysrq-trigger"],
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        EnvVar, EnvVarSource, ResourceRequirements, SecretKeySelector,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use std::path::Path;

    fn image() -> ImageInfo {
        ImageInfo {
            name: "kimg.local/busybox:latest".into(),
            chain_id: "sha256:c".into(),
            entrypoint: vec!["/bin/busybox".into()],
            cmd: vec!["sh".into()],
            env: vec!["PATH=/bin".into(), "A=image".into()],
            working_dir: "/".into(),
            user: "1000:1000".into(),
        }
    }

    fn container() -> Container {
        Container {
            name: "main".into(),
            ..Default::default()
        }
    }

    #[test]
    fn command_replaces_entrypoint_and_args_replace_only_cmd() {
        let mut c = container();
        assert_eq!(process_args(&c, &image()).unwrap(), ["/bin/busybox", "sh"]);
        c.args = Some(vec!["echo".into(), "hi".into()]);
        assert_eq!(
            process_args(&c, &image()).unwrap(),
            ["/bin/busybox", "echo", "hi"]
        );
        c.command = Some(vec!["/bin/sleep".into()]);
        assert_eq!(
            process_args(&c, &image()).unwrap(),
            ["/bin/sleep", "echo", "hi"]
        );
        let mut empty = image();
        empty.entrypoint.clear();
        empty.cmd.clear();
        assert!(process_args(&container(), &empty).is_err());
    }

    #[test]
    fn env_overrides_the_image_and_resolves_secrets_and_fields() {
        let mut c = container();
        c.env = Some(vec![
            EnvVar {
                name: "A".into(),
                value: Some("pod".into()),
                value_from: None,
            },
            EnvVar {
                name: "PASSWORD".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: "db".into(),
                        key: "pw".into(),
                        optional: None,
                    }),
                    ..Default::default()
                }),
            },
            EnvVar {
                name: "IP".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                        field_path: "status.podIP".into(),
                        api_version: None,
                    }),
                    ..Default::default()
                }),
            },
        ]);
        let mut data = ResolvedData::default();
        data.secrets.insert(
            "db".into(),
            BTreeMap::from([("pw".into(), b"s3cret".to_vec())]),
        );
        let down = Downward {
            pod_ip: "10.250.0.5".into(),
            ..Default::default()
        };
        let env = resolve_env(&c, &image(), &data, &down).unwrap();
        assert_eq!(
            env,
            ["PATH=/bin", "A=pod", "PASSWORD=s3cret", "IP=10.250.0.5"]
        );
        data.secrets.clear();
        assert!(resolve_env(&c, &image(), &data, &down).is_err());
    }

    #[test]
    fn the_spec_joins_pod_namespaces_and_carries_limits_and_mounts() {
        let mut c = container();
        c.working_dir = Some("/work".into());
        c.resources = Some(ResourceRequirements {
            limits: Some(BTreeMap::from([
                ("cpu".into(), Quantity("250m".into())),
                ("memory".into(), Quantity("64Mi".into())),
            ])),
            ..Default::default()
        });
        let pod = Pod::default();
        let img = image();
        let ns = PodNamespaces::new(
            Path::new("/run/netns"),
            Path::new("/var/lib/kimg/pods/u"),
            "u",
        );
        let spec = runtime_spec(&SpecInput {
            pod: &pod,
            container: &c,
            image: &img,
            env: vec!["A=1".into()],
            mounts: vec![BindMount {
                source: "/v/cm".into(),
                destination: "/etc/cm".into(),
                read_only: true,
            }],
            namespaces: &ns,
            cgroups_path: "/kimg/podu/main".into(),
        })
        .unwrap();
        assert_eq!(spec["process"]["cwd"], "/work");
        assert_eq!(spec["process"]["user"]["uid"], 1000);
        assert_eq!(spec["linux"]["resources"]["cpu"]["quota"], 25_000);
        assert_eq!(
            spec["linux"]["resources"]["memory"]["limit"],
            64 * 1024 * 1024
        );
        let nss = spec["linux"]["namespaces"].as_array().unwrap();
        assert!(nss.contains(&json!({"type": "network", "path": "/run/netns/u"})));
        assert!(nss.contains(&json!({"type": "uts", "path": "/var/lib/kimg/pods/u/ns/uts"})));
        assert!(nss.contains(&json!({"type": "pid"})));
        let m = spec["mounts"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(m["destination"], "/etc/cm");
        assert!(m["options"].as_array().unwrap().contains(&json!("ro")));
        assert_eq!(spec["linux"]["cgroupsPath"], "/kimg/podu/main");
    }
}
