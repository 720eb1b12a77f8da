//! Pulls an image from a registry (the OCI distribution API, which Docker registries
//! speak) into an [`OciArchive`], so the kubelet imports it exactly like a baked archive.
//!
//! What: [`Reference::parse`] normalizes a pod's `image` the way Docker and containerd do
//! (`busybox` → `docker.io/library/busybox:latest`, `192.168.1.100:5000/dashboard:v2.0.0`
//! stays on that host). [`Puller::pull`] fetches the manifest — following an image index
//! or Docker manifest list to its `linux/amd64` entry — then the config and every layer,
//! each checked against its digest.
//!
//! How: blocking HTTP through `ureq` (call it from `spawn_blocking`). HTTPS, except for the
//! hosts given as insecure (the seeds' private `host:5000` registry) and loopback, which
//! are spoken to in plain HTTP. A `401` with a `Bearer` challenge is answered with an
//! anonymous token from the challenge's realm (how public registries grant pulls).
//!
//! Limits: no credentials (imagePullSecrets), no mirrors; the image is held in memory
//! while it is imported.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use serde_json::{json, Value};

use super::archive::{from_blobs, is_index, pick_manifest, OciArchive};
use super::{digest_of, MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST, MEDIA_INDEX, MEDIA_MANIFEST};

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("invalid image reference {0:?}")]
    BadReference(String),
    #[error("cannot reach {url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{what} from {url} is not valid JSON")]
    BadJson { what: String, url: String },
    #[error("{0}")]
    Image(Box<super::OciError>),
}

impl From<super::OciError> for PullError {
    fn from(e: super::OciError) -> PullError {
        PullError::Image(Box::new(e))
    }
}

/// A normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`; Docker Hub is `docker.io`.
    pub registry: String,
    /// `library/busybox`, `dashboard`, …
    pub repository: String,
    /// A tag or a `sha256:` digest.
    pub reference: String,
}

impl Reference {
    /// Normalizes `image` (see the module docs).
    pub fn parse(image: &str) -> Result<Reference, PullError> {
        let bad = || PullError::BadReference(image.to_string());
        if image.is_empty() || image.contains(char::is_whitespace) {
            return Err(bad());
        }
        let (name, digest) = match image.split_once('@') {
            Some((n, d)) if d.starts_with("sha256:") && d.len() == 71 => (n, Some(d)),
            Some(_) => return Err(bad()),
            None => (image, None),
        };
        let (name, tag) = match name.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t)),
            _ => (name, None),
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let repository = if registry == "docker.io" && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if repository.is_empty()
            || repository.split('/').any(str::is_empty)
            || repository.chars().any(|c| c.is_ascii_uppercase())
        {
            return Err(bad());
        }
        let reference = match (digest, tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) if !t.is_empty() => t.to_string(),
            (None, Some(_)) => return Err(bad()),
            (None, None) => "latest".to_string(),
        };
        Ok(Reference {
            registry,
            repository,
            reference,
        })
    }

    /// The full name images are stored under (`docker.io/library/busybox:latest`).
    pub fn name(&self) -> String {
        let sep = if self.reference.starts_with("sha256:") {
            '@'
        } else {
            ':'
        };
        format!(
            "{}/{}{sep}{}",
            self.registry, self.repository, self.reference
        )
    }

    /// The host the API is served on (Docker Hub's is not `docker.io`).
    fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }
}

/// Fetches images; see the module docs.
pub struct Puller {
    agent: ureq::Agent,
    insecure: Vec<String>,
}

fn is_loopback(host: &str) -> bool {
    let h = host.rsplit_once(':').map_or(host, |(h, _)| h);
    h == "localhost" || h.starts_with("127.") || h == "[::1]"
}

/// The value of `key` in a `Bearer realm="…",service="…"` challenge.
fn challenge_param(header: &str, key: &str) -> Option<String> {
    let rest = header.strip_prefix("Bearer ")?;
    rest.split(',').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == key).then(|| v.trim_matches('"').to_string())
    })
}

impl Puller {
    /// `insecure`: registries (`host:port`) spoken to over plain HTTP.
    pub fn new(insecure: Vec<String>) -> Puller {
        Puller {
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(10))
                .timeout_read(Duration::from_secs(60))
                .build(),
            insecure,
        }
    }

    fn base(&self, r: &Reference) -> String {
        let scheme = if self.insecure.iter().any(|h| h == &r.registry) || is_loopback(&r.registry) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}/v2/{}", r.api_host(), r.repository)
    }

    /// GET with the given Accept header, answering one Bearer challenge.
    fn get(
        &self,
        url: &str,
        accept: &str,
        token: &mut Option<String>,
    ) -> Result<(String, Vec<u8>), PullError> {
        for _ in 0..2 {
            let mut req = self.agent.get(url).set("Accept", accept);
            if let Some(t) = token.as_deref() {
                req = req.set("Authorization", &format!("Bearer {t}"));
            }
            match req.call() {
                Ok(resp) => {
                    let media_type = resp
                        .header("Content-Type")
                        .unwrap_or_default()
                        .split(';')
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let mut body = Vec::new();
                    resp.into_reader().read_to_end(&mut body).map_err(|e| {
                        PullError::Transport {
                            url: url.into(),
                            reason: e.to_string(),
                        }
                    })?;
                    return Ok((media_type, body));
                }
                Err(ureq::Error::Status(401, resp)) if token.is_none() => {
                    let challenge = resp.header("WWW-Authenticate").unwrap_or_default();
                    *token = Some(self.anonymous_token(url, challenge)?);
                }
                Err(ureq::Error::Status(status, resp)) => {
                    let body = resp.into_string().unwrap_or_default();
                    return Err(PullError::Status {
                        url: url.into(),
                        status,
                        body: body.chars().take(300).collect(),
                    });
                }
                Err(e) => {
                    return Err(PullError::Transport {
                        url: url.into(),
                        reason: e.to_string(),
                    })
                }
            }
        }
        Err(PullError::Status {
            url: url.into(),
            status: 401,
            body: "the registry refused the anonymous token".into(),
        })
    }

    fn anonymous_token(&self, url: &str, challenge: &str) -> Result<String, PullError> {
        let realm = challenge_param(challenge, "realm").ok_or_else(|| PullError::Status {
            url: url.into(),
            status: 401,
            body: format!("no Bearer realm in the challenge {challenge:?}"),
        })?;
        let mut req = self.agent.get(&realm);
        for key in ["service", "scope"] {
            if let Some(v) = challenge_param(challenge, key) {
                req = req.query(key, &v);
            }
        }
        let text = req
            .call()
            .map_err(|e| PullError::Transport {
                url: realm.clone(),
                reason: e.to_string(),
            })?
            .into_string()
            .map_err(|e| PullError::Transport {
                url: realm.clone(),
                reason: e.to_string(),
            })?;
        let body: Value = serde_json::from_str(&text).map_err(|_| PullError::BadJson {
            what: "token".into(),
            url: realm.clone(),
        })?;
        body["token"]
            .as_str()
            .or_else(|| body["access_token"].as_str())
            .map(str::to_string)
            .ok_or(PullError::BadJson {
                what: "token".into(),
                url: realm,
            })
    }

    /// Fetches `image` (a pod's `image` field) and everything it needs.
    pub fn pull(&self, image: &str) -> Result<OciArchive, PullError> {
        let r = Reference::parse(image)?;
        let base = self.base(&r);
        let accept = [
            MEDIA_INDEX,
            MEDIA_MANIFEST,
            MEDIA_DOCKER_LIST,
            MEDIA_DOCKER_MANIFEST,
        ]
        .join(", ");
        let mut token = None;
        let mut blobs = BTreeMap::new();
        let mut fetch_manifest = |reference: &str,
                                  token: &mut Option<String>|
         -> Result<(String, String, Value), PullError> {
            let url = format!("{base}/manifests/{reference}");
            let (media_type, body) = self.get(&url, &accept, token)?;
            let doc: Value = serde_json::from_slice(&body).map_err(|_| PullError::BadJson {
                what: "manifest".into(),
                url: url.clone(),
            })?;
            let digest = digest_of(&body);
            if reference.starts_with("sha256:") && digest != reference {
                return Err(super::OciError::DigestMismatch {
                    digest: reference.into(),
                }
                .into());
            }
            let media_type = doc["mediaType"]
                .as_str()
                .map(str::to_string)
                .filter(|m| !m.is_empty())
                .unwrap_or(media_type);
            blobs.insert(digest.clone(), body);
            Ok((media_type, digest, doc))
        };
        let (mut media_type, mut digest, mut doc) = fetch_manifest(&r.reference, &mut token)?;
        if is_index(&media_type) {
            let entry = pick_manifest(&doc).ok_or_else(|| {
                super::OciError::Missing(format!("linux/amd64 manifest in the index of {image}"))
            })?;
            let d = entry["digest"].as_str().unwrap_or_default().to_string();
            (media_type, digest, doc) = fetch_manifest(&d, &mut token)?;
        }
        let mut wanted: Vec<String> = vec![doc["config"]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_string()];
        for l in doc["layers"].as_array().into_iter().flatten() {
            wanted.push(l["digest"].as_str().unwrap_or_default().to_string());
        }
        for d in wanted {
            if blobs.contains_key(&d) {
                continue;
            }
            if !d.starts_with("sha256:") {
                return Err(super::OciError::Missing(format!("a sha256 digest in {image}")).into());
            }
            let url = format!("{base}/blobs/{d}");
            let (_, body) = self.get(&url, "*/*", &mut token)?;
            if digest_of(&body) != d {
                return Err(super::OciError::DigestMismatch { digest: d }.into());
            }
            blobs.insert(d, body);
        }
        let desc = json!({"mediaType": media_type, "digest": digest});
        Ok(from_blobs(Some(r.name()), &desc, blobs)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalize_like_docker_and_containerd() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("nginx:1.25", "docker.io/library/nginx:1.25"),
            ("bitnami/redis", "docker.io/bitnami/redis:latest"),
            (
                "192.168.1.100:5000/dashboard:v2.0.0",
                "192.168.1.100:5000/dashboard:v2.0.0",
            ),
            ("localhost/app", "localhost/app:latest"),
            ("kimg.local/busybox:latest", "kimg.local/busybox:latest"),
            ("127.0.0.1:5000/a/b/c:1", "127.0.0.1:5000/a/b/c:1"),
        ];
        for (input, want) in cases {
            assert_eq!(Reference::parse(input).expect(input).name(), want);
        }
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("quay.io/x/y@{d}")).expect("digest");
        assert_eq!(r.reference, d);
        assert_eq!(r.name(), format!("quay.io/x/y@{d}"));
        for bad in ["", "a b", "UPPER/case", "x@md5:1", "host:5000/", "a//b"] {
            assert!(Reference::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn loopback_and_listed_registries_are_plain_http_the_rest_https() {
        let p = Puller::new(vec!["192.168.1.100:5000".into()]);
        let base = |i: &str| p.base(&Reference::parse(i).expect(i));
        assert_eq!(
            base("192.168.1.100:5000/dashboard:v2"),
            "http://192.168.1.100:5000/v2/dashboard"
        );
        assert_eq!(base("127.0.0.1:5000/a"), "http://127.0.0.1:5000/v2/a");
        assert_eq!(
            base("busybox"),
            "https://registry-1.docker.io/v2/library/busybox"
        );
        assert_eq!(base("quay.io/a/b"), "https://quay.io/v2/a/b");
    }

    #[test]
    fn bearer_challenges_are_parsed() {
        let h = r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:library/busybox:pull""#;
        assert_eq!(
            challenge_param(h, "realm").as_deref(),
            Some("https://auth.example/token")
        );
        assert_eq!(
            challenge_param(h, "scope").as_deref(),
            Some("repository:library/busybox:pull")
        );
        assert_eq!(challenge_param("Basic realm=x", "realm"), None);
    }
}
