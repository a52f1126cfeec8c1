//! One segment file of a partition: its batches, its sparse index, recovery and reads.
//!
//! A partition is a run of segments named by their first offset (`00000000000000001234.log`).
//! The last one is *active*: preallocated and zero-filled to the segment size, so that appending
//! and fdatasync never change the file's size (which would cost an ext4 journal commit per
//! sync). When it fills up it is *sealed*: truncated to its data and given an `.idx` file.
//!
//! The index is sparse: an entry `(offset, position, timestamp)` for the first batch and then for
//! a batch at least every [`INDEX_INTERVAL`] bytes. Timestamps never decrease within a
//! partition, so the one index serves both lookups: offset → position and time → offset.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use parking_lot::RwLock;

use super::format::{self, BadBatch, HEADER_LEN, Header};
use crate::{Error, Result, StoredRecord};

/// Bytes between sparse index entries.
pub const INDEX_INTERVAL: u64 = 4096;
const INDEX_ENTRY_LEN: usize = 24;
/// How much a read fetches at once.
const READ_CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: u64,
    pub position: u64,
    pub timestamp: i64,
}

pub fn segment_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.log"))
}

pub fn index_path(log_path: &Path) -> PathBuf {
    log_path.with_extension("idx")
}

/// A segment file. Its data ends at `end_pos`; offsets `base_offset..next_offset` are in it.
/// The writer advances `end_pos`/`next_offset` only after the bytes are durable, so readers
/// (which read below `end_pos` only) never see data a crash could take away.
#[derive(Debug)]
pub struct Segment {
    pub base_offset: u64,
    pub path: PathBuf,
    pub file: File,
    pub index: RwLock<Vec<IndexEntry>>,
    end_pos: AtomicU64,
    next_offset: AtomicU64,
    last_ts: AtomicI64,
}

/// What a scan of a segment's bytes found.
#[derive(Debug)]
pub struct Scan {
    pub end_pos: u64,
    pub next_offset: u64,
    pub last_ts: i64,
    pub index: Vec<IndexEntry>,
    pub batches: u64,
    /// Where the valid batches stop, if something other than zero padding or the end of the
    /// file follows them.
    pub bad: Option<(u64, BadBatch)>,
}

/// Walks the batches in `data` from `start_pos`, expecting `next_offset` first.
pub fn scan(data: &[u8], start_pos: u64, next_offset: u64, min_ts: i64) -> Scan {
    let mut s = Scan {
        end_pos: start_pos,
        next_offset,
        last_ts: min_ts,
        index: Vec::new(),
        batches: 0,
        bad: None,
    };
    let mut last_indexed: Option<u64> = None;
    loop {
        let pos = s.end_pos as usize;
        if pos >= data.len() {
            break;
        }
        match format::check_batch(&data[pos..]) {
            Ok(h) if h.base_offset != s.next_offset => {
                s.bad = Some((
                    s.end_pos,
                    BadBatch::Invalid("offset does not follow the previous batch"),
                ));
                break;
            }
            Ok(h) if h.first_ts < s.last_ts && s.batches > 0 => {
                s.bad = Some((s.end_pos, BadBatch::Invalid("timestamps go backwards")));
                break;
            }
            Ok(h) => {
                if last_indexed.is_none_or(|p| s.end_pos - p >= INDEX_INTERVAL) {
                    s.index.push(IndexEntry {
                        offset: h.base_offset,
                        position: s.end_pos,
                        timestamp: h.first_ts,
                    });
                    last_indexed = Some(s.end_pos);
                }
                s.end_pos += h.total_len() as u64;
                s.next_offset = h.next_offset();
                s.last_ts = h.last_ts;
                s.batches += 1;
            }
            Err(BadBatch::Zero) if data[pos..].iter().all(|&b| b == 0) => break,
            Err(e) => {
                s.bad = Some((s.end_pos, e));
                break;
            }
        }
    }
    s
}

/// Whether a valid batch header (one that continues the log) appears anywhere in `data` after
/// `from`: if so, the bad bytes before it are corruption in the middle of the log, not a torn
/// tail of the last write.
pub fn valid_header_after(data: &[u8], from: usize, min_offset: u64) -> Option<usize> {
    let magic = format::MAGIC.to_le_bytes();
    let mut at = from;
    while at + HEADER_LEN <= data.len() {
        if data[at..at + 4] == magic
            && let Ok(h) = format::decode_header(&data[at..])
            && h.base_offset >= min_offset
        {
            return Some(at);
        }
        at += 1;
    }
    None
}

impl Segment {
    pub fn new(base_offset: u64, path: PathBuf, file: File, scan: &Scan) -> Self {
        Segment {
            base_offset,
            path,
            file,
            index: RwLock::new(scan.index.clone()),
            end_pos: AtomicU64::new(scan.end_pos),
            next_offset: AtomicU64::new(scan.next_offset),
            last_ts: AtomicI64::new(scan.last_ts),
        }
    }

    pub fn end_pos(&self) -> u64 {
        self.end_pos.load(Ordering::Acquire)
    }

    pub fn next_offset(&self) -> u64 {
        self.next_offset.load(Ordering::Acquire)
    }

    pub fn last_ts(&self) -> i64 {
        self.last_ts.load(Ordering::Acquire)
    }

    /// Publishes a durable batch: called by the writer after fdatasync.
    pub fn publish(&self, batch_pos: u64, header: &Header) {
        {
            let mut index = self.index.write();
            if index
                .last()
                .is_none_or(|e| batch_pos - e.position >= INDEX_INTERVAL)
            {
                index.push(IndexEntry {
                    offset: header.base_offset,
                    position: batch_pos,
                    timestamp: header.first_ts,
                });
            }
        }
        self.last_ts.store(header.last_ts, Ordering::Release);
        self.next_offset
            .store(header.next_offset(), Ordering::Release);
        self.end_pos
            .store(batch_pos + header.total_len() as u64, Ordering::Release);
    }

    fn corrupt(&self, position: u64, offset: u64, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            segment: self.path.clone(),
            position,
            offset,
            reason: reason.into(),
        }
    }

    /// The index entry to start a scan for `offset` from.
    fn entry_for_offset(&self, offset: u64) -> IndexEntry {
        let index = self.index.read();
        let i = index.partition_point(|e| e.offset <= offset);
        index
            .get(i.saturating_sub(1))
            .copied()
            .unwrap_or(IndexEntry {
                offset: self.base_offset,
                position: 0,
                timestamp: i64::MIN,
            })
    }

    /// The index entry to start a scan for the first record at or after `ts` from.
    fn entry_for_time(&self, ts: i64) -> IndexEntry {
        let index = self.index.read();
        let i = index.partition_point(|e| e.timestamp < ts);
        index
            .get(i.saturating_sub(1))
            .copied()
            .unwrap_or(IndexEntry {
                offset: self.base_offset,
                position: 0,
                timestamp: i64::MIN,
            })
    }

    /// Visits the checked batches from `start`, in order, until `visit` returns false or the
    /// durable end is reached.
    fn for_each_batch(
        &self,
        start: IndexEntry,
        mut visit: impl FnMut(&Header, &Bytes) -> Result<bool>,
    ) -> Result<()> {
        let end_pos = self.end_pos();
        let mut pos = start.position;
        let mut expect = start.offset;
        let mut chunk = Bytes::new();
        let mut chunk_pos = pos;
        while pos < end_pos {
            let rel = (pos - chunk_pos) as usize;
            let have = chunk.len().saturating_sub(rel);
            let need = if have >= HEADER_LEN {
                match format::decode_header(&chunk[rel..]) {
                    Ok(h) => h.total_len(),
                    Err(e) => return Err(self.corrupt(pos, expect, format!("{e:?}"))),
                }
            } else {
                HEADER_LEN
            };
            if have < need {
                let len = need.max(READ_CHUNK).min((end_pos - pos) as usize).max(need);
                let mut buf = BytesMut::zeroed(len);
                self.file
                    .read_exact_at(&mut buf, pos)
                    .map_err(|e| self.corrupt(pos, expect, format!("cannot read: {e}")))?;
                chunk = buf.freeze();
                chunk_pos = pos;
                continue;
            }
            let batch = chunk.slice(rel..rel + need);
            let header = format::check_batch(&batch)
                .map_err(|e| self.corrupt(pos, expect, format!("{e:?}")))?;
            if header.base_offset != expect {
                return Err(self.corrupt(
                    pos,
                    expect,
                    format!("batch starts at offset {} instead", header.base_offset),
                ));
            }
            if !visit(&header, &batch)? {
                return Ok(());
            }
            pos += need as u64;
            expect = header.next_offset();
        }
        Ok(())
    }

    /// Reads records from offset `from` (which must be in this segment) into `out`, up to `max`.
    pub fn read(&self, from: u64, max: usize, out: &mut Vec<StoredRecord>) -> Result<()> {
        let start = self.entry_for_offset(from);
        self.for_each_batch(start, |header, batch| {
            if header.next_offset() <= from {
                return Ok(true);
            }
            format::decode_records(batch, header, from, max, out).map_err(|e| Error::Corrupt {
                segment: self.path.clone(),
                position: 0,
                offset: header.base_offset,
                reason: format!("{e:?}"),
            })?;
            Ok(out.len() < max)
        })
    }

    /// The first offset in this segment whose timestamp is `>= ts`, if any.
    pub fn offset_for_time(&self, ts: i64) -> Result<Option<u64>> {
        if self.last_ts() < ts || self.next_offset() == self.base_offset {
            return Ok(None);
        }
        let mut found = None;
        self.for_each_batch(self.entry_for_time(ts), |header, batch| {
            if header.last_ts < ts {
                return Ok(true);
            }
            let stamps = format::record_timestamps(batch, header);
            let i = stamps.partition_point(|&t| t < ts);
            found = Some(header.base_offset + i as u64);
            Ok(false)
        })?;
        Ok(found)
    }

    /// Writes the index file of a sealed segment and makes it durable.
    pub fn write_index(&self) -> Result<()> {
        let path = index_path(&self.path);
        let index = self.index.read();
        let mut buf = Vec::with_capacity(index.len() * INDEX_ENTRY_LEN);
        for e in index.iter() {
            buf.extend_from_slice(&e.offset.to_le_bytes());
            buf.extend_from_slice(&e.position.to_le_bytes());
            buf.extend_from_slice(&e.timestamp.to_le_bytes());
        }
        let tmp = path.with_extension("idx.tmp");
        std::fs::write(&tmp, &buf).map_err(|e| Error::io(&tmp, e))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }
}

/// Loads a sealed segment's index file, if it exists and is consistent with a file of `len`
/// bytes starting at `base_offset`.
pub fn load_index(log_path: &Path, base_offset: u64, len: u64) -> Option<Vec<IndexEntry>> {
    let buf = std::fs::read(index_path(log_path)).ok()?;
    if buf.len() % INDEX_ENTRY_LEN != 0 || buf.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(buf.len() / INDEX_ENTRY_LEN);
    for c in buf.chunks_exact(INDEX_ENTRY_LEN) {
        let e = IndexEntry {
            offset: u64::from_le_bytes(c[0..8].try_into().ok()?),
            position: u64::from_le_bytes(c[8..16].try_into().ok()?),
            timestamp: i64::from_le_bytes(c[16..24].try_into().ok()?),
        };
        if e.position >= len
            || out
                .last()
                .is_some_and(|p: &IndexEntry| p.offset >= e.offset)
        {
            return None;
        }
        out.push(e);
    }
    (out[0].position == 0 && out[0].offset == base_offset).then_some(out)
}
