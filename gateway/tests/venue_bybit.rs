//! The Bybit v5 execution client against the local exchange's Bybit endpoints: signatures
//! checked by the server (`timestamp + apiKey + recvWindow + payload`), create / realtime /
//! cancel / cancel-all round trips, refusals with Bybit's `retCode`, and the order gateway's
//! unknown-state path on Bybit, the private WebSocket (auth, executions with fees, order
//! pushes, a dropped stream reconnected and reconciled, no fill counted twice whichever of
//! execution, pushed order and poll comes first), and position reconciliation against the
//! engine's positions. Same tape as `venue.rs`: best bid 60000.00 × 1.000, best ask
//! 60001.00 × 0.500, tick 0.01, lot 0.001.

use sapphire_core::event::{AgentId, ExecKind, ExecReport, Liquidity, RejectReason, Side};
use sapphire_core::fixed::{Money, Price, Quantity};
use sapphire_core::instrument::{Instrument, InstrumentId, MarketType};
use sapphire_core::order::{Order, OrderAction, OrderType, TimeInForce};
use sapphire_gateway::binance::BinanceMarket;
use sapphire_gateway::bybit::BybitCategory;
use sapphire_gateway::local_exchange::orders::{fill_fee, OrderFault, LOCAL_API_KEY, LOCAL_API_SECRET};
use sapphire_gateway::local_exchange::tape::Tape;
use sapphire_gateway::local_exchange::{LocalExchange, LocalExchangeConfig, Pace};
use sapphire_gateway::venue::bybit::{run_private_stream, BybitExecution, BybitExecutionConfig, PrivateStreamConfig};
use sapphire_gateway::venue::execution::{EnginePositions, ADJUSTMENT_CLIENT_ORDER_ID};
use sapphire_gateway::venue::user_stream::{UserStreamStats, UserUpdate};
use sapphire_gateway::venue::{
    client_order_id, Credentials, ExecutionVenue, OrderGateway, OrderGatewayConfig, OrderRequest, VenueError, VenueOrderStatus,
    VenueOrderType, VenueTif,
};
use std::sync::atomic::Ordering;
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

async fn exchange() -> LocalExchange {
    let mut tape = Tape::default();
    tape.add_text("tape", TAPE).unwrap();
    LocalExchange::start(LocalExchangeConfig::new(BinanceMarket::UsdM, Pace::Fast), tape).await.unwrap()
}

async fn client(ex: &LocalExchange, secret: &str) -> Arc<BybitExecution> {
    let mut cfg = BybitExecutionConfig::new(BybitCategory::Linear, ex.rest_url());
    cfg.timeout = Duration::from_millis(500);
    let c = BybitExecution::new(cfg, Credentials::new(LOCAL_API_KEY, secret)).unwrap();
    c.sync_time().await.unwrap();
    Arc::new(c)
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
async fn create_realtime_cancel_round_trip() {
    let ex = exchange().await;
    let c = client(&ex, LOCAL_API_SECRET).await;
    let placed = c.place(&limit("sph-1", Side::Buy, "59000.00", "0.010", VenueTif::Gtc)).await.unwrap();
    assert_eq!((placed.status, placed.client_id.as_str()), (VenueOrderStatus::New, "sph-1"));
    assert!(!placed.venue_id.is_empty());
    let q = c.query("BTCUSDT", "sph-1").await.unwrap().unwrap();
    assert_eq!((q.status, q.qty, q.price, q.side), (VenueOrderStatus::New, qty("0.01"), px("59000"), Side::Buy));
    assert_eq!(c.query("BTCUSDT", "sph-404").await.unwrap(), None);
    c.place(&limit("sph-2", Side::Sell, "61000.00", "0.010", VenueTif::Gtc)).await.unwrap();
    assert_eq!(c.open_orders(Some("BTCUSDT")).await.unwrap().len(), 2);
    let cancelled = c.cancel("BTCUSDT", "sph-1").await.unwrap();
    assert_eq!(cancelled.status, VenueOrderStatus::Canceled);
    let again = c.cancel("BTCUSDT", "sph-1").await.unwrap_err();
    assert_eq!((again.code(), again.reject_reason()), (Some(110_001), RejectReason::VenueUnknownOrder));
    c.cancel_all("BTCUSDT").await.unwrap();
    assert!(c.open_orders(Some("BTCUSDT")).await.unwrap().is_empty());
    // A taker fills at the ask; the position shows it.
    c.place(&limit("sph-3", Side::Buy, "60001.00", "0.200", VenueTif::Ioc)).await.unwrap();
    let filled = c.query("BTCUSDT", "sph-3").await.unwrap().unwrap();
    assert_eq!((filled.status, filled.executed, filled.avg_price()), (VenueOrderStatus::Filled, qty("0.2"), px("60001")));
    let positions = c.positions(Some("BTCUSDT")).await.unwrap();
    assert_eq!(positions[0].qty, qty("0.2"));
    let balances = c.balances().await.unwrap();
    assert_eq!(balances[0].asset, "USDT");
    // Post-only that would take is cancelled.
    c.place(&limit("sph-4", Side::Buy, "60001.00", "0.010", VenueTif::PostOnly)).await.unwrap();
    assert_eq!(c.query("BTCUSDT", "sph-4").await.unwrap().unwrap().status, VenueOrderStatus::Canceled);
    ex.shutdown().await;
}

#[tokio::test]
async fn the_server_checks_bybit_signatures_and_refusals_carry_ret_codes() {
    let ex = exchange().await;
    let bad = client(&ex, "wrong").await;
    let e = bad.place(&limit("sph-10", Side::Buy, "59000.00", "0.010", VenueTif::Gtc)).await.unwrap_err();
    assert_eq!(e.code(), Some(10_004), "{e}");
    assert!(e.to_string().contains("error sign!"), "{e}");
    assert!(ex.orders().orders().is_empty());
    let c = client(&ex, LOCAL_API_SECRET).await;
    let dup = limit("sph-11", Side::Buy, "59000.00", "0.010", VenueTif::Gtc);
    c.place(&dup).await.unwrap();
    assert_eq!(c.place(&dup).await.unwrap_err().code(), Some(110_072), "duplicate orderLinkId");
    let mut ro = limit("sph-12", Side::Sell, "60000.00", "0.010", VenueTif::Ioc);
    ro.reduce_only = true;
    assert_eq!(c.place(&ro).await.unwrap_err().code(), Some(110_017));
    let small = c.place(&limit("sph-13", Side::Buy, "100.00", "0.001", VenueTif::Gtc)).await.unwrap_err();
    assert_eq!((small.code(), small.reject_reason()), (Some(110_094), RejectReason::VenueFilter));
    ex.orders().inject(OrderFault::RateLimited { retry_after_secs: 1 });
    match c.place(&limit("sph-14", Side::Buy, "59000.00", "0.010", VenueTif::Gtc)).await.unwrap_err() {
        VenueError::RateLimited { status: 429, .. } => {}
        other => panic!("expected a rate limit, got {other:?}"),
    }
    let t = Instant::now();
    c.place(&limit("sph-15", Side::Buy, "59000.00", "0.010", VenueTif::Gtc)).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(800), "waited for the limit's reset: {:?}", t.elapsed());
    ex.shutdown().await;
}

#[tokio::test]
async fn lost_create_answer_is_queried_not_resent() {
    let ex = exchange().await;
    let c = client(&ex, LOCAL_API_SECRET).await;
    let inst = Instrument {
        id: InstrumentId(0),
        symbol: "BTCUSDT".into(),
        venue: "bybit".into(),
        market: MarketType::LinearPerpetual,
        tick_size: px("0.01"),
        lot_size: qty("0.001"),
        min_notional: Money::from_units(5),
        price_precision: 2,
        qty_precision: 3,
    };
    let config = OrderGatewayConfig { unknown_backoff: Duration::from_millis(50), ..OrderGatewayConfig::default() };
    let mut gw = OrderGateway::new(c, &[inst], config);
    ex.orders().inject(OrderFault::DropResponse);
    let order = Order {
        client_order_id: 77,
        intent_id: 77,
        instrument: InstrumentId(0),
        agent: AgentId(2),
        action: OrderAction::New,
        side: Side::Buy,
        order_type: OrderType::Limit,
        tif: TimeInForce::Ioc,
        price: px("60001.00"),
        qty: qty("0.100"),
        ..Order::default()
    };
    gw.handle(order, Instant::now()).await;
    let r = gw.drain_reports();
    assert_eq!(r.iter().map(|r| r.kind).collect::<Vec<_>>(), [ExecKind::Ack, ExecKind::Fill]);
    assert_eq!((r[1].last_qty, r[1].price), (qty("0.1"), px("60001")));
    assert_eq!(ex.orders().count_client_id(&client_order_id(77)), 1);
    ex.shutdown().await;
}

/// The next pushed update, within a second.
async fn next_update(rx: &mut tokio::sync::mpsc::Receiver<UserUpdate>) -> UserUpdate {
    tokio::time::timeout(Duration::from_secs(2), rx.recv()).await.expect("an update within 2 s").expect("the stream is running")
}

fn private_stream(
    ex: &LocalExchange,
    secret: &str,
) -> (tokio::sync::mpsc::Receiver<UserUpdate>, Arc<UserStreamStats>, tokio::sync::watch::Sender<bool>) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let stats = Arc::new(UserStreamStats::default());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut config = PrivateStreamConfig::new(ex.ws_url());
    config.backoff = Duration::from_millis(50);
    config.connect_timeout = Duration::from_secs(1);
    tokio::spawn(run_private_stream(config, Credentials::new(LOCAL_API_KEY, secret), tx, Arc::clone(&stats), stop_rx));
    (rx, stats, stop)
}

#[tokio::test]
async fn fills_arrive_over_the_private_stream_and_a_dropped_stream_reconnects() {
    let ex = exchange().await;
    let c = client(&ex, LOCAL_API_SECRET).await;
    let (mut rx, stats, stop) = private_stream(&ex, LOCAL_API_SECRET);
    assert_eq!(next_update(&mut rx).await, UserUpdate::Reconnected, "authenticated and subscribed");
    c.place(&limit("sph-1", Side::Buy, "59990.00", "0.010", VenueTif::Gtc)).await.unwrap();
    let UserUpdate::Order(o) = next_update(&mut rx).await else { panic!("an order update") };
    assert_eq!((o.client_id.as_str(), o.status, o.executed), ("sph-1", VenueOrderStatus::New, Quantity::ZERO));
    assert!(ex.orders().fill_resting("sph-1", qty("0.004")));
    // The execution first (the fill with its fee), then the order's cumulative state.
    let UserUpdate::Execution(e) = next_update(&mut rx).await else { panic!("an execution") };
    assert_eq!(
        (e.client_id.as_str(), e.side, e.price, e.qty, e.maker, e.fee),
        ("sph-1", Side::Buy, px("59990"), qty("0.004"), true, fill_fee(px("59990"), qty("0.004"), true))
    );
    assert_eq!(e.fee, Money::parse("0.047992").unwrap(), "0.02 % of 239.96");
    let UserUpdate::Order(o) = next_update(&mut rx).await else { panic!("an order update") };
    assert_eq!((o.status, o.executed, o.cum_quote), (VenueOrderStatus::PartiallyFilled, qty("0.004"), Money::parse("239.96").unwrap()));
    // The stream drops: the gateway is told (it polls meanwhile), the client reconnects,
    // authenticates and tells the gateway to reconcile.
    ex.orders().drop_private_streams();
    assert_eq!(next_update(&mut rx).await, UserUpdate::Disconnected);
    assert_eq!(next_update(&mut rx).await, UserUpdate::Reconnected);
    assert!(ex.orders().fill_resting("sph-1", qty("0.006")));
    let UserUpdate::Execution(e) = next_update(&mut rx).await else { panic!("an execution") };
    assert_eq!((e.qty, e.exec_id.is_empty()), (qty("0.006"), false));
    let UserUpdate::Order(o) = next_update(&mut rx).await else { panic!("an order update") };
    assert_eq!((o.status, o.executed), (VenueOrderStatus::Filled, qty("0.010")));
    assert_eq!((stats.connects.load(Ordering::Relaxed), stats.orders.load(Ordering::Relaxed)), (2, 3));
    assert_eq!(stats.executions.load(Ordering::Relaxed), 2);
    stop.send(true).unwrap();
    ex.shutdown().await;
}

#[tokio::test]
async fn a_wrong_secret_is_refused_at_auth() {
    let ex = exchange().await;
    let (mut rx, stats, stop) = private_stream(&ex, "not-the-secret");
    assert!(tokio::time::timeout(Duration::from_millis(400), rx.recv()).await.is_err(), "nothing before an accepted auth");
    assert_eq!(stats.connects.load(Ordering::Relaxed), 0);
    assert!(stats.errors.load(Ordering::Relaxed) >= 2, "each refusal counted, and retried");
    stop.send(true).unwrap();
    ex.shutdown().await;
}

#[tokio::test]
async fn a_fill_missed_while_the_stream_was_down_is_reconciled_by_the_gateway() {
    let ex = exchange().await;
    let c = client(&ex, LOCAL_API_SECRET).await;
    let inst = Instrument {
        id: InstrumentId(0),
        symbol: "BTCUSDT".into(),
        venue: "bybit".into(),
        market: MarketType::LinearPerpetual,
        tick_size: px("0.01"),
        lot_size: qty("0.001"),
        min_notional: Money::from_units(5),
        price_precision: 2,
        qty_precision: 3,
    };
    // Polling far apart: only the stream (and the reconcile it triggers) can report the fills.
    let config = OrderGatewayConfig { poll_interval: Duration::from_secs(3_600), ..OrderGatewayConfig::default() };
    let mut gw = OrderGateway::new(c, &[inst], config);
    let (mut rx, _stats, stop) = private_stream(&ex, LOCAL_API_SECRET);
    gw.on_user_update(next_update(&mut rx).await).await;
    let order = Order {
        client_order_id: 90,
        intent_id: 90,
        instrument: InstrumentId(0),
        agent: AgentId(2),
        action: OrderAction::New,
        side: Side::Buy,
        order_type: OrderType::Limit,
        tif: TimeInForce::Gtc,
        price: px("59990.00"),
        qty: qty("0.010"),
        ..Order::default()
    };
    gw.handle(order, Instant::now()).await;
    assert_eq!(gw.drain_reports().iter().map(|r| r.kind).collect::<Vec<_>>(), [ExecKind::Ack]);
    // A fill pushed over the stream.
    let id = client_order_id(90);
    assert!(ex.orders().fill_resting(&id, qty("0.004")));
    loop {
        let u = next_update(&mut rx).await;
        let done = matches!(&u, UserUpdate::Order(o) if o.executed == qty("0.004"));
        gw.on_user_update(u).await;
        if done {
            break;
        }
    }
    let r = gw.drain_reports();
    assert_eq!((r.len(), r[0].kind, r[0].last_qty), (1, ExecKind::PartialFill, qty("0.004")), "{r:?}");
    // The stream drops and the rest fills while nobody listens: the reconnect's reconcile finds
    // it. The fill waits until the client has seen the drop (a drop is not instant: a fill
    // sent first would still reach it over the old stream).
    ex.orders().drop_private_streams();
    let u = next_update(&mut rx).await;
    assert_eq!(u, UserUpdate::Disconnected);
    gw.on_user_update(u).await;
    assert!(ex.orders().fill_resting(&id, qty("0.006")));
    // Up to the reconnect (which the fill may also reach live if the client is quicker than
    // this test: either way the fill must be reported once).
    loop {
        let u = next_update(&mut rx).await;
        let done = u == UserUpdate::Reconnected;
        gw.on_user_update(u).await;
        if done {
            break;
        }
    }
    let r = gw.drain_reports();
    assert_eq!(r.iter().map(|r| (r.kind, r.last_qty)).collect::<Vec<_>>(), [(ExecKind::Fill, qty("0.006"))], "{r:?}");
    assert_eq!(gw.working(), 0);
    stop.send(true).unwrap();
    ex.shutdown().await;
}

fn btc() -> Instrument {
    Instrument {
        id: InstrumentId(0),
        symbol: "BTCUSDT".into(),
        venue: "bybit".into(),
        market: MarketType::LinearPerpetual,
        tick_size: px("0.01"),
        lot_size: qty("0.001"),
        min_notional: Money::from_units(5),
        price_precision: 2,
        qty_precision: 3,
    }
}

fn gtc_buy(id: u64, price: &str, q: &str, tif: TimeInForce) -> Order {
    Order {
        client_order_id: id,
        intent_id: id,
        instrument: InstrumentId(0),
        agent: AgentId(2),
        action: OrderAction::New,
        side: Side::Buy,
        order_type: OrderType::Limit,
        tif,
        price: px(price),
        qty: qty(q),
        ..Order::default()
    }
}

/// Feeds pushed updates to the gateway until `done` says the last one was awaited.
async fn feed_until(
    gw: &mut OrderGateway<BybitExecution>,
    rx: &mut tokio::sync::mpsc::Receiver<UserUpdate>,
    done: impl Fn(&UserUpdate) -> bool,
) {
    loop {
        let u = next_update(rx).await;
        let last = done(&u);
        gw.on_user_update(u).await;
        if last {
            return;
        }
    }
}

fn fills(r: &[ExecReport]) -> Vec<(ExecKind, Quantity, Price, Money, Liquidity)> {
    r.iter().filter(|r| r.last_qty.raw > 0).map(|r| (r.kind, r.last_qty, r.price, r.fee, r.liquidity)).collect()
}

#[tokio::test]
async fn executions_report_fills_with_fees_and_liquidity_and_nothing_counts_twice() {
    let ex = exchange().await;
    let c = client(&ex, LOCAL_API_SECRET).await;
    let config = OrderGatewayConfig { poll_interval: Duration::from_secs(3_600), ..OrderGatewayConfig::default() };
    let mut gw = OrderGateway::new(c, &[btc()], config);
    let stats = gw.stats();
    let (mut rx, _stream, stop) = private_stream(&ex, LOCAL_API_SECRET);
    gw.on_user_update(next_update(&mut rx).await).await;
    // A resting order hit twice: maker fills, each with its 0.02 % fee, from the executions.
    gw.handle(gtc_buy(91, "59990.00", "0.010", TimeInForce::Gtc), Instant::now()).await;
    assert_eq!(gw.drain_reports().iter().map(|r| r.kind).collect::<Vec<_>>(), [ExecKind::Ack]);
    let id = client_order_id(91);
    assert!(ex.orders().fill_resting(&id, qty("0.004")));
    feed_until(&mut gw, &mut rx, |u| matches!(u, UserUpdate::Order(o) if o.executed == qty("0.004"))).await;
    let maker = |q: &str| fill_fee(px("59990"), qty(q), true);
    assert_eq!(
        fills(&gw.drain_reports()),
        [(ExecKind::PartialFill, qty("0.004"), px("59990"), maker("0.004"), Liquidity::Maker)],
        "the execution reported the fill; the order update after it added nothing"
    );
    // A poll of the same state adds nothing either.
    gw.poll_working().await;
    assert!(fills(&gw.drain_reports()).is_empty());
    assert!(ex.orders().fill_resting(&id, qty("0.006")));
    feed_until(&mut gw, &mut rx, |u| matches!(u, UserUpdate::Order(o) if o.status == VenueOrderStatus::Filled)).await;
    assert_eq!(fills(&gw.drain_reports()), [(ExecKind::Fill, qty("0.006"), px("59990"), maker("0.006"), Liquidity::Maker)]);
    assert_eq!(gw.working(), 0);
    // A taker: an IOC that crosses the ask fills on arrival at 0.055 %.
    gw.handle(gtc_buy(92, "60001.00", "0.020", TimeInForce::Ioc), Instant::now()).await;
    feed_until(&mut gw, &mut rx, |u| matches!(u, UserUpdate::Order(o) if o.client_id == client_order_id(92))).await;
    let r = gw.drain_reports();
    assert_eq!(
        fills(&r),
        [(ExecKind::Fill, qty("0.02"), px("60001"), fill_fee(px("60001"), qty("0.02"), false), Liquidity::Taker)],
        "{r:?}"
    );
    assert_eq!(stats.executions.load(Ordering::Relaxed), 3);
    // The other order of arrival: a poll reports the fill from the cumulative state first (no
    // fee known there), and the execution that follows is recognised as already reported.
    gw.handle(gtc_buy(93, "59980.00", "0.010", TimeInForce::Gtc), Instant::now()).await;
    gw.drain_reports();
    feed_until(&mut gw, &mut rx, |u| matches!(u, UserUpdate::Order(o) if o.client_id == client_order_id(93))).await;
    assert!(ex.orders().fill_resting(&client_order_id(93), qty("0.005")));
    gw.poll_working().await;
    assert_eq!(fills(&gw.drain_reports()), [(ExecKind::PartialFill, qty("0.005"), px("59980"), Money::ZERO, Liquidity::Maker)]);
    let skipped = stats.executions_skipped.load(Ordering::Relaxed);
    feed_until(&mut gw, &mut rx, |u| matches!(u, UserUpdate::Order(o) if o.executed == qty("0.005"))).await;
    assert!(fills(&gw.drain_reports()).is_empty(), "the pushed execution and order did not count the fill again");
    assert_eq!(stats.executions_skipped.load(Ordering::Relaxed), skipped + 1);
    // The same execution pushed twice is reported once.
    assert!(ex.orders().fill_resting(&client_order_id(93), qty("0.001")));
    let UserUpdate::Execution(e) = next_update(&mut rx).await else { panic!("an execution") };
    gw.on_user_update(UserUpdate::Execution(e.clone())).await;
    gw.on_user_update(UserUpdate::Execution(e)).await;
    assert_eq!(fills(&gw.drain_reports()).len(), 1);
    assert_eq!(stats.executions_skipped.load(Ordering::Relaxed), skipped + 2);
    // Every fill the venue made is reported exactly once, in quantity.
    let venue_total = ex.orders().orders().iter().fold(Quantity::ZERO, |a, o| a + o.executed);
    assert_eq!(venue_total, qty("0.036"));
    stop.send(true).unwrap();
    ex.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_routing_on_bybit_takes_fills_from_the_private_stream_polls_only_while_it_is_down_and_adopts_positions() {
    use sapphire_core::event::Event;
    use sapphire_core::ring::ring;
    use sapphire_gateway::venue::routing::{start_routing, RoutingConfig, VenueMarket};
    let ex = exchange().await;
    let engine = Arc::new(TestEngine::default());
    *engine.mark.lock().unwrap() = px("60000.50");
    let (mut orders_tx, orders_rx) = ring::<Order>(64, 1);
    let (events_tx, mut events_rx) = ring::<Event>(256, 1);
    let config = RoutingConfig {
        market: VenueMarket::BybitLinear,
        rest_url: Some(ex.rest_url()),
        // The local exchange's base: the client adds /v5/private.
        user_stream_url: Some(ex.ws_url()),
        credentials: Credentials::new(LOCAL_API_KEY, LOCAL_API_SECRET),
        gateway: OrderGatewayConfig {
            poll_interval: Duration::from_millis(20),
            position_settle: Duration::from_millis(100),
            ..OrderGatewayConfig::default()
        },
    };
    // The venue holds a position the (flat) engine does not know of.
    ex.orders().set_position("BTCUSDT", qty("0.003"));
    let engine_dyn: Arc<dyn EnginePositions> = Arc::clone(&engine) as _;
    let routing = start_routing(config, &[btc()], orders_rx.into_iter().next().unwrap(), events_tx, Some(engine_dyn)).unwrap();
    let mut events = events_rx.remove(0);
    let mut seen: Vec<ExecReport> = Vec::new();
    let wait_for = |events: &mut sapphire_core::ring::Consumer<Event>, seen: &mut Vec<ExecReport>, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.len() < n && Instant::now() < deadline {
            events.poll(64, |e, _, _| {
                if let Event::ExecReport(r) = e {
                    seen.push(*r);
                }
            });
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(seen.len() >= n, "{n} reports expected, got {seen:?}");
    };
    // Reconciliation at start sees it, and adopts it once it has held for `position_settle`.
    wait_for(&mut events, &mut seen, 1);
    let a = seen.remove(0);
    assert_eq!(
        (a.client_order_id, a.agent, a.side, a.last_qty, a.price, a.fee),
        (ADJUSTMENT_CLIENT_ORDER_ID, AgentId(0), Side::Buy, qty("0.003"), px("60000.50"), Money::ZERO)
    );
    engine.set(&[(0, "0.003")]);
    assert_eq!(routing.stats.positions_adopted.load(Ordering::Relaxed), 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !routing.stream_stats.up.load(Ordering::Relaxed) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(routing.stream_stats.up.load(Ordering::Relaxed), "the private stream authenticated and subscribed");
    orders_tx.try_publish(gtc_buy(700, "59990.00", "0.010", TimeInForce::Gtc)).unwrap();
    wait_for(&mut events, &mut seen, 1);
    assert_eq!(seen[0].kind, ExecKind::Ack);
    // The stream is up: the working order is not polled.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let quiet = ex.orders().requests();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ex.orders().requests(), quiet, "no order queries while the stream is up");
    // A maker fill arrives over the stream with its fee.
    assert!(ex.orders().fill_resting(&client_order_id(700), qty("0.004")));
    wait_for(&mut events, &mut seen, 2);
    assert_eq!(
        (seen[1].kind, seen[1].last_qty, seen[1].fee, seen[1].liquidity),
        (ExecKind::PartialFill, qty("0.004"), fill_fee(px("59990"), qty("0.004"), true), Liquidity::Maker)
    );
    assert_eq!(routing.stats.executions.load(Ordering::Relaxed), 1);
    // The stream drops: polling takes over until it is back (the reconnect waits 1 s).
    ex.orders().drop_private_streams();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!routing.stream_stats.up.load(Ordering::Relaxed));
    let polled = ex.orders().requests() - quiet;
    assert!(polled >= 5, "polled while the stream was down: {polled} requests");
    // A fill while it is down is found by the poll (no fee known there), once.
    assert!(ex.orders().fill_resting(&client_order_id(700), qty("0.006")));
    wait_for(&mut events, &mut seen, 3);
    assert_eq!((seen[2].kind, seen[2].last_qty), (ExecKind::Fill, qty("0.006")));
    // The stream comes back; nothing was reported twice.
    let deadline = Instant::now() + Duration::from_secs(5);
    while routing.stream_stats.connects.load(Ordering::Relaxed) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(routing.stream_stats.connects.load(Ordering::Relaxed), 2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    events.poll(64, |e, _, _| {
        if let Event::ExecReport(r) = e {
            seen.push(*r);
        }
    });
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen.iter().fold(Quantity::ZERO, |a, r| a + r.last_qty), qty("0.010"));
    assert_eq!(routing.stats.positions_adopted.load(Ordering::Relaxed), 1, "adopted once");
    tokio::task::spawn_blocking(move || routing.stop()).await.unwrap();
    orders_tx.close();
    ex.shutdown().await;
}

/// The engine's positions as a test sets them.
#[derive(Debug, Default)]
struct TestEngine {
    positions: std::sync::Mutex<Vec<(AgentId, InstrumentId, Quantity)>>,
    mark: std::sync::Mutex<Price>,
}

impl TestEngine {
    fn set(&self, positions: &[(u16, &str)]) {
        *self.positions.lock().unwrap() = positions.iter().map(|&(a, q)| (AgentId(a), InstrumentId(0), qty(q))).collect();
    }
}

impl EnginePositions for TestEngine {
    fn positions(&self) -> Vec<(AgentId, InstrumentId, Quantity)> {
        self.positions.lock().unwrap().clone()
    }

    fn mark(&self, _instrument: InstrumentId) -> Price {
        *self.mark.lock().unwrap()
    }
}

#[tokio::test]
async fn a_position_difference_that_holds_is_adopted_from_the_venue() {
    let ex = exchange().await;
    let c = client(&ex, LOCAL_API_SECRET).await;
    let engine = Arc::new(TestEngine::default());
    *engine.mark.lock().unwrap() = px("60000.50");
    let config = OrderGatewayConfig { position_settle: Duration::from_millis(150), ..OrderGatewayConfig::default() };
    let mut gw = OrderGateway::new(c, &[btc()], config).with_engine_positions(Arc::clone(&engine) as Arc<dyn EnginePositions>);
    let stats = gw.stats();
    // Agreeing sides: nothing to do.
    engine.set(&[]);
    let found = gw.reconcile_positions().await.unwrap();
    assert_eq!((found.checked, found.differences, found.adopted), (1, 0, 0));
    // The venue holds 0.050 long (a manual trade, say); the engine thinks 0.020 - 0.005.
    ex.orders().set_position("BTCUSDT", qty("0.050"));
    engine.set(&[(2, "0.020"), (3, "-0.005")]);
    let found = gw.reconcile_positions().await.unwrap();
    assert_eq!((found.differences, found.adopted), (1, 0), "seen once: not adopted yet");
    assert!(gw.drain_reports().is_empty());
    // Before the settle time has passed, still nothing.
    let found = gw.reconcile_positions().await.unwrap();
    assert_eq!((found.differences, found.adopted), (1, 0));
    // The engine's side moves (a fill was still on its way): the wait starts again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    engine.set(&[(2, "0.030"), (3, "-0.005")]);
    let found = gw.reconcile_positions().await.unwrap();
    assert_eq!((found.differences, found.adopted), (1, 0), "a moving difference is not adopted");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let found = gw.reconcile_positions().await.unwrap();
    assert_eq!((found.differences, found.adopted), (1, 1));
    let r = gw.drain_reports();
    assert_eq!(r.len(), 1, "{r:?}");
    let a = r[0];
    assert_eq!(
        (a.agent, a.instrument, a.kind, a.side, a.last_qty, a.price, a.fee, a.client_order_id, a.leaves_qty),
        (
            AgentId(2),
            InstrumentId(0),
            ExecKind::PartialFill,
            Side::Buy,
            qty("0.025"),
            px("60000.50"),
            Money::ZERO,
            ADJUSTMENT_CLIENT_ORDER_ID,
            Quantity::ZERO
        ),
        "the venue's 0.050 adopted: +0.025 for the agent holding the most, at the engine's mark"
    );
    // The engine books it: the sides agree and stay agreed.
    engine.set(&[(2, "0.055"), (3, "-0.005")]);
    let found = gw.reconcile_positions().await.unwrap();
    assert_eq!((found.differences, found.adopted), (0, 0));
    // A venue that went flat behind our back: the engine is flattened the same way, by a sell.
    ex.orders().set_position("BTCUSDT", Quantity::ZERO);
    engine.set(&[(4, "0.010")]);
    gw.reconcile_positions().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.reconcile_positions().await.unwrap();
    let r = gw.drain_reports();
    assert_eq!((r.len(), r[0].agent, r[0].side, r[0].last_qty), (1, AgentId(4), Side::Sell, qty("0.010")), "{r:?}");
    // The engine has no mark: the venue's (the book's mid here) prices the adjustment.
    *engine.mark.lock().unwrap() = Price::ZERO;
    ex.orders().set_position("BTCUSDT", qty("0.001"));
    engine.set(&[]);
    gw.reconcile_positions().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let found = gw.reconcile_positions().await.unwrap();
    assert_eq!(found.adopted, 1);
    let r = gw.drain_reports();
    assert_eq!((r[0].agent, r[0].side, r[0].last_qty, r[0].price), (AgentId(0), Side::Buy, qty("0.001"), px("60000.50")), "{r:?}");
    // Every pass that saw a difference counted it.
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    assert_eq!((n(&stats.positions_adopted), n(&stats.positions_unpriced), n(&stats.position_differences)), (3, 0, 8));
    ex.shutdown().await;
}

#[tokio::test]
async fn bybit_5xx_and_timeouts_are_queried_never_resent() {
    let ex = exchange().await;
    // The client gives up after 500 ms.
    let c = client(&ex, LOCAL_API_SECRET).await;
    let config = OrderGatewayConfig {
        unknown_backoff: Duration::from_millis(50),
        unknown_settle: Duration::from_millis(300),
        ..OrderGatewayConfig::default()
    };
    let mut gw = OrderGateway::new(c, &[btc()], config);
    let stats = gw.stats();
    let kinds = |r: &[ExecReport]| r.iter().map(|r| (r.kind, r.last_qty)).collect::<Vec<_>>();
    // 500, but the order was placed (and filled on arrival): the query finds it.
    ex.orders().inject(OrderFault::Error500 { place: true });
    gw.handle(gtc_buy(81, "60001.00", "0.010", TimeInForce::Ioc), Instant::now()).await;
    assert_eq!(kinds(&gw.drain_reports()), [(ExecKind::Ack, Quantity::ZERO), (ExecKind::Fill, qty("0.01"))]);
    assert_eq!(ex.orders().count_client_id(&client_order_id(81)), 1, "never resent");
    // A timeout (the answer comes after the client stopped waiting): the same.
    ex.orders().inject(OrderFault::Delay(Duration::from_millis(800)));
    gw.handle(gtc_buy(82, "60001.00", "0.010", TimeInForce::Ioc), Instant::now()).await;
    assert_eq!(kinds(&gw.drain_reports()), [(ExecKind::Ack, Quantity::ZERO), (ExecKind::Fill, qty("0.01"))]);
    assert_eq!(ex.orders().count_client_id(&client_order_id(82)), 1, "never resent");
    // 500 and not placed: unknown until its recvWindow-like settle time has passed, then rejected.
    ex.orders().inject(OrderFault::Error500 { place: false });
    gw.handle(gtc_buy(83, "59000.00", "0.010", TimeInForce::Gtc), Instant::now()).await;
    assert!(gw.drain_reports().is_empty(), "not known yet either way");
    assert_eq!(gw.working(), 1);
    tokio::time::sleep(Duration::from_millis(350)).await;
    gw.poll_working().await;
    let r = gw.drain_reports();
    assert_eq!((r.len(), r[0].kind, r[0].reason), (1, ExecKind::Rejected, RejectReason::VenueOther), "{r:?}");
    assert_eq!(ex.orders().count_client_id(&client_order_id(83)), 0);
    assert_eq!((stats.unknown.load(Ordering::Relaxed), stats.resolved.load(Ordering::Relaxed)), (3, 3));
    ex.shutdown().await;
}
