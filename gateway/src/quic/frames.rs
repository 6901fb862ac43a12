//! The wire format between a remote agent and the core: versioned, length-prefixed rkyv
//! frames on one reliable bidirectional stream, and market snapshots as datagrams.
//!
//! Every frame, on the stream or in a datagram, is `len:u32le version:u16le reserved:u16`
//! followed by `len` bytes: the rkyv archive of an [`AgentFrame`] (agent → core), a
//! [`CoreFrame`] (core → agent) or a [`Snapshot`] (datagrams). Archives are copied into a
//! 16-byte-aligned buffer and validated (rkyv's checked access) before anything reads them:
//! the bytes come from another process, possibly a hostile one.
//!
//! The agent opens the stream and sends [`AgentFrame::Hello`]; the core answers
//! [`CoreFrame::Welcome`] (with the instrument names, so ids mean the same on both sides) or
//! [`CoreFrame::Refused`] and closes. Then each [`AgentFrame::Signal`] gets
//! [`CoreFrame::Accepted`] or [`CoreFrame::Refused`], in order.

use rkyv::rancor::Error as RkyvError;
use rkyv::util::AlignedVec;
use sapphire_core::board::Top;
use sapphire_core::fixed::{Price, Quantity};
use sapphire_core::instrument::InstrumentId;

/// The frame format version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// The TLS ALPN protocol name of the agent link.
pub const ALPN: &[u8] = b"sapphire-agents/1";
/// Bytes before each frame's archive.
pub const HEADER_LEN: usize = 8;
/// Largest frame an agent may send (a hello with its token, or a signal).
pub const MAX_AGENT_FRAME: usize = 1_024;
/// Largest frame the core sends (a welcome with every instrument name).
pub const MAX_CORE_FRAME: usize = 1 << 20;

/// What a remote agent sends.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum AgentFrame {
    /// First frame on the stream: who the agent is and its token.
    Hello {
        /// The agent id (an external id, configured on the core).
        agent: u16,
        /// The agent's secret token.
        token: String,
    },
    /// A signal, attributed to the agent named in the hello.
    Signal(WireSignal),
}

/// A signal on the wire: no agent field (the connection's authenticated agent is used).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WireSignal {
    /// Instrument id, as numbered by the core's welcome.
    pub instrument: u32,
    /// Direction and strength, -10_000 ..= 10_000 bps.
    pub strength_bps: i32,
    /// Confidence, 0 ..= 10_000 bps.
    pub confidence_bps: u16,
    /// Time to live, 1 ..= 3_600_000 ms.
    pub ttl_ms: u64,
    /// Agent-local id, echoed in the core's answer.
    pub signal_id: u64,
}

/// Why the core refused a hello or a signal; the `u8` is stable (it is on the wire).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug))]
#[repr(u8)]
pub enum Refusal {
    /// Not a valid frame (validation failed, wrong version, too large, unexpected kind).
    BadFrame = 0,
    /// The agent id is not configured, or not an external agent id.
    UnknownAgent = 1,
    /// The token does not match the agent's.
    BadToken = 2,
    /// The agent sent more signals per second than it may.
    RateLimited = 3,
    /// The core's inbound ring was full (the signal is dropped, never waited for).
    RingFull = 4,
    /// A value out of range (instrument, strength, confidence, time to live).
    OutOfRange = 5,
}

impl Refusal {
    /// Every reason, in code order.
    pub const ALL: [Refusal; 6] =
        [Refusal::BadFrame, Refusal::UnknownAgent, Refusal::BadToken, Refusal::RateLimited, Refusal::RingFull, Refusal::OutOfRange];

    /// The `reason` label in metrics and logs.
    pub const fn label(self) -> &'static str {
        match self {
            Refusal::BadFrame => "bad_frame",
            Refusal::UnknownAgent => "unknown_agent",
            Refusal::BadToken => "bad_token",
            Refusal::RateLimited => "rate_limited",
            Refusal::RingFull => "ring_full",
            Refusal::OutOfRange => "out_of_range",
        }
    }

    /// True when the core closes the connection after this refusal (the agent must not
    /// simply retry: its configuration is wrong).
    pub const fn is_terminal(self) -> bool {
        matches!(self, Refusal::UnknownAgent | Refusal::BadToken)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// What the core sends on the stream.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum CoreFrame {
    /// The hello was accepted.
    Welcome {
        /// The authenticated agent id.
        agent: u16,
        /// Instrument symbols in id order.
        instruments: Vec<String>,
        /// How often market snapshots are sent, ms.
        snapshot_interval_ms: u32,
        /// Signals per second the agent may send.
        max_signals_per_sec: u32,
    },
    /// The signal is in the core's inbound ring.
    Accepted {
        /// The signal's id.
        signal_id: u64,
    },
    /// The hello or signal was refused (`signal_id` 0 for a hello or an unreadable frame).
    Refused {
        /// The signal's id.
        signal_id: u64,
        /// Why.
        reason: Refusal,
    },
}

/// One instrument's top of book in a snapshot datagram.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WireTop {
    /// Instrument id.
    pub instrument: u32,
    /// False while the core's book is out of sync.
    pub in_sync: bool,
    /// Best bid, raw fixed-point.
    pub bid: i64,
    /// Size at the best bid, raw.
    pub bid_qty: i64,
    /// Best ask, raw.
    pub ask: i64,
    /// Size at the best ask, raw.
    pub ask_qty: i64,
    /// Last trade price, raw.
    pub last_trade: i64,
    /// Event time of the update, ns.
    pub ts_event: u64,
}

impl WireTop {
    /// From the core's board.
    pub fn from_top(instrument: InstrumentId, t: &Top) -> Self {
        Self {
            instrument: instrument.0,
            in_sync: t.in_sync,
            bid: t.bid.raw,
            bid_qty: t.bid_qty.raw,
            ask: t.ask.raw,
            ask_qty: t.ask_qty.raw,
            last_trade: t.last_trade.raw,
            ts_event: t.ts_event,
        }
    }

    /// Into a board entry (`updates` is the receiving board's own count).
    pub fn to_top(&self) -> Top {
        Top {
            bid: Price::from_raw(self.bid),
            bid_qty: Quantity::from_raw(self.bid_qty),
            ask: Price::from_raw(self.ask),
            ask_qty: Quantity::from_raw(self.ask_qty),
            last_trade: Price::from_raw(self.last_trade),
            ts_event: self.ts_event,
            updates: 0,
            in_sync: self.in_sync,
        }
    }
}

/// A market snapshot datagram: some instruments' tops at one moment. Datagrams may be lost or
/// reordered; `seq` rises with every snapshot of a connection, so a receiver keeps the latest.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Snapshot {
    /// Snapshot number on this connection.
    pub seq: u64,
    /// The tops (a board too large for one datagram is split over several).
    pub tops: Vec<WireTop>,
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than the header or than the header says.
    #[error("truncated frame: {0} bytes")]
    Truncated(usize),
    /// The header announces more than the receiver takes.
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    Oversized {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A version this build does not speak.
    #[error("frame version {0}, this build speaks {PROTOCOL_VERSION}")]
    Version(u16),
    /// The archive failed validation.
    #[error("invalid archive: {0}")]
    Invalid(String),
}

/// The header for an archive of `len` bytes.
pub fn header(len: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&(len as u32).to_le_bytes());
    h[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    h
}

/// Reads a header: the archive's length and the frame's version, refusing lengths over `max`.
pub fn parse_header(h: &[u8; HEADER_LEN], max: usize) -> Result<(usize, u16), FrameError> {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let version = u16::from_le_bytes([h[4], h[5]]);
    if len > max {
        return Err(FrameError::Oversized { len, max });
    }
    Ok((len, version))
}

fn frame_of(archive: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + archive.len());
    out.extend_from_slice(&header(archive.len()));
    out.extend_from_slice(archive);
    out
}

/// An agent frame, header included.
pub fn encode_agent(frame: &AgentFrame) -> Vec<u8> {
    // Serializing plain data into a growable buffer cannot fail.
    frame_of(&rkyv::to_bytes::<RkyvError>(frame).map(|v| v.to_vec()).unwrap_or_default())
}

/// A core frame, header included.
pub fn encode_core(frame: &CoreFrame) -> Vec<u8> {
    frame_of(&rkyv::to_bytes::<RkyvError>(frame).map(|v| v.to_vec()).unwrap_or_default())
}

/// A snapshot datagram, header included.
pub fn encode_snapshot(s: &Snapshot) -> Vec<u8> {
    frame_of(&rkyv::to_bytes::<RkyvError>(s).map(|v| v.to_vec()).unwrap_or_default())
}

/// Validates an agent frame's archive in place (`aligned` holds exactly the archive).
pub fn access_agent(aligned: &AlignedVec<16>) -> Result<&ArchivedAgentFrame, FrameError> {
    rkyv::access::<ArchivedAgentFrame, RkyvError>(aligned).map_err(|e| FrameError::Invalid(e.to_string()))
}

/// Validates and reads a core frame's archive.
pub fn decode_core(aligned: &AlignedVec<16>) -> Result<CoreFrame, FrameError> {
    rkyv::from_bytes::<CoreFrame, RkyvError>(aligned).map_err(|e| FrameError::Invalid(e.to_string()))
}

/// Validates a whole datagram (header and archive) and reads its snapshot.
pub fn decode_snapshot(datagram: &[u8]) -> Result<Snapshot, FrameError> {
    let h: &[u8; HEADER_LEN] = datagram.get(..HEADER_LEN).and_then(|h| h.try_into().ok()).ok_or(FrameError::Truncated(datagram.len()))?;
    let (len, version) = parse_header(h, datagram.len() - HEADER_LEN)?;
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version(version));
    }
    if len != datagram.len() - HEADER_LEN {
        return Err(FrameError::Truncated(datagram.len()));
    }
    let mut aligned = AlignedVec::<16>::with_capacity(len);
    aligned.extend_from_slice(&datagram[HEADER_LEN..]);
    rkyv::from_bytes::<Snapshot, RkyvError>(&aligned).map_err(|e| FrameError::Invalid(e.to_string()))
}

/// Tops per datagram so that a snapshot fits in `max_datagram` bytes.
pub fn tops_per_datagram(max_datagram: usize) -> usize {
    // Header, the snapshot's own fields and the vector's header, with room to spare.
    let overhead = HEADER_LEN + 64;
    (max_datagram.saturating_sub(overhead) / std::mem::size_of::<ArchivedWireTop>()).max(1)
}

/// Reading frames off a QUIC receive stream.
#[derive(Debug)]
pub enum ReadError {
    /// The stream or connection ended (cleanly or not).
    Closed(String),
    /// A frame over the limit: the stream cannot be resynchronized.
    Frame(FrameError),
}

/// Reads the next frame's archive into `buf` (cleared first); `Ok(None)` at a clean end of
/// stream, `Ok(Some(version))` otherwise. An oversized header is an error (the rest of the
/// stream cannot be trusted); a frame of another version is read whole and returned, for the
/// caller to refuse.
pub async fn read_frame(recv: &mut quinn::RecvStream, buf: &mut AlignedVec<16>, max: usize) -> Result<Option<u16>, ReadError> {
    let mut h = [0u8; HEADER_LEN];
    match recv.read_exact(&mut h).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(ReadError::Closed(e.to_string())),
    }
    let (len, version) = parse_header(&h, max).map_err(ReadError::Frame)?;
    buf.clear();
    buf.resize(len, 0);
    recv.read_exact(&mut buf[..]).await.map_err(|e| ReadError::Closed(e.to_string()))?;
    Ok(Some(version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(frame: &[u8]) -> AlignedVec<16> {
        let (len, version) = parse_header(frame[..HEADER_LEN].try_into().unwrap(), MAX_CORE_FRAME).unwrap();
        assert_eq!((len, version), (frame.len() - HEADER_LEN, PROTOCOL_VERSION));
        let mut a = AlignedVec::<16>::new();
        a.extend_from_slice(&frame[HEADER_LEN..]);
        a
    }

    #[test]
    fn frames_round_trip_through_validation() {
        let hello = encode_agent(&AgentFrame::Hello { agent: 3, token: "t0k".into() });
        match access_agent(&archive(&hello)).unwrap() {
            ArchivedAgentFrame::Hello { agent, token } => assert_eq!((agent.to_native(), token.as_str()), (3, "t0k")),
            other => panic!("{other:?}"),
        }
        let s = WireSignal { instrument: 1, strength_bps: -2_500, confidence_bps: 9_000, ttl_ms: 5_000, signal_id: 77 };
        match access_agent(&archive(&encode_agent(&AgentFrame::Signal(s)))).unwrap() {
            ArchivedAgentFrame::Signal(a) => {
                assert_eq!((a.instrument.to_native(), a.strength_bps.to_native(), a.signal_id.to_native()), (1, -2_500, 77))
            }
            other => panic!("{other:?}"),
        }
        let welcome = CoreFrame::Welcome {
            agent: 3,
            instruments: vec!["BTCUSDT".into(), "ETHUSDT".into()],
            snapshot_interval_ms: 100,
            max_signals_per_sec: 5,
        };
        assert_eq!(decode_core(&archive(&encode_core(&welcome))).unwrap(), welcome);
        let refused = CoreFrame::Refused { signal_id: 9, reason: Refusal::RateLimited };
        assert_eq!(decode_core(&archive(&encode_core(&refused))).unwrap(), refused);
        let snap = Snapshot { seq: 4, tops: vec![WireTop { instrument: 1, bid: 10, ask: 12, in_sync: true, ..WireTop::default() }] };
        assert_eq!(decode_snapshot(&encode_snapshot(&snap)).unwrap(), snap);
    }

    #[test]
    fn garbage_is_refused_never_a_panic() {
        // Bytes that are no archive, an archive cut short, random bytes at every length.
        let mut a = AlignedVec::<16>::new();
        a.extend_from_slice(&[0xff; 24]);
        assert!(access_agent(&a).is_err());
        let hello = encode_agent(&AgentFrame::Hello { agent: 3, token: "t0k".into() });
        let mut cut = AlignedVec::<16>::new();
        cut.extend_from_slice(&hello[HEADER_LEN..hello.len() - 3]);
        assert!(access_agent(&cut).is_err());
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..200 {
            let mut a = AlignedVec::<16>::new();
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                a.push(x as u8);
            }
            let _ = access_agent(&a);
            let _ = decode_core(&a);
            let _ = decode_snapshot(&a);
        }
        assert_eq!(decode_snapshot(&[1, 2, 3]), Err(FrameError::Truncated(3)));
        let mut wrong = encode_snapshot(&Snapshot { seq: 1, tops: vec![] });
        wrong[4] = 9;
        assert_eq!(decode_snapshot(&wrong), Err(FrameError::Version(9)));
        assert!(matches!(parse_header(&header(5_000), MAX_AGENT_FRAME), Err(FrameError::Oversized { len: 5_000, .. })));
    }

    #[test]
    fn a_full_datagram_of_tops_fits() {
        let n = tops_per_datagram(1_200);
        assert!(n >= 10, "{n}");
        let snap = Snapshot { seq: u64::MAX, tops: vec![WireTop { ts_event: u64::MAX, ..WireTop::default() }; n] };
        assert!(encode_snapshot(&snap).len() <= 1_200, "{}", encode_snapshot(&snap).len());
    }
}
