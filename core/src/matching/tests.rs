use super::*;
use crate::event::{AgentId, BookDelta, Trade, DELTA_CLEAR, DELTA_SNAPSHOT};

fn p(s: &str) -> Price {
    Price::parse(s).unwrap()
}
fn q(s: &str) -> Quantity {
    Quantity::parse(s).unwrap()
}

fn level(side: Side, price: &str, qty: &str, flags: u8, ts: u64) -> Event {
    Event::BookDelta(BookDelta { ts_event: ts, side, price: p(price), qty: q(qty), flags: flags | DELTA_LAST, ..Default::default() })
}

/// Bids 99 (2), 98 (5); asks 101 (1), 102 (3).
fn matcher(latency_ns: u64) -> PaperMatcher {
    let mut m = PaperMatcher::new(MatchingConfig { latency_ns, taker_fee_bps: 10, maker_fee_bps: -1 }, 1, 16);
    let mut r = Vec::new();
    m.on_event(&level(Side::Buy, "99", "2", DELTA_SNAPSHOT | DELTA_CLEAR, 0), &mut r);
    for (side, price, qty) in [(Side::Buy, "98", "5"), (Side::Sell, "101", "1"), (Side::Sell, "102", "3")] {
        m.on_event(&level(side, price, qty, DELTA_SNAPSHOT, 0), &mut r);
    }
    m
}

fn order(side: Side, price: &str, qty: &str, tif: TimeInForce, order_type: OrderType) -> Order {
    Order { client_order_id: 77, agent: AgentId(2), side, price: p(price), qty: q(qty), tif, order_type, ..Default::default() }
}

fn fills(r: &[ExecReport]) -> Vec<(Price, Quantity, Liquidity)> {
    r.iter().filter(|r| r.last_qty.raw > 0).map(|r| (r.price, r.last_qty, r.liquidity)).collect()
}

#[test]
fn aggressive_limit_walks_the_book_after_latency_and_pays_taker() {
    let mut m = matcher(1_000);
    let mut r = Vec::new();
    m.submit(&order(Side::Buy, "102", "3", TimeInForce::Ioc, OrderType::Limit), 0, &mut r);
    m.on_event(&Event::Timer(Default::default()), &mut r);
    assert!(r.is_empty(), "not active before the latency has passed");
    m.on_event(&Event::Timer(crate::event::Timer { ts_event: 1_000, ..Default::default() }), &mut r);
    assert_eq!(fills(&r), vec![(p("101"), q("1"), Liquidity::Taker), (p("102"), q("2"), Liquidity::Taker)]);
    assert_eq!(r.last().unwrap().kind, ExecKind::Fill);
    // 0.1% of 204 = 0.204
    assert_eq!(r.iter().find(|x| x.price == p("102") && x.last_qty.raw > 0).unwrap().fee, Money::parse("0.204").unwrap());
    assert_eq!(m.working(), 0);
}

#[test]
fn ioc_remainder_is_cancelled_and_post_only_that_would_take_is_rejected() {
    let mut m = matcher(0);
    let mut r = Vec::new();
    m.submit(&order(Side::Sell, "99", "3", TimeInForce::Ioc, OrderType::Limit), 0, &mut r);
    m.on_event(&Event::Timer(Default::default()), &mut r);
    assert_eq!(fills(&r), vec![(p("99"), q("2"), Liquidity::Taker)]);
    assert_eq!(r.last().unwrap().kind, ExecKind::Canceled);
    assert_eq!(r.last().unwrap().leaves_qty, q("1"));
    r.clear();
    m.submit(&order(Side::Buy, "101", "1", TimeInForce::PostOnly, OrderType::Limit), 0, &mut r);
    m.on_event(&Event::Timer(Default::default()), &mut r);
    assert_eq!(r.last().unwrap().kind, ExecKind::Rejected);
}

#[test]
fn resting_order_waits_for_the_queue_ahead() {
    let mut m = matcher(0);
    let mut r = Vec::new();
    m.submit(&order(Side::Buy, "99", "1", TimeInForce::PostOnly, OrderType::Limit), 0, &mut r);
    m.on_event(&Event::Timer(Default::default()), &mut r);
    assert_eq!(r.iter().map(|x| x.kind).collect::<Vec<_>>(), vec![ExecKind::Ack]);
    r.clear();
    let trade = |qty: &str| Event::Trade(Trade { aggressor: Side::Sell, price: p("99"), qty: q(qty), ..Default::default() });
    // 2 ahead of us: a 1.5 trade leaves 0.5 ahead.
    m.on_event(&trade("1.5"), &mut r);
    assert!(fills(&r).is_empty());
    // 0.8 more: 0.5 for the queue, 0.3 for us (maker, rebate).
    m.on_event(&trade("0.8"), &mut r);
    assert_eq!(fills(&r), vec![(p("99"), q("0.3"), Liquidity::Maker)]);
    assert!(r[0].fee.raw < 0, "maker rebate");
    r.clear();
    // The ask comes down through our price: the rest fills.
    m.on_event(&level(Side::Sell, "98.5", "4", 0, 5), &mut r);
    assert_eq!(fills(&r), vec![(p("99"), q("0.7"), Liquidity::Maker)]);
    assert_eq!(m.working(), 0);
}

#[test]
fn cancel_all_and_market_orders() {
    let mut m = matcher(0);
    let mut r = Vec::new();
    m.submit(&order(Side::Buy, "97", "1", TimeInForce::Gtc, OrderType::Limit), 0, &mut r);
    m.on_event(&Event::Timer(Default::default()), &mut r);
    m.submit(
        &Order { action: OrderAction::CancelAll, agent: AgentId(2), instrument: crate::instrument::InstrumentId(0), ..Default::default() },
        0,
        &mut r,
    );
    assert_eq!(r.last().unwrap().kind, ExecKind::Canceled);
    assert_eq!(m.working(), 0);
    r.clear();
    m.submit(&order(Side::Sell, "0", "6", TimeInForce::Ioc, OrderType::Market), 0, &mut r);
    m.on_event(&Event::Timer(Default::default()), &mut r);
    assert_eq!(fills(&r), vec![(p("99"), q("2"), Liquidity::Taker), (p("98"), q("4"), Liquidity::Taker)]);
}
