//! The engine stages — book → aggregate → risk → route — and the fused engine that runs
//! them in sequence on one thread.
//!
//! Each stage owns its state and sees every inbound event as a [`StageMsg`], which the
//! stages before it have annotated (market view, intents, orders). In the split layout the
//! messages travel between stage threads over SPSC rings; fused, the same calls happen in
//! a row. Either way the outputs are identical, because the one backward flow — paper fills
//! from the route stage to the portfolio in the risk stage — is applied only at *sync
//! points* (an event carrying intents, a timer, a control, an execution report), and at a
//! sync point for event `n` the risk stage first takes every report the route stage made
//! for events before `n`. Decisions therefore see exact positions, and the engine stays a
//! pure function of the inbound sequence.

use crate::aggregate::{AggregateConfig, Aggregator, IntentBatch, MAX_AGENTS};
use crate::board::{MarketBoard, Top};
use crate::book::{DeltaOutcome, OrderBook};
use crate::event::{AgentId, BookDelta, Event, ExecReport, Quote, Signal, DELTA_LAST};
use crate::instrument::{Instrument, InstrumentId};
use crate::matching::{MatchingConfig, PaperMatcher};
use crate::order::Order;
use crate::portfolio::PnlSummary;
use crate::risk::{OrderBatch, RiskConfig, RiskEngine, RiskOutput, RiskOutputBatch};
use crate::router::Router;
use crate::strategy::MarketView;
use std::sync::Arc;

/// Where approved orders go.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VenueMode {
    /// The in-engine matching simulator fills them (paper trading, replay).
    #[default]
    Paper,
    /// The outbound queue to real venues; fills come back as ExecReport events.
    External,
}

/// Everything the engine needs to decide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Signal aggregation.
    pub aggregate: AggregateConfig,
    /// Limits and guards.
    pub risk: RiskConfig,
    /// Paper venue.
    pub matching: MatchingConfig,
    /// Paper or external routing.
    pub venue: VenueMode,
    /// Run epoch in client order ids.
    pub order_id_epoch: u16,
    /// Agents tracked (≤ MAX_AGENTS).
    pub agents: usize,
    /// Book levels preallocated per side.
    pub book_levels: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            aggregate: AggregateConfig::default(),
            risk: RiskConfig::default(),
            matching: MatchingConfig::default(),
            venue: VenueMode::Paper,
            order_id_epoch: 1,
            agents: MAX_AGENTS,
            book_levels: 1_024,
        }
    }
}

/// One inbound event on its way through the stages, with what each stage added.
#[derive(Clone, Copy, Debug, Default)]
pub struct StageMsg {
    /// Inbound ring sequence.
    pub seq: i64,
    /// The inbound event.
    pub event: Event,
    /// Set by the book stage when the event changed an instrument's market.
    pub market_update: Option<InstrumentId>,
    /// That instrument's market after the event.
    pub market: MarketView,
    /// Set by the aggregate stage.
    pub intents: IntentBatch,
    /// Set by the risk stage: approved orders and cancels.
    pub orders: OrderBatch,
    /// Set by the risk stage: refusals and guard alerts.
    pub risk: RiskOutputBatch,
    /// Set by the risk stage at timers: portfolio totals.
    pub pnl: Option<PnlSummary>,
    /// Set by the risk stage at timers: one agent's totals, agents in turn (one per timer
    /// keeps this message, copied per hop in the split layout, small).
    pub agent_pnl: Option<(AgentId, PnlSummary)>,
    /// Set by the aggregate stage for an inbound agent signal: whether it was taken.
    pub signal_taken: Option<bool>,
}

impl StageMsg {
    /// Reuses the message for the next inbound event without touching the inline arrays.
    #[inline]
    pub fn reset(&mut self, seq: i64, event: &Event) {
        self.seq = seq;
        self.event = *event;
        self.market_update = None;
        self.intents.clear();
        self.orders.clear();
        self.risk.clear();
        self.pnl = None;
        self.agent_pnl = None;
        self.signal_taken = None;
    }
}

/// What the engine emits, in order, for the edge (journal, sinks, dashboard).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineOutput {
    /// An order or cancel sent to a venue.
    Order(Order),
    /// An execution report (paper fills, or a venue's report passed through).
    Exec(ExecReport),
    /// A refusal or guard alert.
    Risk(RiskOutput),
    /// Portfolio totals at a timer.
    Pnl {
        /// Event time.
        ts_event: u64,
        /// Totals.
        total: PnlSummary,
    },
    /// An agent's signal as the engine saw it (for the edge: signal history, attribution).
    Signal {
        /// The signal.
        signal: Signal,
        /// False when it was ignored (unknown agent or instrument, or past its time-to-live).
        taken: bool,
    },
    /// One agent's totals at a timer; agents take turns, one per timer (margin and PnL per
    /// agent for the edge: dashboard, metrics).
    AgentPnl {
        /// Event time.
        ts_event: u64,
        /// The agent.
        agent: AgentId,
        /// Its totals (`capital` is its margin budget).
        summary: PnlSummary,
    },
}

impl Default for EngineOutput {
    fn default() -> Self {
        EngineOutput::Risk(RiskOutput::default())
    }
}

/// An engine output with the inbound sequence that caused it.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Inbound sequence.
    pub seq: i64,
    /// What was emitted.
    pub output: EngineOutput,
}

/// Receives engine outputs. Implementations must not block (the engine never waits for the edge).
pub trait OutputSink {
    /// One output.
    fn emit(&mut self, out: Output);
}

impl OutputSink for Vec<Output> {
    fn emit(&mut self, out: Output) {
        self.push(out);
    }
}

/// Receives orders for external venues. Returns the order when the queue is full.
pub trait OrderSink {
    /// One order.
    fn send(&mut self, order: Order) -> Result<(), Order>;
}

impl OrderSink for Vec<Order> {
    fn send(&mut self, order: Order) -> Result<(), Order> {
        self.push(order);
        Ok(())
    }
}

/// Counters of the book stage.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BookCounters {
    /// Deltas applied.
    pub deltas: u64,
    /// Sequence gaps (book marked out of sync).
    pub gaps: u64,
    /// Deltas older than the book, ignored.
    pub stale: u64,
    /// Events for unknown instruments, ignored.
    pub unknown_instrument: u64,
}

/// Book stage: owns the L2 books and the last quote per instrument.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug)]
pub struct BookStage {
    books: Vec<OrderBook>,
    quotes: Vec<Quote>,
    last_trade: Vec<crate::fixed::Price>,
    imbalance_levels: usize,
    /// Where each instrument's top is published for readers off the hot path (agents, the
    /// tick publisher); none in replays and tests. Not part of a snapshot: a restored engine
    /// attaches its own.
    #[rkyv(with = rkyv::with::Skip)]
    board: Option<Arc<MarketBoard>>,
    /// Counters.
    pub counters: BookCounters,
}

impl BookStage {
    /// Books for `instruments`.
    pub fn new(instruments: usize, levels: usize, imbalance_levels: usize) -> Self {
        Self {
            books: (0..instruments).map(|_| OrderBook::with_capacity(levels)).collect(),
            quotes: vec![Quote::default(); instruments],
            last_trade: vec![crate::fixed::Price::default(); instruments],
            imbalance_levels,
            board: None,
            counters: BookCounters::default(),
        }
    }

    /// Books for `instruments`, each windowed by its tick size (see [`OrderBook::with_tick`]).
    pub fn for_instruments(instruments: &[Instrument], levels: usize, imbalance_levels: usize) -> Self {
        let mut stage = Self::new(instruments.len(), levels, imbalance_levels);
        stage.books = instruments.iter().map(|i| OrderBook::with_tick(levels, i.tick_size)).collect();
        stage
    }

    /// Publishes every market update's top of book to `board` from now on.
    pub fn attach_board(&mut self, board: Arc<MarketBoard>) {
        self.board = Some(board);
    }

    fn publish_top(&self, board: &MarketBoard, instrument: InstrumentId, ts: u64) {
        let i = instrument.index();
        let book = &self.books[i];
        let q = &self.quotes[i];
        let (bid, ask) = match (book.best_bid(), book.best_ask()) {
            (Some(b), Some(a)) => ((b.price, b.qty), (a.price, a.qty)),
            _ => ((q.bid_price, q.bid_qty), (q.ask_price, q.ask_qty)),
        };
        board.publish(
            instrument,
            &Top {
                bid: bid.0,
                bid_qty: bid.1,
                ask: ask.0,
                ask_qty: ask.1,
                last_trade: self.last_trade[i],
                ts_event: ts,
                updates: 0,
                in_sync: book.in_sync(),
            },
        );
    }

    /// The L2 book of an instrument.
    pub fn book(&self, instrument: InstrumentId) -> Option<&OrderBook> {
        self.books.get(instrument.index())
    }

    fn view(&self, instrument: InstrumentId, ts: u64, settled: bool) -> MarketView {
        let book = &self.books[instrument.index()];
        let q = &self.quotes[instrument.index()];
        match (book.best_bid(), book.best_ask()) {
            (Some(b), Some(a)) => MarketView {
                ts_event: ts,
                bid: b.price,
                ask: a.price,
                mid: book.mid().unwrap_or_default(),
                microprice: book.microprice().unwrap_or_default(),
                imbalance_bps: book.imbalance_bps(self.imbalance_levels) as i32,
                has_market: true,
                in_sync: book.in_sync(),
                settled,
                ts_last_update: book.ts_last_update(),
            },
            _ => {
                let has = q.bid_price.raw > 0 && q.ask_price > q.bid_price;
                let total = i128::from(q.bid_qty.raw) + i128::from(q.ask_qty.raw);
                let mid = crate::fixed::Price::from_raw(((i128::from(q.bid_price.raw) + i128::from(q.ask_price.raw)) / 2) as i64);
                MarketView {
                    ts_event: ts,
                    bid: q.bid_price,
                    ask: q.ask_price,
                    mid: if has { mid } else { Default::default() },
                    microprice: if has && total > 0 {
                        crate::fixed::Price::from_raw(
                            ((i128::from(q.bid_price.raw) * i128::from(q.ask_qty.raw)
                                + i128::from(q.ask_price.raw) * i128::from(q.bid_qty.raw))
                                / total) as i64,
                        )
                    } else {
                        mid
                    },
                    imbalance_bps: if total > 0 {
                        ((i128::from(q.bid_qty.raw) - i128::from(q.ask_qty.raw)) * 10_000 / total) as i32
                    } else {
                        0
                    },
                    has_market: has,
                    in_sync: book.in_sync(),
                    settled,
                    ts_last_update: q.ts_event.max(book.ts_last_update()),
                }
            }
        }
    }

    /// Applies one level of a venue message that is not its last (a `BookDelta` without
    /// `DELTA_LAST`): the book changes, nothing else happens (the book is not consistent yet,
    /// so no view is taken). Exactly what [`process`](Self::process) does with such a delta.
    #[inline]
    pub fn apply_level(&mut self, d: &BookDelta) {
        let Some(book) = self.books.get_mut(d.instrument.index()) else {
            self.counters.unknown_instrument += 1;
            return;
        };
        match book.apply_delta(d) {
            DeltaOutcome::Applied => self.counters.deltas += 1,
            DeltaOutcome::Gap => {
                self.counters.deltas += 1;
                self.counters.gaps += 1;
            }
            DeltaOutcome::Stale => self.counters.stale += 1,
        }
    }

    /// Applies market data and annotates the message with the market view.
    #[inline]
    pub fn process(&mut self, msg: &mut StageMsg) {
        let (instrument, ts, settled) = match &msg.event {
            Event::BookDelta(d) => {
                let Some(book) = self.books.get_mut(d.instrument.index()) else {
                    self.counters.unknown_instrument += 1;
                    return;
                };
                match book.apply_delta(d) {
                    DeltaOutcome::Applied => self.counters.deltas += 1,
                    DeltaOutcome::Gap => {
                        self.counters.deltas += 1;
                        self.counters.gaps += 1;
                    }
                    DeltaOutcome::Stale => {
                        self.counters.stale += 1;
                        return;
                    }
                }
                if d.flags & DELTA_LAST == 0 {
                    // Mid-message: the book is not consistent yet, nobody should look at it.
                    return;
                }
                (d.instrument, d.ts_event, true)
            }
            Event::Quote(q) => {
                let Some(slot) = self.quotes.get_mut(q.instrument.index()) else {
                    self.counters.unknown_instrument += 1;
                    return;
                };
                *slot = *q;
                (q.instrument, q.ts_event, true)
            }
            Event::Trade(t) => {
                let Some(book) = self.books.get_mut(t.instrument.index()) else {
                    self.counters.unknown_instrument += 1;
                    return;
                };
                book.touch(t.ts_event);
                self.last_trade[t.instrument.index()] = t.price;
                (t.instrument, t.ts_event, true)
            }
            _ => return,
        };
        msg.market_update = Some(instrument);
        msg.market = self.view(instrument, ts, settled);
        if let Some(board) = &self.board {
            self.publish_top(board, instrument, ts);
        }
    }
}

/// Aggregate stage: in-core strategies and agent signals → intents.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug)]
pub struct AggregateStage {
    /// The aggregator.
    pub aggregator: Aggregator,
}

impl AggregateStage {
    /// Runs the strategies for market updates and takes agent signals.
    #[inline]
    pub fn process(&mut self, msg: &mut StageMsg) {
        if let Some(instrument) = msg.market_update {
            if msg.market.settled {
                self.aggregator.on_market(msg.seq, instrument, &msg.market, &mut msg.intents);
            }
        }
        if let Event::Signal(s) = &msg.event {
            msg.signal_taken = Some(self.aggregator.on_signal(msg.seq, s, &mut msg.intents));
        }
    }
}

/// Risk stage: owns the portfolio and the limits.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug)]
pub struct RiskStage {
    /// The risk engine.
    pub risk: RiskEngine,
    /// Paper reports received from the route stage, applied at the next sync point.
    pending: Vec<ExecReport>,
    /// The agent whose totals the next timer reports.
    next_agent: usize,
}

impl RiskStage {
    /// True when this message needs exact positions (and so the route stage's reports).
    #[inline]
    pub fn is_sync_point(msg: &StageMsg) -> bool {
        !msg.intents.is_empty() || matches!(msg.event, Event::Timer(_) | Event::Control(_) | Event::ExecReport(_))
    }

    /// Queues a report from the route stage (applied at the next sync point).
    #[inline]
    pub fn take_feedback(&mut self, report: ExecReport) {
        self.pending.push(report);
    }

    /// Checks intents, runs guards, applies reports. The caller has delivered, through
    /// [`take_feedback`](Self::take_feedback), every report made for events before this one
    /// if [`is_sync_point`](Self::is_sync_point).
    #[inline]
    pub fn process(&mut self, msg: &mut StageMsg) {
        if let Some(instrument) = msg.market_update {
            self.risk.on_market(instrument, &msg.market);
        }
        if !Self::is_sync_point(msg) {
            return;
        }
        for r in self.pending.drain(..) {
            self.risk.on_exec(&r);
        }
        match &msg.event {
            Event::ExecReport(r) => self.risk.on_exec(r),
            Event::Control(c) => self.risk.on_command(msg.seq, c, &mut msg.orders, &mut msg.risk),
            Event::Timer(t) => {
                self.risk.advance(t.ts_event);
                self.risk.flatten_at_timer(msg.seq, &mut msg.orders, &mut msg.risk);
                self.risk.evaluate_guards(msg.seq, &mut msg.orders, &mut msg.risk);
                let portfolio = self.risk.portfolio();
                msg.pnl = Some(portfolio.total());
                if portfolio.agents() > 0 {
                    let agent = AgentId((self.next_agent % portfolio.agents()) as u16);
                    msg.agent_pnl = Some((agent, portfolio.agent_summary(agent)));
                    self.next_agent = (self.next_agent + 1) % portfolio.agents();
                }
            }
            _ => {}
        }
        for intent in msg.intents.as_slice() {
            self.risk.check(intent, &mut msg.orders, &mut msg.risk);
        }
    }
}

/// Counters of the route stage.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteCounters {
    /// Orders and cancels routed.
    pub orders: u64,
    /// Fills (paper or venue).
    pub fills: u64,
    /// Orders the outbound queue could not take (reported back as rejected).
    pub outbound_full: u64,
    /// Outputs the last event made (recovery from a snapshot checks that the output journal
    /// holds all of its event's).
    pub last_event_outputs: u32,
}

/// Counts the outputs passed on to a sink.
struct Counted<'a, S> {
    sink: &'a mut S,
    n: u32,
}

impl<S: OutputSink> OutputSink for Counted<'_, S> {
    #[inline]
    fn emit(&mut self, out: Output) {
        self.n += 1;
        self.sink.emit(out);
    }
}

/// Route stage: client order ids, the paper matcher or the outbound queue, outputs.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug)]
pub struct RouteStage {
    router: Router,
    matcher: PaperMatcher,
    mode: VenueMode,
    reports: Vec<ExecReport>,
    /// Counters.
    pub counters: RouteCounters,
}

impl RouteStage {
    /// The paper matcher.
    pub fn matcher(&self) -> &PaperMatcher {
        &self.matcher
    }

    /// A level in the middle of a venue message: the paper matcher's book takes it (it makes
    /// no report before the message's last level). Exactly what [`process`](Self::process)
    /// does with such a delta and no orders.
    #[inline]
    pub fn apply_level(&mut self, event: &Event) {
        if self.mode == VenueMode::Paper {
            self.reports.clear();
            self.matcher.on_event(event, &mut self.reports);
            debug_assert!(self.reports.is_empty(), "the matcher reported on a mid-message level");
        }
    }

    /// Sends the message's orders and works the paper book; every report made is handed to
    /// `feedback` (for the risk stage) and every output to `sink`.
    #[inline]
    pub fn process(
        &mut self,
        msg: &StageMsg,
        outbound: &mut impl OrderSink,
        sink: &mut impl OutputSink,
        mut feedback: impl FnMut(ExecReport),
    ) {
        let seq = msg.seq;
        let now = msg.event.ts_event();
        let sink = &mut Counted { sink, n: 0 };
        self.reports.clear();
        for order in msg.orders.as_slice() {
            let mut order = *order;
            if !self.router.route(&mut order) {
                continue;
            }
            order.origin_recv = msg.event.ts_recv();
            self.counters.orders += 1;
            sink.emit(Output { seq, output: EngineOutput::Order(order) });
            match self.mode {
                VenueMode::Paper => self.matcher.submit(&order, now, &mut self.reports),
                VenueMode::External => {
                    if let Err(order) = outbound.send(order) {
                        self.counters.outbound_full += 1;
                        self.reports.push(ExecReport {
                            ts_event: now,
                            ts_recv: now,
                            instrument: order.instrument,
                            agent: order.agent,
                            kind: crate::event::ExecKind::Rejected,
                            side: order.side,
                            reason: crate::event::RejectReason::VenueRateLimited,
                            client_order_id: order.client_order_id,
                            price: order.price,
                            leaves_qty: order.qty,
                            ..ExecReport::default()
                        });
                    }
                }
            }
        }
        if self.mode == VenueMode::Paper {
            self.matcher.on_event(&msg.event, &mut self.reports);
        }
        for r in &self.reports {
            if r.last_qty.raw > 0 {
                self.counters.fills += 1;
            }
            feedback(*r);
            sink.emit(Output { seq, output: EngineOutput::Exec(*r) });
        }
        if let Event::ExecReport(r) = &msg.event {
            if r.last_qty.raw > 0 {
                self.counters.fills += 1;
            }
            sink.emit(Output { seq, output: EngineOutput::Exec(*r) });
        }
        for r in msg.risk.as_slice() {
            sink.emit(Output { seq, output: EngineOutput::Risk(*r) });
        }
        if let Some(total) = msg.pnl {
            sink.emit(Output { seq, output: EngineOutput::Pnl { ts_event: now, total } });
        }
        if let Some((agent, summary)) = msg.agent_pnl {
            sink.emit(Output { seq, output: EngineOutput::AgentPnl { ts_event: now, agent, summary } });
        }
        if let (Some(taken), Event::Signal(signal)) = (msg.signal_taken, &msg.event) {
            sink.emit(Output { seq, output: EngineOutput::Signal { signal: *signal, taken } });
        }
        self.counters.last_event_outputs = sink.n;
    }
}

/// The four stages of one engine, built from one configuration.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug)]
pub struct Stages {
    /// Book stage.
    pub book: BookStage,
    /// Aggregate stage.
    pub aggregate: AggregateStage,
    /// Risk stage.
    pub risk: RiskStage,
    /// Route stage.
    pub route: RouteStage,
}

impl Stages {
    /// Builds the stages for `instruments`.
    pub fn new(config: &EngineConfig, instruments: &[Instrument]) -> Self {
        Self {
            book: BookStage::for_instruments(instruments, config.book_levels, config.aggregate.imbalance_levels),
            aggregate: AggregateStage { aggregator: Aggregator::new(config.aggregate.clone(), instruments) },
            risk: RiskStage {
                risk: RiskEngine::new(config.risk.clone(), instruments, config.agents),
                pending: Vec::with_capacity(4_096),
                next_agent: 0,
            },
            route: RouteStage {
                router: Router::new(config.order_id_epoch),
                matcher: PaperMatcher::for_instruments(config.matching.clone(), instruments, config.book_levels),
                mode: config.venue,
                reports: Vec::with_capacity(1_024),
                counters: RouteCounters::default(),
            },
        }
    }
}

impl Stages {
    /// The shortcut for a book level in the middle of a venue message (a `BookDelta` without
    /// `DELTA_LAST`, which every feed adapter sets on a message's last level and the journal
    /// keeps): until the last level the book is not consistent, so nobody decides on it —
    /// the book stage (and, paper trading, the matcher's book) takes the level and
    /// aggregation, risk and routing run once, on the last level. [`process`](Self::process)
    /// would do exactly this with such a delta (no market view, no intents, no sync point, no
    /// output); the shortcut skips the message set-up and the stages' checks. Returns false,
    /// doing nothing, for any other event: pass that one to `process`.
    #[inline]
    pub fn apply_level(&mut self, event: &Event) -> bool {
        match event {
            Event::BookDelta(d) if d.flags & DELTA_LAST == 0 => {
                self.book.apply_level(d);
                self.route.apply_level(event);
                true
            }
            _ => false,
        }
    }

    /// Runs one message through book → aggregate → risk → route on the calling thread; the
    /// route stage's paper reports go straight back to the risk stage.
    #[inline]
    pub fn process(&mut self, msg: &mut StageMsg, outbound: &mut impl OrderSink, sink: &mut impl OutputSink) {
        self.book.process(msg);
        self.aggregate.process(msg);
        self.risk.process(msg);
        let risk = &mut self.risk;
        self.route.process(msg, outbound, sink, |r| risk.take_feedback(r));
    }
}

/// The fused engine: all four stages on the calling thread.
#[derive(Clone, Debug)]
pub struct Engine {
    /// The stages.
    pub stages: Stages,
    msg: StageMsg,
    processed: u64,
}

impl Engine {
    /// An engine for `instruments`.
    pub fn new(config: &EngineConfig, instruments: &[Instrument]) -> Self {
        Self { stages: Stages::new(config, instruments), msg: StageMsg::default(), processed: 0 }
    }

    /// An engine that carries on from `stages` (rebuilt by recovery).
    pub fn from_stages(stages: Stages) -> Self {
        Self { stages, msg: StageMsg::default(), processed: 0 }
    }

    /// Runs one inbound event through book → aggregate → risk → route.
    #[inline]
    pub fn process(&mut self, seq: i64, event: &Event, outbound: &mut impl OrderSink, sink: &mut impl OutputSink) {
        if !self.stages.apply_level(event) {
            self.msg.reset(seq, event);
            self.stages.process(&mut self.msg, outbound, sink);
        }
        self.processed += 1;
    }

    /// Events processed.
    pub fn processed(&self) -> u64 {
        self.processed
    }
}

/// Snapshots: copying the stages' state in place, its canonical form, restoring it.
mod state;
