//! Binance market-data frames (WebSocket streams and REST depth snapshots) into core events.
//! Input: the first byte picks spot or USD-M, the rest is frames one a line; a line starting
//! with `@` is handed in as a REST snapshot, an empty line is a reconnect. Never panics; every
//! event emitted is one the core may take (positive prices, non-negative sizes, uncrossed
//! quotes, times in range) and the core's books never cross.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sapphire_core::instrument::{InstrumentId, MarketType};
use sapphire_fuzz::{frames, registry, CoreBooks};
use sapphire_gateway::binance::{BinanceFeed, BinanceMarket};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let (market, venue, kind) = if mode & 1 == 0 {
        (BinanceMarket::Spot, "binance", MarketType::Spot)
    } else {
        (BinanceMarket::UsdM, "binance-usdm", MarketType::LinearPerpetual)
    };
    let reg = registry(venue, kind);
    let mut feed = BinanceFeed::new(market, &reg, venue);
    let mut core = CoreBooks::new(reg.len());
    for (i, frame) in frames(rest).enumerate() {
        let recv = 1_700_000_000_000_000_000 + i as u64;
        let mut take = |e| core.take(&e);
        if frame.is_empty() {
            feed.reset_books(recv, &mut take);
        } else if let Some(snapshot) = frame.strip_prefix(b"@") {
            let inst = (mode & 2 != 0).then_some(InstrumentId(u32::from(mode >> 2) % 3));
            feed.on_snapshot(inst, recv, snapshot, &mut take);
        } else {
            feed.on_frame(recv, frame, &mut take);
        }
        core.check_uncrossed();
    }
});
