//! A multi-producer, multi-consumer broadcast ring (the LMAX disruptor pattern).
//!
//! Slots are preallocated, cache-line aligned and written in place. Producers claim a
//! sequence with a CAS on the claim cursor, write the slot, then publish it by storing the
//! sequence into the slot's marker. Every consumer reads every event, in order, by reference;
//! consumers run in parallel (the journal beside the engine) and each one gates slot reuse:
//! a producer may not claim sequence `s` until every consumer has passed `s - capacity`.
//!
//! A full ring means a consumer cannot keep up: [`Producer::try_publish_with`] returns the
//! value untouched so the caller can count it, and [`Producer::publish_with`] waits.

use crate::sync::{Arc, AtomicBool, AtomicI64, UnsafeCell};
use crate::wait::WaitStrategy;
use crossbeam_utils::CachePadded;
use std::sync::atomic::Ordering;

/// One slot: the published-sequence marker sits in the same cache line as the start of the
/// value, so a consumer that sees the marker has most of the event with it.
#[repr(C, align(64))]
struct Slot<T> {
    /// The sequence last published into this slot (-1: never). A consumer may read the value
    /// for sequence `s` once this equals `s`; a producer stores it only after writing the value.
    published: AtomicI64,
    /// The value.
    value: UnsafeCell<T>,
}

/// The shared ring. Create it with [`ring`].
struct Ring<T> {
    /// The slots; slot `s & mask` holds sequence `s` while its marker says `s`.
    slots: Box<[Slot<T>]>,
    /// `capacity - 1`; capacity is a power of two.
    mask: i64,
    /// Next sequence to claim; producers advance it by CAS.
    claim: CachePadded<AtomicI64>,
    /// For each consumer, the next sequence it will read: every slot below it is released.
    gating: Box<[CachePadded<AtomicI64>]>,
    /// Set once producers are done; consumers drain and then stop.
    closed: AtomicBool,
}

// SAFETY: slots are only written by the producer that claimed the sequence, before it is
// published, and only read by consumers after publication and before they release it.
unsafe impl<T: Send> Sync for Ring<T> {}
// SAFETY: the ring owns plain `T`s; moving it between threads is moving them.
unsafe impl<T: Send> Send for Ring<T> {}

impl<T> Ring<T> {
    #[inline]
    fn capacity(&self) -> i64 {
        self.mask + 1
    }

    fn min_gating(&self) -> i64 {
        self.gating.iter().map(|g| g.load(Ordering::Acquire)).min().unwrap_or(i64::MAX)
    }
}

/// Builds a ring of `capacity` slots (rounded up to a power of two) read by `consumers`
/// consumers; returns a producer (clone it for more producers) and the consumers.
pub fn ring<T: Copy + Default + Send>(capacity: usize, consumers: usize) -> (Producer<T>, Vec<Consumer<T>>) {
    let capacity = capacity.max(2).next_power_of_two();
    let ring = Arc::new(Ring {
        slots: (0..capacity).map(|_| Slot { published: AtomicI64::new(-1), value: UnsafeCell::new(T::default()) }).collect(),
        mask: capacity as i64 - 1,
        claim: CachePadded::new(AtomicI64::new(0)),
        gating: (0..consumers).map(|_| CachePadded::new(AtomicI64::new(0))).collect(),
        closed: AtomicBool::new(false),
    });
    let consumers = (0..consumers).map(|id| Consumer { ring: Arc::clone(&ring), id, next: 0 }).collect();
    (Producer { ring, cached_gate: 0 }, consumers)
}

/// Publishes into the ring. Clone it for each producing thread.
pub struct Producer<T> {
    ring: Arc<Ring<T>>,
    /// This producer's cached minimum of the consumers' cursors (refreshed when it looks full).
    cached_gate: i64,
}

impl<T> Clone for Producer<T> {
    fn clone(&self) -> Self {
        Self { ring: Arc::clone(&self.ring), cached_gate: self.cached_gate }
    }
}

impl<T> std::fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").field("capacity", &self.ring.capacity()).finish()
    }
}

/// The ring had no free slot: a consumer is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingFull;

/// The ring was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingClosed;

impl<T: Copy> Producer<T> {
    /// Claims a slot, lets `write` fill it in place, and publishes it. Never waits.
    #[inline]
    pub fn try_publish_with(&mut self, write: impl FnOnce(&mut T)) -> Result<i64, RingFull> {
        let ring = &*self.ring;
        let mut seq = ring.claim.load(Ordering::Relaxed);
        loop {
            if seq - ring.capacity() >= self.cached_gate {
                self.cached_gate = ring.min_gating();
                if seq - ring.capacity() >= self.cached_gate {
                    return Err(RingFull);
                }
            }
            match ring.claim.compare_exchange_weak(seq, seq + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break,
                Err(current) => seq = current,
            }
        }
        let idx = (seq & ring.mask) as usize;
        debug_assert!(idx < ring.slots.len());
        // SAFETY: idx = seq & mask < capacity == slots.len().
        let slot = unsafe { ring.slots.get_unchecked(idx) };
        // SAFETY: we own sequence `seq`: every consumer has released `seq - capacity`, and no
        // consumer reads the value until the marker says `seq`, which we store after writing.
        slot.value.with_mut(|value| write(unsafe { &mut *value }));
        slot.published.store(seq, Ordering::Release);
        Ok(seq)
    }

    /// Publishes a value, never waiting; a full ring hands the value back.
    #[inline]
    pub fn try_publish(&mut self, value: T) -> Result<i64, T> {
        self.try_publish_with(|slot| *slot = value).map_err(|RingFull| value)
    }

    /// Publishes, waiting with `wait` while the ring is full; fails only once closed.
    #[inline]
    pub fn publish_with(&mut self, wait: WaitStrategy, mut write: impl FnMut(&mut T)) -> Result<i64, RingClosed> {
        let mut idle = 0;
        loop {
            match self.try_publish_with(&mut write) {
                Ok(seq) => return Ok(seq),
                Err(RingFull) if self.ring.closed.load(Ordering::Acquire) => return Err(RingClosed),
                Err(RingFull) => wait.idle(&mut idle),
            }
        }
    }

    /// Publishes a value, waiting while the ring is full.
    #[inline]
    pub fn publish(&mut self, wait: WaitStrategy, value: T) -> Result<i64, RingClosed> {
        self.publish_with(wait, |slot| *slot = value)
    }

    /// Tells consumers no more events will come; they drain what was published and stop.
    /// Call it once every producer is done.
    pub fn close(&self) {
        self.ring.closed.store(true, Ordering::Release);
    }

    /// Sequences claimed so far (events published or being written).
    pub fn claimed(&self) -> i64 {
        self.ring.claim.load(Ordering::Acquire)
    }

    /// Events published but not yet released by the slowest consumer: ring backpressure.
    pub fn backlog(&self) -> i64 {
        self.claimed() - self.ring.min_gating()
    }

    /// Slots in the ring.
    pub fn capacity(&self) -> usize {
        self.ring.capacity() as usize
    }
}

/// What a poll found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// Handled this many events.
    Handled(usize),
    /// Nothing new yet.
    Empty,
    /// Closed and drained: stop.
    Closed,
}

/// Reads every event of the ring in order. One per consuming stage, owned by its thread.
pub struct Consumer<T> {
    ring: Arc<Ring<T>>,
    /// Index into `ring.gating`.
    id: usize,
    /// Next sequence to read.
    next: i64,
}

impl<T> std::fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").field("id", &self.id).field("next", &self.next).finish()
    }
}

impl<T: Copy> Consumer<T> {
    /// Hands up to `max_batch` published events to `handle(event, sequence, end_of_batch)`,
    /// by reference, then releases their slots.
    #[inline]
    pub fn poll(&mut self, max_batch: usize, mut handle: impl FnMut(&T, i64, bool)) -> Poll {
        let ring = &*self.ring;
        let start = self.next;
        let mut end = start;
        let limit = start.saturating_add(i64::try_from(max_batch).unwrap_or(i64::MAX));
        while end < limit {
            // SAFETY: `end & mask < capacity == slots.len()`.
            let slot = unsafe { ring.slots.get_unchecked((end & ring.mask) as usize) };
            if slot.published.load(Ordering::Acquire) != end {
                break;
            }
            end += 1;
        }
        if end == start {
            if ring.closed.load(Ordering::Acquire) && ring.claim.load(Ordering::Acquire) <= start {
                return Poll::Closed;
            }
            return Poll::Empty;
        }
        for seq in start..end {
            let idx = (seq & ring.mask) as usize;
            debug_assert!(idx < ring.slots.len());
            // SAFETY: idx < slots.len().
            let slot = unsafe { ring.slots.get_unchecked(idx) };
            // SAFETY: `seq` is published (its marker seen with Acquire) and not yet released
            // by this consumer, so no producer writes the value while we read.
            slot.value.with(|event| handle(unsafe { &*event }, seq, seq + 1 == end));
        }
        self.next = end;
        // SAFETY: `id < gating.len()` by construction.
        unsafe { ring.gating.get_unchecked(self.id) }.store(end, Ordering::Release);
        Poll::Handled((end - start) as usize)
    }

    /// Like [`poll`](Self::poll), but `handle` may refuse an event (returns `false`): that
    /// event and the rest of the batch stay in the ring for the next poll. For a reader that
    /// may only take an event once something else has caught up with it (the journal gate).
    /// `Handled(0)` means the first event was refused.
    #[inline]
    pub fn poll_while(&mut self, max_batch: usize, mut handle: impl FnMut(&T, i64) -> bool) -> Poll {
        let ring = &*self.ring;
        let start = self.next;
        let limit = start.saturating_add(i64::try_from(max_batch).unwrap_or(i64::MAX));
        let mut end = start;
        while end < limit {
            // SAFETY: `end & mask < capacity == slots.len()`.
            let slot = unsafe { ring.slots.get_unchecked((end & ring.mask) as usize) };
            if slot.published.load(Ordering::Acquire) != end {
                break;
            }
            // SAFETY: as in `poll`: `end` is published and not yet released by this consumer.
            if !slot.value.with(|event| handle(unsafe { &*event }, end)) {
                break;
            }
            end += 1;
        }
        if end == start && ring.closed.load(Ordering::Acquire) && ring.claim.load(Ordering::Acquire) <= start {
            return Poll::Closed;
        }
        if end == start && !self.has_published(start) {
            return Poll::Empty;
        }
        self.next = end;
        // SAFETY: `id < gating.len()` by construction.
        unsafe { ring.gating.get_unchecked(self.id) }.store(end, Ordering::Release);
        Poll::Handled((end - start) as usize)
    }

    fn has_published(&self, seq: i64) -> bool {
        let ring = &*self.ring;
        // SAFETY: `seq & mask < capacity == slots.len()`.
        unsafe { ring.slots.get_unchecked((seq & ring.mask) as usize) }.published.load(Ordering::Acquire) == seq
    }

    /// The next sequence this consumer will read (= events consumed).
    pub fn position(&self) -> i64 {
        self.next
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn single_thread_order_and_full() {
        let (mut p, mut cs) = ring::<u64>(4, 1);
        for v in 0..4 {
            assert_eq!(p.try_publish(v), Ok(v as i64));
        }
        assert_eq!(p.try_publish(99), Err(99));
        let mut seen = vec![];
        assert_eq!(cs[0].poll(16, |v, _, _| seen.push(*v)), Poll::Handled(4));
        assert_eq!(seen, vec![0, 1, 2, 3]);
        assert_eq!(p.try_publish(4), Ok(4));
        p.close();
        assert_eq!(cs[0].poll(16, |v, s, eob| assert!(*v == 4 && s == 4 && eob)), Poll::Handled(1));
        assert_eq!(cs[0].poll(16, |_, _, _| {}), Poll::Closed);
    }

    #[test]
    fn slowest_consumer_gates_reuse() {
        let (mut p, mut cs) = ring::<u64>(2, 2);
        p.try_publish(1).unwrap();
        p.try_publish(2).unwrap();
        cs[0].poll(8, |_, _, _| {});
        assert_eq!(p.try_publish(3), Err(3), "consumer 1 still holds both slots");
        cs[1].poll(1, |_, _, _| {});
        assert_eq!(p.try_publish(3), Ok(2));
    }

    #[test]
    fn many_producers_every_consumer_sees_every_event_in_sequence() {
        // Miri (scripts/miri.sh) interprets every access: a smaller run says as much there.
        const PER: u64 = if cfg!(miri) { 200 } else { 50_000 };
        let (p, cs) = ring::<(u64, u64)>(256, 2);
        let readers: Vec<_> = cs
            .into_iter()
            .map(|mut c| {
                thread::spawn(move || {
                    let mut last = [0u64; 3];
                    let mut count = 0u64;
                    let mut idle = 0;
                    loop {
                        match c.poll(64, |&(producer, v), _, _| {
                            // Each producer's values arrive in its own order.
                            assert_eq!(v, last[producer as usize] + 1);
                            last[producer as usize] = v;
                            count += 1;
                        }) {
                            Poll::Closed => return count,
                            Poll::Empty => WaitStrategy::Yield.idle(&mut idle),
                            Poll::Handled(_) => idle = 0,
                        }
                    }
                })
            })
            .collect();
        let writers: Vec<_> = (0..3u64)
            .map(|id| {
                let mut p = p.clone();
                thread::spawn(move || {
                    for v in 1..=PER {
                        p.publish(WaitStrategy::Yield, (id, v)).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        p.close();
        for r in readers {
            assert_eq!(r.join().unwrap(), 3 * PER);
        }
    }
}
