//! Sapphire's gateway: where the world meets the core.
//!
//! Market sources publish events into the core's inbound ring; venues take its orders.
//! Today it has the synthetic market that `sapphire run` trades on by default, exchange
//! feeds (Binance, Bybit) and the HTTP API (probes, metrics, dashboard snapshot, control);
//! real venues and the dashboard page land here with their issues.
//!
//! # Layout
//! - [`api`]: the HTTP API (axum): `/healthz`, `/readyz`, `/metrics`, `/dashboard`, control.
//! - [`json`]: a zero-allocation JSON scanner for exchange frames.
//! - [`feed`]: feed errors, counters and symbol tables shared by the venues.
//! - [`binance`]: Binance spot and USD-M market data and book sync.
//! - [`bybit`]: Bybit v5 public market data and book sync.
//! - [`connection`]: feed clients over WebSocket: subscribe, reconnect, resync, publish into the ring.
//! - [`local_exchange`]: a local Binance-speaking exchange replaying recordings, with fault injection.
//! - [`quic`]: remote agents over QUIC (quinn): the core's ingress and the agent's link.
//! - [`secret`]: the bearer-token type, compared exactly in constant time.
//! - [`synthetic`]: the seeded synthetic market.
//! - [`venue`]: order routing to Binance and Bybit: signing, credentials, execution clients, the order gateway.
//!
//! # Features
//! None.
#![forbid(unsafe_code)]

/// The HTTP API: probes, Prometheus metrics, the dashboard snapshot, operator control.
pub mod api;
/// Binance spot and USD-M futures market data.
pub mod binance;
/// Bybit v5 public market data.
pub mod bybit;
/// Feed clients: WebSocket connections with backoff, staleness and snapshot resyncs.
pub mod connection;
/// What every feed adapter shares: errors, counters, symbol tables.
pub mod feed;
/// A zero-allocation JSON scanner for exchange frames.
pub mod json;
/// A local exchange speaking Binance's wire format, replaying recordings.
pub mod local_exchange;
/// Remote agents over QUIC: signals in as validated rkyv frames, market snapshots out as datagrams.
pub mod quic;
/// Bearer tokens (API control, remote agents): exact, constant-time comparison, never shown.
pub mod secret;
/// The seeded synthetic market.
pub mod synthetic;
/// Order routing to real venues: signing, credentials, Binance/Bybit execution, the order gateway.
pub mod venue;
