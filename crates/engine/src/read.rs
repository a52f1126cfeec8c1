//! The read side: combines the rows every partition owns into the API's views.
//!
//! A customer is the set of identities linked by active edges (any partition's); the profile
//! combines every fragment of every identity: counters add up, times take the extremes, traits
//! and consent take the latest value, the newest cart wins. RFM is scored at read time against
//! `now`, so it never goes stale in the store.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde_json::{Value, json};
use storeline_state::StateStore;

use crate::error::Result;
use crate::model::{Cart, Consent, Edge, Frag, Links, Order, Stamped, Stock, ns};
use crate::project::identity_key;
use crate::triggers::def::CUSTOMER_CHANNELS;

/// The most identities one profile is followed to (a guard against a runaway merge).
const MAX_IDENTITIES: usize = 1000;

fn time(ms: i64) -> Value {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| Value::String(storeline_event::format_time(&t)))
        .unwrap_or(Value::Null)
}

async fn rows<S: StateStore, T: serde::de::DeserializeOwned>(
    store: &S,
    ns: &str,
    key: &str,
) -> Result<Vec<T>> {
    Ok(store
        .get(ns, key)
        .await?
        .into_iter()
        .filter_map(|(_, b)| serde_json::from_slice(&b).ok())
        .collect())
}

/// A customer's identities and the merge history between them.
pub struct Profile {
    pub identities: Vec<String>,
    pub edges: Vec<(String, Edge)>,
    pub frags: Vec<(String, Frag)>,
}

/// Follows active links from `id` and loads every fragment; `None` if nothing is known.
pub async fn profile<S: StateStore>(store: &S, id: &str) -> Result<Option<Profile>> {
    let start = identity_key(id);
    let mut seen = BTreeSet::from([start.clone()]);
    let mut queue = VecDeque::from([start]);
    let mut edges = Vec::new();
    let mut frags = Vec::new();
    while let Some(cur) = queue.pop_front() {
        for f in rows::<S, Frag>(store, ns::FRAG, &cur).await? {
            frags.push((cur.clone(), f));
        }
        for l in rows::<S, Links>(store, ns::LINK, &cur).await? {
            for e in l.edges {
                if e.removed_at.is_none()
                    && seen.len() < MAX_IDENTITIES
                    && seen.insert(e.to.clone())
                {
                    queue.push_back(e.to.clone());
                }
                edges.push((cur.clone(), e));
            }
        }
    }
    if frags.is_empty() && edges.is_empty() {
        return Ok(None);
    }
    Ok(Some(Profile {
        identities: seen.into_iter().collect(),
        edges,
        frags,
    }))
}

impl Profile {
    /// The profile's id: a user id if any identity is one, else the first non-e-mail identity.
    pub fn id(&self) -> String {
        let users: BTreeSet<&String> = self
            .frags
            .iter()
            .filter(|(_, f)| f.is_user)
            .map(|(i, _)| i)
            .collect();
        users
            .first()
            .map(|s| (*s).clone())
            .or_else(|| {
                self.identities
                    .iter()
                    .find(|i| !i.starts_with("email:"))
                    .cloned()
            })
            .unwrap_or_else(|| self.identities[0].clone())
    }

    /// The `(partition, offset, time)` of the latest events, newest first.
    pub fn recent(&self, limit: usize) -> Vec<(u32, u64, i64)> {
        let mut all: Vec<(u32, u64, i64)> = self
            .frags
            .iter()
            .flat_map(|(_, f)| f.recent.iter().copied())
            .collect();
        all.sort_by(|a, b| b.2.cmp(&a.2).then(b.0.cmp(&a.0)).then(b.1.cmp(&a.1)));
        all.dedup();
        all.truncate(limit);
        all
    }

    /// Order ids of the customer, newest first.
    pub fn order_ids(&self) -> Vec<String> {
        let mut all: Vec<(i64, String)> = self
            .frags
            .iter()
            .flat_map(|(_, f)| f.order_ids.iter().cloned())
            .collect();
        all.sort_by(|a, b| b.cmp(a));
        all.dedup();
        all.into_iter().map(|(_, o)| o).collect()
    }

    /// Each merge once (an edge is stored at both ends, and after an unmerge only one end may be
    /// reachable), oldest first.
    fn merges(&self) -> Vec<([&str; 2], &Edge)> {
        let mut seen = BTreeSet::new();
        let mut out: Vec<([&str; 2], &Edge)> = Vec::new();
        for (from, e) in &self.edges {
            let pair = if *from < e.to {
                (from.as_str(), e.to.as_str())
            } else {
                (e.to.as_str(), from.as_str())
            };
            if seen.insert((pair, e.event_id.as_str())) {
                out.push(([pair.0, pair.1], e));
            }
        }
        out.sort_by(|a, b| a.1.at.cmp(&b.1.at).then(a.0.cmp(&b.0)));
        out
    }

    /// Sessions of the person, not of each fragment: one visit can leave events in several
    /// partitions (an anonymous cart, then the identify and the order under the user id), so
    /// the recent session spans of every fragment are merged, 30 minutes apart at least. Older
    /// sessions (beyond the spans each fragment keeps) are counted as they were.
    pub fn sessions(&self) -> u64 {
        let mut spans: Vec<(i64, i64)> = Vec::new();
        let mut older = 0u64;
        for (_, f) in &self.frags {
            spans.extend(f.session_spans.iter().copied());
            older = older.saturating_add(f.sessions.saturating_sub(f.session_spans.len() as u64));
        }
        spans.sort_unstable();
        let mut merged = 0u64;
        let mut end: Option<i64> = None;
        for (s, e) in spans {
            match end {
                Some(cur) if s.saturating_sub(cur) <= crate::model::SESSION_GAP_MS => {
                    end = Some(cur.max(e));
                }
                _ => {
                    merged += 1;
                    end = Some(e);
                }
            }
        }
        older.saturating_add(merged)
    }

    /// The Customer 360 document.
    pub fn to_json(&self, now_ms: i64) -> Value {
        let mut traits: BTreeMap<&str, &Stamped> = BTreeMap::new();
        let mut consent: BTreeMap<&str, &Consent> = BTreeMap::new();
        let mut categories: BTreeMap<&str, u64> = BTreeMap::new();
        let mut channels: BTreeSet<&str> = BTreeSet::new();
        let mut cart: Option<&Cart> = None;
        let (mut first, mut last) = (i64::MAX, 0i64);
        let (mut events, mut pages, mut products) = (0, 0, 0);
        let (mut orders, mut cancelled, mut refunds) = (0u64, 0u64, 0u64);
        let mut value: BTreeMap<&str, i64> = BTreeMap::new();
        let mut placed: BTreeMap<&str, i64> = BTreeMap::new();
        let mut refunded: BTreeMap<&str, i64> = BTreeMap::new();
        let mut last_order = None;
        for (_, f) in &self.frags {
            if f.events > 0 {
                first = first.min(f.first_seen);
            }
            last = last.max(f.last_seen);
            events += f.events;
            pages += f.page_views;
            products += f.product_views;
            for (k, v) in &f.traits {
                if traits.get(k.as_str()).is_none_or(|o| o.at <= v.at) {
                    traits.insert(k, v);
                }
            }
            for (k, v) in &f.consent {
                if consent.get(k.as_str()).is_none_or(|o| o.at <= v.at) {
                    consent.insert(k, v);
                }
            }
            for (k, n) in &f.categories {
                *categories.entry(k).or_default() += n;
            }
            channels.extend(f.channels.iter().map(String::as_str));
            if let Some(c) = &f.cart
                && cart.is_none_or(|o| o.updated <= c.updated)
            {
                cart = Some(c);
            }
            let o = &f.orders;
            orders += o.count;
            cancelled += o.cancelled;
            refunds += o.refunds;
            // Each fragment's sums are checked when applied; their total saturates rather than
            // wrap (the combined value of a person could exceed what one fragment may hold).
            for (c, v) in &o.value {
                let t = value.entry(c).or_default();
                *t = t.saturating_add(*v);
            }
            for (c, v) in &o.placed_value {
                let t = placed.entry(c).or_default();
                *t = t.saturating_add(*v);
            }
            for (c, v) in &o.refunded {
                let t = refunded.entry(c).or_default();
                *t = t.saturating_add(*v);
            }
            if let Some(l) = &o.last
                && last_order.is_none_or(|x: &crate::model::LastOrder| x.at <= l.at)
            {
                last_order = Some(l);
            }
        }
        let sessions = self.sessions();
        // The main currency is the one most was spent in.
        let main = placed.iter().max_by_key(|(_, v)| **v).map(|(c, _)| *c);
        let ltv =
            main.map(|c| json!({ "amount": value.get(c).copied().unwrap_or(0), "currency": c }));
        let kept = orders.saturating_sub(cancelled);
        let aov = main.filter(|_| kept > 0).map(|c| json!({ "amount": value.get(c).copied().unwrap_or(0) / kept as i64, "currency": c }));
        let mut fav: Vec<(&str, u64)> = categories.into_iter().collect();
        fav.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let rfm = last_order.map(|l| {
            let days = ((now_ms - l.at).max(0) / 86_400_000) as u64;
            let r = match days { 0..=30 => 5, 31..=90 => 4, 91..=180 => 3, 181..=365 => 2, _ => 1 };
            let f = match kept { 10.. => 5, 5..=9 => 4, 3..=4 => 3, 2 => 2, _ => 1 };
            let m_amount = main.and_then(|c| value.get(c)).copied().unwrap_or(0);
            let m = match m_amount { 100_000.. => 5, 50_000..=99_999 => 4, 20_000..=49_999 => 3, 5_000..=19_999 => 2, _ => 1 };
            json!({ "recency_days": days, "frequency": kept, "monetary": m_amount, "r": r, "f": f, "m": m, "score": format!("{r}{f}{m}") })
        });
        let cart_json = cart.filter(|c| !c.items.is_empty()).map(|c| {
            let mut total: BTreeMap<&str, i64> = BTreeMap::new();
            let items: Vec<Value> = c
                .items
                .iter()
                .map(|(sku, l)| {
                    if let (Some(p), Some(cur)) = (l.unit_price, &l.currency) {
                        let line = p.saturating_mul(i64::try_from(l.quantity).unwrap_or(i64::MAX));
                        let t = total.entry(cur).or_default();
                        *t = t.saturating_add(line);
                    }
                    json!({ "sku": sku, "quantity": l.quantity, "unit_price": l.unit_price.map(|p| json!({ "amount": p, "currency": l.currency })) })
                })
                .collect();
            let value = total.iter().next().map(|(c, v)| json!({ "amount": v, "currency": c }));
            json!({ "items": items, "value": value, "updated_at": time(c.updated) })
        });
        let by_kind = |pred: &dyn Fn(&str) -> bool| -> Vec<&str> {
            self.identities
                .iter()
                .map(String::as_str)
                .filter(|i| pred(i))
                .collect()
        };
        let users: BTreeSet<&str> = self
            .frags
            .iter()
            .filter(|(_, f)| f.is_user)
            .map(|(i, _)| i.as_str())
            .collect();
        json!({
            "id": self.id(),
            "identities": {
                "all": self.identities,
                "user_ids": by_kind(&|i| users.contains(i)),
                "anonymous_ids": by_kind(&|i| !users.contains(i) && !i.starts_with("email:")),
                "emails": self.identities.iter().filter_map(|i| i.strip_prefix("email:")).collect::<Vec<_>>(),
            },
            "merges": self.merges().into_iter().map(|(pair, e)| json!({
                "identities": pair, "merged_at": time(e.at), "event_id": e.event_id, "by": e.reason,
                "unmerged_at": e.removed_at.map(time), "unmerged_by": e.removed_by,
            })).collect::<Vec<_>>(),
            "traits": traits.iter().map(|(k, v)| (k.to_string(), v.value.clone())).collect::<serde_json::Map<_, _>>(),
            "consent": effective_consent(&consent),
            "consent_details": consent.iter().map(|(k, c)| (k.to_string(), json!({ "granted": c.granted, "at": time(c.at), "source": c.source }))).collect::<serde_json::Map<_, _>>(),
            "stats": {
                "first_seen": if events > 0 { time(first) } else { Value::Null },
                "last_seen": if events > 0 { time(last) } else { Value::Null },
                "events": events, "sessions": sessions, "page_views": pages, "product_views": products,
                "orders": orders, "cancelled_orders": cancelled,
                "lifetime_value": ltv, "lifetime_value_by_currency": value,
                "average_order_value": aov,
                "last_order": last_order.map(|l| json!({ "order_id": l.order_id, "at": time(l.at), "total": { "amount": l.amount, "currency": l.currency } })),
                "refunds": refunds, "refunded": refunded,
                "favourite_categories": fav.iter().take(3).map(|(c, _)| *c).collect::<Vec<_>>(),
                "channels": channels,
                "rfm": rfm,
            },
            "cart": cart_json,
        })
    }
}

/// Consent per channel as arbitration reads it: every customer channel is `false` until the
/// customer grants it, and any other channel recorded (`webhook`) shows as recorded.
fn effective_consent(recorded: &BTreeMap<&str, &Consent>) -> Value {
    let mut out: serde_json::Map<String, Value> = CUSTOMER_CHANNELS
        .iter()
        .map(|ch| (ch.to_string(), Value::Bool(false)))
        .collect();
    for (k, c) in recorded {
        out.insert(k.to_string(), Value::Bool(c.granted));
    }
    Value::Object(out)
}

/// The partitions that hold a link row for `identity` (a normalised identity key): where a merge
/// of it was recorded, so where an unmerge must go. Empty when it was never merged.
pub async fn link_owners<S: StateStore>(store: &S, identity: &str) -> Result<BTreeSet<u32>> {
    Ok(store
        .get(ns::LINK, identity)
        .await?
        .into_iter()
        .map(|(owner, _)| owner)
        .collect())
}

/// Customers whose trait `name` equals `value` (case-insensitive for text), as identities.
pub async fn by_trait<S: StateStore>(
    store: &S,
    name: &str,
    value: &str,
    limit: usize,
) -> Result<Vec<String>> {
    let prefix = format!("{name}={}\u{1f}", value.to_lowercase());
    let rows = store.scan(ns::TRAIT, &prefix, None, limit).await?;
    let mut out: Vec<String> = rows
        .into_iter()
        .filter_map(|r| r.key.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    out.dedup();
    Ok(out)
}

/// An order as the API shows it (the owners' rows combined: the placing one wins, the
/// timeline is merged by time).
pub async fn order<S: StateStore>(store: &S, id: &str) -> Result<Option<Value>> {
    let mut all: Vec<Order> = rows(store, ns::ORDER, id).await?;
    if all.is_empty() {
        return Ok(None);
    }
    all.sort_by_key(|o| o.timeline.first().map_or(i64::MAX, |s| s.at));
    let mut o = all.remove(0);
    for other in all {
        o.timeline.extend(other.timeline);
    }
    o.timeline.sort_by_key(|s| s.at);
    if let Some(last) = o.timeline.last() {
        o.status = last.status;
    }
    let money = |a: i64| json!({ "amount": a, "currency": o.currency });
    Ok(Some(json!({
        "order_id": o.order_id, "customer_id": o.customer_id, "status": o.status.as_str(),
        "total": money(o.total), "paid": money(o.paid), "refunded": money(o.refunded),
        "placed_at": time(o.placed_at),
        "lines": o.lines.iter().map(|l| json!({ "sku": l.sku, "quantity": l.quantity, "unit_price": l.unit_price.map(money) })).collect::<Vec<_>>(),
        "timeline": o.timeline.iter().map(|s| json!({ "status": s.status.as_str(), "type": s.ty, "at": time(s.at), "event_id": s.event_id, "offset": s.offset })).collect::<Vec<_>>(),
    })))
}

/// Stock of a SKU, summed over owners and locations.
pub async fn inventory<S: StateStore>(
    store: &S,
    sku: &str,
    default_threshold: i64,
) -> Result<Option<Value>> {
    let all: Vec<Stock> = rows(store, ns::INV, sku).await?;
    if all.is_empty() {
        return Ok(None);
    }
    let mut locs: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut threshold = None;
    for s in &all {
        threshold = threshold.or(s.threshold);
        for (l, lv) in &s.locations {
            let e = locs.entry(l.clone()).or_default();
            e.0 += lv.on_hand;
            e.1 += lv.reserved;
        }
    }
    let (h, r) = locs.values().fold((0, 0), |a, v| (a.0 + v.0, a.1 + v.1));
    Ok(Some(json!({
        "sku": sku, "on_hand": h, "reserved": r, "available": h - r,
        "low_stock_threshold": threshold.unwrap_or(default_threshold),
        "locations": locs.iter().map(|(l, (h, r))| json!({ "location": l, "on_hand": h, "reserved": r, "available": h - r })).collect::<Vec<_>>(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(consent: &[(&str, bool, i64, Option<&str>)]) -> Profile {
        let mut f = Frag {
            events: 1,
            ..Frag::default()
        };
        for (ch, granted, at, source) in consent {
            f.consent.insert(
                ch.to_string(),
                Consent {
                    granted: *granted,
                    at: *at,
                    source: source.map(str::to_owned),
                },
            );
        }
        Profile {
            identities: vec!["cus-1".into()],
            edges: Vec::new(),
            frags: vec![("cus-1".into(), f)],
        }
    }

    #[test]
    fn a_customer_who_never_consented_reads_false_on_every_customer_channel() {
        let doc = profile(&[]).to_json(0);
        assert_eq!(
            doc["consent"],
            json!({ "email": false, "sms": false, "push": false, "whatsapp": false })
        );
        // Details are what was recorded: nothing.
        assert_eq!(doc["consent_details"], json!({}));
    }

    #[test]
    fn recorded_consent_wins_and_keeps_its_details() {
        let doc = profile(&[
            ("email", true, 1_000, Some("checkout")),
            ("sms", false, 2_000, None),
            ("webhook", true, 3_000, None),
        ])
        .to_json(0);
        assert_eq!(
            doc["consent"],
            json!({ "email": true, "sms": false, "push": false, "whatsapp": false, "webhook": true })
        );
        assert_eq!(
            doc["consent_details"]["email"],
            json!({ "granted": true, "at": "1970-01-01T00:00:01Z", "source": "checkout" })
        );
        assert!(doc["consent_details"].get("push").is_none());
        assert_eq!(doc["consent_details"].as_object().map(|m| m.len()), Some(3));
    }
}
