//! The Kafka log against a real Kafka-protocol broker (tansu, in-memory storage): the
//! conformance suite, two processes sharing one topic, a reopen, and brokers that go away.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use storeline_log::tansu::Broker;
use storeline_log::{Error, EventLog, KafkaLog, KafkaLogConfig, Record, conformance};

static TOPICS: AtomicU32 = AtomicU32::new(0);

fn config(broker: &Broker, topic: &str) -> KafkaLogConfig {
    KafkaLogConfig {
        brokers: broker.brokers(),
        topic: topic.into(),
        partitions: 4,
        replication_factor: 1,
        timeout: Duration::from_secs(5),
        ..KafkaLogConfig::default()
    }
}

fn fresh_topic() -> String {
    format!("log-{}", TOPICS.fetch_add(1, Ordering::Relaxed))
}

fn rec(ts: i64, v: &str) -> Record {
    Record {
        timestamp: ts,
        key: Bytes::from_static(b"k"),
        value: Bytes::from(v.to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_log_keeps_the_contract() {
    let broker = Broker::start();
    conformance::run_all(|| async {
        KafkaLog::open(config(&broker, &fresh_topic()))
            .await
            .unwrap()
    })
    .await;
}

/// Two processes on one topic (two nodes of a cluster): each sees the other's appends through
/// `watch` and `read`, and the offsets stay dense across both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_logs_on_one_topic_see_each_others_appends() {
    let broker = Broker::start();
    let topic = fresh_topic();
    let a = KafkaLog::open(config(&broker, &topic)).await.unwrap();
    let b = KafkaLog::open(config(&broker, &topic)).await.unwrap();
    assert_eq!(
        b.partitions(),
        4,
        "the second finds the topic the first created"
    );
    let mut seen = b.watch(1).unwrap();
    let ack = a
        .append(1, vec![rec(10, "a0"), rec(11, "a1")])
        .await
        .unwrap();
    assert_eq!((ack.base_offset, ack.count), (0, 2));
    tokio::time::timeout(Duration::from_secs(5), seen.wait_for(|end| *end >= 2))
        .await
        .expect("the other log's watch reaches the new end")
        .unwrap();
    let got = b.read(1, 0, 10).await.unwrap();
    assert_eq!(
        got.iter().map(|r| r.value.clone()).collect::<Vec<_>>(),
        [Bytes::from_static(b"a0"), Bytes::from_static(b"a1")]
    );
    let ack = b.append(1, vec![rec(5, "b0")]).await.unwrap();
    assert_eq!(ack.base_offset, 2, "offsets continue across writers");
    assert_eq!(
        b.read(1, 2, 1).await.unwrap()[0].timestamp,
        11,
        "the second writer raises its timestamp to the partition's last one"
    );
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut w = a.watch(1).unwrap();
        w.wait_for(|end| *end >= 3).await.unwrap();
    })
    .await
    .expect("and the first sees the second's append");
    assert_eq!(
        a.read(1, 2, 10).await.unwrap()[0].value,
        Bytes::from_static(b"b0")
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// What was acknowledged is there after a reopen, and appends continue at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reopened_log_has_everything_and_continues() {
    let broker = Broker::start();
    let topic = fresh_topic();
    let log = KafkaLog::open(config(&broker, &topic)).await.unwrap();
    for i in 0..10 {
        log.append(i % 4, vec![rec(100 + i64::from(i), &format!("r{i}"))])
            .await
            .unwrap();
    }
    log.close().await.unwrap();
    drop(log);
    let log = KafkaLog::open(config(&broker, &topic)).await.unwrap();
    let ends: Vec<u64> = (0..4).map(|p| log.bounds(p).unwrap().end).collect();
    assert_eq!(ends, [3, 3, 2, 2]);
    let ack = log.append(0, vec![rec(1, "late")]).await.unwrap();
    assert_eq!(ack.base_offset, 3);
    let last = log.read(0, 3, 1).await.unwrap();
    assert_eq!(
        last[0].timestamp, 108,
        "a reopened log raises timestamps to the last stored one"
    );
    log.close().await.unwrap();
}

/// An existing topic keeps its own partition count, whatever the configuration says.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_existing_topic_keeps_its_partition_count() {
    let broker = Broker::start();
    let topic = fresh_topic();
    let mut c = config(&broker, &topic);
    c.partitions = 3;
    let log = KafkaLog::open(c.clone()).await.unwrap();
    assert_eq!(log.partitions(), 3);
    log.close().await.unwrap();
    c.partitions = 8;
    let log = KafkaLog::open(c).await.unwrap();
    assert_eq!(log.partitions(), 3);
    log.close().await.unwrap();
}

/// Brokers that go away: an append fails with a retryable `Unavailable` within the timeout
/// (the process keeps running), and the partition's health says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_fail_clearly_when_the_brokers_are_gone() {
    let mut broker = Broker::start();
    let topic = fresh_topic();
    let mut c = config(&broker, &topic);
    c.timeout = Duration::from_secs(2);
    let log = KafkaLog::open(c).await.unwrap();
    log.append(0, vec![rec(1, "kept")]).await.unwrap();
    broker.stop();
    let started = std::time::Instant::now();
    let err = log.append(0, vec![rec(2, "lost")]).await.unwrap_err();
    assert!(
        matches!(err, Error::Unavailable { partition: 0, .. }) && err.is_retryable(),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the append gave up after {:?}",
        started.elapsed()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.health(0).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "health reports the brokers unreachable"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A configuration the log cannot work with is refused before anything starts.
#[tokio::test]
async fn bad_settings_are_refused_with_a_clear_error() {
    let mut c = KafkaLogConfig {
        brokers: format!("127.0.0.1:{}", storeline_log::tansu::free_port()),
        timeout: Duration::from_secs(1),
        ..KafkaLogConfig::default()
    };
    c.properties.insert("no.such.setting".into(), "1".into());
    let err = KafkaLog::open(c.clone()).await.unwrap_err();
    assert!(err.to_string().contains("no.such.setting"), "{err}");
    c.properties.clear();
    let err = KafkaLog::open(c).await.unwrap_err();
    assert!(
        err.to_string().contains("cannot read the topic list"),
        "no broker: {err}"
    );
}
