//! Prometheus text exposition (format 0.0.4), written by hand.
//!
//! Every value already lives in an atomic (the edge's [`EdgeState`], the pipeline's
//! counters) or a latency reader, so a scrape only reads and formats them. A metrics crate
//! would add a global recorder and a second copy of each number, kept in sync from the edge,
//! for the sake of a dozen families; the text format is small, stable and tested here.
//! The old platform's names are kept as they were.

use super::server::{ServerStats, WsDrop, WsRefusal};
use super::EdgeState;
use sapphire_core::event::RejectReason;
use std::fmt::Write;
use std::sync::atomic::Ordering;

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Label values here are ids and fixed names; escape anyway.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn money(m: sapphire_core::fixed::Money) -> f64 {
    m.raw as f64 / 1e9
}

/// Renders every metric, then each [`HealthSource`](super::HealthSource)'s. `ring_backlog` is
/// the inbound ring's backlog now.
pub(super) fn render(s: &EdgeState, server: &ServerStats, ring_backlog: i64) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let o = &mut out;
    let p = s.pipeline();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);

    family(o, "agent_margin_remaining_usd", "gauge", "Margin budget left per agent (budget - exposure / leverage).");
    let agents: Vec<_> = s.agents().collect();
    for (id, _, summary) in &agents {
        let _ = writeln!(o, "agent_margin_remaining_usd{{agent_id=\"{id}\"}} {}", money(s.margin(summary).remaining));
    }
    family(o, "agent_margin_utilization_ratio", "gauge", "Margin used over budget per agent.");
    for (id, _, summary) in &agents {
        let _ = writeln!(o, "agent_margin_utilization_ratio{{agent_id=\"{id}\"}} {}", s.margin(summary).utilization());
    }
    family(o, "risk_limits_breached_total", "counter", "Orders refused by risk, by limit.");
    for reason in RejectReason::ALL.iter().skip(1) {
        let _ = writeln!(o, "risk_limits_breached_total{{limit_type=\"{}\"}} {}", escape(reason.label()), s.refusals(*reason));
    }
    family(o, "portfolio_drawdown_pct", "gauge", "Drawdown from peak equity, percent.");
    let _ = writeln!(o, "portfolio_drawdown_pct {}", s.drawdown_pct());

    let (_, total) = s.total();
    family(o, "sapphire_equity_usd", "gauge", "Portfolio equity at the last timer.");
    let _ = writeln!(o, "sapphire_equity_usd {}", money(total.equity));
    family(o, "sapphire_fees_usd", "gauge", "Fees paid.");
    let _ = writeln!(o, "sapphire_fees_usd {}", money(total.fees));
    family(o, "sapphire_events_total", "counter", "Inbound events processed by the engine.");
    let _ = writeln!(o, "sapphire_events_total {}", load(&p.processed));
    family(o, "sapphire_orders_total", "counter", "Orders routed, by action.");
    let _ = writeln!(o, "sapphire_orders_total{{action=\"new\"}} {}", s.orders());
    let _ = writeln!(o, "sapphire_orders_total{{action=\"cancel\"}} {}", s.cancels());
    family(o, "sapphire_fills_total", "counter", "Fills.");
    let _ = writeln!(o, "sapphire_fills_total {}", s.fills());
    family(o, "sapphire_open_orders", "gauge", "Orders working at the venue.");
    let _ = writeln!(o, "sapphire_open_orders {}", s.open_orders());
    family(o, "sapphire_risk_alerts_total", "counter", "Guard alerts (drawdown, margin ladder, kill, halt, resume, pause, limits).");
    let _ = writeln!(o, "sapphire_risk_alerts_total {}", s.alerts());
    let f = s.risk_flags();
    family(o, "sapphire_trading_halted", "gauge", "1 while opening orders are refused, by cause.");
    for (cause, on) in [("kill_switch", f.killed), ("operator", f.halted), ("drawdown", f.drawdown_halted)] {
        let _ = writeln!(o, "sapphire_trading_halted{{cause=\"{cause}\"}} {}", u8::from(on));
    }
    family(o, "sapphire_margin_ladder_level", "gauge", "0 normal, 1 reduce-only, 2 deleverage.");
    let _ = writeln!(o, "sapphire_margin_ladder_level {}", f.ladder);
    family(o, "sapphire_ring_backlog", "gauge", "Inbound events published but not yet released by the slowest consumer.");
    let _ = writeln!(o, "sapphire_ring_backlog {ring_backlog}");
    family(o, "sapphire_journal_appended_total", "counter", "Inbound events appended to the input journal.");
    let _ = writeln!(o, "sapphire_journal_appended_total {}", load(&p.journaled));
    family(o, "sapphire_journal_errors_total", "counter", "Input journal appends that failed.");
    let _ = writeln!(o, "sapphire_journal_errors_total {}", load(&p.journal_errors));
    family(o, "sapphire_outputs_dropped_total", "counter", "Engine outputs the edge did not take in time.");
    let _ = writeln!(o, "sapphire_outputs_dropped_total {}", load(&p.outputs_dropped));
    family(o, "sapphire_outbound_full_total", "counter", "Orders the outbound queue could not take.");
    let _ = writeln!(o, "sapphire_outbound_full_total {}", load(&p.outbound_full));
    family(o, "sapphire_book_gaps_total", "counter", "Book sequence gaps.");
    let _ = writeln!(o, "sapphire_book_gaps_total {}", load(&p.gaps));

    family(o, "sapphire_stage_latency_ns", "gauge", "Stage latency percentiles, ns (quantile 1 is the max).");
    let latency = s.latency();
    for l in &latency {
        for (q, v) in [("0.5", l.p50), ("0.99", l.p99), ("0.999", l.p999), ("1", l.max)] {
            let _ = writeln!(o, "sapphire_stage_latency_ns{{stage=\"{}\",quantile=\"{q}\"}} {v}", escape(l.name));
        }
    }
    family(o, "sapphire_stage_latency_samples", "gauge", "Samples behind each stage's percentiles.");
    for l in &latency {
        let _ = writeln!(o, "sapphire_stage_latency_samples{{stage=\"{}\"}} {}", escape(l.name), l.count);
    }
    let (taken, ignored) = s.signals();
    family(
        o,
        "sapphire_signals_total",
        "counter",
        "Agent signals the engine saw, taken or ignored (unknown agent or instrument, expired).",
    );
    let _ = writeln!(o, "sapphire_signals_total{{outcome=\"taken\"}} {taken}");
    let _ = writeln!(o, "sapphire_signals_total{{outcome=\"ignored\"}} {ignored}");

    family(o, "sapphire_http_connections", "gauge", "HTTP connections being served.");
    let _ = writeln!(o, "sapphire_http_connections {}", load(&server.http_open));
    family(o, "sapphire_http_connections_total", "counter", "HTTP connections accepted and served.");
    let _ = writeln!(o, "sapphire_http_connections_total {}", load(&server.http_accepted));
    family(o, "sapphire_http_connections_refused_total", "counter", "HTTP connections refused at the connection cap.");
    let _ = writeln!(o, "sapphire_http_connections_refused_total {}", load(&server.http_refused));
    family(o, "sapphire_http_header_timeouts_total", "counter", "Connections cut because request headers did not arrive in time.");
    let _ = writeln!(o, "sapphire_http_header_timeouts_total {}", load(&server.header_timeouts));
    family(o, "sapphire_ws_clients", "gauge", "Dashboard WebSocket clients connected.");
    let _ = writeln!(o, "sapphire_ws_clients {}", load(&server.ws_clients));
    family(o, "sapphire_ws_clients_accepted_total", "counter", "Dashboard WebSocket clients accepted.");
    let _ = writeln!(o, "sapphire_ws_clients_accepted_total {}", load(&server.ws_accepted));
    family(o, "sapphire_ws_clients_dropped_total", "counter", "WebSocket clients the server dropped, by reason.");
    for why in WsDrop::ALL {
        let _ = writeln!(o, "sapphire_ws_clients_dropped_total{{reason=\"{}\"}} {}", why.label(), load(&server.ws_dropped[why as usize]));
    }
    family(o, "sapphire_ws_clients_refused_total", "counter", "WebSocket upgrades refused, by reason.");
    for why in WsRefusal::ALL {
        let _ = writeln!(o, "sapphire_ws_clients_refused_total{{reason=\"{}\"}} {}", why.label(), load(&server.ws_refused[why as usize]));
    }
    family(o, "sapphire_ws_messages_total", "counter", "WebSocket messages sent to dashboard clients.");
    let _ = writeln!(o, "sapphire_ws_messages_total {}", load(&server.ws_messages));

    for source in s.sources() {
        source.write_metrics(o);
    }
    out
}
