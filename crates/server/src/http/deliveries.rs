//! Delivery over HTTP and its start: opening the delivery store, starting the worker with the
//! connectors of the trigger file in force (its window on the rest of Storeline is
//! `adapters.rs`: `ServerHost`), and the endpoints
//!
//! - `GET  /v1/deliveries`              list, filtered by connector, status, customer and time
//! - `GET  /v1/deliveries/{id}`         one delivery with every attempt
//! - `POST /v1/deliveries/redrive`      send dead deliveries again, by ids or by filter (admin)
//! - `GET  /v1/connectors`              each connector's state, circuit, counts
//! - `POST /v1/connectors/{name}/enable` re-enable a connector disabled for failing (admin)

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use storeline_connector::Worker;
use storeline_connector::store::{DeliveryStore, Filter, Status};
use storeline_connector::worker::Redrive;
use storeline_log::EventLog;

use crate::SharedState;
use crate::auth::Scope;
use crate::error::ApiError;

/// Opens the delivery store: a SQLite file of its own beside the state store, or a schema of
/// its own (`{schema}_delivery`) in the PostgreSQL database, so the engine's digest covers only
/// what the log determines.
pub async fn open_delivery_store(
    config: &crate::Config,
) -> Result<storeline_state::Store, storeline_state::Error> {
    Ok(match config.state.backend {
        crate::StateBackend::Sqlite => storeline_state::Store::Sqlite(
            storeline_state::SqliteStore::open(&config.data_dir.join("delivery.db")).await?,
        ),
        crate::StateBackend::Postgres => {
            let pg = storeline_state::PostgresConfig {
                url: config.state.postgres.url.clone(),
                schema: format!("{}_delivery", config.state.postgres.schema),
            };
            storeline_state::Store::Postgres(storeline_state::PostgresStore::connect(&pg).await?)
        }
    })
}

/// Starts the worker with the connectors of the trigger file in force.
pub(crate) async fn start_worker(
    state: &SharedState,
    store: Arc<storeline_state::Store>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Worker, String> {
    let engine = crate::http::views::engine(state).map_err(|e| e.message)?;
    let source = crate::trigger_file::current_source(state)
        .await
        .map_err(|e| e.message)?;
    let defs = match source {
        Some(src) => crate::trigger_file::installed_connectors(&src, &state.config.data_dir),
        None => Vec::new(),
    };
    let config = storeline_connector::WorkerConfig {
        partitions: state.log.partitions(),
        ..Default::default()
    };
    Worker::start(
        Arc::new(DeliveryStore::new(store)),
        Arc::new(crate::adapters::ServerHost(Arc::clone(state))),
        engine.applied_watches(),
        defs,
        config,
        shutdown,
    )
    .await
    .map_err(|e| e.to_string())
}

fn store_error(e: storeline_connector::Error) -> ApiError {
    tracing::error!(error = %e, "reading deliveries failed");
    ApiError::unavailable("the delivery store cannot be read now; retry")
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    connector: Option<String>,
    status: Option<String>,
    customer: Option<String>,
    /// RFC 3339 or ms since the epoch: deliveries created at or after.
    from: Option<String>,
    /// Created at or before.
    to: Option<String>,
    limit: Option<usize>,
    /// The `next` of the previous page.
    after: Option<String>,
}

fn time_param(name: &str, v: &Option<String>) -> Result<Option<i64>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(Some(ms));
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| Some(t.timestamp_millis()))
        .map_err(|_| {
            ApiError::bad_request(
                "invalid_query",
                format!("{name}: expected an RFC 3339 time or ms since the epoch, got '{v}'"),
            )
        })
}

fn filter_of(q: &ListQuery) -> Result<Filter, ApiError> {
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("status: expected pending, delivered or dead, got '{s}'"),
            )
        })?),
    };
    Ok(Filter {
        connector: q.connector.clone(),
        status,
        customer: q.customer.clone(),
        from: time_param("from", &q.from)?,
        to: time_param("to", &q.to)?,
    })
}

/// ms since the epoch as an RFC 3339 time with milliseconds.
fn time(ms: Option<i64>) -> Option<String> {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

fn summary(r: &storeline_connector::store::Record) -> Value {
    json!({
        "id": r.id, "connector": r.connector, "channel": r.channel, "template": r.template,
        "customer": r.customer, "trigger": r.trigger, "status": r.status.as_str(),
        "attempts": r.attempts, "created_at": time(Some(r.created_at)),
        "next_attempt_at": time(r.next_at.filter(|_| r.status == Status::Pending)),
        "delivered_at": time(r.delivered_at), "last_error": r.last_error,
        "redriven": r.redriven, "partition": r.partition,
    })
}

fn parse_query(
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<ListQuery, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}

/// `GET /v1/deliveries`.
pub async fn list(
    State(state): State<SharedState>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    state
        .keys
        .authorize(&headers, Scope::Read, "GET /v1/deliveries")?;
    let q = parse_query(q)?;
    let f = filter_of(&q)?;
    // A page position comes from a previous page's `next`, opaque to the client.
    let after = q
        .after
        .as_deref()
        .map(|a| crate::cursor::decode("after", a))
        .transpose()?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let w = state.delivery_worker()?;
    let (recs, next) = w
        .store
        .list(&f, after.as_deref(), limit)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({
        "deliveries": recs.iter().map(summary).collect::<Vec<_>>(),
        "next": next.as_deref().map(crate::cursor::encode),
    }))
    .into_response())
}

/// `GET /v1/deliveries/{id}`: the delivery, what was sent, and every attempt.
pub async fn get(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state
        .keys
        .authorize(&headers, Scope::Read, "GET /v1/deliveries/{id}")?;
    let w = state.delivery_worker()?;
    let Some(r) = w.store.get(&id).await.map_err(store_error)? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "delivery_not_found",
            format!("no delivery has the id '{id}'"),
        ));
    };
    let attempts = w.store.attempts(&id).await.map_err(store_error)?;
    let mut v = summary(&r);
    v["data"] = Value::Object(r.data.clone());
    v["event"] = r.event.clone();
    v["run"] = json!(r.run);
    v["attempt_log"] = json!(
        attempts
            .iter()
            .map(|a| json!({
                "n": a.n,
                "at": time(Some(a.at)),
                "duration_ms": a.ms, "outcome": a.outcome, "detail": a.detail,
                "retry_after_ms": a.retry_after_ms,
                "next_attempt_at": time(a.next_at),
            }))
            .collect::<Vec<_>>()
    );
    Ok(Json(v).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedriveBody {
    #[serde(default)]
    ids: Option<Vec<String>>,
    #[serde(default)]
    connector: Option<String>,
    #[serde(default)]
    customer: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
}

/// `POST /v1/deliveries/redrive` (admin): `{"ids": [...]}` or a filter
/// (`connector`, `customer`, `from`, `to`; `{}` redrives the whole dead-letter queue).
pub async fn redrive(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = state
        .authorized_body(
            &headers,
            body,
            Scope::Admin,
            "POST /v1/deliveries/redrive",
            1 << 20,
        )
        .await?;
    let b: RedriveBody = super::json_object(if bytes.is_empty() { b"{}" } else { &bytes })
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_body",
                format!("expected {{\"ids\": [...]}} or a filter {{\"connector\", \"customer\", \"from\", \"to\"}}: {e}"),
            )
        })?;
    let what = match b.ids {
        Some(ids) => {
            if b.connector.is_some() || b.customer.is_some() || b.from.is_some() || b.to.is_some() {
                return Err(ApiError::bad_request(
                    "invalid_body",
                    "give either `ids` or a filter, not both",
                ));
            }
            Redrive::Ids(ids)
        }
        None => Redrive::Filter(Filter {
            connector: b.connector,
            status: Some(Status::Dead),
            customer: b.customer,
            from: time_param("from", &b.from)?,
            to: time_param("to", &b.to)?,
        }),
    };
    let n = state
        .delivery_worker()?
        .redrive(what)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({ "redriven": n })).into_response())
}

/// `GET /v1/connectors`.
pub async fn connectors(
    State(state): State<SharedState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state
        .keys
        .authorize(&headers, Scope::Read, "GET /v1/connectors")?;
    Ok(Json(json!({ "connectors": state.delivery_worker()?.status() })).into_response())
}

/// `POST /v1/connectors/{name}/enable` (admin).
pub async fn enable(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state
        .keys
        .authorize(&headers, Scope::Admin, "POST /v1/connectors/{name}/enable")?;
    let w = state.delivery_worker()?;
    if !w.status().iter().any(|c| c.name == name) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "connector_not_found",
            format!("no connector named '{name}'"),
        ));
    }
    let was = w.enable(&name).await.map_err(store_error)?;
    Ok(Json(json!({ "connector": name, "enabled": true, "was_disabled": was })).into_response())
}
