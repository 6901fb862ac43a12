//! Remote agents over real QUIC on loopback: quinn endpoints on 127.0.0.1:0, a real inbound
//! ring, the agent link or raw frames. A good signal lands in the ring; wrong tokens, unknown
//! agents, garbage, oversized frames, out-of-range values and rate overruns are refused and
//! counted; snapshots reach the agent's board; the link reconnects after the core restarts.

use rkyv::util::AlignedVec;
use sapphire_core::board::{MarketBoard, Top};
use sapphire_core::event::{AgentId, Event, Signal};
use sapphire_core::fixed::{Price, Quantity};
use sapphire_core::instrument::InstrumentId;
use sapphire_core::ring::{ring, Consumer, Poll};
use sapphire_gateway::quic::frames::{self, AgentFrame, CoreFrame, WireSignal, MAX_CORE_FRAME};
use sapphire_gateway::quic::tls::client_config;
use sapphire_gateway::quic::{
    AgentLinkConfig, AgentToken, ClientTrust, IngressStats, QuicAgentLink, QuicError, QuicIngress, QuicIngressConfig, Refusal, RemoteAgent,
    ServerTls,
};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NAMES: [&str; 2] = ["BTCUSDT", "ETHUSDT"];

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sapphire-quic-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn clock() -> u64 {
    1_700_000_000_000_000_000
}

fn top(bid: i64) -> Top {
    Top {
        bid: Price::from_units(bid),
        bid_qty: Quantity::from_units(2),
        ask: Price::from_units(bid + 1),
        ask_qty: Quantity::from_units(3),
        ts_event: 42,
        in_sync: true,
        ..Top::default()
    }
}

/// A core's ingress on a free port, with agents 3 (`tok-3`) and 4 (`tok-4`).
struct Core {
    addr: String,
    cert: PathBuf,
    stats: Arc<IngressStats>,
    board: Arc<MarketBoard>,
    consumer: Consumer<Event>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<(), QuicError>>,
}

impl Core {
    fn start(dir: &std::path::Path, tune: impl FnOnce(&mut QuicIngressConfig)) -> Core {
        let cert = dir.join("quic/cert.pem");
        let tls = ServerTls::SelfSigned { write_cert_to: cert.clone(), names: vec!["localhost".into(), "127.0.0.1".into()] };
        let agents = [3u16, 4].iter().map(|&id| RemoteAgent { id, token: AgentToken::new(&format!("tok-{id}")).unwrap() }).collect();
        let mut config = QuicIngressConfig::new("127.0.0.1:0".parse().unwrap(), tls, agents);
        config.snapshot_interval = Duration::from_millis(20);
        tune(&mut config);
        Self::start_with(config, cert)
    }

    fn start_with(config: QuicIngressConfig, cert: PathBuf) -> Core {
        let board = Arc::new(MarketBoard::new(NAMES.len()));
        let (producer, mut consumers) = ring::<Event>(1_024, 1);
        let names: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
        // A restarted core's address may still be held for a moment by the stopped endpoint's
        // driver task (it lets go of the socket when its last handle is gone).
        let deadline = Instant::now() + Duration::from_secs(2);
        let ingress = loop {
            match QuicIngress::bind(config.clone(), names.clone(), Arc::clone(&board), clock) {
                Ok(i) => break i,
                Err(QuicError::Bind { .. }) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("the ingress binds: {e}"),
            }
        };
        let addr = ingress.local_addr().to_string();
        let stats = ingress.stats();
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(ingress.run(producer, Arc::clone(&stop)));
        Core { addr, cert, stats, board, consumer: consumers.remove(0), stop, task }
    }

    /// Every signal in the ring so far.
    fn signals(&mut self) -> Vec<Signal> {
        let mut out = Vec::new();
        while let Poll::Handled(_) = self.consumer.poll(1_024, |e, _, _| {
            if let Event::Signal(s) = e {
                out.push(*s);
            }
        }) {}
        out
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the ingress task ends").expect("the ingress stops cleanly");
    }
}

fn link_config(core: &Core, agent: u16, token: &str) -> AgentLinkConfig {
    let mut c = AgentLinkConfig::new(core.addr.clone(), ClientTrust::Pinned(core.cert.clone()), agent, AgentToken::new(token).unwrap());
    c.backoff_initial = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(200);
    c
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn signal(instrument: u32, signal_id: u64) -> WireSignal {
    WireSignal { instrument, strength_bps: 6_000, confidence_bps: 8_000, ttl_ms: 30_000, signal_id }
}

/// A raw agent: QUIC connection and stream, frames written by hand.
struct RawAgent {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: AlignedVec<16>,
}

impl RawAgent {
    async fn connect(core: &Core) -> RawAgent {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(client_config(&ClientTrust::Pinned(core.cert.clone())).unwrap());
        let conn = endpoint.connect(core.addr.parse().unwrap(), "localhost").unwrap().await.expect("QUIC handshake");
        let (send, recv) = conn.open_bi().await.unwrap();
        RawAgent { _endpoint: endpoint, conn, send, recv, buf: AlignedVec::new() }
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.expect("the stream takes bytes");
    }

    /// The next answer, or `None` when the core ended the stream or connection.
    async fn answer(&mut self) -> Option<CoreFrame> {
        let read = tokio::time::timeout(Duration::from_secs(5), frames::read_frame(&mut self.recv, &mut self.buf, MAX_CORE_FRAME))
            .await
            .expect("an answer within 5 s");
        match read {
            Ok(Some(_)) => Some(frames::decode_core(&self.buf).expect("the core's frames validate")),
            _ => None,
        }
    }

    async fn hello(&mut self, agent: u16, token: &str) -> Option<CoreFrame> {
        self.write(&frames::encode_agent(&AgentFrame::Hello { agent, token: token.into() })).await;
        self.answer().await
    }
}

/// A frame header announcing `len` bytes, then `body`.
fn raw_frame(len: u32, version: u16, body: &[u8]) -> Vec<u8> {
    let mut f = len.to_le_bytes().to_vec();
    f.extend_from_slice(&version.to_le_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(body);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_signal_lands_in_the_ring_and_snapshots_reach_the_agent() {
    let dir = temp_dir("good");
    let mut core = Core::start(&dir, |_| {});
    assert!(core.cert.exists(), "the development certificate is written for agents to pin");
    core.board.publish(InstrumentId(1), &top(2_000));
    let link = QuicAgentLink::connect(link_config(&core, 3, "tok-3")).await.expect("agent 3 connects");
    assert_eq!(link.instruments(), NAMES);

    assert!(link.signals().try_send(signal(1, 77)));
    eventually("the core accepts the signal", || link.stats().accepted.load(Ordering::Relaxed) == 1).await;
    let got = core.signals();
    assert_eq!(got.len(), 1, "{got:?}");
    let s = got[0];
    assert_eq!((s.agent, s.instrument, s.strength_bps, s.confidence_bps, s.signal_id), (AgentId(3), InstrumentId(1), 6_000, 8_000, 77));
    assert_eq!((s.ts_event, s.ts_recv, s.ttl_ns), (clock(), clock(), 30_000_000_000), "stamped by the core, ttl in ns");

    // Snapshots: the board's tops arrive as datagrams; a newer top replaces the older one.
    eventually("a snapshot reaches the agent", || link.board().read(InstrumentId(1)).is_some_and(|t| t.bid == Price::from_units(2_000)))
        .await;
    let t = link.board().read(InstrumentId(1)).unwrap();
    assert_eq!(
        (t.ask, t.bid_qty, t.ask_qty, t.ts_event, t.in_sync),
        (Price::from_units(2_001), Quantity::from_units(2), Quantity::from_units(3), 42, true)
    );
    assert_eq!(link.board().read(InstrumentId(0)), None, "an instrument the core has no top for stays empty");
    core.board.publish(InstrumentId(1), &top(2_100));
    eventually("the newer top replaces it", || link.board().read(InstrumentId(1)).is_some_and(|t| t.bid == Price::from_units(2_100))).await;
    assert!(core.stats.datagrams.load(Ordering::Relaxed) >= 2);

    let mut metrics = String::new();
    core.stats.write_metrics(&mut metrics);
    for line in [
        "sapphire_quic_connections_total 1",
        "sapphire_quic_connections_active 1",
        "sapphire_quic_signals_accepted_total 1",
        "sapphire_quic_refused_total{reason=\"bad_token\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    link.close().await;
    eventually("the connection is gone", || core.stats.active.load(Ordering::Relaxed) == 0).await;
    core.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_and_unknown_agents_are_refused_and_counted() {
    let dir = temp_dir("tokens");
    let mut core = Core::start(&dir, |_| {});
    for (agent, token, reason) in [
        (3, "tok-4", Refusal::BadToken),
        (3, "tok-3x", Refusal::BadToken),
        (9, "tok-9", Refusal::UnknownAgent),
        // An in-core strategy's id can never be claimed from outside.
        (0, "tok-0", Refusal::UnknownAgent),
    ] {
        match QuicAgentLink::connect(link_config(&core, agent, token)).await {
            Err(e @ QuicError::Refused { reason: r, .. }) => {
                assert_eq!(r, reason, "agent {agent}");
                assert!(e.is_terminal(), "a refused hello is not retried");
            }
            other => panic!("agent {agent} with {token:?}: {other:?}"),
        }
    }
    assert_eq!(core.stats.refused(Refusal::BadToken), 2);
    assert_eq!(core.stats.refused(Refusal::UnknownAgent), 2);
    // A refused hello closes the connection: a signal sent anyway goes nowhere.
    let mut raw = RawAgent::connect(&core).await;
    assert_eq!(raw.hello(4, "wrong").await, Some(CoreFrame::Refused { signal_id: 0, reason: Refusal::BadToken }));
    let _ = raw.send.write_all(&frames::encode_agent(&AgentFrame::Signal(signal(0, 1)))).await;
    assert_eq!(raw.answer().await, None, "the core closed the stream after the refusal");
    let closed = tokio::time::timeout(Duration::from_secs(3), raw.conn.closed()).await.expect("the core closes the connection");
    assert!(closed.to_string().contains("bad_token"), "{closed}");
    assert!(core.signals().is_empty(), "nothing from a refused agent reaches the ring");
    assert_eq!(core.stats.connections.load(Ordering::Relaxed), 0);
    core.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_wrong_versions_and_oversized_frames_are_refused() {
    let dir = temp_dir("garbage");
    let mut core = Core::start(&dir, |_| {});
    // Garbage instead of a hello: refused, closed.
    let mut raw = RawAgent::connect(&core).await;
    raw.write(&raw_frame(16, frames::PROTOCOL_VERSION, &[0xAB; 16])).await;
    assert_eq!(raw.answer().await, Some(CoreFrame::Refused { signal_id: 0, reason: Refusal::BadFrame }));
    assert_eq!(raw.answer().await, None);

    let mut raw = RawAgent::connect(&core).await;
    assert!(matches!(raw.hello(4, "tok-4").await, Some(CoreFrame::Welcome { agent: 4, .. })));
    // Garbage after the hello: refused, the connection survives.
    raw.write(&raw_frame(24, frames::PROTOCOL_VERSION, &[0x5A; 24])).await;
    assert_eq!(raw.answer().await, Some(CoreFrame::Refused { signal_id: 0, reason: Refusal::BadFrame }));
    // A signal archive cut short.
    let whole = frames::encode_agent(&AgentFrame::Signal(signal(0, 5)));
    let cut = &whole[frames::HEADER_LEN..whole.len() - 4];
    raw.write(&raw_frame(cut.len() as u32, frames::PROTOCOL_VERSION, cut)).await;
    assert_eq!(raw.answer().await, Some(CoreFrame::Refused { signal_id: 0, reason: Refusal::BadFrame }));
    // A valid signal in a version this core does not speak.
    raw.write(&raw_frame((whole.len() - frames::HEADER_LEN) as u32, 7, &whole[frames::HEADER_LEN..])).await;
    assert_eq!(raw.answer().await, Some(CoreFrame::Refused { signal_id: 0, reason: Refusal::BadFrame }));
    // A second hello is not a signal.
    raw.write(&frames::encode_agent(&AgentFrame::Hello { agent: 3, token: "tok-3".into() })).await;
    assert_eq!(raw.answer().await, Some(CoreFrame::Refused { signal_id: 0, reason: Refusal::BadFrame }));
    // Still alive: a good signal is accepted.
    raw.write(&whole).await;
    assert_eq!(raw.answer().await, Some(CoreFrame::Accepted { signal_id: 5 }));
    // An oversized frame: refused, and the stream (which cannot be resynchronized) closed.
    raw.write(&raw_frame(1_000_000, frames::PROTOCOL_VERSION, &[0; 64])).await;
    assert_eq!(raw.answer().await, Some(CoreFrame::Refused { signal_id: 0, reason: Refusal::BadFrame }));
    assert_eq!(raw.answer().await, None);

    let got = core.signals();
    assert_eq!(got.iter().map(|s| (s.agent, s.signal_id)).collect::<Vec<_>>(), vec![(AgentId(4), 5)]);
    assert_eq!(core.stats.refused(Refusal::BadFrame), 6);
    assert_eq!(core.stats.signals_accepted.load(Ordering::Relaxed), 1);
    core.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_values_and_rate_overruns_are_refused_and_the_connection_survives() {
    let dir = temp_dir("limits");
    let mut core = Core::start(&dir, |c| c.max_signals_per_sec = 5);
    let mut raw = RawAgent::connect(&core).await;
    assert!(matches!(raw.hello(3, "tok-3").await, Some(CoreFrame::Welcome { max_signals_per_sec: 5, .. })));
    let bad = [
        WireSignal { instrument: 2, ..signal(0, 1) },
        WireSignal { strength_bps: 10_001, ..signal(0, 2) },
        WireSignal { confidence_bps: 10_001, ..signal(0, 3) },
        WireSignal { ttl_ms: 0, ..signal(0, 4) },
        WireSignal { ttl_ms: 3_600_001, ..signal(0, 5) },
    ];
    for s in bad {
        raw.write(&frames::encode_agent(&AgentFrame::Signal(s))).await;
        assert_eq!(raw.answer().await, Some(CoreFrame::Refused { signal_id: s.signal_id, reason: Refusal::OutOfRange }));
    }
    // Out-of-range signals spent no tokens: a burst of 12 gets the bucket's 5 (6 if a token
    // refilled meanwhile), the rest are rate limited.
    for id in 10..22 {
        raw.write(&frames::encode_agent(&AgentFrame::Signal(signal(id % 2, id as u64)))).await;
    }
    let (mut accepted, mut limited) = (0, 0);
    for _ in 10..22 {
        match raw.answer().await {
            Some(CoreFrame::Accepted { .. }) => accepted += 1,
            Some(CoreFrame::Refused { reason: Refusal::RateLimited, .. }) => limited += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!((5..=6).contains(&accepted) && accepted + limited == 12, "{accepted} accepted, {limited} limited");
    assert_eq!(core.stats.refused(Refusal::RateLimited), limited);
    assert_eq!(core.stats.refused(Refusal::OutOfRange), 5);
    // The agent is not cut off: after a token refills, it is heard again.
    tokio::time::sleep(Duration::from_millis(250)).await;
    raw.write(&frames::encode_agent(&AgentFrame::Signal(signal(1, 99)))).await;
    assert_eq!(raw.answer().await, Some(CoreFrame::Accepted { signal_id: 99 }));
    assert_eq!(core.signals().len() as u64, accepted + 1);
    core.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ring_refuses_instead_of_waiting() {
    let dir = temp_dir("full");
    let cert = dir.join("quic/cert.pem");
    let tls = ServerTls::SelfSigned { write_cert_to: cert.clone(), names: vec!["localhost".into()] };
    let agents = vec![RemoteAgent { id: 5, token: AgentToken::new("tok-5").unwrap() }];
    let mut config = QuicIngressConfig::new("127.0.0.1:0".parse().unwrap(), tls, agents);
    config.max_signals_per_sec = 1_000;
    let board = Arc::new(MarketBoard::new(NAMES.len()));
    // A ring of 2 slots that nobody reads.
    let (producer, _consumers) = ring::<Event>(2, 1);
    let ingress = QuicIngress::bind(config, NAMES.iter().map(|s| s.to_string()).collect(), board, clock).unwrap();
    let (addr, stats, stop) = (ingress.local_addr().to_string(), ingress.stats(), Arc::new(AtomicBool::new(false)));
    let task = tokio::spawn(ingress.run(producer, Arc::clone(&stop)));
    let mut link_cfg = AgentLinkConfig::new(addr, ClientTrust::Pinned(cert), 5, AgentToken::new("tok-5").unwrap());
    link_cfg.server_name = "localhost".into();
    let link = QuicAgentLink::connect(link_cfg).await.unwrap();
    for id in 0..4 {
        assert!(link.signals().try_send(signal(0, id)));
    }
    eventually("four answers", || link.stats().accepted.load(Ordering::Relaxed) + link.stats().refused(Refusal::RingFull) == 4).await;
    assert_eq!((link.stats().accepted.load(Ordering::Relaxed), stats.refused(Refusal::RingFull)), (2, 2));
    link.close().await;
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_reconnects_after_the_core_restarts() {
    let dir = temp_dir("restart");
    std::fs::create_dir_all(&dir).unwrap();
    // Certificate files (the production path), so the restarted core serves the same one.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let config = |bind: &str| {
        let tls = ServerTls::Files { cert: cert_path.clone(), key: key_path.clone() };
        let agents = vec![RemoteAgent { id: 3, token: AgentToken::new("tok-3").unwrap() }];
        let mut c = QuicIngressConfig::new(bind.parse().unwrap(), tls, agents);
        c.snapshot_interval = Duration::from_millis(20);
        c
    };
    let mut core = Core::start_with(config("127.0.0.1:0"), cert_path.clone());
    let link = QuicAgentLink::connect(link_config(&core, 3, "tok-3")).await.unwrap();
    assert!(link.signals().try_send(signal(0, 1)));
    eventually("the first signal", || link.stats().accepted.load(Ordering::Relaxed) == 1).await;
    let addr = core.addr.clone();
    assert_eq!(core.signals().len(), 1);
    core.stop().await;
    eventually("the link notices", || !link.stats().connected.load(Ordering::Relaxed)).await;
    // The core comes back on the same address; the link reconnects by itself.
    let mut core = Core::start_with(config(&addr), cert_path.clone());
    eventually("the link reconnects", || link.stats().connected.load(Ordering::Relaxed)).await;
    assert_eq!(link.stats().connects.load(Ordering::Relaxed), 2);
    assert!(link.signals().try_send(signal(1, 2)));
    eventually("the second signal", || link.stats().accepted.load(Ordering::Relaxed) == 2).await;
    assert_eq!(core.signals().iter().map(|s| s.signal_id).collect::<Vec<_>>(), vec![2]);
    link.close().await;
    core.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
