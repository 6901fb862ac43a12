//! The Redis bus: fan-out of market data and engine outputs, and signal ingress for remote
//! agents (the platform this replaces ran its agents through Redis; remote agents still can).
//!
//! # Channels (`<prefix>` is `sapphire` by default, `<shard>` the core's shard, `main` by default)
//! Every key and channel is per shard, `<prefix>:<shard>:…`: cores of several shards share one
//! Redis without overwriting each other's instrument lists or mixing their outputs. A gateway
//! or agents process follows every shard it is configured for ([`ShardSet`](crate::bus::ShardSet),
//! [`read_shard_instruments`](crate::bus::read_shard_instruments),
//! [`run_shards_output_subscriber`](crate::bus::run_shards_output_subscriber)).
//!
//! | channel | what | delivery |
//! |---|---|---|
//! | `<prefix>:<shard>:ticks:<SYMBOL>` | top of book: `{"symbol","bid","bid_qty","ask","ask_qty","last_trade","ts_event","in_sync"}` | conflated per symbol: at most one per tick interval, the latest; dropped (and counted) while Redis is down |
//! | `<prefix>:<shard>:fills` | fills (`kind` `fill`) | every one, in order |
//! | `<prefix>:<shard>:orders` | orders and cancels sent (`kind` `order`) and other execution reports | every one, in order |
//! | `<prefix>:<shard>:signals` | agent signals as the engine saw them (`taken`) | every one, in order |
//! | `<prefix>:<shard>:pnl` | portfolio and per-agent PnL snapshots (`pnl`, `agent_pnl`) | every one, in order |
//! | `<prefix>:<shard>:risk` | refusals and guard alerts (`risk_refusal`, `risk_alert`) | every one, in order |
//! | `<prefix>:<shard>:outputs` | every output as bytes: `journal_seq:u64le` then the rkyv archive of the `Output` (validated by readers) — for Sapphire's own processes (the gateway role) | every one, in order |
//! | `<prefix>:<shard>:control:in` | **ingress**: operator control from a gateway: `ts_ns:u64le`, the rkyv archive of an `Event::Control`, then HMAC-SHA256 over both with the API token as key; the core takes it only with a valid MAC, a time within 30 s of its clock and a time later than the last one taken | each valid one becomes a `Control` event in the inbound ring (journaled, replayable) |
//! | `<prefix>:<shard>:signals:in` | **ingress**: signals from remote agents, `{"agent":u16,"symbol":"BTCUSDT","strength_bps":i32,"confidence_bps":u16,"ttl_ms":u64,"signal_id":u64,"producer":"pod-name"}` | each valid one becomes a `Signal` event in the inbound ring (and so the input journal); invalid ones are counted and logged. An agent id has one producer: ids the in-process runtime or QUIC own are refused here, and among Redis producers the first to send holds the id until it has been silent for `agent_lease` (`[redis] agent_lease_ms`) |
//!
//! Key `<prefix>:<shard>:instruments` holds the publishing core's instrument symbols, one per line in
//! id order (set on every connect), so other processes (the gateway role) name ids as it does.
//!
//! Output messages are the output journal's records as JSON (see [`crate::text`]): decimals
//! are exact strings, `journal_seq` orders them.
//!
//! # When Redis is down
//! The publisher reads outputs from the output journal on disk, so nothing needs buffering in
//! memory: it holds at most one batch, retries it after reconnecting (with capped, jittered
//! backoff), then carries on from its place in the journal — fills are never dropped. Ticks
//! are conflatable: while Redis is down they are dropped and counted. Redis pub/sub keeps no
//! history: a subscriber sees what is published while it is subscribed, and a publisher that
//! restarts begins at the journal's end (the Postgres sink is the durable record).

use crate::journal::{JournalError, Record, Tail};
use crate::shard::DEFAULT_SHARD;
use crate::text::{output_fields, to_json, Names};
use futures_util::StreamExt;
use sapphire_core::board::MarketBoard;
use sapphire_core::engine::{EngineOutput, Output};
use sapphire_core::event::{AgentId, Event, Signal};
use sapphire_core::instrument::InstrumentId;
use sapphire_core::ownership::{AgentOwners, Ingress, Leases};
use sapphire_core::ring::Producer;
use sapphire_core::risk::RiskOutput;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bus settings.
#[derive(Clone)]
pub struct BusConfig {
    /// `redis://host:port/db` (credentials in the URL are never logged).
    pub url: String,
    /// Channel prefix.
    pub prefix: String,
    /// The core's shard: every key and channel is `<prefix>:<shard>:…`, so cores sharing
    /// one Redis never overwrite each other's instrument lists or mix their outputs.
    pub shard: String,
    /// Conflation interval of tick messages.
    pub tick_interval: Duration,
    /// Outputs published per round trip.
    pub batch: usize,
    /// Ingress: a producer holds an agent id until it has been silent this long.
    pub agent_lease: Duration,
    /// This process's name as a signal producer (`"producer"` in the signals it publishes):
    /// [`default_producer`] unless set.
    pub producer: String,
}

impl std::fmt::Debug for BusConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusConfig")
            .field("url", &redact(&self.url))
            .field("prefix", &self.prefix)
            .field("shard", &self.shard)
            .field("tick_interval", &self.tick_interval)
            .field("batch", &self.batch)
            .field("agent_lease", &self.agent_lease)
            .field("producer", &self.producer)
            .finish()
    }
}

impl BusConfig {
    /// Defaults for `url`: prefix `sapphire`, shard [`DEFAULT_SHARD`], ticks every 100 ms,
    /// batches of 256.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "sapphire".into(),
            shard: DEFAULT_SHARD.into(),
            tick_interval: Duration::from_millis(100),
            batch: 256,
            agent_lease: Duration::from_secs(10),
            producer: default_producer(),
        }
    }

    /// `<prefix>:<shard>:<name>`: a key or channel of this shard.
    pub fn key(&self, name: &str) -> String {
        format!("{}:{}:{name}", self.prefix, self.shard)
    }

    /// The same settings for another shard (a gateway or agents process follows several).
    pub fn for_shard(&self, shard: &str) -> Self {
        Self { shard: shard.to_string(), ..self.clone() }
    }
}

/// This process's producer name: `SAPPHIRE_PRODUCER`, else `<host>/<pid>` (the host is a pod's
/// name on Kubernetes), so two processes on one machine are two producers.
pub fn default_producer() -> String {
    if let Some(name) = std::env::var("SAPPHIRE_PRODUCER").ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty()) {
        return name;
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_string());
    format!("{host}/{}", std::process::id())
}

/// A Redis URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// Counters of the bus, readable from any thread (for `/metrics` and `/readyz`).
#[derive(Debug, Default)]
pub struct BusStats {
    /// Connected to Redis now.
    pub connected: AtomicBool,
    /// Tick messages published.
    pub ticks: AtomicU64,
    /// Tick updates dropped while Redis was unreachable.
    pub ticks_dropped: AtomicU64,
    /// Output messages published.
    pub outputs: AtomicU64,
    /// Output journal sequence published up to (the next one to publish).
    pub cursor: AtomicU64,
    /// Connections made after the first.
    pub reconnects: AtomicU64,
    /// Failed connects and publishes.
    pub errors: AtomicU64,
    /// Remote signals taken into the ring.
    pub signals_in: AtomicU64,
    /// Remote signals refused (malformed, unknown symbol, out of range, not the id's owner).
    pub signals_refused: AtomicU64,
    /// Of those, refused because the agent id belongs to another ingress or producer.
    pub signals_refused_owner: AtomicU64,
    /// Signed operator controls taken into the ring.
    pub controls_in: AtomicU64,
    /// Control messages refused (bad signature, stale, replayed, malformed).
    pub controls_refused: AtomicU64,
    /// The last error, for `/readyz`.
    pub last_error: Mutex<Option<String>>,
}

impl BusStats {
    fn fail(&self, what: &str, e: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Relaxed);
        let text = format!("{what}: {e}");
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        // Logged once per change of state, not once per retry.
        if last.as_deref() != Some(text.as_str()) {
            eprintln!("redis: {text}");
        }
        *last = Some(text);
    }
}

/// Errors that end the bus (Redis being down is not one: it is retried).
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The URL does not parse.
    #[error("REDIS_URL {url}: {reason}")]
    Url {
        /// The URL, redacted.
        url: String,
        /// Why.
        reason: String,
    },
    /// The output journal could not be read.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// The channel an output goes to.
pub fn channel_of(o: &Output) -> &'static str {
    match o.output {
        EngineOutput::Exec(r) if r.last_qty.raw > 0 => "fills",
        EngineOutput::Order(_) | EngineOutput::Exec(_) => "orders",
        EngineOutput::Signal { .. } => "signals",
        EngineOutput::Pnl { .. } | EngineOutput::AgentPnl { .. } => "pnl",
        EngineOutput::Risk(RiskOutput::Refusal(_) | RiskOutput::Alert(_)) => "risk",
    }
}

fn tick_json(symbol: &str, t: &sapphire_core::board::Top) -> String {
    let mut out = String::with_capacity(192);
    out.push_str("{\"symbol\":");
    crate::text::json_str(&mut out, symbol);
    let _ = write!(
        out,
        ",\"bid\":\"{}\",\"bid_qty\":\"{}\",\"ask\":\"{}\",\"ask_qty\":\"{}\",\"last_trade\":\"{}\",\"ts_event\":{},\"in_sync\":{}}}",
        t.bid, t.bid_qty, t.ask, t.ask_qty, t.last_trade, t.ts_event, t.in_sync
    );
    out
}

async fn connect(client: &redis::Client) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    client.get_multiplexed_async_connection_with_config(&config).await
}

fn backoff(attempt: u32) -> Duration {
    let base = 100u64 << attempt.min(6);
    // Jitter from the clock's low bits: enough to keep reconnecting processes apart.
    let jitter =
        u64::from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos())) % (base / 2 + 1);
    Duration::from_millis((base + jitter).min(5_000))
}

/// How long a stopping publisher keeps publishing the outputs journaled before its stop.
const DRAIN_FOR: Duration = Duration::from_secs(5);

/// Publishes ticks from `board` and outputs from the output journal in `output_dir` (from
/// `from_seq` on) until `stop` is set, then the outputs already journaled (up to
/// [`DRAIN_FOR`]; not when Redis is down at that moment: the journal keeps them). Redis being
/// down is retried; only a bad URL or an unreadable journal ends it.
pub async fn run_publisher(
    config: BusConfig,
    output_dir: PathBuf,
    from_seq: u64,
    board: Arc<MarketBoard>,
    names: Vec<String>,
    stats: Arc<BusStats>,
    stop: Arc<AtomicBool>,
) -> Result<(), BusError> {
    let client = redis::Client::open(config.url.as_str()).map_err(|e| BusError::Url { url: redact(&config.url), reason: e.to_string() })?;
    let text_names = Names(names.clone());
    let mut tail = Tail::open(&output_dir, from_seq)?;
    stats.cursor.store(from_seq, Relaxed);
    let mut pending: Vec<(u64, &'static str, String, Vec<u8>)> = Vec::new();
    let mut seen_updates = vec![0u64; board.len()];
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    let mut attempt = 0u32;
    let mut ever_connected = false;
    let mut next_tick = tokio::time::Instant::now();
    let mut next_connect = tokio::time::Instant::now();
    // Set at the stop: the core's last outputs (its closing fills and PnL) are journaled just
    // before it, and a subscriber (the gateway role) must see them too.
    let mut drain_until = None;
    loop {
        if drain_until.is_none() && stop.load(Relaxed) {
            if ever_connected && conn.is_none() {
                break;
            }
            drain_until = Some(tokio::time::Instant::now() + DRAIN_FOR);
        }
        if drain_until.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
        if conn.is_none() && tokio::time::Instant::now() >= next_connect {
            match connect(&client).await {
                Ok(c) => {
                    if ever_connected {
                        stats.reconnects.fetch_add(1, Relaxed);
                    }
                    ever_connected = true;
                    attempt = 0;
                    stats.connected.store(true, Relaxed);
                    *stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    let mut c = c;
                    let key = config.key("instruments");
                    if let Err(e) = redis::cmd("SET").arg(&key).arg(names.join("\n")).query_async::<()>(&mut c).await {
                        stats.fail("recording the instruments", &e);
                    }
                    conn = Some(c);
                }
                Err(e) => {
                    stats.fail("connect", &e);
                    next_connect = tokio::time::Instant::now() + backoff(attempt);
                    attempt += 1;
                }
            }
        }
        // Ticks: the latest top of each symbol that changed, once per interval.
        if tokio::time::Instant::now() >= next_tick {
            next_tick = tokio::time::Instant::now() + config.tick_interval;
            let mut pipe = redis::pipe();
            let mut count = 0u64;
            for (i, seen) in seen_updates.iter_mut().enumerate() {
                let Some(top) = board.read(InstrumentId(i as u32)) else { continue };
                if top.updates == *seen {
                    continue;
                }
                *seen = top.updates;
                let symbol = names.get(i).map_or("?", String::as_str);
                pipe.publish(config.key(&format!("ticks:{symbol}")), tick_json(symbol, &top)).ignore();
                count += 1;
            }
            if count > 0 {
                match conn.as_mut() {
                    Some(c) => match pipe.query_async::<()>(c).await {
                        Ok(()) => {
                            stats.ticks.fetch_add(count, Relaxed);
                        }
                        Err(e) => {
                            stats.ticks_dropped.fetch_add(count, Relaxed);
                            stats.fail("publishing ticks", &e);
                            stats.connected.store(false, Relaxed);
                            conn = None;
                        }
                    },
                    None => {
                        stats.ticks_dropped.fetch_add(count, Relaxed);
                    }
                }
            }
        }
        // Outputs: one batch at a time, kept until Redis has taken it.
        if pending.is_empty() {
            let mut failed = None;
            let polled = tail.poll::<Output>(config.batch, |seq, o| {
                let mut json = String::with_capacity(256);
                to_json(&mut json, seq, &output_fields(o, &text_names));
                match encode_output_message(seq, o) {
                    Ok(bin) => pending.push((seq, channel_of(o), json, bin)),
                    Err(e) => failed = Some(e),
                }
            })?;
            if let Some(e) = failed {
                return Err(e.into());
            }
            if polled == 0 && drain_until.is_some() {
                break;
            }
        }
        if let (false, Some(c)) = (pending.is_empty(), conn.as_mut()) {
            let mut pipe = redis::pipe();
            let outputs_channel = config.key("outputs");
            for (_, channel, json, bin) in &pending {
                pipe.publish(config.key(channel), json).ignore();
                pipe.publish(&outputs_channel, bin.as_slice()).ignore();
            }
            match pipe.query_async::<()>(c).await {
                Ok(()) => {
                    stats.outputs.fetch_add(pending.len() as u64, Relaxed);
                    stats.cursor.store(pending.last().map_or(0, |p| p.0 + 1), Relaxed);
                    pending.clear();
                    continue;
                }
                Err(e) => {
                    stats.fail("publishing outputs", &e);
                    stats.connected.store(false, Relaxed);
                    conn = None;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stats.connected.store(false, Relaxed);
    Ok(())
}

/// The `<prefix>:<shard>:outputs` message for an output: its journal sequence, then its archive.
pub fn encode_output_message(seq: u64, o: &Output) -> Result<Vec<u8>, JournalError> {
    let archive = o.encode(rkyv::util::AlignedVec::new())?;
    let mut out = Vec::with_capacity(8 + archive.len());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&archive);
    Ok(out)
}

/// Reads a `<prefix>:<shard>:outputs` message, validating the archive (the bytes came over the network).
pub fn decode_output_message(payload: &[u8]) -> Result<(u64, Output), String> {
    if payload.len() < 9 {
        return Err(format!("{} bytes is too short", payload.len()));
    }
    let seq = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len() - 8);
    aligned.extend_from_slice(&payload[8..]);
    if !Output::validate(&aligned) {
        return Err("not a valid output archive".into());
    }
    Output::decode(&aligned).map(|o| (seq, o)).map_err(|e| e.to_string())
}

/// What a subscription follows.
enum Topics {
    /// Exact channel names.
    Channels(Vec<String>),
    /// One glob pattern.
    Pattern(String),
}

/// Follows `topics` until `stop`, handing each message to `handle`; (re)subscribes with
/// capped, jittered backoff whenever Redis is away. `connected` tracks the subscription in
/// `stats` (off for a follower that shares its stats with a publisher).
async fn follow(
    config: &BusConfig,
    what: &str,
    topics: Topics,
    stats: &BusStats,
    connected: bool,
    stop: &AtomicBool,
    mut handle: impl FnMut(&redis::Msg),
) -> Result<(), BusError> {
    let client = redis::Client::open(config.url.as_str()).map_err(|e| BusError::Url { url: redact(&config.url), reason: e.to_string() })?;
    let mut attempt = 0u32;
    while !stop.load(Relaxed) {
        let subscribed = match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                let result = match &topics {
                    Topics::Pattern(p) => pubsub.psubscribe(p).await,
                    Topics::Channels(names) => {
                        let mut r = Ok(());
                        for name in names {
                            r = r.and(pubsub.subscribe(name).await);
                        }
                        r
                    }
                };
                result.map(|()| pubsub)
            }
            Err(e) => Err(e),
        };
        let pubsub = match subscribed {
            Ok(p) => p,
            Err(e) => {
                if connected {
                    stats.connected.store(false, Relaxed);
                }
                stats.fail(&format!("subscribing to {what}"), &e);
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
                continue;
            }
        };
        attempt = 0;
        if connected {
            stats.connected.store(true, Relaxed);
        }
        let mut messages = pubsub.into_on_message();
        loop {
            let next = tokio::time::timeout(Duration::from_millis(100), messages.next()).await;
            if stop.load(Relaxed) {
                return Ok(());
            }
            match next {
                Err(_) => continue,
                Ok(None) => break,
                Ok(Some(m)) => handle(&m),
            }
        }
        if connected {
            stats.connected.store(false, Relaxed);
        }
        stats.fail(&format!("{what} subscription"), &"connection closed");
    }
    Ok(())
}

/// Follows `<prefix>:<shard>:outputs` (the gateway role's view of a core) until `stop`, handing each
/// output to `f`; resubscribes after Redis comes back. Pub/sub keeps nothing while a
/// subscriber is away: jumps in the sequence are counted in `gaps`.
pub async fn run_output_subscriber(
    config: BusConfig,
    stats: Arc<BusStats>,
    gaps: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    mut f: impl FnMut(u64, &Output) + Send,
) -> Result<(), BusError> {
    let mut next: Option<u64> = None;
    let topics = Topics::Channels(vec![config.key("outputs")]);
    follow(&config, "outputs", topics, &stats, true, &stop, |msg| match decode_output_message(msg.get_payload_bytes()) {
        Ok((seq, o)) => {
            if next.is_some_and(|n| seq > n) {
                gaps.fetch_add(1, Relaxed);
            }
            next = Some(seq + 1);
            stats.outputs.fetch_add(1, Relaxed);
            stats.cursor.store(seq + 1, Relaxed);
            f(seq, &o);
        }
        Err(e) => stats.fail("an output message", &e),
    })
    .await
}

/// The instrument symbols a core recorded under `<prefix>:<shard>:instruments` (id order); waits,
/// retrying, until one has (or `stop`).
pub async fn read_instruments(config: &BusConfig, stop: &AtomicBool) -> Result<Option<Vec<String>>, BusError> {
    let client = redis::Client::open(config.url.as_str()).map_err(|e| BusError::Url { url: redact(&config.url), reason: e.to_string() })?;
    let key = config.key("instruments");
    let mut attempt = 0u32;
    while !stop.load(Relaxed) {
        if let Ok(mut c) = connect(&client).await {
            if let Ok(Some(text)) = redis::cmd("GET").arg(&key).query_async::<Option<String>>(&mut c).await {
                return Ok(Some(text.lines().map(str::to_string).collect()));
            }
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt = (attempt + 1).min(4);
    }
    Ok(None)
}

/// Publishes a signed control message on `<prefix>:<shard>:control:in`; returns how many cores took
/// delivery (subscribers).
pub async fn publish_control(conn: &mut redis::aio::MultiplexedConnection, config: &BusConfig, signed: &[u8]) -> redis::RedisResult<i64> {
    redis::cmd("PUBLISH").arg(config.key("control:in")).arg(signed).query_async(conn).await
}

/// A multiplexed connection with this module's timeouts.
pub async fn connection(config: &BusConfig) -> Result<redis::aio::MultiplexedConnection, String> {
    let client = redis::Client::open(config.url.as_str()).map_err(|e| format!("REDIS_URL {}: {e}", redact(&config.url)))?;
    connect(&client).await.map_err(|e| format!("redis {}: {e}", redact(&config.url)))
}

#[derive(serde::Deserialize)]
struct TickMessage<'a> {
    symbol: &'a str,
    bid: &'a str,
    bid_qty: &'a str,
    ask: &'a str,
    ask_qty: &'a str,
    last_trade: &'a str,
    ts_event: u64,
    in_sync: bool,
}

/// Reads a `<prefix>:<shard>:ticks:<SYMBOL>` message into the instrument id (by `names`) and its top.
pub fn parse_tick(payload: &[u8], names: &[String]) -> Result<(InstrumentId, sapphire_core::board::Top), String> {
    use sapphire_core::fixed::{Price, Quantity};
    let t: TickMessage<'_> = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    let id = names.iter().position(|n| n == t.symbol).ok_or_else(|| format!("unknown symbol {:?}", t.symbol))?;
    let px = |s: &str| Price::parse(s).map_err(|e| format!("{s:?}: {e:?}"));
    let qty = |s: &str| Quantity::parse(s).map_err(|e| format!("{s:?}: {e:?}"));
    Ok((
        InstrumentId(id as u32),
        sapphire_core::board::Top {
            bid: px(t.bid)?,
            bid_qty: qty(t.bid_qty)?,
            ask: px(t.ask)?,
            ask_qty: qty(t.ask_qty)?,
            last_trade: px(t.last_trade)?,
            ts_event: t.ts_event,
            updates: 0,
            in_sync: t.in_sync,
        },
    ))
}

/// Follows `<prefix>:<shard>:ticks:*` into a local board (the agents role's market context) until
/// `stop`; resubscribes after Redis comes back. Bad messages are counted and skipped.
pub async fn run_tick_subscriber(
    config: BusConfig,
    names: Vec<String>,
    board: Arc<MarketBoard>,
    stats: Arc<BusStats>,
    stop: Arc<AtomicBool>,
) -> Result<(), BusError> {
    let topics = Topics::Pattern(config.key("ticks:*"));
    follow(&config, "ticks", topics, &stats, true, &stop, |msg| match parse_tick(msg.get_payload_bytes(), &names) {
        Ok((id, top)) => {
            board.publish(id, &top);
            stats.ticks.fetch_add(1, Relaxed);
        }
        Err(e) => stats.fail("a tick message", &e),
    })
    .await
}

/// Publishes a signal as a remote agent would (`<prefix>:<shard>:signals:in`, the documented JSON).
pub async fn publish_signal(
    conn: &mut redis::aio::MultiplexedConnection,
    config: &BusConfig,
    names: &[String],
    s: &Signal,
) -> redis::RedisResult<i64> {
    let symbol = names.get(s.instrument.index()).map_or("?", String::as_str);
    let mut json = String::with_capacity(160);
    json.push_str("{\"agent\":");
    let _ = write!(json, "{},\"symbol\":", s.agent.0);
    crate::text::json_str(&mut json, symbol);
    json.push_str(",\"producer\":");
    crate::text::json_str(&mut json, &config.producer);
    let _ = write!(
        json,
        ",\"strength_bps\":{},\"confidence_bps\":{},\"ttl_ms\":{},\"signal_id\":{}}}",
        s.strength_bps,
        s.confidence_bps,
        (s.ttl_ns / 1_000_000).clamp(1, 3_600_000),
        s.signal_id
    );
    redis::cmd("PUBLISH").arg(config.key("signals:in")).arg(json).query_async(conn).await
}

/// Signs an operator's control event for `<prefix>:<shard>:control:in` with the API token.
pub fn sign_control(event: &Event, ts_ns: u64, token: &[u8]) -> Result<Vec<u8>, JournalError> {
    let archive = event.encode(rkyv::util::AlignedVec::new())?;
    let mut out = Vec::with_capacity(8 + archive.len() + 32);
    out.extend_from_slice(&ts_ns.to_le_bytes());
    out.extend_from_slice(&archive);
    let mac = control_mac(token, &out);
    out.extend_from_slice(&mac);
    Ok(out)
}

fn control_mac(token: &[u8], bytes: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(token).expect("HMAC takes keys of any length");
    mac.update(bytes);
    mac.finalize().into_bytes().into()
}

/// Why a control message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlRefusal {
    /// Too short or not a control event.
    #[error("malformed control message")]
    Malformed,
    /// The MAC does not match the token.
    #[error("bad signature")]
    BadSignature,
    /// Older than the last taken, or too far from this clock.
    #[error("stale or replayed (ts {0})")]
    Stale(u64),
}

/// Verifies a signed control message: the MAC (constant time), then freshness against `now`
/// and `last` (the time of the last one taken), then the event itself.
pub fn verify_control(payload: &[u8], token: &[u8], now: u64, last: u64) -> Result<(u64, Event), ControlRefusal> {
    use hmac::Mac;
    if payload.len() < 8 + 32 + 1 {
        return Err(ControlRefusal::Malformed);
    }
    let (body, mac) = payload.split_at(payload.len() - 32);
    let mut check = hmac::Hmac::<sha2::Sha256>::new_from_slice(token).expect("HMAC takes keys of any length");
    check.update(body);
    check.verify_slice(mac).map_err(|_| ControlRefusal::BadSignature)?;
    let ts = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
    if ts <= last || ts.abs_diff(now) > 30_000_000_000 {
        return Err(ControlRefusal::Stale(ts));
    }
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len() - 8);
    aligned.extend_from_slice(&body[8..]);
    if !Event::validate(&aligned) {
        return Err(ControlRefusal::Malformed);
    }
    match Event::decode(&aligned) {
        Ok(e @ Event::Control(_)) => Ok((ts, e)),
        _ => Err(ControlRefusal::Malformed),
    }
}

/// Why a remote signal was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalRefusal {
    /// Not the documented JSON object.
    #[error("malformed: {0}")]
    Malformed(String),
    /// No such symbol in this engine.
    #[error("unknown symbol {0:?}")]
    UnknownSymbol(String),
    /// A value out of its range.
    #[error("{0}")]
    OutOfRange(&'static str),
    /// The agent id belongs to another ingress or producer.
    #[error("agent {agent} from producer {producer:?}: {reason}")]
    NotOwner {
        /// The agent id.
        agent: u16,
        /// The producer that sent it.
        producer: String,
        /// Why (with the holder, when another producer holds it).
        reason: String,
        /// The refusal's label ([`sapphire_core::ownership::OwnershipRefusal::as_str`]).
        label: &'static str,
    },
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoteSignal {
    agent: u16,
    symbol: String,
    strength_bps: i32,
    confidence_bps: u16,
    ttl_ms: u64,
    #[serde(default)]
    signal_id: u64,
    /// Who sent it (one producer per agent id); absent: the anonymous producer.
    #[serde(default)]
    producer: String,
}

/// Parses and checks a remote agent's signal; `now` stamps it (ns).
pub fn parse_remote_signal(payload: &[u8], names: &[String], now: u64) -> Result<Signal, SignalRefusal> {
    parse_remote_signal_from(payload, names, now).map(|(s, _)| s)
}

/// [`parse_remote_signal`], with the name of the producer that sent it.
pub fn parse_remote_signal_from(payload: &[u8], names: &[String], now: u64) -> Result<(Signal, String), SignalRefusal> {
    let r: RemoteSignal = serde_json::from_slice(payload).map_err(|e| SignalRefusal::Malformed(e.to_string()))?;
    if r.producer.len() > 128 {
        return Err(SignalRefusal::OutOfRange("producer must be at most 128 bytes"));
    }
    let instrument = names.iter().position(|n| *n == r.symbol).ok_or_else(|| SignalRefusal::UnknownSymbol(r.symbol.clone()))?;
    if !(-10_000..=10_000).contains(&r.strength_bps) {
        return Err(SignalRefusal::OutOfRange("strength_bps must be within -10000..=10000"));
    }
    if r.confidence_bps > 10_000 {
        return Err(SignalRefusal::OutOfRange("confidence_bps must be within 0..=10000"));
    }
    if usize::from(r.agent) < usize::from(sapphire_core::aggregate::FIRST_EXTERNAL_AGENT)
        || usize::from(r.agent) >= sapphire_core::aggregate::MAX_AGENTS
    {
        return Err(SignalRefusal::OutOfRange("agent is not an external agent id"));
    }
    if r.ttl_ms == 0 || r.ttl_ms > 3_600_000 {
        return Err(SignalRefusal::OutOfRange("ttl_ms must be within 1..=3600000"));
    }
    let signal = Signal {
        ts_event: now,
        ts_recv: now,
        instrument: InstrumentId(instrument as u32),
        agent: AgentId(r.agent),
        strength_bps: r.strength_bps,
        confidence_bps: r.confidence_bps,
        ttl_ns: r.ttl_ms * 1_000_000,
        signal_id: r.signal_id,
        ..Signal::default()
    };
    Ok((signal, r.producer))
}

/// Takes remote agents' signals from `<prefix>:<shard>:signals:in` — and, with an API token, signed
/// operator control from `<prefix>:<shard>:control:in` — into the inbound ring until `stop` is set;
/// resubscribes after Redis comes back. A signal for an agent id that `owners` gives to another
/// ingress, or that another producer holds ([`BusConfig::agent_lease`]), is refused and counted.
#[allow(clippy::too_many_arguments)]
pub async fn run_signal_ingress(
    config: BusConfig,
    names: Vec<String>,
    owners: AgentOwners,
    mut producer: Producer<Event>,
    clock: fn() -> u64,
    control_token: Option<Vec<u8>>,
    stats: Arc<BusStats>,
    stop: Arc<AtomicBool>,
) -> Result<(), BusError> {
    let channel = config.key("signals:in");
    let control_channel = config.key("control:in");
    let mut channels = vec![channel];
    if control_token.is_some() {
        channels.push(control_channel.clone());
    }
    let mut last_control = 0u64;
    let mut leases: Leases<String> = Leases::new(u64::try_from(config.agent_lease.as_nanos()).unwrap_or(u64::MAX));
    follow(&config, "remote signals", Topics::Channels(channels), &stats, false, &stop, |msg| {
        if msg.get_channel_name() == control_channel {
            let Some(token) = &control_token else { return };
            match verify_control(msg.get_payload_bytes(), token, clock(), last_control) {
                Ok((ts, event)) => {
                    last_control = ts;
                    if producer.try_publish(event).is_ok() {
                        stats.controls_in.fetch_add(1, Relaxed);
                        eprintln!("redis: operator control taken: {event:?}");
                    } else {
                        stats.controls_refused.fetch_add(1, Relaxed);
                        eprintln!("redis: operator control refused: the inbound ring is full");
                    }
                }
                Err(e) => {
                    stats.controls_refused.fetch_add(1, Relaxed);
                    eprintln!("redis: operator control refused: {e}");
                }
            }
            return;
        }
        let now = clock();
        let parsed = parse_remote_signal_from(msg.get_payload_bytes(), &names, now).and_then(|(signal, from)| {
            let owned = owners.check(signal.agent, Ingress::Redis).and_then(|()| leases.claim(signal.agent, &from, now));
            match owned {
                Ok(Some(previous)) => {
                    eprintln!(
                        "redis: agent {} passes from producer {previous:?} to {from:?} (the holder was silent for the lease)",
                        signal.agent.0
                    );
                    Ok(signal)
                }
                Ok(None) => Ok(signal),
                Err(reason) => {
                    stats.signals_refused_owner.fetch_add(1, Relaxed);
                    let holder = leases.holder(signal.agent).map(|h| format!(" (held by {h:?})")).unwrap_or_default();
                    Err(SignalRefusal::NotOwner {
                        agent: signal.agent.0,
                        producer: from,
                        reason: format!("{reason}{holder}"),
                        label: reason.as_str(),
                    })
                }
            }
        });
        match parsed {
            // Never wait on a full ring from here: a refused signal is counted.
            Ok(signal) => {
                if producer.try_publish(Event::Signal(signal)).is_ok() {
                    stats.signals_in.fetch_add(1, Relaxed);
                } else {
                    stats.signals_refused.fetch_add(1, Relaxed);
                }
            }
            Err(e) => {
                let n = stats.signals_refused.fetch_add(1, Relaxed) + 1;
                // Hostile or broken publishers must not flood the log: the first ten, then one
                // in a thousand (the counter has them all).
                if n <= 10 || n % 1_000 == 0 {
                    eprintln!("redis: remote signal refused ({n} so far): {e}");
                }
            }
        }
    })
    .await
}

mod shards;
pub use shards::{read_shard_instruments, run_shards_output_subscriber, ShardInstruments, ShardMerger, ShardSet};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod tick_tests {
    use super::*;

    #[test]
    fn tick_messages_round_trip_through_their_json() {
        let names = vec!["BTCUSDT".to_string(), "ETHUSDT".to_string()];
        let top = sapphire_core::board::Top {
            bid: sapphire_core::fixed::Price::from_raw(2_650_330_000_000),
            bid_qty: sapphire_core::fixed::Quantity::from_raw(12_345),
            ask: sapphire_core::fixed::Price::from_raw(2_650_340_000_000),
            ask_qty: sapphire_core::fixed::Quantity::from_raw(1),
            last_trade: sapphire_core::fixed::Price::from_raw(2_650_330_000_001),
            ts_event: 77,
            updates: 0,
            in_sync: true,
        };
        let json = tick_json("ETHUSDT", &top);
        assert_eq!(parse_tick(json.as_bytes(), &names).unwrap(), (InstrumentId(1), top));
        assert!(parse_tick(tick_json("DOGE", &top).as_bytes(), &names).is_err());
        assert!(parse_tick(b"{\"symbol\":\"BTCUSDT\"}", &names).is_err());
        assert!(parse_tick(json.replace("2650.33", "2x50").as_bytes(), &names).is_err());
    }
}
