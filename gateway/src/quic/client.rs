//! The agent's side: connects to a core's QUIC ingress, says hello, sends signals, keeps a
//! local [`MarketBoard`] from the core's snapshot datagrams, reconnects with backoff.
//!
//! Signals go through a bounded queue to the link's task; a full queue, or a signal sent while
//! the link is down, is dropped and counted — a signal is advice with a time-to-live, never
//! worth queueing behind a dead connection.

use super::frames::{self, AgentFrame, CoreFrame, ReadError, Refusal, WireSignal, MAX_CORE_FRAME};
use super::tls::{self, ClientTrust};
use super::{AgentToken, QuicError};
use crate::connection::Backoff;
use rkyv::util::AlignedVec;
use sapphire_core::board::MarketBoard;
use sapphire_core::instrument::InstrumentId;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Link settings.
#[derive(Debug, Clone)]
pub struct AgentLinkConfig {
    /// The core's ingress, `host:port`.
    pub server: String,
    /// The name its certificate carries (`localhost` for the development certificate).
    pub server_name: String,
    /// What to trust.
    pub trust: ClientTrust,
    /// This agent's id.
    pub agent: u16,
    /// This agent's token.
    pub token: AgentToken,
    /// One connection attempt (QUIC handshake and hello) may take this long.
    pub connect_timeout: Duration,
    /// First reconnection delay (doubling, jittered).
    pub backoff_initial: Duration,
    /// Longest reconnection delay.
    pub backoff_max: Duration,
    /// Signals waiting to be sent, at most.
    pub queue: usize,
}

impl AgentLinkConfig {
    /// Defaults: server name `localhost`, 5 s to connect, backoff 100 ms doubling to 5 s, a
    /// queue of 1,024 signals.
    pub fn new(server: impl Into<String>, trust: ClientTrust, agent: u16, token: AgentToken) -> Self {
        Self {
            server: server.into(),
            server_name: "localhost".into(),
            trust,
            agent,
            token,
            connect_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            queue: 1_024,
        }
    }
}

/// The link's counters.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// True while a session is up.
    pub connected: AtomicBool,
    /// Sessions opened (the first included).
    pub connects: AtomicU64,
    /// Failed connection attempts.
    pub connect_failures: AtomicU64,
    /// Signals written to the core.
    pub sent: AtomicU64,
    /// Signals the core accepted.
    pub accepted: AtomicU64,
    /// Signals (and hellos) the core refused, by [`Refusal`] code.
    pub refused: [AtomicU64; Refusal::ALL.len()],
    /// Signals dropped before sending (queue full, or the link down).
    pub dropped: AtomicU64,
    /// Snapshot datagrams applied to the board.
    pub snapshots: AtomicU64,
    /// Datagrams that failed validation.
    pub bad_datagrams: AtomicU64,
    /// Why the link stopped for good (a terminal refusal), if it did.
    pub terminal: Mutex<Option<String>>,
}

impl LinkStats {
    /// Refusals for `reason` so far.
    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refused[reason as usize].load(Relaxed)
    }
}

/// Hands signals to the link; cheap to clone.
#[derive(Debug, Clone)]
pub struct SignalSender {
    tx: mpsc::Sender<WireSignal>,
    stats: Arc<LinkStats>,
}

impl SignalSender {
    /// Queues a signal; false (and counted as dropped) when the queue is full or the link is
    /// closed. Never waits.
    pub fn try_send(&self, s: WireSignal) -> bool {
        let ok = self.tx.try_send(s).is_ok();
        if !ok {
            self.stats.dropped.fetch_add(1, Relaxed);
        }
        ok
    }
}

/// A connected agent link.
#[derive(Debug)]
pub struct QuicAgentLink {
    instruments: Vec<String>,
    board: Arc<MarketBoard>,
    signals: SignalSender,
    stats: Arc<LinkStats>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// One connection with its stream.
struct Session {
    // The endpoint must outlive the connection.
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

/// The welcome's content.
struct Welcome {
    instruments: Vec<String>,
}

async fn open_session(config: &AgentLinkConfig, client: &quinn::ClientConfig) -> Result<(Session, Welcome), QuicError> {
    let connect_error = |reason: String| QuicError::Connect { addr: config.server.clone(), reason };
    let attempt = async {
        let addr: SocketAddr = tokio::net::lookup_host(&config.server)
            .await
            .map_err(|e| connect_error(e.to_string()))?
            .next()
            .ok_or_else(|| connect_error("the name resolves to no address".into()))?;
        let local: SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let mut endpoint = quinn::Endpoint::client(local).map_err(|e| connect_error(e.to_string()))?;
        endpoint.set_default_client_config(client.clone());
        let conn = endpoint
            .connect(addr, &config.server_name)
            .map_err(|e| connect_error(e.to_string()))?
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| connect_error(e.to_string()))?;
        let hello = AgentFrame::Hello { agent: config.agent, token: config.token.expose().to_string() };
        send.write_all(&frames::encode_agent(&hello)).await.map_err(|e| connect_error(e.to_string()))?;
        let mut buf = AlignedVec::<16>::new();
        match frames::read_frame(&mut recv, &mut buf, MAX_CORE_FRAME).await {
            Ok(Some(frames::PROTOCOL_VERSION)) => {}
            Ok(Some(v)) => return Err(QuicError::Protocol(format!("the core speaks frame version {v}"))),
            Ok(None) | Err(ReadError::Closed(_)) => return Err(QuicError::Protocol("the core closed the stream before answering".into())),
            Err(ReadError::Frame(e)) => return Err(QuicError::Protocol(e.to_string())),
        }
        match frames::decode_core(&buf).map_err(|e| QuicError::Protocol(e.to_string()))? {
            CoreFrame::Welcome { agent, instruments, .. } if agent == config.agent => {
                Ok((Session { _endpoint: endpoint, conn, send, recv }, Welcome { instruments }))
            }
            CoreFrame::Refused { reason, .. } => {
                conn.close(quinn::VarInt::from_u32(0), b"refused");
                Err(QuicError::Refused { agent: config.agent, reason })
            }
            other => Err(QuicError::Protocol(format!("expected a welcome, got {other:?}"))),
        }
    };
    match tokio::time::timeout(config.connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(connect_error(format!("no welcome within {:?}", config.connect_timeout))),
    }
}

impl QuicAgentLink {
    /// Connects (inside a tokio runtime) and starts the link's task. The first connection's
    /// failure is returned as is (a wrong token, an untrusted certificate, an unreachable
    /// core); later ones are retried with backoff, except terminal refusals.
    pub async fn connect(config: AgentLinkConfig) -> Result<Self, QuicError> {
        let client = tls::client_config(&config.trust)?;
        let (session, welcome) = open_session(&config, &client).await?;
        let stats = Arc::new(LinkStats::default());
        stats.connects.fetch_add(1, Relaxed);
        let board = Arc::new(MarketBoard::new(welcome.instruments.len()));
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run_link(
            config,
            client,
            session,
            welcome.instruments.clone(),
            Arc::clone(&board),
            rx,
            Arc::clone(&stats),
            stop_rx,
        ));
        Ok(Self { instruments: welcome.instruments, board, signals: SignalSender { tx, stats: Arc::clone(&stats) }, stats, stop, task })
    }

    /// The core's instrument symbols, in id order.
    pub fn instruments(&self) -> &[String] {
        &self.instruments
    }

    /// The local board the core's snapshots fill.
    pub fn board(&self) -> &Arc<MarketBoard> {
        &self.board
    }

    /// Where signals go.
    pub fn signals(&self) -> SignalSender {
        self.signals.clone()
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<LinkStats> {
        &self.stats
    }

    /// Finishes the stream (the core answers what it has read), closes, waits for the task.
    pub async fn close(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Counts the core's answers until the stream ends.
async fn read_answers(mut recv: quinn::RecvStream, stats: Arc<LinkStats>) {
    let mut buf = AlignedVec::<16>::new();
    while let Ok(Some(_)) = frames::read_frame(&mut recv, &mut buf, MAX_CORE_FRAME).await {
        match frames::decode_core(&buf) {
            Ok(CoreFrame::Accepted { .. }) => {
                stats.accepted.fetch_add(1, Relaxed);
            }
            Ok(CoreFrame::Refused { reason, .. }) => {
                stats.refused[reason as usize].fetch_add(1, Relaxed);
            }
            Ok(CoreFrame::Welcome { .. }) | Err(_) => {}
        }
    }
}

/// Applies snapshot datagrams to the board, newest per instrument only (datagrams may be
/// reordered), until the connection ends.
async fn read_snapshots(conn: quinn::Connection, board: Arc<MarketBoard>, stats: Arc<LinkStats>) {
    let mut last = vec![0u64; board.len()];
    while let Ok(datagram) = conn.read_datagram().await {
        match frames::decode_snapshot(&datagram) {
            Ok(snap) => {
                for t in &snap.tops {
                    if let Some(seen) = last.get_mut(t.instrument as usize).filter(|seen| snap.seq > **seen) {
                        *seen = snap.seq;
                        board.publish(InstrumentId(t.instrument), &t.to_top());
                    }
                }
                stats.snapshots.fetch_add(1, Relaxed);
            }
            Err(_) => {
                stats.bad_datagrams.fetch_add(1, Relaxed);
            }
        }
    }
}

/// How a session ended.
enum SessionEnd {
    /// Asked to stop (or every sender is gone).
    Stop,
    /// The connection was lost.
    Lost,
}

async fn serve_session(
    mut session: Session,
    board: &Arc<MarketBoard>,
    rx: &mut mpsc::Receiver<WireSignal>,
    stats: &Arc<LinkStats>,
    stop: &mut watch::Receiver<bool>,
) -> SessionEnd {
    stats.connected.store(true, Relaxed);
    let answers = tokio::spawn(read_answers(session.recv, Arc::clone(stats)));
    let snapshots = tokio::spawn(read_snapshots(session.conn.clone(), Arc::clone(board), Arc::clone(stats)));
    let end = loop {
        tokio::select! {
            s = rx.recv() => {
                let Some(s) = s else { break SessionEnd::Stop };
                if session.send.write_all(&frames::encode_agent(&AgentFrame::Signal(s))).await.is_err() {
                    stats.dropped.fetch_add(1, Relaxed);
                    break SessionEnd::Lost;
                }
                stats.sent.fetch_add(1, Relaxed);
            }
            _ = stop.changed() => break SessionEnd::Stop,
            _ = session.conn.closed() => break SessionEnd::Lost,
        }
    };
    stats.connected.store(false, Relaxed);
    if let SessionEnd::Stop = end {
        // Finish the stream and let the core answer what it read before closing.
        let _ = session.send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(2), answers).await;
        session.conn.close(quinn::VarInt::from_u32(0), b"agent stopping");
    } else {
        answers.abort();
    }
    snapshots.abort();
    end
}

#[allow(clippy::too_many_arguments)]
async fn run_link(
    config: AgentLinkConfig,
    client: quinn::ClientConfig,
    first: Session,
    instruments: Vec<String>,
    board: Arc<MarketBoard>,
    mut rx: mpsc::Receiver<WireSignal>,
    stats: Arc<LinkStats>,
    mut stop: watch::Receiver<bool>,
) {
    let seed = u64::from(config.agent) ^ u64::from(std::process::id()).rotate_left(17);
    let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max, seed);
    let mut session = Some(first);
    loop {
        if let Some(s) = session.take() {
            if let SessionEnd::Stop = serve_session(s, &board, &mut rx, &stats, &mut stop).await {
                return;
            }
            eprintln!("quic: agent {}: the connection to {} was lost; reconnecting", config.agent, config.server);
        }
        // Down: signals are dropped (counted) until the next session.
        let delay = backoff.next_delay();
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = stop.changed() => return,
                s = rx.recv() => match s {
                    Some(_) => { stats.dropped.fetch_add(1, Relaxed); }
                    None => return,
                },
            }
        }
        match open_session(&config, &client).await {
            Ok((s, welcome)) if welcome.instruments == instruments => {
                stats.connects.fetch_add(1, Relaxed);
                backoff.reset();
                session = Some(s);
            }
            Ok((s, _)) => {
                s.conn.close(quinn::VarInt::from_u32(0), b"instruments changed");
                let why = "the core's instrument list changed: restart the agent".to_string();
                eprintln!("quic: agent {}: {why}", config.agent);
                stats.terminal.lock().map(|mut t| *t = Some(why)).unwrap_or(());
                return;
            }
            Err(e) => {
                stats.connect_failures.fetch_add(1, Relaxed);
                if let QuicError::Refused { reason, .. } = &e {
                    stats.refused[*reason as usize].fetch_add(1, Relaxed);
                }
                if e.is_terminal() {
                    eprintln!("quic: agent {}: {e}; giving up", config.agent);
                    stats.terminal.lock().map(|mut t| *t = Some(e.to_string())).unwrap_or(());
                    return;
                }
                if backoff.attempts() <= 3 || backoff.attempts() % 20 == 0 {
                    eprintln!("quic: agent {}: {e}; retrying", config.agent);
                }
            }
        }
    }
}
