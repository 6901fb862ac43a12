//! End to end on loopback: the local Binance exchange (`sapphire_gateway::local_exchange`)
//! replays a recording at its recorded pace over WebSocket; the real feed client
//! (`sapphire_gateway::connection::BinanceConnection`) reads it, stamps `ts_recv`, parses and
//! publishes into a ring; a pinned engine thread runs `Engine::process` on each event.
//!
//! The local exchange cannot stamp its send times (it is shared code with no hook for it), so
//! the pipeline is measured from frame receipt, and decomposed per event:
//!
//! - `recv → publish`: parsing the whole frame, then publishing its events one by one;
//! - `publish → pickup`: the hop through the ring to the engine thread;
//! - `pickup → exit`: `Engine::process` (all four stages) for that event;
//! - `recv → exit` for every event, for events that produced orders (tick to order), and for
//!   the last event of each frame (when the whole frame is through).
//!
//! And per frame (a frame ends at a quote, a trade, or the `BookDelta` flagged `DELTA_LAST`;
//! a WebSocket frame from Binance is one venue message):
//!
//! - `first_publish_to_pickup`: the hop of a frame's FIRST event (published → picked up),
//!   which waits behind no other event of its own frame: compare with the one-hop ring case
//!   of the same run (`e2e_first_pickup_vs_hop_ring_p50`);
//! - `recv_to_first_publish`: frame receipt → its first event published (the parse);
//! - `ticker_trade_frame_done`: bookTicker and trade frames, receipt → the event through the
//!   engine (the decision taken; an order when the strategies place one);
//! - `depth_frame_done`: depth update frames (not REST snapshots), receipt → the frame's last
//!   level through the engine (the book updated and the decision taken).
//!
//! A separate case measures the wire itself: frames stamped at `ws.send` in a tokio-tungstenite
//! server and read by a tokio-tungstenite client (the feed client's library) on loopback.
//! Per-event clock reads (three per event) add ~60-90 ns to the engine-side figures.

use crate::case::{histogram, record, Case, Group};
use crate::lab::Lab;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use sapphire_core::engine::{Engine, EngineConfig, EngineOutput, Output, OutputSink};
use sapphire_core::event::{Event, DELTA_LAST, DELTA_SNAPSHOT};
use sapphire_core::instrument::{InstrumentRegistry, MarketType};
use sapphire_core::latency::unix_nanos;
use sapphire_core::order::Order;
use sapphire_core::ring::{ring, Consumer, Poll, Producer};
use sapphire_gateway::binance::instruments::{parse_exchange_info, register};
use sapphire_gateway::binance::{BinanceFeed, BinanceMarket};
use sapphire_gateway::connection::{BinanceConnection, BinanceConnectionConfig, EventSink, Shutdown};
use sapphire_gateway::local_exchange::tape::Tape;
use sapphire_gateway::local_exchange::{LocalExchange, LocalExchangeConfig, Pace};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// An inbound event with the time the feed client published it.
#[derive(Clone, Copy, Debug, Default)]
struct Stamped {
    event: Event,
    published: u64,
}

/// The feed client's sink: our ring, stamping the publish time.
struct StampSink {
    producer: Producer<Stamped>,
}

impl EventSink for StampSink {
    fn try_publish(&mut self, event: Event) -> Result<(), Event> {
        let published = unix_nanos();
        self.producer.try_publish(Stamped { event, published }).map(|_| ()).map_err(|s| s.event)
    }
}

/// Counts orders the engine emits.
#[derive(Debug, Default)]
struct Orders(u64);

impl OutputSink for Orders {
    fn emit(&mut self, out: Output) {
        if matches!(out.output, EngineOutput::Order(_)) {
            self.0 += 1;
        }
    }
}

/// What the engine thread measured.
#[derive(Debug)]
struct EngineSide {
    recv_to_publish: Histogram<u64>,
    publish_to_pickup: Histogram<u64>,
    process: Histogram<u64>,
    recv_to_exit: Histogram<u64>,
    tick_to_order: Histogram<u64>,
    frame_done: Histogram<u64>,
    events_per_frame: Histogram<u64>,
    first_pickup: Histogram<u64>,
    first_publish: Histogram<u64>,
    ticker_trade_done: Histogram<u64>,
    depth_done: Histogram<u64>,
    depth_levels: Histogram<u64>,
    snapshot_done: Histogram<u64>,
    events: u64,
    /// The engine thread's (voluntary, involuntary) context switches during the run.
    switches: Option<(u64, u64)>,
    /// The engine thread's (ns on a CPU, ns waiting to run) during the run.
    sched: Option<(u64, u64)>,
    /// The engine thread's (minor, major) page faults during the run.
    faults: Option<(u64, u64)>,
}

/// What a frame carried, judged by its first event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FrameKind {
    /// A bookTicker or trade frame (one event).
    TickerTrade,
    /// A depth update (one delta per level).
    Depth,
    /// A REST depth snapshot (every level of the book).
    Snapshot,
    /// Anything else (resync markers).
    Other,
}

impl FrameKind {
    fn of(e: &Event) -> Self {
        match e {
            Event::Quote(_) | Event::Trade(_) => FrameKind::TickerTrade,
            Event::BookDelta(d) if d.flags & DELTA_SNAPSHOT != 0 => FrameKind::Snapshot,
            Event::BookDelta(d) if d.flags & sapphire_core::event::DELTA_RESYNC != 0 => FrameKind::Other,
            Event::BookDelta(_) => FrameKind::Depth,
            _ => FrameKind::Other,
        }
    }
}

/// True for the last event of a venue message: any event but a book delta, or the delta
/// flagged `DELTA_LAST`.
fn ends_frame(e: &Event) -> bool {
    match e {
        Event::BookDelta(d) => d.flags & DELTA_LAST != 0,
        _ => true,
    }
}

fn engine_loop(mut consumer: Consumer<Stamped>, mut engine: Engine) -> EngineSide {
    let mut side = EngineSide {
        recv_to_publish: histogram(),
        publish_to_pickup: histogram(),
        process: histogram(),
        recv_to_exit: histogram(),
        tick_to_order: histogram(),
        frame_done: histogram(),
        events_per_frame: histogram(),
        first_pickup: histogram(),
        first_publish: histogram(),
        ticker_trade_done: histogram(),
        depth_done: histogram(),
        depth_levels: histogram(),
        snapshot_done: histogram(),
        events: 0,
        switches: None,
        sched: None,
        faults: None,
    };
    let faults_before = crate::lab::page_faults();
    let switches_before = crate::lab::context_switches();
    let sched_before = crate::lab::schedstat();
    let mut sink = Orders::default();
    let mut outbound: Vec<Order> = Vec::new();
    // The frame being read: its receipt time, kind, and events so far (0: none yet).
    let (mut frame_recv, mut frame_kind, mut frame_events) = (0u64, FrameKind::Other, 0u64);
    let mut seq = 0i64;
    loop {
        let polled = consumer.poll(512, |s, _, _| {
            let pickup = unix_nanos();
            let recv = s.event.ts_recv();
            let before = sink.0;
            engine.process(seq, &s.event, &mut outbound, &mut sink);
            outbound.clear();
            seq += 1;
            let exit = unix_nanos();
            if frame_events == 0 {
                // The frame's first event: it waited behind nothing of its own frame.
                (frame_recv, frame_kind) = (recv, FrameKind::of(&s.event));
                record(&mut side.first_pickup, pickup.saturating_sub(s.published));
                record(&mut side.first_publish, s.published.saturating_sub(recv));
            }
            frame_events += 1;
            record(&mut side.recv_to_publish, s.published.saturating_sub(recv));
            record(&mut side.publish_to_pickup, pickup.saturating_sub(s.published));
            record(&mut side.process, exit.saturating_sub(pickup));
            record(&mut side.recv_to_exit, exit.saturating_sub(recv));
            if sink.0 > before {
                record(&mut side.tick_to_order, exit.saturating_sub(recv));
            }
            if ends_frame(&s.event) {
                let done = exit.saturating_sub(frame_recv);
                record(&mut side.frame_done, done);
                record(&mut side.events_per_frame, frame_events);
                match frame_kind {
                    FrameKind::TickerTrade => record(&mut side.ticker_trade_done, done),
                    FrameKind::Depth => {
                        record(&mut side.depth_done, done);
                        record(&mut side.depth_levels, frame_events);
                    }
                    FrameKind::Snapshot => record(&mut side.snapshot_done, done),
                    FrameKind::Other => {}
                }
                frame_events = 0;
            }
            side.events += 1;
        });
        match polled {
            Poll::Handled(_) => {}
            Poll::Empty => std::hint::spin_loop(),
            Poll::Closed => break,
        }
    }
    if let (Some(a), Some(b)) = (switches_before, crate::lab::context_switches()) {
        side.switches = Some((b.0.saturating_sub(a.0), b.1.saturating_sub(a.1)));
    }
    if let (Some(a), Some(b)) = (faults_before, crate::lab::page_faults()) {
        side.faults = Some((b.0.saturating_sub(a.0), b.1.saturating_sub(a.1)));
    }
    if let (Some(a), Some(b)) = (sched_before, crate::lab::schedstat()) {
        side.sched = Some((b.0.saturating_sub(a.0), b.1.saturating_sub(a.1)));
    }
    side
}

/// The recording to replay: the shared recorded file, else the project's fixture.
pub fn recording() -> (PathBuf, BinanceMarket, String) {
    match crate::feed::recorded_path() {
        Some(p) => (p, BinanceMarket::UsdM, "recorded Binance USD-M BTCUSDT (depth@0ms, bookTicker, trade)".into()),
        None => (crate::feed::fixture_path(), BinanceMarket::Spot, "the project's Binance spot BTCUSDT fixture".into()),
    }
}

/// The recorded Binance spot BTCUSDT file with 100 ms depth frames, if the shared data is
/// beside the repository.
pub fn recording_spot_100ms() -> Option<(PathBuf, BinanceMarket, String)> {
    crate::feed::recorded_spot_path()
        .map(|p| (p, BinanceMarket::Spot, "recorded Binance spot BTCUSDT (depth@100ms, bookTicker, trade)".to_string()))
}

/// Replays at the recorded pace for `duration` through feed client and engine. The local
/// exchange's runtime threads run unpinned (as `sapphire feed serve` does) when
/// `exchange_core` is `None`, else pinned there; case names start with `prefix`.
pub fn pipeline(lab: &Lab, duration: Duration, exchange_core: Option<usize>, prefix: &str) -> Result<(Vec<Case>, Vec<String>), String> {
    let source = if lab.scale == crate::lab::Scale::Smoke {
        (crate::feed::fixture_path(), BinanceMarket::Spot, "the project's Binance spot BTCUSDT fixture".to_string())
    } else {
        recording()
    };
    pipeline_of(lab, duration, exchange_core, prefix, source)
}

/// [`pipeline`] on a given recording `(path, market, description)`.
pub fn pipeline_of(
    lab: &Lab,
    duration: Duration,
    exchange_core: Option<usize>,
    prefix: &str,
    (path, market, source): (PathBuf, BinanceMarket, String),
) -> Result<(Vec<Case>, Vec<String>), String> {
    let tape = Tape::load(&[&path]).map_err(|e| e.to_string())?;
    let symbols = tape.symbols();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(1).enable_all();
    if let Some(core) = exchange_core {
        builder.on_thread_start(move || {
            let _ = sapphire_core::affinity::pin_current_thread(Some(core));
        });
    }
    let runtime = builder.build().map_err(|e| format!("exchange runtime: {e}"))?;
    let mut config = LocalExchangeConfig::new(market, Pace::Recorded);
    config.shift_times_to_now = true;
    let exchange = runtime.block_on(LocalExchange::start(config, tape)).map_err(|e| e.to_string())?;
    let (venue, kind, info) = match market {
        BinanceMarket::UsdM => ("binance-usdm", MarketType::LinearPerpetual, "/fapi/v1/exchangeInfo"),
        BinanceMarket::Spot => ("binance", MarketType::Spot, "/api/v3/exchangeInfo"),
    };
    let url = format!("{}{info}", exchange.rest_url());
    let body = runtime.block_on(sapphire_gateway::connection::http::get(&url)).map_err(|e| format!("{url}: {e}"))?;
    let listed = parse_exchange_info(&body).map_err(|e| format!("{url}: {e}"))?;
    let mut registry = InstrumentRegistry::new();
    register(&listed, &symbols, 16, venue, kind, &mut registry)?;
    let instruments: Vec<_> = registry.iter().cloned().collect();
    let syms: Vec<&str> = symbols.iter().map(String::as_str).collect();
    let conn_config = BinanceConnectionConfig::new(exchange.ws_url(), exchange.rest_url(), market, &syms);
    let connection = BinanceConnection::new(conn_config, BinanceFeed::new(market, &registry, venue));
    let (producer, mut consumers) = ring::<Stamped>(1 << 16, 1);
    let consumer = consumers.pop().ok_or("no consumer")?;
    let engine = Engine::new(&EngineConfig::default(), &instruments);
    let stop = AtomicBool::new(false);
    let (tx, rx) = tokio::sync::broadcast::channel::<()>(1);
    let (side, feed_note) = std::thread::scope(|s| {
        // Named, so that `ps -L` and `chrt -p` can find it.
        let engine_thread = std::thread::Builder::new()
            .name("e2e-engine".into())
            .spawn_scoped(s, || {
                let pin = lab.pin(format!("{prefix}/engine"), lab.consumer_core());
                let side = engine_loop(consumer, engine);
                pin.done();
                side
            })
            .map_err(|e| format!("starting the engine thread: {e}"))?;
        let feed = s.spawn(|| {
            let pin = lab.pin(format!("{prefix}/feed"), lab.producer_core());
            let mut sink = StampSink { producer };
            let (switches, sched) = (crate::lab::context_switches(), crate::lab::schedstat());
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                let _ = rt.block_on(connection.run(&mut sink, Shutdown::new(rx)));
            }
            sink.producer.close();
            pin.done();
            match (switches, crate::lab::context_switches(), sched, crate::lab::schedstat()) {
                (Some(a), Some(b), Some(c), Some(d)) => format!(
                    "the feed thread was switched out {} times involuntarily ({} voluntarily), waited {} ms for its core, ran {} ms",
                    b.1.saturating_sub(a.1),
                    b.0.saturating_sub(a.0),
                    d.1.saturating_sub(c.1) / 1_000_000,
                    d.0.saturating_sub(c.0) / 1_000_000
                ),
                _ => String::new(),
            }
        });
        let deadline = std::time::Instant::now() + duration;
        while std::time::Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        let _ = tx.send(());
        let feed_note = feed.join().unwrap_or_default();
        engine_thread.join().map(|side| (side, feed_note)).map_err(|_| "engine thread panicked".to_string())
    })?;
    let frames_sent = exchange.stats().borrow().frames_sent;
    runtime.block_on(exchange.shutdown());
    runtime.shutdown_timeout(Duration::from_secs(1));
    let secs = duration.as_secs_f64();
    let rate = Some(side.events as f64 / secs);
    let epf = &side.events_per_frame;
    let placement = match exchange_core {
        None => "exchange threads unpinned".to_string(),
        Some(c) => format!("exchange threads pinned to core {c}"),
    };
    let notes = vec![
        format!(
            "{prefix}: {placement}; {source} at recorded pace for {secs:.1} s: {frames_sent} frames sent, {} events, events per frame p50 {} p99 {} max {}; the pinned engine thread was switched out {} times involuntarily ({} voluntarily) and waited {} ms in all for its core ({} ms on it); it took {} page faults",
            side.events,
            if epf.is_empty() { 0 } else { epf.value_at_quantile(0.5) },
            if epf.is_empty() { 0 } else { epf.value_at_quantile(0.99) },
            epf.max(),
            side.switches.map_or_else(|| "?".into(), |s| s.1.to_string()),
            side.switches.map_or_else(|| "?".into(), |s| s.0.to_string()),
            side.sched.map_or_else(|| "?".into(), |s| (s.1 / 1_000_000).to_string()),
            side.sched.map_or_else(|| "?".into(), |s| (s.0 / 1_000_000).to_string()),
            side.faults.map_or_else(|| "?".into(), |f| format!("{} minor, {} major", f.0, f.1)),
        ),
    ];
    let mut notes = notes;
    let q = |h: &Histogram<u64>, p: f64| if h.is_empty() { 0 } else { h.value_at_quantile(p) };
    notes.push(format!(
        "{prefix}: per frame: {} bookTicker/trade frames, {} depth update frames (levels per frame p50 {} p99 {} max {}), {} REST snapshots (receipt → last level through the engine p50 {} µs)",
        side.ticker_trade_done.len(),
        side.depth_done.len(),
        q(&side.depth_levels, 0.5),
        q(&side.depth_levels, 0.99),
        side.depth_levels.max(),
        side.snapshot_done.len(),
        q(&side.snapshot_done, 0.5) / 1_000,
    ));
    if !feed_note.is_empty() {
        notes.push(format!("{prefix}: {feed_note}"));
    }
    let c = |name: &str, what: &str, h: Histogram<u64>| {
        Case::latency(format!("{prefix}_{name}"), Group::EndToEnd, format!("{what} ({placement})"), h, rate)
    };
    Ok((
        vec![
            c(
                "recv_to_publish",
                "frame receipt (ts_recv) → the event published into the ring: parse the whole frame, then publish",
                side.recv_to_publish,
            ),
            c("publish_to_pickup", "published → picked up by the pinned engine thread (the ring hop)", side.publish_to_pickup),
            c("engine_process", "Engine::process per event, all four stages", side.process),
            c("recv_to_exit", "frame receipt → the event leaving the engine, every event", side.recv_to_exit),
            c("recv_to_order", "frame receipt → order out of the engine (events that produced orders)", side.tick_to_order),
            c("recv_to_frame_done", "frame receipt → the frame's last event leaving the engine", side.frame_done),
            c(
                "first_publish_to_pickup",
                "published → picked up, the FIRST event of each frame (it waits behind nothing of its own frame)",
                side.first_pickup,
            ),
            c("recv_to_first_publish", "frame receipt → the frame's first event published (parse)", side.first_publish),
            c(
                "ticker_trade_frame_done",
                "bookTicker and trade frames: receipt → the event through the engine (decision taken; an order when one is placed)",
                side.ticker_trade_done,
            ),
            c(
                "depth_frame_done",
                "depth update frames (no REST snapshots): receipt → the frame's last level through the engine (book updated, decision taken)",
                side.depth_done,
            ),
        ],
        notes,
    ))
}

/// The wire alone: `frames` bookTicker-sized text frames, one every `interval`, stamped just
/// before `ws.send` in a tokio-tungstenite server and read by a tokio-tungstenite client on
/// loopback; latency is receipt − stamp.
pub fn ws_hop(lab: &Lab, frames: u64, interval: Duration) -> Result<Case, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let server_lab = lab.clone();
    let server = std::thread::spawn(move || -> Result<(), String> {
        let pin = server_lab.pin("e2e_ws/server", server_lab.consumer_core());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        let result = rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
            let (stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
                .await
                .map_err(|_| "no client".to_string())?
                .map_err(|e| e.to_string())?;
            let _ = stream.set_nodelay(true);
            let mut ws = tokio_tungstenite::accept_async(stream).await.map_err(|e| e.to_string())?;
            let mut tick = tokio::time::interval(interval);
            for i in 0..frames {
                tick.tick().await;
                let text = format!(
                    r#"{{"stream":"btcusdt@bookTicker","data":{{"e":"bookTicker","u":{i},"s":"BTCUSDT","b":"61650.20","B":"3.184","a":"61650.30","A":"4.372","T":1,"E":1,"sent":{}}}}}"#,
                    unix_nanos()
                );
                ws.send(tokio_tungstenite::tungstenite::Message::text(text)).await.map_err(|e| e.to_string())?;
            }
            let _ = ws.close(None).await;
            Ok(())
        });
        pin.done();
        result
    });
    let pin = lab.pin("e2e_ws/client", lab.producer_core());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let hist = rt.block_on(async move {
        let mut hist = histogram();
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(format!("ws://{addr}/stream")).await else {
            return hist;
        };
        while let Some(Ok(msg)) = ws.next().await {
            let now = unix_nanos();
            if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                let sent = t.as_str().rsplit_once("\"sent\":").and_then(|(_, v)| v.trim_end_matches('}').parse::<u64>().ok());
                if let Some(sent) = sent {
                    record(&mut hist, now.saturating_sub(sent));
                }
            }
        }
        hist
    });
    pin.done();
    server.join().map_err(|_| "server panicked".to_string())??;
    let rate = Some(1e9 / interval.as_nanos().max(1) as f64);
    Ok(Case::latency(
        "e2e_ws_loopback_frame",
        Group::EndToEnd,
        "one WebSocket text frame on loopback: stamped before ws.send (tokio-tungstenite server) → read by a tokio-tungstenite client",
        hist,
        rate,
    ))
}

/// The end-to-end cases; failures become notes (the rest of the suite still runs).
pub fn suite(lab: &Lab, mut progress: impl FnMut(&str)) -> (Vec<Case>, Vec<String>) {
    let mut cases = Vec::new();
    let mut notes = Vec::new();
    progress("e2e websocket hop");
    match ws_hop(lab, lab.scale.pick(200, 5_000, 50_000), Duration::from_micros(200)) {
        Ok(c) => cases.push(c),
        Err(e) => notes.push(format!("end to end: the WebSocket hop did not run: {e}")),
    }
    notes.push(
        "end to end: the local exchange cannot stamp send times, so the pipeline cases start at frame receipt (ts_recv); \
         e2e_ws_loopback_frame measures the wire (and the receiver's wake-up) separately"
            .into(),
    );
    let duration = lab.scale.pick(Duration::from_millis(800), Duration::from_secs(8), Duration::from_secs(60));
    // As `sapphire feed serve` runs (unpinned, free to land on the engine's core), then with
    // the exchange kept on the feed's core: the difference is what an unpinned neighbour costs.
    for (label, core, prefix) in [("unpinned", None, "e2e"), ("pinned", lab.producer_core(), "e2e_exchange_pinned")] {
        progress(&format!("e2e exchange ({label}) → feed → engine"));
        match pipeline(lab, duration, core, prefix) {
            Ok((c, n)) => {
                cases.extend(c);
                notes.extend(n);
            }
            Err(e) => notes.push(format!("{prefix}: the loopback pipeline did not run: {e}")),
        }
    }
    // Spot, whose depth stream comes in 100 ms frames (the USD-M recording's is depth@0ms).
    progress("e2e spot depth@100ms → feed → engine");
    if lab.scale != crate::lab::Scale::Smoke {
        match recording_spot_100ms().map(|r| pipeline_of(lab, duration, None, "e2e_spot", r)) {
            Some(Ok((c, n))) => {
                cases.extend(c);
                notes.extend(n);
            }
            Some(Err(e)) => notes.push(format!("e2e_spot: the loopback pipeline did not run: {e}")),
            None => notes.push("e2e_spot: no recorded spot file beside the repository; the 100 ms depth case did not run".into()),
        }
    }
    (cases, notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::Scale;

    #[test]
    fn the_wire_hop_reads_every_stamped_frame() {
        let lab = Lab::new(Scale::Smoke, std::env::temp_dir());
        let c = ws_hop(&lab, 50, Duration::from_micros(200)).unwrap();
        assert_eq!(c.samples(), 50);
        assert!(c.p50().unwrap() > 0);
    }

    #[test]
    fn the_fixture_flows_from_exchange_to_engine() {
        let lab = Lab::new(Scale::Smoke, std::env::temp_dir());
        let (cases, notes) = pipeline(&lab, Duration::from_millis(1_500), lab.producer_core(), "e2e").unwrap();
        let by = |n: &str| cases.iter().find(|c| c.name == n).unwrap();
        let events = by("e2e_recv_to_exit").samples();
        assert!(events > 0, "{notes:?}");
        assert_eq!(by("e2e_recv_to_publish").samples(), events);
        assert_eq!(by("e2e_engine_process").samples(), events);
        assert!(by("e2e_recv_to_frame_done").samples() > 0);
        let frames = by("e2e_recv_to_frame_done").samples();
        assert_eq!(by("e2e_first_publish_to_pickup").samples(), frames, "one first event per frame");
        assert_eq!(by("e2e_recv_to_first_publish").samples(), frames);
        assert!(by("e2e_ticker_trade_frame_done").samples() > 0);
        assert!(by("e2e_depth_frame_done").samples() > 0);
        assert!(by("e2e_ticker_trade_frame_done").samples() + by("e2e_depth_frame_done").samples() <= frames);
        assert!(notes.iter().any(|n| n.contains("switched out")), "{notes:?}");
    }
}
