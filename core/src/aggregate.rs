//! Signal aggregation: the in-core strategies and agent signals become per-agent target
//! positions; a changed target becomes an [`Intent`].
//!
//! Every agent trades its own sub-account (its own margin budget). An agent's target in an
//! instrument is `strength × confidence × weight × target_notional / mid`, rounded down to
//! whole lots; a new intent is emitted only when the target moves by at least a quarter of
//! the full-size target (hysteresis), or back to zero. A signal past its time-to-live has no
//! effect: its agent's target returns to zero.

use crate::event::{AgentId, Signal};
use crate::fixed::{Money, Price, Quantity};
use crate::instrument::{Instrument, InstrumentId};
use crate::order::{Batch, ExecStyle, Intent};
use crate::strategy::{Imbalance, MarketView, Momentum};

/// Most agents the engine tracks (tables are preallocated to this size).
pub const MAX_AGENTS: usize = 16;
/// The in-core momentum strategy's agent id.
pub const MOMENTUM_AGENT: AgentId = AgentId(0);
/// The in-core order-book imbalance strategy's agent id.
pub const IMBALANCE_AGENT: AgentId = AgentId(1);
/// First id for external (runtime / LLM / remote) agents.
pub const FIRST_EXTERNAL_AGENT: u16 = 2;

/// The name of an in-core strategy's agent id (`core-momentum`, `core-imbalance`), apart from
/// the agents' names (`momentum-2`...) so the two are never confused; `None` for other ids.
pub const fn in_core_strategy_name(agent: AgentId) -> Option<&'static str> {
    match agent.0 {
        0 => Some("core-momentum"),
        1 => Some("core-imbalance"),
        _ => None,
    }
}

/// Intents one stage message can carry.
pub const INTENTS_PER_EVENT: usize = 4;
/// The intents produced by one event.
pub type IntentBatch = Batch<Intent, INTENTS_PER_EVENT>;

/// Aggregation settings.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AggregateConfig {
    /// Momentum window, in samples.
    pub momentum_window: usize,
    /// Momentum sampling period, ns of event time.
    pub momentum_sample_ns: u64,
    /// Return (bps) that maps to full momentum strength.
    pub momentum_full_scale_bps: i64,
    /// Imbalance threshold, bps.
    pub imbalance_threshold_bps: i32,
    /// Levels counted for imbalance.
    pub imbalance_levels: usize,
    /// Imbalance sampling period, ns of event time.
    pub imbalance_sample_ns: u64,
    /// Per-agent weight, bps (10_000 = 1.0); missing agents weigh 1.0.
    pub weights_bps: Vec<i32>,
    /// Full-size position notional per agent and instrument.
    pub target_notional: Money,
    /// Ticks an aggressive order may cross beyond the best price.
    pub aggressive_slip_ticks: i64,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        Self {
            momentum_window: 20,
            momentum_sample_ns: 100_000_000,
            momentum_full_scale_bps: 20,
            imbalance_threshold_bps: 1_500,
            imbalance_levels: 5,
            imbalance_sample_ns: 250_000_000,
            weights_bps: vec![10_000; MAX_AGENTS],
            target_notional: Money::from_units(250),
            aggressive_slip_ticks: 2,
        }
    }
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, Debug, Default)]
struct ExternalSignal {
    expires_at: u64,
    active: bool,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug)]
struct InstrumentState {
    momentum: Momentum,
    imbalance: Imbalance,
    external: [ExternalSignal; MAX_AGENTS],
    /// Last emitted target per agent, raw quantity.
    targets: [i64; MAX_AGENTS],
    last: MarketView,
    tick: Price,
    lot: Quantity,
}

/// The aggregate stage's state. Single writer: the aggregate stage thread.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug)]
pub struct Aggregator {
    config: AggregateConfig,
    instruments: Vec<InstrumentState>,
    /// Signals that arrived past their time-to-live or for unknown agents/instruments.
    pub ignored_signals: u64,
}

impl Aggregator {
    /// An aggregator for `instruments`.
    pub fn new(config: AggregateConfig, instruments: &[Instrument]) -> Self {
        let instruments = instruments
            .iter()
            .map(|i| InstrumentState {
                momentum: Momentum::new(config.momentum_window, config.momentum_sample_ns, config.momentum_full_scale_bps),
                imbalance: Imbalance::new(config.imbalance_threshold_bps, config.imbalance_sample_ns),
                external: [ExternalSignal::default(); MAX_AGENTS],
                targets: [0; MAX_AGENTS],
                last: MarketView::default(),
                tick: i.tick_size,
                lot: i.lot_size,
            })
            .collect();
        Self { config, instruments, ignored_signals: 0 }
    }

    /// Makes this aggregator equal to `src`, keeping this one's allocations (snapshots).
    pub fn copy_from(&mut self, src: &Self) {
        let Self { config, instruments, ignored_signals } = src;
        let AggregateConfig {
            momentum_window,
            momentum_sample_ns,
            momentum_full_scale_bps,
            imbalance_threshold_bps,
            imbalance_levels,
            imbalance_sample_ns,
            weights_bps,
            target_notional,
            aggressive_slip_ticks,
        } = config;
        let c = &mut self.config;
        (c.momentum_window, c.momentum_sample_ns, c.momentum_full_scale_bps) =
            (*momentum_window, *momentum_sample_ns, *momentum_full_scale_bps);
        (c.imbalance_threshold_bps, c.imbalance_levels, c.imbalance_sample_ns) =
            (*imbalance_threshold_bps, *imbalance_levels, *imbalance_sample_ns);
        crate::snapshot::copy_into(&mut c.weights_bps, weights_bps);
        (c.target_notional, c.aggressive_slip_ticks) = (*target_notional, *aggressive_slip_ticks);
        // Per-instrument state holds no allocation: element-wise `clone_from` copies in place.
        crate::snapshot::copy_into(&mut self.instruments, instruments);
        self.ignored_signals = *ignored_signals;
    }

    fn weight(&self, agent: AgentId) -> i64 {
        i64::from(self.config.weights_bps.get(agent.index()).copied().unwrap_or(10_000))
    }

    /// Sets an agent's weight (bps), e.g. from the arbitrator.
    pub fn set_weight(&mut self, agent: AgentId, weight_bps: i32) {
        if let Some(w) = self.config.weights_bps.get_mut(agent.index()) {
            *w = weight_bps;
        }
    }

    /// A market update for `instrument`: runs the strategies and expires stale signals.
    #[inline]
    pub fn on_market(&mut self, seq: i64, instrument: InstrumentId, m: &MarketView, out: &mut IntentBatch) {
        let Some(state) = self.instruments.get_mut(instrument.index()) else {
            return;
        };
        state.last = *m;
        let momentum = state.momentum.on_market(m);
        let imbalance = state.imbalance.on_market(m);
        if let Some(s) = momentum {
            self.propose(seq, instrument, MOMENTUM_AGENT, s, 10_000, ExecStyle::Aggressive, out);
        }
        if let Some(s) = imbalance {
            self.propose(seq, instrument, IMBALANCE_AGENT, s, 10_000, ExecStyle::Passive, out);
        }
        // Expired agent signals lose their effect.
        for agent in FIRST_EXTERNAL_AGENT as usize..MAX_AGENTS {
            let sig = self.instruments[instrument.index()].external[agent];
            if sig.active && m.ts_event >= sig.expires_at {
                let agent_id = AgentId(agent as u16);
                if self.propose(seq, instrument, agent_id, 0, 0, ExecStyle::Aggressive, out) {
                    self.instruments[instrument.index()].external[agent].active = false;
                }
            }
        }
    }

    /// An agent's signal; false when it was ignored (unknown agent or instrument, or already
    /// past its time-to-live).
    #[inline]
    pub fn on_signal(&mut self, seq: i64, s: &Signal, out: &mut IntentBatch) -> bool {
        let agent = s.agent.index();
        let valid_agent = (FIRST_EXTERNAL_AGENT as usize..MAX_AGENTS).contains(&agent);
        let Some(state) = self.instruments.get_mut(s.instrument.index()).filter(|_| valid_agent) else {
            self.ignored_signals += 1;
            return false;
        };
        let expires_at = s.ts_event.saturating_add(s.ttl_ns);
        // Event time is the latest market update we saw; a signal already dead is ignored.
        if expires_at <= state.last.ts_event {
            self.ignored_signals += 1;
            return false;
        }
        state.external[agent] = ExternalSignal { expires_at, active: true };
        self.propose(
            seq,
            s.instrument,
            s.agent,
            s.strength_bps.clamp(-10_000, 10_000),
            s.confidence_bps.min(10_000),
            ExecStyle::Aggressive,
            out,
        );
        true
    }

    /// Turns a strength into a target and emits an intent if it moved enough.
    /// Returns false only when the intent did not fit in `out` (it is retried next update).
    #[allow(clippy::too_many_arguments)]
    fn propose(
        &mut self,
        seq: i64,
        instrument: InstrumentId,
        agent: AgentId,
        strength_bps: i32,
        confidence_bps: u16,
        style: ExecStyle,
        out: &mut IntentBatch,
    ) -> bool {
        let weight = self.weight(agent);
        let full_notional = self.config.target_notional.raw;
        let slip = self.config.aggressive_slip_ticks;
        let state = &mut self.instruments[instrument.index()];
        let m = state.last;
        if !m.has_market || m.mid.raw <= 0 {
            return true;
        }
        // full-size quantity = notional / mid, in quantity raw units.
        let full_qty = i128::from(full_size(full_notional, m.mid.raw));
        let scaled = scale_bps(full_qty as i64, i64::from(strength_bps) * i64::from(confidence_bps), weight);
        let lot = state.lot.raw.max(1);
        let target = (scaled as i64) / lot * lot;
        let last = state.targets[agent.index()];
        let step = ((full_qty as i64) / 4).max(lot);
        let moved = (target - last).abs() >= step || (target == 0 && last != 0);
        if !moved {
            return true;
        }
        let increase_buy = target > last;
        let tick = state.tick.raw.max(1);
        let price = match (style, increase_buy) {
            (ExecStyle::Aggressive, true) => m.ask.raw + slip * tick,
            (ExecStyle::Aggressive, false) => m.bid.raw - slip * tick,
            (ExecStyle::Passive, true) => m.bid.raw,
            (ExecStyle::Passive, false) => m.ask.raw,
        };
        let intent = Intent {
            ts_event: m.ts_event,
            intent_id: crate::router::intent_id(seq, agent.0 as u8),
            instrument,
            agent,
            style,
            _pad: 0,
            target: Quantity::from_raw(target),
            price: Price::from_raw(price),
        };
        if out.push(intent).is_err() {
            return false;
        }
        state.targets[agent.index()] = target;
        true
    }
}

/// Sizes and alignments of this module's private archived state (snapshot layout fingerprint).
pub(crate) fn archived_layout() -> [(usize, usize); 2] {
    use rkyv::Archived;
    use std::mem::{align_of, size_of};
    [
        (size_of::<Archived<ExternalSignal>>(), align_of::<Archived<ExternalSignal>>()),
        (size_of::<Archived<InstrumentState>>(), align_of::<Archived<InstrumentState>>()),
    ]
}

/// `notional × 10^8 / mid` (quantity raw units) without a 128-bit division: two exact 64-bit
/// steps of 10^4 (a 128-bit division is a slow library call on the order path).
#[inline]
fn full_size(notional_raw: i64, mid_raw: i64) -> i64 {
    if notional_raw < 0 || mid_raw <= 0 || notional_raw > i64::MAX / 10_000 {
        return (i128::from(notional_raw) * i128::from(Quantity::SCALE) / i128::from(mid_raw.max(1))) as i64;
    }
    let head = notional_raw * 10_000;
    let (q1, r1) = (head / mid_raw, head % mid_raw);
    // r1 < mid_raw; r1 × 10^4 fits while mid_raw < 9.2e14 (prices under 922,337).
    match r1.checked_mul(10_000) {
        Some(r) => q1 * 10_000 + r / mid_raw,
        None => (i128::from(notional_raw) * i128::from(Quantity::SCALE) / i128::from(mid_raw)) as i64,
    }
}

/// `qty × strength·confidence (bps²) × weight (bps) / 10^12`, exactly; in 64 bits when the
/// product fits (every realistic position), else in 128.
#[inline]
fn scale_bps(qty: i64, strength_confidence: i64, weight: i64) -> i128 {
    match qty.checked_mul(strength_confidence).and_then(|v| v.checked_mul(weight)) {
        Some(v) => i128::from(v / 1_000_000_000_000),
        None => i128::from(qty) * i128::from(strength_confidence) * i128::from(weight) / 1_000_000_000_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instrument::{InstrumentRegistry, InstrumentSpec, MarketType};

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn full_size_is_the_exact_quotient(notional in 0i64..1_000_000_000_000_000, mid in 1i64..i64::MAX) {
                let exact = (i128::from(notional) * i128::from(Quantity::SCALE) / i128::from(mid)) as i64;
                prop_assert_eq!(full_size(notional, mid), exact);
            }
        }
    }

    fn setup() -> Aggregator {
        let mut reg = InstrumentRegistry::new();
        reg.intern(InstrumentSpec {
            venue: "t",
            symbol: "BTCUSDT",
            market: MarketType::Spot,
            tick_size: Price::parse("0.01").unwrap(),
            lot_size: Quantity::parse("0.0001").unwrap(),
            min_notional: Money::from_units(5),
        })
        .unwrap();
        let instruments: Vec<_> = reg.iter().cloned().collect();
        Aggregator::new(AggregateConfig { target_notional: Money::from_units(1_000), ..Default::default() }, &instruments)
    }

    fn view(ts: u64) -> MarketView {
        MarketView {
            ts_event: ts,
            bid: Price::from_units(99),
            ask: Price::from_units(101),
            mid: Price::from_units(100),
            has_market: true,
            in_sync: true,
            settled: true,
            ..Default::default()
        }
    }

    #[test]
    fn agent_signal_sets_target_and_expires() {
        let mut agg = setup();
        let mut out = IntentBatch::default();
        agg.on_market(1, InstrumentId(0), &view(1_000), &mut out);
        assert!(out.is_empty());
        let sig = Signal {
            ts_event: 1_000,
            instrument: InstrumentId(0),
            agent: AgentId(3),
            strength_bps: 5_000,
            confidence_bps: 10_000,
            ttl_ns: 500,
            ..Default::default()
        };
        agg.on_signal(2, &sig, &mut out);
        // $1000 / $100 = 10 units, half strength: 5 units, buy at ask + 2 ticks.
        assert_eq!(out.as_slice().len(), 1);
        let i = out.as_slice()[0];
        assert_eq!((i.agent, i.target, i.price), (AgentId(3), Quantity::from_units(5), Price::parse("101.02").unwrap()));
        out.clear();
        agg.on_market(3, InstrumentId(0), &view(1_200), &mut out);
        assert!(out.is_empty(), "still alive");
        agg.on_market(4, InstrumentId(0), &view(1_500), &mut out);
        assert_eq!(out.as_slice().len(), 1, "expired: back to flat");
        assert_eq!(out.as_slice()[0].target, Quantity::ZERO);
        assert_eq!(out.as_slice()[0].price, Price::parse("98.98").unwrap());
    }

    #[test]
    fn dead_or_foreign_signals_are_ignored() {
        let mut agg = setup();
        let mut out = IntentBatch::default();
        agg.on_market(1, InstrumentId(0), &view(10_000), &mut out);
        let dead = Signal {
            ts_event: 1_000,
            instrument: InstrumentId(0),
            agent: AgentId(3),
            strength_bps: 5_000,
            confidence_bps: 10_000,
            ttl_ns: 500,
            ..Default::default()
        };
        agg.on_signal(2, &dead, &mut out);
        let core_id = Signal { agent: MOMENTUM_AGENT, ts_event: 10_000, ttl_ns: 10, ..dead };
        agg.on_signal(3, &core_id, &mut out);
        let unknown_instrument = Signal { instrument: InstrumentId(9), ts_event: 10_000, ..dead };
        agg.on_signal(4, &unknown_instrument, &mut out);
        assert!(out.is_empty());
        assert_eq!(agg.ignored_signals, 3);
    }

    #[test]
    fn weight_scales_and_hysteresis_holds() {
        let mut agg = setup();
        agg.set_weight(AgentId(2), 5_000);
        let mut out = IntentBatch::default();
        agg.on_market(1, InstrumentId(0), &view(1), &mut out);
        let sig = Signal {
            ts_event: 1,
            instrument: InstrumentId(0),
            agent: AgentId(2),
            strength_bps: 10_000,
            confidence_bps: 10_000,
            ttl_ns: 1_000_000,
            ..Default::default()
        };
        agg.on_signal(2, &sig, &mut out);
        assert_eq!(out.as_slice()[0].target, Quantity::from_units(5));
        out.clear();
        // A small change (under a quarter of full size) emits nothing.
        agg.on_signal(3, &Signal { strength_bps: 9_000, ..sig }, &mut out);
        assert!(out.is_empty());
    }
}
