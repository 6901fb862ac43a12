//! `sapphire replay`: recorded exchange frames through the same engine as live, as fast as
//! possible, deterministically; a summary at the end.
//!
//! Input files hold `<recv_ns> <json>` lines, gzip or plain; several files are merged by
//! receive time. Instruments are learned from the frames (tick and lot inferred from the
//! decimals actually used). Timers are generated every 100 ms of receive time, so the
//! engine's guards and PnL snapshots run as they would live.

use anyhow::Context;
use sapphire_core::engine::{Engine, EngineConfig, EngineOutput, Output, OutputSink};
use sapphire_core::event::{Event, Timer};
use sapphire_core::fixed::{Money, Price, Quantity};
use sapphire_core::instrument::{InstrumentRegistry, InstrumentSpec, MarketType};
use sapphire_core::order::{Order, OrderAction};
use sapphire_core::risk::RiskOutput;
use sapphire_gateway::binance::market::{parse_frame, BinanceFrame};
use sapphire_gateway::binance::{BinanceFeed, BinanceMarket};
use std::collections::{BTreeMap, BinaryHeap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Timer period in receive time.
const TIMER_NS: u64 = 100_000_000;

fn open(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let gz = reader.fill_buf().map(|b| b.starts_with(&[0x1f, 0x8b])).unwrap_or(false);
    Ok(if gz { Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(reader))) } else { Box::new(reader) as Box<dyn BufRead> })
}

/// One recording, read line by line.
struct Source {
    lines: std::io::Lines<Box<dyn BufRead>>,
    path: PathBuf,
    line_no: u64,
}

/// Lines ordered by receive time across files (ties: file order, then line order).
#[derive(PartialEq, Eq)]
struct Pending {
    recv: u64,
    file: usize,
    line_no: u64,
    frame: String,
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

fn next_line(src: &mut Source, file: usize, skipped: &mut u64) -> anyhow::Result<Option<Pending>> {
    for line in src.lines.by_ref() {
        let line = line.with_context(|| format!("reading {}", src.path.display()))?;
        src.line_no += 1;
        match line.split_once(' ').and_then(|(t, f)| t.parse::<u64>().ok().map(|t| (t, f))) {
            Some((recv, frame)) => return Ok(Some(Pending { recv, file, line_no: src.line_no, frame: frame.to_string() })),
            None if line.trim().is_empty() => {}
            None => *skipped += 1,
        }
    }
    Ok(None)
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
        for line in open(path)?.lines().take(20_000) {
            let line = line?;
            let Some((_, frame)) = line.split_once(' ') else { continue };
            let mut note = |symbol: &str, prices: &[&[u8]], qtys: &[&[u8]]| {
                let e = seen.entry(symbol.to_string()).or_insert((0, 0));
                for p in prices {
                    e.0 = e.0.max(used_decimals(p));
                }
                for q in qtys {
                    e.1 = e.1.max(used_decimals(q));
                }
            };
            match parse_frame(frame.as_bytes()) {
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

/// Totals the outputs of a replay.
#[derive(Default)]
struct Tally {
    orders: u64,
    cancels: u64,
    fills: u64,
    refusals: u64,
    notional_traded: i128,
}

impl OutputSink for Tally {
    fn emit(&mut self, out: Output) {
        match out.output {
            EngineOutput::Order(Order { action: OrderAction::New, .. }) => self.orders += 1,
            EngineOutput::Order(_) => self.cancels += 1,
            EngineOutput::Exec(r) if r.last_qty.raw > 0 => {
                self.fills += 1;
                self.notional_traded += i128::from(sapphire_core::fixed::notional(r.price, r.last_qty).map_or(0, |m| m.raw));
            }
            EngineOutput::Risk(RiskOutput::Refusal(_)) => self.refusals += 1,
            _ => {}
        }
    }
}

/// What a replay produced.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplaySummary {
    pub files: usize,
    pub lines: u64,
    pub events: u64,
    pub skipped: u64,
    pub gaps: u64,
    pub elapsed_s: f64,
    pub orders: u64,
    pub cancels: u64,
    pub fills: u64,
    pub refusals: u64,
    pub equity: Money,
    pub capital: Money,
    pub realized: Money,
    pub unrealized: Money,
    pub fees: Money,
    pub turnover: Money,
    pub max_drawdown_bps: i64,
    pub per_agent: Vec<(u16, Money, Money)>,
}

impl ReplaySummary {
    /// The summary as one JSON object (money as decimal strings).
    pub fn to_json(&self) -> String {
        let agents = self
            .per_agent
            .iter()
            .map(|(a, pnl, fees)| format!("{{\"agent\":{a},\"pnl\":\"{pnl:.2}\",\"fees\":\"{fees:.2}\"}}"))
            .collect::<Vec<_>>()
            .join(",");
        format!(
            "{{\"files\":{},\"lines\":{},\"events\":{},\"skipped\":{},\"gaps\":{},\"elapsed_s\":{:.3},\"events_per_sec\":{:.0},\"orders\":{},\"cancels\":{},\"fills\":{},\"refusals\":{},\"equity\":\"{:.2}\",\"capital\":\"{:.2}\",\"pnl\":\"{:.2}\",\"realized\":\"{:.2}\",\"unrealized\":\"{:.2}\",\"fees\":\"{:.2}\",\"turnover\":\"{:.2}\",\"max_drawdown_pct\":{:.2},\"agents\":[{}]}}",
            self.files,
            self.lines,
            self.events,
            self.skipped,
            self.gaps,
            self.elapsed_s,
            self.events as f64 / self.elapsed_s.max(1e-9),
            self.orders,
            self.cancels,
            self.fills,
            self.refusals,
            self.equity,
            self.capital,
            self.equity - self.capital,
            self.realized,
            self.unrealized,
            self.fees,
            self.turnover,
            self.max_drawdown_bps as f64 / 100.0,
            agents
        )
    }
}

/// Replays `paths` (Binance `market` recordings) through an engine built from `config`.
pub fn replay(paths: &[PathBuf], market: BinanceMarket, config: &EngineConfig, progress: bool) -> anyhow::Result<ReplaySummary> {
    let (venue, kind) = match market {
        BinanceMarket::Spot => ("binance", MarketType::Spot),
        BinanceMarket::UsdM => ("binance-usdm", MarketType::LinearPerpetual),
    };
    let (registry, depth_symbol) = learn_instruments(paths, venue, kind)?;
    let snapshot_target: Vec<_> = depth_symbol.iter().map(|s| s.as_deref().and_then(|s| registry.lookup(venue, s))).collect();
    let instruments: Vec<_> = registry.iter().cloned().collect();
    let total_bytes: u64 = paths.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    let mut feed = BinanceFeed::new(market, &registry, venue);
    let mut engine = Engine::new(config, &instruments);
    let mut tally = Tally::default();
    let mut outbound: Vec<Order> = Vec::new();
    let mut sources = Vec::new();
    for p in paths {
        sources.push(Source { lines: open(p)?.lines(), path: p.clone(), line_no: 0 });
    }
    let (mut skipped, mut lines, mut seq) = (0u64, 0u64, 0i64);
    let mut heap = BinaryHeap::new();
    for (i, s) in sources.iter_mut().enumerate() {
        if let Some(p) = next_line(s, i, &mut skipped)? {
            heap.push(p);
        }
    }
    let started = Instant::now();
    let mut next_timer = 0u64;
    let mut timer_id = 0u32;
    let mut peak = engine.stages.risk.risk.portfolio().total().equity;
    let mut max_dd = 0i64;
    let mut last_progress = Instant::now();
    let mut events = 0u64;
    while let Some(p) = heap.pop() {
        lines += 1;
        if p.recv >= next_timer {
            if next_timer > 0 {
                let t = Event::Timer(Timer { ts_event: p.recv, ts_recv: p.recv, timer_id, _pad: 0 });
                timer_id = timer_id.wrapping_add(1);
                engine.process(seq, &t, &mut outbound, &mut tally);
                seq += 1;
                events += 1;
                let eq = engine.stages.risk.risk.portfolio().total().equity;
                peak = peak.max(eq);
                if peak.raw > 0 {
                    max_dd = max_dd.max(sapphire_core::fixed::ratio_bps(peak - eq, peak));
                }
            }
            next_timer = p.recv - p.recv % TIMER_NS + TIMER_NS;
        }
        let mut to_engine = |e: Event| {
            engine.process(seq, &e, &mut outbound, &mut tally);
            seq += 1;
            events += 1;
        };
        if p.frame.starts_with("{\"lastUpdateId\"") {
            feed.on_snapshot(snapshot_target[p.file], p.recv, p.frame.as_bytes(), &mut to_engine);
        } else {
            feed.on_frame(p.recv, p.frame.as_bytes(), &mut to_engine);
        }
        if let Some(n) = next_line(&mut sources[p.file], p.file, &mut skipped)? {
            heap.push(n);
        }
        if progress && last_progress.elapsed().as_millis() >= 500 {
            last_progress = Instant::now();
            eprint!(
                "\rreplay: {lines} lines, {events} events, {:.0} events/s   ",
                events as f64 / started.elapsed().as_secs_f64().max(1e-9)
            );
        }
    }
    if progress {
        eprintln!("\rreplay: {lines} lines, {events} events ({} bytes of input)              ", total_bytes);
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let risk = &engine.stages.risk.risk;
    let pf = risk.portfolio();
    let total = pf.total();
    let per_agent = (0..pf.agents())
        .map(|a| (a as u16, pf.agent_summary(sapphire_core::event::AgentId(a as u16))))
        .filter(|(_, s)| s.fees.raw != 0 || s.realized.raw != 0 || s.unrealized.raw != 0)
        .map(|(a, s)| (a, s.equity - s.capital, s.fees))
        .collect();
    Ok(ReplaySummary {
        files: paths.len(),
        lines,
        events,
        skipped: skipped + feed.counters.skipped(),
        gaps: feed.counters.gaps,
        elapsed_s,
        orders: tally.orders,
        cancels: tally.cancels,
        fills: tally.fills,
        refusals: tally.refusals,
        equity: total.equity,
        capital: total.capital,
        realized: total.realized,
        unrealized: total.unrealized,
        fees: total.fees,
        turnover: Money::from_raw(i64::try_from(tally.notional_traded).unwrap_or(i64::MAX)),
        max_drawdown_bps: max_dd,
        per_agent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let one = replay(&[pa.clone(), pb.clone()], BinanceMarket::Spot, &config, false).unwrap();
        let two = replay(&[pa.clone(), pb.clone()], BinanceMarket::Spot, &config, false).unwrap();
        assert_eq!(one.gaps, 0, "merged by time, the two halves form one gap-free sequence");
        assert_eq!(one.skipped, 0);
        assert!(one.events > 6_000, "{}", one.events);
        let strip = |s: &ReplaySummary| ReplaySummary { elapsed_s: 0.0, ..s.clone() };
        assert_eq!(strip(&one), strip(&two), "replays are deterministic");
        // One file alone has gaps (every other update is in the other file).
        let half = replay(&[pa], BinanceMarket::Spot, &config, false).unwrap();
        assert!(half.gaps > 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
