//! Sapphire's agents: the runtime for signal producers that live outside the core's hot
//! path (rule-based agents, LLM-backed agents, the arbitrator).
//!
//! Nothing runs here yet. The in-core strategies (momentum, order-book imbalance) live in
//! `sapphire-core`; an agent here will publish `sapphire_core::event::Signal`s into the
//! inbound ring with a time-to-live, and the core uses the freshest valid one.
//!
//! # Layout
//! (empty until the agents issue lands)
//!
//! # Features
//! None.
#![forbid(unsafe_code)]
