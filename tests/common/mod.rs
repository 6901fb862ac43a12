//! A recorded-style input for engine tests: the synthetic market on simulated time, with
//! agent signals and operator commands mixed in.

use sapphire_core::event::{AgentId, Control, ControlKind, Event, Signal};
use sapphire_core::fixed::Quantity;
use sapphire_core::instrument::{Instrument, InstrumentId, InstrumentRegistry};
use sapphire_core::risk::{ALL_AGENTS, ALL_INSTRUMENTS};
use sapphire_gateway::synthetic::{SyntheticConfig, SyntheticMarket};

/// `steps` market steps 1 ms apart (about 4 events each), a signal every 997 steps, a
/// pause/resume of agent 3 in the middle, and operator orders: a manual buy for agent 4 at a
/// third, that agent's flatten a second later, and a flatten of everything at three quarters.
pub fn scripted_events(seed: u64, steps: u64) -> (Vec<Instrument>, Vec<Event>) {
    let mut registry = InstrumentRegistry::new();
    let mut market = SyntheticMarket::new(SyntheticConfig { seed, ..Default::default() }, &mut registry).expect("synthetic instruments");
    let mut events = Vec::with_capacity(steps as usize * 6);
    let start = 1_700_000_000_000_000_000u64;
    for s in 0..steps {
        let ts = start + s * 1_000_000;
        market.step(ts, &mut |e| events.push(e));
        if s % 997 == 500 {
            let k = s / 997;
            events.push(Event::Signal(Signal {
                ts_event: ts,
                ts_recv: ts,
                instrument: InstrumentId((k % registry.len() as u64) as u32),
                agent: AgentId(2 + (k % 2) as u16),
                strength_bps: if k % 3 == 0 { -8_000 } else { 6_000 },
                confidence_bps: 9_000,
                ttl_ns: 2_000_000_000,
                signal_id: k,
                ..Default::default()
            }));
        }
        if s == steps / 2 {
            events.push(Event::Control(Control {
                ts_event: ts,
                ts_recv: ts,
                kind: ControlKind::PauseAgent,
                agent: AgentId(3),
                ..Default::default()
            }));
        }
        let command = |kind, agent, instrument, value| {
            Event::Control(Control { ts_event: ts, ts_recv: ts, kind, agent, instrument, value, ..Default::default() })
        };
        if s == steps / 3 {
            let qty = Quantity::parse("0.005").expect("static quantity").raw;
            events.push(command(ControlKind::ManualOrder, AgentId(4), InstrumentId(0), qty));
        }
        if s == steps / 3 + 1_000 {
            events.push(command(ControlKind::Flatten, AgentId(4), ALL_INSTRUMENTS, 0));
        }
        if s == steps * 3 / 4 {
            events.push(command(ControlKind::Flatten, ALL_AGENTS, ALL_INSTRUMENTS, 0));
        }
        if s == steps / 2 + steps / 10 {
            events.push(Event::Control(Control {
                ts_event: ts,
                ts_recv: ts,
                kind: ControlKind::ResumeAgent,
                agent: AgentId(3),
                ..Default::default()
            }));
        }
    }
    (registry.iter().cloned().collect(), events)
}
