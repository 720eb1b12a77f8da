//! Reading Debian binary packages (`.deb`) without `dpkg`, `ar` or `tar` binaries.
//!
//! A `.deb` is an `ar` archive of three members: `debian-binary` (`2.0\n`),
//! `control.tar[.gz|.xz|.zst]` and `data.tar[.gz|.xz|.zst]`. [`Deb::open`] checks the format
//! and parses the `control` file; [`Deb::extract`] streams `data.tar` once through its
//! decompressor and copies the entries accepted by a [`Filter`] into a [`Tree`]. Nothing is
//! written to disk and `data.tar` is never held in memory whole: entries that do not match are
//! skipped as they stream past (their bytes still have to be decompressed, which is the cost
//! floor of a compressed tar).
//!
//! What is kept of each entry: its path (leading `./` removed), its permission bits (including
//! setuid/setgid/sticky), symlink targets verbatim, and the contents of regular files. Hard
//! links become independent copies of their target's contents (the target is fetched in a
//! second pass if the filter did not select it). Owners and timestamps are dropped, so the
//! result depends only on the package's bytes. Device nodes and FIFOs are skipped: no Debian
//! package this project uses ships one, and [`Tree`] cannot hold them.
//!
//! Directories that match the filter are stored with their own mode; parents created only to
//! hold a matching entry get `0755` (see [`Tree::insert_file`]).
//!
//! ## Filter patterns
//!
//! A [`Filter`] is a list of `/`-separated patterns matched against whole paths
//! (`usr/bin/etcd`, no leading `/` needed). Within one segment `*` matches any run of
//! characters and `?` one character, never a `/`. A segment that is exactly `**` matches zero
//! or more whole segments, so `lib/modules/*/kernel/drivers/virtio/**` selects that directory
//! and everything below it. There is no escaping and no character classes.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::tree::{normalize, Tree};

/// Failure while reading a `.deb`; every variant names the package file.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("cannot open package {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the ar archive of {path}")]
    ReadArchive {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a debian binary package: {reason}")]
    NotADeb { path: PathBuf, reason: &'static str },
    #[error("member {member} of {path} uses an unsupported compression")]
    UnsupportedCompression { path: PathBuf, member: String },
    #[error("cannot read member {member} of {path}")]
    ReadMember {
        path: PathBuf,
        member: String,
        #[source]
        source: io::Error,
    },
    #[error("control file of {path} is malformed at line {line}")]
    ParseControl { path: PathBuf, line: usize },
    #[error("{path} holds a path or link target that is not utf-8")]
    NonUtf8Path { path: PathBuf },
    #[error("hard link {link} in {path} points to {target}, which the package does not hold")]
    DanglingHardlink {
        path: PathBuf,
        link: String,
        target: String,
    },
}

/// A pattern that [`Filter::new`] rejected.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("empty filter pattern")]
    EmptyPattern,
    #[error("filter pattern {pattern:?}: `**` must be a whole path segment")]
    DoubleStarInSegment { pattern: String },
}

/// A set of include patterns (see the module doc for the syntax).
#[derive(Clone, Debug)]
pub struct Filter {
    /// `None` accepts every path.
    patterns: Option<Vec<Vec<Segment>>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// `**`: zero or more whole segments.
    AnyDepth,
    /// A single segment with optional `*` / `?` wildcards.
    Glob(String),
}

impl Filter {
    /// Builds a filter accepting paths that match any of `patterns`.
    pub fn new(patterns: &[&str]) -> Result<Filter, FilterError> {
        let mut parsed = Vec::with_capacity(patterns.len());
        for pattern in patterns {
            let norm = normalize(pattern);
            if norm.is_empty() {
                return Err(FilterError::EmptyPattern);
            }
            let mut segments = Vec::new();
            for seg in norm.split('/') {
                if seg == "**" {
                    segments.push(Segment::AnyDepth);
                } else if seg.contains("**") {
                    return Err(FilterError::DoubleStarInSegment {
                        pattern: pattern.to_string(),
                    });
                } else {
                    segments.push(Segment::Glob(seg.to_string()));
                }
            }
            parsed.push(segments);
        }
        Ok(Filter {
            patterns: Some(parsed),
        })
    }

    /// A filter that accepts every path.
    pub fn all() -> Filter {
        Filter { patterns: None }
    }

    /// Whether `path` (normalised first) matches one of the patterns.
    pub fn matches(&self, path: &str) -> bool {
        let Some(patterns) = &self.patterns else {
            return true;
        };
        let norm = normalize(path);
        let segs: Vec<&str> = norm.split('/').collect();
        patterns.iter().any(|p| match_segments(p, &segs))
    }
}

fn match_segments(pattern: &[Segment], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((Segment::AnyDepth, rest)) => {
            (0..=path.len()).any(|skip| match_segments(rest, &path[skip..]))
        }
        Some((Segment::Glob(glob), rest)) => match path.split_first() {
            Some((first, tail)) => glob_segment(glob, first) && match_segments(rest, tail),
            None => false,
        },
    }
}

/// Wildcard match of one segment: `*` is any run of characters, `?` exactly one.
pub(crate) fn glob_segment(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Position of the last `*` seen and the text index it was tried at (for backtracking).
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// An opened `.deb`: its control fields and where its data archive is.
#[derive(Clone, Debug)]
pub struct Deb {
    path: PathBuf,
    control: BTreeMap<String, String>,
    data_member: String,
}

impl Deb {
    /// Opens a package, checks `debian-binary` and parses the `control` file.
    ///
    /// `data.tar` is located but not read.
    pub fn open(path: &Path) -> Result<Deb, DebError> {
        let file = File::open(path).map_err(|source| DebError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut archive = ar::Archive::new(BufReader::new(file));
        let mut version_ok = false;
        let mut control = None;
        let mut data_member = None;
        while let Some(entry) = archive.next_entry() {
            let mut entry = entry.map_err(|source| DebError::ReadArchive {
                path: path.to_path_buf(),
                source,
            })?;
            let name = member_name(entry.header().identifier());
            if name == "debian-binary" {
                let mut text = String::new();
                entry
                    .by_ref()
                    .take(64)
                    .read_to_string(&mut text)
                    .map_err(|source| read_member(path, &name, source))?;
                version_ok = text.starts_with("2.");
            } else if name.starts_with("control.tar") {
                let reader = decoder(path, &name, &mut entry)?;
                control = Some(read_control(path, &name, reader)?);
            } else if name.starts_with("data.tar") {
                // Make sure the compression is one we can read, then skip its bytes.
                decoder(path, &name, io::empty())?;
                entry
                    .seek(SeekFrom::End(0))
                    .map_err(|source| read_member(path, &name, source))?;
                data_member = Some(name);
                break;
            }
        }
        let not_a_deb = |reason| DebError::NotADeb {
            path: path.to_path_buf(),
            reason,
        };
        if !version_ok {
            return Err(not_a_deb("missing or unknown debian-binary"));
        }
        Ok(Deb {
            path: path.to_path_buf(),
            control: control.ok_or_else(|| not_a_deb("no control.tar member"))?,
            data_member: data_member.ok_or_else(|| not_a_deb("no data.tar member"))?,
        })
    }

    /// The package file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fields of the `control` file (`Package`, `Version`, `Depends`, …). Continuation lines of
    /// multi-line fields are joined with `\n`, as written (minus their leading space).
    pub fn control(&self) -> &BTreeMap<String, String> {
        &self.control
    }

    /// Every path in `data.tar`, normalised, in archive order (directories included, the
    /// archive's root `./` left out).
    pub fn paths(&self) -> Result<Vec<String>, DebError> {
        let mut out = Vec::new();
        self.for_each_data_entry(|path, _entry| {
            if !path.is_empty() {
                out.push(path.to_string());
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Copies the `data.tar` entries accepted by `filter` into `into` and returns how many
    /// entries were copied. Existing entries of `into` at the same paths are replaced.
    pub fn extract(&self, filter: &Filter, into: &mut Tree) -> Result<usize, DebError> {
        let mut count = 0;
        // Contents of regular files copied so far, for hard links to them.
        let mut files: HashMap<String, (u32, Arc<Vec<u8>>)> = HashMap::new();
        // Hard links whose target was not selected: (link, target, mode).
        let mut pending: Vec<(String, String, u32)> = Vec::new();
        self.for_each_data_entry(|path, entry| {
            if path.is_empty() || !filter.matches(path) {
                return Ok(());
            }
            let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let mut data = Vec::with_capacity(entry.size() as usize);
                    entry
                        .read_to_end(&mut data)
                        .map_err(|source| read_member(&self.path, &self.data_member, source))?;
                    let data = Arc::new(data);
                    into.insert_file(path, mode, data.clone());
                    files.insert(path.to_string(), (mode, data));
                }
                tar::EntryType::Directory => into.insert_dir(path, mode),
                tar::EntryType::Symlink => {
                    let target = self.link_target(entry)?;
                    into.insert_symlink(path, &target);
                }
                tar::EntryType::Link => {
                    let target = normalize(&self.link_target(entry)?);
                    match files.get(&target) {
                        Some((_, data)) => into.insert_file(path, mode, data.clone()),
                        None => {
                            pending.push((path.to_string(), target, mode));
                            return Ok(());
                        }
                    }
                }
                _ => return Ok(()),
            }
            count += 1;
            Ok(())
        })?;
        if !pending.is_empty() {
            count += self.resolve_hardlinks(&pending, into)?;
        }
        Ok(count)
    }

    /// Second pass for hard links whose targets the filter left out.
    fn resolve_hardlinks(
        &self,
        pending: &[(String, String, u32)],
        into: &mut Tree,
    ) -> Result<usize, DebError> {
        let wanted: BTreeMap<&str, ()> = pending.iter().map(|(_, t, _)| (t.as_str(), ())).collect();
        let mut found: HashMap<String, Arc<Vec<u8>>> = HashMap::new();
        self.for_each_data_entry(|path, entry| {
            if wanted.contains_key(path) && entry.header().entry_type().is_file() {
                let mut data = Vec::new();
                entry
                    .read_to_end(&mut data)
                    .map_err(|source| read_member(&self.path, &self.data_member, source))?;
                found.insert(path.to_string(), Arc::new(data));
            }
            Ok(())
        })?;
        for (link, target, mode) in pending {
            let data = found
                .get(target)
                .ok_or_else(|| DebError::DanglingHardlink {
                    path: self.path.clone(),
                    link: link.clone(),
                    target: target.clone(),
                })?;
            into.insert_file(link, *mode, data.clone());
        }
        Ok(pending.len())
    }

    fn link_target<R: Read>(&self, entry: &tar::Entry<R>) -> Result<String, DebError> {
        let bytes = entry.link_name_bytes().unwrap_or_default();
        String::from_utf8(bytes.into_owned()).map_err(|_| DebError::NonUtf8Path {
            path: self.path.clone(),
        })
    }

    /// Streams `data.tar`, calling `visit` with each entry's normalised path.
    fn for_each_data_entry(
        &self,
        mut visit: impl FnMut(&str, &mut tar::Entry<Box<dyn Read + '_>>) -> Result<(), DebError>,
    ) -> Result<(), DebError> {
        let file = File::open(&self.path).map_err(|source| DebError::Open {
            path: self.path.clone(),
            source,
        })?;
        let mut archive = ar::Archive::new(BufReader::new(file));
        while let Some(entry) = archive.next_entry() {
            let mut entry = entry.map_err(|source| DebError::ReadArchive {
                path: self.path.clone(),
                source,
            })?;
            if member_name(entry.header().identifier()) != self.data_member {
                continue;
            }
            let reader = decoder(&self.path, &self.data_member, &mut entry)?;
            let mut tar = tar::Archive::new(reader);
            let read_err = |source| read_member(&self.path, &self.data_member, source);
            for item in tar.entries().map_err(read_err)? {
                let mut item = item.map_err(read_err)?;
                let raw = item.path_bytes();
                let path =
                    normalize(
                        std::str::from_utf8(&raw).map_err(|_| DebError::NonUtf8Path {
                            path: self.path.clone(),
                        })?,
                    );
                visit(&path, &mut item)?;
            }
            return Ok(());
        }
        Err(DebError::NotADeb {
            path: self.path.clone(),
            reason: "data.tar member disappeared",
        })
    }
}

fn member_name(identifier: &[u8]) -> String {
    String::from_utf8_lossy(identifier)
        .trim_end_matches('/')
        .to_string()
}

fn read_member(path: &Path, member: &str, source: io::Error) -> DebError {
    DebError::ReadMember {
        path: path.to_path_buf(),
        member: member.to_string(),
        source,
    }
}

/// Wraps a member's bytes in the decompressor its name calls for.
fn decoder<'a, R: Read + 'a>(
    path: &Path,
    member: &str,
    raw: R,
) -> Result<Box<dyn Read + 'a>, DebError> {
    let ext = member
        .strip_prefix("control.tar")
        .or_else(|| member.strip_prefix("data.tar"))
        .unwrap_or(member);
    Ok(match ext {
        "" => Box::new(raw),
        ".gz" => Box::new(flate2::read::GzDecoder::new(raw)),
        ".xz" => Box::new(xz2::read::XzDecoder::new_multi_decoder(raw)),
        ".zst" => Box::new(
            zstd::stream::read::Decoder::new(raw)
                .map_err(|source| read_member(path, member, source))?,
        ),
        _ => {
            return Err(DebError::UnsupportedCompression {
                path: path.to_path_buf(),
                member: member.to_string(),
            })
        }
    })
}

/// Finds `./control` in the control archive and parses its fields.
fn read_control(
    path: &Path,
    member: &str,
    reader: Box<dyn Read + '_>,
) -> Result<BTreeMap<String, String>, DebError> {
    let mut tar = tar::Archive::new(reader);
    let read_err = |source| read_member(path, member, source);
    for item in tar.entries().map_err(read_err)? {
        let mut item = item.map_err(read_err)?;
        if normalize(&String::from_utf8_lossy(&item.path_bytes())) != "control" {
            continue;
        }
        let mut text = String::new();
        item.read_to_string(&mut text).map_err(read_err)?;
        return parse_control(&text).map_err(|line| DebError::ParseControl {
            path: path.to_path_buf(),
            line,
        });
    }
    Err(DebError::NotADeb {
        path: path.to_path_buf(),
        reason: "control.tar has no control file",
    })
}

/// Parses deb822 fields; the error is the 1-based number of the offending line.
fn parse_control(text: &str) -> Result<BTreeMap<String, String>, usize> {
    let mut fields = BTreeMap::new();
    let mut current: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            let key = current.as_ref().ok_or(i + 1)?;
            let value: &mut String = fields.get_mut(key).ok_or(i + 1)?;
            value.push('\n');
            value.push_str(&line[1..]);
            continue;
        }
        let (key, value) = line.split_once(':').ok_or(i + 1)?;
        let key = key.trim().to_string();
        fields.insert(key.clone(), value.trim().to_string());
        current = Some(key);
    }
    Ok(fields)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::build::tree::Entry;

    /// One member of a synthetic data.tar.
    pub(crate) enum Item<'a> {
        Dir(&'a str, u32),
        File(&'a str, u32, &'a [u8]),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
    }

    pub(crate) fn tar_of(items: &[Item]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for item in items {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(1_700_000_000);
            match item {
                Item::Dir(p, mode) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    h.set_size(0);
                    b.append_data(&mut h, format!("./{p}/"), io::empty())
                        .unwrap();
                }
                Item::File(p, mode, data) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, format!("./{p}"), *data).unwrap();
                }
                Item::Symlink(p, target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, format!("./{p}"), target).unwrap();
                }
                Item::Hardlink(p, target) => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_link(&mut h, format!("./{p}"), format!("./{target}"))
                        .unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn compress(ext: &str, data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        match ext {
            "" => data.to_vec(),
            ".gz" => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            ".xz" => {
                let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            ".zst" => zstd::encode_all(data, 1).unwrap(),
            other => panic!("unknown test compression {other}"),
        }
    }

    /// Writes a synthetic `.deb` to `dir/name.deb` and returns its path.
    pub(crate) fn write_deb(
        dir: &Path,
        name: &str,
        control: &str,
        ext: &str,
        items: &[Item],
    ) -> PathBuf {
        let control_tar = tar_of(&[Item::File("control", 0o644, control.as_bytes())]);
        let data_tar = tar_of(items);
        let mut ar = ar::Builder::new(Vec::new());
        let mut add = |id: &str, bytes: Vec<u8>| {
            let header = ar::Header::new(id.as_bytes().to_vec(), bytes.len() as u64);
            ar.append(&header, bytes.as_slice()).unwrap();
        };
        add("debian-binary", b"2.0\n".to_vec());
        add(&format!("control.tar{ext}"), compress(ext, &control_tar));
        add(&format!("data.tar{ext}"), compress(ext, &data_tar));
        let path = dir.join(format!("{name}.deb"));
        std::fs::write(&path, ar.into_inner().unwrap()).unwrap();
        path
    }

    const CONTROL: &str =
        "Package: demo\nVersion: 1.2-3\nDescription: a demo\n line two\n .\n line four\n";

    fn sample_items() -> Vec<Item<'static>> {
        vec![
            Item::Dir(".", 0o755),
            Item::Dir("usr", 0o755),
            Item::Dir("usr/bin", 0o755),
            Item::File("usr/bin/etcd", 0o755, b"ELF etcd"),
            Item::Hardlink("usr/bin/etcd-alias", "usr/bin/etcd"),
            Item::File("usr/bin/sudoish", 0o4755, b"suid"),
            Item::Dir("usr/lib", 0o755),
            Item::File("usr/lib/libseccomp.so.2.5.4", 0o644, b"lib"),
            Item::Symlink("usr/lib/libseccomp.so.2", "libseccomp.so.2.5.4"),
            Item::Dir("usr/share/doc", 0o755),
            Item::File("usr/share/doc/copyright", 0o644, b"(c)"),
            Item::Dir("tmp", 0o1777),
        ]
    }

    #[test]
    fn control_fields_and_paths_are_read_for_every_compression() {
        let dir = tempfile::tempdir().unwrap();
        for ext in ["", ".gz", ".xz", ".zst"] {
            let path = write_deb(
                dir.path(),
                &format!("d{}", ext.len()),
                CONTROL,
                ext,
                &sample_items(),
            );
            let deb = Deb::open(&path).unwrap();
            assert_eq!(deb.control()["Package"], "demo", "{ext}");
            assert_eq!(deb.control()["Version"], "1.2-3");
            assert_eq!(
                deb.control()["Description"],
                "a demo\nline two\n.\nline four"
            );
            let paths = deb.paths().unwrap();
            // The archive root `./` is not a path of its own.
            assert_eq!(paths.len(), sample_items().len() - 1, "{ext}");
            assert_eq!(paths[0], "usr");
            assert_eq!(paths[2], "usr/bin/etcd");
        }
    }

    #[test]
    fn extraction_keeps_modes_symlinks_and_copies_hardlinks() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_deb(dir.path(), "x", CONTROL, ".xz", &sample_items());
        let mut tree = Tree::new();
        let n = Deb::open(&path)
            .unwrap()
            .extract(&Filter::all(), &mut tree)
            .unwrap();
        assert_eq!(n, sample_items().len() - 1);
        assert_eq!(
            tree.get("usr/bin/etcd-alias"),
            Some(&Entry::File {
                mode: 0o755,
                data: Arc::new(b"ELF etcd".to_vec())
            })
        );
        assert!(matches!(
            tree.get("usr/bin/sudoish"),
            Some(Entry::File { mode: 0o4755, .. })
        ));
        assert_eq!(
            tree.get("usr/lib/libseccomp.so.2"),
            Some(&Entry::Symlink {
                target: "libseccomp.so.2.5.4".into()
            })
        );
        assert_eq!(tree.get("tmp"), Some(&Entry::Dir { mode: 0o1777 }));
    }

    #[test]
    fn a_hardlink_whose_target_is_filtered_out_still_gets_the_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_deb(dir.path(), "h", CONTROL, ".zst", &sample_items());
        let mut tree = Tree::new();
        let filter = Filter::new(&["usr/bin/etcd-alias"]).unwrap();
        let n = Deb::open(&path)
            .unwrap()
            .extract(&filter, &mut tree)
            .unwrap();
        assert_eq!(n, 1);
        assert!(!tree.contains("usr/bin/etcd"));
        assert!(
            matches!(tree.get("usr/bin/etcd-alias"), Some(Entry::File { data, .. }) if **data == b"ELF etcd")
        );
    }

    #[test]
    fn the_filter_selects_only_matching_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_deb(dir.path(), "f", CONTROL, ".gz", &sample_items());
        let mut tree = Tree::new();
        let filter = Filter::new(&["usr/bin/etcd", "/usr/lib/libseccomp.so.*"]).unwrap();
        Deb::open(&path)
            .unwrap()
            .extract(&filter, &mut tree)
            .unwrap();
        let paths: Vec<&str> = tree.iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "usr",
                "usr/bin",
                "usr/bin/etcd",
                "usr/lib",
                "usr/lib/libseccomp.so.2",
                "usr/lib/libseccomp.so.2.5.4"
            ]
        );
    }

    #[test]
    fn extracting_twice_gives_identical_trees() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_deb(dir.path(), "r", CONTROL, ".xz", &sample_items());
        let deb = Deb::open(&path).unwrap();
        let (mut a, mut b) = (Tree::new(), Tree::new());
        deb.extract(&Filter::all(), &mut a).unwrap();
        deb.extract(&Filter::all(), &mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn globs_match_within_a_segment_and_double_star_across_segments() {
        let f = Filter::new(&[
            "lib/modules/*/kernel/drivers/virtio/**",
            "usr/lib/*/libc.so.?",
        ])
        .unwrap();
        assert!(f.matches("lib/modules/6.1.0-56-cloud-amd64/kernel/drivers/virtio"));
        assert!(f.matches("./lib/modules/6.1/kernel/drivers/virtio/virtio_pci.ko"));
        assert!(f.matches("lib/modules/6.1/kernel/drivers/virtio/a/b/c.ko"));
        assert!(!f.matches("lib/modules/6.1/extra/kernel/drivers/virtio/x.ko"));
        assert!(!f.matches("lib/modules/6.1/kernel/drivers/net/virtio_net.ko"));
        assert!(f.matches("usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(!f.matches("usr/lib/x86_64-linux-gnu/libc.so.66"));
        assert!(!f.matches("usr/lib/a/b/libc.so.6"));
        assert!(Filter::new(&["a/**/b/*.conf"])
            .unwrap()
            .matches("a/b/x.conf"));
        assert!(Filter::new(&["a/**/b/*.conf"])
            .unwrap()
            .matches("a/1/2/b/x.conf"));
    }

    #[test]
    fn bad_patterns_are_rejected() {
        assert!(matches!(
            Filter::new(&["/"]),
            Err(FilterError::EmptyPattern)
        ));
        assert!(matches!(
            Filter::new(&["a/b**"]),
            Err(FilterError::DoubleStarInSegment { .. })
        ));
    }

    #[test]
    fn a_file_that_is_not_a_deb_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bogus.deb");
        std::fs::write(&path, b"!<arch>\nnot really").unwrap();
        assert!(Deb::open(&path).is_err());
        std::fs::write(&path, b"hello").unwrap();
        assert!(matches!(
            Deb::open(&path),
            Err(DebError::ReadArchive { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn a_literal_pattern_matches_exactly_its_own_path(
            path in "[a-z0-9_-][a-z0-9._-]{0,7}(/[a-z0-9_-][a-z0-9._-]{0,7}){0,4}",
            other in "[a-z0-9_-][a-z0-9._-]{0,7}(/[a-z0-9_-][a-z0-9._-]{0,7}){0,4}",
        ) {
            let f = Filter::new(&[path.as_str()]).unwrap();
            proptest::prop_assert!(f.matches(&path));
            proptest::prop_assert_eq!(f.matches(&other), normalize(&other) == normalize(&path));
        }

        #[test]
        fn a_star_segment_matches_any_single_segment(seg in "[a-zA-Z0-9._-]{0,12}") {
            proptest::prop_assert!(glob_segment("*", &seg));
            let name = format!("{seg}.so.1");
            proptest::prop_assert!(glob_segment("*.so*", &name));
        }
    }
}
