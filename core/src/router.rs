//! The order router: approved orders get deterministic, unique client order ids, and no
//! intent is ever sent twice.
//!
//! An intent id is `sequence << 8 | agent tag` (the inbound sequence that caused it), so
//! ids rise with the event sequence. The client order id is `epoch << 48 | intent id`: the
//! epoch (configuration) keeps ids unique across separate runs against the same account,
//! while a replay of the same journal reproduces the same ids.

use crate::order::{Order, OrderAction};

/// Bits of a client order id that hold the intent id.
pub const INTENT_ID_MASK: u64 = (1 << 48) - 1;
/// Agent tag of orders raised by the portfolio guards (deleverage).
pub const GUARD_AGENT_TAG: u8 = 0xff;

/// The intent id of an event sequence and agent tag.
#[inline]
pub const fn intent_id(seq: i64, agent_tag: u8) -> u64 {
    ((seq as u64) << 8 | agent_tag as u64) & INTENT_ID_MASK
}

/// Assigns client order ids and refuses repeats. Single writer: the route stage.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug)]
pub struct Router {
    epoch: u64,
    last_intent: u64,
    sent: u64,
    duplicates: u64,
}

impl Router {
    /// A router for run `epoch` (16 bits).
    pub fn new(epoch: u16) -> Self {
        Self { epoch: u64::from(epoch) << 48, last_intent: 0, sent: 0, duplicates: 0 }
    }

    /// Stamps the client order id. False (and nothing to send) for a repeated intent.
    #[inline]
    pub fn route(&mut self, order: &mut Order) -> bool {
        if order.action == OrderAction::New {
            if order.intent_id <= self.last_intent && self.sent > 0 {
                self.duplicates += 1;
                return false;
            }
            self.last_intent = order.intent_id;
            order.client_order_id = self.epoch | order.intent_id;
            self.sent += 1;
        }
        true
    }

    /// New orders routed.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Repeated intents refused.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_unique_and_never_repeat() {
        let mut r = Router::new(7);
        let mut a = Order { intent_id: intent_id(10, 2), ..Order::default() };
        assert!(r.route(&mut a));
        assert_eq!(a.client_order_id, 7 << 48 | 10 << 8 | 2);
        let mut again = Order { intent_id: intent_id(10, 2), ..Order::default() };
        assert!(!r.route(&mut again), "same intent twice");
        let mut b = Order { intent_id: intent_id(10, 3), ..Order::default() };
        assert!(r.route(&mut b));
        assert_ne!(a.client_order_id, b.client_order_id);
        assert_eq!(r.duplicates(), 1);
        assert_eq!(b.client_order_id & INTENT_ID_MASK, intent_id(10, 3));
    }
}
