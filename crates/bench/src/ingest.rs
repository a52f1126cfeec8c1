//! `storeline bench ingest`: starts a real server (a child process, fsync on, its own data
//! directory) and drives it over HTTP from this process with raw keep-alive HTTP/1.1
//! connections, printing events/s and ack latency percentiles per scenario, and what the server
//! spent: fsyncs, events per fsync, its CPU (% of one core) and CPU microseconds per event. When
//! the CPU per event times the events/s fills the cores the server can have, the scenario is
//! CPU-bound, not disk-bound.
//!
//! Closed-loop scenarios find the maximum; the last one is open-loop at half the single-event
//! maximum, with latency measured from each request's *scheduled* send time, so a stall is
//! counted in full instead of hiding behind the requests it delayed.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

mod compare;

#[derive(clap::Args, Clone)]
pub struct IngestArgs {
    /// Seconds per scenario.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Connections for the single-event scenarios.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Connections for the batch scenarios.
    #[arg(long, default_value_t = 8)]
    batch_connections: usize,
    /// Turn fsync off in the started server (to see its cost; not a durable figure).
    #[arg(long)]
    no_fsync: bool,
    /// Keep the server's data directory here instead of a temporary one.
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    /// Instead of the scenarios, measure side by side in one run: Redis with `appendfsync
    /// always` (started on a temporary directory here) against single events, and raw
    /// write + fdatasync of 1000-event batches against NDJSON batches of 1000.
    #[arg(long)]
    compare_redis: bool,
    /// The Redis server binary for --compare-redis.
    #[arg(long, default_value = "redis-server")]
    redis_server: std::path::PathBuf,
    /// The redis-benchmark binary for --compare-redis.
    #[arg(long, default_value = "redis-benchmark")]
    redis_benchmark: std::path::PathBuf,
}

/// A server started as a child process; dropping it stops it (SIGTERM, then waits).
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) addr: String,
    pub(crate) key: String,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn start_server(args: &IngestArgs) -> Result<Server> {
    spawn_server(
        args.data.as_deref(),
        !args.no_fsync,
        &[storeline_server::auth::Scope::Ingest],
        &[("RUST_LOG", "warn")],
    )
}

/// Starts `storeline serve` on port 0 with its own data directory (`data`, or a temporary one
/// removed with the [`Server`]), an API key with `scopes`, fsync on or off, and `env` set.
pub(crate) fn spawn_server(
    data: Option<&std::path::Path>,
    fsync: bool,
    scopes: &[storeline_server::auth::Scope],
    env: &[(&str, &str)],
) -> Result<Server> {
    let (dir, path) = match data {
        Some(p) => (None, p.to_owned()),
        None => {
            let d = tempfile::Builder::new()
                .prefix("storeline-bench")
                .tempdir_in(".")?;
            let p = d.path().to_owned();
            (Some(d), p)
        }
    };
    let (_, key) = storeline_server::auth::create_key(&path.join("keys.json"), "bench", scopes)?;
    let exe = std::env::current_exe().context("cannot find the storeline binary")?;
    let mut child = Command::new(exe)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&path)
        .env("STORELINE_LOG__FSYNC", if fsync { "true" } else { "false" })
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the server")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let addr = loop {
        let Some(line) = lines.next() else {
            bail!("the server exited before listening")
        };
        if let Some(a) = line?.strip_prefix("storeline listening on http://") {
            break a.trim().to_owned();
        }
    };
    Ok(Server {
        child,
        addr,
        key,
        _dir: dir,
    })
}

/// One keep-alive HTTP/1.1 connection.
pub(crate) struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
    auth: String,
}

impl Conn {
    pub(crate) async fn open(addr: &str, key: &str) -> Result<Conn> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Conn {
            sender,
            host: addr.to_owned(),
            auth: format!("Bearer {key}"),
        })
    }

    pub(crate) async fn post(&mut self, body: Vec<u8>, ndjson: bool) -> Result<()> {
        let req = Request::post("/v1/events")
            .header("host", &self.host)
            .header("authorization", &self.auth)
            .header(
                "content-type",
                if ndjson {
                    "application/x-ndjson"
                } else {
                    "application/json"
                },
            )
            .body(Full::new(Bytes::from(body)))?;
        self.sender.ready().await?;
        let res = self.sender.send_request(req).await?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "server answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(())
    }
}

/// Width of the numeric part of event ids, so a body can be built once and re-numbered in place.
const ID_DIGITS: usize = 12;

/// A ~360-byte `cart.item_added` event with the id `<run>-<n>` (n zero-padded).
fn push_event(out: &mut Vec<u8>, run: &str, n: u64) {
    use std::io::Write;
    let _ = write!(
        out,
        r#"{{"id":"{run}-{n:0w$}","source":"bench","type":"cart.item_added","subject":"cus-{:06}","time":"2026-11-21T10:00:00.000Z","data":{{"cart_id":"cart-{n}","sku":"SKU-{:05}","quantity":1,"unit_price":{{"amount":1999,"currency":"EUR"}},"cart_value":{{"amount":3998,"currency":"EUR"}},"name":"Organic cotton t-shirt, navy, size M","category":"apparel/tops","brand":"Storeline Basics","variant":"navy-m"}}}}"#,
        n % 100_000,
        n % 5_000,
        w = ID_DIGITS
    );
}

/// A request body of `batch` events, built once; [`Template::render`] gives each request fresh
/// ids (and subjects) by rewriting only their digits, so the client spends its CPU on HTTP, not
/// on JSON.
struct Template {
    body: Vec<u8>,
    id_at: Vec<usize>,
    subject_at: Vec<usize>,
}

/// Digits of the subject `cus-NNNNNN` that [`push_event`] writes.
const SUBJECT_DIGITS: usize = 6;

impl Template {
    fn new(run: &str, batch: usize) -> Template {
        let mut body = Vec::with_capacity(batch * 420);
        let mut id_at = Vec::with_capacity(batch);
        let mut subject_at = Vec::with_capacity(batch);
        const SUBJECT: &[u8] = br#""subject":"cus-"#;
        for i in 0..batch {
            let start = body.len();
            push_event(&mut body, run, i as u64);
            id_at.push(start + r#"{"id":""#.len() + run.len() + 1);
            let subject = body[start..]
                .windows(SUBJECT.len())
                .position(|w| w == SUBJECT)
                .map_or(0, |p| start + p + SUBJECT.len());
            subject_at.push(subject);
            if batch > 1 {
                body.push(b'\n');
            }
        }
        Template {
            body,
            id_at,
            subject_at,
        }
    }

    /// The body with event ids `first..first + batch`, and the subjects [`push_event`] gives
    /// them (so consecutive single events belong to different customers and partitions).
    fn render(&self, first: u64) -> Vec<u8> {
        fn digits(out: &mut [u8], mut n: u64) {
            for d in out.iter_mut().rev() {
                *d = b'0' + (n % 10) as u8;
                n /= 10;
            }
        }
        let mut body = self.body.clone();
        for (i, (&id, &subject)) in self.id_at.iter().zip(&self.subject_at).enumerate() {
            let n = first + i as u64;
            digits(&mut body[id..id + ID_DIGITS], n);
            digits(&mut body[subject..subject + SUBJECT_DIGITS], n % 100_000);
        }
        body
    }
}

#[derive(Default)]
struct Outcome {
    events: u64,
    requests: u64,
    latencies_us: Vec<u64>,
    elapsed: Duration,
}

impl Outcome {
    fn pct(&mut self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Adds up the connections' outcomes.
async fn collect(
    tasks: Vec<tokio::task::JoinHandle<Result<Outcome>>>,
    started: Instant,
) -> Result<Outcome> {
    let mut total = Outcome::default();
    for t in tasks {
        let o = t.await??;
        total.events += o.events;
        total.requests += o.requests;
        total.latencies_us.extend(o.latencies_us);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// Closed loop: each connection sends, waits for the ack, sends again, for `secs`.
async fn closed_loop(
    server: &Server,
    run: &str,
    conns: usize,
    batch: usize,
    secs: u64,
) -> Result<Outcome> {
    let counter = Arc::new(AtomicU64::new(0));
    let template = Arc::new(Template::new(run, batch));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut conn = Conn::open(&server.addr, &server.key).await?;
        let counter = Arc::clone(&counter);
        let template = Arc::clone(&template);
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome::default();
            while Instant::now() < deadline {
                let first = counter.fetch_add(batch as u64, Ordering::Relaxed);
                let body = template.render(first);
                let t = Instant::now();
                conn.post(body, batch > 1).await?;
                out.latencies_us.push(t.elapsed().as_micros() as u64);
                out.events += batch as u64;
                out.requests += 1;
            }
            anyhow::Ok(out)
        }));
    }
    collect(tasks, started).await
}

/// Open loop: `rate` events per second in requests of `batch`, spread over `conns` connections,
/// each on a fixed schedule; latency counts from the scheduled time.
async fn open_loop(
    server: &Server,
    run: &str,
    conns: usize,
    batch: usize,
    rate: f64,
    secs: u64,
) -> Result<Outcome> {
    let per_conn = rate / batch as f64 / conns as f64;
    let interval = Duration::from_secs_f64(1.0 / per_conn.max(1e-3));
    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    let counter = Arc::new(AtomicU64::new(0));
    let template = Arc::new(Template::new(run, batch));
    let mut tasks = Vec::new();
    for c in 0..conns {
        let mut conn = Conn::open(&server.addr, &server.key).await?;
        let counter = Arc::clone(&counter);
        let template = Arc::clone(&template);
        // Stagger the connections across one interval.
        let offset = interval.mul_f64(c as f64 / conns as f64);
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome::default();
            let mut next = started + offset;
            while next < end {
                tokio::time::sleep_until(next.into()).await;
                let body = template.render(counter.fetch_add(batch as u64, Ordering::Relaxed));
                conn.post(body, batch > 1).await?;
                out.latencies_us.push(next.elapsed().as_micros() as u64);
                out.events += batch as u64;
                out.requests += 1;
                next += interval;
            }
            anyhow::Ok(out)
        }));
    }
    collect(tasks, started).await
}

/// What a scenario is measured by on the server's side, read before and after it.
struct Counters {
    fsyncs: f64,
    batch_records: f64,
    batches: f64,
    slow_requests: f64,
    /// The server process's CPU time (user + system), seconds.
    cpu: f64,
}

/// Reads `storeline_log_fsync_seconds_count`, `storeline_log_batch_records_{sum,count}`, how
/// many requests took the server over 100 ms, and the server's CPU time.
async fn server_counters(server: &Server) -> Counters {
    let text = match reqwest::get(format!("http://{}/metrics", server.addr)).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let get = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Counters {
        fsyncs: get("storeline_log_fsync_seconds_count"),
        batch_records: get("storeline_log_batch_records_sum"),
        batches: get("storeline_log_batch_records_count"),
        slow_requests: get("storeline_ingest_request_seconds_count")
            - get("storeline_ingest_request_seconds_bucket{le=\"0.1\"}"),
        cpu: crate::delivery::counters::cpu_seconds(&server.child.id().to_string()).unwrap_or(0.0),
    }
}

pub async fn ingest(args: IngestArgs) -> Result<()> {
    let server = start_server(&args)?;
    eprintln!(
        "server at {} (fsync {}), {} s per scenario, {} cores",
        server.addr,
        if args.no_fsync { "OFF" } else { "on" },
        args.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // Warm up connections, page cache and the dedup index.
    closed_loop(&server, "warm", 4, 100, 1).await?;
    if args.compare_redis {
        return compare::run(&server, &args).await;
    }
    println!(
        "{:<52} {:>11} {:>9} {:>8} {:>8} {:>9} {:>10} {:>10} {:>8} {:>10}",
        "scenario",
        "events/s",
        "req/s",
        "p50 ms",
        "p99 ms",
        "fsyncs/s",
        "ev/batch",
        "srv>100ms",
        "srv CPU",
        "µs/event"
    );
    let mut max = [0.0f64; 3];
    let scenarios: [(&str, usize, usize); 3] = [
        ("NDJSON batches of 1000", args.batch_connections, 1000),
        ("NDJSON batches of 100", args.batch_connections * 2, 100),
        ("single events", args.connections, 1),
    ];
    for (i, (name, conns, batch)) in scenarios.into_iter().enumerate() {
        let before = server_counters(&server).await;
        let mut o = closed_loop(&server, &format!("b{batch}"), conns, batch, args.seconds).await?;
        let after = server_counters(&server).await;
        print_row(&format!("{name} ({conns} conns)"), &mut o, before, after);
        max[i] = o.rate();
    }
    for (name, conns, batch, rate) in [
        (
            "batches of 100 at 50% of max",
            args.batch_connections * 2,
            100,
            max[1] / 2.0,
        ),
        (
            "single events at 50% of max",
            args.connections,
            1,
            max[2] / 2.0,
        ),
    ] {
        let before = server_counters(&server).await;
        let mut o = open_loop(
            &server,
            &format!("half{batch}"),
            conns,
            batch,
            rate,
            args.seconds,
        )
        .await?;
        let after = server_counters(&server).await;
        print_row(
            &format!("{name} ({rate:.0}/s, open loop)"),
            &mut o,
            before,
            after,
        );
    }
    Ok(())
}

fn print_row(name: &str, o: &mut Outcome, before: Counters, after: Counters) {
    let secs = o.elapsed.as_secs_f64().max(1e-9);
    let fsyncs = (after.fsyncs - before.fsyncs) / secs;
    let per_batch =
        (after.batch_records - before.batch_records) / (after.batches - before.batches).max(1.0);
    let cpu = after.cpu - before.cpu;
    let (p50, p99) = (o.pct(0.5), o.pct(0.99));
    println!(
        "{:<52} {:>11.0} {:>9.0} {:>8.2} {:>8.2} {:>9.0} {:>10.1} {:>10.0} {:>7.0}% {:>10.1}",
        name,
        o.rate(),
        o.requests as f64 / secs,
        p50,
        p99,
        fsyncs,
        per_batch,
        after.slow_requests - before.slow_requests,
        cpu / secs * 100.0,
        cpu * 1e6 / (o.events.max(1) as f64)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rendered body numbers the ids and the subjects that go with them, so single events
    /// spread over customers and partitions (the cart and SKU stay those of the template).
    #[test]
    fn a_rendered_template_numbers_ids_and_subjects() {
        for batch in [1usize, 3] {
            let t = Template::new("run", batch);
            for first in [0u64, 7, 123_456, 999_999_999] {
                let body = t.render(first);
                let events: Vec<serde_json::Value> = body
                    .split(|&b| b == b'\n')
                    .filter(|line| !line.is_empty())
                    .map(|line| serde_json::from_slice(line).unwrap_or_default())
                    .collect();
                assert_eq!(events.len(), batch);
                for (i, e) in events.iter().enumerate() {
                    let n = first + i as u64;
                    assert_eq!(
                        e["id"],
                        format!("run-{n:012}"),
                        "batch {batch}, first {first}"
                    );
                    assert_eq!(e["subject"], format!("cus-{:06}", n % 100_000));
                    assert_eq!(e["type"], "cart.item_added");
                }
            }
        }
    }
}
