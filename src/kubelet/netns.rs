//! Pod namespaces the kubelet creates itself: network, IPC and UTS, pinned by bind mounts.
//!
//! A short-lived thread calls `unshare(CLONE_NEWNET|CLONE_NEWIPC|CLONE_NEWUTS)` (allowed
//! per thread, unlike a mount namespace), sets the pod's hostname in the new UTS
//! namespace, and bind-mounts `/proc/thread-self/ns/{net,ipc,uts}` onto files — the netns at
//! `<netns_dir>/<pod-uid>` (`/run/netns` by default, where `ip netns` looks), the others in
//! the pod's state dir. The mounts keep the namespaces alive after the thread exits;
//! every container of the pod joins them by path. Removal unmounts (lazily) and deletes
//! the files. Limits: needs CAP_SYS_ADMIN (root).

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use super::error::KubeletError;

/// Paths of one pod's pinned namespaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNamespaces {
    pub net: PathBuf,
    pub ipc: PathBuf,
    pub uts: PathBuf,
}

impl PodNamespaces {
    pub fn new(netns_dir: &Path, pod_dir: &Path, uid: &str) -> PodNamespaces {
        PodNamespaces {
            net: netns_dir.join(uid),
            ipc: pod_dir.join("ns").join("ipc"),
            uts: pod_dir.join("ns").join("uts"),
        }
    }

    fn pairs(&self) -> [(&'static str, &Path); 3] {
        [("net", &self.net), ("ipc", &self.ipc), ("uts", &self.uts)]
    }
}

/// Whether all of the pod's namespaces are still pinned (nsfs bind mounts; after a reboot
/// the files are plain empty ones).
pub fn pinned(ns: &PodNamespaces) -> bool {
    ns.pairs().iter().all(|(_, p)| {
        nix::sys::statfs::statfs(*p)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
    })
}

fn errno(e: nix::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

/// Creates the three namespaces and pins them; undoes partial work on failure.
pub fn create(ns: &PodNamespaces, hostname: &str) -> Result<(), KubeletError> {
    for (_, path) in ns.pairs() {
        let parent = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(parent).map_err(|source| KubeletError::NetnsCreate {
            path: parent.to_path_buf(),
            source,
        })?;
        std::fs::File::create(path).map_err(|source| KubeletError::NetnsCreate {
            path: path.to_path_buf(),
            source,
        })?;
    }
    let ns2 = ns.clone();
    let host = hostname.to_string();
    let result = std::thread::spawn(move || -> Result<(), (PathBuf, std::io::Error)> {
        unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
            .map_err(|e| (ns2.net.clone(), errno(e)))?;
        nix::unistd::sethostname(&host).map_err(|e| (ns2.uts.clone(), errno(e)))?;
        for (kind, path) in ns2.pairs() {
            let src = format!("/proc/thread-self/ns/{kind}");
            mount(
                Some(src.as_str()),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| (path.to_path_buf(), errno(e)))?;
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| {
        Err((
            ns.net.clone(),
            std::io::Error::other("namespace thread panicked"),
        ))
    });
    if let Err((path, source)) = result {
        let _ = remove(ns);
        return Err(KubeletError::NetnsCreate { path, source });
    }
    Ok(())
}

/// Unmounts and deletes the pinned namespaces; missing ones are fine.
pub fn remove(ns: &PodNamespaces) -> Result<(), KubeletError> {
    for (_, path) in ns.pairs() {
        if !path.exists() {
            continue;
        }
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => {
                return Err(KubeletError::NetnsRemove {
                    path: path.to_path_buf(),
                    source: errno(e),
                })
            }
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(KubeletError::NetnsRemove {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_namespaces_are_created_pinned_and_removed_needs_root() {
        let dir = tempfile::tempdir().unwrap();
        let ns = PodNamespaces::new(&dir.path().join("netns"), &dir.path().join("pod"), "uid-1");
        create(&ns, "pod-one").unwrap();
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        let meta = std::fs::metadata(&ns.net).unwrap();
        // A pinned nsfs file has an inode different from ours and from a plain file's.
        let own_ino = std::fs::metadata("/proc/self/ns/net").unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_ne!(meta.ino(), own_ino.ino(), "{own:?}");
        assert_eq!(meta.dev(), std::fs::metadata(&ns.uts).unwrap().dev());
        remove(&ns).unwrap();
        assert!(!ns.net.exists() && !ns.ipc.exists() && !ns.uts.exists());
        remove(&ns).unwrap();
    }
}
