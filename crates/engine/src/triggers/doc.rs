//! What a stored record is for triggers: the event document CEL sees as `event`, with the
//! customer and order it is about and when the log received it (a forwarded copy: the
//! original's time).

use serde_json::{Value, json};

use crate::event::Ev;
use crate::project::identity_key;

/// An event as triggers see it (`event` in CEL), with who and which order it is about.
#[derive(Debug, Clone)]
pub struct Doc {
    pub value: Value,
    pub ty: String,
    pub id: String,
    pub customer: Option<String>,
    pub order: Option<String>,
    /// When the log received the event (ms): for a forwarded copy, the original's.
    pub received: i64,
}

/// What a stored record is for triggers: `None` for engine records (ticks, trigger files).
/// `for_triggers` is false for commerce events about a customer: their triggers run in the
/// customer's partition, on the forwarded copy.
pub fn doc_of(ev: &Ev) -> Option<(Doc, bool)> {
    if ev.ty == super::FORWARDED {
        let v = ev.data.clone();
        let ty = v.get("type").and_then(Value::as_str)?.to_owned();
        let id = v.get("id").and_then(Value::as_str).unwrap_or("").to_owned();
        let customer = v.get("customer").and_then(Value::as_str).map(identity_key);
        let order = v
            .pointer("/data/order_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let received = received_at(&v).unwrap_or(ev.received);
        return Some((
            Doc {
                value: v,
                ty,
                id,
                customer,
                order,
                received,
            },
            true,
        ));
    }
    if ev.ty.starts_with("storeline.") {
        return None;
    }
    let customer = if ev.ty.starts_with("inventory.") {
        None // about a SKU
    } else {
        ev.customer().map(identity_key)
    };
    let forwarded_elsewhere = customer.is_some() && is_forwarded_type(&ev.ty);
    let time = chrono::DateTime::from_timestamp_millis(ev.time)
        .map(|t| storeline_event::format_time(&t))
        .unwrap_or_default();
    let value = json!({
        "id": ev.id, "type": ev.ty, "time": time, "subject": ev.subject,
        "customer": customer, "data": ev.data,
    });
    Some((
        Doc {
            value,
            ty: ev.ty.clone(),
            id: ev.id.clone(),
            customer,
            order: ev.str("order_id").map(str::to_owned),
            received: ev.received,
        },
        !forwarded_elsewhere,
    ))
}

/// The `received_at` a forwarded copy carries (ms), if any.
pub fn received_at(v: &Value) -> Option<i64> {
    v.get("received_at")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis())
}

impl Doc {
    /// A document kept as JSON (`event` in CEL) back as a `Doc` of `customer`.
    pub fn of_value(value: Value, customer: Option<String>, received: i64) -> Doc {
        let s = |k: &str| {
            value
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let (ty, id) = (s("type"), s("id"));
        let order = value
            .pointer("/data/order_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let received = received_at(&value).unwrap_or(received);
        Doc {
            value,
            ty,
            id,
            customer,
            order,
            received,
        }
    }
}

/// Commerce events that carry a customer and are copied to the customer's partition.
pub fn is_forwarded_type(ty: &str) -> bool {
    ty.starts_with("order.") || ty.starts_with("return.")
}
