//! [`EdgeState`]: what the edge knows about the running engine, kept in atomics.
//!
//! The edge thread is the only writer ([`EdgeState::apply`], one engine output at a time);
//! HTTP handlers read. Counters and totals are atomics; the recent orders, fills, signals,
//! risk events, equity points and the positions sit in preallocated rings behind short
//! mutexes (see [`history`](super::history)): the write side never allocates and holds a lock
//! only for the copy of one record, and the engine never sees this type: it writes its
//! outputs into a bounded ring that the edge drains (ARCHITECTURE.md rule 7). Values are
//! individually consistent, not a transaction: a dashboard may see equity from one timer and
//! fees from the next, which is fine for a view.

use super::health::HealthSource;
use super::history::History;
use sapphire_core::aggregate::MAX_AGENTS;
use sapphire_core::board::{MarketBoard, Top};
use sapphire_core::engine::{EngineOutput, Output};
use sapphire_core::event::{AgentId, ExecKind, ExecReport, RejectReason, Signal};
use sapphire_core::fixed::{Money, Price, Quantity};
use sapphire_core::instrument::InstrumentId;
use sapphire_core::latency::{LatencyReader, LatencySnapshot};
use sapphire_core::order::{Order, OrderAction};
use sapphire_core::pipeline::PipelineStats;
use sapphire_core::portfolio::{PnlSummary, Position};
use sapphire_core::risk::{AlertKind, RiskAlert, RiskEngine, RiskOutput};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

const R: Ordering = Ordering::Relaxed;

/// A [`PnlSummary`] in atomics (raw fixed-point values).
#[derive(Debug, Default)]
struct PnlCell {
    realized: AtomicI64,
    unrealized: AtomicI64,
    fees: AtomicI64,
    capital: AtomicI64,
    equity: AtomicI64,
    gross_exposure: AtomicI64,
    /// Event time of the snapshot (0: never reported).
    ts_event: AtomicU64,
}

impl PnlCell {
    fn store(&self, ts_event: u64, s: &PnlSummary) {
        self.realized.store(s.realized.raw, R);
        self.unrealized.store(s.unrealized.raw, R);
        self.fees.store(s.fees.raw, R);
        self.capital.store(s.capital.raw, R);
        self.equity.store(s.equity.raw, R);
        self.gross_exposure.store(s.gross_exposure.raw, R);
        self.ts_event.store(ts_event, R);
    }

    fn load(&self) -> (u64, PnlSummary) {
        let m = |a: &AtomicI64| Money::from_raw(a.load(R));
        let s = PnlSummary {
            realized: m(&self.realized),
            unrealized: m(&self.unrealized),
            fees: m(&self.fees),
            capital: m(&self.capital),
            equity: m(&self.equity),
            gross_exposure: m(&self.gross_exposure),
        };
        (self.ts_event.load(R), s)
    }
}

/// One agent's margin, derived from its totals: used = exposure / leverage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentMargin {
    /// The agent's margin budget, less what it has lost (its equity, once lower): what the
    /// engine's per-agent ladder measures margin against (`RiskEngine`'s ladder in
    /// core/src/risk.rs), so the alerts on these figures fire when the ladder acts.
    pub budget: Money,
    /// Margin in use.
    pub used: Money,
    /// `budget - used` (negative when over budget).
    pub remaining: Money,
}

impl AgentMargin {
    /// Used over budget; with no budget left, 1 while any margin is used (as the ladder
    /// counts it), else 0.
    pub fn utilization(&self) -> f64 {
        if self.budget.raw > 0 {
            self.used.raw as f64 / self.budget.raw as f64
        } else if self.used.raw > 0 {
            1.0
        } else {
            0.0
        }
    }
}

/// Guard state as the edge has seen it through risk alerts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RiskFlags {
    /// Kill switch on.
    pub killed: bool,
    /// Halted by an operator.
    pub halted: bool,
    /// Halted by the drawdown guard.
    pub drawdown_halted: bool,
    /// Margin ladder level: 0 normal, 1 reduce-only, 2 deleverage.
    pub ladder: u8,
    /// Bit `n` set: agent `n` is paused.
    pub paused: u32,
    /// The alert that last stopped trading (kill, operator halt, drawdown halt), if any.
    pub stopped_by: Option<AlertKind>,
}

/// Orders kept for `/api/orders` and the dashboard.
pub const ORDER_HISTORY: usize = 2_048;
/// Fills kept for `/api/trades`.
pub const FILL_HISTORY: usize = 2_048;
/// Signals kept for `/api/signals`.
pub const SIGNAL_HISTORY: usize = 2_048;
/// Refusals and guard alerts kept for `/api/risk`.
pub const RISK_HISTORY: usize = 1_024;
/// Equity points kept (one per [`EQUITY_POINT_EVERY_NS`] of event time: about 68 minutes).
pub const EQUITY_HISTORY: usize = 4_096;
/// Event time between two kept equity points (PnL arrives at every timer, 10 per second by
/// default; the chart needs one a second).
pub const EQUITY_POINT_EVERY_NS: u64 = 1_000_000_000;
/// How many of the newest orders an execution report is matched against for its status.
const ORDER_STATUS_SCAN: usize = 512;

/// An order as sent, with what its execution reports said since.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct OrderRecord {
    /// Inbound sequence that caused it.
    pub(crate) seq: i64,
    pub(crate) order: Order,
    /// The last report's kind (`None`: no report yet).
    pub(crate) status: Option<ExecKind>,
    /// Quantity filled so far.
    pub(crate) filled: Quantity,
    /// Why, when rejected or cancelled by the venue.
    pub(crate) reason: RejectReason,
}

/// A fill.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FillRecord {
    pub(crate) seq: i64,
    pub(crate) report: ExecReport,
}

/// A signal as the engine saw it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SignalRecord {
    pub(crate) seq: i64,
    pub(crate) signal: Signal,
    /// False when the engine ignored it (unknown agent or instrument, expired).
    pub(crate) taken: bool,
}

/// A refusal or guard alert.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RiskRecord {
    pub(crate) seq: i64,
    pub(crate) risk: RiskOutput,
}

/// Portfolio totals at one timer.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct EquityPoint {
    pub(crate) ts_event: u64,
    pub(crate) total: PnlSummary,
}

/// One agent's position in one instrument, as the edge has tracked it from fills.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PositionView {
    /// The agent.
    pub agent: AgentId,
    /// The instrument (registry index).
    pub instrument: InstrumentId,
    /// Quantity, average price, realized PnL and fees.
    pub position: Position,
    /// The instrument's mid from the market board when one is attached, otherwise our last
    /// fill price (or the mark at recovery); zero when none is known.
    pub mark: Price,
}

/// The registered [`HealthSource`]s (their `Debug` lists the names).
#[derive(Default)]
struct Sources(RwLock<Vec<Arc<dyn HealthSource>>>);

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sources = self.0.read().unwrap_or_else(|e| e.into_inner());
        f.debug_list().entries(sources.iter().map(|s| s.name().to_string())).finish()
    }
}

/// What the edge knows about the engine, for the HTTP API. See the module docs.
#[derive(Debug)]
pub struct EdgeState {
    pipeline: Arc<PipelineStats>,
    latency: Vec<LatencyReader>,
    leverage: i64,
    symbols: Vec<String>,
    /// Per instrument (registry order): the book is in sync. Written by whoever owns book
    /// sync (feed clients); the synthetic market's books are always in sync.
    books_in_sync: Box<[AtomicBool]>,
    /// The pipeline's threads run (set after start, cleared when shutdown begins).
    core_running: AtomicBool,
    orders: AtomicU64,
    cancels: AtomicU64,
    fills: AtomicU64,
    refusals: [AtomicU64; RejectReason::COUNT],
    alerts: AtomicU64,
    /// New orders minus orders that ended (filled, cancelled, rejected).
    open_orders: AtomicI64,
    total: PnlCell,
    peak_equity: AtomicI64,
    agents: [PnlCell; MAX_AGENTS],
    killed: AtomicBool,
    halted: AtomicBool,
    drawdown_halted: AtomicBool,
    ladder: AtomicU8,
    paused: AtomicU32,
    /// `AlertKind as u8 + 1` of what last stopped trading; 0 none.
    stopped_by: AtomicU8,
    signals_taken: AtomicU64,
    signals_ignored: AtomicU64,
    orders_history: History<OrderRecord>,
    fills_history: History<FillRecord>,
    signals_history: History<SignalRecord>,
    risk_history: History<RiskRecord>,
    equity_history: History<EquityPoint>,
    /// Event time of the last kept equity point (edge thread only).
    last_equity_point: AtomicU64,
    /// `positions[agent * instruments + instrument]`, applied from fills.
    positions: Mutex<Box<[Position]>>,
    /// Per instrument: last fill price (raw).
    last_price: Box<[AtomicI64]>,
    /// Bumped on every change of `positions`, so a stream sends them only when they moved.
    positions_version: AtomicU64,
    sources: Sources,
    /// Tops of book, when the run attached the book stage's board.
    board: OnceLock<Arc<MarketBoard>>,
    /// Wall-clock start (ns), telling a reconnecting page that ids restarted.
    instance: u64,
    /// Per instrument: the shard (core) that trades it, when known; set once at start.
    instrument_shards: OnceLock<Vec<String>>,
    /// Names of agents by id, as the run's summary prints them (set once at start).
    agent_names: OnceLock<Vec<String>>,
    /// The API's inbound ring is the engine's own (`sapphire run`): its sequences are the
    /// engine's, so an operator order's outcome can be found by sequence, and instrument ids
    /// are the engine's. False where control is forwarded to cores elsewhere.
    engine_in_process: AtomicBool,
}

impl EdgeState {
    /// A state for a pipeline with these counters and latency readers, trading `symbols`
    /// (registry order) at `leverage`. Books start in sync; the core starts not running.
    pub fn new(pipeline: Arc<PipelineStats>, latency: Vec<LatencyReader>, symbols: Vec<String>, leverage: i64) -> Self {
        let instruments = symbols.len();
        Self {
            pipeline,
            latency,
            leverage: leverage.max(1),
            books_in_sync: symbols.iter().map(|_| AtomicBool::new(true)).collect(),
            symbols,
            core_running: AtomicBool::new(false),
            orders: AtomicU64::new(0),
            cancels: AtomicU64::new(0),
            fills: AtomicU64::new(0),
            refusals: std::array::from_fn(|_| AtomicU64::new(0)),
            alerts: AtomicU64::new(0),
            open_orders: AtomicI64::new(0),
            total: PnlCell::default(),
            peak_equity: AtomicI64::new(0),
            agents: std::array::from_fn(|_| PnlCell::default()),
            killed: AtomicBool::new(false),
            halted: AtomicBool::new(false),
            drawdown_halted: AtomicBool::new(false),
            ladder: AtomicU8::new(0),
            paused: AtomicU32::new(0),
            stopped_by: AtomicU8::new(0),
            signals_taken: AtomicU64::new(0),
            signals_ignored: AtomicU64::new(0),
            orders_history: History::new(ORDER_HISTORY),
            fills_history: History::new(FILL_HISTORY),
            signals_history: History::new(SIGNAL_HISTORY),
            risk_history: History::new(RISK_HISTORY),
            equity_history: History::new(EQUITY_HISTORY),
            last_equity_point: AtomicU64::new(0),
            positions: Mutex::new(vec![Position::default(); MAX_AGENTS * instruments].into_boxed_slice()),
            last_price: (0..instruments).map(|_| AtomicI64::new(0)).collect(),
            positions_version: AtomicU64::new(0),
            sources: Sources::default(),
            board: OnceLock::new(),
            instance: sapphire_core::latency::unix_nanos(),
            instrument_shards: OnceLock::new(),
            agent_names: OnceLock::new(),
            engine_in_process: AtomicBool::new(false),
        }
    }

    /// Starts from the risk engine's state (after recovery, before the pipeline runs), so
    /// totals, guard flags and open orders are right before the first timer. Counters
    /// (orders, fills, refusals) count this process, as Prometheus counters do.
    pub fn seed_from(&self, risk: &RiskEngine) {
        let pf = risk.portfolio();
        self.total.store(0, &pf.total());
        for (a, cell) in self.agents.iter().enumerate().take(pf.agents()) {
            cell.store(0, &pf.agent_summary(sapphire_core::event::AgentId(a as u16)));
        }
        let s = risk.status();
        self.peak_equity.store(s.peak_equity.raw, R);
        self.killed.store(s.killed, R);
        self.halted.store(s.halted, R);
        self.drawdown_halted.store(s.drawdown_halted, R);
        self.ladder.store(s.ladder, R);
        self.open_orders.store(risk.open_orders() as i64, R);
        let instruments = self.symbols.len();
        let mut positions = self.lock_positions();
        for a in 0..pf.agents().min(MAX_AGENTS) {
            for i in 0..instruments.min(pf.instruments()) {
                positions[a * instruments + i] = pf.position(AgentId(a as u16), InstrumentId(i as u32));
            }
        }
        drop(positions);
        for (i, last) in self.last_price.iter().enumerate() {
            last.store(pf.mark_of(InstrumentId(i as u32)).raw, R);
        }
        self.positions_version.fetch_add(1, R);
    }

    fn lock_positions(&self) -> std::sync::MutexGuard<'_, Box<[Position]>> {
        // Positions are plain values: a panic elsewhere cannot leave one half-written.
        self.positions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one engine output (edge thread only). Never allocates; holds a history's lock
    /// only for the copy of one record.
    pub fn apply(&self, out: &Output) {
        let seq = out.seq;
        match out.output {
            EngineOutput::Order(o) => {
                if o.action == OrderAction::New {
                    self.orders.fetch_add(1, R);
                    self.open_orders.fetch_add(1, R);
                } else {
                    self.cancels.fetch_add(1, R);
                }
                self.orders_history.push(OrderRecord { seq, order: o, ..OrderRecord::default() });
            }
            EngineOutput::Exec(r) => {
                if r.last_qty.raw > 0 {
                    self.fills.fetch_add(1, R);
                    self.on_fill(&r);
                    self.fills_history.push(FillRecord { seq, report: r });
                }
                if matches!(r.kind, ExecKind::Fill | ExecKind::Canceled | ExecKind::Rejected) {
                    self.open_orders.fetch_sub(1, R);
                }
                // The order's status: a late ack never hides a fill.
                self.orders_history.update_recent(ORDER_STATUS_SCAN, |rec| {
                    let hit = rec.order.client_order_id == r.client_order_id && rec.order.action == OrderAction::New;
                    if hit {
                        if r.kind != ExecKind::Ack || rec.status.is_none() {
                            rec.status = Some(r.kind);
                        }
                        rec.filled += r.last_qty;
                        if r.reason != RejectReason::None {
                            rec.reason = r.reason;
                        }
                    }
                    hit
                });
            }
            EngineOutput::Risk(risk) => {
                match risk {
                    RiskOutput::Refusal(r) => {
                        if let Some(cell) = self.refusals.get(r.reason as usize) {
                            cell.fetch_add(1, R);
                        }
                    }
                    RiskOutput::Alert(a) => self.on_alert(&a),
                }
                self.risk_history.push(RiskRecord { seq, risk });
            }
            EngineOutput::Pnl { ts_event, total } => {
                self.total.store(ts_event, &total);
                self.peak_equity.fetch_max(total.equity.raw, R);
                let last = self.last_equity_point.load(R);
                if last == 0 || ts_event >= last.saturating_add(EQUITY_POINT_EVERY_NS) || ts_event < last {
                    self.last_equity_point.store(ts_event.max(1), R);
                    self.equity_history.push(EquityPoint { ts_event, total });
                }
            }
            EngineOutput::AgentPnl { ts_event, agent, summary } => {
                if let Some(cell) = self.agents.get(agent.index()) {
                    cell.store(ts_event, &summary);
                }
            }
            EngineOutput::Signal { signal, taken } => {
                if taken {
                    self.signals_taken.fetch_add(1, R);
                } else {
                    self.signals_ignored.fetch_add(1, R);
                }
                self.signals_history.push(SignalRecord { seq, signal, taken });
            }
        }
    }

    fn on_fill(&self, r: &ExecReport) {
        let instruments = self.symbols.len();
        if r.agent.index() >= MAX_AGENTS || r.instrument.index() >= instruments {
            return;
        }
        if let Some(last) = self.last_price.get(r.instrument.index()) {
            last.store(r.price.raw, R);
        }
        let mut positions = self.lock_positions();
        positions[r.agent.index() * instruments + r.instrument.index()].apply_fill(r.side, r.last_qty, r.price, r.fee);
        drop(positions);
        self.positions_version.fetch_add(1, R);
    }

    fn on_alert(&self, a: &RiskAlert) {
        self.alerts.fetch_add(1, R);
        let stop = |kind: AlertKind| self.stopped_by.store(kind as u8 + 1, R);
        match a.kind {
            AlertKind::DrawdownWarning
            | AlertKind::LimitChanged
            | AlertKind::Flattening
            | AlertKind::Flattened
            | AlertKind::AgentMarginLadder => {}
            AlertKind::DrawdownHalt => {
                self.drawdown_halted.store(true, R);
                stop(a.kind);
            }
            AlertKind::MarginLadder => self.ladder.store(a.value.clamp(0, 255) as u8, R),
            AlertKind::Killed => {
                self.killed.store(true, R);
                stop(a.kind);
            }
            AlertKind::Halted => {
                self.halted.store(true, R);
                stop(a.kind);
            }
            AlertKind::Resumed => {
                self.killed.store(false, R);
                self.halted.store(false, R);
                self.drawdown_halted.store(false, R);
                self.stopped_by.store(0, R);
                // The risk engine restarts the drawdown from here.
                self.peak_equity.store(self.total.equity.load(R), R);
            }
            AlertKind::AgentPaused => {
                if let Some(bit) = 1u32.checked_shl(u32::from(a.agent.0)) {
                    if a.value == 1 {
                        self.paused.fetch_or(bit, R);
                    } else {
                        self.paused.fetch_and(!bit, R);
                    }
                }
            }
        }
    }

    /// Says that the API's inbound ring feeds this process's engine (see the field).
    pub fn set_engine_in_process(&self, yes: bool) {
        self.engine_in_process.store(yes, Ordering::Release);
    }

    /// Whether the API's inbound ring feeds this process's engine.
    pub fn engine_in_process(&self) -> bool {
        self.engine_in_process.load(Ordering::Acquire)
    }

    /// Marks the core as running (after the pipeline started) or not (shutdown began).
    pub fn set_core_running(&self, running: bool) {
        self.core_running.store(running, Ordering::Release);
    }

    /// Whether the core runs.
    pub fn core_running(&self) -> bool {
        self.core_running.load(Ordering::Acquire)
    }

    /// Records whether an instrument's book is in sync (index in registry order).
    pub fn set_book_in_sync(&self, instrument: usize, in_sync: bool) {
        if let Some(flag) = self.books_in_sync.get(instrument) {
            flag.store(in_sync, Ordering::Release);
        }
    }

    /// Symbols whose books are out of sync.
    pub fn books_out_of_sync(&self) -> Vec<&str> {
        // With the book stage's board attached, its view counts too: a book that has not had
        // its first update yet, or that the feed marked out of sync (a gap, a reconnect,
        // waiting for a snapshot), is not ready to trade on.
        let board = self.board.get();
        self.symbols
            .iter()
            .zip(self.books_in_sync.iter())
            .enumerate()
            .filter(|(i, (_, f))| {
                !f.load(Ordering::Acquire) || board.is_some_and(|b| !b.read(InstrumentId(*i as u32)).is_some_and(|t| t.in_sync))
            })
            .map(|(_, (s, _))| s.as_str())
            .collect()
    }

    /// The pipeline's live counters.
    pub fn pipeline(&self) -> &PipelineStats {
        &self.pipeline
    }

    /// Latency percentiles per stage, as last published by the stages.
    pub fn latency(&self) -> Vec<LatencySnapshot> {
        self.latency.iter().map(|r| r.snapshot()).collect()
    }

    /// New orders routed.
    pub fn orders(&self) -> u64 {
        self.orders.load(R)
    }

    /// Cancels routed.
    pub fn cancels(&self) -> u64 {
        self.cancels.load(R)
    }

    /// Fills.
    pub fn fills(&self) -> u64 {
        self.fills.load(R)
    }

    /// Guard alerts.
    pub fn alerts(&self) -> u64 {
        self.alerts.load(R)
    }

    /// Refusals of one reason.
    pub fn refusals(&self, reason: RejectReason) -> u64 {
        self.refusals.get(reason as usize).map_or(0, |c| c.load(R))
    }

    /// Refusals of every reason.
    pub fn refusals_total(&self) -> u64 {
        self.refusals.iter().map(|c| c.load(R)).sum()
    }

    /// Orders working at the venue, as far as the edge can tell.
    pub fn open_orders(&self) -> u64 {
        self.open_orders.load(R).max(0) as u64
    }

    /// Portfolio totals at the last timer, with its event time.
    pub fn total(&self) -> (u64, PnlSummary) {
        self.total.load()
    }

    /// Peak equity the drawdown is measured from.
    pub fn peak_equity(&self) -> Money {
        Money::from_raw(self.peak_equity.load(R))
    }

    /// Drawdown from peak equity, in percent.
    pub fn drawdown_pct(&self) -> f64 {
        let peak = self.peak_equity.load(R);
        let equity = self.total.equity.load(R);
        if peak > 0 && equity < peak {
            (peak - equity) as f64 * 100.0 / peak as f64
        } else {
            0.0
        }
    }

    /// Agents the engine tracks (those with a budget or a report).
    pub fn agents(&self) -> impl Iterator<Item = (u16, u64, PnlSummary)> + '_ {
        self.agents.iter().enumerate().filter_map(|(a, cell)| {
            let (ts, s) = cell.load();
            (s.capital.raw != 0 || ts != 0).then_some((a as u16, ts, s))
        })
    }

    /// An agent's margin from its totals.
    pub fn margin(&self, s: &PnlSummary) -> AgentMargin {
        let used = Money::from_raw(s.gross_exposure.raw / self.leverage);
        let budget = s.capital.min(s.equity);
        AgentMargin { budget, used, remaining: Money::from_raw(budget.raw.saturating_sub(used.raw)) }
    }

    /// Registers a part's readiness check and metrics (see [`HealthSource`]).
    pub fn add_source(&self, source: Arc<dyn HealthSource>) {
        self.sources.0.write().unwrap_or_else(|e| e.into_inner()).push(source);
    }

    /// The registered sources, in registration order.
    pub fn sources(&self) -> Vec<Arc<dyn HealthSource>> {
        self.sources.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Attaches the book stage's market board (tops of book for marks and the feed view);
    /// the first one attached stays.
    pub fn attach_board(&self, board: Arc<MarketBoard>) {
        let _ = self.board.set(board);
    }

    /// An instrument's latest top of book, when a board is attached and has published it.
    pub fn top(&self, instrument: InstrumentId) -> Option<Top> {
        self.board.get().and_then(|b| b.read(instrument))
    }

    /// Names the shard (core) of each instrument, in registry order (index = instrument id),
    /// so history rows say which core they came from. Once; later calls are ignored.
    pub fn set_instrument_shards(&self, shards: Vec<String>) {
        let _ = self.instrument_shards.set(shards);
    }

    /// Names agents by id (index = id), as the process's configuration knows them: the
    /// dashboard and the API then say `momentum-2` rather than `agent-2`. Set once.
    pub fn set_agent_names(&self, names: Vec<String>) {
        let _ = self.agent_names.set(names);
    }

    /// An agent's name, when known.
    pub fn agent_name(&self, id: u16) -> Option<&str> {
        self.agent_names.get().and_then(|n| n.get(usize::from(id))).map(String::as_str)
    }

    /// The shard that trades `instrument`, when known.
    pub fn shard_of(&self, instrument: sapphire_core::instrument::InstrumentId) -> Option<&str> {
        self.instrument_shards.get().and_then(|s| s.get(instrument.index())).map(String::as_str)
    }

    /// Traded symbols, in registry order (index = instrument id).
    pub fn symbols(&self) -> &[String] {
        &self.symbols
    }

    /// Whether each symbol's book is in sync, in registry order.
    pub fn books_in_sync(&self) -> impl Iterator<Item = (&str, bool)> + '_ {
        self.symbols.iter().zip(self.books_in_sync.iter()).map(|(s, f)| (s.as_str(), f.load(Ordering::Acquire)))
    }

    /// Signals the engine took and ignored.
    pub fn signals(&self) -> (u64, u64) {
        (self.signals_taken.load(R), self.signals_ignored.load(R))
    }

    /// Positions that are open or have traded, agent by agent.
    pub fn positions(&self) -> Vec<PositionView> {
        let instruments = self.symbols.len().max(1);
        // Only the live entries are copied under the lock (the table is agents × instruments,
        // mostly flat with a venue's whole symbol list).
        let live: Vec<(usize, Position)> =
            self.lock_positions().iter().enumerate().filter(|(_, p)| p.qty.raw != 0 || p.traded.raw != 0).map(|(i, p)| (i, *p)).collect();
        live.into_iter()
            .map(|(i, position)| {
                let instrument = InstrumentId((i % instruments) as u32);
                let last_fill = Price::from_raw(self.last_price.get(instrument.index()).map_or(0, |a| a.load(R)));
                PositionView {
                    agent: AgentId((i / instruments) as u16),
                    instrument,
                    position,
                    mark: self.top(instrument).and_then(|t| t.mid()).unwrap_or(last_fill),
                }
            })
            .collect()
    }

    /// Changes with every change of [`positions`](Self::positions).
    pub fn positions_version(&self) -> u64 {
        self.positions_version.load(R)
    }

    /// When this state was made (wall clock, ns): record ids restart with it.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    pub(crate) fn orders_history(&self) -> &History<OrderRecord> {
        &self.orders_history
    }

    pub(crate) fn fills_history(&self) -> &History<FillRecord> {
        &self.fills_history
    }

    pub(crate) fn signals_history(&self) -> &History<SignalRecord> {
        &self.signals_history
    }

    pub(crate) fn risk_history(&self) -> &History<RiskRecord> {
        &self.risk_history
    }

    pub(crate) fn equity_history(&self) -> &History<EquityPoint> {
        &self.equity_history
    }

    /// Guard flags.
    pub fn risk_flags(&self) -> RiskFlags {
        let stopped_by = match self.stopped_by.load(R) {
            0 => None,
            n => Some(alert_kind(n - 1)),
        };
        RiskFlags {
            killed: self.killed.load(R),
            halted: self.halted.load(R),
            drawdown_halted: self.drawdown_halted.load(R),
            ladder: self.ladder.load(R),
            paused: self.paused.load(R),
            stopped_by,
        }
    }
}

fn alert_kind(code: u8) -> AlertKind {
    match code {
        1 => AlertKind::DrawdownHalt,
        2 => AlertKind::MarginLadder,
        3 => AlertKind::Killed,
        4 => AlertKind::Halted,
        5 => AlertKind::Resumed,
        6 => AlertKind::AgentPaused,
        7 => AlertKind::LimitChanged,
        _ => AlertKind::DrawdownWarning,
    }
}
