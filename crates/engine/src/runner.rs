//! The live partition writer: follows its partition of the log, applies batches, appends the
//! events projections cause, commits, and publishes how far it got. The commerce partition's
//! writer also carries out commands and lapses unpaid reservations.
//!
//! ```text
//!  loop ─► commands queued? ─► catch up to the log's end ─► plan each command on a scratch copy
//!   │                                                       └► append all events as one batch ─► reply
//!   ├───► records behind the end? ─► apply ≤ batch ─► append caused events ─► commit ─► publish
//!   └───► else wait: new records | a command | the expiry tick | shutdown
//! ```
//!
//! Caused events are appended before the commit that records their cause: after a crash the
//! batch is applied again and the same events (same ids) are deduplicated, never lost.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use storeline_event::Event;
use storeline_log::EventLog;
use storeline_state::StateStore;
use tokio::sync::{mpsc, oneshot, watch};

use crate::apply::Applier;
use crate::commands::{self, Command, Planned};
use crate::error::{AppendError, CommandError, Result};
use crate::event::{CommandMark, Ev, build_event};
use crate::model::ns;
use crate::project::{self, Emit};
use crate::views::{Keys, Views};

/// Where stored events come from and go to: the server's ingest path (deduplication, routing).
pub trait Appender: Send + Sync + 'static {
    /// Stores `events` (to `partition` if given, else routed by key) and returns each one's
    /// `(partition, offset)`; a duplicate returns its original position.
    fn append(
        &self,
        events: Vec<Event>,
        partition: Option<u32>,
    ) -> impl Future<Output = std::result::Result<Vec<(u32, u64)>, AppendError>> + Send;
}

/// A command on its way to the commerce writer.
pub struct CommandRequest {
    pub command: Command,
    pub idempotency_key: Option<String>,
    /// SHA-256 (hex) of the command name and body, compared on a repeated key.
    pub hash: String,
    pub reply: oneshot::Sender<std::result::Result<CommandOutcome, CommandError>>,
}

/// A command's result: its events with their positions.
#[derive(Debug, Clone)]
pub struct CommandOutcome {
    pub events: Vec<Value>,
    /// True when this is the stored result of an earlier request with the same key.
    pub replayed: bool,
}

/// How a runner is set up.
pub struct RunnerConfig {
    pub batch_max: usize,
    pub linger: Duration,
    pub reservation_ttl_ms: i64,
    pub source: String,
}

pub struct Runner<L, S, A> {
    pub applier: Applier<S>,
    pub log: Arc<L>,
    pub appender: Arc<A>,
    pub cfg: Arc<RunnerConfig>,
    pub applied: watch::Sender<u64>,
    pub commands: Option<mpsc::Receiver<CommandRequest>>,
    /// Commerce writer: `(expires_at, order_id)` of holds that may lapse.
    pub expiries: BTreeSet<(i64, String)>,
    /// Commerce writer: results of recent commands by idempotency key (rejections included,
    /// which the log does not record).
    pub recent: HashMap<String, (String, std::result::Result<CommandOutcome, CommandError>)>,
    /// The due time a tick was last appended for (so one due time gets one tick).
    pub ticked: Option<i64>,
    /// What operations see of this writer (failing since, quarantine size).
    pub status: Arc<crate::PartitionStatus>,
    /// Every writer's clock: when this one's timers may fire (see [`crate::watermark`]).
    pub marks: Arc<crate::watermark::Marks>,
    /// The clock another writer asked for that a tick of this one's is on its way to.
    pub self_tick: Option<i64>,
    /// When the last batch was applied (for [`Runner::linger`]).
    pub last_step: Option<std::time::Instant>,
}

/// A writer lingers only while fewer records than this wait: a backlog is applied at once.
const LINGER_RECORDS: u64 = 256;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Counts a batch's trigger decisions (labels: trigger name and outcome, both bounded).
fn report_outcomes(outcomes: Vec<crate::triggers::Outcome>) {
    if outcomes.is_empty() {
        return;
    }
    let mut counts: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for o in outcomes {
        *counts.entry((o.trigger, o.what)).or_default() += 1;
    }
    for ((trigger, outcome), n) in counts {
        metrics::counter!("storeline_trigger_outcomes_total", "trigger" => trigger, "outcome" => outcome)
            .increment(n);
    }
}

impl<L: EventLog, S: StateStore, A: Appender> Runner<L, S, A> {
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let p = self.applier.partition;
        let mut tail = match self.log.watch(p) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(partition = p, error = %e, "the engine cannot follow this partition");
                return;
            }
        };
        // Timers wait for the watermark from a known position in the log on: a partition with
        // triggers installed by an earlier version gets one with a tick (a file installed by
        // this version starts it itself).
        while self.applier.watermark().is_none()
            && self.applier.has_triggers()
            && !*shutdown.borrow()
        {
            if self.append_tick(Some(0)).await {
                break;
            }
        }
        let mut backoff = Duration::from_millis(50);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *shutdown.borrow() {
                break;
            }
            let end = self
                .log
                .bounds(p)
                .map(|b| b.end)
                .unwrap_or(self.applier.next);
            self.report_lag(end);
            if self.applier.next < end {
                if let Some(wait) = self.linger(end) {
                    tokio::time::sleep(wait).await;
                    continue;
                }
                let result = self.step(end).await;
                self.last_step = Some(std::time::Instant::now());
                match result {
                    Ok(()) => {
                        backoff = Duration::from_millis(50);
                        self.status.succeeded();
                    }
                    // A record that can never be applied is quarantined on the next try: at once.
                    Err(e) if self.applier.recover(&e) => {}
                    Err(e) => {
                        tracing::error!(partition = p, error = %e, "applying a batch failed; retrying from the last commit");
                        self.status.failed(now_ms(), &e.to_string());
                        metrics::counter!("storeline_engine_retries_total", "partition" => p.to_string())
                            .increment(1);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
                // A busy writer's timers need ticks too: its records no longer fire them.
                if self.ticked != self.applier.known_next_due() {
                    self.tick().await;
                }
                self.serve_need().await;
                // Commands are taken between batches, so catching up never starves them.
                if let Some(rx) = self.commands.as_mut()
                    && let Ok(req) = rx.try_recv()
                {
                    self.handle_commands(req).await;
                }
                continue;
            }
            self.serve_need().await;
            let wake = self.timer_wake().await;
            let marks = self.marks.clone();
            tokio::select! {
                _ = tail.changed() => {}
                _ = tokio::time::sleep(wake.unwrap_or(Duration::from_secs(3600))), if wake.is_some() => {
                    self.tick().await;
                }
                // Asked to move its clock (served at the top of the loop), or its held timer
                // may fire now.
                _ = marks.asked(p) => self.tick().await,
                Some(req) = async { match self.commands.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                    self.handle_commands(req).await;
                }
                _ = tick.tick(), if self.commands.is_some() => self.expire().await,
                _ = shutdown.changed() => {}
            }
        }
    }

    /// How long to wait before applying the records up to `end`: while records keep arriving
    /// one or two at a time (single events spread over all partitions), each batch costs a
    /// state-store commit and several thread hand-offs for almost no records. A writer that
    /// applied a batch less than `linger` ago, and has only a few records waiting, gathers
    /// until `linger` has passed since that batch. A writer that was idle, or has a backlog,
    /// applies at once, so a lone event is not delayed.
    fn linger(&self, end: u64) -> Option<Duration> {
        let linger = self.cfg.linger;
        let since = self.last_step?.elapsed();
        (!linger.is_zero() && since < linger && end - self.applier.next < LINGER_RECORDS)
            .then(|| linger - since)
    }

    /// How long until the earliest pending timer is due (`None`: no timer, or its tick is out).
    async fn timer_wake(&mut self) -> Option<Duration> {
        let next = match self.applier.next_due().await {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(partition = self.applier.partition, error = %e, "cannot read the next timer; retrying");
                return Some(Duration::from_secs(1));
            }
        };
        let Some(due) = next else {
            self.marks.released(self.applier.partition);
            return None;
        };
        if self.ticked == Some(due) {
            self.marks.released(self.applier.partition);
            return None;
        }
        let at = due + crate::watermark::SLACK_MS;
        if self.marks.mark(self.applier.partition).held == Some(due) {
            // Held back for the watermark: look again soon.
            return Some(Duration::from_millis(10));
        }
        Some(Duration::from_millis((at - now_ms()).max(0) as u64))
    }

    /// Another writer waits for this one's clock to pass a time: an idle writer moves it with
    /// a tick of its own (a busy one moves it with its records).
    async fn serve_need(&mut self) {
        let p = self.applier.partition;
        let Some(need) = self.marks.need(p) else {
            return;
        };
        let clock = self.applier.clock();
        if clock >= need || self.self_tick.is_some_and(|t| t >= need) || need > now_ms() {
            return;
        }
        let end = self.log.bounds(p).map(|b| b.end).unwrap_or(0);
        if self.applier.next < end {
            return; // its records will move it
        }
        if self.append_tick(None).await {
            self.self_tick = Some(need);
        }
    }

    async fn append_tick(&mut self, watermark: Option<i64>) -> bool {
        let p = self.applier.partition;
        let id = format!("tick_{}", ulid::Ulid::new().to_string().to_lowercase());
        let data = match watermark {
            Some(w) => json!({ "watermark": w }),
            None => json!({}),
        };
        let ev = build_event(
            id,
            "storeline/engine",
            crate::triggers::TICK,
            None,
            now_ms(),
            &data,
            None,
        );
        match self.appender.append(vec![ev], Some(p)).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(partition = p, error = %e.message, "appending a timer tick failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                false
            }
        }
    }

    /// Appends a tick when a timer is due and every other writer has applied past it: it moves
    /// the clock and carries the watermark (see [`crate::watermark`]). When a writer is behind,
    /// asks it to move and leaves the timer held.
    async fn tick(&mut self) {
        let p = self.applier.partition;
        let Some(due) = self.applier.known_next_due() else {
            self.marks.released(p);
            return;
        };
        let now = now_ms();
        if due > now - crate::watermark::SLACK_MS || self.ticked == Some(due) {
            // Not due yet, or its tick is on its way: nothing is held back.
            self.marks.released(p);
            return;
        }
        let w = self
            .marks
            .available(p)
            .min(now - crate::watermark::SLACK_MS);
        if w < due {
            self.marks.request(p, due);
            let held = ((now - due).max(0) as f64) / 1000.0;
            metrics::gauge!("storeline_engine_watermark_lag_seconds", "partition" => p.to_string())
                .set(held);
            return;
        }
        if self.append_tick(Some(w)).await {
            self.ticked = Some(due);
            self.marks.released(p);
            metrics::gauge!("storeline_engine_watermark_lag_seconds", "partition" => p.to_string())
                .set(0.0);
        }
    }

    fn report_lag(&self, end: u64) {
        let p = self.applier.partition.to_string();
        metrics::gauge!("storeline_engine_lag_events", "partition" => p)
            .set(end.saturating_sub(self.applier.committed) as f64);
    }

    /// Applies one batch (up to the log's `end`), appends what it causes, commits, publishes.
    async fn step(&mut self, end: u64) -> Result<()> {
        let p = self.applier.partition;
        let max = self
            .applier
            .batch_limit(self.cfg.batch_max)
            .min((end - self.applier.next) as usize)
            .max(1);
        let records = self.log.read(p, self.applier.next, max).await?;
        let Some(last) = records.last() else {
            return Ok(());
        };
        let last_ts = last.timestamp;
        let started = Instant::now();
        let (emits, evs) = self.applier.apply(&records).await?;
        if self.commands.is_some() {
            for ev in &evs {
                self.track_expiry(ev);
            }
        }
        if !emits.is_empty()
            && let Err(e) = self.append_emits(emits).await
        {
            // The batch must not be committed without the events it caused: apply it again.
            self.applier.reset();
            return Err(e);
        }
        // What this batch forwards is in the other partitions' logs now: they may count on this
        // clock before the commit (applied again after a failed commit, the batch forwards the
        // same records, which are deduplicated).
        self.marks.publish(p, self.applier.clock(), None);
        self.applier.commit().await?;
        self.report_quarantined();
        let (outcomes, fired) = self.applier.take_decided();
        report_outcomes(outcomes);
        if !fired.is_empty() {
            // How long after its due time a timer's effects were committed.
            let now = now_ms();
            metrics::counter!("storeline_trigger_timers_fired_total").increment(fired.len() as u64);
            let h = metrics::histogram!("storeline_trigger_timer_lateness_seconds");
            for due in fired {
                h.record(((now - due).max(0) as f64) / 1000.0);
            }
        }
        metrics::histogram!("storeline_engine_batch_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("storeline_engine_events_total").increment(records.len() as u64);
        metrics::gauge!("storeline_engine_lag_seconds", "partition" => p.to_string())
            .set(((now_ms() - last_ts).max(0) as f64) / 1000.0);
        self.applied.send_replace(self.applier.committed);
        let clock = self.applier.clock();
        self.marks.publish(p, clock, self.applier.watermark());
        if self.self_tick.is_some_and(|t| clock >= t) {
            self.self_tick = None;
        }
        Ok(())
    }

    /// Counts and logs what the last commit quarantined, and publishes the quarantine's size.
    fn report_quarantined(&mut self) {
        let p = self.applier.partition;
        for e in std::mem::take(&mut self.applier.quarantined) {
            tracing::warn!(
                partition = p,
                offset = e.offset,
                origin = e.origin,
                reason = e.reason.as_str(),
                error = e.error,
                "record quarantined (GET /v1/quarantine lists it)"
            );
            metrics::counter!("storeline_quarantine_records_total", "origin" => e.origin, "reason" => e.reason.as_str())
                .increment(1);
        }
        if let Some(n) = self.applier.quarantine_size.take() {
            self.status.set_quarantined(n);
            metrics::gauge!("storeline_quarantine_size", "partition" => p.to_string())
                .set(n as f64);
        }
    }

    fn track_expiry(&mut self, ev: &Ev) {
        if ev.ty == "inventory.reserved"
            && let Some(o) = ev.str("order_id")
            && let Some(r) = self.applier.views.resv.get(o)
            && let Some(t) = r.expires_at
        {
            self.expiries.insert((t, o.to_owned()));
        }
    }

    async fn append_emits(&self, emits: Vec<Emit>) -> Result<()> {
        let events: Vec<Event> = emits.into_iter().map(Emit::into_event).collect();
        self.appender.append(events, None).await.map_err(|e| {
            let what = format!("{} ({})", e.message, e.code);
            // A refusal will be the same next time; a full disk or a stopped writer heals.
            if e.refused {
                crate::error::Error::EmitRefused(what)
            } else {
                crate::error::Error::Emit(what)
            }
        })?;
        Ok(())
    }

    /// Applies everything the log holds now, so commands see the latest state.
    async fn catch_up(&mut self) -> Result<()> {
        let p = self.applier.partition;
        loop {
            let end = self.log.bounds(p)?.end;
            if self.applier.next >= end {
                return Ok(());
            }
            if let Err(e) = self.step(end).await {
                // Always forget a failed batch; one that can never apply is quarantined next try.
                if !self.applier.recover(&e) {
                    return Err(e);
                }
            }
        }
    }

    /// Plans a batch of queued commands on a scratch copy of the views, appends all their
    /// events at once, and answers each.
    async fn handle_commands(&mut self, first: CommandRequest) {
        let mut batch = vec![first];
        if let Some(rx) = self.commands.as_mut() {
            while batch.len() < 256 {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
        }
        if let Err(e) = self.catch_up().await {
            for req in batch {
                let _ = req.reply.send(Err(CommandError::Unavailable(format!(
                    "the commerce view cannot be read: {e}"
                ))));
            }
            return;
        }
        let now = now_ms();
        // Everything the batch reads, loaded at once (one query per namespace, not per command:
        // on PostgreSQL a round trip costs more than planning a command).
        let mut keys = Keys::default();
        for req in &batch {
            req.command.keys(&mut keys);
            if let Some(k) = &req.idempotency_key {
                keys.idem.insert(k.clone());
            }
        }
        if let Err(e) = self.applier.views.load(&*self.applier.store, &keys).await {
            for req in batch {
                let _ = req.reply.send(Err(CommandError::Unavailable(format!(
                    "the commerce view cannot be read: {e}"
                ))));
            }
            return;
        }
        let mut scratch = Views::new(self.applier.partition);
        let mut planned: Vec<(CommandRequest, Vec<Event>)> = Vec::new();
        let mut keys_in_batch: HashMap<String, String> = HashMap::new();
        for req in batch {
            if let Some(key) = &req.idempotency_key {
                let elsewhere = matches!(req.command, Command::Consent(_));
                match self.lookup_idem(key, &keys_in_batch, elsewhere).await {
                    Ok(Some((hash, result))) => {
                        let answer = if hash != req.hash {
                            Err(CommandError::IdempotencyMismatch {
                                key: key.clone(),
                                command: req.command.name().to_owned(),
                            })
                        } else {
                            result.map(|mut o| {
                                o.replayed = true;
                                o
                            })
                        };
                        let _ = req.reply.send(answer);
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let _ = req
                            .reply
                            .send(Err(CommandError::Unavailable(e.to_string())));
                        continue;
                    }
                }
            }
            match self.plan_one(&req, &mut scratch, now).await {
                Ok(evs) => {
                    if let Some(k) = &req.idempotency_key {
                        keys_in_batch.insert(k.clone(), req.hash.clone());
                    }
                    planned.push((req, evs));
                }
                Err(e) => {
                    metrics::counter!("storeline_engine_commands_total", "outcome" => "rejected")
                        .increment(1);
                    if let Some(k) = &req.idempotency_key {
                        self.remember(k.clone(), req.hash.clone(), Err(e.clone()));
                    }
                    let _ = req.reply.send(Err(e));
                }
            }
        }
        if planned.is_empty() {
            return;
        }
        let all: Vec<Event> = planned
            .iter()
            .flat_map(|(_, e)| e.iter().cloned())
            .collect();
        let summaries: Vec<Value> = all
            .iter()
            .map(|e| json!({ "id": e.id, "type": e.ty, "data": e.data.as_ref().and_then(|d| serde_json::from_str::<Value>(d.get()).ok()) }))
            .collect();
        match self.appender.append(all, None).await {
            Ok(positions) => {
                let mut i = 0;
                for (req, evs) in planned {
                    let events: Vec<Value> = (i..i + evs.len())
                        .map(|j| {
                            let mut s = summaries[j].clone();
                            s["partition"] = positions[j].0.into();
                            s["offset"] = positions[j].1.into();
                            s
                        })
                        .collect();
                    i += evs.len();
                    let outcome = CommandOutcome {
                        events,
                        replayed: false,
                    };
                    metrics::counter!("storeline_engine_commands_total", "outcome" => "done")
                        .increment(1);
                    if let Some(k) = &req.idempotency_key {
                        self.remember(k.clone(), req.hash.clone(), Ok(outcome.clone()));
                    }
                    let _ = req.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                for (req, _) in planned {
                    let _ = req.reply.send(Err(CommandError::Append(e.clone())));
                }
            }
        }
    }

    fn remember(
        &mut self,
        key: String,
        hash: String,
        r: std::result::Result<CommandOutcome, CommandError>,
    ) {
        if self.recent.len() >= 100_000 {
            self.recent.clear();
        }
        self.recent.insert(key, (hash, r));
    }

    /// An earlier result for `key`: this batch, recent memory, then the store (derived from the
    /// log, so it survives restarts).
    async fn lookup_idem(
        &mut self,
        key: &str,
        in_batch: &HashMap<String, String>,
        elsewhere: bool,
    ) -> Result<Option<(String, std::result::Result<CommandOutcome, CommandError>)>> {
        if let Some(hash) = in_batch.get(key) {
            // The first request with this key is in flight in this very batch: a same-body repeat
            // cannot get its offsets yet, so it is told to retry.
            return Ok(Some((
                hash.clone(),
                Err(CommandError::Unavailable(format!(
                    "a request with Idempotency-Key '{key}' is in progress; retry"
                ))),
            )));
        }
        if let Some((h, r)) = self.recent.get(key) {
            return Ok(Some((h.clone(), r.clone())));
        }
        let replay = |idem: &crate::model::Idem| {
            Some((
                idem.hash.clone(),
                Ok(CommandOutcome {
                    events: idem.events.clone(),
                    replayed: true,
                }),
            ))
        };
        // Commerce commands' records are this writer's own rows (loaded with the batch); only a
        // consent command's events land in the customer's partition, which owns its record.
        if let Some(idem) = self.applier.views.idem.get(key) {
            return Ok(replay(idem));
        }
        if !elsewhere {
            return Ok(None);
        }
        let rows = self.applier.store.get(ns::IDEM, key).await?;
        for (_, bytes) in rows {
            if let Ok(idem) = serde_json::from_slice::<crate::model::Idem>(&bytes) {
                return Ok(Some((
                    idem.hash,
                    Ok(CommandOutcome {
                        events: idem.events,
                        replayed: true,
                    }),
                )));
            }
        }
        Ok(None)
    }

    /// Checks one command against the scratch views and applies its events to them.
    async fn plan_one(
        &mut self,
        req: &CommandRequest,
        scratch: &mut Views,
        now: i64,
    ) -> std::result::Result<Vec<Event>, CommandError> {
        let mut keys = Keys::default();
        req.command.keys(&mut keys);
        self.prepare(scratch, &keys).await?;
        let planned = commands::plan(
            &req.command,
            scratch,
            now,
            self.cfg.reservation_ttl_ms,
            &self.applier.cfg.default_location,
        )?;
        let mark = req.idempotency_key.as_ref().map(|k| CommandMark {
            name: req.command.name().to_owned(),
            key: k.clone(),
            hash: req.hash.clone(),
        });
        let events = self.stamp(&req.command, planned, mark.as_ref(), now);
        // Apply to the scratch copy, so later commands in the batch see this one.
        let evs: Vec<Ev> = events
            .iter()
            .filter_map(|e| {
                Ev::parse(
                    &e.to_stored_json(chrono::Utc::now()),
                    self.applier.partition,
                    0,
                )
                .ok()
            })
            .collect();
        let mut keys = Keys::default();
        for ev in &evs {
            project::keys(ev, &self.applier.cfg, &mut keys);
        }
        // Planning reads stock and orders only; customer rows are not needed on the scratch copy.
        keys.idem.clear();
        keys.frag.clear();
        keys.link.clear();
        self.prepare(scratch, &keys).await?;
        let mut ignored = Vec::new();
        for ev in evs
            .iter()
            .filter(|e| storeline_event::is_commerce_type(&e.ty))
        {
            let mut ev = ev.clone();
            ev.command = None;
            project::apply(scratch, &ev, &self.applier.cfg, &mut ignored).map_err(|o| {
                CommandError::Invalid {
                    field: "body".into(),
                    reason: format!("carrying it out would take {} out of range", o.0),
                }
            })?;
        }
        Ok(events)
    }

    /// Loads `keys` into the live views and copies the rows the scratch lacks.
    async fn prepare(
        &mut self,
        scratch: &mut Views,
        keys: &Keys,
    ) -> std::result::Result<(), CommandError> {
        self.applier
            .views
            .load(&*self.applier.store, keys)
            .await
            .map_err(|e| CommandError::Unavailable(e.to_string()))?;
        scratch.copy_missing(&self.applier.views, keys);
        Ok(())
    }

    fn stamp(
        &self,
        cmd: &Command,
        planned: Vec<Planned>,
        mark: Option<&CommandMark>,
        now: i64,
    ) -> Vec<Event> {
        let base = match (mark, cmd) {
            (Some(m), _) => format!("cmd_{}", &crate::hash_hex(m.key.as_bytes())[..24]),
            (None, Command::Expire { order_id }) => {
                format!("exp_{}", &crate::hash_hex(order_id.as_bytes())[..24])
            }
            (None, _) => format!("cmd_{}", ulid::Ulid::new().to_string().to_lowercase()),
        };
        planned
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                build_event(
                    format!("{base}_{i}"),
                    &self.cfg.source,
                    p.ty,
                    p.subject,
                    now,
                    &p.data,
                    mark,
                )
            })
            .collect()
    }

    /// Lapses unpaid holds whose time has come, as commands (so the release is an event).
    async fn expire(&mut self) {
        let now = now_ms();
        let due: Vec<String> = self
            .expiries
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, o)| o.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        self.expiries.retain(|(t, _)| *t > now);
        for order_id in due {
            let (tx, rx) = oneshot::channel();
            let req = CommandRequest {
                command: Command::Expire {
                    order_id: order_id.clone(),
                },
                idempotency_key: None,
                hash: String::new(),
                reply: tx,
            };
            self.handle_commands(req).await;
            match rx.await {
                Ok(Ok(o)) if !o.events.is_empty() => {
                    tracing::info!(
                        order_id,
                        "an unpaid order's reservation lapsed; stock released"
                    );
                }
                Ok(Err(e)) => {
                    tracing::warn!(order_id, error = ?e, "lapsing a reservation failed; will retry");
                    self.expiries.insert((now + 1000, order_id));
                }
                _ => {}
            }
        }
    }
}
