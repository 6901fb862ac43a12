//! Bounded, preallocated histories of what the engine emitted (orders, fills, signals, risk
//! events, equity points), for the paged API and the dashboard stream.
//!
//! Each history is a ring of `Copy` records behind its own mutex. The edge thread pushes one
//! record at a time (a copy into a preallocated slot: no allocation, a lock held for a few
//! nanoseconds); readers copy out at most a page and format outside the lock. Readers all run
//! on the API's single thread, so the edge contends with at most one reader at a time, for as
//! long as copying a page of small records takes.
//!
//! Records get ids `1, 2, 3, …` per history, in the order they were pushed: a stable cursor
//! for paging (`before`) and for the stream (`after`). The oldest records fall off the ring;
//! their ids are never reused.

use std::sync::{Mutex, MutexGuard};

/// A ring of the last `capacity` records of one kind.
#[derive(Debug)]
pub(crate) struct History<T> {
    inner: Mutex<Ring<T>>,
    /// `inner.slots.len()`, readable without the lock (readers size their buffers first).
    capacity: usize,
}

#[derive(Debug)]
struct Ring<T> {
    /// `slots[(id - 1) % capacity]` holds record `id` while `id > next - capacity`.
    slots: Box<[T]>,
    /// Id the next record gets; every id below it and above `next - capacity - 1` is held.
    next: u64,
}

impl<T> Ring<T> {
    fn capacity(&self) -> u64 {
        self.slots.len() as u64
    }

    /// Smallest id still held (equal to `next` when empty).
    fn oldest(&self) -> u64 {
        self.next.saturating_sub(self.capacity()).max(1)
    }

    fn slot(&self, id: u64) -> usize {
        debug_assert!(id >= self.oldest() && id < self.next);
        ((id - 1) % self.capacity()) as usize
    }
}

impl<T: Copy + Default> History<T> {
    /// An empty history holding the last `capacity` records (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self { inner: Mutex::new(Ring { slots: vec![T::default(); capacity].into_boxed_slice(), next: 1 }), capacity }
    }

    fn lock(&self) -> MutexGuard<'_, Ring<T>> {
        // Records are plain values: a panic elsewhere cannot leave one half-written.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a record; its id.
    pub(crate) fn push(&self, record: T) -> u64 {
        let mut ring = self.lock();
        let id = ring.next;
        ring.next += 1;
        let slot = ring.slot(id);
        ring.slots[slot] = record;
        id
    }

    /// Changes the newest record (among the last `scan`) for which `f` returns true; whether
    /// one did.
    pub(crate) fn update_recent(&self, scan: usize, mut f: impl FnMut(&mut T) -> bool) -> bool {
        let mut ring = self.lock();
        let oldest = ring.oldest().max(ring.next.saturating_sub(scan as u64));
        let mut id = ring.next;
        while id > oldest {
            id -= 1;
            let slot = ring.slot(id);
            if f(&mut ring.slots[slot]) {
                return true;
            }
        }
        false
    }

    /// The id of the newest record (0: none yet).
    pub(crate) fn latest_id(&self) -> u64 {
        self.lock().next - 1
    }

    /// Up to `limit` records with ids below `before` (`None`: from the newest), newest first;
    /// whether older records are still held.
    pub(crate) fn page(&self, before: Option<u64>, limit: usize, out: &mut Vec<(u64, T)>) -> bool {
        out.clear();
        out.reserve(limit.min(self.capacity));
        let ring = self.lock();
        let oldest = ring.oldest();
        let mut id = before.unwrap_or(u64::MAX).min(ring.next);
        while id > oldest && out.len() < limit {
            id -= 1;
            out.push((id, ring.slots[ring.slot(id)]));
        }
        id > oldest
    }

    /// Records with ids above `after`, oldest first, at most `max` of them: when more are
    /// waiting, the newest `max`. Returns how many were passed over (fallen off the ring or
    /// left out to keep within `max`).
    pub(crate) fn since(&self, after: u64, max: usize, out: &mut Vec<(u64, T)>) -> u64 {
        out.clear();
        out.reserve(max.min(self.capacity));
        let ring = self.lock();
        let first = (after + 1).max(ring.oldest()).max(ring.next.saturating_sub(max as u64));
        for id in first..ring.next {
            out.push((id, ring.slots[ring.slot(id)]));
        }
        first.saturating_sub(after + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[(u64, u32)]) -> Vec<u64> {
        v.iter().map(|(id, _)| *id).collect()
    }

    #[test]
    fn pages_walk_back_from_the_newest_and_stop_at_the_oldest_held() {
        let h = History::<u32>::new(5);
        let mut out = Vec::new();
        h.page(None, 10, &mut out);
        assert!(out.is_empty());
        assert_eq!(h.latest_id(), 0);
        for n in 1..=8 {
            assert_eq!(h.push(n * 10), u64::from(n));
        }
        assert!(h.page(None, 2, &mut out), "more below");
        assert_eq!(out, [(8, 80), (7, 70)]);
        assert!(h.page(Some(7), 2, &mut out));
        assert_eq!(ids(&out), [6, 5]);
        assert!(!h.page(Some(5), 10, &mut out), "nothing below id 4");
        assert_eq!(ids(&out), [4], "ids 1..=3 fell off the ring");
        h.page(Some(4), 10, &mut out);
        assert!(out.is_empty());
        h.page(Some(1_000), 1, &mut out);
        assert_eq!(ids(&out), [8], "a cursor past the newest starts at the newest");
    }

    #[test]
    fn since_is_bounded_and_counts_what_it_passed_over() {
        let h = History::<u32>::new(100);
        let mut out = Vec::new();
        assert_eq!(h.since(0, 10, &mut out), 0);
        for n in 1..=30 {
            h.push(n);
        }
        assert_eq!(h.since(25, 10, &mut out), 0);
        assert_eq!(ids(&out), [26, 27, 28, 29, 30]);
        assert_eq!(h.since(0, 10, &mut out), 20, "only the newest 10");
        assert_eq!(ids(&out), (21..=30).collect::<Vec<_>>());
        assert_eq!(h.since(30, 10, &mut out), 0);
        assert!(out.is_empty());

        let small = History::<u32>::new(4);
        for n in 1..=10 {
            small.push(n);
        }
        assert_eq!(small.since(2, 100, &mut out), 4, "ids 3..=6 fell off; 7..=10 remain");
        assert_eq!(ids(&out), [7, 8, 9, 10]);
    }

    #[test]
    fn update_recent_changes_the_newest_match_within_the_scan() {
        let h = History::<u32>::new(8);
        for n in [1, 2, 1, 3] {
            h.push(n);
        }
        assert!(h.update_recent(8, |r| {
            let hit = *r == 1;
            if hit {
                *r = 100;
            }
            hit
        }));
        let mut out = Vec::new();
        h.page(None, 8, &mut out);
        assert_eq!(out, [(4, 3), (3, 100), (2, 2), (1, 1)]);
        assert!(!h.update_recent(1, |r| *r == 2), "id 2 is outside a scan of one");
    }
}
