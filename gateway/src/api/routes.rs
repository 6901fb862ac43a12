//! The router: the page and its stream, probes, metrics, the dashboard snapshot, paged
//! history, control, and the limits every request gets.

use super::{assets, control, metrics, page, view, ws, ApiContext, BODY_LIMIT, REQUEST_TIMEOUT};
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
        .route("/", get(assets::index))
        .route("/assets/{*file}", get(assets::file))
        .route("/favicon.ico", get(assets::favicon))
        .route("/ws", get(ws::upgrade))
        .route("/api/orders", get(page::orders).post(super::commands::manual_order))
        .route("/api/trades", get(page::trades))
        .route("/api/signals", get(page::signals))
        .route("/api/risk", get(page::risk))
        .route("/api/flatten", post(super::commands::flatten))
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

/// The probe lane's router (every place under the connection cap is busy): the probes, and a
/// 503 for anything else.
pub(super) fn probe_router(ctx: Arc<ApiContext>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(too_busy)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(timeout))
        .with_state(ctx)
}

async fn too_busy(State(ctx): Ctx) -> Response {
    ctx.stats.http_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "too many connections; retry shortly");
    r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    r
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

async fn readyz(State(ctx): Ctx) -> Response {
    let checks = view::checks(&ctx.state);
    let failing: Vec<&str> = checks.iter().filter(|c| c["ok"] == false).filter_map(|c| c["name"].as_str()).collect();
    let ready = failing.is_empty();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "ready": ready, "failing": failing, "checks": checks }))).into_response()
}

async fn metrics_text(State(ctx): Ctx) -> Response {
    let backlog = ctx.inbound.lock().map(|p| p.backlog()).unwrap_or(0);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], metrics::render(&ctx, backlog)).into_response()
}

async fn dashboard(State(ctx): Ctx) -> Json<Value> {
    Json(view::snapshot(&ctx, true))
}
