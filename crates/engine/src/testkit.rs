//! The engine's internals, for its own integration tests only (built with the `testkit`
//! feature, which the engine's dev-dependency on itself turns on; the server, the CLI and the
//! benchmarks never use it). The tests drive the folds without a runner: a partition's
//! [`Applier`] over a real store, or a world of [`Stage`]s and [`Views`] fed by hand.
//!
//! What is here is not the engine's API: it may change with the internals it shows.

pub use crate::apply::Applier;
pub use crate::triggers::stage::{Outcome, Registry, Stage};
pub use crate::triggers::{FORWARDED, TICK};
pub use crate::views::Views;

/// The pure projections.
pub mod project {
    pub use crate::project::{Emit, apply};
}

/// The trigger file's parts and its expressions.
pub mod triggers {
    pub use crate::triggers::cel::{Expr, Scope};
    pub use crate::triggers::def::{Action, Match, Step};
    pub use crate::triggers::rows::Definition;
}

impl<S> Applier<S> {
    /// The next offset to apply.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The offset the store holds.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// The partition's trigger stage.
    pub fn stage_mut(&mut self) -> &mut Stage {
        &mut self.triggers
    }
}

impl Stage {
    /// The partition's clock.
    pub fn clock(&self) -> i64 {
        self.clock
    }

    /// Moves the clock (a test's world applies records in its own order).
    pub fn set_clock(&mut self, clock: i64) {
        self.clock = clock;
    }

    /// Whether the earliest pending timer is known.
    pub fn knows_next_due(&self) -> bool {
        self.next_due.is_some()
    }

    /// Tells the stage the earliest pending timer.
    pub fn set_next_due(&mut self, due: Option<i64>) {
        self.next_due = Some(due);
    }

    /// The decisions since the last call.
    pub fn take_outcomes(&mut self) -> Vec<Outcome> {
        std::mem::take(&mut self.outcomes)
    }
}

impl Registry {
    /// The file in force.
    pub fn current(&self) -> &crate::triggers::TriggerSet {
        &self.current
    }
}
