//! What every venue's feed adapter shares: the error type with a reason per skipped frame,
//! the counters, and the symbol table that maps venue symbols to the core's instrument ids.

use crate::json::{JsonError, Levels};
use sapphire_core::event::{BookDelta, Event, Side, DELTA_CLEAR, DELTA_LAST, DELTA_SNAPSHOT};
use sapphire_core::fixed::DecimalError;
use sapphire_core::fixed::{Price, Quantity};
use sapphire_core::instrument::{InstrumentId, InstrumentRegistry};
use std::collections::HashMap;

/// Why a frame was skipped. Every variant is counted; only [`FeedError::WrongMarket`] is
/// terminal for a live client (see [`FeedError::is_terminal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    /// Not valid JSON.
    #[error("malformed JSON: {0}")]
    Json(#[from] JsonError),
    /// A field the message kind needs is missing or has the wrong type.
    #[error("field `{0}` missing or of the wrong type")]
    Field(&'static str),
    /// A price or quantity that is not an exact decimal in range.
    #[error("field `{field}`: {error}")]
    Decimal {
        /// The field.
        field: &'static str,
        /// What was wrong.
        error: DecimalError,
    },
    /// A symbol we do not trade.
    #[error("unknown symbol")]
    UnknownSymbol,
    /// A best bid above the best ask.
    #[error("crossed quote: bid above ask")]
    CrossedQuote,
    /// A timestamp whose nanoseconds do not fit the event clock (see [`ms_to_ns`]).
    #[error("field `{0}`: timestamp out of range")]
    Timestamp(&'static str),
    /// Frames of another market than the one configured (USD-M depth frames to a spot
    /// client, or the reverse): every book would break on every frame and resync forever.
    #[error(
        "the feed's frames do not match the configured market: venue_market is \"{configured}\" but the frames are {seen}; set [market] venue_market = \"{fix}\" (or point ws_url and rest_url at a {configured} feed)"
    )]
    WrongMarket {
        /// The configured market (`spot`, `usdm`).
        configured: &'static str,
        /// What the frames look like.
        seen: &'static str,
        /// The `venue_market` that matches the frames.
        fix: &'static str,
    },
}

impl FeedError {
    /// A stable label for the skip counter.
    pub fn label(&self) -> &'static str {
        match self {
            FeedError::Json(_) => "malformed_json",
            FeedError::Field(_) => "missing_field",
            FeedError::Decimal { .. } => "bad_decimal",
            FeedError::UnknownSymbol => "unknown_symbol",
            FeedError::CrossedQuote => "crossed_quote",
            FeedError::Timestamp(_) => "bad_timestamp",
            FeedError::WrongMarket { .. } => "wrong_market",
        }
    }

    /// True when skipping cannot help: a live client must stop and say why.
    pub fn is_terminal(&self) -> bool {
        matches!(self, FeedError::WrongMarket { .. })
    }
}

/// One instrument as a venue lists it, reduced to what the registry needs.
#[derive(Debug, Clone, Copy)]
pub struct Listing<'a> {
    /// Venue symbol.
    pub symbol: &'a str,
    /// Listed as trading now.
    pub trading: bool,
    /// Price step.
    pub tick_size: sapphire_core::fixed::Price,
    /// Quantity step.
    pub lot_size: sapphire_core::fixed::Quantity,
    /// Smallest order value (zero when the venue has none).
    pub min_notional: sapphire_core::fixed::Money,
}

/// Registers `wanted` symbols (or, when empty, every trading symbol up to `cap`) in
/// `registry` under `venue`; returns their ids, or an error naming a wanted symbol the venue
/// does not list as trading. Both venues' `instruments::register` come here.
pub fn register_listings(
    listed: &[Listing<'_>],
    wanted: &[String],
    cap: usize,
    venue: &str,
    market: sapphire_core::instrument::MarketType,
    registry: &mut InstrumentRegistry,
) -> Result<Vec<InstrumentId>, String> {
    let chosen: Vec<&Listing<'_>> = if wanted.is_empty() {
        listed.iter().filter(|s| s.trading).take(cap).collect()
    } else {
        wanted
            .iter()
            .map(|w| listed.iter().find(|s| s.symbol == w && s.trading).ok_or_else(|| format!("{w} is not a trading symbol on {venue}")))
            .collect::<Result<_, _>>()?
    };
    chosen
        .into_iter()
        .map(|s| {
            registry
                .intern(sapphire_core::instrument::InstrumentSpec {
                    venue,
                    symbol: s.symbol,
                    market,
                    tick_size: s.tick_size,
                    lot_size: s.lot_size,
                    min_notional: s.min_notional,
                })
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// Counters of one feed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FeedCounters {
    /// Frames read.
    pub frames: u64,
    /// Events produced.
    pub events: u64,
    /// Frames skipped: malformed JSON.
    pub malformed_json: u64,
    /// Frames skipped: a needed field missing.
    pub missing_field: u64,
    /// Frames skipped: a bad decimal.
    pub bad_decimal: u64,
    /// Frames skipped: a symbol we do not trade.
    pub unknown_symbol: u64,
    /// Frames skipped: a quote whose bid is above its ask.
    pub crossed_quote: u64,
    /// Frames skipped: a timestamp out of the event clock's range.
    pub bad_timestamp: u64,
    /// Frames skipped: frames of another market than the configured one.
    pub wrong_market: u64,
    /// Frames with nothing for the engine (acks, klines, pongs).
    pub ignored: u64,
    /// Book sequence gaps.
    pub gaps: u64,
    /// Snapshots applied (initial syncs and resyncs).
    pub snapshots: u64,
    /// Depth updates older than the book, dropped (a run of them past a bound is a gap).
    pub stale: u64,
    /// Reconnects for any reason (drops, errors, stale feeds, planned).
    pub reconnects: u64,
    /// Reconnects because no message came for the stale timeout.
    pub stale_reconnects: u64,
    /// Reconnects planned before the venue's connection age limit.
    pub planned_reconnects: u64,
    /// Connection attempts that failed (refused, handshake, timeout).
    pub connect_failures: u64,
    /// REST depth snapshots requested (initial syncs and resyncs).
    pub snapshot_requests: u64,
    /// REST depth snapshot requests that failed.
    pub snapshot_failures: u64,
    /// Snapshot requests not sent because the symbol reached its cap for the window: its
    /// book stays out of sync until the window lets another through.
    pub snapshots_capped: u64,
    /// Times an event waited for a free ring slot: the engine was behind.
    pub ring_full_waits: u64,
    /// Pings from the venue (answered with pongs).
    pub pings: u64,
    /// Venue timestamps too far ahead of the venue's clock to believe, replaced by the time
    /// it should show (see [`VenueClock`]).
    pub clock_ahead: u64,
}

impl FeedCounters {
    /// Counts a skipped frame under its reason.
    pub fn skip(&mut self, e: &FeedError) {
        match e {
            FeedError::Json(_) => self.malformed_json += 1,
            FeedError::Field(_) => self.missing_field += 1,
            FeedError::Decimal { .. } => self.bad_decimal += 1,
            FeedError::UnknownSymbol => self.unknown_symbol += 1,
            FeedError::CrossedQuote => self.crossed_quote += 1,
            FeedError::Timestamp(_) => self.bad_timestamp += 1,
            FeedError::WrongMarket { .. } => self.wrong_market += 1,
        }
    }

    /// Frames skipped for any reason.
    pub fn skipped(&self) -> u64 {
        self.malformed_json
            + self.missing_field
            + self.bad_decimal
            + self.unknown_symbol
            + self.crossed_quote
            + self.bad_timestamp
            + self.wrong_market
    }
}

/// Venue symbols → instrument ids, looked up without allocating. A feed carries a handful
/// of symbols, so a short list compared byte for byte beats hashing; large universes
/// (`TRADING_SYMBOLS` empty) use the map.
#[derive(Debug, Clone, Default)]
pub struct SymbolTable {
    ids: HashMap<String, InstrumentId>,
    few: Vec<(Box<str>, InstrumentId)>,
}

/// Up to this many symbols are looked up by scanning.
const SCAN_LIMIT: usize = 16;

impl SymbolTable {
    /// Every instrument of `venue` in the registry.
    pub fn for_venue(registry: &InstrumentRegistry, venue: &str) -> Self {
        let mut table = Self::default();
        for i in registry.iter().filter(|i| i.venue == venue) {
            table.insert(&i.symbol, i.id);
        }
        table
    }

    /// Adds a symbol (tools that discover symbols as they read, such as `feed decode`).
    pub fn insert(&mut self, symbol: &str, id: InstrumentId) {
        self.ids.insert(symbol.to_string(), id);
        self.few = if self.ids.len() <= SCAN_LIMIT { self.ids.iter().map(|(s, &i)| (s.as_str().into(), i)).collect() } else { Vec::new() };
    }

    /// The id of a symbol (exact, case-sensitive as the venue sends it).
    #[inline]
    pub fn get(&self, symbol: &str) -> Option<InstrumentId> {
        if self.ids.len() <= SCAN_LIMIT {
            return self.few.iter().find(|(s, _)| s.as_bytes() == symbol.as_bytes()).map(|&(_, id)| id);
        }
        self.ids.get(symbol).copied()
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Parses a price field: an exact decimal, positive (`NaN`, `1e400`, `-1`, `0` are refused).
/// Every price a venue adapter reads (levels, quotes, trades) goes through here.
#[inline]
pub(crate) fn price(field: &'static str, bytes: &[u8]) -> Result<Price, FeedError> {
    Price::parse_positive_bytes(bytes).map_err(|error| FeedError::Decimal { field, error })
}

/// Parses a quantity field: an exact decimal, never negative (zero deletes a level).
#[inline]
pub(crate) fn qty(field: &'static str, bytes: &[u8]) -> Result<Quantity, FeedError> {
    Quantity::parse_unsigned_bytes(bytes).map_err(|error| FeedError::Decimal { field, error })
}

/// Refuses a quote whose bid is above its ask (a locked quote, bid == ask, passes).
#[inline]
pub(crate) fn uncrossed(bid: Price, ask: Price) -> Result<(), FeedError> {
    if bid > ask {
        return Err(FeedError::CrossedQuote);
    }
    Ok(())
}

/// The latest event time the engine accepts, ns: `i64::MAX` (2262-04-11), so every
/// timestamp also fits the signed columns and clocks downstream.
pub const MAX_TS_NS: u64 = i64::MAX as u64;

/// A venue's millisecond timestamp as event-time nanoseconds: the one conversion every venue
/// adapter and tool uses. Past [`MAX_TS_NS`] (it would wrap or overflow downstream) the frame
/// is refused as [`FeedError::Timestamp`], never wrapped or saturated.
#[inline]
pub fn ms_to_ns(field: &'static str, ms: u64) -> Result<u64, FeedError> {
    scaled_ns(field, ms, 1_000_000)
}

/// [`ms_to_ns`] for microsecond timestamps.
#[inline]
pub fn us_to_ns(field: &'static str, us: u64) -> Result<u64, FeedError> {
    scaled_ns(field, us, 1_000)
}

#[inline]
fn scaled_ns(field: &'static str, t: u64, per: u64) -> Result<u64, FeedError> {
    match t.checked_mul(per) {
        Some(ns) if ns <= MAX_TS_NS => Ok(ns),
        _ => Err(FeedError::Timestamp(field)),
    }
}

/// How far ahead of the time the venue's clock should show (its last believed offset from our
/// receive clock) a venue timestamp may be before [`VenueClock`] does not believe it: the
/// engine's stale-data limit (5 s by default).
pub const MAX_AHEAD_NS: u64 = 5_000_000_000;

/// A venue clock that stays this far off its old offset for this long (receive time), or for
/// this many stamps, has really moved: it is believed from then on.
const REANCHOR_NS: u64 = 10_000_000_000;
const REANCHOR_STAMPS: u32 = 1_000;

/// The earliest receive time taken for a clock (2001-09-09, 10^18 ns after the epoch).
pub const MIN_RECV_NS: u64 = 1_000_000_000_000_000_000;

/// Keeps one venue timestamp from dragging the engine's event clock ahead. The engine's clock
/// is the newest event time it has seen, so a single frame stamped an hour ahead (a venue's
/// glitch, a corrupted frame) made every later event look an hour stale: the risk stage
/// refused all orders for the hour, and the journal kept the stamp, so a restart did too. A
/// stamp more than [`MAX_AHEAD_NS`] ahead of what the venue's clock should show is replaced
/// by that time (and counted); stamps behind are harmless (the clock never goes back) and kept.
/// A venue clock that really moved is believed again after [`REANCHOR_NS`] or
/// [`REANCHOR_STAMPS`]. Without a receive clock (a `recv_ns` before [`MIN_RECV_NS`]:
/// unstamped input, tests' small constants) every stamp is believed.
#[derive(Debug, Default, Clone, Copy)]
pub struct VenueClock {
    /// `ts - recv_ns` of the last believed stamp; `None` until the first.
    offset: Option<i128>,
    /// A run of stamps off the offset by more than the limit: its first `recv_ns`, its
    /// offset, how many.
    off_run: Option<(u64, i128, u32)>,
}

impl VenueClock {
    /// The event time for venue stamp `ts` received at `recv_ns`, and whether it was replaced.
    #[inline]
    pub fn stamp(&mut self, ts: u64, recv_ns: u64) -> (u64, bool) {
        if recv_ns < MIN_RECV_NS {
            return (ts, false);
        }
        let d = i128::from(ts) - i128::from(recv_ns);
        let limit = i128::from(MAX_AHEAD_NS);
        let base = *self.offset.get_or_insert(d);
        if (d - base).abs() <= limit {
            self.offset = Some(d);
            self.off_run = None;
            return (ts, false);
        }
        let run = match self.off_run {
            Some((since, first, n)) if (d - first).abs() <= limit => (since, first, n.saturating_add(1)),
            _ => (recv_ns, d, 1),
        };
        if recv_ns.saturating_sub(run.0) >= REANCHOR_NS || run.2 >= REANCHOR_STAMPS {
            self.offset = Some(d);
            self.off_run = None;
            return (ts, false);
        }
        self.off_run = Some(run);
        if d < base {
            return (ts, false);
        }
        // d > base + limit ≥ 0 here, so the expected time is below `ts` and fits a u64.
        ((i128::from(recv_ns) + base).max(0) as u64, true)
    }
}

/// [`ms_to_ns`] through the venue's [`VenueClock`], counting a replaced stamp.
#[inline]
pub(crate) fn venue_ms(
    clock: &mut VenueClock,
    counters: &mut FeedCounters,
    field: &'static str,
    ms: u64,
    recv_ns: u64,
) -> Result<u64, FeedError> {
    let (ts, replaced) = clock.stamp(ms_to_ns(field, ms)?, recv_ns);
    counters.clock_ahead += u64::from(replaced);
    Ok(ts)
}

/// One venue message's book levels, all parsed before any is emitted, so a bad level skips
/// the whole message, never half of it. Reused across messages: no allocation once warm.
#[derive(Debug, Default, Clone)]
pub(crate) struct LevelBuffer {
    levels: Vec<(Side, Price, Quantity)>,
}

impl LevelBuffer {
    /// Room for `n` levels before it allocates.
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self { levels: Vec::with_capacity(n) }
    }

    /// Parses a message's bids then asks.
    pub(crate) fn collect(&mut self, bids: Levels<'_>, asks: Levels<'_>) -> Result<(), FeedError> {
        self.levels.clear();
        for (side, levels) in [(Side::Buy, bids), (Side::Sell, asks)] {
            for level in levels {
                let (p, q) = level?;
                self.levels.push((side, price("price", p)?, qty("qty", q)?));
            }
        }
        Ok(())
    }

    /// Emits the levels as one venue message with `(first, last, prev)` update ids; returns
    /// how many events it emitted. An empty message still moves the sequence: a no-op level
    /// carries its ids.
    pub(crate) fn emit(
        &self,
        instrument: InstrumentId,
        ts_event: u64,
        recv_ns: u64,
        ids: (u64, u64, u64),
        snapshot: bool,
        emit: &mut impl FnMut(Event),
    ) -> u64 {
        let (first_update_id, last_update_id, prev_update_id) = ids;
        let delta =
            BookDelta { ts_event, ts_recv: recv_ns, instrument, first_update_id, last_update_id, prev_update_id, ..BookDelta::default() };
        let n = self.levels.len();
        if n == 0 {
            let flags = DELTA_LAST | if snapshot { DELTA_SNAPSHOT | DELTA_CLEAR } else { 0 };
            emit(Event::BookDelta(BookDelta { flags, ..delta }));
            return 1;
        }
        for (i, &(side, price, qty)) in self.levels.iter().enumerate() {
            let mut flags = 0;
            if snapshot {
                flags |= DELTA_SNAPSHOT;
                if i == 0 {
                    flags |= DELTA_CLEAR;
                }
            }
            if i + 1 == n {
                flags |= DELTA_LAST;
            }
            emit(Event::BookDelta(BookDelta { side, price, qty, flags, ..delta }));
        }
        n as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_far_ahead_of_the_venues_clock_is_replaced_and_a_real_move_is_believed() {
        const S: u64 = 1_000_000_000;
        let (t0, r0) = (1_700_000_000 * S, 1_700_000_000 * S - 3 * S / 2);
        let mut c = VenueClock::default();
        // The venue's clock runs 1.5 s ahead of ours; a little jitter is believed.
        assert_eq!(c.stamp(t0, r0), (t0, false));
        assert_eq!(c.stamp(t0 + S + 300_000_000, r0 + S), (t0 + S + 300_000_000, false));
        // One stamp an hour ahead: the time the venue's clock should show instead.
        assert_eq!(c.stamp(t0 + 3_600 * S, r0 + 2 * S), (t0 + 2 * S + 300_000_000, true));
        // The next ones are normal again; one an hour behind is kept (the engine's clock
        // never goes back) and moves nothing.
        assert_eq!(c.stamp(t0 + 3 * S, r0 + 3 * S), (t0 + 3 * S, false));
        assert_eq!(c.stamp(t0 - 3_600 * S, r0 + 4 * S), (t0 - 3_600 * S, false));
        assert_eq!(c.stamp(t0 + 5 * S, r0 + 5 * S), (t0 + 5 * S, false));
        // The venue's clock really steps a minute ahead: replaced until the step has held
        // for 10 s of our clock, then believed.
        let step = 60 * S;
        let mut replaced = 0;
        for i in 6..30u64 {
            let (ts, r) = c.stamp(t0 + step + i * S, r0 + i * S);
            replaced += u64::from(r);
            assert!(ts == t0 + step + i * S || (r && ts == t0 + i * S), "{i}: {ts}");
        }
        assert_eq!(replaced, 10, "replaced for 10 s, then believed");
        assert_eq!(c.stamp(t0 + step + 31 * S, r0 + 31 * S), (t0 + step + 31 * S, false));
        // Without a receive clock (unstamped input) nothing is judged.
        let mut c = VenueClock::default();
        assert_eq!(c.stamp(t0, 0), (t0, false));
        assert_eq!(c.stamp(t0 + 3_600 * S, 7), (t0 + 3_600 * S, false));
        // Extremes neither overflow nor go below zero.
        let mut c = VenueClock::default();
        assert_eq!(c.stamp(0, u64::MAX), (0, false));
        assert_eq!(c.stamp(MAX_TS_NS, u64::MAX), (0, true));
    }

    #[test]
    fn timestamps_convert_checked_never_wrapping() {
        let cases: &[(u64, Result<u64, FeedError>)] = &[
            (0, Ok(0)),
            (1_672_515_782_136, Ok(1_672_515_782_136_000_000)),
            (9_223_372_036_854, Ok(9_223_372_036_854_000_000)),
            // Past i64::MAX ns: refused, though it still fits u64.
            (9_223_372_036_855, Err(FeedError::Timestamp("T"))),
            // Wrapped to 448384 ns before.
            (18_446_744_073_710, Err(FeedError::Timestamp("T"))),
            (u64::MAX, Err(FeedError::Timestamp("T"))),
        ];
        for &(ms, want) in cases {
            assert_eq!(ms_to_ns("T", ms), want, "{ms} ms");
        }
        assert_eq!(us_to_ns("T", 1_672_515_782_136_123), Ok(1_672_515_782_136_123_000));
        assert_eq!(us_to_ns("T", u64::MAX / 1_000 + 1), Err(FeedError::Timestamp("T")));
        assert_eq!(FeedError::Timestamp("T").label(), "bad_timestamp");
    }
}
