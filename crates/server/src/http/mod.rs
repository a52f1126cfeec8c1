//! The HTTP layer: every route in one table ([`routes`]), the router over it, and the
//! handlers, one module per resource. A handler with a body starts with
//! `AppState::authorized_body` (scope, then the body up to a limit); the shared reading of
//! bodies and JSON objects, detached storing and request counting are here.
//!
//! ```text
//!  events.rs      GET /v1/events, /v1/stream           segment.rs  the Segment-compatible API
//!  views.rs       customers, orders, inventory, engine, POST /v1/commands
//!  triggers.rs    GET/PUT /v1/triggers, journeys, aggregates
//!  deliveries.rs  deliveries, redrive, connectors      quarantine.rs  GET/DELETE /v1/quarantine
//!  ops.rs         health, readiness, metrics, openapi.json, fallbacks
//! ```

pub(crate) mod deliveries;
pub(crate) mod events;
pub(crate) mod ops;
mod quarantine;
mod segment;
pub(crate) mod triggers;
pub(crate) mod views;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};

use crate::auth::Scope;
use crate::error::ApiError;
use crate::{SharedState, ingest};

/// One route: its method as the OpenAPI document names it (lowercase), its path, its handler.
type Route = (&'static str, &'static str, MethodRouter<SharedState>);

/// Every route of the API, in one place: [`router`] serves them and a unit test checks that
/// `openapi.json` describes each (so a route added without documentation fails the tests).
fn routes(metrics: metrics_exporter_prometheus::PrometheusHandle) -> Vec<Route> {
    vec![
        ("post", "/v1/events", post(post_events)),
        ("get", "/v1/events", get(events::get_events)),
        ("get", "/v1/stream", get(events::stream)),
        ("post", "/v1/track", post(segment::track)),
        ("post", "/v1/identify", post(segment::identify)),
        ("post", "/v1/page", post(segment::page)),
        ("post", "/v1/screen", post(segment::screen)),
        ("post", "/v1/group", post(segment::group)),
        ("post", "/v1/alias", post(segment::alias)),
        ("post", "/v1/batch", post(segment::batch)),
        ("post", "/v1/import", post(segment::batch)),
        // Documented per command: /v1/commands/order.place, … (one body schema each).
        ("post", COMMANDS_ROUTE, post(views::post_command)),
        ("get", "/v1/customers", get(views::find_customers)),
        ("get", "/v1/customers/{id}", get(views::get_customer)),
        (
            "get",
            "/v1/customers/{id}/events",
            get(views::customer_events),
        ),
        (
            "get",
            "/v1/customers/{id}/orders",
            get(views::customer_orders),
        ),
        ("post", "/v1/customers/{id}/unmerge", post(views::unmerge)),
        ("get", "/v1/orders/{id}", get(views::get_order)),
        ("get", "/v1/inventory/{sku}", get(views::get_inventory)),
        ("get", "/v1/engine", get(views::engine_status)),
        ("get", "/v1/triggers", get(triggers::get_triggers)),
        ("put", "/v1/triggers", put(triggers::put_triggers)),
        (
            "get",
            "/v1/customers/{id}/journeys",
            get(triggers::journeys),
        ),
        ("get", "/v1/aggregates", get(triggers::list_aggregates)),
        ("get", "/v1/aggregates/{name}", get(triggers::get_aggregate)),
        ("get", "/v1/deliveries", get(deliveries::list)),
        ("post", "/v1/deliveries/redrive", post(deliveries::redrive)),
        ("get", "/v1/deliveries/{id}", get(deliveries::get)),
        ("get", "/v1/connectors", get(deliveries::connectors)),
        (
            "post",
            "/v1/connectors/{name}/enable",
            post(deliveries::enable),
        ),
        ("get", "/v1/quarantine", get(quarantine::list)),
        ("delete", "/v1/quarantine", delete(quarantine::clear)),
        ("get", "/healthz", get(ops::healthz)),
        ("get", "/readyz", get(ops::readyz)),
        ("get", "/v1/openapi.json", get(ops::openapi)),
        (
            "get",
            "/metrics",
            get(move |s: State<SharedState>, h: HeaderMap| ops::metrics(s, h, metrics.clone())),
        ),
    ]
}

/// The route of `POST /v1/commands/{name}`.
const COMMANDS_ROUTE: &str = "/v1/commands/{name}";

pub(crate) fn router(
    state: SharedState,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> Router {
    let mut router = Router::new();
    // A path given twice (GET and PUT /v1/triggers) gets both methods.
    for (_, path, handler) in routes(metrics) {
        router = router.route(path, handler);
    }
    router
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(tower_http::decompression::RequestDecompressionLayer::new())
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// Reads a request body up to the configured limit; larger is 413 with the limit.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let compressed = headers.contains_key(axum::http::header::CONTENT_ENCODING);
    if let Some(n) = declared
        && n > limit
        && !compressed
    {
        return Err(ApiError::too_large(
            &format!("the request body ({n} bytes)"),
            limit,
        ));
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let text = format!(
            "{e}: {}",
            std::error::Error::source(&e)
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        if text.contains("length limit") {
            ApiError::too_large("the request body", limit)
        } else {
            ApiError::bad_request(
                "unreadable_body",
                format!("could not read the request body: {text}"),
            )
        }
    })
}

/// A JSON body that must be an object. serde's derived structs also take an array of the field
/// values in order (`[null, null]` would be a redrive of everything): no client means that.
pub(crate) fn json_object<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<T> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        return Err(serde::de::Error::custom("the body must be a JSON object"));
    }
    serde_json::from_slice(bytes)
}

/// Runs a request's storing in its own task, so a client that disconnects mid-request cannot
/// cancel an append half-way: what was acknowledged to the log is also recorded for dedup.
pub(crate) async fn store_detached(
    state: &SharedState,
    events: Vec<storeline_event::Event>,
) -> Result<Vec<ingest::Ack>, ApiError> {
    let st = Arc::clone(state);
    tokio::spawn(async move { ingest::store(&st, events).await })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "ingest task failed");
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        })?
}

pub(crate) fn count_request(endpoint: &'static str, result: &Result<Response, ApiError>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) => e.code,
    };
    metrics::counter!("storeline_ingest_requests_total", "endpoint" => endpoint, "outcome" => outcome).increment(1);
}

async fn post_events(State(state): State<SharedState>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let result = async {
        let limit = state.config.ingest.max_body_bytes;
        let bytes = state
            .authorized_body(&headers, body, Scope::Ingest, "POST /v1/events", limit)
            .await?;
        let events = ingest::parse_events(&headers, &bytes, &state)?;
        let acks = store_detached(&state, events).await?;
        let body = ingest::ack_body(&acks);
        Ok((
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response())
    }
    .await;
    metrics::histogram!("storeline_ingest_request_seconds").record(started.elapsed().as_secs_f64());
    count_request("events", &result);
    result.unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route is in the served OpenAPI document with its method; the commands route is
    /// documented per command name.
    #[test]
    fn the_openapi_document_describes_every_route() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../openapi.json")).expect("openapi.json is JSON");
        let paths = &doc["paths"];
        let mut missing = Vec::new();
        for (method, path, _) in routes(ops::metrics_handle()) {
            let documented: Vec<String> = if path == COMMANDS_ROUTE {
                storeline_engine::COMMANDS
                    .iter()
                    .map(|name| format!("/v1/commands/{name}"))
                    .collect()
            } else {
                vec![path.to_owned()]
            };
            for p in documented {
                if paths[&p][method].get("responses").is_none() {
                    missing.push(format!("{} {p}", method.to_uppercase()));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "not in crates/server/src/openapi.json: {missing:?}"
        );
        // And nothing documented that is not served.
        let served: std::collections::BTreeSet<String> = routes(ops::metrics_handle())
            .iter()
            .map(|(_, path, _)| path.to_string())
            .collect();
        for (p, _) in paths.as_object().expect("paths is an object") {
            assert!(
                served.contains(p)
                    || p.strip_prefix("/v1/commands/")
                        .is_some_and(|n| storeline_engine::COMMANDS.contains(&n)),
                "{p} is documented but not served"
            );
        }
    }
}
