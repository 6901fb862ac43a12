//! Table tests over frames written from the shapes in Bybit's v5 WebSocket documentation.

use super::*;
use sapphire_core::book::OrderBook;
use sapphire_core::event::{Side, DELTA_CLEAR, DELTA_LAST, DELTA_RESYNC, DELTA_SNAPSHOT};
use sapphire_core::fixed::Money;
use sapphire_core::instrument::{InstrumentSpec, MarketType};

const BTC: InstrumentId = InstrumentId(0);
const ETH: InstrumentId = InstrumentId(1);

const BOOK_SNAPSHOT: &str = r#"{"topic":"orderbook.50.BTCUSDT","type":"snapshot","ts":1700000000100,"data":{"s":"BTCUSDT","b":[["30000.50","1.250"],["30000.00","0.500"]],"a":[["30001.00","2.000"],["30001.50","0.010"]],"u":1000,"seq":55000000001},"cts":1700000000098}"#;
const BOOK_DELTA: &str = r#"{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1700000000120,"data":{"s":"BTCUSDT","b":[["30000.50","0"],["30000.25","3.5"]],"a":[],"u":1001,"seq":55000000007},"cts":1700000000119}"#;
const TRADES: &str = r#"{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1700000000200,"data":[{"T":1700000000197,"s":"BTCUSDT","S":"Buy","v":"0.004","p":"30001.00","L":"PlusTick","i":"2290000000061666327","BT":false},{"T":1700000000198,"s":"BTCUSDT","S":"Sell","v":"1.5","p":"30000.5","L":"MinusTick","i":"5d3c9a0e-1f2b-5c6d-8e9f-0a1b2c3d4e5f","BT":false,"seq":123}]}"#;
const TICKER_SNAPSHOT: &str = r#"{"topic":"tickers.BTCUSDT","type":"snapshot","data":{"symbol":"BTCUSDT","tickDirection":"PlusTick","lastPrice":"30001.00","markPrice":"30000.80","fundingRate":"0.0001","bid1Price":"30000.50","bid1Size":"1.250","ask1Price":"30001.00","ask1Size":"2.000"},"cs":4200000001,"ts":1700000000300}"#;
const TICKER_DELTA: &str = r#"{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT","ask1Price":"30001.50","ask1Size":"0.010"},"cs":4200000002,"ts":1700000000400}"#;
const TICKER_DELTA_NO_QUOTE: &str =
    r#"{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT","markPrice":"30000.90"},"cs":4200000003,"ts":1700000000500}"#;
const SPOT_TICKER: &str = r#"{"topic":"tickers.ETHUSDT","ts":1700000000600,"type":"snapshot","cs":9100000001,"data":{"symbol":"ETHUSDT","lastPrice":"2000.5","highPrice24h":"2050","lowPrice24h":"1950.25","prevPrice24h":"1990","volume24h":"1234.5","turnover24h":"2468000.1","price24hPcnt":"0.0053","usdIndexPrice":"2000.4"}}"#;
const SUBSCRIBE_ACK: &str = r#"{"success":true,"ret_msg":"","conn_id":"c0ffee-1","req_id":"sub-1","op":"subscribe"}"#;
const SUBSCRIBE_FAILED: &str = r#"{"success":false,"ret_msg":"Invalid topic","conn_id":"c0ffee-1","op":"subscribe"}"#;
const LINEAR_PONG: &str = r#"{"success":true,"ret_msg":"pong","conn_id":"c0ffee-1","req_id":"","op":"ping"}"#;
const SPOT_PONG: &str = r#"{"req_id":"hb-7","op":"pong","args":["1700000000700"],"conn_id":"c0ffee-2"}"#;
const PING: &str = r#"{"req_id":"hb-8","op":"ping"}"#;
const KLINE: &str = r#"{"topic":"kline.5.BTCUSDT","type":"snapshot","ts":1700000000800,"data":[{"start":1700000000000,"end":1700000299999,"interval":"5","open":"30000","close":"30001","confirm":false}]}"#;

fn registry() -> InstrumentRegistry {
    let mut reg = InstrumentRegistry::new();
    for symbol in ["BTCUSDT", "ETHUSDT"] {
        reg.intern(InstrumentSpec {
            venue: "bybit",
            symbol,
            market: MarketType::LinearPerpetual,
            tick_size: Price::parse("0.01").unwrap(),
            lot_size: Quantity::parse("0.001").unwrap(),
            min_notional: Money::from_units(5),
        })
        .unwrap();
    }
    reg
}

fn feed() -> BybitFeed {
    BybitFeed::new(BybitCategory::Linear, &registry(), "bybit")
}

fn run(feed: &mut BybitFeed, frame: &str) -> (FrameOutcome, Vec<Event>) {
    let mut out = Vec::new();
    let o = feed.on_frame(7, frame.as_bytes(), &mut |e| out.push(e));
    (o, out)
}

fn px(s: &str) -> Price {
    Price::parse(s).unwrap()
}

fn q(s: &str) -> Quantity {
    Quantity::parse(s).unwrap()
}

/// (side, price, qty, flags, first, last, prev) of each emitted delta.
fn deltas(events: &[Event]) -> Vec<(Side, Price, Quantity, u8, u64, u64, u64)> {
    events
        .iter()
        .map(|e| {
            let Event::BookDelta(d) = e else { panic!("not a delta: {e:?}") };
            (d.side, d.price, d.qty, d.flags, d.first_update_id, d.last_update_id, d.prev_update_id)
        })
        .collect()
}

/// Applies emitted deltas to a core book, as the engine would.
fn apply(book: &mut OrderBook, events: &[Event]) {
    for e in events {
        if let Event::BookDelta(d) = e {
            book.apply_delta(d);
        }
    }
}

fn book_frame(kind: &str, u: u64, bid: (&str, &str)) -> String {
    format!(
        r#"{{"topic":"orderbook.50.BTCUSDT","type":"{kind}","ts":1700000001000,"data":{{"s":"BTCUSDT","b":[["{}","{}"]],"a":[["30010.00","1"]],"u":{u},"seq":{}}},"cts":1700000000999}}"#,
        bid.0,
        bid.1,
        u * 7
    )
}

#[test]
fn parses_every_documented_kind() {
    let mut feed = feed();
    const SNAP: u8 = DELTA_SNAPSHOT;
    let book_snapshot = vec![
        (Side::Buy, px("30000.5"), q("1.25"), SNAP | DELTA_CLEAR, 1000, 1000, 0),
        (Side::Buy, px("30000"), q("0.5"), SNAP, 1000, 1000, 0),
        (Side::Sell, px("30001"), q("2"), SNAP, 1000, 1000, 0),
        (Side::Sell, px("30001.5"), q("0.01"), SNAP | DELTA_LAST, 1000, 1000, 0),
    ];
    let book_delta = vec![
        (Side::Buy, px("30000.5"), Quantity::ZERO, 0, 1001, 1001, 1000),
        (Side::Buy, px("30000.25"), q("3.5"), DELTA_LAST, 1001, 1001, 1000),
    ];
    // (frame, the deltas it emits)
    let books = [(BOOK_SNAPSHOT, book_snapshot), (BOOK_DELTA, book_delta)];
    for (frame, want) in books {
        let (o, ev) = run(&mut feed, frame);
        assert_eq!(o, FrameOutcome::Applied, "{frame}");
        assert_eq!(deltas(&ev), want, "{frame}");
        assert!(ev.iter().all(|e| e.ts_recv() == 7));
    }
    assert_eq!(run(&mut feed, BOOK_SNAPSHOT).1[0].ts_event(), 1_700_000_000_098_000_000, "cts, the matching-engine time");

    let (o, ev) = run(&mut feed, TRADES);
    assert_eq!(o, FrameOutcome::Applied);
    let trades: Vec<_> = ev
        .iter()
        .map(|e| {
            let Event::Trade(t) = *e else { panic!("{e:?}") };
            (t.instrument, t.aggressor, t.price, t.qty, t.trade_id, t.ts_event)
        })
        .collect();
    assert_eq!(
        trades,
        vec![
            (BTC, Side::Buy, px("30001"), q("0.004"), 2_290_000_000_061_666_327, 1_700_000_000_197_000_000),
            (
                BTC,
                Side::Sell,
                px("30000.5"),
                q("1.5"),
                market::trade_id_hash(b"5d3c9a0e-1f2b-5c6d-8e9f-0a1b2c3d4e5f"),
                1_700_000_000_198_000_000
            ),
        ]
    );

    let (o, ev) = run(&mut feed, TICKER_SNAPSHOT);
    assert_eq!(o, FrameOutcome::Applied);
    assert_eq!(
        ev,
        vec![Event::Quote(Quote {
            ts_event: 1_700_000_000_300_000_000,
            ts_recv: 7,
            instrument: BTC,
            _pad: 0,
            bid_price: px("30000.5"),
            ask_price: px("30001"),
            bid_qty: q("1.25"),
            ask_qty: q("2"),
        })]
    );

    for control in [SUBSCRIBE_ACK, SUBSCRIBE_FAILED, LINEAR_PONG, SPOT_PONG, PING, KLINE] {
        assert_eq!(run(&mut feed, control), (FrameOutcome::Ignored, vec![]), "{control}");
    }
    assert_eq!(feed.counters.ignored, 6);
    assert_eq!(feed.counters.events, 4 + 2 + 4 + 2 + 1);
    assert_eq!(feed.counters.skipped(), 0);
}

#[test]
fn responses_keep_what_the_connection_layer_needs() {
    let Ok(BybitFrame::Response(r)) = market::parse_frame(SUBSCRIBE_FAILED.as_bytes()) else { panic!() };
    assert_eq!((r.op, r.success, r.ret_msg), (&b"subscribe"[..], Some(false), &b"Invalid topic"[..]));
    let Ok(BybitFrame::Response(r)) = market::parse_frame(SPOT_PONG.as_bytes()) else { panic!() };
    assert_eq!((r.op, r.success), (&b"pong"[..], None));
    let Ok(BybitFrame::Other(topic)) = market::parse_frame(KLINE.as_bytes()) else { panic!() };
    assert_eq!(topic, b"kline.5.BTCUSDT");
}

#[test]
fn book_sync_snapshot_continuity_gap_and_resync() {
    let mut feed = feed();
    let mut book = OrderBook::default();
    let (o, ev) = run(&mut feed, &book_frame("snapshot", 500, ("100.0", "1")));
    apply(&mut book, &ev);
    assert_eq!(o, FrameOutcome::Applied);
    assert!(feed.in_sync(BTC) && book.in_sync());
    assert_eq!((book.last_update_id(), feed.counters.snapshots), (500, 1));

    // Continuity: u == previous u + 1; qty 0 deletes.
    for (u, bid) in [(501, ("100.5", "2")), (502, ("100.0", "0"))] {
        let (o, ev) = run(&mut feed, &book_frame("delta", u, bid));
        apply(&mut book, &ev);
        assert_eq!(o, FrameOutcome::Applied);
        assert!(book.in_sync(), "u {u}");
    }
    assert_eq!(book.best_bid().unwrap().price, px("100.5"));
    assert_eq!(book.qty_at(Side::Buy, px("100.0")), Quantity::ZERO, "qty 0 removed the level");
    assert_eq!(book.depth(Side::Buy), 1);

    // A repeat of an applied message is dropped.
    let (o, ev) = run(&mut feed, &book_frame("delta", 502, ("99.0", "1")));
    assert_eq!((o, ev.len(), feed.counters.stale), (FrameOutcome::Applied, 0, 1));

    // A gap: the core's book goes out of sync, the caller is told to resubscribe.
    let (o, ev) = run(&mut feed, &book_frame("delta", 505, ("100.7", "1")));
    apply(&mut book, &ev);
    assert_eq!(o, FrameOutcome::NeedSnapshot(BTC));
    assert_eq!(
        deltas(&ev),
        vec![(Side::Buy, Price::ZERO, Quantity::ZERO, DELTA_LAST | DELTA_RESYNC, 505, 505, 504)],
        "a no-op carrying the break"
    );
    assert!(!book.in_sync() && !feed.in_sync(BTC));
    assert_eq!(feed.counters.gaps, 1);
    assert_eq!(book.best_bid().unwrap().price, px("100.5"), "the gapped message's levels are not applied");

    // Until the new snapshot, deltas are dropped (counted stale), and resubscription is asked once.
    let (o, ev) = run(&mut feed, &book_frame("delta", 506, ("100.8", "1")));
    assert_eq!((o, ev.len(), feed.counters.stale, feed.counters.gaps), (FrameOutcome::Applied, 0, 2, 1));

    // The snapshot of the new subscription resyncs.
    let (o, ev) = run(&mut feed, &book_frame("snapshot", 510, ("101.0", "4")));
    apply(&mut book, &ev);
    assert_eq!(o, FrameOutcome::Applied);
    assert!(book.in_sync() && feed.in_sync(BTC));
    assert_eq!(book.best_bid().unwrap().price, px("101.0"));
    assert_eq!(book.depth(Side::Buy), 1, "the snapshot cleared the old levels");
    let (_, ev) = run(&mut feed, &book_frame("delta", 511, ("101.5", "1")));
    apply(&mut book, &ev);
    assert!(book.in_sync());
    assert_eq!((book.last_update_id(), feed.counters.snapshots), (511, 2));
}

#[test]
fn u_equal_to_one_resets_the_book() {
    let mut feed = feed();
    let mut book = OrderBook::default();
    for frame in [book_frame("snapshot", 9_000, ("100.0", "1")), book_frame("delta", 9_001, ("99.0", "1"))] {
        apply(&mut book, &run(&mut feed, &frame).1);
    }
    assert_eq!(book.depth(Side::Buy), 2);
    // The service restarted: a `delta` with u = 1 carries the whole book.
    let (o, ev) = run(&mut feed, &book_frame("delta", 1, ("98.0", "3")));
    apply(&mut book, &ev);
    assert_eq!(o, FrameOutcome::Applied);
    assert_eq!(
        deltas(&ev),
        vec![
            (Side::Buy, px("98.0"), q("3"), DELTA_SNAPSHOT | DELTA_CLEAR, 1, 1, 0),
            (Side::Sell, px("30010"), q("1"), DELTA_SNAPSHOT | DELTA_LAST, 1, 1, 0)
        ]
    );
    assert!(book.in_sync() && feed.in_sync(BTC));
    assert_eq!((book.depth(Side::Buy), book.best_bid().unwrap().price, book.last_update_id()), (1, px("98.0"), 1));
    assert_eq!((feed.counters.snapshots, feed.counters.gaps), (2, 0));
    // And the sequence goes on from 1.
    let (o, ev) = run(&mut feed, &book_frame("delta", 2, ("98.5", "1")));
    apply(&mut book, &ev);
    assert_eq!(o, FrameOutcome::Applied);
    assert!(book.in_sync());
    assert_eq!(book.best_bid().unwrap().price, px("98.5"));
}

#[test]
fn deltas_before_any_snapshot_are_dropped_and_counted_stale() {
    let mut feed = feed();
    let (o, ev) = run(&mut feed, &book_frame("delta", 41, ("100.0", "1")));
    assert_eq!((o, ev.len()), (FrameOutcome::NeedSnapshot(BTC), 0));
    let (o, ev) = run(&mut feed, &book_frame("delta", 42, ("100.0", "1")));
    assert_eq!((o, ev.len()), (FrameOutcome::Applied, 0), "resubscription is asked for once");
    assert_eq!((feed.counters.stale, feed.counters.gaps, feed.counters.events), (2, 0, 0));
    assert!(!feed.in_sync(BTC));
    assert_eq!(run(&mut feed, &book_frame("snapshot", 43, ("100.0", "1"))).0, FrameOutcome::Applied);
    assert!(feed.in_sync(BTC));
    // After a reconnect every book waits for its snapshot again.
    feed.reset_books(9, &mut |_| {});
    assert!(!feed.in_sync(BTC));
    assert_eq!(run(&mut feed, &book_frame("delta", 44, ("100.0", "1"))).0, FrameOutcome::NeedSnapshot(BTC));
}

#[test]
fn empty_book_messages_still_carry_their_ids() {
    let mut feed = feed();
    let mut book = OrderBook::default();
    apply(&mut book, &run(&mut feed, &book_frame("snapshot", 10, ("100.0", "1"))).1);
    let empty = r#"{"topic":"orderbook.1.BTCUSDT","type":"delta","ts":1700000001000,"data":{"s":"BTCUSDT","b":[],"a":[],"u":11,"seq":9}}"#;
    let (o, ev) = run(&mut feed, empty);
    apply(&mut book, &ev);
    assert_eq!(o, FrameOutcome::Applied);
    assert_eq!(deltas(&ev), vec![(Side::Buy, Price::ZERO, Quantity::ZERO, DELTA_LAST, 11, 11, 10)]);
    assert_eq!(ev[0].ts_event(), 1_700_000_001_000_000_000, "no cts: ts");
    assert!(book.in_sync());
    assert_eq!((book.last_update_id(), book.depth(Side::Buy)), (11, 1));
}

#[test]
fn ticker_deltas_merge_into_the_last_quote() {
    let mut feed = feed();
    let quote = |ev: &[Event]| {
        let [Event::Quote(q)] = ev else { panic!("{ev:?}") };
        (q.bid_price, q.bid_qty, q.ask_price, q.ask_qty, q.ts_event)
    };
    // A delta before the snapshot knows two of four fields: nothing yet.
    assert_eq!(run(&mut feed, TICKER_DELTA), (FrameOutcome::Ignored, vec![]));
    let (_, ev) = run(&mut feed, TICKER_SNAPSHOT);
    assert_eq!(quote(&ev), (px("30000.5"), q("1.25"), px("30001"), q("2"), 1_700_000_000_300_000_000));
    let (o, ev) = run(&mut feed, TICKER_DELTA);
    assert_eq!(o, FrameOutcome::Applied);
    assert_eq!(quote(&ev), (px("30000.5"), q("1.25"), px("30001.5"), q("0.01"), 1_700_000_000_400_000_000), "the bid is kept");
    // A delta that leaves the best bid/ask alone produces no quote.
    assert_eq!(run(&mut feed, TICKER_DELTA_NO_QUOTE), (FrameOutcome::Ignored, vec![]));
    // An empty field means the venue has no value: no quote until it has one again.
    let empty_bid =
        r#"{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT","bid1Price":"","bid1Size":""},"ts":1700000000600}"#;
    assert_eq!(run(&mut feed, empty_bid), (FrameOutcome::Ignored, vec![]));
    let bid_back = r#"{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT","bid1Price":"29999.00","bid1Size":"0.3"},"ts":1700000000700}"#;
    assert_eq!(quote(&run(&mut feed, bid_back).1), (px("29999"), q("0.3"), px("30001.5"), q("0.01"), 1_700_000_000_700_000_000));
    // A snapshot replaces what was kept: fields it leaves out are unknown, not unchanged.
    let bid_only = r#"{"topic":"tickers.BTCUSDT","type":"snapshot","data":{"symbol":"BTCUSDT","bid1Price":"29998.00","bid1Size":"1"},"ts":1700000000800}"#;
    assert_eq!(run(&mut feed, bid_only), (FrameOutcome::Ignored, vec![]));
    assert_eq!(quote(&run(&mut feed, TICKER_DELTA).1), (px("29998"), q("1"), px("30001.5"), q("0.01"), 1_700_000_000_400_000_000));
    // A reconnect forgets what was kept.
    feed.reset_books(9, &mut |_| {});
    assert_eq!(run(&mut feed, TICKER_DELTA), (FrameOutcome::Ignored, vec![]));
    assert_eq!((feed.counters.events, feed.counters.ignored, feed.counters.skipped()), (4, 5, 0));
}

#[test]
fn spot_tickers_have_no_quote_and_are_ignored() {
    let mut feed = BybitFeed::new(BybitCategory::Spot, &registry(), "bybit");
    assert_eq!(feed.category(), BybitCategory::Spot);
    assert_eq!(run(&mut feed, SPOT_TICKER), (FrameOutcome::Ignored, vec![]));
    assert_eq!((feed.counters.ignored, feed.counters.events), (1, 0));
}

#[test]
fn trade_arrays_emit_one_trade_per_element_with_the_taker_side() {
    let mut feed = feed();
    let frame = r#"{"topic":"publicTrade.ETHUSDT","type":"snapshot","ts":1700000002000,"data":[
        {"i":"100","T":1700000001990,"p":"2000.10","v":"0.5","S":"Sell","s":"ETHUSDT","BT":false},
        {"i":"101","T":1700000001991,"p":"2000.20","v":"1","S":"Buy","s":"ETHUSDT","BT":false},
        {"i":"102","T":1700000001992,"p":"2000.15","v":"0.25","S":"Sell","s":"ETHUSDT","BT":true}]}"#;
    let (o, ev) = run(&mut feed, frame);
    assert_eq!(o, FrameOutcome::Applied);
    let got: Vec<_> = ev
        .iter()
        .map(|e| {
            let Event::Trade(t) = *e else { panic!() };
            (t.instrument, t.trade_id, t.aggressor, t.price, t.qty)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (ETH, 100, Side::Sell, px("2000.1"), q("0.5")),
            (ETH, 101, Side::Buy, px("2000.2"), q("1")),
            (ETH, 102, Side::Sell, px("2000.15"), q("0.25")),
        ]
    );
    // An empty array has nothing for the engine.
    let empty = r#"{"topic":"publicTrade.ETHUSDT","type":"snapshot","ts":1700000002000,"data":[]}"#;
    assert_eq!(run(&mut feed, empty), (FrameOutcome::Ignored, vec![]));
}

#[test]
fn bad_frames_are_counted_and_skipped_with_a_reason() {
    let mut feed = feed();
    let trade = |fields: &str| {
        format!(r#"{{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1,"data":[{{"T":1,"s":"BTCUSDT","i":"1",{fields}}}]}}"#)
    };
    let ticker = |fields: &str| format!(r#"{{"topic":"tickers.BTCUSDT","type":"snapshot","ts":1,"data":{{"symbol":"BTCUSDT",{fields}}}}}"#);
    let book = |data: &str| format!(r#"{{"topic":"orderbook.50.BTCUSDT","type":"snapshot","ts":1,"data":{{{data}}}}}"#);
    let cases = [
        ("not json".to_string(), "malformed_json"),
        (r#"{"topic":"orderbook.50.BTCUSDT","type":"snapshot","data":{"s":"BTCUSDT","b":[["1.0","1"]"#.to_string(), "malformed_json"),
        (book(r#""s":"BTCUSDT","b":[["1.0"]],"a":[],"u":5"#), "malformed_json"),
        (book(r#""s":"BTCUSDT","b":[[1.0,"1"]],"a":[],"u":5"#), "malformed_json"),
        (book(r#""s":"BTCUSDT","b":[["1.0","1"]],"a":[],"u":"x5""#), "missing_field"),
        (book(r#""s":"BTCUSDT","b":[["1.0","1"]],"u":5"#), "missing_field"),
        (book(r#""b":[["1.0","1"]],"a":[],"u":5"#), "missing_field"),
        (book(r#""s":"BTCUSDT","b":[["1.0","x"]],"a":[],"u":5"#), "bad_decimal"),
        (book(r#""s":"BTCUSDT","b":[["1.0","-1"]],"a":[],"u":5"#), "bad_decimal"),
        (book(r#""s":"SOLUSDT","b":[],"a":[],"u":5"#), "unknown_symbol"),
        (
            r#"{"topic":"orderbook.50.BTCUSDT","type":"partial","ts":1,"data":{"s":"BTCUSDT","b":[],"a":[],"u":5}}"#.to_string(),
            "missing_field",
        ),
        (r#"{"topic":"orderbook.50.BTCUSDT","type":"snapshot","data":{"s":"BTCUSDT","b":[],"a":[],"u":5}}"#.to_string(), "missing_field"),
        (r#"{"topic":"orderbook.50.BTCUSDT","type":"snapshot","ts":1,"data":[]}"#.to_string(), "missing_field"),
        (trade(r#""S":"Buy","v":"1","p":"1e3""#), "bad_decimal"),
        (trade(r#""S":"Buy","v":"1""#), "missing_field"),
        (trade(r#""S":"Hold","v":"1","p":"1""#), "missing_field"),
        (r#"{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1,"data":{"T":1}}"#.to_string(), "missing_field"),
        (r#"{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1,"data":[1,2]}"#.to_string(), "missing_field"),
        (
            r#"{"topic":"publicTrade.BTCUSDT","ts":1,"data":[{"T":1,"s":"SOLUSDT","S":"Buy","v":"1","p":"1","i":"1"}]}"#.to_string(),
            "unknown_symbol",
        ),
        (ticker(r#""bid1Price":"1.5","bid1Size":"abc","ask1Price":"2","ask1Size":"1""#), "bad_decimal"),
        (ticker(r#""bid1Price":1.5,"bid1Size":"1","ask1Price":"2","ask1Size":"1""#), "missing_field"),
        (r#"{"topic":"tickers.BTCUSDT","type":"snapshot","ts":1,"data":{"bid1Price":"1"}}"#.to_string(), "missing_field"),
        (r#"{"topic":"tickers.SOLUSDT","type":"snapshot","ts":1,"data":{"symbol":"SOLUSDT"}}"#.to_string(), "unknown_symbol"),
        (r#"{"success":true}"#.to_string(), "missing_field"),
        ("[]".to_string(), "malformed_json"),
    ];
    for (frame, label) in &cases {
        let (o, ev) = run(&mut feed, frame);
        let FrameOutcome::Skipped(e) = o else { panic!("{frame}: {o:?}") };
        assert_eq!(e.label(), *label, "{frame}: {e}");
        assert!(ev.is_empty(), "{frame}: nothing emitted");
    }
    assert_eq!(feed.counters.skipped(), cases.len() as u64);
    assert_eq!((feed.counters.events, feed.counters.ignored), (0, 0));
}

#[test]
fn a_bad_element_skips_the_whole_message() {
    let mut feed = feed();
    let mut book = OrderBook::default();
    apply(&mut book, &run(&mut feed, &book_frame("snapshot", 10, ("100.0", "1"))).1);
    // The bad level comes last: nothing before it may be emitted, and the sequence stays put.
    let bad =
        r#"{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1,"data":{"s":"BTCUSDT","b":[["100.5","1"]],"a":[["101.0","one"]],"u":11}}"#;
    let (o, ev) = run(&mut feed, bad);
    assert!(matches!(o, FrameOutcome::Skipped(FeedError::Decimal { field: "qty", .. })), "{o:?}");
    assert!(ev.is_empty());
    let (o, ev) = run(&mut feed, &book_frame("delta", 11, ("100.5", "1")));
    apply(&mut book, &ev);
    assert_eq!(o, FrameOutcome::Applied, "u 11 still continues 10");
    assert!(book.in_sync());

    let bad_trade = r#"{"topic":"publicTrade.BTCUSDT","ts":1,"data":[{"T":1,"s":"BTCUSDT","S":"Buy","v":"1","p":"1","i":"1"},{"T":1,"s":"BTCUSDT","S":"Buy","v":"1","p":"x","i":"2"}]}"#;
    let (o, ev) = run(&mut feed, bad_trade);
    assert!(matches!(o, FrameOutcome::Skipped(FeedError::Decimal { field: "p", .. })), "{o:?}");
    assert!(ev.is_empty(), "the good first trade is not emitted either");

    run(&mut feed, TICKER_SNAPSHOT);
    let bad_ticker = r#"{"topic":"tickers.BTCUSDT","type":"delta","ts":1,"data":{"symbol":"BTCUSDT","bid1Price":"1","ask1Size":"-2"}}"#;
    assert!(matches!(run(&mut feed, bad_ticker).0, FrameOutcome::Skipped(FeedError::Decimal { field: "ask1Size", .. })));
    let (_, ev) = run(&mut feed, TICKER_DELTA);
    let [Event::Quote(q)] = ev[..] else { panic!("{ev:?}") };
    assert_eq!(q.bid_price, px("30000.5"), "the skipped delta changed nothing");
}

#[test]
fn field_order_is_never_assumed() {
    let mut feed = feed();
    let shuffled = r#"{"cts":1700000000098,"data":{"seq":1,"u":1000,"a":[["30001.00","2"]],"b":[["30000.50","1"]],"s":"BTCUSDT"},"ts":1700000000100,"type":"snapshot","topic":"orderbook.50.BTCUSDT"}"#;
    let (o, ev) = run(&mut feed, shuffled);
    assert_eq!(o, FrameOutcome::Applied);
    assert_eq!(deltas(&ev).len(), 2);
    assert!(feed.in_sync(BTC));
}

#[test]
fn truncated_frames_are_skipped_never_a_panic() {
    let mut feed = feed();
    for frame in [BOOK_SNAPSHOT, BOOK_DELTA, TRADES, TICKER_SNAPSHOT, TICKER_DELTA, SUBSCRIBE_ACK] {
        for end in 0..frame.len() {
            let o = feed.on_frame(1, &frame.as_bytes()[..end], &mut |_| {});
            assert!(matches!(o, FrameOutcome::Skipped(_)), "{}: {o:?}", &frame[..end]);
        }
    }
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut feed = feed();
            feed.on_frame(1, &bytes, &mut |_| {});
            prop_assert_eq!(feed.counters.frames, 1);
        }

        #[test]
        fn any_update_id_sequence_keeps_feed_and_core_book_agreeing(steps in proptest::collection::vec(0u64..4, 1..40)) {
            // Step 0 repeats, 1 continues, 2 and 3 skip ids; every sixth message is a snapshot.
            let mut feed = feed();
            let mut book = OrderBook::default();
            let mut u = 100;
            apply(&mut book, &run(&mut feed, &book_frame("snapshot", u, ("100.0", "1"))).1);
            for (i, step) in steps.into_iter().enumerate() {
                u += step;
                let kind = if i % 6 == 5 { "snapshot" } else { "delta" };
                apply(&mut book, &run(&mut feed, &book_frame(kind, u, ("100.0", "1"))).1);
                prop_assert_eq!(feed.in_sync(BTC), book.in_sync(), "u {}", u);
            }
        }
    }
}

#[test]
fn an_id_that_went_backwards_is_a_gap_not_a_frozen_book() {
    let mut feed = feed();
    let mut book = OrderBook::default();
    apply(&mut book, &run(&mut feed, &book_frame("snapshot", 500, ("100.0", "1"))).1);
    // One corrupt digit: a snapshot far ahead of the stream (a delta would already be a gap).
    let (o, ev) = run(&mut feed, &book_frame("snapshot", 9_000_501, ("100.5", "1")));
    apply(&mut book, &ev);
    assert_eq!(o, FrameOutcome::Applied);
    // The next delta is behind it: not stale for ever, a break.
    let (o, ev) = run(&mut feed, &book_frame("delta", 502, ("100.0", "0")));
    apply(&mut book, &ev);
    assert_eq!(o, FrameOutcome::NeedSnapshot(BTC));
    assert!(!feed.in_sync(BTC) && !book.in_sync());
    assert_eq!((feed.counters.gaps, feed.counters.stale), (1, 0));
}

#[test]
fn repeats_of_the_last_message_without_end_are_a_gap() {
    let mut feed = feed();
    let mut book = OrderBook::default();
    apply(&mut book, &run(&mut feed, &book_frame("snapshot", 500, ("100.0", "1"))).1);
    for _ in 0..MAX_STALE_RUN {
        let (o, ev) = run(&mut feed, &book_frame("delta", 500, ("100.0", "1")));
        assert_eq!((o, ev.len()), (FrameOutcome::Applied, 0));
    }
    assert!(feed.in_sync(BTC));
    let (o, ev) = run(&mut feed, &book_frame("delta", 500, ("100.0", "1")));
    apply(&mut book, &ev);
    assert_eq!(o, FrameOutcome::NeedSnapshot(BTC));
    assert!(!book.in_sync());
    assert_eq!((feed.counters.gaps, feed.counters.stale), (1, u64::from(MAX_STALE_RUN)));
}

#[test]
fn impossible_numbers_are_counted_skips_never_events() {
    let mut feed = feed();
    let trade = |p: &str, v: &str, t: &str| {
        format!(
            r#"{{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1,"data":[{{"T":{t},"s":"BTCUSDT","S":"Buy","v":"{v}","p":"{p}","i":"1"}}]}}"#
        )
    };
    let book = |p: &str, q: &str| {
        format!(r#"{{"topic":"orderbook.50.BTCUSDT","type":"snapshot","ts":1,"data":{{"s":"BTCUSDT","b":[["{p}","{q}"]],"a":[],"u":5}}}}"#)
    };
    let ticker = |kind: &str, fields: &str| {
        format!(r#"{{"topic":"tickers.BTCUSDT","type":"{kind}","ts":1,"data":{{"symbol":"BTCUSDT",{fields}}}}}"#)
    };
    let cases = [
        (trade("-30000", "1", "1"), "bad_decimal"),
        (trade("0", "1", "1"), "bad_decimal"),
        (trade("NaN", "1", "1"), "bad_decimal"),
        (trade("1e400", "1", "1"), "bad_decimal"),
        (trade("30000", "-1", "1"), "bad_decimal"),
        (trade("30000", "1", "18446744073710"), "bad_timestamp"),
        (
            r#"{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1,"data":[{"T":1,"s":"","S":"Buy","v":"1","p":"1","i":"1"}]}"#
                .to_string(),
            "missing_field",
        ),
        (book("-1", "1"), "bad_decimal"),
        (book("0", "1"), "bad_decimal"),
        (book("inf", "1"), "bad_decimal"),
        (book("1", "-1"), "bad_decimal"),
        (
            r#"{"topic":"orderbook.50.BTCUSDT","type":"snapshot","ts":18446744073710,"data":{"s":"BTCUSDT","b":[],"a":[],"u":5}}"#
                .to_string(),
            "bad_timestamp",
        ),
        (r#"{"topic":"orderbook.50.BTCUSDT","type":"snapshot","ts":1,"data":{"s":"","b":[],"a":[],"u":5}}"#.to_string(), "missing_field"),
        (ticker("snapshot", r#""bid1Price":"-1","bid1Size":"1","ask1Price":"2","ask1Size":"1""#), "bad_decimal"),
        (ticker("snapshot", r#""bid1Price":"1","bid1Size":"-1","ask1Price":"2","ask1Size":"1""#), "bad_decimal"),
        (ticker("snapshot", r#""bid1Price":"3","bid1Size":"1","ask1Price":"2","ask1Size":"1""#), "crossed_quote"),
        (r#"{"topic":"tickers.BTCUSDT","type":"snapshot","ts":1,"data":{"symbol":""}}"#.to_string(), "missing_field"),
    ];
    for (frame, label) in &cases {
        let (o, ev) = run(&mut feed, frame);
        let FrameOutcome::Skipped(e) = o else { panic!("{frame}: {o:?}") };
        assert_eq!(e.label(), *label, "{frame}: {e}");
        assert!(ev.is_empty(), "{frame}: nothing emitted");
    }
    assert_eq!(feed.counters.skipped(), cases.len() as u64);
    // A delta that would cross the kept quote is skipped, and the kept quote stays.
    let good = ticker("snapshot", r#""bid1Price":"1","bid1Size":"1","ask1Price":"2","ask1Size":"1""#);
    assert_eq!(run(&mut feed, &good).0, FrameOutcome::Applied);
    let (o, ev) = run(&mut feed, &ticker("delta", r#""bid1Price":"2.5""#));
    assert_eq!((o, ev.len()), (FrameOutcome::Skipped(FeedError::CrossedQuote), 0));
    let (_, ev) = run(&mut feed, &ticker("delta", r#""ask1Size":"3""#));
    let Event::Quote(q) = ev[0] else { panic!("{ev:?}") };
    assert_eq!((q.bid_price, q.ask_price, q.ask_qty), (px("1"), px("2"), self::q("3")));
}
