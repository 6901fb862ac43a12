//! Bybit v5 public market-data frames, parsed in place: `orderbook.{depth}.{symbol}`
//! snapshots and deltas, `publicTrade.{symbol}` (an array of trades), `tickers.{symbol}`
//! snapshots and deltas, and the operation replies (`subscribe` acks, `ping`/`pong`).
//!
//! Every public frame is an envelope `{"topic":…,"type":…,"ts":…,"data":…}` whose kind is
//! the topic's prefix. Fields are matched by name in any order; unknown ones are skipped.
//! Prices and quantities stay as the exchange's decimal text until
//! [`crate::bybit::BybitFeed`] turns them into fixed-point.

use crate::feed::FeedError;
use crate::json::{elements, fields, Elements, Levels, Value};
use sapphire_core::event::Side;

/// Which Bybit v5 public stream a feed reads (`wss://stream.bybit.com/v5/public/{spot,linear}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BybitCategory {
    /// Spot: tickers carry no best bid/ask (`bid1Price` …), so they produce no quotes.
    Spot,
    /// USDT/USDC linear perpetuals and futures.
    Linear,
}

impl BybitCategory {
    /// The category's name in Bybit's API (`category=` and the stream path).
    pub const fn as_str(self) -> &'static str {
        match self {
            BybitCategory::Spot => "spot",
            BybitCategory::Linear => "linear",
        }
    }
}

/// An order book message (`orderbook.{1,50,200,500,1000}.{symbol}`).
#[derive(Debug, Clone)]
pub struct BybitBook<'a> {
    /// Symbol (`data.s`).
    pub symbol: &'a str,
    /// `type` is `snapshot`: the levels replace the book.
    pub snapshot: bool,
    /// Update id (`data.u`): `+1` per message of the topic; `1` after a service restart.
    pub update_id: u64,
    /// Cross sequence (`data.seq`), comparable across depths of a symbol; not used for continuity.
    pub seq: Option<u64>,
    /// When the system produced the message, ms (`ts`).
    pub ts_ms: u64,
    /// Matching-engine time, ms (`cts`; missing from some older messages).
    pub cts_ms: Option<u64>,
    /// Bid levels, `[price, qty]`; qty `0` deletes the level.
    pub bids: Levels<'a>,
    /// Ask levels.
    pub asks: Levels<'a>,
}

impl BybitBook<'_> {
    /// True when the message replaces the book: a snapshot, or `u == 1` (Bybit restarted
    /// the service and starts the sequence again).
    #[inline]
    pub fn resets(&self) -> bool {
        self.snapshot || self.update_id == 1
    }

    /// The event time: the matching engine's when present, else the message's.
    #[inline]
    pub fn time_ms(&self) -> u64 {
        self.cts_ms.unwrap_or(self.ts_ms)
    }
}

/// One element of a `publicTrade` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BybitTrade<'a> {
    /// Symbol (`s`).
    pub symbol: &'a str,
    /// Trade id (`i`): the number when the id is numeric (spot), else [`trade_id_hash`] of
    /// the id text (linear ids are UUIDs).
    pub trade_id: u64,
    /// Price text (`p`).
    pub price: &'a [u8],
    /// Quantity text (`v`).
    pub qty: &'a [u8],
    /// The taker's side (`S`: `Buy` or `Sell`).
    pub taker_side: Side,
    /// Trade time, ms (`T`).
    pub time_ms: u64,
}

/// The trades of a `publicTrade` message, parsed as they are iterated; the first bad
/// element ends the iteration with its error.
#[derive(Debug, Clone)]
pub struct BybitTrades<'a> {
    elements: Elements<'a>,
}

impl<'a> Iterator for BybitTrades<'a> {
    type Item = Result<BybitTrade<'a>, FeedError>;

    fn next(&mut self) -> Option<Self::Item> {
        let element = match self.elements.next()? {
            Ok(Value::Obj(o)) => o,
            Ok(_) => return Some(Err(FeedError::Field("data"))),
            Err(e) => return Some(Err(e.into())),
        };
        Some(parse_trade(element))
    }
}

/// A `tickers` message: only the best bid/ask fields are kept. A field that is `None` was
/// left out (a delta leaves out what did not change; spot tickers never carry them);
/// `Some(b"")` is a field the venue sent empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BybitTicker<'a> {
    /// Symbol (`data.symbol`).
    pub symbol: &'a str,
    /// `type` is `snapshot`: every field is present that has a value.
    pub snapshot: bool,
    /// When the system produced the message, ms (`ts`).
    pub ts_ms: u64,
    /// Best bid price text (`bid1Price`).
    pub bid_price: Option<&'a [u8]>,
    /// Best bid size text (`bid1Size`).
    pub bid_qty: Option<&'a [u8]>,
    /// Best ask price text (`ask1Price`).
    pub ask_price: Option<&'a [u8]>,
    /// Best ask size text (`ask1Size`).
    pub ask_qty: Option<&'a [u8]>,
}

/// A reply to an operation: subscription acks and failures, `ping`/`pong`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BybitResponse<'a> {
    /// The operation (`op`: `subscribe`, `ping`, `pong`, …).
    pub op: &'a [u8],
    /// `success`, when the reply carries it (a failed subscription is `Some(false)`).
    pub success: Option<bool>,
    /// `ret_msg` (the reason of a failure; `pong` for linear heartbeats).
    pub ret_msg: &'a [u8],
    /// `req_id`, echoed from the request (empty when the request had none).
    pub req_id: &'a [u8],
}

/// One parsed frame.
#[derive(Debug, Clone)]
pub enum BybitFrame<'a> {
    /// `orderbook.*`.
    Book(BybitBook<'a>),
    /// `publicTrade.*`.
    Trades(BybitTrades<'a>),
    /// `tickers.*`.
    Ticker(BybitTicker<'a>),
    /// A reply to an operation.
    Response(BybitResponse<'a>),
    /// A topic we do not use (klines, liquidations, …): its name.
    Other(&'a [u8]),
}

/// FNV-1a, 64 bit: the trade id of a non-numeric Bybit trade id (`i`, a UUID on linear).
///
/// Deterministic across runs and builds, so replays reproduce the same ids. Distinct ids can
/// collide (the chance for n trades is about n²/2⁶⁵); trade ids label prints, nothing keys
/// state on them.
pub const fn trade_id_hash(id: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < id.len() {
        hash ^= id[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

fn need<T>(v: Option<T>, name: &'static str) -> Result<T, FeedError> {
    v.ok_or(FeedError::Field(name))
}

/// `snapshot` → true, `delta` → false.
fn is_snapshot(kind: Option<&[u8]>) -> Result<bool, FeedError> {
    match kind {
        Some(b"snapshot") => Ok(true),
        Some(b"delta") => Ok(false),
        _ => Err(FeedError::Field("type")),
    }
}

/// The envelope fields any Bybit public frame may carry.
#[derive(Default)]
struct Envelope<'a> {
    topic: Option<&'a [u8]>,
    kind: Option<&'a [u8]>,
    ts: Option<u64>,
    cts: Option<u64>,
    data: Option<Value<'a>>,
    op: Option<&'a [u8]>,
    success: Option<bool>,
    ret_msg: Option<&'a [u8]>,
    req_id: Option<&'a [u8]>,
}

/// Parses one frame.
pub fn parse_frame(bytes: &[u8]) -> Result<BybitFrame<'_>, FeedError> {
    let mut env = Envelope::default();
    for field in fields(bytes)? {
        let (key, v) = field?;
        match key {
            b"topic" => env.topic = v.as_str_bytes(),
            b"type" => env.kind = v.as_str_bytes(),
            b"ts" => env.ts = v.as_u64(),
            b"cts" => env.cts = v.as_u64(),
            b"data" => env.data = Some(v),
            b"op" => env.op = v.as_str_bytes(),
            b"success" => env.success = v.as_bool(),
            b"ret_msg" => env.ret_msg = v.as_str_bytes(),
            b"req_id" => env.req_id = v.as_str_bytes(),
            _ => {}
        }
    }
    let Some(topic) = env.topic else {
        return match env.op {
            Some(op) => Ok(BybitFrame::Response(BybitResponse {
                op,
                success: env.success,
                ret_msg: env.ret_msg.unwrap_or_default(),
                req_id: env.req_id.unwrap_or_default(),
            })),
            None => Err(FeedError::Field("topic")),
        };
    };
    if topic.starts_with(b"orderbook.") {
        parse_book(&env).map(BybitFrame::Book)
    } else if topic.starts_with(b"publicTrade.") {
        match need(env.data, "data")? {
            Value::Arr(a) => Ok(BybitFrame::Trades(BybitTrades { elements: elements(a)? })),
            _ => Err(FeedError::Field("data")),
        }
    } else if topic.starts_with(b"tickers.") {
        parse_ticker(&env).map(BybitFrame::Ticker)
    } else {
        Ok(BybitFrame::Other(topic))
    }
}

fn data_object<'a>(env: &Envelope<'a>) -> Result<&'a [u8], FeedError> {
    match env.data {
        Some(Value::Obj(o)) => Ok(o),
        _ => Err(FeedError::Field("data")),
    }
}

fn parse_book<'a>(env: &Envelope<'a>) -> Result<BybitBook<'a>, FeedError> {
    let snapshot = is_snapshot(env.kind)?;
    let (mut s, mut u, mut seq, mut b, mut a) = (None, None, None, None, None);
    for field in fields(data_object(env)?)? {
        let (key, v) = field?;
        match key {
            b"s" => s = v.as_symbol(),
            b"u" => u = v.as_u64(),
            b"seq" => seq = v.as_u64(),
            b"b" => b = Some(v),
            b"a" => a = Some(v),
            _ => {}
        }
    }
    Ok(BybitBook {
        symbol: need(s, "s")?,
        snapshot,
        update_id: need(u, "u")?,
        seq,
        ts_ms: need(env.ts, "ts")?,
        cts_ms: env.cts,
        bids: Levels::of(need(b, "b")?)?,
        asks: Levels::of(need(a, "a")?)?,
    })
}

fn parse_trade(element: &[u8]) -> Result<BybitTrade<'_>, FeedError> {
    let (mut t, mut s, mut side, mut v, mut p, mut i) = (None, None, None, None, None, None);
    for field in fields(element)? {
        let (key, value) = field?;
        match key {
            b"T" => t = value.as_u64(),
            b"s" => s = value.as_symbol(),
            b"S" => {
                side = match value.as_str_bytes() {
                    Some(b"Buy") => Some(Side::Buy),
                    Some(b"Sell") => Some(Side::Sell),
                    _ => None,
                }
            }
            b"v" => v = value.as_str_bytes(),
            b"p" => p = value.as_str_bytes(),
            b"i" => {
                i = match value {
                    Value::Str(id) | Value::Num(id) => Some(value.as_u64().unwrap_or_else(|| trade_id_hash(id))),
                    _ => None,
                }
            }
            _ => {}
        }
    }
    Ok(BybitTrade {
        symbol: need(s, "s")?,
        trade_id: need(i, "i")?,
        price: need(p, "p")?,
        qty: need(v, "v")?,
        taker_side: need(side, "S")?,
        time_ms: need(t, "T")?,
    })
}

fn parse_ticker<'a>(env: &Envelope<'a>) -> Result<BybitTicker<'a>, FeedError> {
    let snapshot = is_snapshot(env.kind)?;
    let (mut symbol, mut bid_price, mut bid_qty, mut ask_price, mut ask_qty) = (None, None, None, None, None);
    for field in fields(data_object(env)?)? {
        let (key, v) = field?;
        let (slot, name) = match key {
            b"symbol" => {
                symbol = v.as_symbol();
                continue;
            }
            b"bid1Price" => (&mut bid_price, "bid1Price"),
            b"bid1Size" => (&mut bid_qty, "bid1Size"),
            b"ask1Price" => (&mut ask_price, "ask1Price"),
            b"ask1Size" => (&mut ask_qty, "ask1Size"),
            _ => continue,
        };
        *slot = Some(v.as_str_bytes().ok_or(FeedError::Field(name))?);
    }
    Ok(BybitTicker { symbol: need(symbol, "symbol")?, snapshot, ts_ms: need(env.ts, "ts")?, bid_price, bid_qty, ask_price, ask_qty })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trade_id_hash_is_fnv1a_64() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(trade_id_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(trade_id_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(trade_id_hash(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
