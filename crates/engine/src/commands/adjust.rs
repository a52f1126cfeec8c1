//! Set stock on hand, or change it by a delta, without taking away stock held for orders (`inventory.adjust`).

use serde_json::{Value, json};
use storeline_event::limits;

use super::{Adjust, Ctx, Planned, invalid, opt};
use crate::error::CommandError;
use crate::project::Shortfall;

pub(super) fn plan(a: &Adjust, cx: &Ctx<'_>) -> Result<Vec<Planned>, CommandError> {
    let views = cx.views;
    let default_location = cx.default_location;
    // A decrease may not take away stock that is held for orders: that would oversell.
    let loc = a.location.as_deref().unwrap_or(default_location);
    let level = views
        .inv
        .get(&a.sku)
        .and_then(|s| s.locations.get(loc))
        .copied()
        .unwrap_or_default();
    let on_hand = match a.set {
        Some(s) => s,
        None => level
            .on_hand
            .checked_add(a.delta.unwrap_or(0))
            .filter(|n| limits::check_amount(*n).is_ok())
            .ok_or_else(|| {
                invalid(
                    "delta",
                    format!(
                        "stock on hand would become {} + {}, beyond the limit of ±{}",
                        level.on_hand,
                        a.delta.unwrap_or(0),
                        limits::MAX_AMOUNT
                    ),
                )
            })?,
    };
    if on_hand < level.reserved {
        return Err(CommandError::InsufficientStock(vec![Shortfall {
            sku: a.sku.clone(),
            location: Some(loc.to_owned()),
            requested: level.on_hand.saturating_sub(on_hand),
            available: level.available().max(0),
        }]));
    }
    let mut d = serde_json::Map::new();
    d.insert("sku".into(), a.sku.clone().into());
    opt(&mut d, "location", a.location.clone());
    opt(&mut d, "delta", a.delta);
    opt(&mut d, "set", a.set);
    opt(&mut d, "reason", a.reason.clone());
    if let Some(t) = a.low_stock_threshold {
        d.insert("properties".into(), json!({ "low_stock_threshold": t }));
    }
    Ok(vec![Planned {
        ty: "inventory.adjusted",
        subject: Some(a.sku.clone()),
        data: Value::Object(d),
    }])
}
