//! Order routing as one piece for the binary: a thread with its own tokio runtime running
//! the [`OrderGateway`] and the venue's push stream (Binance's user-data stream, Bybit's
//! private stream) between the engine's outbound queue and the inbound ring. `sapphire run`
//! calls [`start_routing`] when the engine runs in `VenueMode::External` and stops it with
//! [`RoutingHandle::stop`].

use super::binance::{self, BinanceExecution, BinanceExecutionConfig};
use super::bybit::{run_private_stream, BybitExecution, BybitExecutionConfig, PrivateStreamConfig, BYBIT_PRIVATE_WS_URL, BYBIT_URL};
use super::credentials::Credentials;
use super::errors::VenueError;
use super::execution::{EnginePositions, OrderGateway, OrderGatewayConfig, OrderGatewayStats};
use super::user_stream::{run_user_stream, UserStreamConfig, UserStreamStats};
use crate::binance::BinanceMarket;
use crate::bybit::BybitCategory;
use sapphire_core::event::Event;
use sapphire_core::instrument::Instrument;
use sapphire_core::release::OrderSource;
use sapphire_core::ring::Producer;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Which venue and market orders go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VenueMarket {
    /// Binance spot.
    BinanceSpot,
    /// Binance USD-M futures.
    BinanceUsdM,
    /// Bybit spot.
    BybitSpot,
    /// Bybit linear perpetuals.
    BybitLinear,
}

impl VenueMarket {
    /// Parses `binance-spot`, `binance-usdm`, `bybit-spot`, `bybit-linear`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "binance-spot" | "binance" => Self::BinanceSpot,
            "binance-usdm" | "binance-futures" => Self::BinanceUsdM,
            "bybit-spot" => Self::BybitSpot,
            "bybit-linear" | "bybit" => Self::BybitLinear,
            _ => return None,
        })
    }

    /// The production REST base.
    pub fn default_rest_url(self) -> &'static str {
        match self {
            Self::BinanceSpot => binance::SPOT_URL,
            Self::BinanceUsdM => binance::USDM_URL,
            Self::BybitSpot | Self::BybitLinear => BYBIT_URL,
        }
    }

    /// The production push stream: Binance's user-data WebSocket base, Bybit's private
    /// WebSocket.
    pub fn default_user_stream_url(self) -> &'static str {
        match self {
            Self::BinanceSpot => "wss://stream.binance.com:9443",
            Self::BinanceUsdM => "wss://fstream.binance.com",
            Self::BybitSpot | Self::BybitLinear => BYBIT_PRIVATE_WS_URL,
        }
    }
}

/// Everything order routing needs.
#[derive(Debug, Clone)]
pub struct RoutingConfig {
    /// Venue and market.
    pub market: VenueMarket,
    /// REST base; `None` for production.
    pub rest_url: Option<String>,
    /// The push stream's URL: Binance's user-data WebSocket base, Bybit's private WebSocket
    /// (`…/v5/private`; a bare base gets the path added); `None` for production.
    pub user_stream_url: Option<String>,
    /// API key and secret.
    pub credentials: Credentials,
    /// The gateway's behaviour.
    pub gateway: OrderGatewayConfig,
}

/// Running order routing: its counters, and how to stop it.
#[derive(Debug)]
pub struct RoutingHandle {
    thread: std::thread::JoinHandle<()>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    stream_stop: tokio::sync::watch::Sender<bool>,
    /// The gateway's counters and order-to-ack latency.
    pub stats: Arc<OrderGatewayStats>,
    /// The push stream's counters.
    pub stream_stats: Arc<UserStreamStats>,
}

impl RoutingHandle {
    /// Stops the gateway after the order in hand and waits for the thread.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.stream_stop.send(true);
        let _ = self.thread.join();
    }
}

/// Starts order routing on a thread of its own: orders from `orders` (the engine's outbound
/// queue), reports into `events` (the inbound ring). With `engine` (the engine's positions as
/// the edge tracks them) futures positions are reconciled too.
pub fn start_routing(
    config: RoutingConfig,
    instruments: &[Instrument],
    orders: impl OrderSource,
    events: Producer<Event>,
    engine: Option<Arc<dyn EnginePositions>>,
) -> Result<RoutingHandle, VenueError> {
    let rest_url = config.rest_url.clone().unwrap_or_else(|| config.market.default_rest_url().to_string());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| VenueError::NotSent { venue: "routing", reason: format!("starting the runtime: {e}") })?;
    let (stream_stop, stream_stop_rx) = tokio::sync::watch::channel(false);
    let stream_stats = Arc::new(UserStreamStats::default());
    let instruments = instruments.to_vec();
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map_err(|e| VenueError::NotSent { venue: "routing", reason: format!("starting the thread: {e}") })
    };
    match config.market {
        VenueMarket::BinanceSpot | VenueMarket::BinanceUsdM => {
            let market = if config.market == VenueMarket::BinanceSpot { BinanceMarket::Spot } else { BinanceMarket::UsdM };
            let client = Arc::new(BinanceExecution::new(BinanceExecutionConfig::new(market, rest_url), config.credentials)?);
            let gateway = with_engine(OrderGateway::new(Arc::clone(&client), &instruments, config.gateway), engine);
            let (stats, stop) = (gateway.stats(), gateway.stop_handle());
            let url = config.user_stream_url.unwrap_or_else(|| config.market.default_user_stream_url().to_string());
            let s_stats = Arc::clone(&stream_stats);
            let thread = spawn(
                "venue-binance",
                Box::new(move || {
                    runtime.block_on(async move {
                        let (tx, rx) = tokio::sync::mpsc::channel(4_096);
                        tokio::spawn(run_user_stream(Arc::clone(&client), UserStreamConfig::new(url), tx, s_stats, stream_stop_rx));
                        gateway.with_user_updates(rx).run(orders, events).await;
                    });
                }),
            )?;
            Ok(RoutingHandle { thread, stop, stream_stop, stats, stream_stats })
        }
        VenueMarket::BybitSpot | VenueMarket::BybitLinear => {
            let category = if config.market == VenueMarket::BybitSpot { BybitCategory::Spot } else { BybitCategory::Linear };
            let credentials = config.credentials.clone();
            let client = Arc::new(BybitExecution::new(BybitExecutionConfig::new(category, rest_url), config.credentials)?);
            let gateway = with_engine(OrderGateway::new(client, &instruments, config.gateway), engine);
            let (stats, stop) = (gateway.stats(), gateway.stop_handle());
            let url = config.user_stream_url.unwrap_or_else(|| config.market.default_user_stream_url().to_string());
            let s_stats = Arc::clone(&stream_stats);
            let thread = spawn(
                "venue-bybit",
                Box::new(move || {
                    runtime.block_on(async move {
                        // Fills and order updates pushed as they happen; the gateway polls only
                        // while the stream is down, and queries its orders at each reconnect.
                        let (tx, rx) = tokio::sync::mpsc::channel(4_096);
                        tokio::spawn(run_private_stream(PrivateStreamConfig::new(url), credentials, tx, s_stats, stream_stop_rx));
                        gateway.with_user_updates(rx).run(orders, events).await;
                    });
                }),
            )?;
            Ok(RoutingHandle { thread, stop, stream_stop, stats, stream_stats })
        }
    }
}

fn with_engine<V: super::ExecutionVenue>(gateway: OrderGateway<V>, engine: Option<Arc<dyn EnginePositions>>) -> OrderGateway<V> {
    match engine {
        Some(e) => gateway.with_engine_positions(e),
        None => gateway,
    }
}
