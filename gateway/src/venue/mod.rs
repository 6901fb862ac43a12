//! Order routing to real venues: signing, credentials, the Binance and Bybit execution
//! clients, and the [`OrderGateway`] task between the engine's outbound queue and a venue.
//!
//! The engine (in `VenueMode::External`) puts risk-approved [`Order`]s on its outbound
//! queue; the [`OrderGateway`] checks each against the instrument's filters, sends it with a
//! [`ExecutionVenue`] client, and publishes what happened as `Event::ExecReport`s into the
//! inbound ring. An order whose request timed out or met a 5xx is in UNKNOWN state: the
//! gateway queries it by client order id and reports what the venue says; it never resends.
//!
//! # Layout
//! - [`sign`]: HMAC-SHA256 signing (Binance, Bybit v5), percent-encoding, query building.
//! - [`credentials`]: API keys from the environment or mounted files, redacted in `Debug`.
//! - [`errors`]: [`VenueError`] and the venue-code → [`RejectReason`] maps.
//! - [`rate_limit`]: the venue's usage headers tracked so we slow down before a 429.
//! - [`binance`]: Binance spot (`/api/v3`) and USD-M (`/fapi/v1`) order REST.
//! - [`bybit`]: Bybit v5 order and position REST, and the private WebSocket (executions with
//!   fees, order updates).
//! - [`execution`]: the [`OrderGateway`] task, and reconciliation of open orders and positions.
//! - [`routing`]: [`routing::start_routing`], the gateway on a thread of its own, for the binary.
//! - [`user_stream`]: Binance user-data streams (listen key, `executionReport`,
//!   `ORDER_TRADE_UPDATE`) feeding the gateway; the Bybit private stream is in [`bybit`].

pub mod binance;
pub mod bybit;
pub mod credentials;
pub mod errors;
pub mod execution;
pub mod rate_limit;
pub mod routing;
pub mod sign;
pub mod user_stream;

#[cfg(test)]
mod tests;

pub use credentials::{credentials_from_env, CredentialError, Credentials, Venue};
pub use errors::VenueError;
pub use execution::{OrderGateway, OrderGatewayConfig, OrderGatewayStats};

use sapphire_core::event::{RejectReason, Side};
use sapphire_core::fixed::{notional, Money, Price, Quantity, PRICE_DECIMALS, QTY_DECIMALS};
use sapphire_core::instrument::Instrument;
use sapphire_core::order::{Order, OrderType, TimeInForce};
use std::future::Future;

/// Prefix of our client order ids at the venue, so ours are told apart from manual orders.
pub const CLIENT_ID_PREFIX: &str = "sph-";

/// The venue client order id for the router's id (`sph-<decimal>`, ≤ 24 characters: inside
/// Binance's 36 and Bybit's 36).
pub fn client_order_id(id: u64) -> String {
    format!("{CLIENT_ID_PREFIX}{id}")
}

/// The router's id back from a venue client order id; `None` for an order not ours.
pub fn parse_client_order_id(s: &str) -> Option<u64> {
    s.strip_prefix(CLIENT_ID_PREFIX)?.parse().ok()
}

/// Writes a fixed-point `raw` value (`scale` decimals) with `shown` decimals, truncating.
pub fn format_fixed(raw: i64, scale: u32, shown: u8) -> String {
    let shown = u32::from(shown).min(scale);
    let unit = 10i64.pow(scale);
    let sign = if raw < 0 { "-" } else { "" };
    let abs = raw.unsigned_abs();
    let int = abs / unit as u64;
    if shown == 0 {
        return format!("{sign}{int}");
    }
    let frac = (abs % unit as u64) / 10u64.pow(scale - shown);
    format!("{sign}{int}.{frac:0width$}", width = shown as usize)
}

/// A price as the venue wants it (the instrument's decimals).
pub fn format_price(p: Price, inst: &Instrument) -> String {
    format_fixed(p.raw, PRICE_DECIMALS, inst.price_precision)
}

/// A quantity as the venue wants it (the instrument's decimals).
pub fn format_qty(q: Quantity, inst: &Instrument) -> String {
    format_fixed(q.raw, QTY_DECIMALS, inst.qty_precision)
}

/// Checks an order against the instrument's filters before it leaves: a whole number of
/// ticks (limit orders) and lots, and at least the minimum notional (when a price is known).
pub fn check_filters(order: &Order, inst: &Instrument) -> Result<(), RejectReason> {
    if order.qty.raw <= 0 || !inst.is_on_lot(order.qty) {
        return Err(RejectReason::LotSize);
    }
    if order.order_type == OrderType::Limit && (order.price.raw <= 0 || !inst.is_on_tick(order.price)) {
        return Err(RejectReason::TickSize);
    }
    if order.price.raw > 0 && !order.reduce_only {
        match notional(order.price, order.qty) {
            Some(n) if n >= inst.min_notional => {}
            _ => return Err(RejectReason::MinNotional),
        }
    }
    Ok(())
}

/// Time in force at the venue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VenueTif {
    /// Good till cancelled.
    Gtc,
    /// Immediate or cancel.
    Ioc,
    /// Fill or kill.
    Fok,
    /// Post-only (Binance spot `LIMIT_MAKER`, USD-M `GTX`, Bybit `PostOnly`).
    PostOnly,
}

/// Limit or market at the venue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VenueOrderType {
    /// Limit at `price`.
    Limit,
    /// Market.
    Market,
}

/// A new order as a venue client sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRequest {
    /// Venue symbol.
    pub symbol: String,
    /// Our client order id at the venue ([`client_order_id`]).
    pub client_id: String,
    /// Buy or sell.
    pub side: Side,
    /// Limit or market.
    pub order_type: VenueOrderType,
    /// Time in force (limit orders).
    pub tif: VenueTif,
    /// Price text (limit orders).
    pub price: Option<String>,
    /// Quantity text.
    pub qty: String,
    /// Futures: only reduce the position.
    pub reduce_only: bool,
}

impl OrderRequest {
    /// The request for an engine order on `inst`.
    pub fn from_order(order: &Order, inst: &Instrument) -> Self {
        let (order_type, price) = match order.order_type {
            OrderType::Limit => (VenueOrderType::Limit, Some(format_price(order.price, inst))),
            OrderType::Market => (VenueOrderType::Market, None),
        };
        Self {
            symbol: inst.symbol.clone(),
            client_id: client_order_id(order.client_order_id),
            side: order.side,
            order_type,
            tif: match order.tif {
                TimeInForce::Gtc => VenueTif::Gtc,
                TimeInForce::Ioc => VenueTif::Ioc,
                TimeInForce::PostOnly => VenueTif::PostOnly,
            },
            price,
            qty: format_qty(order.qty, inst),
            reduce_only: order.reduce_only,
        }
    }
}

/// An order's state at the venue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VenueOrderStatus {
    /// Accepted, nothing filled, working (or just acknowledged).
    New,
    /// Partly filled, still working.
    PartiallyFilled,
    /// Completely filled.
    Filled,
    /// Cancelled (by us or the venue).
    Canceled,
    /// Refused by the matching engine after acceptance.
    Rejected,
    /// Expired: IOC/FOK remainder, post-only that would take, self-trade prevention.
    Expired,
}

impl VenueOrderStatus {
    /// True when the order can no longer change.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::New | Self::PartiallyFilled)
    }

    /// Binance's status word (`NEW`, `PARTIALLY_FILLED`, ...).
    pub fn parse_binance(s: &str) -> Option<Self> {
        Some(match s {
            "NEW" | "PENDING_NEW" => Self::New,
            "PARTIALLY_FILLED" => Self::PartiallyFilled,
            "FILLED" => Self::Filled,
            "CANCELED" | "PENDING_CANCEL" => Self::Canceled,
            "REJECTED" => Self::Rejected,
            "EXPIRED" | "EXPIRED_IN_MATCH" => Self::Expired,
            _ => return None,
        })
    }

    /// Bybit's `orderStatus` (`New`, `PartiallyFilled`, ...).
    pub fn parse_bybit(s: &str) -> Option<Self> {
        Some(match s {
            "Created" | "New" | "Untriggered" | "Triggered" | "Active" => Self::New,
            "PartiallyFilled" => Self::PartiallyFilled,
            "Filled" => Self::Filled,
            "Cancelled" | "PartiallyFilledCanceled" | "Deactivated" => Self::Canceled,
            "Rejected" => Self::Rejected,
            _ => return None,
        })
    }
}

/// One execution of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VenueFill {
    /// Price.
    pub price: Price,
    /// Quantity.
    pub qty: Quantity,
    /// Fee in quote units when the venue charged it in quote (else zero).
    pub fee: Money,
}

/// One execution (fill) of an order as a venue pushes it (Bybit's private `execution`
/// topic): the fill itself with its fee and liquidity, not the order's cumulative state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VenueExecution {
    /// Symbol.
    pub symbol: String,
    /// Our client order id (empty for executions without an order: funding, ADL).
    pub client_id: String,
    /// The venue's execution id: the same execution pushed twice is reported once.
    pub exec_id: String,
    /// Order side.
    pub side: Side,
    /// Execution price.
    pub price: Price,
    /// Execution quantity.
    pub qty: Quantity,
    /// Fee in quote units (negative: a rebate); zero when charged in another asset.
    pub fee: Money,
    /// True when our order was resting (maker).
    pub maker: bool,
    /// Venue time of the execution, ms.
    pub time_ms: u64,
}

/// A position at the venue (futures), net per symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VenuePosition {
    /// Symbol.
    pub symbol: String,
    /// Signed size (positive long).
    pub qty: Quantity,
    /// The venue's mark price (zero when it gave none).
    pub mark: Price,
}

/// An order as the venue reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VenueOrder {
    /// Symbol.
    pub symbol: String,
    /// Our client order id.
    pub client_id: String,
    /// The venue's order id.
    pub venue_id: String,
    /// State.
    pub status: VenueOrderStatus,
    /// Side.
    pub side: Side,
    /// Limit price (zero for market).
    pub price: Price,
    /// Ordered quantity.
    pub qty: Quantity,
    /// Filled so far.
    pub executed: Quantity,
    /// Quote amount filled so far (for the average price).
    pub cum_quote: Money,
    /// Individual fills, when the venue listed them (Binance `FULL`).
    pub fills: Vec<VenueFill>,
    /// Venue time of the last update, ms.
    pub update_ms: u64,
}

impl VenueOrder {
    /// The average fill price, or the limit price when nothing filled.
    pub fn avg_price(&self) -> Price {
        if self.executed.raw <= 0 {
            return self.price;
        }
        // cum_quote (1e9) / executed (1e8) → price (1e9): cum * 1e8 / executed.
        let p = i128::from(self.cum_quote.raw) * i128::from(Quantity::SCALE) / i128::from(self.executed.raw);
        Price::from_raw(i64::try_from(p).unwrap_or(self.price.raw))
    }

    /// Quantity still working.
    pub fn leaves(&self) -> Quantity {
        if self.status.is_final() {
            Quantity::ZERO
        } else {
            Quantity::from_raw((self.qty.raw - self.executed.raw).max(0))
        }
    }
}

/// A venue's order REST, as the [`OrderGateway`] uses it. Futures are `Send` so the gateway
/// can run on a multi-threaded runtime.
pub trait ExecutionVenue: Send + Sync {
    /// The venue's name for logs.
    fn name(&self) -> &'static str;

    /// Places a new order. [`VenueError::Unknown`] means the outcome is unknown: query, do not
    /// resend.
    fn place(&self, req: &OrderRequest) -> impl Future<Output = Result<VenueOrder, VenueError>> + Send;

    /// Cancels one order by client order id.
    fn cancel(&self, symbol: &str, client_id: &str) -> impl Future<Output = Result<VenueOrder, VenueError>> + Send;

    /// The order with this client order id; `None` when the venue does not know it.
    fn query(&self, symbol: &str, client_id: &str) -> impl Future<Output = Result<Option<VenueOrder>, VenueError>> + Send;

    /// Working orders, of one symbol or all.
    fn open_orders(&self, symbol: Option<&str>) -> impl Future<Output = Result<Vec<VenueOrder>, VenueError>> + Send;

    /// Cancels every working order of a symbol.
    fn cancel_all(&self, symbol: &str) -> impl Future<Output = Result<(), VenueError>> + Send;

    /// Measures the venue's clock offset (signed requests carry the venue's time); returns it, ms.
    fn sync_time(&self) -> impl Future<Output = Result<i64, VenueError>> + Send;

    /// Net positions per symbol, for reconciliation; `None` where the market has none (spot).
    fn net_positions(&self) -> impl Future<Output = Result<Option<Vec<VenuePosition>>, VenueError>> + Send {
        async { Ok(None) }
    }
}

/// Milliseconds since the Unix epoch on this machine's clock.
pub fn now_ms() -> u64 {
    // The venue checks it against its own clock (recvWindow): the wall clock itself.
    sapphire_core::latency::wall_nanos() / 1_000_000
}
