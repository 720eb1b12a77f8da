//! Encryption at rest: a [`Store`] that encrypts the values under chosen prefixes (Secrets)
//! before they reach etcd, in kube-apiserver's `aesgcm` format.
//!
//! What: [`EncryptedStore`] wraps any store. Values written under one of its prefixes are
//! stored as `k8s:enc:aesgcm:v1:<key name>:` followed by a random 12-byte nonce and the
//! AES-256-GCM ciphertext with its tag; the etcd key is the additional authenticated data,
//! so a value copied to another key does not decrypt. Reads, lists and watch events are
//! decrypted with whichever configured key the prefix names; values without the prefix are
//! returned as they are (data written before encryption was turned on stays readable, as
//! with kube-apiserver's `identity` fallback). Keys come from a file of `name:base64` lines
//! ([`EncryptionKeys`]), 32 random bytes each; the first line encrypts, every line decrypts.
//!
//! Rotation (kube-apiserver's procedure): add a new key as the *second* line on every master
//! and restart them (all can now read it); move it to the first line and restart again (new
//! writes use it); rewrite every Secret (`kubectl get secrets -A -o json | kubectl replace
//! -f -`); then drop the old line.
//!
//! Limits: a random 96-bit nonce per write, so one key should encrypt no more than about
//! 2^32 values (kube-apiserver documents the same bound for `aesgcm`); no KMS.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use futures::StreamExt;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use super::{KeyValue, ListOptions, ListResult, Store, StoreError, WatchEvent, WatchStream};

const PREFIX: &str = "k8s:enc:aesgcm:v1:";

/// The keys of a key file: the first encrypts, all decrypt.
pub struct EncryptionKeys {
    keys: Vec<(String, LessSafeKey)>,
}

impl std::fmt::Debug for EncryptionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.keys.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("EncryptionKeys")
            .field("names", &names)
            .finish()
    }
}

impl EncryptionKeys {
    /// Parses `name:base64` lines (blank lines and `#` comments skipped); errors name the
    /// line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys: Vec<(String, LessSafeKey)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = i + 1;
            let (name, b64) = line
                .split_once(':')
                .ok_or_else(|| format!("line {at}: expected name:base64-key"))?;
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(format!(
                    "line {at}: the key name {name:?} must be letters, digits, '-' or '_'"
                ));
            }
            if keys.iter().any(|(n, _)| n == name) {
                return Err(format!("line {at}: the key name {name:?} is used twice"));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| format!("line {at}: the key is not base64: {e}"))?;
            if bytes.len() != 32 {
                return Err(format!(
                    "line {at}: the key must be 32 bytes (AES-256), it is {}",
                    bytes.len()
                ));
            }
            let key = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| format!("line {at}: not an AES-256 key"))?;
            keys.push((name.to_string(), LessSafeKey::new(key)));
        }
        if keys.is_empty() {
            return Err("no key in the file".into());
        }
        Ok(EncryptionKeys { keys })
    }

    /// Reads a key file; errors name the file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// A new key file line: `name:` and 32 random bytes in base64.
    pub fn generate_line(name: &str) -> Result<String, String> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| "the system random source failed".to_string())?;
        Ok(format!(
            "{name}:{}\n",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ))
    }

    fn encrypt(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let (name, aead) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| crypt_error(key, "the system random source failed"))?;
        let mut sealed = value.to_vec();
        aead.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(key.as_bytes()),
            &mut sealed,
        )
        .map_err(|_| crypt_error(key, "encryption failed"))?;
        let mut out = Vec::with_capacity(PREFIX.len() + name.len() + 1 + NONCE_LEN + sealed.len());
        out.extend_from_slice(PREFIX.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn decrypt(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let Some(rest) = value.strip_prefix(PREFIX.as_bytes()) else {
            return Ok(value); // written before encryption was turned on
        };
        let colon = rest
            .iter()
            .position(|b| *b == b':')
            .ok_or_else(|| crypt_error(key, "the stored value has no key name"))?;
        let name = String::from_utf8_lossy(&rest[..colon]);
        let (_, aead) = self.keys.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            crypt_error(
                key,
                &format!("it was encrypted with key {name:?}, which is not configured"),
            )
        })?;
        let body = &rest[colon + 1..];
        if body.len() < NONCE_LEN {
            return Err(crypt_error(key, "the stored value is truncated"));
        }
        let (nonce, sealed) = body.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| crypt_error(key, "the stored value is truncated"))?;
        let mut buf = sealed.to_vec();
        let plain = aead
            .open_in_place(nonce, Aad::from(key.as_bytes()), &mut buf)
            .map_err(|_| {
                crypt_error(
                    key,
                    &format!(
                        "authentication with key {name:?} failed (wrong key or tampered value)"
                    ),
                )
            })?;
        Ok(plain.to_vec())
    }
}

fn crypt_error(key: &str, reason: &str) -> StoreError {
    StoreError::Crypt {
        key: key.to_owned(),
        reason: reason.to_owned(),
    }
}

/// A store that encrypts the values under `prefixes`; see the module docs.
#[derive(Clone)]
pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    keys: Arc<EncryptionKeys>,
    prefixes: Arc<[String]>,
}

impl EncryptedStore {
    pub fn new(inner: Arc<dyn Store>, keys: EncryptionKeys, prefixes: &[&str]) -> Self {
        EncryptedStore {
            inner,
            keys: Arc::new(keys),
            prefixes: prefixes
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .into(),
        }
    }

    fn covers(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    fn seal(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        if self.covers(key) {
            self.keys.encrypt(key, &value)
        } else {
            Ok(value)
        }
    }

    fn open(&self, mut kv: KeyValue) -> Result<KeyValue, StoreError> {
        if self.covers(&kv.key) && !kv.value.is_empty() {
            kv.value = self.keys.decrypt(&kv.key, std::mem::take(&mut kv.value))?;
        }
        Ok(kv)
    }
}

#[async_trait::async_trait]
impl Store for EncryptedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner
            .get(key)
            .await?
            .map(|kv| self.open(kv))
            .transpose()
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListResult, StoreError> {
        let mut page = self.inner.list(prefix, options).await?;
        page.items = std::mem::take(&mut page.items)
            .into_iter()
            .map(|kv| self.open(kv))
            .collect::<Result<_, _>>()?;
        Ok(page)
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64, StoreError> {
        self.inner.create(key, self.seal(key, value)?).await
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: i64,
    ) -> Result<i64, StoreError> {
        let value = self.seal(key, value)?;
        self.inner.update(key, value, expected_mod_revision).await
    }

    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<i64>,
    ) -> Result<(i64, KeyValue), StoreError> {
        let (rev, prev) = self.inner.delete(key, expected_mod_revision).await?;
        Ok((rev, self.open(prev)?))
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream, StoreError> {
        let inner = self.inner.watch(prefix, from_revision).await?;
        let opener = self.clone();
        Ok(Box::pin(inner.map(move |ev| {
            let ev = ev?;
            Ok(WatchEvent {
                kind: ev.kind,
                kv: opener.open(ev.kv)?,
                prev_kv: ev.prev_kv.map(|kv| opener.open(kv)).transpose()?,
            })
        })))
    }

    async fn current_revision(&self) -> Result<i64, StoreError> {
        self.inner.current_revision().await
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }

    async fn defragment(&self, only_fragmented: bool) -> Result<(), StoreError> {
        self.inner.defragment(only_fragmented).await
    }

    async fn disarm_nospace(&self) -> Result<bool, StoreError> {
        self.inner.disarm_nospace().await
    }

    async fn db_size(&self) -> Result<Option<i64>, StoreError> {
        self.inner.db_size().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    const SECRETS: &str = "/registry/secrets/";

    fn keys(lines: &[&str]) -> EncryptionKeys {
        let text: String = lines
            .iter()
            .map(|n| EncryptionKeys::generate_line(n).expect("key"))
            .collect();
        EncryptionKeys::parse(&text).expect("parse")
    }

    #[tokio::test]
    async fn secrets_are_ciphertext_underneath_and_plain_through_every_read() {
        let raw = Arc::new(MemoryStore::new());
        let store = EncryptedStore::new(raw.clone(), keys(&["k1"]), &[SECRETS]);
        let key = "/registry/secrets/default/db";
        let start = store.current_revision().await.expect("rev");
        let mut watch = store.watch(SECRETS, start).await.expect("watch");
        store
            .create(key, b"password=hunter2".to_vec())
            .await
            .expect("create");
        store
            .create("/registry/configmaps/default/c", b"plain".to_vec())
            .await
            .expect("create cm");

        let under = raw.get(key).await.expect("get").expect("stored");
        assert!(under.value.starts_with(b"k8s:enc:aesgcm:v1:k1:"));
        assert!(!under.value.windows(7).any(|w| w == b"hunter2"));
        let cm = raw
            .get("/registry/configmaps/default/c")
            .await
            .expect("get");
        assert_eq!(
            cm.expect("cm").value,
            b"plain",
            "other prefixes are untouched"
        );

        let got = store.get(key).await.expect("get").expect("there");
        assert_eq!(got.value, b"password=hunter2");
        let page = store
            .list(SECRETS, ListOptions::default())
            .await
            .expect("list");
        assert_eq!(page.items[0].value, b"password=hunter2");
        let ev = watch.next().await.expect("event").expect("ok");
        assert_eq!(ev.kv.value, b"password=hunter2");
        let rev = got.mod_revision;
        store
            .update(key, b"password=x".to_vec(), rev)
            .await
            .expect("update");
        let (_, prev) = store.delete(key, None).await.expect("delete");
        assert_eq!(prev.value, b"password=x");
    }

    #[tokio::test]
    async fn rotation_reads_old_keys_and_refuses_unknown_or_moved_values() {
        let raw = Arc::new(MemoryStore::new());
        let old = EncryptionKeys::generate_line("old").expect("key");
        let new = EncryptionKeys::generate_line("new").expect("key");
        let before = EncryptedStore::new(
            raw.clone(),
            EncryptionKeys::parse(&old).expect("parse"),
            &[SECRETS],
        );
        before
            .create("/registry/secrets/a/s", b"v1".to_vec())
            .await
            .expect("create");
        raw.create("/registry/secrets/a/legacy", b"plain".to_vec())
            .await
            .expect("create plain");

        // New key first, old key still listed: old values read, new writes use the new key.
        let both = EncryptionKeys::parse(&format!("{new}{old}")).expect("parse");
        let after = EncryptedStore::new(raw.clone(), both, &[SECRETS]);
        let s = after
            .get("/registry/secrets/a/s")
            .await
            .expect("get")
            .expect("s");
        assert_eq!(s.value, b"v1");
        after
            .update("/registry/secrets/a/s", b"v2".to_vec(), s.mod_revision)
            .await
            .expect("rewrite");
        let under = raw
            .get("/registry/secrets/a/s")
            .await
            .expect("get")
            .expect("s");
        assert!(under.value.starts_with(b"k8s:enc:aesgcm:v1:new:"));
        let legacy = after.get("/registry/secrets/a/legacy").await.expect("get");
        assert_eq!(legacy.expect("legacy").value, b"plain");

        // Without the key that wrote it, a value is an error, not garbage.
        let only_new = EncryptedStore::new(
            raw.clone(),
            EncryptionKeys::parse(&new).expect("parse"),
            &[SECRETS],
        );
        raw.create("/registry/secrets/a/t", {
            before
                .keys
                .encrypt("/registry/secrets/a/t", b"v")
                .expect("seal")
        })
        .await
        .expect("create");
        let e = only_new.get("/registry/secrets/a/t").await.unwrap_err();
        assert!(
            e.to_string().contains("\"old\", which is not configured"),
            "{e}"
        );

        // A ciphertext copied under another key fails authentication.
        let copied = raw
            .get("/registry/secrets/a/s")
            .await
            .expect("get")
            .expect("s");
        raw.create("/registry/secrets/b/s", copied.value)
            .await
            .expect("copy");
        let e = after.get("/registry/secrets/b/s").await.unwrap_err();
        assert!(e.to_string().contains("authentication"), "{e}");
    }

    #[test]
    fn key_files_are_checked_line_by_line() {
        for (text, expected) in [
            ("", "no key"),
            ("k1", "line 1: expected name:base64-key"),
            ("\n# c\nk 1:AAAA", "line 3: the key name"),
            ("k1:!!!", "line 1: the key is not base64"),
            ("k1:AAAA", "line 1: the key must be 32 bytes"),
        ] {
            let e = EncryptionKeys::parse(text).unwrap_err();
            assert!(e.contains(expected), "{text:?}: {e}");
        }
        let line = EncryptionKeys::generate_line("k1").expect("key");
        let e = EncryptionKeys::parse(&format!("{line}{line}")).unwrap_err();
        assert!(
            e.contains("line 2: the key name \"k1\" is used twice"),
            "{e}"
        );
    }
}
