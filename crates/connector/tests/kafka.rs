//! The `kafka` connector against a real Kafka-protocol broker: tansu (in-memory storage) runs as
//! a child process on a free port, and what the connector produced is read back by a different
//! client, librdkafka 2.x through Python's confluent_kafka (`tests/kafka/consume.py`). The
//! tests check that every delivery arrives once with its key, body and id header, that one key
//! keeps to one partition, and how a missing topic, a down broker, an oversized record and bad
//! settings are classified.
//!
//! tansu is found at `$TANSU`, else `~/.cargo/bin/tansu`, else on the `PATH` (`common/kafka.rs`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::free_port;
use common::kafka::Broker;
use serde_json::{Value, json};
use storeline_connector::kafka::{DELIVERY_ID_HEADER, Kafka};
use storeline_connector::webhook::Webhook;
use storeline_connector::{Connector, Delivery, Error, Kind, Verdict, config};

fn kafka(brokers: &str, topic: &str, timeout: &str, extra: &str) -> Result<Kafka, Error> {
    let src = format!(
        "name = \"stream\"\ntype = \"kafka\"\ntimeout = \"{timeout}\"\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\n{extra}"
    );
    let table: toml::Table = toml::from_str(&src).expect("toml");
    let def = config::parse(&table, "connector[0]").unwrap_or_else(|p| panic!("{p:?}"));
    let Kind::Kafka(c) = &def.kind else {
        panic!("not kafka")
    };
    Kafka::new(&def.name, c, def.timeout)
}

fn delivery(id: &str, key: &str) -> Delivery {
    Delivery {
        id: id.into(),
        connector: "stream".into(),
        channel: "kafka".into(),
        template: None,
        customer: Some(key.into()),
        trigger: "order_placed".into(),
        event: json!({ "type": "order_placed", "customer": key }),
        arrived: None,
        data: json!({ "n": id }).as_object().cloned().unwrap_or_default(),
        created_at: 1_700_000_000_000,
        attempt: 1,
        key: key.into(),
        profile: None,
    }
}

/// `partition P offset O` from a delivered verdict.
fn placed(v: &Verdict) -> (i64, i64) {
    let Verdict::Delivered { detail } = v else {
        panic!("not delivered: {v:?}")
    };
    let n: Vec<i64> = detail.split(' ').filter_map(|w| w.parse().ok()).collect();
    assert_eq!(n.len(), 2, "{detail}");
    (n[0], n[1])
}

#[tokio::test]
async fn every_delivery_arrives_once_with_its_key_on_one_partition() {
    let broker = Broker::start();
    broker.create_topic("orders", 3);
    let k = kafka(&broker.brokers(), "orders", "5s", "").expect("built");
    let ds: Vec<Delivery> = (0..12)
        .map(|i| delivery(&format!("dlv_{i:02}"), &format!("cus_{}", i % 4)))
        .collect();
    // Concurrent attempts, as the worker makes them.
    let verdicts = futures::future::join_all(ds.iter().map(|d| k.attempt(d))).await;
    let acked: BTreeMap<&str, (i64, i64)> = ds
        .iter()
        .zip(&verdicts)
        .map(|(d, v)| (d.id.as_str(), placed(v)))
        .collect();

    let records = broker.consume("orders", ds.len());
    assert_eq!(records.len(), ds.len(), "{records:#?}");
    let mut partition_of_key = BTreeMap::new();
    for d in &ds {
        let mine: Vec<&Value> = records
            .iter()
            .filter(|r| r["headers"][DELIVERY_ID_HEADER] == d.id.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "{} arrived {} times", d.id, mine.len());
        let r = mine[0];
        assert_eq!(r["key"], d.key.as_str());
        assert_eq!(r["value"], Webhook::body(d));
        let at = (
            r["partition"].as_i64().unwrap_or(-1),
            r["offset"].as_i64().unwrap_or(-1),
        );
        assert_eq!(at, acked[d.id.as_str()], "{} was acked elsewhere", d.id);
        let p = partition_of_key.entry(d.key.clone()).or_insert(at.0);
        assert_eq!(*p, at.0, "key {} is on two partitions", d.key);
    }
    let used: BTreeSet<i64> = partition_of_key.values().copied().collect();
    assert!(
        used.len() > 1,
        "every key hashed to one partition: {partition_of_key:?}"
    );
}

#[tokio::test]
async fn a_missing_topic_is_retried_until_it_exists() {
    let broker = Broker::start();
    let k = kafka(&broker.brokers(), "later", "2s", "").expect("built");
    let d = delivery("dlv_later", "cus_1");
    let started = Instant::now();
    let v = k.attempt(&d).await;
    // librdkafka holds a record for an unknown topic until it appears or the message times
    // out; the topic may yet be created, so this is a retry, not a reject.
    assert!(matches!(&v, Verdict::Retry { .. }), "{v:?}");
    // Bounded by the connector's timeout (with room for a loaded machine), not librdkafka's.
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );

    broker.create_topic("later", 1);
    // As the worker would: attempt again until the client's metadata knows the new topic.
    let mut v = k.attempt(&d).await;
    for _ in 0..5 {
        if matches!(v, Verdict::Delivered { .. }) {
            break;
        }
        assert!(matches!(&v, Verdict::Retry { .. }), "{v:?}");
        v = k.attempt(&d).await;
    }
    assert_eq!(placed(&v).0, 0);
    assert_eq!(broker.consume("later", 1).len(), 1);
}

#[tokio::test]
async fn a_broker_that_is_down_is_retried_within_the_timeout() {
    let k = kafka(&format!("127.0.0.1:{}", free_port()), "orders", "1s", "").expect("built");
    let started = Instant::now();
    let v = k.attempt(&delivery("dlv_down", "cus_1")).await;
    assert!(matches!(&v, Verdict::Retry { after: None, .. }), "{v:?}");
    // Bounded by the timeout (with room for a loaded machine; librdkafka's default message
    // timeout would be 300 s).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn oversized_records_are_rejected_and_bad_settings_fail_the_build() {
    let broker = Broker::start();
    broker.create_topic("small", 1);
    let k = kafka(
        &broker.brokers(),
        "small",
        "5s",
        "[properties]\n\"message.max.bytes\" = \"1000\"\n",
    )
    .expect("built");
    let mut big = delivery("dlv_big", "cus_1");
    big.data.insert("blob".into(), json!("x".repeat(5000)));
    let v = k.attempt(&big).await;
    assert!(
        matches!(&v, Verdict::Reject { detail } if detail.contains("small")),
        "{v:?}"
    );
    // The same connector still delivers what fits.
    placed(&k.attempt(&delivery("dlv_small", "cus_1")).await);
    assert_eq!(broker.consume("small", 1).len(), 1);

    for bad in ["\"no.such.setting\" = \"1\"", "\"acks\" = \"banana\""] {
        match kafka(
            &broker.brokers(),
            "small",
            "5s",
            &format!("[properties]\n{bad}\n"),
        ) {
            Err(e @ Error::Build { .. }) => assert!(e.to_string().contains("stream"), "{e}"),
            Err(e) => panic!("{bad}: {e}"),
            Ok(_) => panic!("{bad} was accepted"),
        }
    }
}
