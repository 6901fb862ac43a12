//! Sapphire's persistence: the durable journals, recovery, the Postgres sink and the Redis
//! publisher.
//!
//! # Layout
//! - [`journal`]: the input journal — segment files of CRC-framed rkyv records, torn-tail
//!   recovery, durability policies.
//!   The output journal (every engine output) uses the same format with its own magic;
//!   [`journal::Tail`] follows a journal as it grows.
//! - [`recovery`]: crash recovery — the newest valid snapshot and the journal after it
//!   replayed through the deterministic engine, and the output journal completed with what a
//!   crash kept from it.
//! - [`snapshot`]: engine snapshots — the checksummed file format, the writer thread.
//! - [`retention`]: sealed segments a restart no longer needs, archived (a directory or a
//!   GCS bucket) and deleted; brought back for a replay.
//! - [`text`]: records as named fields (JSON lines, CSV) for dumps and the edge.
//! - [`bus`]: the Redis publisher (documented channels) and remote agents' signal ingress.
//! - [`pg`]: the Postgres sink — migrations, the schema check, the journal-tailing writer
//!   (exactly once through a cursor committed with the rows).
//! - [`shard`]: the shard id every row, cursor, Redis key and channel carries.
//!
//! # Features
//! None.
// One audited exception: `segment::map` maps sealed journal segments read-only.
#![deny(unsafe_code)]

/// The Redis bus: ticks and outputs out, remote agents' signals in.
pub mod bus;
/// The input journal.
pub mod journal;
/// The Postgres sink: migrations, schema check, the journal-tailing writer.
pub mod pg;
/// Crash recovery from the input journal.
pub mod recovery;
/// Journal retention: archive and prune sealed segments behind the newest snapshot.
pub mod retention;
/// The shard id (which core a record came from) and its validation.
pub mod shard;
/// Engine snapshots on disk: the format, the writer thread, reading them back.
pub mod snapshot;
/// Journal records as named fields, JSON and CSV.
pub mod text;
