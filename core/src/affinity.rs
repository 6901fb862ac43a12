//! Thread pinning that degrades to a warning, never a panic.

/// What happened when a thread asked for a core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinOutcome {
    /// No core was asked for.
    NotRequested,
    /// Pinned to the core.
    Pinned(usize),
    /// The core could not be had (fewer cores, a restricted cpuset, an OS without affinity):
    /// the thread runs unpinned.
    Unpinned {
        /// The core asked for.
        core: usize,
        /// Why it failed.
        reason: &'static str,
    },
}

/// Core ids at or above this cannot be named in an affinity mask.
const MAX_CORE_ID: usize = 1024;

/// Pins the calling thread to `core`, if given. Never panics.
///
/// It asks the OS directly rather than checking the core against the calling thread's own
/// mask: a thread started by an already-pinned thread inherits that one core, yet may
/// still be moved to any core of the process's cpuset.
pub fn pin_current_thread(core: Option<usize>) -> PinOutcome {
    let Some(core) = core else {
        return PinOutcome::NotRequested;
    };
    // Linux affinity masks hold 1024 cores; asking past that aborts inside libc.
    if core >= MAX_CORE_ID {
        return PinOutcome::Unpinned { core, reason: "no such core" };
    }
    if core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        PinOutcome::Pinned(core)
    } else {
        PinOutcome::Unpinned { core, reason: "the OS refused: no such core, a restricted cpuset, or no affinity support" }
    }
}

/// Keeps every thread of this process off `cores` (the engine's), now and from here on: each
/// running thread, and so every thread they start later (Linux threads inherit their
/// creator's mask), may use only the CPUs of the calling thread's mask that are not in
/// `cores`. A thread that pins itself afterwards (the engine) still can: pinning asks the OS,
/// not the inherited mask.
///
/// Without it a thread that runs unpinned (the main thread's status loop, a signal handler
/// thread, a runtime a library starts) may be scheduled onto the engine's core when the
/// others are busy and preempt the spinning engine for a time slice: milliseconds of
/// tick-to-order latency. Returns the CPUs left to everything else; an error (nothing was
/// changed, or only some threads were) says why. Never panics.
pub fn keep_process_off(cores: &[usize]) -> Result<Vec<usize>, String> {
    fence::keep_process_off(cores)
}

/// Keeps the calling thread off `cores`, and so every thread it starts from here on (they
/// inherit its mask): [`keep_process_off`] for one thread and what it spawns, e.g. a server
/// started beside an engine in one process that other work must not disturb. Returns the
/// CPUs left. Never panics.
pub fn keep_thread_off(cores: &[usize]) -> Result<Vec<usize>, String> {
    fence::keep_thread_off(cores)
}

#[cfg(target_os = "linux")]
mod fence {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;

    /// The calling thread's CPUs.
    pub(super) fn own_cpus() -> Result<Vec<usize>, String> {
        thread_cpus(0)
    }

    /// A thread's CPUs by thread id (0: the calling thread).
    pub(super) fn thread_cpus(tid: i32) -> Result<Vec<usize>, String> {
        let set = sched_getaffinity(Pid::from_raw(tid)).map_err(|e| format!("reading thread {tid}'s CPU mask: {e}"))?;
        Ok((0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect())
    }

    /// The calling thread's CPUs without `cores`, as a mask.
    fn rest_of(cores: &[usize]) -> Result<(Vec<usize>, CpuSet), String> {
        let rest: Vec<usize> = own_cpus()?.into_iter().filter(|c| !cores.contains(c)).collect();
        if rest.is_empty() {
            return Err(format!("cores {cores:?} are every CPU this process may use: nothing is left for its other threads"));
        }
        let mut set = CpuSet::new();
        for &c in &rest {
            set.set(c).map_err(|e| format!("CPU {c}: {e}"))?;
        }
        Ok((rest, set))
    }

    pub(super) fn keep_thread_off(cores: &[usize]) -> Result<Vec<usize>, String> {
        let (rest, set) = rest_of(cores)?;
        sched_setaffinity(Pid::from_raw(0), &set).map_err(|e| format!("moving this thread off cores {cores:?}: {e}"))?;
        Ok(rest)
    }

    pub(super) fn keep_process_off(cores: &[usize]) -> Result<Vec<usize>, String> {
        let (rest, set) = rest_of(cores)?;
        let tasks = std::fs::read_dir("/proc/self/task").map_err(|e| format!("listing this process's threads: {e}"))?;
        let mut failed = Vec::new();
        for tid in tasks.filter_map(|t| t.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
            match sched_setaffinity(Pid::from_raw(tid), &set) {
                // A thread that ended since the listing has nothing left to move.
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => failed.push(format!("thread {tid}: {e}")),
            }
        }
        if failed.is_empty() {
            Ok(rest)
        } else {
            Err(format!("some threads could not be moved off cores {cores:?}: {}", failed.join("; ")))
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod fence {
    pub(super) fn keep_process_off(_cores: &[usize]) -> Result<Vec<usize>, String> {
        Err("keeping threads off the engine's cores needs Linux CPU masks".into())
    }

    pub(super) fn keep_thread_off(_cores: &[usize]) -> Result<Vec<usize>, String> {
        Err("keeping threads off the engine's cores needs Linux CPU masks".into())
    }
}

/// Lowers the calling thread — only it: Linux keeps a nice value per thread — to the lowest
/// CPU priority of the normal scheduler (nice 19), for work that must yield to the market
/// path on a shared core (the dashboard and API server). Never panics; an error says why it
/// could not (the thread then runs at its old priority, which is only slower for others).
pub fn lower_current_thread_priority() -> Result<(), String> {
    thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min).map_err(|e| format!("{e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value of the calling thread, from `/proc/thread-self/stat` (field 19).
    fn own_nice() -> Option<i32> {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        rest.split_whitespace().nth(16)?.parse().ok()
    }

    /// Runs in a process of its own under nextest (as every test does); under `cargo test` it
    /// narrows the test binary's threads, which only keeps them off one core.
    #[cfg(target_os = "linux")]
    #[test]
    fn fencing_moves_running_and_future_threads_off_the_cores_and_pinning_still_reaches_them() {
        let cpus = fence::own_cpus().unwrap();
        if cpus.len() < 2 {
            // One CPU: fencing it off would leave nothing, which must be refused.
            assert!(keep_process_off(&cpus).is_err());
            return;
        }
        let engine = *cpus.last().unwrap();
        // A thread already running before the fence, parked until told to look at itself.
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let before = std::thread::spawn(move || {
            tid_tx.send(nix::unistd::gettid().as_raw()).unwrap();
            wait.recv().unwrap();
            fence::own_cpus().unwrap()
        });
        let tid = tid_rx.recv().unwrap();
        assert!(fence::thread_cpus(tid).unwrap().contains(&engine), "the thread starts with the engine's CPU in its mask");
        let rest = keep_process_off(&[engine]).unwrap();
        assert!(!rest.contains(&engine) && !rest.is_empty());
        go.send(()).unwrap();
        assert_eq!(before.join().unwrap(), rest, "a thread running before the fence is moved");
        let after = std::thread::spawn(|| fence::own_cpus().unwrap()).join().unwrap();
        assert_eq!(after, rest, "a thread started after the fence inherits it");
        assert_eq!(fence::own_cpus().unwrap(), rest, "the caller too");
        // The engine thread pins itself onto the fenced core.
        let pinned = std::thread::spawn(move || (pin_current_thread(Some(engine)), fence::own_cpus().unwrap())).join().unwrap();
        assert_eq!(pinned, (PinOutcome::Pinned(engine), vec![engine]));
        assert!(keep_process_off(&cpus).is_err(), "fencing every CPU is refused");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn keeping_one_thread_off_a_core_moves_it_and_what_it_starts_only() {
        let cpus = fence::own_cpus().unwrap();
        if cpus.len() < 2 {
            assert!(keep_thread_off(&cpus).is_err());
            return;
        }
        let engine = *cpus.last().unwrap();
        let (own, child) = std::thread::spawn(move || {
            let rest = keep_thread_off(&[engine]).unwrap();
            let child = std::thread::spawn(|| fence::own_cpus().unwrap()).join().unwrap();
            assert_eq!(fence::own_cpus().unwrap(), rest);
            (rest, child)
        })
        .join()
        .unwrap();
        assert!(!own.contains(&engine) && !own.is_empty());
        assert_eq!(child, own, "a thread it starts inherits the mask");
        assert_eq!(fence::own_cpus().unwrap(), cpus, "the caller's own mask is untouched");
    }

    #[test]
    fn lowering_priority_changes_only_the_calling_thread() {
        let before = own_nice();
        let (result, lowered) = std::thread::spawn(|| (lower_current_thread_priority(), own_nice())).join().unwrap();
        if cfg!(target_os = "linux") {
            assert_eq!(result, Ok(()));
            assert_eq!(lowered, Some(19));
            assert_eq!(own_nice(), before, "the caller's own priority is untouched");
        }
    }

    #[test]
    fn a_thread_started_by_a_pinned_thread_can_still_be_pinned_elsewhere() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cores < 2 {
            // One core: there is no elsewhere; the impossible-core test covers the warning.
            return;
        }
        let outcome = std::thread::spawn(move || {
            assert_eq!(pin_current_thread(Some(0)), PinOutcome::Pinned(0));
            std::thread::spawn(move || pin_current_thread(Some(cores - 1))).join().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(outcome, PinOutcome::Pinned(cores - 1));
    }

    #[test]
    fn impossible_core_warns_instead_of_panicking() {
        for core in [1_000, 100_000] {
            let outcome = std::thread::spawn(move || pin_current_thread(Some(core))).join().unwrap();
            assert!(matches!(outcome, PinOutcome::Unpinned { core: c, .. } if c == core), "{outcome:?}");
        }
        assert_eq!(pin_current_thread(None), PinOutcome::NotRequested);
    }
}
