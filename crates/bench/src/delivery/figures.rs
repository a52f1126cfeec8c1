//! Turning a scenario's [`Track`] and the server's own counters into figures: latency
//! percentiles, the steady delivery rate, a per-stage breakdown from sampled deliveries'
//! attempt records, and deltas of the server's `/metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

use super::receiver::{Track, Tracks};

/// Percentiles of a set of durations in ns.
pub(crate) struct Dist {
    sorted: Vec<u64>,
}

impl Dist {
    pub(crate) fn new(mut v: Vec<u64>) -> Dist {
        v.sort_unstable();
        Dist { sorted: v }
    }
    /// The `p` quantile in ms (0 when empty).
    pub(crate) fn ms(&self, p: f64) -> f64 {
        if self.sorted.is_empty() {
            return 0.0;
        }
        let i = ((self.sorted.len() as f64 - 1.0) * p).round() as usize;
        self.sorted[i] as f64 / 1e6
    }
    /// The `i`-th smallest in ms.
    pub(crate) fn nth_ms(&self, i: usize) -> Option<f64> {
        self.sorted.get(i).map(|&v| v as f64 / 1e6)
    }
    /// "p50/p90/p99/max" in ms.
    pub(crate) fn row(&self) -> String {
        format!(
            "{:>7.2} {:>7.2} {:>7.2} {:>8.2}",
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(1.0)
        )
    }
}

/// Latency figures of events `0..sent` of a track.
pub(crate) struct Latency {
    pub(crate) received: usize,
    pub(crate) duplicates: u64,
    /// Ingest ack → received.
    pub(crate) e2e: Dist,
    /// Scheduled send → received.
    pub(crate) from_sched: Dist,
    /// Scheduled send → ingest ack.
    pub(crate) ack: Dist,
    /// Deliveries that arrived before this process had read the ingest answer (counted as 0).
    pub(crate) before_ack: usize,
}

pub(crate) fn latency(track: &Track, sent: usize) -> Latency {
    let (mut e2e, mut from_sched, mut ack) = (Vec::new(), Vec::new(), Vec::new());
    let mut before_ack = 0;
    let mut received = 0;
    for n in 0..sent.min(track.len()) {
        let s = track.sched[n].load(Ordering::Acquire);
        let a = track.acked[n].load(Ordering::Acquire);
        let r = track.arrived[n].load(Ordering::Acquire);
        if a != 0 && s != 0 {
            ack.push(a.saturating_sub(s));
        }
        if r == 0 {
            continue;
        }
        received += 1;
        if a != 0 {
            if r < a {
                before_ack += 1;
            }
            e2e.push(r.saturating_sub(a));
        }
        if s != 0 {
            from_sched.push(r.saturating_sub(s));
        }
    }
    Latency {
        received,
        duplicates: track.duplicates.load(Ordering::Relaxed),
        e2e: Dist::new(e2e),
        from_sched: Dist::new(from_sched),
        ack: Dist::new(ack),
        before_ack,
    }
}

/// The maximum scenario's figures: arrivals per second between 10% and 90% of them, and the
/// spans of sending and of the whole run.
pub(crate) struct Throughput {
    pub(crate) received: usize,
    pub(crate) steady_per_s: f64,
    pub(crate) ingest_per_s: f64,
    pub(crate) send_span: Duration,
    /// First scheduled send → last arrival.
    pub(crate) total: Duration,
    /// Last ack → last arrival: the backlog the worker still had when ingest was done.
    pub(crate) drain: Duration,
}

pub(crate) fn throughput(track: &Track, sent: usize) -> Throughput {
    let load = |v: &[std::sync::atomic::AtomicU64]| -> Vec<u64> {
        v[..sent.min(v.len())]
            .iter()
            .map(|a| a.load(Ordering::Acquire))
            .filter(|&t| t != 0)
            .collect()
    };
    let mut arr = load(&track.arrived);
    arr.sort_unstable();
    let first_sched = load(&track.sched).into_iter().min().unwrap_or(0);
    let last_ack = load(&track.acked).into_iter().max().unwrap_or(0);
    let last_arr = arr.last().copied().unwrap_or(0);
    let steady_per_s = if arr.len() >= 10 {
        let (i, j) = (arr.len() / 10, arr.len() * 9 / 10);
        let span = (arr[j] - arr[i]) as f64 / 1e9;
        (j - i) as f64 / span.max(1e-9)
    } else {
        0.0
    };
    let send_span = Duration::from_nanos(last_ack.saturating_sub(first_sched));
    Throughput {
        received: arr.len(),
        steady_per_s,
        ingest_per_s: sent as f64 / send_span.as_secs_f64().max(1e-9),
        send_span,
        total: Duration::from_nanos(last_arr.saturating_sub(first_sched)),
        drain: Duration::from_nanos(last_arr.saturating_sub(last_ack)),
    }
}

/// Where the time of sampled deliveries went, from their stored attempt records (ms
/// resolution, wall clock): ack → the attempt started (engine apply and commit, the worker's
/// intake and dispatch) and attempt start → received (the webhook POST itself).
pub(crate) struct Breakdown {
    pub(crate) samples: usize,
    pub(crate) to_attempt: Dist,
    pub(crate) attempt_to_recv: Dist,
    pub(crate) attempt_ms: Dist,
    pub(crate) retried: usize,
}

/// Looks up (at most `max`) sampled deliveries with `GET /v1/deliveries/{id}`.
pub(crate) async fn breakdown(
    addr: &str,
    key: &str,
    tracks: &Tracks,
    track: &Track,
    max: usize,
) -> Breakdown {
    let samples: Vec<(usize, String)> = {
        let s = track.samples.lock().unwrap_or_else(|e| e.into_inner());
        let step = (s.len() / max.max(1)).max(1);
        s.iter().step_by(step).take(max).cloned().collect()
    };
    // The server stamps attempts with the wall clock; map this process's monotonic times to it
    // as of now, so a clock step since the start does not shift the figures.
    let skew = chrono::Utc::now().timestamp_micros() as f64 / 1000.0
        - tracks.clock.wall_ms(tracks.clock.now());
    let wall = |ns: u64| tracks.clock.wall_ms(ns) + skew;
    let client = reqwest::Client::new();
    let (mut to_attempt, mut attempt_to_recv, mut attempt_ms) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut retried = 0;
    let mut n = 0;
    for (slot, id) in samples {
        let Ok(resp) = client
            .get(format!("http://{addr}/v1/deliveries/{id}"))
            .bearer_auth(key)
            .send()
            .await
        else {
            continue;
        };
        let Ok(v) = resp.json::<Value>().await else {
            continue;
        };
        let Some(last) = v["attempt_log"].as_array().and_then(|a| a.last()) else {
            continue;
        };
        let Some(at) = last["at"]
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp_millis() as f64)
        else {
            continue;
        };
        n += 1;
        if last["n"].as_u64().unwrap_or(1) > 1 {
            retried += 1;
        }
        let acked = track.acked[slot].load(Ordering::Acquire);
        let arrived = track.arrived[slot].load(Ordering::Acquire);
        let ms_to_ns = |ms: f64| (ms.max(0.0) * 1e6) as u64;
        if acked != 0 {
            to_attempt.push(ms_to_ns(at - wall(acked)));
        }
        attempt_to_recv.push(ms_to_ns(wall(arrived) - at));
        attempt_ms.push(ms_to_ns(last["duration_ms"].as_f64().unwrap_or(0.0)));
    }
    Breakdown {
        samples: n,
        to_attempt: Dist::new(to_attempt),
        attempt_to_recv: Dist::new(attempt_to_recv),
        attempt_ms: Dist::new(attempt_ms),
        retried,
    }
}

/// A `/metrics` scrape: every sample line, by its full name with labels.
#[derive(Default, Clone)]
pub(crate) struct Scrape {
    pub(crate) text: String,
    values: BTreeMap<String, f64>,
}

impl Scrape {
    pub(crate) async fn take(addr: &str) -> Scrape {
        let text = match reqwest::get(format!("http://{addr}/metrics")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let values = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect();
        Scrape { text, values }
    }

    /// The sum of the samples named `name` (any labels).
    pub(crate) fn sum(&self, name: &str) -> f64 {
        self.values
            .iter()
            .filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
            .map(|(_, v)| v)
            .sum()
    }

    /// Cumulative bucket counts of histogram `name` (summed over its other labels), by `le`.
    fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let prefix = format!("{name}_bucket{{");
        let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for (k, v) in &self.values {
            let Some(labels) = k.strip_prefix(&prefix) else {
                continue;
            };
            let Some(le) = labels
                .split("le=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
            else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            let e = by_le.entry(le.to_bits()).or_insert((le, 0.0));
            e.1 += v;
        }
        let mut out: Vec<(f64, f64)> = by_le.into_values().collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

/// Quantiles (as the upper bound of the bucket that holds them) of histogram `name` between
/// two scrapes: `(count, mean, [bounds for each q])`.
pub(crate) fn hist_delta(
    before: &Scrape,
    after: &Scrape,
    name: &str,
    qs: &[f64],
) -> (f64, f64, Vec<f64>) {
    let count = after.sum(&format!("{name}_count")) - before.sum(&format!("{name}_count"));
    let sum = after.sum(&format!("{name}_sum")) - before.sum(&format!("{name}_sum"));
    let b0: BTreeMap<u64, f64> = before
        .buckets(name)
        .into_iter()
        .map(|(le, c)| (le.to_bits(), c))
        .collect();
    let delta: Vec<(f64, f64)> = after
        .buckets(name)
        .into_iter()
        .map(|(le, c)| (le, c - b0.get(&le.to_bits()).copied().unwrap_or(0.0)))
        .collect();
    let bounds = qs
        .iter()
        .map(|q| {
            delta
                .iter()
                .find(|(_, c)| *c >= q * count && count > 0.0)
                .map_or(f64::NAN, |(le, _)| *le)
        })
        .collect();
    (count, sum / count.max(1.0), bounds)
}

/// A bucket bound as text: "≤5ms", ">2.5s" for the overflow bucket.
pub(crate) fn bound(s: f64) -> String {
    if s.is_nan() {
        "-".into()
    } else if s.is_infinite() {
        ">2.5s".into()
    } else if s < 1.0 {
        format!("≤{}ms", (s * 1e6).round() / 1e3)
    } else {
        format!("≤{s}s")
    }
}
