//! What a kind does beyond being stored, one file per kind: its OpenAPI schema, its
//! `kubectl get` columns, its defaults and its validation, gathered in a [`Strategy`] that
//! the kind's row of the resource table ([`super::resources::RESOURCES`]) points at.
//! Serving a new kind is one file here and one row there.
//!
//! Kinds without a file yet keep their columns in `table.rs`, their schema in
//! `schemas.rs` and their checks in `admission.rs`/`defaults.rs`; they move here one by
//! one. The helpers below render table cells the way kubectl's printers do.

use serde_json::{json, Value};
use time::OffsetDateTime;

pub mod apiservice;
pub mod componentstatus;
pub mod configmap;
pub mod csidriver;
pub mod horizontalpodautoscaler;
pub mod ingressclass;
pub mod limitrange;
pub mod networkpolicy;
pub mod poddisruptionbudget;
pub mod podtemplate;
pub mod priorityclass;
pub mod resourcequota;
pub mod runtimeclass;
pub mod storageclass;
pub mod validatingadmissionpolicy;
pub mod webhookconfiguration;

/// A table column: name, type, priority (0 always shown, 1 with `-o wide`).
pub type Col = (&'static str, &'static str, u8);

/// The Table columns and one object's cells.
pub type TableFn = fn(&Value) -> (Vec<Col>, Vec<Value>);
/// Checks `new` (replacing `old` on an update).
pub type ValidateFn = fn(&Value, Option<&Value>) -> Result<(), String>;
/// Fills in what the client left out, on create and on update (before validation).
pub type DefaultsFn = fn(&mut Value);

/// One kind's behaviour.
pub struct Strategy {
    /// Registers the kind's OpenAPI schema with the generator and returns its name.
    pub schema: fn(&mut schemars::SchemaGenerator) -> String,
    /// The Table columns, and one object's cells (called with `{}` for the columns
    /// alone); `None`: NAME and AGE.
    pub table: Option<TableFn>,
    /// Fills in defaults, as kube-apiserver does when it decodes a request.
    pub defaults: Option<DefaultsFn>,
    /// Checks a created object (`old` is `None`) or an update of the main resource; the
    /// error is `<field path>: <why>`, answered as a 422 `Invalid`.
    pub validate: Option<ValidateFn>,
}

// A strategy is identified by where it lives: rows compare equal when they point at the
// same one.
impl PartialEq for Strategy {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for Strategy {}

impl std::fmt::Debug for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Strategy")
    }
}

/// The schema name of `T`, registering it (and what it reaches) with the generator.
pub fn schema_of<T: schemars::JsonSchema>(g: &mut schemars::SchemaGenerator) -> String {
    g.subschema_for::<T>();
    T::schema_name().into_owned()
}

/// Kubernetes' short human durations (`45s`, `5m10s`, `3h`, `12d`, `2y`).
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

pub fn age(obj: &Value) -> String {
    let Some(ts) = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
    else {
        return "<unknown>".into();
    };
    match OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339) {
        Ok(t) => human_duration((OffsetDateTime::now_utc() - t).whole_seconds()),
        Err(_) => "<invalid>".into(),
    }
}

pub fn s<'a>(obj: &'a Value, ptr: &str) -> &'a str {
    obj.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

pub fn n(obj: &Value, ptr: &str) -> i64 {
    obj.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

pub fn len(obj: &Value, ptr: &str) -> usize {
    match obj.pointer(ptr) {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    }
}

pub fn or_none(v: String) -> Value {
    json!(if v.is_empty() {
        "<none>".to_string()
    } else {
        v
    })
}

/// Sets the field at `path` to `value` unless it already holds a non-null value, making
/// the objects on the way as needed.
pub fn set_default(obj: &mut Value, path: &[&str], value: Value) {
    let mut cur = obj;
    for (i, seg) in path.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        if i == path.len() - 1 {
            if cur.get(*seg).is_none_or(Value::is_null) {
                cur[*seg] = value;
            }
            return;
        }
        if !cur.get(*seg).is_some_and(Value::is_object) {
            cur[*seg] = json!({});
        }
        cur = &mut cur[*seg];
    }
}

/// Refuses an update that changes the field at `ptr` (JSON pointer), named `path` in the
/// message as kube-apiserver names it.
pub fn immutable(new: &Value, old: Option<&Value>, ptr: &str, path: &str) -> Result<(), String> {
    let Some(old) = old else {
        return Ok(());
    };
    let (a, b) = (old.pointer(ptr), new.pointer(ptr));
    let null = Value::Null;
    if a.unwrap_or(&null) == b.unwrap_or(&null) {
        Ok(())
    } else {
        Err(format!(
            "{path}: Invalid value: {}: field is immutable",
            b.unwrap_or(&null)
        ))
    }
}

/// `Err("<path>: Unsupported value: ...")` unless the string at `ptr` is absent or one of
/// `allowed`.
pub fn one_of(obj: &Value, ptr: &str, path: &str, allowed: &[&str]) -> Result<(), String> {
    match obj.pointer(ptr) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(v)) if allowed.contains(&v.as_str()) => Ok(()),
        Some(v) => Err(format!(
            "{path}: Unsupported value: {v}: supported values: {}",
            allowed
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// `Err("<path>: Required value")` when the string at `ptr` is absent or empty.
pub fn required<'a>(obj: &'a Value, ptr: &str, path: &str) -> Result<&'a str, String> {
    match obj.pointer(ptr).and_then(Value::as_str) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(format!("{path}: Required value")),
    }
}

/// A qualified name as Kubernetes checks label keys and provisioner names: an optional
/// DNS-subdomain prefix and `/`, then at most 63 alphanumerics, `-`, `_` or `.`, starting
/// and ending with an alphanumeric.
pub fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty() && p.len() <= 253 && p.split('.').all(crate::cluster::is_dns_label)
    });
    let bytes = name.as_bytes();
    prefix_ok
        && !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A string map as kubectl prints labels and node selectors (`a=1,b=2`); empty when absent.
pub fn map_text(obj: &Value, ptr: &str) -> String {
    obj.pointer(ptr)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// A label selector as kubectl prints it (`app=web,tier in (a,b)`), `<none>` when empty.
pub fn selector_text(sel: Option<&Value>) -> String {
    let mut parts = Vec::new();
    let labels = sel.map(|s| map_text(s, "/matchLabels")).unwrap_or_default();
    if !labels.is_empty() {
        parts.push(labels);
    }
    if let Some(Value::Array(exprs)) = sel.and_then(|s| s.get("matchExpressions")) {
        for e in exprs {
            let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            parts.push(match e.get("operator").and_then(Value::as_str) {
                Some("In") => format!("{key} in ({})", values.join(",")),
                Some("NotIn") => format!("{key} notin ({})", values.join(",")),
                Some("Exists") => key.to_string(),
                Some("DoesNotExist") => format!("!{key}"),
                _ => continue,
            });
        }
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}
