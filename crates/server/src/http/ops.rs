//! Operations endpoints: `/metrics` (Prometheus text; with `server.metrics_auth`, for a `read`
//! key), `/healthz`, `/readyz`, the OpenAPI document, and the JSON 404/405 answers.
//!
//! Metric labels are bounded names only (partition, outcome, endpoint, trigger and connector
//! names): never a connector's URL, host or secret, nor customer data.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use storeline_log::EventLog;

use crate::SharedState;
use crate::auth::Scope;
use crate::error::ApiError;

/// The process-wide Prometheus recorder (installed once, shared by every server in a process).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 0.5, 1.0, 2.5,
            ];
            let sizes = [
                1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
                10000.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_records".into()), &sizes));
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            metrics::describe_counter!(
                "storeline_ingest_requests_total",
                "Ingest requests by endpoint and outcome"
            );
            metrics::describe_counter!(
                "storeline_ingest_events_total",
                "Ingested events by outcome"
            );
            metrics::describe_histogram!(
                "storeline_log_append_seconds",
                "Append latency: queued to durable"
            );
            metrics::describe_histogram!(
                "storeline_log_fsync_seconds",
                "fdatasync latency per batch"
            );
            metrics::describe_histogram!(
                "storeline_log_batch_records",
                "Records per group-commit batch"
            );
            metrics::describe_gauge!("storeline_log_bytes", "Bytes of record data per partition");
            metrics::describe_gauge!("storeline_dedup_entries", "Keys in the dedup index");
            metrics::describe_counter!(
                "storeline_quarantine_records_total",
                "Records quarantined instead of applied, by origin (engine, ingest) and reason"
            );
            metrics::describe_gauge!(
                "storeline_quarantine_size",
                "Quarantine entries a partition keeps (GET /v1/quarantine)"
            );
            metrics::describe_counter!(
                "storeline_engine_retries_total",
                "Batches retried after a failure that can heal (the state store unreachable), per partition"
            );
            metrics::describe_gauge!("storeline_http_connections", "Open client connections");
            metrics::describe_counter!(
                "storeline_http_connections_refused_total",
                "Connections answered 503 because server.max_connections were open"
            );
            metrics::describe_counter!(
                "storeline_http_connections_closed_total",
                "Connections closed by the header-read or keep-alive timeout"
            );
            metrics::describe_counter!(
                "storeline_http_accept_errors_total",
                "Failed accepts (such as EMFILE: out of file descriptors)"
            );
            metrics::describe_counter!(
                "storeline_http_rate_limited_total",
                "Requests answered 429 by the per-key rate limits, by limit"
            );
            handle
        })
        .clone()
}

pub async fn metrics(
    State(state): State<SharedState>,
    headers: HeaderMap,
    handle: PrometheusHandle,
) -> Response {
    if state.config.server.metrics_auth
        && let Err(e) = state.keys.authorize(&headers, Scope::Read, "GET /metrics")
    {
        return e.into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

pub async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

/// `/readyz`: 503 `not_ready` while shutting down, when a log partition cannot be served, or
/// when a partition's writer has failed to apply for [`STALLED_AFTER_MS`] (the store is down);
/// 200 `degraded` when records were quarantined (`GET /v1/quarantine` lists them, `DELETE`
/// clears them); else 200 `ready`.
pub async fn readyz(State(state): State<SharedState>) -> Response {
    let mut problems = Vec::new();
    let mut degraded = Vec::new();
    let mut quarantined = 0;
    if *state.shutdown.borrow() {
        problems.push("shutting down".to_owned());
    }
    for p in 0..state.log.partitions() {
        if let Some(h) = state.log.health(p) {
            problems.push(format!("partition {p}: {h}"));
        }
    }
    if let Some(engine) = state.engine.get() {
        let now = chrono::Utc::now().timestamp_millis();
        for (p, st) in engine.status().iter().enumerate() {
            if let Some((since, attempts, error)) = st.failing()
                && now - since >= STALLED_AFTER_MS
            {
                problems.push(format!(
                    "partition {p}: applying events has failed for {} s ({attempts} attempts; retrying): {error}",
                    (now - since) / 1000
                ));
            }
            let q = st.quarantined();
            if q > 0 {
                quarantined += q;
                degraded.push(format!(
                    "partition {p}: {q} record(s) quarantined (GET /v1/quarantine)"
                ));
            }
        }
    }
    if !problems.is_empty() {
        problems.extend(degraded);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(
                json!({ "status": "not_ready", "problems": problems, "quarantined": quarantined }),
            ),
        )
            .into_response();
    }
    if degraded.is_empty() {
        axum::Json(json!({ "status": "ready" })).into_response()
    } else {
        axum::Json(
            json!({ "status": "degraded", "problems": degraded, "quarantined": quarantined }),
        )
        .into_response()
    }
}

/// How long a partition's writer may fail to apply (and retry) before `/readyz` says not ready.
const STALLED_AFTER_MS: i64 = 5_000;

/// The OpenAPI 3.0.3 document, `openapi.json`, served as it is. It is maintained by hand (shared
/// components keep it short); a unit test in `lib.rs` checks that it describes every route, and
/// `scripts/fuzz-api` checks the running server against it with schemathesis.
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../openapi.json"),
    )
        .into_response()
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such endpoint: {}; see /v1/openapi.json", uri.path()),
    )
}

pub async fn method_not_allowed(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "this method is not supported on {}; see /v1/openapi.json",
            uri.path()
        ),
    )
}
