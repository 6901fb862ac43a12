//! Crash recovery: the input journal replayed through the deterministic engine.
//!
//! The engine is a pure function of its inbound events, so replaying every journaled event
//! through a fresh engine rebuilds books, positions, PnL, risk state, open orders and the
//! router's place exactly as they were when the last record was written. Orders the replay
//! produces are not sent anywhere (they were decided, and sent or not, before the crash);
//! the engine then carries on numbering from the journal's next sequence, so no intent or
//! client order id is ever issued twice.
//!
//! Journal records name instruments by id, so a journal can only be recovered with the same
//! instruments in the same order: the list is kept beside the segments and checked.

use crate::journal::{for_each, for_each_backwards, segments, JournalError, JournalWriter, Record};
use sapphire_core::engine::{Engine, EngineConfig, Output, OutputSink, Stages};
use sapphire_core::event::Event;
use sapphire_core::instrument::Instrument;
use sapphire_core::order::Order;
use std::path::Path;

/// The file beside the segments that lists the journal's instruments.
const INSTRUMENTS_FILE: &str = "instruments.txt";

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
    /// Writing the instrument list failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// The engine rebuilt from the journal.
#[derive(Debug)]
pub struct Recovered {
    /// The stages as they were after the last journaled event.
    pub stages: Stages,
    /// Events replayed.
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

/// Replays the journal in `dir` through a fresh engine; `progress(events)` is called every
/// million events. With an output journal (opened, so its torn tail is already cut), the
/// outputs it lacks — those of the last events before a crash — are written to it: the engine
/// is deterministic, so they are the outputs the crashed run made.
pub fn recover(
    dir: &Path,
    config: &EngineConfig,
    instruments: &[Instrument],
    outputs: Option<(&Path, &mut JournalWriter<Output>)>,
    mut progress: impl FnMut(u64),
) -> Result<Recovered, RecoveryError> {
    check_instruments(dir, instruments)?;
    let mut engine = Engine::new(config, instruments);
    let (written_before, written_at, journal) = match outputs {
        Some((out_dir, writer)) => {
            let (seq, count) = output_journal_end(out_dir)?;
            (seq, count, Some(writer))
        }
        None => (i64::MAX, 0, None),
    };
    let mut discard = Replayed { orders: 0, journal, written_before, written_at, seen_at: 0, regenerated: 0, error: None };
    let mut outbound: Vec<Order> = Vec::new();
    let mut next_seq = 0u64;
    let events = for_each(dir, |seq, event| {
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
    Ok(Recovered { stages: engine.stages, events, next_seq, orders_not_resent: discard.orders, outputs_regenerated: discard.regenerated })
}
