//! The hot-path events: fixed-size, `Copy`, `#[repr(C)]`, written straight into ring slots.
//!
//! Timestamps are `u64` nanoseconds: `ts_event` as the source stamped it (exchange time,
//! or the engine's event clock for derived events), `ts_recv` when we received it.
//! [`Quote`], [`Trade`], [`BookDelta`] and [`Signal`] fit one 64-byte cache line; the
//! layout test in `tests/layout.rs` pins every size.

use crate::fixed::{Money, Price, Quantity};
use crate::instrument::InstrumentId;

/// An agent (signal producer) id; the in-core strategies own the first ids.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentId(pub u16);

impl AgentId {
    /// The id as an index into per-agent tables.
    #[inline]
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// Buy or sell; for trades, the taker's side.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Side {
    /// Bid side / buy.
    #[default]
    Buy = 0,
    /// Ask side / sell.
    Sell = 1,
}

impl Side {
    /// The other side.
    #[inline]
    pub const fn opposite(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }

    /// +1 for buy, -1 for sell.
    #[inline]
    pub const fn sign(self) -> i64 {
        match self {
            Side::Buy => 1,
            Side::Sell => -1,
        }
    }
}

/// Best bid and ask with their sizes.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quote {
    /// Source timestamp, ns.
    pub ts_event: u64,
    /// Receive timestamp, ns.
    pub ts_recv: u64,
    /// Instrument.
    pub instrument: InstrumentId,
    /// Keeps the layout explicit.
    pub _pad: u32,
    /// Best bid price.
    pub bid_price: Price,
    /// Best ask price.
    pub ask_price: Price,
    /// Size at the best bid.
    pub bid_qty: Quantity,
    /// Size at the best ask.
    pub ask_qty: Quantity,
}

/// A public trade print.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trade {
    /// Source timestamp, ns.
    pub ts_event: u64,
    /// Receive timestamp, ns.
    pub ts_recv: u64,
    /// Instrument.
    pub instrument: InstrumentId,
    /// The taker's side.
    pub aggressor: Side,
    /// Keeps the layout explicit.
    pub _pad: [u8; 3],
    /// Trade price.
    pub price: Price,
    /// Trade quantity.
    pub qty: Quantity,
    /// Venue trade id.
    pub trade_id: u64,
}

/// [`BookDelta::flags`]: this level belongs to a snapshot.
pub const DELTA_SNAPSHOT: u8 = 1;
/// [`BookDelta::flags`]: clear the book before applying this level (first of a snapshot).
pub const DELTA_CLEAR: u8 = 2;
/// [`BookDelta::flags`]: last level of its venue message; the book is consistent after it.
pub const DELTA_LAST: u8 = 4;
/// [`BookDelta::flags`]: the feed lost the venue's sequence: the book is out of sync until the
/// next snapshot, whatever the ids say (they may point backwards after a corrupt id). The
/// delta changes no level.
pub const DELTA_RESYNC: u8 = 8;

/// One L2 level change: `qty` zero removes the level.
///
/// A venue message with many levels becomes many deltas sharing the update ids; the
/// continuity rule is `prev_update_id == the book's last_update_id` at the first delta
/// of a message (the feed adapter maps each venue's rule onto it; 0 means unsequenced).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BookDelta {
    /// Source timestamp, ns.
    pub ts_event: u64,
    /// Receive timestamp, ns.
    pub ts_recv: u64,
    /// Instrument.
    pub instrument: InstrumentId,
    /// Bid or ask.
    pub side: Side,
    /// `DELTA_*` bits.
    pub flags: u8,
    /// Keeps the layout explicit.
    pub _pad: u16,
    /// Level price.
    pub price: Price,
    /// New total quantity at the level; zero deletes it.
    pub qty: Quantity,
    /// First update id covered by the venue message.
    pub first_update_id: u64,
    /// Last update id covered by the venue message.
    pub last_update_id: u64,
    /// The last update id of the previous message (continuity check).
    pub prev_update_id: u64,
}

/// A directional view from an agent, valid for `ttl_ns` of event time.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Signal {
    /// When the agent produced it, ns (event time).
    pub ts_event: u64,
    /// Receive timestamp, ns.
    pub ts_recv: u64,
    /// Instrument.
    pub instrument: InstrumentId,
    /// Producing agent.
    pub agent: AgentId,
    /// Keeps the layout explicit.
    pub _pad: u16,
    /// Direction and strength in basis points, -10_000 (all-in short) ..= 10_000 (all-in long).
    pub strength_bps: i32,
    /// Confidence in basis points, 0 ..= 10_000.
    pub confidence_bps: u16,
    /// Keeps the layout explicit.
    pub _pad2: u16,
    /// Time to live, ns of event time; past it the signal has no effect.
    pub ttl_ns: u64,
    /// Agent-local id, for attribution in reports.
    pub signal_id: u64,
}

/// What an [`ExecReport`] reports.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ExecKind {
    /// The venue accepted the order.
    #[default]
    Ack = 0,
    /// Part of the order filled.
    PartialFill = 1,
    /// The order filled completely.
    Fill = 2,
    /// The order was cancelled (by us, IOC remainder, or the venue).
    Canceled = 3,
    /// The venue or the engine refused the order.
    Rejected = 4,
}

/// Why an order or intent was refused; the `u16` is stable (journals, metrics, Postgres).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[repr(u16)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// Not refused.
    #[default]
    None = 0,
    /// The agent's margin budget would be exceeded, or its margin ladder allows reduce-only
    /// orders only (metric label `agent_margin`).
    AgentBudget = 1,
    /// The position limit for the instrument would be exceeded.
    PositionLimit = 2,
    /// The order's notional is above the per-order maximum.
    OrderNotional = 3,
    /// The price is outside the band around the mid (fat finger).
    PriceBand = 4,
    /// Too many orders per unit of event time.
    OrderRate = 5,
    /// Too many open orders.
    OpenOrders = 6,
    /// The book's last update is too old.
    StaleData = 7,
    /// The book is out of sync (sequence gap).
    BookOutOfSync = 8,
    /// Trading is halted by the drawdown guard.
    Drawdown = 9,
    /// The margin ladder allows reduce-only orders only.
    ReduceOnly = 10,
    /// The manual kill switch is on.
    KillSwitch = 11,
    /// Trading is halted by a Control event.
    Halted = 12,
    /// Below the venue's minimum notional.
    MinNotional = 13,
    /// Not a whole number of lots.
    LotSize = 14,
    /// Not a whole number of ticks.
    TickSize = 15,
    /// No market for the instrument yet.
    NoMarket = 16,
    /// The agent is paused.
    AgentPaused = 17,
    /// Venue: insufficient balance.
    VenueInsufficientBalance = 18,
    /// Venue: price/lot/notional filter failure.
    VenueFilter = 19,
    /// Venue: rate limited.
    VenueRateLimited = 20,
    /// Venue: unknown order.
    VenueUnknownOrder = 21,
    /// Venue: any other refusal.
    VenueOther = 22,
}

impl RejectReason {
    /// Every reason, in code order.
    pub const ALL: [RejectReason; 23] = [
        RejectReason::None,
        RejectReason::AgentBudget,
        RejectReason::PositionLimit,
        RejectReason::OrderNotional,
        RejectReason::PriceBand,
        RejectReason::OrderRate,
        RejectReason::OpenOrders,
        RejectReason::StaleData,
        RejectReason::BookOutOfSync,
        RejectReason::Drawdown,
        RejectReason::ReduceOnly,
        RejectReason::KillSwitch,
        RejectReason::Halted,
        RejectReason::MinNotional,
        RejectReason::LotSize,
        RejectReason::TickSize,
        RejectReason::NoMarket,
        RejectReason::AgentPaused,
        RejectReason::VenueInsufficientBalance,
        RejectReason::VenueFilter,
        RejectReason::VenueRateLimited,
        RejectReason::VenueUnknownOrder,
        RejectReason::VenueOther,
    ];
    /// Number of reasons.
    pub const COUNT: usize = Self::ALL.len();

    /// The `limit_type` label used in `risk_limits_breached_total{limit_type}`.
    pub const fn label(self) -> &'static str {
        match self {
            RejectReason::None => "none",
            // The old platform's name, which dashboards and alert rules query.
            RejectReason::AgentBudget => "agent_margin",
            RejectReason::PositionLimit => "position_limit",
            RejectReason::OrderNotional => "order_notional",
            RejectReason::PriceBand => "price_band",
            RejectReason::OrderRate => "order_rate",
            RejectReason::OpenOrders => "open_orders",
            RejectReason::StaleData => "stale_data",
            RejectReason::BookOutOfSync => "book_out_of_sync",
            RejectReason::Drawdown => "drawdown",
            RejectReason::ReduceOnly => "reduce_only",
            RejectReason::KillSwitch => "kill_switch",
            RejectReason::Halted => "halted",
            RejectReason::MinNotional => "min_notional",
            RejectReason::LotSize => "lot_size",
            RejectReason::TickSize => "tick_size",
            RejectReason::NoMarket => "no_market",
            RejectReason::AgentPaused => "agent_paused",
            RejectReason::VenueInsufficientBalance => "venue_insufficient_balance",
            RejectReason::VenueFilter => "venue_filter",
            RejectReason::VenueRateLimited => "venue_rate_limited",
            RejectReason::VenueUnknownOrder => "venue_unknown_order",
            RejectReason::VenueOther => "venue_other",
        }
    }
}

/// Maker or taker, for fills.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Liquidity {
    /// Not a fill.
    #[default]
    None = 0,
    /// Our resting order was hit.
    Maker = 1,
    /// Our order took liquidity.
    Taker = 2,
}

/// An order's lifecycle update, from a venue or from the paper matcher.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecReport {
    /// Venue (or simulated venue) timestamp, ns.
    pub ts_event: u64,
    /// Receive timestamp, ns.
    pub ts_recv: u64,
    /// Instrument.
    pub instrument: InstrumentId,
    /// Agent the order is attributed to.
    pub agent: AgentId,
    /// What happened.
    pub kind: ExecKind,
    /// Order side.
    pub side: Side,
    /// Why, when `kind` is `Rejected` (or a venue cancel).
    pub reason: RejectReason,
    /// Maker or taker, for fills.
    pub liquidity: Liquidity,
    /// Keeps the layout explicit.
    pub _pad: [u8; 5],
    /// The router's client order id.
    pub client_order_id: u64,
    /// Fill price (fills) or order price.
    pub price: Price,
    /// Quantity of this fill (zero otherwise).
    pub last_qty: Quantity,
    /// Quantity still open after this report.
    pub leaves_qty: Quantity,
    /// Fee charged for this fill (negative is a rebate).
    pub fee: Money,
}

/// A clock tick of event time, stamped by the producer (so replays see the same timers).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timer {
    /// Timer time, ns.
    pub ts_event: u64,
    /// Receive timestamp, ns.
    pub ts_recv: u64,
    /// Which timer.
    pub timer_id: u32,
    /// Keeps the layout explicit.
    pub _pad: u32,
}

/// What a [`Control`] event asks for.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ControlKind {
    /// Stop opening risk (reduce-only); resting orders stay.
    #[default]
    Halt = 0,
    /// Lift a halt or kill.
    Resume = 1,
    /// Kill switch: cancel everything and refuse all new orders.
    Kill = 2,
    /// Change a limit (`limit`, `value`).
    SetLimit = 3,
    /// Pause one agent.
    PauseAgent = 4,
    /// Resume one agent.
    ResumeAgent = 5,
    /// Flatten: cancel resting orders in scope, then close positions with reduce-only IOC
    /// orders priced through the book to the edge of the price band, retried until flat or
    /// out of attempts. Scope: `agent` (or every agent), `instrument` (or every instrument).
    Flatten = 6,
    /// A manual order through the same risk checks as any signal: `value` is the signed
    /// quantity (raw, positive buys), `price` the limit (zero: at the touch), attributed to
    /// `agent` in `instrument`. Its intent id carries the event's inbound sequence.
    ManualOrder = 7,
}

/// Which limit a [`ControlKind::SetLimit`] changes; `value` units in brackets.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// No limit.
    #[default]
    None = 0,
    /// Per-agent margin budget [Money raw].
    AgentBudget = 1,
    /// Max position notional per instrument [Money raw].
    MaxPositionNotional = 2,
    /// Max order notional [Money raw].
    MaxOrderNotional = 3,
    /// Price band around the mid [bps].
    PriceBandBps = 4,
    /// Max open orders [count].
    MaxOpenOrders = 5,
    /// Stale-data threshold [ns].
    StaleAfterNs = 6,
    /// Drawdown halt [bps of peak equity].
    DrawdownHaltBps = 7,
}

/// An operator command, journaled like any other input so it is audited and replayable.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Control {
    /// When it was issued, ns.
    pub ts_event: u64,
    /// Receive timestamp, ns.
    pub ts_recv: u64,
    /// What to do.
    pub kind: ControlKind,
    /// Which limit, for `SetLimit`.
    pub limit: LimitKind,
    /// Agent, for per-agent commands and limits.
    pub agent: AgentId,
    /// Instrument, for `Flatten` (`ALL_INSTRUMENTS`: every one) and `ManualOrder`; zero in
    /// other commands (this was padding before).
    pub instrument: InstrumentId,
    /// New limit value; for `Kill`, 1 also flattens everything; for `ManualOrder`, the
    /// signed quantity.
    pub value: i64,
    /// Limit price of a `ManualOrder` (zero: at the touch); zero otherwise.
    pub price: Price,
}

/// One ring slot.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[repr(C, u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Best bid/ask.
    Quote(Quote),
    /// Trade print.
    Trade(Trade),
    /// L2 level change.
    BookDelta(BookDelta),
    /// Agent signal.
    Signal(Signal),
    /// Order lifecycle update.
    ExecReport(ExecReport),
    /// Event-time clock tick.
    Timer(Timer),
    /// Operator command.
    Control(Control),
}

impl Default for Event {
    fn default() -> Self {
        Event::Timer(Timer::default())
    }
}

impl Event {
    /// The event's source timestamp.
    #[inline]
    pub const fn ts_event(&self) -> u64 {
        match self {
            Event::Quote(e) => e.ts_event,
            Event::Trade(e) => e.ts_event,
            Event::BookDelta(e) => e.ts_event,
            Event::Signal(e) => e.ts_event,
            Event::ExecReport(e) => e.ts_event,
            Event::Timer(e) => e.ts_event,
            Event::Control(e) => e.ts_event,
        }
    }

    /// The event's receive timestamp.
    #[inline]
    pub const fn ts_recv(&self) -> u64 {
        match self {
            Event::Quote(e) => e.ts_recv,
            Event::Trade(e) => e.ts_recv,
            Event::BookDelta(e) => e.ts_recv,
            Event::Signal(e) => e.ts_recv,
            Event::ExecReport(e) => e.ts_recv,
            Event::Timer(e) => e.ts_recv,
            Event::Control(e) => e.ts_recv,
        }
    }

    /// Sets the receive timestamp (stamped as the event enters the ring).
    #[inline]
    pub fn set_ts_recv(&mut self, ts: u64) {
        match self {
            Event::Quote(e) => e.ts_recv = ts,
            Event::Trade(e) => e.ts_recv = ts,
            Event::BookDelta(e) => e.ts_recv = ts,
            Event::Signal(e) => e.ts_recv = ts,
            Event::ExecReport(e) => e.ts_recv = ts,
            Event::Timer(e) => e.ts_recv = ts,
            Event::Control(e) => e.ts_recv = ts,
        }
    }

    /// A short name of the variant (logs, metrics labels).
    pub const fn kind_name(&self) -> &'static str {
        match self {
            Event::Quote(_) => "quote",
            Event::Trade(_) => "trade",
            Event::BookDelta(_) => "book_delta",
            Event::Signal(_) => "signal",
            Event::ExecReport(_) => "exec_report",
            Event::Timer(_) => "timer",
            Event::Control(_) => "control",
        }
    }
}
