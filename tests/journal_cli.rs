//! A damaged journal as an operator meets it: `run` refuses it naming the damage, `journal
//! dump` says what it could read and fails, `journal repair` moves the damaged part aside,
//! and the engine starts again.

use sapphire_core::event::{Event, Timer};
use sapphire_persistence::journal::{segments, JournalConfig, JournalWriter};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sapphire() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sapphire"));
    for var in ["TRADING_SYMBOLS", "SAPPHIRE_CONFIG", "SAPPHIRE_DATA_DIR", "SAPPHIRE_API_TOKEN", "DATABASE_URL", "REDIS_URL"] {
        c.env_remove(var);
    }
    c.env("SAPPHIRE_HTTP_BIND", "127.0.0.1:0");
    c
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sapphire-journal-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// An input journal of `n` timer events in segments of at most `segment_bytes`.
fn journal(dir: &Path, n: u64, segment_bytes: u64) -> Vec<PathBuf> {
    let config = JournalConfig { segment_bytes, ..JournalConfig::new(dir) };
    let (mut w, _) = JournalWriter::<Event>::open(config).unwrap();
    for i in 0..n {
        w.append_event(&Event::Timer(Timer { ts_event: i, ..Timer::default() })).unwrap();
    }
    w.sync().unwrap();
    segments(dir).unwrap()
}

#[test]
fn run_refuses_a_damaged_journal_and_repair_moves_the_damage_aside() {
    let data = temp_dir("run");
    let run = |quiet: bool| {
        let mut c = sapphire();
        c.args(["run", "--duration", "1s", "--events-per-sec", "20000", "--wait", "yield", "--data-dir"]).arg(&data);
        if quiet {
            c.arg("--quiet");
        }
        c.output().unwrap()
    };
    let first = run(true);
    assert!(first.status.success(), "{:?}", text(&first));
    let input = data.join("journal/input");
    let seg = segments(&input).unwrap().pop().unwrap();
    // One flipped byte in the middle of the active segment.
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();

    let refused = run(true);
    let (_, err) = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    let name = seg.file_name().unwrap().to_string_lossy().into_owned();
    assert!(err.contains(&name) && err.contains("at byte ") && err.contains("last good record: "), "{err}");
    assert!(err.contains(&format!("sapphire journal repair {}", input.display())), "{err}");
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "nothing was cut");

    // Dump prints the records before the damage, then fails naming it.
    let dump = sapphire().args(["journal", "dump"]).arg(&input).output().unwrap();
    let (out, err) = text(&dump);
    assert_eq!(dump.status.code(), Some(1), "{err}");
    let dumped = out.lines().count();
    assert!(dumped > 0 && err.contains(&format!("stopped after {dumped} records")) && err.contains(&name), "{dumped}: {err}");

    // A replay of the journal refuses it too, rather than replaying part of it as if whole.
    let replay = sapphire().arg("replay").arg(&input).output().unwrap();
    let (_, err) = text(&replay);
    assert_eq!(replay.status.code(), Some(1), "{err}");
    assert!(err.contains("journal damaged") && err.contains(&name), "{err}");

    // A dry run changes nothing; the repair moves the rest of the segment aside.
    let dry = sapphire().args(["journal", "repair", "--dry-run"]).arg(&input).output().unwrap();
    let (out, err) = text(&dry);
    assert!(dry.status.success(), "{err}");
    assert!(out.contains("would move") && out.contains("nothing was changed"), "{out}");
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
    let repair = sapphire().args(["journal", "repair"]).arg(&input).output().unwrap();
    let (out, err) = text(&repair);
    assert!(repair.status.success(), "{err}");
    assert!(out.contains(&format!("kept: {dumped} records, the last good one sequence {}", dumped - 1)), "{out}");
    assert!(out.contains("moved to") && out.contains("output journal"), "{out}");
    let kept = std::fs::metadata(&seg).unwrap().len() as usize;
    assert!(kept < at, "cut at the last good record");
    let quarantined: Vec<PathBuf> = walk(&input.join("quarantine"));
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert_eq!(std::fs::read(&quarantined[0]).unwrap(), &bytes[kept..], "the damaged part is kept, byte for byte");
    let again = sapphire().args(["journal", "repair"]).arg(&input).output().unwrap();
    assert!(again.status.success() && text(&again).0.contains("is clean"), "{:?}", text(&again));

    // The engine starts again from the records kept.
    let restarted = run(false);
    let (out, err) = text(&restarted);
    assert!(restarted.status.success(), "{out}\n{err}");
    assert!(out.contains(&format!("({dumped} records from earlier runs")), "{out}");
    let _ = std::fs::remove_dir_all(&data);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files.extend(walk(&p));
        } else {
            files.push(p);
        }
    }
    files
}

#[test]
fn dump_says_when_a_journal_ends_in_a_torn_tail() {
    let dir = temp_dir("torn");
    let seg = journal(&dir, 100, 64 << 20).pop().unwrap();
    let clean = sapphire().args(["journal", "dump"]).arg(&dir).output().unwrap();
    assert!(clean.status.success() && !text(&clean).1.contains("torn"), "{:?}", text(&clean));
    // A crash mid-write: the first bytes of a record header.
    std::fs::OpenOptions::new().append(true).open(&seg).unwrap().write_all(&[0x50, 0, 0]).unwrap();
    let dump = sapphire().args(["journal", "dump"]).arg(&dir).output().unwrap();
    let (out, err) = text(&dump);
    assert!(dump.status.success(), "{err}");
    assert_eq!(out.lines().count(), 100);
    assert!(err.contains("100 records") && err.contains("torn tail") && err.contains("3 bytes"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dump_and_repair_name_a_missing_segment_and_a_repeated_record() {
    let dir = temp_dir("missing");
    let segs = journal(&dir, 2_000, 16 * 1024);
    assert!(segs.len() > 4);
    std::fs::remove_file(&segs[2]).unwrap();
    let dump = sapphire().args(["journal", "dump"]).arg(&dir).output().unwrap();
    let (out, err) = text(&dump);
    assert_eq!(dump.status.code(), Some(1), "{err}");
    let expected: u64 = segs[2].file_stem().unwrap().to_string_lossy().parse().unwrap();
    assert_eq!(out.lines().count() as u64, expected, "what comes before the hole is printed");
    assert!(err.contains("a segment is missing") && err.contains(&format!("expected {expected}")), "{err}");
    let repair = sapphire().args(["journal", "repair"]).arg(&dir).output().unwrap();
    let (out, err) = text(&repair);
    assert!(repair.status.success(), "{err}");
    assert_eq!(out.matches("(the whole segment,").count(), segs.len() - 3, "{out}");
    let dump = sapphire().args(["journal", "dump"]).arg(&dir).output().unwrap();
    assert!(dump.status.success(), "{:?}", text(&dump));
    let _ = std::fs::remove_dir_all(&dir);

    // A record written twice (both copies pass their CRC).
    let dir = temp_dir("repeat");
    let seg = journal(&dir, 50, 64 << 20).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let size = (bytes.len() - 16) / 50;
    let copy = bytes[16 + 10 * size..16 + 11 * size].to_vec();
    bytes.splice(16 + 11 * size..16 + 11 * size, copy);
    std::fs::write(&seg, &bytes).unwrap();
    let dump = sapphire().args(["journal", "dump"]).arg(&dir).output().unwrap();
    let (out, err) = text(&dump);
    assert_eq!((dump.status.code(), out.lines().count()), (Some(1), 11), "{err}");
    assert!(err.contains("expected 11, found 10"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);

    // Not a journal: an error, exit 1.
    let empty = temp_dir("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let repair = sapphire().args(["journal", "repair"]).arg(&empty).output().unwrap();
    assert_eq!(repair.status.code(), Some(1), "{:?}", text(&repair));
    let _ = std::fs::remove_dir_all(&empty);
}
