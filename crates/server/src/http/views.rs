//! The views and commands over HTTP: `POST /v1/commands/{name}`, `GET /v1/customers/…`,
//! `GET /v1/orders/{id}`, `GET /v1/inventory/{sku}`.
//!
//! Reads take `?min_offset=`: a command's `offset` (the commerce partition's) or a cursor
//! `p:o[,p:o…]` from any acknowledgement; the read waits until the views have applied it
//! (read-your-writes), up to `engine.read_wait`, then answers 503.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use storeline_engine::CommandError;
use storeline_engine::read;
use storeline_log::EventLog;

use crate::auth::Scope;
use crate::error::ApiError;
use crate::{AppState, SharedState};

/// The status a command's error answers with; the engine says what went wrong, the server how
/// HTTP says it.
fn command_status(e: &CommandError) -> StatusCode {
    match e {
        CommandError::Invalid { .. } => StatusCode::BAD_REQUEST,
        CommandError::UnknownCommand(_) | CommandError::OrderNotFound(_) => StatusCode::NOT_FOUND,
        CommandError::InsufficientStock(_)
        | CommandError::InvalidTransition { .. }
        | CommandError::RefundExceedsPaid { .. }
        | CommandError::OrderExists(_) => StatusCode::CONFLICT,
        CommandError::IdempotencyMismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        // As ingest answered: the appender kept its API error.
        CommandError::Append(a) => match a
            .cause
            .as_deref()
            .and_then(|c| c.downcast_ref::<ApiError>())
        {
            Some(api) => api.status,
            None if a.refused => StatusCode::BAD_REQUEST,
            None => StatusCode::INTERNAL_SERVER_ERROR,
        },
        CommandError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn command_error(e: &CommandError) -> ApiError {
    let (code, message, details) = e.describe();
    let err = ApiError::new(command_status(e), code, message);
    if details.is_null() {
        err
    } else {
        err.with_details(details)
    }
}

pub(crate) fn engine(state: &AppState) -> Result<&crate::Engine, ApiError> {
    state
        .engine
        .get()
        .map(|e| &**e)
        .ok_or_else(|| ApiError::unavailable("the engine is starting; retry"))
}

/// `POST /v1/commands/{name}`.
pub async fn post_command(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = state
        .authorized_body(
            &headers,
            body,
            Scope::Commands,
            "POST /v1/commands",
            1 << 20,
        )
        .await?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("the command body is not JSON: {e}"))
    })?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_header",
                        "Idempotency-Key must be 1 to 255 visible characters",
                    )
                })?;
            Some(k.to_owned())
        }
    };
    let engine = engine(&state)?;
    let started = std::time::Instant::now();
    let result = engine.command(&name, &value, key).await;
    metrics::histogram!("storeline_command_seconds").record(started.elapsed().as_secs_f64());
    let outcome = result.map_err(|e| command_error(&e))?;
    let commerce = engine.commerce_partition();
    let offset = outcome
        .events
        .iter()
        .filter(|e| e["partition"] == commerce)
        .filter_map(|e| e["offset"].as_u64())
        .max();
    // The last position per partition: `?min_offset=` with it waits for all of them.
    let mut last: std::collections::BTreeMap<u64, u64> = Default::default();
    for e in &outcome.events {
        if let (Some(p), Some(o)) = (e["partition"].as_u64(), e["offset"].as_u64()) {
            let v = last.entry(p).or_default();
            *v = (*v).max(o);
        }
    }
    let cursor: Vec<String> = last.iter().map(|(p, o)| format!("{p}:{o}")).collect();
    let mut resp = Json(json!({ "command": name, "events": outcome.events, "offset": offset, "cursor": cursor.join(","), "replayed": outcome.replayed })).into_response();
    if outcome.replayed {
        resp.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(resp)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    min_offset: Option<String>,
    email: Option<String>,
    #[serde(rename = "trait")]
    trait_: Option<String>,
    value: Option<String>,
    pub(crate) limit: Option<usize>,
    /// An aggregate's key (`GET /v1/aggregates/{name}?key=`).
    pub(crate) key: Option<String>,
}

/// Waits for `?min_offset=` (see the module docs).
async fn wait(state: &AppState, q: &ReadQuery) -> Result<(), ApiError> {
    let Some(m) = &q.min_offset else {
        return Ok(());
    };
    let engine = engine(state)?;
    let mut targets = Vec::new();
    for part in m.split(',') {
        let parsed = match part.split_once(':') {
            Some((p, o)) => p.parse::<u32>().ok().zip(o.parse::<u64>().ok()),
            None => part
                .parse::<u64>()
                .ok()
                .map(|o| (engine.commerce_partition(), o)),
        };
        let (p, o) = parsed
            .filter(|(p, _)| *p < state.log.partitions())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("min_offset: '{part}' is neither an offset nor partition:offset"),
                )
            })?;
        targets.push((p, o));
    }
    for (p, o) in targets {
        if !engine
            .wait_applied(p, o, state.config.engine.read_wait)
            .await
        {
            return Err(ApiError::unavailable(format!(
                "the views have not applied partition {p} offset {o} within {}; retry",
                humantime::format_duration(state.config.engine.read_wait)
            )));
        }
    }
    Ok(())
}

pub(crate) fn not_found(code: &'static str, what: String) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, code, what)
}

pub(crate) fn internal(e: storeline_engine::Error) -> ApiError {
    tracing::error!(error = %e, "reading a view failed");
    ApiError::unavailable("the state store cannot be read now; retry")
}

fn query(
    q: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<ReadQuery, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}

pub(crate) type Q = Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>;

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `GET /v1/customers/{id}` by any identity (user id, anonymous id, e-mail).
pub async fn get_customer(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Q,
) -> Result<Response, ApiError> {
    let (_, p) = customer_read(&state, &headers, &id, q).await?;
    Ok(Json(p.to_json(now_ms())).into_response())
}

/// `GET /v1/customers?email=…` or `?trait=plan&value=gold`.
pub async fn find_customers(
    State(state): State<SharedState>,
    headers: HeaderMap,
    q: Q,
) -> Result<Response, ApiError> {
    let (engine, q) = view_read(&state, &headers, "GET /v1/customers", q).await?;
    let limit = q.limit.unwrap_or(20).clamp(1, 100);
    let identities = match (&q.email, &q.trait_, &q.value) {
        (Some(e), None, None) => vec![e.clone()],
        (None, Some(t), Some(v)) => read::by_trait(&*engine.store, t, v, limit * 4)
            .await
            .map_err(internal)?,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "look customers up with ?email=ADDRESS or ?trait=NAME&value=VALUE",
            ));
        }
    };
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for i in identities {
        if out.len() >= limit {
            break;
        }
        if let Some(p) = read::profile(&*engine.store, &i).await.map_err(internal)?
            && seen.insert(p.id())
        {
            out.push(p.to_json(now_ms()));
        }
    }
    Ok(Json(json!({ "customers": out })).into_response())
}

/// The steps of every view read: authorize, parse the query, wait for `?min_offset=`.
pub(crate) async fn view_read<'a>(
    state: &'a AppState,
    headers: &HeaderMap,
    what: &str,
    q: Q,
) -> Result<(&'a crate::Engine, ReadQuery), ApiError> {
    state.keys.authorize(headers, Scope::Read, what)?;
    let q = query(q)?;
    wait(state, &q).await?;
    Ok((engine(state)?, q))
}

/// The steps of every customer read: authorize, wait for `?min_offset=`, find the profile.
pub(crate) async fn customer_read(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    q: Q,
) -> Result<(ReadQuery, read::Profile), ApiError> {
    let (engine, q) = view_read(state, headers, "GET /v1/customers", q).await?;
    let p = read::profile(&*engine.store, id).await.map_err(internal)?;
    let p = p.ok_or_else(|| no_customer(id))?;
    Ok((q, p))
}

fn no_customer(id: &str) -> ApiError {
    not_found(
        "customer_not_found",
        format!("no customer has the identity '{id}'"),
    )
}

/// `GET /v1/customers/{id}/events`: the latest events of every identity, newest first.
pub async fn customer_events(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Q,
) -> Result<Response, ApiError> {
    let (q, p) = customer_read(&state, &headers, &id, q).await?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let mut events = Vec::new();
    for (part, off, _) in p.recent(limit) {
        if let Ok(recs) = state.log.read(part, off, 1).await
            && let Some(r) = recs.first()
        {
            let spliced = storeline_event::splice_position(&r.value, part, r.offset);
            if let Ok(v) = serde_json::from_slice::<Value>(&spliced) {
                events.push(v);
            }
        }
    }
    Ok(Json(json!({ "customer": p.id(), "events": events, "note": "the latest events per identity are kept for the timeline; older ones are in GET /v1/events?subject=" })).into_response())
}

/// `GET /v1/customers/{id}/orders`, newest first.
pub async fn customer_orders(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Q,
) -> Result<Response, ApiError> {
    let (q, p) = customer_read(&state, &headers, &id, q).await?;
    let engine = engine(&state)?;
    let mut orders = Vec::new();
    for o in p
        .order_ids()
        .into_iter()
        .take(q.limit.unwrap_or(50).clamp(1, 500))
    {
        if let Some(v) = read::order(&*engine.store, &o).await.map_err(internal)? {
            orders.push(v);
        }
    }
    Ok(Json(json!({ "customer": p.id(), "orders": orders })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnmergeBody {
    identity: String,
    reason: Option<String>,
}

/// `POST /v1/customers/{id}/unmerge {"identity": …}`: detaches an identity from the profile,
/// keeping the history. The event goes to every partition that owns a link of the identity.
pub async fn unmerge(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = state
        .authorized_body(
            &headers,
            body,
            Scope::Admin,
            "POST /v1/customers/{id}/unmerge",
            64 << 10,
        )
        .await?;
    let b: UnmergeBody = super::json_object(&bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_body",
            format!("expected {{\"identity\": \"…\"}}: {e}"),
        )
    })?;
    let engine = engine(&state)?;
    let p = read::profile(&*engine.store, &id).await.map_err(internal)?;
    let p = p.ok_or_else(|| no_customer(&id))?;
    let identity = storeline_engine::identity_key(&b.identity);
    if !p.identities.contains(&identity) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_merged",
            format!(
                "'{}' is not part of customer '{}' (identities: {})",
                b.identity,
                p.id(),
                p.identities.join(", ")
            ),
        ));
    }
    let owners = storeline_engine::read::link_owners(&*engine.store, &identity)
        .await
        .map_err(internal)?;
    if owners.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_merged",
            format!("'{}' has no merge to undo", b.identity),
        ));
    }
    let now = chrono::Utc::now();
    let mut positions = Vec::new();
    for owner in owners {
        let data = json!({ "identity": identity, "from": p.id(), "reason": b.reason });
        let ev = storeline_engine::build_event(
            format!("unm_{}", ulid::Ulid::new().to_string().to_lowercase()),
            "storeline/api",
            "customer.unmerged",
            Some(identity.clone()),
            now.timestamp_millis(),
            &data,
            None,
        );
        let acks = crate::ingest::store_routed(&state, vec![ev], Some(owner)).await?;
        positions.extend(acks.iter().map(|a| format!("{}:{}", a.partition, a.offset)));
    }
    Ok(
        Json(json!({ "customer": p.id(), "unmerged": identity, "cursor": positions.join(",") }))
            .into_response(),
    )
}

/// `GET /v1/orders/{id}`.
pub async fn get_order(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Q,
) -> Result<Response, ApiError> {
    let (engine, _) = view_read(&state, &headers, "GET /v1/orders", q).await?;
    let o = read::order(&*engine.store, &id).await.map_err(internal)?;
    let o =
        o.ok_or_else(|| not_found("order_not_found", format!("order '{id}' does not exist")))?;
    Ok(Json(o).into_response())
}

/// `GET /v1/inventory/{sku}`.
pub async fn get_inventory(
    State(state): State<SharedState>,
    Path(sku): Path<String>,
    headers: HeaderMap,
    q: Q,
) -> Result<Response, ApiError> {
    let (engine, _) = view_read(&state, &headers, "GET /v1/inventory", q).await?;
    let v = read::inventory(
        &*engine.store,
        &sku,
        state.config.inventory.low_stock_threshold,
    )
    .await
    .map_err(internal)?;
    let v = v.ok_or_else(|| {
        not_found(
            "sku_not_found",
            format!("no stock was ever recorded for SKU '{sku}'"),
        )
    })?;
    Ok(Json(v).into_response())
}

/// `GET /v1/engine`: how far each partition's views are, against the log.
pub async fn engine_status(
    State(state): State<SharedState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state
        .keys
        .authorize(&headers, Scope::Read, "GET /v1/engine")?;
    let engine = engine(&state)?;
    let applied = engine.applied();
    let marks = engine.marks();
    let now = chrono::Utc::now().timestamp_millis();
    let time = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms).map(|t| storeline_event::format_time(&t))
    };
    let parts: Vec<Value> = applied
        .iter()
        .enumerate()
        .map(|(p, a)| {
            let end = state.log.bounds(p as u32).map(|b| b.end).unwrap_or(0);
            let m = marks.get(p).copied().unwrap_or_default();
            json!({
                "partition": p, "applied": a, "log_end": end, "lag": end.saturating_sub(*a),
                "clock": time(m.clock),
                "watermark": m.watermark.and_then(time),
                // How long a due timer has been held back for the watermark (0: none is).
                "watermark_lag_ms": m.held.map_or(0, |d| (now - d).max(0)),
            })
        })
        .collect();
    let lag: u64 = parts.iter().filter_map(|p| p["lag"].as_u64()).sum();
    Ok(Json(json!({ "partitions": parts, "lag": lag, "commerce_partition": engine.commerce_partition(), "state_backend": state.config.state.backend })).into_response())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use storeline_engine::AppendError;

    use super::*;

    /// A command whose events the log could not take answers as ingest would have.
    #[test]
    fn a_failed_append_answers_with_the_status_ingest_gave() {
        let full = ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            "the disk is full",
        );
        let e = CommandError::Append(AppendError {
            refused: false,
            code: "insufficient_storage".into(),
            message: "the disk is full".into(),
            cause: Some(Arc::new(full)),
        });
        let api = command_error(&e);
        assert_eq!(api.status, StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(api.code, "store_failed");
        let lost = CommandError::Append(AppendError::unavailable("internal", "a task panicked"));
        assert_eq!(
            command_error(&lost).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let stock = CommandError::InsufficientStock(Vec::new());
        assert_eq!(command_error(&stock).status, StatusCode::CONFLICT);
        let mismatch = CommandError::IdempotencyMismatch {
            key: "k".into(),
            command: "order.place".into(),
        };
        assert_eq!(
            command_error(&mismatch).status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}
