//! The HTTP/1.1 server loop: accepts connections and serves the router on each with hyper,
//! holding every connection to the limits in `[server]`.
//!
//! - **A cap on open connections** (`max_connections`). A connection beyond it is still
//!   accepted and answered `503 too_many_connections` with `Retry-After` and `Connection: close`
//!   (`GET /healthz` is answered 200: the process is alive), instead of the listener's queue
//!   filling up unanswered. Those answers are few at a time and short (`refuse.rs`).
//! - **Header-read and keep-alive timeouts**, kept by a watchdog per connection
//!   (`connection.rs`). hyper's own `header_read_timeout` also runs while a kept-alive
//!   connection waits for its next request, so it cannot give an idle connection longer than a
//!   slow header: hence ours.
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

mod connection;
mod refuse;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::config::ServerConfig;
use refuse::Refusals;

/// The pause after an accept error that is not about one connection (EMFILE, ENFILE, ENOMEM).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// File descriptors left for everything but client connections (log segments, the state
/// store, outgoing connections, over-the-cap answers).
const FD_RESERVE: u64 = 128;

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
    let refusals = Refusals::new(max);
    let shared = Arc::new(Shared {
        draining: AtomicBool::new(false),
        epoch: Instant::now(),
        open: metrics::gauge!("storeline_http_connections"),
        header_timeouts: metrics::counter!(
            "storeline_http_connections_closed_total", "reason" => "header_timeout"
        ),
        idle_timeouts: metrics::counter!(
            "storeline_http_connections_closed_total", "reason" => "keep_alive_timeout"
        ),
    });
    let refused = metrics::counter!(
        "storeline_http_connections_refused_total", "reason" => "max_connections"
    );
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
                        tokio::spawn(connection::run(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
