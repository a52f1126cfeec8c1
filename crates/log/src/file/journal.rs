//! The shared journal: one fdatasync makes the rounds of every partition durable.
//!
//! ```text
//!  writer p-0: pwrite batch to its segment ─► commit() ──┐
//!  writer p-3: pwrite batch to its segment ─► commit() ──┼─► journal thread: ONE pwrite of all
//!  writer p-5: pwrite batch to its segment ─► commit() ──┘   entries ─► ONE fdatasync ─► wake all
//! ```
//!
//! Without it each partition writer syncs its own segment file, so with 8 partitions and 50
//! requests in flight a sync covers about 9 events, and on this VM every fdatasync costs about
//! 200 µs of CPU. With it, the segments are written but not synced; each round's batch is also
//! appended to `journal.wal`, and the journal thread syncs everything queued by all partitions
//! at once. A writer publishes and acknowledges its round only after that sync.
//!
//! Rounds of 32 KiB and more skip the journal and sync their own segment (which also makes the
//! partition's earlier, journaled batches durable): they already carry many events per sync.
//!
//! The journal is a preallocated file (its size never changes, so fdatasync needs no metadata
//! commit). When the next write would not fit, the thread runs a *checkpoint* instead: it syncs
//! every segment written since the last one (which holds every journaled batch, since a writer
//! writes its segment before it queues the entry), then starts the journal over by writing a new
//! start sequence into its header. Closing the log checkpoints too, so a cleanly closed log has
//! an empty journal.
//!
//! Recovery ([`replay`]) runs before the partitions are scanned: it writes every valid entry
//! back into its segment at its position, syncs those segments and empties the journal. Entries
//! are valid while their magic, CRC and sequence (consecutive from the header's start) hold; a
//! torn entry or a stale one from before the last restart ends the replay. After the replay the
//! segments hold every acknowledged batch, and the usual scan applies: a partition writer waits
//! for each entry's sync before it writes its next batch, so at most the last batch of a
//! partition can be torn.
//!
//! File layout (little endian):
//!
//! ```text
//!  header (16 bytes):  magic "SLJ1" u32 | crc32c of bytes 8..16 u32 | start_seq u64
//!  entry  (40 bytes + batch):  magic "SLJE" u32 | crc32c of bytes 8..40 and the batch u32 |
//!                      seq u64 | partition u32 | len u32 | segment base offset u64 |
//!                      byte position in the segment u64 | the batch, exactly as in the segment
//! ```

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use super::segment::{Segment, segment_path};
use super::{create_zeroed, partition_dir};
use crate::{Error, Result};

/// The journal's file name inside the log directory.
pub const JOURNAL_FILE: &str = "journal.wal";

const FILE_MAGIC: u32 = u32::from_le_bytes(*b"SLJ1");
const ENTRY_MAGIC: u32 = u32::from_le_bytes(*b"SLJE");
const FILE_HEADER: usize = 16;
const ENTRY_HEADER: usize = 40;

/// One journaled batch, read back from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub partition: u32,
    pub segment_base: u64,
    pub position: u64,
    pub batch: Vec<u8>,
}

/// What a read of the journal found: the valid entries, and the sequence the next one gets.
#[derive(Debug, Default)]
pub struct Contents {
    pub entries: Vec<Entry>,
    pub next_seq: u64,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

fn encode_header(start_seq: u64) -> [u8; FILE_HEADER] {
    let mut h = [0u8; FILE_HEADER];
    h[0..4].copy_from_slice(&FILE_MAGIC.to_le_bytes());
    h[8..16].copy_from_slice(&start_seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[8..]);
    h[4..8].copy_from_slice(&crc.to_le_bytes());
    h
}

fn encode_entry(
    out: &mut Vec<u8>,
    seq: u64,
    partition: u32,
    segment_base: u64,
    position: u64,
    batch: &[u8],
) {
    let start = out.len();
    out.extend_from_slice(&ENTRY_MAGIC.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&partition.to_le_bytes());
    out.extend_from_slice(&(batch.len() as u32).to_le_bytes());
    out.extend_from_slice(&segment_base.to_le_bytes());
    out.extend_from_slice(&position.to_le_bytes());
    out.extend_from_slice(batch);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Parses a journal file's bytes (see [`parse_with`]).
pub fn parse(data: &[u8]) -> Contents {
    parse_with(data.len() as u64, |at, buf| {
        let from = usize::try_from(at).unwrap_or(usize::MAX);
        match data.get(from..).and_then(|d| d.get(..buf.len())) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    })
}

/// Reads a journal of `total` bytes through `read_at(position, buf)` (false: not that many bytes
/// there), only as far as its valid entries go: an almost empty 64 MiB journal costs a few small
/// reads. A bad header means the crash hit a reset, which happens only after every journaled
/// batch was synced into its segment: there is nothing to replay. An entry whose length runs
/// past `total` ends the parse before anything is allocated for it (a damaged length field
/// with an intact magic and sequence would otherwise ask for up to 4 GiB).
fn parse_with(total: u64, mut read_at: impl FnMut(u64, &mut [u8]) -> bool) -> Contents {
    let mut h = [0u8; FILE_HEADER];
    if !read_at(0, &mut h)
        || u32_at(&h, 0) != FILE_MAGIC
        || crc32c::crc32c(&h[8..FILE_HEADER]) != u32_at(&h, 4)
    {
        return Contents::default();
    }
    let mut next_seq = u64_at(&h, 8);
    let mut entries = Vec::new();
    let mut at = FILE_HEADER as u64;
    let mut entry = vec![0u8; ENTRY_HEADER];
    loop {
        entry.truncate(ENTRY_HEADER);
        if !read_at(at, &mut entry)
            || u32_at(&entry, 0) != ENTRY_MAGIC
            || u64_at(&entry, 8) != next_seq
        {
            break;
        }
        let len = u32_at(&entry, 20) as usize;
        if at + (ENTRY_HEADER + len) as u64 > total {
            break;
        }
        entry.resize(ENTRY_HEADER + len, 0);
        if !read_at(at + ENTRY_HEADER as u64, &mut entry[ENTRY_HEADER..])
            || crc32c::crc32c(&entry[8..]) != u32_at(&entry, 4)
        {
            break;
        }
        entries.push(Entry {
            seq: next_seq,
            partition: u32_at(&entry, 16),
            segment_base: u64_at(&entry, 24),
            position: u64_at(&entry, 32),
            batch: entry[ENTRY_HEADER..].to_vec(),
        });
        next_seq += 1;
        at += (ENTRY_HEADER + len) as u64;
    }
    Contents { entries, next_seq }
}

/// Reads the journal of the log in `dir` without changing anything (an absent journal is empty).
pub fn read(dir: &Path) -> Result<Contents> {
    let path = dir.join(JOURNAL_FILE);
    match File::open(&path) {
        Ok(f) => {
            let len = f.metadata().map_err(|e| Error::io(&path, e))?.len();
            // A length past the file's end (a torn header) ends the parse, like a bad CRC; a
            // read error is an error (skipping the replay would lose acknowledged batches).
            let mut failed = None;
            let contents = parse_with(len, |at, buf| {
                if at + buf.len() as u64 > len {
                    return false;
                }
                match f.read_exact_at(buf, at) {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            });
            match failed {
                Some(e) => Err(Error::io(&path, e)),
                None => Ok(contents),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Contents::default()),
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// Writes every journaled batch back into its segment and syncs them; returns the journal's
/// contents (the caller starts the journal over at `next_seq`). Entries whose segment file is
/// gone (trimmed after it was sealed and synced) are skipped.
pub(super) fn replay(dir: &Path) -> Result<Contents> {
    let contents = read(dir)?;
    if contents.entries.is_empty() {
        return Ok(contents);
    }
    let started = Instant::now();
    let mut written: Vec<(PathBuf, File)> = Vec::new();
    let mut bytes = 0usize;
    for e in &contents.entries {
        let path = segment_path(&partition_dir(dir, e.partition), e.segment_base);
        let i = match written.iter().position(|(p, _)| *p == path) {
            Some(i) => i,
            None => match OpenOptions::new().write(true).open(&path) {
                Ok(f) => {
                    written.push((path.clone(), f));
                    written.len() - 1
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(Error::io(&path, err)),
            },
        };
        written[i]
            .1
            .write_all_at(&e.batch, e.position)
            .map_err(|err| Error::io(&path, err))?;
        bytes += e.batch.len();
    }
    for (path, f) in &written {
        f.sync_data().map_err(|e| Error::io(path, e))?;
    }
    tracing::info!(
        entries = contents.entries.len(),
        bytes,
        segments = written.len(),
        ms = started.elapsed().as_millis() as u64,
        "replayed the log journal into the segments"
    );
    Ok(contents)
}

struct State {
    /// Entries queued since the thread last took them, already encoded.
    pending: Vec<u8>,
    /// The segments those entries were written to.
    pending_segments: Vec<Arc<Segment>>,
    next_seq: u64,
    /// The round the queued entries belong to; `synced` is the last round made durable.
    open_round: u64,
    synced: u64,
    failed: Option<String>,
    closing: bool,
}

/// The running journal (see the module docs).
pub(super) struct Journal {
    path: PathBuf,
    file: File,
    size: u64,
    state: Mutex<State>,
    /// Wakes the journal thread.
    work: Condvar,
    /// Wakes writers waiting for their round.
    done: Condvar,
}

impl Journal {
    /// Opens the journal after [`replay`]: makes the file `size` bytes (zero-filled if it had
    /// another size or was missing) and starts it over at `next_seq`.
    pub(super) fn open(dir: &Path, size: u64, next_seq: u64) -> Result<Journal> {
        let path = dir.join(JOURNAL_FILE);
        let len = std::fs::metadata(&path).map(|m| m.len()).ok();
        if len != Some(size) {
            create_zeroed(&path, size).map_err(|e| Error::io(&path, e))?;
            super::sync_dir(dir)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let journal = Journal {
            path,
            file,
            size,
            state: Mutex::new(State {
                pending: Vec::with_capacity(1 << 20),
                pending_segments: Vec::new(),
                next_seq,
                open_round: 1,
                synced: 0,
                failed: None,
                closing: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
        };
        journal
            .start_over(next_seq)
            .map_err(|e| Error::io(&journal.path, e))?;
        Ok(journal)
    }

    fn start_over(&self, start_seq: u64) -> std::io::Result<()> {
        self.file.write_all_at(&encode_header(start_seq), 0)?;
        self.file.sync_data()
    }

    /// Queues a batch that `segment` holds at `position` and waits until a sync of the journal
    /// (or a checkpoint) has made it durable. An error means the journal stopped for good.
    pub(super) fn commit(
        &self,
        partition: u32,
        segment: &Arc<Segment>,
        position: u64,
        batch: &[u8],
    ) -> std::result::Result<(), String> {
        let mut s = self.state.lock();
        if let Some(why) = &s.failed {
            return Err(why.clone());
        }
        let seq = s.next_seq;
        s.next_seq += 1;
        encode_entry(
            &mut s.pending,
            seq,
            partition,
            segment.base_offset,
            position,
            batch,
        );
        if !s.pending_segments.iter().any(|x| Arc::ptr_eq(x, segment)) {
            s.pending_segments.push(Arc::clone(segment));
        }
        let ticket = s.open_round;
        self.work.notify_one();
        while s.synced < ticket {
            if let Some(why) = &s.failed {
                return Err(why.clone());
            }
            self.done.wait(&mut s);
        }
        Ok(())
    }

    /// Stops the thread after it has made everything queued durable and checkpointed.
    pub(super) fn close(&self) {
        self.state.lock().closing = true;
        self.work.notify_one();
    }

    /// The journal thread: takes everything queued, writes and syncs it (or checkpoints).
    pub(super) fn run(&self) {
        let mut at = FILE_HEADER as u64;
        let mut dirty: Vec<Arc<Segment>> = Vec::new();
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
        loop {
            let (round, next_seq, segments) = {
                let mut s = self.state.lock();
                while s.pending.is_empty() && !s.closing {
                    self.work.wait(&mut s);
                }
                if s.pending.is_empty() {
                    break;
                }
                buf.clear();
                std::mem::swap(&mut buf, &mut s.pending);
                let round = s.open_round;
                s.open_round += 1;
                metrics::histogram!("storeline_log_journal_round_segments")
                    .record(s.pending_segments.len() as f64);
                (round, s.next_seq, std::mem::take(&mut s.pending_segments))
            };
            for seg in segments {
                if !dirty.iter().any(|x| Arc::ptr_eq(x, &seg)) {
                    dirty.push(seg);
                }
            }
            let result = if at + buf.len() as u64 > self.size {
                // Full: sync the segments instead, which holds this round too, and start over.
                let r = self.checkpoint(&dirty, next_seq);
                dirty.clear();
                at = FILE_HEADER as u64;
                r
            } else {
                let t = Instant::now();
                let r = self
                    .file
                    .write_all_at(&buf, at)
                    .and_then(|()| self.file.sync_data());
                metrics::histogram!("storeline_log_fsync_seconds")
                    .record(t.elapsed().as_secs_f64());
                at += buf.len() as u64;
                r
            };
            let mut s = self.state.lock();
            match result {
                Ok(()) => s.synced = round,
                Err(e) => {
                    // Never retry a failed sync (see `writer`): the journal stops for good, and
                    // so does every partition writer that waits on it.
                    let why = format!("write or fdatasync of {} failed: {e}", self.path.display());
                    tracing::error!(reason = %why, "log journal stopped");
                    s.failed = Some(why);
                }
            }
            self.done.notify_all();
            if s.failed.is_some() {
                return;
            }
        }
        let next_seq = self.state.lock().next_seq;
        if let Err(e) = self.checkpoint(&dirty, next_seq) {
            tracing::error!(error = %e, "final checkpoint of the log journal failed; the next start replays it");
        }
    }

    /// Syncs every segment written since the last checkpoint, then starts the journal over.
    fn checkpoint(&self, dirty: &[Arc<Segment>], next_seq: u64) -> std::io::Result<()> {
        let t = Instant::now();
        for seg in dirty {
            seg.file.sync_data()?;
        }
        self.start_over(next_seq)?;
        metrics::histogram!("storeline_log_journal_checkpoint_seconds")
            .record(t.elapsed().as_secs_f64());
        tracing::debug!(
            segments = dirty.len(),
            ms = t.elapsed().as_millis() as u64,
            "checkpointed the log journal"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_back_until_a_torn_or_stale_one() {
        let mut data = encode_header(7).to_vec();
        encode_entry(&mut data, 7, 2, 100, 4096, b"first batch");
        encode_entry(&mut data, 8, 5, 0, 0, b"second");
        let whole = data.len();
        encode_entry(&mut data, 9, 1, 0, 48, b"third, torn");
        let c = parse(&data);
        assert_eq!(c.entries.len(), 3);
        assert_eq!(c.next_seq, 10);
        assert_eq!(
            c.entries[0],
            Entry {
                seq: 7,
                partition: 2,
                segment_base: 100,
                position: 4096,
                batch: b"first batch".to_vec()
            }
        );
        // A torn last entry (its bytes cut short or changed) ends the replay before it.
        let last = data.len() - 1;
        data[last] ^= 1;
        let c = parse(&data);
        assert_eq!(c.entries.len(), 2);
        assert_eq!(c.next_seq, 9);
        assert_eq!(parse(&data[..whole + 30]).entries.len(), 2);
        // Started over at 9: the old entries 7 and 8 behind the new header are stale.
        data[..FILE_HEADER].copy_from_slice(&encode_header(9));
        let c = parse(&data);
        assert!(c.entries.is_empty());
        assert_eq!(c.next_seq, 9);
        // A torn header: nothing to replay (a reset happens only after the segments synced).
        data[10] ^= 1;
        assert!(parse(&data).entries.is_empty());
    }

    #[test]
    fn a_damaged_length_ends_the_parse_without_asking_for_more_than_the_file() {
        let mut data = encode_header(1).to_vec();
        encode_entry(&mut data, 1, 0, 0, 0, b"kept");
        let second = data.len();
        encode_entry(&mut data, 2, 0, 0, 64, b"its length is damaged");
        // The length field (bytes 20..24 of the entry header) says 4 GiB; magic and seq intact.
        data[second + 20..second + 24].copy_from_slice(&u32::MAX.to_le_bytes());
        let total = data.len() as u64;
        let mut largest = 0;
        let c = parse_with(total, |at, buf| {
            largest = largest.max(buf.len());
            let from = at as usize;
            match data.get(from..from + buf.len()) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    true
                }
                None => false,
            }
        });
        assert_eq!(c.entries.len(), 1);
        assert_eq!(c.next_seq, 2);
        assert!(
            largest as u64 <= total,
            "asked for {largest} bytes of a {total}-byte journal"
        );
    }
}
