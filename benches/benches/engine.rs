//! Tick in to order out: the engine fused and split, against the same stages wired with
//! crossbeam channels, measured in the same run.
//!
//! Run: `cargo bench -p sapphire-benches --bench engine` (add `-- --quick` for a short run).
//! Knobs for experiments: `SAMPLE=n` (stage timing 1 in n), `RING=slots` (inbound ring).
//!
//! Latency is open-loop: the producer schedules event `i` at `t0 + i × interval` and stamps
//! that *scheduled* time as `ts_recv`, so a stalled engine cannot hide its stall (no
//! coordinated omission). `end_to_end` is `ts_recv` to the event leaving the route stage —
//! for every event, orders included; `tick_to_order` the same for events that produced
//! orders. Throughput is a flood: the producer publishes as fast as the ring takes events.

use crossbeam_channel::bounded;
use hdrhistogram::Histogram;
use sapphire_core::engine::{Engine, EngineConfig, Output, OutputSink, StageMsg, Stages};
use sapphire_core::event::{Event, ExecReport};
use sapphire_core::instrument::{Instrument, InstrumentRegistry};
use sapphire_core::journal::MemoryJournal;
use sapphire_core::latency::unix_nanos;
use sapphire_core::order::Order;
use sapphire_core::pipeline::{Layout, Pipeline, PipelineConfig};
use sapphire_core::risk::RiskOutput;
use sapphire_core::wait::WaitStrategy;
use sapphire_gateway::synthetic::{SyntheticConfig, SyntheticMarket};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Case {
    name: String,
    /// Values in the histogram (0 for throughput-only cases).
    count: u64,
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
    events_per_sec: f64,
}

fn events(steps: u64) -> (Vec<Instrument>, Vec<Event>) {
    let mut registry = InstrumentRegistry::new();
    let mut market = SyntheticMarket::new(SyntheticConfig::default(), &mut registry).expect("instruments");
    let mut out = Vec::new();
    for s in 0..steps {
        let ts = 1_700_000_000_000_000_000 + s * 200_000;
        market.step(ts, &mut |e| out.push(e));
        // An agent signal now and then, so orders are not rare (tick_to_order has samples).
        if s % 500 == 250 {
            let k = s / 500;
            out.push(Event::Signal(sapphire_core::event::Signal {
                ts_event: ts,
                ts_recv: ts,
                instrument: sapphire_core::instrument::InstrumentId((k % 3) as u32),
                agent: sapphire_core::event::AgentId(2 + (k % 4) as u16),
                strength_bps: if k % 2 == 0 { 7_000 } else { -7_000 },
                confidence_bps: 10_000,
                ttl_ns: 50_000_000,
                ..Default::default()
            }));
        }
    }
    (registry.iter().cloned().collect(), out)
}

/// Discards outputs (the edge is not what we measure) but keeps the engine honest.
#[derive(Default)]
struct Tally(u64);

impl OutputSink for Tally {
    fn emit(&mut self, _: Output) {
        self.0 += 1;
    }
}

fn pin(core: usize) {
    let _ = sapphire_core::affinity::pin_current_thread(Some(core));
}

/// Open-loop pacing: event `i` is due at `t0 + i × interval`. The producer waits for the
/// due time, then stamps the time it actually publishes: the engine is measured from the
/// moment the tick enters the ring. When the producer itself runs late (it shares a core
/// on small machines) it catches up in a burst, and its lateness is reported on its own.
struct Pacer {
    t0: u64,
    interval: u64,
    i: u64,
    lateness: Histogram<u64>,
}

impl Pacer {
    fn new(interval: u64) -> Self {
        Self { t0: unix_nanos() + 1_000_000, interval, i: 0, lateness: Histogram::new_with_bounds(1, 10_000_000_000, 2).expect("bounds") }
    }

    #[inline]
    fn next(&mut self) -> u64 {
        if self.interval == 0 {
            return unix_nanos();
        }
        let due = self.t0 + self.i * self.interval;
        self.i += 1;
        let mut now = unix_nanos();
        while now < due {
            std::hint::spin_loop();
            now = unix_nanos();
        }
        let _ = self.lateness.record((now - due).max(1));
        now
    }
}

fn direct_throughput(instruments: &[Instrument], events: &[Event], rounds: usize) -> Case {
    let config = EngineConfig::default();
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let mut engine = Engine::new(&config, instruments);
        let mut sink = Tally::default();
        let mut outbound: Vec<Order> = Vec::new();
        let t = Instant::now();
        for (seq, e) in events.iter().enumerate() {
            engine.process(seq as i64, e, &mut outbound, &mut sink);
        }
        best = best.min(t.elapsed().as_secs_f64());
        assert!(sink.0 > 0, "the engine produced outputs");
    }
    Case { name: "engine_direct_flood".into(), count: 0, p50: 0, p99: 0, p999: 0, max: 0, events_per_sec: events.len() as f64 / best }
}

/// Cores of the machine, read before the producer pins itself (a pinned thread sees one).
static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Counts orders as the engine emits them.
#[derive(Default)]
struct OrderCount(u64);

impl OutputSink for OrderCount {
    fn emit(&mut self, out: Output) {
        if matches!(out.output, sapphire_core::engine::EngineOutput::Order(_)) {
            self.0 += 1;
        }
    }
}

/// The engine alone on one pinned thread: the time `Engine::process` takes per event (all
/// four stages), and for the events that produced orders — tick in to order out inside the
/// engine, without the hop between threads. A clock read costs ~30 ns here; the
/// `clock_pair` case measures two back-to-back reads in the same run for reference.
fn direct_latency(instruments: &[Instrument], events: &[Event]) -> [Case; 3] {
    let cores = *CORES.get().expect("cores");
    pin(cores - 1);
    let mut engine = Engine::new(&EngineConfig::default(), instruments);
    let mut sink = OrderCount::default();
    let mut outbound: Vec<Order> = Vec::new();
    let new_hist = || Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 2).expect("bounds");
    let (mut all, mut with_orders, mut clock) = (new_hist(), new_hist(), new_hist());
    // Warm up: the first tenth, unmeasured.
    let warm = events.len() / 10;
    for (seq, e) in events[..warm].iter().enumerate() {
        engine.process(seq as i64, e, &mut outbound, &mut sink);
    }
    for (i, e) in events[warm..].iter().enumerate() {
        let before = sink.0;
        let t = Instant::now();
        engine.process((warm + i) as i64, e, &mut outbound, &mut sink);
        let ns = t.elapsed().as_nanos() as u64;
        let _ = all.record(ns.max(1));
        if sink.0 > before {
            let _ = with_orders.record(ns.max(1));
        }
        let c = Instant::now();
        let _ = clock.record((c.elapsed().as_nanos() as u64).max(1));
    }
    pin(0);
    let case = |name: &str, h: &Histogram<u64>| Case {
        name: name.into(),
        count: h.len(),
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
        events_per_sec: 0.0,
    };
    [case("engine_direct_per_event", &all), case("engine_direct_tick_to_order", &with_orders), case("clock_pair_overhead", &clock)]
}

fn pipeline_config(layout: Layout) -> PipelineConfig {
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let sample: u32 = std::env::var("SAMPLE").ok().and_then(|v| v.parse().ok()).unwrap_or(PipelineConfig::default().latency_sample_every);
    let c = pipeline_config_inner(layout, cores);
    let ring: usize = std::env::var("RING").ok().and_then(|v| v.parse().ok()).unwrap_or(1 << 16);
    PipelineConfig { latency_sample_every: sample, ring_capacity: ring, ..c }
}

fn pipeline_config_inner(layout: Layout, cores: usize) -> PipelineConfig {
    match layout {
        Layout::Fused => PipelineConfig {
            layout,
            engine_cores: if cores >= 2 { vec![cores - 1] } else { vec![] },
            journal_core: Some(0),
            engine_wait: WaitStrategy::BusySpin,
            journal_wait: WaitStrategy::Sleep(Duration::from_micros(50)),
            ..PipelineConfig::default()
        },
        // Six threads on this machine's cores: spinning threads must yield to each other.
        Layout::Split => PipelineConfig {
            layout,
            engine_cores: if cores >= 5 { (1..5).collect() } else { vec![cores - 1; 4] },
            journal_core: Some(0),
            engine_wait: if cores >= 5 { WaitStrategy::BusySpin } else { WaitStrategy::Yield },
            journal_wait: WaitStrategy::Sleep(Duration::from_micros(50)),
            ..PipelineConfig::default()
        },
    }
}

/// Runs the pipeline; `interval_ns` 0 floods, otherwise paces open-loop.
fn run_pipeline(layout: Layout, instruments: &[Instrument], events: &[Event], interval_ns: u64) -> (Case, Case) {
    let mut pipeline =
        Pipeline::start(&pipeline_config(layout), &EngineConfig::default(), instruments, Box::new(MemoryJournal::counting()));
    let mut outputs = pipeline.take_outputs().expect("outputs");
    let drain = std::thread::spawn(move || {
        let mut idle = 0;
        while outputs.poll(4_096, |_, _, _| {}) != sapphire_core::ring::Poll::Closed {
            WaitStrategy::Sleep(Duration::from_micros(200)).idle(&mut idle);
        }
    });
    let mut producer = pipeline.producer();
    pin(0);
    let start = Instant::now();
    let mut pacer = Pacer::new(interval_ns);
    for e in events {
        let mut e = *e;
        e.set_ts_recv(pacer.next());
        producer.publish(WaitStrategy::SpinHint, e).expect("ring open");
    }
    let stats = pipeline.stats();
    while stats.processed.load(Ordering::Relaxed) < events.len() as u64 {
        std::hint::spin_loop();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let report = pipeline.shutdown();
    drain.join().expect("drain");
    eprintln!(
        "  {layout:?} pins: {:?}; producer lateness p50 {} p99 {} max {}",
        report.pins,
        pacer.lateness.value_at_quantile(0.5),
        pacer.lateness.value_at_quantile(0.99),
        pacer.lateness.max()
    );
    let name = format!(
        "{}_{}",
        if layout == Layout::Fused { "fused" } else { "split" },
        if interval_ns > 0 { format!("paced_{interval_ns}ns") } else { "flood".into() }
    );
    let find = |n: &str| report.latency.iter().find(|s| s.name == n).copied().expect("recorded");
    let e2e = find("end_to_end");
    let t2o = find("tick_to_order");
    let rate = events.len() as f64 / elapsed;
    (
        Case {
            name: format!("{name}_end_to_end"),
            count: e2e.count,
            p50: e2e.p50,
            p99: e2e.p99,
            p999: e2e.p999,
            max: e2e.max,
            events_per_sec: rate,
        },
        Case {
            name: format!("{name}_tick_to_order"),
            count: t2o.count,
            p50: t2o.p50,
            p99: t2o.p99,
            p999: t2o.p999,
            max: t2o.max,
            events_per_sec: rate,
        },
    )
}

/// The same four stages, one thread each, wired with crossbeam bounded channels and
/// blocking receives (the way a channel-based service would do it). Same sync-point rule
/// for paper fills as ours. No journal consumer (less work than ours).
fn run_crossbeam(instruments: &[Instrument], events: &[Event], interval_ns: u64) -> Case {
    let stages = Stages::new(&EngineConfig::default(), instruments);
    let Stages { mut book, mut aggregate, mut risk, mut route } = stages;
    let cap = 1 << 14;
    let (tx_in, rx_in) = bounded::<(i64, Event)>(cap);
    let (tx_agg, rx_agg) = bounded::<StageMsg>(cap);
    let (tx_risk, rx_risk) = bounded::<StageMsg>(cap);
    let (tx_route, rx_route) = bounded::<StageMsg>(cap);
    let (tx_fb, rx_fb) = bounded::<ExecReport>(cap);
    let progress = Arc::new(AtomicI64::new(0));
    // The same cores as our split layout: all four stages share the last core here.
    let stage_core = {
        let c = *CORES.get().expect("cores");
        if c >= 5 {
            None
        } else {
            Some(c - 1)
        }
    };
    let core_of = move |i: usize| stage_core.or(Some(i + 1));
    let t_book = std::thread::spawn(move || {
        let _ = sapphire_core::affinity::pin_current_thread(core_of(0));
        for (seq, event) in rx_in {
            let mut msg = StageMsg { seq, event, ..StageMsg::default() };
            book.process(&mut msg);
            tx_agg.send(msg).expect("aggregate alive");
        }
    });
    let t_agg = std::thread::spawn(move || {
        let _ = sapphire_core::affinity::pin_current_thread(core_of(1));
        for mut msg in rx_agg {
            aggregate.process(&mut msg);
            tx_risk.send(msg).expect("risk alive");
        }
    });
    let p = Arc::clone(&progress);
    let t_risk = std::thread::spawn(move || {
        let _ = sapphire_core::affinity::pin_current_thread(core_of(2));
        let mut forwarded = 0;
        for mut msg in rx_risk {
            while let Ok(r) = rx_fb.try_recv() {
                risk.take_feedback(r);
            }
            if sapphire_core::engine::RiskStage::is_sync_point(&msg) {
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
            tx_route.send(msg).expect("route alive");
        }
    });
    let t_route = std::thread::spawn(move || {
        let _ = sapphire_core::affinity::pin_current_thread(core_of(3));
        let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 2).expect("bounds");
        let mut sink = Tally::default();
        let mut outbound: Vec<Order> = Vec::new();
        for msg in rx_route {
            route.process(&msg, &mut outbound, &mut sink, |r| {
                let _ = tx_fb.send(r);
            });
            let _ = hist.record(unix_nanos().saturating_sub(msg.event.ts_recv()).max(1));
            progress.store(msg.seq + 1, Ordering::Release);
        }
        hist
    });
    pin(0);
    let start = Instant::now();
    let mut pacer = Pacer::new(interval_ns);
    for (i, e) in events.iter().enumerate() {
        let mut e = *e;
        e.set_ts_recv(pacer.next());
        tx_in.send((i as i64, e)).expect("book alive");
    }
    drop(tx_in);
    t_book.join().expect("book");
    t_agg.join().expect("aggregate");
    t_risk.join().expect("risk");
    let hist = t_route.join().expect("route");
    let rate = events.len() as f64 / start.elapsed().as_secs_f64();
    let _ = RiskOutput::default();
    Case {
        name: format!("crossbeam_split_paced_{interval_ns}ns_end_to_end"),
        count: hist.len(),
        p50: hist.value_at_quantile(0.5),
        p99: hist.value_at_quantile(0.99),
        p999: hist.value_at_quantile(0.999),
        max: hist.max(),
        events_per_sec: rate,
    }
}

fn main() {
    CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let quick = std::env::args().any(|a| a == "--quick");
    let steps = if quick { 40_000 } else { 250_000 };
    let (instruments, events) = events(steps);
    eprintln!("engine bench: {} events over {} instruments{}", events.len(), instruments.len(), if quick { " (quick)" } else { "" });
    let mut cases = Vec::new();
    cases.push(direct_throughput(&instruments, &events, 3));
    cases.extend(direct_latency(&instruments, &events));
    let (flood, _) = run_pipeline(Layout::Fused, &instruments, &events, 0);
    cases.push(flood);
    let (e2e, t2o) = run_pipeline(Layout::Fused, &instruments, &events, 1_000);
    cases.push(e2e);
    cases.push(t2o);
    // The split comparison runs slower so that six threads fit on a small machine.
    let split_interval = 5_000;
    let split_events = &events[..events.len().min(if quick { 60_000 } else { 200_000 })];
    let (split, _) = run_pipeline(Layout::Split, &instruments, split_events, split_interval);
    let crossbeam = run_crossbeam(&instruments, split_events, split_interval);
    let ratio = crossbeam.p50 as f64 / split.p50.max(1) as f64;
    cases.push(split);
    cases.push(crossbeam);

    println!("{:<44} {:>10} {:>10} {:>10} {:>12} {:>14} {:>9}", "case", "p50", "p99", "p99.9", "max", "events/s", "samples");
    for c in &cases {
        println!("{:<44} {:>8}ns {:>8}ns {:>8}ns {:>10}ns {:>14.0} {:>9}", c.name, c.p50, c.p99, c.p999, c.max, c.events_per_sec, c.count);
    }
    println!("ratio split_vs_crossbeam_p50 (crossbeam ÷ ours, >1 means ours is lower): {ratio:.2}");
    let json = cases
        .iter()
        .map(|c| {
            format!(
                "{{\"name\":\"{}\",\"p50_ns\":{},\"p99_ns\":{},\"p999_ns\":{},\"max_ns\":{},\"events_per_sec\":{:.0}}}",
                c.name, c.p50, c.p99, c.p999, c.max, c.events_per_sec
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    println!("{{\"cases\":[{json}],\"ratios\":{{\"split_vs_crossbeam_p50\":{ratio:.3}}}}}");
}
