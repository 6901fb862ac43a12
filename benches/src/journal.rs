//! Journal append: `JournalWriter::append_event` per call, under each durability policy,
//! into a scratch directory on the machine's disk.
//!
//! `EveryRecord` pays an `fsync` per event — a disk flush, typically tens of microseconds
//! to milliseconds depending on the device — so it runs far fewer events; `EveryMs(10)`
//! pays one every 10 ms (the sample that does shows in the tail); `Os` never does.

use crate::case::{histogram, record, Case, Group};
use crate::engine::Workload;
use crate::lab::Lab;
use sapphire_persistence::journal::{Durability, JournalConfig, JournalWriter};
use std::time::Instant;

/// Appends `events` (cycling the workload) under `durability`; the case's latency is each
/// `append_event` call, its rate events/s over the whole run (final sync included).
pub fn append(lab: &Lab, w: &Workload, durability: Durability, events: usize) -> Case {
    let label = match durability {
        Durability::EveryRecord => "every_record".to_string(),
        Durability::EveryMs(ms) => format!("every_{ms}ms"),
        Durability::Os => "os".to_string(),
    };
    let name = format!("journal_append_{label}");
    let what = format!("JournalWriter::append_event, durability {durability:?}, per call");
    let dir = lab.scratch.join(&name);
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = JournalConfig::new(&dir);
    config.durability = durability;
    let mut journal = match JournalWriter::<sapphire_core::event::Event>::open(config) {
        Ok((j, _)) => j,
        Err(e) => return Case::latency(name, Group::Journal, format!("{what} — could not open {}: {e}", dir.display()), histogram(), None),
    };
    let mut hist = histogram();
    let mut failed = None;
    let start = Instant::now();
    for e in w.events.iter().cycle().take(events) {
        let t = Instant::now();
        let r = journal.append_event(e);
        record(&mut hist, t.elapsed().as_nanos() as u64);
        if let Err(err) = r {
            failed = Some(err.to_string());
            break;
        }
    }
    let _ = journal.sync();
    let rate = events as f64 / start.elapsed().as_secs_f64();
    drop(journal);
    let _ = std::fs::remove_dir_all(&dir);
    match failed {
        Some(err) => Case::latency(name, Group::Journal, format!("{what} — failed: {err}"), hist, None),
        None => Case::latency(name, Group::Journal, what, hist, Some(rate)),
    }
}

/// Every durability policy.
pub fn suite(lab: &Lab, mut progress: impl FnMut(&str)) -> Vec<Case> {
    let w = Workload::synthetic(2_000);
    let mut cases = Vec::new();
    for (d, n) in [
        (Durability::Os, lab.scale.pick(2_000, 200_000, 2_000_000)),
        (Durability::EveryMs(10), lab.scale.pick(2_000, 200_000, 2_000_000)),
        (Durability::EveryRecord, lab.scale.pick(50, 2_000, 20_000)),
    ] {
        progress(&format!("journal {d:?}"));
        cases.push(append(lab, &w, d, n));
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::Scale;

    #[test]
    fn each_policy_appends_and_cleans_up() {
        let scratch = std::env::temp_dir().join(format!("sapphire-bench-journal-{}", std::process::id()));
        let lab = Lab::new(Scale::Smoke, scratch.clone());
        let w = Workload::synthetic(100);
        for d in [Durability::Os, Durability::EveryMs(10), Durability::EveryRecord] {
            let c = append(&lab, &w, d, 20);
            assert_eq!(c.samples(), 20, "{}", c.what);
            assert!(c.events_per_sec.is_some(), "{}", c.what);
        }
        assert!(std::fs::read_dir(&scratch).map_or(true, |mut d| d.next().is_none()), "scratch journals removed");
        let _ = std::fs::remove_dir_all(&scratch);
        // An unusable directory is a reported failure, not a panic.
        let file = std::env::temp_dir().join(format!("sapphire-bench-journal-file-{}", std::process::id()));
        std::fs::write(&file, b"x").unwrap();
        let lab = Lab::new(Scale::Smoke, file.clone());
        let c = append(&lab, &w, Durability::Os, 5);
        assert!(c.events_per_sec.is_none() && c.what.contains("could not open"), "{}", c.what);
        let _ = std::fs::remove_file(&file);
    }
}
