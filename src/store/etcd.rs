//! The etcd v3 backend of [`Store`], over gRPC with `etcd-client`.
//!
//! How: one client per member, plain HTTP or mutual TLS (CA, client certificate and key as
//! PEM files). Writes are transactions, as in Kubernetes' etcd3 storage: create succeeds
//! only if the key's `create_revision` is 0, update and delete only if its `mod_revision`
//! equals the expected one; the failure branch reads the key to tell `NotFound` from
//! `Conflict`. Each watch is its own gRPC watch with `prev_kv`, starting at
//! `from_revision + 1`; etcd cancels a watch whose start was compacted, which becomes
//! [`StoreError::Compacted`]. Reads that name a compacted or future revision are
//! recognised by etcd's error text (gRPC `OutOfRange`).
//!
//! Failover: losing any one member, the leader included, must not stop
//! writes for longer than etcd takes to elect a new leader. A prober asks every member for
//! its status every [`PROBE_EVERY`]; a member is healthy while it answers within
//! [`PROBE_TIMEOUT`] and knows a leader. Requests go to one preferred member, moved to the
//! next healthy one when an attempt fails. Every attempt has a deadline (doubling from
//! [`FIRST_ATTEMPT`] for requests that keep timing out), and an attempt in flight is
//! abandoned and sent again at once when its member turns unhealthy or a new leader is
//! elected (a request that a follower forwarded to a dead leader would otherwise wait for
//! etcd's own 7 s timeout). Requests carry etcd's `hasleader` requirement, so a member cut off
//! from the leader answers "no leader" instead of waiting. Sending a write again is safe
//! because every write is a compare-and-swap: if an abandoned attempt was applied after all,
//! the next one fails its compare and finds the key holding exactly the value it wrote,
//! which is then reported as the write's success (a delete in that position reports
//! [`StoreError::Unavailable`]: its outcome is unknown). A watch ends with
//! [`StoreError::WatchCanceled`] when its member turns unhealthy; the caller watches again
//! from its last revision on a healthy member.
//!
//! Limits: no leases (no TTLs). HTTP/2 keep-alive (5 s + 3 s; etcd refuses pings more often
//! than every 5 s) only cleans up connections; the prober is what notices dead members.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, KvClient, TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use tokio::sync::watch;

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

/// How often the prober asks every member for its status.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How long a member has to answer a probe before it counts as unhealthy.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// The deadline of a request's first attempt; each further attempt that also times out gets
/// twice as long, up to [`LAST_ATTEMPT`] (so a slow but working cluster still answers).
const FIRST_ATTEMPT: Duration = Duration::from_secs(2);
const LAST_ATTEMPT: Duration = Duration::from_secs(16);
/// Range reads may be large (every pod of a big cluster): their attempts start longer.
const FIRST_LIST_ATTEMPT: Duration = Duration::from_secs(10);

/// One member and what the prober last learned about it.
struct Member {
    endpoint: String,
    client: Client,
    /// Answers probes and knows a leader.
    healthy: watch::Sender<bool>,
}

/// What every clone of a store shares.
struct Shared {
    members: Arc<[Member]>,
    /// The member requests go to while it is healthy.
    preferred: AtomicUsize,
    /// Bumped by the prober whenever a member reports a newer raft term with a leader.
    elections: watch::Sender<u64>,
    /// One prober task per member.
    probers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for prober in &self.probers {
            prober.abort();
        }
    }
}

/// A [`Store`] on an etcd v3 cluster; clones share the connections.
#[derive(Clone)]
pub struct EtcdStore {
    shared: Arc<Shared>,
}

/// What [`EtcdStore::call`] got back, and from where.
struct Answered<T> {
    value: T,
    /// Index of the member that answered.
    member: usize,
    /// How many attempts it took (more than one: an earlier one may have been applied).
    attempts: u32,
}

/// How a write transaction ended.
enum Written {
    /// Applied at this revision; for a delete, with the deleted key-value when known.
    Applied(i64, Option<KeyValue>),
    /// The compare failed; the key's current value.
    Refused(Option<KeyValue>),
}

impl EtcdStore {
    /// Connects to the cluster; fails if no endpoint answers within the connect timeout.
    pub async fn connect(config: &EtcdConfig) -> Result<Self, StoreError> {
        if config.endpoints.is_empty() {
            return Err(StoreError::Connect(etcd_client::Error::InvalidArgs(
                "no etcd endpoints".into(),
            )));
        }
        let mut members = Vec::new();
        for endpoint in &config.endpoints {
            let client = Client::connect([endpoint], Some(connect_options(config)?))
                .await
                .map_err(StoreError::Connect)?;
            members.push(Member {
                endpoint: endpoint.clone(),
                client,
                healthy: watch::Sender::new(true),
            });
        }
        let members: Arc<[Member]> = members.into();
        let elections = watch::Sender::new(0);
        let newest_term = Arc::new(AtomicU64::new(0));
        let probers = (0..members.len())
            .map(|i| {
                let (members, term) = (members.clone(), newest_term.clone());
                tokio::spawn(probe(members, i, term, elections.clone()))
            })
            .collect();
        let store = EtcdStore {
            shared: Arc::new(Shared {
                members,
                preferred: AtomicUsize::new(0),
                elections,
                probers,
            }),
        };
        // The clients connect lazily; one read proves an endpoint answers.
        store.current_revision().await?;
        Ok(store)
    }

    /// One client per member, for maintenance that must reach every member.
    fn members(&self) -> impl Iterator<Item = (&str, &Client)> {
        self.shared
            .members
            .iter()
            .map(|m| (m.endpoint.as_str(), &m.client))
    }

    /// A client of the preferred member, for what the trait does not cover (benchmarks).
    pub fn client(&self) -> Client {
        self.shared.members[self.pick()].client.clone()
    }

    /// The member for the next attempt: the preferred one while healthy, else the next
    /// healthy one (which becomes preferred), else the preferred one anyway.
    fn pick(&self) -> usize {
        let members = &self.shared.members;
        let preferred = self.shared.preferred.load(Ordering::Relaxed) % members.len();
        for step in 0..members.len() {
            let i = (preferred + step) % members.len();
            if *members[i].healthy.borrow() {
                if i != preferred {
                    self.shared.preferred.store(i, Ordering::Relaxed);
                }
                return i;
            }
        }
        preferred
    }

    /// Moves the preference away from a member whose attempt failed.
    fn pass_over(&self, member: usize) {
        let next = (member + 1) % self.shared.members.len();
        let _ = self.shared.preferred.compare_exchange(
            member,
            next,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Runs `op` against one member at a time until it succeeds, fails for good, or
    /// [`RETRY_FOR`] has passed; see the module docs for deadlines and abandonment.
    async fn call<T, F, Fut>(
        &self,
        kind: Attempt,
        mut op: F,
    ) -> Result<Answered<T>, etcd_client::Error>
    where
        F: FnMut(&Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let give_up = tokio::time::Instant::now() + RETRY_FOR;
        let mut limit = match kind {
            Attempt::List => FIRST_LIST_ATTEMPT,
            _ => FIRST_ATTEMPT,
        };
        let mut attempts = 0;
        loop {
            let member = self.pick();
            let m = &self.shared.members[member];
            let mut health = m.healthy.subscribe();
            let was_healthy = *health.borrow_and_update();
            let mut elections = self.shared.elections.subscribe();
            elections.borrow_and_update();
            attempts += 1;
            let outcome = tokio::select! {
                r = tokio::time::timeout(limit, op(&m.client)) => match r {
                    Ok(r) => r,
                    Err(_) => {
                        limit = (limit * 2).min(LAST_ATTEMPT);
                        Err(abandoned("the attempt's deadline passed"))
                    }
                },
                _ = turned_unhealthy(&mut health, was_healthy) => Err(abandoned("the member stopped answering")),
                _ = elections.changed() => Err(abandoned("a new etcd leader was elected")),
            };
            match outcome {
                Ok(value) => {
                    return Ok(Answered {
                        value,
                        member,
                        attempts,
                    })
                }
                Err(e) if worth_retrying(&e) && tokio::time::Instant::now() < give_up => {
                    tracing::debug!(member = %m.endpoint, error = %e, "etcd attempt failed; retrying");
                    self.pass_over(member);
                    if !is_abandoned(&e) {
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn kv(client: &Client) -> KvClient {
        client.kv_client().max_decoding_message_size(MAX_RESPONSE)
    }

    /// Runs one compare-and-swap transaction whose failure branch reads `key`. `value` is
    /// what the success branch writes (`None` for a delete); see the module docs for why a
    /// write sent more than once is still reported truthfully.
    async fn write_txn(
        &self,
        key: &str,
        compares: Vec<Compare>,
        op: TxnOp,
        value: Option<&[u8]>,
    ) -> Result<Written, StoreError> {
        let txn = Txn::new()
            .when(compares)
            .and_then(vec![op])
            .or_else(vec![TxnOp::get(key, None)]);
        let answered = self
            .call(Attempt::Write, |c| {
                let (mut kv, txn) = (Self::kv(c), txn.clone());
                async move { kv.txn(txn).await }
            })
            .await?;
        let response: TxnResponse = answered.value;
        let revision = header_revision(response.header())?;
        let mut responses = response.op_responses().into_iter();
        if response.succeeded() {
            let prev = match responses.next() {
                Some(TxnOpResponse::Delete(delete)) => {
                    delete.prev_kvs().first().map(convert_kv).transpose()?
                }
                _ => None,
            };
            return Ok(Written::Applied(revision, prev));
        }
        let current = match responses.next() {
            Some(TxnOpResponse::Get(get)) => get.kvs().first().map(convert_kv).transpose()?,
            _ => {
                return Err(StoreError::MalformedResponse {
                    reason: "a failed transaction did not return its read",
                })
            }
        };
        if answered.attempts > 1 {
            match (value, &current) {
                // An abandoned attempt was applied (or an identical write won the race):
                // the key holds exactly what this write wrote.
                (Some(value), Some(kv)) if kv.value == value => {
                    return Ok(Written::Applied(kv.mod_revision, None));
                }
                (None, None) => {
                    return Err(StoreError::Unavailable(abandoned(
                        "a delete was sent again after an attempt with an unknown outcome",
                    )))
                }
                _ => {}
            }
        }
        Ok(Written::Refused(current))
    }
}

/// Resolves once a member that was healthy when the attempt started turns unhealthy.
async fn turned_unhealthy(health: &mut watch::Receiver<bool>, was_healthy: bool) {
    if !was_healthy || health.wait_for(|h| !*h).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Asks one member for its status every [`PROBE_EVERY`], for as long as the store lives
/// (one task per member, so a member that does not answer never delays news of the others).
/// `newest_term` is shared by the members' probes: a higher raft term with a leader means
/// an election happened.
async fn probe(
    members: Arc<[Member]>,
    index: usize,
    newest_term: Arc<AtomicU64>,
    elections: watch::Sender<u64>,
) {
    let m = &members[index];
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut maintenance = m.client.maintenance_client();
        let term = match tokio::time::timeout(PROBE_TIMEOUT, maintenance.status()).await {
            Ok(Ok(status)) if status.leader() != 0 => Some(status.raft_term()),
            _ => None,
        };
        let healthy = term.is_some();
        if m.healthy.send_replace(healthy) != healthy {
            if healthy {
                tracing::info!(member = %m.endpoint, "etcd member is healthy again");
            } else {
                tracing::warn!(member = %m.endpoint, "etcd member stopped answering (or lost its leader)");
            }
        }
        if let Some(term) = term {
            let before = newest_term.fetch_max(term, Ordering::Relaxed);
            if before != 0 && term > before {
                tracing::info!(term, "etcd elected a new leader");
                elections.send_modify(|n| *n += 1);
            }
        }
    }
}

pub(super) fn connect_options(config: &EtcdConfig) -> Result<ConnectOptions, StoreError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.connect_timeout)
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .with_require_leader(true);
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

/// How long a request keeps being retried while etcd does not answer, and the pause
/// between attempts that failed (an abandoned attempt is sent again at once).
const RETRY_FOR: Duration = Duration::from_secs(20);
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What a request is, for its attempt deadline.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// A single key or a count.
    Read,
    /// A range that may be large.
    List,
    /// A compare-and-swap transaction.
    Write,
}

/// The error of an attempt given up by this client (the message says why).
fn abandoned(why: &str) -> etcd_client::Error {
    etcd_client::Error::GRpcStatus(tonic::Status::cancelled(format!("abandoned: {why}")))
}

fn is_abandoned(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(s)
        if s.code() == tonic::Code::Cancelled && s.message().starts_with("abandoned: "))
}

/// Whether another attempt may succeed: the member is unreachable, has no leader, timed
/// out, or the attempt was abandoned. Writes too: see the module docs.
fn worth_retrying(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        etcd_client::Error::TransportError(_) => true,
        _ => false,
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
        let response = self
            .call(Attempt::Read, |c| {
                let mut kv = Self::kv(c);
                async move { kv.get(key, None).await }
            })
            .await?
            .value;
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
        let response = self
            .call(Attempt::List, |c| {
                let (mut kv, start, get) = (Self::kv(c), start.clone(), get.clone());
                async move { kv.get(start, Some(get)).await }
            })
            .await
            .map_err(|e| revision_error(e, revision))?
            .value;
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
        let op = TxnOp::put(key, value.clone(), None);
        match self.write_txn(key, vec![compare], op, Some(&value)).await? {
            Written::Applied(revision, _) => Ok(revision),
            Written::Refused(_) => Err(StoreError::AlreadyExists {
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
        let op = TxnOp::put(key, value.clone(), None);
        match self.write_txn(key, compares, op, Some(&value)).await? {
            Written::Applied(revision, _) => Ok(revision),
            Written::Refused(current) => Err(mismatch(key, expected_mod_revision, current)),
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
        match self.write_txn(key, compares, op, None).await? {
            Written::Applied(revision, prev) => {
                let prev = prev.ok_or(StoreError::MalformedResponse {
                    reason: "a delete did not return the deleted key",
                })?;
                Ok((revision, prev))
            }
            Written::Refused(current) => {
                Err(mismatch(key, expected_mod_revision.unwrap_or(0), current))
            }
        }
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream, StoreError> {
        let mut options = WatchOptions::new()
            .with_range(prefix_end(prefix))
            .with_prev_key();
        if from_revision > 0 {
            options = options.with_start_revision(from_revision + 1);
        }
        let answered = self
            .call(Attempt::Read, |c| {
                let (mut w, options) = (
                    c.watch_client().max_decoding_message_size(MAX_RESPONSE),
                    options.clone(),
                );
                async move { w.watch(prefix, Some(options)).await }
            })
            .await?;
        let member = &self.shared.members[answered.member];
        let mut health = member.healthy.subscribe();
        let was_healthy = *health.borrow_and_update();
        let state = EtcdWatch {
            stream: answered.value,
            health,
            was_healthy,
            endpoint: member.endpoint.clone(),
            from_revision,
            pending: VecDeque::new(),
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(state, EtcdWatch::step)))
    }

    async fn current_revision(&self) -> Result<i64, StoreError> {
        let response = self
            .call(Attempt::Read, |c| {
                let mut kv = Self::kv(c);
                async move { kv.get("/", Some(GetOptions::new().with_count_only())).await }
            })
            .await?
            .value;
        header_revision(response.header())
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        self.call(Attempt::Write, |c| {
            let mut kv = Self::kv(c);
            async move { kv.compact(revision, None).await }
        })
        .await
        .map_err(|e| revision_error(e, revision))?;
        Ok(())
    }

    async fn defragment(&self, only_fragmented: bool) -> Result<(), StoreError> {
        for (ep, client) in self.members() {
            let mut maintenance = client.maintenance_client();
            if only_fragmented {
                let st = maintenance.status().await?;
                if st.raft_used_db_size() * 2 > st.db_size() {
                    continue;
                }
            }
            let t = std::time::Instant::now();
            maintenance.defragment().await?;
            tracing::info!(member = %ep, ms = t.elapsed().as_millis() as u64, "etcd defragmented");
        }
        Ok(())
    }

    async fn disarm_nospace(&self) -> Result<bool, StoreError> {
        let mut m = self.client().maintenance_client();
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
        for (_, client) in self.members() {
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
    /// The health of the member serving the watch.
    health: watch::Receiver<bool>,
    /// Whether it was healthy when the watch started (an unhealthy one was the only choice,
    /// and the watch lasts as long as its stream does).
    was_healthy: bool,
    endpoint: String,
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
            let message = tokio::select! {
                m = self.stream.message() => m,
                _ = turned_unhealthy(&mut self.health, self.was_healthy) => {
                    self.done = true;
                    let reason = format!("etcd member {} stopped answering", self.endpoint);
                    return Some((Err(StoreError::WatchCanceled { reason }), self));
                }
            };
            let response = match message {
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

    /// The member whose status names itself as leader.
    async fn leader_of(store: &EtcdStore) -> usize {
        for (i, (_, client)) in store.members().enumerate() {
            let status = client.maintenance_client().status().await.expect("status");
            let me = status.header().expect("header").member_id();
            if status.leader() == me {
                return i;
            }
        }
        panic!("no member is the leader");
    }

    /// Losing the leader (its process frozen, as a machine that lost power: no answer, no
    /// reset) under a steady writer: no write fails, every acknowledged write is there
    /// afterwards, a watcher that watches again from its last revision whenever its watch
    /// ends sees every write, and the gap is printed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_go_on_without_an_error_when_the_etcd_leader_freezes() {
        use futures::StreamExt;
        let timing = ["--heartbeat-interval=100", "--election-timeout=1000"];
        let members = LocalEtcd::start_cluster(3, &timing).await.expect("cluster");
        let store = EtcdStore::connect(&LocalEtcd::cluster_config(&members))
            .await
            .expect("connect");
        let start = store.current_revision().await.expect("revision");
        let (seen_tx, seen) = tokio::sync::watch::channel(start);
        let watcher = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut from = start;
                let mut ends = 0;
                loop {
                    let Ok(mut w) = store.watch("/registry/configmaps/", from).await else {
                        continue;
                    };
                    while let Some(Ok(ev)) = w.next().await {
                        assert_eq!(ev.kv.mod_revision, from + 1, "no event is skipped");
                        from = ev.kv.mod_revision;
                        seen_tx.send_replace(from);
                    }
                    ends += 1;
                    assert!(ends < 100, "the watch keeps ending");
                }
            })
        };
        // Freeze the member the client prefers when it leads (the client's own member
        // dies), else the leader (the client's member forwards to a dead leader).
        let leader = leader_of(&store).await;
        let preferred = store.pick();
        let pid = nix::unistd::Pid::from_raw(members[leader].pid() as i32);

        let (frozen_tx, frozen) = tokio::sync::watch::channel(None::<std::time::Instant>);
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut acks = Vec::new();
                for i in 0.. {
                    let key = format!("/registry/configmaps/default/w{i}");
                    let value = format!("{{\"n\":{i}}}").into_bytes();
                    match store.create(&key, value).await {
                        Ok(rev) => acks.push((i, rev, std::time::Instant::now())),
                        Err(e) => return Err(format!("write {i} failed: {e:?}")),
                    }
                    let after = match *frozen.borrow() {
                        Some(t) => acks.iter().filter(|a| a.2 > t).count(),
                        None => 0,
                    };
                    if after >= 200 {
                        return Ok(acks);
                    }
                }
                unreachable!()
            })
        };
        tokio::time::sleep(Duration::from_millis(700)).await;
        let frozen_at = std::time::Instant::now();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
        frozen_tx.send_replace(Some(frozen_at));
        let acks = writer
            .await
            .expect("writer task")
            .expect("every write acknowledged");
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");

        let before = acks.iter().filter(|a| a.2 < frozen_at).count();
        assert!(
            before > 0 && before < acks.len(),
            "the freeze fell inside the writes"
        );
        // The longest wait for an acknowledgement from just before the freeze on.
        let gap = acks[before - 1..]
            .windows(2)
            .map(|w| w[1].2 - w[0].2)
            .max()
            .expect("acks after the freeze");
        println!(
            "BENCH etcd_leader_freeze_write_gap_ms={} leader_was_preferred={}",
            gap.as_millis(),
            leader == preferred
        );
        for (i, rev, _) in &acks {
            let kv = store
                .get(&format!("/registry/configmaps/default/w{i}"))
                .await
                .expect("read")
                .expect("an acknowledged write is there");
            assert_eq!(kv.mod_revision, *rev);
        }
        let last = acks.last().expect("acks").1;
        let mut seen = seen;
        tokio::time::timeout(Duration::from_secs(30), seen.wait_for(|r| *r >= last))
            .await
            .expect("the watcher follows to the last write")
            .expect("watcher alive");
        watcher.abort();
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
