//! The journal stage's contract. The journal runs beside the engine stages on the inbound
//! ring and appends every event before its slot can be reused; the durable, memory-mapped
//! implementation lives in `sapphire-persistence`.

use crate::event::Event;

/// Appends inbound events in sequence order. Implementations must not lose an appended
/// event once `append` returned; they may batch and flush on `end_of_batch`.
pub trait InputJournal: Send {
    /// Appends event `seq`. Sequences arrive gap-free and increasing. After a failure the
    /// journal takes nothing more (a journal with a hole would replay a different history).
    fn append(&mut self, seq: i64, event: &Event, end_of_batch: bool);
    /// The last `seq` the journal holds for good (handed to the OS: a process crash cannot
    /// lose it); `None` before the first. The engine's outputs and orders caused by later
    /// events wait at the journal gate ([`crate::release`]).
    fn written(&self) -> Option<i64>;
    /// Flushes whatever is buffered (called on shutdown).
    fn flush(&mut self) {}
    /// Events appended so far.
    fn appended(&self) -> u64;
    /// Appends that failed. Any is fatal: the engine must not trade on without its record.
    fn errors(&self) -> u64 {
        0
    }
    /// The first failure, for the operator.
    fn first_error(&self) -> Option<String> {
        None
    }
}

/// An in-memory journal: keeps every event (tests, short runs) or only counts them.
#[derive(Debug, Default)]
pub struct MemoryJournal {
    events: Vec<Event>,
    keep: bool,
    appended: u64,
    last_seq: i64,
    gaps: u64,
}

impl MemoryJournal {
    /// A journal that keeps every event.
    pub fn keeping() -> Self {
        Self { keep: true, last_seq: -1, ..Default::default() }
    }

    /// A journal that only counts (and checks the sequence).
    pub fn counting() -> Self {
        Self { keep: false, last_seq: -1, ..Default::default() }
    }

    /// The kept events.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Sequence gaps seen (must stay 0).
    pub fn gaps(&self) -> u64 {
        self.gaps
    }
}

impl InputJournal for MemoryJournal {
    fn append(&mut self, seq: i64, event: &Event, _end_of_batch: bool) {
        if seq != self.last_seq + 1 {
            self.gaps += 1;
        }
        self.last_seq = seq;
        self.appended += 1;
        if self.keep {
            self.events.push(*event);
        }
    }

    fn written(&self) -> Option<i64> {
        (self.appended > 0).then_some(self.last_seq)
    }

    fn appended(&self) -> u64 {
        self.appended
    }
}
