//! The tape: recorded frames (`<recv_ns> <json>` lines, gzip or plain; plain JSON lines
//! too) loaded into memory in time order, each tagged with the stream it belongs to, plus
//! the REST depth snapshots found in the recordings.

use super::LocalExchangeError;
use crate::binance::market::{parse_frame, BinanceFrame};
use crate::json::{fields, Value};
use std::io::Read;
use std::path::Path;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A stream as subscriptions match it: symbol (lower case) and channel, without the update
/// speed (`btcusdt@depth@100ms` and `btcusdt@depth@0ms` are both `btcusdt`/`depth`: the
/// recording decides the speed).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    /// Symbol, lower case.
    pub symbol: String,
    /// `depth`, `bookTicker`, `trade`, `aggTrade`, `depth20`, …
    pub channel: String,
}

impl StreamKey {
    /// From a Binance stream name (`btcusdt@depth@100ms`); `None` without an `@`.
    pub fn parse(name: &str) -> Option<Self> {
        let mut parts = name.split('@');
        let symbol = parts.next()?.to_ascii_lowercase();
        let channel = parts.next()?.to_string();
        (!symbol.is_empty() && !channel.is_empty()).then_some(Self { symbol, channel })
    }

    /// The stream name (without an update speed).
    pub fn name(&self) -> String {
        format!("{}@{}", self.symbol, self.channel)
    }
}

/// Which venue's wire format a frame is in (a session serves only its own venue's frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TapeVenue {
    /// Binance streams (`{"stream","data"}` envelopes or raw payloads).
    Binance,
    /// Bybit v5 public topics (`{"topic","type","ts","data"}`).
    Bybit,
}

/// The ids and levels of a depth update, for the exchange's own book.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepthUpdate {
    /// `U`.
    pub first_id: u64,
    /// `u`.
    pub last_id: u64,
    /// Event time, ms.
    pub time_ms: u64,
    /// Bid levels `(price, qty)` as text.
    pub bids: Vec<(String, String)>,
    /// Ask levels.
    pub asks: Vec<(String, String)>,
    /// The levels replace the book (a Bybit snapshot, or `u == 1` after a venue restart).
    pub reset: bool,
}

/// One recorded stream frame.
#[derive(Debug, Clone)]
pub struct TapeFrame {
    /// When it was received at recording time, ns (0 when the line had no timestamp).
    pub recv_ns: u64,
    /// Its stream.
    pub key: StreamKey,
    /// As a combined stream sends it: `{"stream":…,"data":…}`.
    pub combined: Utf8Bytes,
    /// As a raw stream (`/ws`) sends it: the payload alone.
    pub raw: Utf8Bytes,
    /// Set for depth updates.
    pub depth: Option<DepthUpdate>,
    /// The frame's wire format.
    pub venue: TapeVenue,
}

/// A REST depth snapshot from a recording.
#[derive(Debug, Clone)]
pub struct RecordedSnapshot {
    /// Its symbol, upper case (the last depth symbol before it in the same file).
    pub symbol: String,
    /// `lastUpdateId`.
    pub last_update_id: u64,
    /// Bid levels.
    pub bids: Vec<(String, String)>,
    /// Ask levels.
    pub asks: Vec<(String, String)>,
}

/// Everything the exchange replays.
#[derive(Debug, Clone, Default)]
pub struct Tape {
    /// Stream frames in time order.
    pub frames: Vec<TapeFrame>,
    /// REST snapshots in file order.
    pub snapshots: Vec<RecordedSnapshot>,
    /// Lines that were not usable frames (responses, malformed JSON).
    pub skipped_lines: u64,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn levels(l: crate::json::Levels<'_>) -> Vec<(String, String)> {
    l.filter_map(Result::ok).map(|(p, q)| (text(p), text(q))).collect()
}

/// The stream key of a Bybit topic (`orderbook.50.BTCUSDT` → `btcusdt`/`orderbook`,
/// `publicTrade.BTCUSDT` → `btcusdt`/`publicTrade`): the depth is left out, as Binance's
/// update speed is (the recording decides it). `None` for anything else.
pub fn bybit_key(topic: &str) -> Option<StreamKey> {
    let (channel, rest) = topic.split_once('.')?;
    let symbol = match channel {
        "orderbook" => {
            let (depth, symbol) = rest.split_once('.')?;
            depth.parse::<u32>().ok()?;
            symbol
        }
        "publicTrade" | "tickers" => rest,
        _ => return None,
    };
    let ok = !symbol.is_empty() && symbol.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    ok.then(|| StreamKey { symbol: symbol.to_ascii_lowercase(), channel: channel.to_string() })
}

/// A Bybit v5 public frame (one with a `topic`), or `None` for anything else (Binance frames,
/// operation replies, malformed lines).
fn bybit_frame(recv_ns: u64, json: &str) -> Option<TapeFrame> {
    use crate::bybit::market::{parse_frame, BybitFrame};
    let frame = parse_frame(json.as_bytes()).ok()?;
    let (key, depth) = match frame {
        BybitFrame::Book(b) => {
            let key = StreamKey { symbol: b.symbol.to_ascii_lowercase(), channel: "orderbook".into() };
            let update = DepthUpdate {
                first_id: b.update_id,
                last_id: b.update_id,
                time_ms: b.time_ms(),
                reset: b.resets(),
                bids: levels(b.bids),
                asks: levels(b.asks),
            };
            (key, Some(update))
        }
        BybitFrame::Trades(_) | BybitFrame::Ticker(_) => {
            let mut topic = None;
            for (k, v) in fields(json.as_bytes()).ok()?.flatten() {
                if k == b"topic" {
                    topic = v.as_plain_str();
                }
            }
            (bybit_key(topic?)?, None)
        }
        BybitFrame::Response(_) | BybitFrame::Other(_) => return None,
    };
    let text: Utf8Bytes = json.to_string().into();
    Some(TapeFrame { recv_ns, key, combined: text.clone(), raw: text, depth, venue: TapeVenue::Bybit })
}

impl Tape {
    /// Loads recordings (gzip detected by its magic bytes) and merges them by receive time.
    pub fn load(paths: &[impl AsRef<Path>]) -> Result<Self, LocalExchangeError> {
        let mut tape = Tape::default();
        for path in paths {
            let path = path.as_ref();
            let io = |e: std::io::Error| LocalExchangeError::Recording { path: path.display().to_string(), reason: e.to_string() };
            let bytes = std::fs::read(path).map_err(io)?;
            let text = if bytes.starts_with(&[0x1f, 0x8b]) {
                let mut s = String::new();
                flate2::read::MultiGzDecoder::new(bytes.as_slice()).read_to_string(&mut s).map_err(io)?;
                s
            } else {
                String::from_utf8(bytes)
                    .map_err(|_| LocalExchangeError::Recording { path: path.display().to_string(), reason: "not UTF-8".into() })?
            };
            tape.add_text(&path.display().to_string(), &text)?;
        }
        Ok(tape)
    }

    /// Adds one recording's text (`name` is for messages); keeps frames sorted by time.
    pub fn add_text(&mut self, name: &str, text: &str) -> Result<(), LocalExchangeError> {
        let mut last_depth_symbol: Option<String> = None;
        let mut last_recv = 0u64;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (recv, json) = match line.split_once(' ') {
                Some((ts, rest)) if ts.bytes().all(|b| b.is_ascii_digit()) => (ts.parse().unwrap_or(last_recv), rest.trim()),
                _ => (last_recv, line),
            };
            last_recv = recv;
            if let Some(frame) = bybit_frame(recv, json) {
                if frame.key.channel == "orderbook" {
                    last_depth_symbol = Some(frame.key.symbol.to_ascii_uppercase());
                }
                self.frames.push(frame);
                continue;
            }
            // The envelope's stream name and payload, if it has one.
            let mut stream = None;
            let mut payload = json.as_bytes();
            if let Ok(f) = fields(json.as_bytes()) {
                let (mut s, mut d) = (None, None);
                for (k, v) in f.flatten() {
                    match (k, v) {
                        (b"stream", v) => s = v.as_plain_str(),
                        (b"data", Value::Obj(o)) => d = Some(o),
                        _ => {}
                    }
                }
                if let (Some(s), Some(d)) = (s, d) {
                    stream = Some(s.to_string());
                    payload = d;
                }
            }
            let parsed = match parse_frame(payload) {
                Ok(p) => p,
                Err(_) => {
                    self.skipped_lines += 1;
                    continue;
                }
            };
            let (key, depth) = match parsed {
                BinanceFrame::Snapshot(s) if stream.is_none() => {
                    let Some(symbol) = last_depth_symbol.clone() else {
                        return Err(LocalExchangeError::Recording {
                            path: name.to_string(),
                            reason: format!("line {}: a depth snapshot before any depth update (its symbol is unknown)", n + 1),
                        });
                    };
                    self.snapshots.push(RecordedSnapshot {
                        symbol,
                        last_update_id: s.last_update_id,
                        bids: levels(s.bids),
                        asks: levels(s.asks),
                    });
                    continue;
                }
                BinanceFrame::Depth(d) => {
                    last_depth_symbol = Some(d.symbol.to_ascii_uppercase());
                    let key = StreamKey { symbol: d.symbol.to_ascii_lowercase(), channel: "depth".into() };
                    let update = DepthUpdate {
                        first_id: d.first_id,
                        last_id: d.last_id,
                        time_ms: d.time_ms,
                        bids: levels(d.bids),
                        asks: levels(d.asks),
                        reset: false,
                    };
                    (key, Some(update))
                }
                BinanceFrame::BookTicker(t) => (StreamKey { symbol: t.symbol.to_ascii_lowercase(), channel: "bookTicker".into() }, None),
                BinanceFrame::Trade(t) => {
                    let channel = if t.aggregate { "aggTrade" } else { "trade" };
                    (StreamKey { symbol: t.symbol.to_ascii_lowercase(), channel: channel.into() }, None)
                }
                _ => match stream.as_deref().and_then(StreamKey::parse) {
                    Some(key) => (key, None),
                    None => {
                        self.skipped_lines += 1;
                        continue;
                    }
                },
            };
            let raw = String::from_utf8_lossy(payload).into_owned();
            let combined = if stream.is_some() { json.to_string() } else { format!("{{\"stream\":\"{}\",\"data\":{raw}}}", key.name()) };
            self.frames.push(TapeFrame {
                recv_ns: recv,
                key,
                combined: combined.into(),
                raw: raw.into(),
                depth,
                venue: TapeVenue::Binance,
            });
        }
        // Stable: frames with equal times keep their file order.
        self.frames.sort_by_key(|f| f.recv_ns);
        Ok(())
    }

    /// The symbols served (upper case), sorted.
    pub fn symbols(&self) -> Vec<String> {
        let mut s: Vec<String> = self.frames.iter().map(|f| f.key.symbol.to_ascii_uppercase()).collect();
        s.extend(self.snapshots.iter().map(|s| s.symbol.clone()));
        s.sort();
        s.dedup();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_envelopes_raw_frames_and_snapshots() {
        let text = r#"
1000 {"stream":"bnbbtc@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BNBBTC","U":157,"u":160,"b":[["0.0024","10"]],"a":[["0.0026","100"]]}}
900 {"u":400900,"s":"BNBUSDT","b":"25.35","B":"31.21","a":"25.36","A":"40.66"}
1100 {"lastUpdateId":158,"bids":[["0.0024","10"]],"asks":[]}
1200 {"result":null,"id":1}
1300 not json
"#;
        let mut tape = Tape::default();
        tape.add_text("t", text).unwrap();
        assert_eq!(tape.frames.len(), 2);
        assert_eq!(tape.skipped_lines, 2);
        assert_eq!(tape.frames[0].key, StreamKey { symbol: "bnbusdt".into(), channel: "bookTicker".into() });
        assert!(tape.frames[0].combined.as_str().starts_with(r#"{"stream":"bnbusdt@bookTicker","data":{"u":400900"#));
        assert_eq!(tape.frames[1].depth.as_ref().unwrap().last_id, 160);
        assert!(tape.frames[1].raw.as_str().starts_with(r#"{"e":"depthUpdate""#));
        assert_eq!(tape.snapshots[0].symbol, "BNBBTC");
        assert_eq!(tape.snapshots[0].last_update_id, 158);
        assert_eq!(tape.symbols(), vec!["BNBBTC".to_string(), "BNBUSDT".to_string()]);
        assert!(Tape::default().add_text("t", r#"{"lastUpdateId":1,"bids":[],"asks":[]}"#).is_err());
        assert_eq!(StreamKey::parse("BTCUSDT@depth@0ms").unwrap().name(), "btcusdt@depth");
    }
}
