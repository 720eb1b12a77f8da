//! Object plumbing shared by the verbs: decoding request bodies, stamping metadata, and the
//! storage encoding.
//!
//! Objects stay `serde_json::Value`: the apiserver is generic over kinds, and only a few
//! fields are read or defaulted per kind. Stored bytes never carry `resourceVersion`; it is
//! set from the key's `mod_revision` on every read, like Kubernetes does with etcd.

use rand::Rng;
use serde_json::{Map, Value};

pub use super::clock::{now, timestamp};
use super::error::ApiError;
use super::resources::Resource;
use crate::store::KeyValue;

/// The largest request body accepted (Kubernetes' limit).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// How large a YAML body may become once its aliases are expanded, in bytes of strings
/// plus 16 per node: 16 times what a body may hold. Aliases replay anchored subtrees, so a
/// 2.5 MB body of aliases to one anchored list expands to gigabytes (serde_yaml's own
/// limit counts jumps, not their size); kube-apiserver's YAML decoder refuses such
/// "excessive aliasing" too.
const MAX_YAML_EXPANSION: usize = 16 * MAX_BODY;

/// Builds a JSON value from YAML, charging every node and string to a budget.
struct YamlBudget<'a>(&'a std::cell::Cell<usize>);

impl YamlBudget<'_> {
    fn charge<E: serde::de::Error>(&self, n: usize) -> Result<(), E> {
        let left = self.0.get().checked_sub(n + 16).ok_or_else(|| {
            E::custom(format!(
                "the document expands to more than {MAX_YAML_EXPANSION} bytes (excessive aliasing)"
            ))
        })?;
        self.0.set(left);
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for YamlBudget<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for YamlBudget<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::from(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::from(v))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        self.charge(0)?;
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        self.charge(v.len())?;
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
        self.charge(v.len())?;
        Ok(Value::String(v))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Null)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.charge(0)?;
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(YamlBudget(self.0))? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.charge(0)?;
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(YamlBudget(self.0))? {
            let key = match key {
                Value::String(s) => s,
                other => other.to_string(),
            };
            let value = map.next_value_seed(YamlBudget(self.0))?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// Decodes a JSON or YAML body into an object (a JSON map).
pub fn decode(bytes: &[u8], content_type: &str) -> Result<Value, ApiError> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if media == super::protobuf::MEDIA_TYPE {
        return super::protobuf::decode(bytes);
    }
    let json_like = media.is_empty() || media == "*/*" || media.ends_with("json");
    if !json_like && !media.ends_with("yaml") {
        return Err(ApiError::UnsupportedMediaType {
            accepted: "application/json, application/yaml",
        });
    }
    let v: Value = if media.ends_with("yaml") {
        let budget = std::cell::Cell::new(MAX_YAML_EXPANSION);
        let de = serde_yaml::Deserializer::from_slice(bytes);
        serde::de::DeserializeSeed::deserialize(YamlBudget(&budget), de).map_err(|e| {
            ApiError::DecodeBody {
                reason: format!("error decoding YAML: {e}"),
            }
        })?
    } else {
        serde_json::from_slice(bytes).map_err(|e| ApiError::DecodeBody {
            reason: format!("error decoding JSON: {e}"),
        })?
    };
    Ok(v)
}

/// Decodes a body that must be an object of `res`'s kind; fills in `kind`/`apiVersion`.
pub fn decode_object(bytes: &[u8], content_type: &str, res: &Resource) -> Result<Value, ApiError> {
    let mut v = decode(bytes, content_type)?;
    check_kind(&mut v, res)?;
    Ok(v)
}

/// Checks that an object is a `res` (kind and apiVersion, if present) and sets both.
pub fn check_kind(v: &mut Value, res: &Resource) -> Result<(), ApiError> {
    let Value::Object(map) = v else {
        return Err(ApiError::DecodeBody {
            reason: "the request body must be a JSON object".into(),
        });
    };
    let api_version = res.api_version();
    if let Some(av) = map.get("apiVersion").and_then(Value::as_str) {
        if av != api_version {
            return Err(ApiError::DecodeBody {
                reason: format!("the API version in the data ({av}) does not match the expected API version ({api_version})"),
            });
        }
    }
    if let Some(k) = map.get("kind").and_then(Value::as_str) {
        if k != res.kind {
            return Err(ApiError::DecodeBody {
                reason: format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    res.kind
                ),
            });
        }
    }
    map.insert("kind".into(), Value::String(res.kind.into()));
    map.insert("apiVersion".into(), Value::String(api_version));
    if !map.get("metadata").is_some_and(Value::is_object) {
        map.insert("metadata".into(), Value::Object(Map::new()));
    }
    Ok(())
}

/// `metadata` of an object (created if missing).
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = Value::Object(Map::new());
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

/// A string field of `metadata`.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// A random (version 4) UUID.
pub fn new_uid() -> String {
    let mut b: [u8; 16] = rand::thread_rng().gen();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// `generateName` + five random characters from Kubernetes' alphabet.
pub fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::thread_rng();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{suffix}")
}

/// Sets `metadata.resourceVersion`.
pub fn set_rv(obj: &mut Value, rev: i64) {
    meta_mut(obj).insert("resourceVersion".into(), Value::String(rev.to_string()));
}

/// The object stored in `kv`, with its `resourceVersion`.
pub fn from_kv(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut v: Value = serde_json::from_slice(&kv.value).map_err(|e| ApiError::DecodeBody {
        reason: format!("stored object {} is not JSON: {e}", kv.key),
    })?;
    set_rv(&mut v, kv.mod_revision);
    Ok(v)
}

/// The largest object the apiserver stores, in bytes of its stored form: etcd refuses a
/// request over 1.5 MiB (its `--max-request-bytes` default), and the request also carries the
/// key and the transaction around the value.
pub const MAX_OBJECT: usize = 1536 * 1024 - 4096;

/// The bytes to store for `obj`, refused with 413 if etcd could not take them.
pub fn to_stored(obj: &Value) -> Result<Vec<u8>, ApiError> {
    let bytes = to_bytes(obj);
    if bytes.len() > MAX_OBJECT {
        return Err(ApiError::ObjectTooLarge {
            size: bytes.len(),
            limit: MAX_OBJECT,
        });
    }
    Ok(bytes)
}

/// The bytes to store for `obj` (without `resourceVersion`).
pub fn to_bytes(obj: &Value) -> Vec<u8> {
    let mut o = obj.clone();
    meta_mut(&mut o).remove("resourceVersion");
    serde_json::to_vec(&o).unwrap_or_default()
}

/// Parses a `resourceVersion` string.
pub fn parse_rv(s: &str) -> Result<i64, ApiError> {
    s.parse::<i64>().map_err(|_| ApiError::BadQuery {
        reason: format!("invalid resource version {s:?}"),
    })
}

/// The object's `resourceVersion`, if it carries a non-empty one.
pub fn rv_of(obj: &Value) -> Result<Option<i64>, ApiError> {
    match meta_str(obj, "resourceVersion") {
        None | Some("") => Ok(None),
        Some(s) => parse_rv(s).map(Some),
    }
}

/// The finalizers an object still waits for.
pub fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether an object marked for deletion may now go: no finalizers, no grace pending.
pub fn finished(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some()
        && finalizers(obj).is_empty()
        && obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::by_plural;
    use serde_json::json;

    #[test]
    fn a_body_of_another_kind_is_refused() {
        let cm = by_plural("configmaps").expect("configmaps");
        let err = decode_object(
            br#"{"kind":"Secret","apiVersion":"v1"}"#,
            "application/json",
            cm,
        );
        assert!(matches!(err, Err(ApiError::DecodeBody { .. })));
        let ok = decode_object(b"metadata: {name: a}\n", "application/yaml", cm).expect("yaml");
        assert_eq!(ok["kind"], "ConfigMap");
        assert!(decode_object(b"{not json", "application/json", cm).is_err());
        assert!(decode_object(b"[1]", "application/json", cm).is_err());
    }

    #[test]
    fn stored_bytes_drop_the_resource_version_and_reads_restore_it() {
        let mut o = json!({"metadata": {"name": "a", "resourceVersion": "5"}});
        let bytes = to_bytes(&o);
        assert!(!String::from_utf8_lossy(&bytes).contains("resourceVersion"));
        let kv = KeyValue {
            key: "/k".into(),
            value: bytes,
            create_revision: 7,
            mod_revision: 9,
        };
        o = from_kv(&kv).expect("decode");
        assert_eq!(o["metadata"]["resourceVersion"], "9");
    }

    #[test]
    fn uids_and_generated_names_have_the_kubernetes_shape() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        let n = generate_name("web-");
        assert_eq!(n.len(), 9);
        assert!(n.starts_with("web-"));
        assert_eq!(now().len(), 20);
    }

    #[test]
    fn yaml_aliases_that_expand_past_the_budget_are_refused() {
        // One anchored list of 1,000 strings, then 2,000 aliases to it (~20 KB of body,
        // ~200 MB expanded): a 4xx, quickly, without the memory.
        let mut body = String::from("apiVersion: v1\nkind: ConfigMap\nx: &a [");
        body.push_str(&vec!["\"0123456789012345678901234567890123456789\""; 1000].join(","));
        body.push_str("]\ny: [");
        body.push_str(&vec!["*a"; 2000].join(","));
        body.push_str("]\n");
        let started = std::time::Instant::now();
        let err = decode(body.as_bytes(), "application/yaml").unwrap_err();
        assert!(err.to_string().contains("excessive aliasing"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        // Anchors and aliases within the budget work as YAML says; keys become strings.
        let ok = "a: &n {x: 1}\nb: *n\n1: one\ntrue: yes\nf: 1.5\nz: ~\n";
        let v = decode(ok.as_bytes(), "application/yaml").unwrap();
        assert_eq!(v["b"], serde_json::json!({"x": 1}));
        assert_eq!(v["1"], "one");
        assert_eq!(v["true"], "yes");
        assert_eq!(v["f"], 1.5);
        assert!(v["z"].is_null());
    }
}

#[cfg(test)]
mod decode_props {
    use super::*;
    use crate::apiserver::resources::RESOURCES;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Regression guard for the request decoders: any bytes under any content type
        /// give an object or a 4xx error, never a panic.
        #[test]
        fn arbitrary_bodies_decode_or_fail_with_a_client_error(
            body in proptest::collection::vec(any::<u8>(), 0..256),
            ct in prop_oneof![
                Just("application/json"),
                Just("application/yaml"),
                Just("application/vnd.kubernetes.protobuf"),
                Just("text/plain"),
            ],
            which in 0..RESOURCES.len(),
        ) {
            let mut prefixed = b"k8s\0".to_vec();
            prefixed.extend_from_slice(&body);
            for bytes in [&body, &prefixed] {
                if let Err(e) = decode_object(bytes, ct, &RESOURCES[which]) {
                    let code = e.status_object()["code"].as_u64().unwrap_or(0);
                    prop_assert!((400..500).contains(&code), "{e}");
                }
            }
        }

        #[test]
        fn arbitrary_selectors_parse_or_fail_without_panicking(s in "\\PC{0,64}") {
            let _ = crate::apiserver::Selector::labels(&s);
            let _ = crate::apiserver::Selector::fields(&s);
        }
    }
}
