//! Commands: a request checked against the current views and turned into events, or rejected.
//!
//! [`plan`] is pure: given the views (as the single writer of the commerce partition sees them,
//! including the commands planned before in the same batch) and the time, it returns the events
//! to append. The runner appends them in one batch, so a command's events are all stored or
//! none are.

use serde::Deserialize;
use serde_json::Value;

use storeline_event::limits;

use crate::error::CommandError;
use crate::model::Status;
use crate::views::{Keys, Views};

mod adjust;
mod consent;
mod expire;
mod place;
mod receive;
mod transition;

/// Every command name, for help and errors.
pub const NAMES: &[&str] = &[
    "inventory.adjust",
    "order.place",
    "order.pay",
    "order.fulfill",
    "order.ship",
    "order.deliver",
    "order.cancel",
    "order.refund",
    "return.receive",
    "customer.update_consent",
];

/// An event a command produces (the runner stamps ids, time and the command mark).
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub ty: &'static str,
    pub subject: Option<String>,
    pub data: Value,
}

/// A parsed command.
#[derive(Debug, Clone)]
pub enum Command {
    Adjust(Adjust),
    Place(Place),
    Transition {
        name: String,
        to: Status,
        body: OrderRef,
    },
    Receive(Receive),
    Consent(ConsentCmd),
    /// Internal: an unpaid order's reservation lapsed.
    Expire {
        order_id: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adjust {
    sku: String,
    location: Option<String>,
    delta: Option<i64>,
    set: Option<i64>,
    reason: Option<String>,
    low_stock_threshold: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Place {
    order_id: String,
    customer_id: String,
    currency: String,
    lines: Vec<PlaceLine>,
    email: Option<String>,
    channel: Option<String>,
    /// How long an unpaid order holds its stock, e.g. "15m" (default from config).
    reservation_ttl: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceLine {
    sku: String,
    quantity: i64,
    unit_price: i64,
    location: Option<String>,
    name: Option<String>,
    category: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRef {
    pub order_id: String,
    reason: Option<String>,
    amount: Option<i64>,
    carrier: Option<String>,
    tracking_number: Option<String>,
    payment_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receive {
    order_id: String,
    lines: Option<Vec<ReceiveLine>>,
    location: Option<String>,
    reason: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiveLine {
    sku: String,
    quantity: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentCmd {
    customer_id: String,
    channel: String,
    granted: bool,
    source: Option<String>,
}

fn body<T: for<'de> Deserialize<'de>>(v: &Value) -> Result<T, CommandError> {
    serde_path_to_error(v).map_err(|(field, reason)| CommandError::Invalid { field, reason })
}

/// serde with the failing field's path, without another dependency: retry field by field is
/// overkill, so name the field serde names in its message.
fn serde_path_to_error<T: for<'de> Deserialize<'de>>(v: &Value) -> Result<T, (String, String)> {
    T::deserialize(v).map_err(|e| {
        let msg = e.to_string();
        let field = msg
            .split('`')
            .nth(1)
            .filter(|_| msg.starts_with("missing field") || msg.starts_with("unknown field"))
            .unwrap_or("body")
            .to_owned();
        (field, msg)
    })
}

fn invalid(field: &str, reason: impl Into<String>) -> CommandError {
    CommandError::Invalid {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// An identifier of a command (an id, a SKU, a location): not blank, no control characters,
/// at most [`MAX_IDENTIFIER_LEN`](limits::MAX_IDENTIFIER_LEN) bytes. They become keys of the
/// views, so the ingest rules apply.
fn ident(field: &str, v: &str) -> Result<(), CommandError> {
    if v.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if v.len() > limits::MAX_IDENTIFIER_LEN {
        return Err(invalid(
            field,
            format!(
                "is {} bytes long; the limit is {}",
                v.len(),
                limits::MAX_IDENTIFIER_LEN
            ),
        ));
    }
    limits::check_identifier(v).map_err(|r| invalid(field, r))
}

/// Optional free text: no control characters but tab and line breaks.
fn text(field: &str, v: &Option<String>) -> Result<(), CommandError> {
    match v {
        Some(t) => limits::check_text(t).map_err(|r| invalid(field, r)),
        None => Ok(()),
    }
}

/// A money amount or stock count within ±10^15.
fn amount(field: &str, v: Option<i64>) -> Result<(), CommandError> {
    match v {
        Some(n) => limits::check_amount(n).map_err(|r| invalid(field, r)),
        None => Ok(()),
    }
}

/// A quantity from 1 to 10^9.
fn quantity(field: &str, q: i64) -> Result<(), CommandError> {
    if q < 1 || q.unsigned_abs() > limits::MAX_QUANTITY {
        return Err(invalid(
            field,
            format!("must be a whole number from 1 to {}", limits::MAX_QUANTITY),
        ));
    }
    Ok(())
}

/// Lines are JSON objects: serde's derived structs would also take an array of the field values
/// in order (`["SKU-1", 1, 100, null, null, null]`), which no client means.
fn lines_are_objects(v: &Value) -> Result<(), CommandError> {
    if let Some(Value::Array(lines)) = v.get("lines")
        && let Some(i) = lines.iter().position(|l| !l.is_object())
    {
        return Err(invalid(&format!("lines[{i}]"), "a line is a JSON object"));
    }
    Ok(())
}

/// Parses `name` + JSON body into a [`Command`], checking what needs no state.
pub fn parse(name: &str, v: &Value) -> Result<Command, CommandError> {
    if !v.is_object() {
        return Err(invalid("body", "a command body is a JSON object"));
    }
    let transition = |to| -> Result<Command, CommandError> {
        let b: OrderRef = body(v)?;
        ident("order_id", &b.order_id)?;
        amount("amount", b.amount)?;
        if b.amount.is_some_and(|a| a < 0) {
            return Err(invalid("amount", "must not be negative (minor units)"));
        }
        for (f, t) in [
            ("reason", &b.reason),
            ("carrier", &b.carrier),
            ("tracking_number", &b.tracking_number),
        ] {
            text(f, t)?;
        }
        if let Some(pid) = &b.payment_id {
            ident("payment_id", pid)?;
        }
        Ok(Command::Transition {
            name: name.to_owned(),
            to,
            body: b,
        })
    };
    let cmd = match name {
        "inventory.adjust" => {
            let a: Adjust = body(v)?;
            match (a.delta, a.set) {
                (None, None) => {
                    return Err(invalid(
                        "delta",
                        "give delta (a change) or set (a new on-hand count)",
                    ));
                }
                (Some(_), Some(_)) => {
                    return Err(invalid("set", "give either delta or set, not both"));
                }
                (None, Some(s)) if s < 0 => {
                    return Err(invalid("set", "on-hand stock cannot be negative"));
                }
                _ => {}
            }
            ident("sku", &a.sku)?;
            if let Some(l) = &a.location {
                ident("location", l)?;
            }
            amount("delta", a.delta)?;
            amount("set", a.set)?;
            amount("low_stock_threshold", a.low_stock_threshold)?;
            text("reason", &a.reason)?;
            Command::Adjust(a)
        }
        "order.place" => {
            lines_are_objects(v)?;
            let p: Place = body(v)?;
            ident("order_id", &p.order_id)?;
            ident("customer_id", &p.customer_id)?;
            if let Some(e) = &p.email {
                ident("email", e)?;
            }
            if let Some(c) = &p.channel {
                ident("channel", c)?;
            }
            if storeline_event::currency_exponent(&p.currency).is_none() {
                return Err(invalid(
                    "currency",
                    format!("'{}' is not an ISO 4217 currency code", p.currency),
                ));
            }
            if p.lines.is_empty() {
                return Err(invalid("lines", "an order needs at least one line"));
            }
            let mut total: i64 = 0;
            for (i, l) in p.lines.iter().enumerate() {
                quantity(&format!("lines[{i}].quantity"), l.quantity)?;
                if l.unit_price < 0 {
                    return Err(invalid(
                        &format!("lines[{i}].unit_price"),
                        "must not be negative (minor units)",
                    ));
                }
                amount(&format!("lines[{i}].unit_price"), Some(l.unit_price))?;
                ident(&format!("lines[{i}].sku"), &l.sku)?;
                if let Some(loc) = &l.location {
                    ident(&format!("lines[{i}].location"), loc)?;
                }
                text(&format!("lines[{i}].name"), &l.name)?;
                text(&format!("lines[{i}].category"), &l.category)?;
                // The order's total must be money Storeline can hold.
                total = l
                    .quantity
                    .checked_mul(l.unit_price)
                    .and_then(|t| total.checked_add(t))
                    .filter(|t| limits::check_amount(*t).is_ok())
                    .ok_or_else(|| {
                        invalid(
                            &format!("lines[{i}]"),
                            format!(
                                "the order total would exceed {} minor units",
                                limits::MAX_AMOUNT
                            ),
                        )
                    })?;
            }
            if let Some(t) = &p.reservation_ttl {
                humantime::parse_duration(t)
                    .map_err(|e| invalid("reservation_ttl", format!("'{t}': {e}")))?;
            }
            Command::Place(p)
        }
        "order.pay" => transition(Status::Paid)?,
        "order.fulfill" => transition(Status::Fulfilled)?,
        "order.ship" => transition(Status::Shipped)?,
        "order.deliver" => transition(Status::Delivered)?,
        "order.cancel" => transition(Status::Cancelled)?,
        "order.refund" => transition(Status::Refunded)?,
        "return.receive" => {
            lines_are_objects(v)?;
            let r: Receive = body(v)?;
            ident("order_id", &r.order_id)?;
            if let Some(l) = &r.location {
                ident("location", l)?;
            }
            text("reason", &r.reason)?;
            for (i, l) in r.lines.iter().flatten().enumerate() {
                ident(&format!("lines[{i}].sku"), &l.sku)?;
                quantity(&format!("lines[{i}].quantity"), l.quantity)?;
            }
            Command::Receive(r)
        }
        "customer.update_consent" => {
            let c: ConsentCmd = body(v)?;
            ident("customer_id", &c.customer_id)?;
            text("source", &c.source)?;
            if !["email", "sms", "push", "whatsapp", "webhook"].contains(&c.channel.as_str()) {
                return Err(invalid(
                    "channel",
                    "one of email, sms, push, whatsapp, webhook",
                ));
            }
            Command::Consent(c)
        }
        other => return Err(CommandError::UnknownCommand(other.to_owned())),
    };
    Ok(cmd)
}

impl Command {
    /// The rows the command reads, to be loaded before [`plan`].
    pub fn keys(&self, keys: &mut Keys) {
        match self {
            Command::Adjust(a) => {
                keys.inv.insert(a.sku.clone());
            }
            Command::Place(p) => {
                keys.order.insert(p.order_id.clone());
                keys.resv.insert(p.order_id.clone());
                keys.inv.extend(p.lines.iter().map(|l| l.sku.clone()));
            }
            Command::Transition { body, .. } => {
                keys.order.insert(body.order_id.clone());
                keys.resv.insert(body.order_id.clone());
            }
            Command::Receive(r) => {
                keys.order.insert(r.order_id.clone());
            }
            Command::Expire { order_id } => {
                keys.order.insert(order_id.clone());
                keys.resv.insert(order_id.clone());
            }
            Command::Consent(_) => {}
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Command::Adjust(_) => "inventory.adjust",
            Command::Place(_) => "order.place",
            Command::Transition { name, .. } => name,
            Command::Receive(_) => "return.receive",
            Command::Consent(_) => "customer.update_consent",
            Command::Expire { .. } => "reservation.expire",
        }
    }
}

fn opt(map: &mut serde_json::Map<String, Value>, k: &str, v: Option<impl Into<Value>>) {
    if let Some(v) = v {
        map.insert(k.to_owned(), v.into());
    }
}

/// What every command's plan sees: the views, the time (ms since the epoch) and the defaults.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    views: &'a Views,
    now: i64,
    default_ttl_ms: i64,
    default_location: &'a str,
}

/// Checks the command against `views` and returns its events; `now` is ms since the epoch.
/// Each command's rules are in a file of its own.
pub fn plan(
    cmd: &Command,
    views: &Views,
    now: i64,
    default_ttl_ms: i64,
    default_location: &str,
) -> Result<Vec<Planned>, CommandError> {
    let cx = Ctx {
        views,
        now,
        default_ttl_ms,
        default_location,
    };
    match cmd {
        Command::Adjust(a) => adjust::plan(a, &cx),
        Command::Place(p) => place::plan(p, &cx),
        Command::Transition { name, to, body } => transition::plan(name, *to, body, &cx),
        Command::Receive(r) => receive::plan(r, &cx),
        Command::Consent(c) => consent::plan(c),
        Command::Expire { order_id } => expire::plan(order_id, &cx),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lines_are_objects_not_arrays_of_field_values() {
        let place = json!({ "order_id": "o", "customer_id": "c", "currency": "EUR",
                            "lines": [ ["S", 1, 100, null, null, null] ] });
        let Err(CommandError::Invalid { field, .. }) = parse("order.place", &place) else {
            panic!("an array line must be refused");
        };
        assert_eq!(field, "lines[0]");
        let receive = json!({ "order_id": "o", "lines": [ ["S", 1] ] });
        assert!(parse("return.receive", &receive).is_err());
        let good = json!({ "order_id": "o", "lines": [ { "sku": "S", "quantity": 1 } ] });
        assert!(parse("return.receive", &good).is_ok());
    }
}
