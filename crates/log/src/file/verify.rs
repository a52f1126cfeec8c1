//! `storeline log verify`: reads every segment of every partition and checks every CRC, the
//! offsets' continuity and the timestamps' order, without changing anything. Batches still in the
//! shared journal (after a crash; the next start writes them back) are read from there.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::segment::{scan, valid_header_after};
use super::{list_segments, partition_dir};
use crate::{Error, Result};

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub segment: PathBuf,
    pub position: u64,
    pub offset: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    pub partition: u32,
    pub segments: usize,
    pub batches: u64,
    pub records: u64,
    pub bytes: u64,
    pub start_offset: u64,
    pub end_offset: u64,
    /// Bytes of an unfinished last batch (a crash's torn write: the next start removes them).
    pub torn_tail_bytes: u64,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub dir: PathBuf,
    /// Batches found in the journal and not yet written back to their segments (a crash before a
    /// checkpoint; the next start writes them back). The checks above include them.
    pub journal_batches: usize,
    pub partitions: Vec<PartitionReport>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.partitions.iter().all(|p| p.problems.is_empty())
    }
}

/// Verifies the log in `dir`; `progress` is called after each segment with (done, total).
pub fn verify_dir(dir: &Path, mut progress: impl FnMut(u64, u64)) -> Result<VerifyReport> {
    let meta =
        std::fs::read(dir.join("log.json")).map_err(|e| Error::io(dir.join("log.json"), e))?;
    let partitions = serde_json::from_slice::<serde_json::Value>(&meta)
        .ok()
        .and_then(|v| v.get("partitions").and_then(serde_json::Value::as_u64))
        .ok_or_else(|| {
            Error::Config(format!("{}/log.json has no partition count", dir.display()))
        })? as u32;
    let journal = super::journal::read(dir)?;
    let mut lists = Vec::new();
    for p in 0..partitions {
        lists.push(list_segments(&partition_dir(dir, p))?);
    }
    let total: u64 = lists.iter().map(|l| l.len() as u64).sum();
    let mut done = 0;
    let mut reports = Vec::new();
    for (p, files) in lists.into_iter().enumerate() {
        let mut r = PartitionReport {
            partition: p as u32,
            segments: files.len(),
            batches: 0,
            records: 0,
            bytes: 0,
            start_offset: files.first().map_or(0, |f| f.0),
            end_offset: files.first().map_or(0, |f| f.0),
            torn_tail_bytes: 0,
            problems: Vec::new(),
        };
        let mut min_ts = i64::MIN;
        let last = files.len().saturating_sub(1);
        for (i, (base, path)) in files.iter().enumerate() {
            let mut data = read_file(path)?;
            for e in journal
                .entries
                .iter()
                .filter(|e| e.partition == p as u32 && e.segment_base == *base)
            {
                let (at, end) = (e.position as usize, e.position as usize + e.batch.len());
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[at..end].copy_from_slice(&e.batch);
            }
            if *base != r.end_offset && r.problems.is_empty() {
                r.problems.push(Problem {
                    segment: path.clone(),
                    position: 0,
                    offset: r.end_offset,
                    reason: format!(
                        "offsets jump from {} to {base} between segments",
                        r.end_offset
                    ),
                });
            }
            let s = scan(&data, 0, *base, min_ts);
            r.batches += s.batches;
            r.records += s.next_offset - base;
            r.bytes += s.end_pos;
            r.end_offset = s.next_offset;
            min_ts = s.last_ts;
            if let Some((pos, why)) = s.bad {
                let p = pos as usize;
                let search_from = match super::format::decode_header(&data[p..]) {
                    Ok(h) => (p + h.total_len()).min(data.len()),
                    Err(_) => p + 1,
                };
                let followed = valid_header_after(&data, search_from, s.next_offset).is_some();
                if i == last && !followed {
                    let nonzero_end = data.iter().rposition(|&b| b != 0).map_or(p, |x| x + 1);
                    r.torn_tail_bytes = nonzero_end.saturating_sub(p) as u64;
                } else {
                    r.problems.push(Problem {
                        segment: path.clone(),
                        position: pos,
                        offset: s.next_offset,
                        reason: format!("{why:?}"),
                    });
                }
            }
            done += 1;
            progress(done, total);
        }
        reports.push(r);
    }
    Ok(VerifyReport {
        dir: dir.to_owned(),
        journal_batches: journal.entries.len(),
        partitions: reports,
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut data = vec![0u8; len as usize];
    f.read_exact_at(&mut data, 0)
        .map_err(|e| Error::io(path, e))?;
    Ok(data)
}
