//! Client-side rate limiting from the venue's own usage counters.
//!
//! Binance answers every request with what we have used in each window
//! (`X-MBX-USED-WEIGHT-1M`, `X-MBX-ORDER-COUNT-10S`, `X-MBX-ORDER-COUNT-1D`, ...). Its windows
//! are aligned to the clock (a minute window resets on the minute), so knowing the count and
//! the server time we know when it resets. Before each request the [`RateLimiter`] adds the
//! request's cost to the last count and, when that would pass `headroom_pct` of the limit,
//! says how long to wait for the window to roll over — so the venue never has to answer 429
//! (which, repeated, earns an IP ban: 418). A `Retry-After` from a 429/418 blocks every
//! request until it has passed.

use std::sync::Mutex;
use std::time::Duration;

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageKind {
    /// Request weight (every request).
    Weight,
    /// Orders placed (new orders only).
    Orders,
}

/// One venue limit: at most `limit` of `kind` per clock-aligned `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// What is counted.
    pub kind: UsageKind,
    /// The window.
    pub interval: Duration,
    /// The most the venue allows in one window.
    pub limit: u64,
}

/// Binance spot's published limits (exchangeInfo `rateLimits`).
pub const BINANCE_SPOT_LIMITS: [RateLimit; 3] = [
    RateLimit { kind: UsageKind::Weight, interval: Duration::from_secs(60), limit: 6_000 },
    RateLimit { kind: UsageKind::Orders, interval: Duration::from_secs(10), limit: 100 },
    RateLimit { kind: UsageKind::Orders, interval: Duration::from_secs(86_400), limit: 200_000 },
];

/// Binance USD-M's published limits.
pub const BINANCE_USDM_LIMITS: [RateLimit; 3] = [
    RateLimit { kind: UsageKind::Weight, interval: Duration::from_secs(60), limit: 2_400 },
    RateLimit { kind: UsageKind::Orders, interval: Duration::from_secs(10), limit: 300 },
    RateLimit { kind: UsageKind::Orders, interval: Duration::from_secs(60), limit: 1_200 },
];

/// Parses a usage header name: `x-mbx-used-weight-1m` → (Weight, 60 s),
/// `x-mbx-order-count-10s` → (Orders, 10 s). Case-insensitive.
pub fn parse_usage_header(name: &str) -> Option<(UsageKind, Duration)> {
    let name = name.to_ascii_lowercase();
    let (kind, interval) = if let Some(rest) = name.strip_prefix("x-mbx-used-weight-") {
        (UsageKind::Weight, rest)
    } else if let Some(rest) = name.strip_prefix("x-mbx-order-count-") {
        (UsageKind::Orders, rest)
    } else {
        return None;
    };
    let split = interval.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = interval.split_at(split);
    let n: u64 = n.parse().ok()?;
    // Checked: a header is the venue's (or whatever is between us and it) to write.
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3_600),
        "d" => n.checked_mul(86_400),
        _ => return None,
    }?;
    (secs > 0).then(|| (kind, Duration::from_secs(secs)))
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    limit: RateLimit,
    /// The window (`server_ms / interval_ms`) the count belongs to.
    window: u64,
    /// Used in that window, as last reported plus what we sent since.
    used: u64,
}

#[derive(Debug)]
struct State {
    usage: Vec<Usage>,
    /// Server time (ms) before which nothing may be sent (Retry-After).
    blocked_until_ms: u64,
    waits: u64,
    waited_ms: u64,
}

/// Tracks usage against the limits; shared by every request of one client.
#[derive(Debug)]
pub struct RateLimiter {
    state: Mutex<State>,
    headroom_pct: u64,
}

fn interval_ms(l: &RateLimit) -> u64 {
    (l.interval.as_millis() as u64).max(1)
}

impl RateLimiter {
    /// A limiter for `limits`, slowing down at `headroom_pct` percent of each (e.g. 90).
    pub fn new(limits: &[RateLimit], headroom_pct: u64) -> Self {
        let usage = limits.iter().map(|&limit| Usage { limit, window: 0, used: 0 }).collect();
        Self { state: Mutex::new(State { usage, blocked_until_ms: 0, waits: 0, waited_ms: 0 }), headroom_pct: headroom_pct.clamp(1, 100) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long to wait before sending a request costing `weight` (and one order when
    /// `order`), at server time `now_ms`; zero to send now. When it returns zero the cost is
    /// counted (so requests in flight together are all counted).
    pub fn reserve(&self, now_ms: u64, weight: u64, order: bool) -> Duration {
        let mut st = self.lock();
        if st.blocked_until_ms > now_ms {
            let wait = st.blocked_until_ms - now_ms;
            st.waits += 1;
            st.waited_ms = st.waited_ms.saturating_add(wait);
            return Duration::from_millis(wait);
        }
        let mut wait_ms = 0u64;
        for u in &st.usage {
            let cost = match u.limit.kind {
                UsageKind::Weight => weight,
                UsageKind::Orders => u64::from(order),
            };
            if cost == 0 {
                continue;
            }
            let ims = interval_ms(&u.limit);
            let window = now_ms / ims;
            let used = if u.window == window { u.used } else { 0 };
            let allowed = u.limit.limit * self.headroom_pct / 100;
            if used + cost > allowed {
                // Wait for this window to end, plus a margin for the error in our estimate of
                // the venue's clock (1% of the window + 5 ms), so the venue is surely in the next.
                wait_ms = wait_ms.max((window + 1) * ims - now_ms + ims / 100 + 5);
            }
        }
        if wait_ms > 0 {
            st.waits += 1;
            st.waited_ms += wait_ms;
            return Duration::from_millis(wait_ms);
        }
        for u in &mut st.usage {
            let cost = match u.limit.kind {
                UsageKind::Weight => weight,
                UsageKind::Orders => u64::from(order),
            };
            let window = now_ms / interval_ms(&u.limit);
            if u.window != window {
                u.window = window;
                u.used = 0;
            }
            u.used += cost;
        }
        Duration::ZERO
    }

    /// Records a usage header the venue sent (`name`, `value`) at server time `now_ms`.
    pub fn observe(&self, now_ms: u64, name: &str, value: &str) {
        let Some((kind, interval)) = parse_usage_header(name) else { return };
        let Ok(used) = value.trim().parse::<u64>() else { return };
        let mut st = self.lock();
        for u in &mut st.usage {
            if u.limit.kind == kind && u.limit.interval == interval {
                let window = now_ms / interval_ms(&u.limit);
                if window == u.window {
                    // Our count also holds requests still in flight: keep the larger.
                    u.used = u.used.max(used);
                } else if window > u.window {
                    u.window = window;
                    u.used = used;
                }
            }
        }
    }

    /// A 429/418 with `Retry-After`: nothing is sent until it has passed.
    pub fn block_for(&self, now_ms: u64, retry_after: Duration) {
        let mut st = self.lock();
        let until = now_ms.saturating_add(u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX));
        st.blocked_until_ms = st.blocked_until_ms.max(until);
    }

    /// Times a request had to wait, and the total wait in ms.
    pub fn waits(&self) -> (u64, u64) {
        let st = self.lock();
        (st.waits, st.waited_ms)
    }
}

/// The longest `Retry-After` taken: Binance's longest IP ban (418) is 3 days. A longer one
/// (a garbled header, or a proxy's) would otherwise stop every request for good.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3 * 86_400);

/// Parses `Retry-After` (seconds; Binance sends seconds), at most [`MAX_RETRY_AFTER`].
/// Missing or bad: `default`.
pub fn parse_retry_after(value: Option<&str>, default: Duration) -> Duration {
    value.and_then(|v| v.trim().parse::<u64>().ok()).map_or(default, |s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}
