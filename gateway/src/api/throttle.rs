//! [`AuthThrottle`]: bursts of refused bearer tokens from one client address get a 429.
//!
//! Each address has a bucket of [`ApiLimits::auth_burst`](super::ApiLimits::auth_burst)
//! refusals that refills one every [`ApiLimits::auth_refill`](super::ApiLimits::auth_refill).
//! A control request refused for a wrong token takes one; while an address's bucket is
//! empty every control request from it presenting a token gets a 429 with `Retry-After`
//! before the token is looked at, so guessing is slow whichever tokens are tried, and other
//! addresses are untouched. A request without a token guesses nothing and always gets its
//! 401. IPv6 addresses count by their /64 (one host's share). The table is bounded: past
//! [`AuthThrottle::MAX_ADDRESSES`] the buckets that have refilled are forgotten, and if none
//! has, the one with the most refusals left (blocked addresses are forgotten last).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Marks a response refusing a request for its bearer token (set by the control handlers,
/// counted by the router's throttle layer).
#[derive(Clone, Copy, Debug)]
pub(super) struct AuthRefused;

/// A client address's bucket of refusals.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Refusals left at `at`.
    left: u32,
    /// When `left` was counted.
    at: Instant,
}

/// Refused tokens per client address. Touched only by the server's own thread: the lock is
/// never contended.
#[derive(Debug)]
pub(super) struct AuthThrottle {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    /// Refusals an address may have in a burst (at least 1).
    burst: u32,
    /// One more refusal is allowed this often (at least 1 ms).
    refill: Duration,
}

impl AuthThrottle {
    /// Addresses remembered at most.
    pub(super) const MAX_ADDRESSES: usize = 4096;

    pub(super) fn new(burst: u32, refill: Duration) -> Self {
        Self { buckets: Mutex::new(HashMap::new()), burst: burst.max(1), refill: refill.max(Duration::from_millis(1)) }
    }

    fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
            },
        }
    }

    /// The bucket brought up to `now`.
    fn refilled(&self, b: Bucket, now: Instant) -> Bucket {
        let steps = now.saturating_duration_since(b.at).as_nanos() / self.refill.as_nanos();
        if steps == 0 {
            return b;
        }
        // Fewer than `burst` steps were taken when the bucket is not full again.
        let left = (u128::from(b.left) + steps).min(u128::from(self.burst)) as u32;
        let at = if left == self.burst { now } else { b.at + self.refill * steps as u32 };
        Bucket { left, at }
    }

    /// `Some(wait)` when `ip` has spent its refusals: its control requests get a 429 for now.
    pub(super) fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = self.refilled(*buckets.get(&Self::key(ip))?, now);
        (b.left == 0).then(|| (b.at + self.refill).saturating_duration_since(now))
    }

    /// Counts a refused token from `ip`.
    pub(super) fn refused(&self, ip: IpAddr, now: Instant) {
        let key = Self::key(ip);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= Self::MAX_ADDRESSES && !buckets.contains_key(&key) {
            buckets.retain(|_, b| self.refilled(*b, now).left < self.burst);
            if buckets.len() >= Self::MAX_ADDRESSES {
                // The address nearest a full bucket goes: blocked ones are kept longest.
                let now_left = |b: &Bucket| self.refilled(*b, now).left;
                if let Some(k) = buckets.iter().max_by_key(|(_, b)| (now_left(b), std::cmp::Reverse(b.at))).map(|(k, _)| *k) {
                    buckets.remove(&k);
                }
            }
        }
        let b = buckets.get(&key).map_or(Bucket { left: self.burst, at: now }, |b| self.refilled(*b, now));
        buckets.insert(key, Bucket { left: b.left.saturating_sub(1), at: b.at });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BURST: u32 = 10;
    const REFILL: Duration = Duration::from_secs(6);

    #[test]
    fn a_burst_is_allowed_then_blocked_until_one_refill_per_interval() {
        let t = AuthThrottle::new(BURST, REFILL);
        let (ip, other): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for i in 0..BURST {
            assert_eq!(t.blocked(ip, t0), None, "refusal {i} is within the burst");
            t.refused(ip, t0);
        }
        assert_eq!(t.blocked(ip, t0), Some(REFILL));
        assert_eq!(t.blocked(other, t0), None, "another address is untouched");
        let later = t0 + REFILL / 2;
        assert_eq!(t.blocked(ip, later), Some(REFILL / 2));
        // One refill allows exactly one more refusal.
        let refilled = t0 + REFILL;
        assert_eq!(t.blocked(ip, refilled), None);
        t.refused(ip, refilled);
        assert!(t.blocked(ip, refilled).is_some());
        // A quiet spell restores the whole burst, never more.
        let quiet = refilled + REFILL * 100;
        for _ in 0..BURST {
            assert_eq!(t.blocked(ip, quiet), None);
            t.refused(ip, quiet);
        }
        assert!(t.blocked(ip, quiet).is_some());
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_v4_as_v4() {
        let t = AuthThrottle::new(BURST, REFILL);
        let now = Instant::now();
        for i in 0..BURST {
            t.refused(format!("2001:db8::{i:x}").parse().unwrap(), now);
        }
        assert!(t.blocked("2001:db8::ffff:1".parse().unwrap(), now).is_some(), "the same /64");
        assert!(t.blocked("2001:db8:0:1::1".parse().unwrap(), now).is_none(), "another /64");
        for _ in 0..BURST {
            t.refused("::ffff:10.1.2.3".parse().unwrap(), now);
        }
        assert!(t.blocked("10.1.2.3".parse().unwrap(), now).is_some());
    }

    #[test]
    fn the_table_stays_bounded_and_keeps_the_blocked_addresses() {
        let t = AuthThrottle::new(BURST, REFILL);
        let now = Instant::now();
        let blocked: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..BURST {
            t.refused(blocked, now);
        }
        let later = now + Duration::from_millis(1);
        for i in 0..(2 * AuthThrottle::MAX_ADDRESSES as u32) {
            t.refused(IpAddr::V4((0x0a00_0000 + i).into()), later);
        }
        assert!(t.buckets.lock().unwrap().len() <= AuthThrottle::MAX_ADDRESSES);
        assert!(t.blocked(blocked, later).is_some(), "a spray from many addresses does not unblock one");
    }
}
