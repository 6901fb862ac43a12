//! `sapphire feed serve`: the local exchange on the command line — recordings replayed over
//! Binance's or Bybit v5's WebSocket and REST wire format for feed clients to connect to.
//!
//! One exchange serves both venues (each session gets only its own venue's frames);
//! `--venue` chooses what the startup line advertises and checks the recording has frames
//! for it.

use anyhow::Context;
use sapphire_gateway::binance::BinanceMarket;
use sapphire_gateway::local_exchange::tape::{Tape, TapeVenue};
use sapphire_gateway::local_exchange::{serve_blocking, LocalExchangeConfig, Pace};
use std::io::Write;
use std::path::PathBuf;

/// Serves `paths` until the process is stopped; prints the bound address first.
pub fn serve(venue: &str, market: Option<&str>, pace: &str, bind: &str, paths: &[PathBuf]) -> anyhow::Result<()> {
    let (tape_venue, market) = match (venue, market) {
        ("binance", None | Some("spot")) => (TapeVenue::Binance, BinanceMarket::Spot),
        ("binance", Some("usdm" | "futures")) => (TapeVenue::Binance, BinanceMarket::UsdM),
        ("binance", Some(m)) => return Err(crate::config::refuse("--market", format!("{m:?}: spot or usdm"))),
        // Bybit's category is the client's choice of path (/v5/public/spot or /linear).
        ("bybit", None | Some("spot" | "linear")) => (TapeVenue::Bybit, BinanceMarket::Spot),
        ("bybit", Some(m)) => return Err(crate::config::refuse("--market", format!("{m:?}: bybit markets are spot and linear"))),
        (v, _) => return Err(crate::config::refuse("--venue", format!("{v:?}: binance or bybit"))),
    };
    let pace = match pace {
        "recorded" => Pace::Recorded,
        "fast" => Pace::Fast,
        p => return Err(crate::config::refuse("--pace", format!("{p:?}: recorded or fast"))),
    };
    let bind = bind.parse().map_err(|_| crate::config::refuse("--bind", format!("{bind:?} is not an address like 127.0.0.1:0")))?;
    let tape = Tape::load(paths).context("loading recordings")?;
    let frames = tape.frames.iter().filter(|f| f.venue == tape_venue).count();
    if frames == 0 {
        return Err(crate::config::refuse("--venue", format!("{venue}: the recordings have no {venue} frames")));
    }
    let (snapshots, symbols) = (tape.snapshots.len(), tape.symbols().join(","));
    let mut config = LocalExchangeConfig::new(market, pace);
    config.bind = bind;
    // Recorded pace looks live: event times move to now (fast replays keep the recorded ones).
    config.shift_times_to_now = pace == Pace::Recorded;
    serve_blocking(config, tape, |addr| {
        match tape_venue {
            TapeVenue::Binance => outln!(
                "feed serve: listening on {addr} (ws://{addr}/stream?streams=…, http://{addr}/api/v3/depth); {frames} frames, {snapshots} snapshots, symbols {symbols}"
            ),
            TapeVenue::Bybit => outln!(
                "feed serve: listening on {addr} (ws://{addr}/v5/public/spot|linear, http://{addr}/v5/market/instruments-info); {frames} frames, symbols {symbols}"
            ),
        }
        let _ = std::io::stdout().flush();
    })?;
    Ok(())
}
