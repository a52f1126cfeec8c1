//! The HTTP/1.1 server loop: accepts connections and serves the router on each with hyper,
//! holding every connection to the limits in `[server]`.
//!
//! - **A cap on open connections** (`max_connections`). A connection beyond it is still
//!   accepted and answered `503 too_many_connections` with `Retry-After` and `Connection: close`
//!   (`GET /healthz` is answered 200: the process is alive), instead of the listener's queue
//!   filling up unanswered. Those answers are few at a time ([`REFUSING_MAX`]) and short.
//! - **Header-read and keep-alive timeouts**, kept by a watchdog per connection (a timer that
//!   is reset only when it fires, so a request costs a few relaxed atomics, no timer work).
//!   hyper's own `header_read_timeout` also runs while a kept-alive connection waits for its
//!   next request, so it cannot give an idle connection longer than a slow header: hence ours.
//! - **Accept errors** (the process out of file descriptors, EMFILE) are logged and the loop
//!   pauses briefly and goes on: descriptors come back as the timeouts close connections.
//! - **Graceful shutdown** in three steps: the listener closes; for `shutdown_drain`, requests
//!   arriving on open connections are answered `503 shutting_down` with `Connection: close`
//!   (a client sending on a kept-alive connection gets an answer, not a reset) while requests
//!   in flight finish, their answers also closing the connection; then the remaining
//!   connections are closed after their current request, until `shutdown_timeout` (counted
//!   from the signal) ends what is left.
//!
//! HTTP/1.1 only, as `axum::serve` was here (the workspace builds hyper without HTTP/2).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use crate::config::ServerConfig;
use crate::error::ApiError;

/// Connections beyond the cap being answered 503 at one time; more are dropped unanswered.
const REFUSING_MAX: usize = 64;
/// How long an over-the-cap connection may take to send its request, and then to close.
const REFUSE_WAIT: Duration = Duration::from_secs(1);
/// The pause after an accept error that is not about one connection (EMFILE, ENFILE, ENOMEM).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// File descriptors left for everything but client connections (log segments, the state
/// store, outgoing connections, over-the-cap answers).
const FD_RESERVE: u64 = 128;
/// How much of a request body is read (and dropped) before answering it 503 during shutdown,
/// so that closing the connection does not reset a client that is still sending.
const DISCARD_MAX: usize = 1 << 20;

/// The `[server]` settings the loop enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_drain: Duration,
    pub shutdown_timeout: Duration,
}

impl Limits {
    pub(crate) fn from_config(c: &ServerConfig) -> Limits {
        Limits {
            header_read_timeout: c.header_read_timeout,
            keep_alive_timeout: c.keep_alive_timeout,
            max_connections: c.max_connections,
            shutdown_drain: c.shutdown_drain,
            shutdown_timeout: c.shutdown_timeout,
        }
    }
}

/// What the accept loop tells the connections during shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Serving,
    /// Finish the current request, then close.
    Closing,
    /// Close now: the shutdown timeout is over.
    Abort,
}

/// What every connection shares.
struct Shared {
    /// Set when the shutdown begins: new requests are answered 503 `shutting_down`.
    draining: AtomicBool,
    /// The zero of the connections' millisecond timestamps.
    epoch: Instant,
    open: metrics::Gauge,
    header_timeouts: metrics::Counter,
    idle_timeouts: metrics::Counter,
}

/// Serves `app` on `listener` until `stop` turns true, then shuts down gracefully (see the
/// module doc). Returns when every connection has closed or the shutdown timeout is over.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let max = effective_max_connections(limits.max_connections);
    let conns = Arc::new(Semaphore::new(max));
    let refusals = Refusals {
        slots: Arc::new(Semaphore::new(REFUSING_MAX)),
        too_many: Bytes::from(too_many_connections(max)),
    };
    let shared = Arc::new(Shared {
        draining: AtomicBool::new(false),
        epoch: Instant::now(),
        open: metrics::gauge!("storeline_http_connections"),
        header_timeouts: metrics::counter!("storeline_http_connections_closed_total", "reason" => "header_timeout"),
        idle_timeouts: metrics::counter!("storeline_http_connections_closed_total", "reason" => "keep_alive_timeout"),
    });
    let refused = metrics::counter!("storeline_http_connections_refused_total", "reason" => "max_connections");
    let (stage, _) = watch::channel(Stage::Serving);
    let mut errors = AcceptErrors::default();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, _)) => {
                // Answers are small and latency matters: no Nagle delay on the responses.
                let _ = tcp.set_nodelay(true);
                match Arc::clone(&conns).try_acquire_owned() {
                    Ok(permit) => {
                        shared.open.increment(1.0);
                        tokio::spawn(connection(
                            tcp,
                            permit,
                            app.clone(),
                            Arc::clone(&shared),
                            limits,
                            stage.subscribe(),
                        ));
                    }
                    Err(_) => {
                        refused.increment(1);
                        refusals.refuse(tcp);
                    }
                }
            }
            Err(e) => {
                if let Some(pause) = errors.on_error(&e) {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }
    let signalled = Instant::now();
    drop(listener);
    shared.draining.store(true, Ordering::SeqCst);
    // Every permit back means every connection has closed.
    let all_closed = conns.acquire_many(max as u32);
    let mut all_closed = std::pin::pin!(all_closed);
    tokio::select! {
        _ = &mut all_closed => return,
        _ = tokio::time::sleep(limits.shutdown_drain) => {}
    }
    stage.send_replace(Stage::Closing);
    tokio::select! {
        _ = &mut all_closed => {}
        _ = tokio::time::sleep_until(signalled + limits.shutdown_timeout) => {
            tracing::warn!(
                timeout_s = limits.shutdown_timeout.as_secs(),
                open = max - conns.available_permits(),
                "in-flight requests did not finish in time; closing their connections"
            );
            stage.send_replace(Stage::Abort);
        }
    }
}

/// `max_connections`, lowered to what the open-file limit leaves room for.
fn effective_max_connections(configured: usize) -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let Some(room) = limit.map(|n| n.saturating_sub(FD_RESERVE).max(1)) else {
        return configured;
    };
    if configured as u64 <= room {
        return configured;
    }
    let lowered = room as usize;
    tracing::warn!(
        configured,
        lowered,
        open_file_limit = limit,
        "server.max_connections is above what the open-file limit leaves room for; lowered \
         (raise `ulimit -n` to allow more)"
    );
    lowered
}

/// Accept errors: which to pause after, and logging them without flooding the log.
#[derive(Default)]
struct AcceptErrors {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    /// How long to pause after this error, if at all.
    fn on_error(&mut self, e: &std::io::Error) -> Option<Duration> {
        metrics::counter!("storeline_http_accept_errors_total").increment(1);
        let pause = accept_pause(e);
        let now = Instant::now();
        if self
            .last_logged
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(5))
        {
            tracing::warn!(
                error = %e,
                more_since_last_logged = self.unlogged,
                pause_ms = pause.map_or(0, |p| p.as_millis() as u64),
                "cannot accept a connection; going on"
            );
            self.last_logged = Some(now);
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        pause
    }
}

/// Errors about one connection (it went away before we took it) need no pause; anything else
/// (no file descriptors, no memory) would fail again at once, so the loop pauses.
fn accept_pause(e: &std::io::Error) -> Option<Duration> {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionAborted | K::ConnectionReset | K::ConnectionRefused | K::Interrupted => None,
        _ => Some(ACCEPT_BACKOFF),
    }
}

/// The whole answer to a connection beyond the cap, written as is.
fn too_many_connections(max: usize) -> Vec<u8> {
    let body = ApiError::unavailable(format!(
        "the server has {max} open connections, its limit (server.max_connections); retry in \
         a moment"
    ))
    .with_code("too_many_connections")
    .with_details(serde_json::json!({ "max_connections": max }));
    let body = serde_json::json!({ "error": {
        "code": body.code, "message": body.message, "details": body.details,
    }})
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The answer to `GET /healthz` beyond the cap, as `ops::healthz` gives it.
const ALIVE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\
content-length: 15\r\n\r\n{\"status\":\"ok\"}";

/// The answer to a connection beyond the cap that sent this request head (or part of one):
/// the liveness check is answered, so an orchestrator does not restart a server that is busy.
fn refusal_for<'a>(head: &[u8], too_many: &'a [u8]) -> &'a [u8] {
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let path = line.strip_prefix(b"GET /healthz").unwrap_or(b"-");
    if path.starts_with(b" ") || path.starts_with(b"?") {
        ALIVE
    } else {
        too_many
    }
}

/// Connections beyond the cap being answered.
struct Refusals {
    slots: Arc<Semaphore>,
    too_many: Bytes,
}

impl Refusals {
    /// Answers a connection beyond the cap and closes it. While few such answers are under
    /// way, this reads the request first and waits for the client to close, so the client is
    /// not reset before it reads the answer; beyond that it answers what has arrived already
    /// (without waiting) and drops the connection.
    fn refuse(&self, tcp: TcpStream) {
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            let mut head = [0u8; 512];
            let n = tcp.try_read(&mut head).unwrap_or(0);
            let _ = tcp.try_write(refusal_for(&head[..n], &self.too_many));
            return;
        };
        tokio::spawn(answer_refused(tcp, self.too_many.clone(), permit));
    }
}

/// Reads the refused connection's request head (for a while), answers, and waits (for a
/// while) for the client to close. `permit` is its slot among the refusals under way.
async fn answer_refused(mut tcp: TcpStream, too_many: Bytes, permit: OwnedSemaphorePermit) {
    let mut buf = [0u8; 2048];
    let mut head = Vec::new();
    let _ = tokio::time::timeout(REFUSE_WAIT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 << 10 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let answer = refusal_for(&head, &too_many);
    let _ = tokio::time::timeout(REFUSE_WAIT, async {
        tcp.write_all(answer).await?;
        tcp.shutdown().await?;
        // Read what else the client sends (a body) until it closes.
        while tcp.read(&mut buf).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
    drop(permit);
}

/// Serves one connection until it ends, a timeout closes it, or the shutdown does.
async fn connection(
    tcp: TcpStream,
    _permit: OwnedSemaphorePermit,
    app: Router,
    shared: Arc<Shared>,
    limits: Limits,
    mut stage: watch::Receiver<Stage>,
) {
    let tracker = Arc::new(Tracker::new(Arc::clone(&shared)));
    let io = TokioIo::new(TrackedIo {
        tcp,
        tracker: Arc::clone(&tracker),
    });
    let service = ConnService {
        app,
        tracker: Arc::clone(&tracker),
    };
    let conn = hyper::server::conn::http1::Builder::new()
        // Ours instead (see the module doc).
        .header_read_timeout(None)
        .serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let watchdog = tokio::time::sleep(limits.header_read_timeout.min(limits.keep_alive_timeout));
    let mut watchdog = std::pin::pin!(watchdog);
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            _ = watchdog.as_mut() => match tracker.check(Instant::now(), &limits) {
                Check::Until(t) => watchdog.as_mut().reset(t),
                Check::Expired(Expired::Header) => {
                    shared.header_timeouts.increment(1);
                    break;
                }
                Check::Expired(Expired::KeepAlive) => {
                    shared.idle_timeouts.increment(1);
                    break;
                }
            },
            // Stays armed after `Closing`: an `Abort` may follow.
            changed = stage.changed() => {
                let now = *stage.borrow_and_update();
                if changed.is_err() || now == Stage::Abort {
                    break;
                }
                if now == Stage::Closing && !closing {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
    shared.open.decrement(1.0);
}

const FRESH: u8 = 0;
const IDLE: u8 = 1;
const HEAD: u8 = 2;

/// Where a connection is between requests, for its watchdog. Written by the connection's own
/// task only (reads, the service, response bodies), so relaxed atomics suffice.
struct Tracker {
    shared: Arc<Shared>,
    /// Requests whose response has not been sent in full; no timeout runs while one is.
    busy: AtomicU32,
    /// FRESH: accepted, nothing read; IDLE: kept alive after a response, nothing read since;
    /// HEAD: some of a request read, its headers not complete.
    phase: AtomicU8,
    /// When the phase's clock started, in ms since `shared.epoch`: the accept (FRESH, and HEAD
    /// after FRESH), the end of the last response (IDLE), the first byte after it (HEAD).
    since_ms: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    Header,
    KeepAlive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Nothing expired; look again then.
    Until(Instant),
    Expired(Expired),
}

impl Tracker {
    fn new(shared: Arc<Shared>) -> Tracker {
        let since = shared.epoch.elapsed().as_millis() as u64;
        Tracker {
            shared,
            busy: AtomicU32::new(0),
            phase: AtomicU8::new(FRESH),
            since_ms: AtomicU64::new(since),
        }
    }

    fn now_ms(&self) -> u64 {
        self.shared.epoch.elapsed().as_millis() as u64
    }

    /// Bytes arrived: a request has begun, its headers' clock runs.
    fn on_read(&self) {
        match self.phase.load(Ordering::Relaxed) {
            IDLE => {
                self.since_ms.store(self.now_ms(), Ordering::Relaxed);
                self.phase.store(HEAD, Ordering::Relaxed);
            }
            // The first request's headers are timed from the accept.
            FRESH => self.phase.store(HEAD, Ordering::Relaxed),
            _ => {}
        }
    }

    fn request_started(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(Arc::clone(self))
    }

    /// Whether a timeout has expired at `now`, or when to look again. A phase that starts
    /// between two looks (a request ends, or the next one begins) is not announced to the
    /// watchdog, so it looks again at least every `min(header_read_timeout,
    /// keep_alive_timeout)`: no deadline set later can be nearer than that, and none is
    /// noticed later than that after it passed.
    fn check(&self, now: Instant, limits: &Limits) -> Check {
        let next_look = now + limits.header_read_timeout.min(limits.keep_alive_timeout);
        if self.busy.load(Ordering::Relaxed) > 0 {
            return Check::Until(next_look);
        }
        let since =
            self.shared.epoch + Duration::from_millis(self.since_ms.load(Ordering::Relaxed));
        let (deadline, what) = match self.phase.load(Ordering::Relaxed) {
            IDLE => (since + limits.keep_alive_timeout, Expired::KeepAlive),
            _ => (since + limits.header_read_timeout, Expired::Header),
        };
        if now >= deadline {
            Check::Expired(what)
        } else {
            Check::Until(deadline.min(next_look))
        }
    }
}

/// A request under way; dropped with its response body (or its future, if the connection
/// goes first). The last one out starts the keep-alive clock.
struct Busy(Arc<Tracker>);

impl Drop for Busy {
    fn drop(&mut self) {
        let t = &self.0;
        if t.busy.fetch_sub(1, Ordering::Relaxed) == 1 {
            t.since_ms.store(t.now_ms(), Ordering::Relaxed);
            t.phase.store(IDLE, Ordering::Relaxed);
        }
    }
}

/// The socket, telling the tracker when bytes arrive.
struct TrackedIo {
    tcp: TcpStream,
    tracker: Arc<Tracker>,
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.tracker.on_read();
        }
        result
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// The router as one connection's hyper service: marks requests busy until their response is
/// sent, and answers 503 `shutting_down` once the shutdown has begun.
struct ConnService {
    app: Router,
    tracker: Arc<Tracker>,
}

type ServiceFuture =
    Pin<Box<dyn Future<Output = Result<Response<TrackedBody>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = ServiceFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let busy = self.tracker.request_started();
        if self.tracker.shared.draining.load(Ordering::Relaxed) {
            return Box::pin(async move {
                let response = shutting_down(req).await;
                Ok(response.map(|inner| TrackedBody { inner, _busy: busy }))
            });
        }
        let app = self.app.clone();
        Box::pin(async move {
            let Ok(mut response) = tower::ServiceExt::oneshot(app, req).await;
            // An answer finished during the shutdown closes its connection.
            if busy.0.shared.draining.load(Ordering::Relaxed) {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response.map(|inner| TrackedBody { inner, _busy: busy }))
        })
    }
}

/// The answer to a request that arrives during the shutdown: 503 with `Connection: close`,
/// after reading (a bounded part of) its body.
async fn shutting_down(req: Request<Incoming>) -> Response<Body> {
    let body = Body::new(req.into_body());
    let _ = tokio::time::timeout(REFUSE_WAIT, axum::body::to_bytes(body, DISCARD_MAX)).await;
    let mut response =
        ApiError::unavailable("the server is shutting down; retry in a moment or on another node")
            .with_code("shutting_down")
            .with_retry_after(1)
            .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A response body that holds its request's [`Busy`] until hyper has sent it and drops it.
struct TrackedBody {
    inner: Body,
    _busy: Busy,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            max_connections: 10,
            shutdown_drain: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(30),
        }
    }

    fn tracker() -> Arc<Tracker> {
        Arc::new(Tracker::new(Arc::new(Shared {
            draining: AtomicBool::new(false),
            epoch: Instant::now(),
            open: metrics::Gauge::noop(),
            header_timeouts: metrics::Counter::noop(),
            idle_timeouts: metrics::Counter::noop(),
        })))
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_times_headers_and_idleness_but_never_a_request() {
        let l = limits();
        let t = tracker();
        let start = Instant::now();
        // Fresh: the headers' clock runs from the accept, and a first byte does not restart it.
        assert_eq!(
            t.check(start, &l),
            Check::Until(start + l.header_read_timeout)
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        t.on_read();
        assert_eq!(
            t.check(Instant::now(), &l),
            Check::Until(start + l.header_read_timeout)
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(t.check(Instant::now(), &l), Check::Expired(Expired::Header));

        // A request under way is never timed, however long it takes.
        let busy = t.request_started();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(matches!(t.check(Instant::now(), &l), Check::Until(_)));
        // Its response sent: the keep-alive clock starts; the watchdog looks again within the
        // shorter timeout (a request may begin meanwhile).
        drop(busy);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(
            t.check(Instant::now(), &l),
            Check::Until(Instant::now() + l.header_read_timeout)
        );
        // The next request's first byte starts its headers' clock.
        t.on_read();
        let head_from = Instant::now();
        assert_eq!(
            t.check(Instant::now(), &l),
            Check::Until(head_from + l.header_read_timeout)
        );
        // More bytes do not restart it.
        tokio::time::advance(Duration::from_secs(9)).await;
        t.on_read();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(t.check(Instant::now(), &l), Check::Expired(Expired::Header));

        // An idle connection left alone expires on the keep-alive clock.
        let t = tracker();
        drop(t.request_started());
        tokio::time::advance(l.keep_alive_timeout).await;
        assert_eq!(
            t.check(Instant::now(), &l),
            Check::Expired(Expired::KeepAlive)
        );
    }

    #[test]
    fn only_errors_about_the_machine_pause_the_accept_loop() {
        use std::io::{Error, ErrorKind};
        assert_eq!(
            accept_pause(&Error::from(ErrorKind::ConnectionAborted)),
            None
        );
        assert_eq!(accept_pause(&Error::from(ErrorKind::ConnectionReset)), None);
        // EMFILE (24) and ENFILE (23): out of file descriptors.
        assert_eq!(
            accept_pause(&Error::from_raw_os_error(24)),
            Some(ACCEPT_BACKOFF)
        );
        assert_eq!(
            accept_pause(&Error::from_raw_os_error(23)),
            Some(ACCEPT_BACKOFF)
        );
    }

    #[test]
    fn beyond_the_cap_only_the_liveness_check_is_answered_200() {
        let tm: &[u8] = b"too many";
        for head in [
            &b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET /healthz?probe=1 HTTP/1.1\r\n",
        ] {
            assert_eq!(refusal_for(head, tm), ALIVE);
        }
        for head in [
            &b"GET /healthzz HTTP/1.1\r\n"[..],
            b"POST /healthz HTTP/1.1\r\n",
            b"GET /readyz HTTP/1.1\r\n",
            b"GET /heal",
            b"",
        ] {
            assert_eq!(refusal_for(head, tm), tm);
        }
        let alive = String::from_utf8(ALIVE.to_vec()).unwrap();
        let (head, body) = alive.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["status"], "ok");
    }

    #[test]
    fn the_over_the_cap_answer_is_a_complete_http_response_in_our_error_shape() {
        let raw = String::from_utf8(too_many_connections(20)).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains("\r\nretry-after: 1"));
        assert!(head.contains("\r\nconnection: close"));
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "too_many_connections");
        assert_eq!(v["error"]["details"]["max_connections"], 20);
    }
}
