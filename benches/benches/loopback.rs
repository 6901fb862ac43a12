//! End to end on loopback: the local Binance exchange → the real feed client → the engine,
//! decomposed per event, and the WebSocket hop alone (`sapphire_benches::loopback`).
//!
//! Run: `cargo bench -p sapphire-benches --bench loopback` (add `-- --quick` for a short run).

use sapphire_benches::case::table;
use sapphire_benches::lab::{Lab, Scale};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let lab = Lab::new(if quick { Scale::Quick } else { Scale::Full }, std::env::temp_dir());
    eprintln!("loopback bench; {}", lab.layout_note());
    let (cases, notes) = sapphire_benches::loopback::suite(&lab, |step| eprintln!("  {step}"));
    for n in notes {
        eprintln!("{n}");
    }
    print!("{}", table(&cases, &[]));
}
