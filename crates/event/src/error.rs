//! The one error shape of this crate: a field path and what is wrong with it.
//!
//! Validation reports a list of these; the API turns them into its 400 response, adding the index of
//! the event in the request.

use serde::Serialize;

/// One problem with one field of one event: `field` is a path such as `data.lines[0].quantity`,
/// `reason` says what is wrong and, where it can, what would be right.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
