//! Tick in to order out: the engine fused and split, against the same stages wired with
//! crossbeam channels and with tokio mpsc tasks, measured in the same run
//! (`sapphire_benches::engine`).
//!
//! Run: `cargo bench -p sapphire-benches --bench engine` (add `-- --quick` for a short run).

use sapphire_benches::case::table;
use sapphire_benches::lab::{Lab, Scale};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let lab = Lab::new(if quick { Scale::Quick } else { Scale::Full }, std::env::temp_dir());
    eprintln!("engine bench ({}); {}", if quick { "quick" } else { "full" }, lab.layout_note());
    let cases = sapphire_benches::engine::suite(&lab, |step| eprintln!("  {step}"));
    let ratios = sapphire_benches::suite::ratios(&cases);
    print!("{}", table(&cases, &ratios));
    if !lab.pins.all_held() {
        println!("warning: some threads could not be pinned or did not stay pinned");
    }
}
