//! `storeline bench ingest --compare-redis`: durable ingest side by side with its peer and its
//! ceiling, in one run on one disk.
//!
//! - Redis 7 Streams with `appendfsync always`, driven by `redis-benchmark` (50 clients, no
//!   pipelining: `XADD` of an event-sized field), against Storeline's single events on as many
//!   connections. Aim: Storeline ≥ 1.5× Redis.
//! - The raw ceiling: `pwrite` + `fdatasync` of the same NDJSON bytes, 1000 events per sync, to a
//!   preallocated file in the same directory, against Storeline's batches of 1000. Aim: ≥ 0.5×.
//!
//! Redis gets a temporary directory beside the server's data directory, so both sync to the same
//! file system. The figures are printed, never asserted.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{IngestArgs, Outcome, Server, Template, closed_loop, push_event};
use crate::delivery::counters::cpu_seconds;

/// Clients for Redis and connections for Storeline's single events: the setting.
const CLIENTS: usize = 50;

pub(super) async fn run(server: &Server, args: &IngestArgs) -> Result<()> {
    eprintln!(
        "comparing with Redis ({}): {} s per measurement, {CLIENTS} clients",
        args.redis_server.display(),
        args.seconds
    );
    let redis = redis(args).await?;
    let cpu = || cpu_seconds(&server.child.id().to_string()).unwrap_or(0.0);
    let before = cpu();
    let mut single = closed_loop(server, "cmp1", CLIENTS, 1, args.seconds).await?;
    let single_cpu = cpu() - before;
    let raw = raw_ceiling(args.seconds, 1000)?;
    let before = cpu();
    let mut batches = closed_loop(
        server,
        "cmp1000",
        args.batch_connections,
        1000,
        args.seconds,
    )
    .await?;
    let batches_cpu = cpu() - before;

    println!(
        "{:<60} {:>10} {:>8} {:>8} {:>7} {:>14} {:>12}",
        "durable ingest, one run, one disk",
        "events/s",
        "p50 ms",
        "p99 ms",
        "ratio",
        "aim",
        "srv µs/event"
    );
    println!(
        "{:<60} {:>10.0} {:>8.2} {:>8.2} {:>7} {:>14} {:>12.1}",
        format!("Redis XADD, appendfsync always, {CLIENTS} clients, P=1"),
        redis.rps,
        redis.p50_ms,
        redis.p99_ms,
        "",
        "",
        redis.cpu_us_per_op
    );
    row(
        &format!("Storeline single events, {CLIENTS} connections"),
        &mut single,
        single_cpu,
        redis.rps,
        1.5,
    );
    println!(
        "{:<60} {:>10.0}",
        "raw pwrite + fdatasync, 1000 events (NDJSON bytes) per sync", raw
    );
    row(
        &format!(
            "Storeline NDJSON batches of 1000, {} connections",
            args.batch_connections
        ),
        &mut batches,
        batches_cpu,
        raw,
        0.5,
    );
    println!(
        "(srv µs/event: CPU time of the server process per event; the bench client and \
         redis-benchmark run on the same cores)"
    );
    Ok(())
}

/// One Storeline row: its rate against `peer`'s, and the server's CPU seconds `cpu` per event.
fn row(name: &str, o: &mut Outcome, cpu: f64, peer: f64, aim: f64) {
    let ratio = o.rate() / peer.max(1e-9);
    let verdict = if ratio >= aim { "met" } else { "not met" };
    println!(
        "{:<60} {:>10.0} {:>8.2} {:>8.2} {:>6.2}× {:>14} {:>12.1}",
        name,
        o.rate(),
        o.pct(0.5),
        o.pct(0.99),
        ratio,
        format!("≥ {aim}× {verdict}"),
        cpu * 1e6 / o.events.max(1) as f64
    );
}

struct RedisFigures {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Redis's CPU time per `XADD` in the measured run, µs.
    cpu_us_per_op: f64,
}

/// A `redis-server` child with AOF `appendfsync always` in a temporary directory.
struct Redis {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_redis(args: &IngestArgs) -> Result<Redis> {
    let dir = tempfile::Builder::new()
        .prefix("storeline-bench-redis")
        .tempdir_in(".")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(&args.redis_server)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--dir"])
        .arg(dir.path())
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--daemonize",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (install Redis 7, e.g. apt-get install redis-server, or pass --redis-server PATH)",
                args.redis_server.display()
            )
        })?;
    let redis = Redis {
        child,
        port,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ping(port) {
        if Instant::now() > deadline {
            bail!("redis-server did not answer PING on port {port} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(redis)
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// Runs `redis-benchmark` for about `args.seconds`: a short calibration run first (which also
/// warms Redis up) sizes the measured one.
async fn redis(args: &IngestArgs) -> Result<RedisFigures> {
    let redis = start_redis(args)?;
    let mut event = Vec::new();
    push_event(&mut event, "redis", 0);
    let event = String::from_utf8(event)?;
    let bench = |n: u64| -> Result<RedisFigures> {
        let out = Command::new(&args.redis_benchmark)
            .args(["-h", "127.0.0.1", "-p", &redis.port.to_string()])
            .args(["-c", &CLIENTS.to_string(), "-P", "1", "-n", &n.to_string()])
            .args(["--csv", "XADD", "storeline-bench", "*", "event", &event])
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| {
                format!(
                    "cannot run {} (pass --redis-benchmark PATH)",
                    args.redis_benchmark.display()
                )
            })?;
        if !out.status.success() {
            bail!("redis-benchmark failed: {}", out.status);
        }
        parse_csv(&String::from_utf8_lossy(&out.stdout))
    };
    let calibration = tokio::task::block_in_place(|| bench(10_000))?;
    let n = (calibration.rps * args.seconds as f64).max(10_000.0) as u64;
    let pid = redis.child.id().to_string();
    let before = cpu_seconds(&pid).unwrap_or(0.0);
    let mut figures = tokio::task::block_in_place(|| bench(n))?;
    figures.cpu_us_per_op = (cpu_seconds(&pid).unwrap_or(0.0) - before) * 1e6 / n as f64;
    Ok(figures)
}

/// The last line of `redis-benchmark --csv`: `"name","rps","avg","min","p50","p95","p99","max"`.
/// The name holds the command (with commas and quotes), so fields are counted from the end.
fn parse_csv(out: &str) -> Result<RedisFigures> {
    let line = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("redis-benchmark printed nothing")?;
    let fields: Vec<f64> = line
        .rsplit(',')
        .take(7)
        .map(|f| f.trim().trim_matches('"').parse::<f64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot read redis-benchmark's line: {line}"))?;
    if fields.len() < 7 {
        bail!("redis-benchmark's line has fewer than 7 fields: {line}");
    }
    // Reversed: max, p99, p95, p50, min, avg, rps.
    Ok(RedisFigures {
        rps: fields[6],
        p50_ms: fields[3],
        p99_ms: fields[1],
        cpu_us_per_op: 0.0,
    })
}

/// Events per second that `pwrite` + `fdatasync` of `batch` events' NDJSON bytes reach on this
/// disk, appending to a preallocated (zero-filled) file as the log does, for `secs`.
fn raw_ceiling(secs: u64, batch: usize) -> Result<f64> {
    let body = Template::new("raw", batch).body;
    let file = tempfile::Builder::new()
        .prefix("storeline-bench-raw")
        .tempfile_in(".")?;
    let len: u64 = 64 << 20;
    let f = file.as_file();
    let zeros = vec![0u8; 1 << 20];
    for i in 0..(len >> 20) {
        f.write_all_at(&zeros, i << 20)?;
    }
    f.sync_all()?;
    let started = Instant::now();
    let (mut pos, mut events) = (0u64, 0u64);
    while started.elapsed() < Duration::from_secs(secs) {
        if pos + body.len() as u64 > len {
            pos = 0;
        }
        f.write_all_at(&body, pos)?;
        f.sync_data()?;
        pos += body.len() as u64;
        events += batch as u64;
    }
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_redis_benchmark_csv_with_quotes_and_commas_in_the_name() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"XADD s * event {\"\"a\"\":1,\"\"b\"\":2}\",\"67340.07\",\"0.702\",\"0.144\",\"0.623\",\"1.151\",\"1.719\",\"6.279\"\n";
        let f = super::parse_csv(out).unwrap();
        assert_eq!(f.rps, 67340.07);
        assert_eq!(f.p50_ms, 0.623);
        assert_eq!(f.p99_ms, 1.719);
        assert!(super::parse_csv("").is_err());
        assert!(super::parse_csv("\"x\",\"y\"\n").is_err());
    }
}
