//! Place an order, reserving every line, or reserve nothing (`order.place`).

use serde_json::{Value, json};

use super::{Ctx, Place, Planned, opt};
use crate::error::CommandError;
use crate::project::{Shortfall, allocate};

pub(super) fn plan(p: &Place, cx: &Ctx<'_>) -> Result<Vec<Planned>, CommandError> {
    let views = cx.views;
    let now = cx.now;
    let default_ttl_ms = cx.default_ttl_ms;
    if views.order.get(&p.order_id).is_some() {
        return Err(CommandError::OrderExists(p.order_id.clone()));
    }
    // Reserve every line against what the lines before it took (two lines may share a
    // SKU), and report every line that falls short.
    let mut taken: std::collections::BTreeMap<(String, String), i64> = Default::default();
    let mut allocations = Vec::new();
    let mut short: Vec<Shortfall> = Vec::new();
    for l in &p.lines {
        let mut stock = views.inv.get(&l.sku).cloned();
        if let Some(s) = stock.as_mut() {
            for (loc, lv) in s.locations.iter_mut() {
                lv.reserved = lv.reserved.saturating_add(
                    taken
                        .get(&(l.sku.clone(), loc.clone()))
                        .copied()
                        .unwrap_or(0),
                );
            }
        }
        match allocate(stock.as_ref(), &l.sku, l.quantity, l.location.as_deref()) {
            Ok(parts) => {
                for (loc, q) in parts {
                    *taken.entry((l.sku.clone(), loc.clone())).or_default() += q;
                    allocations.push((l.sku.clone(), loc, q));
                }
            }
            Err(s) => short.push(s),
        }
    }
    if !short.is_empty() {
        return Err(CommandError::InsufficientStock(short));
    }
    let ttl = p
        .reservation_ttl
        .as_deref()
        .and_then(|t| humantime::parse_duration(t).ok())
        .map_or(default_ttl_ms, |d| d.as_millis() as i64);
    let expires = chrono::DateTime::from_timestamp_millis(now + ttl)
        .map(|t| storeline_event::format_time(&t))
        .unwrap_or_default();
    // `parse` checked every product and the sum.
    let total: i64 = p
        .lines
        .iter()
        .map(|l| l.quantity.saturating_mul(l.unit_price))
        .fold(0, i64::saturating_add);
    let money = |amount: i64| json!({ "amount": amount, "currency": p.currency });
    let lines: Vec<Value> = p
        .lines
        .iter()
        .map(|l| {
            let mut m = serde_json::Map::new();
            m.insert("sku".into(), l.sku.clone().into());
            m.insert("quantity".into(), l.quantity.into());
            m.insert("unit_price".into(), money(l.unit_price));
            opt(&mut m, "name", l.name.clone());
            opt(&mut m, "category", l.category.clone());
            Value::Object(m)
        })
        .collect();
    let mut d = serde_json::Map::new();
    d.insert("order_id".into(), p.order_id.clone().into());
    d.insert("customer_id".into(), p.customer_id.clone().into());
    d.insert("lines".into(), lines.into());
    d.insert("total".into(), money(total));
    opt(&mut d, "email", p.email.clone());
    opt(&mut d, "channel", p.channel.clone());
    let mut out = vec![Planned {
        ty: "order.placed",
        subject: Some(p.customer_id.clone()),
        data: Value::Object(d),
    }];
    for (sku, loc, q) in allocations {
        out.push(Planned {
            ty: "inventory.reserved",
            subject: Some(sku.clone()),
            data: json!({ "sku": sku, "location": loc, "quantity": q,
                          "order_id": p.order_id, "expires_at": expires }),
        });
    }
    Ok(out)
}
