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

use crate::journal::{for_each, JournalError};
use sapphire_core::engine::{Engine, EngineConfig, Output, OutputSink, Stages};
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
}

fn listing(instruments: &[Instrument]) -> String {
    instruments.iter().map(|i| format!("{} {}", i.venue, i.symbol)).collect::<Vec<_>>().join("\n")
}

/// Checks (or, for a new journal, records) the instruments the journal is written for.
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
            std::fs::write(&path, now + "\n").map_err(|source| RecoveryError::Io { path: path.display().to_string(), source })
        }
        Err(source) => Err(RecoveryError::Io { path: path.display().to_string(), source }),
    }
}

/// Counts outputs of the replay, sends nothing.
struct Discard {
    orders: u64,
}

impl OutputSink for Discard {
    fn emit(&mut self, out: Output) {
        if matches!(out.output, sapphire_core::engine::EngineOutput::Order(_)) {
            self.orders += 1;
        }
    }
}

/// Replays the journal in `dir` through a fresh engine; `progress(events)` is called every
/// million events.
pub fn recover(
    dir: &Path,
    config: &EngineConfig,
    instruments: &[Instrument],
    mut progress: impl FnMut(u64),
) -> Result<Recovered, RecoveryError> {
    check_instruments(dir, instruments)?;
    let mut engine = Engine::new(config, instruments);
    let mut discard = Discard { orders: 0 };
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
    Ok(Recovered { stages: engine.stages, events, next_seq, orders_not_resent: discard.orders })
}
