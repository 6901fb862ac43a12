//! Sapphire's persistence: the durable journals, recovery, the Postgres sink and the Redis
//! publisher.
//!
//! # Layout
//! - [`journal`]: the input journal — segment files of CRC-framed rkyv records, torn-tail
//!   recovery, durability policies.
//! - [`recovery`]: crash recovery — the journal replayed through the deterministic engine.
//!
//! The Postgres sink, the Redis publisher and the output journal land here next.
//!
//! # Features
//! None.
#![forbid(unsafe_code)]

/// The input journal.
pub mod journal;
/// Crash recovery from the input journal.
pub mod recovery;
