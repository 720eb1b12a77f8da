//! `additionalPrinterColumns`: the `kubectl get` columns a CustomResourceDefinition
//! declares, each a JSONPath into the object.
//!
//! What: [`Column::compile`] parses the path once; [`Column::cell`] reads one object's
//! cell, typed as the column says (`date` columns print as an age, like kube-apiserver's
//! table convertor). The JSONPath subset is what CRDs use: `.a.b`, `.a[0]`, `.a[*].b`,
//! quoted keys (`.metadata.labels['app\.kubernetes\.io/name']` is not needed: `['a.b']`),
//! and filters `[?(@.type=="Ready")]`. A path outside the subset is refused when the CRD
//! is written. Bounds: a path has at most 32 steps; a cell is at most 512 characters.

use serde_json::{json, Value};

/// One compiled column.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub ty: String,
    pub format: String,
    pub description: String,
    pub priority: u8,
    steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
    All,
    Filter(String, String),
}

const MAX_STEPS: usize = 32;
const MAX_CELL: usize = 512;

fn parse(path: &str) -> Result<Vec<Step>, String> {
    let p = path.trim();
    let p = p
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(p);
    if !p.starts_with('.') {
        return Err("must be a simple json path starting with .".into());
    }
    let chars: Vec<char> = p.chars().collect();
    let mut steps = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if steps.len() >= MAX_STEPS {
            return Err(format!("has more than {MAX_STEPS} steps"));
        }
        match chars[i] {
            '.' => {
                let start = i + 1;
                let mut j = start;
                while j < chars.len() && chars[j] != '.' && chars[j] != '[' {
                    j += 1;
                }
                if j == start {
                    return Err("has an empty field name".into());
                }
                steps.push(Step::Key(chars[start..j].iter().collect()));
                i = j;
            }
            '[' => {
                let close = chars[i..]
                    .iter()
                    .position(|c| *c == ']')
                    .map(|n| i + n)
                    .ok_or("has an unclosed [")?;
                let inner: String = chars[i + 1..close].iter().collect();
                steps.push(bracket(&inner)?);
                i = close + 1;
            }
            c => return Err(format!("has an unexpected {c:?}")),
        }
    }
    Ok(steps)
}

fn bracket(inner: &str) -> Result<Step, String> {
    let inner = inner.trim();
    if inner == "*" {
        return Ok(Step::All);
    }
    if let Ok(n) = inner.parse::<usize>() {
        return Ok(Step::Index(n));
    }
    if let Some(q) = inner
        .strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
    {
        return Ok(Step::Key(q.to_string()));
    }
    if let Some(f) = inner.strip_prefix("?(@.").and_then(|s| s.strip_suffix(')')) {
        if let Some((k, v)) = f.split_once("==") {
            let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
            return Ok(Step::Filter(k.trim().to_string(), v.to_string()));
        }
    }
    Err(format!("has an unsupported [{inner}]"))
}

fn walk<'a>(v: &'a Value, steps: &[Step], out: &mut Vec<&'a Value>) {
    let Some((first, rest)) = steps.split_first() else {
        out.push(v);
        return;
    };
    match first {
        Step::Key(k) => {
            if let Some(c) = v.get(k) {
                walk(c, rest, out);
            }
        }
        Step::Index(n) => {
            if let Some(c) = v.get(n) {
                walk(c, rest, out);
            }
        }
        Step::All => {
            for c in v.as_array().into_iter().flatten() {
                walk(c, rest, out);
            }
        }
        Step::Filter(k, want) => {
            for c in v.as_array().into_iter().flatten() {
                let hit = match c.get(k) {
                    Some(Value::String(s)) => s == want,
                    Some(other) => want.as_str() == other.to_string().as_str(),
                    None => false,
                };
                if hit {
                    walk(c, rest, out);
                }
            }
        }
    }
}

impl Column {
    /// Compiles the column at `at` (its field path in the CRD, for errors).
    pub fn compile(c: &Value, at: &str) -> Result<Column, String> {
        let text = |k: &str| {
            c.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let name = text("name");
        if name.is_empty() {
            return Err(format!("{at}.name: Required value"));
        }
        let ty = text("type");
        if !["integer", "number", "string", "boolean", "date"].contains(&ty.as_str()) {
            return Err(format!(
                "{at}.type: Unsupported value: \"{ty}\": supported values: \"boolean\", \"date\", \"integer\", \"number\", \"string\""
            ));
        }
        let path = text("jsonPath");
        let steps = parse(&path)
            .map_err(|why| format!("{at}.jsonPath: Invalid value: \"{path}\": {why}"))?;
        let priority = c.get("priority").and_then(Value::as_u64).unwrap_or(0);
        Ok(Column {
            name,
            ty,
            format: text("format"),
            description: text("description"),
            priority: priority.min(u8::MAX as u64) as u8,
            steps,
        })
    }

    /// The column as a Table `columnDefinitions` entry.
    pub fn definition(&self) -> Value {
        let ty = if self.ty == "date" {
            "string"
        } else {
            &self.ty
        };
        json!({"name": self.name, "type": ty, "format": self.format,
               "description": self.description, "priority": self.priority})
    }

    /// One object's cell; `null` when the path finds nothing (kubectl prints `<none>`).
    pub fn cell(&self, obj: &Value) -> Value {
        let mut found = Vec::new();
        walk(obj, &self.steps, &mut found);
        if found.is_empty() {
            return Value::Null;
        }
        if found.len() == 1 {
            let v = found[0];
            return match (self.ty.as_str(), v) {
                ("date", Value::String(s)) => json!(super::super::kinds::age(
                    &json!({"metadata": {"creationTimestamp": s}})
                )),
                ("integer" | "number" | "boolean", x) if !x.is_string() => x.clone(),
                (_, Value::String(s)) => json!(cut(s)),
                (_, x) => json!(cut(&x.to_string())),
            };
        }
        let joined: Vec<String> = found
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect();
        json!(cut(&joined.join(",")))
    }
}

fn cut(s: &str) -> String {
    if s.len() <= MAX_CELL {
        return s.to_string();
    }
    let end = s.char_indices().nth(MAX_CELL).map_or(s.len(), |(i, _)| i);
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(path: &str, ty: &str) -> Column {
        Column::compile(&json!({"name": "X", "type": ty, "jsonPath": path}), "c").expect(path)
    }

    #[test]
    fn cells_follow_the_paths_operators_use() {
        let obj = json!({
            "spec": {"replicas": 3, "hosts": [{"name": "a"}, {"name": "b"}], "dotted": {"a.b": "x"}},
            "status": {"conditions": [{"type": "Synced", "status": "False"},
                                      {"type": "Ready", "status": "True"}]},
            "metadata": {"creationTimestamp": "2000-01-01T00:00:00Z"},
        });
        assert_eq!(col(".spec.replicas", "integer").cell(&obj), json!(3));
        assert_eq!(
            col(".status.conditions[?(@.type==\"Ready\")].status", "string").cell(&obj),
            json!("True")
        );
        assert_eq!(
            col(".spec.hosts[*].name", "string").cell(&obj),
            json!("a,b")
        );
        assert_eq!(col(".spec.hosts[1].name", "string").cell(&obj), json!("b"));
        assert_eq!(col(".spec.dotted['a.b']", "string").cell(&obj), json!("x"));
        assert_eq!(col(".spec.missing", "string").cell(&obj), Value::Null);
        assert_eq!(
            col(".metadata.creationTimestamp", "date")
                .cell(&obj)
                .as_str()
                .map(|s| s.ends_with('y')),
            Some(true)
        );
    }

    #[test]
    fn paths_outside_the_subset_are_refused() {
        for bad in ["spec.x", ".spec[", ".spec..x", ".a[?(@.x>1)]", ""] {
            let c = Column::compile(
                &json!({"name": "X", "type": "string", "jsonPath": bad}),
                "c",
            );
            assert!(c.is_err(), "{bad}");
        }
        let deep = ".a".repeat(MAX_STEPS + 1);
        assert!(Column::compile(
            &json!({"name": "X", "type": "string", "jsonPath": deep}),
            "c"
        )
        .is_err());
        assert!(
            Column::compile(&json!({"name": "X", "type": "map", "jsonPath": ".a"}), "c").is_err()
        );
    }
}
