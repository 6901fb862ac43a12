//! The Postgres sink: history tables fed from the output journal, exactly once.
//!
//! # Layout
//! - [`schema`]: the embedded migrations (`persistence/migrations`), [`migrate`] (run on
//!   purpose by `sapphire migrate`) and [`check_schema`] (run refuses a schema that is behind,
//!   ahead or altered), and [`upsert_instruments`].
//! - [`sink`]: [`run_sink`], the async task that tails the output journal and writes batches,
//!   [`SinkConfig`], [`SinkStats`] (rows per table, batches, cursor, lag, errors, retries),
//!   [`OutputSource`] with [`JournalSource`] and [`MemorySource`].
//! - `rows`: engine outputs as rows of the six journal-fed tables; `write`: the two batch
//!   methods, UNNEST inserts and binary COPY (the COPY format is written here, by hand).
//! - [`sample_outputs`]: a deterministic mix of every output kind for tests and benchmarks.
//!
//! # Exactly once
//! The table `sink_cursor` holds, per shard and sink name, the next journal sequence to
//! write. Each batch is one transaction: lock the cursor row, check it is where this sink
//! left it, insert the rows, move the cursor, commit. A crash anywhere before the commit
//! rolls back rows and cursor together, and the restarted sink re-reads from the stored
//! cursor; after the commit both are durable. Every journal-fed table's primary key is
//! `(shard, journal_seq)`, a second guard: a replayed record can never become a second row
//! (UNNEST skips it, COPY fails the batch, which is retried with UNNEST).
//!
//! # Shards
//! Several cores (one per symbol shard) may share one database, each with its own sink.
//! Every row carries the `shard` of the core that wrote it ([`SinkConfig::shard`], from
//! `[node] shard` / `SAPPHIRE_SHARD`, default [`crate::shard::DEFAULT_SHARD`]); journal
//! sequences and instrument ids are per shard, so a row is identified by
//! `(shard, journal_seq)` and an instrument by `(shard, id)` (with `(venue, symbol)`
//! indexed to find every shard's id for a symbol). Migration 0003 moved single-shard
//! databases forward: existing rows and the existing cursor became the default shard's.
//!
//! # Values
//! - Prices, quantities and money are `numeric` with the engine's scale (9, 8, 9 decimals),
//!   written exactly from the raw integers: UNNEST sends the raw `bigint`s and multiplies by
//!   `0.000000001` in SQL (exact `numeric` arithmetic); COPY encodes `numeric`'s binary form
//!   (base-10000 digit groups) from the integer. Never through `f64`. `numeric` over raw
//!   `bigint` plus a scale because report queries (sums per day, per agent) then need no
//!   conversion and cannot mix scales.
//! - Times: `ts timestamptz` (microseconds) for people and `date_trunc`, and `ts_ns bigint`,
//!   the exact event time, for ordering. A time past 2262 (above `i64` ns) cannot be stored:
//!   that record is skipped and counted ([`SinkStats::skipped`]), the cursor moves on.
//! - `u64` ids keep their 64 bits in a `bigint` (ids from 2^63 on read as negative).
//!
//! # The engine is never affected
//! The sink is a separate task that reads the journal from disk (in a blocking-pool thread).
//! A dead or slow database makes it back off (capped exponential, 100 ms → 10 s by default),
//! log once per change of state and retry the same batch; lag grows and is exported
//! ([`SinkStats::lag`]); the engine and the journal do not notice.

/// Migrations and the schema check.
pub mod schema;
/// The sink task.
pub mod sink;

mod rows;
mod sample;
mod write;

pub use rows::decimal_string;
pub use sample::sample_outputs;
pub use schema::{check_schema, execute, migrate, migrate_to, required_version, upsert_instruments, Applied, SchemaError, MIGRATOR};
pub use sink::{
    connect_pool, describe_target, ensure_cursor, ensure_shard_cursor, run_sink, BatchMethod, BatchWriter, JournalSource, MemorySource,
    OutputSource, SinkConfig, SinkError, SinkStats,
};
/// The Postgres types callers need to connect (so they need no sqlx dependency of their own).
pub use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
