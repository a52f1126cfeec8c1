//! The adapters through which the engine and the delivery worker reach the rest of the
//! process: the engine appends through the ingest path ([`LogAppender`]: dedup and routing as
//! for any event), and the worker reads the engine's outbox and customer views and appends its
//! own events ([`ServerHost`]). `wiring.rs` hands them over at start.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::Value;
use storeline_connector::worker::Host;
use storeline_engine::{AppendError, Appender};
use storeline_event::Event;
use storeline_event::outbox::OutboxKey;
use storeline_state::StateStore;

use crate::http::views::now_ms;
use crate::{AppState, SharedState};

/// The engine's way into the log: the ingest path, with dedup and routing.
pub struct LogAppender(pub Arc<AppState>);

impl Appender for LogAppender {
    async fn append(
        &self,
        events: Vec<Event>,
        partition: Option<u32>,
    ) -> Result<Vec<(u32, u64)>, AppendError> {
        let st = Arc::clone(&self.0);
        // Its own task: a cancelled caller cannot cut an append half-way.
        let result =
            tokio::spawn(async move { crate::ingest::store_routed(&st, events, partition).await })
                .await
                .map_err(|e| AppendError::unavailable("internal", e.to_string()))?;
        match result {
            Ok(acks) => Ok(acks.iter().map(|a| (a.partition, a.offset)).collect()),
            Err(e) => Err(AppendError {
                refused: e.status.is_client_error(),
                code: e.code.into(),
                message: e.message.clone(),
                cause: Some(Arc::new(e)),
            }),
        }
    }
}

/// The worker's window on the engine, the views and the log.
pub(crate) struct ServerHost(pub SharedState);

impl Host for ServerHost {
    fn outbox(
        &self,
        partition: u32,
        from_clock: i64,
        after: Option<String>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(String, Bytes)>, String>> {
        Box::pin(async move {
            let engine = crate::http::views::engine(&self.0).map_err(|e| e.message)?;
            let prefix = OutboxKey::prefix(partition);
            let start = after.unwrap_or_else(|| OutboxKey::start(partition, from_clock));
            let rows = engine
                .store
                .scan(
                    storeline_event::outbox::NS,
                    &prefix,
                    // Past every row of the key `start` itself (owners are int4 in PostgreSQL).
                    Some((&start, i32::MAX as u32)),
                    limit,
                )
                .await
                .map_err(|e| e.to_string())?;
            Ok(rows
                .into_iter()
                .filter(|r| r.owner == partition)
                .map(|r| (r.key, r.value))
                .collect())
        })
    }

    fn profile(&self, customer: String) -> BoxFuture<'_, Option<Value>> {
        Box::pin(async move {
            let engine = crate::http::views::engine(&self.0).ok()?;
            let p = storeline_engine::read::profile(&*engine.store, &customer)
                .await
                .ok()??;
            Some(p.to_json(now_ms()))
        })
    }

    fn emit(&self, ty: &'static str, data: Value) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let now = now_ms();
            let ev = storeline_engine::build_event(
                format!("dlvev_{}", ulid::Ulid::new().to_string().to_lowercase()),
                "storeline/delivery",
                ty,
                None,
                now,
                &data,
                None,
            );
            crate::ingest::store_routed(&self.0, vec![ev], None)
                .await
                .map(|_| ())
                .map_err(|e| e.message)
        })
    }
}
