//! The API's one error shape: `{"error": {"code": "stable_snake_case", "message": "…",
//! "details": …}}`. 4xx messages say what the caller must fix; 5xx are logged with their context
//! and say only what a client can act on.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Seconds for a `Retry-After` header (429 and 503 answers that know when to come back).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn too_large(what: &str, limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("{what} exceeds the limit of {limit} bytes"),
        )
        .with_details(json!({ "limit_bytes": limit }))
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": { "code": self.code, "message": self.message } });
        if let Some(d) = self.details {
            body["error"]["details"] = d;
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        set_retry_after(&mut response, self.retry_after);
        response
    }
}

/// Adds `Retry-After: secs` to a response built from an [`ApiError`] (by `into_response`, or by
/// hand as the Segment endpoints do).
pub(crate) fn set_retry_after(response: &mut Response, secs: Option<u64>) {
    if let Some(secs) = secs {
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, secs.into());
    }
}

impl From<storeline_log::Error> for ApiError {
    fn from(e: storeline_log::Error) -> Self {
        use storeline_log::Error as E;
        match &e {
            E::DiskFull { partition, .. } => {
                tracing::error!(error = %e, partition, "append refused: disk full");
                ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "insufficient_storage",
                    "the server's disk is full: the events were not stored; retry later (retries are deduplicated)",
                )
            }
            E::WriterStopped { partition, .. } => {
                tracing::error!(error = %e, "append refused: log writer stopped");
                ApiError::unavailable(format!(
                    "partition {partition} cannot accept writes after a storage error; the \
                     events were not stored; an operator must restart the server"
                ))
                .with_code("log_unavailable")
            }
            E::Unavailable { partition, .. } => {
                tracing::warn!(error = %e, "log request failed: its servers are unavailable");
                ApiError::unavailable(format!(
                    "the log's servers did not answer for partition {partition}; the events \
                     may or may not have been stored: retry later (if they were stored, the \
                     log then holds them twice, with the same ids)"
                ))
                .with_code("log_unavailable")
            }
            E::Corrupt { offset, .. } => {
                tracing::error!(error = %e, "request refused: corrupt log partition");
                ApiError::unavailable(format!(
                    "a log partition is unavailable: corruption was found near offset {offset}; \
                     an operator must run `storeline log verify`"
                ))
                .with_code("partition_corrupt")
            }
            E::OffsetOutOfRange {
                partition,
                offset,
                start,
                end,
            } => ApiError::bad_request(
                "offset_out_of_range",
                format!(
                    "offset {offset} is outside partition {partition} (readable: {start}..{end})"
                ),
            )
            .with_details(json!({ "partition": partition, "start": start, "end": end })),
            E::NoSuchPartition {
                partition,
                partitions,
            } => ApiError::bad_request(
                "no_such_partition",
                format!(
                    "partition {partition} does not exist; there are {partitions} (0..{})",
                    partitions - 1
                ),
            ),
            E::TooLarge { bytes, limit } => {
                ApiError::too_large(&format!("a batch of {bytes} bytes"), *limit)
            }
            E::Closed => {
                ApiError::unavailable("the server is shutting down; retry on another node or later")
                    .with_code("shutting_down")
            }
            E::Io { .. } | E::Config(_) => {
                tracing::error!(error = %e, "log error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal storage error",
                )
            }
        }
    }
}

impl ApiError {
    pub(crate) fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }
}
