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
//! rejected. Nothing is ever resent. Until user-data streams land, working orders are polled
//! every `poll_interval` for fills and cancels.

use super::user_stream::UserUpdate;
use super::{check_filters, client_order_id, ExecutionVenue, OrderRequest, VenueError, VenueOrder, VenueOrderStatus};
use sapphire_core::event::{AgentId, Event, ExecKind, ExecReport, Liquidity, RejectReason};
use sapphire_core::fixed::{Money, Price, Quantity};
use sapphire_core::instrument::{Instrument, InstrumentId};
use sapphire_core::order::{Order, OrderAction};
use sapphire_core::ring::{Consumer, Poll, Producer};
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
        }
    }

    /// Takes order updates pushed by the venue ([`super::user_stream::run_user_stream`]).
    pub fn with_user_updates(mut self, updates: tokio::sync::mpsc::Receiver<UserUpdate>) -> Self {
        self.updates = Some(updates);
        self
    }

    /// Applies one pushed update: reports what it adds (fills, cancels); an update for an
    /// order in unknown state settles it. A reconnect queries every working order.
    pub async fn on_user_update(&mut self, update: UserUpdate) {
        match update {
            UserUpdate::Reconnected => self.poll_working().await,
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
    pub async fn run(mut self, mut orders: Consumer<Order>, mut events: Producer<Event>) -> Self {
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
            let polled = orders.poll(64, |o, _, _| batch.push((*o, Instant::now())));
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
                    eprintln!("venue {}: reconcile: {e}", self.venue.name());
                }
                self.publish(&mut events).await;
            }
            if last_poll.elapsed() >= self.config.poll_interval && !self.working.is_empty() {
                last_poll = Instant::now();
                self.poll_working().await;
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
            let fee = if w.executed.raw == 0 { v.fills.iter().fold(Money::ZERO, |a, f| a + f.fee) } else { Money::ZERO };
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
            if v.update_ms > 0 {
                r.ts_event = v.update_ms * 1_000_000;
            }
            self.stats.fills.fetch_add(1, Ordering::Relaxed);
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
        Ok(found)
    }
}
