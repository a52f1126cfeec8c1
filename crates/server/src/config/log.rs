//! `[log]` and `[log.kafka]`: which log backend, and its settings.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use storeline_log::FileLogConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogBackend {
    /// Segment files in `<data_dir>/log` (the default).
    File,
    /// In memory: nothing survives a restart. For tests and demos.
    Memory,
    /// A topic on Apache Kafka or a Kafka-protocol broker (`[log.kafka]`). For clusters.
    Kafka,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub backend: LogBackend,
    /// See [`FileLogConfig`] for these five.
    pub partitions: u32,
    pub segment_bytes: u64,
    pub max_batch_bytes: u64,
    pub fsync: bool,
    pub journal_bytes: u64,
    /// How long events are kept: whole segments older than this are deleted. `"forever"` keeps
    /// everything. Must be at least `ingest.dedup_window`.
    #[serde(with = "super::retention_str")]
    pub retention: Option<Duration>,
    /// Used when `backend = "kafka"`.
    pub kafka: LogKafkaConfig,
}

/// `[log.kafka]`: where the Kafka log lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogKafkaConfig {
    /// `host:port,…` of the bootstrap brokers.
    pub brokers: String,
    pub topic: String,
    /// Partitions of the topic when Storeline creates it (default: `[log] partitions`). An
    /// existing topic keeps its own count.
    pub partitions: Option<u32>,
    /// Replicas of each partition when Storeline creates the topic. 3 with
    /// `min.insync.replicas = 2` survives a broker's loss; 1 is for a single test broker.
    pub replication_factor: i32,
    /// How long an append waits for its acknowledgement, and a read for an answer.
    #[serde(with = "super::humantime_serde_str")]
    pub timeout: Duration,
    /// How often each partition's end is read again, to see other nodes' appends.
    #[serde(with = "super::humantime_serde_str")]
    pub refresh: Duration,
    /// librdkafka settings (`"security.protocol" = "SASL_SSL"`, …), applied to every client
    /// the log makes, after Storeline's own.
    pub properties: std::collections::BTreeMap<String, String>,
}

impl Default for LogKafkaConfig {
    fn default() -> Self {
        let k = storeline_log::KafkaLogConfig::default();
        LogKafkaConfig {
            brokers: String::new(),
            topic: k.topic,
            partitions: None,
            replication_factor: k.replication_factor,
            timeout: k.timeout,
            refresh: k.refresh,
            properties: Default::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        let f = FileLogConfig::default();
        LogConfig {
            backend: LogBackend::File,
            partitions: f.partitions,
            segment_bytes: f.segment_bytes,
            max_batch_bytes: f.max_batch_bytes,
            fsync: f.fsync,
            journal_bytes: f.journal_bytes,
            retention: None,
            kafka: LogKafkaConfig::default(),
        }
    }
}

impl LogConfig {
    /// The Kafka log's settings; `[log] retention` becomes the topic's `retention.ms` when
    /// Storeline creates the topic.
    pub fn kafka(&self) -> storeline_log::KafkaLogConfig {
        let k = &self.kafka;
        storeline_log::KafkaLogConfig {
            brokers: k.brokers.clone(),
            topic: k.topic.clone(),
            partitions: k.partitions.unwrap_or(self.partitions),
            replication_factor: k.replication_factor,
            properties: k.properties.clone(),
            timeout: k.timeout,
            refresh: k.refresh,
            retention: self.retention,
        }
    }

    /// What is wrong with `[log.kafka]`, when it is used.
    pub(super) fn kafka_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.backend != LogBackend::Kafka {
            return problems;
        }
        let k = &self.kafka;
        if k.brokers.trim().is_empty() {
            problems.push(
                "log.kafka.brokers: required with log.backend = \"kafka\" (e.g. \"kafka-1:9092,kafka-2:9092\")"
                    .into(),
            );
        }
        if k.topic.trim().is_empty() {
            problems.push("log.kafka.topic: must not be empty".into());
        }
        if k.replication_factor < 1 {
            problems.push(format!(
                "log.kafka.replication_factor: must be at least 1, got {}",
                k.replication_factor
            ));
        }
        if k.timeout.is_zero() || k.refresh.is_zero() {
            problems.push("log.kafka.timeout and log.kafka.refresh: must be more than 0".into());
        }
        problems
    }

    pub fn file(&self) -> FileLogConfig {
        FileLogConfig {
            partitions: self.partitions,
            segment_bytes: self.segment_bytes,
            max_batch_bytes: self.max_batch_bytes,
            fsync: self.fsync,
            journal_bytes: self.journal_bytes,
        }
    }
}
