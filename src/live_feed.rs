//! `market.source = "binance"` or `"bybit"`: the venue's feed client publishing into the
//! engine's ring, with event-time timers beside it (venues send none). The instruments come
//! from the venue first (Binance exchangeInfo, Bybit instruments-info).

use crate::config::MarketSection;
use anyhow::Context;
use sapphire_core::event::{Event, Timer};
use sapphire_core::instrument::{InstrumentRegistry, MarketType};
use sapphire_core::latency::unix_nanos;
use sapphire_core::ring::Producer;
use sapphire_core::wait::WaitStrategy;
use sapphire_gateway::binance::instruments::{parse_exchange_info, register};
use sapphire_gateway::binance::{BinanceFeed, BinanceMarket};
use sapphire_gateway::bybit::instruments::{instruments_url, parse_instruments_info, venue_of};
use sapphire_gateway::bybit::{BybitCategory, BybitFeed};
use sapphire_gateway::connection::{
    BinanceConnection, BinanceConnectionConfig, BybitConnection, BybitConnectionConfig, ConnectionError, Shutdown,
};
use sapphire_gateway::feed::FeedCounters;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// The configured live feed: Binance or Bybit.
pub enum LiveSource {
    /// `market.source = "binance"`.
    Binance(BinanceSource),
    /// `market.source = "bybit"`.
    Bybit(BybitSource),
}

impl LiveSource {
    /// Reads the venue's instruments and registers the symbols to trade.
    pub fn prepare(market: &MarketSection, cap: usize, registry: &mut InstrumentRegistry) -> anyhow::Result<Self> {
        Ok(match market.source.as_str() {
            "bybit" => Self::Bybit(BybitSource::prepare(market, cap, registry)?),
            _ => Self::Binance(BinanceSource::prepare(market, cap, registry)?),
        })
    }

    /// The feed's live counters.
    pub fn counters(&self) -> tokio::sync::watch::Receiver<FeedCounters> {
        match self {
            Self::Binance(s) => s.counters(),
            Self::Bybit(s) => s.counters(),
        }
    }

    /// Runs the feed and a timer until `stop` or a terminal feed error (which sets `stop`, so
    /// the whole run ends); returns the events published and the error, if any.
    pub fn run(self, producer: Producer<Event>, timer_ms: u64, stop: &AtomicBool, full: &AtomicU64) -> FeedRun {
        match self {
            Self::Binance(s) => s.run(producer, timer_ms, stop, full),
            Self::Bybit(s) => s.run(producer, timer_ms, stop, full),
        }
    }
}

/// A configured Bybit v5 public feed (spot or linear), its instruments registered, not yet connected.
pub struct BybitSource {
    connection: BybitConnection,
    runtime: tokio::runtime::Runtime,
}

impl BybitSource {
    /// Reads the venue's instruments-info (every page) and registers the symbols to trade.
    pub fn prepare(market: &MarketSection, cap: usize, registry: &mut InstrumentRegistry) -> anyhow::Result<Self> {
        let category = match market.venue_market.as_str() {
            "linear" => BybitCategory::Linear,
            _ => BybitCategory::Spot,
        };
        let (venue, kind) = venue_of(category);
        let symbols: Vec<&str> = market.symbols.iter().map(String::as_str).collect();
        let mut config = if market.ws_url.is_empty() {
            BybitConnectionConfig::bybit(category, &symbols)
        } else {
            BybitConnectionConfig::new(market.ws_url.clone(), market.rest_url.clone(), category, &symbols)
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the feed runtime")?;
        let mut listed = Vec::new();
        let mut cursor: Option<String> = None;
        // Linear answers are paged; a venue that keeps handing out cursors is cut off.
        for _ in 0..100 {
            let url = instruments_url(&config.rest_url, category, cursor.as_deref());
            let body = runtime.block_on(sapphire_gateway::connection::http::get(&url)).with_context(|| format!("reading {url}"))?;
            let page = parse_instruments_info(category, &body).map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
            listed.extend(page.symbols);
            cursor = page.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
        // Every trading symbol (TRADING_SYMBOLS empty): the most traded first, by 24 h turnover.
        if market.symbols.is_empty() {
            let url = sapphire_gateway::bybit::instruments::tickers_url(&config.rest_url, category);
            let body = runtime.block_on(sapphire_gateway::connection::http::get(&url)).with_context(|| format!("reading {url}"))?;
            let turnovers = sapphire_gateway::bybit::instruments::parse_turnovers(&body).map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
            sapphire_gateway::bybit::instruments::rank_by_turnover(&mut listed, &turnovers);
            let ranked: Vec<(&str, f64)> = listed
                .iter()
                .filter(|s| s.trading)
                .map(|s| (s.symbol.as_str(), turnovers.get(&s.symbol).copied().unwrap_or(0.0)))
                .collect();
            print_ranking(venue, cap, &ranked);
        }
        sapphire_gateway::bybit::instruments::register(&listed, &market.symbols, cap, venue, kind, registry)
            .map_err(|e| crate::config::refuse("market.symbols (TRADING_SYMBOLS)", e))?;
        config.symbols = registry.iter().map(|i| i.symbol.clone()).collect();
        let feed = BybitFeed::new(category, registry, venue);
        Ok(Self { connection: BybitConnection::new(config, feed), runtime })
    }

    /// The feed's live counters.
    pub fn counters(&self) -> tokio::sync::watch::Receiver<FeedCounters> {
        self.connection.counters()
    }

    /// Runs the feed and a timer until `stop`; returns the events published.
    pub fn run(self, producer: Producer<Event>, timer_ms: u64, stop: &AtomicBool, full: &AtomicU64) -> FeedRun {
        let counters = self.connection.counters();
        let connection = self.connection;
        run_with_timers(&self.runtime, producer, timer_ms, stop, full, counters, move |mut sink, shutdown| async move {
            connection.run(&mut sink, shutdown).await.result
        })
    }
}

/// How a live feed ended.
pub struct FeedRun {
    /// Events published (the feed's and the timers').
    pub published: u64,
    /// The terminal error that stopped the feed (and the run), if one did.
    pub error: Option<ConnectionError>,
}

/// Runs `feed` on `runtime` with a wall-clock timer thread beside it until `stop`; a feed
/// that ends with an error sets `stop`: a run whose feed is gone must not go on trading.
fn run_with_timers<F, Fut>(
    runtime: &tokio::runtime::Runtime,
    producer: Producer<Event>,
    timer_ms: u64,
    stop: &AtomicBool,
    full: &AtomicU64,
    counters: tokio::sync::watch::Receiver<FeedCounters>,
    feed: F,
) -> FeedRun
where
    F: FnOnce(Producer<Event>, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), ConnectionError>>,
{
    let (tx, rx) = tokio::sync::broadcast::channel(1);
    let timers = AtomicU64::new(0);
    let error = std::thread::scope(|scope| {
        // Timers on the wall clock, stamped as events: the engine's guards and PnL
        // snapshots run as with the synthetic market, and replay sees the same timers.
        let mut timer_producer = producer.clone();
        let timers = &timers;
        scope.spawn(move || {
            let mut id = 0u32;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(timer_ms.max(1)));
                let now = unix_nanos();
                if timer_producer
                    .publish(WaitStrategy::Yield, Event::Timer(Timer { ts_event: now, ts_recv: now, timer_id: id, _pad: 0 }))
                    .is_err()
                {
                    full.fetch_add(1, Ordering::Relaxed);
                }
                id = id.wrapping_add(1);
                timers.fetch_add(1, Ordering::Relaxed);
            }
        });
        scope.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = tx.send(());
        });
        let result = runtime.block_on(feed(producer, Shutdown::new(rx)));
        if let Err(e) = &result {
            errln!("feed: stopped: {e}");
            stop.store(true, Ordering::SeqCst);
        }
        result.err()
    });
    let events = counters.borrow().events;
    FeedRun { published: events + timers.load(Ordering::Relaxed), error }
}

/// Says how many trading symbols the venue has, ranked by 24 h quote volume, and which lead
/// among those the cap (MAX_SYMBOLS_PER_AGENT) takes.
fn print_ranking(venue: &str, cap: usize, ranked: &[(&str, f64)]) {
    let taken = ranked.len().min(cap);
    let top: Vec<String> = ranked.iter().take(taken.min(5)).map(|(s, v)| format!("{s} ({v:.0})")).collect();
    outln!(
        "market: every trading symbol: {} on {venue}, ranked by 24 h quote volume; the top {taken} (MAX_SYMBOLS_PER_AGENT) traded: {}{}",
        ranked.len(),
        top.join(", "),
        if taken > top.len() { ", …" } else { "" }
    );
}

/// A configured Binance feed, its instruments registered, not yet connected.
pub struct BinanceSource {
    connection: BinanceConnection,
    runtime: tokio::runtime::Runtime,
}

impl BinanceSource {
    /// Reads the venue's exchangeInfo and registers the symbols to trade.
    pub fn prepare(market: &MarketSection, cap: usize, registry: &mut InstrumentRegistry) -> anyhow::Result<Self> {
        let (venue_market, venue, kind, info_path) = match market.venue_market.as_str() {
            "usdm" => (BinanceMarket::UsdM, "binance-usdm", MarketType::LinearPerpetual, "/fapi/v1/exchangeInfo"),
            _ => (BinanceMarket::Spot, "binance", MarketType::Spot, "/api/v3/exchangeInfo"),
        };
        let symbols: Vec<&str> = market.symbols.iter().map(String::as_str).collect();
        let mut config = if market.ws_url.is_empty() {
            BinanceConnectionConfig::binance(venue_market, &symbols)
        } else {
            BinanceConnectionConfig::new(market.ws_url.clone(), market.rest_url.clone(), venue_market, &symbols)
        };
        config.max_snapshots_per_window = market.max_snapshots_per_minute;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the feed runtime")?;
        let url = format!("{}{info_path}", config.rest_url.trim_end_matches('/'));
        let body = runtime.block_on(sapphire_gateway::connection::http::get(&url)).with_context(|| format!("reading {url}"))?;
        let mut listed = parse_exchange_info(&body).map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
        // Every trading symbol (TRADING_SYMBOLS empty): the most traded first, by the venue's
        // 24 h quote volume, so the cap takes those rather than the first in listing order.
        if market.symbols.is_empty() {
            let ticker_url = format!("{}{}", config.rest_url.trim_end_matches('/'), info_path.replace("exchangeInfo", "ticker/24hr"));
            let body =
                runtime.block_on(sapphire_gateway::connection::http::get(&ticker_url)).with_context(|| format!("reading {ticker_url}"))?;
            let volumes =
                sapphire_gateway::binance::instruments::parse_quote_volumes(&body).map_err(|e| anyhow::anyhow!("{ticker_url}: {e}"))?;
            sapphire_gateway::binance::instruments::rank_by_quote_volume(&mut listed, &volumes);
            let ranked: Vec<(&str, f64)> =
                listed.iter().filter(|s| s.trading).map(|s| (s.symbol.as_str(), volumes.get(&s.symbol).copied().unwrap_or(0.0))).collect();
            print_ranking(venue, cap, &ranked);
        }
        register(&listed, &market.symbols, cap, venue, kind, registry)
            .map_err(|e| crate::config::refuse("market.symbols (TRADING_SYMBOLS)", e))?;
        config.symbols = registry.iter().map(|i| i.symbol.clone()).collect();
        let feed = BinanceFeed::new(venue_market, registry, venue);
        Ok(Self { connection: BinanceConnection::new(config, feed), runtime })
    }

    /// The feed's live counters.
    pub fn counters(&self) -> tokio::sync::watch::Receiver<FeedCounters> {
        self.connection.counters()
    }

    /// Runs the feed and a timer until `stop`; returns the events published.
    pub fn run(self, producer: Producer<Event>, timer_ms: u64, stop: &AtomicBool, full: &AtomicU64) -> FeedRun {
        let counters = self.connection.counters();
        let connection = self.connection;
        run_with_timers(&self.runtime, producer, timer_ms, stop, full, counters, move |mut sink, shutdown| async move {
            connection.run(&mut sink, shutdown).await.result
        })
    }
}
