//! Unit tests of signing, filters, formatting, rate limiting, parsing and error mapping.

use super::binance::{parse_order, BinanceExecution, BinanceExecutionConfig};
use super::bybit::{BybitExecution, BybitExecutionConfig};
use super::credentials::{credentials_from_lookup, live_credentials, CredentialError, Credentials, Venue};
use super::errors::{binance_reason, bybit_reason};
use super::rate_limit::{parse_retry_after, parse_usage_header, RateLimit, RateLimiter, UsageKind};
use super::sign::*;
use super::*;
use crate::binance::BinanceMarket;
use crate::bybit::BybitCategory;
use sapphire_core::event::AgentId;
use sapphire_core::instrument::{InstrumentId, MarketType};
use sapphire_core::order::OrderAction;
use std::time::Duration;

const DOC_SECRET: &str = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j";

#[test]
fn binance_documented_vectors() {
    // Binance's SIGNED endpoint example (spot and futures docs), ASCII parameters.
    let q = "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559";
    assert_eq!(binance_signature(DOC_SECRET, q), "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71");
    // The same built with Query (order kept, nothing to encode) and signed in place.
    let mut built = Query::new();
    built
        .push("symbol", "LTCBTC")
        .push("side", "BUY")
        .push("type", "LIMIT")
        .push("timeInForce", "GTC")
        .push("quantity", 1)
        .push("price", "0.1")
        .push("recvWindow", 5000)
        .push("timestamp", 1_499_827_319_559u64);
    assert_eq!(built.as_str(), q);
    built.sign_binance(DOC_SECRET);
    assert!(built.as_str().ends_with("&signature=c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"));
    // Binance's second example: non-ASCII symbol, percent-encoded (UTF-8) before signing.
    let mut uni = Query::new();
    uni.push("symbol", "１２３４５６")
        .push("side", "BUY")
        .push("type", "LIMIT")
        .push("timeInForce", "GTC")
        .push("quantity", 1)
        .push("price", "0.1")
        .push("recvWindow", 5000)
        .push("timestamp", 1_499_827_319_559u64);
    assert!(uni.as_str().starts_with("symbol=%EF%BC%91%EF%BC%92%EF%BC%93%EF%BC%94%EF%BC%95%EF%BC%96&side=BUY"));
    assert_eq!(binance_signature(DOC_SECRET, uni.as_str()), "e1353ec6b14d888f1164ae9af8228a3dbd508bc82eb867db8ab6046442f33ef3");
}

#[test]
fn bybit_v5_rule() {
    // Expected values computed once with Python's hmac module:
    //   hmac.new(b"Y"*36, (ts + key + rw + payload).encode(), hashlib.sha256).hexdigest()
    let secret = "YYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYY";
    let body = r#"{"category":"linear","symbol":"BTCUSDT","side":"Buy","orderType":"Limit","qty":"0.001","price":"20000","timeInForce":"GTC","orderLinkId":"sapphire-1"}"#;
    assert_eq!(
        bybit_signature(secret, 1_658_384_314_791, "XXXXXXXXXX", 5_000, body),
        "dc9787fc6ee34ff1c629cb249b8dde9fabb4dac20d37a4dafbd36d2c65b7b5f1"
    );
    let get = "category=linear&symbol=BTCUSDT&orderLinkId=sapphire-1";
    assert_eq!(
        bybit_signature(secret, 1_658_384_314_791, "XXXXXXXXXX", 5_000, get),
        "bfb8665576516380f15a726b3f1fa90a8841f87788cd8394739dd183732a3768"
    );
    let creds = Credentials::new("XXXXXXXXXX", secret);
    let headers = bybit::signed_headers(&creds, 1_658_384_314_791, 5_000, get);
    assert_eq!(headers[0], ("X-BAPI-API-KEY", "XXXXXXXXXX".to_string()));
    assert_eq!(headers[3].1, "bfb8665576516380f15a726b3f1fa90a8841f87788cd8394739dd183732a3768");
}

#[test]
fn percent_encoding_of_special_characters() {
    assert_eq!(percent_encode("AZaz09-_.~"), "AZaz09-_.~");
    assert_eq!(percent_encode("a b&c=d/e+f"), "a%20b%26c%3Dd%2Fe%2Bf");
    assert_eq!(percent_encode("é"), "%C3%A9");
    assert_eq!(percent_encode("{\"x\":1}"), "%7B%22x%22%3A1%7D");
    for s in ["a b&c=d/e+f", "１２３", "%%", "~"] {
        assert_eq!(percent_decode(&percent_encode(s)).as_deref(), Some(s));
    }
    assert_eq!(percent_decode("%zz"), None);
    assert_eq!(percent_decode("%4"), None);
    let mut q = Query::new();
    q.push("newClientOrderId", "a/b:c").push_opt("price", None::<&str>).push_opt("x", Some(1));
    assert_eq!(q.as_str(), "newClientOrderId=a%2Fb%3Ac&x=1");
    assert_eq!(parse_query(q.as_str()).unwrap(), vec![("newClientOrderId".into(), "a/b:c".into()), ("x".into(), "1".into())]);
}

#[test]
fn verification_is_case_insensitive_and_exact() {
    let sig = binance_signature("k", "a=1");
    assert!(verify_hmac_sha256_hex(b"k", b"a=1", &sig));
    assert!(verify_hmac_sha256_hex(b"k", b"a=1", &sig.to_uppercase()));
    assert!(!verify_hmac_sha256_hex(b"k", b"a=2", &sig));
    assert!(!verify_hmac_sha256_hex(b"j", b"a=1", &sig));
    assert!(!verify_hmac_sha256_hex(b"k", b"a=1", "zz"));
    assert!(!verify_hmac_sha256_hex(b"k", b"a=1", &sig[..63]));
}

fn instrument() -> Instrument {
    Instrument {
        id: InstrumentId(0),
        symbol: "BTCUSDT".into(),
        venue: "binance".into(),
        market: MarketType::Spot,
        tick_size: Price::parse("0.01").unwrap(),
        lot_size: Quantity::parse("0.001").unwrap(),
        min_notional: Money::from_units(5),
        price_precision: 2,
        qty_precision: 3,
    }
}

fn order(price: &str, qty: &str) -> Order {
    Order {
        client_order_id: 42,
        instrument: InstrumentId(0),
        agent: AgentId(1),
        action: OrderAction::New,
        price: Price::parse(price).unwrap(),
        qty: Quantity::parse(qty).unwrap(),
        ..Order::default()
    }
}

#[test]
fn filters_refuse_off_tick_off_lot_and_small_orders() {
    let inst = instrument();
    assert_eq!(check_filters(&order("60000.01", "0.001"), &inst), Ok(()));
    assert_eq!(check_filters(&order("60000.001", "0.001"), &inst), Err(RejectReason::TickSize));
    assert_eq!(check_filters(&order("60000.01", "0.0015"), &inst), Err(RejectReason::LotSize));
    assert_eq!(check_filters(&order("60000.01", "0"), &inst), Err(RejectReason::LotSize));
    assert_eq!(check_filters(&order("4000", "0.001"), &inst), Err(RejectReason::MinNotional));
    let mut reduce = order("4000", "0.001");
    reduce.reduce_only = true;
    assert_eq!(check_filters(&reduce, &inst), Ok(()), "reduce-only orders are exempt from the minimum notional");
    let mut market = order("0", "0.001");
    market.order_type = OrderType::Market;
    assert_eq!(check_filters(&market, &inst), Ok(()));
}

#[test]
fn formats_and_ids() {
    assert_eq!(format_fixed(60_000_010_000_000, 9, 2), "60000.01");
    assert_eq!(format_fixed(100_000, 8, 3), "0.001");
    assert_eq!(format_fixed(-150_000_000, 8, 1), "-1.5");
    assert_eq!(format_fixed(123, 8, 0), "0");
    assert_eq!(client_order_id(281_474_976_710_913), "sph-281474976710913");
    assert_eq!(parse_client_order_id("sph-281474976710913"), Some(281_474_976_710_913));
    assert_eq!(parse_client_order_id("web_123"), None);
    assert!(client_order_id(u64::MAX).len() <= 36);
    let req = OrderRequest::from_order(&order("60000.01", "0.001"), &instrument());
    assert_eq!((req.price.as_deref(), req.qty.as_str(), req.client_id.as_str()), (Some("60000.01"), "0.001", "sph-42"));
}

fn req(tif: VenueTif, reduce_only: bool) -> OrderRequest {
    OrderRequest {
        symbol: "BTCUSDT".into(),
        client_id: "sph-1".into(),
        side: Side::Sell,
        order_type: VenueOrderType::Limit,
        tif,
        price: Some("60000.10".into()),
        qty: "0.010".into(),
        reduce_only,
    }
}

#[test]
fn order_parameters_per_market() {
    let creds = Credentials::new("k", "s");
    let spot = BinanceExecution::new(BinanceExecutionConfig::new(BinanceMarket::Spot, "http://127.0.0.1:1"), creds.clone()).unwrap();
    assert_eq!(
        spot.order_query(&req(VenueTif::PostOnly, true)).as_str(),
        "symbol=BTCUSDT&side=SELL&type=LIMIT_MAKER&quantity=0.010&price=60000.10&newClientOrderId=sph-1&newOrderRespType=FULL"
    );
    assert_eq!(
        spot.order_query(&req(VenueTif::Fok, false)).as_str(),
        "symbol=BTCUSDT&side=SELL&type=LIMIT&timeInForce=FOK&quantity=0.010&price=60000.10&newClientOrderId=sph-1&newOrderRespType=FULL"
    );
    let usdm = BinanceExecution::new(BinanceExecutionConfig::new(BinanceMarket::UsdM, "http://127.0.0.1:1"), creds.clone()).unwrap();
    assert_eq!(
        usdm.order_query(&req(VenueTif::PostOnly, true)).as_str(),
        "symbol=BTCUSDT&side=SELL&type=LIMIT&timeInForce=GTX&quantity=0.010&price=60000.10&newClientOrderId=sph-1&reduceOnly=true&newOrderRespType=RESULT"
    );
    let mut market = req(VenueTif::Ioc, false);
    market.order_type = VenueOrderType::Market;
    assert_eq!(
        usdm.order_query(&market).as_str(),
        "symbol=BTCUSDT&side=SELL&type=MARKET&quantity=0.010&newClientOrderId=sph-1&newOrderRespType=RESULT"
    );
    let bybit = BybitExecution::new(BybitExecutionConfig::new(BybitCategory::Linear, "http://127.0.0.1:1"), creds).unwrap();
    let body: serde_json::Value = serde_json::from_str(&bybit.order_body(&req(VenueTif::PostOnly, true))).unwrap();
    assert_eq!(body["timeInForce"], "PostOnly");
    assert_eq!(body["side"], "Sell");
    assert_eq!(body["reduceOnly"], true);
    assert_eq!(body["orderLinkId"], "sph-1");
    assert_eq!(body["price"], "60000.10");
}

#[test]
fn parses_binance_order_answers() {
    // Spot FULL answer, shape from Binance's "New order" documentation.
    let full = r#"{"symbol":"BTCUSDT","orderId":28,"orderListId":-1,"clientOrderId":"sph-7","transactTime":1507725176595,"price":"0.00000000","origQty":"10.00000000","executedQty":"10.00000000","origQuoteOrderQty":"0.000000","cummulativeQuoteQty":"10.00000000","status":"FILLED","timeInForce":"GTC","type":"MARKET","side":"SELL","workingTime":1507725176595,"selfTradePreventionMode":"NONE","fills":[{"price":"4000.00000000","qty":"1.00000000","commission":"4.00000000","commissionAsset":"USDT","tradeId":56},{"price":"3999.00000000","qty":"5.00000000","commission":"19.99500000","commissionAsset":"USDT","tradeId":57}]}"#;
    let o = parse_order(&serde_json::from_str(full).unwrap()).unwrap();
    assert_eq!(o.status, VenueOrderStatus::Filled);
    assert_eq!((o.client_id.as_str(), o.venue_id.as_str(), o.side), ("sph-7", "28", Side::Sell));
    assert_eq!(o.fills.len(), 2);
    assert_eq!(o.fills[1].fee, Money::parse("19.995").unwrap());
    assert_eq!(o.avg_price(), Price::parse("1").unwrap());
    // ACK: no status, the order is working.
    let ack = r#"{"symbol":"BTCUSDT","orderId":28,"orderListId":-1,"clientOrderId":"sph-7","transactTime":1507725176595}"#;
    assert_eq!(parse_order(&serde_json::from_str(ack).unwrap()).unwrap().status, VenueOrderStatus::New);
    // Spot cancel: the cancelled order is origClientOrderId.
    let cancel = r#"{"symbol":"LTCBTC","origClientOrderId":"sph-9","orderId":4,"orderListId":-1,"clientOrderId":"cancelMyOrder1","transactTime":1684804350068,"price":"2.00000000","origQty":"1.00000000","executedQty":"0.00000000","cummulativeQuoteQty":"0.00000000","status":"CANCELED","timeInForce":"GTC","type":"LIMIT","side":"BUY","selfTradePreventionMode":"NONE"}"#;
    let c = parse_order(&serde_json::from_str(cancel).unwrap()).unwrap();
    assert_eq!((c.client_id.as_str(), c.status, c.leaves()), ("sph-9", VenueOrderStatus::Canceled, Quantity::ZERO));
    // USD-M order answer.
    let fut = r#"{"clientOrderId":"sph-3","cumQty":"0.002","cumQuote":"120.02","executedQty":"0.002","orderId":22542179,"avgPrice":"60010.00","origQty":"0.004","price":"60010.00","reduceOnly":false,"side":"BUY","positionSide":"BOTH","status":"PARTIALLY_FILLED","stopPrice":"0","closePosition":false,"symbol":"BTCUSDT","timeInForce":"GTC","type":"LIMIT","origType":"LIMIT","updateTime":1566818724722,"workingType":"CONTRACT_PRICE","priceProtect":false}"#;
    let f = parse_order(&serde_json::from_str(fut).unwrap()).unwrap();
    assert_eq!(f.status, VenueOrderStatus::PartiallyFilled);
    assert_eq!(f.leaves(), Quantity::parse("0.002").unwrap());
    assert_eq!(f.avg_price(), Price::parse("60010").unwrap());
    assert_eq!(f.update_ms, 1_566_818_724_722);
    assert!(parse_order(&serde_json::json!({"status":"WEIRD"})).is_err());
    assert!(parse_order(&serde_json::json!({"status":"NEW","price":"abc"})).is_err());
}

#[test]
fn parses_bybit_realtime_orders() {
    let v: serde_json::Value = serde_json::from_str(r#"{"orderId":"fd4300ae","orderLinkId":"sph-5","symbol":"ETHUSDT","price":"1600.00","qty":"0.10","side":"Sell","orderStatus":"PartiallyFilled","avgPrice":"1600.00","cumExecQty":"0.05","cumExecValue":"80","cumExecFee":"0.04","timeInForce":"GTC","orderType":"Limit","updatedTime":"1684476068372"}"#).unwrap();
    let o = bybit::parse_order(&v).unwrap();
    assert_eq!((o.status, o.side, o.client_id.as_str()), (VenueOrderStatus::PartiallyFilled, Side::Sell, "sph-5"));
    assert_eq!(o.avg_price(), Price::parse("1600").unwrap());
    assert_eq!(o.update_ms, 1_684_476_068_372);
}

#[test]
fn venue_codes_map_to_reject_reasons() {
    assert_eq!(binance_reason(-2010, "Account has insufficient balance for requested action."), RejectReason::VenueInsufficientBalance);
    assert_eq!(binance_reason(-1013, "Filter failure: LOT_SIZE"), RejectReason::VenueFilter);
    assert_eq!(binance_reason(-4164, "Order's notional must be no smaller than 5"), RejectReason::VenueFilter);
    assert_eq!(binance_reason(-2019, "Margin is insufficient."), RejectReason::VenueInsufficientBalance);
    assert_eq!(binance_reason(-1003, "Too many requests"), RejectReason::VenueRateLimited);
    assert_eq!(binance_reason(-2011, "Unknown order sent."), RejectReason::VenueUnknownOrder);
    assert_eq!(binance_reason(-2013, "Order does not exist."), RejectReason::VenueUnknownOrder);
    assert_eq!(binance_reason(-1022, "Signature for this request is not valid."), RejectReason::VenueOther);
    assert_eq!(bybit_reason(110007), RejectReason::VenueInsufficientBalance);
    assert_eq!(bybit_reason(10006), RejectReason::VenueRateLimited);
    assert_eq!(bybit_reason(110001), RejectReason::VenueUnknownOrder);
    assert_eq!(bybit_reason(10004), RejectReason::VenueOther);
    let e = VenueError::Refused { venue: "binance", code: -1022, msg: "x".into(), reason: RejectReason::VenueOther, status: 400 };
    assert!(e.is_terminal());
    assert_eq!(e.code(), Some(-1022));
    assert!(!VenueError::Unknown { venue: "binance", reason: "timeout".into() }.is_terminal());
    let rl = VenueError::RateLimited { venue: "binance", status: 429, retry_after: Duration::from_secs(1) };
    assert_eq!(rl.reject_reason(), RejectReason::VenueRateLimited);
}

#[test]
fn usage_headers_and_retry_after() {
    assert_eq!(parse_usage_header("X-MBX-USED-WEIGHT-1M"), Some((UsageKind::Weight, Duration::from_secs(60))));
    assert_eq!(parse_usage_header("x-mbx-order-count-10s"), Some((UsageKind::Orders, Duration::from_secs(10))));
    assert_eq!(parse_usage_header("x-mbx-order-count-1d"), Some((UsageKind::Orders, Duration::from_secs(86_400))));
    assert_eq!(parse_usage_header("x-mbx-used-weight"), None);
    assert_eq!(parse_usage_header("x-mbx-used-weight-0m"), None);
    assert_eq!(parse_usage_header("content-length"), None);
    assert_eq!(parse_retry_after(Some("3"), Duration::ZERO), Duration::from_secs(3));
    assert_eq!(parse_retry_after(Some("soon"), Duration::from_millis(5)), Duration::from_millis(5));
}

#[test]
fn limiter_waits_for_the_window_before_passing_the_limit() {
    let limits = [RateLimit { kind: UsageKind::Orders, interval: Duration::from_secs(10), limit: 10 }];
    let l = RateLimiter::new(&limits, 90);
    // 9 orders (90%) pass at once in the window starting at 100_000 ms.
    for i in 0..9 {
        assert_eq!(l.reserve(100_000 + i, 1, true), Duration::ZERO, "order {i}");
    }
    // The 10th would pass 90%: wait until the window ends at 110_000, plus 1% + 5 ms.
    assert_eq!(l.reserve(105_000, 1, true), Duration::from_millis(5_105));
    // Non-order requests are not counted against an order limit.
    assert_eq!(l.reserve(105_000, 1, false), Duration::ZERO);
    // In the next window it passes.
    assert_eq!(l.reserve(110_001, 1, true), Duration::ZERO);
    // The venue's header is the truth for its window.
    l.observe(110_002, "X-MBX-ORDER-COUNT-10S", "9");
    assert!(l.reserve(110_003, 1, true) > Duration::ZERO);
    // Retry-After blocks everything.
    let l = RateLimiter::new(&limits, 90);
    l.block_for(1_000, Duration::from_secs(2));
    assert_eq!(l.reserve(1_500, 1, false), Duration::from_millis(1_500));
    assert_eq!(l.reserve(3_000, 1, false), Duration::ZERO);
    assert_eq!(l.waits().0, 1);
}

/// Found by fuzzing (fuzz/venue_responses): a huge `Retry-After` stopped every request for
/// 105,000 years; a usage header of a huge window overflowed (a panic in a debug build).
#[test]
fn absurd_rate_limit_headers_neither_stop_trading_for_good_nor_overflow() {
    let day = 86_400;
    assert_eq!(parse_retry_after(Some("0000000333333333333333"), Duration::ZERO), Duration::from_secs(3 * day));
    assert_eq!(parse_retry_after(Some("18446744073709551615"), Duration::ZERO), Duration::from_secs(3 * day));
    assert_eq!(parse_retry_after(Some("120"), Duration::ZERO), Duration::from_secs(120), "a real ban is taken as it is");
    assert_eq!(parse_usage_header("x-mbx-used-weight-999999999999999999m"), None);
    assert_eq!(parse_usage_header("x-mbx-order-count-18446744073709551615d"), None);
    let limits = [RateLimit { kind: UsageKind::Orders, interval: Duration::from_secs(10), limit: 10 }];
    let l = RateLimiter::new(&limits, 90);
    l.block_for(1_000, parse_retry_after(Some("99999999999999"), Duration::ZERO));
    assert_eq!(l.reserve(1_000, 1, true), Duration::from_secs(3 * day));
    // Server times near the end of u64 saturate instead of overflowing.
    let l = RateLimiter::new(&limits, 90);
    l.block_for(u64::MAX - 1, Duration::MAX);
    assert_eq!(l.reserve(u64::MAX - 2, 1, true), Duration::from_millis(2));
}

#[test]
fn credentials_from_env_or_files_and_redacted() {
    let env =
        |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
    let c = credentials_from_lookup(Venue::Binance, env(&[("BINANCE_API_KEY", "AKEY1234567"), ("BINANCE_API_SECRET", "topsecretvalue")]))
        .unwrap();
    assert_eq!(c.api_key, "AKEY1234567");
    assert_eq!(c.secret.expose(), "topsecretvalue");
    let shown = format!("{c:?} {:?} {}", c.secret, c.secret);
    assert!(!shown.contains("topsecretvalue"), "{shown}");
    assert!(!shown.contains("AKEY1234567"), "{shown}");
    assert!(shown.contains("[redacted]"));
    // Files (a mounted Kubernetes secret), trimmed.
    let dir = std::env::temp_dir().join(format!("sapphire-creds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (kf, sf) = (dir.join("key"), dir.join("secret"));
    std::fs::write(&kf, "filekey\n").unwrap();
    std::fs::write(&sf, "filesecret\n").unwrap();
    let (kp, sp) = (kf.display().to_string(), sf.display().to_string());
    let c = credentials_from_lookup(Venue::Bybit, |k| match k {
        "BYBIT_API_KEY_FILE" => Some(kp.clone()),
        "BYBIT_API_SECRET_FILE" => Some(sp.clone()),
        _ => None,
    })
    .unwrap();
    assert_eq!((c.api_key.as_str(), c.secret.expose()), ("filekey", "filesecret"));
    std::fs::remove_dir_all(&dir).unwrap();
    let missing = credentials_from_lookup(Venue::Binance, |_| None).unwrap_err();
    let msg = missing.to_string();
    assert!(msg.contains("BINANCE_API_KEY") && msg.contains("ENABLE_PAPER_TRADING"), "{msg}");
    assert_eq!(
        credentials_from_lookup(Venue::Binance, env(&[("BINANCE_API_KEY", "k"), ("BINANCE_API_SECRET", "  ")])).unwrap_err(),
        CredentialError::Empty { name: "BINANCE_API_SECRET".into() }
    );
    assert!(matches!(
        credentials_from_lookup(Venue::Binance, env(&[("BINANCE_API_KEY_FILE", "/nonexistent/x")])).unwrap_err(),
        CredentialError::File { .. }
    ));
    assert_eq!(live_credentials(true, Venue::Binance), Ok(None));
    assert_eq!(Venue::parse("BYBIT"), Some(Venue::Bybit));
}

#[test]
fn parses_user_data_events() {
    use super::user_stream::{parse_user_event, UserEvent};
    // Spot executionReport, the example of Binance's user-data stream documentation.
    let new = r#"{"e":"executionReport","E":1499405658658,"s":"ETHBTC","c":"mUvoqJxFIILMdfAW5iGSOW","S":"BUY","o":"LIMIT","f":"GTC","q":"1.00000000","p":"0.10264410","P":"0.00000000","F":"0.00000000","g":-1,"C":"","x":"NEW","X":"NEW","r":"NONE","i":4293153,"l":"0.00000000","z":"0.00000000","L":"0.00000000","n":"0","N":null,"T":1499405658657,"t":-1,"I":8641984,"w":true,"m":false,"M":false,"O":1499405658657,"Z":"0.00000000","Y":"0.00000000","Q":"0.00000000","W":1499405658657,"V":"NONE"}"#;
    let UserEvent::Order(o) = parse_user_event(new).unwrap() else { panic!("an order update") };
    assert_eq!(
        (o.client_id.as_str(), o.status, o.side, o.venue_id.as_str()),
        ("mUvoqJxFIILMdfAW5iGSOW", VenueOrderStatus::New, Side::Buy, "4293153")
    );
    assert_eq!(
        (o.price, o.qty, o.executed, o.update_ms),
        (Price::parse("0.1026441").unwrap(), Quantity::parse("1").unwrap(), Quantity::ZERO, 1_499_405_658_657)
    );
    // A fill, and a cancel (whose `c` is the cancel request, `C` the order).
    let trade = new
        .replace(r#""x":"NEW","X":"NEW""#, r#""x":"TRADE","X":"PARTIALLY_FILLED""#)
        .replace(r#""l":"0.00000000","z":"0.00000000","L":"0.00000000""#, r#""l":"0.40000000","z":"0.40000000","L":"0.10264410""#)
        .replace(r#""Z":"0.00000000""#, r#""Z":"0.04105764""#);
    let UserEvent::Order(t) = parse_user_event(&trade).unwrap() else { panic!() };
    assert_eq!((t.status, t.executed, t.fills.len()), (VenueOrderStatus::PartiallyFilled, Quantity::parse("0.4").unwrap(), 1));
    assert_eq!(t.avg_price(), Price::parse("0.1026441").unwrap());
    let cancel = new
        .replace(r#""c":"mUvoqJxFIILMdfAW5iGSOW""#, r#""c":"cancelReq1""#)
        .replace(r#""C":"""#, r#""C":"sph-9""#)
        .replace(r#""x":"NEW","X":"NEW""#, r#""x":"CANCELED","X":"CANCELED""#);
    let UserEvent::Order(c) = parse_user_event(&cancel).unwrap() else { panic!() };
    assert_eq!((c.client_id.as_str(), c.status), ("sph-9", VenueOrderStatus::Canceled));
    // USD-M ORDER_TRADE_UPDATE (documentation example, filled variant).
    let fut = r#"{"e":"ORDER_TRADE_UPDATE","E":1568879465651,"T":1568879465650,"o":{"s":"BTCUSDT","c":"TEST","S":"SELL","o":"LIMIT","f":"GTC","q":"0.002","p":"7100","ap":"7103.04","sp":"0","x":"TRADE","X":"PARTIALLY_FILLED","i":8886774,"l":"0.001","z":"0.001","L":"7103.04","N":"USDT","n":"0.0028","T":1568879465650,"t":12,"b":"0","a":"9.91","m":false,"R":false,"wt":"CONTRACT_PRICE","ot":"LIMIT","ps":"BOTH","cp":false,"rp":"0","pP":false,"si":0,"ss":0,"V":"EXPIRE_TAKER","pm":"NONE","gtd":0}}"#;
    let UserEvent::Order(f) = parse_user_event(fut).unwrap() else { panic!() };
    assert_eq!((f.client_id.as_str(), f.side, f.status), ("TEST", Side::Sell, VenueOrderStatus::PartiallyFilled));
    assert_eq!((f.executed, f.avg_price()), (Quantity::parse("0.001").unwrap(), Price::parse("7103.04").unwrap()));
    assert_eq!(f.fills[0].fee, Money::parse("0.0028").unwrap());
    assert_eq!(parse_user_event(r#"{"e":"listenKeyExpired","E":1576653824250}"#).unwrap(), UserEvent::ListenKeyExpired);
    assert_eq!(parse_user_event(r#"{"e":"outboundAccountPosition","E":1}"#).unwrap(), UserEvent::Other);
    assert!(parse_user_event("not json").is_err());
    assert!(parse_user_event(r#"{"e":"executionReport","X":"WEIRD"}"#).is_err());
}

/// The engine's side of position reconciliation: the risk stage books an adjustment like a
/// fill — the position becomes the venue's, at the mark, so equity does not move — and it
/// neither matches nor closes a working order.
#[test]
fn the_risk_engine_books_a_position_adjustment_and_keeps_its_working_orders() {
    use super::execution::position_adjustment;
    use sapphire_core::event::{ExecKind, Side};
    use sapphire_core::instrument::{InstrumentRegistry, InstrumentSpec};
    use sapphire_core::order::{ExecStyle, Intent};
    use sapphire_core::risk::{OrderBatch, RiskConfig, RiskEngine, RiskOutputBatch};
    use sapphire_core::strategy::MarketView;
    let q = |s: &str| Quantity::parse(s).unwrap();
    let p = |s: &str| Price::parse(s).unwrap();
    let mut reg = InstrumentRegistry::new();
    reg.intern(InstrumentSpec {
        venue: "bybit",
        symbol: "BTCUSDT",
        market: MarketType::LinearPerpetual,
        tick_size: p("0.01"),
        lot_size: q("0.001"),
        min_notional: Money::from_units(5),
    })
    .unwrap();
    let instruments: Vec<Instrument> = reg.iter().cloned().collect();
    let mut risk = RiskEngine::new(RiskConfig::default(), &instruments, 4);
    let view = MarketView {
        ts_event: 1_000,
        bid: p("99.99"),
        ask: p("100.01"),
        mid: p("100"),
        microprice: p("100"),
        imbalance_bps: 0,
        has_market: true,
        in_sync: true,
        settled: true,
        ts_last_update: 1_000,
    };
    risk.on_market(InstrumentId(0), &view);
    // Agent 2 has an order working.
    let intent = Intent {
        ts_event: 1_000,
        intent_id: 1 << 8,
        instrument: InstrumentId(0),
        agent: AgentId(2),
        style: ExecStyle::Aggressive,
        _pad: 0,
        target: q("5"),
        price: p("100.02"),
    };
    let (mut orders, mut out) = (OrderBatch::default(), RiskOutputBatch::default());
    risk.check(&intent, &mut orders, &mut out);
    assert_eq!((orders.as_slice().len(), risk.open_orders()), (1, 1));
    let equity = risk.portfolio().total().equity;
    // The venue holds 0.5 more than the engine knows of: adopted for agent 1 at the mark.
    let adj = position_adjustment(AgentId(1), InstrumentId(0), q("0.5"), p("100"));
    assert_eq!((adj.kind, adj.side), (ExecKind::PartialFill, Side::Buy));
    risk.on_exec(&adj);
    let pos = risk.portfolio().position(AgentId(1), InstrumentId(0));
    assert_eq!((pos.qty, pos.avg_price, pos.fees), (q("0.5"), p("100"), Money::ZERO));
    assert_eq!(risk.portfolio().total().equity, equity, "adopted at the mark: equity unchanged");
    assert_eq!(risk.open_orders(), 1, "agent 2's working order is untouched");
    // And down: the venue is 0.3 short of that.
    risk.on_exec(&position_adjustment(AgentId(1), InstrumentId(0), q("-0.8"), p("100")));
    assert_eq!(risk.portfolio().position(AgentId(1), InstrumentId(0)).qty, q("-0.3"));
    assert_eq!(risk.portfolio().net_position(InstrumentId(0)), q("-0.3"));
    assert_eq!(risk.open_orders(), 1);
}
