//! The Segment-compatible tracking API: `/v1/track`, `/identify`, `/page`, `/screen`, `/group`,
//! `/alias` and `/batch`, so a shop instrumented with Segment's or RudderStack's SDKs can point
//! them at Storeline. The write key is the Basic-auth user name (as Segment does) or a Bearer key.
//! Messages are mapped onto the catalog by `storeline_event::segment` and validated exactly as
//! `POST /v1/events` validates events, deduplicated on `messageId` — but not all or nothing:
//! Segment's and RudderStack's SDKs never retry a 400 and drop the whole batch with it, so the
//! valid messages are stored, each invalid one is put in the quarantine with its errors
//! (`GET /v1/quarantine`), and the 200 answer lists the rejected indexes.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};
use storeline_event::segment::{SegmentOptions, map_message};
use storeline_event::{Currency, Defaults, Event, FieldError, Incoming, Mode};

use super::{count_request, read_body, store_detached};
use crate::SharedState;
use crate::auth::Scope;
use crate::error::ApiError;
use crate::ingest::validate_one;

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
        let value = serde_json::from_slice::<Value>(&bytes);
        if !header_key {
            // analytics-python 2.x and others send the write key in the body. A body that is
            // not JSON carries no key: that is a 401 first, as with no key at all.
            let key = value.as_ref().ok().and_then(|v| v.get("writeKey")?.as_str());
            state.keys.authorize_secret(key, Scope::Ingest, &what)?;
        }
        let value = value.map_err(|e| {
            ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
        })?;
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
            return Err(ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_events",
                format!("{} messages; the limit is {}: split the batch", messages.len(), state.config.ingest.max_events_per_request),
            ));
        }
        let opts = SegmentOptions {
            source: state.config.segment.source.clone(),
            default_currency: Currency::parse(&state.config.segment.default_currency)
                .map_err(|e| ApiError::unavailable(format!("segment.default_currency: {e}")))?,
        };
        let defaults = Defaults { source: opts.source.clone(), now: Utc::now() };
        let (events, rejected) = check_messages(kind, &messages, &opts, &defaults, state.config.ingest.max_event_bytes);
        // The SDKs never retry a 400 and drop the whole batch with it: the good messages are
        // stored, each bad one goes to the quarantine with its errors, and the answer lists them.
        let now = Utc::now().timestamp_millis();
        let mut to_store = events;
        let accepted_count = to_store.len();
        for r in &rejected {
            let message = serde_json::to_vec(&messages[r.index]).unwrap_or_default();
            let errors: Vec<(String, String)> = r.errors.iter().map(|e| (e.field.clone(), e.reason.clone())).collect();
            to_store.push(storeline_engine::quarantine::refused_message(
                endpoint, r.index, r.message_id.as_deref(), &errors, &message, now,
            ));
        }
        metrics::counter!("storeline_ingest_events_total", "outcome" => "quarantined")
            .increment(rejected.len() as u64);
        let acks = store_detached(&state, to_store).await?;
        let duplicates = acks[..accepted_count].iter().filter(|a| a.duplicate).count();
        let rejected_json: Vec<Value> = rejected
            .iter()
            .map(|r| json!({ "index": r.index, "message_id": r.message_id, "errors": r.errors.iter().take(20).collect::<Vec<_>>() }))
            .collect();
        Ok(axum::Json(json!({
            "success": true,
            "accepted": accepted_count - duplicates,
            "duplicates": duplicates,
            "rejected": rejected_json,
            "quarantined": rejected.len(),
        }))
        .into_response())
    }
    .await;
    count_request(endpoint, &result);
    result.unwrap_or_else(segment_error)
}

/// A message that could not be accepted, with every problem found.
struct Rejected {
    index: usize,
    message_id: Option<String>,
    errors: Vec<FieldError>,
}

/// Maps and validates every message: the events to store, and the messages refused.
fn check_messages(
    kind: Option<&str>,
    messages: &[Value],
    opts: &SegmentOptions,
    defaults: &Defaults,
    limit: usize,
) -> (Vec<Event>, Vec<Rejected>) {
    let mut events = Vec::with_capacity(messages.len());
    let mut rejected = Vec::new();
    for (index, msg) in messages.iter().enumerate() {
        let message_id = msg
            .get("messageId")
            .and_then(Value::as_str)
            .filter(|m| m.len() <= 256 && storeline_event::limits::check_identifier(m).is_ok())
            .map(str::to_owned);
        let errors = match check_message(kind, msg, opts, defaults, limit) {
            Ok(ev) => {
                events.push(ev);
                continue;
            }
            Err(errors) => errors,
        };
        rejected.push(Rejected {
            index,
            message_id,
            errors,
        });
    }
    (events, rejected)
}

fn check_message(
    kind: Option<&str>,
    msg: &Value,
    opts: &SegmentOptions,
    defaults: &Defaults,
    limit: usize,
) -> Result<Event, Vec<FieldError>> {
    let envelope = map_message(kind, msg, opts)
        .map_err(|e| vec![e])?
        .to_string();
    // The mapped envelope is what would be stored, so that is what the limit measures.
    if envelope.len() > limit {
        return Err(vec![FieldError::new(
            "",
            format!(
                "the message is {} bytes once mapped; the limit is {limit}",
                envelope.len()
            ),
        )]);
    }
    let inc = serde_json::from_str::<Incoming>(&envelope)
        .map_err(|e| vec![FieldError::new("", e.to_string())])?;
    validate_one(inc, Mode::Plain, defaults).map_err(|(e, _)| e)
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
