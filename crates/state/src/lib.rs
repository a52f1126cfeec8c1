//! Storeline's state store: where the engine keeps its views, committed together with the log
//! offset they reflect.
//!
//! The store is a table of rows `(ns, key, owner) → value`. `ns` is a namespace chosen by the
//! engine (`cust`, `order`, `inv`, …), `key` the entity's key, `owner` the log partition whose
//! single writer wrote the row, `value` opaque bytes (the engine writes JSON). Every row is written
//! by exactly one partition's writer, so writers never contend for a row; a read that wants the
//! whole picture of an entity reads every owner's row ([`StateStore::get`]) and combines them.
//!
//! ```text
//!  partition 3's writer           store
//!  ────────────────────           ─────
//!  read log 40..46 ─► apply ─►  commit { partition: 3, from: 40, to: 46, writes }
//!                                 │  one transaction:
//!                                 │   offsets[3] == 40 ?  else Fenced, nothing written
//!                                 │   upsert / delete the rows (owner = 3)
//!                                 │   offsets[3] := 46
//!                                 ▼
//!  after a crash: offsets()[3] == 46 → resume reading the log at 46
//! ```
//!
//! [`StateStore`] is the contract, [`conformance`] the suite every backend runs; the backends are
//! [`SqliteStore`] (embedded default) and [`PostgresStore`] (cluster mode), selected by [`Store`].

use std::collections::BTreeMap;
use std::future::Future;

use bytes::Bytes;

mod batch;
mod error;
pub mod postgres;
pub mod sqlite;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use error::{Error, Result};
pub use postgres::{PostgresConfig, PostgresStore};
pub use sqlite::SqliteStore;

/// One change to a row owned by the committing partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Insert or replace the row `(ns, key, owner)`.
    Put {
        ns: String,
        key: String,
        value: Bytes,
    },
    /// Remove the row `(ns, key, owner)` if it exists.
    Delete { ns: String, key: String },
}

/// What one partition's writer commits at once: the rows it changed and the log range applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub partition: u32,
    /// The offset the store must hold for `partition` now (0 when it never committed).
    pub from_offset: u64,
    /// The offset the store holds for `partition` after the commit: the next record to apply.
    pub to_offset: u64,
    pub writes: Vec<Write>,
}

/// A stored row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub ns: String,
    pub key: String,
    pub owner: u32,
    pub value: Bytes,
}

/// A SHA-256 over every row and every committed offset, in a fixed order, with the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    pub sha256: [u8; 32],
    pub rows: u64,
    pub partitions: u32,
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.sha256 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Where views live, committed atomically with the log offsets they reflect.
///
/// # Contract
///
/// Every backend MUST keep these rules; [`conformance`] checks them.
///
/// 1. **Atomic commits.** [`commit`](StateStore::commit) applies all its writes and moves the
///    partition's offset in one transaction: after a crash at any point either all of it is
///    visible or none of it is.
/// 2. **Fencing.** A commit whose `from_offset` differs from the partition's stored offset (0 if
///    none) fails with [`Error::Fenced`] and changes nothing. So a batch can never be applied
///    twice, and two writers of one partition cannot both win.
/// 3. **Ownership.** A commit writes and deletes only rows whose owner is its partition; rows of
///    other owners with the same `(ns, key)` are untouched.
/// 4. **Read after commit.** Once `commit` returns `Ok`, every read on the same store (and, for a
///    shared backend, on any store opened on the same database) sees it.
/// 5. **Order.** [`get`](StateStore::get) returns a key's rows ordered by owner;
///    [`scan`](StateStore::scan) and [`dump`](StateStore::dump) order rows by `(ns, key, owner)`
///    comparing strings bytewise, so every backend yields the same sequence for the same content.
/// 6. **Bytes are kept exactly.** A value reads back byte-for-byte as written, which is what
///    makes [`digest`] equal across backends holding the same rows.
/// 7. **Durability** follows the backend: a committed transaction survives a process crash. (The
///    embedded store may lose the last commits on power loss; the engine then re-applies them
///    from the log, which is safe because the offset is lost with them.)
pub trait StateStore: Send + Sync + 'static {
    /// The committed next-offset of every partition that ever committed.
    fn offsets(&self) -> impl Future<Output = Result<BTreeMap<u32, u64>>> + Send;

    /// Applies a partition's batch atomically, fenced by `from_offset`.
    fn commit(&self, commit: Commit) -> impl Future<Output = Result<()>> + Send;

    /// Every owner's row for `(ns, key)`, ordered by owner.
    fn get(&self, ns: &str, key: &str) -> impl Future<Output = Result<Vec<(u32, Bytes)>>> + Send;

    /// The rows of one owner for many keys, in the order of `keys` (`None` where absent).
    fn get_owned(
        &self,
        ns: &str,
        owner: u32,
        keys: &[String],
    ) -> impl Future<Output = Result<Vec<Option<Bytes>>>> + Send;

    /// Rows of `ns` whose key starts with `prefix`, after `(after_key, after_owner)` if given,
    /// at most `limit`, ordered by `(key, owner)`.
    fn scan(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<(&str, u32)>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Row>>> + Send;

    /// All rows of all namespaces after `after` (a `(ns, key, owner)` position), at most
    /// `limit`, ordered by `(ns, key, owner)`: the pages [`digest`] and exports walk through.
    fn dump(
        &self,
        after: Option<(&str, &str, u32)>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Row>>> + Send;

    /// Releases connections; later calls may fail.
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// Hashes every row (by [`StateStore::dump`] pages) and the committed offsets of partitions that
/// moved past 0, in a backend-independent encoding.
pub async fn digest<S: StateStore + ?Sized>(store: &S) -> Result<Digest> {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    let mut partitions = 0u32;
    for (p, off) in store.offsets().await? {
        if off > 0 {
            h.update(b"O");
            h.update(p.to_be_bytes());
            h.update(off.to_be_bytes());
            partitions += 1;
        }
    }
    let mut rows = 0u64;
    let mut after: Option<(String, String, u32)> = None;
    loop {
        let page = store
            .dump(
                after.as_ref().map(|(n, k, o)| (n.as_str(), k.as_str(), *o)),
                4096,
            )
            .await?;
        let Some(last) = page.last() else { break };
        after = Some((last.ns.clone(), last.key.clone(), last.owner));
        for r in &page {
            h.update(b"R");
            for part in [r.ns.as_bytes(), r.key.as_bytes(), &r.value[..]] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part);
            }
            h.update(r.owner.to_be_bytes());
        }
        rows += page.len() as u64;
    }
    Ok(Digest {
        sha256: h.finalize().into(),
        rows,
        partitions,
    })
}

/// The configured backend: a closed set, chosen by `[state] backend`.
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Sqlite($s) => $e,
            Store::Postgres($s) => $e,
        }
    };
}

impl StateStore for Store {
    async fn offsets(&self) -> Result<BTreeMap<u32, u64>> {
        each!(self, s => s.offsets().await)
    }
    async fn commit(&self, commit: Commit) -> Result<()> {
        each!(self, s => s.commit(commit).await)
    }
    async fn get(&self, ns: &str, key: &str) -> Result<Vec<(u32, Bytes)>> {
        each!(self, s => s.get(ns, key).await)
    }
    async fn get_owned(&self, ns: &str, owner: u32, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        each!(self, s => s.get_owned(ns, owner, keys).await)
    }
    async fn scan(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<(&str, u32)>,
        limit: usize,
    ) -> Result<Vec<Row>> {
        each!(self, s => s.scan(ns, prefix, after, limit).await)
    }
    async fn dump(&self, after: Option<(&str, &str, u32)>, limit: usize) -> Result<Vec<Row>> {
        each!(self, s => s.dump(after, limit).await)
    }
    async fn close(&self) {
        each!(self, s => s.close().await)
    }
}
