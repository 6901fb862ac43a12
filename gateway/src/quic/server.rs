//! The core's side: a quinn endpoint taking remote agents' signals into the inbound ring and
//! pushing market snapshots to them.
//!
//! One task per connection (mini-redis style: the listener accepts, a handler serves); each
//! handler owns a clone of the inbound ring's producer and publishes with `try_publish` —
//! the ingress never waits on the engine. A handler sends its agent a snapshot datagram of the
//! board every interval from a second task; datagrams are best effort, so a slow or lossy
//! agent sees fewer snapshots, never older ones.

use super::frames::{self, ArchivedAgentFrame, CoreFrame, ReadError, Refusal, Snapshot, WireTop, MAX_AGENT_FRAME};
use super::tls::{self, ServerTls};
use super::{is_external_agent, AgentToken, QuicError, TokenBucket};
use crate::api::MetricsWriter;
use rkyv::util::AlignedVec;
use sapphire_core::aggregate::MAX_AGENTS;
use sapphire_core::board::MarketBoard;
use sapphire_core::event::{AgentId, Event, Signal};
use sapphire_core::instrument::InstrumentId;
use sapphire_core::ring::Producer;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// QUIC application error code: the core closed the connection after a refusal.
pub const CLOSE_REFUSED: u32 = 1;
/// QUIC application error code: the core is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 2;

/// A remote agent the core accepts.
#[derive(Debug, Clone)]
pub struct RemoteAgent {
    /// Its id (an external id: `FIRST_EXTERNAL_AGENT..MAX_AGENTS`).
    pub id: u16,
    /// Its token.
    pub token: AgentToken,
}

/// Ingress settings.
#[derive(Debug, Clone)]
pub struct QuicIngressConfig {
    /// UDP address to listen on (port 0 picks a free one).
    pub bind: SocketAddr,
    /// The certificate.
    pub tls: ServerTls,
    /// The agents that may connect.
    pub agents: Vec<RemoteAgent>,
    /// Signals per second each agent may send (one second of burst).
    pub max_signals_per_sec: u32,
    /// How often each agent gets a market snapshot.
    pub snapshot_interval: Duration,
    /// A connection must say hello within this.
    pub hello_timeout: Duration,
    /// Connections at once; more are refused at the QUIC level.
    pub max_connections: usize,
}

impl QuicIngressConfig {
    /// Defaults around `bind`, `tls` and `agents`: 50 signals/s, snapshots every 100 ms, 5 s to
    /// say hello, 64 connections.
    pub fn new(bind: SocketAddr, tls: ServerTls, agents: Vec<RemoteAgent>) -> Self {
        Self {
            bind,
            tls,
            agents,
            max_signals_per_sec: 50,
            snapshot_interval: super::DEFAULT_SNAPSHOT_INTERVAL,
            hello_timeout: Duration::from_secs(5),
            max_connections: 64,
        }
    }

    /// Checks ids (external, unique) and values.
    pub fn validate(&self) -> Result<(), QuicError> {
        let mut seen = [false; MAX_AGENTS];
        for a in &self.agents {
            if !is_external_agent(a.id) {
                return Err(QuicError::Config(format!(
                    "agent id {} is not an external agent id ({}..{})",
                    a.id,
                    sapphire_core::aggregate::FIRST_EXTERNAL_AGENT,
                    MAX_AGENTS
                )));
            }
            if std::mem::replace(&mut seen[usize::from(a.id)], true) {
                return Err(QuicError::Config(format!("agent id {} is configured twice", a.id)));
            }
        }
        if self.snapshot_interval.is_zero() {
            return Err(QuicError::Config("the snapshot interval must be positive".into()));
        }
        Ok(())
    }
}

/// The ingress's counters, for `/metrics` and the run summary.
#[derive(Debug, Default)]
pub struct IngressStats {
    /// Connections whose hello was accepted.
    pub connections: AtomicU64,
    /// Connections open now (after their hello).
    pub active: AtomicU64,
    /// Connections that failed the QUIC/TLS handshake or never said hello in time.
    pub handshake_failures: AtomicU64,
    /// Signals taken into the inbound ring.
    pub signals_accepted: AtomicU64,
    /// Refusals, by [`Refusal`] code.
    pub refused: [AtomicU64; Refusal::ALL.len()],
    /// Snapshot datagrams sent.
    pub datagrams: AtomicU64,
    /// Snapshot datagrams the connection would not take (too large, peer does not accept them).
    pub datagrams_failed: AtomicU64,
}

impl IngressStats {
    /// Refusals for `reason` so far.
    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refused[reason as usize].load(Relaxed)
    }

    /// All refusals so far.
    pub fn refused_total(&self) -> u64 {
        self.refused.iter().map(|a| a.load(Relaxed)).sum()
    }

    /// Counts a refusal; returns the running total (for rate-limited logging).
    fn refuse(&self, reason: Refusal) -> u64 {
        self.refused[reason as usize].fetch_add(1, Relaxed);
        self.refused_total()
    }

    /// Writes the `sapphire_quic_*` families for `/metrics`.
    pub fn encode(&self, m: &mut MetricsWriter<'_>) {
        let r = |a: &AtomicU64| a.load(Relaxed);
        m.counter("sapphire_quic_connections_total", "Remote agent connections whose hello was accepted.", r(&self.connections));
        m.gauge("sapphire_quic_connections_active", "Remote agent connections open now.", r(&self.active) as i64);
        m.counter(
            "sapphire_quic_handshake_failures_total",
            "Connections that failed the QUIC/TLS handshake, sent no hello in time, or were over the connection cap.",
            r(&self.handshake_failures),
        );
        m.counter("sapphire_quic_signals_accepted_total", "Remote signals taken into the inbound ring.", r(&self.signals_accepted));
        m.counters(
            "sapphire_quic_refused_total",
            "Hellos and signals refused, by reason.",
            Refusal::ALL.map(|reason| ([("reason", reason.label())], self.refused(reason))),
        );
        m.counters(
            "sapphire_quic_snapshot_datagrams_total",
            "Market snapshot datagrams for agents, by outcome.",
            [([("outcome", "sent")], r(&self.datagrams)), ([("outcome", "failed")], r(&self.datagrams_failed))],
        );
    }

    /// The same families as Prometheus text (for tests and tools without an API server).
    pub fn write_metrics(self: &Arc<Self>, out: &mut String) {
        let stats = Arc::clone(self);
        out.push_str(&crate::api::metrics::render_with(move |m| stats.encode(m)));
    }
}

/// What every connection handler shares.
#[derive(Debug)]
struct Shared {
    config: QuicIngressConfig,
    /// Token per agent id (`None`: not configured).
    tokens: Vec<Option<AgentToken>>,
    /// Rate limit per agent id, shared by all of an agent's connections.
    buckets: Vec<Mutex<TokenBucket>>,
    names: Vec<String>,
    board: Arc<MarketBoard>,
    clock: fn() -> u64,
    stats: Arc<IngressStats>,
}

impl Shared {
    /// Logs the first refusals, then one in a thousand (the counters have them all).
    fn log_refusal(&self, n: u64, agent: Option<u16>, reason: Refusal, from: SocketAddr) {
        if n <= 10 || n % 1_000 == 0 {
            match agent {
                Some(a) => eprintln!("quic: refused agent {a} from {from}: {reason} ({n} refusals so far)"),
                None => eprintln!("quic: refused a connection from {from}: {reason} ({n} refusals so far)"),
            }
        }
    }
}

/// The core's QUIC ingress for remote agents.
#[derive(Debug)]
pub struct QuicIngress {
    endpoint: quinn::Endpoint,
    cert_path: Option<PathBuf>,
    shared: Arc<Shared>,
}

impl QuicIngress {
    /// Binds the endpoint (inside a tokio runtime). `names` are the instrument symbols in id
    /// order, `board` the core's market board, `clock` stamps signals (ns).
    pub fn bind(config: QuicIngressConfig, names: Vec<String>, board: Arc<MarketBoard>, clock: fn() -> u64) -> Result<Self, QuicError> {
        config.validate()?;
        let (server, cert_path) = tls::server_config(&config.tls)?;
        let endpoint =
            quinn::Endpoint::server(server, config.bind).map_err(|e| QuicError::Bind { addr: config.bind, reason: e.to_string() })?;
        let mut tokens = vec![None; MAX_AGENTS];
        for a in &config.agents {
            tokens[usize::from(a.id)] = Some(a.token.clone());
        }
        let now = Instant::now();
        let buckets = (0..MAX_AGENTS).map(|_| Mutex::new(TokenBucket::new(config.max_signals_per_sec, now))).collect();
        let shared = Arc::new(Shared { config, tokens, buckets, names, board, clock, stats: Arc::new(IngressStats::default()) });
        Ok(Self { endpoint, cert_path, shared })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().unwrap_or(self.shared.config.bind)
    }

    /// The self-signed certificate agents pin, when one was made.
    pub fn cert_path(&self) -> Option<&Path> {
        self.cert_path.as_deref()
    }

    /// The counters.
    pub fn stats(&self) -> Arc<IngressStats> {
        Arc::clone(&self.shared.stats)
    }

    /// Serves until `stop` is set; then closes every connection and drops every producer
    /// clone (so the ring can close after this returns).
    pub async fn run(self, producer: Producer<Event>, stop: Arc<AtomicBool>) -> Result<(), QuicError> {
        let mut handlers = tokio::task::JoinSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    if handlers.len() >= self.shared.config.max_connections {
                        incoming.refuse();
                        self.shared.stats.handshake_failures.fetch_add(1, Relaxed);
                        continue;
                    }
                    handlers.spawn(handle(incoming, Arc::clone(&self.shared), producer.clone()));
                }
                _ = tick.tick() => {
                    if stop.load(Relaxed) {
                        break;
                    }
                    // Reap finished handlers so the connection count stays true.
                    while handlers.try_join_next().is_some() {}
                }
            }
        }
        self.endpoint.close(quinn::VarInt::from_u32(CLOSE_SHUTDOWN), b"core shutting down");
        handlers.shutdown().await;
        drop(producer);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        Ok(())
    }
}

/// Aborts a helper task when its connection handler ends, however it ends (a handler aborted
/// at shutdown must not leave its snapshot task holding the connection).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Decrements the active gauge when a connection handler ends, however it ends.
struct ActiveGuard(Arc<IngressStats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

async fn send_frame(send: &mut quinn::SendStream, frame: &CoreFrame) -> bool {
    send.write_all(&frames::encode_core(frame)).await.is_ok()
}

/// Refuses a hello: says why, lets the agent read it, closes.
async fn refuse_hello(conn: &quinn::Connection, send: &mut quinn::SendStream, reason: Refusal) {
    let _ = send_frame(send, &CoreFrame::Refused { signal_id: 0, reason }).await;
    let _ = send.finish();
    // The agent closes when it has read the refusal; a silent one is closed after a second.
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
    conn.close(quinn::VarInt::from_u32(CLOSE_REFUSED), reason.label().as_bytes());
}

async fn handle(incoming: quinn::Incoming, shared: Arc<Shared>, producer: Producer<Event>) {
    let from = incoming.remote_address();
    let stats = Arc::clone(&shared.stats);
    let hello_timeout = shared.config.hello_timeout;
    let conn = match tokio::time::timeout(hello_timeout, incoming).await {
        Ok(Ok(c)) => c,
        _ => {
            stats.handshake_failures.fetch_add(1, Relaxed);
            return;
        }
    };
    let Ok(Ok((mut send, mut recv))) = tokio::time::timeout(hello_timeout, conn.accept_bi()).await else {
        stats.handshake_failures.fetch_add(1, Relaxed);
        conn.close(quinn::VarInt::from_u32(CLOSE_REFUSED), b"no stream");
        return;
    };
    let mut buf = AlignedVec::<16>::with_capacity(MAX_AGENT_FRAME);
    let hello = tokio::time::timeout(hello_timeout, frames::read_frame(&mut recv, &mut buf, MAX_AGENT_FRAME)).await;
    let agent = match hello {
        Ok(Ok(Some(frames::PROTOCOL_VERSION))) => authenticate_hello(&shared.tokens, &buf),
        Ok(Ok(Some(_)) | Err(ReadError::Frame(_))) => Err((None, Refusal::BadFrame)),
        Ok(Ok(None) | Err(ReadError::Closed(_))) | Err(_) => {
            stats.handshake_failures.fetch_add(1, Relaxed);
            conn.close(quinn::VarInt::from_u32(CLOSE_REFUSED), b"no hello");
            return;
        }
    };
    let agent = match agent {
        Ok(id) => id,
        Err((id, reason)) => {
            let n = stats.refuse(reason);
            shared.log_refusal(n, id, reason, from);
            refuse_hello(&conn, &mut send, reason).await;
            return;
        }
    };
    let welcome = CoreFrame::Welcome {
        agent,
        instruments: shared.names.clone(),
        snapshot_interval_ms: shared.config.snapshot_interval.as_millis().min(u128::from(u32::MAX)) as u32,
        max_signals_per_sec: shared.config.max_signals_per_sec,
    };
    if !send_frame(&mut send, &welcome).await {
        return;
    }
    stats.connections.fetch_add(1, Relaxed);
    stats.active.fetch_add(1, Relaxed);
    let _active = ActiveGuard(Arc::clone(&stats));
    let snapshots = AbortOnDrop(tokio::spawn(push_snapshots(conn.clone(), Arc::clone(&shared))));
    serve_signals(&shared, agent, from, &mut send, &mut recv, &mut buf, producer).await;
    drop(snapshots);
    let _ = send.finish();
    // Give the last answers a moment to leave, then close.
    let _ = tokio::time::timeout(Duration::from_millis(200), conn.closed()).await;
    conn.close(quinn::VarInt::from_u32(0), b"bye");
}

/// Who the hello frame in `buf` (an archive read off the stream) authenticates: the agent id
/// when it is a valid hello from a configured external agent (`tokens` by agent id) presenting
/// exactly its token; otherwise why not, with the id it claimed when it was a readable hello.
pub fn authenticate_hello(tokens: &[Option<AgentToken>], buf: &AlignedVec<16>) -> Result<u16, (Option<u16>, Refusal)> {
    match frames::access_agent(buf) {
        Ok(ArchivedAgentFrame::Hello { agent, token }) => {
            let id = agent.to_native();
            let configured = tokens.get(usize::from(id)).and_then(|t| t.as_ref()).filter(|_| is_external_agent(id));
            match configured {
                None => Err((Some(id), Refusal::UnknownAgent)),
                Some(t) if !t.matches(token.as_str()) => Err((Some(id), Refusal::BadToken)),
                Some(_) => Ok(id),
            }
        }
        _ => Err((None, Refusal::BadFrame)),
    }
}

/// Reads signals until the agent finishes its stream or the connection ends.
async fn serve_signals(
    shared: &Shared,
    agent: u16,
    from: SocketAddr,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    buf: &mut AlignedVec<16>,
    mut producer: Producer<Event>,
) {
    let stats = &shared.stats;
    loop {
        let answer = match frames::read_frame(recv, buf, MAX_AGENT_FRAME).await {
            Ok(None) | Err(ReadError::Closed(_)) => return,
            Err(ReadError::Frame(_)) => {
                // An oversized frame: the stream cannot be resynchronized. Refuse and close.
                let n = stats.refuse(Refusal::BadFrame);
                shared.log_refusal(n, Some(agent), Refusal::BadFrame, from);
                let _ = send_frame(send, &CoreFrame::Refused { signal_id: 0, reason: Refusal::BadFrame }).await;
                return;
            }
            Ok(Some(version)) if version != frames::PROTOCOL_VERSION => Err((0, Refusal::BadFrame)),
            Ok(Some(_)) => match frames::access_agent(buf) {
                Ok(ArchivedAgentFrame::Signal(s)) => {
                    let signal_id = s.signal_id.to_native();
                    match admit(shared, agent, s) {
                        Ok(signal) => match producer.try_publish(Event::Signal(signal)) {
                            Ok(_) => Ok(signal_id),
                            Err(_) => Err((signal_id, Refusal::RingFull)),
                        },
                        Err(reason) => Err((signal_id, reason)),
                    }
                }
                Ok(ArchivedAgentFrame::Hello { .. }) | Err(_) => Err((0, Refusal::BadFrame)),
            },
        };
        let reply = match answer {
            Ok(signal_id) => {
                stats.signals_accepted.fetch_add(1, Relaxed);
                CoreFrame::Accepted { signal_id }
            }
            Err((signal_id, reason)) => {
                let n = stats.refuse(reason);
                shared.log_refusal(n, Some(agent), reason, from);
                CoreFrame::Refused { signal_id, reason }
            }
        };
        if !send_frame(send, &reply).await {
            return;
        }
    }
}

/// Checks a signal's values and the agent's rate; the agent id is the connection's.
fn admit(shared: &Shared, agent: u16, s: &frames::ArchivedWireSignal) -> Result<Signal, Refusal> {
    let instrument = s.instrument.to_native();
    let (strength, confidence, ttl_ms) = (s.strength_bps.to_native(), s.confidence_bps.to_native(), s.ttl_ms.to_native());
    if instrument as usize >= shared.names.len()
        || !(-10_000..=10_000).contains(&strength)
        || confidence > 10_000
        || !(1..=3_600_000).contains(&ttl_ms)
    {
        return Err(Refusal::OutOfRange);
    }
    // Values are checked before the rate: a malformed signal does not spend a token.
    let allowed = shared.buckets[usize::from(agent)].lock().map(|mut b| b.take(Instant::now())).unwrap_or(false);
    if !allowed {
        return Err(Refusal::RateLimited);
    }
    let now = (shared.clock)();
    Ok(Signal {
        ts_event: now,
        ts_recv: now,
        instrument: InstrumentId(instrument),
        agent: AgentId(agent),
        strength_bps: strength,
        confidence_bps: confidence,
        ttl_ns: ttl_ms * 1_000_000,
        signal_id: s.signal_id.to_native(),
        ..Signal::default()
    })
}

/// Sends the board's tops to one agent every interval until the connection ends.
async fn push_snapshots(conn: quinn::Connection, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config.snapshot_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut seq = 0u64;
    loop {
        tick.tick().await;
        if conn.close_reason().is_some() {
            return;
        }
        let Some(max) = conn.max_datagram_size() else {
            shared.stats.datagrams_failed.fetch_add(1, Relaxed);
            continue;
        };
        let tops: Vec<WireTop> = (0..shared.board.len())
            .filter_map(|i| {
                let id = InstrumentId(i as u32);
                shared.board.read(id).map(|t| WireTop::from_top(id, &t))
            })
            .collect();
        if tops.is_empty() {
            continue;
        }
        seq += 1;
        for chunk in tops.chunks(frames::tops_per_datagram(max)) {
            let bytes = frames::encode_snapshot(&Snapshot { seq, tops: chunk.to_vec() });
            match conn.send_datagram(bytes.into()) {
                Ok(()) => shared.stats.datagrams.fetch_add(1, Relaxed),
                Err(_) => shared.stats.datagrams_failed.fetch_add(1, Relaxed),
            };
        }
    }
}
