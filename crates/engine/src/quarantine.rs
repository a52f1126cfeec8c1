//! The quarantine: records that cannot be applied, set aside with the reason, so that one bad
//! record never stalls its partition.
//!
//! A partition's writer quarantines a record instead of applying it when
//!
//! - its bytes are not a stored event (written before a validation existed, or damaged),
//! - it has a type or source only Storeline may write but lacks Storeline's own mark
//!   (`storeline_internal`): a forged control record is never installed,
//! - applying it would take a sum a view keeps out of range (checked arithmetic), or
//! - the state store refuses what it would write for a reason a retry cannot heal (a key with
//!   NUL, which PostgreSQL cannot store). The writer finds that record by committing the
//!   failed batch's records one at a time.
//!
//! A Segment-compatible endpoint also quarantines each message it cannot map or validate (the
//! SDKs drop a batch answered with 400, so the good messages are stored and the bad ones kept
//! here): it appends a `storeline.quarantined` record carrying the message and the errors,
//! which the partition's writer files like its own.
//!
//! Entries are rows of the state store (`quar`, keyed by offset, owned by the partition),
//! committed with the offset, so replay quarantines exactly the same records and the digests
//! stay equal. Each partition keeps the newest [`KEEP`] entries; `storeline.quarantine_cleared`
//! (`DELETE /v1/quarantine`) removes the entries below its own position.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use storeline_log::StoredRecord;

use crate::event::Ev;

/// A message refused at ingest, carried through the log to its partition's quarantine.
pub const QUARANTINED: &str = "storeline.quarantined";
/// Clears the quarantine entries of its partition that come before it.
pub const CLEARED: &str = "storeline.quarantine_cleared";

/// The namespaces: entries by offset, and one index row per partition.
pub mod ns {
    pub const ENTRY: &str = "quar";
    pub const INDEX: &str = "quarix";
}

/// The key of the index row.
pub const INDEX_KEY: &str = "index";

/// Entries kept per partition; older ones are dropped as new ones come.
pub const KEEP: usize = 1000;

/// Bytes of a record kept in its entry, so an admin can see what it was.
const RAW_BYTES: usize = 2048;

/// The key of the entry for `offset` (zero-padded, so keys sort by offset).
pub fn entry_key(offset: u64) -> String {
    format!("{offset:020}")
}

/// One partition's quarantine: the offsets of the entries it keeps (oldest first) and how many
/// it ever filed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Index {
    pub offsets: VecDeque<u64>,
    pub total: u64,
}

/// Why a record was quarantined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The bytes are not a stored event.
    Unreadable,
    /// A reserved type or source without Storeline's mark.
    ReservedType,
    /// A sum a view keeps would leave its range.
    Overflow,
    /// The state store refused what applying it would write.
    StoreRefused,
    /// Applying it failed for another reason a retry cannot heal.
    ApplyFailed,
    /// A message a Segment-compatible endpoint could not accept.
    InvalidMessage,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unreadable => "unreadable",
            Reason::ReservedType => "reserved_type",
            Reason::Overflow => "overflow",
            Reason::StoreRefused => "store_refused",
            Reason::ApplyFailed => "apply_failed",
            Reason::InvalidMessage => "invalid_message",
        }
    }
}

/// One quarantined record (or refused message), as `GET /v1/quarantine` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub partition: u32,
    pub offset: u64,
    /// `engine`: a stored record the writer could not apply; `ingest`: a message an endpoint
    /// refused (the record at `offset` carries it).
    pub origin: String,
    pub reason: Reason,
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "type")]
    pub ty: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When the record was stored (ms since the epoch).
    pub received_at: i64,
    /// The start of the record (or message) as text, at most 2 KiB.
    pub raw: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub details: Value,
}

/// The first `max` bytes of `bytes` as text (cut at a character boundary).
fn excerpt(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned();
    if bytes.len() > max {
        format!("{text}…")
    } else {
        text
    }
}

impl Entry {
    /// An entry for a stored record the writer could not apply. `ev` is the record as parsed,
    /// when it parsed.
    pub fn engine(
        partition: u32,
        rec: &StoredRecord,
        ev: Option<&Ev>,
        reason: Reason,
        error: String,
    ) -> Entry {
        Entry {
            partition,
            offset: rec.offset,
            origin: "engine".into(),
            reason,
            error,
            id: ev.map(|e| e.id.clone()),
            ty: ev.map(|e| e.ty.clone()),
            subject: ev.and_then(|e| e.subject.clone()),
            received_at: rec.timestamp,
            raw: excerpt(&rec.value, RAW_BYTES),
            details: Value::Null,
        }
    }

    /// An entry for a message refused at ingest, from the `storeline.quarantined` record that
    /// carries it.
    pub fn ingest(partition: u32, ev: &Ev) -> Entry {
        let d = &ev.data;
        Entry {
            partition,
            offset: ev.offset,
            origin: "ingest".into(),
            reason: Reason::InvalidMessage,
            error: d["error"].as_str().unwrap_or_default().to_owned(),
            id: d["message_id"].as_str().map(str::to_owned),
            ty: None,
            subject: None,
            received_at: ev.received,
            raw: d["message"].as_str().unwrap_or_default().to_owned(),
            details: json!({ "endpoint": d["endpoint"], "index": d["index"], "errors": d["errors"] }),
        }
    }
}

/// The record that carries a refused message to the quarantine: `endpoint` and the message's
/// `index` in the request, its field errors, and the message itself (cut to 2 KiB).
pub fn refused_message(
    endpoint: &str,
    index: usize,
    message_id: Option<&str>,
    errors: &[(String, String)],
    message: &[u8],
    now_ms: i64,
) -> storeline_event::Event {
    let errors: Vec<Value> = errors
        .iter()
        .take(20)
        .map(|(f, r)| json!({ "field": f, "reason": r }))
        .collect();
    let error = errors
        .first()
        .map(|e| {
            format!(
                "{}: {}",
                e["field"].as_str().unwrap_or(""),
                e["reason"].as_str().unwrap_or("")
            )
        })
        .unwrap_or_default();
    crate::event::build_event(
        format!("qrn_{}", ulid::Ulid::new().to_string().to_lowercase()),
        "storeline/ingest",
        QUARANTINED,
        None,
        now_ms,
        &json!({ "endpoint": endpoint, "index": index, "message_id": message_id,
                 "errors": errors, "error": error, "message": excerpt(message, RAW_BYTES) }),
        None,
    )
}

/// The record that clears a partition's quarantine up to its own position.
pub fn clear_event(now_ms: i64) -> storeline_event::Event {
    crate::event::build_event(
        format!("qclr_{}", ulid::Ulid::new().to_string().to_lowercase()),
        "storeline/api",
        CLEARED,
        None,
        now_ms,
        &json!({}),
        None,
    )
}
