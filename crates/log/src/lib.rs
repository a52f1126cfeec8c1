//! Storeline's log: the durable, partitioned, replayable record of every event.
//!
//! [`EventLog`] is the contract every backend keeps (the embedded [`FileLog`], the [`MemoryLog`]
//! for tests, the [`KafkaLog`] for clusters); [`conformance`] is the test suite that checks it, run against each.
//!
//! ```text
//!  partition 3:   start                                  end (next offset)
//!                   │                                      │
//!   trimmed …  ─────┼────┬────┬────┬────┬────┬────┬────┬───┼ ─ ─ appends land here
//!                   │ 40 │ 41 │ 42 │ 43 │ 44 │ 45 │ 46 │   │
//!                   └────┴────┴────┴────┴────┴────┴────┴───┘
//!                   offsets are dense: every integer in [start, end) is one record
//! ```

use std::future::Future;

use bytes::Bytes;
use tokio::sync::watch;

mod error;
pub mod file;
mod kafka;
mod memory;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
#[cfg(any(test, feature = "conformance"))]
pub mod tansu;

pub use error::{Error, Result};
pub use file::{
    FileLog, FileLogConfig,
    verify::{PartitionReport, VerifyReport, verify_dir},
};
pub use kafka::{KafkaLog, KafkaLogConfig};
pub use memory::MemoryLog;

/// A record to append: the partition key it was routed by and its bytes, with the time the
/// caller received it (milliseconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub timestamp: i64,
    pub key: Bytes,
    pub value: Bytes,
}

/// A record as read back: where it is and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub offset: u64,
    pub timestamp: i64,
    pub key: Bytes,
    pub value: Bytes,
}

/// What an append was given: the offset of its first record; the others follow densely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendAck {
    pub base_offset: u64,
    pub count: u32,
}

/// The readable range of a partition: `start` is the oldest offset still kept, `end` the offset
/// the next append will get. `start == end` means empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bounds {
    pub start: u64,
    pub end: u64,
}

/// The partition a key belongs to: xxh3 of the key, modulo the partition count. Stable across
/// versions and machines (it decides where every event lives).
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(key) % u64::from(partitions.max(1))) as u32
}

/// A partitioned, append-only, durable log of records.
///
/// # Contract
///
/// Every backend MUST keep these rules; [`conformance`] checks them.
///
/// 1. **Durable acks.** When [`append`](EventLog::append) returns `Ok`, the records are durable
///    (fsynced on a file backend, acknowledged by all in-sync replicas on Kafka) and will be there
///    after a crash of the process or the machine. When it returns `Err`, none of them are
///    visible to readers and none will appear later.
/// 2. **Dense offsets.** Within a partition, offsets start at 0 and increase by exactly 1 per
///    record. An append of `n` records gets `n` consecutive offsets starting at
///    [`AppendAck::base_offset`]; concurrent appends never interleave their records.
/// 3. **Visibility.** A record is visible to [`read`](EventLog::read) and counted in
///    [`bounds`](EventLog::bounds) / [`watch`](EventLog::watch) only once it is durable. Readers
///    never see a record that a crash could take away.
/// 4. **Reads.** `read(p, from, max)` returns the records with offsets `from, from+1, …`
///    (at most `max`, at least one if `from < end`), in offset order. `from == end` returns an
///    empty list. `from > end` is [`Error::OffsetOutOfRange`]; so is `from < start` (trimmed).
/// 5. **Time.** Timestamps within a partition never decrease: a record appended with an older
///    timestamp than the last one is stored with the last one's. So
///    [`offset_for_time`](EventLog::offset_for_time) returns the first offset whose timestamp is
///    `>= t`, or `end` if there is none.
/// 6. **Tail.** [`watch`](EventLog::watch) yields the partition's `end`, updated after each
///    durable append; a reader that has consumed up to `end` awaits a change to follow the tail.
/// 7. **Trim.** `trim(p, before)` MAY drop records with offsets `< before` (a backend may keep
///    more, e.g. whole segments); it never drops `before` or later, and never renumbers.
/// 8. **Failure.** A backend that cannot make data durable (an fsync error) MUST stop accepting
///    appends for that partition ([`Error::WriterStopped`]) rather than retry: after a failed
///    fsync the kernel may have dropped the dirty pages, so a retry could acknowledge lost data.
///    Corruption found in stored data is reported ([`Error::Corrupt`], naming where), never
///    skipped silently.
pub trait EventLog: Send + Sync + 'static {
    /// The number of partitions, fixed when the log is created.
    fn partitions(&self) -> u32;

    /// Appends records to one partition, all or nothing, and returns once they are durable.
    fn append(
        &self,
        partition: u32,
        records: Vec<Record>,
    ) -> impl Future<Output = Result<AppendAck>> + Send;

    /// Reads up to `max` records from offset `from` on.
    fn read(
        &self,
        partition: u32,
        from: u64,
        max: usize,
    ) -> impl Future<Output = Result<Vec<StoredRecord>>> + Send;

    /// The first offset whose timestamp is at or after `timestamp` (ms), or `end`.
    fn offset_for_time(
        &self,
        partition: u32,
        timestamp: i64,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// The readable range of a partition.
    fn bounds(&self, partition: u32) -> Result<Bounds>;

    /// Follows the partition's `end` offset.
    fn watch(&self, partition: u32) -> Result<watch::Receiver<u64>>;

    /// Drops records below `before` where the backend can; returns the new `start`.
    fn trim(&self, partition: u32, before: u64) -> impl Future<Output = Result<u64>> + Send;

    /// Why a partition cannot be served, if it cannot (corruption found, writer stopped).
    fn health(&self, partition: u32) -> Option<String>;

    /// Finishes in-flight appends, makes everything durable and stops the writers. Appends
    /// after `close` fail with [`Error::Closed`].
    fn close(&self) -> impl Future<Output = Result<()>> + Send;
}
