//! One hop between two pinned threads, 64-byte payload: our ring vs crossbeam `ArrayQueue`
//! and channel vs std `sync_channel` vs tokio mpsc vs an atomic hand-off floor
//! (`sapphire_benches::hop`).
//!
//! Open-loop percentiles (1 µs pacing and 16-message bursts, measured from the scheduled send
//! time) come from the library's hdrhistogram cases; flood throughput runs under criterion
//! with `iter_custom` (the case times its own messages, thread start excluded).
//!
//! Run: `cargo bench -p sapphire-benches --bench hop` (add `-- --quick` for a short run).

use criterion::Criterion;
use sapphire_benches::case::table;
use sapphire_benches::hop::{run, Transport};
use sapphire_benches::lab::{Lab, Pacing, Scale};
use std::time::Duration;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let lab = Lab::new(if quick { Scale::Quick } else { Scale::Full }, std::env::temp_dir());
    eprintln!("hop bench; {}", lab.layout_note());
    let n = if quick { 200_000 } else { 2_000_000 };
    let mut cases = Vec::new();
    for pacing in [Pacing::Interval(1_000), Pacing::Burst { size: 16, period: 16_000 }] {
        for t in Transport::ALL {
            cases.push(run(&lab, t, pacing, n));
        }
    }
    print!("{}", table(&cases, &sapphire_benches::suite::ratios(&cases)));

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("hop_flood");
    group.throughput(criterion::Throughput::Elements(1));
    for t in Transport::ALL {
        group.bench_function(t.label(), |b| {
            b.iter_custom(|iters| {
                let case = run(&lab, t, Pacing::Flood, iters.max(1));
                let rate = case.events_per_sec.unwrap_or(0.0);
                if rate > 0.0 {
                    Duration::from_secs_f64(iters.max(1) as f64 / rate)
                } else {
                    Duration::from_secs(1)
                }
            })
        });
    }
    group.finish();
    c.final_summary();
}
