//! One call to a provider, to see that it is set up: `sapphire agents --check`.
//!
//! The call is a real chat completion through the same client the agents use (credentials,
//! URL, structured output, strict parsing), asking for a [`TradeAnswer`]: no retry, no cache,
//! no rate limit. The outcome says how long it took, which model was asked and whether the
//! answer parsed; a failure says why (the refusal reason and its detail, never a key).

use super::answers::TradeAnswer;
use super::{ChatRequest, LlmClient, ProviderConfig, ProviderKind};
use crate::context::Clock;
use crate::metrics::{AgentCounters, AgentsMetrics, Refusal};
use crate::transcript::Transcript;
use sapphire_core::event::AgentId;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SYSTEM: &str = "You are being checked for connectivity by a trading system. Answer only with the JSON object the \
                      schema asks for.";
const USER: &str = "Connectivity check: no market data. Answer with a flat signal: strength_bps 0, confidence_bps 0, \
                    ttl_seconds 60, reasoning \"check\".";

/// What one provider's check found.
#[derive(Debug)]
pub struct CheckOutcome {
    /// The provider's name.
    pub provider: String,
    /// `xai`, `vertex` or `openai_compatible`.
    pub kind: &'static str,
    /// The model asked.
    pub model: String,
    /// The API base (no secret in it).
    pub base_url: String,
    /// Time from the request to the answer (or the failure).
    pub latency: Duration,
    /// The provider answered with a completion whose content parsed and validated.
    pub parsed: bool,
    /// `None` when it parsed; else what went wrong.
    pub problem: Option<String>,
}

impl CheckOutcome {
    /// One line for people: `grok (xai, model grok-3-mini, https://api.x.ai/v1): ok in 812 ms, answer parsed`.
    pub fn line(&self) -> String {
        let head = format!("{} ({}, model {}, {})", self.provider, self.kind, self.model, self.base_url);
        match &self.problem {
            None => format!("{head}: ok in {} ms, answer parsed", self.latency.as_millis()),
            Some(p) => format!("{head}: FAILED in {} ms, answer parsed: {}; {p}", self.latency.as_millis(), yes(self.parsed)),
        }
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The kind's name, as written in the configuration.
pub fn kind_name(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Xai => "xai",
        ProviderKind::Vertex => "vertex",
        ProviderKind::OpenaiCompatible => "openai_compatible",
    }
}

/// Calls `cfg`'s provider once.
pub async fn check(cfg: &ProviderConfig, clock: Clock) -> CheckOutcome {
    let mut once = cfg.clone();
    once.max_retries = 0;
    once.requests_per_minute = 0;
    let mut out = CheckOutcome {
        provider: cfg.name.clone(),
        kind: kind_name(cfg.kind),
        model: cfg.effective_model(),
        base_url: cfg.effective_base_url().unwrap_or_else(|_| "(no URL)".into()),
        latency: Duration::ZERO,
        parsed: false,
        problem: None,
    };
    let client = match LlmClient::new(&once, Duration::ZERO, Transcript::disabled(Arc::new(AgentsMetrics::default())), clock) {
        Ok(c) => c,
        Err(e) => {
            out.problem = Some(format!("not configured: {e}"));
            return out;
        }
    };
    let counters = AgentCounters::new(AgentId(0), "check");
    let req = ChatRequest { system: SYSTEM, user: USER, deadline: Duration::from_millis(cfg.timeout_ms.max(1)) };
    let start = Instant::now();
    match client.ask::<TradeAnswer>(&counters, &req).await {
        Ok(answered) => {
            out.latency = answered.latency;
            out.parsed = true;
        }
        Err(refused) => {
            out.latency = start.elapsed();
            let answered = matches!(refused.reason, Refusal::InvalidJson | Refusal::SchemaViolation | Refusal::OutOfRange | Refusal::Late);
            let what = if answered { "answered, but the answer was refused" } else { "no usable answer" };
            out.problem = Some(format!("{what}: {} ({})", refused.reason.label(), refused.detail));
        }
    }
    out
}
