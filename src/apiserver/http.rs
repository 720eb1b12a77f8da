//! The apiserver's HTTP vocabulary, below the router ([`super::server`]) and every handler:
//! the parsed request ([`Req`], [`Target`]), the response type and its constructors.
//! It imports nothing of the apiserver but the resource table and the user, so every
//! handler can use it without depending on the router.

use std::collections::HashMap;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::mpsc;

use super::resources::Resource;
use super::tls::User;

/// The body of every response: a whole buffer or a stream (watch).
pub type Body = BoxBody<Bytes, std::io::Error>;
/// An HTTP response.
pub type Response = hyper::Response<Body>;

/// A response with a body and content type.
pub fn full_response(code: StatusCode, content_type: &str, bytes: Vec<u8>) -> Response {
    let mut r = hyper::Response::new(
        Full::new(Bytes::from(bytes))
            .map_err(|n| match n {})
            .boxed(),
    );
    *r.status_mut() = code;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

/// A JSON response.
pub fn json_response(code: StatusCode, v: &Value) -> Response {
    full_response(
        code,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

/// A streaming (chunked) response fed by `rx`; it ends when the sender is dropped.
pub fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
    });
    let mut r = hyper::Response::new(StreamBody::new(stream).boxed());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A parsed request, handed to the verbs.
pub struct Req {
    pub method: Method,
    pub query: HashMap<String, String>,
    pub accept: String,
    pub content_type: String,
    pub body: Bytes,
    pub user: Option<User>,
    /// Warnings for the client (`Warning: 299` headers; kubectl prints them).
    pub warnings: std::sync::Mutex<Vec<String>>,
}

impl Req {
    /// A query parameter.
    pub fn warn(&self, text: String) {
        self.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(text);
    }

    pub fn q(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    /// Whether a boolean query parameter is set (`1` or `true`).
    pub fn flag(&self, name: &str) -> bool {
        matches!(self.q(name), Some("1" | "true"))
    }

    /// Whether the client asked for `meta.k8s.io/v1` Table output.
    pub fn wants_table(&self) -> bool {
        self.accept
            .split(',')
            .next()
            .is_some_and(|first| first.contains("as=Table") && first.contains("g=meta.k8s.io"))
    }
}

/// A resource request: collection, object or subresource.
#[derive(Debug, Clone)]
pub struct Target {
    pub res: &'static Resource,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
    /// The served version of a custom kind (schema, columns, scale paths).
    pub custom: Option<std::sync::Arc<super::crd::Version>>,
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query string of a request as a map (percent-decoded, `+` as a space).
pub fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_percent_decoded() {
        let q = parse_query(Some("labelSelector=app%3Dweb%2Cenv+in+%28a%29&watch=1&x"));
        assert_eq!(q["labelSelector"], "app=web,env in (a)");
        assert_eq!(q["watch"], "1");
        assert_eq!(q["x"], "");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
