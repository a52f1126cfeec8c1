//! What the phases of `storeline bench engine` share: the backend choice, the per-run context
//! that opens fresh logs and stores (and drops PostgreSQL schemas after), a [`Rig`] of log +
//! store + engine, and the figures a run produces. The phases are in `views` and `commands`.
//!
//! Why each phase starts fresh: a figure must not depend on what an earlier phase left in the
//! store (a bigger table, a warm cache), so the two backends are compared like for like.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result, anyhow};
use bytes::Bytes;
use storeline_engine::{Engine, EngineConfig};
use storeline_log::{EventLog, FileLog, FileLogConfig};
use storeline_state::{PostgresConfig, PostgresStore, SqliteStore, StateStore, Store};
use tokio::sync::watch;

use super::support::{CpuMark, CpuUse, LogAppender, OpSnapshot, Timed, TimedLog};

/// Partitions of every log the bench builds (the embedded default).
pub const PARTITIONS: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

/// What every phase of one backend's run needs.
pub struct Ctx {
    pub backend: Backend,
    pub pg_url: String,
    /// This run's directory (logs, SQLite files).
    pub dir: PathBuf,
    pub run: usize,
    pub seconds: u64,
    pub rate: u64,
    pub clients: usize,
    pub hot_skus: usize,
    pub hot_stock: i64,
    pub seed: u64,
    /// PostgreSQL schemas created, and whether each was dropped.
    pub schemas: std::sync::Mutex<Vec<(String, bool)>>,
}

/// The generated traffic, stored-form bytes routed to partitions, built once before timing.
pub struct Prepared {
    /// Per partition: `(route key, stored JSON)`.
    pub parts: Vec<Vec<(Bytes, Bytes)>>,
    pub total: u64,
    pub bytes: u64,
}

/// Where a phase's time went (sums over concurrent callers can exceed the wall time).
#[derive(Debug, Clone, Copy, Default)]
pub struct Breakdown {
    pub wall: f64,
    pub log_append: OpSnapshot,
    pub log_read: OpSnapshot,
    pub store_load: OpSnapshot,
    pub store_commit: OpSnapshot,
    pub cpu: CpuUse,
}

/// Everything one backend's run measured.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub ingest_rate: f64,
    pub views_rate: f64,
    pub drain_secs: f64,
    pub peak_backlog: f64,
    pub replay_rate: f64,
    pub digest_equal: bool,
    pub digest_live: String,
    pub digest_replay: String,
    pub rows: u64,
    /// One-key store read, idle, from this process (calibration).
    pub read_p50: f64,
    pub read_p99: f64,
    /// The same read every 10 ms during the `order.place` phase.
    pub read_load_p50: f64,
    /// How late the bench started commands after their scheduled time.
    pub timer_lag_p50: f64,
    pub timer_lag_p99: f64,
    pub cmd_p50: f64,
    pub cmd_p99: f64,
    pub cmd_max: f64,
    pub cmd_rate: f64,
    pub cmd_errors: u64,
    pub visible_p99: f64,
    pub hot_rate: f64,
    pub hot_accepted_rate: f64,
    pub hot_placed: u64,
    pub hot_insufficient: u64,
    pub hot_place_p99: f64,
    pub hot_expired: u64,
    pub hot_oversold: i64,
    pub hot_problems: Vec<String>,
    pub views: Breakdown,
    pub replay: Breakdown,
    pub cmd: Breakdown,
    pub hot: Breakdown,
}

pub type Log = TimedLog<FileLog>;
pub type St = Timed<Store>;

/// A log, a store and an engine over them.
pub struct Rig {
    pub log: Arc<Log>,
    pub store: Arc<St>,
    pub engine: Arc<Engine<St>>,
    pub stop: watch::Sender<bool>,
    pub cpu: CpuMark,
    /// The store role (SQLite file / PostgreSQL schema name part).
    pub name: &'static str,
}

impl Ctx {
    pub async fn open_store(&self, role: &str) -> Result<Store> {
        Ok(match self.backend {
            Backend::Sqlite => {
                let path = self.dir.join(format!("{role}.sqlite"));
                Store::Sqlite(
                    SqliteStore::open(&path)
                        .await
                        .with_context(|| format!("opening {}", path.display()))?,
                )
            }
            Backend::Postgres => {
                let schema = self.schema(role);
                self.schemas
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((schema.clone(), false));
                let cfg = PostgresConfig {
                    url: self.pg_url.clone(),
                    schema,
                };
                Store::Postgres(
                    PostgresStore::connect(&cfg)
                        .await
                        .context("connecting to PostgreSQL (--pg-url)")?,
                )
            }
        })
    }

    /// The PostgreSQL schema of a store role in this run: unique per process and run.
    pub fn schema(&self, role: &str) -> String {
        format!("bench_{}_{}_{}", std::process::id(), role, self.run)
    }

    /// Closes the store opened for `role`; a PostgreSQL one has its schema dropped first.
    pub async fn release(&self, store: &Store, role: &str) {
        if let Store::Postgres(pg) = store {
            match pg.drop_schema().await {
                Ok(()) => {
                    let schema = self.schema(role);
                    let mut schemas = self.schemas.lock().unwrap_or_else(|e| e.into_inner());
                    for s in schemas.iter_mut().filter(|s| s.0 == schema) {
                        s.1 = true;
                    }
                }
                Err(e) => eprintln!("warning: dropping a bench schema failed: {e}"),
            }
        }
        store.close().await;
    }

    pub fn open_log(&self, name: &str) -> Result<Log> {
        let dir = self.dir.join(name);
        let cfg = FileLogConfig {
            partitions: PARTITIONS,
            fsync: true,
            ..FileLogConfig::default()
        };
        let t = Instant::now();
        let log = FileLog::open(&dir, cfg)
            .with_context(|| format!("opening a log in {}", dir.display()))?;
        let secs = t.elapsed().as_secs_f64();
        if secs > 0.5 {
            eprintln!("note: opening a fresh log took {secs:.2} s (not counted in any figure)");
        }
        Ok(TimedLog::new(log))
    }

    pub async fn start(&self, name: &'static str) -> Result<Rig> {
        let log = Arc::new(self.open_log(name)?);
        let store = Arc::new(Timed::new(self.open_store(name).await?));
        let (stop, stop_rx) = watch::channel(false);
        let appender = Arc::new(LogAppender { log: log.clone() });
        let engine = Engine::start(
            log.clone(),
            store.clone(),
            appender,
            EngineConfig::default(),
            stop_rx,
        )
        .await
        .map_err(|e| anyhow!("starting the engine: {e}"))?;
        Ok(Rig {
            log,
            store,
            engine: Arc::new(engine),
            stop,
            cpu: CpuMark::now(),
            name,
        })
    }
}

impl Breakdown {
    /// What `log` and `store` counted so far, and the CPU and wall time since `cpu`.
    pub fn capture(log: &Log, store: &St, cpu: &CpuMark) -> Breakdown {
        Breakdown {
            wall: cpu.elapsed(),
            log_append: log.stats.append.snapshot(),
            log_read: log.stats.read.snapshot(),
            store_load: store.stats.load.snapshot(),
            store_commit: store.stats.commit.snapshot(),
            cpu: cpu.since(),
        }
    }
}

impl Rig {
    /// Marks the start of the measured part: counters restart (stocking and warm-up before it
    /// are not counted).
    pub fn mark(&mut self) {
        for o in [&self.log.stats.append, &self.log.stats.read] {
            o.reset();
        }
        for o in [
            &self.store.stats.commit,
            &self.store.stats.load,
            &self.store.stats.read,
        ] {
            o.reset();
        }
        self.cpu = CpuMark::now();
    }

    pub fn breakdown(&self) -> Breakdown {
        Breakdown::capture(&self.log, &self.store, &self.cpu)
    }

    /// Stops the engine's runners (the log stays open).
    pub async fn stop_engine(&self) {
        self.stop.send_replace(true);
        self.engine.join().await;
    }

    pub async fn stop(&self) {
        self.stop_engine().await;
        if let Err(e) = self.log.close().await {
            eprintln!("warning: closing a bench log: {e}");
        }
    }
}
