//! The per-partition writer thread: group commit.
//!
//! ```text
//!  append() ──push──► queue ──┐      round: take everything queued
//!  append() ──push──► queue ──┤  ──►  encode as ONE batch ─► pwrite ─► fdatasync ─► publish ─► ack all
//!  append() ──push──► queue ──┘      (appends arriving meanwhile wait for the next round)
//! ```
//!
//! With the shared journal on (the default, see [`super::journal`]) the sync is the journal's,
//! shared with the other partitions' rounds; without it the writer syncs its own segment.
//!
//! No timer: the time one round spends in fdatasync is the batching window, so a lone append is
//! acknowledged after one sync and a busy partition gets big batches. An fsync error stops the
//! writer for good: after a failed fsync the kernel may have dropped the dirty pages, so a retry
//! could "succeed" without the data (the PostgreSQL fsync lesson, 2018).

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::format::{self, HEADER_LEN};
use super::segment::{Scan, Segment, segment_path};
use super::{Partition, Pending, Spare, create_zeroed, now_ms, sync_dir};
use crate::{AppendAck, Error, Result};

/// Rounds from this size on sync their own segment instead of going through the journal: a big
/// round already carries many events per sync, and writing it twice cost more CPU than the
/// shared sync saved (batches of 1000 events over 8 partitions, ~56 KiB per round).
const JOURNAL_MAX_ROUND: usize = 32 << 10;

pub(super) fn run(p: &Arc<Partition>) {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    loop {
        let mut pending = {
            let mut q = p.queue.lock();
            loop {
                if !q.pending.is_empty() {
                    break std::mem::take(&mut q.pending);
                }
                if q.closing {
                    return;
                }
                p.wake.wait(&mut q);
            }
        };
        while !pending.is_empty() {
            // A round: as many queued appends as fit in one batch (always at least one).
            let mut end = 0;
            let mut bytes = HEADER_LEN as u64;
            while end < pending.len()
                && (end == 0 || bytes + pending[end].bytes <= p.config.max_batch_bytes)
            {
                bytes += pending[end].bytes;
                end += 1;
            }
            let round: Vec<Pending> = pending.drain(..end).collect();
            let round_started = Instant::now();
            let result = match p.failure_error() {
                Some(e) => Err(e),
                None => write_round(p, &round, bytes, &mut buf),
            };
            if round_started.elapsed().as_millis() >= 100 {
                tracing::warn!(
                    partition = p.id,
                    ms = round_started.elapsed().as_millis() as u64,
                    appends = round.len(),
                    "slow group-commit round"
                );
            }
            answer(round, result);
        }
        prepare_spare_if_needed(p);
    }
}

/// Replies to every append of a round: each gets its slice of the batch's offsets.
fn answer(round: Vec<Pending>, result: Result<u64>) {
    match result {
        Ok(mut base) => {
            for r in round {
                let count = r.records.len() as u32;
                let _ = r.reply.send(Ok(AppendAck {
                    base_offset: base,
                    count,
                }));
                base += u64::from(count);
            }
        }
        Err(e) => {
            for r in round {
                let _ = r.reply.send(Err(e.duplicate()));
            }
        }
    }
}

/// Out of space in any form: the disk (ENOSPC), a quota (EDQUOT), a file size limit (EFBIG).
/// These answer "disk full" and clear when space returns; other errors stop the writer.
fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || matches!(
            e.raw_os_error(),
            Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG)
        )
}

fn stop(p: &Partition, reason: String) -> Error {
    tracing::error!(partition = p.id, %reason, "log writer stopped; this partition refuses appends until repaired");
    // Persist the stop: after a failed fsync the page cache may hold bytes the disk never got,
    // and a restart on the same boot would read and serve them. The marker keeps the partition
    // refused across restarts until an operator has checked the disk and removed it.
    let marker = p.dir.join(super::STOPPED_MARKER);
    let _ = std::fs::write(&marker, format!("{reason}\n"))
        .and_then(|()| std::fs::File::open(&marker)?.sync_all());
    let _ = super::sync_dir(&p.dir);
    *p.failure.write() = Some(Error::WriterStopped {
        partition: p.id,
        reason: reason.clone(),
    });
    Error::WriterStopped {
        partition: p.id,
        reason,
    }
}

/// Writes one round as one batch and makes it durable; returns the batch's base offset.
fn write_round(p: &Partition, round: &[Pending], bytes: u64, buf: &mut Vec<u8>) -> Result<u64> {
    let mut active = p.active();
    if active.end_pos() + bytes > p.config.segment_bytes {
        let t = Instant::now();
        active = roll(p, &active)?;
        if t.elapsed().as_millis() >= 50 {
            tracing::warn!(
                partition = p.id,
                ms = t.elapsed().as_millis() as u64,
                "slow segment roll"
            );
        }
    }
    let pos = active.end_pos();
    let base = active.next_offset();
    buf.clear();
    format::encode_iter(
        buf,
        base,
        active.last_ts().max(i64::MIN + 1),
        round.iter().flat_map(|r| r.records.iter()),
    );
    let write_started = Instant::now();
    let written = active.file.write_all_at(buf, pos);
    if write_started.elapsed().as_millis() >= 100 {
        tracing::warn!(
            partition = p.id,
            ms = write_started.elapsed().as_millis() as u64,
            bytes = buf.len(),
            "slow write to the log"
        );
    }
    if let Err(e) = written {
        if is_disk_full(&e) {
            // Nothing was published; the next round writes over these bytes again.
            return Err(Error::DiskFull {
                partition: p.id,
                source: e,
            });
        }
        return Err(stop(
            p,
            format!("write to {} failed: {e}", active.path.display()),
        ));
    }
    if p.config.fsync {
        let t = Instant::now();
        if let Some(journal) = p.journal.as_ref().filter(|_| buf.len() < JOURNAL_MAX_ROUND) {
            // The journal thread syncs this round together with the other partitions' rounds.
            journal
                .commit(p.id, &active, pos, buf)
                .map_err(|why| stop(p, why))?;
        } else {
            if let Err(e) = active.file.sync_data() {
                return Err(stop(
                    p,
                    format!("fdatasync of {} failed: {e}", active.path.display()),
                ));
            }
            metrics::histogram!("storeline_log_fsync_seconds").record(t.elapsed().as_secs_f64());
        }
        let took = t.elapsed();
        if took.as_millis() >= 100 {
            tracing::warn!(
                partition = p.id,
                ms = took.as_millis() as u64,
                bytes = buf.len(),
                "slow fdatasync"
            );
        }
    }
    let header =
        format::decode_header(buf).map_err(|e| stop(p, format!("encoded a bad batch: {e:?}")))?;
    active.publish(pos, &header);
    p.end_tx.send_replace(header.next_offset());
    metrics::histogram!("storeline_log_batch_records").record(f64::from(header.count));
    p.update_bytes_gauge();
    Ok(base)
}

/// Seals the active segment and starts a new one at its next offset.
fn roll(p: &Partition, old: &Arc<Segment>) -> Result<Arc<Segment>> {
    let base = old.next_offset();
    let path = segment_path(&p.dir, base);
    let ready = {
        let mut spare = p.spare.lock();
        match std::mem::replace(&mut *spare, Spare::Empty) {
            Spare::Ready(path) => Some(path),
            Spare::Preparing => {
                *spare = Spare::Preparing;
                None
            }
            Spare::Empty => None,
        }
    };
    let created = match ready {
        Some(spare) => std::fs::rename(&spare, &path),
        None => create_zeroed(&path, p.config.segment_bytes),
    };
    if let Err(e) = created {
        if is_disk_full(&e) {
            return Err(Error::DiskFull {
                partition: p.id,
                source: e,
            });
        }
        return Err(stop(
            p,
            format!("cannot create segment {}: {e}", path.display()),
        ));
    }
    // Seal: cut the zero padding, write the index; a crash in between is handled by recovery
    // (a sealed segment may end in zeros; a missing index is rebuilt).
    let end = old.end_pos();
    if let Err(e) = old.file.set_len(end).and_then(|()| old.file.sync_all()) {
        return Err(stop(p, format!("cannot seal {}: {e}", old.path.display())));
    }
    if let Err(e) = old.write_index() {
        tracing::warn!(segment = %old.path.display(), error = %e, "cannot write segment index; it will be rebuilt on start");
    }
    sync_dir(&p.dir).map_err(|e| stop(p, e.to_string()))?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| stop(p, format!("cannot open {}: {e}", path.display())))?;
    let empty = Scan {
        end_pos: 0,
        next_offset: base,
        last_ts: old.last_ts(),
        index: Vec::new(),
        batches: 0,
        bad: None,
    };
    let seg = Arc::new(Segment::new(base, path, file, &empty));
    p.segments.write().push(Arc::clone(&seg));
    p.sealed_bytes.fetch_add(end, Ordering::Relaxed);
    tracing::debug!(
        partition = p.id,
        base_offset = base,
        "rolled to a new segment"
    );
    Ok(seg)
}

/// Zero-fills the next segment in the background once the active one is half full, so a roll
/// is a rename instead of a pause.
fn prepare_spare_if_needed(p: &Arc<Partition>) {
    let active = p.active();
    if active.end_pos() < p.config.segment_bytes / 2 {
        return;
    }
    let mut spare = p.spare.lock();
    if !matches!(*spare, Spare::Empty) {
        return;
    }
    *spare = Spare::Preparing;
    let path = p.dir.join(format!(".spare-{}", now_ms()));
    let len = p.config.segment_bytes;
    let slot = Arc::clone(&p.spare);
    let _ = std::thread::Builder::new().name(format!("log-spare-{}", p.id)).spawn(move || {
        let result = create_zeroed(&path, len);
        let mut s = slot.lock();
        *s = match result {
            Ok(()) => Spare::Ready(path),
            Err(e) => {
                tracing::warn!(error = %e, "cannot preallocate the next segment; will create it when needed");
                Spare::Empty
            }
        };
    });
}
