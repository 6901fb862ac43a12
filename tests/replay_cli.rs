//! `sapphire replay` as a user runs it: recordings and input journals in, summaries, output
//! journals and sweep tables out.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sapphire() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sapphire"));
    for var in ["TRADING_SYMBOLS", "ENABLE_PAPER_TRADING", "MAX_SYMBOLS_PER_AGENT", "SAPPHIRE_CONFIG", "SAPPHIRE_DATA_DIR"] {
        c.env_remove(var);
    }
    c
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sapphire-replay-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A real Binance spot recording (shared/ beside the repo; read in place, never copied) or,
/// without it, a generated one. `true` when real (it trades: fills are asserted).
fn recording(dir: &Path) -> (PathBuf, bool) {
    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/exchange/recorded/hftbacktest/binance_spot_btcusdt_20240808.gz");
    if real.is_file() {
        return (real, true);
    }
    let mut text = String::new();
    text.push_str("1000 {\"stream\":\"btcusdt@depth@100ms\",\"data\":{\"e\":\"depthUpdate\",\"E\":1,\"s\":\"BTCUSDT\",\"U\":1,\"u\":10,\"b\":[[\"100.00\",\"5.001\"]],\"a\":[[\"100.10\",\"5.001\"]]}}\n");
    text.push_str("1001 {\"lastUpdateId\":5,\"bids\":[[\"99.90\",\"5\"]],\"asks\":[[\"100.20\",\"5\"]]}\n");
    let mut mid = 10_000i64;
    for i in 0..3_000u64 {
        mid += if (i / 200) % 2 == 0 { 1 } else { -1 };
        text.push_str(&format!(
            "{} {{\"stream\":\"btcusdt@depth@100ms\",\"data\":{{\"e\":\"depthUpdate\",\"E\":{},\"s\":\"BTCUSDT\",\"U\":{},\"u\":{},\"b\":[[\"{}.{:02}\",\"{}.{:03}\"]],\"a\":[[\"{}.{:02}\",\"1.5\"]]}}}}\n",
            2_000 + i * 50_000_000,
            1 + i * 50,
            11 + i,
            11 + i,
            mid / 100,
            mid % 100,
            1 + i % 5,
            i % 1000,
            (mid + 1) / 100,
            (mid + 1) % 100
        ));
    }
    let p = dir.join("generated.txt");
    std::fs::write(&p, text).unwrap();
    (p, false)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Everything but the wall-clock fields.
fn deterministic(mut v: serde_json::Value) -> serde_json::Value {
    let o = v.as_object_mut().unwrap();
    o.remove("elapsed_s");
    o.remove("events_per_sec");
    v
}

#[test]
fn the_same_recording_gives_the_identical_summary_twice() {
    let dir = temp_dir("determinism");
    let (rec, real) = recording(&dir);
    let one = json(&ok(&sapphire().arg("replay").arg(&rec).arg("--json").output().unwrap()));
    let two = json(&ok(&sapphire().arg("replay").arg(&rec).arg("--json").output().unwrap()));
    assert_eq!(deterministic(one.clone()), deterministic(two));
    assert!(one["events"].as_u64().unwrap() > 6_000, "{one}");
    if real {
        assert!(one["fills"].as_u64().unwrap() > 0, "the real recording trades: {one}");
        // PnL = equity − capital, exactly.
        assert_eq!(one["capital"], "16000.000000000");
    }
    // The text summary names every figure.
    let text = ok(&sapphire().arg("replay").arg(&rec).output().unwrap());
    for word in ["events/s", "fills", "pnl", "fees", "max drawdown", "sharpe", "sortino", "hit rate", "turnover"] {
        assert!(text.contains(word), "{word} missing from: {text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn out_keeps_every_output_for_journal_dump_and_report() {
    let dir = temp_dir("out");
    let (rec, _) = recording(&dir);
    let out = dir.join("outputs");
    let summary = json(&ok(&sapphire().arg("replay").arg(&rec).arg("--json").arg("--out").arg(&out).output().unwrap()));
    let written = summary["outputs_written"].as_u64().unwrap();
    assert!(written > 0, "{summary}");
    let dump = ok(&sapphire().args(["journal", "dump"]).arg(&out).output().unwrap());
    assert_eq!(dump.lines().count() as u64, written);
    // A second run into the same directory would mix two runs: refused.
    let again = sapphire().arg("replay").arg(&rec).arg("--out").arg(&out).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a journal"));
    // The report over it states the same PnL and fees as the replay.
    let report = dir.join("report");
    let text =
        ok(&sapphire().args(["report", "--journal"]).arg(&out).arg("--out").arg(&report).arg("--data-dir").arg(&dir).output().unwrap());
    // Money prints truncated to the precision asked (core's Display), not rounded.
    let money = |v: &serde_json::Value| {
        let s = v.as_str().unwrap();
        let (int, frac) = s.split_once('.').unwrap();
        format!("{int}.{}", &frac[..2])
    };
    assert!(text.contains(&format!("PnL {}", money(&summary["pnl"]))), "{text}\n{summary}");
    // Exactly, not only to the cent: the output journal ends at the state the summary states,
    // whatever changed after the last timer.
    let last_pnl = dump.lines().rfind(|l| l.contains("\"kind\":\"pnl\"")).map(json).expect("a pnl record");
    assert_eq!(last_pnl["equity"], summary["equity"], "{last_pnl}\n{summary}");
    assert!(text.contains(&format!("fees {}", money(&summary["fees"]))), "{text}\n{summary}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pace_slows_replay_to_recorded_time() {
    let dir = temp_dir("pace");
    // 3 lines over 400 ms of receive time: at 1x the replay takes at least that long; at 4x a quarter.
    let mut text = String::new();
    for (i, t) in [0u64, 200_000_000, 400_000_000].iter().enumerate() {
        text.push_str(&format!(
            "{} {{\"stream\":\"btcusdt@trade\",\"data\":{{\"e\":\"trade\",\"E\":1,\"s\":\"BTCUSDT\",\"t\":{i},\"p\":\"100.0\",\"q\":\"0.1\",\"T\":1,\"m\":true}}}}\n",
            1_000_000_000 + t
        ));
    }
    let rec = dir.join("trades.txt");
    std::fs::write(&rec, text).unwrap();
    let started = std::time::Instant::now();
    ok(&sapphire().arg("replay").arg(&rec).args(["--pace", "1x"]).output().unwrap());
    assert!(started.elapsed() >= std::time::Duration::from_millis(400));
    let bad = sapphire().arg("replay").arg(&rec).args(["--pace", "fast-ish"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "a bad flag is a usage error");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_sweep_runs_every_combination_and_sorts_by_pnl() {
    let dir = temp_dir("sweep");
    let (rec, real) = recording(&dir);
    let out = ok(&sapphire()
        .arg("replay")
        .arg(&rec)
        .args(["--set", "paper.taker_fee_bps=0,40", "--set", "paper.maker_fee_bps=0", "--jobs", "2", "--json"])
        .output()
        .unwrap());
    let rows = json(&out);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let pnl = |r: &serde_json::Value| r["summary"]["pnl"].as_str().unwrap().parse::<f64>().unwrap();
    assert!(pnl(&rows[0]) >= pnl(&rows[1]), "sorted by PnL, best first");
    let fees = |fee: &str| {
        rows.iter().find(|r| r["settings"]["paper.taker_fee_bps"] == fee).unwrap()["summary"]["fees"].as_str().unwrap().to_string()
    };
    if real {
        assert_eq!(fees("0"), "0.000000000", "no fees at 0 bps taker and maker");
        assert_ne!(fees("40"), "0.000000000");
    }
    // The table form: a header and one line per combination.
    let run = sapphire().arg("replay").arg(&rec).args(["--set", "risk.max_order_usd=200,1000", "--jobs", "2"]).output().unwrap();
    let table = ok(&run);
    assert_eq!(table.lines().count(), 3, "{table}");
    // And on stderr the grid's throughput: both runs' events over the grid's wall time.
    let said = String::from_utf8_lossy(&run.stderr);
    assert!(said.contains("grid: 2 runs, 2 at a time, in ") && said.contains("× one process at a time"), "{said}");
    assert!(table.lines().next().unwrap().starts_with("risk.max_order_usd"));
    // Unknown keys and badly typed values are refused before anything runs.
    let bad = sapphire().arg("replay").arg(&rec).args(["--set", "risk.no_such=1,2"]).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no_such"));
    let bad = sapphire().arg("replay").arg(&rec).args(["--set", "paper.taker_fee_bps=cheap"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_input_journal_replays_deterministically() {
    use sapphire_core::event::{Event, Quote, Timer};
    use sapphire_core::fixed::{Price, Quantity};
    use sapphire_core::instrument::InstrumentId;
    let dir = temp_dir("journal");
    let input = dir.join("input");
    let (mut w, _) =
        sapphire_persistence::journal::JournalWriter::<Event>::open(sapphire_persistence::journal::JournalConfig::new(&input)).unwrap();
    let mut mid = 6_000_000i64; // cents
    for i in 0..5_000u64 {
        let ts = 1_000_000_000 + i * 20_000_000;
        mid += if (i / 400) % 2 == 0 { 3 } else { -3 };
        let q = Quote {
            ts_event: ts,
            ts_recv: ts,
            instrument: InstrumentId(0),
            bid_price: Price::from_raw((mid - 1) * 10_000_000),
            ask_price: Price::from_raw((mid + 1) * 10_000_000),
            bid_qty: Quantity::from_raw(100_000 * (1 + (i % 50) as i64)),
            ask_qty: Quantity::from_raw(100_000 * (1 + ((i + 25) % 50) as i64)),
            ..Quote::default()
        };
        w.append_event(&Event::Quote(q)).unwrap();
        if i % 5 == 4 {
            w.append_event(&Event::Timer(Timer { ts_event: ts, ts_recv: ts, timer_id: i as u32, _pad: 0 })).unwrap();
        }
    }
    w.sync().unwrap();
    drop(w);
    // Without its instrument list the journal cannot be read: a clear error.
    let missing = sapphire().arg("replay").arg(&input).output().unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("instruments.txt"));
    std::fs::write(input.join("instruments.txt"), "synthetic BTCUSDT\n").unwrap();
    let one = json(&ok(&sapphire().arg("replay").arg(&input).arg("--json").output().unwrap()));
    let two = json(&ok(&sapphire().arg("replay").arg(&input).arg("--json").output().unwrap()));
    assert_eq!(one["events"], 6_000);
    assert_eq!(deterministic(one), deterministic(two));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn replaying_a_live_runs_input_journal_reproduces_its_outputs_exactly() {
    let dir = temp_dir("live");
    let data = dir.join("data");
    ok(&sapphire()
        .args(["run", "--duration", "2s", "--events-per-sec", "20000", "--wait", "yield", "--quiet", "--data-dir"])
        .arg(&data)
        .env("SAPPHIRE_HTTP_BIND", "127.0.0.1:0")
        .env_remove("SAPPHIRE_LAYOUT")
        .env_remove("SAPPHIRE_API_TOKEN")
        .output()
        .unwrap());
    let replayed = dir.join("replayed");
    let summary =
        json(&ok(&sapphire().arg("replay").arg(data.join("journal/input")).arg("--json").arg("--out").arg(&replayed).output().unwrap()));
    let live = ok(&sapphire().args(["journal", "dump"]).arg(data.join("journal/output")).output().unwrap());
    let again = ok(&sapphire().args(["journal", "dump"]).arg(&replayed).output().unwrap());
    assert!(live.lines().count() > 1, "the run wrote outputs: {live}");
    assert_eq!(summary["outputs_written"].as_u64().unwrap() as usize, again.lines().count());
    // The replay's outputs are the live run's, then its closing snapshot (the state at the end
    // of the input: totals, then each agent's).
    let (live, again): (Vec<_>, Vec<_>) = (live.lines().collect(), again.lines().collect());
    assert!(again.len() > live.len(), "a closing snapshot follows: {again:?}");
    assert!(live == again[..live.len()], "the replay's outputs differ from the live run's:\nlive:\n{live:?}\nreplay:\n{again:?}");
    let closing = &again[live.len()..];
    assert!(closing[0].contains("\"kind\":\"pnl\""), "{closing:?}");
    assert!(closing[1..].iter().all(|l| l.contains("\"kind\":\"agent_pnl\"")), "{closing:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_feed_delay_is_an_order_delay_of_the_same_size() {
    let dir = temp_dir("latency");
    let (rec, real) = recording(&dir);
    let run = |flags: &[&str]| deterministic(json(&ok(&sapphire().arg("replay").arg(&rec).arg("--json").args(flags).output().unwrap())));
    let split = run(&["--latency-us", "1000", "--feed-latency-us", "49000"]);
    let order_only = run(&["--latency-us", "50000"]);
    assert_eq!(split, order_only, "docs/fill-models.md: a constant feed delay adds to the order latency");
    if real {
        assert_ne!(run(&["--latency-us", "1000"]), order_only, "latency changes fills on the real recording");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_capture_replays_to_the_recordings_outputs_record_for_record() {
    let dir = temp_dir("capture");
    let (rec, _) = recording(&dir);
    let (from_frames, capture, from_capture) = (dir.join("from-frames"), dir.join("capture"), dir.join("from-capture"));
    let one = json(&ok(&sapphire().arg("replay").arg(&rec).arg("--json").arg("--out").arg(&from_frames).output().unwrap()));
    let said = ok(&sapphire().args(["capture", "convert"]).arg(&rec).arg(&capture).output().unwrap());
    assert!(said.starts_with("capture: ") && said.contains(&format!("{} events", one["events"])), "{said}\n{one}");
    assert!(capture.join("instruments.spec").is_file());
    let two = json(&ok(&sapphire().arg("replay").arg(&capture).arg("--json").arg("--out").arg(&from_capture).output().unwrap()));
    let (a, b) = (
        ok(&sapphire().args(["journal", "dump"]).arg(&from_frames).output().unwrap()),
        ok(&sapphire().args(["journal", "dump"]).arg(&from_capture).output().unwrap()),
    );
    assert!(a.lines().count() > 10, "{a}");
    assert!(a == b, "the capture's replay writes the recording's outputs, byte for byte");
    for key in ["events", "orders", "fills", "pnl", "equity", "fees", "outputs_written"] {
        assert_eq!(one[key], two[key], "{key}: {one}\n{two}");
    }
    // Books only, from the capture: every event, the best bid and ask read after each market
    // update; the same sums whichever way the capture is read twice.
    let books = json(&ok(&sapphire().arg("replay").arg("--books-only").arg(&capture).arg("--json").output().unwrap()));
    assert_eq!(books["events"], one["events"], "{books}");
    assert!(books["tops"].as_u64().unwrap() > 0 && books["tops"].as_u64().unwrap() <= books["events"].as_u64().unwrap());
    let again = json(&ok(&sapphire().arg("replay").arg("--books-only").arg(&capture).arg("--json").output().unwrap()));
    assert_eq!(books["checksum"], again["checksum"]);
    let refused = sapphire().arg("replay").arg("--books-only").arg(&rec).output().unwrap();
    assert_eq!(refused.status.code(), Some(2), "recordings are not a capture");
    // A capture never overwrites one.
    let again = sapphire().args(["capture", "convert"]).arg(&rec).arg(&capture).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a journal"));
    let _ = std::fs::remove_dir_all(&dir);
}
