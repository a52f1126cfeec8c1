//! What can go wrong in the engine, and what a command caller must be told.

use serde_json::{Value, json};

use crate::project::Shortfall;

/// An engine failure (not a rejected command: see [`CommandError`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    State(#[from] storeline_state::Error),
    #[error(transparent)]
    Log(#[from] storeline_log::Error),
    #[error("stored row {ns}/{key} cannot be read: {reason}")]
    Decode {
        ns: &'static str,
        key: String,
        reason: String,
    },
    #[error("a view row cannot be encoded: {0}")]
    Encode(String),
    #[error("appending the events a batch caused failed: {0}")]
    Emit(String),
    /// Appending the events a batch caused was refused for a reason a retry cannot heal.
    #[error("appending the events a batch caused was refused: {0}")]
    EmitRefused(String),
    /// Applying the record at `offset` would take a sum a view keeps out of range.
    #[error("partition {partition} offset {offset}: {what} would overflow")]
    Overflow {
        partition: u32,
        offset: u64,
        what: &'static str,
    },
}

impl Error {
    pub fn encode(e: serde_json::Error) -> Error {
        Error::Encode(e.to_string())
    }

    /// Whether retrying the same batch can never succeed: the record at fault must be
    /// quarantined instead (a store that is down, a full disk or a lost connection heal, and
    /// are retried).
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::State(e) => {
                !e.is_retryable()
                    && !matches!(
                        e,
                        storeline_state::Error::Closed | storeline_state::Error::Fenced { .. }
                    )
            }
            Error::Decode { .. }
            | Error::Encode(_)
            | Error::EmitRefused(_)
            | Error::Overflow { .. } => true,
            Error::Log(_) | Error::Emit(_) => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why appending a command's or a projection's events failed, as the appender reports it.
#[derive(Debug, Clone)]
pub struct AppendError {
    /// Refused for what the events hold, so the same next time; otherwise the log could not
    /// take them now (unavailable, full), which heals.
    pub refused: bool,
    pub code: String,
    pub message: String,
    /// The appender's own error, for whoever maps errors for its callers (the server keeps its
    /// API error here, so a command answers as ingest would). The engine never looks inside.
    pub cause: Option<std::sync::Arc<dyn std::any::Any + Send + Sync>>,
}

impl AppendError {
    /// A failure that heals (the log is unavailable now).
    pub fn unavailable(code: impl Into<String>, message: impl Into<String>) -> AppendError {
        AppendError {
            refused: false,
            code: code.into(),
            message: message.into(),
            cause: None,
        }
    }
}

/// Why a command was not carried out. Each maps to one API error code.
#[derive(Debug, Clone)]
pub enum CommandError {
    /// The body is wrong: which field, and why.
    Invalid { field: String, reason: String },
    /// No command of that name.
    UnknownCommand(String),
    /// The order does not exist.
    OrderNotFound(String),
    /// `order.place` could not reserve every line; nothing was reserved.
    InsufficientStock(Vec<Shortfall>),
    /// The order's status does not allow the command.
    InvalidTransition {
        order_id: String,
        current: String,
        command: String,
    },
    /// A refund of more than was paid and not refunded yet.
    RefundExceedsPaid { order_id: String, left: i64 },
    /// The same order id was placed before with different content.
    OrderExists(String),
    /// The idempotency key was used before with a different command or body.
    IdempotencyMismatch { key: String, command: String },
    /// Storing the events failed; retrying with the same idempotency key is safe.
    Append(AppendError),
    /// The engine cannot take commands now.
    Unavailable(String),
}

impl CommandError {
    /// `(code, message, details)` for an error answer; the status is the caller's to choose.
    pub fn describe(&self) -> (&'static str, String, Value) {
        match self {
            CommandError::Invalid { field, reason } => (
                "invalid_command",
                format!("{field}: {reason}"),
                json!({ "field": field, "reason": reason }),
            ),
            CommandError::UnknownCommand(name) => (
                "unknown_command",
                format!(
                    "there is no command '{name}'; commands are: {}",
                    crate::commands::NAMES.join(", ")
                ),
                Value::Null,
            ),
            CommandError::OrderNotFound(id) => (
                "order_not_found",
                format!("order '{id}' does not exist"),
                json!({ "order_id": id }),
            ),
            CommandError::InsufficientStock(lines) => (
                "insufficient_stock",
                format!(
                    "{} line(s) cannot be reserved; nothing was reserved",
                    lines.len()
                ),
                json!({ "lines": lines }),
            ),
            CommandError::InvalidTransition {
                order_id,
                current,
                command,
            } => (
                "invalid_transition",
                format!("order '{order_id}' is {current}; {command} is not allowed from {current}"),
                json!({ "order_id": order_id, "current": current, "command": command }),
            ),
            CommandError::RefundExceedsPaid { order_id, left } => (
                "refund_exceeds_paid",
                format!(
                    "order '{order_id}' has {left} minor units left to refund (paid, less what was refunded); refund at most that"
                ),
                json!({ "order_id": order_id, "left": left }),
            ),
            CommandError::OrderExists(id) => (
                "order_exists",
                format!("order '{id}' was already placed; use a new order_id"),
                json!({ "order_id": id }),
            ),
            CommandError::IdempotencyMismatch { key, command } => (
                "idempotency_key_reused",
                format!(
                    "Idempotency-Key '{key}' was used before with a different command or body (this request is {command}); use a new key for a new request"
                ),
                json!({ "key": key }),
            ),
            CommandError::Append(e) => (
                "store_failed",
                format!(
                    "{} (retrying with the same Idempotency-Key is safe)",
                    e.message
                ),
                json!({ "cause": e.code }),
            ),
            CommandError::Unavailable(why) => ("engine_unavailable", why.clone(), Value::Null),
        }
    }
}
