//! The risk engine: every intent is checked here before it can become an order, and the
//! portfolio guards (drawdown, margin ladder, kill switch) live here, with the operator's own
//! orders (flatten, manual orders: see `operator`).
//!
//! The risk stage owns the [`Portfolio`]: fills reach it as [`ExecReport`]s, at
//! deterministic points (see `engine`), so every decision sees exact positions.

use crate::aggregate::MAX_AGENTS;
use crate::event::{AgentId, Control, ControlKind, ExecKind, ExecReport, LimitKind, RejectReason, Side};
use crate::fixed::{notional, ratio_bps, Money, Price, Quantity};
use crate::instrument::{Instrument, InstrumentId};
use crate::order::{Batch, ExecStyle, Intent, Order, OrderAction, OrderType, TimeInForce};
use crate::portfolio::Portfolio;
use crate::strategy::MarketView;

/// Every agent, in a cancel-all.
pub const ALL_AGENTS: AgentId = AgentId(u16::MAX);
/// Every instrument, in a cancel-all.
pub const ALL_INSTRUMENTS: InstrumentId = InstrumentId(u32::MAX);

/// Orders one event can produce.
pub const ORDERS_PER_EVENT: usize = 4;
/// The orders produced by one event.
pub type OrderBatch = Batch<Order, ORDERS_PER_EVENT>;
/// The lowest agent tag of the per-agent ladder's cut orders (below [`FLATTEN_TAG`] and the
/// guard's tag; each cut of one event takes the next one up).
pub const AGENT_CUT_TAG: u8 = 0xe0;
/// Risk outputs one event can produce.
pub const RISK_OUTPUTS_PER_EVENT: usize = 4;
/// The risk outputs produced by one event.
pub type RiskOutputBatch = Batch<RiskOutput, RISK_OUTPUTS_PER_EVENT>;

/// Limits and guards. Money in quote currency.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RiskConfig {
    /// Margin budget of each agent.
    pub agent_budget: Money,
    /// Max |position| notional per agent and instrument.
    pub max_position_notional: Money,
    /// Max notional of one order.
    pub max_order_notional: Money,
    /// Max distance of a limit price from the mid, bps.
    pub price_band_bps: i64,
    /// Sustained new orders per second of event time.
    pub orders_per_sec: u32,
    /// Order-rate burst.
    pub order_burst: u32,
    /// Max open orders per agent.
    pub max_open_orders: u32,
    /// No orders on a book older than this, ns of event time.
    pub stale_after_ns: u64,
    /// Drawdown from peak equity that raises a warning, bps.
    pub drawdown_warn_bps: i64,
    /// Drawdown from peak equity that halts opening trades, bps.
    pub drawdown_halt_bps: i64,
    /// Margin ratio above which resting orders are cancelled and only reducing orders pass, bps.
    pub margin_reduce_only_bps: i64,
    /// Margin ratio above which positions are cut, bps.
    pub margin_deleverage_bps: i64,
    /// Leverage: margin used = exposure / leverage.
    pub leverage: i64,
    /// Passes a flatten makes over its positions before it gives up (operator flatten).
    pub flatten_attempts: u32,
    /// Event time between the end of one flatten pass and the next, ns.
    pub flatten_retry_ns: u64,
}

impl Default for RiskConfig {
    fn default() -> Self {
        Self {
            agent_budget: Money::from_units(1_000),
            max_position_notional: Money::from_units(2_000),
            max_order_notional: Money::from_units(1_000),
            price_band_bps: 500,
            orders_per_sec: 50,
            order_burst: 100,
            max_open_orders: 20,
            stale_after_ns: 5_000_000_000,
            drawdown_warn_bps: 1_000,
            drawdown_halt_bps: 2_500,
            margin_reduce_only_bps: 8_500,
            margin_deleverage_bps: 9_500,
            leverage: 1,
            flatten_attempts: 10,
            flatten_retry_ns: 500_000_000,
        }
    }
}

/// Most open orders per agent a configuration may allow: the open-order table is allocated
/// for every agent's limit up front.
pub const MAX_OPEN_ORDERS_LIMIT: u32 = 10_000;
/// Longest `stale_after_ns` (one day); anything longer would mean "never stale".
pub const MAX_STALE_AFTER_NS: u64 = 86_400 * 1_000_000_000;
/// Most money the configured amounts may add up to over every agent and instrument: an
/// eighth of [`Money`]'s range (about 1.15e9 quote units). Capital, exposure, open-order
/// notional, PnL and fees are summed in plain `i64` on the hot path; keeping each configured
/// total this far below the limit leaves room for prices to move eightfold before any sum
/// could overflow, so the hot path needs no checks of its own.
pub const MONEY_HEADROOM: Money = Money::from_raw(i64::MAX / 8);

/// A risk setting, by its configuration name (the `[risk]` key and the `/api/limits` name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RiskSetting {
    /// `agent_budget_usd`.
    AgentBudget,
    /// `max_position_usd`.
    MaxPosition,
    /// `max_order_usd`.
    MaxOrder,
    /// `price_band_bps`.
    PriceBand,
    /// `orders_per_sec`.
    OrdersPerSec,
    /// `order_burst`.
    OrderBurst,
    /// `max_open_orders`.
    MaxOpenOrders,
    /// `stale_after_ms`.
    StaleAfter,
    /// `leverage`.
    Leverage,
}

impl RiskSetting {
    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            RiskSetting::AgentBudget => "agent_budget_usd",
            RiskSetting::MaxPosition => "max_position_usd",
            RiskSetting::MaxOrder => "max_order_usd",
            RiskSetting::PriceBand => "price_band_bps",
            RiskSetting::OrdersPerSec => "orders_per_sec",
            RiskSetting::OrderBurst => "order_burst",
            RiskSetting::MaxOpenOrders => "max_open_orders",
            RiskSetting::StaleAfter => "stale_after_ms",
            RiskSetting::Leverage => "leverage",
        }
    }
}

/// Why a [`RiskConfig`] cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", setting.as_str())]
pub struct RiskConfigError {
    /// The setting at fault.
    pub setting: RiskSetting,
    /// What is wrong, with the numbers.
    pub reason: String,
}

impl RiskConfig {
    /// Checks that every limit is usable and that the money it allows, summed over `agents`
    /// agents and `instruments` instruments, stays within [`MONEY_HEADROOM`].
    pub fn validate(&self, agents: usize, instruments: usize) -> Result<(), RiskConfigError> {
        let fail = |setting, reason: String| Err(RiskConfigError { setting, reason });
        let (agents, instruments) = (agents.max(1) as i128, instruments.max(1) as i128);
        let room = i128::from(MONEY_HEADROOM.raw);
        // Totals may be past i64: shown from i128, two decimals, truncated.
        let scale = i128::from(Money::SCALE);
        let units = |raw: i128| format!("{}.{:02}", raw / scale, raw % scale / (scale / 100));
        if !(1..=MAX_OPEN_ORDERS_LIMIT).contains(&self.max_open_orders) {
            return fail(RiskSetting::MaxOpenOrders, format!("{} is outside 1..={MAX_OPEN_ORDERS_LIMIT}", self.max_open_orders));
        }
        // (setting, amount, how many of it can add up, what those are)
        let totals = [
            (RiskSetting::AgentBudget, self.agent_budget, agents, "agents"),
            (RiskSetting::MaxPosition, self.max_position_notional, agents * instruments, "agent-instrument positions"),
            (
                RiskSetting::MaxOrder,
                self.max_order_notional,
                agents * (i128::from(self.max_open_orders) + ORDERS_PER_EVENT as i128),
                "open orders (every agent's max_open_orders, plus one event's orders)",
            ),
        ];
        for (setting, amount, count, what) in totals {
            if amount.raw <= 0 {
                return fail(setting, format!("{amount:.2} must be above zero"));
            }
            let total = i128::from(amount.raw) * count;
            if total > room {
                return fail(
                    setting,
                    format!(
                        "{amount:.2} × {count} {what} = {}, more than the {:.2} the engine's fixed-point money carries with headroom; at most {} here",
                        units(total),
                        MONEY_HEADROOM,
                        units(room / count),
                    ),
                );
            }
        }
        if !(1..=10_000).contains(&self.price_band_bps) {
            return fail(RiskSetting::PriceBand, format!("{} is outside 1..=10000", self.price_band_bps));
        }
        if self.orders_per_sec == 0 {
            return fail(RiskSetting::OrdersPerSec, "must be at least 1 (0 would refuse every order)".into());
        }
        if self.order_burst == 0 {
            return fail(RiskSetting::OrderBurst, "must be at least 1".into());
        }
        if !(1..=MAX_STALE_AFTER_NS).contains(&self.stale_after_ns) {
            return fail(
                RiskSetting::StaleAfter,
                format!("{} ms is outside 1..={} ms (one day)", self.stale_after_ns / 1_000_000, MAX_STALE_AFTER_NS / 1_000_000),
            );
        }
        if !(1..=125).contains(&self.leverage) {
            return fail(RiskSetting::Leverage, format!("{} is outside 1..=125", self.leverage));
        }
        Ok(())
    }
}

/// A refused intent.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RiskRefusal {
    /// Event time.
    pub ts_event: u64,
    /// The refused intent.
    pub intent_id: u64,
    /// Instrument.
    pub instrument: InstrumentId,
    /// Agent.
    pub agent: AgentId,
    /// Why.
    pub reason: RejectReason,
    /// Side of the would-be order.
    pub side: Side,
    /// Price of the would-be order.
    pub price: Price,
    /// Quantity of the would-be order.
    pub qty: Quantity,
}

/// A guard changed state.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AlertKind {
    /// Drawdown crossed the warning level (value: drawdown bps).
    #[default]
    DrawdownWarning = 0,
    /// Drawdown crossed the halt level (value: drawdown bps).
    DrawdownHalt = 1,
    /// The margin ladder moved (value: new level 0, 1 reduce-only, 2 deleverage).
    MarginLadder = 2,
    /// Kill switch engaged.
    Killed = 3,
    /// Trading halted by an operator.
    Halted = 4,
    /// Halt, kill or drawdown halt lifted.
    Resumed = 5,
    /// An agent was paused (value 1) or resumed (value 0).
    AgentPaused = 6,
    /// A limit changed (value: the new value).
    LimitChanged = 7,
    /// An operator flatten began a pass over its positions (value: the pass, from 1; agent:
    /// its scope, or every agent).
    Flattening = 8,
    /// An operator flatten ended (value: positions still open; 0 is flat).
    Flattened = 9,
    /// One agent's margin ladder moved (agent: whose; value: new level 0 normal,
    /// 1 reduce-only with its resting orders cancelled, 2 its positions cut).
    AgentMarginLadder = 10,
}

/// A guard event.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RiskAlert {
    /// Event time.
    pub ts_event: u64,
    /// What changed.
    pub kind: AlertKind,
    /// Agent, where it applies.
    pub agent: AgentId,
    /// Kind-specific value.
    pub value: i64,
}

/// What the risk stage reports besides orders.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RiskOutput {
    /// An intent was refused.
    Refusal(RiskRefusal),
    /// A guard changed state.
    Alert(RiskAlert),
}

impl Default for RiskOutput {
    fn default() -> Self {
        RiskOutput::Alert(RiskAlert::default())
    }
}

/// An order risk has approved and not yet seen end.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, Debug)]
struct OpenOrder {
    intent_id: u64,
    agent: AgentId,
    instrument: InstrumentId,
    side: Side,
    price: Price,
    leaves: Quantity,
}

/// Order-rate limiter on event time: `rate` tokens per second, up to `burst`.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, Debug)]
struct TokenBucket {
    /// Tokens × 1e9 (token-nanoseconds), to stay exact in integers.
    level: u128,
    burst: u128,
    rate: u128,
    last_ts: u64,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> Self {
        let burst = u128::from(burst.max(1)) * 1_000_000_000;
        Self { level: burst, burst, rate: u128::from(rate), last_ts: 0 }
    }

    fn refill(&mut self, now: u64) {
        if now > self.last_ts {
            self.level = (self.level + u128::from(now - self.last_ts) * self.rate).min(self.burst);
            self.last_ts = now;
        }
    }

    fn has_token(&mut self, now: u64) -> bool {
        self.refill(now);
        self.level >= 1_000_000_000
    }

    fn take(&mut self) {
        self.level -= 1_000_000_000;
    }
}

/// Risk state visible to readers (dashboard, tests).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RiskStatus {
    /// Kill switch on.
    pub killed: bool,
    /// Halted by an operator.
    pub halted: bool,
    /// Halted by the drawdown guard.
    pub drawdown_halted: bool,
    /// Margin ladder level: 0 normal, 1 reduce-only, 2 deleverage.
    pub ladder: u8,
    /// Current drawdown from peak equity, bps.
    pub drawdown_bps: i64,
    /// Current margin ratio, bps.
    pub margin_ratio_bps: i64,
    /// Peak equity.
    pub peak_equity: Money,
}

/// The risk stage's state. Single writer: the risk stage thread.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug)]
pub struct RiskEngine {
    config: RiskConfig,
    portfolio: Portfolio,
    instruments: Vec<Instrument>,
    markets: Vec<MarketView>,
    open: Vec<OpenOrder>,
    bucket: TokenBucket,
    status: RiskStatus,
    drawdown_warned: bool,
    paused: [bool; MAX_AGENTS],
    /// Each agent's margin ladder level against its own budget: 0 normal, 1 reduce-only,
    /// 2 deleverage.
    agent_ladder: [u8; MAX_AGENTS],
    refusals: [u64; RejectReason::COUNT],
    approved: u64,
    now: u64,
    /// The operator flatten in progress (see `operator`).
    flatten: operator::Flatten,
}

impl RiskEngine {
    /// A risk engine for `instruments` and `agents` agents, each with the configured budget.
    pub fn new(config: RiskConfig, instruments: &[Instrument], agents: usize) -> Self {
        let portfolio = Portfolio::new(vec![config.agent_budget; agents.min(MAX_AGENTS)], instruments.len());
        let equity = portfolio.total().equity;
        Self {
            bucket: TokenBucket::new(config.orders_per_sec, config.order_burst),
            portfolio,
            instruments: instruments.to_vec(),
            markets: vec![MarketView::default(); instruments.len()],
            open: Vec::with_capacity(MAX_AGENTS * config.max_open_orders as usize + ORDERS_PER_EVENT),
            status: RiskStatus { peak_equity: equity, ..Default::default() },
            drawdown_warned: false,
            paused: [false; MAX_AGENTS],
            agent_ladder: [0; MAX_AGENTS],
            refusals: [0; RejectReason::COUNT],
            approved: 0,
            now: 0,
            flatten: operator::Flatten::default(),
            config,
        }
    }

    /// Makes this engine equal to `src`, keeping this one's allocations (snapshots).
    pub fn copy_from(&mut self, src: &Self) {
        let Self {
            config,
            portfolio,
            instruments,
            markets,
            open,
            bucket,
            status,
            drawdown_warned,
            paused,
            agent_ladder,
            refusals,
            approved,
            now,
            flatten,
        } = src;
        self.config.clone_from(config);
        self.portfolio.copy_from(portfolio);
        // Fixed for a run; cloning them would allocate their symbols afresh.
        if self.instruments != *instruments {
            crate::snapshot::copy_into(&mut self.instruments, instruments);
        }
        crate::snapshot::copy_into(&mut self.markets, markets);
        crate::snapshot::copy_into(&mut self.open, open);
        (self.bucket, self.status, self.drawdown_warned) = (*bucket, *status, *drawdown_warned);
        (self.paused, self.refusals, self.approved, self.now) = (*paused, *refusals, *approved, *now);
        self.flatten = *flatten;
        self.agent_ladder = *agent_ladder;
    }

    /// An agent's margin ladder level: 0 normal, 1 reduce-only, 2 deleverage.
    pub fn agent_ladder(&self, agent: AgentId) -> u8 {
        self.agent_ladder.get(agent.index()).copied().unwrap_or(0)
    }

    /// The portfolio.
    pub fn portfolio(&self) -> &Portfolio {
        &self.portfolio
    }

    /// Guard state.
    pub fn status(&self) -> RiskStatus {
        self.status
    }

    /// Refusals per reason code.
    pub fn refusals(&self) -> &[u64; RejectReason::COUNT] {
        &self.refusals
    }

    /// Orders approved.
    pub fn approved(&self) -> u64 {
        self.approved
    }

    /// Open orders, all agents.
    pub fn open_orders(&self) -> usize {
        self.open.len()
    }

    /// The configuration (as changed by Control events).
    pub fn config(&self) -> &RiskConfig {
        &self.config
    }

    /// A market update: remembers the view and marks positions to the mid.
    #[inline]
    pub fn on_market(&mut self, instrument: InstrumentId, m: &MarketView) {
        self.now = self.now.max(m.ts_event);
        if let Some(slot) = self.markets.get_mut(instrument.index()) {
            *slot = *m;
            if m.has_market {
                self.portfolio.mark(instrument, m.mid);
            }
        }
    }

    /// Advances event time (timers, controls).
    #[inline]
    pub fn advance(&mut self, ts: u64) {
        self.now = self.now.max(ts);
    }

    /// An execution report: fills move positions; terminal reports close the order.
    pub fn on_exec(&mut self, r: &ExecReport) {
        self.advance(r.ts_event);
        self.portfolio.apply(r);
        let intent_id = r.client_order_id & crate::router::INTENT_ID_MASK;
        if let Some(i) = self.open.iter().position(|o| o.intent_id == intent_id) {
            let terminal = matches!(r.kind, ExecKind::Fill | ExecKind::Canceled | ExecKind::Rejected);
            if terminal {
                self.open.swap_remove(i);
            } else {
                self.open[i].leaves = r.leaves_qty;
            }
        }
    }

    fn alert(&self, kind: AlertKind, agent: AgentId, value: i64, out: &mut RiskOutputBatch) {
        let _ = out.push(RiskOutput::Alert(RiskAlert { ts_event: self.now, kind, agent, value }));
    }

    fn cancel_all(&mut self, agent: AgentId, instrument: InstrumentId, orders: &mut OrderBatch) {
        let before = self.open.len();
        self.open.retain(|o| !((agent == ALL_AGENTS || o.agent == agent) && (instrument == ALL_INSTRUMENTS || o.instrument == instrument)));
        if self.open.len() != before {
            let _ = orders.push(Order { ts_event: self.now, action: OrderAction::CancelAll, agent, instrument, ..Order::default() });
        }
    }

    /// An operator command.
    pub fn on_control(&mut self, c: &Control, orders: &mut OrderBatch, out: &mut RiskOutputBatch) {
        self.advance(c.ts_event);
        match c.kind {
            ControlKind::Kill => {
                self.status.killed = true;
                self.cancel_all(ALL_AGENTS, ALL_INSTRUMENTS, orders);
                self.alert(AlertKind::Killed, ALL_AGENTS, 1, out);
            }
            ControlKind::Halt => {
                self.status.halted = true;
                self.alert(AlertKind::Halted, ALL_AGENTS, 1, out);
            }
            ControlKind::Resume => {
                self.status.killed = false;
                self.status.halted = false;
                self.status.drawdown_halted = false;
                self.drawdown_warned = false;
                self.status.peak_equity = self.portfolio.total().equity;
                self.alert(AlertKind::Resumed, ALL_AGENTS, 0, out);
            }
            ControlKind::PauseAgent | ControlKind::ResumeAgent => {
                if let Some(p) = self.paused.get_mut(c.agent.index()) {
                    let pause = c.kind == ControlKind::PauseAgent;
                    *p = pause;
                    if pause {
                        self.cancel_all(c.agent, ALL_INSTRUMENTS, orders);
                    }
                    self.alert(AlertKind::AgentPaused, c.agent, i64::from(pause), out);
                }
            }
            ControlKind::SetLimit => {
                let v = c.value;
                // A change applies only when the whole configuration stays valid: an operator
                // cannot set a limit the configuration file would have refused.
                let mut next = self.config.clone();
                let one_agent_budget = c.limit == LimitKind::AgentBudget && c.agent != ALL_AGENTS;
                let set = match c.limit {
                    LimitKind::AgentBudget if v > 0 => {
                        if !one_agent_budget {
                            next.agent_budget = Money::from_raw(v);
                        }
                        true
                    }
                    LimitKind::MaxPositionNotional if v >= 0 => {
                        next.max_position_notional = Money::from_raw(v);
                        true
                    }
                    LimitKind::MaxOrderNotional if v >= 0 => {
                        next.max_order_notional = Money::from_raw(v);
                        true
                    }
                    LimitKind::PriceBandBps if v >= 0 => {
                        next.price_band_bps = v;
                        true
                    }
                    LimitKind::MaxOpenOrders if v >= 0 => {
                        next.max_open_orders = u32::try_from(v).unwrap_or(u32::MAX);
                        true
                    }
                    LimitKind::StaleAfterNs if v >= 0 => {
                        next.stale_after_ns = v as u64;
                        true
                    }
                    LimitKind::DrawdownHaltBps if (0..=10_000).contains(&v) => {
                        next.drawdown_halt_bps = v;
                        true
                    }
                    _ => false,
                };
                let (agents, instruments) = (self.portfolio.agents(), self.portfolio.instruments());
                let budgets_fit = !one_agent_budget || {
                    let others: i128 = (0..agents)
                        .filter(|&a| a != c.agent.index())
                        .map(|a| i128::from(self.portfolio.budget(AgentId(a as u16)).raw))
                        .sum();
                    others + i128::from(v) <= i128::from(MONEY_HEADROOM.raw)
                };
                let applied = set && budgets_fit && next.validate(agents, instruments).is_ok();
                if applied {
                    if c.limit == LimitKind::AgentBudget {
                        let targets = if one_agent_budget { c.agent.index()..c.agent.index() + 1 } else { 0..agents };
                        for a in targets {
                            self.portfolio.set_budget(AgentId(a as u16), Money::from_raw(v));
                        }
                    }
                    self.config = next;
                    self.alert(AlertKind::LimitChanged, c.agent, v, out);
                }
            }
            // They make orders, whose ids need the inbound sequence: see `on_command`.
            ControlKind::Flatten | ControlKind::ManualOrder => {}
        }
    }

    /// Portfolio guards: drawdown and the margin ladder. Run at deterministic points.
    pub fn evaluate_guards(&mut self, seq: i64, orders: &mut OrderBatch, out: &mut RiskOutputBatch) {
        let total = self.portfolio.total();
        let s = &mut self.status;
        if total.equity > s.peak_equity {
            s.peak_equity = total.equity;
        }
        s.drawdown_bps = if s.peak_equity.raw > 0 { ratio_bps(s.peak_equity - total.equity, s.peak_equity) } else { 0 };
        let margin_used = Money::from_raw(total.gross_exposure.raw / self.config.leverage.max(1));
        s.margin_ratio_bps = if total.equity.raw > 0 {
            ratio_bps(margin_used, total.equity)
        } else if margin_used.raw > 0 {
            10_000
        } else {
            0
        };
        let (dd, ratio) = (s.drawdown_bps, s.margin_ratio_bps);
        if dd >= self.config.drawdown_halt_bps && !self.status.drawdown_halted {
            self.status.drawdown_halted = true;
            self.alert(AlertKind::DrawdownHalt, ALL_AGENTS, dd, out);
        } else if dd >= self.config.drawdown_warn_bps && !self.drawdown_warned {
            self.drawdown_warned = true;
            self.alert(AlertKind::DrawdownWarning, ALL_AGENTS, dd, out);
        } else if dd < self.config.drawdown_warn_bps / 2 {
            self.drawdown_warned = false;
        }
        let level = if ratio >= self.config.margin_deleverage_bps {
            2
        } else if ratio >= self.config.margin_reduce_only_bps {
            1
        } else {
            0
        };
        if level != self.status.ladder {
            if level > self.status.ladder {
                self.cancel_all(ALL_AGENTS, ALL_INSTRUMENTS, orders);
            }
            self.status.ladder = level;
            self.alert(AlertKind::MarginLadder, ALL_AGENTS, i64::from(level), out);
        }
        if level == 2 {
            self.deleverage(seq, orders);
        }
        self.evaluate_agent_ladders(seq, level, orders, out);
    }

    /// The margin ladder of each agent against its own budget: margin in use (exposure over
    /// leverage) as a share of the agent's budget, or of its equity once it has lost money. At the reduce-only level the agent's resting
    /// orders are cancelled and only reducing orders pass; at the deleverage level its largest
    /// position is cut, by an immediate-or-cancel order, to bring it back to the reduce-only
    /// level. An agent whose change does not fit this event's batches waits for the next
    /// evaluation; while the portfolio ladder itself deleverages, agents are not cut twice.
    fn evaluate_agent_ladders(&mut self, seq: i64, portfolio_level: u8, orders: &mut OrderBatch, out: &mut RiskOutputBatch) {
        let leverage = self.config.leverage.max(1);
        for a in 0..self.portfolio.agents().min(MAX_AGENTS) {
            let agent = AgentId(a as u16);
            let s = self.portfolio.agent_summary(agent);
            // Its budget, less what it has lost (its equity, once lower). The edge's
            // `agent_margin_utilization_ratio` divides by the same base, so the alerts on it
            // fire as the ladder acts.
            let base = s.equity.min(s.capital);
            let used = Money::from_raw(s.gross_exposure.raw / leverage);
            let ratio = if base.raw > 0 {
                ratio_bps(used, base)
            } else if used.raw > 0 {
                10_000
            } else {
                0
            };
            let level = if ratio >= self.config.margin_deleverage_bps {
                2
            } else if ratio >= self.config.margin_reduce_only_bps {
                1
            } else {
                0
            };
            let was = self.agent_ladder[a];
            if level != was {
                // Room for a cancel, a cut and the alert, or wait for the next evaluation.
                if orders.len() + 2 > ORDERS_PER_EVENT || out.len() >= RISK_OUTPUTS_PER_EVENT {
                    return;
                }
                if level > was {
                    self.cancel_all(agent, ALL_INSTRUMENTS, orders);
                }
                self.agent_ladder[a] = level;
                self.alert(AlertKind::AgentMarginLadder, agent, i64::from(level), out);
            }
            if level == 2 && portfolio_level < 2 {
                if orders.len() >= ORDERS_PER_EVENT {
                    return;
                }
                // Above the reduce-only level, back to it.
                let target = i128::from(base.raw) * i128::from(self.config.margin_reduce_only_bps) / 10_000 * i128::from(leverage);
                let excess = (i128::from(s.gross_exposure.raw) - target).max(0);
                self.cut_agent(seq, agent, excess, orders);
            }
        }
    }

    /// Cuts `agent`'s largest position by at least `excess` notional (whole lots, at most the
    /// position) with a reduce-only immediate-or-cancel order; nothing while the agent still
    /// has an order working (the previous cut), so a cut in flight is not sent twice.
    fn cut_agent(&mut self, seq: i64, agent: AgentId, excess: i128, orders: &mut OrderBatch) {
        if excess <= 0 || self.open.iter().any(|o| o.agent == agent) {
            return;
        }
        let mut largest: Option<(InstrumentId, Money)> = None;
        for i in 0..self.portfolio.instruments() {
            let inst = InstrumentId(i as u32);
            let pos = self.portfolio.position(agent, inst).qty;
            let exposure = notional(self.portfolio.mark_of(inst), pos.abs()).unwrap_or(Money::ZERO);
            if pos.raw != 0 && largest.is_none_or(|(_, e)| exposure > e) {
                largest = Some((inst, exposure));
            }
        }
        let Some((inst, _)) = largest else { return };
        let pos = self.portfolio.position(agent, inst).qty;
        let mark = self.portfolio.mark_of(inst);
        if mark.raw <= 0 {
            return;
        }
        let instrument = &self.instruments[inst.index()];
        let lot = instrument.lot_size.raw.max(1);
        // notional = price × qty / Quantity::SCALE, so qty = excess × SCALE / price, rounded up to lots.
        let raw = (excess * i128::from(Quantity::SCALE) + i128::from(mark.raw) - 1) / i128::from(mark.raw);
        let lots = (raw + i128::from(lot) - 1) / i128::from(lot);
        let cut = i64::try_from(lots * i128::from(lot)).unwrap_or(i64::MAX).min(pos.raw.abs());
        let side = if pos.raw > 0 { Side::Sell } else { Side::Buy };
        let m = self.markets[inst.index()];
        let price = if side == Side::Sell { m.bid } else { m.ask };
        // Every new order of one event needs its own, rising intent id (the router refuses a
        // repeat): a cut takes the tag after the last one this event's orders already use (a
        // flatten's, another agent's cut), from AGENT_CUT_TAG up; with none left, the next timer.
        let this_event = crate::router::intent_id(seq, 0) >> 8;
        let used = orders
            .as_slice()
            .iter()
            .filter(|o| o.action == OrderAction::New && o.intent_id >> 8 == this_event)
            .map(|o| o.intent_id as u8)
            .max();
        let tag = match used {
            Some(t) if t >= AGENT_CUT_TAG => t.saturating_add(1),
            _ => AGENT_CUT_TAG,
        };
        if tag == crate::router::GUARD_AGENT_TAG {
            return;
        }
        let intent_id = crate::router::intent_id(seq, tag);
        self.open.push(OpenOrder { intent_id, agent, instrument: inst, side, price, leaves: Quantity::from_raw(cut) });
        let _ = orders.push(Order {
            ts_event: self.now,
            intent_id,
            instrument: inst,
            agent,
            action: OrderAction::New,
            side,
            order_type: OrderType::Market,
            tif: TimeInForce::Ioc,
            reduce_only: true,
            price,
            qty: Quantity::from_raw(cut),
            ..Order::default()
        });
    }

    /// Cuts the largest position by a quarter with an immediate-or-cancel order.
    fn deleverage(&mut self, seq: i64, orders: &mut OrderBatch) {
        let mut largest: Option<(AgentId, InstrumentId, Money)> = None;
        for a in 0..self.portfolio.agents() {
            for i in 0..self.portfolio.instruments() {
                let (agent, inst) = (AgentId(a as u16), InstrumentId(i as u32));
                let pos = self.portfolio.position(agent, inst).qty;
                let exposure = notional(self.portfolio.mark_of(inst), pos.abs()).unwrap_or(Money::ZERO);
                if pos.raw != 0 && largest.is_none_or(|(_, _, e)| exposure > e) {
                    largest = Some((agent, inst, exposure));
                }
            }
        }
        let Some((agent, inst, _)) = largest else { return };
        let pos = self.portfolio.position(agent, inst).qty;
        let instrument = &self.instruments[inst.index()];
        let cut = instrument.round_lot_down(Quantity::from_raw(pos.raw.abs() / 4)).raw.max(instrument.lot_size.raw).min(pos.raw.abs());
        let side = if pos.raw > 0 { Side::Sell } else { Side::Buy };
        let m = self.markets[inst.index()];
        let price = if side == Side::Sell { m.bid } else { m.ask };
        let intent_id = crate::router::intent_id(seq, crate::router::GUARD_AGENT_TAG);
        self.open.push(OpenOrder { intent_id, agent, instrument: inst, side, price, leaves: Quantity::from_raw(cut) });
        let _ = orders.push(Order {
            ts_event: self.now,
            intent_id,
            instrument: inst,
            agent,
            action: OrderAction::New,
            side,
            order_type: OrderType::Market,
            tif: TimeInForce::Ioc,
            reduce_only: true,
            price,
            qty: Quantity::from_raw(cut),
            ..Order::default()
        });
    }

    fn refuse(&mut self, intent: &Intent, side: Side, qty: Quantity, reason: RejectReason, out: &mut RiskOutputBatch) {
        self.refusals[reason as usize] += 1;
        let _ = out.push(RiskOutput::Refusal(RiskRefusal {
            ts_event: intent.ts_event,
            intent_id: intent.intent_id,
            instrument: intent.instrument,
            agent: intent.agent,
            reason,
            side,
            price: intent.price,
            qty,
        }));
    }

    /// Notional of the agent's open orders.
    fn open_notional(&self, agent: AgentId) -> i64 {
        self.open.iter().filter(|o| o.agent == agent).map(|o| notional(o.price, o.leaves).map_or(0, |m| m.raw)).sum()
    }

    /// Checks an intent; approved orders go to `orders`, refusals to `out`.
    pub fn check(&mut self, intent: &Intent, orders: &mut OrderBatch, out: &mut RiskOutputBatch) {
        self.advance(intent.ts_event);
        let (agent, inst) = (intent.agent, intent.instrument);
        let Some(instrument) = self.instruments.get(inst.index()) else {
            return;
        };
        let (lot, min_notional, tick_ok) = (instrument.lot_size, instrument.min_notional, instrument.is_on_tick(intent.price));
        // Replace: whatever this agent has working in the instrument is cancelled first.
        self.cancel_all(agent, inst, orders);
        let pos = self.portfolio.position(agent, inst).qty;
        let delta = intent.target.raw - pos.raw;
        let qty = Quantity::from_raw(delta.abs() / lot.raw.max(1) * lot.raw.max(1));
        if qty.raw == 0 {
            return;
        }
        let side = if delta > 0 { Side::Buy } else { Side::Sell };
        let reduce_only = pos.raw != 0 && pos.raw.signum() != delta.signum() && qty.raw <= pos.raw.abs();
        let m = self.markets[inst.index()];
        let reason = self.first_breach(intent, &m, side, qty, pos, reduce_only, tick_ok, min_notional);
        if let Some(reason) = reason {
            self.refuse(intent, side, qty, reason, out);
            return;
        }
        self.bucket.take();
        self.approved += 1;
        self.open.push(OpenOrder { intent_id: intent.intent_id, agent, instrument: inst, side, price: intent.price, leaves: qty });
        let tif = match intent.style {
            ExecStyle::Aggressive => TimeInForce::Ioc,
            ExecStyle::Passive => TimeInForce::PostOnly,
        };
        let _ = orders.push(Order {
            ts_event: intent.ts_event,
            origin_recv: 0,
            client_order_id: 0,
            intent_id: intent.intent_id,
            instrument: inst,
            agent,
            action: OrderAction::New,
            side,
            order_type: OrderType::Limit,
            tif,
            reduce_only,
            _pad: 0,
            price: intent.price,
            qty,
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn first_breach(
        &mut self,
        intent: &Intent,
        m: &MarketView,
        side: Side,
        qty: Quantity,
        pos: Quantity,
        reduce_only: bool,
        tick_ok: bool,
        min_notional: Money,
    ) -> Option<RejectReason> {
        let agent = intent.agent;
        let s = self.status;
        if s.killed {
            return Some(RejectReason::KillSwitch);
        }
        if s.halted && !reduce_only {
            return Some(RejectReason::Halted);
        }
        if s.drawdown_halted && !reduce_only {
            return Some(RejectReason::Drawdown);
        }
        if self.paused.get(agent.index()).copied().unwrap_or(true) {
            return Some(RejectReason::AgentPaused);
        }
        if !m.has_market || m.mid.raw <= 0 {
            return Some(RejectReason::NoMarket);
        }
        if !m.in_sync {
            return Some(RejectReason::BookOutOfSync);
        }
        if self.now.saturating_sub(m.ts_last_update) > self.config.stale_after_ns {
            return Some(RejectReason::StaleData);
        }
        if s.ladder >= 1 && !reduce_only {
            return Some(RejectReason::ReduceOnly);
        }
        // The agent's own ladder: over its reduce-only level, nothing that adds margin.
        if self.agent_ladder.get(agent.index()).is_some_and(|&l| l >= 1) && !reduce_only {
            return Some(RejectReason::AgentBudget);
        }
        if !reduce_only && self.flatten.covers(agent, intent.instrument) {
            return Some(RejectReason::ReduceOnly);
        }
        if !tick_ok {
            return Some(RejectReason::TickSize);
        }
        let order_notional = notional(intent.price, qty).unwrap_or(Money::from_raw(i64::MAX));
        if order_notional < min_notional {
            return Some(RejectReason::MinNotional);
        }
        let off_mid = i128::from((intent.price.raw - m.mid.raw).abs()) * 10_000;
        if off_mid > i128::from(self.config.price_band_bps) * i128::from(m.mid.raw) {
            return Some(RejectReason::PriceBand);
        }
        if order_notional > self.config.max_order_notional {
            return Some(RejectReason::OrderNotional);
        }
        let new_pos = Quantity::from_raw(pos.raw + qty.raw * side.sign());
        let increases = new_pos.raw.abs() > pos.raw.abs();
        let mark = m.mid.max(intent.price);
        if increases && notional(mark, new_pos.abs()).unwrap_or(Money::from_raw(i64::MAX)) > self.config.max_position_notional {
            return Some(RejectReason::PositionLimit);
        }
        if !reduce_only {
            // Margin in use after this order: exposure and open orders over leverage.
            let summary = self.portfolio.agent_summary(agent);
            let leverage = self.config.leverage.max(1);
            let used = (summary.gross_exposure.raw + self.open_notional(agent) + order_notional.raw) / leverage;
            if used > summary.equity.raw {
                return Some(RejectReason::AgentBudget);
            }
        }
        let agent_open = self.open.iter().filter(|o| o.agent == agent).count();
        if agent_open >= self.config.max_open_orders as usize {
            return Some(RejectReason::OpenOrders);
        }
        if !self.bucket.has_token(self.now) {
            return Some(RejectReason::OrderRate);
        }
        None
    }
}

/// Sizes and alignments of this module's private archived state (snapshot layout fingerprint).
pub(crate) fn archived_layout() -> [(usize, usize); 2] {
    use rkyv::Archived;
    use std::mem::{align_of, size_of};
    [
        (size_of::<Archived<OpenOrder>>(), align_of::<Archived<OpenOrder>>()),
        (size_of::<Archived<TokenBucket>>(), align_of::<Archived<TokenBucket>>()),
    ]
}

/// Operator orders: flatten and manual orders.
mod operator;
pub use operator::{Flatten, FLATTEN_TAG};

#[cfg(test)]
mod tests;
