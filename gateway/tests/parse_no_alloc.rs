//! Parsing does not allocate in steady state: a counting global allocator watches Binance and
//! Bybit frames — quotes, trades and in-sequence depth diffs — go from bytes to core events
//! after the feeds have seen their symbols and synced their books, and sees zero allocations.

use sapphire_core::event::Event;
use sapphire_core::instrument::InstrumentRegistry;
use sapphire_gateway::binance::{BinanceFeed, BinanceMarket};
use sapphire_gateway::bybit::{BybitCategory, BybitFeed};
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

/// Runs `frames` through `feed` with the allocator counting; returns (allocations, events).
fn counted(frames: &[Vec<u8>], mut on_frame: impl FnMut(u64, &[u8], &mut dyn FnMut(Event))) -> (u64, u64) {
    let mut events = 0u64;
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    for (i, f) in frames.iter().enumerate() {
        on_frame(i as u64, f, &mut |_| events += 1);
    }
    COUNTING.store(false, Ordering::SeqCst);
    (ALLOCATIONS.load(Ordering::SeqCst), events)
}

#[test]
fn binance_frames_parse_without_allocating() {
    let mut feed = BinanceFeed::new(BinanceMarket::Spot, &InstrumentRegistry::new(), "binance");
    let id = feed.ensure_symbol("BTCUSDT");
    let levels = |n: usize, base: f64, step: f64| {
        (0..n).map(|i| format!("[\"{:.2}\",\"1.000\"]", base + step * i as f64)).collect::<Vec<_>>().join(",")
    };
    let snapshot =
        format!("{{\"lastUpdateId\":1000,\"bids\":[{}],\"asks\":[{}]}}", levels(200, 59_999.0, -0.5), levels(200, 60_000.0, 0.5));
    feed.on_snapshot(Some(id), 0, snapshot.as_bytes(), &mut |_| {});
    // Frames made before counting: continuing depth diffs, quotes and trades, raw and combined.
    let mut frames = Vec::new();
    for k in 0..5_000u64 {
        let (u0, u1) = (1_001 + 2 * k, 1_002 + 2 * k);
        let px = 59_990.0 + (k % 20) as f64 * 0.5;
        frames.push(format!("{{\"stream\":\"btcusdt@depth@100ms\",\"data\":{{\"e\":\"depthUpdate\",\"E\":{k},\"s\":\"BTCUSDT\",\"U\":{u0},\"u\":{u1},\"b\":[[\"{px:.2}\",\"{}.250\"]],\"a\":[[\"{:.2}\",\"0.{}00\"]]}}}}", k % 3, px + 10.5, k % 9 + 1).into_bytes());
        frames.push(
            format!("{{\"u\":{u1},\"s\":\"BTCUSDT\",\"b\":\"{px:.2}\",\"B\":\"1.5\",\"a\":\"{:.2}\",\"A\":\"2.25\"}}", px + 10.5)
                .into_bytes(),
        );
        frames.push(
            format!(
                "{{\"e\":\"trade\",\"E\":{k},\"s\":\"BTCUSDT\",\"t\":{},\"p\":\"{px:.2}\",\"q\":\"0.010\",\"T\":{k},\"m\":{},\"M\":true}}",
                9_000 + k,
                k % 2 == 0
            )
            .into_bytes(),
        );
    }
    // Warm up on the first frames (first-use buffers), then count the rest.
    let (warm, rest) = frames.split_at(300);
    for (i, f) in warm.iter().enumerate() {
        feed.on_frame(i as u64, f, &mut |_| {});
    }
    let (allocations, events) = counted(rest, |i, f, emit| {
        feed.on_frame(i, f, &mut |e| emit(e));
    });
    assert!(events >= rest.len() as u64, "the frames became events ({events})");
    assert_eq!(feed.counters.skipped(), 0, "{:?}", feed.counters);
    assert_eq!(feed.counters.gaps, 0, "the diffs stayed in sequence");
    assert_eq!(allocations, 0, "{allocations} allocations for {} frames", rest.len());
}

#[test]
fn bybit_frames_parse_without_allocating() {
    let mut feed = BybitFeed::new(BybitCategory::Linear, &InstrumentRegistry::new(), "bybit");
    feed.ensure_symbol("BTCUSDT");
    let levels = |n: usize, base: f64, step: f64| {
        (0..n).map(|i| format!("[\"{:.1}\",\"1.000\"]", base + step * i as f64)).collect::<Vec<_>>().join(",")
    };
    let snapshot = format!(
        "{{\"topic\":\"orderbook.50.BTCUSDT\",\"type\":\"snapshot\",\"ts\":1,\"data\":{{\"s\":\"BTCUSDT\",\"b\":[{}],\"a\":[{}],\"u\":1,\"seq\":1}},\"cts\":1}}",
        levels(50, 59_999.0, -0.5),
        levels(50, 60_000.0, 0.5)
    );
    let mut frames = vec![snapshot.into_bytes()];
    for k in 0..5_000u64 {
        let px = 59_990.0 + (k % 20) as f64 * 0.5;
        frames.push(format!("{{\"topic\":\"orderbook.50.BTCUSDT\",\"type\":\"delta\",\"ts\":{k},\"data\":{{\"s\":\"BTCUSDT\",\"b\":[[\"{px:.1}\",\"{}.5\"]],\"a\":[[\"{:.1}\",\"0.{}\"]],\"u\":{},\"seq\":{}}},\"cts\":{k}}}", k % 3, px + 10.5, k % 9 + 1, k + 2, k + 2).into_bytes());
        frames.push(format!("{{\"topic\":\"publicTrade.BTCUSDT\",\"type\":\"snapshot\",\"ts\":{k},\"data\":[{{\"T\":{k},\"s\":\"BTCUSDT\",\"S\":\"Buy\",\"v\":\"0.010\",\"p\":\"{px:.1}\",\"L\":\"PlusTick\",\"i\":\"6e1f3b2a-{k:04x}-4c3d-9e8f-0123456789ab\",\"BT\":false}}]}}").into_bytes());
        frames.push(format!("{{\"topic\":\"tickers.BTCUSDT\",\"type\":\"delta\",\"ts\":{k},\"cs\":{k},\"data\":{{\"symbol\":\"BTCUSDT\",\"bid1Price\":\"{px:.1}\",\"bid1Size\":\"1.5\",\"ask1Price\":\"{:.1}\",\"ask1Size\":\"2.25\"}}}}", px + 10.5).into_bytes());
    }
    let (warm, rest) = frames.split_at(300);
    for (i, f) in warm.iter().enumerate() {
        feed.on_frame(i as u64, f, &mut |_| {});
    }
    let (allocations, events) = counted(rest, |i, f, emit| {
        feed.on_frame(i, f, &mut |e| emit(e));
    });
    assert!(events >= rest.len() as u64, "the frames became events ({events}): {:?}", feed.counters);
    assert_eq!(feed.counters.skipped(), 0, "{:?}", feed.counters);
    assert_eq!(feed.counters.gaps, 0, "the deltas stayed in sequence");
    assert_eq!(allocations, 0, "{allocations} allocations for {} frames", rest.len());
}
