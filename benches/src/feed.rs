//! Feed parsing: Binance bookTicker and trade frames into core events, against a serde_json
//! borrowed-struct baseline doing the same work (parse, exact fixed-point, build the event),
//! in the same run; and depth-delta apply latency on a 1,000-level book.
//!
//! Frames come from `../shared/data/exchange/recorded` when present (real recordings), else
//! from the project's fixture (`gateway/tests/fixtures`), else from documentation frames.

use crate::case::{histogram, record, Case, Group};
use crate::lab::Lab;
use flate2::read::GzDecoder;
use sapphire_core::book::OrderBook;
use sapphire_core::event::{BookDelta, Event, Quote, Side, Trade, DELTA_LAST};
use sapphire_core::fixed::{Price, Quantity};
use sapphire_core::instrument::{InstrumentId, InstrumentRegistry, InstrumentSpec, MarketType};
use sapphire_gateway::binance::{BinanceFeed, BinanceMarket};
use serde::Deserialize;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The baseline's view of a frame: serde_json into a borrowed struct with every field
/// optional (one pass, like ours).
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

/// The serde_json baseline: the same event ours produces, or `None`.
pub fn baseline(frame: &[u8], recv: u64) -> Option<Event> {
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

/// The recorded Binance USD-M BTCUSDT file, if the shared data is beside the repository.
pub fn recorded_path() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let p = root.join("../shared/data/exchange/recorded/hftbacktest/binance_usdm_btcusdt_20240808.gz");
    p.is_file().then_some(p)
}

/// The recorded Binance spot BTCUSDT file (depth@100ms), if the shared data is beside the
/// repository.
pub fn recorded_spot_path() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let p = root.join("../shared/data/exchange/recorded/hftbacktest/binance_spot_btcusdt_20240808.gz");
    p.is_file().then_some(p)
}

/// The project's own recorded fixture (Binance spot BTCUSDT, `<recv_ns> <json>` lines).
pub fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/tests/fixtures/binance_spot_btcusdt.txt")
}

/// bookTicker and trade frames (the JSON after the receive time), and where they came from.
pub fn frames() -> (Vec<Vec<u8>>, String) {
    let keep = |json: &str| json.contains("@bookTicker") || json.contains("@trade");
    let read = |path: &Path| -> Vec<Vec<u8>> {
        let Ok(file) = std::fs::File::open(path) else { return Vec::new() };
        let lines: Box<dyn BufRead> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(std::io::BufReader::new(GzDecoder::new(file)))
        } else {
            Box::new(std::io::BufReader::new(file))
        };
        lines
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| l.split_once(' ').map(|(_, j)| j.to_string()))
            .filter(|j| keep(j))
            .map(String::into_bytes)
            .collect()
    };
    if let Some(p) = recorded_path() {
        let f = read(&p);
        if !f.is_empty() {
            return (f, "recorded Binance USD-M BTCUSDT bookTicker + trade frames".into());
        }
    }
    let f = read(&fixture_path());
    if !f.is_empty() {
        let n = f.len();
        let f: Vec<Vec<u8>> = f.iter().cycle().take(100_000.max(n)).cloned().collect();
        return (f, format!("the project's Binance spot fixture ({n} bookTicker + trade frames, repeated)"));
    }
    let ticker = r#"{"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","u":5123043530040,"s":"BTCUSDT","b":"61650.20","B":"3.184","a":"61650.30","A":"4.372","T":1723161255999,"E":1723161256000}}"#;
    let trade = r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161256001,"T":1723161256000,"s":"BTCUSDT","t":5179394370,"p":"61650.30","q":"0.002","X":"MARKET","m":false}}"#;
    ((0..100_000).map(|i| if i % 3 == 0 { trade } else { ticker }.as_bytes().to_vec()).collect(), "documentation-style frames".into())
}

/// Frames per second through our parser and through the serde_json baseline, best of
/// `rounds`, with the number of events each produced (they must agree).
pub fn parse(frames: &[Vec<u8>], rounds: usize) -> (Case, Case, u64, u64) {
    let mut reg = InstrumentRegistry::new();
    for symbol in ["BTCUSDT", "ETHUSDT"] {
        let _ = reg.intern(InstrumentSpec {
            venue: "binance",
            symbol,
            market: MarketType::LinearPerpetual,
            tick_size: Price::from_raw(1),
            lot_size: Quantity::from_raw(1),
            min_notional: Default::default(),
        });
    }
    let mut feed = BinanceFeed::new(BinanceMarket::UsdM, &reg, "binance");
    let (mut ours_best, mut base_best) = (f64::MAX, f64::MAX);
    let (mut ours_events, mut base_events) = (0u64, 0u64);
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        let mut n = 0u64;
        for f in frames {
            feed.on_frame(1, f, &mut |e| {
                std::hint::black_box(e);
                n += 1;
            });
        }
        ours_best = ours_best.min(t.elapsed().as_secs_f64());
        ours_events = n;
        let t = Instant::now();
        let mut n = 0u64;
        for f in frames {
            if let Some(e) = baseline(f, 1) {
                std::hint::black_box(e);
                n += 1;
            }
        }
        base_best = base_best.min(t.elapsed().as_secs_f64());
        base_events = n;
    }
    let n = frames.len() as f64;
    (
        Case::rate("feed_parse_ours", Group::Feed, "Binance bookTicker/trade frames → events, our parser: frames/s", n / ours_best),
        Case::rate(
            "feed_parse_serde_json",
            Group::Feed,
            "the same frames → the same events through serde_json (borrowed struct): frames/s",
            n / base_best,
        ),
        ours_events,
        base_events,
    )
}

/// Depth-delta apply on a 1,000-level book, deltas near the top as real feeds send them.
/// Each sample includes a clock pair (~20-30 ns).
pub fn depth_apply(updates: u64) -> Case {
    let mut book = OrderBook::with_capacity(2_048);
    for i in 0..1_000i64 {
        book.set_level(Side::Buy, Price::from_units(50_000 - i), Quantity::from_units(1));
        book.set_level(Side::Sell, Price::from_units(50_001 + i), Quantity::from_units(1));
    }
    let mut hist = histogram();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let start = Instant::now();
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
        record(&mut hist, t.elapsed().as_nanos() as u64);
        if qty.is_zero() {
            book.set_level(side, price, Quantity::from_units(1));
        }
    }
    let rate = updates as f64 / start.elapsed().as_secs_f64();
    Case::latency(
        "feed_depth_apply_1000_levels",
        Group::Feed,
        "one depth delta applied to a 1,000-level book (incl. a clock pair)",
        hist,
        Some(rate),
    )
}

/// The feed cases; the source of the frames is returned as a note.
pub fn suite(lab: &Lab, mut progress: impl FnMut(&str)) -> (Vec<Case>, String) {
    progress("feed parse");
    let (mut frames, source) = frames();
    frames.truncate(lab.scale.pick(5_000, usize::MAX, usize::MAX));
    let (ours, base, n_ours, n_base) = parse(&frames, lab.scale.pick(1, 3, 10));
    let mut note = format!("{} frames from {source}", frames.len());
    if n_ours != n_base {
        note.push_str(&format!("; WARNING: ours produced {n_ours} events, the baseline {n_base}"));
    }
    progress("feed depth apply");
    let depth = depth_apply(lab.scale.pick(10_000, 300_000, 2_000_000));
    (vec![ours, base, depth], note)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ours_and_the_baseline_agree_on_every_frame() {
        let (frames, _) = frames();
        let frames = &frames[..frames.len().min(3_000)];
        let (ours, base, n_ours, n_base) = parse(frames, 1);
        assert!(n_ours > 0);
        assert_eq!(n_ours, n_base, "the same events from both parsers");
        assert!(ours.events_per_sec.unwrap() > 0.0 && base.events_per_sec.unwrap() > 0.0);
        assert!(baseline(b"not json", 1).is_none());
        assert!(baseline(br#"{"data":{"e":"trade","s":"X"}}"#, 1).is_none(), "a trade without fields is no event");
    }

    #[test]
    fn depth_apply_records_every_update() {
        assert_eq!(depth_apply(1_000).samples(), 1_000);
    }
}
