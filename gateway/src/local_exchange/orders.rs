//! The local exchange's order desk: Binance's order REST endpoints on the wire, for the
//! execution client's tests and local runs.
//!
//! - Spot `/api/v3/order` (POST new, DELETE cancel, GET query), `/api/v3/openOrders` (GET,
//!   DELETE = cancel all), `/api/v3/account`; USD-M `/fapi/v1/order`, `/fapi/v1/openOrders`,
//!   `/fapi/v1/allOpenOrders` (DELETE), `/fapi/v3/account`, `/fapi/v3/positionRisk`. The
//!   parameters may come in the query, the form body, or both, as Binance allows.
//! - Security exactly as Binance: the `X-MBX-APIKEY` header must name the desk's key
//!   (`-2015`), the HMAC-SHA256 `signature` must cover `totalParams` (the query string then
//!   the body, without the signature) (`-1022`), and the `timestamp` must satisfy
//!   `timestamp < serverTime + 1000 && serverTime - timestamp <= recvWindow` (`-1021`).
//! - Orders are checked against the symbol's filters (those exchangeInfo serves), fill at
//!   once against the replayed book's top when marketable (up to the top's size; the book is
//!   not depleted), and otherwise rest. Answers use Binance's JSON shapes (`ACK`, `RESULT`,
//!   `FULL` for spot; futures' order object), errors `{"code":…,"msg":…}`.
//! - Usage headers (`X-MBX-USED-WEIGHT-1M`, `X-MBX-ORDER-COUNT-10S`) on every answer, with
//!   limits that answer 429 + `Retry-After` when passed.
//! - Faults ([`OrderFault`]), each fired once on the next new order: answer 500 (with or
//!   without placing the order), delay the answer, drop the connection after placing the
//!   order, answer 429 with `Retry-After`.
//! - User-data streams: `POST/PUT/DELETE /api/v3/userDataStream` and `/fapi/v1/listenKey`
//!   (API key only, as Binance) give a listen key; a WebSocket on `/ws/<listenKey>` then
//!   receives every order change as `executionReport` (spot) or `ORDER_TRADE_UPDATE`
//!   (USD-M): `NEW`, one `TRADE` per fill, `CANCELED` / `EXPIRED`.
//! - Bybit v5 (`/v5/order/create`, `cancel`, `cancel-all`, `realtime`, `/v5/position/list`,
//!   `/v5/account/wallet-balance`, `/v5/market/time`) over the same orders and book, with
//!   Bybit's signature check and `retCode`s. Bybit fills carry fees: [`MAKER_FEE_PPM`] for a
//!   resting order that was hit, [`TAKER_FEE_PPM`] for one that crossed on arrival, in USDT.
//! - Positions can be changed behind the client's back ([`OrderDeskHandle::set_position`]: a
//!   manual trade, a liquidation), for reconciliation tests.

use super::{lock, Shared};
use crate::binance::BinanceMarket;
use crate::connection::http::header;
use crate::venue::format_fixed;
use crate::venue::sign::{parse_query, verify_hmac_sha256_hex};
use sapphire_core::fixed::{notional, Money, Price, Quantity, MONEY_DECIMALS, PRICE_DECIMALS, QTY_DECIMALS};
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The API key the desk accepts until told otherwise (local use only).
pub const LOCAL_API_KEY: &str = "sapphire-local-key";
/// The secret the desk verifies signatures with until told otherwise (local use only).
pub const LOCAL_API_SECRET: &str = "sapphire-local-secret";

/// Fee of a maker fill, parts per million of its notional (Bybit linear's 0.02 %).
pub const MAKER_FEE_PPM: i64 = 200;

/// Fee of a taker fill, parts per million of its notional (Bybit linear's 0.055 %).
pub const TAKER_FEE_PPM: i64 = 550;

/// The fee of a fill at `price` × `qty`.
pub fn fill_fee(price: Price, qty: Quantity, maker: bool) -> Money {
    let n = notional(price, qty).unwrap_or(Money::ZERO);
    let ppm = if maker { MAKER_FEE_PPM } else { TAKER_FEE_PPM };
    Money::from_raw((i128::from(n.raw) * i128::from(ppm) / 1_000_000) as i64)
}

/// A fault fired once, on the next new-order request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderFault {
    /// Answer HTTP 500; `place` says whether the order is placed all the same.
    Error500 {
        /// Place the order before answering 500.
        place: bool,
    },
    /// Place the order, then wait this long before answering (past a client's timeout).
    Delay(Duration),
    /// Place the order, then close the connection without answering.
    DropResponse,
    /// Answer 429 (`-1003`) with `Retry-After: secs`, placing nothing.
    RateLimited {
        /// The `Retry-After` value, seconds.
        retry_after_secs: u64,
    },
}

/// One limit the desk enforces and reports in headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeskLimit {
    /// True: counts orders (`X-MBX-ORDER-COUNT-*`); false: request weight (`X-MBX-USED-WEIGHT-*`).
    pub orders: bool,
    /// Window, clock-aligned.
    pub interval: Duration,
    /// Most allowed per window.
    pub limit: u64,
}

/// An order at the desk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeskOrder {
    /// Symbol.
    pub symbol: String,
    /// Exchange order id.
    pub order_id: u64,
    /// Client order id.
    pub client_id: String,
    /// `BUY` / `SELL`.
    pub side: String,
    /// `LIMIT`, `MARKET`, `LIMIT_MAKER`.
    pub order_type: String,
    /// `GTC`, `IOC`, `FOK`, `GTX` (empty for market / limit maker).
    pub tif: String,
    /// Limit price (zero for market).
    pub price: Price,
    /// Ordered quantity.
    pub qty: Quantity,
    /// Filled.
    pub executed: Quantity,
    /// Quote filled.
    pub cum_quote: Money,
    /// `NEW`, `PARTIALLY_FILLED`, `FILLED`, `CANCELED`, `EXPIRED`.
    pub status: &'static str,
    /// Futures reduce-only.
    pub reduce_only: bool,
    /// Fills: (price, qty).
    pub fills: Vec<(Price, Quantity)>,
    /// Per fill: true when the order was resting (maker), false when it crossed on arrival.
    pub makers: Vec<bool>,
    /// Fills move a position (USD-M, every Bybit order), not spot balances.
    pub futures: bool,
    /// Creation time, ms.
    pub time_ms: u64,
    /// Last change, ms.
    pub update_ms: u64,
}

impl DeskOrder {
    fn is_open(&self) -> bool {
        matches!(self.status, "NEW" | "PARTIALLY_FILLED")
    }
}

#[derive(Debug)]
struct DeskState {
    api_key: String,
    secret: String,
    orders: Vec<DeskOrder>,
    next_id: u64,
    faults: VecDeque<OrderFault>,
    /// Spot balances per asset; assets absent are unlimited.
    balances: HashMap<String, Quantity>,
    /// Futures positions per symbol (signed).
    positions: HashMap<String, Quantity>,
    limits: Vec<DeskLimit>,
    /// (window index, used) per limit.
    usage: Vec<(u64, u64)>,
    requests: u64,
    /// Delay added before every answer (a slow venue).
    latency: Duration,
    /// Connections that carried order requests.
    connections: u64,
    /// Listen keys handed out.
    listen_keys: Vec<String>,
    /// Per order id: (status, fills) already sent on the user-data stream.
    emitted: HashMap<u64, (&'static str, usize)>,
}

impl Default for DeskState {
    fn default() -> Self {
        let limits = vec![
            DeskLimit { orders: false, interval: Duration::from_secs(60), limit: 6_000 },
            DeskLimit { orders: true, interval: Duration::from_secs(10), limit: 100 },
        ];
        Self {
            api_key: LOCAL_API_KEY.into(),
            secret: LOCAL_API_SECRET.into(),
            orders: Vec::new(),
            next_id: 1,
            faults: VecDeque::new(),
            balances: HashMap::new(),
            positions: HashMap::new(),
            usage: vec![(0, 0); limits.len()],
            limits,
            requests: 0,
            latency: Duration::ZERO,
            connections: 0,
            listen_keys: Vec::new(),
            emitted: HashMap::new(),
        }
    }
}

/// The desk's state inside the exchange.
#[derive(Debug)]
pub(super) struct OrderDesk {
    state: Mutex<DeskState>,
    /// User-data events (JSON text) for every listen-key session.
    events: tokio::sync::broadcast::Sender<Arc<str>>,
    /// Bybit private-stream messages: (topic, JSON text) for every `/v5/private` session.
    pub(super) bybit_events: tokio::sync::broadcast::Sender<(&'static str, Arc<str>)>,
    /// Wakes every `/v5/private` session to drop its connection (a test's fault).
    pub(super) drop_private: tokio::sync::Notify,
}

impl Default for OrderDesk {
    fn default() -> Self {
        Self {
            state: Mutex::new(DeskState::default()),
            events: tokio::sync::broadcast::channel(4_096).0,
            bybit_events: tokio::sync::broadcast::channel(4_096).0,
            drop_private: tokio::sync::Notify::new(),
        }
    }
}

impl OrderDesk {
    /// The key and secret requests must use.
    pub(super) fn credentials(&self) -> (String, String) {
        let st = lock(&self.state);
        (st.api_key.clone(), st.secret.clone())
    }
}

/// A handle to configure and inspect the desk from tests ([`super::LocalExchange::orders`]).
#[derive(Debug, Clone)]
pub struct OrderDeskHandle {
    pub(super) shared: Arc<Shared>,
}

impl OrderDeskHandle {
    fn state(&self) -> std::sync::MutexGuard<'_, DeskState> {
        lock(&self.shared.desk.state)
    }

    /// The key and secret requests must use.
    pub fn set_credentials(&self, api_key: &str, secret: &str) {
        let mut st = self.state();
        st.api_key = api_key.into();
        st.secret = secret.into();
    }

    /// Drops every Bybit private-stream connection (no close frame, as a network drop looks).
    pub fn drop_private_streams(&self) {
        self.shared.desk.drop_private.notify_waiters();
    }

    /// Queues a fault for the next new order.
    pub fn inject(&self, fault: OrderFault) {
        self.state().faults.push_back(fault);
    }

    /// Sets a spot balance (assets never set are unlimited).
    pub fn set_balance(&self, asset: &str, free: Quantity) {
        self.state().balances.insert(asset.to_string(), free);
    }

    /// Replaces the limits enforced and reported.
    pub fn set_limits(&self, limits: &[DeskLimit]) {
        let mut st = self.state();
        st.limits = limits.to_vec();
        st.usage = vec![(0, 0); limits.len()];
    }

    /// Adds a delay before every answer.
    pub fn set_latency(&self, latency: Duration) {
        self.state().latency = latency;
    }

    /// Requests the order endpoints received (any outcome).
    pub fn requests(&self) -> u64 {
        self.state().requests
    }

    /// Connections that carried order requests (fewer than requests when clients pool).
    pub fn connections(&self) -> u64 {
        self.state().connections
    }

    /// Every order the desk holds, in creation order.
    pub fn orders(&self) -> Vec<DeskOrder> {
        self.state().orders.clone()
    }

    /// Orders with this client order id (more than one would be a duplicate).
    pub fn count_client_id(&self, client_id: &str) -> usize {
        self.state().orders.iter().filter(|o| o.client_id == client_id).count()
    }

    /// Fills up to `qty` of a working order at its own price, as a taker arriving at the
    /// venue would; false when no such working order exists.
    pub fn fill_resting(&self, client_id: &str, qty: Quantity) -> bool {
        let mut st = self.state();
        let Some(i) = st.orders.iter().position(|o| o.client_id == client_id && o.is_open()) else { return false };
        let (price, left) = (st.orders[i].price, st.orders[i].qty - st.orders[i].executed);
        fill(&mut st, i, price, qty.min(left), true);
        drop(st);
        publish_changes(&self.shared);
        true
    }

    /// Sets a futures position behind the client's back (a manual trade, a liquidation):
    /// `/v5/position/list` and `/fapi/v3/positionRisk` answer it from now on.
    pub fn set_position(&self, symbol: &str, qty: Quantity) {
        self.state().positions.insert(symbol.to_string(), qty);
    }

    /// Fills resting orders that the current book top crosses.
    pub fn match_resting(&self) {
        let tops = tops(&self.shared);
        let mut st = self.state();
        match_resting(&mut st, &tops);
        drop(st);
        publish_changes(&self.shared);
    }
}

/// True for a path the desk serves.
pub(super) fn is_order_path(path: &str) -> bool {
    matches!(
        path,
        "/api/v3/order"
            | "/api/v3/openOrders"
            | "/api/v3/account"
            | "/fapi/v1/order"
            | "/fapi/v1/openOrders"
            | "/fapi/v1/allOpenOrders"
            | "/fapi/v3/account"
            | "/fapi/v3/positionRisk"
            | "/v5/order/create"
            | "/v5/order/cancel"
            | "/v5/order/cancel-all"
            | "/v5/order/realtime"
            | "/v5/market/time"
            | "/v5/position/list"
            | "/v5/account/wallet-balance"
            | "/api/v3/userDataStream"
            | "/fapi/v1/listenKey"
    )
}

/// An answer: status, body, extra headers; `None` body drops the connection.
struct Reply {
    status: u16,
    body: Option<String>,
    headers: Vec<(String, String)>,
    delay: Duration,
}

fn err(status: u16, code: i64, msg: &str) -> Reply {
    Reply { status, body: Some(format!("{{\"code\":{code},\"msg\":\"{msg}\"}}")), headers: Vec::new(), delay: Duration::ZERO }
}

fn ok(body: String) -> Reply {
    Reply { status: 200, body: Some(body), headers: Vec::new(), delay: Duration::ZERO }
}

/// Serves order-endpoint requests on `stream` (the first head already read; `rest` is what
/// followed it), keeping the connection open between requests unless the client asks to
/// close it (as a venue does: clients pool connections). Other GETs arriving on a kept-open
/// connection get the exchange's market-data answers.
pub(super) async fn serve(
    stream: &mut TcpStream,
    method: &str,
    target: &str,
    head: &[u8],
    rest: Vec<u8>,
    shared: &Arc<Shared>,
    mut shutdown: tokio::sync::broadcast::Receiver<()>,
) {
    let (mut method, mut target, mut head, mut rest) = (method.to_string(), target.to_string(), head.to_vec(), rest);
    lock(&shared.desk.state).connections += 1;
    loop {
        let keep_alive = !header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let length: usize = header(&head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        if length > 64 * 1_024 {
            let _ = write_reply(stream, err(400, -1_000, "Request body too large."), false).await;
            return;
        }
        let mut chunk = [0u8; 4_096];
        while rest.len() < length {
            match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => rest.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        }
        // Bytes past the body would be a pipelined request: not supported, dropped.
        rest.truncate(length);
        let body = String::from_utf8_lossy(&rest).into_owned();
        shared.bump(|s| s.rest_requests += 1);
        let path = target.split('?').next().unwrap_or("");
        let reply = if path.starts_with("/v5/") {
            let auth = BybitAuth {
                api_key: header(&head, "x-bapi-api-key").map(str::to_string),
                timestamp: header(&head, "x-bapi-timestamp").and_then(|v| v.parse().ok()),
                recv_window: header(&head, "x-bapi-recv-window").and_then(|v| v.parse().ok()),
                sign: header(&head, "x-bapi-sign").map(str::to_string),
            };
            handle_bybit(shared, &method, &target, &body, &auth)
        } else if is_order_path(path) {
            let api_key = header(&head, "x-mbx-apikey").map(str::to_string);
            handle(shared, &method, &target, &body, api_key.as_deref())
        } else if method == "GET" {
            let (status, body) = super::rest_response(shared, &target);
            Reply { status, body: Some(body), headers: Vec::new(), delay: Duration::ZERO }
        } else {
            err(405, -1, "GET only")
        };
        publish_changes(shared);
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        let dropped = reply.body.is_none();
        if write_reply(stream, reply, keep_alive).await.is_err() || dropped || !keep_alive {
            return;
        }
        let next = tokio::select! {
            h = tokio::time::timeout(Duration::from_secs(30), super::read_head(stream)) => h,
            _ = shutdown.recv() => return,
        };
        let Ok(Some((h, r))) = next else { return };
        let line = h.split(|&b| b == b'\r').next().unwrap_or(&[]);
        let line = String::from_utf8_lossy(line).into_owned();
        let mut parts = line.split(' ');
        method = parts.next().unwrap_or("").to_string();
        target = parts.next().unwrap_or("/").to_string();
        head = h;
        rest = r;
    }
}

async fn write_reply(stream: &mut TcpStream, reply: Reply, keep_alive: bool) -> std::io::Result<()> {
    let Some(body) = reply.body else {
        // Dropped: no answer at all, as a connection lost after the venue acted looks.
        return Ok(());
    };
    let reason = match reply.status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Error",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json;charset=UTF-8\r\nContent-Length: {}\r\nConnection: {}\r\n",
        reply.status,
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    for (k, v) in &reply.headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    if keep_alive {
        stream.flush().await
    } else {
        stream.shutdown().await
    }
}

fn now_ms() -> u64 {
    sapphire_core::latency::unix_nanos() / 1_000_000
}

fn interval_name(d: Duration) -> String {
    let s = d.as_secs().max(1);
    if s % 86_400 == 0 {
        format!("{}D", s / 86_400)
    } else if s % 3_600 == 0 {
        format!("{}H", s / 3_600)
    } else if s % 60 == 0 {
        format!("{}M", s / 60)
    } else {
        format!("{s}S")
    }
}

/// Best bid and ask (price, size) per symbol, from the exchange's books.
fn tops(shared: &Shared) -> HashMap<String, [Option<(Price, Quantity)>; 2]> {
    let books = lock(&shared.books);
    let mut out = HashMap::new();
    for (symbol, book) in books.iter() {
        // The one-level snapshot carries both tops with their sizes.
        let snap = book.snapshot_json(1, false);
        let v: serde_json::Value = serde_json::from_str(&snap).unwrap_or_default();
        let level = |side: &str| -> Option<(Price, Quantity)> {
            let l = v.get(side)?.get(0)?;
            Some((Price::parse(l.get(0)?.as_str()?).ok()?, Quantity::parse_unsigned(l.get(1)?.as_str()?).ok()?))
        };
        out.insert(symbol.clone(), [level("bids"), level("asks")]);
    }
    out
}

/// Tick and lot of a symbol, as exchangeInfo serves them.
fn filters(shared: &Shared, symbol: &str) -> (Price, Quantity, Money) {
    let (pd, qd) = shared.decimals.get(symbol).copied().unwrap_or((2, 3));
    let tick = Price::from_raw(10i64.pow(PRICE_DECIMALS.saturating_sub(pd as u32)));
    let lot = Quantity::from_raw(10i64.pow(QTY_DECIMALS.saturating_sub(qd as u32)));
    (tick, lot, Money::from_units(5))
}

fn fmt_price(p: Price) -> String {
    format_fixed(p.raw, PRICE_DECIMALS, 8)
}

fn fmt_qty(q: Quantity) -> String {
    format_fixed(q.raw, QTY_DECIMALS, 8)
}

fn fmt_money(m: Money) -> String {
    format_fixed(m.raw, MONEY_DECIMALS, 8)
}

const QUOTES: [&str; 8] = ["FDUSD", "USDT", "USDC", "BUSD", "BTC", "ETH", "BNB", "EUR"];

fn split_symbol(s: &str) -> (&str, &str) {
    let quote = QUOTES.iter().find(|q| s.ends_with(*q) && s.len() > q.len()).copied().unwrap_or("");
    (&s[..s.len() - quote.len()], quote)
}

/// Applies a fill to the spot balances (assets not tracked stay unlimited).
fn settle_balances(st: &mut DeskState, symbol: &str, buy: bool, qty: Quantity, quote: Money) {
    let (base, quote_asset) = split_symbol(symbol);
    let quote_qty = Quantity::from_raw(quote.raw / 10);
    let (gain, gain_qty, lose, lose_qty) = if buy { (base, qty, quote_asset, quote_qty) } else { (quote_asset, quote_qty, base, qty) };
    if let Some(b) = st.balances.get_mut(gain) {
        *b += gain_qty;
    }
    if let Some(b) = st.balances.get_mut(lose) {
        *b -= lose_qty;
    }
}

fn fill(st: &mut DeskState, idx: usize, price: Price, qty: Quantity, maker: bool) {
    let now = now_ms();
    let quote = notional(price, qty).unwrap_or(Money::ZERO);
    let (symbol, buy, futures) = {
        let o = &mut st.orders[idx];
        o.executed += qty;
        o.cum_quote += quote;
        o.fills.push((price, qty));
        o.makers.push(maker);
        o.update_ms = now;
        o.status = if o.executed >= o.qty { "FILLED" } else { "PARTIALLY_FILLED" };
        (o.symbol.clone(), o.side == "BUY", o.futures)
    };
    if futures {
        let p = st.positions.entry(symbol).or_insert(Quantity::ZERO);
        *p += if buy { qty } else { -qty };
    } else {
        settle_balances(st, &symbol, buy, qty, quote);
    }
}

fn match_resting(st: &mut DeskState, tops: &HashMap<String, [Option<(Price, Quantity)>; 2]>) {
    for i in 0..st.orders.len() {
        let o = &st.orders[i];
        if !o.is_open() || o.order_type == "MARKET" {
            continue;
        }
        let Some(top) = tops.get(&o.symbol) else { continue };
        let buy = o.side == "BUY";
        let Some((px, size)) = top[usize::from(buy)] else { continue };
        let crosses = if buy { o.price >= px } else { o.price <= px };
        if crosses {
            let qty = (o.qty - o.executed).min(size);
            // A resting order fills at its own price (it was there first).
            let price = o.price;
            fill(st, i, price, qty, true);
        }
    }
}

fn order_json(o: &DeskOrder, futures: bool, resp_type: &str, cancel: bool) -> String {
    let mut s = String::with_capacity(400);
    if futures {
        let avg = if o.executed.raw > 0 {
            Price::from_raw((i128::from(o.cum_quote.raw) * i128::from(Quantity::SCALE) / i128::from(o.executed.raw)) as i64)
        } else {
            Price::ZERO
        };
        let _ = write!(
            s,
            r#"{{"clientOrderId":"{}","cumQty":"{}","cumQuote":"{}","executedQty":"{}","orderId":{},"avgPrice":"{}","origQty":"{}","price":"{}","reduceOnly":{},"side":"{}","positionSide":"BOTH","status":"{}","stopPrice":"0","closePosition":false,"symbol":"{}","timeInForce":"{}","type":"{}","origType":"{}","updateTime":{},"workingType":"CONTRACT_PRICE","priceProtect":false,"priceMatch":"NONE","selfTradePreventionMode":"NONE","goodTillDate":0}}"#,
            o.client_id,
            fmt_qty(o.executed),
            fmt_money(o.cum_quote),
            fmt_qty(o.executed),
            o.order_id,
            fmt_price(avg),
            fmt_qty(o.qty),
            fmt_price(o.price),
            o.reduce_only,
            o.side,
            o.status,
            o.symbol,
            if o.tif.is_empty() { "GTC" } else { &o.tif },
            o.order_type,
            o.order_type,
            o.update_ms
        );
        return s;
    }
    let _ = write!(s, r#"{{"symbol":"{}","#, o.symbol);
    if cancel {
        let _ = write!(
            s,
            r#""origClientOrderId":"{}","orderId":{},"orderListId":-1,"clientOrderId":"cancel{}","transactTime":{},"#,
            o.client_id, o.order_id, o.order_id, o.update_ms
        );
    } else if resp_type == "QUERY" {
        let _ = write!(s, r#""orderId":{},"orderListId":-1,"clientOrderId":"{}","#, o.order_id, o.client_id);
    } else {
        let _ = write!(s, r#""orderId":{},"orderListId":-1,"clientOrderId":"{}","transactTime":{}"#, o.order_id, o.client_id, o.time_ms);
        if resp_type == "ACK" {
            s.push('}');
            return s;
        }
        s.push(',');
    }
    let _ = write!(
        s,
        r#""price":"{}","origQty":"{}","executedQty":"{}","cummulativeQuoteQty":"{}","status":"{}","timeInForce":"{}","type":"{}","side":"{}""#,
        fmt_price(o.price),
        fmt_qty(o.qty),
        fmt_qty(o.executed),
        fmt_money(o.cum_quote),
        o.status,
        if o.tif.is_empty() { "GTC" } else { &o.tif },
        o.order_type,
        o.side
    );
    if resp_type == "QUERY" {
        let _ = write!(
            s,
            r#","stopPrice":"0.00000000","icebergQty":"0.00000000","time":{},"updateTime":{},"isWorking":true,"workingTime":{},"origQuoteOrderQty":"0.00000000","selfTradePreventionMode":"NONE""#,
            o.time_ms, o.update_ms, o.time_ms
        );
    } else if !cancel {
        let _ = write!(s, r#","workingTime":{},"selfTradePreventionMode":"NONE""#, o.time_ms);
    } else {
        s.push_str(r#","selfTradePreventionMode":"NONE""#);
    }
    if resp_type == "FULL" {
        s.push_str(r#","fills":["#);
        let (_, quote_asset) = split_symbol(&o.symbol);
        for (i, (p, q)) in o.fills.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(
                s,
                r#"{{"price":"{}","qty":"{}","commission":"0.00000000","commissionAsset":"{}","tradeId":{}}}"#,
                fmt_price(*p),
                fmt_qty(*q),
                quote_asset,
                o.order_id * 100 + i as u64
            );
        }
        s.push(']');
    }
    s.push('}');
    s
}

/// `totalParams` without the signature, and the signature: the query string then the body.
fn split_signature(query: &str, body: &str) -> (String, Option<String>) {
    let mut signature = None;
    let mut strip = |s: &str| -> String {
        s.split('&')
            .filter(|kv| match kv.strip_prefix("signature=") {
                Some(sig) => {
                    signature = Some(sig.to_string());
                    false
                }
                None => !kv.is_empty(),
            })
            .collect::<Vec<_>>()
            .join("&")
    };
    let q = strip(query);
    let b = strip(body);
    (q + &b, signature)
}

fn handle(shared: &Arc<Shared>, method: &str, target: &str, body: &str, api_key: Option<&str>) -> Reply {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let futures = path.starts_with("/fapi");
    let new_order = method == "POST" && path.ends_with("/order");
    let tops = tops(shared);
    let mut st = lock(&shared.desk.state);
    st.requests += 1;
    let latency = st.latency;
    // Usage: count this request, answer 429 when over a limit.
    let now = now_ms();
    let weight = match (method, path) {
        ("GET", p) if p.ends_with("/openOrders") => 6,
        ("GET", p) if p.ends_with("/account") => 20,
        ("GET", p) if p.ends_with("/order") => 4,
        _ => 1,
    };
    let mut headers = Vec::new();
    let mut over = None;
    for i in 0..st.limits.len() {
        let l = st.limits[i];
        let cost = if l.orders { u64::from(new_order) } else { weight };
        let ims = (l.interval.as_millis() as u64).max(1);
        let window = now / ims;
        let (w, used) = &mut st.usage[i];
        if *w != window {
            *w = window;
            *used = 0;
        }
        *used += cost;
        if *used > l.limit && cost > 0 {
            over = Some(((window + 1) * ims - now).div_ceil(1_000).max(1));
        }
        let name = if l.orders { "X-MBX-ORDER-COUNT" } else { "X-MBX-USED-WEIGHT" };
        headers.push((format!("{name}-{}", interval_name(l.interval)), used.to_string()));
    }
    let with = |mut r: Reply| {
        r.headers.extend(headers.iter().cloned());
        r.delay += latency;
        r
    };
    if let Some(retry) = over {
        let mut r = err(429, -1_003, "Too many requests; current limit is exceeded.");
        r.headers.push(("Retry-After".into(), retry.to_string()));
        return with(r);
    }
    let fault = if new_order { st.faults.pop_front() } else { None };
    if let Some(OrderFault::RateLimited { retry_after_secs }) = fault {
        shared.bump(|s| s.faults_fired += 1);
        let mut r = err(429, -1_003, "Too many requests; current limit is exceeded.");
        r.headers.push(("Retry-After".into(), retry_after_secs.to_string()));
        return with(r);
    }
    if let Some(OrderFault::Error500 { place: false }) = fault {
        shared.bump(|s| s.faults_fired += 1);
        return with(err(500, -1_000, "An unknown error occurred while processing the request."));
    }
    // Security.
    if api_key != Some(st.api_key.as_str()) {
        return with(err(401, -2_015, "Invalid API-key, IP, or permissions for action."));
    }
    if path.ends_with("/userDataStream") || path.ends_with("/listenKey") {
        // Listen keys need the API key only, no signature.
        return with(match method {
            "POST" => {
                let key = format!("{:016x}{:016x}", now_ms(), st.requests).repeat(2);
                st.listen_keys.push(key.clone());
                ok(format!(r#"{{"listenKey":"{key}"}}"#))
            }
            "PUT" | "DELETE" => {
                let given = parse_query(&format!("{query}&{body}")).unwrap_or_default();
                match given.iter().find(|(k, _)| k == "listenKey") {
                    Some((_, key)) if st.listen_keys.contains(key) => {
                        if method == "DELETE" {
                            st.listen_keys.retain(|k| k != key);
                        }
                        ok("{}".into())
                    }
                    // USD-M keeps the caller's key alive without naming it.
                    None if futures => ok("{}".into()),
                    _ => err(400, -1_125, "This listenKey does not exist."),
                }
            }
            _ => err(405, -1_000, "Method not allowed."),
        });
    }
    let (total, signature) = split_signature(query, body);
    let Some(signature) = signature else {
        return with(err(400, -1_102, "Mandatory parameter 'signature' was not sent, was empty/null, or malformed."));
    };
    if !verify_hmac_sha256_hex(st.secret.as_bytes(), total.as_bytes(), &signature) {
        return with(err(400, -1_022, "Signature for this request is not valid."));
    }
    let Some(params) = parse_query(&total) else {
        return with(err(400, -1_100, "Illegal characters found in a parameter."));
    };
    // Binance: a parameter in both the query and the body takes the query's value (the first).
    let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let Some(timestamp) = get("timestamp").and_then(|t| t.parse::<u64>().ok()) else {
        return with(err(400, -1_102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed."));
    };
    let recv_window = match get("recvWindow").map(str::parse::<u64>) {
        None => 5_000,
        Some(Ok(w)) if w <= 60_000 => w,
        Some(_) => return with(err(400, -1_131, "recvWindow must be less than 60000")),
    };
    let server = now_ms();
    if timestamp >= server + 1_000 {
        return with(err(400, -1_021, "Timestamp for this request was 1000ms ahead of the server's time."));
    }
    if server.saturating_sub(timestamp) > recv_window {
        return with(err(400, -1_021, "Timestamp for this request is outside of the recvWindow."));
    }
    if let Some(fault) = fault {
        shared.bump(|s| s.faults_fired += 1);
        let mut r = with(new_order_reply(shared, &mut st, &tops, &get, futures));
        match fault {
            OrderFault::Error500 { .. } => r = with(err(500, -1_000, "An unknown error occurred while processing the request.")),
            OrderFault::Delay(d) => r.delay += d,
            OrderFault::DropResponse => r.body = None,
            OrderFault::RateLimited { .. } => {}
        }
        return r;
    }
    let symbol = get("symbol").map(str::to_ascii_uppercase);
    let find = |st: &DeskState| -> Option<usize> {
        let symbol = symbol.as_deref()?;
        let by_client = get("origClientOrderId");
        let by_id = get("orderId").and_then(|i| i.parse::<u64>().ok());
        st.orders
            .iter()
            .position(|o| o.symbol == symbol && (by_client.is_some_and(|c| c == o.client_id) || by_id.is_some_and(|i| i == o.order_id)))
    };
    let reply = match (method, path) {
        ("POST", "/api/v3/order" | "/fapi/v1/order") => new_order_reply(shared, &mut st, &tops, &get, futures),
        ("GET", "/api/v3/order" | "/fapi/v1/order") => {
            match_resting(&mut st, &tops);
            match find(&st) {
                Some(i) => ok(order_json(&st.orders[i], futures, "QUERY", false)),
                None => err(400, -2_013, "Order does not exist."),
            }
        }
        ("DELETE", "/api/v3/order" | "/fapi/v1/order") => {
            match_resting(&mut st, &tops);
            match find(&st) {
                Some(i) if st.orders[i].is_open() => {
                    st.orders[i].status = "CANCELED";
                    st.orders[i].update_ms = now_ms();
                    ok(order_json(&st.orders[i], futures, "RESULT", true))
                }
                _ if futures => err(400, -2_011, "Unknown order sent."),
                _ => err(400, -2_011, "Unknown order sent."),
            }
        }
        ("GET", "/api/v3/openOrders" | "/fapi/v1/openOrders") => {
            match_resting(&mut st, &tops);
            let list: Vec<String> = st
                .orders
                .iter()
                .filter(|o| o.is_open() && symbol.as_deref().is_none_or(|s| s == o.symbol))
                .map(|o| order_json(o, futures, "QUERY", false))
                .collect();
            ok(format!("[{}]", list.join(",")))
        }
        ("DELETE", "/api/v3/openOrders" | "/fapi/v1/allOpenOrders") => {
            let Some(symbol) = symbol.as_deref() else {
                return with(err(400, -1_102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."));
            };
            match_resting(&mut st, &tops);
            let now = now_ms();
            let mut cancelled = Vec::new();
            for o in st.orders.iter_mut().filter(|o| o.is_open() && o.symbol == symbol) {
                o.status = "CANCELED";
                o.update_ms = now;
                cancelled.push(order_json(o, futures, "RESULT", true));
            }
            if futures {
                ok(r#"{"code":200,"msg":"The operation of cancel all open order is done."}"#.into())
            } else if cancelled.is_empty() {
                err(400, -2_011, "Unknown order sent.")
            } else {
                ok(format!("[{}]", cancelled.join(",")))
            }
        }
        ("GET", "/api/v3/account") => {
            let mut assets: Vec<(&String, &Quantity)> = st.balances.iter().collect();
            assets.sort();
            let list: Vec<String> =
                assets.iter().map(|(a, q)| format!(r#"{{"asset":"{a}","free":"{}","locked":"0.00000000"}}"#, fmt_qty(**q))).collect();
            ok(format!(
                r#"{{"makerCommission":0,"takerCommission":0,"canTrade":true,"canWithdraw":false,"canDeposit":false,"accountType":"SPOT","balances":[{}],"permissions":["SPOT"]}}"#,
                list.join(",")
            ))
        }
        ("GET", "/fapi/v3/account") => ok(
            r#"{"totalWalletBalance":"100000.00000000","availableBalance":"100000.00000000","assets":[{"asset":"USDT","walletBalance":"100000.00000000","availableBalance":"100000.00000000","initialMargin":"0.00000000"}],"positions":[]}"#
                .into(),
        ),
        ("GET", "/fapi/v3/positionRisk") => {
            let mut list: Vec<(&String, &Quantity)> = st.positions.iter().collect();
            list.sort();
            let items: Vec<String> = list
                .iter()
                .map(|(s, q)| {
                    format!(
                        r#"{{"symbol":"{s}","positionSide":"BOTH","positionAmt":"{}","entryPrice":"0.0","unRealizedProfit":"0.00000000"}}"#,
                        fmt_qty(**q)
                    )
                })
                .collect();
            ok(format!("[{}]", items.join(",")))
        }
        _ => err(404, -1, "Not found"),
    };
    with(reply)
}

fn new_order_reply<'a>(
    shared: &Shared,
    st: &mut DeskState,
    tops: &HashMap<String, [Option<(Price, Quantity)>; 2]>,
    get: &impl Fn(&str) -> Option<&'a str>,
    futures: bool,
) -> Reply {
    let mandatory = |name: &str| format!("Mandatory parameter '{name}' was not sent, was empty/null, or malformed.");
    let Some(symbol) = get("symbol").map(str::to_ascii_uppercase) else { return err(400, -1_102, &mandatory("symbol")) };
    if !shared.symbols.contains(&symbol) {
        return err(400, -1_121, "Invalid symbol.");
    }
    let side = match get("side") {
        Some(s @ ("BUY" | "SELL")) => s.to_string(),
        _ => return err(400, -1_102, &mandatory("side")),
    };
    let Some(order_type) = get("type").map(str::to_string) else { return err(400, -1_102, &mandatory("type")) };
    let valid_types: &[&str] = if futures { &["LIMIT", "MARKET"] } else { &["LIMIT", "MARKET", "LIMIT_MAKER"] };
    if !valid_types.contains(&order_type.as_str()) {
        return err(400, -1_116, "Invalid orderType.");
    }
    let tif = get("timeInForce").unwrap_or("").to_string();
    if order_type == "LIMIT" && !matches!(tif.as_str(), "GTC" | "IOC" | "FOK") && !(futures && tif == "GTX") {
        return err(400, -1_102, &mandatory("timeInForce"));
    }
    let Some(qty) = get("quantity").and_then(|q| Quantity::parse_unsigned(q).ok()) else {
        return err(400, -1_102, &mandatory("quantity"));
    };
    let price = match (order_type.as_str(), get("price").map(Price::parse)) {
        ("MARKET", _) => Price::ZERO,
        (_, Some(Ok(p))) if p.raw > 0 => p,
        _ => return err(400, -1_102, &mandatory("price")),
    };
    let reduce_only = futures && get("reduceOnly") == Some("true");
    let client_id = match get("newClientOrderId") {
        Some(c) if !c.is_empty() && c.len() <= 36 => c.to_string(),
        Some(_) => return err(400, -1_100, "Illegal characters found in parameter 'newClientOrderId'."),
        None => format!("x-local-{}", st.next_id),
    };
    if st.orders.iter().any(|o| o.client_id == client_id && o.symbol == symbol && o.is_open()) {
        return err(400, -2_010, "Duplicate order sent.");
    }
    // Filters.
    let (tick, lot, min_notional) = filters(shared, &symbol);
    let filter_error = |name: &str| {
        if futures {
            err(400, -4_014, &format!("Price not increased by tick size. ({name})"))
        } else {
            err(400, -1_013, &format!("Filter failure: {name}"))
        }
    };
    if order_type != "MARKET" && price.raw % tick.raw != 0 {
        return filter_error("PRICE_FILTER");
    }
    if qty.raw <= 0 || qty.raw % lot.raw != 0 {
        return if futures { err(400, -1_111, "Precision is over the maximum defined for this asset.") } else { filter_error("LOT_SIZE") };
    }
    let buy = side == "BUY";
    let top = tops.get(&symbol).copied().unwrap_or([None, None]);
    // The opposite side's best level.
    let opposite = top[usize::from(buy)];
    let ref_price = if order_type == "MARKET" { opposite.map_or(Price::ZERO, |(p, _)| p) } else { price };
    let order_notional = notional(ref_price, qty).unwrap_or(Money::ZERO);
    if !reduce_only && order_notional < min_notional && ref_price.raw > 0 {
        return if futures {
            err(400, -4_164, "Order's notional must be no smaller than 5 (unless you choose reduce only).")
        } else {
            filter_error("NOTIONAL")
        };
    }
    if reduce_only {
        let pos = st.positions.get(&symbol).copied().unwrap_or(Quantity::ZERO);
        let reduces = if buy { pos.raw < 0 && qty.raw <= -pos.raw } else { pos.raw > 0 && qty.raw <= pos.raw };
        if !reduces {
            return err(400, -2_022, "ReduceOnly Order is rejected.");
        }
    }
    if !futures {
        let (base, quote_asset) = split_symbol(&symbol);
        let (asset, need) = if buy { (quote_asset, Quantity::from_raw(order_notional.raw / 10)) } else { (base, qty) };
        if st.balances.get(asset).is_some_and(|free| *free < need) {
            return err(400, -2_010, "Account has insufficient balance for requested action.");
        }
    }
    let marketable = match (order_type.as_str(), opposite) {
        ("MARKET", Some(_)) => true,
        (_, Some((p, _))) => {
            if buy {
                price >= p
            } else {
                price <= p
            }
        }
        _ => false,
    };
    if order_type == "LIMIT_MAKER" && marketable {
        return err(400, -2_010, "Order would immediately match and take.");
    }
    let now = now_ms();
    let id = st.next_id;
    st.next_id += 1;
    st.orders.push(DeskOrder {
        symbol: symbol.clone(),
        order_id: id,
        client_id,
        side,
        order_type: order_type.clone(),
        tif: tif.clone(),
        price,
        qty,
        executed: Quantity::ZERO,
        cum_quote: Money::ZERO,
        status: "NEW",
        reduce_only,
        fills: Vec::new(),
        makers: Vec::new(),
        futures,
        time_ms: now,
        update_ms: now,
    });
    let idx = st.orders.len() - 1;
    let post_only_takes = tif == "GTX" && marketable;
    let fok_short = tif == "FOK" && opposite.is_none_or(|(_, size)| size < qty);
    if marketable && !post_only_takes && !fok_short {
        if let Some((p, size)) = opposite {
            fill(st, idx, p, qty.min(size), false);
        }
    }
    let o = &mut st.orders[idx];
    if o.is_open() && (order_type == "MARKET" || matches!(tif.as_str(), "IOC" | "FOK") || post_only_takes) {
        o.status = "EXPIRED";
    }
    let resp_type = get("newOrderRespType").unwrap_or(if futures { "RESULT" } else { "FULL" });
    ok(order_json(o, futures, resp_type, false))
}

/// True when `target` is `/ws/<listenKey>` for a key the desk handed out.
pub(super) fn is_user_stream(shared: &Shared, target: &str) -> bool {
    let key = target.strip_prefix("/ws/").unwrap_or("");
    !key.is_empty() && lock(&shared.desk.state).listen_keys.iter().any(|k| k == key)
}

/// Streams the desk's order changes to one listen-key connection until it closes.
pub(super) async fn user_session(
    mut ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    shared: &Shared,
    mut shutdown: tokio::sync::broadcast::Receiver<()>,
) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut events = shared.desk.events.subscribe();
    loop {
        tokio::select! {
            _ = shutdown.recv() => {
                let _ = ws.close(None).await;
                break;
            }
            e = events.recv() => match e {
                Ok(text) => {
                    if ws.send(Message::text(text.to_string())).await.is_err() {
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            msg = ws.next() => match msg {
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
}

/// Sends a user-data event for every order change not yet sent: `NEW` for a new order,
/// `TRADE` per fill, then `CANCELED` / `EXPIRED`.
fn publish_changes(shared: &Shared) {
    let futures = shared.config.market == BinanceMarket::UsdM;
    let mut st = lock(&shared.desk.state);
    let mut out: Vec<String> = Vec::new();
    let mut bybit: Vec<(&'static str, String)> = Vec::new();
    let DeskState { orders, emitted, .. } = &mut *st;
    for o in orders.iter() {
        let (mut status, mut sent_fills, new) = match emitted.get(&o.order_id) {
            Some(&(s, f)) => (s, f, false),
            None => ("NEW", 0, true),
        };
        if !new && status == o.status && sent_fills == o.fills.len() {
            continue;
        }
        bybit.extend(bybit_private_messages(o, futures, sent_fills));
        if new {
            out.push(user_event(o, futures, "NEW", "NEW", None, sent_fills));
        }
        while sent_fills < o.fills.len() {
            sent_fills += 1;
            let last = sent_fills == o.fills.len();
            let x_status = if last && o.status == "FILLED" { "FILLED" } else { "PARTIALLY_FILLED" };
            out.push(user_event(o, futures, "TRADE", x_status, Some(o.fills[sent_fills - 1]), sent_fills));
        }
        if matches!(o.status, "CANCELED" | "EXPIRED") && status != o.status {
            out.push(user_event(o, futures, o.status, o.status, None, sent_fills));
        }
        status = o.status;
        emitted.insert(o.order_id, (status, sent_fills));
    }
    drop(st);
    for e in out {
        // Nobody listening is fine: the events are for whoever is.
        let _ = shared.desk.events.send(e.into());
    }
    for (topic, e) in bybit {
        let _ = shared.desk.bybit_events.send((topic, e.into()));
    }
}

/// Bybit v5 private-stream messages for an order change: one `execution` per fill not yet
/// sent (fills from `sent_fills` on), then the order's cumulative state on `order`.
fn bybit_private_messages(o: &DeskOrder, futures: bool, sent_fills: usize) -> Vec<(&'static str, String)> {
    let now = now_ms();
    let category = if futures { "linear" } else { "spot" };
    let side = if o.side == "BUY" { "Buy" } else { "Sell" };
    let mut out = Vec::new();
    let mut done = o.fills[..sent_fills.min(o.fills.len())].iter().fold(Quantity::ZERO, |a, (_, q)| a + *q);
    for (n, (price, qty)) in o.fills.iter().enumerate().skip(sent_fills) {
        let maker = o.makers.get(n).copied().unwrap_or(false);
        let fee = fill_fee(*price, *qty, maker);
        done += *qty;
        out.push((
            "execution",
            format!(
                r#"{{"id":"{id}-exec-{n}","topic":"execution","creationTime":{now},"data":[{{"category":"{category}","symbol":"{}","orderId":"{id}","orderLinkId":"{}","side":"{side}","execId":"{id}-{n}","execType":"Trade","execPrice":"{}","execQty":"{}","execValue":"{}","execFee":"{}","feeRate":"{}","feeCurrency":"USDT","execTime":"{now}","isMaker":{maker},"orderPrice":"{}","orderQty":"{}","leavesQty":"{}","seq":{}}}]}}"#,
                o.symbol,
                o.client_id,
                fmt_price(*price),
                fmt_qty(*qty),
                fmt_money(notional(*price, *qty).unwrap_or(Money::ZERO)),
                fmt_money(fee),
                if maker { "0.0002" } else { "0.00055" },
                fmt_price(o.price),
                fmt_qty(o.qty),
                fmt_qty(Quantity::from_raw((o.qty.raw - done.raw).max(0))),
                o.order_id * 1_000 + n as u64,
                id = o.order_id,
            ),
        ));
    }
    let order = bybit_order_json(o);
    out.push((
        "order",
        format!(
            r#"{{"id":"{}-order-{}","topic":"order","creationTime":{now},"data":[{{"category":"{category}",{}]}}"#,
            o.order_id,
            o.fills.len(),
            order.strip_prefix('{').unwrap_or(&order)
        ),
    ));
    out
}

/// One `executionReport` / `ORDER_TRADE_UPDATE` with the order's state after `fills` fills.
fn user_event(o: &DeskOrder, futures: bool, exec: &str, status: &str, last: Option<(Price, Quantity)>, fills: usize) -> String {
    let now = now_ms();
    let (cum_qty, cum_quote) =
        o.fills[..fills].iter().fold((Quantity::ZERO, Money::ZERO), |(q, m), (p, x)| (q + *x, m + notional(*p, *x).unwrap_or(Money::ZERO)));
    let (last_px, last_qty) = last.unwrap_or((Price::ZERO, Quantity::ZERO));
    let trade_id = if last.is_some() { (o.order_id * 100 + fills as u64) as i64 } else { -1 };
    let tif = if o.tif.is_empty() { "GTC" } else { &o.tif };
    if futures {
        let avg = if cum_qty.raw > 0 {
            Price::from_raw((i128::from(cum_quote.raw) * i128::from(Quantity::SCALE) / i128::from(cum_qty.raw)) as i64)
        } else {
            Price::ZERO
        };
        return format!(
            r#"{{"e":"ORDER_TRADE_UPDATE","E":{now},"T":{now},"o":{{"s":"{}","c":"{}","S":"{}","o":"{}","f":"{tif}","q":"{}","p":"{}","ap":"{}","sp":"0","x":"{exec}","X":"{status}","i":{},"l":"{}","z":"{}","L":"{}","N":"USDT","n":"0","T":{now},"t":{trade_id},"b":"0","a":"0","m":false,"R":{},"wt":"CONTRACT_PRICE","ot":"{}","ps":"BOTH","cp":false,"rp":"0","pP":false,"si":0,"ss":0,"V":"NONE","pm":"NONE","gtd":0}}}}"#,
            o.symbol,
            o.client_id,
            o.side,
            o.order_type,
            fmt_qty(o.qty),
            fmt_price(o.price),
            fmt_price(avg),
            o.order_id,
            fmt_qty(last_qty),
            fmt_qty(cum_qty),
            fmt_price(last_px),
            o.reduce_only,
            o.order_type
        );
    }
    // A cancel's report names the cancel request in `c` and the order in `C`.
    let (c, orig) = if exec == "CANCELED" { (format!("cancel{}", o.order_id), o.client_id.as_str()) } else { (o.client_id.clone(), "") };
    format!(
        r#"{{"e":"executionReport","E":{now},"s":"{}","c":"{c}","S":"{}","o":"{}","f":"{tif}","q":"{}","p":"{}","P":"0.00000000","F":"0.00000000","g":-1,"C":"{orig}","x":"{exec}","X":"{status}","r":"NONE","i":{},"l":"{}","z":"{}","L":"{}","n":"0","N":null,"T":{now},"t":{trade_id},"I":0,"w":{},"m":false,"M":false,"O":{},"Z":"{}","Y":"{}","Q":"0.00000000","W":{},"V":"NONE"}}"#,
        o.symbol,
        o.side,
        o.order_type,
        fmt_qty(o.qty),
        fmt_price(o.price),
        o.order_id,
        fmt_qty(last_qty),
        fmt_qty(cum_qty),
        fmt_price(last_px),
        matches!(status, "NEW" | "PARTIALLY_FILLED"),
        o.time_ms,
        fmt_money(cum_quote),
        fmt_money(notional(last_px, last_qty).unwrap_or(Money::ZERO)),
        o.time_ms
    )
}

/// Bybit's signature headers of a request.
#[derive(Debug)]
struct BybitAuth {
    api_key: Option<String>,
    timestamp: Option<u64>,
    recv_window: Option<u64>,
    sign: Option<String>,
}

fn bybit_ok(result: &str) -> Reply {
    ok(format!(r#"{{"retCode":0,"retMsg":"OK","result":{result},"retExtInfo":{{}},"time":{}}}"#, now_ms()))
}

fn bybit_err(code: i64, msg: &str) -> Reply {
    let msg = msg.replace('"', "'");
    ok(format!(r#"{{"retCode":{code},"retMsg":"{msg}","result":{{}},"retExtInfo":{{}},"time":{}}}"#, now_ms()))
}

fn bybit_status(o: &DeskOrder) -> &'static str {
    match o.status {
        "NEW" => "New",
        "PARTIALLY_FILLED" => "PartiallyFilled",
        "FILLED" => "Filled",
        _ if o.executed.raw > 0 => "PartiallyFilledCanceled",
        _ => "Cancelled",
    }
}

fn bybit_order_json(o: &DeskOrder) -> String {
    let avg = if o.executed.raw > 0 {
        Price::from_raw((i128::from(o.cum_quote.raw) * i128::from(Quantity::SCALE) / i128::from(o.executed.raw)) as i64)
    } else {
        Price::ZERO
    };
    let tif = match o.tif.as_str() {
        "GTX" => "PostOnly",
        "" => "GTC",
        t => t,
    };
    format!(
        r#"{{"orderId":"{}","orderLinkId":"{}","symbol":"{}","price":"{}","qty":"{}","side":"{}","orderStatus":"{}","avgPrice":"{}","cumExecQty":"{}","cumExecValue":"{}","cumExecFee":"{}","timeInForce":"{tif}","orderType":"{}","reduceOnly":{},"createdTime":"{}","updatedTime":"{}"}}"#,
        o.order_id,
        o.client_id,
        o.symbol,
        fmt_price(o.price),
        fmt_qty(o.qty),
        if o.side == "BUY" { "Buy" } else { "Sell" },
        bybit_status(o),
        fmt_price(avg),
        fmt_qty(o.executed),
        fmt_money(o.cum_quote),
        fmt_money(o.fills.iter().zip(&o.makers).fold(Money::ZERO, |a, ((p, q), m)| a + fill_fee(*p, *q, *m))),
        if o.order_type == "MARKET" { "Market" } else { "Limit" },
        o.reduce_only,
        o.time_ms,
        o.update_ms
    )
}

/// Binance-style refusal code of the shared order logic → Bybit's `retCode`.
fn bybit_code(binance: i64, msg: &str) -> i64 {
    match binance {
        -2010 if msg.contains("Duplicate") => 110_072,
        -2010 => 110_007,
        -2022 => 110_017,
        -4164 | -1013 => 110_094,
        -4014 | -1111 => 170_134,
        _ => 10_001,
    }
}

/// Bybit v5 over the same desk: its orders, book and filters (every category behaves like a
/// linear contract here: positions, post-only cancelled when it would take, no balances).
fn handle_bybit(shared: &Arc<Shared>, method: &str, target: &str, body: &str, auth: &BybitAuth) -> Reply {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path == "/v5/market/time" {
        let ns = sapphire_core::latency::unix_nanos();
        return bybit_ok(&format!(r#"{{"timeSecond":"{}","timeNano":"{ns}"}}"#, ns / 1_000_000_000));
    }
    let tops = tops(shared);
    let mut st = lock(&shared.desk.state);
    st.requests += 1;
    let latency = st.latency;
    let with = |mut r: Reply| {
        r.delay += latency;
        r.headers.push(("X-Bapi-Limit-Status".into(), "99".into()));
        r.headers.push(("X-Bapi-Limit".into(), "100".into()));
        r.headers.push(("X-Bapi-Limit-Reset-Timestamp".into(), (now_ms() + 1_000).to_string()));
        r
    };
    let create = method == "POST" && path == "/v5/order/create";
    let fault = if create { st.faults.pop_front() } else { None };
    match fault {
        Some(OrderFault::RateLimited { retry_after_secs }) => {
            shared.bump(|s| s.faults_fired += 1);
            let mut r = with(bybit_err(10_006, "Too many visits!"));
            r.status = 429;
            r.headers.retain(|(k, _)| k != "X-Bapi-Limit-Status" && k != "X-Bapi-Limit-Reset-Timestamp");
            r.headers.push(("X-Bapi-Limit-Status".into(), "0".into()));
            r.headers.push(("X-Bapi-Limit-Reset-Timestamp".into(), (now_ms() + retry_after_secs * 1_000).to_string()));
            return r;
        }
        Some(OrderFault::Error500 { place: false }) => {
            shared.bump(|s| s.faults_fired += 1);
            return with(Reply { status: 500, body: Some("Internal Server Error".into()), headers: Vec::new(), delay: Duration::ZERO });
        }
        _ => {}
    }
    if auth.api_key.as_deref() != Some(st.api_key.as_str()) {
        return with(bybit_err(10_003, "API key is invalid."));
    }
    let (Some(ts), Some(sign)) = (auth.timestamp, auth.sign.as_deref()) else {
        return with(bybit_err(10_004, "missing X-BAPI-TIMESTAMP or X-BAPI-SIGN"));
    };
    let recv_window = auth.recv_window.unwrap_or(5_000);
    let server = now_ms();
    if ts >= server + 1_000 || server.saturating_sub(ts) > recv_window {
        return with(bybit_err(
            10_002,
            &format!("invalid request, please check your server timestamp or recv_window param. req_timestamp[{ts}],server_timestamp[{server}],recv_window[{recv_window}]"),
        ));
    }
    let payload = if method == "GET" { query } else { body };
    let signed = format!("{ts}{}{recv_window}{payload}", st.api_key);
    if !verify_hmac_sha256_hex(st.secret.as_bytes(), signed.as_bytes(), sign) {
        return with(bybit_err(10_004, &format!("error sign! origin_string[{signed}]")));
    }
    let params: Vec<(String, String)> = if method == "GET" {
        parse_query(query).unwrap_or_default()
    } else {
        match serde_json::from_str::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(m)) => m
                .into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        match v {
                            serde_json::Value::String(s) => s,
                            other => other.to_string(),
                        },
                    )
                })
                .collect(),
            _ => return with(bybit_err(10_001, "params error: body is not a JSON object")),
        }
    };
    let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let symbol = get("symbol").map(str::to_ascii_uppercase);
    let find = |st: &DeskState| -> Option<usize> {
        let link = get("orderLinkId");
        let id = get("orderId").and_then(|i| i.parse::<u64>().ok());
        st.orders.iter().position(|o| {
            symbol.as_deref().is_none_or(|s| s == o.symbol)
                && (link.is_some_and(|c| c == o.client_id) || id.is_some_and(|i| i == o.order_id))
        })
    };
    let reply = match (method, path) {
        ("POST", "/v5/order/create") => {
            let side = match get("side") {
                Some("Buy") => "BUY",
                Some("Sell") => "SELL",
                _ => "",
            };
            let (order_type, tif) = match (get("orderType"), get("timeInForce").unwrap_or("GTC")) {
                (Some("Market"), _) => ("MARKET", ""),
                (Some("Limit"), "PostOnly") => ("LIMIT", "GTX"),
                (Some("Limit"), t) => ("LIMIT", t),
                _ => ("", ""),
            };
            let translated: Vec<(&str, Option<&str>)> = vec![
                ("symbol", get("symbol")),
                ("side", Some(side)),
                ("type", Some(order_type)),
                ("timeInForce", Some(tif).filter(|t| !t.is_empty())),
                ("quantity", get("qty")),
                ("price", get("price")),
                ("newClientOrderId", get("orderLinkId")),
                ("reduceOnly", get("reduceOnly")),
            ];
            let lookup = |name: &str| translated.iter().find(|(k, _)| *k == name).and_then(|(_, v)| *v);
            let r = new_order_reply(shared, &mut st, &tops, &lookup, true);
            let v: serde_json::Value = serde_json::from_str(r.body.as_deref().unwrap_or("{}")).unwrap_or_default();
            let mut out = if r.status == 200 {
                bybit_ok(&format!(
                    r#"{{"orderId":"{}","orderLinkId":"{}"}}"#,
                    v.get("orderId").map(|i| i.to_string()).unwrap_or_default(),
                    v.get("clientOrderId").and_then(|c| c.as_str()).unwrap_or("")
                ))
            } else {
                let code = v.get("code").and_then(serde_json::Value::as_i64).unwrap_or(0);
                let msg = v.get("msg").and_then(|m| m.as_str()).unwrap_or("");
                bybit_err(bybit_code(code, msg), msg)
            };
            if let Some(fault) = fault {
                shared.bump(|s| s.faults_fired += 1);
                match fault {
                    OrderFault::Error500 { .. } => {
                        out = Reply { status: 500, body: Some("Internal Server Error".into()), headers: Vec::new(), delay: Duration::ZERO }
                    }
                    OrderFault::Delay(d) => out.delay += d,
                    OrderFault::DropResponse => out.body = None,
                    OrderFault::RateLimited { .. } => {}
                }
            }
            out
        }
        ("POST", "/v5/order/cancel") => {
            match_resting(&mut st, &tops);
            match find(&st) {
                Some(i) if st.orders[i].is_open() => {
                    st.orders[i].status = "CANCELED";
                    st.orders[i].update_ms = now_ms();
                    let o = &st.orders[i];
                    bybit_ok(&format!(r#"{{"orderId":"{}","orderLinkId":"{}"}}"#, o.order_id, o.client_id))
                }
                _ => bybit_err(110_001, "order not exists or too late to cancel"),
            }
        }
        ("POST", "/v5/order/cancel-all") => {
            match_resting(&mut st, &tops);
            let now = now_ms();
            let mut list = Vec::new();
            for o in st.orders.iter_mut().filter(|o| o.is_open() && symbol.as_deref().is_none_or(|s| s == o.symbol)) {
                o.status = "CANCELED";
                o.update_ms = now;
                list.push(format!(r#"{{"orderId":"{}","orderLinkId":"{}"}}"#, o.order_id, o.client_id));
            }
            bybit_ok(&format!(r#"{{"list":[{}],"success":"1"}}"#, list.join(",")))
        }
        ("GET", "/v5/order/realtime") => {
            match_resting(&mut st, &tops);
            let list: Vec<String> = if get("orderLinkId").is_some() || get("orderId").is_some() {
                find(&st).map(|i| bybit_order_json(&st.orders[i])).into_iter().collect()
            } else {
                st.orders.iter().filter(|o| o.is_open() && symbol.as_deref().is_none_or(|s| s == o.symbol)).map(bybit_order_json).collect()
            };
            bybit_ok(&format!(r#"{{"list":[{}],"nextPageCursor":"","category":"{}"}}"#, list.join(","), get("category").unwrap_or("")))
        }
        ("GET", "/v5/position/list") => {
            let mut list: Vec<(&String, &Quantity)> = st.positions.iter().collect();
            list.sort();
            let items: Vec<String> = list
                .iter()
                .filter(|(s, _)| symbol.as_deref().is_none_or(|x| x == s.as_str()))
                // `settleCoin` lists the contracts settled in it (here: the quote suffix).
                .filter(|(s, _)| get("settleCoin").is_none_or(|c| s.ends_with(c)))
                .map(|(s, q)| {
                    let side = match q.raw {
                        0 => "",
                        r if r > 0 => "Buy",
                        _ => "Sell",
                    };
                    // The mark: the replayed book's mid, when it has both sides.
                    let mark = match tops.get(s.as_str()) {
                        Some([Some((b, _)), Some((a, _))]) => Price::from_raw((b.raw + a.raw) / 2),
                        _ => Price::ZERO,
                    };
                    format!(
                        r#"{{"positionIdx":0,"symbol":"{s}","side":"{side}","size":"{}","avgPrice":"0","markPrice":"{}","unrealisedPnl":"0"}}"#,
                        fmt_qty(q.abs()),
                        fmt_price(mark)
                    )
                })
                .collect();
            bybit_ok(&format!(r#"{{"list":[{}],"category":"linear"}}"#, items.join(",")))
        }
        ("GET", "/v5/account/wallet-balance") => {
            bybit_ok(r#"{"list":[{"accountType":"UNIFIED","coin":[{"coin":"USDT","walletBalance":"100000","locked":"0"}]}]}"#)
        }
        _ => bybit_err(10_001, "unknown path or method"),
    };
    with(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_signature_from_total_params() {
        let (t, s) = split_signature("symbol=X&timestamp=1", "side=BUY&signature=ab");
        assert_eq!(t, "symbol=X&timestamp=1side=BUY");
        assert_eq!(s.as_deref(), Some("ab"));
        let (t, s) = split_signature("a=1&signature=cd", "");
        assert_eq!((t.as_str(), s.as_deref()), ("a=1", Some("cd")));
        assert_eq!(split_signature("a=1", "").1, None);
    }

    #[test]
    fn interval_names() {
        assert_eq!(interval_name(Duration::from_secs(60)), "1M");
        assert_eq!(interval_name(Duration::from_secs(10)), "10S");
        assert_eq!(interval_name(Duration::from_secs(86_400)), "1D");
        assert_eq!(split_symbol("BTCUSDT"), ("BTC", "USDT"));
    }
}
