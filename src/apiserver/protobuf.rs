//! Decoding of the Kubernetes protobuf encoding for the kinds kubectl's typed clients send.
//!
//! Why: kubectl (1.30 to 1.37) creates objects through client-go's typed clientset, which
//! sends `application/vnd.kubernetes.protobuf` bodies (`kubectl create namespace`, `create
//! configmap`, `create secret`, `create serviceaccount`, `create service`) and does not fall
//! back to JSON on 415. How: the body is the `k8s\0` magic followed by a `runtime.Unknown`
//! (type meta + raw bytes); the raw object is decoded with a small field table per message
//! into the same JSON the kind has on the wire. Limits: only Namespace, ConfigMap, Secret,
//! ServiceAccount, Service, Pod, Deployment, Job, CronJob, the RBAC kinds, the review
//! kinds ([`super::review`]), TokenRequest and CertificateSigningRequest (`kubectl
//! certificate approve|deny` update the approval subresource with one), with the fields the
//! `kubectl create`/`run` generators set; any other kind, or an unlisted field holding a
//! non-zero value, is refused with 415, never silently dropped. Zero values (`""`, `0`,
//! `false`, empty messages) are left out, as Go's JSON encoding omits them — which also
//! drops an explicit `replicas: 0`.

use base64::Engine;
use serde_json::{json, Map, Value};

use super::clock::timestamp;
use super::error::ApiError;

/// The media type of the protobuf encoding.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

#[derive(Clone, Copy)]
enum Ty {
    Str,
    /// `bytes`, base64 in the JSON form.
    Bytes,
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
const CSR_SPEC: &[F] = &[
    (1, "request", Ty::Bytes, false),
    (2, "username", Ty::Str, false),
    (3, "uid", Ty::Str, false),
    (4, "groups", Ty::Str, true),
    (5, "usages", Ty::Str, true),
    (7, "signerName", Ty::Str, false),
    (8, "expirationSeconds", Ty::Int, false),
];
const CSR_CONDITION: &[F] = &[
    (1, "type", Ty::Str, false),
    (2, "reason", Ty::Str, false),
    (3, "message", Ty::Str, false),
    (4, "lastUpdateTime", Ty::Time, false),
    (5, "lastTransitionTime", Ty::Time, false),
    (6, "status", Ty::Str, false),
];
const CSR_STATUS: &[F] = &[
    (1, "conditions", Ty::Msg(CSR_CONDITION), true),
    (2, "certificate", Ty::Bytes, false),
];
const CSR: &[F] = &[
    (1, "metadata", Ty::Msg(OBJECT_META), false),
    (2, "spec", Ty::Msg(CSR_SPEC), false),
    (3, "status", Ty::Msg(CSR_STATUS), false),
];
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

const ENV_VAR: &[F] = &[(1, "name", Ty::Str, false), (2, "value", Ty::Str, false)];
const CONTAINER_PORT: &[F] = &[
    (1, "name", Ty::Str, false),
    (2, "hostPort", Ty::Int, false),
    (3, "containerPort", Ty::Int, false),
    (4, "protocol", Ty::Str, false),
    (5, "hostIP", Ty::Str, false),
];
const CONTAINER: &[F] = &[
    (1, "name", Ty::Str, false),
    (2, "image", Ty::Str, false),
    (3, "command", Ty::Str, true),
    (4, "args", Ty::Str, true),
    (5, "workingDir", Ty::Str, false),
    (6, "ports", Ty::Msg(CONTAINER_PORT), true),
    (7, "env", Ty::Msg(ENV_VAR), true),
    (13, "terminationMessagePath", Ty::Str, false),
    (14, "imagePullPolicy", Ty::Str, false),
    (16, "stdin", Ty::Bool, false),
    (17, "stdinOnce", Ty::Bool, false),
    (18, "tty", Ty::Bool, false),
    (20, "terminationMessagePolicy", Ty::Str, false),
];
const POD_SPEC: &[F] = &[
    (2, "containers", Ty::Msg(CONTAINER), true),
    (3, "restartPolicy", Ty::Str, false),
    (4, "terminationGracePeriodSeconds", Ty::Int, false),
    (6, "dnsPolicy", Ty::Str, false),
    (7, "nodeSelector", Ty::MapStr, false),
    (8, "serviceAccountName", Ty::Str, false),
    (9, "serviceAccount", Ty::Str, false),
    (10, "nodeName", Ty::Str, false),
    (11, "hostNetwork", Ty::Bool, false),
    (15, "imagePullSecrets", Ty::Msg(LOCAL_REFERENCE), true),
    (16, "hostname", Ty::Str, false),
    (17, "subdomain", Ty::Str, false),
    (19, "schedulerName", Ty::Str, false),
    (20, "initContainers", Ty::Msg(CONTAINER), true),
];
const POD: &[F] = &[
    (1, "metadata", Ty::Msg(OBJECT_META), false),
    (2, "spec", Ty::Msg(POD_SPEC), false),
];
const POD_TEMPLATE: &[F] = POD;
const LABEL_SELECTOR: &[F] = &[(1, "matchLabels", Ty::MapStr, false)];
const STRATEGY: &[F] = &[(1, "type", Ty::Str, false)];
const DEPLOYMENT_SPEC: &[F] = &[
    (1, "replicas", Ty::Int, false),
    (2, "selector", Ty::Msg(LABEL_SELECTOR), false),
    (3, "template", Ty::Msg(POD_TEMPLATE), false),
    (4, "strategy", Ty::Msg(STRATEGY), false),
    (5, "minReadySeconds", Ty::Int, false),
    (6, "revisionHistoryLimit", Ty::Int, false),
    (7, "paused", Ty::Bool, false),
    (9, "progressDeadlineSeconds", Ty::Int, false),
];
const DEPLOYMENT: &[F] = &[
    (1, "metadata", Ty::Msg(OBJECT_META), false),
    (2, "spec", Ty::Msg(DEPLOYMENT_SPEC), false),
];
const JOB_SPEC: &[F] = &[
    (1, "parallelism", Ty::Int, false),
    (2, "completions", Ty::Int, false),
    (3, "activeDeadlineSeconds", Ty::Int, false),
    (4, "selector", Ty::Msg(LABEL_SELECTOR), false),
    (5, "manualSelector", Ty::Bool, false),
    (6, "template", Ty::Msg(POD_TEMPLATE), false),
    (7, "backoffLimit", Ty::Int, false),
    (8, "ttlSecondsAfterFinished", Ty::Int, false),
    (9, "completionMode", Ty::Str, false),
    (10, "suspend", Ty::Bool, false),
];
const JOB: &[F] = &[
    (1, "metadata", Ty::Msg(OBJECT_META), false),
    (2, "spec", Ty::Msg(JOB_SPEC), false),
];
const CRON_JOB_SPEC: &[F] = &[
    (1, "schedule", Ty::Str, false),
    (2, "startingDeadlineSeconds", Ty::Int, false),
    (3, "concurrencyPolicy", Ty::Str, false),
    (4, "suspend", Ty::Bool, false),
    (5, "jobTemplate", Ty::Msg(JOB), false),
    (6, "successfulJobsHistoryLimit", Ty::Int, false),
    (7, "failedJobsHistoryLimit", Ty::Int, false),
    (8, "timeZone", Ty::Str, false),
];
const CRON_JOB: &[F] = &[
    (1, "metadata", Ty::Msg(OBJECT_META), false),
    (2, "spec", Ty::Msg(CRON_JOB_SPEC), false),
];
const SUBJECT: &[F] = &[
    (1, "kind", Ty::Str, false),
    (2, "apiGroup", Ty::Str, false),
    (3, "name", Ty::Str, false),
    (4, "namespace", Ty::Str, false),
];
const ROLE_REF: &[F] = &[
    (1, "apiGroup", Ty::Str, false),
    (2, "kind", Ty::Str, false),
    (3, "name", Ty::Str, false),
];
const BINDING: &[F] = &[
    (1, "metadata", Ty::Msg(OBJECT_META), false),
    (2, "subjects", Ty::Msg(SUBJECT), true),
    (3, "roleRef", Ty::Msg(ROLE_REF), false),
];
const POLICY_RULE: &[F] = &[
    (1, "verbs", Ty::Str, true),
    (2, "apiGroups", Ty::Str, true),
    (3, "resources", Ty::Str, true),
    (4, "resourceNames", Ty::Str, true),
    (5, "nonResourceURLs", Ty::Str, true),
];
const RESOURCE_ATTRIBUTES: &[F] = &[
    (1, "namespace", Ty::Str, false),
    (2, "verb", Ty::Str, false),
    (3, "group", Ty::Str, false),
    (4, "version", Ty::Str, false),
    (5, "resource", Ty::Str, false),
    (6, "subresource", Ty::Str, false),
    (7, "name", Ty::Str, false),
];
const NON_RESOURCE_ATTRIBUTES: &[F] = &[(1, "path", Ty::Str, false), (2, "verb", Ty::Str, false)];
const ACCESS_REVIEW_SPEC: &[F] = &[
    (1, "resourceAttributes", Ty::Msg(RESOURCE_ATTRIBUTES), false),
    (
        2,
        "nonResourceAttributes",
        Ty::Msg(NON_RESOURCE_ATTRIBUTES),
        false,
    ),
];
const ACCESS_REVIEW: &[F] = &[
    (1, "metadata", Ty::Msg(OBJECT_META), false),
    (2, "spec", Ty::Msg(ACCESS_REVIEW_SPEC), false),
];
const SUBJECT_ACCESS_REVIEW_SPEC: &[F] = &[
    (1, "resourceAttributes", Ty::Msg(RESOURCE_ATTRIBUTES), false),
    (
        2,
        "nonResourceAttributes",
        Ty::Msg(NON_RESOURCE_ATTRIBUTES),
        false,
    ),
    (3, "user", Ty::Str, false),
    (4, "groups", Ty::Str, true),
    (6, "uid", Ty::Str, false),
];
const SUBJECT_ACCESS_REVIEW: &[F] = &[
    (1, "metadata", Ty::Msg(OBJECT_META), false),
    (2, "spec", Ty::Msg(SUBJECT_ACCESS_REVIEW_SPEC), false),
];
const RULES_REVIEW_SPEC: &[F] = &[(1, "namespace", Ty::Str, false)];
const RULES_REVIEW: &[F] = &[
    (1, "metadata", Ty::Msg(OBJECT_META), false),
    (2, "spec", Ty::Msg(RULES_REVIEW_SPEC), false),
];
const TOKEN_REVIEW_SPEC: &[F] = &[
    (1, "token", Ty::Str, false),
    (2, "audiences", Ty::Str, true),
];
const TOKEN_REVIEW: &[F] = &[
    (1, "metadata", Ty::Msg(OBJECT_META), false),
    (2, "spec", Ty::Msg(TOKEN_REVIEW_SPEC), false),
];
const SELF_SUBJECT_REVIEW: &[F] = &[(1, "metadata", Ty::Msg(OBJECT_META), false)];
const BOUND_OBJECT: &[F] = &[
    (1, "kind", Ty::Str, false),
    (2, "apiVersion", Ty::Str, false),
    (3, "name", Ty::Str, false),
    (4, "uid", Ty::Str, false),
];
const TOKEN_REQUEST_SPEC: &[F] = &[
    (1, "audiences", Ty::Str, true),
    (3, "boundObjectRef", Ty::Msg(BOUND_OBJECT), false),
    (4, "expirationSeconds", Ty::Int, false),
];
const TOKEN_REQUEST: &[F] = &[
    (1, "metadata", Ty::Msg(OBJECT_META), false),
    (2, "spec", Ty::Msg(TOKEN_REQUEST_SPEC), false),
];
const ROLE: &[F] = &[
    (1, "metadata", Ty::Msg(OBJECT_META), false),
    (2, "rules", Ty::Msg(POLICY_RULE), true),
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

/// How deep the zero-value check follows nested messages of unlisted fields. The real
/// schemas nest far less; a body nested deeper is refused rather than followed (a 150 KB
/// body of 40,000 nested empty fields used to overflow the stack and abort the process).
const MAX_ZERO_NESTING: usize = 32;

/// Reads a value of an unlisted field; true if it is a zero value (what the JSON form
/// omits), which is then safe to leave out. `depth` counts the enclosing unlisted
/// messages; past [`MAX_ZERO_NESTING`] a message is not considered zero.
fn skip_zero(r: &mut Reader, wire: u64, depth: usize) -> Result<bool, ApiError> {
    match wire {
        0 => Ok(r.varint()? == 0),
        2 => {
            let b = r.bytes()?;
            Ok(b.is_empty() || (depth < MAX_ZERO_NESTING && all_zero(b, depth + 1)))
        }
        _ => Ok(false),
    }
}

/// Whether `b` parses as a message whose fields are all zero values (empty strings, zero
/// numbers, empty or all-zero messages).
fn all_zero(b: &[u8], depth: usize) -> bool {
    let mut r = Reader { buf: b };
    loop {
        match r.tag() {
            Ok(None) => return true,
            Ok(Some((_, wire))) => match skip_zero(&mut r, wire, depth) {
                Ok(true) => {}
                _ => return false,
            },
            Err(_) => return false,
        }
    }
}

fn message(b: &[u8], fields: &[F]) -> Result<Value, ApiError> {
    let mut r = Reader { buf: b };
    let mut out = Map::new();
    while let Some((num, wire)) = r.tag()? {
        let Some(&(_, name, ty, repeated)) = fields.iter().find(|f| f.0 == num) else {
            if skip_zero(&mut r, wire, 0)? {
                continue;
            }
            return Err(unsupported(format!("unknown field {num}")));
        };
        let value = match (ty, wire) {
            (Ty::Int, 0) => json!(r.varint()? as i64),
            (Ty::Bool, 0) => json!(r.varint()? != 0),
            (Ty::Str, 2) => json!(utf8(r.bytes()?)?),
            (Ty::Bytes, 2) => json!(base64::engine::general_purpose::STANDARD.encode(r.bytes()?)),
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
        // JSON form omits them, so zero scalars are dropped. An element of a repeated field
        // is kept as it is: `apiGroups: [""]` names the core group.
        if value.is_null()
            || (!repeated && (value == json!("") || value == json!(0) || value == json!(false)))
        {
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
        ("v1", "Pod") => POD,
        ("apps/v1", "Deployment") => DEPLOYMENT,
        ("batch/v1", "Job") => JOB,
        ("batch/v1", "CronJob") => CRON_JOB,
        ("rbac.authorization.k8s.io/v1", "Role" | "ClusterRole") => ROLE,
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => ACCESS_REVIEW,
        ("authorization.k8s.io/v1", "SubjectAccessReview" | "LocalSubjectAccessReview") => {
            SUBJECT_ACCESS_REVIEW
        }
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => RULES_REVIEW,
        ("authentication.k8s.io/v1", "TokenReview") => TOKEN_REVIEW,
        ("authentication.k8s.io/v1", "SelfSubjectReview") => SELF_SUBJECT_REVIEW,
        ("certificates.k8s.io/v1", "CertificateSigningRequest") => CSR,
        ("authentication.k8s.io/v1", "TokenRequest") => TOKEN_REQUEST,
        ("rbac.authorization.k8s.io/v1", "RoleBinding" | "ClusterRoleBinding") => BINDING,
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
    fn empty_strings_in_repeated_fields_are_kept() {
        // `kubectl create role r --verb=get --resource=configmaps`: apiGroups [""].
        let rule = [field(1, b"get"), field(2, b""), field(3, b"configmaps")].concat();
        let raw = [field(1, &field(1, b"r")), field(2, &rule)].concat();
        let type_meta = [field(1, b"rbac.authorization.k8s.io/v1"), field(2, b"Role")].concat();
        let body = [b"k8s\0".to_vec(), field(1, &type_meta), field(2, &raw)].concat();
        let obj = decode(&body).expect("decode");
        assert_eq!(
            obj["rules"],
            json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"]}])
        );
    }

    #[test]
    fn unlisted_fields_holding_zero_values_are_skipped() {
        let zero_status = [vec![0x08, 0x00], field(2, b"")].concat();
        let raw = [field(1, &field(1, b"d")), field(3, &zero_status)].concat();
        let type_meta = [field(1, b"apps/v1"), field(2, b"Deployment")].concat();
        let body = [b"k8s\0".to_vec(), field(1, &type_meta), field(2, &raw)].concat();
        let obj = decode(&body).expect("decode");
        assert_eq!(obj["metadata"]["name"], "d");
        assert!(obj.get("status").is_none());
        let busy_status = field(3, &field(1, b"Running"));
        let raw = [field(1, &field(1, b"d")), busy_status].concat();
        let body = [b"k8s\0".to_vec(), field(1, &type_meta), field(2, &raw)].concat();
        assert!(decode(&body).is_err());
    }

    /// A length-delimited field `num` around `payload`, with a real varint length.
    fn wrap(num: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(num << 3 | 2) as u8];
        let mut len = payload.len() as u64;
        loop {
            let b = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn deeply_nested_unknown_fields_are_refused_not_followed_off_the_stack() {
        // 40,000 levels of an empty unknown message (~160 KB): this aborted the apiserver.
        let mut nested = Vec::new();
        for _ in 0..40_000 {
            nested = wrap(15, &nested);
        }
        let raw = [field(1, &field(1, b"r")), nested].concat();
        let type_meta = [
            field(1, b"authorization.k8s.io/v1"),
            field(2, b"SelfSubjectAccessReview"),
        ]
        .concat();
        let body = [b"k8s\0".to_vec(), field(1, &type_meta), wrap(2, &raw)].concat();
        assert!(body.len() > 100_000);
        let err = decode(&body).unwrap_err();
        assert!(
            matches!(err, ApiError::UnsupportedMediaType { .. }),
            "{err:?}"
        );
        // Zero values nested a few levels deep are still skipped.
        let mut shallow = Vec::new();
        for _ in 0..5 {
            shallow = wrap(15, &shallow);
        }
        let raw = [field(1, &field(1, b"r")), shallow].concat();
        let body = [b"k8s\0".to_vec(), field(1, &type_meta), wrap(2, &raw)].concat();
        assert_eq!(decode(&body).unwrap()["metadata"]["name"], "r");
    }

    #[test]
    fn unknown_kinds_fields_and_truncation_are_refused() {
        let type_meta = [field(1, b"apps/v1"), field(2, b"StatefulSet")].concat();
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
