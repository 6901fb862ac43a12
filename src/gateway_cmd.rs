//! `sapphire gateway`: the API and dashboard as a process of its own, fed by a core through
//! Redis — the deployment's gateway role, scaled horizontally apart from the engine.
//!
//! It follows every shard it is configured for (`[node] shards`, `SAPPHIRE_SHARDS`; by default
//! the one `[node] shard`): each core's instrument list (`<prefix>:<shard>:instruments`) and
//! every output from `<prefix>:<shard>:outputs` (validated rkyv records) go into the same
//! [`EdgeState`] that `sapphire run` serves, so `/`, `/ws`, `/dashboard`, `/api/*` and
//! `/metrics` answer the same way. Each core's process-local instrument ids are moved into one
//! merged id space ([`bus::ShardSet`]), so two shards' id 0 stay two instruments, and the
//! portfolio and per-agent PnL shown are the sums of every shard's latest
//! ([`bus::ShardMerger`]). Operator control (`POST /api/kill` …) is checked against the same
//! bearer token, then forwarded to every shard's core on `<prefix>:<shard>:control:in`,
//! signed with that token (HMAC-SHA256, fresh within 30 s, taken once); the core journals it
//! like any control. Pub/sub keeps nothing while the gateway is away: its history starts when
//! it connects, and sequence jumps are counted.
//!
//! Not served from here: stage latency and the engine's own counters (events/s, ring
//! backlog) — they live in the core process (`/metrics` of the core pod).

use crate::config;
use anyhow::Context;
use sapphire_core::event::Event;
use sapphire_core::latency::unix_nanos;
use sapphire_core::pipeline::PipelineStats;
use sapphire_core::ring::Poll;
use sapphire_gateway::api::{ApiServer, EdgeState, FnSource, MetricsWriter};
use sapphire_persistence::bus::{self, BusStats};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `sapphire gateway` arguments.
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// Configuration file (TOML): `[redis]`, `[api]` and `[risk] leverage` apply.
    #[arg(long, env = "SAPPHIRE_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP API address (port 0 picks a free one).
    #[arg(long)]
    pub http_bind: Option<String>,
    /// Stop by itself after this long (e.g. 10s); default: until Ctrl-C or SIGTERM.
    #[arg(long)]
    pub duration: Option<String>,
}

/// Runs the gateway until stopped.
pub fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let (file, duration) = crate::process::load(args.config.as_deref(), args.http_bind, args.duration.as_deref())?;
    let cfg = file.resolve()?;
    let bus = cfg
        .redis
        .clone()
        .ok_or_else(|| config::refuse("REDIS_URL", "the gateway reads a core through Redis: set REDIS_URL (or [redis] url)"))?;

    let stop = crate::process::stop_flag(duration)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting the runtime")?;
    outln!(
        "gateway: waiting for the instrument lists of shard(s) {} on {} (prefix {:?})",
        cfg.shards.join(","),
        bus::redact(&bus.url),
        bus.prefix
    );
    let Some(set) = runtime.block_on(bus::read_shard_instruments(&bus, &cfg.shards, &stop))? else {
        return Ok(());
    };
    for s in &set.shards {
        outln!("gateway: shard {} instruments {}", s.shard, s.symbols.join(","));
    }
    let symbols = set.names();
    let set = Arc::new(set);

    let edge = Arc::new(EdgeState::new(Arc::new(PipelineStats::default()), Vec::new(), symbols, cfg.engine.risk.leverage));
    edge.set_instrument_shards(set.instrument_shards());
    edge.set_agent_names((0..sapphire_core::aggregate::MAX_AGENTS).map(|a| crate::run::agent_name(&cfg, a)).collect());
    edge.set_core_running(true);
    let stats = Arc::new(BusStats::default());
    let gaps = Arc::new(AtomicU64::new(0));
    {
        let (ready, metrics, gaps) = (Arc::clone(&stats), Arc::clone(&stats), Arc::clone(&gaps));
        edge.add_source(Arc::new(FnSource::new(
            "redis",
            move || if ready.connected.load(Ordering::Relaxed) { Ok(()) } else { Err("not subscribed to the core's outputs".into()) },
            move |m: &mut MetricsWriter<'_>| {
                m.counter("sapphire_gateway_outputs_total", "Outputs received from the core.", metrics.outputs.load(Ordering::Relaxed));
                m.counter(
                    "sapphire_gateway_output_gaps_total",
                    "Jumps in the outputs' sequence (missed while disconnected).",
                    gaps.load(Ordering::Relaxed),
                );
                m.gauge("sapphire_redis_up", "1 while subscribed.", u32::from(metrics.connected.load(Ordering::Relaxed)));
            },
        )));
    }
    // Control from the API lands in a local ring; a forwarder signs it for the cores.
    let (producer, mut consumers) = sapphire_core::ring::ring::<Event>(1_024, 1);
    let mut control = consumers.remove(0);
    let api = ApiServer::start(cfg.api.clone(), Arc::clone(&edge), producer)?;
    outln!("api: http://{}", api.addr());
    let subscriber = {
        let edge = Arc::clone(&edge);
        let mut merger = bus::ShardMerger::new(Arc::clone(&set));
        runtime.spawn(bus::run_shards_output_subscriber(
            bus.clone(),
            Arc::clone(&set),
            Arc::clone(&stats),
            Arc::clone(&gaps),
            Arc::clone(&stop),
            move |shard, _, o| edge.apply(&merger.merge(shard, o)),
        ))
    };
    let token = cfg.api.token.as_ref().map(|t| t.secret_bytes().to_vec());
    let forwarder = {
        let (bus, stop, shards) = (bus.clone(), Arc::clone(&stop), set.shard_names());
        runtime.spawn(async move {
            let mut conn = None;
            let mut last_ts = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut pending = Vec::new();
                let _ = control.poll(64, |e, _, _| pending.push(*e));
                for event in pending {
                    let Some(token) = &token else { continue };
                    // Strictly increasing times: the cores take each message once.
                    last_ts = unix_nanos().max(last_ts + 1);
                    let signed = match bus::sign_control(&event, last_ts, token) {
                        Ok(s) => s,
                        Err(e) => {
                            errln!("gateway: cannot sign a control event: {e}");
                            continue;
                        }
                    };
                    if conn.is_none() {
                        conn = bus::connection(&bus).await.map_err(|e| errln!("gateway: {e}")).ok();
                    }
                    // Every shard's core takes the same operator control (a kill stops them all).
                    for shard in &shards {
                        match conn.as_mut() {
                            Some(c) => match bus::publish_control(c, &bus.for_shard(shard), &signed).await {
                                Ok(n) => errln!("gateway: operator control forwarded to {n} core(s) of shard {shard}: {event:?}"),
                                Err(e) => {
                                    errln!("gateway: forwarding operator control to shard {shard} failed: {e}");
                                    conn = None;
                                }
                            },
                            None => errln!("gateway: operator control NOT forwarded to shard {shard}: Redis unreachable"),
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Nothing accepted by the API is left behind silently.
            if let Poll::Handled(n) = control.poll(1_024, |_, _, _| {}) {
                errln!("gateway: {n} control event(s) arrived while stopping and were not forwarded");
            }
        })
    };
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    api.shutdown();
    let _ = runtime.block_on(subscriber);
    let _ = runtime.block_on(forwarder);
    outln!(
        "gateway: {} outputs received, {} sequence gaps, {} errors",
        stats.outputs.load(Ordering::Relaxed),
        gaps.load(Ordering::Relaxed),
        stats.errors.load(Ordering::Relaxed)
    );
    Ok(())
}
