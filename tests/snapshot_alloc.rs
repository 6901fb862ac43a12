//! A snapshot costs the engine thread a copy of its state into a spare it owns, and nothing
//! else: the spares are sized like the engine's own (preallocated) tables when the tap is
//! primed, so taking snapshots allocates nothing on the engine thread. A counting global
//! allocator watches the copies.

mod common;

use sapphire_core::engine::{Engine, EngineConfig, Output, OutputSink};
use sapphire_core::order::Order;
use sapphire_core::snapshot::{snapshot_channel, SnapshotPolicy};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Nowhere;

impl OutputSink for Nowhere {
    fn emit(&mut self, _out: Output) {}
}

#[test]
fn taking_snapshots_allocates_nothing_on_the_engine_thread() {
    let (instruments, events) = common::scripted_events(3, 60_000);
    let mut engine = Engine::new(&EngineConfig::default(), &instruments);
    let (mut taps, mut feed) = snapshot_channel(SnapshotPolicy { every_events: 2_000, every_ns: 0 }, 0, 1);
    let mut tap = taps.pop().expect("one tap");
    tap.prime(&engine.stages.book);
    tap.prime(&engine.stages.aggregate);
    tap.prime(&engine.stages.risk);
    tap.prime(&engine.stages.route);
    let (mut taken, mut measured, mut times) = (0, 0, Vec::new());
    for (seq, e) in events.iter().enumerate() {
        engine.process(seq as i64, e, &mut Vec::<Order>::new(), &mut Nowhere);
        if tap.due(seq as i64, e) {
            // The spares were sized when primed: every copy is counted.
            let counted = true;
            let t = Instant::now();
            COUNTING.store(counted, Ordering::SeqCst);
            tap.capture_all(seq as i64, e.ts_event(), &engine.stages);
            COUNTING.store(false, Ordering::SeqCst);
            times.push(t.elapsed());
            taken += 1;
            measured += usize::from(counted);
            // The writer's side (another thread in the pipeline): take it, give the copies back.
            let snapshot = feed.next(Duration::ZERO).expect("the tap is alive").expect("a complete snapshot");
            assert_eq!(snapshot.seq, seq as i64);
            feed.recycle(snapshot);
        }
    }
    assert!(measured >= 50, "{measured} snapshots measured");
    assert_eq!(ALLOCATIONS.load(Ordering::SeqCst), 0, "allocations while copying the state for {measured} snapshots");
    let stats = feed.tap_stats();
    assert_eq!(stats.skipped.load(Ordering::Relaxed), 0);
    times.sort();
    eprintln!(
        "{taken} snapshots; copying the whole engine state took {:?} (median), {:?} (longest) in this build",
        times[times.len() / 2],
        times[times.len() - 1]
    );
}
