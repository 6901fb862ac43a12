//! The engine while its HTTP API is attacked: tick in to order out with the API server on the
//! same ring, quiet and then under what a hostile network sends — bursts of wrong bearer
//! tokens (429 after the burst), bodies over the limit (413), slowloris clients (cut at the
//! header timeout) and a flood of idle connections past the cap (evicted). The same events,
//! cores and schedule in both runs; the ratio is attack ÷ quiet.
//!
//! Latency is the engine's own `tick_to_order` (due time to order out, open-loop, as in
//! [`engine`](crate::engine)), with a signal every 50 market steps so orders are not rare.

use crate::case::{Case, Group, Ratio};
use crate::engine::{pipeline_config, widen, Pacer, Workload};
use crate::lab::Lab;
use sapphire_core::engine::EngineConfig;
use sapphire_core::journal::MemoryJournal;
use sapphire_core::pipeline::{Layout, Pipeline};
use sapphire_core::ring::Poll;
use sapphire_core::wait::WaitStrategy;
use sapphire_gateway::api::{ApiConfig, ApiServer, ApiToken, EdgeState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Event spacing of both runs.
const INTERVAL_NS: u64 = 5_000;
/// The API token of the server under attack (the attackers never have it).
const TOKEN: &str = "bench-api-token";

/// What the attack got answered, by kind.
#[derive(Debug, Default)]
struct AttackTally {
    /// Responses to wrong-token requests with status 429.
    throttled: AtomicU64,
    /// Responses to wrong-token requests with another status (403 before the burst ran out).
    refused: AtomicU64,
    /// Responses 413 to oversized bodies.
    too_large: AtomicU64,
    /// Slowloris connections the server closed.
    slow_cut: AtomicU64,
    /// Idle connections opened past the cap.
    flood_opened: AtomicU64,
}

/// Runs the attack until `stop`: each kind as its own tasks on a runtime of its own thread.
/// Its thread stays off `engine_core` (an attacker is another machine's work, not the engine's).
fn attack(addr: SocketAddr, engine_core: Vec<usize>, stop: Arc<AtomicBool>, tally: Arc<AttackTally>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = sapphire_core::affinity::keep_thread_off(&engine_core);
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..4 {
                let (stop, tally) = (Arc::clone(&stop), Arc::clone(&tally));
                tasks.spawn(async move {
                    let req = format!(
                        "POST /api/kill HTTP/1.1\r\nHost: b\r\nConnection: close\r\nAuthorization: Bearer not-{TOKEN}\r\nContent-Length: 0\r\n\r\n"
                    );
                    while !stop.load(Ordering::Relaxed) {
                        match exchange(addr, req.as_bytes()).await {
                            Some(429) => tally.throttled.fetch_add(1, Ordering::Relaxed),
                            Some(_) => tally.refused.fetch_add(1, Ordering::Relaxed),
                            None => 0,
                        };
                    }
                });
            }
            for _ in 0..2 {
                let (stop, tally) = (Arc::clone(&stop), Arc::clone(&tally));
                tasks.spawn(async move {
                    let mut req = format!(
                        "POST /api/limits HTTP/1.1\r\nHost: b\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        256 * 1024
                    )
                    .into_bytes();
                    req.extend(std::iter::repeat_n(b'9', 256 * 1024));
                    while !stop.load(Ordering::Relaxed) {
                        if exchange(addr, &req).await == Some(413) {
                            tally.too_large.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
            for _ in 0..32 {
                let (stop, tally) = (Arc::clone(&stop), Arc::clone(&tally));
                tasks.spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { continue };
                        for b in b"GET /dashboard HTTP/1.1\r\nHost: b\r\nX-Slow: ".iter().chain(std::iter::repeat(&b'a')) {
                            if stop.load(Ordering::Relaxed) || s.write_all(&[*b]).await.is_err() {
                                tally.slow_cut.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                });
            }
            {
                let (stop, tally) = (Arc::clone(&stop), Arc::clone(&tally));
                tasks.spawn(async move {
                    let mut held = std::collections::VecDeque::new();
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
                            held.push_back(s);
                            tally.flood_opened.fetch_add(1, Ordering::Relaxed);
                        }
                        if held.len() > 400 {
                            held.pop_front();
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        });
    })
}

/// One request on a fresh connection; the status, or `None` when the connection failed.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let _ = s.write_all(request).await;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Our fused pipeline with the API server on its ring, paced at [`INTERVAL_NS`]; under attack
/// when `attacked`. The `tick_to_order` case and what the attack got.
fn run(lab: &Lab, w: &Workload, attacked: bool) -> Case {
    let label = if attacked { "attack" } else { "quiet" };
    let mut pipeline = Pipeline::start(
        &pipeline_config(lab, Layout::Fused),
        &EngineConfig::default(),
        &w.instruments,
        Box::new(MemoryJournal::counting()),
    );
    let readers = pipeline.latency().to_vec();
    let mut outputs = pipeline.take_outputs().expect("outputs are taken once");
    let drain = std::thread::spawn(move || {
        let mut idle = 0;
        while outputs.poll(4_096, |_| {}) != Poll::Closed {
            WaitStrategy::Sleep(Duration::from_micros(200)).idle(&mut idle);
        }
    });
    let symbols = w.instruments.iter().map(|i| i.symbol.to_string()).collect();
    let state = Arc::new(EdgeState::new(pipeline.stats(), Vec::new(), symbols, 1));
    state.set_core_running(true);
    let config = ApiConfig { bind: "127.0.0.1:0".parse().expect("an address"), token: ApiToken::new(TOKEN).ok(), core: None };
    // As `sapphire run` keeps every thread but the engine off the engine's core (its process
    // CPU mask), the API server's threads and the attacker's run on the other cores: started
    // from a thread kept off that core, they inherit its mask.
    let engine_core: Vec<usize> = lab.consumer_core().into_iter().collect();
    let producer = pipeline.producer();
    let server = std::thread::spawn(move || {
        let _ = sapphire_core::affinity::keep_thread_off(&engine_core);
        ApiServer::start(config, state, producer)
    })
    .join()
    .expect("starting the API server");
    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(AttackTally::default()));
    let attacker = match (&server, attacked) {
        (Ok(server), true) => Some(attack(server.addr(), lab.consumer_core().into_iter().collect(), Arc::clone(&stop), Arc::clone(&tally))),
        _ => None,
    };
    // Both runs settle the same time before the first tick (the attack gets under way); without
    // it the first run started into threads still starting and measured that instead.
    std::thread::sleep(Duration::from_millis(300));
    let mut producer = pipeline.producer();
    let stats = pipeline.stats();
    let n = w.events.len() as u64;
    let elapsed = std::thread::scope(|s| {
        s.spawn(|| {
            let pin = lab.pin(format!("api_{label}/producer"), lab.producer_core());
            let start = Instant::now();
            let mut pacer = Pacer::new(INTERVAL_NS);
            for e in &w.events {
                let mut e = *e;
                e.set_ts_recv(pacer.next());
                if producer.publish(WaitStrategy::SpinHint, e).is_err() {
                    break;
                }
            }
            while stats.processed.load(Ordering::Relaxed) < n {
                std::hint::spin_loop();
            }
            pin.done();
            start.elapsed().as_secs_f64()
        })
        .join()
        .unwrap_or(f64::NAN)
    });
    stop.store(true, Ordering::Relaxed);
    if let Some(handle) = attacker {
        let _ = handle.join();
    }
    let server_note = match server {
        Ok(server) => {
            server.shutdown();
            String::new()
        }
        Err(e) => format!("; the API server did not start: {e}"),
    };
    let report = pipeline.shutdown();
    let _ = drain.join();
    for (thread, outcome) in &report.pins {
        lab.pins_record(&format!("api_{label}/{thread}"), outcome.clone());
    }
    let hist = readers.iter().find(|r| r.name() == "tick_to_order").map_or_else(crate::case::histogram, |r| widen(&r.histogram()));
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let what = if attacked {
        format!(
            "fused pipeline paced 5 µs, its HTTP API attacked: wrong tokens answered 429 ×{} / 403 ×{}, 256 KiB bodies 413 ×{}, \
             slowloris connections cut ×{}, idle connections opened ×{} (cap 256){server_note}",
            load(&tally.throttled),
            load(&tally.refused),
            load(&tally.too_large),
            load(&tally.slow_cut),
            load(&tally.flood_opened),
        )
    } else {
        format!("fused pipeline paced 5 µs, its HTTP API serving and quiet{server_note}")
    };
    Case::latency(format!("api_{label}_tick_to_order"), Group::Engine, what, hist, Some(n as f64 / elapsed))
}

/// The quiet run, then the attacked one, on the same events.
pub fn suite(lab: &Lab, mut progress: impl FnMut(&str)) -> Vec<Case> {
    let w = Workload::with_signals(lab.scale.pick(4_000, 30_000, 150_000), 50);
    progress("engine with its API quiet");
    let quiet = run(lab, &w, false);
    progress("engine with its API attacked");
    let attacked = run(lab, &w, true);
    vec![quiet, attacked]
}

/// `api_attack_vs_quiet_p99`: the engine's tick-to-order p99 under attack ÷ quiet.
pub fn ratio(cases: &[Case]) -> Option<Ratio> {
    let find = |n: &str| cases.iter().find(|c| c.name == n);
    Ratio::p99("api_attack_vs_quiet_tick_to_order_p99", find("api_attack_tick_to_order")?, find("api_quiet_tick_to_order")?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::Scale;

    #[test]
    fn both_runs_measure_orders_and_the_attack_is_answered() {
        let lab = Lab::new(Scale::Smoke, std::env::temp_dir());
        let cases = suite(&lab, |_| {});
        assert_eq!(cases.len(), 2);
        for c in &cases {
            assert!(c.samples() > 0, "{}: orders were timed", c.name);
            assert!(!c.what.contains("did not start"), "{}", c.what);
        }
        // The attack ran and was refused the way the API says (429 past the burst).
        assert!(!cases[1].what.contains("429 ×0 "), "{}", cases[1].what);
        assert!(ratio(&cases).is_some());
    }
}
