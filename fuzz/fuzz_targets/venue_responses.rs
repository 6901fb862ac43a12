//! What the venues answer: REST order acks, queries, cancels and errors (Binance, Bybit), the
//! Binance user-data stream, Bybit's private stream (orders, executions, auth), exchangeInfo /
//! instruments-info pages, and the rate-limit headers (usage counters, Retry-After) that drive
//! the client's limiter. Input: the first byte picks the parser, the rest is the body. Never
//! panics; a parsed order never reports more filled than it can (no negative quantities).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sapphire_gateway::binance::instruments::parse_exchange_info;
use sapphire_gateway::bybit::instruments::parse_instruments_info;
use sapphire_gateway::bybit::BybitCategory;
use sapphire_gateway::venue::errors::{binance_reason, bybit_reason};
use sapphire_gateway::venue::rate_limit::{
    parse_retry_after, parse_usage_header, RateLimiter, BINANCE_SPOT_LIMITS, BINANCE_USDM_LIMITS, MAX_RETRY_AFTER,
};
use sapphire_gateway::venue::user_stream::{parse_user_event, UserEvent};
use sapphire_gateway::venue::{binance, bybit, parse_client_order_id, VenueOrder};
use std::time::Duration;

fn check(o: &VenueOrder) {
    assert!(o.qty.raw >= 0 && o.executed.raw >= 0, "negative quantities: {o:?}");
    for f in &o.fills {
        assert!(f.qty.raw >= 0, "a negative fill: {o:?}");
    }
    let _ = o.avg_price();
    assert!(o.leaves().raw >= 0, "negative leaves: {o:?}");
    let _ = parse_client_order_id(&o.client_id);
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(body);
    let json = serde_json::from_slice::<serde_json::Value>(body);
    match which % 8 {
        0 => {
            if let Ok(v) = &json {
                if let Ok(o) = binance::parse_order(v) {
                    check(&o);
                }
                if let Some(list) = v.as_array() {
                    for o in list.iter().filter_map(|o| binance::parse_order(o).ok()) {
                        check(&o);
                    }
                }
                // An error body: `{"code":-2010,"msg":"..."}`.
                if let Some(code) = v.get("code").and_then(serde_json::Value::as_i64) {
                    let _ = binance_reason(code, v.get("msg").and_then(serde_json::Value::as_str).unwrap_or(""));
                    let _ = bybit_reason(code);
                }
            }
        }
        1 => {
            if let Ok(v) = &json {
                if let Ok(o) = bybit::parse_order(v) {
                    check(&o);
                }
                let _ = bybit::parse_positions(v);
                if let Ok(Some(x)) = bybit::parse_execution(v) {
                    assert!(x.qty.raw >= 0, "a negative execution: {x:?}");
                }
            }
        }
        2 => {
            if let Ok(UserEvent::Order(o)) = parse_user_event(&text) {
                check(&o);
            }
        }
        3 => {
            if let Ok(bybit::PrivateEvent::Orders(list)) = bybit::parse_private_message(&text) {
                for o in &list {
                    check(o);
                }
            }
        }
        4 => {
            let _ = parse_exchange_info(body);
        }
        5 => {
            let category = if body.first().is_some_and(|b| b & 1 == 1) { BybitCategory::Linear } else { BybitCategory::Spot };
            let _ = parse_instruments_info(category, body);
        }
        _ => {
            // Headers: `name: value` lines, then the limiter answers at fuzzed server times.
            let limiter = RateLimiter::new(if which & 8 == 0 { &BINANCE_SPOT_LIMITS } else { &BINANCE_USDM_LIMITS }, u64::from(which));
            let mut now = 1_700_000_000_000u64;
            for line in text.lines() {
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                let _ = parse_usage_header(name);
                limiter.observe(now, name, value);
                if name.eq_ignore_ascii_case("retry-after") {
                    limiter.block_for(now, parse_retry_after(Some(value), Duration::from_secs(1)));
                }
                let step = value.trim().parse::<u64>().unwrap_or(1) % 120_000;
                now = now.saturating_add(step);
                let wait = limiter.reserve(now, u64::from(which % 64), which & 16 != 0);
                // At most the longest Retry-After taken, or a day's window and its margin.
                assert!(wait <= MAX_RETRY_AFTER + Duration::from_secs(86_400 * 2), "an absurd wait: {wait:?}");
            }
        }
    }
});
