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

use crate::breaker::{Breaker, Limiter, retry_delay};
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
}

/// Metric handles, resolved once per connector rather than per attempt.
struct ConnMetrics {
    delivered: metrics::Counter,
    retry: metrics::Counter,
    reject: metrics::Counter,
    latency: metrics::Histogram,
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
        (self.def.concurrency * 4).max(1024)
    }
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

impl Writer {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Cmd>,
        mut results: mpsc::UnboundedReceiver<Outcome>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let wake = self.next_wake();
            tokio::select! {
                r = shutdown.changed() => if r.is_err() { break } else { continue },
                Some(cmd) = cmds.recv() => self.command(cmd).await,
                Some(o) = results.recv() => self.outcome(o).await,
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep(wake) => {}
            }
            while let Ok(o) = results.try_recv() {
                self.outcome(o).await;
            }
            self.intake().await;
            self.flush().await;
            self.dispatch_due().await;
            self.publish();
        }
        // Let attempts in flight finish (briefly) so their outcomes are recorded; the rest are
        // made again after the restart.
        let deadline = tokio::time::Instant::now() + self.config.drain;
        while !self.inflight.is_empty() {
            match tokio::time::timeout_at(deadline, results.recv()).await {
                Ok(Some(o)) => self.outcome(o).await,
                _ => break,
            }
        }
        self.flush().await;
        tracing::info!(unfinished = self.inflight.len(), "delivery worker stopped");
    }

    fn next_wake(&mut self) -> Duration {
        let now = now_ms();
        let mut at = now + self.config.poll.as_millis() as i64;
        for c in self.conns.values_mut() {
            let w = match (c.wake_at, c.ready.is_empty()) {
                (_, false) => now,
                (Some(w), true) => w,
                (None, true) => continue,
            };
            if self
                .states
                .get(&c.def.name)
                .is_some_and(|s| s.disabled_at.is_some())
            {
                continue;
            }
            if c.in_flight >= c.def.concurrency {
                continue;
            }
            let w = match c.breaker.reopens_at() {
                Some(r) => w.max(r),
                None if c.breaker.allowance(now) == 0 => continue,
                None => w,
            };
            at = at.min(w);
        }
        Duration::from_millis((at - now).max(0) as u64)
    }

    fn configure(&mut self, defs: Vec<ConnectorDef>) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        let mut next = BTreeMap::new();
        for def in defs {
            let mut old = self.conns.remove(&def.name);
            if let Some(o) = old.take_if(|o| o.def == def) {
                next.insert(def.name.clone(), o);
                continue;
            }
            let in_flight = old.as_ref().map_or(0, |o| o.in_flight);
            let ready = old.map(|o| o.ready).unwrap_or_default();
            match Built::build(&def) {
                Ok(built) => {
                    self.states.entry(def.name.clone()).or_default();
                    next.insert(
                        def.name.clone(),
                        Conn {
                            built: Arc::new(built),
                            // Attempts of the replaced connector still count against the limit.
                            in_flight,
                            breaker: Breaker::new(def.circuit_failures, def.circuit_cooldown),
                            limiter: Limiter::new(def.rate_limit),
                            wake_at: Some(now_ms()),
                            ready,
                            metrics: ConnMetrics::new(&def.name),
                            def,
                        },
                    );
                }
                Err(e) => errors.push((def.name.clone(), e.to_string())),
            }
        }
        // In-flight attempts of removed connectors finish; their outcomes are recorded, and
        // their pending deliveries wait until a connector of that name is configured again.
        self.conns = next;
        errors
    }

    async fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Configure(defs, reply) => {
                let errors = self.configure(defs);
                let _ = reply.send(errors);
            }
            Cmd::Redrive(what, reply) => {
                let r = self.redrive(what).await;
                if r.is_ok() {
                    self.flush().await;
                }
                let _ = reply.send(r);
            }
            Cmd::Enable(name, reply) => {
                let st = self.states.entry(name.clone()).or_default();
                let was = st.disabled_at.take().is_some();
                st.failing_since = None;
                self.dirty_states.insert(name.clone());
                if let Some(c) = self.conns.get_mut(&name) {
                    c.wake_at = Some(now_ms());
                    c.breaker.success();
                }
                if was {
                    tracing::info!(connector = name, "connector enabled again");
                    if let Err(e) = self
                        .host
                        .emit("connector.enabled", json!({ "connector": name }))
                        .await
                    {
                        tracing::warn!(
                            connector = name,
                            error = e,
                            "cannot append connector.enabled"
                        );
                    }
                }
                self.flush().await;
                let _ = reply.send(Ok(was));
            }
        }
    }

    /// Takes new outbox rows in (at most `intake_batch` per partition per iteration).
    async fn intake(&mut self) {
        let now = now_ms();
        for p in 0..self.cursors.len() {
            if !self.dirty[p].swap(false, Ordering::AcqRel) {
                continue;
            }
            let start = self.cursors[p];
            let rows = match self
                .host
                .outbox(
                    p as u32,
                    start,
                    self.resume[p].take(),
                    self.config.intake_batch,
                )
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(
                        partition = p,
                        error = e,
                        "cannot read the outbox; trying again"
                    );
                    self.dirty[p].store(true, Ordering::Release);
                    continue;
                }
            };
            if rows.len() >= self.config.intake_batch {
                self.resume[p] = rows.last().map(|(k, _)| k.clone());
                self.dirty[p].store(true, Ordering::Release);
                self.notify.notify_one();
            }
            let mut fresh = Vec::new();
            for (key, value) in &rows {
                let clock: i64 = key
                    .split(SEP)
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                let Ok(entry) = serde_json::from_slice::<Value>(value) else {
                    tracing::error!(partition = p, key, "unreadable outbox entry skipped");
                    continue;
                };
                let Some(rec) = Record::from_outbox(p as u32, key, &entry, now) else {
                    continue;
                };
                if clock > self.cursors[p] {
                    self.cursors[p] = clock;
                    self.seen[p].clear();
                }
                if self.seen[p].insert(rec.id.clone()) {
                    fresh.push((clock, rec));
                }
            }
            // Rows at the starting time may have been taken in before a restart, or in an
            // earlier pass: the store knows.
            let at_start: Vec<String> = fresh
                .iter()
                .filter(|(c, _)| *c == start)
                .map(|(_, r)| r.id.clone())
                .collect();
            let known: HashSet<String> = if at_start.is_empty() {
                HashSet::new()
            } else {
                match self.store.get_many(&at_start).await {
                    Ok(found) => found.into_iter().flatten().map(|r| r.id).collect(),
                    Err(e) => {
                        tracing::warn!(partition = p, error = %e, "cannot check taken deliveries; trying again");
                        self.dirty[p].store(true, Ordering::Release);
                        self.cursors[p] = start;
                        continue;
                    }
                }
            };
            for (_, rec) in fresh {
                if !known.contains(&rec.id) && !self.inflight.contains_key(&rec.id) {
                    self.take_in(rec);
                }
            }
            if self.cursors[p] != start {
                self.batch.cursor(p as u32, self.cursors[p]);
            }
        }
    }

    fn take_in(&mut self, mut rec: Record) {
        let fifo = self.conns.get(&rec.connector).is_some_and(|c| c.def.fifo);
        if fifo {
            let q = self
                .fifo
                .entry((rec.connector.clone(), rec.key.clone()))
                .or_default();
            if !q.is_empty() {
                rec.next_at = None;
            }
            q.push_back(rec.id.clone());
            self.batch.fifo(&rec, true);
        }
        let st = self.states.entry(rec.connector.clone()).or_default();
        st.pending += 1;
        self.dirty_states.insert(rec.connector.clone());
        if let Err(e) = self.batch.record(None, &rec) {
            tracing::error!(id = rec.id, error = %e, "cannot encode a delivery");
            return;
        }
        if rec.next_at.is_none() {
            return;
        }
        let name = rec.connector.clone();
        // Nothing older waits in the store: straight out, or into the ready queue.
        let Some(c) = self.conns.get(&name) else {
            return;
        };
        if c.wake_at.is_none() && c.ready.len() < c.ready_max() {
            if c.ready.is_empty() && self.can_start(&name) {
                self.dispatch(rec);
            } else if let Some(c) = self.conns.get_mut(&name) {
                c.ready.push_back(rec);
            }
        } else if let Some(c) = self.conns.get_mut(&name) {
            // It waits in the store (its due row); `dispatch_due` finds it in order.
            let now = now_ms();
            c.wake_at = Some(c.wake_at.map_or(now, |w| w.min(now)));
        }
    }

    /// Starts ready deliveries of `name` while its limits allow.
    fn pump(&mut self, name: &str) {
        while self.can_start(name) {
            let Some(rec) = self.conns.get_mut(name).and_then(|c| c.ready.pop_front()) else {
                return;
            };
            self.dispatch(rec);
        }
    }

    fn can_start(&mut self, name: &str) -> bool {
        let disabled = self
            .states
            .get(name)
            .is_some_and(|s| s.disabled_at.is_some());
        let Some(c) = self.conns.get_mut(name) else {
            return false;
        };
        !disabled && c.in_flight < c.def.concurrency && c.breaker.allowance(now_ms()) > 0
    }

    fn dispatch(&mut self, rec: Record) {
        let Some(c) = self.conns.get_mut(&rec.connector) else {
            return;
        };
        c.in_flight += 1;
        c.breaker.started();
        let slot = c.limiter.slot();
        let built = Arc::clone(&c.built);
        let needs_profile = c.def.kind.needs_profile();
        // Connectors bound their own attempts (an SMTP primary and its failover: twice the
        // timeout); this only catches one that does not.
        let limit = c.def.timeout * 2 + Duration::from_secs(1);
        let host = Arc::clone(&self.host);
        let tx = self.results_tx.clone();
        let mut d = rec.delivery(None);
        self.inflight.insert(rec.id.clone(), rec);
        tokio::spawn(async move {
            tokio::time::sleep_until(slot.into()).await;
            if needs_profile && let Some(c) = d.customer.clone() {
                d.profile = host.profile(c).await;
            }
            let at = now_ms();
            let t0 = Instant::now();
            let verdict = match tokio::time::timeout(limit, built.attempt(&d)).await {
                Ok(v) => v,
                Err(_) => Verdict::retry(format!("no answer within {}s", limit.as_secs())),
            };
            let _ = tx.send(Outcome {
                id: d.id,
                verdict,
                at,
                ms: t0.elapsed().as_millis() as u64,
            });
        });
    }

    /// Attempts deliveries that are due, per connector, as far as each one's limits allow.
    async fn dispatch_due(&mut self) {
        let all: Vec<String> = self.conns.keys().cloned().collect();
        for name in &all {
            self.pump(name);
        }
        let now = now_ms();
        let names: Vec<String> = self
            .conns
            .iter()
            .filter(|(_, c)| c.ready.is_empty() && c.wake_at.is_some_and(|w| w <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            if !self.can_start(&name) {
                continue;
            }
            let Some(c) = self.conns.get(&name) else {
                continue;
            };
            let room = c
                .def
                .concurrency
                .saturating_sub(c.in_flight)
                .min(c.breaker_allowance_hint());
            let limit = room + c.in_flight;
            let (ids, next) = match self.store.due(&name, now, limit).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(connector = name, error = %e, "cannot read due deliveries");
                    continue;
                }
            };
            let full = ids.len() >= limit;
            let todo: Vec<String> = ids
                .into_iter()
                .filter(|id| !self.inflight.contains_key(id))
                .take(room)
                .collect();
            let recs = match self.store.get_many(&todo).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(connector = name, error = %e, "cannot read due deliveries");
                    continue;
                }
            };
            if let Some(c) = self.conns.get_mut(&name) {
                c.wake_at = if full { Some(now) } else { next };
            }
            for rec in recs.into_iter().flatten() {
                if rec.status != Status::Pending || !self.can_start(&name) {
                    continue;
                }
                self.dispatch(rec);
            }
        }
    }

    async fn outcome(&mut self, o: Outcome) {
        let Some(mut rec) = self.inflight.remove(&o.id) else {
            return;
        };
        let now = now_ms();
        let name = rec.connector.clone();
        let prev = rec.prev();
        rec.attempts += 1;
        rec.updated_at = now;
        let mut attempt = Attempt {
            n: rec.attempts,
            at: o.at,
            ms: o.ms,
            outcome: o.verdict.outcome().to_owned(),
            detail: clip(o.verdict.detail(), 500),
            retry_after_ms: None,
            next_at: None,
        };
        let round = (rec.attempts - rec.round_start) as usize;
        // The next delay (if the schedule has one left) and when failing disables.
        let (delay, disable_after) = match (self.conns.get(&name), &o.verdict) {
            (Some(c), v) => {
                match v {
                    Verdict::Delivered { .. } => c.metrics.delivered.increment(1),
                    Verdict::Retry { .. } => c.metrics.retry.increment(1),
                    Verdict::Reject { .. } => c.metrics.reject.increment(1),
                }
                let after = match v {
                    Verdict::Retry { after, .. } => *after,
                    _ => None,
                };
                (
                    (round < c.def.retry_schedule.len())
                        .then(|| retry_delay(&c.def.retry_schedule, round, c.def.jitter, after)),
                    c.def.disable_after,
                )
            }
            (None, v) => {
                metrics::counter!("storeline_delivery_attempts_total", "connector" => name.clone(), "outcome" => v.outcome()).increment(1);
                let s = crate::config::DEFAULT_SCHEDULE;
                (
                    (round < s.len()).then(|| retry_delay(&s, round, 0.2, None)),
                    None,
                )
            }
        };
        let st = self.states.entry(name.clone()).or_default();
        self.dirty_states.insert(name.clone());
        let mut disabled_now = false;
        match o.verdict {
            Verdict::Delivered { .. } => {
                rec.status = Status::Delivered;
                rec.next_at = None;
                rec.delivered_at = Some(now);
                rec.last_error = None;
                st.pending -= 1;
                st.delivered += 1;
                st.failing_since = None;
                st.last_success = Some(now);
                if let Some(c) = self.conns.get_mut(&name) {
                    c.metrics
                        .latency
                        .record((now - rec.created_at).max(0) as f64 / 1000.0);
                    c.in_flight = c.in_flight.saturating_sub(1);
                    c.breaker.success();
                }
            }
            Verdict::Reject { detail } => {
                rec.status = Status::Dead;
                rec.next_at = None;
                rec.last_error = Some(clip(&detail, 500));
                st.pending -= 1;
                st.dead += 1;
                if let Some(c) = self.conns.get_mut(&name) {
                    c.in_flight = c.in_flight.saturating_sub(1);
                    c.breaker.success();
                }
            }
            Verdict::Retry { detail, after } => {
                attempt.retry_after_ms = after.map(|a| a.as_millis() as u64);
                let since = *st.failing_since.get_or_insert(now);
                if let Some(delay) = delay {
                    let at = now + delay.as_millis() as i64;
                    rec.next_at = Some(at);
                    rec.last_error = Some(clip(&detail, 500));
                    if let Some(c) = self.conns.get_mut(&name) {
                        c.wake_at = Some(c.wake_at.map_or(at, |w| w.min(at)));
                    }
                } else {
                    rec.status = Status::Dead;
                    rec.next_at = None;
                    rec.last_error = Some(format!(
                        "gave up after {} attempts; last: {}",
                        round,
                        clip(&detail, 400)
                    ));
                    st.pending -= 1;
                    st.dead += 1;
                }
                if let Some(c) = self.conns.get_mut(&name) {
                    c.in_flight = c.in_flight.saturating_sub(1);
                    if c.breaker.failure(now) {
                        tracing::warn!(
                            connector = name,
                            cooldown_s = c.def.circuit_cooldown.as_secs(),
                            last = clip(&detail, 200),
                            "circuit opened: attempts paused"
                        );
                    }
                }
                if let Some(limit) = disable_after
                    && st.disabled_at.is_none()
                    && now - since >= limit.as_millis() as i64
                {
                    st.disabled_at = Some(now);
                    disabled_now = true;
                }
            }
        }
        attempt.next_at = rec.next_at;
        self.batch.attempt(&rec.id, &attempt);
        if let Err(e) = self.batch.record(Some(&prev), &rec) {
            tracing::error!(id = rec.id, error = %e, "cannot encode a delivery");
        }
        if rec.status != Status::Pending {
            self.release_fifo(&rec).await;
        }
        // A slot is free: the next ready delivery goes now.
        self.pump(&name);
        if let Some(c) = self.conns.get_mut(&name)
            && c.in_flight < c.def.concurrency
            && c.wake_at.is_some()
        {
            // Room again: look for due work in this iteration.
            c.wake_at = c.wake_at.map(|w| w.min(now));
        }
        if disabled_now {
            let since = self.states.get(&name).and_then(|s| s.failing_since);
            tracing::error!(
                connector = name,
                "connector disabled: failing without a success for too long; POST /v1/connectors/{name}/enable after fixing it"
            );
            if let Err(e) = self
                .host
                .emit(
                    "connector.disabled",
                    json!({ "connector": name, "failing_since": since, "last_error": rec.last_error }),
                )
                .await
            {
                tracing::warn!(connector = name, error = e, "cannot append connector.disabled");
            }
        }
    }

    /// A FIFO delivery finished: the next one of its key may go.
    async fn release_fifo(&mut self, rec: &Record) {
        let k = (rec.connector.clone(), rec.key.clone());
        let Some(q) = self.fifo.get_mut(&k) else {
            return;
        };
        q.retain(|id| *id != rec.id);
        self.batch.fifo(rec, false);
        let next = q.front().cloned();
        if q.is_empty() {
            self.fifo.remove(&k);
        }
        let Some(next) = next else { return };
        match self.store.get(&next).await {
            Ok(Some(mut new)) if new.status == Status::Pending && new.next_at.is_none() => {
                let prev = new.prev();
                new.next_at = Some(now_ms());
                let _ = self.batch.record(Some(&prev), &new);
                if let Some(c) = self.conns.get_mut(&new.connector) {
                    c.wake_at = Some(now_ms());
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(id = next, error = %e, "cannot release the next FIFO delivery")
            }
        }
    }

    async fn redrive(&mut self, what: Redrive) -> Result<usize> {
        // Deliveries of this batch not yet committed are read back correctly only after a flush.
        self.flush().await;
        let mut recs = Vec::new();
        match what {
            Redrive::Ids(ids) => {
                recs.extend(self.store.get_many(&ids).await?.into_iter().flatten())
            }
            Redrive::Filter(mut f) => {
                f.status = Some(Status::Dead);
                let mut after: Option<String> = None;
                loop {
                    let (page, more) = self.store.list(&f, after.as_deref(), 1000).await?;
                    recs.extend(page);
                    match more {
                        Some(m) if recs.len() < 1_000_000 => after = Some(m),
                        _ => break,
                    }
                }
            }
        }
        let now = now_ms();
        let mut n = 0;
        for mut rec in recs.into_iter().filter(|r| r.status == Status::Dead) {
            let prev = rec.prev();
            rec.status = Status::Pending;
            rec.round_start = rec.attempts;
            rec.next_at = Some(now);
            rec.redriven += 1;
            rec.updated_at = now;
            if self.conns.get(&rec.connector).is_some_and(|c| c.def.fifo) {
                // At the end of its key's queue, also after a restart reloads the queue.
                rec.seq = format!(
                    "{:04}{SEP}{now:013}{SEP}redrive{}",
                    rec.partition, rec.redriven
                );
                let q = self
                    .fifo
                    .entry((rec.connector.clone(), rec.key.clone()))
                    .or_default();
                if !q.is_empty() {
                    rec.next_at = None;
                }
                q.push_back(rec.id.clone());
                self.batch.fifo(&rec, true);
            }
            self.batch.record(Some(&prev), &rec)?;
            let st = self.states.entry(rec.connector.clone()).or_default();
            st.dead -= 1;
            st.pending += 1;
            self.dirty_states.insert(rec.connector.clone());
            if let Some(c) = self.conns.get_mut(&rec.connector) {
                c.wake_at = Some(now);
            }
            n += 1;
        }
        tracing::info!(redriven = n, "dead deliveries redriven");
        Ok(n)
    }

    /// Commits what this iteration changed. A failed commit keeps the batch for the next try.
    async fn flush(&mut self) {
        for name in std::mem::take(&mut self.dirty_states) {
            if let Some(s) = self.states.get(&name) {
                self.batch.conn(&name, s);
            }
        }
        if self.batch.is_empty() {
            return;
        }
        match self.store.commit(self.position, &self.batch).await {
            Ok(()) => {
                self.position += 1;
                self.batch = Batch::default();
            }
            Err(e) => {
                tracing::error!(error = %e, rows = self.batch.len(), "cannot commit deliveries; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                // A commit that succeeded but whose answer was lost moved the position: rewriting
                // the same rows at the new position is harmless.
                if let Ok(p) = self.store.position().await {
                    self.position = p;
                }
            }
        }
    }

    fn publish(&mut self) {
        let now = now_ms();
        let mut out = Vec::new();
        for (name, st) in &self.states {
            let c = self.conns.get_mut(name);
            let disabled = st.disabled_at.is_some();
            let s = match c {
                Some(c) => {
                    c.breaker.allowance(now);
                    metrics::gauge!("storeline_delivery_circuit_state", "connector" => name.clone()).set(c.breaker.circuit.gauge());
                    metrics::gauge!("storeline_delivery_in_flight", "connector" => name.clone())
                        .set(c.in_flight as f64);
                    ConnStatus {
                        name: name.clone(),
                        kind: Some(c.def.kind.name()),
                        configured: true,
                        error: None,
                        state: if disabled { "disabled" } else { "enabled" },
                        circuit: c.breaker.circuit.name(),
                        in_flight: c.in_flight,
                        concurrency: Some(c.def.concurrency),
                        rate_limit: c.def.rate_limit,
                        fifo: c.def.fifo,
                        counts: st.clone(),
                    }
                }
                None => ConnStatus {
                    name: name.clone(),
                    kind: None,
                    configured: false,
                    error: Some(
                        "not configured (or could not be built): its deliveries wait".into(),
                    ),
                    state: if disabled { "disabled" } else { "enabled" },
                    circuit: "closed",
                    in_flight: 0,
                    concurrency: None,
                    rate_limit: None,
                    fifo: false,
                    counts: st.clone(),
                },
            };
            metrics::gauge!("storeline_delivery_queue_depth", "connector" => name.clone())
                .set(st.pending as f64);
            metrics::gauge!("storeline_delivery_dlq_size", "connector" => name.clone())
                .set(st.dead as f64);
            out.push(s);
        }
        *self.status.write() = out;
    }
}

impl Conn {
    /// How many attempts the breaker lets start (without changing its state).
    fn breaker_allowance_hint(&self) -> usize {
        match self.breaker.circuit {
            crate::breaker::Circuit::Closed => usize::MAX,
            crate::breaker::Circuit::HalfOpen { trial: false } => 1,
            _ => 0,
        }
    }
}
