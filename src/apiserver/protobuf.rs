//! Decoding of the Kubernetes protobuf encoding for the kinds kubectl's typed clients send.
//!
//! Why: kubectl 1.32 creates objects through client-go's typed clientset, which sends
//! `application/vnd.kubernetes.protobuf` bodies (`kubectl create namespace`, `create
//! configmap`, `create secret`, `create serviceaccount`, `create service`) and does not fall
//! back to JSON on 415. How: the body is the `k8s\0` magic followed by a `runtime.Unknown`
//! (type meta + raw bytes); the raw object is decoded with a small field table per message
//! into the same JSON the kind has on the wire. Limits: only Namespace, ConfigMap, Secret,
//! ServiceAccount and Service (with ObjectMeta minus ownerReferences and managedFields); any
//! other kind or unknown field is refused with 415, never silently dropped. Zero scalars
//! (`""`, `0`, `false`) are left out, as Go's JSON encoding of these kinds omits them.

use base64::Engine;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::object::timestamp;

/// The media type of the protobuf encoding.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

#[derive(Clone, Copy)]
enum Ty {
    Str,
    Int,
    Bool,
    Msg(&'static [F]),
    MapStr,
    MapBytes,
    Time,
    IntOrString,
}

/// One field: number, JSON name, type, repeated.
type F = (u64, &'static str, Ty, bool);

const OBJECT_META: &[F] = &[
    (1, "name", Ty::Str, false),
    (2, "generateName", Ty::Str, false),
    (3, "namespace", Ty::Str, false),
    (4, "selfLink", Ty::Str, false),
    (5, "uid", Ty::Str, false),
    (6, "resourceVersion", Ty::Str, false),
    (7, "generation", Ty::Int, false),
    (8, "creationTimestamp", Ty::Time, false),
    (9, "deletionTimestamp", Ty::Time, false),
    (10, "deletionGracePeriodSeconds", Ty::Int, false),
    (11, "labels", Ty::MapStr, false),
    (12, "annotations", Ty::MapStr, false),
    (14, "finalizers", Ty::Str, true),
];
const NAMESPACE_STATUS: &[F] = &[(1, "phase", Ty::Str, false)];
const LB_INGRESS: &[F] = &[(1, "ip", Ty::Str, false), (2, "hostname", Ty::Str, false)];
const LB_STATUS: &[F] = &[(1, "ingress", Ty::Msg(LB_INGRESS), true)];
const SERVICE_STATUS: &[F] = &[(1, "loadBalancer", Ty::Msg(LB_STATUS), false)];
const NAMESPACE_SPEC: &[F] = &[(1, "finalizers", Ty::Str, true)];
const NAMESPACE: &[F] = &[
    (1, "metadata", Ty::Msg(OBJECT_META), false),
    (2, "spec", Ty::Msg(NAMESPACE_SPEC), false),
    (3, "status", Ty::Msg(NAMESPACE_STATUS), false),
];
const CONFIG_MAP: &[F] = &[
    (1, "metadata", Ty::Msg(OBJECT_META), false),
    (2, "data", Ty::MapStr, false),
    (3, "binaryData", Ty::MapBytes, false),
    (4, "immutable", Ty::Bool, false),
];
const SECRET: &[F] = &[
    (1, "metadata", Ty::Msg(OBJECT_META), false),
    (2, "data", Ty::MapBytes, false),
    (3, "type", Ty::Str, false),
    (4, "stringData", Ty::MapStr, false),
    (5, "immutable", Ty::Bool, false),
];
const OBJECT_REFERENCE: &[F] = &[
    (1, "kind", Ty::Str, false),
    (2, "namespace", Ty::Str, false),
    (3, "name", Ty::Str, false),
    (4, "uid", Ty::Str, false),
    (5, "apiVersion", Ty::Str, false),
    (6, "resourceVersion", Ty::Str, false),
    (7, "fieldPath", Ty::Str, false),
];
const LOCAL_REFERENCE: &[F] = &[(1, "name", Ty::Str, false)];
const SERVICE_ACCOUNT: &[F] = &[
    (1, "metadata", Ty::Msg(OBJECT_META), false),
    (2, "secrets", Ty::Msg(OBJECT_REFERENCE), true),
    (3, "imagePullSecrets", Ty::Msg(LOCAL_REFERENCE), true),
    (4, "automountServiceAccountToken", Ty::Bool, false),
];
const SERVICE_PORT: &[F] = &[
    (1, "name", Ty::Str, false),
    (2, "protocol", Ty::Str, false),
    (3, "port", Ty::Int, false),
    (4, "targetPort", Ty::IntOrString, false),
    (5, "nodePort", Ty::Int, false),
    (6, "appProtocol", Ty::Str, false),
];
const SERVICE_SPEC: &[F] = &[
    (1, "ports", Ty::Msg(SERVICE_PORT), true),
    (2, "selector", Ty::MapStr, false),
    (3, "clusterIP", Ty::Str, false),
    (4, "type", Ty::Str, false),
    (5, "externalIPs", Ty::Str, true),
    (7, "sessionAffinity", Ty::Str, false),
    (8, "loadBalancerIP", Ty::Str, false),
    (9, "loadBalancerSourceRanges", Ty::Str, true),
    (10, "externalName", Ty::Str, false),
    (11, "externalTrafficPolicy", Ty::Str, false),
    (12, "healthCheckNodePort", Ty::Int, false),
    (13, "publishNotReadyAddresses", Ty::Bool, false),
    (17, "ipFamilyPolicy", Ty::Str, false),
    (18, "clusterIPs", Ty::Str, true),
    (19, "ipFamilies", Ty::Str, true),
    (20, "allocateLoadBalancerNodePorts", Ty::Bool, false),
    (21, "loadBalancerClass", Ty::Str, false),
    (22, "internalTrafficPolicy", Ty::Str, false),
    (23, "trafficDistribution", Ty::Str, false),
];
const SERVICE: &[F] = &[
    (1, "metadata", Ty::Msg(OBJECT_META), false),
    (2, "spec", Ty::Msg(SERVICE_SPEC), false),
    (3, "status", Ty::Msg(SERVICE_STATUS), false),
];

fn unsupported(reason: String) -> ApiError {
    tracing::debug!(%reason, "protobuf body refused");
    ApiError::UnsupportedMediaType {
        accepted: "application/json, application/yaml",
    }
}

/// Reads protobuf wire values from a buffer.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| unsupported("truncated varint".into()))?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(unsupported("varint too long".into()))
    }

    fn bytes(&mut self) -> Result<&'a [u8], ApiError> {
        let len = usize::try_from(self.varint()?).map_err(|_| unsupported("length".into()))?;
        if len > self.buf.len() {
            return Err(unsupported("truncated field".into()));
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }

    /// The next `(field number, wire type)`, or `None` at the end.
    fn tag(&mut self) -> Result<Option<(u64, u64)>, ApiError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let t = self.varint()?;
        Ok(Some((t >> 3, t & 7)))
    }
}

fn utf8(b: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(b.to_vec()).map_err(|_| unsupported("string is not utf-8".into()))
}

fn map_entry(b: &[u8], bytes_value: bool) -> Result<(String, Value), ApiError> {
    let mut r = Reader { buf: b };
    let (mut key, mut value) = (String::new(), json!(""));
    while let Some((field, _)) = r.tag()? {
        let v = r.bytes()?;
        match field {
            1 => key = utf8(v)?,
            2 if bytes_value => value = json!(base64::engine::general_purpose::STANDARD.encode(v)),
            2 => value = json!(utf8(v)?),
            _ => return Err(unsupported(format!("map entry field {field}"))),
        }
    }
    Ok((key, value))
}

fn message(b: &[u8], fields: &[F]) -> Result<Value, ApiError> {
    let mut r = Reader { buf: b };
    let mut out = Map::new();
    while let Some((num, wire)) = r.tag()? {
        let &(_, name, ty, repeated) = fields
            .iter()
            .find(|f| f.0 == num)
            .ok_or_else(|| unsupported(format!("unknown field {num}")))?;
        let value = match (ty, wire) {
            (Ty::Int, 0) => json!(r.varint()? as i64),
            (Ty::Bool, 0) => json!(r.varint()? != 0),
            (Ty::Str, 2) => json!(utf8(r.bytes()?)?),
            (Ty::Msg(sub), 2) => message(r.bytes()?, sub)?,
            (Ty::MapStr | Ty::MapBytes, 2) => {
                let (k, v) = map_entry(r.bytes()?, matches!(ty, Ty::MapBytes))?;
                let slot = out.entry(name).or_insert_with(|| json!({}));
                slot[k] = v;
                continue;
            }
            (Ty::Time, 2) => {
                let t = message(
                    r.bytes()?,
                    &[(1, "s", Ty::Int, false), (2, "n", Ty::Int, false)],
                )?;
                match t["s"].as_i64() {
                    Some(s) if s != 0 => time::OffsetDateTime::from_unix_timestamp(s)
                        .map(|t| json!(timestamp(t)))
                        .map_err(|_| unsupported("time out of range".into()))?,
                    _ => Value::Null,
                }
            }
            (Ty::IntOrString, 2) => {
                let v = message(
                    r.bytes()?,
                    &[
                        (1, "type", Ty::Int, false),
                        (2, "int", Ty::Int, false),
                        (3, "str", Ty::Str, false),
                    ],
                )?;
                if v["type"].as_i64() == Some(1) {
                    v.get("str").cloned().unwrap_or(json!(""))
                } else {
                    v.get("int").cloned().unwrap_or(json!(0))
                }
            }
            _ => return Err(unsupported(format!("field {num} has wire type {wire}"))),
        };
        // Go's generated marshallers write every non-pointer field, even when empty; the
        // JSON form omits them, so zero scalars are dropped.
        if value.is_null() || value == json!("") || value == json!(0) || value == json!(false) {
            continue;
        }
        if repeated {
            let slot = out.entry(name).or_insert_with(|| json!([]));
            if let Value::Array(a) = slot {
                a.push(value);
            }
        } else {
            out.insert(name.into(), value);
        }
    }
    Ok(Value::Object(out))
}

/// Decodes a `k8s\0`-prefixed `runtime.Unknown` holding one of the supported kinds.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let inner = body
        .strip_prefix(b"k8s\0")
        .ok_or_else(|| unsupported("missing the k8s protobuf magic".into()))?;
    let mut r = Reader { buf: inner };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while let Some((field, _)) = r.tag()? {
        let b = r.bytes()?;
        match field {
            1 => {
                let tm = message(
                    b,
                    &[
                        (1, "apiVersion", Ty::Str, false),
                        (2, "kind", Ty::Str, false),
                    ],
                )?;
                api_version = tm["apiVersion"].as_str().unwrap_or_default().into();
                kind = tm["kind"].as_str().unwrap_or_default().into();
            }
            2 => raw = b,
            3 | 4 if b.is_empty() => {}
            _ => return Err(unsupported(format!("runtime.Unknown field {field}"))),
        }
    }
    let schema = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Secret") => SECRET,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        ("v1", "Service") => SERVICE,
        _ => return Err(unsupported(format!("protobuf for {api_version} {kind}"))),
    };
    let mut obj = message(raw, schema)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(num: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(num << 3 | 2) as u8, payload.len() as u8];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn a_configmap_from_a_typed_client_decodes_to_its_json_form() {
        let meta = [field(1, b"cfg"), field(3, b"demo")].concat();
        let entry = [field(1, b"foo"), field(2, b"bar")].concat();
        let raw = [field(1, &meta), field(2, &entry)].concat();
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let body = [b"k8s\0".to_vec(), field(1, &type_meta), field(2, &raw)].concat();
        let obj = decode(&body).expect("decode");
        assert_eq!(
            obj,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "cfg", "namespace": "demo"}, "data": {"foo": "bar"}})
        );
    }

    #[test]
    fn unknown_kinds_fields_and_truncation_are_refused() {
        let type_meta = [field(1, b"apps/v1"), field(2, b"Deployment")].concat();
        let body = [b"k8s\0".to_vec(), field(1, &type_meta)].concat();
        assert!(matches!(
            decode(&body),
            Err(ApiError::UnsupportedMediaType { .. })
        ));
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let raw = field(9, b"x");
        let body = [b"k8s\0".to_vec(), field(1, &type_meta), field(2, &raw)].concat();
        assert!(decode(&body).is_err());
        assert!(decode(b"k8s\0\x0a\x7f").is_err());
        assert!(decode(b"{}").is_err());
    }
}
