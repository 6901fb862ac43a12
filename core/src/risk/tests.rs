use super::*;
use crate::event::{ControlKind, ExecKind, LimitKind};
use crate::instrument::{InstrumentRegistry, InstrumentSpec, MarketType};

fn instruments() -> Vec<Instrument> {
    let mut reg = InstrumentRegistry::new();
    reg.intern(InstrumentSpec {
        venue: "t",
        symbol: "BTCUSDT",
        market: MarketType::Spot,
        tick_size: Price::parse("0.01").unwrap(),
        lot_size: Quantity::parse("0.001").unwrap(),
        min_notional: Money::from_units(5),
    })
    .unwrap();
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

fn intent(id: u64, ts: u64, agent: u16, target: &str, price: &str) -> Intent {
    Intent {
        ts_event: ts,
        intent_id: id,
        instrument: InstrumentId(0),
        agent: AgentId(agent),
        style: ExecStyle::Aggressive,
        _pad: 0,
        target: Quantity::parse(target).unwrap(),
        price: Price::parse(price).unwrap(),
    }
}

fn engine() -> RiskEngine {
    let mut r = RiskEngine::new(RiskConfig::default(), &instruments(), 4);
    r.on_market(InstrumentId(0), &market(1_000, 100));
    r
}

fn run(r: &mut RiskEngine, i: Intent) -> (OrderBatch, RiskOutputBatch) {
    let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
    r.check(&i, &mut orders, &mut out);
    (orders, out)
}

fn refusal(out: &RiskOutputBatch) -> Option<RejectReason> {
    out.as_slice().iter().find_map(|o| match o {
        RiskOutput::Refusal(r) => Some(r.reason),
        _ => None,
    })
}

#[test]
fn approves_within_limits_and_sizes_from_position() {
    let mut r = engine();
    let (orders, out) = run(&mut r, intent(1 << 8, 1_000, 2, "5", "100.02"));
    assert_eq!(refusal(&out), None);
    let o = orders.as_slice()[0];
    assert_eq!((o.side, o.qty, o.tif, o.reduce_only), (Side::Buy, Quantity::from_units(5), TimeInForce::Ioc, false));
    assert_eq!(r.open_orders(), 1);
    // The fill arrives: position 5. A new target of 2 sells 3, reduce-only.
    r.on_exec(&ExecReport {
        client_order_id: 1 << 8,
        kind: ExecKind::Fill,
        agent: AgentId(2),
        side: Side::Buy,
        last_qty: Quantity::from_units(5),
        price: Price::from_units(100),
        ..Default::default()
    });
    assert_eq!(r.open_orders(), 0);
    let (orders, _) = run(&mut r, intent(2 << 8, 1_001, 2, "2", "99.98"));
    let o = orders.as_slice()[0];
    assert_eq!((o.side, o.qty, o.reduce_only), (Side::Sell, Quantity::from_units(3), true));
}

#[test]
fn each_limit_refuses_with_its_reason() {
    type Setup = Box<dyn Fn(&mut RiskEngine) -> Intent>;
    let cases: Vec<(&str, Setup, RejectReason)> = vec![
        ("fat finger", Box::new(|_| intent(1 << 8, 1_000, 2, "1", "110.00")), RejectReason::PriceBand),
        ("order notional", Box::new(|_| intent(1 << 8, 1_000, 2, "11", "100.00")), RejectReason::OrderNotional),
        ("off tick", Box::new(|_| intent(1 << 8, 1_000, 2, "1", "100.005")), RejectReason::TickSize),
        ("min notional", Box::new(|_| intent(1 << 8, 1_000, 2, "0.01", "100.00")), RejectReason::MinNotional),
        (
            "stale",
            Box::new(|r: &mut RiskEngine| {
                r.advance(1_000 + 6_000_000_000);
                intent(1 << 8, 1_000 + 6_000_000_000, 2, "1", "100.00")
            }),
            RejectReason::StaleData,
        ),
        (
            "out of sync",
            Box::new(|r: &mut RiskEngine| {
                r.on_market(InstrumentId(0), &MarketView { in_sync: false, ..market(1_000, 100) });
                intent(1 << 8, 1_000, 2, "1", "100.00")
            }),
            RejectReason::BookOutOfSync,
        ),
        (
            "kill switch",
            Box::new(|r: &mut RiskEngine| {
                r.on_control(
                    &Control { kind: ControlKind::Kill, ..Default::default() },
                    &mut OrderBatch::default(),
                    &mut RiskOutputBatch::default(),
                );
                intent(1 << 8, 1_000, 2, "1", "100.00")
            }),
            RejectReason::KillSwitch,
        ),
        (
            "paused agent",
            Box::new(|r: &mut RiskEngine| {
                r.on_control(
                    &Control { kind: ControlKind::PauseAgent, agent: AgentId(2), ..Default::default() },
                    &mut OrderBatch::default(),
                    &mut RiskOutputBatch::default(),
                );
                intent(1 << 8, 1_000, 2, "1", "100.00")
            }),
            RejectReason::AgentPaused,
        ),
        (
            "budget",
            Box::new(|r: &mut RiskEngine| {
                let c = Control {
                    kind: ControlKind::SetLimit,
                    limit: LimitKind::AgentBudget,
                    agent: AgentId(2),
                    value: Money::from_units(300).raw,
                    ..Default::default()
                };
                r.on_control(&c, &mut OrderBatch::default(), &mut RiskOutputBatch::default());
                intent(1 << 8, 1_000, 2, "4", "100.00")
            }),
            RejectReason::AgentBudget,
        ),
        (
            "position",
            Box::new(|r: &mut RiskEngine| {
                let c = Control {
                    kind: ControlKind::SetLimit,
                    limit: LimitKind::MaxPositionNotional,
                    value: Money::from_units(300).raw,
                    ..Default::default()
                };
                r.on_control(&c, &mut OrderBatch::default(), &mut RiskOutputBatch::default());
                intent(1 << 8, 1_000, 2, "4", "100.00")
            }),
            RejectReason::PositionLimit,
        ),
        (
            "no market",
            Box::new(|r: &mut RiskEngine| {
                r.on_market(InstrumentId(0), &MarketView { has_market: false, ..market(1_000, 100) });
                intent(1 << 8, 1_000, 2, "1", "100.00")
            }),
            RejectReason::NoMarket,
        ),
    ];
    for (name, make, want) in cases {
        let mut r = engine();
        let i = make(&mut r);
        let (orders, out) = run(&mut r, i);
        assert_eq!(refusal(&out), Some(want), "{name}");
        assert!(orders.as_slice().iter().all(|o| o.action != OrderAction::New), "{name}");
        assert_eq!(r.refusals()[want as usize], 1, "{name}: counted");
    }
}

#[test]
fn order_rate_and_open_order_limits() {
    let mut r = RiskEngine::new(RiskConfig { orders_per_sec: 1, order_burst: 2, ..Default::default() }, &instruments(), 4);
    r.on_market(InstrumentId(0), &market(1_000, 100));
    // Alternate agents so the replace-cancel does not free the previous order.
    let reasons: Vec<_> = (0..3).map(|k| refusal(&run(&mut r, intent((k + 1) << 8, 1_000, 2 + (k as u16 % 2), "1", "100.00")).1)).collect();
    assert_eq!(reasons, vec![None, None, Some(RejectReason::OrderRate)]);
    // One second of event time later a token is back.
    r.on_market(InstrumentId(0), &market(1_000_001_000, 100));
    assert_eq!(refusal(&run(&mut r, intent(9 << 8, 1_000_001_000, 3, "2", "100.00")).1), None);

    let mut r = RiskEngine::new(RiskConfig { max_open_orders: 1, ..Default::default() }, &instruments(), 4);
    r.on_market(InstrumentId(0), &market(1_000, 100));
    assert_eq!(refusal(&run(&mut r, intent(1 << 8, 1_000, 2, "1", "100.00")).1), None);
    // Same agent, same instrument: the old order is cancelled first, so this passes too.
    let (orders, out) = run(&mut r, intent(2 << 8, 1_000, 2, "2", "100.00"));
    assert_eq!(refusal(&out), None);
    assert_eq!(orders.as_slice()[0].action, OrderAction::CancelAll);
}

#[test]
fn drawdown_halts_and_margin_ladder_cancels_then_deleverages() {
    let mut r = engine();
    r.on_exec(&ExecReport {
        agent: AgentId(2),
        side: Side::Buy,
        last_qty: Quantity::from_units(9),
        price: Price::from_units(100),
        kind: ExecKind::Fill,
        ..Default::default()
    });
    let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
    r.evaluate_guards(1, &mut orders, &mut out);
    assert_eq!(r.status().drawdown_bps, 0);
    // Equity 4000; a fall to 50 loses 450 = 11.25%: warning.
    r.on_market(InstrumentId(0), &market(2_000, 50));
    r.evaluate_guards(2, &mut orders, &mut out);
    assert!(out.as_slice().iter().any(|o| matches!(o, RiskOutput::Alert(a) if a.kind == AlertKind::DrawdownWarning)));
    // Another agent buys 5 at 50, then a fall to 1 loses 891 + 245 = 1136 of 4000 = 28.4%: halt.
    let mut more = r.clone();
    more.on_exec(&ExecReport {
        agent: AgentId(3),
        side: Side::Buy,
        last_qty: Quantity::from_units(5),
        price: Price::from_units(50),
        kind: ExecKind::Fill,
        ..Default::default()
    });
    more.on_market(InstrumentId(0), &market(3_000, 1));
    let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
    more.evaluate_guards(3, &mut orders, &mut out);
    assert!(more.status().drawdown_halted, "{:?}", more.status());
    assert_eq!(refusal(&run(&mut more, intent(5 << 8, 3_000, 2, "10", "1.00")).1), Some(RejectReason::Drawdown));
    // Reducing is still allowed while halted.
    assert_eq!(refusal(&run(&mut more, intent(6 << 8, 3_000, 2, "0", "1.00")).1), None);

    // Margin ladder, one agent with a $1,000 budget.
    let mut r = RiskEngine::new(
        RiskConfig {
            max_position_notional: Money::from_units(10_000),
            max_order_notional: Money::from_units(10_000),
            ..Default::default()
        },
        &instruments(),
        1,
    );
    r.on_market(InstrumentId(0), &market(1_000, 100));
    r.on_exec(&ExecReport {
        agent: AgentId(0),
        side: Side::Buy,
        last_qty: Quantity::from_units(9),
        price: Price::from_units(100),
        kind: ExecKind::Fill,
        ..Default::default()
    });
    let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
    r.evaluate_guards(4, &mut orders, &mut out);
    assert_eq!(r.status().ladder, 1, "900/1000 = 90%: reduce-only");
    assert_eq!(refusal(&run(&mut r, intent(7 << 8, 1_000, 0, "9.5", "100.00")).1), Some(RejectReason::ReduceOnly));
    r.on_exec(&ExecReport {
        agent: AgentId(0),
        side: Side::Buy,
        last_qty: Quantity::from_units(1),
        price: Price::from_units(100),
        kind: ExecKind::Fill,
        ..Default::default()
    });
    let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
    r.evaluate_guards(8, &mut orders, &mut out);
    assert_eq!(r.status().ladder, 2);
    let cut = orders.as_slice().iter().find(|o| o.action == OrderAction::New).expect("a deleverage order");
    assert_eq!((cut.side, cut.reduce_only, cut.qty), (Side::Sell, true, Quantity::parse("2.5").unwrap()));
}

fn fill(r: &mut RiskEngine, agent: u16, side: Side, units: &str, price: i64) {
    r.on_exec(&ExecReport {
        agent: AgentId(agent),
        side,
        last_qty: Quantity::parse(units).unwrap(),
        price: Price::from_units(price),
        kind: ExecKind::Fill,
        ..Default::default()
    });
}

fn agent_alerts(out: &RiskOutputBatch) -> Vec<(u16, i64)> {
    out.as_slice()
        .iter()
        .filter_map(|o| match o {
            RiskOutput::Alert(a) if a.kind == AlertKind::AgentMarginLadder => Some((a.agent.0, a.value)),
            _ => None,
        })
        .collect()
}

#[test]
fn one_agent_over_its_margin_goes_reduce_only_then_is_cut_back_while_the_others_trade() {
    let cfg = RiskConfig {
        max_position_notional: Money::from_units(10_000),
        max_order_notional: Money::from_units(10_000),
        ..Default::default()
    };
    // Two agents of $1,000 each: one agent's 90% is the portfolio's 45%.
    let mut r = RiskEngine::new(cfg, &instruments(), 2);
    r.on_market(InstrumentId(0), &market(1_000, 100));
    // Agent 0 rests a bid, then fills 9 at 100: $900 of its $1,000.
    let (orders, _) = run(&mut r, intent(1 << 8, 1_000, 0, "0.5", "99.00"));
    assert_eq!(orders.len(), 1, "resting");
    fill(&mut r, 0, Side::Buy, "9", 100);
    let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
    r.evaluate_guards(2, &mut orders, &mut out);
    assert_eq!(r.status().ladder, 0, "the portfolio is at 45%");
    assert_eq!((r.agent_ladder(AgentId(0)), r.agent_ladder(AgentId(1))), (1, 0));
    assert_eq!(agent_alerts(&out), vec![(0, 1)]);
    let cancel = orders.as_slice().iter().find(|o| o.action == OrderAction::CancelAll).expect("its resting orders cancelled");
    assert_eq!((cancel.agent, cancel.instrument), (AgentId(0), ALL_INSTRUMENTS));
    // Reduce-only for agent 0 (refused under the agent_margin label), agent 1 trades.
    let refused = refusal(&run(&mut r, intent(3 << 8, 1_000, 0, "9.5", "100.00")).1);
    assert_eq!(refused, Some(RejectReason::AgentBudget));
    assert_eq!(RejectReason::AgentBudget.label(), "agent_margin");
    assert_eq!(refusal(&run(&mut r, intent(4 << 8, 1_000, 1, "2", "100.00")).1), None);
    let (orders, out) = run(&mut r, intent(5 << 8, 1_000, 0, "8", "100.00"));
    assert_eq!(refusal(&out), None, "reducing passes");
    assert!(orders.as_slice().iter().any(|o| o.action == OrderAction::New && o.reduce_only && o.side == Side::Sell));
    // The reduce order is cancelled unfilled and a late fill takes agent 0 to $1,000: 100%.
    let mut r = r.clone();
    r.on_exec(&ExecReport { client_order_id: 5 << 8, agent: AgentId(0), kind: ExecKind::Canceled, ..Default::default() });
    fill(&mut r, 0, Side::Buy, "1", 100);
    let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
    r.evaluate_guards(6, &mut orders, &mut out);
    assert_eq!(r.agent_ladder(AgentId(0)), 2);
    assert_eq!(agent_alerts(&out), vec![(0, 2)]);
    // Cut back to 85% of its equity: $150 at 100 = 1.5.
    let cut = orders.as_slice().iter().find(|o| o.action == OrderAction::New).expect("a cut");
    assert_eq!(
        (cut.agent, cut.side, cut.reduce_only, cut.tif, cut.qty),
        (AgentId(0), Side::Sell, true, TimeInForce::Ioc, Quantity::parse("1.5").unwrap())
    );
    // While the cut is working, the next evaluation sends no second one.
    let (mut again, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
    r.evaluate_guards(7, &mut again, &mut out);
    assert!(again.is_empty() && out.is_empty(), "{again:?} {out:?}");
    // It fills: $850 of $1,000 is the reduce-only level, where it stays.
    r.on_exec(&ExecReport {
        client_order_id: cut.intent_id,
        agent: AgentId(0),
        side: Side::Sell,
        kind: ExecKind::Fill,
        last_qty: cut.qty,
        price: Price::from_units(100),
        ..Default::default()
    });
    let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
    r.evaluate_guards(8, &mut orders, &mut out);
    assert_eq!((r.agent_ladder(AgentId(0)), agent_alerts(&out)), (1, vec![(0, 1)]));
    assert!(orders.is_empty(), "going down the ladder cancels nothing");
    // Flat again: back to normal, and opening orders pass.
    fill(&mut r, 0, Side::Sell, "8.5", 100);
    let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
    r.evaluate_guards(9, &mut orders, &mut out);
    assert_eq!((r.agent_ladder(AgentId(0)), agent_alerts(&out)), (0, vec![(0, 0)]));
    assert_eq!(refusal(&run(&mut r, intent(10 << 8, 1_000, 0, "1", "100.00")).1), None);
}

mod props {
    //! No accepted order ever breaks a limit, whatever the sequence of markets, fills and intents.
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Market(i64),
        Intent { agent: u16, target_lots: i64, offset_ticks: i64 },
        FillOpen,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (50i64..150).prop_map(Step::Market),
            (0u16..4, -30_000i64..30_000, -1_000i64..1_000).prop_map(|(agent, target_lots, offset_ticks)| Step::Intent {
                agent,
                target_lots,
                offset_ticks
            }),
            Just(Step::FillOpen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn accepted_orders_respect_every_limit(steps in proptest::collection::vec(step(), 1..120)) {
            let cfg = RiskConfig::default();
            let mut r = RiskEngine::new(cfg.clone(), &instruments(), 4);
            let mut ts = 1_000u64;
            let mut mid = 100i64;
            r.on_market(InstrumentId(0), &market(ts, mid));
            let mut open: Vec<Order> = Vec::new();
            for (k, s) in steps.into_iter().enumerate() {
                ts += 1_000_000;
                match s {
                    Step::Market(m) => {
                        mid = m;
                        r.on_market(InstrumentId(0), &market(ts, mid));
                    }
                    Step::FillOpen => {
                        for o in open.drain(..) {
                            r.on_exec(&ExecReport { client_order_id: o.intent_id, agent: o.agent, side: o.side, kind: ExecKind::Fill, last_qty: o.qty, price: o.price, ..Default::default() });
                        }
                    }
                    Step::Intent { agent, target_lots, offset_ticks } => {
                        let price = Price::from_units(mid) + Price::from_raw(offset_ticks * Price::parse("0.01").unwrap().raw);
                        let i = Intent { ts_event: ts, intent_id: ((k as u64) + 1) << 8 | u64::from(agent), instrument: InstrumentId(0), agent: AgentId(agent), style: ExecStyle::Aggressive, _pad: 0, target: Quantity::from_raw(target_lots * Quantity::parse("0.001").unwrap().raw), price };
                        let before = r.portfolio().position(AgentId(agent), InstrumentId(0)).qty;
                        let status = r.status();
                        let (orders, _) = run(&mut r, i);
                        for o in orders.as_slice() {
                            if o.action == OrderAction::CancelAll {
                                open.retain(|x| x.agent != o.agent);
                                continue;
                            }
                            let n = notional(o.price, o.qty).unwrap();
                            prop_assert!(n <= cfg.max_order_notional, "order notional {n}");
                            prop_assert!(n >= Money::from_units(5), "min notional");
                            let m = Price::from_units(mid);
                            prop_assert!(i128::from((o.price.raw - m.raw).abs()) * 10_000 <= i128::from(cfg.price_band_bps) * i128::from(m.raw), "band");
                            let after = before.raw + o.qty.raw * o.side.sign();
                            if after.abs() > before.raw.abs() {
                                prop_assert!(!status.killed && !status.halted && !status.drawdown_halted && status.ladder == 0);
                                prop_assert!(notional(m.max(o.price), Quantity::from_raw(after.abs())).unwrap() <= cfg.max_position_notional, "position");
                            }
                            prop_assert!(o.qty.raw % Quantity::parse("0.001").unwrap().raw == 0, "lot");
                            prop_assert!(o.price.raw % Price::parse("0.01").unwrap().raw == 0, "tick");
                            open.push(*o);
                        }
                        let s = r.portfolio().agent_summary(AgentId(agent));
                        let open_notional: i64 = open.iter().filter(|o| o.agent == AgentId(agent)).map(|o| notional(o.price, o.qty).unwrap().raw).sum();
                        if orders.as_slice().iter().any(|o| o.action == OrderAction::New && !o.reduce_only) {
                            prop_assert!(s.gross_exposure.raw + open_notional <= s.equity.raw, "budget: {} + {} > {}", s.gross_exposure, open_notional, s.equity);
                        }
                        prop_assert!(open.iter().filter(|o| o.agent == AgentId(agent)).count() <= cfg.max_open_orders as usize);
                    }
                }
            }
        }
    }

    #[derive(Debug, Clone)]
    enum LadderStep {
        Market(i64),
        /// A fill from outside risk's view (a late venue fill): agent, signed lots.
        Fill(u16, i64),
        Intent {
            agent: u16,
            target_lots: i64,
        },
        FillOpen,
    }

    fn ladder_step() -> impl Strategy<Value = LadderStep> {
        prop_oneof![
            (60i64..140).prop_map(LadderStep::Market),
            (0u16..3, -6_000i64..6_000).prop_map(|(a, lots)| LadderStep::Fill(a, lots)),
            (0u16..3, -15_000i64..15_000).prop_map(|(agent, target_lots)| LadderStep::Intent { agent, target_lots }),
            Just(LadderStep::FillOpen),
        ]
    }

    /// An agent's margin use against its budget (or its equity, when lower), bps, worked out
    /// here from the portfolio.
    fn agent_ratio(r: &RiskEngine, agent: u16) -> i64 {
        let s = r.portfolio().agent_summary(AgentId(agent));
        let base = s.equity.min(s.capital);
        if base.raw > 0 {
            ratio_bps(s.gross_exposure, base)
        } else if s.gross_exposure.raw > 0 {
            10_000
        } else {
            0
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Whatever the fills and prices: an agent over 85% of its own margin never has a
        /// position-increasing order accepted, and one over 95% (with no cut already working
        /// and the portfolio's own ladder not deleveraging) is sent a reducing order.
        #[test]
        fn the_per_agent_ladder_holds_for_any_fills_and_prices(steps in proptest::collection::vec(ladder_step(), 1..150)) {
            let cfg = RiskConfig { max_position_notional: Money::from_units(5_000), max_order_notional: Money::from_units(5_000), ..RiskConfig::default() };
            let mut r = RiskEngine::new(cfg, &instruments(), 3);
            let lot = Quantity::parse("0.001").unwrap().raw;
            let mut ts = 1_000u64;
            let mut mid = 100i64;
            r.on_market(InstrumentId(0), &market(ts, mid));
            let mut open: Vec<Order> = Vec::new();
            for (k, s) in steps.into_iter().enumerate() {
                ts += 1_000_000;
                match s {
                    LadderStep::Market(m) => {
                        mid = m;
                        r.on_market(InstrumentId(0), &market(ts, mid));
                    }
                    LadderStep::Fill(agent, lots) if lots != 0 => {
                        let side = if lots > 0 { Side::Buy } else { Side::Sell };
                        r.on_exec(&ExecReport { agent: AgentId(agent), side, kind: ExecKind::Fill, last_qty: Quantity::from_raw(lots.abs() * lot), price: Price::from_units(mid), ..Default::default() });
                    }
                    LadderStep::Fill(..) => {}
                    LadderStep::FillOpen => {
                        for o in open.drain(..) {
                            r.on_exec(&ExecReport { client_order_id: o.intent_id, agent: o.agent, side: o.side, kind: ExecKind::Fill, last_qty: o.qty, price: o.price, ..Default::default() });
                        }
                    }
                    LadderStep::Intent { agent, target_lots } => {
                        let level = r.agent_ladder(AgentId(agent));
                        let before = r.portfolio().position(AgentId(agent), InstrumentId(0)).qty.raw;
                        let i = Intent { ts_event: ts, intent_id: ((k as u64) + 1) << 8 | u64::from(agent), instrument: InstrumentId(0), agent: AgentId(agent), style: ExecStyle::Aggressive, _pad: 0, target: Quantity::from_raw(target_lots * lot), price: Price::from_units(mid) };
                        let (orders, _) = run(&mut r, i);
                        for o in orders.as_slice() {
                            if o.action == OrderAction::CancelAll {
                                open.retain(|x| x.agent != o.agent);
                                continue;
                            }
                            let after = before + o.qty.raw * o.side.sign();
                            if level >= 1 {
                                prop_assert!(after.abs() <= before.abs(), "agent {agent} at ladder {level} got {o:?} from {before}");
                            }
                            open.push(*o);
                        }
                    }
                }
                // The guards, as at every timer; a change that did not fit one event's
                // batches comes at the next, so a few timers in a row settle every agent.
                let working: Vec<bool> = (0..3).map(|a| open.iter().any(|o| o.agent == AgentId(a))).collect();
                let mut orders: Vec<Order> = Vec::new();
                for t in 0..4 {
                    let (mut batch, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
                    r.evaluate_guards((k as i64 + 1) * 8 + t, &mut batch, &mut out);
                    for o in batch.as_slice() {
                        if o.action == OrderAction::CancelAll {
                            open.retain(|x| !(o.agent == ALL_AGENTS || x.agent == o.agent));
                        } else {
                            open.push(*o);
                        }
                    }
                    orders.extend_from_slice(batch.as_slice());
                    if out.is_empty() {
                        break;
                    }
                }
                for a in 0..3u16 {
                    let ratio = agent_ratio(&r, a);
                    let level = r.agent_ladder(AgentId(a));
                    prop_assert_eq!(level >= 1, ratio >= 8_500, "agent {} at {} bps: level {}", a, ratio, level);
                    prop_assert_eq!(level == 2, ratio >= 9_500, "agent {} at {} bps: level {}", a, ratio, level);
                    if level == 2 && r.status().ladder < 2 && !working[a as usize] {
                        let pos = r.portfolio().position(AgentId(a), InstrumentId(0)).qty.raw;
                        let cut = orders.iter().find(|o| o.agent == AgentId(a) && o.action == OrderAction::New);
                        prop_assert!(cut.is_some_and(|o| o.reduce_only && o.side.sign() == -pos.signum() && o.qty.raw <= pos.abs()), "agent {} at {} bps: no cut in {:?}", a, ratio, orders);
                    }
                }
            }
        }
    }
}

#[test]
fn limits_that_would_overflow_money_are_refused_naming_the_setting() {
    use crate::aggregate::MAX_AGENTS;
    assert_eq!(RiskConfig::default().validate(MAX_AGENTS, 3), Ok(()));
    // 600M × 16 agents wrapped the capital to -8.8e9 in release builds.
    let budget = RiskConfig { agent_budget: Money::from_units(600_000_000), ..Default::default() };
    let err = budget.validate(MAX_AGENTS, 3).unwrap_err();
    assert_eq!(err.setting, RiskSetting::AgentBudget, "{err}");
    assert!(err.to_string().starts_with("agent_budget_usd: 600000000.00 × 16 agents = 9600000000.00, "), "{err}");
    assert!(err.to_string().ends_with("at most 72057594.03 here"), "{err}");
    // The largest budget allowed keeps capital within the headroom.
    let most = Money::from_raw(MONEY_HEADROOM.raw / MAX_AGENTS as i64);
    assert_eq!(RiskConfig { agent_budget: most, ..Default::default() }.validate(MAX_AGENTS, 3), Ok(()));
    let position = RiskConfig { max_position_notional: Money::from_units(100_000_000), ..Default::default() };
    assert_eq!(position.validate(MAX_AGENTS, 3).unwrap_err().setting, RiskSetting::MaxPosition);
    let orders = RiskConfig { max_open_orders: 10_000, max_order_notional: Money::from_units(10_000), ..Default::default() };
    assert_eq!(orders.validate(MAX_AGENTS, 3).unwrap_err().setting, RiskSetting::MaxOrder);
    for (bad, setting) in [
        (RiskConfig { agent_budget: Money::ZERO, ..Default::default() }, RiskSetting::AgentBudget),
        (RiskConfig { max_position_notional: Money::ZERO, ..Default::default() }, RiskSetting::MaxPosition),
        (RiskConfig { max_order_notional: Money::ZERO, ..Default::default() }, RiskSetting::MaxOrder),
        (RiskConfig { orders_per_sec: 0, ..Default::default() }, RiskSetting::OrdersPerSec),
        (RiskConfig { order_burst: 0, ..Default::default() }, RiskSetting::OrderBurst),
        (RiskConfig { max_open_orders: 0, ..Default::default() }, RiskSetting::MaxOpenOrders),
        (RiskConfig { max_open_orders: MAX_OPEN_ORDERS_LIMIT + 1, ..Default::default() }, RiskSetting::MaxOpenOrders),
        (RiskConfig { stale_after_ns: 0, ..Default::default() }, RiskSetting::StaleAfter),
        (RiskConfig { stale_after_ns: u64::MAX, ..Default::default() }, RiskSetting::StaleAfter),
        (RiskConfig { price_band_bps: 0, ..Default::default() }, RiskSetting::PriceBand),
        (RiskConfig { leverage: 0, ..Default::default() }, RiskSetting::Leverage),
    ] {
        assert_eq!(bad.validate(MAX_AGENTS, 3).unwrap_err().setting, setting, "{bad:?}");
    }
}

#[test]
fn an_operator_cannot_set_a_limit_the_configuration_would_refuse() {
    let mut r = RiskEngine::new(RiskConfig::default(), &instruments(), crate::aggregate::MAX_AGENTS);
    let set = |r: &mut RiskEngine, limit, agent, value| {
        let mut out = RiskOutputBatch::default();
        let c = Control { kind: ControlKind::SetLimit, limit, agent, value, ..Default::default() };
        r.on_control(&c, &mut OrderBatch::default(), &mut out);
        !out.as_slice().is_empty()
    };
    let huge = Money::from_units(600_000_000).raw;
    assert!(!set(&mut r, LimitKind::AgentBudget, ALL_AGENTS, huge), "every agent's budget");
    assert!(r.portfolio().total().capital > Money::ZERO);
    assert!(!set(&mut r, LimitKind::AgentBudget, AgentId(2), i64::MAX), "one agent's budget");
    assert!(!set(&mut r, LimitKind::AgentBudget, AgentId(2), 0));
    assert!(!set(&mut r, LimitKind::MaxOpenOrders, ALL_AGENTS, i64::from(u32::MAX)));
    assert!(!set(&mut r, LimitKind::StaleAfterNs, ALL_AGENTS, i64::MAX));
    assert_eq!(r.config(), &RiskConfig::default(), "nothing refused was applied");
    assert_eq!(r.portfolio().total().capital, Money::from_units(16_000));
    assert!(set(&mut r, LimitKind::AgentBudget, AgentId(2), Money::from_units(5_000).raw));
    assert_eq!(r.portfolio().budget(AgentId(2)), Money::from_units(5_000));
    assert!(set(&mut r, LimitKind::MaxOrderNotional, ALL_AGENTS, Money::from_units(500).raw));
    assert_eq!(r.config().max_order_notional, Money::from_units(500));
}

#[test]
fn two_agents_cut_in_one_timer_get_orders_the_router_sends_both() {
    let cfg = RiskConfig {
        max_position_notional: Money::from_units(10_000),
        max_order_notional: Money::from_units(10_000),
        ..Default::default()
    };
    // Three agents of $1,000: two of them at 100% of theirs is the portfolio's 67%.
    let mut r = RiskEngine::new(cfg, &instruments(), 3);
    r.on_market(InstrumentId(0), &market(1_000, 100));
    fill(&mut r, 0, Side::Buy, "10", 100);
    fill(&mut r, 1, Side::Buy, "10", 100);
    // Up the ladder one agent a timer (a cancel and a cut each fill the batch), then both cuts
    // come back unfilled.
    for seq in [6, 7] {
        let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
        r.evaluate_guards(seq, &mut orders, &mut out);
        for o in orders.as_slice().iter().filter(|o| o.action == OrderAction::New) {
            r.on_exec(&ExecReport { client_order_id: o.intent_id, agent: o.agent, kind: ExecKind::Canceled, ..Default::default() });
        }
    }
    assert_eq!((r.status().ladder, r.agent_ladder(AgentId(0)), r.agent_ladder(AgentId(1))), (0, 2, 2));
    // Both still over 95% with nothing working: both are cut in the same timer, each order with
    // its own intent id, and the router sends both.
    let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
    r.evaluate_guards(8, &mut orders, &mut out);
    let cuts: Vec<&Order> = orders.as_slice().iter().filter(|o| o.action == OrderAction::New).collect();
    assert_eq!(cuts.iter().map(|o| o.agent.0).collect::<Vec<_>>(), vec![0, 1], "{orders:?}");
    assert!(cuts.iter().all(|o| o.reduce_only && o.side == Side::Sell));
    let mut router = crate::router::Router::new(1);
    for o in &cuts {
        let mut o = **o;
        assert!(router.route(&mut o), "routed: {o:?}");
    }
    assert_eq!(router.duplicates(), 0);
}
