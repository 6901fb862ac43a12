//! Dashboard load: `sapphire run` (the release binary) twice on the same seed — once with no
//! dashboard clients, once with 500 WebSocket clients that read and 10 that never read — and
//! the engine's latency compared between the two in the same run (ratios: this machine is
//! shared and noisy). Also reported: the process's peak memory (VmHWM) in each run, how many
//! non-reading clients the server dropped (`sapphire_ws_clients_dropped_total`), the serving
//! thread's CPU share, and the engine's stalls (its core taken from it: `engine_stalled_ns`).
//!
//! `cargo build --release --bin sapphire && cargo bench -p sapphire-benches --bench ws_load
//! [-- --quick] [--rounds N] [--exclusive-core]` (60 s per run by default, 30 s with --quick:
//! long enough for the non-reading clients to be dropped). The target: tick-to-order p99
//! moves by at most 10% with the clients; memory stays bounded; the slow clients are dropped.
//!
//! `--exclusive-core` (root) keeps every other process on the machine off the engine's CPU
//! for the bench, as the kubelet's static CPU manager does on a production node, and puts
//! their CPU masks back afterwards. Without it, on a machine with other daemons, the clients
//! keep CPU 0 busy and those daemons wake on the engine's CPU instead: each run prints how
//! long other tasks held the engine's core (`engine_preempted_ns`), which shows it.
//!
//! Each round is three runs: without clients, with them, and without them but with core 0 kept
//! as busy as the clients made it by a plain spinning thread (the control: on a VM, a busy
//! vCPU 0 alone costs the engine's vCPU). Every order of every run is pooled per arm
//! (`tick_to_order_recorded` in last-run.json), and the verdict is the pooled p99 with ÷
//! without clients: the runs interleave, so the host's drift falls on all arms alike, and one
//! run's rare long stall weighs 1/rounds. The runs trade 30 synthetic symbols (about 60
//! orders a second), so each run adds thousands of orders.

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

/// The run's figures from last-run.json.
struct Figures {
    tick_to_order_p99: u64,
    end_to_end_p99: u64,
    orders: u64,
    stalls: u64,
    stalled_ns: u64,
    preemptions: u64,
    preempted_ns: u64,
    /// Every order's tick-to-order latency: (ns, count) pairs.
    recorded: Vec<(u64, u64)>,
}

fn run_figures(dir: &std::path::Path) -> Figures {
    let text = std::fs::read_to_string(dir.join("last-run.json")).expect("last-run.json");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let p99 = |name: &str| {
        v["latency"].as_array().and_then(|a| a.iter().find(|s| s["name"] == name)).and_then(|s| s["p99_ns"].as_u64()).unwrap_or(0)
    };
    let n = |key: &str| v[key].as_u64().unwrap_or(0);
    Figures {
        tick_to_order_p99: p99("tick_to_order"),
        end_to_end_p99: p99("end_to_end"),
        orders: n("orders"),
        stalls: n("engine_stalls"),
        stalled_ns: n("engine_stalled_ns"),
        preemptions: n("engine_preemptions"),
        preempted_ns: n("engine_preempted_ns"),
        recorded: v["tick_to_order_recorded"]
            .as_array()
            .map(|a| a.iter().filter_map(|b| Some((b[0].as_u64()?, b[1].as_u64()?))).collect())
            .unwrap_or_default(),
    }
}

struct Outcome {
    /// What the server wrote to last-run.json.
    figures: Figures,
    /// The serving thread's CPU share over the measured span.
    api_cpu_pct: f64,
    /// How busy core 0 was over the measured span, %.
    core0_busy_pct: f64,
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

/// What shares core 0 with the server's own threads during a run.
#[derive(Clone, Copy, PartialEq)]
enum Load {
    Nothing,
    /// The 500 + 10 clients.
    Clients,
    /// No clients; a thread spinning this share (%) of core 0, as much as the clients took.
    Busy(f64),
}

/// CPU 0's (busy, total) jiffies from /proc/stat.
fn cpu0_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu0 ")) else { return (0, 0) };
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    let total: u64 = f.iter().take(8).sum();
    (total - idle, total)
}

/// Spins on core 0 for `share` % of every millisecond until `stop`.
fn spin_share(share: f64, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = core_affinity::set_for_current(core_affinity::CoreId { id: 0 });
        let busy = Duration::from_micros((share.clamp(0.0, 100.0) * 10.0) as u64);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let start = std::time::Instant::now();
            while start.elapsed() < busy {
                std::hint::spin_loop();
            }
            std::thread::sleep(Duration::from_millis(1).saturating_sub(busy));
        }
    })
}

fn one_run(secs: u64, load: Load) -> Outcome {
    let with_clients = load == Load::Clients;
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
    let core0_from;
    let spin_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinner = if let Load::Busy(share) = load { Some(spin_share(share, std::sync::Arc::clone(&spin_stop))) } else { None };
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
        core0_from = cpu0_jiffies();
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
        core0_from = cpu0_jiffies();
        std::thread::sleep(measure_at.saturating_duration_since(std::time::Instant::now()));
        api_cpu_pct = cpu_pct(api_from, thread_ticks(child.id(), "sapphire-api"));
        peak = peak_rss_kib(child.id());
    }
    let core0_now = cpu0_jiffies();
    let core0_busy_pct = (core0_now.0 - core0_from.0) as f64 * 100.0 / (core0_now.1 - core0_from.1).max(1) as f64;
    let _ = child.wait();
    spin_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(s) = spinner {
        let _ = s.join();
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    let figures = run_figures(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    Outcome {
        figures,
        api_cpu_pct,
        core0_busy_pct,
        peak_rss_kib: peak,
        dropped,
        connected,
        messages: messages.load(std::sync::atomic::Ordering::Relaxed),
    }
}

fn main() {
    start_spawner();
    // The server's default engine core: the last CPU it may use (it inherits ours).
    let engine_cpu = core_affinity::get_core_ids().and_then(|c| c.last().map(|c| c.id));
    let _ = core_affinity::set_for_current(core_affinity::CoreId { id: 0 });
    if !binary().is_file() {
        println!("skipped: {} is not built (cargo build --release --bin sapphire)", binary().display());
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let _exclusive = match (args.iter().any(|a| a == "--exclusive-core"), engine_cpu) {
        (true, Some(cpu)) if cpu > 0 => match exclusive::ExclusiveCore::take(cpu) {
            Ok(x) => {
                println!(
                    "exclusive core: {} threads of {} other processes{} kept off CPU {cpu} for the bench",
                    x.threads(),
                    x.processes(),
                    if x.workqueues() { " and unbound kernel workqueues" } else { "" }
                );
                Some(x)
            }
            Err(e) => {
                println!("exclusive core: {e}");
                return;
            }
        },
        (true, _) => {
            println!("exclusive core: needs 2 CPUs or more");
            return;
        }
        _ => None,
    };
    let quick = args.iter().any(|a| a == "--quick");
    // `--rounds N`: N rounds of three runs, pooled (one round on a noisy shared machine can
    // mislead).
    let rounds = args.iter().position(|a| a == "--rounds").and_then(|i| args.get(i + 1)?.parse::<usize>().ok()).unwrap_or(1).max(1);
    // --quick still outlasts the slow-client bound (a ping every 5 s, dropped 15 s late).
    let secs = if quick { 30 } else { 60 };
    println!("ws_load: {secs} s per run, {rounds} round(s), {READERS} reading + {NON_READERS} non-reading /ws clients vs none");
    let ratio = |a: u64, b: u64| if b == 0 { f64::NAN } else { a as f64 / b as f64 };
    let stall_pct = |o: &Outcome| o.figures.stalled_ns as f64 / 1e7 / secs as f64;
    // Every order of every run, pooled per arm: the runs interleave, so the host's drift
    // falls on all three alike, and one run's rare long stall weighs 1/rounds.
    let new_pool = || hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
    let mut pools = [new_pool(), new_pool(), new_pool()];
    let mut per_round = Vec::new();
    for round in 1..=rounds {
        let base = one_run(secs, Load::Nothing);
        let load = one_run(secs, Load::Clients);
        // The control: core 0 as busy as the clients made it, by a plain spinning thread.
        let busy = one_run(secs, Load::Busy(load.core0_busy_pct - base.core0_busy_pct));
        let line = |o: &Outcome| {
            format!(
                "tick_to_order p99 {} ns ({} orders), end_to_end p99 {} ns, peak RSS {} KiB, engine stalls {} ({:.1} ms, {:.2}% of the run), other tasks on the engine's core {}× ({:.1} ms), core 0 {:.0}% busy, API thread {:.1}% of a core",
                o.figures.tick_to_order_p99,
                o.figures.orders,
                o.figures.end_to_end_p99,
                o.peak_rss_kib,
                o.figures.stalls,
                o.figures.stalled_ns as f64 / 1e6,
                stall_pct(o),
                o.figures.preemptions,
                o.figures.preempted_ns as f64 / 1e6,
                o.core0_busy_pct,
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
        println!("  no clients, core 0 kept as busy by a spinning thread: {}", line(&busy));
        let t = ratio(load.figures.tick_to_order_p99, base.figures.tick_to_order_p99);
        let tb = ratio(load.figures.tick_to_order_p99, busy.figures.tick_to_order_p99);
        println!(
            "  ratios (with ÷ without): tick_to_order p99 {t:.2}, end_to_end p99 {:.2}, peak RSS {:.2}; with ÷ the busy-core-0 control: tick_to_order p99 {tb:.2}; slow clients dropped: {}",
            ratio(load.figures.end_to_end_p99, base.figures.end_to_end_p99),
            ratio(load.peak_rss_kib, base.peak_rss_kib),
            if load.dropped >= NON_READERS as u64 { "all" } else { "NOT all" }
        );
        per_round.push(t);
        for (pool, run) in pools.iter_mut().zip([&base, &load, &busy]) {
            for &(ns, n) in &run.figures.recorded {
                let _ = pool.record_n(ns.max(1), n);
            }
        }
    }
    per_round.sort_by(f64::total_cmp);
    let p99 = |h: &hdrhistogram::Histogram<u64>| h.value_at_quantile(0.99);
    let [none, clients, busy] = &pools;
    println!(
        "pooled over {rounds} round(s): tick_to_order p99 {} ns without clients ({} orders), {} ns with ({} orders), {} ns with core 0 as busy and no clients ({} orders); per-round ratios {per_round:.2?}",
        p99(none),
        none.len(),
        p99(clients),
        clients.len(),
        p99(busy),
        busy.len()
    );
    let (t, tb) = (ratio(p99(clients), p99(none)), ratio(p99(clients), p99(busy)));
    println!("with ÷ without clients: {t:.2} (target ≤ 1.10: {})", if t <= 1.10 { "met" } else { "NOT met" });
    println!("with clients ÷ the same core-0 load without them: {tb:.2} (what the server itself adds beyond a busy core 0)");
}

/// `--exclusive-core`: the engine's CPU kept free of every other process on the machine.
#[cfg(target_os = "linux")]
mod exclusive {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    use std::collections::HashSet;

    /// Every thread moved (with the mask it had), every thread that existed at the start, and
    /// the mask the moved ones were given. Dropping it puts the masks back.
    pub struct ExclusiveCore {
        /// The unbound kernel workqueues' CPU mask before (hex), when it was narrowed.
        workqueues: Option<String>,
        moved: Vec<(i32, i32, CpuSet)>,
        seen: HashSet<i32>,
        fenced: CpuSet,
        everything: CpuSet,
    }

    const WORKQUEUE_MASK: &str = "/sys/devices/virtual/workqueue/cpumask";

    /// A kernel hex CPU mask ("3", "ff,ffffffff") without `cpu`; `None` if it would be empty.
    fn narrow_hex_mask(mask: &str, cpu: usize) -> Option<String> {
        let words: Vec<u32> = mask.split(',').map(|w| u32::from_str_radix(w, 16).ok()).collect::<Option<_>>()?;
        // The last word holds CPUs 0-31.
        let (word, bit) = (words.len().checked_sub(1 + cpu / 32)?, cpu % 32);
        let mut out = words;
        out[word] &= !(1 << bit);
        if out.iter().all(|w| *w == 0) {
            return None;
        }
        Some(out.iter().enumerate().map(|(i, w)| if i == 0 { format!("{w:x}") } else { format!("{w:08x}") }).collect::<Vec<_>>().join(","))
    }

    /// (process, thread) ids of every user-space thread but ours: kernel threads have no
    /// executable, and another user's processes cannot be read without root.
    fn other_threads() -> Vec<(i32, i32)> {
        let own = std::process::id() as i32;
        let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
        procs
            .filter_map(|p| p.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != own && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok())
            .flat_map(|pid| {
                std::fs::read_dir(format!("/proc/{pid}/task"))
                    .into_iter()
                    .flatten()
                    .filter_map(move |t| Some((pid, t.ok()?.file_name().to_str()?.parse::<i32>().ok()?)))
            })
            .collect()
    }

    impl ExclusiveCore {
        pub fn take(engine_cpu: usize) -> Result<Self, String> {
            let mut everything = CpuSet::new();
            for c in core_affinity::get_core_ids().unwrap_or_default() {
                everything.set(c.id).map_err(|e| e.to_string())?;
            }
            let mut fenced = everything;
            fenced.unset(engine_cpu).map_err(|e| e.to_string())?;
            let mut x = Self { workqueues: None, moved: Vec::new(), seen: HashSet::new(), fenced, everything };
            // Unbound kernel work (the block layer finishing the journals' writes, where the
            // disk's interrupt lands on the engine's CPU) would preempt the engine there.
            if let Ok(before) = std::fs::read_to_string(WORKQUEUE_MASK) {
                let before = before.trim().to_string();
                let narrowed = narrow_hex_mask(&before, engine_cpu);
                if narrowed.as_deref().is_some_and(|n| n != before && std::fs::write(WORKQUEUE_MASK, n).is_ok()) {
                    x.workqueues = Some(before);
                }
            }
            let mut refused = 0;
            for (pid, tid) in other_threads() {
                x.seen.insert(tid);
                let Ok(mask) = sched_getaffinity(Pid::from_raw(tid)) else { continue };
                // A thread pinned to the engine's CPU alone (a per-CPU worker) stays.
                let mut rest = mask;
                let _ = rest.unset(engine_cpu);
                if !mask.is_set(engine_cpu).unwrap_or(false) || (0..CpuSet::count()).all(|c| !rest.is_set(c).unwrap_or(false)) {
                    continue;
                }
                match sched_setaffinity(Pid::from_raw(tid), &rest) {
                    Ok(()) => x.moved.push((pid, tid, mask)),
                    Err(nix::errno::Errno::ESRCH) => {}
                    Err(_) => refused += 1,
                }
            }
            if refused > 0 && x.moved.is_empty() {
                return Err(format!("no other process could be moved off CPU {engine_cpu} ({refused} refused): run the bench as root"));
            }
            Ok(x)
        }

        pub fn threads(&self) -> usize {
            self.moved.len()
        }

        /// Whether unbound kernel workqueues were kept off the engine's CPU.
        pub fn workqueues(&self) -> bool {
            self.workqueues.is_some()
        }

        pub fn processes(&self) -> usize {
            self.moved.iter().map(|(pid, _, _)| pid).collect::<HashSet<_>>().len()
        }
    }

    impl Drop for ExclusiveCore {
        fn drop(&mut self) {
            if let Some(before) = &self.workqueues {
                let _ = std::fs::write(WORKQUEUE_MASK, before);
            }
            for (_, tid, mask) in &self.moved {
                let _ = sched_setaffinity(Pid::from_raw(*tid), mask);
            }
            // Threads started during the bench by a moved one inherited the narrowed mask.
            for (_, tid) in other_threads() {
                if !self.seen.contains(&tid) && sched_getaffinity(Pid::from_raw(tid)).is_ok_and(|m| m == self.fenced) {
                    let _ = sched_setaffinity(Pid::from_raw(tid), &self.everything);
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod exclusive {
    pub struct ExclusiveCore;

    impl ExclusiveCore {
        pub fn take(_engine_cpu: usize) -> Result<Self, String> {
            Err("needs Linux CPU masks".into())
        }

        pub fn threads(&self) -> usize {
            0
        }

        pub fn processes(&self) -> usize {
            0
        }

        pub fn workqueues(&self) -> bool {
            false
        }
    }
}
