//! The cluster definition (`cluster.toml`) and build profiles (`profiles/*.toml`):
//! schema, validation with `file:line` errors, creation from command-line options.

mod config;
mod error;
mod new;
mod profile;
mod validate;

pub use config::{
    line_of_offset, parse, render, Cluster, ClusterFile, Mac, Network, NetworkFile, Node, NodeFile,
    Role, VipTiming, CLUSTER_FILE,
};
pub use error::{ClusterError, FieldError};
pub use new::{
    create, file_from_options, NewOptions, DEFAULT_NODE_IP, DEFAULT_PREFIX, DEFAULT_VIP,
};
pub use profile::{Kernel, Outputs, Profile, BUILTIN as BUILTIN_PROFILES};
pub use validate::{is_dns_label, line_of_key, validate};
