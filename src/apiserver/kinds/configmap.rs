//! `ConfigMap` (core/v1): key-value data for pods.

use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{json, Value};

use super::{age, len, s, schema_of, Col, Strategy};

pub static STRATEGY: Strategy = Strategy {
    schema: schema_of::<ConfigMap>,
    table: Some(table),
    defaults: None,
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
            json!(s(o, "/metadata/name")),
            json!(len(o, "/data") + len(o, "/binaryData")),
            json!(age(o)),
        ],
    )
}
