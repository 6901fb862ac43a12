//! One named case run a fixed number of times, for counting instructions under callgrind.
//!
//! Wall-clock time swings 2× between runs on a shared machine; instruction counts do not.
//! Each case's measured work sits in its own `#[inline(never)]` function named
//! `measure_<case>`, so `valgrind --tool=callgrind --collect-atstart=no
//! --toggle-collect='*measure_<case>*'` counts exactly that work and nothing of the setup.
//! The binary prints `ops=<n>`: the number of measured calls to divide the count by.
//! `scripts/instruction-budget.sh` runs every case and compares with
//! `benches/instruction-budget.toml`.
//!
//! Usage: `instruction_count <case>` or `instruction_count --list`.
//!
//! Every input is fixed (the synthetic market's default seed, literal frames, a fixed
//! order), so the same binary counts the same instructions on every run.

use sapphire_benches::engine::Workload;
use sapphire_core::engine::{Engine, EngineConfig, EngineOutput, Output, OutputSink};
use sapphire_core::event::{AgentId, Event, DELTA_LAST};
use sapphire_core::fixed::{Money, Price, Quantity};
use sapphire_core::instrument::{Instrument, InstrumentId, InstrumentRegistry, InstrumentSpec, MarketType};
use sapphire_core::order::{Order, OrderAction};
use sapphire_gateway::binance::{BinanceFeed, BinanceMarket, FrameOutcome};
use sapphire_gateway::venue::binance::{BinanceExecution, BinanceExecutionConfig};
use sapphire_gateway::venue::credentials::Credentials;
use sapphire_gateway::venue::OrderRequest;
use std::hint::black_box;
use std::process::ExitCode;

/// The cases, in the order the budget file lists them.
const CASES: [&str; 9] = [
    "engine_quote",
    "engine_trade",
    "engine_book_delta",
    "engine_book_level",
    "engine_order",
    "binance_book_ticker",
    "binance_trade",
    "binance_depth",
    "order_encode_sign",
];

/// Synthetic market steps the engine cases run (about four events each); the first fifth
/// warms the engine and is not measured.
const ENGINE_STEPS: u64 = 20_000;
/// Frames per feed case, and orders for the signing case, after a warm-up of a tenth.
const FRAMES: usize = 2_000;
/// Price levels in the depth frame (half bids, half asks).
const DEPTH_LEVELS: usize = 20;

fn main() -> ExitCode {
    let arg = std::env::args().nth(1).unwrap_or_default();
    if arg == "--list" {
        for c in CASES {
            println!("{c}");
        }
        return ExitCode::SUCCESS;
    }
    let ops = match arg.as_str() {
        "engine_quote" | "engine_trade" | "engine_book_delta" | "engine_book_level" | "engine_order" => engine(&arg),
        "binance_book_ticker" => feed_frames(FrameKind::BookTicker),
        "binance_trade" => feed_frames(FrameKind::Trade),
        "binance_depth" => feed_frames(FrameKind::Depth),
        "order_encode_sign" => encode_sign(),
        _ => {
            eprintln!("instruction_count: unknown case {arg:?}; one of: {}", CASES.join(", "));
            return ExitCode::from(2);
        }
    };
    match ops {
        Ok(ops) => {
            println!("case={arg} ops={ops}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("instruction_count {arg}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Counts outputs and orders; never allocates.
#[derive(Debug, Default)]
struct Tally {
    outputs: u64,
    orders: u64,
}

impl OutputSink for Tally {
    fn emit(&mut self, out: Output) {
        self.outputs += 1;
        if matches!(out.output, EngineOutput::Order(_)) {
            self.orders += 1;
        }
    }
}

// One function per case. Each body differs by a constant so that function merging cannot
// fold them into one symbol that callgrind would toggle on for every case.

/// One event through the engine.
type Step = fn(&mut Engine, i64, &Event, &mut Vec<Order>, &mut Tally);

#[inline(never)]
fn measure_engine_quote(engine: &mut Engine, seq: i64, e: &Event, outbound: &mut Vec<Order>, sink: &mut Tally) {
    black_box(1u8);
    engine.process(seq, e, outbound, sink);
}

#[inline(never)]
fn measure_engine_trade(engine: &mut Engine, seq: i64, e: &Event, outbound: &mut Vec<Order>, sink: &mut Tally) {
    black_box(2u8);
    engine.process(seq, e, outbound, sink);
}

#[inline(never)]
fn measure_engine_book_delta(engine: &mut Engine, seq: i64, e: &Event, outbound: &mut Vec<Order>, sink: &mut Tally) {
    black_box(3u8);
    engine.process(seq, e, outbound, sink);
}

#[inline(never)]
fn measure_engine_book_level(engine: &mut Engine, seq: i64, e: &Event, outbound: &mut Vec<Order>, sink: &mut Tally) {
    black_box(9u8);
    engine.process(seq, e, outbound, sink);
}

#[inline(never)]
fn measure_engine_order(engine: &mut Engine, seq: i64, e: &Event, outbound: &mut Vec<Order>, sink: &mut Tally) {
    black_box(4u8);
    engine.process(seq, e, outbound, sink);
}

#[inline(never)]
fn unmeasured(engine: &mut Engine, seq: i64, e: &Event, outbound: &mut Vec<Order>, sink: &mut Tally) {
    black_box(0u8);
    engine.process(seq, e, outbound, sink);
}

/// One engine case over the synthetic market with agent signals: every event goes through
/// `Engine::process`; the case's events through its measuring function. Events that place
/// an order (found by a dry run on a clone: the engine is deterministic) are `engine_order`
/// and no other case; the other cases are the quotes, trades and book deltas that do not.
fn engine(case: &str) -> Result<u64, String> {
    let w = Workload::synthetic(ENGINE_STEPS);
    let mut engine = Engine::new(&EngineConfig::default(), &w.instruments);
    let mut outbound: Vec<Order> = Vec::with_capacity(64);
    let mut sink = Tally::default();
    let warm = w.events.len() / 5;
    for (seq, e) in w.events[..warm].iter().enumerate() {
        unmeasured(&mut engine, seq as i64, e, &mut outbound, &mut sink);
        outbound.clear();
    }
    // Dry run: which of the remaining events place orders.
    let mut places = vec![false; w.events.len()];
    let mut dry = engine.clone();
    let mut dry_sink = Tally::default();
    for (i, e) in w.events.iter().enumerate().skip(warm) {
        let before = dry_sink.orders;
        dry.process(i as i64, e, &mut outbound, &mut dry_sink);
        outbound.clear();
        places[i] = dry_sink.orders > before;
    }
    drop(dry);
    let mut ops = 0u64;
    let mut orders_seen = 0u64;
    for (i, e) in w.events.iter().enumerate().skip(warm) {
        let seq = i as i64;
        let before = sink.orders;
        let measured: Option<Step> = match (case, e) {
            ("engine_order", _) if places[i] => Some(measure_engine_order),
            ("engine_quote", Event::Quote(_)) if !places[i] => Some(measure_engine_quote),
            ("engine_trade", Event::Trade(_)) if !places[i] => Some(measure_engine_trade),
            ("engine_book_delta", Event::BookDelta(_)) if !places[i] => Some(measure_engine_book_delta),
            // A level in the middle of a venue message (not its last): the book changes,
            // nobody decides.
            ("engine_book_level", Event::BookDelta(d)) if d.flags & DELTA_LAST == 0 && !places[i] => Some(measure_engine_book_level),
            _ => None,
        };
        ops += u64::from(measured.is_some());
        let measured = measured.unwrap_or(unmeasured);
        measured(&mut engine, seq, e, &mut outbound, &mut sink);
        outbound.clear();
        if sink.orders > before {
            orders_seen += 1;
        }
        if (sink.orders > before) != places[i] {
            return Err(format!("event {i} placed orders in one run and not the other: the engine is not deterministic here"));
        }
    }
    black_box(sink.outputs);
    if ops == 0 {
        return Err(format!("no event of this case in {} events ({orders_seen} placed orders)", w.events.len()));
    }
    Ok(ops)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FrameKind {
    BookTicker,
    Trade,
    Depth,
}

#[inline(never)]
fn measure_binance_book_ticker(feed: &mut BinanceFeed, frame: &[u8], events: &mut u64) -> FrameOutcome {
    black_box(5u8);
    feed.on_frame(1_723_161_256_000_000_000, frame, &mut |e| {
        black_box(e);
        *events += 1;
    })
}

#[inline(never)]
fn measure_binance_trade(feed: &mut BinanceFeed, frame: &[u8], events: &mut u64) -> FrameOutcome {
    black_box(6u8);
    feed.on_frame(1_723_161_256_000_000_000, frame, &mut |e| {
        black_box(e);
        *events += 1;
    })
}

#[inline(never)]
fn measure_binance_depth(feed: &mut BinanceFeed, frame: &[u8], events: &mut u64) -> FrameOutcome {
    black_box(7u8);
    feed.on_frame(1_723_161_256_000_000_000, frame, &mut |e| {
        black_box(e);
        *events += 1;
    })
}

/// A USD-M depth update continuing `pu` with `DEPTH_LEVELS` levels, in the combined-stream
/// envelope the live feed receives.
fn depth_frame(pu: u64, u: u64) -> Vec<u8> {
    let side = |start: i64, step: i64| -> String {
        (0..DEPTH_LEVELS as i64 / 2)
            .map(|k| format!(r#"["{}.{}","{}.{:03}"]"#, start + step * k, (k * 3) % 10, k % 4, (k * 137) % 1000))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        r#"{{"stream":"btcusdt@depth@100ms","data":{{"e":"depthUpdate","E":1723161256012,"T":1723161256010,"s":"BTCUSDT","U":{},"u":{u},"pu":{pu},"b":[{}],"a":[{}]}}}}"#,
        pu + 1,
        side(61_650, -1),
        side(61_651, 1)
    )
    .into_bytes()
}

/// One Binance USD-M frame parsed to events by the feed adapter, `FRAMES` times after a
/// warm-up. Depth frames are a continuous sequence on a book in sync (each frame continues
/// the last, as the venue sends them), built beforehand.
fn feed_frames(kind: FrameKind) -> Result<u64, String> {
    // One symbol: the feed's symbol table scans its symbols in hash-map order, which changes
    // from process to process, so with two the count would depend on the hash seed.
    let mut registry = InstrumentRegistry::new();
    let _ = registry.intern(InstrumentSpec {
        venue: "binance",
        symbol: "BTCUSDT",
        market: MarketType::LinearPerpetual,
        tick_size: Price::from_raw(1),
        lot_size: Quantity::from_raw(1),
        min_notional: Default::default(),
    });
    let mut feed = BinanceFeed::new(BinanceMarket::UsdM, &registry, "binance");
    let warm = FRAMES / 10;
    let ticker = br#"{"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","u":5123043530040,"s":"BTCUSDT","b":"61650.20","B":"3.184","a":"61650.30","A":"4.372","T":1723161255999,"E":1723161256000}}"#;
    let trade = br#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161256001,"T":1723161256000,"s":"BTCUSDT","t":5179394370,"p":"61650.30","q":"0.002","X":"MARKET","m":false}}"#;
    let (frames, per_frame): (Vec<Vec<u8>>, u64) = match kind {
        FrameKind::BookTicker => (vec![ticker.to_vec(); warm + FRAMES], 1),
        FrameKind::Trade => (vec![trade.to_vec(); warm + FRAMES], 1),
        FrameKind::Depth => {
            // Frame ids 10 apart; the first one is buffered, the snapshot lands inside it.
            let base = 8_000_000_000_000u64;
            let frames: Vec<Vec<u8>> = (0..=(warm + FRAMES) as u64).map(|i| depth_frame(base + 10 * i, base + 10 * (i + 1))).collect();
            let mut n = 0u64;
            let first = feed.on_frame(1, &frames[0], &mut |_| n += 1);
            if !matches!(first, FrameOutcome::NeedSnapshot(_)) {
                return Err(format!("the first depth frame should ask for a snapshot, got {first:?}"));
            }
            let snapshot = format!(r#"{{"lastUpdateId":{},"bids":[["61650.0","1.000"]],"asks":[["61651.0","1.000"]]}}"#, base + 5);
            let snap = feed.on_snapshot(None, 2, snapshot.as_bytes(), &mut |_| n += 1);
            if snap != FrameOutcome::Applied || !feed.in_sync(InstrumentId(0)) {
                return Err(format!("the depth snapshot did not bring the book in sync: {snap:?}"));
            }
            (frames[1..].to_vec(), DEPTH_LEVELS as u64)
        }
    };
    let measure = match kind {
        FrameKind::BookTicker => measure_binance_book_ticker,
        FrameKind::Trade => measure_binance_trade,
        FrameKind::Depth => measure_binance_depth,
    };
    let mut events = 0u64;
    // The warm-up is a plain call: only the measuring function's calls are counted.
    for f in &frames[..warm] {
        let _ = feed.on_frame(1_723_161_256_000_000_000, f, &mut |e| {
            black_box(e);
        });
    }
    for f in &frames[warm..] {
        let outcome = measure(&mut feed, f, &mut events);
        if outcome != FrameOutcome::Applied {
            return Err(format!("a frame was not applied: {outcome:?}"));
        }
    }
    let ops = (frames.len() - warm) as u64;
    if events != ops * per_frame {
        return Err(format!("{events} events from {ops} frames, expected {per_frame} per frame"));
    }
    Ok(ops)
}

const SECRET: &str = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j";
const API_KEY: &str = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A";

#[inline(never)]
fn measure_order_encode_sign(venue: &BinanceExecution, order: &Order, inst: &Instrument) -> usize {
    black_box(8u8);
    let req = OrderRequest::from_order(order, inst);
    venue.signed_order(&req).as_str().len()
}

/// One engine order turned into a Binance spot order request and HMAC-signed (the query
/// string with `recvWindow`, `timestamp` and `signature`), as `benches/src/venue.rs` times it.
fn encode_sign() -> Result<u64, String> {
    let inst = Instrument {
        id: InstrumentId(0),
        symbol: "BTCUSDT".into(),
        venue: "binance".into(),
        market: MarketType::Spot,
        tick_size: Price::parse("0.01").map_err(|e| e.to_string())?,
        lot_size: Quantity::parse("0.00001").map_err(|e| e.to_string())?,
        min_notional: Money::from_units(5),
        price_precision: 2,
        qty_precision: 5,
    };
    let config = BinanceExecutionConfig::new(BinanceMarket::Spot, "http://127.0.0.1:9");
    let venue = BinanceExecution::new(config, Credentials::new(API_KEY, SECRET)).map_err(|e| e.to_string())?;
    let order = Order {
        client_order_id: 1_000_042,
        instrument: InstrumentId(0),
        agent: AgentId(1),
        action: OrderAction::New,
        price: Price::parse("64000.00").map_err(|e| e.to_string())?,
        qty: Quantity::parse("0.01500").map_err(|e| e.to_string())?,
        ..Order::default()
    };
    let warm = FRAMES / 10;
    let mut len = 0usize;
    for _ in 0..warm {
        len = len.wrapping_add(venue.signed_order(&OrderRequest::from_order(&order, &inst)).as_str().len());
    }
    for _ in 0..FRAMES {
        len = len.wrapping_add(measure_order_encode_sign(&venue, &order, &inst));
    }
    black_box(len);
    Ok(FRAMES as u64)
}
