//! Per-stage latency histograms: recorded by the stage's own thread, read from anywhere.
//!
//! The stage records into an [`hdrhistogram::Histogram`] it owns. At most every
//! `PUBLISH_INTERVAL` (checked every `publish_every` values, and when the stage is idle) it
//! copies that histogram into a shared mailbox with `try_lock`: if a reader holds the
//! mailbox at that instant the stage skips this copy and tries again next time — it never
//! waits. A copy costs a few microseconds (two significant digits keep the histogram at
//! ~40 KB), so it is rare by design. Readers take a [`LatencySnapshot`] from the mailbox.

use hdrhistogram::Histogram;
use std::sync::{Arc, Mutex};

/// Nanoseconds since the Unix epoch on the process's one cheap clock, for `ts_recv` stamps and
/// latency only — engine decisions never read it (they run on event time).
///
/// It is the monotonic clock (`Instant`), anchored once, at the first call, to the wall
/// clock: every thread's stamps are differences of one clock that never goes backwards (a
/// wall-clock step from NTP cannot make a latency negative or huge), and a read costs less
/// than a wall-clock read (28 ns against 35 ns on-CPU on the 2-vCPU Xeon VM of
/// `benches/README.md`, both through the vDSO; the hot path reads it once or twice per event).
/// It drifts from the wall clock as NTP slews the latter (a few ppm: milliseconds a day); where
/// another machine checks the time (a venue's signed request timestamp), use [`wall_nanos`].
#[inline]
pub fn unix_nanos() -> u64 {
    let (origin, wall) = clock_anchor();
    wall.saturating_add(origin.elapsed().as_nanos() as u64)
}

/// The wall clock itself (`SystemTime`), ns since the Unix epoch: for timestamps another
/// machine compares with its own clock. Not for latency (see [`unix_nanos`]).
#[inline]
pub fn wall_nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The monotonic origin of [`unix_nanos`] and the wall time it stands for. Call
/// [`unix_nanos`] once at start-up so that the first hot-path read does not pay for this.
#[inline]
fn clock_anchor() -> (std::time::Instant, u64) {
    static ANCHOR: std::sync::OnceLock<(std::time::Instant, u64)> = std::sync::OnceLock::new();
    *ANCHOR.get_or_init(|| (std::time::Instant::now(), wall_nanos()))
}

/// Highest recordable latency, ns (values above are clamped): 10 s.
const MAX_NS: u64 = 10_000_000_000;

/// Shortest time between two copies to the mailbox.
const PUBLISH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 2).expect("static histogram bounds are valid")
}

/// A stage's latency recorder. Owned by the stage's thread.
pub struct StageLatency {
    name: &'static str,
    local: Histogram<u64>,
    shared: Arc<Mutex<Histogram<u64>>>,
    since_publish: u32,
    publish_every: u32,
    last_publish: std::time::Instant,
}

impl std::fmt::Debug for StageLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageLatency").field("name", &self.name).field("count", &self.local.len()).finish()
    }
}

/// Reads a stage's latest published histogram. Cheap to clone.
#[derive(Clone)]
pub struct LatencyReader {
    name: &'static str,
    shared: Arc<Mutex<Histogram<u64>>>,
}

impl std::fmt::Debug for LatencyReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyReader").field("name", &self.name).finish()
    }
}

/// Percentiles of one stage, ns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// Stage name.
    pub name: &'static str,
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Maximum.
    pub max: u64,
}

impl LatencySnapshot {
    /// Percentiles of a histogram.
    pub fn of(name: &'static str, h: &Histogram<u64>) -> Self {
        Self {
            name,
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

impl StageLatency {
    /// A recorder for stage `name` that publishes every `publish_every` values.
    pub fn new(name: &'static str, publish_every: u32) -> (Self, LatencyReader) {
        let shared = Arc::new(Mutex::new(new_histogram()));
        let reader = LatencyReader { name, shared: Arc::clone(&shared) };
        (
            Self {
                name,
                local: new_histogram(),
                shared,
                since_publish: 0,
                publish_every: publish_every.max(1),
                last_publish: std::time::Instant::now(),
            },
            reader,
        )
    }

    /// Records one latency, ns. Never allocates or waits.
    #[inline]
    pub fn record(&mut self, ns: u64) {
        let _ = self.local.record(ns.clamp(1, MAX_NS));
        self.since_publish += 1;
        if self.since_publish >= self.publish_every {
            self.since_publish = 0;
            self.maybe_publish();
        }
    }

    /// Publishes if the interval has passed (call it when the stage is idle, too).
    #[inline]
    pub fn maybe_publish(&mut self) {
        if self.last_publish.elapsed() >= PUBLISH_INTERVAL {
            self.publish();
        }
    }

    /// Copies the local histogram to readers now, unless one is reading right now.
    pub fn publish(&mut self) {
        if let Ok(mut shared) = self.shared.try_lock() {
            shared.reset();
            // Same bounds on both sides: `add` does not allocate.
            let _ = shared.add(&self.local);
            self.last_publish = std::time::Instant::now();
        }
    }

    /// The stage name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Percentiles of everything recorded so far (the owner's view).
    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot::of(self.name, &self.local)
    }
}

impl LatencyReader {
    /// Percentiles as last published by the stage.
    pub fn snapshot(&self) -> LatencySnapshot {
        let h = self.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        LatencySnapshot::of(self.name, &h)
    }

    /// A copy of the last published histogram (reports, benchmarks).
    pub fn histogram(&self) -> Histogram<u64> {
        self.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Every recorded value (the highest of its bucket, ns) with its count, lowest first: the
    /// whole distribution, for tools that pool runs (`last-run.json`).
    pub fn recorded(&self) -> Vec<(u64, u64)> {
        self.histogram().iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
    }

    /// The stage name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cheap_clock_never_goes_back_and_stands_for_the_wall_clock() {
        let mut last = unix_nanos();
        for _ in 0..10_000 {
            let now = unix_nanos();
            assert!(now >= last, "{now} < {last}");
            last = now;
        }
        // Anchored to the wall clock: the two read the same time, give or take the few
        // microseconds between the reads and any slew since the anchor (a minute is generous).
        assert!(unix_nanos().abs_diff(wall_nanos()) < 60_000_000_000);
    }

    #[test]
    fn reader_sees_published_values_without_stopping_the_stage() {
        let (mut stage, reader) = StageLatency::new("book", 4);
        for v in [100, 200, 300, 400] {
            stage.record(v);
        }
        assert_eq!(reader.snapshot().count, 0, "not yet published: the interval has not passed");
        stage.last_publish -= PUBLISH_INTERVAL;
        stage.maybe_publish();
        let snap = reader.snapshot();
        assert_eq!(snap.count, 4);
        assert!(snap.max >= 400 && snap.max < 405, "{snap:?}");
        // A reader holding the mailbox makes the stage skip, not wait.
        let guard = reader.shared.lock().unwrap();
        stage.last_publish -= PUBLISH_INTERVAL;
        for v in 0..8 {
            stage.record(v);
        }
        drop(guard);
        assert_eq!(reader.snapshot().count, 4, "the copy was skipped while a reader held the mailbox");
        stage.publish();
        assert_eq!(reader.snapshot().count, 12);
    }
}
