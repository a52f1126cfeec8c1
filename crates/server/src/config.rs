//! Configuration: built-in defaults, then the TOML file, then `STORELINE_*` environment
//! variables (`STORELINE_SERVER__LISTEN=0.0.0.0:7700`), then command-line flags.
//!
//! The structs are the documentation: each field's comment is what `config/storeline.toml`
//! says. `validate` is pure (no I/O) and reports every problem with its key path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

mod log;

pub use log::{LogBackend, LogConfig, LogKafkaConfig};

/// The commented default configuration shipped with Storeline.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../../config/storeline.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the log, keys and state live.
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub ingest: IngestConfig,
    pub log: LogConfig,
    pub segment: SegmentConfig,
    pub state: StateConfig,
    pub engine: EngineSection,
    pub inventory: InventoryConfig,
    pub triggers: TriggersSection,
    /// Triggers, aggregates, connectors and arbitration may also be written inline here, in the
    /// trigger file's format (`[[trigger]]`, `[[aggregate]]`, `[[connector]]`, `[arbitration]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trigger: Vec<toml::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aggregate: Vec<toml::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub connector: Vec<toml::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arbitration: Option<toml::Value>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./storeline-data"),
            server: ServerConfig::default(),
            ingest: IngestConfig::default(),
            log: LogConfig::default(),
            segment: SegmentConfig::default(),
            state: StateConfig::default(),
            engine: EngineSection::default(),
            inventory: InventoryConfig::default(),
            triggers: TriggersSection::default(),
            trigger: Vec::new(),
            aggregate: Vec::new(),
            connector: Vec::new(),
            arbitration: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on. Port 0 picks a free port (printed at start).
    pub listen: String,
    /// How long a graceful shutdown waits for in-flight requests (counted from the signal,
    /// including `shutdown_drain`).
    #[serde(with = "humantime_serde_str")]
    pub shutdown_timeout: Duration,
    /// During a graceful shutdown, how long connections stay open after the listener closed:
    /// a request that arrives on one is answered 503 `shutting_down` with `Connection: close`
    /// instead of meeting a closed connection. Ends early once every connection has closed.
    /// At most `shutdown_timeout`.
    #[serde(with = "humantime_serde_str")]
    pub shutdown_drain: Duration,
    /// A connection must send a request's complete headers within this time (from its accept,
    /// or from the first byte of a later request); otherwise it is closed. Defeats clients that
    /// hold connections with partial headers.
    #[serde(with = "humantime_serde_str")]
    pub header_read_timeout: Duration,
    /// A kept-alive connection idle (no request) for this long is closed.
    #[serde(with = "humantime_serde_str")]
    pub keep_alive_timeout: Duration,
    /// Most open client connections. A connection beyond it is still accepted and answered
    /// 503 `too_many_connections` with `Retry-After` and `Connection: close`, so health checks
    /// get an answer. Lowered at start to the open-file limit (`ulimit -n`) minus 128, which
    /// stay for the log, the state store and outgoing connections.
    pub max_connections: usize,
    /// Whether `/metrics` requires a key with the `read` scope (`admin` implies it).
    pub metrics_auth: bool,
    /// Request-rate limits per API key: a token bucket per key, refilled at `per_second` and
    /// holding at most `burst` requests. A key with the `admin` scope is held to `admin`;
    /// another key is held, per endpoint scope, to `ingest` or `read`. Over the limit a
    /// request is answered 429 `rate_limited` with `Retry-After`. `per_second = 0` turns a
    /// limit off. Requests without a valid key are not counted (they are answered 401).
    pub rate_limit: RateLimits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:7700".into(),
            shutdown_timeout: Duration::from_secs(30),
            shutdown_drain: Duration::from_secs(1),
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            max_connections: 768,
            metrics_auth: false,
            rate_limit: RateLimits::default(),
        }
    }
}

/// The request-rate limit of each kind of key (see [`ServerConfig::rate_limit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// Ingest endpoints (events, Segment, commands). Off by default: the ingest key is public
    /// and shared by every browser and app of a shop, so a per-key limit cannot tell a flood
    /// from a sale, and would refuse the real customers' events along with an attacker's.
    pub ingest: RateLimit,
    /// Read endpoints (events, stream, views, deliveries, metrics with `metrics_auth`).
    pub read: RateLimit,
    /// Everything done with an `admin` key. Off by default.
    pub admin: RateLimit,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            ingest: RateLimit::OFF,
            read: RateLimit {
                per_second: 1000,
                burst: 2000,
            },
            admin: RateLimit::OFF,
        }
    }
}

/// A token bucket: `burst` requests at once, then `per_second`. `per_second = 0` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl RateLimit {
    pub const OFF: RateLimit = RateLimit {
        per_second: 0,
        burst: 0,
    };

    pub fn is_on(&self) -> bool {
        self.per_second > 0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest request body accepted (after decompression); larger answers 413.
    pub max_body_bytes: usize,
    /// Largest single event accepted; larger answers 413.
    pub max_event_bytes: usize,
    /// Most events in one request.
    pub max_events_per_request: usize,
    /// How long a `(source, id)` is remembered: a retry within this window is acknowledged with
    /// the original offset and not stored again. At least 7 days.
    #[serde(with = "humantime_serde_str")]
    pub dedup_window: Duration,
    /// `source` given to events that have none (plain JSON mode only).
    pub default_source: String,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_body_bytes: 16 << 20,
            max_event_bytes: 256 << 10,
            max_events_per_request: 10_000,
            dedup_window: Duration::from_secs(7 * 24 * 3600),
            default_source: "storeline:http".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegmentConfig {
    /// `source` of events received through the Segment-compatible endpoints.
    pub source: String,
    /// Currency of Segment prices that carry no `currency` property.
    pub default_currency: String,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        SegmentConfig {
            source: "segment".into(),
            default_currency: "USD".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    /// SQLite in `<data_dir>/state.db` (the default).
    Sqlite,
    /// PostgreSQL (cluster mode), at `state.postgres`.
    Postgres,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    pub backend: StateBackend,
    pub postgres: PostgresSection,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: StateBackend::Sqlite,
            postgres: PostgresSection::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSection {
    /// Connection URL.
    pub url: String,
    /// Schema holding Storeline's tables (created if missing).
    pub schema: String,
}

impl Default for PostgresSection {
    fn default() -> Self {
        PostgresSection {
            url: "postgres://postgres@127.0.0.1:5432/storeline".into(),
            schema: "storeline".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// Most events a partition's writer applies and commits in one transaction.
    pub batch_max: usize,
    /// While events keep arriving, how long a partition's writer gathers them after a batch
    /// before it applies the next; an idle writer applies at once. "0s" turns it off.
    #[serde(with = "humantime_serde_str")]
    pub linger: Duration,
    /// How long an unpaid order holds its stock (order.place may set its own).
    #[serde(with = "humantime_serde_str")]
    pub reservation_ttl: Duration,
    /// How long `?min_offset=` waits for a view to catch up before answering 503.
    #[serde(with = "humantime_serde_str")]
    pub read_wait: Duration,
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            batch_max: 16384,
            linger: Duration::from_millis(2),
            reservation_ttl: Duration::from_secs(15 * 60),
            read_wait: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InventoryConfig {
    /// Location of stock events and commands that name none.
    pub default_location: String,
    /// Available stock (per SKU, all locations) at or below which `inventory.low` is emitted;
    /// `inventory.adjust` can set a SKU's own with `low_stock_threshold`.
    pub low_stock_threshold: i64,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        InventoryConfig {
            default_location: "main".into(),
            low_stock_threshold: 5,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TriggersSection {
    /// A trigger file (`[[trigger]]`, `[[aggregate]]`, `[[connector]]`, `[arbitration]`), such
    /// as the starter set `config/triggers.toml`. A relative path is taken from the current
    /// directory. When the file's content changes, the next start installs it; until then a file
    /// sent to `PUT /v1/triggers` stays in force.
    pub file: Option<PathBuf>,
}

impl ServerConfig {
    /// Problems with the connection and rate limits, each naming its key.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let d = |d: Duration| humantime::format_duration(d).to_string();
        if self.shutdown_drain > self.shutdown_timeout {
            problems.push(format!(
                "server.shutdown_drain: must be at most server.shutdown_timeout ({}), got {}",
                d(self.shutdown_timeout),
                d(self.shutdown_drain)
            ));
        }
        for (key, value, min) in [
            ("header_read_timeout", self.header_read_timeout, 100),
            ("keep_alive_timeout", self.keep_alive_timeout, 100),
        ] {
            if value < Duration::from_millis(min) || value > Duration::from_secs(3600) {
                problems.push(format!(
                    "server.{key}: must be between 100ms and 1h, got {}",
                    d(value)
                ));
            }
        }
        if self.max_connections == 0 || self.max_connections > 1_000_000 {
            problems.push(format!(
                "server.max_connections: must be between 1 and 1000000, got {}",
                self.max_connections
            ));
        }
        for (scope, limit) in [
            ("ingest", self.rate_limit.ingest),
            ("read", self.rate_limit.read),
            ("admin", self.rate_limit.admin),
        ] {
            if limit.is_on() && limit.burst == 0 {
                problems.push(format!(
                    "server.rate_limit.{scope}.burst: must be at least 1 when per_second is set \
                     (per_second = 0 turns the limit off)"
                ));
            }
        }
        problems
    }
}

impl Config {
    /// The trigger file's text, from `triggers.file` or the inline tables; `None` if neither.
    pub fn trigger_source(&self) -> Result<Option<String>, String> {
        let inline = !(self.trigger.is_empty()
            && self.aggregate.is_empty()
            && self.connector.is_empty()
            && self.arbitration.is_none());
        match (&self.triggers.file, inline) {
            (Some(_), true) => {
                Err("triggers.file is set and triggers are also written inline; use one".into())
            }
            (Some(f), false) => std::fs::read_to_string(f)
                .map(Some)
                .map_err(|e| format!("triggers.file: cannot read {}: {e}", f.display())),
            (None, true) => {
                let mut t = toml::Table::new();
                if let Some(a) = &self.arbitration {
                    t.insert("arbitration".into(), a.clone());
                }
                for (k, v) in [
                    ("connector", &self.connector),
                    ("aggregate", &self.aggregate),
                    ("trigger", &self.trigger),
                ] {
                    if !v.is_empty() {
                        t.insert(k.into(), toml::Value::Array(v.clone()));
                    }
                }
                toml::to_string(&t)
                    .map(Some)
                    .map_err(|e| format!("inline triggers: {e}"))
            }
            (None, false) => Ok(None),
        }
    }
}

/// Durations as strings such as `"15m"`, `"7d"`, `"250ms"`.
mod humantime_serde_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "'{s}' is not a duration ({e}); write e.g. \"30s\", \"15m\", \"7d\""
            ))
        })
    }
}

/// `"forever"` or a duration.
mod retention_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            None => s.serialize_str("forever"),
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        if s == "forever" {
            return Ok(None);
        }
        humantime::parse_duration(&s).map(Some).map_err(|e| {
            serde::de::Error::custom(format!(
                "'{s}' is not a duration ({e}); write e.g. \"30days\" or \"forever\""
            ))
        })
    }
}

/// Errors of loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load configuration: {0}")]
    Load(String),
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

impl Config {
    /// Defaults, then `file` (if given), then `STORELINE_*` variables. Does not validate.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist",
                    f.display()
                )));
            }
            fig = fig.merge(Toml::file(f));
        }
        // STORELINE_URL and STORELINE_API_KEY are for the client commands, not the server.
        fig = fig.merge(
            Env::prefixed("STORELINE_")
                .split("__")
                .ignore(&["url", "api_key"]),
        );
        fig.extract::<Config>().map_err(|e| {
            let msgs: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
            ConfigError::Load(msgs.join("; "))
        })
    }

    /// Every problem with the values, each naming its key. No I/O.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.server.listen.parse::<SocketAddr>().is_err() {
            problems.push(format!(
                "server.listen: '{}' is not an address such as 127.0.0.1:7700",
                self.server.listen
            ));
        }
        problems.extend(self.server.problems());
        if self.ingest.dedup_window < Duration::from_secs(7 * 24 * 3600) {
            problems.push(format!(
                "ingest.dedup_window: must be at least 7 days, got {}",
                humantime::format_duration(self.ingest.dedup_window)
            ));
        }
        problems.extend(self.log.kafka_problems());
        if let Some(r) = self.log.retention
            && r < self.ingest.dedup_window
        {
            problems.push(format!(
                "log.retention: must be at least ingest.dedup_window ({}), got {}",
                humantime::format_duration(self.ingest.dedup_window),
                humantime::format_duration(r)
            ));
        }
        if self.ingest.max_event_bytes == 0
            || self.ingest.max_event_bytes > self.ingest.max_body_bytes
        {
            problems
                .push("ingest.max_event_bytes: must be between 1 and ingest.max_body_bytes".into());
        }
        if self.ingest.max_body_bytes as u64 > self.log.segment_bytes / 2 {
            problems.push(format!(
                "ingest.max_body_bytes: must be at most half of log.segment_bytes ({})",
                self.log.segment_bytes
            ));
        }
        if self.ingest.max_events_per_request == 0 {
            problems.push("ingest.max_events_per_request: must be at least 1".into());
        }
        if self.ingest.default_source.is_empty() {
            problems.push("ingest.default_source: must not be empty".into());
        }
        for (key, source) in [
            ("ingest.default_source", &self.ingest.default_source),
            ("segment.source", &self.segment.source),
        ] {
            if storeline_event::limits::is_reserved_source(source) {
                problems.push(format!(
                    "{key}: '{source}' is reserved (sources starting with storeline/ are Storeline's own)"
                ));
            } else if let Err(e) = storeline_event::limits::check_identifier(source) {
                problems.push(format!("{key}: {e}"));
            }
        }
        if let Err(e) = storeline_event::Currency::parse(&self.segment.default_currency) {
            problems.push(format!("segment.default_currency: {e}"));
        }
        problems.extend(self.log.file().validate("log."));
        if self.engine.batch_max == 0 || self.engine.batch_max > 100_000 {
            problems.push("engine.batch_max: must be between 1 and 100000".into());
        }
        if self.engine.linger > Duration::from_secs(1) {
            problems.push(format!(
                "engine.linger: must be at most 1s (it delays views and triggers), got {}",
                humantime::format_duration(self.engine.linger)
            ));
        }
        if self.engine.reservation_ttl < Duration::from_secs(1) {
            problems.push("engine.reservation_ttl: must be at least 1s".into());
        }
        if self.inventory.default_location.trim().is_empty() {
            problems.push("inventory.default_location: must not be empty".into());
        }
        if self.state.backend == StateBackend::Postgres {
            if !self.state.postgres.url.starts_with("postgres://")
                && !self.state.postgres.url.starts_with("postgresql://")
            {
                problems.push(format!(
                    "state.postgres.url: '{}' is not a postgres:// URL",
                    self.state.postgres.url
                ));
            }
            let schema = &self.state.postgres.schema;
            if schema.is_empty()
                || !schema
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                problems.push(format!(
                    "state.postgres.schema: '{schema}' must be letters, digits and underscores"
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("log")
    }

    pub fn state_file(&self) -> PathBuf {
        self.data_dir.join("state.db")
    }

    pub fn keys_file(&self) -> PathBuf {
        self.data_dir.join("keys.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_parses_and_equals_the_defaults() {
        let parsed: Config =
            toml::from_str(DEFAULT_CONFIG_TOML).expect("config/storeline.toml parses");
        assert_eq!(
            parsed,
            Config::default(),
            "config/storeline.toml documents the real defaults"
        );
        parsed.validate().unwrap();
    }

    #[test]
    fn validation_names_every_bad_key() {
        let mut c = Config::default();
        c.server.listen = "nowhere".into();
        c.ingest.dedup_window = Duration::from_secs(3600);
        c.log.partitions = 0;
        let ConfigError::Invalid(problems) = c.validate().unwrap_err() else {
            panic!()
        };
        assert!(problems.iter().any(|p| p.starts_with("server.listen")));
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("ingest.dedup_window"))
        );
        assert!(problems.iter().any(|p| p.starts_with("log.partitions")));
    }

    #[test]
    fn the_kafka_log_needs_its_brokers() {
        let mut c = Config::default();
        c.log.backend = LogBackend::Kafka;
        c.log.kafka.replication_factor = 0;
        let ConfigError::Invalid(problems) = c.validate().unwrap_err() else {
            panic!()
        };
        assert!(
            problems.iter().any(|p| p.starts_with("log.kafka.brokers")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("log.kafka.replication_factor"))
        );
        let c: Config = toml::from_str(
            "[log]\nbackend = \"kafka\"\npartitions = 6\n[log.kafka]\nbrokers = \"k1:9092\"\n\
             [log.kafka.properties]\n\"security.protocol\" = \"SSL\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        let k = c.log.kafka();
        assert_eq!((k.brokers.as_str(), k.partitions), ("k1:9092", 6));
        assert_eq!(k.properties["security.protocol"], "SSL");
    }

    #[test]
    fn validation_names_bad_connection_and_rate_limits() {
        let mut c = Config::default();
        c.server.shutdown_drain = Duration::from_secs(60);
        c.server.header_read_timeout = Duration::ZERO;
        c.server.keep_alive_timeout = Duration::from_secs(7200);
        c.server.max_connections = 0;
        c.server.rate_limit.ingest = RateLimit {
            per_second: 10,
            burst: 0,
        };
        let ConfigError::Invalid(problems) = c.validate().unwrap_err() else {
            panic!()
        };
        for key in [
            "server.shutdown_drain",
            "server.header_read_timeout",
            "server.keep_alive_timeout",
            "server.max_connections",
            "server.rate_limit.ingest.burst",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(key)),
                "{key} in {problems:?}"
            );
        }
        assert_eq!(problems.len(), 5, "{problems:?}");
    }

    #[test]
    fn validation_names_a_bad_journal_size_and_linger() {
        let problems = |journal_bytes: u64, linger: Duration| {
            let mut c = Config::default();
            c.log.journal_bytes = journal_bytes;
            c.engine.linger = linger;
            match c.validate() {
                Ok(_) => Vec::new(),
                Err(ConfigError::Invalid(p)) => p,
                Err(e) => panic!("{e}"),
            }
        };
        // Off, the smallest and the largest journal, and a linger of at most 1 s are accepted.
        for ok in [0, 65536, u64::from(u32::MAX)] {
            assert_eq!(problems(ok, Duration::ZERO), Vec::<String>::new(), "{ok}");
        }
        assert!(problems(0, Duration::from_secs(1)).is_empty());
        for bad in [1, 65535, u64::from(u32::MAX) + 1] {
            let p = problems(bad, Duration::ZERO);
            assert_eq!(p.len(), 1, "{p:?}");
            assert!(
                p[0].starts_with("log.journal_bytes: must be 0 (off)"),
                "{p:?}"
            );
        }
        let p = problems(0, Duration::from_millis(1001));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("engine.linger: must be at most 1s"),
            "{p:?}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = toml::from_str::<Config>("[server]\nlisten = \"127.0.0.1:1\"\nlistne = 1\n")
            .unwrap_err();
        assert!(e.to_string().contains("listne"), "{e}");
    }
}
