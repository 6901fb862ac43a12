//! What the engine decides: intents (an agent's wanted position) and orders (what is sent).

use crate::event::{AgentId, Side};
use crate::fixed::{Price, Quantity};
use crate::instrument::InstrumentId;

/// How an intent wants to trade.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ExecStyle {
    /// Cross the spread now (marketable limit, immediate-or-cancel).
    #[default]
    Aggressive = 0,
    /// Join the best level on our side and wait (post-only).
    Passive = 1,
}

/// An agent's wanted position in an instrument, from the aggregate stage to risk.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Intent {
    /// Event time of the market update that produced it.
    pub ts_event: u64,
    /// Unique, deterministic id: the inbound sequence and the agent.
    pub intent_id: u64,
    /// Instrument.
    pub instrument: InstrumentId,
    /// Agent the resulting orders are attributed to.
    pub agent: AgentId,
    /// How to trade.
    pub style: ExecStyle,
    /// Keeps the layout explicit.
    pub _pad: u8,
    /// Wanted signed position (positive long).
    pub target: Quantity,
    /// The limit price to use (already on tick).
    pub price: Price,
}

/// What an [`Order`] asks the venue to do.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OrderAction {
    /// A new order.
    #[default]
    New = 0,
    /// Cancel every open order of the agent on the instrument.
    CancelAll = 1,
}

/// Limit or market.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OrderType {
    /// Limit order at `price`.
    #[default]
    Limit = 0,
    /// Market order (walks the book).
    Market = 1,
}

/// How long an order lives.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TimeInForce {
    /// Good till cancelled.
    #[default]
    Gtc = 0,
    /// Immediate or cancel.
    Ioc = 1,
    /// Post-only (rejected if it would take).
    PostOnly = 2,
}

/// An order or cancel leaving the engine, risk-approved.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Order {
    /// Event time at which the engine decided.
    pub ts_event: u64,
    /// `ts_recv` of the inbound event that caused it (tick-to-order latency).
    pub origin_recv: u64,
    /// Deterministic, unique client order id (see [`crate::router`]).
    pub client_order_id: u64,
    /// The intent it came from.
    pub intent_id: u64,
    /// Instrument.
    pub instrument: InstrumentId,
    /// Agent it is attributed to.
    pub agent: AgentId,
    /// New or cancel.
    pub action: OrderAction,
    /// Buy or sell.
    pub side: Side,
    /// Limit or market.
    pub order_type: OrderType,
    /// Time in force.
    pub tif: TimeInForce,
    /// Only reduces a position.
    pub reduce_only: bool,
    /// Keeps the layout explicit.
    pub _pad: u8,
    /// Limit price.
    pub price: Price,
    /// Quantity (unsigned).
    pub qty: Quantity,
}

/// A fixed-capacity list that lives inline in a stage message (no allocation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch<T: Copy + Default, const N: usize> {
    len: u8,
    items: [T; N],
}

impl<T: Copy + Default, const N: usize> Default for Batch<T, N> {
    fn default() -> Self {
        Self { len: 0, items: [T::default(); N] }
    }
}

impl<T: Copy + Default, const N: usize> Batch<T, N> {
    /// Appends, handing the item back when full.
    #[inline]
    pub fn push(&mut self, item: T) -> Result<(), T> {
        if usize::from(self.len) >= N {
            return Err(item);
        }
        self.items[usize::from(self.len)] = item;
        self.len += 1;
        Ok(())
    }

    /// The items.
    #[inline]
    pub fn as_slice(&self) -> &[T] {
        &self.items[..usize::from(self.len)]
    }

    /// Removes every item.
    #[inline]
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// True when empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of items.
    #[inline]
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }
}
