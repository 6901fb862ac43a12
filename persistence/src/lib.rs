//! Sapphire's persistence: the durable journals, recovery, the Postgres sink and the Redis
//! publisher.
//!
//! # Layout
//! - [`journal`]: the input journal — segment files of CRC-framed rkyv records, torn-tail
//!   recovery, durability policies.
//!
//! The Postgres sink, the Redis publisher, the output journal and crash recovery land here
//! next.
//!
//! # Features
//! None.
#![forbid(unsafe_code)]

/// The input journal.
pub mod journal;
