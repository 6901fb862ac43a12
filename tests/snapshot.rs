//! Snapshots: the engine restored from a snapshot and the journal after it is in exactly the
//! state of a replay of the whole journal — at every cut point, over generated event
//! sequences with fills (paper and venue reports), orders, agent signals and risk changes;
//! the running pipeline's snapshots (fused and split) are those states byte for byte; a
//! damaged newest snapshot falls back to the one before, then to the whole journal.

mod common;

use proptest::prelude::*;
use sapphire_core::engine::{Engine, EngineConfig, Output, Stages};
use sapphire_core::event::{AgentId, Control, ControlKind, Event, ExecKind, ExecReport, LimitKind, Liquidity, Side, Signal};
use sapphire_core::fixed::{Money, Price, Quantity};
use sapphire_core::instrument::{Instrument, InstrumentId, InstrumentRegistry};
use sapphire_core::journal::InputJournal;
use sapphire_core::order::Order;
use sapphire_core::pipeline::{Layout, Pipeline, PipelineConfig};
use sapphire_core::snapshot::{Schedule, SnapshotPolicy};
use sapphire_core::wait::WaitStrategy;
use sapphire_gateway::synthetic::{SyntheticConfig, SyntheticMarket};
use sapphire_persistence::journal::{JournalConfig, JournalWriter};
use sapphire_persistence::recovery::{check_instruments, recover_from_snapshot};
use sapphire_persistence::snapshot::{self, Fingerprints};
use std::time::Duration;

/// What the generator mixes into the market: at a step, an event of some kind.
#[derive(Clone, Debug)]
struct Extra {
    step: u64,
    kind: u8,
    a: u32,
    b: i64,
}

/// The synthetic market for `steps` ms, with `extras` mixed in: agent signals, controls (halt,
/// resume, limit changes, agent pauses) and venue execution reports (fills the portfolio
/// takes as they come).
fn events(seed: u64, steps: u64, extras: &[Extra]) -> (Vec<Instrument>, Vec<Event>) {
    // Two strong signals early, so every sequence trades; a halt or an agent pause is lifted
    // 150 ms later, so none stops trading for good.
    let mut extras = extras.to_vec();
    extras.push(Extra { step: 150, kind: 0, a: 0, b: 9_000 });
    extras.push(Extra { step: 400, kind: 0, a: 1, b: -9_000 });
    for x in extras.clone() {
        match x.kind % 10 {
            4 => extras.push(Extra { step: x.step + 150, kind: 5, ..x }),
            7 => extras.push(Extra { step: x.step + 150, kind: 8, ..x }),
            _ => {}
        }
    }
    let mut registry = InstrumentRegistry::new();
    let mut market = SyntheticMarket::new(SyntheticConfig { seed, ..Default::default() }, &mut registry).expect("synthetic instruments");
    let n = registry.len() as u32;
    let mut out = Vec::with_capacity(steps as usize * 5);
    let mut mids = vec![Price::ZERO; n as usize];
    let start = 1_700_000_000_000_000_000u64;
    for s in 0..steps {
        let ts = start + s * 1_000_000;
        market.step(ts, &mut |e| {
            if let Event::Quote(q) = &e {
                mids[q.instrument.index()] = Price::from_raw((q.bid_price.raw + q.ask_price.raw) / 2);
            }
            out.push(e)
        });
        for x in extras.iter().filter(|x| x.step == s) {
            let instrument = InstrumentId(x.a % n);
            let agent = AgentId(2 + (x.a % 5) as u16);
            let control =
                |kind, limit, value| Event::Control(Control { ts_event: ts, ts_recv: ts, kind, limit, agent, value, ..Default::default() });
            out.push(match x.kind % 10 {
                0..=3 => Event::Signal(Signal {
                    ts_event: ts,
                    ts_recv: ts,
                    instrument,
                    agent,
                    strength_bps: (x.b % 10_001) as i32,
                    confidence_bps: 5_000 + (x.a % 5_000) as u16,
                    ttl_ns: 200_000_000 + (x.a as u64 % 5) * 1_000_000_000,
                    signal_id: s,
                    ..Default::default()
                }),
                4 => control(ControlKind::Halt, LimitKind::None, 0),
                5 => control(ControlKind::Resume, LimitKind::None, 0),
                6 => {
                    let (limit, value) = match x.a % 4 {
                        0 => (LimitKind::MaxOpenOrders, 1 + x.b.rem_euclid(30)),
                        1 => (LimitKind::PriceBandBps, 5 + x.b.rem_euclid(500)),
                        2 => (LimitKind::MaxOrderNotional, Money::from_units(50 + x.b.rem_euclid(900)).raw),
                        _ => (LimitKind::DrawdownHaltBps, 100 + x.b.rem_euclid(3_000)),
                    };
                    control(ControlKind::SetLimit, limit, value)
                }
                7 => control(ControlKind::PauseAgent, LimitKind::None, 0),
                8 => control(ControlKind::ResumeAgent, LimitKind::None, 0),
                _ => {
                    // A fill the venue reports (as an external venue would): a small lot at the mid.
                    let inst = &registry.iter().nth(instrument.index()).expect("instrument").clone();
                    Event::ExecReport(ExecReport {
                        ts_event: ts,
                        ts_recv: ts,
                        instrument,
                        agent,
                        kind: ExecKind::Fill,
                        side: if x.b % 2 == 0 { Side::Buy } else { Side::Sell },
                        liquidity: Liquidity::Taker,
                        client_order_id: 1 << 60 | s,
                        price: mids[instrument.index()],
                        last_qty: Quantity::from_raw(inst.lot_size.raw * (1 + x.b.rem_euclid(20))),
                        fee: Money::from_raw(x.b.rem_euclid(1_000)),
                        ..Default::default()
                    })
                }
            });
        }
    }
    (registry.iter().cloned().collect(), out)
}

fn replay(
    config: &EngineConfig,
    instruments: &[Instrument],
    events: &[Event],
    from: usize,
    start: Option<Stages>,
) -> (Engine, Vec<Output>) {
    let mut engine = match start {
        Some(stages) => Engine::from_stages(stages),
        None => Engine::new(config, instruments),
    };
    let mut outputs = Vec::new();
    for (i, e) in events.iter().enumerate().skip(from) {
        engine.process(i as i64, e, &mut Vec::<Order>::new(), &mut outputs);
    }
    (engine, outputs)
}

/// The body of an encoded snapshot (the header carries the wall clock).
fn body(bytes: &[u8]) -> &[u8] {
    &bytes[snapshot::HEADER..]
}

/// Takes a snapshot at every point the schedule picks while replaying `events`, the way the
/// pipeline does (a spare reused with `copy_from`, canonical form, encoded); then restores each
/// one, replays the rest and checks the state, and the outputs of the rest, against the
/// straight replay.
fn check_every_cut(config: &EngineConfig, instruments: &[Instrument], events: &[Event], policy: SnapshotPolicy) -> usize {
    let (full, full_out) = replay(config, instruments, events, 0, None);
    let fingerprints = Fingerprints::new(config, instruments);
    let mut engine = Engine::new(config, instruments);
    let mut schedule = Schedule::new(policy, 0);
    let mut spare = Stages::new(config, instruments);
    let mut snapshots = Vec::new();
    let mut sink = Vec::new();
    for (i, e) in events.iter().enumerate() {
        engine.process(i as i64, e, &mut Vec::<Order>::new(), &mut sink);
        if schedule.due(i as i64, e) {
            spare.copy_from(&engine.stages);
            spare.canonical_snapshot();
            snapshots.push((i, snapshot::encode(i as u64, e.ts_event(), fingerprints, &spare).expect("encodes")));
        }
    }
    for (at, bytes) in &snapshots {
        let (header, decoded) = snapshot::decode(bytes, &fingerprints).expect("decodes");
        assert_eq!(header.seq, *at as u64);
        let restored = Stages::restore(config, instruments, &decoded);
        let (resumed, out) = replay(config, instruments, events, at + 1, Some(restored));
        assert_eq!(
            format!("{:?}", resumed.stages),
            format!("{:?}", full.stages),
            "the state after snapshot {at} and the {} events after it equals the straight replay's",
            events.len() - at - 1
        );
        let expected: Vec<Output> = full_out.iter().filter(|o| o.seq > *at as i64).copied().collect();
        assert!(out == expected, "the restored engine decides exactly as the uninterrupted one after snapshot {at}");
        // Encoded, too: nothing is left out of the archive that Debug would not show.
        let end = snapshot::encode(0, 0, fingerprints, &resumed.stages).unwrap();
        assert_eq!(body(&end), body(&snapshot::encode(0, 0, fingerprints, &full.stages).unwrap()));
    }
    snapshots.len()
}

fn extra() -> impl Strategy<Value = Extra> {
    (0u64..3_000, any::<u8>(), any::<u32>(), any::<i64>()).prop_map(|(step, kind, a, b)| Extra { step, kind, a, b })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn snapshot_and_tail_replay_equal_the_full_replay(
        seed in 0u64..10_000,
        steps in 1_500u64..3_000,
        extras in prop::collection::vec(extra(), 10..60),
        every in 200u64..1_200,
    ) {
        let (instruments, events) = events(seed, steps, &extras);
        let config = EngineConfig::default();
        let (_, out) = replay(&config, &instruments, &events, 0, None);
        use sapphire_core::engine::EngineOutput;
        prop_assert!(out.iter().any(|o| matches!(o.output, EngineOutput::Order(_))), "orders");
        prop_assert!(out.iter().any(|o| matches!(o.output, EngineOutput::Exec(r) if r.last_qty.raw > 0)), "fills");
        let cuts = check_every_cut(&config, &instruments, &events, SnapshotPolicy { every_events: every, every_ns: 0 });
        prop_assert!(cuts >= 2, "{cuts} cut points");
    }
}

#[test]
fn a_long_scripted_run_trades_and_every_cut_point_agrees() {
    let (instruments, events) = common::scripted_events(11, 30_000);
    let config = EngineConfig::default();
    let (full, out) = replay(&config, &instruments, &events, 0, None);
    let fills = out.iter().filter(|o| matches!(o.output, sapphire_core::engine::EngineOutput::Exec(r) if r.last_qty.raw > 0)).count();
    assert!(fills > 20, "the run trades: {fills} fills");
    assert!(full.stages.risk.risk.open_orders() > 0 || fills > 0);
    // By event time: every 2 s of it.
    let cuts = check_every_cut(&config, &instruments, &events, SnapshotPolicy { every_events: 0, every_ns: 2_000_000_000 });
    assert!(cuts >= 10, "{cuts} cut points");
}

/// A journal stage that keeps nothing (the test compares states, not journals).
struct NoJournal(u64);

impl InputJournal for NoJournal {
    fn append(&mut self, _seq: i64, _event: &Event, _end_of_batch: bool) {
        self.0 += 1;
    }
    fn flush(&mut self) {}
    fn written(&self) -> Option<i64> {
        self.0.checked_sub(1).map(|n| n as i64)
    }
    fn appended(&self) -> u64 {
        self.0
    }
    fn errors(&self) -> u64 {
        0
    }
    fn first_error(&self) -> Option<String> {
        None
    }
}

#[test]
fn the_pipelines_snapshots_fused_and_split_are_the_replays_state_byte_for_byte() {
    let (instruments, events) = common::scripted_events(5, 12_000);
    let config = EngineConfig::default();
    let fingerprints = Fingerprints::new(&config, &instruments);
    for layout in [Layout::Fused, Layout::Split] {
        let pc = PipelineConfig {
            layout,
            // The book stage runs at most three links (3,072 events) ahead of the route stage:
            // its spares (three) are enough at one snapshot per 2,000 events.
            link_capacity: 1 << 10,
            ring_capacity: 1 << 12,
            engine_wait: WaitStrategy::Yield,
            journal_wait: WaitStrategy::Yield,
            snapshots: SnapshotPolicy { every_events: 2_000, every_ns: 0 },
            ..PipelineConfig::default()
        };
        let mut pipeline = Pipeline::start(&pc, &config, &instruments, Box::new(NoJournal(0)));
        let mut feed = pipeline.take_snapshots().expect("snapshots are on");
        let mut outputs = pipeline.take_outputs().expect("outputs");
        let drain = std::thread::spawn(move || while outputs.poll(4_096, |_| {}) != sapphire_core::ring::Poll::Closed {});
        // Snapshots are taken from the feed as they come (the writer's part), and their copies
        // go back for reuse.
        let collector = std::thread::spawn(move || {
            let mut got = Vec::new();
            while let Ok(next) = feed.next(Duration::from_millis(50)) {
                if let Some(t) = next {
                    got.push((t.seq, snapshot::encode(t.seq as u64, t.ts_event, fingerprints, &t.stages).unwrap()));
                    feed.recycle(t);
                }
            }
            got
        });
        let mut producer = pipeline.producer();
        for e in &events {
            producer.publish(WaitStrategy::Yield, *e).expect("the ring is open");
            // Slow enough that the writer keeps up: no snapshot is skipped for want of a spare.
            if matches!(e, Event::Timer(_)) {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        drop(producer);
        let report = pipeline.shutdown();
        drain.join().unwrap();
        let got = collector.join().unwrap();
        assert!(got.len() >= 15, "{layout:?}: {} snapshots", got.len());
        let mut engine = Engine::new(&config, &instruments);
        let mut next = 0;
        for (seq, bytes) in &got {
            for (i, e) in events.iter().enumerate().take(*seq as usize + 1).skip(next) {
                engine.process(i as i64, e, &mut Vec::<Order>::new(), &mut Vec::new());
            }
            next = *seq as usize + 1;
            let mut expected = engine.stages.clone();
            expected.canonical_snapshot();
            let want = snapshot::encode(*seq as u64, 0, fingerprints, &expected).unwrap();
            assert!(body(bytes) == body(&want), "{layout:?}: the snapshot of event {seq} is the replay's state");
        }
        for (i, e) in events.iter().enumerate().skip(next) {
            engine.process(i as i64, e, &mut Vec::<Order>::new(), &mut Vec::new());
        }
        assert!(report.stages.route.counters.fills > 0, "{layout:?}: the run trades");
        if layout == Layout::Fused {
            assert_eq!(format!("{:?}", report.stages), format!("{:?}", engine.stages), "snapshots change nothing");
        }
    }
}

/// Snapshots a resumed pipeline takes of `events` (numbered from 10,000) when its schedule
/// counts from `count_from`.
fn snapshots_after_a_restart(count_from: Option<i64>) -> Vec<i64> {
    let (instruments, events) = common::scripted_events(3, 400);
    assert!(events.len() < 5_000, "fewer events than the interval: {}", events.len());
    let config = EngineConfig::default();
    let pc = PipelineConfig {
        engine_wait: WaitStrategy::Yield,
        journal_wait: WaitStrategy::Yield,
        snapshots: SnapshotPolicy { every_events: 5_000, every_ns: 0 },
        snapshots_count_from: count_from,
        ..PipelineConfig::default()
    };
    let mut pipeline = Pipeline::resume(&pc, Stages::new(&config, &instruments), 10_000, Box::new(NoJournal(0)));
    let mut feed = pipeline.take_snapshots().expect("snapshots are on");
    let mut outputs = pipeline.take_outputs().expect("outputs");
    let drain = std::thread::spawn(move || while outputs.poll(4_096, |_| {}) != sapphire_core::ring::Poll::Closed {});
    let collector = std::thread::spawn(move || {
        let mut got = Vec::new();
        while let Ok(next) = feed.next(Duration::from_millis(50)) {
            if let Some(t) = next {
                got.push(t.seq);
                feed.recycle(t);
            }
        }
        got
    });
    let mut producer = pipeline.producer();
    for e in &events {
        producer.publish(WaitStrategy::Yield, *e).expect("the ring is open");
    }
    drop(producer);
    pipeline.shutdown();
    drain.join().unwrap();
    collector.join().unwrap()
}

#[test]
fn a_core_killed_before_each_interval_still_snapshots_after_its_restart() {
    // Recovered from a snapshot of event 3,999 with the journal at 10,000: 6,000 events since,
    // more than the interval, so the first snapshot point after the restart takes one. Counted
    // from the restart, fewer events than the interval never reach it: a core killed every few
    // seconds replayed a longer journal at each restart, without end.
    let from_snapshot = snapshots_after_a_restart(Some(4_000));
    assert_eq!(from_snapshot.len(), 1, "{from_snapshot:?}");
    assert_eq!(snapshots_after_a_restart(None), Vec::<i64>::new());
}

#[test]
fn a_damaged_newest_snapshot_falls_back_to_the_previous_then_to_the_whole_journal() {
    let root = std::env::temp_dir().join(format!("sapphire-snapshot-fallback-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (input, snaps) = (root.join("input"), root.join("snapshots"));
    let (instruments, events) = common::scripted_events(9, 15_000);
    let config = EngineConfig::default();
    let fingerprints = Fingerprints::new(&config, &instruments);
    // The run: every event journaled; snapshots at two points.
    let mut engine = Engine::new(&config, &instruments);
    let mut schedule = Schedule::new(SnapshotPolicy { every_events: 8_000, every_ns: 0 }, 0);
    let mut taken = Vec::new();
    {
        let (mut journal, _) = JournalWriter::<Event>::open(JournalConfig::new(&input)).unwrap();
        check_instruments(&input, &instruments).unwrap();
        for (seq, e) in events.iter().enumerate() {
            journal.append(seq as i64, e, true);
            engine.process(seq as i64, e, &mut Vec::<Order>::new(), &mut Vec::new());
            if schedule.due(seq as i64, e) {
                let mut s = engine.stages.clone();
                s.canonical_snapshot();
                let bytes = snapshot::encode(seq as u64, e.ts_event(), fingerprints, &s).unwrap();
                snapshot::write(&snaps, seq as u64, &bytes).unwrap();
                taken.push(seq as u64);
            }
        }
        journal.flush();
    }
    assert!(taken.len() >= 3, "{taken:?}");
    let expected = format!("{:?}", engine.stages);
    let recover = || {
        let mut notes = Vec::new();
        let r = recover_from_snapshot(&input, Some(&snaps), &config, &instruments, None, |_| {}, |n| notes.push(n.to_string())).unwrap();
        assert_eq!(format!("{:?}", r.stages), expected, "whatever it starts from, the state is the run's");
        assert_eq!(r.next_seq, events.len() as u64);
        (r, notes)
    };
    let (r, notes) = recover();
    assert_eq!(r.snapshot.as_ref().map(|s| s.seq), taken.last().copied(), "the newest snapshot");
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(r.events, events.len() as u64 - taken.last().unwrap() - 1, "only the events after it are replayed");

    // One flipped bit in the newest: the one before it is used, and the reason is given.
    let files = snapshot::list(&snaps).unwrap();
    let newest = &files.last().unwrap().1;
    let mut bytes = std::fs::read(newest).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x10;
    std::fs::write(newest, &bytes).unwrap();
    let (r, notes) = recover();
    assert_eq!(r.snapshot.as_ref().map(|s| s.seq), Some(taken[taken.len() - 2]));
    assert!(
        notes.len() == 1 && notes[0].contains("body checksum") && notes[0].contains(&snapshot::file_name(*taken.last().unwrap())),
        "{notes:?}"
    );
    assert_eq!(r.passed_over.len(), 1);

    // Every one unreadable (cut short, not a snapshot, a header damaged): the whole journal.
    for (i, (_, path)) in files.iter().enumerate() {
        let bytes = std::fs::read(path).unwrap();
        match i % 3 {
            0 => std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap(),
            1 => std::fs::write(path, b"not a snapshot").unwrap(),
            _ => {
                let mut b = bytes.clone();
                b[20] ^= 1;
                std::fs::write(path, b).unwrap();
            }
        }
    }
    let (r, notes) = recover();
    assert!(r.snapshot.is_none());
    assert_eq!(r.events, events.len() as u64, "the whole journal replayed");
    assert_eq!(notes.len(), files.len(), "{notes:?}");

    // A snapshot for another configuration is passed over, saying so.
    let other = EngineConfig { order_id_epoch: 9, ..EngineConfig::default() };
    let mut s = Engine::new(&other, &instruments).stages;
    s.canonical_snapshot();
    snapshot::write(&snaps, 100, &snapshot::encode(100, 0, Fingerprints::new(&other, &instruments), &s).unwrap()).unwrap();
    let mut notes = Vec::new();
    let r = recover_from_snapshot(&input, Some(&snaps), &config, &instruments, None, |_| {}, |n| notes.push(n.to_string())).unwrap();
    assert!(r.snapshot.is_none());
    assert!(notes.iter().any(|n| n.contains("another engine configuration")), "{notes:?}");

    // A snapshot ahead of the journal (the journal lost its end) is passed over.
    let ahead = events.len() as u64 + 10;
    snapshot::write(&snaps, ahead, &snapshot::encode(ahead, 0, fingerprints, &engine.stages).unwrap()).unwrap();
    let mut notes = Vec::new();
    let r = recover_from_snapshot(&input, Some(&snaps), &config, &instruments, None, |_| {}, |n| notes.push(n.to_string())).unwrap();
    assert!(r.snapshot.is_none());
    assert!(notes[0].contains("input journal") && notes[0].contains("ends at event") && notes[0].contains("moved to"), "{notes:?}");
    // ...and moved aside: the journal's next events reuse its sequence.
    assert!(snapshot::list(&snaps).unwrap().iter().all(|(seq, _)| *seq != ahead));
    assert!(snaps.join("passed-over").join(snapshot::file_name(ahead)).exists());
    let _ = std::fs::remove_dir_all(&root);
}
