//! The embedded log: one directory per partition, segment files with a CRC per batch, group
//! commit with fdatasync, and recovery on open.
//!
//! ```text
//!  <dir>/log.json                      format version and partition count
//!  <dir>/journal.wal                   shared journal: one sync for all partitions' rounds
//!  <dir>/p-003/00000000000000000000.log   sealed segment (exact size) + .idx
//!  <dir>/p-003/00000000000000184467.log   active segment (preallocated, zero-filled)
//! ```
//!
//! Each partition has one writer thread ([`writer`]): appends queue up while it is busy, and each
//! round writes everything queued as ONE batch with one write and one fdatasync, then
//! acknowledges all of them. The fdatasync is the shared journal's ([`journal`]): one sync for
//! the rounds of all partitions, replayed into the segments on open. A writer waits for its
//! round's sync before it writes the next batch, which is what makes recovery exact: a crash can
//! only tear the last batch, so a bad batch followed by any valid one is corruption, not a torn
//! tail.
//!
//! The one case recovery cannot tell apart: bit rot inside the *last* batch looks exactly like a
//! torn write, so it is truncated like one (and logged with the byte count). Everything before
//! the last batch is protected by the "a valid batch follows" rule.

pub mod format;
pub mod journal;
mod recover;
pub mod segment;
pub mod verify;
mod writer;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::{Condvar, Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use self::format::HEADER_LEN;
use self::journal::Journal;
use self::segment::Segment;
use crate::{AppendAck, Bounds, Error, EventLog, Record, Result, StoredRecord};

/// Written into a partition directory when its writer stops on a storage error; while it exists
/// the partition refuses appends (see `writer::stop`).
pub const STOPPED_MARKER: &str = "WRITER_STOPPED";

/// Configuration of the embedded log (`[log]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileLogConfig {
    /// Number of partitions. Fixed when the data directory is created: changing it would move
    /// keys to other partitions and break per-key order.
    pub partitions: u32,
    /// Size of a segment file. The active segment is preallocated and zero-filled to this size.
    pub segment_bytes: u64,
    /// Upper bound on one group-commit batch; a larger queue is written in several rounds.
    pub max_batch_bytes: u64,
    /// fdatasync every batch before acknowledging. Turning this off loses acknowledged events on
    /// a machine crash; it exists for benchmarks that want to see the cost.
    pub fsync: bool,
    /// Size of the shared journal (`journal.wal`, preallocated), through which one fdatasync
    /// makes the rounds of all partitions durable. 0 turns it off: each partition writer then
    /// syncs its own segment file.
    pub journal_bytes: u64,
}

impl Default for FileLogConfig {
    fn default() -> Self {
        Self {
            partitions: 8,
            segment_bytes: 32 << 20,
            max_batch_bytes: 8 << 20,
            fsync: true,
            journal_bytes: 64 << 20,
        }
    }
}

impl FileLogConfig {
    /// Checks the values without touching the disk; each problem names its key.
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.partitions == 0 || self.partitions > 4096 {
            problems.push(format!(
                "{prefix}partitions: must be between 1 and 4096, got {}",
                self.partitions
            ));
        }
        if self.segment_bytes < 64 * 1024 {
            problems.push(format!(
                "{prefix}segment_bytes: must be at least 65536, got {}",
                self.segment_bytes
            ));
        }
        if self.segment_bytes > u64::from(u32::MAX) {
            problems.push(format!(
                "{prefix}segment_bytes: must be below 4 GiB, got {}",
                self.segment_bytes
            ));
        }
        if self.max_batch_bytes < 4096 || self.max_batch_bytes > self.segment_bytes {
            problems.push(format!(
                "{prefix}max_batch_bytes: must be between 4096 and segment_bytes ({}), got {}",
                self.segment_bytes, self.max_batch_bytes
            ));
        }
        if self.journal_bytes != 0
            && !(64 * 1024..=u64::from(u32::MAX)).contains(&self.journal_bytes)
        {
            problems.push(format!(
                "{prefix}journal_bytes: must be 0 (off) or between 65536 and 4 GiB, got {}",
                self.journal_bytes
            ));
        }
        problems
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct LogMeta {
    format: u32,
    partitions: u32,
}

#[derive(Debug)]
enum Spare {
    Empty,
    Preparing,
    Ready(PathBuf),
}

struct Pending {
    records: Vec<Record>,
    bytes: u64,
    reply: oneshot::Sender<Result<AppendAck>>,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    closing: bool,
}

struct Partition {
    id: u32,
    dir: PathBuf,
    config: FileLogConfig,
    segments: RwLock<Vec<Arc<Segment>>>,
    /// Why this partition cannot be served (corruption found, writer stopped), if it cannot.
    failure: RwLock<Option<Error>>,
    end_tx: watch::Sender<u64>,
    queue: Mutex<Queue>,
    wake: Condvar,
    spare: Arc<Mutex<Spare>>,
    sealed_bytes: AtomicU64,
    bytes_gauge: metrics::Gauge,
    journal: Option<Arc<Journal>>,
}

impl Partition {
    /// Publishes the bytes of record data in this partition (sealed segments + the active one).
    fn update_bytes_gauge(&self) {
        let bytes = self.sealed_bytes.load(Ordering::Relaxed) + self.active().end_pos();
        self.bytes_gauge.set(bytes as f64);
    }

    fn active(&self) -> Arc<Segment> {
        let segs = self.segments.read();
        Arc::clone(
            segs.last()
                .expect("a partition always has an active segment"),
        )
    }

    fn failure_error(&self) -> Option<Error> {
        self.failure.read().as_ref().map(Error::duplicate)
    }

    /// Corruption refuses reads too; a stopped writer only refuses appends.
    fn read_refusal(&self) -> Option<Error> {
        match &*self.failure.read() {
            Some(e @ Error::Corrupt { .. }) => Some(e.duplicate()),
            _ => None,
        }
    }

    /// Records corruption found by a read: from now on the partition refuses reads and appends
    /// (an append could otherwise store again an event whose dedup entry the corruption hid).
    fn note(&self, result: Result<Vec<StoredRecord>>) -> Result<Vec<StoredRecord>> {
        if let Err(e @ Error::Corrupt { .. }) = &result {
            tracing::error!(partition = self.id, error = %e, "corruption found while reading: refusing this partition");
            let mut failure = self.failure.write();
            if failure.is_none() {
                *failure = Some(e.duplicate());
            }
        }
        result
    }

    fn bounds(&self) -> Bounds {
        let segs = self.segments.read();
        Bounds {
            start: segs.first().map_or(0, |s| s.base_offset),
            end: segs.last().map_or(0, |s| s.next_offset()),
        }
    }
}

/// The embedded, file-backed [`EventLog`].
#[derive(Clone)]
pub struct FileLog {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    /// Held (with an exclusive lock) until `close` or drop: a second process opening the same
    /// log would run recovery under a live writer.
    lock: Mutex<Option<File>>,
    partitions: Vec<Arc<Partition>>,
    writers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    journal: Option<Arc<Journal>>,
    journal_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for FileLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLog")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

/// Creates a file of `len` zero bytes at `path` (through a temporary name) and makes it durable.
///
/// The zeros are written with O_DIRECT where the filesystem allows it: they would otherwise pass
/// through the page cache, doubling the memory traffic of the log for bytes nobody reads.
pub(crate) fn create_zeroed(path: &Path, len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    const CHUNK: usize = 1 << 20;
    const ALIGN: usize = 4096;
    let tmp = path.with_extension("tmp");
    let started = Instant::now();
    let result = (|| {
        let direct = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&tmp);
        let (f, aligned) = match direct {
            Ok(f) => (f, true),
            Err(_) => (
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&tmp)?,
                false,
            ),
        };
        // An aligned window into a zeroed buffer (O_DIRECT needs aligned memory, length and offset).
        let buf = vec![0u8; CHUNK + ALIGN];
        let skew = (ALIGN - (buf.as_ptr() as usize % ALIGN)) % ALIGN;
        let zeros = &buf[skew..skew + CHUNK];
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(CHUNK as u64) as usize;
            if aligned && n.is_multiple_of(ALIGN) {
                f.write_all_at(&zeros[..n], at)?;
            } else {
                // The unaligned tail (or a filesystem without O_DIRECT) goes through the cache.
                let g = OpenOptions::new().write(true).open(&tmp)?;
                g.write_all_at(&zeros[..n], at)?;
                g.sync_all()?;
            }
            at += n as u64;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    tracing::debug!(path = %path.display(), ms = started.elapsed().as_millis() as u64, "zero-filled a segment");
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// The segment files of a partition directory, sorted by base offset.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(base) = name
            .strip_suffix(".log")
            .and_then(|b| b.parse::<u64>().ok())
        {
            out.push((base, path));
        }
    }
    out.sort();
    Ok(out)
}

pub(crate) fn partition_dir(dir: &Path, p: u32) -> PathBuf {
    dir.join(format!("p-{p:03}"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl FileLog {
    /// Opens (or creates) the log in `dir`, recovering each partition: a torn tail of the last
    /// batch is truncated and logged; corruption before it marks the partition failed (its reads
    /// and appends return [`Error::Corrupt`]) while the other partitions serve.
    pub fn open(dir: impl Into<PathBuf>, config: FileLogConfig) -> Result<FileLog> {
        let dir = dir.into();
        let problems = config.validate("log.");
        if !problems.is_empty() {
            return Err(Error::Config(problems.join("; ")));
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        if let Err(e) = lock.try_lock() {
            return Err(Error::Config(format!(
                "the log in {} is in use by another process (is `storeline serve` running on \
                 this data directory?): {e}",
                dir.display()
            )));
        }
        let meta_path = dir.join("log.json");
        match std::fs::read(&meta_path) {
            Ok(bytes) => {
                let meta: LogMeta = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::Config(format!(
                        "{} is not a valid log description: {e}",
                        meta_path.display()
                    ))
                })?;
                if meta.partitions != config.partitions {
                    return Err(Error::Config(format!(
                        "the log in {} has {} partitions but the configuration says {}; the \
                         count is fixed when a log is created (changing it would move keys \
                         between partitions)",
                        dir.display(),
                        meta.partitions,
                        config.partitions
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let meta = LogMeta {
                    format: 1,
                    partitions: config.partitions,
                };
                let tmp = meta_path.with_extension("tmp");
                let body = serde_json::to_vec(&meta).unwrap_or_default();
                std::fs::write(&tmp, body).map_err(|e| Error::io(&tmp, e))?;
                File::open(&tmp)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| Error::io(&tmp, e))?;
                std::fs::rename(&tmp, &meta_path).map_err(|e| Error::io(&meta_path, e))?;
                sync_dir(&dir)?;
                if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    sync_dir(parent)?;
                }
            }
            Err(e) => return Err(Error::io(&meta_path, e)),
        }

        // Batches acknowledged through the journal may not be in their segments yet: put them
        // back before the partitions are scanned (also when the journal is now turned off).
        let contents = journal::replay(&dir)?;
        let journal = if config.fsync && config.journal_bytes > 0 {
            Some(Arc::new(Journal::open(
                &dir,
                config.journal_bytes,
                contents.next_seq,
            )?))
        } else {
            let path = dir.join(journal::JOURNAL_FILE);
            match std::fs::remove_file(&path) {
                Ok(()) => sync_dir(&dir)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&path, e)),
            }
            None
        };
        let mut partitions = Vec::new();
        for p in 0..config.partitions {
            partitions.push(Arc::new(recover::open_partition(
                &dir,
                p,
                &config,
                journal.clone(),
            )?));
        }
        // The partition directories' entries must survive a power loss like their contents.
        sync_dir(&dir)?;
        let mut writers = Vec::new();
        for p in &partitions {
            let p = Arc::clone(p);
            let handle = std::thread::Builder::new()
                .name(format!("log-writer-{}", p.id))
                .spawn(move || writer::run(&p))
                .map_err(|e| Error::io(&dir, e))?;
            writers.push(handle);
        }
        let journal_thread = match &journal {
            Some(j) => {
                let j = Arc::clone(j);
                Some(
                    std::thread::Builder::new()
                        .name("log-journal".into())
                        .spawn(move || j.run())
                        .map_err(|e| Error::io(&dir, e))?,
                )
            }
            None => None,
        };
        Ok(FileLog {
            inner: Arc::new(Inner {
                lock: Mutex::new(Some(lock)),
                dir,
                partitions,
                writers: Mutex::new(writers),
                journal,
                journal_thread: Mutex::new(journal_thread),
            }),
        })
    }

    fn partition(&self, p: u32) -> Result<&Arc<Partition>> {
        self.inner
            .partitions
            .get(p as usize)
            .ok_or(Error::NoSuchPartition {
                partition: p,
                partitions: self.inner.partitions.len() as u32,
            })
    }
}

impl EventLog for FileLog {
    fn partitions(&self) -> u32 {
        self.inner.partitions.len() as u32
    }

    async fn append(&self, partition: u32, records: Vec<Record>) -> Result<AppendAck> {
        let part = self.partition(partition)?;
        if let Some(e) = part.failure_error() {
            return Err(e);
        }
        if records.is_empty() {
            return Ok(AppendAck {
                base_offset: part.bounds().end,
                count: 0,
            });
        }
        let bytes = format::encoded_len(&records) as u64;
        let limit = part.config.segment_bytes;
        if bytes > limit {
            return Err(Error::TooLarge {
                bytes: bytes as usize,
                limit: limit as usize,
            });
        }
        let started = Instant::now();
        let (tx, rx) = oneshot::channel();
        {
            let mut q = part.queue.lock();
            if q.closing {
                return Err(Error::Closed);
            }
            q.pending.push(Pending {
                records,
                bytes: bytes - HEADER_LEN as u64,
                reply: tx,
            });
        }
        part.wake.notify_one();
        let ack = rx.await.map_err(|_| Error::Closed)??;
        metrics::histogram!("storeline_log_append_seconds").record(started.elapsed().as_secs_f64());
        Ok(ack)
    }

    async fn read(&self, partition: u32, from: u64, max: usize) -> Result<Vec<StoredRecord>> {
        let part = Arc::clone(self.partition(partition)?);
        tokio::task::spawn_blocking(move || part.note(read_partition(&part, from, max)))
            .await
            .map_err(|e| Error::io("", std::io::Error::other(e)))?
    }

    async fn offset_for_time(&self, partition: u32, timestamp: i64) -> Result<u64> {
        let part = Arc::clone(self.partition(partition)?);
        tokio::task::spawn_blocking(move || {
            if let Some(e) = part.read_refusal() {
                return Err(e);
            }
            let segs: Vec<Arc<Segment>> = part.segments.read().clone();
            let i = segs.partition_point(|s| s.last_ts() < timestamp);
            for s in &segs[i.min(segs.len())..] {
                match s.offset_for_time(timestamp) {
                    Ok(Some(o)) => return Ok(o),
                    Ok(None) => {}
                    Err(e) => return part.note(Err(e)).map(|_| 0),
                }
            }
            Ok(segs.last().map_or(0, |s| s.next_offset()))
        })
        .await
        .map_err(|e| Error::io("", std::io::Error::other(e)))?
    }

    fn bounds(&self, partition: u32) -> Result<Bounds> {
        Ok(self.partition(partition)?.bounds())
    }

    fn watch(&self, partition: u32) -> Result<watch::Receiver<u64>> {
        Ok(self.partition(partition)?.end_tx.subscribe())
    }

    async fn trim(&self, partition: u32, before: u64) -> Result<u64> {
        let part = self.partition(partition)?;
        let removed: Vec<Arc<Segment>> = {
            let mut segs = part.segments.write();
            let keep_from = segs
                .iter()
                .position(|s| {
                    s.next_offset() > before || Arc::ptr_eq(s, segs.last().expect("non-empty"))
                })
                .unwrap_or(segs.len() - 1);
            segs.drain(..keep_from).collect()
        };
        for s in &removed {
            part.sealed_bytes.fetch_sub(s.end_pos(), Ordering::Relaxed);
            std::fs::remove_file(&s.path).map_err(|e| Error::io(&s.path, e))?;
            let _ = std::fs::remove_file(segment::index_path(&s.path));
        }
        if !removed.is_empty() {
            sync_dir(&part.dir)?;
            part.update_bytes_gauge();
        }
        Ok(part.bounds().start)
    }

    fn health(&self, partition: u32) -> Option<String> {
        match self.partition(partition) {
            Ok(p) => p.failure_error().map(|e| e.to_string()),
            Err(e) => Some(e.to_string()),
        }
    }

    async fn close(&self) -> Result<()> {
        for p in &self.inner.partitions {
            p.queue.lock().closing = true;
            p.wake.notify_all();
        }
        let handles: Vec<_> = std::mem::take(&mut *self.inner.writers.lock());
        let journal = self.inner.journal.clone();
        let journal_thread = self.inner.journal_thread.lock().take();
        tokio::task::spawn_blocking(move || {
            for h in handles {
                let _ = h.join();
            }
            // The writers are done: the journal syncs the segments and starts over empty.
            if let (Some(j), Some(h)) = (journal, journal_thread) {
                j.close();
                let _ = h.join();
            }
        })
        .await
        .map_err(|e| Error::io("", std::io::Error::other(e)))?;
        // Everything is durable and the writers are gone: another opener may recover now.
        self.inner.lock.lock().take();
        Ok(())
    }
}

fn read_partition(part: &Partition, from: u64, max: usize) -> Result<Vec<StoredRecord>> {
    if let Some(e) = part.read_refusal() {
        return Err(e);
    }
    let segs: Vec<Arc<Segment>> = part.segments.read().clone();
    let start = segs.first().map_or(0, |s| s.base_offset);
    let end = segs.last().map_or(0, |s| s.next_offset());
    if from < start || from > end {
        return Err(Error::OffsetOutOfRange {
            partition: part.id,
            offset: from,
            start,
            end,
        });
    }
    let mut out = Vec::new();
    let mut i = segs
        .partition_point(|s| s.base_offset <= from)
        .saturating_sub(1);
    let mut next = from;
    while out.len() < max && i < segs.len() && next < end {
        segs[i].read(next, max, &mut out)?;
        next = out.last().map_or(next, |r| r.offset + 1);
        i += 1;
    }
    Ok(out)
}
