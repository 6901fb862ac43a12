//! The Bybit v5 execution client against the local exchange's Bybit endpoints: signatures
//! checked by the server (`timestamp + apiKey + recvWindow + payload`), create / realtime /
//! cancel / cancel-all round trips, refusals with Bybit's `retCode`, and the order gateway's
//! unknown-state path on Bybit. Same tape as `venue.rs`: best bid 60000.00 × 1.000, best
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
use sapphire_gateway::venue::bybit::{BybitExecution, BybitExecutionConfig};
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
