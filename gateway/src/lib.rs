//! Sapphire's gateway: where the world meets the core.
//!
//! Market sources publish events into the core's inbound ring; venues take its orders.
//! Today it has the synthetic market that `sapphire run` trades on by default; exchange
//! feeds (Binance, Bybit), real venues, the HTTP API and the dashboard land here with their
//! issues.
//!
//! # Layout
//! - [`synthetic`]: the seeded synthetic market.
//!
//! # Features
//! None.
#![forbid(unsafe_code)]

/// The seeded synthetic market.
pub mod synthetic;
