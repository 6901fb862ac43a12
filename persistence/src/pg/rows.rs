//! Engine outputs as table rows: one column list per table, shared by both batch methods so
//! UNNEST and COPY cannot drift apart.

use sapphire_core::engine::{EngineOutput, Output};
use sapphire_core::event::{ExecKind, Liquidity, Side};
use sapphire_core::fixed::{Money, Price, Quantity};
use sapphire_core::order::{OrderAction, OrderType, TimeInForce};
use sapphire_core::risk::{AlertKind, RiskOutput};

/// The Postgres type of a column as the sink writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ColType {
    /// `bigint`.
    Int8,
    /// `integer`.
    Int4,
    /// `boolean`.
    Bool,
    /// `text`.
    Text,
    /// `numeric` from a raw fixed-point integer with this many decimals.
    Numeric(u8),
    /// `timestamptz` from unix nanoseconds (kept to the microsecond).
    Timestamp,
}

/// One cell. `Null` is allowed in any column the DDL leaves nullable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    /// SQL NULL.
    Null,
    /// A `bigint` (also a raw fixed-point value or unix ns, by the column's type).
    Int(i64),
    /// An `integer`.
    Int4(i32),
    /// A `boolean`.
    Bool(bool),
    /// A `text` label.
    Text(&'static str),
}

/// A table the sink writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Table {
    /// Position in [`TABLES`] and in the per-table counters.
    pub index: usize,
    /// SQL name.
    pub name: &'static str,
    /// Columns in row order.
    pub columns: &'static [(&'static str, ColType)],
}

use ColType::{Bool, Int4, Int8, Numeric, Text, Timestamp};

const PRICE: ColType = Numeric(Price::DECIMALS as u8);
const QTY: ColType = Numeric(Quantity::DECIMALS as u8);
const MONEY: ColType = Numeric(Money::DECIMALS as u8);

/// `orders` ← [`EngineOutput::Order`].
pub(crate) const ORDERS: Table = Table {
    index: 0,
    name: "orders",
    columns: &[
        ("journal_seq", Int8),
        ("engine_seq", Int8),
        ("ts", Timestamp),
        ("ts_ns", Int8),
        ("origin_recv_ns", Int8),
        ("client_order_id", Int8),
        ("intent_id", Int8),
        ("instrument_id", Int8),
        ("agent_id", Int4),
        ("action", Text),
        ("side", Text),
        ("order_type", Text),
        ("tif", Text),
        ("reduce_only", Bool),
        ("price", PRICE),
        ("qty", QTY),
    ],
};

/// `executions` ← [`EngineOutput::Exec`].
pub(crate) const EXECUTIONS: Table = Table {
    index: 1,
    name: "executions",
    columns: &[
        ("journal_seq", Int8),
        ("engine_seq", Int8),
        ("ts", Timestamp),
        ("ts_ns", Int8),
        ("recv_ns", Int8),
        ("client_order_id", Int8),
        ("instrument_id", Int8),
        ("agent_id", Int4),
        ("kind", Text),
        ("side", Text),
        ("reason", Text),
        ("liquidity", Text),
        ("price", PRICE),
        ("last_qty", QTY),
        ("leaves_qty", QTY),
        ("fee", MONEY),
    ],
};

/// `signals` ← [`EngineOutput::Signal`].
pub(crate) const SIGNALS: Table = Table {
    index: 2,
    name: "signals",
    columns: &[
        ("journal_seq", Int8),
        ("engine_seq", Int8),
        ("ts", Timestamp),
        ("ts_ns", Int8),
        ("recv_ns", Int8),
        ("signal_id", Int8),
        ("instrument_id", Int8),
        ("agent_id", Int4),
        ("strength_bps", Int4),
        ("confidence_bps", Int4),
        ("ttl_ns", Int8),
        ("taken", Bool),
    ],
};

/// `risk_events` ← [`EngineOutput::Risk`].
pub(crate) const RISK_EVENTS: Table = Table {
    index: 3,
    name: "risk_events",
    columns: &[
        ("journal_seq", Int8),
        ("engine_seq", Int8),
        ("ts", Timestamp),
        ("ts_ns", Int8),
        ("event", Text),
        ("kind", Text),
        ("agent_id", Int4),
        ("instrument_id", Int8),
        ("intent_id", Int8),
        ("side", Text),
        ("price", PRICE),
        ("qty", QTY),
        ("value", Int8),
    ],
};

/// `pnl_snapshots` ← [`EngineOutput::Pnl`] (agent NULL) and [`EngineOutput::AgentPnl`].
pub(crate) const PNL_SNAPSHOTS: Table = Table {
    index: 4,
    name: "pnl_snapshots",
    columns: &[
        ("journal_seq", Int8),
        ("engine_seq", Int8),
        ("ts", Timestamp),
        ("ts_ns", Int8),
        ("agent_id", Int4),
        ("realized", MONEY),
        ("unrealized", MONEY),
        ("fees", MONEY),
        ("capital", MONEY),
        ("equity", MONEY),
        ("gross_exposure", MONEY),
    ],
};

/// `agent_margin` ← [`EngineOutput::AgentPnl`].
pub(crate) const AGENT_MARGIN: Table = Table {
    index: 5,
    name: "agent_margin",
    columns: &[
        ("journal_seq", Int8),
        ("engine_seq", Int8),
        ("ts", Timestamp),
        ("ts_ns", Int8),
        ("agent_id", Int4),
        ("capital", MONEY),
        ("equity", MONEY),
        ("gross_exposure", MONEY),
        ("leverage", Int8),
        ("margin_used", MONEY),
        ("margin_remaining", MONEY),
    ],
};

/// Every journal-fed table, in counter order.
pub(crate) const TABLES: [Table; 6] = [ORDERS, EXECUTIONS, SIGNALS, RISK_EVENTS, PNL_SNAPSHOTS, AGENT_MARGIN];

/// Rows of one table, flattened (`columns.len()` values per row).
#[derive(Clone, Debug, Default)]
pub(crate) struct TableRows {
    /// The cells, row after row.
    pub cells: Vec<Value>,
    /// Rows held.
    pub rows: usize,
}

/// A batch of journal records turned into rows, per table.
#[derive(Clone, Debug, Default)]
pub(crate) struct RowBatch {
    /// Rows per table, indexed like [`TABLES`].
    pub tables: [TableRows; TABLES.len()],
    /// Records that could not become rows (a value out of range), with the first reason.
    pub skipped: u64,
    /// Why the first skipped record was skipped.
    pub first_skip: Option<String>,
}

impl RowBatch {
    /// Empties the batch, keeping its allocations.
    pub fn clear(&mut self) {
        for t in &mut self.tables {
            t.cells.clear();
            t.rows = 0;
        }
        self.skipped = 0;
        self.first_skip = None;
    }

    /// Total rows.
    pub fn rows(&self) -> usize {
        self.tables.iter().map(|t| t.rows).sum()
    }

    /// Adds the rows of one journal record; a record with an unrepresentable value is
    /// skipped and counted instead.
    pub fn push(&mut self, journal_seq: u64, out: &Output, leverage: i64) {
        if let Err(why) = self.try_push(journal_seq, out, leverage) {
            self.skipped += 1;
            if self.first_skip.is_none() {
                self.first_skip = Some(format!("journal record {journal_seq} skipped: {why}"));
            }
        }
    }

    fn try_push(&mut self, journal_seq: u64, out: &Output, leverage: i64) -> Result<(), String> {
        let seq = Value::Int(i64::try_from(journal_seq).map_err(|_| format!("journal seq {journal_seq} above 2^63"))?);
        let eseq = Value::Int(out.seq);
        match &out.output {
            EngineOutput::Order(o) => {
                let (ts, ts_ns) = time(o.ts_event, "ts_event")?;
                self.row(
                    ORDERS,
                    &[
                        seq,
                        eseq,
                        ts,
                        ts_ns,
                        ns(o.origin_recv, "origin_recv")?,
                        bits(o.client_order_id),
                        bits(o.intent_id),
                        Value::Int(i64::from(o.instrument.0)),
                        agent(o.agent.0),
                        Value::Text(action_label(o.action)),
                        Value::Text(side_label(o.side)),
                        Value::Text(order_type_label(o.order_type)),
                        Value::Text(tif_label(o.tif)),
                        Value::Bool(o.reduce_only),
                        Value::Int(o.price.raw),
                        Value::Int(o.qty.raw),
                    ],
                );
            }
            EngineOutput::Exec(e) => {
                let (ts, ts_ns) = time(e.ts_event, "ts_event")?;
                self.row(
                    EXECUTIONS,
                    &[
                        seq,
                        eseq,
                        ts,
                        ts_ns,
                        ns(e.ts_recv, "ts_recv")?,
                        bits(e.client_order_id),
                        Value::Int(i64::from(e.instrument.0)),
                        agent(e.agent.0),
                        Value::Text(exec_kind_label(e.kind)),
                        Value::Text(side_label(e.side)),
                        Value::Text(e.reason.label()),
                        Value::Text(liquidity_label(e.liquidity)),
                        Value::Int(e.price.raw),
                        Value::Int(e.last_qty.raw),
                        Value::Int(e.leaves_qty.raw),
                        Value::Int(e.fee.raw),
                    ],
                );
            }
            EngineOutput::Signal { signal: s, taken } => {
                let (ts, ts_ns) = time(s.ts_event, "ts_event")?;
                self.row(
                    SIGNALS,
                    &[
                        seq,
                        eseq,
                        ts,
                        ts_ns,
                        ns(s.ts_recv, "ts_recv")?,
                        bits(s.signal_id),
                        Value::Int(i64::from(s.instrument.0)),
                        agent(s.agent.0),
                        Value::Int4(s.strength_bps),
                        Value::Int4(i32::from(s.confidence_bps)),
                        ns(s.ttl_ns, "ttl_ns")?,
                        Value::Bool(*taken),
                    ],
                );
            }
            EngineOutput::Risk(RiskOutput::Refusal(r)) => {
                let (ts, ts_ns) = time(r.ts_event, "ts_event")?;
                self.row(
                    RISK_EVENTS,
                    &[
                        seq,
                        eseq,
                        ts,
                        ts_ns,
                        Value::Text("refusal"),
                        Value::Text(r.reason.label()),
                        agent(r.agent.0),
                        Value::Int(i64::from(r.instrument.0)),
                        bits(r.intent_id),
                        Value::Text(side_label(r.side)),
                        Value::Int(r.price.raw),
                        Value::Int(r.qty.raw),
                        Value::Null,
                    ],
                );
            }
            EngineOutput::Risk(RiskOutput::Alert(a)) => {
                let (ts, ts_ns) = time(a.ts_event, "ts_event")?;
                self.row(
                    RISK_EVENTS,
                    &[
                        seq,
                        eseq,
                        ts,
                        ts_ns,
                        Value::Text("alert"),
                        Value::Text(alert_label(a.kind)),
                        agent(a.agent.0),
                        Value::Null,
                        Value::Null,
                        Value::Null,
                        Value::Null,
                        Value::Null,
                        Value::Int(a.value),
                    ],
                );
            }
            EngineOutput::Pnl { ts_event, total: p } => {
                let (ts, ts_ns) = time(*ts_event, "ts_event")?;
                self.row(
                    PNL_SNAPSHOTS,
                    &[
                        seq,
                        eseq,
                        ts,
                        ts_ns,
                        Value::Null,
                        Value::Int(p.realized.raw),
                        Value::Int(p.unrealized.raw),
                        Value::Int(p.fees.raw),
                        Value::Int(p.capital.raw),
                        Value::Int(p.equity.raw),
                        Value::Int(p.gross_exposure.raw),
                    ],
                );
            }
            EngineOutput::AgentPnl { ts_event, agent: a, summary: p } => {
                let (ts, ts_ns) = time(*ts_event, "ts_event")?;
                self.row(
                    PNL_SNAPSHOTS,
                    &[
                        seq,
                        eseq,
                        ts,
                        ts_ns,
                        agent(a.0),
                        Value::Int(p.realized.raw),
                        Value::Int(p.unrealized.raw),
                        Value::Int(p.fees.raw),
                        Value::Int(p.capital.raw),
                        Value::Int(p.equity.raw),
                        Value::Int(p.gross_exposure.raw),
                    ],
                );
                // Same truncating division as the risk engine's margin check.
                let leverage = leverage.max(1);
                let used = p.gross_exposure.raw / leverage;
                let remaining = p.capital.raw.checked_sub(used);
                self.row(
                    AGENT_MARGIN,
                    &[
                        seq,
                        eseq,
                        ts,
                        ts_ns,
                        agent(a.0),
                        Value::Int(p.capital.raw),
                        Value::Int(p.equity.raw),
                        Value::Int(p.gross_exposure.raw),
                        Value::Int(leverage),
                        Value::Int(used),
                        remaining.map_or(Value::Null, Value::Int),
                    ],
                );
            }
        }
        Ok(())
    }

    fn row(&mut self, table: Table, cells: &[Value]) {
        debug_assert_eq!(cells.len(), table.columns.len(), "{} row width", table.name);
        let t = &mut self.tables[table.index];
        t.cells.extend_from_slice(cells);
        t.rows += 1;
    }
}

/// A u64 event time as the `ts` and `ts_ns` cells; times past 2262 (above i64 ns) are refused.
fn time(ns_u64: u64, what: &str) -> Result<(Value, Value), String> {
    let v = ns(ns_u64, what)?;
    Ok((v, v))
}

fn ns(v: u64, what: &str) -> Result<Value, String> {
    i64::try_from(v).map(Value::Int).map_err(|_| format!("{what} {v} ns is beyond the year 2262"))
}

/// A u64 id stored as the bigint with the same bits (lossless).
fn bits(id: u64) -> Value {
    Value::Int(id as i64)
}

fn agent(id: u16) -> Value {
    Value::Int4(i32::from(id))
}

pub(crate) fn side_label(s: Side) -> &'static str {
    match s {
        Side::Buy => "buy",
        Side::Sell => "sell",
    }
}

fn action_label(a: OrderAction) -> &'static str {
    match a {
        OrderAction::New => "new",
        OrderAction::CancelAll => "cancel_all",
    }
}

fn order_type_label(t: OrderType) -> &'static str {
    match t {
        OrderType::Limit => "limit",
        OrderType::Market => "market",
    }
}

fn tif_label(t: TimeInForce) -> &'static str {
    match t {
        TimeInForce::Gtc => "gtc",
        TimeInForce::Ioc => "ioc",
        TimeInForce::PostOnly => "post_only",
    }
}

fn exec_kind_label(k: ExecKind) -> &'static str {
    match k {
        ExecKind::Ack => "ack",
        ExecKind::PartialFill => "partial_fill",
        ExecKind::Fill => "fill",
        ExecKind::Canceled => "canceled",
        ExecKind::Rejected => "rejected",
    }
}

fn liquidity_label(l: Liquidity) -> &'static str {
    match l {
        Liquidity::None => "none",
        Liquidity::Maker => "maker",
        Liquidity::Taker => "taker",
    }
}

fn alert_label(k: AlertKind) -> &'static str {
    match k {
        AlertKind::DrawdownWarning => "drawdown_warning",
        AlertKind::DrawdownHalt => "drawdown_halt",
        AlertKind::MarginLadder => "margin_ladder",
        AlertKind::Killed => "killed",
        AlertKind::Halted => "halted",
        AlertKind::Resumed => "resumed",
        AlertKind::AgentPaused => "agent_paused",
        AlertKind::LimitChanged => "limit_changed",
        AlertKind::Flattening => "flattening",
        AlertKind::Flattened => "flattened",
        AlertKind::AgentMarginLadder => "agent_margin_ladder",
    }
}

/// The exact decimal text of a raw fixed-point value with `scale` decimals, e.g.
/// `decimal_string(12_345_678_901_234, 9) == "12345.678901234"`. Built from the integer's
/// digits, never through floating point.
pub fn decimal_string(raw: i64, scale: u32) -> String {
    let sign = if raw < 0 { "-" } else { "" };
    let abs = raw.unsigned_abs();
    let div = 10u64.pow(scale);
    if scale == 0 {
        return format!("{sign}{abs}");
    }
    format!("{sign}{}.{:0width$}", abs / div, abs % div, width = scale as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings_are_exact() {
        assert_eq!(decimal_string(12_345_678_901_234, 9), "12345.678901234");
        assert_eq!(decimal_string(-1, 9), "-0.000000001");
        assert_eq!(decimal_string(0, 8), "0.00000000");
        assert_eq!(decimal_string(i64::MIN, 9), "-9223372036.854775808");
        assert_eq!(decimal_string(i64::MAX, 8), "92233720368.54775807");
        assert_eq!(decimal_string(42, 0), "42");
    }

    #[test]
    fn every_row_matches_its_table_width() {
        use sapphire_core::event::{AgentId, ExecReport, Signal};
        use sapphire_core::order::Order;
        use sapphire_core::portfolio::PnlSummary;
        use sapphire_core::risk::{RiskAlert, RiskRefusal};
        let outs = [
            EngineOutput::Order(Order::default()),
            EngineOutput::Exec(ExecReport::default()),
            EngineOutput::Signal { signal: Signal::default(), taken: true },
            EngineOutput::Risk(RiskOutput::Refusal(RiskRefusal::default())),
            EngineOutput::Risk(RiskOutput::Alert(RiskAlert::default())),
            EngineOutput::Pnl { ts_event: 1, total: PnlSummary::default() },
            EngineOutput::AgentPnl { ts_event: 1, agent: AgentId(3), summary: PnlSummary::default() },
        ];
        let mut b = RowBatch::default();
        for (i, o) in outs.iter().enumerate() {
            b.push(i as u64, &Output { seq: 7, output: *o }, 1);
        }
        assert_eq!(b.skipped, 0);
        assert_eq!(b.rows(), 8);
        for t in TABLES {
            let rows = &b.tables[t.index];
            assert_eq!(rows.cells.len(), rows.rows * t.columns.len(), "{}", t.name);
        }
    }

    #[test]
    fn out_of_range_times_are_skipped_and_counted() {
        use sapphire_core::order::Order;
        let mut b = RowBatch::default();
        let o = Order { ts_event: u64::MAX, ..Order::default() };
        b.push(0, &Output { seq: 0, output: EngineOutput::Order(o) }, 1);
        b.push(u64::MAX, &Output { seq: 0, output: EngineOutput::Order(Order::default()) }, 1);
        assert_eq!((b.skipped, b.rows()), (2, 0));
        assert!(b.first_skip.as_deref().unwrap_or("").contains("2262"), "{:?}", b.first_skip);
    }
}
