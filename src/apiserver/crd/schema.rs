//! Structural schemas: what a CustomResourceDefinition's `openAPIV3Schema` does to the
//! objects written through it, as kube-apiserver does — defaulting, pruning of unknown
//! fields, and validation.
//!
//! What: [`Schema::compile`] reads one version's schema once (when the definition changes)
//! and refuses one that is not structural (a node without `type`, a bad `pattern`, a
//! `default` that breaks its own schema); [`Schema::default_and_prune`] fills in `default`s
//! and drops fields the schema does not declare (unless `x-kubernetes-preserve-unknown-
//! fields`), reporting the dropped paths for `fieldValidation=Strict`; [`Schema::validate`]
//! checks types, formats, enums, patterns, bounds, `required`, uniqueness and the
//! `allOf`/`anyOf`/`oneOf`/`not` combinators, each failure worded as kube-apiserver words it
//! (`spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer:
//! "string"`) so kubectl shows the same message.
//!
//! Bounds: a compiled schema holds at most [`MAX_NODES`] nodes; patterns compile with a
//! size limit and match in linear time (the `regex` crate); walking an object follows the
//! schema, whose depth the JSON decoder already bounds. `x-kubernetes-validations` rules
//! are compiled with their node ([`super::cel`]) and run by [`Schema::check_rules`].
//! Limits: list types (`x-kubernetes-list-type: set/map`) are checked for duplicates and
//! correlate old items for `oldSelf`, but do not change how patches merge.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use regex::Regex;
use serde_json::{Map, Value};

/// The most nodes one version's schema may have (kube-prometheus' largest CRD has ~15,000).
pub const MAX_NODES: usize = 200_000;

/// One node of a structural schema.
#[derive(Debug, Default)]
pub struct Schema {
    pub(super) ty: Option<String>,
    pub(super) nullable: bool,
    /// Boxed: a B-tree node holds eleven values, most of them empty slots.
    pub(super) properties: BTreeMap<String, Box<Schema>>,
    /// `additionalProperties`: a schema for every other key (`Some`), or none allowed.
    pub(super) additional: Option<Box<Schema>>,
    additional_false: bool,
    pub(super) items: Option<Box<Schema>>,
    required: Vec<String>,
    enumeration: Option<Vec<Value>>,
    /// Shared by every node of the schema with the same pattern: a compiled regex and its
    /// matching caches cost tens of KiB, and large CRDs repeat their patterns.
    pattern: Option<Arc<Regex>>,
    format: Option<String>,
    min_length: Option<u64>,
    pub(super) max_length: Option<u64>,
    min_items: Option<u64>,
    pub(super) max_items: Option<u64>,
    min_properties: Option<u64>,
    pub(super) max_properties: Option<u64>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    exclusive_minimum: bool,
    exclusive_maximum: bool,
    multiple_of: Option<f64>,
    unique: bool,
    default: Option<Value>,
    pub(super) preserve_unknown: bool,
    pub(super) int_or_string: bool,
    embedded: bool,
    all_of: Vec<Schema>,
    any_of: Vec<Schema>,
    one_of: Vec<Schema>,
    not: Option<Box<Schema>>,
    /// `x-kubernetes-list-type`.
    list_type: Option<String>,
    /// `x-kubernetes-list-map-keys`, for `map` lists.
    map_keys: Vec<String>,
    /// `x-kubernetes-validations`, compiled.
    rules: Vec<super::cel::Rule>,
    /// Whether this node or one below it has rules (so writes skip rule-free subtrees).
    rules_below: bool,
}

/// What one compilation shares: the node budget and the compiled patterns.
struct Compiler {
    budget: usize,
    patterns: HashMap<String, Arc<Regex>>,
    /// What the CEL rules compiled so far may cost, and where they run.
    cel: super::cel::Budget,
}

impl Compiler {
    fn pattern(&mut self, p: &str, at: &str) -> Result<Arc<Regex>, String> {
        if let Some(re) = self.patterns.get(p) {
            return Ok(re.clone());
        }
        let re = regex::RegexBuilder::new(p)
            .size_limit(1 << 20)
            .dfa_size_limit(256 << 10)
            .build()
            .map_err(|e| {
                let first = e.to_string().lines().last().unwrap_or_default().to_string();
                format!("{at}.pattern: Invalid value: \"{p}\": {first}")
            })?;
        let re = Arc::new(re);
        self.patterns.insert(p.to_string(), re.clone());
        Ok(re)
    }
}

/// One field error, worded `<path>: <why>` as kube-apiserver's field errors.
pub type FieldError = String;

fn uint(v: &Value, key: &str, at: &str) -> Result<Option<u64>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(n) => n.as_u64().map(Some).ok_or_else(|| {
            format!("{at}.{key}: Invalid value: {n}: must be a non-negative integer")
        }),
    }
}

fn float(v: &Value, key: &str, at: &str) -> Result<Option<f64>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(n) => n
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("{at}.{key}: Invalid value: {n}: must be a number")),
    }
}

const TYPES: &[&str] = &["object", "array", "string", "integer", "number", "boolean"];

impl Schema {
    /// Compiles the schema at `at` (the field path of `openAPIV3Schema` in the CRD, for
    /// errors). The root must be an object.
    pub fn compile(v: &Value, at: &str) -> Result<Schema, String> {
        let mut c = Compiler {
            budget: MAX_NODES,
            patterns: HashMap::new(),
            cel: Default::default(),
        };
        let s = Self::node(v, at, &mut c, true)?;
        super::cel::check_total(&c.cel, at)?;
        if s.ty.as_deref() != Some("object") {
            return Err(format!(
                "{at}.type: Invalid value: \"{}\": must be object at the root",
                s.ty.as_deref().unwrap_or_default()
            ));
        }
        Ok(s)
    }

    fn node(v: &Value, at: &str, c: &mut Compiler, structural: bool) -> Result<Schema, String> {
        if c.budget == 0 {
            return Err(format!(
                "{at}: Too many: the schema has more than {MAX_NODES} nodes"
            ));
        }
        c.budget -= 1;
        let Some(m) = v.as_object() else {
            return Err(format!("{at}: Invalid value: {v}: must be a schema object"));
        };
        let flag = |k: &str| m.get(k).and_then(Value::as_bool).unwrap_or(false);
        let mut s = Schema {
            ty: m.get("type").and_then(Value::as_str).map(str::to_string),
            nullable: flag("nullable"),
            preserve_unknown: flag("x-kubernetes-preserve-unknown-fields"),
            int_or_string: flag("x-kubernetes-int-or-string"),
            embedded: flag("x-kubernetes-embedded-resource"),
            unique: flag("uniqueItems")
                || matches!(
                    m.get("x-kubernetes-list-type").and_then(Value::as_str),
                    Some("set")
                ),
            format: m.get("format").and_then(Value::as_str).map(str::to_string),
            min_length: uint(v, "minLength", at)?,
            max_length: uint(v, "maxLength", at)?,
            min_items: uint(v, "minItems", at)?,
            max_items: uint(v, "maxItems", at)?,
            min_properties: uint(v, "minProperties", at)?,
            max_properties: uint(v, "maxProperties", at)?,
            minimum: float(v, "minimum", at)?,
            maximum: float(v, "maximum", at)?,
            exclusive_minimum: flag("exclusiveMinimum"),
            exclusive_maximum: flag("exclusiveMaximum"),
            multiple_of: float(v, "multipleOf", at)?,
            default: m.get("default").cloned(),
            list_type: m
                .get("x-kubernetes-list-type")
                .and_then(Value::as_str)
                .map(str::to_string),
            map_keys: m
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|keys| {
                    keys.iter()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            ..Default::default()
        };
        if let Some(t) = &s.ty {
            if !TYPES.contains(&t.as_str()) {
                return Err(format!(
                    "{at}.type: Unsupported value: \"{t}\": supported values: \"array\", \"boolean\", \"integer\", \"number\", \"object\", \"string\""
                ));
            }
        } else if structural && !s.int_or_string && !s.preserve_unknown {
            return Err(format!(
                "{at}.type: Required value: must not be empty for specified object fields"
            ));
        }
        if s.multiple_of.is_some_and(|n| n <= 0.0) {
            return Err(format!(
                "{at}.multipleOf: Invalid value: must be greater than 0"
            ));
        }
        if let Some(p) = m.get("pattern").and_then(Value::as_str) {
            s.pattern = Some(c.pattern(p, at)?);
        }
        if let Some(e) = m.get("enum") {
            s.enumeration = Some(
                e.as_array()
                    .ok_or_else(|| format!("{at}.enum: Invalid value: must be a list"))?
                    .clone(),
            );
        }
        if let Some(r) = m.get("required") {
            let list = r
                .as_array()
                .ok_or_else(|| format!("{at}.required: Invalid value: must be a list of names"))?;
            s.required = list
                .iter()
                .map(|n| {
                    n.as_str().map(str::to_string).ok_or_else(|| {
                        format!("{at}.required: Invalid value: {n}: must be a field name")
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(Value::Object(props)) = m.get("properties") {
            for (k, p) in props {
                let child = Self::node(p, &format!("{at}.properties[{k}]"), c, structural)?;
                s.properties.insert(k.clone(), Box::new(child));
            }
        }
        match m.get("additionalProperties") {
            Some(Value::Bool(false)) => s.additional_false = true,
            Some(a @ Value::Object(_)) => {
                if !s.properties.is_empty() {
                    return Err(format!(
                        "{at}.additionalProperties: Forbidden: additionalProperties and properties are mutually exclusive"
                    ));
                }
                let outer = c.cel.cardinality;
                c.cel.cardinality *= s.max_properties.map_or_else(
                    || super::cel::unbounded_count(a.get("type").and_then(Value::as_str), true),
                    |m| m.max(1) as f64,
                );
                let child = Self::node(a, &format!("{at}.additionalProperties"), c, structural);
                c.cel.cardinality = outer;
                s.additional = Some(Box::new(child?));
            }
            _ => {}
        }
        if let Some(i) = m.get("items") {
            // Rules under a list run once per item; only `map` lists match items to old
            // ones, so elsewhere below a list `oldSelf` has nothing to refer to.
            let (outer, outer_uncorrelatable) = (c.cel.cardinality, c.cel.uncorrelatable.clone());
            c.cel.cardinality *= s.max_items.map_or_else(
                || super::cel::unbounded_count(i.get("type").and_then(Value::as_str), false),
                |m| m.max(1) as f64,
            );
            if s.list_type.as_deref() != Some("map") && c.cel.uncorrelatable.is_none() {
                c.cel.uncorrelatable = Some(at.to_string());
            }
            let child = Self::node(i, &format!("{at}.items"), c, structural);
            c.cel.cardinality = outer;
            c.cel.uncorrelatable = outer_uncorrelatable;
            s.items = Some(Box::new(child?));
        } else if s.ty.as_deref() == Some("array") && structural {
            return Err(format!("{at}.items: Required value: must be specified"));
        }
        for (key, list) in [("allOf", 0), ("anyOf", 1), ("oneOf", 2)] {
            let Some(Value::Array(branches)) = m.get(key) else {
                continue;
            };
            let compiled = branches
                .iter()
                .enumerate()
                // Branches of combinators only constrain: they need no `type`.
                .map(|(i, b)| Self::node(b, &format!("{at}.{key}[{i}]"), c, false))
                .collect::<Result<Vec<_>, _>>()?;
            match list {
                0 => s.all_of = compiled,
                1 => s.any_of = compiled,
                _ => s.one_of = compiled,
            }
        }
        if let Some(n) = m.get("not") {
            s.not = Some(Box::new(Self::node(n, &format!("{at}.not"), c, false)?));
        }
        if let Some(rules) = m.get("x-kubernetes-validations") {
            if structural {
                s.rules = super::cel::compile(rules, &s, at, &mut c.cel)?;
            }
        }
        s.rules_below = !s.rules.is_empty()
            || s.properties.values().any(|p| p.rules_below)
            || s.additional.as_deref().is_some_and(|a| a.rules_below)
            || s.items.as_deref().is_some_and(|i| i.rules_below);
        if structural {
            if let Some(d) = &s.default {
                let mut errs = Vec::new();
                s.check(d, &format!("{at}.default"), &mut errs);
                if let Some(e) = errs.into_iter().next() {
                    return Err(e);
                }
            }
        }
        Ok(s)
    }

    /// Fills in defaults and drops undeclared fields of `obj` (a whole custom object: its
    /// `apiVersion`, `kind` and `metadata` are kept). Returns the dropped field paths.
    pub fn default_and_prune(&self, obj: &mut Value) -> Vec<String> {
        let mut pruned = Vec::new();
        self.walk(obj, "", &mut pruned, true);
        pruned
    }

    fn walk(&self, v: &mut Value, at: &str, pruned: &mut Vec<String>, root: bool) {
        match v {
            Value::Object(m) => {
                for (k, p) in &self.properties {
                    let missing = match m.get(k) {
                        None => true,
                        Some(Value::Null) => !p.nullable && p.default.is_some(),
                        _ => false,
                    };
                    if missing {
                        if let Some(d) = &p.default {
                            m.insert(k.clone(), d.clone());
                        }
                    }
                }
                let keep_meta = root || self.embedded;
                let mut drop = Vec::new();
                for (k, child) in m.iter_mut() {
                    let path = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    if keep_meta && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                        if let Some(p) = self.properties.get(k).filter(|_| k != "metadata") {
                            p.walk(child, &path, pruned, false);
                        }
                        continue;
                    }
                    if let Some(p) = self.properties.get(k) {
                        p.walk(child, &path, pruned, false);
                    } else if let Some(a) = &self.additional {
                        a.walk(child, &format!("{at}[{k}]"), pruned, false);
                    } else if !self.preserve_unknown && !self.int_or_string {
                        drop.push(k.clone());
                        pruned.push(path);
                    }
                }
                for k in drop {
                    m.remove(&k);
                }
            }
            Value::Array(items) => {
                if let Some(i) = &self.items {
                    for (n, item) in items.iter_mut().enumerate() {
                        i.walk(item, &format!("{at}[{n}]"), pruned, false);
                    }
                }
            }
            _ => {}
        }
    }

    /// Checks `obj` (a whole custom object) against the schema.
    pub fn validate(&self, obj: &Value) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let Some(m) = obj.as_object() else {
            return vec!["<root>: Invalid value: must be an object".into()];
        };
        for (k, child) in m {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            if let Some(p) = self.properties.get(k) {
                p.check(child, k, &mut errs);
            }
        }
        for r in &self.required {
            if !m.contains_key(r) {
                errs.push(format!("{r}: Required value"));
            }
        }
        errs
    }

    /// Evaluates the `x-kubernetes-validations` rules on `obj` (a whole custom object that
    /// passed [`Schema::validate`]); `old` is the stored object on updates, whose values
    /// are `oldSelf` where they can be matched (properties, map values, `map` list items
    /// by key).
    pub fn check_rules(&self, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.rules_below {
            self.rules_walk(obj, old, "", true, &mut errs);
        }
        errs
    }

    fn rules_walk(
        &self,
        v: &Value,
        old: Option<&Value>,
        at: &str,
        root: bool,
        errs: &mut Vec<FieldError>,
    ) {
        if !self.rules.is_empty() && !v.is_null() {
            let this = super::cel::to_cel(v, Some(self), root);
            let before = old.map(|o| super::cel::to_cel(o, Some(self), root));
            for rule in &self.rules {
                if rule.applies(old.is_some()) {
                    errs.extend(rule.check(at, &this, before.as_ref(), v));
                }
            }
        }
        let child = |k: &str| {
            if at.is_empty() {
                k.to_string()
            } else {
                format!("{at}.{k}")
            }
        };
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if root && k == "metadata" {
                        continue;
                    }
                    let before = old.and_then(|o| o.get(k));
                    if let Some(p) = self.properties.get(k) {
                        if p.rules_below {
                            p.rules_walk(x, before, &child(k), false, errs);
                        }
                    } else if let Some(a) = self.additional.as_deref().filter(|a| a.rules_below) {
                        a.rules_walk(x, before, &format!("{at}[{k}]"), false, errs);
                    }
                }
            }
            Value::Array(items) => {
                let Some(schema) = self.items.as_deref().filter(|i| i.rules_below) else {
                    return;
                };
                let olds = old.and_then(Value::as_array);
                for (i, x) in items.iter().enumerate() {
                    let before = match (&self.list_type, olds) {
                        (Some(t), Some(olds)) if t == "map" && !self.map_keys.is_empty() => olds
                            .iter()
                            .find(|o| self.map_keys.iter().all(|k| o.get(k) == x.get(k))),
                        _ => None,
                    };
                    schema.rules_walk(x, before, &format!("{at}[{i}]"), false, errs);
                }
            }
            _ => {}
        }
    }

    fn type_error(at: &str, want: &str, v: &Value) -> FieldError {
        let got = match v {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_f64() => "number",
            Value::Number(_) => "integer",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        format!("{at}: Invalid value: \"{got}\": {at} in body must be of type {want}: \"{got}\"")
    }

    fn check(&self, v: &Value, at: &str, errs: &mut Vec<FieldError>) {
        if v.is_null() {
            if !self.nullable && self.ty.is_some() {
                errs.push(Self::type_error(
                    at,
                    self.ty.as_deref().unwrap_or_default(),
                    v,
                ));
            }
            return;
        }
        if self.int_or_string {
            if !(v.is_string() || v.is_i64() || v.is_u64()) {
                errs.push(Self::type_error(at, "integer,string", v));
                return;
            }
        } else if let Some(t) = &self.ty {
            let ok = match t.as_str() {
                "object" => v.is_object(),
                "array" => v.is_array(),
                "string" => v.is_string(),
                "integer" => v.is_i64() || v.is_u64(),
                "number" => v.is_number(),
                "boolean" => v.is_boolean(),
                _ => true,
            };
            if !ok {
                errs.push(Self::type_error(at, t, v));
                return;
            }
        }
        if let Some(allowed) = &self.enumeration {
            if !allowed.contains(v) {
                let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
                errs.push(format!(
                    "{at}: Unsupported value: {v}: supported values: {}",
                    list.join(", ")
                ));
            }
        }
        match v {
            Value::String(s) => self.check_string(s, at, errs),
            Value::Number(n) => self.check_number(n, v, at, errs),
            Value::Array(items) => self.check_array(items, at, errs),
            Value::Object(m) => self.check_object(m, at, errs),
            _ => {}
        }
        for b in &self.all_of {
            b.check(v, at, errs);
        }
        let passes = |b: &Schema| {
            let mut e = Vec::new();
            b.check(v, at, &mut e);
            e.is_empty()
        };
        if !self.any_of.is_empty() && !self.any_of.iter().any(passes) {
            errs.push(format!(
                "{at}: Invalid value: {}: {at} in body must match at least one schema (anyOf)",
                short(v)
            ));
        }
        if !self.one_of.is_empty() && self.one_of.iter().filter(|b| passes(b)).count() != 1 {
            errs.push(format!(
                "{at}: Invalid value: {}: {at} in body must match exactly one schema (oneOf)",
                short(v)
            ));
        }
        if let Some(n) = &self.not {
            if passes(n) {
                errs.push(format!(
                    "{at}: Invalid value: {}: {at} in body should not match the schema (not)",
                    short(v)
                ));
            }
        }
    }

    fn check_string(&self, s: &str, at: &str, errs: &mut Vec<FieldError>) {
        let chars = s.chars().count() as u64;
        if let Some(max) = self.max_length.filter(|m| chars > *m) {
            errs.push(format!("{at}: Too long: may not be more than {max} bytes"));
        }
        if let Some(min) = self.min_length.filter(|m| chars < *m) {
            errs.push(format!(
                "{at}: Invalid value: \"{s}\": {at} in body should be at least {min} chars long"
            ));
        }
        if let Some(re) = &self.pattern {
            if !re.is_match(s) {
                errs.push(format!(
                    "{at}: Invalid value: \"{s}\": {at} in body should match '{}'",
                    re.as_str()
                ));
            }
        }
        if let Some(f) = &self.format {
            if !format_ok(f, s) {
                errs.push(format!(
                    "{at}: Invalid value: \"{s}\": {at} in body must be of type {f}: \"{s}\""
                ));
            }
        }
    }

    fn check_number(
        &self,
        n: &serde_json::Number,
        v: &Value,
        at: &str,
        errs: &mut Vec<FieldError>,
    ) {
        let x = n.as_f64().unwrap_or_default();
        if let Some(max) = self.maximum {
            if x > max || (self.exclusive_maximum && x == max) {
                let rel = if self.exclusive_maximum {
                    "less than"
                } else {
                    "less than or equal to"
                };
                errs.push(format!(
                    "{at}: Invalid value: {v}: {at} in body should be {rel} {}",
                    num(max)
                ));
            }
        }
        if let Some(min) = self.minimum {
            if x < min || (self.exclusive_minimum && x == min) {
                let rel = if self.exclusive_minimum {
                    "greater than"
                } else {
                    "greater than or equal to"
                };
                errs.push(format!(
                    "{at}: Invalid value: {v}: {at} in body should be {rel} {}",
                    num(min)
                ));
            }
        }
        if let Some(m) = self.multiple_of {
            let q = x / m;
            if (q - q.round()).abs() > 1e-9 {
                errs.push(format!(
                    "{at}: Invalid value: {v}: {at} in body should be a multiple of {}",
                    num(m)
                ));
            }
        }
        if self.format.as_deref() == Some("int32")
            && n.as_i64().is_some_and(|i| i32::try_from(i).is_err())
        {
            errs.push(format!(
                "{at}: Invalid value: {v}: {at} in body must be of type int32: \"{v}\""
            ));
        }
    }

    fn check_array(&self, items: &[Value], at: &str, errs: &mut Vec<FieldError>) {
        let len = items.len() as u64;
        if let Some(max) = self.max_items.filter(|m| len > *m) {
            errs.push(format!(
                "{at}: Too many: {len}: must have at most {max} items"
            ));
        }
        if let Some(min) = self.min_items.filter(|m| len < *m) {
            errs.push(format!(
                "{at}: Invalid value: {len}: {at} in body should have at least {min} items"
            ));
        }
        if self.unique {
            for (i, item) in items.iter().enumerate() {
                if items[..i].contains(item) {
                    errs.push(format!("{at}[{i}]: Duplicate value: {}", short(item)));
                }
            }
        }
        if let Some(schema) = &self.items {
            for (i, item) in items.iter().enumerate() {
                schema.check(item, &format!("{at}[{i}]"), errs);
            }
        }
    }

    fn check_object(&self, m: &Map<String, Value>, at: &str, errs: &mut Vec<FieldError>) {
        let len = m.len() as u64;
        if let Some(max) = self.max_properties.filter(|x| len > *x) {
            errs.push(format!(
                "{at}: Too many: {len}: must have at most {max} items"
            ));
        }
        if let Some(min) = self.min_properties.filter(|x| len < *x) {
            errs.push(format!(
                "{at}: Invalid value: {len}: {at} in body should have at least {min} properties"
            ));
        }
        for r in &self.required {
            if !m.contains_key(r) {
                errs.push(format!("{at}.{r}: Required value"));
            }
        }
        if self.embedded {
            for field in ["apiVersion", "kind"] {
                if m.get(field)
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    errs.push(format!("{at}.{field}: Required value: must not be empty"));
                }
            }
        }
        for (k, child) in m {
            if let Some(p) = self.properties.get(k) {
                p.check(child, &format!("{at}.{k}"), errs);
            } else if let Some(a) = &self.additional {
                a.check(child, &format!("{at}[{k}]"), errs);
            } else if self.additional_false && !self.properties.is_empty() {
                errs.push(format!(
                    "{at}.{k}: Forbidden: additional properties are not allowed"
                ));
            }
        }
    }
}

/// A value for a message: strings quoted, anything long cut.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 64 {
        let cut = s.char_indices().nth(60).map_or(s.len(), |(i, _)| i);
        format!("{}...", &s[..cut])
    } else {
        s
    }
}

/// A bound as Go prints it: `10`, not `10.0`.
fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// The string formats kube-apiserver checks; unknown formats pass, as they do there.
fn format_ok(format: &str, s: &str) -> bool {
    let rfc3339 = |s: &str| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
    };
    match format {
        "date-time" | "datetime" => rfc3339(s),
        "date" => rfc3339(&format!("{s}T00:00:00Z")),
        "byte" => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(s).is_ok()
        }
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => s.parse::<ipnet::IpNet>().is_ok(),
        "uuid" => {
            s.len() == 36
                && s.char_indices().all(|(i, c)| {
                    if matches!(i, 8 | 13 | 18 | 23) {
                        c == '-'
                    } else {
                        c.is_ascii_hexdigit()
                    }
                })
        }
        "hostname" => s.len() <= 253 && s.split('.').all(crate::cluster::is_dns_label),
        "email" => s
            .split_once('@')
            .is_some_and(|(u, d)| !u.is_empty() && d.contains('.')),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn widget() -> Schema {
        Schema::compile(
            &json!({
                "type": "object",
                "properties": {
                    "spec": {
                        "type": "object",
                        "required": ["size"],
                        "properties": {
                            "size": {"type": "integer", "minimum": 1, "maximum": 10},
                            "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                            "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 8},
                            "port": {"x-kubernetes-int-or-string": true},
                            "tags": {"type": "array", "items": {"type": "string"},
                                     "x-kubernetes-list-type": "set", "maxItems": 3},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                            "template": {"type": "object", "x-kubernetes-embedded-resource": true,
                                         "x-kubernetes-preserve-unknown-fields": true},
                            "when": {"type": "string", "format": "date-time"},
                        },
                    },
                    "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
                },
            }),
            "spec.versions[0].schema.openAPIV3Schema",
        )
        .expect("compiles")
    }

    #[test]
    fn defaults_fill_in_and_unknown_fields_are_pruned_but_metadata_and_preserved_stay() {
        let s = widget();
        let mut obj = json!({
            "apiVersion": "example.com/v1", "kind": "Widget",
            "metadata": {"name": "w", "labels": {"x": "y"}},
            "spec": {"size": 2, "bogus": 1, "extra": {"anything": {"goes": true}},
                     "labels": {"a": "b"}},
            "topLevel": true,
        });
        let pruned = s.default_and_prune(&mut obj);
        assert_eq!(
            pruned,
            vec!["spec.bogus".to_string(), "topLevel".to_string()]
        );
        assert_eq!(obj["spec"]["color"], "red");
        assert_eq!(obj["spec"]["extra"]["anything"]["goes"], true);
        assert_eq!(obj["spec"]["labels"]["a"], "b");
        assert_eq!(obj["metadata"]["labels"]["x"], "y");
        assert!(s.validate(&obj).is_empty(), "{:?}", s.validate(&obj));
    }

    #[test]
    fn violations_are_worded_as_kube_apiserver_words_them() {
        let s = widget();
        let obj = json!({"spec": {"size": "big", "color": "pink", "name": "Abc",
                                  "tags": ["a", "a"], "port": 1.5, "when": "noon",
                                  "template": {"kind": "Pod"}}});
        let errs = s.validate(&obj);
        let want = [
            "spec.size: Invalid value: \"string\": spec.size in body must be of type integer: \"string\"",
            "spec.color: Unsupported value: \"pink\": supported values: \"red\", \"blue\"",
            "spec.name: Invalid value: \"Abc\": spec.name in body should match '^[a-z]+$'",
            "spec.tags[1]: Duplicate value: \"a\"",
            "spec.port: Invalid value: \"number\": spec.port in body must be of type integer,string: \"number\"",
            "spec.when: Invalid value: \"noon\": spec.when in body must be of type date-time: \"noon\"",
            "spec.template.apiVersion: Required value: must not be empty",
        ];
        for w in want {
            assert!(errs.iter().any(|e| e == w), "missing {w} in {errs:#?}");
        }
        let big = s.validate(&json!({"spec": {"size": 11}}));
        assert_eq!(
            big,
            vec!["spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10"]
        );
        assert_eq!(
            s.validate(&json!({"spec": {}})),
            vec!["spec.size: Required value"]
        );
        assert_eq!(
            s.validate(&json!({"spec": {"size": 1, "name": "abcdefghi"}})),
            vec!["spec.name: Too long: may not be more than 8 bytes"]
        );
    }

    #[test]
    fn schemas_that_are_not_structural_or_do_not_compile_are_refused() {
        let at = "spec.versions[0].schema.openAPIV3Schema";
        let untyped = json!({"type": "object", "properties": {"spec": {"properties": {}}}});
        assert_eq!(
            Schema::compile(&untyped, at).unwrap_err(),
            format!("{at}.properties[spec].type: Required value: must not be empty for specified object fields")
        );
        let bad_re =
            json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "("}}});
        assert!(Schema::compile(&bad_re, at)
            .unwrap_err()
            .contains(".pattern: Invalid value"));
        let bad_default =
            json!({"type": "object", "properties": {"a": {"type": "integer", "default": "x"}}});
        assert!(Schema::compile(&bad_default, at)
            .unwrap_err()
            .contains("properties[a].default: Invalid value"));
        assert!(Schema::compile(&json!({"type": "string"}), at).is_err());
        let combos = json!({"type": "object", "properties": {"a": {"type": "integer",
            "anyOf": [{"minimum": 5}, {"maximum": 1}]}}});
        let s = Schema::compile(&combos, at).expect("combinators need no type");
        assert!(s.validate(&json!({"a": 7})).is_empty());
        assert_eq!(s.validate(&json!({"a": 3})).len(), 1);
    }

    #[test]
    fn hostile_patterns_and_huge_schemas_are_bounded() {
        let at = "s";
        let mut props = Map::new();
        for i in 0..(MAX_NODES + 1) {
            props.insert(format!("f{i}"), json!({"type": "string"}));
        }
        let huge = json!({"type": "object", "properties": props});
        assert!(Schema::compile(&huge, at).unwrap_err().contains("Too many"));
        // Catastrophic backtracking in other engines; linear here.
        let s = Schema::compile(
            &json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "^(a+)+$"}}}),
            at,
        )
        .expect("compiles");
        let evil = format!("{}b", "a".repeat(100_000));
        assert_eq!(s.validate(&json!({ "a": evil })).len(), 1);
        assert!(Schema::compile(
            &json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "a{1000}{1000}"}}}),
            at
        )
        .is_err());
    }
}
