//! Configuration: embedded defaults, then a TOML file, then environment variables, then
//! command-line flags — each later source overrides the earlier ones.

use anyhow::Context;
use sapphire_core::aggregate::{AggregateConfig, FIRST_EXTERNAL_AGENT, MAX_AGENTS};
use sapphire_core::engine::{EngineConfig, VenueMode};
use sapphire_core::fixed::Money;
use sapphire_core::matching::MatchingConfig;
use sapphire_core::pipeline::{Layout, PipelineConfig};
use sapphire_core::risk::{RiskConfig, MAX_STALE_AFTER_NS};
use sapphire_core::wait::WaitStrategy;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A configuration error: names the key and what is wrong. Exit code 2.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn bad(key: &str, what: impl std::fmt::Display) -> anyhow::Error {
    ConfigError(format!("configuration key `{key}`: {what}")).into()
}

/// The whole configuration file. Every section and key is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Which node this is: its shard.
    pub node: NodeSection,
    /// Threads, cores, waits.
    pub engine: EngineSection,
    /// The market source.
    pub market: MarketSection,
    /// Limits.
    pub risk: RiskSection,
    /// Paper venue.
    pub paper: PaperSection,
    /// Agents.
    pub agents: AgentsSection,
    /// Process-level settings.
    pub run: RunSection,
    /// The input journal.
    pub journal: JournalSection,
    /// Engine snapshots.
    pub snapshot: SnapshotSection,
    /// Journal retention (archive and prune).
    pub retention: RetentionSection,
    /// The HTTP API.
    pub api: ApiSection,
    /// The Redis bus (off unless a URL is given).
    pub redis: RedisSection,
    /// The Postgres sink (off unless a URL is given).
    pub database: DatabaseSection,
    /// The daily report.
    pub report: crate::report::ReportSection,
    /// Operator alerts sent by the process (Telegram).
    pub alerts: crate::alerts::AlertsSection,
    /// Real order routing (used when ENABLE_PAPER_TRADING=false).
    pub venue: VenueSection,
    /// Remote agents over QUIC (off unless `bind` is given).
    pub quic: QuicSection,
}

/// `[node]`: this process's place among several.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// The shard this core is (`SAPPHIRE_SHARD` wins): every Postgres row, sink cursor,
    /// Redis key and channel it writes carries it. 1–32 characters of a-z, 0-9, `-`.
    pub shard: String,
    /// The shards a gateway or agents process follows over Redis (`SAPPHIRE_SHARDS`,
    /// comma-separated, wins). Empty: just `shard`.
    pub shards: Vec<String>,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self { shard: sapphire_persistence::shard::DEFAULT_SHARD.into(), shards: Vec::new() }
    }
}

impl NodeSection {
    /// The shard, checked; the error names the key.
    pub fn shard(&self) -> anyhow::Result<String> {
        sapphire_persistence::shard::check_shard(&self.shard).map_err(|e| bad("node.shard (SAPPHIRE_SHARD)", e))?;
        Ok(self.shard.clone())
    }

    /// The shards to follow, checked, without repeats: `shards`, or just `shard` when empty.
    pub fn shards(&self) -> anyhow::Result<Vec<String>> {
        if self.shards.is_empty() {
            return Ok(vec![self.shard()?]);
        }
        let mut out: Vec<String> = Vec::new();
        for s in &self.shards {
            sapphire_persistence::shard::check_shard(s).map_err(|e| bad("node.shards (SAPPHIRE_SHARDS)", e))?;
            if !out.contains(s) {
                out.push(s.clone());
            }
        }
        Ok(out)
    }
}

/// `[quic]`: the QUIC ingress for remote agents (`sapphire agents --core-quic`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuicSection {
    /// UDP address to listen on, e.g. `0.0.0.0:4433`; unset: no QUIC ingress.
    pub bind: Option<String>,
    /// Certificate chain (PEM); with `key_file`. Unset: a self-signed development certificate,
    /// its PEM written to `<data_dir>/quic/cert.pem` for agents to pin.
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM).
    pub key_file: Option<PathBuf>,
    /// Names the development certificate covers.
    pub cert_names: Vec<String>,
    /// The agents that may connect, each with its token from an environment variable or a file.
    pub agents: Vec<QuicAgentEntry>,
    /// Signals per second each agent may send (one second of burst).
    pub max_signals_per_sec: u32,
    /// How often each agent gets a market snapshot datagram, ms.
    pub snapshot_interval_ms: u64,
}

impl Default for QuicSection {
    fn default() -> Self {
        Self {
            bind: None,
            cert_file: None,
            key_file: None,
            cert_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            agents: Vec::new(),
            max_signals_per_sec: 50,
            snapshot_interval_ms: 100,
        }
    }
}

/// One `[[quic.agents]]` entry: `{ id = 9, token_env = "SAPPHIRE_AGENT_9_TOKEN" }` or
/// `{ id = 9, token_file = "/run/secrets/agent-9" }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuicAgentEntry {
    pub id: u16,
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
}

impl QuicSection {
    /// The ingress configuration, or `None` without a bind address. Tokens are read here (from
    /// the environment or files) and never shown.
    fn resolve(
        &self,
        data_dir: &Path,
        in_process: &sapphire_agents::AgentsConfig,
    ) -> anyhow::Result<Option<sapphire_gateway::quic::QuicIngressConfig>> {
        use sapphire_gateway::quic::{AgentToken, QuicIngressConfig, RemoteAgent, ServerTls};
        let Some(bind) = self.bind.as_deref().filter(|b| !b.trim().is_empty()) else { return Ok(None) };
        let bind = bind.trim().parse().map_err(|_| bad("quic.bind", format!("{bind:?} is not an address such as 0.0.0.0:4433")))?;
        let tls = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => ServerTls::Files { cert: cert.clone(), key: key.clone() },
            (None, None) => {
                if self.cert_names.is_empty() {
                    return Err(bad("quic.cert_names", "the development certificate needs at least one name"));
                }
                ServerTls::SelfSigned { write_cert_to: data_dir.join("quic").join("cert.pem"), names: self.cert_names.clone() }
            }
            _ => {
                return Err(bad(
                    "quic.cert_file / quic.key_file",
                    "give both files or neither (neither: a self-signed development certificate)",
                ))
            }
        };
        if self.agents.is_empty() {
            return Err(bad("quic.agents", "no agents: list at least one `{ id = N, token_env = \"VAR\" }`"));
        }
        let mut agents = Vec::with_capacity(self.agents.len());
        for a in &self.agents {
            let key = format!("quic.agents (id {})", a.id);
            if !sapphire_gateway::quic::is_external_agent(a.id) {
                return Err(bad(&key, format!("{} is not an external agent id ({FIRST_EXTERNAL_AGENT}..{MAX_AGENTS})", a.id)));
            }
            let arbitrator = in_process.arbitrator.enabled && in_process.arbitrator.id == a.id;
            if in_process.enabled && (arbitrator || in_process.agent.iter().any(|c| c.enabled && c.id == a.id)) {
                return Err(bad(&key, "is also an in-process agent ([agents.runtime]): a remote agent needs an id of its own (its own sub-account and budget)"));
            }
            let token = match (&a.token_env, &a.token_file) {
                (Some(var), None) => {
                    let text =
                        std::env::var(var).map_err(|_| bad(&key, format!("token_env: the environment variable {var} is not set")))?;
                    AgentToken::new(&text).map_err(|e| bad(&key, format!("token_env {var}: {e}")))?
                }
                (None, Some(path)) => {
                    let text =
                        std::fs::read_to_string(path).map_err(|e| bad(&key, format!("token_file: cannot read {}: {e}", path.display())))?;
                    AgentToken::from_file_text(&text).map_err(|e| bad(&key, format!("token_file {}: {e}", path.display())))?
                }
                _ => return Err(bad(&key, "give exactly one of token_env or token_file")),
            };
            agents.push(RemoteAgent { id: a.id, token });
        }
        if self.max_signals_per_sec == 0 || self.max_signals_per_sec > 100_000 {
            return Err(bad("quic.max_signals_per_sec", format!("{} is outside 1..=100000", self.max_signals_per_sec)));
        }
        if !(1..=60_000).contains(&self.snapshot_interval_ms) {
            return Err(bad("quic.snapshot_interval_ms", format!("{} is outside 1..=60000", self.snapshot_interval_ms)));
        }
        let mut config = QuicIngressConfig::new(bind, tls, agents);
        config.max_signals_per_sec = self.max_signals_per_sec;
        config.snapshot_interval = std::time::Duration::from_millis(self.snapshot_interval_ms);
        config.validate().map_err(|e| bad("quic.agents", e))?;
        Ok(Some(config))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VenueSection {
    /// binance-spot | binance-usdm | bybit-spot | bybit-linear.
    pub market: String,
    /// REST base; empty: the venue's production endpoint.
    pub rest_url: String,
    /// The push stream: Binance's user-data WebSocket base, Bybit's private WebSocket
    /// (`wss://stream.bybit.com/v5/private`; a bare base gets `/v5/private`); empty: production.
    pub user_stream_url: String,
}

impl Default for VenueSection {
    fn default() -> Self {
        Self { market: "binance-spot".into(), rest_url: String::new(), user_stream_url: String::new() }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSection {
    /// `postgres://…`; DATABASE_URL wins. None: no sink.
    pub url: Option<String>,
    /// `unnest` or `copy`.
    pub batch_method: String,
    /// Most output records per transaction.
    pub batch: usize,
}

impl Default for DatabaseSection {
    fn default() -> Self {
        Self { url: None, batch_method: "unnest".into(), batch: 1_000 }
    }
}

impl std::fmt::Debug for DatabaseSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSection")
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .field("batch_method", &self.batch_method)
            .field("batch", &self.batch)
            .finish()
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSection {
    /// `redis://…`; REDIS_URL wins. None: no Redis.
    pub url: Option<String>,
    pub prefix: String,
    pub tick_interval_ms: u64,
    /// Take remote agents' signals from `<prefix>:signals:in`.
    pub signal_ingress: bool,
    /// The external agent ids Redis may carry; empty: every one the in-process runtime and
    /// QUIC do not own.
    pub agents: Vec<u16>,
    /// A Redis producer holds an agent id until it has been silent this long (ms).
    pub agent_lease_ms: u64,
}

impl Default for RedisSection {
    fn default() -> Self {
        Self {
            url: None,
            prefix: "sapphire".into(),
            tick_interval_ms: 100,
            signal_ingress: true,
            agents: Vec::new(),
            agent_lease_ms: 10_000,
        }
    }
}

impl std::fmt::Debug for RedisSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisSection")
            .field("url", &self.url.as_deref().map(sapphire_persistence::bus::redact))
            .field("prefix", &self.prefix)
            .field("tick_interval_ms", &self.tick_interval_ms)
            .field("signal_ingress", &self.signal_ingress)
            .field("agents", &self.agents)
            .field("agent_lease_ms", &self.agent_lease_ms)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// The listen address. The embedded default is loopback (`127.0.0.1:8080`, for a laptop);
    /// the container image sets `SAPPHIRE_HTTP_BIND_DEFAULT=0.0.0.0:8080`, which replaces that
    /// default but not an address a configuration file chose.
    pub bind: String,
    /// Whether the configuration file set `bind` (then `SAPPHIRE_HTTP_BIND_DEFAULT` leaves it).
    #[serde(skip)]
    pub bind_from_file: bool,
    /// A file holding the control bearer token (`SAPPHIRE_API_TOKEN` wins over it).
    pub token_file: Option<PathBuf>,
    /// From `SAPPHIRE_API_TOKEN`; never in a file we parse, never shown by `Debug`.
    #[serde(skip)]
    pub token: Option<sapphire_gateway::api::ApiToken>,
    /// HTTP connections at once (one more gets a 503).
    pub max_connections: usize,
    /// Dashboard WebSocket clients at once (one more gets a 503).
    pub ws_max_clients: usize,
    /// Serve at the lowest CPU priority (nice 19) so clients never slow the market path.
    pub low_priority: bool,
}

impl Default for ApiSection {
    fn default() -> Self {
        let limits = sapphire_gateway::api::ApiLimits::default();
        Self {
            bind: "127.0.0.1:8080".into(),
            bind_from_file: false,
            token_file: None,
            token: None,
            max_connections: limits.max_connections,
            ws_max_clients: limits.ws_max_clients,
            low_priority: limits.low_priority,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalSection {
    pub durability: String,
    pub segment_mb: u64,
}

impl Default for JournalSection {
    fn default() -> Self {
        Self { durability: "every-ms:10".into(), segment_mb: 64 }
    }
}

/// `[snapshot]`: engine snapshots, so a restart replays only the journal after the newest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotSection {
    /// A snapshot at the first sync point once this many events have passed (0: by time only).
    pub every_events: u64,
    /// ...or this many seconds of event time (0: by count only). Both 0: no snapshots.
    pub every_secs: u64,
    /// The newest this many are kept.
    pub keep: usize,
}

impl Default for SnapshotSection {
    fn default() -> Self {
        let policy = sapphire_core::snapshot::SnapshotPolicy::default();
        Self {
            every_events: policy.every_events,
            every_secs: policy.every_ns / 1_000_000_000,
            keep: sapphire_persistence::snapshot::DEFAULT_KEEP,
        }
    }
}

/// `[retention]`: sealed journal segments a restart no longer needs, archived and then deleted
/// (see persistence/src/retention.rs). Off without an archive.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSection {
    /// A directory, `file:///dir` or `gs://bucket/prefix`; empty: nothing archived or deleted.
    pub archive: String,
    /// Seconds between retention passes.
    pub every_secs: u64,
    /// Output segments written to within this many hours stay local (the daily report reads them).
    pub keep_output_hours: u64,
    /// A separate sink's cursor file (`sapphire sink --cursor-file`); empty: the in-process
    /// sink when a database is configured, otherwise none (the output journal then stays).
    pub sink_cursor_file: String,
}

impl Default for RetentionSection {
    fn default() -> Self {
        Self { archive: String::new(), every_secs: 1, keep_output_hours: 26, sink_cursor_file: String::new() }
    }
}

/// Retention as `sapphire run` uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Where segments go.
    pub archive: String,
    /// Time between passes.
    pub every: std::time::Duration,
    /// Output segments written to within this long stay.
    pub keep_output: std::time::Duration,
    /// A separate sink's cursor file.
    pub sink_cursor_file: Option<PathBuf>,
}

impl RetentionSection {
    /// The settings, checked; `None` when no archive is given.
    fn settings(&self) -> anyhow::Result<Option<RetentionSettings>> {
        if self.archive.trim().is_empty() {
            return Ok(None);
        }
        sapphire_persistence::retention::check_spec(&self.archive).map_err(|e| bad("retention.archive (SAPPHIRE_ARCHIVE)", e))?;
        if !(1..=3_600).contains(&self.every_secs) {
            return Err(bad("retention.every_secs", format!("{} is outside 1..=3600", self.every_secs)));
        }
        if self.keep_output_hours > 24 * 366 {
            return Err(bad("retention.keep_output_hours", format!("{} is more than a year", self.keep_output_hours)));
        }
        Ok(Some(RetentionSettings {
            archive: self.archive.trim().to_string(),
            every: std::time::Duration::from_secs(self.every_secs),
            keep_output: std::time::Duration::from_secs(self.keep_output_hours * 3_600),
            sink_cursor_file: (!self.sink_cursor_file.trim().is_empty()).then(|| PathBuf::from(self.sink_cursor_file.trim())),
        }))
    }
}

impl SnapshotSection {
    /// The engine's schedule, checked.
    fn policy(&self) -> anyhow::Result<sapphire_core::snapshot::SnapshotPolicy> {
        if self.every_secs > 86_400 {
            return Err(bad(
                "snapshot.every_secs (SAPPHIRE_SNAPSHOT_EVERY_SECS)",
                format!("{} is more than a day (86400)", self.every_secs),
            ));
        }
        if !(1..=100).contains(&self.keep) {
            return Err(bad("snapshot.keep (SAPPHIRE_SNAPSHOT_KEEP)", format!("{} is outside 1..=100", self.keep)));
        }
        Ok(sapphire_core::snapshot::SnapshotPolicy { every_events: self.every_events, every_ns: self.every_secs * 1_000_000_000 })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    pub layout: String,
    pub engine_cores: Option<Vec<usize>>,
    pub journal_core: Option<usize>,
    /// Core for the non-engine threads (market, edge); default: core 0 when the engine is
    /// pinned elsewhere, so they never preempt it.
    pub edge_core: Option<usize>,
    pub wait: String,
    pub journal_wait: String,
    pub ring_capacity: usize,
    pub latency_sample_every: u32,
    pub order_id_epoch: u16,
}

impl Default for EngineSection {
    fn default() -> Self {
        Self {
            layout: "fused".into(),
            engine_cores: None,
            journal_core: None,
            edge_core: None,
            wait: "spin-hint".into(),
            journal_wait: "sleep:100".into(),
            ring_capacity: 1 << 16,
            latency_sample_every: 16,
            order_id_epoch: 1,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MarketSection {
    pub source: String,
    pub seed: u64,
    pub events_per_sec: u64,
    pub symbols: Vec<String>,
    pub depth: usize,
    pub timer_ms: u64,
    pub venue_market: String,
    pub ws_url: String,
    pub rest_url: String,
    /// REST depth snapshots per symbol per minute (Binance); past it the book stays out of sync.
    pub max_snapshots_per_minute: u32,
}

impl Default for MarketSection {
    fn default() -> Self {
        Self {
            source: "synthetic".into(),
            seed: 7,
            events_per_sec: 100_000,
            symbols: Vec::new(),
            depth: 20,
            timer_ms: 100,
            venue_market: "spot".into(),
            ws_url: String::new(),
            rest_url: String::new(),
            max_snapshots_per_minute: sapphire_gateway::connection::binance::DEFAULT_MAX_SNAPSHOTS_PER_MINUTE,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiskSection {
    pub agent_budget_usd: String,
    pub max_position_usd: String,
    pub max_order_usd: String,
    pub price_band_bps: i64,
    pub orders_per_sec: u32,
    pub order_burst: u32,
    pub max_open_orders: u32,
    pub stale_after_ms: u64,
    pub drawdown_warn_pct: u32,
    pub drawdown_halt_pct: u32,
    pub margin_reduce_only_pct: u32,
    pub margin_deleverage_pct: u32,
    pub leverage: i64,
    /// Operator flatten: passes over the positions before giving up, 1..=1000.
    pub flatten_attempts: u32,
    /// Operator flatten: event time between passes, 1..=60000.
    pub flatten_retry_ms: u64,
}

impl Default for RiskSection {
    fn default() -> Self {
        let d = RiskConfig::default();
        Self {
            agent_budget_usd: "1000".into(),
            max_position_usd: "2000".into(),
            max_order_usd: "1000".into(),
            price_band_bps: d.price_band_bps,
            orders_per_sec: d.orders_per_sec,
            order_burst: d.order_burst,
            max_open_orders: d.max_open_orders,
            stale_after_ms: d.stale_after_ns / 1_000_000,
            drawdown_warn_pct: 10,
            drawdown_halt_pct: 25,
            margin_reduce_only_pct: 85,
            margin_deleverage_pct: 95,
            leverage: 1,
            flatten_attempts: d.flatten_attempts,
            flatten_retry_ms: d.flatten_retry_ns / 1_000_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaperSection {
    pub enabled: bool,
    pub latency_us: u64,
    pub taker_fee_bps: i64,
    pub maker_fee_bps: i64,
}

impl Default for PaperSection {
    fn default() -> Self {
        Self { enabled: true, latency_us: 1_000, taker_fee_bps: 10, maker_fee_bps: 2 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsSection {
    pub max_symbols_per_agent: usize,
    pub cache_ttl_seconds: u64,
    pub momentum_window: usize,
    pub momentum_sample_ms: u64,
    pub imbalance_threshold_bps: i32,
    pub weights_bps: Vec<i32>,
    /// The agents runtime (`[agents.runtime]`: roster, providers, arbitrator; see
    /// agents/src/config.rs).
    pub runtime: sapphire_agents::AgentsConfig,
}

impl Default for AgentsSection {
    fn default() -> Self {
        Self {
            max_symbols_per_agent: 50,
            cache_ttl_seconds: 60,
            momentum_window: 20,
            momentum_sample_ms: 100,
            imbalance_threshold_bps: 1_500,
            weights_bps: Vec::new(),
            runtime: sapphire_agents::AgentsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    pub data_dir: PathBuf,
    pub status_every_ms: u64,
}

impl Default for RunSection {
    fn default() -> Self {
        Self { data_dir: PathBuf::from("./data"), status_every_ms: 1_000 }
    }
}

/// Reads a TOML file; errors name the file and the key.
pub fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading configuration file {}", path.display()))?;
    parse_file(&text).map_err(|e| ConfigError(format!("configuration file {}: {}", path.display(), e.to_string().trim_end())).into())
}

/// Parses a configuration file's text, noting which keys with a deployment-dependent default
/// (`[api] bind`) it sets.
pub fn parse_file(text: &str) -> Result<FileConfig, toml::de::Error> {
    let mut cfg: FileConfig = toml::from_str(text)?;
    let table: toml::Table = toml::from_str(text)?;
    cfg.api.bind_from_file = table.get("api").and_then(|a| a.get("bind")).is_some();
    Ok(cfg)
}

/// Applies the environment (the old platform's names keep working).
pub fn apply_env(cfg: &mut FileConfig, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    if let Some(v) = env("TRADING_SYMBOLS") {
        cfg.market.symbols = parse_symbols("TRADING_SYMBOLS", &v)?;
    }
    if let Some(v) = env("ENABLE_PAPER_TRADING") {
        cfg.paper.enabled = parse_bool(&v).ok_or_else(|| bad("ENABLE_PAPER_TRADING", format!("{v:?} is not true or false")))?;
    }
    if let Some(v) = env("MAX_SYMBOLS_PER_AGENT") {
        cfg.agents.max_symbols_per_agent =
            v.trim().parse().map_err(|_| bad("MAX_SYMBOLS_PER_AGENT", format!("{v:?} is not a whole number")))?;
    }
    if let Some(v) = env("AGENT_CACHE_TTL_SECONDS") {
        cfg.agents.cache_ttl_seconds =
            v.trim().parse().map_err(|_| bad("AGENT_CACHE_TTL_SECONDS", format!("{v:?} is not a whole number of seconds")))?;
    }
    if let Some(v) = env("SAPPHIRE_LAYOUT") {
        cfg.engine.layout = v;
    }
    if let Some(v) = env("SAPPHIRE_DATA_DIR") {
        cfg.run.data_dir = PathBuf::from(v);
    }
    // The container image's default address (0.0.0.0:8080): below the file, above the
    // embedded loopback default.
    if let Some(v) = env("SAPPHIRE_HTTP_BIND_DEFAULT").filter(|v| !v.trim().is_empty()) {
        if !cfg.api.bind_from_file {
            cfg.api.bind = v;
        }
    }
    if let Some(v) = env("SAPPHIRE_HTTP_BIND") {
        cfg.api.bind = v;
    }
    if let Some(v) = env("SAPPHIRE_API_TOKEN").filter(|v| !v.is_empty()) {
        cfg.api.token = Some(sapphire_gateway::api::ApiToken::new(&v).map_err(|e| bad("SAPPHIRE_API_TOKEN", e))?);
    }
    if let Some(v) = env("SAPPHIRE_SHARD") {
        cfg.node.shard = v.trim().to_string();
    }
    if let Some(v) = env("SAPPHIRE_SHARDS") {
        cfg.node.shards = v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    }
    for (var, slot) in
        [("SAPPHIRE_SNAPSHOT_EVERY_EVENTS", &mut cfg.snapshot.every_events), ("SAPPHIRE_SNAPSHOT_EVERY_SECS", &mut cfg.snapshot.every_secs)]
    {
        if let Some(v) = env(var) {
            *slot = v.trim().parse().map_err(|_| bad(var, format!("{v:?} is not a whole number")))?;
        }
    }
    if let Some(v) = env("SAPPHIRE_SNAPSHOT_KEEP") {
        cfg.snapshot.keep = v.trim().parse().map_err(|_| bad("SAPPHIRE_SNAPSHOT_KEEP", format!("{v:?} is not a whole number")))?;
    }
    if let Some(v) = env("SAPPHIRE_ARCHIVE") {
        cfg.retention.archive = v;
    }
    if let Some(v) = env("REDIS_URL") {
        cfg.redis.url = Some(v).filter(|v| !v.trim().is_empty());
    }
    cfg.agents.runtime.max_symbols_per_agent = cfg.agents.max_symbols_per_agent;
    cfg.agents.runtime.cache_ttl_seconds = cfg.agents.cache_ttl_seconds;
    cfg.agents.runtime.apply_env(|k| env(k)).map_err(|e| ConfigError(e.to_string()))?;
    if let Some(v) = env("DATABASE_URL") {
        cfg.database.url = Some(v).filter(|v| !v.trim().is_empty());
    }
    Ok(())
}

/// A comma-separated symbol list (`TRADING_SYMBOLS`, `--symbols`): upper-cased, spaces around
/// each symbol ignored. An empty value is an empty list, which means every listed symbol (the
/// synthetic market's three; a venue's first `MAX_SYMBOLS_PER_AGENT`); a blank value or an
/// empty element (`" "`, `","`, `"BTCUSDT,"`) is refused, never read as "every symbol".
pub fn parse_symbols(key: &str, v: &str) -> anyhow::Result<Vec<String>> {
    if v.is_empty() {
        return Ok(Vec::new());
    }
    v.split(',')
        .map(|s| match s.trim() {
            "" => Err(bad(key, format!("{v:?} has an empty symbol (leave it unset or empty for every listed symbol)"))),
            s => Ok(s.to_uppercase()),
        })
        .collect()
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn money(key: &str, v: &str) -> anyhow::Result<Money> {
    let m = Money::parse(v.trim()).map_err(|e| bad(key, format!("{v:?} is not a decimal amount ({e})")))?;
    if m.raw < 0 {
        return Err(bad(key, "must not be negative"));
    }
    Ok(m)
}

fn pct_to_bps(key: &str, v: u32) -> anyhow::Result<i64> {
    if v > 100 {
        return Err(bad(key, format!("{v} is not a percentage between 0 and 100")));
    }
    Ok(i64::from(v) * 100)
}

/// Parses durations such as `10s`, `500ms`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" | "" => n.checked_mul(1_000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(std::time::Duration::from_millis(ms))
}

/// Everything `sapphire run` needs, validated.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// This core's shard (`[node] shard`, `SAPPHIRE_SHARD`).
    pub shard: String,
    /// The shards a gateway or agents process follows (`[node] shards`, `SAPPHIRE_SHARDS`;
    /// just `shard` by default).
    pub shards: Vec<String>,
    pub pipeline: PipelineConfig,
    pub edge_core: Option<usize>,
    /// Most symbols taken from a venue when TRADING_SYMBOLS is empty.
    pub max_symbols: usize,
    pub engine: EngineConfig,
    pub market: MarketSection,
    pub data_dir: PathBuf,
    pub status_every: std::time::Duration,
    pub journal: sapphire_persistence::journal::JournalConfig,
    /// The output journal: same segment size and durability, beside the input journal.
    pub output_journal: sapphire_persistence::journal::JournalConfig,
    /// Engine snapshots (`<data dir>/snapshots`); `None` when `[snapshot]` turns them off.
    pub snapshots: Option<sapphire_persistence::snapshot::SnapshotConfig>,
    /// Journal retention; `None` without an archive.
    pub retention: Option<RetentionSettings>,
    pub api: sapphire_gateway::api::ApiConfig,
    /// The API's connection and WebSocket caps.
    pub api_limits: sapphire_gateway::api::ApiLimits,
    /// The Redis bus, when configured.
    pub redis: Option<sapphire_persistence::bus::BusConfig>,
    /// Take remote agents' signals from Redis.
    pub redis_signal_ingress: bool,
    /// The Postgres sink, when configured.
    pub sink: Option<sapphire_persistence::pg::SinkConfig>,
    /// The daily report.
    pub report: crate::report::ReportSection,
    /// Operator alerts sent by the process (Telegram).
    pub alerts: crate::alerts::AlertsSection,
    /// Real order routing; `None` when paper trading.
    pub routing: Option<sapphire_gateway::venue::routing::RoutingConfig>,
    /// The agents runtime.
    pub agents: sapphire_agents::AgentsConfig,
    /// The QUIC ingress for remote agents, when configured.
    pub quic: Option<sapphire_gateway::quic::QuicIngressConfig>,
    /// Which ingress owns each agent id (in-process, QUIC, Redis).
    pub agent_owners: sapphire_core::ownership::AgentOwners,
}

/// Each agent id's one producer: the in-process runtime's agents and arbitrator, then the
/// QUIC agents, then Redis (all other external ids, or `[redis] agents`).
fn agent_owners(
    in_process: &sapphire_agents::AgentsConfig,
    quic: &QuicSection,
    redis: &RedisSection,
) -> anyhow::Result<sapphire_core::ownership::AgentOwners> {
    use sapphire_core::ownership::{AgentOwners, Owner};
    let mut owners = AgentOwners::default();
    if in_process.enabled {
        let arbitrator = in_process.arbitrator.enabled.then_some(in_process.arbitrator.id);
        for id in in_process.agent.iter().filter(|c| c.enabled).map(|c| c.id).chain(arbitrator) {
            owners.assign(id, Owner::InProcess).map_err(|e| bad("agents.runtime", e))?;
        }
    }
    if quic.bind.as_deref().is_some_and(|b| !b.trim().is_empty()) {
        for a in &quic.agents {
            owners.assign(a.id, Owner::Quic).map_err(|e| bad(&format!("quic.agents (id {})", a.id), e))?;
        }
    }
    if !redis.agents.is_empty() {
        owners.restrict_redis(&redis.agents).map_err(|e| bad("redis.agents", e))?;
    }
    Ok(owners)
}

impl FileConfig {
    /// Validates and converts into the parts' configurations.
    pub fn resolve(&self) -> anyhow::Result<RunConfig> {
        let shard = self.node.shard()?;
        let shards = self.node.shards()?;
        let e = &self.engine;
        let layout = Layout::parse(&e.layout).ok_or_else(|| bad("engine.layout", format!("{:?} is not `fused` or `split`", e.layout)))?;
        let wait = WaitStrategy::parse(&e.wait)
            .ok_or_else(|| bad("engine.wait", format!("{:?} is not busy-spin, spin-hint, yield, sleep or sleep:<micros>", e.wait)))?;
        let journal_wait = WaitStrategy::parse(&e.journal_wait).ok_or_else(|| {
            bad("engine.journal_wait", format!("{:?} is not busy-spin, spin-hint, yield, sleep or sleep:<micros>", e.journal_wait))
        })?;
        if !(1_024..=1 << 24).contains(&e.ring_capacity) {
            return Err(bad("engine.ring_capacity", format!("{} is outside 1024..=16777216", e.ring_capacity)));
        }
        if e.latency_sample_every == 0 {
            return Err(bad("engine.latency_sample_every", "must be at least 1"));
        }
        // Configured cores are positions in the set of CPUs this process may use (in a
        // Kubernetes pod with exclusive CPUs that set is whatever the CPU manager assigned; on
        // a plain machine it is every CPU, so positions equal CPU ids).
        let allowed: Vec<usize> = core_affinity::get_core_ids().map(|ids| ids.into_iter().map(|c| c.id).collect()).unwrap_or_default();
        check_cores(e, layout, &allowed)?;
        let cpu = |position: usize| allowed.get(position).copied().unwrap_or(position);
        let cores = allowed.len().max(1);
        let engine_positions = match &e.engine_cores {
            Some(c) => c.clone(),
            // Default: the fused engine gets the last core to itself when there are two or more.
            None if layout == Layout::Fused && cores >= 2 => vec![cores - 1],
            None => Vec::new(),
        };
        // Keep the journal and edge threads off the engine's core(s).
        let side_position = if engine_positions.is_empty() || engine_positions.contains(&0) { None } else { Some(0) };
        let engine_cores: Vec<usize> = engine_positions.iter().map(|&p| cpu(p)).collect();
        let journal_core = e.journal_core.or(side_position).map(cpu);
        let edge_core = e.edge_core.or(side_position).map(cpu);
        let pipeline = PipelineConfig {
            layout,
            ring_capacity: e.ring_capacity,
            engine_cores,
            journal_core,
            engine_wait: wait,
            journal_wait,
            latency_sample_every: e.latency_sample_every,
            snapshots: self.snapshot.policy()?,
            ..PipelineConfig::default()
        };

        let m = &self.market;
        if !matches!(m.source.as_str(), "synthetic" | "binance" | "bybit") {
            return Err(bad("market.source", format!("{:?} is not synthetic, binance or bybit", m.source)));
        }
        if m.source == "binance" && !matches!(m.venue_market.as_str(), "spot" | "usdm") {
            return Err(bad("market.venue_market", format!("{:?} is not spot or usdm", m.venue_market)));
        }
        if m.source == "bybit" && !matches!(m.venue_market.as_str(), "spot" | "linear") {
            return Err(bad("market.venue_market", format!("{:?} is not spot or linear (bybit)", m.venue_market)));
        }
        if (m.ws_url.is_empty()) != (m.rest_url.is_empty()) {
            return Err(bad("market.ws_url / market.rest_url", "give both endpoints or neither (neither: the venue's public endpoints)"));
        }
        if !(1..=60).contains(&m.max_snapshots_per_minute) {
            return Err(bad("market.max_snapshots_per_minute", format!("{} is outside 1..=60", m.max_snapshots_per_minute)));
        }
        if m.events_per_sec == 0 || m.events_per_sec > 50_000_000 {
            return Err(bad("market.events_per_sec", format!("{} is outside 1..=50000000", m.events_per_sec)));
        }
        if m.depth == 0 || m.depth > 1_000 {
            return Err(bad("market.depth", format!("{} is outside 1..=1000", m.depth)));
        }
        if !(1..=60_000).contains(&m.timer_ms) {
            return Err(bad("market.timer_ms", format!("{} is outside 1..=60000", m.timer_ms)));
        }
        for s in &m.symbols {
            if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(bad("market.symbols (TRADING_SYMBOLS)", format!("{s:?} is not a symbol like BTCUSDT")));
            }
        }

        let a = &self.agents;
        if a.max_symbols_per_agent == 0 {
            return Err(bad("agents.max_symbols_per_agent (MAX_SYMBOLS_PER_AGENT)", "must be at least 1"));
        }
        if a.weights_bps.len() > MAX_AGENTS || a.weights_bps.iter().any(|w| !(0..=100_000).contains(w)) {
            return Err(bad("agents.weights_bps", format!("at most {MAX_AGENTS} weights, each 0..=100000 bps")));
        }
        if a.momentum_window < 2 || a.momentum_window > 256 {
            return Err(bad("agents.momentum_window", format!("{} is outside 2..=256", a.momentum_window)));
        }
        if !(1..=60_000).contains(&a.momentum_sample_ms) {
            return Err(bad("agents.momentum_sample_ms", format!("{} is outside 1..=60000", a.momentum_sample_ms)));
        }

        let r = &self.risk;
        let budget = money("risk.agent_budget_usd", &r.agent_budget_usd)?;
        let risk = RiskConfig {
            agent_budget: budget,
            max_position_notional: money("risk.max_position_usd", &r.max_position_usd)?,
            max_order_notional: money("risk.max_order_usd", &r.max_order_usd)?,
            price_band_bps: r.price_band_bps,
            orders_per_sec: r.orders_per_sec,
            order_burst: r.order_burst,
            max_open_orders: r.max_open_orders,
            stale_after_ns: r.stale_after_ms.checked_mul(1_000_000).ok_or_else(|| {
                bad("risk.stale_after_ms", format!("{} is outside 1..={} (one day)", r.stale_after_ms, MAX_STALE_AFTER_NS / 1_000_000))
            })?,
            drawdown_warn_bps: pct_to_bps("risk.drawdown_warn_pct", r.drawdown_warn_pct)?,
            drawdown_halt_bps: pct_to_bps("risk.drawdown_halt_pct", r.drawdown_halt_pct)?,
            margin_reduce_only_bps: pct_to_bps("risk.margin_reduce_only_pct", r.margin_reduce_only_pct)?,
            margin_deleverage_bps: pct_to_bps("risk.margin_deleverage_pct", r.margin_deleverage_pct)?,
            leverage: r.leverage,
            flatten_attempts: r.flatten_attempts,
            flatten_retry_ns: r.flatten_retry_ms.saturating_mul(1_000_000),
        };
        if !(1..=1_000).contains(&r.flatten_attempts) {
            return Err(bad("risk.flatten_attempts", format!("{} is outside 1..=1000", r.flatten_attempts)));
        }
        if !(1..=60_000).contains(&r.flatten_retry_ms) {
            return Err(bad("risk.flatten_retry_ms", format!("{} is outside 1..=60000", r.flatten_retry_ms)));
        }
        // Every agent slot gets a budget (capital = budget × MAX_AGENTS), and every agent may
        // hold a position in every instrument: the instruments are the symbols given, the
        // synthetic market's own, or at most MAX_SYMBOLS_PER_AGENT from a venue.
        let instruments = match (m.symbols.len(), m.source.as_str()) {
            (0, "synthetic") => sapphire_gateway::synthetic::default_instruments().len(),
            (0, _) => a.max_symbols_per_agent,
            (n, _) => n,
        };
        risk.validate(MAX_AGENTS, instruments).map_err(|e| bad(&format!("risk.{}", e.setting.as_str()), e.reason))?;
        if risk.drawdown_warn_bps > risk.drawdown_halt_bps {
            return Err(bad("risk.drawdown_warn_pct", "must not be above risk.drawdown_halt_pct"));
        }
        if risk.margin_reduce_only_bps > risk.margin_deleverage_bps {
            return Err(bad("risk.margin_reduce_only_pct", "must not be above risk.margin_deleverage_pct"));
        }

        let p = &self.paper;
        for (key, fee) in [("paper.taker_fee_bps", p.taker_fee_bps), ("paper.maker_fee_bps", p.maker_fee_bps)] {
            if !(-MAX_FEE_BPS..=MAX_FEE_BPS).contains(&fee) {
                return Err(bad(key, format!("{fee} is outside -{MAX_FEE_BPS}..={MAX_FEE_BPS} bps (10%; venues charge under 10 bps)")));
            }
        }
        if p.latency_us > 60_000_000 {
            return Err(bad("paper.latency_us", format!("{} is outside 0..=60000000 (one minute)", p.latency_us)));
        }
        let routing = if p.enabled {
            None
        } else {
            use sapphire_gateway::venue::routing::{RoutingConfig, VenueMarket};
            if !matches!(m.source.as_str(), "binance" | "bybit") {
                return Err(bad(
                    "paper.enabled (ENABLE_PAPER_TRADING)",
                    "false routes real orders, which needs a live market (`[market] source = \"binance\"` or \"bybit\"), not the synthetic one",
                ));
            }
            let market = VenueMarket::parse(&self.venue.market).ok_or_else(|| {
                bad("venue.market", format!("{:?} is not binance-spot, binance-usdm, bybit-spot or bybit-linear", self.venue.market))
            })?;
            let venue = match market {
                VenueMarket::BinanceSpot | VenueMarket::BinanceUsdM => sapphire_gateway::venue::credentials::Venue::Binance,
                VenueMarket::BybitSpot | VenueMarket::BybitLinear => sapphire_gateway::venue::credentials::Venue::Bybit,
            };
            let credentials = sapphire_gateway::venue::credentials::credentials_from_env(venue)
                .map_err(|e| bad("paper.enabled (ENABLE_PAPER_TRADING=false)", e))?;
            let url = |key: &str, v: &str| -> anyhow::Result<Option<String>> {
                match v.trim() {
                    "" => Ok(None),
                    v if v.starts_with("http://") || v.starts_with("https://") || v.starts_with("ws://") || v.starts_with("wss://") => {
                        Ok(Some(v.trim_end_matches('/').to_string()))
                    }
                    v => Err(bad(key, format!("{v:?} is not an http(s):// or ws(s):// URL"))),
                }
            };
            Some(RoutingConfig {
                market,
                rest_url: url("venue.rest_url", &self.venue.rest_url)?,
                user_stream_url: url("venue.user_stream_url", &self.venue.user_stream_url)?,
                credentials,
                gateway: Default::default(),
            })
        };
        // Each agent spreads its budget over the instruments it covers.
        let symbols = if m.symbols.is_empty() { sapphire_gateway::synthetic::default_instruments().len() } else { m.symbols.len() };
        let covered = symbols.min(a.max_symbols_per_agent).max(1) as i64;
        let mut weights = vec![10_000; MAX_AGENTS];
        for (w, given) in weights.iter_mut().zip(&a.weights_bps) {
            *w = *given;
        }
        let engine = EngineConfig {
            aggregate: AggregateConfig {
                momentum_window: a.momentum_window,
                momentum_sample_ns: a.momentum_sample_ms * 1_000_000,
                imbalance_threshold_bps: a.imbalance_threshold_bps,
                weights_bps: weights,
                target_notional: Money::from_raw(budget.raw / covered / 2),
                ..AggregateConfig::default()
            },
            risk,
            matching: MatchingConfig { latency_ns: p.latency_us * 1_000, taker_fee_bps: p.taker_fee_bps, maker_fee_bps: p.maker_fee_bps },
            venue: if routing.is_some() { VenueMode::External } else { VenueMode::Paper },
            order_id_epoch: e.order_id_epoch,
            ..EngineConfig::default()
        };
        let durability = match self.journal.durability.as_str() {
            "every-record" => sapphire_persistence::journal::Durability::EveryRecord,
            "os" => sapphire_persistence::journal::Durability::Os,
            other => match other.strip_prefix("every-ms:").and_then(|ms| ms.parse::<u64>().ok()) {
                Some(ms) if ms > 0 => sapphire_persistence::journal::Durability::EveryMs(ms),
                _ => return Err(bad("journal.durability", format!("{other:?} is not every-record, every-ms:<ms> or os"))),
            },
        };
        if !(1..=4_096).contains(&self.journal.segment_mb) {
            return Err(bad("journal.segment_mb", format!("{} is outside 1..=4096", self.journal.segment_mb)));
        }
        let journal = sapphire_persistence::journal::JournalConfig {
            dir: self.run.data_dir.join("journal").join("input"),
            segment_bytes: self.journal.segment_mb << 20,
            durability,
        };
        if self.run.status_every_ms == 0 {
            return Err(bad("run.status_every_ms", "must be at least 1"));
        }
        let bind = self.api.bind.trim().parse().map_err(|_| {
            bad("api.bind (--http-bind, SAPPHIRE_HTTP_BIND)", format!("{:?} is not an address like 127.0.0.1:8080", self.api.bind))
        })?;
        let token = match (&self.api.token, &self.api.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(path)) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| bad("api.token_file", format!("cannot read {}: {e}", path.display())))?;
                Some(
                    sapphire_gateway::api::ApiToken::from_file_text(&text)
                        .map_err(|e| bad("api.token_file", format!("{}: {e}", path.display())))?,
                )
            }
            (None, None) => None,
        };
        let snapshots = pipeline
            .snapshots
            .enabled()
            .then(|| sapphire_persistence::snapshot::SnapshotConfig { dir: self.run.data_dir.join("snapshots"), keep: self.snapshot.keep });
        Ok(RunConfig {
            shard: shard.clone(),
            shards,
            pipeline,
            edge_core,
            max_symbols: a.max_symbols_per_agent,
            engine,
            market: m.clone(),
            data_dir: self.run.data_dir.clone(),
            status_every: std::time::Duration::from_millis(self.run.status_every_ms),
            output_journal: sapphire_persistence::journal::JournalConfig {
                dir: self.run.data_dir.join("journal").join("output"),
                ..journal.clone()
            },
            journal,
            snapshots,
            retention: self.retention.settings()?,
            redis: match &self.redis.url {
                None => None,
                Some(url) => {
                    if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://")) {
                        return Err(bad(
                            "redis.url (REDIS_URL)",
                            format!("{:?} is not a redis:// URL", sapphire_persistence::bus::redact(url)),
                        ));
                    }
                    if !(1..=60_000).contains(&self.redis.tick_interval_ms) {
                        return Err(bad("redis.tick_interval_ms", format!("{} is outside 1..=60000", self.redis.tick_interval_ms)));
                    }
                    if self.redis.prefix.is_empty() || self.redis.prefix.contains([' ', '*', '?', '[']) {
                        return Err(bad(
                            "redis.prefix",
                            format!("{:?} must be non-empty, without spaces or glob characters", self.redis.prefix),
                        ));
                    }
                    if !(100..=3_600_000).contains(&self.redis.agent_lease_ms) {
                        return Err(bad("redis.agent_lease_ms", format!("{} is outside 100..=3600000", self.redis.agent_lease_ms)));
                    }
                    Some(sapphire_persistence::bus::BusConfig {
                        prefix: self.redis.prefix.clone(),
                        agent_lease: std::time::Duration::from_millis(self.redis.agent_lease_ms),
                        shard: shard.clone(),
                        tick_interval: std::time::Duration::from_millis(self.redis.tick_interval_ms),
                        ..sapphire_persistence::bus::BusConfig::new(url.clone())
                    })
                }
            },
            redis_signal_ingress: self.redis.signal_ingress,
            api_limits: {
                if !(1..=100_000).contains(&self.api.max_connections) {
                    return Err(bad("api.max_connections", format!("{} is outside 1..=100000", self.api.max_connections)));
                }
                if !(1..=100_000).contains(&self.api.ws_max_clients) {
                    return Err(bad("api.ws_max_clients", format!("{} is outside 1..=100000", self.api.ws_max_clients)));
                }
                sapphire_gateway::api::ApiLimits {
                    max_connections: self.api.max_connections,
                    ws_max_clients: self.api.ws_max_clients,
                    low_priority: self.api.low_priority,
                    ..Default::default()
                }
            },
            agents: {
                let mut agents = a.runtime.clone();
                agents.max_symbols_per_agent = a.max_symbols_per_agent;
                agents.cache_ttl_seconds = a.cache_ttl_seconds;
                agents.validate().map_err(|e| ConfigError(e.to_string()))?;
                if agents.transcript_path.is_none() {
                    agents.transcript_path = Some(self.run.data_dir.join("agents-transcript.jsonl"));
                }
                agents
            },
            routing,
            quic: self.quic.resolve(&self.run.data_dir, &a.runtime)?,
            agent_owners: agent_owners(&a.runtime, &self.quic, &self.redis)?,
            report: {
                self.report.daily_at_secs().map_err(|e| bad("report.daily_at", e))?;
                self.report.clone()
            },
            alerts: {
                self.alerts.check().map_err(|(key, e)| bad(key, e))?;
                self.alerts.clone()
            },
            sink: match &self.database.url {
                None => None,
                Some(url) => {
                    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                        return Err(bad("database.url (DATABASE_URL)", "not a postgres:// URL"));
                    }
                    let mut sink = sapphire_persistence::pg::SinkConfig::from_url(url)
                        .map_err(|e| bad("database.url (DATABASE_URL)", format!("not a usable postgres:// URL: {e}")))?;
                    sink.method = self.database.batch_method.parse().map_err(|e: String| bad("database.batch_method", e))?;
                    if !(1..=100_000).contains(&self.database.batch) {
                        return Err(bad("database.batch", format!("{} is outside 1..=100000", self.database.batch)));
                    }
                    sink.batch_max = self.database.batch;
                    sink.leverage = self.risk.leverage.max(1);
                    sink.shard = shard.clone();
                    Some(sink)
                }
            },
            api: sapphire_gateway::api::ApiConfig { bind, token, core: edge_core },
        })
    }
}

/// Largest paper fee, either sign: 10%. Venues charge under 10 bps; more is a unit mistake.
pub const MAX_FEE_BPS: i64 = 1_000;

/// Configured cores must exist among the CPUs this process may use, and a layout takes at
/// most as many engine cores as it has engine threads.
fn check_cores(e: &EngineSection, layout: Layout, allowed: &[usize]) -> anyhow::Result<()> {
    if let Some(cores) = &e.engine_cores {
        let threads = if layout == Layout::Fused { 1 } else { 4 };
        if cores.len() > threads {
            return Err(bad(
                "engine.engine_cores (--engine-cores)",
                format!("{cores:?} names {} cores, but the {} layout has {threads} engine thread(s)", cores.len(), e.layout),
            ));
        }
    }
    // Without the CPU list (the affinity call failed) pinning is skipped with a warning anyway.
    if allowed.is_empty() {
        return Ok(());
    }
    let given = e.engine_cores.iter().flatten().map(|&c| ("engine.engine_cores (--engine-cores)", c));
    for (key, position) in
        given.chain(e.journal_core.map(|c| ("engine.journal_core", c))).chain(e.edge_core.map(|c| ("engine.edge_core", c)))
    {
        if position >= allowed.len() {
            return Err(bad(
                key,
                format!(
                    "core {position} does not exist here: this process may use {} core(s), numbered 0..={} (CPUs {allowed:?})",
                    allowed.len(),
                    allowed.len() - 1
                ),
            ));
        }
    }
    Ok(())
}

/// Refuses a configuration with a message naming the key (flag checks).
pub fn refuse(key: &str, what: impl std::fmt::Display) -> anyhow::Error {
    bad(key, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn defaults_resolve() {
        let run = FileConfig::default().resolve().unwrap();
        assert_eq!(run.engine.risk.agent_budget, Money::from_units(1_000));
        assert_eq!(run.engine.risk.drawdown_halt_bps, 2_500);
        assert_eq!(run.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn the_shard_comes_from_node_shard_or_sapphire_shard_and_is_checked() {
        let run = FileConfig::default().resolve().unwrap();
        assert_eq!(run.shard, "main");
        let mut cfg: FileConfig = toml::from_str("[node]\nshard = \"a\"\n[database]\nurl = \"postgres://db/x\"\n").unwrap();
        assert_eq!(cfg.resolve().unwrap().sink.unwrap().shard, "a");
        apply_env(&mut cfg, &env_of(&[("SAPPHIRE_SHARD", "b"), ("SAPPHIRE_SHARDS", "a, b,a")])).unwrap();
        assert_eq!(cfg.resolve().unwrap().sink.unwrap().shard, "b");
        assert_eq!(cfg.node.shards().unwrap(), ["a", "b"]);
        for (bad_value, key) in [("Shard A", "node.shard (SAPPHIRE_SHARD)"), ("", "node.shard (SAPPHIRE_SHARD)")] {
            let mut cfg = FileConfig::default();
            apply_env(&mut cfg, &env_of(if bad_value.is_empty() { &[("SAPPHIRE_SHARD", "")] } else { &[("SAPPHIRE_SHARD", "Shard A")] }))
                .unwrap();
            let err = cfg.resolve().unwrap_err();
            assert!(err.to_string().contains(key) && err.downcast_ref::<ConfigError>().is_some(), "{bad_value:?}: {err}");
        }
        let mut cfg = FileConfig::default();
        apply_env(&mut cfg, &env_of(&[("SAPPHIRE_SHARDS", "a,b:c")])).unwrap();
        assert!(cfg.resolve().unwrap_err().to_string().contains("node.shards (SAPPHIRE_SHARDS)"));
    }

    #[test]
    fn snapshots_are_on_by_default_and_the_environment_tunes_or_stops_them() {
        let run = FileConfig::default().resolve().unwrap();
        let sc = run.snapshots.expect("on by default");
        assert_eq!((sc.dir, sc.keep), (PathBuf::from("./data/snapshots"), 3));
        assert_eq!(run.pipeline.snapshots, sapphire_core::snapshot::SnapshotPolicy { every_events: 1_000_000, every_ns: 10_000_000_000 });
        let mut cfg: FileConfig = toml::from_str("[snapshot]\nevery_events = 5000\nkeep = 2\n").unwrap();
        apply_env(&mut cfg, &env_of(&[("SAPPHIRE_SNAPSHOT_EVERY_SECS", "30"), ("SAPPHIRE_SNAPSHOT_KEEP", "5")])).unwrap();
        let run = cfg.resolve().unwrap();
        assert_eq!(run.pipeline.snapshots.every_events, 5_000);
        assert_eq!(run.pipeline.snapshots.every_ns, 30_000_000_000);
        assert_eq!(run.snapshots.map(|s| s.keep), Some(5));
        let mut cfg = FileConfig::default();
        apply_env(&mut cfg, &env_of(&[("SAPPHIRE_SNAPSHOT_EVERY_EVENTS", "0"), ("SAPPHIRE_SNAPSHOT_EVERY_SECS", "0")])).unwrap();
        let run = cfg.resolve().unwrap();
        assert!(run.snapshots.is_none() && !run.pipeline.snapshots.enabled(), "both triggers off: no snapshots");
        let err = apply_env(&mut FileConfig::default(), &env_of(&[("SAPPHIRE_SNAPSHOT_EVERY_EVENTS", "often")])).unwrap_err();
        assert!(err.to_string().contains("SAPPHIRE_SNAPSHOT_EVERY_EVENTS"), "{err}");
    }

    #[test]
    fn retention_is_off_without_an_archive_and_its_keys_are_checked() {
        assert_eq!(FileConfig::default().resolve().unwrap().retention, None);
        let mut cfg: FileConfig =
            toml::from_str("[retention]\nevery_secs = 2\nkeep_output_hours = 0\nsink_cursor_file = \"/run/sink/cursor\"\n").unwrap();
        apply_env(&mut cfg, &env_of(&[("SAPPHIRE_ARCHIVE", "gs://bucket/sapphire")])).unwrap();
        let r = cfg.resolve().unwrap().retention.expect("on with an archive");
        assert_eq!(r.archive, "gs://bucket/sapphire");
        assert_eq!(r.every, std::time::Duration::from_secs(2));
        assert_eq!(r.keep_output, std::time::Duration::ZERO);
        assert_eq!(r.sink_cursor_file, Some(PathBuf::from("/run/sink/cursor")));
        for (toml_text, key) in [
            ("[retention]\narchive = \"s3://x\"\n", "retention.archive"),
            ("[retention]\narchive = \"gs://\"\n", "retention.archive"),
            ("[retention]\narchive = \"file://relative\"\n", "retention.archive"),
            ("[retention]\narchive = \"/a\"\nevery_secs = 0\n", "retention.every_secs"),
        ] {
            let cfg: FileConfig = toml::from_str(toml_text).unwrap();
            let e = cfg.resolve().unwrap_err().to_string();
            assert!(e.contains(key), "{toml_text}: {e}");
        }
    }

    #[test]
    fn old_platform_environment_names_work() {
        let mut cfg = FileConfig::default();
        apply_env(
            &mut cfg,
            &env_of(&[
                ("TRADING_SYMBOLS", "btcusdt, ETHUSDT"),
                ("ENABLE_PAPER_TRADING", "TRUE"),
                ("MAX_SYMBOLS_PER_AGENT", "1"),
                ("AGENT_CACHE_TTL_SECONDS", "30"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.market.symbols, vec!["BTCUSDT", "ETHUSDT"]);
        assert_eq!((cfg.agents.max_symbols_per_agent, cfg.agents.cache_ttl_seconds, cfg.paper.enabled), (1, 30, true));
        let run = cfg.resolve().unwrap();
        // One symbol per agent: half the budget per instrument.
        assert_eq!(run.engine.aggregate.target_notional, Money::from_units(500));
    }

    #[test]
    fn bad_values_name_the_key() {
        let mut cfg = FileConfig::default();
        let err = apply_env(&mut cfg, &env_of(&[("ENABLE_PAPER_TRADING", "maybe")])).unwrap_err();
        assert!(err.to_string().contains("ENABLE_PAPER_TRADING"), "{err}");
        let cases: &[(&str, &str)] = &[
            ("[engine]\nlayout = \"diagonal\"\n", "engine.layout"),
            ("[engine]\nwait = \"nap\"\n", "engine.wait"),
            ("[risk]\nagent_budget_usd = \"1e3\"\n", "risk.agent_budget_usd"),
            ("[risk]\ndrawdown_halt_pct = 250\n", "risk.drawdown_halt_pct"),
            ("[market]\nsource = \"kraken\"\n", "market.source"),
            ("[market]\nsource = \"binance\"\nvenue_market = \"coin-m\"\n", "market.venue_market"),
            ("[market]\nsource = \"bybit\"\nvenue_market = \"usdm\"\n", "market.venue_market"),
            ("[market]\nws_url = \"ws://127.0.0.1:1\"\n", "market.ws_url"),
            ("[journal]\ndurability = \"sometimes\"\n", "journal.durability"),
            ("[snapshot]\nkeep = 0\n", "snapshot.keep"),
            ("[snapshot]\nevery_secs = 100000\n", "snapshot.every_secs"),
            ("[paper]\nenabled = false\n", "ENABLE_PAPER_TRADING"),
            ("[paper]\nenabled = false\n[market]\nsource = \"binance\"\n[venue]\nmarket = \"kraken\"\n", "venue.market"),
            ("[api]\nbind = \"localhost\"\n", "api.bind"),
            ("[api]\ntoken_file = \"/nonexistent/sapphire-token\"\n", "api.token_file"),
            ("[redis]\nurl = \"http://127.0.0.1:6379\"\n", "redis.url"),
            ("[database]\nurl = \"mysql://x\"\n", "database.url"),
            ("[database]\nurl = \"postgres://127.0.0.1/x\"\nbatch_method = \"telepathy\"\n", "database.batch_method"),
            ("[redis]\nurl = \"redis://127.0.0.1\"\nprefix = \"a b\"\n", "redis.prefix"),
            // An agent id has one producer: Redis cannot be given the in-process runtime's ids.
            ("[redis]\nagents = [3]\n", "redis.agents"),
            ("[redis]\nagents = [16]\n", "redis.agents"),
            ("[redis]\nurl = \"redis://127.0.0.1\"\nagent_lease_ms = 5\n", "redis.agent_lease_ms"),
            // Amounts the fixed-point money cannot carry with headroom, and zero limits.
            ("[risk]\nagent_budget_usd = \"600000000\"\n", "risk.agent_budget_usd"),
            ("[risk]\nagent_budget_usd = \"0\"\n", "risk.agent_budget_usd"),
            ("[risk]\nmax_position_usd = \"0\"\n", "risk.max_position_usd"),
            ("[risk]\nmax_position_usd = \"100000000\"\n", "risk.max_position_usd"),
            ("[risk]\nmax_order_usd = \"0\"\n", "risk.max_order_usd"),
            ("[risk]\norders_per_sec = 0\n", "risk.orders_per_sec"),
            ("[risk]\norder_burst = 0\n", "risk.order_burst"),
            ("[risk]\nmax_open_orders = 0\n", "risk.max_open_orders"),
            ("[risk]\nmax_open_orders = 4000000000\n", "risk.max_open_orders"),
            ("[risk]\nstale_after_ms = 0\n", "risk.stale_after_ms"),
            ("[risk]\nstale_after_ms = 9200000000000000000\n", "risk.stale_after_ms"),
            ("[risk]\nstale_after_ms = 86400001\n", "risk.stale_after_ms"),
            ("[risk]\nflatten_attempts = 0\n", "risk.flatten_attempts"),
            ("[risk]\nflatten_retry_ms = 0\n", "risk.flatten_retry_ms"),
            ("[risk]\nflatten_retry_ms = 9200000000000000000\n", "risk.flatten_retry_ms"),
            ("[market]\ntimer_ms = 0\n", "market.timer_ms"),
            ("[market]\nmax_snapshots_per_minute = 0\n", "market.max_snapshots_per_minute"),
            ("[agents]\nmomentum_sample_ms = 0\n", "agents.momentum_sample_ms"),
            ("[paper]\ntaker_fee_bps = 1000000\n", "paper.taker_fee_bps"),
            ("[paper]\nmaker_fee_bps = -1001\n", "paper.maker_fee_bps"),
            ("[paper]\nlatency_us = 9223372036854775807\n", "paper.latency_us"),
            ("[engine]\nedge_core = 99999\n", "engine.edge_core"),
            ("[engine]\njournal_core = 99999\n", "engine.journal_core"),
            ("[engine]\nengine_cores = [99999]\n", "engine.engine_cores"),
            ("[engine]\nlayout = \"fused\"\nengine_cores = [0, 1]\n", "engine.engine_cores"),
            ("[engine]\nlayout = \"split\"\nengine_cores = [0, 0, 0, 0, 0]\n", "engine.engine_cores"),
        ];
        for (text, key) in cases {
            let cfg: FileConfig = toml::from_str(text).unwrap();
            let err = cfg.resolve().unwrap_err();
            assert!(err.to_string().contains(key), "{text}: {err}");
            assert!(err.downcast_ref::<ConfigError>().is_some());
        }
        let unknown = toml::from_str::<FileConfig>("[risk]\nmax_leverage = 3\n").unwrap_err();
        assert!(unknown.to_string().contains("max_leverage"), "{unknown}");
    }

    #[test]
    fn each_agent_id_has_one_owner_from_the_configuration() {
        let owners = |text: &str| toml::from_str::<FileConfig>(text).unwrap().resolve().unwrap().agent_owners.describe();
        // The default roster runs in process (2-8 and the arbitrator 9); Redis may carry the rest.
        assert_eq!(owners(""), "engine 0-1, in_process 2-9, redis 10-15");
        assert_eq!(owners("[redis]\nagents = [12, 13]\n"), "engine 0-1, in_process 2-9, redis 12-13");
        // With the runtime off (a core pod whose agents run in the agents Deployment) Redis owns them all.
        assert_eq!(owners("[agents.runtime]\nenabled = false\n"), "engine 0-1, redis 2-15");
    }

    #[test]
    fn trading_symbols_empty_means_every_listed_symbol_and_blank_entries_are_refused() {
        let mut cfg = FileConfig::default();
        apply_env(&mut cfg, &env_of(&[("TRADING_SYMBOLS", "")])).unwrap();
        assert!(cfg.market.symbols.is_empty());
        for blank in [",", " ", "BTCUSDT,", "BTCUSDT,,ETHUSDT"] {
            let err = parse_symbols("TRADING_SYMBOLS", blank).unwrap_err();
            assert!(err.to_string().contains("TRADING_SYMBOLS") && err.downcast_ref::<ConfigError>().is_some(), "{blank:?}: {err}");
        }
        assert_eq!(parse_symbols("--symbols", " btcusdt , ethusdt").unwrap(), ["BTCUSDT", "ETHUSDT"]);
    }

    #[test]
    fn the_largest_budget_that_fits_is_accepted_and_the_message_says_it() {
        // 16 agent slots share MONEY_HEADROOM (i64::MAX / 8 raw ≈ 1152921504.6 units).
        let ok: FileConfig = toml::from_str("[risk]\nagent_budget_usd = \"72000000\"\n").unwrap();
        assert_eq!(ok.resolve().unwrap().engine.risk.agent_budget, Money::from_units(72_000_000));
        let too_big: FileConfig = toml::from_str("[risk]\nagent_budget_usd = \"500000000\"\n").unwrap();
        let err = too_big.resolve().unwrap_err().to_string();
        assert!(err.contains("risk.agent_budget_usd") && err.contains("at most 72057594.03"), "{err}");
    }

    #[test]
    fn api_tokens_are_exact_but_a_token_file_may_end_with_a_newline() {
        let mut cfg = FileConfig::default();
        let err = apply_env(&mut cfg, &env_of(&[("SAPPHIRE_API_TOKEN", "secret ")])).unwrap_err();
        assert!(err.to_string().contains("SAPPHIRE_API_TOKEN") && err.downcast_ref::<ConfigError>().is_some(), "{err}");
        let file = std::env::temp_dir().join(format!("sapphire-token-exact-{}", std::process::id()));
        for (text, ok) in [("secret\n", true), ("secret", true), ("secret \n", false), ("secret\n\n", false)] {
            std::fs::write(&file, text).unwrap();
            let cfg: FileConfig = toml::from_str(&format!("[api]\ntoken_file = {:?}\n", file.display().to_string())).unwrap();
            match cfg.resolve() {
                Ok(run) => {
                    assert!(ok, "{text:?} was accepted");
                    let token = run.api.token.unwrap();
                    assert!(token.matches("secret") && !token.matches("secret "), "{text:?}");
                }
                Err(e) => assert!(!ok && e.to_string().contains("api.token_file"), "{text:?}: {e}"),
            }
        }
        let _ = std::fs::remove_file(&file);
    }

    #[test]
    fn the_example_file_is_the_defaults() {
        let file: FileConfig = toml::from_str(include_str!("../config/sapphire.example.toml")).unwrap();
        let (a, b) = (file.resolve().unwrap(), FileConfig::default().resolve().unwrap());
        assert_eq!(a.engine, b.engine);
        assert_eq!(a.pipeline, b.pipeline);
        assert_eq!((a.api.bind, a.api.token.is_none()), (b.api.bind, b.api.token.is_none()));
        assert_eq!(a.api_limits, b.api_limits);
        assert_eq!((&a.alerts, &a.report), (&b.alerts, &b.report));
        assert_eq!(a.agents, b.agents, "[agents.runtime] of the example is the default");
        assert_eq!(b.api.bind.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn the_api_token_comes_from_the_environment_or_a_file_and_stays_hidden() {
        let mut cfg = FileConfig::default();
        apply_env(&mut cfg, &env_of(&[("SAPPHIRE_API_TOKEN", "from-env-token"), ("SAPPHIRE_HTTP_BIND", "127.0.0.1:0")])).unwrap();
        let run = cfg.resolve().unwrap();
        assert!(run.api.token.as_ref().is_some_and(|t| t.matches("from-env-token")));
        assert_eq!(run.api.bind.port(), 0);
        for shown in [format!("{cfg:?}"), format!("{run:?}")] {
            assert!(!shown.contains("from-env-token"), "{shown}");
        }
        let file = std::env::temp_dir().join(format!("sapphire-token-{}", std::process::id()));
        std::fs::write(&file, "from-file-token\n").unwrap();
        let cfg: FileConfig = toml::from_str(&format!("[api]\ntoken_file = {:?}\n", file.display().to_string())).unwrap();
        let run = cfg.resolve().unwrap();
        assert!(run.api.token.as_ref().is_some_and(|t| t.matches("from-file-token")));
        let _ = std::fs::remove_file(&file);
    }

    #[test]
    fn the_images_default_address_replaces_loopback_but_not_a_files_or_the_operators_choice() {
        const IMAGE: &[(&str, &str)] = &[("SAPPHIRE_HTTP_BIND_DEFAULT", "0.0.0.0:8080")];
        const BOTH: &[(&str, &str)] = &[("SAPPHIRE_HTTP_BIND_DEFAULT", "0.0.0.0:8080"), ("SAPPHIRE_HTTP_BIND", "127.0.0.1:0")];
        // A laptop: loopback.
        let mut cfg = FileConfig::default();
        apply_env(&mut cfg, &env_of(&[])).unwrap();
        assert_eq!(cfg.resolve().unwrap().api.bind.to_string(), "127.0.0.1:8080");
        // The container image: every interface, so `docker run -p 8080:8080` reaches it.
        let mut cfg = FileConfig::default();
        apply_env(&mut cfg, &env_of(IMAGE)).unwrap();
        assert_eq!(cfg.resolve().unwrap().api.bind.to_string(), "0.0.0.0:8080");
        // A file that chose an address keeps it, even the loopback default written out.
        for chosen in ["127.0.0.1:8080", "127.0.0.1:9090"] {
            let mut cfg = parse_file(&format!("[api]\nbind = {chosen:?}\n")).unwrap();
            apply_env(&mut cfg, &env_of(IMAGE)).unwrap();
            assert_eq!(cfg.resolve().unwrap().api.bind.to_string(), chosen);
        }
        // A file without [api] bind takes the image's default.
        let mut cfg = parse_file("[run]\nstatus_every_ms = 500\n").unwrap();
        apply_env(&mut cfg, &env_of(IMAGE)).unwrap();
        assert_eq!(cfg.resolve().unwrap().api.bind.to_string(), "0.0.0.0:8080");
        // SAPPHIRE_HTTP_BIND (and --http-bind after it) win over everything.
        let mut cfg = parse_file("[api]\nbind = \"127.0.0.1:9090\"\n").unwrap();
        apply_env(&mut cfg, &env_of(BOTH)).unwrap();
        assert_eq!(cfg.resolve().unwrap().api.bind.port(), 0);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Some(std::time::Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Some(std::time::Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Some(std::time::Duration::from_secs(120)));
        assert_eq!(parse_duration("ten"), None);
        assert_eq!(parse_duration("5d"), None);
    }

    #[test]
    fn the_quic_section_binds_external_ids_to_tokens_from_files_and_refuses_the_rest() {
        assert!(FileConfig::default().resolve().unwrap().quic.is_none(), "off without a bind address");
        let token = std::env::temp_dir().join(format!("sapphire-quic-token-{}", std::process::id()));
        std::fs::write(&token, "agent-ten-secret\n").unwrap();
        let file = format!("[quic]\nbind = \"127.0.0.1:0\"\nagents = [{{ id = 10, token_file = {:?} }}]\n", token.display().to_string());
        let run = toml::from_str::<FileConfig>(&file).unwrap().resolve().unwrap();
        let quic = run.quic.as_ref().unwrap();
        assert_eq!((quic.agents.len(), quic.agents[0].id, quic.max_signals_per_sec), (1, 10, 50));
        assert!(quic.agents[0].token.matches("agent-ten-secret"));
        assert!(
            matches!(&quic.tls, sapphire_gateway::quic::ServerTls::SelfSigned { write_cert_to, .. } if write_cert_to.ends_with("quic/cert.pem"))
        );
        assert!(!format!("{run:?}").contains("agent-ten-secret"), "the token never shows");
        let tf = format!("token_file = {:?}", token.display().to_string());
        for (text, key) in [
            (format!("[quic]\nbind = \"nowhere\"\nagents = [{{ id = 10, {tf} }}]\n"), "quic.bind"),
            (format!("[quic]\nbind = \"127.0.0.1:0\"\ncert_file = \"/x.pem\"\nagents = [{{ id = 10, {tf} }}]\n"), "quic.cert_file"),
            ("[quic]\nbind = \"127.0.0.1:0\"\n".to_string(), "quic.agents"),
            (format!("[quic]\nbind = \"127.0.0.1:0\"\nagents = [{{ id = 1, {tf} }}]\n"), "id 1"),
            // Agent 3 is one of the in-process runtime's default roster, 9 its arbitrator.
            (format!("[quic]\nbind = \"127.0.0.1:0\"\nagents = [{{ id = 3, {tf} }}]\n"), "in-process"),
            (format!("[quic]\nbind = \"127.0.0.1:0\"\nagents = [{{ id = 9, {tf} }}]\n"), "in-process"),
            (
                "[quic]\nbind = \"127.0.0.1:0\"\nagents = [{ id = 10, token_env = \"SAPPHIRE_TEST_UNSET_TOKEN_VAR\" }]\n".to_string(),
                "not set",
            ),
            ("[quic]\nbind = \"127.0.0.1:0\"\nagents = [{ id = 10 }]\n".to_string(), "exactly one"),
            (format!("[quic]\nbind = \"127.0.0.1:0\"\nagents = [{{ id = 10, {tf} }}, {{ id = 10, {tf} }}]\n"), "twice"),
            (
                format!("[quic]\nbind = \"127.0.0.1:0\"\nmax_signals_per_sec = 0\nagents = [{{ id = 10, {tf} }}]\n"),
                "quic.max_signals_per_sec",
            ),
        ] {
            let err = toml::from_str::<FileConfig>(&text).unwrap().resolve().unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let _ = std::fs::remove_file(&token);
    }
}
