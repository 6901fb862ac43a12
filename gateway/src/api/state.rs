//! [`EdgeState`]: what the edge knows about the running engine, kept in atomics.
//!
//! The edge thread is the only writer ([`EdgeState::apply`], one engine output at a time);
//! HTTP handlers read. Nothing here locks or allocates on the write side, and the engine
//! never sees this type: it writes its outputs into a bounded ring that the edge drains
//! (ARCHITECTURE.md rule 7). Values are individually consistent, not a transaction: a
//! dashboard may see equity from one timer and fees from the next, which is fine for a view.

use sapphire_core::aggregate::MAX_AGENTS;
use sapphire_core::engine::{EngineOutput, Output};
use sapphire_core::event::{ExecKind, RejectReason};
use sapphire_core::fixed::Money;
use sapphire_core::latency::{LatencyReader, LatencySnapshot};
use sapphire_core::order::OrderAction;
use sapphire_core::pipeline::PipelineStats;
use sapphire_core::portfolio::PnlSummary;
use sapphire_core::risk::{AlertKind, RiskAlert, RiskEngine, RiskOutput};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

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
    /// The agent's margin budget.
    pub budget: Money,
    /// Margin in use.
    pub used: Money,
    /// `budget - used` (negative when over budget).
    pub remaining: Money,
}

impl AgentMargin {
    /// Used over budget, 0 when there is no budget.
    pub fn utilization(&self) -> f64 {
        if self.budget.raw > 0 {
            self.used.raw as f64 / self.budget.raw as f64
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
}

impl EdgeState {
    /// A state for a pipeline with these counters and latency readers, trading `symbols`
    /// (registry order) at `leverage`. Books start in sync; the core starts not running.
    pub fn new(pipeline: Arc<PipelineStats>, latency: Vec<LatencyReader>, symbols: Vec<String>, leverage: i64) -> Self {
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
    }

    /// Takes one engine output (edge thread only). Never locks, never allocates.
    pub fn apply(&self, out: &Output) {
        match out.output {
            EngineOutput::Order(o) => {
                if o.action == OrderAction::New {
                    self.orders.fetch_add(1, R);
                    self.open_orders.fetch_add(1, R);
                } else {
                    self.cancels.fetch_add(1, R);
                }
            }
            EngineOutput::Exec(r) => {
                if r.last_qty.raw > 0 {
                    self.fills.fetch_add(1, R);
                }
                if matches!(r.kind, ExecKind::Fill | ExecKind::Canceled | ExecKind::Rejected) {
                    self.open_orders.fetch_sub(1, R);
                }
            }
            EngineOutput::Risk(RiskOutput::Refusal(r)) => {
                if let Some(cell) = self.refusals.get(r.reason as usize) {
                    cell.fetch_add(1, R);
                }
            }
            EngineOutput::Risk(RiskOutput::Alert(a)) => self.on_alert(&a),
            EngineOutput::Pnl { ts_event, total } => {
                self.total.store(ts_event, &total);
                self.peak_equity.fetch_max(total.equity.raw, R);
            }
            EngineOutput::AgentPnl { ts_event, agent, summary } => {
                if let Some(cell) = self.agents.get(agent.index()) {
                    cell.store(ts_event, &summary);
                }
            }
            EngineOutput::Signal { .. } => {}
        }
    }

    fn on_alert(&self, a: &RiskAlert) {
        self.alerts.fetch_add(1, R);
        let stop = |kind: AlertKind| self.stopped_by.store(kind as u8 + 1, R);
        match a.kind {
            AlertKind::DrawdownWarning | AlertKind::LimitChanged => {}
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
        self.symbols.iter().zip(self.books_in_sync.iter()).filter(|(_, f)| !f.load(Ordering::Acquire)).map(|(s, _)| s.as_str()).collect()
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
        AgentMargin { budget: s.capital, used, remaining: Money::from_raw(s.capital.raw.saturating_sub(used.raw)) }
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
