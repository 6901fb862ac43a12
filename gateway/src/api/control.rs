//! Operator control: bearer-token checks, then one [`Control`] event into the inbound ring.
//!
//! The event is the whole action: the journal records it and the risk stage acts on it, so
//! a replay reproduces every kill, halt and pause. Publishing never waits: a full ring
//! (the engine is behind) is a 503 the operator can retry.

use super::routes::{error, Ctx};
use super::ApiContext;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sapphire_core::aggregate::MAX_AGENTS;
use sapphire_core::event::{AgentId, Control, ControlKind, Event, LimitKind};
use sapphire_core::fixed::Money;
use sapphire_core::latency::unix_nanos;
use sapphire_core::risk::ALL_AGENTS;
use serde_json::json;

/// Checks the bearer token; the refusal to send, if any: 403 when control is disabled or
/// the token is wrong, 401 when there is none.
fn refusal(ctx: &ApiContext, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &ctx.token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "control is disabled: no API token is configured (set SAPPHIRE_API_TOKEN or [api] token_file)",
        ));
    };
    let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        None => {
            let mut r = error(StatusCode::UNAUTHORIZED, "control needs an `Authorization: Bearer <token>` header");
            r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            Some(r)
        }
        Some(p) if token.matches(p) => None,
        Some(_) => Some(error(StatusCode::FORBIDDEN, "the bearer token is not the configured API token")),
    }
}

/// Publishes the control, never waiting; 200 with the inbound sequence it got.
fn publish(ctx: &ApiContext, action: &str, kind: ControlKind, agent: AgentId, limit: LimitKind, value: i64) -> Response {
    let now = unix_nanos();
    let event = Event::Control(Control { ts_event: now, ts_recv: now, kind, limit, agent, value, ..Control::default() });
    let Ok(mut inbound) = ctx.inbound.lock() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "the inbound ring's producer is unavailable");
    };
    match inbound.try_publish(event) {
        Ok(seq) => (StatusCode::OK, Json(json!({ "accepted": action, "seq": seq }))).into_response(),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the inbound ring is full (the engine is behind); retry"),
    }
}

fn global(State(ctx): Ctx, headers: HeaderMap, action: &str, kind: ControlKind) -> Response {
    if let Some(r) = refusal(&ctx, &headers) {
        return r;
    }
    publish(&ctx, action, kind, ALL_AGENTS, LimitKind::None, 0)
}

/// `POST /api/kill`: cancel everything, refuse every new order.
pub(super) async fn kill(ctx: Ctx, headers: HeaderMap, uri: axum::http::Uri, body: super::commands::Body) -> Response {
    // `?flatten=true` (or `{"flatten": true}`) also closes every position: see `commands`.
    super::commands::kill(ctx, headers, uri, body).await
}

/// `POST /api/halt`: reduce-only; resting orders stay.
pub(super) async fn halt(ctx: Ctx, headers: HeaderMap) -> Response {
    global(ctx, headers, "halt", ControlKind::Halt)
}

/// `POST /api/resume`: lift a halt, kill or drawdown halt.
pub(super) async fn resume(ctx: Ctx, headers: HeaderMap) -> Response {
    global(ctx, headers, "resume", ControlKind::Resume)
}

fn agent_id(raw: &str) -> Result<AgentId, String> {
    match raw.parse::<u16>() {
        Ok(n) if usize::from(n) < MAX_AGENTS => Ok(AgentId(n)),
        _ => Err(format!("agent id {raw:?} is not a number from 0 to {}", MAX_AGENTS - 1)),
    }
}

fn per_agent(State(ctx): Ctx, headers: HeaderMap, id: &str, action: &str, kind: ControlKind) -> Response {
    if let Some(r) = refusal(&ctx, &headers) {
        return r;
    }
    match agent_id(id) {
        Ok(agent) => publish(&ctx, action, kind, agent, LimitKind::None, 0),
        Err(message) => error(StatusCode::BAD_REQUEST, message),
    }
}

/// `POST /api/agents/{id}/pause`: cancel the agent's orders and refuse its new ones.
pub(super) async fn pause_agent(ctx: Ctx, headers: HeaderMap, Path(id): Path<String>) -> Response {
    per_agent(ctx, headers, &id, "pause_agent", ControlKind::PauseAgent)
}

/// `POST /api/agents/{id}/resume`.
pub(super) async fn resume_agent(ctx: Ctx, headers: HeaderMap, Path(id): Path<String>) -> Response {
    per_agent(ctx, headers, &id, "resume_agent", ControlKind::ResumeAgent)
}

/// Body of `POST /api/limits`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitChange {
    /// `agent_budget_usd`, `max_position_usd`, `max_order_usd`, `price_band_bps`,
    /// `max_open_orders`, `stale_after_ms` or `drawdown_halt_pct` (the configuration's names).
    limit: String,
    /// A decimal string for dollar limits, a whole number otherwise.
    value: serde_json::Value,
    /// For `agent_budget_usd`: one agent (default: every agent).
    agent: Option<u16>,
}

fn whole(v: &serde_json::Value) -> Option<i64> {
    match v {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|n| *n >= 0)
}

fn usd(v: &serde_json::Value) -> Option<i64> {
    let text = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        _ => return None,
    };
    Money::parse(text.trim()).ok().map(|m| m.raw).filter(|r| *r >= 0)
}

impl LimitChange {
    /// The limit kind and its value in the engine's units, or what is wrong.
    fn resolve(&self) -> Result<(LimitKind, i64), String> {
        let v = &self.value;
        let bad = |what: &str| format!("limit {:?}: value {v} is not {what}", self.limit);
        Ok(match self.limit.as_str() {
            "agent_budget_usd" => (LimitKind::AgentBudget, usd(v).ok_or_else(|| bad("a non-negative decimal amount"))?),
            "max_position_usd" => (LimitKind::MaxPositionNotional, usd(v).ok_or_else(|| bad("a non-negative decimal amount"))?),
            "max_order_usd" => (LimitKind::MaxOrderNotional, usd(v).ok_or_else(|| bad("a non-negative decimal amount"))?),
            "price_band_bps" => (LimitKind::PriceBandBps, whole(v).filter(|n| (1..=10_000).contains(n)).ok_or_else(|| bad("1..=10000"))?),
            "max_open_orders" => (LimitKind::MaxOpenOrders, whole(v).filter(|n| *n <= i64::from(u32::MAX)).ok_or_else(|| bad("a count"))?),
            "stale_after_ms" => {
                (LimitKind::StaleAfterNs, whole(v).and_then(|ms| ms.checked_mul(1_000_000)).ok_or_else(|| bad("whole milliseconds"))?)
            }
            "drawdown_halt_pct" => (LimitKind::DrawdownHaltBps, whole(v).filter(|n| *n <= 100).ok_or_else(|| bad("a percentage 0..=100"))? * 100),
            other => return Err(format!("unknown limit {other:?}: agent_budget_usd, max_position_usd, max_order_usd, price_band_bps, max_open_orders, stale_after_ms or drawdown_halt_pct")),
        })
    }
}

/// `POST /api/limits`: change one risk limit.
pub(super) async fn set_limit(State(ctx): Ctx, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = refusal(&ctx, &headers) {
        return r;
    }
    let change: LimitChange = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
    };
    let agent = match change.agent {
        None => ALL_AGENTS,
        Some(_) if change.limit != "agent_budget_usd" => {
            return error(StatusCode::BAD_REQUEST, format!("limit {:?} applies to every agent; drop \"agent\"", change.limit))
        }
        Some(a) => match agent_id(&a.to_string()) {
            Ok(a) => a,
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        },
    };
    match change.resolve() {
        Ok((limit, value)) => publish(&ctx, "set_limit", ControlKind::SetLimit, agent, limit, value),
        Err(message) => error(StatusCode::BAD_REQUEST, message),
    }
}

/// The bearer-token check of the control routes, for the operator orders in `commands`.
pub(super) fn bearer_refusal(ctx: &ApiContext, headers: &HeaderMap) -> Option<Response> {
    refusal(ctx, headers)
}
