//! The engine's view of a stored event: the few envelope fields projections read, and `data` as
//! a JSON value, parsed straight from the log's bytes.
//!
//! Stored events were validated at ingest, so this parse is lenient (unknown attributes are
//! ignored) and cheap; it is the hot path of every projection and of replay.

use serde::Deserialize;
use serde_json::Value;
use storeline_event::Event;

/// A stored event, as the projections see it.
#[derive(Debug, Clone)]
pub struct Ev {
    pub id: String,
    pub ty: String,
    /// Event time, ms since the Unix epoch.
    pub time: i64,
    /// When it was stored, ms since the Unix epoch (the event time if unknown): the clock
    /// triggers run on.
    pub received: i64,
    pub subject: Option<String>,
    pub data: Value,
    /// Segment's anonymous id when the event also names a user (extension `anonymousid`).
    pub anonymous_id: Option<String>,
    /// Set on events written by a command: which command, its idempotency key and body hash.
    /// Only read from Storeline's own records (a producer cannot forge an idempotency record).
    pub command: Option<CommandMark>,
    /// Written by Storeline itself (the stored `storeline_internal` mark, which ingest refuses).
    pub internal: bool,
    /// Whether the envelope's `source` is one only Storeline may use (`storeline/…`).
    pub reserved_source: bool,
    pub partition: u32,
    pub offset: u64,
}

/// What a command writes on its events, so the idempotency record is derived from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandMark {
    pub name: String,
    pub key: String,
    pub hash: String,
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    ty: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    source: std::borrow::Cow<'a, str>,
    #[serde(default)]
    storeline_internal: bool,
    #[serde(borrow)]
    time: std::borrow::Cow<'a, str>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    anonymousid: Option<String>,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    idempotencykey: Option<String>,
    #[serde(default)]
    commandhash: Option<String>,
    #[serde(default, borrow)]
    received_at: Option<std::borrow::Cow<'a, str>>,
}

impl Ev {
    /// Parses a stored event; `None` (logged by the caller) for bytes that are not one.
    pub fn parse(bytes: &[u8], partition: u32, offset: u64) -> Result<Ev, String> {
        let raw: Raw<'_> = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let time = chrono::DateTime::parse_from_rfc3339(&raw.time)
            .map_err(|e| format!("time '{}': {e}", raw.time))?
            .timestamp_millis();
        let received = raw
            .received_at
            .as_deref()
            .and_then(|r| chrono::DateTime::parse_from_rfc3339(r).ok())
            .map_or(time, |t| t.timestamp_millis());
        let internal = raw.storeline_internal;
        let command = match (raw.command, raw.idempotencykey, raw.commandhash) {
            (Some(name), Some(key), Some(hash)) if internal => {
                Some(CommandMark { name, key, hash })
            }
            _ => None,
        };
        Ok(Ev {
            id: raw.id.into_owned(),
            ty: raw.ty.into_owned(),
            time,
            received,
            subject: raw.subject,
            data: raw.data,
            anonymous_id: raw.anonymousid,
            command,
            internal,
            reserved_source: storeline_event::limits::is_reserved_source(&raw.source),
            partition,
            offset,
        })
    }

    /// A record only Storeline may write (its type or source is reserved) that lacks Storeline's
    /// own mark: it is quarantined, never applied.
    pub fn is_forged(&self) -> bool {
        !self.internal
            && (self.reserved_source || storeline_event::limits::is_reserved_type(&self.ty))
    }

    /// A string field of `data`.
    pub fn str(&self, field: &str) -> Option<&str> {
        self.data
            .get(field)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    /// An integer field of `data`.
    pub fn int(&self, field: &str) -> Option<i64> {
        self.data.get(field).and_then(Value::as_i64)
    }

    /// A money field of `data` as `(amount, currency)`.
    pub fn money(&self, field: &str) -> Option<(i64, String)> {
        money(self.data.get(field)?)
    }

    /// The customer the event is about: `data.customer_id` on order events, else the subject.
    pub fn customer(&self) -> Option<&str> {
        if self.ty.starts_with("order.") || self.ty.starts_with("return.") {
            self.str("customer_id").or(self.subject.as_deref())
        } else {
            self.subject.as_deref().filter(|s| !s.is_empty())
        }
    }
}

/// Builds an event Storeline writes itself (the engine, a command, the API): it carries the
/// `storeline_internal` mark, so the engine honours it even when its type is reserved.
pub fn build_event(
    id: String,
    source: &str,
    ty: &str,
    subject: Option<String>,
    time_ms: i64,
    data: &Value,
    mark: Option<&CommandMark>,
) -> Event {
    let time = chrono::DateTime::from_timestamp_millis(time_ms).unwrap_or_default();
    let mut extensions = Vec::new();
    if let Some(m) = mark {
        use storeline_event::ExtensionValue::String as S;
        extensions.push(("command".to_owned(), S(m.name.clone())));
        extensions.push(("idempotencykey".to_owned(), S(m.key.clone())));
        extensions.push(("commandhash".to_owned(), S(m.hash.clone())));
    }
    Event {
        id,
        source: source.to_owned(),
        ty: ty.to_owned(),
        time,
        subject,
        partitionkey: None,
        datacontenttype: Some("application/json".to_owned()),
        dataschema: None,
        data: serde_json::value::to_raw_value(data).ok(),
        data_base64: None,
        extensions,
        internal: true,
    }
}

/// Reads `{ "amount": 1999, "currency": "EUR" }`.
pub fn money(v: &Value) -> Option<(i64, String)> {
    Some((
        v.get("amount")?.as_i64()?,
        v.get("currency")?.as_str()?.to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stored_event_and_its_command_mark() {
        let b = br#"{"specversion":"1.0","id":"e1","source":"s","type":"order.placed","time":"2026-01-02T03:04:05.006Z","subject":"cus-1","data":{"order_id":"o1","total":{"amount":5,"currency":"EUR"}},"command":"order.place","idempotencykey":"k1","commandhash":"ab","storeline_internal":true,"received_at":"2026-01-02T03:04:05.010Z"}"#;
        let ev = Ev::parse(b, 3, 7).unwrap();
        assert_eq!(ev.ty, "order.placed");
        assert_eq!(ev.time, 1_767_323_045_006);
        assert_eq!(ev.customer(), Some("cus-1"));
        assert_eq!(ev.money("total"), Some((5, "EUR".into())));
        assert_eq!(ev.command.unwrap().key, "k1");
        assert!(Ev::parse(b"{}", 0, 0).is_err());
        // Without Storeline's mark, a command mark is a producer's forgery: ignored.
        let forged = String::from_utf8(b.to_vec())
            .unwrap()
            .replace(",\"storeline_internal\":true", "");
        let ev = Ev::parse(forged.as_bytes(), 3, 7).unwrap();
        assert!(ev.command.is_none() && !ev.internal && !ev.is_forged());
    }
}
