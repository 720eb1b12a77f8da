//! The pod sync loop: the API's pods bound to this node ↔ the pods [`Kubelet`] runs.
//!
//! How: a kube-rs watcher on pods with `fieldSelector=spec.nodeName=<node>` (it re-lists on
//! 410 Gone). A new pod gets the ConfigMaps and Secrets it references (volumes, `env`,
//! `envFrom`) resolved into [`ResolvedData`], and a bound token (TokenRequest, bound to the
//! pod) for each `serviceAccountToken` source of its projected volumes; until every
//! non-optional volume source is available (at most [`VOLUME_WAIT`]) it waits, then goes to
//! [`Kubelet::run_pod`]. Tokens are renewed at 80 % of their lifetime and rewritten in
//! place while the pod runs here. A pod with a
//! `deletionTimestamp` is stopped with its `deletionGracePeriodSeconds` and removed from
//! the node ([`Kubelet::delete_pod`]), then its API object is deleted with
//! `gracePeriodSeconds=0` and a uid precondition — how a kubelet finishes a graceful
//! delete. Pods that disappear from the API (a delete event, or missing from a re-list)
//! are removed from the node as well. Whenever the kubelet reports a state change (and
//! every 250 ms, for probe results) the status of each running pod is compared with what
//! was last written and, when it changed, merge-patched through `pods/status`. After a certificate rotation the watch is restarted with the new client.
//!
//! Pods running before a kubelet restart are handed to [`Kubelet::run_pod`] like any
//! other; their workers adopt what still runs.
//!
//! Limits: referenced objects are read once, at pod start;
//! a pod the kubelet cannot start is reported `Failed` with the reason.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Pod, Secret, ServiceAccount, ServiceAccountTokenProjection,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use serde_json::{json, Value};

use super::join::ClientCell;
use super::spec::token_key;
use super::{volumes, Kubelet, ResolvedData};

/// The serviceAccountToken sources of the pod's projected volumes, by volume name.
fn token_sources(pod: &Pod) -> Vec<(String, ServiceAccountTokenProjection)> {
    let vols = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    vols.into_iter()
        .flatten()
        .flat_map(|v| {
            let sources = v.projected.iter().flat_map(|p| p.sources.iter().flatten());
            sources
                .filter_map(|s| s.service_account_token.clone())
                .map(|t| (v.name.clone(), t))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The file mode of projected volume `volume`.
fn projected_mode(pod: &Pod, volume: &str) -> i32 {
    let vols = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    vols.into_iter()
        .flatten()
        .find(|v| v.name == volume)
        .and_then(|v| v.projected.as_ref()?.default_mode)
        .unwrap_or(0o644)
}

/// What a pod's volumes need from the API but `data` lacks (non-optional ConfigMaps and
/// Secrets of volumes, service-account tokens).
fn missing(pod: &Pod, data: &ResolvedData) -> Vec<String> {
    let mut out = Vec::new();
    let vols = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    for v in vols.into_iter().flatten() {
        let mut need_cm = |name: &str, optional: Option<bool>| {
            if optional != Some(true) && !data.config_maps.contains_key(name) {
                out.push(format!("configmap {name}"));
            }
        };
        if let Some(cm) = &v.config_map {
            need_cm(&cm.name, cm.optional);
        }
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &src.config_map {
                need_cm(&cm.name, cm.optional);
            }
        }
        let mut need_secret = |name: &str, optional: Option<bool>| {
            if optional != Some(true) && !data.secrets.contains_key(name) {
                out.push(format!("secret {name}"));
            }
        };
        if let Some(s) = &v.secret {
            need_secret(s.secret_name.as_deref().unwrap_or_default(), s.optional);
        }
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(s) = &src.secret {
                need_secret(&s.name, s.optional);
            }
        }
    }
    let tokens = lock(&data.tokens);
    for (volume, t) in token_sources(pod) {
        if !tokens.contains_key(&token_key(&volume, &t.path)) {
            out.push(format!("the service-account token of volume {volume}"));
        }
    }
    out
}

/// How long a pod waits for what its volumes need (a fresh namespace's
/// `kube-root-ca.crt` and `default` ServiceAccount come a moment after it) before it is
/// reported `Failed`.
const VOLUME_WAIT: Duration = Duration::from_secs(60);

/// A pod's API identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

/// Keeps the node's pods in step with the API.
pub struct PodSync {
    kubelet: Arc<Kubelet>,
    client: ClientCell,
    node: String,
    /// uid → API identity, for every pod handed to the kubelet.
    known: Mutex<HashMap<String, PodRef>>,
    /// uid → the status last written.
    pushed: Mutex<HashMap<String, Value>>,
    /// uids being deleted.
    deleting: Mutex<HashSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Names of the ConfigMaps and Secrets a pod references.
pub fn referenced(pod: &Pod) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut cms, mut secrets) = (BTreeSet::new(), BTreeSet::new());
    let Some(spec) = &pod.spec else {
        return (cms, secrets);
    };
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            cms.insert(cm.name.clone());
        }
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.insert(s);
        }
        let sources = v.projected.iter().flat_map(|p| p.sources.iter().flatten());
        for src in sources {
            if let Some(cm) = &src.config_map {
                cms.insert(cm.name.clone());
            }
            if let Some(s) = &src.secret {
                secrets.insert(s.name.clone());
            }
        }
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in containers {
        for e in c.env_from.iter().flatten() {
            if let Some(r) = &e.config_map_ref {
                cms.insert(r.name.clone());
            }
            if let Some(r) = &e.secret_ref {
                secrets.insert(r.name.clone());
            }
        }
        for e in c.env.iter().flatten() {
            let Some(from) = &e.value_from else { continue };
            if let Some(r) = &from.config_map_key_ref {
                cms.insert(r.name.clone());
            }
            if let Some(r) = &from.secret_key_ref {
                secrets.insert(r.name.clone());
            }
        }
    }
    (cms, secrets)
}

fn pod_ref(pod: &Pod) -> PodRef {
    PodRef {
        namespace: pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: pod.metadata.name.clone().unwrap_or_default(),
    }
}

impl PodSync {
    pub fn new(kubelet: Arc<Kubelet>, client: ClientCell, node: &str) -> Arc<PodSync> {
        Arc::new(PodSync {
            kubelet,
            client,
            node: node.into(),
            known: Mutex::default(),
            pushed: Mutex::default(),
            deleting: Mutex::default(),
        })
    }

    /// The kubelet's key (uid) of pod `namespace/name`, when it runs here.
    pub fn lookup(&self, namespace: &str, name: &str) -> Option<String> {
        lock(&self.known)
            .iter()
            .find(|(_, r)| r.namespace == namespace && r.name == name)
            .map(|(uid, _)| uid.clone())
    }

    /// The kubelet this loop drives.
    pub fn kubelet(&self) -> &Arc<Kubelet> {
        &self.kubelet
    }

    /// Fetches what `data` still lacks of what the pod references (a retry asks only for
    /// the missing pieces, and never for a second token).
    async fn resolve(&self, pod: &Pod, data: &mut ResolvedData) {
        let ns = pod_ref(pod).namespace;
        let (mut cms, mut secrets) = referenced(pod);
        cms.retain(|n| !data.config_maps.contains_key(n));
        secrets.retain(|n| !data.secrets.contains_key(n));
        let cm_api: Api<ConfigMap> = Api::namespaced(self.client.get(), &ns);
        for name in cms {
            match cm_api.get(&name).await {
                Ok(cm) => {
                    data.config_maps
                        .insert(name, cm.data.unwrap_or_default().into_iter().collect());
                }
                Err(e) => tracing::debug!(configmap = %name, error = %e, "not available"),
            }
        }
        let secret_api: Api<Secret> = Api::namespaced(self.client.get(), &ns);
        for name in secrets {
            match secret_api.get(&name).await {
                Ok(s) => {
                    let mut m: std::collections::BTreeMap<String, Vec<u8>> = s
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    for (k, v) in s.string_data.unwrap_or_default() {
                        m.insert(k, v.into_bytes());
                    }
                    data.secrets.insert(name, m);
                }
                Err(e) => tracing::debug!(secret = %name, error = %e, "not available"),
            }
        }
        for (volume, t) in token_sources(pod) {
            let key = token_key(&volume, &t.path);
            if lock(&data.tokens).contains_key(&key) {
                continue;
            }
            match self.request_token(pod, &t).await {
                Ok((token, _)) => {
                    lock(&data.tokens).insert(key, token);
                }
                Err(e) => tracing::debug!(%volume, error = %e, "no service-account token yet"),
            }
        }
    }

    /// A bound token for the pod's service account (TokenRequest); with its lifetime.
    async fn request_token(
        &self,
        pod: &Pod,
        t: &ServiceAccountTokenProjection,
    ) -> Result<(String, Duration), kube::Error> {
        let r = pod_ref(pod);
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(t.audience.clone().into_iter().collect()),
                expiration_seconds: t.expiration_seconds.or(Some(3600)),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(r.name.clone()),
                    uid: pod.metadata.uid.clone(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let api: Api<ServiceAccount> = Api::namespaced(self.client.get(), &r.namespace);
        let got: TokenRequest = api
            .create_subresource("token", &sa, &PostParams::default(), &request)
            .await?;
        let ttl = got
            .spec
            .and_then(|s| s.expiration_seconds)
            .unwrap_or(3600)
            .max(600) as u64;
        let token = got.status.and_then(|s| s.token).unwrap_or_default();
        Ok((token, Duration::from_secs(ttl)))
    }

    /// Renews the pod's tokens at 80 % of their lifetime (as the kubelet does), for as
    /// long as the pod runs here, rewriting the files in its volumes.
    async fn refresh_tokens(self: Arc<Self>, uid: String, pod: Pod, data: ResolvedData) {
        let sources = token_sources(&pod);
        if sources.is_empty() {
            return;
        }
        let pod_dir = self.kubelet.pod_dir(&uid);
        let mut wait = Duration::from_secs(
            (sources[0].1.expiration_seconds.unwrap_or(3600).max(600) as u64) * 8 / 10,
        );
        loop {
            tokio::time::sleep(wait).await;
            if !lock(&self.known).contains_key(&uid) {
                return;
            }
            for (volume, t) in &sources {
                match self.request_token(&pod, t).await {
                    Ok((token, ttl)) => {
                        wait = ttl * 8 / 10;
                        lock(&data.tokens).insert(token_key(volume, &t.path), token.clone());
                        let mode = projected_mode(&pod, volume);
                        if let Err(e) =
                            volumes::write_token(&pod_dir, volume, &t.path, &token, mode)
                        {
                            tracing::warn!(%volume, error = %e, "cannot write the renewed token");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%volume, error = %e, "cannot renew the service-account token");
                        wait = Duration::from_secs(10);
                    }
                }
            }
        }
    }

    #[tracing::instrument(skip(self, pod), fields(pod = %format!("{}/{}", pod_ref(&pod).namespace, pod_ref(&pod).name)))]
    async fn pod_changed(self: Arc<Self>, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let r = pod_ref(&pod);
        if pod.metadata.deletion_timestamp.is_some() {
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .map(|s| Duration::from_secs(s.max(0) as u64));
            self.finish_delete(uid, r, grace, true).await;
            return;
        }
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if lock(&self.known).contains_key(&uid) || matches!(phase.as_str(), "Succeeded" | "Failed")
        {
            return;
        }
        lock(&self.known).insert(uid.clone(), r.clone());
        let mut data = ResolvedData::default();
        self.resolve(&pod, &mut data).await;
        let waiting_since = std::time::Instant::now();
        loop {
            let lacking = missing(&pod, &data);
            if lacking.is_empty() || waiting_since.elapsed() >= VOLUME_WAIT {
                break;
            }
            tracing::info!(lacking = %lacking.join(", "), "waiting for what the pod's volumes need");
            tokio::time::sleep(Duration::from_secs(1)).await;
            if !lock(&self.known).contains_key(&uid) {
                return;
            }
            self.resolve(&pod, &mut data).await;
        }
        // A deletion that came while resolving wins; holding `known` makes the check and
        // the start one step for `finish_delete`, which reads `known` under the same lock.
        let started = {
            let known = lock(&self.known);
            if !known.contains_key(&uid) || lock(&self.deleting).contains(&uid) {
                return;
            }
            let started = self.kubelet.run_pod(pod.clone(), data.clone());
            if started.is_ok() {
                tokio::spawn(self.clone().refresh_tokens(uid.clone(), pod, data));
            }
            started
        };
        if let Err(e) = started {
            tracing::warn!(error = %e, "cannot run pod");
            lock(&self.known).remove(&uid);
            let status = json!({"status": {"phase": "Failed", "reason": "InvalidSpec", "message": e.to_string()}});
            let api: Api<Pod> = Api::namespaced(self.client.get(), &r.namespace);
            let _ = api
                .patch_status(&r.name, &PatchParams::default(), &Patch::Merge(&status))
                .await;
        }
    }

    /// Removes the pod from the node, then (when `in_api`) deletes its API object.
    async fn finish_delete(
        self: Arc<Self>,
        uid: String,
        r: PodRef,
        grace: Option<Duration>,
        in_api: bool,
    ) {
        if !lock(&self.deleting).insert(uid.clone()) {
            return;
        }
        let ran = lock(&self.known).contains_key(&uid);
        if ran {
            if let Err(e) = self.kubelet.delete_pod(&uid, grace).await {
                tracing::warn!(pod = %r.name, error = %e, "cleanup was incomplete");
            }
        }
        lock(&self.known).remove(&uid);
        lock(&self.pushed).remove(&uid);
        if in_api {
            let api: Api<Pod> = Api::namespaced(self.client.get(), &r.namespace);
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&r.name, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => tracing::warn!(pod = %r.name, error = %e, "cannot finish the deletion"),
            }
        }
        lock(&self.deleting).remove(&uid);
    }

    /// Writes the status of every pod whose status changed since the last write.
    async fn push_statuses(&self) {
        let pods: Vec<(String, PodRef)> = lock(&self.known)
            .iter()
            .filter(|(uid, _)| !lock(&self.deleting).contains(*uid))
            .map(|(u, r)| (u.clone(), r.clone()))
            .collect();
        for (uid, r) in pods {
            let Some(status) = self.kubelet.status(&uid) else {
                continue;
            };
            let v = serde_json::to_value(&status).unwrap_or_default();
            if lock(&self.pushed).get(&uid) == Some(&v) {
                continue;
            }
            let api: Api<Pod> = Api::namespaced(self.client.get(), &r.namespace);
            let patch = json!({"status": v});
            match api
                .patch_status(&r.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    lock(&self.pushed).insert(uid, v);
                }
                Err(e) => tracing::debug!(pod = %r.name, error = %e, "cannot write pod status"),
            }
        }
    }

    /// Runs the watch and the status writer until the process stops.
    pub async fn run(self: Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            // At once after a change, and every 250 ms for what changes without telling
            // (probe results).
            let changed = me.kubelet.changes();
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    () = changed.notified() => {}
                    _ = tick.tick() => {}
                }
                me.push_statuses().await;
            }
        });
        let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", self.node));
        let mut listed: HashSet<String> = HashSet::new();
        loop {
            // A rotated certificate means a new client: re-watch (and re-list) with it.
            let generation = self.client.generation();
            let api: Api<Pod> = Api::all(self.client.get());
            let mut stream = crate::client::watch::events(api, cfg.clone());
            let mut check = tokio::time::interval(Duration::from_secs(30));
            loop {
                let ev = tokio::select! {
                    ev = stream.next() => ev,
                    _ = check.tick() => {
                        if self.client.generation() != generation {
                            break;
                        }
                        continue;
                    }
                };
                let Some(ev) = ev else { break };
                self.clone().handle(ev, &mut listed).await;
            }
        }
    }

    async fn handle(self: Arc<Self>, ev: watcher::Event<Pod>, listed: &mut HashSet<String>) {
        match ev {
            watcher::Event::Init => listed.clear(),
            watcher::Event::InitApply(p) => {
                listed.extend(p.metadata.uid.clone());
                tokio::spawn(self.clone().pod_changed(p));
            }
            watcher::Event::InitDone => {
                let gone: Vec<(String, PodRef)> = lock(&self.known)
                    .iter()
                    .filter(|(u, _)| !listed.contains(*u))
                    .map(|(u, r)| (u.clone(), r.clone()))
                    .collect();
                for (uid, r) in gone {
                    tokio::spawn(self.clone().finish_delete(
                        uid,
                        r,
                        Some(Duration::from_secs(2)),
                        false,
                    ));
                }
            }
            watcher::Event::Apply(p) => {
                tokio::spawn(self.clone().pod_changed(p));
            }
            watcher::Event::Delete(p) => {
                if let Some(uid) = p.metadata.uid.clone() {
                    let r = pod_ref(&p);
                    tokio::spawn(self.clone().finish_delete(
                        uid,
                        r,
                        Some(Duration::from_secs(2)),
                        false,
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_maps_and_secrets_are_collected_from_volumes_env_and_env_from() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "volumes": [{"name": "a", "configMap": {"name": "cm-vol"}},
                            {"name": "b", "secret": {"secretName": "s-vol"}},
                            {"name": "c", "emptyDir": {}}],
                "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "s-init"}}]}],
                "containers": [{"name": "c",
                    "envFrom": [{"configMapRef": {"name": "cm-from"}}],
                    "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm-key", "key": "k"}}},
                            {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "s-key", "key": "k"}}},
                            {"name": "Z", "value": "plain"}]}]
            }
        }))
        .expect("pod");
        let (cms, secrets) = referenced(&pod);
        assert_eq!(
            cms.into_iter().collect::<Vec<_>>(),
            ["cm-from", "cm-key", "cm-vol"]
        );
        assert_eq!(
            secrets.into_iter().collect::<Vec<_>>(),
            ["s-init", "s-key", "s-vol"]
        );
        assert_eq!(
            pod_ref(&pod),
            PodRef {
                namespace: "ns".into(),
                name: "p".into()
            }
        );
    }

    #[test]
    fn a_pod_waits_for_its_token_and_the_ca_configmap_but_not_for_optional_sources() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {
                "volumes": [{"name": "kube-api-access-ab", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"secret": {"name": "maybe", "optional": true}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}
                ]}}],
                "containers": [{"name": "c"}]
            }
        }))
        .expect("pod");
        let (cms, secrets) = referenced(&pod);
        assert!(cms.contains("kube-root-ca.crt") && secrets.contains("maybe"));
        let mut data = ResolvedData::default();
        assert_eq!(
            missing(&pod, &data),
            [
                "configmap kube-root-ca.crt",
                "the service-account token of volume kube-api-access-ab"
            ]
        );
        data.config_maps
            .insert("kube-root-ca.crt".into(), Default::default());
        lock(&data.tokens).insert(token_key("kube-api-access-ab", "token"), "t".into());
        assert!(missing(&pod, &data).is_empty());
        assert_eq!(token_sources(&pod)[0].1.expiration_seconds, Some(3607));
    }
}
