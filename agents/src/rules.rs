//! The rule-based agents: momentum, mean reversion, order-flow imbalance, volatility
//! breakout. Each is a pure, deterministic function of a [`MarketWindow`].

use crate::context::MarketWindow;
use serde::Deserialize;

/// What a rule proposes for one instrument: direction and strength, confidence, why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// −10_000 (all-in short) ..= 10_000 (all-in long); 0 is flat.
    pub strength_bps: i32,
    /// 0 ..= 10_000.
    pub confidence_bps: u16,
    /// A short reason.
    pub reason: &'static str,
}

impl Proposal {
    const fn flat(reason: &'static str) -> Self {
        Self { strength_bps: 0, confidence_bps: 0, reason }
    }
}

/// Maps a fraction in −1..=1 to bps (clamped; NaN is 0).
fn to_bps(x: f64) -> i32 {
    if x.is_nan() {
        return 0;
    }
    (x.clamp(-1.0, 1.0) * 10_000.0).round() as i32
}

/// Maps a fraction in 0..=1 to confidence bps (clamped; NaN is 0).
fn to_conf(x: f64) -> u16 {
    if x.is_nan() {
        return 0;
    }
    (x.clamp(0.0, 1.0) * 10_000.0).round() as u16
}

/// A rule-based agent's decision function.
pub trait Rule: Send + Sync + std::fmt::Debug {
    /// Samples the rule needs before it proposes anything.
    fn warmup(&self) -> usize;
    /// The proposal for the window, `None` while warming up.
    fn evaluate(&self, w: &MarketWindow) -> Option<Proposal>;
}

/// Momentum: long after a rise, short after a fall.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Momentum {
    /// Samples the return is measured over.
    pub lookback: usize,
    /// Return (bps) below which the agent stays flat.
    pub threshold_bps: f64,
    /// Return (bps) that maps to full strength.
    pub full_scale_bps: f64,
}

impl Default for Momentum {
    fn default() -> Self {
        Self { lookback: 20, threshold_bps: 2.0, full_scale_bps: 20.0 }
    }
}

impl Rule for Momentum {
    fn warmup(&self) -> usize {
        self.lookback + 1
    }

    fn evaluate(&self, w: &MarketWindow) -> Option<Proposal> {
        let r = w.return_bps(self.lookback)?;
        if r.abs() < self.threshold_bps {
            return Some(Proposal::flat("momentum: return below threshold"));
        }
        // Confidence: how consistently the steps went the trend's way.
        let consistency = w.direction_consistency(self.lookback) * r.signum();
        Some(Proposal {
            strength_bps: to_bps(r / self.full_scale_bps.max(f64::EPSILON)),
            confidence_bps: to_conf(consistency),
            reason: if r > 0.0 { "momentum: price rising" } else { "momentum: price falling" },
        })
    }
}

/// Mean reversion: short a mid stretched above its recent mean, long one below it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeanReversion {
    /// Samples the mean and deviation are measured over.
    pub lookback: usize,
    /// Z-score below which the agent stays flat.
    pub entry_z: f64,
    /// Z-score that maps to full strength.
    pub full_z: f64,
}

impl Default for MeanReversion {
    fn default() -> Self {
        // 25 samples: five seconds at the default 200 ms cadence, so it speaks early in a run.
        Self { lookback: 25, entry_z: 1.0, full_z: 2.5 }
    }
}

impl Rule for MeanReversion {
    fn warmup(&self) -> usize {
        self.lookback
    }

    fn evaluate(&self, w: &MarketWindow) -> Option<Proposal> {
        if w.len() < self.lookback {
            return None;
        }
        let (mean, std) = w.mid_mean_std(self.lookback)?;
        let mid = w.last()?.mid as f64;
        if std <= 0.0 {
            return Some(Proposal::flat("mean reversion: no dispersion"));
        }
        let z = (mid - mean) / std;
        if z.abs() < self.entry_z {
            return Some(Proposal::flat("mean reversion: near the mean"));
        }
        let span = (self.full_z - self.entry_z).max(f64::EPSILON);
        let size = ((z.abs() - self.entry_z) / span).clamp(0.0, 1.0).max(0.1);
        Some(Proposal {
            strength_bps: to_bps(-z.signum() * size),
            confidence_bps: to_conf(z.abs() / self.full_z.max(f64::EPSILON)),
            reason: if z > 0.0 { "mean reversion: stretched above the mean" } else { "mean reversion: stretched below the mean" },
        })
    }
}

/// Order-flow imbalance: follows top-of-book pressure.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrderFlowImbalance {
    /// Samples averaged.
    pub samples: usize,
    /// Mean imbalance (bps) below which the agent stays flat.
    pub threshold_bps: f64,
    /// Mean imbalance (bps) that maps to full strength.
    pub full_scale_bps: f64,
}

impl Default for OrderFlowImbalance {
    fn default() -> Self {
        Self { samples: 5, threshold_bps: 1_500.0, full_scale_bps: 6_000.0 }
    }
}

impl Rule for OrderFlowImbalance {
    fn warmup(&self) -> usize {
        self.samples.max(1)
    }

    fn evaluate(&self, w: &MarketWindow) -> Option<Proposal> {
        let n = self.samples.max(1);
        if w.len() < n {
            return None;
        }
        let imb = w.mean_imbalance_bps(n)?;
        if imb.abs() < self.threshold_bps {
            return Some(Proposal::flat("imbalance: balanced book"));
        }
        let agreeing = (0..n).filter_map(|k| w.get_back(k)).filter(|s| f64::from(s.imbalance_bps) * imb > 0.0).count();
        Some(Proposal {
            strength_bps: to_bps(imb / self.full_scale_bps.max(f64::EPSILON)),
            confidence_bps: to_conf(agreeing as f64 / n as f64),
            reason: if imb > 0.0 { "imbalance: bid pressure" } else { "imbalance: ask pressure" },
        })
    }
}

/// Volatility breakout: when short-term volatility jumps past a multiple of its baseline,
/// trade in the direction of the burst.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VolatilityBreakout {
    /// Recent one-step returns measured.
    pub short: usize,
    /// Baseline one-step returns (older than the recent ones).
    pub long: usize,
    /// Volatility ratio (recent / baseline) below which the agent stays flat.
    pub ratio_threshold: f64,
    /// Ratio that maps to full strength.
    pub full_ratio: f64,
    /// Baseline floor, bps (a perfectly calm baseline would make any move infinite).
    pub min_baseline_bps: f64,
}

impl Default for VolatilityBreakout {
    fn default() -> Self {
        // 1 s against the 4 s before it at the default 200 ms cadence: warm after 5.2 s.
        Self { short: 5, long: 20, ratio_threshold: 1.6, full_ratio: 3.0, min_baseline_bps: 0.2 }
    }
}

impl Rule for VolatilityBreakout {
    fn warmup(&self) -> usize {
        self.short + self.long + 1
    }

    fn evaluate(&self, w: &MarketWindow) -> Option<Proposal> {
        if w.len() < self.warmup() {
            return None;
        }
        let recent = w.volatility_bps(self.short)?;
        let baseline = w.volatility_bps_range(self.short, self.long)?.max(self.min_baseline_bps);
        let ratio = recent / baseline;
        if ratio < self.ratio_threshold {
            return Some(Proposal::flat("breakout: volatility within its range"));
        }
        let r = w.return_bps(self.short)?;
        if r == 0.0 {
            return Some(Proposal::flat("breakout: volatile but directionless"));
        }
        let span = (self.full_ratio - self.ratio_threshold).max(f64::EPSILON);
        let size = (ratio / self.full_ratio.max(f64::EPSILON)).clamp(0.0, 1.0);
        Some(Proposal {
            strength_bps: to_bps(r.signum() * size),
            confidence_bps: to_conf(0.5 + 0.5 * (ratio - self.ratio_threshold) / span),
            reason: if r > 0.0 { "breakout: volatility burst upward" } else { "breakout: volatility burst downward" },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Sample;
    use sapphire_core::fixed::PRICE_SCALE;

    /// The parameters the numbers below were worked out for (longer windows than today's
    /// defaults, which are sized for a 200 ms cadence).
    fn classic_breakout() -> VolatilityBreakout {
        VolatilityBreakout { short: 10, long: 90, ratio_threshold: 2.0, full_ratio: 4.0, min_baseline_bps: 0.5 }
    }

    fn classic_mean_reversion() -> MeanReversion {
        MeanReversion { lookback: 50, entry_z: 1.0, full_z: 2.5 }
    }

    /// 10_000.00 in cents.
    const BASE: i64 = 1_000_000;

    /// A window over scripted mids (units of 0.01) with a fixed imbalance.
    fn window(mids_cents: &[i64], imbalance_bps: i32) -> MarketWindow {
        let mut w = MarketWindow::new(512);
        for (i, m) in mids_cents.iter().enumerate() {
            w.push(Sample { ts: i as u64, mid: m * PRICE_SCALE / 100, spread: PRICE_SCALE / 100, imbalance_bps });
        }
        w
    }

    fn uptrend(n: usize) -> Vec<i64> {
        (0..n as i64).map(|i| BASE + i * 5).collect() // 10_000.00, +0.05 a step (0.05 bps)
    }

    #[test]
    fn steady_uptrend_makes_momentum_long_and_mean_reversion_short() {
        let w = window(&uptrend(60), 0);
        let m = Momentum::default().evaluate(&w).unwrap();
        // 20 steps of 0.05 on 10_000: 1 bps, below the 2 bps threshold: flat.
        assert_eq!(m.strength_bps, 0, "{m:?}");
        let steep: Vec<i64> = (0..60).map(|i| BASE + i * 50).collect(); // 0.5/step = 0.5 bps
        let w = window(&steep, 0);
        let m = Momentum::default().evaluate(&w).unwrap();
        // 20 steps × 0.50 from 10_020.00: 10.0 / 10_020 = 9.98 bps → 0.499 of full scale.
        assert_eq!(m.strength_bps, 4990, "{m:?}");
        assert_eq!(m.confidence_bps, 10_000, "every step up");
        assert_eq!(m.reason, "momentum: price rising");
        let r = classic_mean_reversion().evaluate(&w).unwrap();
        assert!(r.strength_bps < 0, "mean reversion shorts the uptrend: {r:?}");
        // Uniform steps: z of the newest mid = 24.5 / sqrt((50²−1)/12) = 1.6977; strength
        // (1.6977 − 1) / (2.5 − 1) = 0.4652, confidence 1.6977 / 2.5.
        assert_eq!(r.strength_bps, -4652, "{r:?}");
        assert_eq!(r.confidence_bps, 6791);
    }

    #[test]
    fn downtrend_mirrors_uptrend() {
        let down: Vec<i64> = (0..60).map(|i| BASE - i * 50).collect();
        let w = window(&down, 0);
        assert!(Momentum::default().evaluate(&w).unwrap().strength_bps < 0);
        assert!(classic_mean_reversion().evaluate(&w).unwrap().strength_bps > 0);
    }

    #[test]
    fn rules_wait_for_warmup_and_flat_market_is_flat() {
        let w = window(&[BASE; 10], 0);
        assert_eq!(Momentum::default().evaluate(&w), None);
        assert_eq!(classic_mean_reversion().evaluate(&w), None);
        assert_eq!(classic_breakout().evaluate(&w), None);
        let w = window(&[BASE; 120], 0);
        assert_eq!(Momentum::default().evaluate(&w).unwrap().strength_bps, 0);
        assert_eq!(classic_mean_reversion().evaluate(&w).unwrap().strength_bps, 0);
        assert_eq!(classic_breakout().evaluate(&w).unwrap().strength_bps, 0);
        assert_eq!(OrderFlowImbalance::default().evaluate(&w).unwrap().strength_bps, 0);
    }

    #[test]
    fn imbalance_sign_follows_book_pressure() {
        let rule = OrderFlowImbalance::default();
        let bids = rule.evaluate(&window(&[BASE; 5], 3_000)).unwrap();
        assert_eq!((bids.strength_bps, bids.confidence_bps), (5_000, 10_000));
        let asks = rule.evaluate(&window(&[BASE; 5], -6_000)).unwrap();
        assert_eq!((asks.strength_bps, asks.reason), (-10_000, "imbalance: ask pressure"));
        let weak = rule.evaluate(&window(&[BASE; 5], 1_000)).unwrap();
        assert_eq!(weak.strength_bps, 0, "below the threshold");
        assert_eq!(rule.evaluate(&window(&[BASE; 4], 3_000)), None, "warming up");
    }

    /// 91 calm steps alternating ±`calm` cents, then 10 steps of `burst` cents each way
    /// ending with a net move up.
    fn calm_then_burst(calm: i64, burst: i64) -> Vec<i64> {
        let mut mids = vec![BASE];
        for i in 0..91 {
            let last = *mids.last().unwrap();
            mids.push(last + if i % 2 == 0 { calm } else { -calm });
        }
        for i in 0..10 {
            let last = *mids.last().unwrap();
            // Up, up, down, up, up, down...: net upward.
            mids.push(last + if i % 3 == 2 { -burst } else { burst });
        }
        mids
    }

    #[test]
    fn volatility_spike_triggers_breakout_only_past_its_threshold() {
        let rule = classic_breakout();
        // Calm ±$1 on $10_000 (1 bps a step): baseline volatility 1 bps. A burst of ±b (7 up,
        // 3 down) has volatility b·√(1 − 0.4²) = 0.917·b.
        let quiet = rule.evaluate(&window(&calm_then_burst(100, 100), 0)).unwrap();
        assert_eq!(quiet.strength_bps, 0, "no spike: {quiet:?}");
        let mild = rule.evaluate(&window(&calm_then_burst(100, 200), 0)).unwrap();
        assert_eq!(mild.strength_bps, 0, "1.83x the baseline stays under the 2x threshold: {mild:?}");
        let past = rule.evaluate(&window(&calm_then_burst(100, 300), 0)).unwrap();
        // Ratio 2.75 of a full-scale 4: strength 0.6875 (to within the drift of the mid).
        assert!((6_800..=6_900).contains(&past.strength_bps), "2.75x triggers: {past:?}");
        assert_eq!(past.reason, "breakout: volatility burst upward");
        let spike = rule.evaluate(&window(&calm_then_burst(100, 800), 0)).unwrap();
        assert_eq!(spike.strength_bps, 10_000, "ratio far past full scale: {spike:?}");
        let mut down = calm_then_burst(100, 800);
        let base = down[91];
        for m in down.iter_mut().skip(92) {
            *m = 2 * base - *m;
        }
        assert!(rule.evaluate(&window(&down, 0)).unwrap().strength_bps < 0);
    }
}
