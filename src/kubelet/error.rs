//! Errors of the kubelet's runtime and pod workers; each variant names the failing step.

use std::path::PathBuf;

/// Why a runtime call or a pod operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("cannot connect to containerd at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: Box<tonic::transport::Error>,
    },
    #[error("containerd {call} failed: {status}")]
    Containerd {
        call: &'static str,
        status: Box<tonic::Status>,
    },
    #[error(transparent)]
    Image(Box<crate::oci::OciError>),
    #[error("image {0} is not in containerd; import its archive first")]
    ImageNotFound(String),
    #[error("cannot pull image {image}: {reason}")]
    Pull { image: String, reason: String },
    #[error("image {name} has a bad {what}")]
    BadImage { name: String, what: String },
    #[error("cannot create the pod network namespace {path}")]
    NetnsCreate {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove the pod network namespace {path}")]
    NetnsRemove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cni plugin {plugin} {command} failed: {message}")]
    Cni {
        plugin: String,
        command: &'static str,
        message: String,
    },
    #[error("cannot prepare {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pod {0} is not known to this kubelet")]
    UnknownPod(String),
    #[error("pod {pod} has no running container {container}")]
    NotRunning { pod: String, container: String },
    #[error("pod spec is invalid: {0}")]
    InvalidSpec(String),
    #[error("exec timed out after {0:?}")]
    ExecTimeout(std::time::Duration),
}

impl From<crate::oci::OciError> for KubeletError {
    fn from(e: crate::oci::OciError) -> Self {
        KubeletError::Image(Box::new(e))
    }
}

impl KubeletError {
    pub(crate) fn containerd(call: &'static str) -> impl FnOnce(tonic::Status) -> KubeletError {
        move |status| KubeletError::Containerd {
            call,
            status: Box::new(status),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> KubeletError {
        let path = path.into();
        move |source| KubeletError::Io { path, source }
    }

    /// True when containerd said the object does not exist (idempotent deletes).
    pub fn is_not_found(&self) -> bool {
        matches!(self, KubeletError::Containerd { status, .. } if status.code() == tonic::Code::NotFound)
    }
}
