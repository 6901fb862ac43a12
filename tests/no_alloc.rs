//! The hot path does not allocate: a counting global allocator watches 100,000+ events go
//! through the warmed-up engine, fused, with paper trading, and sees zero allocations.

mod common;

use sapphire_core::engine::{Engine, EngineConfig, EngineOutput, Output, OutputSink};
use sapphire_core::order::Order;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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

/// Counts outputs without keeping them (a real edge copies them into its own ring).
#[derive(Default)]
struct Tally {
    orders: u64,
    fills: u64,
}

impl OutputSink for Tally {
    fn emit(&mut self, out: Output) {
        match out.output {
            EngineOutput::Order(_) => self.orders += 1,
            EngineOutput::Exec(r) if r.last_qty.raw > 0 => self.fills += 1,
            _ => {}
        }
    }
}

struct Nowhere;

impl sapphire_core::engine::OrderSink for Nowhere {
    fn send(&mut self, order: Order) -> Result<(), Order> {
        Err(order)
    }
}

#[test]
fn warmed_up_engine_makes_no_allocation() {
    let (instruments, events) = common::scripted_events(3, 60_000);
    let (warm, measured) = events.split_at(events.len() / 4);
    assert!(measured.len() >= 100_000, "{} events measured", measured.len());
    let mut engine = Engine::new(&EngineConfig::default(), &instruments);
    let mut tally = Tally::default();
    for (seq, e) in warm.iter().enumerate() {
        engine.process(seq as i64, e, &mut Nowhere, &mut tally);
    }
    let warm_orders = tally.orders;
    COUNTING.store(true, Ordering::SeqCst);
    for (seq, e) in measured.iter().enumerate() {
        engine.process((warm.len() + seq) as i64, e, &mut Nowhere, &mut tally);
    }
    COUNTING.store(false, Ordering::SeqCst);
    assert!(
        tally.orders > warm_orders && tally.fills > 0,
        "the measured part trades: {} orders, {} fills",
        tally.orders - warm_orders,
        tally.fills
    );
    assert_eq!(ALLOCATIONS.load(Ordering::SeqCst), 0, "allocations on the hot path");
}
