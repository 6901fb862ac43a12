//! Feed parsing: Binance bookTicker and trade frames into core events, against a serde_json
//! borrowed-struct baseline doing the same work (parse, exact fixed-point, build the event),
//! in the same run; and depth-delta apply latency on a 1,000-level book.
//!
//! Frames come from `../shared/data/exchange/recorded` when present (real recordings), else
//! from the documentation-style frames below. Run:
//! `cargo bench -p sapphire-benches --bench feed` (add `-- --quick` for a short run).

use flate2::read::GzDecoder;
use hdrhistogram::Histogram;
use sapphire_core::book::OrderBook;
use sapphire_core::event::{BookDelta, Event, Quote, Side, Trade, DELTA_LAST};
use sapphire_core::fixed::{Price, Quantity};
use sapphire_core::instrument::{InstrumentId, InstrumentRegistry, InstrumentSpec, MarketType};
use sapphire_gateway::binance::{BinanceFeed, BinanceMarket};
use serde::Deserialize;
use std::io::BufRead;
use std::time::Instant;

/// The baseline: serde_json into a borrowed struct with every field optional (one pass, like
/// ours), then the same exact fixed-point conversion into the same event.
#[derive(Deserialize, Default)]
struct Payload<'a> {
    #[serde(borrow)]
    e: Option<&'a str>,
    #[serde(rename = "T")]
    time: Option<u64>,
    #[serde(borrow)]
    s: Option<&'a str>,
    u: Option<u64>,
    t: Option<u64>,
    #[serde(borrow)]
    p: Option<&'a str>,
    #[serde(borrow)]
    q: Option<&'a str>,
    m: Option<bool>,
    #[serde(borrow)]
    b: Option<&'a str>,
    #[serde(rename = "B", borrow)]
    bq: Option<&'a str>,
    #[serde(borrow)]
    a: Option<&'a str>,
    #[serde(rename = "A", borrow)]
    aq: Option<&'a str>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    data: Payload<'a>,
}

fn baseline(frame: &[u8], recv: u64) -> Option<Event> {
    let f = serde_json::from_slice::<Envelope<'_>>(frame).ok()?.data;
    let _ = (f.s?, f.u);
    match f.e {
        Some("trade") => Some(Event::Trade(Trade {
            ts_event: f.time? * 1_000_000,
            ts_recv: recv,
            instrument: InstrumentId(0),
            aggressor: if f.m? { Side::Sell } else { Side::Buy },
            _pad: [0; 3],
            price: Price::parse(f.p?).ok()?,
            qty: Quantity::parse_unsigned(f.q?).ok()?,
            trade_id: f.t?,
        })),
        _ => Some(Event::Quote(Quote {
            ts_event: f.time.map_or(recv, |t| t * 1_000_000),
            ts_recv: recv,
            instrument: InstrumentId(0),
            _pad: 0,
            bid_price: Price::parse(f.b?).ok()?,
            ask_price: Price::parse(f.a?).ok()?,
            bid_qty: Quantity::parse_unsigned(f.bq?).ok()?,
            ask_qty: Quantity::parse_unsigned(f.aq?).ok()?,
        })),
    }
}

fn frames() -> (Vec<Vec<u8>>, &'static str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/exchange/recorded/hftbacktest/binance_usdm_btcusdt_20240808.gz");
    if let Ok(file) = std::fs::File::open(&path) {
        let mut out = Vec::new();
        for line in std::io::BufReader::new(GzDecoder::new(file)).lines().map_while(Result::ok) {
            if let Some((_, json)) = line.split_once(' ') {
                if json.contains("@bookTicker") || json.contains("@trade") {
                    out.push(json.as_bytes().to_vec());
                }
            }
        }
        if !out.is_empty() {
            return (out, "recorded Binance USD-M BTCUSDT bookTicker + trade frames");
        }
    }
    let ticker = r#"{"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","u":5123043530040,"s":"BTCUSDT","b":"61650.20","B":"3.184","a":"61650.30","A":"4.372","T":1723161255999,"E":1723161256000}}"#;
    let trade = r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161256001,"T":1723161256000,"s":"BTCUSDT","t":5179394370,"p":"61650.30","q":"0.002","X":"MARKET","m":false}}"#;
    ((0..100_000).map(|i| if i % 3 == 0 { trade } else { ticker }.as_bytes().to_vec()).collect(), "documentation-style frames")
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (frames, source) = frames();
    let rounds = if quick { 3 } else { 10 };
    eprintln!("feed bench: {} frames ({source}), {rounds} rounds", frames.len());
    let mut reg = InstrumentRegistry::new();
    reg.intern(InstrumentSpec {
        venue: "binance",
        symbol: "BTCUSDT",
        market: MarketType::LinearPerpetual,
        tick_size: Price::from_raw(1),
        lot_size: Quantity::from_raw(1),
        min_notional: Default::default(),
    })
    .expect("instrument");
    let mut feed = BinanceFeed::new(BinanceMarket::UsdM, &reg, "binance");
    let (mut ours_best, mut base_best) = (f64::MAX, f64::MAX);
    let (mut ours_events, mut base_events) = (0u64, 0u64);
    for _ in 0..rounds {
        let t = Instant::now();
        let mut n = 0u64;
        for f in &frames {
            feed.on_frame(1, f, &mut |e| {
                std::hint::black_box(e);
                n += 1;
            });
        }
        ours_best = ours_best.min(t.elapsed().as_secs_f64());
        ours_events = n;
        let t = Instant::now();
        let mut n = 0u64;
        for f in &frames {
            if let Some(e) = baseline(f, 1) {
                std::hint::black_box(e);
                n += 1;
            }
        }
        base_best = base_best.min(t.elapsed().as_secs_f64());
        base_events = n;
    }
    assert_eq!(ours_events, base_events, "both sides produce the same events");
    let ours = frames.len() as f64 / ours_best;
    let base = frames.len() as f64 / base_best;

    // Depth apply on a 1,000-level book: deltas near the top, as real feeds send them.
    let mut book = OrderBook::with_capacity(2_048);
    for i in 0..1_000i64 {
        book.set_level(Side::Buy, Price::from_units(50_000 - i), Quantity::from_units(1));
        book.set_level(Side::Sell, Price::from_units(50_001 + i), Quantity::from_units(1));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 1_000_000_000, 2).expect("bounds");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let updates = if quick { 200_000 } else { 2_000_000 };
    for i in 0..updates {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let depth = (x % 64) as i64;
        let side = if x & 1 == 0 { Side::Buy } else { Side::Sell };
        let price = match side {
            Side::Buy => Price::from_units(50_000 - depth),
            Side::Sell => Price::from_units(50_001 + depth),
        };
        let qty = if x % 10 == 0 { Quantity::ZERO } else { Quantity::from_raw((x % 1_000_000) as i64 + 1) };
        let d = BookDelta { side, price, qty, flags: DELTA_LAST, last_update_id: i + 1, prev_update_id: i, ..BookDelta::default() };
        let t = Instant::now();
        book.apply_delta(&d);
        let _ = hist.record((t.elapsed().as_nanos() as u64).max(1));
        // Keep the book full: removed levels come back.
        if qty.is_zero() {
            book.set_level(side, price, Quantity::from_units(1));
        }
    }
    println!("{:<36} {:>14} {:>10}", "case", "msgs/s", "");
    println!("{:<36} {:>14.0}", "binance_parse_ours", ours);
    println!("{:<36} {:>14.0}", "binance_parse_serde_json_baseline", base);
    println!("ratio parse_ours_vs_serde_json (ours ÷ theirs, throughput): {:.2}", ours / base);
    println!(
        "depth_apply_1000_levels: p50 {}ns p99 {}ns p99.9 {}ns max {}ns ({} updates, incl. ~20-30 ns of clock reads)",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max(),
        hist.len()
    );
    println!(
        "{{\"cases\":[{{\"name\":\"binance_parse_ours\",\"events_per_sec\":{ours:.0}}},{{\"name\":\"binance_parse_serde_json\",\"events_per_sec\":{base:.0}}},{{\"name\":\"depth_apply_1000_levels\",\"p50_ns\":{},\"p99_ns\":{},\"p999_ns\":{},\"max_ns\":{}}}],\"ratios\":{{\"parse_ours_vs_serde_json\":{:.3}}}}}",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max(),
        ours / base
    );
}
