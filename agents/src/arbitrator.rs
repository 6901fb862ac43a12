//! The arbitrator: scores every agent's signals on the returns that followed them (a running
//! Brier score and hit rate, updated online), turns the scores into weights, and resolves
//! conflicts — live signals on both sides of an instrument — into a weighted verdict, itself
//! a signal from the arbitrator's own agent id.
//!
//! A signal of strength `s` is read as the forecast `P(up) = 0.5 + s / 20000`; once the
//! horizon has passed, the outcome is whether the mid rose (flat moves are not scored).
//! Weight = `clamp(1 + 4 · (0.25 − Brier), 0.05, 2)`: a coin-flip forecaster weighs 1, a
//! perfect one 2, a confidently wrong one next to nothing.

use crate::config::ArbitratorConfig;
use sapphire_core::aggregate::MAX_AGENTS;
use sapphire_core::event::{AgentId, Signal};
use sapphire_core::instrument::InstrumentId;
use std::collections::{HashMap, VecDeque};
use std::fmt::Write;

/// Most signals waiting for their horizon; past it the oldest are dropped (and counted).
pub const MAX_PENDING: usize = 16_384;

#[derive(Clone, Copy, Debug)]
struct Score {
    brier: f64,
    hit_rate: f64,
    scored: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Live {
    strength_bps: i32,
    confidence_bps: u16,
    expires_at: u64,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    agent: AgentId,
    instrument: InstrumentId,
    strength_bps: i32,
    mid: i64,
    due: u64,
}

/// One side of a conflict, as the verdict reports it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Party {
    /// The agent.
    pub agent: AgentId,
    /// Its live strength, bps.
    pub strength_bps: i32,
    /// Its confidence, bps.
    pub confidence_bps: u16,
    /// Its performance weight, bps.
    pub weight_bps: i32,
}

/// A resolved conflict.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// The instrument.
    pub instrument: InstrumentId,
    /// Weighted strength, bps.
    pub strength_bps: i32,
    /// How much the weighted parties agree, bps.
    pub confidence_bps: u16,
    /// The parties, strongest long first.
    pub parties: Vec<Party>,
    /// Human-readable explanation.
    pub explanation: String,
}

impl Verdict {
    /// The weakest of the strongest long and the strongest short, bps (how large the
    /// conflict is).
    pub fn conflict_bps(&self) -> i32 {
        let long = self.parties.iter().map(|p| p.strength_bps).max().unwrap_or(0);
        let short = self.parties.iter().map(|p| -p.strength_bps).max().unwrap_or(0);
        long.min(short)
    }
}

/// The arbitrator's state. Single owner: the arbitrator task.
#[derive(Debug)]
pub struct Arbitrator {
    id: AgentId,
    horizon_ns: u64,
    learning_rate: f64,
    conflict_bps: i32,
    scores: [Score; MAX_AGENTS],
    live: HashMap<InstrumentId, [Live; MAX_AGENTS]>,
    pending: VecDeque<Pending>,
    /// Signals dropped from the pending queue because it was full.
    pub pending_dropped: u64,
}

impl Arbitrator {
    /// An arbitrator with every agent at coin-flip skill.
    pub fn new(cfg: &ArbitratorConfig) -> Self {
        Self {
            id: AgentId(cfg.id),
            horizon_ns: cfg.horizon_ms.saturating_mul(1_000_000),
            learning_rate: cfg.learning_rate.clamp(1e-6, 1.0),
            conflict_bps: cfg.conflict_bps.max(1),
            scores: [Score { brier: 0.25, hit_rate: 0.5, scored: 0 }; MAX_AGENTS],
            live: HashMap::new(),
            pending: VecDeque::new(),
            pending_dropped: 0,
        }
    }

    /// Its agent id.
    pub fn id(&self) -> AgentId {
        self.id
    }

    /// Takes note of a signal; `mid` is the instrument's mid when it was seen (raw), needed
    /// to score it later.
    pub fn observe(&mut self, s: &Signal, mid: Option<i64>) {
        let a = s.agent.index();
        if a >= MAX_AGENTS || s.agent == self.id {
            return;
        }
        let slot = &mut self.live.entry(s.instrument).or_insert([Live::default(); MAX_AGENTS])[a];
        *slot = Live { strength_bps: s.strength_bps, confidence_bps: s.confidence_bps, expires_at: s.ts_event.saturating_add(s.ttl_ns) };
        if let Some(mid) = mid.filter(|m| *m > 0) {
            if s.strength_bps != 0 {
                if self.pending.len() >= MAX_PENDING {
                    self.pending.pop_front();
                    self.pending_dropped += 1;
                }
                self.pending.push_back(Pending {
                    agent: s.agent,
                    instrument: s.instrument,
                    strength_bps: s.strength_bps.clamp(-10_000, 10_000),
                    mid,
                    due: s.ts_event.saturating_add(self.horizon_ns),
                });
            }
        }
    }

    /// Scores every signal whose horizon has passed by `now`; returns how many were scored.
    pub fn score(&mut self, now: u64, mut mid_of: impl FnMut(InstrumentId) -> Option<i64>) -> usize {
        let mut n = 0;
        while self.pending.front().is_some_and(|p| p.due <= now) {
            let Some(p) = self.pending.pop_front() else { break };
            let Some(mid) = mid_of(p.instrument).filter(|m| *m > 0) else { continue };
            if mid == p.mid {
                continue;
            }
            let up = mid > p.mid;
            let forecast = 0.5 + f64::from(p.strength_bps) / 20_000.0;
            let outcome = if up { 1.0 } else { 0.0 };
            let brier = (forecast - outcome).powi(2);
            let hit = if (p.strength_bps > 0) == up { 1.0 } else { 0.0 };
            let lr = self.learning_rate;
            let s = &mut self.scores[p.agent.index()];
            s.brier = (1.0 - lr) * s.brier + lr * brier;
            s.hit_rate = (1.0 - lr) * s.hit_rate + lr * hit;
            s.scored += 1;
            n += 1;
        }
        n
    }

    /// The agent's running Brier score (0 perfect, 0.25 coin flip, 1 always confidently wrong).
    pub fn brier(&self, agent: AgentId) -> f64 {
        self.scores.get(agent.index()).map_or(0.25, |s| s.brier)
    }

    /// The agent's running hit rate.
    pub fn hit_rate(&self, agent: AgentId) -> f64 {
        self.scores.get(agent.index()).map_or(0.5, |s| s.hit_rate)
    }

    /// Signals of the agent scored so far.
    pub fn scored(&self, agent: AgentId) -> u64 {
        self.scores.get(agent.index()).map_or(0, |s| s.scored)
    }

    /// The agent's weight, bps (10_000 = 1.0).
    pub fn weight_bps(&self, agent: AgentId) -> i32 {
        let w = (1.0 + 4.0 * (0.25 - self.brier(agent))).clamp(0.05, 2.0);
        (w * 10_000.0).round() as i32
    }

    /// Instruments with live signals.
    pub fn instruments(&self) -> impl Iterator<Item = InstrumentId> + '_ {
        self.live.keys().copied()
    }

    /// The verdict for `instrument` when its live signals conflict at `now`.
    pub fn resolve(&self, instrument: InstrumentId, now: u64) -> Option<Verdict> {
        let live = self.live.get(&instrument)?;
        let mut parties: Vec<Party> = live
            .iter()
            .enumerate()
            .filter(|(_, l)| l.expires_at > now && l.strength_bps != 0)
            .map(|(a, l)| Party {
                agent: AgentId(a as u16),
                strength_bps: l.strength_bps,
                confidence_bps: l.confidence_bps,
                weight_bps: self.weight_bps(AgentId(a as u16)),
            })
            .collect();
        let long = parties.iter().map(|p| p.strength_bps).max()?;
        let short = parties.iter().map(|p| p.strength_bps).min()?;
        if long < self.conflict_bps || short > -self.conflict_bps {
            return None;
        }
        parties.sort_by_key(|p| std::cmp::Reverse(p.strength_bps));
        let (mut num, mut den, mut dir) = (0.0, 0.0, 0.0);
        for p in &parties {
            // Confidence floors at 1 % so a zero-confidence signal still counts a little.
            let wc = f64::from(p.weight_bps) / 10_000.0 * (f64::from(p.confidence_bps) / 10_000.0).max(0.01);
            num += wc * f64::from(p.strength_bps);
            den += wc;
            dir += wc * f64::from(p.strength_bps.signum());
        }
        let strength = if den > 0.0 { (num / den).round().clamp(-10_000.0, 10_000.0) as i32 } else { 0 };
        let confidence = if den > 0.0 { ((dir / den).abs() * 10_000.0).round().min(10_000.0) as u16 } else { 0 };
        let mut explanation = String::from("conflict:");
        for p in &parties {
            let _ = write!(
                explanation,
                " agent {} {:+} (conf {}%, weight {:.2});",
                p.agent.0,
                p.strength_bps,
                p.confidence_bps / 100,
                f64::from(p.weight_bps) / 10_000.0
            );
        }
        let _ = write!(explanation, " weighted verdict {strength:+}");
        Some(Verdict { instrument, strength_bps: strength, confidence_bps: confidence, parties, explanation })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn sig(agent: u16, strength: i32, ts: u64) -> Signal {
        Signal {
            ts_event: ts,
            ts_recv: ts,
            instrument: InstrumentId(0),
            agent: AgentId(agent),
            strength_bps: strength,
            confidence_bps: 8_000,
            ttl_ns: 10 * SEC,
            ..Signal::default()
        }
    }

    #[test]
    fn weights_move_toward_the_agent_that_was_right() {
        let cfg = ArbitratorConfig { horizon_ms: 5_000, learning_rate: 0.1, ..ArbitratorConfig::default() };
        let mut arb = Arbitrator::new(&cfg);
        let (bull, bear) = (AgentId(2), AgentId(3));
        assert_eq!(arb.weight_bps(bull), arb.weight_bps(bear));
        // The market rises 1 unit a second; the bull is right every time.
        for t in 0..60u64 {
            let (now, mid) = (t * SEC, 100_000 + t as i64);
            arb.score(now, |_| Some(mid));
            arb.observe(&sig(2, 6_000, now), Some(mid));
            arb.observe(&sig(3, -6_000, now), Some(mid));
        }
        assert_eq!(arb.scored(bull), 55);
        assert!(arb.brier(bull) < 0.1, "bull {}", arb.brier(bull));
        assert!(arb.brier(bear) > 0.5, "bear {}", arb.brier(bear));
        assert!((arb.hit_rate(bull) - 1.0).abs() < 0.01 && arb.hit_rate(bear) < 0.01);
        assert!(arb.weight_bps(bull) > 15_000, "{}", arb.weight_bps(bull));
        assert!(arb.weight_bps(bear) < 3_000, "{}", arb.weight_bps(bear));

        // They disagree now: the verdict sides with the bull.
        let v = arb.resolve(InstrumentId(0), 59 * SEC).expect("a conflict");
        assert!(v.strength_bps > 3_000, "{v:?}");
        assert_eq!(v.parties[0].agent, bull);
        assert_eq!(v.conflict_bps(), 6_000);
        assert!(v.explanation.contains("agent 2 +6000") && v.explanation.contains("agent 3 -6000"), "{}", v.explanation);
        // Once the signals expire there is nothing to resolve.
        assert!(arb.resolve(InstrumentId(0), 80 * SEC).is_none());
    }

    #[test]
    fn no_conflict_below_the_threshold_or_on_one_side() {
        let arb_cfg = ArbitratorConfig::default();
        let mut arb = Arbitrator::new(&arb_cfg);
        arb.observe(&sig(2, 5_000, 0), Some(100));
        arb.observe(&sig(3, 4_000, 0), Some(100));
        assert!(arb.resolve(InstrumentId(0), SEC).is_none(), "both long");
        arb.observe(&sig(3, -1_000, 0), Some(100));
        assert!(arb.resolve(InstrumentId(0), SEC).is_none(), "short side too weak");
        arb.observe(&sig(3, -3_000, 0), Some(100));
        let v = arb.resolve(InstrumentId(0), SEC).unwrap();
        // Equal weights and confidence: (5000 − 3000) / 2.
        assert_eq!(v.strength_bps, 1_000);
        assert_eq!(v.confidence_bps, 0, "one for, one against");
        // Its own signals are ignored; flat moves are not scored.
        arb.observe(&sig(arb_cfg.id, 9_000, 0), Some(100));
        assert_eq!(arb.resolve(InstrumentId(0), SEC).unwrap().parties.len(), 2);
        assert_eq!(arb.score(100 * SEC, |_| Some(100)), 0);
    }
}
