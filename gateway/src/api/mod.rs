//! The HTTP API: the live dashboard page and its WebSocket stream, health and readiness
//! probes, Prometheus metrics, a dashboard snapshot, paged recent history, and operator
//! control.
//!
//! The server runs on its own thread with a single-threaded tokio runtime, so it never takes
//! a core from the engine. It reads [`EdgeState`] (atomics and short histories the edge thread
//! keeps from the engine's outputs) and the pipeline's own counters; it writes only by
//! publishing [`Control`](sapphire_core::event::Control) events into the inbound ring, never
//! waiting (a full ring is a 503), so the engine journals every operator action and a replay
//! reproduces it.
//!
//! | route | |
//! |---|---|
//! | `GET /` | the dashboard page (assets embedded in the binary, strict CSP) |
//! | `GET /ws` | WebSocket: a `snapshot` every tick, plus `equity`, `positions`, `fills`, `orders`, `signals` and `risk` messages with what the client has not seen |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 when the core runs, books are in sync, the journal is healthy and every [`HealthSource`] is ready; 503 otherwise; the JSON body names each check |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /dashboard` | JSON snapshot: equity, PnL, fees, per-agent PnL and margin, risk state, orders, positions, latency, feeds |
//! | `GET /api/orders`, `/api/trades`, `/api/signals`, `/api/risk` | recent history, newest first, paged with `?limit=&before=` |
//! | `POST /api/kill`, `/api/halt`, `/api/resume` | bearer token; a Control event (`/api/kill?flatten=true`: and a flatten of everything) |
//! | `POST /api/flatten` | bearer token; close positions (all, one agent, one symbol): see [`commands`](self::commands) |
//! | `POST /api/orders` | bearer token; a manual order through the risk checks, answered with its outcome: see [`commands`](self::commands) |
//! | `POST /api/agents/{id}/pause`, `/api/agents/{id}/resume` | bearer token; a Control event |
//! | `POST /api/limits` | bearer token; JSON `{"limit": "max_order_usd", "value": "500"}`; a Control event |
//! | `GET /openapi.json` | this table as an OpenAPI 3.1 document, generated from the handlers (`docs/openapi.json`; see [`openapi`](self::openapi)) |
//!
//! # Limits
//! Connections are capped ([`ApiLimits::max_connections`]); at the cap a new connection takes
//! the place of the connection idle longest (waiting for request headers), which is closed,
//! so idle connections can never keep `/healthz` and `/readyz` from being answered. When every
//! place is busy with a request, `/healthz` and `/readyz` are still answered on a small probe
//! lane and anything else gets a 503. Request headers must arrive within
//! [`ApiLimits::header_read_timeout`] (a slowloris client is cut, and an idle keep-alive
//! connection too), bodies are capped at [`BODY_LIMIT`], requests at [`REQUEST_TIMEOUT`].
//! A client address whose bearer tokens keep being refused gets a 429 on control routes for
//! a while (see [`throttle`](self::throttle)).
//! WebSocket clients are capped separately ([`ApiLimits::ws_max_clients`]); each one's
//! state is a set of cursors, never a queue, and one that stops reading is dropped (see
//! [`ws`](self::ws)).

mod assets;
/// Operator orders: manual orders and flatten.
mod commands;
mod control;
mod health;
mod history;
pub mod metrics;
mod openapi;
mod page;
mod routes;
mod server;
mod state;
#[cfg(test)]
mod tests;
mod throttle;
mod view;
mod ws;

pub use health::{FnSource, HealthSource};
pub use metrics::MetricsWriter;
pub use state::{
    AgentMargin, EdgeState, PositionView, RiskFlags, EQUITY_HISTORY, EQUITY_POINT_EVERY_NS, FILL_HISTORY, ORDER_HISTORY, RISK_HISTORY,
    SIGNAL_HISTORY,
};

use sapphire_core::event::Event;
use sapphire_core::ring::Producer;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest request body accepted (control bodies are a few dozen bytes).
pub const BODY_LIMIT: usize = 16 * 1024;
/// Longest a request may take, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Most records one page of `/api/orders` and the like returns (a larger `limit` is capped).
pub const MAX_PAGE: usize = 500;
/// Records a page returns when the request names no `limit`.
pub const DEFAULT_PAGE: usize = 100;

/// The control bearer token: compared exactly, in constant time; its `Debug` never shows it.
pub type ApiToken = crate::secret::SecretToken;

/// Where and how the API serves.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Listen address (port 0 picks a free port; [`ApiServer::addr`] says which).
    pub bind: SocketAddr,
    /// Control token; `None` disables control (403).
    pub token: Option<ApiToken>,
    /// Core to pin the server thread to.
    pub core: Option<usize>,
}

/// How much the server takes on: connections, header timing, WebSocket clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiLimits {
    /// HTTP connections served at once (upgraded WebSockets not counted: they have their own
    /// cap). One more takes the place of the longest-idle connection (no request in
    /// progress), which is closed; when all are busy, only the probes are answered.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (from the connection or the end of the
    /// previous response); past it the connection is closed.
    pub header_read_timeout: Duration,
    /// The same on the probe lane (every place under the cap busy): short, so that idle
    /// connections cannot hold the lane.
    pub probe_header_timeout: Duration,
    /// WebSocket clients at once; one more gets a 503.
    pub ws_max_clients: usize,
    /// How often a WebSocket client gets a snapshot and what it has not seen.
    pub ws_tick: Duration,
    /// Run the server's thread at the lowest CPU priority (nice 19), so that on a core it
    /// shares with the market and edge threads it only takes the time they leave: hundreds of
    /// dashboard clients then cannot delay ticks on their way to the engine. Off by default:
    /// when the market thread keeps that core busy (the synthetic market at full rate), a
    /// nice-19 server gets almost no time and WebSocket handshakes take hundreds of ms.
    pub low_priority: bool,
    /// How often the server pings a WebSocket client to measure how far behind it reads.
    pub ws_ping_every: Duration,
    /// A ping unanswered for this long means the client reads that far behind, or not at
    /// all: it is dropped (reason `slow`).
    pub ws_max_lag: Duration,
    /// Longest one tick's messages may take to write; past it the client is dropped
    /// (reason `stalled`).
    pub ws_send_timeout: Duration,
    /// Most records of one kind in one message; a client that missed more gets the newest
    /// ones and a `skipped` count.
    pub ws_max_items: usize,
    /// Control requests one client address may have refused for their bearer token in a
    /// burst; past it its control requests get a 429 (see [`throttle`](self::throttle)).
    pub auth_burst: u32,
    /// One more refusal is allowed this often once the burst is spent.
    pub auth_refill: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(10),
            probe_header_timeout: Duration::from_secs(1),
            ws_max_clients: 64,
            ws_tick: Duration::from_millis(250),
            low_priority: false,
            ws_ping_every: Duration::from_secs(5),
            ws_max_lag: Duration::from_secs(15),
            ws_send_timeout: Duration::from_secs(5),
            ws_max_items: 200,
            auth_burst: 10,
            auth_refill: Duration::from_secs(6),
        }
    }
}

/// API errors.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The listening socket could not be had.
    #[error("the HTTP API cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The runtime or its thread could not start.
    #[error("starting the HTTP API: {0}")]
    Runtime(std::io::Error),
}

/// What every handler sees.
#[derive(Debug)]
struct ApiContext {
    state: Arc<EdgeState>,
    /// Controls go into the inbound ring through this producer; the lock is only ever
    /// contended by other HTTP requests, never by the engine.
    inbound: Mutex<Producer<Event>>,
    token: Option<ApiToken>,
    limits: ApiLimits,
    /// The server's own counters (connections, WebSocket clients).
    stats: server::ServerStats,
    /// Refused bearer tokens per client address (429 past a burst).
    auth_throttle: throttle::AuthThrottle,
    /// Turns true when the server stops (WebSocket clients close on it).
    stopping: tokio::sync::watch::Receiver<bool>,
    /// `/ws` messages rendered once per tick and shared by the clients.
    frames: ws::Frames,
}

/// A running API server. Stop it with [`ApiServer::shutdown`] before the pipeline shuts
/// down (it holds a producer of the inbound ring).
#[derive(Debug)]
pub struct ApiServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    /// Binds (synchronously, so a taken address is an error here) and starts serving on a
    /// thread of its own, with the default [`ApiLimits`].
    pub fn start(config: ApiConfig, state: Arc<EdgeState>, inbound: Producer<Event>) -> Result<Self, ApiError> {
        Self::start_with_limits(config, ApiLimits::default(), state, inbound)
    }

    /// [`start`](Self::start) with these limits.
    pub fn start_with_limits(
        config: ApiConfig,
        limits: ApiLimits,
        state: Arc<EdgeState>,
        inbound: Producer<Event>,
    ) -> Result<Self, ApiError> {
        let bind = |source| ApiError::Bind { addr: config.bind, source };
        let listener = std::net::TcpListener::bind(config.bind).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ApiError::Runtime)?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let ctx = Arc::new(ApiContext {
            state,
            inbound: Mutex::new(inbound),
            token: config.token,
            limits,
            stats: server::ServerStats::default(),
            auth_throttle: throttle::AuthThrottle::new(limits.auth_burst, limits.auth_refill),
            stopping: stopped.clone(),
            frames: ws::Frames::default(),
        });
        let core = config.core;
        let thread = std::thread::Builder::new()
            .name("sapphire-api".into())
            .spawn(move || {
                let _ = sapphire_core::affinity::pin_current_thread(core);
                if limits.low_priority {
                    if let Err(e) = sapphire_core::affinity::lower_current_thread_priority() {
                        eprintln!("api: could not lower the server thread's priority ({e}); it competes with the market path as an equal");
                    }
                }
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => return eprintln!("api: {e}"),
                    };
                    server::serve(listener, ctx, stopped).await;
                });
            })
            .map_err(ApiError::Runtime)?;
        Ok(Self { addr, stop: Some(stop), thread: Some(thread) })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in flight finish (briefly), and joins the thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
