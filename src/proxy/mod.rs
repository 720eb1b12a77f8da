//! The node data plane: Services via nftables, cluster DNS, and the VXLAN pod overlay.
//!
//! - [`model`]: Services + EndpointSlices/Endpoints → a sorted view of ready backends.
//! - [`rules`]: that view → one atomic nftables ruleset for table `ip kimg-proxy`.
//! - [`dns`]: cluster DNS for `<svc>.<ns>.svc.<domain>`, forwarding the rest upstream.
//! - [`vxlan`]: the flannel-style overlay: Node objects → device, routes, ARP, FDB.
//! - [`netns`]: scratch network namespaces for the root-only tests and benchmarks.
//! - [`controller`]: the `kimg proxy` loop: apiserver watches → rules and DNS.
//! - [`overlay`]: the `kimg proxy --node-name` loop: Node objects → VXLAN overlay.

pub mod controller;
pub mod dns;
pub mod model;
pub mod netns;
pub mod overlay;
pub mod rules;
pub mod vxlan;
