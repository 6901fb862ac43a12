//! The router: probes, metrics, the dashboard snapshot, and the limits every request gets.

use super::{control, metrics, ApiContext, BODY_LIMIT, REQUEST_TIMEOUT};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

pub(super) type Ctx = State<Arc<ApiContext>>;

/// Every route, with the body limit, the request timeout and a JSON 404.
pub(super) fn router(ctx: Arc<ApiContext>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/dashboard", get(dashboard))
        .route("/api/kill", post(control::kill))
        .route("/api/halt", post(control::halt))
        .route("/api/resume", post(control::resume))
        .route("/api/agents/{id}/pause", post(control::pause_agent))
        .route("/api/agents/{id}/resume", post(control::resume_agent))
        .route("/api/limits", post(control::set_limit))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(timeout))
        .with_state(ctx)
}

/// A JSON error body: `{"error": "..."}`.
pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(response) => response,
        Err(_) => error(StatusCode::REQUEST_TIMEOUT, format!("the request took longer than {}s", REQUEST_TIMEOUT.as_secs())),
    }
}

async fn not_found(req: Request) -> Response {
    error(StatusCode::NOT_FOUND, format!("no route for {} {}", req.method(), req.uri().path()))
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// One readiness check.
fn check(name: &str, ok: bool, detail: String) -> Value {
    json!({ "name": name, "ok": ok, "detail": detail })
}

async fn readyz(State(ctx): Ctx) -> Response {
    let s = &ctx.state;
    let out_of_sync = s.books_out_of_sync();
    let journal_errors = s.pipeline().journal_errors.load(std::sync::atomic::Ordering::Relaxed);
    let checks = [
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
    let failing: Vec<&str> = checks.iter().filter(|c| c["ok"] == false).filter_map(|c| c["name"].as_str()).collect();
    let ready = failing.is_empty();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "ready": ready, "failing": failing, "checks": checks }))).into_response()
}

async fn metrics_text(State(ctx): Ctx) -> Response {
    let backlog = ctx.inbound.lock().map(|p| p.backlog()).unwrap_or(0);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics::render(&ctx.state, backlog)).into_response()
}

fn usd(m: sapphire_core::fixed::Money) -> String {
    format!("{m:.2}")
}

fn agent_name(id: u16) -> String {
    match id {
        0 => "momentum".into(),
        1 => "imbalance".into(),
        n => format!("agent-{n}"),
    }
}

async fn dashboard(State(ctx): Ctx) -> Json<Value> {
    let s = &ctx.state;
    let (ts_event, total) = s.total();
    let flags = s.risk_flags();
    let agents: Vec<Value> = s
        .agents()
        .map(|(id, ts, a)| {
            let m = s.margin(&a);
            json!({
                "agent_id": id,
                "name": agent_name(id),
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
    let stopped_by = flags.stopped_by.map(|k| match k {
        sapphire_core::risk::AlertKind::Killed => "kill switch",
        sapphire_core::risk::AlertKind::Halted => "operator halt",
        sapphire_core::risk::AlertKind::DrawdownHalt => "drawdown halt",
        _ => "other",
    });
    let p = s.pipeline();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    Json(json!({
        "ts_event": ts_event,
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
            "halt_reason": stopped_by,
            "margin_ladder": flags.ladder,
        },
        "agents": agents,
        "orders": {
            "open": s.open_orders(),
            "sent": s.orders(),
            "cancels": s.cancels(),
            "fills": s.fills(),
            "refused": s.refusals_total(),
        },
        "events": load(&p.processed),
        "journaled": load(&p.journaled),
        "outputs_dropped": load(&p.outputs_dropped),
    }))
}
