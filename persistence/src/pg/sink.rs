//! The sink task: tails the output journal, writes each batch of records and the journal
//! cursor in one transaction, and retries the same batch with capped exponential backoff
//! when Postgres fails. The engine never waits for it: it only reads the journal from disk.

use super::rows::{RowBatch, TABLES};
use super::schema::{check_schema_conn, SchemaError};
use super::write::{insert_copy, insert_unnest};
use crate::journal::{JournalError, Tail};
use crate::shard::{check_shard, DEFAULT_SHARD};
use sapphire_core::engine::Output;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a batch's rows reach Postgres.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BatchMethod {
    /// One `INSERT … SELECT FROM UNNEST($1::bigint[], …)` per table: array parameters,
    /// `ON CONFLICT (shard, journal_seq) DO NOTHING`.
    #[default]
    Unnest,
    /// One binary `COPY … FROM STDIN` per table (the format written by hand): fewer bytes
    /// parsed per row; a conflicting row fails the batch, which is then retried with UNNEST.
    Copy,
}

impl std::str::FromStr for BatchMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "unnest" | "insert" => Ok(BatchMethod::Unnest),
            "copy" => Ok(BatchMethod::Copy),
            other => Err(format!("unknown sink batch method {other:?}: expected unnest or copy")),
        }
    }
}

/// Sink settings.
#[derive(Clone)]
pub struct SinkConfig {
    /// Where Postgres is (from `DATABASE_URL`; options such as `search_path` included).
    pub connect: PgConnectOptions,
    /// The shard whose output journal this sink follows: every row it writes carries it, and
    /// its cursor is the `(shard, name)` row of `sink_cursor`.
    pub shard: String,
    /// The cursor's name in `sink_cursor`: one per journal the sink follows, within its shard.
    pub name: String,
    /// UNNEST inserts or binary COPY.
    pub method: BatchMethod,
    /// Most journal records per transaction.
    pub batch_max: usize,
    /// Pause between journal polls when nothing is new.
    pub idle_poll: Duration,
    /// First retry delay after a failure; doubles per consecutive failure…
    pub backoff_min: Duration,
    /// …up to this.
    pub backoff_max: Duration,
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
    /// Longest a batch transaction may take before the connection is dropped and the batch
    /// retried (a partitioned network otherwise hangs forever).
    pub write_timeout: Duration,
    /// The risk configuration's leverage: `agent_margin.margin_used = gross_exposure / leverage`.
    pub leverage: i64,
}

impl SinkConfig {
    /// Defaults: shard [`DEFAULT_SHARD`], cursor `output`, UNNEST, 1,000 records per batch, 50 ms idle poll, backoff
    /// 100 ms → 10 s, 5 s connect timeout, 30 s write timeout, leverage 1.
    pub fn new(connect: PgConnectOptions) -> Self {
        Self {
            connect,
            shard: DEFAULT_SHARD.into(),
            name: "output".into(),
            method: BatchMethod::Unnest,
            batch_max: 1_000,
            idle_poll: Duration::from_millis(50),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            leverage: 1,
        }
    }

    /// Settings from a `postgres://…` URL (the password is never printed).
    pub fn from_url(url: &str) -> Result<Self, SinkError> {
        let connect: PgConnectOptions = url.parse().map_err(|e| SinkError::Config(format!("database URL: {e}")))?;
        Ok(Self::new(connect))
    }

    /// `host:port/database` for messages.
    pub fn target(&self) -> String {
        describe_target(&self.connect)
    }
}

/// A small pool (`max` connections) for tools and checks, after one direct connection
/// attempt so an unreachable database reports its real error ("connection refused") within
/// `timeout` instead of a pool timeout.
pub async fn connect_pool(connect: &PgConnectOptions, max: u32, timeout: Duration) -> Result<sqlx::PgPool, SinkError> {
    let target = describe_target(connect);
    match tokio::time::timeout(timeout, connect.connect()).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
        Ok(Err(error)) => return Err(SinkError::Connect { target, error }),
        Err(_) => return Err(SinkError::Timeout(timeout)),
    }
    Ok(sqlx::postgres::PgPoolOptions::new().max_connections(max.max(1)).acquire_timeout(timeout).connect_lazy_with(connect.clone()))
}

/// `host:port/database` of connect options, for messages (never the password).
pub fn describe_target(c: &PgConnectOptions) -> String {
    format!("{}:{}/{}", c.get_host(), c.get_port(), c.get_database().unwrap_or(c.get_username()))
}

impl std::fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkConfig")
            .field("target", &self.target())
            .field("user", &self.connect.get_username())
            .field("password", &"<redacted>")
            .field("shard", &self.shard)
            .field("name", &self.name)
            .field("method", &self.method)
            .field("batch_max", &self.batch_max)
            .field("idle_poll", &self.idle_poll)
            .field("backoff", &(self.backoff_min, self.backoff_max))
            .field("connect_timeout", &self.connect_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("leverage", &self.leverage)
            .finish()
    }
}

/// What went wrong in the sink. The sink itself retries all of these; they reach callers
/// through [`SinkStats::last_error`] and from [`run_sink`] only for bad configuration.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The settings cannot work.
    #[error("sink configuration: {0}")]
    Config(String),
    /// Postgres could not be reached.
    #[error("cannot connect to Postgres at {target}: {error}")]
    Connect {
        /// `host:port/database`.
        target: String,
        /// The error (in the message, not a separate source, so chains print it once).
        error: sqlx::Error,
    },
    /// A statement failed.
    #[error("Postgres: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema is not the one this build needs.
    #[error("{0}")]
    Schema(#[from] SchemaError),
    /// Connecting or writing took too long.
    #[error("Postgres did not answer within {0:?}")]
    Timeout(Duration),
    /// The journal could not be read.
    #[error("output journal: {0}")]
    Source(String),
    /// The stored cursor is not where this sink left it (another writer, or a manual reset):
    /// the sink re-reads from the stored cursor.
    #[error("cursor {name:?} of shard {shard:?} is at {found} in the database, this sink was at {expected}; re-reading from {found}")]
    CursorMoved {
        /// The cursor's shard.
        shard: String,
        /// The cursor's name.
        name: String,
        /// Where this sink thought it was.
        expected: u64,
        /// What the database holds.
        found: i64,
    },
    /// The journal handed out a record other than the next one.
    #[error("output journal handed out record {found}, expected {expected}")]
    Gap {
        /// The cursor.
        expected: u64,
        /// What came.
        found: u64,
    },
}

impl SinkError {
    /// True for errors retrying cannot fix without someone acting (configuration, schema).
    pub fn is_terminal(&self) -> bool {
        match self {
            SinkError::Config(_) => true,
            SinkError::Schema(e) => e.is_terminal(),
            _ => false,
        }
    }
}

impl From<JournalError> for SinkError {
    fn from(e: JournalError) -> Self {
        SinkError::Source(e.to_string())
    }
}

/// The sink's counters, shared with `/metrics` (all relaxed atomics; the last error behind a
/// mutex only the sink task and metric readers take, never the engine).
#[derive(Debug, Default)]
pub struct SinkStats {
    rows: [AtomicU64; TABLES.len()],
    batches: AtomicU64,
    cursor: AtomicU64,
    head: AtomicU64,
    errors: AtomicU64,
    retries: AtomicU64,
    skipped: AtomicU64,
    healthy: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl SinkStats {
    /// Fresh counters.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Rows written per table, as `(table, rows)`.
    pub fn rows_by_table(&self) -> [(&'static str, u64); TABLES.len()] {
        TABLES.map(|t| (t.name, self.rows[t.index].load(Ordering::Relaxed)))
    }

    /// Rows written to all tables.
    pub fn rows_total(&self) -> u64 {
        self.rows.iter().map(|r| r.load(Ordering::Relaxed)).sum()
    }

    /// Transactions committed.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// The committed cursor: the next journal sequence to write.
    pub fn cursor(&self) -> u64 {
        self.cursor.load(Ordering::Relaxed)
    }

    /// The journal head: the larger of what the journal's owner reported and the sequence
    /// after the last record read.
    pub fn journal_head(&self) -> u64 {
        self.head.load(Ordering::Relaxed)
    }

    /// Reports the journal head (the writer's next sequence), so lag counts records not yet
    /// read too.
    pub fn set_journal_head(&self, next_seq: u64) {
        self.head.fetch_max(next_seq, Ordering::Relaxed);
    }

    /// Records in the journal not yet committed to Postgres.
    pub fn lag(&self) -> u64 {
        self.journal_head().saturating_sub(self.cursor())
    }

    /// Failed attempts (connect, schema, write, journal read).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Attempts made again after a failure.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Journal records that could not become rows (a value out of range); the cursor moves
    /// past them.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// True after a committed batch or an idle poll on a working connection, false after a
    /// failure.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// The most recent error, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().map(|e| e.clone()).unwrap_or(None)
    }

    fn set_error(&self, e: &SinkError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.healthy.store(false, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(e.to_string());
        }
    }
}

/// Where the sink reads engine outputs: the output journal, or memory in tests and benches.
pub trait OutputSource: Send + 'static {
    /// Positions the source so the next record read is `next_seq`.
    fn seek(&mut self, next_seq: u64) -> Result<(), SinkError>;
    /// Appends up to `max` records, in sequence order, to `out`; appends none when nothing
    /// is new yet.
    fn read(&mut self, max: usize, out: &mut Vec<(u64, Output)>) -> Result<(), SinkError>;
}

/// The output journal in a directory, followed across segment rolls.
#[derive(Debug)]
pub struct JournalSource {
    dir: PathBuf,
    tail: Tail,
}

impl JournalSource {
    /// A source over the journal in `dir` (which may not exist yet).
    pub fn new(dir: &Path) -> Result<Self, SinkError> {
        Ok(Self { dir: dir.to_path_buf(), tail: Tail::open(dir, 0)? })
    }
}

impl OutputSource for JournalSource {
    fn seek(&mut self, next_seq: u64) -> Result<(), SinkError> {
        self.tail = Tail::open(&self.dir, next_seq)?;
        Ok(())
    }

    fn read(&mut self, max: usize, out: &mut Vec<(u64, Output)>) -> Result<(), SinkError> {
        self.tail.poll::<Output>(max, |seq, o| out.push((seq, *o)))?;
        Ok(())
    }
}

/// Outputs held in memory, sequence = position; clones share the records and keep their own
/// read position. For tests, benchmarks and in-process feeding.
#[derive(Clone, Debug, Default)]
pub struct MemorySource {
    records: Arc<Mutex<Vec<Output>>>,
    next: u64,
}

impl MemorySource {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a record; returns its sequence.
    pub fn push(&self, out: Output) -> u64 {
        let mut r = self.records.lock().unwrap_or_else(|p| p.into_inner());
        r.push(out);
        r.len() as u64 - 1
    }

    /// Records held.
    pub fn len(&self) -> u64 {
        self.records.lock().map(|r| r.len() as u64).unwrap_or(0)
    }

    /// True when no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl OutputSource for MemorySource {
    fn seek(&mut self, next_seq: u64) -> Result<(), SinkError> {
        self.next = next_seq;
        Ok(())
    }

    fn read(&mut self, max: usize, out: &mut Vec<(u64, Output)>) -> Result<(), SinkError> {
        let r = self.records.lock().map_err(|_| SinkError::Source("memory source poisoned".into()))?;
        let from = usize::try_from(self.next).unwrap_or(usize::MAX).min(r.len());
        let to = from.saturating_add(max).min(r.len());
        out.extend(r[from..to].iter().enumerate().map(|(i, o)| ((from + i) as u64, *o)));
        self.next = to as u64;
        Ok(())
    }
}

/// What one step of the sink did.
enum Step {
    /// A batch committed.
    Wrote,
    /// Nothing new in the journal.
    Idle,
}

/// The sink's state between steps.
struct Sink<S> {
    config: SinkConfig,
    stats: Arc<SinkStats>,
    source: Option<S>,
    conn: Option<PgConnection>,
    /// The committed cursor, once read from the database.
    cursor: Option<u64>,
    /// Records read but not yet committed, oldest first; retried as they are after a failure.
    pending: Vec<(u64, Output)>,
    writer: BatchWriter,
    /// The next attempt of the pending batch uses UNNEST (after COPY hit a duplicate).
    unnest_once: bool,
}

/// One sink transaction, reusable across batches: the rows of a batch of journal records
/// and the statements that write them with the cursor. [`run_sink`] uses it; benchmarks and
/// tools may drive it directly.
#[derive(Debug, Default)]
pub struct BatchWriter {
    rows: RowBatch,
    copy_buf: Vec<u8>,
    leverage: i64,
    /// The shard of every row written and of the cursor moved.
    shard: String,
}

impl BatchWriter {
    /// A writer for the default shard and a risk configuration with this leverage (for
    /// `agent_margin`).
    pub fn new(leverage: i64) -> Self {
        Self::for_shard(leverage, DEFAULT_SHARD)
    }

    /// A writer whose rows and cursor belong to `shard`.
    pub fn for_shard(leverage: i64, shard: &str) -> Self {
        Self { leverage, shard: shard.to_string(), ..Self::default() }
    }

    /// The shard this writer writes as.
    pub fn shard(&self) -> &str {
        &self.shard
    }

    /// Turns records into rows, replacing the previous batch; returns the rows.
    pub fn load(&mut self, records: &[(u64, Output)]) -> usize {
        self.rows.clear();
        for (seq, out) in records {
            self.rows.push(*seq, out, self.leverage);
        }
        self.rows.rows()
    }

    /// Records of the loaded batch that could not become rows.
    pub fn skipped(&self) -> u64 {
        self.rows.skipped
    }

    /// One transaction: lock cursor `(shard, name)`, check it is at `cursor`, insert the
    /// loaded rows as the writer's shard with `method`, set the cursor to `next`, commit.
    /// Returns the rows inserted.
    pub async fn write(
        &mut self,
        conn: &mut PgConnection,
        name: &str,
        method: BatchMethod,
        cursor: u64,
        next: u64,
    ) -> Result<u64, SinkError> {
        let next_i64 = i64::try_from(next).map_err(|_| SinkError::Source(format!("journal sequence {next} above 2^63")))?;
        let mut tx = conn.begin().await?;
        let stored: i64 = sqlx::query_scalar("SELECT next_seq FROM sink_cursor WHERE shard = $1 AND name = $2 FOR UPDATE")
            .bind(&self.shard)
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
        if u64::try_from(stored).ok() != Some(cursor) {
            tx.rollback().await?;
            return Err(SinkError::CursorMoved { shard: self.shard.clone(), name: name.to_string(), expected: cursor, found: stored });
        }
        let written = match method {
            BatchMethod::Copy => insert_copy(&mut tx, &self.rows, &self.shard, &mut self.copy_buf).await?,
            BatchMethod::Unnest => insert_unnest(&mut tx, &self.rows, &self.shard).await?,
        };
        sqlx::query("UPDATE sink_cursor SET next_seq = $3, updated_at = now() WHERE shard = $1 AND name = $2")
            .bind(&self.shard)
            .bind(name)
            .bind(next_i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(written)
    }
}

/// Creates the default shard's cursor `name` at `start` unless it exists; returns the
/// stored cursor.
pub async fn ensure_cursor(conn: &mut PgConnection, name: &str, start: u64) -> Result<u64, SinkError> {
    ensure_shard_cursor(conn, DEFAULT_SHARD, name, start).await
}

/// Creates cursor `(shard, name)` at `start` unless it exists; returns the stored cursor.
pub async fn ensure_shard_cursor(conn: &mut PgConnection, shard: &str, name: &str, start: u64) -> Result<u64, SinkError> {
    let start = i64::try_from(start).map_err(|_| SinkError::Config(format!("cursor start {start} above 2^63")))?;
    sqlx::query("INSERT INTO sink_cursor (shard, name, next_seq) VALUES ($1, $2, $3) ON CONFLICT (shard, name) DO NOTHING")
        .bind(shard)
        .bind(name)
        .bind(start)
        .execute(&mut *conn)
        .await?;
    let c: i64 = sqlx::query_scalar("SELECT next_seq FROM sink_cursor WHERE shard = $1 AND name = $2")
        .bind(shard)
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
    Ok(u64::try_from(c).unwrap_or(0))
}

/// Runs the sink until `stop` completes. Reads the cursor `(config.shard, config.name)` from
/// `sink_cursor` (creating it at 0), then repeatedly: reads up to `batch_max` records from
/// `source`, writes their rows and the new cursor in one transaction, and on any failure
/// keeps the same batch, backs off (capped exponential) and tries again. A crash at any
/// point loses nothing and duplicates nothing: uncommitted rows roll back with their cursor.
///
/// Returns an error only for unusable settings; everything else is retried, counted in
/// `stats` and logged once per change of state.
pub async fn run_sink<S: OutputSource>(
    config: SinkConfig,
    source: S,
    stats: Arc<SinkStats>,
    stop: impl Future<Output = ()>,
) -> Result<(), SinkError> {
    check_shard(&config.shard).map_err(|e| SinkError::Config(format!("shard {e}")))?;
    if config.batch_max == 0 {
        return Err(SinkError::Config("batch_max must be at least 1".into()));
    }
    if config.backoff_min.is_zero() || config.backoff_max < config.backoff_min {
        return Err(SinkError::Config("backoff_min must be positive and at most backoff_max".into()));
    }
    tokio::pin!(stop);
    let mut sink = Sink {
        stats,
        source: Some(source),
        conn: None,
        cursor: None,
        pending: Vec::with_capacity(config.batch_max),
        writer: BatchWriter::for_shard(config.leverage, &config.shard),
        unnest_once: false,
        config,
    };
    let mut failures: u32 = 0;
    let mut failing: Option<std::mem::Discriminant<SinkError>> = None;
    loop {
        let outcome = tokio::select! {
            biased;
            _ = &mut stop => None,
            r = sink.step() => Some(r),
        };
        let Some(result) = outcome else { break };
        let pause = match result {
            Ok(step) => {
                if failing.take().is_some() {
                    eprintln!("sink {}: Postgres writes resumed after {failures} failed attempts", sink.config.name);
                }
                failures = 0;
                sink.stats.healthy.store(true, Ordering::Relaxed);
                match step {
                    Step::Wrote => continue,
                    Step::Idle => sink.config.idle_poll,
                }
            }
            Err(e) => {
                sink.stats.set_error(&e);
                let kind = std::mem::discriminant(&e);
                if failing != Some(kind) {
                    eprintln!("sink {}: {e}; retrying with backoff (the engine is not affected)", sink.config.name);
                    failing = Some(kind);
                }
                let delay = backoff(sink.config.backoff_min, sink.config.backoff_max, failures);
                failures = failures.saturating_add(1);
                sink.stats.retries.fetch_add(1, Ordering::Relaxed);
                delay
            }
        };
        tokio::select! {
            biased;
            _ = &mut stop => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    if let Some(conn) = sink.conn.take() {
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
    }
    Ok(())
}

/// `min · 2^failures`, at most `max`.
fn backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    min.checked_mul(1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX)).map_or(max, |d| d.min(max))
}

impl<S: OutputSource> Sink<S> {
    async fn step(&mut self) -> Result<Step, SinkError> {
        if self.conn.is_none() {
            self.connect().await?;
        }
        if self.cursor.is_none() {
            let c = self.load_cursor().await?;
            self.pending.clear();
            let mut source = self.source.take().ok_or_else(|| SinkError::Source("source lost".into()))?;
            let (source, r) = tokio::task::spawn_blocking(move || {
                let r = source.seek(c);
                (source, r)
            })
            .await
            .map_err(|e| SinkError::Source(format!("journal reader task: {e}")))?;
            self.source = Some(source);
            r?;
            self.cursor = Some(c);
            self.stats.cursor.store(c, Ordering::Relaxed);
            self.stats.set_journal_head(c);
        }
        let cursor = self.cursor.unwrap_or(0);
        if self.pending.is_empty() {
            self.read().await?;
            if self.pending.is_empty() {
                return Ok(Step::Idle);
            }
            // Journal sequences are dense: anything else means records are missing.
            let gap = self.pending.iter().zip(cursor..).find(|((seq, _), want)| seq != want);
            if let Some(((found, _), expected)) = gap {
                let err = SinkError::Gap { expected, found: *found };
                self.pending.clear();
                self.cursor = None;
                return Err(err);
            }
            self.stats.set_journal_head(cursor + self.pending.len() as u64);
            self.writer.load(&self.pending);
        }
        let next = cursor + self.pending.len() as u64;
        let timeout = self.config.write_timeout;
        let method = if self.unnest_once { BatchMethod::Unnest } else { self.config.method };
        let conn = self.conn.as_mut().ok_or_else(|| SinkError::Source("not connected".into()))?;
        let write = self.writer.write(conn, &self.config.name, method, cursor, next);
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(_)) => {
                self.commit_stats(next);
                Ok(Step::Wrote)
            }
            Ok(Err(e @ SinkError::CursorMoved { .. })) => {
                self.cursor = None;
                self.pending.clear();
                Err(e)
            }
            Ok(Err(e)) => {
                if let SinkError::Database(sqlx::Error::Database(db)) = &e {
                    // The server refused a statement; the connection is fine. A duplicate
                    // under COPY (23505) is retried with UNNEST, which skips it.
                    if db.code().as_deref() == Some("23505") {
                        self.unnest_once = true;
                    }
                } else {
                    self.conn = None;
                }
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err(SinkError::Timeout(timeout))
            }
        }
    }

    async fn connect(&mut self) -> Result<(), SinkError> {
        let target = self.config.target();
        let timeout = self.config.connect_timeout;
        let mut conn = match tokio::time::timeout(timeout, self.config.connect.connect()).await {
            Ok(Ok(c)) => c,
            Ok(Err(error)) => return Err(SinkError::Connect { target, error }),
            Err(_) => return Err(SinkError::Timeout(timeout)),
        };
        match tokio::time::timeout(timeout, check_schema_conn(&mut conn)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(SinkError::Timeout(timeout)),
        }
        self.conn = Some(conn);
        Ok(())
    }

    async fn load_cursor(&mut self) -> Result<u64, SinkError> {
        let conn = self.conn.as_mut().ok_or_else(|| SinkError::Source("not connected".into()))?;
        let timeout = self.config.write_timeout;
        match tokio::time::timeout(timeout, ensure_shard_cursor(conn, &self.config.shard, &self.config.name, 0)).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err(SinkError::Timeout(timeout))
            }
        }
    }

    async fn read(&mut self) -> Result<(), SinkError> {
        let mut source = self.source.take().ok_or_else(|| SinkError::Source("source lost".into()))?;
        let mut buf = std::mem::take(&mut self.pending);
        let max = self.config.batch_max;
        // Journal reads touch the disk: keep them off the async workers.
        let (source, buf, r) = tokio::task::spawn_blocking(move || {
            let r = source.read(max, &mut buf);
            (source, buf, r)
        })
        .await
        .map_err(|e| SinkError::Source(format!("journal reader task: {e}")))?;
        self.source = Some(source);
        self.pending = buf;
        if r.is_err() {
            self.pending.clear();
            // Re-open at the cursor next time: the reader's position is unknown now.
            self.cursor = None;
        }
        r
    }

    fn commit_stats(&mut self, next: u64) {
        let rows = &self.writer.rows;
        for (t, rows) in TABLES.iter().zip(&rows.tables) {
            self.stats.rows[t.index].fetch_add(rows.rows as u64, Ordering::Relaxed);
        }
        if rows.skipped > 0 {
            self.stats.skipped.fetch_add(rows.skipped, Ordering::Relaxed);
            if let Some(why) = &rows.first_skip {
                eprintln!("sink {}: {} record(s) skipped: {why}", self.config.name, rows.skipped);
            }
        }
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.cursor.store(next, Ordering::Relaxed);
        self.stats.set_journal_head(next);
        self.cursor = Some(next);
        self.pending.clear();
        self.unnest_once = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(10));
        let got: Vec<_> = [0, 1, 2, 6, 7, 40, u32::MAX].iter().map(|f| backoff(min, max, *f)).collect();
        let ms = |m| Duration::from_millis(m);
        assert_eq!(got, [ms(100), ms(200), ms(400), ms(6_400), max, max, max]);
    }

    #[test]
    fn memory_source_reads_in_order_from_a_seek() {
        let mut s = MemorySource::new();
        for i in 0..10 {
            s.push(Output { seq: i, ..Output::default() });
        }
        let mut out = Vec::new();
        s.seek(7).unwrap();
        s.read(2, &mut out).unwrap();
        s.read(5, &mut out).unwrap();
        s.read(5, &mut out).unwrap();
        assert_eq!(out.iter().map(|(q, o)| (*q, o.seq)).collect::<Vec<_>>(), [(7, 7), (8, 8), (9, 9)]);
        s.seek(u64::MAX).unwrap();
        s.read(5, &mut out).unwrap();
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn batch_methods_parse_and_config_hides_the_password() {
        assert_eq!("COPY".parse::<BatchMethod>(), Ok(BatchMethod::Copy));
        assert_eq!("unnest".parse::<BatchMethod>(), Ok(BatchMethod::Unnest));
        assert!("bulk".parse::<BatchMethod>().unwrap_err().contains("bulk"));
        let c = SinkConfig::from_url("postgres://trader:hunter2@db.example:6543/hist").unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2") && shown.contains("db.example:6543/hist"), "{shown}");
        assert!(SinkConfig::from_url("postgres://db.example:notaport/hist").is_err());
    }
}
