//! `sapphire feed decode`: raw exchange frames in, one normalized JSON object per event out.

use anyhow::Context;
use sapphire_core::book::OrderBook;
use sapphire_core::event::Event;
use sapphire_core::instrument::{InstrumentId, InstrumentRegistry};
use sapphire_gateway::binance::market::{parse_frame, BinanceFrame};
use sapphire_gateway::binance::{BinanceFeed, BinanceMarket, FrameOutcome};
use sapphire_gateway::bybit::market::{parse_frame as parse_bybit, BybitCategory, BybitFrame};
use sapphire_gateway::bybit::BybitFeed;
use sapphire_gateway::feed::ms_to_ns;
use sapphire_gateway::json::Levels;
use std::fmt::Write as _;
use std::io::{BufRead, Write};

/// Which venue and market the frames come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Binance spot or USD-M.
    Binance(BinanceMarket),
    /// Bybit v5 spot or linear.
    Bybit(BybitCategory),
}

impl Source {
    /// From `--venue` and `--market`.
    pub fn parse(venue: &str, market: Option<&str>) -> anyhow::Result<Self> {
        match (venue, market) {
            ("binance", None | Some("spot")) => Ok(Source::Binance(BinanceMarket::Spot)),
            ("binance", Some("usdm" | "futures")) => Ok(Source::Binance(BinanceMarket::UsdM)),
            ("binance", Some(m)) => Err(crate::config::refuse("--market", format!("{m:?}: binance markets are spot and usdm"))),
            ("bybit", None | Some("linear")) => Ok(Source::Bybit(BybitCategory::Linear)),
            ("bybit", Some("spot")) => Ok(Source::Bybit(BybitCategory::Spot)),
            ("bybit", Some(m)) => Err(crate::config::refuse("--market", format!("{m:?}: bybit markets are spot and linear"))),
            (v, _) => Err(crate::config::refuse("--venue", format!("{v:?}: venues are binance and bybit"))),
        }
    }
}

/// One non-empty input line.
enum Line {
    /// `(line number, recv_ns or 0, frame)`.
    Frame(usize, u64, String),
    /// A line that is not UTF-8: skipped and counted, like `replay` does, and reading goes on.
    NotUtf8(usize),
}

/// The non-empty input lines.
fn frame_lines(input: impl BufRead) -> impl Iterator<Item = anyhow::Result<Line>> {
    input.split(b'\n').enumerate().filter_map(|(n, line)| {
        let line_no = n + 1;
        let line = match line.with_context(|| format!("reading input line {line_no}")) {
            Err(e) => return Some(Err(e)),
            Ok(line) => line,
        };
        match String::from_utf8(line) {
            Err(_) => Some(Ok(Line::NotUtf8(line_no))),
            Ok(line) if line.trim().is_empty() => None,
            Ok(line) => {
                let (recv, frame) = split_recv(line.trim());
                Some(Ok(Line::Frame(line_no, recv.unwrap_or(0), frame.to_string())))
            }
        }
    })
}

/// The next frame of `lines`, or `None` after a line that was counted as skipped.
fn next_frame(line: anyhow::Result<Line>, skipped: &mut u64, errors: &mut impl Write) -> anyhow::Result<Option<(usize, u64, String)>> {
    match line? {
        Line::Frame(n, recv, frame) => Ok(Some((n, recv, frame))),
        Line::NotUtf8(n) => {
            *skipped += 1;
            writeln!(errors, "line {n}: skipped: not UTF-8")?;
            Ok(None)
        }
    }
}

/// A venue's millisecond time as the feed converts it (the frame was accepted by the feed, so
/// it is in range; a frame it refused never gets here).
fn ns(ms: u64) -> u64 {
    ms_to_ns("T", ms).unwrap_or_default()
}

/// Splits an optional `<recv_ns> ` prefix off a line.
fn split_recv(line: &str) -> (Option<u64>, &str) {
    match line.split_once(' ') {
        Some((n, rest)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => (n.parse().ok(), rest.trim_start()),
        _ => (None, line),
    }
}

fn text(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or("")
}

use sapphire_persistence::text::json_str;

fn levels(out: &mut String, name: &str, levels: Levels<'_>) {
    let _ = write!(out, ",\"{name}\":[");
    for (i, level) in levels.enumerate() {
        let Ok((p, q)) = level else { continue };
        if i > 0 {
            out.push(',');
        }
        out.push('[');
        json_str(out, text(p));
        out.push(',');
        json_str(out, text(q));
        out.push(']');
    }
    out.push(']');
}

/// The book each symbol has after the frames so far (with `--book`).
struct Books {
    feed: BinanceFeed,
    books: Vec<OrderBook>,
    last_depth: Option<InstrumentId>,
}

impl Books {
    fn apply(&mut self, recv: u64, frame: &[u8], instrument: Option<InstrumentId>, snapshot: bool) -> Result<(), String> {
        let books = &mut self.books;
        let mut apply = |e: Event| {
            if let Event::BookDelta(d) = e {
                let i = d.instrument.index();
                if books.len() <= i {
                    books.resize_with(i + 1, OrderBook::default);
                }
                books[i].apply_delta(&d);
            }
        };
        let outcome =
            if snapshot { self.feed.on_snapshot(instrument, recv, frame, &mut apply) } else { self.feed.on_frame(recv, frame, &mut apply) };
        match outcome {
            FrameOutcome::Skipped(e) => Err(e.to_string()),
            _ => Ok(()),
        }
    }

    fn top(&self, out: &mut String, instrument: InstrumentId) {
        top_of(out, self.books.get(instrument.index()), self.feed.in_sync(instrument));
    }
}

/// Appends the book's top and sync state to a book event.
fn top_of(out: &mut String, book: Option<&OrderBook>, feed_in_sync: bool) {
    let Some(book) = book else {
        out.push_str(",\"book_bid_px\":null,\"book_bid_qty\":null,\"book_ask_px\":null,\"book_ask_qty\":null,\"in_sync\":false");
        return;
    };
    for (name, level) in [("bid", book.best_bid()), ("ask", book.best_ask())] {
        match level {
            Some(l) => {
                let _ = write!(
                    out,
                    ",\"book_{name}_px\":\"{}\",\"book_{name}_qty\":\"{}\"",
                    trim(&l.price.to_string()),
                    trim(&l.qty.to_string())
                );
            }
            None => {
                let _ = write!(out, ",\"book_{name}_px\":null,\"book_{name}_qty\":null");
            }
        }
    }
    let _ = write!(out, ",\"in_sync\":{}", book.in_sync() && feed_in_sync);
}

/// Bybit: books and trades are written from the frame's own text; quotes come from the
/// adapter, which merges ticker deltas into a full best bid and ask.
fn decode_bybit(
    category: BybitCategory,
    with_book: bool,
    input: impl BufRead,
    mut output: impl Write,
    mut errors: impl Write,
) -> anyhow::Result<(u64, u64)> {
    let venue = match category {
        BybitCategory::Spot => "bybit",
        BybitCategory::Linear => "bybit-linear",
    };
    let mut feed = BybitFeed::new(category, &InstrumentRegistry::new(), venue);
    let mut books: Vec<OrderBook> = Vec::new();
    let (mut written, mut skipped) = (0u64, 0u64);
    let mut out = String::with_capacity(4_096);
    let head = |out: &mut String, kind: &str, symbol: &str, ts: u64| {
        out.clear();
        let _ = write!(out, "{{\"kind\":\"{kind}\",\"venue\":");
        json_str(out, venue);
        out.push_str(",\"symbol\":");
        json_str(out, symbol);
        let _ = write!(out, ",\"ts_event\":{ts}");
    };
    for line in frame_lines(input) {
        let Some((line_no, recv, frame)) = next_frame(line, &mut skipped, &mut errors)? else { continue };
        let frame = frame.as_str();
        let parsed = match parse_bybit(frame.as_bytes()) {
            Ok(f) => f,
            Err(e) => {
                skipped += 1;
                writeln!(errors, "line {line_no}: skipped: {e}")?;
                continue;
            }
        };
        let symbol = match &parsed {
            BybitFrame::Book(b) => Some(b.symbol),
            BybitFrame::Ticker(t) => Some(t.symbol),
            BybitFrame::Trades(t) => t.clone().next().and_then(Result::ok).map(|t| t.symbol),
            _ => None,
        };
        let instrument = symbol.map(|s| feed.ensure_symbol(s));
        let mut quotes = Vec::new();
        let outcome = feed.on_frame(recv, frame.as_bytes(), &mut |e| match e {
            Event::BookDelta(d) => {
                let i = d.instrument.index();
                if books.len() <= i {
                    books.resize_with(i + 1, OrderBook::default);
                }
                books[i].apply_delta(&d);
            }
            Event::Quote(q) => quotes.push(q),
            _ => {}
        });
        if let FrameOutcome::Skipped(e) = outcome {
            skipped += 1;
            writeln!(errors, "line {line_no}: skipped: {e}")?;
            continue;
        }
        match parsed {
            BybitFrame::Book(b) => {
                let kind = if b.resets() { "book_snapshot" } else { "book_delta" };
                head(&mut out, kind, b.symbol, ns(b.time_ms()));
                let _ = write!(out, ",\"first_id\":{},\"last_id\":{},\"prev_id\":null", b.update_id, b.update_id);
                levels(&mut out, "bids", b.bids.clone());
                levels(&mut out, "asks", b.asks.clone());
                if with_book {
                    let inst = instrument.unwrap_or_default();
                    top_of(&mut out, books.get(inst.index()), feed.in_sync(inst));
                }
                out.push('}');
                writeln!(output, "{out}")?;
                written += 1;
            }
            BybitFrame::Trades(trades) => {
                for t in trades.flatten() {
                    head(&mut out, "trade", t.symbol, ns(t.time_ms));
                    out.push_str(",\"px\":");
                    json_str(&mut out, text(t.price));
                    out.push_str(",\"qty\":");
                    json_str(&mut out, text(t.qty));
                    let side = if t.taker_side == sapphire_core::event::Side::Buy { "buy" } else { "sell" };
                    let _ = write!(out, ",\"side\":\"{side}\",\"trade_id\":{}}}", t.trade_id);
                    writeln!(output, "{out}")?;
                    written += 1;
                }
            }
            BybitFrame::Ticker(t) => {
                for q in quotes {
                    head(&mut out, "quote", t.symbol, q.ts_event);
                    let _ = write!(
                        out,
                        ",\"bid_px\":\"{}\",\"bid_qty\":\"{}\",\"ask_px\":\"{}\",\"ask_qty\":\"{}\"}}",
                        trim(&q.bid_price.to_string()),
                        trim(&q.bid_qty.to_string()),
                        trim(&q.ask_price.to_string()),
                        trim(&q.ask_qty.to_string())
                    );
                    writeln!(output, "{out}")?;
                    written += 1;
                }
            }
            BybitFrame::Response(_) | BybitFrame::Other(_) => {}
        }
    }
    output.flush()?;
    Ok((written, skipped))
}

/// `61837.630000000` → `61837.63`; `1.000` → `1`.
fn trim(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// Reads frames from `input`, writes events to `output`, reports bad lines to `errors`.
/// Returns (events written, lines skipped).
pub fn decode(source: Source, with_book: bool, input: impl BufRead, output: impl Write, errors: impl Write) -> anyhow::Result<(u64, u64)> {
    match source {
        Source::Binance(market) => decode_binance(market, with_book, input, output, errors),
        Source::Bybit(category) => decode_bybit(category, with_book, input, output, errors),
    }
}

fn decode_binance(
    market: BinanceMarket,
    with_book: bool,
    input: impl BufRead,
    mut output: impl Write,
    mut errors: impl Write,
) -> anyhow::Result<(u64, u64)> {
    let venue = match market {
        BinanceMarket::Spot => "binance",
        BinanceMarket::UsdM => "binance-usdm",
    };
    // Every frame goes through the feed adapter, book or not: validation never depends on the
    // output mode. The book's top is printed only with `--book`.
    let mut b = Books { feed: BinanceFeed::new(market, &InstrumentRegistry::new(), venue), books: Vec::new(), last_depth: None };
    let mut last_depth_symbol: Option<String> = None;
    let (mut written, mut skipped) = (0u64, 0u64);
    let mut out = String::with_capacity(4_096);
    for line in frame_lines(input) {
        let Some((line_no, recv, frame)) = next_frame(line, &mut skipped, &mut errors)? else { continue };
        let frame = frame.as_str();
        let parsed = match parse_frame(frame.as_bytes()) {
            Ok(f) => f,
            Err(e) => {
                skipped += 1;
                writeln!(errors, "line {line_no}: skipped: {e}")?;
                continue;
            }
        };
        out.clear();
        let ok = match &parsed {
            BinanceFrame::BookTicker(t) => {
                out.push_str("{\"kind\":\"quote\",\"venue\":");
                json_str(&mut out, venue);
                out.push_str(",\"symbol\":");
                json_str(&mut out, t.symbol);
                let _ = write!(out, ",\"ts_event\":{}", t.time_ms.map_or(recv, ns));
                for (k, v) in [("bid_px", t.bid.0), ("bid_qty", t.bid.1), ("ask_px", t.ask.0), ("ask_qty", t.ask.1)] {
                    let _ = write!(out, ",\"{k}\":");
                    json_str(&mut out, text(v));
                }
                out.push('}');
                true
            }
            BinanceFrame::Trade(t) => {
                out.push_str("{\"kind\":\"trade\",\"venue\":");
                json_str(&mut out, venue);
                out.push_str(",\"symbol\":");
                json_str(&mut out, t.symbol);
                let _ = write!(out, ",\"ts_event\":{},\"px\":", ns(t.time_ms));
                json_str(&mut out, text(t.price));
                out.push_str(",\"qty\":");
                json_str(&mut out, text(t.qty));
                let _ = write!(out, ",\"side\":\"{}\",\"trade_id\":{}}}", if t.buyer_is_maker { "sell" } else { "buy" }, t.trade_id);
                true
            }
            BinanceFrame::Depth(d) => {
                last_depth_symbol = Some(d.symbol.to_string());
                out.push_str("{\"kind\":\"book_delta\",\"venue\":");
                json_str(&mut out, venue);
                out.push_str(",\"symbol\":");
                json_str(&mut out, d.symbol);
                let _ = write!(out, ",\"ts_event\":{},\"first_id\":{},\"last_id\":{},\"prev_id\":", ns(d.time_ms), d.first_id, d.last_id);
                match d.prev_id {
                    Some(p) => {
                        let _ = write!(out, "{p}");
                    }
                    None => out.push_str("null"),
                }
                levels(&mut out, "bids", d.bids.clone());
                levels(&mut out, "asks", d.asks.clone());
                true
            }
            BinanceFrame::Snapshot(s) => {
                out.push_str("{\"kind\":\"book_snapshot\",\"venue\":");
                json_str(&mut out, venue);
                out.push_str(",\"symbol\":");
                match &last_depth_symbol {
                    Some(sym) => json_str(&mut out, sym),
                    None => out.push_str("null"),
                }
                let _ = write!(
                    out,
                    ",\"ts_event\":{},\"first_id\":{},\"last_id\":{},\"prev_id\":null",
                    s.time_ms.map_or(recv, ns),
                    s.last_update_id,
                    s.last_update_id
                );
                levels(&mut out, "bids", s.bids.clone());
                levels(&mut out, "asks", s.asks.clone());
                true
            }
            BinanceFrame::Response | BinanceFrame::Other(_) => false,
        };
        if !ok {
            continue;
        }
        let is_book = matches!(parsed, BinanceFrame::Depth(_) | BinanceFrame::Snapshot(_));
        let instrument = match &parsed {
            BinanceFrame::Depth(d) => Some(b.feed.ensure_symbol(d.symbol)),
            BinanceFrame::BookTicker(t) => Some(b.feed.ensure_symbol(t.symbol)),
            BinanceFrame::Trade(t) => Some(b.feed.ensure_symbol(t.symbol)),
            _ => None,
        };
        if let BinanceFrame::Depth(_) = parsed {
            b.last_depth = instrument;
        }
        let snapshot = matches!(parsed, BinanceFrame::Snapshot(_));
        let target = if snapshot { b.last_depth } else { instrument };
        if let Err(e) = b.apply(recv, frame.as_bytes(), target, snapshot) {
            skipped += 1;
            writeln!(errors, "line {line_no}: skipped: {e}")?;
            continue;
        }
        if is_book {
            if with_book {
                match target {
                    Some(t) => b.top(&mut out, t),
                    None => out.push_str(",\"in_sync\":false"),
                }
            }
            out.push('}');
        }
        writeln!(output, "{out}")?;
        written += 1;
    }
    output.flush()?;
    Ok((written, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_bybit_books_trades_and_merged_tickers() {
        let input = concat!(
            r#"{"topic":"orderbook.50.BTCUSDT","type":"snapshot","ts":1672304484978,"data":{"s":"BTCUSDT","b":[["16493.50","0.006"]],"a":[["16611.00","0.029"]],"u":18521288,"seq":7961638724},"cts":1672304484976}"#,
            "\n",
            r#"{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1672304484979,"data":{"s":"BTCUSDT","b":[["16493.60","1"]],"a":[],"u":18521289,"seq":7961638725},"cts":1672304484977}"#,
            "\n",
            r#"{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1672304486868,"data":[{"T":1672304486865,"s":"BTCUSDT","S":"Buy","v":"0.001","p":"16578.50","L":"PlusTick","i":"20f43950-d8dd-5b31-9112-a178eb6023af","BT":false}]}"#,
            "\n",
            r#"{"topic":"tickers.BTCUSDT","type":"snapshot","data":{"symbol":"BTCUSDT","bid1Price":"16578.50","bid1Size":"1.2","ask1Price":"16578.60","ask1Size":"3.4"},"cs":1,"ts":1673272861686}"#,
            "\n",
            r#"{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT","ask1Size":"2.5"},"cs":2,"ts":1673272861687}"#,
            "\n",
            r#"{"success":true,"ret_msg":"","conn_id":"x","op":"subscribe"}"#,
            "\n",
        );
        let (mut out, mut err) = (Vec::new(), Vec::new());
        decode(Source::Bybit(BybitCategory::Linear), true, input.as_bytes(), &mut out, &mut err).unwrap();
        let lines: Vec<String> = String::from_utf8(out).unwrap().lines().map(String::from).collect();
        assert!(String::from_utf8(err).unwrap().is_empty());
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert!(
            lines[0].starts_with(
                r#"{"kind":"book_snapshot","venue":"bybit-linear","symbol":"BTCUSDT","ts_event":1672304484976000000,"first_id":18521288"#
            ),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains(r#""book_bid_px":"16493.6","book_bid_qty":"1""#) && lines[1].ends_with(r#""in_sync":true}"#),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].contains(r#""kind":"trade""#) && lines[2].contains(r#""side":"buy""#) && lines[2].contains(r#""px":"16578.50""#),
            "{}",
            lines[2]
        );
        assert!(
            lines[4].ends_with(r#""bid_px":"16578.5","bid_qty":"1.2","ask_px":"16578.6","ask_qty":"2.5"}"#),
            "the delta merged: {}",
            lines[4]
        );
    }

    fn run(input: &str, book: bool) -> (Vec<String>, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        decode(Source::Binance(BinanceMarket::Spot), book, input.as_bytes(), &mut out, &mut err).unwrap();
        (String::from_utf8(out).unwrap().lines().map(String::from).collect(), String::from_utf8(err).unwrap())
    }

    #[test]
    fn decodes_each_kind_with_exact_decimal_text() {
        let input = concat!(
            r#"1700000000000000000 {"u":400900217,"s":"BNBUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000","A":"40.66000000"}"#,
            "\n",
            r#"{"stream":"bnbusdt@trade","data":{"e":"trade","E":1,"s":"BNBUSDT","t":12345,"p":"0.001","q":"100","T":1672515782136,"m":true}}"#,
            "\n",
            r#"{"e":"depthUpdate","E":1672515782136,"s":"BNBUSDT","U":157,"u":160,"b":[["0.0024","10"]],"a":[["0.0026","100"]]}"#,
            "\n",
            "garbage\n",
            r#"{"result":null,"id":1}"#,
            "\n"
        );
        let (lines, err) = run(input, false);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(
            lines[0],
            r#"{"kind":"quote","venue":"binance","symbol":"BNBUSDT","ts_event":1700000000000000000,"bid_px":"25.35190000","bid_qty":"31.21000000","ask_px":"25.36520000","ask_qty":"40.66000000"}"#
        );
        assert_eq!(
            lines[1],
            r#"{"kind":"trade","venue":"binance","symbol":"BNBUSDT","ts_event":1672515782136000000,"px":"0.001","qty":"100","side":"sell","trade_id":12345}"#
        );
        assert_eq!(
            lines[2],
            r#"{"kind":"book_delta","venue":"binance","symbol":"BNBUSDT","ts_event":1672515782136000000,"first_id":157,"last_id":160,"prev_id":null,"bids":[["0.0024","10"]],"asks":[["0.0026","100"]]}"#
        );
        assert!(err.contains("line 4: skipped: malformed JSON"), "{err}");
    }

    #[test]
    fn with_book_it_syncs_from_the_snapshot_line() {
        let input = concat!(
            r#"{"e":"depthUpdate","E":1,"s":"BNBUSDT","U":157,"u":160,"b":[["0.0024","10"]],"a":[["0.0026","100"]]}"#,
            "\n",
            r#"{"lastUpdateId":158,"bids":[["0.0023","1"]],"asks":[["0.0027","2"]]}"#,
            "\n",
            r#"{"e":"depthUpdate","E":2,"s":"BNBUSDT","U":161,"u":161,"b":[["0.0024","0"]],"a":[]}"#,
            "\n",
        );
        let (lines, err) = run(input, true);
        assert!(err.is_empty(), "{err}");
        assert!(
            lines[0].ends_with(r#""book_bid_px":null,"book_bid_qty":null,"book_ask_px":null,"book_ask_qty":null,"in_sync":false}"#),
            "{}",
            lines[0]
        );
        // The snapshot, then the buffered 157-160 bracketing 159: best bid 0.0024.
        assert!(lines[1].starts_with(r#"{"kind":"book_snapshot","venue":"binance","symbol":"BNBUSDT""#), "{}", lines[1]);
        assert!(
            lines[1].ends_with(r#""book_bid_px":"0.0024","book_bid_qty":"10","book_ask_px":"0.0026","book_ask_qty":"100","in_sync":true}"#),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains(r#""book_bid_px":"0.0023","book_bid_qty":"1""#), "{}", lines[2]);
    }

    fn run_on(source: Source, input: &[u8], book: bool) -> (Vec<String>, String, (u64, u64)) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let counts = decode(source, book, input, &mut out, &mut err).unwrap();
        (String::from_utf8(out).unwrap().lines().map(String::from).collect(), String::from_utf8(err).unwrap(), counts)
    }

    #[test]
    fn the_four_line_frozen_book_repro_ends_out_of_sync() {
        for (market, pu) in [(BinanceMarket::UsdM, true), (BinanceMarket::Spot, false)] {
            let pu = |p: u64| if pu { format!(r#","pu":{p}"#) } else { String::new() };
            let input = format!(
                "{}\n{}\n{}\n{}\n",
                format_args!(
                    r#"{{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":100,"u":110{},"b":[["100.0","1"]],"a":[["101.0","1"]]}}"#,
                    pu(99)
                ),
                r#"{"lastUpdateId":105,"bids":[["99.0","1"]],"asks":[["102.0","1"]]}"#,
                format_args!(r#"{{"e":"depthUpdate","E":2,"s":"BTCUSDT","U":111,"u":910000{},"b":[],"a":[]}}"#, pu(110)),
                format_args!(
                    r#"{{"e":"depthUpdate","E":3,"s":"BTCUSDT","U":911,"u":920{},"b":[["100.0","0"]],"a":[["101.0","0"]]}}"#,
                    pu(910)
                ),
            );
            let (lines, err, _) = run_on(Source::Binance(market), input.as_bytes(), true);
            assert!(err.is_empty(), "{err}");
            assert!(lines[2].ends_with(r#""in_sync":true}"#), "{market:?}: {}", lines[2]);
            assert!(lines[3].ends_with(r#""in_sync":false}"#), "{market:?}: the book says it lost its place: {}", lines[3]);
        }
    }

    #[test]
    fn validation_is_the_same_with_and_without_the_book() {
        let input = concat!(
            r#"{"e":"bookTicker","u":5,"E":1,"T":1,"s":"BTCUSDT","b":"25.3","B":"NaN","a":"1e400","A":"-5"}"#,
            "\n",
            r#"{"e":"bookTicker","u":5,"E":1,"T":1,"s":"BTCUSDT","b":"25.3","B":"1","a":"25.4","A":"-5"}"#,
            "\n",
            r#"{"e":"bookTicker","u":5,"E":1,"T":1,"s":"BTCUSDT","b":"25.5","B":"1","a":"25.4","A":"1"}"#,
            "\n",
            r#"{"e":"bookTicker","u":5,"E":1,"T":1,"s":"BTCUSDT","b":"25.3","B":31,"a":"25.4","A":"1"}"#,
            "\n",
            r#"{"e":"bookTicker","E":1,"T":1,"s":"BTCUSDT","b":"25.3","B":"1","a":"25.4","A":"1"}"#,
            "\n",
            r#"{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"-1","q":"1","T":1,"m":true}"#,
            "\n",
            r#"{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"0","q":"1","T":1,"m":true}"#,
            "\n",
            r#"{"e":"trade","E":1,"s":"","t":1,"p":"1","q":"1","T":1,"m":true}"#,
            "\n",
            r#"{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"1","q":"1","T":18446744073710,"m":true}"#,
            "\n",
            r#"{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":1,"u":2,"pu":0,"b":[["-1","1"]],"a":[]}"#,
            "\n",
            r#"{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"1","q":"1","T":1,"m":true}"#,
            "\n",
        );
        for book in [false, true] {
            let (lines, err, counts) = run_on(Source::Binance(BinanceMarket::UsdM), input.as_bytes(), book);
            assert_eq!(counts, (1, 10), "book {book}: {lines:?} {err}");
            assert!(lines[0].contains(r#""kind":"trade""#) && lines[0].contains(r#""ts_event":1000000,"#), "{}", lines[0]);
            assert!(!err.contains("448384"));
            for n in 1..=10 {
                assert!(err.contains(&format!("line {n}: skipped: ")), "book {book}: line {n} not reported: {err}");
            }
        }
    }

    #[test]
    fn a_line_that_is_not_utf8_is_skipped_and_reading_goes_on() {
        let mut input = b"\xff\xfe{\"e\":\"trade\"}\n".to_vec();
        input.extend_from_slice(br#"{"e":"trade","E":1,"s":"BTCUSDT","t":7,"p":"1","q":"1","T":1,"m":true}"#);
        input.push(b'\n');
        for source in [Source::Binance(BinanceMarket::Spot), Source::Bybit(BybitCategory::Linear)] {
            let (lines, err, counts) = run_on(source, &input, false);
            assert!(err.contains("line 1: skipped: not UTF-8"), "{err}");
            let written = if matches!(source, Source::Binance(_)) { 1 } else { 0 };
            assert_eq!((counts, lines.len() as u64), ((written, if written == 1 { 1 } else { 2 }), written), "{source:?}: {err}");
        }
    }
}
