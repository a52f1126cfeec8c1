//! Trigger files: the TOML a user writes (`[[trigger]]`, `[[aggregate]]`, `[arbitration]`,
//! `[[connector]]`), and the compiled [`TriggerSet`] the engine runs (`compile.rs` turns the
//! one into the other, without I/O).
//!
//! Every problem is reported with where it is (`trigger[2] "abandoned-cart".wait.within`), all of
//! them at once, so `storeline triggers check` shows a whole file's mistakes in one run.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::cel::Expr;

/// One problem in a trigger file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    /// Where: a key path, with the line when the TOML parser knows it.
    pub at: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// `"x"` or `["x", "y"]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn list(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// The whole file as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub arbitration: ArbitrationDef,
    #[serde(default)]
    pub aggregate: Vec<AggregateDef>,
    #[serde(default)]
    pub trigger: Vec<TriggerDef>,
    /// Connectors are configured for delivery (their own checks run there); triggers only need
    /// each one's name and kind, which decides the message channel.
    #[serde(default)]
    pub connector: Vec<toml::Table>,
    /// Anything else of the main config file (when triggers are written inline there).
    #[serde(flatten, skip_serializing)]
    pub other: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ArbitrationDef {
    /// Time zone for customers without a `timezone` trait.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Messages to customers are held between these local times (`{ from = "21:00", to = "08:00" }`).
    #[serde(default)]
    pub quiet_hours: Option<QuietHoursDef>,
    /// Per-customer frequency caps, on a rolling window, across all triggers.
    #[serde(default)]
    pub cap: Vec<CapDef>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHoursDef {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CapDef {
    /// A channel (`email`, `sms`, `push`, …) or `"*"` for all messages.
    pub channel: String,
    pub max: u32,
    pub window: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateDef {
    pub name: String,
    pub on: OneOrMany,
    /// CEL: the key the window is kept per (`event.data.card_fingerprint`).
    pub key: String,
    pub window: String,
    #[serde(rename = "fn", default = "count")]
    pub func: String,
    /// CEL: the number summed (`sum`) or the value counted (`distinct`).
    #[serde(default)]
    pub value: Option<String>,
    /// CEL: only events for which this holds are counted.
    #[serde(default)]
    pub when: Option<String>,
}

fn count() -> String {
    "count".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerDef {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub on: OneOrMany,
    #[serde(default)]
    pub when: Option<String>,
    /// CEL: runs are kept per customer and per this key (default: one per customer).
    #[serde(default)]
    pub key: Option<String>,
    /// At most one run ever per customer and key.
    #[serde(default)]
    pub once: bool,
    /// Higher goes first when messages compete for a cap's room: triggers of one event start
    /// in this order, and held messages released together are tried in it.
    #[serde(default)]
    pub priority: i32,
    /// Transactional messages bypass consent, caps and quiet hours.
    #[serde(default)]
    pub transactional: bool,
    /// `defer` (default) or `drop` a message held by a frequency cap.
    #[serde(default)]
    pub on_cap: Option<String>,
    /// `defer` (default) or `drop` a message held by quiet hours.
    #[serde(default)]
    pub on_quiet_hours: Option<String>,
    /// More trigger events for the same run restart this wait before the steps begin.
    #[serde(default)]
    pub debounce: Option<String>,
    #[serde(default)]
    pub cancel_on: Vec<CancelDef>,
    #[serde(default)]
    pub then: Option<Vec<ActionDef>>,
    #[serde(default)]
    pub delay: Option<String>,
    #[serde(default)]
    pub delay_until: Option<String>,
    #[serde(default)]
    pub wait: Option<WaitDef>,
    #[serde(default)]
    pub on_event: Option<Vec<ActionDef>>,
    #[serde(default)]
    pub on_timeout: Option<Vec<ActionDef>>,
    #[serde(default)]
    pub steps: Option<Vec<StepDef>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum CancelDef {
    Type(String),
    Full {
        event: String,
        #[serde(rename = "match", default)]
        matching: Option<String>,
    },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WaitDef {
    #[serde(rename = "for")]
    pub event: OneOrMany,
    pub within: String,
    #[serde(rename = "match", default)]
    pub matching: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StepDef {
    #[serde(default)]
    pub then: Option<Vec<ActionDef>>,
    #[serde(default)]
    pub delay: Option<String>,
    #[serde(default)]
    pub delay_until: Option<String>,
    #[serde(default)]
    pub wait: Option<WaitDef>,
    #[serde(default)]
    pub on_event: Option<Vec<ActionDef>>,
    #[serde(default)]
    pub on_timeout: Option<Vec<ActionDef>>,
    /// After a wait: go on to the next step on `timeout` (default), on `event`, or `both`.
    #[serde(rename = "continue", default)]
    pub continue_on: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActionDef {
    #[serde(default)]
    pub deliver: Option<String>,
    #[serde(default)]
    pub template: Option<String>,
    /// Overrides the connector's channel (decides consent and caps).
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub emit: Option<String>,
    #[serde(default)]
    pub set_trait: Option<String>,
    /// CEL: the trait's value.
    #[serde(default)]
    pub value: Option<String>,
    /// CEL per field: extra data for the delivery or the emitted event.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------------------------
// Compiled form

/// How a waited-for event is matched to a run.
#[derive(Debug)]
pub enum Match {
    SameCustomer,
    SameOrder,
    /// Same customer, and this CEL over `event` (arriving) and `trigger` (the run's event).
    Cel(Expr),
}

#[derive(Debug)]
pub struct Wait {
    pub types: Vec<String>,
    pub within_ms: i64,
    pub matching: Match,
}

#[derive(Debug)]
pub enum Action {
    Deliver {
        connector: String,
        channel: String,
        template: Option<String>,
        data: Vec<(String, Expr)>,
    },
    Emit {
        ty: String,
        data: Vec<(String, Expr)>,
    },
    SetTrait {
        name: String,
        value: Expr,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continue {
    Timeout,
    Event,
    Both,
}

#[derive(Debug)]
pub enum Step {
    Then(Vec<Action>),
    Delay(i64),
    /// Until the next `(hour, minute)` in the customer's time zone.
    DelayUntil(u32, u32),
    Wait {
        wait: Box<Wait>,
        on_event: Vec<Action>,
        on_timeout: Vec<Action>,
        go_on: Continue,
    },
}

#[derive(Debug)]
pub struct Cancel {
    pub ty: String,
    pub matching: Match,
}

/// A trigger ready to run. `version` is a hash of its definition: runs keep the version they
/// started with.
#[derive(Debug)]
pub struct Trigger {
    pub name: String,
    pub version: String,
    pub def: TriggerDef,
    pub on: Vec<String>,
    pub when: Option<Expr>,
    pub key: Option<Expr>,
    pub once: bool,
    pub priority: i32,
    pub transactional: bool,
    pub drop_capped: bool,
    pub drop_quiet: bool,
    pub debounce_ms: Option<i64>,
    pub cancel_on: Vec<Cancel>,
    pub steps: Vec<Step>,
}

impl Trigger {
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggFn {
    Count,
    Sum,
    Distinct,
}

#[derive(Debug)]
pub struct Aggregate {
    pub name: String,
    pub on: Vec<String>,
    pub key: Expr,
    pub window_ms: i64,
    pub func: AggFn,
    pub value: Option<Expr>,
    pub when: Option<Expr>,
}

#[derive(Debug, Clone)]
pub struct Cap {
    pub channel: String,
    pub max: u32,
    pub window_ms: i64,
}

#[derive(Debug, Clone)]
pub struct Arbitration {
    pub timezone: chrono_tz::Tz,
    /// Local `(minutes from, minutes to)` after midnight.
    pub quiet: Option<(u32, u32)>,
    pub caps: Vec<Cap>,
}

impl Default for Arbitration {
    fn default() -> Self {
        Arbitration {
            timezone: chrono_tz::UTC,
            quiet: None,
            caps: Vec::new(),
        }
    }
}

/// A checked trigger file.
#[derive(Debug, Default)]
pub struct TriggerSet {
    /// Hash of the source text: equal texts give equal versions.
    pub version: String,
    pub source: String,
    /// In the order an event starts them: highest `priority` first, then as written.
    pub triggers: Vec<Arc<Trigger>>,
    pub aggregates: Vec<Aggregate>,
    pub arbitration: Arbitration,
    /// Connector name → channel.
    pub channels: HashMap<String, String>,
    /// The `[[connector]]` tables as written (the delivery worker checks and builds them).
    pub connectors: Vec<toml::Table>,
    /// What installs but is probably not meant (a customer's message through a webhook without
    /// a `channel`), with where it is; never a reason to refuse the file.
    pub warnings: Vec<Problem>,
}

/// The channels that reach the customer: a message on one needs the customer's consent for it
/// and counts for caps; a customer who never consented reads as `false` on each.
pub const CUSTOMER_CHANNELS: [&str; 4] = ["email", "sms", "push", "whatsapp"];

/// Whether messages on `channel` go to the customer (and so need consent and count for caps).
pub fn is_customer_channel(channel: &str) -> bool {
    CUSTOMER_CHANNELS.contains(&channel)
}
