//! The [`OrderGateway`]: engine orders out to a venue, execution reports back into the ring.
//!
//! Orders are handled one at a time in queue order (a cancel-all followed by a new order
//! on the same instrument must reach the venue in that order). Each new order is checked
//! against its instrument's filters (refused here with `LotSize`/`TickSize`/`MinNotional`,
//! no request sent), placed, and its answer turned into reports: `Ack`, then `PartialFill` /
//! `Fill` for what executed, `Canceled` for an IOC remainder, `Rejected` with the venue's
//! reason. A placement whose outcome is unknown (timeout, lost connection, 5xx) is queried
//! by client order id until the venue says what happened; an order the venue does not know
//! once the request's `recvWindow` has passed (it can no longer be accepted) is reported
//! rejected. Nothing is ever resent.
//!
//! Fills come from the venue's push stream when there is one (Binance user-data stream,
//! Bybit private stream: [`OrderGateway::with_user_updates`]); while no stream is up, working
//! orders are polled every `poll_interval`. Bybit's executions carry the fill's fee and
//! liquidity and are reported as they come; an order's cumulative state (pushed or polled)
//! reports only the quantity no execution has covered, so nothing counts twice.
//!
//! Reconciliation ([`OrderGateway::reconcile`], at start and every `reconcile_interval`)
//! adopts the venue's open orders, and — with the engine's positions attached
//! ([`OrderGateway::with_engine_positions`]) — its futures positions: a difference that holds
//! for `position_settle` with no fill reported meanwhile is evented into the ring as a
//! position adjustment ([`position_adjustment`]), which the engine books like a fill.

use super::user_stream::UserUpdate;
use super::{check_filters, client_order_id, ExecutionVenue, OrderRequest, VenueError, VenueExecution, VenueOrder, VenueOrderStatus};
use sapphire_core::event::{AgentId, Event, ExecKind, ExecReport, Liquidity, RejectReason};
use sapphire_core::fixed::{Money, Price, Quantity};
use sapphire_core::instrument::{Instrument, InstrumentId};
use sapphire_core::order::{Order, OrderAction};
use sapphire_core::release::OrderSource;
use sapphire_core::ring::{Poll, Producer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The agent id that means every agent (the risk engine's kill switch).
const ALL_AGENTS: AgentId = AgentId(u16::MAX);
/// The instrument id that means every instrument.
const ALL_INSTRUMENTS: InstrumentId = InstrumentId(u32::MAX);

/// How the gateway behaves.
#[derive(Debug, Clone)]
pub struct OrderGatewayConfig {
    /// Sleep between polls of an empty outbound queue.
    pub idle_sleep: Duration,
    /// Queries made right away for an order in unknown state (more follow at each poll).
    pub unknown_queries: u32,
    /// Wait before each of those queries.
    pub unknown_backoff: Duration,
    /// How long after sending an order the venue's "no such order" is final (Binance: the
    /// request's `recvWindow`, past which it would refuse the request).
    pub unknown_settle: Duration,
    /// Working orders are queried this often for fills (no user-data stream yet).
    pub poll_interval: Duration,
    /// The venue's clock offset is measured this often (and after a timestamp refusal).
    pub time_sync_interval: Duration,
    /// [`OrderGateway::reconcile`] runs at start and then this often.
    pub reconcile_interval: Duration,
    /// A position difference is adopted only when it is the same this long apart, with no
    /// fill reported for the instrument meanwhile (fills in flight to the engine settle).
    pub position_settle: Duration,
}

impl Default for OrderGatewayConfig {
    fn default() -> Self {
        Self {
            idle_sleep: Duration::from_micros(200),
            unknown_queries: 5,
            unknown_backoff: Duration::from_millis(200),
            unknown_settle: Duration::from_secs(6),
            poll_interval: Duration::from_secs(1),
            time_sync_interval: Duration::from_secs(600),
            reconcile_interval: Duration::from_secs(60),
            position_settle: Duration::from_secs(2),
        }
    }
}

/// What the gateway has done; shared with whoever watches it.
#[derive(Debug)]
pub struct OrderGatewayStats {
    /// New orders taken from the queue.
    pub orders: AtomicU64,
    /// New orders refused by the filters before sending.
    pub filtered: AtomicU64,
    /// Orders the venue acknowledged.
    pub acked: AtomicU64,
    /// Orders rejected by the venue (or the unknown-state path).
    pub rejected: AtomicU64,
    /// Fill reports published.
    pub fills: AtomicU64,
    /// Cancel reports published.
    pub canceled: AtomicU64,
    /// Placements whose outcome was unknown.
    pub unknown: AtomicU64,
    /// Unknown placements resolved by a query.
    pub resolved: AtomicU64,
    /// Times the inbound ring was full when publishing a report (it was retried).
    pub ring_full: AtomicU64,
    /// Reports that could not be published because the gateway was stopped with a full ring.
    pub dropped: AtomicU64,
    /// Differences found by [`OrderGateway::reconcile`] (adopted or closed orders).
    pub reconciled: AtomicU64,
    /// Reconciliation: our open orders at the venue that were not tracked (now tracked).
    pub orders_adopted: AtomicU64,
    /// Reconciliation: tracked orders the venue no longer works (their fills and cancels reported).
    pub orders_closed: AtomicU64,
    /// Reconciliation: position comparisons made (one per instrument per pass).
    pub position_checks: AtomicU64,
    /// Reconciliation: position differences seen (each pass that sees one counts it).
    pub position_differences: AtomicU64,
    /// Reconciliation: position differences adopted (an adjustment evented into the ring).
    pub positions_adopted: AtomicU64,
    /// Reconciliation: differences that could not be adopted for want of a price.
    pub positions_unpriced: AtomicU64,
    /// Reconciliation passes that failed (the venue did not answer).
    pub reconcile_failures: AtomicU64,
    /// Fills reported from the venue's executions (with their fees).
    pub executions: AtomicU64,
    /// Executions already reported (the same execution pushed again, or quantity a
    /// cumulative update had reported first; its fee is then lost and counted here).
    pub executions_skipped: AtomicU64,
    /// Clock syncs that failed.
    pub time_sync_failures: AtomicU64,
    /// Order-to-ack latency (taking the order off the queue → the venue's answer), µs.
    ack_latency_us: Mutex<hdrhistogram::Histogram<u64>>,
}

impl Default for OrderGatewayStats {
    fn default() -> Self {
        // 1 µs .. 60 s at 3 significant digits: valid bounds, so this cannot fail.
        let histogram = hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
        Self {
            orders: AtomicU64::new(0),
            filtered: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            fills: AtomicU64::new(0),
            canceled: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            resolved: AtomicU64::new(0),
            ring_full: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reconciled: AtomicU64::new(0),
            orders_adopted: AtomicU64::new(0),
            orders_closed: AtomicU64::new(0),
            position_checks: AtomicU64::new(0),
            position_differences: AtomicU64::new(0),
            positions_adopted: AtomicU64::new(0),
            positions_unpriced: AtomicU64::new(0),
            reconcile_failures: AtomicU64::new(0),
            executions: AtomicU64::new(0),
            executions_skipped: AtomicU64::new(0),
            time_sync_failures: AtomicU64::new(0),
            ack_latency_us: Mutex::new(histogram),
        }
    }
}

/// Order-to-ack latency percentiles, µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AckLatency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Largest.
    pub max_us: u64,
}

impl OrderGatewayStats {
    fn record_ack(&self, since: Instant) {
        let us = (since.elapsed().as_micros() as u64).clamp(1, 60_000_000);
        let mut h = self.ack_latency_us.lock().unwrap_or_else(|p| p.into_inner());
        let _ = h.record(us);
    }

    /// Order-to-ack latency so far.
    pub fn ack_latency(&self) -> AckLatency {
        let h = self.ack_latency_us.lock().unwrap_or_else(|p| p.into_inner());
        AckLatency { count: h.len(), p50_us: h.value_at_quantile(0.5), p99_us: h.value_at_quantile(0.99), max_us: h.max() }
    }

    /// Writes the counters as `sapphire_venue_*` metrics.
    pub fn encode(&self, m: &mut crate::api::MetricsWriter<'_>) {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        m.counter("sapphire_venue_orders_total", "New orders taken from the engine's outbound queue.", r(&self.orders));
        m.counters(
            "sapphire_venue_reports_total",
            "Execution reports published into the inbound ring, by kind.",
            [("ack", r(&self.acked)), ("fill", r(&self.fills)), ("canceled", r(&self.canceled)), ("rejected", r(&self.rejected))]
                .map(|(kind, n)| ([("kind", kind)], n)),
        );
        m.counter("sapphire_venue_filtered_total", "Orders refused by the instrument's filters before sending.", r(&self.filtered));
        m.counter("sapphire_venue_unknown_total", "Placements whose outcome was unknown (queried, never resent).", r(&self.unknown));
        m.counter("sapphire_venue_executions_total", "Fills reported from the venue's executions, with their fees.", r(&self.executions));
        m.counter(
            "sapphire_venue_executions_skipped_total",
            "Executions already reported (pushed again, or covered by a cumulative update first).",
            r(&self.executions_skipped),
        );
        m.counters(
            "sapphire_venue_reconcile_orders_total",
            "Open-order differences found by reconciliation, by resolution.",
            [("adopted", r(&self.orders_adopted)), ("closed", r(&self.orders_closed))].map(|(o, n)| ([("outcome", o)], n)),
        );
        m.counter("sapphire_venue_reconcile_position_checks_total", "Position comparisons (instrument × pass).", r(&self.position_checks));
        m.counter(
            "sapphire_venue_reconcile_position_differences_total",
            "Passes that found the venue's position different from the engine's.",
            r(&self.position_differences),
        );
        m.counters(
            "sapphire_venue_reconcile_positions_total",
            "Position differences resolved, by outcome.",
            [("adopted", r(&self.positions_adopted)), ("unpriced", r(&self.positions_unpriced))].map(|(o, n)| ([("outcome", o)], n)),
        );
        m.counter(
            "sapphire_venue_reconcile_failures_total",
            "Reconciliation passes the venue did not answer.",
            r(&self.reconcile_failures),
        );
        m.counter("sapphire_venue_ring_full_total", "Times the inbound ring was full when publishing a report.", r(&self.ring_full));
        m.counter("sapphire_venue_time_sync_failures_total", "Clock syncs with the venue that failed.", r(&self.time_sync_failures));
        let lat = self.ack_latency();
        m.gauge("sapphire_venue_ack_latency_p99_seconds", "Order-to-ack latency, 99th percentile.", lat.p99_us as f64 / 1e6);
    }
}

/// The engine's positions as the edge has tracked them from the engine's outputs, for
/// position reconciliation. `sapphire run` passes its `EdgeState`.
pub trait EnginePositions: Send + Sync + std::fmt::Debug {
    /// Every non-flat position: (agent, instrument, signed quantity).
    fn positions(&self) -> Vec<(AgentId, InstrumentId, Quantity)>;
    /// The engine's mark of an instrument (its mid); zero when none is known.
    fn mark(&self, instrument: InstrumentId) -> Price;
}

impl EnginePositions for crate::api::EdgeState {
    fn positions(&self) -> Vec<(AgentId, InstrumentId, Quantity)> {
        crate::api::EdgeState::positions(self)
            .into_iter()
            .filter(|p| p.position.qty.raw != 0)
            .map(|p| (p.agent, p.instrument, p.position.qty))
            .collect()
    }

    fn mark(&self, instrument: InstrumentId) -> Price {
        self.top(instrument).and_then(|t| t.mid()).unwrap_or(Price::ZERO)
    }
}

/// The client order id of a position adjustment. Router ids are `epoch << 48 | sequence << 8
/// | agent`: this one would need epoch 65535, the 2⁴⁰-th event and the guard tag, so no order
/// is matched or closed by it.
pub const ADJUSTMENT_CLIENT_ORDER_ID: u64 = u64::MAX;

/// The report that moves `agent`'s position in `instrument` by `delta` (signed) at `price`:
/// a fill without an order (`PartialFill`, client order id [`ADJUSTMENT_CLIENT_ORDER_ID`],
/// no fee, no liquidity). The engine's portfolio books it like any fill — at the mark, so
/// equity does not jump — and the edge's positions, the dashboard, the sink and a replay see
/// it the same way.
pub fn position_adjustment(agent: AgentId, instrument: InstrumentId, delta: Quantity, price: Price) -> ExecReport {
    let now = sapphire_core::latency::unix_nanos();
    ExecReport {
        ts_event: now,
        ts_recv: now,
        instrument,
        agent,
        kind: ExecKind::PartialFill,
        side: if delta.raw >= 0 { sapphire_core::event::Side::Buy } else { sapphire_core::event::Side::Sell },
        client_order_id: ADJUSTMENT_CLIENT_ORDER_ID,
        price,
        last_qty: delta.abs(),
        leaves_qty: Quantity::ZERO,
        ..ExecReport::default()
    }
}

/// A position difference seen once and waiting to be confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PendingPosition {
    venue: Quantity,
    engine: Quantity,
    seen: Instant,
}

/// An order the venue may be working.
#[derive(Debug, Clone)]
struct Working {
    order: Order,
    symbol: String,
    client_id: String,
    /// Executed quantity already reported.
    executed: Quantity,
    /// Quote amount already reported.
    quote: Money,
    acked: bool,
    /// Set while the placement's outcome is unknown: when it was sent.
    unknown_since: Option<Instant>,
    /// Venue execution ids seen for this order (each reported once).
    exec_ids: Vec<String>,
    /// Quantity of the executions seen (reported, or covered by a cumulative update first).
    exec_seen: Quantity,
}

/// Sends engine orders to a venue and reports back. See the module docs.
#[derive(Debug)]
pub struct OrderGateway<V> {
    venue: Arc<V>,
    instruments: HashMap<InstrumentId, Instrument>,
    config: OrderGatewayConfig,
    working: HashMap<u64, Working>,
    stats: Arc<OrderGatewayStats>,
    stop: Arc<AtomicBool>,
    reports: Vec<ExecReport>,
    /// A timestamp refusal asked for a clock sync.
    resync: bool,
    /// Order updates pushed by the venue (user-data stream), when there is one.
    updates: Option<tokio::sync::mpsc::Receiver<UserUpdate>>,
    /// The push stream is up: working orders are not polled (unknown ones still are).
    stream_up: bool,
    /// The engine's positions, for position reconciliation.
    engine: Option<Arc<dyn EnginePositions>>,
    /// Position differences seen once, by instrument.
    pending_positions: HashMap<InstrumentId, PendingPosition>,
    /// When a fill was last reported, by instrument.
    last_fill: HashMap<InstrumentId, Instant>,
}

fn report(w: &Working, kind: ExecKind) -> ExecReport {
    let now = sapphire_core::latency::unix_nanos();
    ExecReport {
        ts_event: now,
        ts_recv: now,
        instrument: w.order.instrument,
        agent: w.order.agent,
        kind,
        side: w.order.side,
        client_order_id: w.order.client_order_id,
        price: w.order.price,
        leaves_qty: Quantity::from_raw((w.order.qty.raw - w.executed.raw).max(0)),
        ..ExecReport::default()
    }
}

impl<V: ExecutionVenue> OrderGateway<V> {
    /// A gateway to `venue` for `instruments` (their filters and symbols).
    pub fn new(venue: Arc<V>, instruments: &[Instrument], config: OrderGatewayConfig) -> Self {
        Self {
            venue,
            instruments: instruments.iter().map(|i| (i.id, i.clone())).collect(),
            config,
            working: HashMap::new(),
            stats: Arc::new(OrderGatewayStats::default()),
            stop: Arc::new(AtomicBool::new(false)),
            reports: Vec::new(),
            resync: false,
            updates: None,
            stream_up: false,
            engine: None,
            pending_positions: HashMap::new(),
            last_fill: HashMap::new(),
        }
    }

    /// Reconciles the venue's positions against `engine`'s (see [`OrderGateway::reconcile_positions`]).
    pub fn with_engine_positions(mut self, engine: Arc<dyn EnginePositions>) -> Self {
        self.engine = Some(engine);
        self
    }

    /// Takes order updates pushed by the venue ([`super::user_stream::run_user_stream`]).
    pub fn with_user_updates(mut self, updates: tokio::sync::mpsc::Receiver<UserUpdate>) -> Self {
        self.updates = Some(updates);
        self
    }

    /// Applies one pushed update: reports what it adds (fills, cancels); an update for an
    /// order in unknown state settles it. A reconnect queries every working order; a lost
    /// stream turns polling back on.
    pub async fn on_user_update(&mut self, update: UserUpdate) {
        match update {
            UserUpdate::Reconnected => {
                self.stream_up = true;
                self.poll_working().await;
            }
            UserUpdate::Disconnected => self.stream_up = false,
            UserUpdate::Execution(e) => self.on_execution(&e),
            UserUpdate::Order(v) => {
                let Some(id) = super::parse_client_order_id(&v.client_id) else { return };
                let Some(mut w) = self.working.remove(&id) else { return };
                if w.unknown_since.take().is_some() {
                    self.stats.resolved.fetch_add(1, Ordering::Relaxed);
                }
                let liquidity = if w.acked { Liquidity::Maker } else { Liquidity::Taker };
                self.apply(&mut w, &v, liquidity);
                if !v.status.is_final() {
                    self.working.insert(id, w);
                }
            }
        }
    }

    /// Reports one execution as a fill with its price, fee and liquidity, unless it was
    /// reported already (the same execution id, or quantity a cumulative update reported first).
    fn on_execution(&mut self, e: &VenueExecution) {
        let Some(id) = super::parse_client_order_id(&e.client_id) else { return };
        let Some(mut w) = self.working.remove(&id) else {
            // Finished and reported from its cumulative state already.
            self.stats.executions_skipped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if w.unknown_since.take().is_some() {
            self.stats.resolved.fetch_add(1, Ordering::Relaxed);
        }
        if !w.acked {
            w.acked = true;
            self.stats.acked.fetch_add(1, Ordering::Relaxed);
            self.reports.push(report(&w, ExecKind::Ack));
        }
        if !e.exec_id.is_empty() && w.exec_ids.contains(&e.exec_id) {
            self.stats.executions_skipped.fetch_add(1, Ordering::Relaxed);
            self.working.insert(id, w);
            return;
        }
        w.exec_ids.push(e.exec_id.clone());
        w.exec_seen += e.qty;
        // What of this execution no earlier report covered.
        let new = Quantity::from_raw(e.qty.raw.min(w.exec_seen.raw - w.executed.raw));
        if new.raw <= 0 {
            self.stats.executions_skipped.fetch_add(1, Ordering::Relaxed);
            self.working.insert(id, w);
            return;
        }
        let fee = if new == e.qty {
            e.fee
        } else {
            Money::from_raw((i128::from(e.fee.raw) * i128::from(new.raw) / i128::from(e.qty.raw)) as i64)
        };
        w.executed += new;
        w.quote += sapphire_core::fixed::notional(e.price, new).unwrap_or(Money::ZERO);
        let done = w.executed.raw >= w.order.qty.raw;
        let mut r = report(&w, if done { ExecKind::Fill } else { ExecKind::PartialFill });
        r.price = e.price;
        r.last_qty = new;
        r.fee = fee;
        r.liquidity = if e.maker { Liquidity::Maker } else { Liquidity::Taker };
        // A fill is never dropped for its time: out of range keeps the report's own time.
        if let (true, Ok(ns)) = (e.time_ms > 0, crate::feed::ms_to_ns("T", e.time_ms)) {
            r.ts_event = ns;
        }
        self.stats.fills.fetch_add(1, Ordering::Relaxed);
        self.stats.executions.fetch_add(1, Ordering::Relaxed);
        self.last_fill.insert(w.order.instrument, Instant::now());
        self.reports.push(r);
        if !done {
            self.working.insert(id, w);
        }
    }

    /// The counters and latency histogram.
    pub fn stats(&self) -> Arc<OrderGatewayStats> {
        Arc::clone(&self.stats)
    }

    /// Set it to stop [`run`](Self::run) after the current order.
    pub fn stop_handle(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// Orders the gateway believes the venue is working (or whose state is unknown).
    pub fn working(&self) -> usize {
        self.working.len()
    }

    /// Reads `orders` until it is closed (or stopped), publishing reports into `events`.
    pub async fn run(mut self, mut orders: impl OrderSource, mut events: Producer<Event>) -> Self {
        let mut batch: Vec<(Order, Instant)> = Vec::with_capacity(64);
        let mut last_poll = Instant::now();
        self.sync_time().await;
        let mut last_sync = Instant::now();
        let mut last_reconcile: Option<Instant> = None;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            if last_sync.elapsed() >= self.config.time_sync_interval || self.resync {
                self.sync_time().await;
                last_sync = Instant::now();
            }
            batch.clear();
            let polled = orders.poll_orders(64, |o| batch.push((*o, Instant::now())));
            for &(order, taken) in &batch {
                self.handle(order, taken).await;
                self.publish(&mut events).await;
            }
            // Pushed updates after the orders: an update for an order just placed finds it tracked.
            while let Some(u) = self.updates.as_mut().and_then(|rx| rx.try_recv().ok()) {
                self.on_user_update(u).await;
                self.publish(&mut events).await;
            }
            if last_reconcile.is_none_or(|t| t.elapsed() >= self.config.reconcile_interval) {
                last_reconcile = Some(Instant::now());
                if let Err(e) = self.reconcile().await {
                    self.stats.reconcile_failures.fetch_add(1, Ordering::Relaxed);
                    eprintln!("venue {}: reconcile: {e}", self.venue.name());
                }
                self.publish(&mut events).await;
            } else if self.pending_positions.values().any(|p| p.seen.elapsed() >= self.config.position_settle) {
                // A difference seen once: look again now that it has had time to settle.
                if let Err(e) = self.reconcile_positions().await {
                    self.stats.reconcile_failures.fetch_add(1, Ordering::Relaxed);
                    eprintln!("venue {}: reconcile positions: {e}", self.venue.name());
                    // Asked again after another settle period, not on every turn of the loop.
                    let now = Instant::now();
                    self.pending_positions.values_mut().for_each(|p| p.seen = now);
                }
                self.publish(&mut events).await;
            }
            if last_poll.elapsed() >= self.config.poll_interval && !self.working.is_empty() {
                last_poll = Instant::now();
                if self.stream_up {
                    // The stream pushes fills and cancels: only orders in unknown state are asked for.
                    self.poll_unknown().await;
                } else {
                    self.poll_working().await;
                }
                self.publish(&mut events).await;
            }
            match polled {
                Poll::Closed => break,
                Poll::Empty => tokio::time::sleep(self.config.idle_sleep).await,
                Poll::Handled(_) => {}
            }
        }
        self
    }

    async fn sync_time(&mut self) {
        self.resync = false;
        if let Err(e) = self.venue.sync_time().await {
            self.stats.time_sync_failures.fetch_add(1, Ordering::Relaxed);
            eprintln!("venue {}: clock sync: {e}", self.venue.name());
        }
    }

    /// Handles one order; its reports are then taken with [`drain_reports`](Self::drain_reports).
    pub async fn handle(&mut self, order: Order, taken: Instant) {
        match order.action {
            OrderAction::New => self.place(order, taken).await,
            OrderAction::CancelAll => self.cancel_all(order.agent, order.instrument).await,
        }
    }

    /// Reports made so far and not yet published.
    pub fn drain_reports(&mut self) -> Vec<ExecReport> {
        std::mem::take(&mut self.reports)
    }

    async fn publish(&mut self, events: &mut Producer<Event>) {
        for r in self.reports.drain(..) {
            let mut event = Event::ExecReport(r);
            loop {
                match events.try_publish(event) {
                    Ok(_) => break,
                    Err(_) if self.stop.load(Ordering::Relaxed) => {
                        // Stopping with a full ring (the engine is gone): count it, do not hang.
                        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Err(back) => {
                        // A fill must not be lost: wait for the engine to make room.
                        event = back;
                        self.stats.ring_full.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_micros(100)).await;
                    }
                }
            }
        }
    }

    fn reject(&mut self, order: &Order, reason: RejectReason) {
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        let w = Working {
            order: *order,
            symbol: String::new(),
            client_id: String::new(),
            executed: Quantity::ZERO,
            quote: Money::ZERO,
            acked: false,
            unknown_since: None,
            exec_ids: Vec::new(),
            exec_seen: Quantity::ZERO,
        };
        let mut r = report(&w, ExecKind::Rejected);
        r.reason = reason;
        r.leaves_qty = Quantity::ZERO;
        self.reports.push(r);
    }

    async fn place(&mut self, order: Order, taken: Instant) {
        self.stats.orders.fetch_add(1, Ordering::Relaxed);
        let Some(inst) = self.instruments.get(&order.instrument) else {
            self.stats.filtered.fetch_add(1, Ordering::Relaxed);
            return self.reject(&order, RejectReason::NoMarket);
        };
        if let Err(reason) = check_filters(&order, inst) {
            self.stats.filtered.fetch_add(1, Ordering::Relaxed);
            return self.reject(&order, reason);
        }
        let req = OrderRequest::from_order(&order, inst);
        let mut w = Working {
            order,
            symbol: req.symbol.clone(),
            client_id: req.client_id.clone(),
            executed: Quantity::ZERO,
            quote: Money::ZERO,
            acked: false,
            unknown_since: None,
            exec_ids: Vec::new(),
            exec_seen: Quantity::ZERO,
        };
        let sent = Instant::now();
        match self.venue.place(&req).await {
            Ok(v) => {
                self.stats.record_ack(taken);
                self.apply(&mut w, &v, Liquidity::Taker);
                if !v.status.is_final() {
                    self.working.insert(order.client_order_id, w);
                }
            }
            Err(VenueError::Unknown { reason, .. }) => {
                self.stats.unknown.fetch_add(1, Ordering::Relaxed);
                eprintln!("venue {}: order {} outcome unknown ({reason}); querying, not resending", self.venue.name(), req.client_id);
                w.unknown_since = Some(sent);
                self.resolve_unknown(w, taken).await;
            }
            Err(e) => {
                if let VenueError::Refused { code, msg, .. } = &e {
                    eprintln!("venue {}: order {} refused: code {code}: {msg}", self.venue.name(), req.client_id);
                    // Binance -1021 / Bybit 10002: our idea of the venue's clock is off.
                    self.resync |= matches!(code, -1021 | 10002);
                }
                self.reject(&order, e.reject_reason());
            }
        }
    }

    /// Queries an order in unknown state a few times; leaves it to the poll if still unknown.
    async fn resolve_unknown(&mut self, mut w: Working, taken: Instant) {
        for _ in 0..self.config.unknown_queries {
            tokio::time::sleep(self.config.unknown_backoff).await;
            if self.settle_unknown(&mut w, Some(taken)).await {
                return;
            }
        }
        self.working.insert(w.order.client_order_id, w);
    }

    /// One query of an unknown order; true when its state is now known (reports made).
    async fn settle_unknown(&mut self, w: &mut Working, taken: Option<Instant>) -> bool {
        let since = w.unknown_since.unwrap_or_else(Instant::now);
        match self.venue.query(&w.symbol, &w.client_id).await {
            Ok(Some(v)) => {
                self.stats.resolved.fetch_add(1, Ordering::Relaxed);
                if let Some(t) = taken {
                    self.stats.record_ack(t);
                }
                w.unknown_since = None;
                self.apply(w, &v, Liquidity::Taker);
                if !v.status.is_final() {
                    self.working.insert(w.order.client_order_id, w.clone());
                }
                true
            }
            Ok(None) if since.elapsed() >= self.config.unknown_settle => {
                // Past its recvWindow the venue can no longer accept it: it never will exist.
                self.stats.resolved.fetch_add(1, Ordering::Relaxed);
                let order = w.order;
                self.reject(&order, RejectReason::VenueOther);
                true
            }
            Ok(None) | Err(_) => false,
        }
    }

    /// Turns the venue's view of an order into the reports not yet made.
    fn apply(&mut self, w: &mut Working, v: &VenueOrder, liquidity: Liquidity) {
        if v.status == VenueOrderStatus::Rejected && !w.acked {
            let order = w.order;
            return self.reject(&order, RejectReason::VenueOther);
        }
        if !w.acked {
            w.acked = true;
            self.stats.acked.fetch_add(1, Ordering::Relaxed);
            self.reports.push(report(w, ExecKind::Ack));
        }
        let delta = v.executed.raw - w.executed.raw;
        if delta > 0 {
            let quote_delta = v.cum_quote - w.quote;
            let price = if quote_delta.raw > 0 {
                // quote (1e9) / qty (1e8) → price (1e9).
                let p = i128::from(quote_delta.raw) * i128::from(Quantity::SCALE) / i128::from(delta);
                Price::from_raw(i64::try_from(p).unwrap_or(v.price.raw))
            } else {
                v.avg_price()
            };
            // The fills listed (a `FULL` answer's, a user-data update's last one) carry fees:
            // counted when they are exactly the quantity this report adds.
            let (listed, fees) = v.fills.iter().fold((0i64, Money::ZERO), |(q, m), f| (q + f.qty.raw, m + f.fee));
            let fee = if listed == delta { fees } else { Money::ZERO };
            w.executed = v.executed;
            w.quote = v.cum_quote;
            let done = w.executed.raw >= w.order.qty.raw || v.status == VenueOrderStatus::Filled;
            let mut r = report(w, if done { ExecKind::Fill } else { ExecKind::PartialFill });
            r.price = price;
            r.last_qty = Quantity::from_raw(delta);
            r.fee = fee;
            r.liquidity = liquidity;
            if done {
                r.leaves_qty = Quantity::ZERO;
            }
            if let (true, Ok(ns)) = (v.update_ms > 0, crate::feed::ms_to_ns("updateTime", v.update_ms)) {
                r.ts_event = ns;
            }
            self.stats.fills.fetch_add(1, Ordering::Relaxed);
            self.last_fill.insert(w.order.instrument, Instant::now());
            self.reports.push(r);
        }
        if matches!(v.status, VenueOrderStatus::Canceled | VenueOrderStatus::Expired | VenueOrderStatus::Rejected)
            && w.executed.raw < w.order.qty.raw
        {
            let mut r = report(w, ExecKind::Canceled);
            r.leaves_qty = Quantity::ZERO;
            self.stats.canceled.fetch_add(1, Ordering::Relaxed);
            self.reports.push(r);
        }
    }

    /// Retries only the orders in unknown state (the push stream covers the rest).
    async fn poll_unknown(&mut self) {
        let ids: Vec<u64> = self.working.iter().filter(|(_, w)| w.unknown_since.is_some()).map(|(&id, _)| id).collect();
        for id in ids {
            let Some(mut w) = self.working.remove(&id) else { continue };
            if !self.settle_unknown(&mut w, None).await {
                self.working.insert(id, w);
            }
        }
    }

    /// Queries every working order (and retries unknown ones).
    pub async fn poll_working(&mut self) {
        let ids: Vec<u64> = self.working.keys().copied().collect();
        for id in ids {
            let Some(mut w) = self.working.remove(&id) else { continue };
            if w.unknown_since.is_some() {
                if !self.settle_unknown(&mut w, None).await {
                    self.working.insert(id, w);
                }
                continue;
            }
            match self.venue.query(&w.symbol, &w.client_id).await {
                Ok(Some(v)) => {
                    self.apply(&mut w, &v, Liquidity::Maker);
                    if !v.status.is_final() {
                        self.working.insert(id, w);
                    }
                }
                Ok(None) => {
                    // Acknowledged once, now unknown to the venue (archived): treat as gone.
                    let mut r = report(&w, ExecKind::Canceled);
                    r.leaves_qty = Quantity::ZERO;
                    self.reports.push(r);
                }
                Err(_) => {
                    self.working.insert(id, w);
                }
            }
        }
    }

    async fn cancel_all(&mut self, agent: AgentId, instrument: InstrumentId) {
        let mut ids: Vec<u64> = self
            .working
            .iter()
            .filter(|(_, w)| {
                (agent == ALL_AGENTS || w.order.agent == agent) && (instrument == ALL_INSTRUMENTS || w.order.instrument == instrument)
            })
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        if agent == ALL_AGENTS {
            // Kill switch: the venue's own cancel-all per symbol also catches orders we lost track of.
            let mut symbols: Vec<String> = match self.instruments.get(&instrument) {
                Some(i) => vec![i.symbol.clone()],
                None => ids.iter().filter_map(|id| self.working.get(id)).map(|w| w.symbol.clone()).collect(),
            };
            symbols.sort();
            symbols.dedup();
            for s in symbols {
                if let Err(e) = self.venue.cancel_all(&s).await {
                    eprintln!("venue {}: cancel-all {s}: {e}", self.venue.name());
                }
            }
        }
        for id in ids {
            let Some(mut w) = self.working.remove(&id) else { continue };
            let result = if agent == ALL_AGENTS {
                self.venue.query(&w.symbol, &w.client_id).await.map(|o| o.ok_or(()))
            } else {
                match self.venue.cancel(&w.symbol, &w.client_id).await {
                    Ok(v) => Ok(Ok(v)),
                    // Already gone (filled or cancelled meanwhile): ask what became of it.
                    Err(VenueError::Refused { reason: RejectReason::VenueUnknownOrder, .. }) => {
                        self.venue.query(&w.symbol, &w.client_id).await.map(|o| o.ok_or(()))
                    }
                    Err(e) => Err(e),
                }
            };
            match result {
                Ok(Ok(v)) => {
                    self.apply(&mut w, &v, Liquidity::Maker);
                    if !v.status.is_final() {
                        self.working.insert(id, w);
                    }
                }
                Ok(Err(())) => {
                    let mut r = report(&w, ExecKind::Canceled);
                    r.leaves_qty = Quantity::ZERO;
                    self.reports.push(r);
                }
                Err(e) => {
                    eprintln!("venue {}: cancel {}: {e}", self.venue.name(), client_order_id(id));
                    self.working.insert(id, w);
                }
            }
        }
    }
}

/// What [`OrderGateway::reconcile`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// Our orders open at the venue that the gateway did not track: now tracked.
    pub adopted: u64,
    /// Tracked orders no longer open at the venue: their fills and cancels reported.
    pub closed: u64,
    /// Open orders at the venue that are not ours (no `sph-` id): left alone.
    pub foreign: u64,
    /// Instruments whose venue position differed from the engine's.
    pub position_differences: u64,
    /// Position differences adopted.
    pub positions_adopted: u64,
}

impl<V: ExecutionVenue> OrderGateway<V> {
    /// Compares the venue's open orders with the orders the gateway tracks, and adopts the
    /// venue's state: our orders it works that we lost track of (a restart) are tracked from
    /// their current fill (fills before it were reported by the run that saw them, and are in
    /// the journal); tracked orders it no longer works are queried and their fills and cancels
    /// reported. Every difference is counted and logged.
    pub async fn reconcile(&mut self) -> Result<Reconciliation, VenueError> {
        let open = self.venue.open_orders(None).await?;
        let mut found = Reconciliation::default();
        let mut open_ids = std::collections::HashSet::new();
        for v in &open {
            let Some(id) = super::parse_client_order_id(&v.client_id) else {
                found.foreign += 1;
                continue;
            };
            open_ids.insert(id);
            if let Some(mut w) = self.working.remove(&id) {
                w.unknown_since = None;
                self.apply(&mut w, v, Liquidity::Maker);
                self.working.insert(id, w);
                continue;
            }
            let Some(inst) = self.instruments.values().find(|i| i.symbol == v.symbol) else {
                found.foreign += 1;
                continue;
            };
            found.adopted += 1;
            eprintln!(
                "venue {}: reconcile: adopting {} ({} {:?} {} @ {}), not tracked here",
                self.venue.name(),
                v.client_id,
                v.symbol,
                v.side,
                v.qty,
                v.price
            );
            let order = Order {
                client_order_id: id,
                intent_id: id & sapphire_core::router::INTENT_ID_MASK,
                instrument: inst.id,
                // The router's id ends in the agent tag.
                agent: AgentId(u16::from(id as u8)),
                action: OrderAction::New,
                side: v.side,
                price: v.price,
                qty: v.qty,
                ..Order::default()
            };
            let w = Working {
                order,
                symbol: v.symbol.clone(),
                client_id: v.client_id.clone(),
                executed: v.executed,
                quote: v.cum_quote,
                acked: true,
                unknown_since: None,
                exec_ids: Vec::new(),
                exec_seen: v.executed,
            };
            self.working.insert(id, w);
        }
        let gone: Vec<u64> = self.working.keys().filter(|id| !open_ids.contains(id)).copied().collect();
        for id in gone {
            let Some(mut w) = self.working.remove(&id) else { continue };
            match self.venue.query(&w.symbol, &w.client_id).await {
                Ok(Some(v)) => {
                    if v.status.is_final() {
                        found.closed += 1;
                        eprintln!("venue {}: reconcile: {} is {:?} at the venue", self.venue.name(), w.client_id, v.status);
                    }
                    w.unknown_since = None;
                    self.apply(&mut w, &v, Liquidity::Maker);
                    if !v.status.is_final() {
                        self.working.insert(id, w);
                    }
                }
                Ok(None) if w.unknown_since.is_none() => {
                    found.closed += 1;
                    eprintln!("venue {}: reconcile: {} is unknown to the venue", self.venue.name(), w.client_id);
                    let mut r = report(&w, ExecKind::Canceled);
                    r.leaves_qty = Quantity::ZERO;
                    self.reports.push(r);
                }
                Ok(None) | Err(_) => {
                    self.working.insert(id, w);
                }
            }
        }
        self.stats.reconciled.fetch_add(found.adopted + found.closed, Ordering::Relaxed);
        self.stats.orders_adopted.fetch_add(found.adopted, Ordering::Relaxed);
        self.stats.orders_closed.fetch_add(found.closed, Ordering::Relaxed);
        let positions = self.reconcile_positions().await?;
        found.position_differences = positions.differences;
        found.positions_adopted = positions.adopted;
        Ok(found)
    }

    /// Compares the venue's net position in each routed instrument with the engine's (the
    /// sum over its agents) and adopts the venue's: a difference seen twice,
    /// `position_settle` apart, with the same quantities on both sides and no fill reported
    /// for the instrument in between (a fill still on its way to the engine would change
    /// the engine's side), is evented into the ring as a [`position_adjustment`] for the
    /// agent holding the largest position there (agent 0 when none does), at the engine's
    /// mark (the venue's when the engine has none). Every difference is logged and counted.
    /// Does nothing without the engine's positions or on a market without positions.
    pub async fn reconcile_positions(&mut self) -> Result<PositionReconciliation, VenueError> {
        let mut found = PositionReconciliation::default();
        let Some(engine) = self.engine.clone() else { return Ok(found) };
        let Some(venue) = self.venue.net_positions().await? else { return Ok(found) };
        let held = engine.positions();
        let mut instruments: Vec<&Instrument> = self.instruments.values().collect();
        instruments.sort_by_key(|i| i.id);
        let mut adjustments = Vec::new();
        for inst in instruments {
            self.stats.position_checks.fetch_add(1, Ordering::Relaxed);
            found.checked += 1;
            let at_venue = venue.iter().filter(|p| p.symbol == inst.symbol).fold(Quantity::ZERO, |a, p| a + p.qty);
            let here: Vec<(AgentId, Quantity)> = held.iter().filter(|(_, i, _)| *i == inst.id).map(|&(a, _, q)| (a, q)).collect();
            let in_engine = here.iter().fold(Quantity::ZERO, |a, (_, q)| a + *q);
            if at_venue == in_engine {
                self.pending_positions.remove(&inst.id);
                continue;
            }
            found.differences += 1;
            self.stats.position_differences.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            let confirmed = match self.pending_positions.get(&inst.id) {
                Some(p) => {
                    p.venue == at_venue
                        && p.engine == in_engine
                        && p.seen.elapsed() >= self.config.position_settle
                        && self.last_fill.get(&inst.id).is_none_or(|t| *t < p.seen)
                }
                None => false,
            };
            if !confirmed {
                let same = self.pending_positions.get(&inst.id).is_some_and(|p| p.venue == at_venue && p.engine == in_engine);
                if !same {
                    eprintln!(
                        "venue {}: reconcile: {} position {} at the venue, {} in the engine; adopting it if it holds for {:?}",
                        self.venue.name(),
                        inst.symbol,
                        at_venue,
                        in_engine,
                        self.config.position_settle
                    );
                    self.pending_positions.insert(inst.id, PendingPosition { venue: at_venue, engine: in_engine, seen: now });
                } else if self.last_fill.get(&inst.id).is_some_and(|t| self.pending_positions.get(&inst.id).is_some_and(|p| *t >= p.seen)) {
                    // A fill was reported meanwhile: start the wait again.
                    self.pending_positions.insert(inst.id, PendingPosition { venue: at_venue, engine: in_engine, seen: now });
                }
                continue;
            }
            self.pending_positions.remove(&inst.id);
            let venue_mark = venue.iter().find(|p| p.symbol == inst.symbol).map_or(Price::ZERO, |p| p.mark);
            let price = match engine.mark(inst.id) {
                p if p.raw > 0 => p,
                _ => venue_mark,
            };
            if price.raw <= 0 {
                self.stats.positions_unpriced.fetch_add(1, Ordering::Relaxed);
                eprintln!("venue {}: reconcile: {} position difference not adopted: no mark price yet", self.venue.name(), inst.symbol);
                continue;
            }
            // The agent holding the most in the instrument (lowest id on a tie), else agent 0.
            let agent = here.iter().max_by_key(|(a, q)| (q.raw.unsigned_abs(), std::cmp::Reverse(a.0))).map_or(AgentId(0), |(a, _)| *a);
            let delta = at_venue - in_engine;
            eprintln!(
                "venue {}: reconcile: adopting the venue's {} position {} (engine {}): {} for agent {} at {}",
                self.venue.name(),
                inst.symbol,
                at_venue,
                in_engine,
                delta,
                agent.0,
                price
            );
            adjustments.push(position_adjustment(agent, inst.id, delta, price));
            found.adopted += 1;
            self.stats.positions_adopted.fetch_add(1, Ordering::Relaxed);
        }
        self.reports.extend(adjustments);
        Ok(found)
    }
}

/// What [`OrderGateway::reconcile_positions`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PositionReconciliation {
    /// Instruments compared.
    pub checked: u64,
    /// Instruments whose venue position differed from the engine's.
    pub differences: u64,
    /// Differences adopted (an adjustment evented into the ring).
    pub adopted: u64,
}
