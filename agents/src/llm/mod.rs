//! The LLM client: OpenAI-compatible chat completions with structured output (JSON schema),
//! strict validation, timeouts, retries with jittered backoff, a circuit breaker, a
//! per-provider token bucket, a response cache, token and cost accounting per agent, and an
//! audit transcript.
//!
//! One [`LlmClient`] per configured provider, shared by the agents that use it (the limits
//! are per provider). Providers: xAI Grok, Vertex AI Gemini (through its OpenAI-compatible
//! endpoint) and any local server speaking the same wire format (vLLM, llama.cpp, Ollama).

pub mod answers;
pub mod auth;
pub mod check;
pub mod guard;

use crate::context::Clock;
use crate::metrics::{AgentCounters, BreakerState, LlmMetrics, Refusal};
use crate::transcript::{Transcript, TranscriptRecord};
use auth::{GoogleSource, GoogleTokens, Secret};
use guard::{Backoff, Breaker, ResponseCache, TokenBucket};
use sapphire_core::fixed::Money;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which kind of provider a [`ProviderConfig`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// xAI Grok: `https://api.x.ai/v1`, bearer key from `XAI_API_KEY`.
    Xai,
    /// Vertex AI Gemini through its OpenAI-compatible endpoint, Google access tokens.
    Vertex,
    /// Any OpenAI-compatible server (vLLM, llama.cpp, Ollama, OpenAI itself); a key is
    /// optional.
    OpenaiCompatible,
}

/// How a Vertex provider gets its access token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VertexAuth {
    /// `authorized_user` ADC when the file exists, else the metadata server.
    Auto,
    /// The GCE/GKE metadata server.
    Metadata,
    /// ADC of type `authorized_user` (refresh-token exchange).
    AuthorizedUser,
}

/// One LLM provider (`[[agents.providers]]`). Every key has a default.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderConfig {
    /// The name agents refer to it by (`provider = "grok"`).
    pub name: String,
    /// `xai`, `vertex` or `openai_compatible`.
    pub kind: ProviderKind,
    /// API base (the part before `/chat/completions`); empty = the kind's default: xAI
    /// `https://api.x.ai/v1`, Vertex built from project and location, local
    /// `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// Model name; empty = the kind's default (`grok-3-mini`, `google/gemini-2.0-flash-001`,
    /// `default`).
    pub model: String,
    /// Environment variable holding the API key; empty = the kind's default (`XAI_API_KEY`
    /// for xai, or the old platform's `GROK4_API_KEY` when that is the one set; none
    /// otherwise). Not used by vertex.
    pub api_key_env: String,
    /// A mounted file holding the API key (wins over `api_key_env`).
    pub api_key_file: Option<PathBuf>,
    /// Vertex: GCP project; empty = `GOOGLE_CLOUD_PROJECT`.
    pub vertex_project: String,
    /// Vertex: region, e.g. `us-central1` or `global`.
    pub vertex_location: String,
    /// Vertex: `auto`, `metadata` or `authorized_user`.
    pub vertex_auth: VertexAuth,
    /// Vertex: the metadata server's token URL.
    pub metadata_token_url: String,
    /// Vertex: ADC file; empty = `GOOGLE_APPLICATION_CREDENTIALS`, else gcloud's default.
    pub adc_file: Option<PathBuf>,
    /// Vertex: OAuth token endpoint for the refresh-token exchange.
    pub oauth_token_url: String,
    /// Per-attempt timeout, ms.
    pub timeout_ms: u64,
    /// Retries after a transient failure (transport, timeout, 429, 5xx).
    pub max_retries: u32,
    /// First backoff, ms (doubles per retry, jittered to 50–100 %).
    pub backoff_base_ms: u64,
    /// Backoff cap, ms.
    pub backoff_max_ms: u64,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before a probe, ms.
    pub breaker_cooldown_ms: u64,
    /// Requests a minute (token bucket rate; 0 = unlimited).
    pub requests_per_minute: u32,
    /// Token bucket size (requests allowed in a burst).
    pub burst: u32,
    /// `max_tokens` asked for per answer.
    pub max_tokens: u32,
    /// Sampling temperature.
    pub temperature: f32,
    /// USD per million prompt tokens, decimal string (e.g. `"0.30"`).
    pub input_usd_per_million: String,
    /// USD per million completion tokens, decimal string.
    pub output_usd_per_million: String,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            kind: ProviderKind::OpenaiCompatible,
            base_url: String::new(),
            model: String::new(),
            api_key_env: String::new(),
            api_key_file: None,
            vertex_project: String::new(),
            vertex_location: "us-central1".into(),
            vertex_auth: VertexAuth::Auto,
            metadata_token_url: "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token".into(),
            adc_file: None,
            oauth_token_url: "https://oauth2.googleapis.com/token".into(),
            timeout_ms: 10_000,
            max_retries: 2,
            backoff_base_ms: 250,
            backoff_max_ms: 4_000,
            breaker_failures: 5,
            breaker_cooldown_ms: 30_000,
            requests_per_minute: 60,
            burst: 10,
            max_tokens: 400,
            temperature: 0.2,
            input_usd_per_million: "0".into(),
            output_usd_per_million: "0".into(),
        }
    }
}

impl ProviderConfig {
    /// A provider of `kind` named `name`, everything else default.
    pub fn named(name: &str, kind: ProviderKind) -> Self {
        Self { name: name.into(), kind, ..Self::default() }
    }

    /// The model asked, after defaults.
    pub fn effective_model(&self) -> String {
        if !self.model.is_empty() {
            return self.model.clone();
        }
        match self.kind {
            ProviderKind::Xai => "grok-3-mini".into(),
            ProviderKind::Vertex => "google/gemini-2.0-flash-001".into(),
            ProviderKind::OpenaiCompatible => "default".into(),
        }
    }

    /// The API base, after defaults.
    pub fn effective_base_url(&self) -> Result<String, LlmError> {
        if !self.base_url.is_empty() {
            return Ok(self.base_url.trim_end_matches('/').to_string());
        }
        Ok(match self.kind {
            ProviderKind::Xai => "https://api.x.ai/v1".into(),
            ProviderKind::OpenaiCompatible => "http://127.0.0.1:8000/v1".into(),
            ProviderKind::Vertex => {
                let project = if self.vertex_project.is_empty() {
                    std::env::var("GOOGLE_CLOUD_PROJECT").unwrap_or_default()
                } else {
                    self.vertex_project.clone()
                };
                if project.is_empty() {
                    return Err(LlmError::Config(format!(
                        "provider {:?}: vertex_project (or GOOGLE_CLOUD_PROJECT) is required",
                        self.name
                    )));
                }
                let loc = &self.vertex_location;
                let host =
                    if loc == "global" { "aiplatform.googleapis.com".to_string() } else { format!("{loc}-aiplatform.googleapis.com") };
                format!("https://{host}/v1/projects/{project}/locations/{loc}/endpoints/openapi")
            }
        })
    }
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// A configuration value is wrong.
    #[error("{0}")]
    Config(String),
    /// Credentials are missing or unusable.
    #[error("provider {provider:?}: {source}")]
    Auth {
        /// Provider name.
        provider: String,
        /// The cause.
        source: auth::AuthError,
    },
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Http(String),
}

/// A structured answer type: its JSON schema, and range checks serde cannot express.
pub trait Answer: DeserializeOwned + Send {
    /// The schema's name in `response_format.json_schema.name`.
    const NAME: &'static str;
    /// The JSON schema sent to the model.
    fn schema() -> Value;
    /// Range checks; `Err` names the field and what was wrong.
    fn validate(&self) -> Result<(), String>;
}

/// A refused call or answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The reason (counted per agent).
    pub reason: Refusal,
    /// Detail for the transcript.
    pub detail: String,
}

/// A validated answer.
#[derive(Debug)]
pub struct Answered<A> {
    /// The parsed, validated answer.
    pub value: A,
    /// Served from the cache.
    pub cached: bool,
    /// Latency including retries.
    pub latency: Duration,
}

/// One chat request.
#[derive(Clone, Debug)]
pub struct ChatRequest<'a> {
    /// The system message.
    pub system: &'a str,
    /// The user message (the compact market summary, headlines...).
    pub user: &'a str,
    /// How long the answer stays useful: an answer later than this is refused as late.
    pub deadline: Duration,
}

/// Why one attempt failed.
struct Failure {
    reason: Refusal,
    detail: String,
    /// Worth retrying, and a sign the provider is unwell (counts toward the breaker).
    transient: bool,
    retry_after: Option<Duration>,
}

#[derive(Deserialize)]
struct ChatCompletion {
    #[serde(default)]
    model: Option<String>,
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

enum Credentials {
    None,
    Key(Secret),
    Google(GoogleTokens),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::Key(_) => f.write_str("Key(***)"),
            Credentials::Google(t) => write!(f, "Google({t:?})"),
        }
    }
}

#[derive(Debug)]
struct Guards {
    bucket: TokenBucket,
    breaker: Breaker,
    cache: ResponseCache,
}

/// A client for one provider, shared by its agents.
pub struct LlmClient {
    name: String,
    model: String,
    url: String,
    timeout: Duration,
    max_retries: u32,
    max_tokens: u32,
    temperature: f32,
    price_in: Money,
    price_out: Money,
    http: reqwest::Client,
    creds: Credentials,
    guards: Mutex<Guards>,
    backoff: Backoff,
    transcript: Transcript,
    clock: Clock,
    metrics: Arc<LlmMetrics>,
}

impl std::fmt::Debug for LlmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmClient")
            .field("name", &self.name)
            .field("model", &self.model)
            .field("url", &self.url)
            .field("creds", &self.creds)
            .finish_non_exhaustive()
    }
}

/// Parses a price per million tokens.
fn parse_price(provider: &str, key: &str, s: &str) -> Result<Money, LlmError> {
    match Money::parse(s.trim()) {
        Ok(m) if m.raw >= 0 => Ok(m),
        _ => Err(LlmError::Config(format!("provider {provider:?}: {key} {s:?} is not a non-negative decimal (USD per 1M tokens)"))),
    }
}

impl LlmClient {
    /// Builds a client; reads the API key or prepares the token source now, so a missing
    /// credential is a start-up error naming the variable or file.
    pub fn new(cfg: &ProviderConfig, cache_ttl: Duration, transcript: Transcript, clock: Clock) -> Result<Self, LlmError> {
        let price_in = parse_price(&cfg.name, "input_usd_per_million", &cfg.input_usd_per_million)?;
        let price_out = parse_price(&cfg.name, "output_usd_per_million", &cfg.output_usd_per_million)?;
        if cfg.timeout_ms == 0 {
            return Err(LlmError::Config(format!("provider {:?}: timeout_ms must be positive", cfg.name)));
        }
        let auth_err = |source| LlmError::Auth { provider: cfg.name.clone(), source };
        let creds = match cfg.kind {
            ProviderKind::Xai => {
                // The old platform's name, GROK4_API_KEY, is read when XAI_API_KEY is not set.
                let set = |v: &str| std::env::var(v).is_ok_and(|k| !k.trim().is_empty());
                let var = match cfg.api_key_env.as_str() {
                    "" if !set("XAI_API_KEY") && set("GROK4_API_KEY") => "GROK4_API_KEY",
                    "" => "XAI_API_KEY",
                    named => named,
                };
                Credentials::Key(auth::load_api_key(var, cfg.api_key_file.as_deref()).map_err(auth_err)?)
            }
            ProviderKind::OpenaiCompatible => {
                if cfg.api_key_env.is_empty() && cfg.api_key_file.is_none() {
                    Credentials::None
                } else {
                    Credentials::Key(auth::load_api_key(&cfg.api_key_env, cfg.api_key_file.as_deref()).map_err(auth_err)?)
                }
            }
            ProviderKind::Vertex => {
                let adc_path = cfg.adc_file.clone().or_else(auth::default_adc_path);
                let source = match cfg.vertex_auth {
                    VertexAuth::Metadata => GoogleSource::Metadata { url: cfg.metadata_token_url.clone() },
                    VertexAuth::AuthorizedUser => {
                        let path = adc_path.ok_or_else(|| LlmError::Config("no ADC file (set adc_file or HOME)".into()))?;
                        GoogleSource::AuthorizedUser {
                            creds: auth::load_adc(&path).map_err(auth_err)?,
                            token_url: cfg.oauth_token_url.clone(),
                        }
                    }
                    VertexAuth::Auto => match adc_path.filter(|p| p.exists()) {
                        Some(path) => GoogleSource::AuthorizedUser {
                            creds: auth::load_adc(&path).map_err(auth_err)?,
                            token_url: cfg.oauth_token_url.clone(),
                        },
                        None => GoogleSource::Metadata { url: cfg.metadata_token_url.clone() },
                    },
                };
                Credentials::Google(GoogleTokens::new(source))
            }
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(cfg.timeout_ms.min(5_000)))
            .build()
            .map_err(|e| LlmError::Http(e.to_string()))?;
        let now = Instant::now();
        let seed = clock().wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(std::process::id());
        Ok(Self {
            name: cfg.name.clone(),
            model: cfg.effective_model(),
            url: format!("{}/chat/completions", cfg.effective_base_url()?),
            timeout: Duration::from_millis(cfg.timeout_ms),
            max_retries: cfg.max_retries,
            max_tokens: cfg.max_tokens,
            temperature: cfg.temperature,
            price_in,
            price_out,
            http,
            creds,
            guards: Mutex::new(Guards {
                bucket: TokenBucket::new(cfg.requests_per_minute, cfg.burst, now),
                breaker: Breaker::new(cfg.breaker_failures, Duration::from_millis(cfg.breaker_cooldown_ms), now),
                cache: ResponseCache::new(cache_ttl, 1_024),
            }),
            backoff: Backoff::new(Duration::from_millis(cfg.backoff_base_ms), Duration::from_millis(cfg.backoff_max_ms), seed),
            transcript,
            clock,
            metrics: Arc::default(),
        })
    }

    /// Counts requests and latency into `metrics` (the runtime's shared ones) rather than the
    /// client's own.
    pub fn with_metrics(mut self, metrics: Arc<LlmMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The request counts and latency histogram this client writes.
    pub fn metrics(&self) -> &Arc<LlmMetrics> {
        &self.metrics
    }

    /// The provider's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The model asked.
    pub fn model(&self) -> &str {
        &self.model
    }

    fn guards(&self) -> std::sync::MutexGuard<'_, Guards> {
        // A poisoned lock only means another task panicked mid-update of plain counters.
        self.guards.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The request body for `req` with `A`'s schema.
    pub fn body<A: Answer>(&self, req: &ChatRequest<'_>) -> Value {
        json!({
            "model": self.model,
            "messages": [
                {"role": "system", "content": req.system},
                {"role": "user", "content": req.user},
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": A::NAME, "strict": true, "schema": A::schema()},
            },
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        })
    }

    /// Asks for an `A`. Every outcome is counted on `agent` and written to the transcript;
    /// a refusal is never traded.
    pub async fn ask<A: Answer>(&self, agent: &AgentCounters, req: &ChatRequest<'_>) -> Result<Answered<A>, Refused> {
        let start = Instant::now();
        let body = self.body::<A>(req);
        let key = format!("{}\u{1}{}\u{1}{}\u{1}{}\u{1}{}", self.model, A::NAME, req.system, req.user, self.max_tokens);
        let mut rec = TranscriptRecord {
            ts_ns: (self.clock)(),
            agent: agent.agent.0,
            kind: agent.kind,
            record: "llm_call",
            provider: self.name.clone(),
            model: self.model.clone(),
            prompt: body["messages"].clone(),
            cost_usd: "0".into(),
            ..TranscriptRecord::default()
        };

        let cached = self.guards().cache.get(&key, Instant::now()).map(str::to_owned);
        if let Some(content) = cached {
            agent.cache_hits.fetch_add(1, Relaxed);
            rec.cached = true;
            return self.finish(agent, rec, start, req.deadline, content, None, 0);
        }

        let allowed = {
            let mut g = self.guards();
            let now = Instant::now();
            let open = !g.breaker.allow(now);
            agent.breaker.store(g.breaker.state() as u8, Relaxed);
            if open {
                Err(Refusal::BreakerOpen)
            } else if !g.bucket.try_take(now) {
                Err(Refusal::LocalRateLimit)
            } else {
                Ok(())
            }
        };
        if let Err(reason) = allowed {
            return self.refuse(agent, rec, start, reason, String::new());
        }

        let bearer = match &self.creds {
            Credentials::None => None,
            Credentials::Key(k) => Some(k.clone()),
            Credentials::Google(t) => match t.token(&self.http, self.timeout).await {
                Ok(tok) => Some(tok),
                Err(e) => return self.refuse(agent, rec, start, Refusal::Auth, e.to_string()),
            },
        };

        let mut attempt = 0u32;
        loop {
            attempt += 1;
            rec.attempts = attempt;
            agent.llm_calls.fetch_add(1, Relaxed);
            let outcome = self.send_once(&body, bearer.as_ref()).await;
            match outcome {
                Ok((completion, raw)) => {
                    {
                        let mut g = self.guards();
                        g.breaker.success();
                        agent.breaker.store(g.breaker.state() as u8, Relaxed);
                    }
                    let Some(completion) = completion else {
                        return self.refuse(agent, rec, start, Refusal::InvalidJson, format!("not a chat completion: {}", clip(&raw)));
                    };
                    let usage = completion.usage.unwrap_or_default();
                    if let Some(m) = completion.model {
                        rec.model = m;
                    }
                    let cost = self.account(agent, usage);
                    rec.prompt_tokens = usage.prompt_tokens;
                    rec.completion_tokens = usage.completion_tokens;
                    rec.cost_usd = cost.to_string();
                    let message = completion.choices.into_iter().next().map(|c| c.message);
                    let content = match message {
                        Some(ChoiceMessage { content: Some(c), .. }) => c,
                        Some(ChoiceMessage { refusal: Some(r), .. }) => {
                            return self.refuse(agent, rec, start, Refusal::InvalidJson, format!("model refused: {}", clip(&r)));
                        }
                        _ => return self.refuse(agent, rec, start, Refusal::InvalidJson, "no message content".into()),
                    };
                    return self.finish(agent, rec, start, req.deadline, content, Some(key), attempt);
                }
                Err(Failure { reason, detail, transient, retry_after }) => {
                    let may_retry = {
                        let mut g = self.guards();
                        if transient {
                            g.breaker.failure(Instant::now());
                        } else {
                            // The provider is up; the request itself was bad.
                            g.breaker.success();
                        }
                        agent.breaker.store(g.breaker.state() as u8, Relaxed);
                        transient && attempt <= self.max_retries && g.breaker.state() == BreakerState::Closed
                    };
                    if !may_retry {
                        return self.refuse(agent, rec, start, reason, detail);
                    }
                    let wait = retry_after.unwrap_or_else(|| self.backoff.delay(attempt - 1));
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// One HTTP attempt: the parsed completion (`None` when the 200 body is not one) and the
    /// raw body, or why it failed.
    async fn send_once(&self, body: &Value, bearer: Option<&Secret>) -> Result<(Option<ChatCompletion>, String), Failure> {
        let mut rb = self.http.post(&self.url).json(body);
        if let Some(b) = bearer {
            rb = rb.bearer_auth(b.expose());
        }
        let exchange = async {
            let resp = rb.send().await?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let text = resp.text().await?;
            Ok::<_, reqwest::Error>((status, retry_after, text))
        };
        let fail = |reason, detail, transient, retry_after| Err(Failure { reason, detail, transient, retry_after });
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => fail(Refusal::Timeout, format!("no answer within {} ms", self.timeout.as_millis()), true, None),
            Ok(Err(e)) => fail(Refusal::Transport, e.without_url().to_string(), true, None),
            Ok(Ok((status, retry_after, text))) => {
                let detail = format!("HTTP {}: {}", status.as_u16(), clip(&text));
                match status.as_u16() {
                    // Honour Retry-After only when it is short; otherwise back off as usual.
                    429 => fail(Refusal::RateLimited, detail, true, retry_after.filter(|d| *d <= Duration::from_secs(10))),
                    401 | 403 => fail(Refusal::Auth, detail, false, None),
                    500..=599 => fail(Refusal::HttpStatus, detail, true, None),
                    // Other 4xx: the same request will fail the same way.
                    _ if !status.is_success() => fail(Refusal::HttpStatus, detail, false, None),
                    _ => Ok((serde_json::from_str::<ChatCompletion>(&text).ok(), text)),
                }
            }
        }
    }

    fn account(&self, agent: &AgentCounters, usage: Usage) -> Money {
        agent.prompt_tokens.fetch_add(usage.prompt_tokens, Relaxed);
        agent.completion_tokens.fetch_add(usage.completion_tokens, Relaxed);
        let cost = |tokens: u64, per_m: Money| -> i64 {
            let c = i128::from(tokens) * i128::from(per_m.raw) / 1_000_000;
            c.clamp(0, i128::from(i64::MAX)) as i64
        };
        let raw = cost(usage.prompt_tokens, self.price_in).saturating_add(cost(usage.completion_tokens, self.price_out));
        agent.cost_raw.fetch_add(raw, Relaxed);
        Money::from_raw(raw)
    }

    /// Parses and validates the content, refusing late answers; caches valid fresh ones.
    #[allow(clippy::too_many_arguments)]
    fn finish<A: Answer>(
        &self,
        agent: &AgentCounters,
        mut rec: TranscriptRecord,
        start: Instant,
        deadline: Duration,
        content: String,
        cache_key: Option<String>,
        attempts: u32,
    ) -> Result<Answered<A>, Refused> {
        rec.attempts = attempts;
        rec.answer = content.clone();
        let value: Value = match serde_json::from_str(&content) {
            Ok(v) => v,
            Err(e) => return self.refuse(agent, rec, start, Refusal::InvalidJson, format!("content is not JSON: {e}")),
        };
        let answer: A = match serde_json::from_value(value) {
            Ok(a) => a,
            Err(e) => return self.refuse(agent, rec, start, Refusal::SchemaViolation, e.to_string()),
        };
        if let Err(e) = answer.validate() {
            return self.refuse(agent, rec, start, Refusal::OutOfRange, e);
        }
        let latency = start.elapsed();
        if latency > deadline {
            return self.refuse(agent, rec, start, Refusal::Late, format!("answered after {} ms", latency.as_millis()));
        }
        if let Some(key) = cache_key {
            self.guards().cache.put(key, content, Instant::now());
        }
        rec.outcome = "ok";
        rec.latency_ms = latency.as_millis() as u64;
        let cached = rec.cached;
        self.metrics.record(&self.name, if cached { "cached" } else { "ok" }, (!cached).then_some(latency));
        self.transcript.record(rec);
        Ok(Answered { value: answer, cached, latency })
    }

    fn refuse<T>(
        &self,
        agent: &AgentCounters,
        mut rec: TranscriptRecord,
        start: Instant,
        reason: Refusal,
        detail: String,
    ) -> Result<T, Refused> {
        agent.refuse(reason);
        // Latency only for questions that reached the provider (not cached, breaker or bucket).
        self.metrics.record(&self.name, reason.label(), (rec.attempts > 0 && !rec.cached).then(|| start.elapsed()));
        rec.outcome = reason.label();
        rec.detail = detail.clone();
        rec.latency_ms = start.elapsed().as_millis() as u64;
        self.transcript.record(rec);
        Err(Refused { reason, detail })
    }
}

/// The first 300 characters of a provider's text, for transcripts.
fn clip(s: &str) -> String {
    s.chars().take(300).collect()
}
