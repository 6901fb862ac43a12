//! What stands between an agent and a provider: a token-bucket rate limit, a circuit
//! breaker, a response cache and jittered backoff. Each is a plain state machine over
//! `Instant`s so tests drive it with made-up times.

use crate::metrics::BreakerState;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// A token bucket: `burst` tokens, refilled at `per_minute` a minute.
#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. `per_minute == 0` disables the limit.
    pub fn new(per_minute: u32, burst: u32, now: Instant) -> Self {
        let capacity = f64::from(burst.max(1));
        Self { capacity, per_sec: f64::from(per_minute) / 60.0, tokens: capacity, last: now }
    }

    /// Takes a token if one is there.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if self.per_sec <= 0.0 {
            return true;
        }
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.per_sec).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A circuit breaker: `threshold` consecutive failures open it for `cooldown`; then one
/// probe is let through (half-open), whose outcome closes or reopens it.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    state: BreakerState,
    open_until: Instant,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, cooldown: Duration, now: Instant) -> Self {
        Self { threshold: threshold.max(1), cooldown, failures: 0, state: BreakerState::Closed, open_until: now }
    }

    /// The state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// May a request go out now? Moves open → half-open after the cool-down, letting this
    /// one request through as the probe.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open if now >= self.open_until => {
                self.state = BreakerState::HalfOpen;
                true
            }
            BreakerState::Open | BreakerState::HalfOpen => false,
        }
    }

    /// The provider answered.
    pub fn success(&mut self) {
        self.failures = 0;
        self.state = BreakerState::Closed;
    }

    /// The provider failed (transport, timeout, 429, 5xx).
    pub fn failure(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        if self.state == BreakerState::HalfOpen || self.failures >= self.threshold {
            self.state = BreakerState::Open;
            self.open_until = now + self.cooldown;
        }
    }
}

/// Cached valid answers keyed by the exact request (model, messages, schema).
#[derive(Debug)]
pub struct ResponseCache {
    ttl: Duration,
    max_entries: usize,
    entries: HashMap<String, (String, Instant)>,
}

impl ResponseCache {
    /// A cache keeping answers for `ttl` (zero disables it).
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self { ttl, max_entries: max_entries.max(1), entries: HashMap::new() }
    }

    /// The cached answer for `key`, if younger than the TTL.
    pub fn get(&self, key: &str, now: Instant) -> Option<&str> {
        let (answer, at) = self.entries.get(key)?;
        (now.saturating_duration_since(*at) < self.ttl).then_some(answer.as_str())
    }

    /// Stores an answer.
    pub fn put(&mut self, key: String, answer: String, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        if self.entries.len() >= self.max_entries {
            let ttl = self.ttl;
            self.entries.retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
            if self.entries.len() >= self.max_entries {
                self.entries.clear();
            }
        }
        self.entries.insert(key, (answer, now));
    }
}

/// Exponential backoff with jitter: attempt `n` (0-based) waits a uniformly random time in
/// `[d/2, d]`, `d = min(max, base · 2ⁿ)`.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    rng: AtomicU64,
}

impl Backoff {
    /// A backoff policy; `seed` makes the jitter reproducible in tests.
    pub fn new(base: Duration, max: Duration, seed: u64) -> Self {
        Self { base, max, rng: AtomicU64::new(seed | 1) }
    }

    /// The wait before retry `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let d = self.base.saturating_mul(1u32 << attempt.min(20)).min(self.max);
        let half = d / 2;
        let r = splitmix(self.rng.fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed));
        half + Duration::from_nanos(r % (half.as_nanos() as u64).max(1))
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(60, 2, t0);
        assert!(b.try_take(t0) && b.try_take(t0));
        assert!(!b.try_take(t0), "burst spent");
        assert!(!b.try_take(t0 + Duration::from_millis(500)));
        assert!(b.try_take(t0 + Duration::from_millis(1_001)), "one a second");
        assert!(TokenBucket::new(0, 1, t0).try_take(t0), "0 = unlimited");
    }

    #[test]
    fn breaker_opens_then_half_opens_then_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(10), t0);
        b.failure(t0);
        assert_eq!(b.state(), BreakerState::Closed);
        b.failure(t0);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow(t0 + Duration::from_secs(9)));
        assert!(b.allow(t0 + Duration::from_secs(10)), "the probe");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.allow(t0 + Duration::from_secs(10)), "one probe at a time");
        b.failure(t0 + Duration::from_secs(10));
        assert_eq!(b.state(), BreakerState::Open, "a failed probe reopens");
        assert!(b.allow(t0 + Duration::from_secs(20)));
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn cache_honours_ttl() {
        let t0 = Instant::now();
        let mut c = ResponseCache::new(Duration::from_secs(60), 2);
        c.put("a".into(), "A".into(), t0);
        assert_eq!(c.get("a", t0 + Duration::from_secs(59)), Some("A"));
        assert_eq!(c.get("a", t0 + Duration::from_secs(60)), None);
        let mut off = ResponseCache::new(Duration::ZERO, 2);
        off.put("a".into(), "A".into(), t0);
        assert_eq!(off.get("a", t0), None);
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1_000), 7);
        for attempt in 0..8 {
            let d = b.delay(attempt);
            let full = Duration::from_millis(100 * (1 << attempt)).min(Duration::from_millis(1_000));
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
    }
}
