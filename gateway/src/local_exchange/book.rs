//! The exchange's own order book per symbol: seeded from a recorded snapshot (or empty),
//! moved by every depth update the tape plays (delivered or not), and served as the REST
//! depth snapshot. Because it follows the tape, a snapshot fetched at any moment — after a
//! reconnect, after a gap — is consistent with the stream, as on the real venue.

use super::tape::{DepthUpdate, RecordedSnapshot};
use sapphire_core::fixed::{Price, Quantity};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One side: price → (price text, quantity text), as the venue sent them.
type Side = BTreeMap<Price, (String, String)>;

/// A symbol's book at the exchange.
#[derive(Debug, Clone, Default)]
pub struct ExchangeBook {
    bids: Side,
    asks: Side,
    /// The last update id applied (the snapshot's `lastUpdateId`).
    pub last_update_id: u64,
    /// Event time of the last update applied, ms.
    pub time_ms: u64,
}

fn set(side: &mut Side, levels: &[(String, String)]) {
    for (p, q) in levels {
        let (Ok(price), Ok(qty)) = (Price::parse_bytes(p.as_bytes()), Quantity::parse_unsigned_bytes(q.as_bytes())) else {
            continue;
        };
        if qty == Quantity::ZERO {
            side.remove(&price);
        } else {
            side.insert(price, (p.clone(), q.clone()));
        }
    }
}

impl ExchangeBook {
    /// A book from a recorded snapshot.
    pub fn from_snapshot(s: &RecordedSnapshot) -> Self {
        let mut book = Self { last_update_id: s.last_update_id, ..Self::default() };
        set(&mut book.bids, &s.bids);
        set(&mut book.asks, &s.asks);
        book
    }

    /// Applies a depth update unless the book already includes it; a reset (a Bybit
    /// snapshot) replaces the book whatever its id.
    pub fn apply(&mut self, d: &DepthUpdate) {
        if d.reset {
            self.bids.clear();
            self.asks.clear();
        } else if d.last_id <= self.last_update_id {
            return;
        }
        set(&mut self.bids, &d.bids);
        set(&mut self.asks, &d.asks);
        self.last_update_id = d.last_id;
        self.time_ms = d.time_ms;
    }

    /// The REST depth response with the best `limit` levels per side (`E`/`T` for futures).
    pub fn snapshot_json(&self, limit: usize, futures: bool) -> String {
        let mut out = String::with_capacity(64 + 40 * limit);
        let _ = write!(out, "{{\"lastUpdateId\":{}", self.last_update_id);
        if futures {
            let _ = write!(out, ",\"E\":{t},\"T\":{t}", t = self.time_ms);
        }
        for (name, levels) in [("bids", &mut self.bids.values().rev() as &mut dyn Iterator<Item = _>), ("asks", &mut self.asks.values())] {
            let _ = write!(out, ",\"{name}\":[");
            for (i, (p, q)) in levels.take(limit).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "[\"{p}\",\"{q}\"]");
            }
            out.push(']');
        }
        out.push('}');
        out
    }

    /// A Bybit v5 `orderbook.{depth}.{symbol}` snapshot frame of the best `depth` levels per
    /// side, its `u` the last update applied (the stream's next delta continues from it),
    /// stamped `now_ms`.
    pub fn bybit_snapshot_json(&self, depth: usize, symbol: &str, now_ms: u64) -> String {
        let mut out = String::with_capacity(128 + 40 * depth);
        let _ =
            write!(out, "{{\"topic\":\"orderbook.{depth}.{symbol}\",\"type\":\"snapshot\",\"ts\":{now_ms},\"data\":{{\"s\":\"{symbol}\"");
        for (name, levels) in [("b", &mut self.bids.values().rev() as &mut dyn Iterator<Item = _>), ("a", &mut self.asks.values())] {
            let _ = write!(out, ",\"{name}\":[");
            for (i, (p, q)) in levels.take(depth).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "[\"{p}\",\"{q}\"]");
            }
            out.push(']');
        }
        let _ = write!(out, ",\"u\":{u},\"seq\":{u}}},\"cts\":{now_ms}}}", u = self.last_update_id);
        out
    }

    /// True until a snapshot or an update was applied.
    pub fn is_blank(&self) -> bool {
        self.last_update_id == 0 && self.bids.is_empty() && self.asks.is_empty()
    }

    /// Best bid and ask price text.
    pub fn top(&self) -> (Option<&str>, Option<&str>) {
        (self.bids.values().next_back().map(|(p, _)| p.as_str()), self.asks.values().next().map(|(p, _)| p.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lv(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(p, q)| (p.to_string(), q.to_string())).collect()
    }

    #[test]
    fn follows_updates_and_serves_snapshots() {
        let snap = RecordedSnapshot {
            symbol: "X".into(),
            last_update_id: 10,
            bids: lv(&[("99.0", "1"), ("98.5", "2")]),
            asks: lv(&[("100.0", "3")]),
        };
        let mut b = ExchangeBook::from_snapshot(&snap);
        b.apply(&DepthUpdate { first_id: 5, last_id: 9, time_ms: 1, bids: lv(&[("99.0", "0")]), asks: vec![], reset: false });
        assert_eq!(b.top(), (Some("99.0"), Some("100.0")), "older than the book: ignored");
        b.apply(&DepthUpdate {
            first_id: 11,
            last_id: 12,
            time_ms: 7,
            bids: lv(&[("99.0", "0"), ("99.5", "4")]),
            asks: lv(&[("100.5", "1")]),
            reset: false,
        });
        assert_eq!(b.last_update_id, 12);
        assert_eq!(
            b.snapshot_json(2, false),
            r#"{"lastUpdateId":12,"bids":[["99.5","4"],["98.5","2"]],"asks":[["100.0","3"],["100.5","1"]]}"#
        );
        assert_eq!(b.snapshot_json(1, true), r#"{"lastUpdateId":12,"E":7,"T":7,"bids":[["99.5","4"]],"asks":[["100.0","3"]]}"#);
        assert_eq!(
            b.bybit_snapshot_json(1, "X", 99),
            r#"{"topic":"orderbook.1.X","type":"snapshot","ts":99,"data":{"s":"X","b":[["99.5","4"]],"a":[["100.0","3"]],"u":12,"seq":12},"cts":99}"#
        );
        // A reset replaces the book even with a lower id (a Bybit service restart: u = 1).
        b.apply(&DepthUpdate { first_id: 1, last_id: 1, time_ms: 8, bids: lv(&[("90.0", "1")]), asks: vec![], reset: true });
        assert_eq!((b.top(), b.last_update_id), ((Some("90.0"), None), 1));
        assert!(!b.is_blank() && ExchangeBook::default().is_blank());
    }
}
