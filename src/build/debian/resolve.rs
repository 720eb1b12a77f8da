//! Choosing package versions: the named packages plus what their shared libraries need.
//!
//! Each named package resolves to its highest version across all configured suites (dpkg
//! order; on a tie the earlier suite wins). From there, Pre-Depends and Depends are followed
//! transitively, but only into library packages ([`is_library`]: `lib*`, `zlib*`): in each group of
//! alternatives the first one that can be satisfied is taken — an already chosen package if
//! its version fits, else the highest fitting real package, else a package that `Provides`
//! the name (for a versioned dependency, with a fitting provided version). A named package's
//! dependencies starting with `linux-image-` are followed one level too, so a kernel
//! metapackage (`linux-image-cloud-amd64`) brings its real, versioned kernel package.
//! One version is chosen per name. Dependencies that cannot be satisfied are skipped: the
//! image only needs files, and the later DT_NEEDED filter catches a truly missing library.
//! Limits: no Conflicts/Breaks, no pinning, no multi-arch beyond `<arch>` + `all`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use super::error::SourceError;
use super::packages::{BinaryPackage, Dependency};
use super::version;

/// Whether a package name is a shared-library package: `lib*`, plus the few library
/// packages Debian names otherwise (`zlib1g`).
pub fn is_library(name: &str) -> bool {
    name.starts_with("lib") || name.starts_with("zlib")
}

/// All packages of the configured suites for one architecture, by name and by provided name.
#[derive(Debug, Default)]
pub struct PackageIndex {
    by_name: HashMap<String, Vec<BinaryPackage>>,
    /// provided name → (provider package name, provided version).
    providers: HashMap<String, Vec<(String, Option<String>)>>,
}

/// A chosen package and the named packages whose closure it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub package: BinaryPackage,
    pub required_by: BTreeSet<String>,
}

impl PackageIndex {
    /// Builds the index, keeping packages of architecture `arch` or `all`.
    pub fn new(arch: &str, packages: impl IntoIterator<Item = BinaryPackage>) -> Self {
        let mut index = PackageIndex::default();
        for p in packages {
            if p.architecture != arch && p.architecture != "all" {
                continue;
            }
            for (virt, ver) in &p.provides {
                index
                    .providers
                    .entry(virt.clone())
                    .or_default()
                    .push((p.name.clone(), ver.clone()));
            }
            index.by_name.entry(p.name.clone()).or_default().push(p);
        }
        for list in index.providers.values_mut() {
            list.sort();
            list.dedup();
        }
        index
    }

    /// Number of (name, version, suite) entries.
    pub fn len(&self) -> usize {
        self.by_name.values().map(Vec::len).sum()
    }

    /// Whether the index holds no package.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The highest version of `name` that satisfies `constraint`.
    pub fn best(
        &self,
        name: &str,
        constraint: Option<&(String, String)>,
    ) -> Option<&BinaryPackage> {
        let mut best: Option<&BinaryPackage> = None;
        for p in self.by_name.get(name)? {
            if let Some((op, v)) = constraint {
                if !version::satisfies(&p.version, op, v) {
                    continue;
                }
            }
            if best.is_none_or(|b| version::compare(&p.version, &b.version).is_gt()) {
                best = Some(p);
            }
        }
        best
    }

    /// Up to five known names close to `name` (edit distance ≤ 2, or containing it).
    fn suggestions(&self, name: &str) -> Vec<String> {
        let mut scored: Vec<(usize, &String)> = self
            .by_name
            .keys()
            .filter_map(|k| {
                if let Some(d) = edit_distance_within(name, k, 2) {
                    Some((d, k))
                } else if k.contains(name) {
                    Some((3 + k.len() - name.len(), k))
                } else {
                    None
                }
            })
            .collect();
        scored.sort();
        scored.into_iter().take(5).map(|(_, k)| k.clone()).collect()
    }
}

/// Resolves `wanted` as described in the module doc; the result is sorted by name.
pub fn resolve(index: &PackageIndex, wanted: &[String]) -> Result<Vec<Resolved>, SourceError> {
    let mut chosen: BTreeMap<String, Resolved> = BTreeMap::new();
    for root in wanted {
        let pkg = index
            .best(root, None)
            .or_else(|| first_provider(index, &chosen, root, None))
            .ok_or_else(|| SourceError::PackageNotFound {
                name: root.clone(),
                suggestions: index.suggestions(root),
            })?
            .clone();
        // (package, is it a named package?)
        let mut queue = VecDeque::from([(pkg, true)]);
        let mut seen = BTreeSet::new();
        while let Some((pkg, named)) = queue.pop_front() {
            if !seen.insert(pkg.name.clone()) {
                continue;
            }
            let entry = chosen.entry(pkg.name.clone()).or_insert_with(|| Resolved {
                package: pkg.clone(),
                required_by: BTreeSet::new(),
            });
            entry.required_by.insert(root.clone());
            let deps = entry.package.depends();
            for group in &deps {
                let Some(dep) = pick_alternative(index, &chosen, group) else {
                    continue;
                };
                let follow =
                    is_library(&dep.name) || (named && dep.name.starts_with("linux-image-"));
                if follow {
                    queue.push_back((dep, false));
                }
            }
        }
    }
    Ok(chosen.into_values().collect())
}

fn pick_alternative(
    index: &PackageIndex,
    chosen: &BTreeMap<String, Resolved>,
    group: &[Dependency],
) -> Option<BinaryPackage> {
    for alt in group {
        let fits = |v: &str| {
            alt.constraint
                .as_ref()
                .is_none_or(|(op, r)| version::satisfies(v, op, r))
        };
        if let Some(r) = chosen.get(&alt.name) {
            if fits(&r.package.version) {
                return Some(r.package.clone());
            }
        }
        if let Some(p) = index.best(&alt.name, alt.constraint.as_ref()) {
            return Some(p.clone());
        }
        if let Some(p) = first_provider(index, chosen, &alt.name, alt.constraint.as_ref()) {
            return Some(p.clone());
        }
    }
    None
}

/// A real package providing `virtual_name` (preferring one already chosen).
fn first_provider<'a>(
    index: &'a PackageIndex,
    chosen: &BTreeMap<String, Resolved>,
    virtual_name: &str,
    constraint: Option<&(String, String)>,
) -> Option<&'a BinaryPackage> {
    let fitting: Vec<&String> = index
        .providers
        .get(virtual_name)?
        .iter()
        .filter(|(_, provided)| match (constraint, provided) {
            (None, _) => true,
            (Some((op, r)), Some(v)) => version::satisfies(v, op, r),
            (Some(_), None) => false,
        })
        .map(|(name, _)| name)
        .collect();
    let name = fitting
        .iter()
        .find(|n| chosen.contains_key(n.as_str()))
        .or_else(|| fitting.first())?;
    index.best(name, None)
}

/// Levenshtein distance if it is at most `max`.
fn edit_distance_within(a: &str, b: &str, max: usize) -> Option<usize> {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len().abs_diff(b.len()) > max {
        return None;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        if cur.iter().min().is_some_and(|m| *m > max) {
            return None;
        }
        prev = cur;
    }
    prev.last().copied().filter(|d| *d <= max)
}

#[cfg(test)]
mod tests {
    use super::super::packages::parse_packages;
    use super::*;

    fn stanza(name: &str, version: &str, extra: &str) -> String {
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: amd64\n{extra}\
             Filename: pool/main/{name}_{version}.deb\nSize: 10\n\
             SHA256: 0000000000000000000000000000000000000000000000000000000000000000\n\n"
        )
    }

    fn fixture() -> PackageIndex {
        let main = [
            stanza("runc", "1.1.5-1", "Depends: libc6 (>= 2.34), libseccomp2 (>= 2.5.0), adduser\n"),
            stanza("libc6", "2.36-9", "Depends: libgcc-s1\n"),
            stanza("libgcc-s1", "12.2.0-14", "Depends: gcc-12-base (= 12.2.0-14), libc6 (>= 2.35)\n"),
            stanza("gcc-12-base", "12.2.0-14", ""),
            stanza("libseccomp2", "2.5.4-1", ""),
            stanza("adduser", "3.134", "Depends: passwd\n"),
            stanza("passwd", "1:4.13", "Depends: libpam0g\n"),
            stanza("libpam0g", "1.5.2", ""),
            stanza("linux-image-cloud-amd64", "6.1.112-1", "Depends: linux-image-6.1.0-26-cloud-amd64 (= 6.1.112-1)\n"),
            stanza("linux-image-6.1.0-26-cloud-amd64", "6.1.112-1", "Depends: kmod, linux-base (>= 4.3~), initramfs-tools | linux-initramfs-tool\n"),
            stanza("nftables", "1.0.6-2", "Depends: libnftables1 (= 1.0.6-2), libmissing | libreadline-virtual (>= 8), libedit2\n"),
            stanza("libnftables1", "1.0.6-2", "Depends: libjansson4 (>= 2.14)\n"),
            stanza("libjansson4", "2.14-2", ""),
            stanza("libreadline8", "8.2-1", "Provides: libreadline-virtual (= 8.2)\n"),
            stanza("libreadline7", "7.0-5", "Provides: libreadline-virtual (= 7.0)\n"),
            stanza("libedit2", "3.1-1", ""),
            stanza("etcd-server", "3.4.23-4", ""),
        ]
        .concat();
        let security = [
            stanza(
                "linux-image-cloud-amd64",
                "6.1.115-1",
                "Depends: linux-image-6.1.0-27-cloud-amd64 (= 6.1.115-1)\n",
            ),
            stanza(
                "linux-image-6.1.0-27-cloud-amd64",
                "6.1.115-1",
                "Depends: kmod\n",
            ),
            stanza("libc6", "2.36-9+deb12u1", "Depends: libgcc-s1\n"),
        ]
        .concat();
        let mut all = parse_packages(&main, "bookworm");
        all.extend(parse_packages(&security, "bookworm-security"));
        all.extend(parse_packages(
            &stanza("arm-only", "1", "").replace("amd64", "arm64"),
            "bookworm",
        ));
        PackageIndex::new("amd64", all)
    }

    fn names(r: &[Resolved]) -> Vec<String> {
        r.iter()
            .map(|r| {
                format!(
                    "{}={}@{}",
                    r.package.name, r.package.version, r.package.suite
                )
            })
            .collect()
    }

    #[test]
    fn named_packages_bring_only_their_library_closure() {
        let got = resolve(&fixture(), &["runc".into()]).expect("resolve");
        assert_eq!(
            names(&got),
            [
                "libc6=2.36-9+deb12u1@bookworm-security",
                "libgcc-s1=12.2.0-14@bookworm",
                "libseccomp2=2.5.4-1@bookworm",
                "runc=1.1.5-1@bookworm",
            ]
        );
        assert!(got
            .iter()
            .all(|r| r.required_by == BTreeSet::from(["runc".to_string()])));
    }

    #[test]
    fn a_kernel_metapackage_brings_the_highest_real_kernel_package() {
        let got = resolve(&fixture(), &["linux-image-cloud-amd64".into()]).expect("resolve");
        assert_eq!(
            names(&got),
            [
                "linux-image-6.1.0-27-cloud-amd64=6.1.115-1@bookworm-security",
                "linux-image-cloud-amd64=6.1.115-1@bookworm-security",
            ]
        );
    }

    #[test]
    fn alternatives_take_the_first_satisfiable_one_and_virtuals_resolve_through_provides() {
        let got = resolve(&fixture(), &["nftables".into(), "etcd-server".into()]).expect("resolve");
        assert_eq!(
            names(&got),
            [
                "etcd-server=3.4.23-4@bookworm",
                "libedit2=3.1-1@bookworm",
                "libjansson4=2.14-2@bookworm",
                "libnftables1=1.0.6-2@bookworm",
                "libreadline8=8.2-1@bookworm",
                "nftables=1.0.6-2@bookworm",
            ]
        );
    }

    #[test]
    fn shared_libraries_record_every_named_package_that_needs_them() {
        let idx = fixture();
        let got = resolve(&idx, &["runc".into(), "nftables".into()]).expect("resolve");
        let libc = got
            .iter()
            .find(|r| r.package.name == "libc6")
            .expect("libc6");
        assert_eq!(libc.required_by, BTreeSet::from(["runc".to_string()]));
        let jansson = got
            .iter()
            .find(|r| r.package.name == "libjansson4")
            .expect("jansson");
        assert_eq!(
            jansson.required_by,
            BTreeSet::from(["nftables".to_string()])
        );
    }

    #[test]
    fn an_unknown_package_is_named_with_close_suggestions() {
        let err = resolve(&fixture(), &["rnuc".into()]).unwrap_err();
        match &err {
            SourceError::PackageNotFound { name, suggestions } => {
                assert_eq!(name, "rnuc");
                assert_eq!(suggestions, &["runc".to_string()]);
            }
            other => panic!("unexpected {other}"),
        }
        assert!(err.to_string().contains("did you mean runc"));
        assert!(
            resolve(&fixture(), &["arm-only".into()]).is_err(),
            "other architectures are ignored"
        );
    }
}
