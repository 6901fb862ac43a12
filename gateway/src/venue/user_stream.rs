//! Binance user-data streams: order updates pushed by the venue instead of polled.
//!
//! [`run_user_stream`] opens a listen key, connects `<ws_url>/ws/<listenKey>`, keeps the
//! key alive, and turns each `executionReport` (spot) or `ORDER_TRADE_UPDATE` (USD-M) into
//! a [`VenueOrder`] (the order's cumulative state) for the [`super::OrderGateway`], which
//! reports only what it has not reported yet — so a stream update and a REST answer for the
//! same fill never count twice. After a reconnect the gateway is told
//! ([`UserUpdate::Reconnected`]) and queries its working orders, covering the gap.
//!
//! `ws://` (the local exchange) and `wss://` (the venues, over the connection module's
//! rustls transport) are both served.

use super::binance::BinanceExecution;
use super::errors::VenueError;
use super::{VenueFill, VenueOrder, VenueOrderStatus};
use futures_util::{SinkExt, StreamExt};
use sapphire_core::event::Side;
use sapphire_core::fixed::{notional, Money, Price, Quantity};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

const VENUE: &str = "binance";

/// What the stream tells the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserUpdate {
    /// An order's state after a change.
    Order(VenueOrder),
    /// One fill with its fee and liquidity (Bybit's `execution`), ahead of the order's
    /// cumulative state.
    Execution(super::VenueExecution),
    /// The stream was (re)connected: updates may have been missed before it.
    Reconnected,
    /// The stream is down: the gateway polls until the next [`UserUpdate::Reconnected`].
    Disconnected,
}

/// One parsed user-data message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserEvent {
    /// An order update.
    Order(VenueOrder),
    /// The listen key expired: open a new one.
    ListenKeyExpired,
    /// Anything else (balance and position updates, ...).
    Other,
}

fn text_of(v: &Value, name: &str) -> String {
    match v.get(name) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn num(v: &Value, name: &str) -> String {
    let t = text_of(v, name);
    if t.is_empty() {
        "0".into()
    } else {
        t
    }
}

fn decode<T>(what: &str, r: Result<T, sapphire_core::fixed::DecimalError>) -> Result<T, VenueError> {
    r.map_err(|e| VenueError::Decode { venue: VENUE, reason: format!("user stream {what}: {e:?}") })
}

fn status(v: &Value) -> Result<VenueOrderStatus, VenueError> {
    let s = text_of(v, "X");
    VenueOrderStatus::parse_binance(&s).ok_or_else(|| VenueError::Decode { venue: VENUE, reason: format!("user stream status {s:?}") })
}

/// Parses one user-data message (spot `executionReport`, USD-M `ORDER_TRADE_UPDATE`,
/// `listenKeyExpired`; a combined-stream envelope is unwrapped).
pub fn parse_user_event(text: &str) -> Result<UserEvent, VenueError> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| VenueError::Decode { venue: VENUE, reason: format!("user stream: not JSON: {e}") })?;
    let v = match v.get("data") {
        Some(d) if v.get("stream").is_some() => d.clone(),
        _ => v,
    };
    match text_of(&v, "e").as_str() {
        "executionReport" => {
            let executed = decode("z", Quantity::parse_unsigned(&num(&v, "z")))?;
            let last_qty = decode("l", Quantity::parse_unsigned(&num(&v, "l")))?;
            let last_price = decode("L", Price::parse(&num(&v, "L")))?;
            let symbol = text_of(&v, "s");
            let fee_asset = text_of(&v, "N");
            let fee =
                if !fee_asset.is_empty() && symbol.ends_with(&fee_asset) { decode("n", Money::parse(&num(&v, "n")))? } else { Money::ZERO };
            // A cancel carries the cancel request's id in `c` and the order's in `C`.
            let original = text_of(&v, "C");
            Ok(UserEvent::Order(VenueOrder {
                client_id: if original.is_empty() { text_of(&v, "c") } else { original },
                symbol,
                venue_id: text_of(&v, "i"),
                status: status(&v)?,
                side: if text_of(&v, "S") == "SELL" { Side::Sell } else { Side::Buy },
                price: decode("p", Price::parse(&num(&v, "p")))?,
                qty: decode("q", Quantity::parse_unsigned(&num(&v, "q")))?,
                executed,
                cum_quote: decode("Z", Money::parse(&num(&v, "Z")))?,
                fills: if last_qty.raw > 0 { vec![VenueFill { price: last_price, qty: last_qty, fee }] } else { Vec::new() },
                update_ms: v.get("T").and_then(Value::as_u64).unwrap_or(0),
            }))
        }
        "ORDER_TRADE_UPDATE" => {
            let o = v.get("o").ok_or_else(|| VenueError::Decode { venue: VENUE, reason: "ORDER_TRADE_UPDATE without o".into() })?;
            let executed = decode("z", Quantity::parse_unsigned(&num(o, "z")))?;
            let avg = decode("ap", Price::parse(&num(o, "ap")))?;
            let last_qty = decode("l", Quantity::parse_unsigned(&num(o, "l")))?;
            let last_price = decode("L", Price::parse(&num(o, "L")))?;
            let symbol = text_of(o, "s");
            let fee_asset = text_of(o, "N");
            let fee =
                if !fee_asset.is_empty() && symbol.ends_with(&fee_asset) { decode("n", Money::parse(&num(o, "n")))? } else { Money::ZERO };
            Ok(UserEvent::Order(VenueOrder {
                symbol,
                client_id: text_of(o, "c"),
                venue_id: text_of(o, "i"),
                status: status(o)?,
                side: if text_of(o, "S") == "SELL" { Side::Sell } else { Side::Buy },
                price: decode("p", Price::parse(&num(o, "p")))?,
                qty: decode("q", Quantity::parse_unsigned(&num(o, "q")))?,
                executed,
                // USD-M sends the average price, not the quote amount.
                cum_quote: notional(avg, executed).unwrap_or(Money::ZERO),
                fills: if last_qty.raw > 0 { vec![VenueFill { price: last_price, qty: last_qty, fee }] } else { Vec::new() },
                update_ms: o.get("T").and_then(Value::as_u64).unwrap_or(0),
            }))
        }
        "listenKeyExpired" => Ok(UserEvent::ListenKeyExpired),
        _ => Ok(UserEvent::Other),
    }
}

/// How the stream connects.
#[derive(Debug, Clone)]
pub struct UserStreamConfig {
    /// WebSocket base, e.g. `wss://stream.binance.com:9443`, `wss://fstream.binance.com`, or
    /// the local exchange's `ws://127.0.0.1:port`.
    pub ws_url: String,
    /// Listen-key keep-alive period (Binance: keys live 60 min; send every 30).
    pub keepalive: Duration,
    /// Wait before reconnecting.
    pub backoff: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
}

impl UserStreamConfig {
    /// Defaults for `ws_url`.
    pub fn new(ws_url: impl Into<String>) -> Self {
        Self {
            ws_url: ws_url.into().trim_end_matches('/').to_string(),
            keepalive: Duration::from_secs(30 * 60),
            backoff: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Counters of a user stream.
#[derive(Debug, Default)]
pub struct UserStreamStats {
    /// Connections made.
    pub connects: AtomicU64,
    /// Order updates forwarded.
    pub orders: AtomicU64,
    /// Executions (fills with fees) forwarded.
    pub executions: AtomicU64,
    /// True while a session is authenticated and subscribed.
    pub up: std::sync::atomic::AtomicBool,
    /// Messages that could not be parsed, and failed requests or connects.
    pub errors: AtomicU64,
}

impl UserStreamStats {
    /// Writes the counters as `sapphire_venue_stream_*` metrics.
    pub fn encode(&self, m: &mut crate::api::MetricsWriter<'_>) {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        m.gauge(
            "sapphire_venue_stream_up",
            "1 while the venue's push stream is authenticated and subscribed.",
            u32::from(self.up.load(Ordering::Relaxed)),
        );
        m.counter(
            "sapphire_venue_stream_connects_total",
            "Push stream (re)connections, each followed by a query of working orders.",
            r(&self.connects),
        );
        m.counters(
            "sapphire_venue_stream_messages_total",
            "Push stream messages forwarded to the gateway, by kind.",
            [("order", r(&self.orders)), ("execution", r(&self.executions))].map(|(kind, n)| ([("kind", kind)], n)),
        );
        m.counter("sapphire_venue_stream_errors_total", "Malformed messages, refused auths, failed connects.", r(&self.errors));
    }
}

/// Runs the user-data stream until `stop` turns true (or the gateway is gone).
pub async fn run_user_stream(
    client: Arc<BinanceExecution>,
    config: UserStreamConfig,
    updates: mpsc::Sender<UserUpdate>,
    stats: Arc<UserStreamStats>,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let key = match client.create_listen_key().await {
            Ok(k) => k,
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("venue binance: user stream: listen key: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(config.backoff) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        let url = format!("{}/ws/{key}", config.ws_url);
        let mut ws = match connect(&url, config.connect_timeout).await {
            Ok(ws) => ws,
            Err(reason) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("venue binance: user stream: connect {}: {reason}", config.ws_url);
                tokio::select! {
                    _ = tokio::time::sleep(config.backoff) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        stats.connects.fetch_add(1, Ordering::Relaxed);
        stats.up.store(true, Ordering::Relaxed);
        if updates.send(UserUpdate::Reconnected).await.is_err() {
            return;
        }
        let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + config.keepalive, config.keepalive);
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    let _ = ws.close(None).await;
                    let _ = client.close_listen_key(&key).await;
                    return;
                }
                _ = keepalive.tick() => {
                    if let Err(e) = client.keepalive_listen_key(&key).await {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("venue binance: user stream: keep-alive: {e}");
                    }
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => match parse_user_event(t.as_str()) {
                        Ok(UserEvent::Order(o)) => {
                            stats.orders.fetch_add(1, Ordering::Relaxed);
                            if updates.send(UserUpdate::Order(o)).await.is_err() {
                                return;
                            }
                        }
                        Ok(UserEvent::ListenKeyExpired) => break,
                        Ok(UserEvent::Other) => {}
                        Err(e) => {
                            stats.errors.fetch_add(1, Ordering::Relaxed);
                            eprintln!("venue binance: user stream: {e}");
                        }
                    },
                    Some(Ok(Message::Ping(p))) => {
                        if ws.send(Message::Pong(p)).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
            }
        }
        stats.up.store(false, Ordering::Relaxed);
        if updates.send(UserUpdate::Disconnected).await.is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(config.backoff) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Connects a WebSocket over plain TCP or TLS, as the feed connection does.
async fn connect(url: &str, timeout: Duration) -> Result<tokio_tungstenite::WebSocketStream<crate::connection::tls::Transport>, String> {
    let endpoint = crate::connection::tls::Endpoint::parse(url, ("ws", "wss")).map_err(|e| e.to_string())?;
    let started = tokio::time::Instant::now();
    let transport = crate::connection::tls::connect(&endpoint, url, timeout).await.map_err(|e| e.to_string())?;
    let left = timeout.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, tokio_tungstenite::client_async_with_config(url, transport, None)).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("websocket handshake timed out".into()),
    }
}
