//! `sapphire sink`: the deployment's sink role — tails an output journal into Postgres until
//! stopped, exactly once across restarts (the cursor commits with the rows).

use crate::config;
use anyhow::Context;
use sapphire_persistence::pg::{self, BatchMethod, JournalSource, SinkConfig, SinkStats};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `sapphire sink` arguments.
#[derive(Debug, clap::Args)]
pub struct SinkArgs {
    /// The output journal directory to follow, e.g. data/journal/output.
    #[arg(long)]
    pub journal: PathBuf,
    /// Postgres URL (default: DATABASE_URL).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Batch method: unnest (multi-row insert over arrays) or copy (binary COPY).
    #[arg(long, default_value = "unnest")]
    pub method: String,
    /// Most journal records per transaction.
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
    /// The shard whose journal this is: every row written carries it, and the cursor is
    /// (shard, name). 1-32 characters of a-z, 0-9, `-`.
    #[arg(long, env = "SAPPHIRE_SHARD", default_value = sapphire_persistence::shard::DEFAULT_SHARD)]
    pub shard: String,
    /// The cursor's name in sink_cursor (one per journal followed).
    #[arg(long, default_value = "output")]
    pub name: String,
    /// The risk configuration's leverage (agent_margin.margin_used = exposure / leverage).
    #[arg(long, default_value_t = 1)]
    pub leverage: i64,
    /// Stop by itself after this long (e.g. 10s, 2m); default: until Ctrl-C.
    #[arg(long)]
    pub duration: Option<String>,
    /// Serve /healthz, /readyz (ready while the last write succeeded) and /metrics (the
    /// `sapphire_sink_*` counters) here; default: no HTTP.
    #[arg(long)]
    pub http_bind: Option<String>,
    /// Write the committed cursor (the next output record not yet in Postgres) to this file,
    /// replaced atomically as it moves, for the core's journal retention
    /// (`[retention] sink_cursor_file`): output segments are deleted only once behind it.
    #[arg(long, env = "SAPPHIRE_SINK_CURSOR_FILE")]
    pub cursor_file: Option<PathBuf>,
}

/// Runs the sink until Ctrl-C (or `--duration`), printing its counters every 10 s and at the end.
pub fn run(args: SinkArgs) -> anyhow::Result<()> {
    let url =
        args.database_url.ok_or_else(|| config::refuse("--database-url", "no database given: set DATABASE_URL or pass --database-url"))?;
    let mut sink = SinkConfig::from_url(&url).map_err(|e| config::refuse("DATABASE_URL", e))?;
    sink.method = args.method.parse::<BatchMethod>().map_err(|e| config::refuse("--method", e))?;
    if args.batch == 0 {
        return Err(config::refuse("--batch", "must be at least 1"));
    }
    sink.batch_max = args.batch;
    sapphire_persistence::shard::check_shard(&args.shard).map_err(|e| config::refuse("--shard (SAPPHIRE_SHARD)", e))?;
    sink.shard = args.shard;
    sink.name = args.name;
    sink.leverage = args.leverage.max(1);
    let duration = match args.duration.as_deref() {
        Some(d) => Some(
            config::parse_duration(d)
                .ok_or_else(|| config::refuse("--duration", format!("{d:?} is not a duration like 10s, 500ms, 2m or 1h")))?,
        ),
        None => None,
    };
    let source = JournalSource::new(&args.journal).with_context(|| format!("opening {}", args.journal.display()))?;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let ctrl = stop_tx.clone();
    ctrlc::set_handler(move || {
        let _ = ctrl.send(true);
    })
    .context("installing the Ctrl-C handler")?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().context("starting the sink runtime")?;
    runtime.block_on(async move {
        // Refuse a schema this build cannot write; an unreachable database is the sink's to retry.
        let target = sink.target();
        match pg::connect_pool(&sink.connect, 1, Duration::from_secs(5)).await {
            Ok(pool) => {
                pg::check_schema(&pool).await?;
                pool.close().await;
            }
            Err(e) => errln!("sink: {e}; the sink will keep trying"),
        }
        let stats = SinkStats::new();
        let _api = match &args.http_bind {
            Some(bind) => Some(serve_health(bind, &stats)?),
            None => None,
        };
        let name = sink.name.clone();
        let stop = async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        };
        let task = tokio::spawn(pg::run_sink(sink, source, stats.clone(), stop));
        errln!("sink {name}: following {} into {target}", args.journal.display());
        let started = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.tick().await;
        let (mut cursor_written, mut cursor_failed): (Option<u64>, bool) = (None, false);
        loop {
            tokio::select! {
                _ = tick.tick() => errln!("{}", status(&stats)),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            // Only a cursor read from (or committed to) Postgres: 0 before that is "nothing known".
            if let Some(path) = &args.cursor_file {
                let cursor = stats.cursor();
                if cursor > 0 && cursor_written != Some(cursor) {
                    match sapphire_persistence::retention::write_cursor_file(path, cursor) {
                        Ok(()) => cursor_written = Some(cursor),
                        // Retried every 100 ms; said once (retention then keeps the journal).
                        Err(e) if !cursor_failed => {
                            errln!(
                                "sink: cannot write the cursor file {}: {e}; journal retention will keep the output journal",
                                path.display()
                            );
                            cursor_failed = true;
                        }
                        Err(_) => {}
                    }
                }
            }
            if duration.is_some_and(|d| started.elapsed() >= d) {
                let _ = stop_tx.send(true);
            }
            if *stop_tx.borrow() || task.is_finished() {
                break;
            }
        }
        task.await.context("sink task")??;
        outln!("{}", status(&stats));
        Ok(())
    })
}

/// The sink's probes and metrics on `bind`: the API server with an empty engine view and the
/// sink as its one health source.
fn serve_health(bind: &str, stats: &Arc<SinkStats>) -> anyhow::Result<sapphire_gateway::api::ApiServer> {
    use sapphire_gateway::api::{ApiConfig, ApiServer, EdgeState, FnSource};
    let addr = bind.parse().map_err(|_| config::refuse("--http-bind", format!("{bind:?} is not an address like 0.0.0.0:8080")))?;
    let edge = Arc::new(EdgeState::new(Arc::default(), Vec::new(), Vec::new(), 1));
    edge.set_core_running(true);
    let (ready, metrics) = (Arc::clone(stats), Arc::clone(stats));
    edge.add_source(Arc::new(FnSource::new(
        "postgres_sink",
        move || if ready.healthy() { Ok(()) } else { Err(ready.last_error().unwrap_or_else(|| "not connected yet".into())) },
        move |m: &mut sapphire_gateway::api::MetricsWriter<'_>| crate::run::write_sink_metrics(&metrics, m),
    )));
    let (producer, _) = sapphire_core::ring::ring::<sapphire_core::event::Event>(64, 1);
    let api = ApiServer::start(ApiConfig { bind: addr, token: None, core: None }, edge, producer)?;
    outln!("api: http://{}", api.addr());
    Ok(api)
}

fn status(s: &SinkStats) -> String {
    let rows: Vec<String> = s.rows_by_table().iter().map(|(t, n)| format!("{t}={n}")).collect();
    format!(
        "sink: cursor {} lag {} batches {} rows [{}] skipped {} errors {} retries {}{}",
        s.cursor(),
        s.lag(),
        s.batches(),
        rows.join(" "),
        s.skipped(),
        s.errors(),
        s.retries(),
        s.last_error().map(|e| format!(" last error: {e}")).unwrap_or_default()
    )
}
