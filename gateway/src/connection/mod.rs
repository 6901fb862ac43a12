//! Exchange connections: what every venue's feed client shares — the connection error type,
//! jittered exponential backoff, graceful shutdown, the event sink (the core's inbound ring)
//! and a minimal HTTP/1.1 client for REST snapshots.
//!
//! Both clients (Binance, Bybit) run over [`tls::Transport`]: plain TCP for `ws://`/`http://` (the local
//! exchange, test rigs) and rustls for `wss://`/`https://` (real venues).

pub mod binance;
pub mod bybit;
pub mod http;
pub mod tls;

use sapphire_core::event::Event;
use sapphire_core::ring::Producer;
use std::time::Duration;
use tokio::sync::broadcast;

pub use binance::{BinanceConnection, BinanceConnectionConfig, SubscribeMode};
pub use bybit::{BybitConnection, BybitConnectionConfig};

/// Why a connection failed. Venue-level frame problems are [`crate::feed::FeedError`]s and
/// never end a connection; these do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    /// The URL could not be used.
    #[error("bad URL {url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What was wrong.
        reason: &'static str,
    },
    /// The TLS handshake (or the TLS configuration) failed: certificate, name, protocol.
    #[error("TLS with {url}: {reason}")]
    Tls {
        /// The URL.
        url: String,
        /// The underlying error.
        reason: String,
    },
    /// TCP connect or WebSocket handshake failed.
    #[error("connecting to {url}: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// The underlying error.
        reason: String,
    },
    /// The WebSocket failed mid-stream.
    #[error("websocket: {0}")]
    WebSocket(String),
    /// An I/O error on a REST request.
    #[error("{url}: {reason}")]
    Io {
        /// The URL.
        url: String,
        /// The underlying error.
        reason: String,
    },
    /// A REST request answered with a non-200 status.
    #[error("{url}: HTTP status {status}")]
    HttpStatus {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// A REST response that is not valid HTTP/1.1.
    #[error("{url}: malformed HTTP response: {reason}")]
    HttpMalformed {
        /// The URL.
        url: String,
        /// What was wrong.
        reason: &'static str,
    },
    /// An operation took too long.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The ring was closed: the engine is gone.
    #[error("the inbound ring is closed")]
    RingClosed,
    /// The feed's frames belong to another market than the configured one (see
    /// [`crate::feed::FeedError::WrongMarket`]): every book would resync on every frame.
    #[error("{0}")]
    WrongMarket(crate::feed::FeedError),
    /// The venue refused a request that asking again cannot fix (a subscription to a topic
    /// it does not serve).
    #[error("{url} refused: {reason}")]
    Refused {
        /// The URL.
        url: String,
        /// The venue's reason.
        reason: String,
    },
}

impl ConnectionError {
    /// True when retrying cannot help (bad configuration, the engine gone); everything else,
    /// TLS failures included (a venue's certificate rotation or a middlebox), is retried with
    /// backoff and logged.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            ConnectionError::BadUrl { .. }
                | ConnectionError::RingClosed
                | ConnectionError::Refused { .. }
                | ConnectionError::WrongMarket(_)
        )
    }
}

/// Jittered exponential backoff: the n-th delay is drawn from `[d/2, d]` where
/// `d = min(initial * 2^n, max)` ("equal jitter"), so a fleet of clients dropped together
/// does not reconnect together, and a client never retries faster than `initial / 2`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    /// xorshift64 state: jitter needs spread, not cryptographic randomness.
    rng: u64,
}

impl Backoff {
    /// A backoff from `initial` doubling up to `max`, with jitter seeded by `seed`.
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Self {
        Self { initial, max: max.max(initial), attempt: 0, rng: seed | 1 }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        let cap = self.initial.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let cap_ns = cap.as_nanos().min(u128::from(u64::MAX)) as u64;
        let half = cap_ns / 2;
        Duration::from_nanos(half + self.rng % (cap_ns - half + 1))
    }

    /// Attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Back to the initial delay (after a connection proved healthy).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Listens for the shutdown signal (mini-redis style): a broadcast from the owner, or the
/// owner dropping its sender. Once seen, it stays seen.
#[derive(Debug)]
pub struct Shutdown {
    is_shutdown: bool,
    notify: broadcast::Receiver<()>,
}

impl Shutdown {
    /// Wraps a receiver of the owner's shutdown broadcast.
    pub fn new(notify: broadcast::Receiver<()>) -> Self {
        Self { is_shutdown: false, notify }
    }

    /// True once the signal was received.
    pub fn is_shutdown(&self) -> bool {
        self.is_shutdown
    }

    /// Waits for the signal (returns at once if already seen).
    pub async fn recv(&mut self) {
        if self.is_shutdown {
            return;
        }
        // Err(Closed) means every sender is gone: also a shutdown. Lagged cannot hide it.
        let _ = self.notify.recv().await;
        self.is_shutdown = true;
    }

    /// Checks for the signal without waiting.
    pub fn poll_now(&mut self) -> bool {
        if !self.is_shutdown {
            self.is_shutdown = !matches!(self.notify.try_recv(), Err(broadcast::error::TryRecvError::Empty));
        }
        self.is_shutdown
    }
}

/// Where a feed client puts its events. The core's ring in production; anything that can
/// refuse an event without waiting in tests.
pub trait EventSink: Send {
    /// Publishes without waiting; a full sink hands the event back.
    fn try_publish(&mut self, event: Event) -> Result<(), Event>;
}

impl EventSink for Producer<Event> {
    #[inline]
    fn try_publish(&mut self, event: Event) -> Result<(), Event> {
        Producer::try_publish(self, event).map(|_| ())
    }
}

/// Publishes every event in `events`, yielding to the runtime while the sink is full (a
/// full ring means the engine is behind: each wait is counted in `waits`, and the async
/// runtime is never blocked). Gives up only on shutdown.
pub async fn publish_all(
    sink: &mut impl EventSink,
    events: &[Event],
    waits: &mut u64,
    shutdown: &mut Shutdown,
) -> Result<(), ConnectionError> {
    for &event in events {
        let mut spins = 0u32;
        while sink.try_publish(event).is_err() {
            *waits += 1;
            spins += 1;
            if shutdown.poll_now() {
                return Err(ConnectionError::RingClosed);
            }
            if spins < 16 {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(Duration::from_micros(50)).await;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), 42);
        let delays: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        for (n, d) in delays.iter().enumerate() {
            let cap = Duration::from_millis(100 * (1 << n)).min(Duration::from_secs(2));
            assert!(*d >= cap / 2 && *d <= cap, "attempt {n}: {d:?} not in [{:?}, {cap:?}]", cap / 2);
        }
        assert_eq!(b.attempts(), 8);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
        // Two clients with different seeds spread out.
        let mut a = Backoff::new(Duration::from_secs(1), Duration::from_secs(1), 1);
        let mut c = Backoff::new(Duration::from_secs(1), Duration::from_secs(1), 2);
        assert_ne!((0..4).map(|_| a.next_delay()).collect::<Vec<_>>(), (0..4).map(|_| c.next_delay()).collect::<Vec<_>>());
    }

    #[test]
    fn terminal_errors_are_configuration_problems() {
        assert!(!ConnectionError::Tls { url: "wss://x".into(), reason: "expired".into() }.is_terminal());
        assert!(ConnectionError::BadUrl { url: "x".into(), reason: "no scheme" }.is_terminal());
        assert!(!ConnectionError::Timeout("connect").is_terminal());
        assert!(!ConnectionError::WebSocket("reset".into()).is_terminal());
    }

    #[tokio::test]
    async fn shutdown_by_signal_or_by_dropped_sender() {
        let (tx, rx) = broadcast::channel(1);
        let mut s = Shutdown::new(rx);
        assert!(!s.poll_now());
        tx.send(()).unwrap();
        s.recv().await;
        assert!(s.is_shutdown());
        let (tx, rx) = broadcast::channel::<()>(1);
        let mut s = Shutdown::new(rx);
        drop(tx);
        assert!(s.poll_now());
    }
}
