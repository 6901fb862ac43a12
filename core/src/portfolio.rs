//! Positions, average prices, realized and unrealized PnL, fees and equity, per agent and
//! in total. Exact fixed-point arithmetic; unrealized PnL is marked to the mid.

use crate::event::{AgentId, ExecReport, Side};
use crate::fixed::{notional, Money, Price, Quantity};
use crate::instrument::InstrumentId;

/// One agent's position in one instrument.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// Signed quantity (positive long).
    pub qty: Quantity,
    /// Average entry price of the open quantity.
    pub avg_price: Price,
    /// Realized PnL, before fees.
    pub realized: Money,
    /// Fees paid (negative: rebates earned).
    pub fees: Money,
    /// Quantity traded (both sides), for turnover.
    pub traded: Quantity,
}

impl Position {
    /// Applies a fill of `qty` (unsigned) on `side` at `price` with `fee`.
    pub fn apply_fill(&mut self, side: Side, qty: Quantity, price: Price, fee: Money) {
        let signed = qty.raw * side.sign();
        let pos = self.qty.raw;
        self.fees += fee;
        self.traded += qty;
        if pos == 0 || pos.signum() == signed.signum() {
            let total = pos.abs() + qty.raw;
            if total > 0 {
                let cost = i128::from(self.avg_price.raw) * i128::from(pos.abs()) + i128::from(price.raw) * i128::from(qty.raw);
                self.avg_price = Price::from_raw((cost / i128::from(total)) as i64);
            }
            self.qty = Quantity::from_raw(pos + signed);
            return;
        }
        let closed = pos.abs().min(qty.raw);
        let pnl_per_unit = Price::from_raw((price.raw - self.avg_price.raw) * pos.signum());
        self.realized += notional(pnl_per_unit, Quantity::from_raw(closed)).unwrap_or(Money::ZERO);
        let new = pos + signed;
        self.qty = Quantity::from_raw(new);
        if new == 0 {
            self.avg_price = Price::ZERO;
        } else if new.signum() != pos.signum() {
            self.avg_price = price;
        }
    }

    /// Unrealized PnL at `mark`.
    pub fn unrealized(&self, mark: Price) -> Money {
        if self.qty.raw == 0 || mark.raw == 0 {
            return Money::ZERO;
        }
        notional(mark - self.avg_price, self.qty).unwrap_or(Money::ZERO)
    }
}

/// Totals of one agent (or of everything).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PnlSummary {
    /// Realized PnL before fees.
    pub realized: Money,
    /// Unrealized PnL at the marks.
    pub unrealized: Money,
    /// Fees paid.
    pub fees: Money,
    /// Starting capital (margin budgets).
    pub capital: Money,
    /// `capital + realized + unrealized - fees`.
    pub equity: Money,
    /// Sum of |position| × mark.
    pub gross_exposure: Money,
}

/// Every agent's positions. Single writer: the risk stage.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug)]
pub struct Portfolio {
    agents: usize,
    instruments: usize,
    positions: Vec<Position>,
    marks: Vec<Price>,
    budgets: Vec<Money>,
}

impl Portfolio {
    /// A flat portfolio with one margin budget per agent.
    pub fn new(budgets: Vec<Money>, instruments: usize) -> Self {
        let agents = budgets.len();
        Self {
            agents,
            instruments,
            positions: vec![Position::default(); agents * instruments],
            marks: vec![Price::ZERO; instruments],
            budgets,
        }
    }

    /// Makes this portfolio equal to `src`, keeping this one's allocations (snapshots).
    pub fn copy_from(&mut self, src: &Self) {
        let Self { agents, instruments, positions, marks, budgets } = src;
        (self.agents, self.instruments) = (*agents, *instruments);
        crate::snapshot::copy_into(&mut self.positions, positions);
        crate::snapshot::copy_into(&mut self.marks, marks);
        crate::snapshot::copy_into(&mut self.budgets, budgets);
    }

    #[inline]
    fn slot(&self, agent: AgentId, instrument: InstrumentId) -> Option<usize> {
        (agent.index() < self.agents && instrument.index() < self.instruments)
            .then(|| agent.index() * self.instruments + instrument.index())
    }

    /// A position (flat when unknown).
    #[inline]
    pub fn position(&self, agent: AgentId, instrument: InstrumentId) -> Position {
        self.slot(agent, instrument).map(|i| self.positions[i]).unwrap_or_default()
    }

    /// Applies a fill report; other reports are ignored. Returns false for unknown agent/instrument.
    pub fn apply(&mut self, r: &ExecReport) -> bool {
        let Some(i) = self.slot(r.agent, r.instrument) else {
            return false;
        };
        if r.last_qty.raw > 0 {
            self.positions[i].apply_fill(r.side, r.last_qty, r.price, r.fee);
        }
        true
    }

    /// Sets the mark price of an instrument.
    #[inline]
    pub fn mark(&mut self, instrument: InstrumentId, price: Price) {
        if let Some(m) = self.marks.get_mut(instrument.index()) {
            *m = price;
        }
    }

    /// The mark price of an instrument.
    #[inline]
    pub fn mark_of(&self, instrument: InstrumentId) -> Price {
        self.marks.get(instrument.index()).copied().unwrap_or(Price::ZERO)
    }

    /// The margin budget of an agent.
    pub fn budget(&self, agent: AgentId) -> Money {
        self.budgets.get(agent.index()).copied().unwrap_or(Money::ZERO)
    }

    /// Changes an agent's margin budget.
    pub fn set_budget(&mut self, agent: AgentId, budget: Money) {
        if let Some(b) = self.budgets.get_mut(agent.index()) {
            *b = budget;
        }
    }

    /// Number of agents.
    pub fn agents(&self) -> usize {
        self.agents
    }

    /// Number of instruments.
    pub fn instruments(&self) -> usize {
        self.instruments
    }

    /// One agent's totals.
    pub fn agent_summary(&self, agent: AgentId) -> PnlSummary {
        let mut s = PnlSummary { capital: self.budget(agent), ..Default::default() };
        if agent.index() >= self.agents {
            return s;
        }
        for inst in 0..self.instruments {
            let p = &self.positions[agent.index() * self.instruments + inst];
            let mark = self.marks[inst];
            s.realized += p.realized;
            s.fees += p.fees;
            s.unrealized += p.unrealized(mark);
            s.gross_exposure += notional(mark, p.qty.abs()).unwrap_or(Money::ZERO);
        }
        s.equity = s.capital + s.realized + s.unrealized - s.fees;
        s
    }

    /// Totals over every agent.
    pub fn total(&self) -> PnlSummary {
        let mut t = PnlSummary::default();
        for a in 0..self.agents {
            let s = self.agent_summary(AgentId(a as u16));
            t.realized += s.realized;
            t.unrealized += s.unrealized;
            t.fees += s.fees;
            t.capital += s.capital;
            t.gross_exposure += s.gross_exposure;
        }
        t.equity = t.capital + t.realized + t.unrealized - t.fees;
        t
    }

    /// Net position in an instrument over all agents.
    pub fn net_position(&self, instrument: InstrumentId) -> Quantity {
        (0..self.agents).map(|a| self.position(AgentId(a as u16), instrument).qty).fold(Quantity::ZERO, |x, y| x + y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Price {
        Price::parse(s).unwrap()
    }
    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap()
    }

    #[test]
    fn hand_computed_round_trip() {
        let mut pos = Position::default();
        pos.apply_fill(Side::Buy, q("1"), p("100"), Money::parse("0.1").unwrap());
        pos.apply_fill(Side::Buy, q("1"), p("102"), Money::parse("0.1").unwrap());
        assert_eq!((pos.qty, pos.avg_price), (q("2"), p("101")));
        assert_eq!(pos.unrealized(p("105")), Money::from_units(8));
        pos.apply_fill(Side::Sell, q("3"), p("104"), Money::parse("0.3").unwrap());
        // closed 2 at +3 each = 6; now short 1 at 104.
        assert_eq!(pos.realized, Money::from_units(6));
        assert_eq!((pos.qty, pos.avg_price), (q("-1"), p("104")));
        assert_eq!(pos.unrealized(p("100")), Money::from_units(4));
        assert_eq!(pos.fees, Money::parse("0.5").unwrap());
        pos.apply_fill(Side::Buy, q("1"), p("101"), Money::ZERO);
        assert_eq!((pos.qty, pos.avg_price, pos.realized), (Quantity::ZERO, Price::ZERO, Money::from_units(9)));
    }

    #[test]
    fn portfolio_totals() {
        let mut pf = Portfolio::new(vec![Money::from_units(1_000); 2], 1);
        let fill = ExecReport {
            agent: AgentId(1),
            side: Side::Buy,
            last_qty: q("2"),
            price: p("50"),
            fee: Money::from_units(1),
            ..Default::default()
        };
        assert!(pf.apply(&fill));
        assert!(!pf.apply(&ExecReport { agent: AgentId(7), ..fill }));
        pf.mark(InstrumentId(0), p("55"));
        let a = pf.agent_summary(AgentId(1));
        assert_eq!(
            (a.unrealized, a.fees, a.equity, a.gross_exposure),
            (Money::from_units(10), Money::from_units(1), Money::from_units(1_009), Money::from_units(110))
        );
        let t = pf.total();
        assert_eq!((t.capital, t.equity), (Money::from_units(2_000), Money::from_units(2_009)));
        assert_eq!(pf.net_position(InstrumentId(0)), q("2"));
    }
}
