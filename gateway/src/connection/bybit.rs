//! The Bybit v5 public market-data client (spot, linear): connects to
//! `/v5/public/{category}`, subscribes its topics with `{"op":"subscribe"}` requests (at most
//! [`BybitConnectionConfig::max_args_per_request`] topics each: Bybit takes 10 on spot) and
//! checks every acknowledgement, sends `{"op":"ping"}` every
//! [`BybitConnectionConfig::ping_interval`] (Bybit drops connections that stay silent), stamps
//! each frame's `ts_recv`, runs it through [`BybitFeed`] and publishes the events into the
//! core's inbound ring.
//!
//! Bybit has no REST snapshot to fetch: a book that loses its sequence is resynced by
//! unsubscribing and resubscribing its `orderbook` topic, which makes Bybit push a fresh
//! snapshot. A book that has no snapshot within [`BybitConnectionConfig::snapshot_timeout`],
//! or a request without an acknowledgement within [`BybitConnectionConfig::ack_timeout`],
//! ends the connection. The client reconnects with jittered exponential backoff when the
//! connection drops or goes stale (no message, pongs included, for
//! [`BybitConnectionConfig::stale_after`]) and subscribes everything again.
//!
//! Counted in [`FeedCounters`] (published through a [`watch`] channel while it runs): every
//! reconnect (`reconnects`, `stale_reconnects`, `connect_failures`), gap (`gaps`), resync
//! (`snapshot_requests`: resubscriptions after a gap; `snapshots`: snapshots applied, the
//! initial ones included; `snapshot_failures`: snapshots that never came), skipped frame.
//! A refused subscription (a topic Bybit does not serve) is a terminal
//! [`ConnectionError::Refused`]: asking again cannot fix the configuration.

use super::binance::{connect, Ws};
use super::{publish_all, Backoff, ConnectionError, EventSink, Shutdown};
use crate::binance::FrameOutcome;
use crate::bybit::market::{parse_frame, BybitResponse};
use crate::bybit::{BybitCategory, BybitFeed, BybitFrame};
use crate::feed::FeedCounters;
use futures_util::{SinkExt, StreamExt};
use sapphire_core::event::Event;
use sapphire_core::instrument::InstrumentId;
use sapphire_core::latency::unix_nanos;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct BybitConnectionConfig {
    /// WebSocket base, e.g. `ws://127.0.0.1:9000` or `wss://stream.bybit.com` (the client adds `/v5/public/{category}`).
    pub ws_url: String,
    /// REST base (instruments-info), e.g. `http://127.0.0.1:9000` or `https://api.bybit.com`.
    pub rest_url: String,
    /// Spot or linear.
    pub category: BybitCategory,
    /// Venue symbols, upper case (`BTCUSDT`).
    pub symbols: Vec<String>,
    /// Topics per symbol, as Bybit names them before the symbol (`orderbook.50`, `publicTrade`,
    /// `tickers`). One `orderbook` depth per symbol: each depth has its own `u` sequence.
    pub channels: Vec<String>,
    /// Topics per subscribe request (Bybit spot accepts at most 10).
    pub max_args_per_request: usize,
    /// TCP connect plus WebSocket handshake.
    pub connect_timeout: Duration,
    /// How often to send `{"op":"ping"}` (Bybit recommends 20 s).
    pub ping_interval: Duration,
    /// No message (data or pong) for this long: the feed is dead, reconnect.
    pub stale_after: Duration,
    /// A subscribe or unsubscribe request unanswered for this long: reconnect.
    pub ack_timeout: Duration,
    /// A book still without a snapshot this long after its subscription: reconnect.
    pub snapshot_timeout: Duration,
    /// First reconnect delay (jittered, doubling).
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
}

impl BybitConnectionConfig {
    /// Defaults for `category` at the given endpoints: `orderbook.50`, `publicTrade`, and on
    /// linear `tickers` (spot tickers carry no best bid/ask).
    pub fn new(ws_url: impl Into<String>, rest_url: impl Into<String>, category: BybitCategory, symbols: &[&str]) -> Self {
        let mut channels = vec!["orderbook.50".to_string(), "publicTrade".to_string()];
        if category == BybitCategory::Linear {
            channels.push("tickers".into());
        }
        Self {
            ws_url: ws_url.into(),
            rest_url: rest_url.into(),
            category,
            symbols: symbols.iter().map(|s| s.to_ascii_uppercase()).collect(),
            channels,
            max_args_per_request: match category {
                BybitCategory::Spot => 10,
                BybitCategory::Linear => 100,
            },
            connect_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            stale_after: Duration::from_secs(30),
            ack_timeout: Duration::from_secs(10),
            snapshot_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
        }
    }

    /// Bybit's public endpoints (these need TLS: see [`crate::connection`]).
    pub fn bybit(category: BybitCategory, symbols: &[&str]) -> Self {
        Self::new("wss://stream.bybit.com", "https://api.bybit.com", category, symbols)
    }

    /// The WebSocket URL to open.
    pub fn stream_url(&self) -> String {
        format!("{}/v5/public/{}", self.ws_url.trim_end_matches('/'), self.category.as_str())
    }

    /// Every topic, `orderbook.50.BTCUSDT` style.
    pub fn topics(&self) -> Vec<String> {
        self.symbols.iter().flat_map(|s| self.channels.iter().map(move |c| format!("{c}.{s}"))).collect()
    }

    /// The `orderbook` topic of `symbol`, if one is configured.
    pub fn book_topic(&self, symbol: &str) -> Option<String> {
        self.channels.iter().find(|c| c.starts_with("orderbook.")).map(|c| format!("{c}.{symbol}"))
    }

    /// The requests for `op` (`subscribe`, `unsubscribe`) over `topics`, batched, with
    /// request ids `{prefix}-{n}` from `next_id`: `(req_id, text)` each.
    pub fn requests(&self, op: &str, topics: &[String], prefix: &str, next_id: &mut u64) -> Vec<(String, String)> {
        topics
            .chunks(self.max_args_per_request.max(1))
            .map(|chunk| {
                *next_id += 1;
                let req_id = format!("{prefix}-{next_id}");
                let args: Vec<String> = chunk.iter().map(|t| format!("\"{t}\"")).collect();
                let text = format!("{{\"req_id\":\"{req_id}\",\"op\":\"{op}\",\"args\":[{}]}}", args.join(","));
                (req_id, text)
            })
            .collect()
    }
}

/// Why one connection ended.
#[derive(Debug)]
enum SessionEnd {
    Shutdown,
    Stale,
    Dropped,
    Fatal(ConnectionError),
}

/// What [`BybitConnection::run`] hands back: the adapter (books and counters) and why it stopped.
#[derive(Debug)]
pub struct ConnectionOutcome {
    /// The feed adapter, with its final counters.
    pub feed: BybitFeed,
    /// `Ok` after a shutdown; a terminal error otherwise.
    pub result: Result<(), ConnectionError>,
}

/// A request waiting for its acknowledgement.
#[derive(Debug)]
struct Pending {
    req_id: String,
    subscribe: bool,
    deadline: Instant,
}

/// Whether a failed acknowledgement is harmless: the topic is already subscribed (a
/// resubscription racing the venue) or was not (an unsubscribe after a reconnect).
fn harmless_refusal(r: &BybitResponse<'_>) -> bool {
    let msg = String::from_utf8_lossy(r.ret_msg).to_ascii_lowercase();
    msg.contains("already subscribed") || r.op == b"unsubscribe"
}

/// One Bybit public market-data connection, kept alive until shutdown.
#[derive(Debug)]
pub struct BybitConnection {
    config: BybitConnectionConfig,
    feed: BybitFeed,
    /// Configured symbols and their instrument ids (resubscriptions need the symbol back).
    instruments: Vec<(InstrumentId, String)>,
    backoff: Backoff,
    /// Events of the frame being handled (reused: no allocation once warm).
    events: Vec<Event>,
    counters: watch::Sender<FeedCounters>,
    /// Request ids are unique across connections (easier to follow in a capture).
    next_req_id: u64,
}

impl BybitConnection {
    /// A client for `config`'s symbols, feeding `feed` (symbols missing from its registry are added).
    pub fn new(config: BybitConnectionConfig, mut feed: BybitFeed) -> Self {
        let instruments = config.symbols.iter().map(|s| (feed.ensure_symbol(s), s.clone())).collect();
        let seed = unix_nanos() ^ (config.ws_url.len() as u64).rotate_left(29);
        let backoff = Backoff::new(config.backoff_initial, config.backoff_max, seed);
        let (counters, _) = watch::channel(feed.counters);
        Self { config, feed, instruments, backoff, events: Vec::with_capacity(4_096), counters, next_req_id: 0 }
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
            match end {
                SessionEnd::Shutdown => break Ok(()),
                SessionEnd::Fatal(e) => break Err(e),
                SessionEnd::Stale => {
                    self.feed.counters.reconnects += 1;
                    self.feed.counters.stale_reconnects += 1;
                }
                SessionEnd::Dropped => self.feed.counters.reconnects += 1,
            }
            self.counters.send_replace(self.feed.counters);
            let delay = self.backoff.next_delay();
            tokio::select! {
                _ = shutdown.recv() => break Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        };
        self.counters.send_replace(self.feed.counters);
        ConnectionOutcome { feed: self.feed, result }
    }

    /// Sends requests and records them as waiting for acknowledgement.
    async fn send_requests(&mut self, ws: &mut Ws, op: &str, topics: &[String], prefix: &str, pending: &mut Vec<Pending>) -> bool {
        let deadline = Instant::now() + self.config.ack_timeout;
        for (req_id, text) in self.config.requests(op, topics, prefix, &mut self.next_req_id) {
            if ws.send(Message::text(text)).await.is_err() {
                return false;
            }
            pending.push(Pending { req_id, subscribe: op == "subscribe", deadline });
        }
        true
    }

    async fn session(&mut self, mut ws: Ws, sink: &mut impl EventSink, shutdown: &mut Shutdown) -> SessionEnd {
        // The venue moved on while we were away: every book needs the snapshot its new
        // subscription brings, and the core's books are out of sync until then.
        self.events.clear();
        let events = &mut self.events;
        self.feed.reset_books(unix_nanos(), &mut |e| events.push(e));
        if publish_all(sink, &self.events, &mut self.feed.counters.ring_full_waits, shutdown).await.is_err() {
            return SessionEnd::Dropped;
        }
        let mut pending: Vec<Pending> = Vec::new();
        let topics = self.config.topics();
        if !self.send_requests(&mut ws, "subscribe", &topics, "sub", &mut pending).await {
            return SessionEnd::Dropped;
        }
        // Books waiting for a snapshot, with the time by which it must have come.
        let snapshot_deadline = Instant::now() + self.config.snapshot_timeout;
        let mut awaiting: Vec<(InstrumentId, Instant)> =
            self.instruments.iter().filter(|(_, s)| self.config.book_topic(s).is_some()).map(|&(i, _)| (i, snapshot_deadline)).collect();
        let stale_after = self.config.stale_after;
        let stale = tokio::time::sleep(stale_after);
        tokio::pin!(stale);
        let mut ping = tokio::time::interval_at(Instant::now() + self.config.ping_interval, self.config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let check_every = (self.config.ack_timeout.min(self.config.snapshot_timeout) / 4).max(Duration::from_millis(10));
        let mut check = tokio::time::interval(check_every);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut healthy = false;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.recv() => {
                    let _ = ws.close(None).await;
                    return SessionEnd::Shutdown;
                }
                _ = &mut stale => return SessionEnd::Stale,
                _ = ping.tick() => {
                    self.next_req_id += 1;
                    let text = format!("{{\"req_id\":\"ping-{}\",\"op\":\"ping\"}}", self.next_req_id);
                    if ws.send(Message::text(text)).await.is_err() {
                        return SessionEnd::Dropped;
                    }
                }
                _ = check.tick() => {
                    let now = Instant::now();
                    if pending.iter().any(|p| p.deadline <= now) {
                        return SessionEnd::Dropped;
                    }
                    awaiting.retain(|&(i, _)| !self.feed.in_sync(i));
                    if awaiting.iter().any(|&(_, d)| d <= now) {
                        self.feed.counters.snapshot_failures += 1;
                        self.counters.send_replace(self.feed.counters);
                        return SessionEnd::Dropped;
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
                    let outcome = match self.on_frame(bytes.as_bytes(), sink, shutdown).await {
                        Ok(o) => o,
                        Err(e) => return SessionEnd::Fatal(e),
                    };
                    if let FrameOutcome::NeedSnapshot(instrument) = outcome {
                        if !self.resubscribe(&mut ws, instrument, &mut pending, &mut awaiting).await {
                            return SessionEnd::Dropped;
                        }
                    }
                    match outcome {
                        FrameOutcome::Ignored => {
                            if let Ok(BybitFrame::Response(r)) = parse_frame(bytes.as_bytes()) {
                                if let Some(at) = pending.iter().position(|p| p.req_id.as_bytes() == r.req_id) {
                                    let p = pending.swap_remove(at);
                                    if r.success == Some(false) && p.subscribe && !harmless_refusal(&r) {
                                        let reason = String::from_utf8_lossy(r.ret_msg).into_owned();
                                        return SessionEnd::Fatal(ConnectionError::Refused { url: self.config.stream_url(), reason });
                                    }
                                }
                            }
                        }
                        FrameOutcome::Applied if !healthy => {
                            healthy = true;
                            self.backoff.reset();
                        }
                        _ => {}
                    }
                }
            }
            self.counters.send_replace(self.feed.counters);
        }
    }

    /// Unsubscribes and resubscribes `instrument`'s book topic: Bybit answers the new
    /// subscription with a snapshot.
    async fn resubscribe(
        &mut self,
        ws: &mut Ws,
        instrument: InstrumentId,
        pending: &mut Vec<Pending>,
        awaiting: &mut Vec<(InstrumentId, Instant)>,
    ) -> bool {
        let Some(topic) = self.instruments.iter().find(|(i, _)| *i == instrument).and_then(|(_, s)| self.config.book_topic(s)) else {
            return true;
        };
        let topics = [topic];
        self.feed.counters.snapshot_requests += 1;
        if !self.send_requests(ws, "unsubscribe", &topics, "resync", pending).await
            || !self.send_requests(ws, "subscribe", &topics, "resync", pending).await
        {
            return false;
        }
        let deadline = Instant::now() + self.config.snapshot_timeout;
        match awaiting.iter_mut().find(|(i, _)| *i == instrument) {
            Some(entry) => entry.1 = deadline,
            None => awaiting.push((instrument, deadline)),
        }
        true
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_topics_and_batched_requests() {
        let c = BybitConnectionConfig::new("ws://127.0.0.1:9/", "http://127.0.0.1:9", BybitCategory::Linear, &["btcusdt", "ETHUSDT"]);
        assert_eq!(c.stream_url(), "ws://127.0.0.1:9/v5/public/linear");
        assert_eq!(
            c.topics(),
            [
                "orderbook.50.BTCUSDT",
                "publicTrade.BTCUSDT",
                "tickers.BTCUSDT",
                "orderbook.50.ETHUSDT",
                "publicTrade.ETHUSDT",
                "tickers.ETHUSDT"
            ]
        );
        assert_eq!(c.book_topic("ETHUSDT").as_deref(), Some("orderbook.50.ETHUSDT"));
        let mut id = 0;
        let reqs = c.requests("subscribe", &c.topics()[..2], "sub", &mut id);
        assert_eq!(
            reqs,
            vec![(
                "sub-1".to_string(),
                r#"{"req_id":"sub-1","op":"subscribe","args":["orderbook.50.BTCUSDT","publicTrade.BTCUSDT"]}"#.to_string()
            )]
        );
        // Spot takes at most 10 topics per request: 12 symbols × 2 topics need 3 requests.
        let symbols: Vec<String> = (0..12).map(|n| format!("S{n}USDT")).collect();
        let refs: Vec<&str> = symbols.iter().map(String::as_str).collect();
        let spot = BybitConnectionConfig::bybit(BybitCategory::Spot, &refs);
        assert_eq!(spot.stream_url(), "wss://stream.bybit.com/v5/public/spot");
        let reqs = spot.requests("subscribe", &spot.topics(), "sub", &mut id);
        assert_eq!(reqs.len(), 3);
        assert_eq!(reqs[2].0, "sub-4");
        let per_request: Vec<usize> = reqs.iter().map(|(_, t)| t.matches("USDT\"").count()).collect();
        assert_eq!(per_request, [10, 10, 4]);
    }

    #[test]
    fn harmless_refusals() {
        let r = |op: &'static [u8], msg: &'static [u8]| BybitResponse { op, success: Some(false), ret_msg: msg, req_id: b"" };
        assert!(harmless_refusal(&r(b"subscribe", b"error:already subscribed,topic:orderbook.50.BTCUSDT")));
        assert!(harmless_refusal(&r(b"unsubscribe", b"error:not subscribed")));
        assert!(!harmless_refusal(&r(b"subscribe", b"error:handler not found,topic:orderbook.40.BTCUSDT")));
    }
}
