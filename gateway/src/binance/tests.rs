//! Table tests over frames written from Binance's documentation examples.

use super::*;
use sapphire_core::book::OrderBook;
use sapphire_core::fixed::{Money, Price, Quantity};
use sapphire_core::instrument::{InstrumentSpec, MarketType};

const SPOT_BOOK_TICKER: &str = r#"{"u":400900217,"s":"BNBUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000","A":"40.66000000"}"#;
const FUT_BOOK_TICKER: &str = r#"{"e":"bookTicker","u":400900217,"E":1568014460893,"T":1568014460891,"s":"BNBUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000","A":"40.66000000"}"#;
const TRADE: &str = r#"{"e":"trade","E":1672515782136,"s":"BNBUSDT","t":12345,"p":"0.001","q":"100","T":1672515782136,"m":true,"M":true}"#;
const AGG_TRADE: &str = r#"{"e":"aggTrade","E":1672515782136,"s":"BNBUSDT","a":12345,"p":"0.001","q":"100","f":100,"l":105,"T":1672515782136,"m":false,"M":true}"#;
const COMBINED: &str = r#"{"stream":"bnbusdt@trade","data":{"e":"trade","E":1672515782136,"s":"BNBUSDT","t":12346,"p":"0.002","q":"1.5","T":1672515782137,"m":false,"M":true}}"#;
const RESPONSE: &str = r#"{"result":null,"id":1}"#;
const KLINE: &str = r#"{"e":"kline","E":1672515782136,"s":"BNBUSDT","k":{"t":1672515780000,"i":"1m"}}"#;

fn registry(venue: &str) -> InstrumentRegistry {
    let mut reg = InstrumentRegistry::new();
    reg.intern(InstrumentSpec {
        venue,
        symbol: "BNBUSDT",
        market: MarketType::Spot,
        tick_size: Price::parse("0.0001").unwrap(),
        lot_size: Quantity::parse("0.001").unwrap(),
        min_notional: Money::from_units(5),
    })
    .unwrap();
    reg
}

fn run(feed: &mut BinanceFeed, frame: &str) -> (FrameOutcome, Vec<Event>) {
    let mut out = Vec::new();
    let o = feed.on_frame(7, frame.as_bytes(), &mut |e| out.push(e));
    (o, out)
}

#[test]
fn parses_every_documented_kind() {
    let mut feed = BinanceFeed::new(BinanceMarket::Spot, &registry("binance"), "binance");
    let (o, ev) = run(&mut feed, SPOT_BOOK_TICKER);
    assert_eq!(o, FrameOutcome::Applied);
    let Event::Quote(q) = ev[0] else { panic!("{ev:?}") };
    assert_eq!(
        (q.bid_price, q.bid_qty, q.ask_price, q.ask_qty),
        (
            Price::parse("25.3519").unwrap(),
            Quantity::parse("31.21").unwrap(),
            Price::parse("25.3652").unwrap(),
            Quantity::parse("40.66").unwrap()
        )
    );
    assert_eq!(q.ts_event, 7, "spot bookTicker has no time: receive time");

    let (_, ev) = run(&mut feed, FUT_BOOK_TICKER);
    let Event::Quote(q) = ev[0] else { panic!() };
    assert_eq!(q.ts_event, 1_568_014_460_891_000_000, "transaction time T");

    let (_, ev) = run(&mut feed, TRADE);
    let Event::Trade(t) = ev[0] else { panic!() };
    assert_eq!(
        (t.aggressor, t.trade_id, t.price, t.qty, t.ts_event),
        (Side::Sell, 12_345, Price::parse("0.001").unwrap(), Quantity::from_units(100), 1_672_515_782_136_000_000)
    );

    let (_, ev) = run(&mut feed, AGG_TRADE);
    let Event::Trade(t) = ev[0] else { panic!() };
    assert_eq!((t.aggressor, t.trade_id), (Side::Buy, 12_345));

    let (_, ev) = run(&mut feed, COMBINED);
    let Event::Trade(t) = ev[0] else { panic!() };
    assert_eq!((t.trade_id, t.qty), (12_346, Quantity::parse("1.5").unwrap()));

    assert_eq!(run(&mut feed, RESPONSE).0, FrameOutcome::Ignored);
    assert_eq!(run(&mut feed, KLINE).0, FrameOutcome::Ignored);
    assert_eq!(feed.counters.events, 5);
    assert_eq!(feed.counters.ignored, 2);
}

#[test]
fn bad_frames_are_counted_and_skipped_with_a_reason() {
    let mut feed = BinanceFeed::new(BinanceMarket::Spot, &registry("binance"), "binance");
    let cases = [
        ("not json", "malformed_json"),
        (r#"{"e":"trade","s":"BNBUSDT","t":1,"p":"0.001","q":"1","T":1}"#, "missing_field"),
        (r#"{"e":"trade","s":"BNBUSDT","t":1,"p":"1e-3","q":"1","T":1,"m":true}"#, "bad_decimal"),
        (r#"{"e":"trade","s":"BNBUSDT","t":1,"p":"0.001","q":"-1","T":1,"m":true}"#, "bad_decimal"),
        (r#"{"e":"trade","s":"ETHUSDT","t":1,"p":"0.001","q":"1","T":1,"m":true}"#, "unknown_symbol"),
        (r#"{"e":"depthUpdate","E":1,"s":"BNBUSDT","U":1,"u":2,"b":[["1.0"]],"a":[]}"#, "malformed_json"),
        (r#"{"u":1,"s":"BNBUSDT","b":"25.3","B":"31.2","a":"25.4"}"#, "missing_field"),
        ("{\"e\":\"trade\",\"s\":\"BNB", "malformed_json"),
    ];
    for (frame, label) in cases {
        let (o, ev) = run(&mut feed, frame);
        let FrameOutcome::Skipped(e) = o else { panic!("{frame}: {o:?}") };
        assert_eq!(e.label(), label, "{frame}: {e}");
        assert!(ev.is_empty(), "{frame}: nothing emitted");
    }
    assert_eq!(feed.counters.skipped(), cases.len() as u64);
}

fn depth(u0: u64, u1: u64, pu: Option<u64>, bid: &str) -> String {
    let pu = pu.map(|p| format!(r#","pu":{p}"#)).unwrap_or_default();
    format!(
        r#"{{"e":"depthUpdate","E":1672515782136,"s":"BNBUSDT","U":{u0},"u":{u1}{pu},"b":[["{bid}","10"]],"a":[["30.0","5"],["31.0","0"]]}}"#
    )
}

const SNAPSHOT: &str = r#"{"lastUpdateId":158,"bids":[["25.0","1"],["24.0","2"]],"asks":[["30.0","3"],["31.0","4"]]}"#;

/// Applies emitted deltas to a core book, as the engine would.
fn apply(book: &mut OrderBook, events: &[Event]) {
    for e in events {
        if let Event::BookDelta(d) = e {
            book.apply_delta(d);
        }
    }
}

#[test]
fn spot_sync_buffers_brackets_continues_and_detects_gaps() {
    let reg = registry("binance");
    let mut feed = BinanceFeed::new(BinanceMarket::Spot, &reg, "binance");
    let mut book = OrderBook::default();
    let inst = InstrumentId(0);
    // Before the snapshot: buffered, and the caller is asked for one (once).
    let (o, ev) = run(&mut feed, &depth(150, 155, None, "20.0"));
    assert_eq!((o, ev.len()), (FrameOutcome::NeedSnapshot(inst), 0));
    let (o, _) = run(&mut feed, &depth(156, 160, None, "25.5"));
    assert_eq!(o, FrameOutcome::Applied);
    // The snapshot: applied, then the buffer replayed: 150-155 is stale, 156-160 brackets 159.
    let mut out = Vec::new();
    assert_eq!(feed.on_snapshot(Some(inst), 9, SNAPSHOT.as_bytes(), &mut |e| out.push(e)), FrameOutcome::Applied);
    apply(&mut book, &out);
    assert_eq!(feed.counters.stale, 1);
    assert!(book.in_sync() && feed.in_sync(inst));
    assert_eq!(book.best_bid().unwrap().price, Price::parse("25.5").unwrap());
    assert_eq!(book.qty_at(Side::Sell, Price::parse("31.0").unwrap()), Quantity::ZERO, "qty 0 removes the level");
    assert_eq!(book.last_update_id(), 160);
    // Continuity: U == previous u + 1.
    let (o, ev) = run(&mut feed, &depth(161, 170, None, "25.6"));
    apply(&mut book, &ev);
    assert_eq!(o, FrameOutcome::Applied);
    assert!(book.in_sync());
    // A gap: the core's book goes out of sync and a snapshot is asked for.
    let (o, ev) = run(&mut feed, &depth(175, 180, None, "25.7"));
    apply(&mut book, &ev);
    assert_eq!(o, FrameOutcome::NeedSnapshot(inst));
    assert!(!book.in_sync() && !feed.in_sync(inst));
    assert_eq!(feed.counters.gaps, 1);
    let mut out = Vec::new();
    feed.on_snapshot(Some(inst), 9, r#"{"lastUpdateId":177,"bids":[["25.0","1"]],"asks":[["30.0","3"]]}"#.as_bytes(), &mut |e| out.push(e));
    apply(&mut book, &out);
    assert!(book.in_sync(), "resynced");
    assert_eq!(book.best_bid().unwrap().price, Price::parse("25.7").unwrap(), "the buffered 175-180 bracketed 178");
}

#[test]
fn futures_sync_uses_pu() {
    let reg = registry("binance-usdm");
    let mut feed = BinanceFeed::new(BinanceMarket::UsdM, &reg, "binance-usdm");
    let mut book = OrderBook::default();
    run(&mut feed, &depth(150, 158, Some(149), "25.5"));
    let mut out = Vec::new();
    feed.on_snapshot(None, 9, SNAPSHOT.as_bytes(), &mut |e| out.push(e));
    apply(&mut book, &out);
    // Futures: U <= lastUpdateId <= u brackets (158 == u is accepted).
    assert_eq!(book.last_update_id(), 158);
    // Update ids jump between messages on futures; pu links them.
    let (o, ev) = run(&mut feed, &depth(170, 175, Some(158), "25.6"));
    apply(&mut book, &ev);
    assert_eq!(o, FrameOutcome::Applied);
    assert!(book.in_sync());
    let (o, ev) = run(&mut feed, &depth(180, 185, Some(177), "25.7"));
    apply(&mut book, &ev);
    assert_eq!(o, FrameOutcome::NeedSnapshot(InstrumentId(0)));
    assert!(!book.in_sync());
}

#[test]
fn a_bad_level_skips_the_whole_message() {
    let reg = registry("binance");
    let mut feed = BinanceFeed::new(BinanceMarket::Spot, &reg, "binance");
    run(&mut feed, &depth(150, 160, None, "25.5"));
    let mut out = Vec::new();
    feed.on_snapshot(Some(InstrumentId(0)), 9, SNAPSHOT.as_bytes(), &mut |e| out.push(e));
    let (o, ev) = run(&mut feed, &depth(161, 162, None, "twenty"));
    assert!(matches!(o, FrameOutcome::Skipped(FeedError::Decimal { .. })));
    assert!(ev.is_empty());
}

#[test]
fn a_reset_takes_the_core_book_out_of_sync_until_the_next_snapshot() {
    let reg = registry("binance");
    let mut feed = BinanceFeed::new(BinanceMarket::Spot, &reg, "binance");
    let mut book = OrderBook::default();
    let inst = InstrumentId(0);
    run(&mut feed, &depth(156, 160, None, "25.5"));
    let mut out = Vec::new();
    feed.on_snapshot(Some(inst), 9, SNAPSHOT.as_bytes(), &mut |e| out.push(e));
    apply(&mut book, &out);
    assert!(book.in_sync());
    // A reconnect.
    let mut out = Vec::new();
    feed.reset_books(10, &mut |e| out.push(e));
    apply(&mut book, &out);
    assert!(!book.in_sync() && !feed.in_sync(inst), "out of sync at once");
    assert_eq!(book.best_bid().unwrap().price, Price::parse("25.5").unwrap(), "the marker changes no level");
    let (o, _) = run(&mut feed, &depth(161, 165, None, "25.6"));
    assert_eq!(o, FrameOutcome::NeedSnapshot(inst));
    let mut out = Vec::new();
    feed.on_snapshot(Some(inst), 11, r#"{"lastUpdateId":163,"bids":[["25.0","1"]],"asks":[["30.0","3"]]}"#.as_bytes(), &mut |e| {
        out.push(e)
    });
    apply(&mut book, &out);
    assert!(book.in_sync());
}

/// The four-line repro of a book frozen while in sync: a snapshot, an event whose `u` jumped
/// far ahead (one corrupt digit), then events behind it that remove the top levels.
fn frozen_book_repro(market: BinanceMarket) -> (BinanceFeed, OrderBook, FrameOutcome) {
    let venue = if market == BinanceMarket::Spot { "binance" } else { "binance-usdm" };
    let mut feed = BinanceFeed::new(market, &registry(venue), venue);
    let mut book = OrderBook::default();
    let pu = |p: u64| if market == BinanceMarket::UsdM { format!(r#","pu":{p}"#) } else { String::new() };
    let d = |u0: u64, u1: u64, p: u64, levels: &str| {
        format!(r#"{{"e":"depthUpdate","E":1,"T":1,"s":"BNBUSDT","U":{u0},"u":{u1}{},{levels}}}"#, pu(p))
    };
    apply(&mut book, &run(&mut feed, &d(100, 110, 99, r#""b":[["25.0","1"]],"a":[["26.0","1"]]"#)).1);
    let mut out = Vec::new();
    let snapshot = r#"{"lastUpdateId":105,"bids":[["24.0","1"]],"asks":[["27.0","1"]]}"#;
    feed.on_snapshot(None, 9, snapshot.as_bytes(), &mut |e| out.push(e));
    apply(&mut book, &out);
    assert_eq!(book.best_bid().unwrap().price, Price::parse("25.0").unwrap());
    let (o, ev) = run(&mut feed, &d(111, 910_000, 110, r#""b":[],"a":[]"#));
    apply(&mut book, &ev);
    assert_eq!(o, FrameOutcome::Applied, "it continues 110: nothing can tell it is wrong yet");
    let (o, ev) = run(&mut feed, &d(911, 920, 910, r#""b":[["25.0","0"]],"a":[["26.0","0"]]"#));
    apply(&mut book, &ev);
    (feed, book, o)
}

#[test]
fn an_id_that_jumped_ahead_then_events_behind_it_are_a_gap_not_a_frozen_book() {
    for market in [BinanceMarket::UsdM, BinanceMarket::Spot] {
        let (mut feed, mut book, o) = frozen_book_repro(market);
        let inst = InstrumentId(0);
        assert_eq!(o, FrameOutcome::NeedSnapshot(inst), "{market:?}");
        assert!(!feed.in_sync(inst) && !book.in_sync(), "{market:?}: the book says it is out of sync");
        assert_eq!((feed.counters.gaps, feed.counters.stale), (1, 0), "{market:?}");
        // A new snapshot resyncs from the buffered event that broke the sequence.
        let mut out = Vec::new();
        let snapshot = r#"{"lastUpdateId":915,"bids":[["25.0","2"],["23.0","1"]],"asks":[["26.0","2"],["28.0","1"]]}"#;
        feed.on_snapshot(Some(inst), 10, snapshot.as_bytes(), &mut |e| out.push(e));
        apply(&mut book, &out);
        assert!(feed.in_sync(inst) && book.in_sync(), "{market:?}");
        assert_eq!(
            (book.best_bid().unwrap().price, book.best_ask().unwrap().price),
            (Price::parse("23.0").unwrap(), Price::parse("28.0").unwrap()),
            "{market:?}: the buffered 911-920 removed both top levels"
        );
    }
}

#[test]
fn a_snapshot_the_stream_never_reaches_is_a_gap() {
    for market in [BinanceMarket::UsdM, BinanceMarket::Spot] {
        let venue = if market == BinanceMarket::Spot { "binance" } else { "binance-usdm" };
        let mut feed = BinanceFeed::new(market, &registry(venue), venue);
        let mut book = OrderBook::default();
        let inst = InstrumentId(0);
        // Only USD-M frames carry `pu`.
        let pu = |p: u64| (market == BinanceMarket::UsdM).then_some(p);
        run(&mut feed, &depth(150, 158, pu(149), "25.5"));
        let mut out = Vec::new();
        let huge = r#"{"lastUpdateId":9158000000,"bids":[["25.0","1"]],"asks":[["30.0","3"]]}"#;
        feed.on_snapshot(Some(inst), 9, huge.as_bytes(), &mut |e| out.push(e));
        apply(&mut book, &out);
        // A stream lagging the snapshot is stale for a while: allowed, up to the bound.
        for k in 0..u64::from(MAX_STALE_RUN) {
            let (o, ev) = run(&mut feed, &depth(159 + k, 159 + k, pu(158 + k), "25.6"));
            assert_eq!((o, ev.len()), (FrameOutcome::Applied, 0));
        }
        assert!(feed.in_sync(inst) && book.in_sync());
        let k = u64::from(MAX_STALE_RUN);
        let (o, ev) = run(&mut feed, &depth(159 + k, 159 + k, pu(158 + k), "25.6"));
        apply(&mut book, &ev);
        assert_eq!(o, FrameOutcome::NeedSnapshot(inst), "{market:?}");
        assert!(!feed.in_sync(inst) && !book.in_sync(), "{market:?}");
        // The buffered event was stale too, but it does not count towards the run.
        assert_eq!((feed.counters.gaps, feed.counters.stale), (1, u64::from(MAX_STALE_RUN) + 2), "{market:?}");
    }
}

#[test]
fn repeats_of_the_last_event_without_end_are_a_gap() {
    let mut feed = BinanceFeed::new(BinanceMarket::UsdM, &registry("binance-usdm"), "binance-usdm");
    let mut book = OrderBook::default();
    run(&mut feed, &depth(150, 158, Some(149), "25.5"));
    let mut out = Vec::new();
    feed.on_snapshot(None, 9, SNAPSHOT.as_bytes(), &mut |e| out.push(e));
    apply(&mut book, &out);
    let mut last = FrameOutcome::Applied;
    for _ in 0..=MAX_STALE_RUN {
        let (o, ev) = run(&mut feed, &depth(150, 158, Some(149), "25.5"));
        apply(&mut book, &ev);
        last = o;
    }
    assert_eq!(last, FrameOutcome::NeedSnapshot(InstrumentId(0)));
    assert!(!book.in_sync());
    assert_eq!(feed.counters.gaps, 1);
}

#[test]
fn impossible_numbers_and_vanishing_frames_are_counted_skips_never_events() {
    for market in [BinanceMarket::UsdM, BinanceMarket::Spot] {
        let venue = if market == BinanceMarket::Spot { "binance" } else { "binance-usdm" };
        let mut feed = BinanceFeed::new(market, &registry(venue), venue);
        let trade =
            |p: &str, q: &str, t: &str| format!(r#"{{"e":"trade","E":1,"s":"BNBUSDT","t":1,"p":"{p}","q":"{q}","T":{t},"m":true}}"#);
        let ticker = |b: &str, bq: &str, a: &str, aq: &str| {
            format!(r#"{{"e":"bookTicker","u":5,"E":1,"T":1,"s":"BNBUSDT","b":"{b}","B":"{bq}","a":"{a}","A":"{aq}"}}"#)
        };
        let level =
            |p: &str, q: &str| format!(r#"{{"e":"depthUpdate","E":1,"s":"BNBUSDT","U":1,"u":2,"pu":0,"b":[["{p}","{q}"]],"a":[]}}"#);
        let cases = [
            (trade("-0.001", "1", "1"), "bad_decimal"),
            (trade("0", "1", "1"), "bad_decimal"),
            (trade("0.000", "1", "1"), "bad_decimal"),
            (trade("NaN", "1", "1"), "bad_decimal"),
            (trade("inf", "1", "1"), "bad_decimal"),
            (trade("1e400", "1", "1"), "bad_decimal"),
            (trade("99999999999", "1", "1"), "bad_decimal"),
            (trade("1", "-5", "1"), "bad_decimal"),
            (trade("1", "NaN", "1"), "bad_decimal"),
            (trade("1", "1", "18446744073710"), "bad_timestamp"),
            (trade("1", "1", "9223372036855"), "bad_timestamp"),
            (r#"{"e":"trade","E":1,"s":"","t":1,"p":"1","q":"1","T":1,"m":true}"#.to_string(), "missing_field"),
            (ticker("-25.3", "1", "25.4", "1"), "bad_decimal"),
            (ticker("25.3", "NaN", "25.4", "1"), "bad_decimal"),
            (ticker("25.3", "1", "1e400", "1"), "bad_decimal"),
            (ticker("25.3", "1", "25.4", "-5"), "bad_decimal"),
            (ticker("25.5", "1", "25.4", "1"), "crossed_quote"),
            (r#"{"e":"bookTicker","u":5,"E":1,"T":1,"s":"BNBUSDT","b":"25.3","B":31.2,"a":"25.4","A":"1"}"#.to_string(), "missing_field"),
            (r#"{"e":"bookTicker","E":1,"T":1,"s":"BNBUSDT","b":"25.3","B":"31.2","a":"25.4","A":"1"}"#.to_string(), "missing_field"),
            (r#"{"s":"BNBUSDT","b":"25.3","B":"31.2","a":"25.4","A":"1"}"#.to_string(), "missing_field"),
            (
                r#"{"e":"bookTicker","u":5,"E":1,"T":99999999999999999,"s":"BNBUSDT","b":"1","B":"1","a":"2","A":"1"}"#.to_string(),
                "bad_timestamp",
            ),
            (level("-25.0", "1"), "bad_decimal"),
            (level("0", "1"), "bad_decimal"),
            (level("25.0", "-1"), "bad_decimal"),
            (level("NaN", "1"), "bad_decimal"),
            (r#"{"e":"depthUpdate","E":18446744073710,"s":"BNBUSDT","U":1,"u":2,"pu":0,"b":[],"a":[]}"#.to_string(), "bad_timestamp"),
        ];
        for (frame, label) in &cases {
            let (o, ev) = run(&mut feed, frame);
            let FrameOutcome::Skipped(e) = o else { panic!("{market:?} {frame}: {o:?}") };
            assert_eq!(e.label(), *label, "{market:?} {frame}: {e}");
            assert!(ev.is_empty(), "{frame}: nothing emitted");
        }
        assert_eq!(feed.counters.skipped(), cases.len() as u64);
        assert_eq!((feed.counters.events, feed.counters.ignored), (0, 0), "{market:?}: nothing vanished");
        // A bad snapshot level is a skip too, and the book keeps waiting.
        let mut out = Vec::new();
        let o = feed.on_snapshot(Some(InstrumentId(0)), 9, br#"{"lastUpdateId":5,"bids":[["-1","1"]],"asks":[]}"#, &mut |e| out.push(e));
        assert!(matches!(o, FrameOutcome::Skipped(FeedError::Decimal { .. })), "{o:?}");
        assert!(out.is_empty() && !feed.in_sync(InstrumentId(0)));
        // A locked quote (bid == ask) is a quote.
        assert_eq!(run(&mut feed, &ticker("25.4", "1", "25.4", "1")).0, FrameOutcome::Applied);
    }
}

#[test]
fn depth_frames_of_the_other_market_are_a_terminal_wrong_market_never_a_gap() {
    // (configured, frame, the fix the error names)
    let usdm =
        r#"{"e":"depthUpdate","E":1672515782136,"T":1672515782130,"s":"BNBUSDT","U":157,"u":160,"pu":149,"b":[["25.0","10"]],"a":[]}"#;
    let spot = depth(150, 155, None, "20.0");
    let combined_usdm = format!(r#"{{"stream":"bnbusdt@depth@100ms","data":{usdm}}}"#);
    let cases = [
        (BinanceMarket::Spot, usdm.to_string(), "\"usdm\""),
        (BinanceMarket::Spot, combined_usdm, "\"usdm\""),
        (BinanceMarket::UsdM, spot, "\"spot\""),
    ];
    for (market, frame, fix) in &cases {
        let venue = if *market == BinanceMarket::Spot { "binance" } else { "binance-usdm" };
        let mut feed = BinanceFeed::new(*market, &registry(venue), venue);
        // Twice: before a snapshot (no request is asked for) and after one (no gap, no resync).
        for _ in 0..2 {
            let (o, ev) = run(&mut feed, frame);
            let FrameOutcome::Skipped(e) = o else { panic!("{market:?} {frame}: {o:?}") };
            assert!(e.is_terminal() && e.label() == "wrong_market", "{e}");
            let text = e.to_string();
            assert!(text.contains("venue_market") && text.contains(fix), "{text}");
            assert!(ev.is_empty());
            feed.on_snapshot(Some(InstrumentId(0)), 9, SNAPSHOT.as_bytes(), &mut |_| {});
        }
        let c = feed.counters;
        assert_eq!((c.wrong_market, c.gaps, c.skipped()), (2, 0, 2), "{market:?}: {c:?}");
    }
    // Matching frames are not flagged.
    let mut feed = BinanceFeed::new(BinanceMarket::Spot, &registry("binance"), "binance");
    assert_eq!(run(&mut feed, &depth(150, 155, None, "20.0")).0, FrameOutcome::NeedSnapshot(InstrumentId(0)));
    let mut feed = BinanceFeed::new(BinanceMarket::UsdM, &registry("binance-usdm"), "binance-usdm");
    assert_eq!(run(&mut feed, &depth(150, 155, Some(149), "20.0")).0, FrameOutcome::NeedSnapshot(InstrumentId(0)));
}

#[test]
fn a_trade_stamped_an_hour_ahead_gets_the_time_the_venues_clock_should_show() {
    // The engine's clock is the newest event time: one trade stamped an hour ahead made every
    // later event an hour stale, and the risk stage refused every order for the hour.
    let mut feed = BinanceFeed::new(BinanceMarket::Spot, &registry("binance"), "binance");
    let mut trade = |t_ms: u64, recv_ns: u64| {
        let frame = format!(r#"{{"e":"trade","E":{t_ms},"s":"BNBUSDT","t":1,"p":"0.001","q":"100","T":{t_ms},"m":true,"M":true}}"#);
        let mut out = Vec::new();
        assert_eq!(feed.on_frame(recv_ns, frame.as_bytes(), &mut |e| out.push(e)), FrameOutcome::Applied);
        let Event::Trade(t) = out[0] else { panic!("{out:?}") };
        t.ts_event
    };
    let (t0, r0) = (1_672_515_782_136u64, 1_672_515_782_140_000_000u64);
    assert_eq!(trade(t0, r0), t0 * 1_000_000);
    assert_eq!(trade(t0 + 3_600_000 + 100, r0 + 100_000_000), (t0 + 100) * 1_000_000, "our clock moved 100 ms");
    assert_eq!(trade(t0 + 200, r0 + 200_000_000), (t0 + 200) * 1_000_000);
    assert_eq!((feed.counters.clock_ahead, feed.counters.skipped()), (1, 0));
}
