//! `sapphire report` as a user runs it: an output journal in; charts, index.html, summary.md
//! and Telegram messages out.

use sapphire_core::engine::{EngineOutput, Output};
use sapphire_core::event::{AgentId, ExecReport, Side};
use sapphire_core::fixed::{Money, Price, Quantity};
use sapphire_core::instrument::InstrumentId;
use sapphire_core::portfolio::PnlSummary;
use sapphire_persistence::journal::{JournalConfig, JournalWriter};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output as ProcOutput};
use std::sync::{Arc, Mutex};

/// 2024-08-09 00:00:00 UTC.
const DAY2: u64 = 1_723_161_600_000_000_000;
const MINUTE: u64 = 60_000_000_000;

fn sapphire() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sapphire"));
    for var in ["SAPPHIRE_CONFIG", "SAPPHIRE_DATA_DIR", "TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_ID", "TELEGRAM_API_BASE"] {
        c.env_remove(var);
    }
    c
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sapphire-report-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ok(out: &ProcOutput) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fill(ts: u64, side: Side, price: &str, qty: &str, fee: &str) -> EngineOutput {
    EngineOutput::Exec(ExecReport {
        ts_event: ts,
        ts_recv: ts,
        instrument: InstrumentId(0),
        agent: AgentId(1),
        side,
        price: Price::parse(price).unwrap(),
        last_qty: Quantity::parse(qty).unwrap(),
        fee: Money::parse(fee).unwrap(),
        ..ExecReport::default()
    })
}

fn pnl(ts: u64, equity: &str) -> EngineOutput {
    let equity = Money::parse(equity).unwrap();
    EngineOutput::Pnl { ts_event: ts, total: PnlSummary { equity, capital: Money::from_units(1000), ..PnlSummary::default() } }
}

/// The hand-computed day (2024-08-09), between a day before and a day after:
/// - 2024-08-08 23:59: equity 1000 (the baseline of the 9th).
/// - the 9th: buy 2 @ 100 (fee 0.20); equity 1012; sell 1 @ 110 (fee 0.11); equity 1003;
///   sell 2 @ 90 (fee 0.18); equity 1009; agent 1 at equity 1009 on budget 1000, exposure 90.
///   PnL = 1009 − 1000 = 9.00. Fees = 0.20 + 0.11 + 0.18 = 0.49. Turnover = 200 + 110 + 180
///   = 490.00. Peak 1012, trough after it 1003: max drawdown 9.00 = 9/1012 = 0.889%. Reducing fills: sell 1 @ 110 against cost 100 (+10, a win), sell 2
///   @ 90 closing the last unit at cost 100 (−10, a loss): hit rate 50.0%.
/// - 2024-08-10: a buy and equity 2000 (not in the 9th's report).
fn write_journal(dir: &Path) {
    let (mut w, _) = JournalWriter::<Output>::open(JournalConfig::new(dir)).unwrap();
    let outputs = [
        pnl(DAY2 - MINUTE, "1000"),
        fill(DAY2 + 10_000_000_000, Side::Buy, "100", "2", "0.20"),
        pnl(DAY2 + MINUTE, "1012"),
        fill(DAY2 + MINUTE + 1, Side::Sell, "110", "1", "0.11"),
        pnl(DAY2 + 2 * MINUTE, "1003"),
        fill(DAY2 + 2 * MINUTE + 1, Side::Sell, "90", "2", "0.18"),
        pnl(DAY2 + 3 * MINUTE, "1009"),
        EngineOutput::AgentPnl {
            ts_event: DAY2 + 3 * MINUTE,
            agent: AgentId(1),
            summary: PnlSummary {
                equity: Money::from_units(1009),
                capital: Money::from_units(1000),
                gross_exposure: Money::from_units(90),
                ..PnlSummary::default()
            },
        },
        fill(DAY2 + 86_400_000_000_000 + 5, Side::Buy, "95", "1", "0.50"),
        pnl(DAY2 + 86_400_000_000_000 + MINUTE, "2000"),
    ];
    for (seq, output) in outputs.into_iter().enumerate() {
        w.append_record(&Output { seq: seq as i64, output }).unwrap();
    }
    w.sync().unwrap();
}

fn png_size(path: &Path) -> (u32, u32) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let reader = decoder.read_info().unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()));
    (reader.info().width, reader.info().height)
}

const CHARTS: [&str; 6] = ["equity.png", "drawdown.png", "agents_pnl.png", "agents_margin.png", "latency.png", "trades.png"];

#[test]
fn a_days_report_has_exact_figures_and_decodable_charts() {
    let dir = temp_dir("day");
    let data = dir.join("data");
    write_journal(&data.join("journal").join("output"));
    let out = dir.join("report");
    let text = ok(&sapphire().args(["report", "--date", "2024-08-09", "--data-dir"]).arg(&data).arg("--out").arg(&out).output().unwrap());
    assert!(text.contains("PnL 9.00, fees 0.49, turnover 490.00"), "{text}");
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    for row in [
        "| PnL | 9.00 |",
        "| fees | 0.49 |",
        "| turnover | 490.00 |",
        "| max drawdown | 9.00 (0.889%) |",
        "| hit rate | 50.0% |",
        "| fills | 3 |",
    ] {
        assert!(md.contains(row), "{row} missing from:\n{md}");
    }
    // Agent 1: PnL 9.00, margin used 90 / 1000 = 9.0%.
    assert!(md.contains("| 1 | 9.00 | 0.49 | 3 | 490.00 | 50.0% | 9.0% |"), "{md}");
    assert!(md.contains("No `last-run.json`"), "the missing latency source is stated:\n{md}");
    for chart in CHARTS {
        assert_eq!(png_size(&out.join(chart)), (960, 540), "{chart}");
    }
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    for chart in CHARTS {
        assert!(html.contains(&format!("src=\"{chart}\"")), "{chart} not on the page");
    }
    assert!(!html.contains("http://") && !html.contains("https://"), "no external assets");
    // The whole journal includes the next day: another PnL (2000 − 1000 capital).
    let all = ok(&sapphire()
        .args(["report", "--journal"])
        .arg(data.join("journal").join("output"))
        .arg("--out")
        .arg(dir.join("all"))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap());
    assert!(all.contains("PnL 1000.00, fees 0.99"), "{all}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn latency_comes_from_last_run_and_bad_input_is_refused() {
    let dir = temp_dir("latency");
    let data = dir.join("data");
    write_journal(&data.join("journal").join("output"));
    std::fs::write(
        data.join("last-run.json"),
        r#"{"latency":[{"name":"book","p50_ns":40,"p99_ns":120,"p999_ns":400,"max_ns":9000,"count":1000},{"name":"tick_to_order","p50_ns":900,"p99_ns":2500,"p999_ns":8000,"max_ns":50000,"count":10}]}"#,
    )
    .unwrap();
    let out = dir.join("report");
    ok(&sapphire().args(["report", "--date", "2024-08-09", "--data-dir"]).arg(&data).arg("--out").arg(&out).output().unwrap());
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(md.contains("| tick_to_order | 900 | 2500 | 8000 | 50000 | 10 |"), "{md}");
    assert_eq!(png_size(&out.join("latency.png")), (960, 540));
    // A day with nothing still gives a report (zeros, charts saying "no data").
    let empty = ok(&sapphire()
        .args(["report", "--date", "2024-01-01", "--data-dir"])
        .arg(&data)
        .arg("--out")
        .arg(dir.join("empty"))
        .output()
        .unwrap());
    assert!(empty.contains("0 of 10 outputs"), "{empty}");
    for bad in [vec!["report", "--date", "2024-02-30"], vec!["report", "--date", "2024-08-09", "--journal", "x"], vec!["report"]] {
        let o = sapphire().args(&bad).arg("--out").arg(dir.join("bad")).arg("--data-dir").arg(&data).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let missing = sapphire().args(["report", "--journal"]).arg(dir.join("nope")).arg("--out").arg(dir.join("x")).output().unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not a directory"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_directory_that_is_not_an_output_journal_is_refused() {
    let dir = temp_dir("not-a-journal");
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "not a journal\n").unwrap();
    let input = dir.join("input");
    let cfg = JournalConfig::new(&input);
    let (mut w, _) = JournalWriter::<sapphire_core::event::Event>::open(cfg).unwrap();
    w.append_event(&sapphire_core::event::Event::Timer(Default::default())).unwrap();
    w.sync().unwrap();
    drop(w);
    for (journal, says) in [(&empty, "no journal segments"), (&other, "no journal segments"), (&input, "")] {
        let out = sapphire().args(["report", "--journal"]).arg(journal).arg("--out").arg(dir.join("report")).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "{}: {stdout}", journal.display());
        assert!(!stdout.contains("0 of 0 outputs"), "{stdout}");
        assert!(stderr.contains(&*journal.display().to_string()) && stderr.contains(says), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// One HTTP request as the fake Bot API saw it.
#[derive(Debug)]
struct Seen {
    path: String,
    content_type: String,
    body: Vec<u8>,
}

/// A fake Telegram Bot API on 127.0.0.1: answers every request with `answer`, for at most
/// `max` requests and 60 s.
fn fake_telegram(answer: &'static str, status: &'static str, max: usize) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max) {
            let Ok(mut stream) = stream else { return };
            stream.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let (mut length, mut chunked, mut content_type) = (0usize, false, String::new());
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap();
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap(),
                    "transfer-encoding" => chunked = v.trim().eq_ignore_ascii_case("chunked"),
                    "content-type" => content_type = v.trim().to_string(),
                    _ => {}
                }
            }
            let mut body = Vec::new();
            if chunked {
                loop {
                    let mut size = String::new();
                    reader.read_line(&mut size).unwrap();
                    let n = usize::from_str_radix(size.trim(), 16).unwrap();
                    let mut chunk = vec![0; n + 2];
                    reader.read_exact(&mut chunk).unwrap();
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
            } else {
                body.resize(length, 0);
                reader.read_exact(&mut body).unwrap();
            }
            record.lock().unwrap().push(Seen { path, content_type, body });
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
            stream.write_all(reply.as_bytes()).unwrap();
        }
    });
    (base, seen)
}

/// A multipart part: its name, file name, content type and bytes.
#[derive(Debug)]
struct Part {
    name: String,
    filename: Option<String>,
    content_type: Option<String>,
    data: Vec<u8>,
}

fn parts(seen: &Seen) -> Vec<Part> {
    let boundary = seen.content_type.split("boundary=").nth(1).expect("a multipart boundary").trim_matches('"');
    let delim = format!("--{boundary}");
    let body = &seen.body;
    let find = |from: usize, pat: &[u8]| body[from..].windows(pat.len()).position(|w| w == pat).map(|p| p + from);
    let mut out = Vec::new();
    let mut at = find(0, delim.as_bytes()).expect("a first boundary") + delim.len();
    while body[at..].starts_with(b"\r\n") {
        let head_end = find(at, b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&body[at + 2..head_end]).into_owned();
        let next = find(head_end, format!("\r\n{delim}").as_bytes()).expect("a closing boundary");
        let disposition = head.lines().find(|l| l.to_ascii_lowercase().starts_with("content-disposition")).expect("a content-disposition");
        let attr = |key: &str| {
            disposition
                .split(';')
                .map(str::trim)
                .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
        };
        let content_type =
            head.lines().find_map(|l| l.strip_prefix("content-type: ").or_else(|| l.strip_prefix("Content-Type: "))).map(str::to_string);
        let name = attr("name").unwrap().split('"').next().unwrap().to_string();
        out.push(Part { name, filename: attr("filename"), content_type, data: body[head_end + 4..next].to_vec() });
        at = next + 2 + delim.len();
    }
    out
}

#[test]
fn telegram_gets_the_summary_and_the_charts_as_multipart() {
    let dir = temp_dir("telegram");
    let data = dir.join("data");
    write_journal(&data.join("journal").join("output"));
    let (base, seen) = fake_telegram(r#"{"ok":true,"result":{"message_id":1}}"#, "200 OK", 10);
    let out = dir.join("report");
    let stdout = ok(&sapphire()
        .args(["report", "--date", "2024-08-09", "--telegram", "--data-dir"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .env("TELEGRAM_BOT_TOKEN", "123:test-token")
        .env("TELEGRAM_CHAT_ID", "-1001")
        .env("TELEGRAM_API_BASE", &base)
        .output()
        .unwrap());
    assert!(stdout.contains("sent to Telegram (6 charts)"), "{stdout}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "sendMessage, then one album");
    assert_eq!(seen[0].path, "/bot123:test-token/sendMessage");
    let msg = parts(&seen[0]);
    assert_eq!(msg.iter().find(|p| p.name == "chat_id").unwrap().data, b"-1001");
    let text = String::from_utf8_lossy(&msg.iter().find(|p| p.name == "text").unwrap().data).into_owned();
    assert!(text.contains("PnL 9.00"), "{text}");
    assert_eq!(seen[1].path, "/bot123:test-token/sendMediaGroup");
    assert!(seen[1].content_type.starts_with("multipart/form-data"));
    let album = parts(&seen[1]);
    assert_eq!(album.iter().find(|p| p.name == "chat_id").unwrap().data, b"-1001");
    let media: serde_json::Value = serde_json::from_slice(&album.iter().find(|p| p.name == "media").unwrap().data).unwrap();
    assert_eq!(media.as_array().unwrap().len(), 6);
    for (i, chart) in CHARTS.iter().enumerate() {
        assert_eq!(media[i]["type"], "photo");
        assert_eq!(media[i]["media"], format!("attach://photo{i}"));
        let p = album.iter().find(|p| p.name == format!("photo{i}")).unwrap_or_else(|| panic!("photo{i} missing"));
        assert_eq!(p.filename.as_deref(), Some(*chart));
        assert_eq!(p.content_type.as_deref(), Some("image/png"));
        assert_eq!(p.data, std::fs::read(out.join(chart)).unwrap(), "{chart} sent whole");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_telegram_refusal_fails_the_command_with_the_apis_description() {
    let dir = temp_dir("telegram-401");
    let data = dir.join("data");
    write_journal(&data.join("journal").join("output"));
    let (base, seen) = fake_telegram(r#"{"ok":false,"error_code":401,"description":"Unauthorized"}"#, "401 Unauthorized", 3);
    let out = sapphire()
        .args(["report", "--date", "2024-08-09", "--telegram", "--data-dir"])
        .arg(&data)
        .arg("--out")
        .arg(dir.join("report"))
        .env("TELEGRAM_BOT_TOKEN", "999:very-secret")
        .env("TELEGRAM_CHAT_ID", "42")
        .env("TELEGRAM_API_BASE", &base)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Unauthorized") && stderr.contains("401"), "{stderr}");
    assert!(!stderr.contains("very-secret") && !String::from_utf8_lossy(&out.stdout).contains("very-secret"), "the token is never printed");
    assert_eq!(seen.lock().unwrap().len(), 1, "nothing more after the refusal");
    // Missing settings fail before any work.
    let out = sapphire()
        .args(["report", "--date", "2024-08-09", "--telegram", "--data-dir"])
        .arg(&data)
        .arg("--out")
        .arg(dir.join("r2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TELEGRAM_BOT_TOKEN"));
    let _ = std::fs::remove_dir_all(&dir);
}
