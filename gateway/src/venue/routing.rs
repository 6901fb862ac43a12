//! Order routing as one piece for the binary: a thread with its own tokio runtime running
//! the [`OrderGateway`] (and, on Binance, the user-data stream) between the
//! engine's outbound queue and the inbound ring. `sapphire run` calls [`start_routing`] when
//! the engine runs in `VenueMode::External` and stops it with [`RoutingHandle::stop`].

use super::binance::{self, BinanceExecution, BinanceExecutionConfig};
use super::bybit::{BybitExecution, BybitExecutionConfig, BYBIT_URL};
use super::credentials::Credentials;
use super::errors::VenueError;
use super::execution::{OrderGateway, OrderGatewayConfig, OrderGatewayStats};
use super::user_stream::{run_user_stream, UserStreamConfig, UserStreamStats};
use crate::binance::BinanceMarket;
use crate::bybit::BybitCategory;
use sapphire_core::event::Event;
use sapphire_core::instrument::Instrument;
use sapphire_core::order::Order;
use sapphire_core::ring::{Consumer, Producer};
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

    /// The production user-data WebSocket base (Binance only).
    pub fn default_user_stream_url(self) -> Option<&'static str> {
        match self {
            Self::BinanceSpot => Some("wss://stream.binance.com:9443"),
            Self::BinanceUsdM => Some("wss://fstream.binance.com"),
            Self::BybitSpot | Self::BybitLinear => None,
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
    /// User-data WebSocket base; `None` for production (Binance), ignored for Bybit.
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
    /// The user-data stream's counters (zero when there is none).
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
/// queue), reports into `events` (the inbound ring).
pub fn start_routing(
    config: RoutingConfig,
    instruments: &[Instrument],
    orders: Consumer<Order>,
    events: Producer<Event>,
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
            let gateway = OrderGateway::new(Arc::clone(&client), &instruments, config.gateway);
            let (stats, stop) = (gateway.stats(), gateway.stop_handle());
            let ws = config.user_stream_url.or_else(|| config.market.default_user_stream_url().map(str::to_string));
            let s_stats = Arc::clone(&stream_stats);
            let thread = spawn(
                "venue-binance",
                Box::new(move || {
                    runtime.block_on(async move {
                        let gateway = match ws {
                            Some(url) => {
                                let (tx, rx) = tokio::sync::mpsc::channel(4_096);
                                tokio::spawn(run_user_stream(Arc::clone(&client), UserStreamConfig::new(url), tx, s_stats, stream_stop_rx));
                                gateway.with_user_updates(rx)
                            }
                            None => gateway,
                        };
                        gateway.run(orders, events).await;
                    });
                }),
            )?;
            Ok(RoutingHandle { thread, stop, stream_stop, stats, stream_stats })
        }
        VenueMarket::BybitSpot | VenueMarket::BybitLinear => {
            let category = if config.market == VenueMarket::BybitSpot { BybitCategory::Spot } else { BybitCategory::Linear };
            let client = Arc::new(BybitExecution::new(BybitExecutionConfig::new(category, rest_url), config.credentials)?);
            let gateway = OrderGateway::new(client, &instruments, config.gateway);
            let (stats, stop) = (gateway.stats(), gateway.stop_handle());
            let thread = spawn(
                "venue-bybit",
                Box::new(move || {
                    runtime.block_on(async move {
                        gateway.run(orders, events).await;
                    });
                }),
            )?;
            Ok(RoutingHandle { thread, stop, stream_stop, stats, stream_stats })
        }
    }
}
