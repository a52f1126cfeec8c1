//! Phases 3 and 4 of `storeline bench engine`, commands in-process (no HTTP): `order.place`
//! open loop at a fixed rate with latency from each command's scheduled start, then many
//! clients placing, cancelling, paying and abandoning orders on a few hot SKUs, followed by the
//! oversell check against the orders' own account.
//!
//! Why open loop: a closed loop slows down with the system and hides queueing; here a stall
//! delays every command scheduled behind it, and the percentiles show it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use storeline_engine::{CommandError, Engine};

use super::phases::{Ctx, Figures, St};
use storeline_state::StateStore;

use super::support::{percentile, spinner, wait_caught_up};

/// Sets `n` SKUs' on-hand stock through the engine, all at once (commands batch).
async fn stock(engine: &Engine<St>, skus: &[String], on_hand: i64) -> Result<()> {
    let bodies: Vec<Value> = skus
        .iter()
        .map(|s| json!({ "sku": s, "set": on_hand, "reason": "bench" }))
        .collect();
    let results = futures::future::join_all(
        bodies
            .iter()
            .map(|b| engine.command("inventory.adjust", b, None)),
    )
    .await;
    for r in results {
        r.map_err(|e| anyhow!("stocking a SKU failed: {}", e.describe().1))?;
    }
    Ok(())
}

fn place_body(
    order_id: String,
    customer: u64,
    lines: Vec<(String, i64)>,
    ttl: Option<&str>,
) -> Value {
    let lines: Vec<Value> = lines
        .into_iter()
        .map(|(sku, q)| json!({ "sku": sku, "quantity": q, "unit_price": 1999 }))
        .collect();
    let mut b = json!({ "order_id": order_id, "customer_id": format!("bench-c{customer}"), "currency": "EUR", "lines": lines });
    if let (Some(t), Some(m)) = (ttl, b.as_object_mut()) {
        m.insert("reservation_ttl".into(), t.into());
    }
    b
}

/// The highest `(partition, offset)` among a command's events.
fn last_position(events: &[Value]) -> Option<(u32, u64)> {
    events
        .iter()
        .filter_map(|e| {
            Some((
                e.get("partition")?.as_u64()? as u32,
                e.get("offset")?.as_u64()?,
            ))
        })
        .max_by_key(|x| x.1)
}

/// Phase 3: `order.place` open loop at `ctx.rate` per second; latency from each command's
/// scheduled start, so queueing counts.
pub async fn command_latency(ctx: &Ctx, f: &mut Figures) -> Result<()> {
    let mut rig = ctx.start("cmd").await?;
    let skus: Vec<String> = (0..1000).map(|i| format!("BENCH-{i:04}")).collect();
    stock(&rig.engine, &skus, 1_000_000_000).await?;
    let skus = Arc::new(skus);
    // Warm-up (not counted): connections, caches, the SKUs' rows.
    let warm = (0..200).map(|i| {
        let body = place_body(
            format!("warm-{i}"),
            i,
            vec![(skus[i as usize % 1000].clone(), 1)],
            None,
        );
        let e = rig.engine.clone();
        async move { e.command("order.place", &body, None).await }
    });
    futures::future::join_all(warm).await;
    wait_caught_up(&*rig.log, &rig.engine, Duration::from_secs(30)).await;
    // Calibration: one store read of one missing key, every 10 ms, nothing else running: what
    // the commerce writer pays per row it has not cached (e.g. a new order id).
    let commerce = rig.engine.commerce_partition();
    let mut rtt = Vec::with_capacity(100);
    for i in 0..100 {
        let t = Instant::now();
        rig.store
            .inner
            .get_owned("order", commerce, &[format!("probe-{i}")])
            .await
            .map_err(|e| anyhow!("probing the store: {e}"))?;
        rtt.push(t.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rtt.sort_by(f64::total_cmp);
    f.read_p50 = percentile(&rtt, 0.5);
    f.read_p99 = percentile(&rtt, 0.99);

    let n = ctx.rate * ctx.seconds;
    let bar = spinner(&format!(
        "{}: order.place at {}/s for {} s",
        ctx.backend.name(),
        ctx.rate,
        ctx.seconds
    ));
    rig.mark();
    // The same probe, every 10 ms while the load runs (straight to the store, not counted in
    // the breakdown), to tell a slow store from a busy writer.
    let probing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let probe = {
        let (store, probing) = (rig.store.clone(), probing.clone());
        tokio::spawn(async move {
            let mut v = Vec::new();
            let mut i = 0u64;
            while probing.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let t = Instant::now();
                let _ = store
                    .inner
                    .get_owned("order", commerce, &[format!("probe-l{i}")])
                    .await;
                v.push(t.elapsed().as_secs_f64() * 1e3);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            v
        })
    };
    // The schedule runs on its own OS thread: `std::thread::sleep` wakes within ~0.1 ms, where
    // tokio's timer (1 ms granularity) would start each command up to a millisecond late and
    // count that as latency. What lag remains is reported.
    let start = Instant::now() + Duration::from_millis(10);
    let (rate, runtime) = (ctx.rate.max(1), tokio::runtime::Handle::current());
    let (engine, skus_all) = (rig.engine.clone(), skus.clone());
    let (handles, mut lag) = tokio::task::spawn_blocking(move || {
        let mut handles = Vec::with_capacity(n as usize);
        let mut lag = Vec::with_capacity(n as usize);
        for i in 0..n {
            let at = start + Duration::from_nanos(i * 1_000_000_000 / rate);
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            lag.push(at.elapsed().as_secs_f64() * 1e3);
            let (engine, skus) = (engine.clone(), skus_all.clone());
            handles.push(runtime.spawn(async move {
                let lines = (0..1 + i % 3)
                    .map(|k| {
                        (
                            skus[((i * 7919 + k * 104_729) % 1000) as usize].clone(),
                            1 + ((i / 3) % 3) as i64,
                        )
                    })
                    .collect();
                let body = place_body(format!("o-{i}"), i % 5000, lines, None);
                let r = engine.command("order.place", &body, None).await;
                let done = at.elapsed().as_secs_f64() * 1e3;
                let visible = match &r {
                    Ok(o) => match last_position(&o.events) {
                        Some((p, off)) => {
                            engine.wait_applied(p, off, Duration::from_secs(30)).await;
                            Some(at.elapsed().as_secs_f64() * 1e3)
                        }
                        None => None,
                    },
                    Err(_) => None,
                };
                (done, r.is_ok(), visible)
            }));
        }
        (handles, lag)
    })
    .await?;
    let mut lat = Vec::with_capacity(handles.len());
    let mut vis = Vec::with_capacity(handles.len());
    let mut errors = 0;
    for h in handles {
        let (ms, ok, v) = h.await?;
        if ok {
            lat.push(ms);
        } else {
            errors += 1;
        }
        vis.extend(v);
    }
    probing.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut loaded = probe.await?;
    loaded.sort_by(f64::total_cmp);
    f.read_load_p50 = percentile(&loaded, 0.5);
    lag.sort_by(f64::total_cmp);
    f.timer_lag_p50 = percentile(&lag, 0.5);
    f.timer_lag_p99 = percentile(&lag, 0.99);
    let secs = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    f.cmd = rig.breakdown();
    lat.sort_by(f64::total_cmp);
    vis.sort_by(f64::total_cmp);
    f.cmd_p50 = percentile(&lat, 0.5);
    f.cmd_p99 = percentile(&lat, 0.99);
    f.cmd_max = lat.last().copied().unwrap_or(0.0);
    f.cmd_rate = lat.len() as f64 / secs;
    f.cmd_errors = errors;
    f.visible_p99 = percentile(&vis, 0.99);
    rig.stop().await;
    ctx.release(&rig.store.inner, rig.name).await;
    Ok(())
}

/// A successful hot-SKU order: id, whether it has the short TTL, and (SKU index, quantity)
/// per line.
type Placed = (String, bool, Vec<(usize, i64)>);

/// One hot-SKU client's tally.
#[derive(Default)]
struct Tally {
    commands: u64,
    /// Commands carried out (events appended), as opposed to rejected.
    accepted: u64,
    placed: u64,
    insufficient: u64,
    other: u64,
    first_other: Option<String>,
    place_ms: Vec<f64>,
    /// Successful orders: id, short TTL, and (SKU index, quantity) per line.
    orders: Vec<Placed>,
}

/// Phase 4: `ctx.clients` clients place, cancel, pay and abandon orders on `ctx.hot_skus` SKUs;
/// afterwards no SKU may have given out more than it had.
pub async fn hot_skus(ctx: &Ctx, f: &mut Figures) -> Result<()> {
    let mut rig = ctx.start("hot").await?;
    let skus: Vec<String> = (0..ctx.hot_skus).map(|i| format!("HOT-{i:02}")).collect();
    stock(&rig.engine, &skus, ctx.hot_stock).await?;
    let skus = Arc::new(skus);
    let bar = spinner(&format!(
        "{}: {} clients on {} hot SKUs for {} s",
        ctx.backend.name(),
        ctx.clients,
        ctx.hot_skus,
        ctx.seconds
    ));
    rig.mark();
    let deadline = Instant::now() + Duration::from_secs(ctx.seconds);
    let clients: Vec<_> = (0..ctx.clients)
        .map(|c| {
            let engine = rig.engine.clone();
            let skus = skus.clone();
            let seed = ctx.seed ^ ((c as u64 + 1) << 32) ^ ctx.run as u64;
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let mut t = Tally::default();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    let order_id = format!("hot-{c}-{n}");
                    let lines: Vec<(usize, i64)> = (0..rng.random_range(1..=2))
                        .map(|_| (rng.random_range(0..skus.len()), rng.random_range(1..=3)))
                        .collect();
                    let short = rng.random_bool(0.1);
                    let body = place_body(
                        order_id.clone(),
                        c as u64,
                        lines.iter().map(|(s, q)| (skus[*s].clone(), *q)).collect(),
                        short.then_some("1s"),
                    );
                    let started = Instant::now();
                    let r = engine.command("order.place", &body, None).await;
                    t.commands += 1;
                    match r {
                        Ok(_) => {
                            t.place_ms.push(started.elapsed().as_secs_f64() * 1e3);
                            t.placed += 1;
                            t.accepted += 1;
                            t.orders.push((order_id.clone(), short, lines));
                            if short {
                                continue; // left unpaid: its hold lapses while others run
                            }
                            let next = if rng.random_bool(0.2) {
                                "order.cancel"
                            } else {
                                "order.pay"
                            };
                            let r = engine
                                .command(next, &json!({ "order_id": order_id }), None)
                                .await;
                            t.commands += 1;
                            if r.is_ok() {
                                t.accepted += 1;
                            }
                            if let Err(e) = r {
                                t.other += 1;
                                t.first_other
                                    .get_or_insert_with(|| format!("{next}: {}", e.describe().1));
                            }
                        }
                        Err(CommandError::InsufficientStock(_)) => t.insufficient += 1,
                        Err(e) => {
                            t.other += 1;
                            t.first_other
                                .get_or_insert_with(|| format!("order.place: {}", e.describe().1));
                        }
                    }
                }
                t
            })
        })
        .collect();
    let mut all = Tally::default();
    for h in clients {
        let t = h.await?;
        all.commands += t.commands;
        all.accepted += t.accepted;
        all.placed += t.placed;
        all.insufficient += t.insufficient;
        all.other += t.other;
        if all.first_other.is_none() {
            all.first_other = t.first_other;
        }
        all.place_ms.extend(t.place_ms);
        all.orders.extend(t.orders);
    }
    f.hot = rig.breakdown();
    let secs = f.hot.wall;
    f.hot_rate = all.commands as f64 / secs;
    f.hot_accepted_rate = all.accepted as f64 / secs;
    f.hot_placed = all.placed;
    f.hot_insufficient = all.insufficient;
    all.place_ms.sort_by(f64::total_cmp);
    f.hot_place_p99 = percentile(&all.place_ms, 0.99);
    if all.other > 0 {
        f.hot_problems.push(format!(
            "{} commands failed otherwise, e.g. {}",
            all.other,
            all.first_other.unwrap_or_default()
        ));
    }

    // Let the 1 s holds lapse (the commerce writer checks every 250 ms), then let views catch up.
    bar.set_message(format!(
        "{}: waiting for holds to lapse and views to catch up",
        ctx.backend.name()
    ));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    if !wait_caught_up(&*rig.log, &rig.engine, Duration::from_secs(60)).await {
        f.hot_problems
            .push("the views did not catch up within 60 s".into());
    }
    bar.set_message(format!(
        "{}: checking {} orders",
        ctx.backend.name(),
        all.orders.len()
    ));
    let store = rig.store.clone();
    let statuses: Vec<Result<(usize, String)>> =
        futures::stream::iter(all.orders.iter().enumerate())
            .map(|(i, (id, _, _))| {
                let store = store.clone();
                async move {
                    let o = storeline_engine::read::order(&*store, id)
                        .await
                        .map_err(|e| anyhow!("reading order {id}: {e}"))?;
                    let status = o
                        .as_ref()
                        .and_then(|o| o["status"].as_str())
                        .unwrap_or("missing")
                        .to_owned();
                    Ok((i, status))
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
    let mut held = vec![0i64; skus.len()];
    let mut unexpired = 0;
    for r in statuses {
        let (i, status) = r?;
        let (id, short, lines) = &all.orders[i];
        match status.as_str() {
            "cancelled" => f.hot_expired += u64::from(*short),
            "placed" | "paid" => {
                for (s, q) in lines {
                    held[*s] += q;
                }
                if *short {
                    unexpired += 1;
                }
            }
            other => f
                .hot_problems
                .push(format!("order {id} has status {other}")),
        }
    }
    if unexpired > 0 {
        f.hot_problems.push(format!(
            "{unexpired} unpaid 1 s holds had not lapsed 2.5 s after the load"
        ));
    }
    let mut oversold = 0;
    for (i, sku) in skus.iter().enumerate() {
        let v = storeline_engine::read::inventory(&*store, sku, 5)
            .await
            .map_err(|e| anyhow!("reading {sku}: {e}"))?
            .ok_or_else(|| anyhow!("{sku} has no stock row"))?;
        let get = |k: &str| v[k].as_i64().unwrap_or(i64::MIN);
        let (on_hand, reserved, available) = (get("on_hand"), get("reserved"), get("available"));
        // Stock given out to live orders beyond what there was, by the orders' own account.
        oversold += (held[i] - ctx.hot_stock).max(0);
        if available < 0 {
            f.hot_problems
                .push(format!("{sku}: available {available} < 0"));
        }
        if reserved + available != on_hand || on_hand != ctx.hot_stock {
            f.hot_problems.push(format!(
                "{sku}: on_hand {on_hand}, reserved {reserved}, available {available} (stocked {})",
                ctx.hot_stock
            ));
        }
        if reserved != held[i] {
            f.hot_problems.push(format!(
                "{sku}: the view reserves {reserved}, live orders hold {}",
                held[i]
            ));
        }
        let negative = v["locations"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|l| l["available"].as_i64().unwrap_or(0) < 0);
        if negative {
            f.hot_problems
                .push(format!("{sku}: a location has negative availability"));
        }
    }
    f.hot_oversold = oversold;
    bar.finish_and_clear();
    rig.stop().await;
    ctx.release(&rig.store.inner, rig.name).await;
    Ok(())
}
