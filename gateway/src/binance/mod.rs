//! Binance spot and USD-M futures market data: frames parsed in place
//! ([`market`]) and turned into the core's events by [`BinanceFeed`], which also keeps each
//! order book in sync exactly as Binance documents it:
//!
//! 1. buffer depth events and fetch a REST snapshot;
//! 2. drop buffered events older than the snapshot (`u <= lastUpdateId` spot, `u < lastUpdateId` futures);
//! 3. the first applied event must bracket it (spot `U <= lastUpdateId+1 <= u`, futures `U <= lastUpdateId <= u`);
//! 4. then every event must continue the last (spot `U == previous u + 1`, futures `pu == previous u`).
//!
//! A break marks the core's book out of sync (risk refuses orders on it), is counted, and
//! asks the caller for a new snapshot. So that a book can never stay frozen while it says it
//! is in sync, two more things are breaks:
//!
//! - in sequence, an event that neither continues the last one nor repeats it (`u` equal to the
//!   last `u`): an id that went backwards means an earlier id was corrupt;
//! - more than [`MAX_STALE_RUN`] live events in a row that are older than the book (a snapshot
//!   whose `lastUpdateId` the stream never reaches, or repeats that never end).
//!
//! A depth frame of the other market (USD-M frames carry `pu`, spot ones do not) is a
//! [`FeedError::WrongMarket`] skip, which a live client treats as terminal.
//!
//! Prices must be positive, quantities non-negative, quotes uncrossed and timestamps in range
//! ([`crate::feed`]); anything else skips the whole frame, counted with its reason.

/// `exchangeInfo` into the instrument registry.
pub mod instruments;
pub mod market;

use crate::feed::{price, qty, uncrossed, venue_ms, FeedCounters, FeedError, LevelBuffer, SymbolTable, VenueClock};
use crate::json::Levels;
pub use market::BinanceMarket;
use market::{parse_frame, BinanceDepth, BinanceFrame};
use sapphire_core::event::{BookDelta, Event, Quote, Side, Trade, DELTA_LAST, DELTA_RESYNC};
use sapphire_core::instrument::{InstrumentId, InstrumentRegistry};

/// Depth frames kept per symbol while waiting for a snapshot; past it the oldest are dropped
/// and the sync starts over when the snapshot arrives.
const MAX_BUFFERED: usize = 10_000;

/// Live depth events in a row older than the book (or repeating its last one) before the
/// sync is declared lost. A snapshot fetched while the stream lags is legitimately ahead of it
/// for a few events; a stream that never catches up means the snapshot's or an event's id was
/// wrong, and the book, frozen, would otherwise say it is in sync forever. Buffered events
/// replayed after a snapshot do not count (there are at most [`MAX_BUFFERED`]).
pub const MAX_STALE_RUN: u32 = 1_000;

/// What the caller should do after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameOutcome {
    /// Events were produced (maybe none, e.g. a buffered depth update).
    Applied,
    /// Nothing for the engine (responses, unused streams).
    Ignored,
    /// Skipped and counted.
    Skipped(FeedError),
    /// Fetch a depth snapshot for this instrument and pass it to [`BinanceFeed::on_snapshot`].
    NeedSnapshot(InstrumentId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncState {
    /// Buffering depth events; `requested` once the caller was asked for a snapshot.
    AwaitingSnapshot { requested: bool },
    /// Snapshot applied at `lid`; the next event must bracket it.
    Bracketing { lid: u64 },
    /// In sequence; `last` is the final update id applied.
    Synced { last: u64 },
}

#[derive(Debug, Clone)]
struct BookSync {
    state: SyncState,
    buffer: Vec<(u64, Vec<u8>)>,
    /// Live stale events in a row (see [`MAX_STALE_RUN`]).
    stale_run: u32,
}

impl BookSync {
    fn new() -> Self {
        Self { state: SyncState::AwaitingSnapshot { requested: false }, buffer: Vec::new(), stale_run: 0 }
    }
}

/// One Binance market's feed adapter: frames in, core events out.
#[derive(Debug)]
pub struct BinanceFeed {
    market: BinanceMarket,
    symbols: SymbolTable,
    books: Vec<BookSync>,
    /// REST snapshots carry no symbol: in recordings they belong to the last depth symbol.
    last_depth_instrument: Option<InstrumentId>,
    /// Parsed levels of the frame being converted (reused: no allocation once warm).
    levels: LevelBuffer,
    /// Counters.
    pub counters: FeedCounters,
    /// Keeps a stamp far ahead of the venue's clock out of the engine's event clock.
    clock: VenueClock,
}

impl BinanceFeed {
    /// An adapter for the instruments of `venue` (e.g. `binance`, `binance-usdm`) in `registry`.
    pub fn new(market: BinanceMarket, registry: &InstrumentRegistry, venue: &str) -> Self {
        Self {
            market,
            symbols: SymbolTable::for_venue(registry, venue),
            books: (0..registry.len()).map(|_| BookSync::new()).collect(),
            last_depth_instrument: None,
            levels: LevelBuffer::with_capacity(2_048),
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
        self.books.push(BookSync::new());
        id
    }

    /// The market.
    pub fn market(&self) -> BinanceMarket {
        self.market
    }

    /// True when the instrument's book is in sequence.
    pub fn in_sync(&self, instrument: InstrumentId) -> bool {
        self.books.get(instrument.index()).is_some_and(|b| !matches!(b.state, SyncState::AwaitingSnapshot { .. }))
    }

    /// Forgets every book's sequence (after a reconnect): each needs a new snapshot. For
    /// every book the core had in sequence it emits a marker whose previous id breaks the
    /// core's continuity, so the core's book goes out of sync at once (and risk refuses
    /// orders on it) instead of trading on a frozen book until the new snapshot.
    pub fn reset_books(&mut self, recv_ns: u64, emit: &mut impl FnMut(Event)) {
        for (i, b) in self.books.iter_mut().enumerate() {
            let last = match b.state {
                SyncState::Synced { last } => Some(last),
                SyncState::Bracketing { lid } => Some(lid),
                SyncState::AwaitingSnapshot { .. } => None,
            };
            if let Some(last) = last {
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
            b.state = SyncState::AwaitingSnapshot { requested: false };
            b.buffer.clear();
            b.stale_run = 0;
        }
    }

    fn instrument(&self, symbol: &str) -> Result<InstrumentId, FeedError> {
        self.symbols.get(symbol).ok_or(FeedError::UnknownSymbol)
    }

    /// Takes one frame received at `recv_ns` and emits the events it carries.
    pub fn on_frame(&mut self, recv_ns: u64, bytes: &[u8], emit: &mut impl FnMut(Event)) -> FrameOutcome {
        self.counters.frames += 1;
        let outcome = match parse_frame(bytes) {
            Ok(frame) => self.on_parsed(recv_ns, frame, bytes, emit),
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

    /// A REST depth snapshot for `instrument` (or, when `None`, for the last depth symbol seen).
    pub fn on_snapshot(
        &mut self,
        instrument: Option<InstrumentId>,
        recv_ns: u64,
        bytes: &[u8],
        emit: &mut impl FnMut(Event),
    ) -> FrameOutcome {
        self.counters.frames += 1;
        let result = match parse_frame(bytes) {
            Ok(BinanceFrame::Snapshot(s)) => match instrument.or(self.last_depth_instrument) {
                Some(inst) => self.apply_snapshot(inst, recv_ns, s.last_update_id, s.time_ms, s.bids, s.asks, emit),
                None => Err(FeedError::UnknownSymbol),
            },
            Ok(_) => Err(FeedError::Field("lastUpdateId")),
            Err(e) => Err(e),
        };
        result.unwrap_or_else(|e| {
            self.counters.skip(&e);
            FrameOutcome::Skipped(e)
        })
    }

    fn on_parsed(
        &mut self,
        recv_ns: u64,
        frame: BinanceFrame<'_>,
        raw: &[u8],
        emit: &mut impl FnMut(Event),
    ) -> Result<FrameOutcome, FeedError> {
        match frame {
            BinanceFrame::BookTicker(t) => {
                let instrument = self.instrument(t.symbol)?;
                let quote = Quote {
                    ts_event: t.time_ms.map_or(Ok(recv_ns), |m| venue_ms(&mut self.clock, &mut self.counters, "T", m, recv_ns))?,
                    ts_recv: recv_ns,
                    instrument,
                    _pad: 0,
                    bid_price: price("b", t.bid.0)?,
                    ask_price: price("a", t.ask.0)?,
                    bid_qty: qty("B", t.bid.1)?,
                    ask_qty: qty("A", t.ask.1)?,
                };
                uncrossed(quote.bid_price, quote.ask_price)?;
                self.counters.events += 1;
                emit(Event::Quote(quote));
                Ok(FrameOutcome::Applied)
            }
            BinanceFrame::Trade(t) => {
                let instrument = self.instrument(t.symbol)?;
                let trade = Trade {
                    ts_event: venue_ms(&mut self.clock, &mut self.counters, "T", t.time_ms, recv_ns)?,
                    ts_recv: recv_ns,
                    instrument,
                    aggressor: if t.buyer_is_maker { Side::Sell } else { Side::Buy },
                    _pad: [0; 3],
                    price: price("p", t.price)?,
                    qty: qty("q", t.qty)?,
                    trade_id: t.trade_id,
                };
                self.counters.events += 1;
                emit(Event::Trade(trade));
                Ok(FrameOutcome::Applied)
            }
            BinanceFrame::Depth(d) => {
                let instrument = self.instrument(d.symbol)?;
                self.last_depth_instrument = Some(instrument);
                self.on_depth(instrument, recv_ns, d, raw, false, emit)
            }
            BinanceFrame::Snapshot(s) => match self.last_depth_instrument {
                Some(inst) => self.apply_snapshot(inst, recv_ns, s.last_update_id, s.time_ms, s.bids, s.asks, emit),
                None => Err(FeedError::UnknownSymbol),
            },
            BinanceFrame::Response | BinanceFrame::Other(_) => {
                self.counters.ignored += 1;
                Ok(FrameOutcome::Ignored)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_snapshot(
        &mut self,
        instrument: InstrumentId,
        recv_ns: u64,
        lid: u64,
        time_ms: Option<u64>,
        bids: Levels<'_>,
        asks: Levels<'_>,
        emit: &mut impl FnMut(Event),
    ) -> Result<FrameOutcome, FeedError> {
        let ts_event = time_ms.map_or(Ok(recv_ns), |m| venue_ms(&mut self.clock, &mut self.counters, "T", m, recv_ns))?;
        self.levels.collect(bids, asks)?;
        if self.books.get(instrument.index()).is_none() {
            return Err(FeedError::UnknownSymbol);
        }
        self.counters.snapshots += 1;
        self.counters.events += self.levels.emit(instrument, ts_event, recv_ns, (lid, lid, 0), true, emit);
        let Some(book) = self.books.get_mut(instrument.index()) else {
            return Err(FeedError::UnknownSymbol);
        };
        book.state = SyncState::Bracketing { lid };
        book.stale_run = 0;
        // Replay what was buffered while we waited.
        let buffered = std::mem::take(&mut book.buffer);
        let mut outcome = FrameOutcome::Applied;
        for (recv, raw) in &buffered {
            if let Ok(BinanceFrame::Depth(d)) = parse_frame(raw) {
                if let Ok(FrameOutcome::NeedSnapshot(i)) = self.on_depth(instrument, *recv, d, raw, true, emit) {
                    outcome = FrameOutcome::NeedSnapshot(i);
                }
            }
        }
        if let Some(book) = self.books.get_mut(instrument.index()) {
            if book.buffer.is_empty() {
                // Keep the allocation for the next resync.
                book.buffer = buffered;
                book.buffer.clear();
            }
        }
        Ok(outcome)
    }

    /// One depth event; `buffered` when it is replayed from the buffer after a snapshot.
    #[allow(clippy::too_many_arguments)]
    fn on_depth(
        &mut self,
        instrument: InstrumentId,
        recv_ns: u64,
        d: BinanceDepth<'_>,
        raw: &[u8],
        buffered: bool,
        emit: &mut impl FnMut(Event),
    ) -> Result<FrameOutcome, FeedError> {
        let market = self.market;
        // Every field is checked before anything is buffered or emitted.
        let ts_event = venue_ms(&mut self.clock, &mut self.counters, "E", d.time_ms, recv_ns)?;
        self.levels.collect(d.bids.clone(), d.asks.clone())?;
        check_market(market, &d)?;
        let Some(book) = self.books.get_mut(instrument.index()) else {
            return Err(FeedError::UnknownSymbol);
        };
        let prev = match book.state {
            SyncState::AwaitingSnapshot { requested } => {
                if book.buffer.len() >= MAX_BUFFERED {
                    book.buffer.remove(0);
                }
                book.buffer.push((recv_ns, raw.to_vec()));
                book.state = SyncState::AwaitingSnapshot { requested: true };
                return Ok(if requested { FrameOutcome::Applied } else { FrameOutcome::NeedSnapshot(instrument) });
            }
            SyncState::Bracketing { lid } => {
                let stale = match market {
                    BinanceMarket::Spot => d.last_id <= lid,
                    BinanceMarket::UsdM => d.last_id < lid,
                };
                if stale {
                    return Ok(self.on_stale(instrument, ts_event, recv_ns, &d, raw, buffered, emit));
                }
                let brackets = d.first_id <= d.last_id
                    && match market {
                        BinanceMarket::Spot => d.first_id <= lid.saturating_add(1) && lid < d.last_id,
                        BinanceMarket::UsdM => d.first_id <= lid && lid <= d.last_id,
                    };
                if !brackets {
                    return Ok(self.lose_sync(instrument, ts_event, recv_ns, &d, raw, emit));
                }
                lid
            }
            SyncState::Synced { last } => {
                let continues = d.first_id <= d.last_id
                    && last < d.last_id
                    && match market {
                        BinanceMarket::Spot => last.checked_add(1) == Some(d.first_id),
                        BinanceMarket::UsdM => d.prev_id == Some(last),
                    };
                if !continues {
                    // Only a repeat of the last event is harmless; an id that went backwards
                    // means an earlier one (already applied) was corrupt.
                    if d.last_id == last {
                        return Ok(self.on_stale(instrument, ts_event, recv_ns, &d, raw, buffered, emit));
                    }
                    return Ok(self.lose_sync(instrument, ts_event, recv_ns, &d, raw, emit));
                }
                last
            }
        };
        let (first, last) = (d.first_id, d.last_id);
        self.counters.events += self.levels.emit(instrument, ts_event, recv_ns, (first, last, prev), false, emit);
        if let Some(book) = self.books.get_mut(instrument.index()) {
            book.state = SyncState::Synced { last };
            book.stale_run = 0;
        }
        Ok(FrameOutcome::Applied)
    }

    /// An event older than the book: dropped and counted; past [`MAX_STALE_RUN`] live ones in
    /// a row, the stream is not going to reach the book: a break.
    #[allow(clippy::too_many_arguments)]
    fn on_stale(
        &mut self,
        instrument: InstrumentId,
        ts_event: u64,
        recv_ns: u64,
        d: &BinanceDepth<'_>,
        raw: &[u8],
        buffered: bool,
        emit: &mut impl FnMut(Event),
    ) -> FrameOutcome {
        self.counters.stale += 1;
        if buffered {
            return FrameOutcome::Applied;
        }
        let Some(book) = self.books.get_mut(instrument.index()) else {
            return FrameOutcome::Applied;
        };
        book.stale_run += 1;
        if book.stale_run > MAX_STALE_RUN {
            return self.lose_sync(instrument, ts_event, recv_ns, d, raw, emit);
        }
        FrameOutcome::Applied
    }

    /// A break in the sequence: the core is told by a [`DELTA_RESYNC`] marker (so its book goes
    /// out of sync and risk refuses orders on it, whatever the ids), and a new snapshot is
    /// needed. The marker carries the venue's ids of the event that broke the sequence.
    fn lose_sync(
        &mut self,
        instrument: InstrumentId,
        ts_event: u64,
        recv_ns: u64,
        d: &BinanceDepth<'_>,
        raw: &[u8],
        emit: &mut impl FnMut(Event),
    ) -> FrameOutcome {
        let venue_prev = match self.market {
            BinanceMarket::Spot => d.first_id.saturating_sub(1),
            BinanceMarket::UsdM => d.prev_id.unwrap_or(0),
        };
        emit(Event::BookDelta(BookDelta {
            ts_event,
            ts_recv: recv_ns,
            instrument,
            flags: DELTA_LAST | DELTA_RESYNC,
            first_update_id: d.first_id,
            last_update_id: d.last_id,
            prev_update_id: venue_prev.max(1),
            ..BookDelta::default()
        }));
        self.counters.events += 1;
        self.counters.gaps += 1;
        if let Some(book) = self.books.get_mut(instrument.index()) {
            book.buffer.clear();
            book.buffer.push((recv_ns, raw.to_vec()));
            book.state = SyncState::AwaitingSnapshot { requested: true };
            book.stale_run = 0;
        }
        FrameOutcome::NeedSnapshot(instrument)
    }
}

/// USD-M depth frames always carry `pu` (the previous final update id), spot ones never do:
/// a frame of the other market would break every book's sequence on every frame, and the
/// client would resync forever. One field test per depth frame decides it.
#[inline]
fn check_market(market: BinanceMarket, d: &BinanceDepth<'_>) -> Result<(), FeedError> {
    match (market, d.prev_id) {
        (BinanceMarket::Spot, Some(_)) => {
            Err(FeedError::WrongMarket { configured: "spot", seen: "USD-M futures depth updates (they carry `pu`)", fix: "usdm" })
        }
        (BinanceMarket::UsdM, None) => {
            Err(FeedError::WrongMarket { configured: "usdm", seen: "spot depth updates (they carry no `pu`)", fix: "spot" })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
