//! Move an order along its life: pay, fulfill, ship, deliver, cancel, refund (`order.*`).

use serde_json::{Value, json};

use super::{Ctx, OrderRef, Planned, invalid, opt};
use crate::error::CommandError;
use crate::model::Status;
use crate::project::transition_allowed;

pub(super) fn plan(
    name: &str,
    to: Status,
    body: &OrderRef,
    cx: &Ctx<'_>,
) -> Result<Vec<Planned>, CommandError> {
    let views = cx.views;
    let order = views
        .order
        .get(&body.order_id)
        .ok_or_else(|| CommandError::OrderNotFound(body.order_id.clone()))?;
    if !transition_allowed(order.status, to) {
        return Err(CommandError::InvalidTransition {
            order_id: body.order_id.clone(),
            current: order.status.as_str().to_owned(),
            command: name.to_owned(),
        });
    }
    let ty = match to {
        Status::Paid => "order.paid",
        Status::Fulfilled => "order.fulfilled",
        Status::Shipped => "order.shipped",
        Status::Delivered => "order.delivered",
        Status::Cancelled => "order.cancelled",
        _ => "order.refunded",
    };
    let mut d = serde_json::Map::new();
    d.insert("order_id".into(), body.order_id.clone().into());
    let money = |amount: i64| json!({ "amount": amount, "currency": order.currency });
    match to {
        Status::Paid => {
            d.insert("amount".into(), money(body.amount.unwrap_or(order.total)));
            opt(&mut d, "payment_id", body.payment_id.clone());
        }
        Status::Refunded => {
            if order.paid == 0 {
                return Err(CommandError::InvalidTransition {
                    order_id: body.order_id.clone(),
                    current: format!("{} (unpaid)", order.status.as_str()),
                    command: name.to_owned(),
                });
            }
            let left = order.paid - order.refunded;
            let amount = body.amount.unwrap_or(left);
            if amount <= 0 && body.amount.is_some() {
                return Err(invalid("amount", "must be at least 1 (minor units)"));
            }
            // More than was paid and not yet refunded: the order's state, not the
            // request, is what refuses it (409).
            if amount <= 0 || amount > left {
                return Err(CommandError::RefundExceedsPaid {
                    order_id: body.order_id.clone(),
                    left: left.max(0),
                });
            }
            d.insert("amount".into(), money(amount));
        }
        Status::Shipped => {
            opt(&mut d, "carrier", body.carrier.clone());
            opt(&mut d, "tracking_number", body.tracking_number.clone());
        }
        _ => {}
    }
    opt(&mut d, "reason", body.reason.clone());
    let mut out = vec![Planned {
        ty,
        subject: order.customer_id.clone(),
        data: Value::Object(d),
    }];
    // Cancelling releases the held stock, and so does refunding an order that has not
    // shipped (it will not); shipping takes the stock out of the building.
    let stock_ty = match to {
        Status::Cancelled | Status::Refunded => Some("inventory.released"),
        Status::Shipped => Some("inventory.committed"),
        _ => None,
    };
    if let (Some(sty), Some(r)) = (stock_ty, views.resv.get(&body.order_id)) {
        for h in &r.lines {
            out.push(Planned {
                ty: sty,
                subject: Some(h.sku.clone()),
                data: json!({ "sku": h.sku, "location": h.location, "quantity": h.quantity,
                              "order_id": body.order_id, "reason": name }),
            });
        }
    }
    Ok(out)
}
