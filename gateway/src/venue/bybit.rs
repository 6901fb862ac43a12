//! Bybit v5 order REST: `/v5/order/create`, `cancel`, `cancel-all`, `realtime`,
//! `/v5/position/list`, `/v5/account/wallet-balance`.
//!
//! Signing: `X-BAPI-SIGN` = HMAC-SHA256 of `timestamp + apiKey + recvWindow + payload`, the
//! payload being the query string of a GET or the JSON body of a POST, byte for byte as sent.
//! Bybit answers HTTP 200 with `retCode` ≠ 0 for refusals; `X-Bapi-Limit-Status` (requests
//! left in the window) and `X-Bapi-Limit-Reset-Timestamp` drive the client's slowdown.
//!
//! The private WebSocket (`/v5/private`, [`run_private_stream`]) pushes fills and order
//! updates instead of waiting for the next poll: `{"op":"auth","args":[apiKey, expires,
//! signature]}` with `signature` = hex HMAC-SHA256 of `GET/realtime{expires}`, then `order`,
//! `execution` and `position` subscribed, `{"op":"ping"}` every 20 s. Each `execution` element
//! is one fill (`execPrice`, `execQty`, `execFee` in the settle coin — `feeCurrency` on spot —,
//! `isMaker`, `execId`); Bybit sends it before the `order` element, the order's cumulative
//! state (as `/v5/order/realtime` answers it). The [`super::OrderGateway`] reports executions
//! as fills with their fees and counts them into the order's reported quantity, so the
//! cumulative update that follows (or a poll) reports only what no execution covered: a fill
//! never counts twice. Every (re)connect sends [`UserUpdate::Reconnected`] (the gateway
//! queries its working orders, covering whatever was missed while the stream was down), every
//! loss [`UserUpdate::Disconnected`] (the gateway polls while the stream is down).

use super::credentials::Credentials;
use super::errors::{bybit_reason, VenueError};
use super::sign::{bybit_signature, Query};
use super::{now_ms, ExecutionVenue, OrderRequest, VenueOrder, VenueOrderStatus, VenueOrderType, VenueTif};
use crate::bybit::BybitCategory;
use sapphire_core::event::Side;
use sapphire_core::fixed::{Money, Price, Quantity};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const VENUE: &str = "bybit";

/// Production REST base.
pub const BYBIT_URL: &str = "https://api.bybit.com";

/// How the client talks to Bybit.
#[derive(Debug, Clone)]
pub struct BybitExecutionConfig {
    /// REST base URL.
    pub base_url: String,
    /// `spot` or `linear`.
    pub category: BybitCategory,
    /// `X-BAPI-RECV-WINDOW`, ms.
    pub recv_window_ms: u64,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Wait when a limit is hit without a reset time.
    pub default_retry_after: Duration,
}

impl BybitExecutionConfig {
    /// Defaults: 5 s recvWindow and timeout.
    pub fn new(category: BybitCategory, base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_string(),
            category,
            recv_window_ms: 5_000,
            timeout: Duration::from_secs(5),
            default_retry_after: Duration::from_secs(1),
        }
    }
}

/// A Bybit execution client.
#[derive(Debug)]
pub struct BybitExecution {
    http: reqwest::Client,
    config: BybitExecutionConfig,
    credentials: Credentials,
    offset_ms: AtomicI64,
    /// (requests left in the window, server ms when it resets).
    limit: Mutex<(Option<u64>, u64)>,
    /// Requests sent.
    pub requests: AtomicU64,
}

/// The headers of a signed Bybit request, in order: key, timestamp, recv window, signature.
pub fn signed_headers(creds: &Credentials, timestamp_ms: u64, recv_window_ms: u64, payload: &str) -> [(&'static str, String); 5] {
    let sign = bybit_signature(creds.secret.expose(), timestamp_ms, &creds.api_key, recv_window_ms, payload);
    [
        ("X-BAPI-API-KEY", creds.api_key.clone()),
        ("X-BAPI-TIMESTAMP", timestamp_ms.to_string()),
        ("X-BAPI-RECV-WINDOW", recv_window_ms.to_string()),
        ("X-BAPI-SIGN", sign),
        ("X-BAPI-SIGN-TYPE", "2".to_string()),
    ]
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
    r.map_err(|e| VenueError::Decode { venue: VENUE, reason: format!("{what}: {e:?}") })
}

/// Parses `/v5/position/list`'s `result.list` (signed sizes: `side` `Sell` is short).
pub fn parse_positions(v: &Value) -> Result<Vec<super::binance::Position>, VenueError> {
    let mut out = Vec::new();
    for p in v.pointer("/result/list").and_then(Value::as_array).into_iter().flatten() {
        let size = decode("size", Quantity::parse(&num(p, "size")))?;
        out.push(super::binance::Position {
            symbol: text_of(p, "symbol"),
            qty: if text_of(p, "side") == "Sell" { -size } else { size },
            entry_price: decode("avgPrice", Price::parse(&num(p, "avgPrice")))?,
            unrealized_pnl: decode("unrealisedPnl", Money::parse(&num(p, "unrealisedPnl")))?,
            mark_price: decode("markPrice", Price::parse(&num(p, "markPrice")))?,
        });
    }
    Ok(out)
}

/// Parses one order of `/v5/order/realtime`'s `result.list`.
pub fn parse_order(v: &Value) -> Result<VenueOrder, VenueError> {
    let st = text_of(v, "orderStatus");
    let status = VenueOrderStatus::parse_bybit(&st)
        .ok_or_else(|| VenueError::Decode { venue: VENUE, reason: format!("unknown orderStatus {st:?}") })?;
    Ok(VenueOrder {
        symbol: text_of(v, "symbol"),
        client_id: text_of(v, "orderLinkId"),
        venue_id: text_of(v, "orderId"),
        status,
        side: if text_of(v, "side") == "Sell" { Side::Sell } else { Side::Buy },
        price: decode("price", Price::parse(&num(v, "price")))?,
        qty: decode("qty", Quantity::parse_unsigned(&num(v, "qty")))?,
        executed: decode("cumExecQty", Quantity::parse_unsigned(&num(v, "cumExecQty")))?,
        cum_quote: decode("cumExecValue", Money::parse(&num(v, "cumExecValue")))?,
        fills: Vec::new(),
        update_ms: text_of(v, "updatedTime").parse().unwrap_or(0),
    })
}

impl BybitExecution {
    /// A client.
    pub fn new(config: BybitExecutionConfig, credentials: Credentials) -> Result<Self, VenueError> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(50))
            .pool_max_idle_per_host(8)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .timeout(config.timeout)
            .user_agent("sapphire")
            .build()
            .map_err(|e| VenueError::NotSent { venue: VENUE, reason: format!("building the HTTP client: {e}") })?;
        Ok(Self { http, config, credentials, offset_ms: AtomicI64::new(0), limit: Mutex::new((None, 0)), requests: AtomicU64::new(0) })
    }

    fn server_now_ms(&self) -> u64 {
        (now_ms() as i64 + self.offset_ms.load(Ordering::Relaxed)).max(0) as u64
    }

    /// Measures the server-time offset (`GET /v5/market/time`).
    pub async fn measure_time_offset(&self) -> Result<i64, VenueError> {
        let before = now_ms();
        let v = self.call(reqwest::Method::GET, "/v5/market/time", String::new(), false).await?;
        let after = now_ms();
        let server = v.get("time").and_then(Value::as_u64).ok_or_else(|| VenueError::Decode { venue: VENUE, reason: "no time".into() })?;
        let offset = server as i64 - ((before + after) / 2) as i64;
        self.offset_ms.store(offset, Ordering::Relaxed);
        Ok(offset)
    }

    /// The JSON body of a new order (the signed payload of `/v5/order/create`).
    pub fn order_body(&self, req: &OrderRequest) -> String {
        let tif = match req.tif {
            VenueTif::Gtc => "GTC",
            VenueTif::Ioc => "IOC",
            VenueTif::Fok => "FOK",
            VenueTif::PostOnly => "PostOnly",
        };
        let mut body = json!({
            "category": self.config.category.as_str(),
            "symbol": req.symbol,
            "side": if req.side == Side::Buy { "Buy" } else { "Sell" },
            "orderType": if req.order_type == VenueOrderType::Limit { "Limit" } else { "Market" },
            "qty": req.qty,
            "orderLinkId": req.client_id,
        });
        if req.order_type == VenueOrderType::Limit {
            body["price"] = json!(req.price.clone().unwrap_or_default());
            body["timeInForce"] = json!(tif);
        }
        if req.reduce_only && self.config.category == BybitCategory::Linear {
            body["reduceOnly"] = json!(true);
        }
        body.to_string()
    }

    /// Sends a signed request: `payload` is the query (GET) or JSON body (POST).
    async fn call(&self, method: reqwest::Method, path: &str, payload: String, signed: bool) -> Result<Value, VenueError> {
        loop {
            let wait = {
                let l = self.limit.lock().unwrap_or_else(|p| p.into_inner());
                let now = self.server_now_ms();
                match *l {
                    (Some(0), reset) if reset > now => reset - now,
                    _ => 0,
                }
            };
            if wait == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(wait)).await;
            self.limit.lock().unwrap_or_else(|p| p.into_inner()).0 = None;
        }
        let is_get = method == reqwest::Method::GET;
        let url = if is_get && !payload.is_empty() {
            format!("{}{}?{}", self.config.base_url, path, payload)
        } else {
            format!("{}{}", self.config.base_url, path)
        };
        let mut req = self.http.request(method, url);
        if signed {
            for (name, value) in signed_headers(&self.credentials, self.server_now_ms(), self.config.recv_window_ms, &payload) {
                req = req.header(name, value);
            }
        }
        if !is_get {
            req = req.header("Content-Type", "application/json").body(payload);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() || e.is_builder() {
                VenueError::NotSent { venue: VENUE, reason: e.to_string() }
            } else {
                VenueError::Unknown { venue: VENUE, reason: e.to_string() }
            }
        })?;
        let status = resp.status().as_u16();
        let header = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let (left, reset) = (header("x-bapi-limit-status"), header("x-bapi-limit-reset-timestamp"));
        if left.is_some() {
            *self.limit.lock().unwrap_or_else(|p| p.into_inner()) = (left, reset.unwrap_or(0));
        }
        let body = resp.bytes().await.map_err(|e| VenueError::Unknown { venue: VENUE, reason: format!("reading the answer: {e}") })?;
        if status == 429 || status == 403 {
            let retry_after =
                reset.map_or(self.config.default_retry_after, |r| Duration::from_millis(r.saturating_sub(self.server_now_ms())));
            *self.limit.lock().unwrap_or_else(|p| p.into_inner()) = (Some(0), self.server_now_ms() + retry_after.as_millis() as u64);
            return Err(VenueError::RateLimited { venue: VENUE, status, retry_after });
        }
        if status >= 500 {
            return Err(VenueError::Unknown { venue: VENUE, reason: format!("HTTP {status}") });
        }
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| VenueError::Decode { venue: VENUE, reason: format!("HTTP {status}: not JSON: {e}") })?;
        let code = v.get("retCode").and_then(Value::as_i64).unwrap_or(if status == 200 { 0 } else { -1 });
        if code != 0 {
            let msg = text_of(&v, "retMsg");
            return Err(VenueError::Refused { venue: VENUE, code, msg, reason: bybit_reason(code), status });
        }
        Ok(v)
    }

    /// Positions of the category (`/v5/position/list`), of one symbol or all settled in USDT.
    pub async fn positions(&self, symbol: Option<&str>) -> Result<Vec<super::binance::Position>, VenueError> {
        let mut q = Query::new();
        q.push("category", self.config.category.as_str());
        match symbol {
            Some(s) => q.push("symbol", s),
            None => q.push("settleCoin", "USDT"),
        };
        let v = self.call(reqwest::Method::GET, "/v5/position/list", q.as_str().to_string(), true).await?;
        parse_positions(&v)
    }

    /// Every position of the category settled in `coin`, page by page (`limit=200`, then
    /// `cursor` while `nextPageCursor` is given; at most 50 pages).
    pub async fn positions_settled_in(&self, coin: &str) -> Result<Vec<super::binance::Position>, VenueError> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        for _ in 0..50 {
            let mut q = Query::new();
            q.push("category", self.config.category.as_str()).push("settleCoin", coin).push("limit", 200);
            if !cursor.is_empty() {
                q.push("cursor", &cursor);
            }
            let v = self.call(reqwest::Method::GET, "/v5/position/list", q.as_str().to_string(), true).await?;
            out.extend(parse_positions(&v)?);
            cursor = v.pointer("/result/nextPageCursor").and_then(Value::as_str).unwrap_or("").to_string();
            if cursor.is_empty() {
                break;
            }
        }
        Ok(out)
    }

    /// Coin balances of the unified account (`/v5/account/wallet-balance`).
    pub async fn balances(&self) -> Result<Vec<super::binance::Balance>, VenueError> {
        let v = self.call(reqwest::Method::GET, "/v5/account/wallet-balance", "accountType=UNIFIED".into(), true).await?;
        let mut out = Vec::new();
        for account in v.pointer("/result/list").and_then(Value::as_array).into_iter().flatten() {
            for c in account.get("coin").and_then(Value::as_array).into_iter().flatten() {
                let wallet = decode("walletBalance", Quantity::parse(&num(c, "walletBalance")))?;
                let locked = decode("locked", Quantity::parse(&num(c, "locked")))?;
                out.push(super::binance::Balance { asset: text_of(c, "coin"), free: wallet - locked, locked });
            }
        }
        Ok(out)
    }
}

impl ExecutionVenue for BybitExecution {
    fn name(&self) -> &'static str {
        VENUE
    }

    async fn place(&self, req: &OrderRequest) -> Result<VenueOrder, VenueError> {
        let v = self.call(reqwest::Method::POST, "/v5/order/create", self.order_body(req), true).await?;
        // Bybit acknowledges with ids only: the order is accepted and working.
        Ok(VenueOrder {
            symbol: req.symbol.clone(),
            client_id: req.client_id.clone(),
            venue_id: v.pointer("/result/orderId").and_then(Value::as_str).unwrap_or("").to_string(),
            status: VenueOrderStatus::New,
            side: req.side,
            price: req.price.as_deref().and_then(|p| Price::parse(p).ok()).unwrap_or(Price::ZERO),
            qty: Quantity::parse_unsigned(&req.qty).unwrap_or(Quantity::ZERO),
            executed: Quantity::ZERO,
            cum_quote: Money::ZERO,
            fills: Vec::new(),
            update_ms: v.get("time").and_then(Value::as_u64).unwrap_or(0),
        })
    }

    async fn cancel(&self, symbol: &str, client_id: &str) -> Result<VenueOrder, VenueError> {
        let body = json!({"category": self.config.category.as_str(), "symbol": symbol, "orderLinkId": client_id}).to_string();
        self.call(reqwest::Method::POST, "/v5/order/cancel", body, true).await?;
        // The cancel answer carries ids only; the order's final state comes from a query.
        match self.query(symbol, client_id).await? {
            Some(o) => Ok(o),
            None => Err(VenueError::Refused {
                venue: VENUE,
                code: 110001,
                msg: "order does not exist".into(),
                reason: sapphire_core::event::RejectReason::VenueUnknownOrder,
                status: 200,
            }),
        }
    }

    async fn query(&self, symbol: &str, client_id: &str) -> Result<Option<VenueOrder>, VenueError> {
        let mut q = Query::new();
        q.push("category", self.config.category.as_str()).push("symbol", symbol).push("orderLinkId", client_id);
        let v = self.call(reqwest::Method::GET, "/v5/order/realtime", q.as_str().to_string(), true).await?;
        match v.pointer("/result/list").and_then(Value::as_array).and_then(|l| l.first()) {
            Some(o) => parse_order(o).map(Some),
            None => Ok(None),
        }
    }

    async fn open_orders(&self, symbol: Option<&str>) -> Result<Vec<VenueOrder>, VenueError> {
        let mut q = Query::new();
        q.push("category", self.config.category.as_str());
        match symbol {
            Some(s) => q.push("symbol", s),
            None => q.push("settleCoin", "USDT"),
        };
        q.push("openOnly", 0);
        let v = self.call(reqwest::Method::GET, "/v5/order/realtime", q.as_str().to_string(), true).await?;
        let list = v.pointer("/result/list").and_then(Value::as_array).cloned().unwrap_or_default();
        let orders: Result<Vec<VenueOrder>, VenueError> = list.iter().map(parse_order).collect();
        Ok(orders?.into_iter().filter(|o| !o.status.is_final()).collect())
    }

    async fn cancel_all(&self, symbol: &str) -> Result<(), VenueError> {
        let body = json!({"category": self.config.category.as_str(), "symbol": symbol}).to_string();
        self.call(reqwest::Method::POST, "/v5/order/cancel-all", body, true).await.map(|_| ())
    }

    async fn sync_time(&self) -> Result<i64, VenueError> {
        self.measure_time_offset().await
    }

    async fn net_positions(&self) -> Result<Option<Vec<super::VenuePosition>>, VenueError> {
        if self.config.category == BybitCategory::Spot {
            // Spot has balances, not positions: not reconciled here.
            return Ok(None);
        }
        // Linear contracts settle in USDT or USDC; a symbol missing from both lists is flat.
        let mut list = self.positions_settled_in("USDT").await?;
        list.extend(self.positions_settled_in("USDC").await?);
        Ok(Some(list.into_iter().map(|p| super::VenuePosition { symbol: p.symbol, qty: p.qty, mark: p.mark_price }).collect()))
    }
}

use super::user_stream::{UserStreamStats, UserUpdate};
use super::VenueOrder as PushedOrder;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

/// Production private WebSocket.
pub const BYBIT_PRIVATE_WS_URL: &str = "wss://stream.bybit.com/v5/private";

/// The private stream's `auth` request: `expires` (ms) must be in the future when Bybit reads it.
pub fn private_auth_message(creds: &Credentials, expires_ms: u64) -> String {
    let signature = super::sign::hmac_sha256_hex(creds.secret.expose().as_bytes(), format!("GET/realtime{expires_ms}").as_bytes());
    format!(r#"{{"req_id":"auth","op":"auth","args":["{}",{expires_ms},"{signature}"]}}"#, creds.api_key)
}

/// One parsed private-stream message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrivateEvent {
    /// The `auth` reply: accepted, or refused with Bybit's reason.
    Auth(Result<(), String>),
    /// A `subscribe` reply.
    Subscribed(Result<(), String>),
    /// An `order` message: each order's cumulative state.
    Orders(Vec<PushedOrder>),
    /// An `execution` message: our fills (executions of other types, funding or ADL, and
    /// those without an order are left out).
    Executions(Vec<super::VenueExecution>),
    /// `execution`, `position`, pongs and anything else.
    Other,
}

/// Parses one element of an `execution` message; `None` for an execution that is not a
/// trade of an order (funding, ADL, bust, or no `orderLinkId`).
pub fn parse_execution(v: &Value) -> Result<Option<super::VenueExecution>, VenueError> {
    let exec_type = text_of(v, "execType");
    let client_id = text_of(v, "orderLinkId");
    if !(exec_type.is_empty() || exec_type == "Trade") || client_id.is_empty() {
        return Ok(None);
    }
    let symbol = text_of(v, "symbol");
    // Linear contracts charge in the settle coin (the quote); spot names the fee coin, which
    // is the base on buys: a fee not in the quote is not counted (as on Binance).
    let fee_currency = text_of(v, "feeCurrency");
    let fee = if fee_currency.is_empty() || symbol.ends_with(&fee_currency) {
        decode("execFee", Money::parse(&num(v, "execFee")))?
    } else {
        Money::ZERO
    };
    let qty = decode("execQty", Quantity::parse_unsigned(&num(v, "execQty")))?;
    if qty.raw <= 0 {
        return Err(VenueError::Decode {
            venue: VENUE,
            reason: format!("execution {:?} of {client_id} without a quantity", text_of(v, "execId")),
        });
    }
    Ok(Some(super::VenueExecution {
        symbol,
        client_id,
        exec_id: text_of(v, "execId"),
        side: if text_of(v, "side") == "Sell" { Side::Sell } else { Side::Buy },
        price: decode("execPrice", Price::parse(&num(v, "execPrice")))?,
        qty,
        fee,
        maker: v.get("isMaker").and_then(Value::as_bool).unwrap_or(false),
        time_ms: text_of(v, "execTime").parse().unwrap_or(0),
    }))
}

/// Parses one private-stream message.
pub fn parse_private_message(text: &str) -> Result<PrivateEvent, VenueError> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| VenueError::Decode { venue: VENUE, reason: format!("private stream: not JSON: {e}") })?;
    let result = |v: &Value| {
        if v.get("success").and_then(Value::as_bool) == Some(true) {
            Ok(())
        } else {
            Err(text_of(v, "ret_msg"))
        }
    };
    match (text_of(&v, "op").as_str(), text_of(&v, "topic").as_str()) {
        ("auth", _) => Ok(PrivateEvent::Auth(result(&v))),
        ("subscribe", _) => Ok(PrivateEvent::Subscribed(result(&v))),
        (_, "order") => {
            let Some(list) = v.get("data").and_then(Value::as_array) else {
                return Err(VenueError::Decode { venue: VENUE, reason: "private stream: order message without a data array".into() });
            };
            Ok(PrivateEvent::Orders(list.iter().map(parse_order).collect::<Result<_, _>>()?))
        }
        (_, "execution") => {
            let Some(list) = v.get("data").and_then(Value::as_array) else {
                return Err(VenueError::Decode { venue: VENUE, reason: "private stream: execution message without a data array".into() });
            };
            let mut out = Vec::with_capacity(list.len());
            for e in list {
                if let Some(x) = parse_execution(e)? {
                    out.push(x);
                }
            }
            Ok(PrivateEvent::Executions(out))
        }
        _ => Ok(PrivateEvent::Other),
    }
}

/// How the private stream connects.
#[derive(Debug, Clone)]
pub struct PrivateStreamConfig {
    /// The private stream's URL, `wss://stream.bybit.com/v5/private` (a base without the
    /// path, such as the local exchange's `ws://127.0.0.1:port`, gets `/v5/private` added).
    pub ws_url: String,
    /// `{"op":"ping"}` period (Bybit: 20 s).
    pub ping_interval: Duration,
    /// How far in the future the auth request's `expires` is.
    pub auth_expiry: Duration,
    /// Wait before reconnecting.
    pub backoff: Duration,
    /// Connect timeout, and the wait for the auth and subscribe replies.
    pub connect_timeout: Duration,
}

impl PrivateStreamConfig {
    /// Defaults for `ws_url`.
    pub fn new(ws_url: impl Into<String>) -> Self {
        Self {
            ws_url: ws_url.into().trim_end_matches('/').to_string(),
            ping_interval: Duration::from_secs(20),
            auth_expiry: Duration::from_secs(10),
            backoff: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a private session ended.
enum PrivateEnd {
    Stop,
    Retry(String),
}

/// Runs the private stream until `stop` turns true (or the gateway is gone): order updates
/// and reconnect notices into `updates`, counted in `stats`.
pub async fn run_private_stream(
    config: PrivateStreamConfig,
    credentials: Credentials,
    updates: mpsc::Sender<UserUpdate>,
    stats: std::sync::Arc<UserStreamStats>,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        match private_session(&config, &credentials, &updates, &stats, &mut stop).await {
            PrivateEnd::Stop => return,
            PrivateEnd::Retry(reason) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("venue bybit: private stream: {reason}; reconnecting");
                // Tell the gateway only when it was told the stream was up.
                if stats.up.swap(false, Ordering::Relaxed) && updates.send(UserUpdate::Disconnected).await.is_err() {
                    return;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(config.backoff) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn private_session(
    config: &PrivateStreamConfig,
    credentials: &Credentials,
    updates: &mpsc::Sender<UserUpdate>,
    stats: &UserStreamStats,
    stop: &mut watch::Receiver<bool>,
) -> PrivateEnd {
    let url = if config.ws_url.ends_with("/v5/private") { config.ws_url.clone() } else { format!("{}/v5/private", config.ws_url) };
    let mut ws = match crate::connection::binance::connect(&url, config.connect_timeout).await {
        Ok(ws) => ws,
        Err(e) => return PrivateEnd::Retry(format!("connect {url}: {e}")),
    };
    let expires = now_ms() + config.auth_expiry.as_millis() as u64;
    if ws.send(Message::text(private_auth_message(credentials, expires))).await.is_err() {
        return PrivateEnd::Retry("sending auth".into());
    }
    let mut authed = false;
    let deadline = tokio::time::sleep(config.connect_timeout);
    tokio::pin!(deadline);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + config.ping_interval, config.ping_interval);
    let mut pings = 0u64;
    loop {
        tokio::select! {
            _ = stop.changed() => {
                let _ = ws.close(None).await;
                return PrivateEnd::Stop;
            }
            _ = &mut deadline, if !authed => return PrivateEnd::Retry("no auth reply".into()),
            _ = ping.tick() => {
                pings += 1;
                if ws.send(Message::text(format!(r#"{{"req_id":"ping-{pings}","op":"ping"}}"#))).await.is_err() {
                    return PrivateEnd::Retry("sending ping".into());
                }
            }
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return PrivateEnd::Retry("connection lost".into()),
                    Some(Ok(_)) => continue,
                };
                match parse_private_message(text.as_str()) {
                    Ok(PrivateEvent::Auth(Ok(()))) => {
                        authed = true;
                        let sub = r#"{"req_id":"sub","op":"subscribe","args":["order","execution","position"]}"#;
                        if ws.send(Message::text(sub)).await.is_err() {
                            return PrivateEnd::Retry("sending subscribe".into());
                        }
                    }
                    Ok(PrivateEvent::Auth(Err(reason))) => return PrivateEnd::Retry(format!("auth refused: {reason}")),
                    Ok(PrivateEvent::Subscribed(Ok(()))) => {
                        // From here on nothing is missed: the gateway queries what it holds.
                        stats.connects.fetch_add(1, Ordering::Relaxed);
                        stats.up.store(true, Ordering::Relaxed);
                        if updates.send(UserUpdate::Reconnected).await.is_err() {
                            return PrivateEnd::Stop;
                        }
                    }
                    Ok(PrivateEvent::Subscribed(Err(reason))) => return PrivateEnd::Retry(format!("subscribe refused: {reason}")),
                    Ok(PrivateEvent::Orders(orders)) => {
                        for o in orders {
                            stats.orders.fetch_add(1, Ordering::Relaxed);
                            if updates.send(UserUpdate::Order(o)).await.is_err() {
                                return PrivateEnd::Stop;
                            }
                        }
                    }
                    Ok(PrivateEvent::Executions(list)) => {
                        for e in list {
                            stats.executions.fetch_add(1, Ordering::Relaxed);
                            if updates.send(UserUpdate::Execution(e)).await.is_err() {
                                return PrivateEnd::Stop;
                            }
                        }
                    }
                    Ok(PrivateEvent::Other) => {}
                    Err(e) => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("venue bybit: private stream: {e}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod private_tests {
    use super::*;

    #[test]
    fn auth_signs_get_realtime_expires() {
        let creds = Credentials::new("key", "secret");
        let msg = private_auth_message(&creds, 1_662_350_400_000);
        let sig = super::super::sign::hmac_sha256_hex(b"secret", b"GET/realtime1662350400000");
        assert_eq!(msg, format!(r#"{{"req_id":"auth","op":"auth","args":["key",1662350400000,"{sig}"]}}"#));
    }

    #[test]
    fn parses_position_lists_with_signed_sizes_and_marks() {
        let v: Value = serde_json::from_str(
            r#"{"retCode":0,"retMsg":"OK","result":{"list":[{"positionIdx":0,"symbol":"BTCUSDT","side":"Sell","size":"0.015","avgPrice":"60010.5","markPrice":"60000.25","unrealisedPnl":"0.15"},{"positionIdx":0,"symbol":"ETHUSDT","side":"","size":"0","avgPrice":"0","markPrice":"3000","unrealisedPnl":"0"}],"nextPageCursor":"","category":"linear"},"time":1}"#,
        )
        .unwrap();
        let list = parse_positions(&v).unwrap();
        assert_eq!(
            (list[0].symbol.as_str(), list[0].qty, list[0].mark_price, list[0].entry_price),
            ("BTCUSDT", Quantity::parse("-0.015").unwrap(), Price::parse("60000.25").unwrap(), Price::parse("60010.5").unwrap())
        );
        assert_eq!(list[1].qty, Quantity::ZERO);
        let bad: Value = serde_json::from_str(r#"{"result":{"list":[{"symbol":"BTCUSDT","side":"Buy","size":"x"}]}}"#).unwrap();
        assert!(parse_positions(&bad).is_err());
    }

    #[test]
    fn parses_private_messages() {
        assert_eq!(
            parse_private_message(r#"{"success":true,"ret_msg":"","op":"auth","conn_id":"c1"}"#).unwrap(),
            PrivateEvent::Auth(Ok(()))
        );
        assert_eq!(
            parse_private_message(r#"{"success":false,"ret_msg":"Request not authorized","op":"auth","conn_id":"c1"}"#).unwrap(),
            PrivateEvent::Auth(Err("Request not authorized".into()))
        );
        let order = r#"{"id":"5923240c6880ab-c59f-420b-9adb-3639adc9dd90","topic":"order","creationTime":1672364262474,"data":[{"symbol":"BTCUSDT","orderId":"5cf98598-39a7-459e-97bf-76ca765ee020","side":"Sell","orderType":"Limit","price":"60000.00","qty":"0.010","timeInForce":"GTC","orderStatus":"PartiallyFilled","orderLinkId":"sph-42","cumExecQty":"0.004","cumExecValue":"240","avgPrice":"60000","cumExecFee":"0","category":"linear","updatedTime":"1672364262457"}]}"#;
        let PrivateEvent::Orders(orders) = parse_private_message(order).unwrap() else { panic!() };
        assert_eq!(orders.len(), 1);
        assert_eq!((orders[0].client_id.as_str(), orders[0].executed), ("sph-42", Quantity::parse("0.004").unwrap()));
        assert_eq!(orders[0].side, Side::Sell);
        assert_eq!(parse_private_message(r#"{"req_id":"p","op":"pong","args":["1"],"conn_id":"c"}"#).unwrap(), PrivateEvent::Other);
        assert!(parse_private_message(r#"{"topic":"order","data":{}}"#).is_err());
        // Bybit's documented execution example (linear: the fee is in USDT), then a maker
        // rebate, a funding execution (left out) and one with a broken price (refused).
        let exec = r#"{"id":"592324803b2785-26fa-4214-9963-bdd4727f07be","topic":"execution","creationTime":1672364174455,"data":[{"category":"linear","symbol":"XRPUSDT","execFee":"0.005061","execId":"7e2ae69c-4edf-5800-a352-893d52b446aa","execPrice":"0.3374","execQty":"25","execType":"Trade","execValue":"8.435","isMaker":false,"feeRate":"0.0006","tradeIv":"","markIv":"","blockTradeId":"","markPrice":"0.3391","indexPrice":"","underlyingPrice":"","leavesQty":"0","orderId":"f6e324ff-99c2-4e89-9739-3086e47f9381","orderLinkId":"sph-7","orderPrice":"0.3207","orderQty":"25","orderType":"Market","stopOrderType":"UNKNOWN","side":"Sell","execTime":"1672364174443","isLeverage":"0","closedSize":"","seq":4688002127},{"category":"linear","symbol":"XRPUSDT","execFee":"-0.001","execId":"e2","execPrice":"0.3375","execQty":"10","execType":"Trade","isMaker":true,"orderLinkId":"sph-8","side":"Buy","execTime":"1672364174444"},{"category":"linear","symbol":"XRPUSDT","execFee":"0.01","execId":"f1","execPrice":"0.3375","execQty":"100","execType":"Funding","orderLinkId":"","side":"Buy","execTime":"1672364174445"}]}"#;
        let PrivateEvent::Executions(list) = parse_private_message(exec).unwrap() else { panic!("executions") };
        assert_eq!(list.len(), 2, "the funding execution is left out");
        assert_eq!(
            (list[0].client_id.as_str(), list[0].side, list[0].price, list[0].qty, list[0].fee, list[0].maker, list[0].time_ms),
            (
                "sph-7",
                Side::Sell,
                Price::parse("0.3374").unwrap(),
                Quantity::parse("25").unwrap(),
                Money::parse("0.005061").unwrap(),
                false,
                1_672_364_174_443
            )
        );
        assert_eq!((list[1].fee, list[1].maker), (Money::parse("-0.001").unwrap(), true), "a maker rebate is a negative fee");
        // Spot: a fee charged in the base coin is not a quote amount.
        let spot = r#"{"topic":"execution","data":[{"category":"spot","symbol":"BTCUSDT","execFee":"0.00001","feeCurrency":"BTC","execId":"s1","execPrice":"60000","execQty":"0.01","execType":"Trade","isMaker":false,"orderLinkId":"sph-9","side":"Buy","execTime":"1"}]}"#;
        let PrivateEvent::Executions(list) = parse_private_message(spot).unwrap() else { panic!("executions") };
        assert_eq!(list[0].fee, Money::ZERO);
        assert!(parse_private_message(
            r#"{"topic":"execution","data":[{"execId":"x","execPrice":"abc","execQty":"1","orderLinkId":"sph-1"}]}"#
        )
        .is_err());
        assert!(parse_private_message(
            r#"{"topic":"execution","data":[{"execId":"x","execPrice":"1","execQty":"0","orderLinkId":"sph-1"}]}"#
        )
        .is_err());
        assert!(parse_private_message("nope").is_err());
    }
}
