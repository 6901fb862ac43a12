//! `sapphire journal snapshots DATA_DIR [--verify]`: the engine snapshots of a data directory,
//! each checked (header, checksums, what it was written for); with `--verify`, the input
//! journal is replayed from its start and each snapshot is compared, byte for byte, with the
//! engine's state after its event. Exit 1 when one is unreadable or differs.

use anyhow::{bail, Context};
use sapphire_core::engine::{Engine, EngineConfig};
use sapphire_core::event::Event;
use sapphire_core::order::Order;
use sapphire_persistence::snapshot::{self, Fingerprints, Header, HEADER};
use std::path::{Path, PathBuf};

/// The data directory's (or a snapshot directory's) snapshot and input journal directories.
fn dirs(dir: &Path) -> (PathBuf, PathBuf) {
    if dir.join("snapshots").is_dir() || dir.join("journal").is_dir() {
        (dir.join("snapshots"), dir.join("journal").join("input"))
    } else {
        // A snapshot directory inside a data directory.
        (dir.to_path_buf(), dir.parent().unwrap_or(Path::new(".")).join("journal").join("input"))
    }
}

/// Runs the command; `config` as `sapphire replay --config` (the engine the run used).
pub fn run(dir: &Path, verify: bool, config: Option<&Path>, mut out: impl std::io::Write) -> anyhow::Result<()> {
    let (sdir, input) = dirs(dir);
    let files = snapshot::list(&sdir).with_context(|| format!("listing {}", sdir.display()))?;
    if files.is_empty() {
        bail!("{} holds no snapshots (snapshot-<seq>.snap)", sdir.display());
    }
    let engine_config = engine_config(config)?;
    let instruments = crate::replay::journal_instruments(&input)?;
    let fingerprints = Fingerprints::new(&engine_config, &instruments);
    let mut bad = 0;
    // Each readable snapshot's event and body, for --verify.
    let mut checked: Vec<(u64, PathBuf, Vec<u8>)> = Vec::new();
    for (seq, path) in &files {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let bytes = match snapshot::read(path) {
            Ok(b) => b,
            Err(e) => {
                bad += 1;
                writeln!(out, "{name}: unreadable: {e}")?;
                continue;
            }
        };
        match snapshot::decode(&bytes, &fingerprints) {
            Ok((h, _)) => {
                writeln!(out, "{name}: state after event {seq}, {} bytes, {}", bytes.len(), describe(&h))?;
                checked.push((*seq, path.clone(), bytes[HEADER..].to_vec()));
            }
            Err(e) => {
                bad += 1;
                writeln!(out, "{name}: not usable: {e}")?;
            }
        }
    }
    if verify && !checked.is_empty() {
        // A journal pruned by retention starts past event 0: a replay from its start would not
        // reach the snapshots' states, and every one would look wrong.
        if let Some(first) = sapphire_persistence::journal::first_seq(&input)?.filter(|&f| f > 0) {
            anyhow::bail!(
                "--verify replays the input journal from event 0, but {} starts at event {first} (retention archived the segments before it): bring them back with `sapphire journal restore {} --archive <the [retention] archive>` (core stopped), then verify",
                input.display(),
                input.parent().and_then(Path::parent).unwrap_or(dir).display()
            );
        }
        let mut engine = Engine::new(&engine_config, &instruments);
        let mut pending = checked.iter().peekable();
        let mut matched = 0;
        let mut outputs = Vec::new();
        sapphire_persistence::journal::for_each_record(&input, |seq, e: &Event| {
            engine.process(seq as i64, e, &mut Vec::<Order>::new(), &mut outputs);
            outputs.clear();
            while let Some((at, path, body)) = pending.peek() {
                if *at != seq {
                    break;
                }
                let mut state = engine.stages.clone();
                state.canonical_snapshot();
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                match snapshot::encode(seq, e.ts_event(), fingerprints, &state) {
                    Ok(want) if want[HEADER..] == body[..] => {
                        matched += 1;
                        let _ = writeln!(out, "{name}: equals the state a replay of the journal reaches at event {seq}");
                    }
                    _ => {
                        bad += 1;
                        let _ = writeln!(out, "{name}: DIFFERS from the state a replay of the journal reaches at event {seq}");
                    }
                }
                pending.next();
            }
        })
        .with_context(|| format!("replaying {}", input.display()))?;
        for (at, path, _) in pending {
            bad += 1;
            writeln!(out, "{}: its event {at} is not in the journal {}", path.display(), input.display())?;
        }
        writeln!(out, "verify: {matched} of {} snapshots equal a replay of the journal", files.len())?;
    }
    if bad > 0 {
        bail!("{bad} of {} snapshots are unusable or differ", files.len());
    }
    Ok(())
}

fn describe(h: &Header) -> String {
    let age = sapphire_core::latency::unix_nanos().saturating_sub(h.written_ns) / 1_000_000_000;
    format!("written {age} s ago, event time {}", h.ts_event)
}

/// The engine configuration as `sapphire run` resolves it (file, then environment).
fn engine_config(config: Option<&Path>) -> anyhow::Result<EngineConfig> {
    let doc = crate::sweep::document(config, &[])?;
    let mut file = crate::sweep::file_config(&doc)?;
    crate::config::apply_env(&mut file, &|k| std::env::var(k).ok())?;
    Ok(file.resolve()?.engine)
}
