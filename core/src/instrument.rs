//! The instrument registry: symbols interned to dense `u32` ids, with the venue's filters.

use crate::fixed::{Money, Price, Quantity};
use std::collections::HashMap;

/// A dense instrument id, an index into the [`InstrumentRegistry`].
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstrumentId(pub u32);

impl InstrumentId {
    /// The id as an index into per-instrument tables.
    #[inline]
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// What kind of market an instrument trades on.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarketType {
    /// Spot: you hold what you buy; no shorting without margin.
    Spot,
    /// Linear (USD(T)-margined) perpetual futures.
    LinearPerpetual,
}

/// One tradable instrument and the venue's order filters for it.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Instrument {
    /// Interned id.
    pub id: InstrumentId,
    /// Venue symbol, e.g. `BTCUSDT`.
    pub symbol: String,
    /// Venue name, e.g. `binance`, `bybit`, `synthetic`.
    pub venue: String,
    /// Spot or perpetual.
    pub market: MarketType,
    /// Minimum price increment.
    pub tick_size: Price,
    /// Minimum quantity increment.
    pub lot_size: Quantity,
    /// Smallest order notional the venue accepts.
    pub min_notional: Money,
    /// Decimals the venue shows for prices.
    pub price_precision: u8,
    /// Decimals the venue shows for quantities.
    pub qty_precision: u8,
}

impl Instrument {
    /// True when `price` is a whole number of ticks.
    pub fn is_on_tick(&self, price: Price) -> bool {
        self.tick_size.raw > 0 && price.raw % self.tick_size.raw == 0
    }

    /// True when `qty` is a whole number of lots.
    pub fn is_on_lot(&self, qty: Quantity) -> bool {
        self.lot_size.raw > 0 && qty.raw % self.lot_size.raw == 0
    }

    /// `qty` rounded down to a whole number of lots.
    pub fn round_lot_down(&self, qty: Quantity) -> Quantity {
        if self.lot_size.raw <= 0 {
            return qty;
        }
        Quantity::from_raw(qty.raw - qty.raw % self.lot_size.raw)
    }
}

/// Why an instrument could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Tick or lot size is zero or negative.
    #[error("instrument {symbol}: {field} must be positive")]
    NonPositive {
        /// The symbol.
        symbol: String,
        /// The offending field.
        field: &'static str,
    },
    /// More instruments than ids.
    #[error("instrument registry is full")]
    Full,
}

/// Interns symbols to [`InstrumentId`]s. Built before the engine starts; read-only after.
#[derive(Debug, Default, Clone)]
pub struct InstrumentRegistry {
    instruments: Vec<Instrument>,
    by_key: HashMap<(String, String), InstrumentId>,
}

/// The filters of an instrument to register.
#[derive(Clone, Debug)]
pub struct InstrumentSpec<'a> {
    /// Venue name.
    pub venue: &'a str,
    /// Venue symbol.
    pub symbol: &'a str,
    /// Spot or perpetual.
    pub market: MarketType,
    /// Minimum price increment.
    pub tick_size: Price,
    /// Minimum quantity increment.
    pub lot_size: Quantity,
    /// Smallest accepted order notional.
    pub min_notional: Money,
}

fn decimals_of(raw: i64, scale_decimals: u32) -> u8 {
    let mut d = scale_decimals;
    let mut r = raw;
    while d > 0 && r % 10 == 0 {
        r /= 10;
        d -= 1;
    }
    d as u8
}

impl InstrumentRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an instrument, or returns the id it already has (filters are then updated).
    pub fn intern(&mut self, spec: InstrumentSpec<'_>) -> Result<InstrumentId, RegistryError> {
        for (field, ok) in [("tick_size", spec.tick_size.raw > 0), ("lot_size", spec.lot_size.raw > 0)] {
            if !ok {
                return Err(RegistryError::NonPositive { symbol: spec.symbol.to_string(), field });
            }
        }
        let key = (spec.venue.to_string(), spec.symbol.to_string());
        let id = match self.by_key.get(&key) {
            Some(&id) => id,
            None => {
                let id = InstrumentId(u32::try_from(self.instruments.len()).map_err(|_| RegistryError::Full)?);
                self.by_key.insert(key, id);
                self.instruments.push(Instrument {
                    id,
                    symbol: String::new(),
                    venue: String::new(),
                    market: spec.market,
                    tick_size: spec.tick_size,
                    lot_size: spec.lot_size,
                    min_notional: spec.min_notional,
                    price_precision: 0,
                    qty_precision: 0,
                });
                id
            }
        };
        let inst = &mut self.instruments[id.index()];
        *inst = Instrument {
            id,
            symbol: spec.symbol.to_string(),
            venue: spec.venue.to_string(),
            market: spec.market,
            tick_size: spec.tick_size,
            lot_size: spec.lot_size,
            min_notional: spec.min_notional,
            price_precision: decimals_of(spec.tick_size.raw, Price::DECIMALS),
            qty_precision: decimals_of(spec.lot_size.raw, Quantity::DECIMALS),
        };
        Ok(id)
    }

    /// The id of `symbol` on `venue`.
    pub fn lookup(&self, venue: &str, symbol: &str) -> Option<InstrumentId> {
        self.by_key.get(&(venue.to_string(), symbol.to_string())).copied()
    }

    /// The instrument with `id`.
    pub fn get(&self, id: InstrumentId) -> Option<&Instrument> {
        self.instruments.get(id.index())
    }

    /// Number of instruments.
    pub fn len(&self) -> usize {
        self.instruments.len()
    }

    /// True when no instrument is registered.
    pub fn is_empty(&self) -> bool {
        self.instruments.is_empty()
    }

    /// All instruments in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Instrument> {
        self.instruments.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(symbol: &str) -> InstrumentSpec<'_> {
        InstrumentSpec {
            venue: "binance",
            symbol,
            market: MarketType::Spot,
            tick_size: Price::parse("0.01").unwrap(),
            lot_size: Quantity::parse("0.00001").unwrap(),
            min_notional: Money::from_units(5),
        }
    }

    #[test]
    fn interns_dense_ids_and_precisions() {
        let mut reg = InstrumentRegistry::new();
        let btc = reg.intern(spec("BTCUSDT")).unwrap();
        let eth = reg.intern(spec("ETHUSDT")).unwrap();
        assert_eq!((btc, eth), (InstrumentId(0), InstrumentId(1)));
        assert_eq!(reg.intern(spec("BTCUSDT")).unwrap(), btc);
        let inst = reg.get(btc).unwrap();
        assert_eq!((inst.price_precision, inst.qty_precision), (2, 5));
        assert!(inst.is_on_tick(Price::parse("61837.63").unwrap()));
        assert!(!inst.is_on_tick(Price::parse("61837.635").unwrap()));
        assert_eq!(inst.round_lot_down(Quantity::parse("0.123456").unwrap()), Quantity::parse("0.12345").unwrap());
        assert_eq!(reg.lookup("binance", "ETHUSDT"), Some(eth));
    }

    #[test]
    fn refuses_zero_tick() {
        let mut reg = InstrumentRegistry::new();
        let mut s = spec("X");
        s.tick_size = Price::ZERO;
        assert!(matches!(reg.intern(s), Err(RegistryError::NonPositive { field: "tick_size", .. })));
    }
}
