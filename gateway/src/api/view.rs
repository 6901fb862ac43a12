//! JSON views of the edge's state and records, shared by `/dashboard`, the paged routes and
//! `/ws`, so every consumer sees the same names and units.
//!
//! Money is a decimal string with two places (`"2005.00"`), prices and quantities decimal
//! strings at full precision without trailing zeros, times `u64` nanoseconds (`ts_event`),
//! and 64-bit ids that exceed JavaScript's exact integers (client order ids, signal ids)
//! strings.

use super::state::{EquityPoint, FillRecord, OrderRecord, RiskRecord, SignalRecord};
use super::{ApiContext, EdgeState};
use sapphire_core::event::{ExecKind, Liquidity, Side};
use sapphire_core::fixed::Money;
use sapphire_core::instrument::InstrumentId;
use sapphire_core::order::{OrderAction, OrderType, TimeInForce};
use sapphire_core::risk::{AlertKind, RiskAlert, RiskOutput};
use serde_json::{json, Value};
use std::fmt::Write;
use std::sync::atomic::Ordering;

/// Books listed in a snapshot at most.
const MAX_BOOKS_SHOWN: usize = 32;

/// Money with two decimals.
pub(super) fn usd(m: Money) -> String {
    format!("{m:.2}")
}

/// A fixed-point value at full precision, trailing zeros dropped (`"0.001"`, `"50000.1"`).
pub(super) fn decimal(d: impl std::fmt::Display) -> String {
    let mut s = d.to_string();
    if s.contains('.') {
        let kept = s.trim_end_matches('0').trim_end_matches('.').len();
        s.truncate(kept);
    }
    s
}

/// An agent's name: the in-core strategies' (`core-momentum`, `core-imbalance`), apart from
/// the agents' (`agent-2`...), so a strategy and an agent of the same kind never share one.
pub(super) fn agent_name(s: &EdgeState, id: u16) -> String {
    if let Some(name) = sapphire_core::aggregate::in_core_strategy_name(sapphire_core::event::AgentId(id)) {
        return name.into();
    }
    match s.agent_name(id) {
        Some(name) => name.into(),
        None => format!("agent-{id}"),
    }
}

fn symbol(s: &EdgeState, instrument: InstrumentId) -> String {
    s.symbols().get(instrument.index()).cloned().unwrap_or_else(|| format!("#{}", instrument.0))
}

fn side(side: Side) -> &'static str {
    match side {
        Side::Buy => "buy",
        Side::Sell => "sell",
    }
}

/// What stopped trading, as an operator reads it.
pub(super) fn halt_reason(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::Killed => "kill switch",
        AlertKind::Halted => "operator halt",
        AlertKind::DrawdownHalt => "drawdown halt",
        _ => "other",
    }
}

fn alert_label(kind: AlertKind) -> &'static str {
    match kind {
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

/// A guard alert in words.
pub(super) fn alert_text(s: &EdgeState, a: &RiskAlert) -> String {
    let pct = |bps: i64| format!("{}.{:02}%", bps / 100, (bps % 100).abs());
    match a.kind {
        AlertKind::DrawdownWarning => format!("drawdown warning: {} from peak equity", pct(a.value)),
        AlertKind::DrawdownHalt => format!("drawdown halt: {} from peak equity", pct(a.value)),
        AlertKind::MarginLadder => match a.value {
            0 => "margin ladder back to normal".into(),
            1 => "margin ladder: reduce-only".into(),
            _ => "margin ladder: deleverage".into(),
        },
        AlertKind::Killed => "kill switch engaged".into(),
        AlertKind::Halted => "trading halted by operator".into(),
        AlertKind::Resumed => "trading resumed".into(),
        AlertKind::AgentPaused => format!("{} {}", agent_name(s, a.agent.0), if a.value == 1 { "paused" } else { "resumed" }),
        AlertKind::LimitChanged => format!("limit changed to {}", a.value),
        AlertKind::Flattening => format!("flatten of {}: pass {}", flatten_scope(s, a.agent.0), a.value),
        AlertKind::Flattened if a.value == 0 => format!("flatten of {}: flat", flatten_scope(s, a.agent.0)),
        AlertKind::Flattened => format!("flatten of {} gave up: {} position(s) still open", flatten_scope(s, a.agent.0), a.value),
        AlertKind::AgentMarginLadder => match a.value {
            0 => format!("{} margin back to normal", agent_name(s, a.agent.0)),
            1 => format!("{} margin: reduce-only, resting orders cancelled", agent_name(s, a.agent.0)),
            _ => format!("{} margin: deleverage, positions cut", agent_name(s, a.agent.0)),
        },
    }
}

/// Whose positions a flatten closes.
fn flatten_scope(s: &EdgeState, agent: u16) -> String {
    if agent == sapphire_core::risk::ALL_AGENTS.0 {
        "every agent".into()
    } else {
        agent_name(s, agent)
    }
}

fn status(r: &OrderRecord) -> &'static str {
    match (r.order.action, r.status) {
        (OrderAction::CancelAll, _) => "sent",
        (_, None) => "sent",
        (_, Some(ExecKind::Ack)) => "open",
        (_, Some(ExecKind::PartialFill)) => "partially_filled",
        (_, Some(ExecKind::Fill)) => "filled",
        (_, Some(ExecKind::Canceled)) => "canceled",
        (_, Some(ExecKind::Rejected)) => "rejected",
    }
}

/// One order.
pub(super) fn order(s: &EdgeState, id: u64, r: &OrderRecord) -> Value {
    let o = &r.order;
    json!({
        "id": id,
        "seq": r.seq,
        "ts_event": o.ts_event,
        "client_order_id": o.client_order_id.to_string(),
        "agent_id": o.agent.0,
        "agent": agent_name(s, o.agent.0),
        "symbol": symbol(s, o.instrument),
        "shard": s.shard_of(o.instrument),
        "action": match o.action { OrderAction::New => "new", OrderAction::CancelAll => "cancel_all" },
        "side": side(o.side),
        "type": match o.order_type { OrderType::Limit => "limit", OrderType::Market => "market" },
        "tif": match o.tif { TimeInForce::Gtc => "gtc", TimeInForce::Ioc => "ioc", TimeInForce::PostOnly => "post_only" },
        "reduce_only": o.reduce_only,
        "price": decimal(o.price),
        "qty": decimal(o.qty),
        "status": status(r),
        "filled": decimal(r.filled),
        "reason": (r.reason != sapphire_core::event::RejectReason::None).then(|| r.reason.label()),
    })
}

/// One fill.
pub(super) fn fill(s: &EdgeState, id: u64, f: &FillRecord) -> Value {
    let r = &f.report;
    json!({
        "id": id,
        "seq": f.seq,
        "ts_event": r.ts_event,
        "client_order_id": r.client_order_id.to_string(),
        "agent_id": r.agent.0,
        "agent": agent_name(s, r.agent.0),
        "symbol": symbol(s, r.instrument),
        "shard": s.shard_of(r.instrument),
        "side": side(r.side),
        "price": decimal(r.price),
        "qty": decimal(r.last_qty),
        "notional": sapphire_core::fixed::notional(r.price, r.last_qty).map(usd),
        "fee": decimal(r.fee),
        "liquidity": match r.liquidity { Liquidity::Maker => "maker", Liquidity::Taker => "taker", Liquidity::None => "none" },
        "leaves_qty": decimal(r.leaves_qty),
    })
}

/// One signal.
pub(super) fn signal(s: &EdgeState, id: u64, r: &SignalRecord) -> Value {
    let g = &r.signal;
    json!({
        "id": id,
        "seq": r.seq,
        "ts_event": g.ts_event,
        "agent_id": g.agent.0,
        "agent": agent_name(s, g.agent.0),
        "symbol": symbol(s, g.instrument),
        "shard": s.shard_of(g.instrument),
        "strength_bps": g.strength_bps,
        "confidence_bps": g.confidence_bps,
        "ttl_ms": g.ttl_ns / 1_000_000,
        "signal_id": g.signal_id.to_string(),
        "taken": r.taken,
    })
}

/// One refusal or guard alert.
pub(super) fn risk(s: &EdgeState, id: u64, r: &RiskRecord) -> Value {
    match r.risk {
        RiskOutput::Refusal(f) => json!({
            "id": id,
            "seq": r.seq,
            "kind": "refusal",
            "ts_event": f.ts_event,
            "agent_id": f.agent.0,
            "agent": agent_name(s, f.agent.0),
            "symbol": symbol(s, f.instrument),
            "shard": s.shard_of(f.instrument),
            "reason": f.reason.label(),
            "side": side(f.side),
            "price": decimal(f.price),
            "qty": decimal(f.qty),
            "text": format!("refused {} {} {}: {}", side(f.side), decimal(f.qty), symbol(s, f.instrument), f.reason.label()),
        }),
        RiskOutput::Alert(a) => json!({
            "id": id,
            "seq": r.seq,
            "kind": "alert",
            "ts_event": a.ts_event,
            "agent_id": a.agent.0,
            "alert": alert_label(a.kind),
            "value": a.value,
            "text": alert_text(s, &a),
        }),
    }
}

/// Every open or traded position.
pub(super) fn positions(s: &EdgeState) -> Value {
    let items: Vec<Value> = s
        .positions()
        .iter()
        .map(|p| {
            let unrealized = p.position.unrealized(p.mark);
            json!({
                "agent_id": p.agent.0,
                "agent": agent_name(s, p.agent.0),
                "symbol": symbol(s, p.instrument),
                "shard": s.shard_of(p.instrument),
                "qty": decimal(p.position.qty),
                "avg_price": decimal(p.position.avg_price),
                "mark": decimal(p.mark),
                "notional": sapphire_core::fixed::notional(p.mark, p.position.qty.abs()).map(usd),
                "unrealized": usd(unrealized),
                "realized": usd(p.position.realized),
                "fees": usd(p.position.fees),
            })
        })
        .collect();
    Value::Array(items)
}

/// The spread over the mid, in basis points (`None` with a side empty).
fn spread_bps(top: &sapphire_core::board::Top) -> Option<f64> {
    let mid = top.mid()?;
    (mid.raw > 0).then(|| (top.ask.raw - top.bid.raw) as f64 * 10_000.0 / mid.raw as f64)
}

/// Stage latency percentiles, ns.
pub(super) fn latency(s: &EdgeState) -> Value {
    Value::Array(
        s.latency()
            .iter()
            .map(|l| json!({ "stage": l.name, "count": l.count, "p50": l.p50, "p99": l.p99, "p999": l.p999, "max": l.max }))
            .collect(),
    )
}

/// One readiness check.
fn check(name: &str, ok: bool, detail: String) -> Value {
    json!({ "name": name, "ok": ok, "detail": detail })
}

/// The readiness checks: core, books, journal, then every registered source.
pub(super) fn checks(s: &EdgeState) -> Vec<Value> {
    let out_of_sync = s.books_out_of_sync();
    let journal_errors = s.pipeline().journal_errors.load(Ordering::Relaxed);
    let mut checks = vec![
        check("core", s.core_running(), if s.core_running() { "running".into() } else { "not running".into() }),
        check(
            "books",
            out_of_sync.is_empty(),
            if out_of_sync.is_empty() { "every book in sync".into() } else { format!("out of sync: {}", out_of_sync.join(",")) },
        ),
        check(
            "journal",
            journal_errors == 0,
            if journal_errors == 0 { "appending".into() } else { format!("{journal_errors} appends failed") },
        ),
    ];
    for source in s.sources() {
        let (ok, detail) = match source.ready() {
            Ok(()) => (true, "ready".to_string()),
            Err(why) => (false, why),
        };
        checks.push(check(source.name(), ok, detail));
    }
    checks
}

/// The `/dashboard` body and (without `positions`, which the stream sends on their own) the
/// stream's `snapshot`.
pub(super) fn snapshot(ctx: &ApiContext, with_positions: bool) -> Value {
    let s = &ctx.state;
    let (ts_event, total) = s.total();
    let flags = s.risk_flags();
    let agents: Vec<Value> = s
        .agents()
        .map(|(id, ts, a)| {
            let m = s.margin(&a);
            json!({
                "agent_id": id,
                "name": agent_name(s, id),
                "ts_event": ts,
                "pnl": usd(a.equity - a.capital),
                "realized": usd(a.realized),
                "unrealized": usd(a.unrealized),
                "fees": usd(a.fees),
                "exposure": usd(a.gross_exposure),
                "margin_budget": usd(m.budget),
                "margin_used": usd(m.used),
                "margin_remaining": usd(m.remaining),
                "margin_utilization": m.utilization(),
                "paused": flags.paused & (1u32 << id.min(31)) != 0,
            })
        })
        .collect();
    let p = s.pipeline();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let (signals_taken, signals_ignored) = s.signals();
    // Every book when there are few; with a venue's whole list, the out-of-sync ones first, up
    // to MAX_BOOKS_SHOWN (the counts say how many there are).
    let mut books: Vec<(usize, &str, bool)> = s.books_in_sync().enumerate().map(|(i, (symbol, ok))| (i, symbol, ok)).collect();
    let (books_total, books_in_sync) = (books.len(), books.iter().filter(|b| b.2).count());
    if books.len() > MAX_BOOKS_SHOWN {
        books.sort_by_key(|b| b.2);
        books.truncate(MAX_BOOKS_SHOWN);
    }
    let books: Vec<Value> = books
        .into_iter()
        .map(|(i, symbol, ok)| {
            let mut book = json!({ "symbol": symbol, "in_sync": ok });
            if let Some(top) = s.top(InstrumentId(i as u32)) {
                book["bid"] = decimal(top.bid).into();
                book["ask"] = decimal(top.ask).into();
                book["last_trade"] = decimal(top.last_trade).into();
                book["ts_event"] = top.ts_event.into();
                book["updates"] = top.updates.into();
                book["spread_bps"] = spread_bps(&top).into();
            }
            book
        })
        .collect();
    let checks = checks(s);
    let ready = checks.iter().all(|c| c["ok"] == true);
    let mut snapshot = json!({
        "ts_event": ts_event,
        "instance": s.instance().to_string(),
        "equity": usd(total.equity),
        "capital": usd(total.capital),
        "pnl": usd(total.equity - total.capital),
        "realized": usd(total.realized),
        "unrealized": usd(total.unrealized),
        "fees": usd(total.fees),
        "gross_exposure": usd(total.gross_exposure),
        "peak_equity": usd(s.peak_equity()),
        "drawdown_pct": s.drawdown_pct(),
        "risk": {
            "killed": flags.killed,
            "halted": flags.halted,
            "drawdown_halted": flags.drawdown_halted,
            "trading": !(flags.killed || flags.halted || flags.drawdown_halted),
            "halt_reason": flags.stopped_by.map(halt_reason),
            "margin_ladder": flags.ladder,
            "alerts": s.alerts(),
        },
        "agents": agents,
        "orders": {
            "open": s.open_orders(),
            "sent": s.orders(),
            "cancels": s.cancels(),
            "fills": s.fills(),
            "refused": s.refusals_total(),
        },
        "signals": { "taken": signals_taken, "ignored": signals_ignored },
        "latency": latency(s),
        "feeds": { "books": books, "books_total": books_total, "books_in_sync": books_in_sync, "ready": ready, "checks": checks },
        "events": load(&p.processed),
        "journaled": load(&p.journaled),
        "outputs_dropped": load(&p.outputs_dropped),
        "ws_clients": ctx.stats.ws_clients.load(Ordering::Relaxed),
    });
    if with_positions {
        snapshot["positions"] = positions(s);
    }
    snapshot
}

/// Equity points as a JSON array of `[t_ms, equity, pnl, realized, unrealized, fees]`, the
/// money as exact decimal numbers (written from the fixed-point values, never through `f64`).
pub(super) fn equity_points(points: &[(u64, EquityPoint)]) -> String {
    let mut out = String::with_capacity(2 + points.len() * 64);
    out.push('[');
    for (i, (_, p)) in points.iter().enumerate() {
        let t = &p.total;
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "[{},{:.2},{:.2},{:.2},{:.2},{:.2}]",
            p.ts_event / 1_000_000,
            t.equity,
            t.equity - t.capital,
            t.realized,
            t.unrealized,
            t.fees
        );
    }
    out.push(']');
    out
}
