//! Storeline's engine: one writer per log partition folds events into the views (Customer 360,
//! inventory, orders) and commits them with the partition offset in one transaction; the
//! commerce partition's writer also carries out commands, so stock has exactly one writer.
//!
//! ```text
//!  log partition p ──► Runner p ──► Applier (pure projections over Views) ──► StateStore.commit
//!                         ▲                                                   (rows + offset)
//!  POST /v1/commands ─────┘ (commerce partition only: plan → append → reply)
//! ```
//!
//! The pure core is `project`, `commands` and `triggers`; `runner` and `apply` move data between
//! the log, the store and the API; [`read`] combines rows into the API's documents; `replay`
//! and `backtest` run the stored log through the same folds.
//!
//! The front door, what the server, the CLI and the benchmarks use: [`Engine`] (start, submit
//! commands, stop), [`replay`], [`backtest`], the documents in [`read`], the trigger file in
//! [`triggers`] (parse, check, install, stats), the quarantine's records in [`quarantine`], and
//! [`build_event`]. Everything else is `pub(crate)`. Integration tests reach the folds
//! themselves (the applier, a partition's trigger stage, the views) through `testkit`, which
//! only the `testkit` feature builds (the engine's own dev-dependency turns it on).

mod apply;
mod backtest;
mod commands;
mod error;
mod event;
mod model;
mod project;
pub mod quarantine;
pub mod read;
mod replay;
mod runner;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod triggers;
mod views;
mod watermark;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use storeline_log::{EventLog, partition_for};
use storeline_state::StateStore;
use tokio::sync::{mpsc, oneshot, watch};

pub use backtest::{Report, backtest};
pub use commands::NAMES as COMMANDS;
pub use error::{AppendError, CommandError, Error, Result};
pub use event::{Ev, build_event};
pub use project::{ProjectionConfig, Shortfall, identity_key};
pub use replay::replay;
pub use runner::{Appender, CommandOutcome};

use apply::Applier;
use runner::{CommandRequest, Runner, RunnerConfig};

/// SHA-256 of `bytes`, in hex.
pub fn hash_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub projection: ProjectionConfig,
    /// Most records applied and committed at once.
    pub batch_max: usize,
    /// While records keep arriving, how long a writer gathers them after its last batch before
    /// it applies the next (see `Runner::linger`). Zero applies at once.
    pub linger: Duration,
    /// How long an unpaid order holds its stock unless the command says otherwise.
    pub reservation_ttl: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            projection: ProjectionConfig::default(),
            batch_max: 16384,
            linger: Duration::from_millis(2),
            reservation_ttl: Duration::from_secs(15 * 60),
        }
    }
}

/// What operations see of one partition's writer: whether applying has been failing (a store
/// that is down: it retries) and how many records its quarantine keeps.
#[derive(Debug, Default)]
pub struct PartitionStatus {
    /// Since when (ms since the epoch), how many times, and the last error.
    failing: parking_lot::Mutex<Option<(i64, u64, String)>>,
    quarantined: std::sync::atomic::AtomicU64,
}

impl PartitionStatus {
    fn failed(&self, now_ms: i64, error: &str) {
        let mut f = self.failing.lock();
        let (since, n) = f.as_ref().map_or((now_ms, 0), |(s, n, _)| (*s, *n));
        *f = Some((since, n + 1, error.to_owned()));
    }

    fn succeeded(&self) {
        let mut f = self.failing.lock();
        if f.is_some() {
            *f = None;
        }
    }

    fn set_quarantined(&self, n: usize) {
        self.quarantined
            .store(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// `(since ms, attempts, last error)` while applying fails.
    pub fn failing(&self) -> Option<(i64, u64, String)> {
        self.failing.lock().clone()
    }

    /// Records the partition's quarantine keeps.
    pub fn quarantined(&self) -> u64 {
        self.quarantined.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The running engine: a handle for commands and for waiting on views.
pub struct Engine<S> {
    pub store: Arc<S>,
    pub config: EngineConfig,
    commerce: u32,
    applied: Vec<watch::Receiver<u64>>,
    status: Vec<Arc<PartitionStatus>>,
    marks: Arc<watermark::Marks>,
    commands: mpsc::Sender<CommandRequest>,
    tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl<S: StateStore> Engine<S> {
    /// Starts one runner per partition, each resuming at the store's committed offset.
    pub async fn start<L: EventLog, A: Appender>(
        log: Arc<L>,
        store: Arc<S>,
        appender: Arc<A>,
        config: EngineConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Engine<S>> {
        let partitions = log.partitions();
        let commerce = partition_for(storeline_event::COMMERCE_KEY.as_bytes(), partitions);
        let offsets = store.offsets().await?;
        let (tx, rx) = mpsc::channel(4096);
        let mut rx = Some(rx);
        let rcfg = Arc::new(RunnerConfig {
            batch_max: config.batch_max,
            linger: config.linger,
            reservation_ttl_ms: config.reservation_ttl.as_millis() as i64,
            source: "storeline/commands".into(),
        });
        let mut applied = Vec::new();
        let mut status = Vec::new();
        let mut tasks = Vec::new();
        let marks = Arc::new(watermark::Marks::new(partitions));
        for p in 0..partitions {
            let committed = offsets.get(&p).copied().unwrap_or(0);
            let (atx, arx) = watch::channel(committed);
            applied.push(arx);
            let st = Arc::new(PartitionStatus::default());
            st.set_quarantined(quarantine_size(&*store, p).await?);
            status.push(st.clone());
            let mut runner = Runner {
                applier: Applier::new(p, store.clone(), config.projection.clone(), committed),
                log: log.clone(),
                appender: appender.clone(),
                cfg: rcfg.clone(),
                applied: atx,
                commands: if p == commerce { rx.take() } else { None },
                expiries: Default::default(),
                recent: HashMap::new(),
                ticked: None,
                status: st,
                marks: marks.clone(),
                self_tick: None,
                last_step: None,
            };
            runner.applier.load_triggers(Some(commerce)).await?;
            let stage = &runner.applier.triggers;
            marks.publish(p, stage.clock, stage.watermark);
            if p == commerce {
                runner.expiries = load_expiries(&*store, p).await?;
            }
            tasks.push(tokio::spawn(runner.run(shutdown.clone())));
        }
        tracing::info!(partitions, commerce, "engine started");
        Ok(Engine {
            store,
            config,
            commerce,
            applied,
            status,
            marks,
            commands: tx,
            tasks: parking_lot::Mutex::new(tasks),
        })
    }

    /// The partition whose writer owns stock and orders.
    pub fn commerce_partition(&self) -> u32 {
        self.commerce
    }

    /// Each partition writer's status, by partition.
    pub fn status(&self) -> &[Arc<PartitionStatus>] {
        &self.status
    }

    /// Each partition writer's clock and watermark, by partition.
    pub fn marks(&self) -> Vec<watermark::Mark> {
        (0..self.status.len() as u32)
            .map(|p| self.marks.mark(p))
            .collect()
    }

    /// The committed (applied) offset of each partition: the next record each will apply.
    pub fn applied(&self) -> Vec<u64> {
        self.applied.iter().map(|w| *w.borrow()).collect()
    }

    /// Watches of each partition's committed offset: a change means a commit (and so possibly
    /// new outbox rows).
    pub fn applied_watches(&self) -> Vec<watch::Receiver<u64>> {
        self.applied.clone()
    }

    /// Waits until partition `p` has applied `offset` (read-your-writes); false on timeout.
    pub async fn wait_applied(&self, p: u32, offset: u64, timeout: Duration) -> bool {
        let Some(w) = self.applied.get(p as usize) else {
            return false;
        };
        let mut w = w.clone();
        tokio::time::timeout(timeout, w.wait_for(|a| *a > offset))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Carries out a command through the commerce writer.
    pub async fn command(
        &self,
        name: &str,
        body: &Value,
        idempotency_key: Option<String>,
    ) -> std::result::Result<CommandOutcome, CommandError> {
        let command = commands::parse(name, body)?;
        let hash = hash_hex(format!("{name}\n{body}").as_bytes());
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(CommandRequest {
                command,
                idempotency_key,
                hash,
                reply,
            })
            .await
            .map_err(|_| CommandError::Unavailable("the engine is shutting down".into()))?;
        rx.await
            .map_err(|_| CommandError::Unavailable("the engine stopped before answering".into()))?
    }

    /// Waits for the runners to stop (after shutdown was signalled).
    pub async fn join(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// The number of entries partition `p`'s quarantine keeps, from its index row.
async fn quarantine_size<S: StateStore>(store: &S, p: u32) -> Result<usize> {
    let found = store
        .get_owned(
            quarantine::ns::INDEX,
            p,
            &[quarantine::INDEX_KEY.to_owned()],
        )
        .await?;
    Ok(found
        .into_iter()
        .flatten()
        .filter_map(|b| serde_json::from_slice::<quarantine::Index>(&b).ok())
        .map(|i| i.offsets.len())
        .sum())
}

/// The commerce writer's pending holds, from the store (they survive restarts there).
async fn load_expiries<S: StateStore>(
    store: &S,
    owner: u32,
) -> Result<std::collections::BTreeSet<(i64, String)>> {
    let mut out = std::collections::BTreeSet::new();
    let mut after: Option<(String, u32)> = None;
    loop {
        let page = store
            .scan(
                model::ns::RESV,
                "",
                after.as_ref().map(|(k, o)| (k.as_str(), *o)),
                4096,
            )
            .await?;
        let Some(last) = page.last() else { break };
        after = Some((last.key.clone(), last.owner));
        for r in page.iter().filter(|r| r.owner == owner) {
            if let Ok(res) = serde_json::from_slice::<model::Reservation>(&r.value)
                && let Some(t) = res.expires_at
            {
                out.insert((t, r.key.clone()));
            }
        }
    }
    Ok(out)
}
