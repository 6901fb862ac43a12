//! The deterministic matching simulator behind paper trading and replay.
//!
//! It keeps its own copy of each book (a venue has its own book) and fills our orders
//! against it, in event time:
//! - an order becomes active `latency_ns` after it was decided; cancels act at once;
//! - an active order that crosses the book takes liquidity level by level up to its limit
//!   (market orders without a limit) and pays the taker fee; post-only orders that would
//!   take are rejected; IOC remainders are cancelled;
//! - a resting order joins the back of its level: the quantity shown there then is ahead of
//!   it. Trades at its price eat that queue first; a level that shrinks shrinks the queue;
//!   trades through its price, or the opposite side reaching it, fill it (maker fee).
//!
//! Not modelled: our own orders' impact on the copy of the book (two of our orders can
//! take the same shown liquidity within one event), hidden liquidity, partial cancels.

use crate::book::OrderBook;
use crate::event::{Event, ExecKind, ExecReport, Liquidity, RejectReason, Side, DELTA_LAST};
use crate::fixed::{apply_bps, notional, Money, Price, Quantity};
use crate::instrument::InstrumentId;
use crate::order::{Order, OrderAction, OrderType, TimeInForce};
use crate::risk::{ALL_AGENTS, ALL_INSTRUMENTS};

/// Paper venue settings.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MatchingConfig {
    /// Decision-to-venue latency of new orders, ns of event time.
    pub latency_ns: u64,
    /// Taker fee, bps of notional.
    pub taker_fee_bps: i64,
    /// Maker fee, bps of notional (negative: rebate).
    pub maker_fee_bps: i64,
}

impl Default for MatchingConfig {
    fn default() -> Self {
        Self { latency_ns: 1_000_000, taker_fee_bps: 10, maker_fee_bps: 2 }
    }
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, Debug)]
struct SimOrder {
    order: Order,
    leaves: Quantity,
    active_at: u64,
    active: bool,
    queue_ahead: Quantity,
}

/// The paper venue's state. Single writer: the route stage.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug)]
pub struct PaperMatcher {
    config: MatchingConfig,
    books: Vec<OrderBook>,
    /// Orders per instrument, so events on other instruments cost nothing.
    live_per_instrument: Vec<u32>,
    orders: Vec<SimOrder>,
    now: u64,
    fills: u64,
}

impl PaperMatcher {
    /// A matcher for `instruments` instruments, books sized for `levels` levels a side.
    pub fn new(config: MatchingConfig, instruments: usize, levels: usize) -> Self {
        Self {
            config,
            books: (0..instruments).map(|_| OrderBook::with_capacity(levels)).collect(),
            live_per_instrument: vec![0; instruments],
            orders: Vec::with_capacity(1024),
            now: 0,
            fills: 0,
        }
    }

    /// A matcher for `instruments`, books windowed by their tick sizes (see
    /// [`OrderBook::with_tick`]).
    pub fn for_instruments(config: MatchingConfig, instruments: &[crate::instrument::Instrument], levels: usize) -> Self {
        let mut matcher = Self::new(config, instruments.len(), levels);
        matcher.books = instruments.iter().map(|i| OrderBook::with_tick(levels, i.tick_size)).collect();
        matcher
    }

    /// Makes this matcher equal to `src`, keeping this one's allocations (snapshots).
    pub fn copy_from(&mut self, src: &Self) {
        let Self { config, books, live_per_instrument, orders, now, fills } = src;
        self.config.clone_from(config);
        crate::snapshot::copy_vec(&mut self.books, books, OrderBook::copy_from);
        crate::snapshot::copy_into(&mut self.live_per_instrument, live_per_instrument);
        crate::snapshot::copy_into(&mut self.orders, orders);
        (self.now, self.fills) = (*now, *fills);
    }

    /// Fills produced so far.
    pub fn fills(&self) -> u64 {
        self.fills
    }

    /// Orders working (pending or resting).
    pub fn working(&self) -> usize {
        self.orders.len()
    }

    /// The simulator's book of an instrument.
    pub fn book(&self, instrument: InstrumentId) -> Option<&OrderBook> {
        self.books.get(instrument.index())
    }

    fn report(
        &self,
        o: &SimOrder,
        kind: ExecKind,
        reason: RejectReason,
        liquidity: Liquidity,
        price: Price,
        last_qty: Quantity,
    ) -> ExecReport {
        let fee = match liquidity {
            Liquidity::None => Money::ZERO,
            Liquidity::Taker => apply_bps(notional(price, last_qty).unwrap_or(Money::ZERO), self.config.taker_fee_bps),
            Liquidity::Maker => apply_bps(notional(price, last_qty).unwrap_or(Money::ZERO), self.config.maker_fee_bps),
        };
        ExecReport {
            ts_event: self.now,
            ts_recv: self.now,
            instrument: o.order.instrument,
            agent: o.order.agent,
            kind,
            side: o.order.side,
            reason,
            liquidity,
            _pad: [0; 5],
            client_order_id: o.order.client_order_id,
            price,
            last_qty,
            leaves_qty: o.leaves,
            fee,
        }
    }

    /// Takes an order or cancel from the router at event time `now`.
    pub fn submit(&mut self, order: &Order, now: u64, reports: &mut Vec<ExecReport>) {
        self.now = self.now.max(now);
        match order.action {
            OrderAction::New => {
                if let Some(n) = self.live_per_instrument.get_mut(order.instrument.index()) {
                    *n += 1;
                    self.orders.push(SimOrder {
                        order: *order,
                        leaves: order.qty,
                        active_at: now + self.config.latency_ns,
                        active: false,
                        queue_ahead: Quantity::ZERO,
                    });
                } else {
                    let o = SimOrder { order: *order, leaves: Quantity::ZERO, active_at: now, active: false, queue_ahead: Quantity::ZERO };
                    reports.push(self.report(
                        &o,
                        ExecKind::Rejected,
                        RejectReason::VenueFilter,
                        Liquidity::None,
                        order.price,
                        Quantity::ZERO,
                    ));
                }
            }
            OrderAction::CancelAll => {
                let mut i = 0;
                while i < self.orders.len() {
                    let o = self.orders[i];
                    let agent_match = order.agent == ALL_AGENTS || o.order.agent == order.agent;
                    let inst_match = order.instrument == ALL_INSTRUMENTS || o.order.instrument == order.instrument;
                    if agent_match && inst_match {
                        reports.push(self.report(
                            &o,
                            ExecKind::Canceled,
                            RejectReason::None,
                            Liquidity::None,
                            o.order.price,
                            Quantity::ZERO,
                        ));
                        self.remove(i);
                    } else {
                        i += 1;
                    }
                }
            }
        }
    }

    fn remove(&mut self, i: usize) {
        let o = self.orders.remove(i);
        self.live_per_instrument[o.order.instrument.index()] -= 1;
    }

    /// Applies a market event to the simulator's books and works the orders on it.
    pub fn on_event(&mut self, event: &Event, reports: &mut Vec<ExecReport>) {
        let (instrument, ts) = match event {
            Event::BookDelta(d) => {
                let Some(book) = self.books.get_mut(d.instrument.index()) else { return };
                book.apply_delta(d);
                if d.flags & DELTA_LAST == 0 {
                    return;
                }
                (d.instrument, d.ts_event)
            }
            Event::Quote(q) => {
                let Some(book) = self.books.get_mut(q.instrument.index()) else { return };
                // Quote-only instruments: the quote is the whole book we know.
                if book.depth(Side::Buy) <= 1 && book.depth(Side::Sell) <= 1 {
                    book.clear();
                    book.set_level(Side::Buy, q.bid_price, q.bid_qty);
                    book.set_level(Side::Sell, q.ask_price, q.ask_qty);
                }
                (q.instrument, q.ts_event)
            }
            Event::Trade(t) => {
                self.now = self.now.max(t.ts_event);
                if self.live_per_instrument.get(t.instrument.index()).copied().unwrap_or(0) > 0 {
                    self.on_trade(t.instrument, t.aggressor, t.price, t.qty, reports);
                }
                (t.instrument, t.ts_event)
            }
            Event::Timer(t) => {
                self.now = self.now.max(t.ts_event);
                for i in 0..self.books.len() {
                    if self.live_per_instrument[i] > 0 {
                        self.work(InstrumentId(i as u32), reports);
                    }
                }
                return;
            }
            _ => return,
        };
        self.now = self.now.max(ts);
        if self.live_per_instrument.get(instrument.index()).copied().unwrap_or(0) > 0 {
            self.work(instrument, reports);
        }
    }

    /// Activates due orders and fills what the book now crosses.
    fn work(&mut self, instrument: InstrumentId, reports: &mut Vec<ExecReport>) {
        let mut i = 0;
        while i < self.orders.len() {
            if self.orders[i].order.instrument != instrument || self.orders[i].active_at > self.now {
                i += 1;
                continue;
            }
            let done = if self.orders[i].active { self.check_resting(i, reports) } else { self.activate(i, reports) };
            if done {
                self.remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// The order reaches the venue. Returns true when it is finished.
    fn activate(&mut self, i: usize, reports: &mut Vec<ExecReport>) -> bool {
        let book = &self.books[self.orders[i].order.instrument.index()];
        let o = self.orders[i];
        let side = o.order.side;
        let crosses = |p: Price| match o.order.order_type {
            OrderType::Market => true,
            OrderType::Limit => match side {
                Side::Buy => p <= o.order.price,
                Side::Sell => p >= o.order.price,
            },
        };
        let marketable = book.best(side.opposite()).is_some_and(|l| crosses(l.price));
        if marketable && o.order.tif == TimeInForce::PostOnly {
            reports.push(self.report(&o, ExecKind::Rejected, RejectReason::VenueFilter, Liquidity::None, o.order.price, Quantity::ZERO));
            return true;
        }
        self.orders[i].active = true;
        reports.push(self.report(&o, ExecKind::Ack, RejectReason::None, Liquidity::None, o.order.price, Quantity::ZERO));
        let mut leaves = o.leaves;
        if marketable {
            let mut fills: [(Price, Quantity); 16] = [(Price::ZERO, Quantity::ZERO); 16];
            let mut n = 0;
            for level in book.levels(side.opposite()) {
                if leaves.raw == 0 || !crosses(level.price) || n == fills.len() {
                    break;
                }
                let take = leaves.min(level.qty);
                fills[n] = (level.price, take);
                n += 1;
                leaves -= take;
            }
            for &(price, qty) in &fills[..n] {
                self.fill(i, price, qty, Liquidity::Taker, reports);
            }
        }
        let o = self.orders[i];
        if o.leaves.raw == 0 {
            return true;
        }
        if o.order.tif == TimeInForce::Ioc || o.order.order_type == OrderType::Market {
            reports.push(self.report(&o, ExecKind::Canceled, RejectReason::None, Liquidity::None, o.order.price, Quantity::ZERO));
            return true;
        }
        self.orders[i].queue_ahead = self.books[o.order.instrument.index()].qty_at(side, o.order.price);
        false
    }

    fn fill(&mut self, i: usize, price: Price, qty: Quantity, liquidity: Liquidity, reports: &mut Vec<ExecReport>) {
        self.orders[i].leaves -= qty;
        self.fills += 1;
        let o = self.orders[i];
        let kind = if o.leaves.raw == 0 { ExecKind::Fill } else { ExecKind::PartialFill };
        reports.push(self.report(&o, kind, RejectReason::None, liquidity, price, qty));
    }

    /// A resting order after a book change. Returns true when it is finished.
    fn check_resting(&mut self, i: usize, reports: &mut Vec<ExecReport>) -> bool {
        let o = self.orders[i];
        let book = &self.books[o.order.instrument.index()];
        let through = match o.order.side {
            Side::Buy => book.best_ask().is_some_and(|a| a.price <= o.order.price),
            Side::Sell => book.best_bid().is_some_and(|b| b.price >= o.order.price),
        };
        if through {
            self.fill(i, o.order.price, o.leaves, Liquidity::Maker, reports);
            return true;
        }
        // Cancellations ahead of us shrink the queue.
        let shown = book.qty_at(o.order.side, o.order.price);
        if shown < o.queue_ahead {
            self.orders[i].queue_ahead = shown;
        }
        false
    }

    fn on_trade(&mut self, instrument: InstrumentId, aggressor: Side, price: Price, qty: Quantity, reports: &mut Vec<ExecReport>) {
        let mut i = 0;
        while i < self.orders.len() {
            let o = self.orders[i];
            // Only resting orders on the passive side of this trade can be hit.
            if o.order.instrument != instrument || !o.active || o.order.side == aggressor {
                i += 1;
                continue;
            }
            let at_or_through = match o.order.side {
                Side::Buy => price <= o.order.price,
                Side::Sell => price >= o.order.price,
            };
            if !at_or_through {
                i += 1;
                continue;
            }
            let fill_qty = if price == o.order.price {
                let ahead = o.queue_ahead;
                let after = ahead.raw - qty.raw;
                self.orders[i].queue_ahead = Quantity::from_raw(after.max(0));
                if after >= 0 {
                    i += 1;
                    continue;
                }
                o.leaves.min(Quantity::from_raw(-after))
            } else {
                o.leaves
            };
            self.fill(i, o.order.price, fill_qty, Liquidity::Maker, reports);
            if self.orders[i].leaves.raw == 0 {
                self.remove(i);
            } else {
                i += 1;
            }
        }
    }
}

/// Sizes and alignments of this module's private archived state (snapshot layout fingerprint).
pub(crate) fn archived_layout() -> [(usize, usize); 1] {
    [(std::mem::size_of::<rkyv::Archived<SimOrder>>(), std::mem::align_of::<rkyv::Archived<SimOrder>>())]
}

#[cfg(test)]
mod tests;
