//! Tick in to order out: the engine fused and split, against the same four stages wired with
//! crossbeam channels (one thread each) and with tokio mpsc tasks (the way an async service
//! would do it), measured in the same run on the same events.
//!
//! Latency is open-loop: event `i` is due at `t0 + i × interval`, the producer waits for that
//! instant, stamps the *due* time as `ts_recv` and publishes. A stalled engine cannot hide its
//! stall (no coordinated omission). `end_to_end` is `ts_recv` to the event leaving the route
//! stage (our pipeline samples 1 event in 16 for it); `tick_to_order` the same for every event
//! that produced orders. Throughput cases flood: the producer publishes as fast as the
//! engine takes events.

use crate::case::{histogram, record, Case, Group};
use crate::lab::Lab;
use crossbeam_channel::bounded;
use hdrhistogram::Histogram;
use sapphire_core::engine::{Engine, EngineConfig, EngineOutput, Output, OutputSink, RiskStage, StageMsg, Stages};
use sapphire_core::event::{AgentId, Event, ExecReport, Signal};
use sapphire_core::instrument::{Instrument, InstrumentId, InstrumentRegistry};
use sapphire_core::journal::MemoryJournal;
use sapphire_core::latency::unix_nanos;
use sapphire_core::order::Order;
use sapphire_core::pipeline::{Layout, Pipeline, PipelineConfig};
use sapphire_core::ring::Poll;
use sapphire_core::wait::WaitStrategy;
use sapphire_gateway::synthetic::{SyntheticConfig, SyntheticMarket};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The events every engine case runs: a synthetic market with agent signals mixed in.
#[derive(Clone, Debug)]
pub struct Workload {
    /// The instruments.
    pub instruments: Vec<Instrument>,
    /// The inbound events, in order.
    pub events: Vec<Event>,
}

impl Workload {
    /// `steps` synthetic market steps (several events each), a signal every 500 steps so
    /// orders are not rare.
    pub fn synthetic(steps: u64) -> Self {
        Self::with_signals(steps, 500)
    }

    /// `steps` synthetic market steps with a signal every `every` steps (at least 2).
    pub fn with_signals(steps: u64, every: u64) -> Self {
        let every = every.max(2);
        let mut registry = InstrumentRegistry::new();
        let mut market = SyntheticMarket::new(SyntheticConfig::default(), &mut registry).expect("the default synthetic instruments");
        let mut events = Vec::new();
        for s in 0..steps {
            let ts = 1_700_000_000_000_000_000 + s * 200_000;
            market.step(ts, &mut |e| events.push(e));
            if s % every == every / 2 {
                let k = s / every;
                events.push(Event::Signal(Signal {
                    ts_event: ts,
                    ts_recv: ts,
                    instrument: InstrumentId((k % 3) as u32),
                    agent: AgentId(2 + (k % 4) as u16),
                    strength_bps: if k % 2 == 0 { 7_000 } else { -7_000 },
                    confidence_bps: 10_000,
                    ttl_ns: 50_000_000,
                    ..Default::default()
                }));
            }
        }
        Self { instruments: registry.iter().cloned().collect(), events }
    }
}

/// Discards outputs (the edge is not what we measure) but counts them.
#[derive(Debug, Default)]
struct Tally {
    outputs: u64,
    orders: u64,
}

impl OutputSink for Tally {
    fn emit(&mut self, out: Output) {
        self.outputs += 1;
        if matches!(out.output, EngineOutput::Order(_)) {
            self.orders += 1;
        }
    }
}

/// Open-loop pacing on the wall clock the engine stamps with (`unix_nanos`).
#[derive(Debug)]
pub(crate) struct Pacer {
    t0: u64,
    interval: u64,
    i: u64,
}

impl Pacer {
    pub(crate) fn new(interval: u64) -> Self {
        Self { t0: unix_nanos() + 1_000_000, interval, i: 0 }
    }

    /// Waits until the next event is due and returns its due time (flood: now).
    #[inline]
    pub(crate) fn next(&mut self) -> u64 {
        if self.interval == 0 {
            return unix_nanos();
        }
        let due = self.t0 + self.i * self.interval;
        self.i += 1;
        while unix_nanos() < due {
            std::hint::spin_loop();
        }
        due
    }
}

/// `Engine::process` alone, flat out, best of `rounds`: the engine's ceiling.
pub fn direct_flood(w: &Workload, rounds: usize) -> Case {
    let config = EngineConfig::default();
    let mut best = f64::MAX;
    for _ in 0..rounds.max(1) {
        let mut engine = Engine::new(&config, &w.instruments);
        let mut sink = Tally::default();
        let mut outbound: Vec<Order> = Vec::new();
        let t = Instant::now();
        for (seq, e) in w.events.iter().enumerate() {
            engine.process(seq as i64, e, &mut outbound, &mut sink);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    Case::rate(
        "engine_direct_flood",
        Group::Engine,
        "Engine::process on one thread, no ring: events/s (best round)",
        w.events.len() as f64 / best,
    )
}

/// The engine alone on one pinned thread: time per `Engine::process` (all four stages) for
/// every event, and for the events that produced orders. Includes one clock pair (~20-30 ns).
pub fn direct_latency(lab: &Lab, w: &Workload) -> [Case; 2] {
    let core = lab.consumer_core();
    let (all, with_orders) = std::thread::scope(|s| {
        s.spawn(|| {
            let pin = lab.pin("engine_direct/engine", core);
            let mut engine = Engine::new(&EngineConfig::default(), &w.instruments);
            let mut sink = Tally::default();
            let mut outbound: Vec<Order> = Vec::new();
            let (mut all, mut with_orders) = (histogram(), histogram());
            let warm = w.events.len() / 10;
            for (seq, e) in w.events[..warm].iter().enumerate() {
                engine.process(seq as i64, e, &mut outbound, &mut sink);
            }
            for (i, e) in w.events[warm..].iter().enumerate() {
                let before = sink.orders;
                let t = Instant::now();
                engine.process((warm + i) as i64, e, &mut outbound, &mut sink);
                let ns = t.elapsed().as_nanos() as u64;
                record(&mut all, ns);
                if sink.orders > before {
                    record(&mut with_orders, ns);
                }
            }
            pin.done();
            (all, with_orders)
        })
        .join()
        .unwrap_or_else(|_| (histogram(), histogram()))
    });
    [
        Case::latency("engine_direct_per_event", Group::Engine, "Engine::process per event on one pinned thread (no hop)", all, None),
        Case::latency(
            "engine_direct_tick_to_order",
            Group::Engine,
            "Engine::process for events that produced orders (no hop)",
            with_orders,
            None,
        ),
    ]
}

/// Our pipeline's thread layout on this machine: the producer on the first core, the engine
/// on the last; split stages share the last core (yielding) unless there are five or more.
pub(crate) fn pipeline_config(lab: &Lab, layout: Layout) -> PipelineConfig {
    let engine = lab.consumer_core();
    let side = lab.producer_core();
    match layout {
        Layout::Fused => PipelineConfig {
            layout,
            engine_cores: engine.into_iter().collect(),
            journal_core: side,
            engine_wait: WaitStrategy::BusySpin,
            journal_wait: WaitStrategy::Sleep(Duration::from_micros(50)),
            ..PipelineConfig::default()
        },
        Layout::Split => PipelineConfig {
            layout,
            engine_cores: if lab.cores >= 5 { (1..5).collect() } else { vec![engine.unwrap_or(0); 4] },
            journal_core: side,
            engine_wait: if lab.cores >= 5 { WaitStrategy::BusySpin } else { WaitStrategy::Yield },
            journal_wait: WaitStrategy::Sleep(Duration::from_micros(50)),
            ..PipelineConfig::default()
        },
    }
}

/// Runs our pipeline; `interval_ns` 0 floods, otherwise paces open-loop. Returns
/// `end_to_end` and `tick_to_order`, both with the run's events/s.
pub fn pipeline(lab: &Lab, layout: Layout, w: &Workload, interval_ns: u64) -> [Case; 2] {
    let label = if layout == Layout::Fused { "fused" } else { "split" };
    let mode = if interval_ns > 0 { format!("paced_{}", ns_label(interval_ns)) } else { "flood".into() };
    let mut pipeline =
        Pipeline::start(&pipeline_config(lab, layout), &EngineConfig::default(), &w.instruments, Box::new(MemoryJournal::counting()));
    let readers = pipeline.latency().to_vec();
    let mut outputs = pipeline.take_outputs().expect("outputs are taken once");
    let drain = std::thread::spawn(move || {
        let mut idle = 0;
        while outputs.poll(4_096, |_| {}) != Poll::Closed {
            WaitStrategy::Sleep(Duration::from_micros(200)).idle(&mut idle);
        }
    });
    let mut producer = pipeline.producer();
    let stats = pipeline.stats();
    let n = w.events.len() as u64;
    let elapsed = std::thread::scope(|s| {
        s.spawn(|| {
            let pin = lab.pin(format!("engine_{label}_{mode}/producer"), lab.producer_core());
            let start = Instant::now();
            let mut pacer = Pacer::new(interval_ns);
            for e in &w.events {
                let mut e = *e;
                e.set_ts_recv(pacer.next());
                if producer.publish(WaitStrategy::SpinHint, e).is_err() {
                    break;
                }
            }
            while stats.processed.load(Ordering::Relaxed) < n {
                std::hint::spin_loop();
            }
            pin.done();
            start.elapsed().as_secs_f64()
        })
        .join()
        .unwrap_or(f64::NAN)
    });
    let report = pipeline.shutdown();
    let _ = drain.join();
    for (thread, outcome) in &report.pins {
        lab.pins_record(&format!("engine_{label}_{mode}/{thread}"), outcome.clone());
    }
    let hist = |name: &str| readers.iter().find(|r| r.name() == name).map_or_else(histogram, |r| widen(&r.histogram()));
    let rate = Some(n as f64 / elapsed);
    [
        Case::latency(
            format!("engine_{label}_{mode}_end_to_end"),
            Group::Engine,
            format!("our {label} pipeline, {mode}: due time to leaving the route stage (1 event in 16)"),
            hist("end_to_end"),
            rate,
        ),
        Case::latency(
            format!("engine_{label}_{mode}_tick_to_order"),
            Group::Engine,
            format!("our {label} pipeline, {mode}: due time to order out, events that produced orders"),
            hist("tick_to_order"),
            rate,
        ),
    ]
}

/// Copies a core histogram (2 significant digits) into the suite's (3).
pub(crate) fn widen(h: &Histogram<u64>) -> Histogram<u64> {
    let mut out = histogram();
    for v in h.iter_recorded() {
        let _ = out.record_n(v.value_iterated_to().clamp(1, crate::case::MAX_NS), v.count_at_value());
    }
    out
}

fn ns_label(ns: u64) -> String {
    if ns % 1_000 == 0 {
        format!("{}us", ns / 1_000)
    } else {
        format!("{ns}ns")
    }
}

/// The same four stages, one thread each, wired with crossbeam bounded channels and blocking
/// receives, as a channel-based service would be written. The same sync-point rule for paper
/// fills as ours; no journal consumer (less work than ours). Stage threads share the last
/// core on machines with fewer than five.
pub fn crossbeam(lab: &Lab, w: &Workload, interval_ns: u64) -> Case {
    let Stages { mut book, mut aggregate, mut risk, mut route } = Stages::new(&EngineConfig::default(), &w.instruments);
    let cap = 1 << 14;
    let (tx_in, rx_in) = bounded::<(i64, Event)>(cap);
    let (tx_agg, rx_agg) = bounded::<StageMsg>(cap);
    let (tx_risk, rx_risk) = bounded::<StageMsg>(cap);
    let (tx_route, rx_route) = bounded::<StageMsg>(cap);
    let (tx_fb, rx_fb) = bounded::<ExecReport>(cap);
    let progress = Arc::new(AtomicI64::new(0));
    let mode = format!("paced_{}", ns_label(interval_ns));
    let stage_core = |i: usize| if lab.cores >= 5 { Some(i + 1) } else { lab.consumer_core() };
    let (hist, elapsed) = std::thread::scope(|s| {
        let mode = &mode;
        s.spawn(move || {
            let pin = lab.pin(format!("crossbeam_{mode}/book"), stage_core(0));
            for (seq, event) in rx_in {
                let mut msg = StageMsg { seq, event, ..StageMsg::default() };
                book.process(&mut msg);
                if tx_agg.send(msg).is_err() {
                    break;
                }
            }
            pin.done();
        });
        s.spawn(move || {
            let pin = lab.pin(format!("crossbeam_{mode}/aggregate"), stage_core(1));
            for mut msg in rx_agg {
                aggregate.process(&mut msg);
                if tx_risk.send(msg).is_err() {
                    break;
                }
            }
            pin.done();
        });
        let p = Arc::clone(&progress);
        s.spawn(move || {
            let pin = lab.pin(format!("crossbeam_{mode}/risk"), stage_core(2));
            let mut forwarded = 0;
            for mut msg in rx_risk {
                while let Ok(r) = rx_fb.try_recv() {
                    risk.take_feedback(r);
                }
                if RiskStage::is_sync_point(&msg) {
                    while p.load(Ordering::Acquire) < forwarded {
                        while let Ok(r) = rx_fb.try_recv() {
                            risk.take_feedback(r);
                        }
                        std::thread::yield_now();
                    }
                    while let Ok(r) = rx_fb.try_recv() {
                        risk.take_feedback(r);
                    }
                }
                risk.process(&mut msg);
                forwarded = msg.seq + 1;
                if tx_route.send(msg).is_err() {
                    break;
                }
            }
            pin.done();
        });
        let route_thread = s.spawn(move || {
            let pin = lab.pin(format!("crossbeam_{mode}/route"), stage_core(3));
            let mut hist = histogram();
            let mut sink = Tally::default();
            let mut outbound: Vec<Order> = Vec::new();
            for msg in rx_route {
                route.process(&msg, &mut outbound, &mut sink, |r| {
                    let _ = tx_fb.send(r);
                });
                outbound.clear();
                record(&mut hist, unix_nanos().saturating_sub(msg.event.ts_recv()));
                progress.store(msg.seq + 1, Ordering::Release);
            }
            pin.done();
            hist
        });
        let start = Instant::now();
        s.spawn(move || {
            let pin = lab.pin(format!("crossbeam_{mode}/producer"), lab.producer_core());
            let mut pacer = Pacer::new(interval_ns);
            for (i, e) in w.events.iter().enumerate() {
                let mut e = *e;
                e.set_ts_recv(pacer.next());
                if tx_in.send((i as i64, e)).is_err() {
                    break;
                }
            }
            pin.done();
        });
        let hist = route_thread.join().unwrap_or_else(|_| histogram());
        (hist, start.elapsed().as_secs_f64())
    });
    Case::latency(
        format!("engine_crossbeam_{mode}_end_to_end"),
        Group::Engine,
        format!("the four stages on four threads over crossbeam channels, {mode}: due time to leaving route (every event)"),
        hist,
        Some(w.events.len() as f64 / elapsed),
    )
}

/// The same four stages as tokio tasks on a multi-thread runtime (one worker per core,
/// unpinned, as a service would run), connected by bounded tokio mpsc channels; the
/// producer is a pinned thread using `blocking_send`.
pub fn tokio_tasks(lab: &Lab, w: &Workload, interval_ns: u64) -> Case {
    let mode = format!("paced_{}", ns_label(interval_ns));
    let name = format!("engine_tokio_{mode}_end_to_end");
    let what = format!("the four stages as tokio tasks over tokio mpsc, {mode}: due time to leaving route (every event)");
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread().worker_threads(lab.cores.max(1)).enable_all().build() else {
        return Case::latency(name, Group::Engine, format!("{what} — runtime failed to start"), histogram(), None);
    };
    let Stages { mut book, mut aggregate, mut risk, mut route } = Stages::new(&EngineConfig::default(), &w.instruments);
    use tokio::sync::mpsc::channel;
    let cap = 1 << 14;
    let (tx_in, mut rx_in) = channel::<(i64, Event)>(cap);
    let (tx_agg, mut rx_agg) = channel::<StageMsg>(cap);
    let (tx_risk, mut rx_risk) = channel::<StageMsg>(cap);
    let (tx_route, mut rx_route) = channel::<StageMsg>(cap);
    let (tx_fb, mut rx_fb) = tokio::sync::mpsc::unbounded_channel::<ExecReport>();
    let progress = Arc::new(AtomicI64::new(0));
    rt.spawn(async move {
        while let Some((seq, event)) = rx_in.recv().await {
            let mut msg = StageMsg { seq, event, ..StageMsg::default() };
            book.process(&mut msg);
            if tx_agg.send(msg).await.is_err() {
                break;
            }
        }
    });
    rt.spawn(async move {
        while let Some(mut msg) = rx_agg.recv().await {
            aggregate.process(&mut msg);
            if tx_risk.send(msg).await.is_err() {
                break;
            }
        }
    });
    let p = Arc::clone(&progress);
    rt.spawn(async move {
        let mut forwarded = 0;
        while let Some(mut msg) = rx_risk.recv().await {
            while let Ok(r) = rx_fb.try_recv() {
                risk.take_feedback(r);
            }
            if RiskStage::is_sync_point(&msg) {
                while p.load(Ordering::Acquire) < forwarded {
                    while let Ok(r) = rx_fb.try_recv() {
                        risk.take_feedback(r);
                    }
                    tokio::task::yield_now().await;
                }
                while let Ok(r) = rx_fb.try_recv() {
                    risk.take_feedback(r);
                }
            }
            risk.process(&mut msg);
            forwarded = msg.seq + 1;
            if tx_route.send(msg).await.is_err() {
                break;
            }
        }
    });
    let route_task = rt.spawn(async move {
        let mut hist = histogram();
        let mut sink = Tally::default();
        let mut outbound: Vec<Order> = Vec::new();
        while let Some(msg) = rx_route.recv().await {
            route.process(&msg, &mut outbound, &mut sink, |r| {
                let _ = tx_fb.send(r);
            });
            outbound.clear();
            record(&mut hist, unix_nanos().saturating_sub(msg.event.ts_recv()));
            progress.store(msg.seq + 1, Ordering::Release);
        }
        hist
    });
    let start = Instant::now();
    std::thread::scope(|s| {
        s.spawn(move || {
            let pin = lab.pin(format!("tokio_{mode}/producer"), lab.producer_core());
            let mut pacer = Pacer::new(interval_ns);
            for (i, e) in w.events.iter().enumerate() {
                let mut e = *e;
                e.set_ts_recv(pacer.next());
                if tx_in.blocking_send((i as i64, e)).is_err() {
                    break;
                }
            }
            pin.done();
        });
    });
    let hist = rt.block_on(route_task).unwrap_or_else(|_| histogram());
    let elapsed = start.elapsed().as_secs_f64();
    rt.shutdown_timeout(Duration::from_secs(1));
    Case::latency(name, Group::Engine, what, hist, Some(w.events.len() as f64 / elapsed))
}

/// The engine cases: direct, fused (flood and 1 µs pacing), and split vs crossbeam vs tokio
/// at 5 µs pacing (so that six threads fit on a small machine).
pub fn suite(lab: &Lab, mut progress: impl FnMut(&str)) -> Vec<Case> {
    let steps = lab.scale.pick(2_000, 25_000, 250_000);
    let w = Workload::synthetic(steps);
    let mut cases = Vec::new();
    progress("engine direct");
    cases.push(direct_flood(&w, lab.scale.pick(1, 2, 3)));
    cases.extend(direct_latency(lab, &w));
    progress("engine fused flood");
    let [flood, _] = pipeline(lab, Layout::Fused, &w, 0);
    cases.push(flood);
    progress("engine fused paced 1us");
    cases.extend(pipeline(lab, Layout::Fused, &w, 1_000));
    let split_events = Workload {
        instruments: w.instruments.clone(),
        events: w.events[..w.events.len().min(lab.scale.pick(5_000, 40_000, 200_000))].to_vec(),
    };
    progress("engine fused paced 5us");
    cases.extend(pipeline(lab, Layout::Fused, &split_events, 5_000));
    progress("engine split paced 5us");
    cases.extend(pipeline(lab, Layout::Split, &split_events, 5_000));
    progress("engine crossbeam paced 5us");
    cases.push(crossbeam(lab, &split_events, 5_000));
    progress("engine tokio paced 5us");
    cases.push(tokio_tasks(lab, &split_events, 5_000));
    cases
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::Scale;

    #[test]
    fn every_wiring_runs_every_event_through() {
        let lab = Lab::new(Scale::Smoke, std::env::temp_dir());
        let w = Workload::synthetic(600);
        assert!(w.events.iter().any(|e| matches!(e, Event::Signal(_))));
        let n = w.events.len() as u64;
        let [e2e, t2o] = pipeline(&lab, Layout::Fused, &w, 2_000);
        // Every 16th event is sampled; a sampled level in the middle of a venue message is
        // timed as book work only (it takes the engine's shortcut), so it has no end-to-end.
        let mid_message = |e: &Event| matches!(e, Event::BookDelta(d) if d.flags & sapphire_core::event::DELTA_LAST == 0);
        let sampled = w.events.iter().enumerate().filter(|(i, e)| (i + 1) % 16 == 0 && !mid_message(e)).count() as u64;
        assert!(sampled > 0);
        assert!(e2e.samples() + 1 >= sampled && e2e.samples() <= sampled, "{} of {sampled} sampled ({n} events)", e2e.samples());
        assert!(t2o.samples() > 0, "signals produced orders");
        assert_eq!(crossbeam(&lab, &w, 2_000).samples(), n);
        assert_eq!(tokio_tasks(&lab, &w, 2_000).samples(), n);
        let [split, _] = pipeline(&lab, Layout::Split, &w, 0);
        assert!(split.events_per_sec.is_some_and(|r| r > 0.0));
        assert!(direct_flood(&w, 1).events_per_sec.is_some_and(|r| r > 0.0));
    }
}
