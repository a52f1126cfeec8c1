//! The Segment-compatible tracking API: `/v1/track`, `/identify`, `/page`, `/screen`, `/group`,
//! `/alias` and `/batch`, so a shop instrumented with Segment's or RudderStack's SDKs can point
//! them at Storeline. The write key is the Basic-auth user name (as Segment does) or a Bearer key.
//! Messages are mapped onto the catalog by `storeline_event::segment` and then stored exactly as
//! `POST /v1/events` stores events: all or nothing, deduplicated on `messageId`.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};
use storeline_event::segment::{SegmentOptions, map_message};
use storeline_event::{Currency, Defaults, Event, Incoming, Mode};

use crate::auth::Scope;
use crate::error::ApiError;
use crate::ingest::{EventError, invalid};
use crate::{SharedState, count_request, read_body, store_detached};

async fn handle(
    state: SharedState,
    headers: HeaderMap,
    body: Body,
    kind: Option<&'static str>,
) -> Response {
    let endpoint = kind.unwrap_or("batch");
    let result = async {
        let what = format!("POST /v1/{endpoint}");
        let header_key = crate::auth::KeyStore::has_header_key(&headers);
        if header_key {
            state.keys.authorize(&headers, Scope::Ingest, &what)?;
        }
        let bytes = read_body(&headers, body, state.config.ingest.max_body_bytes).await?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
        })?;
        if !header_key {
            // analytics-python 2.x and others send the write key in the body.
            let key = value.get("writeKey").and_then(Value::as_str);
            state.keys.authorize_secret(key, Scope::Ingest, &what)?;
        }
        let messages: Vec<Value> = match kind {
            Some(_) => vec![value],
            None => match value {
                Value::Object(mut o) => match o.remove("batch") {
                    Some(Value::Array(a)) => a,
                    _ => {
                        return Err(ApiError::bad_request(
                            "invalid_batch",
                            "a Segment batch is {\"batch\": [messages…]}: the batch array is missing",
                        ));
                    }
                },
                _ => return Err(ApiError::bad_request("invalid_batch", "a Segment batch must be a JSON object")),
            },
        };
        if messages.len() > state.config.ingest.max_events_per_request {
            return Err(ApiError::bad_request(
                "too_many_events",
                format!("{} messages; the limit is {}", messages.len(), state.config.ingest.max_events_per_request),
            ));
        }
        let opts = SegmentOptions {
            source: state.config.segment.source.clone(),
            default_currency: Currency::parse(&state.config.segment.default_currency)
                .map_err(|e| ApiError::unavailable(format!("segment.default_currency: {e}")))?,
        };
        let defaults = Defaults { source: opts.source.clone(), now: Utc::now() };
        let total = messages.len();
        let mut events = Vec::with_capacity(total);
        let mut errors = Vec::new();
        let limit = state.config.ingest.max_event_bytes;
        for (index, msg) in messages.iter().enumerate() {
            let envelope = match map_message(kind, msg, &opts) {
                Ok(envelope) => envelope.to_string(),
                Err(e) => {
                    errors.push(EventError { index, line: None, field: e.field, reason: e.reason });
                    continue;
                }
            };
            // The mapped envelope is what would be stored, so that is what the limit measures.
            if envelope.len() > limit {
                return Err(ApiError::too_large(&format!("message {index} ({} bytes)", envelope.len()), limit));
            }
            let checked = serde_json::from_str::<Incoming>(&envelope)
                .map_err(|e| vec![storeline_event::FieldError::new("", e.to_string())])
                .and_then(|inc| Event::from_incoming(inc, Mode::Plain, &defaults));
            match checked {
                Ok(ev) => events.push(ev),
                Err(errs) => errors.extend(
                    errs.into_iter().map(|e| EventError { index, line: None, field: e.field, reason: e.reason }),
                ),
            }
        }
        if !errors.is_empty() {
            return Err(invalid(errors, total));
        }
        let acks = store_detached(&state, events).await?;
        let duplicates = acks.iter().filter(|a| a.duplicate).count();
        Ok(axum::Json(json!({ "success": true, "accepted": acks.len() - duplicates, "duplicates": duplicates }))
            .into_response())
    }
    .await;
    count_request(endpoint, &result);
    result.unwrap_or_else(segment_error)
}

/// Our error shape plus Segment's top-level `code` and `message`, which Segment's libraries
/// read to report a refused batch.
fn segment_error(e: ApiError) -> Response {
    let status = e.status;
    let mut body = json!({ "error": { "code": e.code, "message": e.message }, "code": e.code, "message": e.message });
    if let Some(d) = e.details {
        body["error"]["details"] = d;
    }
    let mut response = (status, axum::Json(body)).into_response();
    crate::error::set_retry_after(&mut response, e.retry_after);
    response
}

macro_rules! endpoint {
    ($name:ident, $kind:expr) => {
        pub async fn $name(
            State(state): State<SharedState>,
            headers: HeaderMap,
            body: Body,
        ) -> Response {
            handle(state, headers, body, $kind).await
        }
    };
}

endpoint!(track, Some("track"));
endpoint!(identify, Some("identify"));
endpoint!(page, Some("page"));
endpoint!(screen, Some("screen"));
endpoint!(group, Some("group"));
endpoint!(alias, Some("alias"));
endpoint!(batch, None);
