//! What a kind does beyond being stored, one file per kind: its OpenAPI schema, its
//! `kubectl get` columns and its validation, gathered in a [`Strategy`] that the kind's row
//! of the resource table ([`super::resources::RESOURCES`]) points at. Serving a new kind is
//! one file here and one row there.
//!
//! Kinds without a file yet keep their columns in `table.rs`, their schema in
//! `schemas.rs` and their checks in `admission.rs`/`defaults.rs`; they move here one by
//! one. The helpers below render table cells the way kubectl's printers do.

use serde_json::{json, Value};
use time::OffsetDateTime;

pub mod configmap;
pub mod poddisruptionbudget;

/// A table column: name, type, priority (0 always shown, 1 with `-o wide`).
pub type Col = (&'static str, &'static str, u8);

/// The Table columns and one object's cells.
pub type TableFn = fn(&Value) -> (Vec<Col>, Vec<Value>);
/// Checks `new` (replacing `old` on an update).
pub type ValidateFn = fn(&Value, Option<&Value>) -> Result<(), String>;

/// One kind's behaviour.
pub struct Strategy {
    /// Registers the kind's OpenAPI schema with the generator and returns its name.
    pub schema: fn(&mut schemars::SchemaGenerator) -> String,
    /// The Table columns, and one object's cells (called with `{}` for the columns
    /// alone); `None`: NAME and AGE.
    pub table: Option<TableFn>,
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
