//! Bybit v5 public market data (spot, linear): frames parsed in place ([`market`]) and
//! turned into the core's events by [`BybitFeed`], which also keeps each order book in
//! sequence as Bybit documents it:
//!
//! 1. on subscription Bybit pushes a `snapshot`; a snapshot, or any message with `u == 1`
//!    (the service restarted), replaces the book;
//! 2. every `delta` must continue the last message: `u == previous u + 1`; a repeat of the
//!    last `u` is dropped (stale), but an id that went backwards is a break (an earlier id,
//!    already applied, was corrupt: the book would otherwise freeze, every later delta
//!    "stale"), and so is a run of more than [`MAX_STALE_RUN`] repeats;
//! 3. there is no REST snapshot to fetch: after a break the caller resubscribes the topic
//!    and Bybit pushes a fresh snapshot.
//!
//! A break marks the core's book out of sync (risk refuses orders on it), is counted in
//! [`FeedCounters::gaps`] and returns [`FrameOutcome::NeedSnapshot`] (once per break). Deltas
//! that arrive while no snapshot is applied (before the first one, after a gap), and repeats
//! of an applied `u`, are dropped and counted in [`FeedCounters::stale`]: they are not gaps of
//! their own, the gap was counted once.
//!
//! Prices must be positive, quantities non-negative, merged ticker quotes uncrossed and
//! timestamps in range ([`crate::feed`]); anything else skips the whole frame, counted.
//!
//! `publicTrade` messages are arrays: one [`Trade`] per element, `S` the taker's side.
//! `tickers` deltas leave out unchanged fields, so the last best bid/ask of each instrument
//! is kept and a [`Quote`] goes out once all four fields are known (spot tickers have none:
//! they are ignored).
//!
//! Each depth of a symbol has its own `u` sequence: subscribe one `orderbook` depth per
//! symbol and feed.

pub mod instruments;
pub mod market;

use crate::binance::FrameOutcome;
pub use crate::binance::MAX_STALE_RUN;
use crate::feed::{price, qty, uncrossed, venue_ms, FeedCounters, FeedError, LevelBuffer, SymbolTable, VenueClock};
use market::{parse_frame, BybitBook, BybitTicker, BybitTrades};
pub use market::{BybitCategory, BybitFrame};
use sapphire_core::event::{BookDelta, Event, Quote, Trade, DELTA_LAST, DELTA_RESYNC};
use sapphire_core::fixed::{Price, Quantity};
use sapphire_core::instrument::{InstrumentId, InstrumentRegistry};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncState {
    /// No snapshot applied; `requested` once the caller was told to resubscribe.
    AwaitingSnapshot { requested: bool },
    /// In sequence; `last` is the update id (`u`) of the last message applied, `repeats` the
    /// repeats of it seen in a row since.
    Synced { last: u64, repeats: u32 },
}

/// The last best bid/ask a `tickers` stream told us; `None` until the venue sent the field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct TopOfBook {
    bid_price: Option<Price>,
    bid_qty: Option<Quantity>,
    ask_price: Option<Price>,
    ask_qty: Option<Quantity>,
}

/// A field of a ticker message: left out (unchanged), sent empty (no value), or a value.
#[derive(Clone, Copy)]
enum TickerField<T> {
    Unchanged,
    Cleared,
    Set(T),
}

impl<T: Copy> TickerField<T> {
    fn parse(text: Option<&[u8]>, parse: impl FnOnce(&[u8]) -> Result<T, FeedError>) -> Result<Self, FeedError> {
        Ok(match text {
            None => TickerField::Unchanged,
            Some(b"") => TickerField::Cleared,
            Some(t) => TickerField::Set(parse(t)?),
        })
    }

    fn is_unchanged(&self) -> bool {
        matches!(self, TickerField::Unchanged)
    }

    fn merge_into(self, slot: &mut Option<T>) {
        match self {
            TickerField::Unchanged => {}
            TickerField::Cleared => *slot = None,
            TickerField::Set(v) => *slot = Some(v),
        }
    }
}

/// One Bybit category's feed adapter: frames in, core events out.
#[derive(Debug)]
pub struct BybitFeed {
    category: BybitCategory,
    symbols: SymbolTable,
    /// Book sequence per instrument, indexed by [`InstrumentId`].
    books: Vec<SyncState>,
    /// Last known ticker best bid/ask per instrument, indexed by [`InstrumentId`].
    tops: Vec<TopOfBook>,
    /// Parsed levels of the frame being converted (reused: no allocation once warm).
    levels: LevelBuffer,
    /// Parsed trades of the frame being converted (reused, like `levels`).
    trades: Vec<Trade>,
    /// Counters.
    pub counters: FeedCounters,
    /// Keeps a stamp far ahead of the venue's clock out of the engine's event clock.
    clock: VenueClock,
}

impl BybitFeed {
    /// An adapter for the instruments of `venue` (e.g. `bybit`, `bybit-linear`) in `registry`.
    pub fn new(category: BybitCategory, registry: &InstrumentRegistry, venue: &str) -> Self {
        Self {
            category,
            symbols: SymbolTable::for_venue(registry, venue),
            books: vec![SyncState::AwaitingSnapshot { requested: false }; registry.len()],
            tops: vec![TopOfBook::default(); registry.len()],
            levels: LevelBuffer::with_capacity(2_048),
            trades: Vec::with_capacity(256),
            counters: FeedCounters::default(),
            clock: VenueClock::default(),
        }
    }

    /// Registers a symbol not in the registry it was built from (for tools that learn
    /// symbols as they read); returns its id. Known symbols keep theirs.
    pub fn ensure_symbol(&mut self, symbol: &str) -> InstrumentId {
        if let Some(id) = self.symbols.get(symbol) {
            return id;
        }
        let id = InstrumentId(self.books.len() as u32);
        self.symbols.insert(symbol, id);
        self.books.push(SyncState::AwaitingSnapshot { requested: false });
        self.tops.push(TopOfBook::default());
        id
    }

    /// The category.
    pub fn category(&self) -> BybitCategory {
        self.category
    }

    /// True when the instrument's book is in sequence.
    pub fn in_sync(&self, instrument: InstrumentId) -> bool {
        matches!(self.books.get(instrument.index()), Some(SyncState::Synced { .. }))
    }

    /// Forgets every book's sequence and every ticker's best bid/ask (after a reconnect):
    /// each book waits for the snapshot Bybit pushes on the new subscription. For every book
    /// the core had in sequence it emits a marker whose previous id breaks the core's
    /// continuity, so the core's book goes out of sync at once (risk refuses orders on it)
    /// instead of trading on a frozen book until the new snapshot.
    pub fn reset_books(&mut self, recv_ns: u64, emit: &mut impl FnMut(Event)) {
        for (i, state) in self.books.iter_mut().enumerate() {
            if let SyncState::Synced { last, .. } = *state {
                emit(Event::BookDelta(BookDelta {
                    ts_event: recv_ns,
                    ts_recv: recv_ns,
                    instrument: InstrumentId(i as u32),
                    flags: DELTA_LAST | DELTA_RESYNC,
                    first_update_id: last.saturating_add(2),
                    last_update_id: last.saturating_add(2),
                    prev_update_id: last.saturating_add(1),
                    ..BookDelta::default()
                }));
                self.counters.events += 1;
            }
            *state = SyncState::AwaitingSnapshot { requested: false };
        }
        self.tops.fill(TopOfBook::default());
    }

    fn instrument(&self, symbol: &str) -> Result<InstrumentId, FeedError> {
        self.symbols.get(symbol).ok_or(FeedError::UnknownSymbol)
    }

    /// Takes one frame received at `recv_ns` and emits the events it carries.
    ///
    /// [`FrameOutcome::NeedSnapshot`] means the instrument's book lost its sequence: resubscribe
    /// its `orderbook` topic (Bybit answers with a snapshot).
    pub fn on_frame(&mut self, recv_ns: u64, bytes: &[u8], emit: &mut impl FnMut(Event)) -> FrameOutcome {
        self.counters.frames += 1;
        let outcome = match parse_frame(bytes) {
            Ok(frame) => self.on_parsed(recv_ns, frame, emit),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(o) => o,
            Err(e) => {
                self.counters.skip(&e);
                FrameOutcome::Skipped(e)
            }
        }
    }

    fn on_parsed(&mut self, recv_ns: u64, frame: BybitFrame<'_>, emit: &mut impl FnMut(Event)) -> Result<FrameOutcome, FeedError> {
        match frame {
            BybitFrame::Book(b) => self.on_book(recv_ns, b, emit),
            BybitFrame::Trades(t) => self.on_trades(recv_ns, t, emit),
            BybitFrame::Ticker(t) => self.on_ticker(recv_ns, t, emit),
            BybitFrame::Response(_) | BybitFrame::Other(_) => Ok(self.ignore()),
        }
    }

    fn ignore(&mut self) -> FrameOutcome {
        self.counters.ignored += 1;
        FrameOutcome::Ignored
    }

    /// Parses every trade first, so a bad element skips the whole frame, never half of it.
    fn on_trades(&mut self, recv_ns: u64, trades: BybitTrades<'_>, emit: &mut impl FnMut(Event)) -> Result<FrameOutcome, FeedError> {
        self.trades.clear();
        for t in trades {
            let t = t?;
            let instrument = self.instrument(t.symbol)?;
            self.trades.push(Trade {
                ts_event: venue_ms(&mut self.clock, &mut self.counters, "T", t.time_ms, recv_ns)?,
                ts_recv: recv_ns,
                instrument,
                aggressor: t.taker_side,
                _pad: [0; 3],
                price: price("p", t.price)?,
                qty: qty("v", t.qty)?,
                trade_id: t.trade_id,
            });
        }
        if self.trades.is_empty() {
            return Ok(self.ignore());
        }
        for &t in &self.trades {
            emit(Event::Trade(t));
        }
        self.counters.events += self.trades.len() as u64;
        Ok(FrameOutcome::Applied)
    }

    /// Merges a ticker into the instrument's last best bid/ask; quotes once all four are known
    /// and the message changed one of them.
    fn on_ticker(&mut self, recv_ns: u64, t: BybitTicker<'_>, emit: &mut impl FnMut(Event)) -> Result<FrameOutcome, FeedError> {
        let instrument = self.instrument(t.symbol)?;
        // Every field is checked before the kept state changes.
        let ts_event = venue_ms(&mut self.clock, &mut self.counters, "ts", t.ts_ms, recv_ns)?;
        let bid_price = TickerField::parse(t.bid_price, |b| price("bid1Price", b))?;
        let bid_qty = TickerField::parse(t.bid_qty, |b| qty("bid1Size", b))?;
        let ask_price = TickerField::parse(t.ask_price, |b| price("ask1Price", b))?;
        let ask_qty = TickerField::parse(t.ask_qty, |b| qty("ask1Size", b))?;
        let Some(top) = self.tops.get_mut(instrument.index()) else {
            return Err(FeedError::UnknownSymbol);
        };
        let changed = !(bid_price.is_unchanged() && bid_qty.is_unchanged() && ask_price.is_unchanged() && ask_qty.is_unchanged());
        let mut merged = if t.snapshot { TopOfBook::default() } else { *top };
        bid_price.merge_into(&mut merged.bid_price);
        bid_qty.merge_into(&mut merged.bid_qty);
        ask_price.merge_into(&mut merged.ask_price);
        ask_qty.merge_into(&mut merged.ask_qty);
        // A crossed result skips the frame and keeps the last good state.
        if let (Some(bid), Some(ask)) = (merged.bid_price, merged.ask_price) {
            uncrossed(bid, ask)?;
        }
        *top = merged;
        let (Some(bid_price), Some(bid_qty), Some(ask_price), Some(ask_qty), true) =
            (top.bid_price, top.bid_qty, top.ask_price, top.ask_qty, changed)
        else {
            return Ok(self.ignore());
        };
        let quote = Quote { ts_event, ts_recv: recv_ns, instrument, _pad: 0, bid_price, ask_price, bid_qty, ask_qty };
        self.counters.events += 1;
        emit(Event::Quote(quote));
        Ok(FrameOutcome::Applied)
    }

    fn on_book(&mut self, recv_ns: u64, b: BybitBook<'_>, emit: &mut impl FnMut(Event)) -> Result<FrameOutcome, FeedError> {
        let instrument = self.instrument(b.symbol)?;
        let (u, ts_event, resets) = (b.update_id, venue_ms(&mut self.clock, &mut self.counters, "cts", b.time_ms(), recv_ns)?, b.resets());
        // Every level is checked before the sequence moves or anything is emitted.
        self.levels.collect(b.bids, b.asks)?;
        let Some(state) = self.books.get_mut(instrument.index()) else {
            return Err(FeedError::UnknownSymbol);
        };
        if resets {
            *state = SyncState::Synced { last: u, repeats: 0 };
            self.counters.snapshots += 1;
            self.counters.events += self.levels.emit(instrument, ts_event, recv_ns, (u, u, 0), true, emit);
            return Ok(FrameOutcome::Applied);
        }
        match *state {
            SyncState::AwaitingSnapshot { requested } => {
                *state = SyncState::AwaitingSnapshot { requested: true };
                self.counters.stale += 1;
                Ok(if requested { FrameOutcome::Applied } else { FrameOutcome::NeedSnapshot(instrument) })
            }
            // A repeat of the last message applied, a bounded number of times.
            SyncState::Synced { last, repeats } if u == last && repeats < MAX_STALE_RUN => {
                *state = SyncState::Synced { last, repeats: repeats + 1 };
                self.counters.stale += 1;
                Ok(FrameOutcome::Applied)
            }
            SyncState::Synced { last, .. } if last.checked_add(1) == Some(u) => {
                *state = SyncState::Synced { last: u, repeats: 0 };
                self.counters.events += self.levels.emit(instrument, ts_event, recv_ns, (u, u, last), false, emit);
                Ok(FrameOutcome::Applied)
            }
            // Ahead (a message lost), behind (an earlier id was corrupt), or repeats without end.
            SyncState::Synced { .. } => Ok(self.lose_sync(instrument, ts_event, recv_ns, u, emit)),
        }
    }

    /// A break in the sequence: the core is told by a [`DELTA_RESYNC`] marker (so its book
    /// goes out of sync and risk refuses orders on it, whatever the ids), and the caller must
    /// resubscribe for a new snapshot.
    fn lose_sync(&mut self, instrument: InstrumentId, ts_event: u64, recv_ns: u64, u: u64, emit: &mut impl FnMut(Event)) -> FrameOutcome {
        emit(Event::BookDelta(BookDelta {
            ts_event,
            ts_recv: recv_ns,
            instrument,
            flags: DELTA_LAST | DELTA_RESYNC,
            first_update_id: u,
            last_update_id: u,
            prev_update_id: u.saturating_sub(1).max(1),
            ..BookDelta::default()
        }));
        self.counters.events += 1;
        self.counters.gaps += 1;
        if let Some(state) = self.books.get_mut(instrument.index()) {
            *state = SyncState::AwaitingSnapshot { requested: true };
        }
        FrameOutcome::NeedSnapshot(instrument)
    }
}

#[cfg(test)]
mod tests;
