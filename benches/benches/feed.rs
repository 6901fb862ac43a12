//! Feed parsing: Binance bookTicker and trade frames into core events against a serde_json
//! baseline doing the same work, and depth-delta apply on a 1,000-level book
//! (`sapphire_benches::feed`). Real recordings from `../shared/data/exchange/recorded` when
//! present, the project's fixture otherwise.
//!
//! Run: `cargo bench -p sapphire-benches --bench feed` (add `-- --quick` for a short run).

use sapphire_benches::case::table;
use sapphire_benches::lab::{Lab, Scale};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let lab = Lab::new(if quick { Scale::Quick } else { Scale::Full }, std::env::temp_dir());
    let (cases, note) = sapphire_benches::feed::suite(&lab, |step| eprintln!("  {step}"));
    eprintln!("feed bench: {note}");
    print!("{}", table(&cases, &sapphire_benches::suite::ratios(&cases)));
}
