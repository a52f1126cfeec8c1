//! The Kafka backend: one Kafka topic holds the log, one Kafka partition per log partition, and
//! Storeline's offsets are the Kafka offsets.
//!
//! How it keeps the [`EventLog`] contract:
//!
//! - **Durable acks.** The producer is idempotent with `acks = all`: an append returns once every
//!   record is acknowledged by all in-sync replicas. Durability across broker failures needs the
//!   topic's `replication.factor` ≥ 3, `min.insync.replicas` ≥ 2 and
//!   `unclean.leader.election.enable = false`; the README says so.
//! - **Dense offsets, one append contiguous.** Appends to one partition are serialized in this
//!   process, and each append's records are queued together, so librdkafka sends them as one
//!   record batch, which a broker writes whole. An append larger than the producer's
//!   `batch.size` or the broker's `message.max.bytes` may be split; two processes appending to one
//!   partition at once may then interleave. An append whose offsets come back not consecutive is
//!   counted in `storeline_log_kafka_split_appends_total` and logged.
//!   The topic must not be compacted and the producer not transactional (either leaves gaps).
//! - **Visibility.** Consumers only see records below the high watermark, which are on every
//!   in-sync replica.
//! - **Time.** Record timestamps are the caller's (`CreateTime`), raised in this process to the
//!   partition's last one; another process appending to the same partition keeps its own clock.
//!   [`offset_for_time`](EventLog::offset_for_time) asks the broker's time index, checks the
//!   answer by reading, and searches by reading if the broker's answer does not hold.
//! - **Tail.** `end` moves at once for this process's appends; others' appends are seen when
//!   the watermarks are read again, every `refresh`.
//! - **Trim.** Retention is the topic's (`retention.ms`, `retention.bytes`); `trim` drops
//!   nothing and reports the oldest offset the broker still has.
//! - **Failure.** A fatal producer error stops appends to every partition
//!   ([`Error::WriterStopped`]). Brokers that do not answer give [`Error::Unavailable`]: an
//!   append that timed out may still have been written.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;
use tokio::sync::watch;

use crate::{AppendAck, Bounds, Error, EventLog, Record, Result, StoredRecord};

/// Idle readers kept per partition (each is a librdkafka consumer with its own threads).
const IDLE_READERS: usize = 2;

/// Where the log lives and how to reach it.
#[derive(Debug, Clone)]
pub struct KafkaLogConfig {
    /// `host:port,…`
    pub brokers: String,
    pub topic: String,
    /// Used when the topic is created; an existing topic keeps its own count.
    pub partitions: u32,
    /// Used when the topic is created.
    pub replication_factor: i32,
    /// librdkafka settings for every client this log makes, applied last.
    pub properties: BTreeMap<String, String>,
    /// How long an append waits for its acknowledgement, and a read or a lookup for an answer.
    pub timeout: Duration,
    /// How often the partitions' ends are read again, to see other processes' appends.
    pub refresh: Duration,
    /// The topic's `retention.ms` when the log creates it (`None`: kept forever).
    pub retention: Option<Duration>,
}

impl Default for KafkaLogConfig {
    fn default() -> Self {
        KafkaLogConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "storeline".into(),
            partitions: 8,
            replication_factor: 3,
            properties: BTreeMap::new(),
            timeout: Duration::from_secs(10),
            refresh: Duration::from_millis(100),
            retention: None,
        }
    }
}

/// The log on a Kafka topic. Cheap to share by reference; close it before dropping.
pub struct KafkaLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog")
            .field("topic", &self.inner.config.topic)
            .field("partitions", &self.inner.parts.len())
            .finish()
    }
}

struct Inner {
    config: KafkaLogConfig,
    /// The settings readers are made from.
    reader_config: ClientConfig,
    producer: FutureProducer,
    /// For metadata, watermarks and time lookups (never assigned a partition).
    meta: Arc<BaseConsumer>,
    parts: Vec<Part>,
    closed: AtomicBool,
    /// Set when the producer failed fatally: no append can be made durable any more.
    stopped: Mutex<Option<String>>,
    /// Wakes the refresher early (on close).
    stop: (Mutex<bool>, Condvar),
}

struct Part {
    /// Serializes this process's appends to the partition; holds the last timestamp given, once
    /// known.
    appends: tokio::sync::Mutex<Option<i64>>,
    end: watch::Sender<u64>,
    start: AtomicU64,
    readers: Mutex<Vec<Reader>>,
    /// Set while the brokers do not answer for this partition.
    unreachable: Mutex<Option<String>>,
}

/// A consumer assigned to one partition, positioned at `next`.
struct Reader {
    consumer: BaseConsumer,
    next: u64,
}

fn unavailable(partition: u32, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable {
        partition,
        reason: format!("{what}: {e}"),
    }
}

impl KafkaLog {
    /// Connects, creates the topic if it is missing (through the admin API) and reads each
    /// partition's bounds.
    pub async fn open(config: KafkaLogConfig) -> Result<KafkaLog> {
        if config.topic.is_empty() {
            return Err(Error::Config("log.kafka.topic must not be empty".into()));
        }
        if config.partitions == 0 {
            return Err(Error::Config(
                "log.kafka.partitions must be at least 1".into(),
            ));
        }
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", &config.brokers)
            .set("client.id", "storeline-log");
        let mut reader_config = base.clone();
        reader_config
            .set("group.id", "storeline-log")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "error")
            // A reader prefetches at most this much (the default is 64 MiB per consumer).
            .set("queued.max.messages.kbytes", "8192")
            .set("fetch.wait.max.ms", "50");
        let timeout_ms = config.timeout.as_millis().clamp(1, i32::MAX as u128);
        let mut producer_config = base.clone();
        producer_config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", timeout_ms.to_string())
            .set("linger.ms", "1");
        let mut admin_config = base;
        for (k, v) in &config.properties {
            reader_config.set(k, v);
            producer_config.set(k, v);
            admin_config.set(k, v);
        }
        let settings = |what: &str, e: KafkaError| {
            Error::Config(format!("log.kafka: the {what} settings are refused: {e}"))
        };
        let meta: BaseConsumer = reader_config
            .create()
            .map_err(|e| settings("consumer", e))?;
        let producer: FutureProducer = producer_config
            .create()
            .map_err(|e| settings("producer", e))?;
        let admin: AdminClient<DefaultClientContext> =
            admin_config.create().map_err(|e| settings("admin", e))?;

        let meta = Arc::new(meta);
        let count = match topic_partitions(&meta, &config).await? {
            Some(n) => n,
            None => {
                create_topic(&admin, &config).await?;
                wait_for_topic(&meta, &config).await?
            }
        };
        if count != config.partitions {
            tracing::warn!(
                topic = %config.topic,
                partitions = count,
                configured = config.partitions,
                "the Kafka topic's partition count differs from log.kafka.partitions, which only applies when the topic is created; using the topic's"
            );
        }
        let mut parts = Vec::with_capacity(count as usize);
        for p in 0..count {
            let (low, high) = watermarks(&meta, &config, p)?;
            parts.push(Part {
                appends: tokio::sync::Mutex::new(None),
                end: watch::channel(high).0,
                start: AtomicU64::new(low),
                readers: Mutex::new(Vec::new()),
                unreachable: Mutex::new(None),
            });
        }
        let inner = Arc::new(Inner {
            config,
            reader_config,
            producer,
            meta,
            parts,
            closed: AtomicBool::new(false),
            stopped: Mutex::new(None),
            stop: (Mutex::new(false), Condvar::new()),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("kafka-log-ends".into())
            .spawn(move || refresh_ends(weak))
            .map_err(|e| Error::Config(format!("cannot start the log's refresh thread: {e}")))?;
        Ok(KafkaLog { inner })
    }

    /// The topic this log is on.
    pub fn topic(&self) -> &str {
        &self.inner.config.topic
    }

    /// The bounds as the brokers have them now (also updating the cached ones).
    async fn fresh_bounds(&self, p: u32) -> Result<Bounds> {
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let (low, high) = watermarks(&inner.meta, &inner.config, p)?;
            Ok(inner.observe(p, low, high))
        })
        .await
    }

    /// The timestamp of the record at `offset`.
    async fn timestamp_at(&self, p: u32, offset: u64) -> Result<i64> {
        let r = self.read(p, offset, 1).await?;
        r.first()
            .map(|r| r.timestamp)
            .ok_or_else(|| unavailable(p, "reading a timestamp", format!("no record at {offset}")))
    }
}

impl Inner {
    fn part(&self, p: u32) -> Result<&Part> {
        self.parts.get(p as usize).ok_or(Error::NoSuchPartition {
            partition: p,
            partitions: self.parts.len() as u32,
        })
    }

    /// Takes in watermarks read from the brokers; returns the bounds now cached.
    fn observe(&self, p: u32, low: u64, high: u64) -> Bounds {
        let part = &self.parts[p as usize];
        part.start.fetch_max(low, Ordering::AcqRel);
        part.end.send_if_modified(|end| {
            let moved = high > *end;
            *end = (*end).max(high);
            moved
        });
        Bounds {
            start: part.start.load(Ordering::Acquire),
            end: *part.end.borrow(),
        }
    }

    fn new_reader(&self, p: u32, from: u64) -> Result<Reader> {
        let consumer: BaseConsumer = self
            .reader_config
            .create()
            .map_err(|e| unavailable(p, "creating a reader", e))?;
        let reader = Reader {
            consumer,
            next: u64::MAX,
        };
        self.position(p, reader, from)
    }

    /// Points `reader` at `from` (a new assignment drops what it had prefetched).
    fn position(&self, p: u32, mut reader: Reader, from: u64) -> Result<Reader> {
        if reader.next != from {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&self.config.topic, p as i32, Offset::Offset(from as i64))
                .map_err(|e| unavailable(p, "positioning a reader", e))?;
            reader
                .consumer
                .assign(&tpl)
                .map_err(|e| unavailable(p, "positioning a reader", e))?;
            reader.next = from;
        }
        Ok(reader)
    }

    /// Reads `[from, until)` (at least one record, `from < until`), blocking.
    fn read_blocking(&self, p: u32, from: u64, until: u64) -> Result<Vec<StoredRecord>> {
        let pooled = {
            let mut idle = self.parts[p as usize].readers.lock();
            match idle.iter().position(|r| r.next == from) {
                Some(i) => Some(idle.swap_remove(i)),
                None => idle.pop(),
            }
        };
        let mut reader = match pooled {
            Some(r) => self.position(p, r, from)?,
            None => self.new_reader(p, from)?,
        };
        let deadline = Instant::now() + self.config.timeout;
        let mut out = Vec::with_capacity((until - from).min(4096) as usize);
        let mut last_error = None;
        while reader.next < until {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // Once something is read, only take what is already fetched.
            let wait = if out.is_empty() {
                left.min(Duration::from_millis(200))
            } else {
                Duration::ZERO
            };
            match reader.consumer.poll(wait) {
                None if out.is_empty() => continue,
                None => break,
                Some(Ok(m)) => {
                    let offset = m.offset().max(0) as u64;
                    if offset < reader.next {
                        continue;
                    }
                    if offset > reader.next {
                        // Offsets are dense unless the topic is compacted or written to in
                        // transactions; neither may happen to the log's topic.
                        return Err(Error::Corrupt {
                            segment: format!("kafka:{}/{p}", self.config.topic).into(),
                            position: 0,
                            offset: reader.next,
                            reason: format!(
                                "the broker skipped from offset {} to {offset}: is the topic \
                                 compacted, or written to by a transactional producer?",
                                reader.next
                            ),
                        });
                    }
                    out.push(StoredRecord {
                        offset,
                        timestamp: m.timestamp().to_millis().unwrap_or(0),
                        key: Bytes::copy_from_slice(m.key().unwrap_or_default()),
                        value: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                    });
                    reader.next = offset + 1;
                }
                Some(Err(e)) => {
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::OffsetOutOfRange) {
                        // Retention removed what was asked for while it was being read.
                        let (low, high) = watermarks(&self.meta, &self.config, p)?;
                        let b = self.observe(p, low, high);
                        return Err(Error::OffsetOutOfRange {
                            partition: p,
                            offset: reader.next,
                            start: b.start,
                            end: b.end,
                        });
                    }
                    last_error = Some(e);
                }
            }
        }
        if out.is_empty() {
            let why = last_error.map_or_else(
                || format!("no record within {:?}", self.config.timeout),
                |e| e.to_string(),
            );
            return Err(unavailable(p, &format!("reading offset {from}"), why));
        }
        let mut idle = self.parts[p as usize].readers.lock();
        if idle.len() < IDLE_READERS {
            idle.push(reader);
        }
        Ok(out)
    }
}

impl EventLog for KafkaLog {
    fn partitions(&self) -> u32 {
        self.inner.parts.len() as u32
    }

    async fn append(&self, partition: u32, records: Vec<Record>) -> Result<AppendAck> {
        let part = self.inner.part(partition)?;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let mut last = part.appends.lock().await;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if let Some(reason) = self.inner.stopped.lock().clone() {
            return Err(Error::WriterStopped { partition, reason });
        }
        if records.is_empty() {
            return Ok(AppendAck {
                base_offset: *part.end.borrow(),
                count: 0,
            });
        }
        let mut clock = match *last {
            Some(t) => t,
            None => {
                let b = self.fresh_bounds(partition).await?;
                if b.end > b.start {
                    self.timestamp_at(partition, b.end - 1).await?
                } else {
                    i64::MIN
                }
            }
        };
        let topic = self.inner.config.topic.as_str();
        let mut pending = Vec::with_capacity(records.len());
        for r in &records {
            clock = clock.max(r.timestamp);
            let mut record = FutureRecord::to(topic)
                .partition(partition as i32)
                .key(&r.key[..])
                .payload(&r.value[..])
                .timestamp(clock);
            loop {
                match self.inner.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The records queued before this one stay first in the partition's queue.
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => {
                        // Those already queued may be written: this append is in doubt.
                        return Err(unavailable(partition, "queueing an append", e));
                    }
                }
            }
        }
        let mut offsets = Vec::with_capacity(pending.len());
        let mut failed = None;
        for delivery in pending {
            match delivery.await {
                Ok(Ok(d)) => offsets.push(d.offset.max(0) as u64),
                Ok(Err((e, _))) => failed = Some(e.to_string()),
                Err(_) => failed = Some("the producer was dropped".into()),
            }
        }
        if let Some(e) = failed {
            if let Some((code, why)) = self.inner.producer.client().fatal_error() {
                let reason = format!("the Kafka producer failed ({code:?}: {why})");
                *self.inner.stopped.lock() = Some(reason.clone());
                return Err(Error::WriterStopped { partition, reason });
            }
            let what = if offsets.is_empty() {
                "appending (the records may still be written)"
            } else {
                "appending (some of the records were written)"
            };
            return Err(unavailable(partition, what, e));
        }
        *last = Some(clock);
        let base = offsets[0];
        let count = offsets.len() as u32;
        if offsets
            .iter()
            .enumerate()
            .any(|(i, o)| *o != base + i as u64)
        {
            metrics::counter!("storeline_log_kafka_split_appends_total").increment(1);
            tracing::warn!(
                partition,
                ?offsets,
                "an append's records are not consecutive in Kafka (split into several batches, with another writer's in between)"
            );
        }
        let end = offsets.iter().max().copied().unwrap_or(base) + 1;
        self.inner
            .observe(partition, part.start.load(Ordering::Acquire), end);
        Ok(AppendAck {
            base_offset: base,
            count,
        })
    }

    async fn read(&self, partition: u32, from: u64, max: usize) -> Result<Vec<StoredRecord>> {
        self.inner.part(partition)?;
        let mut b = self.bounds(partition)?;
        if from > b.end || from < b.start {
            b = self.fresh_bounds(partition).await?;
        }
        if from > b.end || from < b.start {
            return Err(Error::OffsetOutOfRange {
                partition,
                offset: from,
                start: b.start,
                end: b.end,
            });
        }
        if from == b.end || max == 0 {
            return Ok(Vec::new());
        }
        let until = b.end.min(from.saturating_add(max as u64));
        let inner = Arc::clone(&self.inner);
        blocking(move || inner.read_blocking(partition, from, until)).await
    }

    async fn offset_for_time(&self, partition: u32, timestamp: i64) -> Result<u64> {
        self.inner.part(partition)?;
        let b = self.fresh_bounds(partition).await?;
        if b.start == b.end {
            return Ok(b.end);
        }
        let inner = Arc::clone(&self.inner);
        let asked = blocking(move || {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(
                &inner.config.topic,
                partition as i32,
                Offset::Offset(timestamp),
            )
            .map_err(|e| unavailable(partition, "looking up a time", e))?;
            let found = inner
                .meta
                .offsets_for_times(tpl, inner.config.timeout)
                .map_err(|e| unavailable(partition, "looking up a time", e))?;
            Ok(found.elements().first().and_then(|e| match e.offset() {
                Offset::Offset(o) if o >= 0 => Some(o as u64),
                _ => None,
            }))
        })
        .await?;
        // The broker's answer, if it is the first record at or after the time.
        let candidate = asked.unwrap_or(b.end).clamp(b.start, b.end);
        let at_or_after =
            candidate == b.end || self.timestamp_at(partition, candidate).await? >= timestamp;
        let before =
            candidate == b.start || self.timestamp_at(partition, candidate - 1).await? < timestamp;
        if at_or_after && before {
            return Ok(candidate);
        }
        // Otherwise search by reading (timestamps never decrease within a partition).
        let (mut lo, mut hi) = (b.start, b.end);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.timestamp_at(partition, mid).await? >= timestamp {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    fn bounds(&self, partition: u32) -> Result<Bounds> {
        let part = self.inner.part(partition)?;
        Ok(Bounds {
            start: part.start.load(Ordering::Acquire),
            end: *part.end.borrow(),
        })
    }

    fn watch(&self, partition: u32) -> Result<watch::Receiver<u64>> {
        Ok(self.inner.part(partition)?.end.subscribe())
    }

    async fn trim(&self, partition: u32, _before: u64) -> Result<u64> {
        // Retention is the topic's: nothing is deleted from here.
        self.inner.part(partition)?;
        Ok(self.fresh_bounds(partition).await?.start)
    }

    fn health(&self, partition: u32) -> Option<String> {
        if let Some(reason) = self.inner.stopped.lock().clone() {
            return Some(reason);
        }
        self.inner.part(partition).ok()?.unreachable.lock().clone()
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        // Appends in flight finish first.
        for part in &self.inner.parts {
            drop(part.appends.lock().await);
        }
        {
            let (stop, wake) = &self.inner.stop;
            *stop.lock() = true;
            wake.notify_all();
        }
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            inner
                .producer
                .flush(Timeout::After(inner.config.timeout))
                .map_err(|e| unavailable(0, "flushing the producer", e))?;
            for part in &inner.parts {
                part.readers.lock().clear();
            }
            Ok(())
        })
        .await
    }
}

/// The refresh thread: reads every partition's watermarks each `refresh`, so that other
/// processes' appends move `end` and retention moves `start`. Ends when the log closes or drops.
fn refresh_ends(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(log) = inner.upgrade() else {
            return;
        };
        {
            let (stop, wake) = &log.stop;
            let mut stopped = stop.lock();
            if !*stopped {
                wake.wait_for(&mut stopped, log.config.refresh);
            }
            if *stopped {
                return;
            }
        }
        for p in 0..log.parts.len() as u32 {
            let part = &log.parts[p as usize];
            match watermarks(&log.meta, &log.config, p) {
                Ok((low, high)) => {
                    log.observe(p, low, high);
                    if part.unreachable.lock().take().is_some() {
                        tracing::info!(topic = %log.config.topic, partition = p, "the Kafka brokers answer again");
                    }
                }
                Err(e) => {
                    let mut unreachable = part.unreachable.lock();
                    if unreachable.is_none() {
                        tracing::warn!(topic = %log.config.topic, partition = p, error = %e, "cannot read the partition's bounds from Kafka");
                    }
                    *unreachable = Some(e.to_string());
                }
            }
        }
    }
}

/// The partition's (low, high) watermarks, asked of the brokers.
fn watermarks(meta: &BaseConsumer, config: &KafkaLogConfig, p: u32) -> Result<(u64, u64)> {
    let (low, high) = meta
        .fetch_watermarks(&config.topic, p as i32, config.timeout)
        .map_err(|e| unavailable(p, "reading the partition's bounds", e))?;
    Ok((low.max(0) as u64, high.max(0) as u64))
}

/// The topic's partition count, or `None` if it does not exist.
async fn topic_partitions(
    meta: &Arc<BaseConsumer>,
    config: &KafkaLogConfig,
) -> Result<Option<u32>> {
    let meta = Arc::clone(meta);
    let topic = config.topic.clone();
    let timeout = config.timeout;
    let brokers = config.brokers.clone();
    blocking(move || {
        let md = meta.fetch_metadata(Some(&topic), timeout).map_err(|e| {
            Error::Config(format!(
                "log.kafka: cannot read the topic list from the brokers at {brokers}: {e}"
            ))
        })?;
        let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
            return Ok(None);
        };
        match t.error() {
            None if !t.partitions().is_empty() => Ok(Some(t.partitions().len() as u32)),
            None => Ok(None),
            Some(e) if RDKafkaErrorCode::from(e) == RDKafkaErrorCode::UnknownTopicOrPartition => {
                Ok(None)
            }
            Some(e) => Err(Error::Config(format!(
                "log.kafka: the brokers refuse topic {topic}: {:?}",
                RDKafkaErrorCode::from(e)
            ))),
        }
    })
    .await
}

async fn create_topic(
    admin: &AdminClient<DefaultClientContext>,
    config: &KafkaLogConfig,
) -> Result<()> {
    tracing::info!(
        topic = %config.topic,
        partitions = config.partitions,
        replication_factor = config.replication_factor,
        "creating the log's Kafka topic"
    );
    let retention_ms = config
        .retention
        .map_or_else(|| "-1".to_owned(), |r| r.as_millis().to_string());
    let topic = NewTopic::new(
        &config.topic,
        config.partitions as i32,
        TopicReplication::Fixed(config.replication_factor),
    )
    // Compaction would leave gaps in the offsets.
    .set("cleanup.policy", "delete")
    .set("retention.ms", &retention_ms);
    let options = AdminOptions::new().operation_timeout(Some(config.timeout));
    let results = admin.create_topics([&topic], &options).await.map_err(|e| {
        Error::Config(format!(
            "log.kafka: cannot create topic {}: {e}",
            config.topic
        ))
    })?;
    for r in results {
        match r {
            Ok(_) => {}
            // Another node created it first.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(Error::Config(format!(
                    "log.kafka: cannot create topic {name}: {code:?} (create it yourself with {} partitions, or fix the brokers' settings)",
                    config.partitions
                )));
            }
        }
    }
    Ok(())
}

/// Waits until a created topic shows in the metadata with its partitions.
async fn wait_for_topic(meta: &Arc<BaseConsumer>, config: &KafkaLogConfig) -> Result<u32> {
    let deadline = Instant::now() + config.timeout;
    loop {
        if let Some(n) = topic_partitions(meta, config).await? {
            return Ok(n);
        }
        if Instant::now() > deadline {
            return Err(Error::Config(format!(
                "log.kafka: topic {} was created but its partitions did not appear within {:?}",
                config.topic, config.timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs blocking client calls off the runtime's worker threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Error::Config(format!("a blocking task was cancelled: {e}"))),
    }
}
