//! Per-agent counters, written by the agents' tasks and read from any thread (`/metrics`),
//! and the LLM providers' request counts and latency histograms, kept as `prometheus-client`
//! metrics. [`AgentsMetrics::encode`] writes them all through the library's encoder.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use sapphire_core::event::AgentId;
use sapphire_core::instrument::InstrumentId;
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
    /// Signals published with a non-zero strength (a long or short view, not flat).
    pub directional: AtomicU64,
    /// Why the agent last proposed what it did, and for which instrument: the rule's reason
    /// of its newest signal, and of its newest directional one (the run's summary shows them).
    pub reasons: std::sync::Mutex<AgentReasons>,
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
            directional: AtomicU64::new(0),
            reasons: std::sync::Mutex::new(AgentReasons::default()),
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

    /// Records why a rule proposed the published signal of `strength_bps` for `instrument`.
    pub fn record_reason(&self, instrument: InstrumentId, strength_bps: i32, reason: &'static str) {
        let mut r = self.reasons.lock().unwrap_or_else(|p| p.into_inner());
        r.last = Some((reason, instrument));
        if strength_bps != 0 {
            r.last_trigger = Some((reason, instrument));
        }
    }

    /// The reasons last recorded.
    pub fn reasons(&self) -> AgentReasons {
        *self.reasons.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One line for a summary: signals, how many were long or short, and why the agent last
    /// acted (or, before it ever did, what it last said): `momentum-2: 41 signals, 23
    /// long/short; last trigger: momentum: price rising (ETHUSDT)`.
    pub fn summary_line(&self, name: &str, symbol_of: &dyn Fn(InstrumentId) -> String) -> String {
        let (n, d) = (self.signals.load(Relaxed), self.directional.load(Relaxed));
        let r = self.reasons();
        let why = match (r.last_trigger, r.last) {
            (Some((reason, i)), _) => format!("last trigger: {reason} ({})", symbol_of(i)),
            (None, Some((reason, i))) => format!("no trigger yet, last said: {reason} ({})", symbol_of(i)),
            (None, None) if n > 0 => "no rule reason recorded (LLM or remote signals)".to_string(),
            (None, None) => "no signal yet (warming up, or no market)".to_string(),
        };
        format!("{name}: {n} signals, {d} long/short; {why}")
    }
}

/// Why an agent's newest signals said what they said.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentReasons {
    /// The newest signal's reason and instrument (flat ones too).
    pub last: Option<(&'static str, InstrumentId)>,
    /// The newest directional signal's reason and instrument: what last made it act.
    pub last_trigger: Option<(&'static str, InstrumentId)>,
}

/// `provider` and `outcome` labels.
pub type RequestLabels = [(&'static str, String); 2];
/// The `provider` label.
pub type ProviderLabel = [(&'static str, String); 1];

/// Per-provider LLM metrics: `llm_requests_total{provider,outcome}` (one per question asked:
/// `ok`, `cached`, or the [`Refusal`] label) and `llm_latency_seconds{provider}` (questions that
/// reached the provider, answered or not).
#[derive(Debug)]
pub struct LlmMetrics {
    /// Questions by provider and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from asking to the answer or refusal, for questions that reached the provider.
    pub latency: Family<ProviderLabel, Histogram, fn() -> Histogram>,
}

fn latency_histogram() -> Histogram {
    // 25 ms .. 51 s: local servers answer in tens of ms, hosted models in seconds.
    Histogram::new(exponential_buckets(0.025, 2.0, 12))
}

impl Default for LlmMetrics {
    fn default() -> Self {
        Self { requests: Family::default(), latency: Family::new_with_constructor(latency_histogram) }
    }
}

impl LlmMetrics {
    /// Counts one question of `provider` with its `outcome`; `latency` when it reached the
    /// provider.
    pub fn record(&self, provider: &str, outcome: &str, latency: Option<std::time::Duration>) {
        self.requests.get_or_create(&[("provider", provider.to_owned()), ("outcome", outcome.to_owned())]).inc();
        if let Some(l) = latency {
            self.latency.get_or_create(&[("provider", provider.to_owned())]).observe(l.as_secs_f64());
        }
    }

    /// Questions of `provider` with `outcome` so far.
    pub fn requests(&self, provider: &str, outcome: &str) -> u64 {
        self.requests.get(&[("provider", provider.to_owned()), ("outcome", outcome.to_owned())]).map_or(0, |c| c.get())
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
    /// LLM requests and latency per provider, shared with the clients.
    pub llm: Arc<LlmMetrics>,
}

impl AgentsMetrics {
    /// The counters of `agent`, if configured.
    pub fn agent(&self, agent: AgentId) -> Option<&Arc<AgentCounters>> {
        self.agents.iter().find(|c| c.agent == agent)
    }

    /// Writes every metric through the `prometheus-client` encoder of a scrape.
    pub fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let per_agent = |c: &AgentCounters| [("agent_id", c.agent.0.to_string()), ("kind", c.kind.to_owned())];
        // Counter family names go without `_total`: the library adds it to each sample.
        let counters = |enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, f: &dyn Fn(&AgentCounters) -> u64| {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for c in &self.agents {
                m.encode_family(&per_agent(c))?.encode_counter::<NoLabelSet, _, u64>(&f(c), None)?;
            }
            Ok::<_, std::fmt::Error>(())
        };
        let gauges = |enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, f: &dyn Fn(&AgentCounters) -> f64| {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for c in &self.agents {
                m.encode_family(&per_agent(c))?.encode_gauge(&f(c))?;
            }
            Ok::<_, std::fmt::Error>(())
        };
        let load = |a: &AtomicU64| a.load(Relaxed);
        counters(enc, "agent_signals", "Signals published.", &|c| load(&c.signals))?;
        counters(enc, "agent_directional_signals", "Signals published with a long or short view (not flat).", &|c| load(&c.directional))?;
        {
            let mut m = enc.encode_descriptor(
                "agent_signal_rejected",
                "Signals not traded, by reason (LLM answers refused, a full ring).",
                None,
                MetricType::Counter,
            )?;
            for c in &self.agents {
                let [id, kind] = per_agent(c);
                let reasons = Refusal::ALL.iter().map(|r| (r.label(), c.refused(*r))).chain([("sink_full", load(&c.sink_full))]);
                for (reason, n) in reasons {
                    let labels = [id.clone(), kind.clone(), ("reason", reason.to_owned())];
                    m.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&n, None)?;
                }
            }
        }
        counters(enc, "agent_budget_exhausted", "Ticks an agent stayed flat because its losses used up its margin budget.", &|c| {
            load(&c.budget_exhausted)
        })?;
        counters(enc, "agent_llm_calls", "LLM HTTP requests sent (attempts, retries included).", &|c| load(&c.llm_calls))?;
        counters(enc, "agent_llm_cache_hits", "LLM answers served from cache.", &|c| load(&c.cache_hits))?;
        counters(enc, "agent_llm_prompt_tokens", "Prompt tokens billed.", &|c| load(&c.prompt_tokens))?;
        counters(enc, "agent_llm_completion_tokens", "Completion tokens billed.", &|c| load(&c.completion_tokens))?;
        {
            let mut m = enc.encode_descriptor("llm_cost_usd", "LLM cost per agent, USD.", None, MetricType::Counter)?;
            for c in &self.agents {
                let usd = c.cost_raw.load(Relaxed) as f64 / 1e9;
                m.encode_family(&per_agent(c))?.encode_counter::<NoLabelSet, _, u64>(&usd, None)?;
            }
        }
        gauges(enc, "agent_weight_ratio", "Weight set by the strategy agent.", &|c| f64::from(c.weight_bps.load(Relaxed)) / 10_000.0)?;
        gauges(enc, "agent_skill_weight_ratio", "Arbitrator weight from realized performance.", &|c| {
            f64::from(c.skill_weight_bps.load(Relaxed)) / 10_000.0
        })?;
        gauges(enc, "agent_brier_score", "Running Brier score of the agent's signals (0.25 = coin flip).", &|c| {
            load(&c.brier_ppm) as f64 / 1e6
        })?;
        gauges(enc, "agent_llm_breaker_state", "Provider circuit breaker: 0 closed, 1 open, 2 half-open.", &|c| {
            f64::from(c.breaker.load(Relaxed))
        })?;
        let r = &self.llm.requests;
        r.encode(enc.encode_descriptor(
            "llm_requests",
            "LLM questions by provider and outcome (ok, cached, or why refused).",
            None,
            r.metric_type(),
        )?)?;
        let l = &self.llm.latency;
        l.encode(enc.encode_descriptor(
            "llm_latency_seconds",
            "Time from asking a provider to its answer or refusal.",
            None,
            l.metric_type(),
        )?)?;
        for (name, help, v) in [
            ("agent_transcript_dropped", "Transcript records dropped (the writer's channel was full).", load(&self.transcript_dropped)),
            ("agent_transcript_written", "Transcript records written.", load(&self.transcript_written)),
            ("agent_transcript_errors", "Transcript write errors.", load(&self.transcript_errors)),
            ("agent_arbitrations", "Conflicts the arbitrator resolved.", load(&self.arbitrations)),
            (
                "agent_arbitrator_dropped",
                "Signals the arbitrator could not observe (its channel was full).",
                load(&self.arbitrator_dropped),
            ),
        ] {
            enc.encode_descriptor(name, help, None, MetricType::Counter)?.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
        Ok(())
    }

    /// The Prometheus text exposition of [`encode`](Self::encode), for tests and tools.
    pub fn render_prometheus(self: &Arc<Self>) -> String {
        #[derive(Debug)]
        struct One(Arc<AgentsMetrics>);
        impl prometheus_client::collector::Collector for One {
            fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
                self.0.encode(&mut enc)
            }
        }
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(One(Arc::clone(self))));
        let mut out = String::new();
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}
