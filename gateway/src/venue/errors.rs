//! Venue errors: transport failures apart from the venue's own refusals, each refusal mapped
//! to the core's [`RejectReason`] with the venue's code and message kept.

use sapphire_core::event::RejectReason;
use std::time::Duration;

/// What went wrong talking to a venue.
#[derive(Debug, thiserror::Error)]
pub enum VenueError {
    /// The request never reached the venue (connect failure, bad URL): nothing happened there.
    #[error("{venue}: request not sent: {reason}")]
    NotSent {
        /// The venue.
        venue: &'static str,
        /// Why.
        reason: String,
    },
    /// Sent, but no usable answer (timeout, connection lost, 5xx): the venue may or may not
    /// have acted. For an order this means UNKNOWN state: query it, never resend it.
    #[error("{venue}: outcome unknown: {reason}")]
    Unknown {
        /// The venue.
        venue: &'static str,
        /// Why.
        reason: String,
    },
    /// The venue refused the request with its own code and message.
    #[error("{venue} refused ({code}): {msg}")]
    Refused {
        /// The venue.
        venue: &'static str,
        /// The venue's error code (Binance `code`, Bybit `retCode`).
        code: i64,
        /// The venue's message.
        msg: String,
        /// What the core calls it.
        reason: RejectReason,
        /// HTTP status.
        status: u16,
    },
    /// Rate limited (HTTP 429/418 or a rate-limit code); retry no earlier than `retry_after`.
    #[error("{venue}: rate limited (HTTP {status}), retry after {retry_after:?}")]
    RateLimited {
        /// The venue.
        venue: &'static str,
        /// HTTP status (429, or 418 for an IP ban).
        status: u16,
        /// How long to stay away.
        retry_after: Duration,
    },
    /// Refused here before sending: the order breaks the instrument's filters.
    #[error("order refused before sending: {reason:?}")]
    Filter {
        /// Tick, lot or minimum notional.
        reason: RejectReason,
    },
    /// The answer could not be understood.
    #[error("{venue}: bad response: {reason}")]
    Decode {
        /// The venue.
        venue: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The instrument is not known to this client.
    #[error("unknown instrument {0}")]
    UnknownInstrument(u32),
}

impl VenueError {
    /// True when retrying the same request cannot help (a refusal, a filter, bad input);
    /// false for transport trouble and rate limits.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, Self::NotSent { .. } | Self::Unknown { .. } | Self::RateLimited { .. })
    }

    /// The reject reason to report for an order that failed with this error.
    pub fn reject_reason(&self) -> RejectReason {
        match self {
            Self::Refused { reason, .. } | Self::Filter { reason } => *reason,
            Self::RateLimited { .. } => RejectReason::VenueRateLimited,
            _ => RejectReason::VenueOther,
        }
    }

    /// The venue's code, when it answered with one.
    pub fn code(&self) -> Option<i64> {
        match self {
            Self::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Binance error code → reject reason (spot and USD-M; see their error-code pages).
pub fn binance_reason(code: i64, msg: &str) -> RejectReason {
    match code {
        -1003 | -1015 | -1008 => RejectReason::VenueRateLimited,
        -1013 | -4164 | -1111 | -4014 | -4003 | -4004 | -4005 => RejectReason::VenueFilter,
        -2018 | -2019 => RejectReason::VenueInsufficientBalance,
        -2011 | -2013 => RejectReason::VenueUnknownOrder,
        -2010 => {
            let m = msg.to_ascii_lowercase();
            if m.contains("insufficient balance") {
                RejectReason::VenueInsufficientBalance
            } else if m.contains("filter") || m.contains("notional") {
                RejectReason::VenueFilter
            } else {
                RejectReason::VenueOther
            }
        }
        _ => RejectReason::VenueOther,
    }
}

/// Bybit v5 `retCode` → reject reason.
pub fn bybit_reason(code: i64) -> RejectReason {
    match code {
        10006 | 10018 | 170005 => RejectReason::VenueRateLimited,
        110004 | 110007 | 110012 | 110045 | 170131 => RejectReason::VenueInsufficientBalance,
        110001 | 110008 | 170213 => RejectReason::VenueUnknownOrder,
        110003 | 110017 | 110094 | 170124 | 170136 | 170137 | 170140 => RejectReason::VenueFilter,
        _ => RejectReason::VenueOther,
    }
}
