//! `sapphire replay`: recorded exchange frames through the same engine as live, as fast as
//! possible, deterministically; a summary at the end.
//!
//! Two inputs:
//! - Binance recordings: `<recv_ns> <json>` lines, gzip or plain; several files are merged by
//!   receive time. Instruments are learned from the frames (tick and lot inferred from the
//!   decimals actually used). Timers are generated every 100 ms of receive time, so the
//!   engine's guards and PnL snapshots run as they would live.
//! - An input journal (`<data dir>/journal/input`): the exact events a run saw, timers included.
//!
//! As fast as possible or at a multiple of recorded pace (`--pace`); `--out DIR` keeps every
//! engine output in an output journal (`sapphire journal dump DIR`, `sapphire report
//! --journal DIR`). Figures are defined in [`crate::report::metrics`]; fill models in
//! `docs/fill-models.md`.

use crate::report::metrics::Metrics;
use anyhow::Context;
use sapphire_core::engine::{Engine, EngineConfig, EngineOutput, Output, OutputSink};
use sapphire_core::event::{Event, Timer};
use sapphire_core::fixed::{Money, Price, Quantity};
use sapphire_core::instrument::{InstrumentRegistry, InstrumentSpec, MarketType};
use sapphire_core::order::Order;
use sapphire_gateway::binance::market::{parse_frame, BinanceFrame};
use sapphire_gateway::binance::{BinanceFeed, BinanceMarket};
use sapphire_persistence::journal::JournalWriter;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Timer period in receive time.
const TIMER_NS: u64 = 100_000_000;

fn open(path: &Path) -> anyhow::Result<Box<dyn BufRead + Send>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let gz = reader.fill_buf().map(|b| b.starts_with(&[0x1f, 0x8b])).unwrap_or(false);
    Ok(if gz {
        Box::new(BufReader::with_capacity(1 << 16, flate2::read::MultiGzDecoder::new(reader)))
    } else {
        Box::new(reader) as Box<dyn BufRead + Send>
    })
}

/// One recording, read line by line.
struct Source {
    reader: Box<dyn BufRead + Send>,
    path: PathBuf,
    line_no: u64,
}

/// Lines ordered by receive time across files (ties: file order, then line order).
#[derive(PartialEq, Eq)]
struct Pending {
    recv: u64,
    file: usize,
    line_no: u64,
    /// The whole line (its buffer is reused for the file's next line).
    line: Vec<u8>,
    /// Where the frame starts in `line`.
    start: usize,
}

impl Pending {
    fn frame(&self) -> &[u8] {
        let f = &self.line[self.start..];
        let end = f.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(0, |i| i + 1);
        &f[..end]
    }
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.recv, other.file, other.line_no).cmp(&(self.recv, self.file, self.line_no))
    }
}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The next `<recv_ns> <frame>` line of `src`, read into `buf` (bytes: a line that is not
/// UTF-8 is a bad frame, counted by the feed, not an I/O error).
fn next_line(src: &mut Source, file: usize, skipped: &mut u64, mut buf: Vec<u8>) -> anyhow::Result<Option<Pending>> {
    loop {
        buf.clear();
        let n = src.reader.read_until(b'\n', &mut buf).with_context(|| format!("reading {}", src.path.display()))?;
        if n == 0 {
            return Ok(None);
        }
        src.line_no += 1;
        let parsed = buf.iter().position(|&c| c == b' ').and_then(|sp| {
            let t = std::str::from_utf8(&buf[..sp]).ok()?.parse::<u64>().ok()?;
            Some((t, sp + 1))
        });
        match parsed {
            Some((recv, start)) => return Ok(Some(Pending { recv, file, line_no: src.line_no, line: buf, start })),
            None if buf.iter().all(u8::is_ascii_whitespace) => {}
            None => *skipped += 1,
        }
    }
}

/// Decimals actually used by a decimal string (`"61659.80000000"` uses 1).
fn used_decimals(text: &[u8]) -> u32 {
    match text.iter().position(|&c| c == b'.') {
        Some(dot) => {
            let frac = &text[dot + 1..];
            frac.iter().rposition(|&c| c != b'0').map_or(0, |i| i as u32 + 1)
        }
        None => 0,
    }
}

/// Learns symbols and their tick and lot from the first lines of every file, and each
/// file's depth symbol (a REST snapshot line carries none: it belongs to its file's book).
fn learn_instruments(paths: &[PathBuf], venue: &str, market: MarketType) -> anyhow::Result<(InstrumentRegistry, Vec<Option<String>>)> {
    let mut seen: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let mut depth_symbol = vec![None; paths.len()];
    for (file, path) in paths.iter().enumerate() {
        for line in open(path)?.split(b'\n').take(20_000) {
            let line = line.with_context(|| format!("reading {}", path.display()))?;
            let Some(sp) = line.iter().position(|&c| c == b' ') else { continue };
            let frame = &line[sp + 1..];
            let mut note = |symbol: &str, prices: &[&[u8]], qtys: &[&[u8]]| {
                let e = seen.entry(symbol.to_string()).or_insert((0, 0));
                for p in prices {
                    e.0 = e.0.max(used_decimals(p));
                }
                for q in qtys {
                    e.1 = e.1.max(used_decimals(q));
                }
            };
            match parse_frame(frame) {
                Ok(BinanceFrame::BookTicker(t)) => note(t.symbol, &[t.bid.0, t.ask.0], &[t.bid.1, t.ask.1]),
                Ok(BinanceFrame::Trade(t)) => note(t.symbol, &[t.price], &[t.qty]),
                Ok(BinanceFrame::Depth(d)) => {
                    if depth_symbol[file].is_none() {
                        depth_symbol[file] = Some(d.symbol.to_string());
                    }
                    let levels: Vec<(&[u8], &[u8])> = d.bids.clone().chain(d.asks.clone()).filter_map(Result::ok).collect();
                    let prices: Vec<&[u8]> = levels.iter().map(|l| l.0).collect();
                    let qtys: Vec<&[u8]> = levels.iter().map(|l| l.1).collect();
                    note(d.symbol, &prices, &qtys);
                }
                _ => {}
            }
        }
    }
    anyhow::ensure!(
        !seen.is_empty(),
        "no Binance market data found in the first lines of {}",
        paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    );
    let mut registry = InstrumentRegistry::new();
    for (symbol, (pd, qd)) in seen {
        let tick = Price::from_raw(10i64.pow(Price::DECIMALS - pd.min(Price::DECIMALS)));
        let lot = Quantity::from_raw(10i64.pow(Quantity::DECIMALS - qd.min(Quantity::DECIMALS)));
        registry.intern(InstrumentSpec {
            venue,
            symbol: &symbol,
            market,
            tick_size: tick,
            lot_size: lot,
            min_notional: Money::from_units(5),
        })?;
    }
    Ok((registry, depth_symbol))
}

/// What to replay.
#[derive(Clone, Debug)]
pub enum Input {
    /// Binance recordings (`<recv_ns> <json>` lines), merged by receive time.
    Recordings {
        /// The files.
        paths: Vec<PathBuf>,
        /// Spot or USD-M.
        market: BinanceMarket,
    },
    /// An input journal directory (`<data dir>/journal/input`), with its `instruments.txt`.
    Journal(PathBuf),
}

/// How to replay.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// Recorded pace multiplier (1.0 = as recorded, 10.0 = ten times faster); `None`: as fast
    /// as possible.
    pub pace: Option<f64>,
    /// A progress line on stderr.
    pub progress: bool,
    /// Keep every engine output in an output journal in this (new) directory.
    pub out: Option<PathBuf>,
}

/// Parses `--pace`: `max` (as fast as possible), or `1x`, `10x`, `0.5x`.
pub fn parse_pace(s: &str) -> anyhow::Result<Option<f64>> {
    if s == "max" || s == "fast" {
        return Ok(None);
    }
    let f = s.strip_suffix('x').unwrap_or(s).parse::<f64>().ok().filter(|f| f.is_finite() && *f > 0.0);
    f.map(Some).ok_or_else(|| anyhow::anyhow!("{s:?} is not a pace like 1x, 10x or max"))
}

/// Engine outputs go to the figures and, with `--out`, to an output journal.
struct Sink {
    metrics: Metrics,
    journal: Option<JournalWriter<Output>>,
    error: Option<sapphire_persistence::journal::JournalError>,
    /// Sequence and event time of the last event through the engine (the closing snapshot's).
    last: Option<(i64, u64)>,
}

impl Sink {
    /// Before each event goes through the engine.
    fn saw(&mut self, seq: i64, e: &Event) {
        let ts = self.last.map_or(0, |l| l.1).max(e.ts_event());
        self.last = Some((seq, ts));
    }

    /// The engine's state at the end of the input, as the outputs a timer would emit: the
    /// portfolio's totals and every agent's. Without it the output journal would end at the
    /// last timer, and a report over it would miss what changed after (fills, marks): the
    /// summary and the report state the same PnL because both end at the same state.
    fn close(&mut self, engine: &Engine) {
        let Some((seq, ts_event)) = self.last else { return };
        let pf = engine.stages.risk.risk.portfolio();
        self.emit(Output { seq, output: EngineOutput::Pnl { ts_event, total: pf.total() } });
        for a in 0..pf.agents() {
            let agent = sapphire_core::event::AgentId(a as u16);
            self.emit(Output { seq, output: EngineOutput::AgentPnl { ts_event, agent, summary: pf.agent_summary(agent) } });
        }
    }
}

impl OutputSink for Sink {
    fn emit(&mut self, out: Output) {
        self.metrics.add(&out);
        if let (Some(j), None) = (self.journal.as_mut(), self.error.as_ref()) {
            if let Err(e) = j.append_record(&out) {
                self.error = Some(e);
            }
        }
    }
}

/// Paper routing sends nothing out; anything that would go to an external venue is counted.
#[derive(Default)]
struct Outbound(u64);

impl sapphire_core::engine::OrderSink for Outbound {
    fn send(&mut self, _order: Order) -> Result<(), Order> {
        self.0 += 1;
        Ok(())
    }
}

/// Sleeps to keep event time at `speed` × wall time (never for less than a millisecond).
struct Pacer {
    speed: Option<f64>,
    origin: Option<(u64, Instant)>,
}

impl Pacer {
    fn wait(&mut self, ts: u64) {
        let Some(speed) = self.speed else { return };
        let (t0, w0) = *self.origin.get_or_insert((ts, Instant::now()));
        let due = std::time::Duration::from_secs_f64(ts.saturating_sub(t0) as f64 / 1e9 / speed);
        let now = w0.elapsed();
        if due > now + std::time::Duration::from_millis(1) {
            std::thread::sleep(due - now);
        }
    }
}

/// A progress line on stderr, refreshed at most every 250 ms.
struct Progress {
    on: bool,
    started: Instant,
    last: Instant,
    total: Option<u64>,
}

impl Progress {
    fn tick(&mut self, done: u64, events: u64) {
        // Reading the clock costs ~30 ns: only every 4096 units.
        if !self.on || done % 4096 != 0 || self.last.elapsed().as_millis() < 250 {
            return;
        }
        self.last = Instant::now();
        let rate = events as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        match self.total {
            Some(t) if t > 0 => {
                let frac = (done as f64 / t as f64).min(1.0);
                let bar: String = (0..30).map(|i| if (i as f64) < frac * 30.0 { '#' } else { '.' }).collect();
                errout!("\rreplay [{bar}] {:5.1}%  {events} events, {rate:.0}/s   ", frac * 100.0);
            }
            _ => errout!("\rreplay: {done} lines, {events} events, {rate:.0}/s   "),
        }
    }

    fn finish(&self, done: u64, events: u64) {
        if self.on {
            errln!("\rreplay: {done} read, {events} events{:40}", "");
        }
    }
}

/// One agent's figures in a summary.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentLine {
    /// Agent id.
    pub agent: u16,
    /// Equity − budget at the end.
    pub pnl: Money,
    /// Fees paid.
    pub fees: Money,
    /// Fills.
    pub fills: u64,
    /// Turnover.
    pub turnover: Money,
    /// Hit rate of its reducing fills.
    pub hit_rate: Option<f64>,
}

/// What a replay produced. Every field but `elapsed_s` is a function of the input and the
/// configuration (deterministic). Definitions: `crate::report::metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplaySummary {
    /// Input files (or 1 for a journal).
    pub files: usize,
    /// Lines (records) read.
    pub lines: u64,
    /// Events through the engine (timers included).
    pub events: u64,
    /// Unparseable lines and frames.
    pub skipped: u64,
    /// Sequence gaps in depth streams.
    pub gaps: u64,
    /// Wall time.
    pub elapsed_s: f64,
    /// New orders.
    pub orders: u64,
    /// Cancels.
    pub cancels: u64,
    /// Fills.
    pub fills: u64,
    /// Risk refusals.
    pub refusals: u64,
    /// Guard alerts.
    pub alerts: u64,
    /// Final equity.
    pub equity: Money,
    /// Capital (sum of agent budgets).
    pub capital: Money,
    /// Realized PnL before fees.
    pub realized: Money,
    /// Unrealized PnL at the last marks.
    pub unrealized: Money,
    /// Fees.
    pub fees: Money,
    /// Sum of fill notionals.
    pub turnover: Money,
    /// Largest fall from peak equity (money).
    pub max_drawdown: Money,
    /// The same in percent of the peak.
    pub max_drawdown_pct: f64,
    /// Annualised Sharpe ratio of per-minute equity returns.
    pub sharpe: Option<f64>,
    /// Annualised Sortino ratio of per-minute equity returns.
    pub sortino: Option<f64>,
    /// Share of position-reducing fills that gained.
    pub hit_rate: Option<f64>,
    /// Per agent that traded.
    pub per_agent: Vec<AgentLine>,
    /// Outputs written with `--out`.
    pub outputs_written: u64,
}

impl ReplaySummary {
    /// PnL: equity − capital.
    pub fn pnl(&self) -> Money {
        self.equity - self.capital
    }

    /// The summary as one JSON object (money as exact decimal strings; undefined ratios null).
    pub fn to_json(&self) -> String {
        let agents: Vec<_> = self
            .per_agent
            .iter()
            .map(|a| {
                serde_json::json!({"agent": a.agent, "pnl": a.pnl.to_string(), "fees": a.fees.to_string(), "fills": a.fills,
                    "turnover": a.turnover.to_string(), "hit_rate": a.hit_rate})
            })
            .collect();
        serde_json::json!({
            "files": self.files, "lines": self.lines, "events": self.events, "skipped": self.skipped, "gaps": self.gaps,
            "elapsed_s": self.elapsed_s, "events_per_sec": (self.events as f64 / self.elapsed_s.max(1e-9)).round(),
            "orders": self.orders, "cancels": self.cancels, "fills": self.fills, "refusals": self.refusals, "alerts": self.alerts,
            "equity": self.equity.to_string(), "capital": self.capital.to_string(), "pnl": self.pnl().to_string(),
            "realized": self.realized.to_string(), "unrealized": self.unrealized.to_string(), "fees": self.fees.to_string(),
            "turnover": self.turnover.to_string(), "max_drawdown": self.max_drawdown.to_string(),
            "max_drawdown_pct": self.max_drawdown_pct, "sharpe": self.sharpe, "sortino": self.sortino,
            "hit_rate": self.hit_rate, "agents": agents, "outputs_written": self.outputs_written,
        })
        .to_string()
    }

    /// The summary for people.
    pub fn to_text(&self) -> String {
        let s = self;
        let ratio = |v: Option<f64>| v.map_or("n/a".to_string(), |x| format!("{x:.2}"));
        let mut t = format!(
            "replay: {} files, {} lines, {} events in {:.2}s ({:.0} events/s), {} skipped, {} gaps\n",
            s.files,
            s.lines,
            s.events,
            s.elapsed_s,
            s.events as f64 / s.elapsed_s.max(1e-9),
            s.skipped,
            s.gaps
        );
        t += &format!(
            "  orders {} (cancels {}), fills {}, refused {}, alerts {}, turnover {:.2}\n",
            s.orders, s.cancels, s.fills, s.refusals, s.alerts, s.turnover
        );
        t += &format!(
            "  equity {:.2} on capital {:.2}: pnl {:.2} (realized {:.2}, unrealized {:.2}), fees {:.2}\n",
            s.equity,
            s.capital,
            s.pnl(),
            s.realized,
            s.unrealized,
            s.fees
        );
        t += &format!(
            "  max drawdown {:.2} ({:.3}%), sharpe {}, sortino {}, hit rate {}\n",
            s.max_drawdown,
            s.max_drawdown_pct,
            ratio(s.sharpe),
            ratio(s.sortino),
            s.hit_rate.map_or("n/a".into(), |h| format!("{:.1}%", h * 100.0))
        );
        for a in &s.per_agent {
            t += &format!(
                "  agent {}: pnl {:.2}, fees {:.2}, fills {}, turnover {:.2}, hit rate {}\n",
                a.agent,
                a.pnl,
                a.fees,
                a.fills,
                a.turnover,
                a.hit_rate.map_or("n/a".into(), |h| format!("{:.1}%", h * 100.0))
            );
        }
        if s.outputs_written > 0 {
            t += &format!("  {} outputs journaled\n", s.outputs_written);
        }
        t
    }
}

/// Counts from reading the input.
#[derive(Default)]
struct ReadCounts {
    /// The instruments, in id order.
    instruments: Vec<sapphire_core::instrument::Instrument>,
    files: usize,
    lines: u64,
    events: u64,
    skipped: u64,
    gaps: u64,
}

/// Replays `input` through an engine built from `config`.
pub fn replay(input: &Input, config: &EngineConfig, opts: &ReplayOptions) -> anyhow::Result<ReplaySummary> {
    let journal = match &opts.out {
        Some(dir) => {
            if dir.exists() {
                let segs = sapphire_persistence::journal::segments(dir).with_context(|| format!("reading --out {}", dir.display()))?;
                anyhow::ensure!(segs.is_empty(), "--out {} already holds a journal: give a new directory", dir.display());
            }
            let mut jc = sapphire_persistence::journal::JournalConfig::new(dir);
            jc.durability = sapphire_persistence::journal::Durability::Os;
            Some(JournalWriter::<Output>::open(jc).with_context(|| format!("opening the output journal {}", dir.display()))?.0)
        }
        None => None,
    };
    let mut sink = Sink { metrics: Metrics::new(false), journal, error: None, last: None };
    let started = Instant::now();
    let (engine, counts) = match input {
        Input::Recordings { paths, market } => replay_recordings(paths, *market, config, opts, &mut sink)?,
        Input::Journal(dir) => replay_journal(dir, config, opts, &mut sink)?,
    };
    sink.close(&engine);
    let elapsed_s = started.elapsed().as_secs_f64();
    let mut outputs_written = 0;
    if let Some(mut j) = sink.journal.take() {
        if let Some(e) = sink.error.take() {
            return Err(anyhow::Error::new(e).context("writing the output journal"));
        }
        j.sync().context("syncing the output journal")?;
        if let Some(dir) = &opts.out {
            // `journal dump` names instruments from this list.
            sapphire_persistence::recovery::check_instruments(dir, &counts.instruments)
                .context("writing the output journal's instruments")?;
        }
        outputs_written = j.next_seq();
    }
    let m = &sink.metrics;
    let risk = &engine.stages.risk.risk;
    let pf = risk.portfolio();
    let total = pf.total();
    let per_agent = (0..pf.agents())
        .map(|a| (a as u16, pf.agent_summary(sapphire_core::event::AgentId(a as u16))))
        .filter(|(_, s)| s.fees.raw != 0 || s.realized.raw != 0 || s.unrealized.raw != 0)
        .map(|(a, s)| {
            let f = m.agents.get(&a).cloned().unwrap_or_default();
            AgentLine {
                agent: a,
                pnl: s.equity - s.capital,
                fees: s.fees,
                fills: f.fills,
                turnover: f.turnover,
                hit_rate: (f.closes > 0).then(|| f.wins as f64 / f.closes as f64),
            }
        })
        .collect();
    let (max_drawdown, max_drawdown_pct) = m.max_drawdown();
    Ok(ReplaySummary {
        files: counts.files,
        lines: counts.lines,
        events: counts.events,
        skipped: counts.skipped,
        gaps: counts.gaps,
        elapsed_s,
        orders: m.orders,
        cancels: m.cancels,
        fills: m.fills,
        refusals: m.refusals,
        alerts: m.alerts,
        equity: total.equity,
        capital: total.capital,
        realized: total.realized,
        unrealized: total.unrealized,
        fees: total.fees,
        turnover: m.turnover(),
        max_drawdown,
        max_drawdown_pct,
        sharpe: m.sharpe(),
        sortino: m.sortino(),
        hit_rate: m.hit_rate(),
        per_agent,
        outputs_written,
    })
}

/// Recordings opened for decoding: the venue they are of, the instruments learned from their
/// first lines, which instrument each file's REST snapshots belong to, and a reader per file.
struct Recordings {
    venue: &'static str,
    registry: InstrumentRegistry,
    snapshot_target: Vec<Option<sapphire_core::instrument::InstrumentId>>,
    instruments: Vec<sapphire_core::instrument::Instrument>,
    sources: Vec<Source>,
}

impl Recordings {
    fn open(paths: &[PathBuf], market: BinanceMarket) -> anyhow::Result<Recordings> {
        let (venue, kind) = match market {
            BinanceMarket::Spot => ("binance", MarketType::Spot),
            BinanceMarket::UsdM => ("binance-usdm", MarketType::LinearPerpetual),
        };
        let (registry, depth_symbol) = learn_instruments(paths, venue, kind)?;
        let snapshot_target = depth_symbol.iter().map(|s| s.as_deref().and_then(|s| registry.lookup(venue, s))).collect();
        let instruments = registry.iter().cloned().collect();
        let mut sources = Vec::new();
        for p in paths {
            sources.push(Source { reader: open(p)?, path: p.clone(), line_no: 0 });
        }
        Ok(Recordings { venue, registry, snapshot_target, instruments, sources })
    }
}

fn replay_recordings(
    paths: &[PathBuf],
    market: BinanceMarket,
    config: &EngineConfig,
    opts: &ReplayOptions,
    sink: &mut Sink,
) -> anyhow::Result<(Engine, ReadCounts)> {
    let Recordings { venue, registry, snapshot_target, instruments, sources } = Recordings::open(paths, market)?;
    let mut engine = Engine::new(config, &instruments);
    let mut outbound = Outbound::default();
    let mut progress = Progress { on: opts.progress, started: Instant::now(), last: Instant::now(), total: None };
    let mut pacer = Pacer { speed: opts.pace, origin: None };
    let mut events = 0u64;
    // Decoding (gunzip, JSON, book sync) runs on a second thread and hands the engine batches
    // of events in input order: the engine sees exactly the sequence a one-thread replay
    // would, so the result is the same; the two threads overlap.
    let (producer, consumer) = batches();
    let counts = std::thread::scope(|scope| {
        let decoder = scope.spawn(|| decode(sources, &registry, market, venue, &snapshot_target, producer));
        consumer.each(|seq, e| {
            if opts.pace.is_some() {
                pacer.wait(ts_recv(e));
            }
            sink.saw(seq, e);
            engine.process(seq, e, &mut outbound, sink);
            events += 1;
            progress.tick(events, events);
        });
        decoder.join().map_err(|_| anyhow::anyhow!("the replay's decoder thread panicked"))?
    })?;
    progress.finish(counts.lines, events);
    anyhow::ensure!(events == counts.events, "replay: {} events decoded, {events} processed", counts.events);
    Ok((engine, ReadCounts { files: paths.len(), instruments, ..counts }))
}

/// Events per batch handed from the decoder to the engine, and batches in flight.
const BATCH: usize = 4096;
const BATCHES: usize = 8;

/// The reading side of a two-thread replay: collects events into batches and sends them.
struct Producer {
    batch: Vec<(i64, Event)>,
    full: std::sync::mpsc::SyncSender<Vec<(i64, Event)>>,
    empty: std::sync::mpsc::Receiver<Vec<(i64, Event)>>,
    /// Events sent.
    sent: u64,
    /// The engine side is gone (it never stops early unless it panicked).
    closed: bool,
}

impl Producer {
    /// Queues `e` as inbound event `seq` (the engine's sequence: client order ids derive from it).
    fn push(&mut self, seq: i64, e: Event) {
        self.batch.push((seq, e));
        if self.batch.len() >= BATCH {
            self.send();
        }
    }

    fn send(&mut self) {
        let fresh = self.empty.try_recv().unwrap_or_else(|_| Vec::with_capacity(BATCH));
        let batch = std::mem::replace(&mut self.batch, fresh);
        self.sent += batch.len() as u64;
        self.closed |= self.full.send(batch).is_err();
    }

    /// Events pushed so far: the next event's sequence in a replay of recordings.
    fn sent_or_queued(&self) -> i64 {
        (self.sent + self.batch.len() as u64) as i64
    }

    /// Sends what is left; returns the number of events sent.
    fn finish(mut self) -> u64 {
        if !self.batch.is_empty() {
            self.send();
        }
        self.sent
    }
}

/// The engine side: takes batches in order and returns their buffers for reuse.
struct Consumer {
    full: std::sync::mpsc::Receiver<Vec<(i64, Event)>>,
    empty: std::sync::mpsc::SyncSender<Vec<(i64, Event)>>,
}

impl Consumer {
    /// Calls `f` on every event, in order, until the producer is done.
    fn each(self, mut f: impl FnMut(i64, &Event)) {
        for mut batch in self.full {
            batch.iter().for_each(|(seq, e)| f(*seq, e));
            batch.clear();
            // The producer may have finished: then the buffer is simply dropped.
            let _ = self.empty.try_send(batch);
        }
    }
}

fn batches() -> (Producer, Consumer) {
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Vec<(i64, Event)>>(BATCHES);
    let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<Vec<(i64, Event)>>(BATCHES + 2);
    (
        Producer { batch: Vec::with_capacity(BATCH), full: full_tx, empty: empty_rx, sent: 0, closed: false },
        Consumer { full: full_rx, empty: empty_tx },
    )
}

/// The decoder thread: merges the files by receive time, generates timers, parses frames into
/// events, and sends them in batches.
fn decode(
    mut sources: Vec<Source>,
    registry: &InstrumentRegistry,
    market: BinanceMarket,
    venue: &str,
    snapshot_target: &[Option<sapphire_core::instrument::InstrumentId>],
    mut out: Producer,
) -> anyhow::Result<ReadCounts> {
    let mut feed = BinanceFeed::new(market, registry, venue);
    let (mut skipped, mut lines) = (0u64, 0u64);
    let mut heap = BinaryHeap::new();
    for (i, s) in sources.iter_mut().enumerate() {
        if let Some(p) = next_line(s, i, &mut skipped, Vec::new())? {
            heap.push(p);
        }
    }
    let mut next_timer = 0u64;
    let mut timer_id = 0u32;
    while let Some(p) = heap.pop() {
        lines += 1;
        if p.recv >= next_timer {
            if next_timer > 0 {
                out.push(out.sent_or_queued(), Event::Timer(Timer { ts_event: p.recv, ts_recv: p.recv, timer_id, _pad: 0 }));
                timer_id = timer_id.wrapping_add(1);
            }
            next_timer = p.recv - p.recv % TIMER_NS + TIMER_NS;
        }
        let frame = p.frame();
        if frame.starts_with(b"{\"lastUpdateId\"") {
            feed.on_snapshot(snapshot_target[p.file], p.recv, frame, &mut |e| out.push(out.sent_or_queued(), e));
        } else {
            feed.on_frame(p.recv, frame, &mut |e| out.push(out.sent_or_queued(), e));
        }
        anyhow::ensure!(!out.closed, "the replay's engine stopped");
        let file = p.file;
        if let Some(n) = next_line(&mut sources[file], file, &mut skipped, p.line)? {
            heap.push(n);
        }
    }
    let events = out.finish();
    Ok(ReadCounts {
        instruments: Vec::new(),
        files: sources.len(),
        lines,
        events,
        skipped: skipped + feed.counters.skipped(),
        gaps: feed.counters.gaps,
    })
}

/// Receive time of an inbound event.
fn ts_recv(e: &Event) -> u64 {
    match e {
        Event::Quote(x) => x.ts_recv,
        Event::Trade(x) => x.ts_recv,
        Event::BookDelta(x) => x.ts_recv,
        Event::Signal(x) => x.ts_recv,
        Event::ExecReport(x) => x.ts_recv,
        Event::Timer(x) => x.ts_recv,
        Event::Control(x) => x.ts_recv,
    }
}

/// Beside a capture's segments: each instrument's exact specification (venue, symbol, market,
/// tick, lot and minimum notional as raw fixed-point), one a line in id order, so its replay
/// trades the instruments the recording's replay traded without inferring them again.
const SPEC_FILE: &str = "instruments.spec";

fn write_specs(dir: &Path, instruments: &[sapphire_core::instrument::Instrument]) -> anyhow::Result<()> {
    let mut names = String::new();
    let mut specs = String::new();
    for i in instruments {
        let market = match i.market {
            MarketType::Spot => "spot",
            MarketType::LinearPerpetual => "linear",
        };
        names += &format!("{} {}\n", i.venue, i.symbol);
        specs += &format!("{} {} {market} {} {} {}\n", i.venue, i.symbol, i.tick_size.raw, i.lot_size.raw, i.min_notional.raw);
    }
    std::fs::write(dir.join("instruments.txt"), names).with_context(|| format!("writing {}/instruments.txt", dir.display()))?;
    std::fs::write(dir.join(SPEC_FILE), specs).with_context(|| format!("writing {}/{SPEC_FILE}", dir.display()))?;
    Ok(())
}

/// The instruments of `instruments.spec`, when the journal has one (a capture).
fn read_specs(dir: &Path) -> anyhow::Result<Option<Vec<sapphire_core::instrument::Instrument>>> {
    let path = dir.join(SPEC_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
    let mut registry = InstrumentRegistry::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad =
            || anyhow::anyhow!("{}: line {}: expected `venue symbol spot|linear tick lot min_notional`: {line:?}", path.display(), n + 1);
        let f: Vec<&str> = line.split_whitespace().collect();
        let [venue, symbol, market, tick, lot, notional] = f[..] else { return Err(bad()) };
        let market = match market {
            "spot" => MarketType::Spot,
            "linear" => MarketType::LinearPerpetual,
            _ => return Err(bad()),
        };
        let raw = |v: &str| v.parse::<i64>().ok().filter(|&r| r > 0).ok_or_else(bad);
        registry.intern(InstrumentSpec {
            venue,
            symbol,
            market,
            tick_size: Price::from_raw(raw(tick)?),
            lot_size: Quantity::from_raw(raw(lot)?),
            min_notional: Money::from_raw(raw(notional)?),
        })?;
    }
    Ok(Some(registry.iter().cloned().collect()))
}

/// What `sapphire capture convert` wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Captured {
    /// Events (timers included) in the capture.
    pub events: u64,
    /// Input lines read.
    pub lines: u64,
    /// Lines or frames skipped (counted, as a replay counts them).
    pub skipped: u64,
    /// Instruments.
    pub instruments: usize,
    /// The capture's size on disk.
    pub bytes: u64,
}

/// `sapphire capture convert`: recordings decoded once — merged by receive time, timers
/// generated, frames parsed and books synced exactly as `sapphire replay` does — into an input
/// journal (`out`, a new directory) with the instruments' exact specifications beside it.
/// Replaying it gives the outputs a replay of the recordings gives, without the parsing.
pub fn capture(paths: &[PathBuf], market: BinanceMarket, out: &Path, progress: bool) -> anyhow::Result<Captured> {
    use sapphire_persistence::journal::{segments, Durability, JournalConfig};
    if out.exists() {
        let segs = segments(out).with_context(|| format!("reading {}", out.display()))?;
        anyhow::ensure!(segs.is_empty(), "{} already holds a journal: give a new directory", out.display());
    }
    let Recordings { venue, registry, snapshot_target, instruments, sources } = Recordings::open(paths, market)?;
    let mut jc = JournalConfig::new(out);
    jc.durability = Durability::Os;
    let (mut journal, _) = JournalWriter::<Event>::open(jc).with_context(|| format!("creating the capture {}", out.display()))?;
    write_specs(out, &instruments)?;
    let mut meter = Progress { on: progress, started: Instant::now(), last: Instant::now(), total: None };
    let mut error = None;
    let mut events = 0u64;
    let (producer, consumer) = batches();
    let counts = std::thread::scope(|scope| {
        let decoder = scope.spawn(|| decode(sources, &registry, market, venue, &snapshot_target, producer));
        consumer.each(|seq, e| {
            if error.is_some() {
                return;
            }
            // The journal's sequence is the replay's: client order ids derive from it.
            debug_assert_eq!(seq as u64, journal.next_seq());
            match journal.append_event(e) {
                Ok(_) => events += 1,
                Err(e) => error = Some(e),
            }
            meter.tick(events, events);
        });
        decoder.join().map_err(|_| anyhow::anyhow!("the capture's decoder thread panicked"))?
    })?;
    if let Some(e) = error {
        return Err(anyhow::Error::new(e).context(format!("writing the capture {}", out.display())));
    }
    // Sealed: every segment with records is mapped in place when the capture is replayed.
    journal.seal().with_context(|| format!("sealing the capture {}", out.display()))?;
    meter.finish(counts.lines, events);
    anyhow::ensure!(events == counts.events, "capture: {} events decoded, {events} written", counts.events);
    let bytes = sapphire_persistence::retention::dir_bytes(out);
    Ok(Captured { events, lines: counts.lines, skipped: counts.skipped, instruments: instruments.len(), bytes })
}

/// The instruments of an input journal, in id order: a capture's exact `instruments.spec`, or
/// from its `instruments.txt`: the synthetic
/// market's from its definitions; other venues' tick and lot inferred from the journal's
/// prices and quantities (the largest power of ten dividing every value seen).
pub(crate) fn journal_instruments(dir: &Path) -> anyhow::Result<Vec<sapphire_core::instrument::Instrument>> {
    if let Some(exact) = read_specs(dir)? {
        return Ok(exact);
    }
    let list_path = dir.join("instruments.txt");
    let list =
        std::fs::read_to_string(&list_path).with_context(|| format!("reading {} (the journal's instruments)", list_path.display()))?;
    let names: Vec<(String, String)> = list
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split_once(' ')
                .map(|(v, s)| (v.to_string(), s.trim().to_string()))
                .ok_or_else(|| anyhow::anyhow!("{}: bad line {l:?}", list_path.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!names.is_empty(), "{} lists no instruments", list_path.display());
    // Powers of ten (as exponents) dividing every price and quantity seen, per instrument.
    let mut tick_exp = vec![Price::DECIMALS; names.len()];
    let mut lot_exp = vec![Quantity::DECIMALS; names.len()];
    if names.iter().any(|(v, _)| v != "synthetic") {
        let note = |exp: &mut u32, raw: i64| {
            while *exp > 0 && raw % 10i64.pow(*exp) != 0 {
                *exp -= 1;
            }
        };
        sapphire_persistence::journal::for_each(dir, |_, e| {
            let (i, p, q) = match e {
                Event::Quote(x) => (x.instrument.0 as usize, x.bid_price.raw, x.bid_qty.raw),
                Event::Trade(x) => (x.instrument.0 as usize, x.price.raw, x.qty.raw),
                Event::BookDelta(x) => (x.instrument.0 as usize, x.price.raw, x.qty.raw),
                _ => return,
            };
            if i < tick_exp.len() {
                note(&mut tick_exp[i], p);
                note(&mut lot_exp[i], q);
            }
        })
        .with_context(|| format!("reading input journal {}", dir.display()))?;
    }
    let known = sapphire_gateway::synthetic::default_instruments();
    let mut registry = InstrumentRegistry::new();
    for (i, (venue, symbol)) in names.iter().enumerate() {
        let (tick, lot, market) = match known.iter().find(|k| venue == "synthetic" && &k.symbol == symbol) {
            Some(k) => (k.tick, k.lot, MarketType::Spot),
            // run.rs's default for a synthetic symbol it does not know.
            None if venue == "synthetic" => {
                (Price::from_raw(Price::SCALE / 100), Quantity::from_raw(Quantity::SCALE / 1_000), MarketType::Spot)
            }
            None => (
                Price::from_raw(10i64.pow(tick_exp[i])),
                Quantity::from_raw(10i64.pow(lot_exp[i])),
                if venue.contains("usdm") { MarketType::LinearPerpetual } else { MarketType::Spot },
            ),
        };
        registry.intern(InstrumentSpec { venue, symbol, market, tick_size: tick, lot_size: lot, min_notional: Money::from_units(5) })?;
    }
    Ok(registry.iter().cloned().collect())
}

/// What `replay --books-only` did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BooksOnly {
    /// Events read.
    pub events: u64,
    /// Market updates after which the strategy read the best bid and ask.
    pub tops: u64,
    /// A sum over every best bid and ask read (so the reads are real work, and two inputs can
    /// be compared).
    pub checksum: i64,
    /// Wall time of the loop (reading the journal included).
    pub elapsed_s: f64,
}

impl BooksOnly {
    /// One JSON object.
    pub fn to_json(self) -> String {
        serde_json::json!({
            "events": self.events,
            "tops": self.tops,
            "checksum": self.checksum.to_string(),
            "elapsed_s": self.elapsed_s,
            "events_per_sec": self.events as f64 / self.elapsed_s.max(1e-9),
        })
        .to_string()
    }
}

/// Every event of an input journal through the book stage alone, reading the best bid and ask
/// after each market update, on this thread (records are read in place from the mapped
/// segments and checked as they go). One thread measured faster than a reader thread handing
/// batches over (median 8.6 against 7.3 M events/s, 12 runs each, recorded BTCUSDT capture):
/// reading a record costs more than the book stage does with it.
pub fn replay_books(dir: &Path, config: &EngineConfig) -> anyhow::Result<BooksOnly> {
    use sapphire_core::engine::{BookStage, StageMsg};
    anyhow::ensure!(dir.is_dir(), "{} is not an input journal directory", dir.display());
    let instruments = journal_instruments(dir)?;
    let mut books = BookStage::for_instruments(&instruments, config.book_levels, config.aggregate.imbalance_levels);
    let (mut tops, mut checksum) = (0u64, 0i64);
    let started = Instant::now();
    // One message, reused: the book stage sets only the market update and view.
    let mut msg = StageMsg::default();
    let events = sapphire_persistence::journal::for_each(dir, |seq, e| {
        msg.seq = seq as i64;
        msg.event = *e;
        msg.market_update = None;
        books.process(&mut msg);
        if msg.market_update.is_some() {
            tops += 1;
            checksum = checksum.wrapping_add(msg.market.bid.raw).wrapping_add(msg.market.ask.raw);
        }
    })
    .with_context(|| format!("reading input journal {}", dir.display()))?;
    Ok(BooksOnly { events, tops, checksum, elapsed_s: started.elapsed().as_secs_f64() })
}

fn replay_journal(dir: &Path, config: &EngineConfig, opts: &ReplayOptions, sink: &mut Sink) -> anyhow::Result<(Engine, ReadCounts)> {
    anyhow::ensure!(dir.is_dir(), "{} is not an input journal directory", dir.display());
    let instruments = journal_instruments(dir)?;
    let mut engine = Engine::new(config, &instruments);
    let mut outbound = Outbound::default();
    let total = sapphire_persistence::journal::last_record::<Event>(dir).ok().flatten().map(|(s, _)| s + 1);
    let mut progress = Progress { on: opts.progress, started: Instant::now(), last: Instant::now(), total };
    let mut pacer = Pacer { speed: opts.pace, origin: None };
    let mut events = 0u64;
    // Reading and validating records runs on a second thread, as decoding does for recordings.
    // The engine's sequence is the journal's own (ids continue as they did live).
    let (mut producer, consumer) = batches();
    let n = std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            let n = sapphire_persistence::journal::for_each(dir, |seq, e| producer.push(seq as i64, *e));
            producer.finish();
            n
        });
        consumer.each(|seq, e| {
            if opts.pace.is_some() {
                pacer.wait(ts_recv(e));
            }
            sink.saw(seq, e);
            engine.process(seq, e, &mut outbound, sink);
            events += 1;
            progress.tick(events, events);
        });
        reader.join().map_err(|_| anyhow::anyhow!("the replay's reader thread panicked"))
    })?
    .with_context(|| format!("reading input journal {}", dir.display()))?;
    progress.finish(n, events);
    Ok((engine, ReadCounts { files: 1, lines: n, events, instruments, ..ReadCounts::default() }))
}

/// `sapphire replay` flags.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Recording files (`<recv_ns> <json>` lines, gzip or plain; merged by time), or one input
    /// journal directory (e.g. data/journal/input).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// binance (only Binance recordings in this build).
    #[arg(long, default_value = "binance")]
    pub venue: String,
    /// spot or usdm; default: usdm when a file name says so, else spot.
    #[arg(long)]
    pub market: Option<String>,
    /// Configuration file (the engine, risk and paper sections apply).
    #[arg(long, env = "SAPPHIRE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the summary (or the sweep's rows) as JSON.
    #[arg(long)]
    pub json: bool,
    /// max (as fast as possible) or a multiple of recorded pace: 1x, 10x, 0.5x.
    #[arg(long, default_value = "max")]
    pub pace: String,
    /// A progress bar on stderr even when stderr is not a terminal.
    #[arg(long)]
    pub progress: bool,
    /// Keep every engine output in an output journal in this new directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Order latency of the paper venue, µs of event time (overrides paper.latency_us).
    #[arg(long)]
    pub latency_us: Option<u64>,
    /// Extra market-data latency, µs, on top of the recording's own (see docs/fill-models.md).
    #[arg(long, default_value_t = 0)]
    pub feed_latency_us: u64,
    /// Override a configuration key: `--set paper.taker_fee_bps=5`; a comma list
    /// (`--set paper.taker_fee_bps=5,10,20`) sweeps it; several lists make a grid.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Parallel runs of a sweep (default: the number of cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Books only (an input journal or capture): every event through the book stage alone,
    /// and a strategy that reads the best bid and ask after every market update — the work
    /// hftbacktest's best-bid/ask benchmark does (benches/peers). No agents, risk or matching.
    #[arg(long)]
    pub books_only: bool,
    /// With an input journal: also read its segments archived by retention (a directory,
    /// file:///dir or gs://bucket/prefix), fetched into a temporary folder first.
    #[arg(long, env = "SAPPHIRE_ARCHIVE")]
    pub archive: Option<String>,
    /// The shard folder in the archive.
    #[arg(long, env = "SAPPHIRE_SHARD", default_value = sapphire_persistence::shard::DEFAULT_SHARD)]
    pub shard: String,
}

/// `--market`: spot or usdm; without it, usdm when a file name says so.
pub fn parse_market(market: Option<&str>, paths: &[PathBuf]) -> anyhow::Result<BinanceMarket> {
    Ok(match market {
        Some("spot") => BinanceMarket::Spot,
        Some("usdm") => BinanceMarket::UsdM,
        Some(m) => return Err(crate::config::refuse("--market", format!("{m:?}: spot or usdm"))),
        None if paths.iter().any(|p| p.to_string_lossy().contains("usdm")) => BinanceMarket::UsdM,
        None => BinanceMarket::Spot,
    })
}

/// Runs `sapphire replay`.
pub fn command(args: ReplayArgs) -> anyhow::Result<()> {
    use crate::config::refuse;
    if args.venue != "binance" {
        return Err(refuse("--venue", format!("{:?}: replay reads Binance recordings in this build", args.venue)));
    }
    let pace = parse_pace(&args.pace).map_err(|e| refuse("--pace", e))?;
    let settings = crate::sweep::parse_sets(&args.set)?;
    if let Some(0) = args.jobs {
        return Err(refuse("--jobs", "at least 1"));
    }
    let journal_dirs = args.paths.iter().filter(|p| p.is_dir()).count();
    let input = if journal_dirs > 0 {
        if args.paths.len() != 1 {
            return Err(refuse("PATH", "give one input journal directory, or recording files"));
        }
        Input::Journal(args.paths[0].clone())
    } else {
        if args.archive.is_some() {
            return Err(refuse("--archive", "reads archived segments of an input journal: give its directory"));
        }
        let market = parse_market(args.market.as_deref(), &args.paths)?;
        Input::Recordings { paths: args.paths.clone(), market }
    };
    if args.books_only {
        let Input::Journal(dir) = &input else {
            return Err(refuse("--books-only", "reads an input journal or a capture (sapphire capture convert): give its directory"));
        };
        if args.out.is_some() || !settings.is_empty() || pace.is_some() || args.archive.is_some() {
            return Err(refuse("--books-only", "takes none of --out, --set, --pace, --archive"));
        }
        let doc = crate::sweep::document(args.config.as_deref(), &[])?;
        let mut file = crate::sweep::file_config(&doc)?;
        crate::config::apply_env(&mut file, &|k| std::env::var(k).ok())?;
        let b = replay_books(dir, &file.resolve()?.engine)?;
        if args.json {
            outln!("{}", b.to_json());
        } else {
            outln!(
                "books only: {} events ({} market updates read) in {:.3}s, {:.0} events/s; checksum {}",
                b.events,
                b.tops,
                b.elapsed_s,
                b.events as f64 / b.elapsed_s.max(1e-9),
                b.checksum
            );
        }
        return Ok(());
    }
    let mut overrides: Vec<(String, String)> = Vec::new();
    if let Some(l) = args.latency_us {
        overrides.push(("paper.latency_us".into(), l.to_string()));
    }
    if settings.iter().any(|s| s.values.len() > 1) {
        if args.out.is_some() {
            return Err(refuse("--out", "not with a sweep (each run would need its own journal)"));
        }
        let exe = std::env::current_exe().context("finding the current executable for the sweep's runs")?;
        let mut child: Vec<String> = args.paths.iter().map(|p| p.display().to_string()).collect();
        child.extend(["--venue".into(), args.venue.clone(), "--pace".into(), args.pace.clone()]);
        child.extend(["--feed-latency-us".into(), args.feed_latency_us.to_string()]);
        if let Some(m) = &args.market {
            child.extend(["--market".into(), m.clone()]);
        }
        if let Some(l) = args.latency_us {
            child.extend(["--latency-us".into(), l.to_string()]);
        }
        if let Some(a) = &args.archive {
            child.extend(["--archive".into(), a.clone(), "--shard".into(), args.shard.clone()]);
        }
        let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let progress = args.progress || std::io::IsTerminal::is_terminal(&std::io::stderr());
        let started = Instant::now();
        let rows = crate::sweep::run_grid(&exe, &child, args.config.as_deref(), &settings, jobs, progress)?;
        let wall = started.elapsed();
        if args.json {
            outln!("{}", crate::sweep::rows_json(&rows));
        } else {
            out!("{}", crate::sweep::table(&rows));
        }
        errln!("{}", crate::sweep::throughput(&rows, wall, jobs));
        let failed = rows.iter().filter(|r| r.result.is_err()).count();
        anyhow::ensure!(failed == 0, "{failed} of {} sweep runs failed", rows.len());
        return Ok(());
    }
    overrides.extend(settings.into_iter().map(|s| (s.key, s.values.into_iter().next().unwrap_or_default())));
    let doc = crate::sweep::document(args.config.as_deref(), &overrides)?;
    let mut file = crate::sweep::file_config(&doc)?;
    crate::config::apply_env(&mut file, &|k| std::env::var(k).ok())?;
    let mut engine = file.resolve()?.engine;
    // A constant extra feed delay moves what the venue holds when our order lands by the same
    // amount: the paper venue's order latency grows by it (docs/fill-models.md).
    engine.matching.latency_ns = engine.matching.latency_ns.saturating_add(args.feed_latency_us.saturating_mul(1_000));
    let opts =
        ReplayOptions { pace, progress: args.progress || std::io::IsTerminal::is_terminal(&std::io::stderr()), out: args.out.clone() };
    // Archived segments in front of the local ones, in a folder removed when the replay ends.
    let staged = match (&input, &args.archive) {
        (Input::Journal(dir), Some(archive)) => {
            let s = crate::journal_cmd::stage_with_archive(dir, archive, &args.shard)?;
            errln!("replay: {} archived segments fetched, replaying {}", s.fetched, s.dir.display());
            Some(s)
        }
        _ => None,
    };
    let input = match &staged {
        Some(s) => Input::Journal(s.dir.clone()),
        None => input,
    };
    if let Input::Journal(dir) = &input {
        if let Some(first) = sapphire_persistence::journal::first_seq(dir).ok().flatten().filter(|&f| f > 0) {
            return Err(refuse(
                "PATH",
                format!(
                    "the input journal in {} starts at event {first}: its older segments were archived by retention; give --archive (the [retention] archive) to replay it whole",
                    dir.display()
                ),
            ));
        }
    }
    let summary = replay(&input, &engine, &opts)?;
    drop(staged);
    if args.json {
        outln!("{}", summary.to_json());
    } else {
        out!("{}", summary.to_text());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_are_counted_not_fatal() {
        let dir = std::env::temp_dir().join(format!("sapphire-replay-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = r#"1000 {"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"100.0","q":"0.1","T":1,"m":true}}"#;
        let mut bytes = format!("{good}\ngarbage\n\n2000 not json\n").into_bytes();
        bytes.extend_from_slice(b"3000 {\"stream\":\"\xff\xfe\"}\r\n");
        bytes.extend_from_slice(good.replace("1000 ", "4000 ").as_bytes());
        let path = dir.join("bad.txt");
        std::fs::write(&path, bytes).unwrap();
        let input = Input::Recordings { paths: vec![path], market: BinanceMarket::Spot };
        let s = replay(&input, &EngineConfig::default(), &ReplayOptions::default()).unwrap();
        assert_eq!(s.lines, 4, "the lines with a receive time");
        assert_eq!(s.skipped, 3, "garbage, not json, not UTF-8");
        assert_eq!(s.events, 2);
        let missing = replay(
            &Input::Recordings { paths: vec![dir.join("nope.gz")], market: BinanceMarket::Spot },
            &EngineConfig::default(),
            &ReplayOptions::default(),
        );
        assert!(format!("{:#}", missing.unwrap_err()).contains("nope.gz"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn decimals_used() {
        assert_eq!(used_decimals(b"61659.80000000"), 1);
        assert_eq!(used_decimals(b"0.00100000"), 3);
        assert_eq!(used_decimals(b"42"), 0);
    }

    #[test]
    fn the_same_recording_gives_the_same_summary_and_files_merge_by_time() {
        let dir = std::env::temp_dir().join(format!("sapphire-replay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Two files, interleaved in time: a snapshot, then depth updates and tickers.
        let mut a = String::new();
        let mut b = String::new();
        a.push_str(r#"1000 {"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":1,"u":10,"b":[["100.00","5"]],"a":[["100.10","5"]]}}"#);
        a.push('\n');
        a.push_str(r#"1001 {"lastUpdateId":5,"bids":[["99.90","5"],["99.80","5"]],"asks":[["100.20","5"],["100.30","5"]]}"#);
        a.push('\n');
        let mut mid = 10_000i64;
        for i in 0..3_000u64 {
            mid += if (i * 7919) % 13 < 6 { -1 } else { 1 };
            let (bid, ask) = (mid, mid + 1);
            let line = format!(
                r#"{} {{"stream":"btcusdt@depth@100ms","data":{{"e":"depthUpdate","E":{},"s":"BTCUSDT","U":{},"u":{},"b":[["{}.{:02}","{}"]],"a":[["{}.{:02}","{}"]]}}}}"#,
                2_000 + i * 50_000_000,
                1 + i * 50,
                11 + i,
                11 + i,
                bid / 100,
                bid % 100,
                1 + i % 5,
                ask / 100,
                ask % 100,
                1 + (i + 2) % 5
            );
            if i % 2 == 0 { &mut a } else { &mut b }.push_str(&line);
            if i % 2 == 0 { &mut a } else { &mut b }.push('\n');
        }
        let (pa, pb) = (dir.join("a.txt"), dir.join("b.txt"));
        std::fs::write(&pa, a).unwrap();
        std::fs::write(&pb, b).unwrap();
        let config = EngineConfig::default();
        let both = Input::Recordings { paths: vec![pa.clone(), pb.clone()], market: BinanceMarket::Spot };
        let opts = ReplayOptions::default();
        let one = replay(&both, &config, &opts).unwrap();
        let two = replay(&both, &config, &opts).unwrap();
        assert_eq!(one.gaps, 0, "merged by time, the two halves form one gap-free sequence");
        assert_eq!(one.skipped, 0);
        assert!(one.events > 6_000, "{}", one.events);
        let strip = |s: &ReplaySummary| ReplaySummary { elapsed_s: 0.0, ..s.clone() };
        assert_eq!(strip(&one), strip(&two), "replays are deterministic");
        // One file alone has gaps (every other update is in the other file).
        let half = replay(&Input::Recordings { paths: vec![pa], market: BinanceMarket::Spot }, &config, &opts).unwrap();
        assert!(half.gaps > 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
