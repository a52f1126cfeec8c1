//! Deliveries through the writer: taking outbox rows in, the ready queue, dispatching within a
//! connector's limits, reading due deliveries back from the store, and recording each attempt's
//! outcome (delivered, retry at a time, dead; circuit, auto-disable, FIFO release).

use storeline_event::outbox::OutboxKey;

use super::decide::{Decision, Next, Schedule, decide};

use super::*;

impl Writer {
    /// Takes new outbox rows in (at most `intake_batch` per partition per iteration).
    pub(super) async fn intake(&mut self) {
        let now = now_ms();
        for p in 0..self.cursors.len() {
            if !self.dirty[p].swap(false, Ordering::AcqRel) {
                continue;
            }
            let start = self.cursors[p];
            let rows = match self
                .host
                .outbox(
                    p as u32,
                    start,
                    self.resume[p].take(),
                    self.config.intake_batch,
                )
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(
                        partition = p,
                        error = e,
                        "cannot read the outbox; trying again"
                    );
                    self.dirty[p].store(true, Ordering::Release);
                    continue;
                }
            };
            if rows.len() >= self.config.intake_batch {
                self.resume[p] = rows.last().map(|(k, _)| k.clone());
                self.dirty[p].store(true, Ordering::Release);
                self.notify.notify_one();
            }
            let mut fresh = Vec::new();
            for (key, value) in &rows {
                let clock = OutboxKey::decode(key).map_or(0, |k| k.clock);
                if clock > self.cursors[p] {
                    self.cursors[p] = clock;
                    self.seen[p].clear();
                }
                let rec = match Record::from_outbox(p as u32, key, value, now) {
                    Ok(rec) => rec,
                    Err(error) => {
                        tracing::error!(
                            partition = p,
                            key,
                            error,
                            "unreadable outbox entry skipped"
                        );
                        continue;
                    }
                };
                if self.seen[p].insert(rec.id.clone()) {
                    fresh.push((clock, rec));
                }
            }
            // Rows at the starting time may have been taken in before a restart, or in an
            // earlier pass: the store knows.
            let at_start: Vec<String> = fresh
                .iter()
                .filter(|(c, _)| *c == start)
                .map(|(_, r)| r.id.clone())
                .collect();
            let known: HashSet<String> = if at_start.is_empty() {
                HashSet::new()
            } else {
                match self.store.get_many(&at_start).await {
                    Ok(found) => found.into_iter().flatten().map(|r| r.id).collect(),
                    Err(e) => {
                        tracing::warn!(partition = p, error = %e, "cannot check taken deliveries; trying again");
                        self.dirty[p].store(true, Ordering::Release);
                        self.cursors[p] = start;
                        continue;
                    }
                }
            };
            for (_, rec) in fresh {
                if !known.contains(&rec.id) && !self.inflight.contains_key(&rec.id) {
                    self.take_in(rec);
                }
            }
            if self.cursors[p] != start {
                self.batch.cursor(p as u32, self.cursors[p]);
            }
        }
    }

    /// For a FIFO connector: puts `rec` at the end of its key's queue, waiting (no due time)
    /// when an earlier one is still pending.
    pub(super) fn enqueue_fifo(&mut self, rec: &mut Record) {
        if !self.conns.get(&rec.connector).is_some_and(|c| c.def.fifo) {
            return;
        }
        let q = self
            .fifo
            .entry((rec.connector.clone(), rec.key.clone()))
            .or_default();
        if !q.is_empty() {
            rec.next_at = None;
        }
        q.push_back(rec.id.clone());
        self.batch.fifo(rec, true);
    }

    pub(super) fn take_in(&mut self, mut rec: Record) {
        self.enqueue_fifo(&mut rec);
        let st = self.states.entry(rec.connector.clone()).or_default();
        st.pending += 1;
        self.dirty_states.insert(rec.connector.clone());
        if let Err(e) = self.batch.record(None, &rec) {
            tracing::error!(id = rec.id, error = %e, "cannot encode a delivery");
            return;
        }
        if rec.next_at.is_none() {
            return;
        }
        let name = rec.connector.clone();
        // Nothing older waits in the store: straight out, or into the ready queue.
        let Some(c) = self.conns.get(&name) else {
            return;
        };
        if c.wake_at.is_none() && c.ready.len() < c.ready_max() {
            if c.ready.is_empty() && self.can_start(&name) {
                self.dispatch(rec);
            } else if let Some(c) = self.conns.get_mut(&name) {
                c.ready.push_back(rec);
            }
        } else if let Some(c) = self.conns.get_mut(&name) {
            // It waits in the store (its due row); `dispatch_due` finds it in order.
            let now = now_ms();
            c.wake_at = Some(c.wake_at.map_or(now, |w| w.min(now)));
            c.due_gen += 1;
        }
    }

    /// Starts ready deliveries of `name` while its limits allow.
    pub(super) fn pump(&mut self, name: &str) {
        while self.can_start(name) {
            let Some(rec) = self.conns.get_mut(name).and_then(|c| c.ready.pop_front()) else {
                return;
            };
            self.dispatch(rec);
        }
    }

    pub(super) fn can_start(&mut self, name: &str) -> bool {
        let disabled = self
            .states
            .get(name)
            .is_some_and(|s| s.disabled_at.is_some());
        let Some(c) = self.conns.get_mut(name) else {
            return false;
        };
        !disabled && c.in_flight < c.def.concurrency && c.breaker.allowance(now_ms()) > 0
    }

    pub(super) fn dispatch(&mut self, rec: Record) {
        let Some(c) = self.conns.get_mut(&rec.connector) else {
            return;
        };
        c.in_flight += 1;
        c.breaker.started();
        let slot = c.limiter.slot();
        let built = Arc::clone(&c.built);
        let needs_profile = c.def.kind.needs_profile();
        // Connectors bound their own attempts (an SMTP primary and its failover: twice the
        // timeout); this only catches one that does not.
        let limit = c.def.timeout * 2 + Duration::from_secs(1);
        let host = Arc::clone(&self.host);
        let tx = self.results_tx.clone();
        let mut d = rec.delivery(None);
        self.inflight.insert(rec.id.clone(), rec);
        tokio::spawn(async move {
            tokio::time::sleep_until(slot.into()).await;
            if needs_profile && let Some(c) = d.customer.clone() {
                d.profile = host.profile(c).await;
            }
            let at = now_ms();
            let t0 = Instant::now();
            let verdict = match tokio::time::timeout(limit, built.attempt(&d)).await {
                Ok(v) => v,
                Err(_) => Verdict::retry(format!("no answer within {}s", limit.as_secs())),
            };
            let _ = tx.send(Outcome {
                id: d.id,
                verdict,
                at,
                ms: t0.elapsed().as_millis() as u64,
            });
        });
    }

    /// Attempts deliveries that are due, per connector, as far as each one's limits allow.
    pub(super) async fn dispatch_due(&mut self) {
        let all: Vec<String> = self.conns.keys().cloned().collect();
        for name in &all {
            self.pump(name);
        }
        let now = now_ms();
        let names: Vec<String> = self
            .conns
            .iter()
            .filter(|(_, c)| c.ready.is_empty() && c.wake_at.is_some_and(|w| w <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            if !self.can_start(&name) {
                continue;
            }
            let Some(c) = self.conns.get(&name) else {
                continue;
            };
            let room = c
                .def
                .concurrency
                .saturating_sub(c.in_flight)
                .min(c.breaker.peek());
            let limit = room + c.in_flight;
            let (ids, next) = match self.store.due(&name, now, limit).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(connector = name, error = %e, "cannot read due deliveries");
                    continue;
                }
            };
            let full = ids.len() >= limit;
            // The store lags the batch being built and the commit under way: a delivery changed
            // there is looked at again once that is committed.
            let mut stale = false;
            let todo: Vec<String> = ids
                .into_iter()
                .filter(|id| {
                    if self.batch.has_dlv(id) || self.committing_ids.contains(id) {
                        stale = true;
                        return false;
                    }
                    !self.inflight.contains_key(id)
                })
                .take(room)
                .collect();
            let recs = match self.store.get_many(&todo).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(connector = name, error = %e, "cannot read due deliveries");
                    continue;
                }
            };
            if let Some(c) = self.conns.get_mut(&name) {
                let unseen = c.due_gen > c.committed_gen;
                c.wake_at = if full || stale || unseen {
                    Some(now)
                } else {
                    next
                };
            }
            for rec in recs.into_iter().flatten() {
                if rec.status != Status::Pending || !self.can_start(&name) {
                    continue;
                }
                self.dispatch(rec);
            }
        }
    }

    pub(super) async fn outcome(&mut self, o: Outcome) {
        let Some(mut rec) = self.inflight.remove(&o.id) else {
            return;
        };
        let now = now_ms();
        let name = rec.connector.clone();
        let prev = rec.prev();
        rec.attempts += 1;
        rec.updated_at = now;
        let round = (rec.attempts - rec.round_start) as usize;
        let default_schedule = crate::config::DEFAULT_SCHEDULE;
        let schedule = match self.conns.get(&name) {
            Some(c) => {
                c.metrics.count(&o.verdict);
                Schedule {
                    retry: &c.def.retry_schedule,
                    jitter: c.def.jitter,
                    disable_after: c.def.disable_after,
                }
            }
            None => {
                metrics::counter!("storeline_delivery_attempts_total", "connector" => name.clone(), "outcome" => o.verdict.outcome()).increment(1);
                Schedule {
                    retry: &default_schedule,
                    jitter: 0.2,
                    disable_after: None,
                }
            }
        };
        let st = self.states.entry(name.clone()).or_default();
        let d = decide(
            &o.verdict,
            round,
            schedule,
            st.failing_since,
            st.disabled_at.is_some(),
            now,
            rand::random::<f64>,
        );
        self.dirty_states.insert(name.clone());
        settle(&mut rec, st, &d, now);
        if let Some(c) = self.conns.get_mut(&name) {
            c.attempt_ended(&o.verdict, &d.next, rec.created_at, now);
        }
        let attempt = Attempt {
            n: rec.attempts,
            at: o.at,
            ms: o.ms,
            outcome: o.verdict.outcome().to_owned(),
            detail: clip(o.verdict.detail(), 500),
            retry_after_ms: d.retry_after_ms,
            next_at: rec.next_at,
        };
        self.batch.attempt(&rec.id, &attempt);
        if let Err(e) = self.batch.record(Some(&prev), &rec) {
            tracing::error!(id = rec.id, error = %e, "cannot encode a delivery");
        }
        if rec.status != Status::Pending {
            self.release_fifo(&rec).await;
        }
        // A slot is free: the next ready delivery goes now.
        self.pump(&name);
        if let Some(c) = self.conns.get_mut(&name)
            && c.in_flight < c.def.concurrency
            && c.wake_at.is_some()
        {
            // Room again: look for due work in this iteration.
            c.wake_at = c.wake_at.map(|w| w.min(now));
        }
        if d.disable {
            self.announce_disabled(&name, rec.last_error.clone()).await;
        }
    }

    /// Tells operators (a log line) and triggers (`connector.disabled`) that `name` was
    /// disabled for failing too long.
    async fn announce_disabled(&mut self, name: &str, last_error: Option<String>) {
        let since = self.states.get(name).and_then(|s| s.failing_since);
        tracing::error!(
            connector = name,
            "connector disabled: failing without a success for too long; POST /v1/connectors/{name}/enable after fixing it"
        );
        if let Err(e) = self
            .host
            .emit(
                "connector.disabled",
                json!({ "connector": name, "failing_since": since, "last_error": last_error }),
            )
            .await
        {
            tracing::warn!(
                connector = name,
                error = e,
                "cannot append connector.disabled"
            );
        }
    }

    /// A FIFO delivery finished: the next one of its key may go.
    pub(super) async fn release_fifo(&mut self, rec: &Record) {
        let k = (rec.connector.clone(), rec.key.clone());
        let Some(q) = self.fifo.get_mut(&k) else {
            return;
        };
        q.retain(|id| *id != rec.id);
        self.batch.fifo(rec, false);
        // The next one may have been taken in moments ago: read it back committed.
        self.flush().await;
        self.release_head(&k).await;
    }

    /// After a start: a crash between a head's end and its successor's release (two commits)
    /// leaves a head without a due time; every queue's head is looked at once.
    pub(super) async fn repair_fifo(&mut self) {
        let keys: Vec<(String, String)> = self.fifo.keys().cloned().collect();
        for k in keys {
            self.release_head(&k).await;
        }
    }

    /// Lets the head of a FIFO queue go (gives it a due time) if it waits. Heads that are no
    /// longer pending (finished elsewhere) leave the queue, so a queue never stays stuck.
    pub(super) async fn release_head(&mut self, k: &(String, String)) {
        loop {
            let Some(next) = self.fifo.get(k).and_then(|q| q.front().cloned()) else {
                self.fifo.remove(k);
                return;
            };
            if self.inflight.contains_key(&next) {
                return;
            }
            match self.store.get(&next).await {
                Ok(Some(mut new)) if new.status == Status::Pending => {
                    if new.next_at.is_none() {
                        let prev = new.prev();
                        new.next_at = Some(now_ms());
                        let _ = self.batch.record(Some(&prev), &new);
                        if let Some(c) = self.conns.get_mut(&new.connector) {
                            c.wake_at = Some(now_ms());
                            c.due_gen += 1;
                        }
                    }
                    return;
                }
                Ok(Some(done)) => {
                    tracing::warn!(
                        id = next,
                        "a FIFO queue's head is not pending; the next one goes"
                    );
                    if let Some(q) = self.fifo.get_mut(k) {
                        q.pop_front();
                    }
                    self.batch.fifo(&done, false);
                }
                Ok(None) => {
                    tracing::warn!(id = next, "a FIFO queue's head is not in the store yet");
                    return;
                }
                Err(e) => {
                    tracing::warn!(id = next, error = %e, "cannot release the next FIFO delivery");
                    return;
                }
            }
        }
    }
}

/// Applies a decision to the delivery and its connector's counters (no I/O).
fn settle(rec: &mut Record, st: &mut ConnState, d: &Decision, now: i64) {
    st.failing_since = d.failing_since;
    rec.last_error = d.last_error.clone();
    match d.next {
        Next::Delivered => {
            rec.status = Status::Delivered;
            rec.next_at = None;
            rec.delivered_at = Some(now);
            st.pending -= 1;
            st.delivered += 1;
            st.last_success = Some(now);
        }
        Next::Retry { at } => rec.next_at = Some(at),
        Next::Dead => {
            rec.status = Status::Dead;
            rec.next_at = None;
            st.pending -= 1;
            st.dead += 1;
        }
    }
    if d.disable {
        st.disabled_at = Some(now);
    }
}
