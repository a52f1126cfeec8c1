//! Receive returned items of a shipped order back into stock (`return.receive`).

use serde_json::{Value, json};

use super::{Ctx, Planned, Receive, invalid, opt};
use crate::error::CommandError;
use crate::model::Status;
use crate::project::transition_allowed;

pub(super) fn plan(r: &Receive, cx: &Ctx<'_>) -> Result<Vec<Planned>, CommandError> {
    let views = cx.views;
    let order = views
        .order
        .get(&r.order_id)
        .ok_or_else(|| CommandError::OrderNotFound(r.order_id.clone()))?;
    let shipped = order.timeline.iter().any(|s| s.status == Status::Shipped);
    if !shipped || !transition_allowed(order.status, Status::Returned) {
        return Err(CommandError::InvalidTransition {
            order_id: r.order_id.clone(),
            current: if shipped {
                order.status.as_str().to_owned()
            } else {
                format!("{} (never shipped)", order.status.as_str())
            },
            command: "return.receive".into(),
        });
    }
    let lines: Vec<Value> = match &r.lines {
        Some(ls) => {
            for (i, l) in ls.iter().enumerate() {
                let ordered: u64 = order
                    .lines
                    .iter()
                    .filter(|o| o.sku == l.sku)
                    .map(|o| o.quantity)
                    .sum();
                if l.quantity < 1 || l.quantity as u64 > ordered {
                    return Err(invalid(
                        &format!("lines[{i}].quantity"),
                        format!("must be between 1 and {ordered} (ordered)"),
                    ));
                }
            }
            ls.iter()
                .map(|l| json!({ "sku": l.sku, "quantity": l.quantity }))
                .collect()
        }
        None => order
            .lines
            .iter()
            .map(|l| json!({ "sku": l.sku, "quantity": l.quantity }))
            .collect(),
    };
    let mut d = serde_json::Map::new();
    d.insert("order_id".into(), r.order_id.clone().into());
    d.insert("lines".into(), lines.into());
    opt(&mut d, "location", r.location.clone());
    opt(&mut d, "reason", r.reason.clone());
    Ok(vec![Planned {
        ty: "return.received",
        subject: order.customer_id.clone(),
        data: Value::Object(d),
    }])
}
