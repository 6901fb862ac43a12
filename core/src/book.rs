//! The L2 order book: price levels per side, kept sorted with the best level last so the
//! common update (near the top) moves only a few entries.

use crate::event::{BookDelta, Side, DELTA_CLEAR, DELTA_RESYNC};
use crate::fixed::{Price, Quantity};

/// One price level.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Level {
    /// Level price.
    pub price: Price,
    /// Total quantity resting at the price.
    pub qty: Quantity,
}

/// What applying a [`BookDelta`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaOutcome {
    /// Applied in sequence.
    Applied,
    /// Applied, but a sequence gap was seen first: the book is now out of sync.
    Gap,
    /// Older than the book (an update id at or below the last applied message): ignored.
    Stale,
}

/// An L2 book for one instrument.
///
/// Invariants: `bids` ascending and `asks` descending by price (best last), no zero
/// quantities, no duplicate prices, and never crossed (best bid < best ask): a level that
/// would cross removes the opposing levels it crosses, since the newer update wins.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug)]
pub struct OrderBook {
    /// Ascending by price; best bid is the last element.
    bids: Vec<Level>,
    /// Descending by price; best ask is the last element.
    asks: Vec<Level>,
    /// Last venue update id applied (0: unsequenced).
    last_update_id: u64,
    /// False after a sequence gap until the next snapshot.
    in_sync: bool,
    /// Event time of the last change, ns.
    ts_last_update: u64,
    /// Sequence gaps seen.
    gaps: u64,
}

impl Default for OrderBook {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl OrderBook {
    /// An empty book with room for `levels` levels per side before it allocates.
    pub fn with_capacity(levels: usize) -> Self {
        Self {
            bids: Vec::with_capacity(levels),
            asks: Vec::with_capacity(levels),
            last_update_id: 0,
            in_sync: true,
            ts_last_update: 0,
            gaps: 0,
        }
    }

    /// Makes this book equal to `src`, keeping this book's allocations (snapshots).
    pub fn copy_from(&mut self, src: &Self) {
        let Self { bids, asks, last_update_id, in_sync, ts_last_update, gaps } = src;
        crate::snapshot::copy_into(&mut self.bids, bids);
        crate::snapshot::copy_into(&mut self.asks, asks);
        self.last_update_id = *last_update_id;
        self.in_sync = *in_sync;
        self.ts_last_update = *ts_last_update;
        self.gaps = *gaps;
    }

    /// Removes every level (capacity is kept).
    pub fn clear(&mut self) {
        self.bids.clear();
        self.asks.clear();
    }

    /// Sets the quantity at `price` on `side`; zero removes the level.
    pub fn set_level(&mut self, side: Side, price: Price, qty: Quantity) {
        if qty.raw <= 0 {
            let levels = self.side_mut(side);
            if let Ok(i) = search(levels, side, price) {
                levels.remove(i);
            }
            return;
        }
        let levels = self.side_mut(side);
        match search(levels, side, price) {
            Ok(i) => levels[i].qty = qty,
            Err(i) => levels.insert(i, Level { price, qty }),
        }
        // The newer level wins: drop opposing levels it crosses.
        match side {
            Side::Buy => {
                while self.asks.last().is_some_and(|l| l.price <= price) {
                    self.asks.pop();
                }
            }
            Side::Sell => {
                while self.bids.last().is_some_and(|l| l.price >= price) {
                    self.bids.pop();
                }
            }
        }
    }

    /// Applies a venue delta with its sequencing rule (see [`BookDelta`]).
    pub fn apply_delta(&mut self, d: &BookDelta) -> DeltaOutcome {
        let mut outcome = DeltaOutcome::Applied;
        if d.flags & DELTA_RESYNC != 0 {
            // The feed lost its place: out of sync until the next snapshot, counted once.
            if self.in_sync {
                self.gaps += 1;
            }
            self.in_sync = false;
            self.ts_last_update = d.ts_event;
            return DeltaOutcome::Gap;
        }
        if d.flags & DELTA_CLEAR != 0 {
            self.clear();
            self.in_sync = true;
            self.last_update_id = d.last_update_id;
        } else if d.last_update_id != 0 && d.last_update_id != self.last_update_id {
            if d.last_update_id < self.last_update_id {
                return DeltaOutcome::Stale;
            }
            // First delta of a new venue message: check continuity.
            if d.prev_update_id != 0 && d.prev_update_id != self.last_update_id {
                self.in_sync = false;
                self.gaps += 1;
                outcome = DeltaOutcome::Gap;
            }
            self.last_update_id = d.last_update_id;
        }
        self.set_level(d.side, d.price, d.qty);
        self.ts_last_update = d.ts_event;
        outcome
    }

    /// Marks the book as touched at `ts` (a quote or trade on the same feed).
    #[inline]
    pub fn touch(&mut self, ts: u64) {
        self.ts_last_update = ts;
    }

    fn side_mut(&mut self, side: Side) -> &mut Vec<Level> {
        match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        }
    }

    /// The best level of `side`.
    #[inline]
    pub fn best(&self, side: Side) -> Option<Level> {
        match side {
            Side::Buy => self.bids.last().copied(),
            Side::Sell => self.asks.last().copied(),
        }
    }

    /// Best bid.
    #[inline]
    pub fn best_bid(&self) -> Option<Level> {
        self.bids.last().copied()
    }

    /// Best ask.
    #[inline]
    pub fn best_ask(&self) -> Option<Level> {
        self.asks.last().copied()
    }

    /// Levels of `side` from the best outwards.
    pub fn levels(&self, side: Side) -> impl Iterator<Item = &Level> {
        match side {
            Side::Buy => self.bids.iter().rev(),
            Side::Sell => self.asks.iter().rev(),
        }
    }

    /// Number of levels on `side`.
    pub fn depth(&self, side: Side) -> usize {
        match side {
            Side::Buy => self.bids.len(),
            Side::Sell => self.asks.len(),
        }
    }

    /// Quantity resting at exactly `price` on `side`.
    pub fn qty_at(&self, side: Side, price: Price) -> Quantity {
        let levels = match side {
            Side::Buy => &self.bids,
            Side::Sell => &self.asks,
        };
        search(levels, side, price).map_or(Quantity::ZERO, |i| levels[i].qty)
    }

    /// Best ask minus best bid.
    pub fn spread(&self) -> Option<Price> {
        Some(self.best_ask()?.price - self.best_bid()?.price)
    }

    /// Midpoint of the best bid and ask (rounded down to the price scale).
    pub fn mid(&self) -> Option<Price> {
        let (b, a) = (self.best_bid()?.price, self.best_ask()?.price);
        Some(Price::from_raw(((i128::from(b.raw) + i128::from(a.raw)) / 2) as i64))
    }

    /// Size-weighted mid: leans toward the side with less size (the likelier next move).
    pub fn microprice(&self) -> Option<Price> {
        let (b, a) = (self.best_bid()?, self.best_ask()?);
        let total = i128::from(b.qty.raw) + i128::from(a.qty.raw);
        if total == 0 {
            return self.mid();
        }
        let num = i128::from(b.price.raw) * i128::from(a.qty.raw) + i128::from(a.price.raw) * i128::from(b.qty.raw);
        Some(Price::from_raw((num / total) as i64))
    }

    /// Order-book imbalance over the top `levels` levels, in basis points:
    /// +10_000 all bids, -10_000 all asks, 0 balanced or empty.
    pub fn imbalance_bps(&self, levels: usize) -> i64 {
        let sum = |side| -> i128 { self.levels(side).take(levels).map(|l| i128::from(l.qty.raw)).sum() };
        let (b, a) = (sum(Side::Buy), sum(Side::Sell));
        if b + a == 0 {
            return 0;
        }
        ((b - a) * 10_000 / (b + a)) as i64
    }

    /// True unless a sequence gap was seen since the last snapshot.
    #[inline]
    pub fn in_sync(&self) -> bool {
        self.in_sync
    }

    /// Marks the book out of sync (the feed lost its place).
    pub fn mark_out_of_sync(&mut self) {
        self.in_sync = false;
    }

    /// Last applied venue update id.
    #[inline]
    pub fn last_update_id(&self) -> u64 {
        self.last_update_id
    }

    /// Event time of the last change, ns.
    #[inline]
    pub fn ts_last_update(&self) -> u64 {
        self.ts_last_update
    }

    /// Sequence gaps seen.
    #[inline]
    pub fn gaps(&self) -> u64 {
        self.gaps
    }
}

/// Binary search in a side's sort order (bids ascending, asks descending).
#[inline]
fn search(levels: &[Level], side: Side, price: Price) -> Result<usize, usize> {
    match side {
        Side::Buy => levels.binary_search_by(|l| l.price.cmp(&price)),
        Side::Sell => levels.binary_search_by(|l| price.cmp(&l.price)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{DELTA_LAST, DELTA_SNAPSHOT};

    fn p(s: &str) -> Price {
        Price::parse(s).unwrap()
    }
    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap()
    }

    #[test]
    fn top_of_book_figures() {
        let mut b = OrderBook::with_capacity(8);
        b.set_level(Side::Buy, p("100"), q("3"));
        b.set_level(Side::Buy, p("99"), q("5"));
        b.set_level(Side::Sell, p("101"), q("1"));
        b.set_level(Side::Sell, p("102"), q("4"));
        assert_eq!(b.best_bid(), Some(Level { price: p("100"), qty: q("3") }));
        assert_eq!(b.best_ask(), Some(Level { price: p("101"), qty: q("1") }));
        assert_eq!(b.spread(), Some(p("1")));
        assert_eq!(b.mid(), Some(p("100.5")));
        // (100*1 + 101*3) / 4 = 100.75
        assert_eq!(b.microprice(), Some(p("100.75")));
        assert_eq!(b.imbalance_bps(1), 5_000);
        assert_eq!(b.imbalance_bps(2), (8 - 5) * 10_000 / 13);
        b.set_level(Side::Buy, p("100"), Quantity::ZERO);
        assert_eq!(b.best_bid().unwrap().price, p("99"));
    }

    #[test]
    fn crossing_level_removes_what_it_crosses() {
        let mut b = OrderBook::default();
        b.set_level(Side::Sell, p("101"), q("1"));
        b.set_level(Side::Sell, p("102"), q("1"));
        b.set_level(Side::Buy, p("101.5"), q("2"));
        assert_eq!(b.best_ask().unwrap().price, p("102"));
        assert_eq!(b.best_bid().unwrap().price, p("101.5"));
    }

    fn delta(first: u64, last: u64, prev: u64, flags: u8) -> BookDelta {
        BookDelta {
            side: Side::Buy,
            price: p("100"),
            qty: q("1"),
            first_update_id: first,
            last_update_id: last,
            prev_update_id: prev,
            flags,
            ..BookDelta::default()
        }
    }

    #[test]
    fn sequencing_detects_gaps_and_stale_messages() {
        let mut b = OrderBook::default();
        assert_eq!(b.apply_delta(&delta(0, 10, 0, DELTA_SNAPSHOT | DELTA_CLEAR)), DeltaOutcome::Applied);
        assert_eq!(b.apply_delta(&delta(11, 12, 10, DELTA_LAST)), DeltaOutcome::Applied);
        // A second level of the same message passes without a check.
        assert_eq!(b.apply_delta(&delta(11, 12, 10, DELTA_LAST)), DeltaOutcome::Applied);
        assert_eq!(b.apply_delta(&delta(5, 9, 4, 0)), DeltaOutcome::Stale);
        assert!(b.in_sync());
        assert_eq!(b.apply_delta(&delta(15, 16, 14, 0)), DeltaOutcome::Gap);
        assert!(!b.in_sync());
        assert_eq!(b.gaps(), 1);
        b.apply_delta(&delta(0, 20, 0, DELTA_SNAPSHOT | DELTA_CLEAR));
        assert!(b.in_sync());
    }

    #[test]
    fn a_resync_marker_breaks_sync_even_when_its_ids_point_backwards() {
        let mut b = OrderBook::default();
        b.apply_delta(&delta(0, 910_000, 0, DELTA_SNAPSHOT | DELTA_CLEAR | DELTA_LAST));
        let marker = BookDelta { qty: Quantity::ZERO, ..delta(911, 920, 910, DELTA_LAST | crate::event::DELTA_RESYNC) };
        assert_eq!(b.apply_delta(&marker), DeltaOutcome::Gap);
        assert!(!b.in_sync());
        assert_eq!((b.gaps(), b.last_update_id()), (1, 910_000));
        assert_eq!(b.best_bid().unwrap().price, p("100"), "the marker changes no level");
        b.apply_delta(&delta(0, 5, 0, DELTA_SNAPSHOT | DELTA_CLEAR | DELTA_LAST));
        assert!(b.in_sync());
    }
}

#[cfg(test)]
mod props {
    //! The book against a naive `BTreeMap` reference over arbitrary update sequences.
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Reference {
        bids: BTreeMap<i64, i64>,
        asks: BTreeMap<i64, i64>,
    }

    impl Reference {
        fn set(&mut self, side: Side, price: i64, qty: i64) {
            let (own, other) = match side {
                Side::Buy => (&mut self.bids, &mut self.asks),
                Side::Sell => (&mut self.asks, &mut self.bids),
            };
            if qty == 0 {
                own.remove(&price);
                return;
            }
            own.insert(price, qty);
            match side {
                Side::Buy => other.retain(|&p, _| p > price),
                Side::Sell => other.retain(|&p, _| p < price),
            }
        }
    }

    fn op() -> impl Strategy<Value = (bool, i64, i64)> {
        (any::<bool>(), 90i64..110, prop_oneof![Just(0i64), 1i64..1_000])
    }

    proptest! {
        #[test]
        fn matches_btreemap_and_never_crosses(ops in proptest::collection::vec(op(), 0..400)) {
            let mut book = OrderBook::with_capacity(4);
            let mut reference = Reference::default();
            for (is_bid, price, qty) in ops {
                let side = if is_bid { Side::Buy } else { Side::Sell };
                book.set_level(side, Price::from_units(price), Quantity::from_units(qty));
                reference.set(side, price, qty);
                if let (Some(b), Some(a)) = (book.best_bid(), book.best_ask()) {
                    prop_assert!(b.price < a.price, "crossed: {b:?} {a:?}");
                }
            }
            let bids: Vec<(i64, i64)> = book.levels(Side::Buy).map(|l| (l.price.raw / Price::SCALE, l.qty.raw / Quantity::SCALE)).collect();
            let ref_bids: Vec<(i64, i64)> = reference.bids.iter().rev().map(|(&p, &q)| (p, q)).collect();
            prop_assert_eq!(bids, ref_bids);
            let asks: Vec<(i64, i64)> = book.levels(Side::Sell).map(|l| (l.price.raw / Price::SCALE, l.qty.raw / Quantity::SCALE)).collect();
            let ref_asks: Vec<(i64, i64)> = reference.asks.iter().map(|(&p, &q)| (p, q)).collect();
            prop_assert_eq!(asks, ref_asks);
        }
    }
}
