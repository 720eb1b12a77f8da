//! Loading the package indexes of the configured suites, verified and cached.
//!
//! Per suite: fetch `<uri>/dists/<suite>/InRelease` (offline, or when the mirror cannot be
//! reached, the cached copy is used instead), verify it with gpgv and check it
//! ([`super::release`]), and only then store it as `<cache>/indexes/InRelease-<suite>`.
//! Then take `main/binary-<arch>/Packages.xz` (else `.gz`) with the size and sha256 the
//! signed Release lists, from `<cache>/indexes/<sha256>` if present and intact, else
//! download it there (verified while streaming), decompress and parse it.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::Instant;

use time::OffsetDateTime;

use super::apt::SuiteSource;
use super::error::SourceError;
use super::fetch::{self, Expected};
use super::packages::{parse_packages, BinaryPackage};
use super::release::{parse_release, verify_clearsigned};
use super::resolve::PackageIndex;
use super::SourceOptions;

/// Loads all suites into one index.
pub(crate) fn load_index(
    opts: &SourceOptions,
    sources: &[SuiteSource],
) -> Result<PackageIndex, SourceError> {
    let agent = fetch::agent();
    let mut all = Vec::new();
    for src in sources {
        let started = Instant::now();
        let pkgs = load_suite(opts, src, &agent)?;
        tracing::info!(
            suite = %src.suite, packages = pkgs.len(),
            elapsed_ms = started.elapsed().as_millis() as u64, "package index loaded"
        );
        all.extend(pkgs);
    }
    Ok(PackageIndex::new(&opts.arch, all))
}

fn load_suite(
    opts: &SourceOptions,
    src: &SuiteSource,
    agent: &ureq::Agent,
) -> Result<Vec<BinaryPackage>, SourceError> {
    let cache = &opts.cache_dir;
    let index_dir = cache.join("indexes");
    let cached_inrelease = index_dir.join(format!("InRelease-{}", src.suite));
    let url = format!("{}/dists/{}/InRelease", src.uri, src.suite);
    let (bytes, fresh) = if opts.offline {
        match fs::read(&cached_inrelease) {
            Ok(b) => (b, false),
            Err(_) => {
                return Err(SourceError::NotInCache {
                    what: format!("the InRelease of {}", src.suite),
                    cache_dir: cache.clone(),
                })
            }
        }
    } else {
        match fetch::get_small(agent, &url) {
            Ok(b) => (b, true),
            Err(reason) => match fs::read(&cached_inrelease) {
                Ok(b) => {
                    tracing::warn!(%url, %reason, "mirror unreachable; using the cached InRelease");
                    (b, false)
                }
                Err(_) => {
                    return Err(SourceError::MirrorUnreachable {
                        url,
                        reason,
                        cache_dir: cache.clone(),
                    })
                }
            },
        }
    };
    let text = verify_clearsigned(&bytes, &src.keyrings, &url)?;
    let release = parse_release(
        &text,
        &src.suite,
        opts.check_valid_until,
        OffsetDateTime::now_utc(),
    )?;
    if fresh {
        fetch::write_atomic(&cached_inrelease, &bytes, cache)?;
    }
    let base = format!("main/binary-{}/Packages", opts.arch);
    let (path, (size, sha256)) = [".xz", ".gz"]
        .iter()
        .find_map(|ext| {
            let p = format!("{base}{ext}");
            release.sha256.get(&p).map(|v| (p, v.clone()))
        })
        .ok_or_else(|| SourceError::IndexNotListed {
            suite: src.suite.clone(),
            path: base.clone(),
        })?;
    let what = format!("{}/{}", src.suite, path);
    let expected = Expected {
        what: &what,
        size,
        sha256: &sha256,
    };
    let file = index_dir.join(&sha256);
    if !fetch::cached_ok(&file, &expected) {
        if opts.offline {
            return Err(SourceError::NotInCache {
                what,
                cache_dir: cache.clone(),
            });
        }
        let url = format!("{}/dists/{}/{}", src.uri, src.suite, path);
        fetch::download_verified(agent, &url, &file, &expected, cache, opts.quiet)?;
    }
    let started = Instant::now();
    let text = decompress(&file, path.ends_with(".xz"))?;
    let decompressed = started.elapsed();
    let packages = parse_packages(&text, &src.suite);
    tracing::debug!(
        suite = %src.suite, bytes = text.len(),
        decompress_ms = decompressed.as_millis() as u64,
        parse_ms = (started.elapsed() - decompressed).as_millis() as u64, "packages index parsed"
    );
    Ok(packages)
}

fn decompress(path: &Path, xz: bool) -> Result<String, SourceError> {
    let err = |source| SourceError::Decompress {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(err)?;
    let mut text = String::new();
    if xz {
        xz2::read::XzDecoder::new(std::io::BufReader::new(file))
            .read_to_string(&mut text)
            .map_err(err)?;
    } else {
        flate2::read::GzDecoder::new(std::io::BufReader::new(file))
            .read_to_string(&mut text)
            .map_err(err)?;
    }
    Ok(text)
}
