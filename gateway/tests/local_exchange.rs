//! The real Binance feed client against the local exchange over loopback: book sync from
//! the REST snapshot, the SUBSCRIBE protocol, and the faults (dropped connection, skipped
//! update id, garbage frame, stall, connection age limit). Time is tokio's paused clock, so
//! backoff, staleness and pacing cost no wall time.
//!
//! The fixture (`fixtures/binance_spot_btcusdt.txt`) is hand-made in the format of Binance's
//! documentation: 30 spot `depthUpdate`s (U/u in steps of 2 from 1001), a REST snapshot
//! line at `lastUpdateId` 1004 after the third, 30 `bookTicker`s and 10 `trade`s. Its final
//! book: best bid 59999.50 × 0.250, best ask 60000.50 × 1.200, 9 levels a side, last id 1060.

use sapphire_core::book::OrderBook;
use sapphire_core::event::{Event, Side};
use sapphire_core::fixed::{Price, Quantity};
use sapphire_core::instrument::InstrumentRegistry;
use sapphire_core::ring::{ring, Consumer, Poll};
use sapphire_gateway::binance::{BinanceFeed, BinanceMarket};
use sapphire_gateway::connection::binance::ConnectionOutcome;
use sapphire_gateway::connection::{http, BinanceConnection, BinanceConnectionConfig, ConnectionError, Shutdown, SubscribeMode};
use sapphire_gateway::feed::FeedCounters;
use sapphire_gateway::local_exchange::tape::Tape;
use sapphire_gateway::local_exchange::{ExchangeStats, Faults, LocalExchange, LocalExchangeConfig, Pace};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/binance_spot_btcusdt.txt");
const FINAL_ID: u64 = 1060;

fn px(s: &str) -> Price {
    Price::parse_bytes(s.as_bytes()).unwrap()
}

fn qty(s: &str) -> Quantity {
    Quantity::parse_unsigned_bytes(s.as_bytes()).unwrap()
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

async fn rig(pace: Pace, faults: Faults, tweak: impl FnOnce(&mut BinanceConnectionConfig)) -> Rig {
    let mut cfg = LocalExchangeConfig::new(BinanceMarket::Spot, pace);
    cfg.faults = faults;
    cfg.ping_interval = Duration::from_secs(1);
    cfg.pong_timeout = Duration::from_secs(3);
    let exchange = LocalExchange::start(cfg, Tape::load(&[FIXTURE]).unwrap()).await.unwrap();
    let mut config = BinanceConnectionConfig::new(exchange.ws_url(), exchange.rest_url(), BinanceMarket::Spot, &["BTCUSDT"]);
    config.stale_after = Duration::from_secs(3);
    config.backoff_initial = Duration::from_millis(100);
    config.backoff_max = Duration::from_secs(1);
    config.connect_timeout = Duration::from_secs(1);
    config.snapshot_timeout = Duration::from_secs(1);
    config.snapshot_retry = Duration::from_millis(50);
    tweak(&mut config);
    let feed = BinanceFeed::new(BinanceMarket::Spot, &InstrumentRegistry::new(), "binance");
    let connection = BinanceConnection::new(config, feed);
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
            if self.stats.borrow().finished && self.book.in_sync() && self.book.last_update_id() == FINAL_ID {
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

    /// Stops the client and the exchange; returns the client's final counters.
    async fn finish(self) -> (FeedCounters, OrderBook) {
        self.stop.send(()).unwrap();
        let outcome = self.client.await.unwrap();
        assert_eq!(outcome.result, Ok(()));
        self.exchange.shutdown().await;
        (outcome.feed.counters, self.book)
    }

    /// The client's book equals the exchange's, level for level.
    fn assert_book_matches_exchange(&self) {
        let snapshot = self.exchange.snapshot("BTCUSDT", 1_000).unwrap();
        let mut expected = OrderBook::default();
        let mut feed = BinanceFeed::new(BinanceMarket::Spot, &InstrumentRegistry::new(), "binance");
        let id = feed.ensure_symbol("BTCUSDT");
        feed.on_snapshot(Some(id), 0, snapshot.as_bytes(), &mut |e| {
            if let Event::BookDelta(d) = e {
                expected.apply_delta(&d);
            }
        });
        for side in [Side::Buy, Side::Sell] {
            let got: Vec<_> = self.book.levels(side).map(|l| (l.price, l.qty)).collect();
            let want: Vec<_> = expected.levels(side).map(|l| (l.price, l.qty)).collect();
            assert_eq!(got, want, "{side:?} levels differ from the exchange");
        }
    }
}

fn assert_final_top(book: &OrderBook) {
    let (bid, ask) = (book.best_bid().unwrap(), book.best_ask().unwrap());
    assert_eq!((bid.price, bid.qty), (px("59999.50"), qty("0.250")));
    assert_eq!((ask.price, ask.qty), (px("60000.50"), qty("1.200")));
    assert_eq!((book.depth(Side::Buy), book.depth(Side::Sell)), (9, 9));
}

#[tokio::test(start_paused = true)]
async fn book_syncs_from_the_rest_snapshot_and_matches_the_top() {
    let mut rig = rig(Pace::Fast, Faults::default(), |_| {}).await;
    rig.until_synced_to_the_end().await;
    rig.assert_book_matches_exchange();
    let (quotes, trades) = (rig.quotes, rig.trades);
    let (c, book) = rig.finish().await;
    assert_final_top(&book);
    assert_eq!((quotes, trades), (30, 10), "every bookTicker and trade reached the ring");
    assert_eq!((c.snapshots, c.snapshot_requests, c.gaps, c.reconnects, c.skipped()), (1, 1, 0, 0, 0), "{c:?}");
    assert_eq!(c.frames, 71, "70 stream frames and one snapshot");
}

#[tokio::test(start_paused = true)]
async fn subscribe_message_protocol_gets_the_same_book() {
    let mut rig = rig(Pace::Fast, Faults::default(), |c| c.subscribe = SubscribeMode::Message).await;
    rig.until_synced_to_the_end().await;
    let (c, book) = rig.finish().await;
    assert_final_top(&book);
    assert_eq!(c.ignored, 1, "the SUBSCRIBE acknowledgement");
    assert_eq!((c.gaps, c.reconnects, c.skipped()), (0, 0, 0), "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn dropped_connection_reconnects_and_resyncs() {
    let faults = Faults { drop_after: Some(20), ..Faults::default() };
    let mut rig = rig(Pace::Recorded, faults, |_| {}).await;
    rig.until_synced_to_the_end().await;
    rig.assert_book_matches_exchange();
    assert_eq!(rig.stats.borrow().connections, 2);
    let (c, book) = rig.finish().await;
    assert_final_top(&book);
    assert_eq!((c.reconnects, c.stale_reconnects, c.snapshots, c.skipped()), (1, 0, 2, 0), "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn skipped_update_id_is_a_gap_and_resyncs() {
    let faults = Faults { skip_depth_update: Some(10), ..Faults::default() };
    let mut rig = rig(Pace::Recorded, faults, |_| {}).await;
    rig.until_synced_to_the_end().await;
    rig.assert_book_matches_exchange();
    let (c, book) = rig.finish().await;
    assert_final_top(&book);
    assert_eq!((c.gaps, c.snapshots, c.reconnects, c.skipped()), (1, 2, 0, 0), "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn reordered_depth_updates_are_a_gap_and_resync() {
    // The 10th update arrives after the 11th: the 11th breaks continuity (a gap, a fresh
    // snapshot), the 10th is then older than the book and dropped.
    let faults = Faults { swap_depth_update: Some(10), ..Faults::default() };
    let mut rig = rig(Pace::Recorded, faults, |_| {}).await;
    rig.until_synced_to_the_end().await;
    rig.assert_book_matches_exchange();
    let (c, book) = rig.finish().await;
    assert_final_top(&book);
    assert_eq!((c.gaps, c.snapshots, c.reconnects, c.skipped()), (1, 2, 0, 0), "{c:?}");
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
    // Silent for 10 s (no frames, no pings); the client gives up after 3 s.
    let faults = Faults { stall_after: Some((25, Duration::from_secs(10))), ..Faults::default() };
    let mut rig = rig(Pace::Recorded, faults, |_| {}).await;
    rig.until_synced_to_the_end().await;
    rig.assert_book_matches_exchange();
    let (c, book) = rig.finish().await;
    assert_final_top(&book);
    assert_eq!((c.stale_reconnects, c.reconnects, c.snapshots, c.gaps), (1, 1, 2, 0), "{c:?}");
    assert!(c.pings > 0, "server pings answered: {c:?}");
}

#[tokio::test(start_paused = true)]
async fn planned_reconnect_before_the_connection_age_limit() {
    // The tape spans 2.9 s at its recorded pace; connections are retired every second.
    let mut rig = rig(Pace::Recorded, Faults::default(), |c| c.max_connection_age = Duration::from_secs(1)).await;
    rig.until_synced_to_the_end().await;
    rig.assert_book_matches_exchange();
    let (c, book) = rig.finish().await;
    assert_final_top(&book);
    assert!(c.planned_reconnects >= 2, "{c:?}");
    assert_eq!((c.reconnects, c.stale_reconnects, c.gaps, c.skipped()), (c.planned_reconnects, 0, 0, 0), "{c:?}");
    assert_eq!(c.snapshots, c.planned_reconnects + 1, "a fresh snapshot per connection: {c:?}");
}

#[tokio::test(start_paused = true)]
async fn unreachable_exchange_backs_off_and_counts_failures() {
    let exchange = LocalExchange::start(LocalExchangeConfig::new(BinanceMarket::Spot, Pace::Fast), Tape::default()).await.unwrap();
    let addr = exchange.addr();
    exchange.shutdown().await;
    let mut config = BinanceConnectionConfig::new(format!("ws://{addr}"), format!("http://{addr}"), BinanceMarket::Spot, &["BTCUSDT"]);
    config.backoff_initial = Duration::from_millis(100);
    config.backoff_max = Duration::from_millis(800);
    let feed = BinanceFeed::new(BinanceMarket::Spot, &InstrumentRegistry::new(), "binance");
    let (mut producer, _consumers) = ring::<Event>(64, 1);
    let (stop, stop_rx) = broadcast::channel(1);
    let client = tokio::spawn(async move { BinanceConnection::new(config, feed).run(&mut producer, Shutdown::new(stop_rx)).await });
    // Delays 50-100, 100-200, 200-400, 400-800, then 400-800 ms: 5 s holds at least 7 attempts.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.send(()).unwrap();
    let c = client.await.unwrap().feed.counters;
    assert!(c.connect_failures >= 7 && c.connect_failures <= 14, "{c:?}");
    assert_eq!(c.reconnects, c.connect_failures);
}

#[tokio::test]
async fn a_url_that_cannot_work_is_a_terminal_error_not_a_retry_loop() {
    // (TLS endpoints work: see tests/tls.rs.)
    let config = BinanceConnectionConfig::new("ftp://127.0.0.1:1", "http://127.0.0.1:1", BinanceMarket::Spot, &["BTCUSDT"]);
    let feed = BinanceFeed::new(BinanceMarket::Spot, &InstrumentRegistry::new(), "binance");
    let (mut producer, _consumers) = ring::<Event>(64, 1);
    let (_stop, stop_rx) = broadcast::channel(1);
    let outcome = BinanceConnection::new(config, feed).run(&mut producer, Shutdown::new(stop_rx)).await;
    assert!(outcome.result.unwrap_err().is_terminal());
}

#[tokio::test]
async fn rest_endpoints_answer_like_binance() {
    let exchange =
        LocalExchange::start(LocalExchangeConfig::new(BinanceMarket::Spot, Pace::Fast), Tape::load(&[FIXTURE]).unwrap()).await.unwrap();
    let base = exchange.rest_url();
    let depth = String::from_utf8(http::get(&format!("{base}/api/v3/depth?symbol=BTCUSDT&limit=2")).await.unwrap()).unwrap();
    assert_eq!(
        depth,
        r#"{"lastUpdateId":1004,"bids":[["60000.00","1.000"],["59999.50","1.000"]],"asks":[["60000.50","1.000"],["60001.00","1.000"]]}"#
    );
    let info = String::from_utf8(http::get(&format!("{base}/api/v3/exchangeInfo")).await.unwrap()).unwrap();
    assert!(info.contains(r#""symbol":"BTCUSDT","status":"TRADING","baseAsset":"BTC","quoteAsset":"USDT""#), "{info}");
    assert!(info.contains(r#""tickSize":"0.1""#) && info.contains(r#""stepSize":"0.01""#), "{info}");
    let err = http::get(&format!("{base}/api/v3/depth?symbol=NOPE")).await.unwrap_err();
    assert!(matches!(err, sapphire_gateway::connection::ConnectionError::HttpStatus { status: 400, .. }), "{err}");
    exchange.shutdown().await;
}

/// `n` depth updates for BTCUSDT, 10 ms apart; `usdm` frames carry `pu` and `T`. With `gap`,
/// every update skips an id (spot `U` = previous `u` + 2): a feed that never stays in sequence.
fn depth_tape(n: u64, usdm: bool, gap: bool) -> Tape {
    let mut text = String::new();
    let (mut prev, step) = (1_000u64, if gap { 2 } else { 1 });
    for k in 0..n {
        let (u0, u1) = (prev + step, prev + step + 1);
        let ms = 1_723_161_600_000 + 10 * k;
        let extra = if usdm { format!(r#","T":{ms},"pu":{prev}"#) } else { String::new() };
        text.push_str(&format!(
            "{} {{\"stream\":\"btcusdt@depth@100ms\",\"data\":{{\"e\":\"depthUpdate\",\"E\":{ms}{extra},\"s\":\"BTCUSDT\",\"U\":{u0},\"u\":{u1},\"b\":[[\"60000.00\",\"1.{k:03}\"]],\"a\":[[\"60000.50\",\"1.000\"]]}}}}\n",
            ms * 1_000_000
        ));
        prev = u1;
    }
    let mut tape = Tape::default();
    tape.add_text("depth_tape", &text).unwrap();
    tape
}

/// A client configured for `client` reading `tape` served as `served`, with `max_snapshots`
/// per minute; returns the exchange, the client's counters, the ring's consumer and its task.
async fn client_for(
    served: BinanceMarket,
    tape: Tape,
    client: BinanceMarket,
    max_snapshots: u32,
) -> (LocalExchange, watch::Receiver<FeedCounters>, Consumer<Event>, broadcast::Sender<()>, tokio::task::JoinHandle<ConnectionOutcome>) {
    let mut cfg = LocalExchangeConfig::new(served, Pace::Recorded);
    cfg.ping_interval = Duration::from_secs(1);
    let exchange = LocalExchange::start(cfg, tape).await.unwrap();
    let mut config = BinanceConnectionConfig::new(exchange.ws_url(), exchange.rest_url(), client, &["BTCUSDT"]);
    config.stale_after = Duration::from_secs(3);
    config.snapshot_retry = Duration::from_millis(50);
    config.max_snapshots_per_window = max_snapshots;
    let venue = if client == BinanceMarket::Spot { "binance" } else { "binance-usdm" };
    let connection = BinanceConnection::new(config, BinanceFeed::new(client, &InstrumentRegistry::new(), venue));
    let counters = connection.counters();
    let (mut producer, mut consumers) = ring::<Event>(1 << 16, 1);
    let (stop, stop_rx) = broadcast::channel(1);
    let task = tokio::spawn(async move { connection.run(&mut producer, Shutdown::new(stop_rx)).await });
    (exchange, counters, consumers.remove(0), stop, task)
}

#[tokio::test(start_paused = true)]
async fn a_usdm_feed_read_by_a_spot_client_stops_naming_venue_market() {
    // (served, tape, configured, what the error must say)
    let cases = [
        (
            BinanceMarket::UsdM,
            depth_tape(50, true, false),
            BinanceMarket::Spot,
            ["venue_market is \"spot\"", "`pu`", "venue_market = \"usdm\""],
        ),
        (
            BinanceMarket::Spot,
            Tape::load(&[FIXTURE]).unwrap(),
            BinanceMarket::UsdM,
            ["venue_market is \"usdm\"", "spot", "venue_market = \"spot\""],
        ),
    ];
    for (served, tape, configured, says) in cases {
        let (exchange, _counters, _consumer, _stop, task) = client_for(served, tape, configured, 6).await;
        // It stops on its own, at the first depth frame: no resync loop, no snapshot asked for.
        let outcome = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap_or_else(|_| panic!("{configured:?}: the client kept running on frames of the other market"))
            .unwrap();
        let err = outcome.result.expect_err("a terminal error");
        assert!(err.is_terminal() && matches!(err, ConnectionError::WrongMarket(_)), "{err:?}");
        let text = err.to_string();
        for s in says {
            assert!(text.contains(s), "{configured:?}: {s:?} not in {text}");
        }
        let c = outcome.feed.counters;
        assert_eq!((c.wrong_market, c.gaps, c.snapshot_requests, c.reconnects), (1, 0, 0, 0), "{c:?}");
        assert_eq!(exchange.stats().borrow().rest_requests, 0);
        exchange.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_feed_that_keeps_breaking_sequence_stops_asking_for_snapshots_at_the_cap() {
    // 200 updates over 2 s, each one a gap: uncapped, that is a snapshot request per frame.
    let (exchange, counters, mut consumer, stop, task) =
        client_for(BinanceMarket::Spot, depth_tape(200, false, true), BinanceMarket::Spot, 3).await;
    let stats = exchange.stats();
    let mut book = OrderBook::default();
    let mut drain = |book: &mut OrderBook| {
        while let Poll::Handled(_) = consumer.poll(1_024, |e, _, _| {
            if let Event::BookDelta(d) = e {
                book.apply_delta(d);
            }
        }) {}
    };
    while !stats.borrow().finished {
        tokio::time::sleep(Duration::from_millis(10)).await;
        drain(&mut book);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drain(&mut book);
    let c = *counters.borrow();
    assert_eq!((c.snapshot_requests, c.snapshots_capped, c.reconnects), (3, 1, 0), "{c:?}");
    assert!(c.gaps >= 3, "{c:?}");
    assert_eq!(stats.borrow().rest_requests, 3, "the exchange saw exactly the cap");
    assert!(!book.in_sync(), "the book stays out of sync while the cap holds");
    // After the window the held request goes, once.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let c = *counters.borrow();
    assert_eq!((c.snapshot_requests, c.snapshots_capped), (4, 1), "{c:?}");
    assert_eq!(stats.borrow().rest_requests, 4);
    stop.send(()).unwrap();
    assert_eq!(task.await.unwrap().result, Ok(()));
    exchange.shutdown().await;
}
