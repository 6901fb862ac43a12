//! The L2 order book. Each side keeps the levels near the touch in a window of price slots
//! indexed by tick, so that an update is one store (hftbacktest's ROI depth is the model), and
//! the levels beyond the window in a vector sorted best last. A book without a tick size keeps
//! every level in the vector.

use crate::event::{BookDelta, Side, DELTA_CLEAR, DELTA_RESYNC};
use crate::fixed::{Price, Quantity};
use rkyv::rancor::Fallible;
use rkyv::ser::{Allocator, Writer};
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::with::{ArchiveWith, DeserializeWith, SerializeWith};
use rkyv::{Archived, Deserialize, Place};
use std::cell::Cell;
use std::collections::VecDeque;

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
/// Invariants: no zero quantities, no duplicate prices, and never crossed (best bid < best
/// ask): a level that would cross removes the opposing levels it crosses, since the newer
/// update wins. What a book holds is its levels and sequencing state; where a level is kept
/// (window or vector) is not part of it: `Debug`, snapshots and [`OrderBook::copy_from`] see
/// the levels only.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug)]
pub struct OrderBook {
    /// Bids; archived as a vector ascending by price (best last), as before the window.
    #[rkyv(with = LevelVec<true>)]
    bids: Ladder,
    /// Asks; archived as a vector descending by price (best last).
    #[rkyv(with = LevelVec<false>)]
    asks: Ladder,
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
    /// An empty book without a tick size (every level in a sorted vector) with room for
    /// `levels` levels per side before it allocates.
    pub fn with_capacity(levels: usize) -> Self {
        Self::with_tick(levels, Price::ZERO)
    }

    /// An empty book whose levels near the touch are indexed by `tick` (the instrument's tick
    /// size; zero or negative: no window). Prices off the tick grid are still kept: the side
    /// then falls back to its sorted vector until the book is cleared.
    pub fn with_tick(levels: usize, tick: Price) -> Self {
        Self {
            bids: Ladder::new(true, tick.raw, levels),
            asks: Ladder::new(false, tick.raw, levels),
            last_update_id: 0,
            in_sync: true,
            ts_last_update: 0,
            gaps: 0,
        }
    }

    /// Makes this book hold what `src` holds, keeping this book's allocations and tick size
    /// (snapshots, and restoring a decoded snapshot into books sized for the instruments).
    pub fn copy_from(&mut self, src: &Self) {
        let Self { bids, asks, last_update_id, in_sync, ts_last_update, gaps } = src;
        self.bids.copy_from(bids);
        self.asks.copy_from(asks);
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
        let (own, other) = match side {
            Side::Buy => (&mut self.bids, &mut self.asks),
            Side::Sell => (&mut self.asks, &mut self.bids),
        };
        own.set(price, qty);
        if qty.raw > 0 {
            // The newer level wins: drop opposing levels it crosses.
            other.remove_through(price);
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

    fn side(&self, side: Side) -> &Ladder {
        match side {
            Side::Buy => &self.bids,
            Side::Sell => &self.asks,
        }
    }

    /// The best level of `side`.
    #[inline]
    pub fn best(&self, side: Side) -> Option<Level> {
        self.side(side).best()
    }

    /// Best bid.
    #[inline]
    pub fn best_bid(&self) -> Option<Level> {
        self.bids.best()
    }

    /// Best ask.
    #[inline]
    pub fn best_ask(&self) -> Option<Level> {
        self.asks.best()
    }

    /// Levels of `side` from the best outwards.
    pub fn levels(&self, side: Side) -> impl Iterator<Item = Level> + '_ {
        self.side(side).best_first()
    }

    /// Number of levels on `side`.
    pub fn depth(&self, side: Side) -> usize {
        self.side(side).len()
    }

    /// Quantity resting at exactly `price` on `side`.
    pub fn qty_at(&self, side: Side, price: Price) -> Quantity {
        self.side(side).qty_at(price)
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
        let (b, a) = (self.bids.top_qty(levels), self.asks.top_qty(levels));
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

/// Price slots in a side's window: 16,384 ticks, 128 KiB (for BTCUSDT at its 0.1 tick, the
/// touch and 1,200 USD behind it). On the recorded USD-M BTCUSDT day a 4,096-slot window left
/// so many updates beyond it that the vector of far levels cost more than the window saved
/// (`replay --books-only`, callgrind: 557 M instructions at 4,096 slots, 471 M at 16,384,
/// 466 M at 32,768). A snapshot copies the window: 512 KiB per instrument (the engine's book
/// and the paper venue's).
const WINDOW: usize = 16_384;
/// Where a placed window puts its best level: this many slots stay on the better side of it,
/// for the touch to move into without moving the window.
const HEADROOM: usize = WINDOW / 4;
/// The window is placed again when its best level has fallen below this slot (most of the
/// window would be on the wrong side of the touch).
const LOW_WATER: usize = WINDOW / 8;

/// One side of a book.
///
/// A level's key is its price in ticks, negated on the ask side, so that a larger key is a
/// better price on both sides. Invariants: `windowed` implies `tick > 0` and `WINDOW` slots;
/// the slots above `best` are empty and `slots[best]` is not (when `count > 0`); every level in
/// `far` is worse than slot 0 while `windowed`; a windowed side with levels has its best level
/// in the window (so an empty window means an empty side); unwindowed, every level is in `far`.
#[derive(Clone)]
struct Ladder {
    /// The bid side (higher prices are better); else the ask side.
    buy: bool,
    /// Raw price units per slot; zero: never windowed.
    tick: i64,
    /// False without a tick or after a price off the tick grid (until the next clear).
    windowed: bool,
    /// The key of slot 0.
    lo: i64,
    /// Raw quantity per slot, zero when empty.
    slots: Vec<i64>,
    /// One bit per slot, set when it is occupied: the next level below a slot is a few word
    /// scans away however sparse the book (a quote's imbalance reads the top levels).
    bits: Vec<u64>,
    /// Occupied slots.
    count: usize,
    /// The best occupied slot (when `count > 0`).
    best: usize,
    /// The last [`Ladder::top_qty`] (levels asked, sum), forgotten by every change: quotes and
    /// trades leave the book as it is, and each reads its imbalance.
    top: Cell<Option<(usize, i128)>>,
    /// Levels outside the window, sorted best last (bids ascending, asks descending by price).
    /// A deque: inserting or removing moves the shorter end, so deep levels (at the front) and
    /// levels just outside the window (at the back), the busy ones, move few entries.
    far: VecDeque<Level>,
}

impl Ladder {
    fn new(buy: bool, tick: i64, levels: usize) -> Self {
        let tick = tick.max(0);
        Self {
            buy,
            tick,
            windowed: tick > 0,
            lo: 0,
            slots: if tick > 0 { vec![0; WINDOW] } else { Vec::new() },
            bits: if tick > 0 { vec![0; WINDOW / 64] } else { Vec::new() },
            count: 0,
            best: 0,
            top: Cell::new(None),
            far: VecDeque::with_capacity(levels),
        }
    }

    /// The key of `price`; none off the grid or unwindowed.
    #[inline]
    fn key(&self, price: Price) -> Option<i64> {
        if !self.windowed || price.raw % self.tick != 0 {
            return None;
        }
        let ticks = price.raw / self.tick;
        if self.buy {
            Some(ticks)
        } else {
            ticks.checked_neg()
        }
    }

    #[inline]
    fn price_of(&self, key: i64) -> Price {
        Price::from_raw(if self.buy { key } else { -key } * self.tick)
    }

    #[inline]
    fn level_at(&self, slot: usize) -> Level {
        Level { price: self.price_of(self.lo + slot as i64), qty: Quantity::from_raw(self.slots[slot]) }
    }

    fn len(&self) -> usize {
        self.count + self.far.len()
    }

    #[inline]
    fn best(&self) -> Option<Level> {
        if self.count > 0 {
            Some(self.level_at(self.best))
        } else {
            self.far.back().copied()
        }
    }

    /// Levels from the best outwards.
    fn best_first(&self) -> impl Iterator<Item = Level> + '_ {
        let first = (self.count > 0).then_some(self.best);
        std::iter::successors(first, |&slot| self.occupied_below(slot))
            .map(|slot| self.level_at(slot))
            .chain(self.far.iter().rev().copied())
    }

    /// The quantity of the best `n` levels: a quote's imbalance reads it, so it walks the
    /// occupancy words directly (a few instructions a level) rather than `best_first`.
    fn top_qty(&self, n: usize) -> i128 {
        if let Some((asked, sum)) = self.top.get() {
            if asked == n {
                return sum;
            }
        }
        let sum = self.sum_top(n);
        self.top.set(Some((n, sum)));
        sum
    }

    fn sum_top(&self, n: usize) -> i128 {
        let mut sum = 0i128;
        let mut left = n;
        if self.count > 0 && left > 0 {
            let mut w = self.best / 64;
            let mut word = self.bits[w] & (u64::MAX >> (63 - self.best % 64));
            loop {
                while word != 0 {
                    let bit = 63 - word.leading_zeros() as usize;
                    sum += i128::from(self.slots[w * 64 + bit]);
                    word &= !(1 << bit);
                    left -= 1;
                    if left == 0 {
                        return sum;
                    }
                }
                if w == 0 {
                    break;
                }
                w -= 1;
                word = self.bits[w];
            }
        }
        sum + self.far.iter().rev().take(left).map(|l| i128::from(l.qty.raw)).sum::<i128>()
    }

    /// Levels from the worst inwards (the archived order: bids ascending, asks descending).
    fn for_each_worst_first(&self, mut f: impl FnMut(Level)) {
        self.far.iter().for_each(|&l| f(l));
        if self.count > 0 {
            for (i, &q) in self.slots[..=self.best].iter().enumerate() {
                if q > 0 {
                    f(self.level_at(i));
                }
            }
        }
    }

    fn qty_at(&self, price: Price) -> Quantity {
        if let Some(slot) = self.key(price).and_then(|k| self.slot(k)) {
            return Quantity::from_raw(self.slots[slot]);
        }
        self.far_search(price).map_or(Quantity::ZERO, |i| self.far[i].qty)
    }

    /// The slot of `key` when it is inside the window.
    #[inline]
    fn slot(&self, key: i64) -> Option<usize> {
        let d = key.checked_sub(self.lo)?;
        (0..WINDOW as i64).contains(&d).then_some(d as usize)
    }

    fn far_search(&self, price: Price) -> Result<usize, usize> {
        if self.buy {
            self.far.binary_search_by(|l| l.price.cmp(&price))
        } else {
            self.far.binary_search_by(|l| price.cmp(&l.price))
        }
    }

    fn far_set(&mut self, price: Price, qty: Quantity) {
        self.top.set(None);
        match (self.far_search(price), qty.raw > 0) {
            (Ok(i), true) => self.far[i].qty = qty,
            (Ok(i), false) => {
                self.far.remove(i);
            }
            (Err(i), true) => self.far.insert(i, Level { price, qty }),
            (Err(_), false) => {}
        }
    }

    /// Sets the quantity at `price`; zero or less removes the level.
    fn set(&mut self, price: Price, qty: Quantity) {
        if !self.windowed {
            return self.far_set(price, qty);
        }
        let Some(key) = self.key(price) else {
            // Off the tick grid: the whole side goes to the vector until the next clear.
            self.unwindow();
            return self.far_set(price, qty);
        };
        if self.count == 0 && qty.raw > 0 && !self.place(key) {
            self.unwindow();
            return self.far_set(price, qty);
        }
        match key.checked_sub(self.lo) {
            Some(d) if (0..WINDOW as i64).contains(&d) => self.set_slot(d as usize, qty.raw.max(0)),
            // Better than the window: a new best level (a removal there has nothing to remove).
            Some(d) if d >= WINDOW as i64 => {
                if qty.raw > 0 {
                    if self.place(key) {
                        let slot = self.slot(key).expect("a placed window holds its key");
                        self.set_slot(slot, qty.raw);
                    } else {
                        self.unwindow();
                        self.far_set(price, qty);
                    }
                }
            }
            Some(_) => self.far_set(price, qty),
            None => {
                self.unwindow();
                self.far_set(price, qty);
            }
        }
    }

    #[inline]
    fn set_slot(&mut self, slot: usize, qty: i64) {
        self.top.set(None);
        let old = std::mem::replace(&mut self.slots[slot], qty);
        match (old > 0, qty > 0) {
            (false, true) => {
                self.bits[slot / 64] |= 1 << (slot % 64);
                self.count += 1;
                if self.count == 1 || slot > self.best {
                    self.best = slot;
                }
            }
            (true, false) => {
                self.bits[slot / 64] &= !(1 << (slot % 64));
                self.count -= 1;
                if slot == self.best {
                    self.best_removed();
                }
            }
            _ => {}
        }
    }

    /// The best slot was emptied: find the next one, and move the window when the touch has
    /// left it behind (or it is empty and levels remain beyond it).
    fn best_removed(&mut self) {
        if self.count > 0 {
            self.best = self.occupied_below(self.best).expect("count > 0: an occupied slot is below");
            if self.best < LOW_WATER {
                let key = self.lo + self.best as i64;
                // Cannot fail: the key is inside the current window.
                self.place(key);
            }
        } else if let Some(key) = self.far.back().and_then(|l| self.key(l.price)) {
            if !self.place(key) {
                self.unwindow();
            }
        }
    }

    /// Moves the window so that `key` sits `HEADROOM` slots below its top; false when the
    /// window would leave the key range.
    fn place(&mut self, key: i64) -> bool {
        let Some(lo) = key.checked_sub((WINDOW - HEADROOM - 1) as i64) else { return false };
        if lo.checked_add(WINDOW as i64).is_none() {
            return false;
        }
        self.shift_to(lo);
        true
    }

    /// Moves the window to start at key `lo`: levels that end up below it go to `far`, levels
    /// of `far` that end up inside it come in. The window's levels never end up above it: a
    /// window moves down only to bring its best level (or `far`'s) back inside.
    fn shift_to(&mut self, lo: i64) {
        self.top.set(None);
        if self.count == 0 && self.far.is_empty() {
            self.lo = lo;
            return;
        }
        let shift = lo.saturating_sub(self.lo);
        if shift > 0 {
            // Up: the bottom slots fall out. They are better than every level in `far`, so they
            // are appended in ascending key order (best last).
            let out = (shift as u64).min(WINDOW as u64) as usize;
            for slot in 0..out {
                let q = self.slots[slot];
                if q > 0 {
                    let level = self.level_at(slot);
                    self.far.push_back(level);
                    self.slots[slot] = 0;
                    self.count -= 1;
                }
            }
            self.slots.copy_within(out.., 0);
            self.slots[WINDOW - out..].fill(0);
        } else if shift < 0 {
            let down = (shift.unsigned_abs()).min(WINDOW as u64) as usize;
            debug_assert!(self.slots[WINDOW - down..].iter().all(|&q| q == 0), "levels above a window moved down");
            self.slots.copy_within(..WINDOW - down, down);
            self.slots[..down].fill(0);
        }
        self.lo = lo;
        // `far`'s best levels that are inside the window now come in.
        while let Some(&level) = self.far.back() {
            match self.key(level.price).and_then(|k| self.slot(k)) {
                Some(slot) => {
                    self.far.pop_back();
                    self.slots[slot] = level.qty.raw;
                    self.count += 1;
                }
                None => break,
            }
        }
        self.index_bits();
        if self.count > 0 {
            self.best = self.slots.iter().rposition(|&q| q > 0).expect("count > 0");
        }
    }

    /// The occupied slot nearest below `slot`.
    #[inline]
    fn occupied_below(&self, slot: usize) -> Option<usize> {
        let below = slot.checked_sub(1)?;
        let mut w = below / 64;
        let mut word = self.bits[w] & (u64::MAX >> (63 - below % 64));
        loop {
            if word != 0 {
                return Some(w * 64 + 63 - word.leading_zeros() as usize);
            }
            w = w.checked_sub(1)?;
            word = self.bits[w];
        }
    }

    /// Rebuilds the occupancy bits from the slots (after the window moved).
    fn index_bits(&mut self) {
        for (w, word) in self.bits.iter_mut().enumerate() {
            *word = self.slots[w * 64..(w + 1) * 64].iter().enumerate().fold(0, |acc, (i, &q)| acc | (u64::from(q > 0) << i));
        }
    }

    /// Every level to `far` (best last); the side stays unwindowed until the next clear.
    fn unwindow(&mut self) {
        self.top.set(None);
        if !self.windowed {
            return;
        }
        if self.count > 0 {
            for slot in 0..=self.best {
                if self.slots[slot] > 0 {
                    let level = self.level_at(slot);
                    self.far.push_back(level);
                    self.slots[slot] = 0;
                }
            }
        }
        self.bits.fill(0);
        self.count = 0;
        self.windowed = false;
    }

    /// Removes the levels a new opposing level at `price` crosses (at or through it).
    fn remove_through(&mut self, price: Price) {
        while let Some(best) = self.best() {
            let crossed = if self.buy { best.price >= price } else { best.price <= price };
            if !crossed {
                break;
            }
            self.set(best.price, Quantity::ZERO);
        }
    }

    fn clear(&mut self) {
        self.top.set(None);
        if self.count > 0 {
            self.slots[..=self.best].fill(0);
            self.bits[..=self.best / 64].fill(0);
        }
        self.count = 0;
        self.far.clear();
        self.windowed = self.tick > 0;
    }

    /// Holds `levels` (worst first, as archived); none may be zero or repeated.
    fn assign(&mut self, levels: &[Level]) {
        self.clear();
        let Some(best) = levels.last() else { return };
        match self.key(best.price) {
            Some(key) if self.place(key) => {}
            _ => self.unwindow(),
        }
        for &level in levels {
            match self.key(level.price) {
                Some(key) => match self.slot(key) {
                    Some(slot) => self.set_slot(slot, level.qty.raw),
                    None if key < self.lo => self.far.push_back(level),
                    None => self.set(level.price, level.qty),
                },
                None => self.set(level.price, level.qty),
            }
        }
    }

    /// Makes this side hold what `src` holds, keeping this side's tick and allocations.
    fn copy_from(&mut self, src: &Self) {
        if self.tick == src.tick && self.windowed == src.windowed && self.buy == src.buy {
            let Self { buy: _, tick: _, windowed: _, lo, slots, bits, count, best, top, far } = src;
            self.top.set(top.get());
            self.slots.copy_from_slice(slots);
            self.bits.copy_from_slice(bits);
            if self.far.capacity() < far.capacity() {
                self.far.reserve_exact(far.capacity() - self.far.len());
            }
            self.far.clone_from(far);
            (self.lo, self.count, self.best) = (*lo, *count, *best);
        } else {
            let mut levels = Vec::with_capacity(src.len());
            src.for_each_worst_first(|l| levels.push(l));
            self.assign(&levels);
        }
    }

    fn to_vec(&self) -> Vec<Level> {
        let mut levels = Vec::with_capacity(self.len());
        self.for_each_worst_first(|l| levels.push(l));
        levels
    }
}

impl std::fmt::Debug for Ladder {
    /// The levels alone, worst first (as the archived vector).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.to_vec()).finish()
    }
}

/// Archives a side as the sorted vector of its levels, worst first (the book's layout before
/// the window, so snapshots keep their format); a decoded side has no window until it is
/// copied into a book that has one ([`OrderBook::copy_from`]). `BUY`: the bid side.
#[derive(Debug)]
pub struct LevelVec<const BUY: bool>;

impl<const BUY: bool> ArchiveWith<Ladder> for LevelVec<BUY> {
    type Archived = ArchivedVec<Archived<Level>>;
    type Resolver = VecResolver;

    fn resolve_with(field: &Ladder, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_len(field.len(), resolver, out);
    }
}

impl<const BUY: bool, S> SerializeWith<Ladder, S> for LevelVec<BUY>
where
    S: Fallible + Allocator + Writer + ?Sized,
{
    fn serialize_with(field: &Ladder, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        ArchivedVec::<Archived<Level>>::serialize_from_slice(&field.to_vec(), serializer)
    }
}

impl<const BUY: bool, D> DeserializeWith<ArchivedVec<Archived<Level>>, Ladder, D> for LevelVec<BUY>
where
    D: Fallible + ?Sized,
{
    fn deserialize_with(field: &ArchivedVec<Archived<Level>>, deserializer: &mut D) -> Result<Ladder, D::Error> {
        let mut side = Ladder::new(BUY, 0, field.len());
        for level in field.iter() {
            side.far.push_back(level.deserialize(deserializer)?);
        }
        Ok(side)
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

        /// A windowed book (tick 100 raw) against the reference while the market wanders far
        /// beyond one window both ways, with now and then a price off the grid: the best levels
        /// after every update, then every level, the depth, the quantity at each price, a copy
        /// into a book without a window and back, and an archive round trip.
        #[test]
        fn a_windowed_book_matches_btreemap_as_the_market_wanders(
            ops in proptest::collection::vec((any::<bool>(), -300i64..300, -3_000i64..3_000, prop_oneof![Just(0i64), 1i64..1_000], 0u16..1_000), 0..600)
        ) {
            const TICK: i64 = 100;
            let mut book = OrderBook::with_tick(4, Price::from_raw(TICK));
            let mut reference = Reference::default();
            let mut centre: i64 = 1_000_000;
            for (is_bid, step, offset, qty, odd) in ops {
                centre += step * 7;
                let side = if is_bid { Side::Buy } else { Side::Sell };
                // Bids mostly below the centre and asks above, as a real book.
                let ticks = centre + if is_bid { -offset.abs() } else { offset.abs() };
                let raw = ticks * TICK + i64::from(odd == 0);
                book.set_level(side, Price::from_raw(raw), Quantity::from_raw(qty));
                reference.set(side, raw, qty);
                let best = |m: &BTreeMap<i64, i64>, bid: bool| {
                    let e = if bid { m.iter().next_back() } else { m.iter().next() };
                    e.map(|(&p, &q)| (p, q))
                };
                prop_assert_eq!(book.best_bid().map(|l| (l.price.raw, l.qty.raw)), best(&reference.bids, true));
                prop_assert_eq!(book.best_ask().map(|l| (l.price.raw, l.qty.raw)), best(&reference.asks, false));
                // Twice: the second read may come from the cached sums, which any change forgets.
                let top = |m: &BTreeMap<i64, i64>, bid: bool| -> i128 {
                    let q = |(_, &q): (&i64, &i64)| i128::from(q);
                    if bid { m.iter().rev().take(3).map(q).sum() } else { m.iter().take(3).map(q).sum() }
                };
                let (b, a) = (top(&reference.bids, true), top(&reference.asks, false));
                let want = if b + a == 0 { 0 } else { ((b - a) * 10_000 / (b + a)) as i64 };
                prop_assert_eq!(book.imbalance_bps(3), want);
                prop_assert_eq!(book.imbalance_bps(3), want);
            }
            let levels = |b: &OrderBook, side| b.levels(side).map(|l| (l.price.raw, l.qty.raw)).collect::<Vec<_>>();
            let ref_bids: Vec<(i64, i64)> = reference.bids.iter().rev().map(|(&p, &q)| (p, q)).collect();
            let ref_asks: Vec<(i64, i64)> = reference.asks.iter().map(|(&p, &q)| (p, q)).collect();
            prop_assert_eq!(levels(&book, Side::Buy), ref_bids.clone());
            prop_assert_eq!(levels(&book, Side::Sell), ref_asks.clone());
            prop_assert_eq!((book.depth(Side::Buy), book.depth(Side::Sell)), (ref_bids.len(), ref_asks.len()));
            for (&p, &q) in &reference.bids {
                prop_assert_eq!(book.qty_at(Side::Buy, Price::from_raw(p)).raw, q);
                prop_assert_eq!(book.qty_at(Side::Buy, Price::from_raw(p + TICK)).raw, reference.bids.get(&(p + TICK)).copied().unwrap_or(0));
            }
            for (&p, &q) in &reference.asks {
                prop_assert_eq!(book.qty_at(Side::Sell, Price::from_raw(p)).raw, q);
            }
            let mut plain = OrderBook::with_capacity(0);
            plain.copy_from(&book);
            prop_assert_eq!(format!("{plain:?}"), format!("{book:?}"));
            let mut back = OrderBook::with_tick(0, Price::from_raw(TICK));
            back.copy_from(&plain);
            prop_assert_eq!(levels(&back, Side::Buy), ref_bids.clone());
            prop_assert_eq!(levels(&back, Side::Sell), ref_asks.clone());
            let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&book).unwrap();
            let decoded: OrderBook = rkyv::from_bytes::<OrderBook, rkyv::rancor::Error>(&bytes).unwrap();
            prop_assert_eq!(format!("{decoded:?}"), format!("{book:?}"));
            prop_assert_eq!(levels(&decoded, Side::Buy), ref_bids);
            prop_assert_eq!(levels(&decoded, Side::Sell), ref_asks);
        }
    }

    /// The archived form of a book is the sorted-vector book's (snapshots written before the
    /// window still decode): the same bytes from a windowed and a plain book.
    #[test]
    fn windowed_and_plain_books_archive_to_the_same_bytes() {
        let mut windowed = OrderBook::with_tick(8, Price::from_raw(100));
        let mut plain = OrderBook::with_capacity(8);
        for (side, ticks, qty) in
            [(Side::Buy, 1_000, 3), (Side::Buy, 990, 5), (Side::Buy, -50_000, 1), (Side::Sell, 1_010, 2), (Side::Sell, 90_000, 4)]
        {
            windowed.set_level(side, Price::from_raw(ticks * 100), Quantity::from_raw(qty));
            plain.set_level(side, Price::from_raw(ticks * 100), Quantity::from_raw(qty));
        }
        let a = rkyv::to_bytes::<rkyv::rancor::Error>(&windowed).unwrap();
        let b = rkyv::to_bytes::<rkyv::rancor::Error>(&plain).unwrap();
        assert_eq!(a.as_slice(), b.as_slice());
        assert_eq!(windowed.best_bid().unwrap().price.raw, 100_000);
        assert_eq!(windowed.levels(Side::Buy).last().unwrap().price.raw, -5_000_000);
    }
}
