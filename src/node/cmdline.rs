//! The kernel command line (`/proc/cmdline`): the `kimg.*` keys init understands.
//!
//! Known keys: `kimg.node=NAME` (this machine's name in the node table); `kimg.state=disk`
//! (the machine booted from its disk, so its `STATE` partition must be there: set by the
//! disk's boot entry, never by PXE). Everything without
//! the `kimg.` prefix belongs to the kernel or other programs and is left alone. A malformed
//! or unknown `kimg.*` item never stops the boot: it is returned as an [`Ignored`] entry that
//! init prints as `kimg: cmdline-ignored key=… reason=…`. Quoting (`"a b"`) is not
//! interpreted; node names cannot contain spaces anyway.

/// The `kimg.*` settings found on the command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cmdline {
    pub node: Option<String>,
    /// `kimg.state=disk`: `STATE` is on the boot disk and is waited for, not replaced.
    pub state_on_disk: bool,
    pub ignored: Vec<Ignored>,
}

/// One `kimg.*` item that was not used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ignored {
    pub key: String,
    pub reason: &'static str,
}

/// A node name as `cluster.toml` allows it: a DNS label.
pub use crate::cluster::is_dns_label as is_node_name;

/// Parses the text of `/proc/cmdline`. The last valid `kimg.node` wins, like kernel options.
pub fn parse(text: &str) -> Cmdline {
    let mut out = Cmdline::default();
    for item in text.split_whitespace() {
        let Some(rest) = item.strip_prefix("kimg.") else {
            continue;
        };
        let (key, value) = match rest.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (rest, None),
        };
        let full_key = format!("kimg.{key}");
        let ignore = |reason| Ignored {
            key: full_key.clone(),
            reason,
        };
        match (key, value) {
            ("node", None) => out.ignored.push(ignore("missing-value")),
            ("node", Some("")) => out.ignored.push(ignore("empty-value")),
            ("node", Some(v)) if !is_node_name(v) => out.ignored.push(ignore("invalid-node-name")),
            ("node", Some(v)) => out.node = Some(v.to_string()),
            ("state", Some("disk")) => out.state_on_disk = true,
            ("state", _) => out.ignored.push(ignore("invalid-state")),
            _ => out.ignored.push(ignore("unknown-key")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_name_is_taken_from_kimg_node_among_kernel_options() {
        let c = parse("BOOT_IMAGE=/vmlinuz console=ttyS0 kimg.node=etcd-2 quiet\n");
        assert_eq!(c.node.as_deref(), Some("etcd-2"));
        assert!(c.ignored.is_empty());
    }

    #[test]
    fn a_disk_boot_entry_says_state_is_on_the_disk() {
        assert!(parse("console=ttyS0 kimg.state=disk").state_on_disk);
        assert!(!parse("console=ttyS0").state_on_disk);
        let c = parse("kimg.state=floppy kimg.state");
        assert!(!c.state_on_disk);
        assert_eq!(c.ignored.len(), 2);
        assert!(c.ignored.iter().all(|i| i.reason == "invalid-state"));
    }

    #[test]
    fn malformed_values_are_ignored_with_a_reason_and_never_fatal() {
        let c = parse("kimg.node= kimg.node=Bad_Name kimg.node");
        assert_eq!(c.node, None);
        let reasons: Vec<_> = c
            .ignored
            .iter()
            .map(|i| (i.key.as_str(), i.reason))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("kimg.node", "empty-value"),
                ("kimg.node", "invalid-node-name"),
                ("kimg.node", "missing-value"),
            ]
        );
    }

    #[test]
    fn unknown_kimg_keys_are_reported_and_others_left_alone() {
        let c = parse("kimg.colour=red kimgnode=x kimg.node=worker-1 root=/dev/sda");
        assert_eq!(c.node.as_deref(), Some("worker-1"));
        assert_eq!(
            c.ignored,
            vec![Ignored {
                key: "kimg.colour".into(),
                reason: "unknown-key"
            }]
        );
    }

    #[test]
    fn a_later_valid_value_wins_over_an_earlier_one() {
        let c = parse("kimg.node=a kimg.node=b");
        assert_eq!(c.node.as_deref(), Some("b"));
    }
}
