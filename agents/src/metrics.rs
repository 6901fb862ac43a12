//! Per-agent counters, written by the agents' tasks and read from any thread (`/metrics`).

use sapphire_core::event::AgentId;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

/// Why an LLM answer (or the call for it) was refused; never traded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Connection failed or broke.
    Transport,
    /// No answer within the per-attempt timeout.
    Timeout,
    /// HTTP 429 from the provider.
    RateLimited,
    /// Any other non-success HTTP status (5xx are retried, other 4xx are not).
    HttpStatus,
    /// The local token bucket for the provider was empty; the call was not made.
    LocalRateLimit,
    /// The provider's circuit breaker is open; the call was not made.
    BreakerOpen,
    /// No credentials (token fetch failed) or the provider refused them (HTTP 401/403).
    Auth,
    /// The response was not a chat completion, or its content was not JSON.
    InvalidJson,
    /// The content was JSON but not of the required shape (missing/unknown/mistyped field).
    SchemaViolation,
    /// A field was outside its allowed range (strength, confidence, ttl, unknown symbol...).
    OutOfRange,
    /// The answer arrived after the agent's deadline for it.
    Late,
}

impl Refusal {
    /// Every reason, in index order.
    pub const ALL: [Refusal; 11] = [
        Refusal::Transport,
        Refusal::Timeout,
        Refusal::RateLimited,
        Refusal::HttpStatus,
        Refusal::LocalRateLimit,
        Refusal::BreakerOpen,
        Refusal::Auth,
        Refusal::InvalidJson,
        Refusal::SchemaViolation,
        Refusal::OutOfRange,
        Refusal::Late,
    ];
    /// Number of reasons.
    pub const COUNT: usize = Self::ALL.len();

    /// Index into per-reason tables.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The metric label (`reason="..."`).
    pub const fn label(self) -> &'static str {
        match self {
            Refusal::Transport => "transport",
            Refusal::Timeout => "timeout",
            Refusal::RateLimited => "rate_limited",
            Refusal::HttpStatus => "http_status",
            Refusal::LocalRateLimit => "local_rate_limit",
            Refusal::BreakerOpen => "breaker_open",
            Refusal::Auth => "auth",
            Refusal::InvalidJson => "invalid_json",
            Refusal::SchemaViolation => "schema_violation",
            Refusal::OutOfRange => "out_of_range",
            Refusal::Late => "late",
        }
    }
}

/// A circuit breaker's state, as exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BreakerState {
    /// Calls go through.
    Closed = 0,
    /// Calls are refused until the cool-down ends.
    Open = 1,
    /// One probe call is allowed; its outcome closes or reopens the breaker.
    HalfOpen = 2,
}

impl BreakerState {
    /// From the stored byte.
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// The metric value / label.
    pub const fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// One agent's counters. All `Relaxed`: they are statistics, not synchronization.
#[derive(Debug)]
pub struct AgentCounters {
    /// The agent.
    pub agent: AgentId,
    /// Agent kind name (`momentum`, `sentiment`...).
    pub kind: &'static str,
    /// Signals published into the sink.
    pub signals: AtomicU64,
    /// Signals the sink refused (ring full).
    pub sink_full: AtomicU64,
    /// Samples skipped: no market, crossed or out-of-sync book.
    pub skipped_samples: AtomicU64,
    /// Ticks the agent stayed flat because its PnL had used up its margin budget.
    pub budget_exhausted: AtomicU64,
    /// LLM requests sent (attempts, including retries).
    pub llm_calls: AtomicU64,
    /// LLM answers refused, by [`Refusal::index`].
    pub refused: [AtomicU64; Refusal::COUNT],
    /// Answers served from the response cache.
    pub cache_hits: AtomicU64,
    /// Prompt tokens billed.
    pub prompt_tokens: AtomicU64,
    /// Completion tokens billed.
    pub completion_tokens: AtomicU64,
    /// Cost so far, `Money` raw (10⁻⁹ USD).
    pub cost_raw: AtomicI64,
    /// The agent's weight as set by the strategy agent, bps (10_000 = 1.0).
    pub weight_bps: AtomicI32,
    /// Breaker state of the provider the agent last called ([`BreakerState`] as u8).
    pub breaker: AtomicU8,
    /// The arbitrator's running Brier score of the agent's signals, ×10⁶ (250_000 = a coin).
    pub brier_ppm: AtomicU64,
    /// The arbitrator's performance weight for the agent, bps.
    pub skill_weight_bps: AtomicI32,
}

impl AgentCounters {
    /// Zeroed counters for `agent`.
    pub fn new(agent: AgentId, kind: &'static str) -> Self {
        Self {
            agent,
            kind,
            signals: AtomicU64::new(0),
            sink_full: AtomicU64::new(0),
            skipped_samples: AtomicU64::new(0),
            budget_exhausted: AtomicU64::new(0),
            llm_calls: AtomicU64::new(0),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
            cache_hits: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            cost_raw: AtomicI64::new(0),
            weight_bps: AtomicI32::new(10_000),
            breaker: AtomicU8::new(BreakerState::Closed as u8),
            brier_ppm: AtomicU64::new(250_000),
            skill_weight_bps: AtomicI32::new(10_000),
        }
    }

    /// Counts one refusal.
    pub fn refuse(&self, why: Refusal) {
        self.refused[why.index()].fetch_add(1, Relaxed);
    }

    /// Refusals for one reason.
    pub fn refused(&self, why: Refusal) -> u64 {
        self.refused[why.index()].load(Relaxed)
    }

    /// All refusals.
    pub fn refused_total(&self) -> u64 {
        self.refused.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// The breaker state last seen.
    pub fn breaker_state(&self) -> BreakerState {
        BreakerState::from_u8(self.breaker.load(Relaxed))
    }
}

/// Every agent's counters plus runtime-wide ones.
#[derive(Debug, Default)]
pub struct AgentsMetrics {
    /// One entry per configured agent (including the arbitrator), in configuration order.
    pub agents: Vec<Arc<AgentCounters>>,
    /// Transcript records dropped because the writer's channel was full.
    pub transcript_dropped: AtomicU64,
    /// Transcript records written.
    pub transcript_written: AtomicU64,
    /// Transcript write errors (disk full, permissions).
    pub transcript_errors: AtomicU64,
    /// Conflicts the arbitrator resolved.
    pub arbitrations: AtomicU64,
    /// Signals the arbitrator could not observe (its channel was full).
    pub arbitrator_dropped: AtomicU64,
}

impl AgentsMetrics {
    /// The counters of `agent`, if configured.
    pub fn agent(&self, agent: AgentId) -> Option<&Arc<AgentCounters>> {
        self.agents.iter().find(|c| c.agent == agent)
    }

    /// Prometheus text exposition of every counter.
    pub fn render_prometheus(&self) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(4096);
        let mut family = |name: &str, help: &str, kind: &str, f: &dyn Fn(&AgentCounters) -> String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for c in &self.agents {
                let _ = writeln!(out, "{name}{{agent_id=\"{}\",kind=\"{}\"}} {}", c.agent.0, c.kind, f(c));
            }
        };
        family("agent_signals_total", "Signals published.", "counter", &|c| c.signals.load(Relaxed).to_string());
        family("agent_sink_full_total", "Signals refused by a full ring.", "counter", &|c| c.sink_full.load(Relaxed).to_string());
        family("agent_llm_calls_total", "LLM requests sent.", "counter", &|c| c.llm_calls.load(Relaxed).to_string());
        family("agent_llm_cache_hits_total", "LLM answers served from cache.", "counter", &|c| c.cache_hits.load(Relaxed).to_string());
        family("agent_llm_prompt_tokens_total", "Prompt tokens billed.", "counter", &|c| c.prompt_tokens.load(Relaxed).to_string());
        family("agent_llm_completion_tokens_total", "Completion tokens billed.", "counter", &|c| {
            c.completion_tokens.load(Relaxed).to_string()
        });
        family("agent_llm_cost_usd_total", "LLM cost, USD.", "counter", &|c| {
            sapphire_core::fixed::Money::from_raw(c.cost_raw.load(Relaxed)).to_string()
        });
        family("agent_weight_ratio", "Weight set by the strategy agent.", "gauge", &|c| {
            format!("{}", f64::from(c.weight_bps.load(Relaxed)) / 10_000.0)
        });
        family("agent_skill_weight_ratio", "Arbitrator weight from realized performance.", "gauge", &|c| {
            format!("{}", f64::from(c.skill_weight_bps.load(Relaxed)) / 10_000.0)
        });
        family("agent_brier_score", "Running Brier score of the agent's signals (0.25 = coin flip).", "gauge", &|c| {
            format!("{}", c.brier_ppm.load(Relaxed) as f64 / 1e6)
        });
        family("agent_llm_breaker_state", "Provider circuit breaker: 0 closed, 1 open, 2 half-open.", "gauge", &|c| {
            c.breaker.load(Relaxed).to_string()
        });
        let _ = writeln!(out, "# HELP agent_llm_refused_total LLM answers refused.\n# TYPE agent_llm_refused_total counter");
        for c in &self.agents {
            for r in Refusal::ALL {
                let _ = writeln!(
                    out,
                    "agent_llm_refused_total{{agent_id=\"{}\",kind=\"{}\",reason=\"{}\"}} {}",
                    c.agent.0,
                    c.kind,
                    r.label(),
                    c.refused(r)
                );
            }
        }
        let _ = writeln!(out, "# TYPE agent_transcript_dropped_total counter");
        let _ = writeln!(out, "agent_transcript_dropped_total {}", self.transcript_dropped.load(Relaxed));
        let _ = writeln!(out, "# TYPE agent_arbitrations_total counter");
        let _ = writeln!(out, "agent_arbitrations_total {}", self.arbitrations.load(Relaxed));
        out
    }
}
