//! Triggers and journeys as code: TOML definitions with CEL conditions ([`def`], [`cel`]), a
//! pure state machine ([`machine`]) over rows kept in the state store ([`rows`]), and the glue
//! that runs it inside a partition's batch (`stage`). Outside the engine, only the file is
//! seen: parse and check it ([`TriggerSet`]), install it ([`install_event`]), count its
//! decisions ([`read`]).
//!
//! Time is the partition's clock: the `received_at` of each record, never the wall clock.
//! Timers due at or before a record's clock fire before that record, so "X and no Y within T"
//! is decided by log order alone: live, on replay and in a backtest alike. A quiet partition's
//! clock is moved on by `storeline.tick` records the runner appends when a timer falls due.
//!
//! Trigger files travel through the log too (`storeline.triggers`, one per partition), so each
//! partition switches at a known position and a run keeps the version it started with.

mod actions;
pub(crate) mod arbitrate;
pub(crate) mod cel;
mod compile;
pub(crate) mod def;
pub(crate) mod doc;
pub(crate) mod machine;
pub(crate) mod person;
pub mod read;
pub mod rows;
pub(crate) mod stage;
pub(crate) mod window;

use serde_json::{Value, json};

pub use def::{Problem, TriggerSet};
pub(crate) use person::{HANDOFF, MERGED};
pub(crate) use stage::{Outcome, Registry, Stage};

/// A commerce event about a customer, copied to the customer's partition for its triggers.
pub const FORWARDED: &str = "storeline.forwarded";
/// Moves a quiet partition's clock so due timers fire.
pub const TICK: &str = "storeline.tick";
/// A new trigger file, from the config or `PUT /v1/triggers`.
pub const TRIGGERS: &str = "storeline.triggers";
/// The `data` field that marks the person's records a backtest routed itself.
pub(crate) const BACKTEST: &str = "backtest";

/// Whether a record of type `ty` with `data` is one the person model sends between partitions:
/// a merge notice, a hand-over, or an event a merged identity's partition forwarded (`via`).
pub(crate) fn moves_the_person(ty: &str, data: &Value) -> bool {
    ty == MERGED || ty == HANDOFF || (ty == FORWARDED && data.get("via").is_some())
}

/// The record that installs `set` in one partition (a fresh id each time, so installing an
/// earlier file again is not mistaken for a duplicate).
pub fn install_event(set: &TriggerSet) -> storeline_event::Event {
    crate::event::build_event(
        format!("trigs_{}", ulid::Ulid::new().to_string().to_lowercase()),
        "storeline/engine",
        TRIGGERS,
        None,
        chrono::Utc::now().timestamp_millis(),
        // `watermarks`: written by a version whose timers wait for the watermark (see
        // `Stage::watermark`); a partition that installs it starts waiting from here.
        &json!({ "version": set.version, "source": set.source, "watermarks": true }),
        None,
    )
}
