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

/// `psql` against the test database; `-At` output, trimmed. Panics with psql's message.
fn psql(sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
        .output()
        .expect("psql runs");
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `journal_seq`s of the output journal's records of these kinds, sorted.
fn journal_seqs(output_journal: &std::path::Path, kinds: &[&str]) -> Vec<i64> {
    let dump = sapphire().args(["journal", "dump"]).arg(output_journal).output().expect("journal dump runs");
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    let mut seqs: Vec<i64> = String::from_utf8_lossy(&dump.stdout)
        .lines()
        .filter(|l| kinds.iter().any(|k| l.contains(&format!("\"kind\":\"{k}\""))))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            v["journal_seq"].as_i64().expect("journal_seq")
        })
        .collect();
    seqs.sort_unstable();
    seqs
}

fn fills_in_postgres(schema: &str, shard: &str) -> u64 {
    psql(&format!("SELECT count(*) FROM {schema}.executions WHERE shard = '{shard}' AND last_qty > 0")).parse().unwrap_or(0)
}

/// Stops a process as Kubernetes does (SIGTERM) and waits for its orderly exit.
fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The deployment of issue 19 on one machine: two cores with disjoint symbols, each with its
/// sink into one Postgres schema, one Redis, a gateway and an agents process following both
/// shards. Every fill of both cores reaches Postgres exactly once under its shard, the gateway
/// shows both, `kill -9` of one core leaves the other trading, and the killed one comes back
/// from its journal and goes on. Checked at the end by comparing Postgres with both output
/// journals, record by record.
#[test]
fn two_shards_share_postgres_and_redis_and_survive_each_others_crash() {
    let dir = std::env::temp_dir().join(format!("sapphire-two-shards-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let tag = format!("two_shards_{}_{nanos}", std::process::id());
    let schema = tag.clone();
    psql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"));
    let database = format!("postgres://postgres@127.0.0.1:5432/test?options=-c%20search_path%3D{schema}");
    let migrate = sapphire().arg("migrate").env("DATABASE_URL", &database).output().expect("migrate runs");
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));
    let redis = format!("[redis]\nurl = \"redis://127.0.0.1:6379/\"\nprefix = \"{tag}\"\n");
    // The cores run an in-process agent (2); the agents process runs agent 10 over Redis, an id
    // Redis owns on both cores.
    let (core_config, agents_config) = (dir.join("core.toml"), dir.join("agents.toml"));
    // A momentum agent (2, in process) with a hair trigger makes shard b trade within the
    // test's seconds, whatever the synthetic market does in them.
    std::fs::write(
        &core_config,
        format!(
            "{redis}\n[snapshot]\nevery_secs = 1\n\n[[agents.runtime.agent]]\nid = 2\nkind = \"momentum\"\ncadence_ms = 200\nmomentum = {{ lookback = 5, threshold_bps = 0.01, full_scale_bps = 0.05 }}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        &agents_config,
        format!(
            "{redis}\n[agents.runtime]\narbitrator = {{ enabled = false }}\n\n[[agents.runtime.agent]]\nid = 10\nkind = \"imbalance\"\n"
        ),
    )
    .unwrap();
    let spawn = |role: &str, config: &std::path::Path, env: &[(&str, &str)], extra: &[&str]| {
        let mut cmd = sapphire();
        cmd.arg(role).args(["--duration", "120s", "--http-bind", "127.0.0.1:0", "--config"]).arg(config).args(extra);
        cmd.envs(env.iter().copied());
        cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("starts")
    };
    let (data_a, data_b) = (dir.join("a"), dir.join("b"));
    let core = |shard: &'static str, symbols: &'static str, data: &std::path::Path| {
        spawn(
            "core",
            &core_config,
            &[("SAPPHIRE_SHARD", shard), ("TRADING_SYMBOLS", symbols), ("DATABASE_URL", &database)],
            &["--data-dir", data.to_str().unwrap()],
        )
    };
    let mut core_a = core("a", "SOLUSDT", &data_a);
    let mut core_b = core("b", "BTCUSDT,ETHUSDT", &data_b);
    let _ = (api_address(&mut core_a), api_address(&mut core_b));
    let mut gateway = spawn("gateway", &core_config, &[("SAPPHIRE_SHARDS", "a,b")], &[]);
    let gateway_api = api_address(&mut gateway);
    let mut agents = spawn("agents", &agents_config, &[("SAPPHIRE_SHARDS", "a,b")], &[]);
    let _ = api_address(&mut agents);

    // Both shards fill, and their fills reach Postgres and the gateway.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut a, mut b, mut page) = (0, 0, String::new());
    while Instant::now() < deadline && !(a > 0 && b > 0 && page.contains(r#""shard":"a""#) && page.contains(r#""shard":"b""#)) {
        std::thread::sleep(Duration::from_millis(300));
        (a, b) = (fills_in_postgres(&schema, "a"), fills_in_postgres(&schema, "b"));
        page = http(&gateway_api, "GET /api/trades?limit=500 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").1;
    }
    assert!(a > 0 && b > 0, "both shards' fills reach Postgres: a {a}, b {b}");
    assert!(page.contains(r#""shard":"a""#) && page.contains("SOLUSDT"), "the gateway shows shard a's trades: {page}");
    assert!(page.contains(r#""shard":"b""#), "the gateway shows shard b's trades: {page}");
    // Each row carries its own shard's symbol.
    for item in page.split(r#""agent":"#).skip(1) {
        let (a_row, b_row) = (item.contains(r#""shard":"a""#), item.contains(r#""shard":"b""#));
        assert!(a_row != b_row, "one shard per row: {item}");
        assert_eq!(a_row, item.contains("SOLUSDT"), "shard a trades SOLUSDT, shard b BTCUSDT and ETHUSDT: {item}");
    }

    // kill -9 of core b: core a goes on trading.
    let _ = core_b.kill();
    let _ = core_b.wait();
    let a_at_kill = fills_in_postgres(&schema, "a");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && fills_in_postgres(&schema, "a") <= a_at_kill {
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(fills_in_postgres(&schema, "a") > a_at_kill, "shard a keeps trading while shard b is down");

    // Core b comes back on its data directory: it recovers from its snapshot, and trades again.
    let b_before = fills_in_postgres(&schema, "b");
    let mut core_b = core("b", "BTCUSDT,ETHUSDT", &data_b);
    let mut first_lines = String::new();
    {
        use std::io::{BufRead, BufReader};
        let mut reader = BufReader::new(core_b.stdout.take().unwrap());
        let mut line = String::new();
        // The start-up lines, up to the output journal's (printed after the recovery line).
        while reader.read_line(&mut line).unwrap() > 0 {
            first_lines.push_str(&line);
            if line.starts_with("output journal: ") {
                break;
            }
            line.clear();
        }
        std::thread::spawn(move || for _ in reader.lines() {});
    }
    // A snapshot a second of event time: the restart starts from the newest and replays only the
    // journal after it.
    assert!(
        first_lines.contains("\nrecovered: ") && first_lines.contains("after snapshot"),
        "core b recovered from its snapshot:\n{first_lines}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && fills_in_postgres(&schema, "b") <= b_before {
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(fills_in_postgres(&schema, "b") > b_before, "shard b trades again after its restart");

    // Orderly stop of everything; then Postgres holds each output journal exactly.
    for child in [&mut agents, &mut gateway] {
        let _ = child.kill();
        let _ = child.wait();
    }
    for (name, child) in [("a", &mut core_a), ("b", &mut core_b)] {
        let status = terminate(child);
        assert!(status.success(), "core {name} stopped cleanly: {status}");
    }
    for (shard, data) in [("a", &data_a), ("b", &data_b)] {
        let output = data.join("journal").join("output");
        for (table, kinds) in [("executions", &["exec_report", "fill"][..]), ("orders", &["order"][..])] {
            let want = journal_seqs(&output, kinds);
            let got: Vec<i64> = psql(&format!("SELECT journal_seq FROM {schema}.{table} WHERE shard = '{shard}' ORDER BY 1"))
                .lines()
                .map(|l| l.parse().unwrap())
                .collect();
            assert!(!want.is_empty(), "shard {shard} has {table} records");
            assert_eq!(got, want, "shard {shard}: every {table} record of its output journal is in Postgres exactly once");
        }
    }
    assert_eq!(psql(&format!("SELECT count(*) FROM {schema}.executions WHERE shard NOT IN ('a', 'b')")), "0");
    psql(&format!("DROP SCHEMA {schema} CASCADE"));
    let _ = std::fs::remove_dir_all(&dir);
}
