//! Reading events back: `GET /v1/events` (paged history) and `GET /v1/stream` (Server-Sent
//! Events, live tail).
//!
//! Both walk the partitions with a [`Merger`] that interleaves them by arrival time, and both
//! express "where am I" as a [`Cursor`]: `partition:next_offset` pairs, e.g. `0:15,1:0,2:7`. A
//! page's `next_cursor` and an SSE event's `id` are cursors, so paging and `Last-Event-ID`
//! resumption are the same mechanism and lose nothing between pages or reconnects.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::DateTime;
use futures::Stream;
use serde::Deserialize;
use serde_json::json;
use storeline_event::splice_position;
use storeline_log::{EventLog, StoredRecord};

use crate::auth::Scope;
use crate::error::ApiError;
use crate::{Log, SharedState};

const READ_CHUNK: usize = 256;
const MAX_LIMIT: usize = 1000;
/// Records a page may scan for filter matches before it returns what it has.
const SCAN_BUDGET: usize = 100_000;

/// Next offset per selected partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(pub Vec<(u32, u64)>);

impl Cursor {
    pub fn parse(s: &str, partitions: u32) -> Result<Cursor, ApiError> {
        let bad = || {
            ApiError::bad_request(
                "invalid_cursor",
                format!(
                    "cursor '{s}' is not valid: expected partition:offset pairs such as 0:15,1:0"
                ),
            )
        };
        let mut out = Vec::new();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (p, o) = part.split_once(':').ok_or_else(bad)?;
            let p: u32 = p.trim().parse().map_err(|_| bad())?;
            let o: u64 = o.trim().parse().map_err(|_| bad())?;
            if p >= partitions {
                return Err(ApiError::bad_request(
                    "invalid_cursor",
                    format!("cursor names partition {p}, but there are {partitions}"),
                ));
            }
            out.push((p, o));
        }
        if out.is_empty() {
            return Err(bad());
        }
        out.sort_unstable();
        out.dedup_by_key(|x| x.0);
        Ok(Cursor(out))
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (p, o)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{p}:{o}")?;
        }
        Ok(())
    }
}

/// Which events a reader wants.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    types: Vec<String>,
    subject: Option<String>,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow, default)]
    subject: Option<Cow<'a, str>>,
}

impl Filter {
    fn new(types: Option<&str>, subject: Option<String>) -> Filter {
        let types = types
            .map(|t| {
                t.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Filter { types, subject }
    }

    fn is_empty(&self) -> bool {
        self.types.is_empty() && self.subject.is_none()
    }

    /// `type=order.*` matches every type starting with `order.`.
    fn matches(&self, stored: &[u8]) -> bool {
        if self.is_empty() {
            return true;
        }
        let Ok(head) = serde_json::from_slice::<Head<'_>>(stored) else {
            return false;
        };
        let type_ok = self.types.is_empty()
            || self.types.iter().any(|t| match t.strip_suffix('*') {
                Some(prefix) => head.ty.starts_with(prefix),
                None => head.ty == *t,
            });
        let subject_ok = self
            .subject
            .as_deref()
            .is_none_or(|s| head.subject.as_deref() == Some(s));
        type_ok && subject_ok
    }
}

/// A stored record as the reader may see it: for keys that are not admin, the trigger files
/// of `storeline.triggers` records without their connector secrets (records stored before
/// secrets were sealed hold them in plain text).
fn view(stored: &[u8], redact: bool) -> Cow<'_, [u8]> {
    if redact {
        crate::secrets::read_view(stored)
    } else {
        Cow::Borrowed(stored)
    }
}

/// Interleaves partitions by record timestamp (then partition), from a cursor, up to the ends
/// it was last refreshed to.
pub struct Merger {
    /// Records fetched per partition at a time.
    chunk: usize,
    positions: Vec<(u32, u64)>,
    ends: Vec<u64>,
    buffers: Vec<VecDeque<StoredRecord>>,
}

impl Merger {
    /// `chunk`: records to fetch per partition at a time (a small page needs no more than its
    /// size from each partition).
    pub fn new(cursor: Cursor, chunk: usize) -> Merger {
        let n = cursor.0.len();
        Merger {
            chunk: chunk.clamp(1, READ_CHUNK),
            positions: cursor.0,
            ends: vec![0; n],
            buffers: (0..n).map(|_| VecDeque::new()).collect(),
        }
    }

    pub fn cursor(&self) -> Cursor {
        Cursor(self.positions.clone())
    }

    /// Re-reads each partition's end; a position below the start (trimmed) moves up to it.
    pub fn refresh(&mut self, log: &Log) -> Result<(), ApiError> {
        for (i, (p, pos)) in self.positions.iter_mut().enumerate() {
            let b = log.bounds(*p)?;
            self.ends[i] = b.end;
            if *pos < b.start {
                *pos = b.start;
                self.buffers[i].clear();
            }
            if *pos > b.end {
                return Err(ApiError::bad_request(
                    "invalid_cursor",
                    format!(
                        "the cursor is at offset {pos} of partition {p}, beyond its end {}",
                        b.end
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn exhausted(&self) -> bool {
        self.positions
            .iter()
            .zip(&self.ends)
            .all(|((_, pos), end)| pos >= end)
    }

    /// The next record in time order, or None when every partition is at its end.
    pub async fn next(&mut self, log: &Log) -> Result<Option<(u32, StoredRecord)>, ApiError> {
        for i in 0..self.positions.len() {
            let (p, pos) = self.positions[i];
            if self.buffers[i].is_empty() && pos < self.ends[i] {
                let want = self.chunk.min((self.ends[i] - pos) as usize);
                self.buffers[i].extend(log.read(p, pos, want).await?);
            }
        }
        let pick = (0..self.positions.len())
            .filter_map(|i| {
                self.buffers[i]
                    .front()
                    .map(|r| (r.timestamp, self.positions[i].0, i))
            })
            .min();
        let Some((_, p, i)) = pick else {
            return Ok(None);
        };
        let rec = self.buffers[i]
            .pop_front()
            .expect("picked a non-empty buffer");
        self.positions[i].1 = rec.offset + 1;
        Ok(Some((p, rec)))
    }
}

fn parse_time(field: &str, s: &str) -> Result<i64, ApiError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_query",
                format!(
                    "{field}: '{s}' is not an RFC 3339 timestamp ({e}), e.g. 2026-11-21T10:00:00Z"
                ),
            )
        })
}

/// Where reading starts when there is no cursor.
enum From {
    Earliest,
    Latest,
    Time(i64),
    Offset(u64),
}

async fn start_cursor(log: &Log, only: Option<u32>, from: From) -> Result<Cursor, ApiError> {
    let n = log.partitions();
    if let Some(p) = only
        && p >= n
    {
        return Err(storeline_log::Error::NoSuchPartition {
            partition: p,
            partitions: n,
        }
        .into());
    }
    let selected: Vec<u32> = match only {
        Some(p) => vec![p],
        None => (0..n).collect(),
    };
    let mut out = Vec::with_capacity(selected.len());
    for p in selected {
        let b = log.bounds(p)?;
        let o = match from {
            From::Earliest => b.start,
            From::Latest => b.end,
            From::Time(t) => log.offset_for_time(p, t).await?,
            From::Offset(o) => o,
        };
        out.push((p, o));
    }
    Ok(Cursor(out))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    partition: Option<u32>,
    offset: Option<u64>,
    since: Option<String>,
    until: Option<String>,
    #[serde(rename = "type")]
    ty: Option<String>,
    subject: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /v1/events`: a page of stored events in arrival order.
pub async fn get_events(
    State(state): State<SharedState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let who = state
        .keys
        .authorize(&headers, Scope::Read, "GET /v1/events")?;
    let redact = !who.allows(Scope::Admin);
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit: must be between 1 and {MAX_LIMIT}, got {limit}"),
        ));
    }
    if q.offset.is_some() && q.partition.is_none() {
        return Err(ApiError::bad_request(
            "invalid_query",
            "offset: needs partition (offsets are per partition)",
        ));
    }
    let until = q
        .until
        .as_deref()
        .map(|s| parse_time("until", s))
        .transpose()?;
    let log = &state.log;
    let cursor = match (&q.cursor, q.offset, &q.since) {
        (Some(c), _, _) => Cursor::parse(c, log.partitions())?,
        (None, Some(o), _) => start_cursor(log, q.partition, From::Offset(o)).await?,
        (None, None, Some(s)) => {
            start_cursor(log, q.partition, From::Time(parse_time("since", s)?)).await?
        }
        (None, None, None) => start_cursor(log, q.partition, From::Earliest).await?,
    };
    let filter = Filter::new(q.ty.as_deref(), q.subject);
    // Unfiltered, a page takes at most `limit` records from any partition; filtered, it may
    // have to scan many more, so it reads in full chunks.
    let chunk = if filter.is_empty() { limit } else { READ_CHUNK };
    let mut merger = Merger::new(cursor, chunk);
    merger.refresh(log)?;
    let mut body = Vec::with_capacity(limit * 400);
    body.extend_from_slice(b"{\"events\":[");
    let mut count = 0;
    let mut scanned = 0;
    let mut reached_until = false;
    while count < limit && scanned < SCAN_BUDGET {
        let Some((p, rec)) = merger.next(log).await? else {
            break;
        };
        scanned += 1;
        if let Some(u) = until
            && rec.timestamp > u
        {
            // Put it back: the cursor must not skip it.
            reached_until = true;
            for pos in &mut merger.positions {
                if pos.0 == p {
                    pos.1 = rec.offset;
                }
            }
            break;
        }
        if filter.matches(&rec.value) {
            if count > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&splice_position(&view(&rec.value, redact), p, rec.offset));
            count += 1;
        }
    }
    let has_more = !reached_until && !merger.exhausted();
    let tail =
        json!({ "next_cursor": merger.cursor().to_string(), "has_more": has_more, "count": count });
    body.extend_from_slice(b"],");
    let tail = tail.to_string();
    body.extend_from_slice(&tail.as_bytes()[1..]);
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    partition: Option<u32>,
    #[serde(rename = "type")]
    ty: Option<String>,
    subject: Option<String>,
    /// `now` (default), `earliest`, or an RFC 3339 time.
    from: Option<String>,
    cursor: Option<String>,
}

/// `GET /v1/stream`: Server-Sent Events from a point on, then the live tail. Each event's `id` is
/// a cursor; reconnecting with `Last-Event-ID` resumes right after it.
pub async fn stream(
    State(state): State<SharedState>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let who = state
        .keys
        .authorize(&headers, Scope::Read, "GET /v1/stream")?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let log = &state.log;
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let cursor = match (last_id.or(q.cursor), q.from.as_deref()) {
        (Some(c), _) => Cursor::parse(&c, log.partitions())?,
        (None, None | Some("now" | "latest")) => {
            start_cursor(log, q.partition, From::Latest).await?
        }
        (None, Some("earliest")) => start_cursor(log, q.partition, From::Earliest).await?,
        (None, Some(t)) => {
            start_cursor(log, q.partition, From::Time(parse_time("from", t)?)).await?
        }
    };
    let mut merger = Merger::new(cursor, READ_CHUNK);
    merger.refresh(log)?;
    let watchers = merger
        .positions
        .iter()
        .map(|(p, _)| log.watch(*p))
        .collect::<Result<Vec<_>, _>>()?;
    let filter = Filter::new(q.ty.as_deref(), q.subject);
    let st = StreamState {
        state: state.clone(),
        merger,
        watchers,
        filter,
        redact: !who.allows(Scope::Admin),
        shutdown: state.shutdown.subscribe(),
    };
    metrics::gauge!("storeline_stream_clients").increment(1.0);
    let events = futures::stream::unfold(st, |mut st| async move {
        let event = st.next_event().await;
        event.map(|e| (Ok(e), st))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

struct StreamState {
    state: SharedState,
    merger: Merger,
    watchers: Vec<tokio::sync::watch::Receiver<u64>>,
    filter: Filter,
    /// Not an admin key: trigger files are shown without their secrets.
    redact: bool,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Drop for StreamState {
    fn drop(&mut self) {
        metrics::gauge!("storeline_stream_clients").decrement(1.0);
    }
}

impl StreamState {
    /// The next matching event, waiting for the tail as needed; None ends the stream.
    async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if *self.shutdown.borrow() {
                return None;
            }
            for w in &mut self.watchers {
                w.borrow_and_update();
            }
            if self.merger.refresh(&self.state.log).is_err() {
                return None;
            }
            loop {
                match self.merger.next(&self.state.log).await {
                    Ok(Some((p, rec))) => {
                        if self.filter.matches(&rec.value) {
                            let data =
                                splice_position(&view(&rec.value, self.redact), p, rec.offset);
                            let data = String::from_utf8(data).unwrap_or_default();
                            return Some(
                                SseEvent::default()
                                    .id(self.merger.cursor().to_string())
                                    .data(data),
                            );
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e.message, "ending an event stream on a read error");
                        return None;
                    }
                }
            }
            let changed = futures::future::select_all(
                self.watchers.iter_mut().map(|w| Box::pin(w.changed())),
            );
            tokio::select! {
                (result, _, _) = changed => if result.is_err() { return None },
                _ = self.shutdown.changed() => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor::parse("2:7,0:15", 8).unwrap();
        assert_eq!(c.to_string(), "0:15,2:7");
        assert!(Cursor::parse("0:15,9:1", 8).is_err());
        assert!(Cursor::parse("abc", 8).is_err());
        assert!(Cursor::parse("", 8).is_err());
    }

    #[test]
    fn filters_match_type_prefixes_and_subjects() {
        let ev = br#"{"type":"order.placed","subject":"cus-1","data":{"x":[1,2]}}"#;
        assert!(Filter::new(Some("order.*"), None).matches(ev));
        assert!(
            Filter::new(Some("cart.item_added,order.placed"), Some("cus-1".into())).matches(ev)
        );
        assert!(!Filter::new(Some("order.paid"), None).matches(ev));
        assert!(!Filter::new(None, Some("cus-2".into())).matches(ev));
    }
}
