//! Container probes: exec (through the runtime), httpGet and tcpSocket (from the node to
//! the pod IP, which the node reaches over the CNI bridge).
//!
//! [`check`] runs one probe once and says whether it passed; the pod worker applies
//! periods and thresholds. httpGet speaks a minimal HTTP/1.1 GET (`Connection: close`)
//! and passes on a 2xx/3xx status. Limits: no HTTPS probes, no gRPC probes, no custom
//! Host header handling beyond `httpHeaders`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::runtime::Runtime;

/// Timing of a probe with Kubernetes defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(p: &Probe) -> Timing {
        let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
        Timing {
            initial_delay: secs(p.initial_delay_seconds, 0),
            period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    }
}

fn port_of(port: &IntOrString, c: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

async fn http_get(
    ip: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> std::io::Result<u16> {
    let mut s = TcpStream::connect((ip, port)).await?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kimg-probe\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let got = s.read(&mut buf[n..]).await?;
        if got == 0 {
            break;
        }
        n += got;
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status line"))
}

/// Runs `probe` once against container `id` (spec `c`) in a pod at `pod_ip`.
pub async fn check(
    rt: &Arc<dyn Runtime>,
    probe: &Probe,
    c: &Container,
    id: &str,
    pod_ip: &str,
    exec_process: impl Fn(Vec<String>) -> Value,
) -> bool {
    let timeout = Timing::of(probe).timeout;
    if let Some(e) = &probe.exec {
        let process = exec_process(e.command.clone().unwrap_or_default());
        return matches!(rt.exec(id, &process, timeout).await, Ok(out) if out.exit_code == 0);
    }
    if let Some(h) = &probe.http_get {
        let Some(port) = port_of(&h.port, c) else {
            return false;
        };
        let host = h.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        let headers: Vec<(String, String)> = h
            .http_headers
            .iter()
            .flatten()
            .map(|x| (x.name.clone(), x.value.clone()))
            .collect();
        return matches!(
            tokio::time::timeout(timeout, http_get(&host, port, &path, &headers)).await,
            Ok(Ok(code)) if (200..400).contains(&code)
        );
    }
    if let Some(t) = &probe.tcp_socket {
        let Some(port) = port_of(&t.port, c) else {
            return false;
        };
        let host = t.host.clone().unwrap_or_else(|| pod_ip.to_string());
        return matches!(
            tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port))).await,
            Ok(Ok(_))
        );
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{HTTPGetAction, TCPSocketAction};

    struct NoRuntime;
    #[async_trait::async_trait]
    impl Runtime for NoRuntime {
        async fn create_sandbox(
            &self,
            _: &str,
            _: &str,
            _: &std::path::Path,
        ) -> Result<super::super::runtime::Sandbox, super::super::KubeletError> {
            Err(super::super::KubeletError::InvalidSpec(
                "no sandboxes in probe tests".into(),
            ))
        }
        async fn remove_sandbox(
            &self,
            _: &str,
            _: &super::super::runtime::Sandbox,
        ) -> Result<(), super::super::KubeletError> {
            Ok(())
        }
        async fn image(
            &self,
            n: &str,
        ) -> Result<super::super::ImageInfo, super::super::KubeletError> {
            Err(super::super::KubeletError::ImageNotFound(n.into()))
        }
        async fn create_container(
            &self,
            _: &str,
            _: &super::super::ImageInfo,
            _: &Value,
        ) -> Result<(), super::super::KubeletError> {
            Ok(())
        }
        async fn start(
            &self,
            _: &str,
            _: &std::path::Path,
        ) -> Result<(), super::super::KubeletError> {
            Ok(())
        }
        async fn wait(&self, _: &str) -> Result<super::super::Exit, super::super::KubeletError> {
            Ok(super::super::Exit { code: 0, at: 0 })
        }
        async fn kill(&self, _: &str, _: u32) -> Result<(), super::super::KubeletError> {
            Ok(())
        }
        async fn delete_task(&self, _: &str) -> Result<(), super::super::KubeletError> {
            Ok(())
        }
        async fn remove_container(&self, _: &str) -> Result<(), super::super::KubeletError> {
            Ok(())
        }
        async fn task_state(
            &self,
            _: &str,
        ) -> Result<super::super::TaskState, super::super::KubeletError> {
            Ok(super::super::TaskState::Missing)
        }
        fn existing_sandbox(
            &self,
            _: &str,
            _: &std::path::Path,
            _: &str,
        ) -> Option<super::super::runtime::Sandbox> {
            None
        }
        async fn exec(
            &self,
            _: &str,
            _: &Value,
            _: Duration,
        ) -> Result<super::super::ExecOutput, super::super::KubeletError> {
            Ok(super::super::ExecOutput {
                exit_code: 1,
                stdout: vec![],
                stderr: vec![],
            })
        }
    }

    async fn serve_once(status: &'static str) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_probes_pass_on_2xx_and_fail_on_5xx_and_closed_ports() {
        let rt: Arc<dyn Runtime> = Arc::new(NoRuntime);
        let c = Container::default();
        let probe = |port: i32| Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::Int(port),
                path: Some("/healthz".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ok = serve_once("200 OK").await;
        let bad = serve_once("503 Service Unavailable").await;
        let none = |_| Value::Null;
        assert!(check(&rt, &probe(ok as i32), &c, "x", "127.0.0.1", none).await);
        assert!(!check(&rt, &probe(bad as i32), &c, "x", "127.0.0.1", none).await);
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert!(!check(&rt, &probe(closed as i32), &c, "x", "127.0.0.1", none).await);
        let tcp = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(ok as i32),
                host: None,
            }),
            ..Default::default()
        };
        assert!(check(&rt, &tcp, &c, "x", "127.0.0.1", none).await);
    }
}
