//! Sapphire's core: the deterministic, allocation-free heart of the engine.
//!
//! Market ticks, agent signals, execution reports, timers and operator commands enter a
//! preallocated multi-producer ring as fixed-size [`event::Event`]s. A journal stage appends
//! each one beside the engine stages — book → aggregate → risk → route — which turn them into
//! risk-checked orders. The engine reads time only from events, so the same inbound sequence
//! always produces the same orders and fills. No tokio, no I/O: the crates around this one
//! connect it to the world.
//!
//! # Layout
//! - [`fixed`]: fixed-point `Price`, `Quantity`, `Money` and exact decimal parsing.
//! - [`instrument`]: the instrument registry (symbols → `u32` ids, venue filters).
//! - [`event`]: the hot-path event types.
//! - [`ring`]: the multi-producer broadcast ring.
//! - [`wait`]: wait strategies.
//! - [`affinity`]: thread pinning that degrades to a warning.
//! - [`latency`]: per-stage latency histograms.
//! - [`board`]: each instrument's top of book, published lock-free for readers off the hot path.
//! - [`book`]: the L2 order book.
//! - [`strategy`]: the in-core strategies and the market view they read.
//! - [`aggregate`]: signal aggregation into per-agent intents.
//! - [`ownership`]: which producer owns each agent id.
//! - [`order`]: intents and orders.
//! - [`portfolio`]: positions and PnL.
//! - [`risk`]: pre-trade checks, portfolio guards, operator flatten and manual orders.
//! - [`router`]: deterministic client order ids.
//! - [`matching`]: the deterministic paper matching simulator.
//! - [`engine`]: the four stages and the fused engine.
//! - [`journal`]: the journal stage's contract and an in-memory journal.
//! - [`pipeline`]: threads, layouts, rings, shutdown.
//! - [`release`]: the journal gate: outputs and orders leave once their cause is journaled.
//! - [`snapshot`]: when the engine's state is snapshotted and how the stages copy it.
//!
//! # Features
//! None yet.

pub mod affinity;
pub mod aggregate;
pub mod board;
pub mod book;
pub mod engine;
pub mod event;
pub mod fixed;
pub mod instrument;
pub mod journal;
pub mod latency;
pub mod matching;
pub mod order;
/// Which producer owns each agent id.
pub mod ownership;
pub mod pipeline;
pub mod portfolio;
pub mod release;
pub mod ring;
pub mod risk;
pub mod router;
pub mod snapshot;
pub mod strategy;
mod sync;
pub mod wait;
