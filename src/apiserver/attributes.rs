//! The input of every authorizer: what one request asks to do. The Node authorizer
//! ([`super::node_authz`]) and RBAC ([`super::rbac`]) both decide on it, and neither
//! imports the other for it.

/// What a request asks to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// Set for non-resource requests (`/healthz`, `/apis`…); the resource fields are empty.
    pub path: Option<String>,
}
