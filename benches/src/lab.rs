//! What every case shares: the run's size, the machine's cores, pinning that records
//! whether it held, the clock, and the description of the machine.

use sapphire_core::affinity::{pin_current_thread, PinOutcome};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How much work each case does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// Tiny sizes for tests of the harness itself: numbers mean nothing.
    Smoke,
    /// The CI smoke run and a first look: well under two minutes on 2 cores.
    Quick,
    /// The real measurement.
    Full,
}

impl Scale {
    /// Picks the value for this scale.
    pub fn pick<T>(self, smoke: T, quick: T, full: T) -> T {
        match self {
            Scale::Smoke => smoke,
            Scale::Quick => quick,
            Scale::Full => full,
        }
    }
}

/// Pinning outcomes of the threads the cases started, and whether each pin still held when
/// its thread finished (the affinity mask was still that one core).
#[derive(Clone, Debug, Default)]
pub struct PinLog {
    entries: Arc<Mutex<Vec<PinEntry>>>,
}

/// One thread's pinning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinEntry {
    /// The case and role, e.g. `hop_ring_paced_1us/consumer`.
    pub thread: String,
    /// What pinning did.
    pub outcome: PinOutcome,
    /// The mask was still that one core at the end.
    pub held: bool,
}

impl PinLog {
    /// Everything logged so far.
    pub fn entries(&self) -> Vec<PinEntry> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// True when every requested pin succeeded and held.
    pub fn all_held(&self) -> bool {
        self.entries().iter().all(|e| matches!(e.outcome, PinOutcome::Pinned(_) | PinOutcome::NotRequested) && e.held)
    }

    fn push(&self, e: PinEntry) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).push(e);
    }
}

/// A pinned thread's handle: call [`Pinned::done`] when the measured work is over.
#[derive(Debug)]
#[must_use = "call done() to record whether the pin held"]
pub struct Pinned {
    thread: String,
    outcome: PinOutcome,
    log: PinLog,
}

impl Pinned {
    /// Records whether the pin held to the end.
    pub fn done(self) {
        let held = match self.outcome {
            PinOutcome::Pinned(core) => core_affinity::get_core_ids().is_some_and(|ids| ids.len() == 1 && ids[0].id == core),
            PinOutcome::NotRequested => true,
            PinOutcome::Unpinned { .. } => false,
        };
        self.log.push(PinEntry { thread: self.thread, outcome: self.outcome, held });
    }
}

/// The run's context, created on an unpinned thread.
#[derive(Clone, Debug)]
pub struct Lab {
    /// Size of each case.
    pub scale: Scale,
    /// Cores available to the process (read before any thread pinned itself).
    pub cores: usize,
    /// Every pin the cases made.
    pub pins: PinLog,
    /// Where cases may write scratch files (journals); removed by the caller.
    pub scratch: std::path::PathBuf,
}

impl Lab {
    /// A lab for `scale`; call from a thread that is not pinned.
    pub fn new(scale: Scale, scratch: std::path::PathBuf) -> Self {
        let cores = core_affinity::get_core_ids().map_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()), |c| c.len());
        Self { scale, cores: cores.max(1), pins: PinLog::default(), scratch }
    }

    /// The core for the producing side (the feed, the pacer): the first.
    pub fn producer_core(&self) -> Option<usize> {
        self.core_ids().first().copied()
    }

    /// The core for the consuming side (the engine): the last, a different one whenever
    /// there are two or more.
    pub fn consumer_core(&self) -> Option<usize> {
        self.core_ids().last().copied()
    }

    fn core_ids(&self) -> Vec<usize> {
        let mut ids: Vec<usize> = core_affinity::get_core_ids().map(|c| c.into_iter().map(|c| c.id).collect()).unwrap_or_default();
        if ids.is_empty() {
            ids = (0..self.cores).collect();
        }
        ids.sort_unstable();
        ids
    }

    /// Pins the calling thread (named for the log) and returns its handle.
    pub fn pin(&self, thread: impl Into<String>, core: Option<usize>) -> Pinned {
        Pinned { thread: thread.into(), outcome: pin_current_thread(core), log: self.pins.clone() }
    }

    /// Logs a pin made by a thread the lab did not start (the pipeline's own threads):
    /// whether it held to the end is not known, so only a successful pin counts as held.
    pub fn pins_record(&self, thread: &str, outcome: PinOutcome) {
        let held = !matches!(outcome, PinOutcome::Unpinned { .. });
        self.pins.push(PinEntry { thread: thread.into(), outcome, held });
    }

    /// A short description of the core layout, for the report.
    pub fn layout_note(&self) -> String {
        match (self.producer_core(), self.consumer_core()) {
            (Some(p), Some(c)) if p != c => format!("producer/feed threads pinned to core {p}, consumer/engine threads to core {c}"),
            (Some(p), _) => format!("one core ({p}): producer and consumer share it, so hops include context switches"),
            _ => "no core ids: threads run unpinned".into(),
        }
    }
}

/// A monotonic nanosecond clock shared by the threads of a case (one `Instant` origin).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Self { origin: Instant::now() }
    }

    /// Nanoseconds since the origin.
    #[inline]
    pub fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// Spins until `due` (ns since the origin); returns the time it saw.
    #[inline]
    pub fn spin_until(&self, due: u64) -> u64 {
        let mut now = self.now();
        while now < due {
            std::hint::spin_loop();
            now = self.now();
        }
        now
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// When each message of an open-loop schedule is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pacing {
    /// One message every this many ns.
    Interval(u64),
    /// `size` messages due at the same instant every `period` ns.
    Burst {
        /// Messages per burst.
        size: u64,
        /// Time between bursts, ns.
        period: u64,
    },
    /// As fast as the transport takes them (throughput).
    Flood,
}

impl Pacing {
    /// Due time of message `i` after `start`; `None` when flooding.
    #[inline]
    pub fn due(self, start: u64, i: u64) -> Option<u64> {
        match self {
            Pacing::Interval(ns) => Some(start + i * ns),
            Pacing::Burst { size, period } => Some(start + (i / size.max(1)) * period),
            Pacing::Flood => None,
        }
    }

    /// Name suffix: `paced_1us`, `burst16_16us`, `flood`.
    pub fn label(self) -> String {
        let t = |ns: u64| if ns % 1_000 == 0 { format!("{}us", ns / 1_000) } else { format!("{ns}ns") };
        match self {
            Pacing::Interval(ns) => format!("paced_{}", t(ns)),
            Pacing::Burst { size, period } => format!("burst{size}_{}", t(period)),
            Pacing::Flood => "flood".into(),
        }
    }
}

/// The machine as the report describes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Machine {
    /// CPU model name from /proc/cpuinfo.
    pub cpu_model: String,
    /// Cores available to the process.
    pub cores: usize,
    /// 1-minute load average when the run started.
    pub load_at_start: Option<f64>,
    /// Share of CPU time stolen by the hypervisor during the run, percent (/proc/stat).
    pub steal_pct: Option<f64>,
    /// The kernel, from /proc/sys/kernel/osrelease.
    pub kernel: String,
}

/// CPU time counters from the `cpu` line of /proc/stat (jiffies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// All fields added up (guest time is already inside user).
    pub total: u64,
    /// The steal field.
    pub steal: u64,
}

impl CpuTimes {
    /// Reads /proc/stat; `None` where it does not exist or makes no sense.
    pub fn read() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// Parses the text of /proc/stat.
    pub fn parse(text: &str) -> Option<Self> {
        let line = text.lines().find(|l| l.starts_with("cpu "))?;
        let fields: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().ok()).collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq steal [guest guest_nice]
        let steal = *fields.get(7)?;
        let total = fields.iter().take(8).sum();
        Some(Self { total, steal })
    }

    /// Steal between two readings, percent of all CPU time.
    pub fn steal_pct_since(&self, earlier: &CpuTimes) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let steal = self.steal.checked_sub(earlier.steal)?;
        (total > 0).then(|| steal as f64 * 100.0 / total as f64)
    }
}

impl Machine {
    /// Describes this machine (steal time is filled in by the caller after the run).
    pub fn describe(cores: usize) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_string(), |(_, v)| v.trim().to_string());
        let load_at_start =
            std::fs::read_to_string("/proc/loadavg").ok().and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok()));
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "unknown".into(), |k| k.trim().to_string());
        Self { cpu_model, cores, load_at_start, steal_pct: None, kernel }
    }

    /// True when the run started on a busy machine (load above half the cores).
    pub fn was_loaded(&self) -> bool {
        self.load_at_start.is_some_and(|l| l > self.cores as f64 * 0.5)
    }
}

/// The calling thread's (voluntary, involuntary) context switches so far, from
/// /proc/thread-self/status; `None` where that file does not exist. An involuntary switch on a
/// pinned spinning thread means something else ran on its core.
pub fn context_switches() -> Option<(u64, u64)> {
    parse_context_switches(&std::fs::read_to_string("/proc/thread-self/status").ok()?)
}

/// The calling thread's (ns on a CPU, ns waiting on a run queue, time slices) so far, from
/// /proc/thread-self/schedstat; `None` where that file does not exist.
pub fn schedstat() -> Option<(u64, u64, u64)> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut f = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((f.next()??, f.next()??, f.next()??))
}

/// The calling thread's (minor, major) page faults so far, from /proc/thread-self/stat.
pub fn page_faults() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the command name (which may hold spaces) are counted from ") ".
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // state=0 ppid pgrp session tty tpgid flags minflt=7 cminflt majflt=9
    Some((f.get(7)?.parse().ok()?, f.get(9)?.parse().ok()?))
}

/// Parses the context-switch lines of a /proc status file.
pub fn parse_context_switches(status: &str) -> Option<(u64, u64)> {
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok());
    Some((field("voluntary_ctxt_switches:")?, field("nonvoluntary_ctxt_switches:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_comes_from_the_eighth_field() {
        let a = CpuTimes::parse("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 1 2 3\n").unwrap();
        let b = CpuTimes::parse("cpu  200 0 100 1600 20 0 0 80 0 0\n").unwrap();
        assert_eq!(a, CpuTimes { total: 1000, steal: 40 });
        assert!((b.steal_pct_since(&a).unwrap() - 4.0).abs() < 1e-9);
        assert!(a.steal_pct_since(&b).is_none(), "counters never go back");
        assert!(CpuTimes::parse("cpu  1 2 3\n").is_none());
        assert!(CpuTimes::parse("intr 5\n").is_none());
        assert!(CpuTimes::parse("cpu  a b c d e f g h\n").is_none());
    }

    #[test]
    fn context_switches_parse_and_read() {
        let text = "Name:\tx\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(parse_context_switches(text), Some((12, 3)));
        assert_eq!(parse_context_switches("Name:\tx\n"), None);
        if std::path::Path::new("/proc/thread-self/status").exists() {
            assert!(context_switches().is_some());
        }
    }

    #[test]
    fn schedules() {
        assert_eq!(Pacing::Interval(1_000).due(5, 3), Some(3_005));
        assert_eq!(Pacing::Burst { size: 16, period: 16_000 }.due(0, 15), Some(0));
        assert_eq!(Pacing::Burst { size: 16, period: 16_000 }.due(0, 16), Some(16_000));
        assert_eq!(Pacing::Flood.due(0, 1), None);
        assert_eq!(Pacing::Interval(1_000).label(), "paced_1us");
        assert_eq!(Pacing::Burst { size: 16, period: 16_000 }.label(), "burst16_16us");
        assert_eq!(Pacing::Interval(500).label(), "paced_500ns");
    }

    #[test]
    fn pins_are_logged_with_whether_they_held() {
        let lab = Lab::new(Scale::Smoke, std::env::temp_dir());
        let core = lab.consumer_core();
        let lab2 = lab.clone();
        std::thread::spawn(move || lab2.pin("t/a", core).done()).join().unwrap();
        std::thread::spawn({
            let lab = lab.clone();
            move || lab.pin("t/b", Some(100_000)).done()
        })
        .join()
        .unwrap();
        let e = lab.pins.entries();
        assert_eq!(e.len(), 2);
        assert!(e[0].held, "{e:?}");
        assert!(!e[1].held && matches!(e[1].outcome, PinOutcome::Unpinned { .. }));
        assert!(!lab.pins.all_held());
    }
}
