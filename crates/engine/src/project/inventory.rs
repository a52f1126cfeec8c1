//! Inventory per (SKU, location): on hand, reserved, available = on hand − reserved; the
//! reservations held per order; and the low-stock / back-in-stock edges, emitted as events.
//!
//! | event                 | on hand | reserved | reservation of the order |
//! |-----------------------|---------|----------|--------------------------|
//! | `inventory.adjusted`  | ±delta / set | –   | –                        |
//! | `inventory.reserved`  | –       | +q       | line added               |
//! | `inventory.released`  | –       | −q       | line removed             |
//! | `inventory.committed` | −q      | −q       | line removed (shipped)   |
//! | `return.received`     | +q      | –        | –                        |
//! | `order.paid`          | –       | –        | stops expiring           |

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use super::{Emit, Overflow, ProjectionConfig, add, sub};
use crate::event::Ev;
use crate::model::{Held, Level, Stock};
use crate::views::{Keys, Views};

/// A line an order could not get: what it asked for and what there was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shortfall {
    pub sku: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    pub requested: i64,
    pub available: i64,
}

/// Picks where `quantity` of a SKU comes from: the named location only; else the one location
/// with the most available stock that can fill the line; else several, largest first. Ties go
/// to the location whose name sorts first, so the choice is deterministic.
pub fn allocate(
    stock: Option<&Stock>,
    sku: &str,
    quantity: i64,
    location: Option<&str>,
) -> Result<Vec<(String, i64)>, Shortfall> {
    let short = |available: i64| Shortfall {
        sku: sku.to_owned(),
        location: location.map(str::to_owned),
        requested: quantity,
        available: available.max(0),
    };
    let Some(stock) = stock else {
        return Err(short(0));
    };
    if let Some(loc) = location {
        let avail = stock.locations.get(loc).map_or(0, Level::available);
        return if avail >= quantity {
            Ok(vec![(loc.to_owned(), quantity)])
        } else {
            Err(short(avail))
        };
    }
    let mut by_avail: Vec<(&String, i64)> = stock
        .locations
        .iter()
        .map(|(l, lv)| (l, lv.available()))
        .filter(|(_, a)| *a > 0)
        .collect();
    // Stable sort: equal availability keeps name order.
    by_avail.sort_by_key(|x| std::cmp::Reverse(x.1));
    let total: i64 = by_avail.iter().map(|x| x.1).fold(0, i64::saturating_add);
    if total < quantity {
        return Err(short(total));
    }
    if let Some((l, _)) = by_avail.first().filter(|(_, a)| *a >= quantity) {
        return Ok(vec![((*l).clone(), quantity)]);
    }
    let mut left = quantity;
    let mut out = Vec::new();
    for (l, a) in by_avail {
        if left == 0 {
            break;
        }
        let take = a.min(left);
        out.push((l.clone(), take));
        left -= take;
    }
    Ok(out)
}

fn skus(ev: &Ev) -> Vec<String> {
    match ev.ty.as_str() {
        "inventory.adjusted"
        | "inventory.reserved"
        | "inventory.released"
        | "inventory.committed" => ev.str("sku").map(str::to_owned).into_iter().collect(),
        "return.received" => ev
            .data
            .get("lines")
            .and_then(Value::as_array)
            .map(|ls| {
                ls.iter()
                    .filter_map(|l| l.get("sku").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

pub fn keys(ev: &Ev, _cfg: &ProjectionConfig, keys: &mut Keys) {
    keys.inv.extend(skus(ev));
    if matches!(
        ev.ty.as_str(),
        "inventory.reserved" | "inventory.released" | "inventory.committed" | "order.paid"
    ) && let Some(o) = ev.str("order_id")
    {
        keys.resv.insert(o.to_owned());
    }
}

/// The stock row of `(sku, location)`, created empty if absent.
fn level<'a>(views: &'a mut Views, sku: &str, location: &str) -> &'a mut Level {
    views
        .inv
        .upsert(sku)
        .locations
        .entry(location.to_owned())
        .or_default()
}

/// `expires_at` as ms, from RFC 3339 text.
fn expires_at(ev: &Ev) -> Option<i64> {
    ev.str("expires_at")
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis())
}

pub fn apply(
    views: &mut Views,
    ev: &Ev,
    cfg: &ProjectionConfig,
    out: &mut Vec<Emit>,
) -> Result<(), Overflow> {
    let touched = skus(ev);
    if touched.is_empty() {
        if ev.ty == "order.paid"
            && let Some(r) = ev.str("order_id").and_then(|o| views.resv.get_mut(o))
        {
            r.expires_at = None;
        }
        return Ok(());
    }
    const ON_HAND: &str = "the stock on hand";
    const RESERVED: &str = "the stock reserved";
    let before: BTreeMap<String, i64> = touched
        .iter()
        .map(|s| {
            (
                s.clone(),
                views.inv.get(s).map_or(0, |st| st.total().available()),
            )
        })
        .collect();
    let location = ev
        .str("location")
        .unwrap_or(&cfg.default_location)
        .to_owned();
    let qty = ev.int("quantity").unwrap_or(0).max(0);
    let order_id = ev.str("order_id").map(str::to_owned);
    match ev.ty.as_str() {
        "inventory.adjusted" => {
            let sku = &touched[0];
            let stock = views.inv.upsert(sku);
            if let Some(t) = ev
                .data
                .get("properties")
                .and_then(|p| p.get("low_stock_threshold"))
                .and_then(Value::as_i64)
            {
                stock.threshold = Some(t);
            }
            let level = stock.locations.entry(location).or_default();
            if let Some(set) = ev.int("set") {
                level.on_hand = set;
            } else {
                level.on_hand = add(level.on_hand, ev.int("delta").unwrap_or(0), ON_HAND)?;
            }
        }
        "inventory.reserved" => {
            let sku = &touched[0];
            let lv = level(views, sku, &location);
            lv.reserved = add(lv.reserved, qty, RESERVED)?;
            if let Some(o) = &order_id {
                let exp = expires_at(ev);
                let r = views.resv.upsert(o);
                r.lines.push(Held {
                    sku: sku.clone(),
                    location,
                    quantity: qty,
                });
                if exp.is_some() {
                    r.expires_at = exp;
                }
            }
        }
        "inventory.released" | "inventory.committed" => {
            let sku = &touched[0];
            let level = level(views, sku, &location);
            let q = qty.min(level.reserved);
            level.reserved -= q;
            if ev.ty == "inventory.committed" {
                level.on_hand = sub(level.on_hand, qty, ON_HAND)?;
            }
            if let Some(o) = &order_id {
                let mut empty = false;
                if let Some(r) = views.resv.get_mut(o) {
                    if let Some(i) = r
                        .lines
                        .iter()
                        .position(|h| h.sku == *sku && h.location == location)
                    {
                        r.lines[i].quantity -= qty;
                        if r.lines[i].quantity <= 0 {
                            r.lines.remove(i);
                        }
                    }
                    empty = r.lines.is_empty();
                }
                if empty {
                    views.resv.remove(o);
                }
            }
        }
        "return.received" => {
            if let Some(lines) = ev.data.get("lines").and_then(Value::as_array) {
                for l in lines {
                    let (Some(sku), Some(q)) = (
                        l.get("sku").and_then(Value::as_str),
                        l.get("quantity").and_then(Value::as_i64),
                    ) else {
                        continue;
                    };
                    let lv = level(views, sku, &location);
                    lv.on_hand = add(lv.on_hand, q, ON_HAND)?;
                }
            }
        }
        _ => {}
    }
    for (sku, was) in before {
        let Some(stock) = views.inv.get(&sku) else {
            continue;
        };
        let now = stock.total().available();
        let threshold = stock.threshold.unwrap_or(cfg.low_stock_threshold);
        let ty = if was > threshold && now <= threshold {
            "inventory.low"
        } else if was <= 0 && now > 0 {
            "inventory.back_in_stock"
        } else {
            continue;
        };
        out.push(Emit {
            id: format!("{}:{}:{sku}", ev.id, ty.trim_start_matches("inventory.")),
            ty: ty.to_owned(),
            subject: Some(sku.clone()),
            time: ev.time,
            data: json!({ "sku": sku, "available": now, "threshold": threshold }),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stock(levels: &[(&str, i64, i64)]) -> Stock {
        Stock {
            locations: levels
                .iter()
                .map(|(l, h, r)| {
                    (
                        (*l).to_owned(),
                        Level {
                            on_hand: *h,
                            reserved: *r,
                        },
                    )
                })
                .collect(),
            threshold: None,
        }
    }

    #[test]
    fn allocation_prefers_one_location_then_splits() {
        let s = stock(&[("a", 5, 0), ("b", 8, 1), ("c", 3, 0)]);
        assert_eq!(
            allocate(Some(&s), "X", 6, None).unwrap(),
            vec![("b".into(), 6)]
        );
        assert_eq!(
            allocate(Some(&s), "X", 10, None).unwrap(),
            vec![("b".into(), 7), ("a".into(), 3)]
        );
        let e = allocate(Some(&s), "X", 16, None).unwrap_err();
        assert_eq!((e.requested, e.available), (16, 15));
        let e = allocate(Some(&s), "X", 4, Some("c")).unwrap_err();
        assert_eq!(e.available, 3);
        assert_eq!(allocate(None, "X", 1, None).unwrap_err().available, 0);
    }
}
