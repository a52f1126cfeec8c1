//! The delivery store: every delivery, every attempt and the indexes the worker and the API
//! read, kept as rows of a [`StateStore`] (a SQLite file of its own in the data directory, or a
//! PostgreSQL schema of its own), written by the worker's single writer as owner 0.
//!
//! ```text
//!  dlv  {id}                                  the delivery: what to send, status, attempts
//!  att  {id}␟{n:04}                           one row per attempt (time, duration, outcome)
//!  due  {connector}␟{next_at:013}␟{id}        pending deliveries that may be attempted, by time
//!  fifo {connector}␟{key}␟{seq}␟{id}          pending deliveries of FIFO connectors, in order
//!  ix   {created:013}␟{id}                    every delivery by creation (the list API)
//!  dead {created:013}␟{id}                    the dead-letter queue
//!  cur  {partition}                           how far the outbox of a partition was taken in
//!  conn {connector}                           counts, failing-since, disabled-at
//! ```
//!
//! Each commit moves owner 0's offset by one, so two writers cannot both commit (fencing).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use storeline_event::outbox::OutboxEntry;
use storeline_state::{Commit, StateStore, Store, Write};

use crate::{Delivery, Error, Result};

pub const SEP: char = '\u{1f}';
const OWNER: u32 = 0;

pub mod ns {
    pub const DLV: &str = "dlv";
    pub const ATT: &str = "att";
    pub const DUE: &str = "due";
    pub const FIFO: &str = "fifo";
    pub const IX: &str = "ix";
    pub const DEAD: &str = "dead";
    pub const CUR: &str = "cur";
    pub const CONN: &str = "conn";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Delivered,
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Delivered => "delivered",
            Status::Dead => "dead",
        }
    }
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "pending" => Some(Status::Pending),
            "delivered" => Some(Status::Delivered),
            "dead" => Some(Status::Dead),
            _ => None,
        }
    }
}

/// A delivery as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub id: String,
    pub connector: String,
    pub channel: String,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub customer: Option<String>,
    #[serde(default)]
    pub trigger: String,
    #[serde(default)]
    pub run: String,
    #[serde(default)]
    pub event: Value,
    #[serde(default)]
    pub arrived: Option<Value>,
    #[serde(default)]
    pub data: Map<String, Value>,
    pub created_at: i64,
    pub key: String,
    pub partition: u32,
    /// The outbox row's key: the order of deliveries within a partition.
    pub seq: String,
    pub status: Status,
    pub attempts: u32,
    /// The attempt count when the current round of the schedule began (a redrive starts one).
    #[serde(default)]
    pub round_start: u32,
    /// When the next attempt may be made; `None` while queued behind an earlier FIFO delivery.
    #[serde(default)]
    pub next_at: Option<i64>,
    #[serde(default)]
    pub last_error: Option<String>,
    pub updated_at: i64,
    #[serde(default)]
    pub delivered_at: Option<i64>,
    #[serde(default)]
    pub redriven: u32,
}

impl Record {
    /// A new pending delivery from an engine outbox row (the entry's JSON under the key
    /// `seq`), or what is wrong with the row.
    pub fn from_outbox(
        partition: u32,
        seq: &str,
        row: &[u8],
        now: i64,
    ) -> std::result::Result<Record, String> {
        let e = OutboxEntry::parse(row)?;
        Ok(Record {
            key: e.delivery_key(),
            id: e.id,
            connector: e.connector,
            channel: e.channel,
            template: e.template,
            customer: e.customer,
            trigger: e.trigger,
            run: e.run,
            event: e.event,
            arrived: e.arrived,
            data: e.data,
            created_at: e.created_at,
            partition,
            seq: seq.to_owned(),
            status: Status::Pending,
            attempts: 0,
            round_start: 0,
            next_at: Some(now),
            last_error: None,
            updated_at: now,
            delivered_at: None,
            redriven: 0,
        })
    }

    /// What the connector gets for the next attempt.
    pub fn delivery(&self, profile: Option<Value>) -> Delivery {
        Delivery {
            id: self.id.clone(),
            connector: self.connector.clone(),
            channel: self.channel.clone(),
            template: self.template.clone(),
            customer: self.customer.clone(),
            trigger: self.trigger.clone(),
            event: self.event.clone(),
            arrived: self.arrived.clone(),
            data: self.data.clone(),
            created_at: self.created_at,
            attempt: self.attempts + 1,
            key: self.key.clone(),
            profile,
        }
    }

    /// Where the record's index rows are now (to move them after a change).
    pub fn prev(&self) -> Prev {
        Prev {
            due: self.due_key(),
            status: self.status,
        }
    }

    fn due_key(&self) -> Option<String> {
        (self.status == Status::Pending)
            .then_some(self.next_at)
            .flatten()
            .map(|at| due_key(&self.connector, at, &self.id))
    }
    pub fn fifo_key(&self) -> String {
        format!(
            "{}{SEP}{}{SEP}{}{SEP}{}",
            self.connector, self.key, self.seq, self.id
        )
    }
    fn ix_key(&self) -> String {
        format!("{:013}{SEP}{}", self.created_at.max(0), self.id)
    }
    fn ix_value(&self) -> String {
        format!(
            "{}{SEP}{}{SEP}{}",
            self.status.as_str(),
            self.connector,
            self.customer.as_deref().unwrap_or("")
        )
    }
}

/// A record's index positions before a change.
#[derive(Debug, Clone)]
pub struct Prev {
    due: Option<String>,
    status: Status,
}

pub fn due_key(connector: &str, at: i64, id: &str) -> String {
    format!("{connector}{SEP}{:013}{SEP}{id}", at.max(0))
}

/// One attempt as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Attempt {
    pub n: u32,
    pub at: i64,
    pub ms: u64,
    pub outcome: String,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at: Option<i64>,
}

/// A connector's durable state and counts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ConnState {
    pub pending: i64,
    pub delivered: i64,
    pub dead: i64,
    #[serde(default)]
    pub failing_since: Option<i64>,
    #[serde(default)]
    pub disabled_at: Option<i64>,
    #[serde(default)]
    pub last_success: Option<i64>,
}

/// What the list API asks for.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub connector: Option<String>,
    pub status: Option<Status>,
    pub customer: Option<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
}

impl Filter {
    fn matches(&self, status: &str, connector: &str, customer: &str) -> bool {
        self.status.is_none_or(|s| s.as_str() == status)
            && self.connector.as_deref().is_none_or(|c| c == connector)
            && self.customer.as_deref().is_none_or(|c| c == customer)
    }
}

/// The rows a writer iteration changes, committed at once.
#[derive(Default)]
pub struct Batch {
    writes: BTreeMap<(&'static str, String), Option<Bytes>>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
    pub fn len(&self) -> usize {
        self.writes.len()
    }
    /// Whether the batch changes delivery `id`.
    pub fn has_dlv(&self, id: &str) -> bool {
        self.writes.contains_key(&(ns::DLV, id.to_owned()))
    }
    /// The deliveries the batch changes.
    pub fn dlv_ids(&self) -> std::collections::HashSet<String> {
        self.writes
            .keys()
            .filter(|(n, _)| *n == ns::DLV)
            .map(|(_, k)| k.clone())
            .collect()
    }
    /// Puts this (older, uncommitted) batch's writes under `newer`: where both write a row,
    /// the newer write stays.
    pub fn merge_under(self, newer: &mut Batch) {
        for (k, v) in self.writes {
            newer.writes.entry(k).or_insert(v);
        }
    }
    fn put(&mut self, ns: &'static str, key: String, value: impl Into<Bytes>) {
        self.writes.insert((ns, key), Some(value.into()));
    }
    fn delete(&mut self, ns: &'static str, key: String) {
        self.writes.insert((ns, key), None);
    }

    /// Writes `new` and moves its index rows from where they were (`old`, from
    /// [`Record::prev`] before the change; `None` for a new delivery).
    pub fn record(&mut self, old: Option<&Prev>, new: &Record) -> Result<()> {
        let value = serde_json::to_vec(new).map_err(|e| Error::Decode {
            id: new.id.clone(),
            source: e,
        })?;
        self.put(ns::DLV, new.id.clone(), value);
        let due = new.due_key();
        if let Some(k) = old.and_then(|o| o.due.as_ref())
            && Some(k) != due.as_ref()
        {
            self.delete(ns::DUE, k.clone());
        }
        if let Some(k) = due {
            self.put(ns::DUE, k, Bytes::new());
        }
        if old.is_none_or(|o| o.status != new.status) {
            self.put(ns::IX, new.ix_key(), new.ix_value());
            if new.status == Status::Dead {
                self.put(ns::DEAD, new.ix_key(), new.ix_value());
            } else if old.is_some_and(|o| o.status == Status::Dead) {
                self.delete(ns::DEAD, new.ix_key());
            }
        }
        Ok(())
    }
    pub fn fifo(&mut self, r: &Record, present: bool) {
        if present {
            self.put(ns::FIFO, r.fifo_key(), Bytes::new());
        } else {
            self.delete(ns::FIFO, r.fifo_key());
        }
    }
    pub fn attempt(&mut self, id: &str, a: &Attempt) {
        let v = serde_json::to_vec(a).unwrap_or_default();
        self.put(ns::ATT, format!("{id}{SEP}{:04}", a.n), v);
    }
    pub fn cursor(&mut self, partition: u32, clock: i64) {
        self.put(ns::CUR, partition.to_string(), clock.to_string());
    }
    pub fn conn(&mut self, name: &str, s: &ConnState) {
        self.put(
            ns::CONN,
            name.to_owned(),
            serde_json::to_vec(s).unwrap_or_default(),
        );
    }
}

/// The store, with the writer's commit counter.
pub struct DeliveryStore {
    pub store: Arc<Store>,
}

fn decode<T: for<'de> Deserialize<'de>>(id: &str, b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| Error::Decode {
        id: id.to_owned(),
        source: e,
    })
}

impl DeliveryStore {
    pub fn new(store: Arc<Store>) -> DeliveryStore {
        DeliveryStore { store }
    }

    /// The writer's next commit position.
    pub async fn position(&self) -> Result<u64> {
        Ok(self
            .store
            .offsets()
            .await?
            .get(&OWNER)
            .copied()
            .unwrap_or(0))
    }

    /// Commits `batch` at `position` (moving it by one); on error nothing is written.
    pub async fn commit(&self, position: u64, batch: &Batch) -> Result<()> {
        let writes = batch
            .writes
            .iter()
            .map(|((ns, key), v)| match v {
                Some(value) => Write::Put {
                    ns: (*ns).to_owned(),
                    key: key.clone(),
                    value: value.clone(),
                },
                None => Write::Delete {
                    ns: (*ns).to_owned(),
                    key: key.clone(),
                },
            })
            .collect();
        self.store
            .commit(Commit {
                partition: OWNER,
                from_offset: position,
                to_offset: position + 1,
                writes,
            })
            .await?;
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Option<Record>> {
        let rows = self
            .store
            .get_owned(ns::DLV, OWNER, &[id.to_owned()])
            .await?;
        rows.into_iter()
            .next()
            .flatten()
            .map(|b| decode(id, &b))
            .transpose()
    }

    pub async fn get_many(&self, ids: &[String]) -> Result<Vec<Option<Record>>> {
        let rows = self.store.get_owned(ns::DLV, OWNER, ids).await?;
        rows.into_iter()
            .zip(ids)
            .map(|(b, id)| b.map(|b| decode(id, &b)).transpose())
            .collect()
    }

    pub async fn attempts(&self, id: &str) -> Result<Vec<Attempt>> {
        let rows = self
            .store
            .scan(ns::ATT, &format!("{id}{SEP}"), None, 10_000)
            .await?;
        rows.iter().map(|r| decode(id, &r.value)).collect()
    }

    /// Up to `limit` ids of `connector` due at or before `now`, and the time of the first one
    /// after `now` if the page ended there.
    pub async fn due(
        &self,
        connector: &str,
        now: i64,
        limit: usize,
    ) -> Result<(Vec<String>, Option<i64>)> {
        let prefix = format!("{connector}{SEP}");
        let rows = self.store.scan(ns::DUE, &prefix, None, limit).await?;
        let mut ids = Vec::new();
        for r in rows {
            let rest = &r.key[prefix.len()..];
            let (at, id) = rest.split_once(SEP).unwrap_or((rest, ""));
            let at: i64 = at.parse().unwrap_or(0);
            if at > now {
                return Ok((ids, Some(at)));
            }
            ids.push(id.to_owned());
        }
        Ok((ids, None))
    }

    pub async fn cursors(&self) -> Result<BTreeMap<u32, i64>> {
        let rows = self.store.scan(ns::CUR, "", None, 100_000).await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some((
                    r.key.parse().ok()?,
                    std::str::from_utf8(&r.value).ok()?.parse().ok()?,
                ))
            })
            .collect())
    }

    pub async fn conns(&self) -> Result<BTreeMap<String, ConnState>> {
        let rows = self.store.scan(ns::CONN, "", None, 100_000).await?;
        rows.iter()
            .map(|r| Ok((r.key.clone(), decode(&r.key, &r.value)?)))
            .collect()
    }

    /// Every FIFO row, in order: `(connector, key, id)`.
    pub async fn fifo_rows(&self) -> Result<Vec<(String, String, String)>> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let rows = self
                .store
                .scan(ns::FIFO, "", after.as_deref().map(|k| (k, OWNER)), 4096)
                .await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.key.clone());
            for r in &rows {
                // `{connector}␟{key}␟{seq}␟{id}`, where seq (the outbox row's key) holds SEPs.
                let mut front = r.key.splitn(3, SEP);
                if let (Some(c), Some(k), Some(_), Some(id)) = (
                    front.next(),
                    front.next(),
                    front.next(),
                    r.key.rsplit(SEP).next(),
                ) {
                    out.push((c.to_owned(), k.to_owned(), id.to_owned()));
                }
            }
        }
        Ok(out)
    }

    /// A page of deliveries matching `f`, oldest first, after the position `after`
    /// (`{created:013}␟{id}` of the last row of the previous page). Returns the rows and the
    /// position to continue from, if there may be more.
    pub async fn list(
        &self,
        f: &Filter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Record>, Option<String>)> {
        let index = if f.status == Some(Status::Dead) {
            ns::DEAD
        } else {
            ns::IX
        };
        let start = f.from.map(|t| format!("{:013}", t.max(0)));
        let mut pos: Option<String> = match (after, start) {
            (Some(a), Some(s)) => Some(if a > s.as_str() { a.to_owned() } else { s }),
            (Some(a), None) => Some(a.to_owned()),
            (None, s) => s,
        };
        let mut ids = Vec::new();
        let mut scanned = 0usize;
        let mut more = None;
        'pages: loop {
            let rows = self
                .store
                .scan(index, "", pos.as_deref().map(|k| (k, OWNER)), 1024)
                .await?;
            let Some(last) = rows.last() else { break };
            let page_end = last.key.clone();
            for r in &rows {
                let created: i64 = r.key[..13.min(r.key.len())].parse().unwrap_or(0);
                if f.to.is_some_and(|to| created > to) {
                    break 'pages;
                }
                let v = std::str::from_utf8(&r.value).unwrap_or("");
                let mut it = v.splitn(3, SEP);
                let (st, c, cu) = (
                    it.next().unwrap_or(""),
                    it.next().unwrap_or(""),
                    it.next().unwrap_or(""),
                );
                if f.matches(st, c, cu) {
                    ids.push(r.key.rsplit(SEP).next().unwrap_or("").to_owned());
                    if ids.len() == limit {
                        more = Some(r.key.clone());
                        break 'pages;
                    }
                }
            }
            scanned += rows.len();
            pos = Some(page_end);
            // A filter that matches little must not read the whole history in one request.
            if scanned >= 200_000 {
                more = pos.clone();
                break;
            }
        }
        let recs = self.get_many(&ids).await?;
        Ok((recs.into_iter().flatten().collect(), more))
    }
}
