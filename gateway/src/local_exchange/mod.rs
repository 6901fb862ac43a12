//! A local exchange that speaks Binance's and Bybit v5's wire formats on 127.0.0.1 and
//! replays recorded frames, for tests, conformance runs and `sapphire feed serve`.
//!
//! - WebSocket: combined streams at `/stream?streams=a/b/c` (frames in `{"stream","data"}`
//!   envelopes) and raw streams at `/ws` or `/ws/<stream>`; the live `SUBSCRIBE`,
//!   `UNSUBSCRIBE` and `LIST_SUBSCRIPTIONS` requests with their responses; a server ping every
//!   `ping_interval`, and a connection that has not answered with a pong within
//!   `pong_timeout` is closed, as Binance does.
//! - REST: `GET /api/v3/depth` and `/fapi/v1/depth` (`symbol`, `limit`) from the exchange's
//!   own book ([`book`]), `GET /api/v3/exchangeInfo` and `/fapi/v1/exchangeInfo` generated for
//!   the symbols served, `ping` and `time`.
//! - Bybit v5 public market data ([`bybit`]): WebSockets at `/v5/public/spot` and
//!   `/v5/public/linear` (`subscribe`/`unsubscribe`/`ping` operations answered in Bybit's
//!   shape, a fresh `orderbook` snapshot from the exchange's own book on every subscription,
//!   a silent client dropped) and `GET /v5/market/instruments-info`. Bybit frames in a
//!   recording (`{"topic":…}` lines) go only to Bybit sessions, Binance frames only to
//!   Binance sessions.
//! - Bybit's private stream (`/v5/private`, [`bybit`]): auth checked as Bybit does, then
//!   `order` and `execution` pushes for orders placed through the Bybit order endpoints.
//! - Orders ([`orders`]): Binance's signed order REST (spot and USD-M), listen-key user-data
//!   streams, and Bybit v5's order endpoints, checked and answered as the venues do, with
//!   fault injection for the execution client's tests.
//! - Replay ([`Market`]): one tape for every connection, as one market moves for everyone.
//!   It plays at the recorded pace or as fast as the slowest subscriber reads ([`Pace`]), only
//!   while someone is subscribed (a replay nobody hears is lost), and each frame goes to the
//!   connections subscribed to its stream.
//! - Faults ([`Faults`]) for tests, each fired once: drop the connections after N frames,
//!   skip one depth update (an id gap; Bybit snapshots are not counted as updates), send a
//!   garbage frame, stall (no frames, no pings, no answers).
//!
//! # Layout
//! - [`tape`]: recordings loaded into memory, frames tagged with their stream.
//! - [`book`]: the exchange's book per symbol, served as the REST snapshot.
//! - [`orders`]: Binance's signed order endpoints (new, cancel, query, open orders, cancel-all).
//! - [`bybit`]: the Bybit v5 public WebSocket and instruments-info.

pub mod book;
pub mod bybit;
pub mod orders;
pub mod tape;

use crate::binance::BinanceMarket;
use crate::connection::http::header;
use crate::json::{elements, fields, Value};
use book::ExchangeBook;
use futures_util::{SinkExt, StreamExt};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tape::{StreamKey, Tape, TapeFrame, TapeVenue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// Why the local exchange could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalExchangeError {
    /// A recording could not be read or makes no sense.
    #[error("recording {path}: {reason}")]
    Recording {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// The listening socket.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The runtime could not start.
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
}

/// How fast the tape plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// At the recorded receive times.
    Recorded,
    /// As fast as the subscribers read.
    Fast,
}

/// Faults to inject, each fired once; frame counts are frames delivered (to anyone).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Drop every connection (no close frame) after this many frames.
    pub drop_after: Option<u64>,
    /// Do not deliver the n-th depth update (1-based); the exchange's book still moves.
    pub skip_depth_update: Option<u64>,
    /// Deliver the n-th depth update (1-based) after the one that follows it (reordered).
    pub swap_depth_update: Option<u64>,
    /// Send a frame that is not JSON after this many frames.
    pub garbage_after: Option<u64>,
    /// After this many frames, go silent (no frames, no pings) for this long.
    pub stall_after: Option<(u64, Duration)>,
}

/// The local exchange's settings.
#[derive(Debug, Clone)]
pub struct LocalExchangeConfig {
    /// Where to listen (`127.0.0.1:0` picks a free port).
    pub bind: SocketAddr,
    /// Spot or USD-M (the snapshot format; both REST paths are served).
    pub market: BinanceMarket,
    /// Replay pace.
    pub pace: Pace,
    /// Faults for tests.
    pub faults: Faults,
    /// Server ping period (Binance: 20 s spot, 3 min futures).
    pub ping_interval: Duration,
    /// Close a connection whose pong is this late (Binance: 1 min).
    pub pong_timeout: Duration,
    /// A subscriber that cannot take a frame for this long is disconnected.
    pub slow_consumer_timeout: Duration,
    /// Shift the frames' event and transaction times (Binance `E`, `T`; Bybit `ts`, `cts`,
    /// `T`) so the first frame is "now":
    /// an engine then sees a live feed (its stale-data guard runs on its own clock), not one
    /// from the day it was recorded.
    pub shift_times_to_now: bool,
}

impl LocalExchangeConfig {
    /// Defaults on `127.0.0.1:0`.
    pub fn new(market: BinanceMarket, pace: Pace) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            market,
            pace,
            faults: Faults::default(),
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(60),
            slow_consumer_timeout: Duration::from_secs(5),
            shift_times_to_now: false,
        }
    }
}

/// The time fields each venue's frames carry, in milliseconds.
const BINANCE_TIME_KEYS: &[&str] = &["E", "T"];
const BYBIT_TIME_KEYS: &[&str] = &["ts", "cts", "T"];

/// Adds `offset_ms` to every `"<key>":<digits>` millisecond time in a frame's text.
fn shift_times(text: &str, offset_ms: u64, keys: &[&str]) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut rest = text;
    while let Some(q) = rest.find('"') {
        let after = &rest[q + 1..];
        let Some(key) = keys.iter().find(|k| after.starts_with(**k) && after[k.len()..].starts_with("\":")) else {
            out.push_str(&rest[..=q]);
            rest = after;
            continue;
        };
        let digits_at = q + 1 + key.len() + 2;
        let len = rest[digits_at..].bytes().take_while(u8::is_ascii_digit).count();
        out.push_str(&rest[..digits_at]);
        match rest[digits_at..digits_at + len].parse::<u64>() {
            Ok(t) if len > 0 => out.push_str(&(t + offset_ms).to_string()),
            _ => out.push_str(&rest[digits_at..digits_at + len]),
        }
        rest = &rest[digits_at + len..];
    }
    out.push_str(rest);
    out
}

/// What the exchange has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExchangeStats {
    /// WebSocket connections accepted.
    pub connections: u64,
    /// Frames delivered to at least one connection.
    pub frames_sent: u64,
    /// REST requests answered.
    pub rest_requests: u64,
    /// Pongs received.
    pub pongs: u64,
    /// Application pings answered (Bybit's `{"op":"ping"}`).
    pub pings: u64,
    /// Faults fired.
    pub faults_fired: u64,
    /// The whole tape was played.
    pub finished: bool,
}

/// What a connection handler is told to do.
#[derive(Debug, Clone)]
enum Outbound {
    Frame(Arc<TapeFrame>),
    Garbage,
    Drop,
    Stall(Duration),
}

/// A connection as the market sees it.
#[derive(Debug)]
struct Subscriber {
    id: u64,
    /// The wire format it speaks: it gets only that venue's frames.
    venue: TapeVenue,
    streams: Arc<Mutex<HashSet<StreamKey>>>,
    tx: mpsc::Sender<Outbound>,
}

/// State shared by the listener, the handlers and the market.
#[derive(Debug)]
struct Shared {
    config: LocalExchangeConfig,
    books: Mutex<HashMap<String, ExchangeBook>>,
    subscribers: Mutex<Vec<Subscriber>>,
    /// Signalled when subscriptions change (the market waits for a listener).
    subscribed: Notify,
    stats: watch::Sender<ExchangeStats>,
    symbols: Vec<String>,
    /// Price and quantity decimals seen per symbol (for exchangeInfo's filters).
    decimals: HashMap<String, (usize, usize)>,
    /// Each symbol's traded figures over the tape, for `/ticker/24hr`.
    tickers: Vec<TickerDay>,
    /// The order endpoints' state.
    desk: orders::OrderDesk,
}

impl Shared {
    fn bump(&self, f: impl FnOnce(&mut ExchangeStats)) {
        self.stats.send_modify(f);
    }
}

/// A running local exchange. Dropping it does not stop it: call [`LocalExchange::shutdown`].
#[derive(Debug)]
pub struct LocalExchange {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: broadcast::Sender<()>,
    tasks: tokio::task::JoinSet<()>,
}

fn decimals(s: &str) -> usize {
    s.split_once('.').map_or(0, |(_, f)| f.trim_end_matches('0').len())
}

impl LocalExchange {
    /// Binds and starts serving `tape`.
    pub async fn start(config: LocalExchangeConfig, tape: Tape) -> Result<Self, LocalExchangeError> {
        let listener = TcpListener::bind(config.bind).await.map_err(|source| LocalExchangeError::Bind { addr: config.bind, source })?;
        let addr = listener.local_addr().map_err(|source| LocalExchangeError::Bind { addr: config.bind, source })?;
        let mut books: HashMap<String, ExchangeBook> = HashMap::new();
        for s in &tape.snapshots {
            books.insert(s.symbol.clone(), ExchangeBook::from_snapshot(s));
        }
        let mut dec: HashMap<String, (usize, usize)> = HashMap::new();
        for f in &tape.frames {
            if let Some(d) = &f.depth {
                let e = dec.entry(f.key.symbol.to_ascii_uppercase()).or_default();
                for (p, q) in d.bids.iter().chain(&d.asks) {
                    e.0 = e.0.max(decimals(p));
                    e.1 = e.1.max(decimals(q));
                }
            }
        }
        let symbols = tape.symbols();
        let tickers = ticker_days(&tape, &symbols);
        let (stats, _) = watch::channel(ExchangeStats::default());
        let shared = Arc::new(Shared {
            config,
            books: Mutex::new(books),
            subscribers: Mutex::new(Vec::new()),
            subscribed: Notify::new(),
            stats,
            symbols,
            decimals: dec,
            tickers,
            desk: orders::OrderDesk::default(),
        });
        let (shutdown, _) = broadcast::channel(1);
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(Market { shared: Arc::clone(&shared), tape, shutdown: shutdown.subscribe() }.run());
        tasks.spawn(listen(listener, Arc::clone(&shared), shutdown.clone(), shutdown.subscribe()));
        Ok(Self { addr, shared, shutdown, tasks })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://<addr>`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// `http://<addr>`.
    pub fn rest_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The order desk: credentials, faults, balances, the orders it holds.
    pub fn orders(&self) -> orders::OrderDeskHandle {
        orders::OrderDeskHandle { shared: Arc::clone(&self.shared) }
    }

    /// Live statistics.
    pub fn stats(&self) -> watch::Receiver<ExchangeStats> {
        self.shared.stats.subscribe()
    }

    /// The exchange's current depth snapshot for `symbol` (what REST would answer).
    pub fn snapshot(&self, symbol: &str, limit: usize) -> Option<String> {
        let books = self.shared.books.lock().unwrap_or_else(|p| p.into_inner());
        books.get(symbol).map(|b| b.snapshot_json(limit, self.shared.config.market == BinanceMarket::UsdM))
    }

    /// The exchange's current Bybit `orderbook.{depth}.{symbol}` snapshot frame (what a new
    /// subscription is sent).
    pub fn bybit_snapshot(&self, symbol: &str, depth: usize) -> Option<String> {
        let books = lock(&self.shared.books);
        books.get(symbol).map(|b| b.bybit_snapshot_json(depth, symbol, sapphire_core::latency::unix_nanos() / 1_000_000))
    }

    /// Stops the listener, the market and every connection, and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(());
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Serves on a runtime of its own until the process ends (for the command line);
/// `on_bound` gets the address once listening.
pub fn serve_blocking(config: LocalExchangeConfig, tape: Tape, on_bound: impl FnOnce(SocketAddr)) -> Result<(), LocalExchangeError> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(LocalExchangeError::Runtime)?;
    rt.block_on(async move {
        let exchange = LocalExchange::start(config, tape).await?;
        on_bound(exchange.addr());
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// The replay: plays the tape into the subscribers' queues and the exchange's books.
#[derive(Debug)]
struct Market {
    shared: Arc<Shared>,
    tape: Tape,
    shutdown: broadcast::Receiver<()>,
}

impl Market {
    async fn run(mut self) {
        let shared = Arc::clone(&self.shared);
        let faults = shared.config.faults;
        let first_recv = self.tape.frames.first().map_or(0, |f| f.recv_ns);
        // Recorded receive times are close to the venue's E/T: shifting by now − first receive
        // time makes the replayed frames look current.
        let shift_ms = if shared.config.shift_times_to_now && first_recv > 0 {
            (sapphire_core::latency::unix_nanos().saturating_sub(first_recv)) / 1_000_000
        } else {
            0
        };
        let mut origin: Option<Instant> = None;
        let (mut sent, mut depth_sent) = (0u64, 0u64);
        // A depth update held back by `swap_depth_update`, sent after the next one.
        let mut held: Option<Arc<TapeFrame>> = None;
        let mut targets: Vec<mpsc::Sender<Outbound>> = Vec::new();
        let frames = std::mem::take(&mut self.tape.frames);
        for frame in frames.into_iter() {
            let frame = if shift_ms > 0 {
                let mut f = frame;
                let keys = match f.venue {
                    TapeVenue::Binance => BINANCE_TIME_KEYS,
                    TapeVenue::Bybit => BYBIT_TIME_KEYS,
                };
                f.combined = shift_times(f.combined.as_str(), shift_ms, keys).into();
                f.raw = shift_times(f.raw.as_str(), shift_ms, keys).into();
                Arc::new(f)
            } else {
                Arc::new(frame)
            };
            // Nobody listening: wait, and keep the recorded pace relative to the pause.
            let waited_from = Instant::now();
            loop {
                let notified = shared.subscribed.notified();
                if shared.subscribers.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|s| !lock(&s.streams).is_empty()) {
                    break;
                }
                tokio::select! {
                    _ = notified => {}
                    _ = self.shutdown.recv() => return,
                }
            }
            let origin = origin.get_or_insert_with(Instant::now);
            *origin += waited_from.elapsed();
            if shared.config.pace == Pace::Recorded {
                let at = *origin + Duration::from_nanos(frame.recv_ns.saturating_sub(first_recv));
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = self.shutdown.recv() => return,
                }
            }
            if let Some(d) = &frame.depth {
                let symbol = frame.key.symbol.to_ascii_uppercase();
                lock(&shared.books).entry(symbol).or_default().apply(d);
            }
            targets.clear();
            {
                let subs = lock(&shared.subscribers);
                targets
                    .extend(subs.iter().filter(|s| s.venue == frame.venue && lock(&s.streams).contains(&frame.key)).map(|s| s.tx.clone()));
            }
            if targets.is_empty() {
                continue;
            }
            if frame.depth.as_ref().is_some_and(|d| !d.reset) {
                depth_sent += 1;
                if faults.skip_depth_update == Some(depth_sent) {
                    shared.bump(|s| s.faults_fired += 1);
                    continue;
                }
                if faults.swap_depth_update == Some(depth_sent) {
                    shared.bump(|s| s.faults_fired += 1);
                    held = Some(frame);
                    continue;
                }
            }
            self.send(&targets, Outbound::Frame(Arc::clone(&frame))).await;
            sent += 1;
            if frame.depth.is_some() {
                if let Some(h) = held.take() {
                    self.send(&targets, Outbound::Frame(h)).await;
                    sent += 1;
                }
            }
            shared.bump(|s| s.frames_sent = sent);
            if faults.garbage_after == Some(sent) {
                shared.bump(|s| s.faults_fired += 1);
                self.send(&targets, Outbound::Garbage).await;
            }
            if faults.drop_after == Some(sent) {
                shared.bump(|s| s.faults_fired += 1);
                self.send(&targets, Outbound::Drop).await;
            }
            if let Some((after, stall)) = faults.stall_after {
                if after == sent {
                    shared.bump(|s| s.faults_fired += 1);
                    self.send(&targets, Outbound::Stall(stall)).await;
                    tokio::time::sleep(stall).await;
                }
            }
        }
        shared.bump(|s| s.finished = true);
    }

    /// Delivers to every target; one that cannot take it in time is a slow consumer and
    /// loses its queue (its handler then closes the connection).
    async fn send(&self, targets: &[mpsc::Sender<Outbound>], out: Outbound) {
        let timeout = self.shared.config.slow_consumer_timeout;
        for tx in targets {
            if tokio::time::timeout(timeout, tx.send(out.clone())).await.map_or(true, |r| r.is_err()) {
                lock(&self.shared.subscribers).retain(|s| !s.tx.same_channel(tx));
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `stop` is subscribed before the task starts, so a shutdown sent at once is not missed.
async fn listen(listener: TcpListener, shared: Arc<Shared>, shutdown: broadcast::Sender<()>, mut stop: broadcast::Receiver<()>) {
    let mut next_id = 0u64;
    let mut handlers = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.recv() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                next_id += 1;
                handlers.spawn(handle(stream, next_id, Arc::clone(&shared), shutdown.subscribe()));
            }
            Some(_) = handlers.join_next(), if !handlers.is_empty() => {}
        }
    }
    while handlers.join_next().await.is_some() {}
}

/// Reads one request head (up to 16 KB); returns it and any bytes after it.
async fn read_head(stream: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1_024);
    let mut chunk = [0u8; 1_024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((buf, rest));
        }
        if buf.len() > 16 * 1_024 {
            return None;
        }
    }
}

async fn handle(mut stream: TcpStream, id: u64, shared: Arc<Shared>, mut shutdown: broadcast::Receiver<()>) {
    let head = tokio::select! {
        h = tokio::time::timeout(Duration::from_secs(10), read_head(&mut stream)) => h,
        _ = shutdown.recv() => return,
    };
    let Ok(Some((head, rest))) = head else { return };
    let line = head.split(|&b| b == b'\r').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/").to_string());
    let upgrade = header(&head, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if method == "GET" && upgrade {
        let Some(key) = header(&head, "sec-websocket-key") else {
            let _ = respond(&mut stream, 400, r#"{"code":-1,"msg":"missing Sec-WebSocket-Key"}"#).await;
            return;
        };
        let accept = derive_accept_key(key.as_bytes());
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
        let ws = WebSocketStream::from_partially_read(stream, rest, Role::Server, None).await;
        shared.bump(|s| s.connections += 1);
        if orders::is_user_stream(&shared, &target) {
            orders::user_session(ws, &shared, shutdown).await;
        } else if bybit::is_private(&target) {
            bybit::private_session(ws, id, &shared, shutdown).await;
        } else if let Some(category) = bybit::public_category(&target) {
            bybit::public_session(ws, id, category, &shared, shutdown).await;
        } else {
            stream_session(ws, id, &target, &shared, shutdown).await;
        }
    } else if orders::is_order_path(target.split('?').next().unwrap_or("")) {
        orders::serve(&mut stream, method, &target, &head, rest, &shared, shutdown).await;
    } else {
        let (status, body) =
            if method == "GET" { rest_response(&shared, &target) } else { (405, r#"{"code":-1,"msg":"GET only"}"#.to_string()) };
        shared.bump(|s| s.rest_requests += 1);
        let _ = respond(&mut stream, status, &body).await;
    }
}

async fn respond(stream: &mut TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

fn query<'a>(target: &'a str, name: &str) -> Option<&'a str> {
    target.split_once('?')?.1.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
}

fn rest_response(shared: &Shared, target: &str) -> (u16, String) {
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/api/v3/depth" | "/fapi/v1/depth" => {
            let Some(symbol) = query(target, "symbol") else {
                return (400, r#"{"code":-1102,"msg":"Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."}"#.into());
            };
            let limit = query(target, "limit").and_then(|l| l.parse().ok()).unwrap_or(100usize).clamp(1, 5_000);
            let books = lock(&shared.books);
            match books.get(&symbol.to_ascii_uppercase()) {
                Some(b) => (200, b.snapshot_json(limit, path.starts_with("/fapi"))),
                None if shared.symbols.iter().any(|s| s.eq_ignore_ascii_case(symbol)) => {
                    (200, ExchangeBook::default().snapshot_json(limit, path.starts_with("/fapi")))
                }
                None => (400, r#"{"code":-1121,"msg":"Invalid symbol."}"#.into()),
            }
        }
        "/api/v3/exchangeInfo" | "/fapi/v1/exchangeInfo" => (200, exchange_info(shared)),
        "/api/v3/ticker/24hr" | "/fapi/v1/ticker/24hr" => (200, ticker_24hr(shared, path.starts_with("/fapi"))),
        "/v5/market/instruments-info" => (200, bybit::instruments_info(shared, query(target, "category"), query(target, "symbol"))),
        "/v5/market/tickers" => (200, bybit::tickers(shared, query(target, "category"))),
        "/api/v3/ping" | "/fapi/v1/ping" => (200, "{}".into()),
        "/api/v3/time" | "/fapi/v1/time" => (200, format!("{{\"serverTime\":{}}}", sapphire_core::latency::unix_nanos() / 1_000_000)),
        _ => (404, r#"{"code":-1,"msg":"Not found"}"#.into()),
    }
}

fn step(decimals: usize) -> String {
    if decimals == 0 {
        "1".into()
    } else {
        format!("0.{}1", "0".repeat(decimals - 1))
    }
}

/// A symbol's base and quote assets, by its quote suffix (`BTCUSDT` → `BTC`, `USDT`).
fn base_quote(s: &str) -> (&str, &str) {
    const QUOTES: [&str; 8] = ["FDUSD", "USDT", "USDC", "BUSD", "BTC", "ETH", "BNB", "EUR"];
    let quote = QUOTES.iter().find(|q| s.ends_with(*q) && s.len() > q.len()).copied().unwrap_or("");
    (&s[..s.len() - quote.len()], quote)
}

fn exchange_info(shared: &Shared) -> String {
    let symbols: Vec<String> = shared
        .symbols
        .iter()
        .map(|s| {
            let (base, quote) = base_quote(s);
            let (pd, qd) = shared.decimals.get(s).copied().unwrap_or((2, 3));
            format!(
                r#"{{"symbol":"{s}","status":"TRADING","baseAsset":"{base}","quoteAsset":"{quote}","filters":[{{"filterType":"PRICE_FILTER","minPrice":"{t}","maxPrice":"1000000","tickSize":"{t}"}},{{"filterType":"LOT_SIZE","minQty":"{l}","maxQty":"9000","stepSize":"{l}"}},{{"filterType":"NOTIONAL","minNotional":"5"}}]}}"#,
                t = step(pd),
                l = step(qd)
            )
        })
        .collect();
    format!(
        r#"{{"timezone":"UTC","serverTime":{},"rateLimits":[],"exchangeFilters":[],"symbols":[{}]}}"#,
        sapphire_core::latency::unix_nanos() / 1_000_000,
        symbols.join(",")
    )
}

/// A symbol's trades over the whole tape (the recording stands for the venue's last 24 h).
#[derive(Debug, Clone, Default)]
struct TickerDay {
    symbol: String,
    open: f64,
    high: f64,
    low: f64,
    last: f64,
    volume: f64,
    quote_volume: f64,
    count: u64,
    first_ms: u64,
    last_ms: u64,
}

/// Sums each symbol's `@trade`/`@aggTrade` frames (price × quantity for the quote volume).
fn ticker_days(tape: &Tape, symbols: &[String]) -> Vec<TickerDay> {
    let mut days: Vec<TickerDay> = symbols.iter().map(|s| TickerDay { symbol: s.clone(), ..TickerDay::default() }).collect();
    for f in &tape.frames {
        // Binance: one trade a frame (`p`, `q`); Bybit `publicTrade`: a list of trades (`p`, `v`).
        let trades: Vec<(f64, f64)> = match f.key.channel.as_str() {
            "trade" | "aggTrade" => {
                let (mut price, mut qty) = (None, None);
                for (k, v) in fields(f.raw.as_bytes()).ok().into_iter().flatten().flatten() {
                    match k {
                        b"p" => price = v.as_plain_str().and_then(|p| p.parse::<f64>().ok()),
                        b"q" => qty = v.as_plain_str().and_then(|q| q.parse::<f64>().ok()),
                        _ => {}
                    }
                }
                price.zip(qty).into_iter().collect()
            }
            "publicTrade" => serde_json::from_str::<serde_json::Value>(f.raw.as_str())
                .ok()
                .and_then(|v| v.get("data").and_then(|d| d.as_array()).cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|t| {
                    let num = |k: &str| t.get(k).and_then(|x| x.as_str()).and_then(|x| x.parse::<f64>().ok());
                    num("p").zip(num("v"))
                })
                .collect(),
            _ => continue,
        };
        let Some(day) = days.iter_mut().find(|d| d.symbol.eq_ignore_ascii_case(&f.key.symbol)) else { continue };
        for (p, q) in trades {
            day.add(p, q, f.recv_ns / 1_000_000);
        }
    }
    days
}

impl TickerDay {
    fn add(&mut self, p: f64, q: f64, ms: u64) {
        if self.count == 0 {
            (self.open, self.high, self.low, self.first_ms) = (p, p, p, ms);
        }
        (self.high, self.low, self.last, self.last_ms) = (self.high.max(p), self.low.min(p), p, ms);
        self.volume += q;
        self.quote_volume += p * q;
        self.count += 1;
    }
}

/// `GET /api/v3/ticker/24hr` (and `/fapi/v1/ticker/24hr`) for every symbol served, in
/// Binance's wire format (an array of full tickers; decimals as strings).
fn ticker_24hr(shared: &Shared, futures: bool) -> String {
    let books = shared.books.lock().unwrap_or_else(|p| p.into_inner());
    let items: Vec<String> = shared
        .tickers
        .iter()
        .map(|d| {
            let (bid, ask) = books.get(&d.symbol).map(|b| b.top()).unwrap_or_default();
            let (bid, ask) = (bid.unwrap_or("0").to_string(), ask.unwrap_or("0").to_string());
            let change = d.last - d.open;
            let pct = if d.open > 0.0 { change / d.open * 100.0 } else { 0.0 };
            let avg = if d.volume > 0.0 { d.quote_volume / d.volume } else { 0.0 };
            let spot_only = if futures {
                String::new()
            } else {
                format!(
                    r#""prevClosePrice":"{:.8}","bidPrice":"{bid}","bidQty":"0","askPrice":"{ask}","askQty":"0","#,
                    d.open
                )
            };
            format!(
                r#"{{"symbol":"{}","priceChange":"{change:.8}","priceChangePercent":"{pct:.3}","weightedAvgPrice":"{avg:.8}",{spot_only}"lastPrice":"{:.8}","lastQty":"0","openPrice":"{:.8}","highPrice":"{:.8}","lowPrice":"{:.8}","volume":"{:.8}","quoteVolume":"{:.8}","openTime":{},"closeTime":{},"firstId":{},"lastId":{},"count":{}}}"#,
                d.symbol,
                d.last,
                d.open,
                d.high,
                d.low,
                d.volume,
                d.quote_volume,
                d.first_ms,
                d.last_ms,
                if d.count > 0 { 1 } else { -1 },
                if d.count > 0 { d.count as i64 } else { -1 },
                d.count
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// Streams named in the target: `/stream?streams=a/b`, `/ws/a/b`.
fn url_streams(target: &str) -> (bool, HashSet<StreamKey>) {
    let path = target.split('?').next().unwrap_or("");
    if path.starts_with("/stream") {
        let list = query(target, "streams").unwrap_or("");
        (true, list.split('/').filter_map(StreamKey::parse).collect())
    } else {
        (false, path.trim_start_matches("/ws").split('/').filter_map(StreamKey::parse).collect())
    }
}

/// Answers a request frame (`SUBSCRIBE` and friends); `None` for anything else.
fn on_request(text: &str, streams: &Mutex<HashSet<StreamKey>>, combined: bool) -> Option<String> {
    let (mut method, mut params, mut id) = (None, None, "null".to_string());
    for (k, v) in fields(text.as_bytes()).ok()?.flatten() {
        match k {
            b"method" => method = v.as_plain_str(),
            b"params" => params = Some(v),
            b"id" => {
                id = match v {
                    Value::Num(n) => String::from_utf8_lossy(n).into_owned(),
                    Value::Str(s) => format!("\"{}\"", String::from_utf8_lossy(s)),
                    _ => "null".into(),
                }
            }
            _ => {}
        }
    }
    let names = || -> Vec<StreamKey> {
        let Some(Value::Arr(a)) = params else { return Vec::new() };
        elements(a).map(|e| e.flatten().filter_map(|v| v.as_plain_str().and_then(StreamKey::parse)).collect()).unwrap_or_default()
    };
    let mut set = lock(streams);
    match method? {
        "SUBSCRIBE" => {
            set.extend(names());
            Some(format!("{{\"result\":null,\"id\":{id}}}"))
        }
        "UNSUBSCRIBE" => {
            for k in names() {
                set.remove(&k);
            }
            Some(format!("{{\"result\":null,\"id\":{id}}}"))
        }
        "LIST_SUBSCRIPTIONS" => {
            let mut list: Vec<String> = set.iter().map(|k| format!("\"{}\"", k.name())).collect();
            list.sort();
            Some(format!("{{\"result\":[{}],\"id\":{id}}}", list.join(",")))
        }
        _ => {
            let _ = combined;
            Some(format!("{{\"error\":{{\"code\":2,\"msg\":\"Invalid request: unknown method\"}},\"id\":{id}}}"))
        }
    }
}

async fn stream_session(
    mut ws: WebSocketStream<TcpStream>,
    id: u64,
    target: &str,
    shared: &Arc<Shared>,
    mut shutdown: broadcast::Receiver<()>,
) {
    let (combined, initial) = url_streams(target);
    let streams = Arc::new(Mutex::new(initial));
    let (tx, mut rx) = mpsc::channel(4_096);
    lock(&shared.subscribers).push(Subscriber { id, venue: TapeVenue::Binance, streams: Arc::clone(&streams), tx });
    shared.subscribed.notify_waiters();
    let mut ping = tokio::time::interval_at(Instant::now() + shared.config.ping_interval, shared.config.ping_interval);
    let mut awaiting_pong_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.recv() => {
                let _ = ws.close(None).await;
                break;
            }
            out = rx.recv() => match out {
                Some(Outbound::Frame(f)) => {
                    let text: Utf8Bytes = if combined { f.combined.clone() } else { f.raw.clone() };
                    if ws.send(Message::Text(text)).await.is_err() {
                        break;
                    }
                }
                Some(Outbound::Garbage) => {
                    if ws.send(Message::text("{\"stream\":\"garbage")).await.is_err() {
                        break;
                    }
                }
                // Gone without a close frame, as a network drop looks.
                Some(Outbound::Drop) | None => break,
                Some(Outbound::Stall(d)) => {
                    tokio::time::sleep(d).await;
                    ping.reset();
                }
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let answer = on_request(t.as_str(), &streams, combined);
                    shared.subscribed.notify_waiters();
                    if let Some(a) = answer {
                        if ws.send(Message::text(a)).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Ok(Message::Pong(_))) => {
                    awaiting_pong_since = None;
                    shared.bump(|s| s.pongs += 1);
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if awaiting_pong_since.is_some_and(|t| t.elapsed() >= shared.config.pong_timeout) {
                    let _ = ws.close(None).await;
                    break;
                }
                awaiting_pong_since.get_or_insert_with(Instant::now);
                if ws.send(Message::Ping(Vec::from(b"sapphire".as_slice()).into())).await.is_err() {
                    break;
                }
            }
        }
    }
    lock(&shared.subscribers).retain(|s| s.id != id);
    shared.subscribed.notify_waiters();
}

#[cfg(test)]
mod shift_tests {
    use super::{shift_times, BINANCE_TIME_KEYS, BYBIT_TIME_KEYS};

    #[test]
    fn shifts_event_and_transaction_times_only() {
        let f =
            r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161600001,"s":"BTCUSDT","t":9,"T":1723161600000,"p":"1.0","q":"2"}}"#;
        assert_eq!(
            shift_times(f, 1_000, BINANCE_TIME_KEYS),
            r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161601001,"s":"BTCUSDT","t":9,"T":1723161601000,"p":"1.0","q":"2"}}"#
        );
        assert_eq!(
            shift_times(r#"{"u":1,"s":"ETHUSDT","b":"1","B":"2"}"#, 5, BINANCE_TIME_KEYS),
            r#"{"u":1,"s":"ETHUSDT","b":"1","B":"2"}"#
        );
        let bybit = r#"{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1000,"data":[{"T":990,"s":"BTCUSDT","S":"Buy","v":"1","p":"2","i":"T"}],"cts":999}"#;
        assert_eq!(
            shift_times(bybit, 5, BYBIT_TIME_KEYS),
            r#"{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1005,"data":[{"T":995,"s":"BTCUSDT","S":"Buy","v":"1","p":"2","i":"T"}],"cts":1004}"#
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_url_streams() {
        let (combined, set) = url_streams("/stream?streams=btcusdt@depth@100ms/btcusdt@bookTicker");
        assert!(combined);
        assert_eq!(set.len(), 2);
        let (combined, set) = url_streams("/ws/ethusdt@trade");
        assert!(!combined);
        assert!(set.contains(&StreamKey { symbol: "ethusdt".into(), channel: "trade".into() }));
        let streams = Mutex::new(HashSet::new());
        let r = on_request(r#"{"method":"SUBSCRIBE","params":["btcusdt@aggTrade","btcusdt@depth"],"id":1}"#, &streams, true);
        assert_eq!(r.as_deref(), Some(r#"{"result":null,"id":1}"#));
        let r = on_request(r#"{"method":"LIST_SUBSCRIPTIONS","id":3}"#, &streams, true);
        assert_eq!(r.as_deref(), Some(r#"{"result":["btcusdt@aggTrade","btcusdt@depth"],"id":3}"#));
        on_request(r#"{"method":"UNSUBSCRIBE","params":["btcusdt@depth"],"id":4}"#, &streams, true);
        assert_eq!(lock(&streams).len(), 1);
        assert!(on_request(r#"{"method":"NOPE","id":5}"#, &streams, true).unwrap().contains("error"));
        assert_eq!(on_request("garbage", &streams, true), None);
        assert_eq!(query("/api/v3/depth?symbol=BTCUSDT&limit=5", "limit"), Some("5"));
        assert_eq!(step(2), "0.01");
        assert_eq!(step(0), "1");
    }
}
