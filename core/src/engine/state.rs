//! The stages' state for snapshots (see [`crate::snapshot`]): copied in place into spares that
//! keep their allocations, put in canonical form, and restored into freshly sized stages.
//!
//! Every `copy_from` names every field of its type (an exhaustive destructuring), so a field
//! added to a stage fails to compile here until it is copied; tests/snapshot.rs compares the
//! whole state (`Debug`) after restore and replay with a straight replay.

use super::{AggregateStage, BookStage, EngineConfig, RiskStage, RouteStage, Stages};
use crate::book::OrderBook;
use crate::instrument::Instrument;
use crate::snapshot::copy_vec;

impl BookStage {
    /// Makes this stage equal to `src`, keeping this one's allocations and board (a copy
    /// publishes nowhere).
    pub fn copy_from(&mut self, src: &Self) {
        let Self { books, quotes, last_trade, imbalance_levels, board: _, counters } = src;
        copy_vec(&mut self.books, books, OrderBook::copy_from);
        crate::snapshot::copy_into(&mut self.quotes, quotes);
        crate::snapshot::copy_into(&mut self.last_trade, last_trade);
        self.imbalance_levels = *imbalance_levels;
        self.counters = *counters;
    }
}

impl AggregateStage {
    /// Makes this stage equal to `src`, keeping this one's allocations.
    pub fn copy_from(&mut self, src: &Self) {
        let Self { aggregator } = src;
        self.aggregator.copy_from(aggregator);
    }
}

impl RiskStage {
    /// Makes this stage equal to `src`, keeping this one's allocations.
    pub fn copy_from(&mut self, src: &Self) {
        let Self { risk, pending, next_agent } = src;
        self.risk.copy_from(risk);
        crate::snapshot::copy_into(&mut self.pending, pending);
        self.next_agent = *next_agent;
    }
}

impl RouteStage {
    /// Makes this stage equal to `src`, keeping this one's allocations.
    pub fn copy_from(&mut self, src: &Self) {
        let Self { router, matcher, mode, reports, counters } = src;
        self.router.clone_from(router);
        self.matcher.copy_from(matcher);
        self.mode = *mode;
        crate::snapshot::copy_into(&mut self.reports, reports);
        self.counters = *counters;
    }
}

impl Stages {
    /// Makes these stages equal to `src`, keeping their allocations and board.
    pub fn copy_from(&mut self, src: &Self) {
        let Self { book, aggregate, risk, route } = src;
        self.book.copy_from(book);
        self.aggregate.copy_from(aggregate);
        self.risk.copy_from(risk);
        self.route.copy_from(route);
    }

    /// Puts the state after a snapshot point (a sync point by the event's kind) in the fused
    /// engine's form. The only feedback in flight there is the route stage's paper reports of
    /// that event: fused, the risk stage holds them as pending; split, they are still in the
    /// feedback ring (the risk stage applied everything before the event and holds nothing).
    /// Either way they are the route stage's reports of the event.
    pub fn canonical_snapshot(&mut self) {
        debug_assert!(
            self.risk.pending.is_empty() || self.risk.pending == self.route.reports,
            "at a snapshot point the risk stage holds no reports but the event's own"
        );
        self.risk.pending.clone_from(&self.route.reports);
    }

    /// Stages for `config` and `instruments` (sized as [`Stages::new`] sizes them, so the hot
    /// path allocates no more than it would have) holding `state`: a decoded snapshot.
    pub fn restore(config: &EngineConfig, instruments: &[Instrument], state: &Stages) -> Stages {
        let mut stages = Stages::new(config, instruments);
        stages.copy_from(state);
        stages
    }
}
