//! `sapphire feed serve`: the local exchange on the command line — recordings replayed over
//! Binance's WebSocket and REST wire format for feed clients to connect to.

use anyhow::Context;
use sapphire_gateway::binance::BinanceMarket;
use sapphire_gateway::local_exchange::tape::Tape;
use sapphire_gateway::local_exchange::{serve_blocking, LocalExchangeConfig, Pace};
use std::io::Write;
use std::path::PathBuf;

/// Serves `paths` until the process is stopped; prints the bound address first.
pub fn serve(venue: &str, market: Option<&str>, pace: &str, bind: &str, paths: &[PathBuf]) -> anyhow::Result<()> {
    if venue != "binance" {
        return Err(crate::config::refuse("--venue", format!("{venue:?}: the local exchange speaks binance in this build")));
    }
    let market = match market {
        None | Some("spot") => BinanceMarket::Spot,
        Some("usdm" | "futures") => BinanceMarket::UsdM,
        Some(m) => return Err(crate::config::refuse("--market", format!("{m:?}: spot or usdm"))),
    };
    let pace = match pace {
        "recorded" => Pace::Recorded,
        "fast" => Pace::Fast,
        p => return Err(crate::config::refuse("--pace", format!("{p:?}: recorded or fast"))),
    };
    let bind = bind.parse().map_err(|_| crate::config::refuse("--bind", format!("{bind:?} is not an address like 127.0.0.1:0")))?;
    let tape = Tape::load(paths).context("loading recordings")?;
    let (frames, snapshots, symbols) = (tape.frames.len(), tape.snapshots.len(), tape.symbols().join(","));
    let mut config = LocalExchangeConfig::new(market, pace);
    config.bind = bind;
    // Recorded pace looks live: event times move to now (fast replays keep the recorded ones).
    config.shift_times_to_now = pace == Pace::Recorded;
    serve_blocking(config, tape, |addr| {
        println!("feed serve: listening on {addr} (ws://{addr}/stream?streams=…, http://{addr}/api/v3/depth); {frames} frames, {snapshots} snapshots, symbols {symbols}");
        let _ = std::io::stdout().flush();
    })?;
    Ok(())
}
