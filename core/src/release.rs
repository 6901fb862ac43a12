//! The journal gate: what the engine decides leaves the core only once the input journal
//! holds the event that caused it.
//!
//! The journal stage and the engine read the inbound ring side by side, so the engine may
//! decide on an event a few microseconds before the journal has written it. Nothing escapes
//! in that window: the edge reads engine outputs and outbound orders through a [`Released`]
//! reader, which hands out an item only when the journal has handed its cause to the OS. If
//! the journal fails, what was decided on unjournaled events is withheld for good (counted):
//! after a restart, recovery replays the journal and decides again from exactly what it holds.

use crate::engine::Output;
use crate::order::Order;
use crate::ring::{Consumer, Poll};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// How far the input journal has got, written by the journal stage, read by the gates.
#[derive(Debug)]
pub struct JournalProgress {
    /// Highest inbound sequence handed to the OS (`first_seq − 1` before the first batch).
    /// Stored before `failed` (Release), so a reader that sees `failed` sees its final value.
    through: AtomicI64,
    /// Appends that failed; any is fatal and final.
    failed: AtomicU64,
}

impl JournalProgress {
    /// Progress of a journal whose next event is `first_seq`.
    pub fn new(first_seq: i64) -> Self {
        Self { through: AtomicI64::new(first_seq - 1), failed: AtomicU64::new(0) }
    }

    /// The journal stage: events through `seq` are written (handed to the OS).
    #[inline]
    pub fn written_through(&self, seq: i64) {
        self.through.store(seq, Ordering::Release);
    }

    /// The journal stage: appends that failed so far.
    #[inline]
    pub fn set_failed(&self, errors: u64) {
        self.failed.store(errors, Ordering::Release);
    }

    /// Highest inbound sequence the journal holds.
    pub fn through(&self) -> i64 {
        self.through.load(Ordering::Acquire)
    }

    /// True once an append has failed.
    #[inline]
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire) > 0
    }

    /// Whether something caused by inbound event `seq` may leave the core.
    #[inline]
    pub fn release(&self, seq: i64) -> Release {
        // `failed` first: once it is seen, `through` is final.
        let failed = self.failed();
        if seq <= self.through.load(Ordering::Acquire) {
            Release::Now
        } else if failed {
            Release::Never
        } else {
            Release::Wait
        }
    }
}

/// The gate's answer for one item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Its cause is journaled.
    Now,
    /// Not yet: the journal is behind.
    Wait,
    /// Its cause will never be journaled (the journal failed): drop it.
    Never,
}

/// An item that knows the inbound event that caused it.
pub trait Caused: Copy {
    /// The inbound sequence of that event.
    fn cause(&self) -> i64;
}

impl Caused for Output {
    #[inline]
    fn cause(&self) -> i64 {
        self.seq
    }
}

/// An order on the outbound ring, with the inbound event that caused it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OutboundOrder {
    /// Inbound sequence of the event the engine was processing when it decided.
    pub seq: i64,
    /// The order.
    pub order: Order,
}

impl Caused for OutboundOrder {
    #[inline]
    fn cause(&self) -> i64 {
        self.seq
    }
}

/// Reads a ring of engine exits through the journal gate.
#[derive(Debug)]
pub struct Released<T> {
    consumer: Consumer<T>,
    progress: Arc<JournalProgress>,
    withheld: u64,
}

impl<T: Caused> Released<T> {
    /// Gates `consumer` on `progress`.
    pub fn new(consumer: Consumer<T>, progress: Arc<JournalProgress>) -> Self {
        Self { consumer, progress, withheld: 0 }
    }

    /// Hands up to `max_batch` released items to `handle`, in order. `Empty` while the next
    /// item waits for the journal; items whose cause the journal will never hold are dropped
    /// and counted ([`withheld`](Self::withheld)).
    pub fn poll(&mut self, max_batch: usize, mut handle: impl FnMut(&T)) -> Poll {
        let (progress, withheld) = (&*self.progress, &mut self.withheld);
        match self.consumer.poll_while(max_batch, |item, _| match progress.release(item.cause()) {
            Release::Now => {
                handle(item);
                true
            }
            Release::Never => {
                *withheld += 1;
                true
            }
            Release::Wait => false,
        }) {
            Poll::Handled(0) => Poll::Empty,
            other => other,
        }
    }

    /// Items dropped because the journal failed before it held their cause.
    pub fn withheld(&self) -> u64 {
        self.withheld
    }

    /// The journal's progress this reader is gated on.
    pub fn progress(&self) -> &JournalProgress {
        &self.progress
    }
}

/// Where a venue gateway takes the engine's orders from: the gated outbound ring in a
/// running engine, a plain ring in tests and benchmarks that drive a gateway directly.
pub trait OrderSource: Send + 'static {
    /// Hands up to `max_batch` orders to `handle`, in order.
    fn poll_orders(&mut self, max_batch: usize, handle: impl FnMut(&Order)) -> Poll;
}

impl OrderSource for Released<OutboundOrder> {
    fn poll_orders(&mut self, max_batch: usize, mut handle: impl FnMut(&Order)) -> Poll {
        self.poll(max_batch, |o| handle(&o.order))
    }
}

impl OrderSource for Consumer<Order> {
    fn poll_orders(&mut self, max_batch: usize, mut handle: impl FnMut(&Order)) -> Poll {
        self.poll(max_batch, |o, _, _| handle(o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineOutput;
    use crate::ring::ring;

    fn out(seq: i64) -> Output {
        Output { seq, output: EngineOutput::Pnl { ts_event: seq as u64, total: Default::default() } }
    }

    #[test]
    fn items_wait_for_the_journal_and_are_withheld_when_it_fails() {
        let (mut p, mut c) = ring::<Output>(16, 1);
        let progress = Arc::new(JournalProgress::new(10));
        let mut r = Released::new(c.pop().unwrap(), Arc::clone(&progress));
        for seq in [10, 10, 11, 12, 13] {
            p.try_publish(out(seq)).unwrap();
        }
        let mut got = Vec::new();
        // Nothing journaled yet: nothing leaves.
        assert_eq!(r.poll(64, |o| got.push(o.seq)), Poll::Empty);
        progress.written_through(11);
        assert_eq!(r.poll(64, |o| got.push(o.seq)), Poll::Handled(3));
        assert_eq!(got, [10, 10, 11]);
        assert_eq!(r.poll(64, |o| got.push(o.seq)), Poll::Empty);
        // The journal fails after 12: 12 goes, 13 never does.
        progress.written_through(12);
        progress.set_failed(1);
        assert_eq!(r.poll(64, |o| got.push(o.seq)), Poll::Handled(2));
        assert_eq!(got, [10, 10, 11, 12]);
        assert_eq!(r.withheld(), 1);
        p.close();
        assert_eq!(r.poll(64, |o| got.push(o.seq)), Poll::Closed);
    }
}
