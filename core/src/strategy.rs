//! The fast in-core strategies: each turns market updates into a signal strength.

use crate::fixed::Price;

/// What a strategy sees of one instrument after a market update.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
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
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug)]
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

/// Order-book imbalance: leans with the heavier side when its smoothed imbalance passes a
/// threshold. Sampled at most every `sample_ns` of event time, so a flickering book does
/// not become a flickering order.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, Debug)]
pub struct Imbalance {
    threshold_bps: i32,
    sample_ns: u64,
    next_sample: u64,
    /// Exponential average of the sampled imbalance, bps (weight 1/4 per sample).
    smoothed_bps: i32,
}

impl Imbalance {
    /// Signals only when the smoothed |imbalance| exceeds `threshold_bps`.
    pub fn new(threshold_bps: i32, sample_ns: u64) -> Self {
        Self { threshold_bps, sample_ns: sample_ns.max(1), next_sample: 0, smoothed_bps: 0 }
    }

    /// Strength in bps for a settled market view, at most once per sample period.
    #[inline]
    pub fn on_market(&mut self, m: &MarketView) -> Option<i32> {
        if !m.has_market || !m.settled || m.ts_event < self.next_sample {
            return None;
        }
        self.next_sample = m.ts_event - m.ts_event % self.sample_ns + self.sample_ns;
        self.smoothed_bps += (m.imbalance_bps - self.smoothed_bps) / 4;
        let s = self.smoothed_bps;
        Some(if s.abs() > self.threshold_bps { s } else { 0 })
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
    fn imbalance_is_smoothed_sampled_and_thresholded() {
        let mut s = Imbalance::new(3_000, 10);
        let at = |ts, imb| MarketView { imbalance_bps: imb, ..view(ts, 100) };
        // Smoothed: 8000/4 = 2000, under the threshold.
        assert_eq!(s.on_market(&at(0, 8_000)), Some(0));
        assert_eq!(s.on_market(&at(5, 8_000)), None, "sampled at most every 10 ns");
        // 2000 + (8000 - 2000)/4 = 3500: over.
        assert_eq!(s.on_market(&at(10, 8_000)), Some(3_500));
        // One opposite reading does not flip it: 3500 + (-8000 - 3500)/4 = 625.
        assert_eq!(s.on_market(&at(20, -8_000)), Some(0));
    }
}
