//! `sapphire run`: wires the synthetic market, the pipeline and the edge, prints status.

use crate::config::RunConfig;
use anyhow::Context;
use sapphire_core::affinity::PinOutcome;
use sapphire_core::board::MarketBoard;
use sapphire_core::engine::{EngineOutput, Output};
use sapphire_core::event::{Event, RejectReason};
use sapphire_core::fixed::{Money, Price, Quantity};
use sapphire_core::instrument::InstrumentRegistry;
use sapphire_core::latency::{unix_nanos, LatencySnapshot};
use sapphire_core::pipeline::{Pipeline, PipelineReport};
use sapphire_core::release::Released;
use sapphire_core::ring::Poll;
use sapphire_core::risk::{AlertKind, RiskOutput};
use sapphire_core::wait::WaitStrategy;
use sapphire_gateway::api::{ApiServer, EdgeState, FnSource, MetricsWriter};
use sapphire_gateway::synthetic::{default_instruments, SyntheticConfig, SyntheticInstrument, SyntheticMarket};
use sapphire_persistence::bus::BusStats;
use sapphire_persistence::journal::JournalWriter;
use sapphire_persistence::pg;
use sapphire_persistence::retention;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Flags of `sapphire run` that are not configuration.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Only the final summary.
    pub quiet: bool,
}

pub(crate) fn synthetic_instruments(symbols: &[String]) -> Vec<SyntheticInstrument> {
    let known = default_instruments();
    if symbols.is_empty() {
        return known;
    }
    symbols
        .iter()
        .map(|s| {
            known.iter().find(|k| &k.symbol == s).cloned().unwrap_or_else(|| SyntheticInstrument {
                symbol: s.clone(),
                start_price: Price::from_units(100),
                tick: Price::from_raw(Price::SCALE / 100),
                lot: Quantity::from_raw(Quantity::SCALE / 1_000),
                annual_vol_pct: 100,
            })
        })
        .collect()
}

/// The market thread: steps the synthetic market at the configured rate.
fn market_loop(
    mut market: SyntheticMarket,
    mut producer: sapphire_core::ring::Producer<Event>,
    rate: u64,
    stop: &AtomicBool,
    full: &AtomicU64,
) -> u64 {
    let start = Instant::now();
    let mut sent: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = (start.elapsed().as_nanos() * u128::from(rate) / 1_000_000_000) as u64;
        if sent >= due {
            // Ahead of schedule: wait a little (coarse sleeps keep a core free for the engine).
            let ahead_ns = (sent - due) * 1_000_000_000 / rate.max(1);
            std::thread::sleep(Duration::from_nanos(ahead_ns.clamp(50_000, 1_000_000)));
            continue;
        }
        let ts = unix_nanos();
        market.step(ts, &mut |mut e| {
            // Received = entering the ring, after the generator's own work.
            e.set_ts_recv(unix_nanos());
            if producer.publish(WaitStrategy::Yield, e).is_err() {
                full.fetch_add(1, Ordering::Relaxed);
            }
            sent += 1;
        });
    }
    sent
}

/// What the edge thread did, for the summary.
#[derive(Debug, Default)]
struct EdgeReport {
    /// Outputs appended to the output journal.
    journaled: u64,
    /// The output journal's first error (appending stops there; the next start rewrites the
    /// missing outputs from the input journal).
    error: Option<String>,
    /// Outputs withheld because the input journal failed before it held their cause.
    withheld: u64,
}

/// The edge thread: appends engine outputs to the output journal (which the Postgres sink and
/// other tailers read), applies them to the API's [`EdgeState`], reports guard alerts at once.
fn edge_loop(
    mut outputs: Released<sapphire_core::engine::Output>,
    state: &EdgeState,
    mut journal: JournalWriter<Output>,
    head: &AtomicU64,
    positions: &crate::agents_bridge::AgentPositions,
    quiet: bool,
    alerts: &crate::alerts::Alerts,
) -> EdgeReport {
    let mut idle = 0;
    let mut report = EdgeReport::default();
    loop {
        let polled = outputs.poll(4_096, |o| {
            if report.error.is_none() {
                match journal.append_record(o) {
                    Ok(_) => report.journaled += 1,
                    Err(e) => {
                        errln!("error: the output journal failed ({e}); outputs are no longer journaled in this run (the next start rewrites them from the input journal)");
                        report.error = Some(e.to_string());
                    }
                }
            }
            state.apply(o);
            positions.on_output(o);
            if let EngineOutput::Risk(RiskOutput::Alert(a)) = o.output {
                // To Telegram when configured (never blocks: a full queue drops and counts).
                alerts.risk(&a);
                if !quiet {
                    let what = match a.kind {
                        AlertKind::DrawdownWarning => format!("drawdown warning: {:.2}% from peak equity", a.value as f64 / 100.0),
                        AlertKind::DrawdownHalt => {
                            format!("drawdown HALT: {:.2}% from peak equity; opening orders refused until resumed", a.value as f64 / 100.0)
                        }
                        AlertKind::MarginLadder => format!("margin ladder level {} (0 normal, 1 reduce-only, 2 deleverage)", a.value),
                        AlertKind::Killed => "kill switch engaged".to_string(),
                        AlertKind::Halted => "trading halted by operator".to_string(),
                        AlertKind::Resumed => "trading resumed".to_string(),
                        AlertKind::AgentPaused => format!("agent {} {}", a.agent.0, if a.value == 1 { "paused" } else { "resumed" }),
                        AlertKind::LimitChanged => format!("limit changed to {}", a.value),
                        AlertKind::Flattening => format!("flatten of {}: pass {}", flatten_scope(a.agent), a.value),
                        AlertKind::Flattened => format!("flatten of {} ended: {} position(s) still open", flatten_scope(a.agent), a.value),
                        AlertKind::AgentMarginLadder => {
                            format!("agent {} margin ladder level {} (0 normal, 1 reduce-only, 2 deleverage)", a.agent.0, a.value)
                        }
                    };
                    errln!("risk: {what}");
                }
            }
        });
        head.store(journal.next_seq(), Ordering::Relaxed);
        match polled {
            Poll::Handled(_) => idle = 0,
            Poll::Empty => {
                // Between bursts: hand the records to the OS so tailers see them promptly.
                if report.error.is_none() {
                    if let Err(e) = journal.flush_idle() {
                        errln!("error: the output journal failed ({e})");
                        report.error = Some(e.to_string());
                    }
                }
                WaitStrategy::Sleep(Duration::from_micros(500)).idle(&mut idle)
            }
            Poll::Closed => break,
        }
    }
    if report.error.is_none() {
        if let Err(e) = journal.sync() {
            report.error = Some(e.to_string());
        }
    }
    report.withheld = outputs.withheld();
    report
}

/// How long ago a wall-clock time was, for people.
fn age(unix_ns: u64) -> String {
    let s = unix_nanos().saturating_sub(unix_ns) as f64 / 1e9;
    match s {
        s if s < 120.0 => format!("{s:.0} s ago"),
        s if s < 7_200.0 => format!("{:.0} min ago", s / 60.0),
        s => format!("{:.1} h ago", s / 3_600.0),
    }
}

/// The summary's retention line.
fn retention_summary(s: &retention::RetentionStats) -> String {
    let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let mut line = format!(
        "retention: {} input and {} output segments archived and deleted ({:.1} MiB freed), {} failed passes; on disk: input journal {:.1} MiB, output journal {:.1} MiB, snapshots {:.1} MiB",
        r(&s.archived_segments[0]),
        r(&s.archived_segments[1]),
        mib(r(&s.archived_bytes)),
        r(&s.errors),
        mib(r(&s.disk_bytes[0])),
        mib(r(&s.disk_bytes[1])),
        mib(r(&s.disk_bytes[2]))
    );
    if let Some(e) = s.last_error() {
        line += &format!("; last failure: {e}");
    }
    line
}

/// Journal disk use and retention's counters.
fn write_retention_metrics(s: &retention::RetentionStats, m: &mut MetricsWriter<'_>) {
    let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
    m.gauges(
        "sapphire_journal_disk_bytes",
        "Bytes on the data volume, by what holds them (at the last retention pass; at the scrape when retention is off).",
        [("input", &s.disk_bytes[0]), ("output", &s.disk_bytes[1]), ("snapshots", &s.disk_bytes[2])].map(|(k, a)| ([("journal", k)], r(a))),
    );
    m.counters(
        "sapphire_journal_archived_segments_total",
        "Sealed segments archived and deleted locally, by journal.",
        [("input", &s.archived_segments[0]), ("output", &s.archived_segments[1])].map(|(k, a)| ([("journal", k)], r(a))),
    );
    m.counter("sapphire_journal_archived_bytes_total", "Bytes archived and deleted locally.", r(&s.archived_bytes));
    m.counter(
        "sapphire_journal_retention_errors_total",
        "Retention passes that failed (archive unreachable, a file unreadable).",
        r(&s.errors),
    );
}

/// The summary's snapshot line.
fn snapshot_summary(s: &sapphire_persistence::snapshot::SnapshotStats) -> String {
    let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut line = format!("snapshots: {} written, {} failed", r(&s.written), r(&s.failed));
    let last = s.last_seq.load(Ordering::Relaxed);
    if r(&s.written) > 0 {
        line += &format!(
            "; newest of event {last}, {} KiB, encoded in {:.1} ms, written and synced in {:.1} ms; {} on disk",
            r(&s.last_bytes) / 1024,
            r(&s.last_encode_ns) as f64 / 1e6,
            r(&s.last_write_ns) as f64 / 1e6,
            r(&s.on_disk)
        );
    }
    if let Some(t) = s.taps() {
        line += &format!(
            "; engine-thread copies: last {}, longest {}, {} skipped",
            fmt_ns(r(&t.last_copy_ns)),
            fmt_ns(r(&t.max_copy_ns)),
            r(&t.skipped)
        );
    }
    line
}

fn money(raw: i64) -> String {
    format!("{:.2}", Money::from_raw(raw))
}

fn fmt_ns(ns: u64) -> String {
    match ns {
        0..=9_999 => format!("{ns}ns"),
        10_000..=9_999_999 => format!("{:.1}µs", ns as f64 / 1_000.0),
        _ => format!("{:.1}ms", ns as f64 / 1_000_000.0),
    }
}

fn latency_line(snaps: &[LatencySnapshot]) -> String {
    snaps.iter().filter(|s| s.count > 0).map(|s| format!("{} {}/{}", s.name, fmt_ns(s.p50), fmt_ns(s.p99))).collect::<Vec<_>>().join("  ")
}

/// Runs until the duration passes or Ctrl-C.
pub fn run(cfg: RunConfig, opts: RunOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("creating the data directory {}", cfg.data_dir.display()))?;
    // Nothing of ours shares the engine's cores: every thread running now, and every thread
    // started from here (runtimes, the status loop, signal handling), is kept off them; the
    // engine threads pin themselves onto them. An unpinned thread landing there would preempt
    // the spinning engine for a time slice (measured with benches/ws_load.rs: milliseconds).
    let engine_cores = &cfg.pipeline.engine_cores;
    if engine_cores.is_empty() {
        errln!(
            "note: the engine has no core of its own (one CPU available, or the split layout without [engine] engine_cores): every thread shares the CPUs, and latency will show it"
        );
    } else if let Err(e) = sapphire_core::affinity::keep_process_off(engine_cores) {
        errln!("warning: {e}; other threads may preempt the engine on cores {engine_cores:?}");
    }
    let mut synthetic = SyntheticConfig {
        seed: cfg.market.seed,
        instruments: synthetic_instruments(&cfg.market.symbols),
        depth: cfg.market.depth,
        timer_every_ns: cfg.market.timer_ms * 1_000_000,
    };
    // The instruments (and so their ids) come from the configuration, or from the venue's
    // exchangeInfo; the synthetic market itself is built after recovery, so it can start where
    // the journal left the prices.
    let mut registry = InstrumentRegistry::new();
    let binance = match cfg.market.source.as_str() {
        "binance" | "bybit" => Some(crate::live_feed::LiveSource::prepare(&cfg.market, cfg.max_symbols, &mut registry)?),
        _ => {
            SyntheticMarket::register(&synthetic, &mut registry).context("registering the synthetic instruments")?;
            None
        }
    };
    let instruments: Vec<_> = registry.iter().cloned().collect();
    let symbols: Vec<&str> = instruments.iter().map(|i| i.symbol.as_str()).collect();

    // Async services beside the engine, off its cores: the Postgres sink, the Redis bus.
    let services_core = cfg.edge_core;
    let services = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sapphire-services")
        // Beside the edge and journal threads, off the engine's core(s).
        .on_thread_start(move || {
            let _ = sapphire_core::affinity::pin_current_thread(services_core);
        })
        .enable_all()
        .build()
        .context("starting the services runtime")?;
    // The database is checked before anything trades: a schema this build cannot write is a
    // refusal to start (run `sapphire migrate`), never an implicit migration. An unreachable
    // database is not: the engine never waits for it, and the sink catches up later.
    if let Some(sink) = &cfg.sink {
        let target = sink.target();
        match services.block_on(pg::connect_pool(&sink.connect, 1, Duration::from_secs(5))) {
            Ok(pool) => {
                services
                    .block_on(pg::check_schema(&pool))
                    .with_context(|| format!("the database at {target} (DATABASE_URL) cannot take this build's rows"))?;
                services
                    .block_on(pg::upsert_instruments(&pool, &cfg.shard, &instruments))
                    .context("recording the instruments in Postgres")?;
                services.block_on(pool.close());
            }
            Err(e) => {
                errln!("warning: Postgres at {target} is unreachable ({e}); trading starts anyway and the sink catches up when it answers")
            }
        }
    }

    // Open the journal (a torn tail from a crash is cut here), then rebuild the engine: from the
    // newest usable snapshot and the journal after it.
    let restart_started = Instant::now();
    let (journal, recovery) =
        sapphire_persistence::journal::JournalWriter::open(cfg.journal.clone()).context("opening the input journal")?;
    let (mut output_journal, output_recovery) =
        JournalWriter::<Output>::open(cfg.output_journal.clone()).context("opening the output journal")?;
    let journals_opened = restart_started.elapsed();
    let recovered_at = Instant::now();
    let recovered = sapphire_persistence::recovery::recover_from_snapshot(
        &cfg.journal.dir,
        cfg.snapshots.as_ref().map(|s| s.dir.as_path()),
        &cfg.engine,
        &instruments,
        Some((&cfg.output_journal.dir, &mut output_journal)),
        |n| {
            if !opts.quiet {
                errln!("recovering: {n} journaled events replayed");
            }
        },
        // Printed even with --quiet: a snapshot passed over is a damaged file or a changed setting.
        |note| errln!("recovery: {note}"),
    )
    .context("recovering from the input journal")?;
    let recovered_in = recovered_at.elapsed();
    if recovered.next_seq > 0 {
        for (inst, sim) in instruments.iter().zip(synthetic.instruments.iter_mut()) {
            if let Some(mid) = recovered.stages.book.book(inst.id).and_then(|b| b.mid()) {
                sim.start_price = Price::from_raw(mid.raw - mid.raw % sim.tick.raw.max(1));
            }
        }
    }
    let mut market_registry = InstrumentRegistry::new();
    let market = SyntheticMarket::new(synthetic, &mut market_registry).context("building the synthetic market")?;
    let feed_counters = binance.as_ref().map(|b| b.counters());

    // Ctrl-C and SIGTERM (how Kubernetes stops a pod) both stop cleanly.
    let stop = crate::process::stop_flag(None)?;

    let recovered_events = recovered.events;
    let recovered_from = recovered.snapshot.clone();
    let orders_not_resent = recovered.orders_not_resent;
    let outputs_regenerated = recovered.outputs_regenerated;
    // The edge starts from the recovered risk state (totals, refusals, guards, open orders).
    let recovered_risk = recovered.stages.risk.risk.clone();
    // Each instrument's top of book, for readers off the hot path (agents, the Redis ticks).
    let board = Arc::new(MarketBoard::new(instruments.len()));
    let mut stages = recovered.stages;
    stages.book.attach_board(Arc::clone(&board));
    let outputs_from = output_journal.next_seq();
    // The snapshot schedule counts from the last snapshot, not from this start: a core killed
    // before each run reaches the interval would otherwise never snapshot again.
    let pipeline_config = sapphire_core::pipeline::PipelineConfig {
        snapshots_count_from: Some(recovered_from.as_ref().map_or(0, |s| s.seq as i64 + 1)),
        ..cfg.pipeline.clone()
    };
    let mut pipeline = Pipeline::resume(&pipeline_config, stages, recovered.next_seq as i64, Box::new(journal));
    // Snapshots: the engine threads copy their state at the scheduled events; this thread
    // encodes and writes them.
    let snapshot_writer = match (&cfg.snapshots, pipeline.take_snapshots()) {
        (Some(sc), Some(feed)) => Some(
            sapphire_persistence::snapshot::SnapshotWriter::spawn(
                feed,
                sc.clone(),
                sapphire_persistence::snapshot::Fingerprints::new(&cfg.engine, &instruments),
                pipeline.journal_progress(),
                opts.quiet,
            )
            .context("starting the snapshot writer")?,
        ),
        _ => None,
    };
    let snapshot_stats = snapshot_writer.as_ref().map(|w| w.stats());
    let restarted_in = restart_started.elapsed();
    let outputs = pipeline.take_outputs().expect("outputs are taken once");
    let edge = Arc::new(EdgeState::new(
        pipeline.stats(),
        pipeline.latency().to_vec(),
        symbols.iter().map(|s| s.to_string()).collect(),
        cfg.engine.risk.leverage,
    ));
    edge.seed_from(&recovered_risk);
    edge.attach_board(Arc::clone(&board));
    edge.set_instrument_shards(vec![cfg.shard.clone(); symbols.len()]);
    edge.set_agent_names((0..sapphire_core::aggregate::MAX_AGENTS).map(|a| agent_name(&cfg, a)).collect());
    // The API publishes into the engine's own ring: operator orders can wait for their outcome.
    edge.set_engine_in_process(true);
    drop(recovered_risk);
    // The synthetic market's books are always in sync; the core runs from here.
    edge.set_core_running(true);
    // Real order routing: the engine's outbound orders go to the venue on a thread of their
    // own; execution reports come back into the inbound ring (journaled, replayable). The
    // edge's positions (the engine's, from its outputs) are reconciled against the venue's.
    let routing = match &cfg.routing {
        Some(r) => {
            let outbound = pipeline.take_outbound().expect("the outbound queue is taken once");
            let engine: Arc<dyn sapphire_gateway::venue::execution::EnginePositions> = Arc::clone(&edge) as _;
            match sapphire_gateway::venue::routing::start_routing(r.clone(), &instruments, outbound, pipeline.producer(), Some(engine)) {
                Ok(h) => {
                    let (stats, stream) = (Arc::clone(&h.stats), Arc::clone(&h.stream_stats));
                    edge.add_source(Arc::new(FnSource::new(
                        "venue",
                        || Ok(()),
                        move |m: &mut MetricsWriter<'_>| {
                            stats.encode(m);
                            stream.encode(m);
                        },
                    )));
                    Some(h)
                }
                Err(e) => {
                    drop(outputs);
                    let _ = pipeline.shutdown();
                    return Err(anyhow::anyhow!("starting order routing to {:?}: {e}", r.market));
                }
            }
        }
        None => None,
    };
    let api = match ApiServer::start_with_limits(cfg.api.clone(), cfg.api_limits, Arc::clone(&edge), pipeline.producer()) {
        Ok(api) => api,
        Err(e) => {
            drop(outputs);
            let _ = pipeline.shutdown();
            return Err(e.into());
        }
    };
    // Printed even with --quiet: with port 0 it is the only way to learn the port.
    outln!("api: http://{}", api.addr());
    let mut service_tasks = Vec::new();
    // The daily report, on its own thread (a failure is printed; trading goes on).
    let report_stop = Arc::new(AtomicBool::new(false));
    let daily = crate::report::spawn_daily(cfg.data_dir.clone(), cfg.shard.clone(), &cfg.report, Arc::clone(&report_stop))?;
    // Operator alerts (drawdown, margin, kill, stale feed, engine core) to Telegram, rate
    // limited, on a thread of their own.
    let alerts = Arc::new(crate::alerts::Alerts::start(&cfg.alerts, &cfg.shard, opts.quiet)?);
    {
        let stats = alerts.stats();
        edge.add_source(Arc::new(FnSource::new("alerts", || Ok(()), move |m: &mut MetricsWriter<'_>| stats.encode(m))));
    }
    if cfg.alerts.telegram && !opts.quiet {
        outln!("alerts: to Telegram, at most one message per {} ms (a digest when more fire)", cfg.alerts.min_interval_ms);
    }
    let bus_stats = Arc::new(BusStats::default());
    let sink_stats = pg::SinkStats::new();
    let output_head = Arc::new(AtomicU64::new(outputs_from));
    // The sink stops after the edge has journaled the last output, once it has written
    // everything (or 10 s have passed: the rest waits in the journal for the next start).
    let sink_stop = Arc::new(AtomicBool::new(false));
    let mut sink_task = None;
    if let Some(sink) = &cfg.sink {
        let source = pg::JournalSource::new(&cfg.output_journal.dir).context("opening the output journal for the sink")?;
        let (stop, stats, head) = (Arc::clone(&sink_stop), Arc::clone(&sink_stats), Arc::clone(&output_head));
        let drained = async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // A database that is down now is not waited for.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while stats.healthy() && stats.cursor() < head.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        sink_task = Some(services.spawn(as_text(pg::run_sink(sink.clone(), source, Arc::clone(&sink_stats), drained))));
        if !opts.quiet {
            outln!("postgres: sink to {} ({:?} batches of up to {})", sink.target(), sink.method, sink.batch_max);
        }
    }
    // Retention: sealed segments behind the newest snapshot the sink has committed, archived
    // and then deleted (persistence/src/retention.rs); off without an archive.
    let retention_stats = retention::RetentionStats::new();
    let retention_stop = Arc::new(AtomicBool::new(false));
    let retention_dirs = retention::Dirs {
        input: cfg.journal.dir.clone(),
        output: cfg.output_journal.dir.clone(),
        snapshots: cfg.snapshots.as_ref().map_or_else(|| cfg.data_dir.join("snapshots"), |s| s.dir.clone()),
    };
    let retention_thread = match &cfg.retention {
        None => None,
        Some(r) => {
            let sink = match (&cfg.sink, &r.sink_cursor_file) {
                (Some(_), _) => retention::SinkCursor::InProcess(Arc::clone(&sink_stats)),
                (None, Some(file)) => retention::SinkCursor::File(file.clone()),
                (None, None) => retention::SinkCursor::None,
            };
            let waits_for = match &sink {
                retention::SinkCursor::None => "no sink: the output journal stays".to_string(),
                retention::SinkCursor::InProcess(_) => "output segments once the sink has committed them".to_string(),
                retention::SinkCursor::File(f) => format!("output segments once the sink's cursor in {} has passed them", f.display()),
            };
            let config = retention::RetentionConfig {
                archive: r.archive.clone(),
                shard: cfg.shard.clone(),
                every: r.every,
                keep_output: r.keep_output,
                sink,
            };
            let check = retention::SnapshotCheck::Full(sapphire_persistence::snapshot::Fingerprints::new(&cfg.engine, &instruments));
            let thread = retention::spawn(config, retention_dirs.clone(), check, Arc::clone(&retention_stats), Arc::clone(&retention_stop))
                .context("starting journal retention")?;
            if !opts.quiet {
                outln!(
                    "retention: sealed input segments behind the newest snapshot{} archived to {} (shard folder {}) and deleted; {waits_for}",
                    if cfg.snapshots.is_none() { " (snapshots are off: none will be)" } else { "" },
                    r.archive,
                    cfg.shard
                );
            }
            Some(thread)
        }
    };
    {
        let metrics = Arc::clone(&retention_stats);
        // Without retention nothing else measures the volume, and a journal that only grows is
        // exactly what the disk alerts are for: the scrape measures it then.
        let measure_at_scrape = cfg.retention.is_none().then(|| retention_dirs.clone());
        // Archiving failing is an alert (the journal stays and grows), not a reason to stop
        // serving: readiness does not depend on it.
        edge.add_source(Arc::new(FnSource::new(
            "retention",
            || Ok(()),
            move |m: &mut MetricsWriter<'_>| {
                if let Some(dirs) = &measure_at_scrape {
                    metrics.measure(dirs);
                }
                write_retention_metrics(&metrics, m)
            },
        )));
    }
    // The publisher stops after the engine's last output is journaled (with the sink), and
    // publishes what was journaled before its stop.
    let publisher_stop = Arc::new(AtomicBool::new(false));
    let mut publisher_task = None;
    if let Some(bus) = &cfg.redis {
        let names: Vec<String> = symbols.iter().map(|s| s.to_string()).collect();
        publisher_task = Some(services.spawn(as_text(sapphire_persistence::bus::run_publisher(
            bus.clone(),
            cfg.output_journal.dir.clone(),
            outputs_from,
            Arc::clone(&board),
            names.clone(),
            Arc::clone(&bus_stats),
            Arc::clone(&publisher_stop),
        ))));
        if cfg.redis_signal_ingress {
            service_tasks.push((
                "redis signal ingress",
                services.spawn(as_text(sapphire_persistence::bus::run_signal_ingress(
                    bus.clone(),
                    names,
                    cfg.agent_owners.clone(),
                    pipeline.producer(),
                    unix_nanos,
                    cfg.api.token.as_ref().map(|t| t.secret_bytes().to_vec()),
                    Arc::clone(&bus_stats),
                    Arc::clone(&stop),
                ))),
            ));
        }
        if !opts.quiet {
            outln!("redis: {} (prefix {:?})", sapphire_persistence::bus::redact(&bus.url), bus.prefix);
            if cfg.redis_signal_ingress {
                outln!("agent ids: {} (one producer each; Redis producers hold an id by lease)", cfg.agent_owners.describe());
            }
        }
    }
    // Remote agents over QUIC: signals into the inbound ring (journaled like every signal),
    // the board's tops out as datagrams. Stopped with the other services, before the ring closes.
    let mut quic_stats = None;
    if let Some(quic) = &cfg.quic {
        let names: Vec<String> = symbols.iter().map(|s| s.to_string()).collect();
        let ingress = {
            let _runtime = services.enter();
            sapphire_gateway::quic::QuicIngress::bind(quic.clone(), names, Arc::clone(&board), unix_nanos)
                .with_context(|| format!("starting the QUIC ingress on {}", quic.bind))?
        };
        // Printed even with --quiet, like the API address: with port 0 it is the only way to learn it.
        match ingress.cert_path() {
            Some(cert) => {
                outln!("quic: {} (self-signed development certificate for agents to pin: {})", ingress.local_addr(), cert.display())
            }
            None => outln!("quic: {}", ingress.local_addr()),
        }
        let stats = ingress.stats();
        quic_stats = Some(Arc::clone(&stats));
        edge.add_source(Arc::new(FnSource::new("quic", || Ok(()), move |m: &mut MetricsWriter<'_>| stats.encode(m))));
        service_tasks.push(("quic ingress", services.spawn(as_text(ingress.run(pipeline.producer(), Arc::clone(&stop))))));
    }
    // Snapshots and the restart they made quick.
    {
        let (stats, restart_s, replayed) = (snapshot_stats.clone(), restarted_in.as_secs_f64(), recovered_events);
        edge.add_source(Arc::new(FnSource::new(
            "snapshots",
            || Ok(()),
            move |m: &mut MetricsWriter<'_>| {
                m.gauge(
                    "sapphire_restart_seconds",
                    "Time from process start to trading at this start (journals opened, snapshot loaded, journal after it replayed).",
                    restart_s,
                );
                m.gauge(
                    "sapphire_recovery_events_replayed",
                    "Journaled events replayed at this start (those after the snapshot recovery started from).",
                    replayed,
                );
                if let Some(s) = &stats {
                    write_snapshot_metrics(s, m);
                }
            },
        )));
    }
    // Who else ran on the engine's cores (read from /proc on each scrape).
    edge.add_source(Arc::new(FnSource::new(
        "engine_core",
        || Ok(()),
        |m: &mut MetricsWriter<'_>| {
            if let Some(p) = crate::engine_core::preemption() {
                m.counter(
                    "sapphire_engine_preemptions_total",
                    "Times an engine thread was switched out while it still wanted to run (another task on its core).",
                    p.count,
                );
                m.counter(
                    "sapphire_engine_preempted_seconds_total",
                    "Time the engine threads were ready to run while another task held their core.",
                    p.waited_ns as f64 / 1e9,
                );
            }
        },
    )));
    // Readiness and metrics of the services: /readyz fails while a configured Postgres or
    // Redis does not answer (the engine trades on regardless; readiness tells the operator).
    if cfg.sink.is_some() {
        let stats = Arc::clone(&sink_stats);
        let metrics = Arc::clone(&sink_stats);
        edge.add_source(Arc::new(FnSource::new(
            "postgres_sink",
            move || if stats.healthy() { Ok(()) } else { Err(stats.last_error().unwrap_or_else(|| "not connected yet".into())) },
            move |m: &mut MetricsWriter<'_>| write_sink_metrics(&metrics, m),
        )));
    }
    if cfg.redis.is_some() {
        let stats = Arc::clone(&bus_stats);
        let metrics = Arc::clone(&bus_stats);
        edge.add_source(Arc::new(FnSource::new(
            "redis",
            move || {
                if stats.connected.load(Ordering::Relaxed) {
                    Ok(())
                } else {
                    Err(stats.last_error.lock().map(|e| e.clone()).unwrap_or_default().unwrap_or_else(|| "not connected yet".into()))
                }
            },
            move |m: &mut MetricsWriter<'_>| write_bus_metrics(&metrics, m),
        )));
    }
    // Feed health for /metrics: how old each instrument's last market event is (from the
    // board; wall clock against event time) and, for live feeds, the client's counters.
    {
        let (board, names, counters) =
            (Arc::clone(&board), symbols.iter().map(|s| s.to_string()).collect::<Vec<_>>(), feed_counters.clone());
        edge.add_source(Arc::new(FnSource::new(
            "feed",
            || Ok(()),
            move |m: &mut MetricsWriter<'_>| write_feed_metrics(&board, &names, counters.as_ref().map(|c| *c.borrow()), m),
        )));
    }
    // The agents runtime: market context from the board and the edge's view of fills and PnL;
    // signals into the inbound ring (journaled: a replay re-reads them, never asks a model).
    let positions = Arc::new(crate::agents_bridge::AgentPositions::new(instruments.len()));
    crate::agents_bridge::seed_pnl(&positions, &edge);
    let (agents_stop, agents_stop_rx) = tokio::sync::watch::channel(false);
    let mut agents_task = None;
    // Read by the summary: each agent's signals and why.
    let mut agents_metrics = None;
    if cfg.agents.enabled {
        let refs = instruments.iter().map(|i| sapphire_agents::InstrumentRef { id: i.id, symbol: i.symbol.clone() }).collect();
        let rt = sapphire_agents::AgentsRuntime::new(cfg.agents.clone(), refs, sapphire_agents::context::wall_clock())
            .map_err(|e| crate::config::ConfigError(format!("[agents.runtime]: {e}")))?;
        if !opts.quiet {
            for note in rt.notes() {
                outln!("agents: {note}");
            }
            if !rt.coverage().is_empty() {
                outln!("agents: {}", rt.coverage());
            }
        }
        let metrics = rt.metrics();
        agents_metrics = Some((Arc::clone(&metrics), rt.started()));
        edge.add_source(Arc::new(FnSource::new(
            "agents",
            || Ok(()),
            move |m: &mut MetricsWriter<'_>| {
                let encoded = metrics.encode(m.encoder());
                m.fail(encoded);
            },
        )));
        let ctx = Arc::new(crate::agents_bridge::BoardContext { board: Arc::clone(&board), positions: Arc::clone(&positions) });
        let sink = Box::new(crate::agents_bridge::RingSink { producer: pipeline.producer(), owners: cfg.agent_owners.clone() });
        agents_task = Some(services.spawn(rt.run(ctx, sink, agents_stop_rx)));
    }
    let edge_thread = {
        let positions = Arc::clone(&positions);
        let (edge, quiet, core, head) = (Arc::clone(&edge), opts.quiet, cfg.edge_core, Arc::clone(&output_head));
        let alerts = Arc::clone(&alerts);
        std::thread::Builder::new()
            .name("sapphire-edge".into())
            .spawn(move || {
                let _ = sapphire_core::affinity::pin_current_thread(core);
                edge_loop(outputs, &edge, output_journal, &head, &positions, quiet, &alerts)
            })
            .context("starting the edge thread")?
    };
    let ring_full = Arc::new(AtomicU64::new(0));
    let market_thread = {
        let (producer, stop, full, rate, core) =
            (pipeline.producer(), Arc::clone(&stop), Arc::clone(&ring_full), cfg.market.events_per_sec, cfg.edge_core);
        let timer_ms = cfg.market.timer_ms;
        std::thread::Builder::new()
            .name("sapphire-market".into())
            .spawn(move || {
                let _ = sapphire_core::affinity::pin_current_thread(core);
                match binance {
                    Some(source) => {
                        let run = source.run(producer, timer_ms, &stop, &full);
                        (run.published, run.error)
                    }
                    None => (market_loop(market, producer, rate, &stop, &full), None),
                }
            })
            .context("starting the market thread")?
    };

    if !opts.quiet {
        let source = match cfg.market.source.as_str() {
            venue @ ("binance" | "bybit") => {
                format!("{venue} {} feed from {} ({})", cfg.market.venue_market, cfg.market.ws_url, symbols.join(","))
            }
            _ => format!("synthetic market {} at {} events/s", symbols.join(","), cfg.market.events_per_sec),
        };
        let venue = match &cfg.routing {
            Some(r) => format!("REAL ORDERS to {:?} at {}", r.market, r.rest_url.as_deref().unwrap_or(r.market.default_rest_url())),
            None => "paper trading".to_string(),
        };
        outln!("sapphire run: {source}, {venue}, {:?} layout, data dir {}", cfg.pipeline.layout, cfg.data_dir.display());
        outln!(
            "journal: {} ({} records from earlier runs{}), durability {:?}; Ctrl-C stops cleanly",
            cfg.journal.dir.display(),
            recovery.records,
            if recovery.truncated_bytes > 0 {
                format!(", torn tail of {} bytes truncated", recovery.truncated_bytes)
            } else {
                String::new()
            },
            cfg.journal.durability
        );
        if recovered_events > 0 || recovered_from.is_some() {
            let from = match &recovered_from {
                Some(s) => format!(
                    "after snapshot {} (the state after event {}, written {})",
                    s.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                    s.seq,
                    age(s.written_ns)
                ),
                None => "(the whole journal: no usable snapshot)".to_string(),
            };
            outln!(
                "recovered: {recovered_events} journaled events replayed {from} in {:.2}s; trading {:.2}s after start (journals opened in {:.2}s): books, positions, PnL, risk state and open orders rebuilt ({orders_not_resent} orders re-decided, none re-sent)",
                recovered_in.as_secs_f64(),
                restarted_in.as_secs_f64(),
                journals_opened.as_secs_f64(),
            );
        }
        if let Some(sc) = &cfg.snapshots {
            let p = cfg.pipeline.snapshots;
            outln!(
                "snapshots: {} (every {} events or {} s of event time, at the next timer; the newest {} kept)",
                sc.dir.display(),
                p.every_events,
                p.every_ns / 1_000_000_000,
                sc.keep
            );
        }
        outln!(
            "output journal: {} ({} records{}{})",
            cfg.output_journal.dir.display(),
            output_recovery.records + outputs_regenerated,
            if output_recovery.truncated_bytes > 0 {
                format!(", torn tail of {} bytes truncated", output_recovery.truncated_bytes)
            } else {
                String::new()
            },
            if outputs_regenerated > 0 { format!(", {outputs_regenerated} outputs a crash kept from it rewritten") } else { String::new() }
        );
    }
    let started = Instant::now();
    let irqs_before = crate::engine_core::interrupts_on(engine_cores);
    let stats = pipeline.stats();
    let mut last_processed = 0u64;
    let mut last_tick = started;
    let mut pins_reported = false;
    let mut watch = crate::alerts::Watch::new(&cfg.alerts, symbols.len());
    loop {
        let deadline = opts.duration.map(|d| started + d);
        let next = last_tick + cfg.status_every;
        while Instant::now() < next
            && !stop.load(Ordering::Relaxed)
            && deadline.is_none_or(|d| Instant::now() < d)
            && stats.journal_errors.load(Ordering::Relaxed) == 0
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !pins_reported && started.elapsed() > Duration::from_millis(50) {
            pins_reported = true;
            for (name, outcome) in pipeline.pin_outcomes() {
                if let PinOutcome::Unpinned { core, reason } = outcome {
                    errln!("warning: {name} thread could not be pinned to core {core} ({reason}); running unpinned");
                }
            }
        }
        sink_stats.set_journal_head(output_head.load(Ordering::Relaxed));
        let now = Instant::now();
        let wall = unix_nanos();
        watch.feeds(
            &alerts,
            symbols.iter().enumerate().map(|(i, name)| {
                (*name, board.read(sapphire_core::instrument::InstrumentId(i as u32)).map(|t| wall.saturating_sub(t.ts_event)))
            }),
        );
        watch.engine(&alerts, now, stats.stalled_ns.load(Ordering::Relaxed));
        let processed = stats.processed.load(Ordering::Relaxed);
        let rate = (processed - last_processed) as f64 / now.duration_since(last_tick).as_secs_f64().max(1e-9);
        last_processed = processed;
        last_tick = now;
        if !opts.quiet {
            let snaps: Vec<_> = pipeline.latency().iter().map(|r| r.snapshot()).collect();
            outln!(
                "[{:>5.1}s] {:>9.0} ev/s  events {}  orders {}  fills {}  refused {}  equity {} (pnl {})  backlog {}  {}",
                started.elapsed().as_secs_f64(),
                rate,
                processed,
                edge.orders(),
                edge.fills(),
                edge.refusals_total(),
                money(edge.total().1.equity.raw),
                money((edge.total().1.equity - edge.total().1.capital).raw),
                pipeline.backlog(),
                latency_line(&snaps),
            );
        }
        if stats.journal_errors.load(Ordering::Relaxed) > 0 {
            errln!("error: the input journal failed; stopping (nothing is traded without its record)");
            break;
        }
        if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    // Read while the engine threads still run (their /proc entries go with them).
    let core_use = crate::engine_core::CoreUse {
        preemption: crate::engine_core::preemption(),
        interrupts: crate::engine_core::interrupts_since(&irqs_before, &crate::engine_core::interrupts_on(engine_cores)),
        workqueues: crate::engine_core::workqueues_on(engine_cores),
    };
    stop.store(true, Ordering::SeqCst);
    edge.set_core_running(false);
    // The API, the agents and the signal ingress hold inbound producers: they stop before the
    // ring closes.
    api.shutdown();
    let _ = agents_stop.send(true);
    if let Some(task) = agents_task {
        if let Err(e) = services.block_on(task) {
            errln!("warning: the agents runtime failed: {e}");
        }
    }
    for (name, task) in service_tasks {
        match services.block_on(task) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errln!("warning: {name} stopped: {e}"),
            Err(e) => errln!("warning: {name} failed: {e}"),
        }
    }
    let (published, feed_error) = market_thread.join().map_err(|_| anyhow::anyhow!("the market thread panicked"))?;
    // Routing publishes reports into the ring: it stops before the ring closes (it may wait
    // for a request in flight, up to its timeout).
    let routing_stats = routing.map(|r| {
        let stats = (
            Arc::clone(&r.stats),
            cfg.routing.as_ref().map(|c| format!("{:?}", c.market)).unwrap_or_default(),
            Arc::clone(&r.stream_stats),
        );
        r.stop();
        stats
    });
    let tick_to_order = pipeline.latency().iter().find(|r| r.name() == "tick_to_order").cloned();
    let pipeline_journal = pipeline.journal_progress();
    let report = pipeline.shutdown();
    // The engine threads are gone: the writer finishes the snapshot in hand, if any, and stops.
    if let Some(w) = snapshot_writer {
        w.join();
    }
    retention_stop.store(true, Ordering::Relaxed);
    if let Some(t) = retention_thread {
        let _ = t.join();
    }
    // Published by the last stage as it stopped: every order's latency.
    let tick_to_order = tick_to_order.map(|r| r.recorded()).unwrap_or_default();
    let edge_report = edge_thread.join().map_err(|_| anyhow::anyhow!("the edge thread panicked"))?;
    let elapsed = started.elapsed();
    sink_stop.store(true, Ordering::Relaxed);
    publisher_stop.store(true, Ordering::Relaxed);
    if let Some(task) = publisher_task {
        match services.block_on(task) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errln!("warning: redis publisher stopped: {e}"),
            Err(e) => errln!("warning: redis publisher failed: {e}"),
        }
    }
    if let Some(task) = sink_task {
        match services.block_on(task) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errln!("warning: the postgres sink stopped: {e}"),
            Err(e) => errln!("warning: the postgres sink failed: {e}"),
        }
    }
    services.shutdown_timeout(Duration::from_secs(2));
    report_stop.store(true, Ordering::Relaxed);
    if let Some(h) = daily {
        let _ = h.join();
    }
    // What is still pending goes out now (one attempt), then the sender stops.
    if let Ok(alerts) = Arc::try_unwrap(alerts) {
        alerts.finish();
    }
    // The journal's failure is the cause of everything after it: said first, and what it
    // stopped from leaving the core said with it.
    let journal_failure = report.journal.first_error().map(|e| {
        let lost = report.journal.errors();
        let through = pipeline_journal.through();
        let msg = format!("the input journal failed ({lost} appends lost; it holds events through sequence {through}): {e}");
        errln!("error: {msg}");
        errln!(
            "error: {} engine outputs and the orders decided after that event were withheld (nothing leaves the core unless its cause is journaled)",
            edge_report.withheld
        );
        msg
    });
    let summarised = summary(
        &cfg,
        &report,
        &edge,
        &stats,
        &core_use,
        &tick_to_order,
        published,
        ring_full.load(Ordering::Relaxed),
        elapsed,
        &symbols,
        agents_metrics.as_ref().map(|(m, started)| (&**m, started.as_slice())),
    );
    if let Some(msg) = journal_failure {
        if let Err(e) = summarised {
            errln!("warning: {e:#}");
        }
        anyhow::bail!(msg);
    }
    summarised?;
    if cfg.sink.is_some() {
        sink_stats.set_journal_head(output_head.load(Ordering::Relaxed));
        outln!(
            "  postgres: {} rows in {} batches, cursor {} (lag {} outputs, caught up by the next start), {} errors, {} skipped",
            sink_stats.rows_total(),
            sink_stats.batches(),
            sink_stats.cursor(),
            sink_stats.lag(),
            sink_stats.errors(),
            sink_stats.skipped()
        );
    }
    if cfg.redis.is_some() {
        outln!(
            "  redis: {} ticks and {} outputs published ({} ticks dropped while unreachable), {} remote signals in ({} refused, {} of them for an agent id another producer owns), {} reconnects, {} errors",
            bus_stats.ticks.load(Ordering::Relaxed),
            bus_stats.outputs.load(Ordering::Relaxed),
            bus_stats.ticks_dropped.load(Ordering::Relaxed),
            bus_stats.signals_in.load(Ordering::Relaxed),
            bus_stats.signals_refused.load(Ordering::Relaxed),
            bus_stats.signals_refused_owner.load(Ordering::Relaxed),
            bus_stats.reconnects.load(Ordering::Relaxed),
            bus_stats.errors.load(Ordering::Relaxed),
        );
    }
    if let Some(q) = &quic_stats {
        outln!(
            "  quic: {} agent connections, {} remote signals in, {} refused, {} snapshot datagrams",
            q.connections.load(Ordering::Relaxed),
            q.signals_accepted.load(Ordering::Relaxed),
            q.refused_total(),
            q.datagrams.load(Ordering::Relaxed)
        );
    }
    if let Some((s, market, stream)) = &routing_stats {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        outln!(
            "  venue {market}: {} orders, {} acked, {} rejected, {} filtered before sending, {} fills, {} canceled, {} unknown ({} resolved by query)",
            r(&s.orders),
            r(&s.acked),
            r(&s.rejected),
            r(&s.filtered),
            r(&s.fills),
            r(&s.canceled),
            r(&s.unknown),
            r(&s.resolved)
        );
        outln!(
            "  venue stream: {} connects, {} order updates, {} executions ({} fills reported from executions, {} skipped), {} errors",
            r(&stream.connects),
            r(&stream.orders),
            r(&stream.executions),
            r(&s.executions),
            r(&s.executions_skipped),
            r(&stream.errors)
        );
        outln!(
            "  venue reconcile: {} orders adopted, {} closed; {} position differences seen, {} adopted, {} unpriced; {} failed passes",
            r(&s.orders_adopted),
            r(&s.orders_closed),
            r(&s.position_differences),
            r(&s.positions_adopted),
            r(&s.positions_unpriced),
            r(&s.reconcile_failures)
        );
    }
    match &edge_report.error {
        None => outln!("  output journal: {} outputs appended", edge_report.journaled),
        Some(e) => outln!("  output journal: {} outputs appended, then it failed: {e}", edge_report.journaled),
    }
    if let Some(s) = &snapshot_stats {
        outln!("  {}", snapshot_summary(s));
    }
    if cfg.retention.is_some() {
        outln!("  {}", retention_summary(&retention_stats));
    }
    if let Some(c) = feed_counters {
        let c = *c.borrow();
        outln!(
            "  feed: {} frames, {} events, {} skipped, {} snapshots ({} requested, {} held back by the cap), {} gaps, {} reconnects ({} stale), {} connect failures, {} stamps ahead of the venue's clock replaced",
            c.frames,
            c.events,
            c.skipped(),
            c.snapshots,
            c.snapshot_requests,
            c.snapshots_capped,
            c.gaps,
            c.reconnects,
            c.stale_reconnects,
            c.connect_failures,
            c.clock_ahead
        );
    }
    // A feed that stopped on its own (wrong market, the engine gone) ends the run as a failure.
    if let Some(e) = feed_error {
        anyhow::bail!("the market feed stopped: {e}");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn summary(
    cfg: &RunConfig,
    report: &PipelineReport,
    edge: &EdgeState,
    stats: &sapphire_core::pipeline::PipelineStats,
    core_use: &crate::engine_core::CoreUse,
    tick_to_order: &[(u64, u64)],
    published: u64,
    ring_full: u64,
    elapsed: Duration,
    symbols: &[&str],
    agents: Option<(&sapphire_agents::AgentsMetrics, &[sapphire_core::event::AgentId])>,
) -> anyhow::Result<()> {
    let risk = &report.stages.risk.risk;
    let pf = risk.portfolio();
    let total = pf.total();
    let processed = stats.processed.load(Ordering::Relaxed);
    outln!();
    outln!(
        "summary: {:.1}s, {} events ({:.0}/s), journaled {}",
        elapsed.as_secs_f64(),
        processed,
        processed as f64 / elapsed.as_secs_f64().max(1e-9),
        report.journal.appended()
    );
    outln!(
        "  orders {} (cancels {}), fills {}, refused {}, guard alerts {}, open orders {}",
        edge.orders(),
        edge.cancels(),
        edge.fills(),
        edge.refusals_total(),
        edge.alerts(),
        risk.open_orders()
    );
    outln!(
        "  equity {} on capital {}: realized {}, unrealized {}, fees {}, peak {}, drawdown {:.2}%",
        money(total.equity.raw),
        money(total.capital.raw),
        money(total.realized.raw),
        money(total.unrealized.raw),
        money(total.fees.raw),
        money(risk.status().peak_equity.raw),
        risk.status().drawdown_bps as f64 / 100.0
    );
    for a in 0..pf.agents() {
        let s = pf.agent_summary(sapphire_core::event::AgentId(a as u16));
        if s.realized.raw != 0 || s.unrealized.raw != 0 || s.fees.raw != 0 {
            let name = agent_name(cfg, a);
            outln!(
                "  {name:>18}: pnl {} (realized {}, fees {}), exposure {}",
                money((s.equity - s.capital).raw),
                money(s.realized.raw),
                money(s.fees.raw),
                money(s.gross_exposure.raw)
            );
        }
    }
    // Every agent that ran: how often it spoke, how often with a view, and why.
    if let Some((m, started)) = agents {
        let symbol_of =
            |i: sapphire_core::instrument::InstrumentId| symbols.get(i.index()).map_or_else(|| format!("#{}", i.0), |s| s.to_string());
        // Agents that never started (an LLM agent without a provider) were named at the start.
        for c in m.agents.iter().filter(|c| started.contains(&c.agent)) {
            outln!("  {}", c.summary_line(&agent_name(cfg, usize::from(c.agent.0)), &symbol_of));
        }
    }
    let refusals: Vec<String> = RejectReason::ALL
        .iter()
        .filter(|r| risk.refusals()[**r as usize] > 0)
        .map(|r| format!("{} {}", r.label(), risk.refusals()[*r as usize]))
        .collect();
    if !refusals.is_empty() {
        outln!("  refusals by limit: {}", refusals.join(", "));
    }
    outln!("  latency p50/p99/p99.9/max:");
    for s in &report.latency {
        outln!(
            "    {:>13}: {:>8} {:>8} {:>8} {:>8}  ({} samples)",
            s.name,
            fmt_ns(s.p50),
            fmt_ns(s.p99),
            fmt_ns(s.p999),
            fmt_ns(s.max),
            s.count
        );
    }
    let dropped = stats.outputs_dropped.load(Ordering::Relaxed);
    // The market thread's events are a part of what the engine processed (agents' signals,
    // operator control and venue reports come by other producers): fewer processed than the
    // market published means events were lost.
    if dropped > 0 || ring_full > 0 || published > processed {
        outln!("  backpressure: {dropped} outputs dropped by a slow edge, {ring_full} events refused by a closed ring, market published {published} vs processed {processed}");
    }
    let (stalls, stalled_ns) = (stats.stalls.load(Ordering::Relaxed), stats.stalled_ns.load(Ordering::Relaxed));
    if stalls > 0 {
        // Interference on the engine's core: an event that arrived then waited as long.
        outln!(
            "  engine core: {stalls} stalls of 100µs or more while polling, {:.1} ms in all ({:.2}% of the run): the CPU was taken by another thread, an interrupt or the hypervisor",
            stalled_ns as f64 / 1e6,
            stalled_ns as f64 / 1e9 / elapsed.as_secs_f64().max(1e-9) * 100.0
        );
    }
    let preemption = core_use.preemption.unwrap_or_default();
    if preemption.count > 0 {
        outln!(
            "  engine core: other tasks ran on it {} times while the engine waited, {:.1} ms in all ({:.2}% of the run): see EngineCorePreempted in docs/runbook.md",
            preemption.count,
            preemption.waited_ns as f64 / 1e6,
            preemption.waited_ns as f64 / 1e9 / elapsed.as_secs_f64().max(1e-9) * 100.0
        );
    }
    if stalls > 0 && !core_use.interrupts.is_empty() {
        let top: Vec<String> = core_use.interrupts.iter().take(4).map(|(name, n)| format!("{name} {n}")).collect();
        outln!("  interrupts on the engine's cores: {}", top.join(", "));
    }
    if preemption.count > 0 && core_use.workqueues == Some(true) {
        outln!("  unbound kernel work may run on the engine's cores (/sys/devices/virtual/workqueue/cpumask)");
    }
    for (name, outcome) in &report.pins {
        match outcome {
            PinOutcome::Pinned(core) => outln!("  {name} pinned to core {core}"),
            PinOutcome::Unpinned { core, reason } => outln!("  {name} NOT pinned to core {core}: {reason}"),
            PinOutcome::NotRequested => {}
        }
    }
    let json = format!(
        "{{\"ended_unix_ns\":{},\"elapsed_s\":{:.3},\"symbols\":[{}],\"events\":{},\"orders\":{},\"fills\":{},\"refusals\":{},\"equity\":\"{}\",\"capital\":\"{}\",\"fees\":\"{}\",\"engine_stalls\":{},\"engine_stalled_ns\":{},\"engine_preemptions\":{},\"engine_preempted_ns\":{},\"latency\":[{}],\"tick_to_order_recorded\":[{}]}}\n",
        unix_nanos(),
        elapsed.as_secs_f64(),
        symbols.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(","),
        processed,
        edge.orders(),
        edge.fills(),
        edge.refusals_total(),
        total.equity,
        total.capital,
        total.fees,
        stalls,
        stalled_ns,
        preemption.count,
        preemption.waited_ns,
        report.latency.iter().map(|s| format!("{{\"name\":\"{}\",\"p50_ns\":{},\"p99_ns\":{},\"p999_ns\":{},\"max_ns\":{},\"count\":{}}}", s.name, s.p50, s.p99, s.p999, s.max, s.count)).collect::<Vec<_>>().join(","),
        tick_to_order.iter().map(|(ns, n)| format!("[{ns},{n}]")).collect::<Vec<_>>().join(",")
    );
    let path = cfg.data_dir.join("last-run.json");
    // Written beside and renamed over: a full disk leaves the previous summary, not an empty file.
    let part = cfg.data_dir.join("last-run.json.part");
    if let Err(e) = std::fs::write(&part, json).and_then(|()| std::fs::rename(&part, &path)) {
        let _ = std::fs::remove_file(&part);
        return Err(anyhow::Error::new(e).context(format!("writing {}", path.display())));
    }
    outln!("  run summary written to {}", path.display());
    Ok(())
}

/// An agent's name: the in-core strategies' (`core-momentum`), a configured agent's kind and
/// id (`momentum-2`), the arbitrator's, or `agent-<id>` (a remote agent).
pub(crate) fn agent_name(cfg: &RunConfig, agent: usize) -> String {
    let id = sapphire_core::event::AgentId(agent as u16);
    if let Some(name) = sapphire_core::aggregate::in_core_strategy_name(id) {
        return name.to_string();
    }
    match cfg.agents.agent.iter().find(|c| usize::from(c.id) == agent) {
        Some(c) => c.display_name(),
        None if usize::from(cfg.agents.arbitrator.id) == agent && cfg.agents.arbitrator.enabled => format!("arbitrator-{agent}"),
        None => format!("agent-{agent}"),
    }
}

fn write_feed_metrics(
    board: &MarketBoard,
    names: &[String],
    counters: Option<sapphire_gateway::feed::FeedCounters>,
    m: &mut MetricsWriter<'_>,
) {
    let now = unix_nanos();
    m.gauges(
        "sapphire_feed_last_event_age_seconds",
        "Wall-clock age of each instrument's last market event (event time).",
        names.iter().enumerate().filter_map(|(i, name)| {
            let t = board.read(sapphire_core::instrument::InstrumentId(i as u32))?;
            Some(([("symbol", name.as_str())], now.saturating_sub(t.ts_event) as f64 / 1e9))
        }),
    );
    if let Some(c) = counters {
        m.counter("sapphire_feed_frames_total", "Frames received from the venue.", c.frames);
        m.counter(
            "sapphire_feed_skipped_total",
            "Frames skipped (malformed, missing field, bad decimal, unknown symbol, crossed quote, bad timestamp, wrong market).",
            c.skipped(),
        );
        m.counter("sapphire_feed_gaps_total", "Sequence gaps (the book resyncs from a snapshot).", c.gaps);
        m.counter("sapphire_feed_snapshots_total", "Book snapshots applied.", c.snapshots);
        m.counter("sapphire_feed_snapshot_requests_total", "REST depth snapshots requested.", c.snapshot_requests);
        m.counter(
            "sapphire_feed_snapshots_capped_total",
            "Snapshot requests held back by market.max_snapshots_per_minute (the book stays out of sync until the window allows one).",
            c.snapshots_capped,
        );
        m.counter(
            "sapphire_feed_clock_ahead_total",
            "Venue timestamps more than 5 s ahead of the venue's clock as received, replaced by the time it should show.",
            c.clock_ahead,
        );
        m.counter(
            "sapphire_feed_wrong_market_total",
            "Frames of another market than market.venue_market (the feed stops).",
            c.wrong_market,
        );
        m.counters(
            "sapphire_feed_reconnects_total",
            "Reconnections, by cause.",
            [("any", c.reconnects), ("stale", c.stale_reconnects), ("planned", c.planned_reconnects)]
                .map(|(cause, n)| ([("cause", cause)], n)),
        );
        m.counter("sapphire_feed_connect_failures_total", "Failed connection attempts.", c.connect_failures);
    }
}

fn write_snapshot_metrics(s: &sapphire_persistence::snapshot::SnapshotStats, m: &mut MetricsWriter<'_>) {
    let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
    m.counter("sapphire_snapshots_written_total", "Engine snapshots written.", r(&s.written));
    m.counter(
        "sapphire_snapshot_failures_total",
        "Engine snapshots that could not be encoded or written (the engine carries on).",
        r(&s.failed),
    );
    m.gauge("sapphire_snapshots_on_disk", "Engine snapshots in the snapshot directory.", r(&s.on_disk));
    let written = r(&s.last_written_ns);
    if written > 0 {
        m.gauge(
            "sapphire_snapshot_age_seconds",
            "Wall-clock age of the newest snapshot: a restart replays the journal written since.",
            unix_nanos().saturating_sub(written) as f64 / 1e9,
        );
        m.gauge(
            "sapphire_snapshot_last_seq",
            "Input journal sequence of the event the newest snapshot is the state after.",
            s.last_seq.load(Ordering::Relaxed),
        );
        m.gauge("sapphire_snapshot_bytes", "Size of the newest snapshot written.", r(&s.last_bytes));
    }
    if let Some(t) = s.taps() {
        m.gauges(
            "sapphire_snapshot_copy_seconds",
            "Time an engine thread spent copying its state for a snapshot (the hot path's whole cost of one).",
            [("last", r(&t.last_copy_ns)), ("max", r(&t.max_copy_ns))].map(|(which, ns)| ([("which", which)], ns as f64 / 1e9)),
        );
        m.counter(
            "sapphire_snapshot_copies_skipped_total",
            "Stage copies skipped: the writer had not given a spare back yet.",
            r(&t.skipped),
        );
    }
}

/// The sink's metrics (`sapphire run` and `sapphire sink --http-bind`).
pub fn write_sink_metrics(s: &pg::SinkStats, m: &mut MetricsWriter<'_>) {
    m.counters(
        "sapphire_sink_rows_total",
        "Rows the Postgres sink committed, by table.",
        s.rows_by_table().into_iter().map(|(table, n)| ([("table", table)], n)),
    );
    m.gauge("sapphire_sink_lag_records", "Output journal records not yet in Postgres.", s.lag());
    m.gauge("sapphire_sink_cursor", "Next output journal record the sink writes.", s.cursor());
    m.counter("sapphire_sink_batches_total", "Transactions committed.", s.batches());
    m.counter("sapphire_sink_errors_total", "Failed connects and transactions.", s.errors());
    m.counter("sapphire_sink_retries_total", "Batches retried.", s.retries());
    m.counter("sapphire_sink_skipped_total", "Records that cannot be stored (counted, logged).", s.skipped());
    m.gauge("sapphire_sink_up", "1 while the last write succeeded.", u32::from(s.healthy()));
}

fn write_bus_metrics(s: &BusStats, m: &mut MetricsWriter<'_>) {
    let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
    m.gauge("sapphire_redis_up", "1 while connected to Redis.", u32::from(s.connected.load(Ordering::Relaxed)));
    m.counters(
        "sapphire_redis_published_total",
        "Messages published, by kind.",
        [([("kind", "tick")], r(&s.ticks)), ([("kind", "output")], r(&s.outputs))],
    );
    m.counter("sapphire_redis_ticks_dropped_total", "Tick updates dropped while Redis was unreachable (conflatable).", r(&s.ticks_dropped));
    m.counters(
        "sapphire_redis_ingress_total",
        "Remote messages taken or refused, by kind.",
        [
            ("signal", "taken", r(&s.signals_in)),
            ("signal", "refused", r(&s.signals_refused)),
            ("signal", "refused_not_owner", r(&s.signals_refused_owner)),
            ("control", "taken", r(&s.controls_in)),
            ("control", "refused", r(&s.controls_refused)),
        ]
        .map(|(kind, outcome, n)| ([("kind", kind), ("outcome", outcome)], n)),
    );
    m.counter("sapphire_redis_reconnects_total", "Reconnections.", r(&s.reconnects));
    m.counter("sapphire_redis_errors_total", "Failed connects and publishes.", r(&s.errors));
}

/// A service's result with its error as text (reported at shutdown).
async fn as_text<T, E: std::fmt::Display>(service: impl std::future::Future<Output = Result<T, E>>) -> Result<T, String> {
    service.await.map_err(|e| e.to_string())
}

/// Whose positions a flatten closes, for the log.
fn flatten_scope(agent: sapphire_core::event::AgentId) -> String {
    if agent == sapphire_core::risk::ALL_AGENTS {
        "every agent".into()
    } else {
        format!("agent {}", agent.0)
    }
}
