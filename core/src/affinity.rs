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

/// Pins the calling thread to `core`, if given. Never panics.
pub fn pin_current_thread(core: Option<usize>) -> PinOutcome {
    let Some(core) = core else {
        return PinOutcome::NotRequested;
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if core >= cores.max(core_count_hint()) {
        return PinOutcome::Unpinned { core, reason: "no such core on this machine" };
    }
    if core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        PinOutcome::Pinned(core)
    } else {
        PinOutcome::Unpinned { core, reason: "the OS refused (restricted cpuset or no affinity support)" }
    }
}

/// Cores the process may use; 0 when unknown (the OS then decides).
fn core_count_hint() -> usize {
    core_affinity::get_core_ids().map_or(0, |ids| ids.iter().map(|c| c.id + 1).max().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_core_warns_instead_of_panicking() {
        let outcome = std::thread::spawn(|| pin_current_thread(Some(100_000))).join().unwrap();
        assert!(matches!(outcome, PinOutcome::Unpinned { core: 100_000, .. }), "{outcome:?}");
        assert_eq!(pin_current_thread(None), PinOutcome::NotRequested);
    }
}
