//! The outbox: the contract between the engine, which decides a delivery and writes it as an
//! outbox row in the same commit as the state that decided it, and the delivery worker, which
//! takes the rows in by key order and attempts them. Both sides use these types; neither
//! builds or splits a row or its key by hand.
//!
//! ```text
//!  outbox  {partition:04}␟{clock:013}␟{seq}␟{id}   one OutboxEntry (JSON), owned by its partition
//! ```
//!
//! Keys sort by partition, then by the engine clock at the decision, then by the action's place
//! in its run (`seq`), so a worker that remembers the last key it took resumes exactly there.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The state store namespace of the outbox rows.
pub const NS: &str = "outbox";

/// The separator between the parts of a key (never in an id, a seq or a number).
pub const SEP: char = '\u{1f}';

/// One delivery the engine decided: everything the worker needs to attempt it. Every field is
/// required when it is read back, so a renamed or missing field is an error, not an empty value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// `dlv_…`, derived from the run and the action: stable over replays and every attempt.
    pub id: String,
    pub connector: String,
    pub channel: String,
    pub template: Option<String>,
    pub customer: Option<String>,
    pub trigger: String,
    /// The trigger file version whose run decided it.
    pub version: String,
    /// The run's key (`trigger␟customer␟…`).
    pub run: String,
    /// The event that started the run.
    pub event: Value,
    /// The event a `wait` step received, when the action ran on its arrival.
    pub arrived: Option<Value>,
    /// The action's evaluated `data`.
    pub data: Map<String, Value>,
    /// The partition's clock when it was decided (ms since the epoch).
    pub created_at: i64,
    pub priority: i32,
    /// The action's place in its run (see [`OutboxKey::seq`]).
    pub seq: String,
    /// Bypasses consent, quiet hours and caps.
    pub transactional: bool,
}

impl OutboxEntry {
    /// The entry a stored row holds, or what is wrong with it.
    pub fn parse(row: &[u8]) -> Result<OutboxEntry, String> {
        serde_json::from_slice(row).map_err(|e| format!("not an outbox entry: {e}"))
    }

    /// The row's bytes (an error is passed on, never written as an empty row).
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// What orders and groups deliveries at the receiver (Kafka's message key, the FIFO key):
    /// the customer, else the order the event is about, else the delivery itself.
    pub fn delivery_key(&self) -> String {
        self.customer
            .clone()
            .or_else(|| {
                self.event
                    .pointer("/data/order_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| self.id.clone())
    }
}

/// An outbox row's key, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxKey {
    pub partition: u32,
    /// The engine clock of the decision (negative clocks are stored as 0).
    pub clock: i64,
    /// The action's place in its run: origin offset, step, branch and index.
    pub seq: String,
    pub id: String,
}

impl OutboxKey {
    pub fn encode(&self) -> String {
        format!(
            "{}{:013}{SEP}{}{SEP}{}",
            Self::prefix(self.partition),
            self.clock.max(0),
            self.seq,
            self.id
        )
    }

    /// The key of `key`, or `None` when it is not an outbox key.
    pub fn decode(key: &str) -> Option<OutboxKey> {
        let mut parts = key.splitn(4, SEP);
        let partition = parts.next()?;
        let clock = parts.next()?;
        let seq = parts.next()?;
        let id = parts.next()?;
        let number = |s: &str, width| s.len() == width && s.bytes().all(|b| b.is_ascii_digit());
        if !number(partition, 4) || !number(clock, 13) {
            return None;
        }
        Some(OutboxKey {
            partition: partition.parse().ok()?,
            clock: clock.parse().ok()?,
            seq: seq.to_owned(),
            id: id.to_owned(),
        })
    }

    /// What every key of `partition` starts with.
    pub fn prefix(partition: u32) -> String {
        format!("{partition:04}{SEP}")
    }

    /// A position just before the first key of `partition` decided at `clock` or later.
    pub fn start(partition: u32, clock: i64) -> String {
        format!("{}{:013}", Self::prefix(partition), clock.max(0))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn entry() -> OutboxEntry {
        OutboxEntry {
            id: "dlv_0123456789abcdef01234567".into(),
            connector: "hooks".into(),
            channel: "webhook".into(),
            template: None,
            customer: Some("cus-1".into()),
            trigger: "welcome".into(),
            version: "v3".into(),
            run: "welcome\u{1f}cus-1".into(),
            event: json!({"type": "customer.created", "data": {"email": "a@example.com"}}),
            arrived: None,
            data: Map::new(),
            created_at: 1_767_225_600_000,
            priority: 0,
            seq: "00000000000000000042.001003".into(),
            transactional: false,
        }
    }

    #[test]
    fn an_entry_round_trips_and_reads_the_rows_the_engine_wrote_before_it_had_a_type() {
        let e = entry();
        assert_eq!(OutboxEntry::parse(&e.to_bytes().unwrap()).unwrap(), e);
        // The shape `json!` wrote: nulls for absent options.
        let old = json!({
            "id": e.id, "connector": "hooks", "channel": "webhook", "template": null,
            "customer": "cus-1", "trigger": "welcome", "version": "v3", "run": e.run,
            "event": e.event, "arrived": null, "data": {}, "created_at": e.created_at,
            "priority": 0, "seq": e.seq, "transactional": false,
        });
        assert_eq!(OutboxEntry::parse(old.to_string().as_bytes()).unwrap(), e);
    }

    #[test]
    fn a_renamed_field_is_an_error_not_an_empty_value() {
        let mut v = serde_json::to_value(entry()).unwrap();
        let m = v.as_object_mut().unwrap();
        let c = m.remove("connector").unwrap();
        m.insert("conector".into(), c);
        let err = OutboxEntry::parse(v.to_string().as_bytes()).unwrap_err();
        assert!(err.contains("connector"), "{err}");
    }

    #[test]
    fn the_delivery_key_is_the_customer_else_the_order_else_the_id() {
        let mut e = entry();
        assert_eq!(e.delivery_key(), "cus-1");
        e.customer = None;
        assert_eq!(e.delivery_key(), e.id);
        e.event = json!({"data": {"order_id": "o-7"}});
        assert_eq!(e.delivery_key(), "o-7");
    }

    #[test]
    fn keys_round_trip_and_sort_by_partition_clock_and_seq() {
        let k = OutboxKey {
            partition: 3,
            clock: 1_767_225_600_000,
            seq: "00000000000000000042.001003".into(),
            id: "dlv_x".into(),
        };
        let s = k.encode();
        assert_eq!(
            s,
            "0003\u{1f}1767225600000\u{1f}00000000000000000042.001003\u{1f}dlv_x"
        );
        assert_eq!(OutboxKey::decode(&s), Some(k.clone()));
        assert!(s.starts_with(&OutboxKey::prefix(3)));
        assert!(OutboxKey::start(3, k.clock) < s);
        assert!(OutboxKey::start(3, k.clock + 1) > s);
        let later = OutboxKey {
            seq: "00000000000000000042.001004".into(),
            ..k.clone()
        };
        assert!(later.encode() > s);
        let negative = OutboxKey { clock: -5, ..k };
        assert_eq!(OutboxKey::decode(&negative.encode()).unwrap().clock, 0);
        for bad in [
            "",
            "0003",
            "3\u{1f}1\u{1f}s\u{1f}id",
            "0003\u{1f}x767225600000\u{1f}s\u{1f}i",
        ] {
            assert_eq!(OutboxKey::decode(bad), None, "{bad:?}");
        }
    }
}
