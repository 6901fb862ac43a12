//! The Postgres sink's two batch methods side by side: multi-row `INSERT … UNNEST(arrays)`
//! and binary `COPY FROM STDIN`, each writing the same records in the same transactions the
//! sink commits (cursor check, rows, cursor update). Reports rows/s and hdrhistogram
//! percentiles of batch latency, and COPY ÷ UNNEST from the same run.
//!
//! `cargo bench -p sapphire-benches --bench sink` (add `-- --quick` for a smoke run). Needs
//! Postgres at `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`); without
//! one it prints "skipped: no Postgres at …" and exits 0. Works in a schema of its own,
//! dropped at the end.

use hdrhistogram::Histogram;
use sapphire_core::engine::Output;
use sapphire_persistence::pg::{self, ensure_cursor, sample_outputs, BatchMethod, BatchWriter, PgConnectOptions, PgPool, SinkError};
use std::time::{Duration, Instant};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// One method's figures.
struct Run {
    method: BatchMethod,
    rows: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

impl Run {
    fn rows_per_sec(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (records, batch) = if quick { (4_000, 500) } else { (200_000, 1_000) };
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
    let options: PgConnectOptions = match url.parse() {
        Ok(o) => o,
        Err(e) => {
            println!("skipped: DATABASE_URL is not a Postgres URL ({e})");
            return;
        }
    };
    let target = pg::describe_target(&options);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sink bench: cannot start a runtime: {e}");
            std::process::exit(1);
        }
    };
    let base = match rt.block_on(pg::connect_pool(&options, 1, Duration::from_secs(3))) {
        Ok(p) => p,
        Err(e) => {
            println!("skipped: no Postgres at {target} ({e})");
            return;
        }
    };
    let schema = format!("bench_sink_{}", std::process::id());
    let result = rt.block_on(bench(&base, &options, &schema, records, batch));
    rt.block_on(async {
        let _ = sqlx_exec(&base, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await;
        base.close().await;
    });
    match result {
        Ok(runs) => report(&runs, records, batch, quick),
        Err(e) => {
            eprintln!("sink bench failed: {e}");
            std::process::exit(1);
        }
    }
}

async fn sqlx_exec(pool: &PgPool, sql: &str) -> Result<(), SinkError> {
    pg::execute(pool, sql).await.map_err(SinkError::from)
}

async fn bench(base: &PgPool, options: &PgConnectOptions, schema: &str, records: usize, batch: usize) -> Result<Vec<Run>, SinkError> {
    sqlx_exec(base, &format!("CREATE SCHEMA {schema}")).await?;
    let options = options.clone().options([("search_path", schema)]);
    let pool = pg::connect_pool(&options, 2, Duration::from_secs(3)).await?;
    pg::migrate(&pool).await?;
    let outs = sample_outputs(records, 42);
    let recs: Vec<(u64, Output)> = outs.iter().enumerate().map(|(i, o)| (i as u64, *o)).collect();
    let mut runs = Vec::new();
    // Warm both (statement caches, table files), then measure each on empty tables.
    for (round, method) in [BatchMethod::Unnest, BatchMethod::Copy, BatchMethod::Unnest, BatchMethod::Copy].into_iter().enumerate() {
        sqlx_exec(&pool, "TRUNCATE orders, executions, signals, risk_events, pnl_snapshots, agent_margin; DELETE FROM sink_cursor").await?;
        let mut conn = pool.acquire().await?;
        ensure_cursor(&mut conn, "bench", 0).await?;
        let warm = round < 2;
        let take = if warm { recs.len().min(batch * 2) } else { recs.len() };
        let mut w = BatchWriter::new(1);
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
        let (mut cursor, mut rows) = (0u64, 0u64);
        let start = Instant::now();
        for chunk in recs[..take].chunks(batch) {
            let t = Instant::now();
            w.load(chunk);
            let next = cursor + chunk.len() as u64;
            rows += w.write(&mut conn, "bench", method, cursor, next).await?;
            let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
            cursor = next;
        }
        if !warm {
            runs.push(Run { method, rows, elapsed: start.elapsed(), latency_us: hist });
        }
    }
    pool.close().await;
    Ok(runs)
}

fn report(runs: &[Run], records: usize, batch: usize, quick: bool) {
    println!(
        "sink bench{}: {records} journal records per method, {batch} per transaction (cursor check + rows + cursor update)",
        if quick { " (quick)" } else { "" }
    );
    println!("{:<8} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9}", "method", "rows", "rows/s", "p50 ms", "p90 ms", "p99 ms", "max ms");
    for r in runs {
        let ms = |q: f64| r.latency_us.value_at_quantile(q) as f64 / 1_000.0;
        println!(
            "{:<8} {:>10} {:>12.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            format!("{:?}", r.method).to_lowercase(),
            r.rows,
            r.rows_per_sec(),
            ms(0.5),
            ms(0.9),
            ms(0.99),
            r.latency_us.max() as f64 / 1_000.0
        );
    }
    let find = |m| runs.iter().find(|r| r.method == m);
    if let (Some(u), Some(c)) = (find(BatchMethod::Unnest), find(BatchMethod::Copy)) {
        println!(
            "copy ÷ unnest: {:.2}× rows/s, p50 batch latency {:.2}×",
            c.rows_per_sec() / u.rows_per_sec(),
            c.latency_us.value_at_quantile(0.5) as f64 / u.latency_us.value_at_quantile(0.5).max(1) as f64
        );
    }
}
