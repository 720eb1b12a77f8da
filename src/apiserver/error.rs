//! The apiserver's one error type and its mapping to the wire.
//!
//! What: every failure a request can meet is an [`ApiError`] variant named after what went
//! wrong. How: [`ApiError::into_response`] is the single place that turns an error into a
//! Kubernetes `Status` object (`kind: Status`, `reason`, `code`, `details`) and an HTTP code,
//! so kubectl prints `Error from server (NotFound): …` the way it does against a real cluster.
//! Limits: `details.causes` is not filled in; field errors are folded into the message.

use hyper::StatusCode;
use serde_json::{json, Value};

use super::http::{json_response, Response};
use crate::store::StoreError;

/// Why a request failed; see the module docs.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the server could not find the requested resource")]
    RouteNotFound,
    #[error("{} \"{name}\" not found", qualified(group, resource))]
    NotFound {
        group: String,
        resource: String,
        name: String,
    },
    #[error("{} \"{name}\" already exists", qualified(group, resource))]
    AlreadyExists {
        group: String,
        resource: String,
        name: String,
    },
    #[error("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", qualified(group, resource))]
    Conflict {
        group: String,
        resource: String,
        name: String,
    },
    #[error("Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} {reason}")]
    AlreadyBound { name: String, reason: String },
    #[error("{kind} \"{name}\" is invalid: {reason}")]
    Invalid {
        kind: String,
        name: String,
        reason: String,
    },
    /// Several field errors at once (a custom object against its schema).
    #[error("{kind} \"{name}\" is invalid: {}", listed(errors))]
    InvalidFields {
        kind: String,
        name: String,
        errors: Vec<String>,
    },
    /// An admission webhook refused the request (its code, at least 400).
    #[error("{message}")]
    Denied { code: u16, message: String },
    /// An admission webhook with `failurePolicy: Fail` could not be called.
    #[error("Internal error occurred: {message}")]
    WebhookFailed { message: String },
    #[error("{reason}")]
    DecodeBody { reason: String },
    #[error("{reason}")]
    BadQuery { reason: String },
    #[error("{reason}")]
    BadPatch { reason: String },
    #[error("the body of the request was in an unknown format - accepted media types include: {accepted}")]
    UnsupportedMediaType { accepted: &'static str },
    #[error("request entity too large: limit is {limit}")]
    BodyTooLarge { limit: usize },
    #[error("the object is too large to store: {size} bytes, the limit is {limit}")]
    ObjectTooLarge { size: usize, limit: usize },
    #[error("cannot read the request body: {0}")]
    ReadBody(String),
    #[error("Unauthorized")]
    Unauthenticated,
    #[error("{message}")]
    Forbidden {
        message: String,
        group: String,
        resource: String,
    },
    #[error("forbidden: User \"{user}\" cannot {verb} path \"{path}\"")]
    ForbiddenPath {
        user: String,
        verb: String,
        path: String,
    },
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error("too old resource version: {requested}")]
    Gone { requested: i64 },
    #[error("storage error: {0}")]
    Store(#[source] StoreError),
    #[error("error dialing backend: {0}")]
    KubeletProxy(String),
    /// An aggregated API server (`APIService`) that cannot be reached or is not ready.
    #[error("service unavailable: {0}")]
    ServiceUnavailable(String),
    /// An in-flight limit is reached; the client should retry after a second.
    #[error("Too many requests, please try again later.")]
    TooManyRequests,
    /// The request did not finish within the apiserver's request timeout.
    #[error("Timeout: request did not complete within the allotted timeout of {secs} s")]
    Timeout { secs: u64 },
}

/// One error as it is, several as kube-apiserver lists them: `[a, b]`.
fn listed(errors: &[String]) -> String {
    match errors {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

/// `deployments.apps`, or `pods` for the core group, as Kubernetes names resources in messages.
fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Compacted { requested, .. } => ApiError::Gone { requested },
            other => ApiError::Store(other),
        }
    }
}

impl ApiError {
    /// A 422 listing every field error (`kind` as kube-apiserver names it in the message,
    /// `Widget.example.com` for custom kinds).
    pub fn invalid_fields(kind: String, name: String, errors: Vec<String>) -> ApiError {
        ApiError::InvalidFields { kind, name, errors }
    }

    /// The HTTP code and the `Status.reason` of this error.
    fn code_and_reason(&self) -> (StatusCode, &'static str) {
        use ApiError::*;
        match self {
            RouteNotFound | NotFound { .. } => (StatusCode::NOT_FOUND, "NotFound"),
            AlreadyExists { .. } => (StatusCode::CONFLICT, "AlreadyExists"),
            Conflict { .. } | AlreadyBound { .. } => (StatusCode::CONFLICT, "Conflict"),
            Invalid { .. } | InvalidFields { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
            Denied { code, .. } => {
                let code = StatusCode::from_u16(*code).unwrap_or(StatusCode::BAD_REQUEST);
                let reason = match code.as_u16() {
                    400 => "BadRequest",
                    401 => "Unauthorized",
                    403 => "Forbidden",
                    404 => "NotFound",
                    409 => "Conflict",
                    422 => "Invalid",
                    429 => "TooManyRequests",
                    _ => "",
                };
                (code, reason)
            }
            WebhookFailed { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
            DecodeBody { .. } | BadQuery { .. } | ReadBody(_) => {
                (StatusCode::BAD_REQUEST, "BadRequest")
            }
            BadPatch { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
            UnsupportedMediaType { .. } => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType")
            }
            BodyTooLarge { .. } | ObjectTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge")
            }
            Unauthenticated => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            Forbidden { .. } | ForbiddenPath { .. } => (StatusCode::FORBIDDEN, "Forbidden"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
            Gone { .. } => (StatusCode::GONE, "Expired"),
            Store(_) | KubeletProxy(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
            TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests"),
            ServiceUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
            Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "Timeout"),
        }
    }

    /// The `Status` object for this error (also sent as a watch `ERROR` event).
    pub fn status_object(&self) -> Value {
        let (code, reason) = self.code_and_reason();
        let mut message = self.to_string();
        if let ApiError::Store(e) = self {
            let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
        }
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        });
        let details = match self {
            ApiError::NotFound {
                group,
                resource,
                name,
            }
            | ApiError::AlreadyExists {
                group,
                resource,
                name,
            }
            | ApiError::Conflict {
                group,
                resource,
                name,
            } => Some(json!({"name": name, "group": group, "kind": resource})),
            ApiError::Invalid { kind, name, reason } => {
                Some(json!({"name": name, "kind": kind, "causes": causes(reason)}))
            }
            ApiError::InvalidFields { kind, name, errors } => {
                let all: Vec<Value> = errors
                    .iter()
                    .flat_map(|e| causes(e).as_array().cloned().unwrap_or_default())
                    .collect();
                Some(json!({"name": name, "kind": kind, "causes": all}))
            }
            ApiError::Forbidden {
                group, resource, ..
            } => Some(json!({"group": group, "kind": resource})),
            ApiError::TooManyRequests => Some(json!({"retryAfterSeconds": RETRY_AFTER_SECS})),
            _ => None,
        };
        if let Some(d) = details {
            status["details"] = d;
        }
        status
    }

    /// The one mapping of errors to HTTP responses.
    pub fn into_response(self) -> Response {
        let (code, _) = self.code_and_reason();
        // A timeout is the client's slowness as often as the server's.
        if code.is_server_error() && !matches!(self, ApiError::Timeout { .. }) {
            tracing::error!(error = %self, "request failed");
        }
        let mut r = json_response(code, &self.status_object());
        if matches!(self, ApiError::TooManyRequests) {
            r.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from(RETRY_AFTER_SECS),
            );
        }
        r
    }
}

/// What a 429 asks the client to wait, in seconds (kube-apiserver's value).
const RETRY_AFTER_SECS: u64 = 1;

/// `details.causes` of a 422: a reason written `<field path>: <why>` becomes one cause
/// with that field, which kubectl prints as `The Kind "name" is invalid: <field>: <why>`
/// (without causes it prints only the first half). A reason without a field path is one
/// cause without a field.
fn causes(reason: &str) -> Value {
    let (field, message) = match reason.split_once(": ") {
        Some((f, m)) if !f.is_empty() && !f.contains(' ') => (f, m),
        _ => ("", reason),
    };
    let kind = [
        ("Required value", "FieldValueRequired"),
        ("Unsupported value", "FieldValueNotSupported"),
        ("Forbidden", "FieldValueForbidden"),
        ("Duplicate value", "FieldValueDuplicate"),
        ("Too long", "FieldValueTooLong"),
        ("Too many", "FieldValueTooMany"),
    ]
    .iter()
    .find(|(prefix, _)| message.starts_with(prefix))
    .map_or("FieldValueInvalid", |(_, k)| k);
    let mut cause = json!({"reason": kind, "message": message});
    if !field.is_empty() {
        cause["field"] = json!(field);
    }
    json!([cause])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_422_names_the_field_and_why_in_its_causes() {
        let e = ApiError::Invalid {
            kind: "PodDisruptionBudget".into(),
            name: "web".into(),
            reason: "spec.minAvailable: Invalid value: \"150%\": must not be greater than 100%"
                .into(),
        };
        let st = e.status_object();
        assert_eq!(st["code"], 422);
        let cause = &st["details"]["causes"][0];
        assert_eq!(cause["field"], "spec.minAvailable");
        assert_eq!(cause["reason"], "FieldValueInvalid");
        assert_eq!(
            cause["message"],
            "Invalid value: \"150%\": must not be greater than 100%"
        );
        let required = causes("spec.selector: Required value");
        assert_eq!(required[0]["reason"], "FieldValueRequired");
        let free = causes("the object has no name");
        assert_eq!(free[0]["message"], "the object has no name");
        assert!(free[0].get("field").is_none());
    }

    #[test]
    fn a_compacted_store_read_becomes_410_expired() {
        let e: ApiError = StoreError::Compacted {
            requested: 3,
            compacted_revision: Some(9),
        }
        .into();
        let s = e.status_object();
        assert_eq!(s["code"], 410);
        assert_eq!(s["reason"], "Expired");
    }

    #[test]
    fn too_many_requests_says_when_to_retry() {
        let r = ApiError::TooManyRequests.into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[hyper::header::RETRY_AFTER], "1");
        let s = ApiError::TooManyRequests.status_object();
        assert_eq!(s["reason"], "TooManyRequests");
        assert_eq!(s["details"]["retryAfterSeconds"], 1);
    }

    #[test]
    fn not_found_names_the_resource_like_kubernetes() {
        let e = ApiError::NotFound {
            group: String::new(),
            resource: "configmaps".into(),
            name: "x".into(),
        };
        let s = e.status_object();
        assert_eq!(s["message"], "configmaps \"x\" not found");
        assert_eq!(s["details"]["kind"], "configmaps");
        assert_eq!(s["code"], 404);
    }
}
