//! `sapphire run` as a user runs it: a real process, its output and its exit code.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn sapphire() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sapphire"));
    for var in [
        "TRADING_SYMBOLS",
        "ENABLE_PAPER_TRADING",
        "MAX_SYMBOLS_PER_AGENT",
        "AGENT_CACHE_TTL_SECONDS",
        "SAPPHIRE_CONFIG",
        "SAPPHIRE_LAYOUT",
        "SAPPHIRE_DATA_DIR",
        "SAPPHIRE_API_TOKEN",
        // A developer's shell may point at real services: the tests choose their own.
        "DATABASE_URL",
        "REDIS_URL",
        "BINANCE_API_KEY",
        "BINANCE_API_SECRET",
        "BYBIT_API_KEY",
        "BYBIT_API_SECRET",
        "XAI_API_KEY",
        "ENABLE_VERTEX_AI",
    ] {
        c.env_remove(var);
    }
    // Tests run in parallel: each process's API takes a free port, never the default 8080.
    c.env("SAPPHIRE_HTTP_BIND", "127.0.0.1:0");
    c
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sapphire-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn runs_for_a_duration_and_prints_status_and_summary() {
    let dir = temp_dir("run");
    for layout in ["fused", "split"] {
        let out = sapphire()
            .args(["run", "--duration", "2500ms", "--events-per-sec", "20000", "--layout", layout, "--wait", "yield", "--data-dir"])
            .arg(&dir)
            .output()
            .expect("sapphire runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{layout}: exit {:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        assert!(stdout.matches(" ev/s ").count() >= 2, "{layout}: a status line per second:\n{stdout}");
        assert!(stdout.contains("summary:") && stdout.contains("tick_to_order") && stdout.contains("book:"), "{layout}:\n{stdout}");
        let summary = std::fs::read_to_string(dir.join("last-run.json")).expect("last-run.json");
        assert!(summary.contains("\"events\":") && summary.contains("\"latency\":[{"), "{summary}");
        let v: serde_json::Value = serde_json::from_str(&summary).expect("last-run.json is JSON");
        assert!(v["engine_stalls"].is_u64() && v["engine_stalled_ns"].is_u64(), "{summary}");
        assert!(v["engine_preemptions"].is_u64() && v["engine_preempted_ns"].is_u64(), "{summary}");
        // Every order's latency is in the recorded distribution, and nothing else is.
        let recorded: u64 = v["tick_to_order_recorded"].as_array().expect("recorded").iter().map(|b| b[1].as_u64().unwrap()).sum();
        let counted = v["latency"].as_array().unwrap().iter().find(|s| s["name"] == "tick_to_order").unwrap()["count"].as_u64().unwrap();
        assert!(recorded > 0 && recorded == counted, "{layout}: {recorded} recorded vs {counted}: {summary}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `Cpus_allowed_list` of each thread of `pid`, by thread name.
fn thread_cpus(pid: u32) -> Vec<(String, String)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .filter_map(|t| {
            let t = t.ok()?.path();
            let name = std::fs::read_to_string(t.join("comm")).ok()?.trim().to_string();
            let status = std::fs::read_to_string(t.join("status")).ok()?;
            let cpus = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?.trim().to_string();
            Some((name, cpus))
        })
        .collect()
}

#[cfg(target_os = "linux")]
#[test]
fn the_engines_core_runs_the_engine_alone() {
    let dir = temp_dir("fence");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let child = sapphire()
        .args(["run", "--duration", "4s", "--events-per-sec", "20000", "--http-bind", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sapphire runs");
    // Wait for the engine thread and the API thread (started late, after recovery).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let threads = loop {
        let t = thread_cpus(child.id());
        if t.iter().any(|(n, _)| n == "sapphire-engine") && t.iter().any(|(n, _)| n == "sapphire-api") {
            break t;
        }
        assert!(std::time::Instant::now() < deadline, "no engine thread: {t:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let out = child.wait_with_output().expect("sapphire ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let engine_cpu = match std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(|l| l.trim().to_string()))
    {
        // The default engine core is the last CPU this process may use; this test's mask is
        // what the child inherited.
        Some(list) if cpus >= 2 => list.rsplit([',', '-']).next().unwrap_or_default().to_string(),
        _ => String::new(),
    };
    if cpus < 2 {
        assert!(stderr.contains("the engine has no core of its own"), "{stderr}");
        return;
    }
    for (name, allowed) in &threads {
        if name == "sapphire-engine" {
            assert_eq!(allowed, &engine_cpu, "the engine is pinned to the last CPU");
        } else {
            let on_engine_cpu = allowed.split(',').any(|part| {
                let (lo, hi) = part.split_once('-').unwrap_or((part, part));
                let (lo, hi, e) = (lo.parse::<usize>().unwrap(), hi.parse::<usize>().unwrap(), engine_cpu.parse::<usize>().unwrap());
                (lo..=hi).contains(&e)
            });
            assert!(!on_engine_cpu, "thread {name} may run on the engine's CPU {engine_cpu}: {allowed} (all: {threads:?})");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    let dir = temp_dir("bad");
    // (flags, environment, the key the message must name)
    type Case = (Vec<&'static str>, Vec<(&'static str, &'static str)>, &'static str);
    let cases: Vec<Case> = vec![
        (vec!["--layout", "diagonal"], vec![], "engine.layout"),
        (vec!["--duration", "ten"], vec![], "--duration"),
        (vec![], vec![("ENABLE_PAPER_TRADING", "perhaps")], "ENABLE_PAPER_TRADING"),
        (vec![], vec![("ENABLE_PAPER_TRADING", "false")], "ENABLE_PAPER_TRADING"),
        (vec![], vec![("MAX_SYMBOLS_PER_AGENT", "0")], "MAX_SYMBOLS_PER_AGENT"),
        (vec!["--symbols", "BTC-USDT"], vec![], "TRADING_SYMBOLS"),
    ];
    for (args, env, key) in cases {
        let out = sapphire().arg("run").args(&args).envs(env.iter().copied()).arg("--data-dir").arg(&dir).output().expect("sapphire runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(key), "{args:?} {env:?}: message should name {key}: {stderr}");
    }
    let file = dir.with_extension("toml");
    std::fs::write(&file, "[risk]\nmax_leverage = 3\n").unwrap();
    let out = sapphire().args(["run", "--config"]).arg(&file).output().expect("sapphire runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_leverage"));
    let _ = std::fs::remove_file(&file);
}

#[test]
fn every_rule_agent_speaks_within_ten_seconds_of_a_default_start() {
    // The default roster against the default (seed 7) synthetic market, on event time: what a
    // `sapphire run` shows in its first ten seconds, without depending on this machine's speed.
    let rehearse = || {
        let out = sapphire().args(["agents", "--rehearse", "10s"]).output().expect("sapphire runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = rehearse();
    for name in ["momentum-2", "mean_reversion-3", "imbalance-4", "breakout-5"] {
        let line =
            text.lines().find(|l| l.trim_start().starts_with(&format!("{name}:"))).unwrap_or_else(|| panic!("no line for {name}: {text}"));
        // `momentum-2: 85 signals, 76 long/short; last trigger: momentum: price rising (ETHUSDT)`
        let counts = numbers_of(line.split_once(": ").unwrap().1);
        assert!(counts[1] >= 1, "{name} never took a view: {line}");
        assert!(line.contains("; last trigger: ") && line.ends_with("USDT)"), "{name} says why: {line}");
    }
    assert!(!text.contains("sentiment") && !text.contains("fast_trader"), "no model is asked: {text}");
    assert_eq!(rehearse(), text, "event time only: the same lines every time");
}

#[test]
fn ctrl_c_stops_cleanly_with_a_summary() {
    let dir = temp_dir("sigint");
    let child = sapphire()
        .args(["run", "--events-per-sec", "20000", "--wait", "yield", "--data-dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sapphire starts");
    std::thread::sleep(Duration::from_millis(1_500));
    let killed = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill runs");
    assert!(killed.success());
    let started = Instant::now();
    let out = child.wait_with_output().expect("sapphire exits");
    assert!(started.elapsed() < Duration::from_secs(10), "shutdown took {:?}", started.elapsed());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("summary:"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `sapphire run | head -2`: once the reader has gone, the next status line meets a broken
/// pipe; the run stops as it does on Ctrl-C (exit 0, its journal closed and reopenable) instead
/// of panicking with exit 101 mid-flight.
#[test]
fn a_closed_stdout_stops_run_cleanly_instead_of_panicking() {
    use std::io::BufRead;
    let dir = temp_dir("epipe");
    let mut child = sapphire()
        .args(["run", "--duration", "120s", "--events-per-sec", "20000", "--wait", "yield", "--data-dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sapphire starts");
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut first).expect("a first line");
    assert!(first.ends_with('\n'), "a first whole line: {first:?}");
    // The reader (and with it the pipe's read end) is dropped here, as `head` exits.
    let started = Instant::now();
    let out = child.wait_with_output().expect("sapphire exits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(started.elapsed() < Duration::from_secs(30), "stopping took {:?}: {stderr}", started.elapsed());
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("stdout was closed"), "{stderr}");
    // The journal was closed cleanly: a second run opens it and goes on from it.
    let again = sapphire().args(["run", "--duration", "1s", "--quiet", "--data-dir"]).arg(&dir).output().expect("sapphire runs again");
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kill_9_then_restart_recovers_from_the_journal() {
    let dir = temp_dir("kill9");
    let child = sapphire()
        .args(["run", "--events-per-sec", "20000", "--wait", "yield", "--quiet", "--data-dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sapphire starts");
    std::thread::sleep(Duration::from_millis(2_000));
    let killed = Command::new("kill").args(["-KILL", &child.id().to_string()]).status().expect("kill runs");
    assert!(killed.success());
    let _ = child.wait_with_output();
    let out = sapphire()
        .args(["run", "--duration", "1s", "--events-per-sec", "20000", "--wait", "yield", "--data-dir"])
        .arg(&dir)
        .output()
        .expect("sapphire runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    let recovered: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("recovered: ").and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no recovery line:\n{stdout}"));
    assert!(recovered > 10_000, "recovered {recovered} events");
    // The same journal with other symbols is refused with a clear message, not misread.
    let out =
        sapphire().args(["run", "--duration", "1s", "--symbols", "DOGEUSDT", "--data-dir"]).arg(&dir).output().expect("sapphire runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("written for instruments"), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

/// One HTTP/1.1 request on a fresh connection: status code and body.
fn http(addr: &str, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("the API accepts");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    let _ = stream.read_to_string(&mut raw);
    let status = raw.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status: {raw:?}"));
    (status, raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

#[test]
fn run_serves_the_http_api_and_a_kill_reaches_the_engine() {
    use std::io::BufRead;
    let dir = temp_dir("api");
    let mut child = sapphire()
        .args(["run", "--duration", "20s", "--events-per-sec", "20000", "--wait", "yield", "--http-bind", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env("SAPPHIRE_API_TOKEN", "cli-test-token")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sapphire starts");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("api: http://").map(str::to_string))
        .expect("an `api: http://ADDR` line");
    let get = |path: &str| http(&addr, &format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"));
    assert_eq!(get("/healthz"), (200, "ok\n".to_string()));
    // Ready once every book has had its first update (a moment after start).
    let deadline = Instant::now() + Duration::from_secs(10);
    while get("/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "never ready: {}", get("/readyz").1);
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, metrics) = get("/metrics");
    assert!(status == 200 && metrics.contains("sapphire_events_total "), "{metrics}");
    // Retention is off here (no archive), and the disk alerts still see the volume: the input
    // journal already holds the events taken.
    let input_bytes =
        metrics.lines().find_map(|l| l.strip_prefix("sapphire_journal_disk_bytes{journal=\"input\"} ")).and_then(|v| v.parse::<f64>().ok());
    assert!(input_bytes.is_some_and(|b| b > 0.0), "{metrics}");
    // Read from the engine threads' scheduler statistics (Linux).
    if cfg!(target_os = "linux") {
        assert!(
            metrics.contains("sapphire_engine_preempted_seconds_total ") && metrics.contains("sapphire_engine_preemptions_total "),
            "{metrics}"
        );
    }
    let kill = |token: &str| {
        http(
            &addr,
            &format!(
                "POST /api/kill HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
            ),
        )
    };
    assert_eq!(kill("wrong").0, 403);
    assert_eq!(kill("cli-test-token").0, 200);
    // The kill goes through the ring, the risk stage and the edge: the dashboard shows it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = get("/dashboard");
        if body.contains("\"killed\":true") {
            break;
        }
        assert!(Instant::now() < deadline, "the kill never showed: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill runs");
    assert!(killed.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().expect("sapphire exits");
    assert!(status.success(), "exit {status:?}");
    assert!(rest.iter().any(|l| l.starts_with("summary:")), "{rest:?}");
    assert!(std::net::TcpStream::connect(&addr).is_err(), "the API stopped with the process");
    // The kill was journaled: a restart recovers it and the engine stays killed.
    let out = sapphire()
        .args(["run", "--duration", "1s", "--events-per-sec", "20000", "--wait", "yield", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("  orders 0 ("), "still killed after recovery, no new orders:\n{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_taken_http_address_exits_1_naming_it() {
    let dir = temp_dir("api-taken");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = sapphire().args(["run", "--duration", "5s", "--http-bind", &addr, "--data-dir"]).arg(&dir).output().expect("sapphire runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&addr) && !stderr.contains("panicked"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `sapphire feed serve` on the project's Binance fixture: the child and its address.
fn local_exchange() -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway/tests/fixtures/binance_spot_btcusdt.txt");
    let mut server = sapphire()
        .args(["feed", "serve", "--pace", "recorded", "--bind", "127.0.0.1:0", fixture])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("feed serve starts");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout")).read_line(&mut line).expect("serve prints its address");
    let addr = line.split("listening on ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or_else(|| panic!("{line}")).to_string();
    (server, addr)
}

#[test]
fn run_trades_a_binance_feed_served_by_the_local_exchange() {
    let (mut server, addr) = local_exchange();
    let dir = temp_dir("binance-feed");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("feed.toml");
    std::fs::write(
        &config,
        format!("[market]\nsource = \"binance\"\nws_url = \"ws://{addr}\"\nrest_url = \"http://{addr}\"\nsymbols = [\"BTCUSDT\"]\n"),
    )
    .unwrap();
    let out = sapphire()
        .args(["run", "--duration", "3s", "--wait", "yield", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .output()
        .expect("sapphire runs");
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}: {stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let feed = stdout.lines().find(|l| l.trim_start().starts_with("feed:")).unwrap_or_else(|| panic!("no feed line:\n{stdout}"));
    // The fixture's 71 frames: every one parsed, the book synced once from the REST snapshot.
    assert!(feed.contains(" 0 skipped, 1 snapshots (1 requested, 0 held back by the cap), 0 gaps"), "{feed}");
    let events: u64 = feed.split(" frames, ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(events > 50, "{feed}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_stops_with_exit_1_naming_venue_market_when_the_feed_is_usdm_and_the_config_spot() {
    use std::io::{BufRead, BufReader};
    let dir = temp_dir("wrong-market");
    std::fs::create_dir_all(&dir).unwrap();
    // A USD-M recording: depth updates carry `pu` and `T`.
    let recording = dir.join("usdm.txt");
    let mut text = String::new();
    let mut prev = 1_000u64;
    for k in 0..100u64 {
        let ms = 1_723_161_600_000 + 100 * k;
        let (u0, u1) = (prev + 3, prev + 7);
        text.push_str(&format!(
            "{} {{\"stream\":\"btcusdt@depth@100ms\",\"data\":{{\"e\":\"depthUpdate\",\"E\":{ms},\"T\":{ms},\"s\":\"BTCUSDT\",\"U\":{u0},\"u\":{u1},\"pu\":{prev},\"b\":[[\"60000.00\",\"1.000\"]],\"a\":[[\"60000.50\",\"1.000\"]]}}}}\n",
            ms * 1_000_000
        ));
        prev = u1;
    }
    std::fs::write(&recording, text).unwrap();
    let mut server = sapphire()
        .args(["feed", "serve", "--market", "usdm", "--pace", "recorded", "--bind", "127.0.0.1:0"])
        .arg(&recording)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("feed serve starts");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout")).read_line(&mut line).expect("serve prints its address");
    let addr = line.split("listening on ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or_else(|| panic!("{line}")).to_string();
    let config = dir.join("feed.toml");
    // venue_market left at its default: spot.
    std::fs::write(
        &config,
        format!("[market]\nsource = \"binance\"\nws_url = \"ws://{addr}\"\nrest_url = \"http://{addr}\"\nsymbols = [\"BTCUSDT\"]\n"),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = sapphire()
        .args(["run", "--duration", "30s", "--wait", "yield", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .output()
        .expect("sapphire runs");
    let _ = server.kill();
    let _ = server.wait();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20), "it stops at once, not at --duration");
    for says in ["venue_market is \"spot\"", "`pu`", "venue_market = \"usdm\""] {
        assert!(stderr.contains(says), "{says:?} not in:\n{stderr}");
    }
    let feed = stdout.lines().find(|l| l.trim_start().starts_with("feed:")).unwrap_or_else(|| panic!("no feed line:\n{stdout}"));
    assert!(feed.contains("(0 requested, 0 held back by the cap), 0 gaps"), "no snapshot asked for, no resync: {feed}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// PUBLISH over a raw RESP connection to the Redis the test script provides.
fn redis_publish(channel: &str, payload: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect("127.0.0.1:6379")?;
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    let cmd = format!("*3\r\n$7\r\nPUBLISH\r\n${}\r\n{channel}\r\n${}\r\n{payload}\r\n", channel.len(), payload.len());
    c.write_all(cmd.as_bytes())?;
    let mut reply = [0u8; 64];
    let _ = c.read(&mut reply)?;
    Ok(())
}

#[test]
fn real_routing_needs_credentials_and_sends_signed_orders_to_the_venue() {
    let (mut server, addr) = local_exchange();
    let dir = temp_dir("real-routing");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("live.toml");
    let prefix = format!("sapphire-cli-{}", std::process::id());
    // A budget that makes the fixture's 0.01 BTC lot reachable; a remote agent's signal over
    // Redis is what trades (the fixture is too short for the in-core strategies).
    std::fs::write(
        &config,
        format!(
            "[market]\nsource = \"binance\"\nws_url = \"ws://{addr}\"\nrest_url = \"http://{addr}\"\nsymbols = [\"BTCUSDT\"]\n\n[venue]\nmarket = \"binance-spot\"\nrest_url = \"http://{addr}\"\nuser_stream_url = \"ws://{addr}\"\n\n[risk]\nagent_budget_usd = \"5000\"\nmax_position_usd = \"5000\"\nmax_order_usd = \"5000\"\n\n[redis]\nurl = \"redis://127.0.0.1:6379/\"\nprefix = \"{prefix}\"\n"
        ),
    )
    .unwrap();
    let run = |creds: &[(&str, &str)]| {
        let mut cmd = sapphire();
        cmd.args(["run", "--duration", "4s", "--wait", "yield", "--config"]).arg(&config).arg("--data-dir").arg(dir.join("data"));
        cmd.env("ENABLE_PAPER_TRADING", "false").env_remove("BINANCE_API_KEY").env_remove("BINANCE_API_SECRET").env_remove("REDIS_URL");
        for (k, v) in creds {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("sapphire runs")
    };
    // No credentials: a clear refusal before anything starts, exit 2.
    let refused = run(&[]).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("BINANCE_API_KEY") && stderr.contains("ENABLE_PAPER_TRADING"), "{stderr}");
    // The local exchange's keys: a remote signal becomes a signed order, acknowledged and filled.
    let child = run(&[("BINANCE_API_KEY", "sapphire-local-key"), ("BINANCE_API_SECRET", "sapphire-local-secret")]);
    // Agent 10: an id Redis owns (2-9 are the in-process runtime's, and their signals over Redis
    // are refused; then only the rule agents' own trading could make this test pass).
    let signal = r#"{"agent":10,"symbol":"BTCUSDT","strength_bps":10000,"confidence_bps":10000,"ttl_ms":5000}"#;
    for _ in 0..12 {
        std::thread::sleep(Duration::from_millis(250));
        redis_publish(&format!("{prefix}:main:signals:in"), signal).expect("the Redis the test script provides");
    }
    let out = child.wait_with_output().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stdout}\n{stderr}", out.status);
    assert!(stdout.contains("REAL ORDERS to BinanceSpot"), "{stdout}");
    assert!(!stdout.contains("sapphire-local-secret") && !stderr.contains("sapphire-local-secret"), "the secret is never printed");
    let venue = stdout.lines().find(|l| l.trim_start().starts_with("venue ")).unwrap_or_else(|| panic!("no venue line:\n{stdout}"));
    // "venue X: N orders, A acked, R rejected, F filtered before sending, K fills, ..."
    let numbers: Vec<u64> = venue.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
    let (orders, acked, fills) = (numbers[0], numbers[1], numbers[4]);
    assert!(orders > 0 && acked > 0, "the venue acknowledged signed orders: {venue}");
    assert!(fills > 0, "the venue's fill came back into the engine: {venue}\n{stdout}");
    let summary = stdout.lines().find(|l| l.trim_start().starts_with("orders ")).unwrap();
    assert!(!summary.contains("fills 0,"), "the engine booked the venue's fill: {summary}");
    let redis = stdout.lines().find(|l| l.contains("remote signals in")).unwrap_or_else(|| panic!("no redis summary:\n{stdout}"));
    assert!(!redis.contains(" 0 remote signals in") && redis.contains("(0 refused"), "the remote signals were taken: {redis}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads a child's stdout until a line starting with `api: http://`; returns the address.
fn api_address(child: &mut std::process::Child) -> String {
    use std::io::{BufRead, BufReader};
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).expect("reading stdout") > 0, "the process ended before printing its API address");
        if let Some(addr) = line.trim().strip_prefix("api: http://") {
            let addr = addr.to_string();
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in reader.lines() {});
            return addr;
        }
    }
}

#[test]
fn core_and_gateway_processes_talk_through_redis_and_a_kill_at_the_gateway_stops_the_core() {
    let dir = temp_dir("roles");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("roles.toml");
    let prefix = format!("sapphire-roles-{}", std::process::id());
    std::fs::write(&config, format!("[redis]\nurl = \"redis://127.0.0.1:6379/\"\nprefix = \"{prefix}\"\n")).unwrap();
    let spawn = |role: &str, extra: &[&str]| {
        let mut cmd = sapphire();
        cmd.arg(role).args(["--duration", "20s", "--http-bind", "127.0.0.1:0", "--config"]).arg(&config).args(extra);
        cmd.env("SAPPHIRE_API_TOKEN", "roles-token").env_remove("REDIS_URL").env_remove("DATABASE_URL");
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starts")
    };
    let data = dir.join("data");
    let mut core = spawn("core", &["--data-dir", data.to_str().unwrap()]);
    let core_api = api_address(&mut core);
    let mut gateway = spawn("gateway", &[]);
    let gateway_api = api_address(&mut gateway);
    // The gateway's dashboard fills from the core's outputs.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut fills = 0;
    while Instant::now() < deadline && fills == 0 {
        std::thread::sleep(Duration::from_millis(200));
        let (status, body) = http(&gateway_api, "GET /api/trades HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert_eq!(status, 200, "{body}");
        fills = body.matches("\"client_order_id\"").count();
    }
    assert!(fills > 0, "fills made by the core reached the gateway through Redis");
    // A kill with a wrong token is refused at the gateway; with the right one it reaches the core.
    let (status, _) = http(
        &gateway_api,
        "POST /api/kill HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 403);
    let (status, body) = http(
        &gateway_api,
        "POST /api/kill HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer roles-token\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut killed = false;
    while Instant::now() < deadline && !killed {
        std::thread::sleep(Duration::from_millis(100));
        let (_, body) = http(&core_api, "GET /dashboard HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        killed = body.contains("\"killed\":true");
    }
    let _ = core.kill();
    let _ = gateway.kill();
    let _ = core.wait();
    let _ = gateway.wait();
    assert!(killed, "the core took the signed kill forwarded by the gateway");
    // The kill is journaled in the core's input journal like any operator control.
    let dump = sapphire().args(["journal", "dump"]).arg(data.join("journal/input")).output().unwrap();
    assert!(String::from_utf8_lossy(&dump.stdout).contains("\"control\":\"kill\""));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_agents_process_trades_through_a_core_over_redis() {
    let dir = temp_dir("agents-role");
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = format!("sapphire-agents-{}", std::process::id());
    // The core runs no agents of its own: every external signal comes from the agents process.
    let core_config = dir.join("core.toml");
    std::fs::write(
        &core_config,
        // A slow market keeps the journal small: the test dumps it while the core runs.
        format!(
            "[redis]\nurl = \"redis://127.0.0.1:6379/\"\nprefix = \"{prefix}\"\n\n[market]\nevents_per_sec = 5000\n\n[agents.runtime]\nenabled = false\n"
        ),
    )
    .unwrap();
    let agents_config = dir.join("agents.toml");
    std::fs::write(&agents_config, format!("[redis]\nurl = \"redis://127.0.0.1:6379/\"\nprefix = \"{prefix}\"\n")).unwrap();
    let spawn = |role: &str, config: &std::path::Path, extra: &[&str]| {
        let mut cmd = sapphire();
        cmd.arg(role).args(["--duration", "60s", "--http-bind", "127.0.0.1:0", "--config"]).arg(config).args(extra);
        cmd.env_remove("REDIS_URL").env_remove("DATABASE_URL");
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starts")
    };
    let data = dir.join("data");
    let mut core = spawn("core", &core_config, &["--data-dir", data.to_str().unwrap()]);
    let core_api = api_address(&mut core);
    let mut agents = spawn("agents", &agents_config, &[]);
    let agents_api = api_address(&mut agents);
    // The agents' /readyz turns ready once the core's ticks arrive; signals reach the core.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut ready, mut taken) = (false, 0u64);
    while Instant::now() < deadline && !(ready && taken > 0) {
        std::thread::sleep(Duration::from_millis(250));
        ready = http(&agents_api, "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").0 == 200;
        let (_, metrics) = http(&core_api, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        taken = metrics
            .lines()
            .find(|l| l.starts_with("sapphire_redis_ingress_total{kind=\"signal\",outcome=\"taken\"}"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
    }
    // A second agents process with the same roster is a second producer for the same ids: the
    // core refuses its signals (counted) while the first keeps sending, and goes on taking the
    // first one's.
    let ingress = |outcome: &str| -> u64 {
        let (_, metrics) = http(&core_api, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let prefix = format!("sapphire_redis_ingress_total{{kind=\"signal\",outcome=\"{outcome}\"}}");
        metrics.lines().find(|l| l.starts_with(&prefix)).and_then(|l| l.split_whitespace().last()).and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    let mut second = spawn("agents", &agents_config, &[]);
    let _ = api_address(&mut second);
    let (taken_before, deadline) = (ingress("taken"), Instant::now() + Duration::from_secs(15));
    let (mut not_owner, mut taken_after) = (0, taken_before);
    while Instant::now() < deadline && !(not_owner > 0 && taken_after > taken_before) {
        std::thread::sleep(Duration::from_millis(250));
        (not_owner, taken_after) = (ingress("refused_not_owner"), ingress("taken"));
    }
    // They are journaled: a replay re-reads them instead of running the agents. The journal
    // stage writes a moment after the ring takes a signal, and the core is killed (SIGKILL)
    // below, so look while it runs.
    let journaled = || {
        let dump = sapphire().args(["journal", "dump"]).arg(data.join("journal/input")).output().unwrap();
        String::from_utf8_lossy(&dump.stdout).contains("\"kind\":\"signal\"")
    };
    let mut signal_journaled = journaled();
    while taken > 0 && !signal_journaled && Instant::now() < deadline + Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        signal_journaled = journaled();
    }
    let _ = second.kill();
    let _ = second.wait();
    let _ = core.kill();
    let _ = agents.kill();
    let _ = core.wait();
    let _ = agents.wait();
    assert!(ready, "the agents process became ready on the core's ticks");
    assert!(taken > 0, "the core took the agents' signals from Redis");
    assert!(signal_journaled, "the signals are in the input journal");
    assert!(not_owner > 0, "the second producer's signals for the same agent ids are refused");
    assert!(taken_after > taken_before, "the first producer keeps trading meanwhile");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn record_captures_frames_and_a_snapshot_that_feed_decode_syncs_from() {
    let (mut server, addr) = local_exchange();
    let dir = temp_dir("record");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rec.gz");
    let out = sapphire()
        .args(["record", "--symbols", "btcusdt", "--duration", "3s"])
        .arg("--ws-url")
        .arg(format!("ws://{addr}"))
        .arg("--rest-url")
        .arg(format!("http://{addr}"))
        .arg("--out")
        .arg(&file)
        .output()
        .expect("record runs");
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(" 1 snapshots"), "{stdout}");
    // The file is the `<recv_ns> <json>` format: gzip lines, the snapshot right after the
    // first depth frame, every line decodable, and the book in sync at the end.
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(std::fs::File::open(&file).unwrap()), &mut text).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 20, "{} lines", lines.len());
    assert!(lines.iter().all(|l| l.split_once(' ').is_some_and(|(ns, json)| ns.parse::<u64>().is_ok() && json.starts_with('{'))));
    let snapshot = lines.iter().position(|l| l.contains("\"lastUpdateId\"")).expect("a snapshot line");
    assert!(lines[snapshot - 1].contains("@depth"), "the snapshot follows a depth frame");
    let mut decode = sapphire()
        .args(["feed", "decode", "--venue", "binance", "--book"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut decode.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let decoded = decode.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&decoded.stderr);
    assert!(stderr.contains(", 0 lines skipped"), "{stderr}");
    let last_book = String::from_utf8_lossy(&decoded.stdout).lines().rev().find(|l| l.contains("\"in_sync\"")).map(str::to_string).unwrap();
    assert!(last_book.contains("\"in_sync\":true"), "{last_book}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `sapphire feed serve --venue bybit` on the project's Bybit fixture: the child and its address.
fn local_bybit_exchange() -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway/tests/fixtures/bybit_linear_btcusdt.txt");
    let mut server = sapphire()
        .args(["feed", "serve", "--venue", "bybit", "--pace", "recorded", "--bind", "127.0.0.1:0", fixture])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("feed serve starts");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout")).read_line(&mut line).expect("serve prints its address");
    assert!(line.contains("/v5/public/"), "{line}");
    let addr = line.split("listening on ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or_else(|| panic!("{line}")).to_string();
    (server, addr)
}

#[test]
fn run_trades_a_bybit_feed_served_by_the_local_exchange() {
    let (mut server, addr) = local_bybit_exchange();
    let dir = temp_dir("bybit-feed");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("feed.toml");
    std::fs::write(
        &config,
        format!(
            "[market]\nsource = \"bybit\"\nvenue_market = \"linear\"\nws_url = \"ws://{addr}\"\nrest_url = \"http://{addr}\"\nsymbols = [\"BTCUSDT\"]\n"
        ),
    )
    .unwrap();
    let out = sapphire()
        .args(["run", "--duration", "3s", "--wait", "yield", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .output()
        .expect("sapphire runs");
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}: {stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("bybit linear feed from"), "{stdout}");
    let feed = stdout.lines().find(|l| l.trim_start().starts_with("feed:")).unwrap_or_else(|| panic!("no feed line:\n{stdout}"));
    // The fixture's frames: every one parsed, the book synced once from the subscription's snapshot.
    assert!(feed.contains(" 0 skipped, 1 snapshots (") && feed.contains(" 0 gaps, 0 reconnects"), "{feed}");
    let events: u64 = feed.split(" frames, ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(events > 40, "{feed}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn record_captures_bybit_frames_that_feed_decode_syncs_from() {
    let (mut server, addr) = local_bybit_exchange();
    let dir = temp_dir("record-bybit");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rec.gz");
    let out = sapphire()
        .args(["record", "--venue", "bybit", "--market", "linear", "--symbols", "btcusdt", "--duration", "3s"])
        .arg("--ws-url")
        .arg(format!("ws://{addr}"))
        .arg("--out")
        .arg(&file)
        .output()
        .expect("record runs");
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("/v5/public/linear") && stdout.contains(" 1 snapshots"), "{stdout}");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(std::fs::File::open(&file).unwrap()), &mut text).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 20, "{} lines", lines.len());
    assert!(lines.iter().all(|l| l.split_once(' ').is_some_and(|(ns, json)| ns.parse::<u64>().is_ok() && json.starts_with('{'))));
    assert!(lines[0].contains(r#""op":"subscribe""#) && lines[0].contains(r#""success":true"#), "the acknowledgement first: {}", lines[0]);
    assert!(lines.iter().any(|l| l.contains(r#""topic":"orderbook.50.BTCUSDT","type":"snapshot""#)));
    let mut decode = sapphire()
        .args(["feed", "decode", "--venue", "bybit", "--market", "linear", "--book"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut decode.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let decoded = decode.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&decoded.stderr);
    assert!(stderr.contains(", 0 lines skipped"), "{stderr}");
    let last_book = String::from_utf8_lossy(&decoded.stdout).lines().rev().find(|l| l.contains("\"in_sync\"")).map(str::to_string).unwrap();
    assert!(last_book.contains("\"in_sync\":true"), "{last_book}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads a child's stdout until it has printed its API address and its QUIC ingress line;
/// returns (api address, QUIC address, certificate path).
fn api_and_quic(child: &mut std::process::Child) -> (String, String, String) {
    use std::io::{BufRead, BufReader};
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let (mut api, mut quic) = (None, None);
    let mut line = String::new();
    while api.is_none() || quic.is_none() {
        line.clear();
        assert!(reader.read_line(&mut line).expect("reading stdout") > 0, "the process ended before printing its addresses");
        if let Some(addr) = line.trim().strip_prefix("api: http://") {
            api = Some(addr.to_string());
        }
        // `quic: 127.0.0.1:PORT (self-signed development certificate for agents to pin: PATH)`
        if let Some(rest) = line.trim().strip_prefix("quic: ") {
            let addr = rest.split_whitespace().next().unwrap_or_default().to_string();
            let cert = rest.rsplit_once("pin: ").map(|(_, p)| p.trim_end_matches(')').to_string()).unwrap_or_default();
            quic = Some((addr, cert));
        }
    }
    std::thread::spawn(move || for _ in reader.lines() {});
    let (addr, cert) = quic.unwrap();
    (api.unwrap(), addr, cert)
}

#[test]
fn a_remote_agents_signal_over_quic_becomes_an_order_and_a_wrong_token_is_refused() {
    use sapphire_gateway::quic::{AgentLinkConfig, AgentToken, ClientTrust, QuicAgentLink, WireSignal};
    let dir = temp_dir("quic");
    std::fs::create_dir_all(&dir).unwrap();
    // The core runs no agents of its own: the only external signal is the remote agent's.
    let config = dir.join("core.toml");
    std::fs::write(
        &config,
        "[agents.runtime]\nenabled = false\n\n[quic]\nbind = \"127.0.0.1:0\"\nsnapshot_interval_ms = 50\nagents = [{ id = 10, token_env = \"SAPPHIRE_TEST_QUIC_TOKEN\" }]\n",
    )
    .unwrap();
    let data = dir.join("data");
    let mut core = sapphire()
        .args(["run", "--duration", "20s", "--data-dir", data.to_str().unwrap(), "--config"])
        .arg(&config)
        .env("SAPPHIRE_TEST_QUIC_TOKEN", "quic-secret")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let (_api, quic, cert) = api_and_quic(&mut core);
    assert!(std::path::Path::new(&cert).exists(), "the development certificate is at {cert}");

    // `sapphire agents --core-quic` with a wrong token: refused for good, exit 1, no retry loop.
    let agents_config = dir.join("agents.toml");
    std::fs::write(&agents_config, "[[agents.runtime.agent]]\nid = 10\nkind = \"momentum\"\n").unwrap();
    let refused = sapphire()
        .args([
            "agents",
            "--http-bind",
            "127.0.0.1:0",
            "--duration",
            "10s",
            "--core-quic",
            &quic,
            "--quic-cert",
            &cert,
            "--agent-id",
            "10",
            "--config",
        ])
        .arg(&agents_config)
        .env("SAPPHIRE_AGENT_TOKEN", "not-the-secret")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bad_token"), "{stderr}");

    // The agent link (the library `sapphire agents --core-quic` runs on): market data arrives,
    // a full-strength signal goes in.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let taken = runtime.block_on(async {
        let link = QuicAgentLink::connect(AgentLinkConfig::new(
            quic.clone(),
            ClientTrust::Pinned(cert.clone().into()),
            10,
            AgentToken::new("quic-secret").unwrap(),
        ))
        .await
        .expect("the agent connects");
        assert_eq!(link.instruments()[0], "BTCUSDT");
        let deadline = Instant::now() + Duration::from_secs(10);
        while link.board().read(sapphire_core::instrument::InstrumentId(0)).and_then(|t| t.mid()).is_none() {
            assert!(Instant::now() < deadline, "the core's snapshots reach the agent");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let signal = WireSignal { instrument: 0, strength_bps: 10_000, confidence_bps: 10_000, ttl_ms: 60_000, signal_id: 4242 };
        assert!(link.signals().try_send(signal));
        while link.stats().accepted.load(std::sync::atomic::Ordering::Relaxed) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let taken = link.stats().accepted.load(std::sync::atomic::Ordering::Relaxed);
        // Let the engine act on it before the core stops.
        tokio::time::sleep(Duration::from_millis(500)).await;
        link.close().await;
        taken
    });
    assert_eq!(taken, 1, "the core accepted the signal");
    let _ = Command::new("kill").args(["-INT", &core.id().to_string()]).status();
    let out = core.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Journaled with the agent the token speaks for, and turned into an order for agent 10.
    let inputs = sapphire().args(["journal", "dump"]).arg(data.join("journal/input")).output().unwrap();
    let inputs = String::from_utf8_lossy(&inputs.stdout);
    assert!(
        inputs.lines().any(|l| l.contains("\"kind\":\"signal\"") && l.contains("\"agent\":10") && l.contains("\"signal_id\":4242")),
        "the signal is in the input journal"
    );
    let outputs = sapphire().args(["journal", "dump"]).arg(data.join("journal/output")).output().unwrap();
    let outputs = String::from_utf8_lossy(&outputs.stdout);
    let orders: Vec<&str> = outputs.lines().filter(|l| l.contains("\"kind\":\"order\"") && l.contains("\"agent\":10")).collect();
    assert!(
        !orders.is_empty(),
        "the remote agent's signal became an order:\n{}",
        outputs.lines().filter(|l| l.contains("\"agent\":10")).collect::<Vec<_>>().join("\n")
    );
    assert!(orders[0].contains("\"side\":\"buy\""), "{}", orders[0]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The numbers in a summary line, in order.
fn numbers_of(line: &str) -> Vec<u64> {
    line.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect()
}

#[test]
fn real_routing_on_bybit_takes_fills_from_the_private_stream_and_adopts_the_venues_position() {
    let (mut server, addr) = local_bybit_exchange();
    let dir = temp_dir("real-routing-bybit");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("live.toml");
    let prefix = format!("sapphire-cli-bybit-{}", std::process::id());
    // As the Binance test: a remote agent's signal over Redis is what trades — only it (every
    // other agent weighs zero), so the venue ends the first run holding its position. The
    // private stream's URL is given in full, as production's is.
    std::fs::write(
        &config,
        format!(
            "[market]\nsource = \"bybit\"\nvenue_market = \"linear\"\nws_url = \"ws://{addr}\"\nrest_url = \"http://{addr}\"\nsymbols = [\"BTCUSDT\"]\n\n[venue]\nmarket = \"bybit-linear\"\nrest_url = \"http://{addr}\"\nuser_stream_url = \"ws://{addr}/v5/private\"\n\n[risk]\nagent_budget_usd = \"5000\"\nmax_position_usd = \"5000\"\nmax_order_usd = \"5000\"\n\n[agents]\nweights_bps = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10000]\n\n[redis]\nurl = \"redis://127.0.0.1:6379/\"\nprefix = \"{prefix}\"\n"
        ),
    )
    .unwrap();
    let run = |data: &str| {
        let mut cmd = sapphire();
        cmd.args(["run", "--duration", "4s", "--wait", "yield", "--config"]).arg(&config).arg("--data-dir").arg(dir.join(data));
        cmd.env("ENABLE_PAPER_TRADING", "false").env_remove("REDIS_URL");
        cmd.env("BYBIT_API_KEY", "sapphire-local-key").env("BYBIT_API_SECRET", "sapphire-local-secret");
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("sapphire runs")
    };
    let line = |stdout: &str, start: &str| -> String {
        stdout.lines().find(|l| l.trim_start().starts_with(start)).unwrap_or_else(|| panic!("no {start:?} line:\n{stdout}")).to_string()
    };
    // First run: a signal becomes an order; its fill comes back over the private stream.
    let child = run("data-1");
    let signal = r#"{"agent":12,"symbol":"BTCUSDT","strength_bps":10000,"confidence_bps":10000,"ttl_ms":5000}"#;
    for _ in 0..12 {
        std::thread::sleep(Duration::from_millis(250));
        redis_publish(&format!("{prefix}:main:signals:in"), signal).expect("the Redis the test script provides");
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stdout}\n{stderr}", out.status);
    assert!(stdout.contains("REAL ORDERS to BybitLinear"), "{stdout}");
    assert!(!stdout.contains("sapphire-local-secret") && !stderr.contains("sapphire-local-secret"), "the secret is never printed");
    // "venue X: N orders, A acked, R rejected, F filtered before sending, K fills, ..."
    let venue = numbers_of(&line(&stdout, "venue BybitLinear"));
    assert!(venue[0] > 0 && venue[1] > 0 && venue[4] > 0, "orders acknowledged and filled: {venue:?}\n{stdout}");
    // "venue stream: C connects, O order updates, E executions (X fills reported from executions, S skipped), R errors"
    let stream = numbers_of(&line(&stdout, "venue stream:"));
    assert!(stream[0] >= 1, "the private stream connected: {stream:?}");
    assert!(stream[2] > 0 && stream[3] > 0, "fills came as executions over the private stream: {stream:?}\n{stdout}");
    let summary = line(&stdout, "orders ");
    assert!(!summary.contains("fills 0,"), "the engine booked the venue's fill: {summary}");
    // "venue reconcile: A orders adopted, C closed; D position differences seen, P adopted, U unpriced; F failed passes"
    let reconcile = numbers_of(&line(&stdout, "venue reconcile:"));
    assert_eq!(reconcile[3], 0, "engine and venue agreed all along: nothing adopted in the first run\n{stdout}\n{stderr}");
    let first_run = stdout.clone();
    // Second run, a fresh engine (new data dir: flat): the venue still holds the first run's
    // position. Reconciliation sees the difference at start and adopts it once it holds.
    let out = run("data-2").wait_with_output().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stdout}\n{stderr}", out.status);
    let reconcile = numbers_of(&line(&stdout, "venue reconcile:"));
    assert!(
        reconcile[2] >= 2 && reconcile[3] >= 1,
        "the difference was seen twice and adopted: {reconcile:?}\n{stdout}\n{stderr}\nfirst run:\n{first_run}"
    );
    assert!(stderr.contains("adopting the venue's BTCUSDT position"), "logged: {stderr}");
    let summary = line(&stdout, "orders ");
    assert!(!summary.contains("fills 0,"), "the engine booked the adjustment: {summary}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn configurations_that_cannot_work_exit_2_naming_the_key() {
    let dir = temp_dir("unworkable");
    let file = dir.with_extension("toml");
    // (configuration file, environment, the key the message must name)
    type Case = (&'static str, &'static [(&'static str, &'static str)], &'static str);
    let cases: &[Case] = &[
        // 600M × 16 agents wrapped the capital to -8846744073.70 and the engine ran.
        ("[risk]\nagent_budget_usd = \"600000000\"\n", &[], "risk.agent_budget_usd"),
        ("[risk]\nagent_budget_usd = \"0\"\n", &[], "risk.agent_budget_usd"),
        ("[risk]\nmax_order_usd = \"0\"\n", &[], "risk.max_order_usd"),
        ("[risk]\norders_per_sec = 0\n", &[], "risk.orders_per_sec"),
        ("[risk]\nstale_after_ms = 9200000000000000000\n", &[], "risk.stale_after_ms"),
        ("[market]\ntimer_ms = 0\n", &[], "market.timer_ms"),
        ("[paper]\ntaker_fee_bps = 1000000\n", &[], "paper.taker_fee_bps"),
        ("[engine]\nedge_core = 99999\n", &[], "engine.edge_core"),
        ("[engine]\njournal_core = 99999\n", &[], "engine.journal_core"),
        ("[engine]\nlayout = \"fused\"\nengine_cores = [0, 1]\n", &[], "engine.engine_cores"),
        ("", &[("TRADING_SYMBOLS", ",")], "TRADING_SYMBOLS"),
        ("", &[("TRADING_SYMBOLS", " ")], "TRADING_SYMBOLS"),
        ("", &[("SAPPHIRE_API_TOKEN", "secret ")], "SAPPHIRE_API_TOKEN"),
    ];
    for (text, env, key) in cases {
        std::fs::write(&file, text).unwrap();
        let out = sapphire()
            .args(["run", "--duration", "1s", "--config"])
            .arg(&file)
            .envs(env.iter().copied())
            .arg("--data-dir")
            .arg(&dir)
            .output()
            .expect("sapphire runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?} {env:?}: {stderr}");
        assert!(stderr.contains(key), "{text:?} {env:?}: message should name {key}: {stderr}");
    }
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A POST with the bearer token and a JSON body on a fresh connection: status and body.
fn post_json(addr: &str, path: &str, token: &str, body: &str) -> (u16, String) {
    http(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

#[test]
fn a_manual_order_and_a_flatten_trade_on_the_local_exchange() {
    let (mut server, addr) = local_exchange();
    let dir = temp_dir("manual-flatten");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("live.toml");
    std::fs::write(
        &config,
        format!(
            "[market]\nsource = \"binance\"\nws_url = \"ws://{addr}\"\nrest_url = \"http://{addr}\"\nsymbols = [\"BTCUSDT\"]\n\n[venue]\nmarket = \"binance-spot\"\nrest_url = \"http://{addr}\"\nuser_stream_url = \"ws://{addr}\"\n\n[risk]\nagent_budget_usd = \"5000\"\nmax_position_usd = \"5000\"\nmax_order_usd = \"5000\"\n"
        ),
    )
    .unwrap();
    let mut child = sapphire()
        .args(["run", "--duration", "30s", "--wait", "yield", "--http-bind", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("ENABLE_PAPER_TRADING", "false")
        .env("BINANCE_API_KEY", "sapphire-local-key")
        .env("BINANCE_API_SECRET", "sapphire-local-secret")
        .env("SAPPHIRE_API_TOKEN", "desk-token")
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sapphire starts");
    let api = api_address(&mut child);
    let get = |path: &str| http(&api, &format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while get("/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "never ready: {}", get("/readyz").1);
        std::thread::sleep(Duration::from_millis(50));
    }
    // A manual buy at the touch: signed, sent to the venue, filled there, answered with the fill.
    let (status, body) = post_json(&api, "/api/orders", "desk-token", r#"{"symbol":"BTCUSDT","side":"buy","qty":"0.01","agent":15}"#);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((v["status"].as_str(), v["side"].as_str(), v["agent"].as_u64()), (Some("filled"), Some("buy"), Some(15)), "{body}");
    // Over the per-order limit: refused, and the answer names the limit.
    let (status, body) = post_json(&api, "/api/orders", "desk-token", r#"{"symbol":"BTCUSDT","side":"buy","qty":"1","agent":15}"#);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("\"reason\":\"order_notional\""), "{body}");
    // Flatten the agent: one reduce-only IOC sell through the book, filled by the venue; the
    // flatten ends flat.
    let (status, body) = post_json(&api, "/api/flatten", "desk-token", r#"{"agent":15}"#);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":\"flattening\"") && body.contains("\"orders\":1"), "{body}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, risk) = get("/api/risk");
        let v: serde_json::Value = serde_json::from_str(&risk).unwrap();
        let flat = v["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|r| r["alert"] == "flattened" && r["agent_id"] == 15 && r["value"] == 0));
        if flat {
            break;
        }
        assert!(Instant::now() < deadline, "the flatten never ended flat: {risk}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, orders) = get("/api/orders");
    assert!(orders.contains("\"reduce_only\":true"), "the flatten's order: {orders}");
    // How many flattens have ended flat, whoever's (the risk log, newest first, 500 at most).
    let flat_ends = || {
        let (_, risk) = get("/api/risk?limit=500");
        let v: serde_json::Value = serde_json::from_str(&risk).unwrap();
        v["items"].as_array().map_or(0, |items| items.iter().filter(|r| r["alert"] == "flattened" && r["value"] == 0).count())
    };
    let wait_flat = |n: usize, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while flat_ends() < n {
            assert!(Instant::now() < deadline, "{what} never ended flat: {}", get("/api/risk?limit=500").1);
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // A flatten of one symbol (every agent's BTCUSDT, the rule agents' too) after another buy.
    let (status, body) = post_json(&api, "/api/orders", "desk-token", r#"{"symbol":"BTCUSDT","side":"buy","qty":"0.01","agent":15}"#);
    assert_eq!(status, 200, "{body}");
    let before = flat_ends();
    let (status, body) = post_json(&api, "/api/flatten", "desk-token", r#"{"symbol":"BTCUSDT"}"#);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":\"flattening\""), "{body}");
    wait_flat(before + 1, "the BTCUSDT flatten");
    // Kill with flatten: the kill switch, and everything closed through the venue.
    let (status, body) = post_json(&api, "/api/orders", "desk-token", r#"{"symbol":"BTCUSDT","side":"buy","qty":"0.01","agent":15}"#);
    assert_eq!(status, 200, "{body}");
    let before = flat_ends();
    let (status, body) = post_json(&api, "/api/kill?flatten=true", "desk-token", "");
    assert_eq!(status, 200, "{body}");
    wait_flat(before + 1, "kill with flatten");
    let (_, dashboard) = get("/dashboard");
    let v: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    assert_eq!(v["risk"]["killed"], true, "{dashboard}");
    let killed = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill runs");
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(out.status.success(), "exit {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}
