//! Console events: every state change of `kimg init` is one line `kimg: <event> key=value …`.
//!
//! The QEMU tests and the builder's boot checks read these lines, so their shape is an
//! interface: the event name first, then fields in the order they were added. Values that
//! contain spaces, quotes or `=` are written in double quotes with `"` and `\` escaped, so a
//! line always splits back into its fields. An empty value prints as `key=`.

use std::fmt;

/// One console event under construction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    name: &'static str,
    fields: Vec<(&'static str, String)>,
}

impl Event {
    pub fn new(name: &'static str) -> Event {
        Event {
            name,
            fields: Vec::new(),
        }
    }

    /// Adds `key=value`.
    pub fn field(mut self, key: &'static str, value: impl fmt::Display) -> Event {
        self.fields.push((key, value.to_string()));
        self
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

fn needs_quotes(v: &str) -> bool {
    v.chars().any(|c| c.is_whitespace() || c == '"' || c == '=')
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kimg: {}", self.name)?;
        for (k, v) in &self.fields {
            if needs_quotes(v) {
                let escaped = v.replace('\\', "\\\\").replace('"', "\\\"");
                let one_line = escaped.replace('\n', " ");
                write!(f, " {k}=\"{one_line}\"")?;
            } else {
                write!(f, " {k}={v}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_print_as_one_line_with_fields_in_order() {
        let e = Event::new("booted")
            .field("role", "etcd+master")
            .field("node", "node-1");
        assert_eq!(e.to_string(), "kimg: booted role=etcd+master node=node-1");
    }

    #[test]
    fn values_with_spaces_or_quotes_are_quoted_and_escaped() {
        let e = Event::new("module-failed")
            .field("error", "unknown symbol \"x\"\nin module")
            .field("services", "");
        assert_eq!(
            e.to_string(),
            "kimg: module-failed error=\"unknown symbol \\\"x\\\" in module\" services="
        );
    }
}
