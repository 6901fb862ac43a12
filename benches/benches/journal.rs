//! Journal append under each durability policy (`sapphire_benches::journal`): per-call
//! latency and events/s, into a scratch directory under the system temp dir. `EveryRecord`
//! pays an fsync per event.
//!
//! Run: `cargo bench -p sapphire-benches --bench journal` (add `-- --quick` for a short run).

use sapphire_benches::case::table;
use sapphire_benches::lab::{Lab, Scale};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scratch = std::env::temp_dir().join(format!("sapphire-bench-journal-{}", std::process::id()));
    let lab = Lab::new(if quick { Scale::Quick } else { Scale::Full }, scratch.clone());
    let cases = sapphire_benches::journal::suite(&lab, |step| eprintln!("  {step}"));
    let _ = std::fs::remove_dir_all(&scratch);
    print!("{}", table(&cases, &[]));
}
