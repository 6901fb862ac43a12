//! What else ran on the engine's cores: the engine threads' scheduler statistics (how often,
//! and for how long, another task held the CPU while an engine thread was ready to run) and
//! the interrupts delivered there. Read from Linux `/proc`; elsewhere nothing is known.
//!
//! The engine's own stall counter (`PipelineStats::stalls`) says *that* its core was taken;
//! these say *by what*. Time taken by another task shows here as preemption: another process
//! on the machine, or a thread of ours that escaped the fence. Time taken by an interrupt
//! shows in the interrupt counts. What neither explains was taken by the hypervisor.

use sapphire_core::pipeline::{os_thread_name, ENGINE_STAGES};
use std::path::Path;

/// What else used the engine's cores over a run.
#[derive(Clone, Debug, Default)]
pub struct CoreUse {
    /// The engine threads' preemption (`None`: not known here).
    pub preemption: Option<Preemption>,
    /// Interrupts delivered to the engine's cores, largest first.
    pub interrupts: Vec<(String, u64)>,
    /// Whether unbound kernel work may run on the engine's cores.
    pub workqueues: Option<bool>,
}

/// Time the engine threads were ready to run while another task held their CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Preemption {
    /// Times an engine thread was switched out while it still wanted to run
    /// (`nonvoluntary_ctxt_switches`).
    pub count: u64,
    /// Time the engine threads spent runnable but not running, ns (`schedstat`'s run delay).
    pub waited_ns: u64,
}

/// This process's engine threads, summed; `None` when `/proc` cannot tell (not Linux, or a
/// kernel without scheduler statistics).
pub fn preemption() -> Option<Preemption> {
    preemption_in(Path::new("/proc/self"))
}

fn preemption_in(process: &Path) -> Option<Preemption> {
    let names: Vec<String> = ENGINE_STAGES.iter().map(|s| os_thread_name(s)).collect();
    let mut total = Preemption::default();
    let mut found = false;
    for task in std::fs::read_dir(process.join("task")).ok()?.filter_map(Result::ok) {
        let dir = task.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else { continue };
        if !names.iter().any(|n| n == comm.trim_end()) {
            continue;
        }
        let (Some(waited), Some(count)) = (
            std::fs::read_to_string(dir.join("schedstat")).ok().and_then(|s| run_delay_ns(&s)),
            std::fs::read_to_string(dir.join("status")).ok().and_then(|s| involuntary_switches(&s)),
        ) else {
            continue;
        };
        found = true;
        total.waited_ns += waited;
        total.count += count;
    }
    found.then_some(total)
}

/// The second field of `/proc/<pid>/task/<tid>/schedstat`: ns spent waiting on a run queue.
fn run_delay_ns(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().nth(1)?.parse().ok()
}

fn involuntary_switches(status: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))?.trim().parse().ok()
}

/// Whether the kernel may run unbound work (`/sys/devices/virtual/workqueue/cpumask`) on any
/// of `cores`; `None` when it cannot be read. Where the disk's interrupt lands on the engine's
/// core, the journals' own writes wake such workers there.
pub fn workqueues_on(cores: &[usize]) -> Option<bool> {
    let mask = std::fs::read_to_string("/sys/devices/virtual/workqueue/cpumask").ok()?;
    Some(cores.iter().any(|&c| hex_mask_has(mask.trim(), c)))
}

/// Whether a kernel hex CPU mask ("3", "ff,ffffffff": 32-bit words, CPU 0 in the last) holds
/// `cpu`.
fn hex_mask_has(mask: &str, cpu: usize) -> bool {
    let words: Vec<&str> = mask.split(',').collect();
    words.len().checked_sub(1 + cpu / 32).and_then(|i| u32::from_str_radix(words[i], 16).ok()).is_some_and(|w| w & (1 << (cpu % 32)) != 0)
}

/// Interrupts delivered to `cores` so far, by name (the device's action, or the kernel's
/// mnemonic: `LOC` the local timer, `TLB` shootdowns, `CAL` function calls, `RES`
/// rescheduling); only those with a count. Empty when `/proc/interrupts` cannot be read.
pub fn interrupts_on(cores: &[usize]) -> Vec<(String, u64)> {
    std::fs::read_to_string("/proc/interrupts").map(|t| parse_interrupts(&t, cores)).unwrap_or_default()
}

/// Counts from a `/proc/interrupts` text: a header of `CPUn` columns, then one line per
/// interrupt: `NAME:` or `NUMBER:`, a count per column, then a description whose last word
/// is the action (a number's device) or a phrase (a mnemonic's).
fn parse_interrupts(text: &str, cores: &[usize]) -> Vec<(String, u64)> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else { return Vec::new() };
    let columns: Vec<Option<usize>> = header.split_whitespace().map(|c| c.strip_prefix("CPU").and_then(|n| n.parse().ok())).collect();
    let mut out = Vec::new();
    for line in lines {
        let Some((label, rest)) = line.trim_start().split_once(':') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let counts: Vec<u64> = fields.iter().take(columns.len()).map_while(|f| f.parse().ok()).collect();
        let count: u64 = columns.iter().zip(&counts).filter(|(c, _)| c.is_some_and(|c| cores.contains(&c))).map(|(_, n)| n).sum();
        if count == 0 {
            continue;
        }
        let name =
            if label.chars().all(|c| c.is_ascii_digit()) { fields.last().map_or(label, |n| *n).to_string() } else { label.to_string() };
        out.push((name, count));
    }
    out
}

/// What changed between two [`interrupts_on`] readings, largest first.
pub fn interrupts_since(before: &[(String, u64)], now: &[(String, u64)]) -> Vec<(String, u64)> {
    let mut delta: Vec<(String, u64)> = now
        .iter()
        .map(|(name, n)| (name.clone(), n - before.iter().find(|(b, _)| b == name).map_or(0, |(_, b)| *b).min(*n)))
        .filter(|(_, n)| *n > 0)
        .collect();
    delta.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    delta
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupt_counts_are_summed_over_the_engine_columns_and_named_by_action() {
        let text = "           CPU0       CPU1       CPU2\n  \
                    36:         10       4655          1  PCI-MSIX-0000:00:05.0   0-edge      virtio1-req.0\n  \
                    42:          0          0          9  PCI-MSIX  virtio3-tx\n\
                    LOC:     100000      90000      80000   Local timer interrupts\n\
                    TLB:          5         17          0   TLB shootdowns\n\
                    ERR:          0\n";
        let got = parse_interrupts(text, &[1, 2]);
        assert_eq!(
            got,
            vec![("virtio1-req.0".to_string(), 4656), ("virtio3-tx".to_string(), 9), ("LOC".to_string(), 170000), ("TLB".to_string(), 17)]
        );
        assert!(parse_interrupts(text, &[7]).is_empty(), "no such column");
        assert!(parse_interrupts("", &[0]).is_empty());
    }

    #[test]
    fn interrupt_deltas_are_sorted_and_drop_what_did_not_move() {
        let before = vec![("LOC".to_string(), 100), ("virtio1-req.0".to_string(), 50)];
        let now = vec![("LOC".to_string(), 400), ("virtio1-req.0".to_string(), 50), ("TLB".to_string(), 3)];
        assert_eq!(interrupts_since(&before, &now), vec![("LOC".to_string(), 300), ("TLB".to_string(), 3)]);
    }

    #[test]
    fn hex_cpu_masks_are_read_word_by_word() {
        assert!(hex_mask_has("3", 0) && hex_mask_has("3", 1) && !hex_mask_has("3", 2));
        assert!(!hex_mask_has("1", 1));
        assert!(hex_mask_has("1,00000000", 32) && !hex_mask_has("1,00000000", 0));
        assert!(!hex_mask_has("ff", 40), "past the mask");
        assert!(!hex_mask_has("zz", 0), "not hex");
    }

    #[test]
    fn schedstat_and_status_fields_parse() {
        assert_eq!(run_delay_ns("832801 435028 9\n"), Some(435028));
        assert_eq!(run_delay_ns("832801\n"), None);
        assert_eq!(involuntary_switches("Name:\tx\nvoluntary_ctxt_switches:\t2\nnonvoluntary_ctxt_switches:\t8\n"), Some(8));
        assert_eq!(involuntary_switches("Name:\tx\n"), None);
    }

    /// A thread named like the engine shares one CPU with a spinning neighbour: the time the
    /// neighbour held the CPU shows as preemption. Without the neighbour it would be ~0.
    #[cfg(target_os = "linux")]
    #[test]
    fn another_task_on_the_engines_cpu_shows_as_preemption() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let before = preemption();
        assert_eq!(before, None, "no engine thread yet");
        let stop = Arc::new(AtomicBool::new(false));
        // The first CPU this process may use (a restricted cpuset may not hold CPU 0).
        let cpu = core_affinity::get_core_ids().and_then(|c| c.first().copied()).expect("a CPU");
        let spin = |name: String, stop: Arc<AtomicBool>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    let _ = core_affinity::set_for_current(cpu);
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
                .unwrap()
        };
        let engine = spin(os_thread_name("engine"), Arc::clone(&stop));
        let neighbour = spin("neighbour".into(), Arc::clone(&stop));
        std::thread::sleep(std::time::Duration::from_millis(300));
        let p = preemption().expect("the engine thread is found");
        stop.store(true, Ordering::Relaxed);
        engine.join().unwrap();
        neighbour.join().unwrap();
        // Two spinners on one CPU for 300 ms: each waits for the other about half the time.
        assert!(p.count > 0 && p.waited_ns > 50_000_000, "{p:?}");
    }
}
