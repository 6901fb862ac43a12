//! The Bybit v5 execution client against the local exchange's Bybit endpoints: signatures
//! checked by the server (`timestamp + apiKey + recvWindow + payload`), create / realtime /
//! cancel / cancel-all round trips, refusals with Bybit's `retCode`, and the order gateway's
//! unknown-state path on Bybit, and the private WebSocket (auth, order pushes, a dropped
//! stream reconnected and reconciled). Same tape as `venue.rs`: best bid 60000.00 × 1.000, best
//! ask 60001.00 × 0.500, tick 0.01, lot 0.001.

use sapphire_core::event::{AgentId, ExecKind, RejectReason, Side};
use sapphire_core::fixed::{Money, Price, Quantity};
use sapphire_core::instrument::{Instrument, InstrumentId, MarketType};
use sapphire_core::order::{Order, OrderAction, OrderType, TimeInForce};
use sapphire_gateway::binance::BinanceMarket;
use sapphire_gateway::bybit::BybitCategory;
use sapphire_gateway::local_exchange::orders::{OrderFault, LOCAL_API_KEY, LOCAL_API_SECRET};
use sapphire_gateway::local_exchange::tape::Tape;
use sapphire_gateway::local_exchange::{LocalExchange, LocalExchangeConfig, Pace};
use sapphire_gateway::venue::bybit::{run_private_stream, BybitExecution, BybitExecutionConfig, PrivateStreamConfig};
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
    let UserUpdate::Order(o) = next_update(&mut rx).await else { panic!("an order update") };
    assert_eq!((o.status, o.executed, o.cum_quote), (VenueOrderStatus::PartiallyFilled, qty("0.004"), Money::parse("239.96").unwrap()));
    // The stream drops: the client reconnects, authenticates and tells the gateway to reconcile.
    ex.orders().drop_private_streams();
    assert_eq!(next_update(&mut rx).await, UserUpdate::Reconnected);
    assert!(ex.orders().fill_resting("sph-1", qty("0.006")));
    let UserUpdate::Order(o) = next_update(&mut rx).await else { panic!("an order update") };
    assert_eq!((o.status, o.executed), (VenueOrderStatus::Filled, qty("0.010")));
    assert_eq!((stats.connects.load(Ordering::Relaxed), stats.orders.load(Ordering::Relaxed)), (2, 3));
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
    // The stream drops and the rest fills while nobody listens: the reconnect's reconcile finds it.
    ex.orders().drop_private_streams();
    assert!(ex.orders().fill_resting(&id, qty("0.006")));
    let u = next_update(&mut rx).await;
    assert_eq!(u, UserUpdate::Reconnected);
    gw.on_user_update(u).await;
    let r = gw.drain_reports();
    assert_eq!(r.iter().map(|r| (r.kind, r.last_qty)).collect::<Vec<_>>(), [(ExecKind::Fill, qty("0.006"))], "{r:?}");
    assert_eq!(gw.working(), 0);
    stop.send(true).unwrap();
    ex.shutdown().await;
}
