//! HTTP(S) fetching into the hash-keyed cache, verifying size and sha256 while streaming.
//!
//! A download goes to `<dest>.part`, is hashed as it streams (and cut off as soon as it
//! exceeds the expected size), and is renamed into place only when size and sha256 match;
//! otherwise the partial file is deleted and [`SourceError::HashMismatch`] names what was
//! fetched, the expected and the actual hash. Cached files are re-hashed on every use and
//! deleted when they no longer match. Blocking `ureq`, with proxy settings from the
//! environment; an `indicatif` byte bar on stderr unless quiet.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use super::error::{cache_write_error, SourceError};

/// What a file must be.
#[derive(Clone, Debug)]
pub(crate) struct Expected<'a> {
    /// Names the file in errors and progress (a package name or an index path).
    pub what: &'a str,
    pub size: u64,
    pub sha256: &'a str,
}

/// The shared blocking HTTP client.
pub(crate) fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout_read(Duration::from_secs(60))
        .try_proxy_from_env(true)
        .user_agent(concat!("kimg/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Fetches a small file (an `InRelease`) into memory; the error is a human reason.
pub(crate) fn get_small(agent: &ureq::Agent, url: &str) -> Result<Vec<u8>, String> {
    const LIMIT: u64 = 64 << 20;
    let response = agent.get(url).call().map_err(describe)?;
    let mut body = Vec::new();
    response
        .into_reader()
        .take(LIMIT)
        .read_to_end(&mut body)
        .map_err(|e| format!("reading the body failed: {e}"))?;
    Ok(body)
}

fn describe(err: ureq::Error) -> String {
    match err {
        ureq::Error::Status(code, r) => format!("http status {code} {}", r.status_text()),
        ureq::Error::Transport(t) => t.to_string(),
    }
}

/// Hashes a file: (size, sha256 hex).
pub(crate) fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Whether `path` exists and matches; a corrupt copy is deleted (evicted).
pub(crate) fn cached_ok(path: &Path, expected: &Expected) -> bool {
    match hash_file(path) {
        Ok((size, sha)) if size == expected.size && sha == expected.sha256 => true,
        Ok((size, sha)) => {
            tracing::warn!(
                file = %path.display(), what = expected.what, expected = expected.sha256,
                actual = %sha, size, "cached file is corrupt; evicting it"
            );
            // If removal fails the next download's rename replaces it anyway.
            let _ = fs::remove_file(path);
            false
        }
        Err(_) => false,
    }
}

/// Downloads `url` to `dest`, verifying as described in the module doc.
pub(crate) fn download_verified(
    agent: &ureq::Agent,
    url: &str,
    dest: &Path,
    expected: &Expected,
    cache_dir: &Path,
    quiet: bool,
) -> Result<(), SourceError> {
    let unreachable = |reason: String| SourceError::MirrorUnreachable {
        url: url.to_string(),
        reason,
        cache_dir: cache_dir.to_path_buf(),
    };
    let dir = dest.parent().unwrap_or(cache_dir);
    fs::create_dir_all(dir).map_err(|e| cache_write_error(dir, cache_dir, e))?;
    let response = agent
        .get(url)
        .call()
        .map_err(|e| unreachable(describe(e)))?;
    let part = part_path(dest);
    let mut out = File::create(&part).map_err(|e| cache_write_error(&part, cache_dir, e))?;
    let bar = progress(expected, quiet);
    // One byte more than expected is enough to know the size is wrong.
    let mut reader = response.into_reader().take(expected.size + 1);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut size = 0u64;
    let result = loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(unreachable(format!("download broke off: {e}"))),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
        bar.inc(n as u64);
        if let Err(e) = out.write_all(&buf[..n]) {
            break Err(cache_write_error(&part, cache_dir, e));
        }
    };
    bar.finish_and_clear();
    let result = result.and_then(|()| {
        out.sync_all()
            .map_err(|e| cache_write_error(&part, cache_dir, e))
    });
    drop(out);
    if let Err(e) = result {
        let _ = fs::remove_file(&part);
        return Err(e);
    }
    let actual = hex::encode(hasher.finalize());
    if size != expected.size || actual != expected.sha256 {
        let _ = fs::remove_file(&part);
        let _ = fs::remove_file(dest);
        return Err(SourceError::HashMismatch {
            what: expected.what.to_string(),
            expected_sha256: expected.sha256.to_string(),
            expected_size: expected.size,
            actual_sha256: actual,
            actual_size: size,
        });
    }
    fs::rename(&part, dest).map_err(|e| cache_write_error(dest, cache_dir, e))
}

/// Writes `data` to `dest` atomically (temp file, fsync, rename), mapping errors to the cache.
pub(crate) fn write_atomic(dest: &Path, data: &[u8], cache_dir: &Path) -> Result<(), SourceError> {
    crate::pki::write_atomic(dest, data, 0o644).map_err(|e| cache_write_error(dest, cache_dir, e))
}

fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.part", std::process::id()));
    dest.with_file_name(name)
}

fn progress(expected: &Expected, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(expected.size);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(expected.what.to_string());
    bar
}
