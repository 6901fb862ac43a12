//! The Postgres sink against a real Postgres (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`). Each test works in its own fresh schema,
//! dropped at the end.

use sapphire_core::engine::{EngineOutput, Output};
use sapphire_core::event::{AgentId, Signal};
use sapphire_core::fixed::{Money, Price, Quantity};
use sapphire_core::instrument::{Instrument, InstrumentId, MarketType};
use sapphire_core::order::Order;
use sapphire_core::portfolio::PnlSummary;
use sapphire_persistence::journal::{Durability, JournalConfig, JournalWriter};
use sapphire_persistence::pg::{
    check_schema, ensure_cursor, migrate, migrate_to, run_sink, sample_outputs, upsert_instruments, BatchMethod, BatchWriter,
    JournalSource, MemorySource, OutputSource, SchemaError, SinkConfig, SinkError, SinkStats, MIGRATOR,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Row};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn base_options() -> PgConnectOptions {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    url.parse().expect("DATABASE_URL parses")
}

/// A schema of its own, on the shared test database; dropped on drop.
struct TestSchema {
    name: String,
    options: PgConnectOptions,
    pool: PgPool,
}

impl TestSchema {
    async fn new(tag: &str) -> TestSchema {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let name = format!("t_{tag}_{}_{}_{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let base = base_options();
        let mut admin = base.connect().await.unwrap_or_else(|e| panic!("Postgres for tests at {base:?}: {e}"));
        sqlx::query(&format!("CREATE SCHEMA {name}")).execute(&mut admin).await.unwrap();
        let _ = admin.close().await;
        let options = base.options([("search_path", name.as_str())]);
        let pool = PgPoolOptions::new().max_connections(4).connect_with(options.clone()).await.unwrap();
        TestSchema { name, options, pool }
    }

    async fn migrated(tag: &str) -> TestSchema {
        let s = Self::new(tag).await;
        migrate(&s.pool).await.unwrap();
        s
    }

    fn sink_config(&self) -> SinkConfig {
        let mut c = SinkConfig::new(self.options.clone());
        c.idle_poll = Duration::from_millis(5);
        c.backoff_min = Duration::from_millis(10);
        c.backoff_max = Duration::from_millis(100);
        c.connect_timeout = Duration::from_secs(2);
        c
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// Every row of every journal-fed table as JSON text, in journal order.
    async fn dump(&self) -> Vec<String> {
        let mut rows = Vec::new();
        for t in ["orders", "executions", "signals", "risk_events", "pnl_snapshots", "agent_margin"] {
            let q = format!("SELECT '{t} ' || row_to_json(x)::text FROM {t} x ORDER BY journal_seq");
            rows.extend(sqlx::query_scalar::<_, String>(&q).fetch_all(&self.pool).await.unwrap());
        }
        rows
    }

    /// Each journal-fed (non-margin) table's `journal_seq`s, all tables together, sorted.
    async fn journal_seqs(&self) -> Vec<i64> {
        sqlx::query_scalar(
            "SELECT journal_seq FROM (SELECT journal_seq FROM orders UNION ALL SELECT journal_seq FROM executions \
             UNION ALL SELECT journal_seq FROM signals UNION ALL SELECT journal_seq FROM risk_events \
             UNION ALL SELECT journal_seq FROM pnl_snapshots) s ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let (name, base) = (self.name.clone(), base_options());
        // Drop is not async: clean up on a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok(mut c) = base.connect().await {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).execute(&mut c).await;
                    let _ = c.close().await;
                }
            });
        })
        .join();
    }
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn stop_channel() -> (tokio::sync::watch::Sender<bool>, impl std::future::Future<Output = ()> + Send + 'static) {
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    (tx, async move {
        let _ = rx.wait_for(|s| *s).await;
    })
}

/// How many rows each table should hold for these outputs.
fn expected_rows(outs: &[Output]) -> [(&'static str, i64); 6] {
    let mut c = [0i64; 6];
    for o in outs {
        match o.output {
            EngineOutput::Order(_) => c[0] += 1,
            EngineOutput::Exec(_) => c[1] += 1,
            EngineOutput::Signal { .. } => c[2] += 1,
            EngineOutput::Risk(_) => c[3] += 1,
            EngineOutput::Pnl { .. } => c[4] += 1,
            EngineOutput::AgentPnl { .. } => {
                c[4] += 1;
                c[5] += 1;
            }
        }
    }
    let names = ["orders", "executions", "signals", "risk_events", "pnl_snapshots", "agent_margin"];
    std::array::from_fn(|i| (names[i], c[i]))
}

async fn assert_exactly_once(s: &TestSchema, outs: &[Output]) {
    let seqs = s.journal_seqs().await;
    let want: Vec<i64> = (0..outs.len() as i64).collect();
    assert_eq!(seqs.len(), want.len(), "rows in journal-fed tables");
    assert_eq!(seqs, want, "each journal record exactly once");
    for (table, n) in expected_rows(outs) {
        assert_eq!(s.count(&format!("SELECT count(*) FROM {table}")).await, n, "{table}");
    }
    let cursor = s.count("SELECT next_seq FROM sink_cursor WHERE name = 'output'").await;
    assert_eq!(cursor, outs.len() as i64, "cursor");
}

#[tokio::test]
async fn migrations_apply_and_are_idempotent() {
    let s = TestSchema::new("migrate").await;
    let err = check_schema(&s.pool).await.unwrap_err();
    assert!(matches!(err, SchemaError::Fresh { needs: 3 }), "{err:?}");
    assert!(err.to_string().contains("run `sapphire migrate`"), "{err}");

    let applied = migrate(&s.pool).await.unwrap();
    let versions: Vec<i64> = applied.iter().map(|a| a.version).collect();
    assert_eq!(versions, MIGRATOR.iter().map(|m| m.version).collect::<Vec<_>>());
    assert_eq!(versions, [1, 2, 3]);
    assert!(migrate(&s.pool).await.unwrap().is_empty(), "second run applies nothing");
    check_schema(&s.pool).await.unwrap();

    let tables = s
        .count(&format!(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = '{}' AND table_name IN \
             ('instruments','orders','executions','signals','pnl_snapshots','risk_events','agent_margin','sink_cursor')",
            s.name
        ))
        .await;
    assert_eq!(tables, 8);
    let indexes = s.count(&format!("SELECT count(*) FROM pg_indexes WHERE schemaname = '{}' AND indexname = 'orders_ts'", s.name)).await;
    assert_eq!(indexes, 1);
}

#[tokio::test]
async fn check_schema_refuses_behind_ahead_and_altered_schemas() {
    let s = TestSchema::new("behind").await;
    let applied = migrate_to(&s.pool, Some(1)).await.unwrap();
    assert_eq!(applied.len(), 1);
    let err = check_schema(&s.pool).await.unwrap_err();
    assert_eq!(err.to_string(), "database schema is at version 1, this build needs 3: run `sapphire migrate`");
    assert!(err.is_terminal());

    // Catching up makes it acceptable.
    assert_eq!(migrate(&s.pool).await.unwrap().len(), 2);
    check_schema(&s.pool).await.unwrap();

    // A migration this build does not know: ahead.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (4, 'from the future', true, '\\x00', 0)",
    )
    .execute(&s.pool)
    .await
    .unwrap();
    let err = check_schema(&s.pool).await.unwrap_err();
    assert!(matches!(err, SchemaError::Ahead { at: 4, needs: 3 }), "{err:?}");
    assert!(err.to_string().contains("newer than this build"), "{err}");
    assert!(matches!(migrate(&s.pool).await.unwrap_err(), SchemaError::Ahead { .. }));

    // An applied migration whose text differs from ours.
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 4").execute(&s.pool).await.unwrap();
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x01' WHERE version = 2").execute(&s.pool).await.unwrap();
    let err = check_schema(&s.pool).await.unwrap_err();
    assert!(matches!(err, SchemaError::Modified { version: 2 }), "{err:?}");
}

/// A price like 12345.678901234 and the extremes of every fixed-point type round-trip exactly.
#[tokio::test]
async fn rows_land_with_exact_values_by_both_methods() {
    for method in [BatchMethod::Unnest, BatchMethod::Copy] {
        let s = TestSchema::migrated("exact").await;
        let order = Order {
            ts_event: 1_700_000_000_123_456_789,
            origin_recv: 1_700_000_000_000_000_001,
            client_order_id: u64::MAX,
            intent_id: 42,
            instrument: InstrumentId(u32::MAX),
            agent: AgentId(u16::MAX),
            price: Price::from_raw(12_345_678_901_234),
            qty: Quantity::from_raw(i64::MAX),
            ..Order::default()
        };
        let summary = PnlSummary {
            realized: Money::from_raw(i64::MIN),
            unrealized: Money::from_raw(-1),
            fees: Money::from_raw(1),
            capital: Money::from_units(1_000),
            equity: Money::from_raw(i64::MAX),
            gross_exposure: Money::from_units(250),
        };
        let outs = [
            Output { seq: 9, output: EngineOutput::Order(order) },
            Output { seq: 10, output: EngineOutput::AgentPnl { ts_event: 1, agent: AgentId(2), summary } },
        ];
        let records: Vec<(u64, Output)> = outs.iter().enumerate().map(|(i, o)| (i as u64, *o)).collect();
        let mut conn = s.options.connect().await.unwrap();
        assert_eq!(ensure_cursor(&mut conn, "output", 0).await.unwrap(), 0);
        let mut w = BatchWriter::new(2);
        assert_eq!(w.load(&records), 3);
        assert_eq!(w.write(&mut conn, "output", method, 0, 2).await.unwrap(), 3);

        let row = sqlx::query(
            "SELECT price::text, qty::text, client_order_id, instrument_id, agent_id, ts_ns, \
             (extract(epoch FROM ts) * 1000000)::bigint AS ts_us FROM orders",
        )
        .fetch_one(&s.pool)
        .await
        .unwrap();
        assert_eq!(row.get::<String, _>("price"), "12345.678901234", "{method:?}");
        assert_eq!(row.get::<String, _>("qty"), "92233720368.54775807", "{method:?}");
        assert_eq!(row.get::<i64, _>("client_order_id") as u64, u64::MAX);
        assert_eq!(row.get::<i64, _>("instrument_id"), i64::from(u32::MAX));
        assert_eq!(row.get::<i32, _>("agent_id"), 65_535);
        assert_eq!(row.get::<i64, _>("ts_ns"), 1_700_000_000_123_456_789);
        assert_eq!(row.get::<i64, _>("ts_us"), 1_700_000_000_123_456, "{method:?}: ts to the microsecond");

        let row = sqlx::query(
            "SELECT p.realized::text, p.unrealized::text, p.fees::text, p.equity::text, m.margin_used::text, \
             m.margin_remaining::text, m.utilization::text, m.leverage FROM pnl_snapshots p JOIN agent_margin m USING (journal_seq)",
        )
        .fetch_one(&s.pool)
        .await
        .unwrap();
        let text = |c: &str| row.get::<String, _>(c);
        assert_eq!(text("realized"), "-9223372036.854775808", "{method:?}");
        assert_eq!(text("unrealized"), "-0.000000001");
        assert_eq!(text("fees"), "0.000000001");
        assert_eq!(text("equity"), "9223372036.854775807");
        assert_eq!(text("margin_used"), "125.000000000", "250 exposure at leverage 2");
        assert_eq!(text("margin_remaining"), "875.000000000");
        assert_eq!(text("utilization"), "0.125000");
        assert_eq!(row.get::<i64, _>("leverage"), 2);
        assert_eq!(s.count("SELECT next_seq FROM sink_cursor").await, 2);
    }
}

#[tokio::test]
async fn both_batch_methods_write_the_same_rows() {
    let outs = sample_outputs(3_000, 7);
    let records: Vec<(u64, Output)> = outs.iter().enumerate().map(|(i, o)| (i as u64, *o)).collect();
    let mut dumps = Vec::new();
    for method in [BatchMethod::Unnest, BatchMethod::Copy] {
        let s = TestSchema::migrated("same").await;
        let mut conn = s.options.connect().await.unwrap();
        ensure_cursor(&mut conn, "output", 0).await.unwrap();
        let mut w = BatchWriter::new(1);
        let mut cursor = 0;
        for chunk in records.chunks(700) {
            let rows = w.load(chunk) as u64;
            let next = cursor + chunk.len() as u64;
            assert_eq!(w.write(&mut conn, "output", method, cursor, next).await.unwrap(), rows);
            cursor = next;
        }
        assert_exactly_once(&s, &outs).await;
        dumps.push(s.dump().await);
    }
    assert_eq!(dumps[0].len(), dumps[1].len());
    for (a, b) in dumps[0].iter().zip(&dumps[1]) {
        assert_eq!(a, b);
    }
    // The sample really covers every table.
    assert!(expected_rows(&outs).iter().all(|(_, n)| *n > 10), "{:?}", expected_rows(&outs));
}

/// The sink is killed mid-run (its task aborted wherever it is, as a crash would), one
/// transaction fails on the way (an injected trigger error), and a restarted sink resumes
/// from the stored cursor while the journal keeps growing across segment rolls: every output
/// lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_across_a_crash_and_a_failed_transaction() {
    for method in [BatchMethod::Copy, BatchMethod::Unnest] {
        let s = TestSchema::migrated("crash").await;
        // Fail the transaction holding journal record 3000 (written after the crash), once.
        sqlx::raw_sql(
            "CREATE SEQUENCE fail_once; \
             CREATE FUNCTION fail_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
               IF NEW.journal_seq = 3000 AND nextval('fail_once') = 1 THEN RAISE EXCEPTION 'injected failure'; END IF; \
               RETURN NEW; END $$; \
             CREATE TRIGGER fail_once BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION fail_once(); \
             CREATE TRIGGER fail_once BEFORE INSERT ON executions FOR EACH ROW EXECUTE FUNCTION fail_once(); \
             CREATE TRIGGER fail_once BEFORE INSERT ON signals FOR EACH ROW EXECUTE FUNCTION fail_once(); \
             CREATE TRIGGER fail_once BEFORE INSERT ON risk_events FOR EACH ROW EXECUTE FUNCTION fail_once(); \
             CREATE TRIGGER fail_once BEFORE INSERT ON pnl_snapshots FOR EACH ROW EXECUTE FUNCTION fail_once();",
        )
        .execute(&s.pool)
        .await
        .unwrap();

        let dir = std::env::temp_dir().join(format!("{}_journal", s.name));
        let mut jc = JournalConfig::new(&dir);
        jc.segment_bytes = 64 << 10; // many segment rolls
        jc.durability = Durability::Os;
        let (mut journal, _) = JournalWriter::<Output>::open(jc).unwrap();
        let outs = sample_outputs(4_000, 11);
        for o in &outs[..2_500] {
            journal.append_record(o).unwrap();
        }
        journal.sync().unwrap();

        let mut config = s.sink_config();
        config.method = method;
        config.batch_max = 97;
        let stats = SinkStats::new();
        // The crashed sink's connections carry a name of their own: the cursor is read once the
        // server has finished with them (a COMMIT sent just before the crash may still land after
        // the task is gone; read earlier, the cursor would be one batch behind what the restarted
        // sink starts from).
        let mut crashing = config.clone();
        crashing.connect = crashing.connect.application_name(&s.name);
        let task = tokio::spawn(run_sink(crashing, JournalSource::new(&dir).unwrap(), stats.clone(), std::future::pending()));
        let st = stats.clone();
        wait_for("the first batches", Duration::from_secs(20), || st.cursor() >= 500).await;
        task.abort(); // crash
        let _ = task.await;
        let gone = format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{}'", s.name);
        let start = Instant::now();
        while s.count(&gone).await > 0 {
            assert!(start.elapsed() < Duration::from_secs(20), "the crashed sink's connections did not go");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let before = s.count("SELECT next_seq FROM sink_cursor").await;
        assert!((500..2_500).contains(&before), "cursor after the crash: {before}");

        let stats = SinkStats::new();
        let (stop_tx, stop) = stop_channel();
        let task = tokio::spawn(run_sink(config, JournalSource::new(&dir).unwrap(), stats.clone(), stop));
        for o in &outs[2_500..] {
            journal.append_record(o).unwrap();
        }
        journal.sync().unwrap();
        let st = stats.clone();
        wait_for("the sink to catch up", Duration::from_secs(30), || st.cursor() == outs.len() as u64).await;
        stop_tx.send(true).unwrap();
        task.await.unwrap().unwrap();

        assert_exactly_once(&s, &outs).await;
        assert!(stats.errors() >= 1 && stats.retries() >= 1, "the injected failure counted: {stats:?}");
        assert!(stats.last_error().unwrap_or_default().contains("injected failure"), "{:?}", stats.last_error());
        assert_eq!(stats.lag(), 0);
        assert!(stats.healthy());
        assert_eq!(stats.rows_total() as i64 + before_rows(&outs, before as usize), total_rows(&outs));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn total_rows(outs: &[Output]) -> i64 {
    expected_rows(outs).iter().map(|(_, n)| n).sum()
}

fn before_rows(outs: &[Output], n: usize) -> i64 {
    total_rows(&outs[..n])
}

/// A TCP proxy to the real Postgres that can be switched off (listener closed, live
/// connections cut) and on again on the same port.
struct Proxy {
    port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    fn reserve() -> Proxy {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Proxy { port: l.local_addr().unwrap().port(), task: None }
    }

    async fn up(&mut self) {
        let upstream = format!("{}:{}", base_options().get_host(), base_options().get_port());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                conns.spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        }));
    }

    async fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort(); // drops the listener and the JoinSet, which aborts every connection
            let _ = t.await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_database_is_retried_and_then_caught_up_with_nothing_lost() {
    let s = TestSchema::migrated("dead").await;
    let mut proxy = Proxy::reserve();
    let mut config = s.sink_config();
    config.connect = config.connect.clone().port(proxy.port);
    config.batch_max = 50;
    config.connect_timeout = Duration::from_millis(500);
    config.write_timeout = Duration::from_secs(2);
    let source = MemorySource::new();
    let outs = sample_outputs(600, 3);
    for o in &outs[..300] {
        source.push(*o);
    }
    let stats = SinkStats::new();
    stats.set_journal_head(300);
    let (stop_tx, stop) = stop_channel();
    let task = tokio::spawn(run_sink(config, source.clone(), stats.clone(), stop));

    // Nothing listens: connects fail, are counted and retried with backoff.
    let st = stats.clone();
    wait_for("failed connects", Duration::from_secs(10), || st.errors() >= 3).await;
    assert_eq!((stats.cursor(), stats.rows_total(), stats.healthy()), (0, 0, false));
    assert!(stats.retries() >= 3);
    assert_eq!(stats.lag(), 300);
    assert!(stats.last_error().unwrap_or_default().contains("cannot connect"), "{:?}", stats.last_error());

    proxy.up().await;
    wait_for("catch-up", Duration::from_secs(20), || st.cursor() == 300).await;
    assert!(stats.healthy());

    // The database goes away mid-stream and comes back.
    proxy.down().await;
    let errors = stats.errors();
    for o in &outs[300..] {
        source.push(*o);
    }
    wait_for("failures while down", Duration::from_secs(10), || st.errors() > errors).await;
    proxy.up().await;
    wait_for("second catch-up", Duration::from_secs(20), || st.cursor() == 600).await;
    stop_tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    proxy.down().await;

    assert_exactly_once(&s, &outs).await;
}

/// Out-of-range values are stored exactly or skipped and counted; nothing panics.
#[tokio::test]
async fn malformed_and_huge_values_do_not_panic() {
    let s = TestSchema::migrated("huge").await;
    let source = MemorySource::new();
    let huge = PnlSummary {
        realized: Money::from_raw(i64::MAX),
        unrealized: Money::from_raw(i64::MIN),
        fees: Money::from_raw(i64::MIN),
        capital: Money::from_raw(i64::MIN),
        equity: Money::from_raw(0),
        gross_exposure: Money::from_raw(i64::MAX),
    };
    let outs = [
        EngineOutput::Order(Order { ts_event: u64::MAX, ..Order::default() }), // past 2262: skipped
        EngineOutput::Signal { signal: Signal { ts_recv: u64::MAX, ttl_ns: 1, strength_bps: i32::MIN, ..Signal::default() }, taken: false }, // skipped
        EngineOutput::AgentPnl { ts_event: i64::MAX as u64, agent: AgentId(u16::MAX), summary: huge },
        EngineOutput::Pnl { ts_event: 0, total: huge },
        EngineOutput::Signal {
            signal: Signal { strength_bps: i32::MIN, confidence_bps: u16::MAX, signal_id: u64::MAX, ..Signal::default() },
            taken: true,
        },
    ];
    for o in outs {
        source.push(Output { seq: i64::MIN, output: o });
    }
    for method in [BatchMethod::Copy, BatchMethod::Unnest] {
        sqlx::raw_sql("TRUNCATE orders, signals, pnl_snapshots, agent_margin; DELETE FROM sink_cursor").execute(&s.pool).await.unwrap();
        let mut config = s.sink_config();
        config.method = method;
        config.leverage = 0; // treated as 1
        let stats = SinkStats::new();
        let (stop_tx, stop) = stop_channel();
        let task = tokio::spawn(run_sink(config, source.clone(), stats.clone(), stop));
        let st = stats.clone();
        wait_for("the batch", Duration::from_secs(10), || st.cursor() == 5).await;
        stop_tx.send(true).unwrap();
        task.await.unwrap().unwrap();
        assert_eq!(stats.skipped(), 2, "{method:?}");
        assert_eq!(stats.errors(), 0, "{method:?}: {:?}", stats.last_error());
        assert_eq!(s.count("SELECT count(*) FROM orders").await, 0);
        assert_eq!(s.count("SELECT count(*) FROM signals").await, 1);
        assert_eq!(s.count("SELECT count(*) FROM pnl_snapshots").await, 2);
        let row = sqlx::query(
            "SELECT capital::text, gross_exposure::text, margin_used::text, margin_remaining IS NULL AS overflow, \
             utilization IS NULL AS no_util, ts_ns FROM agent_margin",
        )
        .fetch_one(&s.pool)
        .await
        .unwrap();
        assert_eq!(row.get::<String, _>("capital"), "-9223372036.854775808");
        assert_eq!(row.get::<String, _>("margin_used"), "9223372036.854775807");
        assert!(row.get::<bool, _>("overflow") && row.get::<bool, _>("no_util"));
        assert_eq!(row.get::<i64, _>("ts_ns"), i64::MAX);
    }
    // A batch method name from configuration that does not exist is a clear error.
    assert!("bulk".parse::<BatchMethod>().unwrap_err().contains("expected unnest or copy"));
}

#[tokio::test]
async fn instruments_upsert_exactly() {
    let s = TestSchema::migrated("instr").await;
    let mut btc = Instrument {
        id: InstrumentId(0),
        symbol: "BTCUSDT".into(),
        venue: "binance".into(),
        market: MarketType::LinearPerpetual,
        tick_size: Price::parse("0.1").unwrap(),
        lot_size: Quantity::parse("0.001").unwrap(),
        min_notional: Money::parse("5").unwrap(),
        price_precision: 1,
        qty_precision: 3,
    };
    let pepe = Instrument {
        id: InstrumentId(7),
        symbol: "1000PEPEUSDT".into(),
        venue: "bybit".into(),
        market: MarketType::Spot,
        tick_size: Price::from_raw(1),
        lot_size: Quantity::from_raw(1),
        min_notional: Money::from_raw(i64::MAX),
        price_precision: 9,
        qty_precision: 8,
    };
    assert_eq!(upsert_instruments(&s.pool, "main", &[btc.clone(), pepe]).await.unwrap(), 2);
    btc.tick_size = Price::parse("0.01").unwrap();
    assert_eq!(upsert_instruments(&s.pool, "main", &[btc]).await.unwrap(), 1);
    assert_eq!(upsert_instruments(&s.pool, "main", &[]).await.unwrap(), 0);
    let rows: Vec<(i64, String, String, String, String, String)> =
        sqlx::query_as("SELECT id, symbol, market, tick_size::text, lot_size::text, min_notional::text FROM instruments ORDER BY id")
            .fetch_all(&s.pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [
            (0, "BTCUSDT".into(), "linear_perpetual".into(), "0.010000000".into(), "0.00100000".into(), "5.000000000".into()),
            (7, "1000PEPEUSDT".into(), "spot".into(), "0.000000001".into(), "0.00000001".into(), "9223372036.854775807".into()),
        ]
    );
}

/// Someone else moving the cursor makes the sink re-read from where the database says.
#[tokio::test]
async fn a_moved_cursor_is_followed_not_overwritten() {
    let s = TestSchema::migrated("moved").await;
    let outs = sample_outputs(200, 5);
    let source = MemorySource::new();
    for o in &outs[..100] {
        source.push(*o);
    }
    let stats = SinkStats::new();
    let (stop_tx, stop) = stop_channel();
    let mut config = s.sink_config();
    config.batch_max = 10;
    let task = tokio::spawn(run_sink(config, source.clone(), stats.clone(), stop));
    let st = stats.clone();
    wait_for("first 100", Duration::from_secs(10), || st.cursor() == 100).await;
    // An operator skips records 100..150 (say they were loaded elsewhere).
    sqlx::query("UPDATE sink_cursor SET next_seq = 150").execute(&s.pool).await.unwrap();
    for o in &outs[100..] {
        source.push(*o);
    }
    wait_for("the rest", Duration::from_secs(10), || st.cursor() == 200).await;
    stop_tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    let seqs = s.journal_seqs().await;
    let want: Vec<i64> = (0..100).chain(150..200).collect();
    assert_eq!(seqs, want);
    assert!(stats.last_error().unwrap_or_default().contains("re-reading from 150"), "{:?}", stats.last_error());
}

/// A source that loses records 5 and 6 (as a journal with a hole would).
#[derive(Clone, Debug)]
struct Holey {
    inner: MemorySource,
}

impl OutputSource for Holey {
    fn seek(&mut self, next_seq: u64) -> Result<(), SinkError> {
        self.inner.seek(next_seq)
    }

    fn read(&mut self, max: usize, out: &mut Vec<(u64, Output)>) -> Result<(), SinkError> {
        let from = out.len();
        self.inner.read(max, out)?;
        let mut i = from;
        while i < out.len() {
            if (5..7).contains(&out[i].0) {
                out.remove(i);
            } else {
                i += 1;
            }
        }
        Ok(())
    }
}

/// Missing journal records stop the sink at the hole (counted, reported), never skipped over.
#[tokio::test]
async fn a_hole_in_the_journal_is_reported_not_skipped() {
    let s = TestSchema::migrated("hole").await;
    let inner = MemorySource::new();
    for o in sample_outputs(20, 9) {
        inner.push(o);
    }
    let mut config = s.sink_config();
    config.batch_max = 5;
    let stats = SinkStats::new();
    let (stop_tx, stop) = stop_channel();
    let task = tokio::spawn(run_sink(config, Holey { inner }, stats.clone(), stop));
    let st = stats.clone();
    wait_for("the gap to be reported twice", Duration::from_secs(10), || st.errors() >= 2).await;
    stop_tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(stats.cursor(), 5);
    assert_eq!(s.journal_seqs().await, (0..5).collect::<Vec<i64>>());
    assert_eq!(stats.last_error().as_deref(), Some("output journal handed out record 7, expected 5"));
}

/// A replay of rows already written (the cursor was rewound by hand): COPY refuses the
/// duplicates, the batch is retried with UNNEST, which skips them; no row is doubled.
#[tokio::test]
async fn a_replayed_batch_is_idempotent_under_copy() {
    let s = TestSchema::migrated("replay").await;
    let outs = sample_outputs(40, 13);
    let records: Vec<(u64, Output)> = outs.iter().enumerate().map(|(i, o)| (i as u64, *o)).collect();
    let mut conn = s.options.connect().await.unwrap();
    ensure_cursor(&mut conn, "output", 0).await.unwrap();
    let mut w = BatchWriter::new(1);
    w.load(&records[..15]);
    w.write(&mut conn, "output", BatchMethod::Unnest, 0, 15).await.unwrap();
    sqlx::query("UPDATE sink_cursor SET next_seq = 0").execute(&mut conn).await.unwrap();

    let source = MemorySource::new();
    for o in &outs {
        source.push(*o);
    }
    let mut config = s.sink_config();
    config.method = BatchMethod::Copy;
    config.batch_max = 10;
    let stats = SinkStats::new();
    let (stop_tx, stop) = stop_channel();
    let task = tokio::spawn(run_sink(config, source, stats.clone(), stop));
    let st = stats.clone();
    wait_for("the replay", Duration::from_secs(10), || st.cursor() == 40).await;
    stop_tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert_exactly_once(&s, &outs).await;
    assert!(stats.errors() >= 1, "COPY met the duplicates");
    assert!(stats.last_error().unwrap_or_default().contains("duplicate key"), "{:?}", stats.last_error());
}

/// Rows of one shard: `(journal_seq)` of every journal-fed table but agent_margin, sorted.
async fn shard_journal_seqs(s: &TestSchema, shard: &str) -> Vec<i64> {
    let q = format!(
        "SELECT journal_seq FROM (SELECT shard, journal_seq FROM orders UNION ALL SELECT shard, journal_seq FROM executions \
         UNION ALL SELECT shard, journal_seq FROM signals UNION ALL SELECT shard, journal_seq FROM risk_events \
         UNION ALL SELECT shard, journal_seq FROM pnl_snapshots) s WHERE shard = '{shard}' ORDER BY 1"
    );
    sqlx::query_scalar(&q).fetch_all(&s.pool).await.unwrap()
}

/// Two cores (shards) share one database: their sinks write records with the same journal
/// sequences, one by UNNEST and one by COPY. Every record of both is there exactly once with
/// its shard, and each shard has its own cursor. (Before shards, the key was `journal_seq`
/// alone: the second sink's rows were silently dropped and both moved one cursor.)
#[tokio::test]
async fn two_shards_with_the_same_journal_seqs_keep_every_row_and_their_own_cursor() {
    let s = TestSchema::migrated("shards").await;
    let (outs_a, outs_b) = (sample_outputs(400, 11), sample_outputs(300, 12));
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    let mut stats = Vec::new();
    for (shard, outs, method) in [("a", &outs_a, BatchMethod::Unnest), ("b", &outs_b, BatchMethod::Copy)] {
        let source = MemorySource::new();
        for o in outs {
            source.push(*o);
        }
        let mut config = s.sink_config();
        config.shard = shard.into();
        config.method = method;
        config.batch_max = 64;
        let st = SinkStats::new();
        stats.push((st.clone(), outs.len() as u64));
        let (stop_tx, stop) = stop_channel();
        stops.push(stop_tx);
        tasks.push(tokio::spawn(run_sink(config, source, st, stop)));
    }
    for (st, n) in &stats {
        let st = st.clone();
        let n = *n;
        wait_for("both sinks caught up", Duration::from_secs(20), move || st.cursor() == n).await;
    }
    for stop_tx in stops {
        stop_tx.send(true).unwrap();
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    for (shard, outs) in [("a", &outs_a), ("b", &outs_b)] {
        let want: Vec<i64> = (0..outs.len() as i64).collect();
        assert_eq!(shard_journal_seqs(&s, shard).await, want, "shard {shard}: each record exactly once");
        for (table, n) in expected_rows(outs) {
            let got = s.count(&format!("SELECT count(*) FROM {table} WHERE shard = '{shard}'")).await;
            assert_eq!(got, n, "shard {shard}: {table}");
        }
        let cursor = s.count(&format!("SELECT next_seq FROM sink_cursor WHERE shard = '{shard}' AND name = 'output'")).await;
        assert_eq!(cursor, outs.len() as i64, "shard {shard}'s cursor");
    }
    assert_eq!(s.count("SELECT count(*) FROM sink_cursor").await, 2, "one cursor per shard");
    assert_eq!(s.count("SELECT count(DISTINCT shard) FROM executions WHERE shard NOT IN ('a', 'b')").await, 0);
}

fn instrument(id: u32, venue: &str, symbol: &str) -> Instrument {
    Instrument {
        id: InstrumentId(id),
        symbol: symbol.into(),
        venue: venue.into(),
        market: MarketType::LinearPerpetual,
        tick_size: Price::parse("0.1").unwrap(),
        lot_size: Quantity::parse("0.001").unwrap(),
        min_notional: Money::parse("5").unwrap(),
        price_precision: 1,
        qty_precision: 3,
    }
}

/// Each shard's process-local ids keep their own symbols: shard a's id 0 and shard b's id 0
/// are two rows, and a (venue, symbol) lookup finds each shard's id. (Before shards the key
/// was `id` alone and the second upsert overwrote the first.)
#[tokio::test]
async fn two_shards_keep_their_own_instrument_ids() {
    let s = TestSchema::migrated("shard_instr").await;
    let a = [instrument(0, "binance", "BTCUSDT"), instrument(1, "binance", "ETHUSDT")];
    let b = [instrument(0, "binance", "SOLUSDT"), instrument(1, "binance", "BTCUSDT")];
    assert_eq!(upsert_instruments(&s.pool, "a", &a).await.unwrap(), 2);
    assert_eq!(upsert_instruments(&s.pool, "b", &b).await.unwrap(), 2);
    // A shard's restart with new ids updates its own rows only.
    assert_eq!(upsert_instruments(&s.pool, "b", &b).await.unwrap(), 2);
    let rows: Vec<(String, i64, String)> =
        sqlx::query_as("SELECT shard, id, symbol FROM instruments ORDER BY shard, id").fetch_all(&s.pool).await.unwrap();
    let want = [("a", 0, "BTCUSDT"), ("a", 1, "ETHUSDT"), ("b", 0, "SOLUSDT"), ("b", 1, "BTCUSDT")];
    assert_eq!(rows, want.map(|(s, i, y)| (s.to_string(), i, y.to_string())));
    let btc: Vec<(String, i64)> =
        sqlx::query_as("SELECT shard, id FROM instruments WHERE venue = 'binance' AND symbol = 'BTCUSDT' ORDER BY shard")
            .fetch_all(&s.pool)
            .await
            .unwrap();
    assert_eq!(btc, [("a".to_string(), 0), ("b".to_string(), 1)]);
}

/// Every row of a journal-fed or instrument table as JSON without the shard column, sorted.
async fn rows_without_shard(s: &TestSchema) -> Vec<String> {
    let mut rows = Vec::new();
    for t in ["orders", "executions", "signals", "risk_events", "pnl_snapshots", "agent_margin", "instruments", "sink_cursor"] {
        let q = format!("SELECT '{t} ' || (to_jsonb(x) - 'shard' - 'updated_at')::text FROM {t} x ORDER BY 1");
        rows.extend(sqlx::query_scalar::<_, String>(&q).fetch_all(&s.pool).await.unwrap());
    }
    rows
}

/// A database written by one core before shards existed moves forward without losing a row:
/// the rows of schema version 2 are all still there after migration 3, as the default
/// shard's, and that shard's sink carries on from its old cursor.
#[tokio::test]
async fn the_shard_migration_keeps_every_row_of_a_single_shard_database() {
    let s = TestSchema::new("shard_migrate").await;
    assert_eq!(migrate_to(&s.pool, Some(2)).await.unwrap().len(), 2);
    // What a version-2 sink and core wrote (columns as in 0001_tables.sql).
    sqlx::raw_sql(
        "INSERT INTO instruments (id, symbol, venue, market, tick_size, lot_size, min_notional, price_precision, qty_precision)
             VALUES (0, 'BTCUSDT', 'binance', 'linear_perpetual', 0.1, 0.001, 5, 1, 3),
                    (1, 'ETHUSDT', 'binance', 'linear_perpetual', 0.01, 0.01, 5, 2, 2);
         INSERT INTO orders SELECT g, g, to_timestamp(g), g::bigint * 1000000000, g, g + 1, g + 2, g % 2, 1, 'new', 'buy', 'limit',
             'gtc', false, 100.5 + g, 0.25 FROM generate_series(0, 39) g;
         INSERT INTO executions SELECT g, g, to_timestamp(g), g::bigint * 1000000000, g, g - 39, g % 2, 1, 'fill', 'buy', 'none',
             'taker', 100.5, 0.25, 0, 0.001 FROM generate_series(40, 79) g;
         INSERT INTO signals SELECT g, g, to_timestamp(g), g::bigint * 1000000000, g, g, g % 2, 2, 50, 9000, 1000, true
             FROM generate_series(80, 89) g;
         INSERT INTO risk_events SELECT g, g, to_timestamp(g), g::bigint * 1000000000, 'refusal', 'price_band', 1, 0, g, 'sell',
             99, 1, NULL FROM generate_series(90, 94) g;
         INSERT INTO pnl_snapshots SELECT g, g, to_timestamp(g), g::bigint * 1000000000, CASE WHEN g % 2 = 0 THEN 1 END,
             1.5, -0.5, 0.01, 1000, 1001, 250 FROM generate_series(95, 99) g;
         INSERT INTO agent_margin (journal_seq, engine_seq, ts, ts_ns, agent_id, capital, equity, gross_exposure,
             leverage, margin_used, margin_remaining)
             SELECT g, g, to_timestamp(g), g::bigint * 1000000000, 1, 1000, 1001, 250, 1, 250, 750 FROM generate_series(96, 98, 2) g;
         INSERT INTO sink_cursor (name, next_seq) VALUES ('output', 100);",
    )
    .execute(&s.pool)
    .await
    .unwrap();
    let before = rows_without_shard(&s).await;
    assert_eq!(before.len(), 2 + 40 + 40 + 10 + 5 + 5 + 2 + 1);

    let applied = migrate(&s.pool).await.unwrap();
    assert_eq!(applied.iter().map(|a| a.version).collect::<Vec<_>>(), [3]);
    check_schema(&s.pool).await.unwrap();
    assert_eq!(rows_without_shard(&s).await, before, "every row kept, unchanged");
    for t in ["orders", "executions", "signals", "risk_events", "pnl_snapshots", "agent_margin", "instruments", "sink_cursor"] {
        let other = s.count(&format!("SELECT count(*) FROM {t} WHERE shard <> 'main'")).await;
        assert_eq!(other, 0, "{t}: existing rows are the default shard's");
    }

    // The default shard's sink resumes at its old cursor; another shard starts its own at 0,
    // and its rows with the same journal sequences sit beside the old ones.
    let outs = sample_outputs(130, 3);
    let mut conn = s.options.connect().await.unwrap();
    assert_eq!(ensure_cursor(&mut conn, "output", 0).await.unwrap(), 100);
    let mut main = BatchWriter::new(1);
    main.load(&(100..130u64).map(|i| (i, outs[i as usize])).collect::<Vec<_>>());
    main.write(&mut conn, "output", BatchMethod::Unnest, 100, 130).await.unwrap();
    assert_eq!(sapphire_persistence::pg::ensure_shard_cursor(&mut conn, "b", "output", 0).await.unwrap(), 0);
    let mut b = BatchWriter::for_shard(1, "b");
    b.load(&(0..100u64).map(|i| (i, outs[i as usize])).collect::<Vec<_>>());
    b.write(&mut conn, "output", BatchMethod::Copy, 0, 100).await.unwrap();
    assert_eq!(shard_journal_seqs(&s, "main").await, (0..130).collect::<Vec<_>>(), "the 100 old records and the 30 new ones");
    assert_eq!(shard_journal_seqs(&s, "b").await, (0..100).collect::<Vec<_>>());
    let _ = conn.close().await;
}
