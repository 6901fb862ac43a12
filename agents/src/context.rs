//! What agents read and write: the market context they sample, the sink their signals go
//! to, the clock that stamps them, and the bounded window of samples they derive returns and
//! volatility from.

use sapphire_core::event::{AgentId, Signal};
use sapphire_core::fixed::{Money, Price, Quantity};
use sapphire_core::instrument::InstrumentId;
use std::sync::Arc;

/// The top of one instrument's book as the core's book stage last published it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Top {
    /// Best bid price.
    pub bid: Price,
    /// Best ask price.
    pub ask: Price,
    /// Size at the best bid.
    pub bid_qty: Quantity,
    /// Size at the best ask.
    pub ask_qty: Quantity,
    /// Event time of the last book update, ns.
    pub ts_event: u64,
    /// False while the book is out of sync (sequence gap, waiting for a snapshot).
    pub in_sync: bool,
}

impl Top {
    /// The mid price (raw, rounded down); `None` for an empty or crossed book.
    pub fn mid(&self) -> Option<Price> {
        if self.bid.raw <= 0 || self.ask.raw <= 0 || self.ask.raw < self.bid.raw {
            return None;
        }
        Some(Price::from_raw(((i128::from(self.bid.raw) + i128::from(self.ask.raw)) / 2) as i64))
    }
}

/// One agent's standing in one instrument, from the edge's per-agent accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentState {
    /// Signed position (long positive).
    pub position: Quantity,
    /// Realized plus unrealized PnL of the agent's sub-account (all instruments).
    pub pnl: Money,
}

/// Market context for agents. The lead implements it over the core's top-of-book board and
/// the edge's per-agent PnL; tests implement it over a scripted market.
pub trait ContextSource: Send + Sync {
    /// The latest top of book, `None` when the instrument has no market yet.
    fn top(&self, instrument: InstrumentId) -> Option<Top>;
    /// The agent's position and PnL.
    fn agent_state(&self, agent: AgentId, instrument: InstrumentId) -> AgentState;
}

/// Where signals go: the lead implements it over the core's inbound ring producer.
pub trait SignalSink: Send {
    /// Publishes one signal; `false` means the ring was full (the runtime counts it).
    fn publish(&mut self, s: Signal) -> bool;
}

/// The clock agents stamp `ts_event` with, ns. Tests pass a scripted clock.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The process's one clock for event times, ns since the Unix epoch: the core's
/// [`unix_nanos`](sapphire_core::latency::unix_nanos), monotonic and anchored once to the wall
/// clock. Not the wall clock itself: a step of it (NTP, an operator) stamped signals an hour
/// ahead (kept alive an hour past their time to live) or behind (expired on arrival) while
/// the market's events and timers did not move.
pub fn wall_clock() -> Clock {
    Arc::new(sapphire_core::latency::unix_nanos)
}

/// One sample of an instrument's top of book.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Clock time of the sample, ns.
    pub ts: u64,
    /// Mid price, raw.
    pub mid: i64,
    /// Spread, raw price units.
    pub spread: i64,
    /// Top-of-book imbalance, bps: `(bid_qty − ask_qty) / (bid_qty + ask_qty)`.
    pub imbalance_bps: i32,
}

/// A bounded ring of samples with the statistics agents need.
///
/// Preallocated to its capacity: pushing in steady state never allocates.
#[derive(Clone, Debug)]
pub struct MarketWindow {
    /// Invariant: `samples.len() == capacity`; slots past `len` are unused.
    samples: Vec<Sample>,
    /// Index of the next write.
    head: usize,
    /// Samples held, `<= capacity`.
    len: usize,
}

impl MarketWindow {
    /// A window holding at most `capacity` samples (at least 2).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(2);
        Self { samples: vec![Sample::default(); capacity], head: 0, len: 0 }
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no sample was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most samples held.
    pub fn capacity(&self) -> usize {
        self.samples.len()
    }

    /// Adds a sample from a top of book; returns false (nothing stored) when the book is
    /// empty, crossed or out of sync.
    pub fn push_top(&mut self, ts: u64, top: &Top) -> bool {
        let Some(mid) = top.mid().filter(|_| top.in_sync) else {
            return false;
        };
        let (b, a) = (i128::from(top.bid_qty.raw.max(0)), i128::from(top.ask_qty.raw.max(0)));
        let imbalance_bps = if a + b == 0 { 0 } else { ((b - a) * 10_000 / (a + b)) as i32 };
        self.push(Sample { ts, mid: mid.raw, spread: top.ask.raw - top.bid.raw, imbalance_bps });
        true
    }

    /// Adds a sample, overwriting the oldest when full.
    pub fn push(&mut self, s: Sample) {
        let cap = self.samples.len();
        self.samples[self.head] = s;
        self.head = (self.head + 1) % cap;
        self.len = (self.len + 1).min(cap);
    }

    /// The sample `back` steps before the newest (0 = newest).
    pub fn get_back(&self, back: usize) -> Option<&Sample> {
        if back >= self.len {
            return None;
        }
        let cap = self.samples.len();
        Some(&self.samples[(self.head + cap - 1 - back) % cap])
    }

    /// The newest sample.
    pub fn last(&self) -> Option<&Sample> {
        self.get_back(0)
    }

    /// Return over the last `n` steps, bps (`None` without `n + 1` samples).
    pub fn return_bps(&self, n: usize) -> Option<f64> {
        let now = self.get_back(0)?.mid;
        let then = self.get_back(n)?.mid;
        (then > 0).then(|| (now - then) as f64 * 10_000.0 / then as f64)
    }

    /// One-step returns, bps, newest first: `n` of them, skipping the newest `skip`.
    fn step_returns(&self, skip: usize, n: usize) -> impl Iterator<Item = f64> + '_ {
        (skip..(skip + n).min(self.len.saturating_sub(1))).filter_map(move |k| {
            let a = self.get_back(k + 1)?.mid;
            let b = self.get_back(k)?.mid;
            (a > 0).then(|| (b - a) as f64 * 10_000.0 / a as f64)
        })
    }

    /// Realized volatility: standard deviation of the last `n` one-step returns, bps
    /// (`None` with fewer than 2 returns).
    pub fn volatility_bps(&self, n: usize) -> Option<f64> {
        self.volatility_bps_range(0, n)
    }

    /// Like [`Self::volatility_bps`] over `n` one-step returns older than the newest `skip`
    /// (a baseline that excludes a recent burst).
    pub fn volatility_bps_range(&self, skip: usize, n: usize) -> Option<f64> {
        let (mut count, mut sum, mut sum_sq) = (0usize, 0.0, 0.0);
        for r in self.step_returns(skip, n) {
            count += 1;
            sum += r;
            sum_sq += r * r;
        }
        if count < 2 {
            return None;
        }
        let mean = sum / count as f64;
        Some((sum_sq / count as f64 - mean * mean).max(0.0).sqrt())
    }

    /// Fraction of the last `n` one-step moves that went up minus those that went down,
    /// in −1..=1 (how consistent a trend is).
    pub fn direction_consistency(&self, n: usize) -> f64 {
        let (mut up, mut down, mut count) = (0i64, 0i64, 0i64);
        for r in self.step_returns(0, n) {
            count += 1;
            if r > 0.0 {
                up += 1;
            } else if r < 0.0 {
                down += 1;
            }
        }
        if count == 0 {
            0.0
        } else {
            (up - down) as f64 / count as f64
        }
    }

    /// Mean and standard deviation of the last `n` mids (raw units).
    pub fn mid_mean_std(&self, n: usize) -> Option<(f64, f64)> {
        let n = n.min(self.len);
        if n < 2 {
            return None;
        }
        let (mut sum, mut sum_sq) = (0.0, 0.0);
        for k in 0..n {
            let m = self.get_back(k)?.mid as f64;
            sum += m;
            sum_sq += m * m;
        }
        let mean = sum / n as f64;
        Some((mean, (sum_sq / n as f64 - mean * mean).max(0.0).sqrt()))
    }

    /// Mean top-of-book imbalance over the last `n` samples, bps.
    pub fn mean_imbalance_bps(&self, n: usize) -> Option<f64> {
        let n = n.min(self.len);
        if n == 0 {
            return None;
        }
        let sum: i64 = (0..n).filter_map(|k| self.get_back(k)).map(|s| i64::from(s.imbalance_bps)).sum();
        Some(sum as f64 / n as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_stamp_signals_with_the_process_clock_not_the_wall_clock() {
        // The engine's other event times (synthetic market, timers, ts_recv) come from
        // `unix_nanos`; a stamp read between two of its readings lies between them.
        let clock = wall_clock();
        for _ in 0..1_000 {
            let before = sapphire_core::latency::unix_nanos();
            let stamp = clock();
            let after = sapphire_core::latency::unix_nanos();
            assert!(before <= stamp && stamp <= after, "{before} <= {stamp} <= {after}");
        }
    }

    fn top(bid: i64, ask: i64, bq: i64, aq: i64) -> Top {
        Top {
            bid: Price::from_units(bid),
            ask: Price::from_units(ask),
            bid_qty: Quantity::from_units(bq),
            ask_qty: Quantity::from_units(aq),
            ts_event: 1,
            in_sync: true,
        }
    }

    #[test]
    fn window_wraps_and_reports_returns() {
        let mut w = MarketWindow::new(4);
        for (i, p) in [100, 101, 102, 103, 104, 105].iter().enumerate() {
            assert!(w.push_top(i as u64, &top(*p, *p, 1, 1)));
        }
        assert_eq!(w.len(), 4);
        assert_eq!(w.last().unwrap().mid, Price::from_units(105).raw);
        assert_eq!(w.get_back(3).unwrap().mid, Price::from_units(102).raw);
        assert!(w.get_back(4).is_none());
        let r = w.return_bps(3).unwrap();
        assert!((r - 3.0 * 10_000.0 / 102.0).abs() < 1e-9, "{r}");
        assert!((w.direction_consistency(10) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn bad_tops_are_not_sampled() {
        let mut w = MarketWindow::new(4);
        assert!(!w.push_top(0, &top(101, 100, 1, 1)), "crossed");
        assert!(!w.push_top(0, &top(0, 100, 1, 1)), "empty bid");
        let mut t = top(100, 101, 3, 1);
        t.in_sync = false;
        assert!(!w.push_top(0, &t), "out of sync");
        t.in_sync = true;
        assert!(w.push_top(0, &t));
        assert_eq!(w.last().unwrap().imbalance_bps, 5_000);
        assert!(w.volatility_bps(10).is_none());
    }
}
