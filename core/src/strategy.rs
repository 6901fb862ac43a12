//! The fast in-core strategies: each turns market updates into a signal strength.

use crate::fixed::Price;

/// What a strategy sees of one instrument after a market update.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MarketView {
    /// Event time of the update, ns.
    pub ts_event: u64,
    /// Best bid (zero when none).
    pub bid: Price,
    /// Best ask (zero when none).
    pub ask: Price,
    /// Mid price (zero when one side is missing).
    pub mid: Price,
    /// Size-weighted mid.
    pub microprice: Price,
    /// Imbalance of the top levels, bps.
    pub imbalance_bps: i32,
    /// Both sides present.
    pub has_market: bool,
    /// The book is in sequence.
    pub in_sync: bool,
    /// The update completed a venue message (the book is consistent).
    pub settled: bool,
    /// Event time of the book's last change, ns.
    pub ts_last_update: u64,
}

/// Momentum over a window of mids sampled every `sample_ns` of event time.
#[derive(Clone, Debug)]
pub struct Momentum {
    window: [i64; Momentum::MAX_WINDOW],
    len: usize,
    head: usize,
    window_len: usize,
    sample_ns: u64,
    next_sample: u64,
    /// A return of this many bps maps to full strength.
    full_scale_bps: i64,
}

impl Momentum {
    /// Largest supported window.
    pub const MAX_WINDOW: usize = 256;

    /// A momentum strategy over `window` samples taken every `sample_ns`.
    pub fn new(window: usize, sample_ns: u64, full_scale_bps: i64) -> Self {
        Self {
            window: [0; Self::MAX_WINDOW],
            len: 0,
            head: 0,
            window_len: window.clamp(2, Self::MAX_WINDOW),
            sample_ns: sample_ns.max(1),
            next_sample: 0,
            full_scale_bps: full_scale_bps.max(1),
        }
    }

    /// Feeds a market view; returns the strength in bps (-10_000..=10_000) when the window is full.
    #[inline]
    pub fn on_market(&mut self, m: &MarketView) -> Option<i32> {
        if !m.has_market || m.ts_event < self.next_sample {
            return None;
        }
        self.next_sample = m.ts_event - m.ts_event % self.sample_ns + self.sample_ns;
        self.window[self.head] = m.mid.raw;
        self.head = (self.head + 1) % self.window_len;
        if self.len < self.window_len {
            self.len += 1;
            if self.len < self.window_len {
                return None;
            }
        }
        // `head` now points at the oldest sample.
        let oldest = self.window[self.head];
        if oldest <= 0 {
            return None;
        }
        let ret_bps = (i128::from(m.mid.raw - oldest) * 10_000 / i128::from(oldest)) as i64;
        Some((ret_bps * 10_000 / self.full_scale_bps).clamp(-10_000, 10_000) as i32)
    }
}

/// Order-book imbalance: leans with the heavier side past a threshold.
#[derive(Clone, Copy, Debug)]
pub struct Imbalance {
    threshold_bps: i32,
}

impl Imbalance {
    /// Signals only when |imbalance| exceeds `threshold_bps`.
    pub fn new(threshold_bps: i32) -> Self {
        Self { threshold_bps }
    }

    /// Strength in bps for a settled market view.
    #[inline]
    pub fn on_market(&self, m: &MarketView) -> Option<i32> {
        if !m.has_market || !m.settled {
            return None;
        }
        Some(if m.imbalance_bps.abs() > self.threshold_bps { m.imbalance_bps } else { 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(ts: u64, mid: i64) -> MarketView {
        MarketView { ts_event: ts, mid: Price::from_units(mid), has_market: true, settled: true, in_sync: true, ..Default::default() }
    }

    #[test]
    fn momentum_follows_the_trend_once_the_window_fills() {
        let mut m = Momentum::new(3, 10, 100);
        assert_eq!(m.on_market(&view(0, 100)), None);
        assert_eq!(m.on_market(&view(5, 100)), None, "sampled at most every 10 ns");
        assert_eq!(m.on_market(&view(10, 101)), None);
        // 100 -> 102 is +200 bps, clamped to full strength.
        assert_eq!(m.on_market(&view(20, 102)), Some(10_000));
        // oldest is now 101: -0.99% -> strength -10_000 (clamped).
        assert_eq!(m.on_market(&view(30, 100)), Some(-9_900));
    }

    #[test]
    fn imbalance_thresholds() {
        let s = Imbalance::new(3_000);
        let mut v = view(0, 100);
        v.imbalance_bps = 2_000;
        assert_eq!(s.on_market(&v), Some(0));
        v.imbalance_bps = -4_000;
        assert_eq!(s.on_market(&v), Some(-4_000));
    }
}
