//! Binance `exchangeInfo` (`/api/v3/exchangeInfo`, `/fapi/v1/exchangeInfo`) into the core's
//! instrument registry: tick size (`PRICE_FILTER`), lot size (`LOT_SIZE`) and minimum
//! notional (`NOTIONAL` / `MIN_NOTIONAL`) of every symbol that is trading.

use crate::feed::{price, qty, register_listings, FeedError, Listing};
use crate::json::{elements, fields, Value};
use sapphire_core::fixed::{Money, Price, Quantity};
use sapphire_core::instrument::{InstrumentId, InstrumentRegistry, MarketType};

/// One symbol of an `exchangeInfo` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinanceSymbol {
    /// Symbol, e.g. `BTCUSDT`.
    pub symbol: String,
    /// `status == "TRADING"`.
    pub trading: bool,
    /// `PRICE_FILTER.tickSize`.
    pub tick_size: Price,
    /// `LOT_SIZE.stepSize`.
    pub lot_size: Quantity,
    /// `NOTIONAL.minNotional` or `MIN_NOTIONAL.minNotional` (zero when absent).
    pub min_notional: Money,
}

fn text<'a>(v: &Value<'a>) -> Option<&'a [u8]> {
    v.as_str_bytes()
}

/// Parses the symbols of an `exchangeInfo` body.
pub fn parse_exchange_info(body: &[u8]) -> Result<Vec<BinanceSymbol>, FeedError> {
    let mut out = Vec::new();
    for field in fields(body)? {
        let (key, value) = field?;
        if key != b"symbols" {
            continue;
        }
        let Value::Arr(list) = value else { return Err(FeedError::Field("symbols")) };
        for item in elements(list)? {
            let Value::Obj(obj) = item? else { return Err(FeedError::Field("symbols")) };
            let (mut symbol, mut trading) = (None, false);
            let (mut tick, mut lot, mut min_notional) = (None, None, Money::ZERO);
            for f in fields(obj)? {
                let (k, v) = f?;
                match k {
                    b"symbol" => symbol = v.as_plain_str().map(str::to_string),
                    b"status" => trading = text(&v) == Some(b"TRADING"),
                    b"filters" => {
                        let Value::Arr(filters) = v else { return Err(FeedError::Field("filters")) };
                        for filter in elements(filters)? {
                            let Value::Obj(fo) = filter? else { continue };
                            let (mut kind, mut tick_size, mut step, mut notional) = (None, None, None, None);
                            for ff in fields(fo)? {
                                let (fk, fv) = ff?;
                                match fk {
                                    b"filterType" => kind = text(&fv),
                                    b"tickSize" => tick_size = text(&fv),
                                    b"stepSize" => step = text(&fv),
                                    b"minNotional" | b"notional" => notional = text(&fv),
                                    _ => {}
                                }
                            }
                            match kind {
                                Some(b"PRICE_FILTER") => tick = tick_size.map(|t| price("tickSize", t)).transpose()?,
                                Some(b"LOT_SIZE") => lot = step.map(|s| qty("stepSize", s)).transpose()?,
                                Some(b"NOTIONAL" | b"MIN_NOTIONAL") => {
                                    if let Some(n) = notional {
                                        min_notional =
                                            Money::parse_bytes(n).map_err(|error| FeedError::Decimal { field: "minNotional", error })?;
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            out.push(BinanceSymbol {
                symbol: symbol.ok_or(FeedError::Field("symbol"))?,
                trading,
                tick_size: tick.ok_or(FeedError::Field("PRICE_FILTER"))?,
                lot_size: lot.ok_or(FeedError::Field("LOT_SIZE"))?,
                min_notional,
            });
        }
    }
    Ok(out)
}

/// Registers `wanted` symbols (or, when empty, every trading symbol up to `cap`) in
/// `registry` under `venue`; returns their ids, or an error naming a wanted symbol the venue
/// does not list as trading.
pub fn register(
    symbols: &[BinanceSymbol],
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

/// Each symbol's 24 h quote volume from `GET /api/v3/ticker/24hr` (or `/fapi/v1/ticker/24hr`)
/// without a symbol: an array of tickers, `quoteVolume` a decimal string. A ticker without a
/// readable `quoteVolume` is left out (it ranks last).
pub fn parse_quote_volumes(body: &[u8]) -> Result<std::collections::HashMap<String, f64>, String> {
    #[derive(serde::Deserialize)]
    struct Ticker {
        symbol: String,
        #[serde(rename = "quoteVolume")]
        quote_volume: Option<String>,
    }
    let tickers: Vec<Ticker> = serde_json::from_slice(body)
        .map_err(|e| format!("not an array of 24 h tickers ({e}): {}", String::from_utf8_lossy(&body[..body.len().min(120)])))?;
    Ok(tickers.into_iter().filter_map(|t| Some((t.symbol, t.quote_volume?.parse::<f64>().ok().filter(|v| v.is_finite())?))).collect())
}

/// Orders `symbols` by 24 h quote volume, highest first (symbols without a volume last, in
/// listing order), so that "every symbol, capped" takes the most traded ones.
pub fn rank_by_quote_volume(symbols: &mut [BinanceSymbol], volumes: &std::collections::HashMap<String, f64>) {
    symbols.sort_by(|a, b| {
        let (va, vb) = (volumes.get(&a.symbol).copied().unwrap_or(-1.0), volumes.get(&b.symbol).copied().unwrap_or(-1.0));
        vb.total_cmp(&va)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = r#"{"timezone":"UTC","serverTime":1565246363776,"rateLimits":[],"exchangeFilters":[],"symbols":[
        {"symbol":"ETHBTC","status":"TRADING","baseAsset":"ETH","quoteAsset":"BTC","filters":[
            {"filterType":"PRICE_FILTER","minPrice":"0.00000100","maxPrice":"100000.00000000","tickSize":"0.00000100"},
            {"filterType":"LOT_SIZE","minQty":"0.00100000","maxQty":"100000.00000000","stepSize":"0.00100000"},
            {"filterType":"MIN_NOTIONAL","minNotional":"0.00100000","applyToMarket":true,"avgPriceMins":5}]},
        {"symbol":"BTCUSDT","status":"TRADING","filters":[
            {"filterType":"PRICE_FILTER","tickSize":"0.01"},{"filterType":"LOT_SIZE","stepSize":"0.00001"},{"filterType":"NOTIONAL","minNotional":"5.00000000"}]},
        {"symbol":"OLDUSDT","status":"BREAK","filters":[{"filterType":"PRICE_FILTER","tickSize":"0.1"},{"filterType":"LOT_SIZE","stepSize":"1"}]}]}"#;

    #[test]
    fn parses_filters_and_registers_what_is_trading() {
        let symbols = parse_exchange_info(INFO.as_bytes()).unwrap();
        assert_eq!(symbols.len(), 3);
        assert_eq!(
            symbols[1],
            BinanceSymbol {
                symbol: "BTCUSDT".into(),
                trading: true,
                tick_size: Price::parse("0.01").unwrap(),
                lot_size: Quantity::parse("0.00001").unwrap(),
                min_notional: Money::from_units(5)
            }
        );
        let mut reg = InstrumentRegistry::new();
        assert_eq!(register(&symbols, &[], 10, "binance", MarketType::Spot, &mut reg).unwrap().len(), 2, "every trading symbol");
        let mut reg = InstrumentRegistry::new();
        register(&symbols, &["BTCUSDT".into()], 10, "binance", MarketType::Spot, &mut reg).unwrap();
        assert_eq!(reg.get(InstrumentId(0)).unwrap().price_precision, 2);
        let err = register(&symbols, &["OLDUSDT".into()], 10, "binance", MarketType::Spot, &mut InstrumentRegistry::new()).unwrap_err();
        assert!(err.contains("OLDUSDT"), "{err}");
        assert!(parse_exchange_info(b"{\"symbols\":[{\"symbol\":\"X\"}]}").is_err(), "filters are required");
    }

    #[test]
    fn every_symbol_is_ranked_by_24h_quote_volume() {
        let mut symbols = parse_exchange_info(INFO.as_bytes()).unwrap();
        let volumes = parse_quote_volumes(
            br#"[{"symbol":"ETHBTC","priceChange":"0","quoteVolume":"12.5","count":3},
                 {"symbol":"BTCUSDT","quoteVolume":"987654321.12345678"},{"symbol":"OLDUSDT","quoteVolume":"bad"}]"#,
        )
        .unwrap();
        assert_eq!(volumes.len(), 2, "an unreadable volume is left out");
        rank_by_quote_volume(&mut symbols, &volumes);
        let order: Vec<&str> = symbols.iter().map(|s| s.symbol.as_str()).collect();
        assert_eq!(order, ["BTCUSDT", "ETHBTC", "OLDUSDT"]);
        let mut reg = InstrumentRegistry::new();
        register(&symbols, &[], 1, "binance", MarketType::Spot, &mut reg).unwrap();
        assert_eq!(reg.get(InstrumentId(0)).unwrap().symbol, "BTCUSDT", "the cap takes the most traded");
        assert!(parse_quote_volumes(b"{\"code\":-1003}").unwrap_err().contains("not an array"));
    }
}
