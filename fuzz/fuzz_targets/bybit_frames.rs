//! Bybit v5 public market-data frames into core events. Input: the first byte picks spot or
//! linear, the rest is frames one a line; an empty line is a reconnect. Never panics; every
//! event emitted is one the core may take and the core's books never cross.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sapphire_core::instrument::MarketType;
use sapphire_fuzz::{frames, registry, CoreBooks};
use sapphire_gateway::bybit::{BybitCategory, BybitFeed};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let (category, venue, kind) = if mode & 1 == 0 {
        (BybitCategory::Spot, "bybit", MarketType::Spot)
    } else {
        (BybitCategory::Linear, "bybit-linear", MarketType::LinearPerpetual)
    };
    let reg = registry(venue, kind);
    let mut feed = BybitFeed::new(category, &reg, venue);
    let mut core = CoreBooks::new(reg.len());
    for (i, frame) in frames(rest).enumerate() {
        let recv = 1_700_000_000_000_000_000 + i as u64;
        let mut take = |e| core.take(&e);
        if frame.is_empty() {
            feed.reset_books(recv, &mut take);
        } else {
            feed.on_frame(recv, frame, &mut take);
        }
        core.check_uncrossed();
    }
});
