//! The etcd v3 backend of [`Store`], over gRPC with `etcd-client`.
//!
//! How: one client balanced over all endpoints, plain HTTP or mutual TLS (CA, client
//! certificate and key as PEM files). Writes are transactions, as in Kubernetes' etcd3
//! storage: create succeeds only if the key's `create_revision` is 0, update and delete
//! only if its `mod_revision` equals the expected one; the failure branch reads the key to
//! tell `NotFound` from `Conflict`. Each watch is its own gRPC watch with `prev_kv`,
//! starting at `from_revision + 1`; etcd cancels a watch whose start was compacted, which
//! becomes [`StoreError::Compacted`]. Reads that name a compacted or future revision are
//! recognised by etcd's error text (gRPC `OutOfRange`).
//!
//! Limits: no leases (no TTLs); no request timeout (a long watch must not time out), only
//! connect timeout and HTTP/2 keep-alive to notice dead members.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, KvClient, TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};

use super::{
    KeyValue, ListOptions, ListResult, Store, StoreError, WatchEvent, WatchEventKind, WatchStream,
};

/// Where the etcd cluster is and how to authenticate to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs of all members, such as `https://10.0.0.11:2379`.
    pub endpoints: Vec<String>,
    /// Mutual TLS; `None` speaks plain HTTP.
    pub tls: Option<EtcdTls>,
    pub connect_timeout: Duration,
}

/// PEM files for mutual TLS with etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA that signed the etcd members' serving certificates.
    pub ca: PathBuf,
    /// This client's certificate and its private key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A [`Store`] on an etcd v3 cluster; clones share the connection.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    /// Each member's own client, for maintenance that must reach every member.
    config: EtcdConfig,
}

impl EtcdStore {
    /// Connects to the cluster; fails if no endpoint answers within the connect timeout.
    pub async fn connect(config: &EtcdConfig) -> Result<Self, StoreError> {
        let client = Client::connect(&config.endpoints, Some(connect_options(config)?))
            .await
            .map_err(StoreError::Connect)?;
        let store = EtcdStore {
            client,
            config: config.clone(),
        };
        // The client connects lazily; one read proves an endpoint answers.
        store.current_revision().await?;
        Ok(store)
    }

    /// One client per member (a maintenance call through the balanced client reaches
    /// only the member it is balanced onto).
    async fn members(&self) -> Result<Vec<(String, Client)>, StoreError> {
        let mut out = Vec::new();
        for ep in &self.config.endpoints {
            let c = Client::connect([ep], Some(connect_options(&self.config)?))
                .await
                .map_err(StoreError::Connect)?;
            out.push((ep.clone(), c));
        }
        Ok(out)
    }

    /// The underlying client, for what the trait does not cover (benchmarks, maintenance).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    fn kv(&self) -> KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE)
    }

    /// Runs `txn`, returning its revision on success and the key's current value otherwise.
    async fn write_txn(
        &self,
        key: &str,
        compares: Vec<Compare>,
        op: TxnOp,
    ) -> Result<Result<(i64, TxnResponse), Option<KeyValue>>, StoreError> {
        let txn = Txn::new()
            .when(compares)
            .and_then(vec![op])
            .or_else(vec![TxnOp::get(key, None)]);
        let response = retrying(Attempt::Write, || {
            let (mut kv, txn) = (self.kv(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await?;
        let revision = header_revision(response.header())?;
        if response.succeeded() {
            return Ok(Ok((revision, response)));
        }
        let current = match response.op_responses().into_iter().next() {
            Some(TxnOpResponse::Get(get)) => get.kvs().first().map(convert_kv).transpose()?,
            _ => {
                return Err(StoreError::MalformedResponse {
                    reason: "a failed transaction did not return its read",
                })
            }
        };
        Ok(Err(current))
    }
}

fn connect_options(config: &EtcdConfig) -> Result<ConnectOptions, StoreError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.connect_timeout)
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
    if let Some(tls) = &config.tls {
        let identity = Identity::from_pem(read_pem(&tls.cert)?, read_pem(&tls.key)?);
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read_pem(&tls.ca)?))
            .identity(identity);
        options = options.with_tls(tls);
    }
    Ok(options)
}

fn read_pem(path: &Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|source| StoreError::ReadTlsFile {
        path: path.to_owned(),
        source,
    })
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<i64, StoreError> {
    header
        .map(|h| h.revision())
        .ok_or(StoreError::MalformedResponse {
            reason: "response without header",
        })
}

fn convert_kv(kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    let key = std::str::from_utf8(kv.key()).map_err(|_| StoreError::MalformedResponse {
        reason: "key is not utf-8",
    })?;
    Ok(KeyValue {
        key: key.to_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    })
}

/// The smallest key greater than every key starting with `prefix` (`\0` means no end).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl From<etcd_client::Error> for StoreError {
    fn from(error: etcd_client::Error) -> Self {
        match &error {
            etcd_client::Error::GRpcStatus(status)
                if status.code() == tonic::Code::ResourceExhausted
                    && status.message().contains("space exceeded") =>
            {
                StoreError::NoSpace(error)
            }
            etcd_client::Error::GRpcStatus(status) if !is_retryable(status.code()) => {
                StoreError::Rejected(error)
            }
            etcd_client::Error::InvalidArgs(_) | etcd_client::Error::Utf8Error(_) => {
                StoreError::Rejected(error)
            }
            _ => StoreError::Unavailable(error),
        }
    }
}

/// The largest response accepted from etcd (gRPC's default is 4 MiB, less than one list of
/// a busy namespace); kube-apiserver's etcd client also takes up to 2 GiB.
const MAX_RESPONSE: usize = i32::MAX as usize;

/// How long a request keeps being retried while etcd is unreachable, and the pause between.
const RETRY_FOR: Duration = Duration::from_secs(5);
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Which requests may be sent again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// Any unavailability: reading twice is harmless.
    Read,
    /// Only failures that prove the request never reached etcd (no connection, no leader),
    /// so a write is never applied twice behind the caller's back.
    Write,
}

fn worth_retrying(error: &etcd_client::Error, attempt: Attempt) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) if status.code() == tonic::Code::Unavailable => {
            let m = status.message();
            attempt == Attempt::Read || m.contains("connect") || m.contains("no leader")
        }
        etcd_client::Error::TransportError(_) => attempt == Attempt::Read,
        _ => false,
    }
}

/// Runs `op` until it succeeds, fails for good, or [`RETRY_FOR`] has passed. A member that
/// vanished with its machine keeps receiving a share of the requests until the channel's
/// keepalive gives up on it (seconds); they fail at connect time, and the next attempt is
/// balanced onto a member that answers. The same holds while the members elect a leader.
async fn retrying<T, F, Fut>(attempt: Attempt, mut op: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    loop {
        match op().await {
            Err(e) if worth_retrying(&e, attempt) && tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "etcd unavailable; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            other => return other,
        }
    }
}

/// Whether a gRPC code means "try again later" rather than "etcd said no".
fn is_retryable(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
    )
}

/// Maps the errors of a read or compaction at `revision`.
fn revision_error(error: etcd_client::Error, revision: i64) -> StoreError {
    if let etcd_client::Error::GRpcStatus(status) = &error {
        if status
            .message()
            .contains("required revision has been compacted")
        {
            return StoreError::Compacted {
                requested: revision,
                compacted_revision: None,
            };
        }
        if status
            .message()
            .contains("required revision is a future revision")
        {
            return StoreError::FutureRevision {
                requested: revision,
            };
        }
    }
    error.into()
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let response = retrying(Attempt::Read, || {
            let mut kv = self.kv();
            async move { kv.get(key, None).await }
        })
        .await?;
        response.kvs().first().map(convert_kv).transpose()
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListResult, StoreError> {
        let start = match &options.start_after {
            Some(after) if after.as_str() >= prefix => {
                let mut start = after.as_bytes().to_vec();
                start.push(0);
                start
            }
            _ => prefix.as_bytes().to_vec(),
        };
        let revision = options.revision.unwrap_or(0);
        let mut get = GetOptions::new()
            .with_range(prefix_end(prefix))
            .with_revision(revision);
        if let Some(limit) = options.limit.filter(|l| *l > 0) {
            get = get.with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        let response = retrying(Attempt::Read, || {
            let (mut kv, start, get) = (self.kv(), start.clone(), get.clone());
            async move { kv.get(start, Some(get)).await }
        })
        .await
        .map_err(|e| revision_error(e, revision))?;
        let items = response
            .kvs()
            .iter()
            .map(convert_kv)
            .collect::<Result<Vec<_>, _>>()?;
        let read_at = if revision > 0 {
            revision
        } else {
            header_revision(response.header())?
        };
        Ok(ListResult {
            remaining: (response.count() - items.len() as i64).max(0),
            more: response.more(),
            items,
            revision: read_at,
        })
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64, StoreError> {
        let compare = Compare::create_revision(key, CompareOp::Equal, 0);
        match self
            .write_txn(key, vec![compare], TxnOp::put(key, value, None))
            .await?
        {
            Ok((revision, _)) => Ok(revision),
            Err(_) => Err(StoreError::AlreadyExists {
                key: key.to_owned(),
            }),
        }
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: i64,
    ) -> Result<i64, StoreError> {
        let compares = vec![
            Compare::create_revision(key, CompareOp::Greater, 0),
            Compare::mod_revision(key, CompareOp::Equal, expected_mod_revision),
        ];
        match self
            .write_txn(key, compares, TxnOp::put(key, value, None))
            .await?
        {
            Ok((revision, _)) => Ok(revision),
            Err(current) => Err(mismatch(key, expected_mod_revision, current)),
        }
    }

    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<i64>,
    ) -> Result<(i64, KeyValue), StoreError> {
        let mut compares = vec![Compare::create_revision(key, CompareOp::Greater, 0)];
        if let Some(expected) = expected_mod_revision {
            compares.push(Compare::mod_revision(key, CompareOp::Equal, expected));
        }
        let op = TxnOp::delete(key, Some(DeleteOptions::new().with_prev_key()));
        match self.write_txn(key, compares, op).await? {
            Ok((revision, response)) => {
                let prev = match response.op_responses().into_iter().next() {
                    Some(TxnOpResponse::Delete(delete)) => {
                        delete.prev_kvs().first().map(convert_kv).transpose()?
                    }
                    _ => None,
                };
                let prev = prev.ok_or(StoreError::MalformedResponse {
                    reason: "a delete did not return the deleted key",
                })?;
                Ok((revision, prev))
            }
            Err(current) => Err(mismatch(key, expected_mod_revision.unwrap_or(0), current)),
        }
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream, StoreError> {
        let mut options = WatchOptions::new()
            .with_range(prefix_end(prefix))
            .with_prev_key();
        if from_revision > 0 {
            options = options.with_start_revision(from_revision + 1);
        }
        let stream = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_RESPONSE)
            .watch(prefix, Some(options))
            .await?;
        let state = EtcdWatch {
            stream,
            from_revision,
            pending: VecDeque::new(),
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(state, EtcdWatch::step)))
    }

    async fn current_revision(&self) -> Result<i64, StoreError> {
        let response = retrying(Attempt::Read, || {
            let mut kv = self.kv();
            async move { kv.get("/", Some(GetOptions::new().with_count_only())).await }
        })
        .await?;
        header_revision(response.header())
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        self.kv()
            .compact(revision, None)
            .await
            .map_err(|e| revision_error(e, revision))?;
        Ok(())
    }

    async fn defragment(&self, only_fragmented: bool) -> Result<(), StoreError> {
        for (ep, client) in self.members().await? {
            if only_fragmented {
                let st = client.maintenance_client().status().await?;
                if st.raft_used_db_size() * 2 > st.db_size() {
                    continue;
                }
            }
            let t = std::time::Instant::now();
            client.maintenance_client().defragment().await?;
            tracing::info!(member = %ep, ms = t.elapsed().as_millis() as u64, "etcd defragmented");
        }
        Ok(())
    }

    async fn disarm_nospace(&self) -> Result<bool, StoreError> {
        let mut m = self.client.maintenance_client();
        let alarms = m
            .alarm(
                etcd_client::AlarmAction::Get,
                etcd_client::AlarmType::None,
                None,
            )
            .await?;
        let mut disarmed = false;
        for a in alarms.alarms() {
            if a.alarm() != etcd_client::AlarmType::Nospace {
                continue;
            }
            let mut o = etcd_client::AlarmOptions::new();
            o.with_member(a.member_id());
            m.alarm(
                etcd_client::AlarmAction::Deactivate,
                etcd_client::AlarmType::Nospace,
                Some(o),
            )
            .await?;
            tracing::warn!(member = a.member_id(), "etcd NOSPACE alarm disarmed");
            disarmed = true;
        }
        Ok(disarmed)
    }

    async fn db_size(&self) -> Result<Option<i64>, StoreError> {
        let mut size = 0;
        for (_, client) in self.members().await? {
            size = size.max(client.maintenance_client().status().await?.db_size());
        }
        Ok(Some(size))
    }
}

/// The error for a failed compare on an existing or missing key.
fn mismatch(key: &str, expected: i64, current: Option<KeyValue>) -> StoreError {
    match current {
        Some(kv) => StoreError::Conflict {
            key: key.to_owned(),
            expected,
            current: kv.mod_revision,
        },
        None => StoreError::NotFound {
            key: key.to_owned(),
        },
    }
}

/// The state of one etcd watch as a stream.
struct EtcdWatch {
    /// Holds the request side open too; dropping it ends the watch on the server.
    stream: etcd_client::WatchStream,
    from_revision: i64,
    pending: VecDeque<Result<WatchEvent, StoreError>>,
    done: bool,
}

impl EtcdWatch {
    async fn step(mut self) -> Option<(Result<WatchEvent, StoreError>, Self)> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                if item.is_err() {
                    self.pending.clear();
                    self.done = true;
                }
                return Some((item, self));
            }
            if self.done {
                return None;
            }
            let response = match self.stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => {
                    self.done = true;
                    let reason = "the watch stream closed".to_owned();
                    return Some((Err(StoreError::WatchCanceled { reason }), self));
                }
                Err(error) => {
                    self.done = true;
                    return Some((Err(error.into()), self));
                }
            };
            for event in response.events() {
                self.pending.push_back(convert_event(event));
            }
            if response.canceled() {
                let error = if response.compact_revision() > 0 {
                    StoreError::Compacted {
                        requested: self.from_revision,
                        compacted_revision: Some(response.compact_revision()),
                    }
                } else {
                    StoreError::WatchCanceled {
                        reason: response.cancel_reason().to_owned(),
                    }
                };
                self.pending.push_back(Err(error));
            }
        }
    }
}

fn convert_event(event: &etcd_client::Event) -> Result<WatchEvent, StoreError> {
    let kv = event.kv().ok_or(StoreError::MalformedResponse {
        reason: "watch event without key-value",
    })?;
    let kind = match event.event_type() {
        EventType::Put => WatchEventKind::Put,
        EventType::Delete => WatchEventKind::Delete,
    };
    Ok(WatchEvent {
        kind,
        kv: convert_kv(kv)?,
        prev_kv: event.prev_kv().map(convert_kv).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalEtcd;

    #[test]
    fn the_prefix_end_increments_the_last_byte_that_can_be() {
        assert_eq!(prefix_end("/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_store_passes_the_conformance_suite_against_a_local_etcd_binary() {
        let etcd = LocalEtcd::start().await.expect("start etcd");
        let store = EtcdStore::connect(&etcd.config()).await.expect("connect");
        crate::store::conformance::run_all(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_store_passes_the_conformance_suite_over_mutual_tls_against_a_local_etcd_binary() {
        let etcd = LocalEtcd::start_with_tls()
            .await
            .expect("start etcd with tls");
        let config = etcd.config();
        assert!(config.endpoints[0].starts_with("https://"));
        let store = EtcdStore::connect(&config).await.expect("connect over tls");
        crate::store::conformance::run_all(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_local_tls_etcd_refuses_a_client_certificate_from_another_ca() {
        let etcd = LocalEtcd::start_with_tls()
            .await
            .expect("start etcd with tls");
        let other = tempfile::tempdir().expect("tempdir");
        let stranger =
            crate::store::local_etcd::write_certificates(other.path()).expect("other ca");
        let mut config = etcd.config();
        config.connect_timeout = Duration::from_secs(3);
        let tls = config.tls.clone().expect("tls config");
        config.tls = Some(EtcdTls {
            ca: tls.ca,
            cert: stranger.cert,
            key: stranger.key,
        });
        assert!(EtcdStore::connect(&config).await.is_err());
        // The same etcd accepts its own client certificate.
        assert!(EtcdStore::connect(&etcd.config()).await.is_ok());
    }
}
