//! The quarantine over HTTP (admin keys only: entries hold what a client sent):
//!
//! - `GET    /v1/quarantine`  records that could not be applied and messages refused at the
//!   Segment endpoints, with the reason, oldest first; `?partition=`, `?limit=`, `?after=`
//! - `DELETE /v1/quarantine`  clears every partition's quarantine up to now (through the log,
//!   so replay clears the same entries), which ends the `degraded` state of `/readyz`
//!
//! See `storeline_engine::quarantine` for what is quarantined and why.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use storeline_engine::quarantine;
use storeline_log::EventLog;
use storeline_state::StateStore;

use crate::SharedState;
use crate::auth::Scope;
use crate::error::ApiError;
use crate::http::views::{engine, internal, now_ms};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    partition: Option<u32>,
    limit: Option<usize>,
    /// The `next` of the previous page.
    after: Option<String>,
}

/// `GET /v1/quarantine` (admin).
pub async fn list(
    State(state): State<SharedState>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    state
        .keys
        .authorize(&headers, Scope::Admin, "GET /v1/quarantine")?;
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit: must be between 1 and 1000, got {limit}"),
        ));
    }
    if let Some(p) = q.partition
        && p >= state.log.partitions()
    {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!(
                "partition: {p} does not exist; there are {}",
                state.log.partitions()
            ),
        ));
    }
    let after = match &q.after {
        None => None,
        Some(a) => Some(parse_after(a)?),
    };
    let engine = engine(&state)?;
    const PAGE: usize = 256;
    let mut entries: Vec<Value> = Vec::new();
    let mut position = after;
    let mut next = None;
    // Rows sort by (offset key, owner); a partition filter skips the others' rows.
    'pages: loop {
        let page = engine
            .store
            .scan(
                quarantine::ns::ENTRY,
                "",
                position.as_ref().map(|(k, o)| (k.as_str(), *o)),
                PAGE,
            )
            .await
            .map_err(|e| internal(e.into()))?;
        let done = page.len() < PAGE;
        for row in page {
            position = Some((row.key.clone(), row.owner));
            if q.partition.is_some_and(|p| p != row.owner) {
                continue;
            }
            entries.push(serde_json::from_slice::<Value>(&row.value).unwrap_or_else(|e| {
                json!({ "partition": row.owner, "key": row.key, "error": format!("unreadable entry: {e}") })
            }));
            if entries.len() == limit {
                next = Some(crate::cursor::encode(&format!("{}:{}", row.key, row.owner)));
                break 'pages;
            }
        }
        if done {
            break;
        }
    }
    let kept: Vec<Value> = engine
        .status()
        .iter()
        .enumerate()
        .map(|(p, s)| json!({ "partition": p, "entries": s.quarantined() }))
        .collect();
    Ok(Json(json!({ "entries": entries, "next": next, "partitions": kept })).into_response())
}

fn parse_after(a: &str) -> Result<(String, u32), ApiError> {
    let position = crate::cursor::decode("after", a)?;
    position
        .split_once(':')
        .and_then(|(k, o)| Some((k.to_owned(), o.parse().ok()?)))
        .filter(|(k, _)| k.len() == 20 && k.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("after: '{a}' is not the `next` of a previous page"),
            )
        })
}

/// `DELETE /v1/quarantine` (admin): one `storeline.quarantine_cleared` record per partition.
pub async fn clear(
    State(state): State<SharedState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state
        .keys
        .authorize(&headers, Scope::Admin, "DELETE /v1/quarantine")?;
    let mut cursor = Vec::new();
    for p in 0..state.log.partitions() {
        let acks =
            crate::ingest::store_routed(&state, vec![quarantine::clear_event(now_ms())], Some(p))
                .await?;
        cursor.extend(acks.iter().map(|a| format!("{}:{}", a.partition, a.offset)));
    }
    Ok(Json(json!({
        "cleared": true,
        "cursor": cursor.join(","),
        "note": "each partition drops the entries before its clear record once it applied it; read with ?min_offset=cursor elsewhere to wait for it",
    }))
    .into_response())
}
