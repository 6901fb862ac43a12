//! The accept loop: hyper's HTTP/1.1 connections under a connection cap and a header-read
//! timeout, with graceful shutdown.
//!
//! `axum::serve` offers neither a header timeout nor a cap, so connections are served here
//! (the mini-redis `Listener` shape). At the cap a new connection gets a short 503 written
//! without waiting and is closed, rather than waiting in the kernel's backlog behind
//! connections that may be slowloris clients; the header timeout cuts those within
//! [`ApiLimits::header_read_timeout`](super::ApiLimits::header_read_timeout).

use super::{routes, ApiContext, SHUTDOWN_GRACE};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

const R: Ordering = Ordering::Relaxed;

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
    let router = routes::router(Arc::clone(&ctx));
    let permits = Arc::new(Semaphore::new(ctx.limits.max_connections.max(1)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(ctx.limits.header_read_timeout).max_buf_size(MAX_HEADER_BYTES).keep_alive(true);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        eprintln!("api: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    ctx.stats.http_refused.fetch_add(1, R);
                    refuse(stream);
                    continue;
                };
                ctx.stats.http_accepted.fetch_add(1, R);
                let _ = stream.set_nodelay(true);
                let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router.clone())).with_upgrades();
                let (ctx, mut stop) = (Arc::clone(&ctx), stop.clone());
                connections.spawn(async move {
                    let _permit = permit;
                    let _open = OpenConnection::new(&ctx.stats.http_open);
                    let mut conn = std::pin::pin!(conn);
                    let served = tokio::select! {
                        r = conn.as_mut() => r,
                        _ = stopped(&mut stop) => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = served {
                        if e.is_timeout() {
                            ctx.stats.header_timeouts.fetch_add(1, R);
                        }
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
