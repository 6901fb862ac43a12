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
