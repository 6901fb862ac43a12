//! What the agents runtime reads and where its signals go, in `sapphire run` (in process) and
//! in `sapphire agents` (a process of its own, through Redis).
//!
//! In process: tops of book from the book stage's [`MarketBoard`], each agent's position from
//! the fills the edge thread sees, its PnL from the edge's per-agent figures; signals into the
//! inbound ring (so they are journaled, and a replay re-reads them instead of asking a model).

use sapphire_agents::context::{AgentState, ContextSource, SignalSink, Top};
use sapphire_core::aggregate::MAX_AGENTS;
use sapphire_core::board::MarketBoard;
use sapphire_core::engine::{EngineOutput, Output};
use sapphire_core::event::{AgentId, Event, Side, Signal};
use sapphire_core::fixed::{Money, Quantity};
use sapphire_core::instrument::InstrumentId;
use sapphire_core::latency::unix_nanos;
use sapphire_core::ownership::{AgentOwners, Ingress};
use sapphire_core::ring::Producer;
use sapphire_gateway::api::EdgeState;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Each agent's net position per instrument, kept from fills (raw quantity units).
#[derive(Debug)]
pub struct AgentPositions {
    instruments: usize,
    qty: Box<[AtomicI64]>,
    pnl: Box<[AtomicI64]>,
}

impl AgentPositions {
    /// A table for every agent id and `instruments` instruments.
    pub fn new(instruments: usize) -> Self {
        Self {
            instruments,
            qty: (0..MAX_AGENTS * instruments.max(1)).map(|_| AtomicI64::new(0)).collect(),
            pnl: (0..MAX_AGENTS).map(|_| AtomicI64::new(0)).collect(),
        }
    }

    /// Takes fills (positions) and per-agent PnL snapshots from an engine output.
    pub fn on_output(&self, o: &Output) {
        match o.output {
            EngineOutput::Exec(r) if r.last_qty.raw > 0 => {
                let (a, i) = (r.agent.index(), r.instrument.index());
                if a < MAX_AGENTS && i < self.instruments {
                    let signed = if r.side == Side::Buy { r.last_qty.raw } else { -r.last_qty.raw };
                    self.qty[a * self.instruments + i].fetch_add(signed, Ordering::Relaxed);
                }
            }
            EngineOutput::AgentPnl { agent, summary, .. } => {
                if let Some(p) = self.pnl.get(agent.index()) {
                    p.store((summary.equity - summary.capital).raw, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }

    /// An agent's state in an instrument.
    pub fn state(&self, agent: AgentId, instrument: InstrumentId) -> AgentState {
        let (a, i) = (agent.index(), instrument.index());
        let position = if a < MAX_AGENTS && i < self.instruments { self.qty[a * self.instruments + i].load(Ordering::Relaxed) } else { 0 };
        let pnl = self.pnl.get(a).map_or(0, |p| p.load(Ordering::Relaxed));
        AgentState { position: Quantity::from_raw(position), pnl: Money::from_raw(pnl) }
    }
}

/// Market context over a board and a position table.
#[derive(Debug)]
pub struct BoardContext {
    /// Tops of book.
    pub board: Arc<MarketBoard>,
    /// Positions and PnL.
    pub positions: Arc<AgentPositions>,
}

impl ContextSource for BoardContext {
    fn top(&self, instrument: InstrumentId) -> Option<Top> {
        let t = self.board.read(instrument)?;
        Some(Top { bid: t.bid, ask: t.ask, bid_qty: t.bid_qty, ask_qty: t.ask_qty, ts_event: t.ts_event, in_sync: t.in_sync })
    }

    fn agent_state(&self, agent: AgentId, instrument: InstrumentId) -> AgentState {
        self.positions.state(agent, instrument)
    }
}

/// Signals into the inbound ring; a full ring refuses (the runtime counts it), never waits.
/// A signal for an agent id the in-process runtime does not own is refused like a full ring
/// (the runtime counts it): ownership is fixed at start, so only a bug can send one.
#[derive(Debug)]
pub struct RingSink {
    /// Into the inbound ring.
    pub producer: Producer<Event>,
    /// Each agent id's one producer.
    pub owners: AgentOwners,
}

impl SignalSink for RingSink {
    fn publish(&mut self, mut s: Signal) -> bool {
        if self.owners.check(s.agent, Ingress::InProcess).is_err() {
            return false;
        }
        s.ts_recv = unix_nanos();
        self.producer.try_publish(Event::Signal(s)).is_ok()
    }
}

/// The edge's per-agent figures also reach the position table (keeps one source of truth for
/// what the edge thread has seen).
pub fn seed_pnl(positions: &AgentPositions, edge: &EdgeState) {
    for (agent, _, summary) in edge.agents() {
        if let Some(p) = positions.pnl.get(usize::from(agent)) {
            p.store((summary.equity - summary.capital).raw, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sapphire_core::event::ExecReport;

    #[test]
    fn fills_move_each_agents_position_and_pnl_snapshots_its_pnl() {
        let table = AgentPositions::new(2);
        let fill = |agent: u16, inst: u32, side, qty| Output {
            seq: 0,
            output: EngineOutput::Exec(ExecReport {
                agent: AgentId(agent),
                instrument: InstrumentId(inst),
                side,
                last_qty: Quantity::from_units(qty),
                ..ExecReport::default()
            }),
        };
        table.on_output(&fill(3, 1, Side::Buy, 5));
        table.on_output(&fill(3, 1, Side::Sell, 2));
        table.on_output(&fill(4, 0, Side::Sell, 1));
        // Out-of-range ids are ignored, not a panic.
        table.on_output(&fill(99, 7, Side::Buy, 1));
        assert_eq!(table.state(AgentId(3), InstrumentId(1)).position, Quantity::from_units(3));
        assert_eq!(table.state(AgentId(4), InstrumentId(0)).position, Quantity::from_units(-1));
        assert_eq!(table.state(AgentId(3), InstrumentId(0)).position, Quantity::ZERO);
        let summary = sapphire_core::portfolio::PnlSummary {
            equity: Money::from_units(1_010),
            capital: Money::from_units(1_000),
            ..Default::default()
        };
        table.on_output(&Output { seq: 1, output: EngineOutput::AgentPnl { ts_event: 1, agent: AgentId(3), summary } });
        assert_eq!(table.state(AgentId(3), InstrumentId(1)).pnl, Money::from_units(10));
    }

    #[test]
    fn the_in_process_sink_takes_only_the_ids_the_runtime_owns() {
        use sapphire_core::ownership::Owner;
        let (producer, mut consumers) = sapphire_core::ring::ring::<Event>(8, 1);
        let mut owners = AgentOwners::default();
        owners.assign(3, Owner::InProcess).unwrap();
        let mut sink = RingSink { producer, owners };
        let signal = |agent| Signal { agent: AgentId(agent), ..Signal::default() };
        assert!(sink.publish(signal(3)));
        assert!(!sink.publish(signal(4)), "4 is Redis's");
        assert!(!sink.publish(signal(0)), "0 is the engine's");
        let mut seen = Vec::new();
        consumers[0].poll(8, |e, _, _| {
            if let Event::Signal(s) = e {
                seen.push(s.agent.0);
            }
        });
        assert_eq!(seen, [3]);
    }
}
