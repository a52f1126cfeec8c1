//! The sending side of `storeline bench delivery`: `bench.ping` events over keep-alive HTTP/1.1
//! connections (bench.rs's [`Conn`]), either on a fixed schedule (open loop, for latency) or
//! as fast as ingest acknowledges (closed loop, for the maximum). Every event's scheduled send
//! and ack times go into its [`Track`] slot.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::receiver::{Track, Tracks};
use crate::ingest::Conn;

/// One `bench.ping` event `<tag>-<n>`; the subject spreads the events over the partitions
/// (and over many customers, so no trigger run waits for another).
fn push_event(out: &mut Vec<u8>, tag: &str, n: usize) {
    use std::io::Write;
    let _ = write!(
        out,
        r#"{{"id":"{tag}-{n}","source":"bench","type":"bench.ping","subject":"c-{}","data":{{}}}}"#,
        n % 4096
    );
}

/// A request body with events `first..first + count` (NDJSON when more than one).
fn body(tag: &str, first: usize, count: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * 100);
    for n in first..first + count {
        push_event(&mut out, tag, n);
        if count > 1 {
            out.push(b'\n');
        }
    }
    out
}

/// Where to send and what to note.
pub(crate) struct Target<'a> {
    pub(crate) addr: &'a str,
    pub(crate) key: &'a str,
    pub(crate) tracks: &'a Arc<Tracks>,
    pub(crate) track: &'a Arc<Track>,
    pub(crate) tag: &'a str,
}

/// Sends one request of events `first..first + count` scheduled at `sched`, noting the times.
async fn send(
    conn: &mut Conn,
    tracks: &Tracks,
    track: &Track,
    tag: &str,
    first: usize,
    count: usize,
    sched: Instant,
) -> Result<()> {
    let s = tracks.clock.ns(sched);
    for slot in &track.sched[first..first + count] {
        slot.store(s, Ordering::Release);
    }
    conn.post(body(tag, first, count), count > 1).await?;
    let acked = tracks.clock.now();
    for slot in &track.acked[first..first + count] {
        slot.store(acked, Ordering::Release);
    }
    track.acked_count.fetch_add(count as u64, Ordering::AcqRel);
    Ok(())
}

/// Open loop: `rate` events/s in requests of `batch` over `conns` connections, each on its own
/// fixed schedule (staggered), for `secs`. A connection that falls behind sends late, and the
/// lateness shows in "scheduled → received". Returns how many events were sent (acked).
pub(crate) async fn open_loop(
    t: &Target<'_>,
    rate: f64,
    batch: usize,
    conns: usize,
    secs: f64,
) -> Result<usize> {
    let interval = Duration::from_secs_f64(conns as f64 * batch as f64 / rate.max(1e-3));
    let cap = t.track.len();
    let started = Instant::now() + Duration::from_millis(20);
    let end = started + Duration::from_secs_f64(secs);
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..conns {
        let mut conn = Conn::open(t.addr, t.key).await?;
        let (tracks, track) = (Arc::clone(t.tracks), Arc::clone(t.track));
        let (counter, tag) = (Arc::clone(&counter), t.tag.to_owned());
        let mut next = started + interval.mul_f64(c as f64 / conns as f64);
        tasks.push(tokio::spawn(async move {
            let mut sent = 0;
            while next < end {
                tokio::time::sleep_until(next.into()).await;
                let first = counter.fetch_add(batch as u64, Ordering::Relaxed) as usize;
                if first + batch > cap {
                    break;
                }
                send(&mut conn, &tracks, &track, &tag, first, batch, next).await?;
                sent += batch;
                next += interval;
            }
            anyhow::Ok(sent)
        }));
    }
    let mut sent = 0;
    for task in tasks {
        sent += task.await??;
    }
    Ok(sent)
}

/// Closed loop: events `0..track.len()` in requests of `batch` over `conns` connections, each
/// sending its next request when the last one is acked.
pub(crate) async fn as_fast_as_acked(t: &Target<'_>, batch: usize, conns: usize) -> Result<usize> {
    let total = t.track.len();
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut conn = Conn::open(t.addr, t.key).await?;
        let (tracks, track) = (Arc::clone(t.tracks), Arc::clone(t.track));
        let (counter, tag) = (Arc::clone(&counter), t.tag.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut sent = 0;
            loop {
                let first = counter.fetch_add(batch as u64, Ordering::Relaxed) as usize;
                if first >= total {
                    break;
                }
                let count = batch.min(total - first);
                send(
                    &mut conn,
                    &tracks,
                    &track,
                    &tag,
                    first,
                    count,
                    Instant::now(),
                )
                .await?;
                sent += count;
            }
            anyhow::Ok(sent)
        }));
    }
    let mut sent = 0;
    for task in tasks {
        sent += task.await??;
    }
    Ok(sent)
}
