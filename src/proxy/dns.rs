//! Cluster DNS: answers for Services in the cluster domain, forwards everything else.
//!
//! What is answered (`<domain>` is cluster.toml's `dns-domain`, e.g. `cluster.local`):
//! - `<svc>.<ns>.svc.<domain>` A → the ClusterIP, or every ready pod IP of a headless
//!   Service;
//! - `_<port>._<proto>.<svc>.<ns>.svc.<domain>` SRV for named ports → the Service name
//!   and port (ClusterIP), or one record per ready endpoint (headless) whose target is
//!   `<hostname or dashed-ip>.<svc>.<ns>.svc.<domain>`, with the A records in the
//!   additional section;
//! - `<hostname or dashed-ip>.<svc>.<ns>.svc.<domain>` A for headless endpoints;
//! - other names in the cluster domain: NXDOMAIN, or an empty NOERROR for names that
//!   exist with another type or are parents of Service names.
//!
//! Every other name is forwarded verbatim to the upstream resolvers in order (UDP
//! queries over UDP, TCP over TCP); the first answer wins, SERVFAIL when none answers.
//!
//! How: the wire format is `hickory-proto`'s. The Service model is a
//! [`ServiceDirectory`], a snapshot the caller replaces whenever its watch sees a change;
//! readers never block the writer for longer than an `Arc` clone. [`respond`] is the pure
//! core (bytes in, decision out); [`DnsServer`] wraps it in UDP and TCP listeners on one
//! address.
//!
//! Limits: IPv4 only (AAAA gets an empty answer), no reverse (PTR) zone for cluster IPs,
//! no negative-answer SOA, no caching of forwarded answers, no EDNS options passed
//! through beyond what the upstream sees in the forwarded bytes.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use super::model::ServiceView;

/// TTL of the records we answer: short, because Services and endpoints change.
const TTL: u32 = 5;
/// Largest DNS message over UDP we accept or return to a client without EDNS.
const UDP_MAX: usize = 4096;

/// Settings of the cluster DNS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// The cluster domain without a trailing dot, e.g. `cluster.local`.
    pub domain: String,
    /// Upstream resolvers (address:port), tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// How long to wait for one upstream before trying the next.
    pub upstream_timeout: Duration,
}

impl DnsConfig {
    /// The settings cluster.toml implies: its `dns-domain`, and the node resolvers of
    /// `network.dns` on port 53, each given 2 s before the next is tried.
    pub fn from_cluster(cluster: &crate::cluster::Cluster) -> DnsConfig {
        DnsConfig {
            domain: cluster.dns_domain.trim_end_matches('.').to_string(),
            upstreams: cluster
                .network
                .dns
                .iter()
                .map(|ip| SocketAddr::from((*ip, 53)))
                .collect(),
            upstream_timeout: Duration::from_secs(2),
        }
    }
}

/// Failures starting the server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("binding the dns udp socket on {addr} failed")]
    BindUdpFailed {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("binding the dns tcp listener on {addr} failed")]
    BindTcpFailed {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The Services DNS answers from: one writer replaces the snapshot, many readers share it.
/// Possibly stale by however long the caller takes to call [`ServiceDirectory::replace`].
#[derive(Debug, Clone, Default)]
pub struct ServiceDirectory {
    inner: Arc<RwLock<Arc<Vec<ServiceView>>>>,
}

impl ServiceDirectory {
    /// Replaces the whole model (e.g. after each sync of the watch cache).
    pub fn replace(&self, services: Vec<ServiceView>) {
        let next = Arc::new(services);
        match self.inner.write() {
            Ok(mut guard) => *guard = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }

    /// The current model; cheap (an `Arc` clone).
    pub fn snapshot(&self) -> Arc<Vec<ServiceView>> {
        match self.inner.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// What to do with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Send these bytes back.
    Answer(Vec<u8>),
    /// Not ours: pass the request to the upstream resolvers.
    Forward,
    /// Not even a DNS header: say nothing.
    Drop,
}

/// Decides the reply to one request for the cluster domain `domain`.
/// Over UDP (`udp`) a reply is bounded by 512 bytes or the client's EDNS size, over TCP
/// by 65535; larger answers are sent truncated (TC set) so the client retries over TCP.
pub fn respond(request: &[u8], services: &[ServiceView], domain: &str, udp: bool) -> Reply {
    let message = match Message::from_vec(request) {
        Ok(m) => m,
        Err(_) => {
            return match request {
                [hi, lo, ..] if request.len() >= 12 => encode(&Message::error_msg(
                    u16::from_be_bytes([*hi, *lo]),
                    OpCode::Query,
                    ResponseCode::FormErr,
                )),
                _ => Reply::Drop,
            };
        }
    };
    if message.message_type() != MessageType::Query {
        return Reply::Drop;
    }
    if message.op_code() != OpCode::Query {
        return encode(&Message::error_msg(
            message.id(),
            message.op_code(),
            ResponseCode::NotImp,
        ));
    }
    let Some(query) = message.queries().first() else {
        return encode(&Message::error_msg(
            message.id(),
            OpCode::Query,
            ResponseCode::FormErr,
        ));
    };
    let labels: Vec<String> = query
        .name()
        .iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect();
    let domain_labels: Vec<&str> = domain.split('.').filter(|l| !l.is_empty()).collect();
    let Some(local) = labels
        .len()
        .checked_sub(domain_labels.len())
        .filter(|&n| {
            labels[n..]
                .iter()
                .map(String::as_str)
                .eq(domain_labels.iter().copied())
        })
        .map(|n| &labels[..n])
    else {
        return Reply::Forward;
    };

    let mut response = Message::new();
    response
        .set_id(message.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_authoritative(true)
        .set_recursion_desired(message.recursion_desired())
        .set_recursion_available(true)
        .add_query(query.clone());
    let lookup = lookup(local, query.query_type(), services, domain);
    response.set_response_code(lookup.code);
    response.add_answers(lookup.answers);
    response.add_additionals(lookup.additionals);

    let max_len = if udp {
        usize::from(message.max_payload())
    } else {
        usize::from(u16::MAX)
    };
    match response.to_vec() {
        Ok(bytes) if bytes.len() <= max_len => Reply::Answer(bytes),
        Ok(_) => encode(&response.truncate()),
        Err(_) => encode(&Message::error_msg(
            message.id(),
            OpCode::Query,
            ResponseCode::ServFail,
        )),
    }
}

fn encode(message: &Message) -> Reply {
    match message.to_vec() {
        Ok(bytes) => Reply::Answer(bytes),
        Err(_) => Reply::Drop,
    }
}

struct Lookup {
    code: ResponseCode,
    answers: Vec<Record>,
    additionals: Vec<Record>,
}

fn fqdn(parts: &[&str], domain: &str) -> Option<Name> {
    Name::from_ascii(format!("{}.{domain}.", parts.join("."))).ok()
}

fn a_record(name: Name, ip: Ipv4Addr) -> Record {
    Record::from_rdata(name, TTL, RData::A(A(ip)))
}

fn endpoint_label(address: &super::model::ReadyAddress) -> String {
    match &address.hostname {
        Some(h) => h.to_ascii_lowercase(),
        None => address.ip.to_string().replace('.', "-"),
    }
}

/// Answers a name inside the cluster domain; `local` are its labels before the domain.
fn lookup(local: &[String], qtype: RecordType, services: &[ServiceView], domain: &str) -> Lookup {
    let mut result = Lookup {
        code: ResponseCode::NXDomain,
        answers: Vec::new(),
        additionals: Vec::new(),
    };
    let local: Vec<&str> = local.iter().map(String::as_str).collect();
    let find = |name: &str, ns: &str| -> Option<&ServiceView> {
        services
            .iter()
            .find(|s| s.name == name && s.namespace == ns)
    };
    match local[..] {
        [svc, ns, "svc"] => {
            let Some(service) = find(svc, ns) else {
                return result;
            };
            result.code = ResponseCode::NoError;
            let Some(name) = fqdn(&local, domain) else {
                return result;
            };
            if qtype == RecordType::A || qtype == RecordType::ANY {
                match service.cluster_ip {
                    Some(ip) => result.answers.push(a_record(name, ip)),
                    None => {
                        for address in &service.ready {
                            result.answers.push(a_record(name.clone(), address.ip));
                        }
                    }
                }
            }
        }
        [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
            let Some(service) = find(svc, ns) else {
                return result;
            };
            let Some(view) = service.ports.iter().find(|p| {
                !p.name.is_empty() && p.name == port[1..] && p.protocol.as_str() == &proto[1..]
            }) else {
                return result;
            };
            result.code = ResponseCode::NoError;
            if qtype != RecordType::SRV && qtype != RecordType::ANY {
                return result;
            }
            let (Some(name), Some(target)) =
                (fqdn(&local, domain), fqdn(&[svc, ns, "svc"], domain))
            else {
                return result;
            };
            match service.cluster_ip {
                Some(ip) => {
                    let srv = SRV::new(0, 100, view.port, target.clone());
                    result
                        .answers
                        .push(Record::from_rdata(name, TTL, RData::SRV(srv)));
                    result.additionals.push(a_record(target, ip));
                }
                None => {
                    for address in &service.ready {
                        let Some(backend) = view.backends.iter().find(|b| b.ip == address.ip)
                        else {
                            continue;
                        };
                        let label = endpoint_label(address);
                        let Some(host) = fqdn(&[&label, svc, ns, "svc"], domain) else {
                            continue;
                        };
                        let srv = SRV::new(0, 100, backend.port, host.clone());
                        result
                            .answers
                            .push(Record::from_rdata(name.clone(), TTL, RData::SRV(srv)));
                        result.additionals.push(a_record(host, address.ip));
                    }
                }
            }
        }
        [host, svc, ns, "svc"] => {
            let Some(service) = find(svc, ns).filter(|s| s.is_headless()) else {
                return result;
            };
            let Some(address) = service.ready.iter().find(|a| endpoint_label(a) == host) else {
                return result;
            };
            result.code = ResponseCode::NoError;
            if let (true, Some(name)) = (
                qtype == RecordType::A || qtype == RecordType::ANY,
                fqdn(&local, domain),
            ) {
                result.answers.push(a_record(name, address.ip));
            }
        }
        // `<ns>.svc`, `svc` and the domain itself exist while they hold a Service.
        [ns, "svc"] if services.iter().any(|s| s.namespace == ns) => {
            result.code = ResponseCode::NoError;
        }
        ["svc"] | [] if !services.is_empty() => result.code = ResponseCode::NoError,
        _ => {}
    }
    result
}

/// A running DNS server; its tasks stop when this is dropped.
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

struct Shared {
    directory: ServiceDirectory,
    config: DnsConfig,
}

impl DnsServer {
    /// Binds UDP and TCP on `addr` (port 0: one free port for both) and starts serving.
    pub async fn start(
        addr: SocketAddr,
        config: DnsConfig,
        directory: ServiceDirectory,
    ) -> Result<DnsServer, DnsError> {
        let (udp, tcp) = bind_pair(addr).await?;
        let local = udp
            .local_addr()
            .map_err(|source| DnsError::BindUdpFailed { addr, source })?;
        let shared = Arc::new(Shared { directory, config });
        let udp = Arc::new(udp);
        let tasks = vec![
            tokio::spawn(serve_udp(udp, shared.clone())),
            tokio::spawn(serve_tcp(tcp, shared)),
        ];
        tracing::info!(addr = %local, "cluster dns listening");
        Ok(DnsServer { addr: local, tasks })
    }

    /// The address both listeners are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let mut attempt = 0;
    loop {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|source| DnsError::BindUdpFailed { addr, source })?;
        let bound = udp
            .local_addr()
            .map_err(|source| DnsError::BindUdpFailed { addr, source })?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // A random UDP port may be taken for TCP: pick another one a few times.
            Err(e) if addr.port() == 0 && attempt < 8 => {
                tracing::debug!(error = %e, "tcp port taken, retrying");
                attempt += 1;
            }
            Err(source) => {
                return Err(DnsError::BindTcpFailed {
                    addr: bound,
                    source,
                })
            }
        }
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; UDP_MAX];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "dns udp receive failed");
                continue;
            }
        };
        let request = buf[..len].to_vec();
        let socket = socket.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let services = shared.directory.snapshot();
            let reply = match respond(&request, &services, &shared.config.domain, true) {
                Reply::Answer(bytes) => Some(bytes),
                Reply::Forward => Some(forward_udp(&request, &shared.config).await),
                Reply::Drop => None,
            };
            if let Some(bytes) = reply {
                if let Err(e) = socket.send_to(&bytes, peer).await {
                    tracing::debug!(error = %e, %peer, "dns udp reply failed");
                }
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "dns tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_tcp_connection(stream, &shared).await {
                tracing::debug!(error = %e, %peer, "dns tcp connection ended");
            }
        });
    }
}

async fn serve_tcp_connection(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let idle = Duration::from_secs(10);
    loop {
        let Ok(request) = tokio::time::timeout(idle, read_frame(&mut stream)).await else {
            return Ok(());
        };
        let request = request?;
        let services = shared.directory.snapshot();
        let reply = match respond(&request, &services, &shared.config.domain, false) {
            Reply::Answer(bytes) => bytes,
            Reply::Forward => forward_tcp(&request, &shared.config).await,
            Reply::Drop => return Ok(()),
        };
        write_frame(&mut stream, &reply).await?;
    }
}

async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(bytes.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "reply too long"))?;
    let mut frame = Vec::with_capacity(bytes.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(bytes);
    stream.write_all(&frame).await
}

fn servfail(request: &[u8]) -> Vec<u8> {
    let id = match request {
        [hi, lo, ..] => u16::from_be_bytes([*hi, *lo]),
        _ => 0,
    };
    let mut message = Message::error_msg(id, OpCode::Query, ResponseCode::ServFail);
    if let Ok(parsed) = Message::from_vec(request) {
        message.add_queries(parsed.queries().iter().cloned());
        message.set_recursion_desired(parsed.recursion_desired());
    }
    message.set_recursion_available(true);
    message.to_vec().unwrap_or_default()
}

async fn forward_udp(request: &[u8], config: &DnsConfig) -> Vec<u8> {
    for upstream in &config.upstreams {
        let bind: SocketAddr = if upstream.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let attempt = async {
            let socket = UdpSocket::bind(bind).await?;
            socket.connect(upstream).await?;
            socket.send(request).await?;
            let mut buf = vec![0u8; UDP_MAX];
            loop {
                let len = socket.recv(&mut buf).await?;
                // Only accept a reply to this query (same id).
                if len >= 2 && request.len() >= 2 && buf[..2] == request[..2] {
                    buf.truncate(len);
                    return Ok::<_, std::io::Error>(buf);
                }
            }
        };
        match tokio::time::timeout(config.upstream_timeout, attempt).await {
            Ok(Ok(bytes)) => return bytes,
            Ok(Err(e)) => tracing::debug!(%upstream, error = %e, "upstream udp failed"),
            Err(_) => tracing::debug!(%upstream, "upstream udp timed out"),
        }
    }
    servfail(request)
}

async fn forward_tcp(request: &[u8], config: &DnsConfig) -> Vec<u8> {
    for upstream in &config.upstreams {
        let attempt = async {
            let mut stream = TcpStream::connect(upstream).await?;
            write_frame(&mut stream, request).await?;
            read_frame(&mut stream).await
        };
        match tokio::time::timeout(config.upstream_timeout, attempt).await {
            Ok(Ok(bytes)) => return bytes,
            Ok(Err(e)) => tracing::debug!(%upstream, error = %e, "upstream tcp failed"),
            Err(_) => tracing::debug!(%upstream, "upstream tcp timed out"),
        }
    }
    servfail(request)
}

#[cfg(test)]
#[path = "dns_tests.rs"]
mod tests;
