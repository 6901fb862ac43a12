//! `GET /ws`: the dashboard's live stream.
//!
//! Every message is a JSON object with a `type`:
//!
//! | type | when | body |
//! |---|---|---|
//! | `hello` | once, first | `instance` (changes when the process restarts: ids restart), `symbols`, `tick_ms`, `max_items` |
//! | `snapshot` | every tick | the `/dashboard` body without `positions`: totals, risk, agents and margin, counters, latency, feeds |
//! | `positions` | when a fill moved them | `items`: every open or traded position |
//! | `equity` | new points | `points`: `[t_ms, equity, pnl, realized, unrealized, fees]` rows (one a second of event time) |
//! | `fills`, `orders`, `signals`, `risk` | new records | `items` oldest first (as `/api/trades` etc. render them), `latest`, `skipped` |
//!
//! # Slow clients never slow the core
//! The engine never sees a client: it writes outputs to a bounded ring the edge drains into
//! [`EdgeState`](super::EdgeState). A client's own state is five cursors (the last id of each
//! history it was sent) and a positions version, never a queue: each tick it gets the latest
//! snapshot and the records past its cursors, at most [`ApiLimits::ws_max_items`] of a kind
//! (the newest, with a `skipped` count). Writes are bounded by tungstenite's write buffer;
//! a tick whose writes take longer than [`ApiLimits::ws_send_timeout`] drops the client
//! (`stalled`). The server pings every [`ApiLimits::ws_ping_every`]; a client reads the ping
//! only after everything sent before it, so an answer later than [`ApiLimits::ws_max_lag`]
//! (or none) means it reads that far behind, and it is dropped (`slow`). Drops are counted in
//! `sapphire_ws_clients_dropped_total{reason}`.
//!
//! Upgrades from a page of another origin are refused (403), as are clients past
//! [`ApiLimits::ws_max_clients`] (503); both are counted in
//! `sapphire_ws_clients_refused_total{reason}`.

use super::routes::{error, Ctx};
use super::server::{stopped, WsDrop, WsRefusal};
use super::state::EQUITY_HISTORY;
use super::{view, ApiContext, ApiLimits};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

const R: Ordering = Ordering::Relaxed;

/// Largest message a client may send (it has nothing to say; this bounds what it can make us
/// buffer).
const MAX_INCOMING: usize = 4 * 1024;
/// Hard cap on what one client's unsent output may hold.
const MAX_WRITE_BUFFER: usize = 4 * 1024 * 1024;

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Whether a header holds `token` in its comma-separated list (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A `Sec-WebSocket-Key` as RFC 6455 has it: 16 bytes in base64 (24 characters, the last
/// two `=`, the one before them carrying no stray bits).
fn valid_key(key: &[u8]) -> bool {
    let b64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    key.len() == 24 && key[..21].iter().all(b64) && b"AQgw".contains(&key[21]) && &key[22..] == b"=="
}

/// A browser's `Origin` must be the page we served: `http(s)://` + our `Host`.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true; // not a browser: nothing to protect it from
    };
    let (Ok(origin), Some(host)) = (origin.to_str(), headers.get(header::HOST).and_then(|h| h.to_str().ok())) else {
        return false;
    };
    let authority = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
}

/// Holds one of the [`ApiLimits::ws_max_clients`] places until dropped.
struct ClientSlot(Arc<ApiContext>);

impl ClientSlot {
    fn take(ctx: &Arc<ApiContext>) -> Option<Self> {
        let max = ctx.limits.ws_max_clients as u64;
        ctx.stats.ws_clients.fetch_update(R, R, |n| (n < max).then_some(n + 1)).ok().map(|_| Self(Arc::clone(ctx)))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.stats.ws_clients.fetch_sub(1, R);
    }
}

/// `GET /ws`: checks the handshake, the origin and the cap, answers 101 and serves the client
/// on a task of its own.
#[utoipa::path(get, path = "/ws", tag = "dashboard",
    params(
        ("upgrade" = String, Header, pattern = "^websocket$", description = "`websocket`"),
        ("connection" = String, Header, pattern = "^Upgrade$", description = "`Upgrade`"),
        ("sec-websocket-version" = String, Header, pattern = "^13$", description = "`13`"),
        ("sec-websocket-key" = String, Header, pattern = "^[A-Za-z0-9+/]{21}[AQgw]==$", description = "16 random bytes in base64"),
    ),
    responses(
    (status = 101, description = "Switching to the WebSocket stream: a `hello`, then a `snapshot` every tick and what the client has not seen"),
    (status = 400, description = "A handshake begun but incomplete (a header missing or wrong), or a Sec-WebSocket-Key that is not 16 bytes in base64", body = super::openapi::ErrorBody),
    (status = 403, description = "The Origin is another site's", body = super::openapi::ErrorBody),
    (status = 426, description = "A plain HTTP request (neither Upgrade nor Sec-WebSocket-Key): this is a WebSocket endpoint", body = super::openapi::ErrorBody,
        headers(("upgrade" = String, description = "`websocket`"))),
    (status = 503, description = "The WebSocket client cap is reached, or every connection place is busy", body = super::openapi::ErrorBody),
))]
pub(super) async fn upgrade(State(ctx): Ctx, mut req: Request) -> Response {
    let headers = req.headers();
    let key = headers.get(header::SEC_WEBSOCKET_KEY).map(|k| k.as_bytes().to_vec());
    let handshake = has_token(headers, header::UPGRADE, "websocket")
        && has_token(headers, header::CONNECTION, "upgrade")
        && headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
    let attempted = headers.contains_key(header::UPGRADE) || key.is_some();
    let Some(key) = key.filter(|_| handshake) else {
        if attempted {
            return error(
                StatusCode::BAD_REQUEST,
                "an incomplete WebSocket handshake: it needs Upgrade: websocket, Connection: Upgrade, Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key",
            );
        }
        let mut r = error(
            StatusCode::UPGRADE_REQUIRED,
            "/ws is a WebSocket endpoint: connect with a WebSocket client (Upgrade: websocket, Sec-WebSocket-Version: 13)",
        );
        r.headers_mut().insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
        return r;
    };
    if !valid_key(&key) {
        return error(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455)");
    }
    if !same_origin(headers) {
        ctx.stats.refused(WsRefusal::Origin);
        return error(StatusCode::FORBIDDEN, "a WebSocket from a page of another origin is refused");
    }
    let Some(slot) = ClientSlot::take(&ctx) else {
        ctx.stats.refused(WsRefusal::Capacity);
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} dashboard clients are connected, the most this server takes; retry later", ctx.limits.ws_max_clients),
        );
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "this connection cannot be upgraded");
    };
    ctx.stats.ws_accepted.fetch_add(1, R);
    let accept = tungstenite::handshake::derive_accept_key(&key);
    tokio::spawn(async move {
        let slot = slot;
        let Ok(upgraded) = on_upgrade.await else {
            slot.0.stats.dropped(WsDrop::Error);
            return;
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_INCOMING))
            .max_frame_size(Some(MAX_INCOMING))
            .max_write_buffer_size(MAX_WRITE_BUFFER);
        let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        if let End::Dropped(why) = serve(&slot.0, socket).await {
            slot.0.stats.dropped(why);
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "building the upgrade response"))
}

/// How a client's stream ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The client closed or went away.
    Gone,
    /// The server is stopping.
    Stopping,
    /// The server dropped it.
    Dropped(WsDrop),
}

fn read_error(e: &tungstenite::Error) -> End {
    use tungstenite::Error as E;
    match e {
        E::Capacity(_) | E::Protocol(_) | E::Utf8(_) | E::AttackAttempt => End::Dropped(WsDrop::Protocol),
        // Reset, closed, broken pipe: the client went away.
        _ => End::Gone,
    }
}

fn write_error(e: &tungstenite::Error) -> End {
    match e {
        tungstenite::Error::WriteBufferFull(_) => End::Dropped(WsDrop::Stalled),
        _ => End::Gone,
    }
}

/// Writes `messages` and flushes, within the send timeout.
async fn send(socket: &mut Socket, messages: Vec<Message>, limit: Duration) -> Result<(), End> {
    let write = async {
        for m in messages {
            socket.feed(m).await?;
        }
        socket.flush().await
    };
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(write_error(&e)),
        Err(_) => Err(End::Dropped(WsDrop::Stalled)),
    }
}

/// What a client has been sent.
#[derive(Debug, Default)]
struct Cursors {
    orders: u64,
    fills: u64,
    signals: u64,
    risk: u64,
    equity: u64,
    /// Positions version last sent (`None`: never).
    positions: Option<u64>,
}

/// What clients are sent in one tick, rendered once and shared.
///
/// Every client ticks on its own phase. The first to tick after the frame has aged past half
/// a tick renders a new one (the snapshot); the others clone its messages, which are
/// reference-counted bytes, not copies. Positions and records are memoized in the frame by
/// what they depend on (the positions version; the kind, the client's cursor and the item
/// cap), so clients that are caught up (every one, in steady state) share one rendering too.
/// 500 clients then cost a few renders a second rather than 2,000: measured with
/// benches/ws_load.rs, the serving thread had taken most of a core rendering per client.
#[derive(Debug, Default)]
pub(super) struct Frames {
    frame: std::sync::Mutex<Option<Frame>>,
    /// Frames rendered (`sapphire_ws_frames_rendered_total`).
    pub(super) rendered: std::sync::atomic::AtomicU64,
}

/// Memoized record messages in one frame at most (a client past them renders its own).
const MAX_MEMO: usize = 64;

/// A record message and the last id it holds; `None`: nothing past the cursor.
type Rendered = Option<(Message, u64)>;

#[derive(Debug)]
struct Frame {
    made: Instant,
    snapshot: Message,
    positions: Option<(u64, Message)>,
    /// By (kind, after, max).
    records: Vec<((&'static str, u64, usize), Rendered)>,
}

impl Frame {
    fn render(ctx: &ApiContext) -> Self {
        let mut snapshot = view::snapshot(ctx, false);
        snapshot["type"] = Value::from("snapshot");
        Self { made: Instant::now(), snapshot: Message::text(snapshot.to_string()), positions: None, records: Vec::new() }
    }

    fn positions(&mut self, ctx: &ApiContext, version: u64) -> Message {
        match &self.positions {
            Some((v, m)) if *v == version => m.clone(),
            _ => {
                let m = Message::text(json!({ "type": "positions", "items": view::positions(&ctx.state) }).to_string());
                self.positions = Some((version, m.clone()));
                m
            }
        }
    }

    fn memo(&mut self, key: (&'static str, u64, usize), make: impl FnOnce() -> Rendered) -> Rendered {
        if let Some((_, r)) = self.records.iter().find(|(k, _)| *k == key) {
            return r.clone();
        }
        let r = make();
        if self.records.len() < MAX_MEMO {
            self.records.push((key, r.clone()));
        }
        r
    }
}

/// `{"type": kind, "items": [...], "latest": id, "skipped": n}` for records past `after`.
fn records<T: Copy + Default>(
    ctx: &ApiContext,
    kind: &str,
    history: &super::history::History<T>,
    after: u64,
    max: usize,
    render: fn(&super::EdgeState, u64, &T) -> Value,
) -> Rendered {
    let mut out = Vec::new();
    let skipped = history.since(after, max, &mut out);
    let (last, _) = *out.last()?;
    let items: Vec<Value> = out.iter().map(|(id, r)| render(&ctx.state, *id, r)).collect();
    Some((Message::text(json!({ "type": kind, "items": items, "latest": last, "skipped": skipped }).to_string()), last))
}

fn equity(ctx: &ApiContext, after: u64, max: usize) -> Rendered {
    let mut points = Vec::new();
    let skipped = ctx.state.equity_history().since(after, max, &mut points);
    let (last, _) = *points.last()?;
    let text = format!("{{\"type\":\"equity\",\"latest\":{last},\"skipped\":{skipped},\"points\":{}}}", view::equity_points(&points));
    Some((Message::text(text), last))
}

/// Adds the frame's message of `kind` records past `cursor` (rendering it if no client at
/// that cursor has yet), advancing the cursor.
fn push_records<T: Copy + Default>(
    frame: &mut Frame,
    ctx: &ApiContext,
    messages: &mut Vec<Message>,
    kind: &'static str,
    history: &super::history::History<T>,
    cursor: &mut u64,
    render: fn(&super::EdgeState, u64, &T) -> Value,
) {
    let (after, max) = (*cursor, ctx.limits.ws_max_items.max(1));
    if let Some((m, last)) = frame.memo((kind, after, max), || records(ctx, kind, history, after, max, render)) {
        *cursor = last;
        messages.push(m);
    }
}

/// One tick's messages for a client at `cursors`, advancing them.
fn tick_messages(ctx: &ApiContext, cursors: &mut Cursors) -> Vec<Message> {
    let s = &ctx.state;
    let max = ctx.limits.ws_max_items.max(1);
    let mut messages = Vec::with_capacity(7);
    let frames = &ctx.frames;
    // Never held across an await; the serving runtime is one thread, so it is never contended.
    let mut slot = frames.frame.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let frame = match slot.as_mut() {
        Some(f) if f.made.elapsed() < ctx.limits.ws_tick / 2 => f,
        _ => {
            frames.rendered.fetch_add(1, R);
            slot.insert(Frame::render(ctx))
        }
    };
    messages.push(frame.snapshot.clone());
    let version = s.positions_version();
    if cursors.positions != Some(version) {
        cursors.positions = Some(version);
        messages.push(frame.positions(ctx, version));
    }
    // The first equity message carries the whole history, so the chart starts full.
    let equity_max = if cursors.equity == 0 { EQUITY_HISTORY } else { max };
    let after = cursors.equity;
    if let Some((m, last)) = frame.memo(("equity", after, equity_max), || equity(ctx, after, equity_max)) {
        cursors.equity = last;
        messages.push(m);
    }
    push_records(frame, ctx, &mut messages, "fills", s.fills_history(), &mut cursors.fills, view::fill);
    push_records(frame, ctx, &mut messages, "orders", s.orders_history(), &mut cursors.orders, view::order);
    push_records(frame, ctx, &mut messages, "signals", s.signals_history(), &mut cursors.signals, view::signal);
    push_records(frame, ctx, &mut messages, "risk", s.risk_history(), &mut cursors.risk, view::risk);
    messages
}

fn hello(ctx: &ApiContext) -> Message {
    let l: &ApiLimits = &ctx.limits;
    Message::text(
        json!({
            "type": "hello",
            "instance": ctx.state.instance().to_string(),
            "symbols": ctx.state.symbols(),
            "tick_ms": l.ws_tick.as_millis() as u64,
            "max_items": l.ws_max_items,
        })
        .to_string(),
    )
}

/// Serves one client until it leaves, the server stops, or it is dropped.
async fn serve(ctx: &Arc<ApiContext>, mut socket: Socket) -> End {
    let limits = ctx.limits;
    let mut stopping = ctx.stopping.clone();
    let mut tick = tokio::time::interval(limits.ws_tick);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut ping = tokio::time::interval_at(Instant::now() + limits.ws_ping_every, limits.ws_ping_every);
    ping.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // The ping awaiting its pong: payload and when it went out.
    let mut awaiting: Option<([u8; 8], Instant)> = None;
    let mut pings: u64 = 0;
    let mut cursors = Cursors::default();
    if let Err(end) = send(&mut socket, vec![hello(ctx)], limits.ws_send_timeout).await {
        return end;
    }
    let lagging = |awaiting: &Option<([u8; 8], Instant)>| awaiting.is_some_and(|(_, at)| at.elapsed() > limits.ws_max_lag);
    let end = loop {
        tokio::select! {
            _ = stopped(&mut stopping) => break End::Stopping,
            incoming = socket.next() => match incoming {
                None | Some(Ok(Message::Close(_))) => break End::Gone,
                Some(Ok(Message::Pong(payload))) => {
                    if awaiting.is_some_and(|(p, _)| payload.as_ref() == p) {
                        awaiting = None;
                    }
                }
                // Pings are answered by tungstenite; anything else from the client is ignored.
                Some(Ok(_)) => {}
                Some(Err(e)) => break read_error(&e),
            },
            _ = tick.tick() => {
                if lagging(&awaiting) {
                    break End::Dropped(WsDrop::Slow);
                }
                let messages = tick_messages(ctx, &mut cursors);
                let n = messages.len() as u64;
                if let Err(end) = send(&mut socket, messages, limits.ws_send_timeout).await {
                    break end;
                }
                ctx.stats.ws_messages.fetch_add(n, R);
            }
            _ = ping.tick() => {
                if lagging(&awaiting) {
                    break End::Dropped(WsDrop::Slow);
                }
                if awaiting.is_none() {
                    pings += 1;
                    let payload = pings.to_be_bytes();
                    awaiting = Some((payload, Instant::now()));
                    if let Err(end) = send(&mut socket, vec![Message::Ping(payload.to_vec().into())], limits.ws_send_timeout).await {
                        break end;
                    }
                }
            }
        }
    };
    if matches!(end, End::Stopping | End::Gone) {
        // A polite close, if the socket still takes one; never waits long.
        let _ = tokio::time::timeout(Duration::from_millis(200), socket.close(None)).await;
    }
    end
}
