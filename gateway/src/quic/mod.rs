//! Remote agents over QUIC (quinn): the core's ingress and the agent's link.
//!
//! An agent process connects to the core over QUIC with TLS 1.3, opens one reliable
//! bidirectional stream, says who it is (agent id and token), and sends signals as rkyv frames;
//! each is answered `Accepted` or `Refused{reason}`. The core pushes the tops of its market
//! board to every connected agent as QUIC datagrams every snapshot interval: unreliable by
//! design, a lost one is simply replaced by the next (latest wins).
//!
//! What the ingress guarantees:
//! - Agent ids are bound to tokens: the id comes from the authenticated hello, never from a
//!   signal frame, so an agent can only ever trade its own sub-account. Tokens are compared in
//!   constant time and never logged.
//! - Only external agent ids (`FIRST_EXTERNAL_AGENT..MAX_AGENTS`) that are configured.
//! - A token bucket per agent (shared by all its connections) caps its signals per second.
//! - Every frame is validated before use; bad frames, unknown agents, wrong tokens, rate
//!   overruns, out-of-range values and a full ring are refused with a reason and counted.
//! - The ingress never waits on the ring: a full ring refuses the signal.
//! - The budget: each accepted signal enters the inbound ring as `Event::Signal` with the
//!   agent's id; the engine's aggregator turns it into a target for that agent's own
//!   sub-account and the risk stage refuses any order that would take the agent's margin in
//!   use past its equity (`RejectReason::AgentBudget`), like for any in-process agent.
//!
//! # Layout
//! - [`frames`]: the wire format (versioned, length-prefixed, validated rkyv archives).
//! - [`tls`]: certificates (files, or self-signed in development) and rustls configurations.
//! - [`server`]: [`QuicIngress`], the core's side, and its [`IngressStats`].
//! - [`client`]: [`QuicAgentLink`], the agent's side, reconnecting with backoff.

use sapphire_core::aggregate::{FIRST_EXTERNAL_AGENT, MAX_AGENTS};
use std::time::{Duration, Instant};

/// The agent's link.
pub mod client;
/// The wire format: frames, signals, snapshots.
pub mod frames;
/// The core's ingress.
pub mod server;
/// TLS configurations and certificates.
pub mod tls;

pub use client::{AgentLinkConfig, LinkStats, QuicAgentLink, SignalSender};
pub use frames::{Refusal, WireSignal};
pub use server::{IngressStats, QuicIngress, QuicIngressConfig, RemoteAgent};
pub use tls::{ClientTrust, ServerTls};

/// QUIC errors.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// Certificates, keys or the TLS configuration.
    #[error("tls: {0}")]
    Tls(String),
    /// The endpoint could not bind its UDP socket.
    #[error("binding {addr}: {reason}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        reason: String,
    },
    /// A configuration value is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// Connecting to the core failed (unreachable, handshake, timeout).
    #[error("connecting to {addr}: {reason}")]
    Connect {
        /// The core's address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The core refused the hello.
    #[error("the core refused agent {agent}: {reason}")]
    Refused {
        /// The agent id presented.
        agent: u16,
        /// Why.
        reason: Refusal,
    },
    /// The peer broke the protocol or the connection ended mid-handshake.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl QuicError {
    /// True when retrying cannot help: the configuration (certificates, agent id, token) is wrong.
    pub fn is_terminal(&self) -> bool {
        match self {
            QuicError::Tls(_) | QuicError::Config(_) | QuicError::Bind { .. } => true,
            QuicError::Refused { reason, .. } => reason.is_terminal(),
            QuicError::Connect { .. } | QuicError::Protocol(_) => false,
        }
    }
}

/// An agent's secret token: compared exactly, in constant time; never shown by `Debug`.
pub type AgentToken = crate::secret::SecretToken;

/// True for an id a remote agent may use.
pub fn is_external_agent(id: u16) -> bool {
    (FIRST_EXTERNAL_AGENT..MAX_AGENTS as u16).contains(&id)
}

/// A token bucket: `rate` tokens per second, at most `rate` banked (one second of burst).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens per second.
    rate: u32,
    /// Banked tokens, in millitokens (integer arithmetic, no drift).
    milli: u64,
    /// When `milli` was last refilled.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate` tokens per second.
    pub fn new(rate: u32, now: Instant) -> Self {
        Self { rate, milli: u64::from(rate) * 1_000, last: now }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        let refill = (elapsed.as_micros().min(u128::from(u64::MAX / 2)) as u64).saturating_mul(u64::from(self.rate)) / 1_000;
        if refill > 0 {
            self.milli = (self.milli.saturating_add(refill)).min(u64::from(self.rate) * 1_000);
            self.last = now;
        }
        if self.milli >= 1_000 {
            self.milli -= 1_000;
            true
        } else {
            false
        }
    }
}

/// The default snapshot interval.
pub const DEFAULT_SNAPSHOT_INTERVAL: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_rate_and_a_second_of_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(5, t0);
        assert_eq!((0..10).filter(|_| b.take(t0)).count(), 5, "a full bucket holds one second of tokens");
        assert!(!b.take(t0 + Duration::from_millis(150)), "150 ms refills less than one token at 5/s");
        assert!(b.take(t0 + Duration::from_millis(200)));
        assert!(!b.take(t0 + Duration::from_millis(201)));
        // Idle for a minute: still only one second of burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| b.take(later)).count(), 5);
        let mut zero = TokenBucket::new(0, t0);
        assert!(!zero.take(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn tokens_compare_whole_and_never_show() {
        let t = AgentToken::from_file_text("s3cret\n").unwrap();
        assert!(t.matches("s3cret"));
        assert!(!t.matches("s3cre") && !t.matches("s3cret!") && !t.matches("") && !t.matches("s3cret "));
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!(AgentToken::new("  ").is_err() && AgentToken::new(" s3cret").is_err());
        assert!(!is_external_agent(0) && !is_external_agent(1) && is_external_agent(2) && !is_external_agent(MAX_AGENTS as u16));
    }
}
