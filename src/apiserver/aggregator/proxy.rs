//! Forwarding one request to an aggregated API server; see the module docs of
//! [`super`].

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use hyper::Method;

use super::super::attributes::Attributes;
use super::super::error::ApiError;
use super::super::http::Response;
use super::super::tls::User;
use super::super::State;
use super::{Backend, GROUP_HEADER, USER_HEADER};

/// How long dialing an aggregated server may take.
const DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The RBAC attributes of a request for `path` under an aggregated group/version, read
/// off the path as kube-apiserver reads any resource path:
/// `/apis/<g>/<v>[/namespaces/<ns>]/<resource>[/<name>[/<subresource>]]`. The
/// group/version's own path (its discovery document) is a non-resource `get`.
pub fn attributes(method: &Method, path: &str, watch: bool) -> Attributes {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, rest) = match segs.as_slice() {
        ["apis", g, _, rest @ ..] => (g.to_string(), rest),
        _ => (String::new(), &[][..]),
    };
    if rest.is_empty() {
        return Attributes {
            verb: "get".into(),
            path: Some(format!("/{}", segs.join("/"))),
            ..Default::default()
        };
    }
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (ns.to_string(), rest),
        _ => (String::new(), rest),
    };
    let part = |i: usize| rest.get(i).map(|s| s.to_string()).unwrap_or_default();
    let (resource, name, subresource) = (part(0), part(1), part(2));
    let verb = match *method {
        Method::GET | Method::HEAD if !name.is_empty() => "get",
        Method::GET | Method::HEAD if watch => "watch",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if name.is_empty() => "deletecollection",
        Method::DELETE => "delete",
        _ => "",
    };
    Attributes {
        verb: if verb.is_empty() {
            method.as_str().to_ascii_lowercase()
        } else {
            verb.into()
        },
        group,
        resource,
        subresource,
        namespace,
        name,
        path: None,
    }
}

/// Request headers that stay here: hop-by-hop ones, the client's own credentials, and
/// identity headers only the apiserver may set.
fn dropped(name: &HeaderName) -> bool {
    let n = name.as_str();
    matches!(
        n,
        "host"
            | "authorization"
            | "connection"
            | "keep-alive"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
    ) || n.starts_with("impersonate-")
        || n.starts_with("x-remote-")
}

/// Forwards a request (its head and already read `body`) to `b`'s server as `user`, and
/// streams the answer back (watches included).
pub async fn proxy(
    st: &State,
    b: &Backend,
    user: &User,
    head: hyper::http::request::Parts,
    body: Bytes,
) -> Result<Response, ApiError> {
    if head.headers.contains_key(hyper::header::UPGRADE) {
        return Err(ApiError::Denied {
            code: 400,
            message: format!(
                "upgrade requests (exec, attach, port-forward) are not proxied to the aggregated API {}/{}",
                b.group, b.version
            ),
        });
    }
    let unavailable = |e: String| {
        ApiError::ServiceUnavailable(format!("the APIService {} cannot be reached: {e}", b.name))
    };
    let tls = b.tls.clone().map_err(unavailable)?;
    let addr = b.address(st).await.map_err(unavailable)?;
    let host = b.server_name();
    let path = head
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let request = || -> Result<hyper::Request<Full<Bytes>>, String> {
        let mut req = hyper::Request::builder()
            .method(head.method.clone())
            .uri(path.as_str())
            .body(Full::new(body.clone()))
            .map_err(|e| e.to_string())?;
        let headers = req.headers_mut();
        for (name, value) in &head.headers {
            if !dropped(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        let header = |v: &str| HeaderValue::from_str(v).map_err(|e| e.to_string());
        headers.insert(
            hyper::header::HOST,
            header(&format!("{host}:{}", b.service.port))?,
        );
        headers.insert(USER_HEADER, header(&user.name)?);
        for g in &user.groups {
            headers.append(GROUP_HEADER, header(g)?);
        }
        Ok(req)
    };
    let (sender, resp) = b
        .idle
        .send(&addr, &host, tls, DIAL_TIMEOUT, request)
        .await
        .map_err(unavailable)?;
    // Ready again once this answer has been read to its end (a watch keeps it busy).
    b.idle.keep(&addr, sender);
    let (mut parts, body) = resp.into_parts();
    for hop in ["connection", "keep-alive", "transfer-encoding", "upgrade"] {
        parts.headers.remove(hop);
    }
    Ok(hyper::Response::from_parts(
        parts,
        body.map_err(std::io::Error::other).boxed(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_attributes_are_read_off_the_path() {
        let a = attributes(
            &Method::GET,
            "/apis/metrics.k8s.io/v1beta1/namespaces/kube-system/pods/web",
            false,
        );
        assert_eq!(
            (
                a.verb.as_str(),
                a.group.as_str(),
                a.resource.as_str(),
                a.namespace.as_str(),
                a.name.as_str()
            ),
            ("get", "metrics.k8s.io", "pods", "kube-system", "web")
        );
        let a = attributes(&Method::GET, "/apis/metrics.k8s.io/v1beta1/nodes", true);
        assert_eq!((a.verb.as_str(), a.namespace.as_str()), ("watch", ""));
        let a = attributes(&Method::GET, "/apis/metrics.k8s.io/v1beta1/nodes", false);
        assert_eq!(a.verb, "list");
        let a = attributes(
            &Method::DELETE,
            "/apis/w.io/v1/namespaces/a/flunders",
            false,
        );
        assert_eq!(
            (a.verb.as_str(), a.resource.as_str()),
            ("deletecollection", "flunders")
        );
        let a = attributes(&Method::PUT, "/apis/w.io/v1/flunders/x/status", false);
        assert_eq!(
            (a.verb.as_str(), a.subresource.as_str()),
            ("update", "status")
        );
        let a = attributes(&Method::GET, "/apis/w.io/v1/namespaces/a", false);
        assert_eq!((a.resource.as_str(), a.name.as_str()), ("namespaces", "a"));
    }

    #[test]
    fn the_group_version_itself_is_a_non_resource_path() {
        let a = attributes(&Method::GET, "/apis/w.io/v1/", false);
        assert_eq!(a.path.as_deref(), Some("/apis/w.io/v1"));
        assert_eq!(a.verb, "get");
    }

    #[test]
    fn credentials_and_identity_headers_of_the_client_are_not_forwarded() {
        for h in [
            "authorization",
            "impersonate-user",
            "impersonate-group",
            "x-remote-user",
            "x-remote-group",
            "x-remote-extra-scopes",
            "connection",
            "host",
        ] {
            assert!(dropped(&HeaderName::from_static(h)), "{h}");
        }
        for h in ["accept", "content-type", "user-agent"] {
            assert!(!dropped(&HeaderName::from_static(h)), "{h}");
        }
    }
}
