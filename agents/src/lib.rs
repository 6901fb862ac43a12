//! Sapphire's agents: signal producers that live outside the core's hot path — four
//! rule-based agents, three LLM-backed agents, the LLM client they share, and the arbitrator.
//!
//! Agents run as tokio tasks. Each samples the market context ([`ContextSource`]: top of
//! book, its own position and PnL) at its cadence into a bounded window of samples, derives
//! returns and volatility from it, and publishes [`sapphire_core::event::Signal`]s into a
//! [`SignalSink`] (the core's inbound ring) with a time-to-live. The core uses the freshest
//! valid signal of each agent and never waits for one.
//!
//! # Replays are deterministic and free
//! Signals are inbound events: the engine's input journal records every one. A replay
//! re-reads the recorded signals; it never runs an agent or calls a model, so it costs
//! nothing and reproduces the run exactly. The audit transcript ([`transcript`]) is for
//! people: every prompt, answer, model, latency, token count and cost, as JSON lines.
//!
//! # LLM answers are advisory and checked
//! LLM agents ask for structured output (`response_format: json_schema`) and parse it
//! strictly: an answer that is not JSON, breaks the schema, is out of range or arrives after
//! the agent's deadline is refused, counted per reason ([`metrics::Refusal`]) and never
//! traded. Timeouts, retries with jittered backoff, a circuit breaker and a token bucket per
//! provider, a response cache (`AGENT_CACHE_TTL_SECONDS`) and token/cost accounting per agent
//! live in [`llm`].
//!
//! # Not here yet
//! Remote agents over QUIC (the `sapphire agents` process talking to a separate core) are
//! not built: agents run in the engine's process only.
//!
//! # Layout
//! - [`context`]: the traits agents read and write through, the clock, the sample window.
//! - [`rules`]: momentum, mean reversion, order-flow imbalance, volatility breakout.
//! - [`llm`]: the OpenAI-compatible client (xAI Grok, Vertex AI Gemini, local servers), its
//!   credentials, guards and answer schemas.
//! - [`news`]: headlines for the sentiment agent (file or HTTP JSON).
//! - [`arbitrator`]: performance-weighted conflict resolution.
//! - [`transcript`]: the audit transcript writer.
//! - [`metrics`]: per-agent counters (atomics) for `/metrics`.
//! - [`config`]: [`AgentsConfig`], the serde configuration.
//! - [`runtime`]: [`AgentsRuntime`] and [`run_agents`].
//!
//! # Features
//! None.
#![forbid(unsafe_code)]

/// Performance-weighted conflict resolution.
pub mod arbitrator;
/// The serde configuration.
pub mod config;
/// Market context in, signals out, the clock, the sample window.
pub mod context;
/// The OpenAI-compatible LLM client.
pub mod llm;
/// Per-agent counters.
pub mod metrics;
/// Headlines for the sentiment agent.
pub mod news;
/// The rule-based agents.
pub mod rules;
/// The agent runtime.
pub mod runtime;
/// The audit transcript.
pub mod transcript;

pub use config::{AgentConfig, AgentKind, AgentsConfig};
pub use context::{AgentState, Clock, ContextSource, SignalSink, Top};
pub use metrics::{AgentCounters, AgentsMetrics};
pub use runtime::{run_agents, AgentsError, AgentsRuntime, InstrumentRef};
