//! Binance market-data frames, parsed in place: `bookTicker`, `trade`, `aggTrade`,
//! `depthUpdate` (spot and USD-M futures), the REST depth snapshot, subscription responses,
//! raw streams and combined-stream envelopes (`{"stream":…,"data":…}`).
//!
//! Fields are matched by name in any order; unknown ones are skipped. Prices and
//! quantities stay as the exchange's decimal text until [`crate::binance::BinanceFeed`]
//! turns them into fixed-point.

use crate::feed::FeedError;
use crate::json::{fields, Levels, Value};

/// Which Binance market a frame comes from (they differ in the depth sequencing rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinanceMarket {
    /// Spot (`/api/v3`, `stream.binance.com`): continuity is `U == previous u + 1`.
    Spot,
    /// USD-M futures (`/fapi/v1`, `fstream.binance.com`): continuity is `pu == previous u`.
    UsdM,
}

/// Best bid and ask (`bookTicker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BinanceBookTicker<'a> {
    /// Symbol.
    pub symbol: &'a str,
    /// Order book update id (`u`).
    pub update_id: u64,
    /// Transaction or event time, ms (futures only).
    pub time_ms: Option<u64>,
    /// Best bid price and quantity text.
    pub bid: (&'a [u8], &'a [u8]),
    /// Best ask price and quantity text.
    pub ask: (&'a [u8], &'a [u8]),
}

/// A trade (`trade`) or aggregate trade (`aggTrade`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BinanceTrade<'a> {
    /// Symbol.
    pub symbol: &'a str,
    /// Trade id (`t`) or aggregate trade id (`a`).
    pub trade_id: u64,
    /// Price text.
    pub price: &'a [u8],
    /// Quantity text.
    pub qty: &'a [u8],
    /// `m`: the buyer was the maker, so the taker sold.
    pub buyer_is_maker: bool,
    /// Trade time, ms.
    pub time_ms: u64,
    /// True for `aggTrade`.
    pub aggregate: bool,
}

/// A diff-depth update (`depthUpdate`).
#[derive(Debug, Clone)]
pub struct BinanceDepth<'a> {
    /// Symbol.
    pub symbol: &'a str,
    /// Event time, ms.
    pub time_ms: u64,
    /// First update id (`U`).
    pub first_id: u64,
    /// Final update id (`u`).
    pub last_id: u64,
    /// Previous final update id (`pu`, futures only).
    pub prev_id: Option<u64>,
    /// Bid levels.
    pub bids: Levels<'a>,
    /// Ask levels.
    pub asks: Levels<'a>,
}

/// A REST depth snapshot (`GET /api/v3/depth`, `/fapi/v1/depth`).
#[derive(Debug, Clone)]
pub struct BinanceSnapshot<'a> {
    /// `lastUpdateId`.
    pub last_update_id: u64,
    /// Transaction time, ms (futures only).
    pub time_ms: Option<u64>,
    /// Bid levels.
    pub bids: Levels<'a>,
    /// Ask levels.
    pub asks: Levels<'a>,
}

/// One parsed frame.
#[derive(Debug, Clone)]
pub enum BinanceFrame<'a> {
    /// `bookTicker`.
    BookTicker(BinanceBookTicker<'a>),
    /// `trade` or `aggTrade`.
    Trade(BinanceTrade<'a>),
    /// `depthUpdate`.
    Depth(BinanceDepth<'a>),
    /// A REST depth snapshot.
    Snapshot(BinanceSnapshot<'a>),
    /// A response to a request (`{"result":null,"id":1}`) or an error reply.
    Response,
    /// A stream we do not use (klines, tickers, mark price, …): its `e`.
    Other(&'a [u8]),
}

/// The fields any Binance market frame may carry, by their one-letter names.
#[derive(Default)]
struct Raw<'a> {
    e: Option<&'a [u8]>,
    big_e: Option<u64>,
    big_t: Option<u64>,
    s: Option<&'a str>,
    u: Option<u64>,
    big_u: Option<u64>,
    pu: Option<u64>,
    b: Option<Value<'a>>,
    big_b: Option<&'a [u8]>,
    a: Option<Value<'a>>,
    big_a: Option<&'a [u8]>,
    t: Option<u64>,
    p: Option<&'a [u8]>,
    q: Option<&'a [u8]>,
    m: Option<bool>,
    last_update_id: Option<u64>,
    bids: Option<Value<'a>>,
    asks: Option<Value<'a>>,
    data: Option<&'a [u8]>,
    response: bool,
}

fn need<T>(v: Option<T>, name: &'static str) -> Result<T, FeedError> {
    v.ok_or(FeedError::Field(name))
}

fn str_bytes<'a>(v: Value<'a>, name: &'static str) -> Result<&'a [u8], FeedError> {
    v.as_str_bytes().ok_or(FeedError::Field(name))
}

/// The payload of a combined-stream envelope when the frame has Binance's exact layout
/// `{"stream":"<name>","data":{…}}`, found without scanning the payload twice.
#[inline]
fn envelope_payload(bytes: &[u8]) -> Option<&[u8]> {
    let rest = bytes.strip_prefix(b"{\"stream\":\"")?;
    let close = rest.iter().position(|&c| c == b'"' || c == b'\\')?;
    if rest[close] != b'"' {
        return None;
    }
    let payload = rest[close + 1..].strip_prefix(b",\"data\":")?;
    let end = payload.iter().rposition(|&c| c == b'}')?;
    // The payload is everything up to the envelope's own closing brace.
    let inner = payload[..end].trim_ascii_end();
    (inner.first() == Some(&b'{') && inner.last() == Some(&b'}')).then_some(inner)
}

/// Parses one frame (raw stream or combined-stream envelope).
pub fn parse_frame(bytes: &[u8]) -> Result<BinanceFrame<'_>, FeedError> {
    if let Some(payload) = envelope_payload(bytes) {
        return parse_payload(payload);
    }
    parse_payload(bytes)
}

fn parse_payload(bytes: &[u8]) -> Result<BinanceFrame<'_>, FeedError> {
    let mut r = Raw::default();
    for field in fields(bytes)? {
        let (key, v) = field?;
        match key {
            b"e" => r.e = v.as_str_bytes(),
            b"E" => r.big_e = v.as_u64(),
            b"T" => r.big_t = v.as_u64(),
            b"s" => r.s = v.as_symbol(),
            b"u" => r.u = v.as_u64(),
            b"U" => r.big_u = v.as_u64(),
            b"pu" => r.pu = v.as_u64(),
            b"b" => r.b = Some(v),
            b"B" => r.big_b = v.as_str_bytes(),
            b"a" => r.a = Some(v),
            b"A" => r.big_a = v.as_str_bytes(),
            b"t" => r.t = v.as_u64(),
            b"p" => r.p = v.as_str_bytes(),
            b"q" => r.q = v.as_str_bytes(),
            b"m" => r.m = v.as_bool(),
            b"lastUpdateId" => r.last_update_id = v.as_u64(),
            b"bids" => r.bids = Some(v),
            b"asks" => r.asks = Some(v),
            b"data" => {
                if let Value::Obj(o) = v {
                    r.data = Some(o);
                }
            }
            b"result" | b"id" | b"code" => r.response = true,
            _ => {}
        }
    }
    if let Some(data) = r.data {
        return parse_payload(data);
    }
    match r.e {
        Some(b"depthUpdate") => Ok(BinanceFrame::Depth(BinanceDepth {
            symbol: need(r.s, "s")?,
            time_ms: need(r.big_e, "E")?,
            first_id: need(r.big_u, "U")?,
            last_id: need(r.u, "u")?,
            prev_id: r.pu,
            bids: Levels::of(need(r.b, "b")?)?,
            asks: Levels::of(need(r.a, "a")?)?,
        })),
        Some(e @ (b"trade" | b"aggTrade")) => {
            let aggregate = e == b"aggTrade";
            let trade_id = if aggregate { need(r.a, "a")?.as_u64().ok_or(FeedError::Field("a"))? } else { need(r.t, "t")? };
            Ok(BinanceFrame::Trade(BinanceTrade {
                symbol: need(r.s, "s")?,
                trade_id,
                price: need(r.p, "p")?,
                qty: need(r.q, "q")?,
                buyer_is_maker: need(r.m, "m")?,
                time_ms: need(r.big_t.or(r.big_e), "T")?,
                aggregate,
            }))
        }
        // Spot bookTicker frames carry no `e` at all: a frame without `e` that has `u` and no
        // `lastUpdateId` is one, and a bad one is a counted skip, never an ignored frame.
        Some(b"bookTicker") => book_ticker(&r),
        None if r.last_update_id.is_none() && (r.u.is_some() || r.big_b.is_some() || r.big_a.is_some()) => book_ticker(&r),
        None if r.last_update_id.is_some() => Ok(BinanceFrame::Snapshot(BinanceSnapshot {
            last_update_id: need(r.last_update_id, "lastUpdateId")?,
            time_ms: r.big_t.or(r.big_e),
            bids: Levels::of(need(r.bids, "bids")?)?,
            asks: Levels::of(need(r.asks, "asks")?)?,
        })),
        None if r.response => Ok(BinanceFrame::Response),
        Some(other) => Ok(BinanceFrame::Other(other)),
        None => Err(FeedError::Field("e")),
    }
}

fn book_ticker<'a>(r: &Raw<'a>) -> Result<BinanceFrame<'a>, FeedError> {
    Ok(BinanceFrame::BookTicker(BinanceBookTicker {
        symbol: need(r.s, "s")?,
        update_id: need(r.u, "u")?,
        time_ms: r.big_t.or(r.big_e),
        bid: (str_bytes(need(r.b, "b")?, "b")?, need(r.big_b, "B")?),
        ask: (str_bytes(need(r.a, "a")?, "a")?, need(r.big_a, "A")?),
    }))
}
