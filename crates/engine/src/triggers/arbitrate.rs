//! Arbitration before any message to a customer: consent for the channel, quiet hours in the
//! customer's time zone, then per-customer frequency caps on a rolling window. A message that
//! must wait is held in the customer's `arb` row, with one timer for the earliest; when it fires
//! the held messages are tried again, highest priority first.

use chrono::{TimeZone, Timelike};
use serde_json::Value;
use storeline_event::outbox::{OutboxEntry, OutboxKey};

use super::def::{Trigger, is_customer_channel};
use super::machine::{Machine, cust, customer_of, fmt};
use super::rows::{self, HeldMessage, Status, Target};

impl Machine<'_> {
    /// Consent, quiet hours and caps, then the outbox; `fresh` is false when a held message is
    /// tried again.
    pub(super) fn arbitrate(
        &mut self,
        t: &Trigger,
        rk: &str,
        entry: OutboxEntry,
        channel: &str,
        step: usize,
        fresh: bool,
    ) {
        let customer = customer_of(rk).to_owned();
        let to_customer = !customer.is_empty() && is_customer_channel(channel);
        if !to_customer || t.transactional {
            // Transactional messages bypass the caps and do not use them up.
            return self.send(t, rk, entry, channel, step, false);
        }
        let profile = self.customer_doc(Some(&customer));
        if profile.pointer(&format!("/consent/{channel}")) != Some(&Value::Bool(true)) {
            self.log_run(
                rk,
                "suppressed",
                Some(step),
                Some(format!("no consent for {channel}")),
            );
            self.count_message(
                t,
                Some(&customer),
                "suppressed_consent",
                rk,
                Some(entry.connector.as_str()),
            );
            return;
        }
        let arb = &self.reg.current.arbitration;
        if let Some((from, to)) = arb.quiet {
            let tz = self.timezone(&customer);
            if let Some(end) = quiet_until(self.clock, tz, from, to) {
                return self.hold(
                    t,
                    rk,
                    entry,
                    channel,
                    step,
                    end,
                    "quiet_hours",
                    t.drop_quiet,
                );
            }
        }
        let sent = self
            .views
            .arb
            .get(&customer)
            .map(|a| a.sent.clone())
            .unwrap_or_default();
        for cap in &arb.caps {
            if cap.channel != "*" && cap.channel != channel {
                continue;
            }
            let since = self.clock - cap.window_ms;
            let inside: Vec<i64> = sent
                .iter()
                .filter(|(at, ch)| *at > since && (cap.channel == "*" || *ch == cap.channel))
                .map(|(at, _)| *at)
                .collect();
            if inside.len() as u32 >= cap.max {
                let oldest = inside.iter().copied().min().unwrap_or(self.clock);
                // The cap counts sends after `clock - window`: the oldest leaves it at
                // `oldest + window`.
                let open = oldest + cap.window_ms;
                return self.hold(t, rk, entry, channel, step, open, "cap", t.drop_capped);
            }
        }
        let _ = fresh;
        self.send(t, rk, entry, channel, step, true);
    }

    #[allow(clippy::too_many_arguments)]
    fn hold(
        &mut self,
        t: &Trigger,
        rk: &str,
        entry: OutboxEntry,
        channel: &str,
        step: usize,
        until: i64,
        reason: &str,
        drop: bool,
    ) {
        let customer = customer_of(rk).to_owned();
        if drop {
            self.log_run(
                rk,
                "dropped",
                Some(step),
                Some(format!("{reason}; the trigger says drop")),
            );
            self.count_message(
                t,
                Some(&customer),
                &format!("dropped_{reason}"),
                rk,
                Some(entry.connector.as_str()),
            );
            return;
        }
        self.log_run(
            rk,
            "deferred",
            Some(step),
            Some(format!("{reason}; held until {}", fmt(until))),
        );
        self.count(t, Some(&customer), &format!("deferred_{reason}"), rk);
        let origin = self
            .views
            .run
            .get(rk)
            .map(|r| r.origin.clone())
            .unwrap_or_default();
        let a = self.views.arb.upsert(&customer);
        a.held.push(HeldMessage {
            origin,
            not_before: until,
            priority: t.priority,
            channel: channel.to_owned(),
            reason: reason.to_owned(),
            run: rk.to_owned(),
            entry,
        });
        self.schedule_arb(&customer);
    }

    pub(super) fn schedule_arb(&mut self, customer: &str) {
        let partition = self.partition;
        let a = self.views.arb.upsert(customer);
        let next = a.held.iter().map(|h| h.not_before).min();
        let want =
            next.map(|due| rows::timer_key(partition, due, &Target::Arb(customer.to_owned())));
        if a.timer == want {
            return;
        }
        let old = std::mem::replace(&mut a.timer, want.clone());
        if let Some(k) = old {
            self.views.due.remove(&k);
            self.views.timers.insert(k, false);
        }
        if let Some(k) = want {
            self.views.due.insert(k.clone());
            self.views.timers.insert(k, true);
        }
    }

    pub(super) fn fire_arb(&mut self, key: &str, customer: &str) {
        self.views.timers.insert(key.to_owned(), false);
        let Some(a) = self.views.arb.get_mut(customer) else {
            return;
        };
        if a.timer.as_deref() != Some(key) {
            return;
        }
        a.timer = None;
        let clock = self.clock;
        let mut due: Vec<HeldMessage> = Vec::new();
        a.held.retain(|h| {
            if h.not_before <= clock {
                due.push(h.clone());
                false
            } else {
                true
            }
        });
        // The most important first: they take the window's free places.
        due.sort_by(|x, y| {
            y.priority
                .cmp(&x.priority)
                .then(x.not_before.cmp(&y.not_before))
        });
        for h in due {
            let (trigger, version) = (h.entry.trigger.clone(), h.entry.version.clone());
            let Some(t) = self.reg.version(&trigger, &version) else {
                tracing::warn!(
                    trigger,
                    version,
                    "a held message's trigger version is not known; it is dropped"
                );
                continue;
            };
            let step = self.views.run.get(&h.run).map(|r| r.step).unwrap_or(0);
            if self
                .views
                .run
                .get(&h.run)
                .is_some_and(|r| r.status == Status::Cancelled && r.origin == h.origin)
            {
                self.log_run(
                    &h.run,
                    "dropped",
                    Some(step),
                    Some(format!(
                        "held message {}: the run was cancelled",
                        h.entry.id
                    )),
                );
                self.count_message(
                    &t,
                    cust(&h.run),
                    "dropped_cancelled",
                    &h.run,
                    Some(h.entry.connector.as_str()),
                );
                continue;
            }
            self.log_run(
                &h.run,
                "released",
                Some(step),
                Some(format!("{} over", h.reason)),
            );
            self.arbitrate(&t, &h.run, h.entry, &h.channel, step, false);
        }
        self.schedule_arb(customer);
    }

    fn send(
        &mut self,
        t: &Trigger,
        rk: &str,
        entry: OutboxEntry,
        channel: &str,
        step: usize,
        counts: bool,
    ) {
        let customer = customer_of(rk).to_owned();
        if counts {
            let longest = self
                .reg
                .current
                .arbitration
                .caps
                .iter()
                .map(|c| c.window_ms)
                .max();
            let clock = self.clock;
            let a = self.views.arb.upsert(&customer);
            if let Some(w) = longest {
                a.sent.retain(|(at, _)| *at > clock - w);
                a.sent.push((clock, channel.to_owned()));
            }
        }
        let id = entry.id.clone();
        // Ordered by time, then by the action's place in its run (not by the id's hash).
        let key = OutboxKey {
            partition: self.partition,
            clock: self.clock.max(self.floor),
            seq: entry.seq.clone(),
            id: id.clone(),
        };
        self.views.outbox.insert(key.encode(), entry);
        self.log_run(rk, "sent", Some(step), Some(format!("{id} via {channel}")));
        self.count(
            t,
            Some(&customer)
                .filter(|c| !c.is_empty())
                .map(|s| s.as_str()),
            "sent",
            rk,
        );
    }
}

/// The next time after `now` that the local clock in `tz` shows `h:m`.
pub fn next_local_time(now: i64, tz: chrono_tz::Tz, h: u32, m: u32) -> i64 {
    let Some(utc) = chrono::DateTime::from_timestamp_millis(now) else {
        return now;
    };
    let local = utc.with_timezone(&tz);
    for days in 0..3 {
        let date = local.date_naive() + chrono::Days::new(days);
        let Some(naive) = date.and_hms_opt(h, m, 0) else {
            continue;
        };
        // A time skipped by a DST change takes the next valid instant.
        let candidate = tz.from_local_datetime(&naive).earliest().or_else(|| {
            tz.from_local_datetime(&(naive + chrono::Duration::hours(1)))
                .earliest()
        });
        if let Some(c) = candidate
            && c.timestamp_millis() > now
        {
            return c.timestamp_millis();
        }
    }
    now + 86_400_000
}

/// When quiet hours (`from`..`to` minutes after local midnight) end, if `now` is inside them.
pub fn quiet_until(now: i64, tz: chrono_tz::Tz, from: u32, to: u32) -> Option<i64> {
    let local = chrono::DateTime::from_timestamp_millis(now)?.with_timezone(&tz);
    let minute = local.hour() * 60 + local.minute();
    let inside = if from < to {
        minute >= from && minute < to
    } else {
        minute >= from || minute < to
    };
    inside.then(|| next_local_time(now, tz, to / 60, to % 60))
}
