//! Recovery on open: each partition's segments are scanned, a torn tail of the last batch is
//! truncated, and corruption before it marks the partition failed (see the module docs of
//! [`super`]).

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use parking_lot::{Condvar, Mutex, RwLock};
use tokio::sync::watch;

use super::journal::Journal;
use super::segment::{self, Scan, Segment, scan, segment_path, valid_header_after};
use super::{
    FileLogConfig, Partition, Queue, STOPPED_MARKER, Spare, create_zeroed, format, list_segments,
    partition_dir, sync_dir,
};
use crate::{Error, Result};

pub(super) fn open_partition(
    dir: &Path,
    p: u32,
    config: &FileLogConfig,
    journal: Option<Arc<Journal>>,
) -> Result<Partition> {
    let pdir = partition_dir(dir, p);
    std::fs::create_dir_all(&pdir).map_err(|e| Error::io(&pdir, e))?;
    // Leftovers of an interrupted segment creation or roll are never part of the log.
    for entry in std::fs::read_dir(&pdir).map_err(|e| Error::io(&pdir, e))? {
        let path = entry.map_err(|e| Error::io(&pdir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".tmp") || name.starts_with(".spare") {
            let _ = std::fs::remove_file(&path);
        }
    }
    let mut files = list_segments(&pdir)?;
    if files.is_empty() {
        let path = segment_path(&pdir, 0);
        create_zeroed(&path, config.segment_bytes).map_err(|e| Error::io(&path, e))?;
        sync_dir(&pdir)?;
        files.push((0, path));
    }

    let mut segments = Vec::with_capacity(files.len());
    let mut failure = None;
    let mut sealed_bytes = 0;
    let mut min_ts = i64::MIN;
    let last = files.len() - 1;
    for (i, (base, path)) in files.iter().enumerate() {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let next_base = files.get(i + 1).map(|f| f.0);
        let (scan_result, bad) = if i < last {
            recover_sealed(&file, path, *base, len, min_ts)?
        } else {
            recover_active(&file, path, *base, len, min_ts, config, p)?
        };
        if let Some(b) = bad {
            failure = Some(b);
        } else if let Some(nb) = next_base
            && scan_result.next_offset != nb
        {
            failure = Some(Error::Corrupt {
                segment: path.clone(),
                position: scan_result.end_pos,
                offset: scan_result.next_offset,
                reason: format!(
                    "segment ends at offset {} but the next one starts at {nb}",
                    scan_result.next_offset
                ),
            });
        }
        min_ts = scan_result.last_ts;
        if i < last {
            sealed_bytes += scan_result.end_pos;
        }
        segments.push(Arc::new(Segment::new(
            *base,
            path.clone(),
            file,
            &scan_result,
        )));
        if failure.is_some() {
            break;
        }
    }
    let marker = pdir.join(STOPPED_MARKER);
    if failure.is_none()
        && let Ok(why) = std::fs::read_to_string(&marker)
    {
        failure = Some(Error::WriterStopped {
            partition: p,
            reason: format!(
                "a previous run stopped writing after a storage error ({}); check the disk, run \
                 `storeline log verify`, then remove {} to accept writes again",
                why.trim(),
                marker.display()
            ),
        });
    }
    if let Some(Error::Corrupt {
        segment,
        position,
        offset,
        reason,
    }) = &failure
    {
        tracing::error!(
            partition = p, segment = %segment.display(), position, offset, reason,
            "corrupt log partition: it will not be served until repaired (run `storeline log verify`)"
        );
    }
    let end = segments.last().map_or(0, |s| s.next_offset());
    let (end_tx, _) = watch::channel(end);
    let bytes_gauge = metrics::gauge!("storeline_log_bytes", "partition" => p.to_string());
    let part = Partition {
        id: p,
        dir: pdir,
        config: config.clone(),
        segments: RwLock::new(segments),
        failure: RwLock::new(failure),
        end_tx,
        queue: Mutex::new(Queue::default()),
        wake: Condvar::new(),
        spare: Arc::new(Mutex::new(Spare::Empty)),
        sealed_bytes: AtomicU64::new(sealed_bytes),
        bytes_gauge,
        journal,
    };
    part.update_bytes_gauge();
    Ok(part)
}

fn read_all(file: &File, path: &Path, from: u64, len: u64) -> Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut data = vec![0u8; (len.saturating_sub(from)) as usize];
    file.read_exact_at(&mut data, from)
        .map_err(|e| Error::io(path, e))?;
    Ok(data)
}

/// A sealed segment: its index file (or a rebuilt one), and a check of its last batches.
fn recover_sealed(
    file: &File,
    path: &Path,
    base: u64,
    len: u64,
    min_ts: i64,
) -> Result<(Scan, Option<Error>)> {
    let mut result = match segment::load_index(path, base, len) {
        Some(index) => {
            let last = *index.last().expect("load_index returns a non-empty index");
            let data = read_all(file, path, last.position, len)?;
            let mut s = scan(&data, 0, last.offset, min_ts);
            s.end_pos += last.position;
            if let Some((p, _)) = &mut s.bad {
                *p += last.position;
            }
            s.index = index;
            s
        }
        None => {
            let data = read_all(file, path, 0, len)?;
            scan(&data, 0, base, min_ts)
        }
    };
    let bad = result.bad.take().map(|(position, why)| Error::Corrupt {
        segment: path.to_owned(),
        position,
        offset: result.next_offset,
        reason: format!("{why:?} in a sealed segment"),
    });
    Ok((result, bad))
}

/// The active segment: scan all of it; truncate a torn tail; refuse corruption.
fn recover_active(
    file: &File,
    path: &Path,
    base: u64,
    len: u64,
    min_ts: i64,
    config: &FileLogConfig,
    p: u32,
) -> Result<(Scan, Option<Error>)> {
    use std::os::unix::fs::FileExt;
    let data = read_all(file, path, 0, len)?;
    let mut result = scan(&data, 0, base, min_ts);
    if let Some((pos, why)) = result.bad.take() {
        let pos_us = pos as usize;
        let search_from = match format::decode_header(&data[pos_us..]) {
            Ok(h) => (pos_us + h.total_len()).min(data.len()),
            Err(_) => pos_us + 1,
        };
        if let Some(at) = valid_header_after(&data, search_from, result.next_offset) {
            let failure = Error::Corrupt {
                segment: path.to_owned(),
                position: pos,
                offset: result.next_offset,
                reason: format!("{why:?}, and a valid batch follows at byte {at}"),
            };
            return Ok((result, Some(failure)));
        }
        let last_nonzero = data.iter().rposition(|&b| b != 0).map_or(pos_us, |i| i + 1);
        let torn = last_nonzero.saturating_sub(pos_us);
        tracing::warn!(
            partition = p, segment = %path.display(), position = pos, bytes = torn,
            reason = ?why, "truncating the torn tail of the log (a write the crash interrupted, never acknowledged)"
        );
        let zeros = vec![0u8; torn];
        file.write_all_at(&zeros, pos)
            .map_err(|e| Error::io(path, e))?;
        file.sync_data().map_err(|e| Error::io(path, e))?;
    }
    if len < config.segment_bytes && result.end_pos < config.segment_bytes {
        // A short active segment (cut by a crash during a roll, or by hand): pad it back to the
        // preallocated size so syncs do not change the file size.
        let zeros = vec![0u8; (config.segment_bytes - len.max(result.end_pos)) as usize];
        file.write_all_at(&zeros, len.max(result.end_pos))
            .map_err(|e| Error::io(path, e))?;
    }
    // What the scan found may still be only in the page cache (a process killed between its
    // write and its fdatasync). Make it durable before serving it: once readers or the dedup
    // index have seen an offset, a power loss must not take it back.
    file.sync_all().map_err(|e| Error::io(path, e))?;
    Ok((result, None))
}
