//! `POST /v1/events`: read the body in any supported framing, validate every event, and store
//! the request all-or-nothing with deduplication.
//!
//! | Content-Type                            | body                          | envelope rules |
//! |-----------------------------------------|-------------------------------|----------------|
//! | `application/json` (or none)            | one event or a JSON array     | plain          |
//! | `application/x-ndjson`, `application/jsonl` | one event per line        | plain          |
//! | `application/cloudevents+json`          | one event (structured mode)   | CloudEvents    |
//! | `application/cloudevents-batch+json`    | a JSON array (batch mode)     | CloudEvents    |
//! | anything, with `ce-specversion` header  | the data (binary mode)        | CloudEvents    |

use std::collections::BTreeMap;

use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;
use bytes::Bytes;
use chrono::Utc;
use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;
use storeline_event::{Defaults, Event, FieldError, Incoming, Mode, Scalar};
use storeline_log::{EventLog, Record, partition_for};

use crate::AppState;
use crate::dedup::{Position, Slot};
use crate::error::ApiError;

/// One problem with one event of a request.
#[derive(Debug, Clone, Serialize)]
pub struct EventError {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub field: String,
    pub reason: String,
}

/// How one event of a request was acknowledged.
#[derive(Debug, Clone, Serialize)]
pub struct Ack {
    pub id: String,
    pub partition: u32,
    pub offset: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// Turns the per-event problems of a request into its 400 answer: `reserved_type` when an event
/// uses a type, source or attribute only Storeline may write, else `invalid_events`.
pub fn invalid(errors: Vec<EventError>, total: usize, reserved: bool) -> ApiError {
    let bad: std::collections::BTreeSet<usize> = errors.iter().map(|e| e.index).collect();
    metrics::counter!("storeline_ingest_events_total", "outcome" => "invalid")
        .increment(total as u64);
    let shown: Vec<_> = errors.iter().take(100).cloned().collect();
    let (code, what) = if reserved {
        (
            "reserved_type",
            "use a type, source or attribute that only Storeline itself writes (see details.errors)",
        )
    } else {
        ("invalid_events", "are invalid")
    };
    ApiError::bad_request(
        code,
        format!(
            "{} of {total} event(s) {what}; nothing was stored. Fix the fields listed in details.errors and resend",
            bad.len()
        ),
    )
    .with_details(json!({ "invalid_events": bad.len(), "errors": shown, "errors_total": errors.len() }))
}

/// Validates one incoming event as ingest does: the envelope, the catalog payload and the
/// limits, then the reserved names. `Err((errors, reserved))`.
pub fn validate_one(
    inc: Incoming,
    mode: Mode,
    defaults: &Defaults,
) -> Result<Event, (Vec<FieldError>, bool)> {
    let reserved = storeline_event::limits::reserved_in(&inc);
    if !reserved.is_empty() {
        return Err((reserved, true));
    }
    Event::from_incoming(inc, mode, defaults).map_err(|e| (e, false))
}

fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

fn unsupported(ct: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!(
            "Content-Type '{ct}' is not supported here: send application/json (an event or an array), \
             application/x-ndjson (one event per line), application/cloudevents+json, \
             application/cloudevents-batch+json, or CloudEvents binary mode (ce-* headers)"
        ),
    )
}

fn json_error(e: &serde_json::Error, what: &str) -> ApiError {
    ApiError::bad_request(
        "invalid_json",
        format!(
            "{what} is not valid JSON: {e} (line {}, column {})",
            e.line(),
            e.column()
        ),
    )
    .with_details(json!({ "line": e.line(), "column": e.column() }))
}

/// Parses and validates a `POST /v1/events` body into events, all or nothing.
pub fn parse_events(
    headers: &HeaderMap,
    body: &[u8],
    state: &AppState,
) -> Result<Vec<Event>, ApiError> {
    let cfg = &state.config.ingest;
    let defaults = Defaults {
        source: cfg.default_source.clone(),
        now: Utc::now(),
    };
    if headers.contains_key("ce-specversion") {
        let inc = binary_mode(headers, body)?;
        return validate_all(vec![(0, None, Ok(inc))], Mode::CloudEvents, &defaults);
    }
    let ct = media_type(headers);
    let (mode, framing) = match ct.as_str() {
        "" | "application/json" | "text/json" => (Mode::Plain, Framing::Json),
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines"
        | "application/jsonlines" => (Mode::Plain, Framing::Lines),
        "application/cloudevents+json" => (Mode::CloudEvents, Framing::One),
        "application/cloudevents-batch+json" => (Mode::CloudEvents, Framing::Array),
        other => return Err(unsupported(other)),
    };
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let framing = match (framing, first) {
        (_, None) => {
            return Err(ApiError::bad_request(
                "empty_body",
                "the request body is empty: send at least one event",
            ));
        }
        (Framing::Json, Some(b'[')) => Framing::Array,
        (Framing::Json, _) => Framing::One,
        (f, _) => f,
    };
    let mut items: Vec<(usize, Option<usize>, Result<Incoming, String>)> = Vec::new();
    let check_size = |index: usize, len: usize| -> Result<(), ApiError> {
        if len > cfg.max_event_bytes {
            return Err(ApiError::too_large(
                &format!("event {index} ({len} bytes)"),
                cfg.max_event_bytes,
            )
            .with_details(json!({ "limit_bytes": cfg.max_event_bytes, "index": index })));
        }
        Ok(())
    };
    match framing {
        Framing::One => {
            check_size(0, body.len())?;
            let inc =
                serde_json::from_slice::<Incoming>(body).map_err(|e| json_error(&e, "the body"))?;
            items.push((0, None, Ok(inc)));
        }
        Framing::Array => {
            if mode == Mode::CloudEvents && first != Some(b'[') {
                return Err(ApiError::bad_request(
                    "invalid_batch",
                    "a CloudEvents batch must be a JSON array of events",
                ));
            }
            let raws: Vec<&RawValue> =
                serde_json::from_slice(body).map_err(|e| json_error(&e, "the body"))?;
            if raws.is_empty() {
                return Err(ApiError::bad_request(
                    "empty_body",
                    "the array is empty: send at least one event",
                ));
            }
            check_count(raws.len(), cfg.max_events_per_request)?;
            for (i, raw) in raws.into_iter().enumerate() {
                check_size(i, raw.get().len())?;
                items.push((
                    i,
                    None,
                    serde_json::from_str::<Incoming>(raw.get()).map_err(|e| not_an_object(&e)),
                ));
            }
        }
        Framing::Lines => {
            let mut index = 0;
            for (line_no, line) in body.split(|&b| b == b'\n').enumerate() {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                check_size(index, line.len())?;
                let parsed = serde_json::from_slice::<Incoming>(line).map_err(|e| {
                    if e.is_syntax() || e.is_eof() {
                        format!("invalid JSON: {e}")
                    } else {
                        not_an_object(&e)
                    }
                });
                items.push((index, Some(line_no + 1), parsed));
                index += 1;
            }
            check_count(items.len(), cfg.max_events_per_request)?;
        }
        Framing::Json => unreachable!("resolved above"),
    }
    validate_all(items, mode, &defaults)
}

fn not_an_object(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    if msg.starts_with("invalid type") {
        "an event must be a JSON object".to_owned()
    } else {
        format!("invalid JSON: {msg}")
    }
}

fn check_count(n: usize, limit: usize) -> Result<(), ApiError> {
    if n > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!("{n} events in one request; the limit is {limit}: split the request"),
        )
        .with_details(json!({ "limit_events": limit })));
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Framing {
    Json,
    One,
    Array,
    Lines,
}

fn validate_all(
    items: Vec<(usize, Option<usize>, Result<Incoming, String>)>,
    mode: Mode,
    defaults: &Defaults,
) -> Result<Vec<Event>, ApiError> {
    let total = items.len();
    let mut events = Vec::with_capacity(total);
    let mut errors = Vec::new();
    let mut reserved = false;
    for (index, line, parsed) in items {
        match parsed {
            Ok(inc) => match validate_one(inc, mode, defaults) {
                Ok(ev) => events.push(ev),
                Err((errs, is_reserved)) => {
                    reserved |= is_reserved;
                    errors.extend(
                        errs.into_iter()
                            .map(|FieldError { field, reason }| EventError {
                                index,
                                line,
                                field,
                                reason,
                            }),
                    )
                }
            },
            Err(reason) => errors.push(EventError {
                index,
                line,
                field: String::new(),
                reason,
            }),
        }
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(invalid(errors, total, reserved))
    }
}

/// CloudEvents HTTP binary mode: attributes in `ce-*` headers, the body is the data.
fn binary_mode(headers: &HeaderMap, body: &[u8]) -> Result<Incoming, ApiError> {
    let mut inc = Incoming::default();
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let value = value.to_str().map_err(|_| {
            ApiError::bad_request("invalid_header", format!("header {name} is not valid text"))
        })?;
        let value = Scalar::Str(percent_decode(value));
        match attr {
            "specversion" => inc.specversion = Some(value),
            "id" => inc.id = Some(value),
            "source" => inc.source = Some(value),
            "type" => inc.ty = Some(value),
            "time" => inc.time = Some(value),
            "subject" => inc.subject = Some(value),
            "partitionkey" => inc.partitionkey = Some(value),
            "dataschema" => inc.dataschema = Some(value),
            "datacontenttype" => {} // the Content-Type header carries it in binary mode
            other => inc.extensions.push((other.to_owned(), value)),
        }
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if !body.is_empty() {
        let is_json = ct.as_deref().is_none_or(|c| {
            let base = c
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            base == "application/json" || base.ends_with("+json") || base == "text/json"
        });
        if is_json {
            let raw: Box<RawValue> =
                serde_json::from_slice(body).map_err(|e| json_error(&e, "the event data"))?;
            inc.data = Some(raw);
        } else {
            inc.data_base64 = Some(Scalar::Str(
                base64::engine::general_purpose::STANDARD.encode(body),
            ));
        }
    }
    inc.datacontenttype = ct.map(Scalar::Str);
    Ok(inc)
}

/// CloudEvents HTTP binding: header values are percent-encoded where needed.
fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_owned())
}

/// Stores validated events: dedup, route to partitions, append in parallel, acknowledge.
///
/// All or nothing for validation; for storage, if one partition's append fails the others' may
/// have succeeded: the error tells the client to retry, and the retry is deduplicated.
pub async fn store(state: &AppState, events: Vec<Event>) -> Result<Vec<Ack>, ApiError> {
    store_routed(state, events, None).await
}

/// [`store`], with every event sent to `partition` when given instead of routed by its key (an
/// unmerge must reach the partition that owns the link it ends).
pub async fn store_routed(
    state: &AppState,
    events: Vec<Event>,
    partition: Option<u32>,
) -> Result<Vec<Ack>, ApiError> {
    let keys: Vec<u128> = events
        .iter()
        .map(|e| state.dedup.key(&e.source, &e.id))
        .collect();
    let (slots, reservation) = loop {
        match state.dedup.reserve(&keys) {
            Ok(r) => break r,
            Err(waits) => {
                for mut w in waits {
                    let _ = w.changed().await;
                }
            }
        }
    };
    let received_at = Utc::now();
    let received_ms = received_at.timestamp_millis();
    let received_text = storeline_event::format_time(&received_at);
    let partitions = state.log.partitions();
    let mut groups: BTreeMap<u32, (Vec<usize>, Vec<Record>)> = BTreeMap::new();
    for (i, ev) in events.iter().enumerate() {
        if slots[i] != Slot::New {
            continue;
        }
        let key = ev.route_key();
        let p = partition.unwrap_or_else(|| partition_for(key.as_bytes(), partitions));
        let g = groups.entry(p).or_default();
        g.0.push(i);
        g.1.push(Record {
            timestamp: received_ms,
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from(ev.to_stored_json_at(&received_text)),
        });
    }
    let appends = groups.into_iter().map(|(p, (idx, records))| {
        let log = &state.log;
        async move { (p, idx, log.append(p, records).await) }
    });
    let results = futures::future::join_all(appends).await;
    let mut positions: Vec<Option<Position>> = vec![None; events.len()];
    let mut stored = Vec::new();
    let mut failure = None;
    for (p, idx, result) in results {
        match result {
            Ok(ack) => {
                for (n, i) in idx.into_iter().enumerate() {
                    let pos = Position {
                        partition: p,
                        offset: ack.base_offset + n as u64,
                    };
                    positions[i] = Some(pos);
                    stored.push((keys[i], pos));
                }
            }
            Err(e) => failure = Some(e),
        }
    }
    state.dedup.complete(reservation, &stored, received_ms);
    if let Some(e) = failure {
        metrics::counter!("storeline_ingest_events_total", "outcome" => "failed")
            .increment((events.len() - stored.len()) as u64);
        metrics::counter!("storeline_ingest_events_total", "outcome" => "stored")
            .increment(stored.len() as u64);
        // Other partitions' appends may have succeeded: say exactly which events are stored, so
        // the client knows the state; retrying the whole request is safe (they are duplicates).
        let stored_events: Vec<_> = positions
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.map(|p| json!({ "index": i, "id": events[i].id, "partition": p.partition, "offset": p.offset })))
            .collect();
        let mut err: ApiError = e.into();
        if !stored_events.is_empty() {
            err.message = format!(
                "{} ({} of {} events were stored before the failure: see details.stored; resending the whole request is safe)",
                err.message,
                stored_events.len(),
                events.len()
            );
        }
        return Err(err.with_details(json!({ "stored": stored_events })));
    }
    let mut acks = Vec::with_capacity(events.len());
    let mut duplicates = 0u64;
    for (i, ev) in events.into_iter().enumerate() {
        let (pos, duplicate) = match slots[i] {
            Slot::New => (positions[i], false),
            Slot::Stored(pos) => (Some(pos), true),
            Slot::SameAs(j) => (positions[j], true),
        };
        duplicates += u64::from(duplicate);
        let pos = pos.unwrap_or(Position {
            partition: 0,
            offset: 0,
        });
        acks.push(Ack {
            id: ev.id,
            partition: pos.partition,
            offset: pos.offset,
            duplicate,
        });
    }
    metrics::counter!("storeline_ingest_events_total", "outcome" => "stored")
        .increment(acks.len() as u64 - duplicates);
    metrics::counter!("storeline_ingest_events_total", "outcome" => "duplicate")
        .increment(duplicates);
    Ok(acks)
}

/// The JSON answer to an accepted request, serialized straight from the acks.
pub fn ack_body(acks: &[Ack]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        accepted: usize,
        duplicates: usize,
        events: &'a [Ack],
    }
    let duplicates = acks.iter().filter(|a| a.duplicate).count();
    let body = Body {
        accepted: acks.len() - duplicates,
        duplicates,
        events: acks,
    };
    serde_json::to_vec(&body).unwrap_or_default()
}
