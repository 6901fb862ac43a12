//! Journal retention as a user meets it: `sapphire run` with an archive keeps only the journal
//! a restart needs, a `kill -9` comes back from the snapshot the pruned journal starts behind,
//! `sapphire replay --archive` reads the whole journal again (and equals the live run's
//! outputs), and `sapphire journal prune` / `restore` do it by hand.

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
        "SAPPHIRE_ARCHIVE",
        "SAPPHIRE_SHARD",
        "DATABASE_URL",
        "REDIS_URL",
        "XAI_API_KEY",
        "ENABLE_VERTEX_AI",
    ] {
        c.env_remove(var);
    }
    c.env("SAPPHIRE_HTTP_BIND", "127.0.0.1:0");
    // A snapshot every 20,000 events: one a second at 20,000 events/s.
    c.env("SAPPHIRE_SNAPSHOT_EVERY_EVENTS", "20000");
    c
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sapphire-retcli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// 1 MiB segments (several a second at 20,000 events/s) and a retention pass every second.
fn config(dir: &Path) -> PathBuf {
    let path = dir.join("sapphire.toml");
    std::fs::write(&path, "[journal]\nsegment_mb = 1\n\n[retention]\nevery_secs = 1\n").unwrap();
    path
}

fn segs(dir: &Path) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_str()?.to_string();
                    let seq = name.strip_suffix(".seg")?.parse().ok()?;
                    Some((seq, e.metadata().ok()?.len()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}:\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dump(dir: &Path) -> String {
    ok(sapphire().args(["journal", "dump"]).arg(dir).output().expect("sapphire runs"))
}

#[test]
fn a_core_with_an_archive_keeps_only_what_a_restart_needs_and_the_archive_replays_the_rest() {
    let root = temp_dir("run");
    let (data, archive) = (root.join("data"), root.join("archive"));
    let cfg = config(&root);
    let child = sapphire()
        .args(["run", "--events-per-sec", "20000", "--wait", "yield", "--quiet", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&data)
        .env("SAPPHIRE_ARCHIVE", &archive)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sapphire starts");
    std::thread::sleep(Duration::from_secs(6));
    assert!(Command::new("kill").args(["-KILL", &child.id().to_string()]).status().unwrap().success());
    let _ = child.wait_with_output();

    let input = data.join("journal/input");
    let (local, archived) = (segs(&input), segs(&archive.join("main/input")));
    assert!(archived.len() >= 2, "segments archived while running: {archived:?} (local {local:?})");
    assert!(archive.join("main/input/instruments.txt").exists(), "the instrument list goes with them");
    // Archived and local segments join without a gap or an overlap: the archive holds the
    // journal's start, the data directory the rest.
    assert_eq!(archived[0].0, 0);
    let record = (archived[0].1 - 16) / (archived[1].0 - archived[0].0);
    let (last_first, last_len) = *archived.last().unwrap();
    assert_eq!(local[0].0, last_first + (last_len - 16) / record, "archived {archived:?}, local {local:?}");
    // No sink is configured: the output journal is the local trade record and stays whole.
    assert!(segs(&archive.join("main/output")).is_empty());
    assert_eq!(segs(&data.join("journal/output"))[0].0, 0);

    // A restart comes back from a snapshot behind which the journal was pruned.
    let out = ok(sapphire()
        .args(["run", "--duration", "1s", "--events-per-sec", "20000", "--wait", "yield", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&data)
        .env("SAPPHIRE_ARCHIVE", &archive)
        .output()
        .expect("sapphire runs"));
    assert!(out.contains("(the state after event "), "recovered from a snapshot:\n{out}");
    assert!(out.contains("retention: ") && out.contains("segments archived and deleted"), "the summary reports retention:\n{out}");

    // Replaying the pruned journal alone is refused, naming the way out; with the archive it
    // reads every event and makes exactly the outputs the live core journaled.
    let alone = sapphire().args(["replay", "--config"]).arg(&cfg).arg(&input).output().expect("sapphire runs");
    assert!(!alone.status.success());
    let said = String::from_utf8_lossy(&alone.stderr);
    assert!(said.contains("--archive"), "{said}");
    let replayed = root.join("replayed");
    ok(sapphire()
        .args(["replay", "--config"])
        .arg(&cfg)
        .arg(&input)
        .arg("--archive")
        .arg(&archive)
        .arg("--out")
        .arg(&replayed)
        .output()
        .expect("sapphire runs"));
    let (live, again) = (dump(&data.join("journal/output")), dump(&replayed));
    assert!(live.lines().count() > 100, "{} outputs", live.lines().count());
    // Record for record what the live core journaled (across its kill -9 and restart); the
    // replay then closes with the portfolio's and each agent's totals.
    assert!(again.starts_with(&live), "the replay's outputs begin with exactly the live core's");
    let closing: Vec<&str> = again[live.len()..].lines().collect();
    assert!(
        !closing.is_empty() && closing.iter().all(|l| l.contains("\"kind\":\"pnl\"") || l.contains("\"kind\":\"agent_pnl\"")),
        "{closing:?}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn journal_prune_and_restore_by_hand() {
    let root = temp_dir("hand");
    let (data, archive) = (root.join("data"), root.join("archive"));
    let cfg = config(&root);
    // Without an archive nothing is pruned while it runs.
    ok(sapphire()
        .args(["run", "--duration", "3s", "--events-per-sec", "20000", "--wait", "yield", "--quiet", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("sapphire runs"));
    let input = data.join("journal/input");
    let all = segs(&input);
    assert!(all.len() >= 3 && all[0].0 == 0, "{all:?}");
    let whole = dump(&input);

    let prune = |extra: &[&str]| {
        let mut c = sapphire();
        c.args(["journal", "prune"]).arg(&data).arg("--archive").arg(&archive).args(extra);
        ok(c.output().expect("sapphire runs"))
    };
    let dry = prune(&["--dry-run"]);
    assert!(dry.contains("would archive and delete") && dry.contains("dry run"), "{dry}");
    assert_eq!(segs(&input), all, "a dry run changes nothing");
    // The sink's cursor unknown: the output journal is kept, and says why.
    let done = prune(&[]);
    assert!(done.contains("no sink is known"), "{done}");
    let left = segs(&input);
    assert!(left.len() < all.len() && left[0].0 > 0, "{left:?}");
    assert_eq!(segs(&archive.join("main/input")).len() + left.len(), all.len());
    // The sink's cursor past everything: the output journal's one segment is the one being
    // written, so it stays (output pruning itself: persistence/src/retention/tests.rs).
    assert_eq!(segs(&data.join("journal/output")).len(), 1);
    let done = prune(&["--sink-cursor", "18446744073709551615", "--keep-output-hours", "0"]);
    assert!(done.contains("0 segments") && !done.contains("no sink is known"), "{done}");
    assert_eq!(segs(&data.join("journal/output")).len(), 1);

    // Checking the snapshots against a replay needs the whole journal: said, not misreported.
    let verify = sapphire().args(["journal", "snapshots", "--verify"]).arg(&data).output().expect("sapphire runs");
    assert!(!verify.status.success());
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(said.contains("sapphire journal restore") && said.contains("starts at event"), "{said}");

    // Restored: the journal is whole again, record for record.
    let said = ok(sapphire().args(["journal", "restore"]).arg(&data).arg("--archive").arg(&archive).output().expect("sapphire runs"));
    assert!(said.contains("input: "), "{said}");
    assert_eq!(segs(&input), all);
    assert!(dump(&input) == whole, "the restored journal equals the original");
    let verify = sapphire().args(["journal", "snapshots", "--verify"]).arg(&data).output().expect("sapphire runs");
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("snapshots equal a replay of the journal"));
    let bad = sapphire().args(["journal", "prune"]).arg(&data).args(["--archive", "s3://nope"]).output().expect("sapphire runs");
    assert!(!bad.status.success());
    let _ = std::fs::remove_dir_all(&root);
}

fn psql(sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
        .output()
        .expect("psql runs");
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The deployment's arrangement: the sink in its own process writes its committed cursor to a
/// file, and pruning waits for it: nothing of the input journal goes until the sink has
/// committed the outputs of the events up to the snapshot.
#[test]
fn a_separate_sink_writes_its_cursor_and_pruning_waits_for_it() {
    let root = temp_dir("sink");
    let (data, archive) = (root.join("data"), root.join("archive"));
    let cfg = config(&root);
    ok(sapphire()
        .args(["run", "--duration", "3s", "--events-per-sec", "20000", "--wait", "yield", "--quiet", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("sapphire runs"));
    let (input, output) = (data.join("journal/input"), data.join("journal/output"));
    let all = segs(&input);
    assert!(all.len() >= 3, "{all:?}");
    let cursor = root.join("cursor");
    // Nothing committed yet (no cursor file): the input journal stays.
    std::fs::write(&cursor, "0\n").unwrap();
    let held = ok(sapphire()
        .args(["journal", "prune"])
        .arg(&data)
        .arg("--archive")
        .arg(&archive)
        .arg("--sink-cursor-file")
        .arg(&cursor)
        .output()
        .expect("sapphire runs"));
    assert!(held.contains("the sink has not committed"), "{held}");
    assert_eq!(segs(&input), all);

    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let schema = format!("retention_{}_{nanos}", std::process::id());
    psql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"));
    let database = format!("postgres://postgres@127.0.0.1:5432/test?options=-c%20search_path%3D{schema}");
    ok(sapphire().arg("migrate").env("DATABASE_URL", &database).output().expect("migrate runs"));
    let _ = std::fs::remove_file(&cursor);
    ok(sapphire()
        .args(["sink", "--duration", "4s", "--journal"])
        .arg(&output)
        .arg("--cursor-file")
        .arg(&cursor)
        .env("DATABASE_URL", &database)
        .output()
        .expect("sink runs"));
    let records = dump(&output).lines().count() as u64;
    let written: u64 = std::fs::read_to_string(&cursor).expect("the sink wrote its cursor").trim().parse().expect("a number");
    assert_eq!(written, records, "the cursor is the next record after everything the sink committed");
    assert_eq!(psql(&format!("SELECT next_seq FROM {schema}.sink_cursor")), records.to_string());

    let done = ok(sapphire()
        .args(["journal", "prune"])
        .arg(&data)
        .arg("--archive")
        .arg(&archive)
        .arg("--sink-cursor-file")
        .arg(&cursor)
        .output()
        .expect("sapphire runs"));
    assert!(done.contains("archived to"), "{done}");
    assert!(segs(&input).len() < all.len());
    psql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
    let _ = std::fs::remove_dir_all(&root);
}
