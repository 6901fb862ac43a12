//! Journal records as flat, named fields: one text form for `sapphire journal dump` (JSON
//! lines and CSV) and for the edge's JSON messages. Decimals are exact strings (no float
//! round trip); instruments are named from the journal's instrument list.

use sapphire_core::engine::{EngineOutput, Output};
use sapphire_core::event::{AgentId, ControlKind, Event, Side};
use sapphire_core::instrument::InstrumentId;
use sapphire_core::risk::{RiskOutput, ALL_INSTRUMENTS};
use std::fmt::Write as _;

/// A field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An unsigned integer.
    U(u64),
    /// A signed integer.
    I(i64),
    /// Text (decimals are text too: exact).
    S(String),
    /// A flag.
    B(bool),
}

/// A record as its kind and named fields, in a fixed order per kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Fields {
    /// What the record is (`quote`, `order`, `fill`, ...).
    pub kind: &'static str,
    /// Its fields.
    pub fields: Vec<(&'static str, Value)>,
}

/// Instrument names by id (the journal's `instruments.txt`, `venue symbol` per line).
#[derive(Debug, Clone, Default)]
pub struct Names(pub Vec<String>);

impl Names {
    /// Reads `instruments.txt` lines (`venue symbol`); a missing file gives ids as names.
    pub fn from_listing(text: &str) -> Self {
        Names(text.lines().filter(|l| !l.trim().is_empty()).map(|l| l.split_whitespace().last().unwrap_or(l).to_string()).collect())
    }

    fn symbol(&self, id: InstrumentId) -> Value {
        match self.0.get(id.index()) {
            Some(s) => Value::S(s.clone()),
            None => Value::S(format!("#{}", id.0)),
        }
    }
}

fn side(s: Side) -> Value {
    Value::S(if s == Side::Buy { "buy" } else { "sell" }.into())
}

fn lower<T: std::fmt::Debug>(v: T) -> Value {
    let text = format!("{v:?}");
    // CamelCase → snake_case.
    let mut out = String::with_capacity(text.len() + 4);
    for (i, c) in text.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    Value::S(out)
}

fn dec(v: impl std::fmt::Display) -> Value {
    Value::S(v.to_string())
}

fn agent(a: AgentId) -> Value {
    Value::U(u64::from(a.0))
}

/// An inbound event's fields.
pub fn event_fields(e: &Event, names: &Names) -> Fields {
    use Value::*;
    match e {
        Event::Quote(q) => Fields {
            kind: "quote",
            fields: vec![
                ("ts_event", U(q.ts_event)),
                ("ts_recv", U(q.ts_recv)),
                ("symbol", names.symbol(q.instrument)),
                ("bid_price", dec(q.bid_price)),
                ("bid_qty", dec(q.bid_qty)),
                ("ask_price", dec(q.ask_price)),
                ("ask_qty", dec(q.ask_qty)),
            ],
        },
        Event::Trade(t) => Fields {
            kind: "trade",
            fields: vec![
                ("ts_event", U(t.ts_event)),
                ("ts_recv", U(t.ts_recv)),
                ("symbol", names.symbol(t.instrument)),
                ("side", side(t.aggressor)),
                ("price", dec(t.price)),
                ("qty", dec(t.qty)),
                ("trade_id", U(t.trade_id)),
            ],
        },
        Event::BookDelta(d) => Fields {
            kind: "book_delta",
            fields: vec![
                ("ts_event", U(d.ts_event)),
                ("ts_recv", U(d.ts_recv)),
                ("symbol", names.symbol(d.instrument)),
                ("side", side(d.side)),
                ("price", dec(d.price)),
                ("qty", dec(d.qty)),
                ("first_update_id", U(d.first_update_id)),
                ("last_update_id", U(d.last_update_id)),
                ("prev_update_id", U(d.prev_update_id)),
                ("flags", U(u64::from(d.flags))),
            ],
        },
        Event::Signal(s) => Fields { kind: "signal", fields: signal(s, names) },
        Event::ExecReport(r) => Fields { kind: "exec_report", fields: exec(r, names) },
        Event::Timer(t) => Fields {
            kind: "timer",
            fields: vec![("ts_event", U(t.ts_event)), ("ts_recv", U(t.ts_recv)), ("timer_id", U(u64::from(t.timer_id)))],
        },
        Event::Control(c) => {
            let mut fields = vec![
                ("ts_event", U(c.ts_event)),
                ("ts_recv", U(c.ts_recv)),
                ("control", lower(c.kind)),
                ("limit", lower(c.limit)),
                ("agent", agent(c.agent)),
                ("value", I(c.value)),
            ];
            // Operator orders name their symbol (a flatten may cover all), a manual order its
            // signed quantity and limit price (0: at the touch).
            match c.kind {
                ControlKind::Flatten if c.instrument == ALL_INSTRUMENTS => fields.push(("symbol", S("all".into()))),
                ControlKind::Flatten => fields.push(("symbol", names.symbol(c.instrument))),
                ControlKind::ManualOrder => {
                    fields.push(("symbol", names.symbol(c.instrument)));
                    fields.push(("qty", dec(sapphire_core::fixed::Quantity::from_raw(c.value))));
                    fields.push(("price", dec(c.price)));
                }
                _ => {}
            }
            Fields { kind: "control", fields }
        }
    }
}

fn signal(s: &sapphire_core::event::Signal, names: &Names) -> Vec<(&'static str, Value)> {
    use Value::*;
    vec![
        ("ts_event", U(s.ts_event)),
        ("ts_recv", U(s.ts_recv)),
        ("symbol", names.symbol(s.instrument)),
        ("agent", agent(s.agent)),
        ("strength_bps", I(i64::from(s.strength_bps))),
        ("confidence_bps", U(u64::from(s.confidence_bps))),
        ("ttl_ns", U(s.ttl_ns)),
        ("signal_id", U(s.signal_id)),
    ]
}

fn exec(r: &sapphire_core::event::ExecReport, names: &Names) -> Vec<(&'static str, Value)> {
    use Value::*;
    vec![
        ("ts_event", U(r.ts_event)),
        ("ts_recv", U(r.ts_recv)),
        ("symbol", names.symbol(r.instrument)),
        ("agent", agent(r.agent)),
        ("exec", lower(r.kind)),
        ("side", side(r.side)),
        ("reason", S(r.reason.label().into())),
        ("liquidity", lower(r.liquidity)),
        ("client_order_id", U(r.client_order_id)),
        ("price", dec(r.price)),
        ("last_qty", dec(r.last_qty)),
        ("leaves_qty", dec(r.leaves_qty)),
        ("fee", dec(r.fee)),
    ]
}

fn pnl(s: &sapphire_core::portfolio::PnlSummary) -> Vec<(&'static str, Value)> {
    vec![
        ("equity", dec(s.equity)),
        ("capital", dec(s.capital)),
        ("realized", dec(s.realized)),
        ("unrealized", dec(s.unrealized)),
        ("fees", dec(s.fees)),
        ("gross_exposure", dec(s.gross_exposure)),
    ]
}

/// An engine output's fields (`inbound_seq` is the inbound event that caused it).
pub fn output_fields(o: &Output, names: &Names) -> Fields {
    use Value::*;
    let mut fields = vec![("inbound_seq", I(o.seq))];
    let kind = match &o.output {
        EngineOutput::Order(x) => {
            fields.extend([
                ("ts_event", U(x.ts_event)),
                ("symbol", names.symbol(x.instrument)),
                ("agent", agent(x.agent)),
                ("action", lower(x.action)),
                ("side", side(x.side)),
                ("order_type", lower(x.order_type)),
                ("tif", lower(x.tif)),
                ("reduce_only", B(x.reduce_only)),
                ("price", dec(x.price)),
                ("qty", dec(x.qty)),
                ("client_order_id", U(x.client_order_id)),
                ("intent_id", U(x.intent_id)),
                ("origin_recv", U(x.origin_recv)),
            ]);
            "order"
        }
        EngineOutput::Exec(r) => {
            fields.extend(exec(r, names));
            if r.last_qty.raw > 0 {
                "fill"
            } else {
                "exec_report"
            }
        }
        EngineOutput::Risk(RiskOutput::Refusal(r)) => {
            fields.extend([
                ("ts_event", U(r.ts_event)),
                ("symbol", names.symbol(r.instrument)),
                ("agent", agent(r.agent)),
                ("reason", S(r.reason.label().into())),
                ("side", side(r.side)),
                ("price", dec(r.price)),
                ("qty", dec(r.qty)),
                ("intent_id", U(r.intent_id)),
            ]);
            "risk_refusal"
        }
        EngineOutput::Risk(RiskOutput::Alert(a)) => {
            fields.extend([("ts_event", U(a.ts_event)), ("alert", lower(a.kind)), ("agent", agent(a.agent)), ("value", I(a.value))]);
            "risk_alert"
        }
        EngineOutput::Pnl { ts_event, total } => {
            fields.push(("ts_event", U(*ts_event)));
            fields.extend(pnl(total));
            "pnl"
        }
        EngineOutput::AgentPnl { ts_event, agent: a, summary } => {
            fields.extend([("ts_event", U(*ts_event)), ("agent", agent(*a))]);
            fields.extend(pnl(summary));
            "agent_pnl"
        }
        EngineOutput::Signal { signal: s, taken } => {
            fields.extend(signal(s, names));
            fields.push(("taken", B(*taken)));
            "signal"
        }
    };
    Fields { kind, fields }
}

/// Appends `s` as a JSON string.
pub fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// One JSON object: `{"journal_seq":…,"kind":…,<fields>}`.
pub fn to_json(out: &mut String, journal_seq: u64, f: &Fields) {
    let _ = write!(out, "{{\"journal_seq\":{journal_seq},\"kind\":\"{}\"", f.kind);
    for (k, v) in &f.fields {
        let _ = write!(out, ",\"{k}\":");
        match v {
            Value::U(n) => {
                let _ = write!(out, "{n}");
            }
            Value::I(n) => {
                let _ = write!(out, "{n}");
            }
            Value::B(b) => {
                let _ = write!(out, "{b}");
            }
            Value::S(s) => json_str(out, s),
        }
    }
    out.push('}');
}

/// The CSV columns: the common ones, then `detail` with the rest as `key=value;…`.
pub const CSV_HEADER: &str = "journal_seq,inbound_seq,kind,ts_event,symbol,agent,side,price,qty,detail";

fn csv_cell(out: &mut String, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::U(n) => n.to_string(),
        Value::I(n) => n.to_string(),
        Value::B(b) => b.to_string(),
        Value::S(s) => s.clone(),
    }
}

/// One CSV row under [`CSV_HEADER`].
pub fn to_csv(out: &mut String, journal_seq: u64, f: &Fields) {
    let get = |name: &str| f.fields.iter().find(|(k, _)| *k == name).map(|(_, v)| text(v)).unwrap_or_default();
    let _ = write!(out, "{journal_seq},");
    csv_cell(out, &get("inbound_seq"));
    out.push(',');
    out.push_str(f.kind);
    out.push(',');
    for col in ["ts_event", "symbol", "agent", "side", "price", "qty"] {
        let mut v = get(col);
        if col == "qty" && v.is_empty() {
            // Fills carry their quantity as last_qty.
            v = get("last_qty");
        }
        csv_cell(out, &v);
        out.push(',');
    }
    let common = ["inbound_seq", "ts_event", "symbol", "agent", "side", "price", "qty"];
    let detail: Vec<String> = f.fields.iter().filter(|(k, _)| !common.contains(k)).map(|(k, v)| format!("{k}={}", text(v))).collect();
    csv_cell(out, &detail.join(";"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use sapphire_core::fixed::{Price, Quantity};
    use sapphire_core::order::Order;

    #[test]
    fn decimals_are_exact_and_text_is_escaped() {
        let names = Names::from_listing("binance BTC,\"USDT\n");
        let o = Output {
            seq: 7,
            output: EngineOutput::Order(Order {
                price: Price::from_raw(12_345_678_901_234),
                qty: Quantity::from_raw(1),
                client_order_id: 99,
                ..Order::default()
            }),
        };
        let f = output_fields(&o, &names);
        let mut json = String::new();
        to_json(&mut json, 3, &f);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["kind"], "order");
        assert_eq!(v["journal_seq"], 3);
        assert_eq!(v["inbound_seq"], 7);
        assert_eq!(v["price"], "12345.678901234");
        assert_eq!(v["qty"], "0.00000001");
        assert_eq!(v["symbol"], "BTC,\"USDT");
        assert_eq!(v["action"], "new");
        let mut csv = String::new();
        to_csv(&mut csv, 3, &f);
        assert!(csv.starts_with("3,7,order,0,\"BTC,\"\"USDT\",0,buy,12345.678901234,0.00000001,"), "{csv}");
        assert_eq!(csv.lines().count(), 1);
        // An unknown instrument id is named by its number, not a panic.
        let f = output_fields(
            &Output { seq: 1, output: EngineOutput::Order(Order { instrument: InstrumentId(9), ..Order::default() }) },
            &names,
        );
        assert!(f.fields.contains(&("symbol", Value::S("#9".into()))));
    }

    #[test]
    fn operator_orders_show_their_symbol_quantity_and_price() {
        use sapphire_core::event::Control;
        let names = Names::from_listing("binance BTCUSDT\nbinance ETHUSDT\n");
        let fields = |c: Control| event_fields(&Event::Control(c), &names).fields;
        let manual = fields(Control {
            kind: ControlKind::ManualOrder,
            agent: AgentId(15),
            instrument: InstrumentId(1),
            value: -Quantity::parse("0.5").unwrap().raw,
            price: Price::parse("2500.1").unwrap(),
            ..Control::default()
        });
        for want in [
            ("control", Value::S("manual_order".into())),
            ("symbol", Value::S("ETHUSDT".into())),
            ("qty", Value::S("-0.50000000".into())),
            ("price", Value::S("2500.100000000".into())),
        ] {
            assert!(manual.contains(&want), "{want:?} in {manual:?}");
        }
        let all = fields(Control { kind: ControlKind::Flatten, instrument: ALL_INSTRUMENTS, ..Control::default() });
        assert!(all.contains(&("symbol", Value::S("all".into()))), "{all:?}");
        let kill = fields(Control { kind: ControlKind::Kill, value: 1, ..Control::default() });
        assert!(!kill.iter().any(|(k, _)| *k == "symbol"), "other commands keep their fields: {kill:?}");
    }
}
