//! The agents' configuration: a serde struct the binary embeds in its TOML file (the lead
//! puts it under `[agents]`), with defaults for every key and the platform's environment
//! names (`MAX_SYMBOLS_PER_AGENT`, `AGENT_CACHE_TTL_SECONDS`, `ENABLE_VERTEX_AI`,
//! `XAI_API_KEY`).
//!
//! ```toml
//! max_symbols_per_agent = 50          # MAX_SYMBOLS_PER_AGENT
//! cache_ttl_seconds = 60              # AGENT_CACHE_TTL_SECONDS (LLM response cache)
//! budget_usd = "1000"                 # default margin budget per agent
//! transcript_path = "data/agents-transcript.jsonl"
//! default_provider = "grok"
//!
//! [[providers]]                       # see ProviderConfig for every key
//! name = "grok"
//! kind = "xai"                        # xai | vertex | openai_compatible
//! input_usd_per_million = "0.30"
//! output_usd_per_million = "0.50"
//!
//! [[agent]]                           # a roster given here replaces the default one
//! id = 2
//! kind = "momentum"
//! cadence_ms = 1000
//! momentum = { lookback = 20, threshold_bps = 2.0, full_scale_bps = 20.0 }
//!
//! [arbitrator]
//! id = 9
//! horizon_ms = 30000
//! ```

use crate::llm::{ProviderConfig, ProviderKind};
use crate::rules::{MeanReversion, Momentum, OrderFlowImbalance, VolatilityBreakout};
use sapphire_core::aggregate::{FIRST_EXTERNAL_AGENT, MAX_AGENTS};
use sapphire_core::fixed::Money;
use serde::Deserialize;
use std::path::PathBuf;

/// What an agent does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    /// Rule: long after a rise, short after a fall.
    Momentum,
    /// Rule: fades moves away from the recent mean.
    MeanReversion,
    /// Rule: follows top-of-book pressure.
    Imbalance,
    /// Rule: trades volatility bursts in their direction.
    Breakout,
    /// LLM: reads headlines, emits per-symbol sentiment signals.
    Sentiment,
    /// LLM: classifies the regime and sets the rule agents' weights (emits no signals).
    Strategy,
    /// LLM: asks for a trade signal with its reasoning at a fixed cadence (5 s default).
    FastTrader,
}

impl AgentKind {
    /// The kind's name (metrics label).
    pub const fn label(self) -> &'static str {
        match self {
            AgentKind::Momentum => "momentum",
            AgentKind::MeanReversion => "mean_reversion",
            AgentKind::Imbalance => "imbalance",
            AgentKind::Breakout => "breakout",
            AgentKind::Sentiment => "sentiment",
            AgentKind::Strategy => "strategy",
            AgentKind::FastTrader => "fast_trader",
        }
    }

    /// True for the agents that call an LLM.
    pub const fn uses_llm(self) -> bool {
        matches!(self, AgentKind::Sentiment | AgentKind::Strategy | AgentKind::FastTrader)
    }

    /// Default cadence, ms.
    pub const fn default_cadence_ms(self) -> u64 {
        match self {
            // Fast enough that every rule is warm and speaking within seconds of a start.
            AgentKind::Momentum | AgentKind::MeanReversion | AgentKind::Breakout => 200,
            AgentKind::Imbalance => 250,
            AgentKind::FastTrader => 5_000,
            AgentKind::Sentiment | AgentKind::Strategy => 60_000,
        }
    }
}

/// Where the sentiment agent reads headlines.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NewsConfig {
    /// A local file: a JSON array, an object with `items`/`articles`/`headlines`, or JSON
    /// lines; each entry a string or an object with `title` (or `headline`).
    pub file: Option<PathBuf>,
    /// An HTTP(S) URL answering the same JSON shapes.
    pub url: String,
    /// Most recent headlines sent to the model (the last ones of the list); 0 = 20.
    pub max_headlines: usize,
}

/// One agent (`[[agent]]`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Agent id, `FIRST_EXTERNAL_AGENT` (2) ..< `MAX_AGENTS` (16), unique.
    pub id: u16,
    /// What it does.
    pub kind: AgentKind,
    /// Off = configured but not started.
    pub enabled: bool,
    /// Symbols it trades; empty = the first `max_symbols_per_agent` of the run's instruments.
    pub symbols: Vec<String>,
    /// How often it samples and decides, ms; 0 = the kind's default.
    pub cadence_ms: u64,
    /// Time to live of its signals, ms; 0 = three cadences (LLM answers may ask for less).
    pub ttl_ms: u64,
    /// Margin budget, USD (decimal string); empty = `AgentsConfig::budget_usd`. The agent
    /// goes flat once its PnL has lost the whole budget.
    pub budget_usd: String,
    /// LLM provider name; empty = `AgentsConfig::default_provider`.
    pub provider: String,
    /// Samples kept per instrument (returns and volatility come from them).
    pub window: usize,
    /// Momentum parameters.
    pub momentum: Momentum,
    /// Mean-reversion parameters.
    pub mean_reversion: MeanReversion,
    /// Imbalance parameters.
    pub imbalance: OrderFlowImbalance,
    /// Breakout parameters.
    pub breakout: VolatilityBreakout,
    /// Sentiment: the news source.
    pub news: NewsConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            id: 0,
            kind: AgentKind::Momentum,
            enabled: true,
            symbols: Vec::new(),
            cadence_ms: 0,
            ttl_ms: 0,
            budget_usd: String::new(),
            provider: String::new(),
            window: 256,
            momentum: Momentum::default(),
            mean_reversion: MeanReversion::default(),
            imbalance: OrderFlowImbalance::default(),
            breakout: VolatilityBreakout::default(),
            news: NewsConfig::default(),
        }
    }
}

impl AgentConfig {
    /// An agent of `kind` with id `id`, defaults otherwise.
    pub fn new(id: u16, kind: AgentKind) -> Self {
        Self { id, kind, ..Self::default() }
    }

    /// The name dashboards and summaries show: kind and id, `momentum-2` (the in-core
    /// strategies are `core-momentum` and `core-imbalance`).
    pub fn display_name(&self) -> String {
        format!("{}-{}", self.kind.label(), self.id)
    }

    /// The cadence after defaults, ms.
    pub fn effective_cadence_ms(&self) -> u64 {
        if self.cadence_ms == 0 {
            self.kind.default_cadence_ms()
        } else {
            self.cadence_ms
        }
    }

    /// The signal TTL after defaults, ns.
    pub fn effective_ttl_ns(&self) -> u64 {
        let ms = if self.ttl_ms == 0 { 3 * self.effective_cadence_ms() } else { self.ttl_ms };
        ms.saturating_mul(1_000_000)
    }
}

/// The arbitrator (`[arbitrator]`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArbitratorConfig {
    /// Off = no arbitration and no performance weights.
    pub enabled: bool,
    /// Its agent id (its verdicts are signals from this id).
    pub id: u16,
    /// How often it scores and resolves, ms.
    pub cadence_ms: u64,
    /// A signal is scored on the return this long after it, ms.
    pub horizon_ms: u64,
    /// Online learning rate of the per-agent Brier score (0 < rate ≤ 1).
    pub learning_rate: f64,
    /// A conflict: live signals on both sides at least this strong, bps.
    pub conflict_bps: i32,
    /// Ask the LLM when both sides are at least this strong, bps (needs a provider).
    pub llm_conflict_bps: i32,
    /// Provider for LLM arbitration; empty = `default_provider`; `"none"` = never ask.
    pub provider: String,
    /// Verdict time to live, ms.
    pub ttl_ms: u64,
}

impl Default for ArbitratorConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            id: 9,
            cadence_ms: 1_000,
            horizon_ms: 30_000,
            learning_rate: 0.05,
            conflict_bps: 2_000,
            llm_conflict_bps: 6_000,
            provider: String::new(),
            ttl_ms: 5_000,
        }
    }
}

/// Everything the agents runtime needs.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsConfig {
    /// Off = no agent runs.
    pub enabled: bool,
    /// Most symbols one agent trades (`MAX_SYMBOLS_PER_AGENT`).
    pub max_symbols_per_agent: usize,
    /// LLM response cache TTL, seconds (`AGENT_CACHE_TTL_SECONDS`; 0 = no cache).
    pub cache_ttl_seconds: u64,
    /// Default margin budget per agent, USD (decimal string).
    pub budget_usd: String,
    /// The audit transcript (JSON lines); unset = none.
    pub transcript_path: Option<PathBuf>,
    /// Records that may wait for the transcript writer before new ones are dropped.
    pub transcript_capacity: usize,
    /// Provider LLM agents use unless they name one; empty = LLM agents do not start.
    pub default_provider: String,
    /// LLM providers.
    pub providers: Vec<ProviderConfig>,
    /// The agents; the default roster is momentum 2, mean_reversion 3, imbalance 4,
    /// breakout 5, sentiment 6, strategy 7, fast_trader 8.
    pub agent: Vec<AgentConfig>,
    /// The arbitrator (id 9 by default).
    pub arbitrator: ArbitratorConfig,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        use AgentKind::*;
        Self {
            enabled: true,
            max_symbols_per_agent: 50,
            cache_ttl_seconds: 60,
            budget_usd: "1000".into(),
            transcript_path: None,
            transcript_capacity: 4_096,
            default_provider: String::new(),
            providers: Vec::new(),
            agent: [Momentum, MeanReversion, Imbalance, Breakout, Sentiment, Strategy, FastTrader]
                .iter()
                .enumerate()
                .map(|(i, k)| AgentConfig::new(FIRST_EXTERNAL_AGENT + i as u16, *k))
                .collect(),
            arbitrator: ArbitratorConfig::default(),
        }
    }
}

/// A configuration error naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration key `{key}`: {what}")]
pub struct ConfigError {
    /// The key (with its environment variable when it has one).
    pub key: String,
    /// What is wrong.
    pub what: String,
}

fn bad(key: impl Into<String>, what: impl Into<String>) -> ConfigError {
    ConfigError { key: key.into(), what: what.into() }
}

fn truthy(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

impl AgentsConfig {
    /// Applies the platform's environment variables through `env` (pass
    /// `|k| std::env::var(k).ok()`):
    /// `MAX_SYMBOLS_PER_AGENT`, `AGENT_CACHE_TTL_SECONDS`; `ENABLE_VERTEX_AI=true` adds a
    /// `vertex` provider (project from `GOOGLE_CLOUD_PROJECT`, location from
    /// `GOOGLE_CLOUD_LOCATION`) when none is configured and makes it the default;
    /// `XAI_API_KEY` (or the old platform's `GROK4_API_KEY`) adds a `grok` provider;
    /// `OPENAI_BASE_URL` (with `OPENAI_MODEL` and `OPENAI_API_KEY` when the server wants them)
    /// adds an `openai` provider for any OpenAI-compatible server (llama.cpp, vLLM, Ollama).
    /// Each becomes the default when there is none yet, in that order: Vertex, Grok, OpenAI-compatible.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = env("MAX_SYMBOLS_PER_AGENT") {
            self.max_symbols_per_agent = v
                .trim()
                .parse()
                .map_err(|_| bad("max_symbols_per_agent (MAX_SYMBOLS_PER_AGENT)", format!("{v:?} is not a whole number")))?;
        }
        if let Some(v) = env("AGENT_CACHE_TTL_SECONDS") {
            self.cache_ttl_seconds = v
                .trim()
                .parse()
                .map_err(|_| bad("cache_ttl_seconds (AGENT_CACHE_TTL_SECONDS)", format!("{v:?} is not a whole number of seconds")))?;
        }
        if env("ENABLE_VERTEX_AI").is_some_and(|v| truthy(&v)) {
            if !self.providers.iter().any(|p| p.kind == ProviderKind::Vertex) {
                let mut p = ProviderConfig::named("vertex", ProviderKind::Vertex);
                p.vertex_project = env("GOOGLE_CLOUD_PROJECT").unwrap_or_default();
                if let Some(loc) = env("GOOGLE_CLOUD_LOCATION").filter(|l| !l.is_empty()) {
                    p.vertex_location = loc;
                }
                self.providers.push(p);
            }
            if let Some(p) = self.providers.iter().find(|p| p.kind == ProviderKind::Vertex) {
                self.default_provider = p.name.clone();
            }
        }
        let set = |k: &str| env(k).is_some_and(|v| !v.trim().is_empty());
        if set("XAI_API_KEY") || set("GROK4_API_KEY") {
            if !self.providers.iter().any(|p| p.name == "grok") {
                self.providers.push(ProviderConfig::named("grok", ProviderKind::Xai));
            }
            if self.default_provider.is_empty() {
                self.default_provider = "grok".into();
            }
        }
        if let Some(url) = env("OPENAI_BASE_URL").filter(|u| !u.trim().is_empty()) {
            if !self.providers.iter().any(|p| p.name == "openai") {
                let mut p = ProviderConfig::named("openai", ProviderKind::OpenaiCompatible);
                p.base_url = url.trim().to_string();
                p.model = env("OPENAI_MODEL").map(|m| m.trim().to_string()).unwrap_or_default();
                if set("OPENAI_API_KEY") {
                    p.api_key_env = "OPENAI_API_KEY".into();
                }
                self.providers.push(p);
            }
            if self.default_provider.is_empty() {
                self.default_provider = "openai".into();
            }
        }
        Ok(())
    }

    /// The default budget as money.
    pub fn budget(&self) -> Result<Money, ConfigError> {
        parse_budget("budget_usd", &self.budget_usd)
    }

    /// Checks ids, cadences, providers and limits; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_symbols_per_agent == 0 {
            return Err(bad("max_symbols_per_agent (MAX_SYMBOLS_PER_AGENT)", "must be at least 1"));
        }
        self.budget()?;
        let valid_ids = FIRST_EXTERNAL_AGENT..MAX_AGENTS as u16;
        let mut seen = Vec::new();
        let mut names = Vec::new();
        for p in &self.providers {
            if p.name.is_empty() || names.contains(&p.name.as_str()) {
                return Err(bad("providers.name", format!("{:?} is empty or repeated", p.name)));
            }
            names.push(p.name.as_str());
        }
        if !self.default_provider.is_empty() && !names.contains(&self.default_provider.as_str()) {
            return Err(bad("default_provider", format!("no provider named {:?}", self.default_provider)));
        }
        for (i, a) in self.agent.iter().enumerate() {
            let key = |k: &str| format!("agent[{i}].{k}");
            if !valid_ids.contains(&a.id) {
                return Err(bad(key("id"), format!("{} is outside {}..{}", a.id, valid_ids.start, valid_ids.end)));
            }
            if seen.contains(&a.id) {
                return Err(bad(key("id"), format!("{} is used twice", a.id)));
            }
            seen.push(a.id);
            if a.cadence_ms != 0 && a.cadence_ms < 10 {
                return Err(bad(key("cadence_ms"), "must be at least 10"));
            }
            if a.symbols.len() > self.max_symbols_per_agent {
                return Err(bad(
                    key("symbols"),
                    format!("{} symbols, more than max_symbols_per_agent = {}", a.symbols.len(), self.max_symbols_per_agent),
                ));
            }
            if !a.budget_usd.is_empty() {
                parse_budget(&key("budget_usd"), &a.budget_usd)?;
            }
            if !a.provider.is_empty() && !names.contains(&a.provider.as_str()) {
                return Err(bad(key("provider"), format!("no provider named {:?}", a.provider)));
            }
            if a.window < 2 {
                return Err(bad(key("window"), "must be at least 2"));
            }
        }
        let arb = &self.arbitrator;
        if arb.enabled {
            if !valid_ids.contains(&arb.id) || seen.contains(&arb.id) {
                return Err(bad(
                    "arbitrator.id",
                    format!("{} is outside {}..{} or used by an agent", arb.id, valid_ids.start, valid_ids.end),
                ));
            }
            if !(arb.learning_rate > 0.0 && arb.learning_rate <= 1.0) {
                return Err(bad("arbitrator.learning_rate", "must be in (0, 1]"));
            }
            if arb.cadence_ms < 10 || arb.horizon_ms == 0 || arb.ttl_ms == 0 {
                return Err(bad("arbitrator", "cadence_ms must be at least 10; horizon_ms and ttl_ms positive"));
            }
            if !arb.provider.is_empty() && arb.provider != "none" && !names.contains(&arb.provider.as_str()) {
                return Err(bad("arbitrator.provider", format!("no provider named {:?}", arb.provider)));
            }
        }
        Ok(())
    }
}

fn parse_budget(key: &str, s: &str) -> Result<Money, ConfigError> {
    match Money::parse(s.trim()) {
        Ok(m) if m.raw > 0 => Ok(m),
        _ => Err(bad(key, format!("{s:?} is not a positive decimal amount of USD"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_toml_keys_are_checked() {
        let c = AgentsConfig::default();
        c.validate().unwrap();
        assert_eq!(c.agent.len(), 7);
        assert_eq!(c.budget().unwrap(), Money::from_units(1_000));
        let t: AgentsConfig = toml_like(
            r#"{"max_symbols_per_agent": 3, "agent": [{"id": 4, "kind": "fast_trader", "symbols": ["BTCUSDT"]}],
                "providers": [{"name": "local", "kind": "openai_compatible", "base_url": "http://127.0.0.1:1/v1"}],
                "default_provider": "local"}"#,
        );
        t.validate().unwrap();
        assert_eq!(t.agent[0].effective_cadence_ms(), 5_000);
        assert_eq!(t.agent[0].effective_ttl_ns(), 15_000_000_000);
        assert!(serde_json::from_str::<AgentsConfig>(r#"{"max_symbol_per_agent": 3}"#).is_err(), "unknown key");
    }

    fn toml_like(json: &str) -> AgentsConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut c = AgentsConfig::default();
        c.agent[1].id = 2;
        assert!(c.validate().unwrap_err().to_string().contains("agent[1].id"));
        let mut c = AgentsConfig::default();
        c.agent[0].id = 16;
        assert!(c.validate().unwrap_err().key.contains("agent[0].id"));
        let mut c = AgentsConfig::default();
        c.arbitrator.id = 2;
        assert_eq!(c.validate().unwrap_err().key, "arbitrator.id");
        let mut c = AgentsConfig { max_symbols_per_agent: 1, ..AgentsConfig::default() };
        c.agent[0].symbols = vec!["A".into(), "B".into()];
        assert_eq!(c.validate().unwrap_err().key, "agent[0].symbols");
        let c = AgentsConfig { budget_usd: "-5".into(), ..AgentsConfig::default() };
        assert_eq!(c.validate().unwrap_err().key, "budget_usd");
        let c = AgentsConfig { default_provider: "nope".into(), ..AgentsConfig::default() };
        assert_eq!(c.validate().unwrap_err().key, "default_provider");
    }

    #[test]
    fn environment_names_of_the_platform_apply() {
        let mut c = AgentsConfig::default();
        let env = |k: &str| match k {
            "MAX_SYMBOLS_PER_AGENT" => Some("7".to_string()),
            "AGENT_CACHE_TTL_SECONDS" => Some("30".to_string()),
            "ENABLE_VERTEX_AI" => Some("true".to_string()),
            "GOOGLE_CLOUD_PROJECT" => Some("proj".to_string()),
            "XAI_API_KEY" => Some("k".to_string()),
            _ => None,
        };
        c.apply_env(env).unwrap();
        assert_eq!((c.max_symbols_per_agent, c.cache_ttl_seconds), (7, 30));
        assert_eq!(c.default_provider, "vertex", "Vertex wins when enabled");
        assert_eq!(c.providers.len(), 2, "Grok is configured too (`agents --check` calls it)");
        assert_eq!(c.providers[0].vertex_project, "proj");
        c.validate().unwrap();

        let mut c = AgentsConfig::default();
        c.apply_env(|k| (k == "XAI_API_KEY").then(|| "k".to_string())).unwrap();
        assert_eq!(c.default_provider, "grok");
        // The old platform's name for the xAI key.
        let mut c = AgentsConfig::default();
        c.apply_env(|k| (k == "GROK4_API_KEY").then(|| "k".to_string())).unwrap();
        assert_eq!((c.default_provider.as_str(), c.providers[0].kind), ("grok", ProviderKind::Xai));
        // Any OpenAI-compatible server (a local llama.cpp or vLLM) in one variable.
        let mut c = AgentsConfig::default();
        c.apply_env(|k| match k {
            "OPENAI_BASE_URL" => Some("http://127.0.0.1:8080/v1".to_string()),
            "OPENAI_MODEL" => Some("qwen2.5-7b-instruct".to_string()),
            _ => None,
        })
        .unwrap();
        let p = &c.providers[0];
        assert_eq!(
            (c.default_provider.as_str(), p.kind, p.base_url.as_str()),
            ("openai", ProviderKind::OpenaiCompatible, "http://127.0.0.1:8080/v1")
        );
        assert_eq!((p.model.as_str(), p.api_key_env.as_str()), ("qwen2.5-7b-instruct", ""));
        c.validate().unwrap();
        let mut c = AgentsConfig::default();
        let e = c.apply_env(|k| (k == "AGENT_CACHE_TTL_SECONDS").then(|| "soon".to_string())).unwrap_err();
        assert!(e.key.contains("AGENT_CACHE_TTL_SECONDS"));
    }
}
