//! A throwaway single-member etcd on loopback, for tests, benchmarks and development.
//!
//! How: runs the `etcd` binary from `PATH` (Debian's `etcd-server`) with a fresh data
//! directory under the system temp dir and two free loopback ports (client and peer), then
//! waits until an [`EtcdStore`] can read from it. With TLS it first makes a CA, a serving
//! certificate for `127.0.0.1` and a client certificate (rcgen), and starts etcd with
//! `--client-cert-auth`, so only clients holding a certificate from that CA get in. Dropping
//! the guard kills the process (by its PID, through its `Child` handle) and removes the
//! directory.
//!
//! [`LocalEtcd::start_cluster`] starts several members that form one cluster (for failover
//! tests: stopping one member's process with SIGSTOP is a machine that lost power).
//!
//! Limits: free ports are found by binding port 0 and releasing it, so another process may
//! grab one before etcd does (startup then fails with `ExitedEarly`). Peer traffic is plain.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::{EtcdConfig, EtcdStore, EtcdTls};

/// How long etcd gets to become readable.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a local etcd could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalEtcdError {
    #[error("cannot prepare the etcd directory {path}")]
    PrepareDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find a free loopback port")]
    FindPort(#[source] std::io::Error),
    #[error("cannot make the test certificates")]
    MakeCertificates(#[from] rcgen::Error),
    #[error("cannot run etcd (is the etcd-server package installed?)")]
    Spawn(#[source] std::io::Error),
    #[error("etcd exited during startup ({status}); its log:\n{log}")]
    ExitedEarly { status: String, log: String },
    #[error("etcd did not answer within {START_TIMEOUT:?}; its log:\n{log}")]
    NotReady { log: String },
}

/// A running etcd that is killed and wiped when dropped.
pub struct LocalEtcd {
    child: Child,
    dir: PathBuf,
    client_url: String,
    tls: Option<EtcdTls>,
    member: Member,
    extra: Vec<String>,
}

impl LocalEtcd {
    /// Starts etcd serving plain HTTP on loopback.
    pub async fn start() -> Result<Self, LocalEtcdError> {
        Self::spawn(false, &[]).await
    }

    /// Starts etcd serving plain HTTP on loopback with extra flags (such as
    /// `--quota-backend-bytes=…`).
    pub async fn start_with_args(args: &[&str]) -> Result<Self, LocalEtcdError> {
        Self::spawn(false, args).await
    }

    /// Starts etcd serving HTTPS on loopback and requiring client certificates.
    pub async fn start_with_tls() -> Result<Self, LocalEtcdError> {
        Self::spawn(true, &[]).await
    }

    /// Starts a cluster of `size` members on loopback (plain HTTP), each with `extra`
    /// flags, and waits until every one answers. [`LocalEtcd::cluster_config`] reaches all.
    pub async fn start_cluster(size: usize, extra: &[&str]) -> Result<Vec<Self>, LocalEtcdError> {
        let ports = (0..size)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<Vec<_>, LocalEtcdError>>()?;
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.into_iter().enumerate() {
            let member = Member {
                name: format!("m{i}"),
                client_port: client,
                peer_port: peer,
                initial_cluster: initial.clone(),
            };
            members.push(Self::launch(false, extra, Some(member))?);
        }
        for m in &mut members {
            m.wait_ready().await?;
        }
        Ok(members)
    }

    /// How to reach every member of a cluster started by [`LocalEtcd::start_cluster`].
    pub fn cluster_config(members: &[Self]) -> EtcdConfig {
        EtcdConfig {
            endpoints: members.iter().map(|m| m.client_url.clone()).collect(),
            tls: None,
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// How to reach this etcd (with the client certificate when it uses TLS).
    pub fn config(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: vec![self.client_url.clone()],
            tls: self.tls.clone(),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// The etcd process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The data directory, which also holds `etcd.log` and the TLS files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The member's advertised peer URL.
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.member.peer_port)
    }

    /// Stops the process (SIGKILL: a machine that lost power) and waits for it.
    pub fn kill(&mut self) {
        // An error means the process has already exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Deletes the member's data (a machine given a blank disk); the process must be stopped.
    pub fn wipe_data(&self) -> std::io::Result<()> {
        std::fs::remove_dir_all(self.dir.join("data"))
    }

    /// Starts the stopped member again with its name and ports, and `extra` flags added to
    /// those it started with (such as `--initial-cluster-state=existing`); waits until it
    /// answers.
    pub async fn restart(&mut self, extra: &[&str]) -> Result<(), LocalEtcdError> {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("etcd.log"))
            .map_err(|source| LocalEtcdError::PrepareDir {
                path: self.dir.clone(),
                source,
            })?;
        let mut args = self.extra.clone();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut command = self
            .member
            .command(&self.dir, &self.client_url, &args, log)?;
        self.child = command.spawn().map_err(LocalEtcdError::Spawn)?;
        self.wait_ready().await
    }

    async fn spawn(tls: bool, extra: &[&str]) -> Result<Self, LocalEtcdError> {
        let mut etcd = Self::launch(tls, extra, None)?;
        etcd.wait_ready().await?;
        Ok(etcd)
    }

    /// Starts the process (a single-member cluster unless `member` says otherwise).
    fn launch(tls: bool, extra: &[&str], member: Option<Member>) -> Result<Self, LocalEtcdError> {
        let dir = std::env::temp_dir().join(format!(
            "kimg-etcd-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let prepare = |source| LocalEtcdError::PrepareDir {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(prepare)?;
        let member = match member {
            Some(m) => m,
            None => {
                let (client_port, peer_port) = (free_port()?, free_port()?);
                Member {
                    name: "kimg-test".into(),
                    client_port,
                    peer_port,
                    initial_cluster: format!("kimg-test=http://127.0.0.1:{peer_port}"),
                }
            }
        };
        let scheme = if tls { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{}", member.client_port);
        let log = File::create(dir.join("etcd.log")).map_err(prepare)?;
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let tls_files = if tls {
            let files = write_certificates(&dir)?;
            extra.extend([
                "--client-cert-auth".to_string(),
                format!("--trusted-ca-file={}", files.ca.display()),
                format!("--cert-file={}", dir.join("server.pem").display()),
                format!("--key-file={}", dir.join("server-key.pem").display()),
            ]);
            Some(files)
        } else {
            None
        };
        let child = member
            .command(&dir, &client_url, &extra, log)?
            .spawn()
            .map_err(LocalEtcdError::Spawn)?;
        Ok(LocalEtcd {
            child,
            dir,
            client_url,
            tls: tls_files,
            member,
            extra,
        })
    }

    async fn wait_ready(&mut self) -> Result<(), LocalEtcdError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut config = self.config();
        config.connect_timeout = Duration::from_secs(1);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(LocalEtcdError::ExitedEarly {
                    status: status.to_string(),
                    log: self.log_tail(),
                });
            }
            if EtcdStore::connect(&config).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LocalEtcdError::NotReady {
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        // Errors here mean the process is already gone or the directory already removed.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One member of a local cluster.
#[derive(Clone, Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// etcd's `--initial-cluster`: every member's name and peer URL.
    initial_cluster: String,
}

impl Member {
    /// The etcd command for this member, logging to `log`.
    fn command(
        &self,
        dir: &Path,
        client_url: &str,
        extra: &[String],
        log: File,
    ) -> Result<Command, LocalEtcdError> {
        let log_err = log
            .try_clone()
            .map_err(|source| LocalEtcdError::PrepareDir {
                path: dir.to_owned(),
                source,
            })?;
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new("etcd");
        command
            .arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg("--logger=zap")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        Ok(command)
    }
}

fn free_port() -> Result<u16, LocalEtcdError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(LocalEtcdError::FindPort)?;
    let port = listener
        .local_addr()
        .map_err(LocalEtcdError::FindPort)?
        .port();
    Ok(port)
}

/// Writes `ca.pem`, `server(-key).pem` and `client(-key).pem` into `dir`.
pub(super) fn write_certificates(dir: &Path) -> Result<EtcdTls, LocalEtcdError> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kimg test etcd ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key)?;

    let leaf = |name: &str, purpose: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = vec![
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::DnsName("localhost".try_into()?),
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        Ok::<_, rcgen::Error>((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf("etcd", ExtendedKeyUsagePurpose::ServerAuth)?;
    let (client_cert, client_key) = leaf("kimg-apiserver", ExtendedKeyUsagePurpose::ClientAuth)?;

    let files = [
        ("ca.pem", ca.pem()),
        ("server.pem", server_cert),
        ("server-key.pem", server_key),
        ("client.pem", client_cert),
        ("client-key.pem", client_key),
    ];
    for (name, pem) in files {
        let path = dir.join(name);
        std::fs::write(&path, pem).map_err(|source| LocalEtcdError::PrepareDir { path, source })?;
    }
    Ok(EtcdTls {
        ca: dir.join("ca.pem"),
        cert: dir.join("client.pem"),
        key: dir.join("client-key.pem"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropping_a_local_etcd_kills_the_process_and_removes_its_directory() {
        let etcd = LocalEtcd::start().await.expect("start etcd");
        let pid = etcd.pid();
        let dir = etcd.dir().to_owned();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(etcd);
        // The child was reaped by `wait`, so its /proc entry is gone.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        assert!(!dir.exists());
    }
}
