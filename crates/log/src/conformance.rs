//! The conformance suite: the [`EventLog`](crate::EventLog) contract as tests. Every backend runs
//! all of it (`tests/conformance.rs` here; the Kafka backend will call the same functions).
//!
//! Each check gets a fresh log with at least 4 partitions from the caller's factory and panics
//! with a message naming the broken rule.

#![allow(clippy::unwrap_used)] // a test suite: a failed unwrap is a failed check

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use crate::{Error, EventLog, Record};

fn rec(ts: i64, v: impl Into<String>) -> Record {
    Record {
        timestamp: ts,
        key: Bytes::from_static(b"k"),
        value: Bytes::from(v.into()),
    }
}

/// Runs every check, each on a fresh log from `make`.
pub async fn run_all<L, F, Fut>(make: F)
where
    L: EventLog,
    F: Fn() -> Fut,
    Fut: Future<Output = L>,
{
    dense_offsets(make().await).await;
    concurrent_appends_do_not_interleave(make().await).await;
    reads(make().await).await;
    partitions_are_independent(make().await).await;
    time(make().await).await;
    watch_follows_the_tail(make().await).await;
    trim(make().await).await;
    close(make().await).await;
}

/// Rule 2: offsets start at 0 and are dense; an append's records are consecutive.
pub async fn dense_offsets<L: EventLog>(log: L) {
    let a = log
        .append(0, vec![rec(1, "a"), rec(1, "b"), rec(1, "c")])
        .await
        .unwrap();
    assert_eq!(
        (a.base_offset, a.count),
        (0, 3),
        "first append starts at offset 0"
    );
    let b = log.append(0, vec![rec(2, "d"), rec(2, "e")]).await.unwrap();
    assert_eq!(b.base_offset, 3, "the next append continues densely");
    let empty = log.append(0, vec![]).await.unwrap();
    assert_eq!(
        (empty.base_offset, empty.count),
        (5, 0),
        "an empty append is a no-op at end"
    );
    let bounds = log.bounds(0).unwrap();
    assert_eq!((bounds.start, bounds.end), (0, 5));
    let got = log.read(0, 0, 100).await.unwrap();
    let values: Vec<_> = got.iter().map(|r| r.value.clone()).collect();
    assert_eq!(
        values,
        ["a", "b", "c", "d", "e"].map(|s| Bytes::from_static(s.as_bytes()))
    );
    assert!(
        got.iter().enumerate().all(|(i, r)| r.offset == i as u64),
        "offsets are 0..5"
    );
    assert_eq!(got[0].key, Bytes::from_static(b"k"), "keys are kept");
}

/// Rules 1-2 under concurrency: many appenders, each append lands contiguously and in order.
pub async fn concurrent_appends_do_not_interleave<L: EventLog>(log: L) {
    let log = Arc::new(log);
    let mut tasks = Vec::new();
    for t in 0..16 {
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for s in 0..20 {
                let records = (0..5).map(|i| rec(0, format!("{t}/{s}/{i}"))).collect();
                acks.push((s, log.append(1, records).await.unwrap()));
            }
            (t, acks)
        }));
    }
    let mut expected = BTreeMap::new();
    for task in tasks {
        let (t, acks) = task.await.unwrap();
        for (s, ack) in acks {
            assert_eq!(ack.count, 5);
            for i in 0..5 {
                expected.insert(ack.base_offset + i, format!("{t}/{s}/{i}"));
            }
        }
    }
    assert_eq!(
        expected.len(),
        16 * 20 * 5,
        "every record got its own offset"
    );
    let mut all = Vec::new();
    while all.len() < expected.len() {
        let batch = log.read(1, all.len() as u64, 333).await.unwrap();
        assert!(
            !batch.is_empty(),
            "read below end returns at least one record"
        );
        all.extend(batch);
    }
    for r in &all {
        assert_eq!(
            std::str::from_utf8(&r.value).unwrap(),
            expected[&r.offset],
            "offset {} holds what its append was told",
            r.offset
        );
    }
    assert_eq!(log.bounds(1).unwrap().end, 1600);
}

/// Rule 4: reads by offset, limits, and out-of-range errors.
pub async fn reads<L: EventLog>(log: L) {
    let records = (0..50).map(|i| rec(i, format!("v{i}"))).collect();
    log.append(2, records).await.unwrap();
    let mid = log.read(2, 20, 5).await.unwrap();
    assert_eq!(
        mid.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![20, 21, 22, 23, 24]
    );
    assert_eq!(mid[0].value, Bytes::from_static(b"v20"));
    assert!(
        log.read(2, 50, 10).await.unwrap().is_empty(),
        "from == end reads nothing"
    );
    match log.read(2, 51, 10).await {
        Err(Error::OffsetOutOfRange {
            offset: 51,
            end: 50,
            ..
        }) => {}
        other => panic!("from > end must be OffsetOutOfRange, got {other:?}"),
    }
    assert_eq!(log.read(2, 49, 10).await.unwrap().len(), 1);
}

/// Partitions have their own offsets; unknown partitions are an error.
pub async fn partitions_are_independent<L: EventLog>(log: L) {
    assert!(log.partitions() >= 4);
    log.append(0, vec![rec(0, "p0")]).await.unwrap();
    let a = log.append(3, vec![rec(0, "p3")]).await.unwrap();
    assert_eq!(a.base_offset, 0, "each partition counts from 0");
    assert_eq!(
        log.read(3, 0, 10).await.unwrap()[0].value,
        Bytes::from_static(b"p3")
    );
    let n = log.partitions();
    assert!(matches!(
        log.append(n, vec![rec(0, "x")]).await,
        Err(Error::NoSuchPartition { .. })
    ));
    assert!(matches!(
        log.read(n, 0, 1).await,
        Err(Error::NoSuchPartition { .. })
    ));
}

/// Rule 5: timestamps never decrease; seek by time finds the first record at or after.
pub async fn time<L: EventLog>(log: L) {
    log.append(0, vec![rec(100, "a"), rec(50, "b")])
        .await
        .unwrap();
    log.append(0, vec![rec(200, "c")]).await.unwrap();
    log.append(0, vec![rec(300, "d"), rec(300, "e")])
        .await
        .unwrap();
    let stamps: Vec<i64> = log
        .read(0, 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.timestamp)
        .collect();
    assert_eq!(
        stamps,
        vec![100, 100, 200, 300, 300],
        "an older timestamp is raised to the last one"
    );
    assert_eq!(log.offset_for_time(0, 0).await.unwrap(), 0);
    assert_eq!(log.offset_for_time(0, 100).await.unwrap(), 0);
    assert_eq!(log.offset_for_time(0, 101).await.unwrap(), 2);
    assert_eq!(log.offset_for_time(0, 300).await.unwrap(), 3);
    assert_eq!(
        log.offset_for_time(0, 301).await.unwrap(),
        5,
        "past the last record: end"
    );
    assert_eq!(
        log.offset_for_time(1, 0).await.unwrap(),
        0,
        "an empty partition: end"
    );
}

/// Rule 6: watch yields end after each durable append.
pub async fn watch_follows_the_tail<L: EventLog>(log: L) {
    let log = Arc::new(log);
    let mut rx = log.watch(2).unwrap();
    assert_eq!(*rx.borrow_and_update(), 0);
    let writer = Arc::clone(&log);
    let task = tokio::spawn(async move {
        for i in 0..3 {
            writer.append(2, vec![rec(i, "x")]).await.unwrap();
        }
    });
    let reached = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            rx.changed().await.unwrap();
            if *rx.borrow_and_update() == 3 {
                break;
            }
        }
    })
    .await;
    assert!(reached.is_ok(), "watch must reach end = 3");
    task.await.unwrap();
    assert_eq!(
        log.read(2, 0, 10).await.unwrap().len(),
        3,
        "what watch announced is readable"
    );
}

/// Rule 7: trim never drops `before` or later and never renumbers.
pub async fn trim<L: EventLog>(log: L) {
    for chunk in 0..20 {
        let records = (0..50)
            .map(|i| rec(chunk, format!("{chunk}-{i}-{}", "x".repeat(200))))
            .collect();
        log.append(0, records).await.unwrap();
    }
    let start = log.trim(0, 600).await.unwrap();
    assert!(start <= 600, "trim kept offset 600 (start is {start})");
    assert_eq!(log.bounds(0).unwrap().start, start);
    let r = log.read(0, 600, 1).await.unwrap();
    assert_eq!(r[0].offset, 600);
    assert!(
        std::str::from_utf8(&r[0].value)
            .unwrap()
            .starts_with("12-0-"),
        "no renumbering"
    );
    if start > 0 {
        assert!(matches!(
            log.read(0, 0, 1).await,
            Err(Error::OffsetOutOfRange { .. })
        ));
    }
    let a = log.append(0, vec![rec(99, "after")]).await.unwrap();
    assert_eq!(a.base_offset, 1000, "appends continue after a trim");
}

/// After close, appends fail with Closed; what was acknowledged stays readable.
pub async fn close<L: EventLog>(log: L) {
    log.append(0, vec![rec(0, "before")]).await.unwrap();
    log.close().await.unwrap();
    assert!(matches!(
        log.append(0, vec![rec(0, "after")]).await,
        Err(Error::Closed)
    ));
}
