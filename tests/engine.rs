//! The engine end to end: determinism, both layouts, the journal beside the engine.

mod common;

use sapphire_core::engine::{Engine, EngineConfig, EngineOutput, Output};
use sapphire_core::event::{Event, ExecKind};
use sapphire_core::journal::{InputJournal, MemoryJournal};
use sapphire_core::order::{Order, OrderAction};
use sapphire_core::pipeline::{Layout, Pipeline, PipelineConfig};
use sapphire_core::ring::Poll;
use sapphire_core::wait::WaitStrategy;

fn run_direct(config: &EngineConfig, instruments: &[sapphire_core::instrument::Instrument], events: &[Event]) -> (Vec<Output>, Engine) {
    let mut engine = Engine::new(config, instruments);
    let mut outputs = Vec::new();
    let mut outbound: Vec<Order> = Vec::new();
    for (seq, e) in events.iter().enumerate() {
        engine.process(seq as i64, e, &mut outbound, &mut outputs);
    }
    (outputs, engine)
}

fn count(outputs: &[Output]) -> (usize, usize, usize) {
    let orders = outputs.iter().filter(|o| matches!(o.output, EngineOutput::Order(Order { action: OrderAction::New, .. }))).count();
    let fills = outputs.iter().filter(|o| matches!(o.output, EngineOutput::Exec(r) if r.last_qty.raw > 0)).count();
    let refusals = outputs.iter().filter(|o| matches!(o.output, EngineOutput::Risk(sapphire_core::risk::RiskOutput::Refusal(_)))).count();
    (orders, fills, refusals)
}

#[test]
fn same_events_same_orders_and_fills() {
    let (instruments, mut events) = common::scripted_events(11, 60_000);
    // A final timer is a sync point: every paper fill reaches the portfolio.
    let end = events.last().unwrap().ts_event() + 1;
    events.push(Event::Timer(sapphire_core::event::Timer { ts_event: end, ts_recv: end, timer_id: 0, _pad: 0 }));
    let config = EngineConfig::default();
    let (a, engine) = run_direct(&config, &instruments, &events);
    let (b, _) = run_direct(&config, &instruments, &events);
    let (orders, fills, _) = count(&a);
    assert!(orders >= 20 && fills >= 10, "a test that trades: {orders} orders, {fills} fills");
    assert_eq!(a, b, "two runs over the same events differ");
    // Every order is attributed to an agent, and every client order id is unique.
    let mut ids: Vec<u64> = a
        .iter()
        .filter_map(|o| match o.output {
            EngineOutput::Order(o) if o.action == OrderAction::New => Some(o.client_order_id),
            _ => None,
        })
        .collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "duplicate client order ids");
    // Agent signals were traded on, and the in-core strategies traded too.
    let agents: std::collections::BTreeSet<u16> = a
        .iter()
        .filter_map(|o| match o.output {
            EngineOutput::Order(o) if o.action == OrderAction::New => Some(o.agent.0),
            _ => None,
        })
        .collect();
    assert!(agents.contains(&0) || agents.contains(&1), "in-core strategies: {agents:?}");
    assert!(agents.iter().any(|&a| a >= 2), "agent signals: {agents:?}");
    // Positions in the portfolio equal the sum of fills.
    let fills_net: i64 = a
        .iter()
        .filter_map(|o| match o.output {
            EngineOutput::Exec(r) if r.last_qty.raw > 0 => Some(r.last_qty.raw * r.side.sign()),
            _ => None,
        })
        .sum();
    let pf = engine.stages.risk.risk.portfolio();
    let net: i64 = (0..instruments.len()).map(|i| pf.net_position(sapphire_core::instrument::InstrumentId(i as u32)).raw).sum();
    assert_eq!(net, fills_net, "positions are the sum of fills");
    assert!(pf.total().fees.raw != 0, "fees were charged");
    // The operator's orders: agent 4's manual buy filled, its flatten closed it with a
    // reduce-only order, and both flattens ended (the replay above made the same orders).
    let agent4: Vec<Order> = a
        .iter()
        .filter_map(|o| match o.output {
            EngineOutput::Order(o) if o.action == OrderAction::New && o.agent.0 == 4 => Some(o),
            _ => None,
        })
        .collect();
    assert!(agent4.len() >= 2 && !agent4[0].reduce_only && agent4[1..].iter().all(|o| o.reduce_only), "{agent4:?}");
    let flattens: Vec<(u16, i64)> = a
        .iter()
        .filter_map(|o| match o.output {
            EngineOutput::Risk(sapphire_core::risk::RiskOutput::Alert(al)) if al.kind == sapphire_core::risk::AlertKind::Flattened => {
                Some((al.agent.0, al.value))
            }
            _ => None,
        })
        .collect();
    assert_eq!(flattens.len(), 2, "{flattens:?}");
    assert_eq!(flattens[0], (4, 0), "agent 4 flat");
    assert_eq!(pf.position(sapphire_core::event::AgentId(4), sapphire_core::instrument::InstrumentId(0)).qty.raw, 0);
}

fn run_pipeline(
    layout: Layout,
    config: &EngineConfig,
    instruments: &[sapphire_core::instrument::Instrument],
    events: &[Event],
) -> (Vec<Output>, sapphire_core::pipeline::PipelineReport, u64) {
    run_pipeline_with(layout, config, instruments, events, Box::new(MemoryJournal::keeping()))
}

fn run_pipeline_with(
    layout: Layout,
    config: &EngineConfig,
    instruments: &[sapphire_core::instrument::Instrument],
    events: &[Event],
    journal: Box<dyn InputJournal>,
) -> (Vec<Output>, sapphire_core::pipeline::PipelineReport, u64) {
    let pipeline_config = PipelineConfig {
        layout,
        link_capacity: 1 << 12,
        ring_capacity: 1 << 12,
        engine_wait: WaitStrategy::Yield,
        journal_wait: WaitStrategy::Yield,
        latency_sample_every: 1,
        ..PipelineConfig::default()
    };
    let mut pipeline = Pipeline::start(&pipeline_config, config, instruments, journal);
    let mut outputs_rx = pipeline.take_outputs().expect("outputs");
    let collector = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut idle = 0;
        loop {
            match outputs_rx.poll(1_024, |o| got.push(*o)) {
                Poll::Handled(_) => idle = 0,
                Poll::Empty => WaitStrategy::Yield.idle(&mut idle),
                Poll::Closed => return got,
            }
        }
    });
    let mut producer = pipeline.producer();
    for e in events {
        producer.publish(WaitStrategy::Yield, *e).expect("ring open");
    }
    let stats = pipeline.stats();
    let report = pipeline.shutdown();
    let outputs = collector.join().expect("collector");
    (outputs, report, stats.outputs_dropped.load(std::sync::atomic::Ordering::Relaxed))
}

#[test]
fn fused_and_split_layouts_match_the_direct_engine() {
    let (instruments, events) = common::scripted_events(5, 30_000);
    let config = EngineConfig::default();
    let (direct, _) = run_direct(&config, &instruments, &events);
    assert!(count(&direct).1 > 0, "the scenario fills orders");
    for layout in [Layout::Fused, Layout::Split] {
        let (outputs, report, dropped) = run_pipeline(layout, &config, &instruments, &events);
        assert_eq!(dropped, 0, "{layout:?}: outputs dropped");
        assert_eq!(outputs.len(), direct.len(), "{layout:?}: output count");
        assert!(outputs == direct, "{layout:?}: outputs differ from the direct engine");
        // The journal stage saw every event, in order.
        assert_eq!(report.journal.appended(), events.len() as u64, "{layout:?}: journaled");
        assert_eq!(
            report.stages.route.counters.orders as usize,
            direct.iter().filter(|o| matches!(o.output, EngineOutput::Order(_))).count()
        );
        let names: Vec<_> = report.latency.iter().map(|l| l.name).collect();
        assert_eq!(names, ["book", "aggregate", "risk", "route", "tick_to_order", "end_to_end"], "{layout:?}");
        assert!(report.latency[0].count >= events.len() as u64, "{layout:?}: book latency recorded per event");
    }
}

#[test]
fn external_venue_mode_sends_orders_outbound_and_takes_reports_from_the_ring() {
    let (instruments, events) = common::scripted_events(5, 20_000);
    let config = EngineConfig { venue: sapphire_core::engine::VenueMode::External, ..EngineConfig::default() };
    let mut engine = Engine::new(&config, &instruments);
    let mut outputs = Vec::new();
    let mut outbound: Vec<Order> = Vec::new();
    let mut seq = 0i64;
    for e in &events {
        engine.process(seq, e, &mut outbound, &mut outputs);
        seq += 1;
        // A venue that rejects everything, answering through the ring.
        for o in outbound.drain(..) {
            if o.action == OrderAction::New {
                let reject = Event::ExecReport(sapphire_core::event::ExecReport {
                    ts_event: e.ts_event(),
                    kind: ExecKind::Rejected,
                    reason: sapphire_core::event::RejectReason::VenueInsufficientBalance,
                    client_order_id: o.client_order_id,
                    agent: o.agent,
                    instrument: o.instrument,
                    ..Default::default()
                });
                engine.process(seq, &reject, &mut Vec::new(), &mut outputs);
                seq += 1;
            }
        }
    }
    let (orders, fills, _) = count(&outputs);
    assert!(orders > 0);
    assert_eq!(fills, 0);
    assert_eq!(engine.stages.risk.risk.open_orders(), 0, "rejects closed every order");
}

/// A journal whose disk fills after `capacity` events: every later append fails.
struct FillingJournal {
    capacity: u64,
    appended: u64,
    failed: u64,
}

impl InputJournal for FillingJournal {
    fn append(&mut self, _seq: i64, _event: &Event, _end_of_batch: bool) {
        if self.appended < self.capacity && self.failed == 0 {
            self.appended += 1;
        } else {
            self.failed += 1;
        }
    }
    fn written(&self) -> Option<i64> {
        self.appended.checked_sub(1).map(|s| s as i64)
    }
    fn appended(&self) -> u64 {
        self.appended
    }
    fn errors(&self) -> u64 {
        self.failed
    }
    fn first_error(&self) -> Option<String> {
        (self.failed > 0).then(|| "no space left".to_string())
    }
}

#[test]
fn when_the_journal_fails_only_what_it_holds_leaves_the_core() {
    let (instruments, events) = common::scripted_events(5, 30_000);
    let config = EngineConfig::default();
    let (direct, _) = run_direct(&config, &instruments, &events);
    let capacity = 12_000u64;
    // What the engine decides on the journaled events, exactly; nothing after them.
    let expected: Vec<Output> = direct.iter().filter(|o| o.seq < capacity as i64).copied().collect();
    assert!(count(&expected).1 > 0 && expected.len() < direct.len(), "the scenario trades on both sides of the failure");
    for layout in [Layout::Fused, Layout::Split] {
        let journal = Box::new(FillingJournal { capacity, appended: 0, failed: 0 });
        let (outputs, report, dropped) = run_pipeline_with(layout, &config, &instruments, &events, journal);
        assert_eq!(dropped, 0, "{layout:?}: outputs dropped");
        assert_eq!(report.journal.appended(), capacity, "{layout:?}");
        assert!(outputs == expected, "{layout:?}: {} outputs released, {} expected", outputs.len(), expected.len());
    }
}

#[test]
fn an_agent_over_its_own_margin_is_cut_back_the_same_way_in_every_run_and_through_the_pipeline() {
    use sapphire_core::event::{AgentId, Control, ControlKind, LimitKind};
    use sapphire_core::risk::{AlertKind, RiskOutput};
    let (instruments, mut events) = common::scripted_events(11, 60_000);
    let config = EngineConfig::default();
    // The first point past the middle where agent 2 holds more than $100: there an operator
    // cuts its budget to $50, so its margin is far over 95% of it.
    let mut engine = Engine::new(&config, &instruments);
    let (mut outbound, mut sink) = (Vec::new(), Vec::new());
    let mut at = None;
    for (seq, e) in events.iter().enumerate() {
        engine.process(seq as i64, e, &mut outbound, &mut sink);
        let exposure = engine.stages.risk.risk.portfolio().agent_summary(AgentId(2)).gross_exposure;
        if seq > events.len() / 2 && matches!(e, Event::Timer(_)) && exposure > sapphire_core::fixed::Money::from_units(100) {
            at = Some(seq + 1);
            break;
        }
    }
    let at = at.expect("agent 2 holds a position after the middle of the run");
    let ts = events[at - 1].ts_event();
    let budget = sapphire_core::fixed::Money::from_units(50).raw;
    let cut_budget = Control {
        ts_event: ts,
        ts_recv: ts,
        kind: ControlKind::SetLimit,
        limit: LimitKind::AgentBudget,
        agent: AgentId(2),
        value: budget,
        ..Default::default()
    };
    events.insert(at, Event::Control(cut_budget));
    let end = events.last().unwrap().ts_event() + 1;
    events.push(Event::Timer(sapphire_core::event::Timer { ts_event: end, ts_recv: end, timer_id: 0, _pad: 0 }));

    let (a, _) = run_direct(&config, &instruments, &events);
    let ladder: Vec<(usize, i64)> = a
        .iter()
        .enumerate()
        .filter_map(|(k, o)| match o.output {
            EngineOutput::Risk(RiskOutput::Alert(al)) if al.kind == AlertKind::AgentMarginLadder && al.agent == AgentId(2) => {
                Some((k, al.value))
            }
            _ => None,
        })
        .collect();
    let (first, level) = *ladder.first().expect("agent 2's ladder moved");
    assert_eq!(level, 2, "$100+ on a $50 budget: deleverage at once");
    assert!(a[first].seq > at as i64, "at the first timer after the change");
    // Its resting orders were cancelled and a reduce-only IOC cut went out at the same event.
    let same_event: Vec<Order> = a
        .iter()
        .filter(|o| o.seq == a[first].seq)
        .filter_map(|o| match o.output {
            EngineOutput::Order(o) if o.agent == AgentId(2) => Some(o),
            _ => None,
        })
        .collect();
    assert!(same_event.iter().any(|o| o.action == OrderAction::New && o.reduce_only), "a cut: {same_event:?}");
    // Until it is back to normal, everything agent 2 sends reduces.
    let back = ladder.iter().find(|(_, v)| *v == 0).map_or(a.len(), |(k, _)| *k);
    for o in &a[first..back] {
        if let EngineOutput::Order(o) = o.output {
            if o.agent == AgentId(2) && o.action == OrderAction::New {
                assert!(o.reduce_only, "agent 2 opened risk while over its margin: {o:?}");
            }
        }
    }
    // Deterministic: the same events give the same outputs, directly and through the
    // pipeline with its journal stage (what a replay of the journal runs).
    let (b, _) = run_direct(&config, &instruments, &events);
    assert!(a == b, "two runs differ");
    let (piped, report, dropped) = run_pipeline(Layout::Fused, &config, &instruments, &events);
    assert_eq!(dropped, 0);
    assert_eq!(report.journal.appended(), events.len() as u64, "the control was journaled with the market");
    assert!(piped == a, "the pipeline differs from the direct engine");
}
