//! Property tests of the engine: replay gives the same state whatever the batching and the
//! crash points; under random concurrent commands on hot SKUs, stock is never oversold and
//! reserved + available = on hand after every event of the log.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::stored;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use storeline_engine::testkit::Applier;
use storeline_engine::testkit::Views;
use storeline_engine::testkit::project;
use storeline_engine::{AppendError, Appender, Engine, EngineConfig, ProjectionConfig};
use storeline_event::Event;
use storeline_log::{EventLog, MemoryLog, Record, StoredRecord, partition_for};
use storeline_state::{SqliteStore, StateStore};

const PARTITIONS: u32 = 4;

/// Appends to a memory log the way the server does (routing by key; no dedup needed here).
struct MemAppender(Arc<MemoryLog>);

impl Appender for MemAppender {
    async fn append(
        &self,
        events: Vec<Event>,
        partition: Option<u32>,
    ) -> Result<Vec<(u32, u64)>, AppendError> {
        let mut out = Vec::new();
        let mut groups: BTreeMap<u32, Vec<(usize, Record)>> = BTreeMap::new();
        for (i, e) in events.iter().enumerate() {
            let key = e.route_key();
            let p = partition.unwrap_or_else(|| partition_for(key.as_bytes(), PARTITIONS));
            groups.entry(p).or_default().push((
                i,
                Record {
                    timestamp: e.time.timestamp_millis(),
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    value: Bytes::from(e.to_stored_json(chrono::Utc::now())),
                },
            ));
        }
        out.resize(events.len(), (0, 0));
        for (p, recs) in groups {
            let idx: Vec<usize> = recs.iter().map(|r| r.0).collect();
            let ack = self
                .0
                .append(p, recs.into_iter().map(|r| r.1).collect())
                .await
                .map_err(|e| AppendError::unavailable("log", e.to_string()))?;
            for (n, i) in idx.into_iter().enumerate() {
                out[i] = (p, ack.base_offset + n as u64);
            }
        }
        Ok(out)
    }
}

/// A random but plausible history touching every projection: browsing, carts, identities,
/// consent, orders through their whole life, stock, returns and unmerges.
fn history(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n);
    let mut time = 1_767_225_600_000i64;
    let mut orders = 0usize;
    for i in 0..n {
        time += rng.random_range(0..4_000_000);
        let c = format!("cus-{}", rng.random_range(0..12));
        let a = format!("anon-{}", rng.random_range(0..12));
        let sku = format!("SKU-{}", rng.random_range(0..5));
        let loc = ["main", "north"][rng.random_range(0..2)];
        let order = format!("ord-{}", rng.random_range(0..orders.max(1)));
        let category = ["shoes", "hats"][i % 2];
        let plan = ["gold", "free"][i % 2];
        let e = match rng.random_range(0..16) {
            0 => stored(i, "page.viewed", &a, time, json!({ "url": "/x" })),
            1 => stored(
                i,
                "product.viewed",
                &a,
                time,
                json!({ "product_id": "p", "category": category }),
            ),
            2 => stored(
                i,
                "cart.item_added",
                &c,
                time,
                json!({ "sku": sku, "quantity": 1, "unit_price": { "amount": 500, "currency": "EUR" } }),
            ),
            3 => stored(
                i,
                "cart.item_removed",
                &c,
                time,
                json!({ "sku": sku, "quantity": 1 }),
            ),
            4 => stored(
                i,
                "customer.identified",
                &c,
                time,
                json!({ "user_id": c, "anonymous_id": a, "email": format!("{c}@x.io"), "traits": { "plan": plan } }),
            ),
            5 => stored(
                i,
                "customer.consent_changed",
                &c,
                time,
                json!({ "channel": "email", "granted": i % 3 == 0 }),
            ),
            6 | 7 => {
                orders += 1;
                stored(
                    i,
                    "order.placed",
                    &c,
                    time,
                    json!({ "order_id": format!("ord-{}", orders - 1), "customer_id": c,
                    "lines": [{ "sku": sku, "quantity": 2, "unit_price": { "amount": 700, "currency": "EUR" } }],
                    "total": { "amount": 1400, "currency": "EUR" } }),
                )
            }
            8 => stored(i, "order.paid", &c, time, json!({ "order_id": order })),
            9 => stored(i, "order.cancelled", &c, time, json!({ "order_id": order })),
            10 => stored(
                i,
                "order.refunded",
                &c,
                time,
                json!({ "order_id": order, "amount": { "amount": 300, "currency": "EUR" } }),
            ),
            11 => stored(
                i,
                "inventory.adjusted",
                &sku,
                time,
                json!({ "sku": sku, "location": loc, "delta": rng.random_range(-3..10) }),
            ),
            12 => stored(
                i,
                "inventory.reserved",
                &sku,
                time,
                json!({ "sku": sku, "location": loc, "quantity": 1, "order_id": order }),
            ),
            13 => stored(
                i,
                "inventory.released",
                &sku,
                time,
                json!({ "sku": sku, "location": loc, "quantity": 1, "order_id": order }),
            ),
            14 => stored(
                i,
                "return.received",
                &c,
                time,
                json!({ "order_id": order, "lines": [{ "sku": sku, "quantity": 1 }] }),
            ),
            _ => stored(i, "customer.unmerged", &a, time, json!({ "identity": a })),
        };
        out.push(e);
    }
    out
}

/// Splits the history over partitions (round robin by index: ownership must not matter for
/// determinism) as stored records.
fn partitioned(events: &[Vec<u8>]) -> BTreeMap<u32, Vec<StoredRecord>> {
    let mut parts: BTreeMap<u32, Vec<StoredRecord>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        let p = (i % 3) as u32;
        let v = parts.entry(p).or_default();
        v.push(StoredRecord {
            offset: v.len() as u64,
            timestamp: 0,
            key: Bytes::new(),
            value: Bytes::from(e.clone()),
        });
    }
    parts
}

async fn fresh(dir: &tempfile::TempDir, name: &str) -> Arc<SqliteStore> {
    Arc::new(SqliteStore::open(&dir.path().join(name)).await.unwrap())
}

/// Applies each partition's records in chunks cut at `cuts`, and "crashes" (drops the applier
/// without committing its last chunk, then resumes from the store) where `crash` says.
async fn fold(
    store: Arc<SqliteStore>,
    parts: &BTreeMap<u32, Vec<StoredRecord>>,
    cuts: &[usize],
    crash: &[bool],
) {
    let cfg = ProjectionConfig::default();
    for (&p, recs) in parts {
        let mut a = Applier::new(p, store.clone(), cfg.clone(), 0);
        let mut i = 0;
        let mut k = 0;
        let mut just_crashed = false;
        while i < recs.len() {
            let len = cuts[k % cuts.len()].max(1).min(recs.len() - i);
            a.apply(&recs[i..i + len]).await.unwrap();
            if crash[k % crash.len()] && !just_crashed {
                just_crashed = true;
                // Lost before commit: a new writer resumes from the store's offset.
                let committed = store.offsets().await.unwrap().get(&p).copied().unwrap_or(0);
                a = Applier::new(p, store.clone(), cfg.clone(), committed);
                i = committed as usize;
            } else {
                just_crashed = false;
                a.commit().await.unwrap();
                i += len;
            }
            k += 1;
        }
        a.commit().await.unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Same log, any batching and any crash points: the same state, byte for byte.
    #[test]
    fn replay_is_deterministic_whatever_the_batching(seed in 0u64..1_000_000, n in 50usize..400,
            cuts in proptest::collection::vec(1usize..60, 1..8),
            crash in proptest::collection::vec(proptest::bool::weighted(0.2), 1..8)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let parts = partitioned(&history(seed, n));
            let one = fresh(&dir, "one.db").await;
            fold(one.clone(), &parts, &[usize::MAX], &[false]).await;
            let split = fresh(&dir, "split.db").await;
            fold(split.clone(), &parts, &cuts, &crash).await;
            let a = storeline_state::digest(&*one).await.unwrap();
            let b = storeline_state::digest(&*split).await.unwrap();
            assert!(a.rows > 0);
            assert_eq!(a, b, "batching or crashes changed the state");
        });
    }
}

/// Folds the commerce partition event by event, checking the stock invariants after each.
fn check_every_offset(records: &[StoredRecord], partition: u32) -> usize {
    let cfg = ProjectionConfig::default();
    let mut views = Views::new(partition);
    let mut out = Vec::new();
    let mut checked = 0;
    for r in records {
        let ev = storeline_engine::Ev::parse(&r.value, partition, r.offset).unwrap();
        project::apply(&mut views, &ev, &cfg, &mut out).expect("no sum overflows");
        if ev.ty.starts_with("inventory.") || ev.ty.starts_with("return.") {
            let sku = ev.str("sku").map(str::to_owned);
            for s in sku.into_iter() {
                let stock = views.inv.get(&s).unwrap();
                for (loc, l) in &stock.locations {
                    assert!(
                        l.available() >= 0,
                        "oversold {s}@{loc} at offset {}: {l:?}",
                        r.offset
                    );
                    assert!(
                        l.reserved >= 0,
                        "negative reservation {s}@{loc} at offset {}",
                        r.offset
                    );
                    assert_eq!(l.reserved + l.available(), l.on_hand);
                }
                checked += 1;
            }
        }
    }
    checked
}

/// 64 clients on 3 hot SKUs: places, cancels, pays, restocks and lapsing holds, all at once.
#[test]
fn concurrent_commands_never_oversell() {
    common::runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(MemoryLog::new(PARTITIONS));
        let store = fresh(&dir, "live.db").await;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let cfg = EngineConfig {
            reservation_ttl: Duration::from_millis(300),
            ..EngineConfig::default()
        };
        let engine = Arc::new(Engine::start(log.clone(), store.clone(), Arc::new(MemAppender(log.clone())), cfg, stop_rx).await.unwrap());
        for sku in ["HOT-0", "HOT-1", "HOT-2"] {
            engine.command("inventory.adjust", &json!({ "sku": sku, "location": "main", "delta": 40 }), None).await.unwrap();
            engine.command("inventory.adjust", &json!({ "sku": sku, "location": "north", "delta": 20 }), None).await.unwrap();
        }
        let mut tasks = Vec::new();
        for client in 0..64u64 {
            let engine = engine.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(client);
                let (mut ok, mut short) = (0u32, 0u32);
                for n in 0..25 {
                    let id = format!("o-{client}-{n}");
                    let lines: Vec<Value> = (0..rng.random_range(1..3))
                        .map(|_| json!({ "sku": format!("HOT-{}", rng.random_range(0..3)), "quantity": rng.random_range(1..4), "unit_price": 100 }))
                        .collect();
                    match engine.command("order.place", &json!({ "order_id": id, "customer_id": format!("c{client}"), "currency": "EUR", "lines": lines }), Some(id.clone())).await {
                        Ok(_) => {
                            ok += 1;
                            match rng.random_range(0..4) {
                                0 => { engine.command("order.cancel", &json!({ "order_id": id }), None).await.unwrap(); }
                                1 => { engine.command("order.pay", &json!({ "order_id": id }), None).await.unwrap(); }
                                2 => {
                                    engine.command("order.pay", &json!({ "order_id": id }), None).await.unwrap();
                                    engine.command("order.ship", &json!({ "order_id": id }), None).await.unwrap();
                                }
                                _ => {} // left unpaid: its hold lapses
                            }
                        }
                        Err(storeline_engine::CommandError::InsufficientStock(_)) => short += 1,
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                    if n % 7 == 0 {
                        let sku = format!("HOT-{}", rng.random_range(0..3));
                        let _ = engine.command("inventory.adjust", &json!({ "sku": sku, "delta": rng.random_range(-5..6) }), None).await;
                    }
                }
                (ok, short)
            }));
        }
        let (mut ok, mut short) = (0, 0);
        for t in tasks {
            let (o, s) = t.await.unwrap();
            ok += o;
            short += s;
        }
        assert!(ok > 50 && short > 0, "the test must both succeed and run out of stock: ok {ok}, short {short}");
        // Let the unpaid holds lapse, then wait for the views.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let commerce = engine.commerce_partition();
        let end = log.bounds(commerce).unwrap().end;
        assert!(engine.wait_applied(commerce, end - 1, Duration::from_secs(10)).await);
        let records = log.read(commerce, 0, usize::MAX).await.unwrap();
        let checked = check_every_offset(&records, commerce);
        assert!(checked > 100, "checked {checked}");
        for sku in ["HOT-0", "HOT-1", "HOT-2"] {
            let v = storeline_engine::read::inventory(&*store, sku, 5).await.unwrap().unwrap();
            let (h, r, a) = (v["on_hand"].as_i64().unwrap(), v["reserved"].as_i64().unwrap(), v["available"].as_i64().unwrap());
            assert!(a >= 0 && r >= 0 && r + a == h, "{sku}: {v}");
        }
        // Every hold left is for a paid order (unpaid ones lapsed).
        let rows = store.scan("resv", "", None, 100_000).await.unwrap();
        for row in rows {
            let o = storeline_engine::read::order(&*store, &row.key).await.unwrap().unwrap();
            assert_ne!(o["status"], "placed", "unpaid order {} still holds stock", row.key);
        }
        stop.send_replace(true);
        engine.join().await;
        // The live views equal a replay of the whole log.
        let replayed = fresh(&dir, "replay.db").await;
        let until: BTreeMap<u32, u64> = store.offsets().await.unwrap();
        storeline_engine::replay(log.clone(), replayed.clone(), &ProjectionConfig::default(), &until, 1000, &|_| {}).await.unwrap();
        assert_eq!(storeline_state::digest(&*store).await.unwrap(), storeline_state::digest(&*replayed).await.unwrap());
    });
}

/// `linger`: a writer whose last batch was moments ago gathers a few more records before it
/// applies them, while a writer that was idle for longer, or one with a backlog, applies at
/// once. The linger here is long (5 s) so that the checks need no tight timing.
#[test]
fn a_busy_writer_lingers_but_an_idle_one_or_a_backlog_applies_at_once() {
    common::runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(MemoryLog::new(PARTITIONS));
        let store = fresh(&dir, "linger.db").await;
        let (_stop, stop_rx) = tokio::sync::watch::channel(false);
        let linger = Duration::from_secs(5);
        let cfg = EngineConfig {
            linger,
            ..EngineConfig::default()
        };
        let engine = Engine::start(
            log.clone(),
            store,
            Arc::new(MemAppender(log.clone())),
            cfg,
            stop_rx,
        )
        .await
        .unwrap();
        let p = (engine.commerce_partition() + 1) % PARTITIONS;
        let record = |n: usize| Record {
            timestamp: 1_000,
            key: Bytes::from_static(b"cus-1"),
            value: Bytes::from(stored(
                n,
                "page.viewed",
                "cus-1",
                1_000,
                json!({ "url": "/" }),
            )),
        };

        // A writer that has applied nothing yet applies at once.
        log.append(p, vec![record(0)]).await.unwrap();
        assert!(
            engine.wait_applied(p, 0, Duration::from_secs(4)).await,
            "a first record waited"
        );
        // Right after a batch, a lone record waits for the linger.
        log.append(p, vec![record(1)]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(engine.applied()[p as usize], 1, "a busy writer lingers");
        assert!(
            engine.wait_applied(p, 1, Duration::from_secs(10)).await,
            "the linger ends"
        );
        // Idle for longer than the linger: the next record is applied at once.
        tokio::time::sleep(linger + Duration::from_millis(500)).await;
        log.append(p, vec![record(2)]).await.unwrap();
        assert!(
            engine.wait_applied(p, 2, Duration::from_secs(4)).await,
            "an idle writer waited"
        );
        // A backlog right after a batch is applied at once too.
        log.append(p, (3..300).map(record).collect()).await.unwrap();
        assert!(
            engine.wait_applied(p, 299, Duration::from_secs(4)).await,
            "a backlog waited"
        );
    });
}
