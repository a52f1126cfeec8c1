//! The process: opens the log, the key store, the state and delivery stores, starts the engine,
//! the installed trigger file and the delivery worker, serves the API, and stops everything in
//! one order ([`Parts::stop`]) on shutdown or when a start fails half-way. The periodic chores
//! (key reload, dedup expiry, retention) run here too.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use storeline_log::{EventLog, FileLog, KafkaLog, MemoryLog};
use storeline_state::StateStore;
use tokio::sync::watch;

use crate::auth::{self, KeyStore};
use crate::config::{Config, ConfigError, LogBackend, StateBackend};
use crate::dedup::{Dedup, Position};
use crate::http::{deliveries, ops};
use crate::{AppState, Engine, Log, SharedState, serve, trigger_file};

/// Opens the configured state store: SQLite in the data dir, or PostgreSQL.
pub async fn open_store(config: &Config) -> Result<storeline_state::Store, storeline_state::Error> {
    Ok(match config.state.backend {
        StateBackend::Sqlite => storeline_state::Store::Sqlite(
            storeline_state::SqliteStore::open(&config.state_file()).await?,
        ),
        StateBackend::Postgres => {
            let pg = storeline_state::PostgresConfig {
                url: config.state.postgres.url.clone(),
                schema: config.state.postgres.schema.clone(),
            };
            storeline_state::Store::Postgres(storeline_state::PostgresStore::connect(&pg).await?)
        }
    })
}

/// The engine settings from the configuration.
pub fn engine_config(config: &Config) -> storeline_engine::EngineConfig {
    storeline_engine::EngineConfig {
        projection: storeline_engine::ProjectionConfig {
            default_location: config.inventory.default_location.clone(),
            low_stock_threshold: config.inventory.low_stock_threshold,
        },
        batch_max: config.engine.batch_max,
        linger: config.engine.linger,
        reservation_ttl: config.engine.reservation_ttl,
    }
}

/// What the caller of [`run`] learns once the server listens.
#[derive(Debug, Clone)]
pub struct Started {
    pub addr: SocketAddr,
    /// The admin key created on the first start of an empty data directory (shown once).
    pub admin_key: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the log: {0}")]
    Log(#[from] storeline_log::Error),
    #[error(transparent)]
    Keys(#[from] auth::KeyError),
    #[error("cannot open the state store: {0}")]
    State(#[from] storeline_state::Error),
    #[error("cannot start the engine: {0}")]
    Engine(#[from] storeline_engine::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Triggers(String),
    #[error("cannot start delivery: {0}")]
    Delivery(String),
    #[error("server error: {0}")]
    Serve(#[source] std::io::Error),
}

/// Opens everything and serves until `shutdown` resolves, then shuts down gracefully. A start
/// that fails half-way stops what it had started, in the same order as a shutdown.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_started: impl FnOnce(&Started),
) -> Result<(), ServerError> {
    config.validate()?;
    let metrics = ops::metrics_handle();
    let started_at = Instant::now();
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        ServerError::Log(storeline_log::Error::Io {
            path: config.data_dir.clone(),
            source: e,
        })
    })?;
    let log = match config.log.backend {
        LogBackend::File => {
            let dir = config.log_dir();
            let file_config = config.log.file();
            let log = tokio::task::spawn_blocking(move || FileLog::open(dir, file_config))
                .await
                .map_err(|e| ServerError::Serve(std::io::Error::other(e)))??;
            Log::File(log)
        }
        LogBackend::Memory => Log::Memory(MemoryLog::new(config.log.partitions)),
        LogBackend::Kafka => Log::Kafka(KafkaLog::open(config.log.kafka()).await?),
    };
    let log = Arc::new(log);
    let opened = async {
        let (keys, admin_key) = KeyStore::open(config.keys_file())?;
        let keys = keys.with_rate_limits(config.server.rate_limit);
        Ok::<_, ServerError>((keys, admin_key))
    }
    .await;
    let (keys, admin_key) = match opened {
        Ok(k) => k,
        Err(e) => {
            log.close().await?;
            return Err(e);
        }
    };
    let dedup = Dedup::new(config.ingest.dedup_window);
    let (shutdown_tx, _) = watch::channel(false);
    let state = Arc::new(AppState {
        config,
        log,
        keys,
        dedup,
        shutdown: shutdown_tx,
        engine: std::sync::OnceLock::new(),
        worker: std::sync::OnceLock::new(),
    });
    let (events, partitions_skipped) = rebuild_dedup(&state).await;
    tracing::info!(
        events,
        partitions_skipped,
        elapsed_ms = started_at.elapsed().as_millis() as u64,
        "log opened and dedup index rebuilt"
    );
    let mut parts = Parts::new(Arc::clone(&state));
    let listener = match parts.start().await {
        Ok(listener) => listener,
        Err(e) => {
            parts.stop().await?;
            return Err(e);
        }
    };
    let addr = listener.local_addr().map_err(ServerError::Serve)?;
    on_started(&Started { addr, admin_key });
    tracing::info!(%addr, data_dir = %state.config.data_dir.display(), "storeline is serving");

    let background = tokio::spawn(background(Arc::clone(&state), metrics.clone()));
    let app = crate::http::router(Arc::clone(&state), metrics);
    let stop = state.shutdown.subscribe();
    let signal_state = Arc::clone(&state);
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections; finishing in-flight requests");
        signal_state.shutdown.send_replace(true);
    });
    let limits = serve::Limits::from_config(&state.config.server);
    serve::serve(listener, app, limits, stop).await;
    background.abort();
    parts.stop().await?;
    tracing::info!("log closed cleanly; bye");
    Ok(())
}

/// What [`run`] starts after the log, each with its stop signal, and the one order in which
/// they stop, whether the server shuts down or a start fails half-way.
struct Parts {
    state: SharedState,
    engine: Option<(Arc<Engine>, watch::Sender<bool>)>,
    store: Option<Arc<storeline_state::Store>>,
    worker: Option<(Arc<storeline_connector::Worker>, watch::Sender<bool>)>,
    delivery_store: Option<Arc<storeline_state::Store>>,
}

impl Parts {
    fn new(state: SharedState) -> Parts {
        Parts {
            state,
            engine: None,
            store: None,
            worker: None,
            delivery_store: None,
        }
    }

    /// The state store, the engine, the installed trigger file, the delivery store and worker,
    /// then the listening socket.
    async fn start(&mut self) -> Result<tokio::net::TcpListener, ServerError> {
        let state = &self.state;
        let store = Arc::new(open_store(&state.config).await?);
        self.store = Some(Arc::clone(&store));
        let (engine_stop, engine_stop_rx) = watch::channel(false);
        let engine = storeline_engine::Engine::start(
            Arc::clone(&state.log),
            store,
            Arc::new(crate::adapters::LogAppender(Arc::clone(state))),
            engine_config(&state.config),
            engine_stop_rx,
        )
        .await?;
        let engine = Arc::new(engine);
        self.engine = Some((Arc::clone(&engine), engine_stop));
        let _ = state.engine.set(engine);
        trigger_file::install_configured(state)
            .await
            .map_err(ServerError::Triggers)?;
        let delivery_store = Arc::new(deliveries::open_delivery_store(&state.config).await?);
        self.delivery_store = Some(Arc::clone(&delivery_store));
        let (worker_stop, worker_stop_rx) = watch::channel(false);
        let worker = deliveries::start_worker(state, delivery_store, worker_stop_rx)
            .await
            .map_err(ServerError::Delivery)?;
        let worker = Arc::new(worker);
        self.worker = Some((Arc::clone(&worker), worker_stop));
        let _ = state.worker.set(worker);
        tokio::net::TcpListener::bind(&state.config.server.listen)
            .await
            .map_err(|e| ServerError::Bind {
                addr: state.config.server.listen.clone(),
                source: e,
            })
    }

    /// Deliveries stop first: attempts in flight get a moment to finish and be recorded. The
    /// views stop after the last request; what they applied is committed, the rest is applied
    /// from the log on the next start. The log closes last.
    async fn stop(self) -> Result<(), ServerError> {
        if let Some((worker, stop)) = self.worker {
            stop.send_replace(true);
            worker.join().await;
        }
        if let Some(store) = self.delivery_store {
            store.close().await;
        }
        if let Some((engine, stop)) = self.engine {
            stop.send_replace(true);
            engine.join().await;
        }
        if let Some(store) = self.store {
            store.close().await;
        }
        self.state.log.close().await?;
        Ok(())
    }
}

/// Rebuilds the dedup index from the log's last `dedup_window`. The log is the source of truth.
async fn rebuild_dedup(state: &AppState) -> (u64, u32) {
    #[derive(serde::Deserialize)]
    struct Key<'a> {
        #[serde(borrow)]
        source: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        id: std::borrow::Cow<'a, str>,
    }
    let since = chrono::Utc::now().timestamp_millis() - state.dedup.window_ms();
    let mut events = 0;
    let mut skipped = 0;
    for p in 0..state.log.partitions() {
        let result: Result<(), storeline_log::Error> = async {
            let mut from = state.log.offset_for_time(p, since).await?;
            loop {
                let batch = state.log.read(p, from, 4096).await?;
                let Some(last) = batch.last() else { break };
                from = last.offset + 1;
                for rec in &batch {
                    if let Ok(k) = serde_json::from_slice::<Key<'_>>(&rec.value) {
                        let key = state.dedup.key(&k.source, &k.id);
                        state.dedup.insert(
                            key,
                            Position {
                                partition: p,
                                offset: rec.offset,
                            },
                            rec.timestamp,
                        );
                        events += 1;
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            skipped += 1;
            tracing::error!(partition = p, error = %e, "cannot rebuild the dedup index of this partition");
        }
    }
    (events, skipped)
}

/// Deletes what is older than the retention, through the log's `trim` (whole segments).
async fn apply_retention(state: &AppState, retention: Duration) {
    let cutoff = chrono::Utc::now().timestamp_millis() - retention.as_millis() as i64;
    for p in 0..state.log.partitions() {
        let result = async {
            let before = state.log.offset_for_time(p, cutoff).await?;
            let old_start = state.log.bounds(p)?.start;
            let start = state.log.trim(p, before).await?;
            Ok::<_, storeline_log::Error>((old_start, start))
        }
        .await;
        match result {
            Ok((old, new)) if new > old => {
                tracing::info!(
                    partition = p,
                    dropped = new - old,
                    start = new,
                    "retention removed old segments"
                )
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "retention could not trim this partition")
            }
        }
    }
}

/// Periodic chores: pick up key changes, drop expired dedup days, keep histograms bounded.
async fn background(state: SharedState, metrics: metrics_exporter_prometheus::PrometheusHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        if let Err(e) = state.keys.reload() {
            tracing::warn!(error = %e, "cannot reload API keys; keeping the previous set");
        }
        if n.is_multiple_of(5) {
            metrics.run_upkeep();
        }
        if n % 3600 == 1 {
            state.dedup.expire(chrono::Utc::now().timestamp_millis());
        }
        if n.is_multiple_of(60)
            && let Some(retention) = state.config.log.retention
        {
            apply_retention(&state, retention).await;
        }
    }
}
