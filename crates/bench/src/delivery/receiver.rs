//! The webhook receiver of `storeline bench delivery`: a plain HTTP/1.1 server on 127.0.0.1:0 in
//! the benchmark's own process that answers every POST with 200 at once and notes, per event,
//! when its delivery arrived.
//!
//! A delivery is matched to its event by `event.id` in the webhook body (`<tag>-<n>`): the tag
//! names the scenario's [`Track`], `n` is the event's slot in it. Times are nanoseconds on one
//! monotonic [`Clock`] shared with the sender, so `arrived - acked` needs no clock sync.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

/// One monotonic time base for the sender and the receiver, with its wall-clock origin (to
/// compare with the server's millisecond timestamps).
pub(crate) struct Clock {
    base: Instant,
    /// Unix time in ms at `base`.
    wall_ms: f64,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        let base = Instant::now();
        let wall_ms = chrono::Utc::now().timestamp_micros() as f64 / 1000.0;
        Clock { base, wall_ms }
    }

    /// `t` as ns since the base, plus one: 0 stays free to mean "not yet".
    pub(crate) fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64 + 1
    }

    pub(crate) fn now(&self) -> u64 {
        self.ns(Instant::now())
    }

    /// A time of [`Clock::ns`] as Unix ms.
    pub(crate) fn wall_ms(&self, ns: u64) -> f64 {
        self.wall_ms + ns.saturating_sub(1) as f64 / 1e6
    }
}

/// What happened to each event of one scenario (slot `n` is the event `<tag>-<n>`); 0 = not yet.
pub(crate) struct Track {
    pub(crate) sched: Vec<AtomicU64>,
    pub(crate) acked: Vec<AtomicU64>,
    pub(crate) arrived: Vec<AtomicU64>,
    /// Events whose ingest request was acked.
    pub(crate) acked_count: AtomicU64,
    /// Events whose first delivery arrived.
    pub(crate) received: AtomicU64,
    /// Deliveries of an event that had arrived already (at-least-once repeats).
    pub(crate) duplicates: AtomicU64,
    /// Every `sample_every`-th event's delivery id is kept, to look its attempts up later.
    sample_every: u64,
    pub(crate) samples: Mutex<Vec<(usize, String)>>,
}

impl Track {
    pub(crate) fn new(len: usize, sample_every: u64) -> Track {
        let slots = || (0..len).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Track {
            sched: slots(),
            acked: slots(),
            arrived: slots(),
            acked_count: AtomicU64::new(0),
            received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            sample_every: sample_every.max(1),
            samples: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.sched.len()
    }

    fn arrive(&self, n: usize, at: u64, delivery: &str) -> bool {
        let Some(slot) = self.arrived.get(n) else {
            return false;
        };
        if slot
            .compare_exchange(0, at, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.received.fetch_add(1, Ordering::AcqRel);
            if (n as u64).is_multiple_of(self.sample_every) {
                self.samples
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((n, delivery.to_owned()));
            }
        } else {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        true
    }
}

/// The scenarios' tracks by tag, and what matched none of them.
pub(crate) struct Tracks {
    pub(crate) clock: Clock,
    by_tag: RwLock<HashMap<String, Arc<Track>>>,
    /// Deliveries whose event belongs to no track (warm-up, or an id out of range).
    pub(crate) unmatched: AtomicU64,
    /// Bodies that were not a webhook delivery with `id` and `event.id`.
    pub(crate) unreadable: AtomicU64,
}

impl Tracks {
    pub(crate) fn new() -> Tracks {
        Tracks {
            clock: Clock::new(),
            by_tag: RwLock::new(HashMap::new()),
            unmatched: AtomicU64::new(0),
            unreadable: AtomicU64::new(0),
        }
    }

    /// A new track for events `<tag>-0 ..= <tag>-<len-1>`.
    pub(crate) fn add(&self, tag: &str, len: usize, sample_every: u64) -> Arc<Track> {
        let t = Arc::new(Track::new(len, sample_every));
        self.by_tag
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tag.to_owned(), Arc::clone(&t));
        t
    }

    fn arrive(&self, body: &[u8], at: u64) {
        #[derive(Deserialize)]
        struct Hook<'a> {
            #[serde(borrow)]
            id: Cow<'a, str>,
            #[serde(borrow)]
            event: HookEvent<'a>,
        }
        #[derive(Deserialize)]
        struct HookEvent<'a> {
            #[serde(borrow)]
            id: Cow<'a, str>,
        }
        let Ok(h) = serde_json::from_slice::<Hook<'_>>(body) else {
            self.unreadable.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let matched = h
            .event
            .id
            .rsplit_once('-')
            .and_then(|(tag, n)| Some((tag, n.parse::<usize>().ok()?)))
            .and_then(|(tag, n)| {
                let t = self
                    .by_tag
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(tag)
                    .cloned()?;
                Some(t.arrive(n, at, &h.id))
            });
        if matched != Some(true) {
            self.unmatched.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Serves on 127.0.0.1:0 until the process ends; returns the address.
///
/// The server half of `hyper` comes from feature unification (axum, through storeline-server,
/// enables it); the CLI's own manifest asks only for the client.
pub(crate) async fn start(tracks: Arc<Tracks>) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let tracks = Arc::clone(&tracks);
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let tracks = Arc::clone(&tracks);
                    async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        tracks.arrive(&body, tracks.clock.now());
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}
