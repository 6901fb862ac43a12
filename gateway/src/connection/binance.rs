//! The Binance market-data client: connects to combined streams, subscribes, stamps each
//! frame's `ts_recv`, runs it through [`BinanceFeed`] and publishes the events into the
//! core's inbound ring; fetches REST depth snapshots when a book needs one; reconnects with
//! jittered exponential backoff when the connection drops, goes stale, or nears Binance's
//! 24-hour connection limit. Every reconnect, gap, resync and skipped frame is counted in
//! [`FeedCounters`], which a [`watch`] channel publishes while the client runs.
//!
//! Two things stop a feed from hammering the venue's REST weight:
//! - frames of another market than the configured one (USD-M depth frames carry `pu`, spot
//!   ones do not) end the client at the first depth frame with
//!   [`ConnectionError::WrongMarket`], instead of a resync on every frame;
//! - REST depth snapshots are capped per symbol per window
//!   ([`BinanceConnectionConfig::max_snapshots_per_window`]); past the cap the symbol's book
//!   stays out of sync (risk refuses orders on it), the skip is counted
//!   (`snapshots_capped`) and said on stderr, and the request goes when the window allows.

use super::tls::{self, Endpoint, Transport};
use super::{http, publish_all, Backoff, ConnectionError, EventSink, Shutdown};
use crate::binance::{BinanceFeed, BinanceMarket, FrameOutcome};
use crate::feed::FeedCounters;
use futures_util::{SinkExt, StreamExt};
use sapphire_core::event::Event;
use sapphire_core::instrument::InstrumentId;
use sapphire_core::latency::unix_nanos;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A WebSocket over plain TCP or TLS.
pub type Ws = WebSocketStream<Transport>;

/// How the client tells the venue which streams it wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeMode {
    /// In the URL: `/stream?streams=a/b/c`.
    Url,
    /// A `SUBSCRIBE` request on `/stream` after connecting (acknowledged with `{"result":null,"id":1}`).
    Message,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct BinanceConnectionConfig {
    /// WebSocket base, e.g. `ws://127.0.0.1:9000` or `wss://stream.binance.com:9443`.
    pub ws_url: String,
    /// REST base, e.g. `http://127.0.0.1:9000` or `https://api.binance.com`.
    pub rest_url: String,
    /// Spot or USD-M (the REST path and the sequencing rule).
    pub market: BinanceMarket,
    /// Venue symbols, upper case (`BTCUSDT`).
    pub symbols: Vec<String>,
    /// Channels per symbol, as Binance names them after the `@` (`depth@100ms`, `bookTicker`, `trade`, `aggTrade`).
    pub channels: Vec<String>,
    /// URL or SUBSCRIBE message.
    pub subscribe: SubscribeMode,
    /// Levels per REST snapshot (Binance: up to 5,000 spot, 1,000 futures).
    pub snapshot_limit: u32,
    /// TCP connect plus WebSocket handshake.
    pub connect_timeout: Duration,
    /// No message (data or ping) for this long: the feed is dead, reconnect.
    pub stale_after: Duration,
    /// Reconnect on purpose after this long (Binance closes connections at 24 hours).
    pub max_connection_age: Duration,
    /// First reconnect delay (jittered, doubling).
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// One REST snapshot request.
    pub snapshot_timeout: Duration,
    /// Wait before asking again after a failed or unusable snapshot.
    pub snapshot_retry: Duration,
    /// Snapshot failures in one connection before reconnecting.
    pub max_snapshot_failures: u32,
    /// REST depth snapshots per symbol per [`Self::snapshot_window`] (at least 1). Binance
    /// weighs a 1,000-level snapshot 50 of spot's 6,000 per minute (`/api/v3/depth`) and 20 of
    /// USD-M's 2,400 (`/fapi/v1/depth`): 120 a minute per IP either way, for every symbol.
    pub max_snapshots_per_window: u32,
    /// The window of [`Self::max_snapshots_per_window`] (sliding).
    pub snapshot_window: Duration,
}

/// Default [`BinanceConnectionConfig::max_snapshots_per_window`]: 6 a minute per symbol is
/// 5% of either market's weight budget at 1,000 levels, and far more than a healthy feed
/// needs (one per connection, one per rare gap).
pub const DEFAULT_MAX_SNAPSHOTS_PER_MINUTE: u32 = 6;

impl BinanceConnectionConfig {
    /// Defaults for `market` at the given endpoints.
    pub fn new(ws_url: impl Into<String>, rest_url: impl Into<String>, market: BinanceMarket, symbols: &[&str]) -> Self {
        Self {
            ws_url: ws_url.into(),
            rest_url: rest_url.into(),
            market,
            symbols: symbols.iter().map(|s| s.to_ascii_uppercase()).collect(),
            channels: vec!["depth@100ms".into(), "bookTicker".into(), "trade".into()],
            subscribe: SubscribeMode::Url,
            snapshot_limit: 1_000,
            connect_timeout: Duration::from_secs(10),
            stale_after: Duration::from_secs(30),
            max_connection_age: Duration::from_secs(23 * 3600 + 50 * 60),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            snapshot_timeout: Duration::from_secs(10),
            snapshot_retry: Duration::from_millis(500),
            max_snapshot_failures: 5,
            max_snapshots_per_window: DEFAULT_MAX_SNAPSHOTS_PER_MINUTE,
            snapshot_window: Duration::from_secs(60),
        }
    }

    /// Binance's public endpoints (these need TLS: see [`crate::connection`]).
    pub fn binance(market: BinanceMarket, symbols: &[&str]) -> Self {
        match market {
            BinanceMarket::Spot => Self::new("wss://stream.binance.com:9443", "https://api.binance.com", market, symbols),
            BinanceMarket::UsdM => Self::new("wss://fstream.binance.com", "https://fapi.binance.com", market, symbols),
        }
    }

    /// Stream names, `btcusdt@depth@100ms` style.
    pub fn streams(&self) -> Vec<String> {
        self.symbols.iter().flat_map(|s| self.channels.iter().map(move |c| format!("{}@{c}", s.to_ascii_lowercase()))).collect()
    }

    /// The WebSocket URL to open.
    pub fn stream_url(&self) -> String {
        let base = self.ws_url.trim_end_matches('/');
        match self.subscribe {
            SubscribeMode::Url => format!("{base}/stream?streams={}", self.streams().join("/")),
            SubscribeMode::Message => format!("{base}/stream"),
        }
    }

    /// The REST depth snapshot URL for `symbol`.
    pub fn snapshot_url(&self, symbol: &str) -> String {
        let path = match self.market {
            BinanceMarket::Spot => "/api/v3/depth",
            BinanceMarket::UsdM => "/fapi/v1/depth",
        };
        format!("{}{path}?symbol={symbol}&limit={}", self.rest_url.trim_end_matches('/'), self.snapshot_limit)
    }

    /// The SUBSCRIBE request.
    pub fn subscribe_message(&self, id: u64) -> String {
        let params: Vec<String> = self.streams().iter().map(|s| format!("\"{s}\"")).collect();
        format!("{{\"method\":\"SUBSCRIBE\",\"params\":[{}],\"id\":{id}}}", params.join(","))
    }
}

/// Why one connection ended.
#[derive(Debug)]
enum SessionEnd {
    Shutdown,
    Planned,
    Stale,
    Dropped,
    Fatal(ConnectionError),
}

/// What [`BinanceConnection::run`] hands back: the adapter (books and counters) and why it stopped.
#[derive(Debug)]
pub struct ConnectionOutcome {
    /// The feed adapter, with its final counters.
    pub feed: BinanceFeed,
    /// `Ok` after a shutdown; a terminal error otherwise.
    pub result: Result<(), ConnectionError>,
}

/// REST depth snapshot requests per symbol in a sliding window. Kept across reconnects, so
/// a reconnect storm is capped too.
#[derive(Debug)]
struct SnapshotBudget {
    cap: usize,
    window: Duration,
    /// Send times in the window, oldest first (a delayed retry's is in the future).
    sent: HashMap<InstrumentId, VecDeque<Instant>>,
}

impl SnapshotBudget {
    fn new(cap: u32, window: Duration) -> Self {
        Self { cap: cap.max(1) as usize, window, sent: HashMap::new() }
    }

    /// Takes a request sent `at`; past the cap, `Err` carries when the next may go.
    fn take(&mut self, instrument: InstrumentId, at: Instant) -> Result<(), Instant> {
        let sent = self.sent.entry(instrument).or_default();
        while sent.front().is_some_and(|&t| at.saturating_duration_since(t) >= self.window) {
            sent.pop_front();
        }
        if sent.len() < self.cap {
            sent.push_back(at);
            return Ok(());
        }
        Err(sent.front().map_or(at, |&t| t + self.window))
    }
}

/// One Binance market-data connection, kept alive until shutdown.
#[derive(Debug)]
pub struct BinanceConnection {
    config: BinanceConnectionConfig,
    feed: BinanceFeed,
    /// Configured symbols and their instrument ids (snapshot requests need the symbol back).
    instruments: Vec<(InstrumentId, String)>,
    backoff: Backoff,
    /// Events of the frame being handled (reused: no allocation once warm).
    events: Vec<Event>,
    counters: watch::Sender<FeedCounters>,
    budget: SnapshotBudget,
}

impl BinanceConnection {
    /// A client for `config`'s symbols, feeding `feed` (symbols missing from its registry are added).
    pub fn new(config: BinanceConnectionConfig, mut feed: BinanceFeed) -> Self {
        let instruments = config.symbols.iter().map(|s| (feed.ensure_symbol(s), s.clone())).collect();
        let seed = unix_nanos() ^ (config.ws_url.len() as u64).rotate_left(32);
        let backoff = Backoff::new(config.backoff_initial, config.backoff_max, seed);
        let (counters, _) = watch::channel(feed.counters);
        let budget = SnapshotBudget::new(config.max_snapshots_per_window, config.snapshot_window);
        Self { config, feed, instruments, backoff, events: Vec::with_capacity(4_096), counters, budget }
    }

    /// The counters, updated after every frame and connection event.
    pub fn counters(&self) -> watch::Receiver<FeedCounters> {
        self.counters.subscribe()
    }

    /// Runs until `shutdown` (or a terminal error), publishing events into `sink`.
    pub async fn run(mut self, sink: &mut impl EventSink, mut shutdown: Shutdown) -> ConnectionOutcome {
        let result = loop {
            if shutdown.is_shutdown() {
                break Ok(());
            }
            let url = self.config.stream_url();
            let connected = tokio::select! {
                _ = shutdown.recv() => break Ok(()),
                r = connect(&url, self.config.connect_timeout) => r,
            };
            let end = match connected {
                Ok(ws) => self.session(ws, sink, &mut shutdown).await,
                Err(e) if e.is_terminal() => SessionEnd::Fatal(e),
                Err(_) => {
                    self.feed.counters.connect_failures += 1;
                    SessionEnd::Dropped
                }
            };
            let delay = match end {
                SessionEnd::Shutdown => break Ok(()),
                SessionEnd::Fatal(e) => break Err(e),
                SessionEnd::Planned => {
                    self.feed.counters.reconnects += 1;
                    self.feed.counters.planned_reconnects += 1;
                    None
                }
                SessionEnd::Stale => {
                    self.feed.counters.reconnects += 1;
                    self.feed.counters.stale_reconnects += 1;
                    Some(self.backoff.next_delay())
                }
                SessionEnd::Dropped => {
                    self.feed.counters.reconnects += 1;
                    Some(self.backoff.next_delay())
                }
            };
            self.counters.send_replace(self.feed.counters);
            if let Some(delay) = delay {
                tokio::select! {
                    _ = shutdown.recv() => break Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        };
        self.counters.send_replace(self.feed.counters);
        ConnectionOutcome { feed: self.feed, result }
    }

    async fn session(&mut self, mut ws: Ws, sink: &mut impl EventSink, shutdown: &mut Shutdown) -> SessionEnd {
        // The venue moved on while we were away: every book needs a new snapshot, and the
        // core's books are out of sync until then.
        self.events.clear();
        let events = &mut self.events;
        self.feed.reset_books(unix_nanos(), &mut |e| events.push(e));
        if publish_all(sink, &self.events, &mut self.feed.counters.ring_full_waits, shutdown).await.is_err() {
            return SessionEnd::Dropped;
        }
        if self.config.subscribe == SubscribeMode::Message {
            if let Err(e) = ws.send(Message::text(self.config.subscribe_message(1))).await {
                let _ = e;
                return SessionEnd::Dropped;
            }
        }
        let stale_after = self.config.stale_after;
        let planned = tokio::time::sleep(self.config.max_connection_age);
        let stale = tokio::time::sleep(stale_after);
        tokio::pin!(planned, stale);
        let mut fetches: JoinSet<(InstrumentId, Result<Vec<u8>, ConnectionError>)> = JoinSet::new();
        // Snapshot requests held back by the cap, each waking when its window allows.
        let mut deferred: JoinSet<InstrumentId> = JoinSet::new();
        let mut in_flight: HashSet<InstrumentId> = HashSet::new();
        let mut snapshot_failures = 0u32;
        let mut healthy = false;
        loop {
            let need = tokio::select! {
                biased;
                _ = shutdown.recv() => {
                    let _ = ws.close(None).await;
                    return SessionEnd::Shutdown;
                }
                _ = &mut planned => {
                    let _ = ws.close(None).await;
                    return SessionEnd::Planned;
                }
                _ = &mut stale => return SessionEnd::Stale,
                Some(joined) = deferred.join_next(), if !deferred.is_empty() => {
                    let Ok(instrument) = joined else { continue };
                    in_flight.remove(&instrument);
                    Some((instrument, false))
                }
                Some(joined) = fetches.join_next(), if !fetches.is_empty() => {
                    let Ok((instrument, body)) = joined else { continue };
                    in_flight.remove(&instrument);
                    match body {
                        Ok(body) => match self.on_snapshot(instrument, &body, sink, shutdown).await {
                            Ok(FrameOutcome::NeedSnapshot(i)) => Some((i, true)),
                            Ok(FrameOutcome::Skipped(_)) => {
                                snapshot_failures += 1;
                                Some((instrument, true))
                            }
                            Ok(_) => None,
                            Err(e) => return SessionEnd::Fatal(e),
                        },
                        Err(e) if e.is_terminal() => return SessionEnd::Fatal(e),
                        Err(_) => {
                            self.feed.counters.snapshot_failures += 1;
                            snapshot_failures += 1;
                            Some((instrument, true))
                        }
                    }
                }
                msg = ws.next() => {
                    stale.as_mut().reset(Instant::now() + stale_after);
                    let bytes = match msg {
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return SessionEnd::Dropped,
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Binary(b))) => match String::from_utf8(b.to_vec()) {
                            Ok(s) => s.into(),
                            Err(_) => continue,
                        },
                        Some(Ok(Message::Ping(_))) => {
                            // Tungstenite queued the pong; send it now, not with our next write.
                            self.feed.counters.pings += 1;
                            if ws.flush().await.is_err() {
                                return SessionEnd::Dropped;
                            }
                            continue;
                        }
                        Some(Ok(Message::Pong(_) | Message::Frame(_))) => continue,
                    };
                    if !healthy {
                        healthy = true;
                        self.backoff.reset();
                    }
                    match self.on_frame(bytes.as_bytes(), sink, shutdown).await {
                        Ok(FrameOutcome::NeedSnapshot(i)) => Some((i, false)),
                        // Every frame would break every book: stop and say why.
                        Ok(FrameOutcome::Skipped(e)) if e.is_terminal() => {
                            let _ = ws.close(None).await;
                            return SessionEnd::Fatal(ConnectionError::WrongMarket(e));
                        }
                        Ok(_) => None,
                        Err(e) => return SessionEnd::Fatal(e),
                    }
                }
            };
            self.counters.send_replace(self.feed.counters);
            if snapshot_failures > self.config.max_snapshot_failures {
                return SessionEnd::Dropped;
            }
            if let Some((instrument, retry)) = need {
                if in_flight.insert(instrument) {
                    let after = if retry { self.config.snapshot_retry } else { Duration::ZERO };
                    self.fetch(&mut fetches, &mut deferred, instrument, after);
                }
            }
        }
    }

    /// Asks for `instrument`'s snapshot `after` from now, or, past its cap, holds the request
    /// in `deferred` until the window allows one (the book stays out of sync meanwhile).
    fn fetch(
        &mut self,
        fetches: &mut JoinSet<(InstrumentId, Result<Vec<u8>, ConnectionError>)>,
        deferred: &mut JoinSet<InstrumentId>,
        instrument: InstrumentId,
        after: Duration,
    ) {
        let Some((_, symbol)) = self.instruments.iter().find(|(i, _)| *i == instrument) else {
            return;
        };
        let now = Instant::now();
        if let Err(next) = self.budget.take(instrument, now + after) {
            self.feed.counters.snapshots_capped += 1;
            eprintln!(
                "feed: {symbol}: {} depth snapshots in {}s reached the cap (market.max_snapshots_per_minute); its book stays out of sync, and nothing trades on it, until the next snapshot in {:.1}s. A feed that keeps breaking sequence: check venue_market and the stream",
                self.config.max_snapshots_per_window.max(1),
                self.config.snapshot_window.as_secs(),
                next.saturating_duration_since(now).as_secs_f64()
            );
            deferred.spawn(async move {
                tokio::time::sleep_until(next).await;
                instrument
            });
            return;
        }
        let url = self.config.snapshot_url(symbol);
        let timeout = self.config.snapshot_timeout;
        self.feed.counters.snapshot_requests += 1;
        fetches.spawn(async move {
            if !after.is_zero() {
                tokio::time::sleep(after).await;
            }
            let body = match tokio::time::timeout(timeout, http::get(&url)).await {
                Ok(r) => r,
                Err(_) => Err(ConnectionError::Timeout("depth snapshot")),
            };
            (instrument, body)
        });
    }

    async fn on_frame(
        &mut self,
        bytes: &[u8],
        sink: &mut impl EventSink,
        shutdown: &mut Shutdown,
    ) -> Result<FrameOutcome, ConnectionError> {
        let recv = unix_nanos();
        self.events.clear();
        let events = &mut self.events;
        let outcome = self.feed.on_frame(recv, bytes, &mut |e| events.push(e));
        publish_all(sink, &self.events, &mut self.feed.counters.ring_full_waits, shutdown).await?;
        Ok(outcome)
    }

    async fn on_snapshot(
        &mut self,
        instrument: InstrumentId,
        body: &[u8],
        sink: &mut impl EventSink,
        shutdown: &mut Shutdown,
    ) -> Result<FrameOutcome, ConnectionError> {
        let recv = unix_nanos();
        self.events.clear();
        let events = &mut self.events;
        let outcome = self.feed.on_snapshot(Some(instrument), recv, body, &mut |e| events.push(e));
        publish_all(sink, &self.events, &mut self.feed.counters.ring_full_waits, shutdown).await?;
        Ok(outcome)
    }
}

/// Opens a WebSocket (`ws://` or `wss://`) within `timeout`.
pub async fn connect(url: &str, timeout: Duration) -> Result<Ws, ConnectionError> {
    let endpoint = Endpoint::parse(url, ("ws", "wss"))?;
    let started = tokio::time::Instant::now();
    let transport = tls::connect(&endpoint, url, timeout).await?;
    let left = timeout.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, tokio_tungstenite::client_async_with_config(url, transport, None)).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(ConnectionError::Connect { url: url.to_string(), reason: e.to_string() }),
        Err(_) => Err(ConnectionError::Timeout("websocket handshake")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_subscribe_message() {
        let mut c = BinanceConnectionConfig::new("ws://127.0.0.1:9/", "http://127.0.0.1:9", BinanceMarket::Spot, &["btcusdt", "ETHUSDT"]);
        c.channels = vec!["depth@100ms".into(), "bookTicker".into()];
        assert_eq!(
            c.stream_url(),
            "ws://127.0.0.1:9/stream?streams=btcusdt@depth@100ms/btcusdt@bookTicker/ethusdt@depth@100ms/ethusdt@bookTicker"
        );
        assert_eq!(c.snapshot_url("BTCUSDT"), "http://127.0.0.1:9/api/v3/depth?symbol=BTCUSDT&limit=1000");
        c.subscribe = SubscribeMode::Message;
        assert_eq!(c.stream_url(), "ws://127.0.0.1:9/stream");
        assert_eq!(
            c.subscribe_message(7),
            r#"{"method":"SUBSCRIBE","params":["btcusdt@depth@100ms","btcusdt@bookTicker","ethusdt@depth@100ms","ethusdt@bookTicker"],"id":7}"#
        );
        let f = BinanceConnectionConfig::binance(BinanceMarket::UsdM, &["BTCUSDT"]);
        assert_eq!(f.snapshot_url("BTCUSDT"), "https://fapi.binance.com/fapi/v1/depth?symbol=BTCUSDT&limit=1000");
    }

    #[test]
    fn snapshot_budget_caps_each_symbol_per_sliding_window() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let (a, b) = (InstrumentId(0), InstrumentId(1));
        let mut budget = SnapshotBudget::new(3, Duration::from_secs(60));
        assert_eq!((budget.take(a, at(0)), budget.take(a, at(10)), budget.take(a, at(20))), (Ok(()), Ok(()), Ok(())));
        // The fourth within the window waits for the oldest to leave it.
        assert_eq!(budget.take(a, at(30)), Err(at(60_000)));
        assert_eq!(budget.take(a, at(59_999)), Err(at(60_000)));
        // Another symbol has its own budget.
        assert_eq!(budget.take(b, at(30)), Ok(()));
        assert_eq!(budget.take(a, at(60_000)), Ok(()));
        assert_eq!(budget.take(a, at(60_001)), Err(at(60_010)));
        // A cap of 0 would never sync: it is at least 1.
        let mut one = SnapshotBudget::new(0, Duration::from_secs(60));
        assert_eq!((one.take(a, at(0)), one.take(a, at(1))), (Ok(()), Err(at(60_000))));
    }
}
