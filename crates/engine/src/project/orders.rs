//! Orders: the status machine and its timeline.
//!
//! ```text
//!  placed ─► paid ─► fulfilled ─► shipped ─► delivered
//!    │        │  └──────────────────┘ (ship)    │
//!    └─► cancelled ◄┘                            ├─► returned (return received)
//!  paid … delivered, returned ─► refunded        │
//! ```
//!
//! Commands are checked against [`transition_allowed`]; events that arrive from outside are
//! facts and are recorded whatever the current status (a shop's systems may report late).

use serde_json::Value;

use super::{Overflow, add};
use crate::event::Ev;
use crate::model::{Order, OrderLine, Status, Step};
use crate::views::{Keys, Views};

/// The status an order event moves an order to.
pub fn status_of(ty: &str) -> Option<Status> {
    Some(match ty {
        "order.placed" => Status::Placed,
        "order.paid" => Status::Paid,
        "order.fulfilled" => Status::Fulfilled,
        "order.shipped" => Status::Shipped,
        "order.delivered" => Status::Delivered,
        "order.cancelled" => Status::Cancelled,
        "order.refunded" => Status::Refunded,
        "return.received" => Status::Returned,
        _ => return None,
    })
}

/// Whether a command may move an order from `from` to `to`.
///
/// Refunds may repeat (partial refunds) and may follow a cancel (the money of a paid order that
/// will not ship goes back); what is left to refund is checked by the command. A return needs
/// goods that left the building, which the command checks on the timeline.
pub fn transition_allowed(from: Status, to: Status) -> bool {
    use Status::*;
    matches!(
        (from, to),
        (Placed, Paid)
            | (Paid, Fulfilled)
            | (Paid | Fulfilled, Shipped)
            | (Shipped, Delivered)
            | (Placed | Paid | Fulfilled, Cancelled)
            | (
                Paid | Fulfilled | Shipped | Delivered | Returned | Refunded | Cancelled,
                Refunded
            )
            | (Shipped | Delivered | Refunded, Returned)
    )
}

pub fn keys(ev: &Ev, keys: &mut Keys) {
    if status_of(&ev.ty).is_some()
        && let Some(o) = ev.str("order_id")
    {
        keys.order.insert(o.to_owned());
    }
}

pub fn apply(views: &mut Views, ev: &Ev) -> Result<(), Overflow> {
    let Some(status) = status_of(&ev.ty) else {
        return Ok(());
    };
    let Some(order_id) = ev.str("order_id") else {
        return Ok(());
    };
    let step = Step {
        status,
        ty: ev.ty.clone(),
        at: ev.time,
        event_id: ev.id.clone(),
        offset: ev.offset,
    };
    if status == Status::Placed {
        let (total, currency) = ev.money("total").unwrap_or((0, String::new()));
        let lines = ev
            .data
            .get("lines")
            .and_then(Value::as_array)
            .map(|ls| {
                ls.iter()
                    .filter_map(|l| {
                        Some(OrderLine {
                            sku: l.get("sku")?.as_str()?.to_owned(),
                            quantity: l.get("quantity")?.as_u64()?,
                            unit_price: l
                                .get("unit_price")
                                .and_then(crate::event::money)
                                .map(|m| m.0),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut timeline = views
            .order
            .get(order_id)
            .map(|o| o.timeline.clone())
            .unwrap_or_default();
        timeline.push(step);
        views.order.put(
            order_id,
            Order {
                order_id: order_id.to_owned(),
                customer_id: ev.customer().map(str::to_owned),
                status,
                currency,
                total,
                lines,
                paid: 0,
                refunded: 0,
                placed_at: ev.time,
                timeline,
            },
        );
        return Ok(());
    }
    let Some(order) = views.order.get_mut(order_id) else {
        // An event for an order never placed here: keep it, so the timeline is not lost.
        views.order.put(
            order_id,
            Order {
                order_id: order_id.to_owned(),
                customer_id: ev.customer().map(str::to_owned),
                status,
                currency: String::new(),
                total: 0,
                lines: Vec::new(),
                paid: 0,
                refunded: 0,
                placed_at: ev.time,
                timeline: vec![step],
            },
        );
        return Ok(());
    };
    order.status = status;
    match ev.ty.as_str() {
        "order.paid" => {
            let amount = ev.money("amount").map_or(order.total, |m| m.0);
            order.paid = add(order.paid, amount, "the amount paid for the order")?;
        }
        "order.refunded" => {
            let amount = ev.money("amount").map_or(order.total, |m| m.0);
            order.refunded = add(order.refunded, amount, "the amount refunded for the order")?;
        }
        _ => {}
    }
    order.timeline.push(step);
    Ok(())
}
