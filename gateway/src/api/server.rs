//! The accept loop: hyper's HTTP/1.1 connections under a connection cap and a header-read
//! timeout, with graceful shutdown.
//!
//! `axum::serve` offers neither a header timeout nor a cap, so connections are served here
//! (the mini-redis `Listener` shape). Each connection holds a [`Place`] under the cap. A
//! connection is *idle* while it waits for a request's headers (a new one, a keep-alive one
//! between requests, a slowloris one) and *busy* while a request is handled. At the cap a new
//! connection takes the place of the longest-idle one, which is closed at once: idle
//! connections, however many and however often they reconnect, cannot keep a liveness probe
//! out. Only when every place is busy does a new connection go to the probe lane: at most
//! [`PROBE_LANE`] connections, one request each, headers within
//! [`ApiLimits::probe_header_timeout`](super::ApiLimits::probe_header_timeout), where
//! `/healthz` and `/readyz` are answered and anything else gets a 503. Past that a connection
//! gets a short 503 written without waiting and is closed.

use super::{routes, ApiContext, SHUTDOWN_GRACE};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;

const R: Ordering = Ordering::Relaxed;

/// Connections served at once on the probe lane (when every place under the cap is busy).
pub(super) const PROBE_LANE: usize = 16;

/// `Place::idle_since` of a connection handling a request.
const BUSY: u64 = u64::MAX;

/// A connection's place under the cap.
#[derive(Debug)]
struct Place {
    /// [`BUSY`] while a request is handled; otherwise when the connection went idle, on
    /// [`Places`]' own counter (the lowest is the longest idle). No clock: ordering is enough.
    idle_since: AtomicU64,
    /// Notified when the place is given to a new connection: this one closes.
    evict: Notify,
}

/// The places under the cap. Touched only by the server's own (single-threaded) runtime: the
/// lock is never contended.
#[derive(Debug)]
struct Places {
    max: usize,
    held: Mutex<Vec<Arc<Place>>>,
    /// Orders idle moments.
    clock: AtomicU64,
}

impl Places {
    fn new(max: usize) -> Self {
        Self { max: max.max(1), held: Mutex::new(Vec::with_capacity(max.max(1))), clock: AtomicU64::new(0) }
    }

    fn now(&self) -> u64 {
        self.clock.fetch_add(1, R)
    }

    /// A place for a new connection: a free one, or the longest-idle connection's (which is
    /// told to close, counted in `evicted`); `None` when every place is busy.
    fn admit(&self, evicted: &AtomicU64) -> Option<Arc<Place>> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.len() >= self.max {
            let (i, _) =
                held.iter().enumerate().map(|(i, p)| (i, p.idle_since.load(R))).filter(|&(_, t)| t != BUSY).min_by_key(|&(_, t)| t)?;
            held.swap_remove(i).evict.notify_one();
            evicted.fetch_add(1, R);
        }
        let place = Arc::new(Place { idle_since: AtomicU64::new(self.now()), evict: Notify::new() });
        held.push(Arc::clone(&place));
        Some(place)
    }

    /// Gives a closed connection's place back (nothing when it was taken from it).
    fn release(&self, place: &Arc<Place>) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| !Arc::ptr_eq(p, place));
    }
}

/// Holds a place for as long as its connection is served.
struct Held(Arc<Places>, Arc<Place>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.release(&self.1);
    }
}

/// Largest request head (request line and headers) accepted.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Why the server dropped a WebSocket client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WsDrop {
    /// It read so far behind (or not at all) that a ping went unanswered past the bound.
    Slow = 0,
    /// Writing one tick's messages took longer than the send timeout.
    Stalled = 1,
    /// It sent something not allowed (an oversized or malformed frame).
    Protocol = 2,
    /// The connection failed.
    Error = 3,
}

impl WsDrop {
    /// Every reason, in label order.
    pub(super) const ALL: [WsDrop; 4] = [WsDrop::Slow, WsDrop::Stalled, WsDrop::Protocol, WsDrop::Error];

    /// The `reason` label.
    pub(super) fn label(self) -> &'static str {
        match self {
            WsDrop::Slow => "slow",
            WsDrop::Stalled => "stalled",
            WsDrop::Protocol => "protocol",
            WsDrop::Error => "error",
        }
    }
}

/// Why a WebSocket upgrade was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WsRefusal {
    /// The client cap was reached.
    Capacity = 0,
    /// The page asking was not served by us.
    Origin = 1,
}

impl WsRefusal {
    /// Every reason, in label order.
    pub(super) const ALL: [WsRefusal; 2] = [WsRefusal::Capacity, WsRefusal::Origin];

    /// The `reason` label.
    pub(super) fn label(self) -> &'static str {
        match self {
            WsRefusal::Capacity => "capacity",
            WsRefusal::Origin => "origin",
        }
    }
}

/// The server's own counters, for `/metrics`.
#[derive(Debug, Default)]
pub(super) struct ServerStats {
    /// HTTP connections being served now.
    pub(super) http_open: AtomicU64,
    /// HTTP connections accepted and served.
    pub(super) http_accepted: AtomicU64,
    /// Connections refused at the cap.
    pub(super) http_refused: AtomicU64,
    /// Connections cut because the request headers did not arrive in time.
    pub(super) header_timeouts: AtomicU64,
    /// Control requests answered 429: their address had too many tokens refused.
    pub(super) auth_throttled: AtomicU64,
    /// Idle connections closed to make room for a new one at the cap.
    pub(super) http_evicted: AtomicU64,
    /// Connections served on the probe lane (every place busy).
    pub(super) probe_lane: AtomicU64,
    /// WebSocket clients connected now.
    pub(super) ws_clients: AtomicU64,
    /// WebSocket clients accepted.
    pub(super) ws_accepted: AtomicU64,
    /// WebSocket clients dropped by the server, by [`WsDrop`].
    pub(super) ws_dropped: [AtomicU64; 4],
    /// WebSocket upgrades refused, by [`WsRefusal`].
    pub(super) ws_refused: [AtomicU64; 2],
    /// WebSocket messages sent.
    pub(super) ws_messages: AtomicU64,
}

impl ServerStats {
    /// Counts a dropped client.
    pub(super) fn dropped(&self, why: WsDrop) {
        self.ws_dropped[why as usize].fetch_add(1, R);
    }

    /// Counts a refused upgrade.
    pub(super) fn refused(&self, why: WsRefusal) {
        self.ws_refused[why as usize].fetch_add(1, R);
    }
}

/// Counts a connection as open for as long as it lives.
struct OpenConnection<'a>(&'a AtomicU64);

impl<'a> OpenConnection<'a> {
    fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, R);
        Self(gauge)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, R);
    }
}

/// Returns once `stop` is true (or its sender is gone), holding no borrow of it.
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves until `stop` turns true, then gives connections in flight [`SHUTDOWN_GRACE`].
pub(super) async fn serve(listener: TcpListener, ctx: Arc<ApiContext>, mut stop: watch::Receiver<bool>) {
    let router = TowerToHyperService::new(routes::router(Arc::clone(&ctx)));
    let probes = TowerToHyperService::new(routes::probe_router(Arc::clone(&ctx)));
    let places = Arc::new(Places::new(ctx.limits.max_connections));
    let lane = Arc::new(Semaphore::new(PROBE_LANE));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(ctx.limits.header_read_timeout).max_buf_size(MAX_HEADER_BYTES).keep_alive(true);
    let mut probe_http = hyper::server::conn::http1::Builder::new();
    probe_http
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.limits.probe_header_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(false);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        eprintln!("api: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (stream, peer) = stream;
                let _ = stream.set_nodelay(true);
                let Some(place) = places.admit(&ctx.stats.http_evicted) else {
                    let Ok(permit) = Arc::clone(&lane).try_acquire_owned() else {
                        ctx.stats.http_refused.fetch_add(1, R);
                        refuse(stream);
                        continue;
                    };
                    ctx.stats.probe_lane.fetch_add(1, R);
                    let conn = probe_http.serve_connection(TokioIo::new(stream), probes.clone());
                    let (ctx, mut stop) = (Arc::clone(&ctx), stop.clone());
                    connections.spawn(async move {
                        let _permit = permit;
                        let mut conn = std::pin::pin!(conn);
                        let served = tokio::select! {
                            r = conn.as_mut() => r,
                            _ = stopped(&mut stop) => {
                                conn.as_mut().graceful_shutdown();
                                conn.await
                            }
                        };
                        if served.is_err_and(|e| e.is_timeout()) {
                            ctx.stats.header_timeouts.fetch_add(1, R);
                        }
                    });
                    continue;
                };
                ctx.stats.http_accepted.fetch_add(1, R);
                let service = {
                    let (router, place, places) = (router.clone(), Arc::clone(&place), Arc::clone(&places));
                    hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                        place.idle_since.store(BUSY, R);
                        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                        let handled = hyper::service::Service::call(&router, req);
                        let (place, places) = (Arc::clone(&place), Arc::clone(&places));
                        async move {
                            let response = handled.await;
                            place.idle_since.store(places.now(), R);
                            response
                        }
                    })
                };
                let conn = http.serve_connection(TokioIo::new(stream), service).with_upgrades();
                let (ctx, mut stop, held) = (Arc::clone(&ctx), stop.clone(), Held(Arc::clone(&places), place));
                connections.spawn(async move {
                    let _open = OpenConnection::new(&ctx.stats.http_open);
                    let mut conn = std::pin::pin!(conn);
                    let served = tokio::select! {
                        r = conn.as_mut() => r,
                        // Its place went to a new connection: dropping it closes the socket.
                        _ = held.1.evict.notified() => return,
                        _ = stopped(&mut stop) => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    drop(held);
                    if served.is_err_and(|e| e.is_timeout()) {
                        ctx.stats.header_timeouts.fetch_add(1, R);
                    }
                });
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
        // WebSocket clients close on the same signal; give them the moment a close frame takes.
        while ctx.stats.ws_clients.load(R) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // A client that holds on past the grace period is cut when the runtime drops.
}

/// Answers a connection over the cap with a 503, without waiting, and closes it.
fn refuse(stream: TcpStream) {
    const BODY: &str = "{\"error\":\"too many connections; retry shortly\"}";
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.try_write(response.as_bytes());
}
