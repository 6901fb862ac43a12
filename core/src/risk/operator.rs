//! Operator orders: flatten (close positions on command) and manual orders.
//!
//! Both arrive as [`Control`] events, so the input journal holds the command and a replay
//! reproduces every order it caused. A flatten runs in *passes* over its scope (agents ×
//! instruments, in index order): each open position gets one reduce-only IOC limit order
//! priced through the book to the edge of the price band (a sell at `mid − band`, a buy at
//! `mid + band`, on tick). A pass that does not fit one event's order batch carries on at the
//! next timer; the next pass begins at the first timer `flatten_retry_ns` after the last one
//! ended, if anything in scope is still open, up to `flatten_attempts` passes. Every pass is a
//! [`AlertKind::Flattening`] alert, the end a [`AlertKind::Flattened`] alert (value: positions
//! still open, 0 when flat). While a flatten runs, new orders that would open or add risk in
//! its scope are refused as reduce-only.
//!
//! A manual order is an [`Intent`] for the agent's position plus the signed quantity, checked
//! by [`RiskEngine::check`] like any signal's: a refusal names its limit. Its intent id is the
//! command's inbound sequence (and the agent), so the API finds the outcome by sequence.

use super::*;
use crate::event::Control;

/// Agent tags of flatten orders: one event's flatten orders take `FLATTEN_TAG..`, in order
/// (each needs its own rising intent id), below the guard's [`GUARD_AGENT_TAG`] so a
/// deleverage order in the same timer still routes.
///
/// [`GUARD_AGENT_TAG`]: crate::router::GUARD_AGENT_TAG
pub const FLATTEN_TAG: u8 = 0xf0;
/// Batch slots a flatten leaves free at a timer for the portfolio guards (cancel-all and a
/// deleverage order).
const GUARD_RESERVE: usize = 2;

/// A flatten in progress (or the last one, `active` false).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flatten {
    /// A flatten runs.
    pub active: bool,
    /// Its agent, or [`ALL_AGENTS`].
    pub agent: AgentId,
    /// Its instrument, or [`ALL_INSTRUMENTS`].
    pub instrument: InstrumentId,
    /// Passes begun.
    pub attempts: u32,
    /// Where the pass in progress carries on (`agent * instruments + instrument`); 0 between
    /// passes.
    cursor: u32,
    /// Event time before which the next pass does not begin.
    next_pass_at: u64,
}

impl Flatten {
    /// True when an order of `agent` in `instrument` is in this flatten's scope.
    pub fn covers(&self, agent: AgentId, instrument: InstrumentId) -> bool {
        self.active
            && (self.agent == ALL_AGENTS || self.agent == agent)
            && (self.instrument == ALL_INSTRUMENTS || self.instrument == instrument)
    }
}

impl RiskEngine {
    /// An operator command at inbound sequence `seq`: flatten and manual orders here (they
    /// make orders, whose intent ids need the sequence), everything else in
    /// [`on_control`](Self::on_control). A `Kill` with `value` 1 also flattens everything.
    pub fn on_command(&mut self, seq: i64, c: &Control, orders: &mut OrderBatch, out: &mut RiskOutputBatch) {
        match c.kind {
            ControlKind::Flatten => self.start_flatten(seq, c.agent, c.instrument, orders, out),
            ControlKind::ManualOrder => self.manual_order(seq, c, orders, out),
            ControlKind::Kill if c.value == 1 => {
                self.on_control(c, orders, out);
                self.start_flatten(seq, ALL_AGENTS, ALL_INSTRUMENTS, orders, out);
            }
            _ => self.on_control(c, orders, out),
        }
    }

    /// The flatten in progress, or the last one.
    pub fn flatten(&self) -> Flatten {
        self.flatten
    }

    fn start_flatten(&mut self, seq: i64, agent: AgentId, instrument: InstrumentId, orders: &mut OrderBatch, out: &mut RiskOutputBatch) {
        // A scope naming an agent or instrument the engine does not have flattens nothing.
        self.cancel_all(agent, instrument, orders);
        self.flatten = Flatten { active: true, agent, instrument, attempts: 0, cursor: 0, next_pass_at: 0 };
        self.flatten_step(seq, 0, orders, out);
    }

    /// Carries a flatten on at a timer (before the guards, which keep their batch slots).
    pub fn flatten_at_timer(&mut self, seq: i64, orders: &mut OrderBatch, out: &mut RiskOutputBatch) {
        if self.flatten.active {
            self.flatten_step(seq, GUARD_RESERVE, orders, out);
        }
    }

    /// Positions still open in the flatten's scope.
    fn open_in_scope(&self) -> i64 {
        let (agents, instruments) = (self.portfolio.agents(), self.portfolio.instruments());
        let f = self.flatten;
        let mut n = 0;
        for a in 0..agents {
            for i in 0..instruments {
                let (agent, inst) = (AgentId(a as u16), InstrumentId(i as u32));
                if f.covers(agent, inst) && self.portfolio.position(agent, inst).qty.raw != 0 {
                    n += 1;
                }
            }
        }
        n
    }

    fn flatten_step(&mut self, seq: i64, reserve: usize, orders: &mut OrderBatch, out: &mut RiskOutputBatch) {
        let scope_agent = self.flatten.agent;
        if self.flatten.cursor == 0 {
            if self.now < self.flatten.next_pass_at {
                return;
            }
            let open = self.open_in_scope();
            if open == 0 || self.flatten.attempts >= self.config.flatten_attempts {
                self.flatten.active = false;
                self.alert(AlertKind::Flattened, scope_agent, open, out);
                return;
            }
            self.flatten.attempts += 1;
            self.alert(AlertKind::Flattening, scope_agent, i64::from(self.flatten.attempts), out);
        }
        let instruments = self.portfolio.instruments().max(1);
        let cells = (self.portfolio.agents() * self.portfolio.instruments()) as u32;
        let mut tag = FLATTEN_TAG;
        while self.flatten.cursor < cells {
            if orders.len() + reserve >= ORDERS_PER_EVENT {
                return; // the pass carries on at the next timer
            }
            let cell = self.flatten.cursor as usize;
            self.flatten.cursor += 1;
            let (agent, inst) = (AgentId((cell / instruments) as u16), InstrumentId((cell % instruments) as u32));
            if !self.flatten.covers(agent, inst) {
                continue;
            }
            let pos = self.portfolio.position(agent, inst).qty;
            let m = self.markets[inst.index()];
            if pos.raw == 0 || !m.has_market || m.mid.raw <= 0 {
                continue; // no market: the next pass tries again
            }
            let side = if pos.raw > 0 { Side::Sell } else { Side::Buy };
            // The engine's own closing IOCs still in flight (the last pass's, a ladder cut, a
            // guard deleverage: tags from AGENT_CUT_TAG up) are not sent again: a slow venue
            // must not get a second close for one position, which on spot (no venue-side
            // reduce-only) would turn it the other way. An agent's resting order does not count:
            // it may never fill, and the flatten must not wait on it.
            let closing: i64 = self
                .open
                .iter()
                .filter(|o| o.agent == agent && o.instrument == inst && o.side == side && o.intent_id as u8 >= AGENT_CUT_TAG)
                .map(|o| o.leaves.raw)
                .sum();
            let qty = Quantity::from_raw(pos.raw.abs().saturating_sub(closing));
            if qty.raw <= 0 {
                continue; // the next pass looks again once those orders have ended
            }
            let price = self.band_edge(inst, &m, side);
            let intent_id = crate::router::intent_id(seq, tag);
            tag += 1;
            self.open.push(OpenOrder { intent_id, agent, instrument: inst, side, price, leaves: qty });
            let _ = orders.push(Order {
                ts_event: self.now,
                intent_id,
                instrument: inst,
                agent,
                action: OrderAction::New,
                side,
                order_type: OrderType::Limit,
                tif: TimeInForce::Ioc,
                reduce_only: true,
                price,
                qty,
                ..Order::default()
            });
        }
        self.flatten.cursor = 0;
        self.flatten.next_pass_at = self.now.saturating_add(self.config.flatten_retry_ns);
    }

    /// The most aggressive price the band allows on `side`, on tick (a sell rounds up, a buy
    /// down, so the price stays inside the band).
    fn band_edge(&self, inst: InstrumentId, m: &MarketView, side: Side) -> Price {
        let mid = i128::from(m.mid.raw);
        let reach = mid * i128::from(self.config.price_band_bps) / 10_000;
        let tick = i128::from(self.instruments[inst.index()].tick_size.raw.max(1));
        let raw = match side {
            Side::Sell => {
                let p = (mid - reach).max(tick);
                (p + tick - 1) / tick * tick
            }
            Side::Buy => (mid + reach) / tick * tick,
        };
        Price::from_raw(raw.clamp(0, i128::from(i64::MAX)) as i64)
    }

    fn manual_order(&mut self, seq: i64, c: &Control, orders: &mut OrderBatch, out: &mut RiskOutputBatch) {
        self.advance(c.ts_event);
        let (agent, inst) = (c.agent, c.instrument);
        let side = if c.value >= 0 { Side::Buy } else { Side::Sell };
        let qty = Quantity::from_raw(c.value.saturating_abs());
        let m = self.markets.get(inst.index()).copied().unwrap_or_default();
        let price = if c.price.raw > 0 {
            c.price
        } else if side == Side::Buy {
            m.ask
        } else {
            m.bid
        };
        let pos = self.portfolio.position(agent, inst).qty;
        let intent = Intent {
            ts_event: self.now,
            intent_id: crate::router::intent_id(seq, agent.0 as u8),
            instrument: inst,
            agent,
            style: ExecStyle::Aggressive,
            _pad: 0,
            target: Quantity::from_raw(pos.raw.saturating_add(qty.raw * side.sign())),
            price,
        };
        let Some(instrument) = self.instruments.get(inst.index()) else {
            return self.refuse(&intent, side, qty, RejectReason::NoMarket, out);
        };
        if agent.index() >= self.portfolio.agents() {
            // No sub-account, no margin budget.
            return self.refuse(&intent, side, qty, RejectReason::AgentBudget, out);
        }
        if qty.raw == 0 || !instrument.is_on_lot(qty) {
            return self.refuse(&intent, side, qty, RejectReason::LotSize, out);
        }
        self.check(&intent, orders, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ExecKind;
    use crate::instrument::{InstrumentRegistry, InstrumentSpec, MarketType};

    /// One BTC or ETH, raw.
    const UNIT: i64 = Quantity::from_units(1).raw;
    /// The lot, raw.
    const LOT: i64 = UNIT / 1_000;

    fn instruments() -> Vec<Instrument> {
        let mut reg = InstrumentRegistry::new();
        for symbol in ["BTCUSDT", "ETHUSDT"] {
            reg.intern(InstrumentSpec {
                venue: "t",
                symbol,
                market: MarketType::Spot,
                tick_size: Price::parse("0.01").unwrap(),
                lot_size: Quantity::parse("0.001").unwrap(),
                min_notional: Money::from_units(5),
            })
            .unwrap();
        }
        reg.iter().cloned().collect()
    }

    fn market(ts: u64, mid: i64) -> MarketView {
        MarketView {
            ts_event: ts,
            bid: Price::from_units(mid) - Price::parse("0.01").unwrap(),
            ask: Price::from_units(mid) + Price::parse("0.01").unwrap(),
            mid: Price::from_units(mid),
            microprice: Price::from_units(mid),
            imbalance_bps: 0,
            has_market: true,
            in_sync: true,
            settled: true,
            ts_last_update: ts,
        }
    }

    fn engine(agents: usize) -> RiskEngine {
        let config = RiskConfig { max_position_notional: Money::from_units(100_000), ..RiskConfig::default() };
        let mut r = RiskEngine::new(config, &instruments(), agents);
        r.on_market(InstrumentId(0), &market(1_000, 100));
        r.on_market(InstrumentId(1), &market(1_000, 10));
        r
    }

    /// Reports `qty` of `o` filled and the IOC's remainder cancelled.
    fn fill(r: &mut RiskEngine, o: &Order, qty: Quantity) {
        let report = ExecReport {
            ts_event: r.now,
            client_order_id: o.intent_id,
            agent: o.agent,
            instrument: o.instrument,
            side: o.side,
            price: o.price,
            ..ExecReport::default()
        };
        if qty.raw > 0 {
            let kind = if qty == o.qty { ExecKind::Fill } else { ExecKind::PartialFill };
            r.on_exec(&ExecReport { kind, last_qty: qty, leaves_qty: o.qty - qty, ..report });
        }
        if qty != o.qty {
            r.on_exec(&ExecReport { kind: ExecKind::Canceled, ..report });
        }
    }

    fn give(r: &mut RiskEngine, agent: u16, inst: u32, qty: i64) {
        let side = if qty > 0 { Side::Buy } else { Side::Sell };
        r.portfolio.apply(&ExecReport {
            kind: ExecKind::Fill,
            agent: AgentId(agent),
            instrument: InstrumentId(inst),
            side,
            last_qty: Quantity::from_raw(qty.abs()),
            price: r.markets[inst as usize].mid,
            ..ExecReport::default()
        });
    }

    fn command(kind: ControlKind, agent: AgentId, instrument: InstrumentId, value: i64, price: Price) -> Control {
        Control { ts_event: 2_000, ts_recv: 2_000, kind, agent, instrument, value, price, ..Control::default() }
    }

    fn alerts(out: &RiskOutputBatch, kind: AlertKind) -> Vec<i64> {
        out.as_slice()
            .iter()
            .filter_map(|o| match o {
                RiskOutput::Alert(a) if a.kind == kind => Some(a.value),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn manual_order_goes_through_risk_and_names_the_limit() {
        let mut r = engine(4);
        let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
        let buy = command(ControlKind::ManualOrder, AgentId(3), InstrumentId(0), Quantity::from_units(2).raw, Price::ZERO);
        r.on_command(42, &buy, &mut orders, &mut out);
        let o = orders.as_slice()[0];
        assert_eq!((o.side, o.qty, o.price, o.agent), (Side::Buy, Quantity::from_units(2), Price::parse("100.01").unwrap(), AgentId(3)));
        assert_eq!(o.intent_id, crate::router::intent_id(42, 3));
        // $2,000 of notional is over the $1,000 per-order limit.
        let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
        let big =
            command(ControlKind::ManualOrder, AgentId(3), InstrumentId(0), -Quantity::from_units(20).raw, Price::parse("100").unwrap());
        r.on_command(43, &big, &mut orders, &mut out);
        assert!(orders.as_slice().iter().all(|o| o.action == OrderAction::CancelAll));
        match out.as_slice() {
            [RiskOutput::Refusal(f)] => {
                assert_eq!((f.reason, f.intent_id, f.side), (RejectReason::OrderNotional, crate::router::intent_id(43, 3), Side::Sell))
            }
            other => panic!("{other:?}"),
        }
        // Off the price band; not whole lots; an agent without a budget.
        for (agent, qty, price, reason) in
            [(1, UNIT, "150", RejectReason::PriceBand), (1, 1, "100", RejectReason::LotSize), (9, UNIT, "100", RejectReason::AgentBudget)]
        {
            let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
            let c = command(ControlKind::ManualOrder, AgentId(agent), InstrumentId(0), qty, Price::parse(price).unwrap());
            r.on_command(44, &c, &mut orders, &mut out);
            assert!(matches!(out.as_slice(), [RiskOutput::Refusal(f)] if f.reason == reason), "{reason:?}: {out:?}");
        }
    }

    #[test]
    fn kill_with_flatten_closes_everything_through_the_band() {
        let mut r = engine(4);
        give(&mut r, 2, 0, Quantity::from_units(3).raw);
        give(&mut r, 3, 1, -Quantity::from_units(7).raw);
        let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
        r.on_command(10, &command(ControlKind::Kill, ALL_AGENTS, InstrumentId(0), 1, Price::ZERO), &mut orders, &mut out);
        assert!(r.status().killed);
        assert_eq!(alerts(&out, AlertKind::Flattening), [1]);
        let sent: Vec<Order> = orders.as_slice().to_vec();
        assert_eq!(sent.len(), 2);
        // 5% band: sell BTC at 95.00, buy ETH back at 10.50, reduce-only IOC.
        assert_eq!((sent[0].side, sent[0].qty, sent[0].price), (Side::Sell, Quantity::from_units(3), Price::parse("95").unwrap()));
        assert_eq!((sent[1].side, sent[1].qty, sent[1].price), (Side::Buy, Quantity::from_units(7), Price::parse("10.5").unwrap()));
        assert!(sent.iter().all(|o| o.reduce_only && o.tif == TimeInForce::Ioc));
        assert!(sent[0].intent_id < sent[1].intent_id);
        // Only part fills: the next pass (after the retry delay) sends the rest.
        fill(&mut r, &sent[0], Quantity::from_units(3));
        fill(&mut r, &sent[1], Quantity::from_units(4));
        let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
        r.advance(2_000 + r.config().flatten_retry_ns / 2);
        r.flatten_at_timer(11, &mut orders, &mut out);
        assert!(orders.is_empty(), "too early for the next pass");
        r.advance(2_000 + r.config().flatten_retry_ns);
        r.flatten_at_timer(12, &mut orders, &mut out);
        assert_eq!(alerts(&out, AlertKind::Flattening), [2]);
        assert_eq!((orders.as_slice()[0].side, orders.as_slice()[0].qty), (Side::Buy, Quantity::from_units(3)));
        let o = orders.as_slice()[0];
        fill(&mut r, &o, o.qty);
        let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
        r.advance(2_000 + 2 * r.config().flatten_retry_ns);
        r.flatten_at_timer(13, &mut orders, &mut out);
        assert!(orders.is_empty());
        assert_eq!(alerts(&out, AlertKind::Flattened), [0]);
        assert!(!r.flatten().active);
    }

    #[test]
    fn flatten_of_one_agent_and_symbol_leaves_the_rest_and_blocks_new_risk_there() {
        let mut r = engine(4);
        give(&mut r, 2, 0, Quantity::from_units(3).raw);
        give(&mut r, 2, 1, Quantity::from_units(3).raw);
        give(&mut r, 3, 0, Quantity::from_units(3).raw);
        let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
        r.on_command(10, &command(ControlKind::Flatten, AgentId(2), InstrumentId(0), 0, Price::ZERO), &mut orders, &mut out);
        assert_eq!(orders.len(), 1);
        assert_eq!((orders.as_slice()[0].agent, orders.as_slice()[0].instrument), (AgentId(2), InstrumentId(0)));
        // The agent may not add to BTC while the flatten runs; ETH and other agents may trade.
        for (agent, inst, refused) in [(2, 0, true), (2, 1, false), (3, 0, false)] {
            let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
            let c = command(ControlKind::ManualOrder, AgentId(agent), InstrumentId(inst), UNIT, Price::ZERO);
            r.on_command(20 + i64::from(agent), &c, &mut orders, &mut out);
            let reason = out.as_slice().iter().find_map(|o| match o {
                RiskOutput::Refusal(f) => Some(f.reason),
                _ => None,
            });
            assert_eq!(reason == Some(RejectReason::ReduceOnly), refused, "agent {agent} instrument {inst}: {reason:?}");
        }
    }

    #[test]
    fn a_venue_slower_than_the_retry_gets_no_second_close_for_one_position() {
        let mut r = engine(4);
        give(&mut r, 2, 0, Quantity::from_units(3).raw);
        let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
        r.on_command(10, &command(ControlKind::Flatten, ALL_AGENTS, ALL_INSTRUMENTS, 0, Price::ZERO), &mut orders, &mut out);
        let first = orders.as_slice()[0];
        assert_eq!((first.side, first.qty), (Side::Sell, Quantity::from_units(3)));
        // The venue has not answered by the next pass, nor the one after: nothing more is sent.
        for k in 1..=2u64 {
            let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
            r.advance(2_000 + k * r.config().flatten_retry_ns);
            r.flatten_at_timer(10 + k as i64, &mut orders, &mut out);
            assert!(orders.is_empty(), "pass {k} sent {orders:?} while 3 BTC were still being sold");
        }
        // One BTC of the IOC fills, the rest is cancelled: the next pass sells the other two.
        fill(&mut r, &first, Quantity::from_units(1));
        let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
        r.advance(2_000 + 3 * r.config().flatten_retry_ns);
        r.flatten_at_timer(13, &mut orders, &mut out);
        assert_eq!((orders.as_slice()[0].side, orders.as_slice()[0].qty), (Side::Sell, Quantity::from_units(2)));
        // An agent's own resting sell does not hold the flatten back (it may never fill): once
        // that IOC has ended, the next pass sells the whole two BTC again.
        let o = orders.as_slice()[0];
        fill(&mut r, &o, Quantity::ZERO);
        let (mut sell, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
        r.on_command(
            14,
            &command(ControlKind::ManualOrder, AgentId(2), InstrumentId(0), -UNIT, Price::parse("101").unwrap()),
            &mut sell,
            &mut out,
        );
        assert_eq!(sell.len(), 1, "{out:?}");
        let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
        r.advance(2_000 + 4 * r.config().flatten_retry_ns);
        r.flatten_at_timer(15, &mut orders, &mut out);
        assert_eq!((orders.as_slice()[0].side, orders.as_slice()[0].qty), (Side::Sell, Quantity::from_units(2)));
    }

    #[test]
    fn flatten_gives_up_after_its_attempts_and_says_what_is_left() {
        let mut r = engine(4);
        give(&mut r, 0, 0, Quantity::from_units(1).raw);
        let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
        r.on_command(1, &command(ControlKind::Flatten, ALL_AGENTS, ALL_INSTRUMENTS, 0, Price::ZERO), &mut orders, &mut out);
        let attempts = r.config().flatten_attempts;
        let mut passes = 1;
        let mut last = Vec::new();
        for k in 1..=u64::from(attempts) + 1 {
            // Nothing ever fills: every IOC is cancelled.
            for o in orders.as_slice().iter().filter(|o| o.action == OrderAction::New) {
                fill(&mut r, o, Quantity::ZERO);
            }
            (orders, out) = (OrderBatch::default(), RiskOutputBatch::default());
            r.advance(2_000 + k * r.config().flatten_retry_ns);
            r.flatten_at_timer(1 + k as i64, &mut orders, &mut out);
            passes += alerts(&out, AlertKind::Flattening).len() as u32;
            if !alerts(&out, AlertKind::Flattened).is_empty() {
                last = alerts(&out, AlertKind::Flattened);
            }
        }
        assert_eq!(passes, attempts);
        assert_eq!(last, [1], "one position left");
        assert!(!r.flatten().active);
        assert_eq!(r.open_orders(), 0);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]
            /// A manual order gets exactly the decision (orders, refusal and its reason) the
            /// same position change gets as a signal's intent: the same checks, nothing skipped.
            #[test]
            fn a_manual_order_is_decided_like_the_same_intent(
                pos_lots in -3_000i64..3_000,
                qty_lots in 1i64..30_000,
                buy in any::<bool>(),
                off_bps in proptest::option::of(-800i64..800),
                agent in 0u16..4,
                budget in 50i64..5_000,
                stop in 0u8..4,
            ) {
                let config = RiskConfig { agent_budget: Money::from_units(budget), ..RiskConfig::default() };
                let mut r = RiskEngine::new(config, &instruments(), 4);
                r.on_market(InstrumentId(0), &market(1_000, 100));
                give(&mut r, agent, 0, pos_lots * LOT);
                let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
                match stop {
                    1 => r.on_control(&command(ControlKind::Kill, ALL_AGENTS, InstrumentId(0), 0, Price::ZERO), &mut orders, &mut out),
                    2 => r.on_control(&command(ControlKind::Halt, ALL_AGENTS, InstrumentId(0), 0, Price::ZERO), &mut orders, &mut out),
                    3 => r.on_control(&command(ControlKind::PauseAgent, AgentId(agent), InstrumentId(0), 0, Price::ZERO), &mut orders, &mut out),
                    _ => {}
                }
                let mut twin = r.clone();
                let side = if buy { Side::Buy } else { Side::Sell };
                let price = off_bps.map_or(Price::ZERO, |bps| Price::from_raw((Price::from_units(100).raw * (10_000 + bps) / 10_000) / 10_000_000 * 10_000_000));
                let c = command(ControlKind::ManualOrder, AgentId(agent), InstrumentId(0), qty_lots * LOT * side.sign(), price);
                let (mut manual_orders, mut manual_out) = (OrderBatch::default(), RiskOutputBatch::default());
                r.on_command(77, &c, &mut manual_orders, &mut manual_out);
                let touch = if buy { Price::parse("100.01").unwrap() } else { Price::parse("99.99").unwrap() };
                let pos = twin.portfolio().position(AgentId(agent), InstrumentId(0)).qty;
                let intent = Intent {
                    ts_event: 2_000,
                    intent_id: crate::router::intent_id(77, agent as u8),
                    instrument: InstrumentId(0),
                    agent: AgentId(agent),
                    style: ExecStyle::Aggressive,
                    _pad: 0,
                    target: Quantity::from_raw(pos.raw + qty_lots * LOT * side.sign()),
                    price: if price.raw > 0 { price } else { touch },
                };
                let (mut intent_orders, mut intent_out) = (OrderBatch::default(), RiskOutputBatch::default());
                twin.advance(2_000);
                twin.check(&intent, &mut intent_orders, &mut intent_out);
                prop_assert_eq!(manual_orders, intent_orders);
                prop_assert_eq!(manual_out, intent_out);
            }

            /// Whatever the positions and however little fills, a flatten only ever sends
            /// reduce-only orders no larger than the position, inside the price band, with
            /// rising intent ids in each event; it ends flat when fills come, and always ends.
            #[test]
            fn flatten_only_reduces_and_always_ends(
                positions in proptest::collection::vec(-50_000i64..50_000, 8),
                fill_pct in proptest::collection::vec(0i64..=100, 64),
                mids in (50i64..200, 5i64..20),
            ) {
                let mut r = engine(4);
                r.on_market(InstrumentId(0), &market(1_000, mids.0));
                r.on_market(InstrumentId(1), &market(1_000, mids.1));
                for (cell, lots) in positions.iter().enumerate() {
                    give(&mut r, (cell / 2) as u16, (cell % 2) as u32, lots * LOT);
                }
                let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
                r.on_command(1, &command(ControlKind::Flatten, ALL_AGENTS, ALL_INSTRUMENTS, 0, Price::ZERO), &mut orders, &mut out);
                let mut step = 0;
                loop {
                    let mut last_id = 0;
                    for o in orders.as_slice().iter().filter(|o| o.action == OrderAction::New) {
                        let pos = r.portfolio().position(o.agent, o.instrument).qty;
                        prop_assert!(o.reduce_only && o.qty.raw <= pos.raw.abs() && o.qty.raw > 0);
                        prop_assert_eq!(o.side, if pos.raw > 0 { Side::Sell } else { Side::Buy });
                        let mid = r.markets[o.instrument.index()].mid.raw;
                        prop_assert!((o.price.raw - mid).abs() * 10_000 <= mid * r.config().price_band_bps);
                        prop_assert!(o.intent_id > last_id);
                        last_id = o.intent_id;
                        let pct = fill_pct[step % fill_pct.len()];
                        let lots = o.qty.raw / LOT * pct / 100;
                        fill(&mut r, o, Quantity::from_raw(lots * LOT));
                    }
                    if !r.flatten().active {
                        break;
                    }
                    step += 1;
                    prop_assert!(step < 10_000, "the flatten never ended");
                    (orders, out) = (OrderBatch::default(), RiskOutputBatch::default());
                    r.advance(2_000 + step as u64 * r.config().flatten_retry_ns);
                    r.flatten_at_timer(1 + step as i64, &mut orders, &mut out);
                }
                let left = alerts(&out, AlertKind::Flattened);
                prop_assert_eq!(left.len(), 1);
                let open = (0..4u16).flat_map(|a| (0..2u32).map(move |i| (a, i)))
                    .filter(|&(a, i)| r.portfolio().position(AgentId(a), InstrumentId(i)).qty.raw != 0)
                    .count() as i64;
                prop_assert_eq!(left[0], open);
                prop_assert!(r.flatten().attempts <= r.config().flatten_attempts);
                if fill_pct.iter().all(|&p| p == 100) {
                    prop_assert_eq!(open, 0);
                }
            }
        }
    }
}
