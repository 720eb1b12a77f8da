//! Bootstrap tokens with kubeadm semantics.
//!
//! A token is `<id>.<secret>`, `[a-z0-9]{6}.[a-z0-9]{16}`. The id is public (it names the
//! `bootstrap-token-<id>` Secret in `kube-system`); the secret authenticates. A token has an
//! optional expiry (`--ttl 0` means never), usages (`authentication`, `signing`) and extra
//! groups (`system:bootstrappers:kubeadm:default-node-token`, as kubeadm). Tokens baked
//! into worker images are long-lived but revocable with `kimg token delete`; the apiserver
//! enforces expiry.
//!
//! Tokens are kept in `<cluster>/secrets/tokens.toml` (mode 0600):
//!
//! ```toml
//! [[token]]
//! id = "abcdef"
//! secret = "0123456789abcdef"
//! description = "worker images"
//! expires = "2026-11-23T05:00:00Z"   # absent: never expires
//! usages = ["authentication", "signing"]
//! groups = ["system:bootstrappers:kubeadm:default-node-token"]
//! ```

use std::path::{Path, PathBuf};

use rand::Rng;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::PkiError;

/// The default extra group, as kubeadm's.
pub const DEFAULT_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";

/// One bootstrap token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Token {
    pub id: String,
    pub secret: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rfc3339_opt")]
    pub expires: Option<OffsetDateTime>,
    pub usages: Vec<String>,
    pub groups: Vec<String>,
}

mod rfc3339_opt {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(v: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(t) => s.serialize_str(&t.format(&Rfc3339).map_err(serde::ser::Error::custom)?),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        let s = String::deserialize(d)?;
        OffsetDateTime::parse(&s, &Rfc3339)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("{s:?} is not an RFC 3339 time: {e}")))
    }
}

impl Token {
    /// `<id>.<secret>`.
    pub fn value(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }
}

fn is_token_part(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Splits and checks `<id>.<secret>`.
pub fn parse(value: &str) -> Result<(String, String), PkiError> {
    match value.split_once('.') {
        Some((id, secret)) if is_token_part(id, 6) && is_token_part(secret, 16) => {
            Ok((id.to_string(), secret.to_string()))
        }
        _ => Err(PkiError::BadToken(format!(
            "{value:?} is not a bootstrap token: expected [a-z0-9]{{6}}.[a-z0-9]{{16}}"
        ))),
    }
}

fn random_part(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Makes a new random token. `ttl` of `None` means it never expires.
pub fn generate(ttl: Option<std::time::Duration>, description: &str, now: OffsetDateTime) -> Token {
    Token {
        id: random_part(6),
        secret: random_part(16),
        description: description.to_string(),
        expires: ttl.map(|d| now + d),
        usages: vec!["authentication".into(), "signing".into()],
        groups: vec![DEFAULT_GROUP.into()],
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    token: Vec<Token>,
}

/// `<cluster>/secrets/tokens.toml`.
pub fn tokens_path(cluster_dir: &Path) -> PathBuf {
    super::secrets_dir(cluster_dir).join("tokens.toml")
}

/// All tokens of a cluster, in file order (oldest first). A missing file means none.
pub fn load(cluster_dir: &Path) -> Result<Vec<Token>, PkiError> {
    load_file(&tokens_path(cluster_dir))
}

/// The tokens of one `tokens.toml` (a master image carries a copy); missing means none.
pub fn load_file(path: &Path) -> Result<Vec<Token>, PkiError> {
    let path = path.to_path_buf();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(PkiError::Read { path, source }),
    };
    let file: TokenFile = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| crate::cluster::line_of_offset(&text, s.start));
        PkiError::BadTokenFile {
            path: path.clone(),
            reason: match line {
                Some(l) => format!("line {l}: {}", e.message()),
                None => e.message().to_string(),
            },
        }
    })?;
    for t in &file.token {
        parse(&t.value()).map_err(|e| PkiError::BadTokenFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(file.token)
}

/// Replaces the token file.
pub fn save(cluster_dir: &Path, tokens: &[Token]) -> Result<(), PkiError> {
    let path = tokens_path(cluster_dir);
    let text = toml::to_string(&TokenFile {
        token: tokens.to_vec(),
    })
    .expect("tokens always serialise");
    super::write_atomic(&path, text.as_bytes(), 0o600)
        .map_err(|source| PkiError::Write { path, source })
}

/// Creates and stores a new token.
pub fn create(
    cluster_dir: &Path,
    ttl: Option<std::time::Duration>,
    description: &str,
) -> Result<Token, PkiError> {
    let mut tokens = load(cluster_dir)?;
    let mut token = generate(ttl, description, OffsetDateTime::now_utc());
    while tokens.iter().any(|t| t.id == token.id) {
        token = generate(ttl, description, OffsetDateTime::now_utc());
    }
    tokens.push(token.clone());
    save(cluster_dir, &tokens)?;
    Ok(token)
}

/// Deletes a token by id or by full `<id>.<secret>` value.
pub fn delete(cluster_dir: &Path, id_or_value: &str) -> Result<Token, PkiError> {
    let id = id_or_value.split('.').next().unwrap_or_default();
    let mut tokens = load(cluster_dir)?;
    let pos = tokens
        .iter()
        .position(|t| t.id == id)
        .ok_or_else(|| PkiError::NoSuchToken {
            id: id.to_string(),
            path: tokens_path(cluster_dir),
        })?;
    let removed = tokens.remove(pos);
    save(cluster_dir, &tokens)?;
    Ok(removed)
}

/// The newest token that is valid at `now` (what `kimg build` bakes into worker images).
pub fn newest_valid(tokens: &[Token], now: OffsetDateTime) -> Option<&Token> {
    tokens.iter().rev().find(|t| !t.is_expired(now))
}

/// kubeadm-style TTL column: `23h`, `<forever>` or `<invalid>` when expired.
pub fn ttl_column(t: &Token, now: OffsetDateTime) -> String {
    match t.expires {
        None => "<forever>".into(),
        Some(e) if e <= now => "<invalid>".into(),
        Some(e) => {
            let secs = (e - now).whole_seconds().max(0) as u64;
            let rounded = std::time::Duration::from_secs(if secs >= 3600 {
                secs / 3600 * 3600
            } else {
                secs / 60 * 60
            });
            humantime::format_duration(rounded)
                .to_string()
                .replace(' ', "")
        }
    }
}

/// The `EXPIRES` column.
pub fn expires_column(t: &Token) -> String {
    t.expires
        .and_then(|e| e.format(&Rfc3339).ok())
        .unwrap_or_else(|| "<never>".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_tokens_match_the_kubeadm_format() {
        for _ in 0..200 {
            let t = generate(None, "", OffsetDateTime::now_utc());
            assert!(parse(&t.value()).is_ok(), "{}", t.value());
        }
    }

    #[test]
    fn a_token_with_a_ttl_expires_and_one_without_never_does() {
        let now = OffsetDateTime::now_utc();
        let t = generate(Some(std::time::Duration::from_secs(3600)), "", now);
        assert!(!t.is_expired(now));
        assert!(t.is_expired(now + time::Duration::hours(1)));
        let forever = generate(None, "", now);
        assert!(!forever.is_expired(now + time::Duration::days(36500)));
        assert_eq!(ttl_column(&forever, now), "<forever>");
        assert_eq!(ttl_column(&t, now + time::Duration::hours(2)), "<invalid>");
    }

    #[test]
    fn the_newest_valid_token_skips_expired_ones() {
        let now = OffsetDateTime::now_utc();
        let old = generate(None, "old", now);
        let expired = generate(
            Some(std::time::Duration::from_secs(1)),
            "expired",
            now - time::Duration::hours(1),
        );
        let tokens = vec![old.clone(), expired];
        assert_eq!(newest_valid(&tokens, now), Some(&old));
    }

    proptest! {
        #[test]
        fn parse_accepts_exactly_the_token_grammar(s in "[a-z0-9A-Z._-]{0,30}") {
            let valid = s.len() == 23
                && s.as_bytes()[6] == b'.'
                && s.bytes().enumerate().all(|(i, b)| i == 6 || b.is_ascii_lowercase() || b.is_ascii_digit());
            prop_assert_eq!(parse(&s).is_ok(), valid);
        }
    }
}
