//! Sapphire's latency lab: every benchmark case as a function, callable from the
//! `cargo bench` harnesses in `benches/` and from `sapphire bench` (which writes the report,
//! the `.hgrm` percentile files and the plots).
//!
//! Every comparison runs its baseline in the same run, on the same data, the same cores and
//! the same schedule; latency is reported as percentiles (HdrHistogram), measured open-loop
//! from the scheduled time wherever a schedule exists. A benchmark is never a timed test:
//! the tests here check that each case runs and measures what it says, not how fast.
//!
//! # Layout
//! - [`case`]: a measured case, ratios, the `.hgrm` text format.
//! - [`lab`]: scale, cores and pinning (with whether it held), clock, pacing, the machine.
//! - [`hop`]: one hop between pinned threads — our ring vs crossbeam, std, tokio, an atomic floor.
//! - [`engine`]: tick in to order out — fused, split, crossbeam-channel and tokio-task wirings.
//! - [`api_attack`]: tick in to order out while the HTTP API is attacked, against a quiet run.
//! - [`feed`]: Binance frame parsing vs serde_json; depth apply on a deep book.
//! - [`journal`]: journal append under each durability policy.
//! - [`loopback`]: local exchange WebSocket → feed client → engine, decomposed.
//! - [`venue`]: order encode + sign vs the HMAC floor; router → HTTP request on loopback vs reqwest.
//! - [`suite`]: the whole run and its report (`report.md`, `report.json`, `.hgrm`).
//!
//! No feature flags.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod api_attack;
pub mod case;
pub mod engine;
pub mod feed;
pub mod hop;
pub mod journal;
pub mod lab;
pub mod loopback;
pub mod suite;
pub mod venue;
