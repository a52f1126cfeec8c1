//! The rows the projections keep, one struct per namespace of the state store.
//!
//! Rows are serialized as JSON with ordered maps (`BTreeMap`), so the same state always has the
//! same bytes: that is what lets a replay's digest equal the live one.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The namespaces of the state store.
pub mod ns {
    /// Per identity, per owner partition: what that partition's events say about the customer.
    pub const FRAG: &str = "frag";
    /// Per identity: the identity links (merges) that partition's events made.
    pub const LINK: &str = "link";
    /// `"{trait}={value}\u{1f}{identity}"`: lookup of customers by trait.
    pub const TRAIT: &str = "trait";
    /// Per order id.
    pub const ORDER: &str = "order";
    /// Per SKU: stock at every location.
    pub const INV: &str = "inv";
    /// Per order id: the stock reserved for it.
    pub const RESV: &str = "resv";
    /// Per idempotency key: the command's result.
    pub const IDEM: &str = "idem";
}

/// The most recent event positions a fragment keeps for the customer's timeline.
pub const RECENT: usize = 50;

/// A gap longer than this between two events of a customer starts a new session.
pub const SESSION_GAP_MS: i64 = 30 * 60 * 1000;

/// The most recent sessions a fragment keeps the span of, so that a person's sessions can be
/// counted across fragments (see `read::Profile::sessions`).
pub const SESSION_SPANS: usize = 50;

/// What one partition's events say about one identity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Frag {
    pub first_seen: i64,
    pub last_seen: i64,
    pub events: u64,
    pub sessions: u64,
    pub page_views: u64,
    pub product_views: u64,
    /// Whether an event named this identity as a user id (as opposed to an anonymous id).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_user: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub traits: BTreeMap<String, Stamped>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub consent: BTreeMap<String, Consent>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub categories: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub channels: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cart: Option<Cart>,
    #[serde(default, skip_serializing_if = "OrderStats::is_empty")]
    pub orders: OrderStats,
    /// `(time, order id)` of the latest orders placed, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub order_ids: Vec<(i64, String)>,
    /// `(partition, offset, time)` of the latest events, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<(u32, u64, i64)>,
    /// `(first, last event time)` of the latest sessions, newest last (at most
    /// [`SESSION_SPANS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub session_spans: Vec<(i64, i64)>,
}

/// A value with the time it was set, so fragments combine by "latest wins".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stamped {
    pub value: Value,
    pub at: i64,
}

/// Consent for one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    pub granted: bool,
    pub at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// The current cart; `updated` orders fragments' carts so the newest wins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cart {
    pub items: BTreeMap<String, CartLine>,
    pub updated: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartLine {
    pub quantity: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_price: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

/// Order facts of a customer, summed over fragments at read time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderStats {
    pub count: u64,
    /// Net of cancellations and refunds, per currency.
    pub value: BTreeMap<String, i64>,
    /// Gross placed value per currency (for the average order value).
    pub placed_value: BTreeMap<String, i64>,
    pub cancelled: u64,
    pub refunds: u64,
    pub refunded: BTreeMap<String, i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<LastOrder>,
}

impl OrderStats {
    pub fn is_empty(&self) -> bool {
        *self == OrderStats::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastOrder {
    pub order_id: String,
    pub at: i64,
    pub amount: i64,
    pub currency: String,
}

/// The identity links one partition made for one identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Links {
    pub edges: Vec<Edge>,
}

/// A merge of two identities, kept after an unmerge so the history can be shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    pub to: String,
    pub at: i64,
    pub event_id: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_by: Option<String>,
}

/// Order status, in the order of the happy path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Placed,
    Paid,
    Fulfilled,
    Shipped,
    Delivered,
    Cancelled,
    Refunded,
    Returned,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Placed => "placed",
            Status::Paid => "paid",
            Status::Fulfilled => "fulfilled",
            Status::Shipped => "shipped",
            Status::Delivered => "delivered",
            Status::Cancelled => "cancelled",
            Status::Refunded => "refunded",
            Status::Returned => "returned",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub order_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    pub status: Status,
    pub currency: String,
    pub total: i64,
    pub lines: Vec<OrderLine>,
    #[serde(default)]
    pub paid: i64,
    #[serde(default)]
    pub refunded: i64,
    pub placed_at: i64,
    pub timeline: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub sku: String,
    pub quantity: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_price: Option<i64>,
}

/// One entry of an order's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub status: Status,
    #[serde(rename = "type")]
    pub ty: String,
    pub at: i64,
    pub event_id: String,
    pub offset: u64,
}

/// Stock of one SKU at every location.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stock {
    pub locations: BTreeMap<String, Level>,
    /// A per-SKU low-stock threshold (else the configured default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Level {
    pub on_hand: i64,
    pub reserved: i64,
}

impl Level {
    pub fn available(&self) -> i64 {
        self.on_hand.saturating_sub(self.reserved)
    }
}

impl Stock {
    pub fn total(&self) -> Level {
        self.locations
            .values()
            .fold(Level::default(), |a, l| Level {
                on_hand: a.on_hand.saturating_add(l.on_hand),
                reserved: a.reserved.saturating_add(l.reserved),
            })
    }
}

/// Stock held for an order, per (SKU, location).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub lines: Vec<Held>,
    /// When an unpaid order's hold lapses (ms); `None` once paid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub sku: String,
    pub location: String,
    pub quantity: i64,
}

/// What a command with an idempotency key did, derived from its events in the log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Idem {
    pub command: String,
    pub hash: String,
    pub events: Vec<Value>,
}
