//! The Binance execution client and the order gateway against the local exchange's order
//! desk over loopback: signed round trips, refusals and their reasons, filters that stop an
//! order before it leaves, the unknown-state path (no duplicate orders), rate limits.
//!
//! The tape is two lines: a depth update (it names the symbol and gives exchangeInfo its
//! decimals: tick 0.01, lot 0.001) and a REST snapshot that seeds the exchange's book with
//! best bid 60000.00 × 1.000 and best ask 60001.00 × 0.500. Nobody subscribes, so the book
//! stays there.

use sapphire_core::event::{AgentId, Event, ExecKind, ExecReport, Liquidity, RejectReason, Side};
use sapphire_core::fixed::{Money, Price, Quantity};
use sapphire_core::instrument::{Instrument, InstrumentId, MarketType};
use sapphire_core::order::{Order, OrderAction, OrderType, TimeInForce};
use sapphire_core::ring::{ring, Consumer};
use sapphire_gateway::binance::BinanceMarket;
use sapphire_gateway::local_exchange::orders::{DeskLimit, OrderFault, LOCAL_API_KEY, LOCAL_API_SECRET};
use sapphire_gateway::local_exchange::tape::Tape;
use sapphire_gateway::local_exchange::{LocalExchange, LocalExchangeConfig, Pace};
use sapphire_gateway::venue::binance::{BinanceExecution, BinanceExecutionConfig};
use sapphire_gateway::venue::rate_limit::{RateLimit, UsageKind};
use sapphire_gateway::venue::{
    client_order_id, Credentials, ExecutionVenue, OrderGateway, OrderGatewayConfig, OrderRequest, VenueError, VenueOrderStatus,
    VenueOrderType, VenueTif,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TAPE: &str = r#"1000 {"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":1,"u":2,"b":[["59999.99","0.001"]],"a":[["60001.01","0.001"]]}}
1001 {"lastUpdateId":10,"bids":[["60000.00","1.000"]],"asks":[["60001.00","0.500"]]}
"#;

fn px(s: &str) -> Price {
    Price::parse(s).unwrap()
}

fn qty(s: &str) -> Quantity {
    Quantity::parse(s).unwrap()
}

async fn exchange(market: BinanceMarket) -> LocalExchange {
    let mut tape = Tape::default();
    tape.add_text("tape", TAPE).unwrap();
    LocalExchange::start(LocalExchangeConfig::new(market, Pace::Fast), tape).await.unwrap()
}

fn config(ex: &LocalExchange, market: BinanceMarket) -> BinanceExecutionConfig {
    let mut c = BinanceExecutionConfig::new(market, ex.rest_url());
    c.timeout = Duration::from_millis(500);
    c
}

async fn client_with(c: BinanceExecutionConfig, secret: &str) -> Arc<BinanceExecution> {
    let client = BinanceExecution::new(c, Credentials::new(LOCAL_API_KEY, secret)).unwrap();
    client.sync_time().await.unwrap();
    Arc::new(client)
}

async fn client(ex: &LocalExchange, market: BinanceMarket) -> Arc<BinanceExecution> {
    client_with(config(ex, market), LOCAL_API_SECRET).await
}

fn limit(id: &str, side: Side, price: &str, q: &str, tif: VenueTif) -> OrderRequest {
    OrderRequest {
        symbol: "BTCUSDT".into(),
        client_id: id.into(),
        side,
        order_type: VenueOrderType::Limit,
        tif,
        price: Some(price.into()),
        qty: q.into(),
        reduce_only: false,
    }
}

#[tokio::test]
async fn place_query_cancel_and_open_orders_round_trip() {
    let ex = exchange(BinanceMarket::Spot).await;
    let c = client(&ex, BinanceMarket::Spot).await;
    let placed = c.place(&limit("sph-1", Side::Buy, "59000.00", "0.010", VenueTif::Gtc)).await.unwrap();
    assert_eq!((placed.status, placed.client_id.as_str(), placed.qty), (VenueOrderStatus::New, "sph-1", qty("0.01")));
    assert_eq!(placed.price, px("59000"));
    c.place(&limit("sph-2", Side::Sell, "61000.00", "0.020", VenueTif::Gtc)).await.unwrap();
    let q = c.query("BTCUSDT", "sph-1").await.unwrap().unwrap();
    assert_eq!((q.status, q.side, q.venue_id.as_str()), (VenueOrderStatus::New, Side::Buy, placed.venue_id.as_str()));
    assert_eq!(c.query("BTCUSDT", "sph-404").await.unwrap(), None, "-2013 is 'no such order', not an error");
    assert_eq!(c.open_orders(Some("BTCUSDT")).await.unwrap().len(), 2);
    let cancelled = c.cancel("BTCUSDT", "sph-1").await.unwrap();
    assert_eq!((cancelled.status, cancelled.client_id.as_str()), (VenueOrderStatus::Canceled, "sph-1"));
    let again = c.cancel("BTCUSDT", "sph-1").await.unwrap_err();
    assert_eq!((again.code(), again.reject_reason()), (Some(-2011), RejectReason::VenueUnknownOrder));
    let open = c.open_orders(None).await.unwrap();
    assert_eq!(open.iter().map(|o| o.client_id.as_str()).collect::<Vec<_>>(), ["sph-2"]);
    c.place(&limit("sph-3", Side::Sell, "61000.50", "0.020", VenueTif::Gtc)).await.unwrap();
    c.cancel_all("BTCUSDT").await.unwrap();
    assert!(c.open_orders(Some("BTCUSDT")).await.unwrap().is_empty());
    c.cancel_all("BTCUSDT").await.unwrap();
    assert_eq!(ex.orders().orders().len(), 3);
    // One pooled keep-alive connection carried all of it.
    assert_eq!(ex.orders().connections(), 1, "{} requests", ex.orders().requests());
    assert!(c.balances().await.is_ok());
    ex.shutdown().await;
}

#[tokio::test]
async fn marketable_orders_fill_against_the_book_top() {
    let ex = exchange(BinanceMarket::Spot).await;
    let c = client(&ex, BinanceMarket::Spot).await;
    // IOC above the ask: takes the top's 0.5 at 60001.00, the rest expires.
    let ioc = c.place(&limit("sph-10", Side::Buy, "60002.00", "0.800", VenueTif::Ioc)).await.unwrap();
    assert_eq!((ioc.status, ioc.executed), (VenueOrderStatus::Expired, qty("0.5")));
    assert_eq!(ioc.avg_price(), px("60001"));
    assert_eq!(ioc.fills.len(), 1);
    // FOK larger than the top: nothing.
    let fok = c.place(&limit("sph-11", Side::Buy, "60002.00", "0.800", VenueTif::Fok)).await.unwrap();
    assert_eq!((fok.status, fok.executed), (VenueOrderStatus::Expired, Quantity::ZERO));
    // Market sell into the bid.
    let mut mkt = limit("sph-12", Side::Sell, "0", "0.300", VenueTif::Gtc);
    mkt.order_type = VenueOrderType::Market;
    mkt.price = None;
    let m = c.place(&mkt).await.unwrap();
    assert_eq!((m.status, m.executed, m.avg_price()), (VenueOrderStatus::Filled, qty("0.3"), px("60000")));
    // Post-only that would take: spot refuses LIMIT_MAKER.
    let e = c.place(&limit("sph-13", Side::Buy, "60001.00", "0.010", VenueTif::PostOnly)).await.unwrap_err();
    assert_eq!(e.code(), Some(-2010));
    assert!(e.to_string().contains("Order would immediately match and take."), "{e}");
    // Post-only that rests is fine.
    assert_eq!(c.place(&limit("sph-14", Side::Buy, "60000.99", "0.010", VenueTif::PostOnly)).await.unwrap().status, VenueOrderStatus::New);
    ex.shutdown().await;
}

#[tokio::test]
async fn futures_post_only_reduce_only_and_positions() {
    let ex = exchange(BinanceMarket::UsdM).await;
    let c = client(&ex, BinanceMarket::UsdM).await;
    // GTX that would take expires (USD-M's behaviour).
    let gtx = c.place(&limit("sph-20", Side::Buy, "60001.00", "0.010", VenueTif::PostOnly)).await.unwrap();
    assert_eq!(gtx.status, VenueOrderStatus::Expired);
    // Reduce-only with no position: refused.
    let mut ro = limit("sph-21", Side::Sell, "60000.00", "0.010", VenueTif::Ioc);
    ro.reduce_only = true;
    assert_eq!(c.place(&ro).await.unwrap_err().code(), Some(-2022));
    let buy = c.place(&limit("sph-22", Side::Buy, "60001.00", "0.010", VenueTif::Ioc)).await.unwrap();
    assert_eq!((buy.status, buy.executed), (VenueOrderStatus::Filled, qty("0.01")));
    let positions = c.positions().await.unwrap();
    assert_eq!((positions[0].symbol.as_str(), positions[0].qty), ("BTCUSDT", qty("0.01")));
    // Now reducing is allowed, and exempt from the minimum notional.
    ro.client_id = "sph-23".into();
    ro.qty = "0.001".into();
    assert_eq!(c.place(&ro).await.unwrap().status, VenueOrderStatus::Filled);
    // Notional below 5 USDT is refused by the venue (-4164) when not reduce-only.
    let small = c.place(&limit("sph-24", Side::Buy, "1000.00", "0.001", VenueTif::Gtc)).await.unwrap_err();
    assert_eq!((small.code(), small.reject_reason()), (Some(-4164), RejectReason::VenueFilter));
    ex.shutdown().await;
}

#[tokio::test]
async fn wrong_secret_stale_timestamp_and_wrong_key_are_refused_like_binance() {
    let ex = exchange(BinanceMarket::Spot).await;
    let bad = client_with(config(&ex, BinanceMarket::Spot), "not-the-secret").await;
    let e = bad.place(&limit("sph-30", Side::Buy, "59000.00", "0.010", VenueTif::Gtc)).await.unwrap_err();
    match &e {
        VenueError::Refused { code, msg, status, .. } => {
            assert_eq!((*code, msg.as_str(), *status), (-1022, "Signature for this request is not valid.", 400));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(e.to_string(), "binance refused (-1022): Signature for this request is not valid.");
    assert!(e.is_terminal());
    let late = client(&ex, BinanceMarket::Spot).await;
    late.set_time_offset_ms(-10_000);
    let e = late.query("BTCUSDT", "sph-1").await.unwrap_err();
    assert_eq!(e.code(), Some(-1021), "{e}");
    late.set_time_offset_ms(5_000);
    assert_eq!(late.query("BTCUSDT", "sph-1").await.unwrap_err().code(), Some(-1021), "ahead of the server");
    let wrong_key = BinanceExecution::new(config(&ex, BinanceMarket::Spot), Credentials::new("someone-else", LOCAL_API_SECRET)).unwrap();
    assert_eq!(wrong_key.query("BTCUSDT", "sph-1").await.unwrap_err().code(), Some(-2015));
    assert!(ex.orders().orders().is_empty());
    ex.shutdown().await;
}

#[tokio::test]
async fn venue_refusals_carry_their_reason() {
    let ex = exchange(BinanceMarket::Spot).await;
    let c = client(&ex, BinanceMarket::Spot).await;
    ex.orders().set_balance("USDT", qty("100"));
    let e = c.place(&limit("sph-40", Side::Buy, "59000.00", "0.010", VenueTif::Gtc)).await.unwrap_err();
    assert_eq!(e.reject_reason(), RejectReason::VenueInsufficientBalance, "{e}");
    let e = c.place(&limit("sph-41", Side::Sell, "59000.001", "0.010", VenueTif::Gtc)).await.unwrap_err();
    assert_eq!((e.code(), e.reject_reason()), (Some(-1013), RejectReason::VenueFilter));
    assert!(e.to_string().contains("PRICE_FILTER"));
    let e = c.place(&limit("sph-42", Side::Sell, "1.00", "0.010", VenueTif::Gtc)).await.unwrap_err();
    assert!(e.to_string().contains("NOTIONAL"), "{e}");
    let mut odd = limit("sph-43", Side::Sell, "61000.00", "0.010", VenueTif::Gtc);
    odd.symbol = "NOPEUSDT".into();
    assert_eq!(c.place(&odd).await.unwrap_err().code(), Some(-1121));
    ex.shutdown().await;
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let ex = exchange(BinanceMarket::Spot).await;
    let c = client(&ex, BinanceMarket::Spot).await;
    ex.orders().inject(OrderFault::RateLimited { retry_after_secs: 1 });
    match c.place(&limit("sph-50", Side::Buy, "59000.00", "0.010", VenueTif::Gtc)).await.unwrap_err() {
        VenueError::RateLimited { status: 429, retry_after, .. } => assert_eq!(retry_after, Duration::from_secs(1)),
        other => panic!("expected 429, got {other:?}"),
    }
    let before = ex.orders().requests();
    let t = Instant::now();
    c.place(&limit("sph-51", Side::Buy, "59000.00", "0.010", VenueTif::Gtc)).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(900), "the next request waited out Retry-After: {:?}", t.elapsed());
    assert_eq!(ex.orders().requests(), before + 1, "nothing was sent while blocked");
    assert_eq!(ex.orders().count_client_id("sph-50"), 0);
    ex.shutdown().await;
}

#[tokio::test]
async fn usage_headers_slow_the_client_before_the_venue_says_429() {
    let ex = exchange(BinanceMarket::Spot).await;
    let window = Duration::from_secs(1);
    ex.orders()
        .set_limits(&[DeskLimit { orders: true, interval: window, limit: 5 }, DeskLimit { orders: false, interval: window, limit: 1_000 }]);
    let mut cfg = config(&ex, BinanceMarket::Spot);
    cfg.limits = vec![RateLimit { kind: UsageKind::Orders, interval: window, limit: 5 }];
    cfg.headroom_pct = 100;
    let c = client_with(cfg, LOCAL_API_SECRET).await;
    let t = Instant::now();
    for i in 0..12 {
        let r = c.place(&limit(&format!("sph-6{i:02}"), Side::Buy, "59000.00", "0.010", VenueTif::Gtc)).await;
        assert!(r.is_ok(), "order {i}: {r:?}");
    }
    // 12 orders at 5 per clock second span at least two window boundaries.
    assert!(t.elapsed() >= Duration::from_millis(1_000), "{:?}", t.elapsed());
    assert!(c.limiter().waits().0 >= 2);
    assert_eq!(ex.orders().orders().len(), 12);
    ex.shutdown().await;
}

#[tokio::test]
async fn usage_headers_teach_a_fresh_client_the_venues_count() {
    let ex = exchange(BinanceMarket::Spot).await;
    let minute = Duration::from_secs(60);
    ex.orders().set_limits(&[DeskLimit { orders: true, interval: minute, limit: 5 }]);
    let mut cfg = config(&ex, BinanceMarket::Spot);
    cfg.limits = vec![RateLimit { kind: UsageKind::Orders, interval: minute, limit: 5 }];
    cfg.headroom_pct = 100;
    let a = client_with(cfg.clone(), LOCAL_API_SECRET).await;
    // Stay clear of a minute boundary so all of this happens in one window.
    let into_minute = a.server_now_ms() % 60_000;
    if into_minute > 58_000 {
        tokio::time::sleep(Duration::from_millis(60_100 - into_minute)).await;
    }
    for i in 0..5 {
        a.place(&limit(&format!("sph-7{i}"), Side::Buy, "59000.00", "0.010", VenueTif::Gtc)).await.unwrap();
    }
    // B has sent no order itself; one cheap request tells it the account's count.
    let b = client_with(cfg, LOCAL_API_SECRET).await;
    assert_eq!(b.limiter().reserve(b.server_now_ms(), 0, false), Duration::ZERO);
    b.open_orders(Some("BTCUSDT")).await.unwrap();
    let wait = b.limiter().reserve(b.server_now_ms(), 1, true);
    assert!(wait > Duration::ZERO && wait <= minute, "B must wait for the window: {wait:?}");
    ex.shutdown().await;
}

fn instrument() -> Instrument {
    Instrument {
        id: InstrumentId(0),
        symbol: "BTCUSDT".into(),
        venue: "binance".into(),
        market: MarketType::Spot,
        tick_size: px("0.01"),
        lot_size: qty("0.001"),
        min_notional: Money::from_units(5),
        price_precision: 2,
        qty_precision: 3,
    }
}

fn order(id: u64, side: Side, price: &str, q: &str, tif: TimeInForce) -> Order {
    Order {
        client_order_id: id,
        intent_id: id,
        instrument: InstrumentId(0),
        agent: AgentId(3),
        action: OrderAction::New,
        side,
        order_type: OrderType::Limit,
        tif,
        price: px(price),
        qty: qty(q),
        ..Order::default()
    }
}

fn gateway_config() -> OrderGatewayConfig {
    OrderGatewayConfig {
        idle_sleep: Duration::from_micros(200),
        unknown_queries: 5,
        unknown_backoff: Duration::from_millis(50),
        unknown_settle: Duration::from_millis(300),
        poll_interval: Duration::from_millis(100),
        time_sync_interval: Duration::from_secs(600),
        reconcile_interval: Duration::from_secs(600),
        position_settle: Duration::from_millis(100),
    }
}

/// Hands `order` to a fresh gateway and returns the reports it made.
async fn through_gateway(gw: &mut OrderGateway<BinanceExecution>, order: Order) -> Vec<ExecReport> {
    gw.handle(order, Instant::now()).await;
    gw.drain_reports()
}

fn kinds(r: &[ExecReport]) -> Vec<ExecKind> {
    r.iter().map(|r| r.kind).collect()
}

#[tokio::test]
async fn filters_refuse_before_any_request_is_sent() {
    let ex = exchange(BinanceMarket::Spot).await;
    let c = client(&ex, BinanceMarket::Spot).await;
    let mut gw = OrderGateway::new(c, &[instrument()], gateway_config());
    let before = ex.orders().requests();
    for (o, reason) in [
        (order(1, Side::Buy, "59000.005", "0.010", TimeInForce::Gtc), RejectReason::TickSize),
        (order(2, Side::Buy, "59000.00", "0.0105", TimeInForce::Gtc), RejectReason::LotSize),
        (order(3, Side::Buy, "100.00", "0.010", TimeInForce::Gtc), RejectReason::MinNotional),
    ] {
        let r = through_gateway(&mut gw, o).await;
        assert_eq!(kinds(&r), [ExecKind::Rejected]);
        assert_eq!((r[0].reason, r[0].client_order_id, r[0].agent), (reason, o.client_order_id, AgentId(3)));
    }
    let mut unknown = order(4, Side::Buy, "59000.00", "0.010", TimeInForce::Gtc);
    unknown.instrument = InstrumentId(9);
    assert_eq!(through_gateway(&mut gw, unknown).await[0].reason, RejectReason::NoMarket);
    assert_eq!(ex.orders().requests(), before, "no request reached the exchange");
    assert_eq!(gw.stats().filtered.load(std::sync::atomic::Ordering::Relaxed), 4);
    ex.shutdown().await;
}

#[tokio::test]
async fn lost_answers_are_queried_never_resent() {
    let ex = exchange(BinanceMarket::Spot).await;
    let c = client(&ex, BinanceMarket::Spot).await;
    let mut gw = OrderGateway::new(c, &[instrument()], gateway_config());
    // Accepted, then the connection drops without an answer: the marketable order filled.
    ex.orders().inject(OrderFault::DropResponse);
    let r = through_gateway(&mut gw, order(100, Side::Buy, "60001.00", "0.200", TimeInForce::Ioc)).await;
    assert_eq!(kinds(&r), [ExecKind::Ack, ExecKind::Fill]);
    assert_eq!((r[1].last_qty, r[1].price, r[1].leaves_qty), (qty("0.2"), px("60001"), Quantity::ZERO));
    assert_eq!(ex.orders().count_client_id(&client_order_id(100)), 1, "exactly one order at the exchange");
    // Accepted, answer delayed past the client's timeout: resting, acknowledged once.
    ex.orders().inject(OrderFault::Delay(Duration::from_millis(800)));
    let r = through_gateway(&mut gw, order(101, Side::Buy, "59000.00", "0.010", TimeInForce::Gtc)).await;
    assert_eq!(kinds(&r), [ExecKind::Ack]);
    assert_eq!(ex.orders().count_client_id(&client_order_id(101)), 1);
    // Accepted, then 500: the query finds it.
    ex.orders().inject(OrderFault::Error500 { place: true });
    let r = through_gateway(&mut gw, order(102, Side::Sell, "61000.00", "0.010", TimeInForce::Gtc)).await;
    assert_eq!(kinds(&r), [ExecKind::Ack]);
    assert_eq!(ex.orders().count_client_id(&client_order_id(102)), 1);
    // 500 without placing: the venue never knows it; once its recvWindow (here the settle
    // time) has passed it is reported rejected, and still never resent.
    ex.orders().inject(OrderFault::Error500 { place: false });
    let r = through_gateway(&mut gw, order(103, Side::Sell, "61000.00", "0.010", TimeInForce::Gtc)).await;
    assert!(r.is_empty(), "still unknown after the first queries (inside the settle time): nothing reported yet");
    assert_eq!(gw.working(), 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.poll_working().await;
    let r = gw.drain_reports();
    assert_eq!(kinds(&r), [ExecKind::Rejected]);
    assert_eq!(r[0].reason, RejectReason::VenueOther);
    assert_eq!(ex.orders().count_client_id(&client_order_id(103)), 0);
    assert_eq!(ex.orders().orders().len(), 3, "three orders placed, none twice");
    let stats = gw.stats();
    assert_eq!(stats.unknown.load(std::sync::atomic::Ordering::Relaxed), 4);
    assert_eq!(gw.working(), 2, "the two resting orders");
    ex.shutdown().await;
}

/// Reads every report the gateway published so far.
fn drain(events: &mut Consumer<Event>) -> Vec<ExecReport> {
    let mut out = Vec::new();
    events.poll(1_024, |e, _, _| {
        if let Event::ExecReport(r) = e {
            out.push(*r);
        }
    });
    out
}

async fn wait_for(events: &mut Consumer<Event>, seen: &mut Vec<ExecReport>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.len() < n && Instant::now() < deadline {
        seen.extend(drain(events));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_task_reads_the_outbound_ring_and_publishes_reports() {
    let ex = exchange(BinanceMarket::Spot).await;
    let c = client(&ex, BinanceMarket::Spot).await;
    let gw = OrderGateway::new(c, &[instrument()], gateway_config());
    let stats = gw.stats();
    let (mut orders_tx, mut orders_rx) = ring::<Order>(64, 1);
    let (events_tx, mut events_rx) = ring::<Event>(64, 1);
    let task = tokio::spawn(gw.run(orders_rx.remove(0), events_tx));
    let mut events = events_rx.remove(0);
    let mut seen = Vec::new();
    // A taker: ack and fill.
    orders_tx.try_publish(order(200, Side::Sell, "60000.00", "0.100", TimeInForce::Ioc)).unwrap();
    wait_for(&mut events, &mut seen, 2).await;
    assert_eq!(kinds(&seen), [ExecKind::Ack, ExecKind::Fill]);
    assert_eq!((seen[1].side, seen[1].last_qty, seen[1].price), (Side::Sell, qty("0.1"), px("60000")));
    // Two resting orders of agent 3 and one of agent 4; cancel agent 3's.
    orders_tx.try_publish(order(201, Side::Buy, "59000.00", "0.010", TimeInForce::PostOnly)).unwrap();
    orders_tx.try_publish(order(202, Side::Buy, "59001.00", "0.010", TimeInForce::Gtc)).unwrap();
    let mut other = order(203, Side::Buy, "59002.00", "0.010", TimeInForce::Gtc);
    other.agent = AgentId(4);
    orders_tx.try_publish(other).unwrap();
    orders_tx
        .try_publish(Order { action: OrderAction::CancelAll, agent: AgentId(3), instrument: InstrumentId(0), ..Order::default() })
        .unwrap();
    wait_for(&mut events, &mut seen, 7).await;
    assert_eq!(kinds(&seen[2..]), [ExecKind::Ack, ExecKind::Ack, ExecKind::Ack, ExecKind::Canceled, ExecKind::Canceled]);
    let mut cancelled: Vec<u64> = seen[5..].iter().map(|r| r.client_order_id).collect();
    cancelled.sort_unstable();
    assert_eq!(cancelled, [201, 202]);
    let open = ex.orders().orders().into_iter().filter(|o| o.status == "NEW").map(|o| o.client_id).collect::<Vec<_>>();
    assert_eq!(open, [client_order_id(203)]);
    // A resting order the venue fills later is found by the poll: partial, then the rest.
    orders_tx.try_publish(order(204, Side::Sell, "60000.50", "0.010", TimeInForce::Gtc)).unwrap();
    wait_for(&mut events, &mut seen, 8).await;
    assert_eq!(seen[7].kind, ExecKind::Ack);
    assert!(ex.orders().fill_resting(&client_order_id(204), qty("0.004")));
    wait_for(&mut events, &mut seen, 9).await;
    assert_eq!((seen[8].kind, seen[8].last_qty, seen[8].leaves_qty), (ExecKind::PartialFill, qty("0.004"), qty("0.006")));
    assert_eq!((seen[8].price, seen[8].liquidity), (px("60000.5"), Liquidity::Maker));
    assert!(ex.orders().fill_resting(&client_order_id(204), qty("0.006")));
    wait_for(&mut events, &mut seen, 10).await;
    assert_eq!((seen[9].kind, seen[9].last_qty, seen[9].leaves_qty), (ExecKind::Fill, qty("0.006"), Quantity::ZERO));
    orders_tx.close();
    let gw = task.await.unwrap();
    assert_eq!(gw.working(), 1, "only agent 4's order still rests");
    assert_eq!(seen.len(), 10, "no report twice");
    let lat = stats.ack_latency();
    eprintln!("order-to-ack over loopback (debug build): {lat:?}");
    assert_eq!(lat.count, 5);
    assert!(lat.p50_us > 0 && lat.max_us < 5_000_000, "{lat:?}");
    ex.shutdown().await;
}

#[tokio::test]
async fn reconcile_adopts_the_venues_open_orders_and_closes_finished_ones() {
    // Router ids end in the agent's tag (here agent 3).
    const A300: u64 = 300 << 8 | 3;
    const A301: u64 = 301 << 8 | 3;
    let ex = exchange(BinanceMarket::Spot).await;
    let c = client(&ex, BinanceMarket::Spot).await;
    let mut first = OrderGateway::new(Arc::clone(&c), &[instrument()], gateway_config());
    assert_eq!(kinds(&through_gateway(&mut first, order(A300, Side::Buy, "59000.00", "0.010", TimeInForce::Gtc)).await), [ExecKind::Ack]);
    assert_eq!(kinds(&through_gateway(&mut first, order(A301, Side::Buy, "59001.00", "0.010", TimeInForce::Gtc)).await), [ExecKind::Ack]);
    // An order placed by hand (not ours) is left alone.
    c.place(&limit("manual-1", Side::Sell, "62000.00", "0.010", VenueTif::Gtc)).await.unwrap();
    // A restarted gateway knows nothing; reconciling adopts our two orders.
    let mut second = OrderGateway::new(Arc::clone(&c), &[instrument()], gateway_config());
    let found = second.reconcile().await.unwrap();
    assert_eq!((found.adopted, found.closed, found.foreign), (2, 0, 1));
    assert_eq!(second.working(), 2);
    assert!(second.drain_reports().is_empty(), "adopting reports nothing: the journal has what was reported");
    // Meanwhile the venue filled one and the other was cancelled by hand.
    assert!(ex.orders().fill_resting(&client_order_id(A300), qty("0.010")));
    c.cancel("BTCUSDT", &client_order_id(A301)).await.unwrap();
    let found = second.reconcile().await.unwrap();
    assert_eq!((found.adopted, found.closed), (0, 2));
    let r = second.drain_reports();
    let mut got: Vec<(u64, ExecKind)> = r.iter().map(|r| (r.client_order_id, r.kind)).collect();
    got.sort_unstable_by_key(|g| g.0);
    assert_eq!(got, [(A300, ExecKind::Fill), (A301, ExecKind::Canceled)]);
    assert_eq!(r.iter().find(|r| r.kind == ExecKind::Fill).unwrap().agent, AgentId(3), "the agent comes from the id's tag");
    assert_eq!(second.working(), 0);
    ex.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_data_stream_pushes_fills_and_cancels_to_the_gateway() {
    use sapphire_gateway::venue::user_stream::{run_user_stream, UserStreamConfig, UserStreamStats};
    for market in [BinanceMarket::Spot, BinanceMarket::UsdM] {
        let ex = exchange(market).await;
        let c = client(&ex, market).await;
        // No polling: whatever the gateway learns after the ack comes from the stream.
        let mut cfg = gateway_config();
        cfg.poll_interval = Duration::from_secs(600);
        let (updates_tx, updates_rx) = tokio::sync::mpsc::channel(256);
        let gw = OrderGateway::new(Arc::clone(&c), &[instrument()], cfg).with_user_updates(updates_rx);
        let stream_stats = Arc::new(UserStreamStats::default());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stream = tokio::spawn(run_user_stream(
            Arc::clone(&c),
            UserStreamConfig::new(ex.ws_url()),
            updates_tx,
            Arc::clone(&stream_stats),
            stop_rx,
        ));
        let deadline = Instant::now() + Duration::from_secs(5);
        while stream_stats.connects.load(std::sync::atomic::Ordering::Relaxed) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (mut orders_tx, mut orders_rx) = ring::<Order>(64, 1);
        let (events_tx, mut events_rx) = ring::<Event>(64, 1);
        let task = tokio::spawn(gw.run(orders_rx.remove(0), events_tx));
        let mut events = events_rx.remove(0);
        let mut seen = Vec::new();
        orders_tx.try_publish(order(500, Side::Buy, "59000.00", "0.010", TimeInForce::Gtc)).unwrap();
        orders_tx.try_publish(order(501, Side::Buy, "59001.00", "0.010", TimeInForce::Gtc)).unwrap();
        wait_for(&mut events, &mut seen, 2).await;
        assert_eq!(kinds(&seen), [ExecKind::Ack, ExecKind::Ack], "{market:?}");
        assert!(ex.orders().fill_resting(&client_order_id(500), qty("0.004")));
        wait_for(&mut events, &mut seen, 3).await;
        assert_eq!((seen[2].kind, seen[2].last_qty, seen[2].price), (ExecKind::PartialFill, qty("0.004"), px("59000")), "{market:?}");
        c.cancel("BTCUSDT", &client_order_id(501)).await.unwrap();
        assert!(ex.orders().fill_resting(&client_order_id(500), qty("0.006")));
        wait_for(&mut events, &mut seen, 5).await;
        let rest: Vec<(u64, ExecKind)> = seen[3..].iter().map(|r| (r.client_order_id, r.kind)).collect();
        assert_eq!(rest, [(501, ExecKind::Canceled), (500, ExecKind::Fill)], "{market:?}");
        assert_eq!(seen[4].last_qty, qty("0.006"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(drain(&mut events).len(), 0, "nothing reported twice ({market:?})");
        stop_tx.send(true).unwrap();
        stream.await.unwrap();
        orders_tx.close();
        let gw = task.await.unwrap();
        assert_eq!(gw.working(), 0);
        assert_eq!(stream_stats.errors.load(std::sync::atomic::Ordering::Relaxed), 0);
        ex.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_routing_runs_the_gateway_on_its_own_thread() {
    use sapphire_gateway::venue::routing::{start_routing, RoutingConfig, VenueMarket};
    assert_eq!(VenueMarket::parse("binance-usdm"), Some(VenueMarket::BinanceUsdM));
    assert_eq!(VenueMarket::parse("kraken"), None);
    let ex = exchange(BinanceMarket::Spot).await;
    let (mut orders_tx, orders_rx) = ring::<Order>(64, 1);
    let (events_tx, mut events_rx) = ring::<Event>(64, 1);
    let config = RoutingConfig {
        market: VenueMarket::BinanceSpot,
        rest_url: Some(ex.rest_url()),
        user_stream_url: Some(ex.ws_url()),
        credentials: Credentials::new(LOCAL_API_KEY, LOCAL_API_SECRET),
        gateway: OrderGatewayConfig { poll_interval: Duration::from_secs(600), ..gateway_config() },
    };
    let routing = start_routing(config, &[instrument()], orders_rx.into_iter().next().unwrap(), events_tx, None).unwrap();
    let mut events = events_rx.remove(0);
    let mut seen = Vec::new();
    orders_tx.try_publish(order(600, Side::Buy, "59000.00", "0.010", TimeInForce::Gtc)).unwrap();
    wait_for(&mut events, &mut seen, 1).await;
    assert_eq!(kinds(&seen), [ExecKind::Ack]);
    // The fill arrives over the user-data stream (polling is off).
    let deadline = Instant::now() + Duration::from_secs(5);
    while routing.stream_stats.connects.load(std::sync::atomic::Ordering::Relaxed) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(ex.orders().fill_resting(&client_order_id(600), qty("0.010")));
    wait_for(&mut events, &mut seen, 2).await;
    assert_eq!(kinds(&seen), [ExecKind::Ack, ExecKind::Fill]);
    assert_eq!(routing.stats.acked.load(std::sync::atomic::Ordering::Relaxed), 1);
    tokio::task::spawn_blocking(move || routing.stop()).await.unwrap();
    ex.shutdown().await;
}
