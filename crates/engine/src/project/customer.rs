//! Customer 360, write side: per identity, what this partition's events say (activity, traits,
//! consent, cart, order facts), and the identity links that identify/alias/sign-up events make.
//!
//! Identities are the ids events use (a user id or an anonymous id, as given) and e-mail
//! addresses as `email:<lowercased address>`. Fragments are combined, and links followed, at read
//! time (`crate::read`), so a merge or an unmerge never moves data between rows.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{Overflow, add, sub};
use crate::event::Ev;
use crate::model::{
    Cart, CartLine, Consent, Edge, Frag, LastOrder, OrderStats, RECENT, SESSION_GAP_MS,
    SESSION_SPANS, Stamped, Status,
};
use crate::views::{Keys, Views};

/// The identity key of an id as a caller gives it: e-mail addresses become `email:<lowercase>`.
pub fn identity_key(id: &str) -> String {
    if id.contains('@') && !id.starts_with("email:") {
        format!("email:{}", id.trim().to_lowercase())
    } else {
        id.to_owned()
    }
}

/// The identities an event says belong together, with the event's own first, and which of them
/// are user ids.
pub fn linked(ev: &Ev) -> Vec<(String, bool)> {
    if ev.ty.starts_with("inventory.") || ev.ty.starts_with("storeline.") {
        // About a SKU, or the engine's own bookkeeping (a forwarded copy is counted where the
        // original is stored).
        return Vec::new();
    }
    let mut ids: Vec<(String, bool)> = Vec::new();
    let mut add = |id: Option<&str>, user: bool| {
        if let Some(id) = id.filter(|s| !s.is_empty()) {
            let k = identity_key(id);
            if let Some(e) = ids.iter_mut().find(|(i, _)| *i == k) {
                e.1 |= user;
            } else {
                ids.push((k, user));
            }
        }
    };
    let email = ev
        .str("email")
        .map(|e| format!("email:{}", e.to_lowercase()));
    match ev.ty.as_str() {
        "customer.identified" => {
            add(ev.customer(), ev.str("user_id") == ev.customer());
            add(ev.str("user_id"), true);
            add(ev.str("anonymous_id"), false);
            add(email.as_deref(), false);
        }
        "customer.signed_up" => {
            add(ev.customer(), true);
            add(ev.str("customer_id"), true);
            add(ev.str("anonymous_id"), false);
            add(email.as_deref(), false);
        }
        "customer.aliased" => {
            add(ev.str("user_id"), true);
            add(ev.str("previous_id"), false);
        }
        "customer.updated" | "order.placed" => {
            add(ev.customer(), ev.ty == "order.placed");
            add(email.as_deref(), false);
        }
        _ => {
            add(ev.customer(), ev.anonymous_id.is_some());
            add(ev.anonymous_id.as_deref(), false);
        }
    }
    ids
}

pub fn keys(ev: &Ev, keys: &mut Keys) {
    if ev.ty == "customer.unmerged" {
        if let Some(id) = ev.str("identity") {
            keys.link.insert(identity_key(id));
        }
        return;
    }
    let ids = linked(ev);
    keys.frag.extend(ids.iter().map(|(i, _)| i.clone()));
    if ids.len() > 1 {
        keys.link.extend(ids.iter().map(|(i, _)| i.clone()));
    }
    if (ev.ty == "order.cancelled" || ev.ty == "order.refunded")
        && let Some(o) = ev.str("order_id")
    {
        keys.order.insert(o.to_owned());
    }
}

pub fn apply(views: &mut Views, ev: &Ev) -> Result<(), Overflow> {
    if ev.ty == "customer.unmerged" {
        unmerge(views, ev);
        return Ok(());
    }
    let ids = linked(ev);
    let Some((who, _)) = ids.first().cloned() else {
        return Ok(());
    };
    // Links: every identity the event names joins the first one.
    for (other, _) in ids.iter().skip(1) {
        link(views, &who, other, ev);
    }
    for (id, user) in ids.iter().skip(1) {
        let f = views.frag.upsert(id);
        f.is_user |= *user;
        if f.first_seen == 0 {
            f.first_seen = ev.time;
            f.last_seen = ev.time;
        }
    }
    // The order as it was before this event (a cancel or refund needs its status and total).
    let order_before = match ev.ty.as_str() {
        "order.cancelled" | "order.refunded" => ev
            .str("order_id")
            .and_then(|o| views.order.get(o))
            .map(|o| (o.status, o.total, o.currency.clone())),
        _ => None,
    };
    let f = views.frag.upsert(&who);
    f.is_user |= ids[0].1;
    activity(f, ev);
    let mut trait_changes = Vec::new();
    match ev.ty.as_str() {
        "page.viewed" => f.page_views += 1,
        "product.viewed" => {
            f.product_views += 1;
            if let Some(c) = ev.str("category") {
                *f.categories.entry(c.to_owned()).or_default() += 1;
            }
        }
        "cart.item_added" | "cart.item_removed" => cart_line(f, ev)?,
        "cart.viewed" | "checkout.started" => replace_cart(f, ev),
        "order.placed" => order_placed(f, ev)?,
        "order.cancelled" => order_cancelled(f, order_before)?,
        "order.refunded" => order_refunded(f, ev, order_before)?,
        "customer.consent_changed" => consent_changed(f, ev),
        "customer.signed_up" | "customer.identified" | "customer.updated" => {
            trait_changes = set_traits(f, ev);
        }
        _ => {}
    }
    for (name, old, new) in trait_changes {
        if let Some(old) = old.as_ref().and_then(|v| trait_index_key(&name, v, &who)) {
            views.traits.insert(old, false);
        }
        if let Some(new) = trait_index_key(&name, &new, &who) {
            views.traits.insert(new, true);
        }
    }
    Ok(())
}

const VALUE: &str = "the customer's lifetime value";

/// An order's status, total and currency before the event.
type OrderBefore = Option<(Status, i64, String)>;

/// Activity: sessions (with their spans, so a person's sessions can be counted across the
/// fragments one visit leaves in several partitions), first and last seen, recent events,
/// channels used.
fn activity(f: &mut Frag, ev: &Ev) {
    if f.events == 0 || ev.time.saturating_sub(f.last_seen) > SESSION_GAP_MS {
        f.sessions += 1;
        f.session_spans.push((ev.time, ev.time));
        if f.session_spans.len() > SESSION_SPANS {
            f.session_spans.remove(0);
        }
    } else if let Some(span) = f.session_spans.last_mut() {
        span.0 = span.0.min(ev.time);
        span.1 = span.1.max(ev.time);
    }
    if f.first_seen == 0 || ev.time < f.first_seen {
        f.first_seen = ev.time;
    }
    f.last_seen = f.last_seen.max(ev.time);
    f.events += 1;
    f.recent.push((ev.partition, ev.offset, ev.time));
    if f.recent.len() > RECENT {
        let extra = f.recent.len() - RECENT;
        f.recent.drain(..extra);
    }
    if let Some(c) = ev.str("channel")
        && !ev.ty.starts_with("customer.consent")
    {
        f.channels.insert(c.to_owned());
    }
}

/// `cart.item_added` / `cart.item_removed`: one line of the cart changes.
fn cart_line(f: &mut Frag, ev: &Ev) -> Result<(), Overflow> {
    let Some(sku) = ev.str("sku") else {
        return Ok(());
    };
    let qty = ev.int("quantity").unwrap_or(1).max(0) as u64;
    let cart = f.cart.get_or_insert_with(Cart::default);
    cart.updated = ev.time;
    if ev.ty == "cart.item_added" {
        let line = cart.items.entry(sku.to_owned()).or_default();
        line.quantity = line
            .quantity
            .checked_add(qty)
            .ok_or(Overflow("the quantity in the cart"))?;
        if let Some((amount, cur)) = ev.money("unit_price") {
            line.unit_price = Some(amount);
            line.currency = Some(cur);
        }
        if let Some(c) = ev.str("category") {
            *f.categories.entry(c.to_owned()).or_default() += 1;
        }
    } else if let Some(line) = cart.items.get_mut(sku) {
        line.quantity = line.quantity.saturating_sub(qty);
        if line.quantity == 0 {
            cart.items.remove(sku);
        }
    }
    Ok(())
}

/// `cart.viewed` / `checkout.started` with `items`: the cart is what they list.
fn replace_cart(f: &mut Frag, ev: &Ev) {
    if let Some(items) = ev.data.get("items").and_then(Value::as_array) {
        let cart = f.cart.get_or_insert_with(Cart::default);
        cart.updated = ev.time;
        cart.items.clear();
        for it in items {
            let Some(sku) = it.get("sku").and_then(Value::as_str) else {
                continue;
            };
            let price = it.get("unit_price").and_then(crate::event::money);
            cart.items.insert(
                sku.to_owned(),
                CartLine {
                    quantity: it.get("quantity").and_then(Value::as_u64).unwrap_or(1),
                    unit_price: price.as_ref().map(|p| p.0),
                    currency: price.map(|p| p.1),
                },
            );
        }
    }
}

/// `order.placed`: the cart empties (a newer cart fragment wins at read time) and the order
/// facts grow.
fn order_placed(f: &mut Frag, ev: &Ev) -> Result<(), Overflow> {
    f.cart = Some(Cart {
        items: Default::default(),
        updated: ev.time,
    });
    if let Some((amount, cur)) = ev.money("total") {
        let o = &mut f.orders;
        o.count += 1;
        let v = o.value.entry(cur.clone()).or_default();
        *v = add(*v, amount, VALUE)?;
        let v = o.placed_value.entry(cur.clone()).or_default();
        *v = add(*v, amount, "the value of the customer's orders")?;
        o.first_at = Some(o.first_at.map_or(ev.time, |t| t.min(ev.time)));
        if o.last.as_ref().is_none_or(|l| l.at <= ev.time) {
            o.last = Some(LastOrder {
                order_id: ev.str("order_id").unwrap_or_default().to_owned(),
                at: ev.time,
                amount,
                currency: cur,
            });
        }
    }
    if let Some(o) = ev.str("order_id") {
        f.order_ids.push((ev.time, o.to_owned()));
        if f.order_ids.len() > RECENT {
            f.order_ids.remove(0);
        }
    }
    if let Some(lines) = ev.data.get("lines").and_then(Value::as_array) {
        for c in lines
            .iter()
            .filter_map(|l| l.get("category").and_then(Value::as_str))
        {
            *f.categories.entry(c.to_owned()).or_default() += 1;
        }
    }
    Ok(())
}

/// `order.cancelled`: an order not cancelled before leaves the lifetime value.
fn order_cancelled(f: &mut Frag, before: OrderBefore) -> Result<(), Overflow> {
    if let Some((status, total, cur)) = before
        && status != Status::Cancelled
    {
        f.orders.cancelled += 1;
        let v = f.orders.value.entry(cur).or_default();
        *v = sub(*v, total, VALUE)?;
    }
    Ok(())
}

/// `order.refunded`: the refund (the whole order unless it says an amount) leaves the lifetime
/// value, unless the order was cancelled (its value left then).
fn order_refunded(f: &mut Frag, ev: &Ev, before: OrderBefore) -> Result<(), Overflow> {
    let amount = ev
        .money("amount")
        .or_else(|| before.as_ref().map(|(_, total, cur)| (*total, cur.clone())));
    if let Some((amount, cur)) = amount {
        f.orders.refunds += 1;
        let v = f.orders.refunded.entry(cur.clone()).or_default();
        *v = add(*v, amount, "the amount refunded to the customer")?;
        // A cancelled order's value was taken out when it was cancelled.
        let cancelled = before
            .as_ref()
            .is_some_and(|(s, _, _)| *s == Status::Cancelled);
        if !cancelled {
            let v = f.orders.value.entry(cur).or_default();
            *v = sub(*v, amount, VALUE)?;
        }
    }
    Ok(())
}

/// `customer.consent_changed`: the newer choice per channel wins.
fn consent_changed(f: &mut Frag, ev: &Ev) {
    if let (Some(ch), Some(granted)) = (
        ev.str("channel"),
        ev.data.get("granted").and_then(Value::as_bool),
    ) {
        let newer = f.consent.get(ch).is_none_or(|c| c.at <= ev.time);
        if newer {
            f.consent.insert(
                ch.to_owned(),
                Consent {
                    granted,
                    at: ev.time,
                    source: ev.str("source").map(str::to_owned),
                },
            );
        }
    }
}

/// Sign-up, identify and update set traits (the newer value wins); returns what changed, as
/// (name, old value, new value), for the trait index.
fn set_traits(f: &mut Frag, ev: &Ev) -> Vec<(String, Option<Value>, Value)> {
    let mut trait_changes = Vec::new();
    let mut set = |name: &str, v: &Value| {
        if v.is_null() {
            return;
        }
        let old = f.traits.get(name);
        if old.is_some_and(|o| o.at > ev.time) {
            return;
        }
        let old_value = old.map(|o| o.value.clone());
        if old_value.as_ref() != Some(v) {
            trait_changes.push((name.to_owned(), old_value, v.clone()));
        }
        f.traits.insert(
            name.to_owned(),
            Stamped {
                value: v.clone(),
                at: ev.time,
            },
        );
    };
    for name in [
        "email",
        "phone",
        "name",
        "first_name",
        "last_name",
        "locale",
        "timezone",
    ] {
        if let Some(v) = ev.data.get(name) {
            set(name, v);
        }
    }
    if let Some(Value::Object(t)) = ev.data.get("traits") {
        for (k, v) in t {
            set(k, v);
        }
    }
    trait_changes
}

/// The trait-index key of a scalar trait value, `None` for values not worth indexing.
pub fn trait_index_key(name: &str, value: &Value, identity: &str) -> Option<String> {
    let text = match value {
        Value::String(s) => s.to_lowercase(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    (text.len() <= 200 && !name.contains('=')).then(|| format!("{name}={text}\u{1f}{identity}"))
}

/// Adds an active edge between `a` and `b` (both directions) unless one exists.
fn link(views: &mut Views, a: &str, b: &str, ev: &Ev) {
    if a == b {
        return;
    }
    for (from, to) in [(a, b), (b, a)] {
        let row = views.link.upsert(from);
        if !row
            .edges
            .iter()
            .any(|e| e.to == to && e.removed_at.is_none())
        {
            row.edges.push(Edge {
                to: to.to_owned(),
                at: ev.time,
                event_id: ev.id.clone(),
                reason: ev.ty.clone(),
                removed_at: None,
                removed_by: None,
            });
        }
    }
}

/// Ends every active edge of the identity (both directions); the history stays.
fn unmerge(views: &mut Views, ev: &Ev) {
    let Some(id) = ev.str("identity").map(identity_key) else {
        return;
    };
    // Every edge of the identity goes: any of them ties it to the profile it was merged into.
    let mut others = BTreeSet::new();
    if let Some(row) = views.link.get_mut(&id) {
        for e in row.edges.iter_mut().filter(|e| e.removed_at.is_none()) {
            e.removed_at = Some(ev.time);
            e.removed_by = Some(ev.id.clone());
            others.insert(e.to.clone());
        }
    }
    for other in others {
        if let Some(row) = views.link.get_mut(&other) {
            for e in row
                .edges
                .iter_mut()
                .filter(|e| e.to == id && e.removed_at.is_none())
            {
                e.removed_at = Some(ev.time);
                e.removed_by = Some(ev.id.clone());
            }
        }
    }
}

/// Folds a forwarded copy of an order event into the order facts its customer's partition keeps
/// for conditions (the original is folded into the commerce partition's fragment). A copy of a
/// cancellation or refund carries no order row: a cancel takes out the order's `total` when the
/// copy has one, a refund its `amount`.
pub fn fold_forwarded_order(o: &mut OrderStats, ty: &str, data: &Value, time: i64) {
    let money = |k: &str| data.get(k).and_then(crate::event::money);
    match ty {
        "order.placed" => {
            let Some((amount, cur)) = money("total") else {
                return;
            };
            o.count += 1;
            let v = o.value.entry(cur.clone()).or_default();
            *v = v.saturating_add(amount);
            let v = o.placed_value.entry(cur.clone()).or_default();
            *v = v.saturating_add(amount);
            o.first_at = Some(o.first_at.map_or(time, |t| t.min(time)));
            if o.last.as_ref().is_none_or(|l| l.at <= time) {
                o.last = Some(LastOrder {
                    order_id: data
                        .get("order_id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    at: time,
                    amount,
                    currency: cur,
                });
            }
        }
        "order.cancelled" => {
            o.cancelled += 1;
            if let Some((amount, cur)) = money("total") {
                let v = o.value.entry(cur).or_default();
                *v = v.saturating_sub(amount);
            }
        }
        "order.refunded" => {
            if let Some((amount, cur)) = money("amount") {
                o.refunds += 1;
                let v = o.refunded.entry(cur.clone()).or_default();
                *v = v.saturating_add(amount);
                let v = o.value.entry(cur).or_default();
                *v = v.saturating_sub(amount);
            }
        }
        _ => {}
    }
}

/// Adds `from`'s order facts to `into` (two identities of one person).
pub fn combine_orders(into: &mut OrderStats, from: &OrderStats) {
    into.count = into.count.saturating_add(from.count);
    into.cancelled = into.cancelled.saturating_add(from.cancelled);
    into.refunds = into.refunds.saturating_add(from.refunds);
    for (m, f) in [
        (&mut into.value, &from.value),
        (&mut into.placed_value, &from.placed_value),
        (&mut into.refunded, &from.refunded),
    ] {
        for (cur, v) in f {
            let e = m.entry(cur.clone()).or_default();
            *e = e.saturating_add(*v);
        }
    }
    into.first_at = match (into.first_at, from.first_at) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(l) = &from.last
        && into.last.as_ref().is_none_or(|m| m.at <= l.at)
    {
        into.last = Some(l.clone());
    }
}
