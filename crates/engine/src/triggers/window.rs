//! Sliding windows of the aggregates: buckets of 1/60 of the window (at least a second) for
//! counts and sums, each value's last time for `distinct`.

use serde_json::{Value, json};

use super::def::AggFn;
use super::rows::Window;

/// Bucket width of a window: 1/60 of it, at least a second.
fn bucket_ms(window: i64) -> i64 {
    (window / 60).max(1000)
}

pub fn add_to_window(w: &mut Window, window: i64, func: AggFn, clock: i64, value: Option<&Value>) {
    let width = bucket_ms(window);
    let start = clock - clock.rem_euclid(width);
    w.buckets.retain(|b| b.0 + width > clock - window);
    let amount = value.and_then(Value::as_f64).unwrap_or(0.0);
    match w.buckets.last_mut() {
        Some(b) if b.0 == start => {
            b.1 += 1;
            b.2 += amount;
        }
        _ => w.buckets.push((start, 1, amount)),
    }
    if func == AggFn::Distinct
        && let Some(v) = value
    {
        let k = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        w.seen.insert(k, clock);
        w.seen.retain(|_, at| *at > clock - window);
    }
    w.last = clock;
}

/// The window's value at `clock` (buckets that overlap the window: resolution is 1/60 of it).
pub fn window_value(w: &Window, window: i64, func: AggFn, clock: i64) -> Value {
    let width = bucket_ms(window);
    let live = w
        .buckets
        .iter()
        .filter(|b| b.0 + width > clock - window && b.0 <= clock);
    match func {
        AggFn::Count => json!(live.map(|b| b.1).sum::<i64>()),
        AggFn::Sum => {
            let s: f64 = live.map(|b| b.2).sum();
            if s.fract() == 0.0 && s.abs() < 9e15 {
                json!(s as i64)
            } else {
                json!(s)
            }
        }
        AggFn::Distinct => json!(w.seen.values().filter(|at| **at > clock - window).count()),
    }
}

/// Several windows of one aggregate and key (partitions, or originals and copies) as one value.
pub fn combine(windows: &[Window], window_ms: i64, func: AggFn, now: i64) -> Value {
    match func {
        AggFn::Distinct => {
            let seen: std::collections::BTreeSet<&String> = windows
                .iter()
                .flat_map(|w| {
                    w.seen
                        .iter()
                        .filter(|(_, at)| **at > now - window_ms)
                        .map(|(k, _)| k)
                })
                .collect();
            json!(seen.len())
        }
        _ => {
            let total: f64 = windows
                .iter()
                .filter_map(|w| window_value(w, window_ms, func, now).as_f64())
                .sum();
            if total.fract() == 0.0 {
                json!(total as i64)
            } else {
                json!(total)
            }
        }
    }
}
