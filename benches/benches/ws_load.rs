//! Dashboard load: `sapphire run` (the release binary) twice on the same seed — once with no
//! dashboard clients, once with 500 WebSocket clients that read and 10 that never read — and
//! the engine's latency compared between the two in the same run (ratios: this machine is
//! shared and noisy). Also reported: the process's peak memory (VmHWM) in each run, and how
//! many non-reading clients the server dropped (`sapphire_ws_clients_dropped_total`).
//!
//! `cargo build --release --bin sapphire && cargo bench -p sapphire-benches --bench ws_load
//! [-- --quick]` (60 s per run by default, 15 s with --quick). The target: tick-to-order p99
//! moves by at most 10% with the clients; memory stays bounded; the slow clients are dropped.

use futures_util::StreamExt;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const READERS: usize = 500;
const NON_READERS: usize = 10;

fn binary() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    root.join("target/release/sapphire")
}

/// Starts `sapphire run` for `secs`; returns the child and its API address.
fn start(secs: u64, dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(binary())
        .args(["run", "--quiet", "--seed", "7", "--http-bind", "127.0.0.1:0", "--duration", &format!("{secs}s"), "--data-dir"])
        .arg(dir)
        .env("SAPPHIRE_CONFIG", dir.join("load.toml"))
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .stdout(Stdio::piped())
        // Kept for a post-mortem: `<tmp>/sapphire-ws-load-<pid>-<with clients>/stderr.log`.
        .stderr(std::fs::File::create(dir.join("stderr.log")).map(Stdio::from).unwrap_or_else(|_| Stdio::null()))
        .spawn()
        .expect("target/release/sapphire runs (cargo build --release --bin sapphire)");
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(reader.read_line(&mut line).expect("stdout") > 0, "sapphire ended before printing its address");
        if let Some(a) = line.trim().strip_prefix("api: http://") {
            break a.to_string();
        }
    };
    std::thread::spawn(move || for _ in reader.lines() {});
    (child, addr)
}

fn get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("the API accepts");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// The engine's latency from last-run.json: (tick_to_order p99, end_to_end p99), ns.
fn latency(dir: &std::path::Path) -> (u64, u64) {
    let text = std::fs::read_to_string(dir.join("last-run.json")).expect("last-run.json");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let p99 = |name: &str| {
        v["latency"].as_array().and_then(|a| a.iter().find(|s| s["name"] == name)).and_then(|s| s["p99_ns"].as_u64()).unwrap_or(0)
    };
    (p99("tick_to_order"), p99("end_to_end"))
}

struct Outcome {
    tick_to_order_p99: u64,
    end_to_end_p99: u64,
    peak_rss_kib: u64,
    dropped: u64,
    connected: usize,
    messages: u64,
}

fn one_run(secs: u64, with_clients: bool) -> Outcome {
    let dir = std::env::temp_dir().join(format!("sapphire-ws-load-{}-{with_clients}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("load.toml"), "[api]\nws_max_clients = 1000\nmax_connections = 2000\n").unwrap();
    let (mut child, addr) = start(secs, &dir);
    // Measured 4 s before the run ends, however long the clients took to connect.
    let measure_at = std::time::Instant::now() + Duration::from_secs(secs.saturating_sub(4).max(1));
    // The clients share core 0 with the server's edge threads, never the engine's core 1 (on
    // a 2-core machine there is nowhere else for them). They stand in for browsers on other
    // machines; `SAPPHIRE_LOAD_CLIENTS_NICE=1` runs them at nice 19 so their own CPU time counts
    // less against the engine (measured: a busy core 0 then starves them and handshakes stall).
    let nice_clients = std::env::var("SAPPHIRE_LOAD_CLIENTS_NICE").is_ok_and(|v| v == "1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(move || {
            let _ = core_affinity::set_for_current(core_affinity::CoreId { id: 0 });
            if nice_clients {
                let _ = sapphire_core::affinity::lower_current_thread_priority();
            }
        })
        .enable_all()
        .build()
        .unwrap();
    let messages = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut connected = 0;
    let peak;
    let mut dropped = 0;
    if with_clients {
        let url = format!("ws://{addr}/ws");
        let mut streams = Vec::new();
        for i in 0..READERS + NON_READERS {
            match runtime.block_on(tokio_tungstenite::connect_async(url.as_str())) {
                Ok((ws, _)) => {
                    connected += 1;
                    if i < READERS {
                        let messages = std::sync::Arc::clone(&messages);
                        runtime.spawn(async move {
                            let mut ws = ws;
                            while let Some(Ok(_)) = ws.next().await {
                                messages.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        });
                    } else {
                        // Never read: the server must drop these, not queue for them.
                        streams.push(ws);
                    }
                }
                Err(e) => eprintln!("client {i}: {e}"),
            }
        }
        std::thread::sleep(measure_at.saturating_duration_since(std::time::Instant::now()));
        let metrics = get(&addr, "/metrics");
        dropped = metrics
            .lines()
            .filter(|l| l.starts_with("sapphire_ws_clients_dropped_total"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum();
        peak = peak_rss_kib(child.id());
        drop(streams);
    } else {
        std::thread::sleep(measure_at.saturating_duration_since(std::time::Instant::now()));
        peak = peak_rss_kib(child.id());
    }
    let _ = child.wait();
    runtime.shutdown_timeout(Duration::from_secs(1));
    let (t, e) = latency(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    Outcome {
        tick_to_order_p99: t,
        end_to_end_p99: e,
        peak_rss_kib: peak,
        dropped,
        connected,
        messages: messages.load(std::sync::atomic::Ordering::Relaxed),
    }
}

fn main() {
    let _ = core_affinity::set_for_current(core_affinity::CoreId { id: 0 });
    if !binary().is_file() {
        println!("skipped: {} is not built (cargo build --release --bin sapphire)", binary().display());
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--rounds N`: N pairs (without, then with clients); each pair gives a ratio, and the
    // median of them is the result (one pair on a noisy shared machine can mislead).
    let rounds = args.iter().position(|a| a == "--rounds").and_then(|i| args.get(i + 1)?.parse::<usize>().ok()).unwrap_or(1).max(1);
    let secs = if quick { 15 } else { 60 };
    println!("ws_load: {secs} s per run, {rounds} round(s), {READERS} reading + {NON_READERS} non-reading /ws clients vs none");
    let ratio = |a: u64, b: u64| if b == 0 { f64::NAN } else { a as f64 / b as f64 };
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let base = one_run(secs, false);
        let load = one_run(secs, true);
        println!(
            "round {round}\n  no clients:   tick_to_order p99 {} ns, end_to_end p99 {} ns, peak RSS {} KiB",
            base.tick_to_order_p99, base.end_to_end_p99, base.peak_rss_kib
        );
        println!(
            "  with clients: tick_to_order p99 {} ns, end_to_end p99 {} ns, peak RSS {} KiB; {} connected, {} messages read, {} clients dropped",
            load.tick_to_order_p99, load.end_to_end_p99, load.peak_rss_kib, load.connected, load.messages, load.dropped
        );
        let t = ratio(load.tick_to_order_p99, base.tick_to_order_p99);
        println!(
            "  ratios (with ÷ without): tick_to_order p99 {t:.2}, end_to_end p99 {:.2}, peak RSS {:.2}; slow clients dropped: {}",
            ratio(load.end_to_end_p99, base.end_to_end_p99),
            ratio(load.peak_rss_kib, base.peak_rss_kib),
            if load.dropped >= NON_READERS as u64 { "all" } else { "NOT all" }
        );
        ratios.push(t);
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!(
        "median tick_to_order p99 ratio over {rounds} round(s): {median:.2} (target ≤ 1.10: {})",
        if median <= 1.10 { "met" } else { "NOT met" }
    );
}
