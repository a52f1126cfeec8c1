//! Storeline's server: the HTTP API over the log, with auth, metrics and graceful shutdown.
//!
//! [`run`] wires the parts: it opens the log (recovering it), the key store and the dedup index
//! (rebuilt from the log), binds the listener and serves (`serve.rs`) until the shutdown future
//! resolves; then it stops accepting, lets in-flight requests finish, and closes the log (every
//! acknowledged append is already fsynced; close drains the writers).

mod adapters;
pub mod auth;
pub mod config;
mod cursor;
mod dedup;
mod error;
mod http;
mod ingest;
mod rate_limit;
pub mod secrets;
mod serve;
pub mod trigger_file;
mod wiring;

use std::sync::Arc;

use axum::body::Body;
use axum::http::HeaderMap;
use storeline_log::{
    AppendAck, Bounds, EventLog, FileLog, KafkaLog, MemoryLog, Record, StoredRecord,
};
use tokio::sync::watch;

use crate::auth::{KeyStore, Scope};
pub use crate::config::{Config, ConfigError, LogBackend, StateBackend};
use crate::dedup::Dedup;
pub use crate::error::ApiError;
pub use crate::http::events::Cursor;
pub use crate::wiring::{ServerError, Started, engine_config, open_store, run};

/// The log backends, compiled in and chosen by `[log] backend`.
pub enum Log {
    File(FileLog),
    Memory(MemoryLog),
    Kafka(KafkaLog),
}

macro_rules! each_log {
    ($self:ident, $l:ident => $e:expr) => {
        match $self {
            Log::File($l) => $e,
            Log::Memory($l) => $e,
            Log::Kafka($l) => $e,
        }
    };
}

impl EventLog for Log {
    fn partitions(&self) -> u32 {
        each_log!(self, l => l.partitions())
    }
    async fn append(
        &self,
        partition: u32,
        records: Vec<Record>,
    ) -> storeline_log::Result<AppendAck> {
        each_log!(self, l => l.append(partition, records).await)
    }
    async fn read(
        &self,
        partition: u32,
        from: u64,
        max: usize,
    ) -> storeline_log::Result<Vec<StoredRecord>> {
        each_log!(self, l => l.read(partition, from, max).await)
    }
    async fn offset_for_time(&self, partition: u32, timestamp: i64) -> storeline_log::Result<u64> {
        each_log!(self, l => l.offset_for_time(partition, timestamp).await)
    }
    fn bounds(&self, partition: u32) -> storeline_log::Result<Bounds> {
        each_log!(self, l => l.bounds(partition))
    }
    fn watch(&self, partition: u32) -> storeline_log::Result<watch::Receiver<u64>> {
        each_log!(self, l => l.watch(partition))
    }
    async fn trim(&self, partition: u32, before: u64) -> storeline_log::Result<u64> {
        each_log!(self, l => l.trim(partition, before).await)
    }
    fn health(&self, partition: u32) -> Option<String> {
        each_log!(self, l => l.health(partition))
    }
    async fn close(&self) -> storeline_log::Result<()> {
        each_log!(self, l => l.close().await)
    }
}

/// The engine over the configured state store.
pub type Engine = storeline_engine::Engine<storeline_state::Store>;

pub struct AppState {
    pub config: Config,
    pub log: Arc<Log>,
    keys: KeyStore,
    dedup: Dedup,
    shutdown: watch::Sender<bool>,
    /// Set once the engine has started (after the log and the dedup index).
    engine: std::sync::OnceLock<Arc<Engine>>,
    /// Set once the delivery worker has started (after the engine).
    worker: std::sync::OnceLock<Arc<storeline_connector::Worker>>,
}

impl AppState {
    /// The preamble of every handler with a body: the key must have `scope` (`what` names the
    /// endpoint in errors and logs), then the body is read, up to `limit` bytes.
    pub(crate) async fn authorized_body(
        &self,
        headers: &HeaderMap,
        body: Body,
        scope: Scope,
        what: &str,
        limit: usize,
    ) -> Result<bytes::Bytes, ApiError> {
        self.keys.authorize(headers, scope, what)?;
        http::read_body(headers, body, limit).await
    }

    /// The delivery worker, once started.
    pub(crate) fn delivery_worker(&self) -> Result<&storeline_connector::Worker, ApiError> {
        self.worker
            .get()
            .map(|w| &**w)
            .ok_or_else(|| ApiError::unavailable("the delivery worker is starting; retry"))
    }
}

pub type SharedState = Arc<AppState>;
