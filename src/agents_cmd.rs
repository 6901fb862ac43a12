//! `sapphire agents`: the agents runtime as a process of its own (the deployment's agents
//! role), talking to the cores of every shard it is configured for (`[node] shards`,
//! `SAPPHIRE_SHARDS`; by default the one `[node] shard`) through Redis: market context from
//! each core's conflated ticks (`<prefix>:<shard>:ticks:*`) into one local board, positions
//! and PnL from their outputs (`<prefix>:<shard>:outputs`, instrument ids moved into one merged
//! id space, [`bus::ShardSet`]), each signal out on the `<prefix>:<shard>:signals:in` of the
//! shard that trades its instrument (the documented remote-agent format; the core checks and
//! journals it). `/healthz`, `/readyz` (ready once every
//! instrument has a fresh, in-sync top) and `/metrics` (the agents' counters) on `--http-bind`.

use crate::agents_bridge::{AgentPositions, BoardContext};
use crate::config;
use anyhow::Context;
use sapphire_agents::context::SignalSink;
use sapphire_core::board::MarketBoard;
use sapphire_core::event::{Event, Signal};
use sapphire_core::pipeline::PipelineStats;
use sapphire_gateway::api::{ApiServer, EdgeState, FnSource, MetricsWriter};
use sapphire_gateway::quic::{AgentLinkConfig, AgentToken, ClientTrust, LinkStats, QuicAgentLink, Refusal, SignalSender, WireSignal};
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
    /// Reach the core over QUIC at this address (`host:port`, its `[quic] bind`) instead of
    /// Redis: runs the one agent of `--agent-id`, authenticated by its token.
    #[arg(long, value_name = "ADDR")]
    pub core_quic: Option<String>,
    /// The core's certificate to pin (PEM; the core prints where its development certificate
    /// is); default: the Mozilla roots.
    #[arg(long, value_name = "PEM", requires = "core_quic")]
    pub quic_cert: Option<PathBuf>,
    /// The name the core's certificate carries.
    #[arg(long, default_value = "localhost", requires = "core_quic")]
    pub quic_server_name: String,
    /// This agent's id (its `[[quic.agents]]` entry on the core, and its `[[agents.runtime.agent]]` here).
    #[arg(long, requires = "core_quic")]
    pub agent_id: Option<u16>,
    /// A file holding this agent's token (`SAPPHIRE_AGENT_TOKEN` wins over it).
    #[arg(long, requires = "core_quic")]
    pub token_file: Option<PathBuf>,
    /// Call each configured LLM provider once and print its latency, the model asked and
    /// whether the answer parsed, then exit (1 when one failed); needs no Redis and starts no
    /// agent.
    #[arg(long, conflicts_with = "core_quic")]
    pub check: bool,
    /// Run the rule-based agents against the seeded synthetic market for this much event
    /// time (e.g. 10s) and print each agent's signals and why, then exit: deterministic and
    /// instant (no wall clock, no Redis, no core, no model).
    #[arg(long, value_name = "DURATION", conflicts_with_all = ["core_quic", "check"])]
    pub rehearse: Option<String>,
}

/// Signals to a bounded queue that a task publishes to Redis; a full queue refuses (counted
/// by the runtime), never waits.
struct QueueSink(tokio::sync::mpsc::Sender<Signal>);

impl SignalSink for QueueSink {
    fn publish(&mut self, s: Signal) -> bool {
        self.0.try_send(s).is_ok()
    }
}

/// `sapphire agents --check`: one call to each configured provider, one line each.
fn check_providers(agents: &sapphire_agents::AgentsConfig) -> anyhow::Result<()> {
    if agents.providers.is_empty() {
        return Err(config::refuse(
            "agents.runtime.providers",
            "no LLM provider is configured: set XAI_API_KEY (or GROK4_API_KEY) for xAI Grok, ENABLE_VERTEX_AI=true and \
             GOOGLE_CLOUD_PROJECT for Vertex AI Gemini, OPENAI_BASE_URL for an OpenAI-compatible server (llama.cpp, vLLM), \
             or list [[agents.runtime.providers]] in the configuration file",
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let clock = sapphire_agents::context::wall_clock();
    let mut failed = 0;
    for p in &agents.providers {
        let outcome = runtime.block_on(sapphire_agents::llm::check::check(p, clock.clone()));
        let default = if p.name == agents.default_provider { " [default]" } else { "" };
        outln!("check {}{default}", outcome.line());
        failed += usize::from(outcome.problem.is_some());
    }
    let n = agents.providers.len();
    outln!("agents --check: {n} provider(s), {} ok, {failed} failed", n - failed);
    anyhow::ensure!(failed == 0, "agents --check: {failed} of {n} provider(s) failed (see above)");
    Ok(())
}

/// Runs the agents until stopped.
pub fn run(args: AgentsArgs) -> anyhow::Result<()> {
    let quic = quic_link_config(&args)?;
    let (file, duration) = crate::process::load(args.config.as_deref(), args.http_bind, args.duration.as_deref())?;
    let cfg = file.resolve()?;
    if args.check {
        return check_providers(&cfg.agents);
    }
    if let Some(d) = &args.rehearse {
        let d = config::parse_duration(d).ok_or_else(|| config::refuse("--rehearse", format!("{d:?} is not a duration (e.g. 10s)")))?;
        return crate::rehearse::rehearse(&cfg, d);
    }
    if let Some(link) = quic {
        return run_quic(cfg, duration, link);
    }
    let bus = cfg
        .redis
        .clone()
        .ok_or_else(|| config::refuse("REDIS_URL", "remote agents reach a core through Redis: set REDIS_URL (or [redis] url)"))?;
    if !cfg.agents.enabled {
        return Err(config::refuse("agents.runtime.enabled", "is false: there is nothing to run"));
    }
    let stop = crate::process::stop_flag(duration)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting the runtime")?;
    outln!(
        "agents: waiting for the instrument lists of shard(s) {} on {} (prefix {:?})",
        cfg.shards.join(","),
        bus::redact(&bus.url),
        bus.prefix
    );
    let Some(set) = runtime.block_on(bus::read_shard_instruments(&bus, &cfg.shards, &stop))? else {
        return Ok(());
    };
    for s in &set.shards {
        outln!("agents: shard {} instruments {}", s.shard, s.symbols.join(","));
    }
    // One merged id space over every shard's instruments (ticks name symbols, so each
    // shard's tick subscriber finds its symbols in the merged list).
    let names = set.names();
    let set = Arc::new(set);

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
        outln!("agents: {note}");
    }
    if !rt.coverage().is_empty() {
        outln!("agents: {}", rt.coverage());
    }

    // Health and metrics: the edge state's books check reads the local board (fresh ticks).
    let edge = Arc::new(EdgeState::new(Arc::new(PipelineStats::default()), Vec::new(), names.clone(), cfg.engine.risk.leverage));
    edge.attach_board(Arc::clone(&board));
    edge.set_instrument_shards(set.instrument_shards());
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
            move |m: &mut MetricsWriter<'_>| {
                let encoded = metrics.encode(m.encoder());
                m.fail(encoded);
                m.counter("sapphire_agents_ticks_total", "Tick messages taken from the core.", t.ticks.load(Ordering::Relaxed));
                m.counter("sapphire_agents_signals_published_total", "Signals published to the core.", p.load(Ordering::Relaxed));
                m.counter("sapphire_agents_signals_failed_total", "Signals Redis did not take.", r.load(Ordering::Relaxed));
            },
        )));
    }
    // The API needs an inbound producer; nothing reads it (control is not served here).
    let (producer, _control) = sapphire_core::ring::ring::<Event>(64, 1);
    let api = ApiServer::start(cfg.api.clone(), Arc::clone(&edge), producer)?;
    outln!("api: http://{}", api.addr());

    let mut tasks: Vec<_> = set
        .shard_names()
        .iter()
        .map(|shard| {
            runtime.spawn(bus::run_tick_subscriber(
                bus.for_shard(shard),
                names.clone(),
                Arc::clone(&board),
                Arc::clone(&ticks),
                Arc::clone(&stop),
            ))
        })
        .collect();
    tasks.push({
        let (positions, edge) = (Arc::clone(&positions), Arc::clone(&edge));
        let mut merger = bus::ShardMerger::new(Arc::clone(&set));
        runtime.spawn(bus::run_shards_output_subscriber(
            bus.clone(),
            Arc::clone(&set),
            Arc::clone(&outputs),
            Arc::new(AtomicU64::new(0)),
            Arc::clone(&stop),
            move |shard, _, o| {
                let o = merger.merge(shard, o);
                positions.on_output(&o);
                edge.apply(&o);
            },
        ))
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Signal>(1_024);
    let publisher = {
        let (bus, names, set, stop, published, refused) =
            (bus.clone(), names.clone(), Arc::clone(&set), Arc::clone(&stop), Arc::clone(&published), Arc::clone(&refused));
        runtime.spawn(async move {
            let mut conn = None;
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some(signal)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await else { continue };
                if conn.is_none() {
                    conn = bus::connection(&bus).await.map_err(|e| errln!("agents: {e}")).ok();
                }
                // The signal goes to the core whose shard trades its instrument.
                let Some(shard) = set.shard_of(signal.instrument) else { continue };
                let sent = match conn.as_mut() {
                    Some(c) => bus::publish_signal(c, &bus.for_shard(shard), &names, &signal).await.map_err(|e| e.to_string()),
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
                            errln!("agents: a signal was not published ({n} so far): {e}");
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
    for t in tasks {
        let _ = runtime.block_on(t);
    }
    let _ = runtime.block_on(publisher);
    outln!(
        "agents: {} ticks in, {} signals published, {} not published",
        ticks.ticks.load(Ordering::Relaxed),
        published.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed)
    );
    Ok(())
}

/// The QUIC link's settings from the flags; `None` without `--core-quic`.
fn quic_link_config(args: &AgentsArgs) -> anyhow::Result<Option<AgentLinkConfig>> {
    let Some(addr) = &args.core_quic else { return Ok(None) };
    let agent = args.agent_id.ok_or_else(|| config::refuse("--agent-id", "is required with --core-quic"))?;
    if !sapphire_gateway::quic::is_external_agent(agent) {
        return Err(config::refuse("--agent-id", format!("{agent} is not an external agent id")));
    }
    let token = match (std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()), &args.token_file) {
        (Some(t), _) => AgentToken::new(&t).map_err(|e| config::refuse(TOKEN_ENV, e))?,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| config::refuse("--token-file", format!("cannot read {}: {e}", path.display())))?;
            AgentToken::from_file_text(&text).map_err(|e| config::refuse("--token-file", format!("{}: {e}", path.display())))?
        }
        (None, None) => return Err(config::refuse(TOKEN_ENV, "the agent's token is needed with --core-quic: set it, or --token-file")),
    };
    let trust = match &args.quic_cert {
        Some(pem) => ClientTrust::Pinned(pem.clone()),
        None => ClientTrust::WebPki,
    };
    let mut link = AgentLinkConfig::new(addr.clone(), trust, agent, token);
    link.server_name = args.quic_server_name.clone();
    Ok(Some(link))
}

/// The environment variable holding a QUIC agent's token.
pub const TOKEN_ENV: &str = "SAPPHIRE_AGENT_TOKEN";

/// The runtime's signals into the QUIC link's queue; a full queue or a down link refuses
/// (counted by the link and the runtime), never waits.
struct QuicSink(SignalSender);

impl SignalSink for QuicSink {
    fn publish(&mut self, s: Signal) -> bool {
        self.0.try_send(WireSignal {
            instrument: s.instrument.0,
            strength_bps: s.strength_bps,
            confidence_bps: s.confidence_bps,
            ttl_ms: (s.ttl_ns / 1_000_000).clamp(1, 3_600_000),
            signal_id: s.signal_id,
        })
    }
}

/// `sapphire agents --core-quic`: one agent, its market context from the core's snapshot
/// datagrams, its signals over the link; positions from the core's outputs when Redis is
/// configured too (without it the agent sees itself flat).
fn run_quic(cfg: config::RunConfig, duration: Option<Duration>, link_cfg: AgentLinkConfig) -> anyhow::Result<()> {
    if !cfg.agents.enabled {
        return Err(config::refuse("agents.runtime.enabled", "is false: there is nothing to run"));
    }
    let agent = link_cfg.agent;
    let mut agents = cfg.agents.clone();
    agents.agent.retain(|a| a.id == agent);
    if !agents.agent.iter().any(|a| a.enabled) {
        return Err(config::refuse(
            "--agent-id",
            format!("no enabled agent {agent} in [agents.runtime]: the process runs the agent its token speaks for"),
        ));
    }
    let stop = crate::process::stop_flag(duration)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting the runtime")?;
    outln!("agents: connecting to the core at {} over QUIC as agent {agent}", link_cfg.server);
    // The core may not be up yet: retry until it answers, unless it refuses us for good.
    let link = loop {
        match runtime.block_on(QuicAgentLink::connect(link_cfg.clone())) {
            Ok(link) => break link,
            Err(e) if e.is_terminal() => return Err(anyhow::anyhow!("{e}")),
            Err(e) => {
                errln!("agents: {e}; retrying");
                for _ in 0..10 {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    };
    let names = link.instruments().to_vec();
    outln!("agents: instruments {}", names.join(","));
    let board = Arc::clone(link.board());
    let positions = Arc::new(AgentPositions::new(names.len()));
    let refs = names
        .iter()
        .enumerate()
        .map(|(i, s)| sapphire_agents::InstrumentRef { id: sapphire_core::instrument::InstrumentId(i as u32), symbol: s.clone() })
        .collect();
    let rt = sapphire_agents::AgentsRuntime::new(agents, refs, sapphire_agents::context::wall_clock())
        .map_err(|e| config::ConfigError(format!("[agents.runtime]: {e}")))?;
    for note in rt.notes() {
        outln!("agents: {note}");
    }
    if !rt.coverage().is_empty() {
        outln!("agents: {}", rt.coverage());
    }

    let edge = Arc::new(EdgeState::new(Arc::new(PipelineStats::default()), Vec::new(), names.clone(), cfg.engine.risk.leverage));
    edge.attach_board(Arc::clone(&board));
    edge.set_core_running(true);
    {
        let metrics = rt.metrics();
        let (ready, stats) = (Arc::clone(link.stats()), Arc::clone(link.stats()));
        edge.add_source(Arc::new(FnSource::new(
            "quic",
            move || if ready.connected.load(Ordering::Relaxed) { Ok(()) } else { Err("not connected to the core".into()) },
            move |m: &mut MetricsWriter<'_>| {
                let encoded = metrics.encode(m.encoder());
                m.fail(encoded);
                write_link_metrics(&stats, m);
            },
        )));
    }
    let (producer, _control) = sapphire_core::ring::ring::<Event>(64, 1);
    let api = ApiServer::start(cfg.api.clone(), Arc::clone(&edge), producer)?;
    outln!("api: http://{}", api.addr());
    let output_task = cfg.redis.clone().map(|bus| {
        let (positions, edge) = (Arc::clone(&positions), Arc::clone(&edge));
        runtime.spawn(bus::run_output_subscriber(
            bus,
            Arc::new(BusStats::default()),
            Arc::new(AtomicU64::new(0)),
            Arc::clone(&stop),
            move |_, o| {
                positions.on_output(o);
                edge.apply(o);
            },
        ))
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ctx = Arc::new(BoardContext { board: Arc::clone(&board), positions: Arc::clone(&positions) });
    let agents_task = runtime.spawn(rt.run(ctx, Box::new(QuicSink(link.signals())), stop_rx));
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = stop_tx.send(true);
    let _ = runtime.block_on(agents_task);
    api.shutdown();
    if let Some(t) = output_task {
        let _ = runtime.block_on(t);
    }
    let stats = Arc::clone(link.stats());
    runtime.block_on(link.close());
    let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
    outln!(
        "agents: {} snapshots in, {} signals sent, {} accepted, {} refused, {} dropped, {} connects",
        r(&stats.snapshots),
        r(&stats.sent),
        r(&stats.accepted),
        Refusal::ALL.iter().map(|x| stats.refused(*x)).sum::<u64>(),
        r(&stats.dropped),
        r(&stats.connects)
    );
    Ok(())
}

fn write_link_metrics(s: &LinkStats, m: &mut MetricsWriter<'_>) {
    let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
    m.gauge("sapphire_quic_link_up", "1 while connected to the core over QUIC.", i64::from(s.connected.load(Ordering::Relaxed)));
    m.counter("sapphire_quic_link_connects_total", "Sessions opened with the core.", r(&s.connects));
    m.counter("sapphire_quic_link_snapshots_total", "Market snapshot datagrams applied.", r(&s.snapshots));
    m.counter("sapphire_quic_link_signals_sent_total", "Signals sent to the core.", r(&s.sent));
    m.counter("sapphire_quic_link_signals_accepted_total", "Signals the core accepted.", r(&s.accepted));
    m.counters(
        "sapphire_quic_link_refused_total",
        "Signals and hellos the core refused, by reason.",
        Refusal::ALL.map(|reason| ([("reason", reason.label())], s.refused(reason))),
    );
    m.counter("sapphire_quic_link_signals_dropped_total", "Signals dropped before sending (queue full or link down).", r(&s.dropped));
}
