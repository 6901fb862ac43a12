//! The running engine: the inbound ring, the journal stage beside the engine stages, the
//! engine stages fused on one thread or split one per thread, and the rings out.
//!
//! ```text
//! producers ─▶ inbound ring ─┬─▶ journal stage (InputJournal)
//!                            └─▶ fused: book→aggregate→risk→route   (one thread)
//!                                split: book ─▶ aggregate ─▶ risk ─▶ route (SPSC rings)
//!                                                              ▲        │ paper reports
//!                                                              └────────┘
//! route ─▶ outputs ring (edge: sinks, dashboard)   route ─▶ outbound ring (venues)
//! ```
//!
//! Snapshots ([`PipelineConfig::snapshots`]): at the scheduled events each engine thread copies
//! its stage(s) into a spare and hands the copy to [`Pipeline::take_snapshots`]'s reader without
//! waiting (see [`crate::snapshot`]).
//!
//! Shutdown: stop every producer, then [`Pipeline::shutdown`]; each stage drains what was
//! published, closes the ring after it, and hands its state back.

use crate::affinity::{pin_current_thread, PinOutcome};
use crate::engine::{AggregateStage, BookStage, EngineConfig, OrderSink, Output, OutputSink, RiskStage, RouteStage, StageMsg, Stages};
use crate::event::{Event, ExecReport};
use crate::instrument::Instrument;
use crate::journal::InputJournal;
use crate::latency::{unix_nanos, LatencyReader, LatencySnapshot, StageLatency};
use crate::order::Order;
use crate::release::{JournalProgress, OutboundOrder, Released};
use crate::ring::{ring, Consumer, Poll, Producer};
use crate::snapshot::{snapshot_channel, SnapshotFeed, SnapshotPolicy, SnapshotTap};
use crate::wait::WaitStrategy;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// How the engine stages map onto threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// All engine stages on one thread (the default; right for 2-4 cores).
    #[default]
    Fused,
    /// One thread per stage (for machines with exclusive cores to spare).
    Split,
}

impl Layout {
    /// Parses `fused` or `split`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "fused" => Some(Layout::Fused),
            "split" => Some(Layout::Split),
            _ => None,
        }
    }
}

/// Threads, cores, waits and ring sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineConfig {
    /// Fused or split.
    pub layout: Layout,
    /// Inbound ring slots.
    pub ring_capacity: usize,
    /// Slots of each ring between split stages, and of the output and outbound rings.
    pub link_capacity: usize,
    /// Cores for the engine threads: one (fused) or four (split: book, aggregate, risk, route);
    /// missing entries run unpinned.
    pub engine_cores: Vec<usize>,
    /// Core for the journal stage.
    pub journal_core: Option<usize>,
    /// How engine threads wait.
    pub engine_wait: WaitStrategy,
    /// How the journal stage waits.
    pub journal_wait: WaitStrategy,
    /// Time the stages for one event in this many (a clock read costs ~30 ns here, a
    /// stage ~30-80 ns); `tick_to_order` is recorded for every order regardless.
    pub latency_sample_every: u32,
    /// Most events handled per poll before releasing slots.
    pub max_batch: usize,
    /// When the engine threads copy their state for a snapshot ([`Pipeline::take_snapshots`]
    /// hands the copies to a writer); off by default.
    pub snapshots: SnapshotPolicy,
    /// The event the snapshot schedule counts `every_events` from; `None`: the pipeline's
    /// first. After recovery, the one after the snapshot it started from (0 with none): a core
    /// killed again and again before it ran `every_events` still snapshots at its first point
    /// once the journal since the last snapshot is that long, so restarts stay short.
    pub snapshots_count_from: Option<i64>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            layout: Layout::Fused,
            ring_capacity: 1 << 16,
            link_capacity: 1 << 14,
            engine_cores: Vec::new(),
            journal_core: None,
            engine_wait: WaitStrategy::SpinHint,
            journal_wait: WaitStrategy::Sleep(std::time::Duration::from_micros(100)),
            latency_sample_every: 16,
            max_batch: 512,
            snapshots: SnapshotPolicy::OFF,
            snapshots_count_from: None,
        }
    }
}

/// Live counters, written by the stages at the end of each batch.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Events fully processed by the last stage.
    pub processed: AtomicU64,
    /// Orders and cancels routed.
    pub orders: AtomicU64,
    /// Fills.
    pub fills: AtomicU64,
    /// Book sequence gaps.
    pub gaps: AtomicU64,
    /// Outputs the edge did not take in time (the edge is behind; derived data, replayable).
    pub outputs_dropped: AtomicU64,
    /// Orders the outbound queue could not take.
    pub outbound_full: AtomicU64,
    /// Events appended by the journal stage.
    pub journaled: AtomicU64,
    /// Journal appends that failed (fatal: the operator must stop the engine).
    pub journal_errors: AtomicU64,
    /// Times a spinning engine thread, polling an empty ring, lost its CPU for
    /// [`STALL_NS`] or more: another thread on its core, an interrupt, or the hypervisor
    /// taking the virtual CPU. An event arriving then waits as long.
    pub stalls: AtomicU64,
    /// Time those stalls took, ns.
    pub stalled_ns: AtomicU64,
}

/// A gap between two empty polls of a spinning engine thread counted as a stall, ns.
pub const STALL_NS: u64 = 100_000;

/// Watches a spinning stage's empty polls for stalls (one clock read per turn of its loop).
/// A turn that handled events is not judged: its time is the work, timed by the stages.
/// The fused thread is watched; in the split layout, the book and route threads.
struct StallWatch {
    on: bool,
    last: Instant,
    idle_turn: bool,
}

impl StallWatch {
    fn new(wait: WaitStrategy) -> Self {
        // A sleeping stage gives its CPU away on purpose.
        Self { on: !matches!(wait, WaitStrategy::Sleep(_)), last: Instant::now(), idle_turn: false }
    }

    /// Call at the top of every turn; `idle` says whether the previous turn found nothing.
    #[inline]
    fn turn(&mut self, stats: &PipelineStats) {
        if !self.on {
            return;
        }
        let now = Instant::now();
        if self.idle_turn {
            let gap = now.duration_since(self.last).as_nanos() as u64;
            if gap >= STALL_NS {
                stats.stalls.fetch_add(1, Ordering::Relaxed);
                stats.stalled_ns.fetch_add(gap, Ordering::Relaxed);
            }
        }
        self.last = now;
    }

    #[inline]
    fn polled(&mut self, empty: bool) {
        self.idle_turn = empty;
    }
}

/// Writes outputs into a ring without ever waiting; counts what did not fit.
struct RingOutputs {
    producer: Producer<Output>,
    stats: Arc<PipelineStats>,
}

impl OutputSink for RingOutputs {
    #[inline]
    fn emit(&mut self, out: Output) {
        if self.producer.try_publish(out).is_err() {
            self.stats.outputs_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sends orders into the outbound ring without waiting, each with the inbound sequence of
/// the event being processed (the journal gate releases it once that event is journaled).
struct RingOrders {
    producer: Producer<OutboundOrder>,
    seq: i64,
}

impl OrderSink for RingOrders {
    #[inline]
    fn send(&mut self, order: Order) -> Result<(), Order> {
        self.producer.try_publish(OutboundOrder { seq: self.seq, order }).map(|_| ()).map_err(|o| o.order)
    }
}

/// What the pipeline returns when it stops.
pub struct PipelineReport {
    /// The stages' final state.
    pub stages: Stages,
    /// The journal, flushed.
    pub journal: Box<dyn InputJournal>,
    /// Each thread's pinning outcome, by thread name.
    pub pins: Vec<(&'static str, PinOutcome)>,
    /// Final latency percentiles per stage.
    pub latency: Vec<LatencySnapshot>,
}

impl std::fmt::Debug for PipelineReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineReport")
            .field("journaled", &self.journal.appended())
            .field("pins", &self.pins)
            .field("latency", &self.latency)
            .finish()
    }
}

type StageResult<S> = JoinHandle<(S, Vec<LatencySnapshot>)>;

enum Worker {
    Fused(StageResult<Stages>),
    Split {
        book: StageResult<BookStage>,
        aggregate: StageResult<AggregateStage>,
        risk: StageResult<RiskStage>,
        route: StageResult<RouteStage>,
    },
}

/// A running engine.
pub struct Pipeline {
    producer: Producer<Event>,
    journal: JoinHandle<Box<dyn InputJournal>>,
    worker: Worker,
    pins: std::sync::mpsc::Receiver<(&'static str, PinOutcome)>,
    pinned: Vec<(&'static str, PinOutcome)>,
    stats: Arc<PipelineStats>,
    progress: Arc<JournalProgress>,
    latency: Vec<LatencyReader>,
    outputs: Option<Consumer<Output>>,
    outbound: Option<Consumer<OutboundOrder>>,
    snapshots: Option<SnapshotFeed>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("stats", &self.stats).finish()
    }
}

type PinSender = std::sync::mpsc::Sender<(&'static str, PinOutcome)>;

/// The engine's stage threads (the fused `engine`, or the split layout's four), the ones that
/// run on the engine's cores; the journal thread is not among them.
pub const ENGINE_STAGES: [&str; 5] = ["engine", "book", "aggregate", "risk", "route"];

/// The OS name of a pipeline thread, as `/proc/<pid>/task/<tid>/comm` shows it (Linux keeps
/// 15 bytes of a thread's name).
pub fn os_thread_name(stage: &str) -> String {
    let mut name = format!("sapphire-{stage}");
    name.truncate(15);
    name
}

fn spawn<T: Send + 'static>(
    name: &'static str,
    core: Option<usize>,
    pins: &PinSender,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let pins = pins.clone();
    std::thread::Builder::new()
        .name(os_thread_name(name))
        .spawn(move || {
            let _ = pins.send((name, pin_current_thread(core)));
            drop(pins);
            f()
        })
        .expect("the OS could not start a pipeline thread")
}

/// Decides which events get their stage latency measured.
#[derive(Clone, Copy)]
struct Sampler {
    every: u32,
    n: u32,
}

impl Sampler {
    #[inline]
    fn tick(&mut self) -> bool {
        self.n += 1;
        if self.n >= self.every {
            self.n = 0;
            true
        } else {
            false
        }
    }
}

#[inline]
fn ns_since(t: Instant) -> u64 {
    t.elapsed().as_nanos() as u64
}

/// Records, from the event's `ts_recv`, when it left the route stage (`end_to_end`, for
/// sampled events) and, when it produced orders, `tick_to_order` (always).
#[inline]
fn record_exit(msg: &StageMsg, sampled: bool, tick_to_order: &mut StageLatency, end_to_end: &mut StageLatency) {
    let orders = !msg.orders.is_empty();
    if !(orders || sampled) {
        return;
    }
    let recv = msg.event.ts_recv();
    if recv == 0 {
        return;
    }
    let ns = unix_nanos().saturating_sub(recv);
    if orders {
        tick_to_order.record(ns);
    }
    if sampled {
        end_to_end.record(ns);
    }
}

const LATENCY_PUBLISH_EVERY: u32 = 4_096;

impl Pipeline {
    /// Builds the rings and starts the threads.
    pub fn start(config: &PipelineConfig, engine: &EngineConfig, instruments: &[Instrument], journal: Box<dyn InputJournal>) -> Self {
        Self::resume(config, Stages::new(engine, instruments), 0, journal)
    }

    /// Starts from stages rebuilt by recovery (the journal replayed through the engine):
    /// inbound events are numbered from `first_seq`, so intent and client order ids carry on
    /// from where the journal ended and none is ever issued twice.
    pub fn resume(config: &PipelineConfig, stages: Stages, first_seq: i64, journal: Box<dyn InputJournal>) -> Self {
        let (producer, mut consumers) = ring::<Event>(config.ring_capacity, 2);
        let engine_consumer = consumers.pop().expect("two consumers");
        let journal_consumer = consumers.pop().expect("two consumers");
        let (out_producer, mut out_consumers) = ring::<Output>(config.link_capacity, 1);
        let (order_producer, mut order_consumers) = ring::<OutboundOrder>(config.link_capacity, 1);
        let stats = Arc::new(PipelineStats::default());
        let progress = Arc::new(JournalProgress::new(first_seq));
        let (pin_tx, pins) = std::sync::mpsc::channel();
        let outputs = RingOutputs { producer: out_producer, stats: Arc::clone(&stats) };
        let orders = RingOrders { producer: order_producer, seq: first_seq };
        // Snapshots: one tap per engine thread, each on the same schedule.
        let (mut taps, snapshots) = if config.snapshots.enabled() {
            let threads = if config.layout == Layout::Fused { 1 } else { 4 };
            let (taps, feed) = snapshot_channel(config.snapshots, config.snapshots_count_from.unwrap_or(first_seq), threads);
            (taps.into_iter().map(Some).collect::<Vec<_>>(), Some(feed))
        } else {
            ((0..4).map(|_| None).collect(), None)
        };
        let mut tap = move |i: usize| taps.get_mut(i).and_then(Option::take);

        let journal = {
            let (stats, progress) = (Arc::clone(&stats), Arc::clone(&progress));
            let (wait, batch) = (config.journal_wait, config.max_batch);
            spawn("journal", config.journal_core, &pin_tx, move || {
                journal_stage(journal_consumer, journal, first_seq, wait, batch, &stats, &progress)
            })
        };

        let mut latency = Vec::new();
        let mut recorder = |name: &'static str| {
            let (rec, reader) = StageLatency::new(name, LATENCY_PUBLISH_EVERY);
            latency.push(reader);
            rec
        };
        let sampler = Sampler { every: config.latency_sample_every.max(1), n: 0 };
        let (wait, batch) = (config.engine_wait, config.max_batch);
        let core = |i: usize| config.engine_cores.get(i).copied();
        let worker = match config.layout {
            Layout::Fused => {
                let recs = [
                    recorder("book"),
                    recorder("aggregate"),
                    recorder("risk"),
                    recorder("route"),
                    recorder("tick_to_order"),
                    recorder("end_to_end"),
                ];
                let (stats, progress) = (Arc::clone(&stats), Arc::clone(&progress));
                let tap = tap(0);
                Worker::Fused(spawn("engine", core(0), &pin_tx, move || {
                    fused_stage(engine_consumer, stages, first_seq, recs, sampler, wait, batch, &stats, &progress, orders, outputs, tap)
                }))
            }
            Layout::Split => {
                let Stages { book, aggregate, risk, route } = stages;
                let (to_agg, mut from_book) = ring::<StageMsg>(config.link_capacity, 1);
                let (to_risk, mut from_agg) = ring::<StageMsg>(config.link_capacity, 1);
                let (to_route, mut from_risk) = ring::<StageMsg>(config.link_capacity, 1);
                let (feedback_tx, mut feedback_rx) = ring::<ExecReport>(config.link_capacity, 1);
                let route_progress = Arc::new(AtomicI64::new(0));
                let (book_rec, agg_rec, risk_rec) = (recorder("book"), recorder("aggregate"), recorder("risk"));
                let route_recs = [recorder("route"), recorder("tick_to_order"), recorder("end_to_end")];
                let book = {
                    let (stats, progress) = (Arc::clone(&stats), Arc::clone(&progress));
                    let tap = tap(0);
                    spawn("book", core(0), &pin_tx, move || {
                        book_stage(engine_consumer, book, first_seq, to_agg, book_rec, sampler, wait, batch, &stats, &progress, tap)
                    })
                };
                let aggregate = {
                    let from = from_book.pop().expect("one consumer");
                    let mut tap = tap(1);
                    spawn("aggregate", core(1), &pin_tx, move || {
                        let mut stage = aggregate;
                        if let Some(t) = &mut tap {
                            t.prime(&stage);
                        }
                        let lat = relay(from, to_risk, agg_rec, sampler, wait, batch, |msg| {
                            stage.process(msg);
                            if let Some(t) = &mut tap {
                                if t.due(msg.seq, &msg.event) {
                                    t.capture(msg.seq, msg.event.ts_event(), &stage);
                                }
                            }
                        });
                        (stage, lat)
                    })
                };
                let risk = {
                    let (from, feedback) = (from_agg.pop().expect("one consumer"), feedback_rx.pop().expect("one consumer"));
                    let progress = Arc::clone(&route_progress);
                    let tap = tap(2);
                    spawn("risk", core(2), &pin_tx, move || {
                        risk_stage(from, to_route, feedback, &progress, risk, risk_rec, sampler, wait, batch, tap)
                    })
                };
                let route = {
                    let from = from_risk.pop().expect("one consumer");
                    let stats = Arc::clone(&stats);
                    let tap = tap(3);
                    spawn("route", core(3), &pin_tx, move || {
                        route_stage(
                            from,
                            route,
                            feedback_tx,
                            &route_progress,
                            route_recs,
                            sampler,
                            wait,
                            batch,
                            &stats,
                            orders,
                            outputs,
                            tap,
                        )
                    })
                };
                Worker::Split { book, aggregate, risk, route }
            }
        };
        Self {
            producer,
            journal,
            worker,
            pins,
            pinned: Vec::new(),
            stats,
            progress,
            latency,
            outputs: out_consumers.pop(),
            outbound: order_consumers.pop(),
            snapshots,
        }
    }

    /// The engine threads' snapshot copies, for the snapshot writer (take it once); `None`
    /// when [`PipelineConfig::snapshots`] is off.
    pub fn take_snapshots(&mut self) -> Option<SnapshotFeed> {
        self.snapshots.take()
    }

    /// Pinning outcomes of the threads that have started so far.
    pub fn pin_outcomes(&mut self) -> &[(&'static str, PinOutcome)] {
        self.pinned.extend(self.pins.try_iter());
        &self.pinned
    }

    /// A producer for the inbound ring (clone one per producing thread).
    pub fn producer(&self) -> Producer<Event> {
        self.producer.clone()
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<PipelineStats> {
        Arc::clone(&self.stats)
    }

    /// Latency readers: one per stage, then `tick_to_order` (events that produced orders)
    /// and `end_to_end` (every sampled event, `ts_recv` to leaving the route stage).
    pub fn latency(&self) -> &[LatencyReader] {
        &self.latency
    }

    /// The engine's outputs, for one edge consumer (take it once), released through the
    /// journal gate: an output leaves only once the event that caused it is journaled.
    pub fn take_outputs(&mut self) -> Option<Released<Output>> {
        self.outputs.take().map(|c| Released::new(c, Arc::clone(&self.progress)))
    }

    /// Orders for external venues, for the venue gateway (take it once), released through
    /// the journal gate like the outputs.
    pub fn take_outbound(&mut self) -> Option<Released<OutboundOrder>> {
        self.outbound.take().map(|c| Released::new(c, Arc::clone(&self.progress)))
    }

    /// How far the input journal has got (the gate's side).
    pub fn journal_progress(&self) -> Arc<JournalProgress> {
        Arc::clone(&self.progress)
    }

    /// Events published but not yet released by the slowest inbound consumer.
    pub fn backlog(&self) -> i64 {
        self.producer.backlog()
    }

    /// Stops the pipeline once every producer has stopped: every stage drains what was
    /// published, then hands its state back.
    pub fn shutdown(self) -> PipelineReport {
        self.producer.close();
        let journal = self.journal.join().expect("journal stage panicked");
        let (stages, latency) = match self.worker {
            Worker::Fused(h) => h.join().expect("engine stage panicked"),
            Worker::Split { book, aggregate, risk, route } => {
                let (book, mut lat) = book.join().expect("book stage panicked");
                let (aggregate, l) = aggregate.join().expect("aggregate stage panicked");
                lat.extend(l);
                let (risk, l) = risk.join().expect("risk stage panicked");
                lat.extend(l);
                let (route, l) = route.join().expect("route stage panicked");
                lat.extend(l);
                (Stages { book, aggregate, risk, route }, lat)
            }
        };
        let mut pins = self.pinned;
        pins.extend(self.pins.try_iter());
        PipelineReport { stages, journal, pins, latency }
    }
}

fn journal_stage(
    mut consumer: Consumer<Event>,
    mut journal: Box<dyn InputJournal>,
    first_seq: i64,
    wait: WaitStrategy,
    batch: usize,
    stats: &PipelineStats,
    progress: &JournalProgress,
) -> Box<dyn InputJournal> {
    let mut idle = 0;
    let publish = |journal: &dyn InputJournal| {
        stats.journaled.store(journal.appended(), Ordering::Relaxed);
        if let Some(seq) = journal.written() {
            progress.written_through(first_seq + seq);
        }
        // After `written_through`: a gate that sees the failure sees the final position.
        progress.set_failed(journal.errors());
        stats.journal_errors.store(journal.errors(), Ordering::Relaxed);
    };
    loop {
        match consumer.poll(batch, |e, seq, eob| journal.append(seq, e, eob)) {
            Poll::Handled(_) => {
                idle = 0;
                publish(&*journal);
            }
            Poll::Empty => wait.idle(&mut idle),
            Poll::Closed => break,
        }
    }
    journal.flush();
    publish(&*journal);
    journal
}

/// The last inbound sequence the engine may decide on: every one while the journal works;
/// after it failed, only those it holds (the rest are read and dropped, never processed, so
/// producers are not blocked while the process stops).
#[inline]
fn decide_through(journal: &JournalProgress) -> i64 {
    if journal.failed() {
        journal.through()
    } else {
        i64::MAX
    }
}

#[allow(clippy::too_many_arguments)]
fn fused_stage(
    mut consumer: Consumer<Event>,
    mut stages: Stages,
    first_seq: i64,
    mut recs: [StageLatency; 6],
    mut sampler: Sampler,
    wait: WaitStrategy,
    batch: usize,
    stats: &PipelineStats,
    journal: &JournalProgress,
    mut orders: RingOrders,
    mut outputs: RingOutputs,
    mut tap: Option<SnapshotTap>,
) -> (Stages, Vec<LatencySnapshot>) {
    let mut msg = StageMsg::default();
    let mut idle = 0;
    if let Some(t) = &mut tap {
        t.prime(&stages.book);
        t.prime(&stages.aggregate);
        t.prime(&stages.risk);
        t.prime(&stages.route);
    }
    let mut watch = StallWatch::new(wait);
    loop {
        watch.turn(stats);
        let decide_through = decide_through(journal);
        let polled = consumer.poll(batch, |event, seq, _| {
            if first_seq + seq > decide_through {
                return;
            }
            // A level in the middle of a venue message: the books take it, nobody decides (the
            // same outputs as the full path: none). Timed, when sampled, as book work.
            let sampled = sampler.tick();
            if sampled {
                let t = Instant::now();
                if stages.apply_level(event) {
                    recs[0].record(ns_since(t));
                    return;
                }
            } else if stages.apply_level(event) {
                return;
            }
            msg.reset(first_seq + seq, event);
            orders.seq = msg.seq;
            let s = &mut stages;
            if sampled {
                let t0 = Instant::now();
                s.book.process(&mut msg);
                let t1 = Instant::now();
                s.aggregate.process(&mut msg);
                let t2 = Instant::now();
                s.risk.process(&mut msg);
                let t3 = Instant::now();
                let risk = &mut s.risk;
                s.route.process(&msg, &mut orders, &mut outputs, |r| risk.take_feedback(r));
                let t4 = Instant::now();
                recs[0].record((t1 - t0).as_nanos() as u64);
                recs[1].record((t2 - t1).as_nanos() as u64);
                recs[2].record((t3 - t2).as_nanos() as u64);
                recs[3].record((t4 - t3).as_nanos() as u64);
            } else {
                s.process(&mut msg, &mut orders, &mut outputs);
            }
            let [.., tick_to_order, end_to_end] = &mut recs;
            record_exit(&msg, sampled, tick_to_order, end_to_end);
            if let Some(t) = &mut tap {
                if t.due(msg.seq, &msg.event) {
                    t.capture_all(msg.seq, msg.event.ts_event(), s);
                }
            }
        });
        watch.polled(polled == Poll::Empty);
        match polled {
            Poll::Handled(_) => {
                idle = 0;
                stats.processed.store(consumer.position() as u64, Ordering::Relaxed);
                stats.orders.store(stages.route.counters.orders, Ordering::Relaxed);
                stats.fills.store(stages.route.counters.fills, Ordering::Relaxed);
                stats.gaps.store(stages.book.counters.gaps, Ordering::Relaxed);
                stats.outbound_full.store(stages.route.counters.outbound_full, Ordering::Relaxed);
            }
            Poll::Empty => {
                if idle == 0 {
                    recs.iter_mut().for_each(StageLatency::maybe_publish);
                }
                wait.idle(&mut idle);
            }
            Poll::Closed => break,
        }
    }
    close_exits(&outputs, &orders, &mut recs);
    let lat = recs.iter().map(StageLatency::snapshot).collect();
    (stages, lat)
}

/// The last stage is done: readers of its rings drain and stop; its histograms go out.
fn close_exits(outputs: &RingOutputs, orders: &RingOrders, recs: &mut [StageLatency]) {
    outputs.producer.close();
    orders.producer.close();
    recs.iter_mut().for_each(StageLatency::publish);
}

/// Publishes into a link, waiting while it is full; `while_full` runs between tries.
#[inline]
fn forward(to: &mut Producer<StageMsg>, msg: &StageMsg, wait: WaitStrategy, mut while_full: impl FnMut()) {
    let mut idle = 0;
    while to.try_publish(*msg).is_err() {
        while_full();
        wait.idle(&mut idle);
    }
}

#[allow(clippy::too_many_arguments)]
fn book_stage(
    mut consumer: Consumer<Event>,
    mut stage: BookStage,
    first_seq: i64,
    mut to: Producer<StageMsg>,
    mut rec: StageLatency,
    mut sampler: Sampler,
    wait: WaitStrategy,
    batch: usize,
    stats: &PipelineStats,
    journal: &JournalProgress,
    mut tap: Option<SnapshotTap>,
) -> (BookStage, Vec<LatencySnapshot>) {
    let mut idle = 0;
    if let Some(t) = &mut tap {
        t.prime(&stage);
    }
    let mut watch = StallWatch::new(wait);
    loop {
        watch.turn(stats);
        let decide_through = decide_through(journal);
        let polled = consumer.poll(batch, |event, seq, _| {
            if first_seq + seq > decide_through {
                return;
            }
            let mut msg = StageMsg { seq: first_seq + seq, event: *event, ..StageMsg::default() };
            if sampler.tick() {
                let t = Instant::now();
                stage.process(&mut msg);
                rec.record(ns_since(t));
            } else {
                stage.process(&mut msg);
            }
            if let Some(t) = &mut tap {
                if t.due(msg.seq, &msg.event) {
                    t.capture(msg.seq, msg.event.ts_event(), &stage);
                }
            }
            forward(&mut to, &msg, wait, || {});
        });
        watch.polled(polled == Poll::Empty);
        match polled {
            Poll::Handled(_) => {
                idle = 0;
                stats.gaps.store(stage.counters.gaps, Ordering::Relaxed);
            }
            Poll::Empty => {
                if idle == 0 {
                    rec.maybe_publish();
                }
                wait.idle(&mut idle);
            }
            Poll::Closed => break,
        }
    }
    to.close();
    rec.publish();
    (stage, vec![rec.snapshot()])
}

/// A middle stage: take a message, process it, pass it on.
#[allow(clippy::too_many_arguments)]
fn relay(
    mut from: Consumer<StageMsg>,
    mut to: Producer<StageMsg>,
    mut rec: StageLatency,
    mut sampler: Sampler,
    wait: WaitStrategy,
    batch: usize,
    mut process: impl FnMut(&mut StageMsg),
) -> Vec<LatencySnapshot> {
    let mut idle = 0;
    loop {
        let polled = from.poll(batch, |m, _, _| {
            let mut msg = *m;
            if sampler.tick() {
                let t = Instant::now();
                process(&mut msg);
                rec.record(ns_since(t));
            } else {
                process(&mut msg);
            }
            forward(&mut to, &msg, wait, || {});
        });
        match polled {
            Poll::Handled(_) => idle = 0,
            Poll::Empty => {
                if idle == 0 {
                    rec.maybe_publish();
                }
                wait.idle(&mut idle);
            }
            Poll::Closed => break,
        }
    }
    to.close();
    rec.publish();
    vec![rec.snapshot()]
}

#[allow(clippy::too_many_arguments)]
fn risk_stage(
    mut from: Consumer<StageMsg>,
    mut to: Producer<StageMsg>,
    mut feedback: Consumer<ExecReport>,
    route_progress: &AtomicI64,
    mut stage: RiskStage,
    mut rec: StageLatency,
    mut sampler: Sampler,
    wait: WaitStrategy,
    batch: usize,
    mut tap: Option<SnapshotTap>,
) -> (RiskStage, Vec<LatencySnapshot>) {
    let mut idle = 0;
    if let Some(t) = &mut tap {
        t.prime(&stage);
    }
    // Sequence after the last message handed to the route stage.
    let mut forwarded: i64 = 0;
    loop {
        let polled = from.poll(batch, |m, _, _| {
            let mut msg = *m;
            // Keep the feedback ring drained so the route stage never waits on it.
            feedback.poll(usize::MAX, |r, _, _| stage.take_feedback(*r));
            if RiskStage::is_sync_point(&msg) {
                // Every report for earlier events: wait until route has done them all.
                let mut spin = 0;
                while route_progress.load(Ordering::Acquire) < forwarded {
                    feedback.poll(usize::MAX, |r, _, _| stage.take_feedback(*r));
                    wait.idle(&mut spin);
                }
                feedback.poll(usize::MAX, |r, _, _| stage.take_feedback(*r));
            }
            if sampler.tick() {
                let t = Instant::now();
                stage.process(&mut msg);
                rec.record(ns_since(t));
            } else {
                stage.process(&mut msg);
            }
            if let Some(t) = &mut tap {
                if t.due(msg.seq, &msg.event) {
                    t.capture(msg.seq, msg.event.ts_event(), &stage);
                }
            }
            forward(&mut to, &msg, wait, || {
                feedback.poll(usize::MAX, |r, _, _| stage.take_feedback(*r));
            });
            forwarded = msg.seq + 1;
        });
        match polled {
            Poll::Handled(_) => idle = 0,
            Poll::Empty => {
                if idle == 0 {
                    rec.maybe_publish();
                }
                feedback.poll(usize::MAX, |r, _, _| stage.take_feedback(*r));
                wait.idle(&mut idle);
            }
            Poll::Closed => break,
        }
    }
    to.close();
    rec.publish();
    (stage, vec![rec.snapshot()])
}

#[allow(clippy::too_many_arguments)]
fn route_stage(
    mut from: Consumer<StageMsg>,
    mut stage: RouteStage,
    mut feedback: Producer<ExecReport>,
    progress: &AtomicI64,
    mut recs: [StageLatency; 3],
    mut sampler: Sampler,
    wait: WaitStrategy,
    batch: usize,
    stats: &PipelineStats,
    mut orders: RingOrders,
    mut outputs: RingOutputs,
    mut tap: Option<SnapshotTap>,
) -> (RouteStage, Vec<LatencySnapshot>) {
    let mut idle = 0;
    if let Some(t) = &mut tap {
        t.prime(&stage);
    }
    let mut watch = StallWatch::new(wait);
    loop {
        watch.turn(stats);
        let polled = from.poll(batch, |msg, _, _| {
            let send = |r: ExecReport| {
                // The risk stage drains this ring while it waits, so this wait is short.
                let _ = feedback.publish(wait, r);
            };
            orders.seq = msg.seq;
            let sampled = sampler.tick();
            if sampled {
                let t = Instant::now();
                stage.process(msg, &mut orders, &mut outputs, send);
                recs[0].record(ns_since(t));
            } else {
                stage.process(msg, &mut orders, &mut outputs, send);
            }
            let [_, tick_to_order, end_to_end] = &mut recs;
            record_exit(msg, sampled, tick_to_order, end_to_end);
            progress.store(msg.seq + 1, Ordering::Release);
            // After the progress store: the risk stage does not wait for the copy.
            if let Some(t) = &mut tap {
                if t.due(msg.seq, &msg.event) {
                    t.capture(msg.seq, msg.event.ts_event(), &stage);
                }
            }
        });
        watch.polled(polled == Poll::Empty);
        match polled {
            Poll::Handled(_) => {
                idle = 0;
                stats.processed.store(from.position() as u64, Ordering::Relaxed);
                stats.orders.store(stage.counters.orders, Ordering::Relaxed);
                stats.fills.store(stage.counters.fills, Ordering::Relaxed);
                stats.outbound_full.store(stage.counters.outbound_full, Ordering::Relaxed);
            }
            Poll::Empty => {
                if idle == 0 {
                    recs.iter_mut().for_each(StageLatency::maybe_publish);
                }
                wait.idle(&mut idle);
            }
            Poll::Closed => break,
        }
    }
    close_exits(&outputs, &orders, &mut recs);
    (stage, recs.iter().map(StageLatency::snapshot).collect())
}

#[cfg(test)]
mod stall_tests {
    use super::*;

    #[test]
    fn a_long_gap_between_empty_polls_is_a_stall_and_work_or_sleeping_is_not() {
        let stats = PipelineStats::default();
        let mut watch = StallWatch::new(WaitStrategy::SpinHint);
        watch.turn(&stats);
        watch.polled(true);
        watch.turn(&stats);
        assert_eq!(stats.stalls.load(Ordering::Relaxed), 0, "back-to-back empty polls");
        watch.polled(true);
        std::thread::sleep(std::time::Duration::from_millis(2));
        watch.turn(&stats);
        assert_eq!(stats.stalls.load(Ordering::Relaxed), 1);
        assert!(stats.stalled_ns.load(Ordering::Relaxed) >= 2_000_000);
        // A turn that handled events took its time working: not judged.
        watch.polled(false);
        std::thread::sleep(std::time::Duration::from_millis(2));
        watch.turn(&stats);
        assert_eq!(stats.stalls.load(Ordering::Relaxed), 1);
        // A sleeping stage gives its CPU away on purpose.
        let mut sleeper = StallWatch::new(WaitStrategy::Sleep(std::time::Duration::from_micros(100)));
        sleeper.turn(&stats);
        sleeper.polled(true);
        std::thread::sleep(std::time::Duration::from_millis(2));
        sleeper.turn(&stats);
        assert_eq!(stats.stalls.load(Ordering::Relaxed), 1);
    }
}
