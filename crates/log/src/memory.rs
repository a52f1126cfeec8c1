//! An in-memory [`EventLog`]: the reference implementation of the contract, for tests and for
//! `[log] backend = "memory"`. Nothing survives the process; "durable" means "in the vector".

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::{AppendAck, Bounds, Error, EventLog, Record, Result, StoredRecord};

struct Part {
    start: u64,
    records: Vec<StoredRecord>,
    end_tx: watch::Sender<u64>,
}

#[derive(Clone)]
pub struct MemoryLog {
    parts: Arc<Vec<Mutex<Part>>>,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for MemoryLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLog")
            .field("partitions", &self.parts.len())
            .finish()
    }
}

impl MemoryLog {
    pub fn new(partitions: u32) -> Self {
        let parts = (0..partitions.max(1))
            .map(|_| {
                Mutex::new(Part {
                    start: 0,
                    records: Vec::new(),
                    end_tx: watch::channel(0).0,
                })
            })
            .collect();
        MemoryLog {
            parts: Arc::new(parts),
            closed: Arc::default(),
        }
    }

    fn part(&self, p: u32) -> Result<&Mutex<Part>> {
        self.parts.get(p as usize).ok_or(Error::NoSuchPartition {
            partition: p,
            partitions: self.parts.len() as u32,
        })
    }
}

impl Part {
    fn end(&self) -> u64 {
        self.start + self.records.len() as u64
    }
}

impl EventLog for MemoryLog {
    fn partitions(&self) -> u32 {
        self.parts.len() as u32
    }

    async fn append(&self, partition: u32, records: Vec<Record>) -> Result<AppendAck> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let mut part = self.part(partition)?.lock();
        let base = part.end();
        let mut ts = part.records.last().map_or(i64::MIN, |r| r.timestamp);
        let count = records.len() as u32;
        for (i, r) in records.into_iter().enumerate() {
            ts = ts.max(r.timestamp);
            part.records.push(StoredRecord {
                offset: base + i as u64,
                timestamp: ts,
                key: r.key,
                value: r.value,
            });
        }
        let end = part.end();
        part.end_tx.send_replace(end);
        Ok(AppendAck {
            base_offset: base,
            count,
        })
    }

    async fn read(&self, partition: u32, from: u64, max: usize) -> Result<Vec<StoredRecord>> {
        let part = self.part(partition)?.lock();
        if from < part.start || from > part.end() {
            return Err(Error::OffsetOutOfRange {
                partition,
                offset: from,
                start: part.start,
                end: part.end(),
            });
        }
        let i = (from - part.start) as usize;
        Ok(part.records[i..].iter().take(max).cloned().collect())
    }

    async fn offset_for_time(&self, partition: u32, timestamp: i64) -> Result<u64> {
        let part = self.part(partition)?.lock();
        let i = part.records.partition_point(|r| r.timestamp < timestamp);
        Ok(part.start + i as u64)
    }

    fn bounds(&self, partition: u32) -> Result<Bounds> {
        let part = self.part(partition)?.lock();
        Ok(Bounds {
            start: part.start,
            end: part.end(),
        })
    }

    fn watch(&self, partition: u32) -> Result<watch::Receiver<u64>> {
        Ok(self.part(partition)?.lock().end_tx.subscribe())
    }

    async fn trim(&self, partition: u32, before: u64) -> Result<u64> {
        let mut part = self.part(partition)?.lock();
        let drop = before
            .saturating_sub(part.start)
            .min(part.records.len() as u64) as usize;
        part.records.drain(..drop);
        part.start += drop as u64;
        Ok(part.start)
    }

    fn health(&self, partition: u32) -> Option<String> {
        self.part(partition).err().map(|e| e.to_string())
    }

    async fn close(&self) -> Result<()> {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }
}
