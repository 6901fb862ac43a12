//! Feed conformance: the real Binance adapter (`sapphire_gateway::binance::BinanceFeed`) over
//! every real recording in `<data>/recorded/hftbacktest/`, its events applied to the core's
//! order book exactly as the engine applies them.
//!
//! Per file it checks: no frame skipped; the book synced from the recorded REST snapshot;
//! no sequence gap on these gap-free recordings; wherever a bookTicker carries the update
//! id the book has just reached, the book's best bid and ask equal the ticker's. Then every
//! JSON fixture under `<data>/binance` and `<data>/bybit` that holds a stream message parses
//! (Binance or Bybit adapter) to the kind its file name says.
//! Ends with `feed conformance: N passed, M failed` and exits 1 on any failure.
//!
//! Usage: `cargo run --release --example feed_conformance -- <exchange data dir>`

use flate2::read::GzDecoder;
use sapphire_core::book::OrderBook;
use sapphire_core::event::Event;
use sapphire_core::fixed::{Price, Quantity};
use sapphire_core::instrument::{InstrumentRegistry, InstrumentSpec, MarketType};
use sapphire_gateway::binance::market::{parse_frame, BinanceFrame};
use sapphire_gateway::binance::{BinanceFeed, BinanceMarket, FrameOutcome};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

struct FileResult {
    lines: u64,
    events: u64,
    skipped: u64,
    gaps: u64,
    snapshots: u64,
    compared: u64,
    mismatched: u64,
    out_of_sync_after_snapshot: u64,
}

fn check(path: &Path) -> Result<FileResult, String> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let market = if name.contains("usdm") { BinanceMarket::UsdM } else { BinanceMarket::Spot };
    let symbol = if name.contains("ethusdt") { "ETHUSDT" } else { "BTCUSDT" };
    let mut registry = InstrumentRegistry::new();
    registry
        .intern(InstrumentSpec {
            venue: "binance",
            symbol,
            market: MarketType::Spot,
            tick_size: Price::from_raw(1),
            lot_size: Quantity::from_raw(1),
            min_notional: Default::default(),
        })
        .map_err(|e| e.to_string())?;
    let mut feed = BinanceFeed::new(market, &registry, "binance");
    let mut book = OrderBook::with_capacity(2_048);
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let reader = BufReader::new(GzDecoder::new(file));
    let mut r =
        FileResult { lines: 0, events: 0, skipped: 0, gaps: 0, snapshots: 0, compared: 0, mismatched: 0, out_of_sync_after_snapshot: 0 };
    let mut events = 0u64;
    // Spot tickers run ahead of 100 ms depth batches: keep recent ones until the book
    // reaches their update id.
    let mut tickers: std::collections::HashMap<u64, (Price, Quantity, Price, Quantity)> = Default::default();
    let mut ticker_order: std::collections::VecDeque<u64> = Default::default();
    let compare = |r: &mut FileResult, book: &OrderBook, t: (Price, Quantity, Price, Quantity), u: u64, line: u64| {
        r.compared += 1;
        let top = (book.best_bid().map(|l| (l.price, l.qty)), book.best_ask().map(|l| (l.price, l.qty)));
        if top != (Some((t.0, t.1)), Some((t.2, t.3))) {
            r.mismatched += 1;
            if r.mismatched <= 3 {
                eprintln!("  {name}:{line}: book top {top:?} differs from bookTicker u={u} {t:?}");
            }
        }
    };
    for line in reader.lines() {
        let line = line.map_err(|e| format!("{name}: {e}"))?;
        r.lines += 1;
        let Some((recv, frame)) = line.split_once(' ') else {
            r.skipped += 1;
            continue;
        };
        let recv: u64 = recv.parse().unwrap_or(0);
        let before = book.last_update_id();
        let outcome = feed.on_frame(recv, frame.as_bytes(), &mut |e| {
            events += 1;
            if let Event::BookDelta(d) = e {
                book.apply_delta(&d);
            }
        });
        if let FrameOutcome::Skipped(e) = outcome {
            if r.skipped < 3 {
                eprintln!("  {name}:{}: skipped: {e}", r.lines);
            }
        }
        if feed.counters.snapshots > 0 && !book.in_sync() {
            r.out_of_sync_after_snapshot += 1;
        }
        // A bookTicker at exactly the book's update id must show the same top.
        if let Ok(BinanceFrame::BookTicker(t)) = parse_frame(frame.as_bytes()) {
            let parsed =
                (Price::parse_bytes(t.bid.0), Quantity::parse_bytes(t.bid.1), Price::parse_bytes(t.ask.0), Quantity::parse_bytes(t.ask.1));
            if let (Ok(bp), Ok(bq), Ok(ap), Ok(aq)) = parsed {
                if feed.counters.snapshots > 0 && book.in_sync() && t.update_id == book.last_update_id() {
                    let line = r.lines;
                    compare(&mut r, &book, (bp, bq, ap, aq), t.update_id, line);
                } else if t.update_id > book.last_update_id() {
                    tickers.insert(t.update_id, (bp, bq, ap, aq));
                    ticker_order.push_back(t.update_id);
                    if ticker_order.len() > 4_096 {
                        if let Some(old) = ticker_order.pop_front() {
                            tickers.remove(&old);
                        }
                    }
                }
            }
        } else if book.last_update_id() != before && feed.counters.snapshots > 0 && book.in_sync() {
            if let Some(t) = tickers.remove(&book.last_update_id()) {
                let line = r.lines;
                compare(&mut r, &book, t, book.last_update_id(), line);
            }
        }
    }
    r.events = events;
    r.skipped += feed.counters.skipped();
    r.gaps = feed.counters.gaps + book.gaps();
    r.snapshots = feed.counters.snapshots;
    Ok(r)
}

/// What a fixture's name says it holds: `(name part, expected kind)`, first match wins;
/// `None` marks files that are not market-data stream messages (REST listings, accounts).
const BINANCE_KINDS: &[(&str, Option<&str>)] = &[
    // User-data stream messages: not market data, and they mention trades.
    ("execution_report", Some("other")),
    ("order_update", Some("other")),
    ("exchange_info", None),
    ("order_response", None),
    ("new_order", None),
    ("trades_response", None),
    ("agg_trades", None),
    ("market_trades", None),
    ("http_json_book_ticker", None),
    ("market_book_ticker", None),
    ("depth_response", Some("snapshot")),
    ("market_depth", Some("snapshot")),
    ("rest_spot_depth", Some("snapshot")),
    ("partial_depth", Some("snapshot")),
    ("book_ticker", Some("quote")),
    ("bookTicker", Some("quote")),
    ("ticker_book", Some("quote")),
    ("agg_trade", Some("trade")),
    ("aggTrade", Some("trade")),
    ("trade", Some("trade")),
    ("depth", Some("depth")),
    ("kline", Some("other")),
    ("liquidation", Some("other")),
    ("mark_price", Some("other")),
    ("ticker", Some("other")),
];

const BYBIT_KINDS: &[(&str, Option<&str>)] = &[
    // NautilusTrader's fixture uses the topic `trade.linear.BTCUSDT`, which Bybit v5 does not
    // send (it sends `publicTrade.BTCUSDT`): an unknown topic is ignored, as it should be.
    ("ws_public_trade.json", Some("other")),
    ("http_", None),
    ("rest_", None),
    ("orderbook", Some("book")),
    ("public_trade", Some("trades")),
    ("publicTrade", Some("trades")),
    ("ws_trade", Some("trades")),
    ("ticker", Some("ticker")),
    ("subscription", Some("response")),
    ("auth", Some("response")),
    ("order_response", Some("response")),
    ("kline", Some("other")),
];

fn expected(kinds: &[(&str, Option<&'static str>)], name: &str) -> Option<&'static str> {
    kinds.iter().find(|(part, _)| name.contains(part)).and_then(|(_, kind)| *kind)
}

/// Every JSON fixture of `../shared/data/exchange/{binance,bybit}` parses to the kind its name
/// says (stream messages only). Returns (checked, failed).
fn check_fixtures(dir: &Path) -> (u64, u64) {
    use sapphire_gateway::bybit::market::{parse_frame as parse_bybit, BybitFrame};
    let (mut checked, mut failed) = (0u64, 0u64);
    for venue in ["binance", "bybit"] {
        let mut files: Vec<_> = ["docs", "nautilus", "nautilus_py_legacy"]
            .iter()
            .filter_map(|sub| std::fs::read_dir(dir.join(venue).join(sub)).ok())
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for path in files {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            let kinds = if venue == "binance" { BINANCE_KINDS } else { BYBIT_KINDS };
            let Some(want) = expected(kinds, &name) else { continue };
            let Ok(bytes) = std::fs::read(&path) else {
                failed += 1;
                continue;
            };
            let got = if venue == "binance" {
                match parse_frame(&bytes) {
                    Ok(BinanceFrame::BookTicker(_)) => "quote".to_string(),
                    Ok(BinanceFrame::Trade(_)) => "trade".to_string(),
                    Ok(BinanceFrame::Depth(_)) => "depth".to_string(),
                    Ok(BinanceFrame::Snapshot(_)) => "snapshot".to_string(),
                    Ok(BinanceFrame::Response) | Ok(BinanceFrame::Other(_)) => "other".to_string(),
                    Err(e) => format!("error: {e}"),
                }
            } else {
                match parse_bybit(&bytes) {
                    Ok(BybitFrame::Book(_)) => "book".to_string(),
                    Ok(BybitFrame::Trades(t)) => match t.collect::<Result<Vec<_>, _>>() {
                        Ok(v) if !v.is_empty() => "trades".to_string(),
                        Ok(_) => "no trades".to_string(),
                        Err(e) => format!("error: {e}"),
                    },
                    Ok(BybitFrame::Ticker(_)) => "ticker".to_string(),
                    Ok(BybitFrame::Response(_)) => "response".to_string(),
                    Ok(BybitFrame::Other(_)) => "other".to_string(),
                    Err(e) => format!("error: {e}"),
                }
            };
            checked += 1;
            if got != want {
                failed += 1;
                println!("  {venue}/{name}: expected {want}, parsed as {got}");
            }
        }
    }
    (checked, failed)
}

fn main() -> ExitCode {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: feed_conformance <exchange data dir>");
        return ExitCode::from(2);
    };
    let recorded = Path::new(&dir).join("recorded/hftbacktest");
    let mut files: Vec<_> = match std::fs::read_dir(&recorded) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "gz")).collect(),
        Err(e) => {
            eprintln!("feed conformance: cannot read {}: {e}", recorded.display());
            println!("feed conformance: 0 passed, 1 failed");
            return ExitCode::FAILURE;
        }
    };
    files.sort();
    let (mut passed, mut failed) = (0u64, 0u64);
    let mut record = |ok: bool| if ok { passed += 1 } else { failed += 1 };
    let started = Instant::now();
    for path in &files {
        let t = Instant::now();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        match check(path) {
            Ok(r) => {
                // The 0809 spot file continues 0808 without a snapshot of its own.
                let needs_snapshot = !name.contains("20240809");
                println!(
                    "{name}: {} lines, {} events, {} skipped, {} snapshots, {} gaps, {} out-of-sync after snapshot, bookTicker {} compared / {} mismatched ({:.2} s)",
                    r.lines,
                    r.events,
                    r.skipped,
                    r.snapshots,
                    r.gaps,
                    r.out_of_sync_after_snapshot,
                    r.compared,
                    r.mismatched,
                    t.elapsed().as_secs_f64()
                );
                record(r.skipped == 0);
                record(!needs_snapshot || (r.snapshots == 1 && r.gaps == 0 && r.out_of_sync_after_snapshot == 0));
                record(!needs_snapshot || (r.compared > 0 && r.mismatched == 0));
            }
            Err(e) => {
                eprintln!("{name}: {e}");
                record(false);
            }
        }
    }
    let (checked, wrong) = check_fixtures(Path::new(&dir));
    println!("exchange JSON fixtures: {checked} stream messages parsed, {wrong} to the wrong kind");
    record(checked > 0 && wrong == 0);
    eprintln!("feed conformance took {:.2} s", started.elapsed().as_secs_f64());
    println!("feed conformance: {passed} passed, {failed} failed");
    if failed == 0 && passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
