//! A seeded synthetic market that looks like a real one: a random-walk mid with volatility
//! clustering (GARCH(1,1)), a spread and depth that widen and thin when volatility rises,
//! trades that consume liquidity and move the price, and bursts of activity.
//!
//! Volatility is relative to price and measured in event time: each instrument has an
//! annualised volatility, and a step moves a fair price by that volatility over the event
//! time since the instrument's last step, whatever the event rate. The book's levels are
//! spaced a fraction of a basis point apart ([`LEVEL_SPACING_BPS`], at least one tick), so
//! BTC at 60,000 moves as many levels per second as SOL at 150.
//!
//! It emits the core's events — an L2 snapshot per instrument, then per step the changed
//! levels as sequenced [`BookDelta`]s (so the core's continuity checks run), the trades, a
//! [`Quote`] of the new top of book, and [`Timer`]s on event-time boundaries. Prices and
//! sizes are integers of ticks and lots; floating point only drives the randomness.
//! The same seed and the same step times give the same events.

use sapphire_core::event::{BookDelta, Event, Quote, Side, Timer, Trade, DELTA_CLEAR, DELTA_LAST, DELTA_SNAPSHOT};
use sapphire_core::fixed::{Money, Price, Quantity};
use sapphire_core::instrument::{InstrumentId, InstrumentRegistry, InstrumentSpec, MarketType, RegistryError};
use std::collections::BTreeMap;

/// One synthetic instrument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntheticInstrument {
    /// Symbol.
    pub symbol: String,
    /// Starting mid.
    pub start_price: Price,
    /// Tick size.
    pub tick: Price,
    /// Lot size.
    pub lot: Quantity,
    /// Annualised volatility, percent (60 = 60 %: about 1.07 bps per √second).
    pub annual_vol_pct: u32,
}

/// The book's levels are this far apart, bps of the starting price (rounded to whole ticks,
/// at least one).
pub const LEVEL_SPACING_BPS: f64 = 0.25;

/// Seconds in a year, for annualised volatility.
const SECONDS_PER_YEAR: f64 = 365.0 * 86_400.0;

/// Bursts of volatility: one starts every this many seconds of event time on average...
const BURST_EVERY_S: f64 = 3.0;
/// ...lasts between these many seconds of event time...
const BURST_SECONDS: (f64, f64) = (1.0, 3.0);
/// ...and multiplies the variance by this much.
const BURST_VARIANCE: f64 = 6.0;

/// Generator settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntheticConfig {
    /// Random seed.
    pub seed: u64,
    /// Instruments to simulate.
    pub instruments: Vec<SyntheticInstrument>,
    /// Levels per side.
    pub depth: usize,
    /// A timer event every this many ns of event time (0: none).
    pub timer_every_ns: u64,
}

/// The default instruments: BTC, ETH and SOL against USDT, with Binance-like filters.
pub fn default_instruments() -> Vec<SyntheticInstrument> {
    let spec = |symbol: &str, price: &str, tick: &str, lot: &str, annual_vol_pct: u32| SyntheticInstrument {
        symbol: symbol.to_string(),
        start_price: Price::parse(price).expect("static price"),
        tick: Price::parse(tick).expect("static tick"),
        lot: Quantity::parse(lot).expect("static lot"),
        annual_vol_pct,
    };
    vec![
        spec("BTCUSDT", "61837.63", "0.01", "0.00001", 80),
        spec("ETHUSDT", "2650.40", "0.01", "0.0001", 100),
        spec("SOLUSDT", "152.31", "0.01", "0.001", 120),
    ]
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self { seed: 7, instruments: default_instruments(), depth: 20, timer_every_ns: 100_000_000 }
    }
}

/// SplitMix64: small, fast, good enough for a market simulation.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(1e-12);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Event time from `from` to `to`, seconds, within 1 µs..=1 s: a first step or a pause in
/// the feed moves the price by at most a second's volatility.
fn step_seconds(from: u64, to: u64) -> f64 {
    if from == 0 {
        return 0.001;
    }
    (to.saturating_sub(from) as f64 / 1e9).clamp(1e-6, 1.0)
}

#[derive(Clone, Debug)]
struct InstrumentSim {
    id: InstrumentId,
    /// Distance between levels, raw price (whole ticks). Book prices below are in levels.
    tick: i64,
    lot: i64,
    best_bid: i64,
    best_ask: i64,
    /// The fair mid the book follows, in levels.
    fair: f64,
    /// Volatility per √second of event time, as a fraction of price.
    vol_per_sqrt_s: f64,
    /// GARCH variance multiplier of per-step shocks (mean 1).
    variance: f64,
    last_move: f64,
    /// Event time of this instrument's last step, ns (0: none yet).
    last_ts: u64,
    /// Event time a running burst ends, ns.
    burst_until: u64,
    /// price in levels → quantity in lots.
    bids: BTreeMap<i64, i64>,
    asks: BTreeMap<i64, i64>,
    update_id: u64,
    trade_id: u64,
    /// Typical level size, lots.
    base_lots: i64,
    /// Order-flow pressure in [-0.6, 0.6]: skews displayed size toward the side that is
    /// about to win and drifts the price that way, so book imbalance carries information.
    pressure: f64,
}

/// The generator.
#[derive(Clone, Debug)]
pub struct SyntheticMarket {
    config: SyntheticConfig,
    rng: Rng,
    sims: Vec<InstrumentSim>,
    snapshots_sent: bool,
    next_timer: u64,
    timer_id: u32,
    steps: u64,
}

impl SyntheticMarket {
    /// Registers the instruments in `registry` (venue `synthetic`) and builds the generator.
    pub fn new(config: SyntheticConfig, registry: &mut InstrumentRegistry) -> Result<Self, RegistryError> {
        let ids = Self::register(&config, registry)?;
        let mut rng = Rng(config.seed);
        let mut sims = Vec::new();
        for (inst, id) in config.instruments.iter().zip(ids) {
            let ticks_per_level =
                ((inst.start_price.raw as f64 * LEVEL_SPACING_BPS / 10_000.0 / inst.tick.raw.max(1) as f64).round() as i64).max(1);
            let tick = inst.tick.raw.max(1) * ticks_per_level;
            let mid_levels = inst.start_price.raw / tick;
            // About $2,000 of size per level.
            let base_lots = (2_000 * Price::SCALE / inst.start_price.raw.max(1) * Quantity::SCALE / inst.lot.raw.max(1)).max(1);
            let mut sim = InstrumentSim {
                id,
                tick,
                lot: inst.lot.raw,
                best_bid: mid_levels,
                best_ask: mid_levels + 1,
                fair: mid_levels as f64 + 0.5,
                vol_per_sqrt_s: f64::from(inst.annual_vol_pct) / 100.0 / SECONDS_PER_YEAR.sqrt(),
                variance: 1.0,
                last_move: 0.0,
                last_ts: 0,
                burst_until: 0,
                bids: BTreeMap::new(),
                asks: BTreeMap::new(),
                update_id: 1_000 + rng.below(1_000),
                trade_id: 0,
                base_lots,
                pressure: 0.0,
            };
            Self::rebuild_levels(&mut rng, &mut sim, config.depth);
            sims.push(sim);
        }
        Ok(Self { config, rng, sims, snapshots_sent: false, next_timer: 0, timer_id: 0, steps: 0 })
    }

    /// Registers the instruments of `config` (venue `synthetic`) without building a market:
    /// their ids depend on the configuration alone.
    pub fn register(config: &SyntheticConfig, registry: &mut InstrumentRegistry) -> Result<Vec<InstrumentId>, RegistryError> {
        config
            .instruments
            .iter()
            .map(|inst| {
                registry.intern(InstrumentSpec {
                    venue: "synthetic",
                    symbol: &inst.symbol,
                    market: MarketType::Spot,
                    tick_size: inst.tick,
                    lot_size: inst.lot,
                    min_notional: Money::from_units(5),
                })
            })
            .collect()
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    fn level_qty(rng: &mut Rng, base: i64, distance: i64, thin: f64, skew: f64) -> i64 {
        let scale = (1.0 + 0.15 * distance as f64) / thin * skew;
        let q = base as f64 * scale * (0.2 + 1.6 * rng.unit());
        (q as i64).max(1)
    }

    /// Fills both sides out to `depth` levels from the best prices, keeping existing sizes.
    fn rebuild_levels(rng: &mut Rng, sim: &mut InstrumentSim, depth: usize) {
        let thin = 1.0 + sim.variance.sqrt() / 4.0;
        sim.bids.retain(|&p, _| p <= sim.best_bid && p > sim.best_bid - depth as i64);
        sim.asks.retain(|&p, _| p >= sim.best_ask && p < sim.best_ask + depth as i64);
        for d in 0..depth as i64 {
            let b = sim.best_bid - d;
            if b > 0 && !sim.bids.contains_key(&b) {
                sim.bids.insert(b, Self::level_qty(rng, sim.base_lots, d, thin, 1.0 + sim.pressure));
            }
            let a = sim.best_ask + d;
            sim.asks.entry(a).or_insert_with(|| Self::level_qty(rng, sim.base_lots, d, thin, 1.0 - sim.pressure));
        }
    }

    fn delta(sim: &InstrumentSim, ts: u64, side: Side, price_ticks: i64, lots: i64, flags: u8, prev: u64) -> Event {
        Event::BookDelta(BookDelta {
            ts_event: ts,
            ts_recv: ts,
            instrument: sim.id,
            side,
            flags,
            _pad: 0,
            price: Price::from_raw(price_ticks * sim.tick),
            qty: Quantity::from_raw(lots * sim.lot),
            first_update_id: prev + 1,
            last_update_id: sim.update_id,
            prev_update_id: prev,
        })
    }

    fn quote(sim: &InstrumentSim, ts: u64) -> Event {
        let (bp, bq) = sim.bids.iter().next_back().map_or((0, 0), |(&p, &q)| (p, q));
        let (ap, aq) = sim.asks.iter().next().map_or((0, 0), |(&p, &q)| (p, q));
        Event::Quote(Quote {
            ts_event: ts,
            ts_recv: ts,
            instrument: sim.id,
            _pad: 0,
            bid_price: Price::from_raw(bp * sim.tick),
            ask_price: Price::from_raw(ap * sim.tick),
            bid_qty: Quantity::from_raw(bq * sim.lot),
            ask_qty: Quantity::from_raw(aq * sim.lot),
        })
    }

    /// Emits the snapshots (first call), due timers, and one market step of a random
    /// instrument, all stamped `ts` (ns). Returns the number of events emitted.
    pub fn step(&mut self, ts: u64, emit: &mut impl FnMut(Event)) -> usize {
        let mut n = 0;
        let mut out = |e: Event| {
            n += 1;
            emit(e);
        };
        if !self.snapshots_sent {
            self.snapshots_sent = true;
            self.next_timer = ts;
            for sim in &mut self.sims {
                sim.update_id += 1;
                let levels: Vec<(Side, i64, i64)> = sim
                    .bids
                    .iter()
                    .rev()
                    .map(|(&p, &q)| (Side::Buy, p, q))
                    .chain(sim.asks.iter().map(|(&p, &q)| (Side::Sell, p, q)))
                    .collect();
                let last = levels.len().saturating_sub(1);
                for (i, (side, p, q)) in levels.into_iter().enumerate() {
                    let mut flags = DELTA_SNAPSHOT;
                    if i == 0 {
                        flags |= DELTA_CLEAR;
                    }
                    if i == last {
                        flags |= DELTA_LAST;
                    }
                    out(Self::delta(sim, ts, side, p, q, flags, 0));
                }
                out(Self::quote(sim, ts));
            }
        }
        if self.config.timer_every_ns > 0 && ts >= self.next_timer {
            out(Event::Timer(Timer { ts_event: ts, ts_recv: ts, timer_id: self.timer_id, _pad: 0 }));
            self.timer_id = self.timer_id.wrapping_add(1);
            self.next_timer = ts - ts % self.config.timer_every_ns + self.config.timer_every_ns;
        }
        if self.sims.is_empty() {
            return n;
        }
        self.steps += 1;
        let depth = self.config.depth;
        let i = self.rng.below(self.sims.len() as u64) as usize;
        let rng = &mut self.rng;
        let sim = &mut self.sims[i];
        // The fair price moves by the instrument's volatility over the event time since its
        // last step; GARCH(1,1) clusters the shocks, bursts raise the variance for seconds.
        let dt = step_seconds(sim.last_ts, ts);
        sim.last_ts = ts;
        if ts >= sim.burst_until && rng.unit() < dt / BURST_EVERY_S {
            let (lo, hi) = BURST_SECONDS;
            sim.burst_until = ts + ((lo + (hi - lo) * rng.unit()) * 1e9) as u64;
        }
        let burst = if ts < sim.burst_until { BURST_VARIANCE } else { 1.0 };
        sim.variance = (0.05 + 0.10 * sim.last_move * sim.last_move + 0.85 * sim.variance).clamp(0.05, 400.0);
        sim.pressure = (0.998 * sim.pressure + 0.03 * rng.normal()).clamp(-0.6, 0.6);
        let shock = rng.normal() * sim.variance.sqrt();
        sim.last_move = shock;
        let sigma = sim.vol_per_sqrt_s * dt.sqrt() * burst.sqrt();
        // Pressure drifts the price its way, a sixth of a shock at full pressure.
        sim.fair *= (sigma * (shock + sim.pressure / 6.0)).exp();
        let move_ticks = (sim.fair - (sim.best_bid + sim.best_ask) as f64 / 2.0).round() as i64;
        let prev_book = (sim.bids.clone(), sim.asks.clone());
        // A move up: buyers lift the asks in the way (trades), the book shifts up.
        let mut trades: Vec<(Side, i64, i64)> = Vec::new();
        if move_ticks > 0 {
            let new_bid = sim.best_bid + move_ticks;
            let lifted: Vec<(i64, i64)> = sim.asks.range(..=new_bid).map(|(&p, &q)| (p, q)).collect();
            for (p, q) in lifted {
                trades.push((Side::Buy, p, q));
                sim.asks.remove(&p);
            }
            sim.best_bid = new_bid;
        } else if move_ticks < 0 {
            let new_ask = sim.best_ask + move_ticks;
            let hit: Vec<(i64, i64)> = sim.bids.range(new_ask..).map(|(&p, &q)| (p, q)).collect();
            for (p, q) in hit.into_iter().rev() {
                trades.push((Side::Sell, p, q));
                sim.bids.remove(&p);
            }
            sim.best_ask = new_ask;
        }
        // The spread widens with volatility.
        let spread = 1 + (sim.variance.sqrt() * burst.sqrt() / 3.0) as i64;
        if sim.best_ask - sim.best_bid < spread {
            if move_ticks >= 0 {
                sim.best_ask = sim.best_bid + spread;
            } else {
                sim.best_bid = sim.best_ask - spread;
            }
        }
        if sim.best_ask <= sim.best_bid {
            sim.best_ask = sim.best_bid + 1;
        }
        // Small trades at the touch that do not move the price.
        let small_trades = if burst > 1.0 { 3 } else { 1 };
        for _ in 0..small_trades {
            if rng.unit() < 0.4 {
                let side = if rng.unit() < 0.5 { Side::Buy } else { Side::Sell };
                let (book, best) = match side {
                    Side::Buy => (&mut sim.asks, sim.best_ask),
                    Side::Sell => (&mut sim.bids, sim.best_bid),
                };
                if let Some(q) = book.get_mut(&best) {
                    let take = (*q as f64 * rng.unit() * 0.5) as i64;
                    if take > 0 && take < *q {
                        *q -= take;
                        trades.push((side, best, take));
                    }
                }
            }
        }
        // Liquidity churn: a few levels change size.
        for _ in 0..(1 + rng.below(3)) {
            let side_bid = rng.unit() < 0.5;
            let d = rng.below(depth as u64) as i64;
            let thin = 1.0 + sim.variance.sqrt() / 4.0;
            let skew = if side_bid { 1.0 + sim.pressure } else { 1.0 - sim.pressure };
            let q = Self::level_qty(rng, sim.base_lots, d, thin, skew);
            if side_bid {
                sim.bids.insert(sim.best_bid - d, q);
            } else {
                sim.asks.insert(sim.best_ask + d, q);
            }
        }
        sim.bids.retain(|&p, _| p <= sim.best_bid);
        sim.asks.retain(|&p, _| p >= sim.best_ask);
        Self::rebuild_levels(rng, sim, depth);
        // Trades first (they happened), then the book change, then the new top.
        for (side, p, q) in trades {
            sim.trade_id += 1;
            out(Event::Trade(Trade {
                ts_event: ts,
                ts_recv: ts,
                instrument: sim.id,
                aggressor: side,
                _pad: [0; 3],
                price: Price::from_raw(p * sim.tick),
                qty: Quantity::from_raw(q * sim.lot),
                trade_id: sim.trade_id,
            }));
        }
        let mut changes: Vec<(Side, i64, i64)> = Vec::new();
        for (side, before, after) in [(Side::Buy, &prev_book.0, &sim.bids), (Side::Sell, &prev_book.1, &sim.asks)] {
            for &p in before.keys() {
                if !after.contains_key(&p) {
                    changes.push((side, p, 0));
                }
            }
            for (&p, &q) in after {
                if before.get(&p) != Some(&q) {
                    changes.push((side, p, q));
                }
            }
        }
        if !changes.is_empty() {
            let prev = sim.update_id;
            sim.update_id += 1 + rng.below(3);
            let last = changes.len() - 1;
            for (k, (side, p, q)) in changes.into_iter().enumerate() {
                out(Self::delta(sim, ts, side, p, q, if k == last { DELTA_LAST } else { 0 }, prev));
            }
        }
        out(Self::quote(sim, ts));
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sapphire_core::book::OrderBook;

    fn run(seed: u64, steps: u64) -> (Vec<Event>, InstrumentRegistry) {
        let mut reg = InstrumentRegistry::new();
        let mut m = SyntheticMarket::new(SyntheticConfig { seed, ..Default::default() }, &mut reg).unwrap();
        let mut events = Vec::new();
        for s in 0..steps {
            m.step(1_000_000_000 + s * 1_000_000, &mut |e| events.push(e));
        }
        (events, reg)
    }

    /// Per instrument, the standard deviation of one-second mid returns, bps, over `secs`
    /// seconds of event time stepped every `step_ns`.
    fn one_second_vol_bps(step_ns: u64, secs: u64) -> Vec<f64> {
        let mut reg = InstrumentRegistry::new();
        let mut m = SyntheticMarket::new(SyntheticConfig { seed: 11, ..Default::default() }, &mut reg).unwrap();
        let mut mids = vec![0.0; reg.len()];
        let mut per_second: Vec<Vec<f64>> = vec![Vec::new(); reg.len()];
        let start = 1_000_000_000;
        for s in 0..secs * 1_000_000_000 / step_ns {
            let ts = start + s * step_ns;
            m.step(ts, &mut |e| {
                if let Event::Quote(q) = e {
                    mids[q.instrument.index()] = (q.bid_price.raw + q.ask_price.raw) as f64 / 2.0;
                }
            });
            if (ts - start) % 1_000_000_000 == 0 {
                for (i, mid) in mids.iter().enumerate() {
                    per_second[i].push(*mid);
                }
            }
        }
        per_second
            .iter()
            .map(|mids| {
                let r: Vec<f64> = mids.windows(2).map(|w| (w[1] / w[0]).ln() * 10_000.0).collect();
                let mean = r.iter().sum::<f64>() / r.len() as f64;
                (r.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (r.len() - 1) as f64).sqrt()
            })
            .collect()
    }

    #[test]
    fn volatility_is_relative_to_price_and_independent_of_the_step_rate() {
        // Nominal per √s: 80 % → 1.42 bps (BTC), 100 % → 1.78 (ETH), 120 % → 2.14 (SOL);
        // bursts (a fifth to a third of the time, 6× the variance) raise what is realized.
        let nominal = [1.42, 1.78, 2.14];
        for step_ns in [2_000_000, 500_000] {
            let vol = one_second_vol_bps(step_ns, 60);
            for (v, n) in vol.iter().zip(nominal) {
                assert!((0.8 * n..=3.0 * n).contains(v), "step {step_ns} ns: {vol:?} against nominal {nominal:?}");
            }
            // BTC at 61,837 moves as much in relative terms as SOL at 152 (before, a few
            // ticks a step made BTC's moves hundreds of times smaller).
            assert!((0.3..=1.5).contains(&(vol[0] / vol[2])), "{vol:?}");
        }
    }

    #[test]
    fn same_seed_same_events() {
        assert_eq!(run(42, 500).0, run(42, 500).0);
        assert_ne!(run(42, 500).0, run(43, 500).0);
    }

    #[test]
    fn books_stay_in_sequence_and_uncrossed_and_match_quotes() {
        let (events, reg) = run(9, 20_000);
        let mut books: Vec<OrderBook> = (0..reg.len()).map(|_| OrderBook::default()).collect();
        let (mut trades, mut quotes, mut timers) = (0, 0, 0);
        let mut last_price = vec![Price::ZERO; reg.len()];
        let mut moved = false;
        for e in &events {
            match e {
                Event::BookDelta(d) => {
                    let outcome = books[d.instrument.index()].apply_delta(d);
                    assert_eq!(outcome, sapphire_core::book::DeltaOutcome::Applied);
                }
                Event::Quote(q) => {
                    quotes += 1;
                    let b = &books[q.instrument.index()];
                    assert!(q.bid_price < q.ask_price);
                    assert_eq!(b.best_bid().unwrap().price, q.bid_price);
                    assert_eq!(b.best_ask().unwrap().price, q.ask_price);
                    let mid = b.mid().unwrap();
                    let lp = &mut last_price[q.instrument.index()];
                    if *lp != Price::ZERO && *lp != mid {
                        moved = true;
                    }
                    *lp = mid;
                }
                Event::Trade(t) => {
                    trades += 1;
                    assert!(t.qty.raw > 0);
                }
                Event::Timer(_) => timers += 1,
                _ => {}
            }
        }
        assert!(books.iter().all(|b| b.in_sync() && b.depth(Side::Buy) >= 10));
        assert!(trades > 1_000, "trades {trades}");
        assert!(quotes >= 20_000);
        assert!(timers >= 190, "20 s of event time at 100 ms: {timers}");
        assert!(moved);
    }
}
