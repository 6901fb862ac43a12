//! Binance order REST: spot (`/api/v3`) and USD-M futures (`/fapi/v1`).
//!
//! Every request is SIGNED: the parameters (with `recvWindow` and `timestamp`, our clock plus
//! the measured server offset) are percent-encoded once, signed with HMAC-SHA256, and that
//! same string is sent — in the query for GET/DELETE, as the form body for POST. The
//! `X-MBX-*` usage headers of every answer feed the [`RateLimiter`]; a 429/418 blocks the
//! client for `Retry-After`. Transport failures after sending and 5xx answers are
//! [`VenueError::Unknown`]: the order may exist.

use super::credentials::Credentials;
use super::errors::{binance_reason, VenueError};
use super::rate_limit::{parse_retry_after, RateLimit, RateLimiter, BINANCE_SPOT_LIMITS, BINANCE_USDM_LIMITS};
use super::sign::{Query, Signer};
use super::{now_ms, ExecutionVenue, OrderRequest, VenueFill, VenueOrder, VenueOrderStatus, VenueOrderType, VenueTif};
use crate::binance::BinanceMarket;
use sapphire_core::event::{RejectReason, Side};
use sapphire_core::fixed::{Money, Price, Quantity};
use serde_json::Value;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const VENUE: &str = "binance";

/// Production REST base of spot.
pub const SPOT_URL: &str = "https://api.binance.com";
/// Production REST base of USD-M futures.
pub const USDM_URL: &str = "https://fapi.binance.com";

/// How the client talks to Binance.
#[derive(Debug, Clone)]
pub struct BinanceExecutionConfig {
    /// REST base URL, e.g. [`SPOT_URL`] or the local exchange's `http://127.0.0.1:port`.
    pub base_url: String,
    /// Spot or USD-M.
    pub market: BinanceMarket,
    /// `recvWindow`, ms (Binance allows at most 60,000).
    pub recv_window_ms: u64,
    /// Whole-request timeout; past it an order's state is unknown.
    pub timeout: Duration,
    /// The venue's limits the client keeps under.
    pub limits: Vec<RateLimit>,
    /// Slow down at this percentage of a limit.
    pub headroom_pct: u64,
    /// Wait used when a 429 carries no `Retry-After`.
    pub default_retry_after: Duration,
}

impl BinanceExecutionConfig {
    /// Defaults for `market` at `base_url`: 5 s recvWindow and timeout, the published limits.
    pub fn new(market: BinanceMarket, base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_string(),
            market,
            recv_window_ms: 5_000,
            timeout: Duration::from_secs(5),
            limits: match market {
                BinanceMarket::Spot => BINANCE_SPOT_LIMITS.to_vec(),
                BinanceMarket::UsdM => BINANCE_USDM_LIMITS.to_vec(),
            },
            headroom_pct: 90,
            default_retry_after: Duration::from_secs(1),
        }
    }
}

/// An asset balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    /// Asset, e.g. `USDT`.
    pub asset: String,
    /// Available.
    pub free: Quantity,
    /// Held by orders.
    pub locked: Quantity,
}

/// A futures position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Symbol.
    pub symbol: String,
    /// Signed size (positive long).
    pub qty: Quantity,
    /// Average entry price.
    pub entry_price: Price,
    /// Unrealized PnL.
    pub unrealized_pnl: Money,
    /// The venue's mark price (zero when it gave none).
    pub mark_price: Price,
}

/// Counters of one client.
#[derive(Debug, Default)]
pub struct BinanceClientStats {
    /// Requests sent.
    pub requests: AtomicU64,
    /// Answers with an error code.
    pub refused: AtomicU64,
    /// Answers that left the outcome unknown.
    pub unknown: AtomicU64,
}

/// A Binance execution client (spot or USD-M). Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct BinanceExecution {
    http: reqwest::Client,
    config: BinanceExecutionConfig,
    credentials: Credentials,
    /// HMAC keyed once with the secret.
    signer: Signer,
    /// Server time minus our clock, ms.
    offset_ms: AtomicI64,
    limiter: RateLimiter,
    /// Counters.
    pub stats: BinanceClientStats,
}

/// A parsed answer: status, usage headers already recorded.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v.get(name).filter(|v| !v.is_null())
}

fn text_of(v: &Value, name: &str) -> String {
    match field(v, name) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

fn u64_of(v: &Value, name: &str) -> u64 {
    field(v, name).and_then(Value::as_u64).unwrap_or(0)
}

fn decode<T>(what: &str, r: Result<T, sapphire_core::fixed::DecimalError>) -> Result<T, VenueError> {
    r.map_err(|e| VenueError::Decode { venue: VENUE, reason: format!("{what}: {e:?}") })
}

/// Parses a Binance order object (new-order answer of any `newOrderRespType`, query,
/// cancel, open orders; spot or futures field names).
pub fn parse_order(v: &Value) -> Result<VenueOrder, VenueError> {
    let status_text = text_of(v, "status");
    let status = VenueOrderStatus::parse_binance(&status_text)
        // An ACK answer has no status: the order is accepted and working.
        .or_else(|| status_text.is_empty().then_some(VenueOrderStatus::New))
        .ok_or_else(|| VenueError::Decode { venue: VENUE, reason: format!("unknown order status {status_text:?}") })?;
    let side = match text_of(v, "side").as_str() {
        "SELL" => Side::Sell,
        _ => Side::Buy,
    };
    let num = |name: &str| {
        let t = text_of(v, name);
        if t.is_empty() {
            "0".to_string()
        } else {
            t
        }
    };
    let price = decode("price", Price::parse(&num("price")))?;
    let qty = decode("origQty", Quantity::parse_unsigned(&num("origQty")))?;
    let executed = decode("executedQty", Quantity::parse_unsigned(&num("executedQty")))?;
    let quote_name = if field(v, "cumQuote").is_some() { "cumQuote" } else { "cummulativeQuoteQty" };
    let cum_quote = decode(quote_name, Money::parse(&num(quote_name)))?;
    let symbol = text_of(v, "symbol");
    let mut fills = Vec::new();
    if let Some(Value::Array(list)) = field(v, "fills") {
        for f in list {
            let asset = text_of(f, "commissionAsset");
            let fee = if !asset.is_empty() && symbol.ends_with(&asset) {
                decode("commission", Money::parse(&text_of(f, "commission")))?
            } else {
                Money::ZERO
            };
            fills.push(VenueFill {
                price: decode("fill price", Price::parse(&text_of(f, "price")))?,
                qty: decode("fill qty", Quantity::parse_unsigned(&text_of(f, "qty")))?,
                fee,
            });
        }
    }
    // A cancel answer names the cancelled order in origClientOrderId (spot gives the cancel
    // request its own clientOrderId).
    let client_id = match field(v, "origClientOrderId") {
        Some(_) => text_of(v, "origClientOrderId"),
        None => text_of(v, "clientOrderId"),
    };
    let update_ms = [u64_of(v, "updateTime"), u64_of(v, "transactTime"), u64_of(v, "time")].into_iter().max().unwrap_or(0);
    Ok(VenueOrder { symbol, client_id, venue_id: text_of(v, "orderId"), status, side, price, qty, executed, cum_quote, fills, update_ms })
}

/// `(code, msg)` of a Binance error body.
fn error_of(body: &[u8]) -> Option<(i64, String)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    Some((v.get("code")?.as_i64()?, v.get("msg").and_then(Value::as_str).unwrap_or("").to_string()))
}

impl BinanceExecution {
    /// A client; no request is sent until used (call [`ExecutionVenue::sync_time`] first).
    pub fn new(config: BinanceExecutionConfig, credentials: Credentials) -> Result<Self, VenueError> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(50))
            .pool_max_idle_per_host(8)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .timeout(config.timeout)
            .user_agent("sapphire")
            .build()
            .map_err(|e| VenueError::NotSent { venue: VENUE, reason: format!("building the HTTP client: {e}") })?;
        let limiter = RateLimiter::new(&config.limits, config.headroom_pct);
        let signer = Signer::new(credentials.secret.expose().as_bytes());
        Ok(Self { http, config, credentials, signer, offset_ms: AtomicI64::new(0), limiter, stats: BinanceClientStats::default() })
    }

    /// The configuration.
    pub fn config(&self) -> &BinanceExecutionConfig {
        &self.config
    }

    /// The rate limiter (its wait counters).
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    fn prefix(&self) -> &'static str {
        match self.config.market {
            BinanceMarket::Spot => "/api/v3",
            BinanceMarket::UsdM => "/fapi/v1",
        }
    }

    /// Our estimate of the venue's clock, ms.
    pub fn server_now_ms(&self) -> u64 {
        (now_ms() as i64 + self.offset_ms.load(Ordering::Relaxed)).max(0) as u64
    }

    /// The measured offset of the venue's clock from ours, ms.
    pub fn time_offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    /// Sets the server-time offset by hand (a clock known to be off; tests).
    pub fn set_time_offset_ms(&self, offset: i64) {
        self.offset_ms.store(offset, Ordering::Relaxed);
    }

    /// Measures the server-time offset (`GET /time`, halfway through the round trip).
    pub async fn measure_time_offset(&self) -> Result<i64, VenueError> {
        let url = format!("{}{}/time", self.config.base_url, self.prefix());
        let before = now_ms();
        let answer = self.send(reqwest::Method::GET, &url, None, None, 1, false).await?;
        let after = now_ms();
        let v = self.json(&answer)?;
        let server = v
            .get("serverTime")
            .and_then(Value::as_u64)
            .ok_or_else(|| VenueError::Decode { venue: VENUE, reason: "time: no serverTime".into() })?;
        let offset = server as i64 - ((before + after) / 2) as i64;
        self.offset_ms.store(offset, Ordering::Relaxed);
        Ok(offset)
    }

    /// Sends a request, waiting first if the limiter says so; records usage headers.
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        query: Option<&str>,
        form: Option<String>,
        weight: u64,
        order: bool,
    ) -> Result<Answer, VenueError> {
        loop {
            let wait = self.limiter.reserve(self.server_now_ms(), weight, order);
            if wait.is_zero() {
                break;
            }
            tokio::time::sleep(wait).await;
        }
        let full = match query {
            Some(q) if !q.is_empty() => format!("{url}?{q}"),
            _ => url.to_string(),
        };
        let mut req = self.http.request(method, full).header("X-MBX-APIKEY", &self.credentials.api_key);
        if let Some(body) = form {
            req = req.header("Content-Type", "application/x-www-form-urlencoded").body(body);
        }
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let reason = e.to_string();
                // A refused connection never carried the request; anything later might have.
                if e.is_connect() || e.is_builder() {
                    return Err(VenueError::NotSent { venue: VENUE, reason });
                }
                self.stats.unknown.fetch_add(1, Ordering::Relaxed);
                return Err(VenueError::Unknown { venue: VENUE, reason });
            }
        };
        let status = resp.status().as_u16();
        let server_now = self.server_now_ms();
        for (name, value) in resp.headers() {
            if let Ok(v) = value.to_str() {
                self.limiter.observe(server_now, name.as_str(), v);
            }
        }
        let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = match resp.bytes().await {
            Ok(b) => b.to_vec(),
            Err(e) => {
                self.stats.unknown.fetch_add(1, Ordering::Relaxed);
                return Err(VenueError::Unknown { venue: VENUE, reason: format!("reading the answer: {e}") });
            }
        };
        if status == 429 || status == 418 {
            let retry_after = parse_retry_after(retry_after.as_deref(), self.config.default_retry_after);
            self.limiter.block_for(server_now, retry_after);
            return Err(VenueError::RateLimited { venue: VENUE, status, retry_after });
        }
        if status >= 500 {
            self.stats.unknown.fetch_add(1, Ordering::Relaxed);
            return Err(VenueError::Unknown {
                venue: VENUE,
                reason: format!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])),
            });
        }
        if status >= 400 {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            let (code, msg) = error_of(&body).unwrap_or((0, String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()));
            let reason = if code == 0 { RejectReason::VenueOther } else { binance_reason(code, &msg) };
            return Err(VenueError::Refused { venue: VENUE, code, msg, reason, status });
        }
        Ok(Answer { status, body })
    }

    fn json(&self, a: &Answer) -> Result<Value, VenueError> {
        serde_json::from_slice(&a.body)
            .map_err(|e| VenueError::Decode { venue: VENUE, reason: format!("HTTP {}: not JSON: {e}", a.status) })
    }

    /// A new order's request body as sent: the [`order_query`](Self::order_query) with
    /// `recvWindow`, `timestamp` and its signature.
    pub fn signed_order(&self, req: &OrderRequest) -> Query {
        self.signed(self.order_query(req))
    }

    /// Adds `recvWindow`, `timestamp` and the signature.
    fn signed(&self, mut q: Query) -> Query {
        q.push("recvWindow", self.config.recv_window_ms).push("timestamp", self.server_now_ms());
        q.sign_binance_with(&self.signer);
        q
    }

    async fn signed_call(&self, method: reqwest::Method, path: &str, q: Query, weight: u64, order: bool) -> Result<Value, VenueError> {
        let url = format!("{}{}", self.config.base_url, path);
        let q = self.signed(q);
        let answer = if method == reqwest::Method::POST {
            self.send(method, &url, None, Some(q.as_str().to_string()), weight, order).await?
        } else {
            self.send(method, &url, Some(q.as_str()), None, weight, order).await?
        };
        self.json(&answer)
    }

    /// The parameters of a new order.
    pub fn order_query(&self, req: &OrderRequest) -> Query {
        let mut q = Query::with_capacity(256);
        q.push("symbol", &req.symbol).push("side", if req.side == Side::Buy { "BUY" } else { "SELL" });
        let futures = self.config.market == BinanceMarket::UsdM;
        match (req.order_type, req.tif) {
            (VenueOrderType::Market, _) => {
                q.push("type", "MARKET");
            }
            (VenueOrderType::Limit, VenueTif::PostOnly) if !futures => {
                q.push("type", "LIMIT_MAKER");
            }
            (VenueOrderType::Limit, tif) => {
                let tif = match tif {
                    VenueTif::Gtc => "GTC",
                    VenueTif::Ioc => "IOC",
                    VenueTif::Fok => "FOK",
                    VenueTif::PostOnly => "GTX",
                };
                q.push("type", "LIMIT").push("timeInForce", tif);
            }
        }
        q.push("quantity", &req.qty);
        q.push_opt("price", req.price.as_deref().filter(|_| req.order_type == VenueOrderType::Limit));
        q.push("newClientOrderId", &req.client_id);
        if futures {
            if req.reduce_only {
                q.push("reduceOnly", "true");
            }
            q.push("newOrderRespType", "RESULT");
        } else {
            q.push("newOrderRespType", "FULL");
        }
        q
    }

    /// Account balances (spot) or assets (futures).
    pub async fn balances(&self) -> Result<Vec<Balance>, VenueError> {
        let (path, weight, list, free, locked) = match self.config.market {
            BinanceMarket::Spot => ("/api/v3/account", 20, "balances", "free", "locked"),
            BinanceMarket::UsdM => ("/fapi/v3/account", 5, "assets", "availableBalance", "initialMargin"),
        };
        let v = self.signed_call(reqwest::Method::GET, path, Query::new(), weight, false).await?;
        let mut out = Vec::new();
        for b in v.get(list).and_then(Value::as_array).into_iter().flatten() {
            let zero = |s: String| if s.is_empty() { "0".to_string() } else { s };
            out.push(Balance {
                asset: text_of(b, "asset"),
                free: decode("free", Quantity::parse(&zero(text_of(b, free))))?,
                locked: decode("locked", Quantity::parse(&zero(text_of(b, locked))))?,
            });
        }
        Ok(out)
    }

    /// Futures positions (`/fapi/v3/positionRisk`); empty on spot.
    pub async fn positions(&self) -> Result<Vec<Position>, VenueError> {
        if self.config.market == BinanceMarket::Spot {
            return Ok(Vec::new());
        }
        let v = self.signed_call(reqwest::Method::GET, "/fapi/v3/positionRisk", Query::new(), 5, false).await?;
        let mut out = Vec::new();
        for p in v.as_array().into_iter().flatten() {
            out.push(Position {
                symbol: text_of(p, "symbol"),
                qty: decode("positionAmt", Quantity::parse(&text_of(p, "positionAmt")))?,
                entry_price: decode("entryPrice", Price::parse(&text_of(p, "entryPrice")))?,
                unrealized_pnl: decode("unRealizedProfit", Money::parse(&text_of(p, "unRealizedProfit")))?,
                mark_price: match text_of(p, "markPrice").as_str() {
                    "" => Price::ZERO,
                    m => decode("markPrice", Price::parse(m))?,
                },
            });
        }
        Ok(out)
    }

    fn listen_key_path(&self) -> &'static str {
        match self.config.market {
            BinanceMarket::Spot => "/api/v3/userDataStream",
            BinanceMarket::UsdM => "/fapi/v1/listenKey",
        }
    }

    /// Opens a user-data stream: a listen key (valid 60 minutes unless kept alive).
    pub async fn create_listen_key(&self) -> Result<String, VenueError> {
        let url = format!("{}{}", self.config.base_url, self.listen_key_path());
        let answer = self.send(reqwest::Method::POST, &url, None, None, 2, false).await?;
        let v = self.json(&answer)?;
        v.get("listenKey")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| VenueError::Decode { venue: VENUE, reason: "no listenKey in the answer".into() })
    }

    /// Keeps a listen key alive for another 60 minutes.
    pub async fn keepalive_listen_key(&self, key: &str) -> Result<(), VenueError> {
        let url = format!("{}{}", self.config.base_url, self.listen_key_path());
        let mut q = Query::new();
        q.push("listenKey", key);
        self.send(reqwest::Method::PUT, &url, Some(q.as_str()), None, 2, false).await.map(|_| ())
    }

    /// Closes a listen key.
    pub async fn close_listen_key(&self, key: &str) -> Result<(), VenueError> {
        let url = format!("{}{}", self.config.base_url, self.listen_key_path());
        let mut q = Query::new();
        q.push("listenKey", key);
        self.send(reqwest::Method::DELETE, &url, Some(q.as_str()), None, 2, false).await.map(|_| ())
    }

    /// Round trip of one signed cheap request, for latency checks.
    pub async fn ping(&self) -> Result<Duration, VenueError> {
        let t = Instant::now();
        let url = format!("{}{}/ping", self.config.base_url, self.prefix());
        self.send(reqwest::Method::GET, &url, None, None, 1, false).await?;
        Ok(t.elapsed())
    }
}

impl ExecutionVenue for BinanceExecution {
    fn name(&self) -> &'static str {
        VENUE
    }

    async fn place(&self, req: &OrderRequest) -> Result<VenueOrder, VenueError> {
        let path = format!("{}/order", self.prefix());
        let v = self.signed_call(reqwest::Method::POST, &path, self.order_query(req), 1, true).await?;
        // (`signed_call` signs with `signed`: the bytes `signed_order` returns.)
        parse_order(&v)
    }

    async fn cancel(&self, symbol: &str, client_id: &str) -> Result<VenueOrder, VenueError> {
        let mut q = Query::new();
        q.push("symbol", symbol).push("origClientOrderId", client_id);
        let path = format!("{}/order", self.prefix());
        let v = self.signed_call(reqwest::Method::DELETE, &path, q, 1, false).await?;
        parse_order(&v)
    }

    async fn query(&self, symbol: &str, client_id: &str) -> Result<Option<VenueOrder>, VenueError> {
        let mut q = Query::new();
        q.push("symbol", symbol).push("origClientOrderId", client_id);
        let path = format!("{}/order", self.prefix());
        match self.signed_call(reqwest::Method::GET, &path, q, 4, false).await {
            Ok(v) => parse_order(&v).map(Some),
            Err(VenueError::Refused { code: -2013, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn open_orders(&self, symbol: Option<&str>) -> Result<Vec<VenueOrder>, VenueError> {
        let mut q = Query::new();
        q.push_opt("symbol", symbol);
        let path = format!("{}/openOrders", self.prefix());
        let weight = if symbol.is_some() { 6 } else { 80 };
        let v = self.signed_call(reqwest::Method::GET, &path, q, weight, false).await?;
        v.as_array().into_iter().flatten().map(parse_order).collect()
    }

    async fn cancel_all(&self, symbol: &str) -> Result<(), VenueError> {
        let mut q = Query::new();
        q.push("symbol", symbol);
        let path = match self.config.market {
            BinanceMarket::Spot => "/api/v3/openOrders",
            BinanceMarket::UsdM => "/fapi/v1/allOpenOrders",
        };
        match self.signed_call(reqwest::Method::DELETE, path, q, 1, false).await {
            // Spot answers "Unknown order sent." when nothing was open: nothing to cancel.
            Ok(_) | Err(VenueError::Refused { code: -2011, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn sync_time(&self) -> Result<i64, VenueError> {
        self.measure_time_offset().await
    }

    async fn net_positions(&self) -> Result<Option<Vec<super::VenuePosition>>, VenueError> {
        if self.config.market == BinanceMarket::Spot {
            // Spot has balances, not positions: not reconciled here.
            return Ok(None);
        }
        let list = self.positions().await?;
        Ok(Some(list.into_iter().map(|p| super::VenuePosition { symbol: p.symbol, qty: p.qty, mark: p.mark_price }).collect()))
    }
}
