//! Bybit v5 order REST: `/v5/order/create`, `cancel`, `cancel-all`, `realtime`,
//! `/v5/position/list`, `/v5/account/wallet-balance`.
//!
//! Signing: `X-BAPI-SIGN` = HMAC-SHA256 of `timestamp + apiKey + recvWindow + payload`, the
//! payload being the query string of a GET or the JSON body of a POST, byte for byte as sent.
//! Bybit answers HTTP 200 with `retCode` ≠ 0 for refusals; `X-Bapi-Limit-Status` (requests
//! left in the window) and `X-Bapi-Limit-Reset-Timestamp` drive the client's slowdown.

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
        let mut out = Vec::new();
        for p in v.pointer("/result/list").and_then(Value::as_array).into_iter().flatten() {
            let size = decode("size", Quantity::parse(&num(p, "size")))?;
            out.push(super::binance::Position {
                symbol: text_of(p, "symbol"),
                qty: if text_of(p, "side") == "Sell" { -size } else { size },
                entry_price: decode("avgPrice", Price::parse(&num(p, "avgPrice")))?,
                unrealized_pnl: decode("unrealisedPnl", Money::parse(&num(p, "unrealisedPnl")))?,
            });
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
}
