//! Storeline's event model: the CloudEvents-shaped envelope, the commerce catalog with validated
//! payloads, money as integer minor units, typed ids, and the Segment tracking-API mapping.
//!
//! This crate is data and pure functions only (no I/O, no clock, no tokio), so every other crate
//! and every test can use it as is.

mod catalog;
mod envelope;
mod error;
pub mod ids;
pub mod limits;
mod money;
pub mod outbox;
pub mod segment;

pub use catalog::{CATALOG, COMMERCE_KEY, is_catalog_type, is_commerce_type, validate_data};
pub use envelope::{
    Defaults, Event, ExtensionValue, INTERNAL, Incoming, Mode, RESERVED_ATTRIBUTES, SPECVERSION,
    Scalar, format_time, splice_position,
};
pub use error::FieldError;
pub use money::{Currency, Money, currency_exponent};
