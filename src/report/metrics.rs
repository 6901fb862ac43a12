//! Strategy figures from a stream of engine outputs, shared by `sapphire replay` and
//! `sapphire report` so both state the same numbers the same way.
//!
//! Definitions (also in `docs/fill-models.md`):
//! - **PnL**: last portfolio equity (`EngineOutput::Pnl`) minus the baseline — the equity of
//!   the last `Pnl` before the window when there is one (a day's report), else the capital.
//!   Money is exact fixed point; only the ratios below use `f64`.
//! - **Fees**: the sum of the `fee` of every fill (`Exec` with `last_qty > 0`); rebates negative.
//! - **Turnover**: the sum of `price × last_qty` over fills.
//! - **Max drawdown**: the largest fall of equity from its running peak, over the `Pnl`
//!   samples (every engine timer), as money and as a percentage of that peak.
//! - **Sharpe / Sortino**: equity is sampled at the last `Pnl` of each UTC minute; `r_i` is the
//!   simple return between consecutive minutes (a minute without a sample carries the last
//!   equity). Sharpe = mean(r) / stdev(r) (n−1) × √525,600; Sortino = mean(r) / √(Σ min(r,0)² / n)
//!   × √525,600 (annualised by minutes per 365-day year; risk-free rate 0). Undefined (`None`)
//!   with fewer than two returns or zero deviation.
//! - **Hit rate**: per agent and instrument we keep the position and its average cost from the
//!   fills; a fill that reduces a position realises `(price − average cost) × qty × side`. The hit
//!   rate is the share of reducing fills whose realised PnL before fees is positive.

use sapphire_core::engine::{EngineOutput, Output, OutputSink};
use sapphire_core::event::{ExecReport, Side};
use sapphire_core::fixed::{notional, Money, Price, Quantity};
use sapphire_core::order::OrderAction;
use sapphire_core::portfolio::PnlSummary;
use sapphire_core::risk::RiskOutput;
use std::collections::BTreeMap;

/// Minutes in a 365-day year: the annualisation of per-minute returns.
pub const MINUTES_PER_YEAR: f64 = 525_600.0;
const MINUTE_NS: u64 = 60_000_000_000;

/// One fill, as charts and tables need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fill {
    /// Event time, ns.
    pub ts: u64,
    /// Instrument id.
    pub instrument: u32,
    /// Agent id.
    pub agent: u16,
    /// Buy or sell.
    pub side: Side,
    /// Fill price.
    pub price: Price,
    /// Fill quantity.
    pub qty: Quantity,
    /// Fee (negative: rebate).
    pub fee: Money,
    /// Realised PnL before fees, when the fill reduced a position.
    pub realized: Option<Money>,
}

/// Per-agent figures from the agent's own outputs and fills.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentFigures {
    /// Fills.
    pub fills: u64,
    /// Turnover.
    pub turnover: Money,
    /// Fees from fills.
    pub fees: Money,
    /// Reducing fills, and how many realised a gain.
    pub closes: u64,
    /// Reducing fills with a positive realised PnL.
    pub wins: u64,
    /// Latest `AgentPnl` summary (`capital` is the agent's margin budget).
    pub last: Option<PnlSummary>,
    /// `(ts, equity − capital, gross exposure / capital)` at each `AgentPnl`.
    pub samples: Vec<(u64, Money, f64)>,
}

impl AgentFigures {
    /// True when the agent traded or held anything (idle agents are left out of reports).
    pub fn active(&self) -> bool {
        self.fills > 0
            || self.samples.iter().any(|s| s.1.raw != 0 || s.2 != 0.0)
            || self.last.is_some_and(|l| l.equity != l.capital || l.gross_exposure.raw != 0)
    }
}

/// Position and average cost of one agent in one instrument (quantity raw, cost in money raw).
#[derive(Clone, Copy, Debug, Default)]
struct Book {
    qty: i128,
    cost: i128,
}

/// Accumulates outputs in order. Feed it every output (it is an [`OutputSink`]) or call
/// [`Metrics::add`]; read the figures with the accessor methods.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// New orders.
    pub orders: u64,
    /// Cancels.
    pub cancels: u64,
    /// Fills.
    pub fills: u64,
    /// Risk refusals.
    pub refusals: u64,
    /// Guard alerts.
    pub alerts: u64,
    /// Signals taken and ignored.
    pub signals: (u64, u64),
    /// Sum of fill notionals (money raw).
    turnover: i128,
    /// Sum of fill fees (money raw).
    fees: i128,
    /// `(ts, equity)` at every `Pnl`.
    pub equity: Vec<(u64, Money)>,
    /// Last `Pnl` summary.
    pub last_total: Option<PnlSummary>,
    /// Equity before the window, when known.
    pub baseline: Option<Money>,
    /// Every fill (kept when `keep_fills`).
    pub fill_log: Vec<Fill>,
    /// Keep fills and agent samples for charts (a long replay needs only the totals).
    pub keep_series: bool,
    /// Per agent.
    pub agents: BTreeMap<u16, AgentFigures>,
    books: BTreeMap<(u16, u32), Book>,
    peak: Option<Money>,
    max_dd: Money,
    max_dd_pct: f64,
    minute_equity: Vec<(u64, Money)>,
}

impl OutputSink for Metrics {
    fn emit(&mut self, out: Output) {
        self.add(&out);
    }
}

impl Metrics {
    /// Empty figures; `keep_series` keeps per-fill and per-sample series for charts.
    pub fn new(keep_series: bool) -> Self {
        Self { keep_series, ..Self::default() }
    }

    /// Takes one output.
    pub fn add(&mut self, out: &Output) {
        match &out.output {
            EngineOutput::Order(o) if o.action == OrderAction::New => self.orders += 1,
            EngineOutput::Order(_) => self.cancels += 1,
            EngineOutput::Exec(r) if r.last_qty.raw > 0 => self.fill(r),
            EngineOutput::Exec(_) => {}
            EngineOutput::Risk(RiskOutput::Refusal(_)) => self.refusals += 1,
            EngineOutput::Risk(RiskOutput::Alert(_)) => self.alerts += 1,
            EngineOutput::Pnl { ts_event, total } => self.on_pnl(*ts_event, *total),
            EngineOutput::AgentPnl { ts_event, agent, summary } => {
                let a = self.agents.entry(agent.0).or_default();
                a.last = Some(*summary);
                if self.keep_series {
                    let util = if summary.capital.raw > 0 { summary.gross_exposure.raw as f64 / summary.capital.raw as f64 } else { 0.0 };
                    a.samples.push((*ts_event, summary.equity - summary.capital, util));
                }
            }
            EngineOutput::Signal { taken, .. } => {
                if *taken {
                    self.signals.0 += 1
                } else {
                    self.signals.1 += 1
                }
            }
        }
    }

    fn fill(&mut self, r: &ExecReport) {
        self.fills += 1;
        let value = notional(r.price, r.last_qty).map_or(0, |m| i128::from(m.raw));
        self.turnover += value;
        self.fees += i128::from(r.fee.raw);
        let sign: i128 = if r.side == Side::Buy { 1 } else { -1 };
        let q = i128::from(r.last_qty.raw);
        let book = self.books.entry((r.agent.0, r.instrument.0)).or_default();
        // A fill against the position realises on the part it closes; the rest opens.
        let realized = if book.qty != 0 && book.qty.signum() != sign {
            let closed = q.min(book.qty.abs());
            let cost_closed = book.cost * closed / book.qty.abs();
            let value_closed = value * closed / q;
            // Long closed by a sell: value − cost; short closed by a buy: cost − value.
            let pnl = if book.qty > 0 { value_closed - cost_closed } else { cost_closed - value_closed };
            book.cost -= cost_closed;
            book.qty += sign * closed;
            let open = q - closed;
            if open > 0 {
                book.qty += sign * open;
                book.cost = value * open / q;
            }
            Some(Money::from_raw(i64::try_from(pnl).unwrap_or(if pnl > 0 { i64::MAX } else { i64::MIN })))
        } else {
            book.qty += sign * q;
            book.cost += value;
            None
        };
        let a = self.agents.entry(r.agent.0).or_default();
        a.fills += 1;
        a.turnover += Money::from_raw(i64::try_from(value).unwrap_or(i64::MAX));
        a.fees += r.fee;
        if let Some(p) = realized {
            a.closes += 1;
            a.wins += u64::from(p.raw > 0);
        }
        if self.keep_series {
            self.fill_log.push(Fill {
                ts: r.ts_event,
                instrument: r.instrument.0,
                agent: r.agent.0,
                side: r.side,
                price: r.price,
                qty: r.last_qty,
                fee: r.fee,
                realized,
            });
        }
    }

    fn on_pnl(&mut self, ts: u64, total: PnlSummary) {
        let eq = total.equity;
        let peak = self.peak.map_or(eq, |p| p.max(eq));
        self.peak = Some(peak);
        if peak - eq > self.max_dd {
            self.max_dd = peak - eq;
        }
        if peak.raw > 0 {
            self.max_dd_pct = self.max_dd_pct.max((peak - eq).raw as f64 / peak.raw as f64 * 100.0);
        }
        self.last_total = Some(total);
        if self.keep_series {
            self.equity.push((ts, eq));
        }
        let minute = ts / MINUTE_NS;
        match self.minute_equity.last_mut() {
            Some(last) if last.0 == minute => last.1 = eq,
            _ => self.minute_equity.push((minute, eq)),
        }
    }

    /// Exact fee total.
    pub fn fees(&self) -> Money {
        Money::from_raw(i64::try_from(self.fees).unwrap_or(i64::MAX))
    }

    /// Exact turnover.
    pub fn turnover(&self) -> Money {
        Money::from_raw(i64::try_from(self.turnover).unwrap_or(i64::MAX))
    }

    /// PnL over the window (see the module docs); zero before the first `Pnl`.
    pub fn pnl(&self) -> Money {
        match self.last_total {
            Some(t) => t.equity - self.baseline.unwrap_or(t.capital),
            None => Money::from_raw(0),
        }
    }

    /// Largest fall from the running peak: money, and percent of that peak.
    pub fn max_drawdown(&self) -> (Money, f64) {
        (self.max_dd, self.max_dd_pct)
    }

    /// Share of reducing fills with a positive realised PnL, or `None` without such fills.
    pub fn hit_rate(&self) -> Option<f64> {
        let (closes, wins) = self.agents.values().fold((0, 0), |(c, w), a| (c + a.closes, w + a.wins));
        (closes > 0).then(|| wins as f64 / closes as f64)
    }

    /// Per-minute simple returns of equity (gaps carry the last equity).
    pub fn minute_returns(&self) -> Vec<f64> {
        let mut out = Vec::new();
        for pair in self.minute_equity.windows(2) {
            let ((m0, e0), (m1, e1)) = (pair[0], pair[1]);
            if e0.raw <= 0 {
                continue;
            }
            // Minutes with no sample in between: equity unchanged, zero returns.
            out.extend(std::iter::repeat_n(0.0, (m1 - m0 - 1).min(10_000_000) as usize));
            out.push(e1.raw as f64 / e0.raw as f64 - 1.0);
        }
        out
    }

    /// Annualised Sharpe ratio of per-minute returns (see the module docs).
    pub fn sharpe(&self) -> Option<f64> {
        sharpe(&self.minute_returns())
    }

    /// Annualised Sortino ratio of per-minute returns (see the module docs).
    pub fn sortino(&self) -> Option<f64> {
        sortino(&self.minute_returns())
    }
}

/// mean / sample standard deviation × √(minutes per year); `None` when undefined.
pub fn sharpe(r: &[f64]) -> Option<f64> {
    if r.len() < 2 {
        return None;
    }
    let n = r.len() as f64;
    let mean = r.iter().sum::<f64>() / n;
    let var = r.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (var > 0.0).then(|| mean / var.sqrt() * MINUTES_PER_YEAR.sqrt())
}

/// mean / downside deviation (√(Σ min(r,0)² / n)) × √(minutes per year); `None` when undefined.
pub fn sortino(r: &[f64]) -> Option<f64> {
    if r.len() < 2 {
        return None;
    }
    let n = r.len() as f64;
    let mean = r.iter().sum::<f64>() / n;
    let down = (r.iter().map(|x| x.min(0.0).powi(2)).sum::<f64>() / n).sqrt();
    (down > 0.0).then(|| mean / down * MINUTES_PER_YEAR.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sapphire_core::event::{AgentId, ExecKind};
    use sapphire_core::instrument::InstrumentId;

    fn fill(ts: u64, side: Side, price: &str, qty: &str, fee: &str) -> Output {
        Output {
            seq: ts as i64,
            output: EngineOutput::Exec(ExecReport {
                ts_event: ts,
                instrument: InstrumentId(0),
                agent: AgentId(1),
                kind: ExecKind::default(),
                side,
                price: Price::parse(price).unwrap(),
                last_qty: Quantity::parse(qty).unwrap(),
                fee: Money::parse(fee).unwrap(),
                ..ExecReport::default()
            }),
        }
    }

    fn pnl(ts: u64, equity: &str) -> Output {
        let equity = Money::parse(equity).unwrap();
        Output {
            seq: ts as i64,
            output: EngineOutput::Pnl {
                ts_event: ts,
                total: PnlSummary { equity, capital: Money::from_units(1000), ..PnlSummary::default() },
            },
        }
    }

    /// Hand-computed: buy 2 @ 100 (fee 0.20), sell 1 @ 110 (fee 0.11), sell 2 @ 90 (fee 0.18).
    /// Turnover = 200 + 110 + 180 = 490; fees = 0.20 + 0.11 + 0.18 = 0.49.
    /// Sell 1 @ 110 closes 1 of the long 2 (cost 100): +10 → a win.
    /// Sell 2 @ 90 closes the last long unit (cost 100): −10 → a loss, and opens a short of 1 at 90.
    /// Hit rate 1/2. Equity 1000 → 1012 → 1003 → 1009: peak 1012, max drawdown 9 = 9/1012 = 0.889%
    /// PnL = 1009 − 1000 = 9.
    #[test]
    fn a_hand_computed_sequence() {
        let mut m = Metrics::new(true);
        for o in [
            fill(1, Side::Buy, "100", "2", "0.20"),
            pnl(60_000_000_000, "1012"),
            fill(2, Side::Sell, "110", "1", "0.11"),
            pnl(120_000_000_000, "1003"),
            fill(3, Side::Sell, "90", "2", "0.18"),
            pnl(180_000_000_000, "1009"),
        ] {
            m.add(&o);
        }
        assert_eq!(m.turnover(), Money::from_units(490));
        assert_eq!(m.fees(), Money::parse("0.49").unwrap());
        assert_eq!(m.fill_log[1].realized, Some(Money::from_units(10)));
        assert_eq!(m.fill_log[2].realized, Some(Money::from_units(-10)));
        assert_eq!(m.hit_rate(), Some(0.5));
        assert_eq!(m.max_drawdown().0, Money::from_units(9));
        assert!((m.max_drawdown().1 - 900.0 / 1012.0).abs() < 1e-12);
        assert_eq!(m.pnl(), Money::from_units(9));
        // Returns: 1003/1012 − 1 and 1009/1003 − 1.
        let r = m.minute_returns();
        assert_eq!(r.len(), 2);
        assert!((r[0] - (1003.0 / 1012.0 - 1.0)).abs() < 1e-15);
        assert!(m.sharpe().is_some() && m.sortino().is_some());
        // The position left is short 1 at 90: another buy @ 80 realises +10.
        m.add(&fill(4, Side::Buy, "80", "1", "0"));
        assert_eq!(m.fill_log[3].realized, Some(Money::from_units(10)));
    }

    #[test]
    fn ratios_are_undefined_without_spread() {
        assert_eq!(sharpe(&[0.01]), None);
        assert_eq!(sharpe(&[0.01, 0.01]), None);
        assert_eq!(sortino(&[0.01, 0.02]), None);
        let s = sharpe(&[0.01, -0.01, 0.02]).unwrap();
        // mean 0.00667, stdev 0.01528 → 0.4364 × 725.0
        assert!((s - 0.436_435_78 * MINUTES_PER_YEAR.sqrt()).abs() < 1e-3, "{s}");
    }
}
