//! `sapphire agents --rehearse DURATION`: the configured rule-based agents against the seeded
//! synthetic market `sapphire run` trades, on event time instead of the wall clock. Nothing
//! waits: the market steps to each agent's next sampling time and the agent decides as it
//! would in a run. The same seed and configuration print the same lines on any machine, so
//! a test (and an operator) can check that every agent speaks, and why, within a given time
//! of the start.

use crate::config;
use sapphire_agents::context::{AgentState, ContextSource, SignalSink, Top};
use sapphire_agents::{AgentsConfig, AgentsRuntime, InstrumentRef};
use sapphire_core::event::{AgentId, Event, Signal};
use sapphire_core::instrument::{InstrumentId, InstrumentRegistry};
use sapphire_gateway::synthetic::{SyntheticConfig, SyntheticMarket};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Event time the rehearsal starts at (2026-01-01T00:00:00Z): any fixed value will do.
const START_NS: u64 = 1_767_225_600_000_000_000;

/// The market steps this often, ns of event time: about as often as `sapphire run`'s
/// synthetic market at its default 100,000 events a second.
const STEP_NS: u64 = 100_000;

/// The synthetic market, stepped up to the time the agents sample at.
struct Market {
    market: SyntheticMarket,
    tops: Vec<Option<Top>>,
    next_step: u64,
}

impl Market {
    fn advance(&mut self, now: u64) {
        while self.next_step <= now {
            let tops = &mut self.tops;
            self.market.step(self.next_step, &mut |e| {
                if let Event::Quote(q) = e {
                    tops[q.instrument.index()] = Some(Top {
                        bid: q.bid_price,
                        ask: q.ask_price,
                        bid_qty: q.bid_qty,
                        ask_qty: q.ask_qty,
                        ts_event: q.ts_event,
                        in_sync: true,
                    });
                }
            });
            self.next_step += STEP_NS;
        }
    }
}

/// The agents' view: the newest quote of each instrument; no fills (a rehearsal sends no
/// orders), so every agent is flat with no PnL.
struct MarketContext(Arc<Mutex<Market>>);

impl ContextSource for MarketContext {
    fn top(&self, instrument: InstrumentId) -> Option<Top> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).tops.get(instrument.index()).copied().flatten()
    }

    fn agent_state(&self, _: AgentId, _: InstrumentId) -> AgentState {
        AgentState::default()
    }
}

/// Takes every signal (they are counted by the runtime).
struct Discard;

impl SignalSink for Discard {
    fn publish(&mut self, _: Signal) -> bool {
        true
    }
}

/// Runs the rule agents of `cfg` for `duration` of event time and prints one line each.
pub fn rehearse(cfg: &config::RunConfig, duration: Duration) -> anyhow::Result<()> {
    let synthetic = SyntheticConfig {
        seed: cfg.market.seed,
        instruments: crate::run::synthetic_instruments(&cfg.market.symbols),
        depth: cfg.market.depth,
        timer_every_ns: 0,
    };
    let symbols: Vec<String> = synthetic.instruments.iter().map(|i| i.symbol.clone()).collect();
    let market =
        SyntheticMarket::new(synthetic.clone(), &mut InstrumentRegistry::new()).map_err(|e| config::refuse("market.symbols", e))?;
    // Ids depend on the configuration alone: the market's registry gave these same ones.
    let ids = SyntheticMarket::register(&synthetic, &mut InstrumentRegistry::new()).map_err(|e| config::refuse("market.symbols", e))?;
    let refs = ids.into_iter().zip(&symbols).map(|(id, s)| InstrumentRef { id, symbol: s.clone() }).collect();
    let agents = rule_agents(&cfg.agents);
    let now = Arc::new(AtomicU64::new(START_NS));
    let clock_now = Arc::clone(&now);
    let rt = AgentsRuntime::new(agents.clone(), refs, Arc::new(move || clock_now.load(Relaxed)))
        .map_err(|e| config::refuse("agents.runtime", e))?;
    let state = Arc::new(Mutex::new(Market { market, tops: vec![None; symbols.len()], next_step: START_NS }));
    let ctx = Arc::new(MarketContext(Arc::clone(&state)));
    let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    let metrics = rt.rehearse(ctx, Box::new(Discard), START_NS, nanos, &mut |t| {
        now.store(t, Relaxed);
        state.lock().unwrap_or_else(|p| p.into_inner()).advance(t);
    });
    outln!(
        "rehearsal: {:.1}s of event time on the synthetic market (seed {}, {}), rule agents only",
        duration.as_secs_f64(),
        cfg.market.seed,
        symbols.join(",")
    );
    let symbol_of = |i: InstrumentId| symbols.get(i.index()).cloned().unwrap_or_else(|| format!("#{}", i.0));
    for a in &agents.agent {
        if let Some(c) = metrics.agent(AgentId(a.id)) {
            outln!("  {}", c.summary_line(&a.display_name(), &symbol_of));
        }
    }
    Ok(())
}

/// The roster's enabled rule agents; no arbitrator, no transcript (a rehearsal asks no model
/// and records nothing).
fn rule_agents(agents: &AgentsConfig) -> AgentsConfig {
    let mut a = agents.clone();
    a.agent.retain(|c| c.enabled && !c.kind.uses_llm());
    a.arbitrator.enabled = false;
    a.transcript_path = None;
    a
}
