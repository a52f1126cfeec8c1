//! A partition writer's working set: the rows it owns that its recent events touched, loaded from
//! the store before a batch is applied, changed in memory by the (synchronous, pure) projections,
//! and written back as one [`Commit`].
//!
//! Projections never wait for I/O: [`Keys`] lists what a batch will touch, [`Views::load`] fetches
//! the rows that are not cached yet, then the batch is applied. Rows are cached across batches
//! until the cache grows past its limit, when it is simply dropped (everything in it is committed).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use storeline_state::{StateStore, Write};

use crate::error::{Error, Result};
use crate::model::{Frag, Idem, Links, Order, Reservation, Stock, ns};
use crate::quarantine::{self, Entry, Index};
use crate::triggers::rows::{
    self as trows, Arb, Definition, Journal, PersonRow, Run, Stats, WaitList, Window,
};

/// The cached rows of one namespace, and which of them changed since the last commit.
#[derive(Debug)]
pub struct Table<T> {
    ns: &'static str,
    rows: HashMap<String, Option<T>>,
    dirty: BTreeSet<String>,
    /// Encoded bytes loaded or written since the cache was last dropped: a cheap gauge of how
    /// much memory the cached rows take (they take a few times more decoded).
    bytes: usize,
}

impl<T: Serialize + DeserializeOwned + Default> Table<T> {
    fn new(ns: &'static str) -> Self {
        Table {
            ns,
            rows: HashMap::new(),
            dirty: BTreeSet::new(),
            bytes: 0,
        }
    }

    /// The row, if it exists. A key that was never loaded reads as absent; callers list every
    /// key in [`Keys`] first, so that does not happen for keys a batch needs.
    pub fn get(&self, key: &str) -> Option<&T> {
        self.rows.get(key).and_then(Option::as_ref)
    }

    /// The row for changing it, created empty if absent.
    pub fn upsert(&mut self, key: &str) -> &mut T {
        if !self.dirty.contains(key) {
            self.dirty.insert(key.to_owned());
        }
        let slot = self.rows.entry(key.to_owned()).or_insert(None);
        slot.get_or_insert_with(T::default)
    }

    /// The row for changing it, only if it exists.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut T> {
        let slot = self.rows.get_mut(key)?.as_mut()?;
        if !self.dirty.contains(key) {
            self.dirty.insert(key.to_owned());
        }
        Some(slot)
    }

    pub fn put(&mut self, key: &str, value: T) {
        self.dirty.insert(key.to_owned());
        self.rows.insert(key.to_owned(), Some(value));
    }

    pub fn remove(&mut self, key: &str) {
        self.dirty.insert(key.to_owned());
        self.rows.insert(key.to_owned(), None);
    }

    fn copy_missing(&mut self, from: &Table<T>, keys: &BTreeSet<String>)
    where
        T: Clone,
    {
        for k in keys {
            if !self.rows.contains_key(k)
                && let Some(row) = from.rows.get(k)
            {
                self.rows.insert(k.clone(), row.clone());
            }
        }
    }

    /// The keys of the rows cached under `prefix` that exist (new ones included).
    pub fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .rows
            .iter()
            .filter(|(k, v)| v.is_some() && k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        out.sort();
        out
    }

    fn is_cached(&self, key: &str) -> bool {
        self.rows.contains_key(key)
    }

    fn drain_writes(&mut self, out: &mut Vec<Write>) -> Result<()> {
        for key in std::mem::take(&mut self.dirty) {
            match self.rows.get(&key).and_then(Option::as_ref) {
                Some(row) => {
                    let value = Bytes::from(serde_json::to_vec(row).map_err(Error::encode)?);
                    self.bytes += value.len();
                    out.push(Write::Put {
                        ns: self.ns.to_owned(),
                        key,
                        value,
                    });
                }
                None => out.push(Write::Delete {
                    ns: self.ns.to_owned(),
                    key,
                }),
            }
        }
        Ok(())
    }

    async fn load<S: StateStore>(
        &mut self,
        store: &S,
        owner: u32,
        keys: &BTreeSet<String>,
    ) -> Result<()> {
        let missing: Vec<String> = keys
            .iter()
            .filter(|k| !self.is_cached(k))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        for chunk in missing.chunks(2048) {
            let found = store.get_owned(self.ns, owner, chunk).await?;
            for (key, value) in chunk.iter().zip(found) {
                let row = match value {
                    Some(b) => Some(
                        {
                            self.bytes += b.len();
                            serde_json::from_slice(&b)
                        }
                        .map_err(|e| Error::Decode {
                            ns: self.ns,
                            key: key.clone(),
                            reason: e.to_string(),
                        })?,
                    ),
                    None => None,
                };
                self.rows.insert(key.clone(), row);
            }
        }
        Ok(())
    }
}

/// The keys a batch touches, per namespace.
#[derive(Debug, Default)]
pub struct Keys {
    pub frag: BTreeSet<String>,
    pub link: BTreeSet<String>,
    pub order: BTreeSet<String>,
    pub inv: BTreeSet<String>,
    pub resv: BTreeSet<String>,
    pub idem: BTreeSet<String>,
    pub run: BTreeSet<String>,
    pub wait: BTreeSet<String>,
    pub arb: BTreeSet<String>,
    pub jrnl: BTreeSet<String>,
    pub agg: BTreeSet<String>,
    pub aggf: BTreeSet<String>,
    pub tstat: BTreeSet<String>,
    pub quarix: BTreeSet<String>,
    pub person: BTreeSet<String>,
    /// Identities whose runs are all loaded (listed by key prefix): a merge hands them over.
    pub person_runs: BTreeSet<String>,
}

impl Keys {
    pub fn extend(&mut self, other: Keys) {
        self.frag.extend(other.frag);
        self.link.extend(other.link);
        self.order.extend(other.order);
        self.inv.extend(other.inv);
        self.resv.extend(other.resv);
        self.idem.extend(other.idem);
        self.run.extend(other.run);
        self.wait.extend(other.wait);
        self.arb.extend(other.arb);
        self.jrnl.extend(other.jrnl);
        self.agg.extend(other.agg);
        self.aggf.extend(other.aggf);
        self.tstat.extend(other.tstat);
        self.quarix.extend(other.quarix);
        self.person.extend(other.person);
        self.person_runs.extend(other.person_runs);
    }
}

/// Every row a partition's writer holds in memory.
#[derive(Debug)]
pub struct Views {
    pub owner: u32,
    pub frag: Table<Frag>,
    pub link: Table<Links>,
    pub order: Table<Order>,
    pub inv: Table<Stock>,
    pub resv: Table<Reservation>,
    pub idem: Table<Idem>,
    pub run: Table<Run>,
    pub wait: Table<WaitList>,
    pub arb: Table<Arb>,
    pub jrnl: Table<Journal>,
    pub agg: Table<Window>,
    /// Windows over forwarded copies, counted in the customer's partition for its conditions
    /// (the originals are counted in `agg` where they are stored, which the API reads).
    pub aggf: Table<Window>,
    pub tstat: Table<Stats>,
    /// The partition's quarantine index (which entries it keeps).
    pub quarix: Table<Index>,
    /// Per identity: the person it belongs to, its runs, merges (see [`PersonRow`]).
    pub person: Table<PersonRow>,
    /// Quarantine entries to put (`Some`) or delete (`None`); written, never cached.
    pub quar: BTreeMap<String, Option<Entry>>,
    /// Timers to put (`true`) or delete (`false`); timers are written, never cached.
    pub timers: BTreeMap<String, bool>,
    /// Timers known to be pending in this batch (due ones from the store, and new ones), in due
    /// order.
    pub due: BTreeSet<String>,
    /// Outbox entries to write.
    pub outbox: BTreeMap<String, storeline_event::outbox::OutboxEntry>,
    /// Trigger files to record.
    pub trigdef: BTreeMap<String, Definition>,
    /// The partition's trigger clock, to record with the commit.
    pub clock: Option<i64>,
    /// The partition's watermark, when a tick moved it.
    pub watermark: Option<i64>,
    /// Write the [`trows::RUNS_MARKED_KEY`] row with the next commit.
    pub runs_marked: bool,
    /// Trait-index entries to put (`true`) or delete (`false`), last write wins.
    pub traits: BTreeMap<String, bool>,
}

impl Views {
    pub fn new(owner: u32) -> Views {
        Views {
            owner,
            frag: Table::new(ns::FRAG),
            link: Table::new(ns::LINK),
            order: Table::new(ns::ORDER),
            inv: Table::new(ns::INV),
            resv: Table::new(ns::RESV),
            idem: Table::new(ns::IDEM),
            run: Table::new(trows::ns::RUN),
            wait: Table::new(trows::ns::WAIT),
            arb: Table::new(trows::ns::ARB),
            jrnl: Table::new(trows::ns::JRNL),
            agg: Table::new(trows::ns::AGG),
            aggf: Table::new(trows::ns::AGGF),
            tstat: Table::new(trows::ns::TSTAT),
            quarix: Table::new(quarantine::ns::INDEX),
            person: Table::new(trows::ns::PERSON),
            quar: BTreeMap::new(),
            timers: BTreeMap::new(),
            due: BTreeSet::new(),
            outbox: BTreeMap::new(),
            trigdef: BTreeMap::new(),
            clock: None,
            watermark: None,
            runs_marked: false,
            traits: BTreeMap::new(),
        }
    }

    /// Fetches the rows of `keys` that are not cached yet: one request per namespace with
    /// missing keys, all in flight at once (each table is a field of its own), so a batch waits
    /// for about one store round trip instead of one per namespace (PostgreSQL), and SQLite's
    /// read connections work in parallel.
    pub async fn load<S: StateStore>(&mut self, store: &S, keys: &Keys) -> Result<()> {
        let o = self.owner;
        tokio::try_join!(
            self.frag.load(store, o, &keys.frag),
            self.link.load(store, o, &keys.link),
            self.order.load(store, o, &keys.order),
            self.inv.load(store, o, &keys.inv),
            self.resv.load(store, o, &keys.resv),
            self.idem.load(store, o, &keys.idem),
            self.run.load(store, o, &keys.run),
            self.wait.load(store, o, &keys.wait),
            self.arb.load(store, o, &keys.arb),
            self.jrnl.load(store, o, &keys.jrnl),
            self.agg.load(store, o, &keys.agg),
            self.aggf.load(store, o, &keys.aggf),
            self.tstat.load(store, o, &keys.tstat),
            self.quarix.load(store, o, &keys.quarix),
            self.person.load(store, o, &keys.person),
        )?;
        Ok(())
    }

    /// Whether any key of `keys` is not cached yet.
    pub fn missing(&self, keys: &Keys) -> bool {
        fn any<T>(t: &Table<T>, k: &BTreeSet<String>) -> bool {
            k.iter().any(|k| !t.rows.contains_key(k))
        }
        any(&self.frag, &keys.frag)
            || any(&self.link, &keys.link)
            || any(&self.order, &keys.order)
            || any(&self.inv, &keys.inv)
            || any(&self.resv, &keys.resv)
            || any(&self.idem, &keys.idem)
            || any(&self.run, &keys.run)
            || any(&self.wait, &keys.wait)
            || any(&self.arb, &keys.arb)
            || any(&self.jrnl, &keys.jrnl)
            || any(&self.agg, &keys.agg)
            || any(&self.aggf, &keys.aggf)
            || any(&self.tstat, &keys.tstat)
            || any(&self.quarix, &keys.quarix)
            || any(&self.person, &keys.person)
    }

    /// Copies rows of `keys` that this (scratch) view lacks from `live`, unchanged and clean.
    pub fn copy_missing(&mut self, live: &Views, keys: &Keys) {
        self.frag.copy_missing(&live.frag, &keys.frag);
        self.link.copy_missing(&live.link, &keys.link);
        self.order.copy_missing(&live.order, &keys.order);
        self.inv.copy_missing(&live.inv, &keys.inv);
        self.resv.copy_missing(&live.resv, &keys.resv);
        self.idem.copy_missing(&live.idem, &keys.idem);
    }

    /// Everything changed since the last call, as store writes.
    pub fn take_writes(&mut self) -> Result<Vec<Write>> {
        let mut out = Vec::new();
        self.frag.drain_writes(&mut out)?;
        self.link.drain_writes(&mut out)?;
        self.order.drain_writes(&mut out)?;
        self.inv.drain_writes(&mut out)?;
        self.resv.drain_writes(&mut out)?;
        self.idem.drain_writes(&mut out)?;
        self.run.drain_writes(&mut out)?;
        self.wait.drain_writes(&mut out)?;
        self.arb.drain_writes(&mut out)?;
        self.jrnl.drain_writes(&mut out)?;
        self.agg.drain_writes(&mut out)?;
        self.aggf.drain_writes(&mut out)?;
        self.tstat.drain_writes(&mut out)?;
        self.quarix.drain_writes(&mut out)?;
        self.person.drain_writes(&mut out)?;
        for (key, entry) in std::mem::take(&mut self.quar) {
            let ns = quarantine::ns::ENTRY.to_owned();
            out.push(match entry {
                Some(e) => Write::Put {
                    ns,
                    key,
                    value: Bytes::from(serde_json::to_vec(&e).map_err(Error::encode)?),
                },
                None => Write::Delete { ns, key },
            });
        }
        for (key, put) in std::mem::take(&mut self.timers) {
            let ns = trows::ns::TIMER.to_owned();
            out.push(if put {
                Write::Put {
                    ns,
                    key,
                    value: Bytes::new(),
                }
            } else {
                Write::Delete { ns, key }
            });
        }
        for (key, entry) in std::mem::take(&mut self.outbox) {
            out.push(Write::Put {
                ns: trows::ns::OUTBOX.to_owned(),
                key,
                value: Bytes::from(entry.to_bytes().map_err(Error::encode)?),
            });
        }
        if std::mem::take(&mut self.runs_marked) {
            out.push(Write::Put {
                ns: trows::ns::TRIGDEF.to_owned(),
                key: trows::RUNS_MARKED_KEY.to_owned(),
                value: Bytes::from_static(b"1"),
            });
        }
        if let Some(w) = self.watermark.take() {
            out.push(Write::Put {
                ns: trows::ns::TRIGDEF.to_owned(),
                key: trows::WATERMARK_KEY.to_owned(),
                value: Bytes::from(w.to_string()),
            });
        }
        if let Some(clock) = self.clock.take() {
            out.push(Write::Put {
                ns: trows::ns::TRIGDEF.to_owned(),
                key: trows::CLOCK_KEY.to_owned(),
                value: Bytes::from(clock.to_string()),
            });
        }
        for (key, def) in std::mem::take(&mut self.trigdef) {
            out.push(Write::Put {
                ns: trows::ns::TRIGDEF.to_owned(),
                key,
                value: Bytes::from(serde_json::to_vec(&def).map_err(Error::encode)?),
            });
        }
        for (key, present) in std::mem::take(&mut self.traits) {
            out.push(if present {
                Write::Put {
                    ns: ns::TRAIT.to_owned(),
                    key,
                    value: Bytes::new(),
                }
            } else {
                Write::Delete {
                    ns: ns::TRAIT.to_owned(),
                    key,
                }
            });
        }
        Ok(out)
    }

    /// Whether there are uncommitted changes.
    pub fn is_dirty(&self) -> bool {
        !(self.frag.dirty.is_empty()
            && self.link.dirty.is_empty()
            && self.order.dirty.is_empty()
            && self.inv.dirty.is_empty()
            && self.resv.dirty.is_empty()
            && self.idem.dirty.is_empty()
            && self.run.dirty.is_empty()
            && self.wait.dirty.is_empty()
            && self.arb.dirty.is_empty()
            && self.jrnl.dirty.is_empty()
            && self.agg.dirty.is_empty()
            && self.aggf.dirty.is_empty()
            && self.tstat.dirty.is_empty()
            && self.quarix.dirty.is_empty()
            && self.person.dirty.is_empty()
            && self.quar.is_empty()
            && self.timers.is_empty()
            && self.outbox.is_empty()
            && self.trigdef.is_empty()
            && self.clock.is_none()
            && self.watermark.is_none()
            && !self.runs_marked
            && self.traits.is_empty())
    }

    /// How many rows are cached.
    pub fn cached(&self) -> usize {
        self.frag.rows.len()
            + self.link.rows.len()
            + self.order.rows.len()
            + self.inv.rows.len()
            + self.resv.rows.len()
            + self.idem.rows.len()
            + self.run.rows.len()
            + self.wait.rows.len()
            + self.arb.rows.len()
            + self.jrnl.rows.len()
            + self.agg.rows.len()
            + self.aggf.rows.len()
            + self.tstat.rows.len()
            + self.quarix.rows.len()
            + self.person.rows.len()
    }

    /// Roughly how many bytes the cached rows were, encoded (see [`Table`]).
    pub fn cached_bytes(&self) -> usize {
        self.frag.bytes
            + self.link.bytes
            + self.order.bytes
            + self.inv.bytes
            + self.resv.bytes
            + self.idem.bytes
            + self.run.bytes
            + self.wait.bytes
            + self.arb.bytes
            + self.jrnl.bytes
            + self.agg.bytes
            + self.aggf.bytes
            + self.tstat.bytes
            + self.quarix.bytes
            + self.person.bytes
    }

    /// Drops the cache; only valid right after a commit (nothing dirty).
    pub fn evict(&mut self) {
        debug_assert!(!self.is_dirty());
        *self = Views::new(self.owner);
    }

    /// The neighbours of already-loaded link rows: an unmerge must update both ends of an edge.
    pub fn link_neighbours(&self, identities: &BTreeSet<String>) -> BTreeSet<String> {
        identities
            .iter()
            .filter_map(|i| self.link.get(i))
            .flat_map(|l| l.edges.iter().map(|e| e.to.clone()))
            .collect()
    }
}
