//! The market board: each instrument's top of book, published by the book stage for readers
//! off the hot path (agents, the Redis tick publisher), without locks.
//!
//! One entry per instrument, one cache line each, written by its single writer (the book
//! stage) with a sequence counter around the stores (a seqlock made of atomics: no `unsafe`,
//! no data race). Readers retry while a write is in progress and never block the writer; a
//! write costs a handful of relaxed stores. Readers sample at their own cadence — a board is
//! conflated by nature: it holds the latest top, not a history.

use crate::fixed::{Price, Quantity};
use crate::instrument::InstrumentId;
use crate::sync::{fence, spin_loop, AtomicBool, AtomicI64, AtomicU64};
use std::sync::atomic::Ordering;

/// One instrument's top of book as the book stage last saw it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Top {
    /// Best bid (zero when that side is empty).
    pub bid: Price,
    /// Quantity at the best bid.
    pub bid_qty: Quantity,
    /// Best ask (zero when that side is empty).
    pub ask: Price,
    /// Quantity at the best ask.
    pub ask_qty: Quantity,
    /// Last trade price (zero before the first trade).
    pub last_trade: Price,
    /// Event time of the update, ns.
    pub ts_event: u64,
    /// Updates published so far for this instrument (0: never).
    pub updates: u64,
    /// False while the book is out of sync with its venue (its top is not to be trusted).
    pub in_sync: bool,
}

impl Top {
    /// Mid price, if both sides are present.
    pub fn mid(&self) -> Option<Price> {
        (self.bid.raw > 0 && self.ask.raw > 0)
            .then(|| Price::from_raw(self.bid.raw / 2 + self.ask.raw / 2 + (self.bid.raw % 2 + self.ask.raw % 2) / 2))
    }
}

#[repr(align(64))]
#[derive(Debug, Default)]
struct Entry {
    seq: AtomicU64,
    bid: AtomicI64,
    bid_qty: AtomicI64,
    ask: AtomicI64,
    ask_qty: AtomicI64,
    last_trade: AtomicI64,
    ts_event: AtomicU64,
    in_sync: AtomicBool,
}

/// The board: a fixed table of [`Top`]s by instrument id.
#[derive(Debug)]
pub struct MarketBoard {
    entries: Box<[Entry]>,
}

impl MarketBoard {
    /// A board for instrument ids `0..instruments`.
    pub fn new(instruments: usize) -> Self {
        Self { entries: (0..instruments).map(|_| Entry::default()).collect() }
    }

    /// Instruments on the board.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True for a board with no instruments.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Publishes an instrument's top. Single writer per instrument (the book stage).
    #[inline]
    pub fn publish(&self, instrument: InstrumentId, top: &Top) {
        let Some(e) = self.entries.get(instrument.index()) else { return };
        let seq = e.seq.load(Ordering::Relaxed);
        // Odd: a write is in progress.
        e.seq.store(seq + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        e.bid.store(top.bid.raw, Ordering::Relaxed);
        e.bid_qty.store(top.bid_qty.raw, Ordering::Relaxed);
        e.ask.store(top.ask.raw, Ordering::Relaxed);
        e.ask_qty.store(top.ask_qty.raw, Ordering::Relaxed);
        e.last_trade.store(top.last_trade.raw, Ordering::Relaxed);
        e.ts_event.store(top.ts_event, Ordering::Relaxed);
        e.in_sync.store(top.in_sync, Ordering::Relaxed);
        e.seq.store(seq + 2, Ordering::Release);
    }

    /// Reads an instrument's latest top (`None` for an unknown id or before the first
    /// publish). Retries while a write is in progress; never blocks the writer.
    pub fn read(&self, instrument: InstrumentId) -> Option<Top> {
        let e = self.entries.get(instrument.index())?;
        loop {
            let before = e.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                spin_loop();
                continue;
            }
            let top = Top {
                bid: Price::from_raw(e.bid.load(Ordering::Relaxed)),
                bid_qty: Quantity::from_raw(e.bid_qty.load(Ordering::Relaxed)),
                ask: Price::from_raw(e.ask.load(Ordering::Relaxed)),
                ask_qty: Quantity::from_raw(e.ask_qty.load(Ordering::Relaxed)),
                last_trade: Price::from_raw(e.last_trade.load(Ordering::Relaxed)),
                ts_event: e.ts_event.load(Ordering::Relaxed),
                updates: before / 2,
                in_sync: e.in_sync.load(Ordering::Relaxed),
            };
            fence(Ordering::Acquire);
            if e.seq.load(Ordering::Relaxed) == before {
                return (before > 0).then_some(top);
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn readers_never_see_a_torn_top() {
        // Miri (scripts/miri.sh) interprets every access: a smaller run says as much there.
        const WRITES: i64 = if cfg!(miri) { 300 } else { 200_000 };
        let board = Arc::new(MarketBoard::new(2));
        assert_eq!(board.read(InstrumentId(0)), None);
        assert_eq!(board.read(InstrumentId(7)), None);
        let writer = {
            let board = Arc::clone(&board);
            std::thread::spawn(move || {
                for i in 1..=WRITES {
                    // Every field derives from i: a torn read mixes two values of i.
                    let top = Top {
                        bid: Price::from_raw(i),
                        bid_qty: Quantity::from_raw(2 * i),
                        ask: Price::from_raw(i + 1),
                        ask_qty: Quantity::from_raw(3 * i),
                        last_trade: Price::from_raw(i),
                        ts_event: i as u64,
                        updates: 0,
                        in_sync: i % 2 == 0,
                    };
                    board.publish(InstrumentId(1), &top);
                }
            })
        };
        let mut seen = 0u64;
        while !writer.is_finished() || seen == 0 {
            if let Some(t) = board.read(InstrumentId(1)) {
                let i = t.bid.raw;
                assert_eq!((t.bid_qty.raw, t.ask.raw, t.ask_qty.raw, t.ts_event, t.in_sync), (2 * i, i + 1, 3 * i, i as u64, i % 2 == 0));
                assert!(t.updates >= seen);
                seen = t.updates;
            }
        }
        writer.join().unwrap();
        let last = board.read(InstrumentId(1)).unwrap();
        assert_eq!((last.bid.raw, last.updates), (WRITES, WRITES as u64));
        assert_eq!(last.mid(), Some(Price::from_raw(WRITES)));
        assert_eq!(board.read(InstrumentId(0)), None, "other instruments untouched");
    }
}
