//! Sapphire's persistence: the durable journals, recovery, the Postgres sink and the Redis
//! publisher.
//!
//! Nothing runs here yet: the engine currently journals through
//! `sapphire_core::journal::InputJournal` with the in-memory `MemoryJournal`. The durable,
//! memory-mapped journal lands here with the persistence issue.
//!
//! # Layout
//! (empty until the persistence issue lands)
//!
//! # Features
//! None.
#![forbid(unsafe_code)]
