//! The HTTP API: health and readiness probes, Prometheus metrics, a dashboard snapshot and
//! operator control.
//!
//! The server runs on its own thread with a single-threaded tokio runtime, so it never takes
//! a core from the engine. It reads [`EdgeState`] (atomics the edge thread keeps from the
//! engine's outputs) and the pipeline's own counters; it writes only by publishing
//! [`Control`](sapphire_core::event::Control) events into the inbound ring, never waiting
//! (a full ring is a 503), so the engine journals every operator action and a replay
//! reproduces it.
//!
//! | route | |
//! |---|---|
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 when the core runs, books are in sync and the journal is healthy; 503 otherwise; the JSON body names each check |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /dashboard` | JSON snapshot: equity, PnL, fees, per-agent PnL and margin, risk state, orders |
//! | `POST /api/kill`, `/api/halt`, `/api/resume` | bearer token; a Control event |
//! | `POST /api/agents/{id}/pause`, `/api/agents/{id}/resume` | bearer token; a Control event |
//! | `POST /api/limits` | bearer token; JSON `{"limit": "max_order_usd", "value": "500"}`; a Control event |

mod control;
mod metrics;
mod routes;
mod state;
#[cfg(test)]
mod tests;

pub use state::{AgentMargin, EdgeState, RiskFlags};

use sapphire_core::event::Event;
use sapphire_core::ring::Producer;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest request body accepted (control bodies are a few dozen bytes).
pub const BODY_LIMIT: usize = 16 * 1024;
/// Longest a request may take, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The control bearer token. Its `Debug` never shows it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    /// A token; `None` when empty or blank.
    pub fn new(token: &str) -> Option<Self> {
        let t = token.trim();
        (!t.is_empty()).then(|| Self(t.to_string()))
    }

    /// Compares in time that depends on the lengths only, not on where the bytes differ.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        let mut diff = a.len() ^ b.len();
        for i in 0..a.len().max(b.len()) {
            diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
        }
        std::hint::black_box(diff) == 0
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

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
    /// thread of its own.
    pub fn start(config: ApiConfig, state: Arc<EdgeState>, inbound: Producer<Event>) -> Result<Self, ApiError> {
        let bind = |source| ApiError::Bind { addr: config.bind, source };
        let listener = std::net::TcpListener::bind(config.bind).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ApiError::Runtime)?;
        let ctx = Arc::new(ApiContext { state, inbound: Mutex::new(inbound), token: config.token });
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let core = config.core;
        let thread = std::thread::Builder::new()
            .name("sapphire-api".into())
            .spawn(move || {
                let _ = sapphire_core::affinity::pin_current_thread(core);
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => return eprintln!("api: {e}"),
                    };
                    let mut signal = stopped.clone();
                    let server = axum::serve(listener, routes::router(ctx))
                        .with_graceful_shutdown(async move {
                            let _ = signal.wait_for(|s| *s).await;
                        })
                        .into_future();
                    let server = tokio::spawn(server);
                    let _ = stopped.wait_for(|s| *s).await;
                    // Requests in flight get a grace period; a client that holds on is cut.
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, server).await;
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
