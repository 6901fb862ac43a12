//! Wait strategies: what a consumer does while its ring has nothing new.

use std::time::Duration;

/// How an idle stage waits. Chosen per thread by the layout configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Spin on the cursor: the lowest latency, burns a whole core. Only with a core of its own.
    BusySpin,
    /// Spin with `spin_loop` hints (PAUSE): nearly as fast, kinder to a hyper-thread sibling.
    #[default]
    SpinHint,
    /// Yield the core after a few empty polls: for threads that share a core.
    Yield,
    /// Spin briefly, yield, then sleep this long: for background stages (journal, edge).
    Sleep(Duration),
}

impl WaitStrategy {
    /// Waits once; `idle` counts consecutive empty polls (reset it when work arrives).
    #[inline]
    pub fn idle(self, idle: &mut u32) {
        *idle = idle.saturating_add(1);
        match self {
            WaitStrategy::BusySpin => {}
            WaitStrategy::SpinHint => std::hint::spin_loop(),
            WaitStrategy::Yield => {
                // A thread sharing its core holds up the one it feeds while it spins.
                if *idle < 4 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
            WaitStrategy::Sleep(d) => {
                if *idle < 64 {
                    std::hint::spin_loop();
                } else if *idle < 128 {
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(d);
                }
            }
        }
    }

    /// Parses `busy-spin`, `spin-hint`, `yield`, `sleep` or `sleep:<micros>`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "busy-spin" | "busy_spin" => Some(WaitStrategy::BusySpin),
            "spin-hint" | "spin_hint" => Some(WaitStrategy::SpinHint),
            "yield" => Some(WaitStrategy::Yield),
            "sleep" => Some(WaitStrategy::Sleep(Duration::from_micros(50))),
            other => {
                other.strip_prefix("sleep:").and_then(|us| us.parse::<u64>().ok()).map(|us| WaitStrategy::Sleep(Duration::from_micros(us)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        assert_eq!(WaitStrategy::parse("busy-spin"), Some(WaitStrategy::BusySpin));
        assert_eq!(WaitStrategy::parse("sleep:200"), Some(WaitStrategy::Sleep(Duration::from_micros(200))));
        assert_eq!(WaitStrategy::parse("nap"), None);
    }
}
