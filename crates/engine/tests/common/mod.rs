//! What the engine's integration tests share: events as the log stores them, a runtime of two
//! workers, and a `World` of partitions fed by hand on a virtual clock, applying each record as
//! the partition writer does (timers due at or before it fire first; what a record causes goes
//! to the partition it routes to). Each test adds its own clock ticks and event helpers.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;

use serde_json::{Value, json};
use storeline_engine::testkit::project;
use storeline_engine::testkit::{Outcome, Registry, Stage, TICK, Views};
use storeline_engine::triggers::TriggerSet;
use storeline_engine::{Ev, ProjectionConfig};
use storeline_event::outbox::OutboxKey;

pub const MIN: i64 = 60_000;

/// 2026-03-02 (a Monday) 00:00 UTC, in ms.
pub fn day0() -> i64 {
    chrono::DateTime::parse_from_rfc3339("2026-03-02T00:00:00Z")
        .expect("a time")
        .timestamp_millis()
}

/// A stored event as the log holds it: id `e{n}`, source `test`, and `time` and `received_at`
/// both `time` (ms).
pub fn stored(n: usize, ty: &str, subject: &str, time: i64, data: Value) -> Vec<u8> {
    let t = chrono::DateTime::from_timestamp_millis(time).unwrap();
    serde_json::to_vec(&json!({
        "specversion": "1.0", "id": format!("e{n}"), "source": "test", "type": ty,
        "time": storeline_event::format_time(&t), "subject": subject, "data": data,
        "received_at": storeline_event::format_time(&t),
    }))
    .unwrap()
}

/// A multi-thread runtime of two workers, for a test that starts its own.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// An event as the engine applies it (partition and offset are set when it is applied).
pub fn ev(id: String, ty: &str, received: i64, subject: Option<String>, data: Value) -> Ev {
    Ev {
        id,
        ty: ty.into(),
        time: received,
        received,
        subject,
        data,
        anonymous_id: None,
        command: None,
        // The storeline.* records of these tests stand for the engine's own.
        internal: ty.starts_with("storeline."),
        reserved_source: false,
        partition: 0,
        offset: 0,
    }
}

/// One partition: its views, its trigger stage and the next offset.
pub struct Part {
    pub views: Views,
    pub stage: Stage,
    pub offset: u64,
}

/// Partitions applied in memory: rows are not loaded by key (`Stage::keys`/`follow` are not
/// exercised here).
pub struct World {
    pub parts: Vec<Part>,
    /// Records waiting to be applied, with their partition.
    pub queue: VecDeque<(u32, Ev)>,
    /// Where a record of a type and subject is stored.
    route: fn(&str, Option<&str>) -> u32,
    pub cfg: ProjectionConfig,
    /// Records the engine caused, held back while `hold` is set.
    pub held: Vec<(u32, Ev)>,
    pub hold: bool,
    /// Ticks carry a watermark, as the live writers' do.
    pub watermarks: bool,
    /// Outbox entries in the order they were written, each with `sent_at`: the clock of its
    /// key (when it was handed to delivery).
    pub sent: Vec<Value>,
    pub outcomes: Vec<Outcome>,
    /// Every record the engine emitted, as applied.
    pub emitted: Vec<Ev>,
    pub now: i64,
    /// Events sent so far (they are `evt-1`, `evt-2`, …).
    pub n: u64,
}

impl World {
    /// `partitions` partitions running the trigger file `source`, the commerce one `commerce`.
    pub fn build(
        source: &str,
        partitions: u32,
        commerce: u32,
        route: fn(&str, Option<&str>) -> u32,
    ) -> World {
        let parts = (0..partitions)
            .map(|p| Part {
                views: Views::new(p),
                stage: Stage::new(
                    Registry::new(TriggerSet::parse(source).expect("compiles")),
                    Some(commerce),
                ),
                offset: 0,
            })
            .collect();
        World {
            parts,
            queue: VecDeque::new(),
            route,
            cfg: ProjectionConfig::default(),
            held: Vec::new(),
            hold: false,
            watermarks: false,
            sent: Vec::new(),
            outcomes: Vec::new(),
            emitted: Vec::new(),
            now: day0(),
            n: 0,
        }
    }

    /// Sends the next event (`evt-N`) at `at` (ms) and applies everything it causes.
    pub fn event(&mut self, at: i64, ty: &str, subject: &str, data: Value) {
        self.n += 1;
        let ev = ev(
            format!("evt-{}", self.n),
            ty,
            at,
            Some(subject.into()),
            data,
        );
        self.queue.push_back(((self.route)(ty, Some(subject)), ev));
        self.drain();
    }

    /// Queues a tick for every partition (named `id(partition)`), with the watermark `at` if
    /// `watermarks`, and applies everything.
    pub fn ticks(&mut self, at: i64, id: impl Fn(u32) -> String) {
        for p in 0..self.parts.len() as u32 {
            // Every partition has applied everything up to `at` here, so the watermark is `at`
            // (the live writers compute it from each other's clocks).
            let data = if self.watermarks {
                json!({ "watermark": at })
            } else {
                Value::Null
            };
            self.queue.push_back((p, ev(id(p), TICK, at, None, data)));
        }
        self.drain();
    }

    /// Releases what `hold` held back, in order, and applies everything.
    pub fn release(&mut self) {
        self.hold = false;
        let held = std::mem::take(&mut self.held);
        self.queue.extend(held);
        self.drain();
    }

    /// Applies the queue until it is empty, as the partition writer applies a record.
    pub fn drain(&mut self) {
        while let Some((p, mut ev)) = self.queue.pop_front() {
            let part = &mut self.parts[p as usize];
            ev.partition = p;
            ev.offset = part.offset;
            part.offset += 1;
            let clock = part.stage.clock().max(ev.received);
            let mut emits = Vec::new();
            part.stage.fire_due(&mut part.views, p, clock, &mut emits);
            part.stage.set_clock(clock);
            project::apply(&mut part.views, &ev, &self.cfg, &mut emits).expect("no sum overflows");
            part.stage.apply(&mut part.views, &ev, p, &mut emits);
            part.stage.fire_due(&mut part.views, p, clock, &mut emits);
            for (key, entry) in std::mem::take(&mut part.views.outbox) {
                // The key's clock: the time it was handed to delivery.
                let at = OutboxKey::decode(&key).expect("outbox key").clock;
                let mut entry = serde_json::to_value(entry).expect("an entry is JSON");
                entry["sent_at"] = json!(at);
                self.sent.push(entry);
            }
            self.outcomes.extend(part.stage.take_outcomes());
            for e in emits {
                let mut out = self::ev(e.id, &e.ty, clock, e.subject, e.data);
                out.time = e.time;
                self.emitted.push(out.clone());
                let to = (self.route)(&out.ty, out.subject.as_deref());
                if self.hold {
                    self.held.push((to, out));
                } else {
                    self.queue.push_back((to, out));
                }
            }
        }
    }
}
