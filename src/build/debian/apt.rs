//! The host's apt sources, reduced to where each Debian bookworm suite comes from.
//!
//! Read, under a root dir (`/` on a host, a fixture dir in tests):
//! `etc/apt/sources.list`, then `etc/apt/sources.list.d/*.list` (one-line format) and
//! `*.sources` (deb822) in name order. Files with any other suffix (`.disabled-by-…`,
//! `.save`, …) are skipped, as are `deb-src` entries, `Enabled: no` stanzas, comments, and
//! entries whose `Architectures`/`arch=` excludes ours. Only the suites `bookworm`,
//! `bookworm-updates` and `bookworm-security` with the `main` component are used; the first
//! entry naming a suite wins. `Signed-By` / `[signed-by=…]` keyring paths are honoured
//! (resolved under the root dir); without one the suite is checked against
//! `usr/share/keyrings/debian-archive-keyring.gpg`. Inline keys and fingerprints in
//! `Signed-By` are not supported and fail clearly when a Debian suite uses them.
//!
//! Mirror override: `bookworm` and `bookworm-updates` (the main archive) come from the
//! override URI when one is given (both, if apt names neither); `bookworm-security` keeps
//! its apt source unless a security override is given too.

use std::fs;
use std::path::{Path, PathBuf};

use super::deb822;
use super::error::SourceError;

/// The suites kimg takes packages from.
pub const DEBIAN_SUITES: [&str; 3] = ["bookworm", "bookworm-updates", "bookworm-security"];
const MAIN_ARCHIVE_SUITES: [&str; 2] = ["bookworm", "bookworm-updates"];
const DEFAULT_KEYRING: &str = "usr/share/keyrings/debian-archive-keyring.gpg";

/// Where one suite is fetched from and which keyrings must have signed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuiteSource {
    pub suite: String,
    /// Archive root, without trailing slash (`<uri>/dists/<suite>/InRelease`).
    pub uri: String,
    pub keyrings: Vec<PathBuf>,
}

/// One `deb` entry as configured (before suite filtering).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    uri: String,
    suites: Vec<String>,
    components: Vec<String>,
    architectures: Vec<String>,
    signed_by: Option<String>,
}

/// Which mirrors to use instead of the apt config.
#[derive(Clone, Debug, Default)]
pub struct MirrorOverride {
    /// Replaces the URI of `bookworm` and `bookworm-updates`.
    pub main: Option<String>,
    /// Replaces the URI of `bookworm-security`.
    pub security: Option<String>,
}

/// Reads the apt config under `apt_root` and returns one [`SuiteSource`] per usable suite,
/// in [`DEBIAN_SUITES`] order.
pub fn suite_sources(
    apt_root: &Path,
    arch: &str,
    mirrors: &MirrorOverride,
) -> Result<Vec<SuiteSource>, SourceError> {
    let entries = read_entries(apt_root)?;
    let mut out: Vec<SuiteSource> = Vec::new();
    let main_configured = entries.iter().any(|e| {
        usable(e, arch)
            && e.suites
                .iter()
                .any(|s| MAIN_ARCHIVE_SUITES.contains(&s.as_str()))
    });
    for suite in DEBIAN_SUITES {
        let entry = entries
            .iter()
            .find(|e| usable(e, arch) && e.suites.iter().any(|s| s == suite));
        let keyrings = match entry.and_then(|e| e.signed_by.as_deref()) {
            Some(v) => keyring_paths(apt_root, suite, v)?,
            None => vec![apt_root.join(DEFAULT_KEYRING)],
        };
        let is_main = MAIN_ARCHIVE_SUITES.contains(&suite);
        let override_uri = if is_main {
            mirrors.main.as_deref()
        } else {
            mirrors.security.as_deref()
        };
        let uri = match (override_uri, entry) {
            (Some(o), Some(_)) => o.to_string(),
            (Some(o), None) if is_main && !main_configured => o.to_string(),
            (Some(o), None) if !is_main => o.to_string(),
            (None, Some(e)) => e.uri.clone(),
            _ => continue,
        };
        out.push(SuiteSource {
            suite: suite.to_string(),
            uri: uri.trim_end_matches('/').to_string(),
            keyrings,
        });
    }
    if out.is_empty() {
        return Err(SourceError::NoDebianSource {
            apt_root: apt_root.to_path_buf(),
        });
    }
    Ok(out)
}

/// Whether apt is configured to check `Valid-Until` (`Acquire::Check-Valid-Until`, default
/// true) in `etc/apt/apt.conf` and `etc/apt/apt.conf.d/*`. A cheap line match, not a full
/// apt.conf parser.
pub fn apt_checks_valid_until(apt_root: &Path) -> bool {
    let mut files = vec![apt_root.join("etc/apt/apt.conf")];
    files.extend(sorted_dir(&apt_root.join("etc/apt/apt.conf.d")));
    let mut check = true;
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        for line in text.lines().map(str::trim) {
            if line.starts_with("//") || line.starts_with('#') {
                continue;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(rest) = lower.strip_prefix("acquire::check-valid-until") {
                let v = rest.trim().trim_end_matches(';').trim().trim_matches('"');
                check = !matches!(v, "false" | "no" | "0" | "off");
            }
        }
    }
    check
}

fn usable(e: &Entry, arch: &str) -> bool {
    e.components.iter().any(|c| c == "main")
        && (e.architectures.is_empty() || e.architectures.iter().any(|a| a == arch))
}

fn keyring_paths(apt_root: &Path, suite: &str, value: &str) -> Result<Vec<PathBuf>, SourceError> {
    let parts: Vec<&str> = value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() || value.contains("BEGIN PGP") || parts.iter().any(|p| !p.starts_with('/'))
    {
        return Err(SourceError::UnsupportedSignedBy {
            suite: suite.to_string(),
            value: value.lines().next().unwrap_or_default().to_string(),
        });
    }
    Ok(parts
        .iter()
        .map(|p| apt_root.join(p.trim_start_matches('/')))
        .collect())
}

fn sorted_dir(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn read_entries(apt_root: &Path) -> Result<Vec<Entry>, SourceError> {
    let mut entries = Vec::new();
    let main = apt_root.join("etc/apt/sources.list");
    if main.exists() {
        entries.extend(one_line_entries(&read(&main)?));
    }
    for path in sorted_dir(&apt_root.join("etc/apt/sources.list.d")) {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".list") {
            entries.extend(one_line_entries(&read(&path)?));
        } else if name.ends_with(".sources") {
            entries.extend(deb822_entries(&read(&path)?));
        }
    }
    Ok(entries)
}

fn read(path: &Path) -> Result<String, SourceError> {
    fs::read_to_string(path).map_err(|source| SourceError::ReadAptSources {
        path: path.to_path_buf(),
        source,
    })
}

/// `deb [opt=v ...] uri suite component...` lines.
fn one_line_entries(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let Some(rest) = line
            .strip_prefix("deb ")
            .or_else(|| line.strip_prefix("deb\t"))
        else {
            continue;
        };
        let rest = rest.trim_start();
        let (options, rest) = match rest.strip_prefix('[') {
            Some(r) => match r.split_once(']') {
                Some((opts, after)) => (opts, after),
                None => continue,
            },
            None => ("", rest),
        };
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        let mut entry = Entry {
            uri: uri.to_string(),
            suites: vec![suite.trim_end_matches('/').to_string()],
            components: words.map(str::to_string).collect(),
            architectures: Vec::new(),
            signed_by: None,
        };
        for opt in options.split_whitespace() {
            match opt.split_once('=') {
                Some(("arch", v)) => {
                    entry.architectures = v.split(',').map(str::to_string).collect()
                }
                Some(("signed-by", v)) => entry.signed_by = Some(v.to_string()),
                _ => {}
            }
        }
        out.push(entry);
    }
    out
}

/// deb822 `.sources` stanzas.
fn deb822_entries(text: &str) -> Vec<Entry> {
    let cleaned = deb822::strip_comments(text);
    let mut out = Vec::new();
    for stanza in deb822::stanzas(&cleaned) {
        let list = |k: &str| -> Vec<String> {
            stanza
                .get(k)
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        };
        let enabled = stanza
            .get("Enabled")
            .map(|v| !matches!(v.to_ascii_lowercase().as_str(), "no" | "false" | "0"))
            .unwrap_or(true);
        if !enabled || !list("Types").iter().any(|t| t == "deb") {
            continue;
        }
        for uri in list("URIs") {
            out.push(Entry {
                uri,
                suites: list("Suites")
                    .into_iter()
                    .map(|s| s.trim_end_matches('/').to_string())
                    .collect(),
                components: list("Components"),
                architectures: list("Architectures"),
                signed_by: stanza.get("Signed-By").map(str::to_string),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (path, text) in files {
            let p = dir.path().join(path);
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            fs::write(p, text).expect("write");
        }
        dir
    }

    const DEB822: &str = "\
Types: deb
# http://snapshot.invalid/archive/debian/20250520T000000Z
URIs: http://mirror.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://mirror.invalid/debian-security/
Suites: bookworm-security
Components: main contrib
Signed-By: /etc/apt/keyrings/security.gpg

Types: deb
URIs: http://mirror.invalid/backports
Suites: bookworm-backports
Components: main
";

    #[test]
    fn deb822_sources_give_all_three_suites_with_their_keyrings() {
        let root = root_with(&[("etc/apt/sources.list.d/debian.sources", DEB822)]);
        let got = suite_sources(root.path(), "amd64", &MirrorOverride::default()).expect("sources");
        let names: Vec<_> = got.iter().map(|s| s.suite.as_str()).collect();
        assert_eq!(names, DEBIAN_SUITES);
        assert_eq!(got[0].uri, "http://mirror.invalid/debian");
        assert_eq!(got[1].uri, "http://mirror.invalid/debian");
        assert_eq!(got[2].uri, "http://mirror.invalid/debian-security");
        assert_eq!(
            got[0].keyrings,
            vec![root
                .path()
                .join("usr/share/keyrings/debian-archive-keyring.gpg")]
        );
        assert_eq!(
            got[2].keyrings,
            vec![root.path().join("etc/apt/keyrings/security.gpg")]
        );
    }

    #[test]
    fn one_line_sources_honour_options_comments_and_skip_other_entries() {
        let list = "\
# deb http://commented.invalid/debian bookworm main
deb-src http://src.invalid/debian bookworm main
deb [arch=arm64] http://arm.invalid/debian bookworm main
deb http://nomain.invalid/debian bookworm contrib
deb [ arch=amd64 signed-by=/etc/apt/keyrings/k.gpg ] http://one.invalid/debian bookworm main # trailing
deb http://other.invalid/debian trixie main
";
        let root = root_with(&[
            ("etc/apt/sources.list", list),
            (
                "etc/apt/sources.list.d/sec.list",
                "deb http://sec.invalid/debian-security bookworm-security main\n",
            ),
            (
                "etc/apt/sources.list.d/old.list.disabled-by-farm",
                "deb http://disabled.invalid/debian bookworm-updates main\n",
            ),
        ]);
        let got = suite_sources(root.path(), "amd64", &MirrorOverride::default()).expect("sources");
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].suite, "bookworm");
        assert_eq!(got[0].uri, "http://one.invalid/debian");
        assert_eq!(
            got[0].keyrings,
            vec![root.path().join("etc/apt/keyrings/k.gpg")]
        );
        assert_eq!(got[1].suite, "bookworm-security");
        assert_eq!(got[1].uri, "http://sec.invalid/debian-security");
    }

    #[test]
    fn disabled_stanzas_and_disabled_files_leave_no_source() {
        let root = root_with(&[
            (
                "etc/apt/sources.list.d/debian.sources",
                "Types: deb\nURIs: http://m.invalid/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n",
            ),
            ("etc/apt/sources.list.d/x.sources.disabled", DEB822),
        ]);
        let err = suite_sources(root.path(), "amd64", &MirrorOverride::default()).unwrap_err();
        assert!(matches!(err, SourceError::NoDebianSource { .. }), "{err}");
        assert!(err.to_string().contains("--mirror"));
    }

    #[test]
    fn mirror_override_replaces_the_main_archive_but_keeps_security() {
        let root = root_with(&[("etc/apt/sources.list.d/debian.sources", DEB822)]);
        let mirrors = MirrorOverride {
            main: Some("http://127.0.0.1:9/debian/".into()),
            security: None,
        };
        let got = suite_sources(root.path(), "amd64", &mirrors).expect("sources");
        assert_eq!(got[0].uri, "http://127.0.0.1:9/debian");
        assert_eq!(got[1].uri, "http://127.0.0.1:9/debian");
        assert_eq!(got[2].uri, "http://mirror.invalid/debian-security");
        let both = MirrorOverride {
            main: Some("http://127.0.0.1:9/debian".into()),
            security: Some("http://127.0.0.1:9/security".into()),
        };
        let got = suite_sources(root.path(), "amd64", &both).expect("sources");
        assert_eq!(got[2].uri, "http://127.0.0.1:9/security");
    }

    #[test]
    fn mirror_override_works_without_any_apt_config() {
        let root = root_with(&[]);
        let mirrors = MirrorOverride {
            main: Some("http://127.0.0.1:9/debian".into()),
            security: None,
        };
        let got = suite_sources(root.path(), "amd64", &mirrors).expect("sources");
        let names: Vec<_> = got.iter().map(|s| s.suite.as_str()).collect();
        assert_eq!(names, ["bookworm", "bookworm-updates"]);
    }

    #[test]
    fn inline_signed_by_keys_are_refused_clearly() {
        let root = root_with(&[(
            "etc/apt/sources.list.d/d.sources",
            "Types: deb\nURIs: http://m.invalid/debian\nSuites: bookworm\nComponents: main\nSigned-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n abc\n",
        )]);
        let err = suite_sources(root.path(), "amd64", &MirrorOverride::default()).unwrap_err();
        assert!(
            matches!(err, SourceError::UnsupportedSignedBy { .. }),
            "{err}"
        );
    }

    #[test]
    fn valid_until_checking_follows_apt_conf() {
        let root = root_with(&[]);
        assert!(apt_checks_valid_until(root.path()));
        let root = root_with(&[(
            "etc/apt/apt.conf.d/99x",
            "Acquire::Check-Valid-Until \"false\";\n",
        )]);
        assert!(!apt_checks_valid_until(root.path()));
    }
}
