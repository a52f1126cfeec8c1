//! The writer's loop and its bookkeeping: waking on outcomes, commands, engine commits and
//! due times; committing in the background while the next batch grows; connector
//! (re)configuration, redrive and enable; the status the API shows.

use super::*;

impl Writer {
    pub(super) async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Cmd>,
        mut results: mpsc::UnboundedReceiver<Outcome>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let wake = self.next_wake();
            let notify = Arc::clone(&self.notify);
            let commit = &mut self.committing;
            let woke = tokio::select! {
                r = shutdown.changed() => if r.is_err() { break } else { continue },
                Some(cmd) = cmds.recv() => Woke::Cmd(cmd),
                Some(o) = results.recv() => Woke::Outcome(o),
                r = async { commit.as_mut().expect("a commit is under way").await }, if commit.is_some() => Woke::Committed(r),
                _ = notify.notified() => Woke::Tick,
                _ = tokio::time::sleep(wake) => Woke::Tick,
            };
            match woke {
                Woke::Cmd(cmd) => self.command(cmd).await,
                Woke::Outcome(o) => self.outcome(o).await,
                Woke::Committed(r) => self.committed(r).await,
                Woke::Tick => {}
            }
            while let Ok(o) = results.try_recv() {
                self.outcome(o).await;
            }
            self.intake().await;
            self.start_commit();
            self.dispatch_due().await;
            self.publish();
        }
        // Let attempts in flight finish (briefly) so their outcomes are recorded; the rest are
        // made again after the restart.
        let deadline = tokio::time::Instant::now() + self.config.drain;
        while !self.inflight.is_empty() {
            match tokio::time::timeout_at(deadline, results.recv()).await {
                Ok(Some(o)) => self.outcome(o).await,
                _ => break,
            }
        }
        self.flush().await;
        tracing::info!(unfinished = self.inflight.len(), "delivery worker stopped");
    }

    pub(super) fn next_wake(&mut self) -> Duration {
        let now = now_ms();
        let mut at = now + self.config.poll.as_millis() as i64;
        let committing = self.committing.is_some();
        for c in self.conns.values_mut() {
            let w = match (c.wake_at, c.ready.is_empty()) {
                (_, false) => now,
                // Due now but waiting for the commit under way, whose end wakes the writer.
                (Some(w), true) if committing && w <= now => continue,
                (Some(w), true) => w,
                (None, true) => continue,
            };
            if self
                .states
                .get(&c.def.name)
                .is_some_and(|s| s.disabled_at.is_some())
            {
                continue;
            }
            if c.in_flight >= c.def.concurrency {
                continue;
            }
            let w = match c.breaker.reopens_at() {
                Some(r) => w.max(r),
                None if c.breaker.allowance(now) == 0 => continue,
                None => w,
            };
            at = at.min(w);
        }
        Duration::from_millis((at - now).max(0) as u64)
    }

    pub(super) fn configure(&mut self, defs: Vec<ConnectorDef>) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        let mut next = BTreeMap::new();
        for def in defs {
            let mut old = self.conns.remove(&def.name);
            if let Some(o) = old.take_if(|o| o.def == def) {
                next.insert(def.name.clone(), o);
                continue;
            }
            let in_flight = old.as_ref().map_or(0, |o| o.in_flight);
            let ready = old.map(|o| o.ready).unwrap_or_default();
            match Built::build(&def) {
                Ok(built) => {
                    self.states.entry(def.name.clone()).or_default();
                    next.insert(
                        def.name.clone(),
                        Conn {
                            built: Arc::new(built),
                            // Attempts of the replaced connector still count against the limit.
                            in_flight,
                            breaker: Breaker::new(def.circuit_failures, def.circuit_cooldown),
                            limiter: Limiter::new(def.rate_limit),
                            wake_at: Some(now_ms()),
                            ready,
                            metrics: ConnMetrics::new(&def.name),
                            due_gen: 0,
                            committing_gen: 0,
                            committed_gen: 0,
                            def,
                        },
                    );
                }
                Err(e) => errors.push((def.name.clone(), e.to_string())),
            }
        }
        // In-flight attempts of removed connectors finish; their outcomes are recorded, and
        // their pending deliveries wait until a connector of that name is configured again.
        self.conns = next;
        errors
    }

    pub(super) async fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Configure(defs, reply) => {
                let errors = self.configure(defs);
                let _ = reply.send(errors);
            }
            Cmd::Redrive(what, reply) => {
                let r = self.redrive(what).await;
                if r.is_ok() {
                    self.flush().await;
                }
                let _ = reply.send(r);
            }
            Cmd::Enable(name, reply) => {
                let st = self.states.entry(name.clone()).or_default();
                let was = st.disabled_at.take().is_some();
                st.failing_since = None;
                self.dirty_states.insert(name.clone());
                if let Some(c) = self.conns.get_mut(&name) {
                    c.wake_at = Some(now_ms());
                    c.breaker.success();
                }
                if was {
                    tracing::info!(connector = name, "connector enabled again");
                    if let Err(e) = self
                        .host
                        .emit("connector.enabled", json!({ "connector": name }))
                        .await
                    {
                        tracing::warn!(
                            connector = name,
                            error = e,
                            "cannot append connector.enabled"
                        );
                    }
                }
                self.flush().await;
                let _ = reply.send(Ok(was));
            }
        }
    }

    pub(super) async fn redrive(&mut self, what: Redrive) -> Result<usize> {
        // Deliveries of this batch not yet committed are read back correctly only after a flush.
        self.flush().await;
        let mut recs = Vec::new();
        match what {
            Redrive::Ids(ids) => {
                recs.extend(self.store.get_many(&ids).await?.into_iter().flatten())
            }
            Redrive::Filter(mut f) => {
                f.status = Some(Status::Dead);
                let mut after: Option<String> = None;
                loop {
                    let (page, more) = self.store.list(&f, after.as_deref(), 1000).await?;
                    recs.extend(page);
                    match more {
                        Some(m) if recs.len() < 1_000_000 => after = Some(m),
                        _ => break,
                    }
                }
            }
        }
        let now = now_ms();
        let mut n = 0;
        for mut rec in recs.into_iter().filter(|r| r.status == Status::Dead) {
            let prev = rec.prev();
            rec.status = Status::Pending;
            rec.round_start = rec.attempts;
            rec.next_at = Some(now);
            rec.redriven += 1;
            rec.updated_at = now;
            if self.conns.get(&rec.connector).is_some_and(|c| c.def.fifo) {
                // At the end of its key's queue, also after a restart reloads the queue.
                rec.seq = format!(
                    "{:04}{SEP}{now:013}{SEP}redrive{}",
                    rec.partition, rec.redriven
                );
            }
            self.enqueue_fifo(&mut rec);
            self.batch.record(Some(&prev), &rec)?;
            let st = self.states.entry(rec.connector.clone()).or_default();
            st.dead -= 1;
            st.pending += 1;
            self.dirty_states.insert(rec.connector.clone());
            if let Some(c) = self.conns.get_mut(&rec.connector) {
                c.wake_at = Some(now);
                c.due_gen += 1;
            }
            n += 1;
        }
        tracing::info!(redriven = n, "dead deliveries redriven");
        Ok(n)
    }

    /// Starts committing what changed, unless a commit is under way (then it waits for the
    /// next one, growing).
    pub(super) fn start_commit(&mut self) {
        for name in std::mem::take(&mut self.dirty_states) {
            if let Some(s) = self.states.get(&name) {
                self.batch.conn(&name, s);
            }
        }
        if self.committing.is_some() {
            return;
        }
        if self.batch.is_empty() {
            // Nothing written is unseen by the store.
            for c in self.conns.values_mut() {
                c.committed_gen = c.due_gen;
            }
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        self.committing_ids = batch.dlv_ids();
        for c in self.conns.values_mut() {
            c.committing_gen = c.due_gen;
        }
        let store = Arc::clone(&self.store);
        let position = self.position;
        self.committing = Some(tokio::spawn(async move {
            let r = store.commit(position, &batch).await;
            (r, batch)
        }));
    }

    /// A commit ended. A failed one's rows go back under the current batch for the next try.
    pub(super) async fn committed(
        &mut self,
        r: std::result::Result<(Result<()>, Batch), tokio::task::JoinError>,
    ) {
        self.committing = None;
        self.committing_ids.clear();
        match r {
            Ok((Ok(()), _)) => {
                self.position += 1;
                for c in self.conns.values_mut() {
                    c.committed_gen = c.committing_gen;
                }
            }
            Ok((Err(e), batch)) => {
                tracing::error!(error = %e, rows = batch.len(), "cannot commit deliveries; trying again");
                batch.merge_under(&mut self.batch);
                tokio::time::sleep(Duration::from_millis(200)).await;
                // A commit that succeeded but whose answer was lost moved the position: rewriting
                // the same rows at the new position is harmless.
                if let Ok(p) = self.store.position().await {
                    self.position = p;
                }
            }
            // Only a panic in the store ends here; the rows are lost, so the deliveries they
            // recorded are attempted again (at least once still holds).
            Err(e) => tracing::error!(error = %e, "a delivery commit failed"),
        }
    }

    /// Commits everything changed so far and waits for it (for answers that must read it back).
    pub(super) async fn flush(&mut self) {
        for _ in 0..3 {
            if let Some(h) = self.committing.take() {
                let r = h.await;
                self.committed(r).await;
            }
            self.start_commit();
            if self.committing.is_none() {
                return;
            }
        }
    }

    pub(super) fn publish(&mut self) {
        let now = now_ms();
        let mut out = Vec::new();
        for (name, st) in &self.states {
            let c = self.conns.get_mut(name);
            let disabled = st.disabled_at.is_some();
            let s = match c {
                Some(c) => {
                    c.breaker.allowance(now);
                    metrics::gauge!("storeline_delivery_circuit_state", "connector" => name.clone()).set(c.breaker.circuit.gauge());
                    metrics::gauge!("storeline_delivery_in_flight", "connector" => name.clone())
                        .set(c.in_flight as f64);
                    ConnStatus {
                        name: name.clone(),
                        kind: Some(c.def.kind.name()),
                        configured: true,
                        error: None,
                        state: if disabled { "disabled" } else { "enabled" },
                        circuit: c.breaker.circuit.name(),
                        in_flight: c.in_flight,
                        concurrency: Some(c.def.concurrency),
                        rate_limit: c.def.rate_limit,
                        fifo: c.def.fifo,
                        counts: st.clone(),
                    }
                }
                None => ConnStatus {
                    name: name.clone(),
                    kind: None,
                    configured: false,
                    error: Some(
                        "not configured (or could not be built): its deliveries wait".into(),
                    ),
                    state: if disabled { "disabled" } else { "enabled" },
                    circuit: "closed",
                    in_flight: 0,
                    concurrency: None,
                    rate_limit: None,
                    fifo: false,
                    counts: st.clone(),
                },
            };
            metrics::gauge!("storeline_delivery_queue_depth", "connector" => name.clone())
                .set(st.pending as f64);
            metrics::gauge!("storeline_delivery_dlq_size", "connector" => name.clone())
                .set(st.dead as f64);
            out.push(s);
        }
        *self.status.write() = out;
    }
}
