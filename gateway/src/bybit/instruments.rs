//! Bybit v5 `GET /v5/market/instruments-info?category=spot|linear` into the core's
//! instrument registry: tick size (`priceFilter.tickSize`), lot size
//! (`lotSizeFilter.basePrecision` on spot, `lotSizeFilter.qtyStep` on linear) and minimum
//! notional (`lotSizeFilter.minOrderAmt` on spot, `lotSizeFilter.minNotionalValue` on linear)
//! of every symbol whose `status` is `Trading`.
//!
//! Linear answers are paged (`limit` up to 1,000, `result.nextPageCursor`); spot answers are
//! one page. [`InstrumentsPage::next_cursor`] tells the caller whether to ask again.

use super::BybitCategory;
use crate::feed::{price, qty, register_listings, FeedError, Listing};
use crate::json::{elements, fields, Value};
use sapphire_core::fixed::{Money, Price, Quantity};
use sapphire_core::instrument::{InstrumentId, InstrumentRegistry, MarketType};

/// One symbol of an `instruments-info` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BybitSymbol {
    /// Symbol, e.g. `BTCUSDT`.
    pub symbol: String,
    /// `status == "Trading"`.
    pub trading: bool,
    /// `priceFilter.tickSize`.
    pub tick_size: Price,
    /// `lotSizeFilter.basePrecision` (spot) or `lotSizeFilter.qtyStep` (linear).
    pub lot_size: Quantity,
    /// `lotSizeFilter.minOrderQty` (zero when absent).
    pub min_qty: Quantity,
    /// `lotSizeFilter.minOrderAmt` (spot) or `lotSizeFilter.minNotionalValue` (linear); zero when absent.
    pub min_notional: Money,
}

/// One page of an `instruments-info` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstrumentsPage {
    /// The symbols on this page.
    pub symbols: Vec<BybitSymbol>,
    /// `result.nextPageCursor`, when there is a next page.
    pub next_cursor: Option<String>,
}

/// Why an `instruments-info` answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstrumentsError {
    /// The body is not the documented shape.
    #[error("instruments-info: {0}")]
    Malformed(#[from] FeedError),
    /// The venue answered with a non-zero `retCode`.
    #[error("instruments-info: retCode {code}: {msg}")]
    Venue {
        /// `retCode`.
        code: i64,
        /// `retMsg`.
        msg: String,
    },
}

fn text(v: &Value<'_>) -> String {
    String::from_utf8_lossy(v.as_str_bytes().unwrap_or_default()).into_owned()
}

/// Parses one page of an `instruments-info` body for `category`.
pub fn parse_instruments_info(category: BybitCategory, body: &[u8]) -> Result<InstrumentsPage, InstrumentsError> {
    let mut page = InstrumentsPage::default();
    let (mut code, mut msg, mut result) = (None, String::new(), None);
    for field in fields(body).map_err(FeedError::from)? {
        let (key, value) = field.map_err(FeedError::from)?;
        match key {
            b"retCode" => {
                code = match value {
                    Value::Num(n) => std::str::from_utf8(n).ok().and_then(|n| n.parse::<i64>().ok()),
                    _ => None,
                }
            }
            b"retMsg" => msg = text(&value),
            b"result" => result = Some(value),
            _ => {}
        }
    }
    match code {
        Some(0) => {}
        Some(code) => return Err(InstrumentsError::Venue { code, msg }),
        None => return Err(FeedError::Field("retCode").into()),
    }
    let Some(Value::Obj(result)) = result else { return Err(FeedError::Field("result").into()) };
    for field in fields(result).map_err(FeedError::from)? {
        let (key, value) = field.map_err(FeedError::from)?;
        match key {
            b"nextPageCursor" => page.next_cursor = value.as_plain_str().filter(|c| !c.is_empty()).map(str::to_string),
            b"list" => {
                let Value::Arr(list) = value else { return Err(FeedError::Field("list").into()) };
                for item in elements(list).map_err(FeedError::from)? {
                    let Value::Obj(obj) = item.map_err(FeedError::from)? else { return Err(FeedError::Field("list").into()) };
                    page.symbols.push(parse_symbol(category, obj)?);
                }
            }
            _ => {}
        }
    }
    Ok(page)
}

fn parse_symbol(category: BybitCategory, obj: &[u8]) -> Result<BybitSymbol, FeedError> {
    let (mut symbol, mut trading, mut tick, mut lot, mut min_qty, mut min_notional) =
        (None, false, None, None, Quantity::ZERO, Money::ZERO);
    let lot_field: &[u8] = match category {
        BybitCategory::Spot => b"basePrecision",
        BybitCategory::Linear => b"qtyStep",
    };
    let notional_field: &[u8] = match category {
        BybitCategory::Spot => b"minOrderAmt",
        BybitCategory::Linear => b"minNotionalValue",
    };
    for f in fields(obj)? {
        let (k, v) = f?;
        match k {
            b"symbol" => symbol = v.as_plain_str().map(str::to_string),
            b"status" => trading = v.as_str_bytes() == Some(b"Trading"),
            b"priceFilter" => {
                let Value::Obj(pf) = v else { return Err(FeedError::Field("priceFilter")) };
                for f in fields(pf)? {
                    let (k, v) = f?;
                    if k == b"tickSize" {
                        tick = Some(price("tickSize", v.as_str_bytes().ok_or(FeedError::Field("tickSize"))?)?);
                    }
                }
            }
            b"lotSizeFilter" => {
                let Value::Obj(lf) = v else { return Err(FeedError::Field("lotSizeFilter")) };
                for f in fields(lf)? {
                    let (k, v) = f?;
                    let Some(t) = v.as_str_bytes() else { continue };
                    if k == lot_field {
                        lot = Some(qty("lotSizeFilter", t)?);
                    } else if k == b"minOrderQty" {
                        min_qty = qty("minOrderQty", t)?;
                    } else if k == notional_field {
                        min_notional = Money::parse_bytes(t).map_err(|error| FeedError::Decimal { field: "minNotional", error })?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(BybitSymbol {
        symbol: symbol.ok_or(FeedError::Field("symbol"))?,
        trading,
        tick_size: tick.ok_or(FeedError::Field("priceFilter.tickSize"))?,
        lot_size: lot.ok_or(FeedError::Field(match category {
            BybitCategory::Spot => "lotSizeFilter.basePrecision",
            BybitCategory::Linear => "lotSizeFilter.qtyStep",
        }))?,
        min_qty,
        min_notional,
    })
}

/// The `instruments-info` URL for `category` at `rest_url`, on the page after `cursor`.
pub fn instruments_url(rest_url: &str, category: BybitCategory, cursor: Option<&str>) -> String {
    let base = format!("{}/v5/market/instruments-info?category={}", rest_url.trim_end_matches('/'), category.as_str());
    match (category, cursor) {
        (BybitCategory::Spot, _) => base,
        (BybitCategory::Linear, None) => format!("{base}&limit=1000"),
        (BybitCategory::Linear, Some(c)) => format!("{base}&limit=1000&cursor={c}"),
    }
}

/// `GET /v5/market/tickers?category=…`: every symbol's 24 h figures.
pub fn tickers_url(rest_url: &str, category: BybitCategory) -> String {
    format!("{}/v5/market/tickers?category={}", rest_url.trim_end_matches('/'), category.as_str())
}

/// Each symbol's 24 h turnover (quote volume) from `/v5/market/tickers`; a venue error
/// (`retCode` ≠ 0) is an error with its `retMsg`. A ticker without a readable turnover is left
/// out (it ranks last).
pub fn parse_turnovers(body: &[u8]) -> Result<std::collections::HashMap<String, f64>, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON ({e})"))?;
    if v.get("retCode").and_then(serde_json::Value::as_i64) != Some(0) {
        return Err(format!("the venue refused: {}", v.get("retMsg").and_then(|m| m.as_str()).unwrap_or("no retMsg")));
    }
    let list = v.pointer("/result/list").and_then(|l| l.as_array()).ok_or("no result.list")?;
    Ok(list
        .iter()
        .filter_map(|t| {
            let turnover = t.get("turnover24h")?.as_str()?.parse::<f64>().ok().filter(|x| x.is_finite())?;
            Some((t.get("symbol")?.as_str()?.to_string(), turnover))
        })
        .collect())
}

/// Orders `symbols` by 24 h turnover, highest first (those without one last, in listing order).
pub fn rank_by_turnover(symbols: &mut [BybitSymbol], turnovers: &std::collections::HashMap<String, f64>) {
    symbols.sort_by(|a, b| {
        let (ta, tb) = (turnovers.get(&a.symbol).copied().unwrap_or(-1.0), turnovers.get(&b.symbol).copied().unwrap_or(-1.0));
        tb.total_cmp(&ta)
    });
}

/// The registry venue name and market type of a category (`bybit`, `bybit-linear`).
pub fn venue_of(category: BybitCategory) -> (&'static str, MarketType) {
    match category {
        BybitCategory::Spot => ("bybit", MarketType::Spot),
        BybitCategory::Linear => ("bybit-linear", MarketType::LinearPerpetual),
    }
}

/// Registers `wanted` symbols (or, when empty, every trading symbol up to `cap`) in
/// `registry` under `venue`; returns their ids, or an error naming a wanted symbol the venue
/// does not list as trading.
pub fn register(
    symbols: &[BybitSymbol],
    wanted: &[String],
    cap: usize,
    venue: &str,
    market: MarketType,
    registry: &mut InstrumentRegistry,
) -> Result<Vec<InstrumentId>, String> {
    let listed: Vec<Listing<'_>> = symbols
        .iter()
        .map(|s| Listing {
            symbol: &s.symbol,
            trading: s.trading,
            tick_size: s.tick_size,
            lot_size: s.lot_size,
            min_notional: s.min_notional,
        })
        .collect();
    register_listings(&listed, wanted, cap, venue, market, registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shapes from Bybit's v5 "Get Instruments Info" documentation (values shortened).
    const SPOT: &str = r#"{"retCode":0,"retMsg":"OK","result":{"category":"spot","list":[
        {"symbol":"BTCUSDT","baseCoin":"BTC","quoteCoin":"USDT","innovation":"0","status":"Trading","marginTrading":"both",
         "lotSizeFilter":{"basePrecision":"0.000001","quotePrecision":"0.00000001","minOrderQty":"0.000048","maxOrderQty":"71.73956243","minOrderAmt":"1","maxOrderAmt":"2000000"},
         "priceFilter":{"tickSize":"0.01"},"riskParameters":{"limitParameter":"0.05","marketParameter":"0.05"}},
        {"symbol":"OLDUSDT","baseCoin":"OLD","quoteCoin":"USDT","status":"Closed",
         "lotSizeFilter":{"basePrecision":"0.1","minOrderQty":"1","minOrderAmt":"1"},"priceFilter":{"tickSize":"0.0001"}}]},
        "retExtInfo":{},"time":1672712468011}"#;
    const LINEAR: &str = r#"{"retCode":0,"retMsg":"OK","result":{"category":"linear","list":[
        {"symbol":"BTCUSDT","contractType":"LinearPerpetual","status":"Trading","baseCoin":"BTC","quoteCoin":"USDT","priceScale":"2",
         "leverageFilter":{"minLeverage":"1","maxLeverage":"100.00","leverageStep":"0.01"},
         "priceFilter":{"minPrice":"0.10","maxPrice":"199999.80","tickSize":"0.10"},
         "lotSizeFilter":{"maxOrderQty":"100.000","maxMktOrderQty":"100.000","minOrderQty":"0.001","qtyStep":"0.001","postOnlyMaxOrderQty":"1000.000","minNotionalValue":"5"},
         "unifiedMarginTrade":true,"fundingInterval":480,"settleCoin":"USDT"}],"nextPageCursor":"first%3DBTCUSDT%26last%3DBTCUSDT"},
        "retExtInfo":{},"time":1707186451514}"#;

    #[test]
    fn parses_spot_and_linear_filters() {
        let spot = parse_instruments_info(BybitCategory::Spot, SPOT.as_bytes()).unwrap();
        assert_eq!(spot.next_cursor, None);
        assert_eq!(
            spot.symbols[0],
            BybitSymbol {
                symbol: "BTCUSDT".into(),
                trading: true,
                tick_size: Price::parse("0.01").unwrap(),
                lot_size: Quantity::parse("0.000001").unwrap(),
                min_qty: Quantity::parse("0.000048").unwrap(),
                min_notional: Money::from_units(1),
            }
        );
        assert!(!spot.symbols[1].trading);
        let linear = parse_instruments_info(BybitCategory::Linear, LINEAR.as_bytes()).unwrap();
        assert_eq!(linear.next_cursor.as_deref(), Some("first%3DBTCUSDT%26last%3DBTCUSDT"));
        let btc = &linear.symbols[0];
        assert_eq!(
            (btc.tick_size, btc.lot_size, btc.min_notional),
            (Price::parse("0.1").unwrap(), Quantity::parse("0.001").unwrap(), Money::from_units(5))
        );
        // The spot field names are not the linear ones: a linear body read as spot lacks basePrecision.
        assert!(parse_instruments_info(BybitCategory::Spot, LINEAR.as_bytes()).is_err());
    }

    #[test]
    fn venue_errors_and_bad_bodies_are_refused() {
        let err = parse_instruments_info(BybitCategory::Spot, br#"{"retCode":10001,"retMsg":"params error","result":{}}"#).unwrap_err();
        assert_eq!(err, InstrumentsError::Venue { code: 10_001, msg: "params error".into() });
        assert!(parse_instruments_info(BybitCategory::Spot, b"not json").is_err());
        assert!(parse_instruments_info(BybitCategory::Spot, br#"{"retCode":0,"result":{"list":[{"symbol":"X"}]}}"#).is_err());
        let bad_tick = r#"{"retCode":0,"result":{"list":[{"symbol":"X","status":"Trading","priceFilter":{"tickSize":"abc"},"lotSizeFilter":{"basePrecision":"1"}}]}}"#;
        assert!(parse_instruments_info(BybitCategory::Spot, bad_tick.as_bytes()).is_err());
    }

    #[test]
    fn registers_what_is_trading() {
        let spot = parse_instruments_info(BybitCategory::Spot, SPOT.as_bytes()).unwrap().symbols;
        let (venue, market) = venue_of(BybitCategory::Spot);
        let mut reg = InstrumentRegistry::new();
        assert_eq!(register(&spot, &[], 10, venue, market, &mut reg).unwrap().len(), 1, "every trading symbol");
        assert_eq!(reg.get(InstrumentId(0)).unwrap().price_precision, 2);
        let err = register(&spot, &["OLDUSDT".into()], 10, venue, market, &mut InstrumentRegistry::new()).unwrap_err();
        assert!(err.contains("OLDUSDT"), "{err}");
        assert_eq!(
            instruments_url("http://h:1/", BybitCategory::Linear, Some("c")),
            "http://h:1/v5/market/instruments-info?category=linear&limit=1000&cursor=c"
        );
        assert_eq!(instruments_url("http://h:1", BybitCategory::Spot, None), "http://h:1/v5/market/instruments-info?category=spot");
    }

    #[test]
    fn tickers_rank_every_symbol_by_24h_turnover() {
        let turnovers = parse_turnovers(
            br#"{"retCode":0,"retMsg":"OK","result":{"category":"linear","list":[
                {"symbol":"AAAUSDT","turnover24h":"10.5"},{"symbol":"BBBUSDT","turnover24h":"900000.25"},{"symbol":"CCCUSDT"}]},"time":1}"#,
        )
        .unwrap();
        assert_eq!(turnovers.len(), 2, "a ticker without turnover is left out");
        let sym = |s: &str| BybitSymbol {
            symbol: s.into(),
            trading: true,
            tick_size: Price::parse("0.1").unwrap(),
            lot_size: Quantity::parse("0.001").unwrap(),
            min_qty: Quantity::parse("0.001").unwrap(),
            min_notional: Money::from_units(5),
        };
        let mut listed = vec![sym("AAAUSDT"), sym("CCCUSDT"), sym("BBBUSDT")];
        rank_by_turnover(&mut listed, &turnovers);
        assert_eq!(listed.iter().map(|s| s.symbol.as_str()).collect::<Vec<_>>(), ["BBBUSDT", "AAAUSDT", "CCCUSDT"]);
        let err = parse_turnovers(br#"{"retCode":10001,"retMsg":"params error: category is invalid","result":{}}"#).unwrap_err();
        assert!(err.contains("category is invalid"), "{err}");
    }
}
