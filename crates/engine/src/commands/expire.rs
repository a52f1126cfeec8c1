//! Internal: cancel an unpaid order whose reservation lapsed, and release its stock.

use serde_json::json;

use super::{Ctx, Planned};
use crate::error::CommandError;
use crate::model::Status;

pub(super) fn plan(order_id: &str, cx: &Ctx<'_>) -> Result<Vec<Planned>, CommandError> {
    let views = cx.views;
    let now = cx.now;
    // Only an order still unpaid, whose hold has lapsed, is cancelled.
    let (Some(order), Some(r)) = (views.order.get(order_id), views.resv.get(order_id)) else {
        return Ok(Vec::new());
    };
    if order.status != Status::Placed || r.expires_at.is_none_or(|t| t > now) {
        return Ok(Vec::new());
    }
    let mut out = vec![Planned {
        ty: "order.cancelled",
        subject: order.customer_id.clone(),
        data: json!({ "order_id": order_id, "reason": "reservation expired" }),
    }];
    for h in &r.lines {
        out.push(Planned {
            ty: "inventory.released",
            subject: Some(h.sku.clone()),
            data: json!({ "sku": h.sku, "location": h.location, "quantity": h.quantity,
                          "order_id": order_id, "reason": "expired" }),
        });
    }
    Ok(out)
}
