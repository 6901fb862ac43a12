//! A remote agent's signal to an event in the core's inbound ring, on loopback: over QUIC
//! (the agent link → quinn → the ingress's validation → `try_publish`), against the same rkyv
//! frame over a plain loopback TCP stream (same validation, same ring) and, when Redis answers
//! on 127.0.0.1:6379, the Redis path (`PUBLISH` JSON → the bus's signal ingress).
//!
//! Closed loop: one signal in flight; its latency runs from just before the agent hands it
//! over to the moment a consumer thread reads it from the ring. Percentiles from hdrhistogram.
//!
//! Run: `cargo bench -p sapphire-benches --bench quic` (add `-- --quick` for a short run).

use rkyv::util::AlignedVec;
use sapphire_benches::case::{histogram, record, table, Case, Group, Ratio};
use sapphire_core::board::MarketBoard;
use sapphire_core::event::{AgentId, Event, Signal};
use sapphire_core::instrument::InstrumentId;
use sapphire_core::ring::{ring, Poll, Producer};
use sapphire_gateway::quic::frames::{self, AgentFrame, ArchivedAgentFrame, MAX_AGENT_FRAME};
use sapphire_gateway::quic::{
    AgentLinkConfig, AgentToken, ClientTrust, QuicAgentLink, QuicIngress, QuicIngressConfig, RemoteAgent, ServerTls, WireSignal,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NAMES: [&str; 2] = ["BTCUSDT", "ETHUSDT"];

/// The ring side: a consumer thread recording each signal's latency from its send stamp.
struct RingProbe {
    base: Instant,
    sent_ns: Arc<AtomicU64>,
    seen: Arc<AtomicU64>,
    /// Off during warm-up: signals are counted, not recorded.
    recording: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<hdrhistogram::Histogram<u64>>,
}

impl RingProbe {
    fn start() -> (Producer<Event>, RingProbe) {
        let (producer, mut consumers) = ring::<Event>(4_096, 1);
        let mut consumer = consumers.remove(0);
        let base = Instant::now();
        let (sent_ns, seen, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let recording = Arc::new(AtomicBool::new(false));
        let thread = {
            let (sent_ns, seen, stop, recording) = (Arc::clone(&sent_ns), Arc::clone(&seen), Arc::clone(&stop), Arc::clone(&recording));
            std::thread::spawn(move || {
                let mut h = histogram();
                while !stop.load(Ordering::Relaxed) {
                    let polled = consumer.poll(64, |e, _, _| {
                        if let Event::Signal(_) = e {
                            let now = base.elapsed().as_nanos() as u64;
                            if recording.load(Ordering::Relaxed) {
                                record(&mut h, now.saturating_sub(sent_ns.load(Ordering::Acquire)));
                            }
                            seen.fetch_add(1, Ordering::Release);
                        }
                    });
                    if polled == Poll::Empty {
                        std::hint::spin_loop();
                    }
                }
                h
            })
        };
        (producer, RingProbe { base, sent_ns, seen, recording, stop, thread })
    }

    /// Stamps the send time of the next signal.
    fn stamp(&self) {
        self.sent_ns.store(self.base.elapsed().as_nanos() as u64, Ordering::Release);
    }

    /// Signals that reached the ring so far.
    fn seen(&self) -> u64 {
        self.seen.load(Ordering::Acquire)
    }

    /// Before sending signal `i` (the first `warmup` are not recorded): stamps the send time,
    /// returns the count to wait for.
    fn before_send(&self, i: u64, warmup: u64) -> u64 {
        if i == warmup {
            self.recording.store(true, Ordering::Relaxed);
        }
        let target = self.seen() + 1;
        self.stamp();
        target
    }

    /// Waits until `n` signals have reached the ring (false after 2 s).
    async fn wait_for(&self, n: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.seen.load(Ordering::Acquire) < n {
            if Instant::now() > deadline {
                return false;
            }
            tokio::task::yield_now().await;
        }
        true
    }

    fn finish(self) -> hdrhistogram::Histogram<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the probe thread")
    }
}

fn signal(i: u64) -> WireSignal {
    WireSignal { instrument: (i % 2) as u32, strength_bps: 5_000, confidence_bps: 9_000, ttl_ms: 10_000, signal_id: i }
}

fn clock() -> u64 {
    sapphire_core::latency::unix_nanos()
}

async fn quic_case(n: u64, warmup: u64) -> Case {
    let dir = std::env::temp_dir().join(format!("sapphire-bench-quic-{}", std::process::id()));
    let cert = dir.join("cert.pem");
    let tls = ServerTls::SelfSigned { write_cert_to: cert.clone(), names: vec!["localhost".into()] };
    let agents = vec![RemoteAgent { id: 9, token: AgentToken::new("bench-token").expect("token") }];
    let mut config = QuicIngressConfig::new("127.0.0.1:0".parse().expect("addr"), tls, agents);
    config.max_signals_per_sec = 100_000;
    let board = Arc::new(MarketBoard::new(NAMES.len()));
    let ingress = QuicIngress::bind(config, NAMES.iter().map(|s| s.to_string()).collect(), board, clock).expect("the ingress binds");
    let addr = ingress.local_addr().to_string();
    let (producer, probe) = RingProbe::start();
    let stop = Arc::new(AtomicBool::new(false));
    let server = tokio::spawn(ingress.run(producer, Arc::clone(&stop)));
    let link =
        QuicAgentLink::connect(AgentLinkConfig::new(addr, ClientTrust::Pinned(cert), 9, AgentToken::new("bench-token").expect("token")))
            .await
            .expect("the agent connects");
    let signals = link.signals();
    let mut lost = 0;
    for i in 0..warmup + n {
        let target = probe.before_send(i, warmup);
        signals.try_send(signal(i));
        lost += u64::from(!probe.wait_for(target).await);
    }
    link.close().await;
    stop.store(true, Ordering::Relaxed);
    let _ = server.await;
    let h = probe.finish();
    let _ = std::fs::remove_dir_all(&dir);
    if lost > 0 {
        eprintln!("  quic: {lost} signals did not reach the ring within 2 s");
    }
    Case::latency(
        "quic_signal_to_ring",
        Group::EndToEnd,
        "remote agent signal → QUIC (agent link, quinn, TLS 1.3) → validated → event in the inbound ring",
        h,
        None,
    )
}

/// The same frame over a plain loopback TCP stream: a server task reads length-prefixed
/// frames, validates the archive, publishes into the ring.
async fn tcp_case(n: u64, warmup: u64) -> Case {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("tcp bind");
    let addr = listener.local_addr().expect("addr");
    let (mut producer, probe) = RingProbe::start();
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        tcp.set_nodelay(true).expect("nodelay");
        let mut header = [0u8; frames::HEADER_LEN];
        let mut buf = AlignedVec::<16>::with_capacity(MAX_AGENT_FRAME);
        while tcp.read_exact(&mut header).await.is_ok() {
            let Ok((len, _)) = frames::parse_header(&header, MAX_AGENT_FRAME) else { return };
            buf.clear();
            buf.resize(len, 0);
            if tcp.read_exact(&mut buf[..]).await.is_err() {
                return;
            }
            if let Ok(ArchivedAgentFrame::Signal(s)) = frames::access_agent(&buf) {
                let now = clock();
                let _ = producer.try_publish(Event::Signal(Signal {
                    ts_event: now,
                    ts_recv: now,
                    instrument: InstrumentId(s.instrument.to_native()),
                    agent: AgentId(9),
                    strength_bps: s.strength_bps.to_native(),
                    confidence_bps: s.confidence_bps.to_native(),
                    ttl_ns: s.ttl_ms.to_native() * 1_000_000,
                    signal_id: s.signal_id.to_native(),
                    ..Signal::default()
                }));
            }
        }
    });
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let mut lost = 0;
    for i in 0..warmup + n {
        let frame = frames::encode_agent(&AgentFrame::Signal(signal(i)));
        let target = probe.before_send(i, warmup);
        tcp.write_all(&frame).await.expect("write");
        lost += u64::from(!probe.wait_for(target).await);
    }
    if lost > 0 {
        eprintln!("  tcp: {lost} signals did not reach the ring within 2 s");
    }
    drop(tcp);
    let _ = server.await;
    Case::latency(
        "tcp_signal_to_ring",
        Group::EndToEnd,
        "the same rkyv frame over plain loopback TCP (no TLS) → validated → event in the inbound ring",
        probe.finish(),
        None,
    )
}

/// The Redis path: `PUBLISH <prefix>:signals:in` JSON → the bus's signal ingress → ring.
async fn redis_case(n: u64, warmup: u64) -> Option<Case> {
    use sapphire_persistence::bus;
    let mut config = bus::BusConfig::new("redis://127.0.0.1:6379/");
    config.prefix = format!("sapphire-bench-quic-{}", std::process::id());
    let mut conn = match bus::connection(&config).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("  redis baseline skipped: {e}");
            return None;
        }
    };
    let names: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
    let (producer, probe) = RingProbe::start();
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(bus::BusStats::default());
    let ingress = tokio::spawn(bus::run_signal_ingress(
        config.clone(),
        names.clone(),
        Default::default(),
        producer,
        clock,
        None,
        Arc::clone(&stats),
        Arc::clone(&stop),
    ));
    // Subscribed once a probe signal gets through.
    let probe_signal = Signal {
        instrument: InstrumentId(0),
        agent: AgentId(9),
        strength_bps: 1,
        confidence_bps: 1,
        ttl_ns: 1_000_000_000,
        ..Signal::default()
    };
    let mut subscribed = false;
    for _ in 0..100 {
        let _ = bus::publish_signal(&mut conn, &config, &names, &probe_signal).await;
        if probe.wait_for(1).await {
            subscribed = true;
            break;
        }
    }
    if !subscribed {
        eprintln!("  redis baseline skipped: the ingress never subscribed");
        stop.store(true, Ordering::Relaxed);
        return None;
    }
    let mut lost = 0;
    for i in 0..warmup + n {
        let w = signal(i);
        let s = Signal {
            instrument: InstrumentId(w.instrument),
            agent: AgentId(9),
            strength_bps: w.strength_bps,
            confidence_bps: w.confidence_bps,
            ttl_ns: w.ttl_ms * 1_000_000,
            signal_id: w.signal_id,
            ..Signal::default()
        };
        let target = probe.before_send(i, warmup);
        let _ = bus::publish_signal(&mut conn, &config, &names, &s).await;
        lost += u64::from(!probe.wait_for(target).await);
    }
    if lost > 0 {
        eprintln!("  redis: {lost} signals did not reach the ring within 2 s");
    }
    stop.store(true, Ordering::Relaxed);
    let _ = ingress.await;
    Some(Case::latency(
        "redis_signal_to_ring",
        Group::EndToEnd,
        "the Redis path: PUBLISH JSON on <prefix>:signals:in → the bus's signal ingress → event in the inbound ring",
        probe.finish(),
        None,
    ))
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (n, warmup) = if quick { (2_000, 200) } else { (20_000, 1_000) };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    eprintln!("quic bench: {n} signals per transport, closed loop (one in flight), {warmup} warm-up signals each");
    let mut cases = Vec::new();
    eprintln!("  quic ...");
    cases.push(runtime.block_on(quic_case(n, warmup)));
    eprintln!("  tcp ...");
    cases.push(runtime.block_on(tcp_case(n, warmup)));
    eprintln!("  redis ...");
    if let Some(c) = runtime.block_on(redis_case(n, warmup)) {
        cases.push(c);
    }
    let mut ratios = Vec::new();
    ratios.extend(Ratio::p50("quic_vs_tcp_p50", &cases[0], &cases[1]));
    ratios.extend(Ratio::p99("quic_vs_tcp_p99", &cases[0], &cases[1]));
    if let Some(redis) = cases.get(2) {
        ratios.extend(Ratio::p50("quic_vs_redis_p50", &cases[0], redis));
        ratios.extend(Ratio::p99("quic_vs_redis_p99", &cases[0], redis));
    }
    print!("{}", table(&cases, &ratios));
}
