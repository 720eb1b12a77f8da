//! Errors of loading, validating and writing a cluster definition.

use std::path::PathBuf;

/// One problem with one key of a cluster or profile file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The file, when the definition came from one.
    pub file: Option<PathBuf>,
    /// 1-based line of the key, when known.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `network.prefix` or `node[2].ip`; empty for syntax errors.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{line}: ", file.display())?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            _ => {}
        }
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no cluster definition in {dir}: cluster.toml is missing (create one with `kimg cluster new {dir}`)")]
    Missing { dir: PathBuf },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render_all(.0))]
    Invalid(Vec<FieldError>),
    #[error("creating the cluster's keys failed")]
    Secrets(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("{dir} already holds a cluster; refusing to overwrite its keys (pass --force to replace it; the old secrets are kept as a backup)")]
    Exists { dir: PathBuf },
}

fn render_all(errors: &[FieldError]) -> String {
    let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    if lines.len() == 1 {
        lines[0].clone()
    } else {
        format!("{} problems:\n  {}", lines.len(), lines.join("\n  "))
    }
}

impl ClusterError {
    /// The field errors, when this is a validation failure.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            ClusterError::Invalid(errors) => errors,
            _ => &[],
        }
    }
}
