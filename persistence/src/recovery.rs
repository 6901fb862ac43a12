//! Crash recovery: the newest valid snapshot, and the input journal after it replayed through
//! the deterministic engine.
//!
//! The engine is a pure function of its inbound events, so replaying every journaled event
//! through a fresh engine rebuilds books, positions, PnL, risk state, open orders and the
//! router's place exactly as they were when the last record was written. A snapshot (see
//! [`crate::snapshot`]) is that state after one event: restored, it needs only the events
//! after it, so a restart costs the same however long the core has run. Orders the replay
//! produces are not sent anywhere (they were decided, and sent or not, before the crash);
//! the engine then carries on numbering from the journal's next sequence, so no intent or
//! client order id is ever issued twice.
//!
//! [`recover_from_snapshot`] tries the snapshots newest first and passes over, saying why,
//! one that is damaged or unreadable, written for other instruments, another engine
//! configuration or another build, ahead of the input journal (a power loss can cut the
//! journal's last milliseconds, a repair its damaged end: such a snapshot is moved to
//! `passed-over/`, since the journal's next events will reuse its sequences), or newer than the
//! output journal (the outputs of the events it covers could not be rewritten); with none left
//! it replays the whole journal, which must then start at event 0.
//!
//! Journal records name instruments by id, so a journal can only be recovered with the same
//! instruments in the same order: the list is kept beside the segments and checked.

use crate::journal::{first_seq, for_each_backwards, for_each_record_from, last_record, segments, JournalError, JournalWriter, Record};
use crate::snapshot::{self, Loaded};
use sapphire_core::engine::{Engine, EngineConfig, Output, OutputSink, Stages};
use sapphire_core::event::Event;
use sapphire_core::instrument::Instrument;
use sapphire_core::order::Order;
use std::path::{Path, PathBuf};

/// The file beside the segments that lists the journal's instruments.
const INSTRUMENTS_FILE: &str = "instruments.txt";
/// Where recovery moves snapshots of events the input journal no longer holds (inside the
/// snapshot directory; never read again).
pub const PASSED_OVER: &str = "passed-over";

/// Why a journal cannot be recovered.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// Reading the journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The journal was written for other instruments.
    #[error("the journal in {dir} was written for instruments [{journal}], this run has [{now}]: use the same symbols or another data directory")]
    Instruments {
        /// The journal directory.
        dir: String,
        /// The journal's instruments.
        journal: String,
        /// This run's instruments.
        now: String,
    },
    /// An input journal holds records but the list of the instruments they name is gone.
    #[error("the input journal in {dir} holds records but its instrument list {path} is missing: records name instruments by number, so they cannot be read back without it. Restore the file from a backup (one `<venue> <symbol>` line per instrument, in the order of the run that wrote the journal), or start with another data directory")]
    InstrumentsMissing {
        /// The journal directory.
        dir: String,
        /// The missing file.
        path: String,
    },
    /// The journal's oldest segments are gone and no snapshot covers the events in them.
    #[error("the input journal in {dir} starts at event {first} (its older segments were archived or deleted) and no usable snapshot covers the events before it{passed}: put the archived segments back into {dir} (or a snapshot of an event at or after {before} into the snapshot directory), then start again")]
    Pruned {
        /// The journal directory.
        dir: String,
        /// Its first sequence.
        first: u64,
        /// `first - 1`.
        before: u64,
        /// Why the snapshots there were passed over, if any.
        passed: String,
    },
    /// Listing the snapshots failed.
    #[error("listing the snapshots: {0}")]
    Snapshots(#[from] snapshot::SnapshotError),
    /// Writing the instrument list failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// The snapshot recovery started from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotUsed {
    /// The file.
    pub path: PathBuf,
    /// The event it is the state after.
    pub seq: u64,
    /// That event's time, ns.
    pub ts_event: u64,
    /// When it was written (wall clock), ns.
    pub written_ns: u64,
}

/// The engine rebuilt from the journal.
#[derive(Debug)]
pub struct Recovered {
    /// The stages as they were after the last journaled event.
    pub stages: Stages,
    /// The snapshot the replay started from (`None`: the whole journal was replayed).
    pub snapshot: Option<SnapshotUsed>,
    /// Snapshots passed over, newest first, with the reason.
    pub passed_over: Vec<(PathBuf, String)>,
    /// Events replayed (those after the snapshot).
    pub events: u64,
    /// The sequence the next inbound event gets.
    pub next_seq: u64,
    /// Orders the replay re-decided (not sent again).
    pub orders_not_resent: u64,
    /// Outputs the replay wrote to the output journal because a crash had kept them from it.
    pub outputs_regenerated: u64,
}

fn listing(instruments: &[Instrument]) -> String {
    instruments.iter().map(|i| format!("{} {}", i.venue, i.symbol)).collect::<Vec<_>>().join("\n")
}

/// True when `dir` holds an input journal with a record in it (a segment longer than its header).
fn holds_input_records(dir: &Path) -> Result<bool, RecoveryError> {
    let segs = segments(dir)?;
    let Some(first) = segs.first() else { return Ok(false) };
    let mut magic = [0u8; 8];
    let read = std::fs::File::open(first).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic));
    if read.is_err() || &magic != <Event as Record>::MAGIC {
        // Not an input journal (the list also sits beside a replay's output journal).
        return Ok(false);
    }
    for seg in &segs {
        let len = std::fs::metadata(seg).map_err(|source| RecoveryError::Io { path: seg.display().to_string(), source })?.len();
        if len > 16 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Checks (or, for a new journal, records) the instruments the journal is written for. An
/// input journal with records whose list is missing is refused: its records cannot be read.
pub fn check_instruments(dir: &Path, instruments: &[Instrument]) -> Result<(), RecoveryError> {
    let path = dir.join(INSTRUMENTS_FILE);
    let now = listing(instruments);
    match std::fs::read_to_string(&path) {
        Ok(written) if written.trim_end() == now => Ok(()),
        Ok(written) => Err(RecoveryError::Instruments {
            dir: dir.display().to_string(),
            journal: written.trim_end().replace('\n', ", "),
            now: now.replace('\n', ", "),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if holds_input_records(dir)? {
                return Err(RecoveryError::InstrumentsMissing { dir: dir.display().to_string(), path: path.display().to_string() });
            }
            std::fs::write(&path, now + "\n").map_err(|source| RecoveryError::Io { path: path.display().to_string(), source })
        }
        Err(source) => Err(RecoveryError::Io { path: path.display().to_string(), source }),
    }
}

/// Counts outputs of the replay, sends nothing to venues; writes to the output journal the
/// outputs it is missing (those a crash kept from being written).
struct Replayed<'a> {
    orders: u64,
    journal: Option<&'a mut JournalWriter<Output>>,
    /// Outputs of inbound events before this sequence are in the output journal already...
    written_before: i64,
    /// ...and this many outputs of the event at `written_before` itself.
    written_at: usize,
    seen_at: usize,
    regenerated: u64,
    error: Option<JournalError>,
}

impl OutputSink for Replayed<'_> {
    fn emit(&mut self, out: Output) {
        if matches!(out.output, sapphire_core::engine::EngineOutput::Order(_)) {
            self.orders += 1;
        }
        let Some(journal) = self.journal.as_deref_mut() else { return };
        if out.seq < self.written_before || self.error.is_some() {
            return;
        }
        if out.seq == self.written_before && self.seen_at < self.written_at {
            self.seen_at += 1;
            return;
        }
        match journal.append_record(&out) {
            Ok(_) => self.regenerated += 1,
            Err(e) => self.error = Some(e),
        }
    }
}

/// Where the output journal in `dir` ends: the inbound sequence of its last output and how
/// many outputs of that inbound event it holds (`(-1, 0)` when it is empty).
pub fn output_journal_end(dir: &Path) -> Result<(i64, usize), JournalError> {
    let mut last: Option<i64> = None;
    let mut count = 0;
    for_each_backwards::<Output>(dir, |_, o| match last {
        None => {
            last = Some(o.seq);
            count = 1;
            true
        }
        Some(seq) if seq == o.seq => {
            count += 1;
            true
        }
        Some(_) => false,
    })?;
    Ok((last.unwrap_or(-1), count))
}

/// Replays the whole journal in `dir` through a fresh engine (no snapshots): see
/// [`recover_from_snapshot`].
pub fn recover(
    dir: &Path,
    config: &EngineConfig,
    instruments: &[Instrument],
    outputs: Option<(&Path, &mut JournalWriter<Output>)>,
    progress: impl FnMut(u64),
) -> Result<Recovered, RecoveryError> {
    recover_from_snapshot(dir, None, config, instruments, outputs, progress, |_| {})
}

/// Rebuilds the engine: from the newest usable snapshot in `snapshots` and the journal in
/// `dir` after it, or (no snapshot directory, or none usable) from the whole journal;
/// `progress(events)` is called every million events, `note` with the reason each snapshot
/// is passed over. With an output journal (opened, so its torn tail is already cut), the
/// outputs it lacks — those of the last events before a crash — are written to it: the engine
/// is deterministic, so they are the outputs the crashed run made.
pub fn recover_from_snapshot(
    dir: &Path,
    snapshots: Option<&Path>,
    config: &EngineConfig,
    instruments: &[Instrument],
    outputs: Option<(&Path, &mut JournalWriter<Output>)>,
    mut progress: impl FnMut(u64),
    mut note: impl FnMut(&str),
) -> Result<Recovered, RecoveryError> {
    check_instruments(dir, instruments)?;
    let (written_before, written_at, journal) = match outputs {
        Some((out_dir, writer)) => {
            let (seq, count) = output_journal_end(out_dir)?;
            (seq, count, Some(writer))
        }
        None => (i64::MAX, 0, None),
    };
    let journal_first = first_seq(dir)?.unwrap_or(0);
    let journal_next = last_record::<Event>(dir)?.map_or(journal_first, |(seq, _)| seq + 1);
    let mut passed_over = Vec::new();
    let loaded = match snapshots {
        Some(sdir) => choose_snapshot(
            sdir,
            dir,
            config,
            instruments,
            (journal_first, journal_next),
            (written_before, written_at),
            &mut passed_over,
            &mut note,
        )?,
        None => None,
    };
    let (mut engine, from, snapshot) = match loaded {
        Some(Loaded { path, header, stages }) => (
            Engine::from_stages(stages),
            header.seq + 1,
            Some(SnapshotUsed { path, seq: header.seq, ts_event: header.ts_event, written_ns: header.written_ns }),
        ),
        None if journal_first > 0 => {
            let passed = if passed_over.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    passed_over.iter().map(|(p, why): &(PathBuf, String)| format!("{}: {why}", p.display())).collect::<Vec<_>>().join("; ")
                )
            };
            return Err(RecoveryError::Pruned { dir: dir.display().to_string(), first: journal_first, before: journal_first - 1, passed });
        }
        None => (Engine::new(config, instruments), 0, None),
    };
    let mut discard = Replayed { orders: 0, journal, written_before, written_at, seen_at: 0, regenerated: 0, error: None };
    let mut outbound: Vec<Order> = Vec::new();
    let mut next_seq = from;
    let events = for_each_record_from::<Event>(dir, from, |seq, event| {
        engine.process(seq as i64, event, &mut outbound, &mut discard);
        // Orders for external venues were sent (or not) before the crash: never again.
        outbound.clear();
        next_seq = seq + 1;
        if (seq + 1) % 1_000_000 == 0 {
            progress(seq + 1);
        }
    })?;
    if let Some(e) = discard.error {
        return Err(e.into());
    }
    if let Some(j) = discard.journal {
        j.sync()?;
    }
    Ok(Recovered {
        stages: engine.stages,
        snapshot,
        passed_over,
        events,
        next_seq,
        orders_not_resent: discard.orders,
        outputs_regenerated: discard.regenerated,
    })
}

/// The newest snapshot recovery can start from (see the module docs), loaded. `journal`: the
/// input journal's first and next sequence; `outputs`: where the output journal ends (the
/// inbound sequence of its last output and how many outputs of that event it holds; `i64::MAX`
/// when there is no output journal to complete).
#[allow(clippy::too_many_arguments)]
fn choose_snapshot(
    sdir: &Path,
    dir: &Path,
    config: &EngineConfig,
    instruments: &[Instrument],
    (journal_first, journal_next): (u64, u64),
    (outputs_end, outputs_at_end): (i64, usize),
    passed_over: &mut Vec<(PathBuf, String)>,
    note: &mut impl FnMut(&str),
) -> Result<Option<Loaded>, RecoveryError> {
    let mut pass = |path: &Path, why: String, passed_over: &mut Vec<(PathBuf, String)>| {
        note(&format!("snapshot {} passed over: {why}", path.display()));
        passed_over.push((path.to_path_buf(), why));
    };
    // The newest one whose only fault is being ahead of the output journal: used when the
    // journal before the others is gone (the outputs it covers are then missing for good).
    let mut ahead_of_outputs = None;
    for (seq, path) in snapshot::list(sdir)?.into_iter().rev() {
        if seq >= journal_next {
            // The journal lost its end (a power loss, a repair): the sequences from its end on
            // will name other events, so this snapshot must never be used again.
            let end = if journal_next == 0 { "holds no event".to_string() } else { format!("ends at event {}", journal_next - 1) };
            let aside = sdir.join(PASSED_OVER).join(path.file_name().unwrap_or_default());
            let moved = std::fs::create_dir_all(sdir.join(PASSED_OVER)).and_then(|()| std::fs::rename(&path, &aside));
            let why = format!(
                "it is of event {seq}, but the input journal in {} {end} (it lost its last events: a power loss with journal durability every-ms or os, or a repair); {}",
                dir.display(),
                match moved {
                    Ok(()) => format!("moved to {}", aside.display()),
                    Err(e) => format!("could not be moved aside ({e}): delete it before the journal reaches event {seq} again"),
                }
            );
            pass(&path, why, passed_over);
            continue;
        }
        if seq + 1 < journal_first {
            pass(&path, format!("the input journal after it was pruned (the journal starts at event {journal_first})"), passed_over);
            continue;
        }
        let loaded = match snapshot::load(&path, config, instruments) {
            Ok(l) => l,
            Err(e) => {
                pass(&path, e.to_string(), passed_over);
                continue;
            }
        };
        // The output journal must hold every output of the events up to the snapshot's: the
        // replay after it rewrites only those of later events.
        let made = loaded.stages.route.counters.last_event_outputs as usize;
        let complete = outputs_end > seq as i64 || (outputs_end == seq as i64 && outputs_at_end >= made);
        if !complete {
            let why = if outputs_end == seq as i64 {
                format!("the output journal holds {outputs_at_end} of the {made} outputs of its event: the rest could not be rewritten")
            } else {
                format!("the output journal ends at outputs of event {outputs_end}, before it: the outputs of the events up to {seq} could not be rewritten")
            };
            pass(&path, why, passed_over);
            ahead_of_outputs.get_or_insert(loaded);
            continue;
        }
        return Ok(Some(loaded));
    }
    if journal_first > 0 {
        if let Some(loaded) = ahead_of_outputs {
            note(&format!(
                "warning: starting from snapshot {} anyway (the journal before the other snapshots is gone): outputs of events after {outputs_end} up to {} are missing from the output journal",
                loaded.path.display(),
                loaded.header.seq
            ));
            return Ok(Some(loaded));
        }
    }
    Ok(None)
}
