//! Shared-library closure of ELF binaries, resolved inside a [`Tree`] instead of the host.
//!
//! [`inspect`] reads what the dynamic loader would: `PT_INTERP`, `DT_NEEDED`, `DT_RPATH`,
//! `DT_RUNPATH` and `DT_SONAME`. [`library_closure`] then plays the loader's search for each
//! binary, recursively, inside a tree holding the binaries and the candidate libraries (the
//! union of the extracted library packages), and returns every path that must be copied into
//! an image for the binaries to start: the binaries, their interpreter, each library, and each
//! symlink met on the way (`lib64/ld-linux-x86-64.so.2 -> /lib/x86_64-linux-gnu/...`,
//! `libpcre2-8.so.0 -> libpcre2-8.so.0.11.2`, or a whole `lib -> usr/lib` directory link on a
//! merged-`/usr` tree).
//!
//! Search order for a `DT_NEEDED` name without a `/`, per object: its `DT_RPATH` (only when it
//! has no `DT_RUNPATH`), its `DT_RUNPATH`, then [`SEARCH_DIRS`]; `$ORIGIN` expands to the
//! directory of the object. As in ld.so, a file whose ELF class or machine differs from the
//! object asking for it is passed over. Symlinks are followed inside the tree, absolute targets
//! from the tree's root, at most 40 per lookup.
//!
//! Limits: no `LD_LIBRARY_PATH`, no `ld.so.cache`/`ld.so.conf` (Debian's multiarch dirs are in
//! the default list), no inheritance of the executable's `DT_RPATH` by its libraries, no
//! `$LIB`/`$PLATFORM` expansion, and `dlopen`ed libraries (NSS modules, for instance) are not
//! seen. A statically linked binary yields only itself.

use std::collections::{BTreeSet, VecDeque};

use super::tree::{normalize, Entry, Tree};

/// Directories searched after RPATH/RUNPATH, in order (x86-64 Debian, merged or not).
pub const SEARCH_DIRS: [&str; 5] = [
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib64",
    "lib",
    "usr/lib",
];

/// Longest symlink chain followed in one lookup, as in Linux's path walk.
const MAX_SYMLINKS: usize = 40;

/// Failure of [`library_closure`]; `binary` is always the binary the search started from.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("binary {binary} is not in the tree")]
    BinaryNotFound { binary: String },
    #[error("cannot parse {path} as elf")]
    ParseFailed {
        path: String,
        #[source]
        source: goblin::error::Error,
    },
    #[error("{binary}: interpreter {interpreter} is not in the tree")]
    InterpreterNotFound { binary: String, interpreter: String },
    #[error("{binary}: shared library {soname} (needed by {needed_by}) is not in the tree")]
    LibraryNotFound {
        binary: String,
        needed_by: String,
        soname: String,
    },
}

/// What the dynamic loader reads from one ELF file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElfInfo {
    /// `PT_INTERP`, e.g. `/lib64/ld-linux-x86-64.so.2`; `None` for static binaries and most
    /// libraries.
    pub interpreter: Option<String>,
    /// `DT_NEEDED` entries in file order.
    pub needed: Vec<String>,
    /// `DT_RPATH` directories (colon lists split).
    pub rpath: Vec<String>,
    /// `DT_RUNPATH` directories (colon lists split).
    pub runpath: Vec<String>,
    /// `DT_SONAME`.
    pub soname: Option<String>,
}

/// Parses the dynamic-loading facts of an ELF file.
pub fn inspect(data: &[u8]) -> Result<ElfInfo, goblin::error::Error> {
    let elf = goblin::elf::Elf::parse(data)?;
    let split = |list: &[&str]| -> Vec<String> {
        list.iter()
            .flat_map(|s| s.split(':'))
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    Ok(ElfInfo {
        interpreter: elf.interpreter.map(str::to_string),
        needed: elf.libraries.iter().map(|s| s.to_string()).collect(),
        rpath: split(&elf.rpaths),
        runpath: split(&elf.runpaths),
        soname: elf.soname.map(str::to_string),
    })
}

/// The ELF class and machine, read straight from the identification bytes; `None` for
/// anything that is not ELF (linker scripts such as `libc.so`, for instance).
fn elf_kind(data: &[u8]) -> Option<(u8, u16)> {
    if data.len() < 20 || &data[..4] != b"\x7fELF" {
        return None;
    }
    let machine = match data[5] {
        1 => u16::from_le_bytes([data[18], data[19]]),
        2 => u16::from_be_bytes([data[18], data[19]]),
        _ => return None,
    };
    Some((data[4], machine))
}

/// Every path (files and symlinks, sorted) that must be copied from `tree` so that
/// `binaries` (paths inside `tree`) find their interpreter and shared libraries.
pub fn library_closure<S: AsRef<str>>(
    binaries: &[S],
    tree: &Tree,
) -> Result<Vec<String>, ElfError> {
    let mut out = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for binary in binaries {
        let binary = binary.as_ref();
        let mut links = Vec::new();
        let file = resolve(tree, binary, &mut links).ok_or_else(|| ElfError::BinaryNotFound {
            binary: binary.to_string(),
        })?;
        if file_data(tree, &file).is_none() {
            return Err(ElfError::BinaryNotFound {
                binary: binary.to_string(),
            });
        }
        out.extend(links);
        walk(binary, file, tree, &mut out, &mut seen)?;
    }
    Ok(out.into_iter().collect())
}

/// Breadth-first search from one binary; `seen` spans binaries so shared libs are read once.
fn walk(
    binary: &str,
    start: String,
    tree: &Tree,
    out: &mut BTreeSet<String>,
    seen: &mut BTreeSet<String>,
) -> Result<(), ElfError> {
    let mut queue = VecDeque::from([start]);
    while let Some(object) = queue.pop_front() {
        if !seen.insert(object.clone()) {
            continue;
        }
        out.insert(object.clone());
        let data = file_data(tree, &object).unwrap_or(&[]);
        let info = inspect(data).map_err(|source| ElfError::ParseFailed {
            path: object.clone(),
            source,
        })?;
        let kind = elf_kind(data);
        if let Some(interp) = &info.interpreter {
            let mut links = Vec::new();
            let found = resolve(tree, interp, &mut links)
                .filter(|f| file_data(tree, f).is_some())
                .ok_or_else(|| ElfError::InterpreterNotFound {
                    binary: binary.to_string(),
                    interpreter: interp.clone(),
                })?;
            out.extend(links);
            queue.push_back(found);
        }
        for soname in &info.needed {
            let (found, links) =
                find_library(tree, &object, &info, kind, soname).ok_or_else(|| {
                    ElfError::LibraryNotFound {
                        binary: binary.to_string(),
                        needed_by: object.clone(),
                        soname: soname.clone(),
                    }
                })?;
            out.extend(links);
            queue.push_back(found);
        }
    }
    Ok(())
}

/// One loader lookup of `soname` on behalf of `object`: the file found and the links crossed.
fn find_library(
    tree: &Tree,
    object: &str,
    info: &ElfInfo,
    kind: Option<(u8, u16)>,
    soname: &str,
) -> Option<(String, Vec<String>)> {
    let origin = object.rsplit_once('/').map_or("", |(dir, _)| dir);
    let candidates: Vec<String> = if soname.contains('/') {
        vec![soname.to_string()]
    } else {
        let from_object = if info.runpath.is_empty() {
            &info.rpath
        } else {
            &info.runpath
        };
        from_object
            .iter()
            .map(|dir| dir.replace("${ORIGIN}", &format!("/{origin}")))
            .map(|dir| dir.replace("$ORIGIN", &format!("/{origin}")))
            .chain(SEARCH_DIRS.iter().map(|d| d.to_string()))
            .map(|dir| format!("{dir}/{soname}"))
            .collect()
    };
    candidates.iter().find_map(|path| {
        let mut links = Vec::new();
        let file = resolve(tree, path, &mut links)?;
        let data = file_data(tree, &file)?;
        // Skip a library of another class or machine, as ld.so does.
        (elf_kind(data).is_some() && elf_kind(data) == kind).then_some((file, links))
    })
}

fn file_data<'t>(tree: &'t Tree, path: &str) -> Option<&'t [u8]> {
    match tree.get(path) {
        Some(Entry::File { data, .. }) => Some(data.as_slice()),
        _ => None,
    }
}

/// Resolves `path` inside `tree`, following symlinks in every component. Returns the final
/// path (an existing entry) and pushes each symlink crossed onto `links`.
fn resolve(tree: &Tree, path: &str, links: &mut Vec<String>) -> Option<String> {
    let mut done: Vec<String> = Vec::new();
    let mut todo: VecDeque<String> = normalize(path).split('/').map(str::to_string).collect();
    let mut hops = 0;
    while let Some(seg) = todo.pop_front() {
        match seg.as_str() {
            "" | "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let here = if done.is_empty() {
            seg.clone()
        } else {
            format!("{}/{seg}", done.join("/"))
        };
        match tree.get(&here)? {
            Entry::Symlink { target } => {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return None;
                }
                links.push(here);
                if target.starts_with('/') {
                    done.clear();
                }
                for part in target.split('/').rev() {
                    todo.push_front(part.to_string());
                }
            }
            Entry::File { .. } if !todo.is_empty() => return None,
            _ => done.push(seg),
        }
    }
    Some(done.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal little-endian x86-64 ELF: one PT_LOAD mapping the file at address 0, an
    /// optional PT_INTERP, and a PT_DYNAMIC with the given DT_NEEDED / RUNPATH / SONAME.
    fn synthetic_elf(
        interp: Option<&str>,
        needed: &[&str],
        runpath: Option<&str>,
        soname: Option<&str>,
    ) -> Vec<u8> {
        const EHDR: usize = 64;
        const PHDR: usize = 56;
        let nph = 3;
        let mut strtab = vec![0u8];
        let mut add_str = |s: &str| {
            let off = strtab.len() as u64;
            strtab.extend_from_slice(s.as_bytes());
            strtab.push(0);
            off
        };
        let mut dyns: Vec<(u64, u64)> = needed.iter().map(|n| (1u64, add_str(n))).collect();
        if let Some(r) = runpath {
            dyns.push((29, add_str(r)));
        }
        if let Some(s) = soname {
            dyns.push((14, add_str(s)));
        }
        let interp_bytes = interp
            .map(|i| format!("{i}\0").into_bytes())
            .unwrap_or_default();
        let interp_off = EHDR + PHDR * nph;
        let str_off = interp_off + interp_bytes.len();
        let dyn_off = (str_off + strtab.len() + 7) & !7;
        dyns.push((5, str_off as u64)); // DT_STRTAB
        dyns.push((10, strtab.len() as u64)); // DT_STRSZ
        dyns.push((0, 0));
        let total = dyn_off + dyns.len() * 16;

        let mut f = Vec::with_capacity(total);
        f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        f.extend_from_slice(&3u16.to_le_bytes()); // ET_DYN
        f.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&0u64.to_le_bytes()); // entry
        f.extend_from_slice(&(EHDR as u64).to_le_bytes()); // phoff
        f.extend_from_slice(&0u64.to_le_bytes()); // shoff
        f.extend_from_slice(&0u32.to_le_bytes());
        for v in [EHDR as u16, PHDR as u16, nph as u16, 64, 0, 0] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        let phdr = |f: &mut Vec<u8>, kind: u32, off: usize, len: usize| {
            f.extend_from_slice(&kind.to_le_bytes());
            f.extend_from_slice(&4u32.to_le_bytes());
            for v in [
                off as u64, off as u64, off as u64, len as u64, len as u64, 8,
            ] {
                f.extend_from_slice(&v.to_le_bytes());
            }
        };
        phdr(&mut f, 1, 0, total); // PT_LOAD
        if interp.is_some() {
            phdr(&mut f, 3, interp_off, interp_bytes.len()); // PT_INTERP
        } else {
            phdr(&mut f, 4, interp_off, 0); // PT_NOTE placeholder keeps the layout
        }
        phdr(&mut f, 2, dyn_off, dyns.len() * 16); // PT_DYNAMIC
        f.extend_from_slice(&interp_bytes);
        f.extend_from_slice(&strtab);
        f.resize(dyn_off, 0);
        for (tag, val) in dyns {
            f.extend_from_slice(&tag.to_le_bytes());
            f.extend_from_slice(&val.to_le_bytes());
        }
        f
    }

    fn lib(needed: &[&str], soname: &str) -> Vec<u8> {
        synthetic_elf(None, needed, None, Some(soname))
    }

    const INTERP: &str = "/lib64/ld-linux-x86-64.so.2";

    /// A bookworm-like layout: libc in `lib/x86_64-linux-gnu`, the interpreter linked from
    /// `lib64`, other libraries in `usr/lib/x86_64-linux-gnu` behind soname links.
    fn bookworm_tree() -> Tree {
        let mut t = Tree::new();
        t.insert_file(
            "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            0o755,
            lib(&[], "ld-linux-x86-64.so.2"),
        );
        t.insert_symlink(
            "lib64/ld-linux-x86-64.so.2",
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        );
        t.insert_file(
            "lib/x86_64-linux-gnu/libc.so.6",
            0o755,
            lib(&["ld-linux-x86-64.so.2"], "libc.so.6"),
        );
        t.insert_file(
            "usr/lib/x86_64-linux-gnu/libseccomp.so.2.5.4",
            0o644,
            lib(&["libc.so.6"], "libseccomp.so.2"),
        );
        t.insert_symlink(
            "usr/lib/x86_64-linux-gnu/libseccomp.so.2",
            "libseccomp.so.2.5.4",
        );
        t.insert_file(
            "usr/sbin/runc",
            0o755,
            synthetic_elf(Some(INTERP), &["libseccomp.so.2", "libc.so.6"], None, None),
        );
        t.insert_file(
            "usr/bin/etcd",
            0o755,
            synthetic_elf(Some(INTERP), &["libc.so.6"], None, None),
        );
        t
    }

    #[test]
    fn inspect_reads_interp_needed_runpath_and_soname() {
        let info = inspect(&synthetic_elf(
            Some(INTERP),
            &["liba.so.1", "libc.so.6"],
            Some("$ORIGIN/../lib:/opt/x"),
            Some("libme.so.1"),
        ))
        .unwrap();
        assert_eq!(info.interpreter.as_deref(), Some(INTERP));
        assert_eq!(info.needed, ["liba.so.1", "libc.so.6"]);
        assert_eq!(info.runpath, ["$ORIGIN/../lib", "/opt/x"]);
        assert_eq!(info.soname.as_deref(), Some("libme.so.1"));
    }

    #[test]
    fn runc_needs_libseccomp_libc_and_the_interpreter_with_their_links() {
        let got = library_closure(&["usr/sbin/runc"], &bookworm_tree()).unwrap();
        assert_eq!(
            got,
            [
                "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                "lib/x86_64-linux-gnu/libc.so.6",
                "lib64/ld-linux-x86-64.so.2",
                "usr/lib/x86_64-linux-gnu/libseccomp.so.2",
                "usr/lib/x86_64-linux-gnu/libseccomp.so.2.5.4",
                "usr/sbin/runc",
            ]
        );
    }

    #[test]
    fn a_merged_usr_tree_keeps_the_directory_symlink() {
        let mut t = Tree::new();
        t.insert_symlink("lib", "usr/lib");
        t.insert_symlink("lib64", "usr/lib64");
        t.insert_file(
            "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            0o755,
            lib(&[], "ld"),
        );
        t.insert_symlink(
            "usr/lib64/ld-linux-x86-64.so.2",
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        );
        t.insert_file(
            "usr/lib/x86_64-linux-gnu/libc.so.6",
            0o755,
            lib(&[], "libc.so.6"),
        );
        t.insert_file(
            "bin/app",
            0o755,
            synthetic_elf(Some(INTERP), &["libc.so.6"], None, None),
        );
        let got = library_closure(&["bin/app"], &t).unwrap();
        assert_eq!(
            got,
            [
                "bin/app",
                "lib",
                "lib64",
                "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                "usr/lib/x86_64-linux-gnu/libc.so.6",
                "usr/lib64/ld-linux-x86-64.so.2",
            ]
        );
    }

    #[test]
    fn a_missing_soname_names_the_binary_and_the_library() {
        let mut t = bookworm_tree();
        t.remove("usr/lib/x86_64-linux-gnu/libseccomp.so.2.5.4");
        let err = library_closure(&["usr/bin/etcd", "usr/sbin/runc"], &t).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, ElfError::LibraryNotFound { soname, .. } if soname == "libseccomp.so.2"),
            "{msg}"
        );
        assert!(
            msg.contains("usr/sbin/runc") && msg.contains("libseccomp.so.2"),
            "{msg}"
        );
    }

    #[test]
    fn runpath_with_origin_is_searched_before_the_default_dirs() {
        let mut t = bookworm_tree();
        t.insert_file(
            "opt/app/bin/app",
            0o755,
            synthetic_elf(
                Some(INTERP),
                &["libc.so.6", "libprivate.so"],
                Some("$ORIGIN/../lib"),
                None,
            ),
        );
        t.insert_file(
            "opt/app/lib/libprivate.so",
            0o644,
            lib(&[], "libprivate.so"),
        );
        // A decoy of the same name in a default dir must lose.
        t.insert_file("usr/lib/libprivate.so", 0o644, lib(&[], "libprivate.so"));
        let got = library_closure(&["opt/app/bin/app"], &t).unwrap();
        assert!(
            got.contains(&"opt/app/lib/libprivate.so".to_string()),
            "{got:?}"
        );
        assert!(
            !got.contains(&"usr/lib/libprivate.so".to_string()),
            "{got:?}"
        );
    }

    #[test]
    fn a_library_for_another_machine_is_passed_over() {
        let mut t = bookworm_tree();
        let mut foreign = lib(&[], "libc.so.6");
        foreign[18..20].copy_from_slice(&3u16.to_le_bytes()); // EM_386
                                                              // lib/x86_64-linux-gnu comes first in the search; make its libc foreign.
        t.insert_file("lib/x86_64-linux-gnu/libc.so.6", 0o755, foreign);
        t.insert_file(
            "usr/lib/x86_64-linux-gnu/libc.so.6",
            0o755,
            lib(&[], "libc.so.6"),
        );
        let got = library_closure(&["usr/bin/etcd"], &t).unwrap();
        assert!(
            got.contains(&"usr/lib/x86_64-linux-gnu/libc.so.6".to_string()),
            "{got:?}"
        );
        assert!(
            !got.contains(&"lib/x86_64-linux-gnu/libc.so.6".to_string()),
            "{got:?}"
        );
    }

    #[test]
    fn a_static_binary_needs_nothing_but_itself() {
        let mut t = Tree::new();
        t.insert_file("bin/busybox", 0o755, synthetic_elf(None, &[], None, None));
        assert_eq!(
            library_closure(&["bin/busybox"], &t).unwrap(),
            ["bin/busybox"]
        );
    }

    #[test]
    fn symlink_loops_do_not_hang_and_report_the_library() {
        let mut t = bookworm_tree();
        t.insert_symlink("usr/lib/x86_64-linux-gnu/libseccomp.so.2", "libloop");
        t.insert_symlink("usr/lib/x86_64-linux-gnu/libloop", "libseccomp.so.2");
        assert!(matches!(
            library_closure(&["usr/sbin/runc"], &t),
            Err(ElfError::LibraryNotFound { .. })
        ));
    }

    /// Copies one host library (and the symlink naming it) into `t` at the same path.
    fn copy_host(t: &mut Tree, dir: &str, name: &str) {
        let host = std::path::Path::new("/").join(dir).join(name);
        let meta = std::fs::symlink_metadata(&host).unwrap();
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&host).unwrap();
            let target = target.to_str().unwrap();
            t.insert_symlink(&format!("{dir}/{name}"), target);
            copy_host(t, dir, target);
        } else {
            t.insert_file(
                &format!("{dir}/{name}"),
                0o755,
                std::fs::read(&host).unwrap(),
            );
        }
    }

    #[test]
    fn the_host_ls_needs_selinux_pcre2_libc_and_the_loader() {
        // Uses the host's (Debian bookworm) /usr/bin/ls and its libraries.
        let dir = "usr/lib/x86_64-linux-gnu";
        let mut t = Tree::new();
        t.insert_file("usr/bin/ls", 0o755, std::fs::read("/usr/bin/ls").unwrap());
        for name in [
            "libc.so.6",
            "libselinux.so.1",
            "libpcre2-8.so.0",
            "ld-linux-x86-64.so.2",
        ] {
            copy_host(&mut t, dir, name);
        }
        t.insert_symlink("lib", "usr/lib");
        t.insert_symlink(
            "lib64/ld-linux-x86-64.so.2",
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        );
        let got = library_closure(&["usr/bin/ls"], &t).unwrap();
        for want in [
            "lib",
            "lib64/ld-linux-x86-64.so.2",
            "usr/bin/ls",
            "usr/lib/x86_64-linux-gnu/libselinux.so.1",
            "usr/lib/x86_64-linux-gnu/libpcre2-8.so.0",
            "usr/lib/x86_64-linux-gnu/libc.so.6",
        ] {
            assert!(
                got.contains(&want.to_string()),
                "{want} missing from {got:?}"
            );
        }
        // Without libselinux the error names both the binary and the soname.
        t.remove("usr/lib/x86_64-linux-gnu/libselinux.so.1");
        let err = library_closure(&["usr/bin/ls"], &t)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("libselinux.so.1") && err.contains("usr/bin/ls"),
            "{err}"
        );
    }
}
