//! Snapshots as a user meets them: `sapphire run` killed with -9 comes back from its newest
//! snapshot, replaying only the journal after it, and what it does from there equals a replay
//! of the whole journal; a damaged newest snapshot is passed over with its reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn sapphire() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sapphire"));
    for var in [
        "TRADING_SYMBOLS",
        "ENABLE_PAPER_TRADING",
        "SAPPHIRE_CONFIG",
        "SAPPHIRE_LAYOUT",
        "SAPPHIRE_DATA_DIR",
        "SAPPHIRE_API_TOKEN",
        "SAPPHIRE_SNAPSHOT_EVERY_SECS",
        "SAPPHIRE_SNAPSHOT_KEEP",
        "DATABASE_URL",
        "REDIS_URL",
        "XAI_API_KEY",
        "ENABLE_VERTEX_AI",
    ] {
        c.env_remove(var);
    }
    c.env("SAPPHIRE_HTTP_BIND", "127.0.0.1:0");
    // A snapshot every 20,000 events: several in a few seconds at 20,000 events/s.
    c.env("SAPPHIRE_SNAPSHOT_EVERY_EVENTS", "20000");
    c
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sapphire-snapcli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn snapshots(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir.join("snapshots"))
        .map(|r| {
            r.filter_map(|e| e.ok().map(|e| e.path()))
                .filter_map(|p| {
                    let seq = p.file_name()?.to_str()?.strip_prefix("snapshot-")?.strip_suffix(".snap")?.parse().ok()?;
                    Some((seq, p))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn run_then_kill_9(dir: &Path, secs: u64) {
    let child = sapphire()
        .args(["run", "--events-per-sec", "20000", "--wait", "yield", "--quiet", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sapphire starts");
    std::thread::sleep(Duration::from_secs(secs));
    let killed = Command::new("kill").args(["-KILL", &child.id().to_string()]).status().expect("kill runs");
    assert!(killed.success());
    let _ = child.wait_with_output();
}

fn restart(dir: &Path) -> Output {
    let out = sapphire()
        .args(["run", "--duration", "2s", "--events-per-sec", "20000", "--wait", "yield", "--data-dir"])
        .arg(dir)
        .output()
        .expect("sapphire runs");
    assert!(out.status.success(), "exit {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

/// The `recovered:` line: events replayed and the snapshot's event.
fn recovered(stdout: &str) -> (u64, Option<u64>) {
    let line = stdout.lines().find(|l| l.starts_with("recovered: ")).unwrap_or_else(|| panic!("no recovery line:\n{stdout}"));
    let events = line["recovered: ".len()..].split_whitespace().next().and_then(|n| n.parse().ok()).expect("a count");
    let snapshot = line.split("(the state after event ").nth(1).and_then(|r| r.split(',').next()).and_then(|n| n.parse().ok());
    (events, snapshot)
}

#[test]
fn kill_9_comes_back_from_the_newest_snapshot_and_equals_a_replay_of_the_whole_journal() {
    let dir = temp_dir("kill9");
    run_then_kill_9(&dir, 5);
    let before = snapshots(&dir);
    assert!(before.len() >= 2, "snapshots written while running: {before:?}");
    let newest = before.last().unwrap().0;

    let out = restart(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (replayed, from) = recovered(&stdout);
    assert_eq!(from, Some(newest), "recovered from the newest snapshot:\n{stdout}");
    let journal: u64 = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("journal: ").and_then(|r| r.split(" (").nth(1)).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok())
        })
        .expect("the journal line");
    assert_eq!(replayed, journal - newest - 1, "only the events after the snapshot are replayed:\n{stdout}");
    assert!(replayed < journal / 2, "{replayed} of {journal}");
    assert!(stdout.contains("snapshots: ") && stdout.contains(" written"), "the summary reports snapshots:\n{stdout}");

    // The restarted core wrote snapshots of its own: each equals the state a replay of the
    // whole journal reaches at its event, so the recovered engine went on exactly as the
    // uninterrupted one would have.
    let after = snapshots(&dir);
    assert!(after.iter().any(|(seq, _)| *seq >= journal), "a snapshot taken after the restart: {after:?} (journal held {journal})");
    let verify = sapphire().args(["journal", "snapshots", "--verify"]).arg(&dir).output().expect("sapphire runs");
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{text}\n{}", String::from_utf8_lossy(&verify.stderr));
    assert!(text.contains(&format!("verify: {n} of {n} snapshots equal a replay of the journal", n = after.len())), "{text}");

    // The newest damaged (one flipped byte): the one before it is used, and the reason said.
    let (damaged_seq, damaged) = after.last().unwrap().clone();
    let mut bytes = std::fs::read(&damaged).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&damaged, &bytes).unwrap();
    let out = restart(&dir);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let (_, from) = recovered(&stdout);
    assert_eq!(from, Some(after[after.len() - 2].0), "the previous snapshot:\n{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("snapshot-{damaged_seq:020}.snap passed over: its body checksum does not match")),
        "the reason is logged:\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
