//! Verifying a suite's `InRelease` with gpgv and reading the signed `Release` text.
//!
//! The clearsigned `InRelease` is piped into `gpgv --status-fd 2 --output - --keyring K…`.
//! It is accepted only if gpgv exits 0 and its status lines contain at least one `VALIDSIG`
//! and no `BADSIG`, `ERRSIG`, `EXPKEYSIG` or `REVKEYSIG`. The Release text used afterwards is
//! gpgv's `--output` — exactly the bytes that were signed, never text around the signature
//! block. From it: `Codename` must equal the suite asked for (a validly signed Release of
//! another suite is refused), `Valid-Until` must not be in the past (unless disabled), and
//! the `SHA256` list gives the expected size and hash of each index file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use time::OffsetDateTime;

use super::error::SourceError;

/// The verified parts of a Release file.
#[derive(Debug)]
pub(crate) struct Release {
    /// path (e.g. `main/binary-amd64/Packages.xz`) → (size, sha256 hex).
    pub sha256: BTreeMap<String, (u64, String)>,
}

/// Runs gpgv over a clearsigned `InRelease` and returns the signed text.
pub(crate) fn verify_clearsigned(
    inrelease: &[u8],
    keyrings: &[PathBuf],
    what: &str,
) -> Result<String, SourceError> {
    let mut cmd = Command::new("gpgv");
    cmd.arg("--status-fd").arg("2").arg("--output").arg("-");
    for k in keyrings {
        cmd.arg("--keyring").arg(k);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C")
        .spawn()
        .map_err(SourceError::RunGpgv)?;
    let mut stdin = child.stdin.take().ok_or_else(|| {
        SourceError::RunGpgv(std::io::Error::other("gpgv stdin was not captured"))
    })?;
    let input = inrelease.to_vec();
    // Feed stdin from a thread so gpgv can stream its output without deadlocking.
    let writer = std::thread::spawn(move || {
        // A write error means gpgv exited early; its exit status tells why.
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().map_err(SourceError::RunGpgv)?;
    let _ = writer.join();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let status: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("[GNUPG:] "))
        .collect();
    let has = |kw: &str| {
        status
            .iter()
            .any(|l| l.split_whitespace().nth(1) == Some(kw))
    };
    let bad = ["BADSIG", "ERRSIG", "EXPKEYSIG", "REVKEYSIG"]
        .iter()
        .any(|k| has(k));
    if !output.status.success() || bad || !has("VALIDSIG") {
        let keyrings = keyrings
            .iter()
            .map(|k| k.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut shown: Vec<&str> = status.clone();
        if shown.is_empty() {
            shown = stderr.lines().collect();
        }
        return Err(SourceError::VerifySignature {
            what: what.to_string(),
            keyrings,
            status: format!("{}\n(exit: {})", shown.join("\n"), output.status),
        });
    }
    String::from_utf8(output.stdout).map_err(|_| SourceError::ParseRelease {
        suite: what.to_string(),
        reason: "signed text is not utf-8".into(),
    })
}

/// Parses the signed Release text of `suite` and applies the checks in the module doc.
pub(crate) fn parse_release(
    text: &str,
    suite: &str,
    check_valid_until: bool,
    now: OffsetDateTime,
) -> Result<Release, SourceError> {
    let malformed = |reason: String| SourceError::ParseRelease {
        suite: suite.to_string(),
        reason,
    };
    let stanzas = super::deb822::stanzas(text);
    let stanza = stanzas
        .first()
        .ok_or_else(|| malformed("no fields".into()))?;
    match stanza.get("Codename") {
        Some(c) if c == suite => {}
        other => {
            return Err(malformed(format!(
                "codename is {other:?}, expected {suite:?}"
            )))
        }
    }
    if check_valid_until {
        if let Some(v) = stanza.get("Valid-Until") {
            let until = parse_date(v).ok_or_else(|| malformed(format!("bad Valid-Until {v:?}")))?;
            if until < now {
                return Err(SourceError::ReleaseExpired {
                    suite: suite.to_string(),
                    valid_until: v.to_string(),
                });
            }
        }
    }
    let list = stanza
        .get("SHA256")
        .ok_or_else(|| malformed("no SHA256 field".into()))?;
    let mut sha256 = BTreeMap::new();
    for line in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut parts = line.split_whitespace();
        let (Some(hash), Some(size), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed(format!("bad SHA256 line {line:?}")));
        };
        let size: u64 = size
            .parse()
            .map_err(|_| malformed(format!("bad size in {line:?}")))?;
        if hash.len() != 64 || !hash.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(malformed(format!("bad sha256 in {line:?}")));
        }
        sha256.insert(path.to_string(), (size, hash.to_ascii_lowercase()));
    }
    Ok(Release { sha256 })
}

/// Parses an RFC 2822 style date as Release files write it: `Fri, 27 Nov 2026 00:12:41 UTC`.
fn parse_date(v: &str) -> Option<OffsetDateTime> {
    let w: Vec<&str> = v.split_whitespace().collect();
    let [_, day, month, year, hms, zone] = w.as_slice() else {
        return None;
    };
    if !matches!(*zone, "UTC" | "GMT" | "+0000" | "Z") {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(month))? as u8 + 1;
    let month = time::Month::try_from(m).ok()?;
    let date = time::Date::from_calendar_date(year.parse().ok()?, month, day.parse().ok()?).ok()?;
    let mut t = hms.split(':').map(|p| p.parse::<u8>());
    let (Some(Ok(h)), Some(Ok(mi)), Some(Ok(s))) = (t.next(), t.next(), t.next()) else {
        return None;
    };
    let time = time::Time::from_hms(h, mi, s).ok()?;
    Some(date.with_time(time).assume_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELEASE: &str = "\
Origin: Debian
Suite: oldstable-security
Codename: bookworm-security
Date: Fri, 20 Nov 2026 00:12:41 UTC
Valid-Until: Fri, 27 Nov 2026 00:12:41 UTC
SHA256:
 0000000000000000000000000000000000000000000000000000000000000001 12 main/binary-amd64/Packages
 00000000000000000000000000000000000000000000000000000000000000AB 34 main/binary-amd64/Packages.xz
";

    fn at(s: &str) -> OffsetDateTime {
        parse_date(s).expect("date")
    }

    #[test]
    fn release_sha256_list_is_parsed() {
        let r = parse_release(
            RELEASE,
            "bookworm-security",
            true,
            at("Sun, 22 Nov 2026 00:00:00 UTC"),
        )
        .expect("release");
        assert_eq!(
            r.sha256.get("main/binary-amd64/Packages.xz"),
            Some(&(
                34,
                "00000000000000000000000000000000000000000000000000000000000000ab".to_string()
            ))
        );
        assert_eq!(r.sha256.len(), 2);
    }

    #[test]
    fn an_expired_release_is_refused_unless_the_check_is_off() {
        let later = at("Sat, 28 Nov 2026 00:00:00 UTC");
        let err = parse_release(RELEASE, "bookworm-security", true, later).unwrap_err();
        assert!(matches!(err, SourceError::ReleaseExpired { .. }), "{err}");
        assert!(parse_release(RELEASE, "bookworm-security", false, later).is_ok());
    }

    #[test]
    fn a_release_of_another_suite_is_refused() {
        let err = parse_release(
            RELEASE,
            "bookworm",
            false,
            at("Sun, 22 Nov 2026 00:00:00 UTC"),
        )
        .unwrap_err();
        assert!(matches!(err, SourceError::ParseRelease { .. }), "{err}");
    }

    #[test]
    fn release_dates_parse_as_utc() {
        let t = at("Fri, 27 Nov 2026 00:12:41 UTC");
        assert_eq!(t.unix_timestamp(), 1_795_738_361);
        assert!(parse_date("Fri, 27 Nov 2026 00:12:41 CET").is_none());
        assert!(parse_date("garbage").is_none());
    }
}
