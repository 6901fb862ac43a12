//! What the people who run Sapphire meet: the API's address in a container, alerts reaching
//! Telegram (a local server speaking the Bot API), the daily report's shard, LLM providers
//! checked in one command. Real processes, their output and their exit codes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn sapphire() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sapphire"));
    for var in [
        "TRADING_SYMBOLS",
        "ENABLE_PAPER_TRADING",
        "MAX_SYMBOLS_PER_AGENT",
        "SAPPHIRE_CONFIG",
        "SAPPHIRE_DATA_DIR",
        "SAPPHIRE_API_TOKEN",
        "SAPPHIRE_SHARD",
        "SAPPHIRE_HTTP_BIND_DEFAULT",
        "DATABASE_URL",
        "REDIS_URL",
        "TELEGRAM_BOT_TOKEN",
        "TELEGRAM_BOT_TOKEN_FILE",
        "TELEGRAM_CHAT_ID",
        "TELEGRAM_API_BASE",
        "XAI_API_KEY",
        "GROK4_API_KEY",
        "OPENAI_API_KEY",
        "ENABLE_VERTEX_AI",
    ] {
        c.env_remove(var);
    }
    c.env("SAPPHIRE_HTTP_BIND", "127.0.0.1:0");
    c
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sapphire-ops-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One HTTP/1.1 request on a fresh connection: status code and body.
fn http(addr: &str, request: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("the API accepts");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    let _ = stream.read_to_string(&mut raw);
    let status = raw.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status: {raw:?}"));
    (status, raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

fn get(addr: &str, path: &str) -> (u16, String) {
    http(addr, &format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"))
}

fn post(addr: &str, path: &str, token: &str) -> (u16, String) {
    http(
        addr,
        &format!("POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"),
    )
}

/// Reads a child's stdout until a line starting with `api: http://`; returns the address and
/// the rest of the lines.
fn api_address(child: &mut std::process::Child) -> (String, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.trim().strip_prefix("api: http://").map(str::to_string))
        .expect("an `api: http://ADDR` line");
    (addr, lines)
}

/// The container image's default (SAPPHIRE_HTTP_BIND_DEFAULT, set by the Dockerfile) makes the
/// API listen on every interface, so `docker run -p 8080:8080` then `curl localhost:8080/healthz`
/// works; a configuration file's own `[api] bind` still wins over it.
#[test]
fn the_images_default_address_serves_every_interface_and_a_configured_one_wins() {
    let dir = temp_dir("bind");
    let mut child = sapphire()
        .env_remove("SAPPHIRE_HTTP_BIND")
        .env("SAPPHIRE_HTTP_BIND_DEFAULT", "0.0.0.0:0")
        .args(["run", "--duration", "20s", "--events-per-sec", "2000", "--wait", "yield", "--quiet", "--data-dir"])
        .arg(dir.join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sapphire starts");
    let (addr, _lines) = api_address(&mut child);
    assert!(addr.starts_with("0.0.0.0:"), "{addr}");
    let port = addr.rsplit(':').next().unwrap();
    // Reached through loopback (what `docker run -p` forwards to) although bound to all.
    assert_eq!(get(&format!("127.0.0.1:{port}"), "/healthz"), (200, "ok\n".to_string()));
    let _ = child.kill();
    let _ = child.wait();

    std::fs::write(dir.join("api.toml"), "[api]\nbind = \"127.0.0.1:0\"\n").unwrap();
    let mut child = sapphire()
        .env_remove("SAPPHIRE_HTTP_BIND")
        .env("SAPPHIRE_HTTP_BIND_DEFAULT", "0.0.0.0:0")
        .args(["run", "--duration", "20s", "--events-per-sec", "2000", "--wait", "yield", "--quiet", "--config"])
        .arg(dir.join("api.toml"))
        .arg("--data-dir")
        .arg(dir.join("data2"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sapphire starts");
    let (addr, _lines) = api_address(&mut child);
    assert!(addr.starts_with("127.0.0.1:"), "the file's [api] bind wins over the image's default: {addr}");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A message the fake Bot API received: path and `text` field.
#[derive(Debug, Clone)]
struct Sent {
    path: String,
    chat_id: String,
    text: String,
    at: Instant,
}

/// A local server speaking the Telegram Bot API's `sendMessage` (multipart form), answering
/// `ok`, for at most `max` requests and 120 s.
fn fake_telegram(max: usize) -> (String, Arc<Mutex<Vec<Sent>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let started = Instant::now();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max) {
            if started.elapsed() > Duration::from_secs(120) {
                return;
            }
            let Ok(mut stream) = stream else { return };
            stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let (mut length, mut boundary) = (0usize, String::new());
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap();
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap(),
                    "content-type" => boundary = v.split("boundary=").nth(1).unwrap_or("").trim().trim_matches('"').to_string(),
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let body = String::from_utf8_lossy(&body).into_owned();
            let field = |name: &str| {
                body.split(&format!("--{boundary}"))
                    .find(|p| p.contains(&format!("name=\"{name}\"")))
                    .and_then(|p| p.split_once("\r\n\r\n"))
                    .map(|(_, v)| v.trim_end_matches("\r\n").to_string())
                    .unwrap_or_default()
            };
            record.lock().unwrap().push(Sent { path, chat_id: field("chat_id"), text: field("text"), at: Instant::now() });
            let answer = r#"{"ok":true,"result":{"message_id":1}}"#;
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    (base, seen)
}

/// Kill, halt and resume through the API, and a feed that goes quiet: the process sends them
/// to Telegram itself, the first at once and the rest, inside the rate limit, as one digest.
/// The bot token comes from a mounted file and is never printed.
#[test]
fn alerts_reach_telegram_rate_limited_with_a_digest_and_the_token_stays_secret() {
    let dir = temp_dir("alerts");
    let (base, seen) = fake_telegram(50);
    std::fs::write(dir.join("token"), "777:alert-secret\n").unwrap();
    std::fs::write(
        dir.join("alerts.toml"),
        "[alerts]\ntelegram = true\nmin_interval_ms = 3000\nfeed_stale_after_ms = 60000\n\n[node]\nshard = \"ops-a\"\n",
    )
    .unwrap();
    let started = Instant::now();
    let mut child = sapphire()
        .args(["run", "--duration", "6s", "--events-per-sec", "2000", "--wait", "yield", "--config"])
        .arg(dir.join("alerts.toml"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("SAPPHIRE_API_TOKEN", "ops-token")
        .env("TELEGRAM_BOT_TOKEN_FILE", dir.join("token"))
        .env("TELEGRAM_CHAT_ID", "-100777")
        .env("TELEGRAM_API_BASE", &base)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sapphire starts");
    let (addr, lines) = api_address(&mut child);
    // Three alerts within a moment: the first goes at once, the other two wait for the interval.
    assert_eq!(post(&addr, "/api/kill", "ops-token").0, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no alert reached Telegram");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(post(&addr, "/api/resume", "ops-token").0, 200);
    assert_eq!(post(&addr, "/api/halt", "ops-token").0, 200);
    assert_eq!(post(&addr, "/api/resume", "ops-token").0, 200);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{stderr}");
    let elapsed = started.elapsed();
    let seen = seen.lock().unwrap().clone();
    for m in &seen {
        assert_eq!(m.path, "/bot777:alert-secret/sendMessage");
        assert_eq!(m.chat_id, "-100777");
        assert!(m.text.starts_with("Sapphire shard ops-a"), "the shard is named: {}", m.text);
    }
    assert_eq!(seen[0].text, "Sapphire shard ops-a: [kill] KILL switch engaged: orders cancelled, nothing new is sent");
    let digest = seen.iter().find(|m| m.text.contains("alerts (digest)")).unwrap_or_else(|| panic!("a digest: {seen:?}"));
    assert!(
        digest.text.contains("[kill] trading halted by an operator") && digest.text.contains("[kill] trading resumed"),
        "{}",
        digest.text
    );
    // The rate limit: messages at least the interval apart, except the one sent at shutdown.
    for pair in seen.windows(2).take(seen.len().saturating_sub(2)) {
        assert!(pair[1].at.duration_since(pair[0].at) >= Duration::from_millis(2_900), "{seen:?}");
    }
    assert!(seen.len() as u128 <= elapsed.as_millis() / 3_000 + 2, "{} messages in {elapsed:?}", seen.len());
    let out = rest.join("\n");
    assert!(out.contains("alerts: to Telegram"), "{out}");
    assert!(!out.contains("alert-secret") && !stderr.contains("alert-secret"), "the token is never printed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A feed with no market event for longer than `feed_stale_after_ms` is one alert naming the
/// symbols (the synthetic market at 3 events a second leaves each symbol quiet for a while).
#[test]
fn a_stale_feed_is_one_alert_naming_the_symbols() {
    let dir = temp_dir("stale");
    let (base, seen) = fake_telegram(20);
    std::fs::write(dir.join("alerts.toml"), "[alerts]\ntelegram = true\nmin_interval_ms = 100\nfeed_stale_after_ms = 300\n").unwrap();
    let out = sapphire()
        .args(["run", "--duration", "4s", "--events-per-sec", "1", "--wait", "yield", "--config"])
        .arg(dir.join("alerts.toml"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("TELEGRAM_BOT_TOKEN", "778:stale-secret")
        .env("TELEGRAM_CHAT_ID", "5")
        .env("TELEGRAM_API_BASE", &base)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("alert: feed stale: no market event for over 300 ms on "), "{stderr}");
    let seen = seen.lock().unwrap();
    assert!(seen.iter().any(|m| m.text.contains("[feed_stale] feed stale")), "{seen:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `[alerts] telegram = true` without a token stops the start (exit 1), naming the variable.
#[test]
fn alerts_without_a_token_refuse_to_start() {
    let dir = temp_dir("alerts-no-token");
    std::fs::write(dir.join("alerts.toml"), "[alerts]\ntelegram = true\n").unwrap();
    let out = sapphire()
        .args(["run", "--duration", "1s", "--config"])
        .arg(dir.join("alerts.toml"))
        .arg("--data-dir")
        .arg(dir.join("d"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[alerts] telegram = true") && stderr.contains("TELEGRAM_BOT_TOKEN"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The daily report names the shard it covers (a core's output journal holds that shard only),
/// in the summary it prints and in the message it sends to Telegram.
#[test]
fn the_report_names_its_shard_on_telegram() {
    let dir = temp_dir("report-shard");
    let out = sapphire()
        .args(["run", "--duration", "1s", "--events-per-sec", "5000", "--wait", "yield", "--quiet", "--data-dir"])
        .arg(dir.join("data"))
        .env("SAPPHIRE_SHARD", "b")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (base, seen) = fake_telegram(10);
    let out = sapphire()
        .args(["report", "--journal"])
        .arg(dir.join("data/journal/output"))
        .arg("--out")
        .arg(dir.join("report"))
        .arg("--telegram")
        .env("SAPPHIRE_SHARD", "b")
        .env("TELEGRAM_BOT_TOKEN", "779:report-secret")
        .env("TELEGRAM_CHAT_ID", "9")
        .env("TELEGRAM_API_BASE", &base)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.lines().next().is_some_and(|l| l.starts_with("Sapphire report ") && l.ends_with("(shard b)")), "{stdout}");
    let summary = std::fs::read_to_string(dir.join("report/summary.md")).unwrap();
    assert!(summary.lines().next().unwrap().ends_with("(shard b)"), "{summary}");
    let seen = seen.lock().unwrap();
    assert!(seen[0].text.lines().next().unwrap().ends_with("(shard b)"), "{:?}", seen[0]);
    // A shard name that could not be a core's is refused before any work.
    let out = sapphire()
        .args(["report", "--journal"])
        .arg(dir.join("data/journal/output"))
        .arg("--out")
        .arg(dir.join("r2"))
        .env("SAPPHIRE_SHARD", "Shard B")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

/// One request as the local OpenAI-compatible server saw it: path, Authorization header, body.
type LlmSeen = Arc<Mutex<Vec<(String, Option<String>, serde_json::Value)>>>;

/// A local server speaking OpenAI's chat completions: every answer's message content is
/// `content` (what the model "said"), for at most `max` requests and 120 s.
fn fake_llm(content: &'static str, max: usize) -> (String, LlmSeen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen: LlmSeen = Arc::default();
    let record = Arc::clone(&seen);
    let started = Instant::now();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max) {
            if started.elapsed() > Duration::from_secs(120) {
                return;
            }
            let Ok(mut stream) = stream else { return };
            stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let (mut length, mut auth) = (0usize, None);
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap();
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap(),
                    "authorization" => auth = Some(v.trim().to_string()),
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            record.lock().unwrap().push((path, auth, serde_json::from_slice(&body).unwrap_or_default()));
            let answer = serde_json::json!({
                "id": "chatcmpl-local", "object": "chat.completion", "model": "local-test-model",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 40, "completion_tokens": 20, "total_tokens": 60}
            })
            .to_string();
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    (base, seen)
}

/// `sapphire agents --check` calls each configured provider once — xAI Grok with the old
/// platform's GROK4_API_KEY, an OpenAI-compatible server from OPENAI_BASE_URL alone, and one
/// whose answers do not parse — and says for each the latency, the model and whether the
/// answer parsed; exit 1 when one failed, 0 when all answered, 2 when none is configured.
#[test]
fn agents_check_calls_each_provider_once_and_says_whether_the_answer_parsed() {
    let dir = temp_dir("agents-check");
    let (good, good_seen) = fake_llm(r#"{"strength_bps":0,"confidence_bps":0,"ttl_seconds":60,"reasoning":"check"}"#, 10);
    let (bad, bad_seen) = fake_llm("I think the market is fine.", 10);
    let providers = |with_broken: bool| {
        let mut t = format!("[[agents.runtime.providers]]\nname = \"grok\"\nkind = \"xai\"\nbase_url = \"{good}\"\nmodel = \"grok-4\"\n");
        if with_broken {
            t += &format!("\n[[agents.runtime.providers]]\nname = \"broken\"\nkind = \"openai_compatible\"\nbase_url = \"{bad}\"\n");
        }
        t
    };
    std::fs::write(dir.join("all.toml"), providers(true)).unwrap();
    let check = |config: &str| {
        sapphire()
            .args(["agents", "--check", "--config"])
            .arg(dir.join(config))
            .env("GROK4_API_KEY", "grok4-secret-key")
            .env("OPENAI_BASE_URL", &good)
            .env("OPENAI_MODEL", "tiny-local")
            .output()
            .unwrap()
    };
    let out = check("all.toml");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert_eq!(out.status.code(), Some(1), "one provider fails: {stdout}{stderr}");
    let line = |name: &str| {
        stdout.lines().find(|l| l.starts_with(&format!("check {name} ("))).unwrap_or_else(|| panic!("{name}: {stdout}")).to_string()
    };
    let grok = line("grok");
    assert!(
        grok.starts_with(&format!("check grok (xai, model grok-4, {good}): ok in ")) && grok.ends_with(" ms, answer parsed [default]"),
        "{grok}"
    );
    let local = line("openai");
    assert!(local.starts_with(&format!("check openai (openai_compatible, model tiny-local, {good}): ok in ")), "{local}");
    let broken = line("broken");
    assert!(
        broken.contains(": FAILED in ") && broken.contains("answer parsed: no; answered, but the answer was refused: invalid_json"),
        "{broken}"
    );
    assert!(stdout.contains("agents --check: 3 provider(s), 2 ok, 1 failed"), "{stdout}");
    assert!(!stdout.contains("grok4-secret-key") && !stderr.contains("grok4-secret-key"), "the key is never printed");
    // Each provider was called exactly once, with its own model, key and structured output.
    let good_seen = good_seen.lock().unwrap().clone();
    assert_eq!(good_seen.len(), 2, "{good_seen:?}");
    assert_eq!(bad_seen.lock().unwrap().len(), 1);
    for (path, auth, body) in &good_seen {
        assert_eq!(path, "/v1/chat/completions");
        assert_eq!(body["response_format"]["type"], "json_schema");
        match body["model"].as_str() {
            Some("grok-4") => assert_eq!(auth.as_deref(), Some("Bearer grok4-secret-key"), "GROK4_API_KEY is the xAI key"),
            Some("tiny-local") => assert_eq!(auth, &None, "no key for a server that asks none"),
            other => panic!("model {other:?}"),
        }
    }
    // Every provider answering: exit 0.
    std::fs::write(dir.join("good.toml"), providers(false)).unwrap();
    let out = check("good.toml");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("agents --check: 2 provider(s), 2 ok, 0 failed"), "{stdout}");
    // No provider at all: a configuration error naming how to set one up.
    let out = sapphire().args(["agents", "--check"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("XAI_API_KEY") && stderr.contains("ENABLE_VERTEX_AI") && stderr.contains("OPENAI_BASE_URL"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A recording of three symbols whose trades differ in value: BBB most, CCC next, AAA least.
fn three_symbol_tape(path: &std::path::Path) {
    let mut lines = Vec::new();
    let mut t = 1_723_161_600_000_000_000u64;
    for (i, (sym, price, qty, trades)) in
        [("AAAUSDT", "1.00", "5", 2), ("BBBUSDT", "100.00", "3", 4), ("CCCUSDT", "10.00", "7", 3)].iter().enumerate()
    {
        let lower = sym.to_lowercase();
        let ms = t / 1_000_000;
        lines.push(format!(
            r#"{t} {{"stream":"{lower}@depth@100ms","data":{{"e":"depthUpdate","E":{ms},"s":"{sym}","U":{u},"u":{u},"b":[["{price}","1.000"]],"a":[["{price}1","1.000"]]}}}}"#,
            u = 1000 + i
        ));
        for k in 0..*trades {
            t += 1_000_000;
            lines.push(format!(
                r#"{t} {{"stream":"{lower}@trade","data":{{"e":"trade","E":{ms},"s":"{sym}","t":{id},"p":"{price}","q":"{qty}","T":{ms},"m":false,"M":true}}}}"#,
                id = 5000 + k
            ));
        }
        t += 100_000_000;
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// TRADING_SYMBOLS empty on a venue: every trading symbol, ranked by the venue's 24 h quote
/// volume (the local exchange serves /api/v3/ticker/24hr in Binance's format), and the cap
/// (MAX_SYMBOLS_PER_AGENT) takes the most traded, not the first listed.
#[test]
fn every_symbol_mode_takes_the_most_traded_symbols_by_the_venues_24h_ticker() {
    let dir = temp_dir("all-market");
    let tape = dir.join("three.txt");
    three_symbol_tape(&tape);
    let mut server = sapphire()
        .args(["feed", "serve", "--pace", "recorded", "--bind", "127.0.0.1:0"])
        .arg(&tape)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("feed serve starts");
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.split("listening on ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or_else(|| panic!("{line}")).to_string();
    // The ticker in Binance's wire format: an array of full 24 h tickers, decimals as strings.
    let (status, body) = get(&addr, "/api/v3/ticker/24hr");
    assert_eq!(status, 200, "{body}");
    let tickers: serde_json::Value = serde_json::from_str(&body).unwrap();
    let bbb = tickers.as_array().unwrap().iter().find(|t| t["symbol"] == "BBBUSDT").unwrap_or_else(|| panic!("{body}"));
    for key in [
        "priceChange",
        "weightedAvgPrice",
        "lastPrice",
        "openPrice",
        "highPrice",
        "lowPrice",
        "volume",
        "quoteVolume",
        "bidPrice",
        "askPrice",
    ] {
        assert!(bbb[key].is_string(), "{key} is a decimal string: {bbb}");
    }
    assert_eq!((bbb["quoteVolume"].as_str(), bbb["count"].as_u64()), (Some("1200.00000000"), Some(4)), "{bbb}");
    std::fs::write(
        dir.join("feed.toml"),
        format!("[market]\nsource = \"binance\"\nws_url = \"ws://{addr}\"\nrest_url = \"http://{addr}\"\nsymbols = []\n"),
    )
    .unwrap();
    let out = sapphire()
        .args(["run", "--duration", "2s", "--config"])
        .arg(dir.join("feed.toml"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("TRADING_SYMBOLS", "")
        .env("MAX_SYMBOLS_PER_AGENT", "2")
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("market: every trading symbol: 3 on binance, ranked by 24 h quote volume; the top 2 (MAX_SYMBOLS_PER_AGENT) traded: BBBUSDT (1200), CCCUSDT (210)"),
        "{stdout}"
    );
    assert!(stdout.contains("(BBBUSDT,CCCUSDT)"), "the feed trades the two most traded, not the first listed: {stdout}");
    // The start says how many symbols each agent covers (here every one covers both).
    let coverage = stdout.lines().find(|l| l.starts_with("agents: symbols per agent")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(coverage.starts_with("agents: symbols per agent (of 2, at most 2 each, MAX_SYMBOLS_PER_AGENT): "), "{coverage}");
    assert!(!coverage.contains("covered by no agent"), "{coverage}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same three symbols as a Bybit linear recording (order book snapshots, public trades).
fn three_symbol_bybit_tape(path: &std::path::Path) {
    let mut lines = Vec::new();
    let mut t = 1_723_161_600_000_000_000u64;
    for (i, (sym, price, qty, trades)) in
        [("AAAUSDT", "1.00", "5", 2), ("BBBUSDT", "100.00", "3", 4), ("CCCUSDT", "10.00", "7", 3)].iter().enumerate()
    {
        let ms = t / 1_000_000;
        lines.push(format!(
            r#"{t} {{"topic":"orderbook.50.{sym}","type":"snapshot","ts":{ms},"data":{{"s":"{sym}","b":[["{price}","1.000"]],"a":[["{price}1","1.000"]],"u":{u},"seq":{u}}},"cts":{ms}}}"#,
            u = 1000 + i
        ));
        for k in 0..*trades {
            t += 1_000_000;
            lines.push(format!(
                r#"{t} {{"topic":"publicTrade.{sym}","type":"snapshot","ts":{ms},"data":[{{"T":{ms},"s":"{sym}","S":"Buy","v":"{qty}","p":"{price}","L":"PlusTick","i":"t-{i}-{k}","BT":false}}]}}"#
            ));
        }
        t += 100_000_000;
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// The same on Bybit: `/v5/market/tickers` (the local exchange serves it in Bybit's format)
/// ranks every trading symbol by 24 h turnover.
#[test]
fn every_symbol_mode_on_bybit_ranks_by_the_venues_24h_turnover() {
    let dir = temp_dir("all-market-bybit");
    let tape = dir.join("three.txt");
    three_symbol_bybit_tape(&tape);
    let mut server = sapphire()
        .args(["feed", "serve", "--venue", "bybit", "--pace", "recorded", "--bind", "127.0.0.1:0"])
        .arg(&tape)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("feed serve starts");
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.split("listening on ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or_else(|| panic!("{line}")).to_string();
    let (status, body) = get(&addr, "/v5/market/tickers?category=linear");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["retCode"], 0, "{body}");
    let bbb = v["result"]["list"].as_array().unwrap().iter().find(|t| t["symbol"] == "BBBUSDT").unwrap_or_else(|| panic!("{body}"));
    assert_eq!(bbb["turnover24h"], "1200.00000000", "{bbb}");
    assert!(get(&addr, "/v5/market/tickers?category=option").1.contains("\"retCode\":10001"), "an unknown category is refused");
    std::fs::write(
        dir.join("feed.toml"),
        format!("[market]\nsource = \"bybit\"\nvenue_market = \"linear\"\nws_url = \"ws://{addr}\"\nrest_url = \"http://{addr}\"\nsymbols = []\n"),
    )
    .unwrap();
    let out = sapphire()
        .args(["run", "--duration", "2s", "--config"])
        .arg(dir.join("feed.toml"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("TRADING_SYMBOLS", "")
        .env("MAX_SYMBOLS_PER_AGENT", "2")
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("market: every trading symbol: 3 on bybit-linear, ranked by 24 h quote volume; the top 2 (MAX_SYMBOLS_PER_AGENT) traded: BBBUSDT (1200), CCCUSDT (210)"),
        "{stdout}"
    );
    assert!(stdout.contains("(BBBUSDT,CCCUSDT)"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
