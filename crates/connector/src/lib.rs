//! Storeline's delivery: the connectors that make one attempt at sending a message somewhere
//! (webhook, SMTP, SMS, Kafka, log), and the delivery worker that takes the engine's outbox rows,
//! retries on a schedule, dead-letters, limits and isolates connectors.
//!
//! ```text
//!  engine commit ─► outbox rows ─► worker intake ─► delivery row (pending) ─► dispatch ─┐
//!                                                      ▲                              │
//!                        due index (per connector) ────┘ retry / circuit / capacity   ▼
//!                                                      result ◄── Connector::attempt (one try)
//!                                                        │
//!                                  delivered │ retry at schedule[n] ± jitter, Retry-After │ dead (DLQ)
//! ```
//!
//! A connector never sees triggers or projections: it gets a [`Delivery`] and returns a
//! [`Verdict`]. Only the worker retries. Connectors are a closed set ([`Built`]): adding one is a
//! module, a variant and a match arm.

pub mod breaker;
pub mod config;
mod error;
pub mod guard;
pub mod http;
pub mod kafka;
pub mod log;
pub mod secrets;
pub mod signature;
pub mod sms;
pub mod smtp;
pub mod store;
pub mod template;
pub mod webhook;
pub mod worker;

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use config::{ConnectorDef, Kind, Problem};
pub use error::{Error, Result};
pub use worker::{Worker, WorkerConfig};

/// What a connector is asked to send: one delivery, at one attempt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Delivery {
    /// Stable over every attempt (`dlv_…`): the idempotency key a receiver drops duplicates by.
    pub id: String,
    pub connector: String,
    pub channel: String,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub customer: Option<String>,
    #[serde(default)]
    pub trigger: String,
    /// The event that started the trigger's run.
    #[serde(default)]
    pub event: Value,
    /// The event a `wait` step received, when the action ran on its arrival.
    #[serde(default)]
    pub arrived: Option<Value>,
    /// The action's evaluated `data`.
    #[serde(default)]
    pub data: Map<String, Value>,
    /// When the engine decided the delivery (ms since the epoch, the partition's clock).
    pub created_at: i64,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The partition key (the customer, else the order, else the delivery id): Kafka's message
    /// key and the FIFO key.
    pub key: String,
    /// The customer's view (`GET /v1/customers/{id}`), for connectors that render templates.
    #[serde(default)]
    pub profile: Option<Value>,
}

/// How one attempt went. Connectors classify; the worker decides what happens next.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The receiver took it.
    Delivered { detail: String },
    /// A transient failure: try again on the schedule (or after `after`, the receiver's
    /// `Retry-After`, when it asked for longer).
    Retry {
        detail: String,
        after: Option<Duration>,
    },
    /// A permanent failure (a 4xx that retrying cannot fix, an invalid address): straight to the
    /// dead-letter queue.
    Reject { detail: String },
}

impl Verdict {
    pub fn outcome(&self) -> &'static str {
        match self {
            Verdict::Delivered { .. } => "delivered",
            Verdict::Retry { .. } => "retry",
            Verdict::Reject { .. } => "reject",
        }
    }
    pub fn detail(&self) -> &str {
        match self {
            Verdict::Delivered { detail }
            | Verdict::Retry { detail, .. }
            | Verdict::Reject { detail } => detail,
        }
    }
    pub fn retry(detail: impl Into<String>) -> Verdict {
        Verdict::Retry {
            detail: detail.into(),
            after: None,
        }
    }
}

/// One attempt at delivering.
///
/// # Contract
///
/// - An implementation MUST make at most one attempt per call and MUST NOT retry on its own:
///   the worker owns the schedule, the limits and the dead-letter queue.
/// - It MUST classify every failure: [`Verdict::Retry`] when the same request may succeed later
///   (timeouts, connection errors, 5xx, 429), [`Verdict::Reject`] when it cannot (4xx other than
///   408/409/425/429, an address the receiver refuses).
/// - Where the protocol carries one, it MUST send [`Delivery::id`] as the idempotency key, so a
///   receiver can drop the duplicates that at-least-once delivery brings.
/// - It SHOULD bound its own time (`timeout`); the worker also cuts an attempt off after the
///   connector's timeout and counts that as a retry.
pub trait Connector: Send + Sync {
    fn attempt(&self, d: &Delivery) -> impl Future<Output = Verdict> + Send;
}

/// The built connectors: a closed set, chosen by `type`. One per configured connector, so the
/// size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Built {
    Webhook(webhook::Webhook),
    Smtp(smtp::Smtp),
    Sms(sms::Sms),
    Kafka(kafka::Kafka),
    Log(log::Log),
}

impl Built {
    /// Builds the runtime part of a checked definition (this is where files are read and
    /// clients made; [`config`] did no I/O).
    pub fn build(def: &ConnectorDef) -> Result<Built> {
        Ok(match &def.kind {
            Kind::Webhook(c) => Built::Webhook(webhook::Webhook::new(&def.name, c, def.timeout)?),
            Kind::Smtp(c) => Built::Smtp(smtp::Smtp::new(&def.name, c, def.timeout)?),
            Kind::Sms(c) => Built::Sms(sms::Sms::new(&def.name, c, def.timeout)?),
            Kind::Kafka(c) => Built::Kafka(kafka::Kafka::new(&def.name, c, def.timeout)?),
            Kind::Log(c) => Built::Log(log::Log::new(&def.name, c, def.timeout)),
        })
    }
}

impl Connector for Built {
    async fn attempt(&self, d: &Delivery) -> Verdict {
        match self {
            Built::Webhook(c) => c.attempt(d).await,
            Built::Smtp(c) => c.attempt(d).await,
            Built::Sms(c) => c.attempt(d).await,
            Built::Kafka(c) => c.attempt(d).await,
            Built::Log(c) => c.attempt(d).await,
        }
    }
}

/// Whether an HTTP status is worth retrying: 408, 409, 425, 429 and every 5xx.
pub fn http_retryable(status: u16) -> bool {
    matches!(status, 408 | 409 | 425 | 429) || status >= 500
}

/// A `Retry-After` header: delay-seconds or an HTTP date, relative to `now_ms`.
pub fn parse_retry_after(value: &str, now_ms: i64) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let ms = at.timestamp_millis() - now_ms;
    Some(Duration::from_millis(ms.max(0) as u64))
}

/// Text of at most `max` bytes (on a char boundary), for error details kept in attempts.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("120", 0), Some(Duration::from_secs(120)));
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z")
            .map(|d| d.timestamp_millis())
            .unwrap_or(0);
        assert_eq!(
            parse_retry_after("Sat, 21 Nov 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn statuses_are_classified() {
        for s in [408, 409, 425, 429, 500, 502, 503] {
            assert!(http_retryable(s), "{s}");
        }
        for s in [400, 401, 403, 404, 410, 413, 422] {
            assert!(!http_retryable(s), "{s}");
        }
    }
}
