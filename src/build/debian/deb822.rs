//! A minimal deb822 reader: the `Key: value` stanza format of apt `.sources` files,
//! `Release` files and `Packages` indexes.
//!
//! Stanzas are separated by blank lines; a line starting with space or tab continues the
//! previous field. Values are borrowed from the input (continuation lines included, with
//! their newlines), trimmed at both ends. Keys are matched case-insensitively by
//! [`Stanza::get`]. Comment lines (`#`) are not handled here: callers that allow them
//! ([`strip_comments`]) remove them first. Lines without a colon are ignored.

/// One stanza: its fields in file order.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stanza<'a> {
    pub fields: Vec<(&'a str, &'a str)>,
}

impl<'a> Stanza<'a> {
    /// The value of `key` (case-insensitive), if present.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| *v)
    }
}

/// Splits `text` into stanzas.
pub(crate) fn stanzas(text: &str) -> Vec<Stanza<'_>> {
    let mut out = Vec::new();
    for_each_stanza(text, |s| out.push(s.clone()));
    out
}

/// Calls `f` for each stanza of `text`, reusing one buffer (no allocation per stanza).
pub(crate) fn for_each_stanza<'a>(text: &'a str, mut f: impl FnMut(&Stanza<'a>)) {
    let mut current = Stanza::default();
    // (key, value start offset, value end offset) of the field being read.
    let mut open: Option<(&str, usize, usize)> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let content = line.trim_end_matches(['\n', '\r']);
        if content.starts_with([' ', '\t']) && !content.trim().is_empty() {
            if let Some((_, _, e)) = open.as_mut() {
                *e = start + content.len();
            }
            continue;
        }
        if let Some((k, s, e)) = open.take() {
            current.fields.push((k, text[s..e].trim()));
        }
        if content.trim().is_empty() {
            if !current.fields.is_empty() {
                f(&current);
                current.fields.clear();
            }
            continue;
        }
        if let Some(colon) = content.find(':') {
            open = Some((
                content[..colon].trim(),
                start + colon + 1,
                start + content.len(),
            ));
        }
    }
    if let Some((k, s, e)) = open.take() {
        current.fields.push((k, text[s..e].trim()));
    }
    if !current.fields.is_empty() {
        f(&current);
    }
}

/// Removes full-line `#` comments (apt allows them in `.sources` files).
pub(crate) fn strip_comments(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .fold(String::with_capacity(text.len()), |mut acc, l| {
            acc.push_str(l);
            acc.push('\n');
            acc
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanzas_split_on_blank_lines_and_keep_continuations() {
        let text =
            "Package: a\nDescription: short\n long line\n .\nSize: 3\n\n\nPackage: b\r\nSize: 4";
        let s = stanzas(text);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].get("package"), Some("a"));
        assert_eq!(s[0].get("Description"), Some("short\n long line\n ."));
        assert_eq!(s[0].get("Size"), Some("3"));
        assert_eq!(s[1].get("Package"), Some("b"));
        assert_eq!(s[1].get("Size"), Some("4"));
        assert_eq!(s[1].get("Missing"), None);
    }

    #[test]
    fn comments_are_stripped_without_ending_a_stanza() {
        let text = "Types: deb\n# a note\nURIs: http://m/debian\n";
        let cleaned = strip_comments(text);
        let s = stanzas(&cleaned);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].get("URIs"), Some("http://m/debian"));
    }
}
