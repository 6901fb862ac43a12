//! The book sync state machines (Binance spot, Binance USD-M, Bybit) fed arbitrary sequences
//! of venue book updates, delivered in order, lost, repeated or swapped, REST/pushed snapshots
//! (current or stale), reconnects and garbage frames. The venue is simulated: its true book
//! after every update id is kept. After every step the core's book (fed every event the feed
//! emits) is never crossed, and whenever it says it is in sync it equals the venue's book at
//! the update id it says it is at; otherwise it says it is out of sync.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sapphire_core::event::{Event, Side};
use sapphire_core::fixed::{Price, Quantity};
use sapphire_core::instrument::{InstrumentId, MarketType};
use sapphire_fuzz::{registry, CoreBooks};
use sapphire_gateway::binance::{BinanceFeed, BinanceMarket};
use sapphire_gateway::bybit::{BybitCategory, BybitFeed};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

#[derive(Arbitrary, Debug)]
enum Op {
    /// The venue changes its book: one message (`span` extra ids for Binance).
    Update { levels: Vec<(bool, u8, u8)>, span: u8 },
    /// The next message in flight arrives.
    Deliver,
    /// The next message in flight is lost.
    Drop,
    /// The last message delivered arrives again.
    Repeat,
    /// The next two messages in flight arrive in the other order.
    Swap,
    /// A snapshot: Binance's REST answer (of the book `lag` messages ago, out of band);
    /// Bybit's push (of the current book, in the stream).
    Snapshot { lag: u8 },
    /// The connection drops: what is in flight is lost; the feed resets its books.
    Reconnect,
    /// A frame of anything (never about the simulated symbol).
    Garbage(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    venue: u8,
    ops: Vec<Op>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Venue {
    Spot,
    UsdM,
    Bybit,
}

type Book = (BTreeMap<i64, i64>, BTreeMap<i64, i64>);

enum Feed {
    Binance(BinanceFeed),
    Bybit(BybitFeed),
}

const BTC: InstrumentId = InstrumentId(0);

fn px(raw_units: i64) -> String {
    format!("{raw_units}.00")
}

fn qty(q: i64) -> String {
    format!("{q}.000")
}

fn levels_json(out: &mut String, levels: &BTreeMap<i64, i64>) {
    out.push('[');
    for (i, (p, q)) in levels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "[\"{}\",\"{}\"]", px(*p), qty(*q));
    }
    out.push(']');
}

fn side_book(book: &sapphire_core::book::OrderBook, side: Side) -> BTreeMap<i64, i64> {
    let unit = Price::parse("1").expect("1").raw;
    let qunit = Quantity::parse("1").expect("1").raw;
    book.levels(side).map(|l| (l.price.raw / unit, l.qty.raw / qunit)).collect()
}

fuzz_target!(|input: Input| {
    let venue = match input.venue % 3 {
        0 => Venue::Spot,
        1 => Venue::UsdM,
        _ => Venue::Bybit,
    };
    let (name, kind) = match venue {
        Venue::Spot => ("binance", MarketType::Spot),
        Venue::UsdM => ("binance-usdm", MarketType::LinearPerpetual),
        Venue::Bybit => ("bybit-linear", MarketType::LinearPerpetual),
    };
    let reg = registry(name, kind);
    let mut feed = match venue {
        Venue::Spot => Feed::Binance(BinanceFeed::new(BinanceMarket::Spot, &reg, name)),
        Venue::UsdM => Feed::Binance(BinanceFeed::new(BinanceMarket::UsdM, &reg, name)),
        Venue::Bybit => Feed::Bybit(BybitFeed::new(BybitCategory::Linear, &reg, name)),
    };
    let mut core = CoreBooks::new(reg.len());
    // The venue: its book after each message, by the message's last update id.
    let mut truth: Book = Default::default();
    let mut history: Vec<(u64, Book)> = vec![(0, truth.clone())];
    let mut last_u = 0u64;
    let mut in_flight: VecDeque<Vec<u8>> = VecDeque::new();
    let mut last_delivered: Option<Vec<u8>> = None;
    let mut ts_ms = 1_700_000_000_000u64;

    for (step, op) in input.ops.into_iter().take(96).enumerate() {
        let recv = 1_700_000_000_000_000_000 + step as u64;
        let mut events: Vec<Event> = Vec::new();
        let deliver = |feed: &mut Feed, frame: &[u8], events: &mut Vec<Event>| match feed {
            Feed::Binance(f) => {
                f.on_frame(recv, frame, &mut |e| events.push(e));
            }
            Feed::Bybit(f) => {
                f.on_frame(recv, frame, &mut |e| events.push(e));
            }
        };
        match op {
            Op::Update { levels, span } => {
                let mut changes: Book = Default::default();
                for (bid, p, q) in levels.into_iter().take(6) {
                    // Bids 1000..1049, asks 1100..1149: the venue's book is never crossed.
                    let (price, side) =
                        if bid { (1_000 + i64::from(p % 50), &mut changes.0) } else { (1_100 + i64::from(p % 50), &mut changes.1) };
                    side.insert(price, i64::from(q % 4));
                }
                for (p, q) in &changes.0 {
                    if *q == 0 {
                        truth.0.remove(p)
                    } else {
                        truth.0.insert(*p, *q)
                    };
                }
                for (p, q) in &changes.1 {
                    if *q == 0 {
                        truth.1.remove(p)
                    } else {
                        truth.1.insert(*p, *q)
                    };
                }
                ts_ms += 1;
                let first = last_u + 1;
                let u = if venue == Venue::Bybit { first } else { first + u64::from(span % 3) };
                let mut frame = String::new();
                match venue {
                    Venue::Spot | Venue::UsdM => {
                        let _ =
                            write!(frame, "{{\"e\":\"depthUpdate\",\"E\":{ts_ms},\"T\":{ts_ms},\"s\":\"BTCUSDT\",\"U\":{first},\"u\":{u},");
                        if venue == Venue::UsdM {
                            let _ = write!(frame, "\"pu\":{last_u},");
                        }
                        frame.push_str("\"b\":");
                        levels_json(&mut frame, &changes.0);
                        frame.push_str(",\"a\":");
                        levels_json(&mut frame, &changes.1);
                        frame.push('}');
                    }
                    Venue::Bybit => {
                        let _ = write!(
                            frame,
                            "{{\"topic\":\"orderbook.50.BTCUSDT\",\"type\":\"delta\",\"ts\":{ts_ms},\"data\":{{\"s\":\"BTCUSDT\",\"b\":"
                        );
                        levels_json(&mut frame, &changes.0);
                        frame.push_str(",\"a\":");
                        levels_json(&mut frame, &changes.1);
                        let _ = write!(frame, ",\"u\":{u},\"seq\":{u}}},\"cts\":{ts_ms}}}");
                    }
                }
                last_u = u;
                history.push((u, truth.clone()));
                in_flight.push_back(frame.into_bytes());
            }
            Op::Deliver => {
                if let Some(frame) = in_flight.pop_front() {
                    deliver(&mut feed, &frame, &mut events);
                    last_delivered = Some(frame);
                }
            }
            Op::Drop => {
                in_flight.pop_front();
            }
            Op::Repeat => {
                if let Some(frame) = last_delivered.clone() {
                    deliver(&mut feed, &frame, &mut events);
                }
            }
            Op::Swap => {
                if in_flight.len() >= 2 {
                    in_flight.swap(0, 1);
                }
            }
            Op::Snapshot { lag } => {
                let at = history.len() - 1 - (usize::from(lag % 4)).min(history.len() - 1);
                let (lid, book) = &history[at];
                let mut frame = String::new();
                match &mut feed {
                    Feed::Binance(f) => {
                        let _ = write!(frame, "{{\"lastUpdateId\":{lid},\"E\":{ts_ms},\"T\":{ts_ms},\"bids\":");
                        levels_json(&mut frame, &book.0);
                        frame.push_str(",\"asks\":");
                        levels_json(&mut frame, &book.1);
                        frame.push('}');
                        f.on_snapshot(Some(BTC), recv, frame.as_bytes(), &mut |e| events.push(e));
                    }
                    Feed::Bybit(_) => {
                        // Pushed in the stream, of the book as it is now.
                        let (u, book) = history.last().expect("never empty");
                        let _ = write!(
                            frame,
                            "{{\"topic\":\"orderbook.50.BTCUSDT\",\"type\":\"snapshot\",\"ts\":{ts_ms},\"data\":{{\"s\":\"BTCUSDT\",\"b\":"
                        );
                        levels_json(&mut frame, &book.0);
                        frame.push_str(",\"a\":");
                        levels_json(&mut frame, &book.1);
                        let _ = write!(frame, ",\"u\":{u},\"seq\":{u}}},\"cts\":{ts_ms}}}");
                        in_flight.push_back(frame.into_bytes());
                    }
                }
            }
            Op::Reconnect => {
                in_flight.clear();
                match &mut feed {
                    Feed::Binance(f) => f.reset_books(recv, &mut |e| events.push(e)),
                    Feed::Bybit(f) => f.reset_books(recv, &mut |e| events.push(e)),
                }
            }
            Op::Garbage(bytes) => {
                // Anything, as long as it cannot be a true message about the simulated book:
                // that would be the venue lying, which no client can detect.
                let lower = bytes.to_ascii_lowercase();
                let about_btc =
                    lower.windows(3).any(|w| w == b"btc") || lower.windows(12).any(|w| w == b"lastupdateid") || lower.contains(&b'\\');
                if !about_btc {
                    deliver(&mut feed, &bytes, &mut events);
                }
            }
        }
        for e in &events {
            core.take(e);
        }
        core.check_uncrossed();
        let book = &core.books[BTC.index()];
        if book.in_sync() {
            let id = book.last_update_id();
            let Some((_, want)) = history.iter().find(|(u, _)| *u == id) else {
                panic!("the core's book says it is in sync at update id {id}, which the venue never had (last {last_u})");
            };
            let got = (side_book(book, Side::Buy), side_book(book, Side::Sell));
            assert_eq!(&got, want, "in sync at {id} but not the venue's book");
        }
    }
});
