//! Order routing: encode and sign one order (Binance query string, Bybit v5 JSON body)
//! against the bare HMAC of the same bytes; and the router's path from an engine order to
//! the HTTP request read off a loopback socket, against reqwest posting the same request
//! prepared in advance.
//!
//! The loopback server is a plain TCP listener in this process: it reads each request to
//! its last body byte, stamps the time on the shared clock, and answers with a Binance
//! new-order object (status `NEW`) echoing the client order id, over keep-alive.

use crate::case::{histogram, record, Case, Group};
use crate::lab::Lab;
use hdrhistogram::Histogram;
use sapphire_core::event::AgentId;
use sapphire_core::fixed::{Money, Price, Quantity};
use sapphire_core::instrument::{Instrument, InstrumentId, MarketType};
use sapphire_core::order::{Order, OrderAction};
use sapphire_gateway::binance::BinanceMarket;
use sapphire_gateway::bybit::BybitCategory;
use sapphire_gateway::venue::binance::{BinanceExecution, BinanceExecutionConfig};
use sapphire_gateway::venue::bybit::{BybitExecution, BybitExecutionConfig};
use sapphire_gateway::venue::credentials::Credentials;
use sapphire_gateway::venue::execution::{OrderGateway, OrderGatewayConfig};
use sapphire_gateway::venue::sign::{bybit_signature, hmac_sha256_hex};
use sapphire_gateway::venue::OrderRequest;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j";
const API_KEY: &str = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A";

fn instrument() -> Instrument {
    Instrument {
        id: InstrumentId(0),
        symbol: "BTCUSDT".into(),
        venue: "binance".into(),
        market: MarketType::Spot,
        tick_size: Price::parse("0.01").unwrap_or_default(),
        lot_size: Quantity::parse("0.00001").unwrap_or_default(),
        min_notional: Money::from_units(5),
        price_precision: 2,
        qty_precision: 5,
    }
}

fn order(i: u64) -> Order {
    Order {
        client_order_id: 1_000_000 + i,
        instrument: InstrumentId(0),
        agent: AgentId(1),
        action: OrderAction::New,
        // Prices move with i so no two requests are alike.
        price: Price::from_raw(Price::parse("64000.00").unwrap_or_default().raw + (i % 1000) as i64 * 10_000_000),
        qty: Quantity::parse("0.01500").unwrap_or_default(),
        ..Order::default()
    }
}

fn binance() -> BinanceExecution {
    binance_at("http://127.0.0.1:9")
}

fn binance_at(base: &str) -> BinanceExecution {
    let mut config = BinanceExecutionConfig::new(BinanceMarket::Spot, base);
    // The limiter still runs (its bookkeeping is part of the path), with the venue's limits
    // raised so thousands of orders a second never wait: Binance allows 50 per 10 s.
    for l in &mut config.limits {
        l.limit = l.limit.saturating_mul(1_000_000);
    }
    match BinanceExecution::new(config, Credentials::new(API_KEY, SECRET)) {
        Ok(b) => b,
        Err(e) => panic!("building the Binance client: {e}"),
    }
}

/// Times `f` per call, `n` calls after a warm-up of `n / 10`.
fn per_call(n: usize, mut f: impl FnMut(u64) -> usize) -> (Histogram<u64>, usize) {
    let mut h = histogram();
    let mut sink = 0usize;
    for i in 0..n / 10 {
        sink = sink.wrapping_add(f(i as u64));
    }
    for i in 0..n {
        let t = Instant::now();
        sink = sink.wrapping_add(f(i as u64));
        record(&mut h, t.elapsed().as_nanos() as u64);
    }
    (h, sink)
}

/// Encode-and-sign cases: Binance and Bybit orders, and the HMAC floor.
pub fn sign_cases(lab: &Lab) -> Vec<Case> {
    let n = lab.scale.pick(2_000, 50_000, 500_000);
    let _pin = lab.pin("venue-sign", lab.consumer_core());
    let inst = instrument();
    let venue = binance();
    // Engine orders made beforehand: the engine hands the router a finished `Order`.
    let orders: Vec<Order> = (0..1024).map(order).collect();
    let pick = |i: u64| &orders[i as usize % orders.len()];
    let (ours, _) = per_call(n, |i| {
        let req = OrderRequest::from_order(pick(i), &inst);
        venue.signed_order(&req).as_str().len()
    });
    // The bytes a Binance order signs, prepared beforehand: what the HMAC alone costs.
    let prepared: Vec<String> =
        (0..64).map(|i| venue.order_query(&OrderRequest::from_order(&order(i), &inst)).as_str().to_string()).collect();
    let (floor, _) = per_call(n, |i| hmac_sha256_hex(SECRET.as_bytes(), prepared[i as usize % 64].as_bytes()).len());
    let bybit_venue = match BybitExecution::new(
        BybitExecutionConfig::new(BybitCategory::Linear, "http://127.0.0.1:9"),
        Credentials::new(API_KEY, SECRET),
    ) {
        Ok(b) => b,
        Err(e) => panic!("building the Bybit client: {e}"),
    };
    let (bybit, _) = per_call(n, |i| {
        let req = OrderRequest::from_order(pick(i), &inst);
        let body = bybit_venue.order_body(&req);
        bybit_signature(SECRET, 1_700_000_000_000 + i, API_KEY, 5_000, &body).len() + body.len()
    });
    vec![
        Case::latency(
            "venue_binance_encode_sign",
            Group::Venue,
            "engine order → Binance new-order query string with recvWindow, timestamp and HMAC-SHA256 signature",
            ours,
            None,
        ),
        Case::latency(
            "venue_bybit_encode_sign",
            Group::Venue,
            "engine order → Bybit v5 order/create JSON body and its HMAC-SHA256 signature",
            bybit,
            None,
        ),
        Case::latency(
            "venue_hmac_floor",
            Group::Venue,
            "HMAC-SHA256 hex of the same query string, prepared in advance (the floor)",
            floor,
            None,
        ),
    ]
}

/// Arrival times of requests at the loopback server.
type Arrivals = Arc<Mutex<Vec<Instant>>>;

async fn serve(listener: tokio::net::TcpListener, arrivals: Arrivals) {
    while let Ok((mut sock, _)) = listener.accept().await {
        let _ = sock.set_nodelay(true);
        let arrivals = Arc::clone(&arrivals);
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(4096);
            let mut chunk = [0u8; 4096];
            loop {
                // One request: headers, then Content-Length bytes of body.
                let (head_end, body_len) = loop {
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                            .unwrap_or(0);
                        break (p + 4, len);
                    }
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                };
                while buf.len() < head_end + body_len {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
                let at = Instant::now();
                if let Ok(mut a) = arrivals.lock() {
                    a.push(at);
                }
                let body = String::from_utf8_lossy(&buf[head_end..head_end + body_len]).into_owned();
                buf.drain(..head_end + body_len);
                let id = body.split('&').find_map(|kv| kv.strip_prefix("newClientOrderId=")).unwrap_or("x").to_string();
                let answer = format!(
                    r#"{{"symbol":"BTCUSDT","orderId":1,"clientOrderId":"{id}","transactTime":1,"price":"64000.00","origQty":"0.01500","executedQty":"0","cummulativeQuoteQty":"0","status":"NEW","timeInForce":"GTC","type":"LIMIT","side":"BUY"}}"#
                );
                let resp = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}", answer.len());
                if sock.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Router → wire: the order gateway handling an engine order until the request is read at
/// a loopback server, against reqwest posting a prepared request to the same server.
pub fn wire_cases(lab: &Lab) -> Vec<Case> {
    let n = lab.scale.pick(300, 3_000, 20_000);
    let _pin = lab.pin("venue-wire", lab.consumer_core());
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            return vec![Case::latency("venue_router_to_wire", Group::Venue, format!("runtime failed to start: {e}"), histogram(), None)]
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => return vec![Case::latency("venue_router_to_wire", Group::Venue, format!("bind failed: {e}"), histogram(), None)],
        };
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let arrivals: Arrivals = Arc::default();
        tokio::spawn(serve(listener, Arc::clone(&arrivals)));
        let base = format!("http://{addr}");
        let venue = Arc::new(binance_at(&base));
        let config = OrderGatewayConfig::default();
        let mut gateway = OrderGateway::new(Arc::clone(&venue), &[instrument()], config);

        let last_arrival = |arrivals: &Arrivals| arrivals.lock().ok().and_then(|a| a.last().copied());
        let mut router = histogram();
        for i in 0..(n + n / 10) as u64 {
            let start = Instant::now();
            gateway.handle(order(i), start).await;
            let _ = gateway.drain_reports();
            if i >= (n / 10) as u64 {
                if let Some(at) = last_arrival(&arrivals) {
                    record(&mut router, at.saturating_duration_since(start).as_nanos() as u64);
                }
            }
        }

        let http = reqwest::Client::builder().tcp_nodelay(true).timeout(Duration::from_secs(5)).build().unwrap_or_default();
        let url = format!("{base}/api/v3/order");
        let inst = instrument();
        let bodies: Vec<String> =
            (0..64).map(|i| venue.signed_order(&OrderRequest::from_order(&order(i), &inst)).as_str().to_string()).collect();
        let mut bare = histogram();
        for i in 0..(n + n / 10) {
            let body = bodies[i % 64].clone();
            let start = Instant::now();
            let sent = http
                .post(&url)
                .header("X-MBX-APIKEY", API_KEY)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await;
            if let Ok(r) = sent {
                let _ = r.bytes().await;
            }
            if i >= n / 10 {
                if let Some(at) = last_arrival(&arrivals) {
                    record(&mut bare, at.saturating_duration_since(start).as_nanos() as u64);
                }
            }
        }
        vec![
            Case::latency(
                "venue_router_to_wire",
                Group::Venue,
                "order gateway: engine order → filters, encode, sign, reqwest → request read at a loopback server",
                router,
                None,
            ),
            Case::latency(
                "venue_reqwest_to_wire",
                Group::Venue,
                "reqwest posting a prepared, signed request → request read at the same server (the floor)",
                bare,
                None,
            ),
        ]
    })
}

/// Every venue case.
pub fn suite(lab: &Lab, tick: &mut dyn FnMut(&str)) -> Vec<Case> {
    tick("venue: encode and sign");
    let mut cases = sign_cases(lab);
    tick("venue: router to the wire on loopback");
    cases.extend(wire_cases(lab));
    cases
}
