//! Conformance run: the core's fixed-point parser and L2 order book over real recorded
//! Binance data.
//!
//! ```text
//! cargo run --release --example conformance -- <exchange data dir>
//! ```
//!
//! The directory is laid out like `shared/data/exchange` (its `SOURCES.md` says where each
//! recording came from). The recordings are read where they are and never copied into the
//! repository. Each recording gets four checks:
//!
//! - **lines**: every line is a well-formed message;
//! - **decimals**: every price and quantity string parses exactly and prints back byte for
//!   byte with as many decimals as it had;
//! - **book**: the book syncs with the REST snapshot by Binance's documented procedure, then
//!   takes every diff without a sequence gap and is never crossed once a diff is complete;
//! - **bookTicker**: wherever a bookTicker's update id pins a book state, the book's best bid
//!   and ask (price and size) equal the ticker's.
//!
//! The last line is `conformance: N passed, M failed`; the exit code is 1 when M > 0.

use flate2::read::GzDecoder;
use sapphire_core::book::{DeltaOutcome, Level, OrderBook};
use sapphire_core::event::{BookDelta, Side, DELTA_CLEAR, DELTA_LAST, DELTA_SNAPSHOT};
use sapphire_core::fixed::{Price, Quantity};
use sapphire_core::instrument::InstrumentId;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Failures printed per file and check; the rest are only counted.
const SHOWN_FAILURES: u64 = 5;
/// Book states kept for bookTickers that arrive after the diff that produced their state.
const TOP_HISTORY: usize = 4096;
/// Diffs buffered while waiting for a snapshot; past this the feed has no snapshot to wait for.
const MAX_BUFFERED: usize = 200_000;
/// A `limit=1000` snapshot plus room for the levels later diffs add.
const BOOK_LEVELS: usize = 2048;
/// Binance event times are milliseconds; ours are nanoseconds.
const NS_PER_MS: u64 = 1_000_000;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: conformance <exchange data dir>  (e.g. ../shared/data/exchange)");
        return ExitCode::from(2);
    };
    let started = Instant::now();
    let mut tally = Tally::default();

    let recordings = match recorded_files(&dir.join("recorded/hftbacktest")) {
        Ok(files) if files.is_empty() => {
            println!("FAIL {}: no recorded/hftbacktest/*.gz files", dir.display());
            tally.failed += 1;
            files
        }
        Ok(files) => files,
        Err(e) => {
            println!("FAIL {}: cannot list recorded/hftbacktest: {e}", dir.display());
            tally.failed += 1;
            Vec::new()
        }
    };
    // One session across the recordings: a day's file without a snapshot continues the
    // same market and symbol from the file before it.
    let mut feeds = Feeds::new();
    let total = recordings.len() + CRYPTOFEED.len();
    for (index, path) in recordings.iter().enumerate() {
        let file_started = Instant::now();
        let report = check_recording(path, index, &mut feeds);
        tally.add(&report);
        eprintln!("[{}/{total}] {} checked in {:.2} s", index + 1, report.name, file_started.elapsed().as_secs_f64());
    }
    for (offset, &(stem, market)) in CRYPTOFEED.iter().enumerate() {
        let file_started = Instant::now();
        let report = check_cryptofeed(&dir.join("binance/cryptofeed"), stem, market);
        tally.add(&report);
        eprintln!("[{}/{total}] {} checked in {:.2} s", recordings.len() + offset + 1, report.name, file_started.elapsed().as_secs_f64());
    }
    eprintln!("conformance run took {:.2} s", started.elapsed().as_secs_f64());
    println!("conformance: {} passed, {} failed", tally.passed, tally.failed);
    if tally.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The cryptofeed recordings: file stem and market.
const CRYPTOFEED: [(&str, Market); 2] = [("BINANCE", Market::Spot), ("BINANCE_FUTURES", Market::UsdM)];

/// The `*.gz` recordings in `dir`, by name so a day comes before the day that continues it.
fn recorded_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "gz") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Checks passed and failed over the whole run.
#[derive(Debug, Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    fn add(&mut self, report: &FileReport) {
        let verdicts = report.verdicts();
        println!("{report}");
        for (check, passed) in verdicts {
            if passed {
                self.passed += 1;
            } else {
                self.failed += 1;
                println!("  {}: {} check failed", report.name, check.name());
            }
        }
    }
}

/// Which Binance market a recording comes from; they differ in the diff sequencing rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Market {
    /// Spot: a diff continues the previous one when `U == previous u + 1`.
    Spot,
    /// USD-M futures: a diff names its predecessor's `u` in `pu`; ids are global across symbols.
    UsdM,
}

/// The kinds of check made on each file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    Lines,
    Decimals,
    Book,
    Ticker,
}

impl Check {
    const ALL: [Check; 4] = [Check::Lines, Check::Decimals, Check::Book, Check::Ticker];

    fn name(self) -> &'static str {
        match self {
            Check::Lines => "lines",
            Check::Decimals => "decimals",
            Check::Book => "book",
            Check::Ticker => "bookTicker",
        }
    }
}

/// What one file showed: counts for the summary line and failures per check.
#[derive(Debug, Default)]
struct FileReport {
    name: String,
    /// The file the line numbers of failures refer to (a session may read several).
    source: String,
    lines: u64,
    /// Failures per [`Check`], indexed by `Check as usize`.
    failures: [u64; 4],
    values: u64,
    trades: u64,
    /// Messages of streams this run does not check (klines).
    other: u64,
    diffs: u64,
    /// Diffs older than the snapshot, dropped as the sync procedure says.
    diffs_before_snapshot: u64,
    /// Diffs that arrived after the book lost sync.
    diffs_unapplied: u64,
    /// Diffs where a level crossed an opposing level the same diff deletes (legitimate:
    /// bids are applied before asks).
    crossings_resolved: u64,
    gaps: u64,
    books: u64,
    books_synced: u64,
    /// The file carries real-time (`@depth@0ms`) diffs, where bookTickers must line up.
    realtime_depth: bool,
    tickers: u64,
    /// bookTickers whose id is a diff's last id, compared with the book after that diff.
    tickers_exact: u64,
    /// bookTickers whose id falls between two diffs (futures ids are global across
    /// symbols), compared with the book after the earlier diff.
    tickers_between: u64,
    /// bookTickers whose id falls inside a diff's range: a state no diff shows, not comparable.
    tickers_inside_diff: u64,
    /// bookTickers from before the snapshot, older than the kept history, or after a lost sync.
    tickers_unsynced: u64,
    /// bookTickers still ahead of the book at the end of the file; a file that continues the
    /// same symbol settles them.
    tickers_pending: u64,
}

impl FileReport {
    fn new(name: String) -> Self {
        Self { source: name.clone(), name, ..Self::default() }
    }

    /// Counts a failure of `check`; prints the first few. `line` 0 is the file as a whole.
    fn fail(&mut self, check: Check, line: usize, what: fmt::Arguments<'_>) {
        let count = &mut self.failures[check as usize];
        *count += 1;
        if *count <= SHOWN_FAILURES {
            if line == 0 {
                println!("  FAIL {} [{}] {what}", self.source, check.name());
            } else {
                println!("  FAIL {}:{line} [{}] {what}", self.source, check.name());
            }
        }
    }

    fn failures(&self, check: Check) -> u64 {
        self.failures[check as usize]
    }

    fn compared(&self) -> u64 {
        self.tickers_exact + self.tickers_between
    }

    /// Pass or fail per check. A check with nothing to look at fails, except the bookTicker
    /// check on 100 ms diffs, where a ticker landing on a diff's last id is luck.
    fn verdicts(&self) -> [(Check, bool); 4] {
        Check::ALL.map(|check| {
            let clean = self.failures(check) == 0;
            let passed = match check {
                Check::Lines => clean && self.lines > 0,
                Check::Decimals => clean && self.values > 0,
                Check::Book => clean && self.books > 0 && self.books_synced == self.books,
                Check::Ticker => clean && (!self.realtime_depth || self.compared() > 0),
            };
            (check, passed)
        })
    }
}

impl fmt::Display for FileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} lines, {} malformed | {} decimals, {} bad | {}/{} books synced; {} diffs ({} before \
             snapshot, {} unapplied), {} gaps, {} crossings resolved within a diff | {} bookTickers: {} \
             compared ({} exact id, {} between diffs), {} mismatched; {} inside a diff, {} unsynced, {} \
             pending | {} trades, {} other",
            self.name,
            self.lines,
            self.failures(Check::Lines),
            self.values,
            self.failures(Check::Decimals),
            self.books_synced,
            self.books,
            self.diffs,
            self.diffs_before_snapshot,
            self.diffs_unapplied,
            self.gaps,
            self.crossings_resolved,
            self.tickers,
            self.compared(),
            self.tickers_exact,
            self.tickers_between,
            self.failures(Check::Ticker),
            self.tickers_inside_diff,
            self.tickers_unsynced,
            self.tickers_pending,
            self.trades,
            self.other,
        )
    }
}

/// Why a line could not be read as a message.
#[derive(Debug)]
enum LineError {
    NotUtf8,
    NoTimestamp,
    BadTimestamp(String),
    Json(serde_json::Error),
    Missing(&'static str),
    NotA(&'static str, &'static str),
    UnknownMessage,
    NoSnapshotSymbol,
    /// A decimal string failed; already counted under [`Check::Decimals`].
    BadDecimals,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::NotUtf8 => write!(f, "not UTF-8"),
            LineError::NoTimestamp => write!(f, "no space after the receive timestamp"),
            LineError::BadTimestamp(text) => {
                write!(f, "receive timestamp {text:?} is not an integer")
            }
            LineError::Json(e) => write!(f, "invalid JSON: {e}"),
            LineError::Missing(field) => write!(f, "field {field:?} is missing"),
            LineError::NotA(field, kind) => write!(f, "field {field:?} is not {kind}"),
            LineError::UnknownMessage => {
                write!(f, "neither a stream envelope nor a depth snapshot")
            }
            LineError::NoSnapshotSymbol => {
                write!(f, "depth snapshot of unknown symbol (a recording names it binance_<market>_<symbol>_<date>.gz, cryptofeed in its .http.0.0.txt URL)")
            }
            LineError::BadDecimals => write!(f, "bad decimal string"),
        }
    }
}

fn get<'v>(obj: &'v Value, field: &'static str) -> Result<&'v Value, LineError> {
    obj.get(field).ok_or(LineError::Missing(field))
}

fn get_str<'v>(obj: &'v Value, field: &'static str) -> Result<&'v str, LineError> {
    get(obj, field)?.as_str().ok_or(LineError::NotA(field, "a string"))
}

fn get_u64(obj: &Value, field: &'static str) -> Result<u64, LineError> {
    get(obj, field)?.as_u64().ok_or(LineError::NotA(field, "an unsigned integer"))
}

/// An event time in ms as ns; absent (spot snapshots, spot bookTickers) is 0.
fn event_time_ns(obj: &Value) -> Result<u64, LineError> {
    match obj.get("E") {
        None => Ok(0),
        Some(v) => v.as_u64().map(|ms| ms.saturating_mul(NS_PER_MS)).ok_or(LineError::NotA("E", "an unsigned integer")),
    }
}

/// Digits after the point in a decimal string.
fn decimals_of(text: &str) -> usize {
    text.find('.').map_or(0, |point| text.len() - point - 1)
}

/// A `depthUpdate` diff, its levels already parsed.
#[derive(Debug)]
struct DepthDiff {
    line: usize,
    ts_event: u64,
    ts_recv: u64,
    first_id: u64,
    last_id: u64,
    /// The `u` this diff continues: spot `U - 1`, futures `pu`.
    prev_id: u64,
    bids: Vec<(Price, Quantity)>,
    asks: Vec<(Price, Quantity)>,
}

/// A REST depth snapshot.
#[derive(Debug)]
struct DepthSnapshot {
    line: usize,
    ts_event: u64,
    ts_recv: u64,
    last_update_id: u64,
    bids: Vec<(Price, Quantity)>,
    asks: Vec<(Price, Quantity)>,
}

/// A bookTicker: the best levels as of book update id `update_id`.
#[derive(Clone, Copy, Debug)]
struct BookTicker {
    line: usize,
    update_id: u64,
    bid: Level,
    ask: Level,
}

/// The book's best levels after one diff, valid from its `u` until the next diff's `U`.
#[derive(Clone, Copy, Debug)]
struct BookTop {
    first_id: u64,
    last_id: u64,
    bid: Option<Level>,
    ask: Option<Level>,
}

/// Where a bookTicker's update id falls among the diffs applied so far.
#[derive(Debug)]
enum Placement {
    /// On a diff's last id: the state after that diff.
    Exact(BookTop),
    /// Between one diff's last id and the next diff's first: no change in between.
    Between(BookTop),
    /// Inside a diff's id range: an intermediate state the diff does not show.
    InsideDiff,
    /// Before the snapshot, or older than the kept history.
    Unsynced,
    /// Past the last applied diff: wait for the book to catch up.
    Ahead,
}

/// Where a book is in Binance's sync procedure.
#[derive(Debug)]
enum SyncState {
    /// Diffs are buffered until the REST snapshot arrives.
    AwaitingSnapshot(Vec<DepthDiff>),
    /// Snapshot applied; the first diff that is not older must bracket its id.
    AwaitingFirst { snapshot_id: u64 },
    /// In sequence; the core checks continuity from here on.
    Live,
    /// The first diff did not bracket the snapshot, or a gap was seen: only a new snapshot helps.
    Lost,
}

/// One symbol's book as a Binance client keeps it, with the bookTickers waiting to be compared.
#[derive(Debug)]
struct BookFeed {
    market: Market,
    symbol: String,
    instrument: InstrumentId,
    book: OrderBook,
    sync: SyncState,
    /// Best levels after each recent diff, oldest first, ascending by `last_id`.
    tops: VecDeque<BookTop>,
    /// bookTickers ahead of the book, in arrival order.
    pending: Vec<BookTicker>,
    /// Reused so a diff's deltas do not allocate.
    deltas: Vec<BookDelta>,
    /// Opposing levels the book dropped while applying the current message because a delta
    /// crossed them (the book keeps itself uncrossed, so a crossed venue book shows up here).
    crossed_out: Vec<(Side, Price)>,
    /// The last file (by run index) that carried a message for this symbol.
    last_file: usize,
}

impl BookFeed {
    fn new(market: Market, symbol: &str, instrument: InstrumentId) -> Self {
        Self {
            market,
            symbol: symbol.to_owned(),
            instrument,
            book: OrderBook::with_capacity(BOOK_LEVELS),
            sync: SyncState::AwaitingSnapshot(Vec::new()),
            tops: VecDeque::with_capacity(TOP_HISTORY),
            pending: Vec::new(),
            deltas: Vec::with_capacity(BOOK_LEVELS),
            crossed_out: Vec::new(),
            last_file: usize::MAX,
        }
    }

    fn on_snapshot(&mut self, snapshot: &DepthSnapshot, report: &mut FileReport) {
        let id = snapshot.last_update_id;
        let buffered = match std::mem::replace(&mut self.sync, SyncState::AwaitingFirst { snapshot_id: id }) {
            SyncState::AwaitingSnapshot(buffered) => buffered,
            _ => Vec::new(),
        };
        let template = BookDelta {
            ts_event: snapshot.ts_event,
            ts_recv: snapshot.ts_recv,
            instrument: self.instrument,
            flags: DELTA_SNAPSHOT,
            first_update_id: id,
            last_update_id: id,
            ..BookDelta::default()
        };
        self.deltas.clear();
        self.deltas.extend(levels_as_deltas(&template, &snapshot.bids, &snapshot.asks));
        if self.deltas.is_empty() {
            // An empty book still needs its update id: a zero-size level at price 0 removes nothing.
            self.deltas.push(template);
        }
        self.deltas[0].flags |= DELTA_CLEAR;
        if let Some(last) = self.deltas.last_mut() {
            last.flags |= DELTA_LAST;
        }
        // A snapshot's first delta clears the book, so none can be stale or a gap.
        self.apply_deltas();
        self.check_uncrossed(snapshot.line, &snapshot.bids, &snapshot.asks, report);
        self.tops.clear();
        self.push_top(id, id);
        for diff in buffered {
            self.on_diff(diff, report);
        }
        self.settle_pending(report);
    }

    fn on_diff(&mut self, diff: DepthDiff, report: &mut FileReport) {
        match &mut self.sync {
            SyncState::AwaitingSnapshot(buffered) => {
                if buffered.len() < MAX_BUFFERED {
                    buffered.push(diff);
                } else {
                    report.diffs_unapplied += 1;
                }
            }
            SyncState::AwaitingFirst { snapshot_id } => {
                let id = *snapshot_id;
                // Binance's documented rule per market: which diffs the snapshot already
                // contains, and which diff must straddle it.
                let next = id.saturating_add(1);
                let (older, brackets) = match self.market {
                    Market::Spot => (diff.last_id <= id, diff.first_id <= next && next <= diff.last_id),
                    Market::UsdM => (diff.last_id < id, diff.first_id <= id && id <= diff.last_id),
                };
                if older {
                    report.diffs_before_snapshot += 1;
                } else if brackets {
                    self.sync = SyncState::Live;
                    // The bracketing diff continues the snapshot, whatever its own `pu` says.
                    self.apply(&diff, id, report);
                } else {
                    report.fail(
                        Check::Book,
                        diff.line,
                        format_args!(
                            "{}: first diff after snapshot {id} has U={} u={}, which does not bracket it",
                            self.symbol, diff.first_id, diff.last_id
                        ),
                    );
                    self.sync = SyncState::Lost;
                    report.diffs_unapplied += 1;
                }
            }
            SyncState::Live => self.apply(&diff, diff.prev_id, report),
            SyncState::Lost => report.diffs_unapplied += 1,
        }
    }

    fn apply(&mut self, diff: &DepthDiff, prev_id: u64, report: &mut FileReport) {
        let template = BookDelta {
            ts_event: diff.ts_event,
            ts_recv: diff.ts_recv,
            instrument: self.instrument,
            first_update_id: diff.first_id,
            last_update_id: diff.last_id,
            prev_update_id: prev_id,
            ..BookDelta::default()
        };
        self.deltas.clear();
        self.deltas.extend(levels_as_deltas(&template, &diff.bids, &diff.asks));
        if self.deltas.is_empty() {
            // An empty diff still moves the sequence on: a zero-size level at price 0 removes nothing.
            self.deltas.push(template);
        }
        if let Some(last) = self.deltas.last_mut() {
            last.flags |= DELTA_LAST;
        }
        let book_id = self.book.last_update_id();
        match self.apply_deltas() {
            DeltaOutcome::Applied => {}
            DeltaOutcome::Gap => {
                report.gaps += 1;
                report.fail(
                    Check::Book,
                    diff.line,
                    format_args!(
                        "{}: gap: diff U={} u={} continues {prev_id}, book is at {book_id}",
                        self.symbol, diff.first_id, diff.last_id
                    ),
                );
                self.sync = SyncState::Lost;
            }
            DeltaOutcome::Stale => {
                report.fail(
                    Check::Book,
                    diff.line,
                    format_args!("{}: stale diff u={} behind book id {book_id}", self.symbol, diff.last_id),
                );
                return;
            }
        }
        self.check_uncrossed(diff.line, &diff.bids, &diff.asks, report);
        if matches!(self.sync, SyncState::Live) {
            self.push_top(diff.first_id, diff.last_id);
            self.settle_pending(report);
        }
    }

    /// Applies `deltas` in order, noting in `crossed_out` what the book drops to stay
    /// uncrossed. Only a message's first delta can be a gap or stale, and a stale message
    /// stops there.
    fn apply_deltas(&mut self) -> DeltaOutcome {
        let deltas = std::mem::take(&mut self.deltas);
        let mut outcome = DeltaOutcome::Applied;
        for delta in &deltas {
            let before = self.crossed_out.len();
            if delta.qty.raw > 0 && delta.flags & DELTA_CLEAR == 0 {
                let opposite = delta.side.opposite();
                let crosses = |level: &Level| match delta.side {
                    Side::Buy => level.price <= delta.price,
                    Side::Sell => level.price >= delta.price,
                };
                self.crossed_out.extend(self.book.levels(opposite).take_while(crosses).map(|l| (opposite, l.price)));
            }
            match self.book.apply_delta(delta) {
                DeltaOutcome::Applied => {}
                DeltaOutcome::Gap => outcome = DeltaOutcome::Gap,
                DeltaOutcome::Stale => {
                    self.crossed_out.truncate(before);
                    outcome = DeltaOutcome::Stale;
                    break;
                }
            }
        }
        self.deltas = deltas;
        outcome
    }

    /// Fails a message that leaves the venue's book crossed. Within a diff a level may cross
    /// one that the same diff deletes (bids are applied before asks); any other level the
    /// book had to drop means the venue's own state after the message was crossed.
    fn check_uncrossed(&mut self, line: usize, bids: &[(Price, Quantity)], asks: &[(Price, Quantity)], report: &mut FileReport) {
        let deleted_by_message = |&&(side, price): &&(Side, Price)| {
            let own = if side == Side::Buy { bids } else { asks };
            own.iter().any(|&(p, q)| p == price && q.is_zero())
        };
        let mut kept = self.crossed_out.iter().filter(|level| !deleted_by_message(level));
        match kept.next() {
            None if self.crossed_out.is_empty() => {}
            None => report.crossings_resolved += 1,
            Some(&(side, price)) => {
                let side = if side == Side::Buy { "bid" } else { "ask" };
                let count = 1 + kept.count();
                report.fail(
                    Check::Book,
                    line,
                    format_args!("{}: crossed: the message crosses {count} level(s) it keeps, first {side} {price}", self.symbol),
                );
            }
        }
        self.crossed_out.clear();
        if let (Some(bid), Some(ask)) = (self.book.best_bid(), self.book.best_ask()) {
            if bid.price >= ask.price {
                report.fail(Check::Book, line, format_args!("{}: crossed: bid {} >= ask {}", self.symbol, bid.price, ask.price));
            }
        }
    }

    fn push_top(&mut self, first_id: u64, last_id: u64) {
        if self.tops.len() == TOP_HISTORY {
            self.tops.pop_front();
        }
        self.tops.push_back(BookTop { first_id, last_id, bid: self.book.best_bid(), ask: self.book.best_ask() });
    }

    fn on_ticker(&mut self, ticker: BookTicker, report: &mut FileReport) {
        if matches!(self.sync, SyncState::Lost) {
            report.tickers_unsynced += 1;
        } else if !self.settle(&ticker, report) {
            self.pending.push(ticker);
        }
    }

    fn settle_pending(&mut self, report: &mut FileReport) {
        if self.pending.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending);
        pending.retain(|ticker| !self.settle(ticker, report));
        self.pending = pending;
    }

    /// Compares `ticker` with the book if its id pins a book state; false while it is ahead.
    fn settle(&self, ticker: &BookTicker, report: &mut FileReport) -> bool {
        let top = match self.place(ticker.update_id) {
            Placement::Ahead => return false,
            Placement::InsideDiff => {
                report.tickers_inside_diff += 1;
                return true;
            }
            Placement::Unsynced => {
                report.tickers_unsynced += 1;
                return true;
            }
            Placement::Exact(top) => {
                report.tickers_exact += 1;
                top
            }
            Placement::Between(top) => {
                report.tickers_between += 1;
                top
            }
        };
        if top.bid != Some(ticker.bid) || top.ask != Some(ticker.ask) {
            report.fail(
                Check::Ticker,
                ticker.line,
                format_args!(
                    "{} id {}: bookTicker {} / {}, book after diff U={} u={} has {} / {}",
                    self.symbol,
                    ticker.update_id,
                    LevelText(Some(ticker.bid)),
                    LevelText(Some(ticker.ask)),
                    top.first_id,
                    top.last_id,
                    LevelText(top.bid),
                    LevelText(top.ask),
                ),
            );
        }
        true
    }

    fn place(&self, update_id: u64) -> Placement {
        let Some(oldest) = self.tops.front() else {
            return Placement::Ahead;
        };
        if update_id < oldest.last_id {
            return Placement::Unsynced;
        }
        // The newest state at or before the id; `tops` ascends by `last_id`.
        let at = self.tops.partition_point(|top| top.last_id <= update_id) - 1;
        let top = self.tops[at];
        if top.last_id == update_id {
            return Placement::Exact(top);
        }
        match self.tops.get(at + 1) {
            None => Placement::Ahead,
            Some(next) if update_id < next.first_id => Placement::Between(top),
            Some(_) => Placement::InsideDiff,
        }
    }
}

/// A book level for a failure message, `-` for an empty side.
struct LevelText(Option<Level>);

impl fmt::Display for LevelText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(level) => write!(f, "{} x {}", level.price, level.qty),
            None => write!(f, "-"),
        }
    }
}

/// One delta per level, bids first, all sharing `template`'s ids.
fn levels_as_deltas<'a>(
    template: &'a BookDelta,
    bids: &'a [(Price, Quantity)],
    asks: &'a [(Price, Quantity)],
) -> impl Iterator<Item = BookDelta> + 'a {
    let side = |side: Side| move |&(price, qty): &(Price, Quantity)| BookDelta { side, price, qty, ..*template };
    bids.iter().map(side(Side::Buy)).chain(asks.iter().map(side(Side::Sell)))
}

/// The books of one recording session, by market and symbol.
#[derive(Debug, Default)]
struct Feeds {
    books: HashMap<(Market, String), BookFeed>,
}

impl Feeds {
    fn new() -> Self {
        Self::default()
    }

    fn feed(&mut self, market: Market, symbol: &str, file: usize) -> &mut BookFeed {
        let next_id = InstrumentId(u32::try_from(self.books.len()).unwrap_or(u32::MAX));
        let feed = self.books.entry((market, symbol.to_owned())).or_insert_with(|| BookFeed::new(market, symbol, next_id));
        feed.last_file = file;
        feed
    }

    /// Counts the books `file` touched, and fails those that never synced.
    fn close_file(&self, file: usize, report: &mut FileReport) {
        let mut touched: Vec<&BookFeed> = self.books.values().filter(|f| f.last_file == file).collect();
        touched.sort_by(|a, b| a.symbol.cmp(&b.symbol));
        for feed in touched {
            report.books += 1;
            report.tickers_pending += feed.pending.len() as u64;
            match &feed.sync {
                SyncState::Live => report.books_synced += 1,
                // Its cause was reported when it happened.
                SyncState::Lost => {}
                SyncState::AwaitingSnapshot(_) => {
                    report.fail(Check::Book, 0, format_args!("{}: never synced: no depth snapshot", feed.symbol))
                }
                SyncState::AwaitingFirst { snapshot_id } => {
                    report.fail(Check::Book, 0, format_args!("{}: never synced: no diff after snapshot {snapshot_id}", feed.symbol))
                }
            }
        }
    }
}

/// Reads the messages of one file into the session's books, checking every decimal on the way.
struct FileCheck<'s> {
    feeds: &'s mut Feeds,
    report: FileReport,
    /// Run index of the file, to tell which books it touched.
    file: usize,
    market: Market,
    /// Symbol for snapshot lines, which do not name one.
    snapshot_symbol: Option<String>,
    /// Reused print buffer for the round-trip check.
    printed: String,
    /// The line being read, for failure messages.
    line: usize,
}

impl<'s> FileCheck<'s> {
    fn new(feeds: &'s mut Feeds, name: String, file: usize, market: Market) -> Self {
        Self { feeds, report: FileReport::new(name), file, market, snapshot_symbol: None, printed: String::with_capacity(32), line: 0 }
    }

    /// Runs the lines of `source` through `read`, counting each failed line under its check.
    /// A read error is a failure after the lines that did arrive were checked.
    fn read_lines(&mut self, source: &Path, mut read: impl FnMut(&mut Self, &str) -> Result<(), LineError>) {
        self.report.source = file_name(source);
        let (text, error) = read_file(source);
        for (index, raw) in text.split(|&b| b == b'\n').enumerate() {
            self.line = index + 1;
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.report.lines += 1;
            let outcome = match std::str::from_utf8(raw) {
                Ok(text) => read(self, text),
                Err(_) => Err(LineError::NotUtf8),
            };
            match outcome {
                Ok(()) | Err(LineError::BadDecimals) => {}
                Err(e) => self.report.fail(Check::Lines, self.line, format_args!("{e}")),
            }
        }
        if let Some(e) = error {
            self.report.fail(Check::Lines, 0, format_args!("cannot read: {e}"));
        }
    }

    /// A line of an hftbacktest recording: `<recv ns> <json>`.
    fn read_recorded(&mut self, text: &str) -> Result<(), LineError> {
        let (recv, json) = text.split_once(' ').ok_or(LineError::NoTimestamp)?;
        let ts_recv = recv.parse().map_err(|_| LineError::BadTimestamp(recv.to_owned()))?;
        let message: Value = serde_json::from_str(json).map_err(LineError::Json)?;
        self.on_message(&message, ts_recv)
    }

    /// A line of a cryptofeed `.jsonl` (no receive time).
    fn read_plain(&mut self, text: &str) -> Result<(), LineError> {
        let message: Value = serde_json::from_str(text).map_err(LineError::Json)?;
        self.on_message(&message, 0)
    }

    fn on_message(&mut self, message: &Value, ts_recv: u64) -> Result<(), LineError> {
        if message.get("lastUpdateId").is_some() {
            let symbol = self.snapshot_symbol.clone().ok_or(LineError::NoSnapshotSymbol)?;
            return self.on_snapshot(message, &symbol, ts_recv);
        }
        let stream = get_str(message, "stream").map_err(|e| match e {
            LineError::Missing(_) => LineError::UnknownMessage,
            other => other,
        })?;
        let data = get(message, "data")?;
        let kind = stream.split_once('@').map_or("", |(_, kind)| kind);
        match kind {
            "bookTicker" => self.on_ticker(data),
            "trade" | "aggTrade" => self.on_trade(data),
            _ if kind == "depth" || kind.starts_with("depth@") => {
                self.report.realtime_depth |= kind == "depth@0ms";
                self.on_diff(data, ts_recv)
            }
            _ => {
                self.report.other += 1;
                Ok(())
            }
        }
    }

    fn on_snapshot(&mut self, body: &Value, symbol: &str, ts_recv: u64) -> Result<(), LineError> {
        let last_update_id = get_u64(body, "lastUpdateId")?;
        let ts_event = event_time_ns(body)?;
        let bids = self.levels(body, "bids");
        let asks = self.levels(body, "asks");
        let snapshot = DepthSnapshot { line: self.line, ts_event, ts_recv, last_update_id, bids: bids?, asks: asks? };
        let feed = self.feeds.feed(self.market, symbol, self.file);
        feed.on_snapshot(&snapshot, &mut self.report);
        Ok(())
    }

    fn on_diff(&mut self, data: &Value, ts_recv: u64) -> Result<(), LineError> {
        let symbol = get_str(data, "s")?;
        let first_id = get_u64(data, "U")?;
        let last_id = get_u64(data, "u")?;
        let prev_id = match self.market {
            Market::Spot => first_id.saturating_sub(1),
            Market::UsdM => get_u64(data, "pu")?,
        };
        let ts_event = event_time_ns(data)?;
        let bids = self.levels(data, "b");
        let asks = self.levels(data, "a");
        let diff = DepthDiff { line: self.line, ts_event, ts_recv, first_id, last_id, prev_id, bids: bids?, asks: asks? };
        self.report.diffs += 1;
        let feed = self.feeds.feed(self.market, symbol, self.file);
        feed.on_diff(diff, &mut self.report);
        Ok(())
    }

    fn on_ticker(&mut self, data: &Value) -> Result<(), LineError> {
        let symbol = get_str(data, "s")?;
        let update_id = get_u64(data, "u")?;
        let bid_price = self.price("b", get_str(data, "b")?);
        let bid_qty = self.quantity("B", get_str(data, "B")?);
        let ask_price = self.price("a", get_str(data, "a")?);
        let ask_qty = self.quantity("A", get_str(data, "A")?);
        let (Some(bid_price), Some(bid_qty), Some(ask_price), Some(ask_qty)) = (bid_price, bid_qty, ask_price, ask_qty) else {
            return Err(LineError::BadDecimals);
        };
        self.report.tickers += 1;
        let ticker = BookTicker {
            line: self.line,
            update_id,
            bid: Level { price: bid_price, qty: bid_qty },
            ask: Level { price: ask_price, qty: ask_qty },
        };
        let feed = self.feeds.feed(self.market, symbol, self.file);
        feed.on_ticker(ticker, &mut self.report);
        Ok(())
    }

    fn on_trade(&mut self, data: &Value) -> Result<(), LineError> {
        self.report.trades += 1;
        let price = get_str(data, "p")?;
        let qty = get_str(data, "q")?;
        // `&` rather than `&&`: both values are checked even when the price fails.
        let ok = self.price("p", price).is_some() & self.quantity("q", qty).is_some();
        if ok {
            Ok(())
        } else {
            Err(LineError::BadDecimals)
        }
    }

    /// A `[[price, qty], ...]` array. Every level is checked even after a bad one, so the
    /// decimal counts cover the whole message.
    fn levels(&mut self, obj: &Value, field: &'static str) -> Result<Vec<(Price, Quantity)>, LineError> {
        let levels = get(obj, field)?.as_array().ok_or(LineError::NotA(field, "an array"))?;
        let mut parsed = Vec::with_capacity(levels.len());
        let mut all_good = true;
        for level in levels {
            let pair = match level.as_array().map(Vec::as_slice) {
                Some([price, qty]) => (price.as_str(), qty.as_str()),
                _ => return Err(LineError::NotA(field, "an array of [price, qty] pairs")),
            };
            let (Some(price), Some(qty)) = pair else {
                return Err(LineError::NotA(field, "an array of [string, string] pairs"));
            };
            match (self.price(field, price), self.quantity(field, qty)) {
                (Some(price), Some(qty)) => parsed.push((price, qty)),
                _ => all_good = false,
            }
        }
        if all_good {
            Ok(parsed)
        } else {
            Err(LineError::BadDecimals)
        }
    }

    fn price(&mut self, field: &'static str, text: &str) -> Option<Price> {
        self.report.values += 1;
        let parsed = Price::parse(text);
        if let Ok(price) = parsed {
            self.printed.clear();
            // Writing to a String cannot fail.
            let _ = write!(self.printed, "{}", price.display_with(decimals_of(text) as u32));
        }
        self.round_trip(field, text, parsed)
    }

    fn quantity(&mut self, field: &'static str, text: &str) -> Option<Quantity> {
        self.report.values += 1;
        let parsed = Quantity::parse_unsigned(text);
        if let Ok(qty) = parsed {
            self.printed.clear();
            let _ = write!(self.printed, "{qty:.*}", decimals_of(text));
        }
        self.round_trip(field, text, parsed)
    }

    /// Accepts `parsed` only when it printed back (into `printed`) as `text` exactly.
    fn round_trip<T, E: fmt::Display>(&mut self, field: &'static str, text: &str, parsed: Result<T, E>) -> Option<T> {
        let line = self.line;
        match parsed {
            Ok(value) if self.printed == text => Some(value),
            Ok(_) => {
                self.report.fail(Check::Decimals, line, format_args!("{field} {text:?} prints back as {:?}", self.printed));
                None
            }
            Err(e) => {
                self.report.fail(Check::Decimals, line, format_args!("{field} {text:?}: {e}"));
                None
            }
        }
    }

    fn finish(self) -> FileReport {
        let mut report = self.report;
        self.feeds.close_file(self.file, &mut report);
        report
    }
}

/// Reads a file whole, gunzipping `.gz`; on an error, what was read before it and the error.
fn read_file(path: &Path) -> (Vec<u8>, Option<io::Error>) {
    let mut bytes = Vec::new();
    let read = File::open(path).and_then(|file| {
        if path.extension().is_some_and(|e| e == "gz") {
            GzDecoder::new(file).read_to_end(&mut bytes)
        } else {
            io::BufReader::new(file).read_to_end(&mut bytes)
        }
    });
    (bytes, read.err())
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// `binance_<market>_<symbol>_<date>.gz`: market and symbol, as SOURCES.md names the recordings.
fn recording_identity(name: &str) -> (Market, Option<String>) {
    let market = if name.contains("usdm") { Market::UsdM } else { Market::Spot };
    let symbol = name.split('_').nth(2).filter(|s| !s.is_empty()).map(str::to_uppercase);
    (market, symbol)
}

fn check_recording(path: &Path, file: usize, feeds: &mut Feeds) -> FileReport {
    let name = file_name(path);
    let (market, symbol) = recording_identity(&name);
    let mut check = FileCheck::new(feeds, name, file, market);
    check.snapshot_symbol = symbol;
    check.read_lines(path, FileCheck::read_recorded);
    check.finish()
}

/// A cryptofeed session: the ws recording, then its REST snapshots, one per symbol. The
/// `.jsonl` snapshots do not name their symbol; the request URLs in the `.http.0.0.txt`
/// original do, line for line.
fn check_cryptofeed(dir: &Path, stem: &str, market: Market) -> FileReport {
    let ws = dir.join(format!("{stem}.ws.1.0.jsonl"));
    let http = dir.join(format!("{stem}.http.0.0.jsonl"));
    let urls = dir.join(format!("{stem}.http.0.0.txt"));
    let mut feeds = Feeds::new();
    let name = format!("{stem}.ws.1.0.jsonl + {stem}.http.0.0.jsonl");
    let mut check = FileCheck::new(&mut feeds, name, 0, market);
    check.read_lines(&ws, FileCheck::read_plain);

    let (url_text, error) = read_file(&urls);
    if let Some(e) = error {
        check.report.source = file_name(&urls);
        check.report.fail(Check::Lines, 0, format_args!("cannot read: {e}"));
    }
    let symbols: Vec<String> = String::from_utf8_lossy(&url_text)
        .lines()
        .filter_map(|line| {
            let query = line.split_once("symbol=")?.1;
            query.split(['&', ' ']).next().map(str::to_owned)
        })
        .collect();
    let mut snapshot = 0;
    check.read_lines(&http, |check, text| {
        check.snapshot_symbol = symbols.get(snapshot).cloned();
        snapshot += 1;
        check.read_plain(text)
    });
    check.finish()
}
