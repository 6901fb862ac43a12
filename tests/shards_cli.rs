//! Two cores (shards) on one Redis, one gateway following both: real processes.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn sapphire() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sapphire"));
    for var in [
        "TRADING_SYMBOLS",
        "ENABLE_PAPER_TRADING",
        "SAPPHIRE_CONFIG",
        "SAPPHIRE_DATA_DIR",
        "SAPPHIRE_API_TOKEN",
        "SAPPHIRE_SHARD",
        "SAPPHIRE_SHARDS",
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
    c.env("SAPPHIRE_HTTP_BIND", "127.0.0.1:0");
    c
}

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

fn api_address(child: &mut std::process::Child) -> String {
    use std::io::{BufRead, BufReader};
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).expect("reading stdout") > 0, "the process ended before printing its API address");
        if let Some(addr) = line.trim().strip_prefix("api: http://") {
            let addr = addr.to_string();
            std::thread::spawn(move || for _ in reader.lines() {});
            return addr;
        }
    }
}

/// Shards `a` and `b` publish under their own keys and channels on one Redis prefix; a
/// gateway configured for both lists both shards' signals, each row naming its shard and its
/// own symbol (both cores number their one instrument 0). Before shards the two cores wrote
/// one instrument list and one outputs channel, and the gateway named every row after
/// whichever core wrote the list last. (Signals, not fills: a lone BTCUSDT core on the
/// synthetic market may not fill within the test's time.)
#[test]
fn a_gateway_following_two_shards_shows_both_with_their_shard() {
    let dir = std::env::temp_dir().join(format!("sapphire-shards-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("shards.toml");
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let prefix = format!("sapphire-shards-{}-{nanos}", std::process::id());
    std::fs::write(&config, format!("[redis]\nurl = \"redis://127.0.0.1:6379/\"\nprefix = \"{prefix}\"\n")).unwrap();
    let spawn = |role: &str, env: &[(&str, &str)], extra: &[&str]| {
        let mut cmd = sapphire();
        cmd.arg(role).args(["--duration", "25s", "--http-bind", "127.0.0.1:0", "--config"]).arg(&config).args(extra);
        cmd.envs(env.iter().copied());
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starts")
    };
    let (data_a, data_b) = (dir.join("a"), dir.join("b"));
    let mut core_a = spawn("core", &[("SAPPHIRE_SHARD", "a"), ("TRADING_SYMBOLS", "SOLUSDT")], &["--data-dir", data_a.to_str().unwrap()]);
    let mut core_b = spawn("core", &[("SAPPHIRE_SHARD", "b"), ("TRADING_SYMBOLS", "BTCUSDT")], &["--data-dir", data_b.to_str().unwrap()]);
    let _ = (api_address(&mut core_a), api_address(&mut core_b));
    let mut gateway = spawn("gateway", &[("SAPPHIRE_SHARDS", "a,b")], &[]);
    let gateway_api = api_address(&mut gateway);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut a, mut b) = (false, false);
    let mut last = String::new();
    while Instant::now() < deadline && !(a && b) {
        std::thread::sleep(Duration::from_millis(200));
        let (status, body) = http(&gateway_api, "GET /api/signals?limit=500 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert_eq!(status, 200, "{body}");
        a = body.contains(r#""shard":"a""#) && body.contains("SOLUSDT");
        b = body.contains(r#""shard":"b""#) && body.contains("BTCUSDT");
        // No row of one shard carries the other's symbol.
        for item in body.split(r#""id":"#).skip(1) {
            assert!(!(item.contains(r#""shard":"a""#) && item.contains("BTCUSDT")), "{item}");
            assert!(!(item.contains(r#""shard":"b""#) && item.contains("SOLUSDT")), "{item}");
        }
        last = body;
    }
    for child in [&mut core_a, &mut core_b, &mut gateway] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(a && b, "signals of both shards reached the gateway, each with its shard: {last}");
}

fn signals_taken(core_api: &str) -> u64 {
    let (_, metrics) = http(core_api, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    metrics
        .lines()
        .find(|l| l.starts_with("sapphire_redis_ingress_total{kind=\"signal\",outcome=\"taken\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// An agents process following shards `a` and `b` trades both: its board holds both cores'
/// symbols, and each signal reaches the core whose shard trades the symbol (both cores take
/// remote signals). Before shards, one core's instrument list overwrote the other's and the
/// agents' signals all went to the one `signals:in` channel both cores read.
#[test]
fn an_agents_process_following_two_shards_signals_to_each_core() {
    let dir = std::env::temp_dir().join(format!("sapphire-shards-agents-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let prefix = format!("sapphire-shards-agents-{}-{nanos}", std::process::id());
    let redis = format!("[redis]\nurl = \"redis://127.0.0.1:6379/\"\nprefix = \"{prefix}\"\n");
    // The cores run no agents of their own: every signal they take comes from the agents process.
    let (core_config, agents_config) = (dir.join("core.toml"), dir.join("agents.toml"));
    std::fs::write(&core_config, format!("{redis}\n[agents.runtime]\nenabled = false\n")).unwrap();
    std::fs::write(&agents_config, &redis).unwrap();
    let spawn = |role: &str, config: &std::path::Path, env: &[(&str, &str)], extra: &[&str]| {
        let mut cmd = sapphire();
        cmd.arg(role).args(["--duration", "25s", "--http-bind", "127.0.0.1:0", "--config"]).arg(config).args(extra);
        cmd.envs(env.iter().copied());
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starts")
    };
    let (data_a, data_b) = (dir.join("a"), dir.join("b"));
    let mut core_a =
        spawn("core", &core_config, &[("SAPPHIRE_SHARD", "a"), ("TRADING_SYMBOLS", "SOLUSDT")], &["--data-dir", data_a.to_str().unwrap()]);
    let mut core_b = spawn(
        "core",
        &core_config,
        &[("SAPPHIRE_SHARD", "b"), ("TRADING_SYMBOLS", "BTCUSDT,ETHUSDT")],
        &["--data-dir", data_b.to_str().unwrap()],
    );
    let (api_a, api_b) = (api_address(&mut core_a), api_address(&mut core_b));
    let mut agents = spawn("agents", &agents_config, &[("SAPPHIRE_SHARDS", "a,b")], &[]);
    let _ = api_address(&mut agents);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut a, mut b) = (0, 0);
    while Instant::now() < deadline && (a == 0 || b == 0) {
        std::thread::sleep(Duration::from_millis(250));
        (a, b) = (signals_taken(&api_a), signals_taken(&api_b));
    }
    for child in [&mut core_a, &mut core_b, &mut agents] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(a > 0 && b > 0, "both cores took the agents' signals: shard a {a}, shard b {b}");
}
