//! Against the real Redis on 127.0.0.1:6379 (scripts/test.sh starts one when absent); each
//! test uses its own channel prefix.

use super::*;
use crate::journal::{JournalConfig, JournalWriter};
use sapphire_core::board::Top;
use sapphire_core::event::{ExecKind, ExecReport};
use sapphire_core::fixed::{Money, Price, Quantity};
use sapphire_core::order::Order;
use sapphire_core::portfolio::PnlSummary;
use std::collections::HashMap;
use tokio::net::{TcpListener, TcpStream};

const REDIS: &str = "redis://127.0.0.1:6379/";

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("sapphire-test-{name}-{}-{nanos}", std::process::id())
}

fn names() -> Vec<String> {
    vec!["BTCUSDT".into(), "ETHUSDT".into()]
}

fn sample_outputs() -> Vec<Output> {
    let fill = ExecReport {
        kind: ExecKind::Fill,
        client_order_id: 42,
        price: Price::from_raw(65_432_100_000_001),
        last_qty: Quantity::from_raw(12_345),
        fee: Money::from_raw(-7),
        ..ExecReport::default()
    };
    let signal =
        Signal { agent: AgentId(3), instrument: InstrumentId(1), strength_bps: -2_500, confidence_bps: 8_000, ..Signal::default() };
    vec![
        Output { seq: 1, output: EngineOutput::Order(Order { client_order_id: 42, qty: Quantity::from_units(1), ..Order::default() }) },
        Output { seq: 2, output: EngineOutput::Exec(fill) },
        Output { seq: 3, output: EngineOutput::Signal { signal, taken: true } },
        Output {
            seq: 4,
            output: EngineOutput::Pnl { ts_event: 9, total: PnlSummary { equity: Money::from_units(1_001), ..PnlSummary::default() } },
        },
        Output { seq: 5, output: EngineOutput::Exec(ExecReport { last_qty: Quantity::from_raw(1), ..fill }) },
    ]
}

fn write_outputs(dir: &std::path::Path, outs: &[Output]) {
    let (mut w, _) = JournalWriter::<Output>::open(JournalConfig::new(dir)).unwrap();
    for o in outs {
        w.append_record(o).unwrap();
    }
    w.sync().unwrap();
}

/// Collects `(channel, payload)` of `<prefix>:*` until `n` arrive or 5 s pass.
async fn subscribe(prefix: &str) -> redis::aio::PubSubStream {
    let client = redis::Client::open(REDIS).unwrap();
    let mut ps = client.get_async_pubsub().await.expect("a Redis server on 127.0.0.1:6379");
    ps.psubscribe(format!("{prefix}:*")).await.unwrap();
    ps.into_on_message()
}

async fn collect(stream: &mut redis::aio::PubSubStream, n: usize, within: Duration) -> Vec<(String, serde_json::Value)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            // The binary channel is checked by its own test.
            Ok(Some(m)) if m.get_channel_name().ends_with(":outputs") => {}
            Ok(Some(m)) => got.push((m.get_channel_name().to_string(), serde_json::from_slice(m.get_payload_bytes()).unwrap())),
            _ => break,
        }
    }
    got
}

fn start(
    config: BusConfig,
    dir: PathBuf,
    board: Arc<MarketBoard>,
    stats: Arc<BusStats>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<(), BusError>> {
    tokio::spawn(run_publisher(config, dir, 0, board, names(), stats, stop))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_reach_their_channels_in_order_with_exact_values() {
    let prefix = unique("outputs");
    let dir = std::env::temp_dir().join(&prefix);
    write_outputs(&dir, &sample_outputs());
    let mut sub = subscribe(&prefix).await;
    let (stats, stop) = (Arc::new(BusStats::default()), Arc::new(AtomicBool::new(false)));
    let task = start(
        BusConfig { prefix: prefix.clone(), ..BusConfig::new(REDIS) },
        dir.clone(),
        Arc::new(MarketBoard::new(2)),
        Arc::clone(&stats),
        Arc::clone(&stop),
    );
    let got = collect(&mut sub, 5, Duration::from_secs(5)).await;
    stop.store(true, Relaxed);
    task.await.unwrap().unwrap();
    let channels: Vec<&str> = got.iter().map(|(c, _)| c.strip_prefix(&format!("{prefix}:main:")).unwrap()).collect();
    assert_eq!(channels, ["orders", "fills", "signals", "pnl", "fills"]);
    assert!(got.iter().enumerate().all(|(i, (_, v))| v["journal_seq"] == i as u64));
    let fill = &got[1].1;
    assert_eq!(
        (fill["kind"].as_str(), fill["price"].as_str(), fill["last_qty"].as_str(), fill["fee"].as_str()),
        (Some("fill"), Some("65432.100000001"), Some("0.00012345"), Some("-0.000000007"))
    );
    assert_eq!(got[2].1["symbol"], "ETHUSDT");
    assert_eq!(got[2].1["strength_bps"], -2_500);
    assert_eq!(got[3].1["equity"], "1001.000000000");
    assert_eq!(stats.outputs.load(Relaxed), 5);
    assert_eq!(stats.cursor.load(Relaxed), 5);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_journaled_before_the_stop_are_still_published() {
    // A core's last outputs (closing fills, PnL) are journaled just before the publisher is
    // stopped; they reached no subscriber, and the next start publishes from the journal's end.
    let prefix = unique("drain");
    let dir = std::env::temp_dir().join(&prefix);
    write_outputs(&dir, &sample_outputs());
    let mut sub = subscribe(&prefix).await;
    let (stats, stop) = (Arc::new(BusStats::default()), Arc::new(AtomicBool::new(true)));
    let task = start(
        BusConfig { prefix: prefix.clone(), ..BusConfig::new(REDIS) },
        dir.clone(),
        Arc::new(MarketBoard::new(2)),
        Arc::clone(&stats),
        Arc::clone(&stop),
    );
    task.await.unwrap().unwrap();
    let got = collect(&mut sub, 5, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 5, "every journaled output published: {got:?}");
    assert!(got.iter().enumerate().all(|(i, (_, v))| v["journal_seq"] == i as u64));
    assert_eq!((stats.outputs.load(Relaxed), stats.cursor.load(Relaxed)), (5, 5));
    let _ = std::fs::remove_dir_all(&dir);
}

fn top(i: i64) -> Top {
    Top { bid: Price::from_units(i), ask: Price::from_units(i + 1), ts_event: i as u64, in_sync: true, ..Top::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_are_conflated_to_the_latest_per_symbol() {
    let prefix = unique("ticks");
    let dir = std::env::temp_dir().join(&prefix);
    let board = Arc::new(MarketBoard::new(2));
    let mut sub = subscribe(&prefix).await;
    let (stats, stop) = (Arc::new(BusStats::default()), Arc::new(AtomicBool::new(false)));
    for i in 1..=10_000 {
        board.publish(InstrumentId(0), &top(i));
    }
    let config = BusConfig { prefix: prefix.clone(), tick_interval: Duration::from_millis(50), ..BusConfig::new(REDIS) };
    let task = start(config, dir.clone(), Arc::clone(&board), Arc::clone(&stats), Arc::clone(&stop));
    let first = collect(&mut sub, 1, Duration::from_secs(5)).await;
    // More updates after the first tick went out: the next message carries only the latest.
    for i in 10_001..=20_000 {
        board.publish(InstrumentId(0), &top(i));
    }
    let more = collect(&mut sub, 5, Duration::from_millis(400)).await;
    stop.store(true, Relaxed);
    task.await.unwrap().unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, format!("{prefix}:main:ticks:BTCUSDT"));
    assert_eq!(first[0].1["bid"], "10000.000000000");
    assert_eq!(more.len(), 1, "one message for 10,000 updates in one interval, none for an unchanged symbol: {more:?}");
    assert_eq!(more[0].1["bid"], "20000.000000000");
    assert_eq!(more[0].1["in_sync"], true);
    assert_eq!(stats.ticks.load(Relaxed), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TCP proxy to the real Redis that can be taken down and brought back on the same port.
struct Proxy {
    port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    async fn reserve() -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Proxy { port: l.local_addr().unwrap().port(), task: None }
    }

    async fn up(&mut self) {
        let l = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = l.accept().await {
                conns.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect("127.0.0.1:6379").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        }));
    }

    /// Stops listening and cuts every proxied connection (dropping the task drops them).
    fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_ticks_are_dropped_and_counted_but_no_fill_is_lost() {
    let prefix = unique("down");
    let dir = std::env::temp_dir().join(&prefix);
    let outs = sample_outputs();
    write_outputs(&dir, &outs[..2]);
    let mut proxy = Proxy::reserve().await;
    proxy.up().await;
    let board = Arc::new(MarketBoard::new(2));
    let mut sub = subscribe(&prefix).await;
    let (stats, stop) = (Arc::new(BusStats::default()), Arc::new(AtomicBool::new(false)));
    let config = BusConfig {
        prefix: prefix.clone(),
        tick_interval: Duration::from_millis(20),
        ..BusConfig::new(format!("redis://127.0.0.1:{}/", proxy.port))
    };
    let task = start(config, dir.clone(), Arc::clone(&board), Arc::clone(&stats), Arc::clone(&stop));
    assert_eq!(collect(&mut sub, 2, Duration::from_secs(5)).await.len(), 2);

    // Redis goes away; the engine carries on: more outputs, more ticks.
    proxy.down();
    {
        let (mut w, _) = JournalWriter::<Output>::open(JournalConfig::new(&dir)).unwrap();
        for o in &outs[2..] {
            w.append_record(o).unwrap();
        }
        w.sync().unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut i = 0;
    while stats.ticks_dropped.load(Relaxed) < 3 && tokio::time::Instant::now() < deadline {
        i += 1;
        board.publish(InstrumentId(1), &top(i));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stats.ticks_dropped.load(Relaxed) >= 3, "ticks while down are dropped and counted");
    assert!(!stats.connected.load(Relaxed));
    assert!(stats.errors.load(Relaxed) > 0);
    assert!(stats.last_error.lock().unwrap().is_some());

    // Back: the outputs written meanwhile arrive, each once, in order.
    proxy.up().await;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while got.iter().filter(|(c, _): &&(String, serde_json::Value)| !c.contains(":ticks:")).count() < 3
        && tokio::time::Instant::now() < deadline
    {
        got.extend(collect(&mut sub, 1, Duration::from_millis(200)).await);
    }
    // Nothing more (no duplicate) arrives after them.
    got.extend(collect(&mut sub, 50, Duration::from_millis(200)).await);
    stop.store(true, Relaxed);
    task.await.unwrap().unwrap();
    let seqs: Vec<u64> = got.iter().filter(|(c, _)| !c.contains(":ticks:")).map(|(_, v)| v["journal_seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [2, 3, 4], "{got:?}");
    assert!(stats.reconnects.load(Relaxed) >= 1);
    assert!(stats.connected.load(Relaxed) || stop.load(Relaxed));
    assert_eq!(stats.cursor.load(Relaxed), 5);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn remote_signals_are_checked() {
    let n = names();
    let ok = parse_remote_signal(
        br#"{"agent":5,"symbol":"ETHUSDT","strength_bps":-3000,"confidence_bps":7000,"ttl_ms":1500,"signal_id":9}"#,
        &n,
        77,
    )
    .unwrap();
    assert_eq!(
        (ok.instrument, ok.agent, ok.strength_bps, ok.confidence_bps, ok.ttl_ns, ok.signal_id, ok.ts_event),
        (InstrumentId(1), AgentId(5), -3_000, 7_000, 1_500_000_000, 9, 77)
    );
    let refused = |p: &str| parse_remote_signal(p.as_bytes(), &n, 0).unwrap_err();
    assert!(matches!(refused("not json"), SignalRefusal::Malformed(_)));
    assert!(matches!(
        refused(r#"{"agent":5,"symbol":"ETHUSDT","strength_bps":1,"confidence_bps":1,"ttl_ms":1,"extra":1}"#),
        SignalRefusal::Malformed(_)
    ));
    assert!(matches!(
        refused(r#"{"agent":5,"symbol":"DOGE","strength_bps":1,"confidence_bps":1,"ttl_ms":1}"#),
        SignalRefusal::UnknownSymbol(_)
    ));
    assert!(matches!(
        refused(r#"{"agent":5,"symbol":"ETHUSDT","strength_bps":10001,"confidence_bps":1,"ttl_ms":1}"#),
        SignalRefusal::OutOfRange(_)
    ));
    assert!(matches!(
        refused(r#"{"agent":0,"symbol":"ETHUSDT","strength_bps":1,"confidence_bps":1,"ttl_ms":1}"#),
        SignalRefusal::OutOfRange(_)
    ));
    assert!(matches!(
        refused(r#"{"agent":5,"symbol":"ETHUSDT","strength_bps":1,"confidence_bps":1,"ttl_ms":0}"#),
        SignalRefusal::OutOfRange(_)
    ));
    assert!(matches!(
        refused(r#"{"agent":5,"symbol":"ETHUSDT","strength_bps":1,"confidence_bps":10001,"ttl_ms":1}"#),
        SignalRefusal::OutOfRange(_)
    ));
}

/// The ingress's clock in the ownership test: stepped by the test, never the wall clock.
static OWNER_TEST_NOW: AtomicU64 = AtomicU64::new(1_000_000_000);

/// Publishes one signal for `agent` from `from` and waits until the ingress decides: `true` if
/// it was taken into the ring.
async fn send_signal(conn: &mut redis::aio::MultiplexedConnection, channel: &str, stats: &BusStats, agent: u16, from: &str) -> bool {
    let (taken, refused) = (stats.signals_in.load(Relaxed), stats.signals_refused.load(Relaxed));
    let json =
        format!(r#"{{"agent":{agent},"symbol":"BTCUSDT","strength_bps":100,"confidence_bps":9000,"ttl_ms":2000,"producer":"{from}"}}"#);
    let _: i64 = redis::cmd("PUBLISH").arg(channel).arg(json).query_async(conn).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (t, r) = (stats.signals_in.load(Relaxed), stats.signals_refused.load(Relaxed));
        if t + r > taken + refused {
            assert_eq!(t + r, taken + refused + 1, "one signal, one decision");
            return t > taken;
        }
        assert!(tokio::time::Instant::now() < deadline, "the ingress never decided on agent {agent} from {from}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_id_has_one_producer_over_redis() {
    use sapphire_core::ownership::{AgentOwners, Owner};
    let prefix = unique("owners");
    let (producer, mut consumers) = sapphire_core::ring::ring::<Event>(64, 1);
    let (stats, stop) = (Arc::new(BusStats::default()), Arc::new(AtomicBool::new(false)));
    let config = BusConfig { prefix: prefix.clone(), agent_lease: Duration::from_secs(1), ..BusConfig::new(REDIS) };
    let mut owners = AgentOwners::default();
    for id in 2..=9 {
        owners.assign(id, Owner::InProcess).unwrap();
    }
    owners.assign(10, Owner::Quic).unwrap();
    let task = tokio::spawn(run_signal_ingress(
        config,
        names(),
        owners,
        producer,
        || OWNER_TEST_NOW.load(Relaxed),
        None,
        Arc::clone(&stats),
        Arc::clone(&stop),
    ));
    let client = redis::Client::open(REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let channel = format!("{prefix}:main:signals:in");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let receivers: i64 = redis::cmd("PUBLISH").arg(&channel).arg("probe").query_async(&mut conn).await.unwrap();
        if receivers > 0 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while stats.signals_refused.load(Relaxed) == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Probes may still be in flight: let them land before counting from here.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(stats.signals_refused_owner.load(Relaxed), 0);
    // Ids of the engine, the in-process runtime and QUIC are not Redis's to send.
    assert!(!send_signal(&mut conn, &channel, &stats, 1, "pod-a").await);
    assert!(!send_signal(&mut conn, &channel, &stats, 3, "pod-a").await);
    assert!(!send_signal(&mut conn, &channel, &stats, 10, "pod-a").await);
    // The first Redis producer to send for 11 holds it; a second is refused while it speaks.
    assert!(send_signal(&mut conn, &channel, &stats, 11, "pod-a").await);
    assert!(!send_signal(&mut conn, &channel, &stats, 11, "pod-b").await);
    OWNER_TEST_NOW.fetch_add(600_000_000, Relaxed);
    assert!(send_signal(&mut conn, &channel, &stats, 11, "pod-a").await, "the holder renews by speaking");
    OWNER_TEST_NOW.fetch_add(600_000_000, Relaxed);
    assert!(!send_signal(&mut conn, &channel, &stats, 11, "pod-b").await, "0.6 s after the holder's last signal: still held");
    assert!(send_signal(&mut conn, &channel, &stats, 12, "pod-b").await, "another id is free");
    // The holder falls silent for a whole lease: the id passes on, and the old holder is refused.
    OWNER_TEST_NOW.fetch_add(1_000_000_000, Relaxed);
    assert!(send_signal(&mut conn, &channel, &stats, 11, "pod-b").await);
    assert!(!send_signal(&mut conn, &channel, &stats, 11, "pod-a").await);
    stop.store(true, Relaxed);
    task.await.unwrap().unwrap();
    // Agent 1 is refused as out of range before ownership is asked; the other five for ownership.
    assert_eq!(stats.signals_refused_owner.load(Relaxed), 5);
    let mut taken = Vec::new();
    consumers[0].poll(64, |e, _, _| {
        if let Event::Signal(s) = e {
            taken.push(s.agent.0);
        }
    });
    assert_eq!(taken, [11, 11, 12, 11], "only the owners' signals entered the ring");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_signals_enter_the_ring_and_bad_ones_are_counted() {
    let prefix = unique("ingress");
    let (producer, mut consumers) = sapphire_core::ring::ring::<Event>(64, 1);
    let (stats, stop) = (Arc::new(BusStats::default()), Arc::new(AtomicBool::new(false)));
    let config = BusConfig { prefix: prefix.clone(), ..BusConfig::new(REDIS) };
    let task = tokio::spawn(run_signal_ingress(
        config,
        names(),
        Default::default(),
        producer,
        || 123,
        None,
        Arc::clone(&stats),
        Arc::clone(&stop),
    ));
    let client = redis::Client::open(REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let channel = format!("{prefix}:main:signals:in");
    // Publish until the subscription is in place (pub/sub keeps nothing for late subscribers).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let receivers: i64 = redis::cmd("PUBLISH").arg(&channel).arg("garbage").query_async(&mut conn).await.unwrap();
        if receivers > 0 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while stats.signals_refused.load(Relaxed) == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Probes may still be in flight: let them land before counting from here.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused_before = stats.signals_refused.load(Relaxed);
    let _: i64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(r#"{"agent":4,"symbol":"BTCUSDT","strength_bps":5000,"confidence_bps":9000,"ttl_ms":2000}"#)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(r#"{"agent":4,"symbol":"BTCUSDT","strength_bps":50000,"confidence_bps":9000,"ttl_ms":2000}"#)
        .query_async(&mut conn)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while (stats.signals_in.load(Relaxed) < 1 || stats.signals_refused.load(Relaxed) < refused_before + 1)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Relaxed);
    task.await.unwrap().unwrap();
    assert_eq!(stats.signals_in.load(Relaxed), 1);
    assert!(refused_before >= 1, "the probe garbage was refused");
    assert_eq!(stats.signals_refused.load(Relaxed), refused_before + 1);
    let mut seen: HashMap<u16, Signal> = HashMap::new();
    consumers[0].poll(64, |e, _, _| {
        if let Event::Signal(s) = e {
            seen.insert(s.agent.0, *s);
        }
    });
    let s = seen[&4];
    assert_eq!((s.instrument, s.strength_bps, s.confidence_bps, s.ttl_ns, s.ts_event), (InstrumentId(0), 5_000, 9_000, 2_000_000_000, 123));
}

#[test]
fn output_messages_round_trip_and_garbage_is_refused() {
    for (i, o) in sample_outputs().iter().enumerate() {
        let bytes = encode_output_message(i as u64 + 40, o).unwrap();
        assert_eq!(decode_output_message(&bytes).unwrap(), (i as u64 + 40, *o));
    }
    assert!(decode_output_message(b"short").is_err());
    let mut bytes = encode_output_message(1, &sample_outputs()[1]).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0xff;
    bytes.truncate(n - 1);
    assert!(decode_output_message(&bytes).is_err(), "a damaged archive is refused, not trusted");
}

fn control(kind: sapphire_core::event::ControlKind) -> Event {
    Event::Control(sapphire_core::event::Control { kind, ..Default::default() })
}

#[test]
fn control_messages_need_the_token_and_are_fresh_once() {
    use sapphire_core::event::ControlKind;
    let now = 1_000_000_000_000u64;
    let msg = sign_control(&control(ControlKind::Kill), now, b"token-1").unwrap();
    let (ts, e) = verify_control(&msg, b"token-1", now + 5, 0).unwrap();
    assert_eq!((ts, e), (now, control(ControlKind::Kill)));
    assert_eq!(verify_control(&msg, b"token-2", now, 0), Err(ControlRefusal::BadSignature));
    assert_eq!(verify_control(&msg, b"token-1", now, now), Err(ControlRefusal::Stale(now)), "a replay is refused");
    assert_eq!(verify_control(&msg, b"token-1", now + 31_000_000_000, 0), Err(ControlRefusal::Stale(now)));
    let mut tampered = msg.clone();
    tampered[9] ^= 1;
    assert_eq!(verify_control(&tampered, b"token-1", now, 0), Err(ControlRefusal::BadSignature));
    assert_eq!(verify_control(b"tiny", b"token-1", now, 0), Err(ControlRefusal::Malformed));
    // Only control events travel this way, even when signed.
    let quote = sign_control(&Event::Quote(Default::default()), now, b"token-1").unwrap();
    assert_eq!(verify_control(&quote, b"token-1", now, 0), Err(ControlRefusal::Malformed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_control_reaches_the_ring_and_outputs_reach_a_subscriber() {
    use sapphire_core::event::ControlKind;
    let prefix = unique("control");
    let dir = std::env::temp_dir().join(&prefix);
    let (producer, mut consumers) = sapphire_core::ring::ring::<Event>(64, 1);
    let (stats, stop) = (Arc::new(BusStats::default()), Arc::new(AtomicBool::new(false)));
    let config = BusConfig { prefix: prefix.clone(), ..BusConfig::new(REDIS) };
    fn clock() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    }
    let ingress = tokio::spawn(run_signal_ingress(
        config.clone(),
        names(),
        Default::default(),
        producer,
        clock,
        Some(b"tok".to_vec()),
        Arc::clone(&stats),
        Arc::clone(&stop),
    ));
    // A gateway's view: the outputs channel.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let gaps = Arc::new(AtomicU64::new(0));
    let sub = {
        let seen = Arc::clone(&seen);
        tokio::spawn(run_output_subscriber(
            config.clone(),
            Arc::new(BusStats::default()),
            Arc::clone(&gaps),
            Arc::clone(&stop),
            move |seq, o| seen.lock().unwrap().push((seq, *o)),
        ))
    };
    let client = redis::Client::open(REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let channel = format!("{prefix}:main:control:in");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    // A bad signature first (also the probe that the subscription is up), then a good one.
    loop {
        let bad = sign_control(&control(ControlKind::Kill), clock(), b"wrong").unwrap();
        let receivers: i64 = redis::cmd("PUBLISH").arg(&channel).arg(bad).query_async(&mut conn).await.unwrap();
        if receivers > 0 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let good = sign_control(&control(ControlKind::Halt), clock(), b"tok").unwrap();
    let _: i64 = redis::cmd("PUBLISH").arg(&channel).arg(good.clone()).query_async(&mut conn).await.unwrap();
    // The same message again is a replay.
    let _: i64 = redis::cmd("PUBLISH").arg(&channel).arg(good).query_async(&mut conn).await.unwrap();
    while (stats.controls_in.load(Relaxed) < 1 || stats.controls_refused.load(Relaxed) < 2) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stats.controls_in.load(Relaxed), 1);
    assert!(stats.controls_refused.load(Relaxed) >= 2, "the wrong signature and the replay are refused");
    let mut events = Vec::new();
    consumers[0].poll(64, |e, _, _| events.push(*e));
    assert_eq!(events, [control(ControlKind::Halt)]);

    // Outputs published by a core reach the subscriber exactly.
    while tokio::time::Instant::now() < deadline {
        let receivers: i64 = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(format!("{prefix}:main:outputs"))
            .query_async::<Vec<redis::Value>>(&mut conn)
            .await
            .map(|v| match v.get(1) {
                Some(redis::Value::Int(n)) => *n,
                _ => 0,
            })
            .unwrap();
        if receivers > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    write_outputs(&dir, &sample_outputs());
    let publisher = start(config, dir.clone(), Arc::new(MarketBoard::new(2)), Arc::new(BusStats::default()), Arc::clone(&stop));
    while seen.lock().unwrap().len() < 5 && tokio::time::Instant::now() < deadline + Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Relaxed);
    for t in [ingress, sub, publisher] {
        t.await.unwrap().unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, sample_outputs().into_iter().enumerate().map(|(i, o)| (i as u64, o)).collect::<Vec<_>>());
    assert_eq!(gaps.load(Relaxed), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two cores (shards a and b) on one Redis with one prefix: each keeps its own instrument
/// list (before shards both wrote `<prefix>:instruments` and the second overwrote the first),
/// and a subscriber to both gets every output of each, the same journal sequences apart by
/// their shard, with instrument ids moved into one merged id space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_on_one_redis_keep_their_instruments_and_outputs_apart() {
    let prefix = unique("shards");
    let base = BusConfig { prefix: prefix.clone(), ..BusConfig::new(REDIS) };
    let shards = ["a".to_string(), "b".to_string()];
    let lists = [vec!["BTCUSDT".to_string(), "ETHUSDT".to_string()], vec!["SOLUSDT".to_string(), "XRPUSDT".to_string()]];
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let set = Arc::new(ShardSet::new(shards.iter().cloned().zip(lists.iter().cloned()).collect()));
    let sub = {
        let seen = Arc::clone(&seen);
        tokio::spawn(run_shards_output_subscriber(
            base.clone(),
            Arc::clone(&set),
            Arc::new(BusStats::default()),
            Arc::new(AtomicU64::new(0)),
            Arc::clone(&stop),
            move |shard, seq, o| seen.lock().unwrap().push((shard, seq, *o)),
        ))
    };
    let client = redis::Client::open(REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for shard in &shards {
        let channel = format!("{prefix}:{shard}:outputs");
        loop {
            let v: Vec<redis::Value> = redis::cmd("PUBSUB").arg("NUMSUB").arg(&channel).query_async(&mut conn).await.unwrap();
            if matches!(v.get(1), Some(redis::Value::Int(n)) if *n > 0) || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut publishers = Vec::new();
    let mut dirs = Vec::new();
    for (shard, list) in shards.iter().zip(&lists) {
        let dir = std::env::temp_dir().join(format!("{prefix}-{shard}"));
        write_outputs(&dir, &sample_outputs());
        let config = base.for_shard(shard);
        let board = Arc::new(MarketBoard::new(list.len()));
        let stats = Arc::new(BusStats::default());
        publishers.push(tokio::spawn(run_publisher(config, dir.clone(), 0, board, list.clone(), stats, Arc::clone(&stop))));
        dirs.push(dir);
    }
    while seen.lock().unwrap().len() < 10 && tokio::time::Instant::now() < deadline + Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Both cores have connected (and recorded their lists) before publishing outputs.
    let never = AtomicBool::new(false);
    let read = read_shard_instruments(&base, &shards, &never);
    let got = tokio::time::timeout(Duration::from_secs(5), read).await.expect("both shards record their instruments").unwrap().unwrap();
    assert_eq!(*set, got, "each shard's list as it wrote it");
    assert_eq!(got.names(), ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]);
    assert_eq!((got.shard_of(InstrumentId(1)), got.shard_of(InstrumentId(2))), (Some("a"), Some("b")));
    assert_eq!(got.shard_of_symbol("XRPUSDT"), Some("b"));
    stop.store(true, Relaxed);
    for t in publishers.into_iter().chain([sub]) {
        t.await.unwrap().unwrap();
    }
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_by_key(|(shard, seq, _)| (*shard, *seq));
    let want: Vec<_> = (0..2).flat_map(|shard| sample_outputs().into_iter().enumerate().map(move |(i, o)| (shard, i as u64, o))).collect();
    assert_eq!(seen, want, "every output of both shards, once each, with its shard");
    // The signal (instrument 1 of its core) is ETHUSDT from shard a and XRPUSDT from shard b.
    let signal = |shard: usize| match set.to_merged(shard, &seen[shard * 5 + 2].2).output {
        EngineOutput::Signal { signal, .. } => set.names()[signal.instrument.0 as usize].clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!((signal(0), signal(1)), ("ETHUSDT".to_string(), "XRPUSDT".to_string()));
    for dir in dirs {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
