//! The projections: pure functions that fold one event into the views and return, as data, the
//! events it causes (low-stock alerts). No clock, no I/O: the same log always gives the same
//! state, which is what replay and the digest rely on.
//!
//! Every projection runs in every partition; what a partition writes it owns (see
//! `storeline_state`), and reads combine the owners' rows.

mod customer;
mod inventory;
mod orders;

use serde_json::Value;

use crate::event::Ev;
use crate::model::Idem;
use crate::views::{Keys, Views};

pub use customer::{combine_orders, fold_forwarded_order, identity_key, linked};
pub use inventory::{Shortfall, allocate};
pub use orders::transition_allowed;

/// Settings the projections read; they are part of what a replay must be given to reproduce
/// the same derived events.
#[derive(Debug, Clone)]
pub struct ProjectionConfig {
    /// Location used when an inventory event names none.
    pub default_location: String,
    /// Available stock at or below which `inventory.low` is emitted (per SKU, all locations).
    pub low_stock_threshold: i64,
}

impl Default for ProjectionConfig {
    fn default() -> Self {
        ProjectionConfig {
            default_location: "main".into(),
            low_stock_threshold: 5,
        }
    }
}

/// An event a projection asks to append (with a deterministic id, so a re-run after a crash is
/// deduplicated instead of doubled).
#[derive(Debug, Clone, PartialEq)]
pub struct Emit {
    pub id: String,
    pub ty: String,
    pub subject: Option<String>,
    pub time: i64,
    pub data: Value,
}

impl Emit {
    /// The record the engine appends for it.
    pub fn into_event(self) -> storeline_event::Event {
        crate::event::build_event(
            self.id,
            "storeline/engine",
            &self.ty,
            self.subject,
            self.time,
            &self.data,
            None,
        )
    }
}

/// Lists the rows `ev` will touch, so they can be loaded before [`apply`].
pub fn keys(ev: &Ev, cfg: &ProjectionConfig, keys: &mut Keys) {
    customer::keys(ev, keys);
    orders::keys(ev, keys);
    inventory::keys(ev, cfg, keys);
    if let Some(m) = &ev.command {
        keys.idem.insert(m.key.clone());
    }
}

/// A sum a view keeps would leave `i64` if this event were applied. Events are validated at
/// ingest (amounts within ±10^15), but sums over many of them are still checked: the event is
/// quarantined instead (its batch is thrown away and applied again without it), never wrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overflow(pub &'static str);

/// `a + b`, or [`Overflow`] naming the sum.
pub(crate) fn add(a: i64, b: i64, what: &'static str) -> Result<i64, Overflow> {
    a.checked_add(b).ok_or(Overflow(what))
}

/// `a - b`, or [`Overflow`] naming the sum.
pub(crate) fn sub(a: i64, b: i64, what: &'static str) -> Result<i64, Overflow> {
    a.checked_sub(b).ok_or(Overflow(what))
}

/// Folds `ev` into `views`; events it causes are pushed to `out`. On [`Overflow`] the views
/// are left half-changed: the caller throws the batch away.
pub fn apply(
    views: &mut Views,
    ev: &Ev,
    cfg: &ProjectionConfig,
    out: &mut Vec<Emit>,
) -> Result<(), Overflow> {
    // Customers first: they read the order as it was before this event (a cancel undoes the
    // order's value only if it was not cancelled already).
    customer::apply(views, ev)?;
    orders::apply(views, ev)?;
    inventory::apply(views, ev, cfg, out)?;
    if let Some(m) = &ev.command {
        let idem = views.idem.upsert(&m.key);
        if idem.events.is_empty() {
            *idem = Idem {
                command: m.name.clone(),
                hash: m.hash.clone(),
                events: Vec::new(),
            };
        }
        idem.events.push(serde_json::json!({
            "id": ev.id, "type": ev.ty, "partition": ev.partition, "offset": ev.offset,
            "data": ev.data,
        }));
    }
    Ok(())
}
