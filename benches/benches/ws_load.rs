//! Dashboard load: `sapphire run` (the release binary) twice on the same seed — once with no
//! dashboard clients, once with 500 WebSocket clients that read and 10 that never read — and
//! the engine's latency compared between the two in the same run (ratios: this machine is
//! shared and noisy). Also reported: the process's peak memory (VmHWM) in each run, how many
//! non-reading clients the server dropped (`sapphire_ws_clients_dropped_total`), the serving
//! thread's CPU share, and the engine's stalls (its core taken from it: `engine_stalled_ns`).
//!
//! `cargo build --release --bin sapphire && cargo bench -p sapphire-benches --bench ws_load
//! [-- --quick] [--rounds N]` (60 s per run by default, 30 s with --quick: long enough for
//! the non-reading clients to be dropped). The target: tick-to-order p99 moves by at most 10%
//! with the clients; memory stays bounded; the slow clients are dropped.
//!
//! Each round is a pair of runs (without, then with clients). A round is judged only when the
//! engine lost at most [`QUIET_STALL_PCT`] of both runs to stalls; the verdict is the median
//! ratio of the judged rounds. The runs trade 30 synthetic symbols (about 60 orders a second),
//! so each p99 rests on thousands of orders.

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

/// Spawns through a thread started before `main` pinned itself to core 0: a child inherits
/// the CPU mask of the thread that forks it, and a server confined to core 0 would run its
/// engine beside its own edge threads and the clients (measuring nothing but that sharing).
fn spawn_unpinned(command: Command) -> std::io::Result<Child> {
    let (reply, answer) = std::sync::mpsc::channel();
    SPAWNER.get().expect("the spawner starts first").lock().expect("spawner").send((command, reply)).expect("spawner alive");
    answer.recv().expect("spawner answers")
}

type SpawnRequest = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);
static SPAWNER: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<SpawnRequest>>> = std::sync::OnceLock::new();

fn start_spawner() {
    let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
    std::thread::spawn(move || {
        for (mut command, reply) in rx {
            let _ = reply.send(command.spawn());
        }
    });
    let _ = SPAWNER.set(std::sync::Mutex::new(tx));
}

/// Starts `sapphire run` for `secs`; returns the child and its API address.
fn start(secs: u64, dir: &std::path::Path) -> (Child, String) {
    let mut command = Command::new(binary());
    command
        .args(["run", "--quiet", "--seed", "7", "--http-bind", "127.0.0.1:0", "--duration", &format!("{secs}s"), "--data-dir"])
        .arg(dir)
        .env("SAPPHIRE_CONFIG", dir.join("load.toml"))
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .stdout(Stdio::piped())
        // Kept for a post-mortem: `<tmp>/sapphire-ws-load-<pid>-<with clients>/stderr.log`.
        .stderr(std::fs::File::create(dir.join("stderr.log")).map(Stdio::from).unwrap_or_else(|_| Stdio::null()));
    let mut child = spawn_unpinned(command).expect("target/release/sapphire runs (cargo build --release --bin sapphire)");
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

/// CPU time (user + system, clock ticks) of the process's threads named `name`.
fn thread_ticks(pid: u32, name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(|t| {
            let t = t.ok()?.path();
            if std::fs::read_to_string(t.join("comm")).ok()?.trim() != name {
                return None;
            }
            let stat = std::fs::read_to_string(t.join("stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// The run's figures from last-run.json: (tick_to_order p99 ns, end_to_end p99 ns, orders,
/// engine stalls, engine stalled ns).
fn run_figures(dir: &std::path::Path) -> (u64, u64, u64, u64, u64) {
    let text = std::fs::read_to_string(dir.join("last-run.json")).expect("last-run.json");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let p99 = |name: &str| {
        v["latency"].as_array().and_then(|a| a.iter().find(|s| s["name"] == name)).and_then(|s| s["p99_ns"].as_u64()).unwrap_or(0)
    };
    let n = |key: &str| v[key].as_u64().unwrap_or(0);
    (p99("tick_to_order"), p99("end_to_end"), n("orders"), n("engine_stalls"), n("engine_stalled_ns"))
}

struct Outcome {
    /// Orders in the run (tick_to_order samples).
    orders: u64,
    /// Engine stalls (count, ms) and the serving thread's CPU share over the measured span.
    stalls: (u64, f64),
    api_cpu_pct: f64,
    tick_to_order_p99: u64,
    end_to_end_p99: u64,
    peak_rss_kib: u64,
    dropped: u64,
    connected: usize,
    messages: u64,
}

/// CPU share (% of one core) of clock ticks since `from`.
fn cpu_pct(from: (std::time::Instant, u64), ticks_now: u64) -> f64 {
    // Linux reports thread times in USER_HZ ticks, 100 a second.
    let secs = from.0.elapsed().as_secs_f64().max(1e-9);
    ticks_now.saturating_sub(from.1) as f64 / 100.0 / secs * 100.0
}

fn one_run(secs: u64, with_clients: bool) -> Outcome {
    let dir = std::env::temp_dir().join(format!("sapphire-ws-load-{}-{with_clients}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // 30 synthetic symbols and a looser order-rate limit: about 60 orders a second rather than
    // 5, so the tick_to_order p99 of one run rests on thousands of orders, not its few worst.
    let symbols: Vec<String> = (0..30).map(|i| format!("\"S{i:02}USDT\"")).collect();
    let config = format!(
        "[api]\nws_max_clients = 1000\nmax_connections = 2000\n[market]\nsymbols = [{}]\n[risk]\norders_per_sec = 200\norder_burst = 400\n",
        symbols.join(", ")
    );
    std::fs::write(dir.join("load.toml"), config).unwrap();
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
    let api_cpu_pct;
    if with_clients {
        let url = format!("ws://{addr}/ws");
        let mut streams = Vec::new();
        // The non-readers first: they then have the whole run to fill their buffers and be
        // dropped (a ping every 5 s, dropped 15 s late).
        for i in 0..READERS + NON_READERS {
            match runtime.block_on(tokio_tungstenite::connect_async(url.as_str())) {
                Ok((ws, _)) => {
                    connected += 1;
                    if i >= NON_READERS {
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
        let api_from = (std::time::Instant::now(), thread_ticks(child.id(), "sapphire-api"));
        std::thread::sleep(measure_at.saturating_duration_since(std::time::Instant::now()));
        api_cpu_pct = cpu_pct(api_from, thread_ticks(child.id(), "sapphire-api"));
        let metrics = get(&addr, "/metrics");
        dropped = metrics
            .lines()
            .filter(|l| l.starts_with("sapphire_ws_clients_dropped_total"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum();
        peak = peak_rss_kib(child.id());
        drop(streams);
    } else {
        let api_from = (std::time::Instant::now(), thread_ticks(child.id(), "sapphire-api"));
        std::thread::sleep(measure_at.saturating_duration_since(std::time::Instant::now()));
        api_cpu_pct = cpu_pct(api_from, thread_ticks(child.id(), "sapphire-api"));
        peak = peak_rss_kib(child.id());
    }
    let _ = child.wait();
    runtime.shutdown_timeout(Duration::from_secs(1));
    let (t, e, orders, stall_count, stall_ns) = run_figures(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    Outcome {
        orders,
        stalls: (stall_count, stall_ns as f64 / 1e6),
        api_cpu_pct,
        tick_to_order_p99: t,
        end_to_end_p99: e,
        peak_rss_kib: peak,
        dropped,
        connected,
        messages: messages.load(std::sync::atomic::Ordering::Relaxed),
    }
}

fn main() {
    start_spawner();
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
    // --quick still outlasts the slow-client bound (a ping every 5 s, dropped 15 s late).
    let secs = if quick { 30 } else { 60 };
    println!("ws_load: {secs} s per run, {rounds} round(s), {READERS} reading + {NON_READERS} non-reading /ws clients vs none");
    let ratio = |a: u64, b: u64| if b == 0 { f64::NAN } else { a as f64 / b as f64 };
    let (mut all, mut judged) = (Vec::new(), Vec::new());
    let stall_pct = |o: &Outcome| o.stalls.1 / 10.0 / secs as f64;
    for round in 1..=rounds {
        let base = one_run(secs, false);
        let load = one_run(secs, true);
        let line = |o: &Outcome| {
            format!(
                "tick_to_order p99 {} ns ({} orders), end_to_end p99 {} ns, peak RSS {} KiB, engine stalls {} ({:.1} ms, {:.2}% of the run), API thread {:.1}% of a core",
                o.tick_to_order_p99,
                o.orders,
                o.end_to_end_p99,
                o.peak_rss_kib,
                o.stalls.0,
                o.stalls.1,
                stall_pct(o),
                o.api_cpu_pct
            )
        };
        println!("round {round}\n  no clients:   {}", line(&base));
        println!(
            "  with clients: {}; {} connected, {} messages read, {} clients dropped",
            line(&load),
            load.connected,
            load.messages,
            load.dropped
        );
        let t = ratio(load.tick_to_order_p99, base.tick_to_order_p99);
        println!(
            "  ratios (with ÷ without): tick_to_order p99 {t:.2}, end_to_end p99 {:.2}, peak RSS {:.2}; slow clients dropped: {}",
            ratio(load.end_to_end_p99, base.end_to_end_p99),
            ratio(load.peak_rss_kib, base.peak_rss_kib),
            if load.dropped >= NON_READERS as u64 { "all" } else { "NOT all" }
        );
        all.push(t);
        let (b, l) = (stall_pct(&base), stall_pct(&load));
        if b <= QUIET_STALL_PCT && l <= QUIET_STALL_PCT {
            judged.push(t);
        } else {
            println!(
                "  not judged: the engine's core was taken from it {b:.2}% / {l:.2}% of the runs (over {QUIET_STALL_PCT}%): the host, not the clients, sets this round's p99"
            );
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("median tick_to_order p99 ratio over all {rounds} round(s): {:.2}", median(&mut all));
    if judged.is_empty() {
        println!("target ≤ 1.10: inconclusive (no round had engine stalls ≤ {QUIET_STALL_PCT}% in both runs; try again on a quieter machine or with more --rounds)");
    } else {
        let m = median(&mut judged);
        println!("median over the {} quiet round(s): {m:.2} (target ≤ 1.10: {})", judged.len(), if m <= 1.10 { "met" } else { "NOT met" });
    }
}

/// Rounds are judged only when the engine lost at most this share of either run to stalls
/// (`engine_stalled_ns` in last-run.json: its core taken by an interrupt, another process or
/// the hypervisor). On the shared VMs here a spinning thread alone on a vCPU loses 1–12% of
/// wall time in gaps of 100 µs to 40 ms, and the p99 of ~300 orders follows that, not the
/// dashboard clients.
const QUIET_STALL_PCT: f64 = 1.0;
