//! One HTTPS accept loop for every server kimg runs (the apiserver on :6443, the kubelet
//! on :10250), with the bounds that keep hostile or broken clients from taking it down.
//!
//! What: [`serve`] accepts TCP connections, completes the TLS handshake, names the client
//! by its verified certificate ([`user_from_cert`]: CN → user, O → groups) and hands each
//! request to a handler, over HTTP/2 when ALPN chose `h2` and HTTP/1.1 otherwise.
//!
//! Bounds ([`Limits`]), each answering one way a client can hold the server:
//! - a connection cap: past it, new connections are closed at once (a refusal the client
//!   sees, instead of a backlog that silently fills);
//! - a TLS handshake deadline: a client that connects and sends nothing, or stops halfway
//!   through the handshake, is dropped;
//! - an HTTP/1 header deadline, which is also the keep-alive idle limit: a connection that
//!   does not deliver a complete request head in time is closed (slowloris);
//! - HTTP/2 keep-alive pings: a peer that stops answering is dropped.
//!
//! Request-level bounds (in-flight limits, per-request deadlines, body sizes) belong to
//! the handler, which knows what a request is; see `apiserver::server`.
//!
//! [`raise_fd_limit`] lifts the soft `RLIMIT_NOFILE` to the hard one, as Go's runtime does
//! for kube-apiserver: with the default soft limit of 1,024, a thousand idle sockets would
//! make `accept` fail for everyone.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    /// Members of `system:masters` may do everything.
    pub fn is_master(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }
}

/// The user a verified client certificate names: CN → user, O → groups.
pub fn user_from_cert(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_string();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    groups.push("system:authenticated".into());
    Some(User { name, groups })
}

/// Connection-level bounds of one server; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most (handshaking ones included).
    pub max_connections: usize,
    /// From accept to a finished TLS handshake.
    pub handshake_timeout: Duration,
    /// For an HTTP/1 request head, counted from the moment the server waits for one (so
    /// it is also how long an idle keep-alive connection lives).
    pub header_timeout: Duration,
    /// HTTP/2: a ping every interval; no answer within the same time closes the connection.
    pub h2_keepalive: Duration,
    /// HTTP/2: concurrent streams per connection.
    pub h2_max_streams: u32,
}

impl Default for Limits {
    /// 8,192 connections, 10 s for a handshake, 32 s for a request head (what
    /// kube-apiserver gives Go's `ReadHeaderTimeout`), 30 s HTTP/2 pings, 1,000 streams
    /// per HTTP/2 connection.
    fn default() -> Self {
        Limits {
            max_connections: 8192,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(32),
            h2_keepalive: Duration::from_secs(30),
            h2_max_streams: 1000,
        }
    }
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit; returns the new soft
/// limit. Children inherit it.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// Listens on `addr` with a deep accept queue (4,096, the kernel caps it at
/// `net.core.somaxconn`), as Go servers do: with tokio's 1,024, a burst of connects
/// overflows the queue and the kernel drops handshakes that the client already believes
/// complete.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Sets both the soft and the hard `RLIMIT_NOFILE` of this process (and so of the
/// children it starts afterwards) to `limit`. Raising the hard limit needs root.
pub fn set_fd_limit(limit: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Accepts TLS connections on `listener` until `shutdown` completes, serving each
/// request with `handler(user, request)`; `user` is the verified client certificate's.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    handler: H,
) where
    H: Fn(Option<User>, hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<hyper::Response<B>, Infallible>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut refused = 0u64;
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(%peer, refused, max = limits.max_connections,
                    "connection cap reached: closing new connections");
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        tokio::spawn(async move {
            let _slot = slot;
            serve_one(acceptor, tcp, peer, limits, handler).await;
        });
    }
}

async fn serve_one<H, F, B>(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    limits: Limits,
    handler: H,
) where
    H: Fn(Option<User>, hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<hyper::Response<B>, Infallible>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "tls handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "tls handshake timed out");
            return;
        }
    };
    let conn = stream.get_ref().1;
    let user = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| user_from_cert(c));
    let h2 = conn.alpn_protocol() == Some(b"h2");
    let svc = service_fn(move |req| handler(user.clone(), req));
    let io = TokioIo::new(stream);
    let result = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(limits.h2_keepalive)
            .keep_alive_timeout(limits.h2_keepalive)
            .max_concurrent_streams(limits.h2_max_streams)
            .serve_connection(io, svc)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(io, svc)
            .with_upgrades()
            .await
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_name_is_the_user_and_organizations_are_groups() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kubernetes-admin");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:masters");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let user = user_from_cert(cert.der()).expect("user");
        assert_eq!(user.name, "kubernetes-admin");
        assert!(user.is_master());
        assert!(user.groups.contains(&"system:authenticated".to_string()));
        assert_eq!(user_from_cert(b"garbage"), None);
    }

    #[test]
    fn the_soft_file_limit_is_raised_to_the_hard_one() {
        let soft = raise_fd_limit().expect("rlimit");
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(soft, lim.rlim_cur);
        assert_eq!(lim.rlim_cur, lim.rlim_max);
    }
}
