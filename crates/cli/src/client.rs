//! Client commands: `send` (NDJSON to `POST /v1/events`, batched, with a progress bar and
//! retries) and `tail` (follow `GET /v1/stream`, resuming with `Last-Event-ID`).
//!
//! Retrying a batch is always safe: the server deduplicates on `(source, id)` and answers a
//! repeated event with its original offset.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;

pub(crate) fn client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .context("cannot build the HTTP client")
}

pub(crate) fn need_key<'a>(key: Option<&'a str>, scope: &str) -> Result<&'a str> {
    key.with_context(|| {
        format!(
            "an API key with the '{scope}' scope is needed: pass --key or set STORELINE_API_KEY"
        )
    })
}

/// Sends NDJSON lines from a file or stdin.
pub async fn send(
    url: &str,
    key: Option<&str>,
    file: Option<PathBuf>,
    batch: usize,
    concurrency: usize,
) -> Result<()> {
    let reader: Box<dyn BufRead + Send> = match &file {
        Some(p) if p.as_os_str() != "-" => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?,
        )),
        _ => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    let total = match &file {
        Some(p) if p.as_os_str() != "-" => {
            let f = std::fs::File::open(p)?;
            Some(std::io::BufReader::new(f).lines().count() as u64)
        }
        _ => None,
    };
    let lines = reader
        .lines()
        .map_while(|l| l.ok())
        .filter(|l| !l.trim().is_empty());
    send_lines(url, key, lines, total, batch, concurrency).await
}

/// Sends generated events.
pub async fn send_events(
    url: &str,
    key: Option<&str>,
    events: impl Iterator<Item = serde_json::Value>,
    total: u64,
    batch: usize,
    concurrency: usize,
) -> Result<()> {
    let lines = events.map(|e| e.to_string());
    send_lines(url, key, lines, Some(total), batch, concurrency).await
}

async fn send_lines(
    url: &str,
    key: Option<&str>,
    lines: impl Iterator<Item = String>,
    total: Option<u64>,
    batch: usize,
    concurrency: usize,
) -> Result<()> {
    let key = need_key(key, "ingest")?.to_owned();
    if batch == 0 || concurrency == 0 {
        bail!("--batch and --concurrency must be at least 1");
    }
    let http = client()?;
    let endpoint = format!("{}/v1/events", url.trim_end_matches('/'));
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} events {per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut lines = lines.peekable();
    let bodies = std::iter::from_fn(move || {
        let mut body = String::new();
        let mut n = 0;
        while n < batch {
            let Some(line) = lines.next() else { break };
            body.push_str(&line);
            body.push('\n');
            n += 1;
        }
        (n > 0).then_some((body, n))
    });
    let mut results = futures::stream::iter(bodies)
        .map(|(body, n)| {
            let http = http.clone();
            let endpoint = endpoint.clone();
            let key = key.clone();
            async move { (post_with_retry(&http, &endpoint, &key, body).await, n) }
        })
        .buffered(concurrency);
    let (mut accepted, mut duplicates) = (0u64, 0u64);
    while let Some((result, n)) = results.next().await {
        let reply = result?;
        accepted += reply["accepted"].as_u64().unwrap_or(0);
        duplicates += reply["duplicates"].as_u64().unwrap_or(0);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "sent {} events in {secs:.2}s ({:.0}/s): {accepted} stored, {duplicates} duplicates",
        accepted + duplicates,
        (accepted + duplicates) as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// Posts one NDJSON body; retries connection errors and 5xx with backoff (safe: dedup).
async fn post_with_retry(
    http: &reqwest::Client,
    endpoint: &str,
    key: &str,
    body: String,
) -> Result<serde_json::Value> {
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=8 {
        let response = http
            .post(endpoint)
            .bearer_auth(key)
            .header("content-type", "application/x-ndjson")
            .body(body.clone())
            .send()
            .await;
        match response {
            Ok(r) if r.status().is_success() => return Ok(r.json().await?),
            Ok(r) if r.status().is_client_error() => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                bail!("the server refused a batch ({status}): {text}");
            }
            Ok(r) => eprintln!(
                "attempt {attempt}: server answered {}; retrying in {delay:?}",
                r.status()
            ),
            Err(e) => eprintln!("attempt {attempt}: {e}; retrying in {delay:?}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    bail!("giving up on a batch after 8 attempts")
}

/// Follows the stream, reconnecting with `Last-Event-ID` so nothing is missed or repeated.
pub async fn tail(
    url: &str,
    key: Option<&str>,
    ty: Option<String>,
    subject: Option<String>,
    from: &str,
    limit: Option<u64>,
) -> Result<()> {
    let key = need_key(key, "read")?;
    let http = reqwest::Client::new();
    let mut query = vec![("from", from.to_owned())];
    if let Some(t) = ty {
        query.push(("type", t));
    }
    if let Some(s) = subject {
        query.push(("subject", s));
    }
    let endpoint = format!("{}/v1/stream", url.trim_end_matches('/'));
    let mut last_id: Option<String> = None;
    let mut printed = 0u64;
    let mut out = std::io::stdout();
    loop {
        let mut req = http
            .get(&endpoint)
            .bearer_auth(key)
            .query(&query)
            .header("accept", "text/event-stream");
        if let Some(id) = &last_id {
            req = req.header("last-event-id", id);
        }
        let response = match req.send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) if r.status().is_client_error() => {
                let status = r.status();
                bail!(
                    "the server refused the stream ({status}): {}",
                    r.text().await.unwrap_or_default()
                );
            }
            Ok(r) => {
                eprintln!("server answered {}; reconnecting", r.status());
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                eprintln!("{e}; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut body = response.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let (mut data, mut id) = (String::new(), None::<String>);
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    if !data.is_empty() {
                        writeln!(out, "{data}")?;
                        out.flush()?;
                        printed += 1;
                        if id.is_some() {
                            last_id = id.take();
                        }
                        data.clear();
                        if limit.is_some_and(|l| printed >= l) {
                            return Ok(());
                        }
                    }
                } else if let Some(d) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(d.strip_prefix(' ').unwrap_or(d));
                } else if let Some(i) = line.strip_prefix("id:") {
                    id = Some(i.trim().to_owned());
                }
            }
        }
        eprintln!(
            "stream ended; reconnecting from {}",
            last_id.as_deref().unwrap_or(from)
        );
        if last_id.is_none() {
            // Without an id there is nothing to resume from: start where we asked, once.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
