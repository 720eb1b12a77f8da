//! CEL validation rules of structural schemas (`x-kubernetes-validations`), as
//! kube-apiserver applies them to custom objects.
//!
//! What: [`compile`] reads one schema node's rules when the definition is written or
//! loaded, refusing what kube-apiserver refuses (an empty rule, a message with line breaks,
//! an unknown `reason`, a `fieldPath` the schema does not have, a rule that does not parse,
//! names a variable or field the schema does not declare, uses `oldSelf` where an old value
//! cannot be correlated, or whose estimated cost exceeds the budget). [`Rule::check`]
//! evaluates a rule against one value (`self`, and `oldSelf` on updates) and words a
//! failure as kube-apiserver does: `spec: Invalid value: replicas must not exceed
//! maxReplicas`, or `failed rule: <rule>` without a message, `fieldPath` and `reason`
//! honoured, `messageExpression` evaluated.
//!
//! How: the `cel` crate parses and interprets the language (standard library, the `strings`
//! and `lists` extensions, optionals). It does no type checking and counts no cost while it
//! runs, so this module supplies both statically: [`estimate`] walks the parsed rule with
//! the shape of every value it can reach (from the schema: `maxItems`, `maxProperties`,
//! `maxLength`; unbounded sizes are what fits in a request body, as kube-apiserver assumes)
//! and multiplies by how many times the rule can run (one per item of every enclosing
//! list or map). A rule over [`PER_RULE_BUDGET`], or a schema whose rules add up to more
//! than [`PER_SCHEMA_BUDGET`], is refused when the definition is written, so every rule
//! that runs is bounded by the object it reads.
//!
//! Bounds: a rule or message expression is at most [`MAX_RULE_BYTES`]; it is parsed on a
//! thread of its own with a large stack (the parser recurses per operator), then refused if
//! it nests deeper than [`MAX_DEPTH`], so evaluating and dropping it stays shallow on any
//! thread. An evaluated message is at most [`MAX_MESSAGE_BYTES`] (kube-apiserver's limit).
//!
//! Limits: values of `format: date-time`/`duration` fields are strings, not timestamps;
//! the Kubernetes libraries (`quantity`, `url`, `ip`, `cidr`, `format`, `isSorted`, …)
//! are not provided; unchanged invalid values are not ratcheted (they fail again).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use cel::common::ast::{operators, EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::objects::{Key, Map, OptionalValue};
use cel::{Context, Env, ExecutionError};
pub use cel::{Program, Value as Cel};
use serde_json::Value;

use super::schema::Schema;

/// The longest rule, message expression or message accepted.
pub const MAX_RULE_BYTES: usize = 16 * 1024;
/// How deep a parsed rule may nest (operators, calls, selections).
pub const MAX_DEPTH: usize = 64;
/// The estimated cost one rule may have, times the number of times it can run
/// (kube-apiserver's `StaticEstimatedCostLimit`).
pub const PER_RULE_BUDGET: f64 = 10_000_000.0;
/// The estimated cost all rules of one version's schema may add up to
/// (kube-apiserver's `StaticEstimatedCRDCostLimit`).
pub const PER_SCHEMA_BUDGET: f64 = 100_000_000.0;
/// The longest message a `messageExpression` may produce.
pub const MAX_MESSAGE_BYTES: usize = 5 * 1024;
/// The request body size unbounded lists, maps and strings are assumed to fill.
const MAX_REQUEST_BYTES: f64 = 3.0 * 1024.0 * 1024.0;
/// The stack a rule is parsed on.
const PARSE_STACK: usize = 64 << 20;

/// How a failed rule is reported (`reason`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Reason {
    Invalid,
    Forbidden,
    Required,
    Duplicate,
}

/// One compiled rule of a schema node.
#[derive(Debug)]
pub struct Rule {
    source: String,
    program: Program,
    message: Option<String>,
    message_expression: Option<Program>,
    /// `fieldPath`, normalized (`.spec.x`, `[key]`), appended to the node's path.
    field_path: String,
    reason: Reason,
    uses_old_self: bool,
    optional_old_self: bool,
}

/// What compiling the rules of one schema shares.
#[derive(Debug)]
pub struct Budget {
    /// How many times a rule of the current node can run per object.
    pub cardinality: f64,
    /// The first enclosing list whose items cannot be matched to old ones, if any.
    pub uncorrelatable: Option<String>,
    /// The estimated cost of the rules compiled so far.
    pub total: f64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            cardinality: 1.0,
            uncorrelatable: None,
            total: 0.0,
        }
    }
}

fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Env::stdlib();
        // Both are kube-apiserver's libraries too; failing to add them only loses them.
        let _ = env.add_extension(cel::extensions::strings);
        let _ = env.add_extension(cel::extensions::lists);
        Arc::new(env)
    })
}

/// Parses `src` on a thread with a large stack and checks its depth there, so that a
/// hostile rule can neither overflow a request thread nor leave a deep tree behind.
fn parse(src: &str) -> Result<Program, String> {
    std::thread::scope(|s| {
        let parsed = std::thread::Builder::new()
            .name("cel-parse".into())
            .stack_size(PARSE_STACK)
            .spawn_scoped(s, || {
                let program = env().compile(src).map_err(|e| {
                    let mut out = String::from("compilation failed: ");
                    for (i, err) in e.errors.iter().take(4).enumerate() {
                        if i > 0 {
                            out.push_str("; ");
                        }
                        out.push_str(&format!(
                            "ERROR: <input>:{}:{}: {}",
                            err.pos.0, err.pos.1, err.msg
                        ));
                    }
                    out
                })?;
                if depth_exceeds(program.expression(), 0) {
                    return Err(format!(
                        "compilation failed: the expression nests deeper than {MAX_DEPTH} levels"
                    ));
                }
                Ok(program)
            })
            .map_err(|e| format!("compilation failed: cannot start the parser: {e}"))?;
        parsed
            .join()
            .unwrap_or_else(|_| Err("compilation failed: the parser failed".into()))
    })
}

fn depth_exceeds(e: &IdedExpr, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return true;
    }
    let d = depth + 1;
    match &e.expr {
        Expr::Call(c) => {
            c.target.as_deref().is_some_and(|t| depth_exceeds(t, d))
                || c.args.iter().any(|a| depth_exceeds(a, d))
        }
        Expr::Comprehension(c) => [
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ]
        .iter()
        .any(|x| depth_exceeds(x, d)),
        Expr::List(l) => l.elements.iter().any(|x| depth_exceeds(x, d)),
        Expr::Map(m) => m.entries.iter().any(|x| entry_exceeds(&x.expr, d)),
        Expr::Struct(s) => s.entries.iter().any(|x| entry_exceeds(&x.expr, d)),
        Expr::Select(s) => depth_exceeds(&s.operand, d),
        _ => false,
    }
}

fn entry_exceeds(e: &EntryExpr, d: usize) -> bool {
    match e {
        EntryExpr::MapEntry(m) => depth_exceeds(&m.key, d) || depth_exceeds(&m.value, d),
        EntryExpr::StructField(f) => depth_exceeds(&f.value, d),
    }
}

/// Compiles the `x-kubernetes-validations` list of the node `node` (at `at`, the field
/// path of the node in the CRD). Returns the first error, worded as kube-apiserver does.
pub fn compile(
    list: &Value,
    node: &Schema,
    at: &str,
    budget: &mut Budget,
) -> Result<Vec<Rule>, String> {
    let Some(items) = list.as_array() else {
        return Err(format!(
            "{at}.x-kubernetes-validations: Invalid value: must be a list of rules"
        ));
    };
    let mut rules = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let here = format!("{at}.x-kubernetes-validations[{i}]");
        let text = |k: &str| -> Result<Option<String>, String> {
            match item.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.len() > MAX_RULE_BYTES => Err(format!(
                    "{here}.{k}: Too long: may not be more than {MAX_RULE_BYTES} bytes"
                )),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(v) => Err(format!("{here}.{k}: Invalid value: {v}: must be a string")),
            }
        };
        if !item.is_object() {
            return Err(format!(
                "{here}: Invalid value: {item}: must be a rule object"
            ));
        }
        let rule = text("rule")?.unwrap_or_default();
        let message = text("message")?;
        let message_expression = text("messageExpression")?;
        let field_path = text("fieldPath")?;
        let reason = text("reason")?;
        let source = rule.trim().to_string();
        if source.is_empty() {
            return Err(format!(
                "{here}.rule: Required value: rule is not specified"
            ));
        }
        if let Some(m) = &message {
            if m.trim().is_empty() {
                return Err(format!(
                    "{here}.message: Invalid value: {}: message must be non-empty if specified",
                    quote(m)
                ));
            }
            if m.contains(['\n', '\r']) {
                return Err(format!(
                    "{here}.message: Invalid value: {}: message must not contain line breaks",
                    quote(m)
                ));
            }
        } else if source.contains(['\n', '\r']) {
            return Err(format!(
                "{here}.message: Required value: message must be specified if rule contains line breaks"
            ));
        }
        if message_expression
            .as_deref()
            .is_some_and(|m| m.trim().is_empty())
        {
            return Err(format!(
                "{here}.messageExpression: Required value: messageExpression must be non-empty if specified"
            ));
        }
        let reason = match reason.as_deref() {
            None | Some("FieldValueInvalid") => Reason::Invalid,
            Some("FieldValueForbidden") => Reason::Forbidden,
            Some("FieldValueRequired") => Reason::Required,
            Some("FieldValueDuplicate") => Reason::Duplicate,
            Some(other) => {
                return Err(format!(
                    "{here}.reason: Unsupported value: {}: supported values: \"FieldValueDuplicate\", \"FieldValueForbidden\", \"FieldValueInvalid\", \"FieldValueRequired\"",
                    quote(other)
                ))
            }
        };
        let field_path = match &field_path {
            None => String::new(),
            Some(p) => {
                if p.trim().is_empty() {
                    return Err(format!(
                        "{here}.fieldPath: Invalid value: {}: fieldPath must be non-empty if specified",
                        quote(p)
                    ));
                }
                normalize_field_path(p, node).ok_or_else(|| {
                    format!(
                        "{here}.fieldPath: Invalid value: {}: fieldPath must be a valid path",
                        quote(p)
                    )
                })?
            }
        };
        let optional_old_self = match item.get("optionalOldSelf") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(v) => {
                return Err(format!(
                    "{here}.optionalOldSelf: Invalid value: {v}: must be a boolean"
                ))
            }
        };
        let invalid =
            |why: String| format!("{here}.rule: Invalid value: {}: {why}", quote(&source));
        let program = parse(&source).map_err(invalid)?;
        let mut est = Estimator::new(node);
        let cost = est.cost(program.expression()).map_err(invalid)?;
        let uses_old_self = est.uses_old_self;
        if uses_old_self {
            if let Some(within) = &budget.uncorrelatable {
                return Err(invalid(format!(
                    "oldSelf cannot be used on the uncorrelatable portion of the schema within {within}"
                )));
            }
        } else if let Some(b) = optional_old_self {
            return Err(format!(
                "{here}.optionalOldSelf: Invalid value: {b}: may not be set if oldSelf is not used in rule"
            ));
        }
        let total = cost * budget.cardinality;
        if total > PER_RULE_BUDGET {
            return Err(format!(
                "{here}.rule: Forbidden: {}",
                over_budget("estimated rule cost", total, PER_RULE_BUDGET)
            ));
        }
        budget.total += total;
        let message_expression = match &message_expression {
            None => None,
            Some(src) => {
                let bad = |why: String| {
                    format!(
                        "{here}.messageExpression: Invalid value: {}: {why}",
                        quote(src.trim())
                    )
                };
                let p = parse(src.trim()).map_err(bad)?;
                let mut est = Estimator::new(node);
                let cost = est.cost(p.expression()).map_err(bad)?;
                if cost > PER_RULE_BUDGET {
                    return Err(format!(
                        "{here}.messageExpression: Forbidden: {}",
                        over_budget("estimated messageExpression cost", cost, PER_RULE_BUDGET)
                    ));
                }
                budget.total += cost;
                Some(p)
            }
        };
        rules.push(Rule {
            source,
            program,
            message: message.map(|m| m.trim().to_string()),
            message_expression,
            field_path,
            reason,
            uses_old_self,
            optional_old_self: optional_old_self.unwrap_or(false),
        });
    }
    Ok(rules)
}

/// The schema-wide check, once every rule is compiled.
pub fn check_total(budget: &Budget, at: &str) -> Result<(), String> {
    if budget.total > PER_SCHEMA_BUDGET {
        return Err(format!(
            "{at}: Forbidden: {}",
            over_budget("total CRD cost", budget.total, PER_SCHEMA_BUDGET)
        ));
    }
    Ok(())
}

fn over_budget(what: &str, cost: f64, limit: f64) -> String {
    let factor = cost / limit;
    let factor = if factor > 100.0 {
        "more than 100x".to_string()
    } else if factor < 1.5 {
        format!("{factor:.6}x")
    } else {
        format!("{factor:.1}x")
    };
    format!(
        "{what} exceeds budget by factor of {factor} (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
    )
}

fn quote(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// Parses a `fieldPath` (`.a.b`, `.a['k.x']`) against the node's schema; the path as
/// kube-apiserver prints it (`.a.b`, `.a[k.x]`), or `None` when it names no field.
fn normalize_field_path(path: &str, node: &Schema) -> Option<String> {
    let mut out = String::new();
    let mut at = node;
    let mut rest = path.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let (name, named) = if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let name = &r[..end];
            rest = &r[end..];
            (name.to_string(), !at.properties.is_empty())
        } else if let Some(r) = rest.strip_prefix("['") {
            let end = r.find("']")?;
            let name = r[..end].replace("\\'", "'");
            rest = &r[end + 2..];
            (name, !at.properties.is_empty())
        } else {
            return None;
        };
        if name.is_empty() {
            return None;
        }
        if named {
            at = at.properties.get(&name)?;
            out.push('.');
            out.push_str(&name);
        } else {
            at = at.additional.as_deref()?;
            out.push_str(&format!("[{name}]"));
        }
    }
    Some(out)
}

/// What the estimator knows about a value: its schema node, or a shape a function made.
#[derive(Clone)]
enum Shape<'s> {
    Node(&'s Schema),
    List(f64, Box<Shape<'s>>),
    Map(f64, Box<Shape<'s>>),
    Str(f64),
    Scalar,
    /// Anything (`x-kubernetes-preserve-unknown-fields` without a type): as big as a
    /// request.
    Dyn,
}

/// How many elements fit in a request body, each taking `min` bytes plus a separator.
fn unbounded(min: f64) -> f64 {
    (MAX_REQUEST_BYTES / (min + 1.0)).floor()
}

/// The most elements of type `ty` an unbounded list (or map, whose entries also carry a
/// key) can have in one request.
pub fn unbounded_count(ty: Option<&str>, map: bool) -> f64 {
    unbounded(min_size_of(ty) + if map { 3.0 } else { 0.0 })
}

/// The fewest bytes a value of this schema takes in JSON.
fn min_size(s: &Schema) -> f64 {
    min_size_of(s.ty.as_deref())
}

fn min_size_of(ty: Option<&str>) -> f64 {
    match ty {
        Some("string") => 2.0,
        Some("boolean") => 4.0,
        Some("object") | Some("array") => 2.0,
        _ => 1.0,
    }
}

impl<'s> Shape<'s> {
    fn of(s: &'s Schema) -> Shape<'s> {
        if s.int_or_string {
            return Shape::Str(s.max_length.map_or(MAX_REQUEST_BYTES, |m| m as f64));
        }
        match s.ty.as_deref() {
            Some("array") => {
                let elem = s.items.as_deref();
                let n = s
                    .max_items
                    .map(|m| m as f64)
                    .unwrap_or_else(|| unbounded(elem.map_or(1.0, min_size)));
                Shape::List(n, Box::new(elem.map_or(Shape::Dyn, Shape::Node)))
            }
            Some("object") if s.properties.is_empty() => match s.additional.as_deref() {
                Some(a) => {
                    // A key and a value: `"":` plus the value.
                    let n = s
                        .max_properties
                        .map(|m| m as f64)
                        .unwrap_or_else(|| unbounded(3.0 + min_size(a)));
                    Shape::Map(n, Box::new(Shape::Node(a)))
                }
                None if s.preserve_unknown => Shape::Dyn,
                None => Shape::Node(s),
            },
            Some("string") => Shape::Str(s.max_length.map_or(MAX_REQUEST_BYTES, |m| m as f64)),
            Some(_) => Shape::Node(s),
            None if s.preserve_unknown => Shape::Dyn,
            None => Shape::Node(s),
        }
    }

    /// The most elements (or characters) this value can have.
    fn size(&self) -> f64 {
        match self {
            Shape::List(n, _) | Shape::Map(n, _) | Shape::Str(n) => *n,
            Shape::Node(s) => match Shape::of(s) {
                Shape::Node(s) => s.properties.len().max(1) as f64,
                other => other.size(),
            },
            Shape::Scalar => 1.0,
            Shape::Dyn => unbounded(1.0),
        }
    }

    /// The shape of an element (for lists) or key (for maps), as a comprehension sees it.
    fn element(&self) -> Shape<'s> {
        match self {
            Shape::List(_, e) => (**e).clone(),
            Shape::Map(..) => Shape::Str(MAX_REQUEST_BYTES),
            Shape::Node(s) => match Shape::of(s) {
                Shape::Node(s) if !s.properties.is_empty() => Shape::Str(253.0),
                Shape::Node(_) => Shape::Dyn,
                other => other.element(),
            },
            Shape::Str(_) | Shape::Scalar => Shape::Scalar,
            Shape::Dyn => Shape::Dyn,
        }
    }

    /// The shape of `self.<field>`, or why there is none.
    fn field(&self, name: &str) -> Result<Shape<'s>, String> {
        match self {
            Shape::Node(s) => {
                if let Some(p) = s.properties.get(name) {
                    return Ok(Shape::of(p));
                }
                match Shape::of(s) {
                    Shape::Map(_, v) => Ok(*v),
                    Shape::Dyn => Ok(Shape::Dyn),
                    Shape::Node(s) if s.preserve_unknown => Ok(Shape::Dyn),
                    Shape::Node(s) if s.properties.is_empty() && s.ty.is_none() => Ok(Shape::Dyn),
                    _ => Err(format!(
                        "compilation failed: ERROR: <input>: undefined field '{name}'"
                    )),
                }
            }
            Shape::Map(_, v) => Ok((**v).clone()),
            _ => Ok(Shape::Dyn),
        }
    }
}

/// The static cost estimate of a rule (kube-apiserver's model, simplified: one unit per
/// operation, a tenth of a unit per character a string operation reads, one unit per
/// element a comprehension or `in` visits).
struct Estimator<'s> {
    vars: Vec<(String, Shape<'s>)>,
    uses_old_self: bool,
}

const TYPE_NAMES: &[&str] = &[
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "optional",
    "strings",
    "lists",
    "math",
];

impl<'s> Estimator<'s> {
    fn new(node: &'s Schema) -> Self {
        Estimator {
            vars: vec![
                ("self".into(), Shape::of(node)),
                ("oldSelf".into(), Shape::of(node)),
            ],
            uses_old_self: false,
        }
    }

    fn cost(&mut self, e: &IdedExpr) -> Result<f64, String> {
        Ok(self.walk(e)?.0)
    }

    fn walk(&mut self, e: &IdedExpr) -> Result<(f64, Shape<'s>), String> {
        match &e.expr {
            Expr::Unspecified => Ok((0.0, Shape::Scalar)),
            Expr::Literal(LiteralValue::String(s)) => Ok((1.0, Shape::Str(s.len() as f64))),
            Expr::Literal(_) => Ok((0.0, Shape::Scalar)),
            Expr::Ident(name) => {
                if name == "oldSelf" {
                    self.uses_old_self = true;
                }
                if let Some((_, shape)) = self.vars.iter().rev().find(|(n, _)| n == name) {
                    return Ok((1.0, shape.clone()));
                }
                if TYPE_NAMES.contains(&name.as_str()) {
                    return Ok((1.0, Shape::Scalar));
                }
                Err(format!(
                    "compilation failed: ERROR: <input>: undeclared reference to '{name}' (in container '')"
                ))
            }
            Expr::Select(s) => {
                let (c, shape) = self.walk(&s.operand)?;
                Ok((c + 1.0, shape.field(&s.field)?))
            }
            Expr::List(l) => {
                let mut cost = 1.0;
                let mut elem = Shape::Scalar;
                for x in &l.elements {
                    let (c, s) = self.walk(x)?;
                    cost += c;
                    elem = s;
                }
                Ok((cost, Shape::List(l.elements.len() as f64, Box::new(elem))))
            }
            Expr::Map(m) => {
                let mut cost = 1.0;
                for entry in &m.entries {
                    if let EntryExpr::MapEntry(x) = &entry.expr {
                        cost += self.walk(&x.key)?.0 + self.walk(&x.value)?.0;
                    }
                }
                Ok((
                    cost,
                    Shape::Map(m.entries.len() as f64, Box::new(Shape::Dyn)),
                ))
            }
            Expr::Struct(s) => {
                let mut cost = 1.0;
                for entry in &s.entries {
                    if let EntryExpr::StructField(f) = &entry.expr {
                        cost += self.walk(&f.value)?.0;
                    }
                }
                Ok((cost, Shape::Dyn))
            }
            Expr::Comprehension(c) => {
                let (range_cost, range) = self.walk(&c.iter_range)?;
                let n = range.size();
                let (init_cost, _) = self.walk(&c.accu_init)?;
                self.vars.push((c.iter_var.clone(), range.element()));
                if let Some(v2) = &c.iter_var2 {
                    self.vars.push((v2.clone(), Shape::Dyn));
                }
                self.vars
                    .push((c.accu_var.clone(), Shape::List(n, Box::new(Shape::Dyn))));
                let step = self
                    .walk(&c.loop_cond)
                    .and_then(|(a, _)| self.walk(&c.loop_step).map(|(b, _)| a + b));
                let result = self.walk(&c.result);
                self.vars.pop();
                if c.iter_var2.is_some() {
                    self.vars.pop();
                }
                self.vars.pop();
                let (result_cost, shape) = result?;
                Ok((range_cost + init_cost + n * step? + result_cost, shape))
            }
            Expr::Call(call) => {
                let mut cost = 1.0;
                let target = match &call.target {
                    Some(t) => {
                        let (c, s) = self.walk(t)?;
                        cost += c;
                        Some(s)
                    }
                    None => None,
                };
                let mut args = Vec::with_capacity(call.args.len());
                for a in &call.args {
                    let (c, s) = self.walk(a)?;
                    cost += c;
                    args.push(s);
                }
                let first = target.clone().or_else(|| args.first().cloned());
                let len = |s: &Option<Shape<'s>>| s.as_ref().map_or(1.0, Shape::size);
                let name = call.func_name.as_str();
                let shape = match name {
                    operators::INDEX | operators::OPT_INDEX => {
                        first.as_ref().map_or(Shape::Dyn, |s| match s {
                            Shape::Node(n) if !n.properties.is_empty() => Shape::Dyn,
                            other => match other {
                                Shape::Map(_, v) => (**v).clone(),
                                _ => other.element(),
                            },
                        })
                    }
                    operators::IN => {
                        cost += len(&args.get(1).cloned());
                        Shape::Scalar
                    }
                    operators::EQUALS | operators::NOT_EQUALS => {
                        cost += 0.1 * len(&first).min(len(&args.get(1).cloned()));
                        Shape::Scalar
                    }
                    operators::LESS
                    | operators::LESS_EQUALS
                    | operators::GREATER
                    | operators::GREATER_EQUALS
                    | "contains"
                    | "matches"
                    | "indexOf"
                    | "lastIndexOf" => {
                        cost += 0.1 * len(&first);
                        Shape::Scalar
                    }
                    // Comparing a prefix or suffix reads as much as the argument.
                    "startsWith" | "endsWith" => {
                        cost += 0.1 * len(&args.first().cloned());
                        Shape::Scalar
                    }
                    operators::ADD => {
                        let total = len(&first) + len(&args.get(1).cloned());
                        cost += 0.1 * total;
                        match first {
                            Some(Shape::Str(_)) => Shape::Str(total),
                            Some(Shape::List(_, e)) => Shape::List(total, e),
                            Some(Shape::Node(n)) => match Shape::of(n) {
                                Shape::Str(_) => Shape::Str(total),
                                Shape::List(_, e) => Shape::List(total, e),
                                _ => Shape::Scalar,
                            },
                            _ => Shape::Scalar,
                        }
                    }
                    "lowerAscii" | "upperAscii" | "trim" | "replace" | "substring" | "string"
                    | "format" | "join" | "quote" => {
                        cost += 0.1 * len(&first);
                        Shape::Str(len(&first))
                    }
                    "split" => {
                        cost += 0.1 * len(&first);
                        Shape::List(len(&first), Box::new(Shape::Str(len(&first))))
                    }
                    "sort" | "distinct" | "reverse" | "slice" | "flatten" => {
                        let n = len(&first);
                        cost += n * (n.max(2.0)).log2();
                        first.unwrap_or(Shape::Dyn)
                    }
                    _ => Shape::Scalar,
                };
                Ok((cost, shape))
            }
        }
    }
}

/// Compiles an expression outside a schema (admission policies), whose variables `vars`
/// may hold values of any shape: refused, like a rule, when it does not parse, names
/// another variable, nests too deep, or could cost more than [`PER_RULE_BUDGET`].
pub fn compile_expression(src: &str, vars: &[&str]) -> Result<Program, String> {
    if src.len() > MAX_RULE_BYTES {
        return Err(format!(
            "Too long: may not be more than {MAX_RULE_BYTES} bytes"
        ));
    }
    let program = parse(src.trim())?;
    let mut est = Estimator {
        vars: vars.iter().map(|v| (v.to_string(), Shape::Dyn)).collect(),
        uses_old_self: false,
    };
    let cost = est.cost(program.expression())?;
    if cost > PER_RULE_BUDGET {
        return Err(over_budget(
            "estimated expression cost",
            cost,
            PER_RULE_BUDGET,
        ));
    }
    Ok(program)
}

/// A map key for [`map`].
pub fn key(k: &str) -> Key {
    Key::String(Arc::new(k.to_string()))
}

/// A CEL map value.
pub fn map(entries: HashMap<Key, Cel>) -> Cel {
    Cel::Map(Map {
        map: Arc::new(entries),
    })
}

/// Evaluates a compiled expression with its variables bound.
pub fn evaluate(program: &Program, vars: &[(&str, &Cel)]) -> Result<Cel, String> {
    let mut ctx = Context::with_env(env().clone());
    for (name, value) in vars {
        ctx.add_variable_from_value(*name, (*value).clone());
    }
    program.execute(&ctx).map_err(|e| error_text(&e))
}

/// A JSON value as CEL sees it, typed by its schema: `integer` fields are ints, `number`
/// fields doubles (even when written `3`), objects maps with string keys. At the root only
/// `metadata.name` and `metadata.generateName` are visible, as in kube-apiserver.
pub fn to_cel(v: &Value, s: Option<&Schema>, root: bool) -> Cel {
    match v {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => {
            let double = s.is_some_and(|s| s.ty.as_deref() == Some("number"));
            match (n.as_i64(), double) {
                (Some(i), false) => Cel::Int(i),
                _ => Cel::Float(n.as_f64().unwrap_or(f64::NAN)),
            }
        }
        Value::String(x) => Cel::String(Arc::new(x.clone())),
        Value::Array(items) => {
            let elem = s.and_then(|s| s.items.as_deref());
            Cel::List(Arc::new(
                items.iter().map(|x| to_cel(x, elem, false)).collect(),
            ))
        }
        Value::Object(m) => {
            let mut out = HashMap::with_capacity(m.len());
            for (k, x) in m {
                let child = s.and_then(|s| {
                    s.properties
                        .get(k)
                        .map(|b| &**b)
                        .or(s.additional.as_deref())
                });
                let value = if root && k == "metadata" {
                    let mut meta = serde_json::Map::new();
                    for f in ["name", "generateName"] {
                        if let Some(x) = x.get(f) {
                            meta.insert(f.into(), x.clone());
                        }
                    }
                    to_cel(&Value::Object(meta), None, false)
                } else {
                    to_cel(x, child, false)
                };
                out.insert(Key::String(Arc::new(k.clone())), value);
            }
            Cel::Map(Map { map: Arc::new(out) })
        }
    }
}

fn error_text(e: &ExecutionError) -> String {
    match e {
        ExecutionError::NoSuchKey(k) => format!("no such key: {k}"),
        other => other.to_string(),
    }
}

impl Rule {
    /// Whether this rule runs for a value with (`Some`) or without an old value.
    pub fn applies(&self, has_old: bool) -> bool {
        !self.uses_old_self || has_old || self.optional_old_self
    }

    /// Evaluates the rule on `this` (and `old`) of the node at `at`; a failure as a field
    /// error line. `value` is the JSON value, for the message.
    pub fn check(&self, at: &str, this: &Cel, old: Option<&Cel>, value: &Value) -> Option<String> {
        let mut ctx = Context::with_env(env().clone());
        ctx.add_variable_from_value("self", this.clone());
        if self.uses_old_self {
            let old_value = if self.optional_old_self {
                Cel::Opaque(Arc::new(match old {
                    Some(o) => OptionalValue::of(o.clone()),
                    None => OptionalValue::none(),
                }))
            } else {
                old.cloned().unwrap_or(Cel::Null)
            };
            ctx.add_variable_from_value("oldSelf", old_value);
        }
        let path = |extra: &str| {
            let p = format!("{at}{extra}");
            let p = p.strip_prefix('.').unwrap_or(&p).to_string();
            if p.is_empty() {
                "<nil>".to_string()
            } else {
                p
            }
        };
        let shown = match value {
            Value::Object(_) | Value::Array(_) => None,
            other => Some(other.to_string()),
        };
        let invalid = |p: String, detail: &str| match &shown {
            Some(v) => format!("{p}: Invalid value: {v}: {detail}"),
            None => format!("{p}: Invalid value: {detail}"),
        };
        let short = self.message.as_deref().unwrap_or(&self.source);
        match self.program.execute(&ctx) {
            Ok(Cel::Bool(true)) => None,
            Ok(Cel::Bool(false)) => {
                let detail = self
                    .message_expression
                    .as_ref()
                    .and_then(|m| match m.execute(&ctx) {
                        Ok(Cel::String(s)) => {
                            let s = s.trim();
                            (!s.is_empty() && s.len() <= MAX_MESSAGE_BYTES && !s.contains('\n'))
                                .then(|| s.to_string())
                        }
                        _ => None,
                    })
                    .or_else(|| self.message.clone())
                    .unwrap_or_else(|| format!("failed rule: {}", self.source));
                let p = path(&self.field_path);
                Some(match self.reason {
                    Reason::Invalid => invalid(p, &detail),
                    Reason::Forbidden => format!("{p}: Forbidden: {detail}"),
                    Reason::Required => format!("{p}: Required value: {detail}"),
                    Reason::Duplicate => match &shown {
                        Some(v) => format!("{p}: Duplicate value: {v}"),
                        None => format!("{p}: Duplicate value"),
                    },
                })
            }
            Ok(other) => Some(invalid(
                path(""),
                &format!(
                    "the rule evaluated to {:?}, not a bool, evaluating rule: {short}",
                    other.type_of()
                ),
            )),
            Err(e) => Some(invalid(
                path(""),
                &format!("{} evaluating rule: {short}", error_text(&e)),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(v: Value) -> Result<Schema, String> {
        Schema::compile(&v, "spec.versions[0].schema.openAPIV3Schema")
    }

    fn spec_with(rules: Value, extra: Value) -> Value {
        let mut props = json!({
            "replicas": {"type": "integer"},
            "maxReplicas": {"type": "integer"},
            "name": {"type": "string", "maxLength": 63},
            "ratio": {"type": "number"},
            "tags": {"type": "array", "maxItems": 10, "items": {"type": "string", "maxLength": 20}},
            "anyTags": {"type": "array", "items": {"type": "string"}},
            "ports": {"type": "array", "x-kubernetes-list-type": "map",
                      "x-kubernetes-list-map-keys": ["name"],
                      "items": {"type": "object", "required": ["name"], "properties": {
                          "name": {"type": "string"}, "port": {"type": "integer",
                          "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "port is immutable"}]}}}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}}
        });
        if let (Some(p), Some(e)) = (props.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        json!({"type": "object", "properties": {"spec": {
            "type": "object", "properties": props, "x-kubernetes-validations": rules}}})
    }

    fn check(s: &Schema, obj: Value, old: Option<Value>) -> Vec<String> {
        s.check_rules(&obj, old.as_ref())
    }

    #[test]
    fn rules_hold_or_fail_with_kube_apiserver_wording() {
        let s = schema(spec_with(
            json!([
                {"rule": "self.replicas <= self.maxReplicas", "message": "replicas must not exceed maxReplicas"},
                {"rule": "!has(self.name) || self.name.startsWith('app-')"},
                {"rule": "self.tags.all(t, t.size() < 8)", "fieldPath": ".tags", "reason": "FieldValueForbidden"},
                {"rule": "self.ratio < 1.0", "messageExpression": "'ratio is ' + string(self.ratio)"},
                {"rule": "self.replicas == oldSelf.replicas || self.replicas > oldSelf.replicas", "message": "replicas cannot shrink"}
            ]),
            json!({}),
        ))
        .unwrap();
        let ok = json!({"spec": {"replicas": 2, "maxReplicas": 3, "name": "app-x", "tags": ["a"], "ratio": 0}});
        assert_eq!(check(&s, ok.clone(), None), Vec::<String>::new());
        let bad = json!({"spec": {"replicas": 5, "maxReplicas": 3, "name": "db", "tags": ["longer-tag"], "ratio": 2}});
        assert_eq!(
            check(&s, bad, None),
            vec![
                "spec: Invalid value: replicas must not exceed maxReplicas",
                "spec: Invalid value: failed rule: !has(self.name) || self.name.startsWith('app-')",
                "spec.tags: Forbidden: failed rule: self.tags.all(t, t.size() < 8)",
                "spec: Invalid value: ratio is 2",
            ]
        );
        // Transition rules run on updates only.
        let shrunk = json!({"spec": {"replicas": 1, "maxReplicas": 3, "name": "app-x", "tags": [], "ratio": 0}});
        assert_eq!(
            check(&s, shrunk, Some(ok)),
            vec!["spec: Invalid value: replicas cannot shrink"]
        );
        // A missing field is an evaluation error, as in kube-apiserver.
        let missing = json!({"spec": {"maxReplicas": 3, "tags": [], "ratio": 0}});
        let errs = check(&s, missing, None);
        assert_eq!(
            errs[0],
            "spec: Invalid value: no such key: replicas evaluating rule: replicas must not exceed maxReplicas"
        );
    }

    #[test]
    fn old_values_are_correlated_through_map_lists_and_properties() {
        let s = schema(spec_with(json!([]), json!({}))).unwrap();
        let old = json!({"spec": {"ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]}});
        let moved = json!({"spec": {"ports": [{"name": "https", "port": 443}, {"name": "http", "port": 8080}]}});
        assert_eq!(
            check(&s, moved, Some(old.clone())),
            vec!["spec.ports[1].port: Invalid value: 8080: port is immutable"]
        );
        let added = json!({"spec": {"ports": [{"name": "http", "port": 80}, {"name": "metrics", "port": 9090}]}});
        assert!(check(&s, added.clone(), Some(old)).is_empty());
        assert!(check(&s, added, None).is_empty(), "no oldSelf on create");
    }

    #[test]
    fn bad_rules_are_refused_when_the_definition_is_written() {
        let at =
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[0]";
        let refuse =
            |rule: Value, extra: Value| schema(spec_with(json!([rule]), extra)).unwrap_err();
        assert_eq!(
            refuse(json!({"rule": " "}), json!({})),
            format!("{at}.rule: Required value: rule is not specified")
        );
        assert!(refuse(json!({"rule": "self.replicas >"}), json!({}))
            .starts_with(&format!("{at}.rule: Invalid value: \"self.replicas >\": compilation failed: ERROR: <input>:1:")));
        assert!(
            refuse(json!({"rule": "self.nope > 1"}), json!({})).contains("undefined field 'nope'")
        );
        assert!(refuse(json!({"rule": "other > 1"}), json!({}))
            .contains("undeclared reference to 'other'"));
        assert!(refuse(json!({"rule": "true", "reason": "Bad"}), json!({}))
            .contains(".reason: Unsupported value: \"Bad\""));
        assert!(
            refuse(json!({"rule": "true", "fieldPath": ".missing"}), json!({}))
                .contains("fieldPath must be a valid path")
        );
        assert!(
            refuse(json!({"rule": "true", "message": "a\nb"}), json!({}))
                .contains("message must not contain line breaks")
        );
        assert!(
            refuse(json!({"rule": "true", "optionalOldSelf": true}), json!({}))
                .contains("may not be set if oldSelf is not used in rule")
        );
        // Quadratic in an unbounded list: refused with kube-apiserver's advice.
        let quadratic = refuse(
            json!({"rule": "self.anyTags.all(a, self.anyTags.all(b, a == b || a != b))"}),
            json!({}),
        );
        assert!(quadratic.contains(".rule: Forbidden: estimated rule cost exceeds budget by factor of more than 100x (try simplifying the rule, or adding maxItems"), "{quadratic}");
        // The same over a bounded list is fine.
        schema(spec_with(
            json!([{"rule": "self.tags.all(a, self.tags.all(b, a == b || a != b))"}]),
            json!({}),
        ))
        .unwrap();
        // oldSelf under a list whose items cannot be matched to old ones.
        let under_list = schema(
            json!({"type": "object", "properties": {"xs": {"type": "array",
            "maxItems": 4, "items": {"type": "string", "maxLength": 8,
            "x-kubernetes-validations": [{"rule": "self == oldSelf"}]}}}}),
        )
        .unwrap_err();
        assert!(
            under_list.contains(
                "oldSelf cannot be used on the uncorrelatable portion of the schema within"
            ),
            "{under_list}"
        );
    }

    #[test]
    fn hostile_rules_are_bounded() {
        let long = format!(
            "self.replicas == 1 {}",
            "&& true ".repeat(MAX_RULE_BYTES / 8)
        );
        assert!(schema(spec_with(json!([{"rule": long}]), json!({})))
            .unwrap_err()
            .contains("Too long: may not be more than 16384 bytes"));
        // Deep chains that parse: refused, and nothing overflows.
        for rule in [
            vec!["1"; 4000].join("+") + " > 0",
            format!("self{} == 1", ".a".repeat(4000)),
            format!("{}1{} == 1", "[".repeat(5000), "]".repeat(5000)),
            format!("{}1{} == 1", "(".repeat(5000), ")".repeat(5000)),
            format!("{}1{} == 1", "size(".repeat(2000), ")".repeat(2000)),
        ] {
            let err = schema(spec_with(json!([{"rule": rule}]), json!({}))).unwrap_err();
            assert!(err.contains("compilation failed"), "{err}");
        }
        // Garbage does not panic.
        for rule in [
            "'unterminated",
            "\u{0}\u{ffff}'''",
            "b'\\xff' +",
            "99999999999999999999999",
            "self.",
            "[1,2",
        ] {
            assert!(
                schema(spec_with(json!([{"rule": rule}]), json!({}))).is_err(),
                "{rule}"
            );
        }
        // Runtime errors are field errors, not panics.
        let s = schema(spec_with(
            json!([{"rule": "self.replicas / (self.maxReplicas - self.maxReplicas) == 1"},
                   {"rule": "self.replicas + 9223372036854775807 > 0"},
                   {"rule": "self.tags[5] == 'x'"},
                   {"rule": "self.replicas"}]),
            json!({}),
        ))
        .unwrap();
        let errs = check(
            &s,
            json!({"spec": {"replicas": 1, "maxReplicas": 2, "tags": []}}),
            None,
        );
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(
            errs.iter().all(|e| e.starts_with("spec: Invalid value: ")),
            "{errs:?}"
        );
    }
}
