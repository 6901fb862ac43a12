//! The real Bybit v5 feed client against the local exchange over loopback: subscription and
//! acknowledgements, book sync from the snapshot a subscription brings, tickers and trades,
//! instruments-info into the registry, and the faults (dropped connection, skipped update id,
//! garbage frame, stall, a refused topic). Time is tokio's paused clock, so backoff,
//! staleness, pings and pacing cost no wall time.
//!
//! The fixture (`fixtures/bybit_linear_btcusdt.txt`) is hand-made in the shapes of Bybit's
//! v5 WebSocket documentation: a subscription ack, an `orderbook.50.BTCUSDT` snapshot at
//! `u` 1000, 30 deltas (`u` 1001..1030, one per 100 ms), 10 `tickers` messages (a snapshot,
//! then deltas), 10 `publicTrade` messages and a pong. Its final book: best bid
//! 59999.50 × 0.250, best ask 60000.50 × 1.200, 4 bids and 5 asks, last `u` 1030.

use sapphire_core::book::OrderBook;
use sapphire_core::event::{Event, Side};
use sapphire_core::fixed::{Money, Price, Quantity};
use sapphire_core::instrument::InstrumentRegistry;
use sapphire_core::ring::{ring, Consumer, Poll};
use sapphire_gateway::bybit::instruments::{instruments_url, parse_instruments_info, register, venue_of};
use sapphire_gateway::bybit::{BybitCategory, BybitFeed};
use sapphire_gateway::connection::bybit::ConnectionOutcome;
use sapphire_gateway::connection::{http, BybitConnection, BybitConnectionConfig, ConnectionError, Shutdown};
use sapphire_gateway::feed::FeedCounters;
use sapphire_gateway::local_exchange::tape::Tape;
use sapphire_gateway::local_exchange::{ExchangeStats, Faults, LocalExchange, LocalExchangeConfig, Pace};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bybit_linear_btcusdt.txt");
const FINAL_U: u64 = 1030;

fn px(s: &str) -> Price {
    Price::parse_bytes(s.as_bytes()).unwrap()
}

fn qty(s: &str) -> Quantity {
    Quantity::parse_unsigned_bytes(s.as_bytes()).unwrap()
}

async fn exchange(pace: Pace, faults: Faults) -> LocalExchange {
    let mut cfg = LocalExchangeConfig::new(sapphire_gateway::binance::BinanceMarket::Spot, pace);
    cfg.faults = faults;
    cfg.ping_interval = Duration::from_secs(1);
    cfg.pong_timeout = Duration::from_secs(3);
    LocalExchange::start(cfg, Tape::load(&[FIXTURE]).unwrap()).await.unwrap()
}

/// The exchange, the client on its own task, and the engine's side of the ring.
struct Rig {
    exchange: LocalExchange,
    stats: watch::Receiver<ExchangeStats>,
    counters: watch::Receiver<FeedCounters>,
    consumer: Consumer<Event>,
    book: OrderBook,
    quotes: u64,
    trades: u64,
    stop: broadcast::Sender<()>,
    client: tokio::task::JoinHandle<ConnectionOutcome>,
}

fn client_config(exchange: &LocalExchange) -> BybitConnectionConfig {
    let mut config = BybitConnectionConfig::new(exchange.ws_url(), exchange.rest_url(), BybitCategory::Linear, &["BTCUSDT"]);
    config.ping_interval = Duration::from_secs(1);
    config.stale_after = Duration::from_secs(3);
    config.ack_timeout = Duration::from_secs(2);
    config.snapshot_timeout = Duration::from_secs(2);
    config.backoff_initial = Duration::from_millis(100);
    config.backoff_max = Duration::from_secs(1);
    config.connect_timeout = Duration::from_secs(1);
    config
}

async fn rig(pace: Pace, faults: Faults, tweak: impl FnOnce(&mut BybitConnectionConfig)) -> Rig {
    let exchange = exchange(pace, faults).await;
    let mut config = client_config(&exchange);
    tweak(&mut config);
    let feed = BybitFeed::new(BybitCategory::Linear, &InstrumentRegistry::new(), "bybit-linear");
    let connection = BybitConnection::new(config, feed);
    let counters = connection.counters();
    let (mut producer, mut consumers) = ring::<Event>(1_024, 1);
    let (stop, stop_rx) = broadcast::channel(1);
    let client = tokio::spawn(async move { connection.run(&mut producer, Shutdown::new(stop_rx)).await });
    Rig {
        stats: exchange.stats(),
        exchange,
        counters,
        consumer: consumers.remove(0),
        book: OrderBook::default(),
        quotes: 0,
        trades: 0,
        stop,
        client,
    }
}

impl Rig {
    fn drain(&mut self) {
        let (book, quotes, trades) = (&mut self.book, &mut self.quotes, &mut self.trades);
        while let Poll::Handled(_) = self.consumer.poll(1_024, |e, _, _| match e {
            Event::BookDelta(d) => {
                book.apply_delta(d);
            }
            Event::Quote(_) => *quotes += 1,
            Event::Trade(_) => *trades += 1,
            _ => {}
        }) {}
    }

    /// Waits (in paused time) until the tape is played and the client's book has caught up.
    async fn until_synced_to_the_end(&mut self) {
        for _ in 0..100_000 {
            self.drain();
            if self.stats.borrow().finished && self.book.in_sync() && self.book.last_update_id() == FINAL_U {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!(
            "never synced: book at {} in_sync {}, exchange {:?}, counters {:?}",
            self.book.last_update_id(),
            self.book.in_sync(),
            *self.stats.borrow(),
            *self.counters.borrow()
        );
    }

    /// The client's book equals the exchange's, level for level.
    fn assert_book_matches_exchange(&self) {
        let snapshot = self.exchange.bybit_snapshot("BTCUSDT", 1_000).unwrap();
        let mut expected = OrderBook::default();
        let mut feed = BybitFeed::new(BybitCategory::Linear, &InstrumentRegistry::new(), "bybit-linear");
        feed.ensure_symbol("BTCUSDT");
        feed.on_frame(0, snapshot.as_bytes(), &mut |e| {
            if let Event::BookDelta(d) = e {
                expected.apply_delta(&d);
            }
        });
        assert_eq!(expected.last_update_id(), FINAL_U, "{snapshot}");
        for side in [Side::Buy, Side::Sell] {
            let got: Vec<_> = self.book.levels(side).map(|l| (l.price, l.qty)).collect();
            let want: Vec<_> = expected.levels(side).map(|l| (l.price, l.qty)).collect();
            assert_eq!(got, want, "{side:?} levels differ from the exchange");
        }
    }

    /// Stops the client and the exchange; returns the client's final counters.
    async fn finish(self) -> (FeedCounters, OrderBook) {
        self.stop.send(()).unwrap();
        let outcome = self.client.await.unwrap();
        assert_eq!(outcome.result, Ok(()));
        self.exchange.shutdown().await;
        (outcome.feed.counters, self.book)
    }
}

fn assert_final_top(book: &OrderBook) {
    let (bid, ask) = (book.best_bid().unwrap(), book.best_ask().unwrap());
    assert_eq!((bid.price, bid.qty), (px("59999.50"), qty("0.250")));
    assert_eq!((ask.price, ask.qty), (px("60000.50"), qty("1.200")));
    assert_eq!((book.depth(Side::Buy), book.depth(Side::Sell)), (4, 5));
}

#[tokio::test(start_paused = true)]
async fn book_syncs_from_the_subscription_snapshot_with_tickers_and_trades() {
    let mut rig = rig(Pace::Fast, Faults::default(), |_| {}).await;
    rig.until_synced_to_the_end().await;
    rig.assert_book_matches_exchange();
    let (quotes, trades) = (rig.quotes, rig.trades);
    let (c, book) = rig.finish().await;
    assert_final_top(&book);
    assert_eq!((quotes, trades), (10, 10), "every ticker and trade reached the ring");
    assert_eq!((c.snapshots, c.snapshot_requests, c.gaps, c.reconnects, c.skipped(), c.stale), (1, 0, 0, 0, 0, 0), "{c:?}");
    // 51 stream frames, the subscription's acknowledgement, and any pongs.
    assert!(c.frames >= 52 && c.ignored == c.frames - 51, "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn pings_keep_a_quiet_connection_alive() {
    // Recorded pace: 3 s of tape. The exchange drops clients silent for 3 s and the client
    // calls a feed stale after 3 s without a message: only the pings and pongs keep both sides happy
    // through a 10 s wait after the tape ends.
    let mut rig = rig(Pace::Recorded, Faults::default(), |_| {}).await;
    rig.until_synced_to_the_end().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(rig.stats.borrow().pings >= 10, "{:?}", *rig.stats.borrow());
    assert_eq!(rig.stats.borrow().connections, 1);
    let (c, book) = rig.finish().await;
    assert_final_top(&book);
    assert_eq!((c.reconnects, c.stale_reconnects, c.gaps), (0, 0, 0), "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn dropped_connection_reconnects_and_resubscribes() {
    let faults = Faults { drop_after: Some(20), ..Faults::default() };
    let mut rig = rig(Pace::Recorded, faults, |_| {}).await;
    rig.until_synced_to_the_end().await;
    rig.assert_book_matches_exchange();
    assert_eq!(rig.stats.borrow().connections, 2);
    let (c, book) = rig.finish().await;
    assert_final_top(&book);
    // The second subscription's snapshot comes from the exchange's own book.
    assert_eq!((c.reconnects, c.stale_reconnects, c.snapshots, c.gaps, c.skipped()), (1, 0, 2, 0, 0), "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn skipped_update_id_is_a_gap_and_resubscribes_the_book() {
    let faults = Faults { skip_depth_update: Some(10), ..Faults::default() };
    let mut rig = rig(Pace::Recorded, faults, |_| {}).await;
    rig.until_synced_to_the_end().await;
    rig.assert_book_matches_exchange();
    assert_eq!(rig.stats.borrow().connections, 1, "a resync is not a reconnect");
    let (c, book) = rig.finish().await;
    assert_final_top(&book);
    assert_eq!((c.gaps, c.snapshot_requests, c.snapshots, c.reconnects, c.skipped()), (1, 1, 2, 0, 0), "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn garbage_frame_is_counted_and_skipped() {
    let faults = Faults { garbage_after: Some(15), ..Faults::default() };
    let mut rig = rig(Pace::Recorded, faults, |_| {}).await;
    rig.until_synced_to_the_end().await;
    let (c, book) = rig.finish().await;
    assert_final_top(&book);
    assert_eq!((c.malformed_json, c.skipped(), c.gaps, c.reconnects), (1, 1, 0, 0), "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn stalled_feed_is_stale_and_reconnects() {
    // Silent for 10 s (no frames, no pongs); the client gives up after 3 s.
    let faults = Faults { stall_after: Some((25, Duration::from_secs(10))), ..Faults::default() };
    let mut rig = rig(Pace::Recorded, faults, |_| {}).await;
    rig.until_synced_to_the_end().await;
    rig.assert_book_matches_exchange();
    let (c, book) = rig.finish().await;
    assert_final_top(&book);
    assert_eq!((c.stale_reconnects, c.reconnects, c.snapshots, c.gaps), (1, 1, 2, 0), "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn a_refused_topic_is_a_terminal_error() {
    let exchange = exchange(Pace::Fast, Faults::default()).await;
    let mut config = client_config(&exchange);
    config.channels = vec!["orderbook.40".into()];
    let feed = BybitFeed::new(BybitCategory::Linear, &InstrumentRegistry::new(), "bybit-linear");
    let (mut producer, _consumers) = ring::<Event>(64, 1);
    let (_stop, stop_rx) = broadcast::channel(1);
    let outcome = BybitConnection::new(config, feed).run(&mut producer, Shutdown::new(stop_rx)).await;
    let err = outcome.result.unwrap_err();
    assert!(err.is_terminal(), "{err}");
    assert!(matches!(&err, ConnectionError::Refused { reason, .. } if reason.contains("orderbook.40.BTCUSDT")), "{err}");
    exchange.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_book_whose_snapshot_never_comes_reconnects() {
    // A tape with trades but no book for ETHUSDT: the subscription is acknowledged, no
    // snapshot ever follows, and after the snapshot timeout the client reconnects.
    let mut tape = Tape::default();
    let trade = r#"{"topic":"publicTrade.ETHUSDT","type":"snapshot","ts":1723161600000,"data":[{"T":1723161600000,"s":"ETHUSDT","S":"Buy","v":"0.5","p":"2500.10","L":"PlusTick","i":"1","BT":false}]}"#;
    tape.add_text("t", &format!("1723161600000000000 {trade}")).unwrap();
    let mut cfg = LocalExchangeConfig::new(sapphire_gateway::binance::BinanceMarket::Spot, Pace::Fast);
    cfg.pong_timeout = Duration::from_secs(3);
    let exchange = LocalExchange::start(cfg, tape).await.unwrap();
    let mut config = client_config(&exchange);
    config.symbols = vec!["ETHUSDT".into()];
    let feed = BybitFeed::new(BybitCategory::Linear, &InstrumentRegistry::new(), "bybit-linear");
    let (mut producer, _consumers) = ring::<Event>(1_024, 1);
    let (stop, stop_rx) = broadcast::channel(1);
    let client = tokio::spawn(async move { BybitConnection::new(config, feed).run(&mut producer, Shutdown::new(stop_rx)).await });
    // Snapshot timeout 2 s, backoff up to 1 s: at least two full rounds in 7 s.
    tokio::time::sleep(Duration::from_secs(7)).await;
    stop.send(()).unwrap();
    let outcome = client.await.unwrap();
    assert_eq!(outcome.result, Ok(()));
    let c = outcome.feed.counters;
    assert!(c.snapshot_failures >= 2 && c.reconnects == c.snapshot_failures, "{c:?}");
    assert_eq!((c.snapshots, c.gaps, c.stale_reconnects), (0, 0, 0), "{c:?}");
    exchange.shutdown().await;
}

#[tokio::test]
async fn instruments_info_registers_the_served_symbols() {
    let exchange = exchange(Pace::Fast, Faults::default()).await;
    for category in [BybitCategory::Spot, BybitCategory::Linear] {
        let body = http::get(&instruments_url(&exchange.rest_url(), category, None)).await.unwrap();
        let page = parse_instruments_info(category, &body).unwrap();
        assert_eq!(page.next_cursor, None);
        let (venue, market) = venue_of(category);
        let mut registry = InstrumentRegistry::new();
        let ids = register(&page.symbols, &["BTCUSDT".into()], 10, venue, market, &mut registry).unwrap();
        let btc = registry.get(ids[0]).unwrap();
        assert_eq!((btc.venue.as_str(), btc.symbol.as_str()), (venue, "BTCUSDT"));
        // The tape's prices use one significant decimal (60000.50), its sizes two (0.250).
        assert_eq!((btc.tick_size, btc.lot_size), (px("0.1"), qty("0.01")), "from the tape's decimals");
        let want_notional = if category == BybitCategory::Spot { Money::from_units(1) } else { Money::from_units(5) };
        assert_eq!(btc.min_notional, want_notional);
    }
    let bad = http::get(&format!("{}/v5/market/instruments-info?category=option", exchange.rest_url())).await.unwrap();
    let err = parse_instruments_info(BybitCategory::Spot, &bad).unwrap_err();
    assert!(err.to_string().contains("10001"), "{err}");
    exchange.shutdown().await;
}

/// The exchange's side of the protocol spoken with raw frames: acks, refusals, pongs, and a
/// snapshot on subscription that the next delta continues.
#[tokio::test]
async fn the_exchange_answers_operations_like_bybit() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let exchange = exchange(Pace::Fast, Faults::default()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}/v5/public/spot", exchange.ws_url())).await.unwrap();
    async fn recv(ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>) -> String {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap() {
                Message::Text(t) => return t.to_string(),
                _ => continue,
            }
        }
    }
    ws.send(Message::text(r#"{"req_id":"p1","op":"ping"}"#)).await.unwrap();
    let pong = recv(&mut ws).await;
    assert!(pong.contains(r#""success":true,"ret_msg":"pong""#) && pong.contains(r#""req_id":"p1","op":"ping""#), "{pong}");
    let eleven: Vec<String> = (0..11).map(|n| format!("\"publicTrade.S{n}USDT\"")).collect();
    ws.send(Message::text(format!(r#"{{"req_id":"s1","op":"subscribe","args":[{}]}}"#, eleven.join(",")))).await.unwrap();
    assert!(recv(&mut ws).await.contains(r#""success":false,"ret_msg":"error:args size >10""#));
    ws.send(Message::text(r#"{"req_id":"s2","op":"subscribe","args":["orderbook.50.NOPEUSDT"]}"#)).await.unwrap();
    assert!(recv(&mut ws).await.contains("handler not found,topic:orderbook.50.NOPEUSDT"));
    // The tape starts when someone subscribes: the first book frame is the tape's snapshot.
    ws.send(Message::text(r#"{"req_id":"s3","op":"subscribe","args":["orderbook.50.BTCUSDT"]}"#)).await.unwrap();
    let ack = recv(&mut ws).await;
    assert!(ack.contains(r#""success":true"#) && ack.contains(r#""req_id":"s3","op":"subscribe""#), "{ack}");
    let mut feed = BybitFeed::new(BybitCategory::Spot, &InstrumentRegistry::new(), "bybit");
    feed.ensure_symbol("BTCUSDT");
    let mut last = 0;
    while last < FINAL_U {
        let frame = recv(&mut ws).await;
        feed.on_frame(0, frame.as_bytes(), &mut |e| {
            if let Event::BookDelta(d) = e {
                last = d.last_update_id;
            }
        });
    }
    ws.send(Message::text(r#"{"req_id":"s4","op":"subscribe","args":["orderbook.50.BTCUSDT"]}"#)).await.unwrap();
    assert!(recv(&mut ws).await.contains("already subscribed"));
    // A new subscription gets the exchange's book at its current id.
    ws.send(Message::text(r#"{"req_id":"u1","op":"unsubscribe","args":["orderbook.50.BTCUSDT"]}"#)).await.unwrap();
    assert!(recv(&mut ws).await.contains(r#""req_id":"u1","op":"unsubscribe""#));
    ws.send(Message::text(r#"{"req_id":"s5","op":"subscribe","args":["orderbook.1.BTCUSDT"]}"#)).await.unwrap();
    assert!(recv(&mut ws).await.contains(r#""ret_msg":"subscribe""#), "spot acks say subscribe");
    let snapshot = recv(&mut ws).await;
    assert!(
        snapshot.starts_with(r#"{"topic":"orderbook.1.BTCUSDT","type":"snapshot""#)
            && snapshot.contains(r#""b":[["59999.50","0.250"]],"a":[["60000.50","1.200"]],"u":1030"#),
        "{snapshot}"
    );
    assert_eq!((feed.counters.gaps, feed.counters.skipped()), (0, 0), "{:?}", feed.counters);
    exchange.shutdown().await;
}
