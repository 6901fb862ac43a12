//! `sapphire agents`: the agents runtime as a process of its own (the deployment's agents
//! role), talking to a core through Redis: market context from the core's conflated ticks
//! (`<prefix>:ticks:*`) into a local board, positions and PnL from its outputs
//! (`<prefix>:outputs`), signals out on `<prefix>:signals:in` (the documented remote-agent
//! format; the core checks and journals them). `/healthz`, `/readyz` (ready once every
//! instrument has a fresh, in-sync top) and `/metrics` (the agents' counters) on `--http-bind`.

use crate::agents_bridge::{AgentPositions, BoardContext};
use crate::config;
use anyhow::Context;
use sapphire_agents::context::SignalSink;
use sapphire_core::board::MarketBoard;
use sapphire_core::event::{Event, Signal};
use sapphire_core::pipeline::PipelineStats;
use sapphire_gateway::api::{ApiServer, EdgeState, FnSource};
use sapphire_persistence::bus::{self, BusStats};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `sapphire agents` arguments.
#[derive(Debug, clap::Args)]
pub struct AgentsArgs {
    /// Configuration file (TOML): `[agents]`, `[redis]`, `[api]` apply.
    #[arg(long, env = "SAPPHIRE_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP address for /healthz, /readyz and /metrics (port 0 picks a free one).
    #[arg(long)]
    pub http_bind: Option<String>,
    /// Stop by itself after this long (e.g. 10s); default: until Ctrl-C or SIGTERM.
    #[arg(long)]
    pub duration: Option<String>,
}

/// Signals to a bounded queue that a task publishes to Redis; a full queue refuses (counted
/// by the runtime), never waits.
struct QueueSink(tokio::sync::mpsc::Sender<Signal>);

impl SignalSink for QueueSink {
    fn publish(&mut self, s: Signal) -> bool {
        self.0.try_send(s).is_ok()
    }
}

/// Runs the agents until stopped.
pub fn run(args: AgentsArgs) -> anyhow::Result<()> {
    let (file, duration) = crate::process::load(args.config.as_deref(), args.http_bind, args.duration.as_deref())?;
    let cfg = file.resolve()?;
    let bus = cfg
        .redis
        .clone()
        .ok_or_else(|| config::refuse("REDIS_URL", "remote agents reach a core through Redis: set REDIS_URL (or [redis] url)"))?;
    if !cfg.agents.enabled {
        return Err(config::refuse("agents.runtime.enabled", "is false: there is nothing to run"));
    }
    let stop = crate::process::stop_flag(duration)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting the runtime")?;
    println!("agents: waiting for a core's instrument list on {} (prefix {:?})", bus::redact(&bus.url), bus.prefix);
    let Some(names) = runtime.block_on(bus::read_instruments(&bus, &stop))? else {
        return Ok(());
    };
    println!("agents: instruments {}", names.join(","));

    let board = Arc::new(MarketBoard::new(names.len()));
    let positions = Arc::new(AgentPositions::new(names.len()));
    let refs = names
        .iter()
        .enumerate()
        .map(|(i, s)| sapphire_agents::InstrumentRef { id: sapphire_core::instrument::InstrumentId(i as u32), symbol: s.clone() })
        .collect();
    let rt = sapphire_agents::AgentsRuntime::new(cfg.agents.clone(), refs, sapphire_agents::context::wall_clock())
        .map_err(|e| config::ConfigError(format!("[agents.runtime]: {e}")))?;
    for note in rt.notes() {
        println!("agents: {note}");
    }

    // Health and metrics: the edge state's books check reads the local board (fresh ticks).
    let edge = Arc::new(EdgeState::new(Arc::new(PipelineStats::default()), Vec::new(), names.clone(), cfg.engine.risk.leverage));
    edge.attach_board(Arc::clone(&board));
    edge.set_core_running(true);
    let (ticks, outputs, published, refused) =
        (Arc::new(BusStats::default()), Arc::new(BusStats::default()), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    {
        let metrics = rt.metrics();
        let (t, p, r) = (Arc::clone(&ticks), Arc::clone(&published), Arc::clone(&refused));
        let ready = Arc::clone(&ticks);
        edge.add_source(Arc::new(FnSource::new(
            "redis",
            move || if ready.connected.load(Ordering::Relaxed) { Ok(()) } else { Err("not subscribed to the core's ticks".into()) },
            move |out: &mut String| {
                use std::fmt::Write as _;
                out.push_str(&metrics.render_prometheus());
                let _ = write!(
                    out,
                    "# HELP sapphire_agents_ticks_total Tick messages taken from the core.\n# TYPE sapphire_agents_ticks_total counter\nsapphire_agents_ticks_total {}\n# HELP sapphire_agents_signals_published_total Signals published to the core.\n# TYPE sapphire_agents_signals_published_total counter\nsapphire_agents_signals_published_total {}\n# HELP sapphire_agents_signals_failed_total Signals Redis did not take.\n# TYPE sapphire_agents_signals_failed_total counter\nsapphire_agents_signals_failed_total {}",
                    t.ticks.load(Ordering::Relaxed),
                    p.load(Ordering::Relaxed),
                    r.load(Ordering::Relaxed)
                );
            },
        )));
    }
    // The API needs an inbound producer; nothing reads it (control is not served here).
    let (producer, _control) = sapphire_core::ring::ring::<Event>(64, 1);
    let api = ApiServer::start(cfg.api.clone(), Arc::clone(&edge), producer)?;
    println!("api: http://{}", api.addr());

    let tick_task =
        runtime.spawn(bus::run_tick_subscriber(bus.clone(), names.clone(), Arc::clone(&board), Arc::clone(&ticks), Arc::clone(&stop)));
    let output_task = {
        let (positions, edge) = (Arc::clone(&positions), Arc::clone(&edge));
        runtime.spawn(bus::run_output_subscriber(
            bus.clone(),
            Arc::clone(&outputs),
            Arc::new(AtomicU64::new(0)),
            Arc::clone(&stop),
            move |_, o| {
                positions.on_output(o);
                edge.apply(o);
            },
        ))
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Signal>(1_024);
    let publisher = {
        let (bus, names, stop, published, refused) =
            (bus.clone(), names.clone(), Arc::clone(&stop), Arc::clone(&published), Arc::clone(&refused));
        runtime.spawn(async move {
            let mut conn = None;
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some(signal)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await else { continue };
                if conn.is_none() {
                    conn = bus::connection(&bus).await.map_err(|e| eprintln!("agents: {e}")).ok();
                }
                let sent = match conn.as_mut() {
                    Some(c) => bus::publish_signal(c, &bus, &names, &signal).await.map_err(|e| e.to_string()),
                    None => Err("Redis unreachable".to_string()),
                };
                match sent {
                    Ok(_) => {
                        published.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        // A signal is advice with a time-to-live: dropped and counted, not queued.
                        let n = refused.fetch_add(1, Ordering::Relaxed) + 1;
                        if n <= 10 || n % 1_000 == 0 {
                            eprintln!("agents: a signal was not published ({n} so far): {e}");
                        }
                        conn = None;
                    }
                }
            }
        })
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ctx = Arc::new(BoardContext { board: Arc::clone(&board), positions: Arc::clone(&positions) });
    let agents_task = runtime.spawn(rt.run(ctx, Box::new(QueueSink(tx)), stop_rx));
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = stop_tx.send(true);
    let _ = runtime.block_on(agents_task);
    api.shutdown();
    for t in [tick_task, output_task] {
        let _ = runtime.block_on(t);
    }
    let _ = runtime.block_on(publisher);
    println!(
        "agents: {} ticks in, {} signals published, {} not published",
        ticks.ticks.load(Ordering::Relaxed),
        published.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed)
    );
    Ok(())
}
