//! The delivery worker: one writer task that takes the engine's outbox rows in, hands deliveries
//! to their connectors within each connector's limits, and records every attempt and its
//! consequence (delivered, retry at a time, dead) in the delivery store.
//!
//! Isolation: every connector has its own in-flight count (`concurrency`), rate limiter, circuit
//! breaker and index of due deliveries, and attempts run in their own tasks with a timeout. A
//! connector whose receiver hangs fills its own slots and no one else's; the writer never waits
//! for an attempt.
//!
//! At-least-once: a delivery's row is written in the same commit as the outbox cursor that took
//! it in; an attempt whose outcome was not committed before a crash is made again after it (the
//! receiver drops the duplicate by the delivery id). An attempt is never recorded before it
//! happened.
//!
//! Speed: an attempt that ends starts the next ready one at once (`ready` queue per connector),
//! and commits run in the background while the next batch grows. Reads of the store skip
//! deliveries whose newer state is not committed yet (`writer.rs`: `committing_ids`, `due_gen`).

mod decide;
mod intake;
mod writer;

use decide::Next;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::breaker::{Breaker, Limiter};
use crate::store::{Attempt, Batch, ConnState, DeliveryStore, Filter, Record, SEP, Status};
use crate::{Built, Connector, ConnectorDef, Error, Result, Verdict, clip};

/// What the worker needs from the rest of Storeline (the server provides it).
pub trait Host: Send + Sync + 'static {
    /// Outbox rows `(key, entry JSON)` of `partition` whose time is at least `from_clock` (after
    /// the key `after` when given), oldest first, at most `limit`.
    fn outbox(
        &self,
        partition: u32,
        from_clock: i64,
        after: Option<String>,
        limit: usize,
    ) -> BoxFuture<'_, std::result::Result<Vec<(String, Bytes)>, String>>;
    /// The customer's view, for connectors that render templates.
    fn profile(&self, customer: String) -> BoxFuture<'_, Option<Value>>;
    /// Appends an event (`connector.disabled`, `connector.enabled`).
    fn emit(&self, ty: &'static str, data: Value)
    -> BoxFuture<'_, std::result::Result<(), String>>;
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub partitions: u32,
    /// Outbox rows taken in per partition per writer iteration.
    pub intake_batch: usize,
    /// The longest the writer sleeps without looking for due deliveries.
    pub poll: Duration,
    /// How long a shutdown waits for attempts in flight.
    pub drain: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            partitions: 8,
            intake_batch: 1024,
            poll: Duration::from_secs(1),
            drain: Duration::from_secs(5),
        }
    }
}

/// A connector as `GET /v1/connectors` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: Option<&'static str>,
    pub configured: bool,
    pub error: Option<String>,
    pub state: &'static str,
    pub circuit: &'static str,
    pub in_flight: usize,
    pub concurrency: Option<usize>,
    pub rate_limit: Option<f64>,
    pub fifo: bool,
    #[serde(flatten)]
    pub counts: ConnState,
}

/// Which dead deliveries to send again.
#[derive(Debug, Clone)]
pub enum Redrive {
    Ids(Vec<String>),
    Filter(Filter),
}

enum Cmd {
    Configure(Vec<ConnectorDef>, oneshot::Sender<Vec<(String, String)>>),
    Redrive(Redrive, oneshot::Sender<Result<usize>>),
    Enable(String, oneshot::Sender<Result<bool>>),
}

/// The running worker.
pub struct Worker {
    cmd: mpsc::Sender<Cmd>,
    pub store: Arc<DeliveryStore>,
    status: Arc<RwLock<Vec<ConnStatus>>>,
    join: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Worker {
    /// Loads the writer's state and starts it. `applied` are the engine's committed offsets per
    /// partition: a change means new outbox rows may be there.
    pub async fn start(
        store: Arc<DeliveryStore>,
        host: Arc<dyn Host>,
        applied: Vec<watch::Receiver<u64>>,
        defs: Vec<ConnectorDef>,
        config: WorkerConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Worker> {
        let n = config.partitions as usize;
        let notify = Arc::new(Notify::new());
        let dirty: Arc<Vec<AtomicBool>> = Arc::new((0..n).map(|_| AtomicBool::new(true)).collect());
        for (p, mut rx) in applied.into_iter().enumerate().take(n) {
            let (notify, dirty) = (Arc::clone(&notify), Arc::clone(&dirty));
            tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    dirty[p].store(true, Ordering::Release);
                    notify.notify_one();
                }
            });
        }
        let saved = store.cursors().await?;
        let mut fifo: HashMap<(String, String), VecDeque<String>> = HashMap::new();
        for (c, k, id) in store.fifo_rows().await? {
            fifo.entry((c, k)).or_default().push_back(id);
        }
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        let status = Arc::new(RwLock::new(Vec::new()));
        let mut w = Writer {
            position: store.position().await?,
            states: store.conns().await?,
            store: Arc::clone(&store),
            host,
            conns: BTreeMap::new(),
            dirty_states: HashSet::new(),
            inflight: HashMap::new(),
            cursors: (0..n as u32)
                .map(|p| saved.get(&p).copied().unwrap_or(0))
                .collect(),
            seen: vec![HashSet::new(); n],
            resume: vec![None; n],
            batch: Batch::default(),
            committing: None,
            committing_ids: HashSet::new(),
            results_tx,
            fifo,
            dirty,
            notify,
            status: Arc::clone(&status),
            config,
        };
        let errors = w.configure(defs);
        for (name, e) in errors {
            tracing::error!(
                connector = name,
                error = e,
                "connector cannot be built; its deliveries wait"
            );
        }
        w.repair_fifo().await;
        w.publish();
        let (cmd, cmd_rx) = mpsc::channel(64);
        let join = tokio::spawn(w.run(cmd_rx, results_rx, shutdown));
        Ok(Worker {
            cmd,
            store,
            status,
            join: Mutex::new(Some(join)),
        })
    }

    /// Replaces the connector definitions; returns the connectors that could not be built.
    pub async fn configure(&self, defs: Vec<ConnectorDef>) -> Result<Vec<(String, String)>> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Configure(defs, tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Sends dead deliveries again, on a fresh round of their connector's schedule. Returns how
    /// many were redriven (deliveries that are not dead are left alone).
    pub async fn redrive(&self, what: Redrive) -> Result<usize> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Redrive(what, tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Re-enables a connector that was disabled for failing; false if it was not disabled.
    pub async fn enable(&self, name: &str) -> Result<bool> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Enable(name.to_owned(), tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    pub fn status(&self) -> Vec<ConnStatus> {
        self.status.read().clone()
    }

    /// Waits for the writer to stop (after the shutdown signal).
    pub async fn join(&self) {
        let handle = self.join.lock().take();
        if let Some(h) = handle {
            let _ = h.await;
        }
    }
}

struct Conn {
    def: ConnectorDef,
    built: Arc<Built>,
    in_flight: usize,
    breaker: Breaker,
    limiter: Limiter,
    /// When due deliveries may be waiting in the store (none known: `None`).
    wake_at: Option<i64>,
    /// Taken-in deliveries waiting for a free slot, oldest first: an attempt that ends starts
    /// the next at once, without a round trip through the store.
    ready: VecDeque<Record>,
    metrics: ConnMetrics,
    /// Counts changes to this connector's due rows; the store shows them once `committed_gen`
    /// reached the count (until then a scan of the store may miss them).
    due_gen: u64,
    committing_gen: u64,
    committed_gen: u64,
}

/// Metric handles, resolved once per connector rather than per attempt.
struct ConnMetrics {
    delivered: metrics::Counter,
    retry: metrics::Counter,
    reject: metrics::Counter,
    latency: metrics::Histogram,
}

impl Conn {
    /// An attempt of this connector ended with `verdict`, decided as `next`: its slot is free,
    /// a retry is remembered as due work, and the breaker and the latency metric learn of it.
    fn attempt_ended(&mut self, verdict: &Verdict, next: &Next, created_at: i64, now: i64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Next::Retry { at } = *next {
            self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
            self.due_gen += 1;
        }
        match verdict {
            Verdict::Delivered { .. } => {
                self.metrics
                    .latency
                    .record((now - created_at).max(0) as f64 / 1000.0);
                self.breaker.success();
            }
            Verdict::Reject { .. } => self.breaker.success(),
            Verdict::Retry { detail, .. } => {
                if self.breaker.failure(now) {
                    tracing::warn!(
                        connector = self.def.name,
                        cooldown_s = self.def.circuit_cooldown.as_secs(),
                        last = clip(detail, 200),
                        "circuit opened: attempts paused"
                    );
                }
            }
        }
    }
}

impl ConnMetrics {
    /// Counts an attempt by its outcome.
    fn count(&self, verdict: &Verdict) {
        match verdict {
            Verdict::Delivered { .. } => self.delivered.increment(1),
            Verdict::Retry { .. } => self.retry.increment(1),
            Verdict::Reject { .. } => self.reject.increment(1),
        }
    }
}

impl ConnMetrics {
    fn new(name: &str) -> ConnMetrics {
        let c = |o: &'static str| metrics::counter!("storeline_delivery_attempts_total", "connector" => name.to_owned(), "outcome" => o);
        ConnMetrics {
            delivered: c("delivered"),
            retry: c("retry"),
            reject: c("reject"),
            latency: metrics::histogram!("storeline_delivery_latency_seconds", "connector" => name.to_owned()),
        }
    }
}

impl Conn {
    /// Most deliveries held in memory per connector beyond those in flight.
    fn ready_max(&self) -> usize {
        (self.def.concurrency * 8).max(4096)
    }
}

/// What woke the writer.
enum Woke {
    Cmd(Cmd),
    Outcome(Outcome),
    Committed(std::result::Result<(Result<()>, Batch), tokio::task::JoinError>),
    Tick,
}

struct Outcome {
    id: String,
    verdict: Verdict,
    at: i64,
    ms: u64,
}

struct Writer {
    store: Arc<DeliveryStore>,
    host: Arc<dyn Host>,
    position: u64,
    conns: BTreeMap<String, Conn>,
    states: BTreeMap<String, ConnState>,
    dirty_states: HashSet<String>,
    inflight: HashMap<String, Record>,
    cursors: Vec<i64>,
    /// Ids already taken in at each partition's cursor time.
    seen: Vec<HashSet<String>>,
    /// Where a full page of a partition's outbox ended: the next pass continues there (many
    /// rows can share one millisecond, so the time alone would not move on).
    resume: Vec<Option<String>>,
    batch: Batch,
    /// The commit under way, if any: outcomes keep being recorded into the next batch while
    /// it runs, so a slow commit never holds attempts back.
    committing: Option<tokio::task::JoinHandle<(Result<()>, Batch)>>,
    /// Deliveries changed by the commit under way (the store does not show it yet).
    committing_ids: HashSet<String>,
    results_tx: mpsc::UnboundedSender<Outcome>,
    fifo: HashMap<(String, String), VecDeque<String>>,
    dirty: Arc<Vec<AtomicBool>>,
    notify: Arc<Notify>,
    status: Arc<RwLock<Vec<ConnStatus>>>,
    config: WorkerConfig,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
