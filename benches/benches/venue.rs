//! Order routing: encode + sign p50/p99 against the bare HMAC of the same bytes, and the
//! router → HTTP request on loopback against reqwest posting a prepared request
//! (`sapphire_benches::venue`).
//!
//! Run: `cargo bench -p sapphire-benches --bench venue` (add `-- --quick` for a short run).

use sapphire_benches::case::table;
use sapphire_benches::lab::{Lab, Scale};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let lab = Lab::new(if quick { Scale::Quick } else { Scale::Full }, std::env::temp_dir());
    let cases = sapphire_benches::venue::suite(&lab, &mut |step| eprintln!("  {step}"));
    print!("{}", table(&cases, &sapphire_benches::suite::ratios(&cases)));
}
