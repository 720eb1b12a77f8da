//! `Packages` index stanzas: the fields kimg needs, and dependency fields parsed into
//! alternatives.
//!
//! Kept per package: Package, Version, Architecture, Section, Depends, Pre-Depends,
//! Provides, Filename, Size, SHA256. A stanza missing Package, Version, Filename, Size or
//! SHA256 is skipped (it cannot be downloaded and verified). Dependency syntax handled:
//! `a (>= 1) | b, c:any`; architecture qualifiers (`:any`, `:amd64`) and `[arch]` / `<profile>`
//! restrictions are dropped.

use super::deb822;

/// One binary package from an index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinaryPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub section: String,
    /// The raw `Pre-Depends` and `Depends` fields (parsed on demand by [`Self::depends`]:
    /// resolution looks at a few dozen packages out of tens of thousands).
    pub pre_depends_field: String,
    pub depends_field: String,
    /// Provided (virtual) names, with the version provided if any.
    pub provides: Vec<(String, Option<String>)>,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    /// The suite whose index listed it.
    pub suite: String,
}

impl BinaryPackage {
    /// Pre-Depends and Depends together: each inner list is a group of alternatives.
    pub fn depends(&self) -> Vec<Vec<Dependency>> {
        let mut groups = parse_relations(&self.pre_depends_field);
        groups.extend(parse_relations(&self.depends_field));
        groups
    }
}

/// One alternative of a dependency: a name and an optional `(op, version)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dependency {
    pub name: String,
    pub constraint: Option<(String, String)>,
}

/// Parses a whole Packages file, tagging each package with `suite`.
pub fn parse_packages(text: &str, suite: &str) -> Vec<BinaryPackage> {
    let mut out = Vec::new();
    deb822::for_each_stanza(text, |s| out.extend(package(s, suite)));
    out
}

/// Fields kept, in slot order.
const KEPT: [&str; 10] = [
    "Package",
    "Version",
    "Architecture",
    "Section",
    "Pre-Depends",
    "Depends",
    "Provides",
    "Filename",
    "Size",
    "SHA256",
];

fn package(s: &deb822::Stanza, suite: &str) -> Option<BinaryPackage> {
    // One pass over the fields (Packages files use canonical key case).
    let mut slot: [Option<&str>; KEPT.len()] = [None; KEPT.len()];
    for (k, v) in &s.fields {
        if let Some(i) = KEPT.iter().position(|kept| kept == k) {
            slot[i] = Some(v);
        }
    }
    let [name, version, arch, section, pre_depends, depends, provides, filename, size, sha256] =
        slot;
    let size = size?.parse().ok()?;
    let sha256 = sha256?.to_ascii_lowercase();
    if sha256.len() != 64 || !sha256.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let provides = match provides {
        Some(field) => parse_relations(field)
            .into_iter()
            .flatten()
            .map(|d| (d.name, d.constraint.map(|(_, v)| v)))
            .collect(),
        None => Vec::new(),
    };
    Some(BinaryPackage {
        name: name?.to_string(),
        version: version?.to_string(),
        architecture: arch.unwrap_or("").to_string(),
        section: section.unwrap_or("").to_string(),
        pre_depends_field: pre_depends.unwrap_or("").to_string(),
        depends_field: depends.unwrap_or("").to_string(),
        provides,
        filename: filename?.to_string(),
        size,
        sha256,
        suite: suite.to_string(),
    })
}

/// Parses a relationship field (`Depends`-style) into groups of alternatives.
pub fn parse_relations(field: &str) -> Vec<Vec<Dependency>> {
    field
        .split(',')
        .map(|group| {
            group
                .split('|')
                .filter_map(parse_alternative)
                .collect::<Vec<_>>()
        })
        .filter(|g| !g.is_empty())
        .collect()
}

fn parse_alternative(text: &str) -> Option<Dependency> {
    // Drop `[arch]` and `<profile>` restrictions.
    let mut cleaned = String::with_capacity(text.len());
    let mut in_parens = false;
    let mut skip_until: Option<char> = None;
    for c in text.chars() {
        if let Some(end) = skip_until {
            if c == end {
                skip_until = None;
            }
            continue;
        }
        match c {
            '[' if !in_parens => skip_until = Some(']'),
            '<' if !in_parens => skip_until = Some('>'),
            '(' | ')' => {
                in_parens = c == '(';
                cleaned.push(c);
            }
            _ => cleaned.push(c),
        }
    }
    let cleaned = cleaned.trim();
    let (name_part, constraint) = match cleaned.split_once('(') {
        Some((n, rest)) => {
            let inner = rest.trim_end().trim_end_matches(')').trim();
            let op_len = inner
                .find(|c: char| !matches!(c, '<' | '>' | '='))
                .unwrap_or(inner.len());
            let (op, ver) = inner.split_at(op_len);
            let ver = ver.trim();
            if op.is_empty() || ver.is_empty() {
                (n, None)
            } else {
                (n, Some((op.to_string(), ver.to_string())))
            }
        }
        None => (cleaned, None),
    };
    let name = name_part.trim();
    let name = name.split(':').next().unwrap_or(name).trim();
    if name.is_empty() {
        return None;
    }
    Some(Dependency {
        name: name.to_string(),
        constraint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "a3c5e8f0a3c5e8f0a3c5e8f0a3c5e8f0a3c5e8f0a3c5e8f0a3c5e8f0a3c5e8f0";

    #[test]
    fn stanzas_become_packages_with_dependency_groups() {
        let text = format!(
            "Package: runc\nVersion: 1.1.5+ds1-1+deb12u1\nArchitecture: amd64\nSection: admin\n\
             Depends: libc6 (>= 2.34), libseccomp2 (>= 2.5.0) | libseccomp-alt, foo:any\n\
             Pre-Depends: init-system-helpers (>= 1.54~)\n\
             Provides: runc-virtual (= 1.1), other\n\
             Description: x\n more\n\
             Filename: pool/main/r/runc/runc_1.1.5+ds1-1+deb12u1_amd64.deb\nSize: 2700000\nSHA256: {SHA}\n\n\
             Package: broken\nVersion: 1\n"
        );
        let pkgs = parse_packages(&text, "bookworm");
        assert_eq!(
            pkgs.len(),
            1,
            "a stanza without Filename/Size/SHA256 is skipped"
        );
        let p = &pkgs[0];
        assert_eq!(p.name, "runc");
        assert_eq!(p.suite, "bookworm");
        assert_eq!(p.size, 2_700_000);
        let depends = p.depends();
        assert_eq!(depends.len(), 4);
        assert_eq!(depends[0][0].name, "init-system-helpers");
        assert_eq!(
            depends[0][0].constraint,
            Some((">=".to_string(), "1.54~".to_string()))
        );
        assert_eq!(depends[2].len(), 2);
        assert_eq!(depends[2][1].name, "libseccomp-alt");
        assert_eq!(depends[3][0].name, "foo");
        assert_eq!(
            p.provides,
            vec![
                ("runc-virtual".to_string(), Some("1.1".to_string())),
                ("other".to_string(), None)
            ]
        );
    }

    #[test]
    fn relations_drop_architecture_and_profile_restrictions() {
        let groups = parse_relations("a [amd64] <!nocheck>, b (<< 2) [!i386]");
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0][0].name, "a");
        assert_eq!(groups[0][0].constraint, None);
        assert_eq!(groups[1][0].name, "b");
        assert_eq!(groups[1][0].constraint, Some(("<<".into(), "2".into())));
    }
}
