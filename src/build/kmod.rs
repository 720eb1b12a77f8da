//! Picking kernel modules out of a kernel package, without `depmod` or `modprobe`.
//!
//! Input is the [`Tree`] of an extracted kernel package (`lib/modules/<version>/kernel/...`,
//! or `usr/lib/modules/...`). [`select_modules`] takes the names of the wanted modules,
//! reads the `.modinfo` ELF section of each (`depends=`, `alias=`, `name=`), follows
//! `depends=` to the full dependency closure and returns a [`ModuleSet`]: only those module
//! files, a `modules.dep` for them, the kernel's `modules.builtin` files if present, and one
//! load order that `kimg init` can feed to `finit_module` without modprobe.
//!
//! Names: `-` and `_` are the same (`nf-tables` is `nf_tables`); a module's name is its file
//! name without `.ko[.xz|.zst|.gz]`, as depmod has it. A wanted name that is no module file
//! is looked up in `modules.builtin` (then it needs nothing: e.g. `ext4` on Debian's cloud
//! kernel) and then among the modules' `alias=` patterns (`fs-overlay`, `net-pf-7`); only
//! then is it an error. Compressed modules are read (decompressed in memory to find
//! `.modinfo`) and copied as they are; Debian bookworm's kernels ship plain `.ko` files.
//!
//! Orders, all deterministic:
//! - [`ModuleSet::load_order`]: depth-first from each wanted name in the order given, each
//!   module's `depends=` in the order listed, a module after all its dependencies. Loading in
//!   this order never meets an unknown symbol. `virtio_pci` is a bus driver, not a symbol
//!   dependency of `virtio_net`: ask for it, before the drivers, to get the order in FACTS.md.
//! - `modules.dep` lines are sorted by path; each lists the module's whole dependency closure
//!   with the module that must be loaded *last* first, so loading from the end of the list
//!   backwards works: the convention depmod writes and modprobe reads.
//!
//! Limits: `softdep=` is not followed (not needed by the modules this project loads), no
//! `modules.alias`/`modules.symbols`/`*.bin` indexes are written, and aliases of built-in
//! modules (`modules.builtin.modinfo`) are not consulted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::sync::Arc;

use super::deb::glob_segment;
use super::tree::{Entry, Tree};

/// Failure of [`select_modules`].
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error("no lib/modules/<version> directory in the kernel tree")]
    KernelNotFound,
    #[error("the kernel tree holds several kernels: {versions:?}")]
    SeveralKernels { versions: Vec<String> },
    #[error("module {module} not found for kernel {kernel_version}")]
    ModuleNotFound {
        module: String,
        kernel_version: String,
    },
    #[error("module {module}, needed by {needed_by}, not found for kernel {kernel_version}")]
    DependencyNotFound {
        module: String,
        needed_by: String,
        kernel_version: String,
    },
    #[error("cannot decompress module {path}")]
    DecompressFailed {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse module {path} as elf")]
    ParseFailed {
        path: String,
        #[source]
        source: goblin::error::Error,
    },
    #[error("module {path} has no .modinfo section")]
    ModinfoMissing { path: String },
    #[error("modules depend on each other in a cycle through {module}")]
    DependencyCycle { module: String },
}

/// The modules to put into an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleSet {
    /// The `<version>` of `lib/modules/<version>`, e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_version: String,
    /// Module files at their original paths, plus `modules.dep` and `modules.builtin*`.
    pub files: Tree,
    /// Module names in a safe load order (dependencies first).
    pub load_order: Vec<String>,
    /// Module name → its path in [`ModuleSet::files`].
    pub paths: BTreeMap<String, String>,
    /// Wanted names that are built into the kernel and need no file.
    pub builtin: Vec<String>,
}

/// The fields of a module's `.modinfo` this crate uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModInfo {
    pub name: Option<String>,
    pub depends: Vec<String>,
    pub aliases: Vec<String>,
}

/// `-` and `_` are interchangeable in module names; `_` is canonical.
pub fn canonical_name(name: &str) -> String {
    name.replace('-', "_")
}

/// Reads `.modinfo` from a module file, decompressing `.ko.xz`, `.ko.zst` and `.ko.gz`.
pub fn modinfo(path: &str, data: &[u8]) -> Result<ModInfo, KmodError> {
    let plain = decompress(path, data)?;
    let elf = goblin::elf::Elf::parse(&plain).map_err(|source| KmodError::ParseFailed {
        path: path.to_string(),
        source,
    })?;
    let section = elf
        .section_headers
        .iter()
        .find(|sh| elf.shdr_strtab.get_at(sh.sh_name) == Some(".modinfo"))
        .and_then(|sh| {
            let start = usize::try_from(sh.sh_offset).ok()?;
            let end = start.checked_add(usize::try_from(sh.sh_size).ok()?)?;
            plain.get(start..end)
        })
        .ok_or_else(|| KmodError::ModinfoMissing {
            path: path.to_string(),
        })?;
    let mut info = ModInfo::default();
    for field in section.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let field = String::from_utf8_lossy(field);
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        match key {
            "name" => info.name = Some(value.to_string()),
            "alias" => info.aliases.push(value.to_string()),
            "depends" => info.depends.extend(
                value
                    .split(',')
                    .filter(|d| !d.is_empty())
                    .map(canonical_name),
            ),
            _ => {}
        }
    }
    Ok(info)
}

fn decompress<'a>(path: &str, data: &'a [u8]) -> Result<std::borrow::Cow<'a, [u8]>, KmodError> {
    let mut out = Vec::new();
    let err = |source| KmodError::DecompressFailed {
        path: path.to_string(),
        source,
    };
    if path.ends_with(".ko.xz") {
        xz2::read::XzDecoder::new_multi_decoder(data)
            .read_to_end(&mut out)
            .map_err(err)?;
    } else if path.ends_with(".ko.zst") {
        out = zstd::decode_all(data).map_err(err)?;
    } else if path.ends_with(".ko.gz") {
        flate2::read::MultiGzDecoder::new(data)
            .read_to_end(&mut out)
            .map_err(err)?;
    } else {
        return Ok(std::borrow::Cow::Borrowed(data));
    }
    Ok(std::borrow::Cow::Owned(out))
}

/// The module name of a file name, if it is a module.
fn module_name(file: &str) -> Option<String> {
    let base = file.rsplit('/').next()?;
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| base.strip_suffix(ext))
        .map(canonical_name)
}

/// One kernel's modules inside a tree.
struct Kernel<'t> {
    tree: &'t Tree,
    /// `lib/modules/<version>`.
    base: String,
    version: String,
    /// Module name → path in the tree.
    files: BTreeMap<String, String>,
    builtin: BTreeSet<String>,
    infos: HashMap<String, ModInfo>,
}

impl<'t> Kernel<'t> {
    fn find(tree: &'t Tree) -> Result<Kernel<'t>, KmodError> {
        let mut found = BTreeSet::new();
        for (path, entry) in tree.iter() {
            for prefix in ["lib/modules/", "usr/lib/modules/"] {
                if let (Some(rest), Entry::Dir { .. }) = (path.strip_prefix(prefix), entry) {
                    if !rest.is_empty() && !rest.contains('/') {
                        found.insert((prefix, rest.to_string()));
                    }
                }
            }
        }
        let mut found = found.into_iter();
        let (prefix, version) = found.next().ok_or(KmodError::KernelNotFound)?;
        if let Some(other) = found.next() {
            let mut versions = vec![
                format!("{prefix}{version}"),
                format!("{}{}", other.0, other.1),
            ];
            versions.extend(found.map(|(p, v)| format!("{p}{v}")));
            return Err(KmodError::SeveralKernels { versions });
        }
        let base = format!("{prefix}{version}");
        let mut files = BTreeMap::new();
        let under = format!("{base}/");
        for (path, entry) in tree.iter() {
            let (Some(rel), Entry::File { .. }) = (path.strip_prefix(&under), entry) else {
                continue;
            };
            if let Some(name) = module_name(rel) {
                // Like depmod's default search order, `updates/` overrides the rest;
                // otherwise the first path in sorted order wins.
                let overrides = rel.starts_with("updates/");
                if overrides || !files.contains_key(&name) {
                    files.insert(name, path.to_string());
                }
            }
        }
        let builtin = match tree.get(&format!("{base}/modules.builtin")) {
            Some(Entry::File { data, .. }) => String::from_utf8_lossy(data)
                .lines()
                .filter_map(module_name)
                .collect(),
            _ => BTreeSet::new(),
        };
        Ok(Kernel {
            tree,
            base,
            version,
            files,
            builtin,
            infos: HashMap::new(),
        })
    }

    fn data(&self, path: &str) -> &'t [u8] {
        match self.tree.get(path) {
            Some(Entry::File { data, .. }) => data.as_slice(),
            _ => &[],
        }
    }

    fn info(&mut self, name: &str) -> Result<&ModInfo, KmodError> {
        if !self.infos.contains_key(name) {
            let path = &self.files[name];
            let info = modinfo(path, self.data(path))?;
            self.infos.insert(name.to_string(), info);
        }
        Ok(&self.infos[name])
    }

    /// The first module (by name) with an `alias=` pattern matching `wanted`; like kmod,
    /// `-` and `_` are equal on both sides.
    fn by_alias(&mut self, wanted: &str) -> Result<Option<String>, KmodError> {
        let names: Vec<String> = self.files.keys().cloned().collect();
        for name in names {
            let info = self.info(&name)?;
            if info
                .aliases
                .iter()
                .any(|a| glob_segment(&canonical_name(a), wanted))
            {
                return Ok(Some(name));
            }
        }
        Ok(None)
    }

    /// Depth-first post-order from `name`, appending to `order` (dependencies first).
    fn visit(
        &mut self,
        name: &str,
        order: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Result<(), KmodError> {
        if done.contains(name) {
            return Ok(());
        }
        if stack.iter().any(|s| s == name) {
            return Err(KmodError::DependencyCycle {
                module: name.to_string(),
            });
        }
        stack.push(name.to_string());
        let depends = self.info(name)?.depends.clone();
        for dep in depends {
            if self.files.contains_key(&dep) {
                self.visit(&dep, order, done, stack)?;
            } else if !self.builtin.contains(&dep) {
                return Err(KmodError::DependencyNotFound {
                    module: dep,
                    needed_by: name.to_string(),
                    kernel_version: self.version.clone(),
                });
            }
        }
        stack.pop();
        done.insert(name.to_string());
        order.push(name.to_string());
        Ok(())
    }

    /// The dependency closure of one module, in load order, without the module itself.
    fn closure_of(&mut self, name: &str) -> Result<Vec<String>, KmodError> {
        let mut order = Vec::new();
        self.visit(name, &mut order, &mut BTreeSet::new(), &mut Vec::new())?;
        order.pop();
        Ok(order)
    }
}

/// Selects `wanted` and everything they depend on from a kernel package's tree.
pub fn select_modules(kernel_tree: &Tree, wanted: &[&str]) -> Result<ModuleSet, KmodError> {
    let mut kernel = Kernel::find(kernel_tree)?;
    let mut load_order = Vec::new();
    let mut done = BTreeSet::new();
    let mut builtin = Vec::new();
    for want in wanted {
        let want = canonical_name(want);
        let name = if kernel.files.contains_key(&want) {
            want
        } else if kernel.builtin.contains(&want) {
            builtin.push(want);
            continue;
        } else if let Some(name) = kernel.by_alias(&want)? {
            name
        } else {
            return Err(KmodError::ModuleNotFound {
                module: want,
                kernel_version: kernel.version.clone(),
            });
        };
        kernel.visit(&name, &mut load_order, &mut done, &mut Vec::new())?;
    }

    let mut files = Tree::new();
    let mut paths = BTreeMap::new();
    for name in &load_order {
        let path = kernel.files[name].clone();
        if let Some(Entry::File { mode, data }) = kernel_tree.get(&path) {
            files.insert_file(&path, *mode, data.clone());
        }
        paths.insert(name.clone(), path);
    }
    let base_len = kernel.base.len() + 1;
    let rel = |path: &str| path[base_len..].to_string();
    let mut lines = BTreeMap::new();
    for name in &load_order {
        let deps = kernel.closure_of(name)?;
        let mut line = format!("{}:", rel(&paths[name]));
        for dep in deps.iter().rev() {
            line.push(' ');
            line.push_str(&rel(&paths[dep]));
        }
        lines.insert(rel(&paths[name]), line);
    }
    let mut dep_file = String::new();
    for line in lines.values() {
        dep_file.push_str(line);
        dep_file.push('\n');
    }
    files.insert_file(
        &format!("{}/modules.dep", kernel.base),
        0o644,
        dep_file.into_bytes(),
    );
    for extra in ["modules.builtin", "modules.builtin.modinfo"] {
        let path = format!("{}/{extra}", kernel.base);
        if let Some(Entry::File { mode, data }) = kernel_tree.get(&path) {
            files.insert_file(&path, *mode, Arc::clone(data));
        }
    }
    Ok(ModuleSet {
        kernel_version: kernel.version,
        files,
        load_order,
        paths,
        builtin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A minimal ELF64 relocatable object with a `.modinfo` section holding `fields`.
    fn synthetic_ko(fields: &[&str]) -> Vec<u8> {
        let mut modinfo = Vec::new();
        for f in fields {
            modinfo.extend_from_slice(f.as_bytes());
            modinfo.push(0);
        }
        let shstrtab = b"\0.modinfo\0.shstrtab\0".to_vec();
        let modinfo_off = 64;
        let shstr_off = modinfo_off + modinfo.len();
        let sh_off = (shstr_off + shstrtab.len() + 7) & !7;
        let mut f = Vec::new();
        f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        f.extend_from_slice(&1u16.to_le_bytes()); // ET_REL
        f.extend_from_slice(&62u16.to_le_bytes());
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&0u64.to_le_bytes());
        f.extend_from_slice(&0u64.to_le_bytes()); // phoff
        f.extend_from_slice(&(sh_off as u64).to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        for v in [64u16, 0, 0, 64, 3, 2] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        f.extend_from_slice(&modinfo);
        f.extend_from_slice(&shstrtab);
        f.resize(sh_off, 0);
        let mut shdr = |name: u32, kind: u32, off: usize, size: usize| {
            f.extend_from_slice(&name.to_le_bytes());
            f.extend_from_slice(&kind.to_le_bytes());
            for v in [0u64, 0, off as u64, size as u64] {
                f.extend_from_slice(&v.to_le_bytes());
            }
            f.extend_from_slice(&0u32.to_le_bytes());
            f.extend_from_slice(&0u32.to_le_bytes());
            f.extend_from_slice(&1u64.to_le_bytes());
            f.extend_from_slice(&0u64.to_le_bytes());
        };
        shdr(0, 0, 0, 0);
        shdr(1, 1, modinfo_off, modinfo.len()); // .modinfo, SHT_PROGBITS
        shdr(10, 3, shstr_off, shstrtab.len()); // .shstrtab, SHT_STRTAB
        f
    }

    const V: &str = "6.1.0-56-cloud-amd64";

    fn ko(t: &mut Tree, rel: &str, depends: &str, aliases: &[&str]) {
        let name = module_name(rel).unwrap();
        let mut fields = vec![format!("name={name}"), format!("depends={depends}")];
        fields.extend(aliases.iter().map(|a| format!("alias={a}")));
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        let mut data = synthetic_ko(&fields);
        if rel.ends_with(".xz") {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(&data).unwrap();
            data = e.finish().unwrap();
        } else if rel.ends_with(".zst") {
            data = zstd::encode_all(data.as_slice(), 1).unwrap();
        }
        t.insert_file(&format!("lib/modules/{V}/kernel/{rel}"), 0o644, data);
    }

    /// The virtio and netfilter corner of Debian's cloud kernel, with its real dependencies.
    fn kernel_tree() -> Tree {
        let mut t = Tree::new();
        // `depends=` as in linux-image-6.1.0-56-cloud-amd64.
        ko(&mut t, "drivers/virtio/virtio_ring.ko", "", &[]);
        ko(&mut t, "drivers/virtio/virtio.ko", "virtio_ring", &[]);
        ko(&mut t, "drivers/virtio/virtio_pci_modern_dev.ko", "", &[]);
        ko(&mut t, "drivers/virtio/virtio_pci_legacy_dev.ko", "", &[]);
        ko(
            &mut t,
            "drivers/virtio/virtio_pci.ko",
            "virtio_ring,virtio_pci_modern_dev,virtio_pci_legacy_dev,virtio",
            &["pci:v00001AF4d*sv*sd*bc*sc*i*"],
        );
        ko(&mut t, "net/core/failover.ko", "", &[]);
        ko(&mut t, "drivers/net/net_failover.ko", "failover", &[]);
        ko(
            &mut t,
            "drivers/net/virtio_net.ko",
            "virtio_ring,virtio,net_failover",
            &["virtio:d00000001v*"],
        );
        ko(&mut t, "fs/overlayfs/overlay.ko.xz", "", &["fs-overlay"]);
        ko(&mut t, "net/bridge/br_netfilter.ko.zst", "bridge", &[]);
        ko(&mut t, "net/bridge/bridge.ko", "stp,llc", &[]);
        ko(&mut t, "net/802/stp.ko", "llc", &[]);
        ko(&mut t, "net/llc/llc.ko", "", &[]);
        t.insert_file(
            &format!("lib/modules/{V}/modules.builtin"),
            0o644,
            b"kernel/fs/ext4/ext4.ko\n".to_vec(),
        );
        t.insert_file(
            &format!("lib/modules/{V}/modules.order"),
            0o644,
            b"x\n".to_vec(),
        );
        t
    }

    #[test]
    fn modinfo_reads_depends_aliases_and_name() {
        let info = modinfo(
            "a.ko",
            &synthetic_ko(&["license=GPL", "depends=a-b,c", "alias=x*", "name=z"]),
        )
        .unwrap();
        assert_eq!(info.depends, ["a_b", "c"]);
        assert_eq!(info.aliases, ["x*"]);
        assert_eq!(info.name.as_deref(), Some("z"));
    }

    #[test]
    fn virtio_modules_load_after_their_dependencies_in_a_stable_order() {
        let set = select_modules(&kernel_tree(), &["virtio_pci", "virtio-net"]).unwrap();
        assert_eq!(set.kernel_version, V);
        assert_eq!(
            set.load_order,
            [
                "virtio_ring",
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio",
                "virtio_pci",
                "failover",
                "net_failover",
                "virtio_net"
            ]
        );
        // Every module comes after all its dependencies.
        let t = kernel_tree();
        for (i, name) in set.load_order.iter().enumerate() {
            let path = &set.paths[name];
            let Some(Entry::File { data, .. }) = t.get(path) else {
                panic!("{path}")
            };
            for dep in modinfo(path, data).unwrap().depends {
                assert!(set.load_order[..i].contains(&dep), "{dep} after {name}");
            }
        }
    }

    #[test]
    fn modules_dep_lists_each_closure_last_loaded_first() {
        let set = select_modules(&kernel_tree(), &["virtio_net"]).unwrap();
        let Some(Entry::File { data, .. }) = set.files.get(&format!("lib/modules/{V}/modules.dep"))
        else {
            panic!("no modules.dep")
        };
        assert_eq!(
            String::from_utf8(data.to_vec()).unwrap(),
            "kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
             kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/virtio/virtio_ring.ko:\n\
             kernel/net/core/failover.ko:\n"
        );
    }

    #[test]
    fn only_the_closure_is_copied_and_modules_order_is_left_out() {
        let set = select_modules(&kernel_tree(), &["br_netfilter"]).unwrap();
        let files: Vec<&str> = set
            .files
            .iter()
            .filter(|(_, e)| matches!(e, Entry::File { .. }))
            .map(|(p, _)| p)
            .collect();
        let b = format!("lib/modules/{V}");
        assert_eq!(
            files,
            [
                format!("{b}/kernel/net/802/stp.ko"),
                format!("{b}/kernel/net/bridge/br_netfilter.ko.zst"),
                format!("{b}/kernel/net/bridge/bridge.ko"),
                format!("{b}/kernel/net/llc/llc.ko"),
                format!("{b}/modules.builtin"),
                format!("{b}/modules.dep"),
            ]
        );
        assert_eq!(set.load_order, ["llc", "stp", "bridge", "br_netfilter"]);
    }

    #[test]
    fn built_in_modules_and_aliases_resolve_without_errors() {
        let set = select_modules(&kernel_tree(), &["ext4", "fs-overlay"]).unwrap();
        assert_eq!(set.builtin, ["ext4"]);
        assert_eq!(set.load_order, ["overlay"]);
    }

    #[test]
    fn a_missing_module_is_named_with_the_kernel_version() {
        let err = select_modules(&kernel_tree(), &["virtio_net", "vxlan"]).unwrap_err();
        assert!(matches!(&err, KmodError::ModuleNotFound { module, .. } if module == "vxlan"));
        assert!(
            err.to_string().contains("vxlan") && err.to_string().contains(V),
            "{err}"
        );
    }

    #[test]
    fn a_missing_dependency_names_who_needs_it() {
        let mut t = kernel_tree();
        t.remove(&format!("lib/modules/{V}/kernel/net/llc/llc.ko"));
        let err = select_modules(&t, &["bridge"]).unwrap_err();
        assert!(
            matches!(&err, KmodError::DependencyNotFound { module, needed_by, .. } if module == "llc" && needed_by == "stp"),
            "{err}"
        );
    }

    #[test]
    fn a_dependency_cycle_is_an_error_not_a_hang() {
        let mut t = Tree::new();
        ko(&mut t, "a.ko", "b", &[]);
        ko(&mut t, "b.ko", "a", &[]);
        assert!(matches!(
            select_modules(&t, &["a"]),
            Err(KmodError::DependencyCycle { .. })
        ));
    }

    #[test]
    fn two_kernels_in_one_tree_are_refused() {
        let mut t = kernel_tree();
        t.insert_dir("lib/modules/6.2.0", 0o755);
        assert!(matches!(
            select_modules(&t, &["virtio"]),
            Err(KmodError::SeveralKernels { .. })
        ));
        assert!(matches!(
            select_modules(&Tree::new(), &["virtio"]),
            Err(KmodError::KernelNotFound)
        ));
    }

    #[test]
    fn selection_is_deterministic() {
        let a = select_modules(&kernel_tree(), &["virtio_net", "br_netfilter", "overlay"]).unwrap();
        let b = select_modules(&kernel_tree(), &["virtio_net", "br_netfilter", "overlay"]).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn modules_extracted_from_a_synthetic_kernel_deb_are_selected() {
        use crate::build::deb::tests::{write_deb, Item};
        use crate::build::deb::{Deb, Filter};
        let source = kernel_tree();
        let mut items = Vec::new();
        for (path, entry) in source.iter() {
            match entry {
                Entry::File { mode, data } => items.push(Item::File(path, *mode, data.as_slice())),
                Entry::Dir { mode } => items.push(Item::Dir(path, *mode)),
                Entry::Symlink { target } => items.push(Item::Symlink(path, target)),
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let deb = write_deb(
            dir.path(),
            "linux-image",
            "Package: linux-image\n",
            ".xz",
            &items,
        );
        let mut tree = Tree::new();
        Deb::open(&deb)
            .unwrap()
            .extract(&Filter::new(&["lib/modules/**"]).unwrap(), &mut tree)
            .unwrap();
        let set = select_modules(&tree, &["virtio_pci", "virtio_net"]).unwrap();
        assert_eq!(
            set,
            select_modules(&source, &["virtio_pci", "virtio_net"]).unwrap()
        );
        assert_eq!(set.load_order.len(), 8);
    }
}
