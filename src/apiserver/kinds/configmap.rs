//! `ConfigMap` (core/v1): key-value data for pods.

use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{json, Value};

use super::{age, len, schema_of, Col, Strategy};

pub static STRATEGY: Strategy = Strategy {
    schema: schema_of::<ConfigMap>,
    table: Some(table),
    validate: None,
};

/// NAME, DATA (entries in `data` and `binaryData`), AGE.
fn table(o: &Value) -> (Vec<Col>, Vec<Value>) {
    (
        vec![
            ("Name", "string", 0),
            ("Data", "integer", 0),
            ("Age", "string", 0),
        ],
        vec![
            json!(o
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()),
            json!(len(o, "/data") + len(o, "/binaryData")),
            json!(age(o)),
        ],
    )
}
